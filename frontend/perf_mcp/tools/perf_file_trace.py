"""perf_file_trace: which files processes open (and fail to), which reads, writes and
syncs are slow and on which file, which files live only briefly.

Modes (default "opens": the cheapest trace, only open calls are probed, and the
usual first question - what does it open, what fails):
  opens           each open with path, pid/comm, flags, fd or errno; counts per path and
                  per process; failures by errno.
  slow_ops        read/write/pread64/pwrite64/readv/writev/fsync/fdatasync calls slower
                  than min_latency_ms, with the file's path, process and latency.
  file_lifecycle  files created (open with O_CREAT, creat) and deleted (unlink) during the
                  window, with their age at deletion.
  all             the three side by side in one broker job.

Ladders (data.method says which rung ran, data.skipped why the others did not):
  opens:          opensnoop (libbpf-tools) > bpftrace opens.bt
  slow_ops:       fsslower -t ext4 (libbpf-tools; kprobes or fentry) > bpftrace fileslow.bt
  file_lifecycle: filelife (libbpf-tools; kprobes) > bpftrace filelife.bt
  all:            opensnoop + fsslower + filelife > the three bpftrace scripts
Only integers reach the broker (duration, pid, min latency). name_pattern (glob
or substring on the path or the process name) is applied here, after parsing.

Paths are as given to the calls (relative paths stay relative). fileslow.bt
knows the path of an fd opened during the trace; for an fd opened before it,
the path is read here after the trace from /proc/PID/fd/FD (readlink), or from
the broker's fd_table job when /proc/PID/fd belongs to another user; a process
that exited or closed the fd meanwhile leaves the path unknown, and so says.

Cancellation: the broker job is stopped with the call (run_job closes the socket).
"""

from __future__ import annotations

import datetime as _dt
import errno as errno_mod
import fnmatch
import os
import re
import stat
import zoneinfo
from collections import Counter, defaultdict
from typing import Annotated, Literal

import msgspec
import trio
from msgspec import Meta

from perf_mcp_protocol import Backend, FileMode, FileTrace, StepResult, limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..fds.collect import NotPermitted, ProcessGone, read_local, read_via_broker
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace import file_parse
from ..trace.file_parse import FileLife, LifeRecords, OpenEvent, OpenRecords, SlowOp, SlowRecords
from ..trace.ladder import Rung, RungFailed, Skipped, climb, find_step, run_job, step_failure

NAME = "perf_file_trace"
TOP_N = 10
# Findings thresholds (per second of the window, or counts).
FAILED_OPENS_INFO = 10  # failed opens of one path
FAILED_OPENS_WARNING_PER_S = 5.0
REOPEN_INFO_PER_S = 20.0  # one process opening the same path again and again
REOPEN_WARNING_PER_S = 100.0
SHORT_LIFE_MS = 1000.0  # a file deleted within this of its creation is short-lived
CHURN_INFO_PER_S = 5.0
CHURN_WARNING_PER_S = 100.0
MAX_BROKER_FD_LOOKUPS = 8  # other users' processes whose fd table is asked of the broker

Mode = Literal["opens", "slow_ops", "file_lifecycle", "all"]
_KPROBE_NEEDS = ("btf", "kprobe_events")
_TP_NEEDS = ("tracepoints",)

OPENS_RUNGS: list[Rung[object]] = [
    Rung(Backend.LIBBPF, "opensnoop (libbpf-tools)", programs=("opensnoop",), needs=("btf", "tracepoints")),
    Rung(Backend.BPFTRACE, "bpftrace opens.bt (open/openat/openat2/creat tracepoints)", programs=("bpftrace",),
         needs=_TP_NEEDS),
]
SLOW_RUNGS: list[Rung[object]] = [
    Rung(Backend.LIBBPF, "fsslower -t ext4 (libbpf-tools; kprobes)", programs=("fsslower",), needs=_KPROBE_NEEDS),
    Rung(Backend.BPFTRACE, "bpftrace fileslow.bt (read/write/fsync syscall tracepoints)", programs=("bpftrace",),
         needs=_TP_NEEDS),
]
LIFE_RUNGS: list[Rung[object]] = [
    Rung(Backend.LIBBPF, "filelife (libbpf-tools; kprobes)", programs=("filelife",), needs=_KPROBE_NEEDS),
    Rung(Backend.BPFTRACE, "bpftrace filelife.bt (O_CREAT open / unlink tracepoints)", programs=("bpftrace",),
         needs=_TP_NEEDS),
]
ALL_RUNGS: list[Rung[object]] = [
    Rung(Backend.LIBBPF, "opensnoop + fsslower + filelife (libbpf-tools; kprobes)",
         programs=("opensnoop", "fsslower", "filelife"), needs=_KPROBE_NEEDS),
    Rung(Backend.BPFTRACE, "bpftrace opens.bt + fileslow.bt + filelife.bt (syscall tracepoints)",
         programs=("bpftrace",), needs=_TP_NEEDS),
]
LADDERS: dict[str, list[Rung[object]]] = {"opens": OPENS_RUNGS, "slow_ops": SLOW_RUNGS,
                                          "file_lifecycle": LIFE_RUNGS, "all": ALL_RUNGS}
