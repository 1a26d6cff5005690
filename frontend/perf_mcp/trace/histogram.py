"""Latency histograms, one shape whichever program produced them.

Sources: libbpf-tools' text histograms (`usecs : count distribution`, bucket
bounds "low -> high" inclusive) and bpftrace's JSON hist/lhist (`min`/`max`
inclusive; an lhist's overflow bucket has no max, its underflow no min).

Public shape: the unit is in every field name (`low_us`, `p99_ms`), because a
bare "p99: 12" is the classic unit slip. Percentiles are estimated inside the
bucket where the cumulative count crosses them, by linear interpolation, so
they are exact to within one bucket; a mean is exact when the program also
reported the sum of the values, else estimated from bucket midpoints and
flagged `mean_exact: false`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

Unit = Literal["ns", "us", "ms", "s"]
Kind = Literal["log2", "linear"]
UNIT_SCALE: dict[str, float] = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass
class Hist:
    """Internal form: buckets [low, high) in `unit`; high is math.inf for an open bucket."""

    unit: str
    kind: str
    buckets: list[tuple[float, float, int]] = field(default_factory=list)
    total: float | None = None  # sum of the values when the program reported it

    @property
    def count(self) -> int:
        return sum(c for _, _, c in self.buckets)

    def merged(self, other: Hist) -> Hist:
        """Sum of two histograms with the same bucket bounds (per-CPU -> all CPUs)."""
        by_bounds: dict[tuple[float, float], int] = {}
        for lo, hi, c in [*self.buckets, *other.buckets]:
            by_bounds[(lo, hi)] = by_bounds.get((lo, hi), 0) + c
        total = None if self.total is None or other.total is None else self.total + other.total
        return Hist(self.unit, self.kind, [(lo, hi, c) for (lo, hi), c in sorted(by_bounds.items())], total)

    def converted(self, unit: str) -> Hist:
        f = UNIT_SCALE[self.unit] / UNIT_SCALE[unit]
        return Hist(unit, self.kind, [(lo * f, hi * f, c) for lo, hi, c in self.buckets],
                    None if self.total is None else self.total * f)


def percentile(h: Hist, q: float) -> float | None:
    """Value below which a fraction q of the samples lie, interpolated in its bucket."""
    n = h.count
    if n == 0:
        return None
    rank = q * n
    seen = 0
    for lo, hi, c in h.buckets:
        if c and seen + c >= rank:
            if math.isinf(hi):
                return lo  # open-ended bucket: its lower bound is all we know
            return lo + (hi - lo) * max(rank - seen, 0.0) / c
        seen += c
    return h.buckets[-1][0]


def mean(h: Hist) -> tuple[float | None, bool]:
    """(mean, exact): exact from the reported sum, else from bucket midpoints."""
    n = h.count
    if n == 0:
        return None, True
    if h.total is not None:
        return h.total / n, True
    acc = 0.0
    for lo, hi, c in h.buckets:
        acc += c * (lo if math.isinf(hi) else (lo + hi) / 2)
    return acc / n, False


def trimmed(buckets: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Leading and trailing empty buckets left out; empty buckets inside kept (they show gaps)."""
    idx = [i for i, (_, _, c) in enumerate(buckets) if c]
    return buckets[idx[0] : idx[-1] + 1] if idx else []


# ---------------------------------------------------------------- public structs


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _make_structs(unit: str) -> tuple[type[msgspec.Struct], type[msgspec.Struct]]:
    bucket = msgspec.defstruct(
        f"Bucket{unit.capitalize()}",
        [(f"low_{unit}", float), (f"high_{unit}", float | None), ("count", int)],
        kw_only=True,
    )
    hist = msgspec.defstruct(
        f"Histogram{unit.capitalize()}",
        [
            ("kind", Kind),
            ("count", int),
            (f"mean_{unit}", float | None),
            ("mean_exact", bool),
            (f"p50_{unit}", float | None),
            (f"p90_{unit}", float | None),
            (f"p99_{unit}", float | None),
            (f"max_bucket_{unit}", float | None),
            ("buckets", list[bucket]),  # type: ignore[valid-type]
        ],
        kw_only=True,
    )
    return bucket, hist


