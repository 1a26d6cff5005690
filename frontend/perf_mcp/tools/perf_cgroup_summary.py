"""perf_cgroup_summary: CPU throttling, memory limit pressure, OOM kills, I/O, pids and PSI of one cgroup.

The cgroup is named by a pid (its /proc/PID/cgroup) or by a path relative to
the hierarchy root. v2 and v1 are both read: on a hybrid machine the v1
controllers give the limits and counters, the v2 cgroup gives PSI. Two
readings SAMPLE_INTERVAL_S apart give the window figures (usage, throttled
periods, limit hits). Locating is cgroup.locate, reading cgroup.collect,
the rules cgroup.analysis.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import limits

from ..cgroup import analysis
from ..cgroup.collect import Located, ProcessGone, locate, process_comm, read_mounts, read_proc_cgroup, take_reading
from ..cgroup.parse import V1_FILES
from ..cgroup.locate import MAX_PATH_LEN, BadCgroupPath, Hierarchy, hierarchies_for_path, \
    hierarchies_for_process, normalise_cgroup_path, unified
from ..contract import Finding
from ..errors import ErrorCode, ToolError
from ..procfs import CgroupMounts
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..use.config import load_thresholds

NAME = "perf_cgroup_summary"
SAMPLE_INTERVAL_S = 1.0


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "Summarise the cgroup(s) this process belongs to."))] | None = None
    cgroup_path: Annotated[str, Meta(min_length=1, max_length=MAX_PATH_LEN, description=(
        "Or: a cgroup path from the hierarchy root, as /proc/PID/cgroup shows it (e.g. /system.slice/x.service)."
    ))] | None = None


class HierarchyInfo(msgspec.Struct, kw_only=True):
    version: str
    controllers: list[str]
    cgroup_path: str
    directory: str


class CgroupSummaryData(msgspec.Struct, kw_only=True):
    method: str
    target: str
    pid: int | None
    comm: str | None
    cgroup_version: str  # v1, v2, hybrid
    hierarchies: list[HierarchyInfo]
    not_found_in: list[str]  # mount points of hierarchies where this path has no cgroup
    interval_s: float
    cpu: analysis.CpuReport | None
    memory: analysis.MemoryReport | None
    io: analysis.IoReport | None
    pids: analysis.PidsReport | None
    psi: dict[str, analysis.PsiReport]
    psi_cgroup: str | None  # the v2 cgroup the PSI figures belong to ("/" = the whole system)
    findings: list[Finding]


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
                        "(as /proc/PID/cgroup shows it), or a pid.")
    return located


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if (p.pid is None) == (p.cgroup_path is None):
        raise ToolError(ErrorCode.INVALID_PARAMS, "give exactly one of pid or cgroup_path",
                        suggestion="Pass pid (a process's cgroups) or cgroup_path (e.g. /system.slice/x.service).")
    thresholds, warnings = load_thresholds()
    mounts = await trio.to_thread.run_sync(_mounts)
    hs, more, target = await trio.to_thread.run_sync(_hierarchies, p, mounts)
    warnings += more
    located = await trio.to_thread.run_sync(_located, hs, target, mounts)
    comm = process_comm(p.pid) if p.pid is not None else None
    first = await trio.to_thread.run_sync(take_reading, located)
    await ctx.report_progress(0.0, SAMPLE_INTERVAL_S, "first reading taken")
    await trio.sleep(SAMPLE_INTERVAL_S)
    second = await trio.to_thread.run_sync(take_reading, located)
    await ctx.report_progress(SAMPLE_INTERVAL_S, SAMPLE_INTERVAL_S, "done")
    v2 = unified(located.hierarchies)
    state = analysis.analyse(first.reading, second.reading, second.t_mono - first.t_mono, thresholds,
                             v1_files=any(h.version == "v1" for h in located.hierarchies),
                             v2_path=v2.cgroup_path if v2 else None)
    warnings += state.warnings
    if p.pid is not None and second.reading.cpu is None and second.reading.memory is None:
        warnings.append("no CPU or memory controller files were found for this cgroup")
    data = CgroupSummaryData(
        method=(f"cgroup {mounts.version} interface files, two readings {state.interval_s:.2f} s apart"),
        target=target + (f" ({comm})" if comm else ""),
        pid=p.pid, comm=comm, cgroup_version=mounts.version,
        hierarchies=[HierarchyInfo(version=h.version, controllers=list(h.controllers) or ["(unified)"],
                                   cgroup_path=h.cgroup_path, directory=h.directory) for h in located.hierarchies],
        not_found_in=[h.mount_point for h in located.missing],
        interval_s=state.interval_s, cpu=state.cpu, memory=state.memory, io=state.io, pids=state.pids,
        psi=state.psi, psi_cgroup=v2.cgroup_path if v2 and state.psi else None, findings=state.findings,
    )
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1048576:.1f} MiB"


def summarise(d: CgroupSummaryData) -> str:
    problems = [f for f in d.findings if f.severity != "info"]
    head = f"cgroup summary of {d.target} ({d.cgroup_version}): "
    head += f"{len(problems)} problem(s)" if problems else "no throttling, limit or OOM problems"
    lines = [head]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.cpu is not None:
        c = d.cpu
        quota = f"quota {c.quota_cores:g} CPUs" if c.quota_cores is not None else "no CPU quota"
        lines.append(f"CPU: {c.usage_cores if c.usage_cores is not None else '?'} CPUs used, {quota}, "
                     f"throttled {c.window_throttled}/{c.window_periods} periods in the window "
                     f"(lifetime {c.nr_throttled}/{c.nr_periods}, {c.throttled_s} s)")
    if d.memory is not None:
        m = d.memory
        lines.append(f"Memory: {_mib(m.usage_bytes)} of {_mib(m.limit_bytes) if m.limit_bytes else 'no limit'}, "
                     f"working set {_mib(m.working_set_bytes)}, failcnt {m.failcnt}, oom_kill {m.oom_kill}")
    if d.pids is not None:
        lines.append(f"Tasks: {d.pids.current} of {d.pids.limit or 'no limit'}")
    read = set(V1_FILES)
    for h in d.hierarchies:
        if h.version == "v2" or read & set(h.controllers):
            lines.append(f"  {h.version} {','.join(h.controllers)}: {h.directory}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="cgroup summary (throttling, memory limit, OOM)",
    description=(
        "Summarise one cgroup, named by a pid or by its path from the hierarchy root: CPU usage against the "
        "CFS quota and throttling (nr_throttled, throttled time, % of periods throttled), memory usage, limit, "
        "working set, failcnt / memory.events and OOM kills, memory.stat highlights, per-device I/O, pids "
        "against pids.max, and PSI where the v2 hierarchy has it. Reads cgroup v2 and v1 controller files "
        "(hybrid machines), two readings one second apart. No privileges needed."
    ),
    params=Params,
    data=CgroupSummaryData,
    handler=run,
)
