"""Which collectors run in each mode, and running them concurrently.

A collector is one served tool called in-process (its registry spec, its Params,
a ToolContext sharing this call's artifacts and services), or one of two small
procfs readers of the triage itself (per-process attribution, fd growth). Each
answer is kept as the JSON an agent would read (msgspec.to_builtins of the
tool's data), so the correlation rules read the same thing the tools answer and
their tests feed them captured real answers.

Timing (the broker runs one profiling/tracing job per user at a time, so the
tracing collectors form one chain, queued by triage.queue):
- quick: once the sampler's ring holds MIN_HISTORY_S (the first calls after
  start-up wait), side by side: attribution over its recent history (with the
  top processes' thread demand over DEMAND_WINDOW_S), fd growth (this user's
  processes over FD_WINDOW_S, every user's between the broker reads
  attribution keeps), perf_use_check and perf_snapshot from the ring,
  perf_cgroup_summary (top children, and the pid's cgroup) and perf_net_health
  (with its sockets' tcp_info, over 1 s); when the snapshot counts an exec
  storm, /proc watched for CHURN_S for the parent of the new processes (churn).
- standard: from the start, the tracing chain perf_runq_latency,
  perf_syscall_count (and perf_dns_latency when network is in focus); once
  attribution names the top process, perf_thread_profile of it (or of pid,
  with its off-CPU stacks) and perf_fd_trace of the process whose fds grew;
  perf_exec_trace when the snapshot counts an exec storm (the churn when it
  could not run).
- deep: adds perf_offcpu_profile, perf_cpu_profile, perf_io_layers,
  perf_bio_latency and perf_vfs_latency to the chain.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from ..errors import ErrorCode, ToolError, single_leaf
from ..registry import ToolContext, ToolSpec
from .model import CollectorRun, CouldNotRun
from .queue import QueuedBroker, queued_broker

log = logging.getLogger(__name__)

MIN_HISTORY_S = 3  # samples of the 1 Hz ring a quick answer waits for after start-up
FD_WINDOW_S = 2.5  # the shortest gap between the two fd counts
FD_BROKER_WINDOW_S = 10.0  # between the broker reads of other users' fd counts
DEMAND_WINDOW_S = 1.0  # schedstat window of the top processes' threads
TOP_N = 5
EXEC_STORM_PER_S = (50.0, 200.0)  # forks/s: warning, critical (and when standard traces the execs)
TRACE_S = {"standard": 2, "deep": 2}
# Hard limits per mode (collectors still running then are listed as timed out).
MODE_LIMIT_S = {"quick": 20.0, "standard": 45.0, "deep": 110.0}
FOCUS = {
    "attribution": {"cpu", "memory", "disk", "network"},
    "perf_use_check": {"cpu", "memory", "disk", "network"},
    "perf_snapshot": {"cpu", "memory", "disk", "network"},
    "fd_growth": set(),  # all only
    "perf_cgroup_summary": {"cpu", "memory"},
    "perf_cgroup_summary.pid": {"cpu", "memory"},
    "perf_runq_latency": {"cpu"},
    "perf_syscall_count": {"cpu"},
    "perf_thread_profile": {"cpu"},
    "perf_fd_trace": set(),
    "perf_exec_trace": {"cpu"},
    "perf_net_health": {"network"},
    "perf_dns_latency": {"network"},
    "perf_offcpu_profile": {"cpu", "disk"},
    "perf_cpu_profile": {"cpu"},
    "perf_io_layers": {"disk"},
    "perf_bio_latency": {"disk"},
    "perf_vfs_latency": {"disk"},
}


class Observations(msgspec.Struct, kw_only=True):
    """Everything the collectors saw, as JSON; the input of correlate."""

    mode: str
    focus: str
    pid: int | None = None
    cpus: int = 1
    own_pid: int = 0
    answers: dict[str, Any] = {}  # collector name -> the tool's data (JSON builtins)
    warnings: dict[str, list[str]] = {}
    attribution: dict[str, Any] | None = None
    # top CPU processes: pid -> {threads, tid, cpu_pct, runq_pct} of its busiest thread over DEMAND_WINDOW_S
    threads: dict[int, dict[str, Any]] = {}
    fd_growth: list[dict[str, Any]] = []  # {pid, command, user, first, last, window_s}
    parents: dict[int, int] = {}  # pid -> ppid of the attribution's disk and CPU rows (workers of one program)
    churn: dict[str, Any] = {}  # new processes seen by their parent in /proc (churn()), when not traced
    # pid -> its cgroups ("controllers:path", or the v2 path) of every hierarchy where it is not at the root,
    # for the top CPU processes (attribution names one): a quota throttling it is in its cpu hierarchy
    cgroups: dict[int, list[str]] = {}


@dataclass
class Collection:
    obs: Observations
    runs: list[CollectorRun] = field(default_factory=list)
    could_not_run: list[CouldNotRun] = field(default_factory=list)
    blind_spots: list[str] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)  # name -> start (trio clock)


_REFUSED = {ErrorCode.PERMISSION_DENIED.value, ErrorCode.BROKER_UNAVAILABLE.value}


def wanted(name: str, focus: str) -> bool:
    return focus == "all" or focus in FOCUS.get(name, set())


def tool_spec(tool: str) -> ToolSpec[Any] | None:
    try:
        module = importlib.import_module(f"perf_mcp.tools.{tool}")
    except Exception:  # a tool that does not import is not served either
        log.exception("triage: tool module %s does not import", tool)
        return None
    return getattr(module, "TOOL", None)


def answers_without_broker(tool: str) -> bool:
    """The tool's ladder has a procfs rung (perf_io_layers): it answers a user the broker refuses."""
    try:
        module = importlib.import_module(f"perf_mcp.tools.{tool}")
    except Exception:
        return False
    return any(getattr(r, "backend", 0) is None for r in getattr(module, "LADDER", []))


