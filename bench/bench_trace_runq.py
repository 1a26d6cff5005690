"""perf_runq_latency's cost to the traced machine: a scheduler-heavy workload's
ops/s without and with the run-queue trace running, per rung. Prints, never asserts.

    sudo .venv/bin/python bench/bench_trace_runq.py [--seconds 4] [--rounds 2]

Workload: `rq-load pingpong` (tests/tools_runq/runq_util.py), two threads
passing a byte through two pipes: every round trip is two wakeups and two
context switches, i.e. four hits of the sched tracepoints both rungs hook, so
this is close to the worst case for the tool (a CPU-bound workload barely
switches). It prints its round-trip count every 0.1 s with CLOCK_MONOTONIC
times, so the rate is read over exactly the part of the run the trace covered.

Per round and rung: the workload alone (baseline), then the workload while a
system-wide RunqLatency job of the broker runs (started by this script as root
on a temp socket, with `--disable runqlat` for the bpftrace rung; stopped by
its PID at the end). The traced window is the script's own clock reads for
bpftrace, and the job's last duration_s seconds before its reply (less
runqlat's exit time) for runqlat; the rate is taken over its middle, 0.5 s in
from each edge. Overhead = 1 - traced / baseline, where the
baseline is the mean of the runs just before and after (the machine is shared,
so the two baselines are printed too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "tools_runq"))

from perf_mcp.broker_client import BrokerClient  # noqa: E402
from perf_mcp.trace.runq_parse import parse_runqlat_bpftrace, parse_runqlat_text  # noqa: E402
from perf_mcp_protocol import Backend, RunqLatency  # noqa: E402
from runq_util import build_rq_load  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
EXIT_DELAY_S = {Backend.LIBBPF: 0.15, Backend.BPFTRACE: 0.5}  # end of trace -> reply, when not stated


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


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def ticks(out: bytes) -> list[tuple[float, int]]:
    rows = []
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "tick":
            rows.append((float(parts[1]), int(parts[2])))
    return rows


def rate(rows: list[tuple[float, int]], t0: float, t1: float) -> float:
    """Round trips per second between the ticks nearest t0 and t1."""
    inside = [r for r in rows if t0 <= r[0] <= t1]
    if len(inside) < 2:
        raise RuntimeError(f"no workload ticks in [{t0:.2f}, {t1:.2f}]")
    (a, na), (b, nb) = inside[0], inside[-1]
    return (nb - na) / (b - a)


def alone(exe: Path, seconds: float) -> float:
    out = subprocess.run([str(exe), "pingpong", str(seconds + 1.0)], capture_output=True, check=True).stdout
    rows = ticks(out)
    return rate(rows, rows[0][0] + 0.5, rows[-1][0] - 0.5)


def traced(exe: Path, sock: str, backend: Backend, seconds: int) -> tuple[float, int, float]:
    """(ops/s inside the traced window, waits the tool counted, job wall s)."""
    work = subprocess.Popen([str(exe), "pingpong", str(seconds + 30)], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(0.3)
        req = RunqLatency(backend=backend, duration_s=seconds)
        t_start = time.monotonic()
        reply = trio.run(lambda: BrokerClient(sock).run(req, timeout_s=120))
        done = time.monotonic()
    finally:
        os.kill(work.pid, signal.SIGKILL)
        out, _ = work.communicate()
    (step,) = reply.final.steps
    parsed = (parse_runqlat_text if backend is Backend.LIBBPF else parse_runqlat_bpftrace)(step.stdout)
    if parsed.window_ns is not None:  # bpftrace: the script's own CLOCK_MONOTONIC reads
        start, end = parsed.window_ns[0] / 1e9, parsed.window_ns[1] / 1e9
    else:
        end = done - EXIT_DELAY_S[backend]
        start = end - seconds
    return rate(ticks(out), start + 0.5, end - 0.5), parsed.total.count, done - t_start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=4, help="traced seconds per run (1-30)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_trace_runq: needs root to start a broker (sudo .venv/bin/python bench/bench_trace_runq.py)")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="pmcp-bench-runq-", dir="/tmp"))
    workdir.chmod(0o755)
    brokers: list[subprocess.Popen[bytes]] = []
    try:
        exe = build_rq_load(workdir)
        rungs = []
        for backend, extra in ((Backend.LIBBPF, ()), (Backend.BPFTRACE, ("--disable", "runqlat"))):
            sub = workdir / backend.value
            sub.mkdir()
            sub.chmod(0o755)
            proc, sock = start_broker(sub, *extra)
            brokers.append(proc)
            rungs.append((backend, sock))
        print(f"{os.cpu_count()} CPUs; workload: pingpong (2 threads, 4 sched events per round trip); "
              f"traced {args.seconds} s system-wide per run, rate over its middle {args.seconds - 1} s")
        print(f"{'round':>5} {'rung':<9} {'alone before':>13} {'traced':>12} {'alone after':>12} "
              f"{'overhead':>9} {'waits/s':>9} {'job wall':>9}")
        summary: dict[str, list[float]] = {b.value: [] for b, _ in rungs}
        for r in range(1, args.rounds + 1):
            for backend, sock in rungs:
                before = alone(exe, args.seconds)
                during, waits, wall = traced(exe, sock, backend, args.seconds)
                after = alone(exe, args.seconds)
                base = (before + after) / 2
                overhead = 100.0 * (1 - during / base)
                summary[backend.value].append(overhead)
                print(f"{r:>5} {backend.value:<9} {before:>11.0f}/s {during:>10.0f}/s {after:>10.0f}/s "
                      f"{overhead:>8.1f}% {waits / args.seconds:>9.0f} {wall:>8.1f}s")
        for name, values in summary.items():
            print(f"{name}: overhead {sum(values) / len(values):.1f}% mean over {len(values)} rounds "
                  f"(min {min(values):.1f}%, max {max(values):.1f}%)")
    finally:
        for proc in brokers:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
