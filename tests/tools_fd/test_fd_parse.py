"""perf_fd_trace's pure layers: fd types from readlink targets, the broker's
fd_table text (whole, cut at the cap, garbled), the linear fit, the verdict."""

from __future__ import annotations

import pytest

from perf_mcp.fds import analysis
from perf_mcp.fds.parse import FdTable, classify_target, count_by_type, parse_fd_table
from perf_mcp.procfs import ParseError
from perf_mcp.tools.perf_fd_trace import sample_times
from perf_mcp.use.thresholds import default_thresholds

LIMITS = (
    "Limit                     Soft Limit           Hard Limit           Units     \n"
    "Max cpu time              unlimited            unlimited            seconds   \n"
    "Max open files            1024                 524288               files     \n"
    "Max realtime timeout      unlimited            unlimited            us        \n"
)


@pytest.mark.parametrize(("target", "kind"), [
    ("/home/u/data.db", "file"), ("/tmp/x (deleted)", "deleted_file"), ("/dev/null", "device"),
    ("/dev/pts/3", "tty"), ("socket:[123]", "socket"), ("pipe:[99]", "pipe"),
    ("anon_inode:[eventfd]", "eventfd"), ("anon_inode:[eventpoll]", "epoll"), ("anon_inode:inotify", "inotify"),
    ("anon_inode:[timerfd]", "timerfd"), ("anon_inode:[signalfd]", "signalfd"), ("anon_inode:[pidfd]", "pidfd"),
    ("anon_inode:[io_uring]", "io_uring"), ("anon_inode:bpf-map", "bpf"), ("anon_inode:[perf_event]", "perf_event"),
    ("anon_inode:[something_new]", "anon_inode"), ("/memfd:wayland-shm (deleted)", "memfd"),
    ("net:[4026531840]", "namespace"), ("pidfd:[4242]", "pidfd"), ("weird", "other"), ("x:[1", "other"),
])
def test_classify_target(target: str, kind: str) -> None:
    assert classify_target(target) == kind


def test_parse_fd_table_whole() -> None:
    out = ("limits\n" + LIMITS + "fds\n0\t/dev/null\n1\tpipe:[5]\n3\tsocket:[77]\n4\t/tmp/a\nb\n10\t/x\n").encode()
    table = parse_fd_table(out)
    assert table.open_files is not None and (table.open_files.soft, table.open_files.hard) == (1024, 524288)
    assert table.fds == {0: "/dev/null", 1: "pipe:[5]", 3: "socket:[77]", 4: "/tmp/a\nb", 10: "/x"}
    assert table.warnings == ()
    assert count_by_type(table.fds) == {"file": 2, "device": 1, "pipe": 1, "socket": 1}


def test_parse_fd_table_cut_at_the_cap_and_garbled() -> None:
    cut = parse_fd_table(("limits\n" + LIMITS + "fds\n0\t/dev/null\n1\t/tmp/lo").encode())
    assert cut.fds == {0: "/dev/null"} and any("cap" in w for w in cut.warnings)
    no_limits = parse_fd_table(b"limits\nfds\n7\tsocket:[1]\n")
    assert no_limits.open_files is None and no_limits.fds == {7: "socket:[1]"}
    stray = parse_fd_table(b"limits\nfds\nnot a line\n2\tpipe:[3]\n")
    assert stray.fds == {2: "pipe:[3]"} and len(stray.warnings) == 1
    for bad in (b"", b"garbage", b"fds\n1\t/x\n", ("limits\n" + LIMITS).encode()):
        with pytest.raises(ParseError):
            parse_fd_table(bad)
    undecodable = parse_fd_table(b"limits\nfds\n3\t/tmp/\xff\xfe\n")
    assert classify_target(undecodable.fds[3]) == "file"


def test_linear_fit() -> None:
    fit = analysis.linear_fit([0, 2, 4, 6], [10, 30, 50, 70])
    assert fit is not None and fit.slope == pytest.approx(10.0) and fit.intercept == pytest.approx(10.0)
    assert fit.r2 == pytest.approx(1.0)
    flat = analysis.linear_fit([0, 1, 2], [5, 5, 5])
    assert flat is not None and flat.slope == 0 and flat.r2 is None
    assert analysis.linear_fit([0], [1]) is None and analysis.linear_fit([1, 1], [1, 2]) is None


def samples(totals: list[int], step: float = 2.0, kind: str = "file") -> list[analysis.FdSample]:
    return [analysis.FdSample(t_s=i * step, total=t, by_type={kind: t}) for i, t in enumerate(totals)]


