"""Rates from two samples: pure functions, no I/O, no clock.

The formulas are those of sysstat, so that our numbers can be checked against
the tools people trust:

- CPU split as ``mpstat``: percentages of the elapsed CPU ticks (the sum of
  user, nice, system, idle, iowait, irq, softirq and steal). guest and
  guest_nice are already inside user and nice, so they are taken out of user
  and nice and shown on their own: the ten figures add up to 100.
- Disk as ``iostat -x``: r/s, w/s, d/s, f/s, rkB/s (sectors are 512 bytes),
  rrqm/s and %rrqm, r_await (ms per completed read, 0 when none), rareq-sz (kB),
  aqu-sz (weighted ticks / elapsed ms), %util (io_ticks / elapsed ms, capped
  at 100).
- TCP retransmit % = RetransSegs delta / OutSegs delta, as ``nstat``/``sar -n ETCP``.

Counters only grow. A counter that went down (a 32-bit wrap such as diskstats
io_ticks after 49.7 days, a driver reset, a device that was replaced) gives no
rate for that figure (None) and a warning, never a negative number.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._text import Record, Warnings
from .cpu import CpuTimes
from .disk import DiskStat
from .memory import VmStat
from .net import NetDevStat, NetSnmp, SoftnetStat
from .pressure import Pressure
from .snapshot import SnapshotLike

SECTOR_BYTES = 512


class Deltas:
    """Deltas of counters between two samples, collecting a warning for each
    counter that went backwards."""

    def __init__(self, interval_s: float, warnings: list[str]) -> None:
        self.interval_s = interval_s
        self.warnings = warnings

    def delta(self, prev: int | None, cur: int | None, name: str) -> int | None:
        if prev is None or cur is None:
            return None
        if cur < prev:
            self.warnings.append(f"{name} went backwards ({prev} -> {cur}): counter wrap or reset, no rate")
            return None
        return cur - prev

    def rate(self, prev: int | None, cur: int | None, name: str) -> float | None:
        d = self.delta(prev, cur, name)
        return None if d is None else d / self.interval_s


def _ratio(numerator: float | None, denominator: float | None, scale: float = 1.0) -> float | None:
    """numerator / denominator * scale; 0.0 when the denominator is 0 (sysstat
    prints 0.00 for the await of a device that did no I/O); None if unknown."""
    if numerator is None or denominator is None:
        return None
    return numerator / denominator * scale if denominator else 0.0


# ---------------------------------------------------------------- CPU


class CpuSplit(Record, frozen=True, gc=False):
    """Percent of elapsed CPU time, as mpstat shows it (they add up to 100)."""

    user: float  # excluding guest
    nice: float  # excluding guest_nice
    system: float
    iowait: float
    irq: float
    softirq: float
    steal: float
    guest: float
    guest_nice: float
    idle: float

    @property
    def busy(self) -> float:
        """Utilisation for the USE method: everything but idle and iowait
        (iowait is idle time with I/O outstanding)."""
        return max(0.0, 100.0 - self.idle - self.iowait)


def cpu_split(prev: CpuTimes, cur: CpuTimes, warnings: list[str], what: str = "cpu") -> CpuSplit | None:
    """The CPU split between two /proc/stat readings, or None when no tick
    elapsed. A field that went backwards (iowait and idle can, on NO_HZ
    kernels) counts as 0 for this interval, with a warning, as mpstat does."""

    def d(name: str, p: int, c: int) -> int:
        if c < p:
            warnings.append(f"{what} {name} went backwards ({p} -> {c}), counted as 0")
            return 0
        return c - p

    user = d("user-guest", prev.user - prev.guest, cur.user - cur.guest)
    nice = d("nice-guest_nice", prev.nice - prev.guest_nice, cur.nice - cur.guest_nice)
    guest = d("guest", prev.guest, cur.guest)
    guest_nice = d("guest_nice", prev.guest_nice, cur.guest_nice)
    parts = {
        "system": d("system", prev.system, cur.system),
        "iowait": d("iowait", prev.iowait, cur.iowait),
        "irq": d("irq", prev.irq, cur.irq),
        "softirq": d("softirq", prev.softirq, cur.softirq),
        "steal": d("steal", prev.steal, cur.steal),
        "idle": d("idle", prev.idle, cur.idle),
    }
    total = user + nice + guest + guest_nice + sum(parts.values())
    if total <= 0:
        return None
    pct = 100.0 / total
    return CpuSplit(
        user=user * pct,
        nice=nice * pct,
        guest=guest * pct,
        guest_nice=guest_nice * pct,
        **{k: v * pct for k, v in parts.items()},
    )


# ---------------------------------------------------------------- disk


class DiskRates(Record, frozen=True, gc=False):
    """One device over the interval, named after iostat -x columns. d_* are
    None on kernels before 4.18, f_* before 5.5 (no such counters)."""

    name: str
    r_s: float | None
    w_s: float | None
    d_s: float | None
    f_s: float | None
    rkb_s: float | None
    wkb_s: float | None
    dkb_s: float | None
    rrqm_s: float | None
    wrqm_s: float | None
    drqm_s: float | None
    rrqm_pct: float | None
    wrqm_pct: float | None
    drqm_pct: float | None
    r_await_ms: float | None
    w_await_ms: float | None
    d_await_ms: float | None
    f_await_ms: float | None
    rareq_sz_kb: float | None
    wareq_sz_kb: float | None
    dareq_sz_kb: float | None
    aqu_sz: float | None
    util_pct: float | None
    in_flight: int  # at the end of the interval


def _merge_pct(merged: int | None, completed: int | None) -> float | None:
    if merged is None or completed is None:
        return None
    return _ratio(merged, merged + completed, 100.0)


def disk_rates(prev: DiskStat, cur: DiskStat, interval_s: float, warnings: list[str]) -> DiskRates:
    """iostat -x for one device (interval_s > 0)."""
    ds = Deltas(interval_s, warnings)
    n = cur.name

    def delta(field: str) -> int | None:
        return ds.delta(getattr(prev, field), getattr(cur, field), f"{n} {field}")

    reads, writes, discards, flushes = delta("reads"), delta("writes"), delta("discards"), delta("flushes")
    rmerged, wmerged, dmerged = delta("reads_merged"), delta("writes_merged"), delta("discards_merged")
    rsect, wsect, dsect = delta("sectors_read"), delta("sectors_written"), delta("sectors_discarded")
    io_ms, weighted_ms = delta("io_ms"), delta("weighted_io_ms")
    elapsed_ms = interval_s * 1000.0
    per_s = 1.0 / interval_s
    kb = SECTOR_BYTES / 1024.0
    util = _ratio(io_ms, elapsed_ms, 100.0)
    return DiskRates(
        name=n,
        r_s=_ratio(reads, 1.0, per_s),
        w_s=_ratio(writes, 1.0, per_s),
        d_s=_ratio(discards, 1.0, per_s),
        f_s=_ratio(flushes, 1.0, per_s),
        rkb_s=_ratio(rsect, 1.0, per_s * kb),
        wkb_s=_ratio(wsect, 1.0, per_s * kb),
        dkb_s=_ratio(dsect, 1.0, per_s * kb),
        rrqm_s=_ratio(rmerged, 1.0, per_s),
        wrqm_s=_ratio(wmerged, 1.0, per_s),
        drqm_s=_ratio(dmerged, 1.0, per_s),
        rrqm_pct=_merge_pct(rmerged, reads),
        wrqm_pct=_merge_pct(wmerged, writes),
        drqm_pct=_merge_pct(dmerged, discards),
        r_await_ms=_ratio(delta("read_ms"), reads),
        w_await_ms=_ratio(delta("write_ms"), writes),
        d_await_ms=_ratio(delta("discard_ms"), discards),
        f_await_ms=_ratio(delta("flush_ms"), flushes),
        rareq_sz_kb=_ratio(rsect, reads, kb),
        wareq_sz_kb=_ratio(wsect, writes, kb),
        dareq_sz_kb=_ratio(dsect, discards, kb),
        aqu_sz=_ratio(weighted_ms, elapsed_ms),
        util_pct=None if util is None else min(util, 100.0),
        in_flight=cur.in_flight,
    )


# ---------------------------------------------------------------- network


class NetDevRates(Record, frozen=True, gc=False):
    """Per-second rates of every /proc/net/dev counter of one interface."""

    name: str
    rx_bytes_s: float | None
    rx_packets_s: float | None
    rx_errors_s: float | None
    rx_dropped_s: float | None
    rx_fifo_s: float | None
    rx_frame_s: float | None
    rx_compressed_s: float | None
    rx_multicast_s: float | None
    tx_bytes_s: float | None
    tx_packets_s: float | None
    tx_errors_s: float | None
    tx_dropped_s: float | None
    tx_fifo_s: float | None
    tx_collisions_s: float | None
    tx_carrier_s: float | None
    tx_compressed_s: float | None


_NETDEV_COUNTERS = NetDevStat.__struct_fields__[1:]


def netdev_rates(prev: NetDevStat, cur: NetDevStat, interval_s: float, warnings: list[str]) -> NetDevRates:
    ds = Deltas(interval_s, warnings)
    rates = {
        f"{field}_s": ds.rate(getattr(prev, field), getattr(cur, field), f"{cur.name} {field}")
        for field in _NETDEV_COUNTERS
    }
    return NetDevRates(name=cur.name, **rates)


class TcpRates(Record, frozen=True, gc=False):
    active_opens_s: float | None  # connect()s
    passive_opens_s: float | None  # accept()s
    attempt_fails_s: float | None
    estab_resets_s: float | None
    in_segs_s: float | None
    out_segs_s: float | None
    retrans_segs_s: float | None
    in_errs_s: float | None
    out_rsts_s: float | None
    retransmit_pct: float | None  # RetransSegs delta / OutSegs delta * 100
    curr_estab: int | None  # a gauge, at the end of the interval
    listen_overflows_s: float | None  # TcpExt (netstat)
    listen_drops_s: float | None
    timeouts_s: float | None
    syn_retrans_s: float | None
    lost_retransmit_s: float | None
    backlog_drop_s: float | None


class UdpRates(Record, frozen=True, gc=False):
    in_datagrams_s: float | None
    out_datagrams_s: float | None
    no_ports_s: float | None
    in_errors_s: float | None
    rcvbuf_errors_s: float | None
    sndbuf_errors_s: float | None


def _proto_rate(ds: Deltas, prev: NetSnmp, cur: NetSnmp, proto: str, name: str) -> float | None:
    return ds.rate(prev.get(proto, name), cur.get(proto, name), f"{proto} {name}")


def tcp_rates(
    prev_snmp: NetSnmp,
    cur_snmp: NetSnmp,
    prev_netstat: NetSnmp | None,
    cur_netstat: NetSnmp | None,
    interval_s: float,
    warnings: list[str],
) -> TcpRates:
    ds = Deltas(interval_s, warnings)

    def snmp(name: str) -> float | None:
        return _proto_rate(ds, prev_snmp, cur_snmp, "Tcp", name)

    def ext(name: str) -> float | None:
        if prev_netstat is None or cur_netstat is None:
            return None
        return _proto_rate(ds, prev_netstat, cur_netstat, "TcpExt", name)

    retrans = ds.delta(
        prev_snmp.get("Tcp", "RetransSegs"), cur_snmp.get("Tcp", "RetransSegs"), "Tcp RetransSegs"
    )
    out = ds.delta(prev_snmp.get("Tcp", "OutSegs"), cur_snmp.get("Tcp", "OutSegs"), "Tcp OutSegs")
    if retrans is not None and out == 0:
        retransmit_pct = 0.0 if retrans == 0 else None  # nothing sent: no ratio
    else:
        retransmit_pct = _ratio(retrans, out, 100.0)
    return TcpRates(
        active_opens_s=snmp("ActiveOpens"),
        passive_opens_s=snmp("PassiveOpens"),
        attempt_fails_s=snmp("AttemptFails"),
        estab_resets_s=snmp("EstabResets"),
        in_segs_s=snmp("InSegs"),
        out_segs_s=snmp("OutSegs"),
        retrans_segs_s=snmp("RetransSegs"),
        in_errs_s=snmp("InErrs"),
        out_rsts_s=snmp("OutRsts"),
        retransmit_pct=retransmit_pct,
        curr_estab=cur_snmp.get("Tcp", "CurrEstab"),
        listen_overflows_s=ext("ListenOverflows"),
        listen_drops_s=ext("ListenDrops"),
        timeouts_s=ext("TCPTimeouts"),
        syn_retrans_s=ext("TCPSynRetrans"),
        lost_retransmit_s=ext("TCPLostRetransmit"),
        backlog_drop_s=ext("TCPBacklogDrop"),
    )


def udp_rates(prev: NetSnmp, cur: NetSnmp, interval_s: float, warnings: list[str]) -> UdpRates:
    ds = Deltas(interval_s, warnings)

    def udp(name: str) -> float | None:
        return _proto_rate(ds, prev, cur, "Udp", name)

    return UdpRates(
        in_datagrams_s=udp("InDatagrams"),
        out_datagrams_s=udp("OutDatagrams"),
        no_ports_s=udp("NoPorts"),
        in_errors_s=udp("InErrors"),
        rcvbuf_errors_s=udp("RcvbufErrors"),
        sndbuf_errors_s=udp("SndbufErrors"),
    )


class SoftnetCpuRates(Record, frozen=True, gc=False):
    processed_s: float | None
    dropped_s: float | None
    time_squeeze_s: float | None


class SoftnetRates(Record, frozen=True):
    processed_s: float | None  # all CPUs
    dropped_s: float | None
    time_squeeze_s: float | None
    per_cpu: dict[int, SoftnetCpuRates]


def _sum_rates(values: Iterable[float | None]) -> float | None:
    total = 0.0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def softnet_rates(
    prev: SoftnetStat, cur: SoftnetStat, interval_s: float, warnings: list[str]
) -> SoftnetRates:
    """Per CPU (matched by CPU number, so a CPU going offline is skipped),
    and their sum."""
    ds = Deltas(interval_s, warnings)
    before = {c.cpu: c for c in prev.cpus}
    per_cpu: dict[int, SoftnetCpuRates] = {}
    for c in cur.cpus:
        p = before.get(c.cpu)
        if p is None:
            continue
        per_cpu[c.cpu] = SoftnetCpuRates(
            processed_s=ds.rate(p.processed, c.processed, f"softnet cpu{c.cpu} processed"),
            dropped_s=ds.rate(p.dropped, c.dropped, f"softnet cpu{c.cpu} dropped"),
            time_squeeze_s=ds.rate(p.time_squeeze, c.time_squeeze, f"softnet cpu{c.cpu} time_squeeze"),
        )
    rates = per_cpu.values()
    return SoftnetRates(
        processed_s=_sum_rates(r.processed_s for r in rates),
        dropped_s=_sum_rates(r.dropped_s for r in rates),
        time_squeeze_s=_sum_rates(r.time_squeeze_s for r in rates),
        per_cpu=per_cpu,
    )


# ---------------------------------------------------------------- memory, PSI


class MemoryRates(Record, frozen=True, gc=False):
    """From /proc/vmstat, in the units of sar -B (pages/s unless said)."""

    faults_s: float | None  # minor + major (pgfault counts both)
    major_faults_s: float | None
    pgpgin_kb_s: float | None
    pgpgout_kb_s: float | None
    pswpin_s: float | None
    pswpout_s: float | None
    pgscan_kswapd_s: float | None
    pgscan_direct_s: float | None
    pgsteal_s: float | None
    vmeff_pct: float | None  # pgsteal / pgscan * 100; None when nothing was scanned
    allocstall_s: float | None
    oom_kills: int | None  # OOM kills during the interval (a count, not a rate)


def memory_rates(prev: VmStat, cur: VmStat, interval_s: float, warnings: list[str]) -> MemoryRates:
    ds = Deltas(interval_s, warnings)

    def r(field: str) -> float | None:
        return ds.rate(getattr(prev, field), getattr(cur, field), f"vmstat {field}")

    scanned = ds.delta(prev.pgscan, cur.pgscan, "vmstat pgscan")
    stolen = ds.delta(prev.pgsteal, cur.pgsteal, "vmstat pgsteal")
    vmeff = None if not scanned or stolen is None else min(100.0, stolen / scanned * 100.0)
    return MemoryRates(
        faults_s=r("pgfault"),
        major_faults_s=r("pgmajfault"),
        pgpgin_kb_s=r("pgpgin"),
        pgpgout_kb_s=r("pgpgout"),
        pswpin_s=r("pswpin"),
        pswpout_s=r("pswpout"),
        pgscan_kswapd_s=r("pgscan_kswapd"),
        pgscan_direct_s=r("pgscan_direct"),
        pgsteal_s=None if stolen is None else stolen / interval_s,
        vmeff_pct=vmeff,
        allocstall_s=r("allocstall"),
        oom_kills=ds.delta(prev.oom_kill, cur.oom_kill, "vmstat oom_kill"),
    )


class PressureRates(Record, frozen=True, gc=False):
    """Share of the interval (percent) in which some / all non-idle tasks
    were stalled, from the PSI "total" microsecond counters: exact for any
    window, unlike the kernel's fixed avg10/avg60/avg300."""

    some_pct: float | None
    full_pct: float | None


