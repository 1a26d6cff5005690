"""perf_exec_trace: who runs which programs, with what arguments, how long they live.

Ladder (data.method says which rung ran, data.skipped why the others did not):
  1. libbpf-tools execsnoop + exitsnoop, side by side in one broker job (exitsnoop
     gives each process's age at exit = its lifetime, fork to exit, to 10 ms);
  2. the broker's bpftrace script execsnoop.bt on the execve syscall tracepoints
     (arguments, failures) and sched_process_fork/exec/exit (lifetimes, to the us);
  3. execsnoop alone, when neither exitsnoop nor bpftrace may run: executions
     without lifetimes (said in a warning). exitsnoop disabled or missing is a
     reason to go down to bpftrace rather than answer without lifetimes, since
     short lives are what an exec storm is made of.
If exitsnoop fails at run time while execsnoop worked, the executions are kept
(the trace is not run a second time) and the lifetimes are said to be missing.

Only integers and booleans reach the broker (duration, include_failed, max_args,
uid). The parent filter (pid) and name_pattern are applied here, after parsing:
the parent/child tree is built from the exec records' ppid, the exits' ppid and
two /proc snapshots (before and after the trace) for processes that never exec'd.

Cancellation: the broker job is stopped with the call (run_job closes the socket).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import statistics
from collections import Counter, defaultdict
from typing import Annotated

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import Backend, ExecTrace, limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..procfs.process import parse_pid_stat
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace import exec_parse
from ..trace.exec_parse import ExecEvent, ExitEvent
from ..trace.ladder import Rung, RungFailed, Skipped, climb, find_step, run_job, step_failure

NAME = "perf_exec_trace"

# A process that exits within this long of its fork is "short-lived": the unit an
# exec storm is counted in (a shell loop calling date/grep/sed lives 1-10 ms each).
SHORT_LIVED_MS = 1000.0
# Short-lived processes per second (in the traced set) that make an exec storm.
# Each costs a fork, an exec, a dynamic link and an exit (~0.5-2 ms of CPU here),
# so 20/s is a few % of a CPU spent on churn and 200/s is a core's worth.
STORM_WARNING_PER_S = 10.0
STORM_CRITICAL_PER_S = 100.0
# Failed execs per second that make the failure finding a warning (info below).
FAILED_WARNING_PER_S = 1.0
MAX_TREE_NODES = 200
MAX_TREE_DEPTH = 64
TOP_N = 10

RUNGS: list[Rung[object]] = [
    Rung(Backend.LIBBPF, "execsnoop + exitsnoop (libbpf-tools)", programs=("execsnoop", "exitsnoop"),
         needs=("btf", "tracepoints")),
    Rung(Backend.BPFTRACE, "bpftrace execsnoop.bt (execve syscall + sched tracepoints)", programs=("bpftrace",),
         needs=("btf", "tracepoints")),
    Rung(Backend.LIBBPF, "execsnoop alone (libbpf-tools; no lifetimes)", programs=("execsnoop",),
         needs=("btf", "tracepoints")),
]
LADDER = RUNGS


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_SHORT_DURATION_S[0], le=limits.TRACE_SHORT_DURATION_S[1],
                                    description="How long to trace, in seconds.")] = 10
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "Parent: show only the descendants of this process (children, grandchildren...). "
        "Filtered in perf-mcp from the process tree; the trace itself sees every process."))] | None = None
    name_pattern: Annotated[str, Meta(min_length=1, max_length=256, description=(
        "Keep only executions whose program name (comm) or command line matches: a glob when it holds "
        "* ? or [ (e.g. 'python*'), otherwise a substring. Case-sensitive; applied in perf-mcp."))] | None = None
    uid: Annotated[int, Meta(ge=0, le=limits.UID_MAX, description="Trace only executions by this user id.")] | None = None
    include_failed: Annotated[bool, Meta(description="Also report execs that failed (ENOENT, EACCES...).")] = False
    max_args: Annotated[int, Meta(ge=limits.EXEC_MAX_ARGS[0], le=limits.EXEC_MAX_ARGS[1], description=(
        "Arguments kept per execution, the program path counting as the first."))] = 20
    include_timestamps: Annotated[bool, Meta(description=(
        "Give each execution its time (seconds since the trace started)."))] = False
    max_execs_listed: Annotated[int, Meta(ge=1, le=1000, description=(
        "List at most this many executions (the first ones); counts and findings cover all."))] = 100


class Execution(msgspec.Struct, kw_only=True, omit_defaults=True):
    pid: int
    ppid: int
    uid: int | None = None
    comm: str
    args: list[str]
    args_truncated: bool = False
    ret: int = 0
    failed: bool = False
    error: str | None = None  # errno name of a failed exec (ENOENT)
    t_s: float | None = None  # with include_timestamps
    lifetime_ms: float | None = None  # fork to exit, when the exit was seen during the trace
    exit_code: int | None = None
    exit_signal: int | None = None


class TreeNode(msgspec.Struct, kw_only=True, omit_defaults=True):
    pid: int
    comm: str | None = None
    execs: int = 0  # exec calls made by this process during the trace
    failed: int = 0
    lifetime_ms: float | None = None
    exit_code: int | None = None
    descendants: int = 0  # processes below it that exec'd
    children: list[TreeNode] = []
    children_omitted: int = 0  # children left out (node budget)


class CommCount(msgspec.Struct, kw_only=True):
    comm: str
    execs: int
    failed: int
    short_lived: int
    median_lifetime_ms: float | None


class ParentCount(msgspec.Struct, kw_only=True):
    ppid: int
    comm: str | None
    execs: int
    short_lived: int
    execs_per_s: float


class FailureCount(msgspec.Struct, kw_only=True):
    error: str
    count: int
    example: str  # the path tried


class Lifetimes(msgspec.Struct, kw_only=True):
    available: bool
    resolution_ms: float | None  # exitsnoop prints seconds with 2 decimals: 10 ms
    processes_exited: int  # traced processes whose exit was seen during the trace
    still_running: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    max_ms: float | None = None


class ExecTraceData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    duration_s: int
    filters: dict[str, str | int | bool]
    execs: int
    execs_per_s: float
    failed: int
    processes: int
    short_lived: int
    short_lived_per_s: float
    short_lived_threshold_ms: float
    lifetimes: Lifetimes
    by_comm: list[CommCount]
    top_parents: list[ParentCount]
    failures: list[FailureCount]
    executions: list[Execution]
    executions_omitted: int
    tree: list[TreeNode]
    arg_max_bytes: int
    lost_events: int
    findings: list[Finding]


# ---------------------------------------------------------------- collection


def _proc_snapshot() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) of every process now (world-readable /proc/PID/stat)."""
    out: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdecimal():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                st = parse_pid_stat(f.read())
        except (OSError, ValueError):
            continue
        out[st.pid] = (st.ppid, st.comm)
    return out


