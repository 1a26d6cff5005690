"""Benchmark: perf_snapshot end to end through an MCP client, side by side with
linux-mcp-server 1.7.0 (PyPI) in the same run, and the background sampler's
CPU cost inside the perf-mcp server.

- perf-mcp: `perf-mcp` over stdio (the MCP SDK client of this venv), one
  session, --calls calls of perf_snapshot with its defaults (CPU split, load,
  run queue, memory, faults, per-device iostat rows, interfaces, TCP, PSI, over
  1/10/60 s windows), after a warm-up.
- linux-mcp-server 1.7.0, in its own venv (created here if missing, pinned),
  over stdio with the same client: get_cpu_information,
  get_memory_information and get_network_interfaces with host=localhost, the
  same number of calls each. perf_snapshot answers what those three answer
  together (and more), so the ratio is given against the sum of the three
  medians and against each one.
- Sampler cost: utime + stime of the perf-mcp server process (/proc/PID/stat)
  over --idle seconds with no calls, as % of one core.

As root, both servers run as an unprivileged user (perfmcp-denied if it
exists, else nobody) through setpriv, as a desktop client would start them.
It prints figures and asserts nothing. Run: .venv/bin/python bench/bench_snapshot.py
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parent.parent
PERF_MCP = REPO / ".venv" / "bin" / "perf-mcp"
LMCP_DIR = Path("/var/tmp/perf-mcp-bench")
LMCP_VENV = LMCP_DIR / "lmcp-venv"
LMCP_BIN = LMCP_VENV / "bin" / "linux-mcp-server"
LMCP_PIN = "linux-mcp-server==1.7.0"
LMCP_TOOLS = ("get_cpu_information", "get_memory_information", "get_network_interfaces")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def ensure_lmcp() -> None:
    if LMCP_BIN.exists():
        return
    LMCP_DIR.mkdir(parents=True, exist_ok=True)
    print(f"creating {LMCP_VENV} with {LMCP_PIN} ...", file=sys.stderr)
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(LMCP_VENV)], check=True)
    subprocess.run([str(LMCP_VENV / "bin" / "pip"), "install", "-q", LMCP_PIN], check=True)


def run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("perfmcp-denied", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SystemExit("running as root and no unprivileged user (perfmcp-denied, nobody) to run the servers as")


def server_params(argv: list[str], env: dict[str, str], user: pwd.struct_passwd | None) -> StdioServerParameters:
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", **env}
    if user is not None:
        argv = ["/usr/bin/setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *argv]
    return StdioServerParameters(command=argv[0], args=argv[1:], env=base, cwd="/")


def child_server_pid(marker: bytes) -> int | None:
    """The PID of our child process whose command line holds marker (setpriv execs in place)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == me and marker in cmdline:
            return int(entry)
    return None


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


@asynccontextmanager
async def session(params: StdioServerParameters, log: Any) -> AsyncIterator[Any]:
    async with Client(stdio_client(params, errlog=log), read_timeout_seconds=120) as client:
        yield client


async def time_calls(client: Any, tool: str, args: dict[str, Any], n: int) -> tuple[list[float], list[float]]:
    """(client round trips in ms, server duration_ms where the envelope gives it)."""
    rtts, server = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        result = await client.call_tool(tool, args)
        rtts.append((time.perf_counter() - t0) * 1000)
        if result.is_error:
            raise SystemExit(f"{tool} failed: {result.content[0].text if result.content else result}")
        sc = result.structured_content
        if isinstance(sc, dict) and "duration_ms" in sc:
            server.append(float(sc["duration_ms"]))
    return rtts, server


def line(label: str, values: list[float]) -> str:
    return (f"{label:<34} p50 {percentile(values, 0.5):8.2f} ms   p99 {percentile(values, 0.99):8.2f} ms   "
            f"mean {statistics.fmean(values):8.2f} ms   (n={len(values)})")


