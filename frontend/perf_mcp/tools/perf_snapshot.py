"""perf_snapshot: the whole machine at a glance, from the background sampler.

count = 1: answers at once from the sampler's ring: one fully detailed window
of interval_s (per device, per interface, TCP, PSI, gauges), and compact trends
over 1 s, 10 s and 60 s (CPU, run queue, faults, disk and network totals,
retransmits, PSI), so a client sees direction without three full copies. Each
window says its actual length, which is shorter than asked while the server
is younger than the window. interval_s below the sampler's 1 s is measured
directly (two reads interval_s apart). Right after start-up it waits for the
ring's second sample (one interval).

count > 1: a series of count intervals of interval_s each, read directly
from procfs on its own schedule (the ring keeps its fixed 1 Hz), with a
progress notification per interval; cancelling the call stops it.

Figures are computed as sysstat computes them (procfs.derive): CPU split as
mpstat, per-device rows as iostat -x, interfaces as sar -n DEV (kB = 1024
bytes), TCP retransmit % as nstat (RetransSegs / OutSegs). Point-in-time
values (load, memory, PSI averages, runnable tasks) are the gauges of the
window's last sample.

Devices listed: every device that did I/O in the window (disk_totals still sum
the whole disks of /sys/block, except idle loop, ram and nbd devices);
data.windows[].devices_omitted counts the idle ones left out. This module registers the background sampler service
(tools/_sampler_service.py), which other tools use too, and the process table
service (procfs/attribution.py) behind data.processes.

Say less: data.summary is one line (the headline and the top processes); every
counter that is zero is left out (omit_defaults; the schema's default 0 says so;
null means it could not be measured); devices and interfaces without activity
are counted, not listed; a trend whose actual window equals one already shown
(the 1 s trend is the detailed 1 s window; 60 s equals 10 s while the server is
young) is left out; process rankings list only processes above small floors
(processes_section).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from typing import Annotated, Literal

import msgspec
import trio
from msgspec import Meta

from ..procfs import SYSTEM_FILES, Sampler, SampleView, SnapshotLike, SystemRates, system_rates
from ..procfs.attribution import Attribution, ProcessRow, attribute, process_table_service
from ..procfs.derive import CpuSplit, DiskRates, NetDevRates
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..use.metrics import mean_run_queue
from ._sampler_service import SAMPLER_SERVICE, system_sampler

NAME = "perf_snapshot"
STANDARD_WINDOWS_S = (1.0, 10.0, 60.0)
KB = 1024.0
VIRTUAL_DISK_PREFIXES = ("loop", "ram", "nbd")


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    include_per_cpu: Annotated[bool, Meta(description="Add the CPU split of every CPU.")] = False
    include_per_device: Annotated[bool, Meta(
        description="Add one iostat -x row per block device (otherwise only the totals).")] = True
    include_psi: Annotated[bool, Meta(description="Add pressure stall information (cpu, memory, io).")] = True
    interval_s: Annotated[float, Meta(ge=0.1, le=60, description=(
        "count=1: an extra rate window of this length besides 1/10/60 s (below 1 s it is measured directly). "
        "count>1: the length of each interval of the series."))] = 1.0
    count: Annotated[int, Meta(ge=1, le=60, description=(
        "1: answer at once from the background sampler; >1: a series of count intervals of interval_s."))] = 1
    include_processes: Annotated[bool, Meta(
        description="Add the top processes by CPU, memory, disk read, disk write and fds (pid, user, command, "
                    "cgroup).")] = True
    top_n: Annotated[int, Meta(ge=1, le=50, description="Processes per ranking.")] = 5


# ---------------------------------------------------------------- output


class CpuPct(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Percent of CPU time, as mpstat (they add up to 100); busy = 100 - idle - iowait."""

    busy: float = 0.0
    user: float = 0.0
    nice: float = 0.0
    system: float = 0.0
    iowait: float = 0.0
    irq: float = 0.0
    softirq: float = 0.0
    steal: float = 0.0
    guest: float = 0.0
    idle: float = 0.0


class PerCpuPct(CpuPct, kw_only=True):
    cpu: int


class MemoryActivity(msgspec.Struct, kw_only=True, omit_defaults=True):
    """From /proc/vmstat, per second (sar -B units)."""

    faults_s: float | None = 0.0
    major_faults_s: float | None = 0.0
    pgpgin_kb_s: float | None = 0.0
    pgpgout_kb_s: float | None = 0.0
    swap_in_pages_s: float | None = 0.0
    swap_out_pages_s: float | None = 0.0
    pgscan_kswapd_s: float | None = 0.0
    pgscan_direct_s: float | None = 0.0
    pgsteal_s: float | None = 0.0
    allocstall_s: float | None = 0.0
    oom_kills: int | None = 0


class DiskRow(msgspec.Struct, kw_only=True):
    """One block device, named after the iostat -x columns."""

    device: str
    r_s: float | None
    w_s: float | None
    d_s: float | None
    f_s: float | None
    rkb_s: float | None
    wkb_s: float | None
    dkb_s: float | None
    rrqm_s: float | None
    wrqm_s: float | None
    r_await_ms: float | None
    w_await_ms: float | None
    d_await_ms: float | None
    f_await_ms: float | None
    rareq_sz_kb: float | None
    wareq_sz_kb: float | None
    aqu_sz: float | None
    util_pct: float | None
    in_flight: int


