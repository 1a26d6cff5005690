"""Parsers of the off-CPU ladder, fed with output captured from the real programs on this machine.

Fixtures (tests/fixtures/offcputime/): the known-answer workload (tests/tools_offcpu/offcpu_workload.c)
with its reader thread blocked in perfmcp_wait_for_data on a pipe fed every 100 ms by its feeder thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.trace.offcpu_parse import OffcpuParse, OffcpuStack, parse_offcputime

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "offcputime"


def _text(name: str) -> str:
    return (FIX / name).read_text()


def _by_comm(p: OffcpuParse, comm: str):
    return [s for s in p.stacks if s.comm == comm]


def test_offcputime_pid_filtered():
    p = parse_offcputime(_text("pid_reader_feeder.txt"))
    assert p.bad_lines == 0 and not p.truncated and p.lost_entries == 0
    assert len(p.stacks) == 2
    (reader,) = _by_comm(p, "pmcp_reader")
    # Root-first, the tracer's own frames (bpf_prog_*, bpf_trace_run4) removed.
    assert reader.frames == ["__libc_init_first", "main", "perfmcp_reader_loop", "perfmcp_wait_for_data",
                             "entry_SYSCALL_64_after_hwframe", "do_syscall_64", "ksys_read", "vfs_read",
                             "anon_pipe_read", "schedule", "__schedule"]
    assert reader.kernel_frames == 7
    assert reader.pid == reader.tid == 9215 and reader.tgid is None
    assert reader.offcpu_us == 1902059
    (feeder,) = _by_comm(p, "pmcp_feeder")
    assert feeder.tid == 9217 and feeder.frames[-1] == "__schedule" and feeder.frames[0] == "pthread_condattr_setpshared"
    assert p.total_us == 1902059 + 1901394


def test_offcputime_verbose_frames_are_names():
    p = parse_offcputime(_text("pid_verbose.txt"))
    assert p.bad_lines == 0 and not p.truncated
    (reader,) = _by_comm(p, "pmcp_reader")
    assert "perfmcp_wait_for_data" in reader.frames and "anon_pipe_read" in reader.frames
    assert not any("0x" in f or "+" in f for f in reader.frames)


def test_offcputime_system_wide_kernel_threads():
    p = parse_offcputime(_text("system_wide_m150000.txt"))
    assert p.bad_lines == 0 and not p.truncated and p.stacks
    rcu = [s for s in p.stacks if s.frames and s.frames[0] == "ret_from_fork_asm"]
    assert rcu, "kernel threads start at ret_from_fork_asm"
    for s in rcu:
        assert s.kernel_frames == len(s.frames)  # all kernel
    for s in p.stacks:
        assert s.offcpu_us >= 150000  # -m 150000


def test_missed_user_stack_does_not_leak_frames():
    # offcputime writes "[Missed User Stack]" to stderr and skips the trailer: the lost entry's
    # kernel frames run into the next one. They must be dropped, not pinned on the next thread.
    lost = "    bpf_prog_6896d07dd3e1383c_sched_switch\n    bpf_trace_run4\n    __schedule\n    lost_kernel_fn\n"
    p = parse_offcputime(lost + _text("pid_reader_feeder.txt"))
    assert p.lost_entries == 1 and len(p.stacks) == 2
    assert not any("lost_kernel_fn" in s.frames for s in p.stacks)


def test_truncated_copies_give_partial_data():
    text = _text("pid_reader_feeder.txt")
    full = parse_offcputime(text)
    for cut in range(0, len(text)):
        p = parse_offcputime(text[:cut])
        assert len(p.stacks) <= len(full.stacks)
        for s in p.stacks:  # every stack kept is whole and true
            assert s in full.stacks
        head = text[:cut]
        at_boundary = not head.strip() or (head.rstrip(" ").endswith("\n") and head.split()[-1].isdecimal())
        if not at_boundary:  # cut inside an entry: said so
            assert p.truncated


def test_garbled_lines_are_counted():
    text = _text("pid_reader_feeder.txt").replace("    -                pmcp_feeder (9217)",
                                                   "    -                pmcp_feeder (92x7)")
    p = parse_offcputime(text)
    assert p.bad_lines >= 1
    assert [s.comm for s in p.stacks] == ["pmcp_reader"]
    p = parse_offcputime(_text("pid_reader_feeder.txt").replace("        1902059", "        19O2059"))
    assert p.bad_lines == 1 and [s.comm for s in p.stacks] == ["pmcp_feeder"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" -()\n0123456789abc_#x+")), max_size=400))
def test_never_raises(text):
    p = parse_offcputime(text)
    assert p.bad_lines >= 0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.binary(min_size=1, max_size=8))
def test_byte_flips_never_raise(pos, junk):
    text = _text("pid_reader_feeder.txt")
    pos = min(pos, len(text))
    parse_offcputime(text[:pos] + junk.decode("latin-1") + text[pos:])


# ---------------------------------------------------------------- all three rungs on the same workload

import gzip  # noqa: E402

from perf_mcp.tools.perf_offcpu_profile import analyse, folded_stacks, where  # noqa: E402
from perf_mcp.trace.offcpu_parse import parse_bpftrace_offcpu, parse_perf_offcpu  # noqa: E402

PID, READER, FEEDER, NAPPER = 16531, 16531, 16533, 16534  # tests/fixtures/offcputime/README.md
READER_TAIL = ["perfmcp_reader_loop", "perfmcp_wait_for_data", "entry_SYSCALL_64_after_hwframe", "do_syscall_64",
               "ksys_read", "vfs_read", "anon_pipe_read", "schedule", "__schedule"]


def _perf(name: str) -> str:
    return gzip.decompress((FIX / name).read_bytes()).decode()


def _rungs() -> dict[str, OffcpuParse]:
    return {
        "offcputime": parse_offcputime(_text("libbpf_pid.txt")),
        "bpftrace": parse_bpftrace_offcpu((FIX / "bpftrace_pid.json").read_bytes()),
        "perf": parse_perf_offcpu(_perf("perf_pid.txt.gz"), min_block_us=1000, pid=PID).parse,
    }


def test_every_rung_gives_the_same_shape():
    for rung, p in _rungs().items():
        assert p.bad_lines == 0 and not p.truncated and p.lost_entries == 0, rung
        by_tid = {s.tid: s for s in sorted(p.stacks, key=lambda s: s.offcpu_us)}  # each thread's biggest stack
        assert set(by_tid) == {READER, FEEDER, NAPPER}, (rung, p.stacks)
        reader = by_tid[READER]
        assert [s.tid for s in p.stacks].count(READER) == 1, "one stack: the reader only ever blocks in one place"
        assert reader.comm == "pmcp_reader" and reader.frames[-len(READER_TAIL):] == READER_TAIL, rung
        assert reader.kernel_frames == 7 and reader.pid in (READER, PID)
        assert reader.tgid in (None, PID)
        assert "perfmcp_short_nap" in by_tid[NAPPER].frames and "perfmcp_feeder_sleep" in by_tid[FEEDER].frames
        # Reader blocked ~100% of the 2 s window (perf's window starts ~0.4 s late: 1.5-2.0 s).
        assert 1_400_000 <= reader.offcpu_us <= 2_000_000, (rung, reader.offcpu_us)
        w = where(reader)
        assert (w.blocked_in, w.waiting_in, w.kind) == ("perfmcp_wait_for_data", "anon_pipe_read", "pipe")
        assert where(by_tid[FEEDER]).kind == "sleep" and where(by_tid[NAPPER]).blocked_in == "perfmcp_sleep_us"


def test_perf_pairs_switches_and_filters():
    text = _perf("perf_pid.txt.gz")
    full = parse_perf_offcpu(text, min_block_us=1, pid=PID)
    assert full.blocks > 700 and full.open_blocks == 3 and 1.4 < full.window_s <= 2.0  # ~500 naps/s
    assert parse_perf_offcpu(text, pid=PID + 1).parse.stacks == []  # another process: nothing
    long_only = parse_perf_offcpu(text, min_block_us=50_000, pid=PID)
    assert {s.tid for s in long_only.parse.stacks} == {READER, FEEDER}  # the 2 ms naps are gone
    assert long_only.short_blocks > 700
    system = parse_perf_offcpu(_perf("perf_system.txt.gz"), min_block_us=1000)
    assert system.parse.bad_lines == 0 and not system.parse.truncated
    assert {s.tgid for s in system.parse.stacks if s.comm == "pmcp_napper"} == {PID}
    assert all(s.tid != 0 for s in system.parse.stacks)  # never the idle task


def test_bpftrace_system_wide_kernel_threads():
    p = parse_bpftrace_offcpu((FIX / "bpftrace_system_m100000.json").read_bytes())
    assert p.bad_lines == 0 and p.stacks
    assert all(s.offcpu_us >= 100_000 for s in p.stacks)
    kthreads = [s for s in p.stacks if s.frames and s.frames[0] == "ret_from_fork_asm"]
    assert kthreads and all(s.kernel_frames == len(s.frames) for s in kthreads)


def test_bpftrace_truncated_and_garbled():
    raw = (FIX / "bpftrace_pid.json").read_bytes()
    for cut in range(0, len(raw), 7):
        p = parse_bpftrace_offcpu(raw[:cut])
        assert p.stacks == [] or p.stacks == parse_bpftrace_offcpu(raw).stacks
        if b'"@offcpu_us"' in raw[:cut] and cut < len(raw.rstrip()):
            assert p.truncated and p.bad_lines >= 1
    garbled = raw.replace(b"pmcp_reader,16531,16531,", b"pmcp_reader,16531,x,")  # both of its keys
    p = parse_bpftrace_offcpu(garbled)
    assert p.bad_lines == 2 and {s.comm for s in p.stacks} == {"pmcp_feeder", "pmcp_napper"}


def test_perf_truncated_and_garbled():
    text = _perf("perf_pid.txt.gz")
    full = parse_perf_offcpu(text, pid=PID)
    totals = {(s.tid, tuple(s.frames)): s.offcpu_us for s in full.parse.stacks}
    for cut in list(range(1, len(text), 9973)) + [len(text) - 3]:
        p = parse_perf_offcpu(text[:cut], pid=PID)
        assert p.parse.bad_lines == 0
        assert p.parse.truncated == (not text[:cut].endswith("\n"))
        for s in p.parse.stacks:
            assert s.offcpu_us <= totals[(s.tid, tuple(s.frames))]
    lines = text.split("\n")
    garbled = "\n".join(("@@garbage@@ " + line if i % 50 == 7 else line) for i, line in enumerate(lines))
    p = parse_perf_offcpu(garbled, pid=PID)
    assert p.parse.bad_lines > 0 and {s.tid for s in p.parse.stacks} == {READER, FEEDER, NAPPER}


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=30_000), st.binary(min_size=1, max_size=12))
def test_perf_and_bpftrace_never_raise(pos, junk):
    text = _perf("perf_pid.txt.gz")[:40_000]
    parse_perf_offcpu(text[:pos] + junk.decode("latin-1") + text[pos:], pid=PID)
    raw = (FIX / "bpftrace_pid.json").read_bytes()
    pos = min(pos, len(raw))
    parse_bpftrace_offcpu(raw[:pos] + junk + raw[pos:])


def test_analysis_and_folded_stacks():
    p = _rungs()["offcputime"]
    a = analyse(p.stacks, window_s=2.0, top_n=10, pid=PID)
    assert a.total_us == p.total_us and a.threads_total == 3
    reader = next(t for t in a.threads if t.tid == READER)
    assert reader.blocked_in == "perfmcp_wait_for_data" and 90 <= reader.window_pct <= 100
    fn = {f.function: f for f in a.functions}
    # The feeder and the napper both sleep in perfmcp_sleep_us: one function, two threads.
    assert fn["perfmcp_sleep_us"].threads == 2 and fn["perfmcp_wait_for_data"].threads == 1
    assert sum(f.share_pct for f in a.functions) == pytest.approx(100, abs=0.1)
    folded, kernel = folded_stacks(p.stacks)
    assert sum(folded.values()) == p.total_us
    assert "pmcp_reader;__libc_init_first;main;" + ";".join(READER_TAIL) in folded
    assert {"__schedule", "anon_pipe_read"} <= kernel and "perfmcp_wait_for_data" not in kernel


def _stack(comm: str, tid: int, frames: list[str], kernel: int, us: int) -> OffcpuStack:
    return OffcpuStack(comm=comm, pid=tid, tid=tid, tgid=tid, frames=frames, kernel_frames=kernel, offcpu_us=us)


def test_findings_rules():
    from perf_mcp.tools.perf_offcpu_profile import findings

    disk = _stack("db", 10, ["main", "flush_log", "fdatasync", "entry_SYSCALL_64_after_hwframe", "do_fsync",
                             "file_write_and_wait_range", "folio_wait_writeback", "io_schedule", "schedule",
                             "__schedule"], 7, 1_800_000)
    parked = _stack("worker", 11, ["start_thread", "pthread_cond_wait", "entry_SYSCALL_64_after_hwframe",
                                   "do_futex", "futex_wait", "schedule", "__schedule"], 5, 2_000_000)
    spinner = _stack("spin", 12, ["main", "spin", "asm_sysvec_apic_timer_interrupt", "irqentry_exit_to_user_mode",
                                  "schedule", "__schedule"], 4, 900_000)
    a = analyse([disk, parked, spinner], window_s=2.0, top_n=10, pid=None)
    assert [(t.tid, t.wait_kind) for t in a.threads] == [(11, "lock"), (10, "disk I/O"), (12, "preempted")]
    got = findings(a, window_s=2.0, duration_s=2, pid=None, target="system-wide", method="m", complete=True)
    # System-wide: the disk wait is reported, the parked worker (futex) is not; 19% preempted is under 20%.
    assert [(f.id, f.severity) for f in got] == [("offcpu.thread_blocked", "warning")]
    assert got[0].title.endswith("blocked in fdatasync") and "perf_io_latency" in got[0].suggestion
    assert got[0].evidence[0].value == 1800.0 and got[0].evidence[0].threshold == 1000.0
    # For one process every thread blocked over half the window is reported; a futex one as info.
    a = analyse([parked, spinner, spinner], window_s=2.0, top_n=10, pid=11)
    got = findings(a, window_s=2.0, duration_s=2, pid=11, target="pid 11", method="m", complete=True)
    ids = {(f.id, f.severity) for f in got}
    assert ("offcpu.thread_blocked", "info") in ids and ("offcpu.preempted", "warning") in ids
    lock = next(f for f in got if f.id == "offcpu.thread_blocked" and "pthread_cond_wait" in f.title)
    assert "all of the 2 s window" in lock.title and "condition variable" in lock.detail
    pre = next(f for f in got if f.id == "offcpu.preempted")
    assert "perf_runq_latency pid=11" in pre.suggestion and pre.resource == "cpu"


def test_bpftrace_reports_its_window_and_min_block():
    # offcpu.bt 2 13051 50000 on the workload (a later run: pid 13051, feeder 13053, napper 13054).
    p = parse_bpftrace_offcpu((FIX / "bpftrace_pid_m50000.json").read_bytes())
    assert p.bad_lines == 0 and not p.truncated
    assert p.window_s == 2.1  # @window_us 2099992: 2 s from the first switch, checked every 100 ms
    assert {s.comm for s in p.stacks} == {"pmcp_reader", "pmcp_feeder"}  # the 2 ms naps are under 50 ms
    reader = next(s for s in p.stacks if s.comm == "pmcp_reader")
    assert "perfmcp_wait_for_data" in reader.frames and 0.7 * 2.1e6 <= reader.offcpu_us <= 2.1e6
    assert parse_bpftrace_offcpu((FIX / "bpftrace_pid.json").read_bytes()).window_s is None  # older script
