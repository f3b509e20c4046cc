"""An asyncio server as frameworks start them: asyncio.start_server(host=HOST or None for
every address, port=PORT). Prints the bound addresses (sorted), "ready", then per
connection (COUNT of them) the peer and local address from the transport and the line the
client sent, answering "hello <line>". Gives up after 10 s.

usage: python3 asyncio_server.py HOST|- PORT COUNT
"""
import asyncio
import sys

host = None if sys.argv[1] == "-" else sys.argv[1]
port, count = int(sys.argv[2]), int(sys.argv[3])


async def main():
    done = asyncio.Event()
    seen = 0

    async def handle(reader, writer):
        nonlocal seen
        line = (await reader.readline()).decode(errors="replace").strip()
        peer = writer.get_extra_info("peername")[:2]
        sock = writer.get_extra_info("sockname")[:2]
        print(f"connection peer={peer} sockname={sock} got={line!r}", flush=True)
        writer.write(f"hello {line}\n".encode())
        await writer.drain()
        writer.close()
        seen += 1
        if seen >= count:
            done.set()

    server = await asyncio.start_server(handle, host=host, port=port)
    print("listening", sorted(str(s.getsockname()[:2]) for s in server.sockets))
    print("ready", flush=True)
    if count:
        try:
            await asyncio.wait_for(done.wait(), 10)
        except asyncio.TimeoutError:
            print("timed out waiting for connections")
            sys.exit(1)
    server.close()


asyncio.run(main())
