"""A Hypothesis state machine against the real broker: connect, authorise (AccessQuery), run
short jobs (access_query, tool_features, fd_table, a 1 s cpu_profile or runq_latency about
the user's own "tag" process), cancel (close mid-job) and disconnect, in any order, from
root, perfmcp-granted and perfmcp-denied (agent_script.py, real processes of those users).

Invariants, checked after every step and by a sampler every 20 ms in between:
- nothing runs before authorisation: no process about perfmcp-denied's tag ever appears
  under the broker, and its profile/trace/inspect requests are PERMISSION_DENIED;
- the limits hold: at most MAX_JOBS_GLOBAL job processes leading a group under the
  broker, at most one profiling/tracing job group per user;
- no child outlives its connection: closing a running job's connection leaves no process
  about that user's tag within a guard of 10 s.
At the end the audit log is read back: per uid, the heavy jobs' intervals never overlap,
and every BUSY answered to a heavy request fell inside another heavy job of the same
uid or a full broker. Bounded: 8 examples of 25 steps, no shrinking (the failing steps
are printed as they are).
"""

from __future__ import annotations

import datetime
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import helpers
from agents import Agent
from broker_wire import audit_records, cmdline
from perf_mcp_protocol import limits
from user_clients import report

pytestmark = [pytest.mark.root, pytest.mark.slow]

USERS = ("root", "granted", "denied")
KINDS = ("access_query", "tool_features", "fd_table", "cpu_profile", "runq_latency")
HEAVY = {"cpu_profile", "runq_latency"}
NEEDS_GRANT = {"fd_table", "cpu_profile", "runq_latency"}
GONE_GUARD_S = 10.0
MAX_OPEN_PER_USER = 4


class World:
    """What lives across examples: the broker, one agent and one tag process per user."""

    def __init__(self, broker: helpers.RunningBroker, users: helpers.TestUsers) -> None:
        self.broker = broker
        names = {"root": "root", "granted": users.granted.name, "denied": users.denied.name}
        self.agents = {u: Agent(names[u], broker.socket_path) for u in USERS}
        self.tags = {
            u: (subprocess.Popen(["/bin/sleep", "100000"], stdin=subprocess.DEVNULL) if u == "root"
                else helpers.spawn_as(names[u], ["/bin/sleep", "100000"]))
            for u in USERS
        }
        self.next_id = 0
        self.violations: list[str] = []
        self.max_children = 0
        self.cancel_s: list[float] = []
        self.steps = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def tagged(self, user: str) -> list[int]:
        """Processes under the broker working on this user's tag (argv holds -p TAG)."""
        tag = str(self.tags[user].pid)
        return [p for p in helpers.descendants(self.broker.pid) if tag in cmdline(p) and "-p" in cmdline(p)]

    def check_processes(self) -> None:
        children = helpers.children(self.broker.pid)
        self.max_children = max(self.max_children, len(children))
        if len(children) > limits.MAX_JOBS_GLOBAL:
            self.violations.append(f"{len(children)} job processes under the broker: {children}")
        if self.tagged("denied"):
            self.violations.append(f"a job ran for perfmcp-denied: {[cmdline(p) for p in self.tagged('denied')]}")
        for user in ("root", "granted"):
            groups = {st.pgrp for p in self.tagged(user) if (st := helpers.read_proc_stat(p))}
            if len(groups) > limits.MAX_JOBS_PER_UID:
                self.violations.append(f"{user} has {len(groups)} job groups at once")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.check_processes()
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._sampler.join(5)
        for agent in self.agents.values():
            agent.stop()
        for tag in self.tags.values():
            helpers.stop_process(tag)


