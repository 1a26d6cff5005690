"""perf_bio_latency: block I/O latency, one request at a time, as a histogram.

The latency of a request runs from its issue to the device driver (or, with
queued=true, from its insertion into the OS queue when it was inserted) to its
completion. The answer is a histogram in microseconds (milliseconds with
milliseconds=true; units in the field names), log2 or linear buckets of
linear_bucket_ms (an SLA such as 10 ms), p50/p90/p99 within a bucket, the
I/O count, optionally one histogram per device.

A device filter never reaches the broker: the name is checked against
/proc/diskstats (DEVICE_NOT_FOUND), per-device histograms are asked for and
the device is picked here (libbpf: by the name biolatency prints; bpftrace: by
major:minor, named from /proc/diskstats).

Ladder (first that works): libbpf-tools `biolatency` (log2 only: with
histogram_type=linear it is skipped with that reason; its mean is estimated
from the buckets) > the broker's bpftrace script biolatency.bt on the block
tracepoints (exact mean from the sum it prints; with queued, the queue share).
Parsing: trace.bio_parse. perf_io_latency mode=trace uses the same job
(`trace_devices`).

Findings: p99 above BIO_P99_MS (warning/critical) per device; with linear
buckets, the share of requests at or above linear_bucket_ms; with queued on
the bpftrace rung, time in the OS queue dominating; no I/O on the device.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import Backend, BioLatency, JobResult, limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace import histogram as H
from ..trace.bio_parse import BioOutput, BioParseError, parse_biolatency_bpftrace, parse_biolatency_text
from ..trace.ladder import (LadderResult, Rung, RungFailed, Skipped, climb, cut_warning, find_step, parse_output,
                            run_job, step_failure)
from .perf_io_latency import DEVICE_PATTERN, known_devices, resolve_device

NAME = "perf_bio_latency"
DISKSTATS = "/proc/diskstats"
# p99 block latency, in ms: warning above the first, critical above the second. A
# rotating disk's random read takes 5-15 ms, an SSD's well under 1 ms: a p99 above
# 20 ms is slow for any of them, above 200 ms it stalls whoever waits.
BIO_P99_MS = (20.0, 200.0)
SLA_SHARE_PCT = 1.0  # linear: more than this share of requests at or above linear_bucket_ms
QUEUE_SHARE_PCT = 50.0  # queued: the OS queue holds requests longer than the device serves them
MIN_IOS_FOR_FINDING = 20
BPFTRACE_START_EST_S = 3.0  # compile and attach before the script's timer starts (progress only)
MAX_DEVICES = 32


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_SHORT_DURATION_S[0], le=limits.TRACE_SHORT_DURATION_S[1],
                                    description="How long to trace, in seconds.")] = 5
    device: Annotated[str, Meta(min_length=1, max_length=72, pattern=DEVICE_PATTERN, description=(
        "Only this block device, as /proc/diskstats names it (vda, nvme0n1, loop3; /dev/vda also works); "
        "omit for every device."))] | None = None
    per_device: Annotated[bool, Meta(description="Also one histogram per device.")] = False
    queued: Annotated[bool, Meta(description=(
        "Count from the request's insertion into the OS queue (I/O scheduler) instead of its issue to the "
        "driver: the latency then includes the time queued in the OS."))] = False
    milliseconds: Annotated[bool, Meta(description="Histogram in milliseconds (_ms fields) instead of microseconds.")] = False
    histogram_type: Annotated[Literal["log2", "linear"], Meta(description=(
        "log2: power-of-two buckets. linear: buckets linear_bucket_ms wide (biolatency cannot: the bpftrace "
        "script answers)."))] = "log2"
    linear_bucket_ms: Annotated[int, Meta(ge=limits.LINEAR_BUCKET_MS[0], le=limits.LINEAR_BUCKET_MS[1], description=(
        "histogram_type=linear: the bucket width in ms, e.g. an SLA of 10 ms; the share of requests at or above "
        "it is reported."))] = 10


class QueueTime(msgspec.Struct, kw_only=True):
    """queued on the bpftrace rung: how much of the latency was spent in the OS queue."""

    inserted_ios: int  # requests that went through the OS queue (the others were issued directly)
    queue_ms: float  # their time from insert to issue, summed
    mean_queue_us: float | None  # per inserted request
    share_pct: float | None  # of the total latency


class DeviceLatency(msgspec.Struct, kw_only=True):
    device: str
    major: int | None
    minor: int | None
    ios: int
    histogram_us: H.HistogramUs | None = None  # type: ignore[valid-type]
    histogram_ms: H.HistogramMs | None = None  # type: ignore[valid-type]


class BioLatencyData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    device: str | None
    duration_s: int
    unit: str  # "us" or "ms": which histogram_* field is set
    histogram_type: str
    linear_bucket_ms: int | None
    queued: bool
    # When the trace ran (UTC): exact from the bpftrace script's clock reads; for
    # biolatency, which starts at once, the duration_s before its answer.
    trace_start: str
    trace_end: str
    trace_window_exact: bool
    ios: int  # completed requests (of the device when one is named)
    ios_per_s: float
    total_latency_ms: float | None  # exact when the histogram's mean_exact
    histogram_us: H.HistogramUs | None  # type: ignore[valid-type]
    histogram_ms: H.HistogramMs | None  # type: ignore[valid-type]
    ios_at_or_above_bucket: int | None  # linear: requests of linear_bucket_ms or more
    queue: QueueTime | None
    devices: list[DeviceLatency] | None  # per_device: busiest first
    findings: list[Finding]
    argv: list[str]
    broker_job_id: int | None


def _libbpf_unsupported(p: Any) -> str | None:
    if getattr(p, "histogram_type", "log2") == "linear":
        return "biolatency has log2 buckets only (histogram_type=linear); the bpftrace script uses lhist"
    return None


RUNGS: list[Rung[Any]] = [
    Rung(Backend.LIBBPF, "biolatency (libbpf-tools)", programs=("biolatency",), needs=("btf", "tracepoints"),
         unsupported=_libbpf_unsupported),
    Rung(Backend.BPFTRACE, "bpftrace biolatency.bt (block_rq_insert, block_rq_issue, block_rq_complete tracepoints)",
         programs=("bpftrace",), needs=("tracepoints",)),
]
LADDER = RUNGS


# ---------------------------------------------------------------- devices


def device_numbers(text: str) -> dict[tuple[int, int], str]:
    """/proc/diskstats text -> {(major, minor): name}; damaged lines are skipped."""
    out: dict[tuple[int, int], str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdecimal() and parts[1].isdecimal():
            out[(int(parts[0]), int(parts[1]))] = parts[2]
    return out


def read_device_numbers() -> dict[tuple[int, int], str]:
    try:
        return device_numbers(Path(DISKSTATS).read_text())
    except OSError:
        return {}


@dataclass
class Traced:
    """One biolatency job, parsed, devices named, the device filter applied."""

    result: LadderResult[Any]
    out: BioOutput
    unit: str
    total: H.Hist  # the requests of the device (or all)
    devices: list[tuple[str, tuple[int, int] | None, H.Hist]]  # (name, (major, minor), hist)
    window_ns: tuple[int, int]
    warnings: list[str] = field(default_factory=list)



@dataclass(frozen=True)
class TraceSpec:
    """What a trace asks for (perf_bio_latency's params, or perf_io_latency's trace mode)."""

    duration_s: int
    device: str | None  # a resolved diskstats name
    per_device: bool
    queued: bool = False
    milliseconds: bool = False
    histogram_type: str = "log2"
    linear_bucket_ms: int = 10


def parse_step(rung: Rung[Any], job: JobResult, spec: TraceSpec) -> BioOutput:
    """The rung's output, parsed; RungFailed when the program could not trace."""
    step = find_step(job, "biolatency")
    reason = step_failure(step)
    if reason is not None:
        raise RungFailed(reason)
    assert step is not None
    unit = "ms" if spec.milliseconds else "us"
    if rung.backend is Backend.LIBBPF:
        out = parse_output(step, rung.method,
                           lambda raw: parse_biolatency_text(raw, unit=unit, per_device=spec.per_device), BioParseError)
    else:
        out = parse_output(step, rung.method, lambda raw: parse_biolatency_bpftrace(raw, unit=unit), BioParseError)
    if out.counted and out.total.count == 0:
        raise ToolError(ErrorCode.OUTPUT_TRUNCATED if step.stdout_truncated else ErrorCode.PARSE_ERROR,
                        f"{rung.method} counted {out.counted} requests but printed no readable histogram")
    cut = cut_warning(step, rung.method)
    if cut:
        out.warnings.append(cut)
    return out


