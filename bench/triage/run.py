"""The triage fault benchmark: start each fault, run perf_triage in each mode
through a real MCP client (the real frontend as perfmcp-granted, and as
perfmcp-denied), score the answer against the fault's known root cause, print
the table. A real root broker is started here and stopped by its PID at the end.

    sudo .venv/bin/python bench/triage/run.py                      # everything (~30 min)
    sudo .venv/bin/python bench/triage/run.py --modes standard --users granted
    sudo .venv/bin/python bench/triage/run.py --scenarios cpu_hog,fd_leak --modes quick
    sudo .venv/bin/python bench/triage/run.py --check              # each fault seen by the existing tools
    sudo .venv/bin/python bench/triage/run.py --list

--check does not call perf_triage: it starts each fault, prints the fault's own
figure read from the kernel, and what the existing tools (perf_use_check,
perf_snapshot, perf_fd_trace, perf_dns_latency, perf_tcp_trace,
perf_cgroup_summary, ...) say about it (their warning/critical findings), so a
fault that does not move its signal shows before triage is blamed.

Prints figures, asserts nothing. Scoring: bench/triage/scenarios.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

import helpers  # noqa: E402
from triage import faults  # noqa: E402
from triage.scenarios import MODES, SCENARIOS, SEVERE, Ours, Score, Scenario, pressure_avg10, score  # noqa: E402

USERS = {"granted": helpers.GRANTED_USER, "denied": helpers.DENIED_USER}
TRIAGE = "perf_triage"


@asynccontextmanager
async def client_for(user: str, socket_path: Path, netns: str | None = None) -> AsyncIterator[Any]:
    """helpers.mcp_client, started inside the fault's network namespace where it has one."""
    with tempfile.TemporaryFile("w+") as log:  # the frontend's log is not the benchmark's output
        async with helpers.mcp_client(user, socket_path, errlog=log, netns=netns,
                                      read_timeout_seconds=_timeout()) as client:
            yield client


def _timeout() -> float:
    return 180.0