class BrokerMachine(RuleBasedStateMachine):
    world: World  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.open: dict[int, tuple[str, str]] = {}  # conn id -> (user, kind), not closed by us

    def _req(self, user: str, kind: str) -> dict:
        tag = self.world.tags[user].pid
        if kind == "fd_table":
            return {"type": "fd_table", "pid": self.world.agents[user].pid}
        if kind == "cpu_profile":
            return {"type": "cpu_profile", "duration_s": 1.0, "frequency_hz": 49, "pid": tag, "include_kernel": True}
        if kind == "runq_latency":
            return {"type": "runq_latency", "backend": "libbpf", "duration_s": 1, "pid": tag}
        return {"type": kind}

    def _state(self, user: str) -> dict[int, dict]:
        return self.world.agents[user].state()

    @precondition(lambda self: len(self.open) < MAX_OPEN_PER_USER * len(USERS))
    @rule(user=st.sampled_from(USERS), kind=st.sampled_from(KINDS))
    def start(self, user: str, kind: str) -> None:
        if sum(u == user for u, _ in self.open.values()) >= MAX_OPEN_PER_USER:
            return
        self.world.next_id += 1
        cid = self.world.next_id
        self.world.agents[user].open(cid, self._req(user, kind))
        self.open[cid] = (user, kind)

    @precondition(lambda self: len(self.open) < MAX_OPEN_PER_USER * len(USERS))
    @rule(user=st.sampled_from(USERS), kind=st.sampled_from(sorted(HEAVY)))
    def start_heavy(self, user: str, kind: str) -> None:
        self.start(user, kind)

    @rule(user=st.sampled_from(USERS), kind=st.sampled_from(sorted(HEAVY)), after=st.floats(0.0, 1.2))
    def run_and_cancel(self, user: str, kind: str, after: float) -> None:
        """A heavy job, closed `after` seconds into it (if it was accepted)."""
        if sum(u == user for u, _ in self.open.values()) >= MAX_OPEN_PER_USER:
            return
        self.start(user, kind)
        cid = self.world.next_id
        agent = self.world.agents[user]
        helpers.wait_until(lambda: bool(agent.state()[cid]["types"][1:]) or agent.state()[cid]["closed"], 10.0)
        time.sleep(after)
        self.cancel_id(cid)

    @precondition(lambda self: bool(self.open))
    @rule(pick=st.integers(0, 1000))
    def cancel(self, pick: int) -> None:
        self.cancel_id(sorted(self.open)[pick % len(self.open)])

    def cancel_id(self, cid: int) -> None:
        user, kind = self.open.pop(cid)
        conn = self._state(user).get(cid, {})
        running = kind in HEAVY and "accepted" in conn.get("types", []) and not conn.get("final")
        self.world.agents[user].close(cid)
        if running:
            t0 = time.monotonic()
            gone = helpers.wait_until(lambda: not self.world.tagged(user), GONE_GUARD_S, 0.01)
            self.world.cancel_s.append(time.monotonic() - t0)
            assert gone, f"{user}'s job outlived its connection: {[cmdline(p) for p in self.world.tagged(user)]}"

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.5]))
    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    @invariant()
    def answers_and_limits(self) -> None:
        self.world.steps += 1
        self.world.check_processes()
        assert not self.world.violations, self.world.violations[:5]
        for user in USERS:
            for conn in self._state(user).values():
                final = conn["final"]
                if final is None or conn["error"]:
                    continue
                if final["type"] == "error":
                    # PERMISSION_DENIED for the denied user only, and it is the only error it gets
                    # (nothing of its is looked at before authorisation); the others may be BUSY.
                    allowed = {"PERMISSION_DENIED"} if user == "denied" else {"BUSY"}
                    assert final["code"] in allowed, (user, final)
                if user == "denied":
                    assert "accepted" not in conn["types"] or final["type"] == "result", conn

    def teardown(self) -> None:
        for cid, (user, _kind) in list(self.open.items()):
            self.world.agents[user].close(cid)
        for user in ("root", "granted"):
            assert helpers.wait_until(lambda: not self.world.tagged(user), GONE_GUARD_S), f"{user}'s jobs left"


def _ts(line: str) -> float:
    stamp = " ".join(line.split()[:2])
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _audit_with_times(log: str) -> list[tuple[float, dict]]:
    out = []
    for line in log.splitlines():
        if "perf_mcp_broker.audit" in line:
            rec = audit_records(line)
            if rec:
                out.append((_ts(line), rec[0]))
    return out


def test_broker_state_machine(module_broker_factory, system_bus: None, test_users: helpers.TestUsers) -> None:
    broker = module_broker_factory()
    world = World(broker, test_users)
    BrokerMachine.world = world
    started = time.monotonic()
    try:
        run_state_machine_as_test(
            BrokerMachine,
            settings=settings(max_examples=8, stateful_step_count=25, deadline=None, phases=[Phase.generate],
                              suppress_health_check=list(HealthCheck)),
        )
    finally:
        world.close()
    # The audit, read back: heavy job intervals per uid never overlap; BUSY only when justified.
    tol = 0.1
    records = _audit_with_times(broker.log_text())
    jobs = [(end - r["wall_s"], end, r) for end, r in records if r["kind"] in HEAVY and r["argv"]]
    overlaps = []
    for i, (s1, e1, r1) in enumerate(jobs):
        for s2, e2, r2 in jobs[i + 1:]:
            if r1["uid"] == r2["uid"] and s1 < e2 - tol and s2 < e1 - tol:
                overlaps.append((r1["job_id"], r2["job_id"]))
    busy = [(t, r) for t, r in records if r["outcome"] == "busy" and r["kind"] in HEAVY]
    unjustified = [r for t, r in busy
                   if not any(r2["uid"] == r["uid"] and s - tol <= t <= e + tol for s, e, r2 in jobs)]
    denied_uid = test_users.denied.uid
    denied_ran = [r for _, r in records if r["uid"] == denied_uid and r["kind"] in NEEDS_GRANT
                  and (r["outcome"] != "denied" or r["argv"])]
    outcomes: dict[str, int] = {}
    for _, r in records:
        outcomes[f"{r['kind']}:{r['outcome']}"] = outcomes.get(f"{r['kind']}:{r['outcome']}", 0) + 1
    c = sorted(world.cancel_s)
    report("broker state machine", steps=world.steps, seconds=round(time.monotonic() - started, 1),
           heavy_jobs=len(jobs), busy_heavy=len(busy), max_job_processes=world.max_children,
           cancels_of_running_jobs=len(c), cancel_to_gone_max_s=round(c[-1], 2) if c else None,
           overlaps=len(overlaps), unjustified_busy=len(unjustified), audit=outcomes)
    assert not world.violations, world.violations[:5]
    assert not overlaps, overlaps
    assert not unjustified, unjustified
    assert not denied_ran, denied_ran
    assert jobs, "no heavy job ran: the machine did not exercise the jobs"
