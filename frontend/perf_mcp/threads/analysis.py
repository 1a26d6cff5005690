"""Per-thread rates over a window, process totals and findings (pure).

A `Window` is fed passes over /proc/PID/task (parse.ProcessSample): the first
is the baseline, the latest the end, and every thread's first and last sight
is kept, so a thread that exits mid-window is still reported (up to the pass
that last saw it) and a thread created during the window is measured from its
creation (stat starttime; all its counters start at zero).

Threads are keyed by (tid, starttime): a tid reused within the window is two
threads, not one thread with counters that went backwards.

CPU per thread: schedstat's on-CPU ns when both ends have it (exact), else
utime+stime clock ticks; the user/system split always comes from the ticks
(the kernel keeps no ns split per thread). "Blocked" is what is left of the
window when on-CPU time and run-queue wait are taken out: sleeping, waiting on
I/O, locks or futexes (schedstat only).

Findings point to the drill-down (Finding.next) on the same pid: a thread hot
on CPU to perf_cpu_profile, threads waiting for a CPU to perf_runq_latency, a
thread blocked off CPU to perf_offcpu_profile.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from perf_mcp_protocol import limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..use.thresholds import Thresholds
from ..trace.offcpu_parse import OffcpuStack
from .parse import ProcessSample, TaskSample

TOOL = "perf_thread_profile"
Lifetime = Literal["whole_window", "appeared", "exited", "appeared_and_exited"]
CpuSource = Literal["schedstat", "ticks"]
# Per-timeslice run-queue wait is judged only for threads that ran at least this often (one long wait is noise).
MIN_TIMESLICES_FOR_WAIT = 5
MAX_BOTTLENECK_FINDINGS = 3
TOP_STACK_FRAMES = 16  # frames of a thread's biggest blocking stack kept in the answer (leaf side)
STATE_NAMES = {"R": "running", "S": "sleeping", "D": "disk sleep", "T": "stopped", "t": "tracing stop",
               "X": "dead", "Z": "zombie", "P": "parked", "I": "idle", "W": "waking", "K": "wakekill"}

Key = tuple[int, int]  # (tid, start_ticks)


class ThreadRow(msgspec.Struct, kw_only=True):
    tid: int
    name: str
    state: str  # at the last pass that saw the thread, e.g. "S (sleeping)"
    lifetime: Lifetime
    window_s: float  # the part of the window this row covers
    cpu_pct: float  # of one CPU
    user_pct: float | None  # of one CPU; None when the ticks cannot split it
    system_pct: float | None
    cpu_source: CpuSource
    oncpu_ms: float
    voluntary_switches_per_s: float | None
    involuntary_switches_per_s: float | None
    runq_wait_ms: float | None
    runq_wait_pct: float | None  # of the row's window
    runq_wait_per_timeslice_ms: float | None
    timeslices: int | None
    blocked_ms: float | None  # window - on CPU - run-queue wait (sleeping/blocked), schedstat only
    offcpu_ms: float | None = None  # from the off-CPU profile, when it ran
    offcpu_top_stack: list[str] | None = None  # its biggest blocking stack, root first, leaf last
    offcpu_top_stack_ms: float | None = None
    offcpu_blocked_in: str | None = None  # innermost user frame of that stack (else the kernel leaf)


class ThreadBrief(msgspec.Struct, kw_only=True):
    tid: int
    name: str
    cpu_pct: float
    window_s: float


class Totals(msgspec.Struct, kw_only=True):
    threads_at_start: int
    threads_at_end: int
    threads_appeared: int
    threads_exited: int
    cpu_pct: float  # /proc/PID/stat utime+stime: every thread, those that exited too (ticks)
    user_pct: float
    system_pct: float
    threads_cpu_pct: float  # the sum over the threads seen (cpu_source of each)
    voluntary_switches_per_s: float | None
    involuntary_switches_per_s: float | None
    runq_wait_ms: float | None
    offcpu_ms: float | None = None


class Analysis(msgspec.Struct, kw_only=True):
    window_s: float
    passes: int
    cpu_source: str  # "schedstat", "ticks" or "mixed"
    rows: list[ThreadRow]  # every thread, busiest first
    totals: Totals
    process_exited: bool


class Window:
    """Accumulates passes; keeps what the rows need, not every pass."""

    def __init__(self, first: ProcessSample) -> None:
        self.first = first
        self.last = first
        self.passes = 1
        self.first_seen: dict[Key, TaskSample] = {_key(t): t for t in first.tasks.values()}
        self.last_seen: dict[Key, TaskSample] = dict(self.first_seen)
        self.unreadable: dict[str, int] = dict(first.unreadable)
        self.schedstat_missing = first.schedstat_missing
        self.warnings: list[str] = list(first.warnings)

    def add(self, sample: ProcessSample) -> None:
        self.last = sample
        self.passes += 1
        for task in sample.tasks.values():
            key = _key(task)
            self.first_seen.setdefault(key, task)
            self.last_seen[key] = task
        for kind, n in sample.unreadable.items():
            self.unreadable[kind] = max(self.unreadable.get(kind, 0), n)
        self.schedstat_missing = max(self.schedstat_missing, sample.schedstat_missing)
        self.warnings.extend(w for w in sample.warnings if w not in self.warnings)


def _key(t: TaskSample) -> Key:
    return (t.tid, t.start_ticks)


def state_text(letter: str) -> str:
    name = STATE_NAMES.get(letter)
    return f"{letter} ({name})" if name else letter


def _rate(delta: int | None, seconds: float) -> float | None:
    return None if delta is None else round(max(delta, 0) / seconds, 2)


def thread_row(a: TaskSample | None, b: TaskSample, lifetime: Lifetime, window_start_ns: int,
               clk_tck: int) -> ThreadRow:
    """One thread from its baseline `a` (None: created during the window) to its last sight `b`."""
    tick_ns = 1_000_000_000 // clk_tck
    if a is b:  # seen by one pass only (the first, then gone): no interval to take a rate over
        return ThreadRow(tid=b.tid, name=b.name, state=state_text(b.state), lifetime=lifetime, window_s=0.0,
                         cpu_pct=0.0, user_pct=None, system_pct=None,
                         cpu_source="schedstat" if b.schedstat else "ticks", oncpu_ms=0.0,
                         voluntary_switches_per_s=None, involuntary_switches_per_s=None, runq_wait_ms=None,
                         runq_wait_pct=None, runq_wait_per_timeslice_ms=None, timeslices=None, blocked_ms=None)
    if a is not None:
        begin = a.t_ns
    else:
        begin = max(window_start_ns, b.start_ticks * tick_ns)
    span_ns = max(b.t_ns - begin, tick_ns)  # never less than one tick: a thread born just before the read
    span_s = span_ns / 1e9
    du = max(b.utime_ticks - (a.utime_ticks if a else 0), 0)
    ds = max(b.stime_ticks - (a.stime_ticks if a else 0), 0)
    sa, sb = (a.schedstat if a else None), b.schedstat
    exact = sb is not None and (a is None or sa is not None)
    if exact:
        assert sb is not None
        oncpu_ns = max(sb.oncpu_ns - (sa.oncpu_ns if sa else 0), 0)
        wait_ns: int | None = max(sb.runq_wait_ns - (sa.runq_wait_ns if sa else 0), 0)
        slices: int | None = max(sb.timeslices - (sa.timeslices if sa else 0), 0)
    else:
        oncpu_ns, wait_ns, slices = (du + ds) * tick_ns, None, None
    cpu_pct = oncpu_ns / span_ns * 100.0
    user_pct = system_pct = None
    if du + ds > 0:
        user_pct = round(cpu_pct * du / (du + ds), 2)
        system_pct = round(max(cpu_pct - user_pct, 0.0), 2)
    elif oncpu_ns == 0:
        user_pct = system_pct = 0.0
    vol = invol = None
    if b.switches is not None and (a is None or a.switches is not None):
        vol = b.switches.voluntary - (a.switches.voluntary if a and a.switches else 0)
        invol = b.switches.involuntary - (a.switches.involuntary if a and a.switches else 0)
    blocked = None
    if wait_ns is not None:
        blocked = round(max(span_ns - oncpu_ns - wait_ns, 0) / 1e6, 3)
    return ThreadRow(
        tid=b.tid, name=b.name, state=state_text(b.state), lifetime=lifetime, window_s=round(span_s, 3),
        cpu_pct=round(cpu_pct, 2), user_pct=user_pct, system_pct=system_pct,
        cpu_source="schedstat" if exact else "ticks", oncpu_ms=round(oncpu_ns / 1e6, 3),
        voluntary_switches_per_s=_rate(vol, span_s), involuntary_switches_per_s=_rate(invol, span_s),
        runq_wait_ms=None if wait_ns is None else round(wait_ns / 1e6, 3),
        runq_wait_pct=None if wait_ns is None else round(wait_ns / span_ns * 100.0, 2),
        runq_wait_per_timeslice_ms=(round(wait_ns / slices / 1e6, 3) if wait_ns is not None and slices else None),
        timeslices=slices, blocked_ms=blocked,
    )


def analyse(w: Window, clk_tck: int, *, process_exited: bool = False) -> Analysis:
    first, last = w.first, w.last
    start_ns = first.process.t_ns
    span_ns = max(last.process.t_ns - start_ns, 1)
    span_s = span_ns / 1e9
    at_start = {_key(t) for t in first.tasks.values()}
    at_end = {_key(t) for t in last.tasks.values()}
    rows: list[ThreadRow] = []
    for key, seen in w.last_seen.items():
        began = key in at_start
        ended = key in at_end
        if began and ended:
            lifetime: Lifetime = "whole_window"
        elif began:
            lifetime = "exited"
        elif ended:
            lifetime = "appeared"
        else:
            lifetime = "appeared_and_exited"
        baseline = w.first_seen[key] if began else None
        if process_exited and lifetime == "exited":
            lifetime = "whole_window"  # the window ends at the last pass; nothing exited before it
        rows.append(thread_row(baseline, seen, lifetime, start_ns, clk_tck))
    rows.sort(key=lambda r: (-r.cpu_pct, -(r.runq_wait_ms or 0.0), r.tid))

    tick_ns = 1_000_000_000 // clk_tck
    du = max(last.process.utime_ticks - first.process.utime_ticks, 0)
    ds = max(last.process.stime_ticks - first.process.stime_ticks, 0)
    sources = {r.cpu_source for r in rows}

    vol = _sum([None if r.voluntary_switches_per_s is None else r.voluntary_switches_per_s * r.window_s
                for r in rows])
    invol = _sum([None if r.involuntary_switches_per_s is None else r.involuntary_switches_per_s * r.window_s
                  for r in rows])
    totals = Totals(
        threads_at_start=len(at_start), threads_at_end=len(at_end),
        threads_appeared=sum(r.lifetime in ("appeared", "appeared_and_exited") for r in rows),
        threads_exited=sum(r.lifetime in ("exited", "appeared_and_exited") for r in rows),
        cpu_pct=round((du + ds) * tick_ns / span_ns * 100.0, 2),
        user_pct=round(du * tick_ns / span_ns * 100.0, 2),
        system_pct=round(ds * tick_ns / span_ns * 100.0, 2),
        threads_cpu_pct=round(sum(r.oncpu_ms for r in rows) * 1e6 / span_ns * 100.0, 2),
        voluntary_switches_per_s=None if vol is None else round(vol / span_s, 2),
        involuntary_switches_per_s=None if invol is None else round(invol / span_s, 2),
        runq_wait_ms=_sum([r.runq_wait_ms for r in rows]),
    )
    return Analysis(window_s=round(span_s, 3), passes=w.passes,
                    cpu_source=sources.pop() if len(sources) == 1 else ("mixed" if sources else "schedstat"),
                    rows=rows, totals=totals, process_exited=process_exited)


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 3) if known else None


# ---------------------------------------------------------------- off-CPU stacks


def attach_offcpu(a: Analysis, stacks: list[OffcpuStack], top_frames: int = TOP_STACK_FRAMES) -> int:
    """Per-thread off-CPU time and biggest blocking stack from an off-CPU profile
    (offcputime keys its stacks by thread id). Returns how many stacks matched
    no thread of the window (a thread that came and went between passes)."""
    by_tid: dict[int, list[OffcpuStack]] = {}
    for s in stacks:
        by_tid.setdefault(s.tid if s.tid is not None else s.pid, []).append(s)
    rows_by_tid: dict[int, ThreadRow] = {}
    for r in a.rows:  # a reused tid: the later thread (rows are unique per (tid, start))
        if r.tid not in rows_by_tid or r.lifetime in ("whole_window", "appeared"):
            rows_by_tid[r.tid] = r
    unmatched = 0
    for tid, mine in by_tid.items():
        r = rows_by_tid.get(tid)
        if r is None:
            unmatched += len(mine)
            continue
        top = max(mine, key=lambda s: s.offcpu_us)
        r.offcpu_ms = round(sum(s.offcpu_us for s in mine) / 1000.0, 3)
        r.offcpu_top_stack = top.frames[-top_frames:]
        r.offcpu_top_stack_ms = round(top.offcpu_us / 1000.0, 3)
        r.offcpu_blocked_in = blocked_in(top)
    for r in a.rows:
        if r.offcpu_ms is None:
            r.offcpu_ms = 0.0
    a.totals.offcpu_ms = round(sum(r.offcpu_ms or 0.0 for r in a.rows), 3)
    return unmatched


def blocked_in(stack: OffcpuStack) -> str | None:
    """The innermost user-space frame (the code that made the blocking call), else the kernel leaf."""
    user = stack.frames[: len(stack.frames) - stack.kernel_frames]
    if user:
        return user[-1]
    return stack.frames[-1] if stack.frames else None


# ---------------------------------------------------------------- findings


def _who(r: ThreadRow) -> str:
    return f"thread '{r.name}' (tid {r.tid})"


def findings(a: Analysis, table: Thresholds, pid: int, duration_s: float, *, offcpu_ran: bool) -> list[Finding]:
    out: list[Finding] = []
    out += _bottlenecks(a, table, pid)
    contention = _contention(a, table, pid, duration_s)
    if contention is not None:
        out.append(contention)
    if offcpu_ran:
        blocked = _blocked(a, pid, duration_s)
        if blocked is not None:
            out.append(blocked)
    return sort_findings(out)


def _bottlenecks(a: Analysis, table: Thresholds, pid: int) -> list[Finding]:
    row = table["process.thread_cpu_pct"]
    hot = [r for r in a.rows if row.severity(r.cpu_pct) is not None and r.window_s >= 0.5]
    out: list[Finding] = []
    others = sum(r.cpu_pct for r in a.rows) - sum(r.cpu_pct for r in hot)
    for r in hot[:MAX_BOTTLENECK_FINDINGS]:
        severity = row.severity(r.cpu_pct)
        assert severity is not None
        split = (f" ({r.user_pct:.0f}% user, {r.system_pct:.0f}% system)"
                 if r.user_pct is not None and r.system_pct is not None else "")
        single = len(hot) == 1
        title = (f"{_who(r)} used {r.cpu_pct:.0f}% of one CPU: a single-thread bottleneck" if single else
                 f"{_who(r)} used {r.cpu_pct:.0f}% of one CPU ({len(hot)} threads are CPU-bound)")
        detail = (f"One thread can use at most one CPU: work that runs on {_who(r)} cannot go faster by "
                  f"adding CPUs while it sits at {r.cpu_pct:.0f}%{split}; the other threads used "
                  f"{max(others, 0):.0f}% together.")
        kernel_heavy = r.system_pct is not None and r.cpu_pct > 0 and r.system_pct / r.cpu_pct > 0.5
        where = ("mostly in the kernel: perf_syscall_count with pid={pid} shows which system calls"
                 .format(pid=pid) if kernel_heavy else "")
        out.append(Finding(
            id="process.single_thread_bottleneck" if single else "process.cpu_bound_thread",
            severity=severity, resource="cpu", title=title, detail=detail + (f" It runs {where}." if where else ""),
            confidence=0.9 if r.cpu_source == "schedstat" else 0.75,
            metrics={"cpu_pct": r.cpu_pct, "tid": float(r.tid), **({"user_pct": r.user_pct} if r.user_pct is not None
                                                                   else {})},
            evidence=[Evidence(tool=TOOL, counter=("/proc/PID/task/TID/schedstat on-CPU ns" if r.cpu_source ==
                                                   "schedstat" else "/proc/PID/task/TID/stat utime+stime"),
                               value=r.cpu_pct, threshold=row.limit(severity), window_s=r.window_s,
                               sample=f"tid {r.tid} '{r.name}': {r.oncpu_ms / 1000:.2f} s on CPU in "
                                      f"{r.window_s:.2f} s")],
            suggestion=(f"perf_cpu_profile with pid={pid}, duration_s=10 shows where {_who(r)} spends its CPU "
                        f"(its stacks start with the comm '{r.name}'); then make that work cheaper or split it "
                        "across threads."),
            next=next_call("perf_cpu_profile", pid=pid, duration_s=10),
        ))
    return out


def _contention(a: Analysis, table: Thresholds, pid: int, duration_s: float) -> Finding | None:
    rows = {k: table[k] for k in ("process.thread_runq_wait_pct", "process.thread_runq_wait_per_timeslice_ms",
                                   "process.thread_involuntary_switches_per_s")}
    ranked = {"critical": 2, "warning": 1}
    worst: tuple[int, float, ThreadRow, list[Evidence]] | None = None
    affected = 0
    for r in a.rows:
        if r.window_s < 0.5:
            continue
        values = {
            "process.thread_runq_wait_pct": r.runq_wait_pct,
            "process.thread_runq_wait_per_timeslice_ms": (r.runq_wait_per_timeslice_ms
                                                          if (r.timeslices or 0) >= MIN_TIMESLICES_FOR_WAIT else None),
            "process.thread_involuntary_switches_per_s": r.involuntary_switches_per_s,
        }
        evidence: list[Evidence] = []
        level = 0
        for key, value in values.items():
            severity = rows[key].severity(value)
            if severity is None:
                continue
            level = max(level, ranked[severity])
            evidence.append(Evidence(tool=TOOL, counter=_COUNTERS[key], value=value,
                                     threshold=rows[key].limit(severity), window_s=r.window_s,
                                     sample=f"tid {r.tid} '{r.name}'"))
        if not evidence:
            continue
        affected += 1
        score = (r.runq_wait_pct or 0.0) + (r.involuntary_switches_per_s or 0.0) / 100.0
        if worst is None or (level, score) > (worst[0], worst[1]):
            worst = (level, score, r, evidence)
    if worst is None:
        return None
    level, _, r, evidence = worst
    runq_s = min(max(int(duration_s), 5), limits.TRACE_SHORT_DURATION_S[1])
    wait = (f"waited {r.runq_wait_ms:.0f} ms runnable on a run queue ({r.runq_wait_pct:.0f}% of the window"
            + (f", {r.runq_wait_per_timeslice_ms:.2f} ms per timeslice" if r.runq_wait_per_timeslice_ms else "")
            + ")") if r.runq_wait_ms is not None else "was preempted often"
    invol = (f" and was preempted {r.involuntary_switches_per_s:.0f} times/s"
             if r.involuntary_switches_per_s is not None else "")
    return Finding(
        id="process.thread_cpu_contention", severity="critical" if level == 2 else "warning", resource="cpu",
        title=f"CPU contention: {_who(r)} {wait}" if affected == 1 else
              f"CPU contention: {affected} threads wait for a CPU; worst {_who(r)}",
        detail=(f"{_who(r)} {wait}{invol}. Time spent runnable but not running means the CPUs it may use are "
                "busy with other work (or its cgroup is throttled); involuntary switches are the scheduler "
                "taking the CPU away."),
        confidence=0.8, metrics={"threads_affected": float(affected),
                                 **({"runq_wait_pct": r.runq_wait_pct} if r.runq_wait_pct is not None else {}),
                                 **({"involuntary_switches_per_s": r.involuntary_switches_per_s}
                                    if r.involuntary_switches_per_s is not None else {})},
        evidence=evidence,
        suggestion=(f"perf_use_check with window_s=10 says whether the CPUs are saturated and by whom; "
                    f"perf_cgroup_summary with pid={pid} shows CFS throttling; perf_runq_latency with pid={pid}, "
                    f"duration_s={runq_s} gives the wait distribution."),
        next=next_call("perf_runq_latency", pid=pid, duration_s=runq_s),
    )


_COUNTERS = {
    "process.thread_runq_wait_pct": "/proc/PID/task/TID/schedstat run-queue wait (% of window)",
    "process.thread_runq_wait_per_timeslice_ms": "/proc/PID/task/TID/schedstat run-queue wait per timeslice (ms)",
    "process.thread_involuntary_switches_per_s": "/proc/PID/task/TID/status nonvoluntary_ctxt_switches per s",
}


def _blocked(a: Analysis, pid: int, duration_s: float) -> Finding | None:
    """The thread that spent the most time blocked with a known stack (off-CPU profile ran)."""
    with_stacks = [r for r in a.rows if r.offcpu_ms and r.offcpu_top_stack]
    if not with_stacks:
        return None
    r = max(with_stacks, key=lambda x: (x.offcpu_ms or 0.0))
    assert r.offcpu_ms is not None and r.offcpu_top_stack is not None
    share = min(r.offcpu_ms / 10.0 / max(r.window_s, 1e-3), 100.0)
    leaf_user = r.offcpu_blocked_in
    offcpu_s = min(max(int(duration_s), 5), limits.TRACE_LONG_DURATION_S[1])
    return Finding(
        id="process.thread_blocked", severity="info", resource="process",
        title=f"{_who(r)} spent {r.offcpu_ms / 1000:.2f} s off CPU" + (f", mostly in {leaf_user}" if leaf_user else ""),
        detail=(f"Its biggest blocking stack ({(r.offcpu_top_stack_ms or 0) / 1000:.2f} s): "
                + " > ".join(r.offcpu_top_stack[-8:]) + ". Off-CPU time of an idle worker is normal; of a thread "
                "that should be serving, it is the latency."),
        confidence=0.7, metrics={"offcpu_ms": r.offcpu_ms, "offcpu_pct_of_window": round(share, 2)},
        evidence=[Evidence(tool=TOOL, counter="offcputime off-CPU us by thread", value=r.offcpu_ms,
                           window_s=r.window_s, sample=f"tid {r.tid} '{r.name}'")],
        suggestion=f"perf_offcpu_profile with pid={pid}, duration_s={offcpu_s} for every blocking "
                   "stack of the process and a flame graph of them.",
        next=next_call("perf_offcpu_profile", pid=pid, duration_s=offcpu_s),
    )
