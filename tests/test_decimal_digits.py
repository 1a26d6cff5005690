"""Digits that are not ASCII: str.isdigit() accepts '²' but int() refuses it, so a
parser that guards int() with isdigit() crashes on it. Each parser that reads a
number from text guards with isdecimal(); these inputs put '²' exactly where each
guard stands, so undoing any of the fixes makes its case raise ValueError.

Two more guards sort and filter names of /proc entries (the broker's fd table
reader and the socket-owner walk in net/collect.py); the kernel only ever names
those in ASCII digits, so they are not reachable from text and are not cases here.
"""

from __future__ import annotations

import pytest

from perf_mcp.fds.parse import parse_fd_lines
from perf_mcp.procfs import cgroup, cpu
from perf_mcp.profile import perf_script
from perf_mcp.sysinfo import parse as sysinfo

SUP2 = "\u00b2"
assert SUP2.isdigit() and not SUP2.isdecimal()


def test_fd_lines_skip_a_non_decimal_fd_number() -> None:
    warnings: list[str] = []
    assert parse_fd_lines(f"{SUP2}\tpipe:[2]\n3\tsocket:[1]\n", warnings) == {3: "socket:[1]"}
    assert len(warnings) == 1 and SUP2 in warnings[0]


def test_cgroup_v2_io_stat_and_proc_cgroup() -> None:
    io = cgroup.parse_cgroup_v2_io_stat(f"8:0 rbytes={SUP2} wbytes=10\n")
    dev = io.devices["8:0"]
    assert dev.rbytes is None and dev.wbytes == 10 and dev.values == {"wbytes": 10}
    pc = cgroup.parse_proc_cgroup(f"{SUP2}::/x\n0::/y\n")
    assert [e.hierarchy_id for e in pc.entries] == [0]


def test_cpuinfo_optional_integer() -> None:
    info = cpu.parse_cpuinfo(f"processor\t: {SUP2}\nmodel name\t: x\nphysical id\t: {SUP2}\n\n")
    assert info is not None


@pytest.mark.parametrize(
    "line",
    [
        f"busy 42/42 {SUP2}",  # period
        f"busy 42/{SUP2} 10",  # tid
        f"busy {SUP2}",  # pid of the 'comm pid' header (-F comm,pid)
    ],
)
def test_perf_script_header_rejects_non_decimal_fields(line: str) -> None:
    assert perf_script.parse_header(line) is None


def test_folded_counts() -> None:
    assert perf_script.parse_folded(f"a;b 3\na;c {SUP2}\n") == {"a;b": 3}


def test_sysinfo_cpu_list_and_meminfo() -> None:
    assert sysinfo.parse_cpu_list(f"0-1,{SUP2},3-{SUP2},5") == [0, 1, 5]
    assert "MemTotal" not in sysinfo.parse_meminfo(f"MemTotal: {SUP2} kB\nMemFree: 5 kB\n")
