"""perf_vfs_latency's cost to the traced machine: a file-I/O-heavy workload's ops/s
without and with the VFS latency trace running. Prints, never asserts.

    sudo .venv/bin/python bench/bench_trace_vfs.py [--seconds 4] [--rounds 2]

Workload: a Python loop of 4 KiB pread() calls on a 16 MiB file in the page cache
(close to the worst case for the tool: every call hits one enter and one exit
tracepoint of vfslat.bt, and is itself short), printing its call count every 0.1 s
with CLOCK_MONOTONIC times, so the rate is read over the part the trace covered.

Per round: the workload alone (baseline), then with a system-wide VfsLatency job
(bpftrace rung; fsslower cannot run here) of a broker this script starts as root on
a temp socket (stopped by its PID at the end), then alone again. The traced window is
the job's last duration_s before its reply; the rate is taken over its middle (0.5 s
in from each edge). Overhead = 1 - traced / mean(baselines). Also: the frontend's
parse time for the job's output.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
EXIT_DELAY_S = 0.5  # bpftrace: end of trace -> reply

PREAD_LOOP = r'''
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
end = time.monotonic() + float(sys.argv[2])
size = os.fstat(fd).st_size
n = off = 0
nxt = time.monotonic() + 0.1
while True:
    for _ in range(200):
        os.pread(fd, 4096, off)
        off = (off + 4096) % size
    n += 200
    now = time.monotonic()
    if now >= nxt:
        print("tick", now, n, flush=True)
        nxt += 0.1
        if now >= end:
            break
'''


def start_broker(workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(workdir / "broker.sock")
    with open(workdir / "broker.log", "ab") as log:
        proc = subprocess.Popen([str(VENV_BIN / "perf-mcp-broker"), "--socket", sock, "--log-level", "WARNING",
                                 *extra], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(sock):
            return proc, sock
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"broker did not start: {(workdir / 'broker.log').read_text()}")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ticks(out: bytes) -> list[tuple[float, int]]:
    rows = []
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "tick":
            rows.append((float(parts[1]), int(parts[2])))
    return rows


def rate(rows: list[tuple[float, int]], t0: float, t1: float) -> float:
    inside = [r for r in rows if t0 <= r[0] <= t1]
    if len(inside) < 2:
        return float("nan")
    (a, na), (b, nb) = inside[0], inside[-1]
    return (nb - na) / (b - a)


def workload(argv: list[str], seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*argv, str(seconds)], stdout=subprocess.PIPE, start_new_session=True)


def alone(argv: list[str], seconds: float) -> float:
    p = workload(argv, seconds + 1.0)
    out, _ = p.communicate()
    rows = ticks(out)
    return rate(rows, rows[0][0] + 0.5, rows[-1][0] - 0.5)


def traced(argv: list[str], sock: str, request: Any, seconds: int) -> tuple[float, Any, float]:
    from perf_mcp.broker_client import BrokerClient

    p = workload(argv, seconds + 40.0)
    try:
        reply = trio.run(lambda: BrokerClient(sock).run(request, timeout_s=120))
        t_reply = time.monotonic()
    finally:
        stop(p)
    out = p.stdout.read() if p.stdout else b""
    end = t_reply - EXIT_DELAY_S
    return rate(ticks(out), end - seconds + 0.5, end - 0.5), reply.final, t_reply


def bench(label: str, argv: list[str], sock: str, request: Any, seconds: int, rounds: int,
          parse: Callable[[bytes], Any]) -> None:
    for r in range(rounds):
        before = alone(argv, seconds)
        with_tool, final, _ = traced(argv, sock, request, seconds)
        after = alone(argv, seconds)
        base = (before + after) / 2
        step = final.steps[0]
        t0 = time.perf_counter()
        parse(step.stdout)
        parse_ms = (time.perf_counter() - t0) * 1000
        print(f"{label} round {r + 1}: alone {before:,.0f} / {after:,.0f} ops/s, traced {with_tool:,.0f} ops/s, "
              f"overhead {1 - with_tool / base:.1%}; output {len(step.stdout):,} bytes, parsed in {parse_ms:.1f} ms")


def main() -> int:
    from perf_mcp.trace.vfs_parse import parse_vfslat_bpftrace
    from perf_mcp_protocol import Backend, VfsLatency

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pmcp-bvfs-", dir="/tmp"))
    data = Path(f"/var/tmp/pmcp-bvfs-{os.getpid()}.dat")
    broker = None
    try:
        data.write_bytes(os.urandom(1 << 20) * 16)
        (work / "load.py").write_text(PREAD_LOOP)
        argv = [sys.executable, str(work / "load.py"), str(data)]
        broker, sock = start_broker(work)
        req = VfsLatency(backend=Backend.BPFTRACE, duration_s=a.seconds, pid=None, min_latency_ms=10)
        bench("vfslat.bt system-wide, min 10 ms", argv, sock, req, a.seconds, a.rounds, parse_vfslat_bpftrace)
    finally:
        if broker is not None:
            stop(broker)
        data.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
