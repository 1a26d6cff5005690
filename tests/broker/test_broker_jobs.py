"""Jobs on the real broker: a client killed mid-job, an output flood, the job limits,
and no fd or zombie growth after many jobs. Each test prints what it measured."""

from __future__ import annotations

import os
import time

import pytest
import trio

import helpers
from broker_wire import (
    Exchange,
    RawConn,
    audit_records,
    cmdline,
    job_dir_of,
    proc_status_kib,
    request,
)
from perf_mcp_protocol import (
    Accepted,
    AccessQuery,
    AccessReply,
    CpuProfile,
    ErrorCode,
    FdTable,
    ErrorReply,
    JobResult,
    ToolFeatures,
    limits,
)
from user_clients import StreamingClient, broker_perf_processes, report, run_client

pytestmark = [pytest.mark.root, pytest.mark.slow]


def profile_spec(duration: float, frequency: int = 99, pid: int | None = None) -> dict:
    return {"type": "cpu_profile", "duration_s": duration, "frequency_hz": frequency, "pid": pid, "include_kernel": True}


async def wait_for_perf(broker_pid: int, timeout: float = 10.0) -> list[helpers.ProcStat]:
    assert await helpers.await_until(lambda: bool(broker_perf_processes(broker_pid)), timeout), "no perf process started"
    return broker_perf_processes(broker_pid)


# --------------------------------------------------------------------------- 4. client killed


async def test_client_killed_mid_job_leaves_no_perf_behind(broker_alive: helpers.RunningBroker, granted: str) -> None:
    broker = broker_alive
    client = await StreamingClient.start(granted, broker.socket_path, {"requests": [profile_spec(30.0)]})
    try:
        accepted = await client.wait_for_type("accepted")
        assert accepted["type"] == "accepted", accepted
        perfs = await wait_for_perf(broker.pid)
        job_dirs = {d for p in perfs if (d := job_dir_of(cmdline(p.pid), p.pid))}
        assert job_dirs, f"no job directory in the perf command lines {[cmdline(p.pid) for p in perfs]}"
        assert all(os.path.isdir(d) for d in job_dirs)
        await trio.sleep(2.0)
        assert broker_perf_processes(broker.pid), "perf ended before the client was killed"
        killed_at = time.monotonic()
        client.kill()
    finally:
        await client.aclose()

    def gone() -> bool:
        return not broker_perf_processes(broker.pid) and not any(os.path.exists(d) for d in job_dirs)

    cleaned = await helpers.await_until(gone, 5.0)
    took = time.monotonic() - killed_at
    left = [(p.pid, cmdline(p.pid)) for p in broker_perf_processes(broker.pid)]
    await helpers.await_until(lambda: any(r["outcome"] == "cancelled" for r in audit_records(broker.log_text())), 5.0)
    audit = [r for r in audit_records(broker.log_text()) if r["kind"] == "cpu_profile"]
    outcomes = [r["outcome"] for r in audit]
    report(
        "client killed mid-job",
        perf_processes_before=len(perfs),
        perf_processes_left=len(left),
        job_dirs_left=sum(os.path.exists(d) for d in job_dirs),
        cleanup_s=round(took, 2),
        audit_outcomes=outcomes,
    )
    assert cleaned, f"5 s after the client was killed: perf left {left}, dirs {[d for d in job_dirs if os.path.exists(d)]}"
    assert outcomes == ["cancelled"]
    # The audit says what ran, also for a job cancelled in the middle of a step.
    assert len(audit[0]["argv"]) == 1 and " record " in audit[0]["argv"][0], audit[0]
    assert not helpers.zombie_children(broker.pid)


# --------------------------------------------------------------------------- 5. output flood

FLOOD_CAP = 65536
RSS_BOUND_KIB = 200 * 1024


