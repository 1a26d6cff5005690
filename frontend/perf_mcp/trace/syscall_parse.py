"""Parsers for perf_syscall_count: libbpf-tools syscount text and the broker's syscount.bt JSON.

Pure functions from the programs' bytes to typed counts; every syscall is
NAMED here (syscall_names), whichever program counted it.

syscount (libbpf-tools), one run with -d and no -i prints at most one block:

    Tracing syscalls, printing top 500... Ctrl+C to quit.
    [14:10:16]
    SYSCALL                   COUNT        TIME (us)       (TIME only with -L)
    getppid                   20000         2791.058
    [unknown: 439]              500            9.120       (a number it has no name for)

and with -P `PID    COMM               COUNT ...` rows ("%-6u %-15s %8llu"),
where COMM is the process's (group leader's) name and may hold spaces. No
block at all when nothing was counted. With -L, syscount counts only the calls
it saw enter (the first call of each thread, already in the kernel when the
trace attached, is left out), and sorts by time; -x counts failed calls only.

syscount.bt (bpftrace -f json) prints its maps at exit, one JSON line each:
@calls[nr], @errors[nr, errno], @lat_ns / @lat_n / @lat_max_ns[nr],
@proc_calls / @proc_errors / @proc_lat_ns[pid, comm]. A key "pid,comm" splits
at its FIRST comma (comm is last and may itself hold commas).

Damaged output (cut at the broker's cap, stray bytes) gives the rows that
parse, a count of the lines that did not, and warnings; ParseFailure only
when nothing at all was recognisable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from .bpftrace import parse_json_lines
from .syscall_names import errno_name, syscall_name, syscall_number


class ParseFailure(Exception):
    """The output holds nothing this parser recognises."""


@dataclass
class SyscallStat:
    nr: int | None
    name: str
    count: int
    total_ns: int | None = None  # time spent in the timed calls
    timed: int | None = None  # how many calls were timed (the mean's divisor)
    max_ns: int | None = None
    failed: int | None = None  # calls that returned an error (None: not counted)


@dataclass
class ProcessStat:
    pid: int
    comm: str
    count: int
    total_ns: int | None = None
    failed: int | None = None
    other_names: list[str] = field(default_factory=list)  # other thread names seen (bpftrace)


@dataclass
class ErrnoStat:
    nr: int | None
    name: str
    errno: int
    errno_name: str
    count: int


@dataclass
class SyscountRun:
    """One syscount run (by syscall, by process with -P, or failed calls with -x)."""

    by_process: bool = False
    latency: bool = False
    unit_ns: float = 1000.0  # TIME column unit (us; -m would be ms)
    syscalls: list[SyscallStat] = field(default_factory=list)
    processes: list[ProcessStat] = field(default_factory=list)
    banner: bool = False  # "Tracing syscalls, printing top N..." seen: the program started tracing
    blocks: int = 0  # table blocks printed (0: nothing was counted)
    bad_lines: int = 0
    top: int | None = None

    @property
    def rows(self) -> int:
        return len(self.processes) if self.by_process else len(self.syscalls)


_BANNER = re.compile(r"^Tracing syscalls, printing top (\d+)\.\.\.")
_STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]$")
_TIME_COL = re.compile(r"TIME \((us|ms)\)")
_NAME = re.compile(r"^(?:[a-z_][a-z0-9_]*|\[unknown: \d+\])$")
_DECIMAL = re.compile(r"^\d+$")
_FLOAT = re.compile(r"^\d+(?:\.\d+)?$")


def _to_ns(text: str, unit_ns: float) -> int:
    return int(round(float(text) * unit_ns))


def parse_syscount(raw: bytes, arch: str | None = None) -> SyscountRun:
    """One syscount run's stdout; see the module docstring."""
    out = SyscountRun()
    text = raw.decode("utf-8", "replace")
    in_table = False
    syscalls: dict[str, SyscallStat] = {}
    procs: dict[int, ProcessStat] = {}
    recognised = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            in_table = False
            continue
        m = _BANNER.match(stripped)
        if m:
            out.banner = recognised = True
            out.top = int(m.group(1))
            in_table = False
            continue
        if _STAMP.match(stripped):
            recognised = True
            continue
        if stripped.startswith(("SYSCALL ", "PID ")) and "COUNT" in stripped:
            out.by_process = stripped.startswith("PID ")
            unit = _TIME_COL.search(stripped)
            out.latency = unit is not None
            out.unit_ns = 1e6 if unit and unit.group(1) == "ms" else 1e3
            out.blocks += 1
            in_table = recognised = True
            continue
        if not in_table or not _row(line, out, syscalls, procs, arch):
            out.bad_lines += 1
            continue
        recognised = True
    if not recognised and text.strip():
        raise ParseFailure("no syscount banner, header or row in the output")
    out.syscalls = sorted(syscalls.values(), key=lambda s: (-s.count, s.name))
    out.processes = sorted(procs.values(), key=lambda p: (-p.count, p.pid))
    return out


