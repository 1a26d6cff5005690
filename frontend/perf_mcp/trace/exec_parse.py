"""Parsers for perf_exec_trace: pure functions from a program's bytes to typed events.

Three outputs, one shape (ExecRecords: executions, exits, warnings):

- libbpf-tools `execsnoop -t -U -q --max-args N [-x]`: one text line per exec,
  fixed-width columns ("%-8.3f" seconds since start, "%-6d" uid, "%-16s" comm,
  then pid, ppid, ret) and the arguments, each in double quotes. The first
  "argument" is the path given to execve (argv[0] is not shown). execsnoop
  escapes `"` tab and newline inside an argument but not the backslash, so an
  argument holding a literal `\\n` reads back as a newline: the only ambiguity
  of its format. More arguments than N end the line with ` ...`.
- libbpf-tools `exitsnoop -t`: wall-clock HH:MM:SS, "%-16s" comm, pid, ppid,
  tid, age in seconds with 2 decimals (so lifetimes are known to 10 ms), then
  "0", "code N" or "signal N (NAME)[, core dumped]".
- the broker's bpftrace script execsnoop.bt with `-f json`: printf lines
  (B/E/A/M/R/X records, see the script's header) joined here by (tid, key),
  since lines of one exec may come from two CPUs out of order. bpftrace 0.17
  escapes a byte >= 0x80 in JSON as \\uffffffXX (a sign-extended char), which no
  JSON decoder reads back, so the printf payload is unescaped here byte-exactly.

Bytes that are not UTF-8 (arguments, comm) reach JSON as \\xNN. Lines that do
not parse (cut at the broker's output cap, garbled) are counted and reported
in `warnings`; they never raise.
"""

from __future__ import annotations

import re

import msgspec

_EXEC_ARG_BYTES = 128  # execsnoop's ARGSIZE: longer arguments are cut
_BPFTRACE_STR_BYTES = 63  # BPFTRACE_STRLEN 64 with the NUL


class ExecEvent(msgspec.Struct, kw_only=True):
    """One execve call (a successful exec, or a failed one when asked for)."""

    pid: int
    ppid: int
    uid: int | None
    comm: str  # the new program's name after a successful exec; the caller's when it failed
    args: list[str]  # args[0]: the path given to execve, then argv[1:]
    args_truncated: bool = False  # more arguments than max_args
    ret: int = 0  # 0, or -errno
    t_s: float | None = None  # seconds since the trace started


class ExitEvent(msgspec.Struct, kw_only=True):
    """A process's exit: its lifetime (fork to exit) and how it ended."""

    pid: int
    ppid: int
    comm: str
    lifetime_ms: float
    exit_code: int | None  # the status passed to exit(); None when killed by a signal
    signal: int | None = None
    core_dumped: bool = False
    uid: int | None = None


class ExecRecords(msgspec.Struct, kw_only=True):
    execs: list[ExecEvent] = []
    exits: list[ExitEvent] = []
    warnings: list[str] = []
    bad_lines: int = 0
    lost_events: int = 0
    arg_max_bytes: int = _EXEC_ARG_BYTES  # an argument this long may have been cut
    lifetime_resolution_ms: float = 10.0
    lifetimes_available: bool = True  # False for execsnoop alone (no exit records)


def text(raw: bytes) -> str:
    """Bytes to str; what is not UTF-8 becomes \\xNN."""
    return raw.decode("utf-8", "backslashreplace")


def _lost(stderr: bytes) -> int:
    return sum(int(m) for m in re.findall(rb"[Ll]ost (\d+) events", stderr))


def _bad(out: ExecRecords, what: str) -> None:
    if out.bad_lines:
        out.warnings.append(f"{out.bad_lines} {what} line(s) could not be read (cut or garbled) and were skipped")


# ---------------------------------------------------------------- libbpf-tools execsnoop

