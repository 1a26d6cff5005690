"""A cgroup's state and rates from two readings, and its findings (pure).

Window figures are deltas between the two readings; lifetime figures are the
counters as they stand (since the cgroup was created).

- CPU usage in cores = usage_ns delta / window; throttled % = nr_throttled
  delta / nr_periods delta (the share of CFS periods in which the cgroup ran
  out of quota), the figure kube-prometheus's CPUThrottlingHigh alert uses.
- Working set = usage - inactive_file (reclaimable page cache), as the
  kubelet computes it; "near the limit" compares the working set, since page
  cache alone filling a limit is normal and harmless.
- PSI from the v2 cgroup. On a hybrid machine a process usually sits in the
  v2 root, whose PSI is the whole system's: those findings are info only here
  (perf_use_check judges the system).

Thresholds: PSI rows from the one table (perf_mcp.use.thresholds); the rows
below for cgroup-only metrics are added to it when it does not have them yet.
"""

from __future__ import annotations

import msgspec

from ..contract import Evidence, Finding, NextCall, Severity, next_call, sort_findings
from ..procfs import Pressure
from ..use.thresholds import Threshold, Thresholds
from .parse import CgroupReading, CpuReading, IoReading, MemoryReading, PidsReading

TOOL = "perf_cgroup_summary"

class CpuReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    usage_cores: float | None = None  # over the window
    usage_s_total: float | None = None  # CPU time since the cgroup was created
    quota: str  # "0.2 CPUs", "none" (no CFS quota) or "unknown" (no cpu controller file of this cgroup)
    usage_pct_of_quota: float | None = None
    quota_cores: float | None = None  # quota / period; None: no limit
    quota_us: int | None = None
    period_us: int | None = None
    shares: int | None = None
    weight: int | None = None
    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_s: float | None = None
    throttled_pct_lifetime: float | None = None
    window_periods: int | None = None
    window_throttled: int | None = None
    window_throttled_pct: float | None = None
    window_throttled_s: float | None = None


class MemoryReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    usage_bytes: int | None = None
    limit: str  # "64.0 MiB" or "none" (no limit, here or in a parent)
    limit_bytes: int | None = None  # None: no limit
    usage_pct_of_limit: float | None = None
    working_set_bytes: int | None = None
    working_set_pct_of_limit: float | None = None
    high_bytes: int | None = None
    peak_bytes: int | None = None
    failcnt: int | None = None
    failcnt_in_window: int | None = None
    events_max: int | None = None
    events_max_in_window: int | None = None
    events_high: int | None = None
    events_high_in_window: int | None = None
    oom: int | None = None
    oom_kill: int | None = None
    oom_kill_in_window: int | None = None
    under_oom: bool | None = None
    swap_bytes: int | None = None
    memsw_usage_bytes: int | None = None
    memsw_limit_bytes: int | None = None
    stat: dict[str, int] = {}


class IoDeviceReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    device: str  # MAJ:MIN
    read_bytes_s: float | None = None
    write_bytes_s: float | None = None
    reads_s: float | None = None
    writes_s: float | None = None
    read_bytes: int | None = None
    write_bytes: int | None = None


class IoReport(msgspec.Struct, kw_only=True):
    source: str
    devices: list[IoDeviceReport]


class PidsReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    current: int | None = None
    limit: int | None = None  # None: no limit (see max)
    max: str  # "100" or "none"
    pct_of_limit: float | None = None
    events_max: int | None = None


class PsiReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    some_avg10: float
    some_avg60: float
    full_avg10: float | None = None
    full_avg60: float | None = None
    some_window_pct: float | None = None
    full_window_pct: float | None = None


class CgroupState(msgspec.Struct, kw_only=True):
    interval_s: float
    cpu: CpuReport | None
    memory: MemoryReport | None
    io: IoReport | None
    pids: PidsReport | None
    psi: dict[str, PsiReport]
    findings: list[Finding]
    warnings: list[str]


def _delta(a: int | None, b: int | None, name: str, warnings: list[str]) -> int | None:
    if a is None or b is None:
        return None
    if b < a:
        warnings.append(f"{name} went backwards ({a} -> {b}): counter reset, no window figure")
        return None
    return b - a


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1048576:.1f} MiB"


def _pct(num: float | None, den: float | None) -> float | None:
    if num is None or not den:
        return None
    return round(num / den * 100.0, 3)