async def test_output_flood_is_capped_with_memory_bounded(broker_factory, busy_process_factory) -> None:
    broker = broker_factory(output_cap=FLOOD_CAP)
    busy = [busy_process_factory(), busy_process_factory()]  # samples with stacks on both CPUs
    samples: list[tuple[int, int]] = []
    rss_start = proc_status_kib(broker.pid, "VmRSS")

    async def sample_memory(done: trio.Event) -> None:
        while not done.is_set():
            samples.append((proc_status_kib(broker.pid, "VmRSS"), proc_status_kib(broker.pid, "VmHWM")))
            await trio.sleep(0.1)

    done = trio.Event()
    got = Exchange()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_memory, done)
        conn = await RawConn.open(broker.socket_path, limits.reply_frame_limit(FLOOD_CAP))
        try:
            hello = await conn.hello()
            assert hello.output_cap == FLOOD_CAP
            await conn.send(CpuProfile(duration_s=12.0, frequency_hz=999, pid=None, include_kernel=True))
            await conn.drain(got, stop_at_final=True)
        finally:
            await conn.aclose()
            done.set()
    assert all(b.proc.poll() is None for b in busy)
    result = got.final
    assert isinstance(result, JobResult), got.summary()
    record, script = result.steps
    total_stdout = sum(len(s.stdout) for s in result.steps)
    peak_rss = max(r for r, _ in samples)
    hwm = max(h for _, h in samples)
    report(
        "output flood",
        cap=FLOOD_CAP,
        script_stdout=len(script.stdout),
        stdout_truncated=script.stdout_truncated,
        script_exit=script.exit_status,
        script_signal=script.signal,
        record_wall_s=record.wall_s,
        rss_start_kib=rss_start,
        rss_peak_kib=peak_rss,
        vmhwm_kib=hwm,
        memory_samples=len(samples),
    )
    assert record.exit_status == 0 or record.signal == 2 or record.exit_status == 130, record
    assert script.stdout_truncated, "12 s at 999 Hz on two busy CPUs must exceed 64 KiB of perf script text"
    assert len(script.stdout) <= FLOOD_CAP and total_stdout <= FLOOD_CAP
    assert b"\n\t" in script.stdout[:8192], f"not perf script text: {script.stdout[:200]!r}"
    assert hwm < RSS_BOUND_KIB, f"broker VmHWM {hwm} KiB"
    assert not broker_perf_processes(broker.pid)
    assert broker.alive()
    # The audit says why the job failed: the step cut at the cap, and how it ended.
    audit = [r for r in audit_records(broker.log_text()) if r["kind"] == "cpu_profile"][-1]
    assert audit["outcome"] == "failed" and audit["detail"].startswith("script: signal 9: "), audit


# --------------------------------------------------------------------------- 6. limits


async def test_second_profile_of_a_user_is_busy(broker_alive: helpers.RunningBroker, granted: str) -> None:
    broker = broker_alive
    first = await StreamingClient.start(granted, broker.socket_path, {"requests": [profile_spec(4.0)]})
    try:
        assert (await first.wait_for_type("accepted"))["type"] == "accepted"
        second = await run_client(granted, broker.socket_path, {"requests": [profile_spec(1.0)]})
        first_conns = await first.finish()
    finally:
        await first.aclose()
    second_final = second.conns[0].final
    first_final = first_conns[0].final
    # The slot is released when the first job ends: the same user may profile again.
    third = await run_client(granted, broker.socket_path, {"requests": [profile_spec(1.0, 49)]})
    third_final = third.conns[0].final
    report(
        "per-user limit (perfmcp-granted)",
        first=first_final and first_final["type"],
        second=second_final and f"{second_final['type']}:{second_final.get('code')}",
        third_after_first_ended=third_final and third_final["type"],
    )
    assert second_final is not None and second_final["type"] == "error" and second_final["code"] == "BUSY", second.conns
    assert "accepted" not in second.conns[0].types
    assert first_final is not None and first_final["type"] == "result"
    assert third_final is not None and third_final["type"] == "result"


async def _accepted_profile(path: str, duration: float) -> RawConn:
    conn = await RawConn.open(path)
    await conn.hello()
    await conn.send(CpuProfile(duration_s=duration, frequency_hz=49))
    first = await conn.recv()
    assert isinstance(first, Accepted), first
    return conn


async def _burst(path: str, n: int, req) -> list[object]:
    """n connections each finish the handshake, then all send ``req`` at once."""
    conns = [await RawConn.open(path) for _ in range(n)]
    finals: list[object] = []
    try:
        for c in conns:
            await c.hello()
        for c in conns:
            await c.send(req)

        async def collect(c: RawConn) -> None:
            got = await c.drain(Exchange(), stop_at_final=True)
            finals.append(got.final)

        async with trio.open_nursery() as nursery:
            for c in conns:
                nursery.start_soon(collect, c)
    finally:
        for c in conns:
            await c.aclose()
    return finals