_TIME = re.compile(rb"(\d+\.\d{3}) *")
_DIGITS = re.compile(rb"\d+")
_ESCAPE = re.compile(rb'\\(["tn])')
_UNESCAPE = {b'"': b'"', b"t": b"\t", b"n": b"\n"}


def _execsnoop_args(field: bytes) -> tuple[list[str], bool] | None:
    """`"a" "b c" ` (or `"a" " ...` when cut at max_args) -> (["a", "b c"], cut)."""
    cut = field.endswith(b'" ...')
    if cut:
        field = field[:-5]  # the dangling opening quote and " ..."
    field = field.rstrip(b" ")
    if len(field) < 2 or not field.startswith(b'"') or not field.endswith(b'"'):
        return None
    # Arguments are separated by `" "`; an argument's own quote is printed \" so
    # it cannot produce that sequence (a quote followed by a space and a quote).
    parts = field[1:-1].split(b'" "')
    return [text(_ESCAPE.sub(lambda m: _UNESCAPE[m.group(1)], p)) for p in parts], cut


_TAIL = re.compile(rb"(.{0,16}?) +(\d+) +(\d+) +(-?\d+) (\".*)", re.S)


def _execsnoop_line(line: bytes) -> ExecEvent | None:
    m = _TIME.match(line)
    if not m:
        return None
    pos = max(8, len(m.group(1)))  # "%-8.3f" pads to 8 columns
    uid_m = _DIGITS.match(line, pos)
    if not uid_m:
        return None
    digits = uid_m.group(0)
    pos += max(6, len(digits))  # "%-6d", and no space after it
    # "%-16s %-6d %-6d %3d " then the quoted args; a comm (at most 15 bytes) may hold spaces.
    tail = _TAIL.fullmatch(line, pos)
    if tail is None:
        return None
    comm, pid, ppid, ret, field = tail.groups()
    parsed = _execsnoop_args(field)
    if parsed is None:
        return None
    args, cut = parsed
    uid, comm = _split_uid_comm(digits, comm, args[0], int(ret))
    return ExecEvent(pid=int(pid), ppid=int(ppid), uid=uid, comm=text(comm), args=args, args_truncated=cut,
                     ret=int(ret), t_s=float(m.group(1)))


def _split_uid_comm(digits: bytes, comm: bytes, path: str, ret: int) -> tuple[int, bytes]:
    """"%-6d" leaves no space after a uid of 6 digits or more, so a comm that starts
    with a digit runs into it (uid 123456, comm 7z: "1234567z"). After a successful
    exec the comm is the path's basename (first 15 bytes): the split that gives it
    wins; otherwise all the digits are the uid."""
    if len(digits) > 6 and ret == 0:
        want = path.rsplit("/", 1)[-1].encode("utf-8", "surrogateescape")[:15]
        for k in range(len(digits) - 1, 5, -1):
            if digits[k:] + comm == want:
                return int(digits[:k]), want
    return int(digits), comm


def parse_execsnoop(stdout: bytes, stderr: bytes = b"") -> ExecRecords:
    out = ExecRecords(arg_max_bytes=_EXEC_ARG_BYTES, lifetimes_available=False)
    lines = stdout.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:  # no newline at the end: the output was cut inside this line
        lines.pop()
        out.warnings.append("execsnoop's output ends inside a line (cut at the broker's cap?); that line is skipped")
    for line in lines:
        if not line.strip() or line.startswith(b"TIME"):
            continue
        ev = _execsnoop_line(line)
        if ev is None:
            out.bad_lines += 1
        else:
            out.execs.append(ev)
    _bad(out, "execsnoop")
    out.lost_events = _lost(stderr)
    return out


# ---------------------------------------------------------------- libbpf-tools exitsnoop

_CLOCK = re.compile(rb"\d\d:\d\d:\d\d ")
_CODE = re.compile(rb"(?:0|code (-?\d+))\s*$")
_SIGNAL = re.compile(rb"signal (\d+) \([^)]*\)(, core dumped)?\s*$")


