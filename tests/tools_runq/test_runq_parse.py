"""The run-queue latency parsers (trace.runq_parse) and the tool's pure parts on
the real outputs in tests/fixtures/runqlat (see its README: HEAVY = six busy
threads on two CPUs, IDLE = a sleeping process), then truncated and garbled
copies of them: partial data with a warning, or RunqParseError (the tool's
PARSE_ERROR / OUTPUT_TRUNCATED), never another exception.

The expected counts are read from the raw text by the test's own regex / JSON
reads, not by the code under test.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_mcp.errors import ErrorCode, ToolError
from perf_mcp.trace import histogram as H
from perf_mcp.trace.ladder import RungFailed
from perf_mcp.trace.runq_parse import RunqOutput, RunqParseError, parse_runqlat_bpftrace, parse_runqlat_text
from perf_mcp.tools import perf_runq_latency as tool
from perf_mcp_protocol import JobResult, StepResult

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "runqlat"
META = json.loads((FIX / "meta.json").read_text())
HEAVY, IDLE = META["heavy_pid"], META["idle_pid"]
TEXT = sorted(p.name for p in FIX.glob("libbpf_*.txt"))
JSON = sorted(p.name for p in FIX.glob("bpftrace_*.json"))
ROW = re.compile(rb"^\s*(\d+) -> (\d+)\s*: (\d+)\s*\|", re.M)


def parse(name: str, raw: bytes | None = None) -> RunqOutput:
    raw = (FIX / name).read_bytes() if raw is None else raw
    if name.endswith(".txt"):
        return parse_runqlat_text(raw, per_pid="per_pid" in name)
    return parse_runqlat_bpftrace(raw)


def schedstat_mean_us(name: str) -> float:
    c = META["captures"][name]
    return c["wait_ns"] / c["slices"] / 1000.0


def maps(name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in (FIX / name).read_bytes().splitlines():
        if line.strip():
            obj = json.loads(line)
            if obj["type"] in ("map", "hist"):
                out.update(obj["data"])
    return out


def test_fixtures_are_all_listed() -> None:
    assert set(TEXT) | set(JSON) == set(META["captures"]) and len(TEXT) == 5 and len(JSON) == 4


# ---------------------------------------------------------------- libbpf-tools runqlat


@pytest.mark.parametrize("name", TEXT)
def test_runqlat_text_counts_every_bucket(name: str) -> None:
    raw = (FIX / name).read_bytes()
    rows = [(int(lo), int(hi), int(c)) for lo, hi, c in ROW.findall(raw)]
    out = parse(name)
    assert out.warnings == [] and out.bad_lines == 0
    assert out.total.count == sum(c for _, _, c in rows)
    assert out.total.unit == "us" and out.total.total is None  # runqlat prints no sum: mean estimated
    assert all(hi + 1 == 2 * (lo or 1) or (lo, hi) == (0, 1) for lo, hi, _ in rows)  # log2 buckets of whole us
    if "per_pid" in name:
        assert out.per_pid is not None and sum(p.hist.count for p in out.per_pid.values()) == out.total.count
        assert len(out.per_pid) == raw.count(b"pid = ")
    else:
        assert out.per_pid is None


def test_runqlat_pid_mean_agrees_with_schedstat() -> None:
    """HEAVY's waits from runqlat -p against the kernel's account across the same run
    (runqlat starts in ~0.2 s, so the windows nearly match): within the x4/3 of a
    log2 midpoint estimate plus the load changing over 0.2 s."""
    for name in ("libbpf_pid.txt", "libbpf_pid_per_pid.txt"):
        m, exact = H.mean(parse(name).total)
        assert exact is False
        assert 1 / 1.6 <= m / schedstat_mean_us(name) <= 1.6, (name, m, schedstat_mean_us(name))
    (p,) = parse("libbpf_pid_per_pid.txt").per_pid.values()  # type: ignore[union-attr]
    assert p.pid == HEAVY and re.fullmatch(r"rq-spin-[0-5]", p.comm)


def test_runqlat_system_per_pid_holds_heavy_with_its_comm() -> None:
    out = parse("libbpf_system_per_pid.txt")
    assert out.per_pid is not None and out.per_pid[HEAVY].comm.startswith("rq-spin-")
    heavy = out.per_pid[HEAVY].hist
    m, _ = H.mean(heavy)
    assert 1 / 1.6 <= m / schedstat_mean_us("libbpf_system_per_pid.txt") <= 1.6
    # six threads always waiting for two CPUs: HEAVY waited longest in total
    rows, seen = tool.process_rows(out, 5)
    assert seen == len(out.per_pid) and len(rows) == 5 and rows[0].pid == HEAVY
    assert [r.total_wait_ms for r in rows] == sorted((r.total_wait_ms for r in rows), reverse=True)


def test_runqlat_idle_pid_is_no_waits_not_an_error() -> None:
    out = parse("libbpf_idle_pid.txt")
    assert out.total.count == 0 and out.warnings == []
    s = H.to_struct(out.total, "us")
    assert s.count == 0 and s.p99_us is None and s.buckets == []


# ---------------------------------------------------------------- bpftrace runqlat.bt


@pytest.mark.parametrize("name", JSON)
def test_bpftrace_exact_sum_count_and_keyed_histograms(name: str) -> None:
    m = maps(name)
    out = parse(name)
    assert out.warnings == [] and out.bad_lines == 0
    assert out.counted == m["@count"] == out.total.count == sum(b["count"] for b in m.get("@usecs", []))
    if m["@count"]:
        assert out.total.total == pytest.approx(m["@sum_ns"] / 1000.0)
        mean, exact = H.mean(out.total)
        assert exact and mean == pytest.approx(m["@sum_ns"] / m["@count"] / 1000.0)
    if "per_cpu" in name:
        assert out.per_cpu is not None
        assert sum(h.count for h in out.per_cpu.values()) == out.total.count
        assert sum(h.total or 0 for h in out.per_cpu.values()) == pytest.approx(out.total.total)
        assert set(out.per_cpu) <= set(range(META["cpus"]))
        assert {str(c): h.count for c, h in out.per_cpu.items()} == m["@count_cpu"]
    if "per_pid" in name:
        assert out.per_pid is not None
        assert sum(p.hist.count for p in out.per_pid.values()) == out.total.count
        assert {str(p): ph.hist.count for p, ph in out.per_pid.items()} == m["@count_pid"]
        assert out.per_pid[HEAVY].comm.startswith("rq-spin-")


def test_bpftrace_pid_filter_and_the_known_answer() -> None:
    name = "bpftrace_pid_per_cpu_per_pid.json"
    out = parse(name)
    assert list(out.per_pid or {}) == [HEAVY]  # the pid filter: no other process
    comms = {k.split(",", 1)[1] for k in maps(name)["@comm_pid"]}
    assert comms == {f"rq-spin-{i}" for i in range(6)}  # every thread, not only the first
    # the schedstat window holds the script's compile too: a loose factor
    mean, _ = H.mean(out.total)
    assert 1 / 1.6 <= mean / schedstat_mean_us(name) <= 1.6
    assert out.total.count <= META["captures"][name]["slices"]


def test_bpftrace_system_per_pid_comm_with_a_comma_and_cpu_rows() -> None:
    out = parse("bpftrace_system_per_cpu_per_pid.json")
    rows = tool.cpu_rows(out)
    assert rows is not None and [r.cpu for r in rows] == tool.online_cpus()
    assert sum(r.histogram.count for r in rows) == out.total.count
    raw = (b'{"type": "map", "data": {"@comm_pid": {"7,a,b": 3, "7,x": 1, "bad": 2, "8,y": "z"}}}\n'
           b'{"type": "map", "data": {"@count": 1}}\n{"type": "map", "data": {"@sum_ns": 5000}}\n'
           b'{"type": "map", "data": {"@count_pid": {"7": 1}}}\n{"type": "map", "data": {"@sum_ns_pid": {"7": 5000}}}\n'
           b'{"type": "hist", "data": {"@usecs": [{"min": 4, "max": 7, "count": 1}]}}\n'
           b'{"type": "hist", "data": {"@usecs_pid": {"7": [{"min": 4, "max": 7, "count": 1}]}}}\n')
    o = parse_runqlat_bpftrace(raw)
    assert o.per_pid is not None and o.per_pid[7].comm == "a,b" and H.mean(o.per_pid[7].hist) == (5.0, True)


@pytest.mark.parametrize("name", JSON)
def test_bpftrace_window_is_the_duration(name: str) -> None:
    out = parse(name)
    dur = int(META["captures"][name]["argv"][4])
    # the timer can fire late on a loaded machine: the window states what was traced
    assert out.window_ns is not None and dur <= (out.window_ns[1] - out.window_ns[0]) / 1e9 <= dur + 0.3
    assert all(parse(t).window_ns is None for t in TEXT)


def test_bpftrace_idle_pid_is_no_waits() -> None:
    out = parse("bpftrace_idle_pid.json")
    assert out.total.count == 0 and out.counted == 0 and out.warnings == []


# ---------------------------------------------------------------- damaged copies


def _check_partial(name: str, raw: bytes) -> RunqOutput | None:
    full = parse(name)
    try:
        out = parse(name, raw)
    except RunqParseError:
        return None
    assert out.total.count <= full.total.count
    assert all(math.isfinite(lo) for lo, _, _ in out.total.buckets)
    for hists in (out.per_cpu or {}).values(), [p.hist for p in (out.per_pid or {}).values()]:
        for h in hists:
            assert h.count >= 0
    H.to_struct(out.total, "us")  # always renders
    return out


@pytest.mark.parametrize("name", TEXT + JSON)
def test_every_truncation_gives_partial_data_or_a_parse_error(name: str) -> None:
    raw = (FIX / name).read_bytes()
    full = parse(name)
    lines = [m.end() for m in re.finditer(rb"\n", raw)]
    cuts = sorted({*range(0, len(raw), max(1, len(raw) // 150)), *lines[:: max(1, len(lines) // 150)]})
    partial = errors = 0
    for cut in cuts:
        out = _check_partial(name, raw[:cut])
        if out is None:
            errors += 1
            continue
        partial += 1
        cut_mid_line = cut and raw[cut - 1 : cut] != b"\n" and raw[cut : cut + 1] != b"\n"
        if out.total.count < full.total.count and name.endswith(".txt") and cut_mid_line:
            assert any("ends mid-line" in w for w in out.warnings), out.warnings
        if name.endswith(".json") and cut_mid_line and b"\n" in raw[:cut] and raw[:cut].rsplit(b"\n", 1)[1].strip():
            assert any("could not be read" in w for w in out.warnings), (cut, out.warnings)
    print(f"\n{name}: {len(cuts)} cuts, {partial} partial answers, {errors} parse errors")
    assert partial > 0


def test_bpftrace_count_disagreeing_with_the_hist_loses_exactness_with_a_warning() -> None:
    raw = (FIX / "bpftrace_pid_per_cpu_per_pid.json").read_bytes()
    m = maps("bpftrace_pid_per_cpu_per_pid.json")
    bad = raw.replace(f'{{"@count": {m["@count"]}}}'.encode(), f'{{"@count": {m["@count"] + 5}}}'.encode())
    out = parse_runqlat_bpftrace(bad)
    assert out.total.total is None and H.mean(out.total)[1] is False
    assert any("the script counted" in w for w in out.warnings)


def test_bpftrace_hist_cut_off_is_a_parse_error_in_the_tool() -> None:
    raw = b"".join(line + b"\n" for line in (FIX / "bpftrace_pid_per_cpu_per_pid.json").read_bytes().splitlines()
                   if b'"hist"' not in line)
    out = parse_runqlat_bpftrace(raw)
    assert out.total.count == 0 and out.counted and any("missing" in w for w in out.warnings)
    for truncated, code in ((False, ErrorCode.PARSE_ERROR), (True, ErrorCode.OUTPUT_TRUNCATED)):
        with pytest.raises(ToolError) as err:
            tool.parse_step(tool.RUNGS[1], job(raw, truncated=truncated), tool.Params(pid=HEAVY))
        assert err.value.code == code


@pytest.mark.parametrize("raw", [b"", b"\n\n", b"garbage\n", b"ERROR: Unknown error -1: couldn't attach\n",
                                 b"\xff\xfe\x00binary", b'{"type": "map", "data": 3}\n', b"[1, 2]\n"])
def test_nothing_recognisable_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(RunqParseError):
        parse_runqlat_bpftrace(raw)
    with pytest.raises(RunqParseError):
        parse_runqlat_text(raw)
    for i, rung in enumerate(tool.RUNGS):
        with pytest.raises(ToolError) as err:
            tool.parse_step(rung, job(raw), tool.Params())
        assert err.value.code == ErrorCode.PARSE_ERROR, i


def test_runqlat_damaged_rows_and_units() -> None:
    raw = (FIX / "libbpf_pid.txt").read_bytes()
    lines = raw.split(b"\n")
    lines[6] = b"        16 -> 31          : 1x6      |*       "
    out = parse_runqlat_text(b"\n".join(lines))
    assert out.bad_lines == 1 and any("damaged" in w for w in out.warnings)
    assert 0 < out.total.count < parse("libbpf_pid.txt").total.count
    ms = raw.replace(b"usecs", b"msecs")
    out = parse_runqlat_text(ms)
    assert out.total.count == 0 and any("unexpected units" in w for w in out.warnings)


def job(stdout: bytes, *, truncated: bool = False, exit_status: int = 0, stderr: bytes = b"") -> JobResult:
    step = StepResult(name="runqlat", argv=["x"], exit_status=exit_status, signal=None, stdout=stdout, stderr=stderr,
                      stdout_truncated=truncated, stderr_truncated=False, timed_out=False, wall_s=2.0)
    return JobResult(job_id=1, steps=[step], wall_s=2.0)


def test_a_failed_program_moves_the_ladder_on() -> None:
    with pytest.raises(RungFailed) as err:
        tool.parse_step(tool.RUNGS[0], job(b"", exit_status=1, stderr=b"failed to load BPF object\n"),
                        tool.Params())
    assert "failed to load BPF object" in err.value.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(TEXT + JSON), data=st.data())
def test_garbled_copies_never_crash(name: str, data: st.DataObject) -> None:
    raw = bytearray((FIX / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 12))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "drop":
            del raw[i : i + data.draw(st.integers(1, 40))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=20))
    try:
        out = parse(name, bytes(raw))
    except RunqParseError:
        return
    H.to_struct(out.total, "us")
    assert out.total.count >= 0
    for r in tool.process_rows(out, 10)[0]:
        msgspec.json.encode(r)


# ---------------------------------------------------------------- findings


def test_findings_p99_warning_with_evidence_and_next_step_and_a_quiet_control() -> None:
    out = parse("bpftrace_pid_per_cpu_per_pid.json")
    p = tool.Params(pid=HEAVY, duration_s=2, per_pid=True, per_cpu=True)
    data = data_for(out, p)
    (f,) = [f for f in data.findings if f.id == "runq.p99_high"]
    p99 = data.histogram.p99_us
    assert p99 > 10_000 and f.severity == ("critical" if p99 > 100_000 else "warning")
    ev = f.evidence[0]
    assert (ev.tool, ev.counter, ev.value, ev.window_s) == ("perf_runq_latency", "runq_latency_p99_us",
                                                            round(p99, 1), 2.0)
    assert ev.threshold == (100_000.0 if f.severity == "critical" else 10_000.0)
    assert re.fullmatch(rf"\d+ of {data.histogram.count} waits in \[\d+, \d+\) us", ev.sample or "")
    assert f'perf_thread_profile {{"pid": {HEAVY}, "duration_s": 5}}' in f.suggestion
    assert 'perf_cpu_profile {"duration_s": 10}' in f.suggestion
    assert "pid" in f.title and f.metrics["waits"] == data.histogram.count == maps(
        "bpftrace_pid_per_cpu_per_pid.json")["@count"]

    quiet = data_for(parse("bpftrace_idle_pid.json"), tool.Params(pid=IDLE, duration_s=1))
    assert [(f.id, f.severity) for f in quiet.findings] == [("runq.no_waits", "info")]
    assert f'perf_thread_profile {{"pid": {IDLE}, "duration_s": 5}}' in quiet.findings[0].suggestion

    system = data_for(parse("libbpf_system_per_pid.txt"), tool.Params(duration_s=2, per_pid=True))
    hi = [f for f in system.findings if f.id == "runq.p99_high"]
    if hi:  # names the process that waited most, to profile next
        assert f'perf_cpu_profile {{"pid": {HEAVY}, "duration_s": 10}}' in hi[0].suggestion


def data_for(out: RunqOutput, p: tool.Params) -> tool.RunqLatencyData:
    rows, seen = tool.process_rows(out, p.top_n) if p.per_pid else (None, None)
    d = tool.RunqLatencyData(
        method="m", backend="b", skipped=[], target="t", pid=p.pid, duration_s=p.duration_s, trace_start="",
        trace_end="", trace_window_exact=False,
        waits=out.total.count, waits_per_s=0.0, total_wait_ms=None, histogram=H.to_struct(out.total, "us"),
        cpus=tool.cpu_rows(out) if p.per_cpu else None, processes=rows, processes_seen=seen, findings=[],
        argv=[], broker_job_id=None)
    d.findings = tool.findings(d, out.total, p, rows)
    msgspec.json.encode(d)
    return d


def test_ladder_for_perf_info_and_the_per_cpu_skip_reason() -> None:
    from perf_mcp.trace.ladder import host_ladders, why_not

    assert tool.LADDER is tool.RUNGS and [r.backend.value for r in tool.RUNGS] == ["libbpf", "bpftrace"]
    (mine,) = [lad for lad in host_ladders(None) if lad.tool == "perf_runq_latency"]  # params None: no crash
    assert [r.backend for r in mine.rungs] == ["libbpf", "bpftrace"]
    reason = why_not(tool.RUNGS[0], None, tool.Params(per_cpu=True))
    assert reason is not None and "no per-CPU histograms" in reason
    assert why_not(tool.RUNGS[0], None, tool.Params()) == "no broker"