def name_devices(out: BioOutput, numbers: dict[tuple[int, int], str]) -> list[tuple[str, tuple[int, int] | None, H.Hist]]:
    by_name = {v: k for k, v in numbers.items()}
    rows = []
    for d in out.per_device or []:
        if d.dev is not None:
            rows.append((numbers.get(d.dev, f"{d.dev[0]}:{d.dev[1]}"), d.dev, d.hist))
        else:
            rows.append((d.key, by_name.get(d.key), d.hist))
    return rows


async def trace(ctx: ToolContext, spec: TraceSpec) -> Traced:
    """Run the ladder for spec and apply the device filter."""

    async def attempt(rung: Rung[Any]) -> tuple[BioOutput, JobResult]:
        assert rung.backend is not None
        request = BioLatency(
            backend=rung.backend, duration_s=spec.duration_s, per_device=spec.per_device or spec.device is not None,
            queued=spec.queued, milliseconds=spec.milliseconds,
            linear_bucket_ms=spec.linear_bucket_ms if spec.histogram_type == "linear" else None)
        expected = spec.duration_s + (BPFTRACE_START_EST_S if rung.backend is Backend.BPFTRACE else 0.5)
        job = await run_job(ctx, request, expected_s=expected, label=rung.method.split(" (")[0])
        return parse_step(rung, job, spec), job

    result = await climb(ctx, RUNGS, spec, attempt)
    answered_ns = time.monotonic_ns()
    out: BioOutput = result.value
    unit = "ms" if spec.milliseconds else "us"
    numbers = await trio.to_thread.run_sync(read_device_numbers)
    devices = name_devices(out, numbers)
    warnings = [*result.warnings(), *out.warnings]
    total = out.total
    if spec.device is not None:
        picked = [d for d in devices if d[0] == spec.device]
        if out.per_device is None:
            warnings.append("the per-device histograms are missing from the output: no count for the device")
        total = picked[0][2] if picked else H.Hist(unit, "linear" if spec.histogram_type == "linear" else "log2",
                                                   [], 0.0)
        devices = picked
    window = out.window_ns or (answered_ns - spec.duration_s * 1_000_000_000, answered_ns)
    return Traced(result=result, out=out, unit=unit, total=total, devices=devices, window_ns=window,
                  warnings=warnings)


