"""Parsers for /proc/stat, /proc/loadavg and /proc/cpuinfo.

/proc/stat: the aggregate "cpu" line is required (ParseError without it);
per-CPU lines and scalar counters that are garbled are skipped with a warning
(a missing counter is None). CPU times are kept in clock ticks (USER_HZ) as the
kernel prints them: percentages come from deltas, where the unit cancels.
Kernels before 2.6.33 print fewer than ten CPU columns; missing ones are 0.
"""

from __future__ import annotations

from ._text import Raw, Record, Warnings, line_warning, lines_of, record_text, to_float, to_int
from .errors import ParseError

_CPU_FIELDS = (
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
)


class CpuTimes(Record, frozen=True):
    """Cumulative CPU time in clock ticks. guest and guest_nice are already
    counted inside user and nice (the kernel adds them to both)."""

    user: int
    nice: int
    system: int
    idle: int
    iowait: int = 0
    irq: int = 0
    softirq: int = 0
    steal: int = 0
    guest: int = 0
    guest_nice: int = 0


class ProcStat(Record, frozen=True):
    cpu: CpuTimes
    per_cpu: dict[int, CpuTimes]
    ctxt: int | None = None
    intr: int | None = None  # total interrupts serviced since boot
    softirq: int | None = None  # total softirqs since boot
    btime: int | None = None  # boot time, seconds since the epoch
    processes: int | None = None  # forks since boot
    procs_running: int | None = None
    procs_blocked: int | None = None
    warnings: Warnings = ()


_SCALARS = ("ctxt", "btime", "processes", "procs_running", "procs_blocked")


def _cpu_times(tokens: list[str], what: str) -> CpuTimes:
    if len(tokens) < 4:
        raise ParseError(what, f"{len(tokens)} CPU columns, need at least 4")
    values = [to_int(t, what) for t in tokens[: len(_CPU_FIELDS)]]
    return CpuTimes(**dict(zip(_CPU_FIELDS, values, strict=False)))


def parse_stat(data: Raw) -> ProcStat:
    """Parse /proc/stat. Only the first number of "intr" and "softirq" is
    read (the total), so the long per-IRQ line costs nothing."""
    total: CpuTimes | None = None
    per_cpu: dict[int, CpuTimes] = {}
    scalars: dict[str, int] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/stat", warnings), 1):
        key, _, rest = line.partition(" ")
        try:
            if key == "cpu":
                total = _cpu_times(rest.split(), "/proc/stat cpu")
            elif key.startswith("cpu"):
                per_cpu[to_int(key[3:], "/proc/stat cpuN")] = _cpu_times(rest.split(), key)
            elif key in ("intr", "softirq"):
                head = rest.split(None, 1)
                if not head:
                    raise ParseError(key, "no total")
                scalars[key] = to_int(head[0], key)
            elif key in _SCALARS:
                scalars[key] = to_int(rest.strip(), key)
        except ParseError as exc:
            if key == "cpu":
                raise
            warnings.append(line_warning("/proc/stat", lineno, line, exc.reason))
    if total is None:
        raise ParseError("/proc/stat", "no aggregate 'cpu' line")
    for name in ("ctxt", "intr", "processes", "procs_running", "procs_blocked"):
        if name not in scalars:
            warnings.append(f"/proc/stat: no '{name}' line")
    return ProcStat(
        cpu=total,
        per_cpu=per_cpu,
        ctxt=scalars.get("ctxt"),
        intr=scalars.get("intr"),
        softirq=scalars.get("softirq"),
        btime=scalars.get("btime"),
        processes=scalars.get("processes"),
        procs_running=scalars.get("procs_running"),
        procs_blocked=scalars.get("procs_blocked"),
        warnings=tuple(warnings),
    )


class LoadAvg(Record, frozen=True):
    load1: float
    load5: float
    load15: float
    runnable: int  # scheduling entities currently runnable (includes running)
    threads: int  # scheduling entities that exist
    last_pid: int


