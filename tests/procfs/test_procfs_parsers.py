"""The procfs parsers on captured and documented fixtures, with exact values
(tests/fixtures/procfs/README.md says where each file came from)."""

from __future__ import annotations

from pathlib import Path

import pytest
from perf_mcp.procfs import cgroup, cpu, disk, memory, net, pressure, process
from perf_mcp.procfs.errors import ParseError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "procfs"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# ---------------------------------------------------------------- cpu


def test_stat_real_kernel_618() -> None:
    stat = cpu.parse_stat(fixture("proc_stat.txt"))
    assert stat.cpu == cpu.CpuTimes(
        user=12461, nice=0, system=2314, idle=94406, iowait=619, irq=0, softirq=196, steal=54
    )
    assert sorted(stat.per_cpu) == [0, 1]
    assert stat.per_cpu[1].user == 8314 and stat.per_cpu[1].iowait == 509
    assert (stat.ctxt, stat.intr, stat.softirq) == (346995, 218625, 150179)
    assert (stat.processes, stat.procs_running, stat.procs_blocked) == (6704, 1, 0)
    assert stat.btime == 1795626276
    assert stat.warnings == ()


def test_stat_old_kernel_without_guest_columns() -> None:
    stat = cpu.parse_stat(fixture("proc_stat.8fields_no_guest.txt"))
    assert stat.cpu.steal == 2
    assert stat.cpu.guest == 0 and stat.cpu.guest_nice == 0
    assert stat.intr == 12345


def test_stat_without_aggregate_line_is_an_error() -> None:
    with pytest.raises(ParseError):
        cpu.parse_stat(b"cpu0 1 2 3 4\nctxt 5\n")


def test_stat_garbled_cpu_line_is_skipped_with_warning() -> None:
    stat = cpu.parse_stat(b"cpu  1 2 3 4\ncpu0 1 x 3 4\ncpu1 1 2 3 4\nctxt 9\n")
    assert list(stat.per_cpu) == [1]
    assert any("cpu0" in w for w in stat.warnings)
    assert stat.intr is None and any("'intr'" in w for w in stat.warnings)


def test_loadavg() -> None:
    assert cpu.parse_loadavg(fixture("proc_loadavg.txt")) == cpu.LoadAvg(
        load1=0.44, load5=0.31, load15=0.16, runnable=1, threads=85, last_pid=6706
    )
    with pytest.raises(ParseError):
        cpu.parse_loadavg(b"0.1 0.2 0.3 1 99\n")
    with pytest.raises(ParseError):
        cpu.parse_loadavg(b"nan 0.2 0.3 1/2 99\n")


def test_cpuinfo_x86_vm() -> None:
    info = cpu.parse_cpuinfo(fixture("proc_cpuinfo.txt"))
    assert [p.processor for p in info.processors] == [0, 1]
    assert info.model_name == "AMD EPYC"
    assert info.vendor_id == "AuthenticAMD"
    assert info.processors[0].mhz == pytest.approx(1996.249)
    assert (info.sockets, info.physical_cores) == (1, 2)
    assert info.hypervisor is True
    assert {"sse4_2", "avx2"} <= info.flags


def test_cpuinfo_arm_layout() -> None:
    text = (
        "processor\t: 0\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm\n"
        "CPU implementer\t: 0x41\n\nprocessor\t: 1\nBogoMIPS\t: 48.00\n\n"
        "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n"
    )
    info = cpu.parse_cpuinfo(text)
    assert len(info.processors) == 2
    assert info.model_name == "BCM2835"
    assert info.vendor_id == "0x41"
    assert "asimd" in info.flags and info.hypervisor is False
    assert info.physical_cores is None


# ---------------------------------------------------------------- memory


def test_meminfo_kb_become_bytes() -> None:
    info = memory.parse_meminfo(fixture("proc_meminfo.txt"))
    assert info.mem_total == 24683656 * 1024
    assert info.mem_available == 24354464 * 1024
    assert info.swap_total == 0
    assert info.hugepages_total == 0  # a count, not kB
    assert info.hugepagesize == 2048 * 1024
    assert info.values["Active(anon)"] > 0
    assert info.warnings == ()


def test_meminfo_truncated_gives_partial_data() -> None:
    info = memory.parse_meminfo(b"MemTotal:       1000 kB\nMemFree:   ")
    assert info.mem_total == 1024000
    assert info.mem_free is None
    assert len(info.warnings) == 1


