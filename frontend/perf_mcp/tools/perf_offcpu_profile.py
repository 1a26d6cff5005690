"""perf_offcpu_profile: where threads wait instead of running (off-CPU time by stack).

Ladder (first that works): libbpf-tools offcputime > perf record of sched:sched_switch stacks with
--switch-events + perf script > the broker's bpftrace script offcpu.bt on sched:sched_switch.
Every rung counts a block from the moment a thread leaves the CPU (its kernel and user stack taken
there) to the moment it runs again, adds the blocked time up by stack, and counts a block when it
ends: a thread blocked for the whole window, from before the start to after the end, shows no time.
Parsing is trace.offcpu_parse (one shape for all rungs); the analysis and findings are here; the
flame graph is profile.flamegraph's, with microseconds of off-CPU time as the widths.

Frames are unwound by frame pointer: code built without them (most distribution libraries) loses
frames, and the caller of a libc syscall wrapper is skipped (the wrapper has no frame). Named
functions of programs built with -fno-omit-frame-pointer show.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import Backend, JobResult, OffcpuProfile, StepResult, limits

from ..contract import ArtifactRef, Evidence, Finding, NextCall, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..profile.flamegraph import render_svg
from ..profile.perf_script import folded_text
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace.ladder import Rung, RungFailed, Skipped, climb, find_step, run_job, step_failure
from ..trace.offcpu_parse import (
    OffcpuParse,
    OffcpuStack,
    parse_bpftrace_offcpu,
    parse_offcputime,
    parse_perf_offcpu,
)

log = logging.getLogger(__name__)

NAME = "perf_offcpu_profile"
BLOCKED_PCT = 50.0  # a thread off-CPU at least this share of the window gets a finding
PREEMPTED_PCT = 20.0  # runnable-but-waiting share of all off-CPU time that is worth a finding
MAX_THREAD_FINDINGS = 3
STACK_FRAMES_SHOWN = 40  # frames of a stack in the answer (the innermost ones); the folded file has all


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.OFFCPU_DURATION_S[0], le=limits.OFFCPU_DURATION_S[1],
                                    description="How long to trace, in seconds.")] = 5
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX,
                             description="Trace only this process (all its threads); omit for the whole system.")
                   ] | None = None
    min_block_us: Annotated[int, Meta(ge=limits.MIN_BLOCK_US[0], le=limits.MIN_BLOCK_US[1],
                                      description="Leave out blocks shorter than this many microseconds.")] = 1000
    top_n: Annotated[int, Meta(ge=1, le=50, description="How many stacks, functions and threads to list.")] = 10


class OffcpuStackStat(msgspec.Struct, kw_only=True):
    comm: str
    threads: int  # how many threads blocked in this stack
    tids: list[int]  # the first few
    offcpu_ms: float
    share_pct: float  # of all off-CPU time traced
    blocked_in: str  # innermost named user function (or kernel function for kernel threads)
    waiting_in: str  # innermost kernel function below the scheduler: what it waits on
    wait_kind: str
    frames: list[str]  # root first, the innermost STACK_FRAMES_SHOWN
    frames_total: int


class BlockingFunction(msgspec.Struct, kw_only=True):
    function: str
    offcpu_ms: float
    share_pct: float
    threads: int
    waiting_in: str  # the kernel function it waits in most
    wait_kind: str


class ThreadOffcpu(msgspec.Struct, kw_only=True):
    tid: int
    pid: int | None  # process id when the rung reports it (offcputime does not; with pid= it is that)
    comm: str
    offcpu_ms: float
    window_pct: float  # off-CPU time / traced window
    blocked_in: str  # where most of its off-CPU time was spent
    waiting_in: str
    wait_kind: str


class OffcpuProfileData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    target: str
    pid: int | None
    duration_s: int
    window_s: float  # the traced window the shares are of
    min_block_us: int
    total_offcpu_ms: float
    stacks_total: int
    threads_total: int
    top_stacks: list[OffcpuStackStat]
    top_blocking_functions: list[BlockingFunction]
    threads: list[ThreadOffcpu]
    findings: list[Finding]
    artifacts: list[ArtifactRef]
    argv: list[list[str]]
    broker_job_id: int | None


RUNGS: list[Rung[Params]] = [
    Rung(Backend.LIBBPF, "offcputime (libbpf-tools)", programs=("offcputime",), needs=("btf",)),
    Rung(Backend.PERF, "perf record -e sched:sched_switch -g --switch-events + perf script",
         programs=("perf",), needs=("tracepoints",)),
    Rung(Backend.BPFTRACE, "bpftrace on sched:sched_switch (offcpu.bt)", programs=("bpftrace",),
         needs=("tracepoints",)),
]
LADDER = RUNGS


# ---------------------------------------------------------------- where a stack waits (pure)

_SCHEDULER = re.compile(r"^_*(schedule|io_schedule|preempt_schedule|cond_resched)\w*$")
# First match from the leaf decides; order matters (io_schedule before the generic sleep rules).
_WAIT_KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("preempted", re.compile(r"^(irqentry_exit\w*|exit_to_user_mode\w*|preempt_schedule\w*|_?_?cond_resched|"
                             r"asm_sysvec_\w+|raw_irqentry_exit_cond_resched)$")),
    ("disk I/O", re.compile(r"^(io_schedule\w*|folio_wait\w*|wait_on_page\w*|bit_wait_io\w*|__wait_on_buffer|"
                            r"submit_bio_wait|blk_\w+|jbd2_\w+|wait_on_bit_io|filemap_fault|\w*_fsync\w*)$")),
    ("lock", re.compile(r"^(futex_\w+|__futex_\w+|do_futex|rwsem_down_\w+|__mutex_lock\w*|mutex_lock\w*|"
                        r"rt_mutex\w*|down_read\w*|down_write\w*|__down\w*|percpu_rwsem_wait)$")),
    ("pipe", re.compile(r"^(anon_pipe_read|pipe_read|pipe_write|anon_pipe_write|pipe_wait\w*)$")),
    ("network", re.compile(r"^(sk_wait_data|sk_stream_wait_\w+|inet_csk_accept|inet_csk_wait_for_connect|"
                           r"__skb_wait_for_more_packets|unix_stream_read_generic|unix_stream_data_wait|"
                           r"tcp_recvmsg\w*|udp_recvmsg|wait_for_tcp_memory)$")),
    ("poll", re.compile(r"^(do_epoll_wait|ep_poll|do_sys_poll|do_select|core_sys_select|poll_schedule_timeout\w*|"
                        r"do_pselect\w*|io_uring_\w*wait\w*|io_cqring_wait)$")),
    ("sleep", re.compile(r"^(do_nanosleep|hrtimer_nanosleep|common_nsleep|msleep\w*|usleep_range\w*|"
                         r"__x64_sys_pause|sys_pause)$")),
    ("child wait", re.compile(r"^(do_wait|kernel_wait4|__do_sys_wait4)$")),
    ("signal wait", re.compile(r"^(do_sigtimedwait|sigsuspend|__x64_sys_rt_sigsuspend)$")),
    ("page fault", re.compile(r"^(handle_mm_fault|do_user_addr_fault|exc_page_fault)$")),
    ("completion wait", re.compile(r"^(wait_for_completion\w*|__wait_for_common|__wait_rcu_gp|synchronize_rcu\w*)$")),
    ("kernel thread idle", re.compile(r"^(worker_thread|smpboot_thread_fn|kthread_worker_fn|rcu_gp_kthread|"
                                      r"kswapd|kcompactd|rescuer_thread|kthreadd|ksoftirqd\w*|kdamond_fn|"
                                      r"rcu_tasks_kthread|irq_thread)$")),
]
KIND_TEXT = {
    "preempted": "runnable but preempted (waiting for a CPU)",
    "disk I/O": "waiting for disk I/O",
    "lock": "waiting for a lock (futex, mutex, rwsem)",
    "pipe": "waiting on a pipe",
    "network": "waiting for network data",
    "poll": "waiting in poll/epoll/select",
    "sleep": "sleeping on a timer",
    "child wait": "waiting for a child process",
    "signal wait": "waiting for a signal",
    "page fault": "blocked in a page fault",
    "completion wait": "waiting for a kernel completion (RCU grace period, device, another thread)",
    "kernel thread idle": "a kernel thread waiting for work",
    "other": "blocked",
}


class _Where(msgspec.Struct, array_like=True):
    blocked_in: str
    waiting_in: str
    kind: str


def where(s: OffcpuStack) -> _Where:
    """The function a stack blocked in, the kernel function it waits in, and the kind of wait."""
    k = max(0, min(s.kernel_frames, len(s.frames)))
    user = s.frames[: len(s.frames) - k]
    kernel_leaf_first = s.frames[len(s.frames) - k:][::-1]
    waiting = next((f for f in kernel_leaf_first if not _SCHEDULER.match(f)), "")
    kind = "other"
    for f in kernel_leaf_first:
        found = next((name for name, rx in _WAIT_KINDS if rx.match(f)), None)
        if found:
            kind = found
            break
    blocked = next((f for f in reversed(user) if f and not f.startswith("[")), "")
    if not user or not blocked:
        blocked = blocked or waiting or (s.frames[-1] if s.frames else "[unknown]")
    return _Where(blocked, waiting or "[unknown]", kind)


def folded_stacks(stacks: list[OffcpuStack]) -> tuple[dict[str, int], frozenset[str]]:
    """'comm;root;...;leaf' -> off-CPU microseconds; and the kernel frame names (for colours)."""
    out: dict[str, int] = {}
    kernel: set[str] = set()
    for s in stacks:
        comm = s.comm.replace(";", ":") or "[unknown]"
        key = ";".join([comm, *(f.replace(";", ":") for f in s.frames)]) if s.frames else f"{comm};[no stack]"
        out[key] = out.get(key, 0) + s.offcpu_us
        if s.kernel_frames:
            kernel.update(s.frames[-s.kernel_frames:])
    return out, frozenset(kernel)


class Analysis(msgspec.Struct, kw_only=True):
    total_us: int
    stacks: list[OffcpuStackStat]
    functions: list[BlockingFunction]
    threads: list[ThreadOffcpu]
    stacks_total: int
    threads_total: int
    preempted_us: int


def _ms(us: int) -> float:
    return round(us / 1000.0, 3)


def _pct(part: int, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole > 0 else 0.0


def analyse(stacks: list[OffcpuStack], *, window_s: float, top_n: int, pid: int | None) -> Analysis:
    total = sum(s.offcpu_us for s in stacks)
    wheres = [where(s) for s in stacks]
    # Stacks: the same comm and frames in several threads (a pool) are one line.
    by_stack: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for i, s in enumerate(stacks):
        by_stack.setdefault((s.comm, tuple(s.frames)), []).append(i)
    stack_stats = []
    for (comm, frames), idx in by_stack.items():
        us = sum(stacks[i].offcpu_us for i in idx)
        w = wheres[idx[0]]
        tids = sorted({stacks[i].tid if stacks[i].tid is not None else stacks[i].pid for i in idx})
        stack_stats.append(OffcpuStackStat(
            comm=comm, threads=len(tids), tids=tids[:10], offcpu_ms=_ms(us), share_pct=_pct(us, total),
            blocked_in=w.blocked_in, waiting_in=w.waiting_in, wait_kind=w.kind,
            frames=list(frames[-STACK_FRAMES_SHOWN:]), frames_total=len(frames)))
    stack_stats.sort(key=lambda x: (-x.offcpu_ms, x.comm, x.frames))
    # Blocking functions.
    fn_us: dict[str, int] = {}
    fn_tids: dict[str, set[int]] = {}
    fn_wait: dict[str, dict[tuple[str, str], int]] = {}
    for s, w in zip(stacks, wheres):
        fn_us[w.blocked_in] = fn_us.get(w.blocked_in, 0) + s.offcpu_us
        fn_tids.setdefault(w.blocked_in, set()).add(s.tid if s.tid is not None else s.pid)
        waits = fn_wait.setdefault(w.blocked_in, {})
        waits[(w.waiting_in, w.kind)] = waits.get((w.waiting_in, w.kind), 0) + s.offcpu_us
    functions = []
    for fn, us in fn_us.items():
        (waiting, kind), _ = max(fn_wait[fn].items(), key=lambda kv: (kv[1], kv[0]))
        functions.append(BlockingFunction(function=fn, offcpu_ms=_ms(us), share_pct=_pct(us, total),
                                          threads=len(fn_tids[fn]), waiting_in=waiting, wait_kind=kind))
    functions.sort(key=lambda f: (-f.offcpu_ms, f.function))
    # Threads.
    th_us: dict[int, int] = {}
    th_info: dict[int, tuple[str, int | None]] = {}
    th_where: dict[int, dict[tuple[str, str, str], int]] = {}
    for s, w in zip(stacks, wheres):
        tid = s.tid if s.tid is not None else s.pid
        th_us[tid] = th_us.get(tid, 0) + s.offcpu_us
        th_info.setdefault(tid, (s.comm, s.tgid if s.tgid is not None else pid))
        ws = th_where.setdefault(tid, {})
        key = (w.blocked_in, w.waiting_in, w.kind)
        ws[key] = ws.get(key, 0) + s.offcpu_us
    threads = []
    window_us = window_s * 1e6
    for tid, us in th_us.items():
        (blocked, waiting, kind), _ = max(th_where[tid].items(), key=lambda kv: (kv[1], kv[0]))
        comm, tgid = th_info[tid]
        threads.append(ThreadOffcpu(tid=tid, pid=tgid, comm=comm, offcpu_ms=_ms(us),
                                    window_pct=_pct(us, window_us), blocked_in=blocked, waiting_in=waiting,
                                    wait_kind=kind))
    threads.sort(key=lambda t: (-t.offcpu_ms, t.tid))
    preempted = sum(s.offcpu_us for s, w in zip(stacks, wheres) if w.kind == "preempted")
    return Analysis(total_us=total, stacks=stack_stats[:top_n], functions=functions[:top_n], threads=threads[:top_n],
                    stacks_total=len(stack_stats), threads_total=len(threads), preempted_us=preempted)


def _next_step(kind: str, pid: int | None, duration_s: int) -> str:
    target = f"pid={pid}" if pid is not None else "pid=<that process>"
    d = max(duration_s, 5)
    if kind == "lock":
        return (f"Find who holds the lock: perf_cpu_profile {target} duration_s={d} shows what the other threads "
                f"run meanwhile, and perf_thread_profile {target} include_offcpu=true which threads wait.")
    if kind == "disk I/O":
        return f"Check the device: perf_io_latency mode=trace duration_s={d}; then perf_use_check for disk saturation."
    if kind == "preempted":
        return (f"The thread was runnable but had no CPU: perf_runq_latency {target} duration_s={d} measures the "
                "wait, perf_snapshot shows the run queue and CPU use.")
    if kind in ("pipe", "network", "poll", "sleep", "signal wait", "child wait"):
        return (f"It waits for input or a timer, which is normal for an idle reader or event loop; if work is slow, "
                f"look at the producer: perf_thread_profile {target} include_offcpu=true shows whether the "
                "other threads are busy or waiting too.")
    return f"perf_thread_profile {target} include_offcpu=true puts this beside each thread's CPU and run-queue wait."


def _next_call(kind: str, pid: int | None, duration_s: int) -> NextCall | None:
    """The tool call _next_step's words start with, with the arguments from the data."""
    d = min(max(duration_s, 5), 30)
    if kind == "lock":
        return next_call("perf_cpu_profile", pid=pid, duration_s=d) if pid else None
    if kind == "disk I/O":
        return next_call("perf_io_latency", mode="trace", duration_s=d)
    if kind == "preempted":
        return next_call("perf_runq_latency", pid=pid or None, duration_s=d)
    return next_call("perf_thread_profile", pid=pid, include_offcpu=True) if pid else None


