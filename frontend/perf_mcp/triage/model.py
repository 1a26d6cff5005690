"""The shape of perf_triage's answer (shared with the fault benchmark, which scores
it on kind + culprit)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ..contract import Evidence, NextCall, Severity

Mode = Literal["quick", "standard", "deep"]
Focus = Literal["cpu", "memory", "disk", "network", "all"]
CulpritKind = Literal["process", "thread", "cgroup", "device", "interface", "peer", "name", "system"]

# Stable ids of root causes; a benchmark matches on kind + culprit.
ROOT_CAUSE_KINDS: dict[str, str] = {
    "cpu.saturation": "more runnable work than CPUs (culprit: the top process, or the system)",
    "cpu.single_thread": "one thread at ~100% of one CPU: adding CPUs does not help (the USE mean misses it)",
    "cgroup.cpu_throttled": "a cgroup's CPU quota throttles its tasks, even on an idle machine",
    "memory.pressure": "tasks stall on memory: reclaim, swapping, major faults",
    "cgroup.memory_limit": "a cgroup at its memory limit: reclaim or OOM inside it",
    "disk.saturation": "a block device queues requests; the process issuing the bytes when one dominates",
    "disk.capacity": "a filesystem near full in space or inodes",
    "fd.leak": "a process whose open file descriptors keep growing",
    "dns.slow": "slow name lookups (getaddrinfo) in a process",
    "network.retransmits": "TCP retransmits, concentrated on a peer or an interface",
    "network.drops": "packets dropped on an interface or the CPU backlog",
    "process.blocked": "a process off-CPU, waiting on a lock, pipe, futex or I/O",
    "runq.latency": "tasks wait long for a CPU (scheduler latency)",
    "exec.storm": "a parent spawning many short-lived processes",
    "syscall.storm": "one process making system calls at a very high rate",
}


class Culprit(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: CulpritKind
    pid: int | None = None
    tid: int | None = None
    user: str | None = None
    command: str | None = None
    cgroup: str | None = None
    device: str | None = None
    interface: str | None = None
    peer: str | None = None
    name: str | None = None

    def key(self) -> tuple[Any, ...]:
        """What makes two culprits the same one (for deduplication)."""
        return (self.kind, self.pid, self.tid, self.cgroup, self.device, self.interface, self.peer, self.name)

    def in_cgroup(self, path: str | None) -> bool:
        """This process's cgroup (as attribution gives it: a v2 path, or "controllers:path" of the first
        v1 hierarchy where it is not at the root) is `path` or below it."""
        if not path or not self.cgroup:
            return False
        mine = self.cgroup.split(":", 1)[1] if ":" in self.cgroup else self.cgroup
        top = path.rstrip("/")
        return mine == path or mine.startswith(top + "/")

    def text(self) -> str:
        if self.kind in ("process", "thread"):
            who = f"{self.command or '?'} (pid {self.pid}" + (f", tid {self.tid}" if self.tid and self.tid != self.pid
                                                               else "") + ")"
            return who + (f" of {self.user}" if self.user else "")
        value = {"cgroup": self.cgroup, "device": self.device, "interface": self.interface, "peer": self.peer,
                 "name": self.name}.get(self.kind)
        return f"{self.kind} {value}" if value else "the system"


class RootCause(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: str  # one of ROOT_CAUSE_KINDS
    title: str
    culprit: Culprit
    severity: Severity
    confidence: float
    score: float
    evidence: list[Evidence]
    since: str | None = None  # ISO 8601: since when the resource has been in this state (sampler)
    next: NextCall | None = None
    detail: str | None = None


class CouldNotRun(msgspec.Struct, kw_only=True):
    collector: str
    reason: str
    code: str | None = None  # the tool's error code (PERMISSION_DENIED, CAPABILITY_MISSING, TIMEOUT, ...)


class CollectorRun(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    status: Literal["ok", "failed", "timed_out", "cancelled", "skipped"]
    duration_ms: float
    method: str | None = None  # the rung that answered, where the tool says
    queued_ms: float | None = None  # time waiting for a broker slot


class TriageData(msgspec.Struct, kw_only=True):
    summary: str  # one line: the top root cause or "no problem found"
    mode: Mode
    focus: Focus
    pid: int | None
    root_causes: list[RootCause]  # ranked, best first
    findings_count: int  # findings of every collector before merging
    could_not_run: list[CouldNotRun]
    blind_spots: list[str]
    collectors: list[CollectorRun]
    window_s: float  # the sampler window judged
    duration_s: float
