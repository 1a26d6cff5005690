"""file_parse on output captured here from each rung (tests/fixtures/file_trace/README.md),
the kprobe tools' formats synthesized from their printf formats, and truncated or garbled
copies: partial data and a warning, never an exception. Also the tool's analysis and
findings from the fixtures, without a broker."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_mcp.tools import perf_file_trace as tool
from perf_mcp.trace import file_parse as fp

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "file_trace"
PID = 30350
D = "/tmp/pft/w/mk"


def raw(name: str) -> bytes:
    return (FIX / name).read_bytes()


def test_opensnoop_capture() -> None:
    r = fp.parse_opensnoop(raw("opensnoop_pid.txt"))
    assert r.bad_lines == 0 and r.warnings == [] and r.path_max_bytes == 254
    assert all(o.pid == PID and o.comm == "python3" and o.uid == 0 for o in r.opens)
    # opensnoop attached before the driver wrote the file (O_WRONLY|O_CREAT|O_TRUNC): 1 + 21 reads
    present = [o for o in r.opens if o.path == f"{D}-present" and o.flags & 3 == 0]
    missing = [o for o in r.opens if o.path == f"{D}-missing"]
    assert len([o for o in r.opens if o.path == f"{D}-present"]) == 22
    assert len(present) == 21 and all(o.fd >= 3 and o.errno == 0 and o.flags == 0o2000000 for o in present)
    assert len(missing) == 5 and all(o.fd == -1 and o.errno == 2 for o in missing)
    assert all(o.clock and len(o.clock) == 8 for o in r.opens)


def test_opensnoop_clock_becomes_iso_8601_utc_on_the_day_the_trace_ended() -> None:
    utc, cet = dt.timezone.utc, dt.timezone(dt.timedelta(hours=1))
    ended = dt.datetime(2026, 11, 27, 4, 12, 5, tzinfo=utc)
    assert tool.clock_iso("04:12:03", ended) == "2026-11-27T04:12:03Z"
    # the trace crossed midnight: a clock after the end is the day before
    assert tool.clock_iso("23:59:58", dt.datetime(2026, 11, 27, 0, 0, 2, tzinfo=utc)) == "2026-11-26T23:59:58Z"
    # the tracer's zone is its local time (/etc/localtime): 05:12:03 CET is 04:12:03 UTC
    assert tool.clock_iso("05:12:03", ended.astimezone(cet)) == "2026-11-27T04:12:03Z"
    assert tool.clock_iso("4:12", ended) is None and tool.clock_iso(None, ended) is None
    # the capture's opens, printed at 14:50:15 and after, in a trace that ended at 14:50:20 UTC
    p = tool.Params(mode="opens", duration_s=1)
    rec = fp.parse_opensnoop(raw("opensnoop_pid.txt"))
    events = tool.analyse_opens(p, rec, dt.datetime(2026, 11, 26, 14, 50, 20, tzinfo=utc)).events
    assert events and [e.time for e in events] == [f"2026-11-26T{o.clock}Z" for o in rec.opens][:len(events)]
    assert events[0].time == "2026-11-26T14:50:15Z"


def test_opens_bpftrace_capture() -> None:
    r = fp.parse_opens_bpftrace(raw("opens_bt_pid.json"))
    assert r.bad_lines == 0 and r.warnings == [] and r.path_max_bytes == 63
    present = [o for o in r.opens if o.path == f"{D}-present"]
    missing = [o for o in r.opens if o.path == f"{D}-missing"]
    assert len(present) == 21 and len(missing) == 5
    assert all(o.errno == 2 and o.fd == -1 for o in missing)
    assert all(o.t_s is not None and o.t_s > 0 for o in r.opens)
    sig = [o for o in r.opens if o.path.endswith("-sig")]
    assert sig and all(o.flags & 0o100 for o in sig)  # open(..., "w"): O_CREAT


def test_fileslow_capture_pid_and_system() -> None:
    r = fp.parse_fileslow_bpftrace(raw("fileslow_bt_pid.json"))
    assert r.bad_lines == 0 and r.warnings == []
    assert [o.path for o in r.ops] == [None] * 3 + [f"{D}-fifoB"] * 3
    assert all(o.op == "read" and o.pid == PID and 195 <= o.latency_ms <= 210 and o.ret == 7 for o in r.ops)
    assert r.calls == {"write": 2, "read": 6, "pread64": 10} and r.slow == {"read": 6}
    s = fp.parse_fileslow_bpftrace(raw("fileslow_bt_system.json"))
    fifo = [o for o in s.ops if o.path == "/tmp/pft/fifo"]
    assert len(fifo) == 3 and s.calls["read"] > 1000 and s.bad_lines == 0


def test_filelife_capture_pairs_by_path() -> None:
    r = fp.parse_filelife_bpftrace(raw("filelife_bt_pid.json"))
    assert r.bad_lines == 0 and len(r.creates) == 6 and len(r.unlinks) == 4
    lives = {x.path: x for x in r.lives}
    assert sorted(lives) == [f"{D}-tmp{i}" for i in range(4)]
    assert all(300 <= x.age_ms <= 320 and x.pid == PID and x.created_by_pid == PID for x in lives.values())
    assert [lives[f"{D}-tmp{i}"].exclusive for i in range(4)] == [True, False, False, False]


def test_pair_lifecycle_rules() -> None:
    c = lambda p, t: fp.Create(pid=1, comm="a", path=p, flags=0o100, t_ns=t)  # noqa: E731
    u = lambda p, t: fp.Unlink(pid=2, comm="b", path=p, t_ns=t)  # noqa: E731
    lives = fp.pair_lifecycle([c("x", 10_000_000), c("x", 30_000_000), c("y", 50_000_000), c("z", 90_000_000)],
                              [u("x", 40_000_000), u("x", 45_000_000), u("old", 1), u("z", 80_000_000)], t0_ns=0)
    # x: the latest create before the unlink; a second unlink of x has no create left; z deleted before created
    assert [(x.path, x.age_ms, x.pid, x.created_by_pid) for x in lives] == [("x", 10.0, 2, 1)]


def test_fsslower_and_filelife_synthesized() -> None:
    s = fp.parse_fsslower_csv(raw("fsslower_csv_synthesized.csv"))
    assert s.bad_lines == 0 and s.basename_only
    assert [(o.comm, o.pid, o.op, o.latency_ms, o.path, o.ret) for o in s.ops] == [
        ("postgres", 4242, "fsync", 25.34, "000000010000000000000003", None),
        ("post,gres", 4243, "write", 12.01, "data.db", 8192),
        ("cat", 4300, "read", 15.0, "big file.bin", 4096)]
    assert [o.t_s for o in s.ops] == [0.0, 0.12, 0.5]
    f = fp.parse_filelife(raw("filelife_synthesized.txt"))
    assert f.bad_lines == 0 and f.age_resolution_ms == 10.0
    assert [(x.pid, x.comm, x.age_ms, x.path) for x in f.lives] == [
        (30350, "python3", 300.0, "mk-tmp0"), (30350, "python3", 310.0, "mk tmp1"), (1234567, "a b c", 12050.0, "x")]


PARSERS = [
    (fp.parse_opensnoop, "opensnoop_pid.txt", lambda r: len(r.opens)),
    (fp.parse_opens_bpftrace, "opens_bt_pid.json", lambda r: len(r.opens)),
    (fp.parse_fileslow_bpftrace, "fileslow_bt_pid.json", lambda r: len(r.ops)),
    (fp.parse_fileslow_bpftrace, "fileslow_bt_system.json", lambda r: len(r.ops)),
    (fp.parse_filelife_bpftrace, "filelife_bt_pid.json", lambda r: len(r.creates) + len(r.unlinks)),
    (fp.parse_fsslower_csv, "fsslower_csv_synthesized.csv", lambda r: len(r.ops)),
    (fp.parse_filelife, "filelife_synthesized.txt", lambda r: len(r.lives)),
]


@pytest.mark.parametrize("parse,name,count", PARSERS, ids=[p[1] for p in PARSERS])
def test_truncated_copies_give_partial_data_and_a_warning(parse, name, count) -> None:  # type: ignore[no-untyped-def]
    data = raw(name)
    full = count(parse(data))
    # cut inside a record line past the middle of the output
    starts = [i + 1 for i in range(len(data) - 1) if data[i:i + 1] == b"\n"]
    start = next(i for i in starts if i >= len(data) // 2 or i == starts[-1])
    if data[start:].startswith(b'{"type": "map"') or not data[start:].strip():
        start = max(i for i in starts if i < start)
    cut = data[: start + 20]
    r = parse(cut)
    assert 0 < count(r) < full or full <= 2
    assert any("ends inside a line" in w for w in r.warnings), r.warnings


@pytest.mark.parametrize("parse,name,count", PARSERS, ids=[p[1] for p in PARSERS])
def test_garbled_lines_are_counted(parse, name, count) -> None:  # type: ignore[no-untyped-def]
    lines = raw(name).split(b"\n")
    full = count(parse(raw(name)))
    # garble the last record line: digits turned into letters
    idx = max(i for i, line in enumerate(lines) if any(c.isdigit() for c in line.decode("latin-1"))
              and b'"map"' not in line and b"attached" not in line and not line.startswith(b"ENDTIME"))
    lines[idx] = lines[idx].translate(bytes.maketrans(b"0123456789", b"abcdefghij"))
    r = parse(b"\n".join(lines) + b"\x00\xff garbage\n")
    assert count(r) == full - 1
    assert r.bad_lines >= 1 and any("could not be read" in w for w in r.warnings)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(PARSERS))
def test_arbitrary_bytes_never_raise(data: bytes, entry) -> None:  # type: ignore[no-untyped-def]
    parse, name, _ = entry
    parse(raw(name)[:200] + data)
    parse(data)


def test_analysis_and_findings_from_fixtures() -> None:
    p = tool.Params(duration_s=20, mode="all", pid=PID, min_latency_ms=100)
    opens = tool.analyse_opens(p, fp.parse_opens_bpftrace(raw("opens_bt_pid.json")))
    paths = {c.path: c for c in opens.by_path}
    assert paths[f"{D}-present"].opens == 21 and paths[f"{D}-missing"].failed == 5
    assert opens.failures[0].error == "ENOENT" and opens.failures[0].count == 5
    assert opens.events[0].flags.startswith("O_RDONLY")
    slow = tool.analyse_slow(p, fp.parse_fileslow_bpftrace(raw("fileslow_bt_pid.json")),
                             {(PID, 3): f"{D}-fifoA"}, [])
    assert [e.path_source for e in slow.events] == ["proc_after"] * 3 + ["trace"] * 3
    assert slow.paths_unknown == 0 and {f.path for f in slow.by_file} == {f"{D}-fifoA", f"{D}-fifoB"}
    unresolved = tool.analyse_slow(p, fp.parse_fileslow_bpftrace(raw("fileslow_bt_pid.json")), {},
                                   ["3 call(s): the process exited before its fds could be read"])
    assert unresolved.paths_unknown == 3 and unresolved.paths_unknown_reasons
    life = tool.analyse_life(p, fp.parse_filelife_bpftrace(raw("filelife_bt_pid.json")))
    assert life.created == 6 and life.deleted == 4 and life.created_and_deleted == 4 and life.short_lived == 4
    data = tool.FileTraceData(method="m", backend="bpftrace", skipped=[], mode="all", duration_s=20, filters={},
                              opens=opens, slow_ops=slow, file_lifecycle=life, lost_events=0, findings=[])
    ids = {f.id: f for f in tool.findings(p, data)}
    # 5 failed opens in 20 s: under the finding's floor (10); FIFO reads: slow_io
    assert "file.failed_opens" not in ids and "file.slow_io" in ids
    # a pattern keeps only matching paths
    q = tool.Params(duration_s=20, mode="opens", name_pattern="*-missing")
    only = tool.analyse_opens(q, fp.parse_opens_bpftrace(raw("opens_bt_pid.json")))
    assert only.total == 5 and only.failed == 5


def test_flag_names() -> None:
    assert tool.flag_names(0o2001101) == "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC"
    assert tool.flag_names(0o4010002) == "O_RDWR|O_SYNC"
    assert tool.flag_names(0o20200002) == "O_RDWR|O_TMPFILE"
    assert tool.flag_names(0o10000) == "O_RDONLY|O_DSYNC"


def test_libbpf_duration_exit_is_a_normal_end() -> None:
    from perf_mcp_protocol import StepResult

    def step(status: int | None, out: bytes, err: bytes, sig: int | None = None) -> StepResult:
        return StepResult(name="opens", argv=[], exit_status=status, signal=sig, stdout=out, stderr=err,
                          stdout_truncated=False, stderr_truncated=False, timed_out=False, wall_s=1.0)

    head = raw("opensnoop_pid.txt")
    assert tool._duration_exit(step(1, head, b""))
    assert tool._duration_exit(step(1, head, b"Lost 12 events on CPU #1!\n"))
    assert tool._duration_exit(step(1, b"ENDTIME_ns,TASK,PID,TYPE,BYTES,OFFSET_b,LATENCY_us,FILE\n", b""))
    assert not tool._duration_exit(step(1, b"", b"failed to attach BPF programs\n"))
    assert not tool._duration_exit(step(1, head, b"failed to attach BPF programs\n"))
    assert not tool._duration_exit(step(2, head, b""))
    assert not tool._duration_exit(step(None, head, b"", sig=9))
