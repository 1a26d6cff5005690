"""Drive a fuzz run against a running broker and gather the figures (test and bench share it).

Fuzzers run as real test users (fuzz_client.py through setpriv): perfmcp-denied sends
every kind of frame, valid trace and profile requests included (they are refused
before anything runs); perfmcp-granted sends the same minus anything that would
decode to a profile or trace job, so its valid requests reach the readers (fd_table,
tool_features) and the polkit path. Meanwhile root's AccessQuery is timed in a loop
and the broker's fd count is sampled.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import helpers
from broker_wire import crash_lines, request
from frame_fuzz import traceback_kinds
from perf_mcp_protocol import AccessQuery, AccessReply

FUZZ_CLIENT = Path(__file__).resolve().parent / "fuzz_client.py"
CONCURRENCY = 6  # per fuzzer; two fuzzers of different uids: below MAX_CONNECTIONS_PER_UID each


@dataclass
class FuzzFigures:
    fuzzers: dict[str, dict[str, Any]] = field(default_factory=dict)
    good_latencies_s: list[float] = field(default_factory=list)
    good_failures: list[str] = field(default_factory=list)
    fd_samples: list[int] = field(default_factory=list)
    fds_before: int = 0
    fds_after: int = 0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    crashes: list[str] = field(default_factory=list)
    broker_alive: bool = True
    children_left: list[int] = field(default_factory=list)
    seconds: float = 0.0
    tracebacks: Counter[str] = field(default_factory=Counter)
    decoder_escapes: int = 0

    @property
    def frames(self) -> int:
        return sum(f["frames"] for f in self.fuzzers.values())

    @property
    def connections(self) -> int:
        return sum(f["connections"] for f in self.fuzzers.values())

    @property
    def internal(self) -> int:
        return sum(f["internal"] for f in self.fuzzers.values())

    @property
    def hung(self) -> int:
        return sum(f["hung"] for f in self.fuzzers.values())

    def answers(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for f in self.fuzzers.values():
            total.update(f["answers"])
        return total

    def valid_tags(self, user: str) -> dict[str, dict[str, int]]:
        return self.fuzzers[user]["valid_by_tag"]

    def latency_summary(self) -> str:
        lat = sorted(self.good_latencies_s)
        if not lat:
            return "none"
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
        return (f"n={len(lat)} p50={p(0.5) * 1000:.1f}ms p90={p(0.9) * 1000:.1f}ms "
                f"p99={p(0.99) * 1000:.1f}ms max={lat[-1] * 1000:.1f}ms mean={statistics.mean(lat) * 1000:.1f}ms")


async def _fuzzer(user: str, socket_path: str, seed: int, n_frames: int, no_jobs: bool) -> dict[str, Any]:
    argv = helpers.as_user_argv(user, [helpers.VENV_PYTHON, FUZZ_CLIENT, socket_path, str(seed), str(n_frames),
                                       str(CONCURRENCY), "1" if no_jobs else "0"])
    res = await trio.run_process(argv, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
                                 env=helpers.user_env(user), cwd="/", check=False)
    if res.returncode != 0:
        raise AssertionError(f"fuzz client of {user} failed ({res.returncode}): {res.stderr.decode()[-3000:]}")
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


async def run_fuzz(broker: helpers.RunningBroker, granted: str, denied: str, n_frames: int, seed: int) -> FuzzFigures:
    """n_frames in total, two thirds by the denied user (everything), one third by the granted one."""
    path = str(broker.socket_path)
    figs = FuzzFigures()
    # Warm up every path once before the baselines (lazy imports, first D-Bus use).
    await request(path, AccessQuery())
    figs.fds_before = helpers.open_fd_count(broker.pid)
    figs.rss_before_kib = helpers.rss_kib(broker.pid)
    done = trio.Event()
    started = time.monotonic()

    async def good_client() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            try:
                with trio.fail_after(30):
                    got = await request(path, AccessQuery())
                if isinstance(got.final, AccessReply):
                    figs.good_latencies_s.append(time.monotonic() - t0)
                else:
                    figs.good_failures.append(got.summary())
            except Exception as exc:  # counted, not raised: the figures say it
                figs.good_failures.append(repr(exc))
            await trio.sleep(0.1)

    async def fd_sampler() -> None:
        while not done.is_set():
            if broker.alive():
                figs.fd_samples.append(helpers.open_fd_count(broker.pid))
            await trio.sleep(0.2)

    async def fuzz(user: str, seed_: int, n: int, no_jobs: bool) -> None:
        figs.fuzzers[user] = await _fuzzer(user, path, seed_, n, no_jobs)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(good_client)
        nursery.start_soon(fd_sampler)
        async with trio.open_nursery() as fuzzers:
            fuzzers.start_soon(fuzz, denied, seed, n_frames * 2 // 3, False)
            fuzzers.start_soon(fuzz, granted, seed + 1, n_frames - n_frames * 2 // 3, True)
        done.set()
    figs.seconds = time.monotonic() - started
    figs.broker_alive = broker.alive()
    if figs.broker_alive:
        await helpers.await_until(lambda: helpers.open_fd_count(broker.pid) <= figs.fds_before, 10.0)
        figs.fds_after = helpers.open_fd_count(broker.pid)
        figs.rss_after_kib = helpers.rss_kib(broker.pid)
        figs.children_left = helpers.children(broker.pid)
    log = broker.log_text()
    figs.tracebacks = Counter(traceback_kinds(log))
    # INTERNAL answers whose frame the decoder itself cannot refuse cleanly (the invalid UTF-8
    # bug fixed in the codec): counted apart to name the cause, and a failure like any other.
    figs.decoder_escapes = sum(sum(f["internal_decoder_escape"].values()) for f in figs.fuzzers.values())
    figs.crashes = crash_lines(log)
    return figs


def describe(figs: FuzzFigures) -> dict[str, Any]:
    return {
        "frames": figs.frames,
        "connections": figs.connections,
        "seconds": round(figs.seconds, 1),
        "crashes": len(figs.crashes) + (0 if figs.broker_alive else 1),
        "internal_errors": figs.internal,
        "internal_errors_from_decoder_escapes": figs.decoder_escapes,
        "broker_tracebacks": dict(figs.tracebacks),
        "hung_connections": figs.hung,
        "fds": f"{figs.fds_before}->{figs.fds_after} (min {min(figs.fd_samples, default=0)}, "
               f"max {max(figs.fd_samples, default=0)} during)",
        "leaked_fds": max(0, figs.fds_after - figs.fds_before),
        "rss_kib": f"{figs.rss_before_kib}->{figs.rss_after_kib}",
        "good_access_query": figs.latency_summary(),
        "good_failures": len(figs.good_failures),
        "answers": dict(figs.answers().most_common()),
    }
