"""perf_cpu_profile: sample on-CPU stacks with `perf record -g` through the broker, fold them here.

Collection is the broker's CpuProfile job (steps "record" then "script"); parsing
is profile.perf_script, analysis profile.analysis, the SVG profile.flamegraph.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import CpuProfile, JobResult, Progress, StepResult, limits

from ..contract import ArtifactRef, Finding
from ..errors import ErrorCode, ToolError
from ..profile.analysis import FunctionStat, ProcessStat, StackStat, analyse, findings
from ..profile.flamegraph import render_svg
from ..profile.perf_record import parse_record_stderr
from ..profile.perf_script import Folded, fold, folded_text
from ..registry import ToolContext, ToolOutput, ToolSpec

log = logging.getLogger(__name__)

NAME = "perf_cpu_profile"
SCRIPT_ESTIMATE_S = 2.0  # progress budget for the perf script step
INLINE_FOLDED_MAX = 256 * 1024  # output_format=collapsed pastes at most this much
RAW_ARTIFACT_MAX = 32 * 1024 * 1024


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


class CpuProfileData(msgspec.Struct, kw_only=True):
    method: str
    target: str
    pid: int | None
    duration_s: float
    sample_rate_hz: int
    include_kernel: bool
    samples: int
    expected_samples: int
    idle_pct: float
    kernel_pct: float
    unknown_pct: float
    top_functions_self: list[FunctionStat]
    top_functions_total: list[FunctionStat]
    hottest_stacks: list[StackStat]
    processes: list[ProcessStat]
    findings: list[Finding]
    artifacts: list[ArtifactRef]
    folded: str | None
    argv: list[list[str]]
    broker_job_id: int | None


def process_name(pid: int) -> str | None:
    """comm of a live process, '' when unreadable, None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return "" if os.path.exists(f"/proc/{pid}") else None


def sampling_event(argv: list[str]) -> str:
    """The event perf sampled on: -e from the argv, else cycles when a CPU PMU exists, else cpu-clock."""
    if "-e" in argv[:-1]:
        return argv[argv.index("-e") + 1]
    pmus = Path("/sys/bus/event_source/devices")
    if any((pmus / d).exists() for d in ("cpu", "cpu_core", "cpu_atom", "armv8_pmuv3")):
        return "cycles"
    return "cpu-clock"


def _step(result: JobResult, name: str) -> StepResult | None:
    return next((s for s in result.steps if s.name == name), None)


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


class _Outcome(msgspec.Struct):
    folded: Folded
    svg: str
    folded_file: str


def _fold_and_render(raw: bytes, title: str, subtitle: str) -> _Outcome:
    """CPU-bound (tens of MB of text): runs in a worker thread."""
    folded = fold(raw.decode("utf-8", "replace"))
    svg = render_svg(folded.stacks, title=title, subtitle=subtitle, kernel_frames=folded.kernel_frames)
    return _Outcome(folded=folded, svg=svg, folded_file=folded_text(folded.stacks))


