"""Parsers for /proc/meminfo and /proc/vmstat.

Both are key/value files: a garbled line is skipped with a warning, a key the
kernel does not print (older kernels have no MemAvailable, per-zone pgscan
counters before 4.8) gives None in the typed field.
"""

from __future__ import annotations

from ._text import Raw, Record, Warnings, line_warning, lines_of, parse_flat_keyed


class MemInfo(Record, frozen=True):
    """/proc/meminfo. Every "kB" value is converted to bytes; unitless values
    (HugePages_*) are counts. ``values`` holds every key as the kernel spells it."""

    values: dict[str, int]
    mem_total: int | None
    mem_free: int | None
    mem_available: int | None
    buffers: int | None
    cached: int | None
    swap_cached: int | None
    active: int | None
    inactive: int | None
    swap_total: int | None
    swap_free: int | None
    dirty: int | None
    writeback: int | None
    anon_pages: int | None
    mapped: int | None
    shmem: int | None
    slab: int | None
    s_reclaimable: int | None
    s_unreclaim: int | None
    commit_limit: int | None
    committed_as: int | None
    hugepages_total: int | None
    hugepages_free: int | None
    hugepagesize: int | None
    warnings: Warnings = ()


_MEMINFO_KEYS = {
    "mem_total": "MemTotal",
    "mem_free": "MemFree",
    "mem_available": "MemAvailable",
    "buffers": "Buffers",
    "cached": "Cached",
    "swap_cached": "SwapCached",
    "active": "Active",
    "inactive": "Inactive",
    "swap_total": "SwapTotal",
    "swap_free": "SwapFree",
    "dirty": "Dirty",
    "writeback": "Writeback",
    "anon_pages": "AnonPages",
    "mapped": "Mapped",
    "shmem": "Shmem",
    "slab": "Slab",
    "s_reclaimable": "SReclaimable",
    "s_unreclaim": "SUnreclaim",
    "commit_limit": "CommitLimit",
    "committed_as": "Committed_AS",
    "hugepages_total": "HugePages_Total",
    "hugepages_free": "HugePages_Free",
    "hugepagesize": "Hugepagesize",
}


def parse_meminfo(data: Raw) -> MemInfo:
    values: dict[str, int] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/meminfo", warnings), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        tokens = rest.split()
        if not sep or not tokens or len(tokens) > 2 or (len(tokens) == 2 and tokens[1] != "kB"):
            warnings.append(line_warning("/proc/meminfo", lineno, line, "expected 'Key: value [kB]'"))
            continue
        try:
            value = int(tokens[0])
        except ValueError:
            warnings.append(line_warning("/proc/meminfo", lineno, line, "value is not an integer"))
            continue
        values[key.strip()] = value * 1024 if len(tokens) == 2 else value
    if "MemTotal" not in values:
        warnings.append("/proc/meminfo: no MemTotal")
    typed = {field: values.get(key) for field, key in _MEMINFO_KEYS.items()}
    return MemInfo(values=values, warnings=tuple(warnings), **typed)


class VmStat(Record, frozen=True):
    """/proc/vmstat counters (pages or events). Typed fields sum the per-zone
    variants of older kernels (pgscan_kswapd_normal, ...) where needed."""

    values: dict[str, int]
    pgfault: int | None
    pgmajfault: int | None
    pgpgin: int | None  # kB paged in (despite the name)
    pgpgout: int | None
    pswpin: int | None
    pswpout: int | None
    pgscan_kswapd: int | None
    pgscan_direct: int | None
    pgscan_khugepaged: int | None
    pgsteal_kswapd: int | None
    pgsteal_direct: int | None
    pgsteal_khugepaged: int | None
    allocstall: int | None  # direct reclaim entries, all zones
    oom_kill: int | None
    compact_stall: int | None
    workingset_refault: int | None
    thp_fault_alloc: int | None
    warnings: Warnings = ()

    @property
    def pgscan(self) -> int | None:
        """Pages scanned by reclaim from every source."""
        return _sum_present(self.pgscan_kswapd, self.pgscan_direct, self.pgscan_khugepaged)

    @property
    def pgsteal(self) -> int | None:
        """Pages reclaimed from every source."""
        return _sum_present(self.pgsteal_kswapd, self.pgsteal_direct, self.pgsteal_khugepaged)


def _sum_present(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _counter(values: dict[str, int], name: str, exclude: tuple[str, ...] = ()) -> int | None:
    """values[name], or the sum of values[name_<zone>] on kernels that split
    the counter per zone (allocstall_* always, pgscan_* before 4.8)."""
    if name in values:
        return values[name]
    prefix = name + "_"
    parts = [v for k, v in values.items() if k.startswith(prefix) and k not in exclude]
    return sum(parts) if parts else None


def parse_vmstat(data: Raw) -> VmStat:
    values, warnings = parse_flat_keyed(data, "/proc/vmstat")
    refault = values.get("workingset_refault")  # split into _anon/_file since 5.9
    if refault is None:
        refault = _sum_present(values.get("workingset_refault_anon"), values.get("workingset_refault_file"))
    return VmStat(
        values=values,
        pgfault=values.get("pgfault"),
        pgmajfault=values.get("pgmajfault"),
        pgpgin=values.get("pgpgin"),
        pgpgout=values.get("pgpgout"),
        pswpin=values.get("pswpin"),
        pswpout=values.get("pswpout"),
        pgscan_kswapd=_counter(values, "pgscan_kswapd"),
        pgscan_direct=_counter(values, "pgscan_direct", exclude=("pgscan_direct_throttle",)),
        pgscan_khugepaged=values.get("pgscan_khugepaged"),
        pgsteal_kswapd=_counter(values, "pgsteal_kswapd"),
        pgsteal_direct=_counter(values, "pgsteal_direct"),
        pgsteal_khugepaged=values.get("pgsteal_khugepaged"),
        allocstall=_counter(values, "allocstall"),
        oom_kill=values.get("oom_kill"),
        compact_stall=values.get("compact_stall"),
        workingset_refault=refault,
        thp_fault_alloc=values.get("thp_fault_alloc"),
        warnings=warnings,
    )
