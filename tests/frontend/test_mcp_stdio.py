"""The real frontend over stdio, as a non-root user, through the real MCP SDK client; no broker.

What a client sees: tool list with schemas and annotations, perf_info without a broker
(answers, with a warning), typed errors for bad input, and a server that keeps serving.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

import helpers
from fe_util import envelope

pytestmark = pytest.mark.root


async def test_tools_list_has_schemas_and_annotations(test_users: helpers.TestUsers, no_broker_socket: Path) -> None:
    async with helpers.mcp_client(test_users.granted, no_broker_socket) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    # Exactly the tools that exist: a tool module that fails to import is skipped by the
    # server (logged), and this is where that shows.
    assert set(tools) == {
        "perf_info", "perf_cpu_profile", "perf_snapshot", "perf_use_check", "perf_io_latency",
        "perf_net_health", "perf_cgroup_summary", "perf_fd_trace",
        "perf_thread_profile", "perf_offcpu_profile", "perf_runq_latency", "perf_syscall_count",
        "perf_exec_trace", "perf_bio_latency", "perf_io_layers", "perf_file_trace", "perf_vfs_latency",
        "perf_tcp_trace", "perf_dns_latency", "perf_triage",
    }
    assert len(tools) == 20
    for tool in tools.values():
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert {"success", "tool", "data", "error", "warnings"} <= set(tool.output_schema["properties"])
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is True and tool.annotations.open_world_hint is False
        assert tool.annotations.title and tool.title and tool.description
    props = tools["perf_cpu_profile"].input_schema["properties"]
    assert set(props) == {"duration_s", "sample_rate_hz", "pid", "include_kernel", "output_format", "top_n"}
    assert (props["duration_s"]["minimum"], props["duration_s"]["maximum"], props["duration_s"]["default"]) == (1, 60, 5)


async def test_perf_info_without_broker_answers_with_a_warning(
    test_users: helpers.TestUsers, no_broker_socket: Path
) -> None:
    async with helpers.mcp_client(test_users.granted, no_broker_socket) as client:
        result = await client.call_tool("perf_info", {})  # the SDK validates it against outputSchema
    env = envelope(result)
    assert result.is_error is False and env["success"] is True
    assert env["tool"] == "perf_info" and env["host"] == os.uname().nodename
    assert any("broker unavailable" in w and "perf-mcp-broker" in w for w in env["warnings"]), env["warnings"]
    data = env["data"]
    assert data["broker"]["available"] is False and str(no_broker_socket) == data["broker"]["socket"]
    assert data["capabilities"]["cpu_profile"] is False and data["capabilities"]["procfs_tools"] is True
    assert data["kernel"]["release"] == os.uname().release
    assert data["cpu"]["logical_cpus"] == os.cpu_count()
    assert data["memory"]["total_bytes"] > 0
    assert data["features"]["perf_event_paranoid"] == int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    assert data["features"]["btf"] == Path("/sys/kernel/btf/vmlinux").exists()
    text = result.content[0].text
    assert text.splitlines()[0].startswith(data["kernel"]["os"] or "Linux")
    assert "warning: broker unavailable" in text


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"duration_s": 0}, "duration_s"),
    ({"duration_s": 61}, "duration_s"),
    ({"duration_s": -1}, "duration_s"),
    ({"sample_rate_hz": 0}, "sample_rate_hz"),
    ({"sample_rate_hz": 1000}, "sample_rate_hz"),
    ({"pid": 0}, "pid"),
    ({"pid": -1}, "pid"),
    ({"pid": 2**31}, "pid"),
    ({"pid": 4194305}, "pid"),
    ({"pid": "1; reboot"}, "pid"),
    ({"pid": "$(id)"}, "pid"),
    ({"output_format": "summary}"}, "output_format"),
    ({"output_format": "../../etc/passwd"}, "output_format"),
    ({"output_format": "a\x00b"}, "output_format"),
    ({"include_kernel": "yes please"}, "include_kernel"),
    ({"unexpected": 1}, "unexpected"),
]


async def test_bad_params_are_typed_errors_and_the_server_keeps_serving(
    test_users: helpers.TestUsers, no_broker_socket: Path
) -> None:
    async with helpers.mcp_client(test_users.granted, no_broker_socket) as client:
        for args, field in HOSTILE:
            result = await client.call_tool("perf_cpu_profile", args)
            env = envelope(result)
            assert result.is_error is True, args
            assert env["success"] is False and env["error"]["code"] == "INVALID_PARAMS", (args, env)
            assert field in env["error"]["message"], (args, env["error"])
            assert env["error"]["suggestion"]
            assert result.content[0].text.startswith("perf_cpu_profile failed: INVALID_PARAMS")
        # still serving
        after = await client.call_tool("perf_info", {})
        assert after.is_error is False
    print(f"hostile parameter sets tried: {len(HOSTILE)}, all answered INVALID_PARAMS")


async def test_unknown_tool_and_missing_pid_and_no_broker(
    test_users: helpers.TestUsers, no_broker_socket: Path
) -> None:
    async with helpers.mcp_client(test_users.granted, no_broker_socket) as client:
        nope = await client.call_tool("perf_nope", {})
        assert nope.is_error and envelope(nope)["error"]["code"] == "TOOL_NOT_FOUND"
        assert "perf_info" in envelope(nope)["error"]["message"]
        # a pid that existed a moment ago and is gone (reaped) now
        exited = helpers.spawn_as(test_users.granted, ["/bin/true"])
        exited.wait()
        assert not Path(f"/proc/{exited.pid}").exists()
        gone = await client.call_tool("perf_cpu_profile", {"pid": exited.pid, "duration_s": 1})
        assert envelope(gone)["error"]["code"] == "PID_NOT_FOUND", envelope(gone)
        busy = await client.call_tool("perf_cpu_profile", {"duration_s": 1})
        err = envelope(busy)["error"]
        assert busy.is_error and err["code"] == "BROKER_UNAVAILABLE", err
        assert str(no_broker_socket) in err["message"] and "perf-mcp-broker" in err["suggestion"]
        assert err["recoverable"] is True
        assert (await client.list_resources()).resources == []
        with pytest.raises(MCPError):
            await client.read_resource("perf-mcp://artifacts/nope/flamegraph.svg")
        assert (await client.call_tool("perf_info", {})).is_error is False
