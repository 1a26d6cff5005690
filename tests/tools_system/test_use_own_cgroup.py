"""The USE check's cgroup row: the frontend is started inside a cgroup with a
memory limit and a CPU quota (a small wrapper joins the cgroup, then execs the
usual setpriv command line, so the server runs as perfmcp-denied from its first
instruction inside it); a memory hog and a busy loop in the same cgroup bring it
near both limits. The cgroup is made where the host has each controller: v1 here
(memory.limit_in_bytes, cpu.cfs_quota_us, a cpuacct cgroup beside), cgroup2 on a
v2-only host (memory.max, cpu.max); the test needs memory and cpu in either."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import helpers
from systools_util import checks, limited_cgroup, load, ok_data, row

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.cgroup_any("memory", "cpu")]

JOIN_AND_EXEC = r"""
import os, sys
n = int(sys.argv[1])
for procs in sys.argv[2:2 + n]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
argv = sys.argv[2 + n:]
os.execv(argv[0], argv)
"""

HOG = r"""
import os, sys, time
for procs in sys.argv[3:]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
anon = bytearray(int(sys.argv[1]) * 2**20)
for i in range(0, len(anon), 4096):
    anon[i] = 1
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""

BUSY = r"""
import os, sys, time
for procs in sys.argv[2:]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""


@asynccontextmanager
async def client_in_cgroups(user: helpers.UnixUser, sock: Path, procs: list[Path]) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    argv = [sys.executable, "-c", JOIN_AND_EXEC, str(len(procs)), *map(str, procs),
            *helpers.frontend_argv(user, sock)]
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=helpers.user_env(user), cwd="/")
    async with Client(stdio_client(params, errlog=sys.stderr)) as client:
        yield client


async def test_own_cgroup_near_its_memory_limit_and_cpu_quota(
    test_users: helpers.TestUsers, no_broker_socket: Path
) -> None:
    limit_mib, hog_mib = 400, 330
    with limited_cgroup(memory_bytes=limit_mib * 2**20, cpu_quota_cores=0.5) as limited:
        procs = [str(p) for p in limited.procs]
        async with client_in_cgroups(test_users.denied, no_broker_socket, limited.procs) as client:
            before = ok_data(await client.call_tool("perf_use_check", {"window_s": 1}))
            with load([sys.executable, "-c", HOG, str(hog_mib), "40", *procs], stdout=-1) as hog, \
                    load([sys.executable, "-c", BUSY, "40", *procs]):
                assert hog.stdout is not None
                assert (await trio.to_thread.run_sync(hog.stdout.readline)).strip() == b"ready"
                await trio.sleep(6)
                data = ok_data(await client.call_tool("perf_use_check", {"window_s": 5, "include_ok": True}))
    name = limited.use_row
    print(f"\n{helpers.cgroup_host().describe()}; the test cgroup's limits are on {limited.version}")
    assert [r["name"] for r in before["table"]][-1] == name  # the row exists as soon as there are limits
    cg = row(data, name)
    c = checks(cg)
    print(f"\n{name}: {cg['status']}: {cg['detail']}\n  {[(k, v['value'], v['status']) for k, v in c.items()]}")
    avail = c["cgroup.memory.available"]
    assert avail["status"] in ("warning", "critical") and avail["value"] < 20
    if c["cgroup.cpu.throttled"]["value"] < 10 and c["cgroup.cpu.utilisation"]["value"] < 90:
        # never throttled: the busy loop did not even get its 0.5 CPU (the machine's CPUs were saturated
        # by other loads), so the quota was not the limit; the figure must still be the usage it got
        print("the busy loop was starved by other loads (never throttled): the quota rule is not exercised")
        assert c["cgroup.cpu.utilisation"]["status"] == ("ok" if c["cgroup.cpu.utilisation"]["value"] <= 70
                                                         else "warning")
    else:
        assert c["cgroup.cpu.utilisation"]["status"] == "critical"  # the busy loop fills its 0.5 CPU quota
        assert 90 < c["cgroup.cpu.utilisation"]["value"] <= 105
        assert c["cgroup.cpu.throttled"]["value"] > 50  # most periods throttled
    assert "cgroup.memory.failcnt" in c
    f = next(f for f in data["findings"] if f["resource"] == "cgroup")
    assert f["severity"] == "critical" and "perf_cgroup_summary" in f["suggestion"]
    assert limited.name in f["title"]