def findings(a: Analysis, *, window_s: float, duration_s: int, pid: int | None, target: str,
             method: str, complete: bool) -> list[Finding]:
    out: list[Finding] = []
    window_ms = window_s * 1000.0
    for t in a.threads:
        if len(out) >= MAX_THREAD_FINDINGS or t.window_pct < BLOCKED_PCT:
            break
        # System-wide, idle kernel threads and event loops blocked all the time are the normal case.
        # System-wide, idle kernel threads, event loops and workers parked on a condition variable
        # (a futex wait too) are blocked all the time as a rule: only I/O waits are reported there.
        if pid is None and t.wait_kind not in ("disk I/O", "page fault"):
            continue
        severity = "warning" if t.wait_kind in ("disk I/O", "page fault") else "info"
        note = (" A futex wait is either a contended lock or an idle thread parked on a condition variable: "
                "the user frames above it tell which." if t.wait_kind == "lock" else "")
        stack = next((s for s in a.stacks if t.tid in s.tids and s.blocked_in == t.blocked_in), None)
        sample = " > ".join(stack.frames[-8:]) if stack else t.blocked_in
        out.append(Finding(
            id="offcpu.thread_blocked", severity=severity, resource="process",
            # A block that ends while the program prints its maps is counted too: a thread blocked
            # throughout can show a few % over the window; the title says "all of" then.
            title=(f"Thread {t.comm} (tid {t.tid}) was off-CPU "
                   + (f"{t.window_pct:.0f}% of" if t.window_pct < 99.5 else "all of")
                   + f" the {window_s:g} s window, blocked in {t.blocked_in}"),
            detail=(f"{t.offcpu_ms / 1000:.2f} s of {window_s:g} s off-CPU, mostly {KIND_TEXT.get(t.wait_kind, 'blocked')}"
                    f" (kernel: {t.waiting_in}); {target}, {method}.{note}"),
            confidence=0.9 if complete and not t.blocked_in.startswith("[") else 0.7,
            metrics={"offcpu_ms": t.offcpu_ms, "window_pct": t.window_pct},
            evidence=[Evidence(tool=NAME, counter="offcpu_ms", value=t.offcpu_ms,
                               threshold=round(window_ms * BLOCKED_PCT / 100.0, 1), window_s=window_s,
                               sample=f"tid {t.tid}: {sample}")],
            suggestion=_next_step(t.wait_kind, t.pid if t.pid is not None else pid, duration_s),
            next=_next_call(t.wait_kind, t.pid if t.pid is not None else pid, duration_s),
        ))
    if a.total_us and _pct(a.preempted_us, a.total_us) >= PREEMPTED_PCT:
        share = _pct(a.preempted_us, a.total_us)
        out.append(Finding(
            id="offcpu.preempted", severity="warning", resource="cpu",
            title=f"{share:.0f}% of off-CPU time was spent runnable, waiting for a CPU",
            detail=(f"{a.preempted_us / 1e6:.2f} s of {a.total_us / 1e6:.2f} s off-CPU time began with a preemption "
                    "(the thread could run but the CPU was given to another): CPU saturation, not blocking."),
            confidence=0.8,
            metrics={"preempted_ms": _ms(a.preempted_us), "share_pct": share},
            evidence=[Evidence(tool=NAME, counter="preempted_offcpu_ms", value=_ms(a.preempted_us),
                               threshold=PREEMPTED_PCT, window_s=window_s, sample=target)],
            suggestion=_next_step("preempted", pid, duration_s),
            next=_next_call("preempted", pid, duration_s),
        ))
    return sort_findings(out)