BucketUs, HistogramUs = _make_structs("us")
BucketMs, HistogramMs = _make_structs("ms")
BucketNs, HistogramNs = _make_structs("ns")
_STRUCTS = {"us": (BucketUs, HistogramUs), "ms": (BucketMs, HistogramMs), "ns": (BucketNs, HistogramNs)}


def to_struct(h: Hist, unit: str | None = None) -> Any:
    """The public histogram (HistogramUs / HistogramMs / HistogramNs) in `unit`."""
    if unit is not None and unit != h.unit:
        h = h.converted(unit)
    bucket_t, hist_t = _STRUCTS[h.unit]
    u = h.unit
    m, exact = mean(h)
    buckets = trimmed(h.buckets)
    top = next((hi for lo, hi, c in reversed(buckets) if c), None)
    return hist_t(
        kind=h.kind,
        count=h.count,
        mean_exact=exact,
        buckets=[bucket_t(**{f"low_{u}": _r(lo), f"high_{u}": None if math.isinf(hi) else _r(hi), "count": c})
                 for lo, hi, c in buckets],
        **{
            f"mean_{u}": _r(m),
            f"p50_{u}": _r(percentile(h, 0.50)),
            f"p90_{u}": _r(percentile(h, 0.90)),
            f"p99_{u}": _r(percentile(h, 0.99)),
            f"max_bucket_{u}": None if top is None or math.isinf(top) else _r(top),
        },
    )


# ---------------------------------------------------------------- parsers

_TEXT_HEADER = re.compile(r"^\s*(\w+)\s*:\s*count\s+distribution")
_TEXT_ROW = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*:\s*(\d+)\s*\|")
_TEXT_UNITS = {"usecs": "us", "msecs": "ms", "nsecs": "ns", "us": "us", "ms": "ms"}


@dataclass
class TextHist:
    """One libbpf-tools histogram and the lines just above its header (labels such as 'pid = 42')."""

    label_lines: list[str]
    hist: Hist


def parse_libbpf_text(text: str) -> tuple[list[TextHist], int]:
    """Every `<unit> : count distribution` histogram in libbpf-tools output.

    Returns (histograms, bad_lines): a row that does not parse inside a
    histogram is counted, not fatal, so a truncated output gives partial data.
    """
    out: list[TextHist] = []
    bad = 0
    current: Hist | None = None
    pending_labels: list[str] = []
    for line in text.splitlines():
        header = _TEXT_HEADER.match(line)
        if header:
            current = Hist(_TEXT_UNITS.get(header.group(1), header.group(1)), "log2")
            out.append(TextHist(pending_labels, current))
            pending_labels = []
            continue
        row = _TEXT_ROW.match(line)
        if row and current is not None:
            lo, hi, c = int(row.group(1)), int(row.group(2)), int(row.group(3))
            current.buckets.append((float(lo), float(hi + 1), c))
            continue
        stripped = line.strip()
        if not stripped:
            current = None
            continue
        if current is not None:
            bad += 1  # a damaged row inside a histogram
            current = None
        else:
            pending_labels.append(stripped)
    return out, bad


def from_bpftrace(rows: list[dict[str, Any]], unit: str, kind: str, total: float | None = None) -> Hist:
    """A bpftrace JSON hist/lhist bucket list ({min, max, count}, bounds inclusive)."""
    buckets = []
    for row in rows:
        lo = row.get("min")
        hi = row.get("max")
        c = int(row.get("count", 0))
        low = float(lo) if lo is not None else -math.inf
        high = float(hi) + 1 if hi is not None else math.inf
        if math.isinf(low):
            low = high - 1 if not math.isinf(high) else 0.0
        buckets.append((low, high, c))
    return Hist(unit, kind, buckets, total)