def parse_loadavg(data: Raw) -> LoadAvg:
    """Parse /proc/loadavg ("0.06 0.14 0.08 1/82 4629"); ParseError otherwise."""
    what = "/proc/loadavg"
    tokens = record_text(data, what).split()
    if len(tokens) != 5:
        raise ParseError(what, f"expected 5 fields, got {len(tokens)}")
    running, slash, threads = tokens[3].partition("/")
    if not slash:
        raise ParseError(what, f"expected runnable/total, got {tokens[3][:40]!r}")
    return LoadAvg(
        load1=to_float(tokens[0], what),
        load5=to_float(tokens[1], what),
        load15=to_float(tokens[2], what),
        runnable=to_int(running, what),
        threads=to_int(threads, what),
        last_pid=to_int(tokens[4], what),
    )


class CpuInfoProcessor(Record, frozen=True):
    processor: int
    vendor_id: str | None = None
    model_name: str | None = None
    mhz: float | None = None
    physical_id: int | None = None
    core_id: int | None = None


class CpuInfo(Record, frozen=True):
    processors: tuple[CpuInfoProcessor, ...]
    model_name: str | None  # of the first processor (or "Hardware"/"Model" on ARM)
    vendor_id: str | None
    flags: frozenset[str]  # x86 "flags" or ARM "Features" of the first processor
    sockets: int  # distinct physical ids (1 when the kernel does not say)
    physical_cores: int | None  # distinct (physical id, core id), None if unknown
    hypervisor: bool  # the "hypervisor" CPU flag: running in a VM
    warnings: Warnings = ()


def _cpuinfo_blocks(lines: list[str], warnings: list[str]) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if not sep:
            warnings.append(line_warning("/proc/cpuinfo", lineno, line, "no ':'"))
            continue
        current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _opt_int(block: dict[str, str], key: str) -> int | None:
    value = block.get(key)
    return int(value) if value is not None and value.isdecimal() else None


def _opt_float(block: dict[str, str], key: str) -> float | None:
    value = block.get(key)
    if value is None:
        return None
    try:
        return to_float(value, key)
    except ParseError:
        return None


def parse_cpuinfo(data: Raw) -> CpuInfo:
    """Parse the essentials of /proc/cpuinfo (x86 and ARM layouts)."""
    warnings: list[str] = []
    blocks = _cpuinfo_blocks(lines_of(data, "/proc/cpuinfo", warnings), warnings)
    processors: list[CpuInfoProcessor] = []
    extra: dict[str, str] = {}
    for block in blocks:
        number = _opt_int(block, "processor")
        if number is None:
            extra.update(block)  # ARM puts Hardware/Revision/Model in a trailing block
            continue
        processors.append(
            CpuInfoProcessor(
                processor=number,
                vendor_id=block.get("vendor_id") or block.get("CPU implementer"),
                model_name=block.get("model name"),
                mhz=_opt_float(block, "cpu MHz"),
                physical_id=_opt_int(block, "physical id"),
                core_id=_opt_int(block, "core id"),
            )
        )
    if not processors:
        warnings.append("/proc/cpuinfo: no processor block")
    first = next((b for b in blocks if "processor" in b), {})
    flags = frozenset((first.get("flags") or first.get("Features") or "").split())
    sockets = {p.physical_id for p in processors if p.physical_id is not None}
    cores = {
        (p.physical_id, p.core_id) for p in processors if p.physical_id is not None and p.core_id is not None
    }
    model = processors[0].model_name if processors else None
    return CpuInfo(
        processors=tuple(processors),
        model_name=model or extra.get("Hardware") or extra.get("Model"),
        vendor_id=processors[0].vendor_id if processors else None,
        flags=flags,
        sockets=max(1, len(sockets)),
        physical_cores=len(cores) or None,
        hypervisor="hypervisor" in flags,
        warnings=tuple(warnings),
    )