def pressure_rates(
    prev: Pressure, cur: Pressure, interval_s: float, what: str, warnings: list[str]
) -> PressureRates:
    ds = Deltas(interval_s, warnings)
    elapsed_us = interval_s * 1e6

    def pct(p: int | None, c: int | None, kind: str) -> float | None:
        stalled = ds.delta(p, c, f"{what} {kind} total")
        return None if stalled is None else min(100.0, stalled / elapsed_us * 100.0)

    full = None
    if prev.full is not None and cur.full is not None:
        full = pct(prev.full.total_us, cur.full.total_us, "full")
    return PressureRates(some_pct=pct(prev.some.total_us, cur.some.total_us, "some"), full_pct=full)


# ---------------------------------------------------------------- everything


class SystemRates(Record, frozen=True):
    """What changed between two snapshots. Sections whose files were missing
    in either snapshot are None (or empty)."""

    interval_s: float
    start_wall: float
    end_wall: float
    cpu: CpuSplit | None
    per_cpu: dict[int, CpuSplit]
    context_switches_s: float | None
    interrupts_s: float | None
    softirqs_s: float | None
    forks_s: float | None
    memory: MemoryRates | None
    disks: dict[str, DiskRates]
    interfaces: dict[str, NetDevRates]
    tcp: TcpRates | None
    udp: UdpRates | None
    softnet: SoftnetRates | None
    pressure: dict[str, PressureRates]  # "cpu", "memory", "io"
    warnings: Warnings = ()


