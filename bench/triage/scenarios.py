"""The fault benchmark's scenarios and how a triage answer is scored against them.

A scenario is a fault of faults.py with the time it needs to take hold, and
whether the question is about a process ("why is process N slow": the fault's
pid is passed to perf_triage) or about the machine (no pid).

Scoring (one answer):
- top1: the first root cause matches a true root cause (kind and culprit);
  with two faults at once, the first matches either of them;
- top3: every true root cause is matched within the first three;
- named: every culprit is named somewhere (a root cause's culprit of any kind,
  or the one-line summary);
- false_alarms: root causes of severity warning or critical that match no
  truth (on the quiet machine, every warning or critical root cause).
The machine is shared with other users' loads: root causes naming another
user's process, cgroup or loop device, and machine-wide ones (cpu, memory,
io) whose pressure was already above BACKGROUND_PSI before the fault started
(Ours.foreign), are counted apart (`foreign`) and skipped for top1/top3/false
alarms; raw_top1 is the first root cause as it came.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers

from . import faults
from .faults import Active, FaultFn

MODES = ("quick", "standard", "deep")
SEVERE = ("warning", "critical")


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: FaultFn
    settle_s: float  # wait after the start before triage runs
    pid_hint: bool = False  # pass the fault's pid to perf_triage
    about: str = ""


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("quiet", faults.quiet, 0.0, about="no fault: any warning/critical root cause is a false alarm"),
    Scenario("cpu_hog", faults.cpu_hog, 3.0, about="one busy thread as another user"),
    Scenario("throttled_cgroup", faults.throttled_cgroup, 3.0, about="cpu quota 20/100 ms, busy loop, idle machine"),
    Scenario("lock_blocked", faults.lock_blocked, 2.0, pid_hint=True,
             about="victim thread waiting on a mutex held 90 of 92 ms"),
    Scenario("fd_leak", faults.fd_leak, 3.0, about=f"{faults.LEAK_RATE:g} fds/s never closed"),
    Scenario("slow_dns", faults.slow_dns, 2.0, pid_hint=True, about=f"resolver answers after {faults.DNS_DELAY_S} s"),
    Scenario("disk_saturation", faults.disk_saturation, 3.0, about="fio 8 psync threads on a loop device"),
    Scenario("memory_pressure", faults.memory_pressure, 4.0,
             about="200M cgroup, 150M held, 600M file re-read through mmap"),
    Scenario("packet_loss", faults.packet_loss, 3.0, about="5% of one flow dropped at the receiver, iperf3"),
    Scenario("cpu_saturation", faults.cpu_saturation, 4.0, about="stress-ng --cpu 4 on 2 CPUs"),
    Scenario("exec_storm", faults.exec_storm, 2.0, about=f"/bin/true spawned {faults.EXEC_RATE:g}/s"),
    Scenario("cpu_hog+fd_leak", faults.combo(faults.cpu_hog, faults.fd_leak), 3.0, about="two at once"),
    Scenario("throttled+disk", faults.combo(faults.throttled_cgroup, faults.disk_saturation), 3.0,
             about="two at once"),
    Scenario("memory+exec", faults.combo(faults.memory_pressure, faults.exec_storm), 4.0, about="two at once"),
]}


SYSTEM_RESOURCE = {"cpu.saturation": "cpu", "runq.latency": "cpu", "memory.pressure": "memory",
                   "disk.saturation": "io"}
BACKGROUND_PSI = 10.0


def pressure_avg10() -> dict[str, float]:
    out = {}
    for r in ("cpu", "memory", "io"):
        out[r] = float(Path(f"/proc/pressure/{r}").read_text().split()[1].split("=")[1])
    return out


@dataclass
class Ours:
    """What the harness itself runs at scoring time: its process tree (faults,
    broker, frontend), the cgroups those processes are in, its loop devices.
    The machine is shared: a root cause whose culprit is none of these (another
    user's process, cgroup or loop device) is "foreign": reported, but neither
    a false alarm nor a miss of the harness's fault."""

    pids: set[int]
    cgroups: set[str]
    devices: set[str]
    background: dict[str, float] = field(default_factory=dict)  # PSI avg10 before the fault started

    @classmethod
    def now(cls, active: Active, background: dict[str, float] | None = None) -> Ours:
        me = os.getpid()
        pids = {me, *helpers.descendants(me)}
        cgroups: set[str] = set()
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                    cgroups.add(line.split(":", 2)[2])
            except (OSError, IndexError):
                pass
        devices = {t.device for t in active.truths if t.device}
        return cls(pids, cgroups, devices, background or {})

    def foreign(self, culprit: dict[str, Any], rc_kind: str | None = None) -> bool:
        """Another user's workload; or, for a machine-wide root cause, load that
        was there before the fault started (its PSI avg10 above BACKGROUND_PSI)."""
        kind = culprit.get("kind")
        resource = SYSTEM_RESOURCE.get(rc_kind or "")
        if kind == "system" and resource and self.background.get(resource, 0.0) > BACKGROUND_PSI:
            return True
        if kind in ("process", "thread"):
            pid = culprit.get("pid") or culprit.get("tid")
            return isinstance(pid, int) and pid not in self.pids
        if kind == "cgroup":
            cg = str(culprit.get("cgroup") or "").split(":", 1)[-1].rstrip("/")
            return bool(cg) and not any(o == cg or o.startswith(cg + "/") for o in self.cgroups)
        if kind == "device":
            dev = str(culprit.get("device") or "").removeprefix("/dev/")
            return dev.startswith("loop") and dev not in self.devices
        return False


@dataclass
class Score:
    scenario: str
    mode: str
    user: str
    ok: bool  # perf_triage answered (success)
    top1: bool = False  # ignoring foreign root causes (see Ours)
    top3: bool = False
    named: bool = False
    false_alarms: int = 0  # warning/critical, not matching a truth, not foreign
    raw_top1: bool = False  # the very first root cause, foreign or not
    foreign: int = 0  # root causes naming other users' workloads
    wall_s: float = 0.0
    rank: int | None = None  # rank (1-based) of the first match
    got: list[str] = field(default_factory=list)  # "kind(culprit) severity" of the first root causes
    summary: str = ""
    could_not_run: list[str] = field(default_factory=list)
    blind_spots: list[str] = field(default_factory=list)
    error: str = ""
    truth: str = ""
    ground: str = ""
    background: str = ""  # PSI avg10 before the fault started
    root_causes: list[dict[str, Any]] = field(default_factory=list)  # as answered, for rescoring


def culprit_text(c: dict[str, Any]) -> str:
    parts = [f"{k}={c[k]}" for k in ("pid", "tid", "cgroup", "device", "interface", "peer", "name") if c.get(k)]
    if c.get("command"):
        parts.append(str(c["command"])[:20])
    return f"{c.get('kind', '?')}:" + ",".join(parts)


def score(scenario: str, mode: str, user: str, active: Active, envelope: dict[str, Any], wall_s: float,
          ours: Ours | None = None) -> Score:
    """Call while the fault still runs (its processes are part of `ours`)."""
    ours = ours if ours is not None else Ours.now(active)
    s = Score(scenario, mode, user, ok=bool(envelope.get("success")), wall_s=wall_s,
              truth="; ".join(t.describe() for t in active.truths) or "none")
    if not s.ok:
        err = envelope.get("error") or {}
        s.error = f"{err.get('code')}: {err.get('message')}"
        return s
    data = envelope["data"]
    every: list[dict[str, Any]] = data.get("root_causes") or []
    s.root_causes = [{k: rc.get(k) for k in ("kind", "culprit", "severity", "confidence", "score", "title")}
                     for rc in every]
    s.summary = str(data.get("summary", ""))
    s.could_not_run = [f"{c.get('collector')}: {c.get('reason')}" for c in data.get("could_not_run") or []]
    s.blind_spots = [str(b) for b in data.get("blind_spots") or []]
    pids = [t.all_pids() for t in active.truths]

    def match(rc: dict[str, Any]) -> bool:
        return any(t.matches(rc, p) for t, p in zip(active.truths, pids, strict=True))

    s.raw_top1 = bool(every) and match(every[0])
    rcs = [rc for rc in every if match(rc) or not ours.foreign(rc.get("culprit") or {}, rc.get("kind"))]
    s.foreign = len(every) - len(rcs)
    s.got = [f"{rc.get('kind')}({culprit_text(rc.get('culprit') or {})}) {rc.get('severity')}"
             + (" [foreign]" if rc not in rcs else "") for rc in every[:4]]
    matched = [match(rc) for rc in rcs]
    s.false_alarms = sum(1 for rc, m in zip(rcs, matched, strict=True) if not m and rc.get("severity") in SEVERE)
    if not active.truths:
        s.top1 = s.top3 = s.named = s.false_alarms == 0
        return s
    s.rank = next((i + 1 for i, m in enumerate(matched) if m), None)
    s.top1 = bool(matched) and matched[0]
    s.top3 = all(any(t.matches(rc, p) for rc in rcs[:3]) for t, p in zip(active.truths, pids, strict=True))
    s.named = all(any(t.culprit_matches(rc.get("culprit") or {}, p) for rc in every) or t.named_in(s.summary)
                  for t, p in zip(active.truths, pids, strict=True))
    return s
