"""perf_fd_trace through the real MCP client with the real frontend as a test
user: a leaking process of the same user (read locally), a leaking process of
ANOTHER user (local read gets EACCES; the real root broker reads it, polkit
decides), the denied and no-broker answers, a quiet control, bad parameters,
a process that exits mid-trace, and cancellation."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

import helpers
from helpers import envelope, ok_data  # noqa: F401  (re-exported)
from fd_util import leaker, steady

pytestmark = [pytest.mark.root, pytest.mark.slow]

LEAK_RATE = 10.0  # files opened per second by the leaker




def check_leak(data: dict[str, Any], pid: int, user: helpers.UnixUser) -> dict[str, Any]:
    assert data["pid"] == pid and data["comm"] == "python3"
    assert data["verdict"] == "leak" and data["verdict_confidence"] >= 0.7, (data["verdict"], data["verdict_reason"])
    assert [s["t_s"] for s in data["samples"]] == pytest.approx([0, 2, 4, 6], abs=0.5)
    totals = [s["total"] for s in data["samples"]]
    assert totals == sorted(totals) and totals[-1] - totals[0] >= 40
    g = data["growth"]
    assert 0.6 * LEAK_RATE <= g["slope_per_s"] <= 1.1 * LEAK_RATE and g["r2"] > 0.95
    assert set(g["by_type_delta"]) == {"file"}
    assert data["limits"]["soft"] and data["time_to_soft_limit_s"] > 0
    leak = next(f for f in data["findings"] if f["id"] == "process.fd_leak")
    assert leak["severity"] in ("warning", "critical") and leak["resource"] == "process"
    assert leak["evidence"][0]["sample"].startswith("every 2 s: ")
    top = data["new_fds"][0]
    assert top["type"] == "file" and top["where"].endswith(f"/fds/leak-{user.name}") and top["count"] >= 40
    return data


async def test_leak_of_the_users_own_process_read_locally(
    test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    with leaker(shared_tmp, test_users.granted, LEAK_RATE) as proc:
        async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
            tool = next(t for t in (await client.list_tools()).tools if t.name == "perf_fd_trace")
            props = tool.input_schema["properties"]
            assert [props[k]["default"] for k in ("duration_s", "interval_s", "include_fd_list", "max_fds_listed")] \
                == [30.0, 5.0, False, 100]
            assert tool.input_schema["required"] == ["pid"]
            result = await client.call_tool("perf_fd_trace", {"pid": proc.pid, "duration_s": 6, "interval_s": 2,
                                                              "include_fd_list": True, "max_fds_listed": 10},
                                            progress_callback=on_progress)
            after = helpers.open_fd_count(proc.pid)
    data = check_leak(ok_data(result), proc.pid, test_users.granted)
    assert data["method"] == "local" and data["broker_job_ids"] == []
    assert data["current"] <= after  # the process kept leaking after the last sample
    assert len(data["fd_list"]) == 10 and data["fd_list_truncated"] is True
    assert all(e["new"] and e["type"] == "file" and "/fds/leak-" in e["target"] for e in data["fd_list"])
    assert envelope(result)["truncated"] is True
    jsonschema.validate(envelope(result), tool.output_schema)
    assert [round(v) for v, _, _ in progress] == [0, 2, 4, 6] and all(t == 6 for _, t, _ in progress)
    assert progress[-1][2].startswith("sample 4/4: ")
    print(f"\nlocal leak: {data['growth']['slope_per_s']:.2f} fds/s measured (leaker opens {LEAK_RATE:g}/s), "
          f"R² {data['growth']['r2']}, verdict {data['verdict']} ({data['verdict_confidence']})")


async def test_leak_of_another_users_process_goes_through_the_broker(
    broker: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    with leaker(shared_tmp, test_users.denied, LEAK_RATE) as proc:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result = await client.call_tool("perf_fd_trace", {"pid": proc.pid, "duration_s": 6, "interval_s": 2})
    env = envelope(result)
    data = check_leak(ok_data(result), proc.pid, test_users.denied)
    assert data["method"] == "broker" and "EACCES" in data["method_detail"]
    assert data["uid"] == test_users.denied.uid
    assert len(data["broker_job_ids"]) == len(data["samples"]) == 4
    assert any("EACCES" in w and "broker" in w for w in env["warnings"])
    audit = [line for line in broker.log_text().splitlines() if '"kind": "fd_table"' in line]
    assert len(audit) == 4 and all('"outcome": "ok"' in line for line in audit)
    print(f"\nbroker leak: {data['growth']['slope_per_s']:.2f} fds/s measured, verdict {data['verdict']} "
          f"({data['verdict_confidence']}), {len(audit)} fd_table jobs")


async def test_another_users_process_denied_or_without_broker(
    broker: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    with leaker(shared_tmp, test_users.granted, 1.0) as proc:
        async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
            denied = envelope(await client.call_tool("perf_fd_trace", {"pid": proc.pid, "duration_s": 2,
                                                                       "interval_s": 1}))
        async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
            absent = envelope(await client.call_tool("perf_fd_trace", {"pid": proc.pid, "duration_s": 2,
                                                                       "interval_s": 1}))
    assert denied["error"]["code"] == "PERMISSION_DENIED", denied
    assert f"uid {test_users.granted.uid}" in denied["error"]["message"] and "inspect" in denied["error"]["message"]
    assert "usermod -aG perf-mcp" in denied["error"]["suggestion"]
    assert absent["error"]["code"] == "BROKER_UNAVAILABLE", absent
    assert "perf-mcp-broker" in absent["error"]["suggestion"]


async def test_quiet_control_steady_process_is_not_a_leak(
    test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    with steady(shared_tmp, test_users.granted) as proc:
        async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
            data = ok_data(await client.call_tool("perf_fd_trace", {"pid": proc.pid, "duration_s": 6,
                                                                    "interval_s": 2, "include_fd_list": True}))
    assert data["verdict"] == "stable", data["verdict_reason"]
    assert any(e["target"].endswith("/held-\\xff\\xfe") for e in data["fd_list"])  # bytes that are not UTF-8
    assert [f for f in data["findings"] if f["severity"] in ("warning", "critical")] == []
    assert all(12 <= s["total"] <= 16 for s in data["samples"]), data["samples"]
    print(f"\nsteady control: totals {[s['total'] for s in data['samples']]}, verdict {data['verdict']}")


async def test_bad_params_are_typed_errors_and_the_server_keeps_serving(
    test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    gone = helpers.spawn_as(test_users.granted, ["/bin/true"])
    gone.wait()
    # A thread id of a live process (this test's own helper thread), not a process id.
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    thread_of = thread.native_id
    assert thread_of is not None and thread_of != os.getpid() and Path(f"/proc/{os.getpid()}/task/{thread_of}").exists()
    hostile: list[tuple[dict[str, Any], str]] = [
        ({}, "INVALID_PARAMS"),
        ({"pid": 0}, "INVALID_PARAMS"),
        ({"pid": -1}, "INVALID_PARAMS"),
        ({"pid": 2**31}, "INVALID_PARAMS"),
        ({"pid": 4194305}, "INVALID_PARAMS"),
        ({"pid": "$(id)"}, "INVALID_PARAMS"),
        ({"pid": 1, "duration_s": 0}, "INVALID_PARAMS"),
        ({"pid": 1, "duration_s": 61}, "INVALID_PARAMS"),
        ({"pid": 1, "interval_s": 0.5}, "INVALID_PARAMS"),
        ({"pid": 1, "interval_s": 11}, "INVALID_PARAMS"),
        ({"pid": 1, "max_fds_listed": 9}, "INVALID_PARAMS"),
        ({"pid": 1, "max_fds_listed": 1001}, "INVALID_PARAMS"),
        ({"pid": 1, "include_fd_list": "../"}, "INVALID_PARAMS"),
        ({"pid": 1, "path": "/proc/1/fd"}, "INVALID_PARAMS"),
        ({"pid": gone.pid}, "PID_NOT_FOUND"),
        ({"pid": thread_of}, "INVALID_PARAMS"),  # a thread id, not a process
    ]
    async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
        for args, code in hostile:
            result = await client.call_tool("perf_fd_trace", args)
            env = envelope(result)
            assert result.is_error is True and env["error"]["code"] == code, (args, env)
            assert env["error"]["suggestion"]
        with steady(shared_tmp, test_users.granted) as proc:
            ok = await client.call_tool("perf_fd_trace", {"pid": proc.pid, "duration_s": 1, "interval_s": 1})
        data = ok_data(ok)
        assert data["verdict"] == "insufficient_data" and len(data["samples"]) == 2
    release.set()
    thread.join()
    print(f"\nhostile parameter sets tried: {len(hostile)}, all typed errors; server kept serving")


async def test_process_exiting_mid_trace_and_cancel(test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
        with leaker(shared_tmp, test_users.granted, LEAK_RATE) as proc:
            async def stop_later() -> None:
                await trio.sleep(3.2)  # after the samples at 0, 1, 2 and 3 s
                helpers.stop_process(proc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_later)
                result = await client.call_tool("perf_fd_trace", {"pid": proc.pid, "duration_s": 8, "interval_s": 1})
        env = envelope(result)
        data = ok_data(result)
        assert 3 <= len(data["samples"]) <= 5 and data["verdict"] == "leak"
        assert any(w.startswith(f"process {proc.pid} exited after") for w in env["warnings"])
    print(f"\nexited mid-trace after {len(data['samples'])} samples")


async def test_cancel_stops_the_sampling(
    broker: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    """A cancelled 60 s trace of another user's process: the broker sees no
    fd_table job after the cancel, and the session goes on serving."""

    def jobs() -> int:
        return sum('"kind": "fd_table"' in line for line in broker.log_text().splitlines())

    with steady(shared_tmp, test_users.denied) as quiet:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            with trio.move_on_after(2.5):
                await client.call_tool("perf_fd_trace", {"pid": quiet.pid, "duration_s": 60, "interval_s": 1})
            at_cancel = jobs()
            await trio.sleep(3.0)
            after = jobs()
            follow = await client.call_tool("perf_fd_trace", {"pid": quiet.pid, "duration_s": 1, "interval_s": 1})
    assert 2 <= at_cancel <= 4 and after == at_cancel, (at_cancel, after)
    assert ok_data(follow)["method"] == "broker"
    print(f"\ncancel: {at_cancel} fd_table jobs before the cancel, none in the 3 s after")
