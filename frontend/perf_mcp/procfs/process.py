"""Parsers for /proc/PID/stat, /proc/PID/status, /proc/PID/limits and
/proc/PID/io.

/proc/PID/stat is one record: ParseError on garbage. The name (comm) can hold
spaces and parentheses, so it is everything between the first '(' and the
LAST ')' - as psutil does. status, limits and io are key/value files: bad
lines are skipped with a warning and missing typed fields are None (kernel
threads have no Vm* lines in status).
"""

from __future__ import annotations

from ._text import Raw, Record, Warnings, line_warning, lines_of, record_text, to_int
from .errors import ParseError


class PidStat(Record, frozen=True):
    """Fields of /proc/PID/stat (man 5 proc numbering in comments). Times are
    in clock ticks (os.sysconf("SC_CLK_TCK")), rss in pages."""

    pid: int  # (1)
    comm: str  # (2)
    state: str  # (3)
    ppid: int  # (4)
    pgrp: int
    session: int
    tty_nr: int
    tpgid: int
    flags: int
    minflt: int  # (10)
    cminflt: int
    majflt: int
    cmajflt: int
    utime: int  # (14)
    stime: int
    cutime: int
    cstime: int
    priority: int
    nice: int
    num_threads: int  # (20)
    starttime: int  # (22) ticks after boot
    vsize: int  # bytes
    rss: int  # pages
    processor: int | None = None  # (39) CPU last run on
    rt_priority: int | None = None
    policy: int | None = None
    delayacct_blkio_ticks: int | None = None  # (42)
    guest_time: int | None = None


_STAT_HEAD = (
    "state",
    "ppid",
    "pgrp",
    "session",
    "tty_nr",
    "tpgid",
    "flags",
    "minflt",
    "cminflt",
    "majflt",
    "cmajflt",
    "utime",
    "stime",
    "cutime",
    "cstime",
    "priority",
    "nice",
    "num_threads",
)
# index in the fields after ")" (field 3 is index 0) of the optional tail
_STAT_TAIL = {"processor": 36, "rt_priority": 37, "policy": 38, "delayacct_blkio_ticks": 39, "guest_time": 40}


def parse_pid_stat(data: Raw) -> PidStat:
    what = "/proc/PID/stat"
    text = record_text(data, what)
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ParseError(what, "no '(comm)'")
    pid = to_int(text[:open_paren].strip(), what)
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 1 :].split()
    if len(rest) < 22:
        raise ParseError(what, f"{len(rest)} fields after comm, need at least 22")
    numbers = {name: to_int(rest[index], what) for index, name in enumerate(_STAT_HEAD[1:], 1)}
    numbers.update((name, to_int(rest[i], what)) for name, i in _STAT_TAIL.items() if i < len(rest))
    return PidStat(
        pid=pid,
        comm=comm,
        state=rest[0],
        starttime=to_int(rest[19], what),
        vsize=to_int(rest[20], what),
        rss=to_int(rest[21], what),
        **numbers,
    )


class PidStatus(Record, frozen=True):
    """/proc/PID/status. Sizes in bytes. ``fields`` holds every line as text."""

    fields: dict[str, str]
    name: str | None
    state: str | None  # one letter
    tgid: int | None
    pid: int | None
    ppid: int | None
    uid_real: int | None
    uid_effective: int | None
    gid_real: int | None
    fd_size: int | None  # slots in the fd table, not open fds
    threads: int | None
    vm_peak: int | None
    vm_size: int | None
    vm_hwm: int | None
    vm_rss: int | None
    rss_anon: int | None
    rss_file: int | None
    rss_shmem: int | None
    vm_swap: int | None
    voluntary_ctxt_switches: int | None
    nonvoluntary_ctxt_switches: int | None
    warnings: Warnings = ()


def _status_int(fields: dict[str, str], key: str, index: int = 0) -> int | None:
    tokens = fields.get(key, "").split()
    if len(tokens) <= index:
        return None
    try:
        value = int(tokens[index])
    except ValueError:
        return None
    return value * 1024 if tokens[-1] == "kB" else value


