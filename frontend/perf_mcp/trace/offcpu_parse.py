"""Off-CPU stacks from the off-CPU ladder's programs (pure: text in, typed data out).

One shape for every rung: a list of `OffcpuStack` (who blocked, where, and for
how many microseconds in total) plus counters for what could not be read.

Frame order: `frames` is ROOT-FIRST (outermost caller first, the function that
blocked last), the order of a folded stack (`comm;root;...;leaf`). The last
`kernel_frames` entries are kernel frames (the leaf side: the user code calls
into the kernel, which then sleeps in __schedule).

libbpf-tools `offcputime` (no folded option) prints one entry per distinct
(thread, kernel stack, user stack), leaf first, a blank line between entries:

        bpf_prog_6896d07dd3e1383c_sched_switch    <- the tracer's own frames (dropped)
        bpf_trace_run4
        __schedule
        schedule
        anon_pipe_read
        ...
        entry_SYSCALL_64_after_hwframe            <- last kernel frame
        read
        perfmcp_reader_loop
        main
        -                pmcp_reader (7388)      <- comm (thread id)
            1901922                                <- off-CPU microseconds

The number in parentheses is the kernel task id (`key.pid`, = the thread id;
the main thread's equals the process id): it is `pid` (as printed) and `tid`
here; `tgid` stays None because offcputime does not print the process id (with
`-p PID` every entry belongs to PID). The kernel/user boundary is not printed
either: it is placed after the first syscall/exception entry frame
(entry_SYSCALL_64*, asm_exc_*, ...); a stack with no such frame is all kernel
when it has no user part (kernel threads) -- see `_kernel_depth`.

Hazard handled: when the user stack of an entry is missing, offcputime writes
"[Missed User Stack]" to stderr and skips that entry's trailer, so its kernel
frames run into the next entry on stdout. Each kernel stack starts with the
tracer's frame (bpf_prog_*), so a second tracer frame inside one entry marks
the start of the real entry; the lost frames before it are counted in
`lost_entries` and dropped, never pinned on the wrong thread.

Robustness: unparseable lines are counted in `bad_lines` and skipped; an entry
cut short by the end of the text (output truncated at the broker's cap) is
dropped and flagged `truncated`, never guessed.
"""

from __future__ import annotations

import re

import msgspec


class OffcpuStack(msgspec.Struct, kw_only=True):
    comm: str
    pid: int  # the id as the program printed it (offcputime: the thread id)
    tid: int | None = None  # thread id when known
    tgid: int | None = None  # process id when known
    frames: list[str]  # ROOT-FIRST; the blocking leaf is frames[-1]
    kernel_frames: int = 0  # how many of the last frames are kernel frames
    offcpu_us: int


class OffcpuParse(msgspec.Struct, kw_only=True):
    stacks: list[OffcpuStack]
    bad_lines: int = 0
    truncated: bool = False  # the text ended inside an entry (dropped)
    lost_entries: int = 0  # entries the program printed without their trailer (dropped)

    @property
    def total_us(self) -> int:
        return sum(s.offcpu_us for s in self.stacks)


# Frames of the tracer itself at the leaf of every kernel stack (BPF program, trace glue).
_TRACER_FRAME = re.compile(r"^(bpf_prog_[0-9a-f]+_\w*|bpf_trace_run\d+|__bpf_trace_\w+|__traceiter_\w+|"
                           r"bpf_prog_\w+|__bpf_prog_run\w*)$")
# The outermost kernel frame of a user task's kernel stack: syscall, exception or interrupt entry.
_KERNEL_ENTRY = re.compile(r"^(entry_SYSCALL\w*|entry_SYSENTER\w*|entry_INT80\w*|asm_(exc|sysvec|common)_\w+|"
                           r"ret_from_fork\w*|ret_from_intr|common_interrupt_return|xen_\w*hypercall\w*)$")
# offcputime -v frame: "#3  0x00007f.. name+0x1f (/usr/lib/libc.so.6+0x1234)" or "#3  0x.. [unknown]".
_VERBOSE_FRAME = re.compile(r"^#\d+\s+0x[0-9a-fA-F]+\s+(.*)$")
_TRAILER = re.compile(r"^-\s+(.*)\s\((-?\d+)\)$")


def _frame_name(line: str) -> str | None:
    name = line.strip()
    if not name or "\x00" in name:
        return None
    m = _VERBOSE_FRAME.match(name)
    if m:
        name = m.group(1)
        if name.endswith(")") and " (" in name:  # drop " (dso+0xoff)"
            name = name[: name.rfind(" (")]
        plus = name.rfind("+0x")
        if plus > 0:
            name = name[:plus]
    return name or None


def _is_tracer(name: str) -> bool:
    return name.startswith(("bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__traceiter_", "__bpf_prog_run")) \
        and _TRACER_FRAME.match(name) is not None


def _kernel_depth(leaf_first: list[str], had_tracer: bool) -> int:
    """How many leading (leaf-side) frames are the kernel's.

    After the first entry frame everything is user code. A stack with no entry
    frame is all kernel when its kernel stack was seen (the tracer frame led it):
    kernel threads never enter from user space.
    """
    for i, name in enumerate(leaf_first):
        if _KERNEL_ENTRY.match(name):
            i += 1
            while i < len(leaf_first) and _KERNEL_ENTRY.match(leaf_first[i]):  # ret_from_fork, ret_from_fork_asm
                i += 1
            return i
    return len(leaf_first) if had_tracer else 0


def _finish(comm: str, tid: int, us: int, leaf_first: list[str], had_tracer: bool) -> OffcpuStack:
    k = _kernel_depth(leaf_first, had_tracer)
    return OffcpuStack(comm=comm, pid=tid, tid=tid, tgid=None, frames=leaf_first[::-1], kernel_frames=k,
                       offcpu_us=us)


def parse_offcputime(text: str) -> OffcpuParse:
    """Parse libbpf-tools offcputime's multi-line stacks; never raises on malformed input."""
    stacks: list[OffcpuStack] = []
    bad = 0
    lost = 0
    frames: list[str] = []  # leaf first, tracer frames removed
    had_tracer = False
    pending: tuple[str, int] | None = None  # (comm, tid) after the trailer, waiting for the total

    lines = text.split("\n")
    cut_line = lines.pop()  # "" after a final newline; else a partial line, never parsed
    for raw in lines:
        line = raw.rstrip("\r")
        s = line.strip()
        if not s:
            if pending is not None:  # a trailer without its total
                bad += 1
                pending = None
                frames, had_tracer = [], False
            continue
        if pending is not None:
            if s.isdecimal():
                stacks.append(_finish(pending[0], pending[1], int(s), frames, had_tracer))
            else:
                bad += 1
            pending = None
            frames, had_tracer = [], False
            continue
        if s.startswith("-") and not s.startswith("->"):
            m = _TRAILER.match(s)
            if m is None:
                bad += 1
                frames, had_tracer = [], False
                continue
            pending = (m.group(1).strip(), int(m.group(2)))
            continue
        if not line.startswith(" "):  # frames and trailers are indented; anything else is noise
            bad += 1
            continue
        name = _frame_name(s)
        if name is None:
            bad += 1
            continue
        if _is_tracer(name):
            if frames:  # the previous entry lost its trailer (missed user stack): drop its frames
                lost += 1
                frames = []
            had_tracer = True
            continue
        frames.append(name)
    truncated = bool(frames) or had_tracer or pending is not None or bool(cut_line.strip())
    return OffcpuParse(stacks=stacks, bad_lines=bad, truncated=truncated, lost_entries=lost)