def _stat_section(prev: SnapshotLike, cur: SnapshotLike, ds: Deltas) -> dict[str, object]:
    section: dict[str, object] = {
        "cpu": None,
        "per_cpu": {},
        "context_switches_s": None,
        "interrupts_s": None,
        "softirqs_s": None,
        "forks_s": None,
    }
    if prev.stat is None or cur.stat is None:
        return section
    p, c = prev.stat, cur.stat
    section["cpu"] = cpu_split(p.cpu, c.cpu, ds.warnings)
    section["per_cpu"] = {
        n: split
        for n, times in c.per_cpu.items()
        if n in p.per_cpu and (split := cpu_split(p.per_cpu[n], times, ds.warnings, f"cpu{n}")) is not None
    }
    section["context_switches_s"] = ds.rate(p.ctxt, c.ctxt, "ctxt")
    section["interrupts_s"] = ds.rate(p.intr, c.intr, "intr")
    section["softirqs_s"] = ds.rate(p.softirq, c.softirq, "softirq")
    section["forks_s"] = ds.rate(p.processes, c.processes, "processes")
    return section


def _disk_section(
    prev: SnapshotLike, cur: SnapshotLike, interval_s: float, warnings: list[str]
) -> dict[str, DiskRates]:
    if prev.diskstats is None or cur.diskstats is None:
        return {}
    before = prev.diskstats.devices
    return {
        name: disk_rates(before[name], stat, interval_s, warnings)
        for name, stat in cur.diskstats.devices.items()
        if name in before  # a device that just appeared has no rate yet
    }


