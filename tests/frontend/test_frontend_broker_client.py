"""BrokerClient against a scripted in-process peer on a real Unix socket.

The real broker cannot be made to send every failure on demand (a wrong protocol
version, an oversized frame, each error code), so this peer plays the broker's
side of the wire with the real codec; the real broker is in test_e2e_broker.py.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from perf_mcp.broker_client import BrokerClient, resolve_socket_path
from perf_mcp.errors import ErrorCode, ToolError
from perf_mcp_protocol import (
    Accepted,
    AccessQuery,
    AccessReply,
    BrokerHello,
    CpuProfile,
    ErrorCode as BrokerCode,
    ErrorReply,
    FrameReader,
    JobClass,
    KernelFeatures,
    Progress,
    ProtocolError,
    decode_client_message,
    encode_frame,
    limits,
)

Script = Callable[[trio.SocketStream, FrameReader], Awaitable[None]]


def hello(version: int = limits.PROTOCOL_VERSION) -> BrokerHello:
    return BrokerHello(protocol_version=version, broker_version="test", programs={"perf": "/usr/bin/perf"},
                       missing=[], job_kinds=["cpu_profile"], output_cap=limits.MIN_OUTPUT_CAP,
                       kernel=KernelFeatures(btf=True, tracefs=True, kprobe_events=False, perf_event_paranoid=2,
                                             kptr_restrict=0),
                       max_jobs_per_uid=1, max_jobs=4)


async def handshake(stream: trio.SocketStream, reader: FrameReader, version: int = limits.PROTOCOL_VERSION) -> object:
    decode_client_message(await reader.read_frame(limits.MAX_REQUEST_FRAME))
    await stream.send_all(encode_frame(hello(version)))
    return decode_client_message(await reader.read_frame(limits.MAX_REQUEST_FRAME))


async def serve_once(path: Path, script: Script, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(1)
    task_status.started()
    with listener:
        sock, _ = await listener.accept()
        stream = trio.SocketStream(sock)
        async with stream:
            try:
                await script(stream, FrameReader(stream))
            except (ProtocolError, trio.BrokenResourceError):
                pass  # the client hung up first: that is what some tests want


async def run_against(tmp_path: Path, script: Script, request: object = None, timeout_s: float = 10.0,
                      on_progress: object = None) -> object:
    path = tmp_path / "b.sock"
    outcome: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, path, script)
        try:
            outcome["reply"] = await BrokerClient(str(path)).run(
                request or AccessQuery(), timeout_s=timeout_s, on_progress=on_progress)  # type: ignore[arg-type]
        except ToolError as exc:
            outcome["error"] = exc
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["reply"]


def test_socket_path_resolution() -> None:
    assert resolve_socket_path("/a", {"PERF_MCP_BROKER_SOCKET": "/b"}) == "/a"
    assert resolve_socket_path(None, {"PERF_MCP_BROKER_SOCKET": "/b"}) == "/b"
    assert resolve_socket_path(None, {}) == "/run/perf-mcp/broker.sock"


async def test_missing_and_stale_sockets_are_broker_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as exc:
        await BrokerClient(str(tmp_path / "none.sock")).run(AccessQuery(), timeout_s=5)
    assert exc.value.code is ErrorCode.BROKER_UNAVAILABLE and "perf-mcp-broker" in exc.value.suggestion
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))  # bound, never listening: connect is refused
    try:
        with pytest.raises(ToolError) as exc:
            await BrokerClient(str(stale)).run(AccessQuery(), timeout_s=5)
        assert exc.value.code is ErrorCode.BROKER_UNAVAILABLE
    finally:
        s.close()


async def test_access_reply_and_progress(tmp_path: Path) -> None:
    seen: list[Progress] = []

    async def script(stream: trio.SocketStream, reader: FrameReader) -> None:
        req = await handshake(stream, reader)
        assert isinstance(req, CpuProfile)
        await stream.send_all(encode_frame(Accepted(job_id=7, job_class=JobClass.PROFILE)))
        await stream.send_all(encode_frame(Progress(step="record", elapsed_s=1.0, expected_s=2.0)))
        await stream.send_all(encode_frame(AccessReply(granted=[JobClass.PROFILE], denied=[], uid=5, detail="")))

    async def on_progress(p: Progress) -> None:
        seen.append(p)

    reply = await run_against(tmp_path, script, CpuProfile(duration_s=1, frequency_hz=99), on_progress=on_progress)
    assert reply.job_id == 7 and isinstance(reply.final, AccessReply)  # type: ignore[attr-defined]
    assert [p.step for p in seen] == ["record"]


@pytest.mark.parametrize(
    ("broker_code", "tool_code"),
    [
        (BrokerCode.PERMISSION_DENIED, ErrorCode.PERMISSION_DENIED),
        (BrokerCode.BUSY, ErrorCode.PROFILER_BUSY),
        (BrokerCode.PROGRAM_MISSING, ErrorCode.CAPABILITY_MISSING),
        (BrokerCode.PID_NOT_FOUND, ErrorCode.PID_NOT_FOUND),
        (BrokerCode.INVALID_REQUEST, ErrorCode.INVALID_PARAMS),
        (BrokerCode.INTERNAL, ErrorCode.EXECUTION_FAILED),
        (BrokerCode.PEER_GONE, ErrorCode.EXECUTION_FAILED),
        (BrokerCode.PROTOCOL_MISMATCH, ErrorCode.BROKER_UNAVAILABLE),
    ],
)
async def test_error_replies_map_to_tool_errors(tmp_path: Path, broker_code: BrokerCode, tool_code: ErrorCode) -> None:
    async def script(stream: trio.SocketStream, reader: FrameReader) -> None:
        await handshake(stream, reader)
        await stream.send_all(encode_frame(ErrorReply(code=broker_code, message="nope")))

    with pytest.raises(ToolError) as exc:
        await run_against(tmp_path, script)
    assert exc.value.code is tool_code and "nope" in exc.value.message


async def test_wrong_protocol_version_oversized_frame_and_early_close(tmp_path: Path) -> None:
    async def old_broker(stream: trio.SocketStream, reader: FrameReader) -> None:
        await handshake(stream, reader, version=limits.PROTOCOL_VERSION + 1)

    with pytest.raises(ToolError) as exc:
        await run_against(tmp_path, old_broker)
    assert exc.value.code is ErrorCode.BROKER_UNAVAILABLE and "same release" in exc.value.suggestion

    async def flood(stream: trio.SocketStream, reader: FrameReader) -> None:
        await handshake(stream, reader)
        # a header announcing more than the reply limit: refused before the body is read
        await stream.send_all((limits.reply_frame_limit(limits.MIN_OUTPUT_CAP) + 1).to_bytes(4, "big"))

    with pytest.raises(ToolError) as exc:
        await run_against(_fresh(tmp_path, "f"), flood)
    assert exc.value.code is ErrorCode.EXECUTION_FAILED

    async def hang_up(stream: trio.SocketStream, reader: FrameReader) -> None:
        await handshake(stream, reader)

    with pytest.raises(ToolError) as exc:
        await run_against(_fresh(tmp_path, "h"), hang_up)
    assert exc.value.code is ErrorCode.EXECUTION_FAILED


def _fresh(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


async def test_cancel_and_timeout_close_the_socket(tmp_path: Path) -> None:
    eof_seen: list[str] = []

    def script_for(label: str) -> Script:
        async def script(stream: trio.SocketStream, reader: FrameReader) -> None:
            await handshake(stream, reader)
            await stream.send_all(encode_frame(Accepted(job_id=1, job_class=JobClass.PROFILE)))
            with trio.fail_after(5):
                assert await stream.receive_some() == b""  # the client closed its end
            eof_seen.append(label)

        return script

    path = tmp_path / "c.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, path, script_for("cancel"))
        with trio.move_on_after(0.5):
            await BrokerClient(str(path)).run(CpuProfile(duration_s=30, frequency_hz=99), timeout_s=60)
    assert eof_seen == ["cancel"]

    with pytest.raises(ToolError) as exc:
        await run_against(_fresh(tmp_path, "t"), script_for("timeout"), CpuProfile(duration_s=30, frequency_hz=99),
                          timeout_s=0.5)
    assert exc.value.code is ErrorCode.TIMEOUT
    assert eof_seen == ["cancel", "timeout"]
