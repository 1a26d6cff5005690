"""perf_exec_trace parsers and analysis on outputs captured here from both rungs
(tests/fixtures/execsnoop/README.md says how), and on truncated and garbled
copies of them: partial data with a warning, never an exception."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_mcp.tools.perf_exec_trace import Params, analyse
from perf_mcp.trace import exec_parse
from perf_mcp.trace.exec_parse import ExecRecords, parse_bpftrace, parse_execsnoop, parse_exitsnoop

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "execsnoop"
WORKLOAD = 24971  # the pid of workload.sh in the captures
EXECW = "/tmp/pmcp-exec/pmcp-execw"
AWKWARD = ["/bin/true", "x y", 'q"\\z', "\\xff\x01tab\t", "nl\nx", "é", "", "trail\\"]


def raw(name: str) -> bytes:
    return (FIX / name).read_bytes()


def children(execs: list[exec_parse.ExecEvent]) -> list[exec_parse.ExecEvent]:
    return [e for e in execs if e.ppid == WORKLOAD]


def check_workload_execs(execs: list[exec_parse.ExecEvent], arg_bytes: int) -> None:
    kids = children(execs)
    marked = [e for e in kids if "fixture-marker" in e.args]
    assert [e.args for e in marked] == [[EXECW, "50", "fixture-marker", str(i)] for i in range(5)]
    assert all(e.comm == "pmcp-execw" and e.uid == 0 and e.ret == 0 for e in marked)
    awkward = next(e for e in kids if e.args[:2] == ["/bin/true", "x y"])
    assert awkward.args[:8] == AWKWARD
    assert awkward.args[8] == "L" * arg_bytes  # cut at the program's string size
    many = next(e for e in kids if e.args[:2] == ["/bin/true", "1"])
    assert many.args == ["/bin/true", *map(str, range(1, 20))] and many.args_truncated
    failed = [e for e in kids if e.ret < 0 and e.args[0] == "/nonexistent/pmcp-missing"]
    assert [(f.ret, f.comm, f.args) for f in failed] == [(-2, "wl.sh", ["/nonexistent/pmcp-missing", "arg1"])]
    odd = next(e for e in kids if e.args[0].endswith("/7zip-x"))
    assert (odd.uid, odd.comm) == (123456, "7zip-x")
    assert next(e for e in kids if e.args[0].endswith("/my prog")).comm == "my prog"


def test_libbpf_execsnoop_fixture() -> None:
    out = parse_execsnoop(raw("libbpf_execsnoop.txt"))
    assert (out.bad_lines, out.warnings, len(out.execs)) == (0, [], 300)
    assert not out.lifetimes_available and out.arg_max_bytes == 128
    check_workload_execs(out.execs, 127)
    times = [e.t_s for e in out.execs]
    assert times == sorted(times) and 0 < times[0] < times[-1] < 10


def test_libbpf_execsnoop_max_args_3_and_bytes() -> None:
    out = parse_execsnoop(raw("libbpf_execsnoop_maxargs3.txt"))
    assert out.bad_lines == 0
    trues = [e for e in out.execs if e.comm == "true"]
    assert [(e.args, e.args_truncated) for e in trues] == [
        (["/bin/true", "a", "b"], True),
        (["/bin/true", "a"], False),
        (["/bin/true", "x y", 'q"\\z'], False),
        (["/bin/true", "\\xff\x01tab\t", "nl\nx"], True),
        (["/bin/true"], False),
    ]


def _pid_of(args0: str, arg1: str | None = None) -> int:
    execs = children(parse_execsnoop(raw("libbpf_execsnoop.txt")).execs)
    return next(e.pid for e in execs if e.args[0] == args0 and (arg1 is None or e.args[1] == arg1))


def test_libbpf_exitsnoop_fixture() -> None:
    out = parse_exitsnoop(raw("libbpf_exitsnoop.txt"))
    assert (out.bad_lines, out.warnings) == (0, [])
    kids = {e.pid: e for e in out.exits if e.ppid == WORKLOAD}
    execw = [e for e in kids.values() if e.comm == "pmcp-execw"]
    assert len(execw) == 5 and all(e.exit_code == 7 and e.lifetime_ms == 50.0 for e in execw)
    assert kids[_pid_of("/usr/bin/bash", "-c")].exit_code == 3
    assert kids[_pid_of("/nonexistent/pmcp-missing")].exit_code == 127  # the child whose exec failed
    killed = kids[_pid_of("/bin/sleep", "5")]
    assert (killed.exit_code, killed.signal, killed.core_dumped, killed.lifetime_ms) == (None, 9, False, 100.0)
    assert kids[_pid_of("/tmp/pmcp-exec/my prog")].comm == "my prog"


def test_bpftrace_fixture() -> None:
    out = parse_bpftrace(raw("bpftrace_execsnoop.json"), include_failed=True)
    assert (out.bad_lines, out.warnings, out.lost_events) == (0, [], 0)
    assert out.arg_max_bytes == 63 and out.lifetime_resolution_ms == 0.001
    check_workload_execs(out.execs, 63)
    exits = {e.pid: e for e in out.exits if e.ppid == WORKLOAD}
    execw = [e for e in exits.values() if e.comm == "pmcp-execw"]
    assert len(execw) == 5 and all(e.exit_code == 7 and 50.0 <= e.lifetime_ms <= 55.0 for e in execw)
    killed = exits[_pid_of("/bin/sleep", "5")]
    assert (killed.signal, killed.exit_code) == (9, None) and 100.0 <= killed.lifetime_ms <= 150.0
    assert exits[_pid_of("/usr/bin/bash", "-c")].exit_code == 3
    assert exits[_pid_of("/tmp/pmcp-exec/7zip-x")].uid == 123456
    t = [e.t_s for e in children(out.execs)]
    assert all(x is not None and 1.0 < x < 6.0 for x in t)


def test_bpftrace_without_failures_and_execveat() -> None:
    out = parse_bpftrace(raw("bpftrace_execsnoop_nofail.json"), include_failed=False)
    assert out.bad_lines == 0 and out.warnings == [] and all(e.ret == 0 for e in out.execs)
    kids = [e for e in out.execs if e.ppid == 24550]
    assert [e.args for e in kids if e.comm == "pmcp-execw"] == [[EXECW, "50", "fixture-marker", str(i)]
                                                                for i in range(3)]
    assert not any(e.args[0] == "/nonexistent/pmcp-missing" for e in out.execs)  # E without R: not shown
    fexecve = [e for e in out.execs if e.args[0].startswith("/dev/fd/")]
    assert [(e.comm, e.args, e.ret) for e in fexecve] == [("true", ["/dev/fd/3"], 0)]
    exits = {e.pid: e for e in out.exits}
    assert exits[fexecve[0].pid].comm == "true" and exits[fexecve[0].pid].exit_code == 0


def test_both_rungs_see_the_same_workload() -> None:
    libbpf = children(parse_execsnoop(raw("libbpf_execsnoop.txt")).execs)
    bt = children(parse_bpftrace(raw("bpftrace_execsnoop.json"), include_failed=True).execs)
    assert [(e.pid, e.comm, e.ret) for e in libbpf] == [(e.pid, e.comm, e.ret) for e in bt]


def _records(which: str) -> ExecRecords:
    if which == "libbpf":
        out = parse_execsnoop(raw("libbpf_execsnoop.txt"))
        x = parse_exitsnoop(raw("libbpf_exitsnoop.txt"))
        out.exits, out.lifetimes_available, out.lifetime_resolution_ms = x.exits, True, 10.0
        return out
    return parse_bpftrace(raw("bpftrace_execsnoop.json"), include_failed=True)


@pytest.mark.parametrize("which", ["libbpf", "bpftrace"])
def test_analysis_tree_filters_and_findings(which: str) -> None:
    rec = _records(which)
    p = Params(duration_s=6, pid=WORKLOAD, include_failed=True, include_timestamps=True, max_execs_listed=1000)
    d = analyse(p, rec, {}, {}, "m", which, [], True)
    links = {e.pid: e.ppid for e in rec.execs} | {x.pid: x.ppid for x in rec.exits}

    def descends(pid: int) -> bool:
        for _ in range(10):
            pid = links.get(pid, 0)
            if pid == WORKLOAD:
                return True
        return False

    assert all(descends(e.pid) for e in d.executions) and WORKLOAD in {e.ppid for e in d.executions}
    root = d.tree[0]
    assert root.pid == WORKLOAD and len(d.tree) == 1
    # children: the processes that exec'd, and subshells (forks that never exec'd) with children that did
    assert {c.pid for c in root.children} >= {e.pid for e in d.executions if e.ppid == WORKLOAD}
    assert all(c.execs or c.descendants for c in root.children)
    execw = [e for e in d.executions if e.comm == "pmcp-execw"]
    assert len(execw) == 5 and all(e.exit_code == 7 and e.lifetime_ms >= 50.0 for e in execw)
    assert d.failures[0].error == "ENOENT" and d.failed == sum(e.failed for e in d.executions)
    assert d.findings[0].id == "process.exec_failures" or d.findings[0].id == "process.exec_storm"
    # name_pattern: glob and substring, on comm or command line
    for pattern, want in (("pmcp-*", 5), ("fixture-marker", 5), ("*7zip*", 2), ("7zip*", 1), ("my prog", 1), ("nomatch", 0)):
        q = Params(duration_s=6, pid=WORKLOAD, name_pattern=pattern, include_failed=True)
        got = analyse(q, rec, {}, {}, "m", which, [], True)
        assert got.execs == want, (pattern, got.execs)
    # uid filter (broker side normally): the frontend keeps it consistent
    q = Params(duration_s=6, uid=123456)
    assert [e.comm for e in analyse(q, rec, {}, {}, "m", which, [], True).executions] == ["7zip-x"]
    # parent filter through a fork that never exec'd (the $(printf ... $(seq 1 200)) subshell): linked by
    # its exit record; without it, by the /proc snapshot; with neither, seq is not a descendant.
    seq = next(e for e in rec.execs if e.comm == "seq" and e.args[1:] == ["1", "200"])
    sub = seq.ppid
    assert sub != WORKLOAD and any(x.pid == sub and x.ppid == WORKLOAD for x in rec.exits)
    q = Params(duration_s=6, pid=WORKLOAD, name_pattern="seq 1 200")
    assert analyse(q, rec, {}, {}, "m", which, [], True).execs == 1
    cut = msgspec.structs.replace(rec, exits=[x for x in rec.exits if x.pid != sub])
    assert analyse(q, cut, {}, {}, "m", which, [], True).execs == 0
    assert analyse(q, cut, {}, {sub: (WORKLOAD, "wl.sh")}, "m", which, [], True).execs == 1


def test_storm_finding_names_the_parent() -> None:
    rec = _records("bpftrace")
    d = analyse(Params(duration_s=1, pid=WORKLOAD), rec, {WORKLOAD: (1, "wl.sh")}, {}, "m", "bpftrace", [], True)
    storm = next(f for f in d.findings if f.id == "process.exec_storm")
    assert storm.severity == "warning" and "pid 24971 (wl.sh)" in storm.detail
    assert '"pid": 24971' in storm.suggestion and "perf_cpu_profile" in storm.suggestion
    quiet = analyse(Params(duration_s=30, pid=WORKLOAD), rec, {}, {}, "m", "bpftrace", [], True)
    assert all(f.id != "process.exec_storm" for f in quiet.findings)  # the same execs over 30 s: no storm


# ---------------------------------------------------------------- damaged copies

CASES = [("libbpf_execsnoop.txt", parse_execsnoop), ("libbpf_exitsnoop.txt", parse_exitsnoop),
         ("bpftrace_execsnoop.json", parse_bpftrace)]


def _count(out: ExecRecords) -> int:
    return len(out.execs) + len(out.exits)


@pytest.mark.parametrize("name,parse", CASES)
def test_truncated_copies_give_partial_data_with_a_warning(name: str, parse) -> None:  # type: ignore[no-untyped-def]
    data = raw(name)
    full = _count(parse(data))
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        while data[cut - 1:cut] == b"\n" or data[cut:cut + 1] == b"\n":
            cut -= 1  # inside a line: a cut at a line's end cannot be told from the output's end
        out = parse(data[:cut])
        assert 0 < _count(out) < full
        assert out.warnings, (name, cut)


@pytest.mark.parametrize("name,parse", CASES)
def test_garbled_copies_count_bad_lines(name: str, parse) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(raw(name))
    rnd = random.Random(7)
    for _ in range(40):
        data[rnd.randrange(len(data))] = rnd.choice(b'"\\{}x\x00\xff')
    out = parse(bytes(data))
    assert _count(out) > 0 and out.bad_lines > 0 and any("could not be read" in w for w in out.warnings)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from([0, 1, 2]))
def test_any_bytes_never_raise(blob: bytes, which: int) -> None:
    heads = [b"TIME(s)  UID    PCOMM            PID    PPID   RET ARGS\n0.170   0     ",
             b"TIME(s)  PCOMM            PID     PPID    TID     AGE(s)  EXIT_CODE\n14:06:54 ",
             b'{"type": "printf", "data": "E 1 1 5 0 1 ']
    parse = (parse_execsnoop, parse_exitsnoop, parse_bpftrace)[which]
    out = parse(heads[which] + blob)
    assert isinstance(out, ExecRecords)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=8))
def test_execsnoop_args_round_trip(args: list[bytes]) -> None:
    """Arguments printed the way execsnoop -q prints them read back the same, except
    where execsnoop's own escaping is ambiguous (a backslash before n, t or a quote)."""
    args = [a.replace(b"\x00", b"") for a in args]
    esc = {ord('"'): b'\\"', ord("\t"): b"\\t", ord("\n"): b"\\n"}
    body = b"".join(b'"' + b"".join(esc.get(c, bytes([c])) for c in a) + b'" ' for a in args)
    line = b"0.100   0     true             10     1        0 " + body + b"\n"
    out = parse_execsnoop(line)
    ambiguous = any(b"\\" in a for a in args)
    if not ambiguous and all(b"\r" not in a for a in args):
        assert len(out.execs) == 1
        assert out.execs[0].args == [a.decode("utf-8", "backslashreplace") for a in args]