def _row(line: str, out: SyscountRun, syscalls: dict[str, SyscallStat], procs: dict[int, ProcessStat],
         arch: str | None) -> bool:
    """One table row into syscalls/procs (summed over blocks); False when it does not parse."""
    ncols = 2 if out.latency else 1
    parts = line.rstrip().rsplit(None, ncols)
    if len(parts) != ncols + 1 or not _DECIMAL.match(parts[1]):
        return False
    count = int(parts[1])
    total = None
    if out.latency:
        if not _FLOAT.match(parts[2]):
            return False
        total = _to_ns(parts[2], out.unit_ns)
    head = parts[0].strip()
    if out.by_process:
        pid_text, _, comm = head.partition(" ")
        if not _DECIMAL.match(pid_text) or len(comm.strip()) > 15:
            return False
        pid = int(pid_text)
        p = procs.setdefault(pid, ProcessStat(pid=pid, comm=comm.strip(), count=0,
                                              total_ns=0 if out.latency else None))
        p.count += count
        if total is not None and p.total_ns is not None:
            p.total_ns += total
        return True
    if not _NAME.match(head):
        return False
    nr = syscall_number(head, arch)
    name = syscall_name(nr, arch) if nr is not None else head
    s = syscalls.setdefault(name, SyscallStat(nr=nr, name=name, count=0,
                                              total_ns=0 if out.latency else None,
                                              timed=0 if out.latency else None))
    s.count += count
    if total is not None and s.total_ns is not None and s.timed is not None:
        s.total_ns += total
        s.timed += count  # syscount -L counts only the calls it timed
    return True


# ---------------------------------------------------------------- bpftrace syscount.bt


@dataclass
class BpftraceRun:
    syscalls: list[SyscallStat] = field(default_factory=list)
    processes: list[ProcessStat] = field(default_factory=list)
    errnos: list[ErrnoStat] = field(default_factory=list)
    maps: set[str] = field(default_factory=set)  # the maps that arrived whole
    attached_probes: int | None = None
    bad_lines: int = 0
    bad_entries: int = 0  # map entries whose key or value is not what the script writes


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return None


def _entries(maps: dict[str, Any], name: str, run: BpftraceRun) -> dict[str, int]:
    """A map's {key text: int value}; a value that is not an integer is counted as bad."""
    data = maps.get(name)
    if data is None:
        return {}
    if not isinstance(data, dict):
        run.bad_entries += 1
        return {}
    run.maps.add(name)
    out: dict[str, int] = {}
    for k, v in data.items():
        iv = _int(v)
        if iv is None or iv < 0:
            run.bad_entries += 1
            continue
        out[str(k)] = iv
    return out


def _nr_key(key: str) -> int | None:
    k = key.strip()
    if k.startswith("-") and k[1:].isdecimal():
        return -int(k[1:])
    return int(k) if k.isdecimal() else None


def _split_pid_comm(key: str) -> tuple[int, str] | None:
    pid_text, sep, comm = key.partition(",")
    if not sep or not pid_text.strip().isdecimal():
        return None
    return int(pid_text.strip()), comm


