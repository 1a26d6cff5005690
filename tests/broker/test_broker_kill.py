"""Clients killed at random moments of their jobs (see kill_run.py): 40 kills over two users
(root and perfmcp-granted) of perf record/perf script and runqlat jobs. Nothing may be left:
every job's processes gone and its audit line written after the kill, no process ever
seen under the broker still alive, no BPF program a job held still loaded, no fd leaked.
Prints the kill -> job gone distribution; bench/bench_broker_kill.py runs 1,000."""

from __future__ import annotations

import pytest

import helpers
from kill_run import describe, run_kills
from user_clients import report

pytestmark = [pytest.mark.root, pytest.mark.slow]

N_KILLS = 40


async def test_clients_killed_at_random_moments_leave_nothing(
    module_broker_factory, system_bus: None, test_users: helpers.TestUsers
) -> None:
    broker = module_broker_factory()
    figs = await run_kills(broker, test_users.granted.name, N_KILLS, seed=5)
    report("clients killed mid-job", **describe(figs))
    assert figs.kills >= N_KILLS - figs.busy, describe(figs)
    assert not figs.not_gone, figs.not_gone[:5]
    assert not figs.orphans, figs.orphans
    assert not figs.progs_left, figs.progs_left
    assert figs.fds_after <= figs.fds_before
    assert len(figs.gone_s) >= N_KILLS // 2, "too few kills landed while a job ran"
    assert figs.prog_ids, "no BPF program was seen: the runqlat jobs did not run"
    assert set(figs.outcomes) <= {"cancelled", "ok", "error"}, figs.outcomes
    assert figs.outcomes.get("cancelled", 0) >= N_KILLS // 2, figs.outcomes
    assert broker.alive() and not helpers.children(broker.pid)