async def _trace(ctx: ToolContext, p: Params, rung: Rung[object]) -> tuple[exec_parse.ExecRecords, list[str], bool]:
    assert rung.backend is not None
    req = ExecTrace(backend=rung.backend, duration_s=p.duration_s, include_failed=p.include_failed,
                    max_args=p.max_args, uid=p.uid)
    job = await run_job(ctx, req, expected_s=float(p.duration_s), label=rung.method.split(" (")[0])
    warnings: list[str] = []
    step = find_step(job, "execsnoop")
    reason = step_failure(step, stopped_by_us=rung.backend is Backend.LIBBPF)
    if reason is not None or step is None:
        raise RungFailed(reason or "no execsnoop step")
    truncated = step.stdout_truncated
    if rung.backend is Backend.BPFTRACE:
        parsed = exec_parse.parse_bpftrace(step.stdout, step.stderr, include_failed=p.include_failed)
    else:
        parsed = exec_parse.parse_execsnoop(step.stdout, step.stderr)
        exits = find_step(job, "exitsnoop")
        why = "exitsnoop did not run (not installed or disabled)" if exits is None else \
            step_failure(exits, stopped_by_us=True)
        if why is None and exits is not None:
            x = exec_parse.parse_exitsnoop(exits.stdout, exits.stderr)
            parsed.exits, parsed.lifetime_resolution_ms = x.exits, x.lifetime_resolution_ms
            parsed.lifetimes_available = True
            parsed.warnings += x.warnings
            parsed.bad_lines += x.bad_lines
            parsed.lost_events += x.lost_events
            truncated |= exits.stdout_truncated
        else:
            warnings.append(f"lifetimes and exit codes are unavailable: {why}")
    if truncated:
        warnings.append("the broker's output cap cut the trace: counts are lower bounds")
    if parsed.bad_lines and not parsed.execs and not parsed.exits:
        raise ToolError(ErrorCode.PARSE_ERROR, f"none of the {parsed.bad_lines} lines of {rung.method} could be read")
    return parsed, warnings, truncated