def parse_bpftrace_syscount(raw: bytes, arch: str | None = None) -> BpftraceRun:
    """syscount.bt's JSON lines; see the module docstring."""
    # bytes that are not UTF-8 (a cut inside a character) would stop the JSON decoder with
    # UnicodeDecodeError rather than DecodeError: they become U+FFFD first
    parsed = parse_json_lines(raw.decode("utf-8", "replace").encode())
    run = BpftraceRun(attached_probes=parsed.attached_probes, bad_lines=parsed.bad_lines)
    if parsed.attached_probes is None and not parsed.maps:
        if raw.strip():
            raise ParseFailure(f"no bpftrace JSON map or probe line in the output ({parsed.bad_lines} bad lines)")
        return run
    m = parsed.maps
    by_nr: dict[int, SyscallStat] = {}
    lat_ns, lat_n, lat_max = (_entries(m, k, run) for k in ("@lat_ns", "@lat_n", "@lat_max_ns"))
    errors = _entries(m, "@errors", run)
    failed_by_nr: dict[int, int] = {}
    for key, count in _entries(m, "@calls", run).items():
        nr = _nr_key(key)
        if nr is None:
            run.bad_entries += 1
            continue
        if nr < 0:
            continue  # id -1: not a system call (the kernel skipped it); syscount drops these too
        by_nr[nr] = SyscallStat(nr=nr, name=syscall_name(nr, arch), count=count)
    for key, count in errors.items():
        a, sep, b = key.partition(",")
        nr, err = _nr_key(a), _nr_key(b)
        if not sep or nr is None or err is None or nr < 0 or err <= 0:
            run.bad_entries += 1
            continue
        run.errnos.append(ErrnoStat(nr=nr, name=syscall_name(nr, arch), errno=err, errno_name=errno_name(err),
                                    count=count))
        failed_by_nr[nr] = failed_by_nr.get(nr, 0) + count
    timing = "@lat_n" in run.maps
    errors_on = "@errors" in run.maps or any(k in m for k in ("@proc_errors",))
    for nr, s in by_nr.items():
        if timing:
            s.timed = lat_n.get(str(nr), 0)
            s.total_ns = lat_ns.get(str(nr), 0)
            s.max_ns = lat_max.get(str(nr))
        if errors_on:
            s.failed = failed_by_nr.get(nr, 0)
    # an errno key whose syscall has no @calls entry (the calls map was cut): keep it visible
    for nr, n in failed_by_nr.items():
        if nr not in by_nr:
            by_nr[nr] = SyscallStat(nr=nr, name=syscall_name(nr, arch), count=n, failed=n)
    run.syscalls = sorted(by_nr.values(), key=lambda s: (-s.count, s.name))
    run.errnos.sort(key=lambda e: (-e.count, e.name, e.errno))
    run.processes = _processes(m, run, errors_on)
    return run


def _processes(m: dict[str, Any], run: BpftraceRun, errors_on: bool) -> list[ProcessStat]:
    """Per-process rows: the [pid, comm] keys summed by pid; comm = the busiest thread name."""
    calls = _entries(m, "@proc_calls", run)
    if not calls:
        return []
    failed = _entries(m, "@proc_errors", run)
    lat = _entries(m, "@proc_lat_ns", run)
    timed = "@proc_lat_ns" in run.maps or "@lat_n" in run.maps
    names: dict[int, dict[str, int]] = {}
    out: dict[int, ProcessStat] = {}
    for key, count in calls.items():
        pc = _split_pid_comm(key)
        if pc is None:
            run.bad_entries += 1
            continue
        pid, comm = pc
        p = out.setdefault(pid, ProcessStat(pid=pid, comm=comm, count=0, total_ns=0 if timed else None,
                                            failed=0 if errors_on else None))
        p.count += count
        seen = names.setdefault(pid, {})
        seen[comm] = seen.get(comm, 0) + count
        if p.failed is not None:
            p.failed += failed.get(key, 0)
        if p.total_ns is not None:
            p.total_ns += lat.get(key, 0)
    for pid, p in out.items():
        ranked = sorted(names[pid].items(), key=lambda kv: (-kv[1], kv[0]))
        p.comm = ranked[0][0]
        p.other_names = [n for n, _ in ranked[1:]]
    return sorted(out.values(), key=lambda p: (-p.count, p.pid))
