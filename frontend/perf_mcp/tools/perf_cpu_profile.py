"""perf_cpu_profile: on-CPU stacks of one process or the whole system, folded here.

Ladder (RUNGS, first that works):
1. bpftrace profile:hz (the broker's profile.bt): stacks counted in the kernel,
   no perf.data, only the distinct stacks cross to us. Process profiles only:
   bpftrace 0.17 names user frames at exit with one symbol cache per process
   (76 s after a 10 s system-wide profile on a busy 2-CPU host) and its stack map
   holds 4096 stacks; whole seconds only (interval:s).
2. perf record -g + perf script (the broker's CpuProfile PERF job), folded by
   profile.perf_script.

Both give a profile.perf_script.Folded, so the analysis (profile.analysis), the
flame graph (profile.flamegraph) and the artifacts are the same whichever ran.

Processes are told apart by pid and named by command line from snapshots of
/proc taken while the profile runs (profile.procs); system-wide, perf-mcp's own
processes (the broker's perf and bpftrace, this frontend) are left out of the
rankings and counted in own_pct. Idle is judged against the samples a fully
busy target would give (see profile.analysis).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import Backend, CpuProfile, JobResult, StepResult, limits

from ..contract import ArtifactRef, Finding
from ..errors import ErrorCode, ToolError
from ..profile import procs
from ..profile.analysis import FunctionStat, ProcessStat, StackStat, analyse, findings
from ..profile.bpftrace_stacks import fold_profile_json
from ..profile.flamegraph import render_svg
from ..profile.perf_record import parse_record_stderr
from ..profile.perf_script import Folded, fold, folded_text
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace.ladder import Rung, RungFailed, Skipped, climb, find_step, run_job, step_failure

log = logging.getLogger(__name__)

NAME = "perf_cpu_profile"
SCRIPT_ESTIMATE_S = 2.0  # progress budget after sampling (perf script, bpftrace's exit)
BPFTRACE_ATTACH_S = 1.0  # progress budget for bpftrace's compile and attach
# The bpftrace rung gives way to perf when its stack map lost more than this share of the samples.
BPFTRACE_MAX_LOST_PCT = 5.0
INLINE_FOLDED_MAX = 256 * 1024  # output_format=collapsed pastes at most this much
RAW_ARTIFACT_MAX = 32 * 1024 * 1024
PERF_ATTACH_S = 0.3  # perf record's start-up: the mid-window snapshot waits this long more
EARLY_STOP_S = 0.25  # perf record ending this much before duration_s: its target exited
JIT_COMMS = frozenset({"node", "nodejs", "java"})  # profiled by perf: see _bpftrace_unsupported


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[float, Meta(ge=limits.CPU_PROFILE_DURATION_S[0], le=limits.CPU_PROFILE_DURATION_S[1],
                                      description="How long to sample, in seconds.")] = 5.0
    sample_rate_hz: Annotated[int, Meta(ge=limits.CPU_PROFILE_FREQUENCY_HZ[0], le=limits.CPU_PROFILE_FREQUENCY_HZ[1],
                                        description="Samples per second per CPU (99 avoids lockstep with timers).")] = 99
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX,
                             description="Profile only this process (all its threads); omit for the whole system.")] | None = None
    include_kernel: Annotated[bool, Meta(description="Include kernel frames (false = user space only).")] = True
    output_format: Annotated[Literal["summary", "collapsed"], Meta(
        description="summary: rankings only; collapsed: also paste the folded stacks (capped) into data.folded.")] = "summary"
    top_n: Annotated[int, Meta(ge=1, le=50, description=(
        "Functions by self time and processes listed (functions by total time add up to half as many)."))] = 10


class CpuProfileData(msgspec.Struct, kw_only=True, omit_defaults=True):
    summary: str  # one line: target, samples, idle, top function, findings
    method: str
    backend: str  # the rung that answered: bpftrace or perf
    skipped: list[Skipped]  # rungs above it and why they did not answer
    target: str
    pid: int | None
    duration_s: float
    sample_rate_hz: int  # the rate used (the broker lowers it for long system-wide profiles on many CPUs)
    include_kernel: bool
    sampled_s: float  # the sampling window (bpftrace: from its own clock, after attaching)
    samples: int
    # What a fully busy target gives: sampled_s x rate x CPUs system-wide, x min(threads, CPUs) for a process.
    expected_samples: int
    # System-wide: share of CPU time no task ran, 1 - busy samples / expected. One process: share of the
    # time it could have run that it was off CPU, 1 - samples / expected.
    idle_pct: float
    kernel_pct: float  # samples with the leaf frame in the kernel
    unknown_pct: float  # samples with a leaf frame without a symbol
    own_pct: float  # system-wide: samples of perf-mcp's own processes, left out of the rankings below
    top_functions: list[FunctionStat]  # by self %, then the top by total % (callers of the hot code)
    hottest_stacks: list[StackStat]
    processes: list[ProcessStat]  # apart by pid, with the command line
    findings: list[Finding]
    artifacts: list[ArtifactRef]
    argv: list[list[str]]
    after_sampling_s: float | None = None  # from the end of sampling to this answer (perf: from the broker's step times)
    broker_job_id: int | None = None
    folded: str | None = None  # output_format=collapsed


def process_name(pid: int) -> str | None:
    """comm of a live process, '' when unreadable, None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return "" if os.path.exists(f"/proc/{pid}") else None


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie's memory maps are gone: nothing to name frames by)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] not in ("Z", "X")


