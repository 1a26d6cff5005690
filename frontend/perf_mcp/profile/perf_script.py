"""Fold `perf script -F comm,pid,ip,sym,dso` output into stacks (pure).

Input (perf record -g): one sample per block, blocks separated by a blank line.

    python3  5089
    \t          fcc67 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)
    \t    7f8e5aa129c0 [unknown] ([unknown])

The header is `comm pid time:` (the broker's fields: -F comm,pid,time,ip,sym,dso),
`comm pid` (without time) or `comm pid/tid period` (-F comm,pid,tid,period,...:
older brokers, fixtures); comm may hold spaces, so it is split from the right.
The time (s) of the first and last sample give the window perf really sampled:
perf record takes 0.5-0.8 s to start on a loaded 2-CPU host, a quarter of a
3 s profile, which would otherwise read as idle. Frame lines start with a
tab and list the leaf first. The folded
form is `comm;root;...;leaf count`, one line per distinct stack, as
stackcollapse-perf.pl and `perf script report stackcollapse` write it, except
that an [unknown] symbol in a known DSO is shown as the DSO's basename in
brackets (`[libc.so.6]`), which says more than `[unknown]`.

Speed matters (the bench compares us with `perf script report stackcollapse`):
the loop looks at the first character of each line and memoises the name of
every distinct frame line, so most lines cost one dict lookup.

Robustness: unparseable lines are counted and skipped; a sample cut short by
the end of the text (output truncated at the broker's cap) is dropped and
reported, never guessed.
"""

from __future__ import annotations

import msgspec

KERNEL_DSOS = ("[kernel.kallsyms]", "[guest.kernel.kallsyms]")


class Folded(msgspec.Struct, kw_only=True):
    stacks: dict[str, int]  # "comm;root;...;leaf" -> samples
    samples: int
    bad_lines: int = 0
    dropped_partial_sample: bool = False
    kernel_frames: frozenset[str] = frozenset()  # frame names whose DSO is the kernel
    frame_dso: dict[str, str] = {}  # frame name -> DSO basename (first seen)
    # The same stacks apart by process: pid -> {"comm;root;...;leaf": samples}. Empty when the
    # source has no pids (a folded file read back): the analysis then works on `stacks`.
    by_pid: dict[int, dict[str, int]] = {}
    first_time_s: float | None = None  # perf's timestamp of the first and last sample, when the text has them
    last_time_s: float | None = None


class _FrameInfo(msgspec.Struct, array_like=True):
    name: str
    dso: str
    kernel: bool


def _split_sym_dso(rest: str) -> tuple[str, str] | None:
    """'sym (dso)' -> (sym, dso); the DSO is the last balanced parenthesised group."""
    if not rest.endswith(")"):
        return None
    i = rest.rfind(" (")
    if i >= 0:
        dso = rest[i + 2 : -1]
        if "(" not in dso and ")" not in dso:  # the common case: no parentheses inside
            return rest[:i], dso
    depth = 0
    for i in range(len(rest) - 1, -1, -1):
        c = rest[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                if i == 0 or rest[i - 1] != " ":
                    continue
                return rest[: i - 1], rest[i + 1 : -1]
    return None


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1] if "/" in path else path


def parse_frame_line(line: str) -> _FrameInfo | None:
    """One callchain line ('\\t  ip sym (dso)') -> its frame name, or None if malformed."""
    s = line.strip()
    ip, sep, rest = s.partition(" ")
    if not sep or not ip:
        return None
    try:
        int(ip, 16)
    except ValueError:
        return None
    parts = _split_sym_dso(rest.strip())
    if parts is None:
        return None
    sym, dso = parts
    sym = sym.strip()
    if not sym:
        return None
    kernel = dso in KERNEL_DSOS
    if sym == "[unknown]" and dso and dso != "[unknown]":
        base = _basename(dso)
        name = base if base.startswith("[") else f"[{base}]"
    else:
        name = sym
    # ';' separates frames in the folded format; a symbol never needs one.
    name = name.replace(";", ":")
    dso_name = _basename(dso) if dso else "[unknown]"
    return _FrameInfo(name=name, dso=dso_name, kernel=kernel)


def _pid_or_tid(s: str) -> bool:
    return s.isdecimal() or s == "-1"


