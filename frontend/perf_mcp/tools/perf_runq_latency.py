"""perf_runq_latency: how long runnable threads wait for a CPU (run-queue latency).

The wait of a thread runs from the moment it becomes runnable (woken, newly
created, or switched out while still runnable: preempted or yielding) to the
moment it is switched in. The answer is a log2 histogram in microseconds
(p50/p90/p99 within a bucket), optionally one per CPU and per process.

Ladder (first that works): libbpf-tools `runqlat` (no per-CPU histograms: with
per_cpu=true it is skipped with that reason; its mean is estimated from the
log2 buckets) > the broker's bpftrace script runqlat.bt on the sched
tracepoints (exact mean from the sum it prints). Parsing: trace.runq_parse.

Findings: p99 above RUNQ_P99_MS (warning/critical) with the bucket it falls
in and a next step; no waits for a pid; CPUs far apart (per_cpu).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from perf_mcp_protocol import Backend, JobResult, RunqLatency, limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace import histogram as H
from ..trace.ladder import (Rung, RungFailed, Skipped, climb, cut_warning, find_step, parse_output, run_job,
                            step_failure)
from ..trace.runq_parse import RunqOutput, RunqParseError, parse_runqlat_bpftrace, parse_runqlat_text

NAME = "perf_runq_latency"
# p99 run-queue latency, in ms: warning above the first, critical above the second.
# A thread that waits 10 ms for a CPU has lost a whole scheduler period several
# times over (EEVDF's base slice is 0.75-3 ms); 100 ms is visible to a person.
RUNQ_P99_MS = (10.0, 100.0)
MIN_WAITS_FOR_FINDING = 20  # fewer waits make a p99 a single event
CPU_IMBALANCE_RATIO = 4.0  # per_cpu: the busiest CPU's mean wait this many times the calmest one's
# Compile and attach time of the bpftrace script before its timer starts (progress only).
BPFTRACE_START_EST_S = 3.0


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_SHORT_DURATION_S[0], le=limits.TRACE_SHORT_DURATION_S[1],
                                    description="How long to trace, in seconds.")] = 5
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "Only the waits of this process (all its threads); omit for every process."))] | None = None
    per_cpu: Annotated[bool, Meta(description=(
        "Also one histogram per CPU (the CPU the thread was picked on). runqlat cannot: the bpftrace "
        "script answers."))] = False
    per_pid: Annotated[bool, Meta(description="Also the waits of each process (top_n by total time waited).")] = False
    top_n: Annotated[int, Meta(ge=1, le=100, description="per_pid: list at most this many processes.")] = 10


class CpuLatency(msgspec.Struct, kw_only=True):
    cpu: int
    histogram: H.HistogramUs  # type: ignore[valid-type]


class ProcessLatency(msgspec.Struct, kw_only=True):
    pid: int
    comm: str
    waits: int
    total_wait_ms: float | None  # exact when mean_exact, else from bucket midpoints
    mean_us: float | None
    mean_exact: bool
    p50_us: float | None
    p99_us: float | None
    max_bucket_us: float | None


class RunqLatencyData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    target: str
    pid: int | None
    duration_s: int
    # When the trace ran (UTC): exact from the bpftrace script's clock reads (after its
    # compile and attach); for runqlat, which starts at once, the duration_s before its answer.
    trace_start: str
    trace_end: str
    trace_window_exact: bool
    waits: int
    waits_per_s: float
    total_wait_ms: float | None  # sum of all waits; exact when histogram.mean_exact
    histogram: H.HistogramUs  # type: ignore[valid-type]
    cpus: list[CpuLatency] | None  # per_cpu: one entry per CPU, counts summing to waits
    processes: list[ProcessLatency] | None  # per_pid: top_n by total wait
    processes_seen: int | None
    findings: list[Finding]
    argv: list[str]
    broker_job_id: int | None


def _libbpf_unsupported(p: Params | None) -> str | None:
    if p is not None and p.per_cpu:  # None: perf_info asks about the host, not a call
        return "runqlat has no per-CPU histograms (per_cpu=true); the bpftrace script keys its histogram by CPU"
    return None


RUNGS: list[Rung[Params]] = [
    Rung(Backend.LIBBPF, "runqlat (libbpf-tools)", programs=("runqlat",), needs=("btf", "tracepoints"),
         unsupported=_libbpf_unsupported),
    Rung(Backend.BPFTRACE, "bpftrace runqlat.bt (sched_wakeup, sched_wakeup_new, sched_switch tracepoints)",
         programs=("bpftrace",), needs=("tracepoints",)),
]
LADDER = RUNGS


def process_name(pid: int) -> str | None:
    """comm of a live process, '' when unreadable, None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return "" if os.path.exists(f"/proc/{pid}") else None


