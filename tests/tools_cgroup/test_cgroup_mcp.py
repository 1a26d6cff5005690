"""perf_cgroup_summary through the real MCP client (frontend as perfmcp-denied,
no broker): schema, another user's process by pid, the root cgroup by path,
and typed errors for bad parameters with the server still serving.

Any cgroup layout (v1, hybrid, v2-only): the expected version, hierarchies and
directories are derived from this host's mounts (helpers.cgroup_host, which
reads /proc/self/mountinfo itself), never hard-coded."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import helpers
from helpers import envelope  # noqa: F401  (re-exported)

pytestmark = [pytest.mark.root, pytest.mark.cgroup_any()]



def dead_pid() -> int:
    proc = subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL)
    proc.wait()
    assert not Path(f"/proc/{proc.pid}").exists()
    return proc.pid


async def test_schema_by_pid_and_by_path(test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "perf_cgroup_summary")
        props = tool.input_schema["properties"]
        assert set(props) == {"pid", "cgroup_path", "children", "top_n"}
        assert tool.annotations is not None and tool.annotations.read_only_hint is True

        # root's process (this test), read by perfmcp-denied: /proc/PID/cgroup and cgroupfs are world-readable
        result = await client.call_tool("perf_cgroup_summary", {"pid": os.getpid()})
        env = envelope(result)
        assert result.is_error is False, env
        data = env["data"]
        host = helpers.cgroup_host()
        assert data["pid"] == os.getpid() and data["cgroup_version"] == host.version, host.describe()
        mine = {line.split(":", 2)[1]: line.split(":", 2)[2]
                for line in Path(f"/proc/{os.getpid()}/cgroup").read_text().splitlines()}
        # memory's hierarchy: its v1 mount, or the v2 cgroup (the "" line) on a v2-only host
        version, mount, path = (("v1", host.v1["memory"], mine["memory"]) if "memory" in host.v1
                                else ("v2", host.v2_mount, mine[""]))
        mem = next(h for h in data["hierarchies"] if h["version"] == version
                   and (h["controllers"] == ["memory"] if version == "v1" else True))
        assert mem["cgroup_path"] == path
        assert mem["directory"] == mount + ("" if path == "/" else path)
        assert data["cpu"] is not None and data["memory"] is not None
        if host.v2_mount is not None:  # PSI is read from the v2 cgroup of this process
            assert data["psi_cgroup"] == mine[""]
        assert data["summary"] == result.content[0].text.splitlines()[0]
        assert data["summary"].startswith(f"cgroup summary of pid {os.getpid()}")
        jsonschema.validate(env, tool.output_schema)

        root = envelope(await client.call_tool("perf_cgroup_summary", {"cgroup_path": "/"}))["data"]
        assert root["target"] == "cgroup /" and "not_found_in" not in root  # found in every hierarchy
        expected = ({"v1"} if host.v1 else set()) | ({"v2"} if host.v2_mount else set())
        assert {h["version"] for h in root["hierarchies"]} == expected
        if host.v2_mount is not None and Path("/proc/pressure").is_dir():
            assert set(root["psi"]) == {"cpu", "memory", "io"}  # the v2 root has PSI even without controllers


async def test_bad_params_are_typed_errors_and_the_server_keeps_serving(
    test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    hostile: list[tuple[dict[str, Any], str]] = [
        ({"top_n": 0}, "INVALID_PARAMS"),
        ({"top_n": 51}, "INVALID_PARAMS"),
        ({"pid": 1, "children": True}, "INVALID_PARAMS"),
        ({"cgroup_path": "/../x", "children": True}, "INVALID_PARAMS"),
        ({"cgroup_path": "/no-such-cgroup-pmcp", "children": True}, "CGROUP_NOT_FOUND"),
        ({"pid": 1, "cgroup_path": "/"}, "INVALID_PARAMS"),
        ({"pid": 0}, "INVALID_PARAMS"),
        ({"pid": -1}, "INVALID_PARAMS"),
        ({"pid": 2**31}, "INVALID_PARAMS"),
        ({"pid": 4194305}, "INVALID_PARAMS"),
        ({"pid": "1; id"}, "INVALID_PARAMS"),
        ({"cgroup_path": ""}, "INVALID_PARAMS"),
        ({"cgroup_path": "../../etc"}, "INVALID_PARAMS"),
        ({"cgroup_path": "/system.slice/../../../etc"}, "INVALID_PARAMS"),
        ({"cgroup_path": "/a\x00b"}, "INVALID_PARAMS"),
        ({"cgroup_path": "x" * 5000}, "INVALID_PARAMS"),
        ({"cgroup_path": ["/"]}, "INVALID_PARAMS"),
        ({"pid": dead_pid()}, "PID_NOT_FOUND"),
        ({"cgroup_path": "/no-such-cgroup-pmcp"}, "CGROUP_NOT_FOUND"),
        ({"cgroup_path": "/;id"}, "CGROUP_NOT_FOUND"),
        ({"cgroup_path": "$(id)}"}, "CGROUP_NOT_FOUND"),
        ({"cgroup_path": "/etc/passwd"}, "CGROUP_NOT_FOUND"),
    ]
    async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
        for args, code in hostile:
            result = await client.call_tool("perf_cgroup_summary", args)
            env = envelope(result)
            assert result.is_error is True and env["error"]["code"] == code, (args, env)
            assert env["error"]["suggestion"], env
        ok = await client.call_tool("perf_cgroup_summary", {"pid": 1})
        assert ok.is_error is False
    print(f"\nhostile parameter sets tried: {len(hostile)}, all typed errors; server kept serving")