# ---------------------------------------------------------------- running a rung


class _RungAnswer(msgspec.Struct):
    parse: OffcpuParse
    warnings: list[str]


def _tail(data: bytes, lines: int = 3) -> str:
    return " | ".join(data.decode("utf-8", "replace").strip().splitlines()[-lines:])


def _process_gone(pid: int | None) -> bool:
    return pid is not None and not Path(f"/proc/{pid}").exists()


def _failure(step: StepResult | None) -> str | None:
    """step_failure, except that a program stopped at the broker's output cap is read: its output
    up to the cap is a partial answer (flagged truncated), which beats the next rung's none."""
    if step is not None and step.stdout_truncated and step.stdout and not step.timed_out:
        return None
    return step_failure(step)


def _read_rung(backend: Backend, job: JobResult, p: Params) -> _RungAnswer:
    """Parse one rung's job; RungFailed when the program could not trace."""
    warnings: list[str] = []
    if backend is Backend.PERF:
        record = find_step(job, "record")
        reason = step_failure(record, stopped_by_us=True)
        if reason is not None:
            if _process_gone(p.pid):
                raise ToolError(ErrorCode.PID_NOT_FOUND, f"process {p.pid} exited before or during the trace")
            raise RungFailed(reason)
        assert record is not None
        text = record.stderr.decode("utf-8", "replace")
        lost = re.search(r"[Ll]ost (\d+) (?:chunks|samples)", text)
        if lost:
            warnings.append(f"perf record lost {lost.group(1)} chunks of events: some blocks are missing")
        step = find_step(job, "script")
        reason = _failure(step)
        if reason is not None:
            raise RungFailed(reason)
        assert step is not None
        perf = parse_perf_offcpu(step.stdout.decode("utf-8", "replace"), min_block_us=p.min_block_us, pid=p.pid)
        parsed = perf.parse
        if perf.open_blocks:
            warnings.append(f"{perf.open_blocks} threads were still off-CPU when the trace ended; "
                            "those last blocks are not counted")
    else:
        name = "offcputime" if backend is Backend.LIBBPF else "offcpu"
        step = find_step(job, name)
        reason = _failure(step)
        if reason is not None:
            if _process_gone(p.pid):
                raise ToolError(ErrorCode.PID_NOT_FOUND, f"process {p.pid} exited before or during the trace")
            raise RungFailed(reason)
        assert step is not None
        raw = step.stdout
        if backend is Backend.LIBBPF:
            parsed = parse_offcputime(raw.decode("utf-8", "replace"))
            missed = step.stderr.count(b"[Missed")
            if missed:
                warnings.append(f"offcputime could not read {missed} kernel or user stacks (stack map full or "
                                "unwinding failed); their time is missing")
        else:
            parsed = parse_bpftrace_offcpu(raw)
    if step.stdout_truncated:
        parsed = msgspec.structs.replace(parsed, truncated=True)
    if not parsed.stacks and parsed.bad_lines:
        raise ToolError(ErrorCode.PARSE_ERROR, f"none of the off-CPU output could be read ({parsed.bad_lines} "
                                               f"bad lines): {_tail(step.stdout)}")
    if not parsed.stacks and step.stdout_truncated:
        raise ToolError(ErrorCode.OUTPUT_TRUNCATED, "the broker's output cap cut the off-CPU output before one "
                                                    "whole stack", suggestion="Pass pid= or a shorter duration_s.")
    return _RungAnswer(parsed, warnings)


