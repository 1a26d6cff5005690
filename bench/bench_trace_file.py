"""Benchmark: what perf_file_trace costs a process doing small file operations as fast as it can.

The workload is a C loop that, for --window seconds, does one "op" = open(2) of a
4 KiB file, pread(2) of 64 bytes, close(2), and prints how many ops it did. Its
ops/s is measured in windows alternating without and with perf_file_trace running
(--rounds pairs), for each rung that runs here:
  opens-libbpf     mode opens, opensnoop           (a broker with default arguments)
  opens-bpftrace   mode opens, opens.bt            (a broker started with --disable opensnoop)
  slow_ops         mode slow_ops, fileslow.bt      (fsslower needs kprobes: skipped here)
  file_lifecycle   mode file_lifecycle, filelife.bt
  all              mode all, the three scripts side by side
Each trace is system-wide (no pid: the worst case, every process's calls are probed)
with the workload's marker as name_pattern. The overhead is (without - with) /
without; the spread of the "without" windows (printed) is the noise floor on a
shared machine. It also prints how many of the loop's opens the trace counted
(opens modes; lost events show here) and the frontend's parse + analysis time.

The tool runs in-process (its handler with a real BrokerClient), against brokers this
bench starts as root on temp sockets and stops by PID. It prints figures and asserts nothing:
    sudo .venv/bin/python bench/bench_trace_file.py [--window 3] [--rounds 3] [--rung opens-libbpf ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "tools_file")]

import helpers  # noqa: E402
from file_util import LIFE_BT_TP, OPENS_BT_TP, OPENSNOOP_TP, SLOW_BT_TP, wait_attached  # noqa: E402
from perf_mcp.artifacts import ArtifactStore  # noqa: E402
from perf_mcp.broker_client import BrokerClient  # noqa: E402
from perf_mcp.registry import Services, ToolContext  # noqa: E402
from perf_mcp.tools import perf_file_trace as tool  # noqa: E402
from perf_mcp.trace import file_parse  # noqa: E402

LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv)
{
    double window = atof(argv[1]), t0 = now(), t;
    char buf[64];
    long n = 0;
    while ((t = now()) - t0 < window) {
        for (int i = 0; i < 64; i++) {
            int fd = open(argv[2], O_RDONLY);
            if (fd < 0 || pread(fd, buf, sizeof buf, 0) != sizeof buf)
                return 2;
            close(fd);
        }
        n += 64;
    }
    printf("%ld %.6f\n", n, t - t0);
    return 0;
}
"""

# rung -> (broker arguments, mode, tracepoints to wait for, tracers on sys_exit_openat)
RUNGS = {
    "opens-libbpf": ((), "opens", OPENSNOOP_TP, 1),
    "opens-bpftrace": (("--disable", "opensnoop"), "opens", OPENS_BT_TP, 1),
    "slow_ops": ((), "slow_ops", SLOW_BT_TP, 1),
    "file_lifecycle": ((), "file_lifecycle", LIFE_BT_TP, 1),
    "all": ((), "all", OPENS_BT_TP | SLOW_BT_TP | LIFE_BT_TP, 3),
}


def build_loop(directory: Path) -> Path:
    src, exe = directory / "fileloop.c", directory / "fileloop"
    src.write_text(LOOP_C)
    subprocess.run([shutil.which("cc") or "cc", "-O1", "-o", str(exe), str(src)], check=True, capture_output=True)
    return exe


async def run_loop(loop: Path, target: Path, window: float) -> tuple[int, float]:
    res = await trio.run_process([str(loop), str(window), str(target)], capture_stdout=True)
    n, secs = res.stdout.split()
    return int(n), float(secs)


def context(socket: Path) -> ToolContext:
    async def no_progress(value: float, total: float | None, message: str | None) -> None:
        return None

    return ToolContext(tool=tool.NAME, broker=BrokerClient(str(socket)), artifacts=ArtifactStore(),
                       services=Services(), progress=no_progress)


