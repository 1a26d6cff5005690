"""perf_syscall_count: which system calls, how many, how often they fail, how long they take.

Ladder (first rung that works; data.method says which ran, data.skipped why the others did not):
1. syscount (libbpf-tools): `syscount -d D -T 500 [-p PID] [-L]`; with per_process a second
   `syscount ... -P` side by side (syscount -P counts by process only); with include_errors a
   third `syscount ... -x` (failed calls per syscall).
2. the broker's bpftrace script syscount.bt on the raw_syscalls tracepoints: counts, failures
   by (syscall, errno), latency (sum, timed calls, max) and per-process rows in one program.

Errors by errno: syscount can count failed calls per syscall (-x) or the calls failing with ONE
errno (-e), not the breakdown by errno. So with include_errors the ladder puts the bpftrace
rung FIRST: failed calls come back under their errno names (openat ENOENT 3000). When bpftrace
cannot run, syscount -x still answers: failed calls per syscall, and the answer says that the
errno breakdown was not available and why (data.errors.by_errno false, data.errors.note).

Names, never numbers: the bpftrace rung sees syscall numbers and syscount prints
"[unknown: N]" for the numbers its own table lacks; both are named from
trace.syscall_names (x86_64 and aarch64 tables, checked against the kernel headers, the
running kernel and `syscount -l`).

comm is a filter on the per-process rows, applied here after parsing (it never reaches the
broker); it implies per-process counting. The broker is asked for up to 500 rows so that the
filter and the top_n cut have every row to work on.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from perf_mcp_protocol import Backend, JobResult, SyscallCount, limits

from ..contract import Evidence, Finding, NextCall, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace.ladder import LadderResult, Rung, RungFailed, Skipped, climb, find_step, run_job, step_failure
from ..trace.syscall_names import host_arch, is_known, syscall_number
from ..trace.syscall_parse import (
    BpftraceRun,
    ErrnoStat,
    ParseFailure,
    ProcessStat,
    SyscallStat,
    parse_bpftrace_syscount,
    parse_syscount,
)

NAME = "perf_syscall_count"
BROKER_TOP_N = limits.SYSCALL_TOP_N[1]  # every row comes back; comm and top_n are applied here
STARTUP_S = {Backend.LIBBPF: 1.0, Backend.BPFTRACE: 3.0}
COMM_MAX = 15  # TASK_COMM_LEN - 1

# Findings (module constants: the shared threshold table has no syscall rows).
DOMINANT_PCT = 50.0  # one syscall is at least this share of all calls
DOMINANT_MIN_CALLS = 100
HOT_RATE_PER_S = 10_000.0  # a dominant syscall at this rate is CPU spent entering the kernel
FAIL_PCT = 20.0  # a syscall failing this often...
FAIL_MIN = 100  # ...at least this many times
SLOW_MEAN_US = 1000.0  # a non-waiting syscall with this mean latency
MAX_ERROR_FINDINGS = 3
# Calls that wait by design: their time is idle time, not slowness.
WAITING = frozenset({
    "futex", "futex_wait", "futex_waitv", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select",
    "pselect6", "nanosleep", "clock_nanosleep", "wait4", "waitid", "pause", "rt_sigsuspend", "rt_sigtimedwait",
    "read", "readv", "recvfrom", "recvmsg", "recvmmsg", "accept", "accept4", "msgrcv", "semop", "semtimedop",
    "io_getevents", "io_pgetevents", "io_uring_enter", "mq_timedreceive", "sigsuspend", "select", "connect",
})
# Slow by nature: creating a process or loading a program (the time is the work itself).
SPAWNING = frozenset({"execve", "execveat", "vfork", "fork", "clone", "clone3"})
# Failures that are part of a call's protocol, not a fault: a futex whose value changed
# (EAGAIN) or whose timed wait expired, isatty() probes (ioctl ENOTTY), interrupted calls.
FUTEXES = frozenset({"futex", "futex_wait", "futex_waitv", "futex_wake", "futex_requeue"})
EAGAIN, EINTR, ENOTTY, ETIMEDOUT = 11, 4, 25, 110
FILE_LOOKUPS = frozenset({"open", "openat", "openat2", "stat", "lstat", "newfstatat", "statx", "access",
                          "faccessat", "faccessat2", "readlink", "readlinkat", "execve", "execveat"})


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_LONG_DURATION_S[0], le=limits.TRACE_LONG_DURATION_S[1],
                                    description="How long to count, in seconds.")] = 10
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "Count only this process (all its threads); omit for every process."))] | None = None
    comm: Annotated[str, Meta(min_length=1, max_length=COMM_MAX, description=(
        "Keep only the per-process rows whose process name (comm, at most 15 characters) contains this "
        "text (case-sensitive). Implies per_process; the per-syscall rows still cover every process traced."))
    ] | None = None
    top_n: Annotated[int, Meta(ge=1, le=50, description="Rows listed per table (syscalls, processes).")] = 20
    include_latency: Annotated[bool, Meta(description=(
        "Also time each call from entry to exit: total, mean (and max with bpftrace) per syscall. Adds a "
        "probe on every system call's entry, about doubling the tracing cost per call."))] = False
    per_process: Annotated[bool, Meta(description="Also count per process (pid, comm).")] = False
    include_errors: Annotated[bool, Meta(description=(
        "Also count failed calls (return value < 0) per syscall and, where the backend can, per errno "
        "(ENOENT, EAGAIN, ...)."))] = False


class ErrnoCount(msgspec.Struct, kw_only=True, omit_defaults=True):
    errno: int
    name: str
    count: int
    kernel_internal: bool = False  # a restart code (ERESTARTSYS...): interrupted, restarted, not seen by the program


class SyscallRow(msgspec.Struct, kw_only=True):
    name: str
    nr: int | None
    count: int
    pct: float  # of all calls traced
    per_s: float
    failed: int | None  # None: failures were not counted
    failed_pct: float | None
    errnos: list[ErrnoCount] | None  # None: this backend cannot break failures down by errno
    total_ms: float | None  # time inside the timed calls (include_latency)
    mean_us: float | None
    max_us: float | None  # bpftrace only
    timed_calls: int | None


class ProcessRow(msgspec.Struct, kw_only=True):
    pid: int
    comm: str
    count: int
    pct: float
    per_s: float
    failed: int | None
    total_ms: float | None
    other_thread_names: list[str]


class FailedCall(msgspec.Struct, kw_only=True):
    syscall: str
    errno: int | None  # None: counted per syscall only (syscount -x)
    errno_name: str | None
    count: int


class ErrorSummary(msgspec.Struct, kw_only=True):
    failed_calls: int
    failed_pct: float
    by_errno: bool
    note: str
    top: list[FailedCall]


class SyscallCountData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    ladder_note: str | None
    target: str
    pid: int | None
    comm_filter: str | None
    duration_s: int
    total_calls: int
    calls_per_s: float
    distinct_syscalls: int
    syscalls: list[SyscallRow]
    syscalls_truncated: bool
    processes: list[ProcessRow] | None
    processes_matched: int | None
    matched_calls: int | None
    errors: ErrorSummary | None
    latency_note: str | None
    findings: list[Finding]
    argv: list[list[str]]
    broker_job_id: int | None


# ---------------------------------------------------------------- the ladder

RUNGS: list[Rung[Params]] = [
    Rung(Backend.LIBBPF, "syscount (libbpf-tools)", programs=("syscount",), needs=("btf", "tracepoints")),
    Rung(Backend.BPFTRACE, "bpftrace syscount.bt (raw_syscalls tracepoints)", programs=("bpftrace",),
         needs=("tracepoints",)),
]
LADDER = RUNGS
ERRNO_NOTE = ("include_errors: the bpftrace rung runs first because only it breaks failed calls down by errno; "
              "syscount (libbpf-tools) counts them per syscall only (-x)")


def rungs_for(p: Params) -> list[Rung[Params]]:
    """syscount first, except with include_errors: then the rung that can name each errno."""
    if p.include_errors:
        return [RUNGS[1], RUNGS[0]]
    return list(RUNGS)


@dataclass
class Counts:
    """One rung's parsed counts, the same shape for both."""

    syscalls: list[SyscallStat]
    processes: list[ProcessStat] | None
    errnos: list[ErrnoStat] | None  # None: the rung cannot break failures down by errno
    failures_counted: bool
    bad_lines: int
    truncated: bool
    warnings: list[str]


