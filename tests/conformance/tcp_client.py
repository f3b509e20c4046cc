"""A TCP client: connects to HOST PORT (each getaddrinfo answer in order, as
socket.create_connection does), sends LINE and a newline, prints what getpeername() shows
and the answer. Errors by errno name.

usage: python3 tcp_client.py HOST PORT LINE
"""
import errno
import socket
import sys

host, port, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    with socket.create_connection((host, port), timeout=5) as s:
        peer = s.getpeername()[:2]
        s.sendall(line.encode() + b"\n")
        answer = s.makefile("rb").readline().decode(errors="replace").strip()
        print(f"client {host}:{port} connected to {peer}, answer {answer!r}")
except socket.timeout:
    print(f"client {host}:{port}: timed out")
    sys.exit(1)
except OSError as e:
    print(f"client {host}:{port}: {errno.errorcode.get(e.errno, e.errno)}")
    sys.exit(1)
