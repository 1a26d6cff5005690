"""The USE table and rules as pure functions: the threshold boundaries of
DESIGN.md (strictly above / below), the override file, and the rules over
synthetic pairs of samples whose answers are known; "since when" through a
real Sampler fed from files the test changes between ticks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from perf_mcp.procfs import Sampler, parse_snapshot
from perf_mcp.use import config, rules
from perf_mcp.use.thresholds import THRESHOLDS, apply_overrides, default_thresholds

TH = default_thresholds()


# ---------------------------------------------------------------- the table


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("cpu.utilisation_pct", 70.0, None), ("cpu.utilisation_pct", 70.01, "warning"),
    ("cpu.utilisation_pct", 90.0, "warning"), ("cpu.utilisation_pct", 90.01, "critical"),
    ("cpu.run_queue_per_cpu", 1.0, None), ("cpu.run_queue_per_cpu", 1.5, "warning"),
    ("cpu.run_queue_per_cpu", 2.01, "critical"),
    ("memory.available_pct", 20.0, None), ("memory.available_pct", 19.99, "warning"),
    ("memory.available_pct", 10.0, "warning"), ("memory.available_pct", 9.99, "critical"),
    ("memory.swap_used_pct", 0.0, None), ("memory.swap_used_pct", 0.001, "warning"),
    ("memory.swap_used_pct", 50.01, "critical"),
    ("disk.utilisation_pct", 60.0, None), ("disk.utilisation_pct", 61, "warning"),
    ("disk.utilisation_pct", 80.5, "critical"),
    ("disk.queue", 2.0, None), ("disk.queue", 2.1, "warning"), ("disk.queue", 8.1, "critical"),
    ("network.drops_per_s", 0.0, None), ("network.drops_per_s", 0.1, "warning"),
    ("network.drops_per_s", 101, "critical"),
    ("network.retransmit_pct", 1.0, None), ("network.retransmit_pct", 1.5, "warning"),
    ("network.retransmit_pct", 5.5, "critical"),
    ("psi.some_avg10_pct", 10.0, None), ("psi.some_avg10_pct", 10.5, "warning"),
    ("psi.some_avg10_pct", 25.5, "critical"),
    ("psi.full_avg10_pct", 5.0, None), ("psi.full_avg10_pct", 5.5, "warning"),
    ("psi.full_avg10_pct", 15.5, "critical"),
    ("cpu.utilisation_pct", None, None), ("cpu.utilisation_pct", math.nan, None),
])
def test_threshold_boundaries_are_strict(key: str, value: float | None, expected: str | None) -> None:
    assert TH[key].severity(value) == expected


def test_the_table_has_the_design_rows_and_perf_mcps_own_rows_apart() -> None:
    assert len(THRESHOLDS) == len({t.key for t in THRESHOLDS})
    design = [t for t in THRESHOLDS if t.source.startswith("DESIGN.md")]
    assert len(design) == 10
    # DESIGN.md's swap-used row is judged as information only (swap in use is not pressure).
    assert [t.key for t in THRESHOLDS if t.info_only] == ["memory.swap_used_pct"]
    # Rows DESIGN.md does not give say so.
    own = [t for t in THRESHOLDS if not t.source.startswith("DESIGN.md")]
    assert own and all(t.source.startswith("perf-mcp") for t in own)
    assert {t.key for t in own} >= {
        "cpu.single_cpu_busy_pct", "cpu.steal_pct", "memory.swap_in_per_s", "memory.swap_out_per_s",
        "memory.direct_reclaim_scan_per_s", "memory.allocstall_per_s", "memory.major_faults_per_s",
        "disk.await_ms", "filesystem.space_used_pct", "filesystem.inodes_used_pct"}


def test_overrides_nested_quoted_and_rejected() -> None:
    text = """
    [cpu.utilisation_pct]
    warning = 50
    ["disk.queue"]
    critical = 16
    [memory.available_pct]
    warning = 5        # below critical 10: wrong order for a "below" row
    [psi.some_avg10_pct]
    warning = nan
    critical = true
    [network.drops_per_s]
    warn = 3
    [cpu.nosuch]
    warning = 1
    """
    th, warnings = apply_overrides(text, "f.toml")
    assert (th["cpu.utilisation_pct"].warning, th["cpu.utilisation_pct"].critical) == (50, 90)
    assert th["cpu.utilisation_pct"].source == "f.toml" and th.source == "f.toml"
    assert (th["disk.queue"].warning, th["disk.queue"].critical) == (2, 16)
    assert th["memory.available_pct"] == TH["memory.available_pct"]
    assert th["psi.some_avg10_pct"] == TH["psi.some_avg10_pct"]
    assert th["network.drops_per_s"] == TH["network.drops_per_s"]
    joined = "\n".join(warnings)
    for expected in ("memory.available_pct", "nan", "True", "'warn'", "cpu.nosuch"):
        assert expected in joined, (expected, warnings)
    same, bad = apply_overrides("[cpu\nwarning=", "g.toml")
    assert same == TH and "not valid TOML" in bad[0]
    untouched, none = apply_overrides("", "h.toml")
    assert untouched == TH and none == [] and untouched.source.startswith("defaults")


def test_override_file_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config.load_thresholds() == (TH, [])  # no file: defaults, silently
    (tmp_path / "perf-mcp").mkdir()
    (tmp_path / "perf-mcp" / "thresholds.toml").write_text("[disk.utilisation_pct]\nwarning = 50\n")
    th, warnings = config.load_thresholds()
    assert th["disk.utilisation_pct"].warning == 50 and warnings == []
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "missing.toml"))
    th, warnings = config.load_thresholds()
    assert th == TH and "no such file" in warnings[0]
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (config.MAX_BYTES + 1))
    monkeypatch.setenv(config.ENV_VAR, str(big))
    assert "larger than" in config.load_thresholds()[1][0]


# ---------------------------------------------------------------- rules on synthetic samples


def stat(user: int, idle: int, running: int) -> bytes:
    return (f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n"
            f"intr 1\nctxt 1\nbtime 1\nprocesses 1\nprocs_running {running}\nprocs_blocked 0\n").encode()


def meminfo(total_kb: int, avail_kb: int, swap_total: int = 0, swap_free: int = 0) -> bytes:
    return (f"MemTotal: {total_kb} kB\nMemFree: {avail_kb} kB\nMemAvailable: {avail_kb} kB\n"
            f"SwapTotal: {swap_total} kB\nSwapFree: {swap_free} kB\n").encode()


def diskstats(io_ms: dict[str, int], queue_ms: dict[str, int]) -> bytes:
    lines = []
    for minor, name in enumerate(io_ms):
        lines.append(f"8 {minor} {name} 100 0 800 50 100 0 800 50 0 {io_ms[name]} {queue_ms[name]} 0 0 0 0 0 0\n")
    return "".join(lines).encode()


def netdev(drops: int) -> bytes:
    return ("Inter-|hdr\n face |hdr\n"
            f"  eth0: 1000 10 0 {drops} 0 0 0 0 1000 10 0 0 0 0 0 0\n"
            "    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n").encode()


def snmp(out: int, retrans: int) -> bytes:
    return (f"Tcp: RtoAlgorithm OutSegs RetransSegs CurrEstab\nTcp: 1 {out} {retrans} 1\n").encode()


def psi(some_us: int, full_us: int) -> bytes:
    return (f"some avg10=0.00 avg60=0.00 avg300=0.00 total={some_us}\n"
            f"full avg10=0.00 avg60=0.00 avg300=0.00 total={full_us}\n").encode()


def snap(t: float, **files: bytes):  # type: ignore[no-untyped-def]
    return parse_snapshot(t, 1000.0 + t, files)


def window(a, b, whole=frozenset({"sda"})) -> rules.Window:  # type: ignore[no-untyped-def]
    return rules.Window(older=a, newer=b, samples=[a, b], cpus=2, whole_disks=whole)


FC = rules.FindingContext(window_s=10.0, sample="2026-01-01T00:00:10.000Z", cpus=2)


def test_a_busy_saturated_cpu_is_one_critical_finding_with_its_evidence() -> None:
    a = snap(0.0, stat=stat(0, 0, 1), psi_cpu=psi(0, 0))
    b = snap(10.0, stat=stat(1900, 100, 7), psi_cpu=psi(4_000_000, 0))  # 95% busy, 6 runnable, 40% stalled
    ev = rules.evaluate(window(a, b), TH, FC)
    cpu = ev.rows[0]
    assert cpu.name == "cpu" and cpu.status == "critical"
    checks = {c.id: c for c in cpu.checks}
    assert checks["cpu.utilisation"].value == 95.0 and checks["cpu.utilisation"].status == "critical"
    assert checks["cpu.run_queue"].value == 3.0  # mean of 1-1 and 7-1
    assert checks["cpu.run_queue"].status == "warning"  # 3 > 2 cores, not > 4
    assert checks["psi.cpu.some"].value == 40.0 and checks["psi.cpu.some"].status == "critical"
    f = ev.findings[0]
    assert (f.id, f.severity, f.resource) == ("use.cpu", "critical", "cpu")
    assert "saturated" in f.title and "perf_runq_latency" in f.suggestion
    assert {e.counter.split(" [")[0] for e in f.evidence} >= {
        "/proc/stat cpu (100 - idle - iowait)", "/proc/pressure/cpu some total (stall share of the window)"}
    assert all(e.window_s == 10.0 and e.sample == FC.sample and e.tool == "perf_use_check" for e in f.evidence)
    psi_ev = next(e for e in f.evidence if "pressure" in e.counter)
    assert psi_ev.threshold == 25.0 and psi_ev.value == 40.0


def test_memory_short_and_swap() -> None:
    a = snap(0.0, meminfo=meminfo(1000, 150, 100, 40))
    b = snap(10.0, meminfo=meminfo(1000, 150, 100, 40))  # 15% available, 60% of swap used
    ev = rules.evaluate(window(a, b), TH, FC)
    mem = ev.rows[1]
    checks = {c.id: c for c in mem.checks}
    assert checks["memory.available"].status == "warning"
    # swap in use is information: over its limits, said (info) but not a warning by itself
    assert checks["memory.swap_used"].status == "ok" and checks["memory.swap_used"].info
    assert checks["memory.swap_used"].value == 60.0
    f = next(f for f in ev.findings if f.resource == "memory")
    assert f.severity == "warning" and f.title == "Memory short"
    info = next(f for f in ev.findings if f.id == "use.memory.swap_used")
    assert info.severity == "info" and "not pressure" in info.detail
    # swap merely in use, nothing else wrong: an info finding, no warning anywhere
    roomy = snap(10.0, meminfo=meminfo(1000, 800, 100, 10))
    ev = rules.evaluate(window(snap(0.0, meminfo=meminfo(1000, 800, 100, 10)), roomy), TH, FC)
    assert [(f.id, f.severity) for f in ev.findings] == [("use.memory.swap_used", "info")]
    assert ev.rows[1].status == "unknown"  # no vmstat or PSI in these samples: unknown, never ok


def test_psi_memory_with_plenty_of_memory_points_at_cgroups() -> None:
    a = snap(0.0, meminfo=meminfo(1000, 900), psi_memory=psi(0, 0))
    b = snap(10.0, meminfo=meminfo(1000, 900), psi_memory=psi(2_000_000, 1_000_000))
    f = next(f for f in rules.evaluate(window(a, b), TH, FC).findings if f.resource == "memory")
    assert f.severity == "warning" and "cgroup" in f.title and "perf_cgroup_summary" in f.suggestion


def test_disks_are_judged_whole_and_partitions_are_not() -> None:
    a = snap(0.0, diskstats=diskstats({"sda": 0, "sda1": 0, "loop3": 0}, {"sda": 0, "sda1": 0, "loop3": 0}))
    b = snap(10.0, diskstats=diskstats({"sda": 8500, "sda1": 9900, "loop3": 0},
                                       {"sda": 30_000, "sda1": 99_000, "loop3": 0}))
    ev = rules.evaluate(window(a, b, frozenset({"sda", "loop3"})), TH, FC)
    disk = ev.rows[2]
    targets = {c.target for c in disk.checks if c.kind == "utilisation"}
    assert targets == {"sda"}  # sda1 is a partition, loop3 an idle loop device
    checks = {c.id: c for c in disk.checks}
    assert checks["disk.sda.utilisation"].value == 85.0 and checks["disk.sda.utilisation"].status == "critical"
    assert checks["disk.sda.saturation"].value == 3.0 and checks["disk.sda.saturation"].status == "warning"
    f = next(f for f in ev.findings if f.resource == "disk")
    assert f.id == "use.disk.sda" and "perf_io_latency device=sda" in f.suggestion


def test_network_drops_and_retransmits_need_enough_segments() -> None:
    a = snap(0.0, net_dev=netdev(0), snmp=snmp(1000, 0))
    few = snap(10.0, net_dev=netdev(10), snmp=snmp(1050, 20))  # 1 drop/s; 20 of 50 segments
    ev = rules.evaluate(window(a, few), TH, FC)
    net = ev.rows[3]
    checks = {c.id: c for c in net.checks}
    assert checks["network.eth0.drops"].status == "warning" and checks["network.lo.drops"].status == "ok"
    retrans = checks["network.tcp.retransmits"]
    assert retrans.value == 40.0 and retrans.status == "ok" and retrans.info and "too few" in retrans.detail
    assert [f.id for f in ev.findings] == ["use.network.eth0"]
    many = snap(10.0, net_dev=netdev(0), snmp=snmp(2000, 30))  # 3% of 1000 segments
    ev = rules.evaluate(window(a, many), TH, FC)
    assert [(f.id, f.severity) for f in ev.findings] == [("use.network.retransmits", "warning")]


def test_findings_are_sorted_most_severe_first() -> None:
    a = snap(0.0, stat=stat(0, 0, 1), net_dev=netdev(0), meminfo=meminfo(1000, 50))
    b = snap(10.0, stat=stat(1500, 500, 1), net_dev=netdev(5), meminfo=meminfo(1000, 50))
    ev = rules.evaluate(window(a, b), TH, FC)
    assert [f.severity for f in ev.findings] == sorted((f.severity for f in ev.findings),
                                                        key=lambda s: {"critical": 0, "warning": 1, "info": 2}[s])
    assert ev.findings[0].resource == "memory"  # 5% available: critical; cpu 75% and drops: warnings


def test_a_cgroup_near_its_limit() -> None:
    a = snap(0.0, stat=stat(0, 0, 1))
    cg = rules.CgroupState(path="memory:/app", version="v1", memory_limit_bytes=100 * 2**20,
                           memory_usage_bytes=98 * 2**20, memory_working_set_bytes=95 * 2**20, memory_failcnt=7,
                           cpu_quota_cores=0.5, cpu_usage_cores=0.49, throttled_pct=80.0)
    ev = rules.evaluate(window(a, a), TH, FC, cg)
    row = ev.rows[-1]
    assert row.resource == "cgroup" and row.status == "critical"
    checks = {c.id: c for c in row.checks}
    assert checks["cgroup.memory.available"].value == 5.0 and checks["cgroup.cpu.utilisation"].value == 98.0
    assert checks["cgroup.cpu.throttled"].value == 80.0 and checks["cgroup.memory.failcnt"].value == 7
    f = next(f for f in ev.findings if f.resource == "cgroup")
    assert f.severity == "critical" and "perf_cgroup_summary" in f.suggestion


# ---------------------------------------------------------------- since when, through a real Sampler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_since_when_a_state_began(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "stat"
    sampler = Sampler(1.0, 60, files={"stat": str(path)}, monotonic=clock, wall=lambda: clock.now + 1e9)
    user = idle = 0
    for i in range(30):  # quiet for 20 s, then fully busy for 10 s
        if i:
            clock.now += 1.0
            if i > 20:
                user += 100
            else:
                idle += 100
        path.write_bytes(stat(user, idle, 1))
        sampler.tick()
    pair = sampler.window(8.0)
    assert pair is not None
    a, b = sampler.view(pair[0]), sampler.view(pair[1])
    ev = rules.evaluate(window(a, b), TH, FC)
    cpu = ev.rows[0]
    assert cpu.status == "critical"
    for step in (1, 5):
        since = sampler.since_when(rules.row_condition(ev.signals["cpu"], cpu.status), step=step)
        assert since is not None and not since.at_least
        # busy from the interval ending at sample 21 (t=121); with 5 s steps, from the first all-busy pair
        assert since.start_mono == (120.0 if step == 1 else 124.0), (step, since)
    # a row that could not be measured (no meminfo in this ring) is unknown, and has no since
    assert ev.rows[1].status == "unknown"
    assert rules.row_condition(ev.signals["memory"], "unknown") is None