def _exitsnoop_line(line: bytes) -> ExitEvent | None:
    if not _CLOCK.match(line):
        return None
    comm, rest = line[9:25], line[25:]
    if not rest.startswith(b" "):
        return None
    fields = rest.split(None, 4)
    if len(fields) != 5 or not all(f.isdigit() for f in fields[:3]):
        return None
    try:
        age_s = float(fields[3])
    except ValueError:
        return None
    code, sig, core = None, None, False
    if m := _CODE.match(fields[4]):
        code = int(m.group(1) or 0)
    elif m := _SIGNAL.match(fields[4]):
        sig, core = int(m.group(1)), m.group(2) is not None
    else:
        return None
    return ExitEvent(pid=int(fields[0]), ppid=int(fields[1]), comm=text(comm.rstrip(b" ")),
                     lifetime_ms=round(age_s * 1000.0, 3), exit_code=code, signal=sig, core_dumped=core)


def parse_exitsnoop(stdout: bytes, stderr: bytes = b"") -> ExecRecords:
    out = ExecRecords(lifetime_resolution_ms=10.0)
    lines = stdout.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()
        out.warnings.append("exitsnoop's output ends inside a line (cut at the broker's cap?); that line is skipped")
    for line in lines:
        if not line.strip() or line.startswith(b"TIME"):
            continue
        ev = _exitsnoop_line(line)
        if ev is None:
            out.bad_lines += 1
        else:
            out.exits.append(ev)
    _bad(out, "exitsnoop")
    out.lost_events = _lost(stderr)
    return out


# ---------------------------------------------------------------- bpftrace execsnoop.bt

_PRINTF = re.compile(rb'^\{"type": ?"printf", ?"data": ?"(.*)"\}\s*$')
_LOST = re.compile(rb'^\{"type": ?"lost_events", ?"data": ?\{"events": ?(\d+)\}\}')
_JSON_ESCAPE = re.compile(rb'\\(?:u(ffffff[0-9a-fA-F]{2}|[0-9a-fA-F]{4})|(.))', re.S)
_SIMPLE = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


def _unescape_json(body: bytes) -> bytes | None:
    """bpftrace's JSON string escapes back to the printed bytes (None: not valid)."""
    head = body[:-2]
    if body.endswith(b"\\n") and b"\\" not in head and b'"' not in head:
        return head + b"\n"  # the common case: nothing escaped but the final newline
    bad = False

    def one(m: re.Match[bytes]) -> bytes:
        nonlocal bad
        if m.group(1) is not None:
            value = int(m.group(1), 16)
            if value >= 0xFFFFFF00:  # a byte >= 0x80, sign-extended by bpftrace
                return bytes([value & 0xFF])
            return chr(value).encode("utf-8", "surrogatepass")
        simple = _SIMPLE.get(m.group(2))
        if simple is None:
            bad = True
            return b""
        return simple

    out = _JSON_ESCAPE.sub(one, body)
    if bad or re.search(rb'(?<!\\)"', body.replace(b"\\\\", b"")):
        return None
    return out


class _Pending(msgspec.Struct):
    pid: int | None = None
    uid: int | None = None
    ppid: int | None = None
    path: bytes | None = None
    args: dict[int, bytes] = {}
    more: bool = False
    ret: int | None = None
    comm: bytes | None = None


def _int(b: bytes) -> int:
    if not b.lstrip(b"-").isdigit():
        raise ValueError(b)
    return int(b)