# min_growth: growth that counts, max(3 fds, 2 % of the first count rounded up), written out.
@pytest.mark.parametrize(("totals", "verdict", "min_growth"), [
    ([34, 54, 74, 94], "leak", 3),
    ([100, 101, 103, 104, 106, 107, 109], "leak", 3),
    ([50, 80, 40, 90, 45, 95], "possible_leak", 3),
    ([50, 51, 50, 52, 50, 51], "stable", 3),
    ([50, 50, 50, 50], "stable", 3),
    ([200, 150, 100, 60], "decreasing", 4),
    ([10, 60], "insufficient_data", 3),
    ([1000, 1005, 1010, 1015], "stable", 20),  # +15 is under 2% of 1000 fds (20): not growth yet
    ([201, 203, 205, 207], "leak", 5),  # 2 % of 201 is 4.02, rounded up
])
def test_verdicts(totals: list[int], verdict: str, min_growth: int) -> None:
    s = samples(totals)
    g = analysis.growth(s)
    v = analysis.judge(s, g)
    assert v.verdict == verdict, v
    assert v.min_growth == min_growth
    assert 0.0 <= v.confidence <= 0.95


def test_growth_per_type_and_time_to_limit() -> None:
    s = [analysis.FdSample(t_s=0, total=20, by_type={"file": 10, "socket": 10}),
         analysis.FdSample(t_s=5, total=70, by_type={"file": 10, "socket": 60}),
         analysis.FdSample(t_s=10, total=120, by_type={"file": 10, "socket": 110})]
    g = analysis.growth(s)
    assert (g.delta, g.slope_per_s, g.slope_per_min, g.r2) == (100, 10.0, 600.0, 1.0)
    assert g.by_type_delta == {"socket": 100} and g.by_type_slope_per_s == {"socket": 10.0}
    assert analysis.time_to_limit(120, 1024, 10.0) == pytest.approx(90.4)
    assert analysis.time_to_limit(120, None, 10.0) is None and analysis.time_to_limit(120, 1024, -1.0) is None
    v = analysis.judge(s, g)
    found = analysis.findings(s, g, v, 1024, 90.4, default_thresholds(), 42, 5.0, "/proc/PID/fd")
    leak = next(f for f in found if f.id == "process.fd_leak")
    assert leak.severity == "critical"  # the soft limit in 90 s
    assert "socket (+100)" in leak.detail and leak.evidence[0].sample == "every 5 s: 20, 70, 120"


def test_near_limit_and_quiet_findings() -> None:
    flat = samples([980, 980, 981, 980])
    g = analysis.growth(flat)
    found = analysis.findings(flat, g, analysis.judge(flat, g), 1024, None, default_thresholds(), 1, 2.0, "x")
    assert [(f.id, f.severity) for f in found] == [("process.fd_near_limit", "critical")]  # 95.7% > 95
    quiet = samples([40, 41, 40, 40])
    g = analysis.growth(quiet)
    assert analysis.findings(quiet, g, analysis.judge(quiet, g), 1024, None, default_thresholds(), 1, 2.0, "x") == []


def test_new_fds_and_the_list() -> None:
    first = FdTable(fds={0: "/dev/null", 3: "socket:[1]"}, open_files=None)
    last = FdTable(fds={0: "/dev/null", 3: "socket:[9]", 4: "/srv/a/1", 5: "/srv/a/2", 6: "pipe:[3]"},
                   open_files=None)
    groups = analysis.new_fd_groups(first, last)
    assert [(g.type, g.where, g.count) for g in groups] == [("file", "/srv/a", 2), ("pipe", "pipe", 1),
                                                            ("socket", "socket", 1)]
    entries, cut = analysis.fd_list(first, last, 3)
    assert [e.fd for e in entries] == [3, 4, 5] and all(e.new for e in entries) and cut
    everything, cut = analysis.fd_list(first, last, 10)
    assert [e.fd for e in everything] == [3, 4, 5, 6, 0] and not cut


def test_sample_times() -> None:
    assert sample_times(6, 2) == [0, 2, 4, 6]
    assert sample_times(30, 5) == [0, 5, 10, 15, 20, 25, 30]
    assert sample_times(7, 3) == [0, 3, 6, 7]
    assert sample_times(1, 5) == [0, 1]
    assert sample_times(60, 1)[-1] == 60 and len(sample_times(60, 1)) == 61
