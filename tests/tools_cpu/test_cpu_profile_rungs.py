"""perf_cpu_profile on each rung of its ladder, through the real MCP client as perfmcp-granted,
against a real root broker: the bpftrace rung (profile.bt) with a full broker, the perf rung with
`--disable bpftrace`.

Known answer: a busy C loop (tests/helpers.py's source, built at -O0 so the leaf has a frame, with
a main that can return, so frame-pointer unwinding sees every frame) spends all its CPU time in
perfmcp_busy_leaf, called from perfmcp_busy_loop, called from main. A cpu-clock sample fires per
1/rate of CPU time the process ran, so the sample count is its CPU time in the sampling window
(from /proc/PID/schedstat, polled) x rate, within 15 % + 50 ms of CPU time (perf: less up to
1 s of its start-up). helpers' own binary
(leaf without a frame, noreturn main) is profiled too: leaf on top on both rungs.

Also: perf writes nothing outside the broker's job directory (no /.debug, no ~root/.debug, nothing
new in /; perf script's own vdso copy, /tmp/perf-vdso.so-XXXXXX, is removed by perf at exit and is
not checked: other perf processes on a shared machine make and remove theirs meanwhile), and a process that exits before bpftrace names its frames is said so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import helpers

pytestmark = [pytest.mark.root, pytest.mark.slow]

RATE = 499
DURATION = 3
REL_TOL = 0.15
ABS_TOL_CPU_S = 0.05
PERF_STARTUP_S = 1.0  # perf record: from its start to its first sample (0.47-0.79 s measured at load 5-6 on 2 CPUs)
LEAF, LOOP = helpers.BUSY_LEAF_SYMBOL, helpers.BUSY_LOOP_SYMBOL

FRAMED_C = r"""
#include <stdlib.h>
#include <unistd.h>

volatile unsigned long perfmcp_sink;
volatile int perfmcp_stop;

__attribute__((noinline)) void perfmcp_busy_leaf(void)
{
    for (unsigned long i = 0; i < 100000UL; i++)
        perfmcp_sink += i;
}

__attribute__((noinline)) void perfmcp_busy_loop(void)
{
    while (!perfmcp_stop)
        perfmcp_busy_leaf();
}

