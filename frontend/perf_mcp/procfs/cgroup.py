"""Parsers for cgroup v1 and v2 interface files, /proc/PID/cgroup and
/proc/PID/mountinfo (to find where each hierarchy is mounted).

Formats: Documentation/admin-guide/cgroup-v2.rst ("flat-keyed", "nested-keyed",
single values with "max" for no limit) and the v1 controller docs
(Documentation/admin-guide/cgroup-v1/). Single-value files raise ParseError
on garbage; keyed files skip bad lines with a warning.
"""

from __future__ import annotations

import re

from ._text import (
    Raw,
    Record,
    Warnings,
    line_warning,
    lines_of,
    parse_flat_keyed,
    single_value_text,
    to_int,
)
from .errors import ParseError

# v1 prints "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE, which depends on the
# page size (9223372036854771712 with 4 KiB pages); anything this large is
# no limit on any machine.
V1_UNLIMITED_FLOOR = 1 << 62

# ---------------------------------------------------------------- single values


def parse_cgroup_int(data: Raw, what: str = "cgroup value") -> int:
    """A single integer: cpuacct.usage, memory.usage_in_bytes, memory.failcnt,
    memory.current, pids.current, ..."""
    return to_int(single_value_text(data, what), what)


def parse_cgroup_limit(data: Raw, what: str = "cgroup limit") -> int | None:
    """A limit that may be "max" (v2, pids.max) or v1's huge no-limit number:
    None means no limit."""
    text = single_value_text(data, what)
    if text == "max":
        return None
    value = to_int(text, what)
    return None if value >= V1_UNLIMITED_FLOOR else value


# ---------------------------------------------------------------- cpu


class CgroupV1CpuStat(Record, frozen=True):
    """v1 cpu.stat (CFS bandwidth)."""

    nr_periods: int | None
    nr_throttled: int | None
    throttled_time_ns: int | None
    nr_bursts: int | None  # 5.14+
    burst_time_ns: int | None
    values: dict[str, int]
    warnings: Warnings = ()


def parse_cgroup_v1_cpu_stat(data: Raw) -> CgroupV1CpuStat:
    values, warnings = parse_flat_keyed(data, "cpu.stat")
    return CgroupV1CpuStat(
        nr_periods=values.get("nr_periods"),
        nr_throttled=values.get("nr_throttled"),
        throttled_time_ns=values.get("throttled_time"),
        nr_bursts=values.get("nr_bursts"),
        burst_time_ns=values.get("burst_time"),
        values=values,
        warnings=warnings,
    )


class CgroupV2CpuStat(Record, frozen=True):
    """v2 cpu.stat. The throttling fields exist only when the cpu controller
    is enabled for the cgroup; otherwise they are None."""

    usage_usec: int | None
    user_usec: int | None
    system_usec: int | None
    nr_periods: int | None
    nr_throttled: int | None
    throttled_usec: int | None
    nr_bursts: int | None
    burst_usec: int | None
    values: dict[str, int]
    warnings: Warnings = ()


def parse_cgroup_v2_cpu_stat(data: Raw) -> CgroupV2CpuStat:
    values, warnings = parse_flat_keyed(data, "cpu.stat")
    keys = (
        "usage_usec",
        "user_usec",
        "system_usec",
        "nr_periods",
        "nr_throttled",
        "throttled_usec",
        "nr_bursts",
        "burst_usec",
    )
    return CgroupV2CpuStat(values=values, warnings=warnings, **{k: values.get(k) for k in keys})


# ---------------------------------------------------------------- memory


class CgroupMemoryStat(Record, frozen=True):
    """memory.stat, v1 or v2, every key as the kernel spells it (bytes for
    sizes, counts for events such as pgfault)."""

    values: dict[str, int]
    warnings: Warnings = ()


def parse_cgroup_memory_stat(data: Raw) -> CgroupMemoryStat:
    values, warnings = parse_flat_keyed(data, "memory.stat")
    return CgroupMemoryStat(values=values, warnings=warnings)


class CgroupV1OomControl(Record, frozen=True):
    oom_kill_disable: bool | None
    under_oom: bool | None
    oom_kill: int | None  # 4.13+
    warnings: Warnings = ()


