"""Benchmark: what perf_dns_latency costs a process that resolves names as fast as it can.

A resolver on 127.0.0.77:53 answers at once; the workload (in a private mount
namespace whose resolv.conf names only that resolver) calls getaddrinfo(AF_INET)
on a name in a loop for --window seconds and prints its lookups/s. Measured in
windows alternating without and with perf_dns_latency running (--rounds pairs),
for each rung: gethostlatency (default broker), dnslat.bt (--disable
gethostlatency). Overhead = (without - with) / without; the spread of the
"without" windows is the noise floor. Also prints how many lookups the trace saw.
Prints figures, asserts nothing:
    sudo .venv/bin/python bench/bench_trace_dns.py [--window 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "tools_dns")]

import helpers  # noqa: E402
import dns_util  # noqa: E402
from test_dns_mcp import wait_uprobes  # noqa: E402
from perf_mcp.artifacts import ArtifactStore  # noqa: E402
from perf_mcp.broker_client import BrokerClient  # noqa: E402
from perf_mcp.registry import Services, ToolContext  # noqa: E402
from perf_mcp.tools import perf_dns_latency as tool  # noqa: E402

LOOP = r"""
import socket, sys, time
window, name = float(sys.argv[1]), sys.argv[2]
n = 0; t0 = time.monotonic()
while time.monotonic() - t0 < window:
    socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM); n += 1
print(n, time.monotonic() - t0)
"""
RUNGS = {"gethostlatency": (), "dnslat.bt": ("--disable", "gethostlatency")}


async def run_loop(d: Path, window: float, name: str) -> tuple[int, float]:
    script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    res = await trio.run_process(["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script, "sh",
                                  str(d / "resolv.conf"), sys.executable, str(d / "dnsloop.py"), str(window), name],
                                 capture_stdout=True)
    n, secs = res.stdout.split()
    return int(n), float(secs)


def context(socket: Path) -> ToolContext:
    async def no_progress(value: float, total: float | None, message: str | None) -> None:
        return None

    return ToolContext(tool=tool.NAME, broker=BrokerClient(str(socket)), artifacts=ArtifactStore(),
                       services=Services(), progress=no_progress)


async def bench_rung(name: str, d: Path, window: float, rounds: int, workdir: Path) -> None:
    broker = helpers.start_broker(workdir, *RUNGS[name])
    try:
        base, traced, seen = [], [], []
        for i in range(rounds):
            n, secs = await run_loop(d, window, f"base{i}.bench.test")
            base.append(n / secs)
            out: dict[str, object] = {}
            marker = f"traced{i}.{dns_util.new_marker()}.test"

            async def call() -> None:
                out["o"] = await tool.run(context(broker.socket_path), tool.Params(duration_s=int(window + 3),
                                                                                   max_listed=1))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await wait_uprobes(broker.pid, 6)
                n2, secs2 = await run_loop(d, window, marker)
            traced.append(n2 / secs2)
            data = out["o"].data  # type: ignore[attr-defined]
            got = sum(s.count for s in data.by_name if s.name == marker)
            seen.append(f"{got}/{n2} (lost {data.lost_events})")
        b, t = statistics.median(base), statistics.median(traced)
        spread = (max(base) - min(base)) / b * 100 if b else 0.0
        print(f"{name:14s} without: {b:7.0f} lookups/s (windows {', '.join(f'{x:.0f}' for x in base)}; spread "
              f"{spread:.1f}%)")
        print(f"{'':14s} with:    {t:7.0f} lookups/s (windows {', '.join(f'{x:.0f}' for x in traced)}); "
              f"overhead {(b - t) / b * 100:+.1f}%")
        print(f"{'':14s} seen by the trace: " + ", ".join(seen) + " (per-name summary; top 20 names only)")
    finally:
        helpers.stop_broker(broker)


async def main_async(args: argparse.Namespace) -> None:
    d = helpers.make_shared_tmpdir("pmcp-bench-dns-")
    try:
        dns_util.write_files(d)
        (d / "dnsloop.py").write_text(LOOP)
        dns_util.DELAY_S = 0.0
        with dns_util.resolver(d):
            print(f"getaddrinfo loop against an immediate loopback resolver, windows of {args.window} s, "
                  f"{args.rounds} rounds; {os.cpu_count()} CPUs")
            for rung in args.rung:
                bdir = helpers.make_shared_tmpdir("pmcp-broker-")
                try:
                    await bench_rung(rung, d, args.window, args.rounds, bdir)
                finally:
                    helpers.remove_tree(bdir)
    finally:
        helpers.remove_tree(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rung", nargs="+", choices=sorted(RUNGS), default=list(RUNGS))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_trace_dns needs root (it starts the broker); skipped")
        return
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
