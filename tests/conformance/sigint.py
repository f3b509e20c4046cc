"""A program whose SIGINT handler talks to the cluster: on SIGINT it resolves HOST and
fetches URL (each bounded by 5 s), printing what it got. Prints "ready" once the handler is
installed; after the first signal waits 1.5 s more (a duplicate would arrive by then), then
prints how many SIGINTs it received and exits 0 (1 if none came within 20 s).

usage: python3 sigint.py HOST URL
"""
import os
import signal
import socket
import sys
import time
import urllib.request

host, url = sys.argv[1], sys.argv[2]
count = 0


def handler(sig, frame):
    global count
    count += 1
    print(f"got SIGINT #{count}", flush=True)
    if count > 1:
        return
    try:
        addrs = [a[4][0] for a in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)]
        print("handler: resolved", host, addrs, flush=True)
    except OSError as e:
        print("handler: resolve failed:", e, flush=True)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            print("handler: fetched", r.status, r.read().decode().strip(), flush=True)
    except OSError as e:
        print("handler: fetch failed:", e, flush=True)


signal.signal(signal.SIGINT, handler)
# One write: print() writes the text and the newline separately, and a signal may land between.
os.write(1, b"ready\n")
deadline = time.monotonic() + 20
while count == 0 and time.monotonic() < deadline:
    time.sleep(0.02)
end = time.monotonic() + 1.5
while time.monotonic() < end:
    time.sleep(0.02)
print(f"SIGINTs received: {count}", flush=True)
sys.exit(0 if count else 1)
