"""Run-queue latency outputs -> typed histograms; pure functions from bytes.

Two sources, one shape (RunqOutput):

- libbpf-tools `runqlat [-p PID] [-P] DURATION 1`: a "Tracing run queue
  latency..." banner, then one `usecs : count distribution` histogram, or
  with -P one per process, each under a `pid = TGID COMM` label. Buckets are
  log2 of integer microseconds ("2 -> 3" holds waits of 2.000-3.999 us). No
  sum is printed, so a mean is estimated from bucket midpoints. No
  histogram at all means no wait was seen.
- the broker's bpftrace script runqlat.bt (`-f json`): @usecs (log2 hist of
  integer us) with @sum_ns and @count (so the mean is exact), and when asked
  @usecs_cpu/@sum_ns_cpu/@count_cpu keyed by CPU, @usecs_pid/@sum_ns_pid/
  @count_pid keyed by process id, and @comm_pid["TGID,COMM"] (thread names
  seen, with how many waits each).

Damage (output cut at the broker's cap, garbled lines) gives partial data and
a warning; output with nothing recognisable raises RunqParseError (the tool
turns it into PARSE_ERROR). Nothing here raises anything else on any input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .bpftrace import json_int, parse_json_lines, read_hist
from .histogram import Hist, parse_libbpf_text

LIBBPF_BANNER = "Tracing run queue latency"
_PID_LABEL = re.compile(r"^pid\s*=\s*(\d+)\s*(.*)$")


class RunqParseError(Exception):
    """Nothing in the output could be read as run-queue latency."""


@dataclass
class ProcessHist:
    pid: int
    comm: str  # the thread name seen most (libbpf: the one on its label); "" when unknown
    hist: Hist


@dataclass
class RunqOutput:
    """All waits in `total` (unit us); per-CPU and per-process histograms when asked."""

    total: Hist
    per_cpu: dict[int, Hist] | None = None
    per_pid: dict[int, ProcessHist] | None = None
    warnings: list[str] = field(default_factory=list)
    bad_lines: int = 0
    counted: int | None = None  # bpftrace: the script's own count of waits (@count)
    window_ns: tuple[int, int] | None = None  # bpftrace: CLOCK_MONOTONIC (start, end) of the trace


def _empty() -> Hist:
    return Hist("us", "log2", [], None)


# ---------------------------------------------------------------- libbpf-tools runqlat


def parse_runqlat_text(raw: bytes, *, per_pid: bool = False) -> RunqOutput:
    """runqlat's text output; per_pid when it ran with -P (labels `pid = N comm`)."""
    text = raw.decode("utf-8", "replace")
    hists, bad = parse_libbpf_text(text)
    warnings: list[str] = []
    usable = [th for th in hists if th.hist.unit == "us"]
    if len(usable) != len(hists):
        units = sorted({th.hist.unit for th in hists if th.hist.unit != "us"})
        warnings.append(f"{len(hists) - len(usable)} histograms in unexpected units ({', '.join(units)}) were left out")
    if LIBBPF_BANNER not in text and not usable:
        if not text.strip():
            raise RunqParseError("runqlat printed nothing (not even its banner)")
        raise RunqParseError(f"runqlat output has neither its banner nor a histogram: {text.strip()[:120]!r}")
    if LIBBPF_BANNER not in text:
        warnings.append("runqlat's banner is missing: the output may be damaged")
    if text and not text.endswith("\n"):
        warnings.append("runqlat's output ends mid-line (cut short): the last histogram may be incomplete")
    if bad:
        warnings.append(f"{bad} damaged histogram rows were skipped")

    by_pid: dict[int, ProcessHist] | None = None
    if per_pid:
        by_pid = {}
        unlabelled = 0
        for th in usable:
            label = _label(th.label_lines)
            if label is None:
                unlabelled += 1
                continue
            pid, comm = label
            if pid in by_pid:  # the same tgid twice would be a damaged output; keep the counts
                by_pid[pid].hist = by_pid[pid].hist.merged(th.hist)
            else:
                by_pid[pid] = ProcessHist(pid, comm, th.hist)
        if unlabelled:
            warnings.append(f"{unlabelled} histograms had no 'pid = N' label and count only in the total")
    elif len(usable) > 1:
        warnings.append(f"runqlat printed {len(usable)} histograms where one was expected; they are summed")
    total = _empty()
    for th in usable:
        total = total.merged(th.hist)
    total.total = None  # runqlat prints no sum
    return RunqOutput(total=total, per_pid=by_pid, warnings=warnings, bad_lines=bad)


def _label(lines: list[str]) -> tuple[int, str] | None:
    for line in reversed(lines):
        m = _PID_LABEL.match(line)
        if m and m.group(1).isdecimal():
            return int(m.group(1)), m.group(2).strip()
    return None


