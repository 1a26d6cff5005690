"""perf_cgroup_summary on a REAL cgroup2 cgroup, through the real MCP client (frontend
as perfmcp-denied, no broker).

Every cgroup2 mount has the core files whatever controllers it offers: cgroup.procs,
cpu.stat's usage (usage_usec, user_usec, system_usec) and, with PSI, cpu/memory/io
.pressure. On the project's hybrid machines the v2 mount offers no controller the tool
reads (cpu, memory, io, pids are bound to v1), so this is the v2 path that runs for real
here; the v2 controller files (cpu.max, memory.max, memory.events, io.stat, pids.*) are
fixture-based (cg_util.FakeV2, test_cgroup_parse.py) on this host and real on a
v2-only host (test_cgroup_top.py makes its cgroups there). Expectations that depend on
the layout (which v1 mounts lack the path, whether memory files exist) are derived from
this host's mounts and files.

Known answers: a process burns exactly BURN_S of CPU time (its own clock) and then
sleeps, beside a second sleeping process: the cgroup's lifetime usage is BURN_S plus the
start-up of the two (at most STARTUP_S), its usage over the window ~0, 2 processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import helpers
from helpers import ok_data
from cg_util import cgroup

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.cgroup_v2()]

BURN_S = 0.5
STARTUP_S = 0.35  # python3 and setpriv starting, on a loaded machine

BURNER = f"""
import time
while time.process_time() < {BURN_S}:
    pass
print("burnt", flush=True)
time.sleep(600)
"""


def usage_s(directory: Path) -> float:
    stat = dict(line.split() for line in (directory / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) / 1e6


async def test_a_real_v2_cgroup_by_path_and_in_the_listing(
    test_users: helpers.TestUsers, shared_tmp: Path, busy_exe: Path
) -> None:
    host = helpers.cgroup_host()
    script = shared_tmp / "burner.py"
    script.write_text(BURNER)
    script.chmod(0o644)
    with cgroup(v2=True) as cg:
        v2_dir = cg.dirs["v2"]
        burner = cg.start(test_users.granted, ["/usr/bin/python3", script], stdout=-1)
        cg.start(test_users.granted, ["/bin/sleep", "120"])
        assert burner.stdout is not None
        with trio.fail_after(60):
            line = await trio.to_thread.run_sync(burner.stdout.readline)
        assert line == b"burnt\n", line
        async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
            before = usage_s(v2_dir)
            data = ok_data(await client.call_tool("perf_cgroup_summary", {"cgroup_path": cg.path}))
            after = usage_s(v2_dir)
            # the listing sees it too, with a busy loop running in it now
            cg.start(test_users.granted, [busy_exe, "120"])
            await trio.sleep(0.5)
            list_before = usage_s(v2_dir)
            listing = ok_data(await client.call_tool("perf_cgroup_summary", {"top_n": 50}))
            list_after = usage_s(v2_dir)
        procs = sorted(int(p) for p in (v2_dir / "cgroup.procs").read_text().split())
    print(f"\n{host.describe()}\nsummary: {data['summary']}\nlisting: {listing['summary']}")

    # located in the v2 hierarchy only (the test made no v1 cgroup of this path)
    v2 = [h for h in data["hierarchies"] if h["version"] == "v2"]
    assert [h["directory"] for h in v2] == [str(v2_dir)]
    assert [h for h in data["hierarchies"] if h["version"] == "v1"] == []
    assert sorted(data.get("not_found_in", [])) == sorted(set(host.v1.values()))
    assert data["cgroup_version"] == host.version

    # cpu.stat (a core file): lifetime usage is the known burn, nothing in the window
    cpu = data["cpu"]
    assert BURN_S <= cpu["usage_s_total"] <= BURN_S + STARTUP_S, cpu
    assert before - 1e-6 <= cpu["usage_s_total"] <= after + 1e-6
    assert cpu["usage_cores"] < 0.05, cpu  # both processes sleep
    cpu_max = v2_dir / "cpu.max"
    # cpu.max "max" where the v2 hierarchy has the cpu controller; without it the quota is not known here
    assert cpu["quota"] == ("none" if cpu_max.exists() else "unknown")
    assert host.v2_mount is not None
    enabled = Path(host.v2_mount, "cgroup.subtree_control").read_text().split()
    assert cpu_max.exists() == ("cpu" in enabled)  # the root gives its children the cpu controller or not
    # cgroup.procs (a core file): the two processes it holds (before the busy loop joined)
    assert data["processes"] == 2 and len(procs) == 3
    # memory files exist only where the v2 hierarchy has the memory controller
    assert ("memory" in data) == (v2_dir / "memory.current").exists()
    # PSI of this non-root v2 cgroup (core files when the kernel has PSI)
    if Path("/proc/pressure").is_dir():
        assert set(data["psi"]) == {"cpu", "memory", "io"} and data["psi_cgroup"] == cg.path
    else:
        assert "psi" not in data

    row = next(r for r in listing["top"]["by_cpu"] if r["cgroup_path"] == cg.path)
    window = listing["top"]["window_s"]
    # the listing's window lies inside the test's own two readings around the call
    assert 0.05 < row["cpu_cores"] * window <= list_after - list_before + 1e-3, (row, list_before, list_after)
    assert row.get("cpu_limit") == ("none" if cpu_max.exists() else None)
    print(f"v2 usage: {cpu['usage_s_total']} s total for a {BURN_S} s burn; listing: {row['cpu_cores']} CPUs "
          f"over {window} s (test's bracket {list_after - list_before:.3f} s)")
