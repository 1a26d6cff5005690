"""The syscount parsers on real output captured here (tests/fixtures/syscount, README there
gives the workload's known counts), and on truncated and garbled copies of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_mcp.trace.syscall_parse import ParseFailure, parse_bpftrace_syscount, parse_syscount

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "syscount"
N, ENOENT, EBADF, SLEEPS = 20000, 300, 200, 5  # workload.c as run for the fixtures
PROCESS_TOTAL = N + ENOENT + EBADF + SLEEPS + 2  # + the trigger read and the write


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.out").read_bytes()


def by_name(rows) -> dict[str, object]:
    return {r.name: r for r in rows}


def test_libbpf_counts_by_name() -> None:
    run = parse_syscount(fixture("libbpf_pid.syscount"), "x86_64")
    assert run.banner and run.blocks == 1 and run.bad_lines == 0 and run.top == 500
    assert not run.latency and not run.by_process
    counts = {s.name: s.count for s in run.syscalls}
    assert counts == {"getppid": N, "openat": ENOENT, "close": EBADF, "clock_nanosleep": SLEEPS, "read": 1,
                      "write": 1}
    assert by_name(run.syscalls)["getppid"].nr == 110 and by_name(run.syscalls)["openat"].nr == 257
    assert all(s.total_ns is None for s in run.syscalls)


def test_libbpf_latency_and_failures() -> None:
    run = parse_syscount(fixture("libbpf_pid_latency_errors.syscount"), "x86_64")
    assert run.latency and run.unit_ns == 1000.0
    rows = by_name(run.syscalls)
    assert "read" not in rows  # -L: the trigger read entered before the trace attached
    sleep = rows["clock_nanosleep"]
    assert sleep.count == sleep.timed == SLEEPS
    assert 10e6 <= sleep.total_ns / sleep.timed <= 20e6  # 10 ms sleeps
    assert rows["getppid"].count == N and rows["getppid"].total_ns / N < 50_000
    failed = parse_syscount(fixture("libbpf_pid_latency_errors.syscount_failures"), "x86_64")
    assert {s.name: s.count for s in failed.syscalls} == {"openat": ENOENT, "close": EBADF}


def test_libbpf_per_process() -> None:
    run = parse_syscount(fixture("libbpf_all_per_process_latency.syscount_processes"), "x86_64")
    assert run.by_process and run.latency and run.bad_lines == 0 and run.syscalls == []
    wl = [p for p in run.processes if p.comm == "wl"]
    # -L: the trigger read is not counted (entered before the trace)
    assert len(wl) == 1 and wl[0].count == PROCESS_TOTAL - 1 and wl[0].total_ns >= SLEEPS * 10e6
    assert all(p.pid > 0 and len(p.comm) <= 15 for p in run.processes)
    assert [p.count for p in run.processes] == sorted((p.count for p in run.processes), reverse=True)
    by_syscall = parse_syscount(fixture("libbpf_all_per_process_latency.syscount"), "x86_64")
    assert by_name(by_syscall.syscalls)["getppid"].count >= N


def test_libbpf_unknown_numbers_are_named() -> None:
    run = parse_syscount(fixture("libbpf_unknown_numbers.syscount"), "x86_64")
    rows = by_name(run.syscalls)
    assert rows["close_range"].count == 1000 and rows["close_range"].nr == 436
    assert rows["faccessat2"].count == 500 and rows["faccessat2"].nr == 439
    assert not any(name.startswith("[") or name.isdecimal() for name in rows)


def test_bpftrace_everything() -> None:
    run = parse_bpftrace_syscount(fixture("bpftrace_pid_all.syscount"), "x86_64")
    assert run.attached_probes == 4 and run.bad_lines == run.bad_entries == 0
    rows = by_name(run.syscalls)
    assert {k: v.count for k, v in rows.items()} == {"getppid": N, "openat": ENOENT, "close": EBADF,
                                                     "clock_nanosleep": SLEEPS, "read": 1, "write": 1}
    assert rows["openat"].failed == ENOENT and rows["close"].failed == EBADF and rows["getppid"].failed == 0
    assert [(e.name, e.errno_name, e.count) for e in run.errnos] == [("openat", "ENOENT", ENOENT),
                                                                      ("close", "EBADF", EBADF)]
    sleep = rows["clock_nanosleep"]
    assert sleep.timed == SLEEPS and 10e6 <= sleep.total_ns / SLEEPS <= 20e6 and sleep.max_ns >= 10e6
    assert rows["read"].timed == 0  # counted, not timed: it entered before the trace
    (proc,) = run.processes
    assert (proc.comm, proc.count, proc.failed) == ("wl", PROCESS_TOTAL, ENOENT + EBADF)
    assert proc.total_ns >= SLEEPS * 10e6


def test_bpftrace_plain_and_system_wide() -> None:
    run = parse_bpftrace_syscount(fixture("bpftrace_pid.syscount"), "x86_64")
    assert by_name(run.syscalls)["getppid"].count == N and run.errnos == [] and run.processes == []
    assert all(s.failed is None and s.total_ns is None for s in run.syscalls)
    wide = parse_bpftrace_syscount(fixture("bpftrace_all_per_process_errors.syscount"), "x86_64")
    assert by_name(wide.syscalls)["getppid"].count >= N
    errs = {(e.name, e.errno_name): e.count for e in wide.errnos}
    assert errs[("openat", "ENOENT")] >= ENOENT and errs[("close", "EBADF")] >= EBADF
    wl = [p for p in wide.processes if p.comm == "wl"]
    assert len(wl) == 1 and wl[0].count == PROCESS_TOTAL and wl[0].failed == ENOENT + EBADF
    lat = parse_bpftrace_syscount(fixture("bpftrace_all_latency_per_process.syscount"), "x86_64")
    assert all(p.total_ns is not None for p in lat.processes) and lat.errnos == []
    assert all(s.timed is not None and s.timed <= s.count for s in lat.syscalls)


def test_bpftrace_unknown_numbers_and_odd_keys() -> None:
    run = parse_bpftrace_syscount(fixture("bpftrace_unknown_numbers.syscount"), "x86_64")
    assert {s.name: s.count for s in run.syscalls} == {"close_range": 1000, "faccessat2": 500, "read": 1, "write": 1}
    raw = (b'{"type": "attached_probes", "data": {"probes": 4}}\n'
           b'{"type": "map", "data": {"@calls": {"110": 7, "-1": 60, "99999": 3, "x": 1}}}\n'
           b'{"type": "map", "data": {"@errors": {"110,2": 2, "516": 1, "230,516": 1}}}\n'
           b'{"type": "map", "data": {"@proc_calls": {"42,a\\"b\\\\c,d e": 5, "42,other": 2, "nopid": 1}}}\n')
    odd = parse_bpftrace_syscount(raw, "x86_64")
    names = {s.name: s.count for s in odd.syscalls}
    assert names == {"getppid": 7, "unknown_99999": 3, "clock_nanosleep": 1}  # -1 dropped; 230 from @errors
    assert odd.bad_entries == 3  # "x", "516" (no errno), "nopid"
    assert {(e.name, e.errno_name) for e in odd.errnos} == {("getppid", "ENOENT"),
                                                              ("clock_nanosleep", "ERESTART_RESTARTBLOCK")}
    (p,) = odd.processes
    assert (p.pid, p.comm, p.count, p.other_names) == (42, 'a"b\\c,d e', 7, ["other"])


def test_empty_outputs() -> None:
    quiet = parse_syscount(b"Tracing syscalls, printing top 500... Ctrl+C to quit.\n")
    assert quiet.banner and quiet.blocks == 0 and quiet.syscalls == []
    assert parse_syscount(b"").syscalls == []
    assert parse_bpftrace_syscount(b'{"type": "attached_probes", "data": {"probes": 4}}\n\n\n').syscalls == []
    with pytest.raises(ParseFailure):
        parse_syscount(b"libbpf: failed to load object\nsomething else\n")
    with pytest.raises(ParseFailure):
        parse_bpftrace_syscount(b"ERROR: not json\n")


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("libbpf_*.out")))
def test_libbpf_truncated_copies_give_partial_rows(name: str) -> None:
    raw = fixture(name)
    full = parse_syscount(raw)
    full_rows = full.rows
    first_line = raw.index(b"\n") + 1
    for cut in range(0, len(raw), max(1, len(raw) // 60)):
        try:
            part = parse_syscount(raw[:cut])
        except ParseFailure:
            assert cut < first_line  # only a cut inside the banner leaves nothing recognisable
            continue
        assert part.rows <= full_rows
        assert part.bad_lines <= 1  # at most the row the cut went through
        keyed = {s.name: s.count for s in full.syscalls} | {str(p.pid): p.count for p in full.processes}
        for s in part.syscalls[:-1]:
            assert keyed[s.name] == s.count
        for p in part.processes[:-1]:
            assert keyed[str(p.pid)] == p.count


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("bpftrace_*.out")))
def test_bpftrace_truncated_copies_give_whole_maps_or_none(name: str) -> None:
    raw = fixture(name)
    full = {s.name: s.count for s in parse_bpftrace_syscount(raw).syscalls}
    for cut in range(0, len(raw), max(1, len(raw) // 60)):
        try:
            part = parse_bpftrace_syscount(raw[:cut])
        except ParseFailure:
            assert cut < 60  # only a cut inside the first line leaves nothing recognisable
            continue
        assert part.bad_lines <= 1
        got = {s.name: s.count for s in part.syscalls}
        if "@calls" in part.maps:
            assert got == full
        else:
            assert all(full.get(k, 0) >= v for k, v in got.items())


def test_garbled_rows_are_counted_not_fatal() -> None:
    raw = fixture("libbpf_pid_latency_errors.syscount").decode()
    lines = raw.splitlines()
    lines.insert(4, "getppid  notanumber   1.0")
    lines.insert(5, "\x00\xff garbage")
    lines.insert(6, "open at 12 13")
    run = parse_syscount("\n".join(lines).encode("utf-8", "surrogateescape"))
    assert run.bad_lines >= 1
    assert by_name(run.syscalls)["getppid"].count == N
    raw_b = fixture("bpftrace_pid_all.syscount").replace(b'"@errors": {"3,9": 200', b'"@errors": {"3,9": "x"')
    b = parse_bpftrace_syscount(raw_b + b"\n{broken json\n")
    assert b.bad_lines == 1 and b.bad_entries == 1
    assert {(e.name, e.count) for e in b.errnos} == {("openat", ENOENT)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(p.stem for p in FIXTURES.glob("*.out"))), st.data())
def test_mutated_outputs_never_crash(name: str, data: st.DataObject) -> None:
    raw = bytearray(fixture(name))
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(max_size=12))
        elif raw:
            del raw[pos : pos + data.draw(st.integers(1, 40))]
    parser = parse_bpftrace_syscount if name.startswith("bpftrace") else parse_syscount
    try:
        out = parser(bytes(raw))
    except ParseFailure:
        return
    for s in out.syscalls:
        assert s.count >= 0 and s.name and not s.name.isdecimal()
    for p in out.processes:
        assert p.pid >= 0 and p.count >= 0
