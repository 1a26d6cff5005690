"""The USE thresholds: the one table (DESIGN.md, "Thresholds (USE)"), and
overrides from a TOML text.

Every rule of perf_use_check, perf_io_latency and the network/cgroup checks
reads its limits from THRESHOLDS below; nothing else in the code holds a
threshold number. Pure: no I/O here (reading the override file is in
use.config).

Override file (TOML), one table per row, keyed like the rows below:

    [cpu.utilisation_pct]
    warning = 75
    critical = 95

    [psi.some_avg10_pct]
    warning = 20

A value that is not a finite number, a key that is not a row, or a pair in the
wrong order (for "above" rows warning must be <= critical, for "below" rows
warning must be >= critical) is ignored with a warning; the rest applies.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from ..contract import Severity

Direction = Literal["above", "below"]


class Threshold(msgspec.Struct, frozen=True, kw_only=True):
    """One row: a metric is `warning` / `critical` when it is strictly above
    (or, for "below" rows, strictly below) the limit, as DESIGN.md words it
    ("> 70%", "< 20%")."""

    key: str  # "cpu.utilisation_pct"
    group: str  # cpu, memory, disk, network, psi (the PSI rows apply to each PSI resource)
    metric: str  # what is compared, for people
    unit: str
    direction: Direction
    warning: float
    critical: float
    source: str = "DESIGN.md"  # or the override file that changed it
    # True: a breach is reported as information (an info finding), never as a
    # warning or critical status (swap in use: the swap in/out rates judge).
    info_only: bool = False

    def severity(self, value: float | None) -> Severity | None:
        """'critical', 'warning' or None (ok, or no value)."""
        if value is None or not math.isfinite(value):
            return None
        if self.direction == "above":
            if value > self.critical:
                return "critical"
            return "warning" if value > self.warning else None
        if value < self.critical:
            return "critical"
        return "warning" if value < self.warning else None

    def limit(self, severity: Severity) -> float:
        return self.critical if severity == "critical" else self.warning

    def describe(self) -> str:
        sign = ">" if self.direction == "above" else "<"
        return f"{self.metric}: warning {sign} {self.warning:g}{self.unit}, critical {sign} {self.critical:g}{self.unit}"


# The table of DESIGN.md, row for row. Run queue is in multiples of the online
# CPU count ("> cores", "> 2 x cores"). PSI rows apply to every PSI resource
# (cpu, memory, io); the value compared is the stall share over the check's
# window from the PSI "total" counters, which for a 10 s window is what the
# kernel's avg10 estimates (without its exponential decay).
THRESHOLDS: tuple[Threshold, ...] = (
    Threshold(key="cpu.utilisation_pct", group="cpu", metric="CPU utilisation", unit="%",
              direction="above", warning=70.0, critical=90.0),
    Threshold(key="cpu.run_queue_per_cpu", group="cpu", metric="run queue (runnable tasks)",
              unit=" x cores", direction="above", warning=1.0, critical=2.0),
    Threshold(key="memory.available_pct", group="memory", metric="memory available", unit="%",
              direction="below", warning=20.0, critical=10.0),
    # DESIGN.md's row, judged as information only: swap that is merely in use
    # (pages parked there long ago) costs nothing; swapping does, and the swap
    # in/out rates below carry the warnings.
    Threshold(key="memory.swap_used_pct", group="memory", metric="swap used", unit="%",
              direction="above", warning=0.0, critical=50.0, info_only=True,
              source="DESIGN.md (info only in perf-mcp: the swap in/out rates judge)"),
    Threshold(key="disk.utilisation_pct", group="disk", metric="disk utilisation (%util)", unit="%",
              direction="above", warning=60.0, critical=80.0),
    Threshold(key="disk.queue", group="disk", metric="disk average queue (aqu-sz)", unit="",
              direction="above", warning=2.0, critical=8.0),
    Threshold(key="network.drops_per_s", group="network", metric="interface drops", unit="/s",
              direction="above", warning=0.0, critical=100.0),
    Threshold(key="network.retransmit_pct", group="network", metric="TCP retransmits", unit="%",
              direction="above", warning=1.0, critical=5.0),
    Threshold(key="psi.some_avg10_pct", group="psi", metric="PSI some (share of time stalled)", unit="%",
              direction="above", warning=10.0, critical=25.0),
    Threshold(key="psi.full_avg10_pct", group="psi", metric="PSI full (share of time stalled)", unit="%",
              direction="above", warning=5.0, critical=15.0),
    # Rows DESIGN.md does not give, chosen by perf-mcp (the source says why).
    # CPU: one CPU near 100% while the others have room is a single-threaded
    # bottleneck the mean hides (judged only while the other CPUs' mean is below
    # cpu.utilisation_pct's warning; a hot CPU alone is never critical).
    Threshold(key="cpu.single_cpu_busy_pct", group="cpu", metric="busiest single CPU", unit="%",
              direction="above", warning=90.0, critical=100.0,
              source="perf-mcp (one CPU at >= 90% while the others have room; never critical)"),
    # Steal: time a VM's vCPU was runnable but the hypervisor ran something
    # else. Judged in a VM only. 10%: noticeable (Gregg, Systems Performance);
    # 25%: the host is badly oversubscribed.
    Threshold(key="cpu.steal_pct", group="cpu", metric="CPU steal (hypervisor took the vCPU)", unit="%",
              direction="above", warning=10.0, critical=25.0, source="perf-mcp (in a VM only)"),
    # Memory: activity, not occupancy. Pages of 4 KiB; 10 pages/s of swap-in is
    # 40 KiB/s of tasks waiting on the disk for their own memory.
    Threshold(key="memory.swap_in_per_s", group="memory", metric="pages swapped in (pswpin)", unit="/s",
              direction="above", warning=10.0, critical=1000.0, source="perf-mcp"),
    Threshold(key="memory.swap_out_per_s", group="memory", metric="pages swapped out (pswpout)", unit="/s",
              direction="above", warning=100.0, critical=2500.0, source="perf-mcp"),
    Threshold(key="memory.direct_reclaim_scan_per_s", group="memory",
              metric="pages scanned by direct reclaim (pgscan_direct)", unit="/s", direction="above",
              warning=100.0, critical=10000.0,
              source="perf-mcp (allocating tasks reclaim themselves: they stall)"),
    Threshold(key="memory.allocstall_per_s", group="memory", metric="direct reclaim entries (allocstall)",
              unit="/s", direction="above", warning=1.0, critical=100.0, source="perf-mcp"),
    Threshold(key="memory.major_faults_per_s", group="memory", metric="major page faults (pgmajfault)",
              unit="/s", direction="above", warning=200.0, critical=2000.0,
              source="perf-mcp (each one waits for a disk read)"),
    # Disk latency: the lead on devices that serve requests in parallel (virtio,
    # NVMe, md, dm), where %util near 100 is not saturation. Judged once the
    # window completed at least rules.MIN_DISK_IOS requests.
    Threshold(key="disk.await_ms", group="disk", metric="disk await (r/w mean)", unit=" ms",
              direction="above", warning=20.0, critical=100.0, source="perf-mcp"),
    # Capacity: a full filesystem stalls writers (ENOSPC) as surely as a slow disk.
    Threshold(key="filesystem.space_used_pct", group="filesystem", metric="filesystem space used (df Use%)",
              unit="%", direction="above", warning=90.0, critical=95.0, source="perf-mcp"),
    Threshold(key="filesystem.inodes_used_pct", group="filesystem", metric="filesystem inodes used (df -i IUse%)",
              unit="%", direction="above", warning=90.0, critical=95.0, source="perf-mcp"),
    Threshold(key="cgroup.cpu_throttled_pct", group="cgroup", metric="CFS periods throttled", unit="%",
              direction="above", warning=5.0, critical=25.0, source="perf-mcp (25%: kube-prometheus CPUThrottlingHigh)"),
    Threshold(key="cgroup.memory_working_set_pct", group="cgroup", metric="working set of the memory limit",
              unit="%", direction="above", warning=85.0, critical=95.0, source="perf-mcp"),
    Threshold(key="cgroup.pids_pct", group="cgroup", metric="tasks of pids.max", unit="%", direction="above",
              warning=80.0, critical=95.0, source="perf-mcp"),
    Threshold(key="process.fd_pct_of_soft_limit", group="process", metric="open fds of the soft limit (RLIMIT_NOFILE)",
              unit="%", direction="above", warning=80.0, critical=95.0, source="perf-mcp"),
    # perf_thread_profile, per thread over its window (a thread can use at most one CPU).
    Threshold(key="process.thread_cpu_pct", group="process", metric="one thread's CPU (of one CPU)", unit="%",
              direction="above", warning=80.0, critical=95.0, source="perf-mcp"),
    Threshold(key="process.thread_runq_wait_pct", group="process", metric="a thread's run-queue wait (of its window)",
              unit="%", direction="above", warning=10.0, critical=30.0, source="perf-mcp"),
    Threshold(key="process.thread_runq_wait_per_timeslice_ms", group="process",
              metric="a thread's run-queue wait per timeslice", unit=" ms", direction="above", warning=5.0,
              critical=20.0, source="perf-mcp"),
    Threshold(key="process.thread_involuntary_switches_per_s", group="process",
              metric="a thread's involuntary context switches", unit="/s", direction="above", warning=100.0,
              critical=1000.0, source="perf-mcp"),
)


class Thresholds(msgspec.Struct, frozen=True):
    """The table in force: the defaults with any overrides applied."""

    rows: dict[str, Threshold]
    source: str = "defaults (DESIGN.md)"

    def __getitem__(self, key: str) -> Threshold:
        return self.rows[key]

    def as_list(self) -> list[Threshold]:
        return list(self.rows.values())


def default_thresholds() -> Thresholds:
    return Thresholds(rows={t.key: t for t in THRESHOLDS})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _override_row(row: Threshold, table: Mapping[str, Any], source: str, warnings: list[str]) -> Threshold:
    new = {"warning": row.warning, "critical": row.critical}
    for name, value in table.items():
        if name not in new:
            warnings.append(f"{source}: [{row.key}] has no setting {name!r} (only warning, critical); ignored")
            continue
        number = _number(value)
        if number is None:
            warnings.append(f"{source}: [{row.key}] {name} = {value!r} is not a finite number; ignored")
            continue
        new[name] = number
    ordered = new["warning"] <= new["critical"] if row.direction == "above" else new["warning"] >= new["critical"]
    if not ordered:
        word = "<=" if row.direction == "above" else ">="
        warnings.append(f"{source}: [{row.key}] warning {new['warning']:g} must be {word} critical "
                        f"{new['critical']:g}; the default row is kept")
        return row
    if (new["warning"], new["critical"]) == (row.warning, row.critical):
        return row
    return msgspec.structs.replace(row, warning=new["warning"], critical=new["critical"], source=source)


def _flatten(doc: Mapping[str, Any]) -> dict[str, Any]:
    """{"cpu": {"utilisation_pct": {...}}} -> {"cpu.utilisation_pct": {...}}
    (also accepts quoted keys ["cpu.utilisation_pct"])."""
    flat: dict[str, Any] = {}
    for group, value in doc.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for metric, table in value.items():
                flat[f"{group}.{metric}"] = table
        else:
            flat[group] = value
    return flat


def apply_overrides(text: str, source: str, base: Thresholds | None = None) -> tuple[Thresholds, list[str]]:
    """The table with the overrides of a TOML text applied, and warnings for
    what was ignored. A text that is not TOML leaves the table as it was."""
    base = base or default_thresholds()
    warnings: list[str] = []
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return base, [f"{source}: not valid TOML ({exc}); the default thresholds are used"]
    rows = dict(base.rows)
    for key, table in _flatten(doc).items():
        if key not in rows:
            warnings.append(f"{source}: unknown threshold [{key}]; known: {', '.join(rows)}")
            continue
        if not isinstance(table, dict):
            warnings.append(f"{source}: [{key}] must be a table with warning/critical; ignored")
            continue
        rows[key] = _override_row(rows[key], table, source, warnings)
    changed = any(r.source == source for r in rows.values())
    return Thresholds(rows=rows, source=source if changed else base.source), warnings
