"""What a folded CPU profile says: top functions, hottest stacks, findings (pure)."""

from __future__ import annotations

from collections import Counter

import msgspec

from ..contract import Evidence, Finding, sort_findings
from .perf_script import Folded

IDLE_COMMS = frozenset({"swapper"})
TOOL = "perf_cpu_profile"

# Finding thresholds, as a share of the busy (non-idle) samples.
HOT_FUNCTION_WARN_PCT = 30.0
KERNEL_WARN_PCT = 30.0
UNKNOWN_INFO_PCT = 25.0
IDLE_INFO_PCT = 90.0
MIN_SAMPLES_FOR_CONFIDENCE = 500


class FunctionStat(msgspec.Struct, kw_only=True):
    function: str
    module: str
    kernel: bool
    self_samples: int
    self_pct: float  # of all samples
    total_samples: int
    total_pct: float  # of all samples: the function was anywhere on the stack


class StackStat(msgspec.Struct, kw_only=True):
    stack: list[str]  # comm first, then root ... leaf
    samples: int
    pct: float


class ProcessStat(msgspec.Struct, kw_only=True):
    comm: str
    samples: int
    pct: float


class ProfileAnalysis(msgspec.Struct, kw_only=True):
    samples: int
    busy_samples: int  # samples not in the idle loop
    idle_pct: float
    kernel_pct: float  # samples whose leaf frame is in the kernel
    unknown_pct: float  # samples whose leaf frame has no symbol
    top_self: list[FunctionStat]
    top_total: list[FunctionStat]
    hottest_stacks: list[StackStat]
    processes: list[ProcessStat]


def _pct(n: int, total: int) -> float:
    return round(100.0 * n / total, 2) if total else 0.0


def _is_unknown(name: str) -> bool:
    return name.startswith("[") and name.endswith("]")


def _rank(item: tuple[str, int]) -> tuple[int, bool, str]:
    """More samples first; on a tie a named function before an unsymbolised frame."""
    return (-item[1], _is_unknown(item[0]), item[0])


def analyse(folded: Folded, *, top_n: int = 20, top_stacks: int = 10) -> ProfileAnalysis:
    """Rank functions by self and total samples and stacks by samples; idle-loop samples are counted
    in the percentages' denominator but left out of the rankings (they would drown everything)."""
    total = folded.samples
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    comm_c: Counter[str] = Counter()
    busy: list[tuple[str, int]] = []
    idle = kern = unknown = 0
    for stack, count in folded.stacks.items():
        frames = stack.split(";")
        comm = frames[0]
        comm_c[comm] += count
        if comm in IDLE_COMMS:
            idle += count
            continue
        busy.append((stack, count))
        leaf = frames[-1] if len(frames) > 1 else None
        if leaf is not None:
            self_c[leaf] += count
            if leaf in folded.kernel_frames:
                kern += count
            elif _is_unknown(leaf):
                unknown += count
        for name in set(frames[1:]):
            total_c[name] += count

    def stat(name: str) -> FunctionStat:
        return FunctionStat(
            function=name,
            module=folded.frame_dso.get(name, "[unknown]"),
            kernel=name in folded.kernel_frames,
            self_samples=self_c[name],
            self_pct=_pct(self_c[name], total),
            total_samples=total_c[name],
            total_pct=_pct(total_c[name], total),
        )

    busy.sort(key=lambda sc: (-sc[1], sc[0]))
    return ProfileAnalysis(
        samples=total,
        busy_samples=total - idle,
        idle_pct=_pct(idle, total),
        kernel_pct=_pct(kern, total),
        unknown_pct=_pct(unknown, total),
        top_self=[stat(n) for n, _ in sorted(self_c.items(), key=_rank)[:top_n]],
        top_total=[stat(n) for n, _ in sorted(total_c.items(), key=_rank)[:top_n]],
        hottest_stacks=[StackStat(stack=s.split(";"), samples=c, pct=_pct(c, total)) for s, c in busy[:top_stacks]],
        processes=[ProcessStat(comm=c, samples=n, pct=_pct(n, total))
                   for c, n in sorted(comm_c.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]],
    )


def _confidence(samples: int) -> float:
    return round(min(1.0, 0.4 + 0.6 * samples / MIN_SAMPLES_FOR_CONFIDENCE), 2)


