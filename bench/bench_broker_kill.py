"""1,000 clients killed at random moments of their jobs: orphans, BPF programs left, and the
distribution of kill -> job group gone.

    sudo .venv/bin/python bench/bench_broker_kill.py [--kills 1000] [--seed N]

Starts its own broker as root on a temp socket (stopped by its PID at the end) and
runs tests/broker/kill_run.py: two streams (root, perfmcp-granted) of 1-2 s jobs
(perf record -p TAG + perf script, runqlat -p TAG) whose client processes are
SIGKILLed at random moments. Goals: 0 orphaned processes, 0 BPF programs left of
those the jobs held (prog ids read from the jobs' /proc/PID/fdinfo), 0 jobs not
cleaned up, p99 of kill -> group gone under 5 s. Exit status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "broker")]

import trio  # noqa: E402

import helpers  # noqa: E402
from kill_run import describe, run_kills  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kills", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_broker_kill: needs root (the broker); skipped")
        return 0
    users = helpers.lookup_test_users()
    workdir = helpers.make_shared_tmpdir("pmcp-bench-")
    broker = helpers.start_broker(workdir)
    try:
        figs = trio.run(run_kills, broker, users.granted.name, args.kills, args.seed)
        print(json.dumps(describe(figs), indent=1))
        v = sorted(figs.gone_s)
        p99 = v[min(len(v) - 1, int(0.99 * len(v)))] if v else float("inf")
        goals = {
            "0 orphaned processes": not figs.orphans,
            "0 BPF programs left": not figs.progs_left,
            "every job cleaned up": not figs.not_gone,
            f"p99 kill -> group gone < 5 s ({p99:.2f} s)": p99 < 5.0,
            "no fd leaked": figs.fds_after <= figs.fds_before,
            "broker alive": broker.alive(),
        }
        for name, ok in goals.items():
            print(f"{'PASS' if ok else 'FAIL'} {name}")
        for line in figs.not_gone[:10]:
            print("not gone:", line)
        if figs.not_gone:  # keep the broker's log for a look
            kept = Path("/tmp") / f"bench_broker_kill-{os.getpid()}.log"
            kept.write_text(broker.log_text())
            print(f"broker log kept in {kept}")
        return 0 if all(goals.values()) else 1
    finally:
        helpers.stop_broker(broker)
        helpers.remove_tree(workdir)


if __name__ == "__main__":
    sys.exit(main())
