"""From the broker's steps to the answer, without a broker: the real fixture outputs wrapped
in JobResults go through the tool's per-rung parse and build(), so merging (-x failures into
the counts), the comm filter, top_n, the error summary, findings and damaged output are
checked against the fixtures' known counts (tests/fixtures/syscount/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from perf_mcp.errors import ErrorCode, ToolError
from perf_mcp.tools import perf_syscall_count as tool
from perf_mcp.trace.ladder import RungFailed, Skipped
from perf_mcp_protocol import JobResult, StepResult

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "syscount"
N, ENOENT, EBADF, SLEEPS = 20000, 300, 200, 5
PROCESS_TOTAL = N + ENOENT + EBADF + SLEEPS + 2
PID = 4242


def step(name: str, fixture: str | None = None, *, raw: bytes | None = None, exit_status: int = 0,
         truncated: bool = False, stderr: bytes = b"") -> StepResult:
    out = raw if raw is not None else (FIXTURES / f"{fixture}.out").read_bytes()
    return StepResult(name=name, argv=["x"], exit_status=exit_status, signal=None, stdout=out, stderr=stderr,
                      stdout_truncated=truncated, stderr_truncated=False, timed_out=False, wall_s=3.0)


def job(*steps: StepResult) -> JobResult:
    return JobResult(job_id=7, steps=list(steps), wall_s=3.1)


def answer(counts: tool.Counts, p: tool.Params, backend: str = "bpftrace", errno_reason: str | None = None
           ) -> tuple[tool.SyscallCountData, list[str]]:
    return tool.build(counts, p, method="m", backend=backend, skipped=[], ladder_note=None,
                      target=f"pid {p.pid}" if p.pid else "all processes", argv=[], job_id=7, arch="x86_64",
                      errno_reason=errno_reason)


def test_bpftrace_answer_with_errnos_latency_and_findings() -> None:
    p = tool.Params(duration_s=3, pid=PID, include_errors=True, include_latency=True, per_process=True, top_n=3)
    counts = tool._parse_bpftrace(job(step("syscount", "bpftrace_pid_all.syscount")), p, "x86_64")
    d, warnings = answer(counts, p)
    assert warnings == []
    assert d.total_calls == PROCESS_TOTAL and d.distinct_syscalls == 6 and d.syscalls_truncated
    assert [r.name for r in d.syscalls] == ["getppid", "openat", "close"]  # top_n 3, by count
    getppid, openat, close = d.syscalls
    assert getppid.pct == round(100 * N / PROCESS_TOTAL, 2) and getppid.per_s == round(N / 3, 1)
    assert (openat.failed, openat.failed_pct, [(e.name, e.count) for e in openat.errnos]) == \
        (ENOENT, 100.0, [("ENOENT", ENOENT)])
    assert getppid.failed == 0 and getppid.errnos == [] and getppid.mean_us < 50 and getppid.max_us is not None
    assert d.errors.by_errno and d.errors.failed_calls == ENOENT + EBADF
    assert [(f.syscall, f.errno_name, f.count) for f in d.errors.top] == [("openat", "ENOENT", ENOENT),
                                                                          ("close", "EBADF", EBADF)]
    (proc,) = d.processes
    assert (proc.comm, proc.count, proc.failed) == ("wl", PROCESS_TOTAL, ENOENT + EBADF)
    ids = [f.id for f in d.findings]
    # warnings first (the failing syscalls, most failures first), then the infos by confidence
    assert ids == ["syscall.errors.openat", "syscall.errors.close", "syscall.dominant", "syscall.time"]
    dom = next(f for f in d.findings if f.id == "syscall.dominant")
    assert dom.severity == "info"  # 6,667 getppid/s: under the hot-loop rate
    assert dom.evidence[0].value == N and dom.evidence[0].threshold == tool.DOMINANT_PCT
    time_f = next(f for f in d.findings if f.id == "syscall.time")
    assert "clock_nanosleep" in time_f.title and "waiting" in time_f.title
    assert all(f.suggestion for f in d.findings)
    text = tool.summarise(d)
    assert text.splitlines()[0].startswith(f"pid {PID}: {PROCESS_TOTAL:,} system calls in 3 s")
    assert "ENOENT 300" in text and "Failed calls: 500" in text


def test_libbpf_answer_merges_failures_and_says_errno_is_unknown() -> None:
    p = tool.Params(duration_s=3, pid=PID, include_errors=True, include_latency=True)
    j = job(step("syscount", "libbpf_pid_latency_errors.syscount"),
            step("syscount_failures", "libbpf_pid_latency_errors.syscount_failures"))
    counts = tool._parse_libbpf(j, p, False, "x86_64")
    d, _ = answer(counts, p, backend="libbpf", errno_reason="bpftrace is disabled by the administrator")
    rows = {r.name: r for r in d.syscalls}
    assert (rows["openat"].failed, rows["close"].failed, rows["getppid"].failed) == (ENOENT, EBADF, 0)
    assert all(r.errnos is None for r in d.syscalls) and rows["openat"].max_us is None
    assert not d.errors.by_errno and "cannot break them down by errno" in d.errors.note
    assert "bpftrace is disabled" in d.errors.note
    assert [(f.syscall, f.errno, f.count) for f in d.errors.top] == [("openat", None, ENOENT), ("close", None, EBADF)]
    f = next(f for f in d.findings if f.id == "syscall.errors.openat")
    assert "errno not known" in f.detail and f.confidence < 0.9
    assert d.latency_note and "left out" in d.latency_note


def test_comm_filter_applies_to_process_rows_only() -> None:
    p = tool.Params(duration_s=3, comm="w", top_n=50)
    counts = tool._parse_libbpf(job(step("syscount", "libbpf_all_per_process_latency.syscount"),
                                    step("syscount_processes", "libbpf_all_per_process_latency.syscount_processes")),
                                p, True, "x86_64")
    all_procs = len(counts.processes)
    d, _ = answer(counts, p, backend="libbpf")
    assert d.processes and all("w" in pr.comm for pr in d.processes)
    assert d.processes_matched == len([pr for pr in counts.processes if "w" in pr.comm]) < all_procs
    assert any(pr.comm == "wl" for pr in d.processes)
    assert d.total_calls == sum(s.count for s in counts.syscalls)  # per-syscall rows: every process
    none, warnings = answer(counts, tool.Params(duration_s=3, comm="no-such-proc"), backend="libbpf")
    assert none.processes == [] and none.processes_matched == 0
    assert any("no process whose name contains 'no-such-proc'" in w for w in warnings)


def test_unknown_numbers_are_named_and_flagged() -> None:
    p = tool.Params(duration_s=3, pid=PID)
    raw = b'{"type": "attached_probes", "data": {"probes": 2}}\n{"type": "map", "data": {"@calls": {"110": 5, "4000": 2}}}\n'
    d, warnings = answer(tool._parse_bpftrace(job(step("syscount", raw=raw)), p, "x86_64"), p)
    assert [r.name for r in d.syscalls] == ["getppid", "unknown_4000"]
    assert any("4000" in w and "unknown_N" in w for w in warnings)


def test_damaged_and_failed_steps() -> None:
    p = tool.Params(duration_s=3, pid=PID)
    raw = (FIXTURES / "libbpf_pid.syscount.out").read_bytes()
    cut = tool._parse_libbpf(job(step("syscount", raw=raw[: len(raw) // 2], truncated=True)), p, False, "x86_64")
    assert cut.truncated and any("cut at the broker's cap" in w for w in cut.warnings)
    assert [s.name for s in cut.syscalls][:1] == ["getppid"]
    with pytest.raises(ToolError) as err:
        tool._parse_libbpf(job(step("syscount", raw=b"\x00\x01garbage\nmore garbage\n")), p, False, "x86_64")
    assert err.value.code == ErrorCode.PARSE_ERROR
    with pytest.raises(RungFailed) as failed:
        tool._parse_libbpf(job(step("syscount", raw=b"", exit_status=1,
                                    stderr=b"failed to attach sys_exit program: Invalid argument\n")),
                           p, False, "x86_64")
    assert "failed to attach" in failed.value.reason
    with pytest.raises(RungFailed):  # the -x step missing from the reply
        tool._parse_libbpf(job(step("syscount", "libbpf_pid.syscount")),
                           tool.Params(duration_s=3, include_errors=True), False, "x86_64")
    bt = (FIXTURES / "bpftrace_pid_all.syscount.out").read_bytes()
    partial = tool._parse_bpftrace(job(step("syscount", raw=bt[:120], truncated=True)), p, "x86_64")
    assert partial.truncated and any("@calls" in w for w in partial.warnings)
    with pytest.raises(ToolError) as err:
        tool._parse_bpftrace(job(step("syscount", raw=b"ERROR: something\n")), p, "x86_64")
    assert err.value.code == ErrorCode.PARSE_ERROR


def test_rung_order() -> None:
    assert [r.backend.value for r in tool.rungs_for(tool.Params())] == ["libbpf", "bpftrace"]
    assert [r.backend.value for r in tool.rungs_for(tool.Params(include_errors=True))] == ["bpftrace", "libbpf"]
    assert tool.LADDER == tool.RUNGS and all(r.unsupported(None) is None for r in tool.RUNGS)
    assert isinstance(Skipped(method="m", backend="b", reason="r"), Skipped)


def test_protocol_failures_are_not_findings() -> None:
    """futex EAGAIN/ETIMEDOUT, isatty's ioctl ENOTTY and restart codes are how those calls work."""
    raw = (b'{"type": "attached_probes", "data": {"probes": 2}}\n'
           b'{"type": "map", "data": {"@calls": {"202": 1000, "16": 500, "257": 250, "230": 300}}}\n'
           b'{"type": "map", "data": {"@errors": {"202,11": 700, "202,110": 200, "16,25": 500, "257,2": 200, '
           b'"230,516": 290}}}\n')
    p = tool.Params(duration_s=3, pid=PID, include_errors=True)
    d, _ = answer(tool._parse_bpftrace(job(step("syscount", raw=raw)), p, "x86_64"), p)
    assert [f.id for f in d.findings if f.id.startswith("syscall.errors")] == ["syscall.errors.openat"]
    rows = {r.name: r for r in d.syscalls}
    assert rows["futex"].failed == 900 and rows["ioctl"].failed_pct == 100.0  # still counted and shown
    restart = rows["clock_nanosleep"].errnos[0]
    assert (restart.name, restart.kernel_internal) == ("ERESTART_RESTARTBLOCK", True)
    libbpf = tool.Counts(syscalls=[tool.SyscallStat(nr=202, name="futex", count=1000, failed=900),
                                   tool.SyscallStat(nr=257, name="openat", count=250, failed=200)],
                         processes=None, errnos=None, failures_counted=True, bad_lines=0, truncated=False,
                         warnings=[])
    d2, _ = answer(libbpf, p, backend="libbpf")
    assert [f.id for f in d2.findings if f.id.startswith("syscall.errors")] == ["syscall.errors.openat"]