def parse_bpftrace(stdout: bytes, stderr: bytes = b"", *, include_failed: bool = False) -> ExecRecords:
    """The printf records of execsnoop.bt joined into executions and exits."""
    out = ExecRecords(arg_max_bytes=_BPFTRACE_STR_BYTES, lifetime_resolution_ms=0.001)
    pending: dict[tuple[int, int], _Pending] = {}
    t0: int | None = None
    for raw in stdout.split(b"\n"):
        raw = raw.strip()
        if not raw:
            continue
        m = _PRINTF.match(raw)
        if m is None:
            if lost := _LOST.match(raw):
                out.lost_events += int(lost.group(1))
            elif not raw.startswith(b'{"type": "attached_probes"') and not raw.startswith(b'{"type": "map"'):
                out.bad_lines += 1
            continue
        payload = _unescape_json(m.group(1))
        if payload is None or not payload.endswith(b"\n"):
            out.bad_lines += 1
            continue
        try:
            t0 = _record(payload[:-1], pending, out, t0)
        except (ValueError, IndexError):
            out.bad_lines += 1
    _finish(pending, out, t0, include_failed)
    _bad(out, "bpftrace")
    out.lost_events += _lost(stderr)
    return out


def _record(rec: bytes, pending: dict[tuple[int, int], _Pending], out: ExecRecords, t0: int | None) -> int | None:
    kind = rec[:2]
    if kind == b"B ":
        return _int(rec[2:])
    if kind == b"E ":
        _, pid, tid, key, uid, ppid, path = rec.split(b" ", 6)
        p = pending.setdefault((_int(tid), _int(key)), _Pending())
        p.pid, p.uid, p.ppid, p.path = _int(pid), _int(uid), _int(ppid), path
    elif kind == b"A ":
        _, tid, key, idx, arg = rec.split(b" ", 4)
        p = pending.setdefault((_int(tid), _int(key)), _Pending())
        p.args = {**p.args, _int(idx): arg}
    elif kind == b"M ":
        _, tid, key = rec.split(b" ")
        pending.setdefault((_int(tid), _int(key)), _Pending()).more = True
    elif kind == b"R ":
        _, tid, key, ret, comm = rec.split(b" ", 4)
        p = pending.setdefault((_int(tid), _int(key)), _Pending())
        p.ret, p.comm = _int(ret), comm
    elif kind == b"X ":
        _, pid, ppid, uid, age_ns, status, comm = rec.split(b" ", 6)
        st = _int(status)
        sig = st & 0x7F
        out.exits.append(ExitEvent(pid=_int(pid), ppid=_int(ppid), uid=_int(uid), comm=text(comm),
                                   lifetime_ms=round(_int(age_ns) / 1e6, 3),
                                   exit_code=None if sig else (st >> 8) & 0xFF, signal=sig or None,
                                   core_dumped=bool(st & 0x80)))
    else:
        raise ValueError(rec[:8])
    return t0


def _finish(pending: dict[tuple[int, int], _Pending], out: ExecRecords, t0: int | None, include_failed: bool) -> None:
    no_return = no_entry = gaps = 0
    for (_tid, key), p in sorted(pending.items(), key=lambda kv: kv[0][1]):
        if p.path is None or p.pid is None or p.ppid is None:
            no_entry += 1  # the entry line was lost: nothing to say who ran what
            continue
        if p.ret is None:
            no_return += 1  # failed (not asked for), or still in execve when the trace ended
            continue
        if p.ret < 0 and not include_failed:
            continue
        idx = sorted(p.args)
        if idx != list(range(1, len(idx) + 1)):
            gaps += 1
        out.execs.append(ExecEvent(
            pid=p.pid, ppid=p.ppid, uid=p.uid, comm=text(p.comm or b""),
            args=[text(p.path), *(text(p.args[i]) for i in idx)], args_truncated=p.more, ret=p.ret,
            t_s=round((key - t0) / 1e9, 6) if t0 is not None else None))
    if t0 is None and out.execs:
        out.warnings.append("the trace's start record is missing: execution times are unknown")
    if no_entry:
        out.warnings.append(f"{no_entry} execution(s) lost their first record (cut or lost) and were skipped")
    if gaps:
        out.warnings.append(f"{gaps} execution(s) miss some arguments (records cut or lost)")
