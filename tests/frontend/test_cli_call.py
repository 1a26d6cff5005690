"""`perf-mcp call` and `perf-mcp --version`, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import helpers
from perf_mcp.callclient import parse_assignments, server_env


def run(argv: list[str], user: str | None, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = helpers.as_user_argv(user, argv) if user else argv
    full_env = helpers.user_env(user, env) if user else {**os.environ, **(env or {})}
    return subprocess.run(cmd, env=full_env, cwd="/", capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_parse_assignments() -> None:
    assert parse_assignments(["duration_s=5", "include_kernel=false", "output_format=collapsed", "x=1.5",
                              "s=a=b", "n=null"]) == {
        "duration_s": 5, "include_kernel": False, "output_format": "collapsed", "x": 1.5, "s": "a=b", "n": None}
    with pytest.raises(ValueError):
        parse_assignments(["novalue"])


def test_server_env_passes_only_perf_mcp_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERF_MCP_BROKER_SOCKET", "/x.sock")
    monkeypatch.setenv("SECRET_TOKEN", "nope")
    env = server_env({})
    assert env["PERF_MCP_BROKER_SOCKET"] == "/x.sock" and "SECRET_TOKEN" not in env
    assert server_env({"PERF_MCP_BROKER_SOCKET": "/y"})["PERF_MCP_BROKER_SOCKET"] == "/y"


def test_version() -> None:
    out = run([str(helpers.FRONTEND_BIN), "--version"], None)
    assert out.returncode == 0 and out.stdout.startswith("perf-mcp ")


@pytest.mark.root
def test_call_as_user_without_broker(test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    sock = str(shared_tmp / "none.sock")
    user = test_users.granted.name
    ok = run([str(helpers.FRONTEND_BIN), "call", "perf_info", "--json"], user, {"PERF_MCP_BROKER_SOCKET": sock})
    assert ok.returncode == 0, ok.stderr
    env = json.loads(ok.stdout)
    assert env["success"] is True and env["data"]["broker"]["socket"] == sock  # the env setting reached the server
    text = run([str(helpers.FRONTEND_BIN), "call", "perf_info"], user, {"PERF_MCP_BROKER_SOCKET": sock})
    assert text.returncode == 0 and "kernel" in text.stdout.splitlines()[0]
    bad = run([str(helpers.FRONTEND_BIN), "call", "perf_cpu_profile", "duration_s=0", "--json"], user,
              {"PERF_MCP_BROKER_SOCKET": sock})
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == "INVALID_PARAMS"
    nope = run([str(helpers.FRONTEND_BIN), "call", "perf_nope", f"--broker-socket={sock}"], user)
    assert nope.returncode == 1 and "TOOL_NOT_FOUND" in nope.stdout
    usage = run([str(helpers.FRONTEND_BIN), "call", "perf_info", "oops"], user)
    assert usage.returncode == 2 and "key=value" in usage.stderr


@pytest.mark.root
def test_sudo_mode_separates_privileges(test_users: helpers.TestUsers) -> None:
    """Started as root, perf-mcp forks a root broker child and serves as --user."""
    out = run([str(helpers.FRONTEND_BIN), "call", "perf_info", "--json", "--user", test_users.granted.name], None,
              {"PERF_MCP_BROKER_SOCKET": "/nonexistent/should-not-be-used.sock"})
    assert out.returncode == 0, out.stderr
    broker = json.loads(out.stdout)["data"]["broker"]
    assert broker["available"] is True and broker["uid_seen"] == test_users.granted.uid
    assert "profile" in broker["granted"]


@pytest.mark.root
@pytest.mark.slow
def test_call_profile_through_the_broker(broker: helpers.RunningBroker, test_users: helpers.TestUsers,
                                         busy_process_factory) -> None:  # type: ignore[no-untyped-def]
    busy = busy_process_factory(test_users.granted)
    out = run([str(helpers.FRONTEND_BIN), "call", "perf_cpu_profile", f"pid={busy.pid}", "duration_s=2",
               f"--broker-socket={broker.socket_path}"], test_users.granted.name)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"CPU profile of pid {busy.pid} ({busy.comm})")
    assert busy.leaf_symbol in out.stdout and "flamegraph.svg" in out.stdout
    progress = [ln for ln in out.stderr.splitlines() if ln.lstrip().startswith("...")]
    assert len(progress) >= 2 and progress[-1].rstrip().endswith("done"), out.stderr  # progress lines
