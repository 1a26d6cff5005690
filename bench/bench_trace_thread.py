"""Benchmark: what perf_thread_profile costs the process it watches, and itself.

1. Overhead on the workload: the three-thread workload of
   tests/tools_thread/thread_util.py reports its busy thread's loop count every
   100 ms; its ops/s is measured in windows of --window seconds, alternating
   without and with perf_thread_profile running on it (--rounds pairs), and
   the overhead is (without - with) / without. Machine noise (other jobs on a
   shared 2-core machine) is of the same size: the spread of the "without"
   windows is printed next to it.
2. The tool's own CPU on a process with many threads (--threads, default 500
   and 2000 idle threads next to the three): one pass over /proc/PID/task
   (CPU ms p50 and max, us per thread, and wall), and one whole call of --window seconds run
   in-process through the tool's handler (process CPU time of this bench over
   the call, as % of one core; the handler's passes run in trio worker threads,
   which process time includes).

The tool runs in-process (its handler with a ToolContext that has no broker),
so the figures are the tool's own cost, not the MCP transport's. It prints
figures and asserts nothing. Run as root or any user:
    .venv/bin/python bench/bench_trace_thread.py [--window 5] [--rounds 3] [--threads 500 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "tools_thread")]

from perf_mcp.artifacts import ArtifactStore  # noqa: E402
from perf_mcp.broker_client import BrokerClient  # noqa: E402
from perf_mcp.registry import Services, ToolContext  # noqa: E402
from perf_mcp.threads import read_process  # noqa: E402
from perf_mcp.tools import perf_thread_profile as tool  # noqa: E402
from thread_util import build_threads_binary  # noqa: E402


def context() -> ToolContext:
    async def no_progress(value: float, total: float | None, message: str | None) -> None:
        return None

    return ToolContext(tool=tool.NAME, broker=BrokerClient("/nonexistent/perf-mcp-bench.sock"),
                       artifacts=ArtifactStore(), services=Services(), progress=no_progress)


async def profile(pid: int, seconds: float) -> tool.ThreadProfileData:
    out = await tool.run(context(), tool.Params(pid=pid, duration_s=seconds))
    assert isinstance(out.data, tool.ThreadProfileData)
    return out.data


class OpsReader:
    """Collects the workload's "monotonic_ns ops" lines."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.points: list[tuple[int, int]] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                self.points.append((int(parts[0]), int(parts[1])))

    def rate(self, t0_ns: int, t1_ns: int) -> float:
        inside = [p for p in self.points if t0_ns <= p[0] <= t1_ns]
        if len(inside) < 2:
            return float("nan")
        (a_t, a_n), (b_t, b_n) = inside[0], inside[-1]
        return (b_n - a_n) / ((b_t - a_t) / 1e9)


def start(exe: Path, extra_threads: int = 0, report: bool = False) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(exe), "600", str(extra_threads), "1" if report else "0"], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    if not report:
        assert proc.stdout.readline().strip() == b"ready", "workload did not start"
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def oncpu_ns(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])


def overhead(exe: Path, window: float, rounds: int) -> None:
    print(f"1. workload ops/s without and with perf_thread_profile (windows of {window:g} s, {rounds} pairs)")
    print("   ops/s is what the machine's other load lets the busy thread do; ops per CPU-second of the busy thread")
    print("   (its own schedstat) takes that load out and shows what the tool costs it while it runs")
    proc = start(exe, report=True)
    try:
        reader = OpsReader(proc)
        time.sleep(1.0)
        busy_tid = next(int(t) for t in os.listdir(f"/proc/{proc.pid}/task")
                        if Path(f"/proc/{proc.pid}/task/{t}/comm").read_text().strip() == "pmcp-busy")
        runs: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
        for _ in range(rounds):
            for mode in ("without", "with"):
                t0, c0, b0 = time.monotonic_ns(), time.process_time(), oncpu_ns(proc.pid, busy_tid)
                if mode == "with":
                    trio.run(profile, proc.pid, window)
                else:
                    time.sleep(window)
                t1, cpu, b1 = time.monotonic_ns(), time.process_time() - c0, oncpu_ns(proc.pid, busy_tid)
                rate = reader.rate(t0, t1)
                # ops in the window / busy thread's CPU seconds in the window
                ops = rate * (t1 - t0) / 1e9
                per_cpu_s = ops / ((b1 - b0) / 1e9) if b1 > b0 else float("nan")
                runs[mode].append((rate, per_cpu_s))
                print(f"   {mode:7s} {rate:10,.0f} ops/s  {per_cpu_s:10,.0f} ops/CPU-s  busy thread on CPU "
                      f"{(b1 - b0) / (t1 - t0) * 100:5.1f}%" + (f"  tool CPU {cpu * 1000:5.1f} ms = "
                                                                  f"{cpu / ((t1 - t0) / 1e9) * 100:.3f}% of one core"
                                                                  if mode == "with" else ""))
    finally:
        stop(proc)
    for i, what in ((0, "ops/s"), (1, "ops per CPU-second")):
        a = statistics.mean(r[i] for r in runs["without"])
        b = statistics.mean(r[i] for r in runs["with"])
        spread = (max(r[i] for r in runs["without"]) - min(r[i] for r in runs["without"])) / a * 100
        print(f"   {what}: overhead {(a - b) / a * 100:+.2f}% (mean without {a:,.0f}, with {b:,.0f}); "
              f"spread of the windows without the tool {spread:.1f}% (machine noise)")


def own_cost(exe: Path, window: float, counts: list[int]) -> None:
    print(f"2. the tool's own CPU on a process with many threads (one call of {window:g} s)")
    for extra in counts:
        proc = start(exe, extra_threads=extra)
        try:
            deadline = time.monotonic() + 10
            while len(os.listdir(f"/proc/{proc.pid}/task")) < extra + 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            cpus: list[float] = []
            walls: list[float] = []
            for _ in range(20):
                w0, c0 = time.perf_counter(), time.thread_time()
                sample = read_process(proc.pid)
                cpus.append((time.thread_time() - c0) * 1000)
                walls.append((time.perf_counter() - w0) * 1000)
            n = len(sample.tasks)
            p50, p99 = statistics.median(cpus), max(cpus)
            c0, w0 = time.process_time(), time.monotonic()
            data = trio.run(profile, proc.pid, window)
            cpu, wall = time.process_time() - c0, time.monotonic() - w0
        finally:
            stop(proc)
        print(f"   {n:5d} threads: one pass p50 {p50:6.1f} ms CPU, max {p99:6.1f} ms ({p50 * 1000 / n:5.1f} us/thread; "
              f"wall p50 {statistics.median(walls):.1f} ms); "
              f"whole call {cpu * 1000:7.1f} ms CPU in {wall:.2f} s = {cpu / wall * 100:5.2f}% of one core "
              f"({data.passes} passes, {data.threads_total} threads reported)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="*", default=[500, 2000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmcp-bench-thread-") as tmp:
        exe = build_threads_binary(Path(tmp))
        print(f"{os.cpu_count()} CPUs, CLK_TCK {os.sysconf('SC_CLK_TCK')}, load {os.getloadavg()[0]:.2f}")
        overhead(exe, args.window, args.rounds)
        own_cost(exe, args.window, args.threads)


if __name__ == "__main__":
    main()