# ---------------------------------------------------------------- analysis


def _matcher(pattern: str | None):  # type: ignore[no-untyped-def]
    if pattern is None:
        return lambda ev: True
    glob = any(c in pattern for c in "*?[")

    def match(ev: ExecEvent) -> bool:
        line = " ".join(ev.args)
        if glob:
            return fnmatch.fnmatchcase(ev.comm, pattern) or fnmatch.fnmatchcase(line, pattern) or \
                any(fnmatch.fnmatchcase(a, pattern) for a in ev.args)
        return pattern in ev.comm or pattern in line

    return match


class _Links:
    """Who is whose parent, the first that knows winning: the exec records (ppid
    at exec time), the /proc snapshot before the trace, the exit records (a
    process whose parent died first exits as a child of init or a subreaper),
    then the snapshot after it (forks that never exec'd, such as subshells)."""

    def __init__(self, before: dict[int, tuple[int, str]], after: dict[int, tuple[int, str]],
                 execs: list[ExecEvent], exits: dict[int, ExitEvent]) -> None:
        self.parent: dict[int, int] = {}
        self.comm: dict[int, str] = {}
        for pid, (ppid, comm) in after.items():
            self.parent[pid], self.comm[pid] = ppid, comm
        for pid, ex in exits.items():
            self.parent[pid], self.comm[pid] = ex.ppid, ex.comm
        for pid, (ppid, comm) in before.items():
            self.parent[pid] = ppid
            self.comm.setdefault(pid, comm)
        for ev in execs:
            self.parent[ev.pid] = ev.ppid
            if ev.ret == 0:
                self.comm[ev.pid] = ev.comm

    def descends_from(self, pid: int, ancestor: int) -> bool:
        cur = self.parent.get(pid)
        for _ in range(MAX_TREE_DEPTH):
            if cur is None or cur <= 0:
                return False
            if cur == ancestor:
                return True
            cur = self.parent.get(cur)
        return False


def _errname(ret: int) -> str:
    return errno.errorcode.get(-ret, f"errno {-ret}")


def _executions(events: list[ExecEvent], exits: dict[int, ExitEvent], timestamps: bool) -> list[Execution]:
    out = []
    for ev in events:
        ex = exits.get(ev.pid) if ev.ret == 0 else None
        out.append(Execution(
            pid=ev.pid, ppid=ev.ppid, uid=ev.uid, comm=ev.comm, args=ev.args, args_truncated=ev.args_truncated,
            ret=ev.ret, failed=ev.ret < 0, error=_errname(ev.ret) if ev.ret < 0 else None,
            t_s=ev.t_s if timestamps else None, lifetime_ms=ex.lifetime_ms if ex else None,
            exit_code=ex.exit_code if ex else None, exit_signal=ex.signal if ex else None))
    return out


