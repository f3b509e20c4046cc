"""A TCP server that tells what the socket API shows it: binds as MODE says, listens on
PORT, prints "ready", then for each of COUNT connections prints what accept(),
getpeername() and getsockname() return and the line the client sent, answers "hello
<that line>" and closes. Gives up after 10 s without a connection.

MODE: dual ([::] with IPV6_V6ONLY=0), v4 (0.0.0.0), v6only ([::] with IPV6_V6ONLY=1)

usage: python3 serve.py MODE PORT COUNT
"""
import socket
import sys

mode, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "v4":
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    addr = ("0.0.0.0", port)
else:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if mode == "v6only" else 0)
    addr = ("::", port)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(addr)
srv.listen(16)
print("listening", srv.getsockname()[:2])
print("ready", flush=True)
srv.settimeout(10)
for _ in range(count):
    try:
        conn, peer = srv.accept()
    except socket.timeout:
        print("accept: timed out")
        sys.exit(1)
    with conn:
        conn.settimeout(5)
        line = conn.makefile("rb").readline().decode(errors="replace").strip()
        print(f"accept peer={peer[:2]} getpeername={conn.getpeername()[:2]}"
              f" getsockname={conn.getsockname()[:2]} got={line!r}", flush=True)
        conn.sendall(f"hello {line}\n".encode())
