"""Block I/O latency outputs -> typed histograms; pure functions from bytes.

Two sources, one shape (BioOutput):

- libbpf-tools `biolatency [-D] [-Q] [-m] DURATION 1`: a "Tracing block
  device I/O..." banner, then one `usecs : count distribution` histogram
  (`msecs` with -m), or with -D one per disk, each under a `disk = NAME`
  label. Buckets are log2 of integer us (or ms). No sum is printed, so a
  mean is estimated from bucket midpoints. No histogram means no I/O.
- the broker's bpftrace script biolatency.bt (`-f json`): @lat (log2 hist
  of integer us, or ms) or @lat_lin (the lhist of the linear bucket index,
  value / @lin_width, @lin_buckets being the overflow) with @sum_ns and
  @count (so the mean is exact), per device @lat_dev/@lat_lin_dev/@sum_ns_dev/@count_dev
  keyed by the kernel's dev_t (major << 20 | minor), the queue time of the
  requests inserted into the OS queue (@queue_ns, @queued) and the trace
  window (@start_ns, @end_ns).

Damage (output cut at the broker's cap, garbled lines) gives partial data and
a warning; output with nothing recognisable raises BioParseError (the tool
turns it into PARSE_ERROR). Nothing here raises anything else on any input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .bpftrace import json_int, parse_json_lines, read_hist
from .histogram import Hist, parse_libbpf_text

LIBBPF_BANNER = "Tracing block device I/O"
_DISK_LABEL = re.compile(r"^disk\s*=\s*(\S*)\s*$")
MINORBITS = 20  # the kernel's dev_t: major << 20 | minor


class BioParseError(Exception):
    """Nothing in the output could be read as block I/O latency."""


@dataclass
class DeviceHist:
    name: str | None  # libbpf: the name biolatency printed; bpftrace: None (the tool names it)
    dev: tuple[int, int] | None  # bpftrace: (major, minor); libbpf: None
    hist: Hist

    @property
    def key(self) -> str:
        return self.name if self.name is not None else f"{self.dev[0]}:{self.dev[1]}" if self.dev else "?"


@dataclass
class BioOutput:
    """All completed requests in `total` (unit us or ms); per device when asked."""

    total: Hist
    per_device: list[DeviceHist] | None = None
    warnings: list[str] = field(default_factory=list)
    bad_lines: int = 0
    counted: int | None = None  # bpftrace: the script's own count of requests (@count)
    # bpftrace, queued: per device (major, minor), the time the inserted requests spent in the
    # OS queue (ns) and how many were inserted
    queue: dict[tuple[int, int], tuple[int, int]] | None = None
    window_ns: tuple[int, int] | None = None  # bpftrace: CLOCK_MONOTONIC (start, end) of the trace


def _empty(unit: str, kind: str = "log2") -> Hist:
    return Hist(unit, kind, [], None)


def dev_split(dev: int) -> tuple[int, int]:
    return dev >> MINORBITS, dev & ((1 << MINORBITS) - 1)


# ---------------------------------------------------------------- libbpf-tools biolatency


def parse_biolatency_text(raw: bytes, *, unit: str = "us", per_device: bool = False) -> BioOutput:
    """biolatency's text output; per_device when it ran with -D (labels `disk = NAME`)."""
    text = raw.decode("utf-8", "replace")
    hists, bad = parse_libbpf_text(text)
    warnings: list[str] = []
    usable = [th for th in hists if th.hist.unit == unit]
    if len(usable) != len(hists):
        units = sorted({th.hist.unit for th in hists if th.hist.unit != unit})
        warnings.append(f"{len(hists) - len(usable)} histograms in unexpected units ({', '.join(units)}) were left out")
    if LIBBPF_BANNER not in text and not usable:
        if not text.strip():
            raise BioParseError("biolatency printed nothing (not even its banner)")
        raise BioParseError(f"biolatency output has neither its banner nor a histogram: {text.strip()[:120]!r}")
    if LIBBPF_BANNER not in text:
        warnings.append("biolatency's banner is missing: the output may be damaged")
    if text and not text.endswith("\n"):
        warnings.append("biolatency's output ends mid-line (cut short): the last histogram may be incomplete")
    if bad:
        warnings.append(f"{bad} damaged histogram rows were skipped")

    devices: list[DeviceHist] | None = None
    if per_device:
        by_name: dict[str, DeviceHist] = {}
        unlabelled = 0
        for th in usable:
            name = _label(th.label_lines)
            if name is None:
                unlabelled += 1
                continue
            if name in by_name:  # the same disk twice would be a damaged output; keep the counts
                by_name[name].hist = by_name[name].hist.merged(th.hist)
            else:
                by_name[name] = DeviceHist(name, None, th.hist)
        if unlabelled:
            warnings.append(f"{unlabelled} histograms had no 'disk = NAME' label and count only in the total")
        devices = list(by_name.values())
    elif len(usable) > 1:
        warnings.append(f"biolatency printed {len(usable)} histograms where one was expected; they are summed")
    total = _empty(unit)
    for th in usable:
        total = total.merged(th.hist)
    total.total = None  # biolatency prints no sum
    return BioOutput(total=total, per_device=devices, warnings=warnings, bad_lines=bad)


