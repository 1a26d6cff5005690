"""The USE metrics, each a pure function of two samples (older, newer) or of
one, so that the same formula serves the check over a window and the walk
back through the ring that says since when a state has held.

Samples are procfs.SnapshotLike (the sampler's lazy views or Snapshot
Structs); the formulas come from procfs.derive (sysstat's).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..procfs.derive import Deltas, DiskRates, cpu_split, disk_rates, netdev_rates, pressure_rates
from ..procfs.snapshot import SnapshotLike

PSI_RESOURCES = ("cpu", "memory", "io")


def _interval(older: SnapshotLike, newer: SnapshotLike) -> float | None:
    interval = newer.t_mono - older.t_mono
    return interval if interval > 0 else None


def cpu_busy_pct(older: SnapshotLike, newer: SnapshotLike) -> float | None:
    """100 - idle - iowait, as mpstat's columns give it."""
    if older.stat is None or newer.stat is None:
        return None
    split = cpu_split(older.stat.cpu, newer.stat.cpu, [])
    return None if split is None else split.busy


def run_queue(sample: SnapshotLike) -> int | None:
    """Runnable tasks (running or waiting for a CPU) at this sample, not
    counting the sampler that was reading /proc/stat at that moment (as
    sar -q does for itself)."""
    if sample.stat is None or sample.stat.procs_running is None:
        return None
    return max(0, sample.stat.procs_running - 1)


def mean_run_queue(samples: Iterable[SnapshotLike]) -> tuple[float | None, int | None]:
    """(mean, max) of run_queue over samples."""
    values = [v for v in (run_queue(s) for s in samples) if v is not None]
    if not values:
        return None, None
    return sum(values) / len(values), max(values)


def psi_share(older: SnapshotLike, newer: SnapshotLike, resource: str, kind: str) -> float | None:
    """Percent of the interval in which some (or all) non-idle tasks were
    stalled on resource, from the PSI total counters. System-wide CPU "full"
    is not defined (the kernel prints zeros): None."""
    if resource == "cpu" and kind == "full":
        return None
    interval = _interval(older, newer)
    prev, cur = getattr(older, f"psi_{resource}"), getattr(newer, f"psi_{resource}")
    if interval is None or prev is None or cur is None:
        return None
    rates = pressure_rates(prev, cur, interval, f"psi {resource}", [])
    return rates.some_pct if kind == "some" else rates.full_pct


def mem_available_pct(sample: SnapshotLike) -> float | None:
    m = sample.meminfo
    if m is None or not m.mem_total or m.mem_available is None:
        return None
    return m.mem_available / m.mem_total * 100.0


def swap_used_pct(sample: SnapshotLike) -> float | None:
    """None without swap (nothing to judge)."""
    m = sample.meminfo
    if m is None or not m.swap_total or m.swap_free is None:
        return None
    return max(0, m.swap_total - m.swap_free) / m.swap_total * 100.0


def _disk_pair(older: SnapshotLike, newer: SnapshotLike, device: str) -> DiskRates | None:
    interval = _interval(older, newer)
    if interval is None or older.diskstats is None or newer.diskstats is None:
        return None
    prev, cur = older.diskstats.devices.get(device), newer.diskstats.devices.get(device)
    if prev is None or cur is None:
        return None
    return disk_rates(prev, cur, interval, [])


def disk_util_pct(older: SnapshotLike, newer: SnapshotLike, device: str) -> float | None:
    rates = _disk_pair(older, newer, device)
    return None if rates is None else rates.util_pct


def disk_queue(older: SnapshotLike, newer: SnapshotLike, device: str) -> float | None:
    rates = _disk_pair(older, newer, device)
    return None if rates is None else rates.aqu_sz


def interface_drops_s(older: SnapshotLike, newer: SnapshotLike, interface: str) -> float | None:
    """rx + tx dropped per second (the driver's and the stack's drops as
    /proc/net/dev counts them; sar -n EDEV rxdrop/s + txdrop/s)."""
    interval = _interval(older, newer)
    if interval is None or older.net_dev is None or newer.net_dev is None:
        return None
    prev, cur = older.net_dev.interfaces.get(interface), newer.net_dev.interfaces.get(interface)
    if prev is None or cur is None:
        return None
    rates = netdev_rates(prev, cur, interval, [])
    if rates.rx_dropped_s is None or rates.tx_dropped_s is None:
        return None
    return rates.rx_dropped_s + rates.tx_dropped_s