def online_cpus() -> list[int]:
    """The online CPUs (/sys/devices/system/cpu/online, "0-3,6"), else 0..cpu_count-1."""
    try:
        text = Path("/sys/devices/system/cpu/online").read_text().strip()
        cpus: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
        if cpus:
            return cpus
    except (OSError, ValueError):
        pass
    return list(range(os.cpu_count() or 1))


# ---------------------------------------------------------------- one rung


def parse_step(rung: Rung[Params], job: JobResult, p: Params) -> RunqOutput:
    """The rung's output, parsed; RungFailed when the program could not trace."""
    step = find_step(job, "runqlat")
    reason = step_failure(step)
    if reason is not None:
        raise RungFailed(reason)
    assert step is not None
    out = parse_output(step, rung.method, (lambda raw: parse_runqlat_text(raw, per_pid=p.per_pid))
                     if rung.backend is Backend.LIBBPF else parse_runqlat_bpftrace, RunqParseError)
    if out.counted and out.total.count == 0:
        raise ToolError(ErrorCode.OUTPUT_TRUNCATED if step.stdout_truncated else ErrorCode.PARSE_ERROR,
                        f"{rung.method} counted {out.counted} waits but printed no readable histogram")
    cut = cut_warning(step, rung.method)
    if cut:
        out.warnings.append(cut)
    return out


# ---------------------------------------------------------------- answer


def wall_iso(monotonic_ns: int) -> str:
    """A CLOCK_MONOTONIC reading (bpftrace's nsecs is the same clock) as UTC ISO 8601."""
    wall = time.time_ns() - time.monotonic_ns() + monotonic_ns
    return _dt.datetime.fromtimestamp(wall / 1e9, _dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 3)


def _fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


def process_rows(out: RunqOutput, top_n: int) -> tuple[list[ProcessLatency], int]:
    rows = []
    for ph in (out.per_pid or {}).values():
        m, exact = H.mean(ph.hist)
        n = ph.hist.count
        rows.append(ProcessLatency(
            pid=ph.pid, comm=ph.comm, waits=n, total_wait_ms=None if m is None else round(m * n / 1000.0, 3),
            mean_us=_r(m), mean_exact=exact, p50_us=_r(H.percentile(ph.hist, 0.5)),
            p99_us=_r(H.percentile(ph.hist, 0.99)),
            max_bucket_us=next((hi for lo, hi, c in reversed(ph.hist.buckets) if c and not math.isinf(hi)), None),
        ))
    rows.sort(key=lambda r: (-(r.total_wait_ms or 0.0), -r.waits, r.pid))
    return rows[:top_n], len(rows)


def cpu_rows(out: RunqOutput) -> list[CpuLatency] | None:
    if out.per_cpu is None:
        return None
    cpus = sorted(set(online_cpus()) | set(out.per_cpu))
    empty = H.Hist("us", "log2", [], 0.0)
    return [CpuLatency(cpu=c, histogram=H.to_struct(out.per_cpu.get(c, empty), "us")) for c in cpus]


def _bucket_sample(h: H.Hist, q: float) -> str:
    """The bucket where the q-quantile falls, with its share: evidence a reader can check."""
    n = h.count
    seen = 0
    for lo, hi, c in h.buckets:
        if c and seen + c >= q * n:
            upper = "inf" if math.isinf(hi) else f"{hi:g}"
            return f"{c} of {n} waits in [{lo:g}, {upper}) us"
        seen += c
    return f"{n} waits"


