"""A raw broker client run as a test user (through setpriv) by the broker tests.

    python client_script.py SOCKET SPEC_JSON

SPEC_JSON: {"requests": [dict, ...],       one connection per request; each dict is
                                            sent as msgpack as it is (so a test can add
                                            fields the typed messages forbid)
            "hello": dict,                  optional: the hello to send instead of the
                                            normal one
            "concurrent": bool,             all connections at once (default: one by one)
            "exit_after_send": bool,        os._exit(0) right after sending the request
            "unreaped_child": bool}         run the connections in a forked child and do
                                            not reap it for 3 s: with exit_after_send,
                                            the peer is a zombie while the broker decides

Prints one JSON line per event, flushed at once so the parent can follow:
  {"i": N, "msg": {...}}     a message from the broker (bytes as base64)
  {"i": N, "closed": true}   the broker closed connection N
  {"i": N, "sent": true}     the request of connection N was sent
  {"child_pid": P}           (unreaped_child) the pid of the child that connected
"""

from __future__ import annotations

import json
import os
import sys
import time

import msgspec
import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker_wire import FINAL_TYPES, RawConn, msgpack_frame, tag_of  # noqa: E402

from perf_mcp_protocol import limits  # noqa: E402


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def one(path: str, i: int, hello: dict, req: dict, exit_after_send: bool) -> None:
    conn = await RawConn.open(path)
    try:
        if not await conn.send_raw(msgpack_frame(hello)):
            emit({"i": i, "closed": True})
            return
        first = await conn.recv()
        if first is None:
            emit({"i": i, "closed": True})
            return
        emit({"i": i, "msg": json.loads(msgspec.json.encode(first))})
        if tag_of(first) != "broker_hello":
            return
        sent = await conn.send_raw(msgpack_frame(req))
        if exit_after_send:
            os._exit(0)
        emit({"i": i, "sent": sent})
        while True:
            msg = await conn.recv()
            if msg is None:
                emit({"i": i, "closed": True})
                return
            emit({"i": i, "msg": json.loads(msgspec.json.encode(msg))})
            if tag_of(msg) in FINAL_TYPES:
                return
    finally:
        await conn.aclose()


async def main(path: str, spec: dict) -> None:
    hello = spec.get("hello") or {"type": "hello", "protocol_version": limits.PROTOCOL_VERSION}
    requests = spec["requests"]
    exit_after_send = bool(spec.get("exit_after_send"))
    if spec.get("concurrent"):
        async with trio.open_nursery() as nursery:
            for i, req in enumerate(requests):
                nursery.start_soon(one, path, i, hello, req, exit_after_send)
    else:
        for i, req in enumerate(requests):
            await one(path, i, hello, req, exit_after_send)


def run(path: str, spec: dict) -> None:
    if not spec.get("unreaped_child"):
        trio.run(main, path, spec)
        return
    child = os.fork()
    if child == 0:
        trio.run(main, path, spec)
        os._exit(0)
    emit({"child_pid": child})
    time.sleep(3.0)  # the child exits (exit_after_send) and stays a zombie meanwhile
    os.waitpid(child, 0)


if __name__ == "__main__":
    run(sys.argv[1], json.loads(sys.argv[2]))
