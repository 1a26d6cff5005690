"""perf_io_layers: what the read/write system calls moved against what reached the
block layer, and the page-cache hit ratio that follows.

Reads served from the page cache = 1 - block read bytes / syscall read bytes
(file reads only where the backend can tell files from pipes and sockets),
clamped to [0, 1]: block reads also come from readahead beyond what was read,
mmap page faults, metadata, swap-in and O_DIRECT, so more can reach the disk
than the calls asked for. Writes reach the disk later (write-back by the
kernel's flusher threads), so write bytes of one window do not pair up.

Ladder (first that works): libbpf-tools vfsstat (kprobes: VFS calls counted,
no bytes, system-wide; the block side from /proc/diskstats) > the broker's
bpftrace script iolayers.bt (syscall exit tracepoints with the bytes moved,
files apart from other fds; block:block_rq_issue by direction, device and
process) > procfs in the frontend, no broker: /proc/PID/io (rchar/wchar against
read_bytes/write_bytes) of the processes the user may read, and
/proc/diskstats, before and after the window. Parsing: trace.iolayers_parse.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import Backend, IoLayers, JobResult, limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..procfs.disk import parse_diskstats
from ..procfs.process import parse_pid_io
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace.iolayers_parse import (FILE_CLASS, OTHER_CLASS, READ, WRITE, IoLayersOutput, IoLayersParseError,
                                    parse_iolayers_bpftrace, parse_vfsstat_text)
from ..trace.ladder import (Rung, RungFailed, Skipped, climb, find_step, parse_output, run_job,
                            step_failure)
from .perf_runq_latency import wall_iso

NAME = "perf_io_layers"
LOW_HIT_RATIO = 0.5  # reads served from cache below this share are a finding
MIN_READ_BYTES_FOR_FINDING = 1 << 20
BPFTRACE_START_EST_S = 3.0
HIT_RATIO_FORMULA = "reads served from cache = 1 - block read bytes / syscall read bytes, clamped to [0, 1]"


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_SHORT_DURATION_S[0], le=limits.TRACE_SHORT_DURATION_S[1],
                                    description="How long to measure, in seconds.")] = 10
    include_details: Annotated[bool, Meta(description=(
        "Also per process: its system call and block bytes and its own cache hit ratio (top_n by bytes)."))] = False
    top_n: Annotated[int, Meta(ge=1, le=100, description="include_details: list at most this many processes.")] = 10


class Layer(msgspec.Struct, kw_only=True):
    read_bytes: int | None
    read_ops: int | None
    write_bytes: int | None
    write_ops: int | None


class DeviceIo(msgspec.Struct, kw_only=True):
    device: str
    read_bytes: int
    write_bytes: int


class ProcessLayers(msgspec.Struct, kw_only=True):
    pid: int
    comm: str
    syscalls: Layer
    block: Layer
    read_cache_hit_ratio: float | None


class IoLayersData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    duration_s: int
    trace_start: str
    trace_end: str
    trace_window_exact: bool
    # file reads/writes (regular files and block devices) when the backend tells them
    # apart; procfs: every read()/write() byte of the readable processes (rchar/wchar)
    syscalls: Layer
    syscalls_scope: str
    other_fds: Layer | None  # pipes, sockets, terminals (bpftrace only)
    block: Layer
    block_scope: str
    devices: list[DeviceIo]
    read_cache_hit_ratio: float | None
    hit_ratio_note: str
    processes: list[ProcessLayers] | None
    processes_seen: int | None
    processes_unreadable: int | None  # procfs: /proc/PID/io the user may not read
    findings: list[Finding]
    argv: list[str]
    broker_job_id: int | None


def _vfsstat_unsupported(p: Params) -> str | None:
    if p.include_details:
        return "vfsstat counts VFS calls system-wide, not per process (include_details=true)"
    return None


RUNGS: list[Rung[Params]] = [
    Rung(Backend.LIBBPF, "vfsstat (libbpf-tools) + /proc/diskstats", programs=("vfsstat",),
         needs=("btf", "kprobe_events"), unsupported=_vfsstat_unsupported),
    Rung(Backend.BPFTRACE, "bpftrace iolayers.bt (read/write syscall exits vs block:block_rq_issue)",
         programs=("bpftrace",), needs=("tracepoints",)),
    Rung(None, "procfs (/proc/PID/io rchar/wchar vs read_bytes/write_bytes, /proc/diskstats)"),
]
LADDER = RUNGS


# ---------------------------------------------------------------- shared arithmetic


def hit_ratio(sys_read: int | None, blk_read: int | None) -> tuple[float | None, str]:
    """(ratio, note) per HIT_RATIO_FORMULA."""
    if sys_read is None or blk_read is None:
        return None, "no byte counts on the system call side: no hit ratio"
    if sys_read == 0:
        return None, ("no file bytes read by system calls" + (f" while {blk_read} bytes were read from disk "
                                                              "(mmap faults, readahead, metadata, swap-in)"
                                                              if blk_read else ""))
    raw = 1.0 - blk_read / sys_read
    ratio = min(1.0, max(0.0, raw))
    note = f"{HIT_RATIO_FORMULA}: 1 - {blk_read} / {sys_read} = {raw:.3f}"
    if raw < 0:
        note += (" (more bytes reached the disk than the calls read: readahead beyond what was read, mmap page "
                 "faults, O_DIRECT, metadata or swap-in; clamped to 0)")
    return round(ratio, 4), note


def whole_disks(names: list[str]) -> set[str]:
    """Devices that are not partitions (/sys/block lists whole devices)."""
    try:
        disks = set(os.listdir("/sys/block"))
    except OSError:
        return set(names)
    return {n for n in names if n in disks}


def dev_names() -> dict[tuple[int, int], str]:
    out = {}
    try:
        for name in os.listdir("/sys/class/block"):
            try:
                mm = Path(f"/sys/class/block/{name}/dev").read_text().strip()
                ma, mi = mm.split(":")
                out[(int(ma), int(mi))] = name
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return out


def read_diskstats() -> dict[str, tuple[int, int, int, int]]:
    """{disk: (reads, sectors_read, writes, sectors_written)} for whole disks."""
    try:
        stats = parse_diskstats(Path("/proc/diskstats").read_bytes())
    except OSError:
        return {}
    keep = whole_disks(list(stats.devices))
    return {n: (s.reads, s.sectors_read, s.writes, s.sectors_written) for n, s in stats.devices.items() if n in keep}


def diskstats_delta(a: dict[str, tuple[int, int, int, int]], b: dict[str, tuple[int, int, int, int]]
                    ) -> tuple[Layer, list[DeviceIo]]:
    tot = [0, 0, 0, 0]
    devices = []
    for name, after in b.items():
        before = a.get(name)
        if before is None:
            continue
        d = [max(0, x - y) for x, y in zip(after, before)]
        for i in range(4):
            tot[i] += d[i]
        if d[1] or d[3]:
            devices.append(DeviceIo(device=name, read_bytes=d[1] * 512, write_bytes=d[3] * 512))
    devices.sort(key=lambda x: -(x.read_bytes + x.write_bytes))
    return Layer(read_bytes=tot[1] * 512, read_ops=tot[0], write_bytes=tot[3] * 512, write_ops=tot[2]), devices


# ---------------------------------------------------------------- rungs


class Measured(msgspec.Struct, kw_only=True):
    syscalls: Layer
    syscalls_scope: str
    other_fds: Layer | None
    block: Layer
    block_scope: str
    devices: list[DeviceIo]
    processes: list[ProcessLayers] | None
    processes_unreadable: int | None
    window_ns: tuple[int, int]
    window_exact: bool
    warnings: list[str]


def from_bpftrace(out: IoLayersOutput) -> Measured:
    def layer(sys: dict, cl: int) -> Layer:
        r, w = sys.get((READ, cl)), sys.get((WRITE, cl))
        return Layer(read_bytes=r.bytes if r else 0, read_ops=r.ops if r else 0,
                     write_bytes=w.bytes if w else 0, write_ops=w.ops if w else 0)

    def blk_layer(blk: dict) -> Layer:
        r, w = blk.get(READ), blk.get(WRITE)
        return Layer(read_bytes=r.bytes if r else 0, read_ops=r.ops if r else 0,
                     write_bytes=w.bytes if w else 0, write_ops=w.ops if w else 0)

    names = dev_names()
    per_dev: dict[str, DeviceIo] = {}
    for (dev, direction), nbytes in out.blk_dev.items():
        name = names.get((dev >> 20, dev & 0xFFFFF), f"{dev >> 20}:{dev & 0xFFFFF}")
        d = per_dev.setdefault(name, DeviceIo(device=name, read_bytes=0, write_bytes=0))
        if direction == READ:
            d.read_bytes += nbytes
        elif direction == WRITE:
            d.write_bytes += nbytes
    devices = sorted((d for d in per_dev.values() if d.read_bytes or d.write_bytes),
                     key=lambda x: -(x.read_bytes + x.write_bytes))
    processes = None
    if out.per_pid is not None:
        processes = []
        for pp in out.per_pid.values():
            sys_l, blk_l = layer(pp.sys, FILE_CLASS), blk_layer(pp.blk)
            ratio, _ = hit_ratio(sys_l.read_bytes, blk_l.read_bytes)
            processes.append(ProcessLayers(pid=pp.pid, comm=pp.comm, syscalls=sys_l, block=blk_l,
                                           read_cache_hit_ratio=ratio))
    now = time.monotonic_ns()
    return Measured(
        syscalls=layer(out.sys, FILE_CLASS), syscalls_scope="reads and writes of regular files and block devices, "
        "all processes", other_fds=layer(out.sys, OTHER_CLASS), block=blk_layer(out.blk),
        block_scope="block requests issued to every device (block:block_rq_issue)", devices=devices,
        processes=processes, processes_unreadable=None, window_ns=out.window_ns or (now - 1, now),
        window_exact=out.window_ns is not None, warnings=list(out.warnings))


def read_proc_io() -> tuple[dict[int, tuple[str, int, int, int, int, int, int]], int]:
    """{pid: (comm, rchar, syscr, wchar, syscw, read_bytes, write_bytes)} of the readable
    processes, and how many could not be read (another user's)."""
    out, denied = {}, 0
    for name in os.listdir("/proc"):
        if not name.isdecimal():
            continue
        try:
            io = parse_pid_io(Path(f"/proc/{name}/io").read_bytes())
            comm = Path(f"/proc/{name}/comm").read_text().strip()
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue
        vals = (io.rchar, io.syscr, io.wchar, io.syscw, io.read_bytes, io.write_bytes)
        if any(v is None for v in vals):
            continue
        out[int(name)] = (comm, *vals)  # type: ignore[assignment]
    return out, denied


async def from_procfs(ctx: ToolContext, p: Params) -> Measured:
    disk_a = read_diskstats()
    io_a, _ = read_proc_io()
    t0 = time.monotonic_ns()
    for i in range(p.duration_s):
        await ctx.report_progress(float(i), float(p.duration_s), f"procfs: {i}/{p.duration_s} s")
        await trio.sleep(max(0.0, (t0 + (i + 1) * 1_000_000_000 - time.monotonic_ns()) / 1e9))
    io_b, denied = read_proc_io()
    disk_b = read_diskstats()
    t1 = time.monotonic_ns()
    block, devices = diskstats_delta(disk_a, disk_b)
    tot = [0] * 6
    processes = []
    for pid, after in io_b.items():
        before = io_a.get(pid)
        if before is None:
            continue
        d = [max(0, x - y) for x, y in zip(after[1:], before[1:])]
        for i in range(6):
            tot[i] += d[i]
        if any(d[j] for j in (0, 2, 4, 5)):
            sys_l = Layer(read_bytes=d[0], read_ops=d[1], write_bytes=d[2], write_ops=d[3])
            blk_l = Layer(read_bytes=d[4], read_ops=None, write_bytes=d[5], write_ops=None)
            ratio, _ = hit_ratio(d[0], d[4])
            processes.append(ProcessLayers(pid=pid, comm=after[0], syscalls=sys_l, block=blk_l,
                                           read_cache_hit_ratio=ratio))
    warnings = ["procfs: rchar/wchar count every read()/write() byte (pipes, sockets and terminals too), so the "
                "hit ratio overstates cache hits where processes also read from pipes or sockets"]
    if denied:
        warnings.append(f"procfs: /proc/PID/io of {denied} processes of other users is not readable: the system "
                        "call side and the per-process block side cover only this user's processes; the device "
                        "totals (/proc/diskstats) cover everything")
    proc_block = Layer(read_bytes=tot[4], read_ops=None, write_bytes=tot[5], write_ops=None)
    return Measured(
        syscalls=Layer(read_bytes=tot[0], read_ops=tot[1], write_bytes=tot[2], write_ops=tot[3]),
        syscalls_scope="every read()/write() byte of the processes this user may read (rchar/wchar)",
        other_fds=None, block=proc_block if denied else block,
        block_scope=("bytes the readable processes caused to be read from / written to storage (read_bytes/"
                     "write_bytes)" if denied else "whole disks (/proc/diskstats sectors)"),
        devices=devices, processes=processes if p.include_details else None,
        processes_unreadable=denied, window_ns=(t0, t1), window_exact=True, warnings=warnings)


async def from_vfsstat(ctx: ToolContext, p: Params, rung: Rung[Params]) -> tuple[Measured, JobResult]:
    disk_a = read_diskstats()
    job = await run_job(ctx, IoLayers(backend=Backend.LIBBPF, duration_s=p.duration_s, per_process=False),
                        expected_s=p.duration_s + 1.0, label="vfsstat")
    disk_b = read_diskstats()
    step = find_step(job, "vfsstat")
    reason = step_failure(step)
    if reason is not None:
        raise RungFailed(reason)
    assert step is not None
    try:
        rates = parse_vfsstat_text(step.stdout)
    except IoLayersParseError as exc:
        raise ToolError(ErrorCode.PARSE_ERROR, f"{rung.method}: {exc}") from None
    block, devices = diskstats_delta(disk_a, disk_b)
    d = p.duration_s
    now = time.monotonic_ns()
    return Measured(
        syscalls=Layer(read_bytes=None, read_ops=round(rates.rates.get("read", 0.0) * d), write_bytes=None,
                       write_ops=round(rates.rates.get("write", 0.0) * d)),
        syscalls_scope="VFS read and write calls (vfs_read, vfs_write), all processes; vfsstat counts no bytes",
        other_fds=None, block=block, block_scope="whole disks (/proc/diskstats across the job)", devices=devices,
        processes=None, processes_unreadable=None, window_ns=(now - d * 1_000_000_000, now), window_exact=False,
        warnings=rates.warnings), job


# ---------------------------------------------------------------- answer


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.1f} MiB"