def _check(job: JobResult, name: str) -> bytes:
    step = find_step(job, name)
    reason = step_failure(step)
    if reason is not None:
        raise RungFailed(reason)
    assert step is not None
    return step.stdout


def _parse_libbpf(job: JobResult, p: Params, per_process: bool, arch: str) -> Counts:
    warnings: list[str] = []
    outputs = {"syscount": _check(job, "syscount")}
    if per_process:
        outputs["syscount_processes"] = _check(job, "syscount_processes")
    if p.include_errors:
        outputs["syscount_failures"] = _check(job, "syscount_failures")
    runs = {}
    bad = 0
    truncated = False
    for name, raw in outputs.items():
        try:
            run = parse_syscount(raw, arch)
        except ParseFailure as exc:
            raise ToolError(ErrorCode.PARSE_ERROR, f"{name}: {exc}") from None
        if not run.banner:
            warnings.append(f"{name}: no 'Tracing syscalls' banner: the output is damaged, counts may be partial")
        bad += run.bad_lines
        step = find_step(job, name)
        if step is not None and step.stdout_truncated:
            truncated = True
            warnings.append(f"{name}: the output was cut at the broker's cap; the rows after the cut are missing")
        runs[name] = run
    main = runs["syscount"]
    syscalls = main.syscalls
    if "syscount_failures" in runs:
        failed = {s.name: s.count for s in runs["syscount_failures"].syscalls}
        for s in syscalls:
            s.failed = min(failed.pop(s.name, 0), s.count) if s.count else failed.pop(s.name, 0)
        for name, n in failed.items():  # failed calls of a syscall the counting run did not list
            syscalls.append(SyscallStat(nr=syscall_number(name, arch), name=name, count=n, failed=n))
    procs = runs["syscount_processes"].processes if "syscount_processes" in runs else None
    return Counts(syscalls=syscalls, processes=procs, errnos=None, failures_counted=p.include_errors,
                  bad_lines=bad, truncated=truncated, warnings=warnings)