async def _run_broker_job(ctx: ToolContext, request: CpuProfile) -> JobResult:
    """The broker job, with MCP progress every second and broker Progress events as labels."""
    total = request.duration_s + SCRIPT_ESTIMATE_S
    state = {"label": "starting", "last": 0.0}
    t0 = trio.current_time()

    async def tick() -> None:
        while True:
            elapsed = trio.current_time() - t0
            value = min(max(state["last"], elapsed), total * 0.99)
            state["last"] = value
            label = state["label"]
            if elapsed <= request.duration_s:
                label = f"recording {elapsed:.0f}/{request.duration_s:.0f} s"
            elif label.startswith(("recording", "record")):
                label = "folding stacks (perf script)"
            await ctx.report_progress(round(value, 1), total, label)
            await trio.sleep(1.0)

    async def on_progress(p: Progress) -> None:
        state["label"] = f"{p.step} {p.elapsed_s:.0f}/{p.expected_s:.0f} s"

    # Longer than the broker's own limits (record: duration + grace; script: 60 s + 4 x duration),
    # so that normally the broker times a job out and says why.
    timeout = request.duration_s + limits.JOB_GRACE_S + 60.0 + 4 * request.duration_s + 15.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        reply = await ctx.broker.run(request, timeout_s=timeout, on_progress=on_progress)
        nursery.cancel_scope.cancel()
    await ctx.report_progress(total, total, "done")
    if not isinstance(reply.final, JobResult):
        raise ToolError(ErrorCode.EXECUTION_FAILED, f"unexpected broker reply {type(reply.final).__name__}")
    return reply.final


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    target = "system-wide (all CPUs)"
    if p.pid is not None:
        comm = process_name(p.pid)
        if comm is None:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}")
        target = f"pid {p.pid} ({comm})" if comm else f"pid {p.pid}"
    request = CpuProfile(duration_s=p.duration_s, frequency_hz=p.sample_rate_hz, pid=p.pid,
                         include_kernel=p.include_kernel)
    result = await _run_broker_job(ctx, request)
    record = _step(result, "record")
    warnings = check_record_step(record, p.pid)
    script = _step(result, "script")
    if script is None:
        raise ToolError(ErrorCode.EXECUTION_FAILED, "the broker's reply has no script step")
    if script.exit_status not in (0, None) or script.timed_out:
        raise ToolError(ErrorCode.EXECUTION_FAILED,
                        f"perf script failed (exit {script.exit_status}): {_tail(script.stderr)}")
    truncated = script.stdout_truncated
    if truncated:
        warnings.append(f"perf script output was cut at the broker's cap ({len(script.stdout)} bytes): "
                        "the profile covers the samples before the cut; lower duration_s or sample_rate_hz")
    if script.stderr.strip():
        warnings.append(f"perf script: {_tail(script.stderr, 3)}")

    assert record is not None
    method = f"perf record -g ({sampling_event(record.argv)}) + perf script, folded by perf-mcp"
    subtitle = f"{target}, {p.duration_s:g} s at {p.sample_rate_hz} Hz, {method}"
    outcome = await trio.to_thread.run_sync(_fold_and_render, script.stdout, "CPU flame graph", subtitle)
    folded = outcome.folded
    if folded.samples == 0 and truncated:
        raise ToolError(ErrorCode.OUTPUT_TRUNCATED,
                        f"the broker's output cap ({len(script.stdout)} bytes) cut perf script before one whole sample")
    if folded.samples == 0 and folded.bad_lines:
        raise ToolError(ErrorCode.PARSE_ERROR,
                        f"none of the {folded.bad_lines} lines of perf script output could be parsed")
    if folded.bad_lines:
        warnings.append(f"{folded.bad_lines} lines of perf script output could not be parsed and were skipped")
    if folded.dropped_partial_sample:
        warnings.append("the last sample was cut short and was left out")
    if folded.samples == 0:
        warnings.append(f"no samples: {target} did not run on a CPU during the profile")

    analysis = analyse(folded)
    cpus = os.cpu_count() or 1
    expected = int(math.floor(p.duration_s * p.sample_rate_hz * (1 if p.pid else cpus)))
    group = ctx.artifacts.new_group("cpu-profile")
    artifacts: list[ArtifactRef] = []
    for name, mime, content, desc in (
        ("flamegraph.svg", "image/svg+xml", outcome.svg, f"CPU flame graph of {target}"),
        ("stacks.folded", "text/plain", outcome.folded_file, "Folded stacks (comm;root;...;leaf count)"),
        ("perf-script.txt", "text/plain", script.stdout if len(script.stdout) <= RAW_ARTIFACT_MAX else b"",
         "Raw perf script output (comm,pid,tid,period,ip,sym,dso)"),
    ):
        if not content:
            if name == "perf-script.txt" and script.stdout:
                warnings.append(f"the raw perf script output ({len(script.stdout)} bytes) is over "
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

    data = CpuProfileData(
        method=method, target=target, pid=p.pid, duration_s=p.duration_s, sample_rate_hz=p.sample_rate_hz,
        include_kernel=p.include_kernel, samples=folded.samples, expected_samples=expected,
        idle_pct=analysis.idle_pct, kernel_pct=analysis.kernel_pct, unknown_pct=analysis.unknown_pct,
        top_functions_self=analysis.top_self, top_functions_total=analysis.top_total,
        hottest_stacks=analysis.hottest_stacks, processes=analysis.processes,
        findings=findings(analysis, target=target, rate_hz=p.sample_rate_hz),
        artifacts=artifacts, folded=inline, argv=[s.argv for s in result.steps], broker_job_id=result.job_id,
    )
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def summarise(d: CpuProfileData) -> str:
    if d.samples == 0:
        return f"CPU profile of {d.target}: no samples in {d.duration_s:g} s"
    lines = [f"CPU profile of {d.target}: {d.samples} samples in {d.duration_s:g} s at {d.sample_rate_hz} Hz"
             + (f", {d.idle_pct:.0f}% idle" if d.idle_pct else "")]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    lines.append("Top functions (self %, total %):")
    lines += [f"  {f.self_pct:6.2f}% {f.total_pct:6.2f}%  {f.function} ({f.module})" for f in d.top_functions_self[:10]]
    if d.hottest_stacks:
        s = d.hottest_stacks[0]
        lines.append(f"Hottest stack ({s.pct:.1f}%): " + " > ".join(s.stack[-6:]))
    lines += [f"{a.name}: {a.uri} ({a.size} bytes)" for a in d.artifacts]
    lines.append(f"Method: {d.method}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="CPU profile (perf record)",
    description=(
        "Sample on-CPU call stacks of one process or the whole system with `perf record -g` (run by the "
        "root broker) and fold them. Returns top functions by self and total share of samples, the hottest "
        "stacks, per-process sample counts, findings, and links to a flame graph SVG, folded stacks and the "
        "raw perf script output as MCP resources. Needs the perf-mcp broker and the 'profile' grant."
    ),
    params=Params,
    data=CpuProfileData,
    handler=run,
)