def cpu_report(a: CpuReading | None, b: CpuReading | None, interval_s: float, warnings: list[str]) -> CpuReport | None:
    if b is None:
        return None
    usage = _delta(a.usage_ns if a else None, b.usage_ns, "cpu usage", warnings)
    periods = _delta(a.nr_periods if a else None, b.nr_periods, "cpu.stat nr_periods", warnings)
    throttled = _delta(a.nr_throttled if a else None, b.nr_throttled, "cpu.stat nr_throttled", warnings)
    throttled_ns = _delta(a.throttled_ns if a else None, b.throttled_ns, "cpu.stat throttled_time", warnings)
    cores = None if usage is None else round(usage / 1e9 / interval_s, 4)
    quota_cores = round(b.quota_us / b.period_us, 4) if b.quota_us is not None and b.period_us else None
    return CpuReport(
        usage_cores=cores,
        usage_s_total=None if b.usage_ns is None else round(b.usage_ns / 1e9, 6),
        quota=(f"{quota_cores:g} CPUs" if quota_cores is not None
               else "none" if b.bandwidth_source is not None else "unknown"),
        usage_pct_of_quota=_pct(cores, quota_cores),
        quota_cores=quota_cores,
        quota_us=b.quota_us,
        period_us=b.period_us,
        shares=b.shares,
        weight=b.weight,
        nr_periods=b.nr_periods,
        nr_throttled=b.nr_throttled,
        throttled_s=None if b.throttled_ns is None else round(b.throttled_ns / 1e9, 6),
        throttled_pct_lifetime=_pct(b.nr_throttled, b.nr_periods),
        window_periods=periods,
        window_throttled=throttled,
        window_throttled_pct=_pct(throttled, periods) if periods else (0.0 if periods == 0 else None),
        window_throttled_s=None if throttled_ns is None else round(throttled_ns / 1e9, 6),
    )


def memory_report(a: MemoryReading | None, b: MemoryReading | None, warnings: list[str]) -> MemoryReport | None:
    if b is None:
        return None
    working = None
    if b.usage_bytes is not None:
        working = max(0, b.usage_bytes - (b.inactive_file_bytes or 0))

    def d(field: str) -> int | None:
        return _delta(getattr(a, field) if a else None, getattr(b, field), f"memory {field}", warnings)

    return MemoryReport(
        usage_bytes=b.usage_bytes,
        limit="none" if b.limit_bytes is None else mib(b.limit_bytes),
        limit_bytes=b.limit_bytes,
        usage_pct_of_limit=_pct(b.usage_bytes, b.limit_bytes),
        working_set_bytes=working,
        working_set_pct_of_limit=_pct(working, b.limit_bytes),
        high_bytes=b.high_bytes,
        peak_bytes=b.peak_bytes,
        failcnt=b.failcnt,
        failcnt_in_window=d("failcnt"),
        events_max=b.events_max,
        events_max_in_window=d("events_max"),
        events_high=b.events_high,
        events_high_in_window=d("events_high"),
        oom=b.oom,
        oom_kill=b.oom_kill,
        oom_kill_in_window=d("oom_kill"),
        under_oom=b.under_oom,
        swap_bytes=b.swap_bytes,
        memsw_usage_bytes=b.memsw_usage_bytes,
        memsw_limit_bytes=b.memsw_limit_bytes,
        stat=b.stat,
    )


def io_report(a: IoReading | None, b: IoReading | None, interval_s: float, warnings: list[str]) -> IoReport | None:
    if b is None:
        return None
    before = a.devices if a else {}
    devices: list[IoDeviceReport] = []
    for dev, cur in sorted(b.devices.items()):
        prev = before.get(dev)

        def rate(field: str) -> float | None:
            if prev is None:
                return None
            d = _delta(getattr(prev, field), getattr(cur, field), f"{dev} {field}", warnings)
            return None if d is None else round(d / interval_s, 3)

        devices.append(IoDeviceReport(device=dev, read_bytes_s=rate("read_bytes"), write_bytes_s=rate("write_bytes"),
                                      reads_s=rate("reads"), writes_s=rate("writes"),
                                      read_bytes=cur.read_bytes, write_bytes=cur.write_bytes))
    return IoReport(source=b.source, devices=devices)


def pids_report(b: PidsReading | None) -> PidsReport | None:
    if b is None:
        return None
    return PidsReport(current=b.current, limit=b.limit, max="none" if b.limit is None else str(b.limit),
                      pct_of_limit=_pct(b.current, b.limit),
                      events_max=b.events_max)


