"""The USE table and rules as pure functions: the threshold boundaries of
DESIGN.md (strictly above / below), the override file, and the rules over
synthetic pairs of samples whose answers are known; "since when" through a
real Sampler fed from files the test changes between ticks."""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec
import pytest

from perf_mcp.procfs import Sampler, capacity, parse_mountinfo, parse_snapshot
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
    checks = {c.id: c for c in cpu.all_checks()}
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
    checks = {c.id: c for c in mem.all_checks()}
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
    targets = {c.target for c in disk.all_checks() if c.kind == "utilisation"}
    assert targets == {"sda"}  # sda1 is a partition, loop3 an idle loop device
    checks = {c.id: c for c in disk.all_checks()}
    assert checks["disk.sda.utilisation"].value == 85.0 and checks["disk.sda.utilisation"].status == "critical"
    assert checks["disk.sda.saturation"].value == 3.0 and checks["disk.sda.saturation"].status == "warning"
    f = next(f for f in ev.findings if f.resource == "disk")
    assert f.id == "use.disk.sda" and "perf_io_latency device=sda" in f.suggestion


def test_network_drops_and_retransmits_need_enough_segments() -> None:
    a = snap(0.0, net_dev=netdev(0), snmp=snmp(1000, 0))
    few = snap(10.0, net_dev=netdev(10), snmp=snmp(1050, 20))  # 1 drop/s; 20 of 50 segments
    ev = rules.evaluate(window(a, few), TH, FC)
    net = ev.rows[3]
    checks = {c.id: c for c in net.all_checks()}
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
    checks = {c.id: c for c in row.all_checks()}
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


# ---------------------------------------------------------------- judgements a performance engineer makes

FIXTURES = Path(__file__).parent / "fixtures"


