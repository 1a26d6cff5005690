"""I/O layer outputs -> typed counts; pure functions from bytes.

Three sources:

- the broker's bpftrace script iolayers.bt (`-f json`): bytes and calls of the
  read and write system calls by direction and file class (0: regular files and
  block devices, which go through the page cache; 1: pipes, sockets,
  terminals...), block requests issued (block:block_rq_issue) by direction
  (0 read, 1 write, 2 other) and by device (dev_t), optionally all of it per
  process (@..._pid maps, @comm_pid["PID,COMM"]).
- libbpf-tools `vfsstat DURATION 1`: a header `TIME READ/s WRITE/s FSYNC/s
  OPEN/s CREATE/s` (newer builds add more columns) and one line of rates for
  the interval: VFS calls, no bytes.
- procfs (read by the tool, parsed by perf_mcp.procfs): /proc/PID/io and
  /proc/diskstats before and after the window; `io_delta` and `disk_delta`
  here turn two readings into the same counts.

Damage gives partial data and a warning; output with nothing recognisable
raises IoLayersParseError. Nothing here raises anything else on any input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .bpftrace import json_int, parse_json_lines

READ, WRITE, OTHER = 0, 1, 2
FILE_CLASS, OTHER_CLASS = 0, 1


class IoLayersParseError(Exception):
    """Nothing in the output could be read as I/O layer counts."""


@dataclass
class Counts:
    bytes: int = 0
    ops: int = 0

    def add(self, nbytes: int, ops: int) -> None:
        self.bytes += nbytes
        self.ops += ops


@dataclass
class ProcessIo:
    pid: int
    comm: str = ""
    # (direction, class) -> system call counts; direction -> block counts
    sys: dict[tuple[int, int], Counts] = field(default_factory=dict)
    blk: dict[int, Counts] = field(default_factory=dict)


@dataclass
class IoLayersOutput:
    sys: dict[tuple[int, int], Counts]
    blk: dict[int, Counts]
    blk_dev: dict[tuple[int, int], int]  # (dev_t, direction) -> bytes
    per_pid: dict[int, ProcessIo] | None
    warnings: list[str] = field(default_factory=list)
    bad_lines: int = 0
    window_ns: tuple[int, int] | None = None




def _keys(key: Any, n: int) -> tuple[int, ...] | None:
    """"12,0,1" -> (12, 0, 1) when it holds n integers."""
    if not isinstance(key, str):
        return None
    parts = [json_int(p) for p in key.split(",")]
    if len(parts) != n or any(p is None for p in parts):
        return None
    return tuple(parts)  # type: ignore[arg-type]


def _map(out: Any, name: str) -> dict[str, Any]:
    v = out.maps.get(name)
    return v if isinstance(v, dict) else {}


def parse_iolayers_bpftrace(raw: bytes) -> IoLayersOutput:
    out = parse_json_lines(raw)
    warnings: list[str] = []
    known = ("@sys_bytes", "@sys_ops", "@blk_bytes", "@blk_ops", "@start_ns", "@end_ns")
    if not any(k in out.maps for k in known):
        if not raw.strip():
            raise IoLayersParseError("bpftrace printed nothing")
        if out.attached_probes is not None:
            raise IoLayersParseError("bpftrace's output ends before the script printed its maps")
        raise IoLayersParseError(f"no I/O layer map in bpftrace's output ({out.bad_lines} lines unreadable)")
    if out.bad_lines:
        warnings.append(f"{out.bad_lines} lines of bpftrace output could not be read (cut short or damaged) "
                        "and were skipped")
    missing = [k for k in ("@start_ns", "@end_ns") if k not in out.maps]
    if missing:
        warnings.append(f"{', '.join(missing)} missing from the output: it was cut short, counts may be partial")
    bad = 0

    def counts2(bname: str, oname: str, n: int) -> dict[tuple[int, ...], Counts]:
        nonlocal bad
        acc: dict[tuple[int, ...], Counts] = {}
        for name, is_bytes in ((bname, True), (oname, False)):
            for key, v in _map(out, name).items():
                k, val = _keys(key, n), json_int(v)
                if k is None or val is None or val < 0:
                    bad += 1
                    continue
                c = acc.setdefault(k, Counts())
                if is_bytes:
                    c.bytes += val
                else:
                    c.ops += val
        return acc

    sys = {(k[0], k[1]): c for k, c in counts2("@sys_bytes", "@sys_ops", 2).items()}
    blk = {k[0]: c for k, c in counts2("@blk_bytes", "@blk_ops", 1).items()}
    blk_dev: dict[tuple[int, int], int] = {}
    for key, v in _map(out, "@blk_dev_bytes").items():
        k, val = _keys(key, 2), json_int(v)
        if k is None or val is None:
            bad += 1
            continue
        blk_dev[(k[0], k[1])] = val

    per_pid: dict[int, ProcessIo] | None = None
    if any(k in out.maps for k in ("@sys_bytes_pid", "@sys_ops_pid", "@blk_bytes_pid", "@blk_ops_pid")):
        per_pid = {}
        for k, c in counts2("@sys_bytes_pid", "@sys_ops_pid", 3).items():
            per_pid.setdefault(k[0], ProcessIo(k[0])).sys[(k[1], k[2])] = c
        for k, c in counts2("@blk_bytes_pid", "@blk_ops_pid", 2).items():
            per_pid.setdefault(k[0], ProcessIo(k[0])).blk[k[1]] = c
        for pid, comm in _comms(_map(out, "@comm_pid")).items():
            if pid in per_pid:
                per_pid[pid].comm = comm
    if bad:
        warnings.append(f"{bad} map entries had unreadable keys or values and were skipped")
    start, end = json_int(out.maps.get("@start_ns")), json_int(out.maps.get("@end_ns"))
    window = (start, end) if start is not None and end is not None and 0 < start <= end else None
    return IoLayersOutput(sys=sys, blk=blk, blk_dev=blk_dev, per_pid=per_pid, warnings=warnings,
                          bad_lines=out.bad_lines + bad, window_ns=window)


def _comms(v: dict[str, Any]) -> dict[int, str]:
    """{"PID,COMM": events} -> the comm seen most per pid (a comm may hold commas)."""
    best: dict[int, tuple[int, str]] = {}
    for key, n in v.items():
        if not isinstance(key, str) or "," not in key:
            continue
        pid_s, comm = key.split(",", 1)
        pid, seen = json_int(pid_s), json_int(n)
        if pid is None or seen is None:
            continue
        if pid not in best or seen > best[pid][0]:
            best[pid] = (seen, comm)
    return {pid: comm for pid, (_, comm) in best.items()}


def dev_name(dev_t: int) -> tuple[int, int]:
    """The kernel's dev_t (major << 20 | minor) as (major, minor)."""
    return dev_t >> 20, dev_t & 0xFFFFF


