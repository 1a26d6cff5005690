"""Parser for /proc/diskstats.

After "major minor name" the kernel prints 11 counters (2.6.25 to 4.17),
15 (4.18+: discards) or 17 (5.5+: flushes); see
Documentation/admin-guide/iostats.rst. Lines with another count (the 4-column
partition lines of kernels before 2.6.25, garbage) are skipped with a warning;
more than 17 counters are accepted and the extra ones ignored, since new
kernels append fields at the end.
"""

from __future__ import annotations

from ._text import Raw, Record, Warnings, line_warning, lines_of


class DiskStat(Record, frozen=True, gc=False):
    major: int
    minor: int
    name: str
    reads: int  # completed
    reads_merged: int
    sectors_read: int  # 512-byte sectors, whatever the device's block size
    read_ms: int
    writes: int
    writes_merged: int
    sectors_written: int
    write_ms: int
    in_flight: int  # a gauge, not a counter
    io_ms: int  # "io_ticks": time the device had I/O in flight (%util)
    weighted_io_ms: int  # "time_in_queue": sum of each I/O's time (aqu-sz)
    discards: int | None = None  # None on kernels before 4.18
    discards_merged: int | None = None
    sectors_discarded: int | None = None
    discard_ms: int | None = None
    flushes: int | None = None  # None on kernels before 5.5
    flush_ms: int | None = None


class DiskStats(Record, frozen=True):
    devices: dict[str, DiskStat]
    warnings: Warnings = ()


_NAMES = DiskStat.__struct_fields__[3:]  # counter names, in kernel order


def _parse_line(tokens: list[str]) -> DiskStat:
    counters = [int(t) for t in tokens[3:20]]
    fields = dict(zip(_NAMES, counters, strict=False))
    return DiskStat(major=int(tokens[0]), minor=int(tokens[1]), name=tokens[2], **fields)


def parse_diskstats(data: Raw) -> DiskStats:
    devices: dict[str, DiskStat] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/diskstats", warnings), 1):
        tokens = line.split()
        if not tokens:
            continue
        counters = len(tokens) - 3
        if counters not in (11, 15) and counters < 17:
            warnings.append(
                line_warning("/proc/diskstats", lineno, line, f"{counters} counters (need 11, 15 or 17+)")
            )
            continue
        try:
            stat = _parse_line(tokens)
        except ValueError:
            warnings.append(line_warning("/proc/diskstats", lineno, line, "not an integer"))
            continue
        devices[stat.name] = stat
    return DiskStats(devices=devices, warnings=tuple(warnings))
