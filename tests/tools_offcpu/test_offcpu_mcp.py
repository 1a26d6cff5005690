"""perf_offcpu_profile through a real MCP client (the frontend as perfmcp-granted) and the real
root broker, on every rung of its ladder, against a workload with known answers.

Workload (offcpu_workload.c, frame pointers, named noinline functions), run as perfmcp-granted:
- pmcp_reader, the main thread (tid == pid), blocks in perfmcp_wait_for_data on a pipe that
  pmcp_feeder writes one byte into every 100 ms: it is off-CPU almost the whole window, in
  blocks of ~100 ms;
- pmcp_napper sleeps 2 ms at a time in perfmcp_short_nap: many short blocks.

Known answers, with tolerances that hold on a loaded 2-core machine:
- the reader's off-CPU time in perfmcp_wait_for_data is 70-105% of the traced window (a block in
  progress at either end of the window is not counted: up to 2 x 100 ms of 3 s are missing);
- with min_block_us=50000 the 2 ms naps disappear (at most 5% of the window is left, for the
  odd nap that waited 50 ms for a CPU) while the reader's 100 ms blocks stay;
- only the workload's threads show when pid= is given.
Rungs: the default broker runs offcputime; `--disable offcputime` runs perf; `--disable offcputime
--disable perf` runs the bpftrace script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import helpers
from helpers import envelope, ok_data
from perf_mcp.profile.perf_script import parse_folded

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOL = "perf_offcpu_profile"
DURATION = 3
FEED_US = 100_000
NAP_US = 2_000
LONG_MIN_BLOCK_US = 50_000
WINDOW_RANGE = (0.70, 1.05)  # reader's off-CPU time / traced window
SRC = Path(__file__).with_name("offcpu_workload.c")

RUNGS = {
    "offcputime": ((), "offcputime (libbpf-tools)", "libbpf"),
    "perf": (("--disable", "offcputime"), "perf record", "perf"),
    "bpftrace": (("--disable", "offcputime", "--disable", "perf"), "bpftrace", "bpftrace"),
}


class Workload:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.tids: dict[str, int] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                self.tids[(task / "comm").read_text().strip()] = int(task.name)
            except OSError:
                pass


@pytest.fixture(scope="module")
def workload(test_users: helpers.TestUsers) -> Iterator[Workload]:
    d = helpers.make_shared_tmpdir("pmcp-offcpu-")
    try:
        exe = d / "offcpu_workload"
        cc = shutil.which("cc") or shutil.which("gcc")
        assert cc, "no C compiler (build-essential)"
        subprocess.run([cc, "-O1", "-g", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer", "-fno-inline",
                        "-pthread", "-o", str(exe), str(SRC)], check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
        exe.chmod(0o755)
        proc = helpers.spawn_as(test_users.granted, [exe, str(FEED_US), str(NAP_US), "600"], start_new_session=True,
                                stdout=subprocess.DEVNULL)
        try:
            names = {"pmcp_reader", "pmcp_feeder", "pmcp_napper"}
            # The threads name themselves (prctl) just after they start.
            assert helpers.wait_until(lambda: set(Workload(proc).tids) >= names, 10.0), Workload(proc).tids
            w = Workload(proc)
            assert w.tids["pmcp_reader"] == w.pid
            yield w
        finally:
            helpers.stop_process(proc)
    finally:
        helpers.remove_tree(d)


def _stack_ms(data: dict[str, Any], function: str, tid: int) -> float:
    """Off-CPU ms of the listed stacks of thread tid that hold `function`."""
    return sum(s["offcpu_ms"] for s in data["top_stacks"] if function in s["frames"] and tid in s["tids"])


def check_known_answer(data: dict[str, Any], w: Workload, label: str) -> float:
    window_s = data["window_s"]
    assert 0.6 * DURATION <= window_s <= DURATION + 0.5, window_s
    reader = next(t for t in data["threads"] if t["tid"] == w.pid)
    assert reader["comm"] == "pmcp_reader" and reader["blocked_in"] == "perfmcp_wait_for_data", reader
    assert reader["wait_kind"] == "pipe" and reader["waiting_in"] in ("anon_pipe_read", "pipe_read"), reader
    lo, hi = (r * window_s * 1000 for r in WINDOW_RANGE)
    in_fn = _stack_ms(data, "perfmcp_wait_for_data", w.pid)
    print(f"\n{label}: reader off-CPU in perfmcp_wait_for_data {in_fn:.0f} ms of a {window_s:.2f} s window "
          f"({in_fn / window_s / 10:.1f}%; accepted {WINDOW_RANGE[0]:.0%}-{WINDOW_RANGE[1]:.0%})")
    assert lo <= in_fn <= hi, (in_fn, window_s)
    assert lo <= reader["offcpu_ms"] <= hi
    # Only the workload's threads (pid filter), with the user frames of the named functions.
    assert {t["tid"] for t in data["threads"]} <= set(w.tids.values()), data["threads"]
    assert all(t["pid"] in (w.pid, None) for t in data["threads"])
    stack = next(s for s in data["top_stacks"] if "perfmcp_wait_for_data" in s["frames"])
    frames = stack["frames"]
    assert frames.index("perfmcp_reader_loop") == frames.index("perfmcp_wait_for_data") - 1, frames
    assert frames[-1] == "__schedule" and stack["comm"] == "pmcp_reader"
    fn = next(f for f in data["top_blocking_functions"] if f["function"] == "perfmcp_wait_for_data")
    assert fn["threads"] == 1 and lo <= fn["offcpu_ms"] <= hi
    # The reader's finding: blocked most of the window in the named function, with the evidence.
    f = next(f for f in data["findings"] if f["id"] == "offcpu.thread_blocked" and f"tid {w.pid}" in f["title"])
    assert "perfmcp_wait_for_data" in f["title"] and f["severity"] == "info" and f["resource"] == "process"
    assert f["evidence"][0]["value"] == reader["offcpu_ms"] and "perfmcp_wait_for_data" in f["evidence"][0]["sample"]
    assert f"pid={w.pid}" in f["suggestion"] and "perf_thread_profile" in f["suggestion"]
    return in_fn


async def read_artifacts(client: Any, data: dict[str, Any], w: Workload) -> None:
    arts = {a["name"]: a for a in data["artifacts"]}
    assert set(arts) == {"offcpu-flamegraph.svg", "offcpu-stacks.folded"}
    svg = (await client.read_resource(arts["offcpu-flamegraph.svg"]["uri"])).contents[0]
    assert svg.mime_type == "image/svg+xml"
    assert "perfmcp_wait_for_data" in svg.text and "us off-CPU" in svg.text and "<script" not in svg.text
    folded = parse_folded((await client.read_resource(arts["offcpu-stacks.folded"]["uri"])).contents[0].text)
    reader_us = sum(n for s, n in folded.items() if s.startswith("pmcp_reader;") and ";perfmcp_wait_for_data;" in s)
    assert reader_us / 1000 == pytest.approx(_stack_ms(data, "perfmcp_wait_for_data", w.pid), abs=1.0)
    assert sum(folded.values()) / 1000 == pytest.approx(data["total_offcpu_ms"], abs=1.0)


@pytest.mark.parametrize("rung", list(RUNGS))
async def test_rung_known_answer_and_min_block(
    rung: str, module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workload: Workload
) -> None:
    args, method, backend = RUNGS[rung]
    broker = module_broker_factory(*args)
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        t0 = time.monotonic()
        result = await client.call_tool(TOOL, {"duration_s": DURATION, "pid": workload.pid},
                                        progress_callback=on_progress)
        took = time.monotonic() - t0
        data = ok_data(result)
        assert data["method"].startswith(method) and data["backend"] == backend, data["method"]
        skipped = {s["method"].split()[0]: s["reason"] for s in data["skipped"]}
        expected_skips = [a for a in args if a != "--disable"]
        assert [s.split()[0] for s in skipped] == expected_skips, data["skipped"]
        assert all("disabled" in r for r in skipped.values())
        assert data["min_block_us"] == 1000 and data["pid"] == workload.pid
        check_known_answer(data, workload, f"{rung} ({took:.1f} s call)")
        # The napper's 2 ms blocks are there with the default 1 ms threshold...
        napper = workload.tids["pmcp_napper"]
        naps_ms = _stack_ms(data, "perfmcp_short_nap", napper)
        assert naps_ms >= 0.5 * data["window_s"] * 1000, naps_ms
        await read_artifacts(client, data, workload)
        assert progress and progress[-1][0] == progress[-1][1]
        assert result.content[0].text.startswith(f"Off-CPU profile of pid {workload.pid} (pmcp_reader)")

        # ... and gone above min_block_us, while the reader's 100 ms blocks stay.
        long_only = ok_data(await client.call_tool(TOOL, {"duration_s": DURATION - 1, "pid": workload.pid,
                                                          "min_block_us": LONG_MIN_BLOCK_US}))
        left = _stack_ms(long_only, "perfmcp_short_nap", napper)
        print(f"{rung}: naps {naps_ms:.0f} ms with min_block_us=1000, {left:.0f} ms with {LONG_MIN_BLOCK_US}")
        assert left <= 0.05 * long_only["window_s"] * 1000, left
        reader_ms = _stack_ms(long_only, "perfmcp_wait_for_data", workload.pid)
        assert WINDOW_RANGE[0] * long_only["window_s"] * 1000 <= reader_ms <= WINDOW_RANGE[1] * long_only["window_s"] * 1000


async def test_errors_and_busy(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workload: Workload
) -> None:
    broker = module_broker_factory()
    gone = subprocess.Popen(["/bin/true"])
    gone.wait()
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client, \
            helpers.mcp_client(test_users.granted, broker.socket_path) as second:
        err = envelope(await client.call_tool(TOOL, {"duration_s": 1, "pid": gone.pid}))
        assert err["success"] is False and err["error"]["code"] == "PID_NOT_FOUND", err
        feeder = workload.tids["pmcp_feeder"]
        err = envelope(await client.call_tool(TOOL, {"duration_s": 1, "pid": feeder}))
        assert err["error"]["code"] == "INVALID_PARAMS" and f"pid={workload.pid}" in err["error"]["suggestion"], err
        err = envelope(await client.call_tool(TOOL, {"duration_s": 61}))
        assert err["error"]["code"] == "INVALID_PARAMS", err
        err = envelope(await client.call_tool(TOOL, {"duration_s": 1, "min_block_us": 0}))
        assert err["error"]["code"] == "INVALID_PARAMS", err

        out: dict[str, Any] = {}

        async def first() -> None:
            out["first"] = await client.call_tool(TOOL, {"duration_s": 3, "pid": workload.pid})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            # The first call's job is running once the broker has a child (offcputime).
            assert await helpers.await_until(lambda: bool(helpers.descendants(broker.pid)), 10.0)
            busy = envelope(await second.call_tool(TOOL, {"duration_s": 1, "pid": workload.pid}))
        assert busy["success"] is False and busy["error"]["code"] == "PROFILER_BUSY", busy
        data = ok_data(out["first"])
        assert any(t["tid"] == workload.pid for t in data["threads"])
        # The process keeps serving after the errors.
        assert ok_data(await second.call_tool(TOOL, {"duration_s": 1, "pid": workload.pid}))["method"]

    async with helpers.mcp_client(test_users.denied, broker.socket_path) as denied:
        err = envelope(await denied.call_tool(TOOL, {"duration_s": 1, "pid": workload.pid}))
    assert err["success"] is False and err["error"]["code"] == "PERMISSION_DENIED", err
    assert err["error"]["suggestion"]
    assert not helpers.descendants(broker.pid) or helpers.wait_until(lambda: not helpers.descendants(broker.pid), 10)
    assert os.path.exists(f"/proc/{workload.pid}")


async def test_perf_output_cut_at_the_broker_cap_gives_partial_data(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workload: Workload
) -> None:
    """perf script prints every switch with its stack (~350 KB/s for this workload): with a 200 KB
    cap the broker stops it, and the answer covers the part before the cut, flagged truncated."""
    broker = module_broker_factory("--disable", "offcputime", output_cap=200_000)
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        result = await client.call_tool(TOOL, {"duration_s": DURATION, "pid": workload.pid})
    env = envelope(result)
    data = ok_data(result)
    assert data["method"].startswith("perf record") and env["truncated"] is True
    assert any("cut short" in w for w in env["warnings"]), env["warnings"]
    window_s = data["window_s"]
    assert 0 < window_s < DURATION - 0.5, window_s  # the events before the cut
    reader = next(t for t in data["threads"] if t["tid"] == workload.pid)
    assert reader["blocked_in"] == "perfmcp_wait_for_data"
    assert reader["offcpu_ms"] <= WINDOW_RANGE[1] * window_s * 1000
    print(f"\nperf at a 200 KB cap: {window_s:.2f} s of events kept, reader {reader['offcpu_ms']:.0f} ms off-CPU")
