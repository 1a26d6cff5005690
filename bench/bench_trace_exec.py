"""Benchmark: what perf_exec_trace costs a process that spawns programs as fast as it can.

The workload is a C loop that posix_spawns `pmcp-execw 0 MARKER` (exits at once)
and waits for it, one after the other, for --window seconds, and prints how
many it ran. Its execs/s is measured in windows alternating without and with
perf_exec_trace running (--rounds pairs), for each rung:
  libbpf   execsnoop + exitsnoop (a broker with default arguments)
  bpftrace execsnoop.bt        (a broker started with --disable execsnoop)
The overhead is (without - with) / without; on a shared 2-core machine the
spread of the "without" windows (printed) is the noise floor. It also prints
how many of the loop's executions the trace saw (lost events show here), and
the frontend's own time to parse and analyse the trace.

The tool runs in-process (its handler with a real BrokerClient), against brokers
this bench starts as root on temp sockets and stops by PID. It prints figures
and asserts nothing:
    sudo .venv/bin/python bench/bench_trace_exec.py [--window 4] [--rounds 3] [--rung libbpf bpftrace]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "tools_exec")]

import helpers  # noqa: E402
from exec_util import BPFTRACE_TRACEPOINTS, LIBBPF_TRACEPOINTS, build_execw, new_marker, wait_attached  # noqa: E402
from perf_mcp.artifacts import ArtifactStore  # noqa: E402
from perf_mcp.broker_client import BrokerClient  # noqa: E402
from perf_mcp.registry import Services, ToolContext  # noqa: E402
from perf_mcp.tools import perf_exec_trace as tool  # noqa: E402
from perf_mcp.trace import exec_parse  # noqa: E402

LOOP_C = r"""
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
extern char **environ;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv)
{
    double window = atof(argv[1]), t0 = now(), t;
    char *args[] = { argv[2], "0", argv[3], NULL };
    long n = 0;
    while ((t = now()) - t0 < window) {
        pid_t pid;
        if (posix_spawn(&pid, argv[2], NULL, NULL, args, environ) != 0)
            return 2;
        waitpid(pid, NULL, 0);
        n++;
    }
    printf("%ld %.6f\n", n, t - t0);
    return 0;
}
"""

RUNGS = {"libbpf": ((), LIBBPF_TRACEPOINTS), "bpftrace": (("--disable", "execsnoop"), BPFTRACE_TRACEPOINTS)}


def build_loop(directory: Path) -> Path:
    src, exe = directory / "execloop.c", directory / "execloop"
    src.write_text(LOOP_C)
    subprocess.run([shutil.which("cc") or "cc", "-O1", "-o", str(exe), str(src)], check=True, capture_output=True)
    return exe


async def run_loop(loop: Path, execw: Path, window: float, marker: str) -> tuple[int, float]:
    res = await trio.run_process([str(loop), str(window), str(execw), marker], capture_stdout=True)
    n, secs = res.stdout.split()
    return int(n), float(secs)


def context(socket: Path) -> ToolContext:
    async def no_progress(value: float, total: float | None, message: str | None) -> None:
        return None

    return ToolContext(tool=tool.NAME, broker=BrokerClient(str(socket)), artifacts=ArtifactStore(),
                       services=Services(), progress=no_progress)


async def traced_window(broker: helpers.RunningBroker, wanted: frozenset[str], loop: Path, execw: Path,
                        window: float) -> tuple[int, float, tool.ExecTraceData]:
    marker = new_marker("bench")
    out: dict[str, object] = {}
    duration = int(window + 3)  # the loop runs inside the trace, after its programs attached

    async def call() -> None:
        out["o"] = await tool.run(context(broker.socket_path), tool.Params(
            duration_s=duration, name_pattern=marker, max_execs_listed=1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await wait_attached(broker.pid, wanted)
        n, secs = await run_loop(loop, execw, window, marker)
    return n, secs, out["o"].data  # type: ignore[attr-defined]


async def bench_rung(name: str, loop: Path, execw: Path, window: float, rounds: int, workdir: Path) -> None:
    extra, wanted = RUNGS[name]
    broker = helpers.start_broker(workdir, *extra)
    try:
        base, traced, seen = [], [], []
        for _ in range(rounds):
            n, secs = await run_loop(loop, execw, window, new_marker("base"))
            base.append(n / secs)
            n2, secs2, data = await traced_window(broker, wanted, loop, execw, window)
            traced.append(n2 / secs2)
            seen.append((data.execs, n2, data.lost_events))
        b, t = statistics.median(base), statistics.median(traced)
        spread = (max(base) - min(base)) / b * 100 if b else 0.0
        print(f"{name:9s} without: {b:8.0f} execs/s (windows {', '.join(f'{x:.0f}' for x in base)}; spread "
              f"{spread:.1f}%)")
        print(f"{'':9s} with:    {t:8.0f} execs/s (windows {', '.join(f'{x:.0f}' for x in traced)}); "
              f"overhead {(b - t) / b * 100:+.1f}%")
        # The loop's own exec carries the marker too: the trace sees n + 1.
        print(f"{'':9s} seen by the trace: " + ", ".join(f"{s - 1}/{n} (lost {lost})" for s, n, lost in seen))
    finally:
        helpers.stop_broker(broker)


async def frontend_cost() -> None:
    """Parse + analyse of a big capture, in-process (the fixture repeated to ~20k execs)."""
    fix = REPO / "tests" / "fixtures" / "execsnoop"
    for name, parse in (("libbpf_execsnoop.txt", exec_parse.parse_execsnoop),
                        ("bpftrace_execsnoop.json", exec_parse.parse_bpftrace)):
        raw = (fix / name).read_bytes()
        head, _, body = raw.partition(b"\n") if name.endswith(".txt") else (b"", b"", raw)
        big = head + b"\n" + body * 70 if head else body * 70
        t0 = time.perf_counter()
        rec = parse(big)
        t1 = time.perf_counter()
        tool.analyse(tool.Params(duration_s=10), rec, {}, {}, "", "", [], True)
        t2 = time.perf_counter()
        lines = big.count(b"\n")
        print(f"frontend: {name} x70: {len(big) / 1e6:.1f} MB, {lines} lines, {len(rec.execs)} execs: parse "
              f"{1000 * (t1 - t0):.0f} ms ({1e6 * (t1 - t0) / lines:.1f} us/line), analyse {1000 * (t2 - t1):.0f} ms")


async def main_async(args: argparse.Namespace) -> None:
    workdir = helpers.make_shared_tmpdir("pmcp-bench-exec-")
    try:
        execw = build_execw(workdir)
        loop = build_loop(workdir)
        print(f"exec loop: posix_spawn + waitpid of {execw.name} (exits at once), windows of {args.window} s, "
              f"{args.rounds} rounds; {os.cpu_count()} CPUs")
        for rung in args.rung:
            bdir = helpers.make_shared_tmpdir("pmcp-broker-")
            try:
                await bench_rung(rung, loop, execw, args.window, args.rounds, bdir)
            finally:
                helpers.remove_tree(bdir)
        await frontend_cost()
    finally:
        helpers.remove_tree(workdir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rung", nargs="+", choices=sorted(RUNGS), default=["libbpf", "bpftrace"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_trace_exec needs root (it starts the broker); skipped")
        return
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
