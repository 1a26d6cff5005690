"""vfs_parse on real vfslat.bt outputs captured here (tests/fixtures/vfslat), fsslower's
CSV as its source prints it, and truncated / garbled copies: partial data with a
warning, or VfsParseError; never another exception."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.tools import perf_vfs_latency as V
from perf_mcp.trace.vfs_parse import VfsParseError, parse_fsslower_csv, parse_vfslat_bpftrace

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "vfslat"
SYSTEM = (FIX / "bpftrace_system_min50.json").read_bytes()
PID = (FIX / "bpftrace_pid_min0.json").read_bytes()


def test_system_capture_fifo_reads_at_200ms() -> None:
    out = parse_vfslat_bpftrace(SYSTEM)
    assert out.warnings == [] and out.bad_lines == 0 and out.all_calls
    fifo = [c for c in out.slow if c.file_class == "fifo"]
    assert len(fifo) >= 8 and all(c.op == "read" and c.name == "slow.fifo" for c in fifo)
    assert all(195e6 <= c.latency_ns <= 260e6 for c in fifo)
    start, end = out.window_ns  # type: ignore[misc]
    assert 1.9e9 <= end - start <= 2.3e9
    # every call has exactly one histogram entry per (op, class); sums are exact
    for (op, cl), h in out.hists.items():
        assert h.total is not None and h.count > 0
    assert all(c.latency_ns >= 50e6 for c in out.slow)


def test_pid_capture_every_call_listed_and_paths_from_opens() -> None:
    out = parse_vfslat_bpftrace(PID)
    counted = sum(h.count for h in out.hists.values())
    assert len(out.slow) == counted  # min 0: every call is listed
    fsync_h = out.hists[("fsync", "file")]
    fsyncs = [c for c in out.slow if c.op == "fsync"]
    assert fsync_h.count == len(fsyncs)
    assert fsync_h.total == pytest.approx(sum(c.latency_ns for c in fsyncs) / 1000)
    rows = V.resolve_paths(out, readlink=lambda pid, fd: None)
    srcs = {src for c, _, src in rows if c.op == "fsync"}
    assert srcs <= {"open", "name"} and sum(1 for c, _, s in rows if c.op == "fsync" and s == "open") >= len(fsyncs) - 1
    p = V.Params(pid=1, min_latency_ms=0, top_n=5)
    data, warnings = V.build_data(out, p, method="m", backend="bpftrace", skipped=[], target="t", argv=[], job_id=1,
                                  answered_ns=time.monotonic_ns(), readlink=lambda pid, fd: None)
    assert len(data.slow_calls) == 5 and data.slow_calls_total > 5
    assert data.excluded_calls > 0  # its writes to the stdout pipe
    assert [o.op for o in data.operations] == ["read", "write", "fsync", "open"]


def test_a_window_without_calls_is_an_answer_with_no_operations() -> None:
    """A sleeping process traced 2 s: bpftrace prints no empty map, only the window's
    @start_ns and @end_ns. That is zero calls, not damage: no error, no warning, and the
    tool's answer says none were seen (vfs.no_calls)."""
    out = parse_vfslat_bpftrace((FIX / "bpftrace_pid_idle.json").read_bytes())
    assert out.hists == {} and out.slow == [] and out.opens == [] and out.warnings == [] and out.all_calls
    start, end = out.window_ns  # type: ignore[misc]
    assert 1.9e9 <= end - start <= 2.3e9
    p = V.Params(pid=1, duration_s=2, min_latency_ms=0)
    data, warnings = V.build_data(out, p, method="m", backend="bpftrace", skipped=[], target="pid 1", argv=[],
                                  job_id=1, answered_ns=time.monotonic_ns(), readlink=lambda pid, fd: None)
    assert warnings == [] and sum(o.calls for o in data.operations) == 0 and data.slow_calls_total == 0
    assert [f.id for f in data.findings] == ["vfs.no_calls"]
    # the script's start line alone (cut before the maps) is still damage
    with pytest.raises(VfsParseError):
        parse_vfslat_bpftrace((FIX / "bpftrace_pid_idle.json").read_bytes().split(b"\n")[0])


def test_fsslower_csv_from_its_source_format() -> None:
    out = parse_fsslower_csv((FIX / "fsslower_written.csv").read_bytes())
    assert out.warnings == [] and not out.all_calls
    a, b, c = out.slow
    assert (a.op, a.pid, a.latency_ns, a.ret, a.name) == ("fsync", 25357, 12_042_000, None, "fsync-target.dat")
    assert (b.op, b.comm, b.pid, b.ret) == ("read", "my,task", 25358, 4096)
    assert (c.op, c.name) == ("open", "a,b.dat")
    assert out.hists[("fsync", "file")].count == 1


@pytest.mark.parametrize("raw", [SYSTEM, PID])
def test_truncated_copies_give_partial_data_or_a_parse_error(raw: bytes) -> None:
    for cut in range(0, len(raw), max(1, len(raw) // 97)):
        try:
            out = parse_vfslat_bpftrace(raw[:cut])
        except VfsParseError:
            continue
        if cut < len(raw) and "@count" not in raw[:cut].decode(errors="replace"):
            assert out.warnings


def test_garbled_lines_are_counted() -> None:
    lines = SYSTEM.splitlines()
    bad = b"\n".join(lines[:5] + [b'{"type": "printf", "data": "S x y\\n"}', b"\xff\xfe garbage"] + lines[5:])
    out = parse_vfslat_bpftrace(bad)
    assert out.bad_lines >= 2 and any("damaged" in w or "could not be read" in w for w in out.warnings)
    with pytest.raises(VfsParseError):
        parse_vfslat_bpftrace(b"")
    with pytest.raises(VfsParseError):
        parse_fsslower_csv(b"nothing here\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=len(PID)))
def test_never_crashes(junk: bytes, cut: int) -> None:
    for raw in (junk, PID[:cut] + junk, junk + PID[cut:]):
        for parse in (parse_vfslat_bpftrace, parse_fsslower_csv):
            try:
                parse(raw)
            except VfsParseError:
                pass
