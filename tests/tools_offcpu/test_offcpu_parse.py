"""Parsers of the off-CPU ladder, fed with output captured from the real programs on this machine.

Fixtures (tests/fixtures/offcputime/): the known-answer workload (tests/tools_offcpu/offcpu_workload.c)
with its reader thread blocked in perfmcp_wait_for_data on a pipe fed every 100 ms by its feeder thread.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.trace.offcpu_parse import OffcpuParse, parse_offcputime

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
