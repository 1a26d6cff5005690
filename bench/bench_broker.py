"""Broker round-trip benchmarks. Prints figures, never asserts.

    sudo .venv/bin/python bench/bench_broker.py [--n 500]

Starts its own broker as root on a temp socket (stopped by its PID at the end)
and measures, over fresh connections each time:
- hello:   connect, Hello, BrokerHello, close
- access:  connect, Hello, AccessQuery, AccessReply, close (as root: no polkit)
- access through polkit: the same as perfmcp-granted (3 polkit checks per query),
  when that user exists (packaging/dev-setup.sh)
- job:     ToolFeatures (`bpftrace --info` run by the broker) end to end
- profile: CpuProfile of 1 s at 49 Hz, end to end minus the requested second

Run as a non-root user it says so and exits 0 (the broker needs root).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from perf_mcp_protocol import (
    AccessQuery,
    AccessReply,
    BrokerHello,
    CpuProfile,
    FrameReader,
    Hello,
    JobResult,
    ToolFeatures,
    decode_broker_message,
    encode_frame,
    limits,
)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
GRANTED_USER = "perfmcp-granted"
FINAL = (JobResult, AccessReply)
REPLY_LIMIT = limits.reply_frame_limit(limits.MAX_OUTPUT_CAP)


# --------------------------------------------------------------------------- client


async def _round_trip(path: str, request: object | None) -> object:
    """One connection: Hello, then (if given) one request and its final message."""
    stream = await trio.open_unix_socket(path)
    try:
        reader = FrameReader(stream)
        await stream.send_all(encode_frame(Hello(protocol_version=limits.PROTOCOL_VERSION)))
        hello = decode_broker_message(await reader.read_frame(REPLY_LIMIT))
        if request is None:
            return hello
        await stream.send_all(encode_frame(request))
        while True:
            msg = decode_broker_message(await reader.read_frame(REPLY_LIMIT))
            if isinstance(msg, FINAL) or type(msg).__name__ == "ErrorReply":
                return msg
    finally:
        await stream.aclose()


async def _time_many(n: int, call: Callable[[], Awaitable[object]], want: type) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        msg = await call()
        times.append(time.perf_counter() - t0)
        if not isinstance(msg, want):
            raise RuntimeError(f"expected {want.__name__}, got {msg!r}")
    return times


def measure(path: str, kind: str, n: int) -> list[float]:
    requests = {"hello": (None, BrokerHello), "access": (AccessQuery(), AccessReply)}
    request, want = requests[kind]
    return trio.run(_time_many, n, lambda: _round_trip(path, request), want)


# --------------------------------------------------------------------------- figures


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(name: str, times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return (
        f"{name:<42} n={len(ms):<4} p50={pct(ms, 0.5):7.3f} ms  p99={pct(ms, 0.99):7.3f} ms  "
        f"mean={statistics.fmean(ms):7.3f} ms  max={max(ms):7.3f} ms"
    )


# --------------------------------------------------------------------------- broker


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(workdir / "broker.sock")
    log = open(workdir / "broker.log", "wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "perf-mcp-broker"), "--socket", sock, "--log-level", "WARNING"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(sock):
            try:
                trio.run(_round_trip, sock, None)
                return proc, sock
            except OSError:
                pass
        time.sleep(0.05)
    stop_broker(proc)
    raise RuntimeError(f"broker did not start: {(workdir / 'broker.log').read_text()}")


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def as_user(sock: str, kind: str, n: int) -> list[float] | None:
    """Run this file's client mode as perfmcp-granted; None if the user is missing."""
    try:
        pw = pwd.getpwnam(GRANTED_USER)
    except KeyError:
        return None
    argv = [
        "setpriv",
        f"--reuid={pw.pw_uid}",
        f"--regid={pw.pw_gid}",
        "--init-groups",
        "--",
        str(VENV_BIN / "python"),
        str(Path(__file__).resolve()),
        "--client",
        sock,
        "--kind",
        kind,
        "--n",
        str(n),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL, timeout=600)
    if out.returncode != 0:
        print(f"  (client as {GRANTED_USER} failed: {out.stderr.strip()[-500:]})")
        return None
    return json.loads(out.stdout)


def jobs(sock: str, n_features: int, n_profiles: int) -> None:
    async def run() -> tuple[list[float], list[float]]:
        features = await _time_many(n_features, lambda: _round_trip(sock, ToolFeatures()), JobResult)
        overhead = []
        for _ in range(n_profiles):
            t0 = time.perf_counter()
            msg = await _round_trip(sock, CpuProfile(duration_s=1.0, frequency_hz=49))
            if not isinstance(msg, JobResult):
                raise RuntimeError(f"profile failed: {msg!r}")
            overhead.append(time.perf_counter() - t0 - 1.0)
        return features, overhead

    features, overhead = trio.run(run)
    print(line("ToolFeatures job (bpftrace --info)", features))
    print(line("CpuProfile 1 s: time beyond 1 s", overhead))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="round trips per measure")
    p.add_argument("--client", metavar="SOCKET", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="hello", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:  # client mode, run as another user by as_user()
        print(json.dumps(measure(args.client, args.kind, args.n)))
        return 0
    if os.geteuid() != 0:
        print("bench_broker: needs root to start a broker (sudo .venv/bin/python bench/bench_broker.py)")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="pmcp-bench-broker-", dir="/tmp"))
    workdir.chmod(0o755)
    proc, sock = start_broker(workdir)
    try:
        print(f"broker pid {proc.pid} on {sock}; {os.cpu_count()} CPUs; fresh connection per round trip")
        measure(sock, "hello", 20)  # warm-up
        print(line("hello round trip (root)", measure(sock, "hello", args.n)))
        print(line("AccessQuery round trip (root)", measure(sock, "access", args.n)))
        user_hello = as_user(sock, "hello", args.n)
        if user_hello is not None:
            print(line(f"hello round trip ({GRANTED_USER})", user_hello))
        user_access = as_user(sock, "access", max(args.n // 5, 10))
        if user_access is not None:
            print(line(f"AccessQuery via polkit ({GRANTED_USER})", user_access))
        jobs(sock, n_features=50, n_profiles=5)
    finally:
        stop_broker(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
