"""What a folded CPU profile says: top functions, hottest stacks, processes, findings (pure).

Denominators. Percentages of functions, stacks and processes are of all samples
taken. Idle is judged against the samples a fully busy target would give
(`expected`: rate x window x CPUs system-wide, x min(threads, CPUs) for one
process), not against the idle task's samples: an idle CPU with a tickless
kernel is sampled far less often than a busy one (here 68 idle-task samples
where /proc/stat said 238 were due), so the idle task's share understates idle.

perf-mcp's own processes (own_pids: the broker's perf and bpftrace, this
frontend) are left out of the rankings (functions, stacks, processes); their
share is reported as own_pct. The flame graph and the folded stacks keep them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import msgspec

from ..contract import Evidence, Finding, next_call, sort_findings
from .perf_script import Folded

IDLE_COMMS = frozenset({"swapper"})
TOOL = "perf_cpu_profile"

# Finding thresholds, as a share of the busy (non-idle) samples unless said otherwise.
HOT_FUNCTION_WARN_PCT = 30.0
KERNEL_WARN_PCT = 30.0
UNKNOWN_INFO_PCT = 25.0
IDLE_INFO_PCT = 90.0  # system-wide: share of the expected samples with no task on the CPU
OFF_CPU_INFO_PCT = 50.0  # one process: share of its expected samples it was off CPU
INTERPRETER_INFO_PCT = 20.0  # an eval loop on the stack in this share of a runtime's samples
INTERPRETER_WARN_PCT = 50.0
JIT_INFO_PCT = 25.0  # unnamed leaf frames in a JIT runtime's samples
SAMPLES_LOW_PCT = 50.0  # system-wide: samples taken below this share of the expected count
MIN_SAMPLES_FOR_CONFIDENCE = 500
OWN_TOP_PCT = 50.0  # system-wide: a process holding this share of a hot function's samples is named

# Eval-loop frames of interpreters: the stack shows the interpreter, not the program's functions.
EVAL_LOOPS: dict[str, frozenset[str]] = {
    "python": frozenset({"_PyEval_EvalFrameDefault", "_PyEval_EvalFrame", "PyEval_EvalFrameEx", "PyEval_EvalCode",
                         "_PyEval_Vector"}),
    "ruby": frozenset({"vm_exec", "vm_exec_core", "rb_vm_exec", "vm_call0_body"}),
    "perl": frozenset({"Perl_runops_standard", "Perl_runops_debug", "Perl_runops_wrap"}),
    "php": frozenset({"execute_ex", "zend_execute", "ZEND_DO_FCALL_SPEC_RETVAL_USED_HANDLER"}),
}
# Not node's Builtins_InterpreterEntryTrampoline: it is under every JavaScript stack, JIT-compiled or not,
# and with a perf map the functions above it are named (JS:*hotLoop ...). JIT runtimes are judged by
# their unnamed leaf frames instead ([perf-PID.map] without the map file).
# The interpreter's own binary or library: a sample whose leaf is in it runs the interpreter too (the
# eval loop may be missing from its stack: distributions build interpreters without frame pointers).
INTERPRETER_MODULES: dict[str, re.Pattern[str]] = {
    "python": re.compile(r"^(lib)?python\d"),
    "ruby": re.compile(r"^(lib)?ruby"),
    "perl": re.compile(r"^(lib)?perl"),
    "php": re.compile(r"^(lib)?php"),
}
JIT_RUNTIMES = frozenset({"node", "java"})
_PY_VERSION = re.compile(r"python(\d+)\.(\d+)")


class FunctionStat(msgspec.Struct, kw_only=True):
    """One row of the merged ranking: time in the function itself and under it."""

    function: str
    module: str
    self_pct: float  # of all samples: the function was the leaf
    total_pct: float  # of all samples: the function was anywhere on the stack


class StackStat(msgspec.Struct, kw_only=True):
    stack: list[str]  # comm first, then root ... leaf
    pct: float


class ProcessStat(msgspec.Struct, kw_only=True, omit_defaults=True):
    pid: int  # -1 when the source had no pids
    comm: str
    samples: int
    pct: float
    command: str | None = None  # command line (capped), when the process was seen while profiling


class RuntimeUse(msgspec.Struct, kw_only=True):
    """Samples of one interpreter or JIT runtime in one process."""

    runtime: str
    pid: int
    comm: str
    samples: int  # the process's samples
    # In the interpreter: an eval-loop frame on the stack, the leaf in its module, or (in a process that
    # runs the eval loop) no named frame at all: nothing else to pin those on.
    eval_samples: int
    eval_frame: str  # the eval-loop frame seen most
    # leaf frame without a symbol, or a caller in JIT code without a perf map ([perf-PID.map])
    unnamed_leaf_samples: int
    module: str  # the interpreter's binary or library (python3.11, libjvm.so, ...)
    perf_support: bool  # frames already named by the runtime's perf support (py::...)


class ProfileAnalysis(msgspec.Struct, kw_only=True):
    samples: int
    busy_samples: int  # samples not in the idle loop (own samples included: they used CPU)
    own_samples: int  # samples of perf-mcp's own processes, left out of the rankings
    expected_samples: int | None
    idle_pct: float
    kernel_pct: float  # samples whose leaf frame is in the kernel
    unknown_pct: float  # samples whose leaf frame has no symbol
    kernel_samples: int  # the same as counts, of the ranked (not idle, not perf-mcp's) samples
    unknown_samples: int
    functions: list[FunctionStat]
    hottest_stacks: list[StackStat]
    processes: list[ProcessStat]
    runtimes: list[RuntimeUse]
    top_self: list[tuple[str, int]]  # (function, leaf samples), best first, for the findings
    self_by_pid: dict[str, dict[int, int]]  # top functions' leaf samples per pid
    kernel_by_pid: dict[int, int]


def _pct(n: int, total: int) -> float:
    return round(100.0 * n / total, 2) if total else 0.0


def _is_unknown(name: str) -> bool:
    return name.startswith("[") and name.endswith("]")


def _rank(item: tuple[str, int]) -> tuple[int, bool, str]:
    """More samples first; on a tie a named function before an unsymbolised frame."""
    return (-item[1], _is_unknown(item[0]), item[0])


def _runtime_of(comm: str, modules: Iterable[str]) -> tuple[str, str] | None:
    """(runtime, module) for a JIT runtime told by its binary or library; interpreters are told by frames."""
    for m in modules:
        if m == "libjvm.so":
            return "java", m
    if comm in ("node", "nodejs") or comm.startswith("node"):
        return "node", comm
    if comm == "java":
        return "java", comm
    return None


def _stacks_by_pid(folded: Folded) -> Iterable[tuple[int, dict[str, int]]]:
    if folded.by_pid:
        return folded.by_pid.items()
    return [(-1, folded.stacks)]


def analyse(folded: Folded, *, own_pids: frozenset[int] = frozenset(), expected: int | None = None,
            top_n: int = 10, top_stacks: int = 5) -> ProfileAnalysis:
    """Rank functions, stacks and processes; idle-loop and perf-mcp samples are counted in the
    denominators but left out of the rankings (idle would drown everything; ours is not the user's)."""
    total = folded.samples
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    proc_c: Counter[tuple[int, str]] = Counter()
    self_pid: dict[str, Counter[int]] = {}
    kernel_by_pid: Counter[int] = Counter()
    ranked: list[tuple[str, int]] = []
    runtimes: list[RuntimeUse] = []
    idle = kern = unknown = own = 0
    for pid, stacks in _stacks_by_pid(folded):
        eval_c: Counter[str] = Counter()
        eval_runtime: Counter[str] = Counter()
        in_module: Counter[str] = Counter()  # leaf in the interpreter's module, no eval loop on the stack
        no_name = 0  # samples without one named frame (bpftrace leaves a stripped interpreter's frames so)
        pid_samples = unnamed_leaf = 0
        py_named = False
        comm_of: Counter[str] = Counter()
        modules: set[str] = set()
        for stack, count in stacks.items():
            frames = stack.split(";")
            comm = frames[0]
            if comm in IDLE_COMMS:
                idle += count
                continue
            if pid in own_pids:
                own += count
                continue
            proc_c[(pid, comm)] += count
            comm_of[comm] += count
            pid_samples += count
            ranked.append((stack, count))
            leaf = frames[-1] if len(frames) > 1 else None
            if leaf is not None:
                self_c[leaf] += count
                self_pid.setdefault(leaf, Counter())[pid] += count
                if leaf in folded.kernel_frames:
                    kern += count
                    kernel_by_pid[pid] += count
                elif _is_unknown(leaf):
                    unknown += count
                    unnamed_leaf += count
                elif any(n.startswith("[perf-") and n.endswith(".map]") for n in frames[1:-1]):
                    unnamed_leaf += count  # a named leaf (libm, the JVM) called from JIT code perf cannot name
            names = set(frames[1:])
            for name in names:
                total_c[name] += count
            leaf_module = folded.frame_dso.get(leaf, "") if leaf is not None else ""
            for runtime, loops in EVAL_LOOPS.items():
                hit = names & loops
                if hit:
                    frame = min(hit)
                    eval_c[frame] += count
                    eval_runtime[runtime] += count
                    modules.add(folded.frame_dso.get(frame, ""))
                    break
                if INTERPRETER_MODULES[runtime].match(leaf_module):
                    in_module[runtime] += count
                    break
            else:
                if len(frames) > 1 and all(_is_unknown(n) for n in names):
                    no_name += count
            if not py_named and any(n.startswith("py::") for n in names):
                py_named = True
            if len(frames) > 1:
                modules.update(folded.frame_dso.get(n, "") for n in (frames[1], frames[-1]))
        if not pid_samples:
            continue
        comm = comm_of.most_common(1)[0][0]
        if eval_runtime:
            runtime, n = eval_runtime.most_common(1)[0]
            frame = eval_c.most_common(1)[0][0]
            runtimes.append(RuntimeUse(runtime=runtime, pid=pid, comm=comm, samples=pid_samples,
                                       eval_samples=n + in_module[runtime] + no_name,
                                       eval_frame=frame, unnamed_leaf_samples=unnamed_leaf,
                                       module=folded.frame_dso.get(frame, ""), perf_support=py_named))
        else:
            jit = _runtime_of(comm, modules)
            if jit is not None:
                runtimes.append(RuntimeUse(runtime=jit[0], pid=pid, comm=comm, samples=pid_samples, eval_samples=0,
                                           eval_frame="", unnamed_leaf_samples=unnamed_leaf, module=jit[1],
                                           perf_support=False))

    busy = total - idle
    if expected:
        idle_pct = round(max(0.0, min(100.0, 100.0 * (1.0 - busy / expected))), 2)
    else:
        idle_pct = _pct(idle, total)

    def stat(name: str) -> FunctionStat:
        return FunctionStat(function=name, module=folded.frame_dso.get(name, "[unknown]"),
                            self_pct=_pct(self_c[name], total), total_pct=_pct(total_c[name], total))

    by_self = sorted(self_c.items(), key=_rank)
    chosen = [n for n, _ in by_self[:top_n]]
    chosen += [n for n, _ in sorted(total_c.items(), key=_rank)[: max(3, top_n // 2)] if n not in chosen]
    functions = sorted((stat(n) for n in chosen), key=lambda f: (-f.self_pct, -f.total_pct, f.function))
    ranked.sort(key=lambda sc: (-sc[1], sc[0]))
    runtimes.sort(key=lambda r: -r.samples)
    return ProfileAnalysis(
        samples=total,
        busy_samples=busy,
        own_samples=own,
        expected_samples=expected,
        idle_pct=idle_pct,
        kernel_pct=_pct(kern, total),
        unknown_pct=_pct(unknown, total),
        kernel_samples=kern,
        unknown_samples=unknown,
        functions=functions,
        hottest_stacks=[StackStat(stack=s.split(";"), pct=_pct(c, total)) for s, c in ranked[:top_stacks]],
        processes=[ProcessStat(pid=p, comm=c, samples=n, pct=_pct(n, total))
                   for (p, c), n in sorted(proc_c.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]],
        runtimes=runtimes,
        top_self=by_self[:3],
        self_by_pid={n: dict(self_pid[n]) for n, _ in by_self[:3]},
        kernel_by_pid=dict(kernel_by_pid),
    )


def _confidence(samples: int) -> float:
    return round(min(1.0, 0.4 + 0.6 * samples / MIN_SAMPLES_FOR_CONFIDENCE), 2)


def _top_pid(counts: dict[int, int], share_pct: float) -> int | None:
    """The pid holding at least share_pct of counts, if any (and a real pid)."""
    if not counts:
        return None
    pid, n = max(counts.items(), key=lambda kv: kv[1])
    return pid if pid > 0 and 100.0 * n / max(1, sum(counts.values())) >= share_pct else None


def _python_advice(r: RuntimeUse) -> str:
    m = _PY_VERSION.search(r.module)
    version = (int(m.group(1)), int(m.group(2))) if m else None
    head = ("Start it with `python -X perf` or PYTHONPERFSUPPORT=1 (Python 3.12+) and profile again: perf then "
            "names Python functions (py::function:file).")
    if version is not None and version < (3, 12):
        return f"{head} This is Python {version[0]}.{version[1]} ({r.module}), without perf support: use 3.12+, or py-spy."
    return head


def _interpreter_finding(r: RuntimeUse, rate_hz: int, conf: float) -> Finding | None:
    share = 100.0 * r.eval_samples / r.samples
    if r.perf_support or share < INTERPRETER_INFO_PCT:
        return None
    who = f"pid {r.pid} ({r.comm})" if r.pid > 0 else r.comm
    if r.runtime == "python":
        advice = _python_advice(r)
    elif r.runtime == "ruby":
        advice = ("perf sees Ruby's VM loop, not Ruby methods: Ruby 3.3+ with YJIT can write a perf map "
                  "(--yjit-perf), else use a Ruby sampling profiler (stackprof, rbspy).")
    elif r.runtime == "perl":
        advice = "perf sees Perl's op loop, not Perl subs: use a Perl profiler (Devel::NYTProf)."
    else:
        advice = "perf sees PHP's executor, not PHP functions: PHP 8's opcache.jit_debug=0x10 writes a perf map."
    return Finding(
        id="cpu_profile.interpreter", severity="warning" if share >= INTERPRETER_WARN_PCT else "info",
        resource="process",
        title=f"{who} runs in the {r.runtime} interpreter ({r.eval_frame}) in {share:.0f}% of its samples",
        detail=(f"{r.eval_samples} of {r.samples} samples of {who} have the eval loop {r.eval_frame} on the stack, "
                f"end in the interpreter ({r.module or r.runtime}) or have no named frame: the profile shows the "
                f"interpreter, not which {r.runtime} functions use the CPU."),
        confidence=conf, metrics={"interpreter_pct": round(share, 2), "samples": float(r.samples)},
        evidence=[Evidence(tool=TOOL, counter=f"samples in the interpreter ({r.eval_frame} on the stack, or the leaf "
                           f"in {r.module or r.runtime})", value=r.eval_samples,
                           threshold=INTERPRETER_INFO_PCT, sample=f"{rate_hz} Hz, {who}")],
        suggestion=advice,
    )


def _jit_finding(r: RuntimeUse, rate_hz: int, conf: float, map_exists: bool) -> Finding | None:
    share = 100.0 * r.unnamed_leaf_samples / r.samples
    if share < JIT_INFO_PCT:
        return None
    who = f"pid {r.pid} ({r.comm})" if r.pid > 0 else r.comm
    how = ("node --perf-basic-prof (or --perf-basic-prof-only-functions)" if r.runtime == "node" else
           "the JVM with -XX:+PreserveFramePointer (so perf can walk JIT frames) and a perf map: "
           "`jcmd PID Compiler.perfmap` (JDK 17+), -XX:+UnlockDiagnosticVMOptions -XX:+DumpPerfMapAtExit, or "
           "perf-map-agent")
    have = (f"/tmp/perf-{r.pid}.map exists but did not name these frames (stale, or written after the samples)"
            if map_exists else f"there is no /tmp/perf-{r.pid}.map")
    return Finding(
        id="cpu_profile.jit_unnamed", severity="info", resource="process",
        title=f"{share:.0f}% of {who}'s samples are in {r.runtime} JIT code that perf cannot name",
        detail=(f"{r.unnamed_leaf_samples} of {r.samples} samples end in or pass through JIT code without a "
                f"symbol; {have}. "
                "perf names JIT frames from a perf map file, /tmp/perf-PID.map, that the runtime writes."),
        confidence=conf, metrics={"unnamed_leaf_pct": round(share, 2), "samples": float(r.samples)},
        evidence=[Evidence(tool=TOOL, counter="leaf frames without a symbol", value=r.unnamed_leaf_samples,
                           threshold=JIT_INFO_PCT, sample=f"{rate_hz} Hz, {who}")],
        suggestion=f"Restart it with {how} so it writes /tmp/perf-PID.map, and profile again (the perf rung reads it).",
    )


def findings(a: ProfileAnalysis, *, target: str, rate_hz: int, pid: int | None = None, duration_s: float = 5.0,
             exited: bool = False, perf_maps: frozenset[int] = frozenset()) -> list[Finding]:
    out: list[Finding] = []
    busy = a.busy_samples - a.own_samples
    conf = _confidence(busy)
    d = max(1, min(60, round(duration_s)))
    expected = a.expected_samples
    if pid is None and a.samples and a.idle_pct >= IDLE_INFO_PCT:
        out.append(Finding(
            id="cpu_profile.mostly_idle", severity="info", resource="cpu",
            title=f"CPUs were idle {a.idle_pct:.0f}% of the time",
            detail=(f"{a.busy_samples} samples found a task on a CPU, of the {expected} a fully busy machine gives "
                    f"in the window ({target})." if expected else
                    f"Only {a.busy_samples} of {a.samples} samples were outside the idle loop ({target})."),
            confidence=conf, metrics={"idle_pct": a.idle_pct, "samples": float(a.samples)},
            evidence=[Evidence(tool=TOOL, counter="1 - busy samples / expected samples", value=a.idle_pct,
                               threshold=IDLE_INFO_PCT)],
            suggestion="CPU is not the bottleneck: look at what the work waits for (off-CPU time, I/O latency).",
            next=next_call("perf_offcpu_profile", duration_s=d),
        ))
    if pid is not None and expected and not exited and a.idle_pct >= OFF_CPU_INFO_PCT:
        out.append(Finding(
            id="cpu_profile.mostly_off_cpu", severity="info", resource="process",
            title=f"{target} was off CPU {a.idle_pct:.0f}% of the time it could have run",
            detail=(f"{a.samples} samples of the {expected} that its threads (up to the CPU count) would give if "
                    "always on a CPU: it mostly waits (I/O, locks, sleep, the run queue), and the on-CPU profile "
                    "covers only the rest."),
            confidence=conf, metrics={"off_cpu_pct": a.idle_pct, "samples": float(a.samples),
                                      "expected_samples": float(expected)},
            evidence=[Evidence(tool=TOOL, counter="1 - samples / expected samples", value=a.idle_pct,
                               threshold=OFF_CPU_INFO_PCT)],
            suggestion="Profile where it waits: off-CPU stacks show the blocking calls.",
            next=next_call("perf_offcpu_profile", pid=pid, duration_s=d),
        ))
    explained: set[int] = set()  # processes whose runtime (interpreter, JIT) has a finding
    said: set[str] = set()  # one finding per runtime (its busiest process): the advice is the same
    for r in a.runtimes:
        f = _interpreter_finding(r, rate_hz, conf) if r.eval_samples else None
        if f is None and r.runtime in JIT_RUNTIMES:
            f = _jit_finding(r, rate_hz, conf, r.pid in perf_maps)
        if f is not None:
            if f.id + r.runtime not in said:
                out.append(f)
            said.add(f.id + r.runtime)
            explained.add(r.pid)
    eval_frames = frozenset().union(*EVAL_LOOPS.values())
    top_name = a.top_self[0][0] if a.top_self else ""
    by_pid = a.self_by_pid.get(top_name, {})
    in_explained = sum(n for p, n in by_pid.items() if p in explained)
    explained_top = ((top_name in eval_frames or _is_unknown(top_name))
                     and 100.0 * in_explained >= OWN_TOP_PCT * max(1, sum(by_pid.values())))
    if busy and a.top_self and not explained_top:
        # (an eval loop or unnamed JIT code on top is the runtime finding's to explain)
        name, n = a.top_self[0]
        top = next((f for f in a.functions if f.function == name), None)
        share = 100.0 * n / busy
        hot = share >= HOT_FUNCTION_WARN_PCT and not _is_unknown(name)
        module = top.module if top else "[unknown]"
        what = f"unsymbolised code in {module}" if _is_unknown(name) else f"{name} ({module})"
        owner = _top_pid(a.self_by_pid.get(name, {}), OWN_TOP_PCT) if pid is None else None
        out.append(Finding(
            id="cpu_profile.hot_function", severity="warning" if hot else "info", resource="cpu",
            title=f"{what} is the hottest function: {share:.1f}% of busy samples",
            detail=(f"{n} of {busy} on-CPU samples had {name} as the leaf frame"
                    + (f"; it was on the stack in {top.total_pct:.1f}% of all samples" if top else "")
                    + (f"; pid {owner} took most of them" if owner else "") + "."),
            confidence=conf,
            metrics={"self_pct_of_busy": round(share, 2), "self_samples": float(n)},
            evidence=[Evidence(tool=TOOL, counter="leaf-frame samples", value=n,
                               threshold=HOT_FUNCTION_WARN_PCT, sample=f"{rate_hz} Hz, {target}")],
            suggestion=("Read the hottest stacks and the flame graph for the callers that lead to it; optimise it "
                        "or call it less." if hot else "The time is spread out; read the flame graph."),
            next=next_call(TOOL, pid=owner, duration_s=d) if owner else None,
        ))
    if busy and 100.0 * a.kernel_samples / busy >= KERNEL_WARN_PCT:
        share = 100.0 * a.kernel_samples / busy
        who = pid if pid is not None else _top_pid(a.kernel_by_pid, OWN_TOP_PCT)
        out.append(Finding(
            id="cpu_profile.kernel_time", severity="warning", resource="cpu",
            title=f"{share:.0f}% of busy samples were in the kernel",
            detail="A large share of on-CPU time is spent in kernel code (system calls, page faults, interrupts)"
                   + (f"; pid {who} took most of it." if who is not None and pid is None else "."),
            confidence=conf, metrics={"kernel_pct_of_busy": round(share, 2)},
            evidence=[Evidence(tool=TOOL, counter="leaf frames in [kernel.kallsyms]", value=round(share, 2),
                               threshold=KERNEL_WARN_PCT)],
            suggestion="Count the system calls that lead there; check faults and context switches.",
            next=(next_call("perf_syscall_count", pid=who, duration_s=d) if who is not None else
                  next_call("perf_syscall_count", duration_s=d, per_process=True)),
        ))
    if busy and 100.0 * a.unknown_samples / busy >= UNKNOWN_INFO_PCT and not explained:
        share = 100.0 * a.unknown_samples / busy
        out.append(Finding(
            id="cpu_profile.missing_symbols", severity="info", resource="process",
            title=f"{share:.0f}% of busy samples have no symbol for the leaf frame",
            detail="Stripped binaries, JIT code or interpreters leave frames as [unknown] or the DSO name.",
            confidence=conf, metrics={"unknown_pct_of_busy": round(share, 2)},
            evidence=[Evidence(tool=TOOL, counter="leaf frames without a symbol", value=round(share, 2),
                               threshold=UNKNOWN_INFO_PCT)],
            suggestion=("Install debug symbols (the -dbgsym packages) or build with -fno-omit-frame-pointer; for "
                        "JIT runtimes have them write /tmp/perf-PID.map (node --perf-basic-prof, perf-map-agent)."),
        ))
    return sort_findings(out)