async def _quiet(progress: float, total: float | None = None, message: str | None = None) -> None:
    """The sub-tools' own progress is replaced by the triage's (one consistent total)."""


class Runner:
    def __init__(self, ctx: ToolContext, col: Collection) -> None:
        self.ctx = ctx
        self.col = col
        self.broker: QueuedBroker = queued_broker(ctx)
        self.done = 0

    def _sub(self, tool: str) -> ToolContext:
        return ToolContext(tool=tool, broker=self.broker, artifacts=self.ctx.artifacts,  # type: ignore[arg-type]
                           services=self.ctx.services, progress=_quiet)

    async def tool(self, name: str, tool: str, args: dict[str, Any], probe: str | None = None
                   ) -> dict[str, Any] | None:
        """Run one tool; its data (JSON) or None, with could_not_run saying why. A probe (a look the
        mode does not promise, such as following another user's fds) that fails is a blind spot,
        described by `probe`, not a collector that could not run."""
        spec = tool_spec(tool)
        if spec is None:
            self._fail(name, "the tool is not served by this build", None, 0.0, "skipped")
            return None
        params = msgspec.convert(args, spec.params)
        t0 = trio.current_time()
        self.col.running[name] = t0
        waited_before = self.broker.waited_s.get(id(trio.lowlevel.current_task()), 0.0)
        try:
            out = await spec.handler(self._sub(tool), params)
        except Exception as exc:  # Cancelled is a BaseException: it passes
            leaf = single_leaf(exc)
            if probe is not None:
                self.col.blind_spots.append(f"{probe}: {getattr(leaf, 'message', leaf)}")
                self.col.runs.append(CollectorRun(name=name, status="failed", duration_ms=_ms(t0)))
                self.done += 1
            elif isinstance(leaf, ToolError):
                self._fail(name, leaf.message, leaf.code.value, t0, "failed")
            else:
                log.exception("triage collector %s failed", name)
                self._fail(name, f"{type(leaf).__name__}: {leaf}", ErrorCode.EXECUTION_FAILED.value, t0, "failed")
            return None
        finally:
            self.col.running.pop(name, None)
        data = msgspec.to_builtins(out.data)
        self.col.obs.answers[name] = data
        if out.warnings:
            self.col.obs.warnings[name] = list(out.warnings)
        queued = self.broker.waited_s.pop(id(trio.lowlevel.current_task()), 0.0) - waited_before
        self.col.runs.append(CollectorRun(name=name, status="ok", duration_ms=_ms(t0), method=data.get("method"),
                                          queued_ms=round(queued * 1000, 1) if queued > 0.05 else None))
        self.done += 1
        return data

    def _fail(self, name: str, reason: str, code: str | None, t0: float, status: str) -> None:
        self.col.could_not_run.append(CouldNotRun(collector=name, reason=reason, code=code))
        self.col.runs.append(CollectorRun(name=name, status=status, duration_ms=_ms(t0) if t0 else 0.0))  # type: ignore[arg-type]
        self.done += 1

    async def local(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        t0 = trio.current_time()
        self.col.running[name] = t0
        try:
            await fn()
        except Exception as exc:
            leaf = single_leaf(exc)
            code = leaf.code.value if isinstance(leaf, ToolError) else ErrorCode.EXECUTION_FAILED.value
            if not isinstance(leaf, ToolError):
                log.exception("triage collector %s failed", name)
            self._fail(name, str(getattr(leaf, "message", leaf)), code, t0, "failed")
            return
        finally:
            self.col.running.pop(name, None)
        self.col.runs.append(CollectorRun(name=name, status="ok", duration_ms=_ms(t0)))
        self.done += 1


def _ms(t0: float) -> float:
    return round((trio.current_time() - t0) * 1000, 1)


# ---------------------------------------------------------------- the triage's own procfs readers


def count_fds(pids: list[int] | None = None, proc: str = "/proc") -> dict[int, int]:
    """Open fds of every process this user may read (others give EACCES: skipped)."""
    out: dict[int, int] = {}
    names = [str(p) for p in pids] if pids is not None else [n for n in os.listdir(proc) if n.isdigit()]
    for name in names:
        try:
            out[int(name)] = len(os.listdir(f"{proc}/{name}/fd"))
        except OSError:
            continue
    return out


def ppid_of(pid: int, proc: str = "/proc") -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            text = f.read(4096)
        return int(text[text.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


CHURN_S = 1.0  # how long /proc is watched for new processes when an exec storm is counted and not traced
CHURN_EVERY_S = 0.005


def _pids(proc: str) -> set[int]:
    return {int(n) for n in os.listdir(proc) if n.isdigit()}


def churn(seconds: float = CHURN_S, proc: str = "/proc") -> dict[str, Any]:
    """Who spawns the new processes, without tracing: /proc listed every CHURN_EVERY_S for `seconds`,
    and each pid not listed before read for its parent (/proc/PID/stat is world-readable, so every
    user's processes count). A child living 1 ms is seen by some of the listings, so the counts are a
    sample of the spawns, in the parents' proportions: {window_s, scans, new, parents: [{ppid, new,
    comm}], most first}."""
    seen = _pids(proc)
    counts: dict[int, int] = {}
    scans = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        now = _pids(proc)
        for pid in now - seen:
            ppid = ppid_of(pid, proc)
            if ppid is not None:
                counts[ppid] = counts.get(ppid, 0) + 1
        seen |= now
        scans += 1
        time.sleep(CHURN_EVERY_S)
    parents = [{"ppid": pp, "new": n, "comm": _comm(pp)} for pp, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return {"window_s": round(time.monotonic() - t0, 2), "scans": scans, "new": sum(counts.values()),
            "parents": parents[:TOP_N]}


def cgroups_of(pid: int, proc: str = "/proc") -> list[str] | None:
    """/proc/PID/cgroup (world-readable) as "controllers:path" per v1 hierarchy and the v2 path, the
    root left out; None if the process is gone."""
    try:
        with open(f"{proc}/{pid}/cgroup", "rb") as f:
            text = f.read(8192).decode("utf-8", "replace")
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/") and parts[2] != "/":
            out.append(f"{parts[1]}:{parts[2]}" if parts[1] else parts[2])
    return out


def num_threads(pid: int, proc: str = "/proc") -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            text = f.read(4096)
        return int(text[text.rindex(b")") + 2:].split()[17])
    except (OSError, ValueError, IndexError):
        return None


def read_schedstat(pids: list[int], proc: str = "/proc") -> dict[int, dict[int, tuple[int, int]]]:
    """pid -> tid -> (ns on CPU, ns waiting on a run queue): /proc/PID/task/TID/schedstat (world-readable)."""
    out: dict[int, dict[int, tuple[int, int]]] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"{proc}/{pid}/task")
        except OSError:
            continue
        per: dict[int, tuple[int, int]] = {}
        for tid in tids[:256]:
            try:
                with open(f"{proc}/{pid}/task/{tid}/schedstat", "rb") as f:
                    fields = f.read(256).split()
                per[int(tid)] = (int(fields[0]), int(fields[1]))
            except (OSError, ValueError, IndexError):
                continue
        out[pid] = per
    return out


def thread_demand(first: dict[int, dict[int, tuple[int, int]]], last: dict[int, dict[int, tuple[int, int]]],
                  window_s: float) -> dict[int, dict[str, Any]]:
    """The busiest thread of each process: its share of one CPU on it and waiting for it. A thread on
    CPU 50% and runnable-waiting 45% of the window wants a whole CPU: the machine's contention hid it."""
    out: dict[int, dict[str, Any]] = {}
    for pid, threads in last.items():
        best: dict[str, Any] | None = None
        for tid, (on, wait) in threads.items():
            before = first.get(pid, {}).get(tid)
            if before is None or window_s <= 0:
                continue
            cpu = (on - before[0]) / 1e9 / window_s * 100
            runq = (wait - before[1]) / 1e9 / window_s * 100
            if best is None or cpu + runq > best["cpu_pct"] + best["runq_pct"]:
                best = {"tid": tid, "cpu_pct": round(cpu, 1), "runq_pct": round(runq, 1)}
        if best is not None:
            best["threads"] = len(threads)
            out[pid] = best
    return out


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read(64).decode("utf-8", "replace").strip()
    except OSError:
        return None


def fd_growers(first: dict[int, int], last: dict[int, int], window_s: float, own: int,
               min_growth: int = 10) -> list[dict[str, Any]]:
    rows = []
    for pid, n in last.items():
        before = first.get(pid)
        if before is None or pid == own or n - before < min_growth:
            continue
        rows.append({"pid": pid, "command": _comm(pid), "first": before, "last": n, "window_s": round(window_s, 2),
                     "slope_per_s": round((n - before) / window_s, 2) if window_s > 0 else None})
    rows.sort(key=lambda r: -(r["last"] - r["first"]))
    return rows[:TOP_N]


def broker_fd_growth(ctx: ToolContext, own: int) -> list[dict[str, Any]]:
    """fd_growers of every user's processes between the two broker reads (org.perfmcp.inspect) that
    attribution's process table keeps, about FD_BROKER_WINDOW_S apart (since start-up: the read at start
    and attribution's own one); empty without the grant or two reads. The fds of another user's process
    are only seen this way."""
    try:
        from ..procfs.attribution import ProcessTable
    except ImportError:
        return []
    table = ctx.services.get(ProcessTable)  # type: ignore[type-var]
    pair = table.broker_pair(FD_BROKER_WINDOW_S) if table is not None and table.granted else None
    if pair is None:
        return []
    first, last = (({pid: e.fds for pid, e in r.parsed()[0].items() if e.fds is not None}) for r in pair)
    return fd_growers(first, last, pair[1].t - pair[0].t, own)


# ---------------------------------------------------------------- the plan


FD_CANDIDATES = 3
FD_OTHERS_MIN = 64  # another user's process holding this many fds is worth a 3 s look


def fd_candidates(obs: Observations) -> list[int]:
    """Processes whose fds perf_fd_trace follows: this user's that grew in the quick window, then
    other users' with the most fds (attribution has their counts through the broker; their growth is
    only seen by following them, which perf_fd_trace does through the broker too)."""
    out = [int(g["pid"]) for g in obs.fd_growth]
    me = os.getuid()
    try:
        import pwd

        my_name = pwd.getpwuid(me).pw_name
    except KeyError:
        my_name = str(me)
    for row in (obs.attribution or {}).get("fds") or []:
        if row.get("user") != my_name and (row.get("fds") or 0) >= FD_OTHERS_MIN and row["pid"] not in out:
            out.append(int(row["pid"]))
    return out[:FD_CANDIDATES]


def top_process(obs: Observations) -> int | None:
    """The process to look at closely: the given pid, else the top CPU process of attribution."""
    if obs.pid is not None:
        return obs.pid
    rows = (obs.attribution or {}).get("cpu") or []
    for row in rows:
        if row.get("pid") and row.get("pid") != obs.own_pid and (row.get("cpu_pct") or 0) >= 5:
            return int(row["pid"])
    return None


async def collect(ctx: ToolContext, mode: str, focus: str, pid: int | None,
                  progress: Callable[[Collection, Runner], Awaitable[None]]) -> Collection:
    obs = Observations(mode=mode, focus=focus, pid=pid, cpus=os.cpu_count() or 1, own_pid=os.getpid())
    col = Collection(obs=obs)
    runner = Runner(ctx, col)
    trace_s = TRACE_S.get(mode, 2)
    quick_done = trio.Event()
    ring_done = trio.Event()

    async def attribution_then_local() -> None:
        """quick: wait for history, then side by side: attribution (with its threads' 1 s demand), the fd
        growth once FD_WINDOW_S has passed, and the ring's tools (then the churn in quick mode)."""
        t_start = trio.current_time()
        first_fds = await trio.to_thread.run_sync(count_fds) if wanted("fd_growth", focus) else {}
        t_first = trio.current_time()
        try:
            from ..tools._sampler_service import system_sampler

            await system_sampler(ctx, min_samples=MIN_HISTORY_S + 1)
        except ToolError as exc:
            col.blind_spots.append(f"the background sampler: {exc.message}")

        async def fd_growth_after_window() -> None:
            await trio.sleep_until(t_first + FD_WINDOW_S)
            await runner.local("fd_growth", lambda: _fd_growth(first_fds, t_first))

        async def ring_tools() -> None:
            async with trio.open_nursery() as inner:
                inner.start_soon(runner.tool, "perf_use_check", "perf_use_check", {"window_s": 10.0})
                inner.start_soon(runner.tool, "perf_snapshot", "perf_snapshot", {"include_per_cpu": True})
            ring_done.set()
            if mode == "quick" and exec_storm():  # quick traces nothing: its parent from the process churn
                await runner.local("churn", _churn)

        async with trio.open_nursery() as outer:
            outer.start_soon(ring_tools)
            async with trio.open_nursery() as inner:
                if wanted("attribution", focus):
                    inner.start_soon(runner.local, "attribution", _attribution)
                if first_fds:
                    inner.start_soon(fd_growth_after_window)
            if wanted("fd_growth", focus):  # other users' fds, from the broker's reads attribution keeps
                mine = {int(g["pid"]) for g in obs.fd_growth}
                obs.fd_growth += [g for g in broker_fd_growth(ctx, obs.own_pid) if g["pid"] not in mine]
            log.debug("quick collectors in %.1f s", trio.current_time() - t_start)
            quick_done.set()

    async def _attribution() -> None:
        try:
            from ..procfs.attribution import attribute
        except ImportError:
            col.blind_spots.append("per-process attribution is not in this build: no culprit process by CPU, "
                                   "memory, disk or fds")
            return
        att = await attribute(ctx, window_s=10.0, top_n=TOP_N)
        obs.attribution = msgspec.to_builtins(att)
        obs.parents = {r.pid: pp for r in att.disk_read + att.disk_write + att.cpu if (pp := ppid_of(r.pid)) is not None}
        tops = list(dict.fromkeys(([pid] if pid is not None else [])
                                  + [r.pid for r in att.cpu[:3] if (r.cpu_pct or 0) >= 10]))
        if tops:
            obs.cgroups = {t: cg for t in tops if (cg := cgroups_of(t))}
            first = await trio.to_thread.run_sync(read_schedstat, tops)
            t0 = trio.current_time()
            await trio.sleep(DEMAND_WINDOW_S)
            last = await trio.to_thread.run_sync(read_schedstat, tops)
            obs.threads = thread_demand(first, last, trio.current_time() - t0)

    def exec_storm() -> bool:
        windows = (obs.answers.get("perf_snapshot") or {}).get("windows") or [{}]
        return (windows[0].get("forks_s") or 0) >= EXEC_STORM_PER_S[0] and wanted("perf_exec_trace", focus)

    async def _churn() -> None:
        obs.churn = await trio.to_thread.run_sync(churn)

    async def exec_trace() -> None:
        """Who spawns them (the parent is the culprit of an exec storm): traced, else from the churn."""
        if await runner.tool("perf_exec_trace", "perf_exec_trace",
                             {"duration_s": 2, "max_execs_listed": 5, "max_args": 4}) is None:
            await runner.local("churn", _churn)

    async def _fd_growth(first: dict[int, int], t_first: float) -> None:
        last = await trio.to_thread.run_sync(count_fds, list(first))
        obs.fd_growth = fd_growers(first, last, trio.current_time() - t_first, obs.own_pid)

    async def cgroups() -> None:
        async with trio.open_nursery() as inner:
            if wanted("perf_cgroup_summary", focus):
                inner.start_soon(runner.tool, "perf_cgroup_summary", "perf_cgroup_summary", {})
            if pid is not None and wanted("perf_cgroup_summary.pid", focus):
                inner.start_soon(runner.tool, "perf_cgroup_summary.pid", "perf_cgroup_summary", {"pid": pid})

    async def tracing_chain() -> None:
        """The tracing collectors one after another: the broker runs one such job per user at a time,
        and a chain keeps their order (the most telling first) where waiters on a slot would race."""
        chain: list[tuple[str, dict[str, Any]]] = [
            ("perf_runq_latency", {"duration_s": trace_s, "per_pid": True, "top_n": TOP_N, "pid": pid}),
            ("perf_syscall_count", {"duration_s": trace_s, "per_process": True, "top_n": 10, "pid": pid}),
            ("perf_dns_latency", {"duration_s": trace_s, "pid": pid}),
        ]
        if mode == "deep":
            chain += [
                ("perf_offcpu_profile", {"duration_s": 3, "pid": pid, "top_n": TOP_N}),
                ("perf_cpu_profile", {"duration_s": 3.0, "pid": pid}),
                ("perf_io_layers", {"duration_s": 2, "include_details": True, "top_n": TOP_N}),
                ("perf_bio_latency", {"duration_s": 2}),
                ("perf_vfs_latency", {"duration_s": 2, "pid": pid, "top_n": 10}),
            ]
        refused: dict[str, CouldNotRun] = {}  # grant class (or "*": no broker) -> the first refusal
        for name, args in chain:
            if not wanted(name, focus):
                continue
            grant = "profile" if name == "perf_cpu_profile" else "trace"
            first = refused.get("*") or refused.get(grant)
            if first is not None and not answers_without_broker(name):  # the same answer for every job of that grant: not asked again
                col.could_not_run.append(CouldNotRun(collector=name, reason=first.reason, code=first.code))
                col.runs.append(CollectorRun(name=name, status="skipped", duration_ms=0.0))
                continue
            if await runner.tool(name, name, args) is None:
                last = col.could_not_run[-1] if col.could_not_run else None
                if last is not None and last.collector == name and last.code in _REFUSED:
                    refused["*" if last.code == ErrorCode.BROKER_UNAVAILABLE.value else grant] = last

    async def after_quick() -> None:
        """The collectors that need the top process (attribution) first."""
        await quick_done.wait()
        target = top_process(obs)
        async with trio.open_nursery() as inner:
            if target is not None and wanted("perf_thread_profile", focus):
                # the top process may be short-lived: when it goes, that is a blind spot, not a failure
                probe = None if pid is not None else f"the threads of the top process (pid {target})"
                inner.start_soon(runner.tool, "perf_thread_profile", "perf_thread_profile",
                                 {"pid": target, "duration_s": 3.0, "include_offcpu": pid is not None, "top_n": 10},
                                 probe)
            if wanted("perf_fd_trace", focus):
                grown = {int(g["pid"]) for g in obs.fd_growth}
                for i, fd_pid in enumerate(fd_candidates(obs)):
                    name = "perf_fd_trace" if i == 0 else f"perf_fd_trace.{i + 1}"
                    probe = None if fd_pid in grown else f"the fds of pid {fd_pid} (another user's) could not be followed"
                    inner.start_soon(runner.tool, name, "perf_fd_trace",
                                     {"pid": fd_pid, "duration_s": 3.0, "interval_s": 1.0}, probe)
            await ring_done.wait()
            if exec_storm():
                inner.start_soon(exec_trace)

    async def ticker() -> None:
        while True:
            await progress(col, runner)
            await trio.sleep(1.0)

    with trio.move_on_after(MODE_LIMIT_S[mode]):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            async with trio.open_nursery() as work:
                work.start_soon(attribution_then_local)
                work.start_soon(cgroups)
                if wanted("perf_net_health", focus):  # its sockets' tcp_info name a lossy flow's peer in 1 s
                    work.start_soon(runner.tool, "perf_net_health", "perf_net_health", {"include_tcp_details": True})
                if mode in ("standard", "deep"):
                    work.start_soon(tracing_chain)
                    work.start_soon(after_quick)
            nursery.cancel_scope.cancel()
    now = trio.current_time()
    for name, t0 in col.running.items():
        col.could_not_run.append(CouldNotRun(collector=name, reason=(
            f"still running when the {mode} triage's limit of {MODE_LIMIT_S[mode]:g} s ran out "
            f"({now - t0:.1f} s); it was stopped"), code=ErrorCode.TIMEOUT.value))
        col.runs.append(CollectorRun(name=name, status="timed_out", duration_ms=round((now - t0) * 1000, 1)))
    col.running.clear()
    return col
