"""perf_triage: the tool an agent calls first. From "the machine is slow" to
ranked root causes, each naming its culprit with the evidence chain and the
next tool call.

The other tools are its collectors (perf_mcp.triage.collectors), run in-process
and concurrently; their answers are correlated (triage.correlate) and ranked
(triage.rank). What could not run (not granted, program missing, timed out)
is listed with its reason, and blind_spots says what the conclusions could
not see. Cancelling the call cancels every collector: their broker
connections close and the broker kills their jobs.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

import msgspec
from msgspec import Meta

from perf_mcp_protocol import limits

from ..errors import ErrorCode, ToolError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..triage.collectors import Collection, Runner, collect
from ..triage.correlate import correlate, findings_count, pid_cgroups
from ..triage.model import Focus, Mode, RootCause, TriageData
from ..triage.rank import rank, tied
from ..use.config import load_thresholds

NAME = "perf_triage"
EXPECTED_S = {"quick": 4.0, "standard": 12.0, "deep": 35.0}
TRACING = ("perf_runq_latency", "perf_syscall_count", "perf_dns_latency", "perf_offcpu_profile", "perf_cpu_profile",
           "perf_io_layers", "perf_bio_latency", "perf_vfs_latency")
WHAT = {
    "perf_runq_latency": "run-queue latency",
    "perf_syscall_count": "system call rates",
    "perf_dns_latency": "DNS lookup latency",
    "perf_offcpu_profile": "off-CPU (blocking) stacks",
    "perf_cpu_profile": "CPU profile (hot functions)",
    "perf_io_layers": "I/O by process and layer",
    "perf_bio_latency": "block I/O latency",
    "perf_vfs_latency": "file system call latency",
    "perf_thread_profile": "the threads of the top process",
    "perf_net_health": "network health (drops, retransmits per socket)",
    "perf_cgroup_summary": "cgroup throttling and memory limits",
    "perf_cgroup_summary.pid": "the pid's cgroup",
    "perf_fd_trace": "the fd growth of the process whose fds grew",
    "perf_use_check": "the USE table",
    "perf_snapshot": "the system snapshot",
    "attribution": "per-process attribution",
}


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    mode: Annotated[Mode, Meta(description=(
        "quick (about 5 s): the sampler's history (USE, snapshot), per-process attribution, cgroups, fd growth, "
        "network health; no privileges. standard (about 10 s): adds run-queue latency, system calls, the threads "
        "of the top process (or pid) and DNS. deep (about 30 s): adds CPU and off-CPU profiles, I/O layers, "
        "block and file latency. Tracing needs the broker's trace grant; without it the answer says what it "
        "could not run."))] = "quick"
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "The process that is slow, when there is one: its threads, off-CPU stacks and cgroup are examined "
        "and the tracing is limited to it."))] | None = None
    focus: Annotated[Focus, Meta(description=(
        "Look only at this resource (cpu, memory, disk, network), or at all of them."))] = "all"


def _blind_spots(p: Params, col: Collection) -> list[str]:
    spots = list(col.blind_spots)
    denied = [c.collector for c in col.could_not_run if c.code == ErrorCode.PERMISSION_DENIED.value]
    if denied:
        spots.append("not granted, so not seen: " + ", ".join(WHAT.get(n, n) for n in denied)
                     + " (the broker's trace/profile grant is missing)")
    missing = [c.collector for c in col.could_not_run if c.code != ErrorCode.PERMISSION_DENIED.value]
    if missing:
        spots.append("not seen (could not run): " + ", ".join(WHAT.get(n, n) for n in missing))
    for note in (col.obs.attribution or {}).get("notes") or []:
        spots.append(f"attribution: {note}")
    if p.mode == "quick":
        spots.append("quick mode traces nothing: run-queue latency, system calls, threads and DNS lookups are "
                     "not seen (mode=standard)")
    elif p.mode == "standard":
        spots.append("standard mode has no CPU or off-CPU profile, I/O layers or block latency (mode=deep)")
    if p.focus != "all":
        spots.append(f"focus={p.focus}: the other resources were not examined")
    if p.pid is None:
        spots.append("cgroups below the root's direct children are judged only for a pid passed as pid")
    use = col.obs.answers.get("perf_use_check") or {}
    if use and (use.get("window_s") or 0) < 5:
        spots.append(f"the background sampler holds {use.get('window_s')} s of history: since-when and trends "
                     "cover only that")
    return spots


# What of the pid asked about each collector examines (said when it could not).
PID_LOOKS = {
    "perf_thread_profile": "its threads",
    "perf_offcpu_profile": "its off-CPU (blocking) stacks",
    "perf_runq_latency": "its run-queue wait",
    "perf_syscall_count": "its system calls",
    "perf_dns_latency": "its DNS lookups",
    "perf_cgroup_summary.pid": "its cgroup",
}


def unexamined(col: Collection) -> list[str]:
    """What could not be seen of the pid asked about: in quick mode what tracing would show; the
    collectors about it that could not run (with why), and the off-CPU part of its thread profile when
    that was unavailable, with how many of its threads were blocked most of the window (the wait that
    could not be explained)."""
    pid = col.obs.pid
    if pid is None:
        return []
    out: list[str] = []
    if col.obs.mode == "quick":  # its threads' CPU demand is read (schedstat), nothing that traces
        out.append("why its threads wait: off-CPU stacks, run-queue wait, system calls, DNS lookups (quick mode "
                   "traces nothing: mode=standard)")
    for c in col.could_not_run:
        if c.collector in PID_LOOKS:
            why = "not granted" if c.code == ErrorCode.PERMISSION_DENIED.value else (c.code or "failed").lower()
            out.append(f"{PID_LOOKS[c.collector]} ({why})")
    tp = col.obs.answers.get("perf_thread_profile") or {}
    off = tp.get("offcpu") or {}
    if tp.get("pid") == pid and off.get("status") == "unavailable" and "perf_offcpu_profile" not in col.obs.answers:
        why = "not granted" if off.get("error_code") == ErrorCode.PERMISSION_DENIED.value else "unavailable"
        threads = tp.get("threads") or []
        blocked = [t for t in threads if t.get("window_s") and (t.get("blocked_ms") or 0) >= 500 * t["window_s"]]
        waited = (f": {len(blocked)} of its {len(threads)} threads were blocked (off CPU, not waiting to run) over "
                  "half the window, on what was not seen" if blocked else "")
        if not any(x.startswith(PID_LOOKS["perf_offcpu_profile"]) for x in out):
            out.append(f"{PID_LOOKS['perf_offcpu_profile']} ({why}){waited}")
    return out


def headline(p: Params, causes: list[RootCause], col: Collection) -> str:
    """The top root cause; when none names the pid asked about and some of it could not be examined,
    what could not be seen of it (never "no problem found" then: it was not all looked at)."""
    serious = [c for c in causes if c.severity != "info"]
    ran = sum(1 for r in col.runs if r.status == "ok")
    tail = f" ({ran} collectors ran, {len(col.could_not_run)} could not)"
    unseen = unexamined(col) if not any(tied(c, p.pid, pid_cgroups(col.obs)) for c in serious) else []
    note = (f"; pid {p.pid} could not be fully examined, not seen: " + "; ".join(unseen)) if unseen else ""
    if not serious:
        if unseen:
            return (f"perf_triage {p.mode}: nothing found in what could be seen; pid {p.pid} could not be fully "
                    f"examined, not seen: " + "; ".join(unseen) + tail)
        return f"perf_triage {p.mode}: no problem found{tail}"
    top = serious[0]
    more = f"; {len(serious) - 1} more" if len(serious) > 1 else ""
    return (f"perf_triage {p.mode}: {top.severity.upper()} {top.kind}: {top.title} "
            f"[confidence {top.confidence:.2f}]{more}{note}{tail}")



def summarise(d: TriageData) -> str:
    lines = [d.summary]
    for i, rc in enumerate(d.root_causes, 1):
        lines.append(f"{i}. [{rc.severity}] {rc.kind} - {rc.culprit.text()}: {rc.title} "
                     f"(score {rc.score}, confidence {rc.confidence})")
        for e in rc.evidence[:3]:
            thr = f" (threshold {e.threshold:g})" if isinstance(e.threshold, int | float) else ""
            lines.append(f"     {e.tool}: {e.counter} = {e.value}{thr}" + (f" - {e.sample}" if e.sample else ""))
        if rc.since:
            lines.append(f"     since {rc.since}")
        if rc.next is not None:
            lines.append(f"     next: {rc.next.tool} {msgspec.json.encode(rc.next.arguments).decode()}")
    for c in d.could_not_run:
        lines.append(f"could not run {c.collector}: {c.code or ''} {c.reason}".rstrip())
    for s in d.blind_spots:
        lines.append(f"blind spot: {s}")
    return "\n".join(lines)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if p.pid is not None and not os.path.exists(f"/proc/{p.pid}"):
        raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process {p.pid}")
    started = time.perf_counter()
    expected = EXPECTED_S[p.mode]
    last = [0.0]

    async def progress(col: Collection, runner: Runner) -> None:
        elapsed = time.perf_counter() - started
        last[0] = min(max(last[0], elapsed), expected * 0.95 if elapsed < expected else last[0] + 0.01)
        running = ", ".join(sorted(col.running)) or "starting"
        await ctx.report_progress(round(last[0], 2), expected,
                                  f"{p.mode}: {runner.done} collector(s) done; running: {running}")

    col = await collect(ctx, p.mode, p.focus, p.pid, progress)
    await ctx.report_progress(expected, expected, "correlating")
    thresholds, th_warnings = load_thresholds()
    causes = rank(correlate(col.obs, thresholds), p.pid, pid_cgroups(col.obs))
    data = TriageData(summary="", mode=p.mode, focus=p.focus, pid=p.pid, root_causes=causes,
                      findings_count=findings_count(col.obs), could_not_run=col.could_not_run,
                      blind_spots=_blind_spots(p, col), collectors=col.runs,
                      window_s=float((col.obs.answers.get("perf_use_check") or {}).get("window_s") or 0.0),
                      duration_s=round(time.perf_counter() - started, 2))
    data.summary = headline(p, causes, col)
    warnings = list(th_warnings)
    for name in ("perf_use_check", "perf_snapshot"):
        warnings += [f"{name}: {w}" for w in col.obs.warnings.get(name, []) if "window covers only" not in w]
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings)


TOOL = ToolSpec(
    name=NAME,
    title="Triage: why is this machine (or process) slow",
    description=(
        "Call this first. Runs the other perf-mcp tools as collectors, concurrently, and correlates their "
        "findings into ranked root causes (kind + culprit: a process, thread, cgroup, device, interface, peer "
        "or looked-up name), each with severity, confidence, the evidence chain (tool, counter, window, "
        "threshold, value), since when, and the next tool call with its arguments. mode quick (~5 s, no "
        "privileges), standard (~10 s, adds tracing), deep (~30 s, adds profiles and I/O latency); pid narrows "
        "to one slow process; focus to one resource. Says what it could not run and what it could not see."
    ),
    params=Params,
    data=TriageData,
    handler=run,
)