class DiskTotals(msgspec.Struct, kw_only=True, omit_defaults=True):
    devices: int = 0  # shown (whole disks and devices with I/O)
    r_s: float = 0.0
    w_s: float = 0.0
    rkb_s: float = 0.0
    wkb_s: float = 0.0
    busiest_device: str | None = None
    busiest_util_pct: float | None = 0.0


class InterfaceRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One interface, as sar -n DEV and sar -n EDEV (kB = 1024 bytes)."""

    interface: str
    rxpck_s: float | None = 0.0
    txpck_s: float | None = 0.0
    rxkb_s: float | None = 0.0
    txkb_s: float | None = 0.0
    rx_errors_s: float | None = 0.0
    tx_errors_s: float | None = 0.0
    rx_drops_s: float | None = 0.0
    tx_drops_s: float | None = 0.0


class TcpActivity(msgspec.Struct, kw_only=True, omit_defaults=True):
    active_opens_s: float | None = 0.0
    passive_opens_s: float | None = 0.0
    attempt_fails_s: float | None = 0.0
    estab_resets_s: float | None = 0.0
    out_rsts_s: float | None = 0.0
    in_segs_s: float | None = 0.0
    out_segs_s: float | None = 0.0
    retrans_segs_s: float | None = 0.0
    retransmit_pct: float | None = 0.0
    curr_estab: int | None = 0
    listen_overflows_s: float | None = 0.0
    listen_drops_s: float | None = 0.0
    timeouts_s: float | None = 0.0


class SoftnetActivity(msgspec.Struct, kw_only=True, omit_defaults=True):
    processed_s: float | None = 0.0
    dropped_s: float | None = 0.0
    time_squeeze_s: float | None = 0.0


class PsiShare(msgspec.Struct, kw_only=True):
    """Percent of the window in which some / all non-idle tasks stalled (from
    the PSI totals; exact for the window)."""

    some_pct: float | None
    full_pct: float | None


class PsiNow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The kernel's decaying averages at the window's end (percent)."""

    some_avg10: float = 0.0
    some_avg60: float = 0.0
    some_avg300: float = 0.0
    full_avg10: float | None = 0.0
    full_avg60: float | None = 0.0
    full_avg300: float | None = 0.0


class MemoryNow(msgspec.Struct, kw_only=True, omit_defaults=True):
    total_bytes: int | None = 0
    available_bytes: int | None = 0
    available_pct: float | None = 0.0
    free_bytes: int | None = 0
    buffers_bytes: int | None = 0
    cached_bytes: int | None = 0
    dirty_bytes: int | None = 0
    writeback_bytes: int | None = 0
    anon_bytes: int | None = 0
    slab_bytes: int | None = 0
    swap_total_bytes: int | None = 0
    swap_used_bytes: int | None = 0
    swap_used_pct: float | None = 0.0


class Gauges(msgspec.Struct, kw_only=True, omit_defaults=True):
    time: str  # the sample's wall time, UTC ISO 8601
    load1: float | None = 0.0
    load5: float | None = 0.0
    load15: float | None = 0.0
    procs_running: int | None = 0  # /proc/stat, includes the reader itself
    procs_blocked: int | None = 0  # in uninterruptible sleep (usually I/O)
    run_queue: int | None = 0  # procs_running - 1: runnable tasks besides the sampler (as sar -q)
    threads: int | None = 0
    memory: MemoryNow | None = None
    psi: dict[str, PsiNow] | None = None


class SnapDiskRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One block device, named after the iostat -x columns (zero columns left out)."""

    device: str
    r_s: float | None = 0.0
    w_s: float | None = 0.0
    d_s: float | None = 0.0
    f_s: float | None = 0.0
    rkb_s: float | None = 0.0
    wkb_s: float | None = 0.0
    dkb_s: float | None = 0.0
    rrqm_s: float | None = 0.0
    wrqm_s: float | None = 0.0
    r_await_ms: float | None = 0.0
    w_await_ms: float | None = 0.0
    d_await_ms: float | None = 0.0
    f_await_ms: float | None = 0.0
    rareq_sz_kb: float | None = 0.0
    wareq_sz_kb: float | None = 0.0
    aqu_sz: float | None = 0.0
    util_pct: float | None = 0.0
    in_flight: int = 0


class SnapPsi(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Percent of the window in which some / all non-idle tasks stalled (PSI totals; exact for the window)."""

    some_pct: float | None = 0.0
    full_pct: float | None = 0.0  # absent for cpu too (undefined system-wide)


