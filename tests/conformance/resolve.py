"""Resolves each NAME argument through glibc as Python programs do, printing what a program
would see: getaddrinfo(AF_UNSPEC, SOCK_STREAM, AI_CANONNAME) in the resolver's order, with
the canonical name, and gethostbyname_ex (canonical name, aliases, IPv4 addresses); errors
by their symbolic names.

usage: python3 resolve.py NAME...
"""
import socket
import sys

GAI_ERRORS = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}

for name in sys.argv[1:]:
    try:
        res = socket.getaddrinfo(
            name, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_CANONNAME
        )
        print(f"getaddrinfo {name}: canonname={res[0][3]!r}", " ".join(r[4][0] for r in res))
    except socket.gaierror as e:
        print(f"getaddrinfo {name}: {GAI_ERRORS.get(e.errno, e.errno)}")
    try:
        canon, aliases, addrs = socket.gethostbyname_ex(name)
        print(f"gethostbyname_ex {name}: {canon!r} aliases={aliases}", " ".join(addrs))
    except socket.gaierror as e:
        print(f"gethostbyname_ex {name}: {GAI_ERRORS.get(e.errno, e.errno)}")
    except OSError as e:
        print(f"gethostbyname_ex {name}: {type(e).__name__} {e}")