def test_vmstat_real() -> None:
    stat = memory.parse_vmstat(fixture("proc_vmstat.txt"))
    assert (stat.pgfault, stat.pgmajfault, stat.pswpin, stat.oom_kill) == (2236177, 1455, 0, 0)
    assert stat.pgpgin == 1965645
    assert stat.pgscan == 0 and stat.pgsteal == 0
    assert stat.allocstall == 0  # sum of allocstall_dma/dma32/normal/movable/device
    assert stat.workingset_refault == stat.values["workingset_refault_file"]


def test_vmstat_per_zone_counters_of_old_kernels_are_summed() -> None:
    text = (
        "pgscan_kswapd_dma 1\npgscan_kswapd_normal 10\npgscan_direct_normal 100\n"
        "pgscan_direct_throttle 7\npgsteal_kswapd_normal 5\nworkingset_refault 3\n"
    )
    stat = memory.parse_vmstat(text)
    assert stat.pgscan_kswapd == 11
    assert stat.pgscan_direct == 100  # pgscan_direct_throttle is an event count, not pages
    assert stat.pgscan == 111
    assert stat.pgsteal == 5
    assert stat.workingset_refault == 3


# ---------------------------------------------------------------- disk


def test_diskstats_20_fields() -> None:
    stats = disk.parse_diskstats(fixture("proc_diskstats.txt"))
    assert len(stats.devices) == 10 and stats.warnings == ()
    vda = stats.devices["vda"]
    assert (vda.major, vda.minor) == (254, 0)
    assert (vda.reads, vda.reads_merged, vda.sectors_read, vda.read_ms) == (59285, 10779, 3931290, 15092)
    assert (vda.writes, vda.writes_merged, vda.sectors_written, vda.write_ms) == (9872, 19664, 1157008, 4601)
    assert (vda.in_flight, vda.io_ms, vda.weighted_io_ms) == (0, 8608, 21405)
    assert (vda.discards, vda.discards_merged, vda.sectors_discarded, vda.discard_ms) == (
        5458,
        50,
        164904,
        1038,
    )
    assert (vda.flushes, vda.flush_ms) == (1366, 672)


def test_diskstats_18_fields() -> None:
    stats = disk.parse_diskstats(fixture("proc_diskstats.18fields.txt"))
    nvme = stats.devices["nvme0n1"]
    assert nvme.io_ms == 211892 and nvme.weighted_io_ms == 469612
    assert (nvme.discards, nvme.sectors_discarded, nvme.discard_ms) == (3012, 4112816, 1020)
    assert nvme.flushes is None and nvme.flush_ms is None
    assert stats.warnings == ()


def test_diskstats_14_fields_and_legacy_partition_line() -> None:
    stats = disk.parse_diskstats(fixture("proc_diskstats.14fields.txt"))
    assert list(stats.devices) == ["sda", "sda1", "dm-0"]
    sda = stats.devices["sda"]
    assert (sda.reads, sda.writes, sda.io_ms, sda.weighted_io_ms) == (33167, 28338, 384521, 3733854)
    assert sda.discards is None and sda.flushes is None
    assert len(stats.warnings) == 1 and "sda2" in stats.warnings[0]


# ---------------------------------------------------------------- net


def test_net_dev() -> None:
    dev = net.parse_net_dev(fixture("net_dev.txt"))
    assert list(dev.interfaces) == ["lo", "ifb0", "ifb1", "eth0"]
    eth0 = dev.interfaces["eth0"]
    assert (eth0.rx_bytes, eth0.rx_packets, eth0.tx_bytes, eth0.tx_packets) == (77214755, 2673, 251107, 2159)
    assert eth0.rx_dropped == 0 and eth0.tx_carrier == 0
    assert dev.warnings == ()


def test_net_dev_old_format_without_space_after_colon() -> None:
    text = "h1\nh2\n  eth0:4294967296 10 1 2 0 0 0 0 99 9 0 3 0 0 0 0\n"
    eth0 = net.parse_net_dev(text).interfaces["eth0"]
    assert eth0.rx_bytes == 4294967296 and eth0.rx_dropped == 2 and eth0.tx_dropped == 3


def test_net_snmp() -> None:
    snmp = net.parse_net_snmp(fixture("net_snmp.txt"))
    assert list(snmp.protocols) == ["Ip", "Icmp", "IcmpMsg", "Tcp", "Udp", "UdpLite"]
    assert snmp.get("Tcp", "MaxConn") == -1
    assert snmp.get("Tcp", "ActiveOpens") == 23
    assert snmp.get("Tcp", "InSegs") == 2651 and snmp.get("Tcp", "OutSegs") == 2131
    assert snmp.get("Tcp", "OutRsts") == 22
    assert snmp.get("IcmpMsg", "InType3") == 1
    assert snmp.get("Tcp", "NoSuchCounter") is None and snmp.get("Sctp", "x") is None


