"""The cgroup markers (cgroup_v1 / cgroup_v2 / cgroup_any, tests/conftest.py): which
tests run or skip, and with what reason, on a hybrid host like this one and on a
v2-only host (layouts from the captured mountinfo fixtures; no cgroup is touched).
And every test module here that makes real cgroups says which hierarchy it needs."""

from __future__ import annotations

import re
from pathlib import Path

import helpers
from cg_util import PROCFS_FIXTURES

HERE = Path(__file__).resolve().parent

V2_ONLY = helpers.CgroupHost(v1={}, v2_mount="/sys/fs/cgroup",
                             v2_controllers=frozenset({"cpuset", "cpu", "io", "memory", "hugetlb", "pids"}))


def test_layouts_read_from_mountinfo() -> None:
    hybrid = helpers.cgroup_host(str(PROCFS_FIXTURES / "self_mountinfo.txt"))
    assert hybrid.version == "hybrid" and hybrid.v2_mount == "/sys/fs/cgroup/unified"
    assert hybrid.v1["cpu"] == "/sys/fs/cgroup/cpu" and hybrid.v1["memory"] == "/sys/fs/cgroup/memory"
    assert hybrid.hierarchy_of("cpu") == "v1"
    v2 = helpers.cgroup_host(str(PROCFS_FIXTURES / "self_mountinfo.v2_only.txt"))
    assert v2.version == "v2" and v2.v1 == {} and v2.v2_mount == "/sys/fs/cgroup"


def test_a_v2_only_host_runs_the_v2_and_either_tests_and_names_why_v1_ones_skip() -> None:
    assert helpers.cgroup_skip_reason("cgroup_any", ("cpu", "memory"), V2_ONLY) is None
    assert V2_ONLY.hierarchy_of("cpu") == "v2" and V2_ONLY.hierarchy_of("memory") == "v2"
    assert helpers.cgroup_skip_reason("cgroup_v2", (), V2_ONLY) is None
    assert helpers.cgroup_skip_reason("cgroup_v2", ("cpu", "memory"), V2_ONLY) is None
    reason = helpers.cgroup_skip_reason("cgroup_v1", ("cpu",), V2_ONLY)
    assert reason is not None and reason.startswith("needs cgroup v1 (cpu mounted on v1)")
    assert "this host (v2)" in reason and "offering cpu, cpuset, hugetlb, io, memory, pids" in reason


def test_a_hybrid_host_runs_v1_and_core_v2_tests_and_names_why_v2_controller_ones_skip() -> None:
    hybrid = helpers.CgroupHost(v1={"cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory"},
                                v2_mount="/sys/fs/cgroup/unified", v2_controllers=frozenset({"hugetlb"}))
    assert helpers.cgroup_skip_reason("cgroup_v1", ("cpu", "memory"), hybrid) is None
    assert helpers.cgroup_skip_reason("cgroup_any", ("cpu", "memory"), hybrid) is None
    assert helpers.cgroup_skip_reason("cgroup_v2", (), hybrid) is None  # the core files are there
    reason = helpers.cgroup_skip_reason("cgroup_v2", ("cpu",), hybrid)
    assert reason is not None and "needs cgroup v2 (cpu as v2 controllers)" in reason and "offering hugetlb" in reason
    no_cgroups = helpers.CgroupHost(v1={}, v2_mount=None, v2_controllers=frozenset())
    assert "in v1 or v2" in (helpers.cgroup_skip_reason("cgroup_any", ("memory",), no_cgroups) or "")
    assert "no cgroup2 mount" in (helpers.cgroup_skip_reason("cgroup_v2", (), no_cgroups) or "")


def test_every_module_making_cgroups_says_which_hierarchy_it_needs() -> None:
    makers = [p for p in sorted(HERE.glob("test_*.py"))
              if re.search(r"^from cg_util import [^\n]*\b(cgroup|v1_cgroup)\b", p.read_text(), re.M)]
    assert makers, "no module makes cgroups?"
    for path in makers:
        assert re.search(r"pytest\.mark\.cgroup_(v1|v2|any)\(", path.read_text()), path.name