def _parse_bpftrace(job: JobResult, p: Params, arch: str) -> Counts:
    raw = _check(job, "syscount")
    step = find_step(job, "syscount")
    try:
        run: BpftraceRun = parse_bpftrace_syscount(raw, arch)
    except ParseFailure as exc:
        raise ToolError(ErrorCode.PARSE_ERROR, f"syscount.bt: {exc}") from None
    warnings = []
    truncated = bool(step and step.stdout_truncated)
    if truncated:
        warnings.append("bpftrace's output was cut at the broker's cap: the maps after the cut are missing")
    if run.bad_lines or run.bad_entries:
        warnings.append(f"{run.bad_lines} lines and {run.bad_entries} map entries of bpftrace output could not be "
                        "parsed and were skipped")
    if "@calls" not in run.maps and (run.bad_lines or truncated):
        warnings.append("the per-syscall counts (@calls) did not arrive whole: the table is partial")
    return Counts(syscalls=run.syscalls, processes=run.processes if (p.per_process or p.comm) else None,
                  errnos=run.errnos if p.include_errors else None, failures_counted=p.include_errors,
                  bad_lines=run.bad_lines, truncated=truncated, warnings=warnings)


# ---------------------------------------------------------------- helpers


def _proc_status(pid: int) -> dict[str, str] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _served(tool: str) -> bool:
    try:
        return importlib.util.find_spec(f"perf_mcp.tools.{tool}") is not None
    except (ImportError, ValueError):
        return False


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def comm_matches(comm: str, pattern: str | None) -> bool:
    return pattern is None or pattern in comm


# ---------------------------------------------------------------- the answer


