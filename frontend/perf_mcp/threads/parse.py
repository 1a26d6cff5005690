"""Per-thread counters of one process from /proc/PID/task/TID/* (pure: bytes in, typed data out).

Files, all world-readable on a default procfs mount (hidepid=0), so another
user's process needs no broker:

- stat: name (field 2, the same task->comm that the `comm` file holds, so
  `comm` is not read a second time), state (3), utime/stime (14, 15: clock
  ticks, split between user and kernel mode) and starttime (22: clock ticks
  after boot, which dates a thread created during the window). Parsed with
  procfs.process.parse_pid_stat: the name may hold spaces and ')'.
- schedstat: "on-CPU ns, run-queue wait ns, timeslices" (CONFIG_SCHED_INFO).
  The on-CPU time is the scheduler's own sum_exec_runtime in ns, exact where
  utime+stime are whole ticks (10 ms at CLK_TCK 100); the ticks are still used
  for the user/system split.
- status: only voluntary_ctxt_switches and nonvoluntary_ctxt_switches are
  needed, so the two lines are looked up directly instead of splitting the 55
  lines of the file (a 500-thread process is read in a few ms).

A missing or unreadable optional file gives None fields (the caller says
which); stat is required: its ParseError propagates (procfs.errors policy).
"""

from __future__ import annotations

import msgspec

from ..procfs import ParseError, parse_pid_stat
from ..procfs._text import Raw, as_text, record_text, to_int


class Schedstat(msgspec.Struct, frozen=True, kw_only=True):
    oncpu_ns: int  # field 1: time spent running (sum_exec_runtime)
    runq_wait_ns: int  # field 2: time spent runnable, waiting on a run queue (run_delay)
    timeslices: int  # field 3: times run on a CPU (pcount)


def parse_schedstat(data: Raw) -> Schedstat:
    """/proc/PID/task/TID/schedstat: three integers on one line."""
    what = "/proc/PID/task/TID/schedstat"
    fields = record_text(data, what).split()
    if len(fields) != 3:
        raise ParseError(what, f"{len(fields)} fields, expected 3")
    oncpu, wait, slices = (to_int(f, what) for f in fields)
    if min(oncpu, wait, slices) < 0:
        raise ParseError(what, "negative counter")
    return Schedstat(oncpu_ns=oncpu, runq_wait_ns=wait, timeslices=slices)


class CtxSwitches(msgspec.Struct, frozen=True, kw_only=True):
    voluntary: int  # the thread gave up the CPU (blocked, slept, yielded)
    involuntary: int  # the scheduler took the CPU away (preempted)


_VOLUNTARY = "\nvoluntary_ctxt_switches:"
_INVOLUNTARY = "\nnonvoluntary_ctxt_switches:"


def _status_value(text: str, key: str) -> int | None:
    start = text.find(key)
    if start < 0:
        return None
    start += len(key)
    end = text.find("\n", start)
    if end < 0:  # the last line without its newline: a truncated read
        return None
    token = text[start:end].strip()
    return int(token) if token.isdecimal() else None


def parse_ctx_switches(data: Raw) -> CtxSwitches:
    """The two context-switch counters of /proc/PID/task/TID/status; ParseError when either is missing."""
    text = "\n" + as_text(data)
    voluntary = _status_value(text, _VOLUNTARY)
    involuntary = _status_value(text, _INVOLUNTARY)
    if voluntary is None or involuntary is None:
        raise ParseError("/proc/PID/task/TID/status", "no complete voluntary/nonvoluntary_ctxt_switches lines")
    return CtxSwitches(voluntary=voluntary, involuntary=involuntary)


class TaskSample(msgspec.Struct, frozen=True, kw_only=True):
    """One thread at one instant."""

    tid: int
    name: str
    state: str  # one letter (R, S, D, T, t, X, Z, P, I)
    utime_ticks: int
    stime_ticks: int
    start_ticks: int  # creation, clock ticks after boot
    t_ns: int  # CLOCK_BOOTTIME when the files were read
    schedstat: Schedstat | None  # None: file missing (no CONFIG_SCHED_INFO) or unreadable
    switches: CtxSwitches | None  # None: status unreadable


def parse_task(tid: int, t_ns: int, stat: Raw, status: Raw | None, schedstat: Raw | None,
               warnings: list[str]) -> TaskSample:
    """One thread from its file contents (None: the file could not be read).

    ParseError for a bad stat; a bad optional file becomes None and a warning.
    """
    st = parse_pid_stat(stat)
    sched = None
    if schedstat is not None:
        try:
            sched = parse_schedstat(schedstat)
        except ParseError as exc:
            warnings.append(f"thread {tid}: {exc}")
    switches = None
    if status is not None:
        try:
            switches = parse_ctx_switches(status)
        except ParseError as exc:
            warnings.append(f"thread {tid}: {exc}")
    return TaskSample(tid=tid, name=st.comm, state=st.state, utime_ticks=st.utime, stime_ticks=st.stime,
                      start_ticks=st.starttime, t_ns=t_ns, schedstat=sched, switches=switches)


class ProcessTimes(msgspec.Struct, frozen=True, kw_only=True):
    """/proc/PID/stat of the whole process: CPU of every thread, exited ones included."""

    pid: int
    name: str
    state: str
    utime_ticks: int
    stime_ticks: int
    num_threads: int
    t_ns: int


def parse_process_times(t_ns: int, stat: Raw) -> ProcessTimes:
    st = parse_pid_stat(stat)
    return ProcessTimes(pid=st.pid, name=st.comm, state=st.state, utime_ticks=st.utime, stime_ticks=st.stime,
                        num_threads=st.num_threads, t_ns=t_ns)


class ProcessSample(msgspec.Struct, frozen=True, kw_only=True):
    """Every readable thread of one process at one instant (one pass over /proc/PID/task)."""

    process: ProcessTimes
    tasks: dict[int, TaskSample]
    # Files that answered EACCES/EPERM in this pass, by kind ("stat", "status", "schedstat").
    unreadable: dict[str, int] = {}
    # schedstat files that do not exist (kernel without CONFIG_SCHED_INFO).
    schedstat_missing: int = 0
    warnings: tuple[str, ...] = ()
