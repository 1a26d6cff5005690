"""Fold the JSON of the broker's profile.bt (bpftrace) into the same Folded as perf script (pure).

profile.bt prints, at exit, one map of sample counts keyed by
`pid, comm, kstack(perf), ustack(perf)` (@stacks) or, without kernel frames,
`pid, comm, ustack(perf)` (@ustacks). bpftrace's JSON joins the key's parts
with "," and writes each stack as "\\n" then one line per frame, leaf first:

    "6929,busy,,\\n\\t55f18ec5f158 perfmcp_busy_leaf+15 (/tmp/busy)\\n\\t7f82f9b2e24a __libc_start_call_main+122 (/usr/lib/x86_64-linux-gnu/libc.so.6)\\n"

kstack(perf) frames are `addr sym+off` (no DSO), ustack(perf) frames
`addr sym+off (dso)`; an address bpftrace could not name is `addr 0xADDR (dso)`
(also `([unknown])`): it becomes `[dso-basename]` or `[unknown]`, as perf
script's [unknown] does in perf_script.fold. Offsets are dropped, so frames fold
by function as perf script's do. The idle task (pid 0, comm swapper/N) is
`swapper`, as perf names it, so the analysis' idle share is the same on both rungs.

Also read: @samples (every sample taken, also those a full stack map could not
hold: the difference is reported as lost) and the sampling window (printf lines
of CLOCK_MONOTONIC ns). Unreadable keys are counted, never fatal.
"""

from __future__ import annotations

import msgspec

from ..trace.bpftrace import parse_json_lines
from .perf_script import Folded

KERNEL_DSO = "[kernel.kallsyms]"


class BpftraceProfile(msgspec.Struct, kw_only=True):
    folded: Folded
    samples_taken: int | None  # @samples: every sample the probe counted
    lost: int  # samples taken whose stack the map could not hold
    sampling_start_ns: int | None
    sampling_end_ns: int | None
    unnamed_user_frames: int  # user frames left as addresses (process gone at exit)
    user_frames: int
    attached: bool

    @property
    def sampled_s(self) -> float | None:
        if self.sampling_start_ns is None or self.sampling_end_ns is None:
            return None
        return max(0.0, (self.sampling_end_ns - self.sampling_start_ns) / 1e9)


def _strip_offset(sym: str) -> str:
    name, sep, off = sym.rpartition("+")
    return name if sep and name and (off.isdecimal() or off.startswith("0x")) else sym


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class _Frames:
    """Memoised frame-line -> (name, dso, kernel, unnamed user frame)."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[str, str, bool, bool] | None] = {}

    def get(self, line: str) -> tuple[str, str, bool, bool] | None:
        hit = self.cache.get(line, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        out = self.cache[line] = self._parse(line)
        return out

    @staticmethod
    def _parse(line: str) -> tuple[str, str, bool, bool] | None:
        s = line.strip()
        addr, sep, rest = s.partition(" ")
        if not sep or not rest:
            return None
        try:
            int(addr, 16)
        except ValueError:
            return None
        rest = rest.strip()
        if rest.endswith(")") and " (" in rest:  # user frame: sym (dso)
            i = rest.rfind(" (")
            sym, dso = rest[:i].strip(), rest[i + 2 : -1]
            base = _basename(dso) if dso and dso != "[unknown]" else "[unknown]"
            if not sym or sym.startswith("0x") or sym == "[unknown]":
                name = base if base.startswith("[") else f"[{base}]"
                return name, base, False, True
            return _strip_offset(sym).replace(";", ":"), base, False, False
        name = _strip_offset(rest)  # kernel frame: sym+off
        if name.startswith("0x"):
            name = "[unknown]"
        return name.replace(";", ":"), KERNEL_DSO, True, False


def _split_key(key: str, with_kstack: bool) -> tuple[int, str, list[str]] | None:
    """'pid,comm,<kstack>,<ustack>' -> (pid, comm, frame lines leaf first)."""
    lines = key.split("\n")
    head = lines[0]
    pid_s, sep, comm = head.partition(",")
    if not sep:
        return None
    try:
        pid = int(pid_s)
    except ValueError:
        return None
    frames = [ln for ln in lines[1:] if ln.startswith("\t")]
    if any(ln and not ln.startswith("\t") and ln != "," for ln in lines[1:]):
        return None
    # The key's separators after comm: one before each stack; an empty kstack adds one more.
    seps = 1
    if with_kstack:
        first_user = bool(frames) and frames[0].rstrip().endswith(")")
        if not frames or first_user:
            seps = 2
    if len(lines) == 1:  # no stack at all: 'pid,comm,,'
        seps = 2 if with_kstack else 1
    for _ in range(seps):
        if comm.endswith(","):
            comm = comm[:-1]
    return pid, comm, frames


def fold_profile_json(raw: bytes) -> BpftraceProfile:
    """profile.bt's stdout -> the profile; never raises on malformed input."""
    out = parse_json_lines(raw)
    start = end = None
    for item in out.printed:
        if isinstance(item, str):
            word, _, value = item.strip().partition(" ")
            if value.strip().isdecimal():
                if word == "sampling_start_ns":
                    start = int(value)
                elif word == "sampling_end_ns":
                    end = int(value)
    taken = out.maps.get("@samples")
    taken = int(taken) if isinstance(taken, int) else None
    frames_of = _Frames()
    stacks: dict[str, int] = {}
    by_pid: dict[int, dict[str, int]] = {}
    kernel: set[str] = set()
    frame_dso: dict[str, str] = {}
    samples = bad = unnamed = user = 0
    for map_name, with_k in (("@stacks", True), ("@ustacks", False)):
        entries = out.maps.get(map_name)
        if not isinstance(entries, dict):
            continue
        for key, count in entries.items():
            if not isinstance(count, int) or count < 0 or not isinstance(key, str):
                bad += 1
                continue
            parts = _split_key(key, with_k)
            if parts is None:
                bad += 1
                continue
            pid, comm, lines = parts
            names: list[str] = []
            ok = True
            for line in lines:
                info = frames_of.get(line)
                if info is None:
                    ok = False
                    break
                name, dso, is_kernel, is_unnamed = info
                if is_kernel:
                    kernel.add(name)
                else:
                    user += count
                    unnamed += count if is_unnamed else 0
                frame_dso.setdefault(name, dso)
                names.append(name)
            if not ok:
                bad += 1
                continue
            if pid == 0 and (comm.startswith("swapper") or not comm):
                comm = "swapper"
            comm = comm.replace(";", ":").strip()
            stack = ";".join([comm, *reversed(names)])
            stacks[stack] = stacks.get(stack, 0) + count
            mine = by_pid.setdefault(pid, {})
            mine[stack] = mine.get(stack, 0) + count
            samples += count
    lost = max(0, taken - samples) if taken is not None else 0
    folded = Folded(stacks=stacks, samples=samples, bad_lines=bad + out.bad_lines, dropped_partial_sample=False,
                    kernel_frames=frozenset(kernel), frame_dso=frame_dso, by_pid=by_pid)
    return BpftraceProfile(folded=folded, samples_taken=taken, lost=lost, sampling_start_ns=start,
                           sampling_end_ns=end, unnamed_user_frames=unnamed, user_frames=user,
                           attached=bool(out.attached_probes))