def build(counts: Counts, p: Params, *, method: str, backend: str, skipped: list[Skipped], ladder_note: str | None,
          target: str, argv: list[list[str]], job_id: int | None, arch: str, errno_reason: str | None
          ) -> tuple[SyscallCountData, list[str]]:
    """Rows, totals, the error summary and findings from one rung's counts (pure)."""
    d = p.duration_s
    warnings = list(counts.warnings)
    total = sum(s.count for s in counts.syscalls)
    errnos_by_nr: dict[str, list[ErrnoStat]] = {}
    for e in counts.errnos or []:
        errnos_by_nr.setdefault(e.name, []).append(e)
    latency = p.include_latency
    rows = []
    for s in counts.syscalls:
        timed = s.timed if latency else None
        mean_us = (s.total_ns / timed / 1e3) if latency and timed and s.total_ns is not None else None
        rows.append(SyscallRow(
            name=s.name, nr=s.nr, count=s.count, pct=_pct(s.count, total), per_s=round(s.count / d, 1),
            failed=s.failed if counts.failures_counted else None,
            failed_pct=(min(_pct(s.failed or 0, s.count), 100.0) if s.count else None)
            if counts.failures_counted else None,
            errnos=[ErrnoCount(errno=e.errno, name=e.errno_name, count=e.count,
                               kernel_internal=e.errno >= 512)
                    for e in errnos_by_nr.get(s.name, [])] if counts.errnos is not None else None,
            total_ms=_r(s.total_ns / 1e6) if latency and s.total_ns is not None else None,
            mean_us=_r(mean_us),
            max_us=_r(s.max_ns / 1e3) if latency and s.max_ns is not None else None,
            timed_calls=timed,
        ))
    rows.sort(key=lambda r: (-r.count, r.name))
    unknown = sorted(s.nr for s in counts.syscalls if s.nr is not None and not is_known(s.nr, arch))
    if unknown:
        warnings.append(f"syscall numbers without a name in perf-mcp's {arch} table: "
                        + ", ".join(map(str, unknown[:10])) + " (shown as unknown_N)")

    processes = matched = matched_calls = None
    if counts.processes is not None:
        kept = [pr for pr in counts.processes if comm_matches(pr.comm, p.comm)
                or any(comm_matches(n, p.comm) for n in pr.other_names)]
        matched = len(kept)
        matched_calls = sum(pr.count for pr in kept)
        ptotal = sum(pr.count for pr in counts.processes)
        processes = [ProcessRow(pid=pr.pid, comm=pr.comm, count=pr.count, pct=_pct(pr.count, ptotal),
                                per_s=round(pr.count / d, 1), failed=pr.failed if counts.failures_counted else None,
                                total_ms=_r(pr.total_ns / 1e6) if latency and pr.total_ns is not None else None,
                                other_thread_names=pr.other_names[:5])
                     for pr in kept[: p.top_n]]
        if p.comm is not None and not kept:
            warnings.append(f"no process whose name contains {p.comm!r} made a system call that returned "
                            "during the trace")

    errors = None
    if counts.failures_counted:
        failed_total = sum(r.failed or 0 for r in rows)
        if counts.errnos is not None:
            top = [FailedCall(syscall=e.name, errno=e.errno, errno_name=e.errno_name, count=e.count)
                   for e in counts.errnos[:10]]
            note = "failed calls by syscall and errno (bpftrace, sys_exit return value < 0)"
        else:
            top = [FailedCall(syscall=r.name, errno=None, errno_name=None, count=r.failed or 0)
                   for r in sorted(rows, key=lambda r: -(r.failed or 0)) if r.failed][:10]
            note = ("failed calls per syscall only: syscount (libbpf-tools) cannot break them down by errno; "
                    "the errno breakdown comes from the bpftrace rung"
                    + (f", which could not run here ({errno_reason})" if errno_reason else ""))
        errors = ErrorSummary(failed_calls=failed_total, failed_pct=_pct(failed_total, total),
                              by_errno=counts.errnos is not None, note=note, top=top)

    latency_note = None
    if latency:
        latency_note = ("time from sys_enter to sys_exit per call, waiting included (a blocked read or futex counts "
                        "its whole wait); "
                        + ("syscount -L counts only the calls it saw enter, so a call already in progress when the "
                           "trace attached is left out of the counts too"
                           if backend == Backend.LIBBPF.value else
                           "calls already in progress when the trace attached are counted but not timed "
                           "(timed_calls)"))

    data = SyscallCountData(
        method=method, backend=backend, skipped=skipped, ladder_note=ladder_note, target=target, pid=p.pid,
        comm_filter=p.comm, duration_s=d, total_calls=total, calls_per_s=round(total / d, 1),
        distinct_syscalls=len(rows), syscalls=rows[: p.top_n], syscalls_truncated=len(rows) > p.top_n,
        processes=processes, processes_matched=matched, matched_calls=matched_calls, errors=errors,
        latency_note=latency_note, findings=[], argv=argv, broker_job_id=job_id,
    )
    data.findings = findings(data, rows, p)
    if total == 0:
        warnings.append(f"no system call of {target} returned during the {d} s trace (idle, or blocked in one call)")
    return data, warnings


