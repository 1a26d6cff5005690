"""Who is using it: per-process CPU %, RSS, disk read/write bytes/s and fd count.

Sources, by what an unprivileged user may read:
- /proc/PID/stat serves everyone: CPU time (utime + stime), RSS, start time, comm;
  the owner is the owner of /proc/PID; /proc/PID/cmdline and /proc/PID/cgroup are
  read for the rows shown only.
- /proc/PID/io and /proc/PID/fd of this user's own processes are read directly.
- Other users' io counters and fd counts come from the broker's ProcessIo read (job
  class INSPECT, polkit action org.perfmcp.inspect): one read of every process, raw
  text parsed here (parse_process_io). Without the grant those columns are left out
  for other users' processes and ``notes`` says so.

History, so that windows of 10-60 s answer at once: the ProcessTable service (started
with the server, next to the 1 Hz system sampler) reads /proc/PID/stat of every process
every PROCESS_INTERVAL_S (5 s; os.open/os.read, parsed down to four numbers per
process, in a worker thread) into a ring of the last ~65 s, plus this user's own io
and fd counts (a process's owner is looked up when it is first seen and again after
an exec). attribute() takes one fresh reading at call time (on its own thread: ~1.5 ms
of CPU for 130 processes) and compares it with the youngest kept reading at least
window_s older (else the oldest): a 10 s window is 10-15 s once the server is 15 s old.

Other users' I/O, without making a tool wait on the broker: the same service also
does a broker ProcessIo read every BROKER_EVERY ticks (10 s) while the broker grants
INSPECT, keeping the raw text (parsed only when a call needs it). Whether it is granted
is learnt from the first read at start; after PERMISSION_DENIED (or no broker) it is
asked again only every REPROBE_S (60 s), and at a call when the cache is older than
that. A call's rates of other users' I/O are then between the newest cached read and
the youngest cached read at least window_s older, so they end up to 10 s before the call;
only while fewer than two reads are cached (the first 10 s after start) does
attribute() make one broker read itself. Each row's rates use its own readings' times.

Cost (bench/bench_sampler.py, 1,160 processes, 2 loaded CPUs): the 1 Hz sampler alone
0.07-0.09% of a core, with the process table 0.34-0.36% (goal < 0.5%); the broker's
ProcessIo read of 1,160 processes costs the broker ~0.2% of a core at one read per 10 s
(~120 KB of text per read), and polkitd one authorisation per read. Memory: 15 readings
of 4 numbers per process, and up to 15 raw broker reads.

perf-mcp's own processes (comm perf-mcp or perf-mcp-broker, and this process) are
left out of the rankings. Processes with the same name are separate rows (keyed by
pid and start time).
"""

from __future__ import annotations

import logging
import os
import pwd
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import trio

from .cgroup import parse_proc_cgroup
from .errors import ParseError
from .process import PidIo, parse_pid_io

if TYPE_CHECKING:
    from ..broker_client import BrokerClient
    from ..registry import Services, ToolContext

log = logging.getLogger(__name__)

PROCESS_INTERVAL_S = 5.0
BROKER_EVERY = 2  # table ticks per broker ProcessIo read (10 s)
HISTORY_S = 65.0
REPROBE_S = 60.0
BROKER_TIMEOUT_S = 10.0
COMMAND_CAP = 120
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
OWN_COMMS = frozenset({b"perf-mcp", b"perf-mcp-broker"})
INSPECT_NOTE = ("other users' disk I/O and fd counts need the org.perfmcp.inspect grant (polkit action "
                "org.perfmcp.inspect, e.g. membership of the perf-mcp group); only this user's processes have them")


class ProcessRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    pid: int
    user: str
    command: str  # cmdline, capped ("[comm]" for kernel threads)
    cgroup: str | None = None
    cpu_pct: float | None = None  # % of one CPU over the window
    rss_mb: float | None = None
    read_bps: float | None = None  # bytes/s that reached the block layer (/proc/PID/io read_bytes)
    write_bps: float | None = None  # write_bytes: page cache dirtied or written directly
    fds: int | None = None


class Attribution(msgspec.Struct, kw_only=True):
    window_s: float
    cpu: list[ProcessRow]
    memory: list[ProcessRow]
    disk_read: list[ProcessRow]
    disk_write: list[ProcessRow]
    fds: list[ProcessRow]
    notes: list[str]  # what could not be seen and why


