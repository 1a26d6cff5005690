"""iolayers_parse on real iolayers.bt outputs captured here (tests/fixtures/iolayers),
vfsstat's format as its source prints it, truncated and garbled copies; and the hit
ratio arithmetic (clamped and explained)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.tools.perf_io_layers import from_bpftrace, hit_ratio
from perf_mcp.trace.iolayers_parse import IoLayersParseError, parse_iolayers_bpftrace, parse_vfsstat_text

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "iolayers"
PER = (FIX / "bpftrace_per_process.json").read_bytes()
SYS = (FIX / "bpftrace_system.json").read_bytes()


def test_per_process_capture_names_the_cold_reader() -> None:
    out = parse_iolayers_bpftrace(PER)
    assert out.warnings == [] and out.per_pid is not None and out.window_ns is not None
    top = max(out.per_pid.values(), key=lambda p: p.blk.get(0).bytes if p.blk.get(0) else 0)
    assert top.comm == "python3"
    sys_read, blk_read = top.sys[(0, 0)].bytes, top.blk[0].bytes
    assert 0.9 <= blk_read / sys_read <= 1.1  # every pass was dropped from the cache first
    m = from_bpftrace(out)
    assert m.syscalls.read_bytes == out.sys[(0, 0)].bytes and m.block.read_bytes == out.blk[0].bytes
    assert sum(d.read_bytes for d in m.devices) == m.block.read_bytes


def test_system_capture_has_no_per_process_maps() -> None:
    out = parse_iolayers_bpftrace(SYS)
    assert out.per_pid is None and out.sys and out.blk and out.warnings == []


def test_vfsstat_format() -> None:
    r = parse_vfsstat_text((FIX / "vfsstat_written.txt").read_bytes())
    assert r.intervals == 1 and r.rates["read"] == 812.0 and r.rates["fsync"] == 4.0
    with pytest.raises(IoLayersParseError):
        parse_vfsstat_text(b"TIME READ/s\n")


def test_hit_ratio_clamped_and_explained() -> None:
    assert hit_ratio(100, 0)[0] == 1.0
    assert hit_ratio(100, 95)[0] == pytest.approx(0.05)
    r, note = hit_ratio(100, 300)
    assert r == 0.0 and "clamped to 0" in note
    assert hit_ratio(0, 10)[0] is None and hit_ratio(None, 10)[0] is None


def test_truncated_and_garbled() -> None:
    for cut in range(0, len(PER), max(1, len(PER) // 101)):
        try:
            out = parse_iolayers_bpftrace(PER[:cut])
        except IoLayersParseError:
            continue
        if b"@start_ns" not in PER[:cut] or b"@end_ns" not in PER[:cut]:
            assert out.warnings
    lines = PER.splitlines()
    out = parse_iolayers_bpftrace(b"\n".join([b"{garbage", *lines, b'{"type": "map", "data": {"@sys_bytes": {"x": 1}}}']))
    assert out.bad_lines >= 1 and out.warnings
    with pytest.raises(IoLayersParseError):
        parse_iolayers_bpftrace(b"")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=len(PER)))
def test_never_crashes(junk: bytes, cut: int) -> None:
    for raw in (junk, PER[:cut] + junk, junk + PER[cut:]):
        try:
            parse_iolayers_bpftrace(raw)
        except IoLayersParseError:
            pass
        try:
            parse_vfsstat_text(raw)
        except IoLayersParseError:
            pass