async def test_root_and_global_limits(broker_alive: helpers.RunningBroker, granted: str) -> None:
    broker = broker_alive
    path = str(broker.socket_path)
    hello = (await request(path, AccessQuery())).messages[0]
    root_job = await _accepted_profile(path, 5.0)
    try:
        second_root_exchange = await request(path, CpuProfile(duration_s=1.0, frequency_hz=49))
        second_root = second_root_exchange.final
        user_job = await StreamingClient.start(granted, path, {"requests": [profile_spec(5.0, 49)]})
        try:
            assert (await user_job.wait_for_type("accepted"))["type"] == "accepted"
            burst = await _burst(path, 10, ToolFeatures())
            # AccessQuery is not a job: answered whatever the load.
            access = (await request(path, AccessQuery())).final
        finally:
            await user_job.aclose()
        root_final = (await root_job.drain(Exchange(), stop_at_final=True)).final
    finally:
        await root_job.aclose()
    results = sum(isinstance(f, JobResult) for f in burst)
    busy = sum(isinstance(f, ErrorReply) and f.code is ErrorCode.BUSY for f in burst)
    report(
        "root and global limits",
        max_jobs=hello.max_jobs,
        max_jobs_per_uid=hello.max_jobs_per_uid,
        root_second_profile=_describe(second_root),
        tool_features_burst_of_10_with_2_profiles_running=f"{results} ran, {busy} BUSY",
        access_query_under_load=_describe(access),
        root_first_profile=_describe(root_final),
    )
    assert results + busy == len(burst), burst
    assert results >= hello.max_jobs - 2, "free slots were refused"
    assert busy >= 1, "10 simultaneous jobs with 2 of 4 slots taken: some must be BUSY"
    # Root is exempt from the connection cap only: the per-uid job limits hold for uid 0
    # too (server.Broker._reserve keys them by (uid, class) with no exception), so its
    # second profile while the first runs is BUSY, and nothing of it was accepted.
    assert isinstance(second_root, ErrorReply) and second_root.code is ErrorCode.BUSY, second_root
    assert not [m for m in second_root_exchange.messages if isinstance(m, Accepted)]
    assert isinstance(access, AccessReply)
    assert isinstance(root_final, JobResult)


def _describe(msg: object) -> str:
    if isinstance(msg, ErrorReply):
        return f"error {msg.code.value}"
    return type(msg).__name__


# --------------------------------------------------------------------------- 8. leaks

N_JOBS = 200


async def test_no_fd_or_zombie_growth_after_many_jobs(broker_alive: helpers.RunningBroker, granted: str) -> None:
    broker = broker_alive
    path = str(broker.socket_path)
    # Warm-up: every code path once (lazy imports, first D-Bus connection).
    await request(path, ToolFeatures())
    await request(path, AccessQuery())
    await run_client(granted, path, {"requests": [{"type": "access_query"}]})
    fds_before = helpers.open_fd_count(broker.pid)
    rss_before = proc_status_kib(broker.pid, "VmRSS")
    kinds = {"tool_features": 0, "access_query": 0, "cpu_profile": 0, "fd_table": 0}
    started = time.monotonic()
    for i in range(N_JOBS):
        if i % 40 == 5:
            req, want = CpuProfile(duration_s=1.0, frequency_hz=49), JobResult
        elif i % 10 == 0:
            req, want = AccessQuery(), AccessReply
        elif i % 2:
            req, want = FdTable(pid=os.getpid()), JobResult  # the procfs reader (this process's fds)
        else:
            req, want = ToolFeatures(), JobResult
        got = await request(path, req)
        assert isinstance(got.final, want), f"job {i}: {got.summary()}"
        kinds[type(req).__struct_config__.tag] += 1
    # The polkit path too: a granted user's AccessQueries and a profile.
    user_requests = [{"type": "access_query"}] * 20 + [profile_spec(1.0, 49)]
    user = await run_client(granted, path, {"requests": user_requests})
    user_finals = [c.final["type"] if c.final else None for c in user.conns.values()]
    assert user_finals == ["access"] * 20 + ["result"], user_finals
    elapsed = time.monotonic() - started
    await helpers.await_until(lambda: helpers.open_fd_count(broker.pid) <= fds_before, 5.0)
    fds_after = helpers.open_fd_count(broker.pid)
    zombies = helpers.zombie_children(broker.pid)
    children = helpers.children(broker.pid)
    rss_after = proc_status_kib(broker.pid, "VmRSS")
    report(
        "many jobs",
        root_jobs=kinds,
        granted_user_requests=len(user_requests),
        fds=f"{fds_before}->{fds_after}",
        zombies=len(zombies),
        children_left=len(children),
        rss_kib=f"{rss_before}->{rss_after}",
        seconds=round(elapsed, 1),
    )
    assert fds_after - fds_before <= 2, f"fd growth: {fds_before} -> {fds_after}: {sorted(os.listdir(f'/proc/{broker.pid}/fd'))}"
    assert not zombies
    assert not children
