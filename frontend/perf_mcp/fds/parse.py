"""File descriptors: what a readlink target says about the fd, and the broker's fd_table text (pure).

readlink(/proc/PID/fd/N) gives a path for files, directories and devices, and a
"type:[inode]" or "anon_inode:..." form for everything else (fs/d_path.c,
fs/anon_inodes.c): socket:[123], pipe:[123], anon_inode:[eventfd],
anon_inode:[eventpoll], anon_inode:inotify, anon_inode:[pidfd], ...

The broker's fd_table step prints "limits\\n", /proc/PID/limits verbatim,
"fds\\n", then one "FD<TAB>TARGET\\n" line per descriptor
(perf_mcp_protocol.FdTable). A file name may itself hold a newline; a line that
does not start with "digits<TAB>" therefore continues the previous target.
"""

from __future__ import annotations

import msgspec

from ..procfs import Limit, ParseError, parse_pid_limits

# anon_inode names (with or without brackets) -> type
_ANON_TYPES = {
    "eventfd": "eventfd",
    "eventpoll": "epoll",
    "timerfd": "timerfd",
    "signalfd": "signalfd",
    "inotify": "inotify",
    "fanotify": "fanotify",
    "pidfd": "pidfd",
    "io_uring": "io_uring",
    "userfaultfd": "userfaultfd",
    "perf_event": "perf_event",
    "bpf-map": "bpf",
    "bpf-prog": "bpf",
    "bpf_link": "bpf",
    "bpf-link": "bpf",
}
# "name:[inode]" pseudo files
_PSEUDO_TYPES = {"socket": "socket", "pipe": "pipe", "net": "namespace", "mnt": "namespace", "pid": "namespace",
                 "user": "namespace", "uts": "namespace", "ipc": "namespace", "cgroup": "namespace",
                 "time": "namespace", "pidfd": "pidfd"}

FD_TYPES = ("file", "socket", "pipe", "eventfd", "epoll", "timerfd", "signalfd", "inotify",
            "fanotify", "pidfd", "io_uring", "userfaultfd", "perf_event", "bpf", "namespace", "memfd", "device",
            "tty", "deleted_file", "anon_inode", "other")


def printable(target: str) -> str:
    """A target that JSON can carry: bytes that are not UTF-8 (which os.readlink
    returns as surrogate escapes) become \\xNN."""
    return target.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def classify_target(target: str) -> str:
    """The type of an fd from its readlink target."""
    if target.startswith("anon_inode:"):
        name = target[len("anon_inode:"):].strip("[]")
        return _ANON_TYPES.get(name, "anon_inode")
    if target.startswith("/memfd:"):
        return "memfd"
    if target.startswith("/"):
        if target.endswith(" (deleted)"):
            return "deleted_file"
        if target.startswith(("/dev/pts/", "/dev/tty")) or target == "/dev/console":
            return "tty"
        if target.startswith("/dev/"):
            return "device"
        return "file"
    name, sep, rest = target.partition(":")
    if sep and rest.startswith("[") and rest.endswith("]"):
        return _PSEUDO_TYPES.get(name, "other")
    return "other"


class FdTable(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of a process's descriptors and its open-files limit."""

    fds: dict[int, str]  # fd number -> readlink target
    open_files: Limit | None  # "Max open files" from /proc/PID/limits
    warnings: tuple[str, ...] = ()


def count_by_type(fds: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for target in fds.values():
        kind = classify_target(target)
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def parse_fd_lines(text: str, warnings: list[str]) -> dict[int, str]:
    fds: dict[int, str] = {}
    last: int | None = None
    for line in text.split("\n"):
        number, tab, target = line.partition("\t")
        if tab and number.isdecimal():
            last = int(number)
            fds[last] = target
        elif last is not None and line:
            fds[last] += "\n" + line  # a target holding a newline
        elif line:
            warnings.append(f"fd_table: line without 'FD<TAB>TARGET': {line[:60]!r}")
    return fds


def parse_fd_table(stdout: bytes) -> FdTable:
    """The broker's fd_table output. ParseError when the frame is not there
    (no "limits" header or no "fds" line)."""
    text = stdout.decode("utf-8", "backslashreplace")
    if not text.startswith("limits\n"):
        raise ParseError("fd_table", "does not start with a 'limits' line")
    body = text[len("limits\n"):]
    limits_text, sep, fd_text = body.partition("\nfds\n")
    if not sep:
        if body.startswith("fds\n"):
            limits_text, fd_text = "", body[len("fds\n"):]
        else:
            raise ParseError("fd_table", "no 'fds' line after the limits")
    warnings: list[str] = []
    open_files = None
    if limits_text:
        limits = parse_pid_limits(limits_text + "\n")
        warnings.extend(limits.warnings)
        open_files = limits.max_open_files
    if fd_text and not fd_text.endswith("\n"):
        warnings.append("fd_table: the last line has no newline (cut at the broker's output cap?)")
        fd_text = fd_text.rsplit("\n", 1)[0] if "\n" in fd_text else ""
    fds = parse_fd_lines(fd_text, warnings)
    return FdTable(fds=fds, open_files=open_files, warnings=tuple(warnings))
