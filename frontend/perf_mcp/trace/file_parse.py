"""Parsers for perf_file_trace: pure functions from a program's bytes to typed records.

Opens (OpenRecords):
- libbpf-tools `opensnoop -T -U -e`: "%-8s " wall clock HH:MM:SS, "%-7d " uid,
  "%-6d %-16s %3d %3d " pid comm fd errno, "%08o " flags, then the path as given
  to open/openat (cut at 254 bytes). A failed open prints fd -1 and a positive
  errno. opensnoop traces open and openat (not openat2 or creat).
- the broker's opens.bt (bpftrace -f json): "O t_ns pid tid ret flags comm16path".

Slow calls (SlowRecords):
- the broker's fileslow.bt: "S end_ns pid tid op fd lat_ns ret comm16path" and the
  maps @calls / @slow per op (0-7: read write pread64 pwrite64 readv writev fsync
  fdatasync). The path is empty when the fd was opened before the trace.
- libbpf-tools `fsslower -c` (CSV): ENDTIME_ns,TASK,PID,TYPE,BYTES,OFFSET_b,LATENCY_us,FILE
  with TYPE R W O F and FILE the dentry's name only (no directory).

File lifecycle (LifeRecords):
- the broker's filelife.bt: "C t_ns pid tid fd flags comm16path" (an open with
  O_CREAT that succeeded) and "U t_ns pid tid comm16path" (an unlink); paired here
  by path (pair_lifecycle).
- libbpf-tools `filelife`: "%-8s %-6d %-16s %-7.2f %s" clock, pid, comm, age in
  seconds (10 ms steps), file name (no directory).

In the bpftrace records the comm is printed in 16 columns (a comm holds at most
15 bytes) so the path, free text, comes last; comm's own trailing spaces are lost.
Lines that do not parse (cut at the broker's cap, garbled) are counted in
bad_lines and said in warnings; they never raise. Bytes that are not UTF-8 become \\xNN.
"""

from __future__ import annotations

import re

import msgspec

from .exec_parse import _LOST, _PRINTF, _unescape_json, text

OPENSNOOP_PATH_BYTES = 254  # NAME_MAX 255 with the NUL
BPFTRACE_PATH_BYTES = 63  # BPFTRACE_STRLEN 64 with the NUL
OPS = ("read", "write", "pread64", "pwrite64", "readv", "writev", "fsync", "fdatasync")
FSSLOWER_OPS = {"R": "read", "W": "write", "O": "open", "F": "fsync"}
_COMM = 16


class OpenEvent(msgspec.Struct, kw_only=True):
    pid: int
    tid: int | None = None
    uid: int | None = None
    comm: str
    path: str
    flags: int
    fd: int  # -1 when failed
    errno: int = 0  # positive errno of a failed open
    t_s: float | None = None  # seconds since the trace started (bpftrace)
    clock: str | None = None  # HH:MM:SS wall clock (opensnoop)


class OpenRecords(msgspec.Struct, kw_only=True):
    opens: list[OpenEvent] = []
    warnings: list[str] = []
    bad_lines: int = 0
    lost_events: int = 0
    path_max_bytes: int = BPFTRACE_PATH_BYTES


class SlowOp(msgspec.Struct, kw_only=True):
    pid: int
    tid: int | None = None
    comm: str
    op: str
    fd: int | None = None
    path: str | None = None  # None: unknown (fd opened before the trace; resolved later)
    latency_ms: float
    ret: int | None = None  # bytes, or -errno
    t_s: float | None = None  # end of the call, seconds since the trace started


class SlowRecords(msgspec.Struct, kw_only=True):
    ops: list[SlowOp] = []
    calls: dict[str, int] = {}  # calls timed per op (bpftrace only)
    slow: dict[str, int] = {}  # calls over the threshold per op, lost records included (bpftrace only)
    warnings: list[str] = []
    bad_lines: int = 0
    lost_events: int = 0
    path_max_bytes: int = BPFTRACE_PATH_BYTES
    basename_only: bool = False  # fsslower names the file, not its directory


class Create(msgspec.Struct, kw_only=True):
    pid: int
    comm: str
    path: str
    flags: int
    t_ns: int


class Unlink(msgspec.Struct, kw_only=True):
    pid: int
    comm: str
    path: str
    t_ns: int


