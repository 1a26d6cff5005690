"""Benchmark: how much an agent has to read, and what an outputSchema costs a Python SDK 1.x client.

Prints, for this tree ("after") and for a reference commit ("before", default: the commit
before the compact schemas, in a `git worktree` under /tmp, its frontend run from there
with the same broker):
- tools/list: its size (compact JSON, as the client receives the tools) and per tool the
  inputSchema, outputSchema and description sizes;
- each served tool's answer size (compact JSON of structuredContent, and of data alone)
  on a quiet machine and under a known load (two CPU burners, an fd leaker, a disk writer
  with fsync, a spawner and a TCP client connecting to a closed loopback port, all as the
  granted test user, stopped by PID), calls as in tests/frontend/test_next_steps.py;
- the Python SDK 1.x client's time per perf_snapshot call (median of --calls after a
  warm-up; the SDK checks the outputSchema on every call) and how much of it is the
  schema check. SDK 1.x is installed (latest 1.x from PyPI) into its own venv under /tmp
  (--sdk1-venv), not into the project's venv.

Goals (issue 9): perf_snapshot via SDK 1.x under 30 ms; perf_snapshot and perf_use_check
answers under 4 KB on a quiet machine. Other users' loads on a shared machine are not
controlled: the "quiet" figures are as quiet as the machine was.

Run as root: .venv/bin/python bench/bench_sizes.py [--before REF] [--skip-before] [--calls N]
It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "frontend"))

import helpers  # noqa: E402
from test_next_steps import CALLS, WORKLOAD, _fill, socket_free_port  # noqa: E402

DEFAULT_BEFORE = "f0d856c^"  # the tree before compact schemas, summary first and next-call filtering
SDK1_SPEC = "mcp<2"
PYTHON = "/usr/bin/python3"

SDK1_SCRIPT = r"""
import asyncio, json, statistics, sys, time
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

async def main():
    spec = json.loads(sys.argv[1])
    params = StdioServerParameters(command=spec["argv"][0], args=spec["argv"][1:], env=spec["env"], cwd="/")
    out = {}
    async with stdio_client(params, errlog=open("/dev/null", "w")) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            await s.list_tools()
            for tool, args in spec["calls"]:
                calls, checks = [], []
                for i in range(spec["n"] + 2):
                    t0 = time.perf_counter()
                    res = await s.call_tool(tool, args)  # validates structuredContent against outputSchema
                    t1 = time.perf_counter()
                    if res.isError:
                        raise SystemExit(f"{tool}: {res.content[0].text}")
                    await s._validate_tool_result(tool, res)  # the schema check alone, timed
                    t2 = time.perf_counter()
                    if i >= 2:
                        calls.append((t1 - t0) * 1000)
                        checks.append((t2 - t1) * 1000)
                out[tool] = {"call_ms": statistics.median(calls), "check_ms": statistics.median(checks),
                             "server_ms": res.structuredContent.get("duration_ms")}
    print(json.dumps(out))

asyncio.run(main())
"""


def compact(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


# ---------------------------------------------------------------- trees and servers


@contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A read-only checkout of ref under /tmp that the test users can read."""
    base = Path(tempfile.mkdtemp(prefix="pmcp-bench-ref-", dir="/tmp"))
    base.chmod(0o755)
    path = base / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def frontend(tree: Path | None, socket_path: Path, user: helpers.UnixUser) -> tuple[list[str], dict[str, str]]:
    """argv and env of the frontend of `tree` (None: this tree) as `user`."""
    env = helpers.user_env(user)
    if tree is None:
        argv = [str(helpers.FRONTEND_BIN), "--broker-socket", str(socket_path)]
    else:
        # the reference's packages first on the path (the venv's editable finder comes after sys.path)
        env["PYTHONPATH"] = f"{tree / 'frontend'}:{tree / 'protocol'}"
        argv = [str(REPO / ".venv" / "bin" / "python"), "-m", "perf_mcp", "--broker-socket", str(socket_path)]
    return helpers.as_user_argv(user, argv), env


@asynccontextmanager
async def client_for(argv: list[str], env: dict[str, str]) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd="/")
    with open(os.devnull, "w") as log:
        async with Client(stdio_client(params, errlog=log), read_timeout_seconds=180) as client:
            yield client


