"""Malformed, oversized, wrong-type and hostile frames against the real broker.

Each bad connection must be closed (or answered with one ErrorReply) on its own,
while a well-behaved client on other connections completes an AccessQuery and a
short CpuProfile; the broker stays alive, logs no internal error, leaks no fd
and leaves no zombie. Prints: frames tried, crashes, leaks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec
import pytest
import trio

import helpers
from broker_wire import (
    Exchange,
    RawConn,
    crash_lines,
    msgpack_frame,
    raw_frame,
    request,
)
from perf_mcp_protocol import (
    AccessQuery,
    AccessReply,
    BrokerHello,
    CpuProfile,
    ErrorReply,
    Hello,
    JobResult,
    encode_frame,
    limits,
)
from user_clients import report

pytestmark = [pytest.mark.root, pytest.mark.slow]

HELLO = encode_frame(Hello(protocol_version=limits.PROTOCOL_VERSION))
GOOD_PROFILE = {"type": "cpu_profile", "duration_s": 1.0, "frequency_hz": 49, "pid": None, "include_kernel": True}
HOSTILE = {
    "pid": [0, -1, 2**31, 4_194_305, 2**64 - 1, "1", "1; reboot", "$(id)", "../1", "1\x00", 1.5, [1], {"a": 1}, True],
    "duration_s": [0, 0.0, 0.5, 61, 61.0, float("nan"), float("inf"), -float("inf"), -1, "10", "10;", None],
    "frequency_hz": [0, 1000, -1, 99.5, 2**40, "99", "99$(reboot)", "}", None],
    "include_kernel": ["yes", 1, 0, None, "../"],
}


@dataclass(frozen=True)
class Case:
    name: str
    frames: tuple[bytes, ...]
    # "closed" : closed with nothing but (maybe) the BrokerHello before it
    # "error:CODE" : one ErrorReply with that code, then closed
    expect: str = "closed"
    eof: bool = False  # half-close our side after sending (for incomplete frames)
    protocol_error: bool = True  # the broker must log it as a protocol error


def fixed_cases() -> list[Case]:
    garbage = bytes(range(256)) * 256
    cases = [
        Case("empty frame", (raw_frame(b""),)),
        Case("header 0xFFFFFFFF", (b"\xff\xff\xff\xff" + b"A" * 1000,)),
        Case("header 64 KiB + 1", ((limits.MAX_REQUEST_FRAME + 1).to_bytes(4, "big") + b"A" * 1000,)),
        Case("header 2**31", ((2**31).to_bytes(4, "big"),)),
        Case("64 KiB of garbage at the limit", (raw_frame(garbage[: limits.MAX_REQUEST_FRAME]),)),
        Case("hello then 0xFFFFFFFF", (HELLO, b"\xff\xff\xff\xff")),
        Case("hello then 64 KiB + 1", (HELLO, (limits.MAX_REQUEST_FRAME + 1).to_bytes(4, "big") + b"\0" * 100)),
        Case("hello then garbage", (HELLO, raw_frame(b"\xc1\xc1\xc1"))),
        Case("truncated header then EOF", (b"\x00\x00",), eof=True, protocol_error=False),
        Case("truncated body then EOF", ((100).to_bytes(4, "big") + b"\x81",), eof=True, protocol_error=False),
        Case("hello, truncated request then EOF", (HELLO, (50).to_bytes(4, "big") + b"\x81\xa4"), eof=True, protocol_error=False),
        Case("broker_hello sent by a client", (msgpack_frame({"type": "broker_hello", "protocol_version": 1}),)),
        Case(
            "a whole valid BrokerHello sent by a client",
            (
                encode_frame(
                    BrokerHello(1, "x", {}, [], [], _kernel(), limits.MIN_OUTPUT_CAP, 1, 1)  # type: ignore[arg-type]
                ),
            ),
        ),
        Case("request before hello", (encode_frame(AccessQuery()),)),
        Case("cpu_profile before hello", (msgpack_frame(GOOD_PROFILE),)),
        Case("two hellos", (HELLO, HELLO)),
        Case("unknown tag", (msgpack_frame({"type": "shell", "argv": ["/bin/sh"]}),)),
        Case("unknown tag after hello", (HELLO, msgpack_frame({"type": "run", "argv": ["/bin/sh", "-c", "id"]}))),
        Case("tag with shell characters", (HELLO, msgpack_frame({**GOOD_PROFILE, "type": "cpu_profile; id"}))),
        Case("no tag", (HELLO, msgpack_frame({"duration_s": 1.0, "frequency_hz": 49}))),
        Case("hello with uid field", (msgpack_frame({"type": "hello", "protocol_version": 1, "uid": 0}),)),
        Case("request with uid field", (HELLO, msgpack_frame({"type": "access_query", "uid": 0}))),
        Case("cpu_profile with extra argv field", (HELLO, msgpack_frame({**GOOD_PROFILE, "argv": ["-e", "x"]}))),
        Case("hello version 0", (msgpack_frame({"type": "hello", "protocol_version": 0}),)),
        Case("hello version string", (msgpack_frame({"type": "hello", "protocol_version": "1"}),)),
        Case("hello version 65536", (msgpack_frame({"type": "hello", "protocol_version": 65536}),)),
        Case(
            "hello of the next protocol version",
            (msgpack_frame({"type": "hello", "protocol_version": limits.PROTOCOL_VERSION + 1}),),
            "error:PROTOCOL_MISMATCH",
            protocol_error=False,
        ),
        Case("body is a list", (raw_frame(msgspec.msgpack.encode(["hello", 1])),)),
        Case("body is nil", (raw_frame(msgspec.msgpack.encode(None)),)),
        Case("body is a string", (raw_frame(msgspec.msgpack.encode("hello")),)),
        Case("body is JSON text", (raw_frame(b'{"type": "hello", "protocol_version": 1}'),)),
        Case("hello then result sent by a client", (HELLO, msgpack_frame({"type": "result", "job_id": 1, "steps": [], "wall_s": 0.0}))),
        Case("cpu_profile missing fields", (HELLO, msgpack_frame({"type": "cpu_profile"}))),
        Case(
            "pid in range that does not exist",
            (HELLO, msgpack_frame({**GOOD_PROFILE, "pid": limits.PID_MAX})),
            "error:PID_NOT_FOUND",
            protocol_error=False,
        ),
    ]
    for field, values in HOSTILE.items():
        for value in values:
            cases.append(Case(f"cpu_profile {field}={value!r}", (HELLO, msgpack_frame({**GOOD_PROFILE, field: value}))))
    # FdTable: the pid is its only field, and nothing else may ride along.
    for value in HOSTILE["pid"] + [None]:
        cases.append(Case(f"fd_table pid={value!r}", (HELLO, msgpack_frame({"type": "fd_table", "pid": value}))))
    cases += [
        Case("fd_table without pid", (HELLO, msgpack_frame({"type": "fd_table"}))),
        Case("fd_table with a path", (HELLO, msgpack_frame({"type": "fd_table", "pid": 1, "path": "/proc/1/fd"}))),
        Case("fd_table with a uid", (HELLO, msgpack_frame({"type": "fd_table", "pid": 1, "uid": 0}))),
        Case("fd_table with an fd", (HELLO, msgpack_frame({"type": "fd_table", "pid": 1, "fd": 3}))),
        Case("fd_table before hello", (msgpack_frame({"type": "fd_table", "pid": 1}),)),
        Case("fd_table tag in capitals", (HELLO, msgpack_frame({"type": "FD_TABLE", "pid": 1}))),
        Case("process_io with a pid", (HELLO, msgpack_frame({"type": "process_io", "pid": 1}))),
        Case("process_io with a path", (HELLO, msgpack_frame({"type": "process_io", "path": "/proc/1/io"}))),
        Case(
            "fd_table of a pid in range that does not exist",
            (HELLO, msgpack_frame({"type": "fd_table", "pid": limits.PID_MAX})),
            "error:PID_NOT_FOUND",
            protocol_error=False,
        ),
    ]
    return cases


def _kernel():
    from perf_mcp_protocol import KernelFeatures

    return KernelFeatures(btf=True, tracefs=True, kprobe_events=False, perf_event_paranoid=2, kptr_restrict=0)


def random_cases(rng: random.Random, n: int) -> list[Case]:
    cases = []
    for i in range(n):
        kind = i % 3
        body = rng.randbytes(rng.randint(0, 300))
        if kind == 0:  # bytes with no structure at all (the first 4 are a random length)
            cases.append(Case(f"random bytes #{i}", (rng.randbytes(rng.randint(1, 300)),), eof=True, protocol_error=False))
        elif kind == 1:  # a well-framed random body as the first frame
            cases.append(Case(f"random frame #{i}", (raw_frame(body),)))
        else:  # a well-framed random body as the request
            cases.append(Case(f"hello + random frame #{i}", (HELLO, raw_frame(body))))
    return cases


def check(case: Case, got: Exchange) -> str | None:
    """What is wrong with the broker's answer to ``case``, or None."""
    if not got.closed:
        return f"{case.name}: connection not closed ({got.summary()})"
    after = got.after_hello
    if case.expect == "closed":
        if after:
            return f"{case.name}: expected a closed connection, got {got.summary()}"
        return None
    code = case.expect.split(":", 1)[1]
    if len(after) != 1 or not isinstance(after[0], ErrorReply) or after[0].code.value != code:
        return f"{case.name}: expected one ErrorReply {code}, got {got.summary()}"
    return None


