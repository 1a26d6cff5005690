"""profile.bt's JSON (recorded from bpftrace 0.17 on this machine) folded into perf_script's Folded shape."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.profile.analysis import analyse
from perf_mcp.profile.bpftrace_stacks import fold_profile_json

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cpu_profile"
KERNEL = (FIXTURES / "bpftrace_pid_kernel.json").read_bytes()  # busy loop, pid, include_kernel=1, 2 s at 999 Hz
USER = (FIXTURES / "bpftrace_pid_user.json").read_bytes()  # the same, include_kernel=0


def test_recorded_kernel_and_user_profile() -> None:
    p = fold_profile_json(KERNEL)
    assert p.folded.samples == p.samples_taken == 392 and p.lost == 0 and p.folded.bad_lines == 0
    assert p.sampled_s is not None and abs(p.sampled_s - 2.0) < 0.01
    assert p.folded.stacks["busy;__libc_start_call_main;[unknown];perfmcp_busy_leaf"] == 390
    # kernel frames (interrupts) follow the user frames, leaf last, and are marked as kernel
    ipi = "busy;__libc_start_call_main;[unknown];perfmcp_busy_leaf;asm_sysvec_reschedule_ipi;irqentry_exit_to_user_mode"
    assert p.folded.stacks[ipi] == 1 and "irqentry_exit_to_user_mode" in p.folded.kernel_frames
    assert p.folded.frame_dso["perfmcp_busy_leaf"] == "busy"
    assert p.folded.frame_dso["__libc_start_call_main"] == "libc.so.6"
    a = analyse(p.folded)
    assert a.top_self[0] == ("perfmcp_busy_leaf", 390) and a.idle_pct == 0.0
    u = fold_profile_json(USER)
    assert u.folded.samples == 310 and u.folded.kernel_frames == frozenset()
    assert u.folded.stacks == {"busy;__libc_start_call_main;[unknown];perfmcp_busy_leaf": 310}


def test_idle_swapper_and_lost_samples() -> None:
    maps = {"@stacks": {"0,swapper/1,\n\tffffffff821f1409 default_idle+9\n,\n": 7,
                        "12,a,b,,\n\t1155 leaf+3 (/bin/app)\n\t7f00 0x7f00 (/lib/libc.so.6)\n": 3},
            }
    raw = b"\n".join(json.dumps(o).encode() for o in (
        {"type": "attached_probes", "data": {"probes": 3}},
        {"type": "map", "data": {"@samples": 12}},
        {"type": "map", "data": maps}))
    p = fold_profile_json(raw)
    assert p.folded.stacks == {"swapper;default_idle": 7, "a,b;[libc.so.6];leaf": 3}
    assert p.lost == 2 and p.unnamed_user_frames == 3 and p.user_frames == 6
    assert analyse(p.folded).idle_pct == 70.0  # the same idle share as perf's 'swapper'


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(KERNEL)), st.binary(max_size=20))
def test_truncated_and_garbled_copies_never_crash(cut: int, junk: bytes) -> None:
    p = fold_profile_json(KERNEL[:cut] + junk)
    assert 0 <= p.folded.samples <= 392
