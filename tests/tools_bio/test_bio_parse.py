"""bio_parse on the real outputs captured here (tests/fixtures/biolatency, see its
README and meta.json), and on truncated and garbled copies of them: partial data
with a warning or BioParseError, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.trace import histogram as H
from perf_mcp.trace.bio_parse import BioParseError, parse_biolatency_bpftrace, parse_biolatency_text

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "biolatency"
META = json.loads((FIX / "meta.json").read_text())
LOOP = (META["major"], META["minor"])
TEXT = ["libbpf.txt", "libbpf_per_device.txt", "libbpf_per_device_queued_ms.txt"]
JSON = ["bpftrace.json", "bpftrace_per_device_queued.json", "bpftrace_per_device_linear_1ms.json",
        "bpftrace_per_device_linear_ms.json"]


def _unit(name: str) -> str:
    return "ms" if name.endswith("_ms.txt") or name.endswith("_ms.json") else "us"


def parse(name: str, raw: bytes | None = None):
    raw = (FIX / name).read_bytes() if raw is None else raw
    if name.endswith(".txt"):
        return parse_biolatency_text(raw, unit=_unit(name), per_device="per_device" in name)
    return parse_biolatency_bpftrace(raw, unit=_unit(name))


def test_libbpf_per_device_names_the_loop_device_with_fio_count() -> None:
    out = parse("libbpf_per_device.txt")
    rows = {d.name: d.hist for d in out.per_device}
    fio = META["captures"]["libbpf_per_device.txt"]["fio_ios"]
    assert rows[META["loop"]].count == fio and out.warnings == []
    assert out.total.count == sum(h.count for h in rows.values())
    assert out.total.total is None and H.mean(out.total)[1] is False  # no sum: estimated
    ms = parse("libbpf_per_device_queued_ms.txt")
    loop = {d.name: d.hist for d in ms.per_device}[META["loop"]]
    assert loop.unit == "ms" and loop.count == fio and loop.buckets[0][:2] == (0.0, 2.0)


def test_libbpf_total_holds_the_loop_io() -> None:
    out = parse("libbpf.txt")
    assert out.per_device is None and out.total.count >= META["captures"]["libbpf.txt"]["fio_ios"]


def test_bpftrace_exact_mean_per_device_and_queue() -> None:
    out = parse("bpftrace_per_device_queued.json")
    assert out.warnings == [] and out.window_ns is not None
    devs = {d.dev: d.hist for d in out.per_device}
    loop = devs[LOOP]
    cap = META["captures"]["bpftrace_per_device_queued.json"]
    assert loop.count == cap["fio_ios"]
    m, exact = H.mean(loop)
    assert exact and m <= cap["fio_clat_mean_us"] * 1.02 + 5  # each request inside fio's pread
    assert out.total.count == sum(h.count for h in devs.values()) == out.counted
    assert out.total.total == pytest.approx(sum(h.total for h in devs.values()))
    ns, n = out.queue[LOOP]
    assert n == loop.count and 0 < ns  # mq-deadline: every request inserted
    assert parse("bpftrace.json").per_device is None


def test_bpftrace_linear_buckets_have_the_width_asked() -> None:
    us = parse("bpftrace_per_device_linear_1ms.json")
    assert us.total.kind == "linear" and all(hi - lo == 1000.0 for lo, hi, _ in us.total.buckets)
    ms = parse("bpftrace_per_device_linear_ms.json")
    assert ms.total.unit == "ms" and ms.total.buckets[0][:2] == (0.0, 10.0)
    assert ms.total.count == ms.counted and H.mean(ms.total)[1] is True


@pytest.mark.parametrize("name", TEXT + JSON)
def test_every_cut_gives_partial_data_or_a_parse_error(name: str) -> None:
    raw = (FIX / name).read_bytes()
    full = parse(name).total.count
    for cut in range(0, len(raw), 7):
        try:
            out = parse(name, raw[:cut])
        except BioParseError:
            continue
        assert out.total.count <= full
        if out.total.count < full and cut < len(raw.rstrip()):
            assert out.warnings or out.total.count == 0 or name.endswith(".txt"), cut


@pytest.mark.parametrize("name", TEXT + JSON)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_garbled_copies_never_crash(name: str, data: st.DataObject) -> None:
    raw = bytearray((FIX / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        out = parse(name, bytes(raw))
    except BioParseError:
        return
    assert out.total.count >= 0


def test_nothing_is_a_parse_error() -> None:
    for name in ("libbpf.txt", "bpftrace.json"):
        with pytest.raises(BioParseError):
            parse(name, b"")
        with pytest.raises(BioParseError):
            parse(name, b"ERROR: something else\n")
