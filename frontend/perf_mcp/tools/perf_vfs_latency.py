"""perf_vfs_latency: slow file system calls by operation and file, with a latency
distribution per operation.

Operations: read (read, pread64, readv), write (write, pwrite64, writev), fsync
(fsync, fdatasync), open (openat). Every call of the traced processes goes into
its operation's log2 histogram (microseconds, exact mean from the script's
sum); calls at least min_latency_ms slow are listed with pid, comm, fd and the
file's path, and summed per file.

Ladder (first that works): libbpf-tools `fsslower -t ext4` (kprobes or fentry
on ext4's file operations: one file system, slow calls only, file names
without directories) > the broker's bpftrace script vfslat.bt on the syscall
tracepoints. Parsing: trace.vfs_parse.

fd -> path (bpftrace): the script prints the path of every file opened in the
window (pid + fd -> path as passed to openat); a slow call on an fd opened
before the window is resolved from /proc/PID/fd/N after the job (what the fd
names then, if the frontend's user may read it), else by the file's name as
the kernel's dentry holds it (last component only), else "unknown".

Files that are not files (anonymous pipes, sockets, terminals, eventfd...)
make calls that wait for a peer, not for storage: they are left out of the
histograms and the lists unless include_all_files, and counted apart.

Findings: slow fsyncs (p99 above FSYNC_P99_MS), the file with the most slow
time, a FIFO's reads (waits for its writer: info), no calls for a pid.
"""

from __future__ import annotations

import json
import os
import time
from typing import Annotated

import msgspec
from msgspec import Meta

from perf_mcp_protocol import Backend, JobResult, VfsLatency, limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace import histogram as H
from ..trace.ladder import (Rung, RungFailed, Skipped, climb, cut_warning, find_step, parse_output, run_job,
                            step_failure)
from ..trace.vfs_parse import (OPS, PATH_CLASSES, SlowCall, VfsOutput, VfsParseError, parse_fsslower_csv,
                               parse_vfslat_bpftrace)
from .perf_runq_latency import process_name, wall_iso

NAME = "perf_vfs_latency"
# fsync p99 in ms: warning above the first, critical above the second. A flush of a
# few dirty pages to an SSD takes well under 10 ms; hundreds of ms stall a database.
FSYNC_P99_MS = (20.0, 200.0)
# A file whose slow calls add up to this share of the window is a finding.
FILE_SLOW_SHARE = 0.10
BPFTRACE_START_EST_S = 3.0


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_SHORT_DURATION_S[0], le=limits.TRACE_SHORT_DURATION_S[1],
                                    description="How long to trace, in seconds.")] = 5
    min_latency_ms: Annotated[int, Meta(ge=limits.MIN_LATENCY_MS[0], le=limits.MIN_LATENCY_MS[1], description=(
        "List calls at least this slow, in ms (0: every call; use with a pid). Every call is in the "
        "histograms whatever this is."))] = 10
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "Only the calls of this process (all its threads); omit for every process."))] | None = None
    include_all_files: Annotated[bool, Meta(description=(
        "Also calls on anonymous pipes, sockets, terminals and other non-files (waits for a peer, not for "
        "storage); by default only regular files, named FIFOs, block devices and directories count."))] = False
    top_n: Annotated[int, Meta(ge=1, le=200, description="List at most this many slow calls and files.")] = 20


class OpLatency(msgspec.Struct, kw_only=True):
    op: str
    calls: int
    calls_per_s: float
    bytes: int | None  # read/write: bytes moved (the calls' return values); None when unknown
    slow_calls: int
    histogram: H.HistogramUs  # type: ignore[valid-type]


class SlowCallRow(msgspec.Struct, kw_only=True):
    op: str
    latency_ms: float
    pid: int
    tid: int | None
    comm: str
    fd: int | None
    path: str
    # how the path was found: "open" (opened in the window), "proc" (/proc/PID/fd after
    # the trace), "name" (the file's last path component only), "unknown"
    path_source: str
    file_class: str
    ret: int | None
    at: str | None  # UTC when the call returned


