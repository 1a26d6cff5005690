"""The pure parts of perf_thread_profile on captured /proc text.

Fixture tests/fixtures/thread_profile/three_threads_other_user: the three-thread
workload (thread_util.py) running as perfmcp-granted, its /proc/PID/task files
read by perfmcp-denied (another user: the files are world-readable) twice, 1 s
apart, on a loaded 2-core machine, with each thread's CLOCK_BOOTTIME read time.
The expected figures below were worked out by hand from the raw numbers in
those files (schedstat and status deltas over the per-thread read times).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.contract import next_call
from perf_mcp.procfs import ParseError
from perf_mcp.threads import Window, analyse, attach_offcpu, findings, parse_ctx_switches, parse_schedstat, parse_task
from perf_mcp.threads.parse import ProcessSample, parse_process_times
from perf_mcp.trace.offcpu_parse import OffcpuStack
from perf_mcp.use.thresholds import apply_overrides, default_thresholds

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "thread_profile" / "three_threads_other_user"
META = json.loads((FIX / "meta.json").read_text())
PID = META["pid"]  # 16179; threads 16181 pmcp-busy, 16182 pmcp-half, 16183 pmcp-sleep
BUSY, HALF, SLEEP = PID + 2, PID + 3, PID + 4
CLK = META["clk_tck"]


def load_pass(n: int, *, drop: tuple[int, ...] = (), t_shift_ns: int = 0) -> ProcessSample:
    d = FIX / f"pass{n}"
    info = META["passes"][n]
    warnings: list[str] = []
    tasks = {}
    for tid_text, t_ns in info["tasks"].items():
        tid = int(tid_text)
        if tid in drop:
            continue
        tasks[tid] = parse_task(tid, t_ns + t_shift_ns, (d / f"{tid}.stat").read_bytes(),
                                (d / f"{tid}.status").read_bytes(), (d / f"{tid}.schedstat").read_bytes(), warnings)
    assert warnings == []
    return ProcessSample(process=parse_process_times(info["t_ns"] + t_shift_ns, (d / "stat").read_bytes()),
                         tasks=tasks)


# ---------------------------------------------------------------- parsers


def test_schedstat_and_switches_from_real_files() -> None:
    s = parse_schedstat((FIX / "pass1" / f"{BUSY}.schedstat").read_bytes())
    assert (s.oncpu_ns, s.runq_wait_ns, s.timeslices) == (1390664695, 656089021, 416)
    c = parse_ctx_switches((FIX / "pass1" / f"{HALF}.status").read_bytes())
    assert (c.voluntary, c.involuntary) == (13, 351)
    # "nonvoluntary_ctxt_switches" contains "voluntary_ctxt_switches": each must find its own line
    c = parse_ctx_switches((FIX / "pass1" / f"{SLEEP}.status").read_bytes())
    assert (c.voluntary, c.involuntary) == (21, 0)


def test_task_from_real_files_keeps_the_name_and_state() -> None:
    sample = load_pass(1)
    assert {t.tid: (t.name, t.state) for t in sample.tasks.values()} == {
        PID: ("pmcp-threads", "S"), BUSY: ("pmcp-busy", "R"), HALF: ("pmcp-half", "R"), SLEEP: ("pmcp-sleep", "S")}
    busy = sample.tasks[BUSY]
    assert (busy.utime_ticks, busy.stime_ticks, busy.start_ticks) == (138, 0, 82817)
    assert sample.process.num_threads == 4 and (sample.process.utime_ticks, sample.process.stime_ticks) == (205, 1)


@pytest.mark.parametrize("text", [b"", b"1 2 3", b"1 2\n", b"1 2 3 4\n", b"1 x 3\n", b"-1 2 3\n", b"\xff\xfe\n"])
def test_bad_schedstat_is_a_parse_error(text: bytes) -> None:
    with pytest.raises(ParseError):
        parse_schedstat(text)


def test_truncated_status_loses_the_cut_counter() -> None:
    full = (FIX / "pass1" / f"{HALF}.status").read_bytes()
    cut = full[: full.rindex(b"\n", 0, len(full) - 1) + 5]  # in the middle of the last line
    with pytest.raises(ParseError):
        parse_ctx_switches(cut)
    with pytest.raises(ParseError):
        parse_ctx_switches(full.replace(b"nonvoluntary_ctxt_switches", b"other"))


def test_bad_optional_files_become_none_with_a_warning() -> None:
    d = FIX / "pass1"
    warnings: list[str] = []
    t = parse_task(HALF, 1, (d / f"{HALF}.stat").read_bytes(), b"Name:\tx\n", b"12 34\n", warnings)
    assert t.schedstat is None and t.switches is None and t.name == "pmcp-half"
    assert len(warnings) == 2 and all(w.startswith(f"thread {HALF}: ") for w in warnings)
    with pytest.raises(ParseError):
        parse_task(HALF, 1, b"16182 (pmcp-half) R 1 2\n", None, None, warnings)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=200), st.binary(max_size=60))
def test_garbage_gives_parse_error_or_partial_data_never_a_crash(stat: bytes, status: bytes, sched: bytes) -> None:
    warnings: list[str] = []
    try:
        parse_task(1, 0, stat, status, sched, warnings)
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=3000))
def test_every_cut_of_real_files_is_handled(cut: int) -> None:
    d = FIX / "pass1"
    stat, status, sched = ((d / f"{BUSY}.{k}").read_bytes() for k in ("stat", "status", "schedstat"))
    warnings: list[str] = []
    try:
        t = parse_task(BUSY, 0, stat[:cut], status[:cut], sched[:cut], warnings)
    except ParseError:
        assert cut < len(stat)
        return
    assert t.utime_ticks == 138
    assert (t.schedstat is not None) == (cut >= len(sched))


# ---------------------------------------------------------------- analysis


def rows_by_tid(a) -> dict:  # type: ignore[no-untyped-def]
    return {r.tid: r for r in a.rows}


def test_rates_over_the_window_match_the_hand_worked_figures() -> None:
    w = Window(load_pass(0))
    w.add(load_pass(1))
    a = analyse(w, CLK)
    assert a.cpu_source == "schedstat" and a.passes == 2 and not a.process_exited
    assert a.window_s == pytest.approx(1.003, abs=0.001)
    r = rows_by_tid(a)
    assert [x.tid for x in a.rows] == [BUSY, HALF, SLEEP, PID]  # busiest first
    busy, half, sleep = r[BUSY], r[HALF], r[SLEEP]
    # busy: 666,169,790 ns on CPU and 338,063,626 ns waiting over 1,003,119,445 ns; 198 timeslices
    assert busy.cpu_pct == pytest.approx(66.41, abs=0.01)
    assert busy.runq_wait_pct == pytest.approx(33.70, abs=0.01)
    assert busy.runq_wait_ms == pytest.approx(338.064, abs=0.001)
    assert busy.runq_wait_per_timeslice_ms == pytest.approx(338.063626 / 198, abs=0.001)
    assert busy.timeslices == 198 and busy.blocked_ms == pytest.approx(0.0, abs=1.0)
    assert busy.user_pct == pytest.approx(66.41, abs=0.01) and busy.system_pct == 0.0  # 66 user ticks, 0 system
    assert busy.involuntary_switches_per_s == pytest.approx(199 / 1.00312, abs=0.01)
    assert busy.voluntary_switches_per_s == 0.0 and busy.state == "R (running)"
    # half: 319,686,485 ns on CPU; 30 user + 2 system ticks; 6 voluntary switches (one per 50 ms slice)
    assert half.cpu_pct == pytest.approx(31.87, abs=0.01)
    assert half.user_pct == pytest.approx(31.87 * 30 / 32, abs=0.02)
    assert half.system_pct == pytest.approx(31.87 * 2 / 32, abs=0.02)
    assert half.voluntary_switches_per_s == pytest.approx(6 / 1.00311, abs=0.01)
    # on CPU ~ blocked for the half-busy thread (50 ms spin, 50 ms sleep)
    assert half.blocked_ms == pytest.approx(1003.111 - 319.686 - 345.068, abs=0.01)
    assert sleep.cpu_pct == pytest.approx(0.03, abs=0.01)
    assert sleep.voluntary_switches_per_s == pytest.approx(10 / 1.00088, abs=0.01)
    assert sleep.state == "S (sleeping)" and sleep.lifetime == "whole_window"
    t = a.totals
    # process stat: utime 106 -> 205, stime 0 -> 1 ticks over 1,003,095,010 ns
    assert t.cpu_pct == pytest.approx(100 * 100 / 100.3095, abs=0.01)
    assert (t.user_pct, t.system_pct) == (pytest.approx(99 / 1.003095, abs=0.01), pytest.approx(1 / 1.003095, abs=0.01))
    assert t.threads_cpu_pct == pytest.approx(66.41 + 31.87 + 0.03, abs=0.05)
    assert (t.threads_at_start, t.threads_at_end, t.threads_appeared, t.threads_exited) == (4, 4, 0, 0)
    assert t.voluntary_switches_per_s == pytest.approx(16 / 1.0031, abs=0.05)


def test_contention_finding_names_the_worst_thread_and_next_steps() -> None:
    w = Window(load_pass(0))
    w.add(load_pass(1))
    a = analyse(w, CLK)
    f = findings(a, default_thresholds(), PID, 5, offcpu_ran=False)
    ids = [x.id for x in f]
    assert ids == ["process.thread_cpu_contention"]  # nobody reached 80% of a CPU
    c = f[0]
    # half waited 34.4% (> 30: critical); busy 33.7% and 198 involuntary switches/s
    assert c.severity == "critical" and c.metrics["threads_affected"] == 2
    assert f"tid {HALF}" in c.title or f"tid {BUSY}" in c.title
    assert any(e.counter.startswith("/proc/PID/task/TID/schedstat run-queue wait") and e.threshold == 30.0
               for e in c.evidence)
    assert f"perf_cgroup_summary with pid={PID}" in c.suggestion and "perf_use_check" in c.suggestion
    assert c.next == next_call("perf_runq_latency", pid=PID, duration_s=5)


def test_bottleneck_finding_with_an_overridden_threshold() -> None:
    table, problems = apply_overrides("[process.thread_cpu_pct]\nwarning = 60\ncritical = 90\n", "t.toml")
    assert problems == []
    w = Window(load_pass(0))
    w.add(load_pass(1))
    f = findings(analyse(w, CLK), table, PID, 5, offcpu_ran=False)
    b = next(x for x in f if x.id == "process.single_thread_bottleneck")
    assert b.severity == "warning" and f"'pmcp-busy' (tid {BUSY})" in b.title and "66%" in b.title
    assert b.evidence[0].threshold == 60.0 and b.evidence[0].value == pytest.approx(66.41, abs=0.01)
    assert b.suggestion.startswith(f"perf_cpu_profile with pid={PID}, duration_s=10")
    assert b.next == next_call("perf_cpu_profile", pid=PID, duration_s=10)


def test_threads_that_appear_exit_or_reuse_a_tid() -> None:
    p0, p1 = load_pass(0, drop=(SLEEP,)), load_pass(1)
    w = Window(p0)
    w.add(p1)
    w.add(load_pass(1, drop=(HALF,), t_shift_ns=500_000_000))  # half gone 0.5 s later
    a = analyse(w, CLK)
    r = rows_by_tid(a)
    assert r[HALF].lifetime == "exited" and r[HALF].cpu_pct == pytest.approx(31.87, abs=0.01)
    # sleep appeared: created at 828.17 s after boot (stat starttime 82817 ticks), before this synthetic window
    # began, so it is measured from the window's start with counters from zero.
    assert r[SLEEP].lifetime == "appeared"
    assert r[SLEEP].window_s == pytest.approx((META["passes"][1]["tasks"][str(SLEEP)] + 5e8
                                               - META["passes"][0]["t_ns"]) / 1e9, abs=0.001)
    assert r[SLEEP].oncpu_ms == pytest.approx(0.414, abs=0.001)  # 414,492 ns: all since creation
    assert (a.totals.threads_appeared, a.totals.threads_exited) == (1, 1)
    assert a.window_s == pytest.approx(1.503, abs=0.001)


def test_a_thread_seen_once_at_the_start_has_no_rates() -> None:
    w = Window(load_pass(0))
    w.add(load_pass(1, drop=(BUSY,)))
    r = rows_by_tid(analyse(w, CLK))[BUSY]
    assert r.lifetime == "exited" and r.window_s == 0.0 and r.cpu_pct == 0.0
    assert r.voluntary_switches_per_s is None and r.runq_wait_ms is None


def test_reused_tid_is_two_threads() -> None:
    p1 = load_pass(1)
    reborn = p1.tasks[SLEEP]
    import msgspec
    p1.tasks[SLEEP] = msgspec.structs.replace(reborn, start_ticks=reborn.start_ticks + 50, name="reborn")
    w = Window(load_pass(0))
    w.add(p1)
    a = analyse(w, CLK)
    mine = sorted((r.name, r.lifetime) for r in a.rows if r.tid == SLEEP)
    assert mine == [("pmcp-sleep", "exited"), ("reborn", "appeared")]


def test_process_exit_keeps_the_last_pass_as_the_end() -> None:
    w = Window(load_pass(0))
    w.add(load_pass(1))
    a = analyse(w, CLK, process_exited=True)
    assert a.process_exited and all(r.lifetime == "whole_window" for r in a.rows)


def test_ticks_are_used_when_schedstat_is_missing() -> None:
    p0, p1 = load_pass(0), load_pass(1)
    import msgspec
    p0.tasks[BUSY] = msgspec.structs.replace(p0.tasks[BUSY], schedstat=None, switches=None)
    w = Window(p0)
    w.add(p1)
    a = analyse(w, CLK)
    busy = rows_by_tid(a)[BUSY]
    assert busy.cpu_source == "ticks" and busy.cpu_pct == pytest.approx(66 * 10 / 1003.119 * 100, abs=0.01)
    assert busy.runq_wait_ms is None and busy.blocked_ms is None and busy.voluntary_switches_per_s is None
    assert a.cpu_source == "mixed"


def test_offcpu_stacks_attach_to_their_threads() -> None:
    w = Window(load_pass(0))
    w.add(load_pass(1))
    a = analyse(w, CLK)
    stacks = [
        OffcpuStack(comm="pmcp-sleep", pid=SLEEP, tid=SLEEP, frames=["main", "pmcp_sleeper_wait", "clock_nanosleep",
                    "entry_SYSCALL_64_after_hwframe", "do_nanosleep", "schedule"], kernel_frames=3, offcpu_us=990_000),
        OffcpuStack(comm="pmcp-sleep", pid=SLEEP, tid=SLEEP, frames=["main", "other"], kernel_frames=0,
                    offcpu_us=5_000),
        OffcpuStack(comm="gone", pid=99999999, tid=99999999, frames=["x"], kernel_frames=0, offcpu_us=7),
    ]
    assert attach_offcpu(a, stacks) == 1
    r = rows_by_tid(a)
    assert r[SLEEP].offcpu_ms == 995.0 and r[SLEEP].offcpu_top_stack_ms == 990.0
    assert r[SLEEP].offcpu_blocked_in == "clock_nanosleep" and r[SLEEP].offcpu_top_stack[-1] == "schedule"
    assert r[BUSY].offcpu_ms == 0.0 and a.totals.offcpu_ms == 995.0
    f = findings(a, default_thresholds(), PID, 5, offcpu_ran=True)
    blocked = next(x for x in f if x.id == "process.thread_blocked")
    assert "clock_nanosleep" in blocked.title and blocked.suggestion.startswith(f"perf_offcpu_profile with pid={PID}")
    assert blocked.next == next_call("perf_offcpu_profile", pid=PID, duration_s=5)


# ---------------------------------------------------------------- collection: EACCES per file

READER = """
import json, sys
from perf_mcp.threads import NotPermitted, read_process
try:
    s = read_process(int(sys.argv[1]), proc_root=sys.argv[2])
