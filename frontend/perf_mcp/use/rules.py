"""The USE method over two samples of the ring: a table per resource
(utilisation, saturation, errors, each check with its status against
thresholds.THRESHOLDS) and findings in the shared Finding shape.

Pure: the caller (tools/perf_use_check.py) passes samples from the sampler,
the names of the whole disks, how each disk takes requests, the filesystems'
usage and the state of its own cgroup; nothing here reads a file or a clock.
Every check carries a `condition` (older, newer) -> bool that the caller hands
to Sampler.since_when to say since when the resource has been in its state;
it is the same metric function as the check.

A value that could not be measured (its file missing or unreadable) is a
check with status "unknown", never "ok".

Resources and rules (limits from the table):
- cpu: utilisation = 100 - idle - iowait (/proc/stat); run queue = mean of
  procs_running - 1 over the window's samples, per online CPU; the busiest
  single CPU (a single-threaded bottleneck the mean hides: judged while the
  other CPUs' mean is below the utilisation warning); steal (in a VM); PSI
  cpu some.
- memory: MemAvailable / MemTotal; swap in/out, direct reclaim scans,
  allocation stalls and major faults per second; swap in use (information
  only: parked pages cost nothing, swapping does); PSI memory some and full;
  OOM kills (info).
- disk: per whole disk (partitions are covered by their disk) %util, aqu-sz
  and await as iostat -x; PSI io some and full. On a disk that serves
  requests in parallel (virtio, NVMe, md/dm, several hardware queues) %util
  near 100 is not saturation: it is reported, not judged, and await and
  aqu-sz lead.
- filesystem: space and inodes used of each real filesystem (df's Use%).
- network: per interface rx+tx drops/s; softnet backlog drops/s; TCP
  retransmit % (RetransSegs / OutSegs) once at least MIN_SEGMENTS were sent.
- cgroup (the server's own, only where a limit exists): memory working set
  (usage - inactive file) against the limit, with the memory.available rows;
  CPU usage against the quota, with the cpu.utilisation rows.

Findings name the next tool call (Finding.next) with concrete arguments;
name_culprits() adds the top processes (procfs.attribution) to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..contract import Evidence, Finding, NextCall, Resource, Severity, next_call, sort_findings
from ..procfs.capacity import DiskQueue, FsUsage, parallel_by_name
from ..procfs.snapshot import SnapshotLike
from . import metrics
from .thresholds import Threshold, Thresholds

Status = Literal["ok", "warning", "critical", "unknown"]
Kind = Literal["utilisation", "saturation", "errors"]
Condition = Callable[[SnapshotLike, SnapshotLike], "bool | None"]

TOOL = "perf_use_check"
MIN_SEGMENTS = 100  # TCP segments sent in the window before a retransmit % is judged
MIN_DISK_IOS = 20  # completed requests in the window before a disk's await is judged
VIRTUAL_DISKS = ("loop", "ram", "nbd", "zram")  # left out while idle
STATUS_RANK = {"critical": 0, "warning": 1, "unknown": 2, "ok": 3}


class Check(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One cell of the USE table."""

    id: str  # "disk.vda.utilisation"
    kind: Kind
    target: str  # "all CPUs", "vda", "eth0", "memory", "/"
    value: float | None
    unit: str
    status: Status
    metric: str = ""  # what is compared, for people (left out of perf_use_check's compact table)
    threshold: str | None = None  # key of the row in thresholds.THRESHOLDS
    warning: float | None = None
    critical: float | None = None
    counter: str = ""  # where the value comes from (left out of the compact table: the evidence has it)
    detail: str = ""
    info: bool = False  # over an info-only limit (swap in use): said, not judged


class StateSince(msgspec.Struct, kw_only=True):
    """Since when the resource has been in its current status."""

    status: Status
    since: Annotated[str, Meta(description="UTC, ISO 8601: the sample where the state began")]
    duration_s: float
    at_least: bool  # held across the whole ring: began even earlier


class UseRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One resource: its checks by USE kind. The rules give every check;
    perf_use_check keeps only those that are not ok unless asked, and counts
    the rest in `ok` (an empty list is left out of the answer)."""

    resource: Resource
    name: str  # "cpu", "memory", "disk", "filesystem", "network", "cgroup memory:/x"
    status: Status
    detail: str
    utilisation: list[Check] = []
    saturation: list[Check] = []
    errors: list[Check] = []
    ok: int = 0  # ok checks left out of the lists
    since: StateSince | None = None

    def all_checks(self) -> list[Check]:
        return self.utilisation + self.saturation + self.errors


class CgroupState(msgspec.Struct, kw_only=True):
    """The server's own cgroup where it has limits (read by the caller)."""

    path: str  # e.g. "memory:/user.slice/x" or "/x" for v2
    version: str
    memory_limit_bytes: int | None = None
    memory_usage_bytes: int | None = None
    memory_working_set_bytes: int | None = None
    memory_failcnt: int | None = None  # total (v1) or memory.events max (v2)
    memory_failcnt_delta: int | None = None  # during the window, when the ring watched it
    oom_kills: int | None = None
    cpu_quota_cores: float | None = None  # quota / period
    cpu_usage_cores: float | None = None  # over the window, when the ring watched it
    throttled_pct: float | None = None  # throttled periods / periods over the window


@dataclass
class Signal:
    """A check with the condition that it is (at least) in its status."""

    check: Check
    condition: Condition | None


@dataclass
class Window:
    """What the rules look at."""

    older: SnapshotLike
    newer: SnapshotLike
    samples: Sequence[SnapshotLike]  # every sample from older to newer (for gauges such as the run queue)
    cpus: int
    whole_disks: frozenset[str]
    # The samples from one sample to another (both included), for conditions
    # over a gauge such as the run queue; None: just the two.
    between: Callable[[SnapshotLike, SnapshotLike], Sequence[SnapshotLike]] | None = None
    # How each whole disk takes requests (capacity.disk_queues); a disk not
    # here is judged from its name (capacity.parallel_by_name).
    disk_queues: Mapping[str, DiskQueue] = field(default_factory=dict)
    vm: bool | None = None  # in a VM (steal is judged); None: judged when steal was seen
    filesystems: Sequence[FsUsage] | None = None  # None: no filesystem row

    def span(self, older: SnapshotLike, newer: SnapshotLike) -> Sequence[SnapshotLike]:
        return self.between(older, newer) if self.between is not None else (older, newer)

    def parallel(self, disk: str) -> str | None:
        """Why a disk serves requests in parallel, or None."""
        q = self.disk_queues.get(disk)
        if q is not None:
            return q.why if q.parallel else None
        return parallel_by_name(disk)


