"""perf_dns_latency: name lookups through libc (getaddrinfo, gethostbyname,
gethostbyname2), each with its process, name and latency, slowest first, and a
summary per name (count, mean, max).

Ladder (data.method says which rung ran, data.skipped why the others did not):
  1. libbpf-tools gethostlatency (uprobes on libc; runs until SIGINT, the
     broker stops it at duration_s); it does not say whether a lookup failed;
  2. the broker's bpftrace script dnslat.bt (uprobe:libc:..., libc resolved by
     bpftrace by name), which also gives getaddrinfo's EAI_* result.
Both see only lookups made through the system's shared libc: static binaries,
Go's pure resolver, dig/nslookup (their own DNS code) are not traced.

Only integers reach the broker (duration, pid). Cancellation: the broker job is
stopped with the call (run_job closes the socket).
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from typing import Annotated

import msgspec
from msgspec import Meta

from perf_mcp_protocol import Backend, DnsLatency, limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace import dns_parse
from ..trace.dns_parse import Lookup, Lookups
from ..trace.ladder import Rung, RungFailed, Skipped, climb, find_step, run_job, step_failure

NAME = "perf_dns_latency"

# A lookup slower than this is slow: a resolver answering from its cache takes
# well under 10 ms; 100 ms is a remote round trip or worse, paid by every caller
# that resolves in line with its request.
SLOW_WARNING_MS = 100.0
SLOW_CRITICAL_MS = 1000.0  # glibc's first retry comes after 1-5 s (resolv.conf timeout)
TOP_N = 20

RUNGS: list[Rung["Params"]] = [
    Rung(Backend.LIBBPF, "gethostlatency (libbpf-tools; uprobes on libc)", programs=("gethostlatency",),
         needs=("uprobes",)),
    Rung(Backend.BPFTRACE, "bpftrace dnslat.bt (uprobes on libc getaddrinfo/gethostbyname)", programs=("bpftrace",),
         needs=("uprobes",)),
]
LADDER = RUNGS


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_SHORT_DURATION_S[0], le=limits.TRACE_SHORT_DURATION_S[1],
                                    description="How long to trace, in seconds.")] = 10
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX,
                             description="Only lookups made by this process.")] | None = None
    max_listed: Annotated[int, Meta(ge=1, le=1000, description=(
        "List at most this many lookups (the slowest); counts, per-name summaries and findings cover all."))] = 50


class NameSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    count: int
    mean_ms: float
    max_ms: float
    failed: int | None = None  # None: the rung does not say
    processes: list[str] = []  # "comm[pid]", at most 5


class DnsLatencyData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    duration_s: int
    filters: dict[str, int]
    lookups: int
    lookups_per_s: float
    failed: int | None  # None: gethostlatency does not report results
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_max_ms: float | None
    slow_lookups: int  # above slow_threshold_ms
    slow_threshold_ms: float
    by_name: list[NameSummary]
    slowest: list[Lookup]
    lookups_omitted: int
    name_max_bytes: int  # longer names were cut by the tracer
    lost_events: int
    findings: list[Finding]


async def _trace(ctx: ToolContext, p: Params, rung: Rung["Params"]) -> tuple[Lookups, bool]:
    assert rung.backend is not None
    job = await run_job(ctx, DnsLatency(backend=rung.backend, duration_s=p.duration_s, pid=p.pid),
                        expected_s=float(p.duration_s), label=rung.method.split(" (")[0])
    name = "gethostlatency" if rung.backend is Backend.LIBBPF else "dnslat"
    step = find_step(job, name)
    reason = step_failure(step, stopped_by_us=rung.backend is Backend.LIBBPF)
    if reason is not None or step is None:
        raise RungFailed(reason or f"no {name} step")
    parse = dns_parse.parse_gethostlatency if rung.backend is Backend.LIBBPF else dns_parse.parse_bpftrace
    parsed = parse(step.stdout, step.stderr)
    if parsed.bad_lines and not parsed.lookups:
        raise ToolError(ErrorCode.PARSE_ERROR, f"none of the {parsed.bad_lines} lines of {rung.method} could be read")
    return parsed, step.stdout_truncated


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def _slow_finding(d: DnsLatencyData, lookups: list[Lookup]) -> Finding | None:
    slow = [x for x in lookups if x.latency_ms > SLOW_WARNING_MS]
    if not slow:
        return None
    worst = max(slow, key=lambda x: x.latency_ms)
    severity = "critical" if worst.latency_ms > SLOW_CRITICAL_MS else "warning"
    names = sorted({x.name for x in slow})
    mean = statistics.fmean(x.latency_ms for x in slow)
    return Finding(
        id="network.dns.slow_lookups", severity=severity, resource="network",
        title=f"{len(slow)} slow name lookup(s), up to {worst.latency_ms:.0f} ms ({worst.name})",
        detail=(f"{len(slow)} of {d.lookups} lookups took over {SLOW_WARNING_MS:g} ms (mean of those {mean:.1f} ms), "
                f"for {len(names)} name(s): {', '.join(names[:5])}. The slowest by {worst.comm}[{worst.pid}]. "
                "A lookup waits on the resolver named in /etc/resolv.conf (or the NSS modules before it)."),
        confidence=0.9,
        metrics={"slow_lookups": float(len(slow)), "max_ms": worst.latency_ms, "mean_slow_ms": round(mean, 3)},
        evidence=[Evidence(tool=NAME, counter="getaddrinfo/gethostbyname latency", value=worst.latency_ms,
                           threshold=SLOW_CRITICAL_MS if severity == "critical" else SLOW_WARNING_MS,
                           window_s=float(d.duration_s), sample=f"{worst.comm}[{worst.pid}] {worst.name}")],
        suggestion=("Check the resolver in /etc/resolv.conf and the hosts line of /etc/nsswitch.conf; a local caching "
                    "resolver (systemd-resolved, nscd, dnsmasq) or caching in the application removes the wait. "
                    f'perf_dns_latency with {{"pid": {worst.pid}, "duration_s": 30}} shows how often that process '
                    "resolves."),
        next=next_call("perf_dns_latency", pid=worst.pid or None, duration_s=30))


def _failure_finding(d: DnsLatencyData, lookups: list[Lookup]) -> Finding | None:
    failed = [x for x in lookups if x.ok is False]
    if not failed:
        return None
    first = failed[0]
    return Finding(
        id="network.dns.failed_lookups", severity="warning" if len(failed) / d.duration_s > 1 else "info",
        resource="network", title=f"{len(failed)} name lookup(s) failed ({first.error} for {first.name})",
        detail=", ".join(sorted({f"{x.name}: {x.error}" for x in failed})[:5]),
        confidence=0.85, metrics={"failed": float(len(failed))},
        evidence=[Evidence(tool=NAME, counter="getaddrinfo result", value=float(len(failed)), threshold=0.0,
                           window_s=float(d.duration_s), sample=f"{first.comm}[{first.pid}] {first.name}")],
        suggestion=("EAI_NONAME: the name does not exist (a typo or a search-domain expansion); EAI_AGAIN: the "
                    "resolver did not answer in time. Check /etc/resolv.conf."))


def analyse(p: Params, parsed: Lookups, method: str, backend: str, skipped: list[Skipped]) -> DnsLatencyData:
    lookups = [x for x in parsed.lookups if p.pid is None or x.pid == p.pid]
    lat = [x.latency_ms for x in lookups]
    groups: dict[str, list[Lookup]] = defaultdict(list)
    for x in lookups:
        groups[x.name].append(x)
    by_name = [NameSummary(name=name, count=len(xs), mean_ms=round(statistics.fmean(x.latency_ms for x in xs), 3),
                           max_ms=max(x.latency_ms for x in xs),
                           failed=sum(1 for x in xs if x.ok is False) if parsed.results_known else None,
                           processes=sorted({f"{x.comm}[{x.pid}]" for x in xs})[:5])
               for name, xs in groups.items()]
    by_name.sort(key=lambda s: (-s.max_ms, s.name))
    slowest = sorted(lookups, key=lambda x: -x.latency_ms)
    d = DnsLatencyData(
        method=method, backend=backend, skipped=skipped, duration_s=p.duration_s,
        filters={"pid": p.pid} if p.pid is not None else {}, lookups=len(lookups),
        lookups_per_s=round(len(lookups) / p.duration_s, 3),
        failed=sum(1 for x in lookups if x.ok is False) if parsed.results_known else None,
        latency_p50_ms=_pct(lat, 0.5), latency_p90_ms=_pct(lat, 0.9), latency_max_ms=max(lat) if lat else None,
        slow_lookups=sum(1 for x in lat if x > SLOW_WARNING_MS), slow_threshold_ms=SLOW_WARNING_MS,
        by_name=by_name[:TOP_N], slowest=slowest[:p.max_listed], lookups_omitted=max(0, len(slowest) - p.max_listed),
        name_max_bytes=parsed.name_max_bytes, lost_events=parsed.lost_events, findings=[])
    d.findings = sort_findings([f for f in (_slow_finding(d, lookups), _failure_finding(d, lookups)) if f])
    return d


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if p.pid is not None and not os.path.exists(f"/proc/{p.pid}"):
        raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}",
                        suggestion="Pass the pid of a running process, or omit pid to trace every process.")
    state: dict[str, bool] = {}

    async def attempt(rung: Rung[Params]) -> tuple[Lookups, None]:
        parsed, truncated = await _trace(ctx, p, rung)
        state["truncated"] = truncated
        return parsed, None

    result = await climb(ctx, RUNGS, p, attempt)
    parsed = result.value
    warnings = result.warnings() + parsed.warnings
    if not parsed.results_known:
        warnings.append(f"{result.method} does not report whether a lookup succeeded: failed is null")
    if parsed.lost_events:
        warnings.append(f"{parsed.lost_events} events were lost (the tracer's buffer overflowed): counts are "
                        "lower bounds")
    truncated = bool(state.get("truncated"))
    if truncated:
        warnings.append("the broker's output cap cut the trace: counts are lower bounds")
    d = analyse(p, parsed, result.method, result.backend, result.skipped)
    return ToolOutput(data=d, summary=summarise(d), warnings=warnings, truncated=truncated or d.lookups_omitted > 0)


def summarise(d: DnsLatencyData) -> str:
    failed = f", {d.failed} failed" if d.failed is not None else ""
    lines = [f"dns latency {d.duration_s} s: {d.lookups} lookups ({d.lookups_per_s:g}/s){failed}, "
             f"p50 {d.latency_p50_ms} ms, max {d.latency_max_ms} ms, {d.slow_lookups} over {d.slow_threshold_ms:g} ms"]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.by_name:
        lines.append("By name (slowest first): " + ", ".join(
            f"{s.name} x{s.count} mean {s.mean_ms} ms max {s.max_ms} ms" for s in d.by_name[:5]))
    lines.append(f"Method: {d.method}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="DNS lookup latency",
    description=(
        "Trace name lookups made through libc (getaddrinfo, gethostbyname, gethostbyname2) for duration_s: each "
        "lookup with its process (pid, comm), the name asked for and its latency, slowest first; a summary per "
        "name (count, mean, max, failures where known) and findings for slow or failing lookups. Filter: pid. "
        "Programs that resolve without libc (static or Go binaries, dig) are not seen. Uses gethostlatency "
        "(libbpf-tools), else a bpftrace uprobe script, through the perf-mcp broker (needs the 'trace' grant)."
    ),
    params=Params,
    data=DnsLatencyData,
    handler=run,
)
