"""A cgroup's interface files -> one typed reading (pure: file contents in, Struct out).

The collector reads the files named in V1_FILES / V2_FILES (fixed names, never
anything a client chose) and hands their bytes here, keyed by file name. A
file that is missing (controller not enabled, older kernel) leaves its fields
None; a file that does not parse leaves its fields None and adds a warning.

Formats: Documentation/admin-guide/cgroup-v2.rst (cpu.max "$MAX $PERIOD",
"max" for no limit, flat- and nested-keyed files) and the v1 controller docs
(cpu.cfs_quota_us -1 for no limit, memory.limit_in_bytes's huge no-limit
value, cpuacct.usage in ns). Units here: bytes, nanoseconds, microseconds
where the name says _us.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec

from ..procfs import (
    Pressure,
    ParseError,
    parse_cgroup_int,
    parse_cgroup_limit,
    parse_cgroup_memory_stat,
    parse_cgroup_v1_blkio,
    parse_cgroup_v1_cpu_stat,
    parse_cgroup_v1_oom_control,
    parse_cgroup_v2_cpu_stat,
    parse_cgroup_v2_io_stat,
    parse_cgroup_v2_memory_events,
    parse_pressure,
)
from ..procfs._text import as_text, parse_flat_keyed, single_value_text, to_int

Files = Mapping[str, bytes]
T = TypeVar("T")

V1_FILES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.stat", "cpu.shares"),
    "cpuacct": ("cpuacct.usage", "cpuacct.usage_user", "cpuacct.usage_sys"),
    "memory": ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.failcnt",
               "memory.memsw.usage_in_bytes", "memory.memsw.limit_in_bytes", "memory.oom_control", "memory.stat"),
    "pids": ("pids.current", "pids.max", "pids.events"),
    "blkio": ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive",
              "blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced"),
}
V2_FILES: tuple[str, ...] = (
    "cgroup.controllers", "cpu.stat", "cpu.max", "cpu.weight",
    "memory.current", "memory.max", "memory.high", "memory.peak", "memory.events", "memory.stat",
    "memory.swap.current", "memory.swap.max",
    "pids.current", "pids.max", "pids.events", "io.stat",
    "cpu.pressure", "memory.pressure", "io.pressure",
)
PSI_RESOURCES = ("cpu", "memory", "io")

# memory.stat keys worth showing (v1 names with total_ are hierarchical)
MEMORY_STAT_V1 = ("total_rss", "total_cache", "total_rss_huge", "total_shmem", "total_mapped_file", "total_swap",
                  "total_active_anon", "total_inactive_anon", "total_active_file", "total_inactive_file",
                  "total_unevictable", "total_pgmajfault", "total_pgfault", "hierarchical_memory_limit")
MEMORY_STAT_V2 = ("anon", "file", "kernel", "sock", "shmem", "file_mapped", "file_dirty", "file_writeback",
                  "anon_thp", "active_anon", "inactive_anon", "active_file", "inactive_file", "slab",
                  "pgfault", "pgmajfault", "pgscan", "pgsteal", "workingset_refault_file", "workingset_refault_anon")


class CpuReading(msgspec.Struct, frozen=True, kw_only=True):
    usage_ns: int | None  # cpuacct.usage, or v2 usage_usec x 1000
    user_ns: int | None
    system_ns: int | None
    nr_periods: int | None
    nr_throttled: int | None
    throttled_ns: int | None
    quota_us: int | None  # None: no limit
    period_us: int | None
    weight: int | None  # v2 cpu.weight (1-10000, default 100)
    shares: int | None  # v1 cpu.shares (default 1024)
    bandwidth_source: str | None  # which version's files gave quota and throttling


class MemoryReading(msgspec.Struct, frozen=True, kw_only=True):
    usage_bytes: int | None
    limit_bytes: int | None  # None: no limit
    high_bytes: int | None  # v2 memory.high (None: none)
    peak_bytes: int | None  # v1 max_usage_in_bytes, v2 memory.peak (5.19+)
    failcnt: int | None  # v1: times the limit was hit
    memsw_usage_bytes: int | None
    memsw_limit_bytes: int | None
    swap_bytes: int | None  # v2 memory.swap.current, v1 total_swap
    swap_limit_bytes: int | None
    oom: int | None  # v2 memory.events oom (limit reached, allocation failed)
    oom_kill: int | None  # processes killed by the OOM killer in this cgroup
    events_max: int | None  # v2: times usage reached memory.max
    events_high: int | None  # v2: times usage went over memory.high (throttled)
    under_oom: bool | None  # v1: tasks are frozen waiting for memory (oom_kill_disable)
    oom_kill_disable: bool | None
    inactive_file_bytes: int | None  # reclaimable page cache (for the working set)
    stat: dict[str, int]  # highlights of memory.stat


class PidsReading(msgspec.Struct, frozen=True, kw_only=True):
    current: int | None
    limit: int | None  # None: no limit
    events_max: int | None  # forks refused at the limit


class IoDevice(msgspec.Struct, frozen=True, kw_only=True):
    read_bytes: int | None
    write_bytes: int | None
    reads: int | None
    writes: int | None


class IoReading(msgspec.Struct, frozen=True, kw_only=True):
    devices: dict[str, IoDevice]  # "MAJ:MIN"
    source: str  # io.stat or the blkio file


class CgroupReading(msgspec.Struct, frozen=True, kw_only=True):
    cpu: CpuReading | None
    memory: MemoryReading | None
    pids: PidsReading | None
    io: IoReading | None
    psi: dict[str, Pressure]  # from the v2 cgroup (cpu, memory, io)
    v2_controllers: tuple[str, ...] | None  # cgroup.controllers of the v2 cgroup, None without one
    warnings: tuple[str, ...]


class _Ctx:
    """Parses optional files, collecting warnings instead of raising."""

    def __init__(self, files: Files, where: str, warnings: list[str]) -> None:
        self.files = files
        self.where = where
        self.warnings = warnings

    def get(self, name: str, parse: Callable[[bytes, str], T]) -> T | None:
        data = self.files.get(name)
        if data is None:
            return None
        try:
            parsed = parse(data, f"{self.where}/{name}")
        except ParseError as exc:
            self.warnings.append(str(exc))
            return None
        # keyed files parse what they can and name the lines they skipped
        self.warnings.extend(f"{self.where}/{w}" for w in getattr(parsed, "warnings", ()))
        return parsed

    def keyed(self, name: str) -> dict[str, int] | None:
        def parse(data: bytes, what: str) -> dict[str, int]:
            values, warnings = parse_flat_keyed(data, what)
            self.warnings.extend(warnings)
            return values

        return self.get(name, parse)


def parse_cpu_max(data: bytes | str, what: str = "cpu.max") -> tuple[int | None, int]:
    """v2 cpu.max: "$MAX $PERIOD" with "max" for no limit -> (quota_us or None, period_us)."""
    text = as_text(data)
    if not text.endswith("\n"):
        raise ParseError(what, "empty or truncated (no final newline)")
    tokens = text.split()
    if len(tokens) != 2:
        raise ParseError(what, f"expected '$MAX $PERIOD', got {text.strip()[:40]!r}")
    quota = None if tokens[0] == "max" else to_int(tokens[0], what)
    return quota, to_int(tokens[1], what)


def parse_v1_quota(data: bytes | str, what: str = "cpu.cfs_quota_us") -> int | None:
    """v1 cpu.cfs_quota_us: -1 means no limit."""
    value = to_int(single_value_text(data, what), what)
    return None if value < 0 else value


def _int(data: bytes, what: str) -> int:
    return parse_cgroup_int(data, what)


def _limit(data: bytes, what: str) -> int | None:
    return parse_cgroup_limit(data, what)


def _v1_cpu(cpu: _Ctx | None, acct: _Ctx | None) -> CpuReading | None:
    if cpu is None and acct is None:
        return None
    stat = cpu.get("cpu.stat", lambda d, w: parse_cgroup_v1_cpu_stat(d)) if cpu else None
    return CpuReading(
        usage_ns=acct.get("cpuacct.usage", _int) if acct else None,
        user_ns=acct.get("cpuacct.usage_user", _int) if acct else None,
        system_ns=acct.get("cpuacct.usage_sys", _int) if acct else None,
        nr_periods=stat.nr_periods if stat else None,
        nr_throttled=stat.nr_throttled if stat else None,
        throttled_ns=stat.throttled_time_ns if stat else None,
        quota_us=cpu.get("cpu.cfs_quota_us", parse_v1_quota) if cpu else None,
        period_us=cpu.get("cpu.cfs_period_us", _int) if cpu else None,
        weight=None,
        shares=cpu.get("cpu.shares", _int) if cpu else None,
        bandwidth_source="v1" if cpu else None,
    )


def _v2_cpu(v2: _Ctx) -> CpuReading | None:
    stat = v2.get("cpu.stat", lambda d, w: parse_cgroup_v2_cpu_stat(d))
    if stat is None:
        return None
    cpu_max = v2.get("cpu.max", parse_cpu_max)

    def ns(us: int | None) -> int | None:
        return None if us is None else us * 1000

    return CpuReading(
        usage_ns=ns(stat.usage_usec), user_ns=ns(stat.user_usec), system_ns=ns(stat.system_usec),
        nr_periods=stat.nr_periods, nr_throttled=stat.nr_throttled, throttled_ns=ns(stat.throttled_usec),
        quota_us=cpu_max[0] if cpu_max else None, period_us=cpu_max[1] if cpu_max else None,
        weight=v2.get("cpu.weight", _int), shares=None,
        bandwidth_source="v2" if cpu_max is not None or stat.nr_periods is not None else None,
    )


def _merge_cpu(v1: CpuReading | None, v2: CpuReading | None) -> CpuReading | None:
    """Hybrid: bandwidth from v1 cpu, usage from v1 cpuacct, else from v2 cpu.stat
    (which has usage even without the v2 cpu controller)."""
    if v1 is None:
        return v2
    if v2 is None or v1.usage_ns is not None:
        return v1
    return msgspec.structs.replace(v1, usage_ns=v2.usage_ns, user_ns=v2.user_ns, system_ns=v2.system_ns)


def _highlights(stat: dict[str, int], keys: tuple[str, ...]) -> dict[str, int]:
    return {k: stat[k] for k in keys if k in stat}


def _v1_memory(m: _Ctx) -> MemoryReading:
    oom = m.get("memory.oom_control", lambda d, w: parse_cgroup_v1_oom_control(d))
    stat_file = m.get("memory.stat", lambda d, w: parse_cgroup_memory_stat(d))
    stat = stat_file.values if stat_file else {}
    limit = m.get("memory.limit_in_bytes", _limit)
    hierarchical = stat.get("hierarchical_memory_limit")
    if limit is None and hierarchical is not None and hierarchical < (1 << 62):
        limit = hierarchical  # a parent's limit applies
    return MemoryReading(
        usage_bytes=m.get("memory.usage_in_bytes", _int),
        limit_bytes=limit,
        high_bytes=None,
        peak_bytes=m.get("memory.max_usage_in_bytes", _int),
        failcnt=m.get("memory.failcnt", _int),
        memsw_usage_bytes=m.get("memory.memsw.usage_in_bytes", _int),
        memsw_limit_bytes=m.get("memory.memsw.limit_in_bytes", _limit),
        swap_bytes=stat.get("total_swap", stat.get("swap")),
        swap_limit_bytes=None,
        oom=None,
        oom_kill=oom.oom_kill if oom else None,
        events_max=None,
        events_high=None,
        under_oom=oom.under_oom if oom else None,
        oom_kill_disable=oom.oom_kill_disable if oom else None,
        inactive_file_bytes=stat.get("total_inactive_file", stat.get("inactive_file")),
        stat=_highlights(stat, MEMORY_STAT_V1),
    )


def _v2_memory(v2: _Ctx) -> MemoryReading | None:
    current = v2.get("memory.current", _int)
    if current is None:
        return None
    events = v2.get("memory.events", lambda d, w: parse_cgroup_v2_memory_events(d))
    stat_file = v2.get("memory.stat", lambda d, w: parse_cgroup_memory_stat(d))
    stat = stat_file.values if stat_file else {}
    return MemoryReading(
        usage_bytes=current,
        limit_bytes=v2.get("memory.max", _limit),
        high_bytes=v2.get("memory.high", _limit),
        peak_bytes=v2.get("memory.peak", _int),
        failcnt=None,
        memsw_usage_bytes=None,
        memsw_limit_bytes=None,
        swap_bytes=v2.get("memory.swap.current", _int),
        swap_limit_bytes=v2.get("memory.swap.max", _limit),
        oom=events.oom if events else None,
        oom_kill=events.oom_kill if events else None,
        events_max=events.max if events else None,
        events_high=events.high if events else None,
        under_oom=None,
        oom_kill_disable=None,
        inactive_file_bytes=stat.get("inactive_file"),
        stat=_highlights(stat, MEMORY_STAT_V2),
    )


def _pids(p: _Ctx) -> PidsReading | None:
    current = p.get("pids.current", _int)
    if current is None:
        return None
    events = p.keyed("pids.events")
    return PidsReading(current=current, limit=p.get("pids.max", _limit),
                       events_max=events.get("max") if events is not None else None)


def _v1_io(b: _Ctx) -> IoReading | None:
    for suffix in ("_recursive", ""):
        name_bytes, name_ios = f"blkio.throttle.io_service_bytes{suffix}", f"blkio.throttle.io_serviced{suffix}"
        if name_bytes not in b.files:
            continue
        by_bytes = b.get(name_bytes, lambda d, w: parse_cgroup_v1_blkio(d))
        by_ios = b.get(name_ios, lambda d, w: parse_cgroup_v1_blkio(d))
        devices: dict[str, IoDevice] = {}
        for dev in sorted(set(by_bytes.devices if by_bytes else {}) | set(by_ios.devices if by_ios else {})):
            nb = by_bytes.devices.get(dev, {}) if by_bytes else {}
            ni = by_ios.devices.get(dev, {}) if by_ios else {}
            devices[dev] = IoDevice(read_bytes=nb.get("Read"), write_bytes=nb.get("Write"),
                                    reads=ni.get("Read"), writes=ni.get("Write"))
        return IoReading(devices=devices, source=name_bytes)
    return None


def _v2_io(v2: _Ctx) -> IoReading | None:
    stat = v2.get("io.stat", lambda d, w: parse_cgroup_v2_io_stat(d))
    if stat is None:
        return None
    devices = {k: IoDevice(read_bytes=d.rbytes, write_bytes=d.wbytes, reads=d.rios, writes=d.wios)
               for k, d in stat.devices.items()}
    return IoReading(devices=devices, source="io.stat")


def _psi(v2: _Ctx) -> dict[str, Pressure]:
    out: dict[str, Pressure] = {}
    for resource in PSI_RESOURCES:
        value = v2.get(f"{resource}.pressure", lambda d, w: parse_pressure(d, w))
        if value is not None:
            out[resource] = value
    return out


def _controllers(data: bytes, what: str) -> tuple[str, ...]:
    text = data.decode("utf-8", "replace")
    if not text.endswith("\n"):
        raise ParseError(what, "truncated (no final newline)")
    return tuple(text.split())


def parse_reading(v1: Mapping[str, Files], v2: Files | None, where: Mapping[str, str] | None = None
                  ) -> CgroupReading:
    """One reading from the files of each v1 controller's cgroup (keyed by
    controller: "cpu", "cpuacct", "memory", "pids", "blkio") and of the v2
    cgroup. ``where`` names each source for warnings (controller -> directory)."""
    warnings: list[str] = []
    names = where or {}

    def ctx(key: str, files: Files | None) -> _Ctx | None:
        return None if files is None else _Ctx(files, names.get(key, key), warnings)

    cpu_v1, acct = ctx("cpu", v1.get("cpu")), ctx("cpuacct", v1.get("cpuacct"))
    mem_v1, pids_v1, blkio = ctx("memory", v1.get("memory")), ctx("pids", v1.get("pids")), ctx("blkio", v1.get("blkio"))
    uni = ctx("v2", v2)
    cpu = _merge_cpu(_v1_cpu(cpu_v1, acct), _v2_cpu(uni) if uni else None)
    memory = _v1_memory(mem_v1) if mem_v1 else (_v2_memory(uni) if uni else None)
    pids = _pids(pids_v1) if pids_v1 else (_pids(uni) if uni else None)
    io = _v1_io(blkio) if blkio else (_v2_io(uni) if uni else None)
    return CgroupReading(
        cpu=cpu, memory=memory, pids=pids, io=io,
        psi=_psi(uni) if uni else {},
        v2_controllers=uni.get("cgroup.controllers", _controllers) if uni else None,
        warnings=tuple(warnings),
    )