class FileLife(msgspec.Struct, kw_only=True):
    path: str
    age_ms: float
    pid: int  # the process that deleted it
    comm: str
    created_by_pid: int | None = None
    created_by_comm: str | None = None
    exclusive: bool | None = None  # created with O_EXCL: certainly a new file
    t_s: float | None = None  # deletion, seconds since the trace started


class LifeRecords(msgspec.Struct, kw_only=True):
    creates: list[Create] = []
    unlinks: list[Unlink] = []
    lives: list[FileLife] = []  # filelife gives these directly; pair_lifecycle for bpftrace
    t0_ns: int | None = None
    warnings: list[str] = []
    bad_lines: int = 0
    lost_events: int = 0
    age_resolution_ms: float = 0.001
    basename_only: bool = False


# ---------------------------------------------------------------- shared


def _lost(stderr: bytes) -> int:
    return sum(int(m) for m in re.findall(rb"[Ll]ost (\d+) events", stderr))


def _lines(stdout: bytes, what: str, warnings: list[str]) -> list[bytes]:
    lines = stdout.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:  # no newline at the end: cut inside this line
        lines.pop()
        warnings.append(f"{what}'s output ends inside a line (cut at the broker's cap?); that line is skipped")
    return lines


def _bad(warnings: list[str], n: int, what: str) -> None:
    if n:
        warnings.append(f"{n} {what} line(s) could not be read (cut or garbled) and were skipped")


def _int(b: bytes) -> int:
    if not b.lstrip(b"-").isdigit():
        raise ValueError(b)
    return int(b)


def _printf_records(stdout: bytes, maps: dict[str, object] | None = None) -> tuple[list[bytes], int, int, list[str]]:
    """bpftrace -f json: the printf payloads (without their newline), bad lines, lost events."""
    records: list[bytes] = []
    bad = lost = 0
    warnings: list[str] = []
    lines = stdout.split(b"\n")
    if lines and lines[-1].strip():
        warnings.append("bpftrace's output ends inside a line (cut at the broker's cap?); that line is skipped")
        lines.pop()
    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        m = _PRINTF.match(raw)
        if m is None:
            if lm := _LOST.match(raw):
                lost += int(lm.group(1))
            elif raw.startswith(b'{"type": "map"'):
                if maps is not None:
                    try:
                        obj = msgspec.json.decode(raw)
                        maps.update(obj["data"])
                    except (msgspec.DecodeError, KeyError, TypeError, UnicodeDecodeError):
                        bad += 1
            elif not raw.startswith(b'{"type": "attached_probes"'):
                bad += 1
            continue
        payload = _unescape_json(m.group(1))
        if payload is None or not payload.endswith(b"\n"):
            bad += 1
            continue
        records.append(payload[:-1])
    return records, bad, lost, warnings


def _comm_path(rest: bytes) -> tuple[str, bytes]:
    """"comm16path" -> (comm, path bytes)."""
    if len(rest) < _COMM:
        raise ValueError(rest)
    return text(rest[:_COMM].rstrip(b" ")), rest[_COMM:]


def _t0(records: list[bytes]) -> int | None:
    for rec in records:
        if rec.startswith(b"B "):
            try:
                return _int(rec[2:])
            except ValueError:
                return None
    return None


def _rel(t_ns: int, t0: int | None) -> float | None:
    return round((t_ns - t0) / 1e9, 6) if t0 is not None else None


# ---------------------------------------------------------------- opens

_OPENSNOOP = re.compile(rb"(\d\d:\d\d:\d\d) +(\d+) +(\d+) +(.{16}) +(-?\d+) +(\d+) ([0-7]{8}) (.*)", re.S)


def parse_opensnoop(stdout: bytes, stderr: bytes = b"") -> OpenRecords:
    """`opensnoop -T -U -e` text."""
    out = OpenRecords(path_max_bytes=OPENSNOOP_PATH_BYTES)
    for line in _lines(stdout, "opensnoop", out.warnings):
        if not line.strip() or line.startswith(b"TIME"):
            continue
        m = _OPENSNOOP.fullmatch(line)
        if m is None:
            out.bad_lines += 1
            continue
        clock, uid, pid, comm, fd, err, flags, path = m.groups()
        out.opens.append(OpenEvent(pid=int(pid), uid=int(uid), comm=text(comm.rstrip(b" ")), path=text(path),
                                   flags=int(flags, 8), fd=int(fd), errno=int(err) if int(fd) < 0 else 0,
                                   clock=clock.decode()))
    _bad(out.warnings, out.bad_lines, "opensnoop")
    out.lost_events = _lost(stderr)
    return out


