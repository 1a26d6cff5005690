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
    window_s: float | None = None  # the traced window, when the program reports it (bpftrace, perf)

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


def _drop_tracer(leaf_first: list[str]) -> list[str]:
    """Without the tracer's own frames at the leaf (bpftrace may show __traceiter_sched_switch)."""
    i = 0
    while i < len(leaf_first) and _is_tracer(leaf_first[i]):
        i += 1
    return leaf_first[i:] if i else leaf_first


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


def _merge(stacks: list[OffcpuStack]) -> list[OffcpuStack]:
    """One entry per thread and stack: the kernel sometimes shows the tracer's frame
    (__traceiter_sched_switch) and sometimes not, which splits one stack in two until
    that frame is dropped."""
    out: dict[tuple[str, int, int | None, int | None, tuple[str, ...], int], OffcpuStack] = {}
    for s in stacks:
        key = (s.comm, s.pid, s.tid, s.tgid, tuple(s.frames), s.kernel_frames)
        if key in out:
            out[key].offcpu_us += s.offcpu_us
        else:
            out[key] = msgspec.structs.replace(s)
    return list(out.values())


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
    return OffcpuParse(stacks=_merge(stacks), bad_lines=bad, truncated=truncated, lost_entries=lost)


# ---------------------------------------------------------------- bpftrace (broker script offcpu.bt)

# Key of @offcpu_us as bpftrace -f json prints a tuple key: "comm,tgid,tid,\n<kstack>\n,\n<ustack>\n"
# (an empty user stack, as for kernel threads, leaves the key ending in ",").
_BT_KEY = re.compile(r"^(?P<comm>.*),(?P<tgid>-?\d+),(?P<tid>-?\d+),\n(?P<k>.*?)\n?,(?:\n(?P<u>.*))?$", re.S)
_BT_OFFSET = re.compile(r"\+\d+$")


def _bt_frames(block: str | None) -> list[str]:
    """bpftrace stack text, leaf first: 'name+off' lines; an unresolved frame is its address."""
    out = []
    for line in (block or "").split("\n"):
        name = line.strip()
        if not name:
            continue
        if name.startswith("0x"):
            name = "[unknown]"
        else:
            name = _BT_OFFSET.sub("", name)
        out.append(name.replace(";", ":"))
    return out


def parse_bpftrace_offcpu(raw: bytes | str) -> OffcpuParse:
    """The @offcpu_us map of offcpu.bt (`bpftrace -f json`); never raises on malformed input."""
    from .bpftrace import parse_json_lines  # same package; kept local so this module stays import-light

    # Through str and back: invalid UTF-8 (output cut inside a character) becomes U+FFFD, which the
    # JSON reader rejects per line instead of raising.
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    data = text.encode("utf-8", "replace")
    out = parse_json_lines(data)
    bad = out.bad_lines
    stacks: list[OffcpuStack] = []
    table = out.maps.get("@offcpu_us")
    if table is not None and not isinstance(table, dict):
        table, bad = None, bad + 1
    for key, value in (table or {}).items():
        m = _BT_KEY.match(key) if isinstance(key, str) else None
        if m is None or not isinstance(value, int) or isinstance(value, bool) or value < 0:
            bad += 1
            continue
        kernel = _drop_tracer(_bt_frames(m.group("k")))
        user = _bt_frames(m.group("u"))
        leaf_first = kernel + user
        tid, tgid = int(m.group("tid")), int(m.group("tgid"))
        stacks.append(OffcpuStack(comm=m.group("comm"), pid=tgid, tid=tid, tgid=tgid, frames=leaf_first[::-1],
                                  kernel_frames=len(kernel), offcpu_us=value))
    # bpftrace prints the map at exit; output cut before it (or mid-line) leaves no map or a bad line.
    truncated = table is None and (out.bad_lines > 0 or out.attached_probes is not None)
    window_us = out.maps.get("@window_us")
    window = round(window_us / 1e6, 3) if isinstance(window_us, int) and window_us > 0 else None
    return OffcpuParse(stacks=_merge(stacks), bad_lines=bad, truncated=truncated, window_s=window)


# ---------------------------------------------------------------- perf (record sched_switch -g --switch-events)

# perf script --ns --show-switch-events -F comm,pid,tid,time,trace,ip,sym,dso prints, per thread:
#   pmcp_napper 16531/16534   946.427926413: PERF_RECORD_SWITCH IN
#   pmcp_napper 16531/16534   946.427956407: prev_comm=pmcp_napper prev_pid=16534 ... ==> next_comm=... next_pid=...
#   \tffffffff821f8b58 __schedule ([kernel.kallsyms])          <- the stack at the switch OUT, leaf first
#   \t            12c5 perfmcp_sleep_us (/tmp/offw/wl)
#   <blank>
#   pmcp_napper 16531/16534   946.427962285: PERF_RECORD_SWITCH OUT
# (system-wide: PERF_RECORD_SWITCH_CPU_WIDE IN/OUT with the other task's ids after them). A switch
# record is written in the context of the task switched in or out itself, so a thread's return
# to the CPU is seen even when it comes from the idle task (whose sched_switch samples perf
# drops here). The comm may be padded with spaces on the left and may hold spaces itself.
_PERF_HEAD = re.compile(r"^\s*(?P<comm>.*?)\s+(?P<pid>-?\d+)/(?P<tid>-?\d+)\s+(?P<t>\d+)\.(?P<ns>\d{9}):\s+(?P<rest>.*)$")
_PERF_SWITCH_REC = re.compile(r"^PERF_RECORD_SWITCH(?:_CPU_WIDE)?\s+(?P<dir>IN|OUT)\b")
_SCHED_SWITCH = re.compile(r"^prev_comm=.* prev_pid=(?P<prev>-?\d+) prev_prio=-?\d+ prev_state=\S+ ==> "
                           r"next_comm=.* next_pid=(?P<next>-?\d+) next_prio=-?\d+\s*$")


