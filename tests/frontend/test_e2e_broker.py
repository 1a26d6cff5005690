"""perf_cpu_profile and perf_info end to end: real broker as root, real frontend as a test user,
real MCP client, real perf. Skipped (with the reason) when the broker cannot start yet."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp.shared.exceptions import MCPError

import helpers
from fe_util import envelope
from perf_mcp.profile.perf_script import parse_folded

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def broker(broker_factory: Any) -> helpers.RunningBroker:
    """perf_cpu_profile's perf rung (bpftrace, its first rung for a pid, is disabled): these
    tests are about perf record and perf script; tests/tools_cpu runs every rung."""
    return broker_factory("--disable", "bpftrace")


def perf_under(pid: int) -> list[int]:
    """perf processes among the descendants of pid (the broker's jobs)."""
    out = []
    for p in helpers.descendants(pid):
        st = helpers.read_proc_stat(p)
        if st is not None and st.comm == "perf":
            out.append(p)
    return out


async def test_profile_busy_process_as_granted_user(
    broker: helpers.RunningBroker, test_users: helpers.TestUsers, busy_process_factory: Any
) -> None:
    busy = busy_process_factory(test_users.granted)
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        result = await client.call_tool("perf_cpu_profile", {"pid": busy.pid, "duration_s": 3},
                                        progress_callback=on_progress)
        env = envelope(result)
        assert result.is_error is False, env
        data = env["data"]
        assert data["pid"] == busy.pid and data["target"] == f"pid {busy.pid} ({busy.comm})"
        assert "cpu-clock" in data["method"]
        assert data["samples"] > 50  # 3 s at 99 Hz of a CPU-bound loop, on a shared machine
        assert data["top_functions"][0]["function"] == busy.leaf_symbol
        assert data["top_functions"][0]["self_pct"] > 80
        total = {f["function"]: f for f in data["top_functions"]}
        # the frame under the leaf is main's noreturn call (perf may name it _fini): total covers self
        assert total[busy.leaf_symbol]["total_pct"] >= data["top_functions"][0]["self_pct"]
        assert total["__libc_start_call_main"]["total_pct"] > 90
        stack = data["hottest_stacks"][0]["stack"]
        assert stack[0] == busy.comm and stack[1] == "__libc_start_call_main" and stack[-1] == busy.leaf_symbol
        assert any(f["id"] == "cpu_profile.hot_function" and f["severity"] == "warning" for f in data["findings"])
        assert data["argv"][0][1:3] == ["record", "-e"] and str(busy.pid) in data["argv"][0]
        assert data.get("folded") is None
        # progress went up, ended at its total
        values = [v for v, _, _ in progress]
        assert len(values) >= 3 and values == sorted(values) and values[-1] == progress[-1][1]

        # the artifacts are resources, readable, and agree with the data
        arts = {a["name"]: a for a in data["artifacts"]}
        assert set(arts) == {"flamegraph.svg", "stacks.folded", "perf-script.txt"}
        listed = {r.uri for r in (await client.list_resources()).resources}
        assert {a["uri"] for a in arts.values()} <= listed
        svg = (await client.read_resource(arts["flamegraph.svg"]["uri"])).contents[0]
        assert svg.mime_type == "image/svg+xml" and busy.leaf_symbol in svg.text and svg.text.startswith("<?xml")
        folded = parse_folded((await client.read_resource(arts["stacks.folded"]["uri"])).contents[0].text)
        assert sum(folded.values()) == data["samples"]
        links = [c for c in result.content if c.type == "resource_link"]
        assert {c.uri for c in links} == {a["uri"] for a in arts.values()}


async def test_collapsed_output_and_user_only(
    broker: helpers.RunningBroker, test_users: helpers.TestUsers, busy_process_factory: Any
) -> None:
    busy = busy_process_factory(test_users.granted)
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        result = await client.call_tool("perf_cpu_profile", {"pid": busy.pid, "duration_s": 2, "sample_rate_hz": 199,
                                                             "include_kernel": False, "output_format": "collapsed"})
    data = envelope(result)["data"]
    assert result.is_error is False
    assert "cpu-clock:u" in data["argv"][0]
    folded = parse_folded(data["folded"])
    assert sum(folded.values()) == data["samples"] > 0
    assert any(s.startswith(busy.comm) and s.endswith(f";{busy.leaf_symbol}") for s in folded)
    assert data["kernel_pct"] == 0.0


async def test_perf_info_with_broker(broker_factory: Any, test_users: helpers.TestUsers) -> None:
    broker = broker_factory()  # every program enabled: the features come from bpftrace --info
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        granted = envelope(await client.call_tool("perf_info", {}))
    async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
        denied = envelope(await client.call_tool("perf_info", {}))
    g, d = granted["data"], denied["data"]
    assert granted["warnings"] == [] and g["broker"]["available"] is True
    assert "profile" in g["broker"]["granted"] and g["capabilities"]["cpu_profile"] is True
    assert g["broker"]["uid_seen"] == test_users.granted.uid
    assert "perf" in g["broker"]["programs"] and "cpu_profile" in g["broker"]["job_kinds"]
    assert "profile" in d["broker"]["denied"] and d["capabilities"]["cpu_profile"] is False
    # kprobes: the broker's view of tracefs decides (bpftrace claims kprobe support regardless)
    kprobe_events = Path("/sys/kernel/tracing/kprobe_events").exists()
    assert g["features"]["kprobes"] is kprobe_events
    assert g["features"]["sources"]["kprobes"].startswith("broker")
    assert g["features"]["fentry"] is not None  # from bpftrace --info
    assert g["features"]["bpftrace_probe_types"].get("tracepoint") is True


async def test_denied_user_gets_permission_denied(
    broker: helpers.RunningBroker, test_users: helpers.TestUsers, busy_process_factory: Any
) -> None:
    busy = busy_process_factory(test_users.denied)
    async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
        result = await client.call_tool("perf_cpu_profile", {"pid": busy.pid, "duration_s": 1})
    err = envelope(result)["error"]
    assert result.is_error and err["code"] == "PERMISSION_DENIED", err
    assert "perf-mcp" in err["suggestion"] and "usermod" in err["suggestion"]


async def test_cancel_mid_profile_stops_perf(
    broker: helpers.RunningBroker, test_users: helpers.TestUsers, busy_process_factory: Any
) -> None:
    busy = busy_process_factory(test_users.granted)
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        # fail_after, not move_on_after: a guard that fires must fail the test, not skip
        # the checks inside it and let the ones below pass on a perf that never ran.
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.call_tool, "perf_cpu_profile", {"pid": busy.pid, "duration_s": 40})
                assert await helpers.await_until(lambda: bool(perf_under(broker.pid)), 20), "perf never started"
                nursery.cancel_scope.cancel()  # the SDK sends notifications/cancelled
        cancelled_at = time.monotonic()
        gone = await helpers.await_until(lambda: not perf_under(broker.pid), 5)
        elapsed = time.monotonic() - cancelled_at
        assert gone, f"perf still running 5 s after the cancel: {perf_under(broker.pid)}"
        # the session is still usable
        assert (await client.call_tool("perf_info", {})).is_error is False
    print(f"perf gone {elapsed:.2f} s after the MCP cancel")