except NotPermitted:
    print(json.dumps("not permitted"))
else:
    print(json.dumps({"tasks": {t.tid: [t.schedstat is not None, t.switches is not None] for t in s.tasks.values()},
                      "unreadable": s.unreadable, "warnings": list(s.warnings)}))
"""


def fake_proc(root: Path) -> Path:
    """A copy of the fixture's second pass laid out as /proc/PID and /proc/PID/task/TID."""
    base = root / str(PID)
    for tid in META["passes"][1]["tasks"]:
        task = base / "task" / tid
        task.mkdir(parents=True)
        for kind in ("stat", "status", "schedstat"):
            (task / kind).write_bytes((FIX / "pass1" / f"{tid}.{kind}").read_bytes())
    (base / "stat").write_bytes((FIX / "pass1" / "stat").read_bytes())
    for d in [root, *root.rglob("*")]:
        d.chmod(0o755 if d.is_dir() else 0o644)
    return base


@pytest.mark.root
def test_unreadable_files_are_counted_and_their_fields_null(test_users, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    """Run as perfmcp-denied, for whom chmod 000 means EACCES (root would read through it)."""
    import subprocess

    import helpers

    base = fake_proc(shared_tmp / "proc")
    (base / "task" / str(HALF) / "status").chmod(0)
    (base / "task" / str(SLEEP) / "schedstat").chmod(0)
    (base / "task" / str(BUSY) / "stat").chmod(0)

    def read() -> object:
        out = subprocess.run(helpers.as_user_argv(test_users.denied, [helpers.VENV_PYTHON, "-c", READER, str(PID),
                                                                      str(shared_tmp / "proc")]),
                             capture_output=True, check=True, env=helpers.user_env(test_users.denied), cwd="/")
        return json.loads(out.stdout)

    got = read()
    assert got == {"tasks": {str(PID): [True, True], str(HALF): [True, False], str(SLEEP): [False, True]},
                   "unreadable": {"stat": 1, "status": 1, "schedstat": 1}, "warnings": []}
    (base / "stat").chmod(0)  # /proc mounted with hidepid=2: the process's own stat is denied
    assert read() == "not permitted"
