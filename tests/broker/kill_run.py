"""Clients killed at random moments of their jobs (test_broker_kill.py and bench/bench_broker_kill.py).

Two streams side by side, one per user holding the grants (root and perfmcp-granted: the
per-uid limit is one profiling/tracing job). Each stream runs, one after another,
client processes (client_script.py, the real user) asking for a 1-2 s job about a
"tag" process of its own (`sleep`): perf record -p TAG then perf script, or runqlat
-p TAG (BPF programs). Each client is SIGKILLed at a random moment: mostly between
Accepted and the end of its job, sometimes before Accepted. Measured:
- kill -> the job's processes gone and its audit line written (the job group gone),
- every process ever seen under the broker gone at the end (no orphan),
- every BPF program id held by a job process (from /proc/PID/fdinfo, prog_id) gone
  from `bpftool prog show` at the end.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import dataclass, field

import trio

import helpers
from broker_wire import audit_records, cmdline, job_dir_of
from user_clients import StreamingClient

GONE_GUARD_S = 20.0  # longest a kill may take to clean up before the run counts it as left behind


@dataclass
class KillFigures:
    kills: int = 0
    before_accepted: int = 0
    after_final: int = 0  # the job had ended before the kill landed
    busy: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # final answers other than BUSY before Accepted
    failed: list[str] = field(default_factory=list)  # jobs whose steps failed (not cancelled): the audit's why
    gone_s: list[float] = field(default_factory=list)
    not_gone: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)  # pid -> start time, every broker descendant seen
    prog_ids: set[int] = field(default_factory=set)
    orphans: list[int] = field(default_factory=list)
    progs_left: list[int] = field(default_factory=list)
    fds_before: int = 0
    fds_after: int = 0

    def distribution(self) -> str:
        v = sorted(self.gone_s)
        if not v:
            return "none"
        p = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
        return f"n={len(v)} p50={p(0.5):.2f}s p90={p(0.9):.2f}s p99={p(0.99):.2f}s max={v[-1]:.2f}s"


def _job_spec(rng: random.Random, tag: int) -> tuple[dict, float]:
    duration = rng.choice([1, 2])
    if rng.random() < 0.5:
        return {"type": "cpu_profile", "duration_s": float(duration), "frequency_hz": 99, "pid": tag,
                "include_kernel": True}, duration + 0.3
    return {"type": "runq_latency", "backend": "libbpf", "duration_s": duration, "pid": tag}, duration + 0.8


def _job_procs(broker_pid: int, tag: int, dirs: set[str]) -> list[int]:
    """The broker's descendants working for this stream: argv holds `-p TAG` or one of its job dirs."""
    out = []
    for pid in helpers.descendants(broker_pid):
        argv = cmdline(pid)
        d = job_dir_of(argv, pid)
        tagged = "-p" in argv and str(tag) in argv
        if d and tagged:  # perf record -p TAG -o DIR/perf.data: DIR is this stream's
            dirs.add(d)
        if tagged or (d and d in dirs):
            out.append(pid)
    return out


def _prog_ids_of(pid: int) -> set[int]:
    ids = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return ids
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def bpftool_prog_ids() -> set[int]:
    res = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    return {p["id"] for p in json.loads(res.stdout or b"[]")}


async def _sampler(broker_pid: int, figs: KillFigures, done: trio.Event) -> None:
    while not done.is_set():
        for pid in helpers.descendants(broker_pid):
            st = helpers.read_proc_stat(pid)
            if st is not None:
                figs.seen.setdefault(pid, st.starttime)
                figs.prog_ids |= _prog_ids_of(pid)
        await trio.sleep(0.03)