# ---------------------------------------------------------------- libbpf-tools vfsstat


@dataclass
class VfsstatRates:
    rates: dict[str, float]  # column (lower case, without "/s") -> calls per second
    intervals: int
    warnings: list[str] = field(default_factory=list)


def parse_vfsstat_text(raw: bytes) -> VfsstatRates:
    """vfsstat's header and its interval lines; the rates are averaged over the intervals."""
    text = raw.decode("utf-8", "replace")
    warnings: list[str] = []
    columns: list[str] | None = None
    sums: dict[str, float] = {}
    intervals = bad = 0
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] == "TIME" and len(tokens) > 1:
            columns = [t.lower().removesuffix("/s") for t in tokens[1:]]
            continue
        if columns is None or len(tokens) != len(columns) + 1 or ":" not in tokens[0]:
            bad += 1
            continue
        try:
            values = [float(t) for t in tokens[1:]]
        except ValueError:
            bad += 1
            continue
        intervals += 1
        for c, v in zip(columns, values):
            sums[c] = sums.get(c, 0.0) + v
    if columns is None:
        if not text.strip():
            raise IoLayersParseError("vfsstat printed nothing")
        raise IoLayersParseError(f"vfsstat output has no header: {text.strip()[:120]!r}")
    if intervals == 0:
        raise IoLayersParseError("vfsstat printed its header but no interval")
    if bad:
        warnings.append(f"{bad} damaged vfsstat lines were skipped")
    return VfsstatRates(rates={c: s / intervals for c, s in sums.items()}, intervals=intervals, warnings=warnings)
