"""perf_cgroup_summary: CPU throttling, memory limit pressure, OOM kills, I/O, pids and PSI of one cgroup,
or (no argument) the top child cgroups by CPU, memory and throttling.

The cgroup is named by a pid (its /proc/PID/cgroup) or by a path relative to
the hierarchy root. v2 and v1 are both read: on a hybrid machine the v1
controllers give the limits and counters, the v2 cgroup gives PSI. Two
readings SAMPLE_INTERVAL_S apart give the window figures (usage, throttled
periods, limit hits). Locating is cgroup.locate, reading cgroup.collect,
the rules cgroup.analysis, the listing of children cgroup.children.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import limits

from ..cgroup import analysis, children
from ..cgroup.collect import (
    Located,
    ProcessGone,
    busiest,
    child_paths,
    locate,
    process_comm,
    read_mounts,
    read_proc_cgroup,
    take_child_readings,
    take_reading,
    task_ticks,
)
from ..cgroup.parse import V1_FILES
from ..cgroup.locate import MAX_PATH_LEN, BadCgroupPath, Hierarchy, hierarchies_for_path, \
    hierarchies_for_process, normalise_cgroup_path, unified
from ..contract import Finding
from ..errors import ErrorCode, ToolError
from ..procfs import CgroupMounts
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..use.config import load_thresholds
from ..use.thresholds import Thresholds

NAME = "perf_cgroup_summary"
SAMPLE_INTERVAL_S = 1.0


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "Summarise the cgroup(s) this process belongs to."))] | None = None
    cgroup_path: Annotated[str, Meta(min_length=1, max_length=MAX_PATH_LEN, description=(
        "Or: a cgroup path from the hierarchy root, as /proc/PID/cgroup shows it (e.g. /system.slice/x.service)."
    ))] | None = None
    children: Annotated[bool, Meta(description=(
        "With cgroup_path: rank that cgroup's children instead of summarising it (no argument at all ranks the "
        "root's children)."))] = False
    top_n: Annotated[int, Meta(ge=1, le=50, description=(
        "When ranking children: how many cgroups to list per ranking."))] = 5


class HierarchyInfo(msgspec.Struct, kw_only=True):
    version: str
    controllers: list[str]
    cgroup_path: str
    directory: str


class CgroupSummaryData(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A field left out was not readable here (or is empty); hierarchies lists the
    ones the figures come from (cpu, cpuacct, memory, pids, blkio and v2)."""

    summary: str  # one line
    method: str
    target: str
    cgroup_version: str  # v1, v2, hybrid
    interval_s: float
    findings: list[Finding]
    # one cgroup (pid or cgroup_path)
    pid: int | None = None
    comm: str | None = None
    processes: int | None = None  # in the cgroup (cgroup.procs of its CPU hierarchy, else v2)
    hierarchies: list[HierarchyInfo] = []
    not_found_in: list[str] = []  # mount points of hierarchies where this path has no cgroup
    cpu: analysis.CpuReport | None = None
    memory: analysis.MemoryReport | None = None
    io: analysis.IoReport | None = None
    pids: analysis.PidsReport | None = None
    psi: dict[str, analysis.PsiReport] = {}
    psi_cgroup: str | None = None  # the v2 cgroup the PSI figures belong to ("/" = the whole system)
    # no argument: the root's child cgroups
    top: children.TopChildren | None = None


def _mounts() -> CgroupMounts:
    try:
        mounts, _ = read_mounts()
    except OSError as exc:
        raise ToolError(ErrorCode.EXECUTION_FAILED, f"cannot read /proc/self/mountinfo: {exc}") from None
    if mounts.version == "none":
        raise ToolError(ErrorCode.CGROUP_NOT_FOUND, "no cgroup file system is mounted here",
                        suggestion="Mount cgroup2 at /sys/fs/cgroup (or the v1 controllers), then call again.")
    return mounts


def _hierarchies(p: Params, mounts: CgroupMounts) -> tuple[list[Hierarchy], list[str], str]:
    if p.pid is not None:
        try:
            proc = read_proc_cgroup(p.pid)
        except ProcessGone:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}") from None
        hs, warnings = hierarchies_for_process(proc, mounts)
        return hs, warnings + list(proc.warnings), f"pid {p.pid}"
    assert p.cgroup_path is not None
    try:
        path = normalise_cgroup_path(p.cgroup_path)
    except BadCgroupPath as exc:
        raise ToolError(ErrorCode.INVALID_PARAMS, f"invalid cgroup_path: {exc}",
                        suggestion="Pass a path from the cgroup hierarchy root without '..', such as "
                        "/system.slice/cron.service (see /proc/PID/cgroup), or pass pid instead.") from None
    return hierarchies_for_path(path, mounts), [], f"cgroup {path}"


