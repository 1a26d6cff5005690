"""A raw protocol client for the broker tests, and what they read from procfs and the log.

The client speaks the wire by hand (trio.open_unix_socket + FrameReader +
encode_frame) so that tests can send anything, well-formed or not. It is
imported by the tests (as root) and by client_script.py (run as a test user
through setpriv), so it uses only trio, msgspec and perf_mcp_protocol.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from perf_mcp_protocol import (
    BrokerHello,
    ConnectionClosed,
    ErrorReply,
    FrameReader,
    Hello,
    decode_broker_message,
    encode_frame,
    limits,
)

FINAL_TYPES = ("result", "access", "error")
# Longest a test waits for the broker to answer or close (a guard, not an assertion).
READ_GUARD_S = 120.0


def tag_of(message: Any) -> str:
    return type(message).__struct_config__.tag


def raw_frame(body: bytes) -> bytes:
    """A frame with a correct length header around any body."""
    return len(body).to_bytes(4, "big") + body


def msgpack_frame(obj: Any) -> bytes:
    """A frame whose body is ``obj`` (dicts, lists, anything) as msgpack: lets a test
    send messages the typed Structs would never produce."""
    return raw_frame(msgspec.msgpack.encode(obj))


@dataclass
class Exchange:
    """Everything one connection got back."""

    messages: list[Any] = field(default_factory=list)
    closed: bool = False  # the broker closed (EOF or reset)
    send_failed: bool = False  # the broker had closed before we finished sending

    @property
    def after_hello(self) -> list[Any]:
        return [m for m in self.messages if not isinstance(m, BrokerHello)]

    @property
    def final(self) -> Any | None:
        for m in reversed(self.messages):
            if tag_of(m) in FINAL_TYPES:
                return m
        return None

    def summary(self) -> str:
        tags = [tag_of(m) + (f":{m.code.value}" if isinstance(m, ErrorReply) else "") for m in self.messages]
        return f"{tags} closed={self.closed}"


def _blocking_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class RawConn:
    def __init__(self, stream: trio.SocketStream, reply_limit: int) -> None:
        self.stream = stream
        self.reader = FrameReader(stream)
        self.reply_limit = reply_limit

    @classmethod
    async def open(cls, path: str | os.PathLike[str], reply_limit: int | None = None, wait_for_room: bool = False) -> RawConn:
        """Connect. With wait_for_room, a blocking connect() in a thread waits while
        the listen queue is full; trio's non-blocking connect() takes the kernel's
        EAGAIN for 'in progress' and hands back a socket that never connected."""
        if wait_for_room:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(await trio.to_thread.run_sync(_blocking_connect, os.fspath(path))))
        else:
            stream = await trio.open_unix_socket(os.fspath(path))
        return cls(stream, reply_limit or limits.reply_frame_limit(limits.MAX_OUTPUT_CAP))

    async def send_raw(self, data: bytes) -> bool:
        """False when the broker had already closed the connection."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def send(self, message: Any) -> bool:
        return await self.send_raw(encode_frame(message))

    async def recv(self) -> Any | None:
        """The next message, or None when the broker closed the connection."""
        try:
            body = await self.reader.read_frame(self.reply_limit)
        except ConnectionClosed:
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return decode_broker_message(body)

    async def hello(self) -> BrokerHello:
        await self.send(Hello(protocol_version=limits.PROTOCOL_VERSION))
        reply = await self.recv()
        assert isinstance(reply, BrokerHello), f"expected broker_hello, got {reply!r}"
        return reply

    async def drain(self, into: Exchange, stop_at_final: bool = False) -> Exchange:
        """Read until the broker closes (or, with stop_at_final, until a final message)."""
        with trio.fail_after(READ_GUARD_S):
            while True:
                msg = await self.recv()
                if msg is None:
                    into.closed = True
                    return into
                into.messages.append(msg)
                if stop_at_final and tag_of(msg) in FINAL_TYPES:
                    return into

    async def aclose(self) -> None:
        await self.stream.aclose()


async def exchange(path: str | os.PathLike[str], *frames: bytes) -> Exchange:
    """Open a connection, send the frames (raw bytes), read until the broker closes."""
    conn = await RawConn.open(path)
    result = Exchange()
    try:
        for data in frames:
            if not await conn.send_raw(data):
                result.send_failed = True
                break
        await conn.drain(result)
    finally:
        await conn.aclose()
    return result


async def request(path: str | os.PathLike[str], req: Any, reply_limit: int | None = None) -> Exchange:
    """Hello, one typed request, then everything up to and including the final message."""
    conn = await RawConn.open(path, reply_limit)
    result = Exchange()
    try:
        result.messages.append(await conn.hello())
        await conn.send(req)
        await conn.drain(result, stop_at_final=True)
    finally:
        await conn.aclose()
    return result


# --------------------------------------------------------------------------- procfs


def proc_status_kib(pid: int, key: str) -> int:
    """A 'kB' field of /proc/PID/status (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


_JOBDIR = re.compile(r"^(/.*/job\d+-[^/]+)/perf\.data$")
_JOBDIR_CWD = re.compile(r"^/.*/job\d+-[^/]+$")


def job_dir_of(argv: list[str], pid: int | None = None) -> str | None:
    """The broker's per-job directory from a perf command line (`-o DIR/perf.data`), or
    else from process pid's cwd (perf script runs unprivileged in the job directory and
    names its files relative to it)."""
    for arg in argv:
        m = _JOBDIR.match(arg)
        if m:
            return m.group(1)
    if pid is not None:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        return cwd if _JOBDIR_CWD.match(cwd) else None
    return None


# --------------------------------------------------------------------------- the broker's log


def audit_records(log_text: str) -> list[dict[str, Any]]:
    """The broker's audit lines ('... perf_mcp_broker.audit INFO {json}') as dicts."""
    out = []
    for line in log_text.splitlines():
        if "perf_mcp_broker.audit" not in line:
            continue
        brace = line.find("{")
        if brace < 0:
            continue
        try:
            out.append(json.loads(line[brace:]))
        except ValueError:
            continue
    return out


def crash_lines(log_text: str) -> list[str]:
    """Lines that show the broker hit a bug (traceback, internal error)."""
    return [
        line
        for line in log_text.splitlines()
        if "Traceback" in line or "internal error" in line or " CRITICAL " in line
    ]