# ---------------------------------------------------------------- parsing (pure)


def parse_stat_fields(data: bytes) -> tuple[int, int, int, bytes] | None:
    """(starttime ticks, utime + stime ticks, rss pages, comm) of /proc/PID/stat; None if garbled.
    The comm is between the first '(' and the last ')'."""
    close = data.rfind(b")")
    if close < 0:
        return None
    rest = data[close + 2:].split()
    if len(rest) < 22:
        return None
    try:
        return int(rest[19]), int(rest[11]) + int(rest[12]), int(rest[21]), data[data.find(b"(") + 1:close]
    except ValueError:
        return None


class ProcessIoEntry(msgspec.Struct, frozen=True):
    fds: int | None  # None: the kernel refused the fd list even to root
    io: PidIo | None  # None: refused


def parse_process_io(data: bytes) -> tuple[dict[int, ProcessIoEntry], list[str]]:
    """The broker's process_io text: "pid N fds M" then /proc/N/io lines, per process.
    A garbled block is skipped with a warning; a cut last block is dropped."""
    out: dict[int, ProcessIoEntry] = {}
    warnings: list[str] = []
    complete = data.endswith(b"\n") or not data
    blocks = data.split(b"pid ")
    for i, block in enumerate(blocks[1:], 1):
        if i == len(blocks) - 1 and not complete:
            warnings.append("process_io: the last process's block was cut (broker output cap)")
            break
        head, _, body = block.partition(b"\n")
        parts = head.split()
        if len(parts) != 3 or parts[1] != b"fds" or not parts[0].isdigit():
            warnings.append(f"process_io: a header that is not 'pid N fds M': {head[:60]!r}")
            continue
        fds = int(parts[2]) if parts[2].isdigit() else None
        io = None
        if body.strip():
            try:
                io = parse_pid_io(body)
                warnings.extend(f"process_io: pid {int(parts[0])}: {w}" for w in io.warnings)
            except ParseError as exc:
                warnings.append(f"process_io: pid {int(parts[0])}: {exc}")
        out[int(parts[0])] = ProcessIoEntry(fds=fds, io=io)
    if blocks[0].strip():
        warnings.append("process_io: text before the first 'pid' line")
    return out, warnings


# ---------------------------------------------------------------- collection


def _read(path: str, limit: int = 65536) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass
class Reading:
    """One pass over /proc: per pid (starttime, cpu ticks, rss pages), and this user's own io and fd counts."""

    t: float  # time.monotonic()
    procs: dict[int, tuple[int, int, int]]
    own_io: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (read_bytes, write_bytes)
    own_fds: dict[int, int] = field(default_factory=dict)


@dataclass
class BrokerRead:
    t: float
    raw: bytes
    truncated: bool
    _parsed: tuple[dict[int, ProcessIoEntry], list[str]] | None = None

    def parsed(self) -> tuple[dict[int, ProcessIoEntry], list[str]]:
        if self._parsed is None:
            self._parsed = parse_process_io(self.raw)
        return self._parsed


@dataclass
class Meta:
    starttime: int
    uid: int
    comm: bytes


