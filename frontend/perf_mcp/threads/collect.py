"""Reading one process's threads from /proc (I/O only; parse.py makes sense of the bytes).

One pass = /proc/PID/stat (the process's totals, exited threads included),
then for each entry of /proc/PID/task: stat, status, schedstat. Each thread's
files are read right after its own CLOCK_BOOTTIME timestamp, so its rate is
taken over its own interval even when a pass over thousands of threads takes
tens of milliseconds.

Errors per file: ENOENT/ESRCH on a thread = it exited during the pass
(skipped); EACCES/EPERM = counted in `unreadable` by kind and the field is
None (a stat that cannot be read leaves the thread out). Only the process's
own stat decides ProcessGone / NotPermitted.
"""

from __future__ import annotations

import errno
import os
import time

from ..procfs import ParseError
from ..procfs.sampler import read_file
from .parse import ProcessSample, parse_process_times, parse_task

# A pass reads at most this many threads (about 0.3 s of CPU at 10,000); the rest are reported as not read.
MAX_THREADS = 10_000

_GONE = (errno.ENOENT, errno.ESRCH)
_DENIED = (errno.EACCES, errno.EPERM)


class ProcessGone(Exception):
    """The process does not exist (any more), or is a zombie."""


class NotPermitted(Exception):
    """/proc/PID/stat itself is unreadable (procfs mounted with hidepid=2 / noaccess)."""


def now_ns() -> int:
    """CLOCK_BOOTTIME: the clock of stat's starttime (and monotonic across the window)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _optional(path: str, kind: str, unreadable: dict[str, int]) -> bytes | None:
    """The file's bytes; None when denied (counted) or missing; ProcessLookupError when the thread is gone."""
    try:
        return read_file(path)
    except OSError as exc:
        if exc.errno in _DENIED:
            unreadable[kind] = unreadable.get(kind, 0) + 1
            return None
        if exc.errno in _GONE:
            raise ProcessLookupError(path) from None
        raise


def read_process(pid: int, proc_root: str = "/proc", max_threads: int = MAX_THREADS) -> ProcessSample:
    base = f"{proc_root}/{int(pid)}"
    try:
        process = parse_process_times(now_ns(), read_file(f"{base}/stat"))
        tids = os.listdir(f"{base}/task")
    except OSError as exc:
        if exc.errno in _GONE:
            raise ProcessGone(pid) from None
        if exc.errno in _DENIED:
            raise NotPermitted(pid) from None
        raise
    except ParseError:
        raise ProcessGone(pid) from None  # an empty read: the process is being torn down
    if process.state in ("Z", "X"):  # exited; a zombie waits for its parent, with no threads to read
        raise ProcessGone(pid)
    unreadable: dict[str, int] = {}
    warnings: list[str] = []
    missing_schedstat = 0
    tasks = {}
    numeric = sorted(int(t) for t in tids if t.isdecimal())
    if len(numeric) > max_threads:
        warnings.append(f"{len(numeric)} threads: only the first {max_threads} (lowest ids) were read")
        numeric = numeric[:max_threads]
    for tid in numeric:
        tbase = f"{base}/task/{tid}"
        t_ns = now_ns()
        try:
            stat = _optional(f"{tbase}/stat", "stat", unreadable)
            if stat is None:
                continue
            status = _optional(f"{tbase}/status", "status", unreadable)
            try:
                schedstat = read_file(f"{tbase}/schedstat")
            except OSError as exc:
                schedstat = None
                if exc.errno in _DENIED:
                    unreadable["schedstat"] = unreadable.get("schedstat", 0) + 1
                elif exc.errno == errno.ENOENT and os.path.exists(f"{tbase}/stat"):
                    missing_schedstat += 1  # the kernel has no schedstat file
                elif exc.errno not in _GONE:
                    raise
        except ProcessLookupError:
            continue  # the thread exited between listdir and the read
        try:
            tasks[tid] = parse_task(tid, t_ns, stat, status, schedstat, warnings)
        except ParseError as exc:
            if stat:  # an empty stat is a thread being torn down
                warnings.append(f"thread {tid}: {exc}")
    return ProcessSample(process=process, tasks=tasks, unreadable=unreadable,
                         schedstat_missing=missing_schedstat, warnings=tuple(warnings))


def thread_of(pid: int, proc_root: str = "/proc") -> int | None:
    """The process (tgid) that `pid` belongs to when it is a thread id, else None."""
    try:
        text = read_file(f"{proc_root}/{int(pid)}/status").decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Tgid:"):
            value = line.split(":", 1)[1].strip()
            if value.isdecimal() and int(value) != pid:
                return int(value)
            return None
    return None
