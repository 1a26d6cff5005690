"""The ladder's decisions: which rung runs, and the reason each rung above it is
skipped. Pure decisions are checked on hand-made broker hellos; climb() runs
against a real broker started with --disable, as root."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

import helpers
from perf_mcp.artifacts import ArtifactStore
from perf_mcp.broker_client import BrokerClient
from perf_mcp.errors import ErrorCode, ToolError
from perf_mcp.registry import Services, ToolContext
from perf_mcp.trace import ladder
from perf_mcp.trace.ladder import Rung, RungFailed, climb, step_failure, why_not
from perf_mcp_protocol import Backend, BrokerHello, KernelFeatures, StepResult, limits


def hello(programs: dict[str, str], disabled: list[str] = (), **kernel: bool) -> BrokerHello:
    k = dict(btf=True, tracefs=True, kprobe_events=False, perf_event_paranoid=2, kptr_restrict=0,
             tracepoints=True, uprobes=True, fentry=False)
    k.update(kernel)
    return BrokerHello(protocol_version=limits.PROTOCOL_VERSION, broker_version="t", programs=programs, missing=[],
                       job_kinds=[], kernel=KernelFeatures(**k), output_cap=limits.MIN_OUTPUT_CAP,
                       max_jobs_per_uid=1, max_jobs=4, disabled=list(disabled))


LIBBPF = Rung(Backend.LIBBPF, "runqlat (libbpf-tools)", programs=("runqlat",), needs=("btf",),
              unsupported=lambda p: "runqlat has no per-CPU histograms" if p.get("per_cpu") else None)
BPFTRACE = Rung(Backend.BPFTRACE, "bpftrace runqlat.bt", programs=("bpftrace",), needs=("tracepoints",))
KPROBE = Rung(Backend.LIBBPF, "fsslower (libbpf-tools)", programs=("fsslower",), needs=("kprobe_events",))


def test_why_not_names_the_reason() -> None:
    h = hello({"runqlat": "/usr/sbin/runqlat", "bpftrace": "/usr/bin/bpftrace", "fsslower": "/x"})
    assert why_not(LIBBPF, h, {}) is None
    assert why_not(LIBBPF, h, {"per_cpu": True}) == "runqlat has no per-CPU histograms"
    assert why_not(LIBBPF, h, None) is None  # perf_info judges the host only
    assert "kprobes" in why_not(KPROBE, h, {})
    assert why_not(LIBBPF, hello({"bpftrace": "/b"}), {}) == "runqlat is not installed on this host"
    disabled = why_not(LIBBPF, hello({"bpftrace": "/b"}, disabled=["runqlat"]), {})
    assert disabled and "disabled by the administrator" in disabled and "--disable runqlat" in disabled
    assert "BTF" in why_not(LIBBPF, hello({"runqlat": "/r"}, btf=False), {})
    assert why_not(BPFTRACE, None, {}) == "no broker"


def step(exit_status: int | None = 0, sig: int | None = None, timed_out: bool = False, err: bytes = b"") -> StepResult:
    return StepResult(name="runqlat", argv=[], exit_status=exit_status, signal=sig, stdout=b"", stderr=err,
                      stdout_truncated=False, stderr_truncated=False, timed_out=timed_out, wall_s=1.0)


def test_step_failure() -> None:
    assert step_failure(step()) is None
    assert step_failure(step(None, signal.SIGINT), stopped_by_us=True) is None
    assert step_failure(step(130), stopped_by_us=True) is None
    assert "signal 2" in step_failure(step(None, signal.SIGINT))
    attach = step_failure(step(1, err=b"libbpf: prog 'x': failed to attach\nfailed to attach BPF programs\n"))
    assert attach.startswith("runqlat failed (exit 1)") and "failed to attach BPF programs" in attach
    assert "time limit" in step_failure(step(timed_out=True))
    assert step_failure(None) == "the broker's reply has no such step"


def context(socket_path: Path | str) -> ToolContext:
    async def progress(*_: object) -> None:
        return None

    return ToolContext(tool="t", broker=BrokerClient(str(socket_path)), artifacts=ArtifactStore(),
                       services=Services(), progress=progress)


@pytest.mark.root
async def test_climb_takes_the_first_rung_that_works_on_a_real_broker(module_broker_factory) -> None:
    broker = module_broker_factory("--disable", "runqlat")
    ladder.forget_hello()
    ctx = context(broker.socket_path)
    tried: list[str] = []

    async def attempt(rung: Rung) -> tuple[str, None]:
        tried.append(rung.method)
        if rung is FAILS:
            raise RungFailed("failed to attach: no such tracepoint")
        return rung.method, None

    FAILS = Rung(Backend.BPFTRACE, "a rung whose program cannot attach", programs=("bpftrace",))
    result = await climb(ctx, [LIBBPF, FAILS, BPFTRACE], {}, attempt)
    assert result.value == BPFTRACE.method and result.backend == "bpftrace"
    assert tried == [FAILS.method, BPFTRACE.method]  # the disabled rung never ran
    assert [(s.method, s.reason) for s in result.skipped] == [
        (LIBBPF.method, "runqlat is disabled by the administrator (perf-mcp-broker --disable runqlat)"),
        (FAILS.method, "failed to attach: no such tracepoint"),
    ]
    assert result.warnings()[0].startswith("runqlat (libbpf-tools) skipped: runqlat is disabled")


@pytest.mark.root
async def test_climb_stops_at_errors_no_rung_can_fix_and_lists_reasons_when_none_runs(module_broker_factory) -> None:
    broker = module_broker_factory("--disable", "runqlat")
    ladder.forget_hello()
    ctx = context(broker.socket_path)

    async def busy(rung: Rung) -> tuple[None, None]:
        raise ToolError(ErrorCode.PROFILER_BUSY, "busy")

    with pytest.raises(ToolError) as exc:
        await climb(ctx, [LIBBPF, BPFTRACE, KPROBE], {}, busy)
    assert exc.value.code is ErrorCode.PROFILER_BUSY

    async def never(rung: Rung) -> tuple[None, None]:
        raise AssertionError("no rung may run")

    with pytest.raises(ToolError) as exc:
        await climb(ctx, [LIBBPF, KPROBE], {}, never)
    assert exc.value.code is ErrorCode.CAPABILITY_MISSING
    assert "disabled by the administrator" in exc.value.message and "fsslower" in exc.value.message


async def test_climb_without_a_broker_says_so(tmp_path: Path) -> None:
    ladder.forget_hello()
    ctx = context(tmp_path / "absent.sock")

    async def never(rung: Rung) -> tuple[None, None]:
        raise AssertionError("no rung may run")

    with pytest.raises(ToolError) as exc:
        await climb(ctx, [LIBBPF, BPFTRACE], {}, never)
    assert exc.value.code is ErrorCode.BROKER_UNAVAILABLE

    async def procfs(rung: Rung) -> tuple[str, None]:
        return "from procfs", None

    local = Rung(None, "procfs")
    result = await climb(ctx, [LIBBPF, local], {}, procfs)
    assert result.value == "from procfs" and result.backend == "procfs"
    assert result.skipped[0].reason.startswith("no perf-mcp broker is listening")


@pytest.mark.root
async def test_a_procfs_rung_still_serves_a_user_the_broker_refuses(module_broker_factory, system_bus) -> None:
    broker = module_broker_factory()
    ladder.forget_hello()
    ctx = context(broker.socket_path)
    tried: list[str] = []

    async def attempt(rung: Rung) -> tuple[str, None]:
        tried.append(rung.method)
        if rung.backend is not None:
            raise ToolError(ErrorCode.PERMISSION_DENIED, "not authorized by polkit")
        return "procfs answer", None

    local = Rung(None, "procfs")
    result = await climb(ctx, [BPFTRACE, Rung(Backend.LIBBPF, "another broker rung", programs=("runqlat",)), local],
                         {}, attempt)
    assert result.value == "procfs answer" and tried == [BPFTRACE.method, local.method]
    assert [s.reason for s in result.skipped][0] == "PERMISSION_DENIED: not authorized by polkit"
    assert result.skipped[1].method == "another broker rung"  # not tried once the broker said no
    with pytest.raises(ToolError) as exc:  # without a procfs rung the refusal is the answer
        await climb(ctx, [BPFTRACE], {}, attempt)
    assert exc.value.code is ErrorCode.PERMISSION_DENIED