def softnet_drops_s(older: SnapshotLike, newer: SnapshotLike) -> float | None:
    """Packets dropped because a CPU's input backlog was full, per second."""
    interval = _interval(older, newer)
    if interval is None or older.softnet is None or newer.softnet is None:
        return None
    before = {c.cpu: c.dropped for c in older.softnet.cpus}
    total = 0
    for c in newer.softnet.cpus:
        prev = before.get(c.cpu)
        if prev is not None and c.dropped >= prev:
            total += c.dropped - prev
    return total / interval


def tcp_retransmits(older: SnapshotLike, newer: SnapshotLike) -> tuple[float | None, int | None, int | None]:
    """(retransmit %, OutSegs delta, RetransSegs delta): RetransSegs / OutSegs,
    as nstat and sar -n ETCP compute it."""
    if older.snmp is None or newer.snmp is None:
        return None, None, None
    ds = Deltas(1.0, [])
    retrans = ds.delta(older.snmp.get("Tcp", "RetransSegs"), newer.snmp.get("Tcp", "RetransSegs"), "retrans")
    out = ds.delta(older.snmp.get("Tcp", "OutSegs"), newer.snmp.get("Tcp", "OutSegs"), "out")
    if retrans is None or out is None:
        return None, out, retrans
    return (retrans / out * 100.0 if out else 0.0), out, retrans


def retransmit_pct(older: SnapshotLike, newer: SnapshotLike, min_segments: int) -> float | None:
    """The retransmit % when at least min_segments were sent (a handful of
    segments gives a percentage that means nothing), else None."""
    pct, out, _ = tcp_retransmits(older, newer)
    if out is None or out < min_segments:
        return None
    return pct


def per_cpu_busy(older: SnapshotLike, newer: SnapshotLike) -> dict[int, float] | None:
    """Each online CPU's utilisation (100 - idle - iowait) over the pair, as
    mpstat -P ALL; None without /proc/stat in either sample."""
    if older.stat is None or newer.stat is None:
        return None
    out: dict[int, float] = {}
    for n, times in newer.stat.per_cpu.items():
        prev = older.stat.per_cpu.get(n)
        if prev is None:
            continue
        split = cpu_split(prev, times, [], f"cpu{n}")
        if split is not None:
            out[n] = split.busy
    return out


def hot_cpu(older: SnapshotLike, newer: SnapshotLike) -> tuple[int, float, float] | None:
    """(busiest CPU, its busy %, the mean busy % of the other CPUs), or None
    with fewer than two CPUs' figures."""
    busy = per_cpu_busy(older, newer)
    if not busy or len(busy) < 2:
        return None
    cpu = max(busy, key=lambda n: (busy[n], -n))
    others = [v for n, v in busy.items() if n != cpu]
    return cpu, busy[cpu], sum(others) / len(others)


def cpu_steal_pct(older: SnapshotLike, newer: SnapshotLike) -> float | None:
    if older.stat is None or newer.stat is None:
        return None
    split = cpu_split(older.stat.cpu, newer.stat.cpu, [])
    return None if split is None else split.steal


VMSTAT_RATES = {
    "swap_in": "pswpin",
    "swap_out": "pswpout",
    "direct_reclaim_scan": "pgscan_direct",
    "allocstall": "allocstall",
    "major_faults": "pgmajfault",
}


def vmstat_rate(older: SnapshotLike, newer: SnapshotLike, field: str) -> float | None:
    """Per-second rate of one /proc/vmstat counter (a typed VmStat field,
    per-zone variants summed); None when either sample lacks it or it went
    backwards."""
    interval = _interval(older, newer)
    if interval is None or older.vmstat is None or newer.vmstat is None:
        return None
    a, b = getattr(older.vmstat, field), getattr(newer.vmstat, field)
    if a is None or b is None or b < a:
        return None
    return (b - a) / interval


def disk_await(older: SnapshotLike, newer: SnapshotLike, device: str) -> tuple[float | None, int | None]:
    """(mean ms per completed read or write, completed reads + writes) over
    the pair: iostat's classic await, (read_ms + write_ms) / (reads + writes)."""
    if older.diskstats is None or newer.diskstats is None:
        return None, None
    a, b = older.diskstats.devices.get(device), newer.diskstats.devices.get(device)
    if a is None or b is None:
        return None, None
    ios = (b.reads - a.reads) + (b.writes - a.writes)
    ms = (b.read_ms - a.read_ms) + (b.write_ms - a.write_ms)
    if ios < 0 or ms < 0:
        return None, None
    return (ms / ios if ios else 0.0), ios