class Window(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Zero counters are left out (absent = 0; null = could not be measured). Idle devices and
    interfaces are counted, not listed."""

    requested_s: float
    interval_s: float  # actual length
    start: str
    end: str
    source: Literal["ring", "direct"]  # the sampler's ring, or reads on the call's own schedule
    cpu: CpuPct | None = None
    per_cpu: list[PerCpuPct] | None = None
    context_switches_s: float | None = 0.0
    interrupts_s: float | None = 0.0
    forks_s: float | None = 0.0
    memory: MemoryActivity | None = None
    disk_totals: DiskTotals
    disks: list[SnapDiskRow] | None = None  # devices with I/O in the window
    devices_omitted: int = 0  # idle devices (whole disks and partitions) not listed
    interfaces: list[InterfaceRow] = []  # interfaces with traffic, drops or errors in the window
    interfaces_idle: int = 0
    tcp: TcpActivity | None = None
    softnet: SoftnetActivity | None = None
    psi: dict[str, SnapPsi] | None = None  # resources with a stall in the window
    gauges: Gauges


class Trend(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The headline figures over one window of the ring."""

    requested_s: float
    interval_s: float  # actual length
    cpu_busy: float | None = 0.0
    cpu_user: float | None = 0.0
    cpu_system: float | None = 0.0
    cpu_iowait: float | None = 0.0
    cpu_steal: float | None = 0.0
    run_queue_mean: float | None = 0.0  # mean of procs_running - 1 over the window's samples
    context_switches_s: float | None = 0.0
    interrupts_s: float | None = 0.0
    faults_s: float | None = 0.0
    major_faults_s: float | None = 0.0
    swap_pages_s: float | None = 0.0  # in + out
    disk_r_s: float = 0.0
    disk_w_s: float = 0.0
    disk_rkb_s: float = 0.0
    disk_wkb_s: float = 0.0
    busiest_disk: str | None = None
    busiest_disk_util_pct: float | None = 0.0
    busiest_disk_aqu_sz: float | None = 0.0
    net_rxkb_s: float = 0.0  # every interface but lo
    net_txkb_s: float = 0.0
    net_drops_s: float = 0.0  # every interface, rx + tx
    tcp_retransmit_pct: float | None = 0.0
    psi_some_pct: dict[str, float | None] | None = None  # cpu, memory, io
    psi_full_pct: dict[str, float | None] | None = None  # memory, io


class SamplerInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    interval_s: float
    samples: int
    history_s: float


class ProcessEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    pid: int
    user: str
    command: str  # command line, capped
    cgroup: str | None = None  # absent: the root cgroup
    cpu_pct: float = 0.0  # % of one CPU over the processes' window
    rss_mb: float = 0.0
    read_bps: float | None = 0.0  # bytes/s reaching storage (/proc/PID/io); null: not visible to this user
    write_bps: float | None = 0.0
    fds: int | None = 0


class Processes(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Top processes; each ranking lists pids into ``rows`` (one row per process). Listed: CPU >= 1%,
    disk >= 4 KiB/s, RSS >= 0.5% of RAM and fds >= 64 (the first of those two always)."""

    window_s: float
    rows: list[ProcessEntry]
    cpu: list[int] = []  # pids by CPU %, highest first (>= 0.5%)
    memory: list[int] = []  # by RSS
    disk_read: list[int] = []  # by read bytes/s (>= 1 KiB/s)
    disk_write: list[int] = []
    fds: list[int] = []
    notes: list[str] = []  # what could not be seen and why


class SnapshotData(msgspec.Struct, kw_only=True, omit_defaults=True):
    summary: str  # one line: the headline
    mode: Literal["windows", "series"]
    method: str
    cpus: int
    sampler: SamplerInfo | None = None
    windows: list[Window]  # count=1: the one detailed window of interval_s; count>1: the series
    trends: list[Trend] = []  # count=1: 10 s and 60 s (and 1 s when interval_s is not 1), those distinct
    processes: Processes | None = None


# ---------------------------------------------------------------- building (pure)


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def iso(t_wall: float) -> str:
    return _dt.datetime.fromtimestamp(t_wall, _dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def cpu_pct(split: CpuSplit) -> CpuPct:
    return CpuPct(busy=round(split.busy, 2), user=round(split.user, 2), nice=round(split.nice, 2),
                  system=round(split.system, 2), iowait=round(split.iowait, 2), irq=round(split.irq, 2),
                  softirq=round(split.softirq, 2), steal=round(split.steal, 2),
                  guest=round(split.guest + split.guest_nice, 2), idle=round(split.idle, 2))


def disk_row(d: DiskRates) -> DiskRow:
    return DiskRow(
        device=d.name, r_s=_r(d.r_s), w_s=_r(d.w_s), d_s=_r(d.d_s), f_s=_r(d.f_s), rkb_s=_r(d.rkb_s),
        wkb_s=_r(d.wkb_s), dkb_s=_r(d.dkb_s), rrqm_s=_r(d.rrqm_s), wrqm_s=_r(d.wrqm_s),
        r_await_ms=_r(d.r_await_ms, 3), w_await_ms=_r(d.w_await_ms, 3), d_await_ms=_r(d.d_await_ms, 3),
        f_await_ms=_r(d.f_await_ms, 3), rareq_sz_kb=_r(d.rareq_sz_kb), wareq_sz_kb=_r(d.wareq_sz_kb),
        aqu_sz=_r(d.aqu_sz, 3), util_pct=_r(d.util_pct), in_flight=d.in_flight,
    )


def did_io(d: DiskRates) -> bool:
    return any((v or 0) > 0 for v in (d.r_s, d.w_s, d.d_s, d.f_s, d.util_pct)) or d.in_flight > 0


def shown_devices(disks: dict[str, DiskRates], whole_disks: frozenset[str]) -> list[DiskRates]:
    """Devices with I/O in the window, plus whole disks that are not idle loop/ram/nbd devices."""
    out = []
    for name in sorted(disks):
        d = disks[name]
        if did_io(d) or (name in whole_disks and not name.startswith(VIRTUAL_DISK_PREFIXES)):
            out.append(d)
    return out


def disk_totals(rows: list[DiskRates], whole_disks: frozenset[str]) -> DiskTotals:
    """Totals over whole disks only (a partition's I/O is inside its disk's)."""
    disks = [d for d in rows if d.name in whole_disks] or rows
    busiest = max(disks, key=lambda d: d.util_pct or 0.0, default=None)
    return DiskTotals(
        devices=len(rows),
        r_s=round(sum(d.r_s or 0 for d in disks), 2), w_s=round(sum(d.w_s or 0 for d in disks), 2),
        rkb_s=round(sum(d.rkb_s or 0 for d in disks), 2), wkb_s=round(sum(d.wkb_s or 0 for d in disks), 2),
        busiest_device=busiest.name if busiest else None,
        busiest_util_pct=_r(busiest.util_pct) if busiest else None,
    )


def interface_row(n: NetDevRates) -> InterfaceRow:
    def kb(v: float | None) -> float | None:
        return None if v is None else round(v / KB, 2)

    return InterfaceRow(interface=n.name, rxpck_s=_r(n.rx_packets_s), txpck_s=_r(n.tx_packets_s),
                        rxkb_s=kb(n.rx_bytes_s), txkb_s=kb(n.tx_bytes_s), rx_errors_s=_r(n.rx_errors_s),
                        tx_errors_s=_r(n.tx_errors_s), rx_drops_s=_r(n.rx_dropped_s),
                        tx_drops_s=_r(n.tx_dropped_s))


def gauges(s: SnapshotLike, include_psi: bool) -> Gauges:
    stat, load, m = s.stat, s.loadavg, s.meminfo
    memory = None
    if m is not None:
        swap_used = None if m.swap_total is None or m.swap_free is None else max(0, m.swap_total - m.swap_free)
        memory = MemoryNow(
            total_bytes=m.mem_total, available_bytes=m.mem_available,
            available_pct=_r(m.mem_available / m.mem_total * 100) if m.mem_total and m.mem_available is not None
            else None,
            free_bytes=m.mem_free, buffers_bytes=m.buffers, cached_bytes=m.cached, dirty_bytes=m.dirty,
            writeback_bytes=m.writeback, anon_bytes=m.anon_pages, slab_bytes=m.slab,
            swap_total_bytes=m.swap_total, swap_used_bytes=swap_used,
            swap_used_pct=_r(swap_used / m.swap_total * 100) if swap_used is not None and m.swap_total else
            (0.0 if m.swap_total == 0 else None),
        )
    psi: dict[str, PsiNow] | None = None
    if include_psi:
        psi = {}
        for resource in ("cpu", "memory", "io"):
            p = getattr(s, f"psi_{resource}")
            if p is None:
                continue
            full = p.full if resource != "cpu" else None  # system-wide cpu "full" is undefined (zeros)
            now = PsiNow(some_avg10=p.some.avg10, some_avg60=p.some.avg60, some_avg300=p.some.avg300,
                         full_avg10=full.avg10 if full else 0.0, full_avg60=full.avg60 if full else 0.0,
                         full_avg300=full.avg300 if full else 0.0)
            if now != PsiNow():  # all zero: left out
                psi[resource] = now
        psi = psi or None
    running = stat.procs_running if stat else None
    return Gauges(
        time=iso(s.t_wall), load1=load.load1 if load else None, load5=load.load5 if load else None,
        load15=load.load15 if load else None, procs_running=running,
        procs_blocked=stat.procs_blocked if stat else None,
        run_queue=max(0, running - 1) if running is not None else None,
        threads=load.threads if load else None, memory=memory, psi=psi,
    )


Source = Literal["ring", "direct"]


def build_window(rates: SystemRates, newer: SnapshotLike, p: Params, requested_s: float, source: Source,
                 whole_disks: frozenset[str]) -> Window:
    mem = rates.memory
    memory = None if mem is None else MemoryActivity(
        faults_s=_r(mem.faults_s), major_faults_s=_r(mem.major_faults_s), pgpgin_kb_s=_r(mem.pgpgin_kb_s),
        pgpgout_kb_s=_r(mem.pgpgout_kb_s), swap_in_pages_s=_r(mem.pswpin_s), swap_out_pages_s=_r(mem.pswpout_s),
        pgscan_kswapd_s=_r(mem.pgscan_kswapd_s), pgscan_direct_s=_r(mem.pgscan_direct_s),
        pgsteal_s=_r(mem.pgsteal_s), allocstall_s=_r(mem.allocstall_s), oom_kills=mem.oom_kills,
    )
    shown = shown_devices(rates.disks, whole_disks)
    active = [d for d in shown if did_io(d)]
    interfaces = [interface_row(n) for _, n in sorted(rates.interfaces.items())]
    t = rates.tcp
    tcp = None if t is None else TcpActivity(
        active_opens_s=_r(t.active_opens_s), passive_opens_s=_r(t.passive_opens_s),
        attempt_fails_s=_r(t.attempt_fails_s), estab_resets_s=_r(t.estab_resets_s), out_rsts_s=_r(t.out_rsts_s),
        in_segs_s=_r(t.in_segs_s), out_segs_s=_r(t.out_segs_s), retrans_segs_s=_r(t.retrans_segs_s),
        retransmit_pct=_r(t.retransmit_pct, 3), curr_estab=t.curr_estab,
        listen_overflows_s=_r(t.listen_overflows_s), listen_drops_s=_r(t.listen_drops_s),
        timeouts_s=_r(t.timeouts_s),
    )
    sn = rates.softnet
    softnet = None if sn is None else SoftnetActivity(processed_s=_r(sn.processed_s), dropped_s=_r(sn.dropped_s),
                                                      time_squeeze_s=_r(sn.time_squeeze_s))
    psi = None
    if p.include_psi:
        psi = {k: SnapPsi(some_pct=_r(v.some_pct), full_pct=0.0 if k == "cpu" else _r(v.full_pct))
               for k, v in rates.pressure.items()}
        psi = {k: v for k, v in psi.items() if v != SnapPsi()} or None
    per_cpu = None
    if p.include_per_cpu:
        per_cpu = [PerCpuPct(cpu=n, **msgspec.structs.asdict(cpu_pct(s))) for n, s in sorted(rates.per_cpu.items())]
    return Window(
        requested_s=requested_s, interval_s=round(rates.interval_s, 3), start=iso(rates.start_wall),
        end=iso(rates.end_wall), source=source,
        cpu=cpu_pct(rates.cpu) if rates.cpu else None, per_cpu=per_cpu,
        context_switches_s=_r(rates.context_switches_s), interrupts_s=_r(rates.interrupts_s),
        forks_s=_r(rates.forks_s), memory=memory, disk_totals=disk_totals(shown, whole_disks),
        disks=[SnapDiskRow(**msgspec.structs.asdict(disk_row(d))) for d in active] if p.include_per_device else None,
        devices_omitted=len(rates.disks) - len(active),
        interfaces=[row for row in interfaces if row != InterfaceRow(interface=row.interface)],
        interfaces_idle=sum(row == InterfaceRow(interface=row.interface) for row in interfaces),
        tcp=None if tcp == TcpActivity() else tcp, softnet=None if softnet == SoftnetActivity() else softnet,
        psi=psi, gauges=gauges(newer, p.include_psi),
    )


def build_trend(rates: SystemRates, requested_s: float, run_queue_mean: float | None, include_psi: bool,
                whole_disks: frozenset[str]) -> Trend:
    cpu, mem = rates.cpu, rates.memory
    shown = shown_devices(rates.disks, whole_disks)
    totals = disk_totals(shown, whole_disks)
    busiest = rates.disks.get(totals.busiest_device) if totals.busiest_device else None
    nets = [n for name, n in rates.interfaces.items() if name != "lo"]
    drops = sum((n.rx_dropped_s or 0) + (n.tx_dropped_s or 0) for n in rates.interfaces.values())
    swap = None
    if mem is not None and mem.pswpin_s is not None and mem.pswpout_s is not None:
        swap = mem.pswpin_s + mem.pswpout_s
    some = full = None
    if include_psi:  # stalls only (absent: none in the window)
        some = {k: _r(v.some_pct) for k, v in rates.pressure.items() if v.some_pct != 0} or None
        full = {k: _r(v.full_pct) for k, v in rates.pressure.items() if k != "cpu" and v.full_pct != 0} or None
    return Trend(
        requested_s=requested_s, interval_s=round(rates.interval_s, 3),
        cpu_busy=_r(cpu.busy) if cpu else None, cpu_user=_r(cpu.user) if cpu else None,
        cpu_system=_r(cpu.system) if cpu else None, cpu_iowait=_r(cpu.iowait) if cpu else None,
        cpu_steal=_r(cpu.steal) if cpu else None, run_queue_mean=_r(run_queue_mean),
        context_switches_s=_r(rates.context_switches_s), interrupts_s=_r(rates.interrupts_s),
        faults_s=_r(mem.faults_s) if mem else None, major_faults_s=_r(mem.major_faults_s) if mem else None,
        swap_pages_s=_r(swap), disk_r_s=totals.r_s, disk_w_s=totals.w_s, disk_rkb_s=totals.rkb_s,
        disk_wkb_s=totals.wkb_s, busiest_disk=totals.busiest_device, busiest_disk_util_pct=totals.busiest_util_pct,
        busiest_disk_aqu_sz=_r(busiest.aqu_sz, 3) if busiest else None,
        net_rxkb_s=round(sum(n.rx_bytes_s or 0 for n in nets) / KB, 2),
        net_txkb_s=round(sum(n.tx_bytes_s or 0 for n in nets) / KB, 2), net_drops_s=round(drops, 2),
        tcp_retransmit_pct=_r(rates.tcp.retransmit_pct, 3) if rates.tcp else None,
        psi_some_pct=some, psi_full_pct=full,
    )


# ---------------------------------------------------------------- collection


def whole_disk_names() -> frozenset[str]:
    """Whole disks (not partitions): the entries of /sys/block. sysfs spells
    a "/" in a device name as "!", /proc/diskstats as "/"."""
    try:
        return frozenset(name.replace("!", "/") for name in os.listdir("/sys/block"))
    except OSError:
        return frozenset()


def ring_run_queue(sampler: Sampler, rates: SystemRates) -> float | None:
    """Mean run queue over the ring's samples inside a window (parses only /proc/stat)."""
    samples = [s for s in sampler.samples() if s.t_wall >= rates.start_wall - 1e-6]
    mean, _ = mean_run_queue(SampleView(s) for s in samples)
    return mean


async def direct_series(ctx: ToolContext, files: dict[str, str], interval_s: float, count: int,
                        ) -> list[tuple[SystemRates, SnapshotLike]]:
    """count intervals of interval_s, read on their own fixed schedule."""
    probe = Sampler(interval_s, capacity=count + 1, files=files)
    out: list[tuple[SystemRates, SnapshotLike]] = []
    start = trio.current_time()
    previous = probe.tick()
    for i in range(1, count + 1):
        await trio.sleep_until(start + i * interval_s)
        sample = probe.tick()
        older, newer = probe.view(previous), probe.view(sample)
        rates = system_rates(older, newer)
        if rates is not None:
            warnings = tuple(dict.fromkeys(older.warnings + newer.warnings))
            out.append((msgspec.structs.replace(rates, warnings=rates.warnings + warnings), newer))
        previous = sample
        if count > 1:
            await ctx.report_progress(i, count, f"interval {i}/{count} of {interval_s:g} s")
    return out


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    sampler = await system_sampler(ctx)
    whole = await trio.to_thread.run_sync(whole_disk_names)
    files = {name: path for name, path in sampler.watched.items() if name in SYSTEM_FILES}
    warnings: list[str] = []
    windows: list[Window] = []
    trends: list[Trend] = []
    mode: Literal["windows", "series"]
    if p.count > 1:
        for rates, newer in await direct_series(ctx, files, p.interval_s, p.count):
            windows.append(build_window(rates, newer, p, p.interval_s, "direct", whole))
            warnings += rates.warnings
        mode, method = "series", f"procfs read every {p.interval_s:g} s, {p.count} intervals"
    else:
        if p.interval_s < sampler.interval_s:
            for rates, newer in await direct_series(ctx, files, p.interval_s, 1):
                windows.append(build_window(rates, newer, p, p.interval_s, "direct", whole))
                warnings += rates.warnings
        covered: set[float] = set()  # actual lengths already in the answer: a trend repeating one is left out
        for requested in dict.fromkeys((p.interval_s, *STANDARD_WINDOWS_S)):
            if requested < sampler.interval_s:
                continue
            ring_rates = sampler.rates(requested)
            latest = sampler.latest()
            if ring_rates is None or latest is None:
                continue
            actual = round(ring_rates.interval_s, 3)
            if actual in covered:
                continue
            covered.add(actual)
            warnings += ring_rates.warnings
            if ring_rates.interval_s < requested * 0.9:
                warnings.append(f"the {requested:g} s window covers only {ring_rates.interval_s:.1f} s: the sampler "
                                "has no older sample yet (it started with the server)")
            if requested == p.interval_s:
                windows.append(build_window(ring_rates, sampler.view(latest), p, requested, "ring", whole))
            elif requested in STANDARD_WINDOWS_S:
                trends.append(build_trend(ring_rates, requested, ring_run_queue(sampler, ring_rates),
                                          p.include_psi, whole))
        mode, method = "windows", f"background sampler ring ({sampler.interval_s:g} s ticks), rates between samples"
    samples = sampler.samples()
    info = SamplerInfo(interval_s=sampler.interval_s, samples=len(samples),
                       history_s=round(samples[-1].t_mono - samples[0].t_mono, 1) if samples else 0.0)
    processes = None
    if p.include_processes:
        span = p.count * p.interval_s if p.count > 1 else max(PROCESS_WINDOW_S, p.interval_s)
        processes = processes_section(await attribute(ctx, window_s=min(span, 60.0), top_n=p.top_n))
    data = SnapshotData(summary="", mode=mode, method=method, cpus=os.cpu_count() or 1, sampler=info,
                        windows=windows, trends=trends, processes=processes)
    data.summary = headline(data)
    squeeze(data)
    return ToolOutput(data=data, summary=summarise(data), warnings=list(dict.fromkeys(warnings)))


_NUMBER_DEFAULTS: dict[type, list[tuple[str, object]]] = {}


def _number_defaults(tp: type) -> list[tuple[str, object]]:
    """(field, default) of a Struct type's fields (the default None when it is not a number),
    cached: msgspec.structs.fields evaluates the annotations at every call."""
    got = _NUMBER_DEFAULTS.get(tp)
    if got is None:
        got = _NUMBER_DEFAULTS[tp] = [(f.name, f.default if type(f.default) in (int, float) else None)
                                      for f in msgspec.structs.fields(tp)]
    return got


def squeeze(obj: object) -> None:
    """Make every field equal to its default BE the default object, so that omit_defaults
    (which compares floats by identity) leaves zero counters out. In place, recursive."""
    if isinstance(obj, msgspec.Struct):
        for name, default in _number_defaults(type(obj)):
            value = getattr(obj, name)
            if default is not None and value is not default and type(value) in (int, float) and value == default:
                setattr(obj, name, default)
            else:
                squeeze(value)
    elif isinstance(obj, list):
        for item in obj:
            squeeze(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            squeeze(item)


# ---------------------------------------------------------------- processes

PROCESS_WINDOW_S = 10.0
# Say less: entries below these are not listed (the first of the memory and fds rankings always is).
MIN_CPU_PCT = 1.0
MIN_DISK_BPS = 4096.0
MIN_RSS_SHARE = 0.005  # of physical memory
MIN_FDS = 64
COMMAND_CAP = 80
PHYS_MB = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20


def processes_section(a: Attribution) -> Processes:
    """Attribution -> one row per process and rankings of pids; near-idle entries dropped.
    read_bps/write_bps/fds are null where this user cannot see them (another user's process
    without the inspect grant)."""
    rows: dict[int, ProcessEntry] = {}

    def ids(lst: list[ProcessRow], key: str, floor: float, keep_first: bool = False) -> list[int]:
        out: list[int] = []
        for r in lst:
            value = getattr(r, key)
            if value is None or (value < floor and not (keep_first and not out)):
                continue
            out.append(r.pid)
            if r.pid not in rows:
                command = r.command if len(r.command) <= COMMAND_CAP else r.command[:COMMAND_CAP - 1] + "…"
                rows[r.pid] = ProcessEntry(
                    pid=r.pid, user=r.user, command=command, cgroup=None if r.cgroup == "/" else r.cgroup,
                    cpu_pct=r.cpu_pct or 0.0,
                    rss_mb=r.rss_mb or 0.0, read_bps=r.read_bps, write_bps=r.write_bps, fds=r.fds)
        return out

    rankings = {
        "cpu": ids(a.cpu, "cpu_pct", MIN_CPU_PCT),
        "memory": ids(a.memory, "rss_mb", MIN_RSS_SHARE * PHYS_MB, keep_first=True),
        "disk_read": ids(a.disk_read, "read_bps", MIN_DISK_BPS),
        "disk_write": ids(a.disk_write, "write_bps", MIN_DISK_BPS), "fds": ids(a.fds, "fds", MIN_FDS, keep_first=True),
    }
    return Processes(window_s=a.window_s, rows=list(rows.values()), notes=a.notes, **rankings)


# ---------------------------------------------------------------- summary


def _f(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "?" if value is None else f"{value:.{digits}f}{unit}"


def _cpu_line(w: Window) -> str:
    c = w.cpu
    if c is None:
        return "CPU: unknown"
    return (f"CPU {c.busy:.0f}% busy (usr {c.user:.0f} sys {c.system:.0f} iowait {c.iowait:.0f} "
            f"steal {c.steal:.0f} idle {c.idle:.0f})")


def _window_headline(w: Window, cpus: int) -> str:
    g = w.gauges
    parts = [_cpu_line(w), f"run queue {_f(g.run_queue, 0)} on {cpus} CPUs", f"load {_f(g.load1, 2)}"]
    if g.memory is not None:
        parts.append(f"mem {_f(g.memory.available_pct, 0)}% available")
    t = w.disk_totals
    if t.busiest_device:
        parts.append(f"busiest disk {t.busiest_device} {_f(t.busiest_util_pct, 0)}% util")
    return ", ".join(parts)


def _short(command: str) -> str:
    first = command.split(" ", 1)[0]
    return first if first.startswith("[") else os.path.basename(first)[:40]


def _bps(value: float | None) -> str:
    v = value or 0.0
    return f"{v / 2**20:.1f} MB/s" if v >= 2**20 else f"{v / 1024:.0f} kB/s"


def _top_phrases(pr: Processes) -> list[str]:
    rows = {r.pid: r for r in pr.rows}
    out = []
    for label, pids, fmt in (
        ("CPU", pr.cpu, lambda r: f"{r.cpu_pct:.0f}%"),
        ("RSS", pr.memory, lambda r: f"{r.rss_mb:.0f} MB"),
        ("disk read", pr.disk_read, lambda r: _bps(r.read_bps)),
        ("disk write", pr.disk_write, lambda r: _bps(r.write_bps)),
    ):
        if pids:
            r = rows[pids[0]]
            out.append(f"top {label}: {_short(r.command)} (pid {r.pid}, {r.user}) {fmt(r)}")
    return out


def _process_lines(pr: Processes, limit: int = 8) -> list[str]:
    """One line per process, in ranking order (CPU, memory, disk read, disk write, fds), each naming
    the rankings it tops."""
    rows = {r.pid: r for r in pr.rows}
    tops: dict[int, list[str]] = {}
    for label, pids in (("cpu", pr.cpu), ("mem", pr.memory), ("read", pr.disk_read), ("write", pr.disk_write),
                        ("fds", pr.fds)):
        for pid in pids:
            tops.setdefault(pid, []).append(label)
    lines = [f"Processes over {pr.window_s:g} s (pid user cpu% rss_MB read/write kB/s fds command [rankings]):"]
    for pid, labels in list(tops.items())[:limit]:
        r = rows[pid]
        io = "-" if r.read_bps is None else f"{(r.read_bps or 0) / 1024:.0f}/{(r.write_bps or 0) / 1024:.0f}"
        lines.append(f"  {r.pid} {r.user} {r.cpu_pct:.1f} {r.rss_mb:.0f} {io} {'-' if r.fds is None else r.fds} "
                     f"{r.command[:60]} [{','.join(labels)}]")
    if len(tops) > limit:
        lines.append(f"  ... {len(tops) - limit} more in data.processes")
    lines += [f"  note: {n}" for n in pr.notes]
    return lines


def headline(d: SnapshotData) -> str:
    """The one-line summary (data.summary)."""
    if not d.windows:
        return "Snapshot: no data (the sampler has fewer than two samples)"
    w = d.windows[-1]
    parts = [_window_headline(w, d.cpus)]
    if d.processes is not None:
        parts += _top_phrases(d.processes)
    prefix = f"Last of {len(d.windows)} intervals: " if d.mode == "series" else f"Over {w.interval_s:g} s: "
    return prefix + "; ".join(parts)


def summarise(d: SnapshotData) -> str:
    if not d.windows:
        return "Snapshot: no data (the sampler has fewer than two samples)"
    if d.mode == "series":
        lines = [f"Snapshot series: {len(d.windows)} intervals of {d.windows[0].requested_s:g} s; last: "
                 + _window_headline(d.windows[-1], d.cpus)]
        for i, w in enumerate(d.windows, 1):
            lines.append(f"  {i:2d} {w.end[11:23]} " + _window_headline(w, d.cpus))
        return "\n".join(lines)
    w = d.windows[0]
    lines = [f"Snapshot over {w.interval_s:g} s: " + _window_headline(w, d.cpus)]
    g = w.gauges
    lines.append(f"Tasks: {_f(g.procs_running, 0)} running, {_f(g.procs_blocked, 0)} blocked, "
                 f"{_f(w.context_switches_s, 0)} ctx switches/s, {_f(w.interrupts_s, 0)} interrupts/s, "
                 f"load {_f(g.load1, 2)}/{_f(g.load5, 2)}/{_f(g.load15, 2)}")
    if g.memory is not None and w.memory is not None:
        m = g.memory
        swap = "no swap" if not m.swap_total_bytes else f"swap {_f(m.swap_used_pct, 1)}% used"
        lines.append(f"Memory: {_f((m.available_bytes or 0) / 2**30, 1)} GiB available of "
                     f"{_f((m.total_bytes or 0) / 2**30, 1)} GiB ({_f(m.available_pct, 0)}%), {swap}, "
                     f"{_f(w.memory.faults_s, 0)} faults/s, {_f(w.memory.major_faults_s, 1)} major/s")
    for row in sorted(w.disks or [], key=lambda r: -(r.util_pct or 0))[:6]:
        lines.append(f"Disk {row.device}: r/s {_f(row.r_s)} w/s {_f(row.w_s)} rkB/s {_f(row.rkb_s)} "
                     f"wkB/s {_f(row.wkb_s)} r_await {_f(row.r_await_ms, 2)} w_await {_f(row.w_await_ms, 2)} ms "
                     f"aqu-sz {_f(row.aqu_sz, 2)} util {_f(row.util_pct)}%")
    for n in w.interfaces:
        if (n.rxpck_s or 0) + (n.txpck_s or 0) == 0 and not (n.rx_drops_s or n.tx_drops_s):
            continue
        lines.append(f"Net {n.interface}: rx {_f(n.rxkb_s)} kB/s {_f(n.rxpck_s, 0)} pkt/s, tx {_f(n.txkb_s)} kB/s "
                     f"{_f(n.txpck_s, 0)} pkt/s, drops {_f((n.rx_drops_s or 0) + (n.tx_drops_s or 0))}/s, "
                     f"errors {_f((n.rx_errors_s or 0) + (n.tx_errors_s or 0))}/s")
    if w.tcp is not None:
        lines.append(f"TCP: retransmits {_f(w.tcp.retransmit_pct, 2)}% of {_f(w.tcp.out_segs_s, 0)} segs/s, "
                     f"{_f(w.tcp.active_opens_s, 1)} active / {_f(w.tcp.passive_opens_s, 1)} passive opens/s, "
                     f"{_f(w.tcp.estab_resets_s, 1)} resets/s, {w.tcp.curr_estab} established")
    if w.psi:
        lines.append("PSI (share of the window stalled): " + ", ".join(
            f"{k} some {_f(v.some_pct)}%" + (f" full {_f(v.full_pct)}%" if v.full_pct is not None else "")
            for k, v in w.psi.items()))
    if d.processes is not None:
        lines += _process_lines(d.processes)
    for t in d.trends:
        lines.append(f"Over {t.interval_s:g} s: CPU {_f(t.cpu_busy, 0)}% busy, run queue {_f(t.run_queue_mean)}, "
                     f"{_f(t.major_faults_s)} major faults/s, disks {_f(t.disk_r_s, 0)} r/s {_f(t.disk_w_s, 0)} w/s "
                     f"(busiest {t.busiest_disk or '-'} {_f(t.busiest_disk_util_pct, 0)}%), net rx {_f(t.net_rxkb_s)} "
                     f"tx {_f(t.net_txkb_s)} kB/s, drops {_f(t.net_drops_s)}/s"
                     + (f", PSI some cpu {_f(t.psi_some_pct.get('cpu', 0.0))}% mem {_f(t.psi_some_pct.get('memory', 0.0))}% "
                        f"io {_f(t.psi_some_pct.get('io', 0.0))}%" if t.psi_some_pct else ""))
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="System snapshot (CPU, memory, disks, network, PSI)",
    description=(
        "Whole-machine counters at once, from a 1 Hz background sampler: CPU split (as mpstat), load, run queue, "
        "context switches and interrupts; memory available, swap, page faults; per-device IOPS, throughput, "
        "await, aqu-sz and %util (as iostat -x); per-interface packets, kB/s, errors and drops (as sar -n DEV); "
        "TCP retransmit %, opens and resets; pressure stall information. count=1 answers immediately: one "
        "detailed window of interval_s plus headline trends over 1 s, 10 s and 60 s (each with its actual "
        "length; a trend repeating a window already shown is left out); count>1 returns a series of count "
        "detailed intervals of interval_s. Who is using it: the top processes (top_n) by CPU %, RSS, disk "
        "read and write bytes/s and fd count over ~10 s, each with pid, user, command line and cgroup (other "
        "users' disk I/O and fds need the org.perfmcp.inspect grant; processes.notes says what is missing). "
        "Say less: data.summary is one line; zero counters are left out (absent = 0, null = not measured); "
        "idle devices and interfaces are counted (devices_omitted, interfaces_idle), not listed. No privileges "
        "needed."
    ),
    params=Params,
    data=SnapshotData,
    handler=run,
)

SERVICES = [SAMPLER_SERVICE, process_table_service()]
