"""One parsed sample of the cheap system-wide files, and the names of those
files. A Snapshot is what derive.system_rates compares two of."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ._text import Record, Warnings
from .cpu import LoadAvg, ProcStat, parse_loadavg, parse_stat
from .disk import DiskStats, parse_diskstats
from .errors import ParseError
from .memory import MemInfo, VmStat, parse_meminfo, parse_vmstat
from .net import (
    NetDev,
    NetSnmp,
    SoftnetStat,
    parse_net_dev,
    parse_net_netstat,
    parse_net_snmp,
    parse_softnet_stat,
)
from .pressure import Pressure, parse_pressure

# name -> path under the proc root (see sampler.Sampler(proc_root=...))
SYSTEM_FILES: Mapping[str, str] = {
    "stat": "stat",
    "meminfo": "meminfo",
    "vmstat": "vmstat",
    "loadavg": "loadavg",
    "diskstats": "diskstats",
    "net_dev": "net/dev",
    "snmp": "net/snmp",
    "netstat": "net/netstat",
    "softnet": "net/softnet_stat",
    "psi_cpu": "pressure/cpu",
    "psi_memory": "pressure/memory",
    "psi_io": "pressure/io",
}

PARSERS: Mapping[str, Callable[[bytes], Any]] = {
    "stat": parse_stat,
    "meminfo": parse_meminfo,
    "vmstat": parse_vmstat,
    "loadavg": parse_loadavg,
    "diskstats": parse_diskstats,
    "net_dev": parse_net_dev,
    "snmp": parse_net_snmp,
    "netstat": parse_net_netstat,
    "softnet": parse_softnet_stat,
    "psi_cpu": lambda data: parse_pressure(data, "/proc/pressure/cpu"),
    "psi_memory": lambda data: parse_pressure(data, "/proc/pressure/memory"),
    "psi_io": lambda data: parse_pressure(data, "/proc/pressure/io"),
}


class Snapshot(Record, frozen=True):
    """The system-wide files at one instant. A file that could not be read
    or parsed is None, and ``warnings`` says why."""

    t_mono: float  # time.monotonic() seconds: the base of every rate
    t_wall: float  # time.time() seconds, for people
    stat: ProcStat | None = None
    meminfo: MemInfo | None = None
    vmstat: VmStat | None = None
    loadavg: LoadAvg | None = None
    diskstats: DiskStats | None = None
    net_dev: NetDev | None = None
    snmp: NetSnmp | None = None
    netstat: NetSnmp | None = None
    softnet: SoftnetStat | None = None
    psi_cpu: Pressure | None = None
    psi_memory: Pressure | None = None
    psi_io: Pressure | None = None
    warnings: Warnings = ()


class SnapshotLike(Protocol):
    """What derive.system_rates reads: a Snapshot, or the sampler's lazily
    parsed view of a sample (which parses a file only when it is asked for)."""

    @property
    def t_mono(self) -> float: ...
    @property
    def t_wall(self) -> float: ...
    @property
    def stat(self) -> ProcStat | None: ...
    @property
    def meminfo(self) -> MemInfo | None: ...
    @property
    def vmstat(self) -> VmStat | None: ...
    @property
    def loadavg(self) -> LoadAvg | None: ...
    @property
    def diskstats(self) -> DiskStats | None: ...
    @property
    def net_dev(self) -> NetDev | None: ...
    @property
    def snmp(self) -> NetSnmp | None: ...
    @property
    def netstat(self) -> NetSnmp | None: ...
    @property
    def softnet(self) -> SoftnetStat | None: ...
    @property
    def psi_cpu(self) -> Pressure | None: ...
    @property
    def psi_memory(self) -> Pressure | None: ...
    @property
    def psi_io(self) -> Pressure | None: ...


def parse_file(name: str, data: bytes) -> Any:
    """Parse one of SYSTEM_FILES by name (ParseError on bad input)."""
    return PARSERS[name](data)


def parse_snapshot(
    t_mono: float,
    t_wall: float,
    files: Mapping[str, bytes],
    read_errors: Mapping[str, str] | None = None,
) -> Snapshot:
    """Parse every file of a sample. A ParseError costs that file only."""
    parsed: dict[str, Any] = {}
    warnings = [f"{SYSTEM_FILES.get(n, n)}: {e}" for n, e in (read_errors or {}).items()]
    for name, data in files.items():
        if name not in PARSERS:
            continue
        try:
            parsed[name] = PARSERS[name](data)
        except ParseError as exc:
            warnings.append(str(exc))
            continue
        warnings.extend(getattr(parsed[name], "warnings", ()))
    return Snapshot(t_mono=t_mono, t_wall=t_wall, warnings=tuple(warnings), **parsed)