async def send_case(path: str, case: Case) -> Exchange:
    conn = await RawConn.open(path)
    got = Exchange()
    try:
        for data in case.frames:
            if not await conn.send_raw(data):
                got.send_failed = True
                break
        if case.eof and not got.send_failed:
            try:
                await conn.stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await conn.drain(got)
    finally:
        await conn.aclose()
    return got


def protocol_error_lines(log: str) -> int:
    return sum(1 for line in log.splitlines() if "closing connection from" in line)


async def profile_once(path: str, accepted: trio.Event | None = None) -> None:
    conn = await RawConn.open(path)
    got = Exchange()
    try:
        await conn.hello()
        await conn.send(CpuProfile(duration_s=1.0, frequency_hz=49))
        first = await conn.recv()
        assert first is not None and type(first).__name__ == "Accepted", first
        if accepted is not None:
            accepted.set()
        await conn.drain(got, stop_at_final=True)
    finally:
        await conn.aclose()
    assert isinstance(got.final, JobResult), got.summary()
    record, script = got.final.steps
    assert record.name == "record" and not record.timed_out, record
    assert script.name == "script" and script.exit_status == 0 and script.stdout, script


async def well_behaved(path: str, profiling: trio.Event, flood_done: trio.Event, counts: dict[str, int]) -> None:
    """A CpuProfile (the flood starts once it is accepted) and AccessQueries beside it,
    then more of both until the flood is over."""
    async def access_loop(done: trio.Event) -> None:
        while True:
            got = await request(path, AccessQuery())
            assert isinstance(got.final, AccessReply), got.summary()
            counts["access"] += 1
            if done.is_set():
                return
            await trio.sleep(0.05)

    while True:
        profile_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(access_loop, profile_done)
            await profile_once(path, profiling)
            counts["profile"] += 1
            profile_done.set()
        if flood_done.is_set():
            return


