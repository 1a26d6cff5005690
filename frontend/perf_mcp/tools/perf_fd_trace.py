"""perf_fd_trace: watch a process's open file descriptors and say whether it leaks them.

Samples the fd table every interval_s for duration_s: counts by type, growth
(least-squares slope), time to the soft RLIMIT_NOFILE, a leak verdict. The
process's own user reads /proc/PID/fd directly; another user's process
answers EACCES there, and the table then comes from the broker's FdTable job
(polkit action org.perfmcp.inspect). data.method says which was used.

Cancellation: the sleeps between samples and a broker job in flight are
cancelled with the call (the broker client closes its socket).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import limits

from ..contract import Finding
from ..errors import BROKER_START_HINT, GRANT_HINT, ErrorCode, ToolError
from ..fds import analysis
from ..fds.collect import NotPermitted, ProcessGone, read_local, read_status, read_via_broker
from ..fds.parse import FdTable, count_by_type
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..use.config import load_thresholds

NAME = "perf_fd_trace"
Method = Literal["local", "broker"]
METHODS = {
    "local": "/proc/PID/fd readlink + /proc/PID/limits (own process)",
    "broker": "broker fd_table job (another user's process: /proc/PID/fd gave EACCES)",
}


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description="The process to watch.")]
    duration_s: Annotated[float, Meta(ge=1, le=60, description="How long to watch, in seconds.")] = 30.0
    interval_s: Annotated[float, Meta(ge=1, le=10, description="Seconds between samples.")] = 5.0
    include_fd_list: Annotated[bool, Meta(description=(
        "Also list descriptors (fd, type, target): those opened during the window first."))] = False
    max_fds_listed: Annotated[int, Meta(ge=10, le=1000, description="At most this many in the list.")] = 100


class FdLimits(msgspec.Struct, kw_only=True):
    soft: int | None  # None: unlimited
    hard: int | None


class FdTraceData(msgspec.Struct, kw_only=True):
    method: Method
    method_detail: str
    pid: int
    comm: str | None
    uid: int | None
    duration_s: float
    interval_s: float
    samples: list[analysis.FdSample]
    current: int
    by_type: dict[str, int]
    limits: FdLimits | None
    pct_of_soft_limit: float | None
    growth: analysis.Growth
    time_to_soft_limit_s: float | None
    verdict: analysis.Verdict
    verdict_confidence: float
    verdict_reason: str
    new_fds: list[analysis.TargetGroup]
    fd_list: list[analysis.FdEntry] | None
    fd_list_truncated: bool
    broker_job_ids: list[int]
    findings: list[Finding]


def sample_times(duration_s: float, interval_s: float) -> list[float]:
    """0, interval, 2 x interval, ... and duration itself as the last one."""
    n = int(math.floor(duration_s / interval_s + 1e-9))
    times = [round(k * interval_s, 6) for k in range(n + 1)]
    if duration_s - times[-1] > 1e-6:
        times.append(duration_s)
    return times


class _Reader:
    """Local reads until EACCES, then the broker for the rest of the call."""

    def __init__(self, ctx: ToolContext, pid: int, uid: int | None) -> None:
        self.ctx = ctx
        self.pid = pid
        self.uid = uid
        self.method: Method = "local"
        self.job_ids: list[int] = []
        self.truncated = False

    async def read(self) -> FdTable:
        if self.method == "local":
            try:
                return await trio.to_thread.run_sync(read_local, self.pid)
            except NotPermitted:
                self.method = "broker"
        return await self._broker()

    async def _broker(self) -> FdTable:
        owner = f"uid {self.uid}" if self.uid is not None else "another user"
        try:
            table, job_id, truncated = await read_via_broker(self.ctx.broker, self.pid)
        except ToolError as err:
            if err.code == ErrorCode.PERMISSION_DENIED and not err.message.startswith("set-up:"):
                raise ToolError(ErrorCode.PERMISSION_DENIED,
                                f"pid {self.pid} belongs to {owner}; reading its fd table needs the broker's "
                                f"'inspect' grant, which was refused ({err.message})",
                                suggestion=GRANT_HINT + " Or call this tool as the process's own user.") from None
            if err.code == ErrorCode.BROKER_UNAVAILABLE:
                raise ToolError(ErrorCode.BROKER_UNAVAILABLE,
                                f"pid {self.pid} belongs to {owner}, so its fd table can only be read through the "
                                f"perf-mcp broker, which is unavailable ({err.message})",
                                suggestion=BROKER_START_HINT) from None
            raise
        self.job_ids.append(job_id)
        self.truncated |= truncated
        return table


async def _collect(ctx: ToolContext, p: Params, reader: _Reader, warnings: list[str]
                   ) -> tuple[list[FdTable], list[float]]:
    times = sample_times(p.duration_s, p.interval_s)
    tables: list[FdTable] = []
    taken: list[float] = []
    t0 = trio.current_time()
    for k, offset in enumerate(times):
        await trio.sleep_until(t0 + offset)
        try:
            table = await reader.read()
        except (ProcessGone, ToolError) as exc:
            gone = isinstance(exc, ProcessGone) or exc.code == ErrorCode.PID_NOT_FOUND
            if not gone:
                raise
            if len(tables) < 2:
                raise ToolError(ErrorCode.PID_NOT_FOUND, f"process {p.pid} exited before it could be "
                                f"sampled twice") from None
            warnings.append(f"process {p.pid} exited after {taken[-1]:.1f} s; the result covers the samples before")
            break
        elapsed = trio.current_time() - t0
        tables.append(table)
        taken.append(elapsed)
        await ctx.report_progress(round(min(elapsed, p.duration_s), 2), p.duration_s,
                                  f"sample {k + 1}/{len(times)}: {len(table.fds)} fds")
    return tables, taken


def check_combination(p: Params) -> None:
    """Parameters each in range that cannot go together: INVALID_PARAMS saying which."""
    if p.interval_s > p.duration_s:
        raise ToolError(ErrorCode.INVALID_PARAMS,
                        f"interval_s {p.interval_s:g} is longer than duration_s {p.duration_s:g}: a growth needs "
                        f"at least two samples, interval_s must be at most duration_s",
                        suggestion=f"Call again with interval_s <= {p.duration_s:g} (e.g. "
                                   f"interval_s={max(1.0, p.duration_s / 4):g}) or duration_s >= {p.interval_s:g}.")


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    check_combination(p)
    try:
        status = await trio.to_thread.run_sync(read_status, p.pid)
    except ProcessGone:
        raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}") from None
    if status.tgid is not None and status.tgid != p.pid:
        raise ToolError(ErrorCode.INVALID_PARAMS, f"{p.pid} is a thread of process {status.tgid}, not a process",
                        suggestion=f"Pass the process id {status.tgid}; threads share its fd table.")
    thresholds, warnings = load_thresholds()
    reader = _Reader(ctx, p.pid, status.uid_real)
    tables, taken = await _collect(ctx, p, reader, warnings)
    if reader.method == "broker":
        warnings.append(f"/proc/{p.pid}/fd is not readable by this user (EACCES); the broker read it")
    if reader.truncated:
        warnings.append("the broker's output cap cut the fd list: counts are lower bounds")
    for t in tables:
        warnings.extend(w for w in t.warnings if w not in warnings)
    samples = [analysis.sample_of(t, ts) for t, ts in zip(tables, taken, strict=True)]
    g = analysis.growth(samples)
    verdict = analysis.judge(samples, g)
    last = tables[-1]
    soft = last.open_files.soft if last.open_files else None
    eta = analysis.time_to_limit(samples[-1].total, soft, g.slope_per_s) if verdict.verdict != "stable" else None
    source = "/proc/PID/fd" if reader.method == "local" else "broker fd_table"
    fd_list, cut = analysis.fd_list(tables[0], last, p.max_fds_listed) if p.include_fd_list else (None, False)
    data = FdTraceData(
        method=reader.method, method_detail=METHODS[reader.method], pid=p.pid, comm=status.name,
        uid=status.uid_real, duration_s=p.duration_s, interval_s=p.interval_s, samples=samples,
        current=samples[-1].total, by_type=count_by_type(last.fds),
        limits=FdLimits(soft=soft, hard=last.open_files.hard) if last.open_files else None,
        pct_of_soft_limit=round(samples[-1].total / soft * 100.0, 2) if soft else None,
        growth=g, time_to_soft_limit_s=eta, verdict=verdict.verdict, verdict_confidence=verdict.confidence,
        verdict_reason=verdict.reason, new_fds=analysis.new_fd_groups(tables[0], last),
        fd_list=fd_list, fd_list_truncated=cut, broker_job_ids=reader.job_ids,
        findings=analysis.findings(samples, g, verdict, soft, eta, thresholds, p.pid, p.interval_s, source),
    )
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=reader.truncated or cut)


def summarise(d: FdTraceData) -> str:
    name = f"pid {d.pid}" + (f" ({d.comm})" if d.comm else "")
    head = (f"fd trace of {name}: {d.verdict.replace('_', ' ')} ({d.verdict_confidence:.0%}); "
            f"{d.growth.first} -> {d.growth.last} fds in {d.samples[-1].t_s:.0f} s")
    lines = [head]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    lines.append(f"Now: {d.current} fds (" + ", ".join(f"{k} {v}" for k, v in d.by_type.items()) + ")"
                 + (f", soft limit {d.limits.soft}" if d.limits and d.limits.soft else ""))
    if d.growth.slope_per_min is not None:
        lines.append(f"Growth: {d.growth.slope_per_min:+.1f}/min (R² {d.growth.r2})"
                     + (f", soft limit in ~{d.time_to_soft_limit_s:.0f} s" if d.time_to_soft_limit_s else ""))
    if d.new_fds:
        lines.append("New fds: " + ", ".join(f"{g.count} {g.type} in {g.where}" for g in d.new_fds[:5]))
    lines.append(f"Method: {d.method_detail}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="File descriptor trace (leak check)",
    description=(
        "Sample a process's open file descriptors every interval_s for duration_s: counts by type (file, "
        "socket, pipe, eventfd, epoll, anon_inode, ...), growth rate (linear fit), time until the soft "
        "RLIMIT_NOFILE is reached, and a leak verdict with its confidence; optionally the descriptors "
        "themselves. Sends progress every sample. Another user's process is read through the perf-mcp broker "
        "(needs the 'inspect' grant)."
    ),
    params=Params,
    data=FdTraceData,
    handler=run,
)