def sampling_event(argv: list[str]) -> str:
    """The event perf sampled on: -e from the argv, else cycles when a CPU PMU exists, else cpu-clock."""
    if "-e" in argv[:-1]:
        return argv[argv.index("-e") + 1]
    pmus = Path("/sys/bus/event_source/devices")
    if any((pmus / d).exists() for d in ("cpu", "cpu_core", "cpu_atom", "armv8_pmuv3")):
        return "cycles"
    return "cpu-clock"


def _tail(data: bytes, lines: int = 5) -> str:
    return " | ".join(data.decode("utf-8", "replace").strip().splitlines()[-lines:])


def check_record_step(step: StepResult | None, pid: int | None) -> list[str]:
    """Raise for a failed perf record; return warnings for a successful one."""
    if step is None:
        raise ToolError(ErrorCode.EXECUTION_FAILED, "the broker's reply has no record step")
    report = parse_record_stderr(step.stderr.decode("utf-8", "replace"))
    stopped_normally = step.exit_status == 0 or step.signal in (signal.SIGINT, signal.SIGTERM)
    if step.timed_out and not stopped_normally:
        raise ToolError(ErrorCode.TIMEOUT, "perf record did not stop within the broker's time limit")
    if not stopped_normally:
        if report.process_missing and pid is not None:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"process {pid} exited before or during the profile")
        raise ToolError(ErrorCode.EXECUTION_FAILED,
                        f"perf record failed (exit {step.exit_status}, signal {step.signal}): {_tail(step.stderr)}")
    warnings = [f"perf record: {m}" for m in report.messages]
    if report.lost_chunks:
        warnings.append(f"perf record lost {report.lost_chunks} chunks of samples; lower sample_rate_hz")
    return warnings


def _bpftrace_unsupported(p: Params) -> str | None:
    if p.pid is None:
        return ("system-wide profiles: bpftrace 0.17 names user frames at exit with one symbol cache per "
                "process (over a minute after 10 s on a busy host) and its stack map holds 4096 stacks")
    if p.duration_s != int(p.duration_s):
        return "bpftrace's profile runs whole seconds (duration_s is not a whole number)"
    if os.path.exists(f"/tmp/perf-{p.pid}.map"):
        return (f"the process has a perf map (/tmp/perf-{p.pid}.map: JIT code) that bpftrace 0.17 does not read; "
                "perf script names its frames from it")
    if process_name(p.pid) in JIT_COMMS:
        return ("a JIT runtime: bpftrace 0.17 names its frames at exit from the binary's symbols (node's took "
                "over a minute, past the broker's limit) and reads no perf map; perf names them from /tmp/perf-PID.map")
    if not p.include_kernel and os.uname().machine != "x86_64":
        return "user-only sampling on the bpftrace rung tells user from kernel mode by x86-64 addresses"
    return None


RUNGS: list[Rung[Params]] = [
    Rung(Backend.BPFTRACE, "bpftrace profile:hz, stacks counted in the kernel (profile.bt)", programs=("bpftrace",),
         unsupported=_bpftrace_unsupported),
    Rung(Backend.PERF, "perf record -g + perf script, folded by perf-mcp", programs=("perf",)),
]
LADDER = RUNGS