def psi_report(a: Pressure | None, b: Pressure, interval_s: float) -> PsiReport:
    def share(pa: int | None, pb: int | None) -> float | None:
        if pa is None or pb is None or pb < pa:
            return None
        return round(min(100.0, (pb - pa) / (interval_s * 1e6) * 100.0), 3)

    return PsiReport(
        some_avg10=b.some.avg10, some_avg60=b.some.avg60,
        full_avg10=b.full.avg10 if b.full else None, full_avg60=b.full.avg60 if b.full else None,
        some_window_pct=share(a.some.total_us if a else None, b.some.total_us),
        full_window_pct=share(a.full.total_us if a and a.full else None, b.full.total_us if b.full else None),
    )


# ---------------------------------------------------------------- findings


def _ev(counter: str, value: float | str | None, *, threshold: float | None = None, window_s: float | None = None,
        sample: str | None = None) -> Evidence:
    return Evidence(tool=TOOL, counter=counter, value=value, threshold=threshold,
                    window_s=None if window_s is None else round(window_s, 3), sample=sample)


def cpu_findings(cpu: CpuReport, row: Threshold, interval_s: float, files: str,
                 next: NextCall | None = None) -> list[Finding]:
    pct = cpu.window_throttled_pct
    severity = row.severity(pct) if cpu.window_throttled else None
    quota = (f"quota {cpu.quota_us} us per {cpu.period_us} us period ({cpu.quota_cores:g} CPUs)"
             if cpu.quota_us is not None and cpu.quota_cores is not None else "no quota")
    evidence = [
        _ev(f"{files} nr_throttled", cpu.window_throttled, window_s=interval_s,
            sample=f"lifetime {cpu.nr_throttled} of {cpu.nr_periods} periods"),
        _ev(f"{files} nr_periods", cpu.window_periods, window_s=interval_s),
        _ev(f"{files} throttled_time (s)", cpu.window_throttled_s, window_s=interval_s,
            sample=f"lifetime {cpu.throttled_s} s"),
        _ev("throttled % of periods", pct, threshold=row.limit(severity) if severity else row.warning,
            window_s=interval_s),
    ]
    metrics = {k: float(v) for k, v in (("window_throttled_pct", pct), ("window_throttled", cpu.window_throttled),
                                        ("window_periods", cpu.window_periods),
                                        ("window_throttled_s", cpu.window_throttled_s),
                                        ("usage_cores", cpu.usage_cores), ("quota_cores", cpu.quota_cores),
                                        ("nr_throttled", cpu.nr_throttled), ("throttled_s", cpu.throttled_s))
               if v is not None}
    if severity is not None and pct is not None:
        return [Finding(
            id="cgroup.cpu_throttling", severity=severity, resource="cgroup",
            title=f"CPU throttled in {pct:.0f}% of periods ({quota})",
            detail=(f"In {cpu.window_throttled} of {cpu.window_periods} CFS periods over {interval_s:.1f} s the cgroup "
                    f"used up its quota and its tasks waited {cpu.window_throttled_s or 0:.3f} s in total; it used "
                    + (f"{cpu.usage_cores:g} CPUs" if cpu.usage_cores is not None else "an unknown amount of CPU "
                       "(no cpuacct or v2 cgroup of this path)") + f" against {quota}."),
            confidence=0.9 if (cpu.window_periods or 0) >= 5 else 0.7, metrics=metrics, evidence=evidence,
            suggestion=("Raise the quota (cpu.cfs_quota_us / cpu.max) or cut the work: perf_cpu_profile on its "
                        "busiest process shows where the CPU goes."), next=next)]
    lifetime = cpu.throttled_pct_lifetime
    if lifetime is not None and lifetime > row.warning and (cpu.nr_throttled or 0) > 0:
        return [Finding(
            id="cgroup.cpu_throttling_past", severity="info", resource="cgroup",
            title=f"CPU was throttled in {lifetime:.0f}% of periods since the cgroup was created",
            detail="No throttling in this window, but the lifetime counters show the quota was hit before.",
            confidence=0.6, metrics=metrics, evidence=evidence, suggestion="Call again while the workload is busy.")]
    return []


