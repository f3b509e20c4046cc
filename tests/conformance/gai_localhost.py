"""getaddrinfo("localhost", PORT) and getaddrinfo(None, PORT, AI_PASSIVE), as servers call
them to choose what to bind: prints every result in order. With a hosts file listing ::1
first, glibc sorts the answers by connecting a UDP socket of the first answer's family to
each (an IPv4 answer through a v4-mapped address on an IPv6 socket).

usage: python3 gai_localhost.py PORT
"""
import socket
import sys

port = int(sys.argv[1])
for host, flags in (("localhost", 0), (None, socket.AI_PASSIVE), ("localhost", socket.AI_PASSIVE)):
    res = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, flags)
    print(f"getaddrinfo({host!r}, {port}, flags={flags}):", [(r[0].name, r[4][:2]) for r in res])
