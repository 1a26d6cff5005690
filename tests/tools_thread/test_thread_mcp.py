"""perf_thread_profile through the real MCP client, the real frontend as
perfmcp-granted (or -denied), on the three-thread workload of thread_util.py
compiled here: pmcp-busy (spins), pmcp-half (50 ms of CPU, 50 ms asleep),
pmcp-sleep (100 ms sleeps). The workload runs as the frontend's own user, and
as another user (the task files are world-readable: no broker needed), and
with include_offcpu through the real root broker (offcputime -p PID).

Known answers that hold on a loaded 2-core machine: a thread that never blocks
is on a CPU or waiting on a run queue all the time (on-CPU % + wait % ~ 100),
so a busy thread below 80% must show the missing share as run-queue wait; the
half-busy thread's on-CPU time equals its blocked time (50 ms each per period)
and it makes one voluntary switch per 50 ms of CPU; the sleeper makes ten per
second and is blocked the whole window. A unit slip (ticks for ns, ms for s, a
window twice too long) breaks each of these.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

import helpers
from helpers import envelope, ok_data
from thread_util import by_name, check_always_runnable, check_known_answers, threads_exe, workload  # noqa: F401  (fixture)

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOL = "perf_thread_profile"
DURATION = 3


async def test_three_threads_of_own_and_another_users_process(
    test_users: helpers.TestUsers, shared_tmp: Path, threads_exe: Path
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == TOOL)
        props = tool.input_schema["properties"]
        assert tool.input_schema["required"] == ["pid"]
        assert [props[k]["default"] for k in ("duration_s", "include_offcpu", "top_n")] == [5.0, False, 20]
        assert tool.annotations.read_only_hint is True
        results = {}
        for owner in (test_users.granted, test_users.denied):
            with workload(threads_exe, owner) as proc:
                progress.clear()
                result = await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": DURATION},
                                                progress_callback=on_progress)
                jsonschema.validate(envelope(result), tool.output_schema)
                data = ok_data(result)
                print(f"\nowner {owner.name}:", end="")
                check_known_answers(data, proc.pid, DURATION)
                results[owner.name] = (data, envelope(result), result)
                assert [round(v) for v, _, _ in progress] == [1, 2, 3] and all(t == DURATION for _, t, _ in progress)
                assert progress[-1][2] == f"3/{DURATION} s: 4 threads"
    for name, (data, env, result) in results.items():
        owner = test_users.granted if name == test_users.granted.name else test_users.denied
        assert data["uid"] == owner.uid and data["unreadable_files"] == {}
        assert data["method"].startswith("procfs") and data["backend"] == "procfs" and data["skipped"] == []
        assert data["offcpu"] == {"status": "not_requested", "stacks": 0, "unmatched_stacks": 0, "reason": None,
                                  "error_code": None, "method": None, "backend": None, "duration_s": None,
                                  "min_block_us": None, "broker_job_id": None}
        text = result.content[0].text
        assert text.startswith(f"Threads of pid {data['pid']} (pmcp-threads) over ") and "pmcp-busy" in text
        assert env["truncated"] is False and data["threads_listed"] == 4
        # a busy thread near a full CPU is a single-thread bottleneck; below it only when it waited for a CPU
        busy = by_name(data)["pmcp-busy"]
        ids = {f["id"]: f for f in data["findings"]}
        if busy["cpu_pct"] > 80:
            f = ids["process.single_thread_bottleneck"]
            assert f"tid {busy['tid']}" in f["title"]
            assert f["suggestion"].startswith(f"perf_cpu_profile with pid={data['pid']}, duration_s=10")
        if busy["runq_wait_pct"] > 10:
            assert "process.thread_cpu_contention" in ids


async def test_top_n_and_bad_params_are_typed_errors(
    test_users: helpers.TestUsers, shared_tmp: Path, threads_exe: Path
) -> None:
    gone = helpers.spawn_as(test_users.granted, ["/bin/true"])
    gone.wait()
    hostile: list[tuple[dict[str, Any], str]] = [
        ({}, "INVALID_PARAMS"),
        ({"pid": 0}, "INVALID_PARAMS"),
        ({"pid": -1}, "INVALID_PARAMS"),
        ({"pid": 2**31}, "INVALID_PARAMS"),
        ({"pid": 4194305}, "INVALID_PARAMS"),
        ({"pid": "$(id)"}, "INVALID_PARAMS"),
        ({"pid": 1, "duration_s": 0}, "INVALID_PARAMS"),
        ({"pid": 1, "duration_s": 31}, "INVALID_PARAMS"),
        ({"pid": 1, "duration_s": "NaN"}, "INVALID_PARAMS"),
        ({"pid": 1, "top_n": 0}, "INVALID_PARAMS"),
        ({"pid": 1, "top_n": 501}, "INVALID_PARAMS"),
        ({"pid": 1, "include_offcpu": "../"}, "INVALID_PARAMS"),
        ({"pid": 1, "comm": "x;y"}, "INVALID_PARAMS"),
        ({"pid": gone.pid}, "PID_NOT_FOUND"),
    ]
    async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
        with workload(threads_exe, test_users.granted) as proc:
            tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
            hostile.append(({"pid": tids[0], "duration_s": 1}, "INVALID_PARAMS"))  # a thread, not a process
            for args, code in hostile:
                result = await client.call_tool(TOOL, args)
                env = envelope(result)
                assert result.is_error is True and env["error"]["code"] == code, (args, env)
                assert env["error"]["suggestion"]
            thread_error = envelope(await client.call_tool(TOOL, {"pid": tids[0]}))["error"]
            assert f"pid={proc.pid}" in thread_error["suggestion"]
            result = await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": 1, "top_n": 2})
    data = ok_data(result)
    assert data["threads_listed"] == 2 and data["threads_total"] == 4 and envelope(result)["truncated"] is True
    assert [t["name"] for t in data["threads"]] == ["pmcp-busy", "pmcp-half"]
    print(f"\nhostile parameter sets tried: {len(hostile)}, all typed errors; server kept serving")


async def test_process_exiting_mid_window_is_reported(
    test_users: helpers.TestUsers, shared_tmp: Path, threads_exe: Path
) -> None:
    async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
        with workload(threads_exe, test_users.denied, life_s=4) as proc:  # SIGALRM ends it 4 s after its start
            result = await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": 8})
            ended = proc.poll() is not None or Path(f"/proc/{proc.pid}/stat").read_text().split()[2] == "Z"
    assert ended
    env = envelope(result)
    data = ok_data(result)
    assert data["process_exited"] is True and 1.0 <= data["window_s"] <= 4.2, data["window_s"]
    assert any(w.startswith(f"process {proc.pid} exited ") for w in env["warnings"]), env["warnings"]
    busy = by_name(data)["pmcp-busy"]
    check_always_runnable(busy)  # the figures still hold up to the last pass
    print(f"\nexited mid-window: window {data['window_s']} s over {data['passes']} passes, "
          f"busy {busy['cpu_pct']:.1f}%")


async def test_cancel_stops_the_window_and_the_server_keeps_serving(
    test_users: helpers.TestUsers, shared_tmp: Path, threads_exe: Path
) -> None:
    async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
        with workload(threads_exe, test_users.granted) as proc:
            with trio.move_on_after(1.5) as scope:
                await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": 30})
            assert scope.cancelled_caught
            follow = await client.call_tool(TOOL, {"pid": proc.pid, "duration_s": 1})
    assert ok_data(follow)["threads_total"] == 4


async def test_quiet_control_has_no_warning(test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    quiet = helpers.spawn_as(test_users.denied, ["/bin/sleep", "60"])
    try:
        async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
            data = ok_data(await client.call_tool(TOOL, {"pid": quiet.pid, "duration_s": 2}))
    finally:
        helpers.stop_process(quiet)
    assert data["comm"] == "sleep" and data["threads_total"] == 1 and data["findings"] == []
    row = data["threads"][0]
    assert row["cpu_pct"] == 0 and row["voluntary_switches_per_s"] == 0 and row["state"] == "S (sleeping)"
    assert row["blocked_ms"] == pytest.approx(row["window_s"] * 1000, abs=1)
    print(f"\nquiet control: {row}")