def parse_opens_bpftrace(stdout: bytes, stderr: bytes = b"") -> OpenRecords:
    """opens.bt's records."""
    out = OpenRecords(path_max_bytes=BPFTRACE_PATH_BYTES)
    records, out.bad_lines, out.lost_events, out.warnings = _printf_records(stdout)
    t0 = _t0(records)
    for rec in records:
        if rec.startswith(b"B "):
            continue
        try:
            if not rec.startswith(b"O "):
                raise ValueError(rec[:8])
            _, t_ns, pid, tid, ret, flags, rest = rec.split(b" ", 6)
            comm, path = _comm_path(rest)
            r = _int(ret)
            out.opens.append(OpenEvent(pid=_int(pid), tid=_int(tid), comm=comm, path=text(path),
                                       flags=int(flags, 8), fd=r if r >= 0 else -1, errno=-r if r < 0 else 0,
                                       t_s=_rel(_int(t_ns), t0)))
        except (ValueError, IndexError):
            out.bad_lines += 1
    if t0 is None and out.opens:
        out.warnings.append("the trace's start record is missing: open times are unknown")
    _bad(out.warnings, out.bad_lines, "bpftrace")
    out.lost_events += _lost(stderr)
    return out


# ---------------------------------------------------------------- slow calls


def _count_map(value: object) -> dict[str, int]:
    out: dict[str, int] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            try:
                out[OPS[int(k)]] = int(v)
            except (ValueError, IndexError, TypeError):
                continue
    return out


def parse_fileslow_bpftrace(stdout: bytes, stderr: bytes = b"") -> SlowRecords:
    """fileslow.bt's records and its @calls / @slow maps."""
    out = SlowRecords(path_max_bytes=BPFTRACE_PATH_BYTES)
    maps: dict[str, object] = {}
    records, out.bad_lines, out.lost_events, out.warnings = _printf_records(stdout, maps)
    t0 = _t0(records)
    for rec in records:
        if rec.startswith(b"B "):
            continue
        try:
            if not rec.startswith(b"S "):
                raise ValueError(rec[:8])
            _, end_ns, pid, tid, op, fd, lat_ns, ret, rest = rec.split(b" ", 8)
            comm, path = _comm_path(rest)
            out.ops.append(SlowOp(pid=_int(pid), tid=_int(tid), comm=comm, op=OPS[_int(op)], fd=_int(fd),
                                  path=text(path) if path else None, latency_ms=round(_int(lat_ns) / 1e6, 3),
                                  ret=_int(ret), t_s=_rel(_int(end_ns), t0)))
        except (ValueError, IndexError):
            out.bad_lines += 1
    out.calls = _count_map(maps.get("@calls"))
    out.slow = _count_map(maps.get("@slow"))
    if not maps and (out.ops or t0 is not None):
        out.warnings.append("the tracer's call counts are missing (its exit was not seen): "
                            "only the slow calls listed are known")
    _bad(out.warnings, out.bad_lines, "bpftrace")
    out.lost_events += _lost(stderr)
    return out


def parse_fsslower_csv(stdout: bytes, stderr: bytes = b"") -> SlowRecords:
    """`fsslower -c` CSV: ENDTIME_ns,TASK,PID,TYPE,BYTES,OFFSET_b,LATENCY_us,FILE."""
    out = SlowRecords(path_max_bytes=OPENSNOOP_PATH_BYTES, basename_only=True)
    t0: int | None = None
    for line in _lines(stdout, "fsslower", out.warnings):
        if not line.strip() or line.startswith(b"ENDTIME"):
            continue
        # the comm may hold commas: the 6 fields after it are numbers and a letter, the file is last
        head, sep, tail = line.partition(b",")
        parts = tail.split(b",")
        try:
            if not sep or len(parts) < 6:
                raise ValueError(line[:20])
            # TASK may hold commas: PID,TYPE,BYTES,OFFSET,LAT from the first field that fits
            for i in range(1, len(parts) - 5):
                pid, kind, size, _off, lat = parts[i:i + 5]
                if pid.isdigit() and kind.decode("ascii", "replace") in FSSLOWER_OPS and \
                        (size == b"LL_MAX" or size.lstrip(b"-").isdigit()) and lat.isdigit():
                    comm = b",".join(parts[:i])
                    file = b",".join(parts[i + 5:])
                    end = _int(head)
                    t0 = end if t0 is None else min(t0, end)
                    out.ops.append(SlowOp(pid=int(pid), comm=text(comm), op=FSSLOWER_OPS[kind.decode()],
                                          path=text(file) or None, latency_ms=round(int(lat) / 1e3, 3),
                                          ret=None if size == b"LL_MAX" else int(size), t_s=float(end)))
                    break
            else:
                raise ValueError(line[:20])
        except (ValueError, UnicodeDecodeError):
            out.bad_lines += 1
    for op in out.ops:  # times relative to the first slow call seen (fsslower has no start record)
        op.t_s = round(((op.t_s or 0.0) - (t0 or 0)) / 1e9, 6)
    _bad(out.warnings, out.bad_lines, "fsslower")
    out.lost_events = _lost(stderr)
    return out