def _tree(events: list[ExecEvent], exits: dict[int, ExitEvent], links: _Links, root: int | None) -> list[TreeNode]:
    """Processes that exec'd, under their parents. A chain climbs through processes
    of the trace window (exec'd or exited during it) and stops at the first one
    from before it (a shell, a daemon: the root), or at the pid filter."""
    execd: dict[int, list[ExecEvent]] = defaultdict(list)
    for ev in events:
        execd[ev.pid].append(ev)
    in_window = set(execd) | set(exits)
    kids: dict[int, set[int]] = defaultdict(set)
    roots: set[int] = set()
    for pid in execd:
        cur = pid
        for _ in range(MAX_TREE_DEPTH):
            parent = links.parent.get(cur)
            if parent is None or parent <= 0 or cur == root:
                roots.add(cur)
                break
            kids[parent].add(cur)
            if parent == root or parent not in in_window:
                roots.add(parent)
                break
            cur = parent
        else:
            roots.add(cur)
    size: dict[int, int] = {}

    def count(pid: int, depth: int = 0) -> int:
        if pid not in size:
            size[pid] = 0  # cycle guard
            size[pid] = sum((1 if k in execd else 0) + count(k, depth + 1) for k in kids.get(pid, ()))
        return size[pid]

    budget = [MAX_TREE_NODES]

    def node(pid: int, depth: int) -> TreeNode:
        budget[0] -= 1
        evs = execd.get(pid, [])
        ex = exits.get(pid)
        n = TreeNode(pid=pid, comm=links.comm.get(pid), execs=len(evs), failed=sum(e.ret < 0 for e in evs),
                     lifetime_ms=ex.lifetime_ms if ex else None, exit_code=ex.exit_code if ex else None,
                     descendants=count(pid))
        children = sorted(kids.get(pid, ()), key=lambda k: (-count(k), k))
        kept = []
        for k in children:
            if budget[0] <= 0 or depth >= MAX_TREE_DEPTH:
                break
            kept.append(node(k, depth + 1))
        n.children, n.children_omitted = kept, len(children) - len(kept)
        return n

    ordered = sorted(roots, key=lambda r: (-count(r), r))
    out = []
    for r in ordered:
        if budget[0] <= 0:
            break
        out.append(node(r, 0))
    return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def _storm_finding(d: ExecTraceData, top: ParentCount | None, example: str | None) -> Finding | None:
    rate = d.short_lived_per_s
    if not d.lifetimes.available or rate <= STORM_WARNING_PER_S:
        return None
    severity = "critical" if rate > STORM_CRITICAL_PER_S else "warning"
    who, lead = "", None
    nxt = next_call("perf_cpu_profile", duration_s=10, include_kernel=True)
    suggestion = ('Run perf_cpu_profile with {"duration_s": 10, "include_kernel": true} to see what the churn '
                  "costs (fork, exec, page faults, exit in the kernel).")
    if top is not None:
        share = top.short_lived / d.short_lived if d.short_lived else 0.0
        name = f"pid {top.ppid}" + (f" ({top.comm})" if top.comm else "")
        who = f"; {name} spawned {top.short_lived} of them ({share:.0%})"
        lead = name if share >= 0.5 else None
        suggestion = (f'Find out why {name} spawns a process per item: perf_exec_trace with {{"pid": {top.ppid}, '
                      f'"duration_s": 10, "include_timestamps": true}} shows its children and their cadence; '
                      f'perf_cpu_profile with {{"pid": {top.ppid}, "duration_s": 10}} shows where it decides to. '
                      "Batching the work, or doing it in-process instead of calling a program per item, ends the storm.")
        nxt = next_call("perf_exec_trace", pid=top.ppid or None, duration_s=10, include_timestamps=True)
    return Finding(
        id="process.exec_storm", severity=severity, resource="process",
        title=f"Exec storm: {rate:.1f} short-lived processes per second" + (f", mostly from {lead}" if lead else ""),
        detail=(f"{d.short_lived} processes lived less than {SHORT_LIVED_MS:g} ms in {d.duration_s} s "
                f"({rate:.1f}/s; {d.execs} execs in all){who}. "
                f"Median lifetime {d.lifetimes.p50_ms} ms."),
        confidence=0.9 if d.lost_events == 0 else 0.7,
        metrics={"short_lived_per_s": rate, "short_lived": float(d.short_lived), "execs_per_s": d.execs_per_s,
                 **({"top_parent_pid": float(top.ppid), "top_parent_short_lived": float(top.short_lived)} if top else {})},
        evidence=[Evidence(tool=NAME, counter="short_lived_processes_per_s", value=rate,
                           threshold=STORM_CRITICAL_PER_S if severity == "critical" else STORM_WARNING_PER_S,
                           window_s=float(d.duration_s), sample=example)],
        suggestion=suggestion, next=nxt)


def _failure_finding(d: ExecTraceData) -> Finding | None:
    if not d.failed:
        return None
    rate = d.failed / d.duration_s
    top = d.failures[0]
    return Finding(
        id="process.exec_failures", severity="warning" if rate > FAILED_WARNING_PER_S else "info", resource="process",
        title=f"{d.failed} failed exec(s), mostly {top.error}",
        detail=(", ".join(f"{f.error} x{f.count} (e.g. {f.example})" for f in d.failures[:5])
                + ". Failed execs are usually a PATH search (each directory tried in turn) or a missing program."),
        confidence=0.9, metrics={"failed": float(d.failed), "failed_per_s": round(rate, 3)},
        evidence=[Evidence(tool=NAME, counter="failed_execs", value=float(d.failed), threshold=FAILED_WARNING_PER_S,
                           window_s=float(d.duration_s), sample=top.example)],
        suggestion=(f"Check that {top.example} exists and is executable for that user, and the caller's PATH; "
                    f'perf_exec_trace with {{"include_failed": true, "include_timestamps": true, '
                    f'"name_pattern": "{top.example.rsplit("/", 1)[-1][:60]}"}} shows who keeps trying.'),
        next=next_call("perf_exec_trace", duration_s=10, include_failed=True, include_timestamps=True,
                       name_pattern=top.example.rsplit("/", 1)[-1][:60] or None))