def _located(hs: list[Hierarchy], target: str, mounts: CgroupMounts) -> Located:
    located = locate(hs)
    if not located.hierarchies:
        points = sorted({m.mount_point for m in mounts.v1.values()} | ({mounts.v2.mount_point} if mounts.v2 else set()))
        raise ToolError(ErrorCode.CGROUP_NOT_FOUND, f"no cgroup for {target} in any hierarchy",
                        suggestion=f"Hierarchies here: {', '.join(points)}. Pass a path that exists under them "
                        "(as /proc/PID/cgroup shows it), or a pid; or no argument for the list of child cgroups.")
    return located


def _children(mounts: CgroupMounts, parent: str) -> tuple[dict[str, Located], list[str]]:
    paths, warnings = child_paths(mounts, children.MAX_CHILDREN, parent)
    return {p: locate(hierarchies_for_path(p, mounts)) for p in paths}, warnings


def _parent(p: Params, mounts: CgroupMounts) -> str:
    if p.cgroup_path is None:
        return "/"
    try:
        parent = normalise_cgroup_path(p.cgroup_path)
    except BadCgroupPath as exc:
        raise ToolError(ErrorCode.INVALID_PARAMS, f"invalid cgroup_path: {exc}",
                        suggestion="Pass a path from the cgroup hierarchy root without '..', such as /system.slice.") \
            from None
    _located(hierarchies_for_path(parent, mounts), f"cgroup {parent}", mounts)  # CGROUP_NOT_FOUND if nowhere
    return parent


