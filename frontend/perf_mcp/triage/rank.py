"""Merging, deduplication and ranking of candidate root causes.

- Explained by another: CPU saturation whose culprit is the process a
  single-thread bottleneck names is that bottleneck (its evidence joins it);
  run-queue latency joins CPU saturation where both are found.
- A process blocked because of what another root cause names for the same
  process (its slow DNS lookups, its retransmits, its disk) is that cause.
- Memory pressure whose culprit is a cgroup at its memory limit is that
  limit; a device saturated by the reads of a process under that shortage
  (in the limited cgroup, or the pressure's process: page cache it re-reads)
  is memory's too, its evidence joined.
- A single-thread bottleneck in a throttled cgroup (or of the pid asked about,
  in it), and run-queue latency whose most waiting process is in it, are the
  throttling: the task waits for its quota, not for a CPU.
- A process saturating a device that is also the culprit of the CPU
  saturation (its threads and the kernel's serving its I/O) or of a system
  call storm (its reads and writes) is one root cause: the device's.
- The same kind and culprit found by two collectors (attribution and
  perf_thread_profile, say) is one root cause with both evidence chains; the
  more confident one gives the title.
- score = severity weight (critical 3, warning 2, info 1) x confidence x
  evidence factor (1 + 0.05 per distinct evidence item, at most 6) x relevance,
  best first. Relevance is 1, except when the question is about one process
  (pid): then a culprit that is another process, a cgroup that process is
  not in, or a device, interface, peer or name not tied to it, weighs OTHER_CULPRIT (the answer to "why is N slow" comes first).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..contract import Evidence
from .correlate import REFAULT_COUNTER
from .model import RootCause

SEVERITY_WEIGHT = {"critical": 3.0, "warning": 2.0, "info": 1.0}
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
MAX_EVIDENCE = 8
MAX_INFO = 3
OTHER_CULPRIT = 0.5


# Root causes that make a process wait off-CPU (its blocking is their evidence, not a cause of its own).
EXPLAINS_BLOCKING = ("dns.slow", "network.retransmits", "disk.saturation", "memory.pressure", "cgroup.memory_limit")
# What a process saturating a device also causes (its I/O costs system calls and CPU), in the order their
# evidence joins the device's.
IO_SYMPTOMS = {"syscall.storm": "system call storm", "cpu.saturation": "CPU saturation"}
_EVENT_WAITS = ("select", "poll", "epoll", "recv", "accept", "sk_wait", "tcp_")


def _waits_on_events(rc: RootCause) -> bool:
    """Blocked in select/poll/recv: waiting on the network."""
    return any(w in (e.sample or "") for e in rc.evidence for w in _EVENT_WAITS)


def _key(rc: RootCause) -> tuple[Any, ...]:
    c = rc.culprit
    if c.pid is not None:
        return (rc.kind, c.pid)
    return (rc.kind, c.key())


def _merge_evidence(a: list[Evidence], b: list[Evidence]) -> list[Evidence]:
    seen = {(e.tool, e.counter, e.sample) for e in a}
    return a + [e for e in b if (e.tool, e.counter, e.sample) not in seen]


def _worse(a: str, b: str) -> str:
    return a if SEVERITY_ORDER[a] <= SEVERITY_ORDER[b] else b


def _absorb(into: RootCause, other: RootCause, bonus: float = 0.0) -> RootCause:
    return msgspec.structs.replace(
        into, evidence=_merge_evidence(into.evidence, other.evidence),
        severity=_worse(into.severity, other.severity),  # type: ignore[arg-type]
        confidence=round(min(0.99, max(into.confidence, other.confidence) + bonus), 2),
        since=into.since or other.since)


def _symptom_evidence(rc: RootCause) -> list[Evidence]:
    """A symptom's evidence where it joins its cause (within MAX_EVIDENCE): its first USE check (the CPUs
    busy) and what names the process (attribution's shares, the system call rate)."""
    use = [e for e in rc.evidence if e.tool == "perf_use_check"][:1]
    return use + [e for e in rc.evidence if e.tool in ("attribution", "perf_syscall_count")]


def relevance(rc: RootCause, pid: int | None, pid_cgroups: frozenset[str]) -> float:
    c = rc.culprit
    if pid is None:
        return 1.0
    if c.kind in ("process", "thread") and c.pid != pid:
        return OTHER_CULPRIT
    if c.pid is not None and c.pid != pid:
        return OTHER_CULPRIT
    if c.kind in ("device", "name") and c.pid is None:
        return OTHER_CULPRIT  # a device or name not tied to the process (a peer or interface may carry its flow)
    if c.kind == "cgroup" and not any(c.cgroup and (g == c.cgroup or g.startswith(c.cgroup.rstrip("/") + "/"))
                                      for g in pid_cgroups):
        return OTHER_CULPRIT
    return 1.0


def tied(rc: RootCause, pid: int | None, pid_cgroups: frozenset[str]) -> bool:
    """The root cause names the process asked about, or a cgroup it is in."""
    c = rc.culprit
    return pid is not None and (c.pid == pid or (c.kind == "cgroup" and c.cgroup is not None and any(
        g == c.cgroup or g.startswith(c.cgroup.rstrip("/") + "/") for g in pid_cgroups)))


def score(rc: RootCause, pid: int | None = None, pid_cgroups: frozenset[str] = frozenset()) -> float:
    distinct = len({(e.tool, e.counter) for e in rc.evidence})
    return round(SEVERITY_WEIGHT[rc.severity] * rc.confidence * (1 + 0.05 * min(distinct, 6))
                 * relevance(rc, pid, pid_cgroups), 3)


def rank(candidates: list[RootCause], pid: int | None = None,
         pid_cgroups: frozenset[str] = frozenset()) -> list[RootCause]:
    # the same kind and culprit: one root cause
    merged: dict[tuple[Any, ...], RootCause] = {}
    for rc in sorted(candidates, key=lambda r: -r.confidence):
        k = _key(rc)
        merged[k] = _absorb(merged[k], rc, 0.05) if k in merged else rc
    causes = list(merged.values())
    # explained by another
    singles = {rc.culprit.pid: rc for rc in causes if rc.kind == "cpu.single_thread"}
    out: list[RootCause] = []
    for rc in causes:
        if rc.kind == "cpu.saturation" and rc.culprit.pid in singles:
            singles[rc.culprit.pid] = _absorb(singles[rc.culprit.pid], rc)
            continue
        out.append(rc)
    out = [singles.get(rc.culprit.pid, rc) if rc.kind == "cpu.single_thread" else rc for rc in out]
    # a process blocked because of what another root cause names for it (its slow lookups, its retransmits,
    # its disk, its cgroup): that cause, with the blocking as evidence
    for rc in [r for r in out if r.kind == "process.blocked"]:
        cause = next((o for o in out if o.kind in EXPLAINS_BLOCKING and (
            (o.culprit.pid is not None and o.culprit.pid == rc.culprit.pid)
            or (o.culprit.pid is None and o.kind.startswith(("network.", "dns.")) and _waits_on_events(rc)))), None)
        if cause is not None:
            out.remove(rc)
            out[out.index(cause)] = _absorb(cause, rc)
    # memory pressure in a cgroup at its limit is the limit's; a device busy with the reads of a process
    # under that memory shortage (page cache re-read: REFAULT_COUNTER joined the memory cause) is memory's
    for mem in [r for r in out if r.kind == "cgroup.memory_limit"]:
        for rc in [r for r in out if r.kind == "memory.pressure" and r.culprit.kind == "cgroup"
                   and r.culprit.cgroup == mem.culprit.cgroup]:
            out.remove(rc)
            idx = out.index(mem)
            mem = out[idx] = _absorb(mem, rc)
    for disk in [r for r in out if r.kind == "disk.saturation" and r.culprit.pid is not None]:
        mem = next((m for m in out if m.kind in ("cgroup.memory_limit", "memory.pressure")
                    and any(e.counter == REFAULT_COUNTER for e in m.evidence)
                    and (m.culprit.pid == disk.culprit.pid or disk.culprit.in_cgroup(m.culprit.cgroup))), None)
        if mem is not None:
            out.remove(disk)
            out[out.index(mem)] = _absorb(mem, disk)
    # one process saturating a device, the CPUs (its threads and the kernel's serving its I/O) and making
    # the system calls (its reads and writes): one root cause, the device's, with the rest as evidence
    for disk in [r for r in out if r.kind == "disk.saturation" and r.culprit.pid is not None]:
        symptoms = sorted((r for r in out if r.kind in IO_SYMPTOMS and r.culprit.pid == disk.culprit.pid),
                          key=lambda r: list(IO_SYMPTOMS).index(r.kind))
        for rc in symptoms:
            out.remove(rc)
            idx = out.index(disk)
            disk = out[idx] = _absorb(disk, msgspec.structs.replace(rc, evidence=_symptom_evidence(rc)))
        if symptoms:
            out[out.index(disk)] = msgspec.structs.replace(disk, title=f"{disk.title}; its I/O is also the "
                                                           + " and the ".join(IO_SYMPTOMS[r.kind] for r in symptoms))
    # the process asked about, or any, in a throttled cgroup: its wait for a CPU is the quota's (so is the
    # run-queue latency of the process that waited most, when it is in that cgroup)
    for thr in [o for o in out if o.kind == "cgroup.cpu_throttled"]:
        for rc in [r for r in out if (r.kind == "cpu.single_thread" and (
                   (r.culprit.pid == pid and tied(thr, pid, pid_cgroups)) or r.culprit.in_cgroup(thr.culprit.cgroup)))
                   or (r.kind == "runq.latency" and r.culprit.kind == "cgroup" and r.culprit.cgroup == thr.culprit.cgroup)]:
            out.remove(rc)
            idx = out.index(thr)
            thr = out[idx] = _absorb(thr, rc)
    sat = next((rc for rc in out if rc.kind == "cpu.saturation"), None)
    if sat is not None:
        runq = [rc for rc in out if rc.kind == "runq.latency"]
        for rc in runq:
            out.remove(rc)
            idx = out.index(sat)
            sat = out[idx] = _absorb(sat, rc, 0.05)
    scored = [msgspec.structs.replace(rc, score=score(rc, pid, pid_cgroups), evidence=rc.evidence[:MAX_EVIDENCE]) for rc in out]
    # equal scores: what names the process asked about (or its cgroup) first, then the more severe
    scored.sort(key=lambda r: (-r.score, not tied(r, pid, pid_cgroups), SEVERITY_ORDER[r.severity]))
    infos = [r for r in scored if r.severity == "info"][MAX_INFO:]
    return [r for r in scored if r not in infos]
