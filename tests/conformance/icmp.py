"""ICMP echo through an unprivileged datagram socket (socket(AF_INET, SOCK_DGRAM,
IPPROTO_ICMP), or ICMPv6): sends one echo request to ADDRESS, prints the reply's type, code,
sequence, payload and source, or the errno. Needs net.ipv4.ping_group_range to include the
caller's group.

usage: python3 icmp.py ADDRESS
"""
import errno
import socket
import struct
import sys

addr = sys.argv[1]
v6 = ":" in addr
fam, proto, echo = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128) if v6
                    else (socket.AF_INET, socket.IPPROTO_ICMP, 8))
try:
    s = socket.socket(fam, socket.SOCK_DGRAM, proto)
except OSError as e:
    print(f"socket: {errno.errorcode.get(e.errno, e.errno)}")
    sys.exit(1)
s.settimeout(2)
payload = b"sctrace-conformance"
# The kernel fills in the identifier (the socket's "port") and the checksum.
packet = struct.pack("!BBHHH", echo, 0, 0, 0, 1) + payload
try:
    s.sendto(packet, (addr, 0))
    data, src = s.recvfrom(1500)
    typ, code, _, _, seq = struct.unpack("!BBHHH", data[:8])
    print(f"reply type={typ} code={code} seq={seq} payload={data[8:]!r} from {src[0]}")
except socket.timeout:
    print("no reply within 2 s")
    sys.exit(1)
except OSError as e:
    print(f"{errno.errorcode.get(e.errno, e.errno)}")
    sys.exit(1)
