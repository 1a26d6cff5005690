"""perf_io_latency: per-device latency, utilisation and queue over duration_s,
from two reads of /proc/diskstats (iostat -x formulas, procfs.derive), with
findings against the disk rows of the USE thresholds and PSI io as context.

mode=trace: the per-request latency distribution of each device, from the
same broker job and parser as perf_bio_latency (biolatency -D, else the
broker's bpftrace script on the block tracepoints): `trace_devices`, one log2
histogram in microseconds per device that completed I/O, busiest first, with
data.method/backend/skipped saying which rung ran. Needs the broker's 'trace'
grant; whole seconds only.

The device name is checked against the names in /proc/diskstats and is never
used to build a path: an unknown name is DEVICE_NOT_FOUND with the known names
in the suggestion. "/dev/NAME" is accepted for NAME.
"""

from __future__ import annotations

import math
import os
import types
from typing import Annotated, Literal

import msgspec
import trio
from msgspec import Meta

from ..contract import Finding
from ..errors import ErrorCode, ToolError
from ..procfs import Sampler, SampleView, parse_diskstats, read_file, system_rates
from ..procfs.errors import ParseError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace import histogram as H
from ..trace.ladder import Skipped
from ..use import rules
from ..use.config import load_thresholds
from .perf_snapshot import DiskRow, PsiShare, disk_row, iso, shown_devices, whole_disk_names

NAME = "perf_io_latency"
DISKSTATS = "/proc/diskstats"
PSI_IO = "/proc/pressure/io"
DEVICE_PATTERN = r"^(/dev/)?[A-Za-z0-9][A-Za-z0-9._+:!-]*$"
MAX_NAMES_IN_SUGGESTION = 40


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    device: Annotated[str, Meta(min_length=1, max_length=72, pattern=DEVICE_PATTERN, description=(
        "A block device as /proc/diskstats names it (sda, nvme0n1, dm-0, loop3; /dev/sda also works); "
        "omit for every disk."))] | None = None
    duration_s: Annotated[float, Meta(ge=1, le=30, description="How long to measure, in seconds.")] = 5.0
    mode: Annotated[Literal["snapshot", "trace"], Meta(description=(
        "snapshot: diskstats deltas (averages per device; no privileges). trace: the per-request latency "
        "distribution of each device from the block tracepoints (the broker's 'trace' grant; whole seconds; "
        "perf_bio_latency has more options)."))] = "snapshot"


class IoDevice(DiskRow, kw_only=True):
    status: str  # ok / warning / critical against the disk thresholds
    whole_disk: bool


class TraceDevice(msgspec.Struct, kw_only=True):
    """mode=trace: one device's request latency (issue to completion)."""

    device: str
    major: int | None
    minor: int | None
    ios: int
    ios_per_s: float
    histogram_us: H.HistogramUs  # type: ignore[valid-type]


class IoLatencyData(msgspec.Struct, kw_only=True):
    mode: str
    method: str
    device: str | None
    duration_s: float  # actual
    start: str
    end: str
    devices: list[IoDevice]
    devices_omitted: int
    psi_io: PsiShare | None
    findings: list[Finding]
    # mode=trace only: which rung ran, why the others were skipped, the per-device histograms
    backend: str | None = None
    skipped: list[Skipped] | None = None
    trace_devices: list[TraceDevice] | None = None
    trace_window_exact: bool | None = None
    argv: list[str] | None = None


def known_devices() -> list[str]:
    try:
        return sorted(parse_diskstats(read_file(DISKSTATS)).devices)
    except (OSError, ParseError) as exc:
        raise ToolError(ErrorCode.EXECUTION_FAILED, f"cannot read {DISKSTATS}: {exc}") from exc


def resolve_device(requested: str, known: list[str]) -> str:
    """The diskstats name for what the client gave, or DEVICE_NOT_FOUND."""
    name = requested[len("/dev/"):] if requested.startswith("/dev/") else requested
    if name in known:
        return name
    listed = ", ".join(known[:MAX_NAMES_IN_SUGGESTION]) + (" ..." if len(known) > MAX_NAMES_IN_SUGGESTION else "")
    raise ToolError(ErrorCode.DEVICE_NOT_FOUND, f"no block device {requested!r} in {DISKSTATS}",
                    suggestion=f"Pass one of: {listed}; or omit device for every disk.")


