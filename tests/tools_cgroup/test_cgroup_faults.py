"""perf_cgroup_summary on real cgroups under real faults, through the real
MCP client with the frontend as perfmcp-denied (cgroup files are world-readable;
no broker needed). Each cgroup is made in the hierarchy this host has its
controller in (cg_util.cgroup): v1 on the project's hybrid machines, v2 on a
v2-only host; the counters the test reads and expects are that hierarchy's
(v1 failcnt / memory.oom_control, v2 memory.events max / oom_kill).

- CPU throttling: a quota of 5000 us per 100000 us period (0.05 CPU), a busy loop:
  low enough that the loop uses it up in (nearly) every period even when the
  machine is loaded (load 17 on these 2 CPUs still leaves it ~0.1 CPU).
- Memory limit hits: a 64 MiB memory cgroup, a process re-reading a 256 MiB file
  (page cache charged to the cgroup and reclaimed at the limit: the limit-hit
  counter grows).
- OOM kill: a 32 MiB memory cgroup, a process touching 128 MiB (no swap here, and
  none for the cgroup on v2: the OOM killer ends it; that is the point).
- Quiet control: the same quota with a sleeping process: no warning or critical.

The tool's counters are checked against the cgroup files read by the test
around the call (the lifetime figures must lie between those two readings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

import helpers
from helpers import envelope, ok_data  # noqa: F401  (re-exported)
from cg_util import V1Cgroup, cgroup

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.cgroup_any("cpu", "memory")]


def cpu_files(cg: V1Cgroup) -> str:
    """How the tool names the CPU counters' source in evidence."""
    return "cpu.stat (v1)" if cg.hierarchy("cpu") == "v1" else "cpu.stat"


def hits(cg: V1Cgroup) -> tuple[str, str, str]:
    """(data field, its window field, evidence counter) of the memory limit hits."""
    if cg.hierarchy("memory") == "v1":
        return "failcnt", "failcnt_in_window", "memory (v1) failcnt"
    return "events_max", "events_max_in_window", "memory memory.events max"




def by_id(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in data["findings"]}


def loud(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["id"], f["severity"]) for f in data["findings"] if f["severity"] in ("warning", "critical")]


async def test_cpu_quota_throttles_a_busy_loop(
    test_users: helpers.TestUsers, shared_tmp: Path, busy_exe: Path
) -> None:
    with cgroup("cpu") as cg:
        cg.set_cpu_quota(5000, 100000)
        busy = cg.start(test_users.granted, [busy_exe, "120"])
        assert await helpers.await_until(lambda: cg.throttling()[0] >= 3, 30)
        async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
            before = cg.throttling()
            by_pid = ok_data(await client.call_tool("perf_cgroup_summary", {"pid": busy.pid}))
            after = cg.throttling()
            by_path = ok_data(await client.call_tool("perf_cgroup_summary", {"cgroup_path": cg.path}))
    for data in (by_pid, by_path):
        found = by_id(data)
        assert "cgroup.cpu_throttling" in found, data["findings"]
        f = found["cgroup.cpu_throttling"]
        assert f["severity"] == "critical" and f["resource"] == "cgroup"
        counters = {e["counter"] for e in f["evidence"]}
        assert {f"{cpu_files(cg)} nr_throttled", f"{cpu_files(cg)} throttled_time (s)"} <= counters
        assert f["next"] == {"tool": "perf_cpu_profile", "arguments": {"pid": busy.pid, "duration_s": 5}}
        cpu = data["cpu"]
        assert (cpu["quota_us"], cpu["period_us"], cpu["quota_cores"]) == (5000, 100000, 0.05)
        # quota used up in most periods: ~0.8 s of every second waiting on an idle machine, less when
        # other work keeps the loop from running (load 10 on these 2 CPUs was seen: 0.4 s)
        assert cpu["window_periods"] >= 5 and cpu["window_throttled_pct"] >= 25  # the critical threshold
        assert 0.005 <= cpu["usage_cores"] <= 0.08  # the quota caps it at 0.05 CPU
        assert 0.05 < cpu["window_throttled_s"] <= data["interval_s"] + 0.05  # one thread: at most the window
    cpu = by_pid["cpu"]
    assert before[0] <= cpu["nr_throttled"] <= after[0]
    assert before[1] - 1e-6 <= cpu["throttled_s"] <= after[1] + 1e-6  # rounded to the microsecond
    assert by_pid["pid"] == busy.pid and by_pid["comm"] == "perfmcp-busy"
    assert cg.directories() <= {h["directory"] for h in by_pid["hierarchies"]}
    print(f"\n{cg.hierarchy('cpu')} throttling: {cpu['window_throttled']}/{cpu['window_periods']} periods "
          f"({cpu['window_throttled_pct']:.0f}%), {cpu['window_throttled_s']:.2f} s throttled in "
          f"{by_pid['interval_s']} s, usage {cpu['usage_cores']} CPUs of a 0.05 quota")


