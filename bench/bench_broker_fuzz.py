"""100,000 generated frames against a real broker: crashes, leaked fds, the good client's latency.

    sudo .venv/bin/python bench/bench_broker_fuzz.py [--frames 100000] [--seed N]

Starts its own broker as root on a temp socket (stopped by its PID at the end). The
frames come from tests/broker/frame_fuzz.py (valid requests of every type, fd_table and
the trace requests included, mutated, truncated, oversized, deeply nested, wrong
types, wrong order), sent by perfmcp-denied (everything: valid profile and trace
requests are refused before anything runs) and perfmcp-granted (everything but a
request that would start a program). Root times an AccessQuery every 0.1 s
throughout; the broker's fd count is sampled every 0.2 s.

Goals printed with the figures: 0 crashes (broker alive, no traceback, no INTERNAL
answer), 0 leaked fds,
0 hung connections, the good client served throughout. Exit status 1 when a goal is missed.
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
from fuzz_run import describe, run_fuzz  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_broker_fuzz: needs root (the broker); skipped")
        return 0
    users = helpers.lookup_test_users()
    workdir = helpers.make_shared_tmpdir("pmcp-bench-")
    broker = helpers.start_broker(workdir)
    try:
        figs = trio.run(run_fuzz, broker, users.granted.name, users.denied.name, args.frames, args.seed)
        out = describe(figs)
        out["valid_requests_by_tag_denied"] = figs.valid_tags(users.denied.name)
        print(json.dumps(out, indent=1, default=dict))
        goals = {
            "broker alive": figs.broker_alive,
            "0 crashes": not figs.crashes,
            "0 INTERNAL": figs.internal == 0 and figs.decoder_escapes == 0,
            "0 leaked fds": figs.fds_after <= figs.fds_before,
            "0 hung connections": figs.hung == 0,
            "good client always served": not figs.good_failures and bool(figs.good_latencies_s),
            f"{args.frames} frames sent": figs.frames >= args.frames,
        }
        for name, ok in goals.items():
            print(f"{'PASS' if ok else 'FAIL'} {name}")
        return 0 if all(goals.values()) else 1
    finally:
        helpers.stop_broker(broker)
        helpers.remove_tree(workdir)


if __name__ == "__main__":
    sys.exit(main())