def _net_section(
    prev: SnapshotLike, cur: SnapshotLike, interval_s: float, warnings: list[str]
) -> dict[str, NetDevRates]:
    if prev.net_dev is None or cur.net_dev is None:
        return {}
    before = prev.net_dev.interfaces
    return {
        name: netdev_rates(before[name], dev, interval_s, warnings)
        for name, dev in cur.net_dev.interfaces.items()
        if name in before
    }


def _pressure_section(
    prev: SnapshotLike, cur: SnapshotLike, interval_s: float, warnings: list[str]
) -> dict[str, PressureRates]:
    section: dict[str, PressureRates] = {}
    for resource in ("cpu", "memory", "io"):
        p_psi, c_psi = getattr(prev, f"psi_{resource}"), getattr(cur, f"psi_{resource}")
        if p_psi is not None and c_psi is not None:
            section[resource] = pressure_rates(p_psi, c_psi, interval_s, f"psi {resource}", warnings)
    return section


def system_rates(prev: SnapshotLike, cur: SnapshotLike) -> SystemRates | None:
    """Everything derived from two snapshots (Snapshot Structs or the
    sampler's lazy views), or None if no time elapsed
    between them (same sample, or a clock that did not move)."""
    interval_s = cur.t_mono - prev.t_mono
    if interval_s <= 0:
        return None
    warnings: list[str] = []
    stat = _stat_section(prev, cur, Deltas(interval_s, warnings))
    memory = None
    if prev.vmstat is not None and cur.vmstat is not None:
        memory = memory_rates(prev.vmstat, cur.vmstat, interval_s, warnings)
    tcp = udp = None
    if prev.snmp is not None and cur.snmp is not None:
        tcp = tcp_rates(prev.snmp, cur.snmp, prev.netstat, cur.netstat, interval_s, warnings)
        udp = udp_rates(prev.snmp, cur.snmp, interval_s, warnings)
    softnet = None
    if prev.softnet is not None and cur.softnet is not None:
        softnet = softnet_rates(prev.softnet, cur.softnet, interval_s, warnings)
    disks = _disk_section(prev, cur, interval_s, warnings)
    interfaces = _net_section(prev, cur, interval_s, warnings)
    pressure = _pressure_section(prev, cur, interval_s, warnings)
    return SystemRates(
        interval_s=interval_s,
        start_wall=prev.t_wall,
        end_wall=cur.t_wall,
        memory=memory,
        disks=disks,
        interfaces=interfaces,
        tcp=tcp,
        udp=udp,
        softnet=softnet,
        pressure=pressure,
        warnings=tuple(warnings),
        **stat,  # type: ignore[arg-type]
    )
