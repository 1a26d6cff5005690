"""Backend ladders: each tracing tool takes the first rung that works on this host.

A rung is one way to answer a tool (a libbpf-tools program, a bpftrace script
shipped with the broker, perf, or procfs). Before running, a rung is skipped
when the broker lacks its program (not installed, or disabled by the
administrator with `perf-mcp-broker --disable PROGRAM`), when the kernel lacks
what it needs (from the broker's hello: BTF, tracefs, tracepoints, uprobes,
kprobes, fentry), or when it cannot serve the parameters asked for (runqlat
has no per-CPU histograms). Looking is not enough on every kernel (bpftrace
reports kprobes as available where CONFIG_KPROBES is off), so a rung that
runs and fails to attach is skipped too, with the program's own words, and
the next rung runs: the ladder is proven by trying.

The answer says which rung ran (`method`, `backend`) and why each rung above
it was skipped (`skipped`).

Errors that no other rung can fix (PERMISSION_DENIED, PROFILER_BUSY,
BROKER_UNAVAILABLE, TIMEOUT, PID_NOT_FOUND, INVALID_PARAMS) end the ladder at
once; a CAPABILITY_MISSING from the broker (program missing) moves on.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec
import trio

from perf_mcp_protocol import AccessQuery, Backend, BrokerHello, JobResult, Progress, Request, StepResult, limits

from ..errors import ErrorCode, ToolError, single_leaf
from ..registry import ToolContext

log = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P")

HELLO_TTL_S = 30.0
HELLO_TIMEOUT_S = 15.0
# Kernel features a rung may need, as named in KernelFeatures.
FEATURE_TEXT = {
    "btf": "kernel BTF (/sys/kernel/btf/vmlinux)",
    "tracefs": "tracefs (/sys/kernel/tracing/events)",
    "tracepoints": "the sched and raw_syscalls tracepoints",
    "uprobes": "uprobes (/sys/kernel/tracing/uprobe_events)",
    "kprobe_events": "kprobes (CONFIG_KPROBES; /sys/kernel/tracing/kprobe_events)",
    "fentry": "fentry/fexit BPF programs (bpftrace --info: kfunc)",
}


class Skipped(msgspec.Struct, kw_only=True):
    """A rung that did not answer, and why."""

    method: str
    backend: str
    reason: str


class RungFailed(Exception):
    """Raised by a rung's parse step: the program ran but could not trace (attach error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Rung(Generic[P]):
    backend: Backend | None  # None: answered in the frontend (procfs), no broker job
    method: str  # what a reader sees in data.method, e.g. "runqlat (libbpf-tools)"
    programs: tuple[str, ...] = ()  # broker programs the rung runs
    needs: tuple[str, ...] = ()  # KernelFeatures names that must be true
    # Why this rung cannot serve these parameters, or None when it can.
    unsupported: Callable[[P], str | None] = field(default=lambda p: None)


@dataclass
class LadderResult(Generic[T]):
    value: T
    rung: Rung  # type: ignore[type-arg]
    skipped: list[Skipped]
    job: JobResult | None

    @property
    def method(self) -> str:
        return self.rung.method

    @property
    def backend(self) -> str:
        return self.rung.backend.value if self.rung.backend else "procfs"

    def warnings(self) -> list[str]:
        return [f"{s.method} skipped: {s.reason}" for s in self.skipped]


# ---------------------------------------------------------------- broker hello (cached)

_hello_cache: dict[int, tuple[float, BrokerHello]] = {}


async def broker_hello(ctx: ToolContext) -> BrokerHello:
    """The broker's hello (programs, disabled, kernel features), cached for HELLO_TTL_S.

    One AccessQuery connection; no authorisation is needed for it.
    """
    key = id(ctx.broker)
    hit = _hello_cache.get(key)
    now = time.monotonic()
    if hit and now - hit[0] < HELLO_TTL_S:
        return hit[1]
    reply = await ctx.broker.run(AccessQuery(), timeout_s=HELLO_TIMEOUT_S)
    _hello_cache[key] = (now, reply.hello)
    return reply.hello


def forget_hello() -> None:
    _hello_cache.clear()