def _label(lines: list[str]) -> str | None:
    for line in reversed(lines):
        m = _DISK_LABEL.match(line)
        if m and m.group(1):
            return m.group(1)
    return None


# ---------------------------------------------------------------- bpftrace biolatency.bt


def _keyed(v: Any) -> dict[int, Any]:
    if not isinstance(v, dict):
        return {}
    out = {}
    for k, x in v.items():
        key = json_int(k)
        if key is not None and key >= 0:
            out[key] = x
    return out


def _linear(h: Hist, width: int, n: int) -> Hist:
    """The script's lhist of bucket indexes (i: [i x width, (i+1) x width); n: the overflow) in values."""
    out = []
    for lo, _, c in h.buckets:
        i = int(lo)
        if i < 0:
            continue  # lhist's underflow bucket: an index is never negative
        out.append((float(i * width), float((i + 1) * width), c) if i < n else (float(n * width), float("inf"), c))
    return Hist(h.unit, "linear", out, h.total)


def _hist(rows: Any, sum_ns: Any, count: Any, unit: str, kind: str, what: str, warnings: list[str],
          linear: tuple[int, int] | None = None) -> Hist | None:
    """read_hist, and a linear histogram of bucket indexes turned into values."""
    if kind == "linear" and linear is None:
        warnings.append(f"{what}: the linear bucket width is missing from the output; the histogram was left out")
        return None
    h = read_hist(rows, sum_ns, count, unit=unit, kind=kind, what=what, noun="requests", warnings=warnings)
    if h is not None and linear is not None and kind == "linear":
        h = _linear(h, *linear)
    return h


def parse_biolatency_bpftrace(raw: bytes, *, unit: str = "us") -> BioOutput:
    """The JSON lines of biolatency.bt; unit "ms" when it ran with milliseconds."""
    out = parse_json_lines(raw.decode("utf-8", "replace").encode("utf-8"))
    warnings: list[str] = []
    if not any(k in out.maps or k in out.hists for k in ("@lat", "@lat_lin", "@count")):
        if not raw.strip():
            raise BioParseError("bpftrace printed nothing")
        if out.attached_probes is not None:
            raise BioParseError("bpftrace's output ends before the script printed its maps")
        raise BioParseError(f"no block latency map in bpftrace's output ({out.bad_lines} lines unreadable)")
    if out.bad_lines:
        warnings.append(f"{out.bad_lines} lines of bpftrace output could not be read (cut short or damaged) "
                        "and were skipped")
    linear = "@lat_lin" in out.hists or "@lat_lin_dev" in out.hists
    kind = "linear" if linear else "log2"
    name, dev_name = ("@lat_lin", "@lat_lin_dev") if linear else ("@lat", "@lat_dev")
    width, nlin = json_int(out.maps.get("@lin_width")), json_int(out.maps.get("@lin_buckets"))
    lin = (width, nlin) if width is not None and nlin is not None and width > 0 and 0 < nlin <= 1000 else None
    count = json_int(out.maps.get("@count"))
    total = _hist(out.hists.get(name), out.maps.get("@sum_ns"), count, unit, kind, "all requests", warnings,
                  lin) if name in out.hists else None
    if total is None:
        if count:  # requests were counted but their histogram is missing: the output was cut
            warnings.append(f"the script counted {count} requests but their histogram is missing from the output")
        total = _empty(unit, kind)
        if not count:
            total.total = 0.0

    devices: list[DeviceHist] | None = None
    if any(k in out.maps or k in out.hists for k in (dev_name, "@count_dev", "@sum_ns_dev")):
        devices = []
        sums, counts = _keyed(out.maps.get("@sum_ns_dev")), _keyed(out.maps.get("@count_dev"))
        for dev, rows in sorted(_keyed(out.hists.get(dev_name)).items()):
            major, minor = dev_split(dev)
            h = _hist(rows, sums.get(dev), counts.get(dev), unit, kind, f"device {major}:{minor}", warnings, lin)
            if h is not None:
                devices.append(DeviceHist(None, (major, minor), h))
        seen = {d.dev for d in devices}
        missing = [dev_split(d) for d, n in counts.items() if (json_int(n) or 0) > 0 and dev_split(d) not in seen]
        if missing:
            warnings.append("the histograms of devices " + ", ".join(f"{a}:{b}" for a, b in sorted(missing))
                            + " are missing from the output")
    start, end = json_int(out.maps.get("@start_ns")), json_int(out.maps.get("@end_ns"))
    window = (start, end) if start is not None and end is not None and 0 < start <= end else None
    queue: dict[tuple[int, int], tuple[int, int]] | None = None
    if "@queue_ns" in out.maps or "@queued" in out.maps:
        queue = {}
        ns_by, n_by = _keyed(out.maps.get("@queue_ns")), _keyed(out.maps.get("@queued"))
        for dev in sorted(set(ns_by) | set(n_by)):
            ns, n = json_int(ns_by.get(dev)), json_int(n_by.get(dev))
            if ns is None or n is None or ns < 0 or n < 0:
                warnings.append(f"device {':'.join(map(str, dev_split(dev)))}: the queue time is damaged and was left out")
                continue
            queue[dev_split(dev)] = (ns, n)
    return BioOutput(total=total, per_device=devices, warnings=warnings, bad_lines=out.bad_lines, counted=count,
                     queue=queue, window_ns=window)