def test_net_netstat() -> None:
    stat = net.parse_net_netstat(fixture("net_netstat.txt"))
    assert list(stat.protocols) == ["TcpExt", "IpExt", "MPTcpExt"]
    assert stat.get("TcpExt", "ListenOverflows") == 0
    assert stat.get("IpExt", "InOctets") == 77180314
    assert len(stat.protocols["TcpExt"]) > 100


def test_net_snmp_mismatched_pair_is_skipped() -> None:
    snmp = net.parse_net_snmp("Tcp: A B C\nTcp: 1 2\nUdp: X\nUdp: 5\n")
    assert list(snmp.protocols) == ["Udp"]
    assert len(snmp.warnings) == 1


def test_softnet_15_columns() -> None:
    stat = net.parse_softnet_stat(fixture("net_softnet_stat.txt"))
    assert [c.cpu for c in stat.cpus] == [0, 1]
    assert stat.cpus[0].processed == 0xA and stat.cpus[1].processed == 0xA84
    assert stat.cpus[1].backlog_len == 0 and stat.cpus[1].input_qlen == 0


def test_softnet_11_and_13_columns() -> None:
    old = net.parse_softnet_stat(fixture("net_softnet_stat.11cols.txt"))
    assert [(c.cpu, c.processed, c.dropped, c.time_squeeze) for c in old.cpus] == [
        (0, 0x1A2B3, 0, 0x12),
        (1, 0xFF00, 5, 3),
    ]
    assert old.cpus[0].flow_limit_count == 0 and old.cpus[0].backlog_len is None
    offline = net.parse_softnet_stat(fixture("net_softnet_stat.13cols.offline_cpu.txt"))
    assert [c.cpu for c in offline.cpus] == [0, 2]  # CPU 1 offline: index column, not line number
    assert offline.cpus[1].received_rps == 7


# ---------------------------------------------------------------- pressure


def test_pressure_with_and_without_full() -> None:
    cpu_psi = pressure.parse_pressure(fixture("pressure_cpu.txt"))
    assert cpu_psi.some == pressure.PressureLine(avg10=0.03, avg60=4.87, avg300=3.12, total_us=15396936)
    assert cpu_psi.full is not None and cpu_psi.full.total_us == 0
    old = pressure.parse_pressure(fixture("pressure_cpu.no_full.txt"))
    assert old.some.avg10 == 12.5 and old.full is None
    io = pressure.parse_pressure(fixture("cgv2_io.pressure.txt"))
    assert io.full is not None and io.full.total_us == 4665524