def _next_for_calls(p: Params, d: SyscallCountData, name: str) -> str:
    if p.pid is not None:
        if _served("perf_cpu_profile"):
            return f"perf_cpu_profile pid={p.pid} duration_s=10 shows the code paths that issue the {name} calls"
        return f"Look at the code of pid {p.pid} that calls {name} in a loop"
    top = d.processes[0].pid if d.processes else None
    if top is not None:
        return f"perf_syscall_count pid={top} duration_s={p.duration_s} shows the syscalls of the busiest process"
    return f"perf_syscall_count per_process=true duration_s={p.duration_s} names the processes making the calls"


def _next_for_errors(p: Params, row: SyscallRow) -> str:
    codes = {e.name for e in row.errnos or []}
    if p.pid is None:
        return (f"perf_syscall_count per_process=true include_errors=true duration_s={p.duration_s} names the "
                f"processes whose {row.name} calls fail")
    if "EBADF" in codes and _served("perf_fd_trace"):
        return (f"EBADF means a descriptor that is not open: perf_fd_trace pid={p.pid} include_fd_list=true shows "
                "which descriptors the process holds")
    if row.name in FILE_LOOKUPS and "ENOENT" in codes and _served("perf_file_trace"):
        return f"perf_file_trace pid={p.pid} mode=opens shows the paths that are missing"
    if row.name in FILE_LOOKUPS:
        return (f"ENOENT on {row.name} is often a search path probed in order (libraries, config files); "
                f"check the paths pid {p.pid} tries (strace -f -e trace={row.name} -p {p.pid})")
    if _served("perf_cpu_profile"):
        return f"perf_cpu_profile pid={p.pid} duration_s=10 shows the code path that retries the failing {row.name}"
    return f"Check the code of pid {p.pid} around its {row.name} calls"


def findings(d: SyscallCountData, rows: list[SyscallRow], p: Params) -> list[Finding]:
    out: list[Finding] = []
    window = float(d.duration_s)
    total = d.total_calls
    if rows and total >= DOMINANT_MIN_CALLS and rows[0].pct >= DOMINANT_PCT:
        top = rows[0]
        hot = top.per_s >= HOT_RATE_PER_S
        out.append(Finding(
            id="syscall.dominant", severity="warning" if hot else "info", resource="process" if p.pid else "cpu",
            title=f"{top.name} is {top.pct:.0f}% of all system calls ({top.per_s:,.0f}/s)",
            detail=(f"{top.count:,} of {total:,} calls of {d.target} in {d.duration_s} s were {top.name}"
                    + (f"; at {top.per_s:,.0f} calls/s the kernel entries and exits alone cost CPU time: batching or "
                       "caching the result usually removes most of them" if hot else "")),
            confidence=0.9, metrics={"pct": top.pct, "per_s": top.per_s, "count": float(top.count)},
            evidence=[Evidence(tool=NAME, counter=f"{top.name} calls", value=top.count, threshold=DOMINANT_PCT,
                               window_s=window, sample=f"{top.name} {top.count} of {total} calls ({top.pct}%)")],
            suggestion=_next_for_calls(p, d, top.name),
        ))
    if d.errors is not None:
        bad = [r for r in rows if r.failed and _visible_failures(r) >= FAIL_MIN
               and 100.0 * _visible_failures(r) / max(r.count, 1) >= FAIL_PCT]
        for r in sorted(bad, key=lambda r: -(r.failed or 0))[:MAX_ERROR_FINDINGS]:
            codes = ", ".join(f"{e.name} {e.count:,}" for e in (r.errnos or [])[:3])
            how = codes if r.errnos is not None else "errno not known (syscount counts failures per syscall only)"
            out.append(Finding(
                id=f"syscall.errors.{r.name}", severity="warning", resource="process" if p.pid else "cpu",
                title=f"{r.name} fails {r.failed_pct:.0f}% of the time ({r.failed:,} failed calls)",
                detail=f"{r.failed:,} of {r.count:,} {r.name} calls of {d.target} returned an error: {how}",
                confidence=0.9 if r.errnos is not None else 0.8,
                metrics={"failed": float(r.failed or 0), "failed_pct": r.failed_pct or 0.0, "count": float(r.count)},
                evidence=[Evidence(tool=NAME, counter=f"{r.name} failed calls", value=r.failed, threshold=FAIL_PCT,
                                   window_s=window, sample=f"{r.name}: {r.failed} of {r.count} failed; {how}")],
                suggestion=_next_for_errors(p, r),
            ))
    if p.include_latency:
        timed = [r for r in rows if r.total_ms]
        if timed:
            slowest = max(timed, key=lambda r: r.total_ms or 0.0)
            waiting = slowest.name in WAITING
            out.append(Finding(
                id="syscall.time", severity="info", resource="process" if p.pid else "cpu",
                title=f"most time in system calls is in {slowest.name} ({slowest.total_ms:,.1f} ms"
                      + (", waiting)" if waiting else ")"),
                detail=(f"{slowest.name}: {slowest.total_ms:,.1f} ms over {slowest.timed_calls or 0:,} calls, mean "
                        f"{slowest.mean_us or 0:,.1f} us" + ("; it is a call that waits (for data, a lock, a timer "
                                                               "or a child), so this is idle time, not slowness"
                                                               if waiting else "")),
                confidence=0.7, metrics={"total_ms": slowest.total_ms or 0.0, "mean_us": slowest.mean_us or 0.0},
                evidence=[Evidence(tool=NAME, counter=f"{slowest.name} time in call (ms)", value=slowest.total_ms,
                                   window_s=window)],
                suggestion=(f"perf_offcpu_profile pid={p.pid} shows where the process blocks"
                            if waiting and p.pid and _served("perf_offcpu_profile") else
                            _next_for_calls(p, d, slowest.name)),
            ))
        slow = [r for r in timed if r.name not in WAITING | SPAWNING and (r.mean_us or 0) >= SLOW_MEAN_US
                and r.count >= 10]
        for r in sorted(slow, key=lambda r: -(r.mean_us or 0))[:2]:
            out.append(Finding(
                id=f"syscall.slow.{r.name}", severity="warning", resource="process" if p.pid else "cpu",
                title=f"{r.name} takes {r.mean_us / 1000:,.1f} ms per call on average",
                detail=f"{r.timed_calls:,} timed {r.name} calls of {d.target}, {r.total_ms:,.1f} ms in total",
                confidence=0.7, metrics={"mean_us": r.mean_us or 0.0, "count": float(r.count)},
                evidence=[Evidence(tool=NAME, counter=f"{r.name} mean latency (us)", value=r.mean_us,
                                   threshold=SLOW_MEAN_US, window_s=window)],
                suggestion=_next_for_calls(p, d, r.name),
            ))
    for f in out:
        if f.next is None:
            f.next = _as_call(f.suggestion)
    return sort_findings(out)


