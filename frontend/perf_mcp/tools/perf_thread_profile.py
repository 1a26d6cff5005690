"""perf_thread_profile: which threads of a process use the CPU, wait for it, or block.

Main part (no broker): passes over /proc/PID/task/*/{stat,status,schedstat}
at the start and the end of the window, and in between at most every second,
kept under PASS_BUDGET (1%) of one CPU: a pass over N threads costs about
N x 25 us of CPU, so past ~400 threads the in-between passes thin out. The in-between passes give progress and keep the
answer when the process, or a thread, exits mid-window. These files are
world-readable, so another user's process needs no grant; a file that answers
EACCES anyway (hardened kernels, LSMs) is counted in data.unreadable_files and
its fields are null.

include_offcpu=true adds the broker's OffcpuProfile job over the same window
(ladder: offcputime -p PID, then the broker's bpftrace script) for each
thread's off-CPU time and its biggest blocking stack. Without a broker, without
the 'trace' grant, or when another job of the user is running, the procfs
answer still comes back, with data.offcpu.status "unavailable", the reason and
the error code, and a warning: the thread table is the main result and needs
no privilege, so a missing extra is not a failure of the call.

Cancellation: the sleeps between passes and the broker job (its connection is
closed, which kills the job) are cancelled with the call.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import Backend, JobResult, OffcpuProfile, limits

from ..contract import Finding
from ..errors import ErrorCode, ToolError, single_leaf
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..threads import (
    NotPermitted,
    ProcessGone,
    ProcessSample,
    ThreadBrief,
    ThreadRow,
    Totals,
    Window,
    analyse,
    attach_offcpu,
    findings,
    read_process,
    thread_of,
)
from ..trace.ladder import LadderResult, Rung, RungFailed, Skipped, climb, find_step, run_job, step_failure
from ..trace.offcpu_parse import OffcpuParse, parse_bpftrace_offcpu, parse_offcputime
from ..use.config import load_thresholds

log = logging.getLogger(__name__)

NAME = "perf_thread_profile"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# In-between passes cost at most this share of one CPU (the first and last pass always run).
PASS_BUDGET = 0.01
# Off-CPU blocks shorter than this are not recorded. 1 us = every block: per-thread totals are then complete
# (offcputime aggregates in the kernel by stack, so the output grows with distinct stacks, not with events).
OFFCPU_MIN_BLOCK_US = 1

METHOD_PROCFS = "procfs: /proc/PID/task/*/stat, status, schedstat deltas"


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description="The process (all its threads).")]
    duration_s: Annotated[float, Meta(ge=1, le=30, description="Window length in seconds.")] = 5.0
    include_offcpu: Annotated[bool, Meta(description=(
        "Also trace off-CPU time per thread with its biggest blocking stack (offcputime through the perf-mcp "
        "broker; needs the 'trace' grant). Without it the procfs part still answers."))] = False
    top_n: Annotated[int, Meta(ge=1, le=500, description="List at most this many threads (busiest first).")] = 20


OffcpuStatus = Literal["not_requested", "collected", "unavailable"]


class OffcpuPart(msgspec.Struct, kw_only=True):
    status: OffcpuStatus
    reason: str | None = None  # why it is unavailable
    error_code: str | None = None  # the typed error behind `reason`, when there was one
    method: str | None = None
    backend: str | None = None
    duration_s: int | None = None
    min_block_us: int | None = None
    stacks: int = 0
    unmatched_stacks: int = 0  # stacks of threads no pass saw (created and gone between passes)
    broker_job_id: int | None = None


class ThreadProfileData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    cpu_source: str  # which counter gave the per-thread CPU figures
    pid: int
    comm: str
    uid: int | None
    duration_s: float
    window_s: float  # measured between the first and the last pass
    passes: int
    process_exited: bool
    totals: Totals
    threads: list[ThreadRow]
    threads_total: int
    threads_listed: int
    appeared: list[ThreadBrief]
    exited: list[ThreadBrief]
    unreadable_files: dict[str, int]
    offcpu: OffcpuPart
    findings: list[Finding]


# The off-CPU part's ladder (the procfs part needs no rung: it always runs).
RUNGS: list[Rung[Params]] = [
    Rung(Backend.LIBBPF, "offcputime -p PID (libbpf-tools)", programs=("offcputime",), needs=("btf",)),
    Rung(Backend.BPFTRACE, "bpftrace on sched:sched_switch (offcpu.bt)", programs=("bpftrace",),
         needs=("tracepoints",)),
]
LADDER = RUNGS
_STEP = {Backend.LIBBPF: "offcputime", Backend.BPFTRACE: "offcpu"}
_PARSERS: dict[Backend, Callable[[bytes], OffcpuParse]] = {
    Backend.LIBBPF: lambda raw: parse_offcputime(raw.decode("utf-8", "replace")),
    Backend.BPFTRACE: parse_bpftrace_offcpu,
}

CPU_SOURCES = {
    "schedstat": "schedstat on-CPU ns (exact); user/system split from stat ticks",
    "ticks": f"stat utime+stime clock ticks ({1000 // CLK_TCK} ms resolution): schedstat was not readable",
    "mixed": "schedstat on-CPU ns where readable, stat ticks for the other threads",
}


def _timed_read(pid: int) -> tuple[ProcessSample, float]:
    """One pass and the CPU seconds it took (thread CPU time: on a busy machine the wall time is mostly waiting)."""
    c0 = time.thread_time()
    sample = read_process(pid)
    return sample, time.thread_time() - c0


async def _pass(pid: int) -> tuple[ProcessSample, float]:
    return await trio.to_thread.run_sync(_timed_read, pid)


class _Sampler:
    """The procfs window: first pass, in-between passes on a budget, last pass at duration_s."""

    def __init__(self, ctx: ToolContext, pid: int, duration_s: float, report: bool) -> None:
        self.ctx = ctx
        self.pid = pid
        self.duration_s = duration_s
        self.report = report
        self.window: Window | None = None
        self.exited_after_s: float | None = None

    async def run(self, first: ProcessSample, cost: float, t0: float) -> Window:
        window = self.window = Window(first)
        last_due = t0  # when the last pass was due (scheduled times: no drift from wake-up delays)
        k = 0
        while True:
            k += 1
            due = min(t0 + k, t0 + self.duration_s)
            await trio.sleep_until(due)
            final = due >= t0 + self.duration_s
            if final or due - last_due >= max(1.0, cost / PASS_BUDGET) - 1e-6:
                try:
                    sample, cost = await _pass(self.pid)
                except ProcessGone:
                    self.exited_after_s = round(trio.current_time() - t0, 2)
                    return window
                last_due = due
                window.add(sample)
            if self.report:
                elapsed = min(trio.current_time() - t0, self.duration_s)
                await self.ctx.report_progress(round(elapsed, 1), self.duration_s,
                                               f"{elapsed:.0f}/{self.duration_s:g} s: {len(window.last.tasks)} threads")
            if final:
                return window


async def _offcpu(ctx: ToolContext, p: Params, seconds: int) -> tuple[LadderResult[OffcpuParse], OffcpuPart]:
    async def attempt(rung: Rung[Params]) -> tuple[OffcpuParse, JobResult | None]:
        assert rung.backend is not None
        request = OffcpuProfile(backend=rung.backend, duration_s=seconds, min_block_us=OFFCPU_MIN_BLOCK_US,
                                pid=p.pid)
        job = await run_job(ctx, request, expected_s=seconds, label=rung.method)
        step = find_step(job, _STEP[rung.backend])
        reason = step_failure(step)
        if reason is not None:
            raise RungFailed(reason)
        assert step is not None
        parsed = _PARSERS[rung.backend](step.stdout)
        if not parsed.stacks and parsed.bad_lines:
            raise ToolError(ErrorCode.PARSE_ERROR, f"none of the off-CPU output could be read "
                                                   f"({parsed.bad_lines} bad lines)")
        if step.stdout_truncated:
            parsed = msgspec.structs.replace(parsed, truncated=True)
        return parsed, job

    result = await climb(ctx, RUNGS, p, attempt)
    part = OffcpuPart(status="collected", method=result.method, backend=result.backend, duration_s=seconds,
                      min_block_us=OFFCPU_MIN_BLOCK_US, stacks=len(result.value.stacks),
                      broker_job_id=result.job.job_id if result.job else None)
    return result, part


def _unavailable(err: ToolError) -> OffcpuPart:
    reasons = {
        ErrorCode.BROKER_UNAVAILABLE: "no broker",
        ErrorCode.PERMISSION_DENIED: "not granted (the broker's 'trace' action)",
        ErrorCode.PROFILER_BUSY: "another profiling or tracing job of this user is running",
        ErrorCode.CAPABILITY_MISSING: "no off-CPU program can run here",
        ErrorCode.PID_NOT_FOUND: "the process was gone when the trace started",
    }
    head = reasons.get(err.code, "the off-CPU trace failed")
    return OffcpuPart(status="unavailable", reason=f"{head}: {err.message}", error_code=err.code.value)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    owner = thread_of(p.pid)
    if owner is not None:
        raise ToolError(ErrorCode.INVALID_PARAMS, f"{p.pid} is a thread of process {owner}, not a process",
                        suggestion=f"Pass the process id: pid={owner} (its threads are all profiled).")
    t0 = trio.current_time()
    try:
        first, cost = await _pass(p.pid)
    except ProcessGone:
        raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}") from None
    except NotPermitted:
        raise ToolError(ErrorCode.PERMISSION_DENIED, f"/proc/{p.pid}/stat is not readable by this user: /proc is "
                        "mounted with hidepid", suggestion="Remount /proc without hidepid (or with gid= of a group "
                        "this user is in), or call this tool as the process's own user.") from None
    try:
        uid: int | None = os.stat(f"/proc/{p.pid}").st_uid
    except OSError:
        uid = None
    thresholds, warnings = load_thresholds()
    sampler = _Sampler(ctx, p.pid, p.duration_s, report=not p.include_offcpu)
    seconds = max(1, math.ceil(p.duration_s))
    off: tuple[LadderResult[OffcpuParse], OffcpuPart] | None = None
    part = OffcpuPart(status="not_requested")

    async def offcpu_task() -> None:
        nonlocal off, part
        try:
            off = await _offcpu(ctx, p, seconds)
            part = off[1]
        except ToolError as err:
            part = _unavailable(err)
        except BaseExceptionGroup as group:  # a ToolError from inside a nursery
            leaf = single_leaf(group)
            if not isinstance(leaf, ToolError):
                raise
            part = _unavailable(leaf)

    try:
        async with trio.open_nursery() as nursery:
            if p.include_offcpu:
                nursery.start_soon(offcpu_task)
            window = await sampler.run(first, cost, t0)
    except BaseExceptionGroup as group:
        raise single_leaf(group) from None

    if sampler.exited_after_s is not None:
        if window.passes < 2:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"process {p.pid} exited {sampler.exited_after_s:.1f} s into "
                            "the window, before a second pass over its threads")
        warnings.append(f"process {p.pid} exited {sampler.exited_after_s:.1f} s into the window; the figures cover "
                        f"the {window.last.process.t_ns / 1e9 - first.process.t_ns / 1e9:.1f} s up to the last pass")
    result = analyse(window, CLK_TCK, process_exited=sampler.exited_after_s is not None)
    skipped: list[Skipped] = []
    method, backend = METHOD_PROCFS, "procfs"
    if off is not None:
        ladder, part = off
        part.unmatched_stacks = attach_offcpu(result, ladder.value.stacks)
        skipped = ladder.skipped
        warnings += ladder.warnings()
        method, backend = f"{METHOD_PROCFS} + {ladder.method}", ladder.backend
        parsed = ladder.value
        if parsed.truncated:
            warnings.append("the off-CPU output was cut short: off-CPU times are lower bounds")
        if parsed.lost_entries:
            warnings.append(f"{parsed.lost_entries} off-CPU entries lost their user stack and were left out")
        if parsed.bad_lines:
            warnings.append(f"{parsed.bad_lines} lines of off-CPU output could not be read")
        warnings.append(f"off-CPU time is the tracer's own {seconds} s window, which starts when its BPF program "
                        "is attached (a second or more after the procfs window) and counts a block when it ends "
                        "(a thread blocked for the whole window shows none: see its blocked_ms)")
    elif p.include_offcpu:
        warnings.append(f"off-CPU part unavailable ({part.reason}); the thread table is complete without it")
    if window.unreadable:
        warnings.append("unreadable files (EACCES) on some threads: "
                        + ", ".join(f"{k} x{v}" for k, v in sorted(window.unreadable.items()))
                        + "; their fields are null")
    if window.schedstat_missing:
        warnings.append("this kernel has no /proc/PID/task/TID/schedstat (CONFIG_SCHED_INFO): CPU from stat ticks, "
                        "no run-queue wait")
    warnings += window.warnings[:10]

    rows = result.rows
    def brief(kinds: tuple[str, ...]) -> list[ThreadBrief]:
        return [ThreadBrief(tid=r.tid, name=r.name, cpu_pct=r.cpu_pct, window_s=r.window_s)
                for r in rows if r.lifetime in kinds][: p.top_n]

    data = ThreadProfileData(
        method=method, backend=backend, skipped=skipped, cpu_source=CPU_SOURCES[result.cpu_source], pid=p.pid,
        comm=window.last.process.name, uid=uid, duration_s=p.duration_s, window_s=result.window_s,
        passes=result.passes, process_exited=result.process_exited, totals=result.totals,
        threads=rows[: p.top_n], threads_total=len(rows), threads_listed=min(len(rows), p.top_n),
        appeared=brief(("appeared", "appeared_and_exited")), exited=brief(("exited", "appeared_and_exited")),
        unreadable_files=dict(window.unreadable), offcpu=part,
        findings=findings(result, thresholds, p.pid, p.duration_s, offcpu_ran=off is not None),
    )
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=len(rows) > p.top_n)


def summarise(d: ThreadProfileData) -> str:
    t = d.totals
    head = (f"Threads of pid {d.pid} ({d.comm}) over {d.window_s:.1f} s: {t.cpu_pct:.0f}% CPU in "
            f"{d.threads_total} threads")
    if d.threads:
        top = d.threads[0]
        head += f"; busiest '{top.name}' (tid {top.tid}) {top.cpu_pct:.0f}%"
    lines = [head]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    lines.append(" tid      name             cpu%  usr%  sys%  vol/s  invol/s  runq ms  state")
    for r in d.threads[:10]:
        lines.append(f" {r.tid:<8} {r.name[:16]:<16} {r.cpu_pct:5.1f} {_f(r.user_pct)} {_f(r.system_pct)} "
                     f"{_f(r.voluntary_switches_per_s, 6)} {_f(r.involuntary_switches_per_s, 8)} "
                     f"{_f(r.runq_wait_ms, 8)}  {r.state}"
                     + (f"  off-CPU {r.offcpu_ms / 1000:.2f} s in {r.offcpu_blocked_in}"
                        if r.offcpu_ms and r.offcpu_blocked_in else ""))
    if d.threads_total > 10:
        lines.append(f" ... {d.threads_total - 10} more threads in data.threads (top_n={d.threads_listed})"
                     if d.threads_listed > 10 else f" ... {d.threads_total - 10} more threads")
    if d.appeared or d.exited:
        lines.append(f"Appeared: {t.threads_appeared}, exited: {t.threads_exited}")
    if d.offcpu.status == "unavailable":
        lines.append(f"Off-CPU: unavailable ({d.offcpu.reason})")
    lines.append(f"Method: {d.method}; CPU: {d.cpu_source}")
    return "\n".join(lines)


def _f(value: float | None, width: int = 5) -> str:
    return f"{value:{width}.1f}" if value is not None else " " * (width - 1) + "-"


TOOL = ToolSpec(
    name=NAME,
    title="Per-thread CPU, context switches and run-queue wait",
    description=(
        "Profile the threads of one process over duration_s from /proc/PID/task/*/stat, status and schedstat "
        "(no privilege needed, any user's process): per thread CPU % of one CPU (schedstat ns, exact) with the "
        "user/system split, voluntary and involuntary context switches per second, run-queue wait (total and "
        "per timeslice), blocked time and state; threads that appeared or exited; process totals; findings "
        "(single-thread bottleneck, CPU contention) with next steps. include_offcpu=true adds each thread's "
        "off-CPU time and biggest blocking stack through the perf-mcp broker ('trace' grant); when that is not "
        "possible the procfs answer still comes back with data.offcpu saying why."
    ),
    params=Params,
    data=ThreadProfileData,
    handler=run,
)