async def traced_window(broker: helpers.RunningBroker, rung: str, loop: Path, target: Path,
                        window: float) -> tuple[int, float, tool.FileTraceData, float]:
    _, mode, wanted, tracers = RUNGS[rung]
    out: dict[str, object] = {}
    duration = int(window + 3)  # the loop runs inside the trace, after its programs attached

    async def call() -> None:
        t0 = time.perf_counter()
        out["o"] = await tool.run(context(broker.socket_path), tool.Params(
            duration_s=duration, mode=mode, name_pattern=target.name, max_events_listed=1))  # type: ignore[arg-type]
        out["t"] = time.perf_counter() - t0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await wait_attached(broker.pid, wanted, sys_exit_openat=tracers)
        n, secs = await run_loop(loop, target, window)
    return n, secs, out["o"].data, float(out["t"])  # type: ignore[attr-defined]


async def bench_rung(rung: str, loop: Path, target: Path, window: float, rounds: int, workdir: Path) -> None:
    extra = RUNGS[rung][0]
    broker = helpers.start_broker(workdir, *extra)
    try:
        base, traced, seen = [], [], []
        method = ""
        for _ in range(rounds):
            n, secs = await run_loop(loop, target, window)
            base.append(n / secs)
            n2, secs2, data, call_s = await traced_window(broker, rung, loop, target, window)
            traced.append(n2 / secs2)
            method = data.method
            opens = data.opens.total if data.opens is not None else None
            seen.append((opens, n2, data.lost_events, call_s))
        b, t = statistics.median(base), statistics.median(traced)
        spread = (max(base) - min(base)) / b * 100 if b else 0.0
        print(f"{rung:15s} [{method}]")
        print(f"{'':15s} without: {b:9.0f} ops/s (windows {', '.join(f'{x:.0f}' for x in base)}; spread "
              f"{spread:.1f}%)")
        print(f"{'':15s} with:    {t:9.0f} ops/s (windows {', '.join(f'{x:.0f}' for x in traced)}); "
              f"overhead {(b - t) / b * 100:+.1f}%")
        print(f"{'':15s} opens counted / made (lost events), call time: "
              + ", ".join(f"{o}/{n} (lost {lost}) {c:.1f} s" for o, n, lost, c in seen))
    finally:
        helpers.stop_broker(broker)


def frontend_cost() -> None:
    """Parse + analysis of a big opens capture (the bpftrace fixture repeated to ~100k opens)."""
    raw = (REPO / "tests" / "fixtures" / "file_trace" / "opens_bt_pid.json").read_bytes()
    lines = [x for x in raw.split(b"\n") if b'"O ' in x]
    big = b"\n".join(lines * (100_000 // max(1, len(lines)))) + b"\n"
    t0 = time.perf_counter()
    rec = file_parse.parse_opens_bpftrace(big)
    t1 = time.perf_counter()
    tool.analyse_opens(tool.Params(duration_s=10), rec)
    t2 = time.perf_counter()
    n = big.count(b"\n")
    print(f"frontend: opens.bt records x{n}: {len(big) / 1e6:.1f} MB: parse {1000 * (t1 - t0):.0f} ms "
          f"({1e6 * (t1 - t0) / n:.1f} us/line), analyse {1000 * (t2 - t1):.0f} ms")


async def main_async(args: argparse.Namespace) -> None:
    workdir = helpers.make_shared_tmpdir("pmcp-bench-file-")
    try:
        loop = build_loop(workdir)
        target = workdir / f"bench-{uuid.uuid4().hex[:8]}"
        target.write_bytes(b"x" * 4096)
        print(f"file loop: open + pread 64 B + close of a 4 KiB file, windows of {args.window} s, "
              f"{args.rounds} rounds; {os.cpu_count()} CPUs")
        for rung in args.rung:
            bdir = helpers.make_shared_tmpdir("pmcp-broker-")
            try:
                await bench_rung(rung, loop, target, args.window, args.rounds, bdir)
            finally:
                helpers.remove_tree(bdir)
        frontend_cost()
    finally:
        helpers.remove_tree(workdir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rung", nargs="+", choices=list(RUNGS), default=list(RUNGS))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_trace_file needs root (it starts the broker); skipped")
        return
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