def findings(d: RunqLatencyData, total: H.Hist, p: Params, processes: list[ProcessLatency] | None) -> list[Finding]:
    out: list[Finding] = []
    hist = d.histogram
    n = hist.count
    who = f"pid {p.pid}" if p.pid is not None else "runnable threads"
    if p.pid is not None and n == 0:
        out.append(Finding(
            id="runq.no_waits", severity="info", resource="process", title=f"pid {p.pid} never waited for a CPU",
            detail=(f"In {d.duration_s} s no thread of pid {p.pid} was switched in after waiting on a run queue: "
                    "it slept (or was stopped) all along, or it has exited."),
            confidence=0.9, evidence=[Evidence(tool=NAME, counter="waits", value=0, window_s=d.duration_s)],
            suggestion=f"perf_thread_profile {json.dumps({'pid': p.pid, 'duration_s': 5})} shows where its threads "
                       "spend their time instead.",
            next=next_call("perf_thread_profile", pid=p.pid, duration_s=5)))
    p99 = hist.p99_us
    if p99 is not None and n >= MIN_WAITS_FOR_FINDING:
        p99_ms = p99 / 1000.0
        sev = "critical" if p99_ms > RUNQ_P99_MS[1] else "warning" if p99_ms > RUNQ_P99_MS[0] else None
        if sev is not None:
            limit = RUNQ_P99_MS[1] if sev == "critical" else RUNQ_P99_MS[0]
            ncpu = len(online_cpus())
            detail = (f"1% of the {n} waits of {who} for a CPU lasted longer than {p99_ms:.1f} ms "
                      f"(p50 {_fmt_us(hist.p50_us)}, mean {_fmt_us(hist.mean_us)}"
                      f"{'' if hist.mean_exact else ' estimated from the buckets'}) over {d.duration_s} s on "
                      f"{ncpu} CPUs: more threads were runnable than there were CPUs to run them.")
            if processes:
                top = processes[0]
                detail += (f" Most time waited: pid {top.pid} ({top.comm}), {top.waits} waits, "
                           f"{top.total_wait_ms:.1f} ms in total.")
            if p.pid is not None:
                nxt = (f"perf_runq_latency {json.dumps({'duration_s': 5, 'per_pid': True})} shows which other "
                       f"processes compete for the CPUs, perf_cpu_profile {json.dumps({'duration_s': 10})} what "
                       f"they run, and perf_thread_profile {json.dumps({'pid': p.pid, 'duration_s': 5})} which "
                       f"threads of pid {p.pid} wait.")
            else:
                nxt = (f"perf_cpu_profile {json.dumps({'duration_s': 10})} shows what keeps the CPUs busy"
                       + (f"; perf_cpu_profile {json.dumps({'pid': processes[0].pid, 'duration_s': 10})} profiles "
                          f"the process that waited most" if processes else
                          f"; perf_runq_latency {json.dumps({'duration_s': 5, 'per_pid': True})} names the "
                          "processes that wait") + ".")
            out.append(Finding(
                id="runq.p99_high", severity=sev, resource="cpu" if p.pid is None else "process",
                title=f"Run-queue latency p99 {p99_ms:.1f} ms for {who} (> {limit:g} ms)",
                detail=detail, confidence=round(min(0.95, 0.6 + n / 1000.0), 2),
                metrics={"p99_ms": round(p99_ms, 3), "p50_ms": _ms(hist.p50_us) or 0.0,
                         "mean_ms": _ms(hist.mean_us) or 0.0, "waits": float(n)},
                evidence=[Evidence(tool=NAME, counter="runq_latency_p99_us", value=round(p99, 1),
                                   threshold=limit * 1000.0, window_s=float(d.duration_s),
                                   sample=_bucket_sample(total, 0.99))],
                suggestion=nxt,
                next=(next_call("perf_runq_latency", duration_s=5, per_pid=True) if p.pid is not None else
                      next_call("perf_cpu_profile", pid=processes[0].pid or None, duration_s=10) if processes else
                      next_call("perf_cpu_profile", duration_s=10))))
    if d.cpus:
        busy = [c for c in d.cpus if c.histogram.count >= 50 and c.histogram.mean_us]
        if len(busy) >= 2:
            hi = max(busy, key=lambda c: c.histogram.mean_us)
            lo = min(busy, key=lambda c: c.histogram.mean_us)
            ratio = hi.histogram.mean_us / lo.histogram.mean_us
            if ratio >= CPU_IMBALANCE_RATIO and hi.histogram.mean_us >= 1000:
                out.append(Finding(
                    id="runq.cpu_imbalance", severity="info", resource="cpu",
                    title=f"CPU {hi.cpu} waits {ratio:.0f}x longer than CPU {lo.cpu}",
                    detail=(f"Mean run-queue wait on CPU {hi.cpu}: {_fmt_us(hi.histogram.mean_us)} "
                            f"({hi.histogram.count} waits); on CPU {lo.cpu}: {_fmt_us(lo.histogram.mean_us)} "
                            f"({lo.histogram.count} waits). Pinned threads (taskset, cpusets) or IRQ load can "
                            "keep work on one CPU."),
                    confidence=0.6, metrics={"ratio": round(ratio, 2)},
                    evidence=[Evidence(tool=NAME, counter=f"cpu{hi.cpu}.mean_us", value=hi.histogram.mean_us,
                                       window_s=float(d.duration_s),
                                       sample=f"cpu{lo.cpu}.mean_us={lo.histogram.mean_us}")],
                    suggestion=f"perf_cpu_profile {json.dumps({'duration_s': 10})} shows what runs on the busy CPU.",
                    next=next_call("perf_cpu_profile", duration_s=10)))
    return sort_findings(out)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    target = "all processes"
    if p.pid is not None:
        comm = process_name(p.pid)
        if comm is None:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}")
        target = f"pid {p.pid} ({comm})" if comm else f"pid {p.pid}"

    async def attempt(rung: Rung[Params]) -> tuple[RunqOutput, JobResult]:
        assert rung.backend is not None
        request = RunqLatency(backend=rung.backend, duration_s=p.duration_s, pid=p.pid, per_pid=p.per_pid,
                              per_cpu=p.per_cpu and rung.backend is Backend.BPFTRACE)
        expected = p.duration_s + (BPFTRACE_START_EST_S if rung.backend is Backend.BPFTRACE else 0.5)
        job = await run_job(ctx, request, expected_s=expected, label=rung.method.split(" (")[0])
        return parse_step(rung, job, p), job

    result = await climb(ctx, RUNGS, p, attempt)
    answered_ns = time.monotonic_ns()
    out: RunqOutput = result.value
    warnings = [*result.warnings(), *out.warnings]
    if p.pid is not None and process_name(p.pid) is None:
        warnings.append(f"process {p.pid} exited during the trace: the histogram covers its waits before that")

    total = out.total
    hist = H.to_struct(total, "us")
    m, _ = H.mean(total)
    processes, seen = (process_rows(out, p.top_n) if p.per_pid else (None, None))
    if p.per_pid and out.per_pid is None:
        warnings.append("the per-process histograms are missing from the output")
    job = result.job
    step = find_step(job, "runqlat") if job else None
    start_ns, end_ns = out.window_ns or (answered_ns - p.duration_s * 1_000_000_000, answered_ns)
    data = RunqLatencyData(
        method=result.method, backend=result.backend, skipped=result.skipped, target=target, pid=p.pid,
        duration_s=p.duration_s, trace_start=wall_iso(start_ns), trace_end=wall_iso(end_ns),
        trace_window_exact=out.window_ns is not None, waits=total.count,
        waits_per_s=round(total.count / max((end_ns - start_ns) / 1e9, 0.001), 2),
        total_wait_ms=None if m is None else round(m * total.count / 1000.0, 3), histogram=hist,
        cpus=cpu_rows(out) if p.per_cpu else None, processes=processes, processes_seen=seen, findings=[],
        argv=list(step.argv) if step else [], broker_job_id=job.job_id if job else None,
    )
    if p.per_cpu and data.cpus is None:
        warnings.append("the per-CPU histograms are missing from the output")
    data.findings = findings(data, total, p, processes)
    truncated = bool(step and step.stdout_truncated) or (seen is not None and processes is not None
                                                          and seen > len(processes))
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def summarise(d: RunqLatencyData) -> str:
    h = d.histogram
    if h.count == 0:
        head = f"Run-queue latency of {d.target}: no waits in {d.duration_s} s"
    else:
        head = (f"Run-queue latency of {d.target}: {h.count} waits in {d.duration_s} s, p50 {_fmt_us(h.p50_us)}, "
                f"p99 {_fmt_us(h.p99_us)}, mean {_fmt_us(h.mean_us)}{'' if h.mean_exact else ' (estimated)'}")
    lines = [head]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.cpus:
        lines.append("Per CPU: " + ", ".join(f"cpu{c.cpu} {c.histogram.count} waits p99 {_fmt_us(c.histogram.p99_us)}"
                                             for c in d.cpus))
    if d.processes:
        lines.append("Most time waited: " + ", ".join(f"{r.pid} {r.comm} {r.total_wait_ms:.1f} ms in {r.waits} waits"
                                                       for r in d.processes[:5]))
    lines.append(f"Method: {d.method}" + (f" ({len(d.skipped)} rung skipped: {d.skipped[0].reason})"
                                          if d.skipped else ""))
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="Run-queue (scheduler) latency",
    description=(
        "How long runnable threads wait for a CPU, traced for duration_s through the perf-mcp broker: a log2 "
        "histogram in microseconds with p50/p90/p99 and the mean, for one process (pid) or all, optionally per CPU "
        "and per process. High latency means more runnable threads than CPUs (CPU saturation). Backend: runqlat "
        "(libbpf-tools), else the broker's bpftrace script on the sched tracepoints; data.method says which ran. "
        "Needs the broker's 'trace' grant."
    ),
    params=Params,
    data=RunqLatencyData,
    handler=run,
)