def why_not(rung: Rung[P], hello: BrokerHello | None, params: P | None) -> str | None:
    """Why a rung cannot run here, before trying it; None when it may.

    params None: judge the host only (perf_info's view of every ladder).
    """
    reason = rung.unsupported(params) if params is not None else None
    if reason:
        return reason
    if rung.backend is None:
        return None
    if hello is None:
        return "no broker"
    for program in rung.programs:
        if program in hello.disabled:
            return f"{program} is disabled by the administrator (perf-mcp-broker --disable {program})"
        if program not in hello.programs:
            return f"{program} is not installed on this host"
    for feature in rung.needs:
        if getattr(hello.kernel, feature, None) is False:
            return f"this kernel lacks {FEATURE_TEXT.get(feature, feature)}"
    return None


def step_failure(step: StepResult | None, *, stopped_by_us: bool = False) -> str | None:
    """Why a tracing step did not produce its output, or None when it ended normally.

    Normal: exit 0; for steps the broker stops at their duration (execsnoop,
    perf record), also SIGINT / exit 130. Anything else is a failure and its
    stderr tail says why (failed to attach, unknown tracepoint...).
    """
    if step is None:
        return "the broker's reply has no such step"
    if step.timed_out:
        return f"{step.name} did not finish within the broker's time limit"
    if step.exit_status == 0:
        return None
    if stopped_by_us and (step.signal == signal.SIGINT or step.exit_status == 130):
        return None
    tail = " | ".join(step.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
    how = f"signal {step.signal}" if step.signal else f"exit {step.exit_status}"
    return f"{step.name} failed ({how}): {tail or 'no message'}"


def parse_output(step: StepResult, method: str, parse: Callable[[bytes], T],
               errors: type[Exception] | tuple[type[Exception], ...]) -> T:
    """parse(step.stdout). A parse error is OUTPUT_TRUNCATED when the broker's output cap cut
    the output (the cut lost what the parser needed), PARSE_ERROR otherwise."""
    try:
        return parse(step.stdout)
    except errors as exc:
        if step.stdout_truncated:
            raise ToolError(ErrorCode.OUTPUT_TRUNCATED, f"the broker's output cap cut {method} at "
                            f"{len(step.stdout)} bytes, before anything usable ({exc})") from None
        raise ToolError(ErrorCode.PARSE_ERROR, f"{method}: {exc}") from None


def cut_warning(step: StepResult, method: str) -> str | None:
    """The warning for an output the broker's cap cut (the answer covers what came before)."""
    if not step.stdout_truncated:
        return None
    return (f"the broker's output cap cut {method}'s output at {len(step.stdout)} bytes: "
            "the answer covers what came before the cut")


def find_step(job: JobResult, name: str) -> StepResult | None:
    return next((s for s in job.steps if s.name == name), None)


# ---------------------------------------------------------------- running a job


async def run_job(ctx: ToolContext, request: Request, *, expected_s: float, label: str,
                  after_s: float = 2.0) -> JobResult:
    """One broker job with MCP progress every second (elapsed of expected_s + after_s).

    Cancellation closes the broker connection, which kills the job's process group.
    """
    total = expected_s + after_s
    t0 = trio.current_time()
    state = {"step": label}

    async def tick() -> None:
        last = 0.0
        while True:
            elapsed = trio.current_time() - t0
            last = min(max(last, elapsed), total * 0.99)
            text = (f"{state['step']}: {elapsed:.0f}/{expected_s:.0f} s" if elapsed <= expected_s
                    else f"{state['step']}: collecting output")
            await ctx.report_progress(round(last, 1), total, text)
            await trio.sleep(1.0)

    async def on_progress(p: Progress) -> None:
        state["step"] = f"{label} ({p.step})"

    timeout = expected_s + 2 * limits.JOB_GRACE_S + 60.0 + 4 * expected_s
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            reply = await ctx.broker.run(request, timeout_s=timeout, on_progress=on_progress)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # trio wraps the body's ToolError: callers (climb) catch ToolError
        raise single_leaf(group) from None
    await ctx.report_progress(total, total, f"{label}: done")
    if not isinstance(reply.final, JobResult):
        raise ToolError(ErrorCode.EXECUTION_FAILED, f"unexpected broker reply {type(reply.final).__name__}")
    return reply.final


_NEXT_RUNG_CODES = frozenset({ErrorCode.CAPABILITY_MISSING})
# Broker answers that end every broker rung, but not a procfs rung below them.
_LOCAL_RUNG_CODES = frozenset({ErrorCode.PERMISSION_DENIED, ErrorCode.BROKER_UNAVAILABLE})


async def climb(
    ctx: ToolContext,
    rungs: list[Rung[P]],
    params: P,
    attempt: Callable[[Rung[P]], Awaitable[tuple[T, JobResult | None]]],
) -> LadderResult[T]:
    """Run the first rung that works; see the module docstring.

    `attempt(rung)` runs the rung (a broker job via run_job, or procfs) and
    parses it; it raises RungFailed when the program could not trace, and
    ToolError for anything the caller must hear.
    """
    skipped: list[Skipped] = []
    hello: BrokerHello | None = None
    hello_error: ToolError | None = None
    if any(r.backend is not None for r in rungs):
        try:
            hello = await broker_hello(ctx)
        except ToolError as exc:
            hello_error = exc
    for rung in rungs:
        if rung.backend is not None and hello is None:
            skipped.append(Skipped(method=rung.method, backend=rung.backend.value,
                                   reason=hello_error.message if hello_error else "no broker"))
            continue
        reason = why_not(rung, hello, params)
        if reason is not None:
            skipped.append(Skipped(method=rung.method, backend=_b(rung), reason=reason))
            continue
        try:
            value, job = await attempt(rung)
        except RungFailed as exc:
            log.info("rung %s failed: %s", rung.method, exc.reason)
            skipped.append(Skipped(method=rung.method, backend=_b(rung), reason=exc.reason))
            continue
        except ToolError as exc:
            local_left = any(r.backend is None for r in rungs[rungs.index(rung) + 1:])
            if exc.code in _NEXT_RUNG_CODES or (exc.code in _LOCAL_RUNG_CODES and local_left):
                # a rung answered without the broker (procfs) still serves a user the
                # broker refuses or cannot reach; the skip says why
                skipped.append(Skipped(method=rung.method, backend=_b(rung),
                                       reason=f"{exc.code.value}: {exc.message}"))
                if exc.code in _LOCAL_RUNG_CODES:
                    hello = None
                    hello_error = exc
                continue
            raise
        return LadderResult(value=value, rung=rung, skipped=skipped, job=job)
    if hello_error is not None and all(r.backend is not None for r in rungs):
        raise hello_error
    detail = "; ".join(f"{s.method}: {s.reason}" for s in skipped)
    raise ToolError(ErrorCode.CAPABILITY_MISSING, f"no backend of this tool can run here ({detail})")


def _b(rung: Rung) -> str:  # type: ignore[type-arg]
    return rung.backend.value if rung.backend else "procfs"


# ---------------------------------------------------------------- every ladder, for perf_info


class RungStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    method: str
    backend: str
    ready: bool
    reason: str | None = None


class ToolLadder(msgspec.Struct, kw_only=True):
    """One tool's ladder as this host and broker stand: the rung it would take first."""

    tool: str
    first_ready: str | None
    rungs: list[RungStatus]


def ladders_of_tools(package: str = "perf_mcp.tools") -> dict[str, list[Rung]]:  # type: ignore[type-arg]
    """LADDER of every tool module that has one, by tool name."""
    import importlib
    import pkgutil

    out: dict[str, list[Rung]] = {}  # type: ignore[type-arg]
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception:  # the registry logs broken tool modules
            continue
        ladder = getattr(module, "LADDER", None)
        spec = getattr(module, "TOOL", None)
        if ladder and spec is not None:
            out[spec.name] = list(ladder)
    return out


def host_ladders(hello: BrokerHello | None) -> list[ToolLadder]:
    """Which rung each tool would take here, and why the rungs above it would be skipped."""
    result = []
    for tool, rungs in ladders_of_tools().items():
        statuses = []
        for rung in rungs:
            reason = why_not(rung, hello, None)
            statuses.append(RungStatus(method=rung.method, backend=_b(rung), ready=reason is None, reason=reason))
        first = next((r.method for r in statuses if r.ready), None)
        result.append(ToolLadder(tool=tool, first_ready=first, rungs=statuses))
    return result