async def measure(ctx: ToolContext, duration_s: float) -> tuple[SampleView, SampleView]:
    files = {"diskstats": DISKSTATS}
    if os.path.exists(PSI_IO):
        files["psi_io"] = PSI_IO
    probe = Sampler(duration_s, capacity=2, files=files)
    first = probe.tick()
    start = trio.current_time()
    whole = int(duration_s)
    for second in range(1, whole + 1):
        await trio.sleep_until(start + second)
        await ctx.report_progress(second, duration_s, f"measuring {second}/{duration_s:g} s")
    await trio.sleep_until(start + duration_s)
    last = probe.tick()
    if whole < duration_s:
        await ctx.report_progress(duration_s, duration_s, "done")
    return probe.view(first), probe.view(last)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if p.mode == "trace" and p.duration_s != math.floor(p.duration_s):
        raise ToolError(ErrorCode.INVALID_PARAMS, f"mode=trace traces whole seconds; duration_s {p.duration_s:g} is not",
                        suggestion=f"Pass duration_s={max(1, round(p.duration_s))}.")
    known = await trio.to_thread.run_sync(known_devices)
    device = resolve_device(p.device, known) if p.device is not None else None
    if p.mode == "trace":
        return await run_trace(ctx, p, device)
    whole = await trio.to_thread.run_sync(whole_disk_names)
    older, newer = await measure(ctx, p.duration_s)
    rates = system_rates(older, newer)
    if rates is None:
        raise ToolError(ErrorCode.EXECUTION_FAILED, "the clock did not move during the measurement")
    warnings = list(dict.fromkeys(rates.warnings + older.warnings + newer.warnings))
    if device is not None:
        if device not in rates.disks:
            raise ToolError(ErrorCode.DEVICE_NOT_FOUND, f"block device {device!r} went away during the measurement")
        shown = [rates.disks[device]]
        judged = frozenset({device})
    else:
        shown = shown_devices(rates.disks, whole)
        judged = whole
    thresholds, th_warnings = load_thresholds()
    warnings += th_warnings
    window = rules.Window(older=older, newer=newer, samples=[older, newer], cpus=os.cpu_count() or 1,
                          whole_disks=judged)
    fc = rules.FindingContext(window_s=rates.interval_s, sample=iso(rates.end_wall), cpus=window.cpus, tool=NAME)
    signals, _ = rules.disk_signals(window, thresholds)
    status = {s.check.target: s.check.status for s in sorted(
        signals, key=lambda s: -rules.STATUS_RANK[s.check.status]) if s.check.id.startswith("disk.")}
    devices = [IoDevice(**msgspec.structs.asdict(disk_row(d)), status=status.get(d.name, "ok"),
                        whole_disk=d.name in whole) for d in shown]
    psi = rates.pressure.get("io")
    data = IoLatencyData(
        mode=p.mode, method=f"{DISKSTATS} read twice {p.duration_s:g} s apart (iostat -x formulas)", device=device,
        duration_s=round(rates.interval_s, 3), start=iso(rates.start_wall), end=iso(rates.end_wall),
        devices=devices, devices_omitted=len(rates.disks) - len(shown),
        psi_io=PsiShare(some_pct=_r(psi.some_pct), full_pct=_r(psi.full_pct)) if psi else None,
        findings=rules.disk_findings(signals, fc),
    )
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings)


async def run_trace(ctx: ToolContext, p: Params, device: str | None) -> ToolOutput:
    """The per-device latency distribution from perf_bio_latency's job and parser."""
    from . import perf_bio_latency as bio  # imported here: it imports this module's device helpers

    duration = int(p.duration_s)
    spec = bio.TraceSpec(duration_s=duration, device=device, per_device=True)
    t = await bio.trace(ctx, spec)
    rows = sorted(t.devices, key=lambda r: (-r[2].count, r[0]))
    if device is not None and not rows:
        rows = [(device, None, t.total)]
    trace_devices = [TraceDevice(device=name, major=dev[0] if dev else None, minor=dev[1] if dev else None,
                                 ios=h.count, ios_per_s=round(h.count / duration, 2), histogram_us=H.to_struct(h, "us"))
                     for name, dev, h in rows[:bio.MAX_DEVICES]]
    warnings = list(t.warnings)
    if len(rows) > bio.MAX_DEVICES:
        warnings.append(f"{len(rows)} devices did I/O: the {bio.MAX_DEVICES} busiest are listed")
    job = t.result.job
    step = bio.find_step(job, "biolatency") if job else None
    brief = types.SimpleNamespace(unit="us", ios=t.total.count, duration_s=duration, queue=None)
    data = IoLatencyData(
        mode="trace", method=t.result.method, device=device, duration_s=float(duration),
        start=bio.wall_iso(t.window_ns[0]), end=bio.wall_iso(t.window_ns[1]), devices=[], devices_omitted=0,
        psi_io=None, findings=bio.findings(brief, spec, [(r[0], r[2]) for r in rows], tool=NAME),
        backend=t.result.backend, skipped=t.result.skipped, trace_devices=trace_devices,
        trace_window_exact=t.out.window_ns is not None, argv=list(step.argv) if step else [],
    )
    truncated = bool(step and step.stdout_truncated) or len(rows) > bio.MAX_DEVICES
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _f(v: float | None, digits: int = 1) -> str:
    return "?" if v is None else f"{v:.{digits}f}"