class ProcessTable:
    """The per-process history (see the module docstring). Thread-safety: read()
    runs in a worker thread and only builds a new Reading; the ring and the meta
    cache are updated on the trio thread."""

    def __init__(self, interval_s: float = PROCESS_INTERVAL_S, history_s: float = HISTORY_S,
                 proc_root: str = "/proc", broker: BrokerClient | None = None, use_broker: bool = True) -> None:
        self.interval_s = interval_s
        self.proc_root = proc_root
        self.readings: deque[Reading] = deque(maxlen=max(2, int(history_s / interval_s) + 2))
        self.broker_reads: deque[BrokerRead] = deque(maxlen=max(2, int(history_s / interval_s) + 2))
        self.meta: dict[int, Meta] = {}
        self.broker = broker
        self.use_broker = use_broker
        self.granted: bool | None = None  # None: not asked yet
        self.denied_reason: str | None = None
        self._last_probe = -1e9
        self.my_uid = os.getuid()
        self.my_pid = os.getpid()
        self.ticks = 0

    # ---------------------------------------------------------- reading /proc

    def read(self) -> tuple[Reading, dict[int, Meta]]:
        """One pass (blocking; a worker thread). New pids' owner and comm are returned to merge."""
        root = self.proc_root
        procs: dict[int, tuple[int, int, int]] = {}
        new_meta: dict[int, Meta] = {}
        own: list[int] = []
        t = time.monotonic()
        meta = self.meta
        for name in os.listdir(root):
            if not name.isdigit():
                continue
            data = _read(f"{root}/{name}/stat", 4096)
            if not data:
                continue
            fields = parse_stat_fields(data)
            if fields is None:
                continue
            pid = int(name)
            starttime, cpu, rss, comm = fields
            procs[pid] = (starttime, cpu, rss)
            m = meta.get(pid)
            # a new process, or an exec since (new comm: setpriv, a setuid program): owner looked up again
            if m is None or m.starttime != starttime or m.comm != comm:
                try:
                    uid = os.stat(f"{root}/{name}").st_uid
                except OSError:
                    continue
                m = new_meta[pid] = Meta(starttime, uid, comm)
            if m.uid == self.my_uid:
                own.append(pid)
        reading = Reading(t=t, procs=procs)
        for pid in own:
            io = _read(f"{root}/{pid}/io", 4096)
            if io:
                parsed = parse_pid_io(io)
                if parsed.read_bytes is not None and parsed.write_bytes is not None:
                    reading.own_io[pid] = (parsed.read_bytes, parsed.write_bytes)
            try:
                reading.own_fds[pid] = len(os.listdir(f"{root}/{pid}/fd"))
            except OSError:
                pass
        return reading, new_meta

    def merge(self, reading: Reading, new_meta: dict[int, Meta], keep: bool) -> None:
        self.meta.update(new_meta)
        if keep:
            self.readings.append(reading)
            if len(self.meta) > 2 * len(reading.procs) + 256:  # forget pids gone
                self.meta = {pid: m for pid, m in self.meta.items() if pid in reading.procs}

    async def fresh(self, keep: bool = False) -> Reading:
        """A reading in a worker thread (the background ticks: the event loop keeps serving)."""
        reading, new_meta = await trio.to_thread.run_sync(self.read)
        self.merge(reading, new_meta, keep)
        return reading

    def fresh_now(self) -> Reading:
        """A reading on the calling thread (a tool call waits for it anyway: no thread hop,
        which costs more than the read itself on a loaded machine)."""
        reading, new_meta = self.read()
        self.merge(reading, new_meta, False)
        return reading

    # ---------------------------------------------------------- the broker

    def broker_due(self, now: float) -> bool:
        if not self.use_broker or self.broker is None:
            return False
        return self.granted is not False or now - self._last_probe >= REPROBE_S

    async def read_broker(self) -> BrokerRead | None:
        """One ProcessIo read; records whether the broker grants it."""
        from perf_mcp_protocol import JobResult, ProcessIo

        from ..errors import ErrorCode, ToolError

        if self.broker is None:
            return None
        self._last_probe = time.monotonic()
        try:
            reply = await self.broker.run(ProcessIo(), timeout_s=BROKER_TIMEOUT_S)
        except ToolError as exc:
            if exc.code in (ErrorCode.PROFILER_BUSY, ErrorCode.TIMEOUT):
                return None  # try at the next tick
            self.granted = False
            self.denied_reason = exc.code.value
            return None
        final = reply.final
        step = final.steps[0] if isinstance(final, JobResult) and final.steps else None
        if step is None or step.exit_status != 0:
            return None
        self.granted = True
        self.denied_reason = None
        read = BrokerRead(t=time.monotonic(), raw=step.stdout, truncated=step.stdout_truncated)
        self.broker_reads.append(read)
        return read

    # ---------------------------------------------------------- the service

    async def tick(self) -> None:
        await self.fresh(keep=True)
        self.ticks += 1
        if (self.ticks - 1) % BROKER_EVERY == 0 and self.broker_due(time.monotonic()):
            await self.read_broker()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        deadline = trio.current_time()
        while True:
            try:
                await self.tick()
            except Exception:  # a tick must never end the service
                log.exception("process table tick failed")
            deadline += self.interval_s
            now = trio.current_time()
            if deadline < now:
                deadline = now + self.interval_s
            await trio.sleep_until(deadline)

    # ---------------------------------------------------------- queries

    def older(self, now: Reading, window_s: float, min_gap_s: float = 0.5) -> Reading | None:
        """The kept reading that starts a window of at least window_s before ``now`` (the youngest
        such), else the oldest one (at least min_gap_s before it)."""
        candidates = [r for r in self.readings if now.t - r.t >= min_gap_s]
        return _window_start(candidates, now.t, window_s)

    def broker_pair(self, window_s: float) -> tuple[BrokerRead, BrokerRead] | None:
        reads = list(self.broker_reads)
        if len(reads) < 2:
            return None
        newest = reads[-1]
        older = _window_start(reads[:-1], newest.t, window_s)
        return (older, newest) if older is not None else None

    def is_own_tool(self, pid: int) -> bool:
        m = self.meta.get(pid)
        return pid == self.my_pid or (m is not None and m.comm in OWN_COMMS)