# ---------------------------------------------------------------- bpftrace runqlat.bt


def _keyed(v: Any) -> dict[int, Any]:
    """{"3": x, ...} -> {3: x}; keys that are not integers are dropped."""
    if not isinstance(v, dict):
        return {}
    out = {}
    for k, x in v.items():
        key = json_int(k)
        if key is not None:
            out[key] = x
    return out


def _hist(rows: Any, sum_ns: Any, count: Any, what: str, warnings: list[str]) -> Hist | None:
    return read_hist(rows, sum_ns, count, unit="us", kind="log2", what=what, noun="waits", warnings=warnings)


def parse_runqlat_bpftrace(raw: bytes) -> RunqOutput:
    """The JSON lines of runqlat.bt."""
    # bytes that are not UTF-8 (a damaged output) become U+FFFD: the JSON decoder
    # raises on them instead of reporting a bad line
    out = parse_json_lines(raw.decode("utf-8", "replace").encode("utf-8"))
    warnings: list[str] = []
    known = ("@usecs", "@count")
    seen = [k for k in known if k in out.maps or k in out.hists]
    if not seen:  # the script always prints @count (0 when nothing waited)
        if not raw.strip():
            raise RunqParseError("bpftrace printed nothing")
        if out.attached_probes is not None:
            raise RunqParseError("bpftrace's output ends before the script printed its maps")
        raise RunqParseError(f"no run-queue map in bpftrace's output ({out.bad_lines} lines unreadable)")
    if out.bad_lines:
        warnings.append(f"{out.bad_lines} lines of bpftrace output could not be read (cut short or damaged) "
                        "and were skipped")
    count = json_int(out.maps.get("@count"))
    total = _hist(out.hists.get("@usecs"), out.maps.get("@sum_ns"), count, "all waits", warnings) \
        if "@usecs" in out.hists else None
    if total is None:
        if count:  # waits were counted but their histogram is missing: the output was cut
            warnings.append(f"the script counted {count} waits but their histogram is missing from the output")
        total = _empty()
        if count == 0 or count is None:
            total.total = 0.0

    per_cpu: dict[int, Hist] | None = None
    if any(k in out.maps or k in out.hists for k in ("@usecs_cpu", "@count_cpu", "@sum_ns_cpu")):
        per_cpu = {}
        sums, counts = _keyed(out.maps.get("@sum_ns_cpu")), _keyed(out.maps.get("@count_cpu"))
        for cpu, rows in sorted(_keyed(out.hists.get("@usecs_cpu")).items()):
            h = _hist(rows, sums.get(cpu), counts.get(cpu), f"CPU {cpu}", warnings)
            if h is not None:
                per_cpu[cpu] = h
        missing = [c for c, n in counts.items() if (json_int(n) or 0) > 0 and c not in per_cpu]
        if missing:
            warnings.append(f"the histograms of CPUs {sorted(missing)} are missing from the output")

    per_pid: dict[int, ProcessHist] | None = None
    if any(k in out.maps or k in out.hists for k in ("@usecs_pid", "@count_pid", "@sum_ns_pid", "@comm_pid")):
        per_pid = {}
        sums, counts = _keyed(out.maps.get("@sum_ns_pid")), _keyed(out.maps.get("@count_pid"))
        comms = _comms(out.maps.get("@comm_pid"))
        for pid, rows in sorted(_keyed(out.hists.get("@usecs_pid")).items()):
            h = _hist(rows, sums.get(pid), counts.get(pid), f"pid {pid}", warnings)
            if h is not None:
                per_pid[pid] = ProcessHist(pid, comms.get(pid, ""), h)
        missing = [p for p, n in counts.items() if (json_int(n) or 0) > 0 and p not in per_pid]
        if missing:
            warnings.append(f"the histograms of {len(missing)} processes are missing from the output")
    start, end = json_int(out.maps.get("@start_ns")), json_int(out.maps.get("@end_ns"))
    window = (start, end) if start is not None and end is not None and 0 < start <= end else None
    return RunqOutput(total=total, per_cpu=per_cpu, per_pid=per_pid, warnings=warnings, bad_lines=out.bad_lines,
                      counted=count, window_ns=window)


def _comms(v: Any) -> dict[int, str]:
    """@comm_pid {"TGID,COMM": waits} -> the most seen comm per tgid (a comm may hold commas)."""
    best: dict[int, tuple[int, str]] = {}
    if not isinstance(v, dict):
        return {}
    for key, n in v.items():
        if not isinstance(key, str) or "," not in key:
            continue
        pid_s, comm = key.split(",", 1)
        pid, waits = json_int(pid_s), json_int(n)
        if pid is None or waits is None:
            continue
        if pid not in best or waits > best[pid][0]:
            best[pid] = (waits, comm)
    return {pid: comm for pid, (_, comm) in best.items()}