def test_pressure_without_some_is_an_error() -> None:
    with pytest.raises(ParseError):
        pressure.parse_pressure(b"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    with pytest.raises(ParseError):
        pressure.parse_pressure(b"some avg10=0.00 avg60=0.00 total=0\n")


# ---------------------------------------------------------------- process


def test_pid_stat_comm_with_spaces_and_parentheses() -> None:
    stat = process.parse_pid_stat(fixture("pid_stat.comm_with_parens.txt"))
    assert stat.pid == 6911 and stat.comm == "a b) (c"
    assert (stat.state, stat.ppid, stat.tpgid) == ("S", 6909, -1)
    assert (stat.minflt, stat.cminflt, stat.majflt, stat.cmajflt) == (2889, 6505, 2, 1)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (5, 0, 3, 2)
    assert (stat.num_threads, stat.starttime, stat.vsize, stat.rss) == (1, 56120, 16977920, 3367)
    assert stat.processor == 1 and stat.delayacct_blkio_ticks == 0


def test_pid_stat_kernel_thread_and_errors() -> None:
    stat = process.parse_pid_stat(fixture("pid_stat.kthread.txt"))
    assert (stat.pid, stat.comm, stat.ppid, stat.vsize) == (2, "kthreadd", 0, 0)
    with pytest.raises(ParseError):
        process.parse_pid_stat(b"12 (x) S 1 2 3")
    with pytest.raises(ParseError):
        process.parse_pid_stat(b"12 x S 1 2 3")


def test_pid_status() -> None:
    status = process.parse_pid_status(fixture("pid_status.comm_with_parens.txt"))
    assert status.name == "a b) (c"
    assert (status.state, status.pid, status.ppid, status.uid_real) == ("S", 6911, 6909, 0)
    assert status.vm_rss == 13568 * 1024
    assert status.threads == 1 and status.fd_size == 256
    kthread = process.parse_pid_status(fixture("pid_status.kthread.txt"))
    assert kthread.name == "kthreadd" and kthread.vm_rss is None


def test_pid_limits() -> None:
    limits = process.parse_pid_limits(fixture("pid_limits.txt"))
    assert limits.max_open_files == process.Limit(soft=20000, hard=20000, units="files")
    assert limits.limits["Max cpu time"] == process.Limit(soft=None, hard=None, units="seconds")
    assert limits.limits["Max nice priority"].units == ""
    assert len(limits.limits) == 16 and limits.warnings == ()


def test_pid_io() -> None:
    io = process.parse_pid_io(fixture("pid_io.txt"))
    assert (io.rchar, io.wchar, io.syscr, io.syscw) == (1685858, 1724, 666, 30)
    assert (io.read_bytes, io.write_bytes, io.cancelled_write_bytes) == (233472, 0, 0)


# ---------------------------------------------------------------- cgroup


def test_proc_cgroup_hybrid_and_v2() -> None:
    hybrid = cgroup.parse_proc_cgroup(fixture("pid_cgroup.v1_in_fixture_cgroup.txt"))
    assert hybrid.v1_path("memory") == "/perfmcp-fixture"
    assert hybrid.v1_path("cpuacct") == "/perfmcp-fixture"
    assert hybrid.v1_path("freezer") == "/"
    assert hybrid.v1_path("name=systemd") == "/"
    assert hybrid.v2_path == "/"
    v2 = cgroup.parse_proc_cgroup(fixture("pid_cgroup.v2_only.txt"))
    assert v2.v2_path == "/user.slice/user-1000.slice/session-2.scope"
    assert v2.v1_path("memory") is None
    colon = cgroup.parse_proc_cgroup("0::/a:b\n")
    assert colon.v2_path == "/a:b"


def test_mountinfo_hybrid() -> None:
    mounts = cgroup.cgroup_mounts(cgroup.parse_mountinfo(fixture("self_mountinfo.txt")))
    assert mounts.version == "hybrid"
    assert mounts.v2 is not None and mounts.v2.mount_point == "/sys/fs/cgroup/unified"
    assert mounts.v1["memory"].mount_point == "/sys/fs/cgroup/memory"
    assert mounts.v1["name=systemd"].mount_point == "/sys/fs/cgroup/systemd"
    assert "rw" not in mounts.v1


def test_mountinfo_v2_only_and_escapes() -> None:
    info = cgroup.parse_mountinfo(fixture("self_mountinfo.v2_only.txt"))
    assert info.mounts[-1].mount_point == "/mnt/with space"
    mounts = cgroup.cgroup_mounts(info)
    assert mounts.version == "v2" and mounts.v1 == {}
    assert mounts.v2 is not None
    assert cgroup.cgroup_dir(mounts.v2, "/user.slice/a.scope") == "/sys/fs/cgroup/user.slice/a.scope"
    assert cgroup.cgroup_dir(mounts.v2, "/") == "/sys/fs/cgroup"
    assert cgroup.cgroup_dir(mounts.v2, "/a/../../etc") is None


def test_cgroup_dir_in_a_container_mount() -> None:
    mount = cgroup.Mount(
        mount_id=1,
        parent_id=0,
        major=0,
        minor=1,
        root="/docker/abc",
        mount_point="/sys/fs/cgroup",
        options="rw",
        fs_type="cgroup2",
        source="cgroup2",
        super_options="rw",
    )
    assert cgroup.cgroup_dir(mount, "/docker/abc/app") == "/sys/fs/cgroup/app"
    assert cgroup.cgroup_dir(mount, "/docker/abc") == "/sys/fs/cgroup"
    assert cgroup.cgroup_dir(mount, "/docker/abcdef") is None
    assert cgroup.cgroup_dir(mount, "/other") is None


def test_cgroup_v1_files() -> None:
    cpu_stat = cgroup.parse_cgroup_v1_cpu_stat(fixture("cgv1_cpu.stat.throttled.txt"))
    assert (cpu_stat.nr_periods, cpu_stat.nr_throttled, cpu_stat.throttled_time_ns) == (54, 53, 4135003463)
    assert cgroup.parse_cgroup_int(fixture("cgv1_cpuacct.usage.txt")) == 1084151967
    assert cgroup.parse_cgroup_int(fixture("cgv1_memory.usage_in_bytes.txt")) == 19927040
    assert cgroup.parse_cgroup_int(fixture("cgv1_memory.failcnt.txt")) == 30202
    assert cgroup.parse_cgroup_limit(fixture("cgv1_memory.limit_in_bytes.txt")) == 64 * 1024 * 1024
    assert cgroup.parse_cgroup_limit(fixture("cgv1_memory.limit_in_bytes.unlimited.txt")) is None
    assert cgroup.parse_cgroup_int(fixture("cgv1_pids.current.txt")) == 2
    assert cgroup.parse_cgroup_limit(fixture("cgv1_pids.max.txt")) == 50
    oom = cgroup.parse_cgroup_v1_oom_control(fixture("cgv1_memory.oom_control.txt"))
    assert (oom.oom_kill_disable, oom.under_oom, oom.oom_kill) == (False, False, 12)
    stat = cgroup.parse_cgroup_memory_stat(fixture("cgv1_memory.stat.txt"))
    assert stat.values["hierarchical_memory_limit"] == 67108864
    assert stat.values["total_pgmajfault"] == 105
    blkio = cgroup.parse_cgroup_v1_blkio(fixture("cgv1_blkio.throttle.io_service_bytes.txt"))
    assert blkio.devices == {
        "7:0": {
            "Read": 6553600,
            "Write": 13107200,
            "Sync": 19660800,
            "Async": 0,
            "Discard": 0,
            "Total": 19660800,
        }
    }
    assert blkio.total == 19660800
    serviced = cgroup.parse_cgroup_v1_blkio(fixture("cgv1_blkio.throttle.io_serviced.txt"))
    assert serviced.devices["7:0"]["Read"] == 100 and serviced.devices["7:0"]["Write"] == 200
    empty = cgroup.parse_cgroup_v1_blkio(fixture("cgv1_blkio.throttle.io_service_bytes.root_empty.txt"))
    assert empty.devices == {} and empty.total == 0


def test_cgroup_v2_files() -> None:
    with_controller = cgroup.parse_cgroup_v2_cpu_stat(fixture("cgv2_cpu.stat.with_controller.txt"))
    assert (with_controller.nr_periods, with_controller.nr_throttled) == (1200, 340)
    assert with_controller.throttled_usec == 8123456 and with_controller.usage_usec == 5000000
    without = cgroup.parse_cgroup_v2_cpu_stat(fixture("cgv2_cpu.stat.no_controller.txt"))
    assert without.usage_usec == 154363128 and without.nr_throttled is None
    assert cgroup.parse_cgroup_int(fixture("cgv2_memory.current.txt")) == 268435456
    assert cgroup.parse_cgroup_limit(fixture("cgv2_memory.max.txt")) == 536870912
    assert cgroup.parse_cgroup_limit(fixture("cgv2_memory.max.unlimited.txt")) is None
    assert cgroup.parse_cgroup_int(fixture("cgv2_pids.current.txt")) == 17
    assert cgroup.parse_cgroup_limit(fixture("cgv2_pids.max.unlimited.txt")) is None
    events = cgroup.parse_cgroup_v2_memory_events(fixture("cgv2_memory.events.txt"))
    assert (events.max, events.oom, events.oom_kill, events.oom_group_kill) == (1543, 12, 3, 0)
    stat = cgroup.parse_cgroup_memory_stat(fixture("cgv2_memory.stat.txt"))
    assert stat.values["anon"] == 201326592 and stat.values["pgmajfault"] == 2500
    io = cgroup.parse_cgroup_v2_io_stat(fixture("cgv2_io.stat.txt"))
    assert list(io.devices) == ["8:16", "8:0"]
    assert io.devices["8:0"].rbytes == 90430464 and io.devices["8:0"].dios == 3021
    psi = pressure.parse_pressure(fixture("cgv2_memory.pressure.txt"))
    assert psi.some.total_us == 55779


def test_cgroup_io_stat_with_controller_extras() -> None:
    io = cgroup.parse_cgroup_v2_io_stat(
        "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0 depth=max avg_lat=12\n"
    )
    device = io.devices["8:0"]
    assert device.rios == 3 and device.values["avg_lat"] == 12 and "depth" not in device.values


def test_single_value_files_reject_garbage() -> None:
    for bad in (b"", b"12 13", b"abc", b"max max"):
        with pytest.raises(ParseError):
            cgroup.parse_cgroup_int(bad)
    with pytest.raises(ParseError):
        cgroup.parse_cgroup_limit(b"maximum")
