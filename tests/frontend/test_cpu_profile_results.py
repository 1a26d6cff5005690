"""perf_cpu_profile's handling of broker results, with the broker's reply scripted.

The real broker never produces garbled perf output or a perf that fails on cue, so
these feed the handler recorded outputs (and damaged copies) through a stand-in
broker object; everything after the broker (parsing, analysis, artifacts, errors)
is the real code. The real broker path is in test_e2e_broker.py.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from perf_mcp.artifacts import ArtifactStore
from perf_mcp.broker_client import BrokerReply
from perf_mcp.errors import ErrorCode, ToolError
from perf_mcp.registry import Services, ToolContext
from perf_mcp.tools import perf_cpu_profile as tool
from perf_mcp_protocol import BrokerHello, JobResult, KernelFeatures, StepResult, limits

FIXTURE = (Path(__file__).resolve().parent.parent / "fixtures" / "perf_script" / "pid_c_framepointers.txt").read_bytes()
RECORD_ERR = b"[ perf record: Woken up 1 times to write data ]\n[ perf record: Captured and wrote 0.019 MB x (190 samples) ]\n"


def step(name: str, *, stdout: bytes = b"", stderr: bytes = b"", exit_status: int | None = 0, sig: int | None = None,
         truncated: bool = False, argv: list[str] | None = None) -> StepResult:
    return StepResult(name=name, argv=argv or ["/usr/bin/perf", name], exit_status=exit_status, signal=sig,
                      stdout=stdout, stderr=stderr, stdout_truncated=truncated, stderr_truncated=False,
                      timed_out=False, wall_s=1.0)


class ScriptedBroker:
    socket_path = "scripted"

    def __init__(self, *steps: StepResult) -> None:
        self.steps = list(steps)

    async def run(self, request: Any, *, timeout_s: float, on_progress: Any = None) -> BrokerReply:
        hello = BrokerHello(protocol_version=limits.PROTOCOL_VERSION, broker_version="t",
                            programs={"perf": "/usr/bin/perf"}, missing=["bpftrace"],
                            job_kinds=[], output_cap=limits.DEFAULT_OUTPUT_CAP, max_jobs_per_uid=1, max_jobs=4,
                            kernel=KernelFeatures(btf=True, tracefs=True, kprobe_events=False,
                                                  perf_event_paranoid=2, kptr_restrict=0))
        return BrokerReply(hello=hello, job_id=3, final=JobResult(job_id=3, steps=self.steps, wall_s=2.0))


async def call(broker: ScriptedBroker, **params: Any) -> tuple[Any, ArtifactStore]:
    store = ArtifactStore()

    async def progress(v: float, t: float | None, m: str | None) -> None:
        pass

    ctx = ToolContext(tool="perf_cpu_profile", broker=broker, artifacts=store, services=Services(),  # type: ignore[arg-type]
                      progress=progress)
    return await tool.run(ctx, tool.Params(duration_s=1, **params)), store


def record_ok() -> StepResult:
    return step("record", stderr=RECORD_ERR, exit_status=None, sig=signal.SIGINT,
                argv=["/usr/bin/perf", "record", "-e", "cpu-clock", "-F", "99", "-g", "-a", "-o", "/x/perf.data"])


async def test_recorded_output_gives_a_profile_and_artifacts() -> None:
    out, store = await call(ScriptedBroker(record_ok(), step("script", stdout=FIXTURE)))
    d = out.data
    assert d.samples == 190 and d.top_functions[0].function == "leaf_mul"
    assert d.method.startswith("perf record -g (cpu-clock)")
    assert {a.name for a in d.artifacts} == {"flamegraph.svg", "stacks.folded", "perf-script.txt"}
    assert store.get(d.artifacts[0].uri) is not None
    # the bpftrace rung serves process profiles only: the one warning says why it was skipped
    assert d.backend == "perf" and [s.backend for s in d.skipped] == ["bpftrace"]
    assert "system-wide" in d.skipped[0].reason
    assert out.warnings == [f"{d.skipped[0].method} skipped: {d.skipped[0].reason}"] and out.truncated is False
    assert out.summary.splitlines()[0].startswith("CPU profile of system-wide")


async def test_truncated_output_is_flagged_and_partial() -> None:
    cut = FIXTURE[: len(FIXTURE) // 2]
    out, _ = await call(ScriptedBroker(record_ok(), step("script", stdout=cut, truncated=True)))
    assert out.truncated is True
    assert any("cut at the broker's cap" in w for w in out.warnings)
    assert 0 < out.data.samples < 190


async def test_garbage_output_is_a_parse_error() -> None:
    with pytest.raises(ToolError) as exc:
        await call(ScriptedBroker(record_ok(), step("script", stdout=b"\x00\x01 not perf\nat all\n")))
    assert exc.value.code is ErrorCode.PARSE_ERROR


async def test_empty_output_is_no_samples_with_a_warning() -> None:
    out, _ = await call(ScriptedBroker(record_ok(), step("script", stdout=b"")))
    assert out.data.samples == 0 and any("no samples" in w for w in out.warnings)


async def test_record_failures_map_to_error_codes() -> None:
    gone = step("record", stderr=b"Couldn't create thread/CPU maps: No such process\n", exit_status=244)
    with pytest.raises(ToolError) as exc:
        await call(ScriptedBroker(gone, step("script")), pid=1)
    assert exc.value.code is ErrorCode.PID_NOT_FOUND
    broken = step("record", stderr=b"Error:\nsomething odd\n", exit_status=255)
    with pytest.raises(ToolError) as exc:
        await call(ScriptedBroker(broken, step("script")))
    assert exc.value.code is ErrorCode.EXECUTION_FAILED and "something odd" in exc.value.message


async def test_collapsed_output_is_capped_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool, "INLINE_FOLDED_MAX", 200)
    out, _ = await call(ScriptedBroker(record_ok(), step("script", stdout=FIXTURE)), output_format="collapsed")
    assert out.data.folded is not None and 0 < len(out.data.folded) <= 200 and out.data.folded.endswith("\n")
    assert out.truncated is True


async def test_cap_before_the_first_sample_is_output_truncated() -> None:
    with pytest.raises(ToolError) as exc:
        await call(ScriptedBroker(record_ok(), step("script", stdout=FIXTURE[:60], truncated=True)))
    assert exc.value.code is ErrorCode.OUTPUT_TRUNCATED
