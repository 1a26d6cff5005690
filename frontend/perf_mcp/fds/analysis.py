"""fd growth, the leak verdict and findings from a series of fd tables (pure).

Growth is the least-squares slope of the total count against time; its fit
(R²) and the share of steps that did not go down tell a steady leak (a
straight climbing line) from a busy but bounded process (up and down).

Verdict, with MIN_GROWTH = max(3, 2% of the first count) descriptors:
- "leak": slope > 0, net growth >= MIN_GROWTH, R² >= 0.8 and no step down
  in more than 20% of the steps;
- "possible_leak": slope > 0 and net growth >= MIN_GROWTH but a weaker fit;
- "decreasing": net change <= -MIN_GROWTH;
- "stable": anything else;
- "insufficient_data": fewer than 3 samples (no line to fit).
Time to the soft limit = (soft - current) / slope, when growing.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import msgspec

from ..contract import Evidence, Finding, next_call, sort_findings
from ..use.thresholds import Thresholds
from .parse import FdTable, classify_target, count_by_type

TOOL = "perf_fd_trace"
Verdict = Literal["leak", "possible_leak", "stable", "decreasing", "insufficient_data"]
LEAK_CRITICAL_ETA_S = 600.0  # a leak that reaches the soft limit within 10 minutes is critical

class FdSample(msgspec.Struct, kw_only=True):
    t_s: float  # seconds since the first sample
    total: int
    by_type: dict[str, int]


class Fit(msgspec.Struct, frozen=True, kw_only=True):
    slope: float  # per second
    intercept: float
    r2: float | None  # None when every count is the same (nothing to explain)


def linear_fit(ts: list[float], ys: list[float]) -> Fit | None:
    """Least squares y = slope * t + intercept; None with fewer than 2 distinct times."""
    n = len(ts)
    if n < 2:
        return None
    mt, my = sum(ts) / n, sum(ys) / n
    stt = sum((t - mt) ** 2 for t in ts)
    if stt <= 0:
        return None
    sty = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True))
    slope = sty / stt
    intercept = my - slope * mt
    syy = sum((y - my) ** 2 for y in ys)
    r2 = None if syy == 0 else max(0.0, min(1.0, (sty * sty) / (stt * syy)))
    return Fit(slope=slope, intercept=intercept, r2=r2)


class Growth(msgspec.Struct, kw_only=True):
    first: int
    last: int
    delta: int
    slope_per_s: float | None
    slope_per_min: float | None
    r2: float | None
    steps_not_down_pct: float | None  # share of sample-to-sample steps that did not decrease
    by_type_delta: dict[str, int]  # last - first, types that changed
    by_type_slope_per_s: dict[str, float]


class LeakVerdict(msgspec.Struct, kw_only=True):
    verdict: Verdict
    confidence: float
    reason: str
    min_growth: int


def growth(samples: list[FdSample]) -> Growth:
    first, last = samples[0], samples[-1]
    fit = linear_fit([s.t_s for s in samples], [float(s.total) for s in samples])
    steps = [b.total - a.total for a, b in zip(samples, samples[1:], strict=False)]
    not_down = None if not steps else round(sum(d >= 0 for d in steps) / len(steps) * 100.0, 1)
    types = sorted(set(first.by_type) | set(last.by_type))
    by_delta = {t: last.by_type.get(t, 0) - first.by_type.get(t, 0) for t in types}
    by_slope: dict[str, float] = {}
    for t in types:
        if by_delta[t] == 0:
            continue
        f = linear_fit([s.t_s for s in samples], [float(s.by_type.get(t, 0)) for s in samples])
        if f is not None:
            by_slope[t] = round(f.slope, 4)
    return Growth(
        first=first.total, last=last.total, delta=last.total - first.total,
        slope_per_s=None if fit is None else round(fit.slope, 4),
        slope_per_min=None if fit is None else round(fit.slope * 60.0, 2),
        r2=None if fit is None or fit.r2 is None else round(fit.r2, 4),
        steps_not_down_pct=not_down,
        by_type_delta={t: d for t, d in by_delta.items() if d},
        by_type_slope_per_s=by_slope,
    )


def judge(samples: list[FdSample], g: Growth) -> LeakVerdict:
    n = len(samples)
    min_growth = max(3, math.ceil(0.02 * g.first))
    if n < 3 or g.slope_per_s is None:
        return LeakVerdict(verdict="insufficient_data", confidence=0.0, min_growth=min_growth,
                           reason=f"{n} samples; at least 3 are needed to fit a trend (lower interval_s)")
    r2 = g.r2 or 0.0
    not_down = (g.steps_not_down_pct or 0.0) / 100.0
    if g.slope_per_s > 0 and g.delta >= min_growth:
        strength = min(1.0, g.delta / (10 * min_growth))
        span = min(1.0, (n - 2) / 6)
        if r2 >= 0.8 and not_down >= 0.8:
            confidence = 0.5 + 0.2 * r2 + 0.1 * span + 0.15 * strength
            return LeakVerdict(verdict="leak", confidence=round(min(confidence, 0.95), 2), min_growth=min_growth,
                               reason=(f"+{g.delta} fds over {samples[-1].t_s:.0f} s, {g.slope_per_s:.2f}/s, "
                                       f"steady (R² {r2:.2f}, {not_down:.0%} of steps up or flat)"))
        return LeakVerdict(verdict="possible_leak", confidence=round(0.3 + 0.2 * r2 + 0.1 * strength, 2),
                           min_growth=min_growth,
                           reason=f"+{g.delta} fds but irregular (R² {r2:.2f}, {not_down:.0%} of steps up or flat)")
    if g.delta <= -min_growth:
        return LeakVerdict(verdict="decreasing", confidence=round(0.5 + 0.3 * r2, 2), min_growth=min_growth,
                           reason=f"{g.delta} fds over the window")
    return LeakVerdict(verdict="stable", confidence=round(0.6 + 0.1 * min(1.0, (n - 2) / 6), 2),
                       min_growth=min_growth,
                       reason=f"net change {g.delta:+d} fds, under the {min_growth} that would count as growth")


def time_to_limit(current: int, soft: int | None, slope_per_s: float | None) -> float | None:
    if soft is None or slope_per_s is None or slope_per_s <= 0:
        return None
    return round(max(0.0, (soft - current) / slope_per_s), 1)


class TargetGroup(msgspec.Struct, kw_only=True):
    type: str
    where: str  # the directory of files, or the kind of pseudo file
    count: int


def new_fd_groups(first: FdTable, last: FdTable, top: int = 10) -> list[TargetGroup]:
    """Descriptors open at the end that were not open (with that target) at
    the start, grouped by type and directory."""
    groups: dict[tuple[str, str], int] = {}
    for fd, target in last.fds.items():
        if first.fds.get(fd) == target:
            continue
        kind = classify_target(target)
        where = os.path.dirname(target) or "/" if kind in ("file", "deleted_file", "device") else kind
        groups[(kind, where)] = groups.get((kind, where), 0) + 1
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [TargetGroup(type=k, where=w, count=c) for (k, w), c in ordered]


class FdEntry(msgspec.Struct, kw_only=True):
    fd: int
    type: str
    target: str
    new: bool  # opened during the window


def fd_list(first: FdTable, last: FdTable, limit: int) -> tuple[list[FdEntry], bool]:
    """New descriptors first, then the rest, each in fd order; at most `limit`."""
    entries = [FdEntry(fd=fd, type=classify_target(t), target=t, new=first.fds.get(fd) != t)
               for fd, t in sorted(last.fds.items())]
    entries.sort(key=lambda e: (not e.new, e.fd))
    return entries[:limit], len(entries) > limit


def sample_of(table: FdTable, t_s: float) -> FdSample:
    return FdSample(t_s=round(t_s, 3), total=len(table.fds), by_type=count_by_type(table.fds))


def findings(samples: list[FdSample], g: Growth, v: LeakVerdict, soft: int | None, eta_s: float | None,
             table: Thresholds, pid: int, interval_s: float, source: str) -> list[Finding]:
    out: list[Finding] = []
    current = samples[-1].total
    window = samples[-1].t_s
    series = ", ".join(str(s.total) for s in samples)
    if v.verdict in ("leak", "possible_leak"):
        grew = max(g.by_type_delta.items(), key=lambda kv: kv[1], default=("?", 0))
        critical = v.verdict == "leak" and eta_s is not None and eta_s < LEAK_CRITICAL_ETA_S
        eta = f"; the soft limit ({soft}) is reached in about {eta_s:.0f} s at this rate" if eta_s is not None else ""
        out.append(Finding(
            id="process.fd_leak", severity="critical" if critical else ("warning" if v.verdict == "leak" else "info"),
            resource="process",
            title=(f"pid {pid} {'leaks' if v.verdict == 'leak' else 'may leak'} file descriptors: "
                   f"+{g.delta} in {window:.0f} s ({g.slope_per_min:+.1f}/min)"),
            detail=(f"Open fds went {g.first} -> {g.last} over {window:.1f} s ({v.reason}); mostly {grew[0]} "
                    f"(+{grew[1]}){eta}."),
            confidence=v.confidence,
            metrics={k: float(x) for k, x in (("slope_per_s", g.slope_per_s), ("r2", g.r2), ("delta", g.delta),
                                              ("current", current), ("time_to_soft_limit_s", eta_s)) if x is not None},
            evidence=[Evidence(tool=TOOL, counter=f"{source} count", value=current, window_s=round(window, 3),
                               sample=f"every {interval_s:g} s: {series}"),
                      Evidence(tool=TOOL, counter="linear fit slope (fds/s)", value=g.slope_per_s,
                               sample=f"R² {g.r2}, steps up or flat {g.steps_not_down_pct}%")],
            suggestion=("Find the code path that opens without closing: the new descriptors' targets are in "
                        "data.new_fds (include_fd_list=true lists them); perf_file_trace mode=opens shows the "
                        "opening call sites."),
            next=next_call("perf_file_trace", mode="opens", pid=pid, duration_s=10)))
    pct = None if not soft else current / soft * 100.0
    row = table["process.fd_pct_of_soft_limit"]
    severity = row.severity(pct)
    if severity is not None and pct is not None:
        out.append(Finding(
            id="process.fd_near_limit", severity=severity, resource="process",
            title=f"pid {pid} has {current} fds open of a {soft} soft limit ({pct:.0f}%)",
            detail="open(), socket() and accept() fail with EMFILE at the soft limit (RLIMIT_NOFILE).",
            confidence=0.9, metrics={"pct_of_soft_limit": round(pct, 2)},
            evidence=[Evidence(tool=TOOL, counter=f"{source} count / limits Max open files", value=round(pct, 2),
                               threshold=row.limit(severity))],
            suggestion="Close what leaks, or raise the limit (LimitNOFILE= in the unit, ulimit -n)."))
    return sort_findings(out)
