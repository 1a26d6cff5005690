"""perf_use_check: the USE method (utilisation, saturation, errors) for CPU,
memory, disks, filesystems, network and this server's cgroup, over a window
of the background sampler's ring, with findings (naming the top processes)
and since when each resource has been in its state.

Says little: a one-line summary first, the checks that are ok counted rather
than listed (include_ok lists them), the threshold table only when asked.

Collection here (the ring, /sys/block, statvfs of the real filesystems, the
server's cgroup files, per-process attribution for findings); the rules
and the threshold table are in perf_mcp.use (pure). The window is the ring's
sample closest to window_s before the latest one; "since" walks the ring back
in steps of SINCE_STEP samples (about 5 s), so one quiet second inside a
saturated minute does not end the state.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import trio
from msgspec import Meta

from ..contract import Finding
from ..procfs import ParseError, Sample, Sampler, SampleView, Since, SnapshotLike, parse_cpuinfo
from ..procfs.capacity import DiskQueue, FsUsage, disk_queues, filesystem_usage
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..use import rules
from ..use.config import load_thresholds
from ..use.thresholds import Threshold
from . import _sampler_service as svc
from .perf_snapshot import iso, whole_disk_names

NAME = "perf_use_check"
SINCE_STEP_MAX = 5
ATTRIBUTION_WINDOW_MAX_S = 10.0  # the top processes over at most the last 10 s of the window
ATTRIBUTION_SLACK_S = 5.0


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    window_s: Annotated[float, Meta(ge=1, le=600, description=(
        "Judge the last window_s seconds of the background sampler's ring (it holds 10 minutes)."))] = 10.0
    top_n: Annotated[int, Meta(ge=1, le=20, description=(
        "Findings about CPU, memory and disks name this many top processes."))] = 3
    include_ok: Annotated[bool, Meta(description=(
        "List every check of every row; by default only the checks that are not ok are listed and the "
        "ok ones are counted."))] = False
    include_thresholds: Annotated[bool, Meta(description="Include the threshold table in force.")] = False


class UseCheckData(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The USE table: a row per resource with its utilisation, saturation and
    errors checks (by default only those that are not ok; `ok` counts the
    others), the findings, and the thresholds when asked."""

    summary: str  # one line
    status: str  # worst row status: ok, warning, critical, or unknown (something could not be measured)
    window_s: float  # actual
    requested_window_s: float
    window_start: str
    window_end: str
    cpus: int
    findings: list[Finding]  # top suspicions, most severe first
    table: list[rules.UseRow]  # a row per resource; checks that are ok are counted in `ok`
    thresholds_source: str
    thresholds: list[Threshold] | None = None  # with include_thresholds


