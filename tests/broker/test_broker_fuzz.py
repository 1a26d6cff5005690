"""The frame decoder and the dispatch under generated frames, against the real broker.

10,000 frames (valid requests of every type, mutated, truncated, oversized, deeply
nested, wrong types, wrong order) over thousands of connections from two real test
users, while root's AccessQuery is timed: the broker must stay alive with no
traceback or INTERNAL answer, no fd leaked, and serve the good client throughout.
Valid profile and trace requests come only from perfmcp-denied (refused before
anything runs) so no BPF job starts. bench/bench_broker_fuzz.py runs 100,000.
"""

from __future__ import annotations

import random

import pytest

import helpers
from frame_fuzz import KINDS, all_request_tags, make_conn
from fuzz_run import describe, run_fuzz
from user_clients import report

pytestmark = [pytest.mark.root, pytest.mark.slow]

N_FRAMES = 10_000
SEED = 20261126


def test_the_generator_covers_every_request_type_and_kind() -> None:
    rng = random.Random(SEED)
    conns = [make_conn(rng) for _ in range(3000)]
    kinds = {c.kind for c in conns}
    import msgspec

    tags = {msgspec.msgpack.decode(c.frames[1][4:])["type"] for c in conns if c.kind == "valid"}
    assert kinds == set(KINDS)
    assert tags == all_request_tags(), all_request_tags() - tags


async def test_fuzzed_frames_leave_the_broker_serving(
    module_broker_factory, system_bus: None, test_users: helpers.TestUsers
) -> None:
    broker = module_broker_factory()
    figs = await run_fuzz(broker, test_users.granted.name, test_users.denied.name, N_FRAMES, SEED)
    report("fuzzed frames", **describe(figs))
    assert figs.broker_alive, broker.log_text()[-3000:]
    assert not figs.crashes, figs.crashes[:10]
    assert figs.internal == 0
    assert figs.decoder_escapes == 0, "a frame the decoder does not refuse with ProtocolError was answered INTERNAL"
    assert figs.hung == 0, [f["examples_hung"] for f in figs.fuzzers.values()]
    assert figs.frames >= N_FRAMES
    assert figs.fds_after <= figs.fds_before, (figs.fds_before, figs.fds_after)
    assert not figs.children_left
    assert not figs.good_failures, figs.good_failures[:5]
    assert len(figs.good_latencies_s) >= 5
    # The denied user's valid requests: every one that needs a grant refused, the others answered.
    denied = figs.valid_tags(test_users.denied.name)
    for tag, answers in denied.items():
        if tag == "access_query":
            assert set(answers) == {"access"}, (tag, answers)
        elif tag == "tool_features":
            assert set(answers) == {"result"}, (tag, answers)
        else:
            assert set(answers) == {"error:PERMISSION_DENIED"}, (tag, answers)
    assert set(denied) == all_request_tags(), set(denied)
    # The granted user's fd_table requests reach the reader: a result or PID_NOT_FOUND.
    granted_fd = figs.valid_tags(test_users.granted.name).get("fd_table", {})
    assert granted_fd and set(granted_fd) <= {"result", "error:PID_NOT_FOUND"}, granted_fd
    # No job of the profile or trace class ran for anyone.
    from broker_wire import audit_records

    heavy = [r for r in audit_records(broker.log_text())
             if r["argv"] and r["kind"] not in ("fd_table", "process_io", "tool_features", "access_query")]
    assert not heavy, heavy[:3]
