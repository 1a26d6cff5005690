"""perf_net_health through the real MCP client, the frontend running as
perfmcp-denied (no broker: the tool needs none): schema, the host's answer,
one interface, no TCP details, typed errors for bad parameters with the
server still serving, and the owner of a socket seen through its fd table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import helpers
from net_util import envelope, in_ns, mcp_client_in_ns, ns_pair, ok_data

pytestmark = pytest.mark.root

HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"interface": ""}, "INVALID_PARAMS"),
    ({"interface": "x" * 16}, "INVALID_PARAMS"),
    ({"interface": 5}, "INVALID_PARAMS"),
    ({"interface": ["lo"]}, "INVALID_PARAMS"),
    ({"include_tcp_details": "maybe"}, "INVALID_PARAMS"),
    ({"bogus": 1}, "INVALID_PARAMS"),
    ({"interface": "nosuch0"}, "DEVICE_NOT_FOUND"),
    ({"interface": "../../etc"}, "DEVICE_NOT_FOUND"),
    ({"interface": "lo;id"}, "DEVICE_NOT_FOUND"),
    ({"interface": "$(id)"}, "DEVICE_NOT_FOUND"),
    ({"interface": "lo\x00"}, "DEVICE_NOT_FOUND"),
]


async def test_schema_and_host_answer(test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        tool = tools["perf_net_health"]
        props = tool.input_schema["properties"]
        assert set(props) == {"interface", "include_tcp_details"}
        assert props["include_tcp_details"]["default"] is True
        assert tool.annotations is not None and tool.annotations.read_only_hint is True
        assert tool.output_schema is not None and "data" in tool.output_schema["properties"]

        result = await client.call_tool("perf_net_health", {}, progress_callback=on_progress)
        env = envelope(result)
        data = ok_data(result)
        assert env["tool"] == "perf_net_health" and env["host"] and env["duration_ms"] >= 1000
        assert data["namespace"] == os.readlink("/proc/self/ns/net")
        names = {i["name"] for i in data["interfaces"]}
        assert "lo" in names and names <= set(os.listdir("/sys/class/net"))
        assert data["tcp"] is not None and data["softnet"] is not None and data["sockets"] is not None
        assert 0.9 <= data["interval_s"] <= 2.0
        assert "inet_diag" in data["method"]
        assert result.content[0].text.startswith("Network health (")
        assert [v for v, _, _ in progress] == [0.0, 1.0]
        jsonschema.validate(env, tool.output_schema)  # the envelope matches the declared outputSchema
        jsonschema.validate(envelope(await client.call_tool("perf_net_health", {"interface": "nosuch0"})),
                            tool.output_schema)

        lo = ok_data(await client.call_tool("perf_net_health", {"interface": "lo", "include_tcp_details": False}))
        assert [i["name"] for i in lo["interfaces"]] == ["lo"] and lo["sockets"] is None
        assert "inet_diag" not in lo["method"]


async def test_bad_params_are_typed_errors_and_the_server_keeps_serving(
    test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    links = sorted(os.listdir("/sys/class/net"))
    async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
        for args, code in HOSTILE:
            result = await client.call_tool("perf_net_health", args)
            env = envelope(result)
            assert result.is_error is True and env["error"]["code"] == code, (args, env)
            assert env["error"]["suggestion"]
            if code == "DEVICE_NOT_FOUND":
                # the known names are offered, the bad name never reached a path
                assert all(name in env["error"]["suggestion"] for name in links), env["error"]
        assert (await client.call_tool("perf_net_health", {"include_tcp_details": False})).is_error is False
    print(f"\nhostile parameter sets tried: {len(HOSTILE)}, all typed errors; server kept serving")


OWNER_SCRIPT = """
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname()); conn, _ = srv.accept()
for _ in range(20):
    cli.sendall(b"x" * 1000); conn.recv(65536)
print("ready", flush=True)
time.sleep(60)
"""


async def test_sockets_of_the_users_own_process_name_their_pid(
    test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    """In a fresh namespace, a process of the frontend's user holds a loopback
    connection: the worst-by-RTT list names its pid; the unknown interface
    error lists this namespace's interfaces, not the host's."""
    script = shared_tmp / "owner.py"
    script.write_text(OWNER_SCRIPT)
    script.chmod(0o644)
    with ns_pair() as pair:
        import subprocess

        proc = subprocess.Popen(in_ns(pair.sender, helpers.as_user_argv(test_users.denied, ["/usr/bin/python3",
                                                                                            str(script)])),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            async with mcp_client_in_ns(pair.sender, test_users.denied, shared_tmp / "no-broker.sock") as client:
                data = ok_data(await client.call_tool("perf_net_health", {"interface": "lo"}))
                missing = envelope(await client.call_tool("perf_net_health", {"interface": "eth0"}))
        finally:
            helpers.stop_process(proc)
    rtt = data["sockets"]["worst_by_rtt"]
    assert len(rtt) == 2 and {s["pid"] for s in rtt} == {proc.pid}
    assert all(s["comm"] == "python3" and s["uid"] == test_users.denied.uid for s in rtt)
    assert data["sockets"]["by_state"] == {"ESTABLISHED": 2, "LISTEN": 1}
    assert missing["error"]["code"] == "DEVICE_NOT_FOUND"
    assert "lo, pmcp-s" in missing["error"]["suggestion"] and "eth0" not in missing["error"]["suggestion"]