def parse_cgroup_v1_oom_control(data: Raw) -> CgroupV1OomControl:
    values, warnings = parse_flat_keyed(data, "memory.oom_control")

    def flag(key: str) -> bool | None:
        return None if key not in values else values[key] != 0

    return CgroupV1OomControl(
        oom_kill_disable=flag("oom_kill_disable"),
        under_oom=flag("under_oom"),
        oom_kill=values.get("oom_kill"),
        warnings=warnings,
    )


class CgroupV2MemoryEvents(Record, frozen=True):
    low: int | None
    high: int | None
    max: int | None
    oom: int | None
    oom_kill: int | None
    oom_group_kill: int | None  # 5.17+
    values: dict[str, int]
    warnings: Warnings = ()


def parse_cgroup_v2_memory_events(data: Raw) -> CgroupV2MemoryEvents:
    values, warnings = parse_flat_keyed(data, "memory.events")
    keys = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")
    return CgroupV2MemoryEvents(values=values, warnings=warnings, **{k: values.get(k) for k in keys})


# ---------------------------------------------------------------- io


class CgroupIoDevice(Record, frozen=True):
    major: int
    minor: int
    rbytes: int | None
    wbytes: int | None
    rios: int | None
    wios: int | None
    dbytes: int | None
    dios: int | None
    values: dict[str, int]  # every integer key, incl. controller extras


class CgroupIoStat(Record, frozen=True):
    """v2 io.stat, keyed "MAJ:MIN"."""

    devices: dict[str, CgroupIoDevice]
    warnings: Warnings = ()


def _device_number(token: str, what: str) -> tuple[int, int]:
    major, sep, minor = token.partition(":")
    if not sep:
        raise ParseError(what, f"expected MAJ:MIN, got {token[:40]!r}")
    return to_int(major, what), to_int(minor, what)


def parse_cgroup_v2_io_stat(data: Raw) -> CgroupIoStat:
    """Nested-keyed. Values that are not integers (io.latency's "depth=max",
    io.cost's "cost.vrate=135.04") are left out of ``values``."""
    devices: dict[str, CgroupIoDevice] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "io.stat", warnings), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            major, minor = _device_number(tokens[0], "io.stat")
        except ParseError as exc:
            warnings.append(line_warning("io.stat", lineno, line, exc.reason))
            continue
        values: dict[str, int] = {}
        for token in tokens[1:]:
            key, sep, value = token.partition("=")
            if sep and value.lstrip("-").isdecimal():
                values[key] = int(value)
        keys = ("rbytes", "wbytes", "rios", "wios", "dbytes", "dios")
        devices[f"{major}:{minor}"] = CgroupIoDevice(
            major=major, minor=minor, values=values, **{k: values.get(k) for k in keys}
        )
    return CgroupIoStat(devices=devices, warnings=tuple(warnings))


class CgroupV1Blkio(Record, frozen=True):
    """v1 blkio.throttle.io_service_bytes / io_serviced (and the other
    "MAJ:MIN Op value" blkio files): per device, Read/Write/Sync/Async/
    Discard/Total as the kernel spells them, plus the trailing grand total."""

    devices: dict[str, dict[str, int]]
    total: int | None
    warnings: Warnings = ()


def parse_cgroup_v1_blkio(data: Raw) -> CgroupV1Blkio:
    devices: dict[str, dict[str, int]] = {}
    total: int | None = None
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "blkio", warnings), 1):
        tokens = line.split()
        try:
            if len(tokens) == 2 and tokens[0] == "Total":
                total = to_int(tokens[1], "blkio")
            elif len(tokens) == 3:
                major, minor = _device_number(tokens[0], "blkio")
                devices.setdefault(f"{major}:{minor}", {})[tokens[1]] = to_int(tokens[2], "blkio")
            elif tokens:
                raise ParseError("blkio", f"{len(tokens)} fields")
        except ParseError as exc:
            warnings.append(line_warning("blkio", lineno, line, exc.reason))
    return CgroupV1Blkio(devices=devices, total=total, warnings=tuple(warnings))


# ---------------------------------------------------------------- membership and mounts


class CgroupEntry(Record, frozen=True):
    hierarchy_id: int
    controllers: tuple[str, ...]  # empty for the v2 line "0::/path"
    path: str


class ProcCgroup(Record, frozen=True):
    """/proc/PID/cgroup."""

    entries: tuple[CgroupEntry, ...]
    warnings: Warnings = ()

    @property
    def v2_path(self) -> str | None:
        for entry in self.entries:
            if entry.hierarchy_id == 0 and not entry.controllers:
                return entry.path
        return None

    def v1_path(self, controller: str) -> str | None:
        for entry in self.entries:
            if controller in entry.controllers:
                return entry.path
        return None


