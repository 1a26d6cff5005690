"""Open N connections to the broker, send nothing, and report when the broker closes them.

    python flood_script.py SOCKET N GUARD_SECONDS

Prints {"opened": N} once every connection is made, then {"closed": K} each time
the number closed by the broker changes; exits when all are closed or after
GUARD_SECONDS. Run as a test user (setpriv) by the broker tests; stdlib only.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time


def main(path: str, n: int, guard: float) -> None:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)  # blocking: waits while the listen queue is full (with a time-out it would fail EAGAIN)
        socks.append(s)
    print(json.dumps({"opened": n}), flush=True)
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLRDHUP)
    closed: set[int] = set()
    deadline = time.monotonic() + guard
    while len(closed) < n and time.monotonic() < deadline:
        for fd, events in poller.poll(200):
            if events & (select.POLLRDHUP | select.POLLHUP):
                poller.unregister(fd)
                closed.add(fd)
                print(json.dumps({"closed": len(closed)}), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