async def _stream(user: str, broker: helpers.RunningBroker, tag: int, n: int, rng: random.Random,
                  figs: KillFigures) -> None:
    dirs: set[str] = set()
    for _ in range(n):
        spec, length = _job_spec(rng, tag)
        client = await StreamingClient.start(user, broker.socket_path, {"requests": [spec]})
        early = rng.random() < 0.1
        try:
            if early:
                await trio.sleep(rng.uniform(0.0, 0.3))
                accepted = False
            else:
                first = await client.wait_for_type("accepted", timeout=60.0)
                if first["type"] != "accepted":
                    figs.busy += first.get("code") == "BUSY"
                    if first.get("code") != "BUSY":
                        key = f"{first.get('code') or first['type']}: {first.get('message', '')[:80]}"
                        figs.refused[key] = figs.refused.get(key, 0) + 1
                    continue
                accepted = True
                await trio.sleep(rng.uniform(0.0, length))
            procs = _job_procs(broker.pid, tag, dirs)
            client.kill()
            killed_at = time.monotonic()
        finally:
            await client.aclose()
        figs.kills += 1
        if not accepted:
            figs.before_accepted += 1

        def done() -> bool:
            return not _job_procs(broker.pid, tag, dirs) and not any(os.path.exists(d) for d in dirs)

        with trio.move_on_after(GONE_GUARD_S):
            while not done():
                await trio.sleep(0.01)
            took = time.monotonic() - killed_at
            if accepted:  # the job's audit line says it ended (cancelled, or ok when the kill came late)
                while not [r for r in audit_records(broker.log_text()) if r["pid"] == client.proc.pid]:
                    await trio.sleep(0.02)
        if not done():
            left_dirs = [d for d in dirs if os.path.exists(d)]
            audit = [r for r in audit_records(broker.log_text()) if r["pid"] == client.proc.pid]
            figs.not_gone.append(f"{user}: {spec['type']} client {client.proc.pid} accepted={accepted} procs {procs} -> "
                                 f"{_job_procs(broker.pid, tag, dirs)}, dirs left {left_dirs}, audit {audit}")
            continue
        mine = [r for r in audit_records(broker.log_text()) if r["pid"] == client.proc.pid]
        for r in mine:
            figs.outcomes[r["outcome"]] = figs.outcomes.get(r["outcome"], 0) + 1
            if r["outcome"] == "failed":
                figs.failed.append(f"{user}: {spec['type']}: {r['detail']}")
        if accepted and not mine:
            figs.not_gone.append(f"{user}: no audit line for client {client.proc.pid}")
        if accepted and procs:
            figs.gone_s.append(took)
        elif accepted:
            figs.after_final += 1


async def run_kills(broker: helpers.RunningBroker, granted: str, n: int, seed: int) -> KillFigures:
    figs = KillFigures()
    figs.fds_before = helpers.open_fd_count(broker.pid)
    tags = {"root": subprocess.Popen(["/bin/sleep", "100000"], stdin=subprocess.DEVNULL),
            granted: helpers.spawn_as(granted, ["/bin/sleep", "100000"])}
    done = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sampler, broker.pid, figs, done)
            async with trio.open_nursery() as streams:
                for i, (user, tag) in enumerate(tags.items()):
                    streams.start_soon(_stream, user, broker, tag.pid, n // 2 + (i < n % 2), random.Random(seed + i), figs)
            done.set()
    finally:
        for tag in tags.values():
            helpers.stop_process(tag)
    # Everything ever seen under the broker is gone (same pid and start time = same process).
    await helpers.await_until(lambda: not _alive_seen(figs), 10.0)
    figs.orphans = _alive_seen(figs)
    # BPF programs are freed after their last fd closes (RCU): allow a few seconds.
    await helpers.await_until(lambda: not (figs.prog_ids & bpftool_prog_ids()), 10.0)
    figs.progs_left = sorted(figs.prog_ids & bpftool_prog_ids())
    await helpers.await_until(lambda: helpers.open_fd_count(broker.pid) <= figs.fds_before, 10.0)
    figs.fds_after = helpers.open_fd_count(broker.pid)
    return figs


def _alive_seen(figs: KillFigures) -> list[int]:
    out = []
    for pid, start in figs.seen.items():
        st = helpers.read_proc_stat(pid)
        if st is not None and st.starttime == start:
            out.append(pid)
    return out


def describe(figs: KillFigures) -> dict[str, object]:
    return {
        "kills": figs.kills,
        "before_accepted": figs.before_accepted,
        "job_already_over": figs.after_final,
        "busy_retries": figs.busy,
        "refused": figs.refused,
        "kill_to_group_gone": figs.distribution(),
        "not_gone": len(figs.not_gone),
        "audit_outcomes": figs.outcomes,
        "failed_jobs": figs.failed[:10],
        "processes_seen": len(figs.seen),
        "orphans": len(figs.orphans),
        "bpf_prog_ids_seen": len(figs.prog_ids),
        "bpf_progs_left": len(figs.progs_left),
        "fds": f"{figs.fds_before}->{figs.fds_after}",
    }