async def test_bad_frames_close_only_their_own_connection(broker_alive: helpers.RunningBroker) -> None:
    broker = broker_alive
    path = str(broker.socket_path)
    # Warm up (first polkit/D-Bus use, lazy imports) before the fd baseline.
    await request(path, AccessQuery())
    fds_before = helpers.open_fd_count(broker.pid)

    cases = fixed_cases() + random_cases(random.Random(20240611), 150)
    problems: list[str] = []
    counts = {"access": 0, "profile": 0, "frames": 0, "connections": 0}
    flood_done = trio.Event()
    profiling = trio.Event()

    async def flood() -> None:
        await profiling.wait()
        for case in cases:
            before = protocol_error_lines(broker.log_text())
            got = await send_case(path, case)
            counts["frames"] += len(case.frames)
            counts["connections"] += 1
            problem = check(case, got)
            if problem is None and case.protocol_error:
                # The broker closed because it refused the frame, not for another reason.
                if not await helpers.await_until(lambda: protocol_error_lines(broker.log_text()) > before, 5.0):
                    problem = f"{case.name}: closed, but the broker logged no protocol error"
            if problem:
                problems.append(problem)
            assert broker.alive(), f"broker died on case {case.name!r}"
        flood_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        nursery.start_soon(well_behaved, path, profiling, flood_done, counts)

    log = broker.log_text()
    crashes = crash_lines(log) + ([] if broker.alive() else ["broker exited"])
    await helpers.await_until(lambda: helpers.open_fd_count(broker.pid) <= fds_before, 5.0)
    fds_after = helpers.open_fd_count(broker.pid)
    zombies = helpers.zombie_children(broker.pid)
    leaks = max(0, fds_after - fds_before) + len(zombies)
    report(
        "adversarial frames",
        connections=counts["connections"],
        frames_tried=counts["frames"],
        wrong_answers=len(problems),
        crashes=len(crashes),
        leaks=leaks,
        fds=f"{fds_before}->{fds_after}",
        zombies=len(zombies),
        good_access_queries=counts["access"],
        good_cpu_profiles=counts["profile"],
    )
    assert not problems, "\n".join(problems)
    assert not crashes, "\n".join(crashes)
    assert leaks == 0, f"fds {fds_before}->{fds_after}, zombies {zombies}"
    assert counts["access"] >= 1 and counts["profile"] >= 1