def parse_proc_cgroup(data: Raw) -> ProcCgroup:
    """Lines "ID:controllers:path"; the path may itself hold ':' so the line is
    split at the first two colons only."""
    entries: list[CgroupEntry] = []
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/PID/cgroup", warnings), 1):
        if not line.strip():
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdecimal() or not parts[2].startswith("/"):
            warnings.append(line_warning("/proc/PID/cgroup", lineno, line, "expected ID:controllers:/path"))
            continue
        controllers = tuple(c for c in parts[1].split(",") if c)
        entries.append(CgroupEntry(hierarchy_id=int(parts[0]), controllers=controllers, path=parts[2]))
    return ProcCgroup(entries=tuple(entries), warnings=tuple(warnings))


class Mount(Record, frozen=True):
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # the path inside the filesystem that is mounted here
    mount_point: str
    options: str
    fs_type: str
    source: str
    super_options: str


class MountInfo(Record, frozen=True):
    mounts: tuple[Mount, ...]
    warnings: Warnings = ()


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mount(tokens: list[str], what: str) -> Mount:
    try:
        dash = tokens.index("-", 6)
    except ValueError:
        raise ParseError(what, "no '-' separator") from None
    if len(tokens) < dash + 4:
        raise ParseError(what, "missing fields after '-'")
    major, minor = _device_number(tokens[2], what)
    return Mount(
        mount_id=to_int(tokens[0], what),
        parent_id=to_int(tokens[1], what),
        major=major,
        minor=minor,
        root=_unescape(tokens[3]),
        mount_point=_unescape(tokens[4]),
        options=tokens[5],
        fs_type=tokens[dash + 1],
        source=_unescape(tokens[dash + 2]),
        super_options=tokens[dash + 3],
    )


def parse_mountinfo(data: Raw) -> MountInfo:
    mounts: list[Mount] = []
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "mountinfo", warnings), 1):
        tokens = line.split(" ")
        if not line.strip():
            continue
        try:
            mounts.append(_mount(tokens, "mountinfo"))
        except ParseError as exc:
            warnings.append(line_warning("mountinfo", lineno, line, exc.reason))
    return MountInfo(mounts=tuple(mounts), warnings=tuple(warnings))


_V1_NON_CONTROLLER_OPTIONS = frozenset(
    {"rw", "ro", "clone_children", "noprefix", "xattr", "cpuset_v2_mode", "favordynmods"}
)


class CgroupMounts(Record, frozen=True):
    """Where the hierarchies are mounted: the v2 mount (if any) and, for v1,
    one Mount per controller ("cpu", "memory", "name=systemd", ...)."""

    v2: Mount | None
    v1: dict[str, Mount]

    @property
    def version(self) -> str:
        """ "v2" (unified only), "v1" (controllers only on v1), "hybrid"
        (v1 controllers plus a v2 mount, as on this project's machines), or
        "none"."""
        if self.v1:
            return "hybrid" if self.v2 else "v1"
        return "v2" if self.v2 else "none"


def cgroup_mounts(info: MountInfo) -> CgroupMounts:
    v2: Mount | None = None
    v1: dict[str, Mount] = {}
    for mount in info.mounts:
        if mount.fs_type == "cgroup2" and v2 is None:
            v2 = mount
        elif mount.fs_type == "cgroup":
            for option in mount.super_options.split(","):
                if option.startswith("name=") or (
                    option and "=" not in option and option not in _V1_NON_CONTROLLER_OPTIONS
                ):
                    v1.setdefault(option, mount)
    return CgroupMounts(v2=v2, v1=v1)


def cgroup_dir(mount: Mount, cgroup_path: str) -> str | None:
    """The directory of a cgroup (a path from /proc/PID/cgroup) under a mount.
    A mount whose root is not "/" (inside a container) shows only part of the
    tree; a path outside that part gives None. Paths with ".." give None."""
    if not cgroup_path.startswith("/") or "/../" in cgroup_path + "/" or "\0" in cgroup_path:
        return None
    root = mount.root.rstrip("/")
    if root and cgroup_path != root and not cgroup_path.startswith(root + "/"):
        return None
    relative = cgroup_path[len(root) :].lstrip("/")
    return mount.mount_point.rstrip("/") + ("/" + relative if relative else "") or "/"
