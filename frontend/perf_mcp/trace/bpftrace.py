"""bpftrace's `-f json` output: one JSON object per line ({"type": ..., "data": ...}).

The broker's scripts print their maps at exit; a line that does not decode
(output cut at the broker's cap, a stray message) is counted, not fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from .histogram import UNIT_SCALE, Hist, from_bpftrace

_decoder = msgspec.json.Decoder()


@dataclass
class BpftraceOutput:
    maps: dict[str, Any] = field(default_factory=dict)  # "@name" -> value (type map)
    hists: dict[str, Any] = field(default_factory=dict)  # "@name" -> bucket list or {key: bucket list}
    printed: list[Any] = field(default_factory=list)  # printf lines (type printf), in order
    other: list[dict[str, Any]] = field(default_factory=list)  # attached_probes, join, time...
    bad_lines: int = 0
    attached_probes: int | None = None


def _escape_bad_bytes(line: bytes) -> bytes:
    """Bytes that are not UTF-8 as the JSON text \\xNN (they sit inside JSON strings)."""
    text = line.decode("utf-8", "surrogateescape")
    return "".join(f"\\\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text).encode()


def parse_json_lines(raw: bytes) -> BpftraceOutput:
    out = BpftraceOutput()
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = _decoder.decode(line)
        except msgspec.DecodeError:
            out.bad_lines += 1
            continue
        except UnicodeDecodeError:
            # bpftrace copies raw bytes of strings (comm, paths) into its JSON: keep the
            # line, with the bytes that are not UTF-8 as \xNN
            try:
                obj = _decoder.decode(_escape_bad_bytes(line))
            except msgspec.DecodeError:
                out.bad_lines += 1
                continue
        if not isinstance(obj, dict) or "type" not in obj:
            out.bad_lines += 1
            continue
        kind, data = obj.get("type"), obj.get("data")
        if kind == "map" and isinstance(data, dict):
            out.maps.update(data)
        elif kind in ("hist", "stats") and isinstance(data, dict):
            out.hists.update(data)
        elif kind == "printf":
            out.printed.append(data)
        elif kind == "attached_probes" and isinstance(data, dict):
            out.attached_probes = int(data.get("probes", 0))
        else:
            out.other.append(obj)
    return out


def json_int(v: Any) -> int | None:
    """An integer from bpftrace's JSON (int, or a decimal string), None for anything else (bool too)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdecimal():
        return int(v)
    return None


def hist_rows(v: Any) -> list[dict[str, Any]] | None:
    """A hist/lhist bucket list ({min, max, count} with at least one bound), None when it is not one."""
    if not isinstance(v, list):
        return None
    for row in v:
        if not isinstance(row, dict) or json_int(row.get("count")) is None:
            return None
        lo, hi = row.get("min"), row.get("max")
        if lo is None and hi is None:
            return None
        if (lo is not None and json_int(lo) is None) or (hi is not None and json_int(hi) is None):
            return None
    return v


def read_hist(rows: Any, sum_ns: Any, count: Any, *, unit: str, kind: str, what: str, noun: str,
              warnings: list[str]) -> Hist | None:
    """One bpftrace histogram (None, with a warning, when it is unreadable), with its exact
    total from the script's sum in ns when the script's count agrees with the buckets."""
    buckets = hist_rows(rows)
    if buckets is None:
        if rows is not None:
            warnings.append(f"{what}: the histogram is not a bucket list and was left out")
        return None
    try:
        h = from_bpftrace(buckets, unit, kind)
    except (TypeError, ValueError, OverflowError):
        warnings.append(f"{what}: the histogram has unreadable bucket bounds and was left out")
        return None
    n, s = json_int(count), json_int(sum_ns)
    if n is not None and s is not None and n == h.count and s >= 0:
        h.total = s / round(UNIT_SCALE[unit] * 1e9)  # ns per unit, exact
    elif n is not None and n != h.count:
        warnings.append(f"{what}: the histogram holds {h.count} {noun} but the script counted {n}; "
                        "its mean is estimated from the buckets")
    return h
