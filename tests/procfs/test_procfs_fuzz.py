"""Every procfs parser on random, truncated and mutated input: the only
outcomes allowed are a ParseError or a result Struct (with warnings for what
was skipped) that encodes to JSON. Anything else (IndexError, ValueError,
KeyError, a NaN in the output) fails."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perf_mcp.procfs import cgroup, cpu, disk, memory, net, pressure, process
from perf_mcp.procfs.errors import ParseError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "procfs"

# parser -> the fixtures it is meant for (used as seeds for mutation)
PARSERS: dict[str, tuple[Callable[[Any], Any], tuple[str, ...]]] = {
    "stat": (cpu.parse_stat, ("proc_stat.txt", "proc_stat.8fields_no_guest.txt")),
    "loadavg": (cpu.parse_loadavg, ("proc_loadavg.txt",)),
    "cpuinfo": (cpu.parse_cpuinfo, ("proc_cpuinfo.txt",)),
    "meminfo": (memory.parse_meminfo, ("proc_meminfo.txt",)),
    "vmstat": (memory.parse_vmstat, ("proc_vmstat.txt",)),
    "diskstats": (
        disk.parse_diskstats,
        ("proc_diskstats.txt", "proc_diskstats.14fields.txt", "proc_diskstats.18fields.txt"),
    ),
    "net_dev": (net.parse_net_dev, ("net_dev.txt",)),
    "snmp": (net.parse_net_snmp, ("net_snmp.txt",)),
    "netstat": (net.parse_net_netstat, ("net_netstat.txt",)),
    "softnet": (
        net.parse_softnet_stat,
        ("net_softnet_stat.txt", "net_softnet_stat.11cols.txt", "net_softnet_stat.13cols.offline_cpu.txt"),
    ),
    "pressure": (
        pressure.parse_pressure,
        ("pressure_cpu.txt", "pressure_cpu.no_full.txt", "pressure_io.txt"),
    ),
    "pid_stat": (process.parse_pid_stat, ("pid_stat.comm_with_parens.txt", "pid_stat.kthread.txt")),
    "pid_status": (process.parse_pid_status, ("pid_status.comm_with_parens.txt", "pid_status.kthread.txt")),
    "pid_limits": (process.parse_pid_limits, ("pid_limits.txt",)),
    "pid_io": (process.parse_pid_io, ("pid_io.txt",)),
    "proc_cgroup": (cgroup.parse_proc_cgroup, ("pid_cgroup.v1_hybrid.txt", "pid_cgroup.v2_only.txt")),
    "mountinfo": (cgroup.parse_mountinfo, ("self_mountinfo.txt", "self_mountinfo.v2_only.txt")),
    "cg_int": (cgroup.parse_cgroup_int, ("cgv1_cpuacct.usage.txt", "cgv2_memory.current.txt")),
    "cg_limit": (
        cgroup.parse_cgroup_limit,
        ("cgv2_memory.max.unlimited.txt", "cgv1_memory.limit_in_bytes.txt"),
    ),
    "cg_v1_cpu": (cgroup.parse_cgroup_v1_cpu_stat, ("cgv1_cpu.stat.throttled.txt",)),
    "cg_v2_cpu": (cgroup.parse_cgroup_v2_cpu_stat, ("cgv2_cpu.stat.with_controller.txt",)),
    "cg_mem_stat": (cgroup.parse_cgroup_memory_stat, ("cgv1_memory.stat.txt", "cgv2_memory.stat.txt")),
    "cg_oom": (cgroup.parse_cgroup_v1_oom_control, ("cgv1_memory.oom_control.txt",)),
    "cg_events": (cgroup.parse_cgroup_v2_memory_events, ("cgv2_memory.events.txt",)),
    "cg_io": (cgroup.parse_cgroup_v2_io_stat, ("cgv2_io.stat.txt",)),
    "cg_blkio": (cgroup.parse_cgroup_v1_blkio, ("cgv1_blkio.throttle.io_service_bytes.txt",)),
}

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Rejected:
    """What run_parser returns for a ParseError."""


REJECTED = Rejected()


def assert_finite(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value), "a parser let a NaN or an infinity through"
    elif isinstance(value, dict):
        for item in value.values():
            assert_finite(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            assert_finite(item)


def run_parser(parser: Callable[[Any], Any], data: bytes | str) -> Any:
    """Run one parser; return the result, or REJECTED for a ParseError. Any
    other exception propagates and fails the test."""
    try:
        result = parser(data)
    except ParseError:
        return REJECTED
    if parser in (cgroup.parse_cgroup_int, cgroup.parse_cgroup_limit):
        assert result is None or isinstance(result, int)
        return result
    assert isinstance(result, msgspec.Struct)
    # The result must round-trip through a tool answer with its types intact
    # and hold no NaN/inf (which JSON cannot carry).
    builtins = msgspec.to_builtins(result)
    assert_finite(builtins)
    msgspec.json.decode(msgspec.json.encode(result), type=type(result))
    return result


def seeds() -> list[tuple[str, str]]:
    return [(name, seed) for name, (_, files) in PARSERS.items() for seed in files]


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.one_of(st.binary(max_size=600), st.text(max_size=600)))
def test_random_input(name: str, data: bytes | str) -> None:
    run_parser(PARSERS[name][0], data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(
    lines=st.lists(
        st.lists(
            st.one_of(
                st.integers(min_value=-(2**70), max_value=2**70).map(str),
                st.sampled_from(
                    ["cpu", "cpu0", "some", "full", "avg10=1.5", "total=", "max", "(", ")", ":", "-"]
                ),
                st.text(alphabet="abc:=()/-_ \t0123456789", max_size=6),
            ),
            max_size=20,
        ).map(" ".join),
        max_size=8,
    ).map(lambda ls: "\n".join(ls) + "\n")
)
def test_procfs_like_lines(name: str, lines: str) -> None:
    run_parser(PARSERS[name][0], lines)


@pytest.mark.parametrize(("name", "seed"), seeds())
@FUZZ
@given(cut=st.floats(min_value=0.0, max_value=1.0))
def test_truncated_fixture(name: str, seed: str, cut: float) -> None:
    data = (FIXTURES / seed).read_bytes()
    truncated = data[: int(len(data) * cut)]
    result = run_parser(PARSERS[name][0], truncated)
    if truncated and not truncated.endswith(b"\n") and result is not REJECTED:
        # A cut inside a line must be reported, never parsed into a wrong number:
        # single-record parsers reject it, line-oriented ones warn.
        assert isinstance(result, msgspec.Struct) and "warnings" in result.__struct_fields__
        assert any("truncated" in w for w in getattr(result, "warnings"))  # noqa: B009


@pytest.mark.parametrize(("name", "seed"), seeds())
@FUZZ
@given(
    position=st.floats(min_value=0.0, max_value=1.0),
    replacement=st.sampled_from(
        ["", "x", " ", "\n", ":", "(", ")", "=", "-", "99999999999999999999999", "\x00", "é"]
    ),
    length=st.integers(min_value=0, max_value=8),
)
def test_mutated_fixture(name: str, seed: str, position: float, replacement: str, length: int) -> None:
    text = (FIXTURES / seed).read_text()
    at = int(len(text) * position)
    run_parser(PARSERS[name][0], text[:at] + replacement + text[at + length :])


def test_every_public_parser_is_fuzzed() -> None:
    modules = (cgroup, cpu, disk, memory, net, pressure, process)
    public = {
        getattr(m, n)
        for m in modules
        for n in dir(m)
        if n.startswith("parse_") and getattr(getattr(m, n), "__module__", None) == m.__name__
    }
    assert public == {parser for parser, _ in PARSERS.values()}