async def test_quiet_control_idle_cgroup_has_no_warning(
    test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    with cgroup("cpu", "memory") as cg:
        cg.set_cpu_quota(20000, 100000)
        cg.set_memory_limit(256 << 20)
        idle = cg.start(test_users.granted, ["/bin/sleep", "120"])
        async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
            data = ok_data(await client.call_tool("perf_cgroup_summary", {"pid": idle.pid}))
    assert loud(data) == [], data["findings"]
    assert data["cpu"]["window_throttled"] == 0 and data["cpu"]["quota_cores"] == 0.2
    assert data["memory"]["limit_bytes"] == 256 << 20 and data["memory"][hits(cg)[1]] == 0
    assert data["memory"]["limit"] == "256.0 MiB" and data["cpu"]["quota"] == "0.2 CPUs"
    print(f"\nidle control: findings {[(f['id'], f['severity']) for f in data['findings']]}")


READER = """
import sys
path = sys.argv[1]
while True:
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
"""


async def test_memory_limit_hits_grow_failcnt(test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    big = shared_tmp / "big.bin"
    with open(big, "wb") as f:
        for _ in range(256):
            f.write(b"\xa5" * (1 << 20))
        f.flush()
        os.fsync(f.fileno())
        # out of the page cache, or its pages stay charged to this test's cgroup and the reader never charges any
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    big.chmod(0o644)
    script = shared_tmp / "reader.py"
    script.write_text(READER)
    script.chmod(0o644)
    with cgroup("memory") as cg:
        cg.set_memory_limit(64 << 20)
        reader = cg.start(test_users.granted, ["/usr/bin/python3", script, big])
        assert await helpers.await_until(lambda: cg.limit_hits() > 100, 30)
        async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
            before = cg.limit_hits()
            data = ok_data(await client.call_tool("perf_cgroup_summary", {"pid": reader.pid}))
            after = cg.limit_hits()
        assert reader.poll() is None  # page cache is reclaimed, nobody is killed
    total, window, counter = hits(cg)
    mem = data["memory"]
    f = by_id(data)["cgroup.memory_limit_hits"]
    assert f["severity"] == "warning" and mem[window] > 0
    assert before <= mem[total] <= after
    assert f["evidence"][0]["counter"] == counter
    assert mem["limit_bytes"] == 64 << 20 and mem["usage_bytes"] <= 64 << 20
    assert "cgroup.memory_near_limit" not in by_id(data)  # page cache, not a working set
    cache, anon = ("total_cache", "total_rss") if cg.hierarchy("memory") == "v1" else ("file", "anon")
    assert mem["stat"][cache] > mem["stat"][anon]
    print(f"\n{cg.hierarchy('memory')} memory limit hits: {total} +{mem[window]} in {data['interval_s']} s "
          f"(now {mem[total]}), usage {mem['usage_bytes'] >> 20} MiB of 64 MiB, "
          f"working set {mem['working_set_bytes'] >> 20} MiB")


HOG = """
import sys
block = bytearray(128 << 20)  # zero-filled: every page touched
print(len(block))
"""


async def test_oom_kill_in_a_small_cgroup(test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    script = shared_tmp / "hog.py"
    script.write_text(HOG)
    script.chmod(0o644)
    with cgroup("memory") as cg:
        cg.set_memory_limit(32 << 20)
        cg.no_swap()
        hog = cg.start(test_users.granted, ["/usr/bin/python3", script])
        with trio.fail_after(30):
            while hog.poll() is None:
                await trio.sleep(0.1)
        # SIGKILL from the OOM killer
        assert hog.returncode == -9, (hog.returncode, cg.memory_usage(), cg.limit_hits(), cg.oom_kills(),
                                      {d: (d / "cgroup.procs").exists() for d in cg.dirs.values()})
        kills = cg.oom_kills()
        async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
            data = ok_data(await client.call_tool("perf_cgroup_summary", {"cgroup_path": cg.path}))
            gone = envelope(await client.call_tool("perf_cgroup_summary", {"pid": hog.pid}))
    mem = data["memory"]
    assert mem["oom_kill"] == kills >= 1
    f = by_id(data)["cgroup.oom_kills"]
    assert f["severity"] == "warning"  # before the window; "critical" is for kills during it
    files = "memory (v1)" if cg.hierarchy("memory") == "v1" else "memory"
    assert f["evidence"][0]["counter"] == f"{files} oom_kill" and f["evidence"][0]["value"] == mem["oom_kill"]
    assert mem[hits(cg)[0]] > 0
    assert cg.directories() <= {h["directory"] for h in data["hierarchies"]}
    assert gone["error"]["code"] == "PID_NOT_FOUND"
    print(f"\nOOM: oom_kill {mem['oom_kill']}, failcnt {mem['failcnt']}, finding {f['severity']}")
