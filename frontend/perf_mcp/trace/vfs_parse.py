"""File system call latency outputs -> typed data; pure functions from bytes.

Two sources, one shape (VfsOutput):

- the broker's bpftrace script vfslat.bt (`-f json`): per (operation, file
  class) a log2 histogram of integer microseconds with its exact sum and
  count, the bytes moved; one `S` printf line per call at least min_latency
  slow (pid, tid, fd, latency, return value, end time, comm), an `N` line with
  the file's dentry name for it, and an `O` line per successful openat in the
  window (pid, fd, time, path as passed). Every call is in a histogram;
  only the slow ones are listed.
- libbpf-tools `fsslower -t FS -c` (CSV): one line per slow operation of one
  file system type (`ENDTIME_ns,TASK,PID,TYPE,BYTES,OFFSET_b,LATENCY_us,FILE`,
  TYPE R/W/O/F, FILE the dentry name). It sees no fast call, so its
  histograms hold only the slow calls (`all_calls` False).

Damage (output cut at the broker's cap, garbled lines) gives partial data and
a warning; output with nothing recognisable raises VfsParseError. Nothing
here raises anything else on any input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .bpftrace import hist_rows, json_int, parse_json_lines
from .histogram import Hist, from_bpftrace

OPS = ("read", "write", "fsync", "open")
# vfslat.bt's file classes, by number
CLASSES = ("file", "fifo", "pipe", "socket", "chardev", "blockdev", "dir", "other")
# Classes whose files have a path (a slow call on them is I/O on a named file);
# the others (anonymous pipes, sockets, terminals and other character devices,
# eventfd/epoll...) are waits for a peer, listed only with include_all_files.
PATH_CLASSES = frozenset({"file", "fifo", "blockdev", "dir"})
_FSSLOWER_OPS = {"R": "read", "W": "write", "O": "open", "F": "fsync"}
_FSSLOWER_LINE = re.compile(r"^(\d+),(.*?),(\d+),([RWOF]),(-?\d+|LL_MAX),(-?\d+),(\d+),(.*)$")
FSSLOWER_HEADER = "ENDTIME_ns,TASK,PID,TYPE,BYTES,OFFSET_b,LATENCY_us,FILE"


class VfsParseError(Exception):
    """Nothing in the output could be read as file system call latency."""


@dataclass
class SlowCall:
    op: str
    file_class: str  # one of CLASSES; "file" for fsslower (it traces one file system's files)
    pid: int
    tid: int | None
    fd: int | None  # None for fsslower
    latency_ns: int
    ret: int | None  # bytes moved (read/write), the new fd (open), 0 or -errno
    end_ns: int | None  # CLOCK_MONOTONIC when the call returned
    comm: str
    name: str | None = None  # the file's last path component as the kernel holds it


@dataclass
class OpenRecord:
    pid: int
    fd: int
    end_ns: int
    path: str  # as passed to openat (may be relative)


@dataclass
class VfsOutput:
    hists: dict[tuple[str, str], Hist]  # (op, class) -> us histogram
    bytes: dict[tuple[str, str], int]
    slow: list[SlowCall]
    opens: list[OpenRecord]
    all_calls: bool  # True: the histograms hold every call; False: only the slow ones
    warnings: list[str] = field(default_factory=list)
    bad_lines: int = 0
    window_ns: tuple[int, int] | None = None




def _op_class(key: Any) -> tuple[str, str] | None:
    """"0,3" -> ("read", "socket"); None when the key is not one."""
    if not isinstance(key, str):
        return None
    a, _, b = key.partition(",")
    op, cl = json_int(a), json_int(b)
    if op is None or cl is None or not 0 <= op < len(OPS) or not 0 <= cl < len(CLASSES):
        return None
    return OPS[op], CLASSES[cl]




# ---------------------------------------------------------------- bpftrace vfslat.bt


def parse_vfslat_bpftrace(raw: bytes) -> VfsOutput:
    """The script's output as VfsOutput. bpftrace prints no map that is empty: a window
    without a single call has only @start_ns and @end_ns (the script ran to its end),
    which is an answer (no calls), not damage."""
    out = parse_json_lines(raw)
    warnings: list[str] = []
    ran_to_end = "@start_ns" in out.maps and "@end_ns" in out.maps
    if "@count" not in out.maps and "@us" not in out.hists and not out.printed and not ran_to_end:
        if not raw.strip():
            raise VfsParseError("bpftrace printed nothing")
        if out.attached_probes is not None:
            raise VfsParseError("bpftrace's output ends before the script printed its maps")
        raise VfsParseError(f"no file system latency data in bpftrace's output ({out.bad_lines} lines unreadable)")
    if out.bad_lines:
        warnings.append(f"{out.bad_lines} lines of bpftrace output could not be read (cut short or damaged) "
                        "and were skipped")
    if "@count" not in out.maps and not ran_to_end:
        warnings.append("the script's maps are missing from the output (cut short?): no histograms, only the "
                        "slow calls printed during the trace")
    counts = out.maps.get("@count") if isinstance(out.maps.get("@count"), dict) else {}
    sums = out.maps.get("@sum_ns") if isinstance(out.maps.get("@sum_ns"), dict) else {}
    raw_hists = out.hists.get("@us") if isinstance(out.hists.get("@us"), dict) else {}
    hists: dict[tuple[str, str], Hist] = {}
    damaged = 0
    for key, rows in raw_hists.items():
        oc = _op_class(key)
        buckets = hist_rows(rows)
        if oc is None or buckets is None:
            damaged += 1
            continue
        try:
            h = from_bpftrace(buckets, "us", "log2")
        except (TypeError, ValueError, OverflowError):
            damaged += 1
            continue
        n, s = json_int(counts.get(key)), json_int(sums.get(key))
        if n is not None and s is not None and n == h.count and s >= 0:
            h.total = s / 1000.0
        elif n is not None and n != h.count:
            warnings.append(f"{oc[0]} on {oc[1]}: the histogram holds {h.count} calls but the script counted {n}; "
                            "its mean is estimated from the buckets")
        hists[oc] = h
    if damaged:
        warnings.append(f"{damaged} histograms had unreadable keys or buckets and were left out")
    missing = [k for k, n in counts.items() if (json_int(n) or 0) > 0 and _op_class(k) not in hists]
    if missing and raw_hists:
        warnings.append(f"{len(missing)} counted (operation, file class) histograms are missing from the output")
    nbytes: dict[tuple[str, str], int] = {}
    braw = out.maps.get("@bytes")
    for key, v in (braw.items() if isinstance(braw, dict) else []):
        oc, n = _op_class(key), json_int(v)
        if oc is not None and n is not None:
            nbytes[oc] = n

    slow: list[SlowCall] = []
    opens: list[OpenRecord] = []
    names: dict[tuple[int, int], str] = {}
    bad_printed = 0
    for line in out.printed:
        rec = _printed(line)
        if rec is None:
            bad_printed += 1
        elif isinstance(rec, SlowCall):
            slow.append(rec)
        elif isinstance(rec, OpenRecord):
            opens.append(rec)
        else:
            names[(rec[0], rec[1])] = rec[2]
    for call in slow:
        if call.tid is not None and call.end_ns is not None:
            call.name = names.get((call.tid, call.end_ns)) or None
    if bad_printed:
        warnings.append(f"{bad_printed} printed lines of the script were damaged and skipped")
    start, end = json_int(out.maps.get("@start_ns")), json_int(out.maps.get("@end_ns"))
    window = (start, end) if start is not None and end is not None and 0 < start <= end else None
    return VfsOutput(hists=hists, bytes=nbytes, slow=slow, opens=opens, all_calls=True, warnings=warnings,
                     bad_lines=out.bad_lines + bad_printed, window_ns=window)


def _printed(line: Any) -> SlowCall | OpenRecord | tuple[int, int, str] | None:
    if not isinstance(line, str) or len(line) < 2 or line[1] != " ":
        return None
    text = line[:-1] if line.endswith("\n") else line
    kind = text[0]
    if kind == "S":
        parts = text.split(" ", 9)
        if len(parts) != 10:
            return None
        nums = [json_int(x) for x in parts[1:9]]
        if any(n is None for n in nums):
            return None
        op, cl, pid, tid, fd, lat, ret, end = nums  # type: ignore[misc]
        if not (0 <= op < len(OPS) and 0 <= cl < len(CLASSES)) or lat < 0:  # type: ignore[operator]
            return None
        return SlowCall(op=OPS[op], file_class=CLASSES[cl], pid=pid, tid=tid,  # type: ignore[arg-type]
                        fd=fd if fd is not None and fd >= 0 else None, latency_ns=lat,  # type: ignore[arg-type]
                        ret=ret, end_ns=end, comm=parts[9])
    if kind == "O":
        parts = text.split(" ", 4)
        if len(parts) != 5:
            return None
        pid, fd, end = json_int(parts[1]), json_int(parts[2]), json_int(parts[3])
        if pid is None or fd is None or end is None or fd < 0:
            return None
        return OpenRecord(pid=pid, fd=fd, end_ns=end, path=parts[4])
    if kind == "N":
        parts = text.split(" ", 3)
        if len(parts) != 4:
            return None
        tid, end = json_int(parts[1]), json_int(parts[2])
        if tid is None or end is None:
            return None
        return tid, end, parts[3]
    return None


# ---------------------------------------------------------------- libbpf-tools fsslower -c


def parse_fsslower_csv(raw: bytes) -> VfsOutput:
    text = raw.decode("utf-8", "replace")
    warnings: list[str] = []
    slow: list[SlowCall] = []
    bad = 0
    header = False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if line.startswith("ENDTIME"):
            header = True
            continue
        m = _FSSLOWER_LINE.match(line)
        if m is None:
            if i == len(lines) - 1 and not text.endswith("\n"):
                warnings.append("fsslower's output ends mid-line (cut short): its last line was skipped")
            else:
                bad += 1
            continue
        end, task, pid, op, size, _off, lat_us, name = m.groups()
        slow.append(SlowCall(op=_FSSLOWER_OPS[op], file_class="file", pid=int(pid), tid=None, fd=None,
                             latency_ns=int(lat_us) * 1000, ret=None if size == "LL_MAX" else int(size),
                             end_ns=int(end), comm=task, name=name or None))
    if not header and not slow:
        if not text.strip():
            raise VfsParseError("fsslower printed nothing (not even its CSV header)")
        raise VfsParseError(f"fsslower output has neither its CSV header nor an event: {text.strip()[:120]!r}")
    if not header:
        warnings.append("fsslower's CSV header is missing: the output may be damaged")
    if bad:
        warnings.append(f"{bad} damaged fsslower lines were skipped")
    hists: dict[tuple[str, str], Hist] = {}
    for call in slow:
        us = call.latency_ns // 1000
        lo = 0 if us == 0 else 1 << (us.bit_length() - 1)
        h = hists.setdefault((call.op, "file"), Hist("us", "log2", [], 0.0))
        _add(h, float(lo), float(1 if lo == 0 else 2 * lo), us)
    return VfsOutput(hists=hists, bytes={}, slow=slow, opens=[], all_calls=False, warnings=warnings, bad_lines=bad)


def _add(h: Hist, lo: float, hi: float, us: int) -> None:
    for i, (a, b, c) in enumerate(h.buckets):
        if a == lo:
            h.buckets[i] = (a, b, c + 1)
            break
    else:
        h.buckets.append((lo, hi, 1))
        h.buckets.sort()
    h.total = (h.total or 0.0) + us
