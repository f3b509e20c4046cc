"""Connects or sends to each TARGET and prints the outcome as a program sees it: the peer
address and what came back, or the errno name. Each step is bounded by 2 s.

TARGET: tcp:HOST:PORT   connect (create_connection: every address in order), send
                        "ping\n", read one line (TCP echo servers answer it)
        udp:HOST:PORT   connected UDP: send "ping\n", receive one datagram
        sendto:HOST:PORT  unconnected UDP: sendto, recvfrom (prints the reply's source)
        nb:HOST:PORT    non-blocking connect to the first address, poll, SO_ERROR
HOST may be a bracketed IPv6 address.

usage: python3 connect.py TARGET...
"""
import errno
import select
import socket
import sys


def name(e):
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, socket.gaierror):
        return {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}.get(e.errno, str(e))
    return errno.errorcode.get(e.errno, str(e))


def split(target):
    op, rest = target.split(":", 1)
    host, port = rest.rsplit(":", 1)
    return op, host.strip("[]"), int(port)


status = 0
for target in sys.argv[1:]:
    op, host, port = split(target)
    try:
        if op == "tcp":
            with socket.create_connection((host, port), timeout=2) as s:
                peer = s.getpeername()[:2]
                s.sendall(b"ping\n")
                reply = s.recv(100)
                print(f"{target}: connected to {peer}, reply {reply!r}")
        elif op in ("udp", "sendto"):
            fam, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                if op == "udp":
                    s.connect(addr)
                    s.send(b"ping\n")
                    reply, src = s.recv(100), s.getpeername()
                else:
                    s.sendto(b"ping\n", addr)
                    reply, src = s.recvfrom(100)
                print(f"{target}: reply {reply!r} from {src[:2]}")
        elif op == "nb":
            fam, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                s.setblocking(False)
                rc = s.connect_ex(addr)
                first = errno.errorcode.get(rc, rc) if rc else "0"
                _, w, _ = select.select([], [s], [], 2)
                if not w:
                    print(f"{target}: connect {first}, not writable within 2 s")
                    status = 1
                    continue
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                print(f"{target}: connect {first}, SO_ERROR {errno.errorcode.get(err, err) if err else 0}")
    except OSError as e:
        print(f"{target}: {name(e)}")
        status = 1
sys.exit(status)