@dataclass
class Evaluation:
    rows: list[UseRow]
    signals: dict[str, list[Signal]]  # row name -> its signals
    findings: list[Finding]


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _status(th: Threshold, value: float | None) -> Status:
    if value is None or not math.isfinite(value):
        return "unknown"
    severity = th.severity(value)
    if severity == "critical":
        return "critical"
    return "warning" if severity == "warning" else "ok"


def _at_least(th: Threshold, status: Status, value: float | None) -> bool | None:
    """value is in `status` or worse (ok: in ok only, so the walk finds when trouble ended)."""
    if value is None:
        return None
    severity = th.severity(value)
    if status in ("ok", "unknown"):
        return severity is None
    return severity is not None and STATUS_RANK[severity] <= STATUS_RANK[status]


def _check(th: Threshold, *, id: str, kind: Kind, target: str, value: float | None, counter: str,
           scale: float = 1.0, unit: str | None = None, detail: str = "", judged: bool = True) -> Check:
    """A check of value against a row whose limits are multiplied by scale
    (run queue: the CPU count; unit then names what value counts). No value:
    unknown. judged=False (or an info-only row): the value is reported and
    the status is ok (the detail says why it is not judged)."""
    scaled = value / scale if value is not None and scale else value
    status = _status(th, scaled)
    info = False
    if status in ("warning", "critical") and (th.info_only or not judged):
        info, status = True, "ok"
    return Check(id=id, kind=kind, metric=th.metric, target=target, value=_r(value),
                 unit=th.unit.strip() if unit is None else unit,
                 status=status, threshold=th.key, warning=_r(th.warning * scale), critical=_r(th.critical * scale),
                 counter=counter, detail=detail, info=info)


def _fact(*, id: str, kind: Kind, metric: str, target: str, value: float | None, unit: str, counter: str,
          detail: str = "") -> Check:
    """A reported figure without a threshold (ok, or unknown without a value)."""
    return Check(id=id, kind=kind, metric=metric, target=target, value=_r(value), unit=unit,
                 status="unknown" if value is None else "ok", counter=counter, detail=detail)


def _unknown(id: str, kind: Kind, metric: str, target: str, counter: str, th: Threshold | None = None) -> Check:
    return Check(id=id, kind=kind, metric=metric, target=target, value=None, unit=th.unit.strip() if th else "",
                 status="unknown", threshold=th.key if th else None, warning=th.warning if th else None,
                 critical=th.critical if th else None, counter=counter, detail="could not be read")


def _worst(checks: Sequence[Check]) -> Status:
    return min((c.status for c in checks), key=STATUS_RANK.__getitem__, default="ok")


def _row(resource: Resource, name: str, signals: list[Signal], detail: str) -> UseRow:
    checks = [s.check for s in signals]
    by_kind = {k: [c for c in checks if c.kind == k] for k in ("utilisation", "saturation", "errors")}
    return UseRow(resource=resource, name=name, status=_worst(checks), detail=detail, **by_kind)


def _psi_signals(w: Window, th: Thresholds, resource: str) -> list[Signal]:
    signals = []
    for kind in ("some", "full"):
        if resource == "cpu" and kind == "full":
            continue  # system-wide CPU full is not defined (the kernel prints zeros)
        value = metrics.psi_share(w.older, w.newer, resource, kind)
        row = th[f"psi.{kind}_avg10_pct"]
        check = _check(row, id=f"psi.{resource}.{kind}", kind="saturation", target=f"PSI {resource} {kind}",
                       value=value, counter=f"/proc/pressure/{resource} {kind} total (stall share of the window)")
        status = check.status

        def cond(o: SnapshotLike, n: SnapshotLike, row: Threshold = row, res: str = resource, k: str = kind,
                 status: Status = status) -> bool | None:
            return _at_least(row, status, metrics.psi_share(o, n, res, k))

        signals.append(Signal(check, cond))
    return signals


def _threshold_signal(row: Threshold, check: Check, fn: Callable[[SnapshotLike, SnapshotLike], float | None],
                      judged: bool = True) -> Signal:
    """The check with its condition; a check that is not judged (reported
    only) never ends an ok state."""
    def cond(o: SnapshotLike, n: SnapshotLike) -> bool | None:
        if not judged or row.info_only:
            return check.status in ("ok", "unknown")
        return _at_least(row, check.status, fn(o, n))

    return Signal(check, cond)


# ---------------------------------------------------------------- cpu