async def bench_perf_mcp(user: pwd.struct_passwd | None, calls: int, idle_s: float, log: Any) -> dict[str, Any]:
    sock = "/nonexistent/perf-mcp-bench.sock"  # these tools need no broker
    params = server_params([str(PERF_MCP), "--broker-socket", sock], {"HOME": "/"}, user)
    async with session(params, log) as client:
        pid = child_server_pid(b"perf-mcp")
        await client.call_tool("perf_snapshot", {})  # the first call waits for the sampler's second sample
        await trio.sleep(2.0)
        await time_calls(client, "perf_snapshot", {}, 5)  # warm-up
        rtts, server = await time_calls(client, "perf_snapshot", {}, calls)
        cost = None
        if pid is not None:
            await trio.sleep(1.0)
            t0, c0 = time.monotonic(), cpu_ticks(pid)
            await trio.sleep(idle_s)
            t1, c1 = time.monotonic(), cpu_ticks(pid)
            cost = (c1 - c0) / CLK_TCK / (t1 - t0) * 100
        result = await client.call_tool("perf_snapshot", {})
        size = len(str(result.structured_content))
    return {"rtt": rtts, "server": server, "idle_cpu_pct": cost, "pid": pid, "answer_bytes": size}


async def bench_lmcp(user: pwd.struct_passwd | None, calls: int, log: Any) -> dict[str, list[float]]:
    home = Path(tempfile.mkdtemp(prefix="lmcp-home-", dir="/tmp"))
    home.chmod(0o777)
    try:
        params = server_params([str(LMCP_BIN)], {"HOME": str(home), "LINUX_MCP_LOG_DIR": str(home / "log")}, user)
        out: dict[str, list[float]] = {}
        async with session(params, log) as client:
            for tool in LMCP_TOOLS:
                await time_calls(client, tool, {"host": "localhost"}, 3)  # warm-up
            for tool in LMCP_TOOLS:
                out[tool], _ = await time_calls(client, tool, {"host": "localhost"}, calls)
        return out
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def main_async(ns: argparse.Namespace) -> None:
    ensure_lmcp()
    user = run_as()
    with tempfile.TemporaryFile("w+") as log:
        ours = await bench_perf_mcp(user, ns.calls, ns.idle, log)
        theirs = await bench_lmcp(user, ns.calls, log)
    who = user.pw_name if user else pwd.getpwuid(os.getuid()).pw_name
    print(f"perf_snapshot vs linux-mcp-server 1.7.0, MCP over stdio, servers as {who}, {os.cpu_count()} CPUs, "
          f"load {Path('/proc/loadavg').read_text().split()[0]}")
    print(line("perf-mcp perf_snapshot (client)", ours["rtt"]))
    print(line("perf-mcp perf_snapshot (server)", ours["server"]))
    for tool, values in theirs.items():
        print(line(f"linux-mcp-server {tool}", values))
    ours_p50, ours_p99 = percentile(ours["rtt"], 0.5), percentile(ours["rtt"], 0.99)
    sum_p50 = sum(percentile(v, 0.5) for v in theirs.values())
    sum_p99 = sum(percentile(v, 0.99) for v in theirs.values())
    print(f"{'linux-mcp-server, the three together':<34} p50 {sum_p50:8.2f} ms   p99 {sum_p99:8.2f} ms")
    print(f"ratio (theirs / ours), the three together: p50 {sum_p50 / ours_p50:6.1f}x   p99 {sum_p99 / ours_p99:6.1f}x"
          "   (goal >= 10x)")
    for tool, values in theirs.items():
        print(f"ratio vs {tool:<28} p50 {percentile(values, 0.5) / ours_p50:6.1f}x   "
              f"p99 {percentile(values, 0.99) / ours_p99:6.1f}x")
    print(f"perf_snapshot answer size: {ours['answer_bytes']} bytes of structured content")
    if ours["idle_cpu_pct"] is None:
        print("sampler cost: the server process was not found")
    else:
        print(f"sampler cost: perf-mcp server (pid {ours['pid']}) used {ours['idle_cpu_pct']:.3f}% of one core "
              f"over {ns.idle:g} s idle (utime + stime, goal < 0.5%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100, help="calls per tool (default 100)")
    p.add_argument("--idle", type=float, default=30.0, help="seconds of idle for the sampler cost (default 30)")
    trio.run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
