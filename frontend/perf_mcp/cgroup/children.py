"""The top child cgroups of the hierarchy root by CPU, memory and throttling.

Which cgroups: the direct children of the root of each hierarchy mounted here
(v1 cpu, cpuacct and memory; the v2 mount), merged by path: on a hybrid machine
/x's CPU figures come from the v1 cpu and cpuacct hierarchies, its memory from
the v1 memory hierarchy, and whatever v1 does not have from the v2 cgroup /x.

Window: two readings (collect.take_child_readings) SAMPLE_INTERVAL_S apart.
CPU usage and throttling are deltas over that window; memory is the usage at
the second reading, and the limit hits (v1 memory.failcnt, v2 memory.events
max) and OOM kills counted over the window make their findings, as for one
cgroup (a cgroup at its limit, reclaiming tens of thousands of times a second,
is named by the listing); lifetime throttled time (since the cgroup was
created) is given alongside. A limit that is not set is said as "none" (the kernel's
"max" or v1's huge no-limit number never reach the answer).
"""

from __future__ import annotations

import msgspec

from ..contract import Evidence, Finding, next_call, sort_findings
from ..use.thresholds import Thresholds
from .analysis import CpuReport, MemoryReport, cpu_findings, cpu_report, memory_findings, memory_report, mib
from .parse import CgroupReading

TOOL = "perf_cgroup_summary"
MAX_CHILDREN = 2000  # per hierarchy; beyond this the listing says it stopped


class ChildRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One child cgroup. A limit is "none" when not set; a field left out was not readable here."""

    cgroup_path: str
    cpu_cores: float | None = None  # CPUs used over the window
    cpu_limit: str | None = None  # "0.2 CPUs" or "none"
    cpu_limit_cores: float | None = None
    throttled_pct: float | None = None  # % of CFS periods throttled in the window
    throttled_s: float | None = None  # time throttled in the window
    throttled_s_total: float | None = None  # since the cgroup was created
    memory_bytes: int | None = None
    memory_limit: str | None = None  # "64.0 MiB" or "none"
    memory_limit_bytes: int | None = None
    memory_pct_of_limit: float | None = None  # working set (usage - inactive file) % of the limit


class TopChildren(msgspec.Struct, kw_only=True):
    window_s: float
    cgroups_seen: int
    by_cpu: list[ChildRow]
    by_memory: list[ChildRow]
    by_throttling: list[ChildRow]  # most throttled time in the window first; only cgroups ever throttled


def _row(path: str, cpu: CpuReport | None, mem: MemoryReport | None) -> ChildRow:
    row = ChildRow(cgroup_path=path)
    if cpu is not None:
        row.cpu_cores = cpu.usage_cores
        if cpu.quota_us is not None or cpu.period_us is not None or cpu.weight is not None or cpu.shares is not None:
            row.cpu_limit = cpu.quota
            row.cpu_limit_cores = cpu.quota_cores
        row.throttled_pct = cpu.window_throttled_pct if cpu.window_periods else None
        row.throttled_s = cpu.window_throttled_s if cpu.window_periods else None
        row.throttled_s_total = cpu.throttled_s or None
    if mem is not None:
        row.memory_bytes = mem.usage_bytes
        row.memory_limit = mem.limit
        row.memory_limit_bytes = mem.limit_bytes
        row.memory_pct_of_limit = mem.working_set_pct_of_limit
    return row


def _throttle_key(r: ChildRow) -> tuple[float, float, float]:
    """Most time throttled in the window first (the latency its tasks lost; summed
    over CPUs), then the share of periods throttled, then the lifetime time."""
    return (r.throttled_s or 0.0, r.throttled_pct or 0.0, r.throttled_s_total or 0.0)


def _retarget(f: Finding, path: str) -> Finding:
    return msgspec.structs.replace(
        f, title=f"{path}: {f.title}",
        evidence=f.evidence + [Evidence(tool=TOOL, counter="cgroup", value=path)],
        next=next_call(TOOL, cgroup_path=path))


def top_children(first: dict[str, CgroupReading], second: dict[str, CgroupReading], interval_s: float,
                 table: Thresholds, top_n: int, warnings: list[str]) -> tuple[TopChildren, list[Finding]]:
    rows: list[ChildRow] = []
    findings: list[Finding] = []
    for path in sorted(second):
        b = second[path]
        a = first.get(path)
        local: list[str] = []
        cpu = cpu_report(a.cpu if a else None, b.cpu, interval_s, local)
        mem = memory_report(a.memory if a else None, b.memory, local)
        warnings += [f"{path}: {w}" for w in local]
        rows.append(_row(path, cpu, mem))
        loud: list[Finding] = []
        if cpu is not None:
            files = "cpu.stat (v1)" if b.cpu and b.cpu.bandwidth_source == "v1" else "cpu.stat"
            loud += cpu_findings(cpu, table["cgroup.cpu_throttled_pct"], interval_s, files)
        if mem is not None:
            loud += memory_findings(mem, table["cgroup.memory_working_set_pct"], interval_s, "memory")
        findings += [_retarget(f, path) for f in loud if f.severity != "info"]
    by_cpu = sorted((r for r in rows if r.cpu_cores), key=lambda r: -(r.cpu_cores or 0.0))[:top_n]
    by_memory = sorted((r for r in rows if r.memory_bytes), key=lambda r: -(r.memory_bytes or 0))[:top_n]
    throttled = [r for r in rows if r.throttled_pct or r.throttled_s_total]
    by_throttling = sorted(throttled, key=_throttle_key, reverse=True)[:top_n]
    top = TopChildren(window_s=round(interval_s, 3), cgroups_seen=len(rows), by_cpu=by_cpu, by_memory=by_memory,
                      by_throttling=by_throttling)
    findings = sort_findings(findings)
    if len(findings) > 2 * top_n:
        warnings.append(f"{len(findings)} cgroup findings; the {2 * top_n} most severe are given (raise top_n for more)")
    return top, findings[:2 * top_n]


def describe(top: TopChildren) -> str:
    """One line: the leader of each ranking."""
    parts: list[str] = []
    if top.by_cpu:
        r = top.by_cpu[0]
        parts.append(f"most CPU {r.cgroup_path} {r.cpu_cores:g} CPUs (limit {r.cpu_limit or 'unknown'})")
    if top.by_memory:
        r = top.by_memory[0]
        parts.append(f"most memory {r.cgroup_path} {mib(r.memory_bytes)} (limit {r.memory_limit or 'unknown'})")
    if top.by_throttling:
        r = top.by_throttling[0]
        parts.append(f"most throttled {r.cgroup_path} {r.throttled_pct or 0:g}% of periods in {top.window_s:g} s")
    else:
        parts.append("none throttled")
    return "; ".join(parts)
