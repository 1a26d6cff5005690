"""derive: rates from hand-made sample pairs whose answers are known."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from perf_mcp.procfs import derive
from perf_mcp.procfs.cpu import CpuTimes
from perf_mcp.procfs.disk import DiskStat, parse_diskstats
from perf_mcp.procfs.memory import parse_vmstat
from perf_mcp.procfs.net import NetDevStat, parse_net_snmp, parse_softnet_stat
from perf_mcp.procfs.pressure import parse_pressure
from perf_mcp.procfs.snapshot import SYSTEM_FILES, parse_snapshot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "procfs"


def times(**fields: int) -> CpuTimes:
    base = dict(user=0, nice=0, system=0, idle=0)
    base.update(fields)
    return CpuTimes(**base)


# ---------------------------------------------------------------- CPU


def test_cpu_split_simple() -> None:
    warnings: list[str] = []
    split = derive.cpu_split(
        times(user=100, system=50, idle=1000, iowait=10),
        times(user=150, system=75, idle=1020, iowait=15),
        warnings,
    )
    assert split is not None
    # 50 + 25 + 20 + 5 = 100 ticks elapsed
    assert (split.user, split.system, split.idle, split.iowait) == (50.0, 25.0, 20.0, 5.0)
    assert split.busy == 75.0
    assert warnings == []


def test_cpu_split_takes_guest_out_of_user_like_mpstat() -> None:
    split = derive.cpu_split(
        times(user=0, nice=0, guest=0, guest_nice=0),
        times(user=60, nice=20, guest=40, guest_nice=10, idle=20),
        [],
    )
    assert split is not None
    # elapsed = user(60, guest inside) + nice(20, guest_nice inside) + idle 20 = 100
    assert (split.user, split.guest, split.nice, split.guest_nice, split.idle) == (
        20.0,
        40.0,
        10.0,
        10.0,
        20.0,
    )
    total = sum(msgspec.structs.asdict(split).values())
    assert total == pytest.approx(100.0)


def test_cpu_split_backwards_field_counts_zero_with_warning() -> None:
    warnings: list[str] = []
    split = derive.cpu_split(
        times(user=10, idle=500, iowait=40), times(user=60, idle=550, iowait=30), warnings
    )
    assert split is not None
    assert split.iowait == 0.0 and split.user == 50.0 and split.idle == 50.0
    assert len(warnings) == 1 and "iowait" in warnings[0]


def test_cpu_split_without_elapsed_ticks_is_none() -> None:
    assert derive.cpu_split(times(user=5), times(user=5), []) is None


# ---------------------------------------------------------------- disk


def disk(**fields: int | None) -> DiskStat:
    base: dict[str, int | None] = dict(
        reads=0, reads_merged=0, sectors_read=0, read_ms=0, writes=0, writes_merged=0, sectors_written=0,
        write_ms=0, in_flight=0, io_ms=0, weighted_io_ms=0, discards=0, discards_merged=0,
        sectors_discarded=0, discard_ms=0, flushes=0, flush_ms=0,
    )  # fmt: skip
    base.update(fields)
    return DiskStat(major=8, minor=0, name="sda", **base)  # type: ignore[arg-type]


def test_disk_rates_as_iostat() -> None:
    warnings: list[str] = []
    prev = disk(reads=1000, io_ms=10_000, weighted_io_ms=50_000, read_ms=2000, sectors_read=8000)
    cur = disk(
        reads=1100,  # 100 reads
        reads_merged=25,  # 25 merged: %rrqm = 25 / 125
        sectors_read=8000 + 1600,  # 800 KiB: 8 KiB per read
        read_ms=2000 + 300,  # 3 ms per read
        writes=50,
        sectors_written=400,
        write_ms=500,  # 10 ms per write
        io_ms=10_000 + 500,  # busy 500 ms of 1000
        weighted_io_ms=50_000 + 2000,  # aqu-sz 2
        in_flight=3,
        flushes=10,
        flush_ms=5,
    )
    rates = derive.disk_rates(prev, cur, 1.0, warnings)
    assert (rates.r_s, rates.w_s, rates.f_s, rates.d_s) == (100.0, 50.0, 10.0, 0.0)
    assert (rates.rkb_s, rates.wkb_s) == (800.0, 200.0)
    assert rates.rrqm_s == 25.0 and rates.rrqm_pct == 20.0 and rates.wrqm_pct == 0.0
    assert (rates.r_await_ms, rates.w_await_ms, rates.f_await_ms) == (3.0, 10.0, 0.5)
    assert rates.d_await_ms == 0.0  # no discards: 0, as iostat prints
    assert (rates.rareq_sz_kb, rates.wareq_sz_kb) == (8.0, 4.0)
    assert rates.aqu_sz == 2.0
    assert rates.util_pct == 50.0
    assert rates.in_flight == 3
    assert warnings == []


def test_disk_rates_over_two_seconds_and_util_cap() -> None:
    rates = derive.disk_rates(disk(), disk(reads=100, io_ms=2500, weighted_io_ms=4000), 2.0, [])
    assert rates.r_s == 50.0
    assert rates.aqu_sz == 2.0
    assert rates.util_pct == 100.0  # 2500 ms busy in 2000 ms: capped


def test_disk_counter_wrap_gives_no_rate_and_a_warning() -> None:
    warnings: list[str] = []
    prev = disk(reads=10, io_ms=4_294_967_000)
    cur = disk(reads=20, io_ms=200)  # io_ticks is 32-bit and wrapped
    rates = derive.disk_rates(prev, cur, 1.0, warnings)
    assert rates.util_pct is None
    assert rates.r_s == 10.0  # the others still have rates
    assert len(warnings) == 1 and "io_ms" in warnings[0] and "sda" in warnings[0]


def test_disk_rates_of_an_old_kernel_without_discards() -> None:
    stats = parse_diskstats((FIXTURES / "proc_diskstats.14fields.txt").read_bytes())
    sda = stats.devices["sda"]
    later = msgspec.structs.replace(sda, reads=sda.reads + 10, read_ms=sda.read_ms + 20)
    rates = derive.disk_rates(sda, later, 1.0, [])
    assert rates.r_s == 10.0 and rates.r_await_ms == 2.0
    assert rates.d_s is None and rates.f_s is None and rates.d_await_ms is None and rates.drqm_pct is None


# ---------------------------------------------------------------- network


def netdev(**fields: int) -> NetDevStat:
    names = NetDevStat.__struct_fields__[1:]
    base = dict.fromkeys(names, 0)
    base.update(fields)
    return NetDevStat(name="eth0", **base)


def test_netdev_rates() -> None:
    warnings: list[str] = []
    rates = derive.netdev_rates(
        netdev(rx_bytes=1000, tx_packets=5, rx_dropped=1),
        netdev(rx_bytes=1000 + 4 * 125_000, tx_packets=5 + 400, rx_dropped=1 + 8, tx_errors=2),
        2.0,
        warnings,
    )
    assert rates.rx_bytes_s == 250_000.0 and rates.tx_packets_s == 200.0
    assert rates.rx_dropped_s == 4.0 and rates.tx_errors_s == 1.0
    assert warnings == []
    reset = derive.netdev_rates(netdev(rx_bytes=5000), netdev(rx_bytes=10), 1.0, warnings)
    assert reset.rx_bytes_s is None and reset.tx_bytes_s == 0.0
    assert len(warnings) == 1


def snmp(out_segs: int, retrans: int, curr_estab: int = 3) -> str:
    return (
        "Tcp: ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts\n"
        f"Tcp: 10 5 0 0 {curr_estab} 1000 {out_segs} {retrans} 0 0\n"
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "Udp: 7 0 0 9 2 0\n"
    )


def test_tcp_retransmit_percent() -> None:
    warnings: list[str] = []
    prev, cur = parse_net_snmp(snmp(1000, 10)), parse_net_snmp(snmp(1200, 15, curr_estab=4))
    netstat_prev = parse_net_snmp("TcpExt: ListenOverflows ListenDrops TCPTimeouts\nTcpExt: 1 1 0\n")
    netstat_cur = parse_net_snmp("TcpExt: ListenOverflows ListenDrops TCPTimeouts\nTcpExt: 4 4 2\n")
    rates = derive.tcp_rates(prev, cur, netstat_prev, netstat_cur, 1.0, warnings)
    assert rates.retransmit_pct == 2.5  # 5 of 200
    assert rates.out_segs_s == 200.0 and rates.retrans_segs_s == 5.0
    assert rates.curr_estab == 4
    assert rates.listen_overflows_s == 3.0 and rates.timeouts_s == 2.0
    assert rates.syn_retrans_s is None  # not in this netstat
    assert warnings == []


def test_tcp_retransmit_percent_edge_cases() -> None:
    idle = derive.tcp_rates(parse_net_snmp(snmp(50, 1)), parse_net_snmp(snmp(50, 1)), None, None, 1.0, [])
    assert idle.retransmit_pct == 0.0 and idle.listen_overflows_s is None
    warnings: list[str] = []
    wrapped = derive.tcp_rates(
        parse_net_snmp(snmp(500, 9)), parse_net_snmp(snmp(100, 9)), None, None, 1.0, warnings
    )
    assert wrapped.retransmit_pct is None and wrapped.out_segs_s is None
    assert any("OutSegs" in w for w in warnings)


def test_udp_rates() -> None:
    rates = derive.udp_rates(parse_net_snmp(snmp(1, 1)), parse_net_snmp(snmp(1, 1)), 1.0, [])
    assert rates.rcvbuf_errors_s == 0.0 and rates.in_datagrams_s == 0.0


def test_softnet_rates_match_cpus_by_number() -> None:
    prev = parse_softnet_stat((FIXTURES / "net_softnet_stat.13cols.offline_cpu.txt").read_bytes())
    cur_text = (
        "0001a2c3 00000000 00000012 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n"
        "0000ff20 00000009 00000004 00000000 00000000 00000000 00000000 00000000 00000000 00000007 00000000 00000000 00000002\n"
    )
    rates = derive.softnet_rates(prev, parse_softnet_stat(cur_text), 1.0, [])
    assert sorted(rates.per_cpu) == [0, 2]
    assert rates.per_cpu[0].processed_s == 16.0 and rates.per_cpu[2].processed_s == 32.0
    assert rates.per_cpu[2].dropped_s == 4.0 and rates.per_cpu[2].time_squeeze_s == 1.0
    assert (rates.processed_s, rates.dropped_s, rates.time_squeeze_s) == (48.0, 4.0, 1.0)


# ---------------------------------------------------------------- memory, PSI


def test_memory_rates() -> None:
    prev = parse_vmstat(
        "pgfault 1000\npgmajfault 10\npgscan_kswapd 100\npgscan_direct 0\npgsteal_kswapd 50\noom_kill 1\n"
    )
    cur = parse_vmstat(
        "pgfault 3000\npgmajfault 30\npgscan_kswapd 300\npgscan_direct 100\npgsteal_kswapd 200\noom_kill 2\n"
    )
    rates = derive.memory_rates(prev, cur, 2.0, [])
    assert rates.faults_s == 1000.0 and rates.major_faults_s == 10.0
    assert rates.pgscan_kswapd_s == 100.0 and rates.pgscan_direct_s == 50.0
    assert rates.pgsteal_s == 75.0
    assert rates.vmeff_pct == 50.0  # 150 stolen of 300 scanned
    assert rates.oom_kills == 1
    assert rates.pswpin_s is None  # not in this vmstat


def test_pressure_rates_from_totals() -> None:
    prev = parse_pressure(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=500000\n"
    )
    cur = parse_pressure(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=600000\n"
    )
    rates = derive.pressure_rates(prev, cur, 2.0, "psi io", [])
    assert rates.some_pct == 25.0 and rates.full_pct == 5.0
    no_full = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n")
    assert derive.pressure_rates(no_full, no_full, 1.0, "psi cpu", []).full_pct is None


# ---------------------------------------------------------------- all together


def fixture_files() -> dict[str, bytes]:
    names = {
        "stat": "proc_stat.txt", "meminfo": "proc_meminfo.txt", "vmstat": "proc_vmstat.txt",
        "loadavg": "proc_loadavg.txt", "diskstats": "proc_diskstats.txt", "net_dev": "net_dev.txt",
        "snmp": "net_snmp.txt", "netstat": "net_netstat.txt", "softnet": "net_softnet_stat.txt",
        "psi_cpu": "pressure_cpu.txt", "psi_memory": "pressure_memory.txt", "psi_io": "pressure_io.txt",
    }  # fmt: skip
    assert set(names) == set(SYSTEM_FILES)
    return {name: (FIXTURES / file).read_bytes() for name, file in names.items()}


def test_system_rates_on_fixture_snapshots() -> None:
    before = fixture_files()
    after = dict(before)
    after["stat"] = (
        before["stat"]
        .replace(b"cpu  12461 0 2314 94406", b"cpu  12561 0 2364 94456")
        .replace(b"ctxt 346995", b"ctxt 348995")
    )
    after["diskstats"] = before["diskstats"].replace(
        b"vda 59285 10779 3931290 15092 9872 19664 1157008 4601 0 8608 21405",
        b"vda 59385 10779 3932090 15292 9872 19664 1157008 4601 1 9608 22405",
    )
    prev = parse_snapshot(100.0, 1_700_000_000.0, before)
    cur = parse_snapshot(102.0, 1_700_000_002.0, after)
    assert prev.warnings == () and cur.warnings == ()
    rates = derive.system_rates(prev, cur)
    assert rates is not None
    assert rates.interval_s == 2.0
    assert (
        rates.cpu is not None
        and rates.cpu.user == 50.0
        and rates.cpu.system == 25.0
        and rates.cpu.idle == 25.0
    )
    assert rates.context_switches_s == 1000.0
    vda = rates.disks["vda"]
    assert (vda.r_s, vda.r_await_ms, vda.util_pct, vda.aqu_sz, vda.in_flight) == (50.0, 2.0, 50.0, 0.5, 1)
    assert rates.disks["loop0"].util_pct == 0.0
    assert rates.interfaces["eth0"].rx_bytes_s == 0.0
    assert rates.tcp is not None and rates.tcp.retransmit_pct == 0.0
    assert set(rates.pressure) == {"cpu", "memory", "io"}
    assert rates.warnings == ()
    assert derive.system_rates(cur, cur) is None


def test_system_rates_with_missing_and_broken_files() -> None:
    before = fixture_files()
    after = dict(before)
    del after["diskstats"]
    after["loadavg"] = b"garbage\n"
    prev = parse_snapshot(1.0, 1.0, before)
    cur = parse_snapshot(2.0, 2.0, after, read_errors={"diskstats": "EACCES: Permission denied"})
    assert cur.loadavg is None and cur.diskstats is None
    assert len(cur.warnings) == 2
    rates = derive.system_rates(prev, cur)
    assert rates is not None and rates.disks == {}
    assert rates.cpu is None  # same /proc/stat twice: no tick elapsed, no split
    assert rates.context_switches_s == 0.0