def analyse(p: Params, parsed: exec_parse.ExecRecords, before: dict[int, tuple[int, str]],
            after: dict[int, tuple[int, str]], method: str, backend: str, skipped: list[Skipped],
            lifetimes_available: bool) -> ExecTraceData:
    exits = {ex.pid: ex for ex in parsed.exits}
    events = [ev for ev in parsed.execs if p.include_failed or ev.ret >= 0]
    if p.uid is not None:
        events = [ev for ev in events if ev.uid is None or ev.uid == p.uid]
    links = _Links(before, after, events, exits)
    if p.pid is not None:
        events = [ev for ev in events if ev.pid != p.pid and links.descends_from(ev.pid, p.pid)]
    match = _matcher(p.name_pattern)
    events = [ev for ev in events if match(ev)]
    events.sort(key=lambda ev: (ev.t_s if ev.t_s is not None else 0.0))
    ok = [ev for ev in events if ev.ret == 0]
    procs = sorted({ev.pid for ev in ok})
    lifetime = {pid: exits[pid].lifetime_ms for pid in procs if pid in exits}
    short = {pid for pid, ms in lifetime.items() if ms < SHORT_LIVED_MS}
    dur = float(p.duration_s)

    by_comm: dict[str, list[ExecEvent]] = defaultdict(list)
    for ev in events:
        by_comm[ev.comm].append(ev)
    comm_counts = []
    for comm, evs in by_comm.items():
        pids = {e.pid for e in evs if e.ret == 0}
        lts = [lifetime[x] for x in pids if x in lifetime]
        comm_counts.append(CommCount(comm=comm, execs=len(evs), failed=sum(e.ret < 0 for e in evs),
                                     short_lived=len(pids & short),
                                     median_lifetime_ms=round(statistics.median(lts), 3) if lts else None))
    comm_counts.sort(key=lambda c: (-c.execs, c.comm))

    parent_execs = Counter(ev.ppid for ev in events)
    parent_short: Counter[int] = Counter()
    seen: set[int] = set()
    for ev in ok:
        if ev.pid in short and ev.pid not in seen:
            seen.add(ev.pid)
            parent_short[ev.ppid] += 1
    parents = [ParentCount(ppid=pp, comm=links.comm.get(pp), execs=n, short_lived=parent_short[pp],
                           execs_per_s=round(n / dur, 3)) for pp, n in parent_execs.items()]
    parents.sort(key=lambda c: (-c.short_lived, -c.execs, c.ppid))

    fails: dict[str, list[ExecEvent]] = defaultdict(list)
    for ev in events:
        if ev.ret < 0:
            fails[_errname(ev.ret)].append(ev)
    failures = sorted((FailureCount(error=e, count=len(v), example=Counter(x.args[0] for x in v).most_common(1)[0][0])
                       for e, v in fails.items()), key=lambda f: -f.count)

    executions = _executions(events, exits, p.include_timestamps)
    lts = list(lifetime.values())
    filters: dict[str, str | int | bool] = {"include_failed": p.include_failed, "max_args": p.max_args}
    for key, value in (("pid", p.pid), ("uid", p.uid), ("name_pattern", p.name_pattern)):
        if value is not None:
            filters[key] = value
    data = ExecTraceData(
        method=method, backend=backend, skipped=skipped, duration_s=p.duration_s, filters=filters,
        execs=len(events), execs_per_s=round(len(events) / dur, 3), failed=sum(ev.ret < 0 for ev in events),
        processes=len(procs), short_lived=len(short), short_lived_per_s=round(len(short) / dur, 3),
        short_lived_threshold_ms=SHORT_LIVED_MS,
        lifetimes=Lifetimes(available=lifetimes_available,
                            resolution_ms=parsed.lifetime_resolution_ms if lifetimes_available else None,
                            processes_exited=len(lifetime), still_running=len(procs) - len(lifetime),
                            p50_ms=_percentile(lts, 0.5), p90_ms=_percentile(lts, 0.9),
                            max_ms=max(lts) if lts else None),
        by_comm=comm_counts[:TOP_N], top_parents=parents[:TOP_N], failures=failures,
        executions=executions[:p.max_execs_listed],
        executions_omitted=max(0, len(executions) - p.max_execs_listed),
        tree=_tree(events, exits, links, p.pid), arg_max_bytes=parsed.arg_max_bytes,
        lost_events=parsed.lost_events, findings=[])
    top = parents[0] if parents and parents[0].short_lived else None
    example = None
    if top is not None:
        ev = next(e for e in ok if e.ppid == top.ppid and e.pid in short)
        example = f"pid {ev.pid} {' '.join(ev.args)[:200]} lived {lifetime[ev.pid]} ms"
    data.findings = sort_findings([f for f in (_storm_finding(data, top, example), _failure_finding(data)) if f])
    return data


