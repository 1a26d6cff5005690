"""The background sampler as a server service, and how handlers reach it.

perf_snapshot registers SAMPLER_SERVICE (this module's name starts with "_",
so the registry does not import it as a tool module); the server starts it
before serving. Any tool can then use the one running sampler:

    from ._sampler_service import system_sampler
    sampler = await system_sampler(ctx)       # a procfs.Sampler holding >= 2 samples
    rates = sampler.rates(10.0)               # or ctx.services.get(Sampler)

The sampler reads the cheap system-wide files at 1 Hz into a 10-minute ring
(procfs.sampler). Where this server's own cgroup has a memory limit or a CPU
quota at start-up, it also watches that cgroup's counters (memory.failcnt,
cpu.stat, cpuacct.usage; v2: memory.events, cpu.stat) as extra files, so the
USE check can give their rates over a window. A limit set after start-up is
still seen by perf_use_check (it reads limits at each call), only without
those rates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ..errors import ErrorCode, ToolError
from ..procfs import (
    Sampler,
    cgroup_dir,
    cgroup_mounts,
    parse_cgroup_int,
    parse_cgroup_limit,
    parse_cgroup_memory_stat,
    parse_cgroup_v1_cpu_stat,
    parse_cgroup_v1_oom_control,
    parse_cgroup_v2_cpu_stat,
    parse_cgroup_v2_memory_events,
    parse_mountinfo,
    parse_proc_cgroup,
    read_file,
)
from ..procfs.errors import ParseError
from ..registry import Services, ServiceSpec, ToolContext

log = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLER_INTERVAL_S = 1.0
SAMPLER_CAPACITY = 600  # 10 minutes at 1 Hz
FIRST_SAMPLES_TIMEOUT_S = 5.0

# Names of the cgroup files in the ring (Sampler extra_files); raw bytes.
CG_V1_MEMORY_FAILCNT = "cg_v1_memory_failcnt"
CG_V1_CPU_STAT = "cg_v1_cpu_stat"
CG_V1_CPUACCT_USAGE = "cg_v1_cpuacct_usage"
CG_V2_MEMORY_EVENTS = "cg_v2_memory_events"
CG_V2_CPU_STAT = "cg_v2_cpu_stat"


@dataclass(frozen=True)
class OwnCgroup:
    """Directories of this process's cgroups (None where not mounted)."""

    v1_memory: str | None
    v1_cpu: str | None
    v1_cpuacct: str | None
    v2: str | None
    memory_path: str  # as /proc/self/cgroup names it, for people
    cpu_path: str


def _read(path: str) -> bytes | None:
    try:
        return read_file(path, limit=1 << 20)
    except OSError:
        return None


def own_cgroup() -> OwnCgroup | None:
    """Where this process's cgroups are, from /proc/self/cgroup and mountinfo."""
    raw_cg, raw_mounts = _read("/proc/self/cgroup"), _read("/proc/self/mountinfo")
    if raw_cg is None or raw_mounts is None:
        return None
    membership = parse_proc_cgroup(raw_cg)
    mounts = cgroup_mounts(parse_mountinfo(raw_mounts))

    def v1(controller: str) -> str | None:
        mount, path = mounts.v1.get(controller), membership.v1_path(controller)
        return cgroup_dir(mount, path) if mount is not None and path is not None else None

    v2_path = membership.v2_path
    v2 = cgroup_dir(mounts.v2, v2_path) if mounts.v2 is not None and v2_path is not None else None
    memory_path = membership.v1_path("memory")
    cpu_path = membership.v1_path("cpu")
    return OwnCgroup(
        v1_memory=v1("memory"), v1_cpu=v1("cpu"), v1_cpuacct=v1("cpuacct"), v2=v2,
        memory_path=f"memory:{memory_path}" if memory_path else (v2_path or "/"),
        cpu_path=f"cpu:{cpu_path}" if cpu_path else (v2_path or "/"),
    )


@dataclass(frozen=True)
class CgroupLimits:
    memory_limit_bytes: int | None
    cpu_quota_cores: float | None

    @property
    def any(self) -> bool:
        return bool(self.memory_limit_bytes or self.cpu_quota_cores)


def _parse(fn: Callable[[bytes], T], data: bytes | None) -> T | None:
    if data is None:
        return None
    try:
        return fn(data)
    except ParseError:
        return None


def v1_memory_limit(stat_values: dict[str, int], own_limit: int | None) -> int | None:
    """The limit in force for a v1 memory cgroup: the smallest of its own and
    its ancestors' (memory.stat hierarchical_memory_limit), None if none."""
    hier = stat_values.get("hierarchical_memory_limit")
    limits = [v for v in (own_limit, hier) if v is not None and v < (1 << 62)]
    return min(limits) if limits else None


def parse_cpu_max(data: bytes) -> float | None:
    """v2 cpu.max "QUOTA PERIOD" (QUOTA "max" = none) -> CPUs allowed."""
    parts = data.decode("ascii", "replace").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_limits(cg: OwnCgroup) -> CgroupLimits:
    memory = cpu = None
    if cg.v1_memory:
        stat = _parse(parse_cgroup_memory_stat, _read(f"{cg.v1_memory}/memory.stat"))
        own = _parse(parse_cgroup_limit, _read(f"{cg.v1_memory}/memory.limit_in_bytes"))
        memory = v1_memory_limit(stat.values if stat else {}, own)
    if cg.v1_cpu:
        quota = _parse(parse_cgroup_int, _read(f"{cg.v1_cpu}/cpu.cfs_quota_us"))
        period = _parse(parse_cgroup_int, _read(f"{cg.v1_cpu}/cpu.cfs_period_us"))
        if quota and quota > 0 and period:
            cpu = quota / period
    if cg.v2:
        if memory is None:
            memory = _parse(parse_cgroup_limit, _read(f"{cg.v2}/memory.max"))
        if cpu is None:
            raw = _read(f"{cg.v2}/cpu.max")
            cpu = parse_cpu_max(raw) if raw is not None else None
    return CgroupLimits(memory_limit_bytes=memory, cpu_quota_cores=cpu)