def per_cpu_stat(cpus: list[tuple[int, int]], running: int = 1, steal: int = 0) -> bytes:
    """/proc/stat with per-CPU (busy user ticks, idle ticks); the total is their sum."""
    user, idle = sum(c[0] for c in cpus), sum(c[1] for c in cpus)
    lines = [f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0"]
    lines += [f"cpu{n} {u} 0 0 {i} 0 0 0 0 0 0" for n, (u, i) in enumerate(cpus)]
    lines += ["intr 1", "ctxt 1", "btime 1", "processes 1", f"procs_running {running}", "procs_blocked 0", ""]
    return "\n".join(lines).encode()


def test_one_hot_cpu_while_the_others_have_room_is_a_single_thread_finding() -> None:
    a = snap(0.0, stat=per_cpu_stat([(0, 0), (0, 0), (0, 0), (0, 0)]))
    # cpu2 fully busy, the other three 10%: the mean (32.5%) hides it
    b = snap(10.0, stat=per_cpu_stat([(100, 900), (100, 900), (1000, 0), (100, 900)]))
    ev = rules.evaluate(window(a, b), TH, FC)
    checks = {c.id: c for c in ev.rows[0].all_checks()}
    assert checks["cpu.utilisation"].value == 32.5 and checks["cpu.utilisation"].status == "ok"
    single = checks["cpu.single_cpu"]
    assert (single.target, single.value, single.status) == ("cpu2", 100.0, "warning")
    f = next(f for f in ev.findings if f.id == "use.cpu.single")
    assert f.severity == "warning" and "cpu2" in f.title and "single-threaded" in f.title
    assert f.next is not None and f.next.tool == "perf_cpu_profile"
    # every CPU busy: the hot CPU is not a single-thread story; the utilisation row judges
    busy = snap(10.0, stat=per_cpu_stat([(800, 200), (900, 100), (1000, 0), (800, 200)]))
    ev = rules.evaluate(window(a, busy), TH, FC)
    checks = {c.id: c for c in ev.rows[0].all_checks()}
    assert checks["cpu.single_cpu"].status == "ok" and "not judged alone" in checks["cpu.single_cpu"].detail
    assert [f.id for f in ev.findings if f.resource == "cpu"] == ["use.cpu"]


def test_steal_is_judged_in_a_vm() -> None:
    a = snap(0.0, stat=per_cpu_stat([(0, 0), (0, 0)]))
    b = snap(10.0, stat=per_cpu_stat([(300, 1100), (300, 0)], steal=300))  # 300 of 2000 ticks: 15% steal
    w = window(a, b)
    w.vm = True
    ev = rules.evaluate(w, TH, FC)
    steal = next(c for c in ev.rows[0].all_checks() if c.id == "cpu.steal")
    assert (steal.value, steal.status) == (15.0, "warning")
    f = next(f for f in ev.findings if f.id == "use.cpu.steal")
    assert f.next is not None and f.next.tool == "perf_snapshot" and f.next.arguments == {"include_per_cpu": True}
    w.vm = False  # not a VM: no steal check at all
    assert not any(c.id == "cpu.steal" for c in rules.evaluate(w, TH, FC).rows[0].all_checks())


def test_swapping_from_recorded_vmstat_is_a_memory_finding() -> None:
    a = snap(0.0, vmstat=(FIXTURES / "vmstat_swapping.0").read_bytes(), meminfo=meminfo(1000, 900, 100, 50))
    b = snap(8.0, vmstat=(FIXTURES / "vmstat_swapping.1").read_bytes(), meminfo=meminfo(1000, 900, 100, 50))
    ev = rules.evaluate(window(a, b), TH, FC)
    checks = {c.id: c for c in ev.rows[1].all_checks()}
    assert checks["memory.swap_in"].value == round(471176 / 8, 2) and checks["memory.swap_in"].status == "critical"
    assert checks["memory.swap_out"].value == round(491677 / 8, 2) and checks["memory.swap_out"].status == "critical"
    assert checks["memory.major_faults"].value == round((94832 - 25299) / 8, 2)
    assert checks["memory.direct_reclaim"].value == 0 and checks["memory.allocstall"].value == 0
    f = next(f for f in ev.findings if f.id == "use.memory")
    assert f.severity == "critical" and "swapping" in f.title
    info = next(f for f in ev.findings if f.id == "use.memory.swap_used")
    assert info.severity == "info" and "they are below" not in info.detail


def test_direct_reclaim_from_recorded_vmstat_is_a_memory_finding() -> None:
    a = snap(0.0, vmstat=(FIXTURES / "vmstat_reclaim.0").read_bytes(), meminfo=meminfo(1000, 900))
    b = snap(10.0, vmstat=(FIXTURES / "vmstat_reclaim.1").read_bytes(), meminfo=meminfo(1000, 900))
    ev = rules.evaluate(window(a, b), TH, FC)
    checks = {c.id: c for c in ev.rows[1].all_checks()}
    assert (checks["memory.direct_reclaim"].value, checks["memory.direct_reclaim"].status) == (4000.0, "warning")
    assert (checks["memory.allocstall"].value, checks["memory.allocstall"].status) == (12.0, "warning")
    assert checks["memory.swap_in"].value == 0 and checks["memory.swap_in"].status == "ok"
    f = next(f for f in ev.findings if f.id == "use.memory")
    assert "direct reclaim" in f.title and f.next is not None and f.next.tool == "perf_snapshot"


def disk_line(name: str, reads: int, read_ms: int, io_ms: int, queue_ms: int) -> str:
    return f"253 0 {name} {reads} 0 {reads * 8} {read_ms} 0 0 0 0 0 {io_ms} {queue_ms} 0 0 0 0 0 0\n"


def test_util_near_100_on_a_parallel_disk_is_not_saturation_await_and_queue_lead() -> None:
    a = snap(0.0, diskstats=(disk_line("vda", 0, 0, 0, 0) + disk_line("sda", 0, 0, 0, 0)).encode())
    # both 100% busy; 1000 reads each at 1 ms: aqu-sz 0.1, await 1 ms
    calm = snap(10.0, diskstats=(disk_line("vda", 1000, 1000, 10_000, 1000)
                                 + disk_line("sda", 1000, 1000, 10_000, 1000)).encode())
    ev = rules.evaluate(window(a, calm, frozenset({"vda", "sda"})), TH, FC)
    checks = {c.id: c for c in ev.rows[2].all_checks()}
    vda = checks["disk.vda.utilisation"]
    assert vda.value == 100.0 and vda.status == "ok" and vda.info and "not saturation" in vda.detail
    assert checks["disk.sda.utilisation"].status == "critical"  # sd*: one queue, %util judged
    assert checks["disk.vda.await"].value == 1.0 and checks["disk.vda.await"].status == "ok"
    info = next(f for f in ev.findings if f.id == "use.disk.vda.util")
    assert info.severity == "info" and "not saturated" in info.title
    assert info.next is not None and info.next.arguments == {"device": "vda", "mode": "trace", "duration_s": 5}
    assert [f.id for f in ev.findings if f.severity != "info"] == ["use.disk.sda"]
    # the same device with requests waiting: saturated, and the finding says %util is not the measure
    slow = snap(10.0, diskstats=(disk_line("vda", 1000, 150_000, 10_000, 150_000)
                                 + disk_line("sda", 0, 0, 0, 0)).encode())
    ev = rules.evaluate(window(a, slow, frozenset({"vda", "sda"})), TH, FC)
    f = next(f for f in ev.findings if f.id == "use.disk.vda")
    assert f.severity == "critical" and "requests wait" in f.title and "%util" in f.detail
    assert f.metrics["disk.vda.await"] == 150.0 and f.metrics["disk.vda.saturation"] == 15.0
    assert f.next is not None and f.next.tool == "perf_io_latency" and f.next.arguments["device"] == "vda"
    # sysfs knowledge beats the name: a single-queue "vdb" is judged on %util
    w = window(a, calm, frozenset({"vda"}))
    w.disk_queues = {"vda": capacity.judge_queue("vda", None, 1, 128, True, False)}
    w.disk_queues = {"vda": msgspec.structs.replace(w.disk_queues["vda"], parallel=False)}
    assert next(c for c in rules.evaluate(w, TH, FC).rows[2].all_checks()
                if c.id == "disk.vda.utilisation").status == "critical"


def test_disk_queue_verdicts_from_sysfs_facts() -> None:
    assert capacity.judge_queue("vda", "virtio_blk", 1, 256, True, False).why == "driver virtio_blk"
    assert capacity.judge_queue("sdb", "sd", 4, 64, False, False).why == "4 hardware queues"
    assert capacity.judge_queue("dm-0", None, None, None, None, True).parallel
    assert capacity.judge_queue("nvme0n1", None, None, None, None, False).why == "NVMe"
    single = capacity.judge_queue("sda", "sd", 1, 64, True, False)
    assert not single.parallel and single.why == "single queue"
    assert not capacity.judge_queue("loop0", None, 1, 128, True, False).parallel


MOUNTINFO = b"""22 27 0:21 / /proc rw,relatime - proc proc rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
43 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw,discard
50 27 7:3 / /snap/core/1 ro,nodev,relatime - squashfs /dev/loop3 ro
51 27 7:4 / /mnt/old ro,relatime - ext4 /dev/loop4 ro
52 27 0:45 / /data rw,relatime - btrfs /dev/vdb rw
53 27 7:5 / /var/tmp/x\\040y rw,relatime - ext4 /dev/loop5 rw
"""


def test_real_filesystems_from_mountinfo() -> None:
    mounts = capacity.real_mounts(parse_mountinfo(MOUNTINFO))
    # pseudo filesystems, a read-only image, a read-only mount and a bind mount of / are left out
    assert [m.mount_point for m in mounts] == ["/", "/data", "/var/tmp/x y"]


def statvfs(blocks: int, bfree: int, bavail: int, files: int, ffree: int) -> os.statvfs_result:
    return os.statvfs_result((4096, 4096, blocks, bfree, bavail, files, ffree, ffree, 0, 255))


def test_filesystem_capacity_rows_and_findings() -> None:
    m = capacity.real_mounts(parse_mountinfo(MOUNTINFO))
    # df: used 96 of (96 + 4) blocks -> 96%; inodes 50%
    full = capacity.usage_from_statvfs(m[0], statvfs(100, 4, 4, 100, 50))
    assert full.used_pct == 96.0 and full.inodes_used_pct == 50.0 and full.avail_bytes == 4 * 4096
    inodes = capacity.usage_from_statvfs(m[2], statvfs(1000, 900, 850, 1000, 40))  # 96% of inodes
    noinodes = capacity.usage_from_statvfs(m[1], statvfs(1000, 500, 500, 0, 0))  # btrfs: no inode count
    assert noinodes.inodes_used_pct is None
    hidden = capacity.FsUsage(mount_point="/hidden", source="/dev/loop9", fs_type="ext4", device="7:9",
                              error="statvfs: EACCES: Permission denied")
    w = window(snap(0.0), snap(10.0))
    w.filesystems = [full, noinodes, inodes, hidden]
    ev = rules.evaluate(w, TH, FC)
    fs = next(r for r in ev.rows if r.name == "filesystem")
    checks = {c.id: c for c in fs.all_checks()}
    assert fs.resource == "disk" and fs.status == "critical"
    assert checks["fs./.space"].status == "critical" and checks["fs./.inodes"].status == "ok"
    assert "fs./data.inodes" not in checks and checks["fs./data.space"].status == "ok"
    assert checks["fs./var/tmp/x y.inodes"].status == "critical"
    assert checks["fs./hidden.space"].status == "unknown" and "EACCES" in checks["fs./hidden.space"].detail
    found = {f.id: f for f in ev.findings if f.id.startswith("use.fs.")}
    assert set(found) == {"use.fs./", "use.fs./var/tmp/x y"}
    assert found["use.fs./"].title == "Filesystem / 96% full (space)"
    assert found["use.fs./var/tmp/x y"].title == "Filesystem /var/tmp/x y 96% full (inodes)"
    assert all(f.next is not None and f.next.tool == "perf_io_layers" for f in found.values())


def test_a_value_that_could_not_be_measured_is_unknown_never_ok() -> None:
    # /proc/stat, meminfo, vmstat, diskstats, net/dev and PSI missing in the newer sample
    a = snap(0.0, stat=stat(0, 0, 1), meminfo=meminfo(1000, 900), psi_cpu=psi(0, 0),
             diskstats=diskstats({"sda": 0}, {"sda": 0}), net_dev=netdev(0))
    b = snap(10.0)
    ev = rules.evaluate(window(a, b), TH, FC)
    by_name = {r.name: r for r in ev.rows}
    for name in ("cpu", "memory", "disk", "network"):
        row = by_name[name]
        assert row.status == "unknown", (name, row)
        assert all(c.status == "unknown" for c in row.all_checks() if c.value is None), row.all_checks()
    cpu = {c.id: c for c in by_name["cpu"].all_checks()}
    assert cpu["cpu.utilisation"].status == "unknown" and cpu["psi.cpu.some"].status == "unknown"
    assert not [f for f in ev.findings if f.severity != "info"]


class _Row(msgspec.Struct):
    pid: int
    user: str
    command: str
    cpu_pct: float | None = None
    rss_mb: float | None = None
    read_bps: float | None = None
    write_bps: float | None = None


class _Attribution(msgspec.Struct):
    window_s: float
    cpu: list[_Row]
    memory: list[_Row]
    disk_read: list[_Row]
    disk_write: list[_Row]
    fds: list[_Row]
    notes: list[str]


def test_findings_name_the_top_processes_and_their_next_call() -> None:
    a = snap(0.0, stat=per_cpu_stat([(0, 0), (0, 0)]))
    b = snap(10.0, stat=per_cpu_stat([(1000, 0), (50, 950)]))
    ev = rules.evaluate(window(a, b), TH, FC)
    att = _Attribution(window_s=10.0, cpu=[_Row(4242, "alice", "/usr/bin/burn --hot", cpu_pct=99.5),
                                           _Row(17, "root", "idle-ish", cpu_pct=0.0),
                                           _Row(23, "bob", "/usr/bin/half", cpu_pct=40.0),
                                           _Row(31, "root", "/usr/bin/crumb", cpu_pct=0.3)],
                       memory=[], disk_read=[], disk_write=[], fds=[], notes=[])
    named = rules.name_culprits(ev.findings, att, FC)
    f = next(f for f in named if f.id == "use.cpu.single")
    assert "burn (pid 4242)" in f.title and "pid 4242 (/usr/bin/burn --hot, user alice) 100% CPU" in f.detail
    assert f.metrics["top.pid"] == 4242 and "idle-ish" not in f.detail  # a process using nothing is not named
    assert "then pid 23 40% CPU" in f.detail  # a process that counts beside the lead is named after it,
    assert "pid 31" not in f.detail  # one with 0.3% beside 99.5% is not (it would read '0% CPU')
    assert f.next is not None and (f.next.tool, f.next.arguments) == ("perf_thread_profile",
                                                                      {"pid": 4242, "duration_s": 5})
    assert any("4242" in e.counter and e.value == 99.5 for e in f.evidence)