def since_step(window_s: float, samples: int) -> int:
    return max(1, min(SINCE_STEP_MAX, int(window_s // 2), samples - 1))


def _since(sampler: Sampler, row: rules.UseRow, signals: list[rules.Signal], step: int) -> rules.StateSince | None:
    condition = rules.row_condition(signals, row.status)
    if condition is None:
        return None
    found: Since | None = sampler.since_when(condition, step=step)
    if found is None:
        return None
    return rules.StateSince(status=row.status, since=iso(found.start_wall), duration_s=round(found.duration_s, 1),
                            at_least=found.at_least)


def _cgroup_state(sampler: Sampler, older: Sample | None, newer: Sample | None,
                  window: float) -> rules.CgroupState | None:
    """The server's own cgroup where it has a limit (None otherwise)."""
    cg = svc.own_cgroup()
    if cg is None:
        return None
    limits = svc.cgroup_limits(cg)
    if not limits.any:
        return None
    now = svc.read_cgroup_now(cg)
    ws = None
    if now.memory_usage_bytes is not None:
        ws = max(0, now.memory_usage_bytes - (now.memory_inactive_file_bytes or 0))
    state = rules.CgroupState(
        path=cg.memory_path if limits.memory_limit_bytes else cg.cpu_path, version="v1" if cg.v1_memory else "v2",
        memory_limit_bytes=limits.memory_limit_bytes, memory_usage_bytes=now.memory_usage_bytes,
        memory_working_set_bytes=ws, memory_failcnt=now.memory_failcnt, oom_kills=now.oom_kills,
        cpu_quota_cores=limits.cpu_quota_cores,
    )
    if older is None or newer is None or window <= 0:
        return state
    return msgspec.structs.replace(state, **_cgroup_rates(older, newer, window))


def _cgroup_rates(older: Sample, newer: Sample, window: float) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {}

    def pair(name: str) -> tuple[Any, Any] | None:
        return svc.cgroup_counter_deltas(older.file(name), newer.file(name), name)

    if (fc := pair(svc.CG_V1_MEMORY_FAILCNT)) is not None:
        out["memory_failcnt_delta"] = max(0, fc[1] - fc[0])
    if (ev := pair(svc.CG_V2_MEMORY_EVENTS)) is not None and ev[0].max is not None and ev[1].max is not None:
        out["memory_failcnt_delta"] = max(0, ev[1].max - ev[0].max)
    if (usage := pair(svc.CG_V1_CPUACCT_USAGE)) is not None:
        out["cpu_usage_cores"] = max(0, usage[1] - usage[0]) / 1e9 / window
    stat = pair(svc.CG_V1_CPU_STAT) or pair(svc.CG_V2_CPU_STAT)
    if stat is not None:
        a, b = stat
        if a.nr_periods is not None and b.nr_periods is not None and b.nr_periods > a.nr_periods:
            out["throttled_pct"] = ((b.nr_throttled or 0) - (a.nr_throttled or 0)) / (b.nr_periods - a.nr_periods) * 100
        if "cpu_usage_cores" not in out and getattr(a, "usage_usec", None) is not None:
            out["cpu_usage_cores"] = max(0, b.usage_usec - a.usage_usec) / 1e6 / window
    return out


def _between(sampler: Sampler) -> Callable[[SnapshotLike, SnapshotLike], list[SnapshotLike]]:
    """The ring's samples from one view to another, both included (for the since walk)."""
    samples = sampler.samples()  # one evaluation sees one ring (nothing ticks while it runs)
    first_seq = samples[0].seq if samples else 0

    def between(older: SnapshotLike, newer: SnapshotLike) -> list[SnapshotLike]:
        if not isinstance(older, SampleView) or not isinstance(newer, SampleView):
            return [older, newer]
        lo, hi = older.sample.seq - first_seq, newer.sample.seq - first_seq
        return [sampler.view(s) for s in samples[max(0, lo):hi + 1]]

    return between


class Storage(msgspec.Struct, kw_only=True):
    """What the rules need besides the ring, read in a worker thread."""

    whole: frozenset[str]
    queues: dict[str, DiskQueue]
    filesystems: list[FsUsage]
    vm: bool | None
    warnings: list[str]


_VM: list[bool | None] = []


def _in_vm() -> bool | None:
    """The hypervisor CPU flag (read once)."""
    if not _VM:
        try:
            with open("/proc/cpuinfo", "rb") as f:
                _VM.append(parse_cpuinfo(f.read()).hypervisor)
        except (OSError, ParseError):
            _VM.append(None)
    return _VM[0]


def read_storage() -> Storage:
    whole = whole_disk_names()
    filesystems, warnings = filesystem_usage()
    return Storage(whole=whole, queues=disk_queues(whole), filesystems=filesystems, vm=_in_vm(), warnings=warnings)


def evaluate(sampler: Sampler, p: Params, storage: Storage | frozenset[str],
             ) -> tuple[UseCheckData, list[str], rules.FindingContext]:
    """The USE table over the ring (runs on the trio thread: the ring is not shared with workers)."""
    if isinstance(storage, frozenset):
        storage = Storage(whole=storage, queues={}, filesystems=[], vm=None, warnings=[])
    thresholds, warnings = load_thresholds()
    warnings += storage.warnings
    pair = sampler.window(p.window_s)
    assert pair is not None  # system_sampler waited for two samples
    older_s, newer_s = pair
    samples = [s for s in sampler.samples() if older_s.t_mono <= s.t_mono <= newer_s.t_mono]
    views = [sampler.view(s) for s in samples]
    window_s = newer_s.t_mono - older_s.t_mono
    if window_s < p.window_s * 0.9:
        warnings.append(f"the {p.window_s:g} s window covers only {window_s:.1f} s: the sampler started with the "
                        "server and has no older sample yet")
    cpus = os.cpu_count() or 1
    w = rules.Window(older=views[0], newer=views[-1], samples=views, cpus=cpus, whole_disks=storage.whole,
                     between=_between(sampler), disk_queues=storage.queues, vm=storage.vm,
                     filesystems=storage.filesystems)
    fc = rules.FindingContext(window_s=window_s, sample=iso(newer_s.t_wall), cpus=cpus, server_pid=os.getpid())
    cgroup = _cgroup_state(sampler, older_s, newer_s, window_s)
    ev = rules.evaluate(w, thresholds, fc, cgroup)
    step = since_step(window_s, len(sampler))
    rows = []
    for row in ev.rows:
        since = _since(sampler, row, ev.signals[row.name], step) if row.status != "ok" else None
        if p.include_ok:
            rows.append(msgspec.structs.replace(row, since=since))
            continue
        # compact: the checks that are not ok (or over an info-only line), without the metric's
        # words (the threshold key names it)
        lists = {kind: [msgspec.structs.replace(c, metric="") for c in getattr(row, kind)
                        if c.status != "ok" or c.info] for kind in ("utilisation", "saturation", "errors")}
        shown = sum(len(v) for v in lists.values())
        rows.append(msgspec.structs.replace(row, since=since, ok=len(row.all_checks()) - shown, **lists))
    for warning in views[0].warnings + views[-1].warnings:
        if warning not in warnings:
            warnings.append(warning)
    status = min((r.status for r in rows), key=rules.STATUS_RANK.__getitem__, default="ok")
    data = UseCheckData(
        summary="", status=status,
        window_s=round(window_s, 3), requested_window_s=p.window_s, window_start=iso(older_s.t_wall),
        window_end=iso(newer_s.t_wall), cpus=cpus, table=rows,
        findings=_with_since(ev.findings, rows), thresholds=thresholds.as_list() if p.include_thresholds else None,
        thresholds_source=thresholds.source,
    )
    return data, warnings, fc


def _with_since(findings: list[Finding], rows: list[rules.UseRow]) -> list[Finding]:
    """Add to each finding's detail since when its resource has been in its state."""
    by_resource = {r.resource: r for r in rows if r.name in ("cpu", "memory", "disk", "network")}
    out = []
    for f in findings:
        row = by_resource.get(f.resource)
        if (row is not None and row.since is not None and row.status in ("warning", "critical")
                and f.severity != "info" and not f.id.startswith("use.fs.")):
            out.append(msgspec.structs.replace(f, detail=f"{f.detail}. {_since_text(row.since)}"))
        else:
            out.append(f)
    return out


def _since_text(s: rules.StateSince) -> str:
    if s.at_least:
        return f"{s.status} for at least {s.duration_s:.0f} s (all the sampler's history)"
    return f"{s.status} for {s.duration_s:.0f} s (since {s.since[11:19]} UTC)"


CULPRIT_RESOURCES = ("cpu", "memory", "disk")


async def _attribute(ctx: ToolContext, findings: list[Finding], fc: rules.FindingContext, window_s: float,
                     top_n: int) -> tuple[list[Finding], list[str]]:
    """Name the top processes in the CPU, memory and disk findings
    (procfs.attribution); without it, the findings stay as they are and a
    warning says why."""
    if not any(f.resource in CULPRIT_RESOURCES and f.severity != "info" and not f.id.startswith("use.fs.")
               for f in findings):
        return findings, []
    try:
        attribution = importlib.import_module("perf_mcp.procfs.attribution")
    except ImportError as exc:
        return findings, [f"the top processes are not named: per-process attribution is not available ({exc})"]
    result = None
    with trio.move_on_after(window_s + ATTRIBUTION_SLACK_S):
        try:
            result = await attribution.attribute(ctx, window_s=window_s, top_n=top_n)
        except Exception as exc:  # noqa: BLE001 - a failure here costs the names only, never the check
            return findings, [f"the top processes are not named: attribution failed ({type(exc).__name__}: {exc})"]
    if result is None:
        return findings, [f"the top processes are not named: attribution took more than "
                          f"{window_s + ATTRIBUTION_SLACK_S:g} s"]
    notes = [f"attribution: {n}" for n in getattr(result, "notes", [])]
    return rules.name_culprits(findings, result, fc, top=top_n), notes


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    sampler = await svc.system_sampler(ctx)
    storage = await trio.to_thread.run_sync(read_storage)
    started = time.perf_counter()
    data, warnings, fc = evaluate(sampler, p, storage)
    elapsed = time.perf_counter() - started
    if elapsed > 0.5:
        warnings.append(f"the USE evaluation took {elapsed:.2f} s")
    findings, notes = await _attribute(ctx, data.findings, fc, min(data.window_s, ATTRIBUTION_WINDOW_MAX_S), p.top_n)
    warnings += notes
    data = msgspec.structs.replace(data, findings=findings)
    text = summarise(data)
    data = msgspec.structs.replace(data, summary=text.split("\n", 1)[0])
    return ToolOutput(data=data, summary=text, warnings=warnings)


def summarise(d: UseCheckData) -> str:
    bad = [f for f in d.findings if f.severity != "info"]
    ok_rows = [r.name for r in d.table if r.status == "ok"]
    unknown = [r.name for r in d.table if r.status == "unknown"]
    if bad:
        head = f"USE check over {d.window_s:g} s: {d.status.upper()}: " + "; ".join(f.title for f in bad[:3])
        if len(bad) > 3:
            head += f" (+{len(bad) - 3} more)"
    else:
        head = f"USE check over {d.window_s:g} s: no resource over its thresholds"
    if unknown:
        head += f"; unknown: {', '.join(unknown)}"
    if ok_rows:
        head += f"; ok: {', '.join(ok_rows)}"
    lines = [head]
    for row in d.table:
        since = f" [{_since_text(row.since)}]" if row.since else ""
        lines.append(f"  {row.name:<10} {row.status:<8} {row.detail}{since}")
    for f in d.findings:
        lines.append(f"[{f.severity}] {f.title}: {f.detail}")
        if f.suggestion:
            lines.append(f"    {f.suggestion}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="USE check (utilisation, saturation, errors)",
    description=(
        "Brendan Gregg's USE method over the last window_s seconds of the 1 Hz background sampler: for CPU "
        "(including one hot CPU the mean hides, and steal in a VM), memory (swapping, direct reclaim, major "
        "faults), disks (await and queue; %util is not saturation on parallel devices), filesystem space and "
        "inodes, network and (where it has limits) this server's cgroup: a status per resource (ok, warning, "
        "critical, unknown when it could not be measured) against thresholds overridable in "
        "~/.config/perf-mcp/thresholds.toml or $PERF_MCP_THRESHOLDS, and findings sorted by severity, each "
        "naming the top processes, its evidence and the next tool call. Answers at once; no privileges needed."
    ),
    params=Params,
    data=UseCheckData,
    handler=run,
)
