"""perf_cgroup_summary without arguments: the root's child cgroups ranked by CPU,
memory and throttling, through the real MCP client with the frontend as
perfmcp-granted (cgroup files are world-readable; no broker needed).

Known answers, in cgroups this test makes (in the hierarchy this host has each
controller in: v1 on the project's hybrid machines, v2 on a v2-only host):
- a cpu cgroup with a CFS quota of 0.05 CPU per 100 ms period and two busy loops:
  throttled in (nearly) every period, ~1.8 s throttled per second summed over
  the two CPUs, more than any single-threaded cgroup can be: top by throttling;
- a memory cgroup without a limit whose child cgroup's process holds N bytes, N
  chosen above every other child's usage (read by the test first): top by memory,
  its usage within [N, N + 48 MiB] (the interpreter and page tables), its limit
  "none"; and the ranking of that cgroup's children (cgroup_path, children=true)
  names the child with the same figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import trio

import helpers
from helpers import ok_data
from cg_util import cgroup, sub

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.cgroup_any("cpu", "memory")]

MiB = 1 << 20

HOLDER = """
import sys, time
n = int(sys.argv[1])
block = bytearray(n)
for i in range(0, n, 4096):  # every page written, so every page is charged
    block[i] = 1
print("held", flush=True)
time.sleep(600)
"""


def children_memory(host: helpers.CgroupHost) -> dict[str, int]:
    """The memory usage of each child of the memory hierarchy's root, by path."""
    if "memory" in host.v1:
        root, name = Path(host.v1["memory"]), "memory.usage_in_bytes"
    else:
        assert host.v2_mount is not None
        root, name = Path(host.v2_mount), "memory.current"
    out: dict[str, int] = {}
    for d in root.iterdir():
        try:
            out["/" + d.name] = int((d / name).read_text())
        except (OSError, ValueError):
            continue
    return out


def row_of(rows: list[dict], path: str) -> dict:
    return next(r for r in rows if r["cgroup_path"] == path)