def cgroup_watch_files(cg: OwnCgroup, limits: CgroupLimits) -> dict[str, str]:
    """The cgroup counters worth a place in the ring, given the limits."""
    files: dict[str, str] = {}
    if limits.memory_limit_bytes:
        if cg.v1_memory:
            files[CG_V1_MEMORY_FAILCNT] = f"{cg.v1_memory}/memory.failcnt"
        elif cg.v2:
            files[CG_V2_MEMORY_EVENTS] = f"{cg.v2}/memory.events"
    if limits.cpu_quota_cores:
        if cg.v1_cpu:
            files[CG_V1_CPU_STAT] = f"{cg.v1_cpu}/cpu.stat"
            if cg.v1_cpuacct:
                files[CG_V1_CPUACCT_USAGE] = f"{cg.v1_cpuacct}/cpuacct.usage"
        elif cg.v2:
            files[CG_V2_CPU_STAT] = f"{cg.v2}/cpu.stat"
    return {name: path for name, path in files.items() if os.access(path, os.R_OK)}


def make_sampler() -> Sampler:
    extra: dict[str, str] = {}
    cg = own_cgroup()
    if cg is not None:
        extra = cgroup_watch_files(cg, cgroup_limits(cg))
        if extra:
            log.info("sampler also watches this server's cgroup: %s", ", ".join(extra.values()))
    return Sampler(SAMPLER_INTERVAL_S, SAMPLER_CAPACITY, extra_files=extra)


async def run_sampler(services: Services, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The service: put the Sampler in services, then sample until cancelled."""
    sampler = make_sampler()
    services.put(sampler)
    await sampler.run(task_status=task_status)


SAMPLER_SERVICE = ServiceSpec(name="sampler", run=run_sampler)


async def system_sampler(ctx: ToolContext, min_samples: int = 2) -> Sampler:
    """The running sampler, once it holds min_samples (right after start-up
    that is about one interval away)."""
    sampler = ctx.services.get(Sampler)  # type: ignore[type-var]  # Services.get is typed for Structs
    if sampler is None:
        raise ToolError(ErrorCode.EXECUTION_FAILED, "the background sampler is not running in this server",
                        suggestion="Restart perf-mcp; its stderr log says why the sampler did not start.")
    with trio.move_on_after(FIRST_SAMPLES_TIMEOUT_S + min_samples * sampler.interval_s):
        await sampler.wait_for_samples(min_samples)
    if len(sampler) < min(min_samples, sampler.capacity):
        raise ToolError(ErrorCode.TIMEOUT, f"the background sampler has taken {len(sampler)} samples, "
                        f"{min_samples} are needed", suggestion="The server is starved of CPU; call again.")
    return sampler


# ---------------------------------------------------------------- cgroup counters at call time


@dataclass(frozen=True)
class CgroupReading:
    """What perf_use_check needs of the server's cgroup now (direct reads)."""

    memory_usage_bytes: int | None
    memory_inactive_file_bytes: int | None
    memory_failcnt: int | None
    oom_kills: int | None


def read_cgroup_now(cg: OwnCgroup) -> CgroupReading:
    if cg.v1_memory:
        stat = _parse(parse_cgroup_memory_stat, _read(f"{cg.v1_memory}/memory.stat"))
        oom = _parse(parse_cgroup_v1_oom_control, _read(f"{cg.v1_memory}/memory.oom_control"))
        inactive = stat.values.get("total_inactive_file", stat.values.get("inactive_file")) if stat else None
        return CgroupReading(
            memory_usage_bytes=_parse(parse_cgroup_int, _read(f"{cg.v1_memory}/memory.usage_in_bytes")),
            memory_inactive_file_bytes=inactive,
            memory_failcnt=_parse(parse_cgroup_int, _read(f"{cg.v1_memory}/memory.failcnt")),
            oom_kills=oom.oom_kill if oom else None,
        )
    if cg.v2:
        stat = _parse(parse_cgroup_memory_stat, _read(f"{cg.v2}/memory.stat"))
        events = _parse(parse_cgroup_v2_memory_events, _read(f"{cg.v2}/memory.events"))
        return CgroupReading(
            memory_usage_bytes=_parse(parse_cgroup_int, _read(f"{cg.v2}/memory.current")),
            memory_inactive_file_bytes=stat.values.get("inactive_file") if stat else None,
            memory_failcnt=events.max if events else None,
            oom_kills=events.oom_kill if events else None,
        )
    return CgroupReading(None, None, None, None)


def cgroup_counter_deltas(older: bytes | None, newer: bytes | None, name: str) -> tuple[Any, Any] | None:
    """Parsed (older, newer) of one watched cgroup file, or None."""
    parsers: dict[str, Callable[[bytes], Any]] = {
        CG_V1_MEMORY_FAILCNT: parse_cgroup_int,
        CG_V1_CPUACCT_USAGE: parse_cgroup_int,
        CG_V1_CPU_STAT: parse_cgroup_v1_cpu_stat,
        CG_V2_CPU_STAT: parse_cgroup_v2_cpu_stat,
        CG_V2_MEMORY_EVENTS: parse_cgroup_v2_memory_events,
    }
    parser = parsers[name]
    a, b = _parse(parser, older), _parse(parser, newer)
    return None if a is None or b is None else (a, b)
