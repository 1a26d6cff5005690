"""What perf_syscall_count costs the traced workload. Prints figures, never asserts.

    sudo .venv/bin/python bench/bench_trace_syscall.py [--seconds 2] [--reps 3]

A C loop calls getppid (the cheapest system call: the cost measured is almost all tracing)
for --seconds after a byte on stdin and prints its calls per second. Measured:
- baseline: no tracing;
- each rung as the tool runs it, through the real MCP client, frontend as perfmcp-granted,
  broker as root (started here with --disable so each rung is the one that runs):
  syscount for the pid, syscount system-wide with latency and per-process (two programs),
  syscount with errors (two programs), bpftrace for the pid, bpftrace system-wide with
  latency, errors and per-process.
The loop starts once every tracing program is attached (bpftool perf) and ends well inside
the trace. Overhead % = 1 - traced rate / baseline rate; also ns added per call. The
machine's other load counts too: read the baseline spread before the overhead.

Run as a non-root user it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "tools_syscall"))

import helpers  # noqa: E402
from syscall_util import wait_attached  # noqa: E402

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv)
{
    double seconds = atof(argv[1]);
    char c;
    alarm(300);
    while (read(0, &c, 1) == 1) {
        long n = 0;
        double t0 = now(), t;
        do {
            for (int i = 0; i < 4096; i++)
                syscall(SYS_getppid);
            n += 4096;
        } while ((t = now()) - t0 < seconds);
        printf("%.1f\n", n / (t - t0));
        fflush(stdout);
    }
    return 0;
}
"""

CASES: list[tuple[str, tuple[str, ...], dict[str, Any], int]] = [
    # label, broker --disable args, tool arguments (pid filled in when "pid" is True), programs attached
    ("syscount, pid", ("--disable", "bpftrace"), {"pid": True}, 1),
    ("syscount, pid, errors (2 programs)", ("--disable", "bpftrace"), {"pid": True, "include_errors": True}, 2),
    ("syscount, all, latency + per_process (2)", ("--disable", "bpftrace"),
     {"include_latency": True, "per_process": True}, 2),
    ("bpftrace, pid", ("--disable", "syscount"), {"pid": True}, 1),
    ("bpftrace, all, latency + errors + per_process", ("--disable", "syscount"),
     {"include_latency": True, "include_errors": True, "per_process": True}, 1),
]


class Loop:
    def __init__(self, exe: Path, seconds: float) -> None:
        self.proc = subprocess.Popen([exe, str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def rate(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"x")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def stop(self) -> None:
        helpers.stop_process(self.proc)


async def traced_rate(client: Any, broker: helpers.RunningBroker, loop: Loop, args: dict[str, Any],
                      programs: int, duration: int) -> tuple[float, float, str]:
    out: dict[str, Any] = {}

    async def call() -> None:
        t0 = time.monotonic()
        out["result"] = await client.call_tool("perf_syscall_count", args)
        out["wall"] = time.monotonic() - t0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await trio.to_thread.run_sync(wait_attached, broker.pid, programs)
        rate = await trio.to_thread.run_sync(loop.rate)
    data = out["result"].structured_content.get("data") or {}
    return rate, out["wall"], data.get("method", out["result"].structured_content.get("error"))


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0, help="loop length per measurement")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_trace_syscall needs root (it starts the broker); skipped")
        return 0
    users = helpers.lookup_test_users()
    tmp = helpers.make_shared_tmpdir("pmcp-bench-sc-")
    brokers: dict[tuple[str, ...], helpers.RunningBroker] = {}
    try:
        src = tmp / "loop.c"
        src.write_text(LOOP_C)
        exe = tmp / "pmcp-sc-loop"
        subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
        loop = Loop(exe, args.seconds)
        try:
            base = [loop.rate() for _ in range(args.reps + 1)][1:]  # the first warms up
            b = statistics.median(base)
            print(f"baseline: {b:,.0f} getppid/s (median of {args.reps}; spread {min(base):,.0f}-{max(base):,.0f}), "
                  f"{1e9 / b:.0f} ns per call")
            duration = int(args.seconds + 3)
            for label, disable, tool_args, programs in CASES:
                if disable not in brokers:
                    wd = helpers.make_shared_tmpdir("pmcp-bench-br-")
                    brokers[disable] = helpers.start_broker(wd, *disable)
                broker = brokers[disable]
                call_args = {"duration_s": duration, **tool_args}
                if call_args.get("pid"):
                    call_args["pid"] = loop.proc.pid
                rates, walls, method = [], [], ""
                async with helpers.mcp_client(users.granted, broker.socket_path) as client:
                    for _ in range(args.reps):
                        r, wall, method = await traced_rate(client, broker, loop, call_args, programs, duration)
                        rates.append(r)
                        walls.append(wall)
                t = statistics.median(rates)
                print(f"{label:48s} {t:>13,.0f}/s  overhead {100 * (1 - t / b):5.1f} %  "
                      f"+{1e9 / t - 1e9 / b:4.0f} ns/call  tool wall {statistics.median(walls):.1f} s "
                      f"for {duration} s  [{method}]")
        finally:
            loop.stop()
    finally:
        for broker in brokers.values():
            helpers.stop_broker(broker)
            helpers.remove_tree(broker.workdir)
        helpers.remove_tree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
