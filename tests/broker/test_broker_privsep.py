"""`sudo perf-mcp`: the unprivileged MCP child must not outlive its root broker parent.

The parent-death signal is cleared by a change of uid, so it has to be armed
after the drop; killing the parent then ends the child even while its MCP
client (here: this test, holding its stdin open) is still connected."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import trio

import helpers
from user_clients import report

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _gone(pid: int) -> bool:
    st = helpers.read_proc_stat(pid)
    return st is None or st.state in ("Z", "X")


async def test_the_mcp_child_dies_with_its_root_parent(test_users: helpers.TestUsers) -> None:
    user = test_users.denied
    proc = await trio.lowlevel.open_process(
        [str(helpers.FRONTEND_BIN), "--user", user.name],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "PERF_MCP_BROKER_SOCKET": "/nonexistent/broker.sock"}, cwd="/",
    )
    child = None
    try:
        dropped = await helpers.await_until(
            lambda: any(helpers.proc_uid(p) == user.uid for p in helpers.children(proc.pid)), 20.0
        )
        assert dropped, "no child of the perf-mcp parent runs as the unprivileged user"
        child = next(p for p in helpers.children(proc.pid) if helpers.proc_uid(p) == user.uid)
        await trio.sleep(0.5)  # the child is serving MCP on our stdin pipe by now
        proc.send_signal(signal.SIGKILL)  # the root parent, by its pid
        await proc.wait()
        followed = await helpers.await_until(lambda: _gone(child), 10.0)
        report("sudo mode, parent killed", child_pid=child, child_exited=followed)
        assert followed, "the MCP child outlived the root broker parent"
    finally:
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stdin is not None:
            await proc.stdin.aclose()