class _Collected(msgspec.Struct, kw_only=True):
    """One rung's answer, before the (rung-independent) analysis."""

    folded: Folded
    method: str
    raw_name: str  # the raw output's artifact
    raw_desc: str
    raw: bytes
    rate_hz: int
    sampled_s: float
    sampling_end: float | None  # time.monotonic() when sampling ended, when known
    stopped_early_s: float | None  # perf rung: perf record ended by itself this early (its target exited)
    warnings: list[str]
    truncated: bool
    argv: list[list[str]]


def _rate_of(argv: list[str], asked: int) -> int:
    """The -F the broker used (it lowers the rate of long profiles on many CPUs)."""
    if "-F" in argv[:-1]:
        value = argv[argv.index("-F") + 1]
        if value.isdecimal():
            return int(value)
    return asked


def _perf_collected(job: JobResult, p: Params) -> _Collected:
    record = find_step(job, "record")
    warnings = check_record_step(record, p.pid)
    assert record is not None
    scripts = [s for s in job.steps if s.name == "script" or (s.name.startswith("script") and s.name[6:].isdecimal())]
    if not scripts:
        raise ToolError(ErrorCode.EXECUTION_FAILED, "the broker's reply has no script step")
    for script in scripts:
        if script.exit_status not in (0, None) or script.timed_out:
            raise ToolError(ErrorCode.EXECUTION_FAILED,
                            f"perf script failed (exit {script.exit_status}): {_tail(script.stderr)}")
        if script.stderr.strip():
            warnings.append(f"perf script: {_tail(script.stderr, 3)}")
    # Time slices (script1, script2, ...) are whole samples each: their texts concatenate.
    raw = b"".join(s.stdout if s.stdout.endswith(b"\n") or not s.stdout else s.stdout + b"\n"
                   for s in scripts[:-1]) + scripts[-1].stdout
    truncated = any(s.stdout_truncated for s in scripts)
    if truncated:
        warnings.append(f"perf script output was cut at the broker's cap ({len(raw)} bytes): "
                        "the profile covers the samples before the cut; lower duration_s or sample_rate_hz")
    rate = _rate_of(record.argv, p.sample_rate_hz)
    # Sampling ended when the broker stopped perf record; after it: perf record's exit, perf script.
    after = max(0.0, record.wall_s - p.duration_s) + max(s.wall_s for s in scripts)
    method = f"perf record -g ({sampling_event(record.argv)}) + perf script, folded by perf-mcp"
    early = record.wall_s if p.pid is not None and record.wall_s < p.duration_s - EARLY_STOP_S else None
    return _Collected(folded=Folded(stacks={}, samples=0), method=method, raw_name="perf-script.txt",
                      raw_desc="Raw perf script output (" + _fields(scripts[0].argv) + ")", raw=raw, rate_hz=rate,
                      sampled_s=float(early if early is not None else p.duration_s),
                      sampling_end=time.monotonic() - after, stopped_early_s=early, warnings=warnings,
                      truncated=truncated, argv=[s.argv for s in job.steps])


def _fields(argv: list[str]) -> str:
    return argv[argv.index("-F") + 1] if "-F" in argv[:-1] else "perf script"


def _bpftrace_collected(job: JobResult, p: Params) -> _Collected:
    step = find_step(job, "profile")
    reason = step_failure(step)
    if reason is not None:
        raise RungFailed(reason)
    assert step is not None
    prof = fold_profile_json(step.stdout)
    warnings: list[str] = []
    if not prof.attached and prof.samples_taken is None:
        raise RungFailed(f"bpftrace printed no profile: {_tail(step.stderr, 3) or 'no message'}")
    taken = prof.samples_taken or 0
    if prof.lost and taken and 100.0 * prof.lost / taken > BPFTRACE_MAX_LOST_PCT:
        raise RungFailed(f"bpftrace's stack map held {taken - prof.lost} of {taken} samples (too many distinct "
                         "stacks for its 4096 entries)")
    if prof.lost:
        warnings.append(f"{prof.lost} of {taken} samples lost their stack (bpftrace's stack map was full)")
    if step.stdout_truncated:
        warnings.append(f"bpftrace's output was cut at the broker's cap ({len(step.stdout)} bytes): "
                        "the stacks after the cut are missing")
    if prof.folded.bad_lines:
        warnings.append(f"{prof.folded.bad_lines} stack entries of bpftrace's output could not be read")
    if p.pid is not None and prof.user_frames and not _running(p.pid):
        warnings.append(f"process {p.pid} exited before bpftrace named its frames: "
                        f"{prof.unnamed_user_frames} of {prof.user_frames} user frames are left as addresses")
    elif prof.user_frames and prof.unnamed_user_frames * 2 > prof.user_frames:
        warnings.append(f"{prof.unnamed_user_frames} of {prof.user_frames} user frames have no symbol "
                        "(stripped binaries, JIT code, or processes that exited before bpftrace named them)")
    sampled = prof.sampled_s if prof.sampled_s is not None else float(p.duration_s)
    end: float | None = None
    if prof.sampling_end_ns is not None:  # bpftrace's nsecs is CLOCK_MONOTONIC, as time.monotonic()
        end = prof.sampling_end_ns / 1e9
    # profile.bt's parameters end the argv: hz, duration, pid, include_kernel.
    rate = int(step.argv[-4]) if len(step.argv) >= 4 and step.argv[-4].isdecimal() else p.sample_rate_hz
    method = "bpftrace profile:hz (stacks counted in the kernel, named at exit)"
    return _Collected(folded=prof.folded, method=method, raw_name="bpftrace-profile.json",
                      raw_desc="Raw bpftrace output (JSON: stack counts by pid, comm, kernel and user stack)",
                      raw=step.stdout, rate_hz=rate, sampled_s=sampled, sampling_end=end, stopped_early_s=None,
                      warnings=warnings,
                      truncated=step.stdout_truncated, argv=[s.argv for s in job.steps])