def _expected_s(backend: Backend, duration_s: int) -> float:
    return duration_s + (2.0 if backend is Backend.BPFTRACE else 1.0)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if p.min_block_us > p.duration_s * 1_000_000:
        raise ToolError(ErrorCode.INVALID_PARAMS,
                        f"min_block_us {p.min_block_us} is longer than duration_s {p.duration_s} ("
                        f"{p.duration_s * 1_000_000} us): only blocks that begin and end in the window are "
                        "measured, so none could qualify",
                        suggestion=f"Call again with min_block_us <= {p.duration_s * 1_000_000} or duration_s >= "
                                   f"{-(-p.min_block_us // 1_000_000)}.")
    target = "system-wide (all processes)"
    if p.pid is not None:
        comm, owner = _process(p.pid)
        if comm is None:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}")
        if owner is not None and owner != p.pid:
            raise ToolError(ErrorCode.INVALID_PARAMS, f"{p.pid} is a thread of process {owner}, not a process",
                            suggestion=f"Pass the process id: pid={owner} (all its threads are traced).")
        target = f"pid {p.pid} ({comm})" if comm else f"pid {p.pid}"

    async def attempt(rung: Rung[Params]) -> tuple[_RungAnswer, JobResult | None]:
        assert rung.backend is not None
        request = OffcpuProfile(backend=rung.backend, duration_s=p.duration_s, min_block_us=p.min_block_us,
                                pid=p.pid)
        job = await run_job(ctx, request, expected_s=_expected_s(rung.backend, p.duration_s), label=rung.method)
        return _read_rung(rung.backend, job, p), job

    result = await climb(ctx, RUNGS, p, attempt)
    answer: _RungAnswer = result.value
    parsed = answer.parse
    warnings = result.warnings() + answer.warnings
    if parsed.truncated:
        warnings.append("the off-CPU output was cut short (broker output cap or a partial last entry): the figures "
                        "cover the part before the cut; a shorter duration_s or pid= keeps it whole")
    if parsed.lost_entries:
        warnings.append(f"{parsed.lost_entries} off-CPU entries lost their user stack and were left out")
    if parsed.bad_lines:
        warnings.append(f"{parsed.bad_lines} lines of off-CPU output could not be read and were skipped")
    if _process_gone(p.pid):
        warnings.append(f"process {p.pid} exited during the trace: its figures cover the time before")
    if not parsed.stacks:
        warnings.append(f"no block of {p.min_block_us} us or more ended in the window ({target}); "
                        "a thread blocked for the whole window shows none")

    # offcputime traces for duration_s once attached; bpftrace reports its window, perf's is its first
    # to last event.
    window_s = parsed.window_s or float(p.duration_s)
    a = analyse(parsed.stacks, window_s=window_s, top_n=p.top_n, pid=p.pid)
    method = result.method
    artifacts = await _artifacts(ctx, parsed.stacks, target, p, method, warnings)
    job = result.job
    data = OffcpuProfileData(
        method=method, backend=result.backend, skipped=result.skipped, target=target, pid=p.pid,
        duration_s=p.duration_s, window_s=round(window_s, 3), min_block_us=p.min_block_us,
        total_offcpu_ms=_ms(a.total_us),
        stacks_total=a.stacks_total, threads_total=a.threads_total, top_stacks=a.stacks,
        top_blocking_functions=a.functions, threads=a.threads,
        findings=findings(a, window_s=window_s, duration_s=p.duration_s, pid=p.pid, target=target, method=method,
                          complete=not parsed.truncated),
        artifacts=artifacts, argv=[list(s.argv) for s in job.steps] if job else [],
        broker_job_id=job.job_id if job else None,
    )
    truncated = parsed.truncated or a.stacks_total > p.top_n or a.threads_total > p.top_n
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def _process(pid: int) -> tuple[str | None, int | None]:
    """(comm or '' when unreadable, Tgid) of a live task; (None, None) when there is no such task."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None, None
    except OSError:
        return ("", None) if Path(f"/proc/{pid}").exists() else (None, None)
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    tgid = fields.get("Tgid", "").strip()
    return fields.get("Name", "").strip(), int(tgid) if tgid.isdecimal() else None


class _Files(msgspec.Struct):
    svg: str
    folded: str


def _render(stacks: list[OffcpuStack], title: str, subtitle: str) -> _Files:
    """CPU-bound for big system-wide traces: runs in a worker thread."""
    folded, kernel = folded_stacks(stacks)
    svg = render_svg(folded, title=title, subtitle=subtitle, kernel_frames=kernel)
    # The renderer labels widths as samples; here they are microseconds off-CPU.
    svg = re.sub(r"\((\d+) samples, ", r"(\1 us off-CPU, ", svg)
    return _Files(svg=svg, folded=folded_text(folded))


async def _artifacts(ctx: ToolContext, stacks: list[OffcpuStack], target: str, p: Params, method: str,
                     warnings: list[str]) -> list[ArtifactRef]:
    if not stacks:
        return []
    subtitle = f"{target}, {p.duration_s} s, blocks >= {p.min_block_us} us, widths in us off-CPU; {method}"
    files = await trio.to_thread.run_sync(_render, stacks, "Off-CPU flame graph", subtitle)
    group = ctx.artifacts.new_group("offcpu-profile")
    refs: list[ArtifactRef] = []
    for name, mime, content, desc in (
        ("offcpu-flamegraph.svg", "image/svg+xml", files.svg, f"Off-CPU flame graph of {target} (widths: us)"),
        ("offcpu-stacks.folded", "text/plain", files.folded,
         "Folded off-CPU stacks (comm;root;...;leaf microseconds)"),
    ):
        ref = ctx.artifacts.put(group, name, mime, content, desc)
        if ref is None:
            warnings.append(f"{name} ({len(content)} bytes) is larger than the artifact store and was not kept")
        else:
            refs.append(ref)
    return refs


def summarise(d: OffcpuProfileData) -> str:
    head = (f"Off-CPU profile of {d.target}: {d.total_offcpu_ms / 1000:.2f} s off-CPU in {d.stacks_total} stacks, "
            f"{d.threads_total} threads, {d.duration_s} s window, blocks >= {d.min_block_us} us")
    lines = [head]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.top_blocking_functions:
        lines.append("Top blocking functions (off-CPU ms, share):")
        lines += [f"  {f.offcpu_ms:10.1f} {f.share_pct:6.2f}%  {f.function}  ({f.wait_kind}: {f.waiting_in}, "
                  f"{f.threads} thread{'s' if f.threads != 1 else ''})" for f in d.top_blocking_functions[:8]]
    if d.threads:
        lines.append("Threads (off-CPU ms, % of window):")
        lines += [f"  {t.offcpu_ms:10.1f} {t.window_pct:6.1f}%  {t.comm} (tid {t.tid}) in {t.blocked_in}"
                  for t in d.threads[:8]]
    if d.top_stacks:
        s = d.top_stacks[0]
        lines.append(f"Top stack ({s.share_pct:.1f}%, {s.comm}): " + " > ".join(s.frames[-8:]))
    lines += [f"{a.name}: {a.uri} ({a.size} bytes)" for a in d.artifacts]
    lines.append(f"Method: {d.method}" + (f" (skipped: {', '.join(s.method for s in d.skipped)})" if d.skipped else ""))
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="Off-CPU profile (where threads block)",
    description=(
        "Trace where threads of one process (pid) or of the whole system wait instead of running: off-CPU time "
        "by kernel+user stack over duration_s, blocks of at least min_block_us. Ladder: offcputime (libbpf-tools) "
        "> perf sched_switch stacks > bpftrace on sched:sched_switch; data.method says which ran. Returns the top "
        "stacks with their off-CPU ms and share, the top blocking functions with the kernel wait behind them, "
        "per-thread totals, findings with a next step, and an off-CPU flame graph SVG plus folded stacks as MCP "
        "resources. Needs the perf-mcp broker and the 'trace' grant."
    ),
    params=Params,
    data=OffcpuProfileData,
    handler=run,
)