def memory_findings(mem: MemoryReport, row: Threshold, interval_s: float, files: str) -> list[Finding]:
    out: list[Finding] = []
    ws = mem.working_set_pct_of_limit
    severity = row.severity(ws)
    if severity is not None and ws is not None:
        out.append(Finding(
            id="cgroup.memory_near_limit", severity=severity, resource="cgroup",
            title=f"Working set at {ws:.0f}% of the memory limit",
            detail=(f"usage {mem.usage_bytes} bytes minus reclaimable inactive page cache = {mem.working_set_bytes} "
                    f"bytes of a {mem.limit_bytes}-byte limit; allocations beyond it are reclaimed or OOM-killed."),
            confidence=0.8, metrics={"working_set_pct": ws, "usage_pct": mem.usage_pct_of_limit or 0.0},
            evidence=[_ev(f"{files} usage", mem.usage_bytes), _ev(f"{files} limit", mem.limit_bytes),
                      _ev("working set % of limit", ws, threshold=row.limit(severity))],
            suggestion="Raise the limit or find what holds memory (memory.stat anon vs file, per-process RSS)."))
    hits_window = mem.failcnt_in_window if mem.failcnt is not None else mem.events_max_in_window
    hits_total = mem.failcnt if mem.failcnt is not None else mem.events_max
    counter = f"{files} failcnt" if mem.failcnt is not None else f"{files} memory.events max"
    if hits_window:
        out.append(Finding(
            id="cgroup.memory_limit_hits", severity="warning", resource="cgroup",
            title=f"Memory limit hit {hits_window} times in {interval_s:.1f} s",
            detail=(f"{counter} grew by {hits_window} (now {hits_total}): charges at the limit forced reclaim "
                    "in the cgroup's own tasks, which stalls them (page cache thrashing or an anonymous "
                    "working set larger than the limit)."),
            confidence=0.85, metrics={"in_window": float(hits_window), "total": float(hits_total or 0)},
            evidence=[_ev(counter, hits_window, window_s=interval_s, sample=f"now {hits_total}"),
                      _ev(f"{files} usage", mem.usage_bytes, sample=f"limit {mem.limit_bytes}")],
            suggestion="Raise the limit, or shrink the working set; PSI memory shows how much time the stalls cost."))
    elif hits_total:
        out.append(Finding(
            id="cgroup.memory_limit_hits_past", severity="info", resource="cgroup",
            title=f"The memory limit was hit {hits_total} times since the cgroup was created",
            detail=f"{counter} is {hits_total} but did not grow during this window.",
            confidence=0.6, metrics={"total": float(hits_total)}, evidence=[_ev(counter, hits_total)],
            suggestion=""))
    if mem.oom_kill:
        grew = bool(mem.oom_kill_in_window)
        out.append(Finding(
            id="cgroup.oom_kills", severity="critical" if grew else "warning", resource="cgroup",
            title=f"OOM killer ran {mem.oom_kill} times in this cgroup" + (" (during this window)" if grew else ""),
            detail=(f"{mem.oom_kill} processes were killed because the cgroup's memory limit ({mem.limit_bytes} "
                    "bytes) could not be met by reclaim."),
            confidence=0.95, metrics={"oom_kill": float(mem.oom_kill), "in_window": float(mem.oom_kill_in_window or 0)},
            evidence=[_ev(f"{files} oom_kill", mem.oom_kill, window_s=interval_s,
                          sample=f"{mem.oom_kill_in_window} in window")],
            suggestion="Raise the limit or fix the memory growth; the kernel log (dmesg) names each victim."))
    if mem.under_oom:
        out.append(Finding(
            id="cgroup.under_oom", severity="critical", resource="cgroup",
            title="Tasks are frozen waiting for memory (under_oom)",
            detail="memory.oom_control under_oom = 1: the OOM killer is disabled for this cgroup and its tasks wait.",
            confidence=0.95, evidence=[_ev(f"{files} memory.oom_control under_oom", 1)],
            suggestion="Free memory in the cgroup, raise the limit, or re-enable the OOM killer."))
    if mem.events_high_in_window:
        out.append(Finding(
            id="cgroup.memory_high", severity="warning", resource="cgroup",
            title=f"Over memory.high {mem.events_high_in_window} times in {interval_s:.1f} s",
            detail="Usage went over memory.high, so the kernel throttled the cgroup's allocations with reclaim.",
            confidence=0.8, metrics={"in_window": float(mem.events_high_in_window)},
            evidence=[_ev(f"{files} memory.events high", mem.events_high_in_window, window_s=interval_s)],
            suggestion="Raise memory.high or reduce the working set."))
    return out