# ---------------------------------------------------------------- answer


def wall_iso(monotonic_ns: int) -> str:
    wall = time.time_ns() - time.monotonic_ns() + monotonic_ns
    return _dt.datetime.fromtimestamp(wall / 1e9, _dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def hist_fields(h: H.Hist, unit: str) -> dict[str, Any]:
    s = H.to_struct(h, unit)
    return {"histogram_us": s, "histogram_ms": None} if unit == "us" else {"histogram_us": None, "histogram_ms": s}


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    us = v if unit == "us" else v * 1000.0
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


def _p(h: Any, unit: str, q: str) -> float | None:
    return getattr(h, f"{q}_{unit}")


def _bucket_sample(h: H.Hist, q: float) -> str:
    n, seen = h.count, 0
    for lo, hi, c in h.buckets:
        if c and seen + c >= q * n:
            upper = "inf" if math.isinf(hi) else f"{hi:g}"
            return f"{c} of {n} requests in [{lo:g}, {upper}) {h.unit}"
        seen += c
    return f"{n} requests"


def at_or_above(h: H.Hist, bound: float) -> int:
    """Requests in buckets whose low bound is at or above `bound` (h's unit)."""
    return sum(c for lo, _, c in h.buckets if lo >= bound - 1e-9)


def findings(d: Any, spec: TraceSpec, rows: list[tuple[str, H.Hist]], tool: str = NAME) -> list[Finding]:
    """rows: (device or 'all devices', hist) to judge; d: the answer (unit, ios, duration_s, queue)."""
    out: list[Finding] = []
    unit = d.unit
    if spec.device is not None and d.ios == 0:
        out.append(Finding(
            id="bio.no_io", severity="info", resource="disk", title=f"No I/O completed on {spec.device}",
            detail=f"In {d.duration_s} s no block request completed on {spec.device}: nothing read or wrote it "
                   "(or the page cache absorbed every access).",
            confidence=0.9, evidence=[Evidence(tool=tool, counter="ios", value=0, window_s=float(d.duration_s))],
            suggestion=f"perf_io_latency {json.dumps({'duration_s': 5})} shows which devices are busy.",
            next=next_call("perf_io_latency", duration_s=5)))
    for name, h in rows:
        n = h.count
        if n < MIN_IOS_FOR_FINDING:
            continue
        p99 = H.percentile(h, 0.99)
        p50 = H.percentile(h, 0.50)
        m, exact = H.mean(h)
        f = 1.0 if unit == "ms" else 0.001
        p99_ms = (p99 or 0.0) * f
        dev_args = {"device": name} if name != "all devices" else {}
        sev = "critical" if p99_ms > BIO_P99_MS[1] else "warning" if p99_ms > BIO_P99_MS[0] else None
        if sev is not None:
            limit = BIO_P99_MS[1] if sev == "critical" else BIO_P99_MS[0]
            nxt = (f"perf_io_latency {json.dumps({**dev_args, 'duration_s': 5})} shows the device's utilisation and "
                   f"queue size (a saturated device), "
                   + ("" if spec.queued else f"perf_bio_latency {json.dumps({**dev_args, 'duration_s': 5, 'queued': True})} "
                      "how much of it is time queued in the OS, ")
                   + f"and perf_offcpu_profile {json.dumps({'duration_s': 5})} which threads wait on it.")
            out.append(Finding(
                id="bio.p99_high", severity=sev, resource="disk",
                title=f"Block I/O latency p99 {p99_ms:.1f} ms on {name} (> {limit:g} ms)",
                detail=(f"1% of the {n} requests on {name} took longer than {p99_ms:.1f} ms from "
                        f"{'insertion into the OS queue' if spec.queued else 'issue to the driver'} to completion "
                        f"(p50 {_fmt(p50, unit)}, mean {_fmt(m, unit)}{'' if exact else ' estimated from the buckets'}) "
                        f"over {d.duration_s} s."),
                confidence=round(min(0.95, 0.6 + n / 1000.0), 2),
                metrics={"p99_ms": round(p99_ms, 3), "p50_ms": round((p50 or 0.0) * f, 3),
                         "mean_ms": round((m or 0.0) * f, 3), "ios": float(n)},
                evidence=[Evidence(tool=tool, counter=f"bio_latency_p99_{unit}", value=round(p99 or 0.0, 3),
                                   threshold=limit / f, window_s=float(d.duration_s), sample=_bucket_sample(h, 0.99))],
                suggestion=nxt, next=next_call("perf_io_latency", **dev_args, duration_s=5)))
        if spec.histogram_type == "linear":
            sla = float(spec.linear_bucket_ms) / f
            over = at_or_above(h, sla)
            share = 100.0 * over / n
            if share > SLA_SHARE_PCT:
                out.append(Finding(
                    id="bio.over_bucket", severity="warning", resource="disk",
                    title=f"{share:.1f}% of I/O on {name} took {spec.linear_bucket_ms} ms or more",
                    detail=(f"{over} of {n} requests on {name} lasted at least {spec.linear_bucket_ms} ms "
                            f"(the bucket width asked for, e.g. an SLA) over {d.duration_s} s."),
                    confidence=0.8, metrics={"share_pct": round(share, 2), "ios_over": float(over), "ios": float(n)},
                    evidence=[Evidence(tool=tool, counter="ios_at_or_above_bucket", value=over,
                                       threshold=round(n * SLA_SHARE_PCT / 100.0, 2), window_s=float(d.duration_s),
                                       sample=f"linear buckets of {spec.linear_bucket_ms} ms")],
                    suggestion=f"perf_io_latency {json.dumps({**dev_args, 'duration_s': 5})} shows whether the "
                               "device is saturated (utilisation, queue size).",
                    next=next_call("perf_io_latency", **dev_args, duration_s=5)))
    q = d.queue
    if q is not None and q.share_pct is not None and q.share_pct >= QUEUE_SHARE_PCT and q.inserted_ios >= MIN_IOS_FOR_FINDING \
            and (q.mean_queue_us or 0.0) >= 1000.0:
        target = spec.device or "the traced devices"
        out.append(Finding(
            id="bio.queue_dominates", severity="warning", resource="disk",
            title=f"{q.share_pct:.0f}% of block I/O latency on {target} is time queued in the OS",
            detail=(f"{q.inserted_ios} requests waited {q.mean_queue_us / 1000:.2f} ms on average in the I/O "
                    "scheduler's queue before the driver took them: more I/O is submitted than the device "
                    "(or its queue depth) accepts."),
            confidence=0.8, metrics={"share_pct": q.share_pct, "mean_queue_us": q.mean_queue_us or 0.0},
            evidence=[Evidence(tool=tool, counter="queue_share_pct", value=q.share_pct, threshold=QUEUE_SHARE_PCT,
                               window_s=float(d.duration_s), sample=f"queue {q.queue_ms:.1f} ms in total")],
            suggestion=f"perf_io_latency {json.dumps({**({'device': spec.device} if spec.device else {}), 'duration_s': 5})} "
                       "shows the queue size and utilisation; perf_offcpu_profile "
                       f"{json.dumps({'duration_s': 5})} which threads submit and wait.",
            next=next_call("perf_io_latency", device=spec.device, duration_s=5)))
    return sort_findings(out)


def queue_time(t: Traced, spec: TraceSpec) -> QueueTime | None:
    """queued on the bpftrace rung: the OS queue's share, of the device (or every device)."""
    if not spec.queued or t.result.backend != "bpftrace":
        return None
    q = t.out.queue or {}
    if spec.device is not None:
        devs = {dev for _, dev, _ in t.devices if dev is not None}
        q = {k: v for k, v in q.items() if k in devs}
    qns, ins = sum(v[0] for v in q.values()), sum(v[1] for v in q.values())
    m, _ = H.mean(t.total)
    total_ns = None if m is None else m * t.total.count * (1000.0 if t.unit == "us" else 1e6)
    return QueueTime(inserted_ios=ins, queue_ms=round(qns / 1e6, 3),
                     mean_queue_us=round(qns / ins / 1000.0, 3) if ins else None,
                     share_pct=round(100.0 * qns / total_ns, 2) if total_ns else None)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    device = None
    if p.device is not None:
        known = await trio.to_thread.run_sync(known_devices)
        device = resolve_device(p.device, known)
    spec = TraceSpec(duration_s=p.duration_s, device=device, per_device=p.per_device or device is not None,
                     queued=p.queued, milliseconds=p.milliseconds, histogram_type=p.histogram_type,
                     linear_bucket_ms=p.linear_bucket_ms)
    t = await trace(ctx, spec)
    warnings = list(t.warnings)
    total = t.total
    m, _ = H.mean(total)
    ms_per_unit = 1.0 if t.unit == "ms" else 0.001
    job = t.result.job
    step = find_step(job, "biolatency") if job else None
    rows = sorted(t.devices, key=lambda r: (-r[2].count, r[0]))
    shown_devices = None
    if p.per_device:
        shown_devices = [DeviceLatency(device=n, major=dev[0] if dev else None, minor=dev[1] if dev else None,
                                       ios=h.count, **hist_fields(h, t.unit)) for n, dev, h in rows[:MAX_DEVICES]]
        if len(rows) > MAX_DEVICES:
            warnings.append(f"{len(rows)} devices did I/O: the {MAX_DEVICES} busiest are listed")
    data = BioLatencyData(
        method=t.result.method, backend=t.result.backend, skipped=t.result.skipped, device=device,
        duration_s=p.duration_s, unit=t.unit, histogram_type=p.histogram_type,
        linear_bucket_ms=p.linear_bucket_ms if p.histogram_type == "linear" else None, queued=p.queued,
        trace_start=wall_iso(t.window_ns[0]), trace_end=wall_iso(t.window_ns[1]),
        trace_window_exact=t.out.window_ns is not None, ios=total.count,
        ios_per_s=round(total.count / p.duration_s, 2),
        total_latency_ms=None if m is None else round(m * total.count * ms_per_unit, 3),
        **hist_fields(total, t.unit),
        ios_at_or_above_bucket=at_or_above(total, p.linear_bucket_ms / ms_per_unit)
        if p.histogram_type == "linear" else None,
        queue=queue_time(t, spec), devices=shown_devices, findings=[],
        argv=list(step.argv) if step else [], broker_job_id=job.job_id if job else None,
    )
    if p.queued and t.result.backend == "libbpf":
        warnings.append("biolatency -Q does not say how much of the latency was queue time; the bpftrace rung does")
    judged = [(n, h) for n, _, h in rows] if (p.per_device or device) and rows else [
        (device or "all devices", total)]
    data.findings = findings(data, spec, judged)
    truncated = bool(step and step.stdout_truncated) or (p.per_device and len(rows) > MAX_DEVICES)
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def summarise(d: BioLatencyData) -> str:
    h = d.histogram_us if d.unit == "us" else d.histogram_ms
    u = d.unit
    target = d.device or "all block devices"
    if h is None or h.count == 0:
        head = f"Block I/O latency of {target}: no I/O completed in {d.duration_s} s"
    else:
        head = (f"Block I/O latency of {target}{' (queued time included)' if d.queued else ''}: {h.count} I/Os in "
                f"{d.duration_s} s, p50 {_fmt(_p(h, u, 'p50'), u)}, p90 {_fmt(_p(h, u, 'p90'), u)}, "
                f"p99 {_fmt(_p(h, u, 'p99'), u)}, mean {_fmt(_p(h, u, 'mean'), u)}"
                f"{'' if h.mean_exact else ' (estimated)'}")
    lines = [head]
    if d.linear_bucket_ms is not None and h is not None and h.count:
        lines.append(f"{d.ios_at_or_above_bucket} of {h.count} I/Os took {d.linear_bucket_ms} ms or more")
    if d.queue is not None and d.queue.inserted_ios:
        lines.append(f"OS queue: {d.queue.inserted_ios} requests queued, mean {_fmt(d.queue.mean_queue_us, 'us')}, "
                     f"{d.queue.share_pct}% of the latency")
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.devices:
        parts = []
        for r in d.devices[:8]:
            rh = r.histogram_us if u == "us" else r.histogram_ms
            parts.append(f"{r.device} {r.ios} I/Os p99 {_fmt(_p(rh, u, 'p99'), u)}")
        lines.append("Per device: " + ", ".join(parts))
    lines.append(f"Method: {d.method}" + (f" ({len(d.skipped)} rung skipped: {d.skipped[0].reason})"
                                          if d.skipped else ""))
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="Block I/O latency histogram",
    description=(
        "Block device I/O latency (issue to completion, or with queued=true from insertion into the OS queue), traced "
        "for duration_s through the perf-mcp broker: a log2 or linear (linear_bucket_ms, e.g. an SLA) histogram in "
        "microseconds (or milliseconds) with p50/p90/p99, the mean and the I/O count, for one device or all, "
        "optionally per device, with findings. Backend: biolatency (libbpf-tools), else the broker's bpftrace script "
        "on the block tracepoints; data.method says which ran. Needs the broker's 'trace' grant."
    ),
    params=Params,
    data=BioLatencyData,
    handler=run,
)