class SlowFile(msgspec.Struct, kw_only=True):
    path: str
    path_source: str
    file_class: str
    slow_calls: int
    total_ms: float
    max_ms: float
    ops: dict[str, int]
    pids: list[int]
    comms: list[str]


class VfsLatencyData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    target: str
    pid: int | None
    duration_s: int
    min_latency_ms: int
    include_all_files: bool
    trace_start: str
    trace_end: str
    trace_window_exact: bool
    all_calls: bool  # True: histograms hold every call; False (fsslower): only the slow ones
    operations: list[OpLatency]
    slow_calls_total: int
    slow_calls: list[SlowCallRow]  # top_n slowest
    files: list[SlowFile]  # top_n by total slow time
    files_seen: int
    excluded_calls: int  # calls on non-files left out (include_all_files=false)
    findings: list[Finding]
    argv: list[str]
    broker_job_id: int | None


RUNGS: list[Rung[Params]] = [
    Rung(Backend.LIBBPF, "fsslower -t ext4 (libbpf-tools)", programs=("fsslower",), needs=("btf", "kprobe_events")),
    Rung(Backend.BPFTRACE, "bpftrace vfslat.bt (read/write/fsync/openat syscall tracepoints)",
         programs=("bpftrace",), needs=("tracepoints",)),
]
LADDER = RUNGS


def parse_step(rung: Rung[Params], job: JobResult) -> VfsOutput:
    name = "fsslower" if rung.backend is Backend.LIBBPF else "vfslat"
    step = find_step(job, name)
    reason = step_failure(step)
    if reason is not None:
        raise RungFailed(reason)
    assert step is not None
    out = parse_output(step, rung.method,
                     parse_fsslower_csv if rung.backend is Backend.LIBBPF else parse_vfslat_bpftrace, VfsParseError)
    cut = cut_warning(step, rung.method)
    if cut:
        out.warnings.append(cut)
    return out


# ---------------------------------------------------------------- fd -> path