# ---------------------------------------------------------------- file lifecycle


def parse_filelife_bpftrace(stdout: bytes, stderr: bytes = b"") -> LifeRecords:
    """filelife.bt's create and unlink records (pair them with pair_lifecycle)."""
    out = LifeRecords()
    records, out.bad_lines, out.lost_events, out.warnings = _printf_records(stdout)
    out.t0_ns = _t0(records)
    for rec in records:
        if rec.startswith(b"B "):
            continue
        try:
            if rec.startswith(b"C "):
                _, t_ns, pid, _tid, _fd, flags, rest = rec.split(b" ", 6)
                comm, path = _comm_path(rest)
                out.creates.append(Create(pid=_int(pid), comm=comm, path=text(path), flags=int(flags, 8),
                                          t_ns=_int(t_ns)))
            elif rec.startswith(b"U "):
                _, t_ns, pid, _tid, rest = rec.split(b" ", 4)
                comm, path = _comm_path(rest)
                out.unlinks.append(Unlink(pid=_int(pid), comm=comm, path=text(path), t_ns=_int(t_ns)))
            else:
                raise ValueError(rec[:8])
        except (ValueError, IndexError):
            out.bad_lines += 1
    _bad(out.warnings, out.bad_lines, "bpftrace")
    out.lost_events += _lost(stderr)
    out.lives = pair_lifecycle(out.creates, out.unlinks, out.t0_ns)
    return out


O_EXCL = 0o200


def pair_lifecycle(creates: list[Create], unlinks: list[Unlink], t0_ns: int | None = None) -> list[FileLife]:
    """Each unlink with the latest create of the same path before it (by time).

    A path created twice before one unlink counts from its latest create; an
    unlink without a create in the trace (the file is older) is not a life."""
    by_path: dict[str, list[Create]] = {}
    for c in sorted(creates, key=lambda c: c.t_ns):
        by_path.setdefault(c.path, []).append(c)
    lives = []
    for u in sorted(unlinks, key=lambda u: u.t_ns):
        pending = by_path.get(u.path)
        if not pending:
            continue
        before = [c for c in pending if c.t_ns <= u.t_ns]
        if not before:
            continue
        c = before[-1]
        # the file is gone: its creates up to this unlink are used
        by_path[u.path] = [x for x in pending if x.t_ns > u.t_ns]
        lives.append(FileLife(path=u.path, age_ms=round((u.t_ns - c.t_ns) / 1e6, 3), pid=u.pid, comm=u.comm,
                              created_by_pid=c.pid, created_by_comm=c.comm, exclusive=bool(c.flags & O_EXCL),
                              t_s=_rel(u.t_ns, t0_ns)))
    return lives


_FILELIFE = re.compile(rb"(\d\d:\d\d:\d\d) +(\d+) +(.{16}) (\d+\.\d+) +(.*)", re.S)


def parse_filelife(stdout: bytes, stderr: bytes = b"") -> LifeRecords:
    """libbpf-tools filelife text (age in seconds, 2 decimals; the file's name only)."""
    out = LifeRecords(age_resolution_ms=10.0, basename_only=True)
    for line in _lines(stdout, "filelife", out.warnings):
        if not line.strip() or line.startswith(b"TIME") or line.startswith(b"Tracing"):
            continue
        m = _FILELIFE.fullmatch(line)
        if m is None:
            out.bad_lines += 1
            continue
        _clock, pid, comm, age, path = m.groups()
        out.lives.append(FileLife(path=text(path), age_ms=round(float(age) * 1000.0, 3), pid=int(pid),
                                  comm=text(comm.rstrip(b" "))))
    _bad(out.warnings, out.bad_lines, "filelife")
    out.lost_events = _lost(stderr)
    return out