RUNGS = OPENS_RUNGS + SLOW_RUNGS + LIFE_RUNGS + ALL_RUNGS
LADDER = RUNGS


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_SHORT_DURATION_S[0], le=limits.TRACE_SHORT_DURATION_S[1],
                                    description="How long to trace, in seconds.")] = 10
    mode: Annotated[Mode, Meta(description=(
        "opens (default): each open with path, process, flags, result; counts per path/process; failures by "
        "errno. slow_ops: reads, writes, fsyncs slower than min_latency_ms with the file's path. "
        "file_lifecycle: files created and deleted in the window with their age. all: the three at once."))] = "opens"
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "Trace only this process (all its threads)."))] | None = None
    min_latency_ms: Annotated[int, Meta(ge=limits.MIN_LATENCY_MS[0], le=limits.MIN_LATENCY_MS[1], description=(
        "slow_ops: list calls at least this slow, in ms (0 lists every call: use it with pid)."))] = 10
    name_pattern: Annotated[str, Meta(min_length=1, max_length=256, description=(
        "Keep only events whose path or process name (comm) matches: a glob when it holds * ? or [ "
        "(e.g. '/var/log/*'), otherwise a substring. Case-sensitive; applied in perf-mcp after the trace."))] \
        | None = None
    max_events_listed: Annotated[int, Meta(ge=1, le=1000, description=(
        "List at most this many events per mode (the first ones); counts and findings cover all."))] = 100


class OpenItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    pid: int
    comm: str
    path: str
    flags: str  # O_RDONLY|O_CLOEXEC...
    fd: int | None = None
    error: str | None = None  # errno name of a failed open
    t_s: float | None = None  # seconds since the trace started (bpftrace)
    time: Annotated[str | None, Meta(description="UTC, ISO 8601, to the second (opensnoop)")] = None


class PathCount(msgspec.Struct, kw_only=True):
    path: str
    opens: int
    failed: int
    processes: int
    top_pid: int  # the process that opened it most
    top_comm: str


class ProcessCount(msgspec.Struct, kw_only=True):
    pid: int
    comm: str
    opens: int
    failed: int


class ErrorCount(msgspec.Struct, kw_only=True):
    error: str
    count: int
    top_path: str
    top_path_count: int
    example_pid: int
    example_comm: str


class Opens(msgspec.Struct, kw_only=True):
    total: int
    failed: int
    opens_per_s: float
    path_max_bytes: int
    by_path: list[PathCount]
    by_process: list[ProcessCount]
    failures: list[ErrorCount]
    events: list[OpenItem]
    events_omitted: int


class SlowItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    pid: int
    comm: str
    op: str
    latency_ms: float
    path: str | None = None
    path_source: Literal["trace", "proc_after", "unknown"]  # where the path comes from
    file_kind: str | None = None  # regular, fifo, pipe, socket, char_device, block_device, directory
    fd: int | None = None
    ret: int | None = None  # bytes, or -errno
    t_s: float | None = None


class OpCount(msgspec.Struct, kw_only=True, omit_defaults=True):
    op: str
    slow: int
    calls: int | None = None  # calls timed (bpftrace only)
    max_ms: float | None = None
    total_ms: float | None = None


class FileSlow(msgspec.Struct, kw_only=True):
    path: str
    file_kind: str | None
    slow: int
    ops: dict[str, int]
    total_ms: float
    max_ms: float
    processes: int


class SlowOps(msgspec.Struct, kw_only=True):
    min_latency_ms: int
    slow_total: int
    calls_timed: int | None
    by_op: list[OpCount]
    by_file: list[FileSlow]
    paths_unknown: int
    paths_unknown_reasons: list[str]
    basename_only: bool
    events: list[SlowItem]
    events_omitted: int


class LifeItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    path: str
    age_ms: float
    pid: int
    comm: str
    created_by_pid: int | None = None
    created_by_comm: str | None = None
    new_file: bool | None = None  # created with O_EXCL: certainly new (else maybe an older file re-created)
    t_s: float | None = None


class Lifecycle(msgspec.Struct, kw_only=True):
    created: int | None  # successful opens with O_CREAT (bpftrace), None with filelife
    deleted: int | None  # successful unlinks (bpftrace)
    created_and_deleted: int
    short_lived: int  # deleted within short_life_ms of creation
    short_life_ms: float
    age_resolution_ms: float
    basename_only: bool
    p50_age_ms: float | None
    max_age_ms: float | None
    by_process: list[ProcessCount]  # created_and_deleted per deleting process (opens = that count, failed = 0)
    events: list[LifeItem]
    events_omitted: int


