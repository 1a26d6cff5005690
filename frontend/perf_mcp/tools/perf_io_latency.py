"""perf_io_latency: per-device latency, utilisation and queue over duration_s,
from two reads of /proc/diskstats (iostat -x formulas, procfs.derive), with
findings against the disk rows of the USE thresholds and PSI io as context.

mode is "snapshot" only for now: the trace mode (the per-I/O latency
distribution from block tracepoints) arrives with the eBPF tools; until then
perf_bio_latency is the tool for distributions.

The device name is checked against the names in /proc/diskstats and is never
used to build a path: an unknown name is DEVICE_NOT_FOUND with the known names
in the suggestion. "/dev/NAME" is accepted for NAME.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

import msgspec
import trio
from msgspec import Meta

from ..contract import Finding
from ..errors import ErrorCode, ToolError
from ..procfs import Sampler, SampleView, parse_diskstats, read_file, system_rates
from ..procfs.errors import ParseError
from ..registry import ToolContext, ToolOutput, ToolSpec
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
    mode: Annotated[Literal["snapshot"], Meta(description=(
        "snapshot: diskstats deltas (averages per device). A per-I/O latency distribution (trace) comes with the "
        "eBPF tools; use perf_bio_latency for it."))] = "snapshot"


class IoDevice(DiskRow, kw_only=True):
    status: str  # ok / warning / critical against the disk thresholds
    whole_disk: bool


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
    known = await trio.to_thread.run_sync(known_devices)
    device = resolve_device(p.device, known) if p.device is not None else None
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


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _f(v: float | None, digits: int = 1) -> str:
    return "?" if v is None else f"{v:.{digits}f}"


def summarise(d: IoLatencyData) -> str:
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
        "mode=snapshot only for now (per-I/O distributions: perf_bio_latency). No privileges needed."
    ),
    params=Params,
    data=IoLatencyData,
    handler=run,
)