async def test_frontend_killed_mid_profile_stops_perf(
    broker: helpers.RunningBroker, test_users: helpers.TestUsers, busy_process_factory: Any
) -> None:
    busy = busy_process_factory(test_users.granted)
    frontends_before = set(_frontends())
    call: dict[str, Any] = {}

    async def doomed_call(client: Any) -> None:
        # Recorded, not asserted here: an assertion in a task cancelled before the call
        # ends would never run.
        try:
            call["result"] = await client.call_tool("perf_cpu_profile", {"pid": busy.pid, "duration_s": 40})
        except MCPError as exc:  # the server is killed under it
            call["error"] = exc

    with trio.fail_after(90):  # a guard: the checks below run every time or the test fails
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(doomed_call, client)
                assert await helpers.await_until(lambda: bool(perf_under(broker.pid)), 20), "perf never started"
                mine = set(_frontends()) - frontends_before
                assert len(mine) == 1, mine
                os.kill(mine.pop(), signal.SIGKILL)
                killed_at = time.monotonic()
                gone = await helpers.await_until(lambda: not perf_under(broker.pid), 5)
                elapsed = time.monotonic() - killed_at
                # The call ends on its own: the frontend's stdio closed under it.
                ended = await helpers.await_until(lambda: bool(call), 30)
    assert gone, f"perf still running 5 s after the frontend was killed: {perf_under(broker.pid)}"
    assert ended, "call_tool did not end after its server was killed"
    assert "error" in call and "result" not in call, call
    print(f"perf gone {elapsed:.2f} s after the frontend was killed; the call ended with {call['error']!r}")


def _frontends() -> list[int]:
    """perf-mcp frontend processes started by this test process."""
    out = []
    for p in helpers.descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"/perf-mcp") for c in cmd) and b"setpriv" not in cmd[0]:
            out.append(p)
    return out


async def test_second_profile_of_the_same_user_is_busy(
    broker: helpers.RunningBroker, test_users: helpers.TestUsers, busy_process_factory: Any
) -> None:
    busy = busy_process_factory(test_users.granted)
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as first, \
            helpers.mcp_client(test_users.granted, broker.socket_path) as second:
        async with trio.open_nursery() as nursery:
            results: dict[str, Any] = {}

            async def long() -> None:
                results["first"] = await first.call_tool("perf_cpu_profile", {"pid": busy.pid, "duration_s": 4})

            nursery.start_soon(long)
            assert await helpers.await_until(lambda: bool(perf_under(broker.pid)), 20)
            results["second"] = await second.call_tool("perf_cpu_profile", {"pid": busy.pid, "duration_s": 1})
    assert envelope(results["second"])["error"]["code"] == "PROFILER_BUSY"
    assert results["first"].is_error is False


async def test_output_cap_truncates_with_a_warning(
    broker_factory: Any, test_users: helpers.TestUsers, busy_process_factory: Any
) -> None:
    small = broker_factory("--disable", "bpftrace", output_cap=16 * 1024)
    busy = busy_process_factory(test_users.granted)
    async with helpers.mcp_client(test_users.granted, small.socket_path) as client:
        result = await client.call_tool("perf_cpu_profile", {"pid": busy.pid, "duration_s": 3, "sample_rate_hz": 499})
    env = envelope(result)
    assert result.is_error is False, env
    assert env["truncated"] is True
    assert any("cut at the broker's cap" in w for w in env["warnings"]), env["warnings"]
    assert 0 < env["data"]["samples"] < 3 * 499
    assert env["data"]["top_functions"][0]["function"] == busy.leaf_symbol