# ---------------------------------------------------------------- the tool


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if p.pid is not None and not os.path.exists(f"/proc/{p.pid}"):
        raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}",
                        suggestion="Pass the pid of a running parent process, or omit pid to trace every process.")
    before = await trio.to_thread.run_sync(_proc_snapshot)
    state: dict[str, object] = {}

    async def attempt(rung: Rung[object]) -> tuple[exec_parse.ExecRecords, None]:
        parsed, warnings, truncated = await _trace(ctx, p, rung)
        state.update(warnings=warnings, truncated=truncated)
        return parsed, None

    result = await climb(ctx, RUNGS, p, attempt)
    after = await trio.to_thread.run_sync(_proc_snapshot)
    parsed = result.value
    warnings = result.warnings() + list(state.get("warnings", [])) + parsed.warnings  # type: ignore[operator]
    lifetimes_available = parsed.lifetimes_available
    if parsed.lost_events:
        warnings.append(f"{parsed.lost_events} events were lost (the tracer's buffer overflowed): counts are lower bounds")
    data = analyse(p, parsed, before, after, result.method, result.backend, result.skipped, lifetimes_available)
    truncated = bool(state.get("truncated")) or data.executions_omitted > 0
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def summarise(d: ExecTraceData) -> str:
    life = (f", {d.short_lived} short-lived ({d.short_lived_per_s:g}/s, < {d.short_lived_threshold_ms:g} ms)"
            if d.lifetimes.available else ", lifetimes unavailable")
    lines = [f"exec trace {d.duration_s} s: {d.execs} execs ({d.execs_per_s:g}/s), {d.failed} failed{life}"]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.top_parents:
        lines.append("Top parents: " + ", ".join(f"{c.ppid} ({c.comm or '?'}) {c.execs}" for c in d.top_parents[:5]))
    if d.by_comm:
        lines.append("By program: " + ", ".join(f"{c.comm} {c.execs}" for c in d.by_comm[:8]))
    if d.lifetimes.available and d.lifetimes.p50_ms is not None:
        lines.append(f"Lifetimes: p50 {d.lifetimes.p50_ms} ms, p90 {d.lifetimes.p90_ms} ms, max {d.lifetimes.max_ms} ms "
                     f"({d.lifetimes.processes_exited} exited, {d.lifetimes.still_running} still running)")
    if d.failures:
        lines.append("Failed: " + ", ".join(f"{f.error} x{f.count}" for f in d.failures))
    lines.append(f"Method: {d.method}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="Process execution trace",
    description=(
        "Trace process executions for duration_s: each exec with pid, parent pid, uid, program name, arguments, "
        "result (failed execs with their errno when include_failed), and the process's lifetime and exit code "
        "when it exited during the trace; a parent/child tree, counts per program and per parent, the rate of "
        "short-lived processes and an exec-storm finding naming the parent that spawns them. Filters: uid "
        "(in the tracer), pid = only descendants of that parent, name_pattern = glob or substring on the program "
        "name or command line. Uses execsnoop + exitsnoop (libbpf-tools), else a bpftrace script, through the "
        "perf-mcp broker (needs the 'trace' grant)."
    ),
    params=Params,
    data=ExecTraceData,
    handler=run,
)
