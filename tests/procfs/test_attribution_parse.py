"""Parsers of procfs/attribution.py, on text captured on this machine:
- process_io.txt: the broker's ProcessIo text (first 75 processes of a real read, as root);
- stat_init.txt / stat_odd_comm.txt: /proc/PID/stat of pid 1 and of a process whose comm
  was set to "a) b (c" (the comm ends at the LAST ')').
Truncated and garbled copies give partial data with a warning, never an exception.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.procfs.attribution import parse_process_io, parse_stat_fields

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "process_io"
TEXT = (FIXTURES / "process_io.txt").read_bytes()


def test_process_io_text() -> None:
    entries, warnings = parse_process_io(TEXT)
    assert warnings == [] and len(entries) == TEXT.count(b"pid ") == 75
    assert list(entries) == sorted(entries)
    assert entries[1].io is None and entries[1].fds == 300  # the VM's init: io refused even to root
    kthread = entries[2]
    assert kthread.fds == 0 and kthread.io is not None and kthread.io.write_bytes == 0 and kthread.io.rchar == 0
    with_io = [e for e in entries.values() if e.io is not None and e.io.rchar]
    assert with_io and all(e.io.read_bytes is not None and e.io.syscw is not None for e in with_io)


def test_process_io_cut_and_garbled() -> None:
    cut = TEXT[: len(TEXT) // 2]
    entries, warnings = parse_process_io(cut)
    assert 0 < len(entries) < 75 and any("cut" in w for w in warnings)
    garbled = TEXT.replace(b"pid 2 fds 0\n", b"pid two fds 0\n", 1).replace(b"pid 3 fds 0\nrchar: 0", b"pid 3 fds 0\nrchar: zero", 1)
    entries, warnings = parse_process_io(garbled)
    assert 2 not in entries and len(entries) == 74 and len(warnings) == 2
    assert entries[3].io is not None and entries[3].io.rchar is None and entries[3].io.write_bytes == 0
    assert parse_process_io(b"") == ({}, [])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(TEXT)), st.binary(max_size=40))
def test_process_io_never_raises(at: int, noise: bytes) -> None:
    entries, warnings = parse_process_io(TEXT[:at] + noise + TEXT[at:])
    assert isinstance(entries, dict) and isinstance(warnings, list)


def test_stat_fields() -> None:
    start, cpu, rss, comm = parse_stat_fields((FIXTURES / "stat_init.txt").read_bytes())  # type: ignore[misc]
    assert (start, cpu, rss, comm) == (20, 1017 + 3201, 5135, b"process_api")
    start, cpu, rss, comm = parse_stat_fields((FIXTURES / "stat_odd_comm.txt").read_bytes())  # type: ignore[misc]
    assert (start, cpu, rss, comm) == (1436667, 0 + 1, 2530, b"a) b (c")
    assert parse_stat_fields(b"12 (x) S 1 2") is None and parse_stat_fields(b"garbage") is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300))
def test_stat_fields_cut(at: int) -> None:
    data = (FIXTURES / "stat_odd_comm.txt").read_bytes()[:at]
    got = parse_stat_fields(data)
    assert got is None or got[3] == b"a) b (c"
