"""Parser for PSI files: /proc/pressure/{cpu,memory,io,irq} and the cgroup v2
{cpu,memory,io}.pressure files, which share one format
(Documentation/accounting/psi.rst):

    some avg10=0.00 avg60=0.00 avg300=0.00 total=0
    full avg10=0.00 avg60=0.00 avg300=0.00 total=0

The "some" line is required (ParseError without it). "full" is absent for cpu
before 5.13 and for irq's "some"; a system-wide cpu "full" line is all zeros
by definition, so a caller must not read it as "no stall".
"""

from __future__ import annotations

from ._text import Raw, Record, record_text, to_float, to_int
from .errors import ParseError


class PressureLine(Record, frozen=True, gc=False):
    avg10: float  # percent of wall time stalled, decaying averages
    avg60: float
    avg300: float
    total_us: int  # cumulative stall time, microseconds


class Pressure(Record, frozen=True):
    some: PressureLine
    full: PressureLine | None = None


def _pressure_line(tokens: list[str], what: str) -> PressureLine:
    fields: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ParseError(what, f"expected key=value, got {token[:40]!r}")
        fields[key] = value
    missing = {"avg10", "avg60", "avg300", "total"} - fields.keys()
    if missing:
        raise ParseError(what, f"missing {', '.join(sorted(missing))}")
    return PressureLine(
        avg10=to_float(fields["avg10"], what),
        avg60=to_float(fields["avg60"], what),
        avg300=to_float(fields["avg300"], what),
        total_us=to_int(fields["total"], what),
    )


def parse_pressure(data: Raw, what: str = "pressure") -> Pressure:
    lines: dict[str, PressureLine] = {}
    for line in record_text(data, what).split("\n"):
        tokens = line.split()
        if not tokens:
            continue
        kind = tokens[0]
        if kind not in ("some", "full"):
            raise ParseError(what, f"unknown line {line[:40]!r}")
        lines[kind] = _pressure_line(tokens[1:], f"{what} {kind}")
    if "some" not in lines:
        raise ParseError(what, "no 'some' line")
    return Pressure(some=lines["some"], full=lines.get("full"))
