"""Benchmark: what perf_tcp_trace costs a process that opens loopback TCP connections
as fast as it can.

The workload (one Python process, a server thread) connects to 127.0.0.1, sends
1000 bytes, reads 1000 back and closes, in a loop for --window seconds, and
prints its connections/s. It is measured in windows alternating without and with
perf_tcp_trace running (--rounds pairs), for each rung:
  tcplife       lifecycle, libbpf-tools tcplife (a broker with default arguments)
  tcplife.bt    lifecycle, bpftrace (a broker started with --disable tcplife)
  tcpconn.bt    connections, bpftrace (tcpconnect needs kprobes: never runs here)
Overhead = (without - with) / without; the spread of the "without" windows is the
noise floor of a shared machine. Also prints how many of the workload's sessions
the trace saw. The tool runs in-process against brokers this bench starts as root
and stops by PID. It prints figures and asserts nothing:
    sudo .venv/bin/python bench/bench_trace_tcp.py [--window 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "tools_tcp")]

import helpers  # noqa: E402
from tcp_util import BPFTRACE_CONN_TRACEPOINTS, BPFTRACE_LIFE_TRACEPOINTS, TCPLIFE_TRACEPOINTS, wait_attached  # noqa: E402
from perf_mcp.artifacts import ArtifactStore  # noqa: E402
from perf_mcp.broker_client import BrokerClient  # noqa: E402
from perf_mcp.registry import Services, ToolContext  # noqa: E402
from perf_mcp.tools import perf_tcp_trace as tool  # noqa: E402

LOOP = r"""
import socket, sys, threading, time
window = float(sys.argv[1])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(128)
port = srv.getsockname()[1]
def serve():
    while True:
        c, _ = srv.accept()
        got = 0
        while got < 1000:
            b = c.recv(4096)
            if not b: break
            got += len(b)
        c.sendall(b"s" * 1000); c.close()
threading.Thread(target=serve, daemon=True).start()
n = 0; t0 = time.monotonic()
while time.monotonic() - t0 < window:
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"c" * 1000)
    got = 0
    while got < 1000:
        b = s.recv(4096)
        if not b: break
        got += len(b)
    s.close(); n += 1
print(n, time.monotonic() - t0, port)
"""

RUNGS = {"tcplife": ((), "lifecycle", TCPLIFE_TRACEPOINTS),
         "tcplife.bt": (("--disable", "tcplife"), "lifecycle", BPFTRACE_LIFE_TRACEPOINTS),
         "tcpconn.bt": ((), "connections", BPFTRACE_CONN_TRACEPOINTS)}


async def run_loop(script: Path, window: float) -> tuple[int, float, int]:
    res = await trio.run_process([sys.executable, str(script), str(window)], capture_stdout=True)
    n, secs, port = res.stdout.split()
    return int(n), float(secs), int(port)


def context(socket: Path) -> ToolContext:
    async def no_progress(value: float, total: float | None, message: str | None) -> None:
        return None

    return ToolContext(tool=tool.NAME, broker=BrokerClient(str(socket)), artifacts=ArtifactStore(),
                       services=Services(), progress=no_progress)


async def bench_rung(name: str, script: Path, window: float, rounds: int, workdir: Path) -> None:
    extra, mode, wanted = RUNGS[name]
    broker = helpers.start_broker(workdir, *extra)
    try:
        base, traced, seen = [], [], []
        for _ in range(rounds):
            n, secs, _ = await run_loop(script, window)
            base.append(n / secs)
            out: dict[str, object] = {}

            async def call() -> None:
                out["o"] = await tool.run(context(broker.socket_path), tool.Params(
                    duration_s=int(window + 3), mode=mode, max_listed=1))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await wait_attached(broker.pid, wanted)
                n2, secs2, port = await run_loop(script, window)
            traced.append(n2 / secs2)
            d = out["o"].data  # type: ignore[attr-defined]
            if d.lifecycle:  # every session of the host, both sides of each loopback connection
                seen.append(f"{d.lifecycle.sessions} sessions for {2 * n2} sides (lost {d.lost_events})")
            else:
                seen.append(f"{d.connections.connects} connects, {d.connections.accepts} accepts for {n2}")
        b, t = statistics.median(base), statistics.median(traced)
        spread = (max(base) - min(base)) / b * 100 if b else 0.0
        print(f"{name:11s} without: {b:7.0f} conn/s (windows {', '.join(f'{x:.0f}' for x in base)}; spread "
              f"{spread:.1f}%)")
        print(f"{'':11s} with:    {t:7.0f} conn/s (windows {', '.join(f'{x:.0f}' for x in traced)}); "
              f"overhead {(b - t) / b * 100:+.1f}%")
        print(f"{'':11s} seen (whole host): " + "; ".join(seen))
    finally:
        helpers.stop_broker(broker)


async def main_async(args: argparse.Namespace) -> None:
    workdir = helpers.make_shared_tmpdir("pmcp-bench-tcp-")
    try:
        script = workdir / "tcploop.py"
        script.write_text(LOOP)
        print(f"loopback connect/1000 B each way/close loop, windows of {args.window} s, {args.rounds} rounds; "
              f"{os.cpu_count()} CPUs")
        for rung in args.rung:
            bdir = helpers.make_shared_tmpdir("pmcp-broker-")
            try:
                await bench_rung(rung, script, args.window, args.rounds, bdir)
            finally:
                helpers.remove_tree(bdir)
    finally:
        helpers.remove_tree(workdir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rung", nargs="+", choices=sorted(RUNGS), default=list(RUNGS))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_trace_tcp needs root (it starts the broker); skipped")
        return
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
