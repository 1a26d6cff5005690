"""perf_bio_latency's cost to the traced machine: fio's IOPS on a loop device without
and with the block latency trace running, on each rung. Prints, never asserts.

    sudo .venv/bin/python bench/bench_trace_bio.py [--seconds 3] [--rounds 2]

Workload: fio, 4 KiB direct random reads (psync, one in flight: the shortest
requests, the worst case for the tool, whose probes run on every issue and
completion) of a loop device over a file in /var/tmp (tests/tools_bio/bio_util.py),
time-based for --seconds. Per rung and round: fio alone, fio with a BioLatency job
(per_device) of a broker this script starts as root on a temp socket (fio starts
once the program has attached to the block tracepoints; the job lasts longer than
fio), fio alone again. Overhead = 1 - traced IOPS / mean(alone IOPS). Also: what
the trace counted on the loop device against fio's count, and the frontend's
parse time for the job's output. The broker is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
sys.path[:0] = [str(REPO / "tests" / "tools_bio")]

from bio_util import loop_device, run_fio, wait_attached  # noqa: E402


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


def fio_alone(dev: str, seconds: int) -> float:
    return run_fio(dev, runtime_s=seconds, bs="4k", rt=False).iops


def fio_traced(dev: str, seconds: int, broker: subprocess.Popen[bytes], sock: str, backend: Any) -> tuple[float, int, Any]:
    from perf_mcp.broker_client import BrokerClient
    from perf_mcp_protocol import BioLatency

    request = BioLatency(backend=backend, duration_s=seconds + 6, per_device=True)
    box: dict[str, Any] = {}

    def job() -> None:
        box["final"] = trio.run(lambda: BrokerClient(sock).run(request, timeout_s=120)).final

    t = threading.Thread(target=job)
    t.start()
    wait_attached(broker.pid)
    fio = run_fio(dev, runtime_s=seconds, bs="4k", rt=False)
    t.join()
    return fio.iops, fio.ios, box["final"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the broker, losetup)")
    from perf_mcp.trace.bio_parse import parse_biolatency_bpftrace, parse_biolatency_text
    from perf_mcp_protocol import Backend

    with tempfile.TemporaryDirectory(prefix="pmcp-bench-bio-") as work, loop_device() as dev:
        os.chmod(work, 0o755)
        for label, backend, extra in (("biolatency (libbpf)", Backend.LIBBPF, ()),
                                      ("bpftrace biolatency.bt", Backend.BPFTRACE, ("--disable", "biolatency"))):
            bdir = Path(work) / backend.value
            bdir.mkdir()
            broker, sock = start_broker(bdir, *extra)
            try:
                for r in range(a.rounds):
                    before = fio_alone(dev.path, a.seconds)
                    iops, ios, final = fio_traced(dev.path, a.seconds, broker, sock, backend)
                    after = fio_alone(dev.path, a.seconds)
                    step = final.steps[0]
                    t0 = time.perf_counter()
                    if backend is Backend.LIBBPF:
                        out = parse_biolatency_text(step.stdout, per_device=True)
                        seen = next((d.hist.count for d in out.per_device or [] if d.name == dev.name), 0)
                    else:
                        out = parse_biolatency_bpftrace(step.stdout)
                        seen = next((d.hist.count for d in out.per_device or [] if d.dev == (dev.major, dev.minor)), 0)
                    parse_ms = (time.perf_counter() - t0) * 1000
                    base = (before + after) / 2
                    print(f"{label} round {r + 1}: fio alone {before:.0f} / {after:.0f} IOPS, traced {iops:.0f} IOPS "
                          f"-> overhead {100 * (1 - iops / base):.1f}%; trace counted {seen} of fio's {ios} "
                          f"requests on {dev.name}; parse {parse_ms:.2f} ms ({len(step.stdout)} bytes)")
            finally:
                stop(broker)


if __name__ == "__main__":
    main()