def findings(a: ProfileAnalysis, *, target: str, rate_hz: int) -> list[Finding]:
    out: list[Finding] = []
    busy = a.busy_samples
    conf = _confidence(busy)
    if a.samples and a.idle_pct >= IDLE_INFO_PCT:
        out.append(Finding(
            id="cpu_profile.mostly_idle", severity="info", resource="cpu",
            title=f"CPUs were idle in {a.idle_pct:.0f}% of samples",
            detail=f"Only {busy} of {a.samples} samples were outside the idle loop during the profile of {target}.",
            confidence=conf, metrics={"idle_pct": a.idle_pct, "samples": float(a.samples)},
            evidence=[Evidence(tool=TOOL, counter="samples in comm swapper", value=a.idle_pct, threshold=IDLE_INFO_PCT)],
            suggestion="CPU is not the bottleneck here; look at off-CPU time (perf_offcpu_profile) or I/O (perf_io_latency).",
        ))
    if busy and a.top_self:
        top = a.top_self[0]
        share = 100.0 * top.self_samples / busy
        hot = share >= HOT_FUNCTION_WARN_PCT and not _is_unknown(top.function)
        what = f"unsymbolised code in {top.module}" if _is_unknown(top.function) else f"{top.function} ({top.module})"
        out.append(Finding(
            id="cpu_profile.hot_function", severity="warning" if hot else "info", resource="cpu",
            title=f"{what} is the hottest function: {share:.1f}% of busy samples",
            detail=(f"{top.self_samples} of {busy} on-CPU samples had {top.function} as the leaf frame; it was on "
                    f"the stack in {top.total_samples} samples ({top.total_pct:.1f}% of all)."),
            confidence=conf,
            metrics={"self_pct_of_busy": round(share, 2), "self_samples": float(top.self_samples),
                     "total_pct": top.total_pct},
            evidence=[Evidence(tool=TOOL, counter="leaf-frame samples", value=top.self_samples,
                               threshold=HOT_FUNCTION_WARN_PCT, sample=f"{rate_hz} Hz, {target}")],
            suggestion=("Look at the hottest stacks and the flame graph to see which callers lead to it; "
                        "optimise or call it less." if hot else "The time is spread out; read the flame graph."),
        ))
    if busy and 100.0 * a.kernel_pct / max(100.0 - a.idle_pct, 1e-9) >= KERNEL_WARN_PCT:
        share = 100.0 * a.kernel_pct / (100.0 - a.idle_pct)
        out.append(Finding(
            id="cpu_profile.kernel_time", severity="warning", resource="cpu",
            title=f"{share:.0f}% of busy samples were in the kernel",
            detail="A large share of on-CPU time is spent in kernel code (system calls, page faults, interrupts).",
            confidence=conf, metrics={"kernel_pct_of_busy": round(share, 2)},
            evidence=[Evidence(tool=TOOL, counter="leaf frames in [kernel.kallsyms]", value=round(share, 2),
                               threshold=KERNEL_WARN_PCT)],
            suggestion="Count system calls (perf_syscall_count) and check faults and context switches (perf_snapshot).",
        ))
    if busy and 100.0 * a.unknown_pct / max(100.0 - a.idle_pct, 1e-9) >= UNKNOWN_INFO_PCT:
        share = 100.0 * a.unknown_pct / (100.0 - a.idle_pct)
        out.append(Finding(
            id="cpu_profile.missing_symbols", severity="info", resource="process",
            title=f"{share:.0f}% of busy samples have no symbol for the leaf frame",
            detail="Stripped binaries, JIT code or interpreters leave frames as [unknown] or the DSO name.",
            confidence=conf, metrics={"unknown_pct_of_busy": round(share, 2)},
            evidence=[Evidence(tool=TOOL, counter="leaf frames without a symbol", value=round(share, 2),
                               threshold=UNKNOWN_INFO_PCT)],
            suggestion=("Install debug symbols (the -dbgsym packages), build with -fno-omit-frame-pointer, "
                        "or use the runtime's own profiler for JIT or interpreted code (e.g. py-spy, perf-map for JITs)."),
        ))
    return sort_findings(out)