def _window_start(readings: list, end: float, window_s: float):  # type: ignore[no-untyped-def]
    """Of readings (oldest first), the youngest at least window_s before end (a 0.25 s slack), else the oldest."""
    if not readings:
        return None
    covering = [r for r in readings if end - r.t >= window_s - 0.25]
    return covering[-1] if covering else readings[0]


async def _service(services: Services, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    from ..broker_client import BrokerClient

    table = ProcessTable(broker=services.get(BrokerClient))  # type: ignore[type-var]
    services.put(table)
    await table.run(task_status=task_status)


def process_table_service():  # type: ignore[no-untyped-def]
    """The ServiceSpec that keeps the ProcessTable (registered by perf_snapshot)."""
    from ..registry import ServiceSpec

    return ServiceSpec(name="process_table", run=_service)


# ---------------------------------------------------------------- attribution

_users: dict[int, str] = {}


def user_name(uid: int) -> str:
    name = _users.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        _users[uid] = name
    return name


def command_of(pid: int, comm: bytes, proc_root: str = "/proc") -> str:
    raw = _read(f"{proc_root}/{pid}/cmdline", 4096) or b""
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace").strip()
    if not text:
        text = f"[{comm.decode('utf-8', 'replace')}]"
    return text if len(text) <= COMMAND_CAP else text[: COMMAND_CAP - 1] + "…"


def cgroup_of(pid: int, proc_root: str = "/proc") -> str | None:
    """The v2 path when it is not the root; else the first v1 controller that is not at its root."""
    raw = _read(f"{proc_root}/{pid}/cgroup", 8192)
    if not raw:
        return None
    cg = parse_proc_cgroup(raw)
    v2 = cg.v2_path
    if v2 and v2 != "/":
        return v2
    for entry in cg.entries:
        if entry.controllers and entry.path != "/":
            return f"{','.join(entry.controllers)}:{entry.path}"
    return v2 or "/"


@dataclass
class _Figures:
    pid: int
    cpu_pct: float | None = None
    rss: int | None = None
    read_bps: float | None = None
    write_bps: float | None = None
    fds: int | None = None


def _rates(new: tuple[int, int], old: tuple[int, int] | None, dt: float) -> tuple[float, float] | None:
    if old is None or dt <= 0:
        return None
    return max(0.0, (new[0] - old[0]) / dt), max(0.0, (new[1] - old[1]) / dt)


async def attribute(ctx: ToolContext, *, window_s: float = 10.0, top_n: int = 5) -> Attribution:
    """Top processes by CPU %, RSS, disk read and write bytes/s and fd count over about window_s."""
    from ..broker_client import BrokerClient

    table = ctx.services.get(ProcessTable)  # type: ignore[type-var]
    if table is None:  # the service is not running (a tool used alone): a transient table
        table = ProcessTable(broker=ctx.broker)
    if table.broker is None:
        table.broker = ctx.services.get(BrokerClient) or ctx.broker  # type: ignore[type-var]
    notes: list[str] = []
    now = table.fresh_now()
    old = table.older(now, window_s)
    if old is None:  # no history yet: a short window of our own
        await trio.sleep(0.5)
        old, now = now, table.fresh_now()
    dt = now.t - old.t
    if dt < window_s * 0.8:
        notes.append(f"the process window covers {dt:.1f} s of the {window_s:g} s asked (history since start-up)")

    # other users' io: the cached broker reads; one read now only when fewer than two are cached
    pair = table.broker_pair(window_s)
    stale = not table.broker_reads or time.monotonic() - table.broker_reads[-1].t > REPROBE_S
    if (pair is None or stale) and table.broker_due(time.monotonic()):
        await table.read_broker()
        pair = table.broker_pair(window_s)
    broker_old: dict[int, ProcessIoEntry] = {}
    broker_new: dict[int, ProcessIoEntry] = {}
    broker_dt = 0.0
    if table.granted and table.broker_reads:
        newest = table.broker_reads[-1]
        broker_new, warnings = newest.parsed()
        notes.extend(warnings)
        if pair is not None:
            broker_old, _ = pair[0].parsed()
            broker_dt = pair[1].t - pair[0].t
        else:
            notes.append("other users' disk I/O rates start with the next broker read (one read so far)")
        if newest.truncated:
            notes.append("the broker's process_io text was cut at its output cap: some processes lack I/O figures")
    elif table.use_broker:
        reason = table.denied_reason or "not asked"
        if reason == "BROKER_UNAVAILABLE":
            notes.append("other users' disk I/O and fd counts come from the perf-mcp broker, which is not running")
        else:
            notes.append(INSPECT_NOTE)

    figures: list[_Figures] = []
    for pid, (starttime, cpu, rss) in now.procs.items():
        if table.is_own_tool(pid):
            continue
        f = _Figures(pid=pid, rss=rss * PAGE)
        before = old.procs.get(pid)
        if before is not None and before[0] == starttime:
            f.cpu_pct = max(0.0, (cpu - before[1]) / CLK_TCK / dt * 100)
        elif before is None:  # started inside the window: all its CPU time is
            f.cpu_pct = cpu / CLK_TCK / dt * 100
        m = table.meta.get(pid)
        if m is not None and m.uid == table.my_uid and pid in now.own_io:
            r = _rates(now.own_io[pid], old.own_io.get(pid) if before and before[0] == starttime else (0, 0), dt)
            if r is not None:
                f.read_bps, f.write_bps = r
            f.fds = now.own_fds.get(pid)
        elif pid in broker_new:
            entry = broker_new[pid]
            f.fds = entry.fds
            prev = broker_old.get(pid)
            if entry.io is not None and prev is not None and prev.io is not None and broker_dt > 0:
                new_io = (entry.io.read_bytes or 0, entry.io.write_bytes or 0)
                old_io = (prev.io.read_bytes or 0, prev.io.write_bytes or 0)
                if new_io[0] >= old_io[0] and new_io[1] >= old_io[1]:  # else the pid was reused
                    f.read_bps, f.write_bps = _rates(new_io, old_io, broker_dt) or (None, None)
        figures.append(f)

    def top(key: str) -> list[_Figures]:
        rows = [f for f in figures if (getattr(f, key) or 0) > 0]
        rows.sort(key=lambda f: -(getattr(f, key) or 0))
        return rows[:top_n]

    tops = {k: top(k) for k in ("cpu_pct", "rss", "read_bps", "write_bps", "fds")}
    rows: dict[int, ProcessRow] = {}
    for f in {f.pid: f for lst in tops.values() for f in lst}.values():
        m = table.meta.get(f.pid)
        comm = m.comm if m else b"?"
        try:  # the owner now (a process may have changed its uid since it was first seen)
            uid: int | None = os.stat(f"{table.proc_root}/{f.pid}").st_uid
        except OSError:
            uid = m.uid if m else None
        rows[f.pid] = ProcessRow(
            pid=f.pid, user=user_name(uid) if uid is not None else "?",
            command=command_of(f.pid, comm, table.proc_root),
            cgroup=cgroup_of(f.pid, table.proc_root),
            cpu_pct=None if f.cpu_pct is None else round(f.cpu_pct, 1),
            rss_mb=None if f.rss is None else round(f.rss / 2**20, 1),
            read_bps=None if f.read_bps is None else round(f.read_bps),
            write_bps=None if f.write_bps is None else round(f.write_bps),
            fds=f.fds,
        )
    return Attribution(
        window_s=round(dt, 2),
        cpu=[rows[f.pid] for f in tops["cpu_pct"]], memory=[rows[f.pid] for f in tops["rss"]],
        disk_read=[rows[f.pid] for f in tops["read_bps"]], disk_write=[rows[f.pid] for f in tops["write_bps"]],
        fds=[rows[f.pid] for f in tops["fds"]], notes=list(dict.fromkeys(notes)),
    )


__all__ = ["Attribution", "ProcessRow", "ProcessTable", "attribute", "parse_process_io", "parse_stat_fields",
           "process_table_service"]