def parse_header_pid(line: str) -> tuple[str, int] | None:
    """'comm pid/tid period' or 'comm pid' -> (comm (may be empty), pid), or None when it is not a header."""
    parts = line.rsplit(None, 2)
    if len(parts) >= 2 and parts[-1].isdecimal():
        pid, slash, tid = parts[-2].partition("/")
        if slash and _pid_or_tid(pid):  # 'comm pid/tid period'
            if not _pid_or_tid(tid):
                return None
            return (parts[0] if len(parts) == 3 else "").replace(";", ":").strip(), int(pid)
    comm, _, pid = line.rstrip().rpartition(" ")  # 'comm pid' (comm may hold '/' and digits)
    if not _pid_or_tid(pid):
        return None
    return comm.replace(";", ":").strip(), int(pid)


def parse_header(line: str) -> str | None:
    """'comm pid/tid period' or 'comm pid' -> comm (may be empty), or None when it is not a header."""
    parsed = parse_header_pid(line)
    return parsed[0] if parsed is not None else None


def fold(text: str) -> Folded:
    """Fold perf script text into stacks; never raises on malformed input."""
    counts: dict[tuple[str, ...], int] = {}  # leaf-first frames + comm + pid -> samples
    names: dict[str, str] = {}  # frame line -> frame name ("" = malformed)
    headers: dict[str, tuple[str, int] | None] = {}  # header line -> (comm, pid) (None = malformed)
    kernel: set[str] = set()
    frame_dso: dict[str, str] = {}
    samples = 0
    bad = 0
    comm: str | None = None  # comm of the sample being read
    pid = ""  # and its pid
    first_t: float | None = None
    last_t: float | None = None
    frames: list[str] = []  # its frames, leaf first

    lines = text.split("\n")
    # Text that does not end with a newline was cut: its last line is partial, never parse it.
    cut_line = lines.pop() if lines and lines[-1] else ""
    for line in lines:
        if not line:
            if comm is not None:
                frames.append(comm)
                frames.append(pid)
                key = tuple(frames)
                counts[key] = counts.get(key, 0) + 1
                samples += 1
                frames = []
                comm = None
            continue
        first = line[0]
        if first == "\t" or first == " ":
            name = names.get(line)
            if name is None:
                info = parse_frame_line(line)
                name = names[line] = info.name if info is not None else ""
                if info is not None:
                    if info.kernel:
                        kernel.add(name)
                    frame_dso.setdefault(name, info.dso)
            if not name or comm is None:
                bad += 1
            else:
                frames.append(name)
            continue
        if line[-1] == ":" or line[-2:] == ": ":  # 'comm pid time: ': the time apart, the rest memoised
            head, _, stamp = line.rstrip().rpartition(" ")
            try:
                t = float(stamp[:-1])
            except ValueError:
                head = line
            else:
                first_t = t if first_t is None or t < first_t else first_t
                last_t = t if last_t is None or t > last_t else last_t
        else:
            head = line
        if head in headers:
            header = headers[head]
        else:
            header = headers[head] = parse_header_pid(head)
        if comm is not None:  # the previous sample lost its blank line
            frames.append(comm)
            frames.append(pid)
            key = tuple(frames)
            counts[key] = counts.get(key, 0) + 1
            samples += 1
        frames = []
        comm, pid = (header[0], str(header[1])) if header is not None else (None, "")
        if header is None:
            # A garbled header: skip its frames rather than pin them on the wrong comm.
            bad += 1
    # The text ended inside a sample (or inside its header): that sample may be cut short.
    dropped = comm is not None or bool(cut_line.strip())
    stacks: dict[str, int] = {}
    by_pid: dict[int, dict[str, int]] = {}
    for key, n in counts.items():
        joined = ";".join(reversed(key[:-1]))
        stacks[joined] = stacks.get(joined, 0) + n
        mine = by_pid.setdefault(int(key[-1]), {})
        mine[joined] = mine.get(joined, 0) + n
    return Folded(stacks=stacks, samples=samples, bad_lines=bad, dropped_partial_sample=dropped,
                  kernel_frames=frozenset(kernel), frame_dso=frame_dso, by_pid=by_pid, first_time_s=first_t,
                  last_time_s=last_t)


def folded_text(stacks: dict[str, int]) -> str:
    """The folded-stacks file: one 'stack count' line per stack, sorted, as flamegraph.pl reads it."""
    return "".join(f"{stack} {count}\n" for stack, count in sorted(stacks.items()))


def parse_folded(text: str) -> dict[str, int]:
    """Read a folded-stacks file back (for tests and for comparing with other folders)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        stack, sep, count = line.rpartition(" ")
        if sep and count.isdecimal():
            out[stack] = out.get(stack, 0) + int(count)
    return out
