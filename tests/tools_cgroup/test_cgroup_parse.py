"""perf_cgroup_summary's pure layers and its collector on a FAKE v2 tree.

v1: the procfs fixtures captured from a real v1 cgroup on this machine.
v2 controller files (cpu.max, memory.*, io.stat, pids.*): the project's
hybrid machines cannot have them (cpu, memory, io and pids are bound to v1),
so cg_util.FakeV2 writes a tree in the kernel's documented formats and the
real collector reads it through its test-only arguments (mountinfo path, proc
root). That is a fake, and these tests say so; they need no cgroup mount at
all. The v2 core files (cgroup.procs, cpu.stat usage, PSI) are read for real
in test_cgroup_v2_core.py, and on a v2-only host test_cgroup_top.py makes its
cgroups with the v2 controllers for real.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from cg_util import PROCFS_FIXTURES, V2_CGROUP, FakeV2
from perf_mcp.cgroup import analysis
from perf_mcp.cgroup.collect import locate, read_mounts, read_proc_cgroup, take_reading
from perf_mcp.cgroup.locate import BadCgroupPath, hierarchies_for_path, hierarchies_for_process, normalise_cgroup_path
from perf_mcp.cgroup.parse import parse_cpu_max, parse_reading, parse_v1_quota
from perf_mcp.procfs import ParseError, cgroup_mounts, parse_mountinfo, parse_proc_cgroup
from perf_mcp.use.thresholds import default_thresholds

THRESHOLDS = default_thresholds()


def fx(name: str) -> bytes:
    return (PROCFS_FIXTURES / name).read_bytes()


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(("given", "normal"), [
    ("/", "/"), ("", "/"), ("system.slice/cron.service", "/system.slice/cron.service"),
    ("//a///b/", "/a/b"), ("/a/./b", "/a/b"), ("/a b/c:d", "/a b/c:d"),
])
def test_normalise_cgroup_path(given: str, normal: str) -> None:
    assert normalise_cgroup_path(given) == normal


@pytest.mark.parametrize("bad", ["..", "/..", "../etc", "/a/../../etc", "a/..", "a\x00b", "a\nb", "x\x7f",
                                 "/" + "a" * 5000])
def test_bad_cgroup_paths_are_refused(bad: str) -> None:
    with pytest.raises(BadCgroupPath):
        normalise_cgroup_path(bad)


def test_hierarchies_of_this_machines_layout() -> None:
    """The hybrid layout captured here: v1 controllers one per mount, plus an empty v2 mount."""
    mounts = cgroup_mounts(parse_mountinfo(fx("self_mountinfo.txt")))
    proc = parse_proc_cgroup(fx("pid_cgroup.v1_in_fixture_cgroup.txt"))
    hs, warnings = hierarchies_for_process(proc, mounts)
    assert warnings == []
    by = {h.controllers: h for h in hs}
    assert by[("cpu",)].directory == "/sys/fs/cgroup/cpu/perfmcp-fixture"
    assert by[("memory",)].directory == "/sys/fs/cgroup/memory/perfmcp-fixture"
    assert by[()].version == "v2" and by[()].directory == "/sys/fs/cgroup/unified"
    paths = hierarchies_for_path("/perfmcp-fixture", mounts)
    assert {h.directory for h in paths} >= {"/sys/fs/cgroup/cpu/perfmcp-fixture",
                                           "/sys/fs/cgroup/unified/perfmcp-fixture"}


# ---------------------------------------------------------------- parsing


def test_v1_reading_from_captured_files() -> None:
    reading = parse_reading(
        {"cpu": {"cpu.stat": fx("cgv1_cpu.stat.throttled.txt"), "cpu.cfs_quota_us": b"20000\n",
                 "cpu.cfs_period_us": b"100000\n"},
         "cpuacct": {"cpuacct.usage": fx("cgv1_cpuacct.usage.txt")},
         "memory": {"memory.usage_in_bytes": fx("cgv1_memory.usage_in_bytes.txt"),
                    "memory.limit_in_bytes": fx("cgv1_memory.limit_in_bytes.txt"),
                    "memory.failcnt": fx("cgv1_memory.failcnt.txt"),
                    "memory.oom_control": fx("cgv1_memory.oom_control.txt"),
                    "memory.stat": fx("cgv1_memory.stat.txt")},
         "pids": {"pids.current": fx("cgv1_pids.current.txt"), "pids.max": fx("cgv1_pids.max.txt")},
         "blkio": {"blkio.throttle.io_service_bytes": fx("cgv1_blkio.throttle.io_service_bytes.txt"),
                   "blkio.throttle.io_serviced": fx("cgv1_blkio.throttle.io_serviced.txt")}},
        None)
    assert reading.warnings == ()
    cpu = reading.cpu
    assert cpu is not None and (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_ns) == (54, 53, 4135003463)
    assert (cpu.quota_us, cpu.period_us, cpu.bandwidth_source) == (20000, 100000, "v1")
    mem = reading.memory
    assert mem is not None and mem.oom_kill == 12 and mem.limit_bytes == 64 * 1024 * 1024
    assert mem.failcnt is not None and mem.failcnt > 0 and "total_rss" in mem.stat
    assert reading.pids is not None and reading.pids.limit == 50
    assert reading.io is not None and reading.io.source == "blkio.throttle.io_service_bytes"
    assert any(d.write_bytes for d in reading.io.devices.values())


def test_small_formats_and_garbage() -> None:
    assert parse_cpu_max(b"max 100000\n") == (None, 100000)
    assert parse_cpu_max(b"20000 100000\n") == (20000, 100000)
    assert parse_v1_quota(b"-1\n") is None and parse_v1_quota(b"50000\n") == 50000
    for bad in (b"20000\n", b"max 100000", b"a b\n", b""):
        with pytest.raises(ParseError):
            parse_cpu_max(bad)
    reading = parse_reading({"cpu": {"cpu.cfs_quota_us": b"garbage\n", "cpu.stat": b"nr_periods x\n"},
                             "memory": {"memory.usage_in_bytes": b"12"}}, None, {"cpu": "/cg/cpu/x"})
    assert reading.cpu is not None and reading.cpu.quota_us is None and reading.cpu.nr_periods is None
    assert reading.memory is not None and reading.memory.usage_bytes is None
    assert any(w.startswith("/cg/cpu/x/cpu.cfs_quota_us") for w in reading.warnings), reading.warnings
    assert len(reading.warnings) == 3


# ---------------------------------------------------------------- FAKE v2 tree, real collector


def test_fake_v2_cgroup_read_by_pid_with_window_figures_and_findings(tmp_path: Path) -> None:
    fake = FakeV2(tmp_path)  # FAKE: a v2 hierarchy with controllers cannot exist on this machine
    mounts, _ = read_mounts(str(fake.mountinfo))
    assert mounts.version == "v2"
    proc = read_proc_cgroup(fake.pid, proc_root=str(fake.proc))
    hs, warnings = hierarchies_for_process(proc, mounts)
    assert warnings == [] and [h.cgroup_path for h in hs] == [V2_CGROUP]
    located = locate(hs)
    first = take_reading(located)
    # one second later (as the tool's window): 10 periods, 5 throttled, limit hit 3 times, one more OOM kill
    fake.set_counters(usage_usec=5_200_000, nr_periods=1210, nr_throttled=345, throttled_usec=8_623_456,
                      current=520_000_000, events_max=1546, oom=13, oom_kill=4, pids=97, pids_events_max=2,
                      rbytes=90_430_464 + 1_048_576, wbytes=299_008_000)
    fake.files["memory.pressure"] = ("some avg10=30.00 avg60=10.00 avg300=2.00 total=955779\n"
                                     "full avg10=20.00 avg60=8.00 avg300=1.00 total=849442\n")
    fake.write()
    second = take_reading(located)
    assert second.reading.v2_controllers == ("cpu", "io", "memory", "pids")
    state = analysis.analyse(first.reading, second.reading, 1.0, THRESHOLDS, v1_files=False, v2_path=V2_CGROUP)
    assert state.warnings == []
    cpu = state.cpu
    assert cpu is not None and (cpu.window_periods, cpu.window_throttled, cpu.window_throttled_pct) == (10, 5, 50.0)
    assert cpu.usage_cores == pytest.approx(0.2) and cpu.quota_cores == pytest.approx(0.2)
    assert cpu.window_throttled_s == pytest.approx(0.5)
    mem = state.memory
    assert mem is not None and mem.events_max_in_window == 3 and mem.oom_kill_in_window == 1
    assert mem.working_set_bytes == 520_000_000 - 41_943_040  # inactive_file from memory.stat
    assert state.io is not None and state.io.devices[0].read_bytes_s == pytest.approx(1_048_576)
    assert state.psi["memory"].some_window_pct == pytest.approx(90.0)
    got = {f.id: f.severity for f in state.findings}
    assert got == {
        "cgroup.cpu_throttling": "critical",  # 50% > 25%
        "cgroup.memory_near_limit": "warning",  # (520 MB - 42 MB inactive file) / 512 MiB = 89%: > 85, < 95
        "cgroup.memory_limit_hits": "warning",
        "cgroup.oom_kills": "critical",  # grew in the window
        "cgroup.pids_near_limit": "critical",  # 97 of 100
        "cgroup.pids_limit_hit": "warning",
        "cgroup.psi.memory.some": "critical",  # 30 > 25 in a non-root cgroup
        "cgroup.psi.memory.full": "critical",  # 20 > 15
    }
    throttle = next(f for f in state.findings if f.id == "cgroup.cpu_throttling")
    assert {e.counter for e in throttle.evidence} >= {"cpu.stat nr_throttled", "cpu.stat nr_periods"}


def test_fake_v2_root_psi_is_the_whole_system_and_only_info(tmp_path: Path) -> None:
    fake = FakeV2(tmp_path)  # FAKE v2 tree
    (fake.mount / "cpu.pressure").write_text("some avg10=80.00 avg60=50.00 avg300=20.00 total=1\n"
                                             "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    mounts, _ = read_mounts(str(fake.mountinfo))
    located = locate(hierarchies_for_path("/", mounts))
    r = take_reading(located).reading
    state = analysis.analyse(r, r, 1.0, THRESHOLDS, v1_files=False, v2_path="/")
    psi = [f for f in state.findings if f.id.startswith("cgroup.psi.")]
    assert [(f.id, f.severity) for f in psi] == [("cgroup.psi.cpu.some", "info")]
    assert "whole system" in psi[0].title


def test_symlink_out_of_the_mount_is_not_followed(tmp_path: Path) -> None:
    fake = FakeV2(tmp_path)  # FAKE v2 tree; real cgroupfs has no symlinks, a bind mount or a fake could
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "memory.current").write_text("1\n")
    os.symlink(outside, fake.mount / "evil")
    mounts, _ = read_mounts(str(fake.mountinfo))
    located = locate(hierarchies_for_path("/evil", mounts))
    assert located.hierarchies == [] and [h.directory for h in located.missing] == [str(fake.mount / "evil")]
    inside = locate(hierarchies_for_path(V2_CGROUP, mounts))
    assert [h.directory for h in inside.hierarchies] == [str(fake.cgroup)]


def test_cgroup_rows_live_in_the_one_thresholds_table() -> None:
    assert THRESHOLDS["cgroup.cpu_throttled_pct"].critical == 25.0
    assert THRESHOLDS["cgroup.memory_working_set_pct"].warning == 85.0
    assert THRESHOLDS["process.fd_pct_of_soft_limit"].critical == 95.0


# ---------------------------------------------------------------- the root's children (pure)


def _child(usage_ns: int, nr_periods: int, nr_throttled: int, throttled_ns: int, quota: bytes,
           memory: int, limit: bytes) -> dict[str, dict[str, bytes]]:
    return {"cpu": {"cpu.cfs_quota_us": quota, "cpu.cfs_period_us": b"100000\n",
                    "cpu.stat": f"nr_periods {nr_periods}\nnr_throttled {nr_throttled}\n"
                                f"throttled_time {throttled_ns}\n".encode()},
            "cpuacct": {"cpuacct.usage": f"{usage_ns}\n".encode()},
            "memory": {"memory.usage_in_bytes": f"{memory}\n".encode(), "memory.limit_in_bytes": limit}}


NO_LIMIT = b"9223372036854771712\n"  # v1's no-limit value with 4 KiB pages


def test_top_children_rank_and_say_none_for_no_limit() -> None:
    from perf_mcp.cgroup import children

    first = {
        "/busy": parse_reading(_child(0, 0, 0, 0, b"-1\n", 10 << 20, NO_LIMIT), None),
        "/throttled": parse_reading(_child(0, 100, 50, 1_000_000_000, b"20000\n", 1 << 20, NO_LIMIT), None),
        "/big": parse_reading(_child(0, 0, 0, 0, b"-1\n", 900 << 20, b"1073741824\n"), None),
    }
    second = {  # one second later
        "/busy": parse_reading(_child(1_500_000_000, 0, 0, 0, b"-1\n", 10 << 20, NO_LIMIT), None),
        "/throttled": parse_reading(_child(200_000_000, 110, 60, 1_800_000_000, b"20000\n", 1 << 20, NO_LIMIT),
                                    None),
        "/big": parse_reading(_child(10_000_000, 0, 0, 0, b"-1\n", 1000 << 20, b"1073741824\n"), None),
    }
    warnings: list[str] = []
    top, findings = children.top_children(first, second, 1.0, THRESHOLDS, 2, warnings)
    assert warnings == [] and top.cgroups_seen == 3
    assert [r.cgroup_path for r in top.by_cpu] == ["/busy", "/throttled"]  # top_n 2 of 3
    assert top.by_cpu[0].cpu_cores == 1.5 and top.by_cpu[0].cpu_limit == "none"
    assert top.by_cpu[0].cpu_limit_cores is None
    assert [r.cgroup_path for r in top.by_memory] == ["/big", "/busy"]
    big = top.by_memory[0]
    assert (big.memory_bytes, big.memory_limit, big.memory_limit_bytes) == (1000 << 20, "1024.0 MiB", 1 << 30)
    assert top.by_memory[1].memory_limit == "none" and top.by_memory[1].memory_limit_bytes is None
    assert [r.cgroup_path for r in top.by_throttling] == ["/throttled"]  # the others never were
    t = top.by_throttling[0]
    assert (t.throttled_pct, t.throttled_s, t.throttled_s_total, t.cpu_limit) == (100.0, 0.8, 1.8, "0.2 CPUs")
    encoded = msgspec.json.encode(top)
    assert b"9223372036854771712" not in encoded and b'"max"' not in encoded
    # findings: the throttled cgroup (critical) and the one whose working set is 98% of its limit
    got = {(f.id, f.severity, f.next.arguments["cgroup_path"] if f.next else None) for f in findings}
    assert got == {("cgroup.cpu_throttling", "critical", "/throttled"),
                   ("cgroup.memory_near_limit", "critical", "/big")}
    assert all(f.title.startswith(f.next.arguments["cgroup_path"] + ": ") for f in findings if f.next)
    assert children.describe(top).startswith("most CPU /busy 1.5 CPUs (limit none); most memory /big")


def test_top_children_count_limit_hits_over_the_window() -> None:
    """A v1 memory cgroup at its limit whose failcnt grew by 25,000 between the two readings (a
    process re-reading a file larger than the limit: reclaim at every charge) is a limit-hits finding
    of the listing, though its working set (usage less the inactive page cache) is well below the
    near-limit bar; one whose failcnt did not grow is not."""
    from perf_mcp.cgroup import children

    def at_limit(failcnt: int) -> dict[str, dict[str, bytes]]:
        files = _child(0, 0, 0, 0, b"-1\n", 200 << 20, b"209715200\n")
        files["memory"] |= {"memory.failcnt": f"{failcnt}\n".encode(),
                            "memory.stat": f"total_inactive_file {60 << 20}\n".encode()}
        return files

    first = {"/thrash": parse_reading(at_limit(300_000), None), "/still": parse_reading(at_limit(7), None)}
    second = {"/thrash": parse_reading(at_limit(325_000), None), "/still": parse_reading(at_limit(7), None)}
    top, findings = children.top_children(first, second, 1.0, THRESHOLDS, 5, [])
    assert [r.memory_pct_of_limit for r in top.by_memory] == [70.0, 70.0]  # below the 85% bar
    got = [(f.id, f.severity, f.next.arguments if f.next else None) for f in findings]
    assert got == [("cgroup.memory_limit_hits", "warning", {"cgroup_path": "/thrash"})]
    assert findings[0].title == "/thrash: Memory limit hit 25000 times in 1.0 s"


def test_every_next_call_is_valid_for_the_tool_it_names(tmp_path: Path) -> None:
    """The next calls of perf_cgroup_summary's findings (listing and one cgroup)
    validate against the input schema of the served tool they name."""
    import jsonschema

    from perf_mcp import contract
    from perf_mcp.cgroup import children
    from perf_mcp.registry import discover

    tools = discover().tools
    fake = FakeV2(tmp_path)  # FAKE v2 tree: throttling, pids near the limit
    mounts, _ = read_mounts(str(fake.mountinfo))
    located = locate(hierarchies_for_path(V2_CGROUP, mounts))
    a = take_reading(located).reading
    fake.set_counters(usage_usec=5_200_000, nr_periods=1210, nr_throttled=345, throttled_usec=8_623_456,
                      current=268_435_456, events_max=1543, oom=12, oom_kill=3, pids=97, pids_events_max=2,
                      rbytes=90_430_464, wbytes=299_008_000)
    b = take_reading(located).reading
    one = analysis.analyse(a, b, 1.0, THRESHOLDS, v1_files=False, v2_path=V2_CGROUP, busiest_pid=4242).findings
    _, listed = children.top_children({V2_CGROUP: a}, {V2_CGROUP: b}, 1.0, THRESHOLDS, 5, [])
    nexts = [f.next for f in one + listed if f.next is not None]
    assert {n.tool for n in nexts} == {"perf_cpu_profile", "perf_exec_trace", "perf_cgroup_summary"}
    for n in nexts:
        assert n.tool in tools, n
        jsonschema.validate(n.arguments, contract.input_schema(tools[n.tool].params))