# ---------------------------------------------------------------- load


@contextmanager
def load(shared_tmp: Path, user: helpers.UnixUser) -> Iterator[dict[str, int]]:
    script = shared_tmp / "workload.py"
    script.write_text(WORKLOAD)
    script.chmod(0o644)
    work = shared_tmp / "work"
    work.mkdir(exist_ok=True)
    work.chmod(0o1777)
    with socket_free_port() as port, ExitStack() as stack:
        pids: dict[str, int] = {}
        for mode, arg in (("leak", work), ("write", work), ("spawn", "-"), ("connect", port)):
            proc = helpers.spawn_as(user, [PYTHON, script, mode, str(arg), "900"], stdout=subprocess.PIPE,
                                    start_new_session=True)
            stack.callback(helpers.stop_process, proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            pids[f"pid_{mode}"] = proc.pid
        exe = helpers.build_busy_binary(shared_tmp)
        for i in range(2):
            busy = helpers.start_busy(exe, user=user, max_seconds=900)
            stack.callback(helpers.stop_process, busy.proc)
            pids.setdefault("pid_busy", busy.pid)
        time.sleep(2.0)  # let the sampler's windows see it
        yield pids


def idle_pids(shared_tmp: Path, user: helpers.UnixUser) -> tuple[dict[str, int], Any]:
    """A sleeping process of the user stands in for every pid argument on the quiet machine."""
    proc = helpers.spawn_as(user, ["/bin/sleep", "900"], start_new_session=True)
    return {k: proc.pid for k in ("pid_leak", "pid_write", "pid_spawn", "pid_connect", "pid_busy")}, proc


# ---------------------------------------------------------------- measuring


async def list_sizes(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    async with client_for(argv, env) as client:
        tools = (await client.list_tools()).tools
    dumped = [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in tools]
    return {"total": compact({"tools": dumped}),
            "tools": {t["name"]: {"input": compact(t.get("inputSchema", {})), "output": compact(t.get("outputSchema", {})),
                                  "description": len(t.get("description", "").encode())} for t in dumped}}


async def answer_sizes(argv: list[str], env: dict[str, str], pids: dict[str, int], only: set[str] | None
                       ) -> dict[str, tuple[int, int] | str]:
    out: dict[str, tuple[int, int] | str] = {}
    async with client_for(argv, env) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        await client.call_tool("perf_snapshot", {}) if "perf_snapshot" in names else None  # sampler warm-up
        for name in names:
            if only and name not in only:
                continue
            result = await client.call_tool(name, _fill(CALLS.get(name, {}), pids))
            sc = result.structured_content or {}
            if result.is_error:
                out[name] = f"error {sc.get('error', {}).get('code')}"
            else:
                out[name] = (compact(sc), compact(sc.get("data")))
    return out


def sdk1_python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating {venv} with {SDK1_SPEC} (PyPI) ...", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", SDK1_SPEC], check=True)
    return py