def findings(d: IoLayersData) -> list[Finding]:
    out: list[Finding] = []
    w = float(d.duration_s)
    r = d.read_cache_hit_ratio
    sr, br = d.syscalls.read_bytes, d.block.read_bytes
    if r is not None and sr is not None and sr >= MIN_READ_BYTES_FOR_FINDING and r < LOW_HIT_RATIO:
        top = None
        if d.processes:
            top = max(d.processes, key=lambda x: x.block.read_bytes or 0)
        out.append(Finding(
            id="io.low_cache_hit_ratio", severity="warning", resource="disk",
            title=f"Only {r:.0%} of file reads served from the page cache",
            detail=(f"System calls read {_mib(sr)} in {d.duration_s} s and {_mib(br)} were read from disk "
                    f"({d.hit_ratio_note}). The working set does not fit the page cache, is read once (a "
                    "scan, a backup), or was dropped."
                    + (f" Most disk reads: pid {top.pid} ({top.comm}), {_mib(top.block.read_bytes)}." if top else "")),
            confidence=0.7, metrics={"hit_ratio": r, "syscall_read_bytes": float(sr), "block_read_bytes": float(br or 0)},
            evidence=[Evidence(tool=NAME, counter="read_cache_hit_ratio", value=r, threshold=LOW_HIT_RATIO,
                               window_s=w, sample=f"syscall {sr} B, block {br} B")],
            suggestion=(f"perf_vfs_latency {json.dumps({'pid': top.pid, 'duration_s': 5, 'min_latency_ms': 5})} "
                        "shows which files its reads wait on" if top else
                        f"perf_io_layers {json.dumps({'duration_s': 10, 'include_details': True})} names the "
                        "readers") + f"; perf_bio_latency {json.dumps({'duration_s': 5})} how fast the disk answers.",
            next=(next_call("perf_vfs_latency", pid=top.pid, duration_s=5, min_latency_ms=5) if top else
                  next_call("perf_io_layers", duration_s=10, include_details=True))))
    if d.processes:
        top = max(d.processes, key=lambda x: (x.block.read_bytes or 0) + (x.block.write_bytes or 0))
        tb = (top.block.read_bytes or 0) + (top.block.write_bytes or 0)
        if tb >= MIN_READ_BYTES_FOR_FINDING:
            out.append(Finding(
                id="io.top_block_process", severity="info", resource="process",
                title=f"pid {top.pid} ({top.comm}) issued the most block I/O: {_mib(tb)}",
                detail=(f"pid {top.pid} read {_mib(top.block.read_bytes)} and wrote {_mib(top.block.write_bytes)} "
                        f"at the block layer in {d.duration_s} s, for {_mib(top.syscalls.read_bytes)} read and "
                        f"{_mib(top.syscalls.write_bytes)} written by its system calls. Write-back issued by the "
                        "kernel's flusher threads is not charged to the writer."),
                confidence=0.7, metrics={"block_bytes": float(tb)},
                evidence=[Evidence(tool=NAME, counter="block_bytes", value=tb, window_s=w, sample=f"pid {top.pid}")],
                suggestion=f"perf_vfs_latency {json.dumps({'pid': top.pid, 'duration_s': 5})} shows which of its "
                           "file calls are slow.",
                next=next_call("perf_vfs_latency", pid=top.pid, duration_s=5)))
    return sort_findings(out)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    async def attempt(rung: Rung[Params]) -> tuple[Measured, JobResult | None]:
        if rung.backend is None:
            return await from_procfs(ctx, p), None
        if rung.backend is Backend.LIBBPF:
            return await from_vfsstat(ctx, p, rung)
        job = await run_job(ctx, IoLayers(backend=Backend.BPFTRACE, duration_s=p.duration_s,
                                          per_process=p.include_details),
                            expected_s=p.duration_s + BPFTRACE_START_EST_S, label="bpftrace iolayers.bt")
        step = find_step(job, "iolayers")
        reason = step_failure(step)
        if reason is not None:
            raise RungFailed(reason)
        assert step is not None
        out = parse_output(step, rung.method, parse_iolayers_bpftrace, IoLayersParseError)
        return from_bpftrace(out), job

    result = await climb(ctx, RUNGS, p, attempt)
    m: Measured = result.value
    job = result.job
    step = job.steps[0] if job and job.steps else None
    ratio, note = hit_ratio(m.syscalls.read_bytes, m.block.read_bytes)
    procs, seen = None, None
    if m.processes is not None:
        seen = len(m.processes)
        procs = sorted(m.processes, key=lambda x: -((x.syscalls.read_bytes or 0) + (x.syscalls.write_bytes or 0)
                                                     + (x.block.read_bytes or 0) + (x.block.write_bytes or 0)))
        procs = procs[: p.top_n]
    data = IoLayersData(
        method=result.method, backend=result.backend, skipped=result.skipped, duration_s=p.duration_s,
        trace_start=wall_iso(m.window_ns[0]), trace_end=wall_iso(m.window_ns[1]), trace_window_exact=m.window_exact,
        syscalls=m.syscalls, syscalls_scope=m.syscalls_scope, other_fds=m.other_fds, block=m.block,
        block_scope=m.block_scope, devices=m.devices, read_cache_hit_ratio=ratio, hit_ratio_note=note,
        processes=procs, processes_seen=seen, processes_unreadable=m.processes_unreadable, findings=[],
        argv=list(step.argv) if step else [], broker_job_id=job.job_id if job else None)
    data.findings = findings(data)
    warnings = [*result.warnings(), *m.warnings]
    stacked = [d.device for d in data.devices if d.device.startswith(("loop", "dm-", "md"))]
    if stacked and len(data.devices) > 1:
        warnings.append(f"{', '.join(stacked)} sit on other devices: their I/O may be counted again on the device "
                        "below (a loop device's backing file, a device-mapper target)")
    truncated = bool(step and step.stdout_truncated) or (seen is not None and procs is not None and seen > len(procs))
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def summarise(d: IoLayersData) -> str:
    s, b = d.syscalls, d.block
    head = (f"I/O layers in {d.duration_s} s: system calls read {_mib(s.read_bytes)} ({s.read_ops} calls) and wrote "
            f"{_mib(s.write_bytes)}; the block layer read {_mib(b.read_bytes)} and wrote {_mib(b.write_bytes)}; "
            + (f"reads served from cache {d.read_cache_hit_ratio:.1%}" if d.read_cache_hit_ratio is not None
               else "no cache hit ratio"))
    lines = [head, *[f"[{f.severity}] {f.title}" for f in d.findings]]
    if d.processes:
        lines.append("Processes: " + ", ".join(
            f"{x.pid} {x.comm} syscall r {_mib(x.syscalls.read_bytes)} / block r {_mib(x.block.read_bytes)}"
            for x in d.processes[:5]))
    lines.append(f"Method: {d.method}" + (f" ({len(d.skipped)} rung skipped: {d.skipped[0].reason})"
                                          if d.skipped else ""))
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="I/O layers: system calls vs block layer (page-cache hit ratio)",
    description=(
        "What the read/write system calls moved (bytes, calls) against what reached the block layer, over "
        "duration_s, and the share of file reads served from the page cache (1 - block read bytes / syscall read "
        "bytes, clamped and explained); per process with include_details. Backend: vfsstat (libbpf-tools, needs "
        "kprobes), else the broker's bpftrace script on the syscall and block tracepoints, else procfs "
        "(/proc/PID/io of the user's own processes and /proc/diskstats, no broker); data.method says which ran."
    ),
    params=Params,
    data=IoLayersData,
    handler=run,
)
