"""perf_io_layers' cost to the traced machine: a file-I/O-heavy workload's ops/s
without and with the I/O layers trace running, per rung. Prints, never asserts.

    sudo .venv/bin/python bench/bench_trace_iolayers.py [--seconds 4] [--rounds 2]

Workload and method as bench/bench_trace_vfs.py (4 KiB pread() calls on a cached
file: each is one enter and one exit tracepoint hit for iolayers.bt). Rungs: the
bpftrace script system-wide and per process; the procfs rung costs the workload
nothing (two reads of /proc/PID/io and /proc/diskstats), so only the time it takes
to read /proc/*/io once is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_trace_vfs import PREAD_LOOP, bench, start_broker, stop  # noqa: E402


def main() -> int:
    from perf_mcp.tools.perf_io_layers import read_diskstats, read_proc_io
    from perf_mcp.trace.iolayers_parse import parse_iolayers_bpftrace
    from perf_mcp_protocol import Backend, IoLayers

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pmcp-biol-", dir="/tmp"))
    data = Path(f"/var/tmp/pmcp-biol-{os.getpid()}.dat")
    broker = None
    try:
        data.write_bytes(os.urandom(1 << 20) * 16)
        (work / "load.py").write_text(PREAD_LOOP)
        argv = [sys.executable, str(work / "load.py"), str(data)]
        broker, sock = start_broker(work)
        for per_process in (False, True):
            req = IoLayers(backend=Backend.BPFTRACE, duration_s=a.seconds, per_process=per_process)
            bench(f"iolayers.bt per_process={per_process}", argv, sock, req, a.seconds, a.rounds,
                  parse_iolayers_bpftrace)
        t0 = time.perf_counter()
        procs, denied = read_proc_io()
        read_diskstats()
        print(f"procfs rung: one reading of /proc/*/io ({len(procs)} readable, {denied} denied) and /proc/diskstats "
              f"in {(time.perf_counter() - t0) * 1000:.1f} ms")
    finally:
        if broker is not None:
            stop(broker)
        data.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