def sdk1_time(py: Path, argv: list[str], env: dict[str, str], n: int) -> dict[str, Any]:
    spec = {"argv": argv, "env": env, "n": n, "calls": [["perf_snapshot", {}], ["perf_info", {}]]}
    proc = subprocess.run([str(py), "-c", SDK1_SCRIPT, json.dumps(spec)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


async def measure(label: str, tree: Path | None, socket_path: Path, args: argparse.Namespace, shared_tmp: Path,
                  users: helpers.TestUsers, sdk1: Path) -> dict[str, Any]:
    argv, env = frontend(tree, socket_path, users.granted)
    res: dict[str, Any] = {"label": label, "lists": await list_sizes(argv, env)}
    res["sdk1"] = sdk1_time(sdk1, argv, env, args.calls)
    pids, sleeper = idle_pids(shared_tmp, users.granted)
    try:
        res["quiet"] = await answer_sizes(argv, env, pids, args.only)
    finally:
        helpers.stop_process(sleeper)
    if not args.no_load:
        with load(shared_tmp, users.granted) as pids:
            res["loaded"] = await answer_sizes(argv, env, pids, args.only)
    return res


# ---------------------------------------------------------------- report


def report(results: list[dict[str, Any]]) -> None:
    print("\n== tools/list (compact JSON bytes)")
    for r in results:
        print(f"  {r['label']:<8} {r['lists']['total']:>8,} bytes for {len(r['lists']['tools'])} tools")
    names = sorted(set().union(*(r["lists"]["tools"] for r in results)))
    head = "".join(f" | {r['label']:>6} in  out  desc" for r in results)
    print(f"  {'tool':<22}{head}")
    for n in names:
        cols = ""
        for r in results:
            t = r["lists"]["tools"].get(n)
            cols += (f" | {t['input']:>8} {t['output']:>6} {t['description']:>5}" if t else f" | {'-':>21}")
        print(f"  {n:<22}{cols}")
    print("\n== answers: structuredContent / data alone, compact JSON bytes")
    states = [s for s in ("quiet", "loaded") if any(s in r for r in results)]
    print(f"  {'tool':<22}" + "".join(f" | {r['label'] + ' ' + s:>20}" for s in states for r in results))
    answer_names = sorted(set().union(*(r.get(s, {}) for r in results for s in states)))
    for n in answer_names:
        cols = ""
        for s in states:
            for r in results:
                v = r.get(s, {}).get(n)
                cols += f" | {('%d / %d' % v) if isinstance(v, tuple) else (v or '-'):>20}"
        print(f"  {n:<22}{cols}")
    print("\n== Python SDK 1.x client, per call (median), outputSchema check included / alone")
    for r in results:
        s = r["sdk1"]
        if "error" in s:
            print(f"  {r['label']:<8} failed: {s['error']}")
            continue
        for tool, v in s.items():
            print(f"  {r['label']:<8} {tool:<14} call {v['call_ms']:7.1f} ms   schema check {v['check_ms']:7.1f} ms   "
                  f"server {v['server_ms']} ms")
    after = next((r for r in results if r["label"] == "after"), None)
    if after and "perf_snapshot" in after["sdk1"]:
        ms = after["sdk1"]["perf_snapshot"]["call_ms"]
        print(f"\n  goal: perf_snapshot via SDK 1.x < 30 ms: {ms:.1f} ms ({'met' if ms < 30 else 'NOT met'})")
    if after and "quiet" in after:
        for t in ("perf_snapshot", "perf_use_check"):
            v = after["quiet"].get(t)
            if isinstance(v, tuple):
                print(f"  goal: {t} answer < 4 KB on a quiet machine: {v[0]:,} bytes "
                      f"({'met' if v[0] < 4096 else 'NOT met'})")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="reference commit for the 'before' column")
    ap.add_argument("--skip-before", action="store_true", help="measure this tree only")
    ap.add_argument("--no-load", action="store_true", help="skip the loaded-machine answers")
    ap.add_argument("--calls", type=int, default=10, help="SDK 1.x calls per tool (after 2 warm-ups)")
    ap.add_argument("--only", nargs="*", help="answer sizes of these tools only")
    ap.add_argument("--sdk1-venv", type=Path, default=Path("/tmp/pmcp-bench-sdk1-venv"))
    args = ap.parse_args()
    args.only = set(args.only) if args.only else None
    if not helpers.is_root():
        raise SystemExit("run as root: the broker runs as root and the frontends as the test users")
    users = helpers.lookup_test_users()
    sdk1 = sdk1_python(args.sdk1_venv)
    shared_tmp = helpers.make_shared_tmpdir("pmcp-bench-")
    workdir = helpers.make_shared_tmpdir("pmcp-broker-")
    broker = helpers.start_broker(workdir)
    results: list[dict[str, Any]] = []
    try:
        if not args.skip_before:
            with worktree(args.before) as tree:
                print(f"measuring before ({args.before}) ...", file=sys.stderr)
                results.append(await measure("before", tree, broker.socket_path, args, shared_tmp, users, sdk1))
        print("measuring after (this tree) ...", file=sys.stderr)
        results.append(await measure("after", None, broker.socket_path, args, shared_tmp, users, sdk1))
    finally:
        helpers.stop_broker(broker)
        helpers.remove_tree(workdir)
        helpers.remove_tree(shared_tmp)
    report(results)


if __name__ == "__main__":
    trio.run(main)