def _proc_fd(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


def resolve_paths(out: VfsOutput, readlink=_proc_fd) -> list[tuple[SlowCall, str, str]]:
    """(call, path, source) for each slow call; see the module docstring for the order."""
    opened: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for o in out.opens:
        opened.setdefault((o.pid, o.fd), []).append((o.end_ns, o.path))
    for v in opened.values():
        v.sort()
    proc_cache: dict[tuple[int, int], str | None] = {}
    rows = []
    for c in out.slow:
        path, source = None, "unknown"
        if c.fd is not None:
            fd = c.ret if c.op == "open" and c.ret is not None and c.ret >= 0 else c.fd
            before = [p for t, p in opened.get((c.pid, fd), []) if c.end_ns is None or t <= c.end_ns]
            if before:
                path, source = before[-1], "open"
            elif c.op != "open":
                key = (c.pid, fd)
                if key not in proc_cache:
                    proc_cache[key] = readlink(c.pid, fd)
                if proc_cache[key]:
                    path, source = proc_cache[key], "proc"
        if path is None and c.name:
            path, source = c.name, "name"
        rows.append((c, path or "unknown", source))
    return rows


# ---------------------------------------------------------------- answer


def _fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


def build_data(out: VfsOutput, p: Params, *, method: str, backend: str, skipped: list[Skipped], target: str,
               argv: list[str], job_id: int | None, answered_ns: int,
               readlink=_proc_fd) -> tuple[VfsLatencyData, list[str]]:
    warnings: list[str] = []
    include = (lambda cl: True) if p.include_all_files else (lambda cl: cl in PATH_CLASSES)
    slow_rows = [(c, path, src) for c, path, src in resolve_paths(out, readlink) if include(c.file_class)]
    slow_by_op: dict[str, int] = {}
    for c, _, _ in slow_rows:
        slow_by_op[c.op] = slow_by_op.get(c.op, 0) + 1
    excluded = sum(h.count for (op, cl), h in out.hists.items() if not include(cl))
    ops = []
    for op in OPS:
        hs = [h for (o, cl), h in out.hists.items() if o == op and include(cl)]
        total = H.Hist("us", "log2", [], 0.0)
        for h in hs:
            total = total.merged(h)
        nb = [n for (o, cl), n in out.bytes.items() if o == op and include(cl)]
        ops.append(OpLatency(op=op, calls=total.count, calls_per_s=round(total.count / p.duration_s, 2),
                             bytes=sum(nb) if op in ("read", "write") and out.all_calls else None,
                             slow_calls=slow_by_op.get(op, 0), histogram=H.to_struct(total, "us")))
    ops = [o for o in ops if o.calls or o.op in ("read", "write")]

    calls = [SlowCallRow(op=c.op, latency_ms=round(c.latency_ns / 1e6, 3), pid=c.pid, tid=c.tid, comm=c.comm, fd=c.fd,
                         path=path, path_source=src, file_class=c.file_class, ret=c.ret,
                         at=wall_iso(c.end_ns) if c.end_ns and out.all_calls else None)
             for c, path, src in slow_rows]
    calls.sort(key=lambda r: -r.latency_ms)
    files: dict[str, SlowFile] = {}
    for c, path, src in slow_rows:
        key = path if path != "unknown" else f"unknown (pid {c.pid} fd {c.fd})"
        f = files.get(key)
        if f is None:
            f = files[key] = SlowFile(path=key, path_source=src, file_class=c.file_class, slow_calls=0, total_ms=0.0,
                                      max_ms=0.0, ops={}, pids=[], comms=[])
        ms = c.latency_ns / 1e6
        f.slow_calls += 1
        f.total_ms = round(f.total_ms + ms, 3)
        f.max_ms = round(max(f.max_ms, ms), 3)
        f.ops[c.op] = f.ops.get(c.op, 0) + 1
        if c.pid not in f.pids:
            f.pids.append(c.pid)
        if c.comm not in f.comms:
            f.comms.append(c.comm)
    file_rows = sorted(files.values(), key=lambda f: (-f.total_ms, f.path))
    unknown = sum(1 for r in calls if r.path_source == "unknown")
    if unknown:
        warnings.append(f"{unknown} slow calls have no path: their fd was opened before the trace and "
                        "/proc/PID/fd is not readable for it (another user's process) or was closed")
    if not out.all_calls:
        warnings.append("fsslower sees only the calls at least min_latency_ms slow on ext4: the histograms hold "
                        "those, not every call, and files are named by their last path component")
    start_ns, end_ns = out.window_ns or (answered_ns - p.duration_s * 1_000_000_000, answered_ns)
    data = VfsLatencyData(
        method=method, backend=backend, skipped=skipped, target=target, pid=p.pid, duration_s=p.duration_s,
        min_latency_ms=p.min_latency_ms, include_all_files=p.include_all_files, trace_start=wall_iso(start_ns),
        trace_end=wall_iso(end_ns), trace_window_exact=out.window_ns is not None, all_calls=out.all_calls,
        operations=ops, slow_calls_total=len(calls), slow_calls=calls[: p.top_n], files=file_rows[: p.top_n],
        files_seen=len(file_rows), excluded_calls=excluded, findings=[], argv=argv, broker_job_id=job_id)
    data.findings = findings(data, p)
    return data, warnings


def findings(d: VfsLatencyData, p: Params) -> list[Finding]:
    out: list[Finding] = []
    window = float(d.duration_s)
    who = f"pid {p.pid}" if p.pid is not None else "all processes"
    if p.pid is not None and d.all_calls and sum(o.calls for o in d.operations) == 0:
        out.append(Finding(
            id="vfs.no_calls", severity="info", resource="process", title=f"pid {p.pid} made no file system call",
            detail=(f"In {d.duration_s} s pid {p.pid} made no read, write, fsync or open call"
                    f"{'' if p.include_all_files else ' on a file (include_all_files counts pipes and sockets too)'}."),
            confidence=0.9, evidence=[Evidence(tool=NAME, counter="calls", value=0, window_s=window)],
            suggestion=f"perf_offcpu_profile {json.dumps({'pid': p.pid, 'duration_s': 5})} shows where it waits.",
            next=next_call("perf_offcpu_profile", pid=p.pid, duration_s=5)))
    fsync = next((o for o in d.operations if o.op == "fsync"), None)
    if fsync is not None and fsync.calls and fsync.histogram.p99_us is not None:
        p99_ms = fsync.histogram.p99_us / 1000
        sev = "critical" if p99_ms > FSYNC_P99_MS[1] else "warning" if p99_ms > FSYNC_P99_MS[0] else None
        if sev:
            limit = FSYNC_P99_MS[1] if sev == "critical" else FSYNC_P99_MS[0]
            top = next((f for f in d.files if "fsync" in f.ops), None)
            out.append(Finding(
                id="vfs.slow_fsync", severity=sev, resource="disk",
                title=f"fsync p99 {p99_ms:.1f} ms for {who} (> {limit:g} ms)",
                detail=(f"{fsync.calls} fsync/fdatasync calls in {d.duration_s} s, p50 "
                        f"{_fmt_us(fsync.histogram.p50_us)}, p99 {p99_ms:.1f} ms: each waits for the device to "
                        "write the file's dirty pages and its journal and to flush its cache."
                        + (f" Slowest file: {top.path} ({top.ops['fsync']} slow fsyncs, up to {top.max_ms:.1f} ms)."
                           if top else "")),
                confidence=round(min(0.95, 0.6 + fsync.calls / 200), 2),
                metrics={"p99_ms": round(p99_ms, 3), "calls": float(fsync.calls)},
                evidence=[Evidence(tool=NAME, counter="fsync_latency_p99_us", value=round(fsync.histogram.p99_us, 1),
                                   threshold=limit * 1000, window_s=window,
                                   sample=top.path if top else None)],
                suggestion=(f"perf_bio_latency {json.dumps({'duration_s': 5, 'per_device': True})} shows whether the "
                            f"device is slow; perf_io_layers {json.dumps({'duration_s': 10, 'include_details': True})} "
                            "who else writes."),
                next=next_call("perf_bio_latency", duration_s=5, per_device=True)))
    if d.files:
        f = d.files[0]
        share = f.total_ms / 1000 / window
        if f.file_class == "fifo":
            out.append(Finding(
                id="vfs.fifo_wait", severity="info", resource="process",
                title=f"Reads of FIFO {f.path} wait {f.max_ms:.0f} ms for its writer",
                detail=(f"{f.slow_calls} calls on the FIFO {f.path} took >= {d.min_latency_ms} ms "
                        f"({f.total_ms:.0f} ms in all, by {', '.join(f.comms[:3])}): a FIFO read waits until the "
                        "writer writes, so this is the writer's pace, not storage."),
                confidence=0.8, metrics={"total_ms": f.total_ms, "calls": float(f.slow_calls)},
                evidence=[Evidence(tool=NAME, counter="slow_calls", value=f.slow_calls, window_s=window,
                                   sample=f.path)],
                suggestion=(f"perf_offcpu_profile {json.dumps({'pid': f.pids[0], 'duration_s': 5})} shows the "
                            "reader's wait; profile the writer to see why it writes slowly."),
                next=next_call("perf_offcpu_profile", pid=f.pids[0], duration_s=5)))
        elif share >= FILE_SLOW_SHARE and f.file_class in ("file", "blockdev", "dir"):
            out.append(Finding(
                id="vfs.slow_file", severity="warning", resource="disk",
                title=f"{f.path}: {f.slow_calls} slow calls, {f.total_ms:.0f} ms in {d.duration_s} s",
                detail=(f"Calls on {f.path} at least {d.min_latency_ms} ms slow add up to {share:.0%} of the "
                        f"window ({', '.join(f'{k} {v}' for k, v in f.ops.items())}; up to {f.max_ms:.1f} ms; "
                        f"by {', '.join(f.comms[:3])}). Reads that miss the page cache and writes that wait for "
                        "write-back or fsync wait for the device."),
                confidence=0.75, metrics={"total_ms": f.total_ms, "share": round(share, 3)},
                evidence=[Evidence(tool=NAME, counter="slow_ms", value=f.total_ms, threshold=FILE_SLOW_SHARE,
                                   window_s=window, sample=f.path)],
                suggestion=(f"perf_io_layers {json.dumps({'duration_s': 10, 'include_details': True})} shows how "
                            f"much reaches the disk (page-cache hits); perf_bio_latency "
                            f"{json.dumps({'duration_s': 5})} how fast the device answers."),
                next=next_call("perf_io_layers", duration_s=10, include_details=True)))
    return sort_findings(out)


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    target = "all processes"
    if p.pid is not None:
        comm = process_name(p.pid)
        if comm is None:
            raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}")
        target = f"pid {p.pid} ({comm})" if comm else f"pid {p.pid}"
    elif p.min_latency_ms == 0:
        raise ToolError(ErrorCode.INVALID_PARAMS, "min_latency_ms=0 lists every call of every process",
                        suggestion="give a pid with min_latency_ms=0, or a threshold of 1 ms or more")

    async def attempt(rung: Rung[Params]) -> tuple[VfsOutput, JobResult]:
        assert rung.backend is not None
        request = VfsLatency(backend=rung.backend, duration_s=p.duration_s, pid=p.pid, min_latency_ms=p.min_latency_ms)
        expected = p.duration_s + (BPFTRACE_START_EST_S if rung.backend is Backend.BPFTRACE else 1.0)
        job = await run_job(ctx, request, expected_s=expected, label=rung.method.split(" (")[0])
        return parse_step(rung, job), job

    result = await climb(ctx, RUNGS, p, attempt)
    answered_ns = time.monotonic_ns()
    out: VfsOutput = result.value
    job = result.job
    step = job.steps[0] if job and job.steps else None
    data, more = build_data(out, p, method=result.method, backend=result.backend, skipped=result.skipped,
                            target=target, argv=list(step.argv) if step else [],
                            job_id=job.job_id if job else None, answered_ns=answered_ns)
    warnings = [*result.warnings(), *out.warnings, *more]
    truncated = bool(step and step.stdout_truncated) or data.slow_calls_total > len(data.slow_calls) \
        or data.files_seen > len(data.files)
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=truncated)