def parse_pid_status(data: Raw) -> PidStatus:
    fields: dict[str, str] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/PID/status", warnings), 1):
        key, sep, value = line.partition(":")
        if not sep:
            if line.strip():
                warnings.append(line_warning("/proc/PID/status", lineno, line, "no ':'"))
            continue
        fields[key] = value.strip()
    state = fields.get("State", "").split()
    sizes = {
        "vm_peak": "VmPeak",
        "vm_size": "VmSize",
        "vm_hwm": "VmHWM",
        "vm_rss": "VmRSS",
        "rss_anon": "RssAnon",
        "rss_file": "RssFile",
        "rss_shmem": "RssShmem",
        "vm_swap": "VmSwap",
    }
    return PidStatus(
        fields=fields,
        # the kernel escapes nothing in Name but a newline (as "\n"); keep as is
        name=fields.get("Name"),
        state=state[0] if state else None,
        tgid=_status_int(fields, "Tgid"),
        pid=_status_int(fields, "Pid"),
        ppid=_status_int(fields, "PPid"),
        uid_real=_status_int(fields, "Uid", 0),
        uid_effective=_status_int(fields, "Uid", 1),
        gid_real=_status_int(fields, "Gid", 0),
        fd_size=_status_int(fields, "FDSize"),
        threads=_status_int(fields, "Threads"),
        voluntary_ctxt_switches=_status_int(fields, "voluntary_ctxt_switches"),
        nonvoluntary_ctxt_switches=_status_int(fields, "nonvoluntary_ctxt_switches"),
        warnings=tuple(warnings),
        **{field: _status_int(fields, key) for field, key in sizes.items()},
    )


class Limit(Record, frozen=True):
    soft: int | None  # None: unlimited
    hard: int | None
    units: str  # "files", "bytes", "seconds", ... or "" (nice, realtime priority)


class PidLimits(Record, frozen=True):
    """/proc/PID/limits keyed by the kernel's names ("Max open files", ...)."""

    limits: dict[str, Limit]
    warnings: Warnings = ()

    @property
    def max_open_files(self) -> Limit | None:
        return self.limits.get("Max open files")


def _limit_value(token: str) -> int | None:
    return None if token == "unlimited" else to_int(token, "/proc/PID/limits")


def parse_pid_limits(data: Raw) -> PidLimits:
    """The kernel prints "%-25s %-20s %-20s %-10s": the name is the first 25
    characters (names contain spaces), then soft, hard and units."""
    limits: dict[str, Limit] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/PID/limits", warnings), 1):
        if lineno == 1 and line.startswith("Limit"):
            continue
        if not line.strip():
            continue
        name, tokens = line[:25].strip(), line[25:].split()
        try:
            if not name or len(tokens) not in (2, 3):
                raise ParseError("/proc/PID/limits", "expected name, soft, hard[, units]")
            limits[name] = Limit(
                soft=_limit_value(tokens[0]),
                hard=_limit_value(tokens[1]),
                units=tokens[2] if len(tokens) == 3 else "",
            )
        except ParseError as exc:
            warnings.append(line_warning("/proc/PID/limits", lineno, line, exc.reason))
    return PidLimits(limits=limits, warnings=tuple(warnings))


class PidIo(Record, frozen=True):
    """/proc/PID/io: rchar/wchar count every read()/write() byte (page cache
    included); read_bytes/write_bytes are what reached the block layer."""

    rchar: int | None
    wchar: int | None
    syscr: int | None
    syscw: int | None
    read_bytes: int | None
    write_bytes: int | None
    cancelled_write_bytes: int | None
    warnings: Warnings = ()


def parse_pid_io(data: Raw) -> PidIo:
    values: dict[str, int] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/PID/io", warnings), 1):
        key, sep, value = line.partition(":")
        if not line.strip():
            continue
        try:
            if not sep:
                raise ParseError("/proc/PID/io", "no ':'")
            values[key.strip()] = to_int(value.strip(), "/proc/PID/io")
        except ParseError as exc:
            warnings.append(line_warning("/proc/PID/io", lineno, line, exc.reason))
    keys = ("rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes")
    return PidIo(warnings=tuple(warnings), **{k: values.get(k) for k in keys})