def wait_calm(limit_s: float = 10.0, threshold: float = 10.0) -> str:
    """Let the previous fault's pressure decay (PSI avg10) before the next run."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        p = pressure_avg10()
        if max(p.values()) < threshold:
            break
        time.sleep(1.0)
    p = pressure_avg10()
    return f"PSI avg10 cpu {p['cpu']:.1f} mem {p['memory']:.1f} io {p['io']:.1f} after {time.monotonic() - t0:.0f} s"


async def served_tools(user: str, socket_path: Path) -> list[str]:
    async with helpers.mcp_client(user, socket_path) as client:
        return [t.name for t in (await client.list_tools()).tools]


async def call(client: Any, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    result = await client.call_tool(tool, args)
    return helpers.envelope(result), time.monotonic() - t0


def triage_args(sc: Scenario, act: faults.Active, mode: str, pid_hint: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"mode": mode}
    if pid_hint and sc.pid_hint and act.pid is not None:
        args["pid"] = act.pid
    return args


def life_for(mode: str, settle_s: float) -> float:
    return settle_s + {"quick": 40, "standard": 60, "deep": 110}[mode]


async def run_one(env: faults.Env, sc: Scenario, mode: str, user: str, socket_path: Path, pid_hint: bool,
                  verbose: bool) -> Score:
    calm = wait_calm()
    base = pressure_avg10()
    with sc.fault(env, life_for(mode, sc.settle_s)) as act:
        await trio.sleep(sc.settle_s)
        ground = await trio.to_thread.run_sync(act.ground) if act.ground else ""
        if not act.alive():
            raise RuntimeError(f"{sc.name}: the fault's processes ended early")
        args = triage_args(sc, act, mode, pid_hint)
        async with client_for(USERS[user], socket_path, act.netns) as client:
            env_, wall = await call(client, TRIAGE, args)
        s = score(sc.name, mode, user, act, env_, wall, Ours.now(act, base))
        s.ground = ground
        s.background = " ".join(f"{k} {v:.0f}" for k, v in base.items())
    if verbose:
        print(f"  [{sc.name} {mode} {user}] {act.detail}; {calm}; truth {s.truth}; ground: {ground}")
        print(f"    args {args} -> {s.wall_s:.1f} s top1={s.top1} top3={s.top3} named={s.named} "
              f"rank={s.rank} false_alarms={s.false_alarms}")
        print(f"    summary: {s.summary or s.error}")
        for g in s.got:
            print(f"    - {g}")
        for c in s.could_not_run[:6]:
            print(f"    could not run: {c}")
        for b in s.blind_spots[:4]:
            print(f"    blind spot: {b}")
    return s


async def check_one(env: faults.Env, sc: Scenario, socket_path: Path) -> None:
    """The fault seen by its own figure and by the existing tools (granted user)."""
    print(f"== {sc.name}: {sc.about}")
    print(f"   {wait_calm()}")
    with sc.fault(env, 60) as act:
        await trio.sleep(sc.settle_s)
        print(f"   {act.detail}")
        print(f"   truth: {'; '.join(t.describe() for t in act.truths) or 'none'}")
        if act.ground:
            print(f"   kernel: {await trio.to_thread.run_sync(act.ground)}")
        probes = act.probes or [("perf_use_check", {"window_s": 3})]
        async with client_for(USERS["granted"], socket_path, act.netns) as client:
            for tool, args in probes:
                env_, wall = await call(client, tool, args)
                if not env_.get("success"):
                    print(f"   {tool}{args}: ERROR {env_.get('error')}")
                    continue
                data = env_["data"]
                found = [f for f in data.get("findings") or [] if f.get("severity") in SEVERE]
                print(f"   {tool}{args} ({wall:.1f} s): {data.get('summary') or env_.get('summary') or ''}"[:400])
                for f in found[:5]:
                    print(f"     {f['severity']:8} {f['id']}: {f['title']}"[:300])
                if not found:
                    print("     (no warning/critical finding)")


def table(scores: list[Score]) -> str:
    lines = []
    users = sorted({s.user for s in scores}, key=list(USERS).index)
    modes = [m for m in MODES if any(s.mode == m for s in scores)]
    names = [n for n in SCENARIOS if any(s.scenario == n for s in scores)]
    for user in users:
        lines.append(f"\nperf_triage as perfmcp-{user}: top1/top3/named (* = raw top1 differs: another user's "
                     "workload ranked first), F false alarms, o root causes naming other users' workloads, wall time")
        head = f"{'scenario':20}" + "".join(f"{m:>28}" for m in modes)
        lines.append(head)
        for n in names:
            row = f"{n:20}"
            for m in modes:
                got = [s for s in scores if s.user == user and s.mode == m and s.scenario == n]
                if not got:
                    row += f"{'-':>28}"
                    continue
                s = got[0]
                if not s.ok:
                    cell = f"ERROR {s.error[:14]}"
                else:
                    cell = (f"{'Y' if s.top1 else 'n'}/{'Y' if s.top3 else 'n'}/{'Y' if s.named else 'n'}"
                            f"{'' if s.raw_top1 == s.top1 else '*'} F{s.false_alarms} o{s.foreign} {s.wall_s:5.1f}s")
                row += f"{cell:>28}"
            lines.append(row)
        for m in modes:
            ss = [s for s in scores if s.user == user and s.mode == m]
            faulted = [s for s in ss if s.scenario != "quiet"]
            quiet = [s for s in ss if s.scenario == "quiet"]
            walls = sorted(s.wall_s for s in ss if s.ok)
            med = walls[len(walls) // 2] if walls else math.nan
            lines.append(f"  {m}: top1 {sum(s.top1 for s in faulted)}/{len(faulted)}, top3 "
                         f"{sum(s.top3 for s in faulted)}/{len(faulted)}, named {sum(s.named for s in faulted)}/"
                         f"{len(faulted)}, raw top1 {sum(s.raw_top1 for s in faulted)}/{len(faulted)}, "
                         f"quiet false alarms {sum(s.false_alarms for s in quiet)}, wall median "
                         f"{med:.1f} s max {max(walls, default=math.nan):.1f} s")
    return "\n".join(lines)


async def main_async(a: argparse.Namespace) -> int:
    """The benchmark, cancelled cleanly (faults stopped, broker stopped by PID) on SIGTERM or SIGINT
    (a background `&` job ignores SIGINT: use kill -TERM PID)."""
    import signal

    status = [130]

    async def body(scope: trio.CancelScope) -> None:
        status[0] = await bench(a)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(body, nursery.cancel_scope)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                print(f"signal {sig}: stopping the faults and the broker", file=sys.stderr)
                nursery.cancel_scope.cancel()
                break
    return status[0]


async def bench(a: argparse.Namespace) -> int:
    names = list(SCENARIOS) if a.scenarios == "all" else a.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios {unknown}; --list shows them", file=sys.stderr)
        return 2
    modes = a.modes.split(",")
    users = a.users.split(",")
    workdir = helpers.make_shared_tmpdir("pmcp-triage-broker-")
    broker = helpers.start_broker(workdir)
    print(f"broker pid {broker.pid} on {broker.socket_path}")
    scores: list[Score] = []
    try:
        with faults.Env() as env:
            if a.check:
                for n in names:
                    await check_one(env, SCENARIOS[n], broker.socket_path)
                return 0
            tools = await served_tools(USERS["granted"], broker.socket_path)
            if TRIAGE not in tools:
                print(f"{TRIAGE} is not served yet ({len(tools)} tools); use --check to see the faults")
                return 1
            for n in names:
                for mode in modes:
                    for user in users:
                        try:
                            s = await run_one(env, SCENARIOS[n], mode, user, broker.socket_path, not a.no_pid_hint,
                                              not a.quiet)
                        except Exception as exc:  # a fault that did not start: say so, go on
                            s = Score(n, mode, user, ok=False, error=f"harness: {exc!r}"[:200])
                            print(f"  [{n} {mode} {user}] {s.error}")
                        scores.append(s)
    finally:
        problems = helpers.stop_broker(broker)
        if problems:
            print(f"broker: {problems}")
        helpers.remove_tree(workdir)
    print(table(scores))
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(s) for s in scores], indent=1))
        print(f"\nscores written to {a.json}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="all", help="comma-separated names (--list), or all")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--users", default="granted,denied")
    p.add_argument("--check", action="store_true", help="check each fault with the existing tools, no triage")
    p.add_argument("--no-pid-hint", action="store_true",
                   help="never pass the fault's pid (even for 'why is process N slow' scenarios)")
    p.add_argument("--json", help="write the scores here")
    p.add_argument("--quiet", action="store_true", help="only the table")
    p.add_argument("--list", action="store_true")
    a = p.parse_args()
    if a.list:
        for sc in SCENARIOS.values():
            print(f"{sc.name:20} settle {sc.settle_s:g} s{' pid given' if sc.pid_hint else ''}: {sc.about}")
        return 0
    if os.geteuid() != 0:
        print("run as root (faults need cgroups, loop devices, namespaces; the broker runs as root)", file=sys.stderr)
        return 2
    return trio.run(main_async, a)


if __name__ == "__main__":
    sys.exit(main())