class _Outcome(msgspec.Struct):
    folded: Folded
    svg: str
    folded_file: str


def _fold_and_render(raw: bytes | None, folded: Folded | None, title: str, subtitle: str) -> _Outcome:
    """CPU-bound (tens of MB of text): runs in a worker thread."""
    if folded is None:
        folded = fold(raw.decode("utf-8", "replace") if raw else "")
    svg = render_svg(folded.stacks, title=title, subtitle=subtitle, kernel_frames=folded.kernel_frames)
    return _Outcome(folded=folded, svg=svg, folded_file=folded_text(folded.stacks))


def _expected_s(backend: Backend, duration_s: float) -> float:
    return duration_s + (BPFTRACE_ATTACH_S if backend is Backend.BPFTRACE else 0.0)


class _Watch:
    """Snapshots of /proc while the profile runs (see profile.procs): system-wide, every process
    before, in the middle of the window and after; for one process, that process only."""

    def __init__(self, pid: int | None, duration_s: float) -> None:
        self.pid = pid
        self.snaps: list[dict[int, procs.ProcInfo]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if pid is None:
            self._thread = threading.Thread(target=self._mid, args=(PERF_ATTACH_S + duration_s / 2,), daemon=True,
                                            name="cpu-profile-snapshot")

    def take(self) -> None:
        if self.pid is None:
            self.snaps.append(procs.snapshot())
        else:
            info = procs.read_process(self.pid)
            self.snaps.append({self.pid: info} if info is not None else {})

    def _mid(self, delay_s: float) -> None:
        if not self._stop.wait(delay_s):
            self.take()

    def start(self) -> None:
        self.take()
        if self._thread is not None:
            self._thread.start()

    def cancel(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    def seen(self) -> dict[int, procs.ProcInfo]:
        return procs.merged(self.snaps)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    target = "system-wide (all CPUs)"
    if p.pid is not None:
        comm = process_name(p.pid)
        if comm is None:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}")
        target = f"pid {p.pid} ({comm})" if comm else f"pid {p.pid}"

    async def attempt(rung: Rung[Params]) -> tuple[_Collected, JobResult | None]:
        assert rung.backend is not None
        request = CpuProfile(duration_s=p.duration_s, frequency_hz=p.sample_rate_hz, pid=p.pid,
                             include_kernel=p.include_kernel, backend=rung.backend)
        job = await run_job(ctx, request, expected_s=_expected_s(rung.backend, p.duration_s), label=rung.method,
                            after_s=SCRIPT_ESTIMATE_S)
        if rung.backend is Backend.BPFTRACE:
            return _bpftrace_collected(job, p), job
        return _perf_collected(job, p), job

    watch = _Watch(p.pid, p.duration_s)
    await trio.to_thread.run_sync(watch.start)
    try:
        result = await climb(ctx, RUNGS, p, attempt)
    finally:
        watch.cancel()  # the mid-window snapshot, if not taken yet, is not needed any more
    await trio.to_thread.run_sync(watch.stop)
    exited = p.pid is not None and not _running(p.pid)
    await trio.to_thread.run_sync(watch.take)
    got: _Collected = result.value
    warnings = result.warnings() + got.warnings
    truncated = got.truncated
    if got.rate_hz != p.sample_rate_hz:
        warnings.append(f"sampled at {got.rate_hz} Hz, not {p.sample_rate_hz} Hz: the broker bounds "
                        "rate x duration x CPUs so perf.data and its text stay bounded")
    subtitle = f"{target}, {got.sampled_s:.3g} s at {got.rate_hz} Hz, {got.method}"
    is_perf = result.rung.backend is Backend.PERF
    outcome = await trio.to_thread.run_sync(_fold_and_render, got.raw if is_perf else None,
                                            None if is_perf else got.folded, "CPU flame graph", subtitle)
    folded = outcome.folded
    raw_what = "perf script" if is_perf else "bpftrace"
    if folded.samples == 0 and truncated:
        raise ToolError(ErrorCode.OUTPUT_TRUNCATED,
                        f"the broker's output cap ({len(got.raw)} bytes) cut {raw_what} before one whole sample")
    if folded.samples == 0 and folded.bad_lines and is_perf:
        raise ToolError(ErrorCode.PARSE_ERROR,
                        f"none of the {folded.bad_lines} lines of perf script output could be parsed")
    if folded.bad_lines and is_perf:
        warnings.append(f"{folded.bad_lines} lines of perf script output could not be parsed and were skipped")
    if folded.dropped_partial_sample:
        warnings.append("the last sample was cut short and was left out")
    if folded.samples == 0:
        warnings.append(f"no samples: {target} did not run on a CPU during the profile")

    sampled_s = got.sampled_s
    if is_perf and folded.first_time_s is not None and folded.last_time_s is not None and (
            p.pid is None or got.stopped_early_s is not None):
        # System-wide some CPU is always sampled (the idle task, perf itself), so the first and last
        # sample bound the window perf sampled, without its start-up. A process's own samples bound
        # it only when it ran until it exited.
        span = folded.last_time_s - folded.first_time_s + 1.0 / got.rate_hz
        if 0.0 < span < sampled_s:
            sampled_s = span
    if exited:
        when = f" about {sampled_s:.1f} s into sampling" if got.stopped_early_s is not None else ""
        warnings.insert(0, f"process {p.pid} exited during the profile{when}: the samples cover its life only, "
                           f"not the {p.duration_s:g} s asked for")
    seen = watch.seen()
    cpus = os.cpu_count() or 1
    if p.pid is None:
        width = cpus
        own = procs.own_pids(seen, os.getpid(), os.getppid())
    else:  # a process keeps at most min(threads, CPUs) CPUs busy
        threads = max((s[p.pid].threads for s in watch.snaps if p.pid in s), default=1)
        width = max(1, min(threads, cpus))
        own = frozenset()  # asked for by pid: profiled as asked, even if it is perf-mcp's
    sampled_s = round(sampled_s, 3)  # as data says it: expected_samples follows from the figures shown
    expected = int(math.floor(sampled_s * got.rate_hz * width))
    analysis = analyse(folded, own_pids=own, expected=expected or None, top_n=p.top_n)
    processes = [msgspec.structs.replace(r, command=seen[r.pid].command) if r.pid in seen else r
                 for r in analysis.processes]
    perf_maps = frozenset(r.pid for r in analysis.runtimes if os.path.exists(f"/tmp/perf-{r.pid}.map"))
    found = findings(analysis, target=target, rate_hz=got.rate_hz, pid=p.pid, duration_s=p.duration_s,
                     exited=exited, perf_maps=perf_maps)
    group = ctx.artifacts.new_group("cpu-profile")
    artifacts: list[ArtifactRef] = []
    for name, mime, content, desc in (
        ("flamegraph.svg", "image/svg+xml", outcome.svg, f"CPU flame graph of {target}"),
        ("stacks.folded", "text/plain", outcome.folded_file, "Folded stacks (comm;root;...;leaf count)"),
        (got.raw_name, "application/json" if got.raw_name.endswith(".json") else "text/plain",
         got.raw if len(got.raw) <= RAW_ARTIFACT_MAX else b"", got.raw_desc),
    ):
        if not content:
            if name == got.raw_name and got.raw:
                warnings.append(f"the raw {raw_what} output ({len(got.raw)} bytes) is over "
                                f"{RAW_ARTIFACT_MAX} bytes and was not kept as a resource")
            continue
        ref = ctx.artifacts.put(group, name, mime, content, desc)
        if ref is None:
            warnings.append(f"{name} ({len(content)} bytes) is larger than the artifact store and was not kept")
        else:
            artifacts.append(ref)
    inline: str | None = None
    if p.output_format == "collapsed":
        inline = outcome.folded_file
        if len(inline) > INLINE_FOLDED_MAX:
            cut = inline.rfind("\n", 0, INLINE_FOLDED_MAX) + 1
            inline = inline[:cut]
            truncated = True
            warnings.append(f"data.folded holds the first {cut} bytes of the folded stacks; "
                            "read the stacks.folded resource for all of them")

    job = result.job
    after = round(time.monotonic() - got.sampling_end, 3) if got.sampling_end is not None else None
    data = CpuProfileData(
        summary="", method=got.method, backend=result.backend, skipped=result.skipped, target=target, pid=p.pid,
        duration_s=p.duration_s, sample_rate_hz=got.rate_hz, include_kernel=p.include_kernel,
        sampled_s=round(sampled_s, 3), samples=folded.samples, expected_samples=expected,
        idle_pct=analysis.idle_pct, kernel_pct=analysis.kernel_pct, unknown_pct=analysis.unknown_pct,
        own_pct=round(100.0 * analysis.own_samples / folded.samples, 2) if folded.samples else 0.0,
        top_functions=analysis.functions, hottest_stacks=analysis.hottest_stacks, processes=processes,
        findings=found, artifacts=artifacts, argv=got.argv, after_sampling_s=after,
        broker_job_id=job.job_id if job else None, folded=inline,
    )
    data.summary = headline(data, exited=exited)
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def headline(d: CpuProfileData, *, exited: bool = False) -> str:
    """data.summary: one line."""
    if d.samples == 0:
        return f"CPU profile of {d.target}: no samples in {d.sampled_s:g} s" + ("; it exited" if exited else "")
    idle = (f"CPUs {d.idle_pct:.0f}% idle" if d.pid is None else f"off CPU {d.idle_pct:.0f}% of the time")
    parts = [f"CPU profile of {d.target}: {d.samples} samples of {d.expected_samples} expected in "
             f"{d.sampled_s:g} s at {d.sample_rate_hz} Hz ({idle})"]
    if exited:
        parts.append("the process exited during the profile")
    if d.top_functions:
        top = max(d.top_functions, key=lambda f: f.self_pct)
        parts.append(f"hottest {top.function} {top.self_pct:.0f}% self")
    if d.pid is None and d.processes:
        pr = d.processes[0]
        parts.append(f"top process pid {pr.pid} ({pr.comm}) {pr.pct:.0f}%")
    if d.findings:
        worst = d.findings[0]
        parts.append(f"{len(d.findings)} finding{'s' if len(d.findings) > 1 else ''}, first [{worst.severity}] "
                     f"{worst.title}")
    return "; ".join(parts)


def summarise(d: CpuProfileData) -> str:
    if d.samples == 0:
        return d.summary
    lines = [d.summary]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    lines.append("Top functions (self %, total %):")
    lines += [f"  {f.self_pct:6.2f}% {f.total_pct:6.2f}%  {f.function} ({f.module})" for f in d.top_functions]
    if d.hottest_stacks:
        s = d.hottest_stacks[0]
        lines.append(f"Hottest stack ({s.pct:.1f}%): " + " > ".join(s.stack[-6:]))
    if d.pid is None and d.processes:
        lines.append("Processes: " + ", ".join(f"{r.pid} {r.comm} {r.pct:.0f}%" for r in d.processes[:5]))
    if d.own_pct:
        lines.append(f"perf-mcp's own processes: {d.own_pct:.1f}% of samples, left out of the rankings")
    lines += [f"{a.name}: {a.uri} ({a.size} bytes)" for a in d.artifacts]
    lines.append(f"Method: {d.method}" + "".join(f"; {s.method} skipped: {s.reason}" for s in d.skipped))
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="CPU profile (bpftrace or perf record)",
    description=(
        "Sample on-CPU call stacks of one process or the whole system (root broker: bpftrace profile:hz for a "
        "process, else perf record -g). Returns a one-line summary, top functions (self and total %), hottest "
        "stacks, processes by pid and command line, idle or off-CPU share against the expected samples, findings "
        "with the next call, and a flame graph, folded stacks and raw output as MCP resources. Needs the "
        "'profile' grant."
    ),
    params=Params,
    data=CpuProfileData,
    handler=run,
)
