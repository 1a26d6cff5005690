"""Floods from one user while others are served: idle connections, then slow readers.

    sudo .venv/bin/python bench/bench_broker_flood.py [--seconds 30]

Starts its own broker as root (stopped by its PID at the end).
- idle flood: perfmcp-denied opens 100 connections and sends nothing, wave after wave
  (tests/broker/flood_script.py): the broker admits MAX_CONNECTIONS_PER_UID of them,
  closes the rest at once and the admitted ones at the handshake time-out.
- slow-reader flood: perfmcp-granted keeps 16 connections asking for the fd table of a
  process holding 5,000 fds with 200-character names (~1 MB per reply) and reads 512
  bytes every 0.5 s: the broker runs what its limits allow, answers BUSY to the rest,
  and closes a reply nobody reads after SEND_TIMEOUT_S.
During each flood root and the other user (an agent process of that user) time an
AccessQuery every 0.2 s, and the broker's RSS is sampled every 0.2 s. Printed: the
latencies (p50/p90/max), RSS before/peak/after, fds before/after. Goals: every
AccessQuery of the others answered, fds back to the start, RSS peak under 200 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "broker")]

import trio  # noqa: E402

import helpers  # noqa: E402
from agents import Agent  # noqa: E402
from broker_wire import request  # noqa: E402
from perf_mcp_protocol import AccessQuery, AccessReply  # noqa: E402

FLOOD_SCRIPT = REPO / "tests" / "broker" / "flood_script.py"
RSS_GOAL_KIB = 200 * 1024

SLOW_READER = r"""
import socket, sys, threading, time, json
import msgspec
from perf_mcp_protocol import Hello, encode_frame, limits
path, pid, seconds, n = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
stop = time.monotonic() + seconds
counts = {"connections": 0, "bytes_read": 0, "closed_by_broker": 0}
lock = threading.Lock()
def one():
    while time.monotonic() < stop:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.connect(path)
            s.sendall(encode_frame(Hello(protocol_version=limits.PROTOCOL_VERSION)))
            body = msgspec.msgpack.encode({"type": "fd_table", "pid": pid})
            s.sendall(len(body).to_bytes(4, "big") + body)
            with lock:
                counts["connections"] += 1
            while time.monotonic() < stop:
                data = s.recv(512)
                if not data:
                    with lock:
                        counts["closed_by_broker"] += 1
                    break
                with lock:
                    counts["bytes_read"] += len(data)
                time.sleep(0.5)
        except OSError:
            pass
        finally:
            s.close()
threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(counts), flush=True)
"""


def pct(values: list[float]) -> str:
    v = sorted(values)
    if not v:
        return "none"
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return f"n={len(v)} p50={p(0.5) * 1000:.1f}ms p90={p(0.9) * 1000:.1f}ms max={v[-1] * 1000:.1f}ms"


async def others_served(broker: helpers.RunningBroker, other: Agent, done: trio.Event, out: dict) -> None:
    root_lat, other_lat, failures = [], [], []
    cid = 0
    while not done.is_set():
        t0 = time.monotonic()
        got = await request(broker.socket_path, AccessQuery())
        (root_lat if isinstance(got.final, AccessReply) else failures).append(time.monotonic() - t0)
        cid += 1
        t0 = time.monotonic()
        await trio.to_thread.run_sync(other.open, cid, {"type": "access_query"})
        with trio.move_on_after(30):
            while not (state := (await trio.to_thread.run_sync(other.state))[cid])["final"]:
                await trio.sleep(0.005)
        final = state["final"]
        if final and final["type"] == "access":
            other_lat.append(state["final_at"] - t0)
        else:
            failures.append(cid)
        await trio.sleep(0.2)
    out.update(root=pct(root_lat), other=pct(other_lat), failures=len(failures))


async def rss_sampler(pid: int, done: trio.Event, samples: list[int]) -> None:
    while not done.is_set():
        samples.append(helpers.rss_kib(pid))
        await trio.sleep(0.2)


async def flood(broker: helpers.RunningBroker, argv: list[str], env: dict, other: Agent) -> dict:
    fds0, rss0 = helpers.open_fd_count(broker.pid), helpers.rss_kib(broker.pid)
    samples: list[int] = []
    served: dict = {}
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(others_served, broker, other, done, served)
        nursery.start_soon(rss_sampler, broker.pid, done, samples)
        res = await trio.run_process(argv, stdin=subprocess.DEVNULL, capture_stdout=True, env=env, cwd="/", check=False)
        done.set()
    await helpers.await_until(lambda: helpers.open_fd_count(broker.pid) <= fds0, limits_guard())
    return {"flooder": res.stdout.decode().strip().splitlines()[-3:], "others_served": served,
            "rss_kib": f"before={rss0} peak={max(samples, default=rss0)} after={helpers.rss_kib(broker.pid)}",
            "peak_kib": max(samples, default=rss0),
            "fds": f"{fds0}->{helpers.open_fd_count(broker.pid)}", "fds_ok": helpers.open_fd_count(broker.pid) <= fds0}


def limits_guard() -> float:
    from perf_mcp_protocol import limits
    return limits.SEND_TIMEOUT_S + 10.0


def _holder(directory: Path) -> subprocess.Popen[bytes]:
    target = directory / ("f" * 200)
    target.touch()
    code = ("import os, resource, sys\nresource.setrlimit(resource.RLIMIT_NOFILE, (6000, 6000))\n"
            "fds = [os.open(sys.argv[1], os.O_RDONLY) for _ in range(5000)]\nprint('ready', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


async def main_async(broker: helpers.RunningBroker, users: helpers.TestUsers, seconds: float, tmp: Path) -> int:
    await request(broker.socket_path, AccessQuery())
    results = {}
    granted_agent = Agent(users.granted.name, broker.socket_path)
    denied_agent = Agent(users.denied.name, broker.socket_path)
    holder = _holder(tmp)
    try:
        waves = max(1, int(seconds // 6))
        idle_cmd = " ; ".join(f"{helpers.VENV_PYTHON} {FLOOD_SCRIPT} {broker.socket_path} 100 20" for _ in range(waves))
        results["idle flood (perfmcp-denied, 100 connections per wave)"] = await flood(
            broker, helpers.as_user_argv(users.denied, ["/bin/sh", "-c", idle_cmd]), helpers.user_env(users.denied),
            granted_agent)
        results["slow-reader flood (perfmcp-granted, 16 readers of ~1 MB fd tables)"] = await flood(
            broker, helpers.as_user_argv(users.granted, [helpers.VENV_PYTHON, "-c", SLOW_READER, str(broker.socket_path),
                                                           str(holder.pid), str(seconds), "16"]),
            helpers.user_env(users.granted), denied_agent)
    finally:
        granted_agent.stop()
        denied_agent.stop()
        holder.kill()
        holder.wait()
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("peak_kib", "fds_ok")} for k, v in results.items()}, indent=1))
    goals = {}
    for name, r in results.items():
        goals[f"{name}: others always served"] = r["others_served"]["failures"] == 0
        goals[f"{name}: fds back to the start"] = r["fds_ok"]
        goals[f"{name}: RSS peak < 200 MiB"] = r["peak_kib"] < RSS_GOAL_KIB
    for name, ok in goals.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    return 0 if all(goals.values()) else 1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_broker_flood: needs root (the broker); skipped")
        return 0
    users = helpers.lookup_test_users()
    workdir = helpers.make_shared_tmpdir("pmcp-bench-")
    broker = helpers.start_broker(workdir)
    try:
        return trio.run(main_async, broker, users, args.seconds, workdir)
    finally:
        helpers.stop_broker(broker)
        helpers.remove_tree(workdir)


if __name__ == "__main__":
    sys.exit(main())
