"""What perf_offcpu_profile costs the traced workload. Prints figures, never asserts.

    sudo .venv/bin/python bench/bench_trace_offcpu.py [--seconds 2] [--reps 3]

The workload is the worst case for an off-CPU tracer: two threads of one process ping-pong one
byte over two pipes, so every operation (a round trip) is two blocks and four context switches,
each of which runs the tracer's sched_switch program. After a byte on stdin it runs for
--seconds and prints its round trips per second. Measured:
- baseline: no tracing;
- each rung as the tool runs it, through the real MCP client (frontend as perfmcp-granted,
  broker as root, started here with --disable so each rung is the one that runs), pid-filtered
  and system-wide: offcputime, perf (sched_switch stacks + switch events), bpftrace offcpu.bt.
The loop starts after the tracer has had time to attach (SETTLE_S after its process appears)
and ends inside the trace. Overhead % = 1 - traced rate / baseline rate; also us added per
round trip, and the tool's wall time (perf's includes perf script over every switch). The
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

import helpers  # noqa: E402

PINGPONG_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static int ab[2], ba[2];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void *echo(void *arg) {
    char c;
    (void)arg;
    while (read(ab[0], &c, 1) == 1)
        if (write(ba[1], &c, 1) != 1) break;
    return NULL;
}
int main(int argc, char **argv) {
    double seconds = atof(argv[1]);
    char c;
    pthread_t t;
    alarm(600);
    if (pipe(ab) || pipe(ba) || pthread_create(&t, NULL, echo, NULL)) return 1;
    while (read(0, &c, 1) == 1) {
        long n = 0;
        double t0 = now(), t1;
        do {
            for (int i = 0; i < 256; i++) {
                if (write(ab[1], "x", 1) != 1 || read(ba[0], &c, 1) != 1) return 1;
            }
            n += 256;
        } while ((t1 = now()) - t0 < seconds);
        printf("%.1f\n", n / (t1 - t0));
        fflush(stdout);
    }
    return 0;
}
"""

# label, broker --disable args, pid-filtered, seconds to let the tracer attach once its process runs
CASES: list[tuple[str, tuple[str, ...], bool, float]] = [
    ("offcputime, pid", (), True, 1.5),
    ("offcputime, system-wide", (), False, 1.5),
    ("perf, pid", ("--disable", "offcputime"), True, 1.0),
    ("perf, system-wide", ("--disable", "offcputime"), False, 1.0),
    ("bpftrace, pid", ("--disable", "offcputime", "--disable", "perf"), True, 3.0),
    ("bpftrace, system-wide", ("--disable", "offcputime", "--disable", "perf"), False, 3.0),
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
                      settle_s: float) -> tuple[float, float, str]:
    out: dict[str, Any] = {}

    async def call() -> None:
        t0 = time.monotonic()
        out["result"] = await client.call_tool("perf_offcpu_profile", args)
        out["wall"] = time.monotonic() - t0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await helpers.await_until(lambda: bool(helpers.descendants(broker.pid)), 30.0)
        await trio.sleep(settle_s)
        rate = await trio.to_thread.run_sync(loop.rate)
    sc = out["result"].structured_content
    data = sc.get("data") or {}
    return rate, out["wall"], data.get("method") or str(sc.get("error"))


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0, help="loop length per measurement")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_trace_offcpu needs root (it starts the broker); skipped")
        return 0
    users = helpers.lookup_test_users()
    tmp = helpers.make_shared_tmpdir("pmcp-bench-off-")
    brokers: dict[tuple[str, ...], helpers.RunningBroker] = {}
    try:
        src = tmp / "pingpong.c"
        src.write_text(PINGPONG_C)
        exe = tmp / "pmcp-pingpong"
        subprocess.run(["cc", "-O2", "-pthread", "-o", exe, src], check=True)
        loop = Loop(exe, args.seconds)
        try:
            base = [loop.rate() for _ in range(args.reps + 1)][1:]  # the first warms up
            b = statistics.median(base)
            print(f"baseline: {b:,.0f} round trips/s (median of {args.reps}; spread {min(base):,.0f}-{max(base):,.0f}),"
                  f" {1e6 / b:.1f} us per round trip (4 context switches)")
            for label, disable, pid, settle in CASES:
                if disable not in brokers:
                    wd = helpers.make_shared_tmpdir("pmcp-bench-br-")
                    brokers[disable] = helpers.start_broker(wd, *disable)
                broker = brokers[disable]
                duration = int(settle + args.seconds + 1.5)
                call_args: dict[str, Any] = {"duration_s": duration}
                if pid:
                    call_args["pid"] = loop.proc.pid
                rates, walls, method = [], [], ""
                async with helpers.mcp_client(users.granted, broker.socket_path) as client:
                    for _ in range(args.reps):
                        r, wall, method = await traced_rate(client, broker, loop, call_args, settle)
                        rates.append(r)
                        walls.append(wall)
                t = statistics.median(rates)
                print(f"{label:26s} {t:>10,.0f}/s  overhead {100 * (1 - t / b):5.1f} %  "
                      f"+{1e6 / t - 1e6 / b:5.2f} us/round trip  tool wall {statistics.median(walls):.1f} s "
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