def summarise(d: VfsLatencyData) -> str:
    parts = [f"{o.op} {o.calls} (p99 {_fmt_us(o.histogram.p99_us)})" for o in d.operations if o.calls]
    head = (f"File system calls of {d.target} in {d.duration_s} s: " + (", ".join(parts) or "none")
            + f"; {d.slow_calls_total} calls >= {d.min_latency_ms} ms")
    lines = [head]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.files:
        lines.append("Slowest files: " + ", ".join(f"{f.path} {f.total_ms:.0f} ms/{f.slow_calls}" for f in d.files[:5]))
    lines.append(f"Method: {d.method}" + (f" ({len(d.skipped)} rung skipped: {d.skipped[0].reason})"
                                          if d.skipped else ""))
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="File system call latency (VFS)",
    description=(
        "Slow file system calls (read, write, fsync, open) traced for duration_s through the perf-mcp broker: a "
        "latency histogram per operation (us, p50/p90/p99, exact mean), the calls at least min_latency_ms slow "
        "with pid, comm, fd and the file's path, and the files with the most slow time. One process (pid) or all. "
        "Pipes, sockets and terminals are left out unless include_all_files. Backend: fsslower (libbpf-tools, "
        "needs kprobes or fentry), else the broker's bpftrace script on the syscall tracepoints; data.method says "
        "which ran. Needs the broker's 'trace' grant."
    ),
    params=Params,
    data=VfsLatencyData,
    handler=run,
)