def cpu_signals(w: Window, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    busy = metrics.cpu_busy_pct(w.older, w.newer)
    row = th["cpu.utilisation_pct"]
    check = _check(row, id="cpu.utilisation", kind="utilisation", target="all CPUs", value=busy,
                   counter="/proc/stat cpu (100 - idle - iowait)")
    signals.append(_threshold_signal(row, check, metrics.cpu_busy_pct))
    mean, peak = metrics.mean_run_queue(w.samples)
    rq_row = th["cpu.run_queue_per_cpu"]
    check = _check(rq_row, id="cpu.run_queue", kind="saturation", target="all CPUs", value=mean, scale=w.cpus,
                   unit="tasks", counter="/proc/stat procs_running - 1 (mean over the window's samples)",
                   detail=f"peak {peak} runnable on {w.cpus} CPUs" if peak is not None else "")

    def rq(o: SnapshotLike, n: SnapshotLike, row: Threshold = rq_row, st: Status = check.status,
           cpus: int = w.cpus, span: Callable[..., Sequence[SnapshotLike]] = w.span) -> bool | None:
        value, _ = metrics.mean_run_queue(span(o, n))  # the mean over the step, as the check
        return _at_least(row, st, None if value is None else value / cpus)

    signals.append(Signal(check, rq))
    hot = metrics.hot_cpu(w.older, w.newer)
    parts = [f"{busy:.0f}% busy" if busy is not None else "utilisation unknown"]
    if hot is not None:
        cpu, hot_busy, others = hot
        single_row = th["cpu.single_cpu_busy_pct"]
        judged = others <= row.warning
        check = _check(single_row, id="cpu.single_cpu", kind="utilisation", target=f"cpu{cpu}", value=hot_busy,
                       counter="/proc/stat cpuN (the busiest CPU's 100 - idle - iowait)", judged=judged,
                       detail=(f"the other CPUs {others:.0f}% busy on average" if judged else
                               f"not judged alone: the other CPUs are {others:.0f}% busy too"))

        def single(o: SnapshotLike, n: SnapshotLike, row: Threshold = single_row, st: Status = check.status,
                   limit: float = row.warning) -> bool | None:
            h = metrics.hot_cpu(o, n)
            if h is None:
                return None
            if h[2] > limit:  # the others are busy too: not judged alone
                return st in ("ok", "unknown")
            return _at_least(row, st, h[1])

        signals.append(Signal(check, single))
        if hot_busy > single_row.warning:
            parts.append(f"cpu{cpu} {hot_busy:.0f}% busy (others {others:.0f}%)")
    steal = metrics.cpu_steal_pct(w.older, w.newer)
    if w.vm or (w.vm is None and steal):
        steal_row = th["cpu.steal_pct"]
        check = _check(steal_row, id="cpu.steal", kind="saturation", target="all CPUs", value=steal,
                       counter="/proc/stat cpu steal")
        signals.append(_threshold_signal(steal_row, check, metrics.cpu_steal_pct))
        if steal:
            parts.append(f"steal {steal:.1f}%")
    signals += _psi_signals(w, th, "cpu")
    load = w.newer.loadavg
    if mean is not None:
        parts.append(f"run queue {mean:.1f} (peak {peak}) on {w.cpus} CPUs")
    if load is not None:
        parts.append(f"load {load.load1:.2f}/{load.load5:.2f}/{load.load15:.2f}")
    psi = next((s.check for s in signals if s.check.id == "psi.cpu.some"), None)
    if psi is not None and psi.value is not None:
        parts.append(f"PSI cpu some {psi.value:.1f}%")
    return signals, ", ".join(parts)


# ---------------------------------------------------------------- memory

# (check id suffix, threshold key, VmStat field, counter text)
MEMORY_RATES = (
    ("swap_in", "memory.swap_in_per_s", "pswpin", "/proc/vmstat pswpin"),
    ("swap_out", "memory.swap_out_per_s", "pswpout", "/proc/vmstat pswpout"),
    ("direct_reclaim", "memory.direct_reclaim_scan_per_s", "pgscan_direct", "/proc/vmstat pgscan_direct"),
    ("allocstall", "memory.allocstall_per_s", "allocstall", "/proc/vmstat allocstall_*"),
    ("major_faults", "memory.major_faults_per_s", "pgmajfault", "/proc/vmstat pgmajfault"),
)


def memory_signals(w: Window, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    avail = metrics.mem_available_pct(w.newer)
    parts = []
    row = th["memory.available_pct"]
    check = _check(row, id="memory.available", kind="utilisation", target="memory", value=avail,
                   counter="/proc/meminfo MemAvailable / MemTotal (latest sample)")
    signals.append(_threshold_signal(row, check, lambda o, n: metrics.mem_available_pct(n)))
    parts.append(f"{avail:.0f}% available" if avail is not None else "available memory unknown")
    swap = metrics.swap_used_pct(w.newer)
    if swap is not None:
        swap_row = th["memory.swap_used_pct"]
        check = _check(swap_row, id="memory.swap_used", kind="utilisation", target="swap", value=swap,
                       counter="/proc/meminfo (SwapTotal - SwapFree) / SwapTotal (latest sample)",
                       detail="information only: swap in use is not pressure, swapping is")
        signals.append(_threshold_signal(swap_row, check, lambda o, n: metrics.swap_used_pct(n)))
        parts.append(f"swap {swap:.1f}% used")
    elif w.newer.meminfo is not None:
        parts.append("no swap")
    for suffix, key, fld, counter in MEMORY_RATES:
        rate_row = th[key]
        value = metrics.vmstat_rate(w.older, w.newer, fld)
        if value is None and suffix in ("swap_in", "swap_out") and w.newer.vmstat is not None:
            continue  # a kernel without swap support has no such counter
        check = _check(rate_row, id=f"memory.{suffix}", kind="saturation", target="memory", value=value,
                       counter=counter + " (per second over the window)")
        signals.append(_threshold_signal(rate_row, check,
                                         lambda o, n, f=fld: metrics.vmstat_rate(o, n, f)))  # type: ignore[misc]
        if value is not None and value >= 1:
            parts.append(f"{value:.0f} {rate_row.metric.split(' (')[0]}/s")
    signals += _psi_signals(w, th, "memory")
    oom = _oom_kills(w)
    if oom is not None:
        signals.append(Signal(_fact(id="memory.oom_kills", kind="errors", metric="OOM kills", target="memory",
                                    value=oom, unit="", counter="/proc/vmstat oom_kill (during the window)"), None))
        if oom:
            parts.append(f"{oom:.0f} OOM kills")
    return signals, ", ".join(parts)


def _oom_kills(w: Window) -> float | None:
    o, n = w.older.vmstat, w.newer.vmstat
    if o is None or n is None or o.oom_kill is None or n.oom_kill is None or n.oom_kill < o.oom_kill:
        return None
    return float(n.oom_kill - o.oom_kill)


# ---------------------------------------------------------------- disk


def disk_signals(w: Window, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    if w.newer.diskstats is None or w.older.diskstats is None:
        signals.append(Signal(_unknown("disk.diskstats", "utilisation", "disk statistics", "all disks",
                                       "/proc/diskstats"), None))
        signals += _psi_signals(w, th, "io")
        return signals, "disk statistics unknown (/proc/diskstats not read)"
    devices = sorted(set(w.newer.diskstats.devices) & w.whole_disks)
    util_row, queue_row, await_row = th["disk.utilisation_pct"], th["disk.queue"], th["disk.await_ms"]
    worst: tuple[float, str] | None = None
    shown = 0
    for dev in devices:
        util = metrics.disk_util_pct(w.older, w.newer, dev)
        queue = metrics.disk_queue(w.older, w.newer, dev)
        await_ms, ios = metrics.disk_await(w.older, w.newer, dev)
        if util is None or (dev.startswith(VIRTUAL_DISKS) and not util and not queue):
            continue  # idle loop/ram/nbd devices are not worth a row
        shown += 1
        if worst is None or util > worst[0]:
            worst = (util, dev)
        parallel = w.parallel(dev)
        util_detail = (f"not saturation: {dev} serves requests in parallel ({parallel}); await and aqu-sz "
                       "judge it" if parallel else "")
        check = _check(util_row, id=f"disk.{dev}.utilisation", kind="utilisation", target=dev, value=util,
                       counter="/proc/diskstats io_ticks (%util as iostat -x)", detail=util_detail,
                       judged=parallel is None)
        signals.append(_threshold_signal(util_row, check, lambda o, n, d=dev: metrics.disk_util_pct(o, n, d),
                                         judged=parallel is None))
        check = _check(queue_row, id=f"disk.{dev}.saturation", kind="saturation", target=dev, value=queue,
                       counter="/proc/diskstats time_in_queue (aqu-sz as iostat -x)")
        signals.append(_threshold_signal(queue_row, check, lambda o, n, d=dev: metrics.disk_queue(o, n, d)))
        enough = ios is not None and ios >= MIN_DISK_IOS
        check = _check(await_row, id=f"disk.{dev}.await", kind="saturation", target=dev, value=await_ms,
                       counter="/proc/diskstats (read_ms + write_ms) / (reads + writes) (await as iostat)",
                       judged=enough,
                       detail="" if enough else f"{ios or 0} requests completed: too few to judge")

        def acond(o: SnapshotLike, n: SnapshotLike, d: str = dev, row: Threshold = await_row,
                  st: Status = check.status) -> bool | None:
            value, count = metrics.disk_await(o, n, d)
            if count is not None and count < MIN_DISK_IOS:
                return st in ("ok", "unknown")
            return _at_least(row, st, value)

        signals.append(Signal(check, acond))
    signals += _psi_signals(w, th, "io")
    detail = f"{shown} disks"
    if worst is not None:
        detail += f", busiest {worst[1]} at {worst[0]:.0f}% util"
        why = w.parallel(worst[1])
        if why and worst[0] > util_row.warning:
            detail += f" (parallel: {why}; %util is not saturation)"
    psi = next((s.check for s in signals if s.check.id == "psi.io.some"), None)
    if psi is not None and psi.value is not None:
        detail += f", PSI io some {psi.value:.1f}%"
    return signals, detail


# ---------------------------------------------------------------- filesystems


def filesystem_signals(filesystems: Sequence[FsUsage], th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    space_row, inode_row = th["filesystem.space_used_pct"], th["filesystem.inodes_used_pct"]
    fullest: tuple[float, str] | None = None
    unknown = []
    for fs in filesystems:
        target = fs.mount_point
        counter = f"statvfs({fs.mount_point}) {fs.source} {fs.fs_type}"
        if fs.error is not None:
            unknown.append(target)
            for suffix, row in (("space", space_row), ("inodes", inode_row)):
                c = _unknown(f"fs.{target}.{suffix}", "utilisation", row.metric, target, counter, row)
                signals.append(Signal(msgspec.structs.replace(c, detail=fs.error), None))
            continue
        size = f"{(fs.avail_bytes or 0) / 2**30:.1f} GiB free of {(fs.size_bytes or 0) / 2**30:.1f} GiB"
        signals.append(Signal(_check(space_row, id=f"fs.{target}.space", kind="utilisation", target=target,
                                     value=fs.used_pct, counter=counter + " (used / (used + avail), as df)",
                                     detail=size), None))
        if fs.inodes_used_pct is not None:
            signals.append(Signal(_check(inode_row, id=f"fs.{target}.inodes", kind="utilisation", target=target,
                                         value=fs.inodes_used_pct, counter=counter + " (inodes used, as df -i)",
                                         detail=f"{fs.inodes_used} of {fs.inodes} inodes"), None))
        worst = max(fs.used_pct or 0.0, fs.inodes_used_pct or 0.0)
        if fullest is None or worst > fullest[0]:
            fullest = (worst, target)
    detail = f"{len(filesystems)} filesystems"
    if fullest is not None:
        detail += f", fullest {fullest[1]} at {fullest[0]:.0f}%"
    if unknown:
        detail += f", unknown: {', '.join(unknown)}"
    return signals, detail


# ---------------------------------------------------------------- network


def network_signals(w: Window, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    drops_row = th["network.drops_per_s"]
    if w.newer.net_dev is None or w.older.net_dev is None:
        signals.append(Signal(_unknown("network.net_dev", "saturation", drops_row.metric, "all interfaces",
                                       "/proc/net/dev", drops_row), None))
    names = sorted(w.newer.net_dev.interfaces) if w.newer.net_dev else []
    dropping = []
    for name in names:
        drops = metrics.interface_drops_s(w.older, w.newer, name)
        if drops is None:
            continue
        check = _check(drops_row, id=f"network.{name}.drops", kind="saturation", target=name, value=drops,
                       counter="/proc/net/dev rx_dropped + tx_dropped")
        if drops > 0:
            dropping.append(name)
        signals.append(_threshold_signal(drops_row, check,
                                         lambda o, n, nm=name: metrics.interface_drops_s(o, n, nm)))
        errors = _interface_errors_s(w, name)
        if errors:
            signals.append(Signal(_fact(id=f"network.{name}.errors", kind="errors", metric="interface errors",
                                        target=name, value=errors, unit="/s",
                                        counter="/proc/net/dev rx_errors + tx_errors"), None))
    backlog = metrics.softnet_drops_s(w.older, w.newer)
    if backlog is not None:
        check = _check(drops_row, id="network.softnet.drops", kind="saturation", target="softnet backlog",
                       value=backlog, counter="/proc/net/softnet_stat dropped (input backlog full)")
        signals.append(_threshold_signal(drops_row, check, metrics.softnet_drops_s))
    pct, out, retrans = metrics.tcp_retransmits(w.older, w.newer)
    retrans_row = th["network.retransmit_pct"]
    detail = f"{len(names)} interfaces" + (f", drops on {', '.join(dropping)}" if dropping else ", no drops")
    if out is not None:
        enough = out >= MIN_SEGMENTS
        check = _check(retrans_row, id="network.tcp.retransmits", kind="errors", target="TCP", value=pct,
                       counter="/proc/net/snmp Tcp RetransSegs / OutSegs", judged=enough,
                       detail=(f"{retrans} of {out} segments retransmitted" if enough else
                               f"only {out} segments sent (< {MIN_SEGMENTS}): too few to judge"))
        signals.append(_threshold_signal(retrans_row, check,
                                         lambda o, n: metrics.retransmit_pct(o, n, MIN_SEGMENTS)))
        if enough and pct is not None:
            detail += f", TCP retransmits {pct:.2f}%"
    return signals, detail


def _interface_errors_s(w: Window, name: str) -> float | None:
    if w.older.net_dev is None or w.newer.net_dev is None:
        return None
    a, b = w.older.net_dev.interfaces.get(name), w.newer.net_dev.interfaces.get(name)
    interval = w.newer.t_mono - w.older.t_mono
    if a is None or b is None or interval <= 0:
        return None
    total = (b.rx_errors - a.rx_errors) + (b.tx_errors - a.tx_errors)
    return total / interval if total >= 0 else None


# ---------------------------------------------------------------- cgroup


def cgroup_signals(cg: CgroupState, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    parts = []
    if cg.memory_limit_bytes and cg.memory_working_set_bytes is not None:
        avail = max(0.0, (cg.memory_limit_bytes - cg.memory_working_set_bytes) / cg.memory_limit_bytes * 100)
        check = _check(th["memory.available_pct"], id="cgroup.memory.available", kind="utilisation",
                       target=cg.path, value=avail,
                       counter="memory limit - working set (usage - inactive_file), of the limit")
        signals.append(Signal(check, None))
        parts.append(f"memory {cg.memory_working_set_bytes / 2**20:.0f} MiB of {cg.memory_limit_bytes / 2**20:.0f}"
                     f" MiB limit in use ({avail:.0f}% available)")
        if cg.memory_failcnt is not None:
            signals.append(Signal(_fact(id="cgroup.memory.failcnt", kind="errors", metric="allocations over limit",
                                        target=cg.path,
                                        value=cg.memory_failcnt_delta if cg.memory_failcnt_delta is not None
                                        else cg.memory_failcnt, unit="",
                                        counter="memory.failcnt" + (" (during the window)"
                                                                    if cg.memory_failcnt_delta is not None
                                                                    else " (since the cgroup was created)")), None))
    if cg.cpu_quota_cores:
        parts.append(f"CPU quota {cg.cpu_quota_cores:g} CPUs")
        if cg.cpu_usage_cores is not None:
            pct = cg.cpu_usage_cores / cg.cpu_quota_cores * 100
            signals.append(Signal(_check(th["cpu.utilisation_pct"], id="cgroup.cpu.utilisation", kind="utilisation",
                                         target=cg.path, value=pct,
                                         counter="cpuacct usage over the window / (cfs_quota / cfs_period)"), None))
            parts.append(f"using {pct:.0f}% of it")
        if cg.throttled_pct is not None:
            signals.append(Signal(_fact(id="cgroup.cpu.throttled", kind="saturation", metric="periods throttled",
                                        target=cg.path, value=cg.throttled_pct, unit="%",
                                        counter="cpu.stat nr_throttled / nr_periods (during the window)"), None))
            parts.append(f"throttled in {cg.throttled_pct:.0f}% of periods")
    return signals, ", ".join(parts)


# ---------------------------------------------------------------- findings


@dataclass
class FindingContext:
    window_s: float
    sample: str  # ISO time of the latest sample
    cpus: int
    tool: str = TOOL  # the tool whose evidence it is
    server_pid: int | None = None  # for perf_cgroup_summary pid=... (the server's own cgroup)


def _evidence(check: Check, fc: FindingContext) -> Evidence:
    limit = None
    if check.status == "critical":
        limit = check.critical
    elif check.threshold is not None:
        limit = check.warning
    return Evidence(tool=fc.tool, counter=f"{check.counter} [{check.target}]", value=check.value, threshold=limit,
                    window_s=round(fc.window_s, 3), sample=fc.sample)


def _confidence(breaches: Sequence[Check]) -> float:
    base = 0.7 if any(c.status == "critical" for c in breaches) else 0.6
    return round(min(0.95, base + 0.1 * (len(breaches) - 1)), 2)


def _severity(checks: Sequence[Check]) -> Severity:
    return "critical" if any(c.status == "critical" for c in checks) else "warning"


def _describe(c: Check) -> str:
    unit = c.unit if c.unit in ("%", "/s") else (" " + c.unit if c.unit else "")
    value = f"{c.value:g}{unit}" if c.value is not None else "?"
    if c.status not in ("warning", "critical"):
        return f"{c.metric} {value} on {c.target}"
    limit = c.critical if c.status == "critical" else c.warning
    word = "below" if c.threshold and c.threshold.endswith("available_pct") else "above"
    return f"{c.metric} {value} on {c.target} ({c.status}: {word} {limit:g})"


def _finding(fid: str, resource: Resource, title: str, breaches: list[Check], context: list[Check],
             fc: FindingContext, suggestion: str, extra: str = "", nxt: NextCall | None = None,
             severity: Severity | None = None, shown: Sequence[Check] = ()) -> Finding:
    """Evidence: the breaching checks (and `shown`); the context checks'
    values are in the metrics only (say less)."""
    detail = "; ".join(_describe(c) for c in breaches)
    if extra:
        detail += ". " + extra
    metrics_ = {c.id: c.value for c in breaches + context if c.value is not None}
    return Finding(
        id=fid, severity=severity or _severity(breaches), resource=resource, title=title, detail=detail,
        confidence=_confidence(breaches), metrics=metrics_,
        evidence=[_evidence(c, fc) for c in breaches + [c for c in shown if c not in breaches]],
        suggestion=suggestion, next=nxt,
    )


def _breaching(signals: Sequence[Signal], prefix: str = "") -> list[Check]:
    return [s.check for s in signals if s.check.status in ("warning", "critical") and s.check.id.startswith(prefix)]


def cpu_findings(signals: list[Signal], fc: FindingContext) -> list[Finding]:
    breaches = _breaching(signals)
    single = next((c for c in breaches if c.id == "cpu.single_cpu"), None)
    steal = next((c for c in breaches if c.id == "cpu.steal"), None)
    rest = [c for c in breaches if c.id not in ("cpu.single_cpu", "cpu.steal")]
    out: list[Finding] = []
    context = [s.check for s in signals if s.check.status == "ok" and s.check.threshold and not s.check.info]
    if rest:
        ids = {c.id for c in rest}
        saturated = bool(ids & {"cpu.run_queue", "psi.cpu.some"})
        title = "CPU saturated: tasks wait for a CPU" if saturated else "CPU busy"
        steps = ["perf_cpu_profile to see which code uses the CPU"]
        if saturated:
            steps.append("perf_runq_latency to measure how long tasks wait to run")
        out.append(_finding("use.cpu", "cpu", title, rest, context, fc, "Next: " + "; ".join(steps) + ".",
                            nxt=next_call("perf_cpu_profile", duration_s=10)))
    if single is not None:
        out.append(_finding(
            "use.cpu.single", "cpu", f"One CPU ({single.target}) {single.value:.0f}% busy while the others have room: "
            "a single-threaded bottleneck", [single], [c for c in context if c.id == "cpu.utilisation"], fc,
            f"Next: perf_thread_profile on the process keeping {single.target} busy to find the hot thread; "
            "perf_cpu_profile for its code. More CPUs will not help a single thread.",
            extra=single.detail, nxt=next_call("perf_cpu_profile", duration_s=10)))
    if steal is not None:
        out.append(_finding(
            "use.cpu.steal", "cpu", "The hypervisor takes CPU time from this VM (steal)", [steal], [], fc,
            "Next: the host is oversubscribed or the VM exceeds its CPU credits: move or resize the VM; "
            "perf_snapshot include_per_cpu=true shows steal per CPU.",
            nxt=next_call("perf_snapshot", include_per_cpu=True)))
    return out


def cpu_finding(signals: list[Signal], fc: FindingContext) -> Finding | None:
    """The first CPU finding (kept for callers of the earlier API)."""
    found = cpu_findings(signals, fc)
    return found[0] if found else None


def memory_findings(signals: list[Signal], fc: FindingContext) -> list[Finding]:
    out: list[Finding] = []
    breaches = _breaching(signals)
    by_id = {s.check.id: s.check for s in signals}
    if breaches:
        ids = {c.id for c in breaches}
        avail = by_id.get("memory.available")
        short = avail is not None and avail.status in ("warning", "critical")
        context = [s.check for s in signals if s.check.status == "ok" and s.check.value is not None and
                   (s.check.threshold or s.check.value)]
        extra = ""
        nxt = next_call("perf_snapshot")
        psi_ids = {"psi.memory.some", "psi.memory.full"}
        if ids & psi_ids and ids <= psi_ids | {"memory.major_faults"} and not short and avail is not None \
                and avail.value is not None:
            title = "Tasks stall on memory while the system has memory available: a cgroup limit is likely"
            extra = (f"system-wide {avail.value:g}% of memory is available, so the stalls come from reclaim inside "
                     "memory-limited cgroups (or from refaulting a working set larger than its limit)")
            suggestion = ("Next: perf_cgroup_summary with the pid of a slow process to see its memory limit, "
                          "failcnt and memory PSI; perf_snapshot for major faults and reclaim rates.")
            nxt = next_call("perf_cgroup_summary")
        else:
            swapping = ids & {"memory.swap_in", "memory.swap_out"}
            reclaim = ids & {"memory.direct_reclaim", "memory.allocstall"}
            if short:
                title = "Memory short"
            elif swapping:
                title = "Memory pressure: the system is swapping"
            elif reclaim:
                title = "Memory pressure: allocations stall in direct reclaim"
            elif ids == {"memory.major_faults"}:
                title = "Many major page faults: tasks wait for pages read from disk"
            else:
                title = "Memory pressure"
            suggestion = ("Next: perf_snapshot for the processes holding memory and the fault, swap and reclaim "
                          "rates; perf_cgroup_summary to find which cgroup holds the memory; perf_offcpu_profile "
                          "to see who waits in reclaim.")
        out.append(_finding("use.memory", "memory", title, breaches, context, fc, suggestion, extra, nxt=nxt))
    swap = by_id.get("memory.swap_used")
    if swap is not None and swap.info and swap.value is not None:
        limit = swap.critical if swap.critical is not None and swap.value > swap.critical else swap.warning
        out.append(Finding(
            id="use.memory.swap_used", severity="info", resource="memory",
            title=f"Swap {swap.value:g}% in use", confidence=0.9, metrics={"memory.swap_used": swap.value},
            detail=("Swap in use is not pressure by itself (pages parked there long ago cost nothing); the swap "
                    "in/out rates judge whether the system is swapping now"
                    + ("" if {"memory.swap_in", "memory.swap_out"} & {c.id for c in breaches}
                       else ", and they are below their limits")),
            evidence=[Evidence(tool=fc.tool, counter=f"{swap.counter} [swap]", value=swap.value, threshold=limit,
                               window_s=round(fc.window_s, 3), sample=fc.sample)],
            suggestion="Nothing to do unless the swap rates rise; perf_snapshot shows who holds memory.",
            next=next_call("perf_snapshot")))
    oom = by_id.get("memory.oom_kills")
    if oom is not None and oom.value:
        out.append(Finding(id="use.memory.oom", severity="info", resource="memory",
                           title=f"{oom.value:g} OOM kill(s) during the window",
                           detail="The kernel killed processes to free memory (/proc/vmstat oom_kill).",
                           confidence=0.9, metrics={"memory.oom_kills": oom.value},
                           evidence=[_evidence(oom, fc)],
                           suggestion="Next: perf_cgroup_summary to see which cgroup hit its limit (oom_kill "
                                      "in its memory events), and the kernel log for the victim.",
                           next=next_call("perf_cgroup_summary")))
    return out


def disk_findings(signals: list[Signal], fc: FindingContext) -> list[Finding]:
    out: list[Finding] = []
    psi = [s.check for s in signals if s.check.id.startswith("psi.io.") and s.check.value is not None]
    psi_breach = [c for c in psi if c.status in ("warning", "critical")]
    devices = sorted({c.target for c in _breaching(signals, "disk.")})
    own = fc.tool == "perf_io_latency"
    for dev in devices:
        breaches = _breaching(signals, f"disk.{dev}.")
        mine = [s.check for s in signals if s.check.id.startswith(f"disk.{dev}.")]
        context = [c for c in mine if c.status == "ok"]
        util = next((c for c in mine if c.kind == "utilisation"), None)
        parallel = util is not None and "parallel" in util.detail
        saturated = any(c.kind == "saturation" for c in breaches)
        if parallel:
            title = f"Disk {dev} saturated: requests wait (await and queue)"
            extra = (f"%util {util.value:g}% is not the measure here ({util.detail.split('; ')[0]})"
                     if util is not None and util.value is not None else "")
        else:
            title = f"Disk {dev} {'saturated: requests queue' if saturated else 'busy'}"
            extra = ""
        steps = [] if own else [f"perf_io_latency device={dev} for await and queue"]
        steps += [f"perf_bio_latency device={dev} for the latency distribution",
                  "perf_io_layers to see which processes issue the I/O"]
        nxt = (next_call("perf_bio_latency", device=dev, duration_s=5) if own
               else next_call("perf_io_latency", device=dev, duration_s=5))
        out.append(_finding(f"use.disk.{dev}", "disk", title, breaches + psi_breach, context + psi, fc,
                            "Next: " + "; ".join(steps) + ".", extra, nxt=nxt, shown=psi))
    for s in signals:  # busy parallel disks that are not saturated: say so, as information
        c = s.check
        if c.kind != "utilisation" or not c.info or not c.id.startswith("disk.") or c.target in devices:
            continue
        siblings = {x.id: x for x in (t.check for t in signals) if x.target == c.target}
        queue, wait = siblings.get(f"disk.{c.target}.saturation"), siblings.get(f"disk.{c.target}.await")
        figures = ", ".join(f"{x.metric.split(' (')[0]} {x.value:g}{' ms' if x is wait else ''}"
                            for x in (queue, wait) if x is not None and x.value is not None)
        out.append(_finding(
            f"use.disk.{c.target}.util", "disk",
            f"Disk {c.target} {c.value:.0f}% busy (%util), but not saturated: it serves requests in parallel",
            [c], [x for x in (queue, wait) if x is not None], fc,
            f"%util counts time with at least one request in flight; {c.detail}. Next: perf_io_latency "
            f"device={c.target} mode=trace for the latency distribution if the application is slow.",
            extra=f"{figures}: within their limits" if figures else "", severity="info",
            nxt=next_call("perf_io_latency", device=c.target, mode="trace", duration_s=5)))
    if psi_breach and not devices:
        out.append(_finding("use.disk.psi", "disk", "Tasks stall on I/O", psi_breach,
                            [c for c in psi if c.status == "ok"], fc,
                            "Next: perf_io_latency for per-device await and utilisation; perf_bio_latency for the "
                            "latency distribution; perf_offcpu_profile to see who waits.",
                            "no single disk is over its thresholds: the stall may be on network storage, on "
                            "writeback, or on a device that is not a whole disk here",
                            nxt=next_call("perf_io_latency", duration_s=5)))
    return out


def filesystem_findings(signals: list[Signal], fc: FindingContext) -> list[Finding]:
    out: list[Finding] = []
    mounts = sorted({c.target for c in _breaching(signals, "fs.")})
    for mount in mounts:
        breaches = _breaching(signals, f"fs.{mount}.")
        context = [s.check for s in signals if s.check.target == mount and s.check.status == "ok"]
        what = " and ".join("inodes" if c.id.endswith(".inodes") else "space" for c in breaches)
        worst = max(c.value or 0.0 for c in breaches)
        out.append(_finding(
            f"use.fs.{mount}", "disk", f"Filesystem {mount} {worst:.0f}% full ({what})", breaches, context, fc,
            f"Writers to {mount} will fail with ENOSPC (and stall before that, as the allocator searches for "
            "space): free space or grow the filesystem. Next: perf_io_layers to see which processes write.",
            extra=next((c.detail for c in breaches if c.id.endswith(".space")), ""),
            nxt=next_call("perf_io_layers", duration_s=5)))
    return out


def network_findings(signals: list[Signal], fc: FindingContext) -> list[Finding]:
    out: list[Finding] = []
    for s in signals:
        c = s.check
        if c.status not in ("warning", "critical") or not c.threshold:
            continue
        if c.id == "network.tcp.retransmits":
            out.append(_finding("use.network.retransmits", "network", "TCP retransmits", [c], [], fc,
                                "Next: perf_net_health include_tcp_details=true for the sockets with the most "
                                "retransmits; perf_tcp_trace to follow the affected connections.",
                                nxt=next_call("perf_net_health", include_tcp_details=True)))
        elif c.id == "network.softnet.drops":
            out.append(_finding("use.network.softnet", "network", "Packets dropped: CPU input backlog full", [c], [],
                                fc, "Next: perf_net_health for softnet drops and squeezes per CPU; "
                                "perf_snapshot include_per_cpu=true for softirq time.",
                                nxt=next_call("perf_net_health")))
        else:
            out.append(_finding(f"use.network.{c.target}", "network", f"Packets dropped on {c.target}", [c], [], fc,
                                f"Next: perf_net_health interface={c.target} for drop and error counters, "
                                "listen overflows and softnet drops.",
                                nxt=next_call("perf_net_health", interface=c.target)))
    return out


def cgroup_findings(name: str, signals: list[Signal], fc: FindingContext) -> list[Finding]:
    breaches = _breaching(signals)
    if not breaches:
        return []
    context = [s.check for s in signals if s.check.status == "ok" and s.check.value is not None]
    return [_finding("use.cgroup", "cgroup", f"This server's cgroup {name} is near its limit", breaches, context, fc,
                     "Next: perf_cgroup_summary for the cgroup's limits, failcnt, throttling and PSI.",
                     nxt=next_call("perf_cgroup_summary", pid=fc.server_pid))]


# ---------------------------------------------------------------- the culprits


def _proc_label(p: Any) -> str:
    command = (getattr(p, "command", "") or "").strip()
    if len(command) > 60:
        command = command[:57] + "..."
    return f"pid {p.pid} ({command or '?'}, user {getattr(p, 'user', '?')})"


def name_culprits(findings: list[Finding], attribution: Any, fc: FindingContext, top: int = 3) -> list[Finding]:
    """Findings about CPU, memory and disks with the top processes of
    `attribution` (procfs.attribution.Attribution: lists of rows with pid,
    user, command and the figure) named: the first in the title, as evidence
    and as the pid of the next call, up to `top` in the detail."""
    out = []
    for f in findings:
        rows: list[Any] = []
        figure, unit, counter = "", "", ""
        if f.resource == "cpu" and f.id != "use.cpu.steal":
            rows, figure, unit, counter = list(attribution.cpu), "cpu_pct", "% CPU", "/proc/PID/stat utime+stime"
        elif f.resource == "memory" and f.severity != "info":
            rows, figure, unit, counter = list(attribution.memory), "rss_mb", " MB RSS", "/proc/PID/statm resident"
        elif f.resource == "disk" and f.id.startswith("use.disk.") and f.severity != "info":
            both: dict[int, Any] = {}
            for r in list(attribution.disk_read) + list(attribution.disk_write):
                both.setdefault(r.pid, r)
            rows = sorted(both.values(), key=lambda r: -((r.read_bps or 0) + (r.write_bps or 0)))
            figure, unit, counter = "", " B/s", "/proc/PID/io read_bytes+write_bytes"
        rows = [r for r in rows if _amount(r, figure) > 0][:top]
        if not rows:
            out.append(f)
            continue
        lead = rows[0]
        # the others only where they count beside the lead (a 0.3% process after a 100% one says nothing)
        rows = [lead] + [r for r in rows[1:] if _amount(r, figure) >= 0.05 * _amount(lead, figure)]
        names = f"{_proc_label(lead)} {_amount(lead, figure):.0f}{unit}"
        if len(rows) > 1:
            names += f", then {', '.join(f'pid {r.pid} {_amount(r, figure):.0f}{unit}' for r in rows[1:])}"
        evidence = list(f.evidence) + [
            Evidence(tool=fc.tool, counter=f"{counter} [{_proc_label(r)}]", value=round(_amount(r, figure), 1),
                     window_s=round(getattr(attribution, "window_s", fc.window_s), 3), sample=fc.sample)
            for r in rows[:1]]  # the others are named in the detail (say less)
        metrics_ = dict(f.metrics)
        metrics_["top.pid"] = float(lead.pid)
        nxt = f.next
        if f.id == "use.cpu.single":
            nxt = next_call("perf_thread_profile", pid=lead.pid, duration_s=5)
        elif f.id == "use.cpu":
            nxt = next_call("perf_cpu_profile", pid=lead.pid, duration_s=10)
        elif f.resource == "memory" and f.id == "use.memory":
            nxt = next_call("perf_cgroup_summary", pid=lead.pid)
        out.append(msgspec.structs.replace(
            f, title=f"{f.title}; top: {getattr(lead, 'command', '') and _short(lead.command)} (pid {lead.pid})",
            detail=f"{f.detail}. Top processes: {names}", evidence=evidence, metrics=metrics_, next=nxt))
    return out


def _short(command: str) -> str:
    first = command.split()[0] if command.split() else command
    return first.rsplit("/", 1)[-1][:40]


def _amount(row: Any, figure: str) -> float:
    if figure:
        return float(getattr(row, figure, None) or 0.0)
    return float((getattr(row, "read_bps", None) or 0.0) + (getattr(row, "write_bps", None) or 0.0))


# ---------------------------------------------------------------- all of it


def evaluate(w: Window, th: Thresholds, fc: FindingContext, cgroup: CgroupState | None = None) -> Evaluation:
    rows: list[UseRow] = []
    signals: dict[str, list[Signal]] = {}
    findings: list[Finding] = []

    cpu, cpu_detail = cpu_signals(w, th)
    mem, mem_detail = memory_signals(w, th)
    disk, disk_detail = disk_signals(w, th)
    net, net_detail = network_signals(w, th)
    parts: list[tuple[Resource, str, list[Signal], str]] = [
        ("cpu", "cpu", cpu, cpu_detail), ("memory", "memory", mem, mem_detail), ("disk", "disk", disk, disk_detail)]
    fs: list[Signal] = []
    if w.filesystems is not None:
        fs, fs_detail = filesystem_signals(w.filesystems, th)
        parts.append(("disk", "filesystem", fs, fs_detail))
    parts.append(("network", "network", net, net_detail))
    for resource, name, sigs, detail in parts:
        rows.append(_row(resource, name, sigs, detail))
        signals[name] = sigs
    findings += cpu_findings(cpu, fc)
    findings += memory_findings(mem, fc)
    findings += disk_findings(disk, fc)
    findings += filesystem_findings(fs, fc)
    findings += network_findings(net, fc)
    if cgroup is not None:
        cg, cg_detail = cgroup_signals(cgroup, th)
        if cg:
            name = f"cgroup {cgroup.path}"
            rows.append(_row("cgroup", name, cg, cg_detail))
            signals[name] = cg
            findings += cgroup_findings(cgroup.path, cg, fc)
    return Evaluation(rows=rows, signals=signals, findings=sort_findings(findings))


def row_condition(signals: Sequence[Signal], status: Status) -> Condition | None:
    """The condition that a row is still in `status`: for a troubled row, its
    breaching checks are at least that bad; for an ok row, every check is ok.
    None when a check has no ring-based condition (or the status is unknown)."""
    if status == "unknown":
        return None
    if status == "ok":
        conds = [s.condition for s in signals if s.check.threshold]
    else:
        conds = [s.condition for s in signals if s.check.status == status]
    if not conds or any(c is None for c in conds):
        return None
    real = [c for c in conds if c is not None]

    def holds(o: SnapshotLike, n: SnapshotLike) -> bool | None:
        if status == "ok":
            return all(c(o, n) is not False for c in real)
        return any(c(o, n) for c in real)

    return holds