def summarise_trace(d: IoLatencyData) -> str:
    rows = d.trace_devices or []
    target = d.device or "all devices"
    total = sum(r.ios for r in rows)
    lines = [f"I/O latency of {target} traced for {d.duration_s:g} s: {total} requests completed"]
    for r in rows[:10]:
        h = r.histogram_us
        lines.append(f"  {r.device:<10} {r.ios:>7} I/Os  p50 {_f(h.p50_us)} us  p90 {_f(h.p90_us)} us  "
                     f"p99 {_f(h.p99_us)} us  mean {_f(h.mean_us)} us{'' if h.mean_exact else ' (estimated)'}")
    for f in d.findings:
        lines.append(f"[{f.severity}] {f.title}: {f.detail}")
        lines.append(f"    {f.suggestion}")
    lines.append(f"Method: {d.method}" + (f" ({len(d.skipped)} rung skipped: {d.skipped[0].reason})"
                                          if d.skipped else ""))
    return "\n".join(lines)


def summarise(d: IoLatencyData) -> str:
    if d.mode == "trace":
        return summarise_trace(d)
    busiest = max(d.devices, key=lambda r: r.util_pct or 0.0, default=None)
    target = d.device or "all disks"
    if busiest is None:
        head = f"I/O latency of {target} over {d.duration_s:g} s: no devices"
    else:
        head = (f"I/O latency of {target} over {d.duration_s:g} s: busiest {busiest.device} {_f(busiest.util_pct, 0)}% "
                f"util, r_await {_f(busiest.r_await_ms, 2)} ms, w_await {_f(busiest.w_await_ms, 2)} ms, "
                f"aqu-sz {_f(busiest.aqu_sz, 2)}")
    lines = [head, "  device        r/s      w/s    rkB/s    wkB/s  r_await  w_await  rareq-sz wareq-sz  aqu-sz  %util"]
    for r in d.devices:
        lines.append(f"  {r.device:<10} {_f(r.r_s):>7} {_f(r.w_s):>8} {_f(r.rkb_s):>8} {_f(r.wkb_s):>8} "
                     f"{_f(r.r_await_ms, 2):>8} {_f(r.w_await_ms, 2):>8} {_f(r.rareq_sz_kb):>9} "
                     f"{_f(r.wareq_sz_kb):>8} {_f(r.aqu_sz, 2):>7} {_f(r.util_pct):>6}  {r.status}")
    if d.psi_io is not None:
        lines.append(f"PSI io: some {_f(d.psi_io.some_pct)}%, full {_f(d.psi_io.full_pct)}% of the window")
    for f in d.findings:
        lines.append(f"[{f.severity}] {f.title}: {f.detail}")
        lines.append(f"    {f.suggestion}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="Block device latency and utilisation (diskstats)",
    description=(
        "Measure every block device (or one) for duration_s seconds from /proc/diskstats, as iostat -x computes "
        "it: r_await and w_await (ms per completed request), aqu-sz, %util, IOPS, kB/s and request sizes, with "
        "findings against the disk thresholds and the PSI io stall share. Sends progress each second. "
        "No privileges needed. mode=trace: instead, each device's per-request latency histogram (p50/p90/p99, "
        "mean) traced on the block tracepoints through the perf-mcp broker (needs its 'trace' grant; "
        "perf_bio_latency has more options)."
    ),
    params=Params,
    data=IoLatencyData,
    handler=run,
)
