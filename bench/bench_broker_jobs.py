"""1,000 jobs on one broker: fd and process counts flat, RSS growth.

    sudo .venv/bin/python bench/bench_broker_jobs.py [--jobs 1000]

Starts its own broker as root (stopped by its PID at the end). Root runs, one after
another, cheap jobs (fd_table of this process, access_query, tool_features) with a 1 s
cpu_profile every 50th job; perfmcp-granted runs 50 AccessQueries (the polkit path) and
an fd_table of the bench process. Printed: the broker's fd count, children, zombies and
RSS before, every 250 jobs and after; the time per job kind. Goals: fds and children back
to the start, no zombie (exit status 1 otherwise); RSS growth is printed, not judged.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "broker")]

import trio  # noqa: E402

import helpers  # noqa: E402
from broker_wire import request  # noqa: E402
from perf_mcp_protocol import AccessQuery, AccessReply, CpuProfile, FdTable, JobResult, ToolFeatures  # noqa: E402
from user_clients import run_client  # noqa: E402


async def run(broker: helpers.RunningBroker, n: int, granted: str) -> int:
    path = str(broker.socket_path)
    await request(path, ToolFeatures())
    await request(path, AccessQuery())
    fds0, rss0 = helpers.open_fd_count(broker.pid), helpers.rss_kib(broker.pid)
    times: dict[str, list[float]] = {}
    bad = 0
    print(f"start: fds={fds0} rss={rss0} KiB children={len(helpers.children(broker.pid))}")
    for i in range(n):
        if i % 50 == 25:
            req, want = CpuProfile(duration_s=1.0, frequency_hz=49), JobResult
        elif i % 3 == 0:
            req, want = FdTable(pid=os.getpid()), JobResult
        elif i % 3 == 1:
            req, want = AccessQuery(), AccessReply
        else:
            req, want = ToolFeatures(), JobResult
        t0 = time.monotonic()
        got = await request(path, req)
        times.setdefault(type(req).__struct_config__.tag, []).append(time.monotonic() - t0)
        bad += not isinstance(got.final, want)
        if (i + 1) % 250 == 0:
            print(f"after {i + 1}: fds={helpers.open_fd_count(broker.pid)} rss={helpers.rss_kib(broker.pid)} KiB "
                  f"children={len(helpers.children(broker.pid))} zombies={len(helpers.zombie_children(broker.pid))}")
    user = await run_client(granted, path, {"requests": [{"type": "access_query"}] * 50 + [{"type": "fd_table", "pid": os.getpid()}]})
    wrong = [c.final for c in user.conns.values() if not c.final or c.final["type"] not in ("access", "result")]
    print(f"granted user: {len(user.conns)} requests, wrong: {wrong[:3]}")
    bad += len(wrong)
    await helpers.await_until(lambda: helpers.open_fd_count(broker.pid) <= fds0, 10.0)
    fds1, rss1 = helpers.open_fd_count(broker.pid), helpers.rss_kib(broker.pid)
    children, zombies = helpers.children(broker.pid), helpers.zombie_children(broker.pid)
    for kind, v in times.items():
        print(f"{kind}: n={len(v)} mean={statistics.mean(v) * 1000:.1f}ms max={max(v) * 1000:.1f}ms")
    print(f"end: fds {fds0}->{fds1}, rss {rss0}->{rss1} KiB (growth {rss1 - rss0} KiB), children={len(children)}, "
          f"zombies={len(zombies)}, wrong answers={bad}")
    goals = {"fds flat": fds1 <= fds0, "no child left": not children, "no zombie": not zombies, "all answered": bad == 0}
    for name, ok in goals.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    return 0 if all(goals.values()) else 1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=1000)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_broker_jobs: needs root (the broker); skipped")
        return 0
    users = helpers.lookup_test_users()
    workdir = helpers.make_shared_tmpdir("pmcp-bench-")
    broker = helpers.start_broker(workdir)
    try:
        return trio.run(run, broker, args.jobs, users.granted.name)
    finally:
        helpers.stop_broker(broker)
        helpers.remove_tree(workdir)


if __name__ == "__main__":
    sys.exit(main())
