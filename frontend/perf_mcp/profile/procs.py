"""Who the sampled pids are: command lines, thread counts, and which processes are perf-mcp's own.

A profile names processes by pid, but a pid says little and the process may be
gone by the time the profile is folded. So the tool takes snapshots of /proc
while it profiles (before the job, in the middle of the sampling window, after
it) and names each sampled pid from the latest snapshot that saw it.

perf-mcp's own processes: this frontend (os.getpid()), every process whose comm
is a perf-mcp program (the broker: "perf-mcp-broker"; a frontend: "perf-mcp";
under `sudo perf-mcp` the broker is the frontend's parent, also "perf-mcp"),
and their descendants - the broker's perf record, perf script and bpftrace jobs.
A job child is seen only if it lived through one of the snapshots; the mid-window
snapshot catches this profile's own perf record or bpftrace, which lives for the
whole window.

Reading (snapshot) is apart from deciding (own_pids), which is pure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import msgspec

from ..procfs.errors import ParseError
from ..procfs.process import parse_pid_stat

OWN_COMMS = frozenset({"perf-mcp-broker", "perf-mcp"})
COMMAND_MAX = 120  # characters of a command line kept


class ProcInfo(msgspec.Struct, frozen=True, kw_only=True):
    pid: int
    ppid: int
    comm: str
    command: str  # the command line, arguments joined by spaces; "[comm]" for kernel threads
    threads: int
    cpu_ticks: int  # utime + stime (all threads), clock ticks


def command_line(raw: bytes, comm: str) -> str:
    """/proc/PID/cmdline's NUL-separated arguments -> one line, capped; [comm] when empty (kernel threads)."""
    args = [a for a in raw.decode("utf-8", "replace").split("\0") if a]
    line = " ".join(args) if args else f"[{comm}]"
    return line if len(line) <= COMMAND_MAX else line[: COMMAND_MAX - 1] + "…"


def read_process(pid: int, proc: Path = Path("/proc")) -> ProcInfo | None:
    """One process, or None when it is gone (or unreadable)."""
    try:
        stat = parse_pid_stat((proc / str(pid) / "stat").read_bytes())
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except (OSError, ParseError):
        return None
    return ProcInfo(pid=pid, ppid=stat.ppid, comm=stat.comm, command=command_line(cmdline, stat.comm),
                    threads=stat.num_threads, cpu_ticks=stat.utime + stat.stime)


def snapshot(proc: Path = Path("/proc")) -> dict[int, ProcInfo]:
    """Every process now (a few ms per hundred processes)."""
    out: dict[int, ProcInfo] = {}
    try:
        names = os.listdir(proc)
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            info = read_process(int(name), proc)
            if info is not None:
                out[info.pid] = info
    return out


def merged(snapshots: Iterable[dict[int, ProcInfo]]) -> dict[int, ProcInfo]:
    """One view of several snapshots, in order: a later sight of a pid wins (pid reuse within
    a few seconds is rare, and the latest is the one most likely to match the samples' end)."""
    out: dict[int, ProcInfo] = {}
    for snap in snapshots:
        out.update(snap)
    return out


def own_pids(procs: dict[int, ProcInfo], self_pid: int, parent_pid: int | None = None) -> frozenset[int]:
    """perf-mcp's processes among procs: self_pid, perf-mcp programs by comm (and parent_pid when
    it is one), and every descendant of those."""
    roots = {self_pid}
    roots.update(p.pid for p in procs.values() if p.comm in OWN_COMMS)
    if parent_pid is not None and parent_pid in procs and procs[parent_pid].comm in OWN_COMMS:
        roots.add(parent_pid)
    own: set[int] = set()
    for pid in procs:
        seen: set[int] = set()
        cur: int | None = pid
        while cur is not None and cur not in seen:
            if cur in roots or cur in own:
                own.add(pid)
                break
            seen.add(cur)
            info = procs.get(cur)
            cur = info.ppid if info is not None and info.ppid > 0 else None
    return frozenset(own | roots)