def pids_findings(pids: PidsReport, row: Threshold, files: str) -> list[Finding]:
    out: list[Finding] = []
    severity = row.severity(pids.pct_of_limit)
    if severity is not None and pids.pct_of_limit is not None:
        out.append(Finding(
            id="cgroup.pids_near_limit", severity=severity, resource="cgroup",
            title=f"{pids.current} tasks of a {pids.limit} limit ({pids.pct_of_limit:.0f}%)",
            detail="fork() and clone() fail with EAGAIN once pids.max is reached.",
            confidence=0.85, metrics={"pct": pids.pct_of_limit},
            evidence=[_ev(f"{files} pids.current", pids.current, threshold=row.limit(severity),
                          sample=f"pids.max {pids.limit}")],
            suggestion="Raise pids.max or find what spawns tasks (perf_exec_trace).",
            next=next_call("perf_exec_trace", duration_s=10)))
    if pids.events_max:
        out.append(Finding(
            id="cgroup.pids_limit_hit", severity="warning", resource="cgroup",
            title=f"{pids.events_max} forks were refused at pids.max",
            detail="pids.events max counts the times a fork or clone failed at the limit.",
            confidence=0.9, evidence=[_ev(f"{files} pids.events max", pids.events_max)],
            suggestion="Raise pids.max or find what spawns tasks (perf_exec_trace).",
            next=next_call("perf_exec_trace", duration_s=10)))
    return out


def psi_findings(psi: dict[str, PsiReport], table: Thresholds, v2_path: str | None) -> list[Finding]:
    out: list[Finding] = []
    system_wide = v2_path in (None, "/")
    where = "the whole system (v2 root cgroup)" if system_wide else f"v2 cgroup {v2_path}"
    for resource, p in psi.items():
        for kind, value in (("some", p.some_avg10), ("full", p.full_avg10 if resource != "cpu" else None)):
            if value is None:
                continue
            row = table[f"psi.{kind}_avg10_pct"]
            severity: Severity | None = row.severity(value)
            if severity is None:
                continue
            shown: Severity = "info" if system_wide else severity
            out.append(Finding(
                id=f"cgroup.psi.{resource}.{kind}", severity=shown, resource="cgroup",
                title=f"{resource} pressure {kind} avg10 {value:.1f}% in {where}",
                detail=(f"Tasks of {where} were stalled on {resource} {value:.1f}% of the last 10 s ({kind})."
                        + (" This is system-wide pressure, not this cgroup's own: perf_use_check judges it."
                           if system_wide else "")),
                confidence=0.8, metrics={"avg10": value},
                evidence=[_ev(f"{resource}.pressure {kind} avg10", value, threshold=row.limit(severity))],
                suggestion="See the CPU, memory and I/O sections for the cause."))
    return out


def analyse(a: CgroupReading, b: CgroupReading, interval_s: float, table: Thresholds, *,
            v1_files: bool, v2_path: str | None, busiest_pid: int | None = None) -> CgroupState:
    """busiest_pid: the cgroup's process that used the most CPU in the window
    (the throttling finding's next call profiles it)."""
    warnings: list[str] = list(b.warnings)
    cpu = cpu_report(a.cpu, b.cpu, interval_s, warnings)
    memory = memory_report(a.memory, b.memory, warnings)
    io = io_report(a.io, b.io, interval_s, warnings)
    pids = pids_report(b.pids)
    psi = {r: psi_report(a.psi.get(r), p, interval_s) for r, p in b.psi.items()}
    findings: list[Finding] = []
    cpu_files = "cpu.stat (v1)" if b.cpu and b.cpu.bandwidth_source == "v1" else "cpu.stat"
    if cpu is not None:
        profile = next_call("perf_cpu_profile", pid=busiest_pid, duration_s=5) if busiest_pid else None
        findings += cpu_findings(cpu, table["cgroup.cpu_throttled_pct"], interval_s, cpu_files, profile)
    mem_files = "memory (v1)" if v1_files and b.memory and b.memory.failcnt is not None else "memory"
    if memory is not None:
        findings += memory_findings(memory, table["cgroup.memory_working_set_pct"], interval_s, mem_files)
    if pids is not None:
        findings += pids_findings(pids, table["cgroup.pids_pct"], "pids")
    findings += psi_findings(psi, table, v2_path)
    return CgroupState(interval_s=round(interval_s, 4), cpu=cpu, memory=memory, io=io, pids=pids, psi=psi,
                       findings=sort_findings(findings), warnings=warnings)