_CALL_RE = re.compile(r"\b(perf_[a-z_]+)((?: [a-z_]+=[A-Za-z0-9_.]+)+)")


def _as_call(text: str) -> NextCall | None:
    """The tool call a suggestion starts with ("perf_x pid=12 include_errors=true ..."), as a NextCall."""
    m = _CALL_RE.search(text)
    if m is None:
        return None
    args: dict[str, object] = {}
    for pair in m.group(2).split():
        key, _, raw = pair.partition("=")
        args[key] = (raw == "true" if raw in ("true", "false") else int(raw) if raw.isdigit() else raw)
    return next_call(m.group(1), **args)


def _benign(name: str, errno: int) -> bool:
    return (errno >= 512 or errno == EINTR or (name in FUTEXES and errno in (EAGAIN, ETIMEDOUT))
            or (name == "ioctl" and errno == ENOTTY))


def _visible_failures(r: SyscallRow) -> int:
    """Failed calls worth a finding: restart codes (interrupted, restarted by the kernel) and
    failures that are part of the call's protocol (see _benign) left out. Without the errno
    (syscount), a futex's failures are assumed to be its protocol."""
    if r.errnos is None:
        return 0 if r.name in FUTEXES else (r.failed or 0)
    return sum(e.count for e in r.errnos if not _benign(r.name, e.errno))