int main(int argc, char **argv)
{
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 600);
    perfmcp_busy_loop();
    return 0;
}
"""


@pytest.fixture(scope="module")
def binaries() -> Iterator[dict[str, Path]]:
    directory = helpers.make_shared_tmpdir("pmcp-cpurung-")
    try:
        plain = helpers.build_busy_binary(directory)
        framed_dir = directory / "framed"
        framed_dir.mkdir(mode=0o755)
        src = framed_dir / "framed.c"
        src.write_text(FRAMED_C)
        framed = framed_dir / helpers.BUSY_COMM
        # -O0: every function, the leaf too, sets up its frame (gcc's -O1 leaves the leaf without one)
        subprocess.run([shutil.which("cc") or "cc", "-O0", "-g", "-fno-omit-frame-pointer", "-fno-inline",
                        "-o", str(framed), str(src)],
                       check=True, capture_output=True)
        framed.chmod(0o755)
        framed_dir.chmod(0o755)
        yield {"plain": plain, "framed": framed}
    finally:
        helpers.remove_tree(directory)


@pytest.fixture(scope="module")
def brokers(module_broker_factory: Any) -> dict[str, helpers.RunningBroker]:
    return {"bpftrace": module_broker_factory(), "perf": module_broker_factory("--disable", "bpftrace")}


class CpuTime:
    """Polls a process's on-CPU time (schedstat, ns) with monotonic timestamps."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.points: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ns = int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return
            self.points.append((time.monotonic(), ns / 1e9))
            time.sleep(0.02)

    def __enter__(self) -> CpuTime:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, t: float) -> float:
        pts = self.points
        for (t0, c0), (t1, c1) in zip(pts, pts[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c0
        return pts[0][1] if t < pts[0][0] else pts[-1][1]


async def profile(broker: helpers.RunningBroker, user: helpers.UnixUser, args: dict[str, Any],
                  cpu: CpuTime | None = None) -> tuple[dict[str, Any], dict[str, Any], float]:
    async with helpers.mcp_client(user, broker.socket_path) as client:
        result = await client.call_tool("perf_cpu_profile", args)
        answered = time.monotonic()
    env = helpers.envelope(result)
    assert result.is_error is False, env
    return env, env["data"], answered


def check_known_answer(rung: str, env: dict[str, Any], data: dict[str, Any], answered: float, cpu: CpuTime) -> None:
    assert data["backend"] == rung
    if rung == "bpftrace":
        assert data["skipped"] == [] and data["method"].startswith("bpftrace profile:hz")
        assert data["argv"][0][-4:] == [str(RATE), str(DURATION), str(cpu.pid), "1"]
    else:
        assert data["method"].startswith("perf record -g (cpu-clock)")
        [skip] = data["skipped"]
        assert skip["backend"] == "bpftrace" and "disabled by the administrator" in skip["reason"]
        assert any("bpftrace" in w and "skipped" in w for w in env["warnings"])
        record = data["argv"][0]
        assert {"-N", "-B", "--max-size"} <= set(record) and record[-2] == "-o"
    top = data["top_functions"][0]
    assert top["function"] == LEAF and top["self_pct"] >= 85, data["top_functions"][:3]
    stack = data["hottest_stacks"][0]["stack"]
    assert stack[0] == helpers.BUSY_COMM and stack[-3:] == ["main", LOOP, LEAF], stack
    [row] = data["processes"]
    assert (row["pid"], row["comm"]) == (cpu.pid, helpers.BUSY_COMM) and row["command"].endswith(f"/{helpers.BUSY_COMM} 60")
    assert data["summary"].startswith(f"CPU profile of pid {cpu.pid}") and "\n" not in data["summary"]
    # samples = CPU time in the sampling window x rate. bpftrace stamps its window itself; perf
    # record's window is duration_s from its start, less its own start-up before the first sample
    # (up to PERF_STARTUP_S on a loaded machine), so its count may lie between the two.
    end = answered - (data["after_sampling_s"] or 0.0)
    start = end - data["sampled_s"]
    cpu_s = cpu.at(end) - cpu.at(start)
    late = cpu.at(end) - cpu.at(start + (PERF_STARTUP_S if rung == "perf" else 0.0))
    low, high = late * RATE, cpu_s * RATE
    samples = data["samples"]
    print(f"{rung}: {samples} samples; CPU time in the {data['sampled_s']:.2f} s window {cpu_s:.3f} s x {RATE} Hz = "
          f"{high:.0f} (perf start-up allowed: {low:.0f}); duration x rate = {DURATION * RATE}; "
          f"answer {data['after_sampling_s']} s after sampling")
    slack = ABS_TOL_CPU_S * RATE
    assert (1 - REL_TOL) * low - slack <= samples <= (1 + REL_TOL) * high + slack, (samples, low, high)
    assert samples >= 0.1 * DURATION * RATE  # the busy loop got some CPU even on a loaded machine
    # idle for one process: the share of the window it was off CPU, from the samples a single thread
    # always on a CPU gives (window x rate); the busy loop is off CPU only when the machine is loaded
    assert data["expected_samples"] == int(data["sampled_s"] * RATE)
    off_low = 100 * (1 - cpu_s / data["sampled_s"])
    off_high = 100 * (1 - late / data["sampled_s"])
    print(f"{rung}: off CPU {data['idle_pct']}% (from its CPU time: {off_low:.1f}-{off_high:.1f}%)")
    assert off_low - 100 * REL_TOL <= data["idle_pct"] <= off_high + 100 * REL_TOL
    assert {a["name"] for a in data["artifacts"]} >= {"flamegraph.svg", "stacks.folded"}


@pytest.mark.parametrize("rung", ["bpftrace", "perf"])
async def test_known_answer_on_each_rung(rung: str, brokers: dict[str, helpers.RunningBroker],
                                         binaries: dict[str, Path], test_users: helpers.TestUsers) -> None:
    busy = helpers.start_busy(binaries["framed"], test_users.granted, max_seconds=60)
    try:
        time.sleep(0.2)
        with CpuTime(busy.pid) as cpu:
            env, data, answered = await profile(brokers[rung], test_users.granted,
                                                {"pid": busy.pid, "duration_s": DURATION, "sample_rate_hz": RATE})
        check_known_answer(rung, env, data, answered, cpu)
    finally:
        busy.proc.kill()
        busy.proc.wait()


@pytest.mark.parametrize("rung", ["bpftrace", "perf"])
async def test_helpers_busy_binary_on_each_rung(rung: str, brokers: dict[str, helpers.RunningBroker],
                                                binaries: dict[str, Path], test_users: helpers.TestUsers) -> None:
    """helpers' binary: its leaf has no frame and main never returns, so frame pointers skip the
    loop and main's return address lies past main's end (perf: _fini; bpftrace: an address)."""
    busy = helpers.start_busy(binaries["plain"], test_users.granted, max_seconds=60)
    try:
        time.sleep(0.2)
        env, data, _ = await profile(brokers[rung], test_users.granted,
                                     {"pid": busy.pid, "duration_s": 2, "sample_rate_hz": RATE,
                                      "include_kernel": False})
    finally:
        busy.proc.kill()
        busy.proc.wait()
    assert data["backend"] == rung
    top = data["top_functions"][0]
    assert top["function"] == LEAF and top["self_pct"] >= 95  # user mode only: no interrupt frames
    stack = data["hottest_stacks"][0]["stack"]
    assert stack[1] == "__libc_start_call_main" and stack[-1] == LEAF, stack
    assert data["kernel_pct"] == 0.0
    print(f"{rung} (helpers' binary, user only): {data['samples']} samples, stack {stack}")


def _tree(path: Path) -> dict[str, tuple[int, float]] | None:
    if not path.exists():
        return None
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime)
    return out


def _outside_state() -> dict[str, Any]:
    return {
        "/.debug": _tree(Path("/.debug")),
        "/root/.debug": _tree(Path("/root/.debug")),
        "cwd /": sorted(p.name for p in Path("/").iterdir()),
    }


async def test_perf_writes_nothing_outside_its_job_directory(
    brokers: dict[str, helpers.RunningBroker], test_users: helpers.TestUsers
) -> None:
    """System-wide (every running binary is sampled): without -N perf record would copy them
    into /.debug (HOME unset, cwd /)."""
    before = _outside_state()
    env, data, _ = await profile(brokers["perf"], test_users.granted, {"duration_s": 2, "sample_rate_hz": 199})
    after = _outside_state()
    assert data["backend"] == "perf" and data["samples"] > 0
    job_dir = Path(data["argv"][0][-1]).parent
    assert not job_dir.exists()  # the broker removed it with perf.data
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    print(f"system-wide 2 s: {data['samples']} samples; /.debug, ~root/.debug and / unchanged")


async def test_bpftrace_rung_process_exits_before_its_frames_are_named(
    brokers: dict[str, helpers.RunningBroker], binaries: dict[str, Path], test_users: helpers.TestUsers
) -> None:
    broker = brokers["bpftrace"]
    busy = helpers.start_busy(binaries["framed"], test_users.granted, max_seconds=60)

    def bpftrace_running() -> bool:
        return any((st := helpers.read_proc_stat(p)) is not None and st.comm == "bpftrace"
                   for p in helpers.descendants(broker.pid))

    async def end_it_mid_profile() -> None:
        assert await helpers.await_until(bpftrace_running, 30), "bpftrace never started"
        await trio.sleep(4.0)  # attached and sampling by then (attach takes ~0.5 s, 2 s when loaded)
        busy.proc.kill()
        busy.proc.wait()  # reaped: gone, not a zombie

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(end_it_mid_profile)
            env, data, _ = await profile(broker, test_users.granted,
                                         {"pid": busy.pid, "duration_s": 8, "sample_rate_hz": RATE})
    finally:
        if busy.proc.poll() is None:
            busy.proc.kill()
        busy.proc.wait()
    assert data["backend"] == "bpftrace" and data["samples"] > 0
    assert any(f"process {busy.pid} exited before bpftrace named its frames" in w for w in env["warnings"])
    # its frames are addresses now, folded as the binary's name: the leaf is not claimed
    assert all(f["function"] != LEAF for f in data["top_functions"])
    assert any(f"process {busy.pid} exited during the profile" in w for w in env["warnings"])
    print(f"exited process: {data['samples']} samples, top {data['top_functions'][0]['function']}")
