"""A long-lived broker client run as a test user (setpriv), driven by commands on stdin.

    python agent_script.py SOCKET

One JSON command per line on stdin, one JSON answer per line on stdout:
  {"op": "open", "id": K, "req": {...}}  connect, Hello, send req (a dict, as msgpack);
                                          a thread then reads every message until the
                                          final one or the close. Answer {"ok": true}
                                          once the request is sent (or the connection failed).
  {"op": "close", "id": K}                close connection K (cancels its job). {"ok": true}
  {"op": "state"}                         {"conns": {K: {"types", "final", "closed",
                                          "closed_by_us", "accepted_at", "final_at"}}}
                                          (times: CLOCK_MONOTONIC, the same clock as the test's)
  {"op": "exit"}                          close everything and exit
Stdlib, msgspec and perf_mcp_protocol only (blocking sockets, one thread per connection).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

import msgspec

from perf_mcp_protocol import decode_broker_message, encode_frame, limits
from perf_mcp_protocol import Hello

FINAL = ("result", "access", "error")


class Conn:
    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.types: list[str] = []
        self.final: dict[str, Any] | None = None
        self.closed = False
        self.closed_by_us = False
        self.accepted_at: float | None = None
        self.final_at: float | None = None
        self.error: str | None = None

    def view(self) -> dict[str, Any]:
        return {"types": list(self.types), "final": self.final, "closed": self.closed,
                "closed_by_us": self.closed_by_us, "accepted_at": self.accepted_at, "final_at": self.final_at,
                "error": self.error}


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _read(sock: socket.socket) -> Any | None:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    body = _recv_exact(sock, int.from_bytes(head, "big"))
    return None if body is None else decode_broker_message(body)


def _reader(conn: Conn) -> None:
    assert conn.sock is not None
    try:
        while True:
            msg = _read(conn.sock)
            if msg is None:
                break
            tag = type(msg).__struct_config__.tag
            conn.types.append(tag)
            if tag == "accepted":
                conn.accepted_at = time.monotonic()
            if tag in FINAL:
                conn.final = json.loads(msgspec.json.encode(msg))
                conn.final.pop("steps", None)  # outputs are not needed by the tests, and may be large
                conn.final_at = time.monotonic()
                break
    except OSError as exc:
        conn.error = repr(exc)
    finally:
        conn.closed = True


def main(path: str) -> None:
    conns: dict[int, Conn] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "open":
            conn = conns[cmd["id"]] = Conn()
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(path)
                conn.sock = sock
                sock.sendall(encode_frame(Hello(protocol_version=limits.PROTOCOL_VERSION)))
                hello = _read(sock)
                if hello is not None:
                    conn.types.append(type(hello).__struct_config__.tag)
                    body = msgspec.msgpack.encode(cmd["req"])
                    sock.sendall(len(body).to_bytes(4, "big") + body)
                    threading.Thread(target=_reader, args=(conn,), daemon=True).start()
                else:
                    conn.closed = True
            except OSError as exc:
                conn.error, conn.closed = repr(exc), True
            answer: dict[str, Any] = {"ok": True}
        elif op == "close":
            conn = conns[cmd["id"]]
            conn.closed_by_us = True
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.sock.close()
            answer = {"ok": True}
        elif op == "state":
            answer = {"conns": {k: c.view() for k, c in conns.items()}}
        else:
            break
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
