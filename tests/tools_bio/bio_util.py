"""Known-answer block I/O for perf_bio_latency / perf_io_latency mode=trace (tests, bench, fixture capture).

- LoopDevice: a 32 MiB file in /var/tmp filled with data, attached as a loop
  device with direct I/O (the loop driver reads the file with O_DIRECT, so no
  page cache hides the requests), detached and removed at the end. Nothing but
  the workload touches it: its /proc/diskstats reads+writes completed grow by
  exactly the requests the workload makes.
- run_fio: fio with direct I/O, psync (one request in flight) or libaio, a fixed
  number of I/Os, `--output-format=json`, at SCHED_FIFO priority (chrt -f): on
  this loaded 2-CPU machine a normal thread woken from its I/O wait queues
  behind the CPU hogs for up to milliseconds, which fio counts in its
  completion latency and the block layer does not; a real-time thread runs at
  once, so fio's clat is the block latency plus the syscall's own path.
- wait_attached: the tracing program the broker started has attached to
  block_rq_issue and block_rq_complete (bpftool perf list), so a workload run after it falls
  inside the trace window.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOP_DIR = Path("/var/tmp")
LOOP_SIZE = 32 << 20
FIO = "/usr/bin/fio"
RT_PRIO = "50"


@dataclass(frozen=True)
class LoopDevice:
    name: str  # loopN
    path: str  # /dev/loopN
    major: int
    minor: int
    backing: Path


@contextmanager
def loop_device() -> Iterator[LoopDevice]:
    backing = LOOP_DIR / f"pmcp-bio-{uuid.uuid4().hex[:12]}.img"
    dev = None
    try:
        with open(backing, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(LOOP_SIZE >> 20):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", os.fspath(backing)],
                             capture_output=True, text=True, check=True).stdout.strip()
        name = os.path.basename(dev)
        major, minor = (int(x) for x in Path(f"/sys/block/{name}/dev").read_text().split(":"))
        yield LoopDevice(name, dev, major, minor, backing)
    finally:
        if dev:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        backing.unlink(missing_ok=True)


@contextmanager
def io_scheduler(dev: LoopDevice, name: str) -> Iterator[None]:
    """The loop device's I/O scheduler set to `name` for a while (none afterwards)."""
    path = Path(f"/sys/block/{dev.name}/queue/scheduler")
    path.write_text(name)
    try:
        yield
    finally:
        path.write_text("none")


def diskstats_ios(name: str) -> int:
    """reads completed + writes completed of one device (fields 4 and 8)."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[2] == name:
            return int(parts[3]) + int(parts[7])
    raise KeyError(name)


@dataclass(frozen=True)
class FioResult:
    ios: int
    clat_mean_us: float
    clat_p50_us: float
    clat_p90_us: float
    clat_p99_us: float
    iops: float
    raw: dict[str, Any]


def fio_argv(dev: str, *, ios: int | None = None, runtime_s: float | None = None, bs: str = "64k",
             rw: str = "randread", engine: str = "psync", iodepth: int = 1, rt: bool = True) -> list[str]:
    argv = [FIO, "--name=bio", f"--filename={dev}", "--direct=1", f"--rw={rw}", f"--bs={bs}",
            f"--ioengine={engine}", f"--iodepth={iodepth}", f"--size={LOOP_SIZE}", "--output-format=json",
            "--randrepeat=0", "--norandommap"]
    if ios is not None:
        argv.append(f"--number_ios={ios}")
    if runtime_s is not None:
        argv += ["--time_based", f"--runtime={runtime_s}"]
    return (["chrt", "-f", RT_PRIO] if rt else []) + argv


def run_fio(dev: str, **kw: Any) -> FioResult:
    out = subprocess.run(fio_argv(dev, **kw), capture_output=True, text=True, check=True, timeout=120).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["read"] if job["read"]["total_ios"] else job["write"]
    clat = side["clat_ns"]
    pct = clat.get("percentile", {})
    return FioResult(ios=job["read"]["total_ios"] + job["write"]["total_ios"], clat_mean_us=clat["mean"] / 1000,
                     clat_p50_us=pct.get("50.000000", 0) / 1000, clat_p90_us=pct.get("90.000000", 0) / 1000,
                     clat_p99_us=pct.get("99.000000", 0) / 1000, iops=side["iops"], raw=job)


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in kids:
            if int(k) not in out:
                out.add(int(k))
                todo.append(int(k))
    return out


def _bpftool(*args: str) -> list[dict[str, Any]]:
    """`bpftool -j ARGS` as JSON ([] when it answers nothing readable in 10 s)."""
    try:
        return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True,
                                         timeout=10).stdout or "[]")
    except (json.JSONDecodeError, subprocess.TimeoutExpired):
        return []


def attached(broker_pid: int) -> bool:
    """A process the broker started has BPF programs on block_rq_issue and block_rq_complete."""
    ours = _descendants(broker_pid)
    points = {str(r.get("tracepoint", "")) for r in _bpftool("perf", "list") if r.get("pid") in ours}
    return {"block_rq_issue", "block_rq_complete"} <= points


def _progs() -> list[dict[str, Any]]:
    return _bpftool("prog", "show")


def last_prog_id() -> int:
    """The newest BPF program id: programs loaded later have larger ids."""
    return max((int(p.get("id", 0)) for p in _progs()), default=0)


def block_recursion_misses(after_id: int) -> int:
    """How many runs the kernel skipped of the block_rq_* programs loaded after after_id (the
    tracing job's): a kprobe or classic tracepoint program is not run while another such program
    runs on the same CPU (recursion protection, bpf_prog_active); a block completion in an
    interrupt that lands inside another tracer's program is then never seen. Counted for every
    device's requests (the device filter runs inside the program), so an upper bound on this
    device's missed requests. bpftool shows recursion_misses only when it is not zero."""
    return sum(int(p.get("recursion_misses") or 0) for p in _progs()
               if int(p.get("id", 0)) > after_id and str(p.get("name", "")).startswith("block_rq"))


def wait_attached(broker_pid: int, timeout: float = 30.0) -> float:
    """Seconds waited until the broker's tracing program attached; raises on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if attached(broker_pid):
            time.sleep(0.3)  # bpftrace: the remaining probes and BEGIN right after
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError("the broker's tracing program did not attach to block_rq_complete")