def summarise(d: SyscallCountData) -> str:
    head = f"{d.target}: {d.total_calls:,} system calls in {d.duration_s} s ({d.calls_per_s:,.0f}/s)"
    if d.syscalls:
        head += f"; top {d.syscalls[0].name} {d.syscalls[0].count:,} ({d.syscalls[0].pct:.1f}%)"
    lines = [head]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.syscalls:
        parts = []
        for r in d.syscalls[:5]:
            extra = []
            if r.failed:
                extra.append(f"{r.failed:,} failed" + (": " + ", ".join(f"{e.name} {e.count:,}" for e in r.errnos[:2])
                                                        if r.errnos else ""))
            if r.mean_us is not None:
                extra.append(f"mean {r.mean_us:,.1f} us")
            parts.append(f"{r.name} {r.count:,}" + (f" ({'; '.join(extra)})" if extra else ""))
        lines.append("Syscalls: " + ", ".join(parts))
    if d.processes is not None:
        label = f"Processes matching {d.comm_filter!r}" if d.comm_filter else "Processes"
        lines.append(f"{label}: " + (", ".join(f"{pr.pid} {pr.comm} {pr.count:,}" for pr in d.processes[:5])
                                     or "none"))
    if d.errors is not None:
        lines.append(f"Failed calls: {d.errors.failed_calls:,} ({d.errors.failed_pct:.1f}%)"
                     + ("" if d.errors.by_errno else " (per syscall only: no errno breakdown from syscount)"))
    lines.append(f"Method: {d.method}" + (f" ({len(d.skipped)} rung(s) skipped)" if d.skipped else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- the handler


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    target = "all processes"
    warnings: list[str] = []
    if p.pid is not None:
        status = _proc_status(p.pid)
        if status is None:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}")
        tgid = status.get("Tgid")
        if tgid and tgid.isdecimal() and int(tgid) != p.pid:
            raise ToolError(ErrorCode.INVALID_PARAMS, f"{p.pid} is a thread of process {tgid}, not a process",
                            suggestion=f"Pass the process id {tgid}: the count covers all of its threads.")
        name = status.get("Name")
        target = f"pid {p.pid} ({name})" if name else f"pid {p.pid}"
    per_process = p.per_process or p.comm is not None
    arch = host_arch()
    rungs = rungs_for(p)

    async def attempt(rung: Rung[Params]) -> tuple[Counts, JobResult]:
        assert rung.backend is not None
        request = SyscallCount(backend=rung.backend, duration_s=p.duration_s, pid=p.pid, top_n=BROKER_TOP_N,
                               latency=p.include_latency, per_process=per_process, errors=p.include_errors)
        job = await run_job(ctx, request, expected_s=p.duration_s + STARTUP_S[rung.backend], label=rung.method)
        if rung.backend is Backend.LIBBPF:
            return _parse_libbpf(job, p, per_process, arch), job
        return _parse_bpftrace(job, p, arch), job

    result: LadderResult[Counts] = await climb(ctx, rungs, p, attempt)
    counts = result.value
    warnings += result.warnings()
    if p.pid is not None and _proc_status(p.pid) is None:
        warnings.append(f"process {p.pid} exited during the trace; the counts cover its calls until then")
    if p.comm is not None and not p.per_process:
        warnings.append("comm filters the per-process rows (so they were counted); the per-syscall rows cover every "
                        "process traced" + ("" if p.pid else ": pass pid= of a matching process for its syscalls"))
    ladder_note = ERRNO_NOTE if p.include_errors else None
    errno_reason = None
    if p.include_errors and result.rung.backend is Backend.LIBBPF:
        errno_reason = next((s.reason for s in result.skipped if s.backend == Backend.BPFTRACE.value), None)
    data, more = build(counts, p, method=result.method, backend=result.backend, skipped=result.skipped,
                       ladder_note=ladder_note, target=target, argv=[s.argv for s in result.job.steps]
                       if result.job else [], job_id=result.job.job_id if result.job else None, arch=arch,
                       errno_reason=errno_reason)
    warnings += more
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=counts.truncated)


TOOL = ToolSpec(
    name=NAME,
    title="System call counts (errors, latency, per process)",
    description=(
        "Count system calls for duration_s, system-wide or for one pid: calls per syscall (by name) with rates and "
        "shares; optionally per process (pid, comm; comm filters those rows), failed calls per syscall and per errno "
        "(ENOENT, EAGAIN...), and time spent per syscall (total, mean, max). Findings flag a dominant syscall, "
        "syscalls that fail often and slow calls, each with its evidence and a next step. Runs syscount "
        "(libbpf-tools) or the broker's bpftrace script on the raw_syscalls tracepoints (preferred with "
        "include_errors: only it names the errno); data.method says which ran. Needs the broker's 'trace' grant."
    ),
    params=Params,
    data=SyscallCountData,
    handler=run,
)