class PerfOffcpu(msgspec.Struct, kw_only=True):
    """parse_perf_offcpu's answer: the stacks and what the pairing of switches left over."""

    parse: OffcpuParse
    blocks: int = 0  # blocks counted (switch OUT with a stack, then switch IN)
    open_blocks: int = 0  # threads still off-CPU at the end (not counted, as offcputime)
    short_blocks: int = 0  # blocks under min_block_us (left out)
    window_s: float = 0.0  # from the first to the last event seen


def parse_perf_offcpu(text: str, *, min_block_us: int = 1, pid: int | None = None) -> PerfOffcpu:
    """Off-CPU time by stack from `perf record -e sched:sched_switch -g --switch-events` read back
    with `perf script --ns --show-switch-events -F comm,pid,tid,time,trace,ip,sym,dso`.

    A block runs from a thread's sched_switch sample (its stack, as it leaves the CPU) to its next
    PERF_RECORD_SWITCH IN; min_block_us and pid (process id) are applied here. Never raises.
    """
    from ..profile.perf_script import parse_frame_line  # the same frame naming as perf_cpu_profile

    totals: dict[tuple[str, int, int, tuple[str, ...], int], int] = {}
    pending: dict[int, tuple[int, tuple[str, int, int, tuple[str, ...], int]]] = {}  # tid -> (t_out, key)
    names: dict[str, tuple[str, bool] | None] = {}
    bad = blocks = short = 0
    first_t: int | None = None
    last_t = 0
    sample: tuple[int, str, int, int] | None = None  # t_ns, comm, tgid, tid of the switch OUT being read
    skipping = False  # frames of a readable event that is not kept (idle task, another process)
    frames: list[str] = []
    kdepth = 0
    user_seen = False

    def flush() -> None:
        nonlocal sample
        if sample is not None:
            t, comm, tgid, tid = sample
            pending[tid] = (t, (comm, tgid, tid, tuple(reversed(frames)), kdepth))
            sample = None

    lines = text.split("\n")
    cut_line = lines.pop()  # "" after a final newline; else a partial line, never parsed
    for line in lines:
        if not line.strip():
            flush()
            skipping = False
            continue
        if line[0] == "\t":
            if sample is None:
                bad += 0 if skipping else 1  # else: frames of an event whose header was unreadable
                continue
            if line in names:
                info = names[line]
            else:
                fi = parse_frame_line(line)
                info = names[line] = (fi.name, fi.kernel) if fi is not None else None
            if info is None:
                bad += 1
                continue
            if not frames and _is_tracer(info[0]):
                continue  # the tracer's own frame at the leaf
            frames.append(info[0])
            if info[1] and not user_seen:
                kdepth += 1
            else:
                user_seen = True
            continue
        flush()
        frames, kdepth, user_seen, skipping = [], 0, False, False
        m = _PERF_HEAD.match(line)
        if m is None:
            bad += 1
            continue
        t_ns = int(m.group("t")) * 1_000_000_000 + int(m.group("ns"))
        first_t = t_ns if first_t is None else first_t
        last_t = max(last_t, t_ns)
        tgid, tid, rest = int(m.group("pid")), int(m.group("tid")), m.group("rest")
        sw = _PERF_SWITCH_REC.match(rest)
        if sw is not None:
            if sw.group("dir") == "IN" and tid in pending:
                t_out, key = pending.pop(tid)
                us = (t_ns - t_out) // 1000
                if us < min_block_us:
                    short += 1
                else:
                    blocks += 1
                    totals[key] = totals.get(key, 0) + us
            continue
        ss = _SCHED_SWITCH.match(rest)
        if ss is None:
            bad += 1
            continue
        prev = int(ss.group("prev"))
        if prev == tid and tid != 0 and (pid is None or tgid == pid):
            sample = (t_ns, m.group("comm").strip().replace(";", ":"), tgid, tid)
        else:
            skipping = True
    truncated = bool(cut_line)  # even a cut in a frame line's indent loses that frame
    if truncated:
        sample = None  # the last stack may have lost frames: never guessed
    flush()
    stacks = [OffcpuStack(comm=c, pid=tg, tid=tid, tgid=tg, frames=list(fr), kernel_frames=k, offcpu_us=us)
              for (c, tg, tid, fr, k), us in totals.items()]
    window = (last_t - first_t) / 1e9 if first_t is not None else 0.0
    window_s = round(window, 3) if window > 0 else None
    return PerfOffcpu(parse=OffcpuParse(stacks=stacks, bad_lines=bad, truncated=truncated, window_s=window_s),
                      blocks=blocks,
                      open_blocks=len(pending), short_blocks=short, window_s=round(window, 3))