class FileTraceData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    mode: str
    duration_s: int
    filters: dict[str, str | int]
    opens: Opens | None
    slow_ops: SlowOps | None
    file_lifecycle: Lifecycle | None
    lost_events: int
    findings: list[Finding]


# ---------------------------------------------------------------- helpers

_ACC = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}
_FLAG_NAMES = [(0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"),
               (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o10000, "O_DSYNC"), (0o40000, "O_DIRECT"),
               (0o200000, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"), (0o1000000, "O_NOATIME"),
               (0o2000000, "O_CLOEXEC"), (0o4000000, "O_SYNC"), (0o10000000, "O_PATH"), (0o20000000, "O_TMPFILE")]


def flag_names(flags: int) -> str:
    """open(2) flags (x86-64/generic values) as O_ names; unknown bits in octal."""
    names = [_ACC.get(flags & 3, "O_ACCMODE3")]
    rest = flags & ~3
    for combo, name in ((0o4010000, "O_SYNC"), (0o20200000, "O_TMPFILE")):  # these include another flag's bit
        if rest & combo == combo:
            names.append(name)
            rest &= ~combo
    for bit, name in _FLAG_NAMES:
        if name not in ("O_SYNC", "O_TMPFILE") and rest & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(oct(rest))
    return "|".join(names)


def errname(n: int) -> str:
    return errno_mod.errorcode.get(n, f"errno {n}")


def matcher(pattern: str | None):  # type: ignore[no-untyped-def]
    if pattern is None:
        return lambda path, comm: True
    if any(c in pattern for c in "*?["):
        return lambda path, comm: fnmatch.fnmatchcase(path or "", pattern) or fnmatch.fnmatchcase(comm, pattern)
    return lambda path, comm: pattern in (path or "") or pattern in comm


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def file_kind(path: str | None) -> str | None:
    """What the path names now (stat, as this user); None when unknown."""
    if not path:
        return None
    for prefix, kind in (("pipe:", "pipe"), ("socket:", "socket"), ("anon_inode:", "anon_inode")):
        if path.startswith(prefix):
            return kind
    if not path.startswith("/"):
        return None
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, kind in ((stat.S_ISREG, "regular"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char_device"),
                       (stat.S_ISBLK, "block_device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return None


# ---------------------------------------------------------------- collection

class _Parsed(msgspec.Struct, kw_only=True):
    opens: OpenRecords | None = None
    slow: SlowRecords | None = None
    life: LifeRecords | None = None
    warnings: list[str] = []
    truncated: bool = False


def _parts(mode: str) -> list[str]:
    return ["opens", "slow_ops", "file_lifecycle"] if mode == "all" else [mode]


_LOST_LINE = re.compile(rb"\s*[Ll]ost \d+ events on CPU #\d+!?\s*")


def _duration_exit(step: StepResult) -> bool:
    """opensnoop and fsslower with -d end through `goto cleanup` right after a poll and
    return `err != 0`, err being the number of events that poll handled: exit 1 after a
    normal end on a busy system. Said apart from a failure by an output that begins with
    the header and a stderr holding nothing but lost-event notices."""
    if step.exit_status != 1 or step.timed_out or step.signal is not None:
        return False
    if not (step.stdout.startswith(b"TIME ") or step.stdout.startswith(b"ENDTIME_ns,")):
        return False
    return all(not line.strip() or _LOST_LINE.fullmatch(line) for line in step.stderr.splitlines())


async def _trace(ctx: ToolContext, p: Params, rung: Rung[object]) -> _Parsed:
    assert rung.backend is not None
    req = FileTrace(backend=rung.backend, mode=FileMode(p.mode), duration_s=p.duration_s, pid=p.pid,
                    min_latency_ms=p.min_latency_ms)
    job = await run_job(ctx, req, expected_s=float(p.duration_s), label=rung.method.split(" (")[0])
    out = _Parsed()
    libbpf = rung.backend is Backend.LIBBPF
    for part in _parts(p.mode):
        step = find_step(job, part)
        reason = step_failure(step, stopped_by_us=libbpf and part == "file_lifecycle")
        if reason is not None and libbpf and step is not None and _duration_exit(step):
            reason = None
        if reason is not None or step is None:
            raise RungFailed(reason or f"no {part} step")
        out.truncated |= step.stdout_truncated
        if part == "opens":
            out.opens = (file_parse.parse_opensnoop if libbpf else file_parse.parse_opens_bpftrace)(
                step.stdout, step.stderr)
            rec: OpenRecords | SlowRecords | LifeRecords = out.opens
            empty = not out.opens.opens
        elif part == "slow_ops":
            out.slow = (file_parse.parse_fsslower_csv if libbpf else file_parse.parse_fileslow_bpftrace)(
                step.stdout, step.stderr)
            rec, empty = out.slow, not out.slow.ops and not out.slow.calls
        else:
            out.life = (file_parse.parse_filelife if libbpf else file_parse.parse_filelife_bpftrace)(
                step.stdout, step.stderr)
            rec, empty = out.life, not out.life.lives and not out.life.creates and not out.life.unlinks
        if rec.bad_lines and empty:
            raise ToolError(ErrorCode.PARSE_ERROR, f"none of the {rec.bad_lines} lines of {part} ({rung.method}) "
                                                   "could be read")
        out.warnings += rec.warnings
    if out.truncated:
        out.warnings.append("the broker's output cap cut the trace: counts are lower bounds")
    return out


async def _resolve_paths(ctx: ToolContext, ops: list[SlowOp]) -> tuple[dict[tuple[int, int], str], list[str]]:
    """Paths of the fds the trace could not name (opened before it), read after it."""
    wanted: dict[int, set[int]] = defaultdict(set)
    for op in ops:
        if op.path is None and op.fd is not None:
            wanted[op.pid].add(op.fd)
    found: dict[tuple[int, int], str] = {}
    reasons: Counter[str] = Counter()
    broker_used = 0
    for pid, fds in sorted(wanted.items()):
        try:
            table = await trio.to_thread.run_sync(read_local, pid)
        except ProcessGone:
            reasons["the process exited before its fds could be read"] += len(fds)
            continue
        except NotPermitted:
            if broker_used >= MAX_BROKER_FD_LOOKUPS:
                reasons["another user's process (/proc/PID/fd: EACCES), beyond the broker look-ups made"] += len(fds)
                continue
            broker_used += 1
            try:
                table, _job, _cut = await read_via_broker(ctx.broker, pid)
            except ToolError as exc:
                reasons[f"another user's process (/proc/PID/fd: EACCES) and the broker's fd_table: "
                        f"{exc.code.value}"] += len(fds)
                continue
        except OSError as exc:
            reasons[f"/proc/PID/fd: {exc.strerror or exc}"] += len(fds)
            continue
        for fd in fds:
            if fd in table.fds:
                found[(pid, fd)] = table.fds[fd]
            else:
                reasons["the fd was closed before it could be read"] += 1
    return found, [f"{n} call(s): {why}" for why, n in reasons.most_common()]


# ---------------------------------------------------------------- analysis


def tracer_zone() -> _dt.tzinfo:
    """The zone of opensnoop's HH:MM:SS: the broker runs its tracers without TZ, so
    /etc/localtime (UTC where there is none)."""
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f)
    except (OSError, ValueError):
        return _dt.timezone.utc


def clock_iso(clock: str | None, ended: _dt.datetime | None) -> str | None:
    """opensnoop's HH:MM:SS wall clock as ISO 8601 UTC: on the day the trace ended
    (`ended`, aware, in the tracer's zone), or the day before when that would be after
    the end (the trace crossed midnight). None when either is missing or unreadable."""
    if clock is None or ended is None:
        return None
    try:
        t = _dt.time.fromisoformat(clock)
    except ValueError:
        return None
    at = _dt.datetime.combine(ended.date(), t, tzinfo=ended.tzinfo)
    if at > ended + _dt.timedelta(minutes=1):
        at -= _dt.timedelta(days=1)
    return at.astimezone(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def analyse_opens(p: Params, rec: OpenRecords, ended: _dt.datetime | None = None) -> Opens:
    """`ended`: when the trace ended, in the tracer's zone (for opensnoop's clock)."""
    match = matcher(p.name_pattern)
    events = [e for e in rec.opens if (p.pid is None or e.pid == p.pid) and match(e.path, e.comm)]
    events.sort(key=lambda e: (e.t_s if e.t_s is not None else 0.0))
    by_path: dict[str, list[OpenEvent]] = defaultdict(list)
    by_proc: dict[int, list[OpenEvent]] = defaultdict(list)
    for e in events:
        by_path[e.path].append(e)
        by_proc[e.pid].append(e)
    paths = []
    for k, v in by_path.items():
        top_pid = Counter(e.pid for e in v).most_common(1)[0][0]
        paths.append(PathCount(path=k, opens=len(v), failed=sum(e.fd < 0 for e in v),
                               processes=len({e.pid for e in v}), top_pid=top_pid,
                               top_comm=next(e.comm for e in v if e.pid == top_pid)))
    paths.sort(key=lambda c: (-c.opens, c.path))
    procs = [ProcessCount(pid=k, comm=v[-1].comm, opens=len(v), failed=sum(e.fd < 0 for e in v))
             for k, v in by_proc.items()]
    procs.sort(key=lambda c: (-c.opens, c.pid))
    fails: dict[int, list[OpenEvent]] = defaultdict(list)
    for e in events:
        if e.fd < 0:
            fails[e.errno].append(e)
    failures = []
    for err, v in fails.items():
        top, n = Counter(e.path for e in v).most_common(1)[0]
        ex = next(e for e in v if e.path == top)
        failures.append(ErrorCount(error=errname(err), count=len(v), top_path=top, top_path_count=n,
                                   example_pid=ex.pid, example_comm=ex.comm))
    failures.sort(key=lambda f: (-f.count, f.error))
    items = [OpenItem(pid=e.pid, comm=e.comm, path=e.path, flags=flag_names(e.flags),
                      fd=e.fd if e.fd >= 0 else None, error=errname(e.errno) if e.fd < 0 else None,
                      t_s=e.t_s, time=clock_iso(e.clock, ended)) for e in events[:p.max_events_listed]]
    return Opens(total=len(events), failed=sum(len(v) for v in fails.values()),
                 opens_per_s=round(len(events) / p.duration_s, 3), path_max_bytes=rec.path_max_bytes,
                 by_path=paths[:TOP_N], by_process=procs[:TOP_N], failures=failures, events=items,
                 events_omitted=max(0, len(events) - p.max_events_listed))


def analyse_slow(p: Params, rec: SlowRecords, resolved: dict[tuple[int, int], str],
                 unknown_reasons: list[str]) -> SlowOps:
    match = matcher(p.name_pattern)
    kinds: dict[str, str | None] = {}
    items: list[SlowItem] = []
    for op in rec.ops:
        if p.pid is not None and op.pid != p.pid:
            continue
        path, source = op.path, "trace"
        if path is None:
            path = resolved.get((op.pid, op.fd)) if op.fd is not None else None
            source = "proc_after" if path is not None else "unknown"
        if not match(path, op.comm):
            continue
        if path is not None and path not in kinds:
            kinds[path] = file_kind(path)
        items.append(SlowItem(pid=op.pid, comm=op.comm, op=op.op, latency_ms=op.latency_ms, path=path,
                              path_source=source, file_kind=kinds.get(path) if path else None,  # type: ignore[arg-type]
                              fd=op.fd, ret=op.ret, t_s=op.t_s))
    items.sort(key=lambda i: (i.t_s if i.t_s is not None else 0.0))
    by_op: dict[str, list[SlowItem]] = defaultdict(list)
    by_file: dict[str, list[SlowItem]] = defaultdict(list)
    for i in items:
        by_op[i.op].append(i)
        by_file[i.path or "(unknown)"].append(i)
    filtered = p.name_pattern is not None or p.pid is not None
    ops = []
    for name in sorted(set(by_op) | (set() if filtered else set(rec.calls)),
                       key=lambda n: file_parse.OPS.index(n) if n in file_parse.OPS else 99):
        v = by_op.get(name, [])
        ops.append(OpCount(op=name, slow=len(v), calls=None if filtered else rec.calls.get(name),
                           max_ms=max((i.latency_ms for i in v), default=None),
                           total_ms=round(sum(i.latency_ms for i in v), 3) if v else None))
    files = [FileSlow(path=k, file_kind=kinds.get(k), slow=len(v), ops=dict(Counter(i.op for i in v)),
                      total_ms=round(sum(i.latency_ms for i in v), 3), max_ms=max(i.latency_ms for i in v),
                      processes=len({i.pid for i in v})) for k, v in by_file.items()]
    files.sort(key=lambda f: (-f.total_ms, f.path))
    unknown = sum(i.path is None for i in items)
    return SlowOps(min_latency_ms=p.min_latency_ms, slow_total=len(items),
                   calls_timed=None if filtered or not rec.calls else sum(rec.calls.values()),
                   by_op=ops, by_file=files[:TOP_N], paths_unknown=unknown,
                   paths_unknown_reasons=unknown_reasons if unknown else [], basename_only=rec.basename_only,
                   events=items[:p.max_events_listed], events_omitted=max(0, len(items) - p.max_events_listed))


def analyse_life(p: Params, rec: LifeRecords) -> Lifecycle:
    match = matcher(p.name_pattern)
    lives: list[FileLife] = [x for x in rec.lives if (p.pid is None or x.pid == p.pid) and match(x.path, x.comm)]
    lives.sort(key=lambda x: (x.t_s if x.t_s is not None else 0.0))
    bpf = not rec.basename_only
    created = len([c for c in rec.creates if match(c.path, c.comm)]) if bpf else None
    deleted = len([u for u in rec.unlinks if match(u.path, u.comm)]) if bpf else None
    per: dict[int, list[FileLife]] = defaultdict(list)
    for x in lives:
        per[x.pid].append(x)
    procs = sorted((ProcessCount(pid=k, comm=v[-1].comm, opens=len(v), failed=0) for k, v in per.items()),
                   key=lambda c: (-c.opens, c.pid))
    ages = [x.age_ms for x in lives]
    items = [LifeItem(path=x.path, age_ms=x.age_ms, pid=x.pid, comm=x.comm, created_by_pid=x.created_by_pid,
                      created_by_comm=x.created_by_comm, new_file=x.exclusive or None, t_s=x.t_s)
             for x in lives[:p.max_events_listed]]
    return Lifecycle(created=created, deleted=deleted, created_and_deleted=len(lives),
                     short_lived=sum(a < SHORT_LIFE_MS for a in ages), short_life_ms=SHORT_LIFE_MS,
                     age_resolution_ms=rec.age_resolution_ms, basename_only=rec.basename_only,
                     p50_age_ms=_percentile(ages, 0.5), max_age_ms=max(ages) if ages else None,
                     by_process=procs[:TOP_N], events=items, events_omitted=max(0, len(lives) - p.max_events_listed))


def _args(p: Params, **extra: object) -> str:
    base: dict[str, object] = {"duration_s": 10, **{k: v for k, v in extra.items() if v is not None}}
    return msgspec.json.encode(base).decode()


def findings(p: Params, d: FileTraceData) -> list[Finding]:
    out: list[Finding] = []
    dur = float(d.duration_s)
    if d.opens is not None:
        o = d.opens
        if o.failed:
            # the path that fails most, whatever its errno
            fails_by_path = [c for c in o.by_path if c.failed]
            top = max(fails_by_path, key=lambda c: c.failed) if fails_by_path else None
            err = o.failures[0]
            if top is not None and top.failed >= FAILED_OPENS_INFO:
                rate = top.failed / dur
                sev = "warning" if rate >= FAILED_OPENS_WARNING_PER_S else "info"
                errs = ", ".join(f"{f.error} x{f.count}" for f in o.failures[:4])
                out.append(Finding(
                    id="file.failed_opens", severity=sev, resource="disk",
                    title=f"{top.failed} failed opens of {top.path} ({rate:.1f}/s)",
                    detail=(f"{o.failed} of {o.total} opens failed ({errs}); {top.path} failed {top.failed} times "
                            f"from {top.processes} process(es), e.g. pid {err.example_pid} ({err.example_comm}). "
                            "Repeated ENOENT is usually a search path probed on every call (config, plugin, "
                            "library or module lookup); EACCES a permission problem; EMFILE an fd limit."),
                    confidence=0.9 if d.lost_events == 0 else 0.7,
                    metrics={"failed": float(o.failed), "path_failed": float(top.failed),
                             "path_failed_per_s": round(rate, 3)},
                    evidence=[Evidence(tool=NAME, counter="failed_opens", value=float(top.failed),
                                       threshold=FAILED_OPENS_WARNING_PER_S * dur if sev == "warning"
                                       else float(FAILED_OPENS_INFO), window_s=dur,
                                       sample=f"pid {err.example_pid} {err.example_comm}: open {err.top_path} -> "
                                              f"{err.error}")],
                    suggestion=(f"Check why pid {err.example_pid} ({err.example_comm}) keeps trying {top.path}: "
                                f"create it, fix the search path, or cache the miss. perf_file_trace with "
                                f"{_args(p, mode='opens', pid=err.example_pid, name_pattern=top.path[:200])} "
                                "shows every attempt with its flags; perf_syscall_count with "
                                f'{{"pid": {err.example_pid}, "include_errors": true}} shows what else fails.'),
                    next=next_call("perf_file_trace", duration_s=10, mode="opens", pid=err.example_pid,
                                   name_pattern=top.path[:200])))
        reopen = [c for c in o.by_path if c.processes == 1 and c.opens - c.failed >= REOPEN_INFO_PER_S * dur]
        if reopen:
            top2 = reopen[0]
            rate = top2.opens / dur
            sev = "warning" if rate >= REOPEN_WARNING_PER_S else "info"
            out.append(Finding(
                id="file.repeated_opens", severity=sev, resource="disk",
                title=f"{top2.path} opened {top2.opens} times by one process ({rate:.0f}/s)",
                detail=(f"One process opened {top2.path} {top2.opens} times in {d.duration_s} s. Each open is a "
                        "path lookup and a descriptor allocation; a file read again and again can be kept open "
                        "or its contents cached."),
                confidence=0.8, metrics={"opens": float(top2.opens), "opens_per_s": round(rate, 3)},
                evidence=[Evidence(tool=NAME, counter="opens_of_one_path", value=float(top2.opens),
                                   threshold=(REOPEN_WARNING_PER_S if sev == "warning" else REOPEN_INFO_PER_S) * dur,
                                   window_s=dur, sample=top2.path)],
                suggestion=(f"Keep {top2.path} open in pid {top2.top_pid} ({top2.top_comm}) or cache what is read "
                            f'from it; perf_cpu_profile with {{"duration_s": 10, "pid": {top2.top_pid}}} shows what '
                            "the opens cost the process."),
                next=next_call("perf_cpu_profile", duration_s=10, pid=top2.top_pid)))
    if d.slow_ops is not None:
        s = d.slow_ops
        syncs = [e for e in s.events if e.op in ("fsync", "fdatasync")]
        sync_files = [f for f in s.by_file if any(k in f.ops for k in ("fsync", "fdatasync"))]
        if sync_files:
            f = sync_files[0]
            n = sum(f.ops.get(k, 0) for k in ("fsync", "fdatasync"))
            out.append(Finding(
                id="file.slow_sync", severity="warning", resource="disk",
                title=f"{n} slow fsync/fdatasync on {f.path} (max {f.max_ms:.1f} ms)",
                detail=(f"Syncs over {s.min_latency_ms} ms wait for the device to make the data durable; "
                        f"{f.path} had {n} of them, {f.total_ms:.0f} ms in all. Slow syncs come from a busy or slow "
                        "disk, a large amount of dirty data flushed at each sync, or journal contention."),
                confidence=0.85, metrics={"slow_syncs": float(n), "max_ms": f.max_ms, "total_ms": f.total_ms},
                evidence=[Evidence(tool=NAME, counter="slow_fsyncs", value=float(n), threshold=float(s.min_latency_ms),
                                   window_s=dur, sample=(f"pid {syncs[0].pid} {syncs[0].comm} {syncs[0].op} "
                                                         f"{syncs[0].latency_ms} ms" if syncs else f.path))],
                suggestion=('Run perf_bio_latency with {"duration_s": 10} to see whether the device is slow, and '
                            "perf_io_layers to compare what is written with what reaches the disk; sync less often "
                            "(group commits) if the application allows."),
                next=next_call("perf_bio_latency", duration_s=10)))
        io_files = [f for f in s.by_file if any(k not in ("fsync", "fdatasync") for k in f.ops)]
        if io_files:
            f = io_files[0]
            waits = f.file_kind in ("fifo", "pipe", "socket", "char_device")
            sev = "info" if waits else "warning"
            sample = next((e for e in s.events if (e.path or "(unknown)") == f.path), None)
            out.append(Finding(
                id="file.slow_io", severity=sev, resource="disk" if not waits else "process",
                title=f"{f.slow} slow read/write calls on {f.path} (max {f.max_ms:.1f} ms)",
                detail=(f"{f.slow} calls over {s.min_latency_ms} ms on {f.path} ({f.file_kind or 'kind unknown'}), "
                        f"{f.total_ms:.0f} ms in all, from {f.processes} process(es). "
                        + ("A read of a FIFO, pipe, socket or terminal waits for its writer: the time is the peer's "
                           "pace, not I/O." if waits else
                           "On a regular file a slow read is a cache miss served by the disk, a slow write "
                           "throttling on dirty pages.")),
                confidence=0.8,
                metrics={"slow_calls": float(f.slow), "max_ms": f.max_ms, "total_ms": f.total_ms},
                evidence=[Evidence(tool=NAME, counter="slow_calls", value=float(f.slow),
                                   threshold=float(s.min_latency_ms), window_s=dur,
                                   sample=(f"pid {sample.pid} {sample.comm} {sample.op} fd {sample.fd} "
                                           f"{sample.latency_ms} ms" if sample else None))],
                suggestion=(f"Look at the process that writes to {f.path}: perf_offcpu_profile with "
                            + _args(p, pid=sample.pid if sample else None) + " shows where the reader waits."
                            if waits else
                            'Run perf_bio_latency with {"duration_s": 10} and perf_io_layers with '
                            '{"duration_s": 10} to see whether the disk or the page cache is the bottleneck.'),
                next=(next_call("perf_offcpu_profile", duration_s=10, pid=sample.pid if sample else None)
                      if waits else next_call("perf_bio_latency", duration_s=10))))
    if d.file_lifecycle is not None:
        lc = d.file_lifecycle
        rate = lc.short_lived / dur
        if rate >= CHURN_INFO_PER_S:
            sev = "warning" if rate >= CHURN_WARNING_PER_S else "info"
            top3 = lc.by_process[0] if lc.by_process else None
            out.append(Finding(
                id="file.temp_file_churn", severity=sev, resource="disk",
                title=f"{lc.short_lived} files created and deleted within {SHORT_LIFE_MS:g} ms ({rate:.1f}/s)",
                detail=(f"Median age at deletion {lc.p50_age_ms} ms"
                        + (f"; pid {top3.pid} ({top3.comm}) deleted {top3.opens} of them" if top3 else "")
                        + ". Each create and delete is a metadata update (journal, directory); a temporary file "
                          "per item is cheaper in memory (a buffer, memfd, or one reused file)."),
                confidence=0.7, metrics={"short_lived": float(lc.short_lived), "per_s": round(rate, 3)},
                evidence=[Evidence(tool=NAME, counter="short_lived_files_per_s", value=round(rate, 3),
                                   threshold=CHURN_WARNING_PER_S if sev == "warning" else CHURN_INFO_PER_S,
                                   window_s=dur, sample=lc.events[0].path if lc.events else None)],
                suggestion=(f"perf_file_trace with {_args(p, mode='file_lifecycle', pid=top3.pid)} lists them; "
                            "perf_exec_trace shows whether a process per item is behind it." if top3 else
                            "perf_exec_trace shows whether a process per item is behind it."),
                next=(next_call("perf_file_trace", duration_s=10, mode="file_lifecycle", pid=top3.pid) if top3
                      else next_call("perf_exec_trace", duration_s=10))))
    return sort_findings(out)


# ---------------------------------------------------------------- the tool


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if p.pid is not None and not os.path.exists(f"/proc/{p.pid}"):
        raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}",
                        suggestion="Pass the pid of a running process, or omit pid to trace every process.")

    async def attempt(rung: Rung[object]) -> tuple[_Parsed, None]:
        return await _trace(ctx, p, rung), None

    result = await climb(ctx, LADDERS[p.mode], p, attempt)
    ended = _dt.datetime.now(tracer_zone())
    parsed = result.value
    warnings = result.warnings() + parsed.warnings
    lost = sum(r.lost_events for r in (parsed.opens, parsed.slow, parsed.life) if r is not None)
    if lost:
        warnings.append(f"{lost} events were lost (the tracer's buffer overflowed): counts are lower bounds")
    slow = None
    if parsed.slow is not None:
        resolved, reasons = await _resolve_paths(ctx, parsed.slow.ops)
        slow = analyse_slow(p, parsed.slow, resolved, reasons)
        recorded = sum(parsed.slow.slow.values())
        if recorded > len(parsed.slow.ops):
            warnings.append(f"{recorded - len(parsed.slow.ops)} slow call(s) were counted by the tracer but their "
                            "records were not received (lost, or at the trace's end)")
        if slow.basename_only:
            warnings.append("fsslower names the file only, not its directory, and sees one file system type (ext4)")
    life = analyse_life(p, parsed.life) if parsed.life is not None else None
    if life is not None and not life.basename_only:
        warnings.append("a file counts as created at a successful open with O_CREAT (or creat): the call does not "
                        "say whether it existed before, unless O_EXCL (new_file); paths are paired as given to the "
                        "calls (a relative path and an absolute one do not match)")
    filters: dict[str, str | int] = {}
    for key, value in (("pid", p.pid), ("name_pattern", p.name_pattern)):
        if value is not None:
            filters[key] = value
    if p.mode in ("slow_ops", "all"):
        filters["min_latency_ms"] = p.min_latency_ms
    data = FileTraceData(
        method=result.method, backend=result.backend, skipped=result.skipped, mode=p.mode, duration_s=p.duration_s,
        filters=filters, opens=analyse_opens(p, parsed.opens, ended) if parsed.opens is not None else None,
        slow_ops=slow, file_lifecycle=life, lost_events=lost, findings=[])
    data.findings = findings(p, data)
    omitted = any(x is not None and x.events_omitted for x in (data.opens, data.slow_ops, data.file_lifecycle))
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings, truncated=parsed.truncated or omitted)


def summarise(d: FileTraceData) -> str:
    head = []
    if d.opens is not None:
        head.append(f"{d.opens.total} opens ({d.opens.opens_per_s:g}/s), {d.opens.failed} failed")
    if d.slow_ops is not None:
        head.append(f"{d.slow_ops.slow_total} calls over {d.slow_ops.min_latency_ms} ms")
    if d.file_lifecycle is not None:
        head.append(f"{d.file_lifecycle.created_and_deleted} files created and deleted")
    lines = [f"file trace {d.duration_s} s ({d.mode}): " + "; ".join(head)]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.opens is not None and d.opens.by_path:
        lines.append("Top paths: " + ", ".join(f"{c.path} {c.opens}" + (f" ({c.failed} failed)" if c.failed else "")
                                              for c in d.opens.by_path[:5]))
    if d.opens is not None and d.opens.failures:
        lines.append("Failed: " + ", ".join(f"{f.error} x{f.count}" for f in d.opens.failures))
    if d.slow_ops is not None and d.slow_ops.by_file:
        lines.append("Slow files: " + ", ".join(f"{f.path} {f.slow} (max {f.max_ms:g} ms)"
                                                for f in d.slow_ops.by_file[:5]))
    if d.file_lifecycle is not None and d.file_lifecycle.p50_age_ms is not None:
        lines.append(f"File ages: p50 {d.file_lifecycle.p50_age_ms} ms, max {d.file_lifecycle.max_age_ms} ms")
    lines.append(f"Method: {d.method}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="File activity trace",
    description=(
        "Trace file activity for duration_s. mode=opens (default): each open with path, pid, process name, flags "
        "and fd or errno; counts per path and per process; failed opens by errno. mode=slow_ops: reads, writes, "
        "fsyncs slower than min_latency_ms with the file's path, process and latency. mode=file_lifecycle: files "
        "created and deleted in the window with their age at deletion. mode=all: the three at once. Filters: pid "
        "(in the tracer), name_pattern (glob or substring on the path or process name, applied in perf-mcp). "
        "Findings: repeated failed opens, files re-opened in a loop, slow syncs and I/O, temporary-file churn. "
        "Uses opensnoop/fsslower/filelife (libbpf-tools) where the kernel allows, else bpftrace scripts on the "
        "syscall tracepoints, through the perf-mcp broker (needs the 'trace' grant)."
    ),
    params=Params,
    data=FileTraceData,
    handler=run,
)