async def test_top_children_name_the_throttled_and_the_memory_holding_cgroups(
    test_users: helpers.TestUsers, shared_tmp: Path, busy_exe: Path
) -> None:
    host = helpers.cgroup_host()
    # more than any other child holds now, with a margin: the machine's own cgroups (which hold
    # other test runs' workloads) were seen to grow by 2.5 GiB within seconds
    held = max(256 * MiB, max(children_memory(host).values(), default=0) + 1024 * MiB)
    assert held < 6 << 30, f"another cgroup holds {held >> 20} MiB: too much to outdo on this host"
    script = shared_tmp / "holder.py"
    script.write_text(HOLDER)
    script.chmod(0o644)
    with cgroup("cpu") as cpu_cg, cgroup("memory") as mem_cg, sub(mem_cg, "leaf") as leaf:
        cpu_cg.set_cpu_quota(5000, 100000)
        for _ in range(2):
            cpu_cg.start(test_users.granted, [busy_exe, "120"])
        holder = leaf.start(test_users.granted, ["/usr/bin/python3", script, str(held)], stdout=-1)
        assert holder.stdout is not None
        with trio.fail_after(60):
            line = await trio.to_thread.run_sync(holder.stdout.readline)
        assert line == b"held\n", line
        assert await helpers.await_until(lambda: cpu_cg.throttling()[0] >= 5, 30)
        async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
            others_before = children_memory(host)
            mem_before, (thr_before, thr_s_before) = mem_cg.memory_usage(), cpu_cg.throttling()
            result = await client.call_tool("perf_cgroup_summary", {"top_n": 3})
            mem_after, (thr_after, thr_s_after) = mem_cg.memory_usage(), cpu_cg.throttling()
            others_after = children_memory(host)
            data = ok_data(result)
            tool = next(t for t in (await client.list_tools()).tools if t.name == "perf_cgroup_summary")
            jsonschema.validate(result.structured_content, tool.output_schema)
            one = ok_data(await client.call_tool("perf_cgroup_summary", {"top_n": 1}))
            kids = ok_data(await client.call_tool("perf_cgroup_summary", {"cgroup_path": mem_cg.path,
                                                                          "children": True}))
    print(f"\n{host.describe()}; cpu cgroup on {cpu_cg.hierarchy('cpu')}, memory cgroup on "
          f"{mem_cg.hierarchy('memory')}\nsummary: {data['summary']}")
    top = data["top"]
    assert data["summary"] == result.content[0].text.splitlines()[0] and "\n" not in data["summary"]
    assert len(top["by_cpu"]) <= 3 and len(top["by_memory"]) <= 3 and len(top["by_throttling"]) <= 3
    assert len(one["top"]["by_memory"]) == 1

    # throttling: our cgroup first, its window figures inside the test's own readings
    thr = top["by_throttling"][0]
    assert thr["cgroup_path"] == cpu_cg.path, top["by_throttling"]
    assert thr["cpu_limit"] == "0.05 CPUs" and thr["cpu_limit_cores"] == 0.05
    assert thr["throttled_pct"] >= 25, thr  # quota used up in most periods (all, on an idle machine)
    assert 0.1 < thr["throttled_s"] <= thr_s_after - thr_s_before + 1e-6, (thr, thr_s_before, thr_s_after)
    assert thr_s_before - 1e-6 <= thr["throttled_s_total"] <= thr_s_after + 1e-6  # rounded to the microsecond
    assert 0.005 <= row_of(top["by_cpu"], cpu_cg.path)["cpu_cores"] <= 0.08  # the quota caps it at 0.05
    f = next(f for f in data["findings"] if f["id"] == "cgroup.cpu_throttling" and cpu_cg.path in f["title"])
    assert f["severity"] == "critical"
    assert f["next"] == {"tool": "perf_cgroup_summary", "arguments": {"cgroup_path": cpu_cg.path}}

    # memory: our cgroup first, within tolerance of what its process holds; no limit said as "none"
    # first, unless another cgroup outgrew ours during the call (by the test's own readings of it
    # before and after): only such a cgroup may rank above ours
    ranked = [r["cgroup_path"] for r in top["by_memory"]]
    assert mem_cg.path in ranked, top["by_memory"]
    mem = top["by_memory"][ranked.index(mem_cg.path)]
    outgrew = {p for p in others_before if p != mem_cg.path
               and max(others_before[p], others_after.get(p, 0)) > mem["memory_bytes"]}
    assert set(ranked[:ranked.index(mem_cg.path)]) <= outgrew, (top["by_memory"], others_before, others_after)
    if outgrew:
        print(f"NOTE: {sorted(outgrew)} outgrew the test's cgroup during the call")
    assert held <= mem["memory_bytes"] <= held + 48 * MiB, (mem["memory_bytes"], held)
    assert mem_before - 8 * MiB <= mem["memory_bytes"] <= mem_after + 8 * MiB
    assert mem["memory_limit"] == "none" and "memory_limit_bytes" not in mem
    assert kids["target"] == f"children of {mem_cg.path}" and kids["top"]["cgroups_seen"] == 1
    assert [r["cgroup_path"] for r in kids["top"]["by_memory"]] == [leaf.path]
    assert held <= kids["top"]["by_memory"][0]["memory_bytes"] <= held + 48 * MiB
    raw = json.dumps(data)
    assert "9223372036854771712" not in raw and '"max"' not in raw
    print(f"throttled: {thr['throttled_pct']}% of periods, {thr['throttled_s']} s in {top['window_s']} s "
          f"(test's bracket {thr_s_after - thr_s_before:.3f} s); memory {mem['memory_bytes'] >> 20} MiB "
          f"for {held >> 20} MiB held")

    # the next call the finding names works and zooms in on the cgroup
    async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
        with cgroup("cpu") as again:
            again.set_cpu_quota(5000, 100000)
            busy = again.start(test_users.granted, [busy_exe, "120"])
            assert await helpers.await_until(lambda: again.throttling()[0] >= 3, 30)
            zoom = ok_data(await client.call_tool("perf_cgroup_summary", {"cgroup_path": again.path}))
    g = next(f for f in zoom["findings"] if f["id"] == "cgroup.cpu_throttling")
    assert g["next"] == {"tool": "perf_cpu_profile", "arguments": {"pid": busy.pid, "duration_s": 5}}
    assert zoom["processes"] == 1 and zoom["cpu"]["quota"] == "0.05 CPUs"
