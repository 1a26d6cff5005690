"""Correlation: the collectors' answers (Observations, the JSON the tools answer)
merged into candidate root causes, each naming a culprit with its evidence chain.

Pure: nothing here reads a file or a clock. Each rule reads the answers it needs
with .get() (a collector that could not run leaves its answer out, and the rule
concludes from the rest) and returns RootCauses with score 0; rank.py merges,
deduplicates and scores them.

The rules, in words:
- cpu.single_thread: a thread at >= SINGLE_THREAD_PCT of one CPU on a machine with
  more CPUs (perf_thread_profile's finding, or attribution's top process with one
  thread); the USE mean is quoted in the evidence: it hides this.
- cpu.saturation: the USE cpu row breached; the culprit is the top CPU process when
  it holds >= DOMINANT_SHARE of the busy time, else the system. Run-queue latency
  (runqlat) and off-CPU preemption join it as evidence.
- runq.latency: runqlat p99 over RUNQ_P99_MS without a saturated USE cpu row; the
  culprit the throttled cgroup of the process that waited most, when it is in one.
- cgroup.cpu_throttled: a cgroup throttled in >= the cgroup.cpu_throttled_pct
  threshold of its CFS periods (perf_cgroup_summary: top children, or the pid's).
- memory.pressure / cgroup.memory_limit: the USE memory row breached; a cgroup at
  its limit (limit hits, OOM kills, working set near the limit) is named as such.
- disk.saturation: a device over its USE thresholds (or io PSI); the culprit is the
  process with >= DOMINANT_SHARE of the storage bytes (attribution, io_layers).
- disk.capacity: a filesystem over its space or inode threshold.
- fd.leak: perf_fd_trace's leak verdict, or fds grown by >= FD_GROWTH_WARNING in the
  quick window (as fast in the broker's longer window of every user's fd counts).
- dns.slow: perf_dns_latency's slow lookups: the process and the name.
- network.retransmits / network.drops: TCP retransmits (the peer when one remote has
  >= DOMINANT_SHARE of them), drops per interface or in the CPU backlog.
- process.blocked: off-CPU time of the given pid dominated by one blocking stack.
- exec.storm: forks/s over EXEC_STORM_PER_S, the culprit the parent of most
  execs traced, else of most new processes seen in /proc; syscall.storm: one process over
  SYSCALL_STORM_PER_S and most of the calls.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import msgspec

from ..contract import Evidence, next_call
from ..use.thresholds import Thresholds, default_thresholds
from .collectors import EXEC_STORM_PER_S, FD_WINDOW_S, Observations
from .model import Culprit, RootCause

SINGLE_THREAD_PCT = 85.0  # % of the window one thread is on a CPU or waiting for one
MIN_CONTENDED_PCT = 3.0  # ... of which at least this much on it (runnable all the time is CPU-bound, however starved)
DOMINANT_SHARE = 0.5  # one process (or peer) holding this share of the resource is the culprit
RUNQ_P99_MS = 10.0
FD_GROWTH_WARNING = 20  # fds in the quick window
FD_GROWTH_MIN = 10
SYSCALL_STORM_PER_S = 100_000.0
SYSCALL_STORM_SHARE = 0.6
BLOCKED_SHARE_PCT = 50.0  # one thread off-CPU this share of the window in one stack
CHURN_MIN = 5  # new processes seen in /proc before their parents' shares say anything
# perf-mcp's own programs: never a culprit (they run because the triage asked).
OWN_COMMS = frozenset({"perf", "bpftrace", "perf-mcp", "perf-mcp-broker", "runqlat", "syscount", "offcputime",
                       "biolatency", "gethostlatency", "execsnoop", "exitsnoop", "opensnoop", "tcplife",
                       "tcpstates", "vfsstat", "fsslower"})
SEVERITY_OF_STATUS = {"warning": "warning", "critical": "critical"}


def _iso(stamp: str | None) -> str | None:
    """An ISO 8601 time stamp (perf_use_check's, to the millisecond) to the second, in UTC;
    None for None or a stamp that does not parse."""
    if not stamp:
        return None
    try:
        t = _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class View:
    """Read access to the observations, tolerant of collectors that did not answer."""

    def __init__(self, obs: Observations, th: Thresholds) -> None:
        self.obs = obs
        self.th = th
        self.use = obs.answers.get("perf_use_check") or {}
        self.att = obs.attribution or {}
        self.window_s = float(self.use.get("window_s") or self.att.get("window_s") or 0) or None

    def answer(self, name: str) -> dict[str, Any]:
        return self.obs.answers.get(name) or {}

    def findings(self, name: str, *ids: str) -> list[dict[str, Any]]:
        return [f for f in self.answer(name).get("findings") or [] if not ids or f.get("id") in ids]

    def rows(self, key: str) -> list[dict[str, Any]]:
        return [r for r in self.att.get(key) or [] if r.get("pid") != self.obs.own_pid and not self.own(r)]

    def own(self, row: dict[str, Any]) -> bool:
        command = str(row.get("command") or row.get("comm") or "")
        first = command.split()[0].rsplit("/", 1)[-1] if command.split() else ""
        return first.strip("[]") in OWN_COMMS or row.get("pid") == self.obs.own_pid

    def process_row(self, pid: int | None) -> dict[str, Any] | None:
        if pid is None:
            return None
        for key in ("cpu", "memory", "disk_read", "disk_write", "fds"):
            for r in self.att.get(key) or []:
                if r.get("pid") == pid:
                    return r
        return None

    def process(self, pid: int, command: str | None = None, tid: int | None = None, *,
                like: dict[str, Any] | None = None, **extra: Any) -> Culprit:
        """A process culprit; `like` (a worker's row) fills what the attribution has not for pid."""
        row = self.process_row(pid) or like or {}
        command = command if like else (row.get("command") or command)
        if command:  # one line (a `python -c` script keeps its newlines in cmdline)
            command = " ".join(command.split())[:160]
        return Culprit(kind="thread" if tid and tid != pid else "process", pid=pid, tid=tid if tid != pid else None,
                       user=row.get("user"), command=command,
                       cgroup=row.get("cgroup"), **extra)

    def use_row(self, resource: str) -> dict[str, Any] | None:
        return next((r for r in self.use.get("table") or [] if r.get("resource") == resource
                     and r.get("name") == resource), None)

    def checks(self, resource: str | None = None) -> list[dict[str, Any]]:
        out = []
        for row in self.use.get("table") or []:
            if resource is not None and row.get("resource") != resource:
                continue
            for kind in ("utilisation", "saturation", "errors"):
                out.extend(row.get(kind) or [])
        return out

    def since(self, resource: str) -> str | None:
        row = self.use_row(resource)
        if not row or row.get("status") == "ok" or not row.get("since"):
            return None
        return _iso(row["since"].get("since"))

    def check_evidence(self, c: dict[str, Any]) -> Evidence:
        limit = c.get("critical") if c.get("status") == "critical" else c.get("warning")
        return Evidence(tool="perf_use_check", counter=f"{c.get('counter')} [{c.get('target')}]",
                        value=c.get("value"), threshold=limit, window_s=self.window_s)


def _ev(tool: str, counter: str, value: Any, threshold: float | None = None, window_s: float | None = None,
        sample: str | None = None) -> Evidence:
    if isinstance(value, float):
        value = round(value, 3)
    return Evidence(tool=tool, counter=counter, value=value, threshold=threshold,
                    window_s=round(window_s, 3) if window_s else None, sample=sample)


def _finding_evidence(f: dict[str, Any]) -> list[Evidence]:
    out = []
    for e in f.get("evidence") or []:
        try:
            out.append(Evidence(**{k: v for k, v in e.items() if k in Evidence.__struct_fields__}))
        except TypeError:
            continue
    return out


def _cause(kind: str, title: str, culprit: Culprit, severity: str, confidence: float, evidence: list[Evidence],
           **kw: Any) -> RootCause:
    return RootCause(kind=kind, title=title, culprit=culprit, severity=severity, confidence=round(min(confidence, 0.99), 2),
                     score=0.0, evidence=evidence, **kw)


# ---------------------------------------------------------------- CPU


def saturated(v: View) -> bool:
    """More runnable tasks than twice the CPUs: every CPU-bound thread then waits, single or not."""
    rq = next((c.get("value") for c in v.checks("cpu") if c.get("id") == "cpu.run_queue"), None)
    return rq is not None and rq > 2 * v.obs.cpus


def _wanting(v: View) -> dict[int, tuple[float, float, int | None]]:
    """pid -> (on CPU %, waiting to run %, tid) of each measured process whose busiest thread wants a
    whole CPU (on it + waiting for it >= SINGLE_THREAD_PCT): the attribution's top processes and the
    thread profile's."""
    out: dict[int, tuple[float, float, int | None]] = {}
    tp = v.answer("perf_thread_profile")
    for t in tp.get("threads") or []:
        cpu, runq = t.get("cpu_pct") or 0.0, t.get("runq_wait_pct") or 0.0
        if tp.get("pid") is not None and cpu >= MIN_CONTENDED_PCT and cpu + runq >= SINGLE_THREAD_PCT:
            out.setdefault(int(tp["pid"]), (cpu, runq, t.get("tid")))
    for pid, d in v.obs.threads.items():
        cpu, runq = d.get("cpu_pct") or 0.0, d.get("runq_pct") or 0.0
        if cpu >= MIN_CONTENDED_PCT and cpu + runq >= SINGLE_THREAD_PCT:
            out.setdefault(int(pid), (cpu, runq, d.get("tid")))
    return out


def crowd(v: View) -> list[dict[str, Any]]:
    """Workers of one program (the same command line and parent) of which two or more want a whole CPU
    each, on a machine whose CPUs are saturated (the USE cpu row breached): a parallel program that more
    CPUs would speed up, so none of them is a single-thread bottleneck; they are the saturation's
    makers (its evidence, its culprit when they hold most of the busy time). Their attribution rows,
    with the demand of each as `want` (on CPU %, waiting %, tid); the pid asked about is never one."""
    row = v.use_row("cpu")
    if v.obs.cpus < 2 or not row or row.get("status") not in SEVERITY_OF_STATUS:
        return []
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for pid, want in _wanting(v).items():
        r = v.process_row(pid)
        if r is None or v.own(r) or pid == v.obs.pid or not r.get("command"):
            continue
        groups.setdefault((r["command"], v.obs.parents.get(pid)), []).append({**r, "want": want})
    best = max(groups.values(), key=len, default=[])
    return sorted(best, key=lambda r: -(r.get("cpu_pct") or 0.0)) if len(best) >= 2 else []


def single_thread(v: View) -> list[RootCause]:
    out: list[RootCause] = []
    cpus = v.obs.cpus
    workers = {r["pid"] for r in crowd(v)}  # a parallel program's workers: the saturation's, said there
    # A thread that wants a whole CPU but gets little of it on a saturated machine is the saturation's
    # victim first: said (info), unless it is the process asked about.
    def demand_severity(pid: int, cpu: float) -> str:
        return "info" if saturated(v) and cpu < SINGLE_THREAD_PCT and pid != v.obs.pid else "warning"

    if cpus < 2:
        return out  # one CPU: a busy thread is saturation, judged there
    mean = next((c for c in v.checks("cpu") if c.get("id") == "cpu.utilisation"), None)
    mean_ev = ([_ev("perf_use_check", "CPU utilisation, mean of all CPUs (the USE mean hides one busy CPU)",
                    mean.get("value"), mean.get("warning"), v.window_s)] if mean else [])
    tp = v.answer("perf_thread_profile")
    for f in v.findings("perf_thread_profile", "process.single_thread_bottleneck"):
        pid = tp.get("pid")
        tid = int((f.get("metrics") or {}).get("tid") or pid or 0) or None
        if pid is None or pid in workers:
            continue
        pct = (f.get("metrics") or {}).get("cpu_pct")
        culprit = _in_quota(v, v.process(pid, tp.get("comm"), tid=tid))
        culprit = Culprit(**{**_fields(culprit), "kind": "process"}) if tid == pid else culprit
        out.append(_cause("cpu.single_thread",
                          f"{tp.get('comm')} (pid {pid}) is bound by one thread at {pct:.0f}% of one CPU "
                          f"on a {cpus}-CPU machine", culprit, f.get("severity", "warning"),
                          float(f.get("confidence", 0.85)), _finding_evidence(f) + mean_ev,
                          next=next_call("perf_cpu_profile", pid=pid, duration_s=10),
                          detail=f.get("detail")))
    seen = {rc.culprit.pid for rc in out}
    for t in tp.get("threads") or []:  # contention hides it: on CPU + waiting to run = a whole CPU wanted
        pid = tp.get("pid")
        cpu, runq = t.get("cpu_pct") or 0.0, t.get("runq_wait_pct") or 0.0
        if (pid is None or pid in seen or pid in workers or cpu < MIN_CONTENDED_PCT
                or cpu + runq < SINGLE_THREAD_PCT):
            continue
        seen.add(pid)
        ev = [_ev("perf_thread_profile", "thread on CPU + waiting to run (% of the window, schedstat)",
                  round(cpu + runq, 1), SINGLE_THREAD_PCT, tp.get("window_s"),
                  f"tid {t.get('tid')} {t.get('name')}: {cpu:.0f}% on CPU, {runq:.0f}% runnable waiting")]
        out.append(_cause("cpu.single_thread", f"{tp.get('comm')} (pid {pid}) is bound by one thread that wants a "
                          f"whole CPU ({cpu:.0f}% on it, {runq:.0f}% waiting for it) on a {cpus}-CPU machine",
                          _in_quota(v, v.process(pid, tp.get("comm"), tid=t.get("tid"))), demand_severity(pid, cpu), 0.8,
                          ev + mean_ev,
                          next=next_call("perf_cpu_profile", pid=pid, duration_s=10)))
        break  # the busiest thread only
    for tpid, d in sorted(v.obs.threads.items(), key=lambda kv: -(kv[1].get("cpu_pct") or 0)):
        row = v.process_row(int(tpid)) or {"pid": int(tpid), "command": _comm_of(v, int(tpid))}
        if v.own(row):
            continue
        cpu, runq = d.get("cpu_pct") or 0.0, d.get("runq_pct") or 0.0
        if row["pid"] in seen or row["pid"] in workers or cpu < MIN_CONTENDED_PCT or cpu + runq < SINGLE_THREAD_PCT:
            continue
        seen.add(row["pid"])
        ev = [_ev("attribution", "busiest thread on CPU + waiting to run (% of the window, schedstat)",
                  round(cpu + runq, 1), SINGLE_THREAD_PCT, None,
                  f"pid {row['pid']} ({d.get('threads')} thread(s)), tid {d.get('tid')}: {cpu:.0f}% on CPU, "
                  f"{runq:.0f}% waiting; process {row.get('cpu_pct')}% of one CPU over {v.att.get('window_s')} s")]
        out.append(_cause("cpu.single_thread",
                          f"{_short(row)} (pid {row['pid']}): one thread wants a whole CPU ({cpu:.0f}% on it, "
                          f"{runq:.0f}% waiting) on a {cpus}-CPU machine",
                          _in_quota(v, v.process(row["pid"], tid=d.get("tid"))), demand_severity(row["pid"], cpu),
                          0.7 if d.get("threads") == 1 else 0.65,
                          ev + mean_ev, next=next_call("perf_cpu_profile", pid=row["pid"], duration_s=10)))
    return out


def _comm_of(v: View, pid: int) -> str | None:
    tp = v.answer("perf_thread_profile")
    return tp.get("comm") if tp.get("pid") == pid else None


def _fields(c: Culprit) -> dict[str, Any]:
    return {k: getattr(c, k) for k in c.__struct_fields__ if getattr(c, k) is not None}


def _short(row: dict[str, Any]) -> str:
    command = str(row.get("command") or row.get("comm") or "?")
    return command.split()[0].rsplit("/", 1)[-1][:40] if command.split() else "?"


def cpu_saturation(v: View) -> list[RootCause]:
    row = v.use_row("cpu")
    if not row or row.get("status") not in SEVERITY_OF_STATUS:
        return []
    breaches = [c for c in v.checks("cpu") if c.get("status") in SEVERITY_OF_STATUS]
    if not breaches:
        return []
    if all(str(c.get("id", "")).startswith("psi.cpu") for c in breaches) and cgroup_throttled(v):
        return []  # tasks stalled by a CFS quota count in CPU PSI: the throttled cgroup explains them
    # the CPUs' busy %: the USE check, or (an ok check is left out of a breached row) the snapshot's
    busy = next((c.get("value") for c in v.checks("cpu") if c.get("id") == "cpu.utilisation"),
                (_window(v).get("cpu") or {}).get("busy"))
    ev = [v.check_evidence(c) for c in breaches]
    culprit = Culprit(kind="system")
    top = (v.rows("cpu") or [None])[0]
    if top and busy:
        share = (top.get("cpu_pct") or 0.0) / max(1.0, busy * v.obs.cpus)
        ev.append(_ev("attribution", "top process CPU (% of one CPU)", top.get("cpu_pct"), None,
                      v.att.get("window_s"), f"pid {top['pid']} {top.get('command')}: {share:.0%} of the busy time"))
        if share >= DOMINANT_SHARE:
            culprit = v.process(top["pid"])
        elif (io := _io_burner(v, busy)) is not None:
            ev.append(io[1])
            culprit = v.process(io[0])
    workers = crowd(v)
    if workers and busy:
        lead = workers[0]
        used = sum(r.get("cpu_pct") or 0.0 for r in v.rows("cpu") if r.get("command") == lead["command"]
                   and v.obs.parents.get(r["pid"]) == v.obs.parents.get(lead["pid"]))
        share = used / max(1.0, busy * v.obs.cpus)
        ev.append(_ev("attribution", "processes of one program each wanting a whole CPU (count; none is a "
                      "single-thread bottleneck: more CPUs would help)", len(workers), None, v.att.get("window_s"),
                      "; ".join(f"pid {r['pid']}: {r['want'][0]:.0f}% on CPU, {r['want'][1]:.0f}% waiting"
                                for r in workers) + f"; {_short(lead)}: {share:.0%} of the busy time"))
        if culprit.kind == "system" and share >= DOMINANT_SHARE:
            culprit = v.process(lead["pid"])
    ev += _runq_evidence(v)
    conf = 0.6 + 0.1 * (len(breaches) - 1) + (0.1 if len(ev) > len(breaches) + 1 else 0)
    who = f" mostly by {culprit.text()}" if culprit.kind != "system" else ""
    if workers:
        who += f"; {len(workers)} processes of {_short(workers[0])} compete for the {v.obs.cpus} CPUs"
    return [_cause("cpu.saturation", f"CPU saturated{who}: {row.get('detail', '')}".rstrip(": "), culprit,
                   row["status"], conf, ev, since=v.since("cpu"),
                   next=next_call("perf_cpu_profile", pid=culprit.pid, duration_s=10))]


def _kernel_thread(row: dict[str, Any]) -> bool:
    command = str(row.get("command") or "")
    return command.startswith("[") and command.endswith("]")


def _io_burner(v: View, busy: float) -> tuple[int, Evidence] | None:
    """The process issuing most of the storage bytes, when it is also the top CPU process and, with the
    kernel threads (softirq, workqueues, loop) that serve its I/O, holds DOMINANT_SHARE of the busy time:
    threads doing I/O as fast as a device (a loop device answering from the page cache) burn the CPUs in
    the kernel, so the CPU saturation is that process's I/O."""
    top = next((r for r in v.rows("cpu") if not _kernel_thread(r)), None)
    io = _io_processes(v)
    total = sum(b for _, b, _ in io)
    if top is None or not io or not total or io[0][0]["pid"] != top["pid"] or io[0][1] / total < DOMINANT_SHARE:
        return None
    kernel = [r for r in v.rows("cpu") if _kernel_thread(r)]
    kernel_pct = sum(r.get("cpu_pct") or 0.0 for r in kernel)
    share = ((top.get("cpu_pct") or 0.0) + kernel_pct) / max(1.0, busy * v.obs.cpus)
    if not kernel or share < DOMINANT_SHARE:
        return None
    names = ", ".join(str(r.get("command")) for r in kernel[:3])
    return top["pid"], _ev("attribution", "kernel threads' CPU beside the top process, which issues most storage "
                           "bytes (% of one CPU)", round(kernel_pct, 1), None, v.att.get("window_s"),
                           f"{names}: with pid {top['pid']}, {share:.0%} of the busy time")


def _runq_evidence(v: View) -> list[Evidence]:
    rq = v.answer("perf_runq_latency")
    hist = rq.get("histogram") or {}
    if not hist.get("count"):
        return []
    return [_ev("perf_runq_latency", "run-queue wait p99 (us)", hist.get("p99_us"), RUNQ_P99_MS * 1000,
                rq.get("duration_s"), f"{hist.get('count')} waits, mean {hist.get('mean_us')} us")]


def runq_latency(v: View) -> list[RootCause]:
    rq = v.answer("perf_runq_latency")
    hist = rq.get("histogram") or {}
    p99 = hist.get("p99_us")
    if not p99 or p99 < RUNQ_P99_MS * 1000 or (hist.get("count") or 0) < 20:
        return []
    culprit = Culprit(kind="system")
    procs = [p for p in rq.get("processes") or [] if not v.own(p)]
    waiter = v.obs.pid
    if waiter is None and procs and procs[0].get("pid"):
        waiter = int(procs[0]["pid"])  # the most waiting process
    if waiter is not None and (quota := _throttled_holding(v, waiter)):
        culprit = Culprit(kind="cgroup", cgroup=quota[0])  # it waits for its cgroup's quota, not for a CPU
    elif v.obs.pid is not None:
        culprit = v.process(v.obs.pid)
    severity = "critical" if p99 >= 10 * RUNQ_P99_MS * 1000 else "warning"
    ev = _runq_evidence(v)
    if procs:
        p = procs[0]
        ev.append(_ev("perf_runq_latency", "most time waited by one process (ms)", p.get("total_wait_ms"), None,
                      rq.get("duration_s"), f"{p.get('comm')}[{p.get('pid')}]"))
    return [_cause("runq.latency", f"Tasks wait up to {p99 / 1000:.1f} ms (p99) for a CPU", culprit, severity, 0.7,
                   ev, since=v.since("cpu"),
                   next=next_call("perf_runq_latency", per_pid=True, duration_s=5, pid=v.obs.pid))]


def cgroup_throttled(v: View) -> list[RootCause]:
    out: list[RootCause] = []
    row_th = v.th.rows.get("cgroup.cpu_throttled_pct")
    top = v.answer("perf_cgroup_summary").get("top") or {}
    for r in top.get("by_throttling") or []:
        pct = r.get("throttled_pct")
        severity = row_th.severity(pct) if row_th else ("warning" if (pct or 0) >= 25 else None)
        if severity is None:
            continue
        path = r["cgroup_path"]
        ev = [_ev("perf_cgroup_summary", "cpu.stat throttled % of CFS periods", pct,
                  row_th.critical if severity == "critical" and row_th else (row_th.warning if row_th else 25.0),
                  top.get("window_s"), f"{path}: limit {r.get('cpu_limit')}, {r.get('throttled_s')} s throttled")]
        out.append(_throttled(v, path, severity, pct, r.get("cpu_limit"), ev))
    pc = v.answer("perf_cgroup_summary.pid")
    cpu = pc.get("cpu") or {}
    for f in v.findings("perf_cgroup_summary.pid", "cgroup.cpu_throttling"):
        if f.get("severity") not in SEVERITY_OF_STATUS:
            continue
        path = next((h.get("cgroup_path") for h in pc.get("hierarchies") or []
                     if "cpu" in (h.get("controllers") or [])), None) or str(pc.get("target"))
        ev = _finding_evidence(f) + [_ev("perf_cgroup_summary", "process in the cgroup", pc.get("pid"), None, None,
                                         f"pid {pc.get('pid')} {pc.get('comm')} (the pid asked about)")]
        out.append(_throttled(v, path, f["severity"], cpu.get("window_throttled_pct"), cpu.get("quota"), ev,
                              boost=0.05))
    return out


def _throttled_holding(v: View, pid: int) -> tuple[str, str] | None:
    """The throttled cgroup (cgroup_throttled) the process is in, with its membership as /proc/PID/cgroup
    says it, if any: its wait to run is the quota's (runqlat and schedstat count a throttled task as
    runnable). Its cgroups: the collectors' reading of every hierarchy, else attribution's one."""
    row = v.process_row(pid) or {}
    mine = v.obs.cgroups.get(pid) or ([row["cgroup"]] if row.get("cgroup") else [])
    for rc in cgroup_throttled(v):
        path = rc.culprit.cgroup
        for entry in mine:
            if Culprit(kind="process", pid=pid, cgroup=entry).in_cgroup(path):
                return path or "", entry
    return None


def _in_quota(v: View, culprit: Culprit) -> Culprit:
    """The process culprit with the cgroup it is throttled in (rank joins it to that throttling)."""
    held = _throttled_holding(v, culprit.pid) if culprit.pid is not None else None
    return msgspec.structs.replace(culprit, cgroup=held[1]) if held else culprit


def _throttled(v: View, path: str, severity: str, pct: float | None, limit: Any, ev: list[Evidence],
               boost: float = 0.0) -> RootCause:
    members = [r for r in v.rows("cpu") if r.get("cgroup") and path in str(r.get("cgroup"))]
    for m in members[:2]:
        ev.append(_ev("attribution", "process in the throttled cgroup (% of one CPU)", m.get("cpu_pct"), None,
                      v.att.get("window_s"), f"pid {m['pid']} {m.get('command')}"))
    for c in v.checks("cpu"):
        if str(c.get("id", "")).startswith("psi.cpu") and c.get("status") in SEVERITY_OF_STATUS:
            ev.append(_ev("perf_use_check", f"{c.get('counter')} (throttled tasks count as stalled)", c.get("value"),
                          c.get("warning"), v.window_s))
    busy = next((c for c in v.checks("cpu") if c.get("id") == "cpu.utilisation"), None)
    idle = busy is not None and busy.get("status") == "ok"
    note = " while the machine has idle CPU" if idle else ""
    return _cause("cgroup.cpu_throttled", f"cgroup {path} is CPU-throttled in {pct or 0:.0f}% of periods "
                  f"(limit {limit or '?'}){note}: its tasks wait for quota, not for a CPU",
                  Culprit(kind="cgroup", cgroup=path), severity, 0.85 + boost + (0.05 if idle else 0.0), ev,
                  next=next_call("perf_cgroup_summary", cgroup_path=path))


# ---------------------------------------------------------------- memory


def memory(v: View) -> list[RootCause]:
    out: list[RootCause] = []
    limited: list[RootCause] = []
    for name in ("perf_cgroup_summary", "perf_cgroup_summary.pid"):
        answer = v.answer(name)
        for f in v.findings(name, "cgroup.memory_near_limit", "cgroup.memory_limit_hits", "cgroup.oom_kills",
                            "cgroup.under_oom", "cgroup.memory_high"):
            if f.get("severity") not in SEVERITY_OF_STATUS:
                continue
            path = _finding_cgroup(f) or next((h.get("cgroup_path") for h in answer.get("hierarchies") or []
                                               if "memory" in (h.get("controllers") or [])), None)
            if not path:
                continue
            title = str(f.get("title") or "").removeprefix(f"{path}: ")  # the listing's titles start with it
            limited.append(_cause("cgroup.memory_limit", f"cgroup {path}: {title}",
                                  Culprit(kind="cgroup", cgroup=path), f["severity"], float(f.get("confidence", 0.8)),
                                  _finding_evidence(f), since=v.since("memory"),
                                  next=next_call("perf_cgroup_summary", cgroup_path=path), detail=f.get("detail")))
    reader = _refaulter(v)
    if reader is not None:  # the limited cgroup holding the process that re-reads: first
        limited.sort(key=lambda rc: not reader[0].in_cgroup(rc.culprit.cgroup))
        for rc in limited:
            if reader[0].in_cgroup(rc.culprit.cgroup):
                rc.evidence.append(reader[1])
    out += limited
    row = v.use_row("memory")
    if row and row.get("status") in SEVERITY_OF_STATUS:
        breaches = [c for c in v.checks("memory") if c.get("status") in SEVERITY_OF_STATUS]
        ev = [v.check_evidence(c) for c in breaches]
        culprit = Culprit(kind="system")
        if limited:
            culprit = limited[0].culprit
        elif (top := (v.rows("memory") or [None])[0]) is not None:
            ev.append(_ev("attribution", "top process RSS (MiB)", top.get("rss_mb"), None, v.att.get("window_s"),
                          f"pid {top['pid']} {top.get('command')}"))
            culprit = v.process(top["pid"])
        if reader is not None and (reader[0].pid == culprit.pid or reader[0].in_cgroup(culprit.cgroup)):
            ev.append(reader[1])
        out.append(_cause("memory.pressure", f"Memory pressure: {row.get('detail', '')}", culprit, row["status"],
                          0.6 + 0.1 * max(0, len(breaches) - 1), ev, since=v.since("memory"),
                          next=(next_call("perf_cgroup_summary", cgroup_path=culprit.cgroup) if culprit.kind == "cgroup"
                                else next_call("perf_cgroup_summary", pid=culprit.pid) if culprit.pid
                                else next_call("perf_snapshot"))))
    return out


REFAULT_READ_SHARE = 0.8  # of a process's storage bytes, read: it re-reads what memory could not keep
REFAULT_COUNTER = "storage reads/s of a process under this memory limit or pressure (page cache re-read)"


def _refaulter(v: View) -> tuple[Culprit, Evidence] | None:
    """The process issuing most of the storage bytes, nearly all reads, while memory is short (the
    memory row breached, or a cgroup's limit hit): what it reads is page cache the memory could not
    keep (a file re-read through mmap in a cgroup at its limit), so a busy device is memory's
    symptom. The culprit (with its cgroup) and the evidence that joins it to the memory cause."""
    io = _io_processes(v)
    total = sum(b for _, b, _ in io)
    if not io or not total or io[0][1] / total < DOMINANT_SHARE:
        return None
    row, bps, source = io[0]
    reads = float(row.get("read_bps") or 0.0)
    if reads < REFAULT_READ_SHARE * bps:
        return None
    culprit = v.process(int(row["pid"]), row.get("command") or row.get("comm"))
    return culprit, _ev(source, REFAULT_COUNTER, round(reads), None, v.att.get("window_s"),
                        f"pid {row['pid']} {_short(row)}: {reads / 1e6:.0f} MB/s read, {reads / bps:.0%} of its "
                        f"storage bytes; {bps / total:.0%} of the processes'")


def _finding_cgroup(f: dict[str, Any]) -> str | None:
    for e in f.get("evidence") or []:
        if e.get("counter") == "cgroup" and isinstance(e.get("value"), str):
            return str(e["value"])
    title = str(f.get("title") or "")
    return title.split(":", 1)[0] if title.startswith("/") else None


# ---------------------------------------------------------------- disk


def disk(v: View) -> list[RootCause]:
    out: list[RootCause] = []
    checks = v.checks("disk")
    bad = [c for c in checks if c.get("status") in SEVERITY_OF_STATUS]
    devices = sorted({c["id"].split(".")[1] for c in bad if str(c.get("id", "")).startswith("disk.")
                      and c["id"].count(".") >= 2})
    psi = [c for c in bad if str(c.get("id", "")).startswith("psi.io")]
    capacity = [c for c in bad if str(c.get("threshold") or "").startswith("filesystem.")
                or str(c.get("id", "")).startswith(("fs.", "filesystem."))]
    for c in capacity:
        what = "inodes" if str(c.get("id", "")).endswith("inodes") or "inode" in str(c.get("threshold")) else "space"
        out.append(_cause("disk.capacity", f"Filesystem {c.get('target')} nearly full: {what} {c.get('value')}"
                          f"{c.get('unit', '')} used", Culprit(kind="device", device=str(c.get("target"))),
                          c["status"], 0.9, [v.check_evidence(c)],
                          next=next_call("perf_file_trace", mode="file_lifecycle", duration_s=10)))
    devices = [d for d in devices if not any(c.get("target") == d for c in capacity)]
    if not devices and psi:
        snap = _window(v)
        busiest = (snap.get("disk_totals") or {}).get("busiest_device")
        devices = [busiest] if busiest else [""]
    if not devices:
        return out
    for dev in devices:
        writers = _device_processes(v, dev)
        total = sum(b for _, b, _ in writers)
        dev_bad = [c for c in bad if c.get("target") == dev] + psi
        ev = [v.check_evidence(c) for c in dev_bad]
        iowait = ((_window(v).get("cpu") or {}).get("iowait"))
        if iowait is not None:
            ev.append(_ev("perf_snapshot", "CPU iowait (%)", iowait, None, None))
        culprit = Culprit(kind="device", device=dev or None) if dev else Culprit(kind="system")
        if writers and total > 0:
            row, bps, source = writers[0]
            share = bps / total
            ev.append(_ev(source, "storage bytes/s of the top process (read+write)", round(bps), None,
                          v.att.get("window_s"), f"pid {row['pid']} {row.get('command') or row.get('comm')}: "
                          f"{share:.0%} of the processes' storage bytes"))
            if share >= DEVICE_SHARE:
                culprit = v.process(int(row["pid"]), row.get("command") or row.get("comm"), device=dev or None,
                                    like=row if row.get("workers") else None)
        severity = "critical" if any(c.get("status") == "critical" for c in dev_bad) else "warning"
        conf = 0.6 + 0.1 * min(3, len(dev_bad) - 1) + (0.1 if culprit.kind == "process" else 0.0)
        where = f"Disk {dev}" if dev else "Storage"
        who = f", {culprit.text()} issues most of the bytes" if culprit.kind == "process" else ""
        out.append(_cause("disk.saturation", f"{where} saturated{who}", culprit, severity, conf, ev,
                          since=v.since("disk"),
                          next=(next_call("perf_io_latency", device=dev, duration_s=5) if dev
                                else next_call("perf_io_layers", include_details=True, duration_s=10))))
    return out


_KERNEL_IO = re.compile(r"^(kworker/|ksoftirqd/|loop\d|jbd2/|kswapd|kcompactd|flush-)")
DEVICE_FIT = 2.0  # a process issuing more than this many times a device's bytes/s does not load that device
DEVICE_SHARE = 2 / 3  # of the storage bytes that may be a device's: a process's bytes are not per device, so
# with two heavy readers (of two devices) neither is named the culprit of either


def _device_processes(v: View, dev: str) -> list[tuple[dict[str, Any], float, str]]:
    """_io_processes that may be the device's load: a process's storage bytes are not per device, so one
    issuing over DEVICE_FIT times the device's own bytes/s (the snapshot's) is busy elsewhere (a reader
    of vda at 1.2 GB/s is not what saturates a loop device reading 400 MB/s)."""
    rows = _io_processes(v)
    disk = next((d for d in _window(v).get("disks") or [] if d.get("device") == dev), None)
    if not dev or disk is None:
        return rows
    dev_bps = (float(disk.get("rkb_s") or 0) + float(disk.get("wkb_s") or 0)) * 1024
    return [r for r in rows if r[1] <= DEVICE_FIT * dev_bps + 2**20]


def _window(v: View) -> dict[str, Any]:
    wins = v.answer("perf_snapshot").get("windows") or []
    return wins[0] if wins else {}


def _io_processes(v: View) -> list[tuple[dict[str, Any], float, str]]:
    """(row, bytes/s, source) of processes by storage bytes, most first: perf_io_layers' block bytes
    per process where deep mode ran it (kernel threads left out: they issue it for a process), else
    attribution's (other users' only with the inspect grant). Workers of one program (the
    same command line and parent, such as fio's jobs) count as one: their parent, when it runs the same
    command, else the busiest worker, with their bytes summed."""
    by_pid: dict[int, tuple[dict[str, Any], float, str]] = {}
    layers = v.answer("perf_io_layers")
    dur = float(layers.get("duration_s") or 0)
    for p in layers.get("processes") or [] if dur else []:  # deep: every user's block I/O, first
        b = p.get("block") or {}
        if v.own(p) or _KERNEL_IO.match(str(p.get("comm") or "")) or not (b.get("read_bytes") or b.get("write_bytes")):
            continue  # a kernel thread issuing block I/O does it for a process (a loop device's worker)
        row = {**p, "read_bps": b.get("read_bytes", 0) / dur, "write_bps": b.get("write_bytes", 0) / dur}
        by_pid[p["pid"]] = (row, row["read_bps"] + row["write_bps"], "perf_io_layers")
    if not by_pid:
        for key in ("disk_read", "disk_write"):
            for r in v.rows(key):
                bps = float(r.get("read_bps") or 0) + float(r.get("write_bps") or 0)
                by_pid[r["pid"]] = (r, bps, "attribution")
    groups: dict[tuple[Any, ...], list[tuple[dict[str, Any], float, str]]] = {}
    for row, bps, source in by_pid.values():
        ppid = v.obs.parents.get(row["pid"])
        groups.setdefault((row.get("command") or row.get("comm"), ppid), []).append((row, bps, source))
    out = []
    for (command, ppid), members in groups.items():
        members.sort(key=lambda m: -m[1])
        row, _, source = members[0]
        total = sum(m[1] for m in members)
        if len(members) > 1:
            parent = v.process_row(ppid) if ppid else None
            lead = ppid if ppid and ppid > 1 and (parent is None or parent.get("command") == command) else row["pid"]
            row = {**row, "pid": lead, "workers": len(members),
                   "command": f"{command} ({len(members)} processes)" if command else None}
        out.append((row, total, source))
    return sorted(out, key=lambda x: -x[1])


# ---------------------------------------------------------------- processes


def fd_leak(v: View) -> list[RootCause]:
    out: list[RootCause] = []
    traced: set[int] = set()
    for name in sorted(k for k in v.obs.answers if k == "perf_fd_trace" or k.startswith("perf_fd_trace.")):
        fd = v.answer(name)
        pid = fd.get("pid")
        if pid is None:
            continue
        traced.add(pid)
        if fd.get("verdict") != "leak":
            continue
        f = (v.findings(name, "process.fd_leak") or [{}])[0]
        g = fd.get("growth") or {}
        ev = _finding_evidence(f) or [_ev("perf_fd_trace", "open fds slope (/s)", g.get("slope_per_s"), None,
                                          fd.get("duration_s"))]
        out.append(_cause("fd.leak", f"{fd.get('comm')} (pid {pid}) leaks file descriptors: "
                          f"+{g.get('slope_per_s')}/s, {fd.get('current')} open",
                          v.process(pid, fd.get("comm")), f.get("severity", "warning"),
                          float(fd.get("verdict_confidence") or 0.8), ev,
                          next=next_call("perf_fd_trace", pid=pid, duration_s=30, interval_s=5,
                                         include_fd_list=True)))
    for g in v.obs.fd_growth:
        pid = g.get("pid")
        if pid in traced or v.own({"pid": pid, "command": g.get("command")}):
            continue  # perf_fd_trace judged it (with more samples), or it is perf-mcp's own
        grew = (g.get("last") or 0) - (g.get("first") or 0)
        if grew < FD_GROWTH_MIN:
            continue
        # the bar is a rate: FD_GROWTH_WARNING in the quick window (a longer window needs as many per second)
        rate_ok = (g.get("slope_per_s") or 0) * FD_WINDOW_S >= FD_GROWTH_WARNING
        ev = [_ev("fd_growth", "/proc/PID/fd count", g.get("last"), None, g.get("window_s"),
                  f"{g.get('first')} -> {g.get('last')} ({g.get('slope_per_s')}/s)")]
        out.append(_cause("fd.leak", f"{g.get('command')} (pid {pid}) opened {grew} fds in {g.get('window_s')} s "
                          "without closing them", v.process(pid, g.get("command")),
                          "warning" if grew >= FD_GROWTH_WARNING and rate_ok else "info", 0.55, ev,
                          next=next_call("perf_fd_trace", pid=pid, duration_s=30, interval_s=5,
                                         include_fd_list=True)))
    return out


def blocked(v: View) -> list[RootCause]:
    out: list[RootCause] = []
    off = v.answer("perf_offcpu_profile")
    for f in v.findings("perf_offcpu_profile", "offcpu.thread_blocked"):
        pct = (f.get("metrics") or {}).get("window_pct") or 0
        pid = off.get("pid")
        if pid is None or pct < BLOCKED_SHARE_PCT:
            continue
        top = (off.get("top_stacks") or [{}])[0]
        tid = (top.get("tids") or [None])[0]
        out.append(_cause("process.blocked", f"pid {pid} is off-CPU {pct:.0f}% of the time, blocked in "
                          f"{top.get('blocked_in')} ({top.get('wait_kind')})", v.process(pid, top.get("comm"), tid=tid),
                          "warning", float(f.get("confidence", 0.8)), _finding_evidence(f),
                          next=next_call("perf_offcpu_profile", pid=pid, duration_s=10), detail=f.get("detail")))
    tp = v.answer("perf_thread_profile")
    pid = tp.get("pid")
    if pid is not None and pid == v.obs.pid and not out:
        t = _blocked_thread(tp)
        if t is not None:
            share = (t["offcpu_ms"] - (t.get("runq_wait_ms") or 0.0)) / (t["window_s"] * 10)
            stack = t.get("offcpu_top_stack") or []
            where = t.get("offcpu_blocked_in") or (stack[-1] if stack else "?")
            ev = [_ev("perf_thread_profile", "off-CPU, not waiting to run (% of the window: offcputime - schedstat "
                      "run-queue wait)", round(share, 1), BLOCKED_SHARE_PCT, t.get("window_s"),
                      f"tid {t['tid']} '{t.get('name')}': " + " > ".join(stack[-6:]))]
            out.append(_cause("process.blocked", f"thread '{t.get('name')}' (tid {t['tid']}) of pid {pid} is blocked "
                              f"{share:.0f}% of the time in {where}" + (" (a lock: futex)" if _lockish(stack) else ""),
                              v.process(pid, tp.get("comm"), tid=int(t["tid"])), "warning",
                              0.8 if _lockish(stack) else 0.7, ev,
                              next=next_call("perf_offcpu_profile", pid=pid, duration_s=10)))
    return out


_LOCK_FRAME = re.compile(r"futex|mutex|rwsem|lll_lock|_lock_wait|down_read|down_write")


def _lockish(stack: list[str]) -> bool:
    return any(_LOCK_FRAME.search(f) for f in stack)


def _blocked_thread(tp: dict[str, Any]) -> dict[str, Any] | None:
    """The thread blocked (off CPU and not waiting to run) for BLOCKED_SHARE_PCT of the window, if any:
    off-CPU time includes preemption, which schedstat counts as run-queue wait. A wait on a lock comes
    before one on I/O or events, which comes before a sleep (a thread that sleeps on purpose)."""
    found = []
    for t in tp.get("threads") or []:
        off, runq, win = t.get("offcpu_ms"), t.get("runq_wait_ms") or 0.0, t.get("window_s") or 0.0
        if not off or not win:
            continue
        stack = t.get("offcpu_top_stack") or []
        text = " ".join(stack)
        if "irqentry_exit" in text or "preempt" in text:
            continue
        if (off - runq) / (win * 1000) * 100 >= BLOCKED_SHARE_PCT:
            rank = 0 if _lockish(stack) else 2 if "nanosleep" in text else 1
            found.append((rank, -(off - runq), t))
    return min(found, key=lambda x: x[:2])[2] if found else None


def exec_storm(v: View) -> list[RootCause]:
    forks = _window(v).get("forks_s")
    ex = v.answer("perf_exec_trace")
    rate = max(forks or 0.0, ex.get("execs_per_s") or 0.0)
    if rate < EXEC_STORM_PER_S[0]:
        return []
    severity = "critical" if rate >= EXEC_STORM_PER_S[1] else "warning"
    ev = [_ev("perf_snapshot", "/proc/stat processes (forks/s)", forks, EXEC_STORM_PER_S[0])] if forks else []
    culprit, conf, nxt = Culprit(kind="system"), 0.6, next_call("perf_exec_trace", duration_s=5)
    parents = [p for p in ex.get("top_parents") or [] if not v.own({"comm": p.get("comm"), "pid": p.get("ppid")})]
    seen = [p for p in v.obs.churn.get("parents") or [] if not v.own({"comm": p.get("comm"), "pid": p.get("ppid")})]
    if not parents and seen and (v.obs.churn.get("new") or 0) >= CHURN_MIN:
        top = seen[0]
        share = top["new"] / v.obs.churn["new"]
        ev.append(_ev("churn", "new processes seen in /proc by one parent (a sample of its spawns)", top["new"], None,
                      v.obs.churn.get("window_s"), f"ppid {top['ppid']} {top.get('comm')}: {top['new']} of "
                      f"{v.obs.churn['new']} new processes in {v.obs.churn.get('scans')} listings"))
        if share >= DOMINANT_SHARE:
            culprit, conf = v.process(int(top["ppid"]), top.get("comm")), 0.7
            nxt = next_call("perf_exec_trace", pid=int(top["ppid"]), duration_s=5)
    if parents:
        top = parents[0]
        share = (top.get("execs") or 0) / max(1, ex.get("execs") or 0)
        ev.append(_ev("perf_exec_trace", "execs/s by one parent", top.get("execs_per_s"), None, ex.get("duration_s"),
                      f"ppid {top.get('ppid')} {top.get('comm')}: {top.get('execs')} of {ex.get('execs')} execs, "
                      f"{top.get('short_lived')} short-lived"))
        if share >= DOMINANT_SHARE:
            culprit, conf = v.process(int(top["ppid"]), top.get("comm")), 0.8
            nxt = next_call("perf_exec_trace", pid=int(top["ppid"]), duration_s=5)
    who = f" by {culprit.text()}" if culprit.kind != "system" else ""
    return [_cause("exec.storm", f"{rate:.0f} new processes per second{who}", culprit, severity, conf, ev, next=nxt)]


def syscall_storm(v: View) -> list[RootCause]:
    sc = v.answer("perf_syscall_count")
    total = sc.get("total_calls") or 0
    dur = sc.get("duration_s") or 0
    procs = [p for p in sc.get("processes") or [] if not v.own(p)]
    if not procs or not total or not dur:
        return []
    p = procs[0]
    rate = p.get("per_s") or (p.get("count", 0) / dur)
    if rate < SYSCALL_STORM_PER_S or p.get("count", 0) / total < SYSCALL_STORM_SHARE:
        return []
    top = (sc.get("syscalls") or [{}])[0]
    return [_cause("syscall.storm", f"{p.get('comm')} (pid {p['pid']}) makes {rate:,.0f} system calls/s",
                   v.process(p["pid"], p.get("comm")), "warning", 0.65,
                   [_ev("perf_syscall_count", "system calls/s of one process", rate, SYSCALL_STORM_PER_S, dur,
                        f"{p.get('pct')}% of all calls; top call {top.get('name')}")],
                   next=next_call("perf_syscall_count", pid=p["pid"], include_latency=True, duration_s=10))]


# ---------------------------------------------------------------- network


def dns(v: View) -> list[RootCause]:
    d = v.answer("perf_dns_latency")
    out = []
    for f in v.findings("perf_dns_latency", "network.dns.slow_lookups"):
        worst = max(d.get("slowest") or [{}], key=lambda x: x.get("latency_ms") or 0)
        pid = worst.get("pid")
        culprit = (v.process(pid, worst.get("comm"), name=worst.get("name")) if pid
                   else Culprit(kind="name", name=worst.get("name")))
        out.append(_cause("dns.slow", f"Slow name lookups: {f.get('title')}", culprit, f.get("severity", "warning"),
                          float(f.get("confidence", 0.85)), _finding_evidence(f),
                          next=next_call("perf_dns_latency", pid=pid, duration_s=10), detail=f.get("detail")))
    return out


def network(v: View) -> list[RootCause]:
    out: list[RootCause] = []
    bad = [c for c in v.checks("network") if c.get("status") in SEVERITY_OF_STATUS]
    nh = v.answer("perf_net_health")
    retrans = [c for c in bad if c.get("id") == "network.tcp.retransmits"]
    nh_f = [f for f in v.findings("perf_net_health", "network.tcp_retransmits")
            if f.get("severity") in SEVERITY_OF_STATUS]
    if retrans or nh_f:
        ev = [v.check_evidence(c) for c in retrans] + [e for f in nh_f for e in _finding_evidence(f)]
        severity = "critical" if any(c.get("status") == "critical" for c in retrans) or any(
            f.get("severity") == "critical" for f in nh_f) else "warning"
        culprit = Culprit(kind="system")
        socks = ((nh.get("sockets") or {}).get("worst_by_retransmits") or [])
        by_peer: dict[str, int] = {}
        for s in socks:
            n = s.get("retrans_in_window") or 0
            if n > 0:
                by_peer[s["remote"]] = by_peer.get(s["remote"], 0) + n
        all_n = sum(by_peer.values())
        next_ = next_call("perf_net_health", include_tcp_details=True)
        if by_peer:
            peer, n = max(by_peer.items(), key=lambda kv: kv[1])
            ev.append(_ev("perf_net_health", "retransmits in the window to one peer (tcp_info)", n, None,
                          nh.get("interval_s"), f"{peer}: {n} of {all_n}"))
            if n / all_n >= DOMINANT_SHARE:
                owners = {x.get("pid") for x in socks if x.get("remote") == peer and x.get("pid")}
                owner = owners.pop() if len(owners) == 1 else None
                culprit = Culprit(kind="peer", peer=peer, pid=owner,
                                  command=next((x.get("comm") for x in socks if x.get("pid") == owner), None)
                                  if owner else None)
                port = peer.rsplit(":", 1)[-1]
                if port.isdigit():
                    next_ = next_call("perf_tcp_trace", mode="connections", remote_port=int(port), duration_s=10)
        out.append(_cause("network.retransmits", "TCP retransmits" + (f" to {culprit.peer}" if culprit.peer else ""),
                          culprit, severity, 0.75 if culprit.kind == "peer" else 0.6, ev, since=v.since("network"),
                          next=next_))
    for c in bad:
        cid = str(c.get("id", ""))
        if cid.endswith(".drops"):
            name = "softnet backlog" if cid == "network.softnet.drops" else str(c.get("target"))
            out.append(_cause("network.drops", f"Packets dropped on {name}",
                              Culprit(kind="interface", interface=name), c["status"], 0.7, [v.check_evidence(c)],
                              since=v.since("network"),
                              next=next_call("perf_net_health", interface=None if " " in name else name)))
    return out


RULES = (single_thread, cpu_saturation, runq_latency, cgroup_throttled, memory, disk, fd_leak, blocked, exec_storm,
         syscall_storm, dns, network)


# The resource a kind belongs to, for focus (process-level kinds answer every focus).
KIND_FOCUS = {"cpu.saturation": "cpu", "cpu.single_thread": "cpu", "cgroup.cpu_throttled": "cpu", "runq.latency": "cpu",
              "exec.storm": "cpu", "syscall.storm": "cpu", "memory.pressure": "memory",
              "cgroup.memory_limit": "memory", "disk.saturation": "disk", "disk.capacity": "disk",
              "dns.slow": "network", "network.retransmits": "network", "network.drops": "network"}


def correlate(obs: Observations, thresholds: Thresholds | None = None) -> list[RootCause]:
    v = View(obs, thresholds or default_thresholds())
    out: list[RootCause] = []
    for rule in RULES:
        out += rule(v)
    if obs.focus != "all":
        out = [rc for rc in out if KIND_FOCUS.get(rc.kind, obs.focus) == obs.focus]
    return out


def pid_cgroups(obs: Observations) -> frozenset[str]:
    """The cgroup paths of the pid asked about (every hierarchy), for ranking."""
    answer = obs.answers.get("perf_cgroup_summary.pid") or {}
    return frozenset(h["cgroup_path"] for h in answer.get("hierarchies") or [] if h.get("cgroup_path"))


def findings_count(obs: Observations) -> int:
    return sum(len(a.get("findings") or []) for a in obs.answers.values() if isinstance(a, dict))
