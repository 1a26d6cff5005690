"""The USE method over two samples of the ring: a table per resource
(utilisation, saturation, errors, each check with its status against
thresholds.THRESHOLDS) and findings in the shared Finding shape.

Pure: the caller (tools/perf_use_check.py) passes samples from the sampler,
the names of the whole disks, and the state of its own cgroup; nothing here
reads a file or a clock. Every check carries a `condition` (older, newer) ->
bool that the caller hands to Sampler.since_when to say since when the
resource has been in its state; it is the same metric function as the check.

Resources and rules (limits from the table):
- cpu: utilisation = 100 - idle - iowait (/proc/stat); run queue = mean of
  procs_running - 1 over the window's samples, per online CPU; PSI cpu some.
- memory: MemAvailable / MemTotal; swap used (when there is swap); PSI memory
  some and full; OOM kills are reported (info), major faults and swapping in
  the detail.
- disk: per whole disk (partitions are covered by their disk) %util and
  aqu-sz as iostat -x; PSI io some and full.
- network: per interface rx+tx drops/s; softnet backlog drops/s; TCP
  retransmit % (RetransSegs / OutSegs) once at least MIN_SEGMENTS were sent.
- cgroup (the server's own, only where a limit exists): memory working set
  (usage - inactive file) against the limit, with the memory.available rows;
  CPU usage against the quota, with the cpu.utilisation rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from ..contract import Evidence, Finding, Resource, Severity, sort_findings
from ..procfs.snapshot import SnapshotLike
from . import metrics
from .thresholds import Threshold, Thresholds

Status = Literal["ok", "warning", "critical"]
Kind = Literal["utilisation", "saturation", "errors"]
Condition = Callable[[SnapshotLike, SnapshotLike], "bool | None"]

TOOL = "perf_use_check"
MIN_SEGMENTS = 100
VIRTUAL_DISKS = ("loop", "ram", "nbd")  # TCP segments sent in the window before a retransmit % is judged
STATUS_RANK = {"critical": 0, "warning": 1, "ok": 2}


class Check(msgspec.Struct, kw_only=True):
    """One cell of the USE table."""

    id: str  # "disk.vda.utilisation"
    kind: Kind
    metric: str
    target: str  # "all CPUs", "vda", "eth0", "memory"
    value: float | None
    unit: str
    status: Status
    threshold: str | None  # key of the row in thresholds.THRESHOLDS
    warning: float | None
    critical: float | None
    counter: str  # where the value comes from
    detail: str = ""


class StateSince(msgspec.Struct, kw_only=True):
    """Since when the resource has been in its current status."""

    status: Status
    since: float  # time.time() of the sample where it began (the caller formats it)
    duration_s: float
    at_least: bool  # held across the whole ring: began even earlier


class UseRow(msgspec.Struct, kw_only=True):
    resource: Resource
    name: str  # "cpu", "memory", "disk", "network", "cgroup memory:/x"
    status: Status
    utilisation: list[Check]
    saturation: list[Check]
    errors: list[Check]
    detail: str
    since: StateSince | None = None


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

    def span(self, older: SnapshotLike, newer: SnapshotLike) -> Sequence[SnapshotLike]:
        return self.between(older, newer) if self.between is not None else (older, newer)


@dataclass
class Evaluation:
    rows: list[UseRow]
    signals: dict[str, list[Signal]]  # row name -> its signals
    findings: list[Finding]


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _status(th: Threshold, value: float | None) -> Status:
    severity = th.severity(value)
    if severity == "critical":
        return "critical"
    return "warning" if severity == "warning" else "ok"


def _at_least(th: Threshold, status: Status, value: float | None) -> bool | None:
    """value is in `status` or worse (ok: in ok only, so the walk finds when trouble ended)."""
    if value is None:
        return None
    severity = th.severity(value)
    if status == "ok":
        return severity is None
    return severity is not None and STATUS_RANK[severity] <= STATUS_RANK[status]


def _check(th: Threshold, *, id: str, kind: Kind, target: str, value: float | None, counter: str,
           scale: float = 1.0, unit: str | None = None, detail: str = "") -> Check:
    """A check of value against a row whose limits are multiplied by scale
    (run queue: the CPU count; unit then names what value counts)."""
    scaled = value / scale if value is not None and scale else value
    status = _status(th, scaled)
    return Check(id=id, kind=kind, metric=th.metric, target=target, value=_r(value),
                 unit=th.unit.strip() if unit is None else unit,
                 status=status, threshold=th.key, warning=_r(th.warning * scale), critical=_r(th.critical * scale),
                 counter=counter, detail=detail)


def _fact(*, id: str, kind: Kind, metric: str, target: str, value: float | None, unit: str, counter: str,
          detail: str = "") -> Check:
    """A reported figure without a threshold (its status is ok)."""
    return Check(id=id, kind=kind, metric=metric, target=target, value=_r(value), unit=unit, status="ok",
                 threshold=None, warning=None, critical=None, counter=counter, detail=detail)


def _worst(checks: Sequence[Check]) -> Status:
    return min((c.status for c in checks), key=STATUS_RANK.__getitem__, default="ok")


def _row(resource: Resource, name: str, signals: list[Signal], detail: str) -> UseRow:
    checks = [s.check for s in signals]
    by_kind = {k: [c for c in checks if c.kind == k] for k in ("utilisation", "saturation", "errors")}
    return UseRow(resource=resource, name=name, status=_worst(checks), utilisation=by_kind["utilisation"],
                  saturation=by_kind["saturation"], errors=by_kind["errors"], detail=detail)


def _psi_signals(w: Window, th: Thresholds, resource: str) -> list[Signal]:
    signals = []
    for kind in ("some", "full"):
        value = metrics.psi_share(w.older, w.newer, resource, kind)
        if value is None:
            continue
        row = th[f"psi.{kind}_avg10_pct"]
        check = _check(row, id=f"psi.{resource}.{kind}", kind="saturation", target=f"PSI {resource} {kind}",
                       value=value, counter=f"/proc/pressure/{resource} {kind} total (stall share of the window)")
        status = check.status

        def cond(o: SnapshotLike, n: SnapshotLike, row: Threshold = row, res: str = resource, k: str = kind,
                 status: Status = status) -> bool | None:
            return _at_least(row, status, metrics.psi_share(o, n, res, k))

        signals.append(Signal(check, cond))
    return signals


# ---------------------------------------------------------------- cpu


def cpu_signals(w: Window, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    busy = metrics.cpu_busy_pct(w.older, w.newer)
    if busy is not None:
        row = th["cpu.utilisation_pct"]
        check = _check(row, id="cpu.utilisation", kind="utilisation", target="all CPUs", value=busy,
                       counter="/proc/stat cpu (100 - idle - iowait)")

        def cond(o: SnapshotLike, n: SnapshotLike, row: Threshold = row, st: Status = check.status) -> bool | None:
            return _at_least(row, st, metrics.cpu_busy_pct(o, n))

        signals.append(Signal(check, cond))
    mean, peak = metrics.mean_run_queue(w.samples)
    if mean is not None:
        row = th["cpu.run_queue_per_cpu"]
        check = _check(row, id="cpu.run_queue", kind="saturation", target="all CPUs", value=mean, scale=w.cpus,
                       unit="tasks",
                       counter="/proc/stat procs_running - 1 (mean over the window's samples)",
                       detail=f"peak {peak} runnable on {w.cpus} CPUs")

        def rq(o: SnapshotLike, n: SnapshotLike, row: Threshold = row, st: Status = check.status,
               cpus: int = w.cpus, span: Callable[..., Sequence[SnapshotLike]] = w.span) -> bool | None:
            value, _ = metrics.mean_run_queue(span(o, n))  # the mean over the step, as the check
            return _at_least(row, st, None if value is None else value / cpus)

        signals.append(Signal(check, rq))
    signals += _psi_signals(w, th, "cpu")
    load = w.newer.loadavg
    parts = [f"{busy:.0f}% busy" if busy is not None else "utilisation unknown"]
    if mean is not None:
        parts.append(f"run queue {mean:.1f} (peak {peak}) on {w.cpus} CPUs")
    if load is not None:
        parts.append(f"load {load.load1:.2f}/{load.load5:.2f}/{load.load15:.2f}")
    psi = next((s.check for s in signals if s.check.id == "psi.cpu.some"), None)
    if psi is not None:
        parts.append(f"PSI cpu some {psi.value:.1f}%")
    return signals, ", ".join(parts)


# ---------------------------------------------------------------- memory


def memory_signals(w: Window, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    avail = metrics.mem_available_pct(w.newer)
    parts = []
    if avail is not None:
        row = th["memory.available_pct"]
        check = _check(row, id="memory.available", kind="utilisation", target="memory", value=avail,
                       counter="/proc/meminfo MemAvailable / MemTotal (latest sample)")

        def cond(o: SnapshotLike, n: SnapshotLike, row: Threshold = row, st: Status = check.status) -> bool | None:
            return _at_least(row, st, metrics.mem_available_pct(n))

        signals.append(Signal(check, cond))
        parts.append(f"{avail:.0f}% available")
    swap = metrics.swap_used_pct(w.newer)
    if swap is not None:
        row = th["memory.swap_used_pct"]
        check = _check(row, id="memory.swap_used", kind="saturation", target="swap", value=swap,
                       counter="/proc/meminfo (SwapTotal - SwapFree) / SwapTotal (latest sample)")

        def scond(o: SnapshotLike, n: SnapshotLike, row: Threshold = row, st: Status = check.status) -> bool | None:
            return _at_least(row, st, metrics.swap_used_pct(n))

        signals.append(Signal(check, scond))
        parts.append(f"swap {swap:.1f}% used")
    else:
        parts.append("no swap")
    signals += _psi_signals(w, th, "memory")
    rates = _memory_rates(w)
    if rates is not None:
        major, swapped, oom = rates
        signals.append(Signal(_fact(id="memory.major_faults", kind="saturation", metric="major page faults",
                                    target="memory", value=major, unit="/s", counter="/proc/vmstat pgmajfault"),
                              None))
        signals.append(Signal(_fact(id="memory.swapping", kind="saturation", metric="pages swapped in+out",
                                    target="swap", value=swapped, unit="/s", counter="/proc/vmstat pswpin+pswpout"),
                              None))
        signals.append(Signal(_fact(id="memory.oom_kills", kind="errors", metric="OOM kills", target="memory",
                                    value=oom, unit="", counter="/proc/vmstat oom_kill (during the window)"),
                              None))
        if major is not None:
            parts.append(f"{major:.0f} major faults/s")
        if oom:
            parts.append(f"{oom:.0f} OOM kills")
    return signals, ", ".join(parts)


def _memory_rates(w: Window) -> tuple[float | None, float | None, float | None] | None:
    o, n = w.older.vmstat, w.newer.vmstat
    interval = w.newer.t_mono - w.older.t_mono
    if o is None or n is None or interval <= 0:
        return None

    def delta(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None or b < a else float(b - a)

    major = delta(o.pgmajfault, n.pgmajfault)
    sin, sout = delta(o.pswpin, n.pswpin), delta(o.pswpout, n.pswpout)
    swapped = None if sin is None or sout is None else (sin + sout) / interval
    return (None if major is None else major / interval), swapped, delta(o.oom_kill, n.oom_kill)


# ---------------------------------------------------------------- disk


def disk_signals(w: Window, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    devices = sorted(set(w.newer.diskstats.devices) & w.whole_disks) if w.newer.diskstats else []
    util_row, queue_row = th["disk.utilisation_pct"], th["disk.queue"]
    worst: tuple[float, str] | None = None
    for dev in devices:
        util = metrics.disk_util_pct(w.older, w.newer, dev)
        queue = metrics.disk_queue(w.older, w.newer, dev)
        if util is None or (dev.startswith(VIRTUAL_DISKS) and not util and not queue):
            continue  # idle loop/ram/nbd devices are not worth a row
        if worst is None or util > worst[0]:
            worst = (util, dev)
        cells: tuple[tuple[Threshold, Kind, float | None, Callable[..., float | None], str], ...] = (
            (util_row, "utilisation", util, metrics.disk_util_pct, "/proc/diskstats io_ticks (%util as iostat -x)"),
            (queue_row, "saturation", queue, metrics.disk_queue,
             "/proc/diskstats time_in_queue (aqu-sz as iostat -x)"),
        )
        for row, kind, value, fn, counter in cells:
            check = _check(row, id=f"disk.{dev}.{kind}", kind=kind, target=dev, value=value, counter=counter)

            def cond(o: SnapshotLike, n: SnapshotLike, row: Threshold = row, st: Status = check.status,
                     dev: str = dev, fn_: Callable[..., float | None] = fn) -> bool | None:
                return _at_least(row, st, fn_(o, n, dev))

            signals.append(Signal(check, cond))
    signals += _psi_signals(w, th, "io")
    detail = f"{len({s.check.target for s in signals if s.check.kind == 'utilisation' and s.check.id.startswith('disk.')})} disks"
    if worst is not None:
        detail += f", busiest {worst[1]} at {worst[0]:.0f}% util"
    psi = next((s.check for s in signals if s.check.id == "psi.io.some"), None)
    if psi is not None:
        detail += f", PSI io some {psi.value:.1f}%"
    signals.append(Signal(_fact(id="disk.errors", kind="errors", metric="I/O errors", target="all disks",
                                value=None, unit="", counter="not in /proc/diskstats",
                                detail="the kernel log (dmesg) is where device errors show"), None))
    return signals, detail


# ---------------------------------------------------------------- network


def network_signals(w: Window, th: Thresholds) -> tuple[list[Signal], str]:
    signals: list[Signal] = []
    drops_row = th["network.drops_per_s"]
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

        def cond(o: SnapshotLike, n: SnapshotLike, row: Threshold = drops_row, st: Status = check.status,
                 name: str = name) -> bool | None:
            return _at_least(row, st, metrics.interface_drops_s(o, n, name))

        signals.append(Signal(check, cond))
        errors = _interface_errors_s(w, name)
        if errors:
            signals.append(Signal(_fact(id=f"network.{name}.errors", kind="errors", metric="interface errors",
                                        target=name, value=errors, unit="/s",
                                        counter="/proc/net/dev rx_errors + tx_errors"), None))
    backlog = metrics.softnet_drops_s(w.older, w.newer)
    if backlog is not None:
        check = _check(drops_row, id="network.softnet.drops", kind="saturation", target="softnet backlog",
                       value=backlog, counter="/proc/net/softnet_stat dropped (input backlog full)")

        def scond(o: SnapshotLike, n: SnapshotLike, row: Threshold = drops_row,
                  st: Status = check.status) -> bool | None:
            return _at_least(row, st, metrics.softnet_drops_s(o, n))

        signals.append(Signal(check, scond))
    pct, out, retrans = metrics.tcp_retransmits(w.older, w.newer)
    retrans_row = th["network.retransmit_pct"]
    detail = f"{len(names)} interfaces" + (f", drops on {', '.join(dropping)}" if dropping else ", no drops")
    if out is not None:
        judged = pct if out >= MIN_SEGMENTS else None
        check = _check(retrans_row, id="network.tcp.retransmits", kind="errors", target="TCP", value=judged,
                       counter="/proc/net/snmp Tcp RetransSegs / OutSegs",
                       detail=(f"{retrans} of {out} segments retransmitted" if out >= MIN_SEGMENTS else
                               f"only {out} segments sent (< {MIN_SEGMENTS}): too few to judge"))

        def rcond(o: SnapshotLike, n: SnapshotLike, row: Threshold = retrans_row,
                  st: Status = check.status) -> bool | None:
            return _at_least(row, st, metrics.retransmit_pct(o, n, MIN_SEGMENTS))

        signals.append(Signal(check, rcond))
        if judged is not None:
            detail += f", TCP retransmits {judged:.2f}%"
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
    limit = c.critical if c.status == "critical" else c.warning
    word = "below" if c.threshold and c.threshold.endswith("available_pct") else "above"
    unit = c.unit if c.unit in ("%", "/s") else (" " + c.unit if c.unit else "")
    value = f"{c.value:g}{unit}" if c.value is not None else "?"
    return f"{c.metric} {value} on {c.target} ({c.status}: {word} {limit:g})"


@dataclass
class FindingContext:
    window_s: float
    sample: str  # ISO time of the latest sample
    cpus: int
    tool: str = TOOL  # the tool whose evidence it is


def _finding(fid: str, resource: Resource, title: str, breaches: list[Check], context: list[Check],
             fc: FindingContext, suggestion: str, extra: str = "") -> Finding:
    detail = "; ".join(_describe(c) for c in breaches)
    if extra:
        detail += ". " + extra
    metrics_ = {c.id: c.value for c in breaches + context if c.value is not None}
    return Finding(
        id=fid, severity=_severity(breaches), resource=resource, title=title, detail=detail,
        confidence=_confidence(breaches), metrics=metrics_,
        evidence=[_evidence(c, fc) for c in breaches + context],
        suggestion=suggestion,
    )


def _breaching(signals: Sequence[Signal], prefix: str = "") -> list[Check]:
    return [s.check for s in signals if s.check.status != "ok" and s.check.id.startswith(prefix)]


def cpu_finding(signals: list[Signal], fc: FindingContext) -> Finding | None:
    breaches = _breaching(signals)
    if not breaches:
        return None
    ids = {c.id for c in breaches}
    saturated = bool(ids & {"cpu.run_queue", "psi.cpu.some"})
    title = "CPU saturated: tasks wait for a CPU" if saturated else "CPU busy"
    context = [s.check for s in signals if s.check.status == "ok" and s.check.threshold]
    steps = ["perf_cpu_profile to see which code uses the CPU"]
    if saturated:
        steps.append("perf_runq_latency to measure how long tasks wait to run")
    steps.append("perf_snapshot include_per_cpu=true to see whether one CPU or all are busy")
    return _finding("use.cpu", "cpu", title, breaches, context, fc, "Next: " + "; ".join(steps) + ".")


def memory_findings(signals: list[Signal], fc: FindingContext) -> list[Finding]:
    out: list[Finding] = []
    breaches = _breaching(signals)
    by_id = {s.check.id: s.check for s in signals}
    if breaches:
        ids = {c.id for c in breaches}
        avail = by_id.get("memory.available")
        short = avail is not None and avail.status != "ok"
        context = [s.check for s in signals if s.check.status == "ok" and s.check.value is not None]
        extra = ""
        if ids <= {"psi.memory.some", "psi.memory.full"} and avail is not None:
            title = "Tasks stall on memory while the system has memory available: a cgroup limit is likely"
            extra = (f"system-wide {avail.value:g}% of memory is available, so the stalls come from reclaim inside "
                     "memory-limited cgroups (or from refaulting a working set larger than its limit)")
            suggestion = ("Next: perf_cgroup_summary with the pid of a slow process to see its memory limit, "
                          "failcnt and memory PSI; perf_snapshot for major faults and reclaim rates.")
        else:
            title = "Memory short" if short else "Memory pressure"
            suggestion = ("Next: perf_snapshot for major faults, swapping and reclaim rates; perf_cgroup_summary to "
                          "find which cgroup holds the memory; perf_offcpu_profile to see who waits in reclaim.")
        out.append(_finding("use.memory", "memory", title, breaches, context, fc, suggestion, extra))
    oom = by_id.get("memory.oom_kills")
    if oom is not None and oom.value:
        out.append(Finding(id="use.memory.oom", severity="info", resource="memory",
                           title=f"{oom.value:g} OOM kill(s) during the window",
                           detail="The kernel killed processes to free memory (/proc/vmstat oom_kill).",
                           confidence=0.9, metrics={"memory.oom_kills": oom.value},
                           evidence=[_evidence(oom, fc)],
                           suggestion="Next: perf_cgroup_summary to see which cgroup hit its limit (oom_kill "
                                      "in its memory events), and the kernel log for the victim."))
    return out


def disk_findings(signals: list[Signal], fc: FindingContext) -> list[Finding]:
    out: list[Finding] = []
    psi = [s.check for s in signals if s.check.id.startswith("psi.io.")]
    psi_breach = [c for c in psi if c.status != "ok"]
    devices = sorted({c.target for c in _breaching(signals, "disk.")})
    for dev in devices:
        breaches = _breaching(signals, f"disk.{dev}.")
        context = [s.check for s in signals if s.check.id.startswith(f"disk.{dev}.") and s.check.status == "ok"]
        saturated = any(c.kind == "saturation" for c in breaches)
        title = f"Disk {dev} {'saturated: requests queue' if saturated else 'busy'}"
        steps = [] if fc.tool == "perf_io_latency" else [f"perf_io_latency device={dev} for await and queue"]
        steps += [f"perf_bio_latency device={dev} for the latency distribution",
                  "perf_io_layers to see which processes issue the I/O"]
        out.append(_finding(f"use.disk.{dev}", "disk", title, breaches + psi_breach, context + psi, fc,
                            "Next: " + "; ".join(steps) + "."))
    if psi_breach and not devices:
        out.append(_finding("use.disk.psi", "disk", "Tasks stall on I/O", psi_breach,
                            [c for c in psi if c.status == "ok"], fc,
                            "Next: perf_io_latency for per-device await and utilisation; perf_bio_latency for the "
                            "latency distribution; perf_offcpu_profile to see who waits.",
                            "no single disk is over its thresholds: the stall may be on a device with parallel "
                            "queues (where %util understates load), on network storage, or on writeback"))
    return out


def network_findings(signals: list[Signal], fc: FindingContext) -> list[Finding]:
    out: list[Finding] = []
    for s in signals:
        c = s.check
        if c.status == "ok" or not c.threshold:
            continue
        if c.id == "network.tcp.retransmits":
            out.append(_finding("use.network.retransmits", "network", "TCP retransmits", [c], [], fc,
                                "Next: perf_net_health include_tcp_details=true for the sockets with the most "
                                "retransmits; perf_tcp_trace to follow the affected connections."))
        elif c.id == "network.softnet.drops":
            out.append(_finding("use.network.softnet", "network", "Packets dropped: CPU input backlog full", [c], [],
                                fc, "Next: perf_net_health for softnet drops and squeezes per CPU; "
                                "perf_snapshot include_per_cpu=true for softirq time."))
        else:
            out.append(_finding(f"use.network.{c.target}", "network", f"Packets dropped on {c.target}", [c], [], fc,
                                f"Next: perf_net_health interface={c.target} for drop and error counters, "
                                "listen overflows and softnet drops."))
    return out


def cgroup_findings(name: str, signals: list[Signal], fc: FindingContext) -> list[Finding]:
    breaches = _breaching(signals)
    if not breaches:
        return []
    context = [s.check for s in signals if s.check.status == "ok" and s.check.value is not None]
    return [_finding("use.cgroup", "cgroup", f"This server's cgroup {name} is near its limit", breaches, context, fc,
                     "Next: perf_cgroup_summary for the cgroup's limits, failcnt, throttling and PSI.")]


# ---------------------------------------------------------------- all of it


def evaluate(w: Window, th: Thresholds, fc: FindingContext, cgroup: CgroupState | None = None) -> Evaluation:
    rows: list[UseRow] = []
    signals: dict[str, list[Signal]] = {}
    findings: list[Finding] = []

    cpu, cpu_detail = cpu_signals(w, th)
    mem, mem_detail = memory_signals(w, th)
    disk, disk_detail = disk_signals(w, th)
    net, net_detail = network_signals(w, th)
    parts: tuple[tuple[Resource, list[Signal], str], ...] = (
        ("cpu", cpu, cpu_detail), ("memory", mem, mem_detail), ("disk", disk, disk_detail),
        ("network", net, net_detail))
    for resource, sigs, detail in parts:
        rows.append(_row(resource, resource, sigs, detail))
        signals[resource] = sigs
    if (f := cpu_finding(cpu, fc)) is not None:
        findings.append(f)
    findings += memory_findings(mem, fc)
    findings += disk_findings(disk, fc)
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
    None when a check has no ring-based condition."""
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
