"""perf_thread_profile include_offcpu=true through the real root broker (one per
module), the frontend as perfmcp-granted and the three-thread workload as
perfmcp-denied (another user): each thread's off-CPU time and biggest blocking
stack from offcputime -p PID. The sleeper blocks in pmcp_sleeper_wait ->
nanosleep(100 ms) all the time, so its off-CPU time is offcputime's window.

Without the grant (perfmcp-denied) or without a broker, the call still answers
from procfs: data.offcpu says unavailable with the broker's error code, and a
warning says so (a decision documented in the tool module: the thread table
needs no privilege, the off-CPU column is an extra).
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import trio

import helpers
from helpers import envelope, ok_data
from thread_util import by_name, check_known_answers, threads_exe, workload  # noqa: F401  (fixture)

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOL = "perf_thread_profile"
DURATION = 3


def offcputime_of(pid: int) -> list[int]:
    """offcputime processes tracing `pid` (other tests may run their own offcputime at the same time)."""
    found = []
    for p in helpers.processes_named("offcputime"):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-p" in argv and str(pid).encode() in argv:
            found.append(p)
    return found


RUNGS = {
    # rung: (broker arguments, data.offcpu.method, backend, skipped methods)
    "libbpf": ((), "offcputime -p PID (libbpf-tools)", "libbpf", []),
    "bpftrace": (("--disable", "offcputime"), "bpftrace on sched:sched_switch (offcpu.bt)", "bpftrace",
                 ["offcputime -p PID (libbpf-tools)"]),
}


@pytest.mark.parametrize("rung", list(RUNGS))
async def test_offcpu_per_thread_through_the_broker(
    module_broker_factory, system_bus: None, test_users: helpers.TestUsers, threads_exe: Path,  # type: ignore[no-untyped-def]
    rung: str
) -> None:
    args, method, backend, skipped = RUNGS[rung]
    broker = module_broker_factory(*args)
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    with workload(threads_exe, test_users.denied) as proc:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            tool = next(t for t in (await client.list_tools()).tools if t.name == TOOL)
            result = await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": DURATION, "include_offcpu": True},
                                            progress_callback=on_progress)
    env = envelope(result)
    jsonschema.validate(env, tool.output_schema)
    data = ok_data(result)
    print(f"\nowner {test_users.denied.name}, include_offcpu, {rung}:", end="")
    t = check_known_answers(data, proc.pid, DURATION)
    off = data["offcpu"]
    assert off["status"] == "collected" and off["error_code"] is None and off["duration_s"] == DURATION
    assert off["method"] == method and off["backend"] == backend
    assert data["method"] == f"procfs: /proc/PID/task/*/stat, status, schedstat deltas + {method}"
    assert data["backend"] == backend and off["broker_job_id"] > 0
    assert [s["method"] for s in data["skipped"]] == skipped
    if skipped:
        assert "disabled by the administrator" in data["skipped"][0]["reason"]
        assert any(w.startswith(f"{skipped[0]} skipped: ") for w in env["warnings"])
    sleep = t["pmcp-sleep"]
    # blocked all the time: offcputime's window, less at most one 100 ms sleep cut at either end
    assert 0.85 * DURATION * 1000 <= sleep["offcpu_ms"] <= 1.05 * DURATION * 1000, sleep
    assert "pmcp_sleeper_wait" in sleep["offcpu_top_stack"] and sleep["offcpu_top_stack_ms"] >= 0.8 * sleep["offcpu_ms"]
    assert sleep["offcpu_blocked_in"] in ("clock_nanosleep", "__clock_nanosleep", "nanosleep", "__GI___clock_nanosleep",
                                          "__nanosleep", "pmcp_sleeper_wait"), sleep
    half = t["pmcp-half"]
    assert 0.3 * DURATION * 1000 <= half["offcpu_ms"] <= 0.9 * DURATION * 1000, half  # ~50% asleep (+ preempted)
    assert data["totals"]["offcpu_ms"] >= sleep["offcpu_ms"] + half["offcpu_ms"]
    blocked = next(f for f in data["findings"] if f["id"] == "process.thread_blocked")
    assert blocked["suggestion"].startswith(f"perf_offcpu_profile with pid={proc.pid}")
    assert any("the tracer's own" in w for w in env["warnings"])
    assert progress and progress[-1][0] == progress[-1][1] and progress[-1][2].endswith("done")
    audit = [line for line in broker.log_text().splitlines() if '"kind": "offcpu_profile"' in line]
    assert audit and '"outcome": "ok"' in audit[-1]
    print(f"  off-CPU: sleep {sleep['offcpu_ms']:.0f} ms of a {DURATION} s window in {sleep['offcpu_blocked_in']}, "
          f"half {half['offcpu_ms']:.0f} ms, busy {t['pmcp-busy']['offcpu_ms']:.0f} ms (preempted)")


async def test_denied_user_or_no_broker_gets_the_procfs_answer_with_a_warning(
    module_broker_factory, system_bus: None, test_users: helpers.TestUsers, shared_tmp: Path,  # type: ignore[no-untyped-def]
    threads_exe: Path
) -> None:
    broker = module_broker_factory()
    answers = {}
    with workload(threads_exe, test_users.granted) as proc:
        for key, user, sock in (("denied", test_users.denied, broker.socket_path),
                                ("no broker", test_users.granted, shared_tmp / "no-broker.sock")):
            async with helpers.mcp_client(user, sock) as client:
                result = await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": 2, "include_offcpu": True})
            answers[key] = (ok_data(result), envelope(result))
    for key, code in (("denied", "PERMISSION_DENIED"), ("no broker", "BROKER_UNAVAILABLE")):
        data, env = answers[key]
        off = data["offcpu"]
        assert off["status"] == "unavailable" and off["error_code"] == code, off
        assert data["method"].startswith("procfs") and data["backend"] == "procfs"
        assert all(r["offcpu_ms"] is None for r in data["threads"])
        assert any(w.startswith("off-CPU part unavailable (") for w in env["warnings"]), env["warnings"]
        assert data["threads_total"] == 4 and by_name(data)["pmcp-sleep"]["cpu_pct"] < 3
        print(f"\n{key}: offcpu {off['error_code']}: {off['reason'][:100]}")
    assert answers["denied"][0]["offcpu"]["reason"].startswith("not granted")
    assert answers["no broker"][0]["offcpu"]["reason"].startswith("no broker")


async def test_cancel_kills_the_offcpu_job(
    module_broker_factory, system_bus: None, test_users: helpers.TestUsers, threads_exe: Path  # type: ignore[no-untyped-def]
) -> None:
    broker = module_broker_factory()
    with workload(threads_exe, test_users.denied) as proc:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            seen: list[int] = []

            async def watch() -> None:
                while not seen:
                    seen.extend(offcputime_of(proc.pid))
                    await trio.sleep(0.1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                with trio.move_on_after(3.0):
                    await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": 30, "include_offcpu": True})
                nursery.cancel_scope.cancel()
            gone = await helpers.await_until(lambda: offcputime_of(proc.pid) == [], 8.0)
            follow = await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": 1})
    assert seen, "offcputime never ran"
    assert gone, offcputime_of(proc.pid)
    assert ok_data(follow)["threads_total"] == 4
    audit = [line for line in broker.log_text().splitlines() if '"kind": "offcpu_profile"' in line]
    print(f"\ncancel: offcputime gone; last audit line: {audit[-1][:160] if audit else None}")