async def _top(ctx: ToolContext, p: Params, mounts: CgroupMounts, thresholds: Thresholds,
               warnings: list[str]) -> ToolOutput:
    parent = await trio.to_thread.run_sync(_parent, p, mounts)
    located, more = await trio.to_thread.run_sync(_children, mounts, parent)
    warnings += more
    t0 = trio.current_time()
    first = await trio.to_thread.run_sync(take_child_readings, located)
    await ctx.report_progress(0.0, SAMPLE_INTERVAL_S, "first reading taken")
    await trio.sleep(SAMPLE_INTERVAL_S)
    second = await trio.to_thread.run_sync(take_child_readings, located)
    interval = trio.current_time() - t0
    await ctx.report_progress(SAMPLE_INTERVAL_S, SAMPLE_INTERVAL_S, "done")
    top, findings = children.top_children(first, second, interval, thresholds, p.top_n, warnings)
    loud = [f for f in findings if f.severity != "info"]
    of = "the root" if parent == "/" else parent
    summary = (f"{top.cgroups_seen} child cgroups of {of} ({mounts.version}): " + children.describe(top)
               + (f"; {len(loud)} problem(s)" if loud else ""))
    data = CgroupSummaryData(
        summary=summary,
        method=(f"cgroup {mounts.version} interface files of the children of {parent}, two readings {interval:.2f} s "
                "apart: CPU and throttling over that window, memory as it stands"),
        target=f"children of {parent}", cgroup_version=mounts.version, interval_s=round(interval, 4),
        findings=findings, top=top)
    return ToolOutput(data=data, summary="\n".join([summary] + [f"[{f.severity}] {f.title}" for f in loud]),
                      warnings=warnings)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if p.pid is not None and p.cgroup_path is not None:
        raise ToolError(ErrorCode.INVALID_PARAMS, "give at most one of pid or cgroup_path",
                        suggestion="Pass pid (a process's cgroups), cgroup_path (e.g. /system.slice/x.service), "
                        "or neither for the top child cgroups.")
    if p.children and p.pid is not None:
        raise ToolError(ErrorCode.INVALID_PARAMS, "children ranks the children of a cgroup_path, not of a pid",
                        suggestion="Pass cgroup_path with children=true (the path /proc/PID/cgroup shows), "
                        "or pid without children.")
    thresholds, warnings = load_thresholds()
    mounts = await trio.to_thread.run_sync(_mounts)
    if p.pid is None and (p.cgroup_path is None or p.children):
        return await _top(ctx, p, mounts, thresholds, warnings)
    hs, more, target = await trio.to_thread.run_sync(_hierarchies, p, mounts)
    warnings += more
    located = await trio.to_thread.run_sync(_located, hs, target, mounts)
    comm = process_comm(p.pid) if p.pid is not None else None
    first = await trio.to_thread.run_sync(take_reading, located)
    _, ticks_first = await trio.to_thread.run_sync(task_ticks, located)
    await ctx.report_progress(0.0, SAMPLE_INTERVAL_S, "first reading taken")
    await trio.sleep(SAMPLE_INTERVAL_S)
    second = await trio.to_thread.run_sync(take_reading, located)
    processes, ticks_second = await trio.to_thread.run_sync(task_ticks, located)
    await ctx.report_progress(SAMPLE_INTERVAL_S, SAMPLE_INTERVAL_S, "done")
    v2 = unified(located.hierarchies)
    state = analysis.analyse(first.reading, second.reading, second.t_mono - first.t_mono, thresholds,
                             v1_files=any(h.version == "v1" for h in located.hierarchies),
                             v2_path=v2.cgroup_path if v2 else None,
                             busiest_pid=busiest(ticks_first, ticks_second) or p.pid)
    warnings += state.warnings
    if p.pid is not None and second.reading.cpu is None and second.reading.memory is None:
        warnings.append("no CPU or memory controller files were found for this cgroup")
    data = CgroupSummaryData(
        summary="",
        method=(f"cgroup {mounts.version} interface files, two readings {state.interval_s:.2f} s apart"),
        target=target + (f" ({comm})" if comm else ""),
        pid=p.pid, comm=comm, processes=processes, cgroup_version=mounts.version,
        hierarchies=[HierarchyInfo(version=h.version, controllers=list(h.controllers) or ["(unified)"],
                                   cgroup_path=h.cgroup_path, directory=h.directory)
                     for h in located.hierarchies if h.version == "v2" or set(h.controllers) & set(V1_FILES)],
        not_found_in=[h.mount_point for h in located.missing],
        interval_s=state.interval_s, cpu=state.cpu, memory=state.memory, io=state.io, pids=state.pids,
        psi=state.psi, psi_cgroup=v2.cgroup_path if v2 and state.psi else None, findings=state.findings,
    )
    data.summary = summarise(data)
    loud = [f for f in data.findings if f.severity != "info"]
    return ToolOutput(data=data, summary="\n".join([data.summary] + [f"[{f.severity}] {f.title}" for f in loud]),
                      warnings=warnings)


def summarise(d: CgroupSummaryData) -> str:
    """One line: the problems, CPU against its quota, memory against its limit."""
    problems = [f for f in d.findings if f.severity != "info"]
    parts = [f"{len(problems)} problem(s)" if problems else "no throttling, limit or OOM problems"]
    if d.cpu is not None:
        c = d.cpu
        used = "?" if c.usage_cores is None else f"{c.usage_cores:g}"
        cpu = f"CPU {used} CPUs (quota {c.quota})"
        if c.window_periods:
            cpu += f", throttled {c.window_throttled}/{c.window_periods} periods"
        parts.append(cpu)
    if d.memory is not None:
        parts.append(f"memory {analysis.mib(d.memory.usage_bytes)} (limit {d.memory.limit})")
    if d.pids is not None:
        parts.append(f"{d.pids.current} tasks (max {d.pids.max})")
    return f"cgroup summary of {d.target} ({d.cgroup_version}): " + "; ".join(parts)


TOOL = ToolSpec(
    name=NAME,
    title="cgroup summary (throttling, memory limit, OOM)",
    description=(
        "Without arguments: the root's child cgroups ranked by CPU used, memory used and CFS throttling over "
        "1 s (top_n each; a limit not set is \"none\"), with a finding per throttled or near-limit cgroup. "
        "With pid or cgroup_path: one cgroup's CPU usage against its quota and throttling, memory usage, limit, "
        "working set, limit hits and OOM kills, per-device I/O, pids against pids.max, and PSI where the v2 "
        "hierarchy has it. Reads cgroup v2 and v1 (hybrid) interface files, two readings one second apart. "
        "No privileges needed."
    ),
    params=Params,
    data=CgroupSummaryData,
    handler=run,
)
