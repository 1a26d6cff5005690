"""runner.run_step with a child that SIGKILL cannot end at once: a process frozen by the
cgroup v1 freezer sleeps uninterruptibly (state D) until it is thawed, like one
stuck on a dead NFS server. Waiting for it must stall only its own job."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import trio

import helpers
from perf_mcp_broker.jobs import Step
from perf_mcp_broker.runner import run_step
from perf_mcp_protocol import limits
from user_clients import report

pytestmark = [pytest.mark.root]

FREEZER = Path("/sys/fs/cgroup/freezer")
THAW_GUARD_S = 6.0  # a thread thaws the child then, should the event loop be stuck


async def test_a_child_in_uninterruptible_sleep_does_not_stall_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (FREEZER / "freezer.state").exists() and not FREEZER.is_dir():
        pytest.skip("no cgroup v1 freezer here")
    monkeypatch.setattr(limits, "STOP_ESCALATION_S", 0.2)
    cgroup = FREEZER / f"pmcp-test-{os.getpid()}"
    cgroup.mkdir()
    thawed = threading.Event()

    def thaw() -> None:
        (cgroup / "freezer.state").write_text("THAWED")
        thawed.set()

    timer = threading.Timer(THAW_GUARD_S, thaw)
    scope = trio.CancelScope()
    finished = trio.Event()
    beats: list[float] = []

    async def job() -> None:
        with scope:
            await run_step(Step("sleeper", ("/bin/sleep", "60"), deadline_s=60.0), stdout_cap=1024)
        finished.set()

    async def heartbeat() -> None:
        while not finished.is_set():
            beats.append(time.monotonic())
            await trio.sleep(0.05)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job)
            nursery.start_soon(heartbeat)
            assert await helpers.await_until(lambda: any(helpers.read_proc_stat(p) and helpers.read_proc_stat(p).comm == "sleep" for p in helpers.children(os.getpid())), 10.0)
            child = next(p for p in helpers.children(os.getpid()) if helpers.read_proc_stat(p).comm == "sleep")
            (cgroup / "cgroup.procs").write_text(str(child))
            (cgroup / "freezer.state").write_text("FROZEN")
            assert await helpers.await_until(lambda: (cgroup / "freezer.state").read_text().strip() == "FROZEN", 5.0)
            timer.start()
            scope.cancel()  # the client went away: SIGINT, SIGTERM, SIGKILL, then wait for the exit
            await trio.sleep(1.0)  # the escalation is over; the child is killed but still frozen
            state = helpers.read_proc_stat(child).state
            loop_ran_while_frozen = not thawed.is_set() and not finished.is_set()
            thaw()
            with trio.fail_after(10):
                await finished.wait()
    finally:
        timer.cancel()
        thaw()
        helpers.wait_until(lambda: not (cgroup / "cgroup.procs").read_text().strip(), 5.0)
        cgroup.rmdir()
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    report("frozen child", state_after_sigkill=state, loop_ran_while_frozen=loop_ran_while_frozen, longest_loop_gap_s=round(max(gaps), 2))
    assert state == "D"
    assert loop_ran_while_frozen, "the event loop was stuck waiting for the frozen child"
    assert not os.path.exists(f"/proc/{child}"), "the child was not reaped"
