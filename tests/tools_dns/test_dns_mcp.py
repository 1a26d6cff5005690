"""perf_dns_latency through the real MCP client, the real frontend as perfmcp-granted
and real brokers as root, on both rungs: gethostlatency (default broker) and
bpftrace dnslat.bt (--disable gethostlatency).

Known answers (loopback only): a resolver on 127.0.0.77:53 answers every query
after 250 ms; a client of the test user, in its own mount namespace with a
resolv.conf naming only that resolver, resolves marker names a known number of
times (A x3, B x2, C x1). Every lookup must be seen once, with the client's pid,
its name and a latency near 250 ms (LAT_LOW..LAT_HIGH: the delay plus Python,
libc and a loaded machine's scheduling); the per-name counts exact; slowest
first; a slow-lookup finding naming the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

import helpers
from dns_util import lookups, new_marker, resolver, write_files
from exec_util import wait_attached  # noqa: E402  (dns_util puts tests/tools_exec on the path)
from helpers import envelope, ok_data

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOL = "perf_dns_latency"
DURATION = 4
LAT_LOW_MS, LAT_HIGH_MS = 240.0, 600.0
MEDIAN_HIGH_MS = 400.0
COUNTS = {"a": 3, "b": 2, "c": 1}


@pytest.fixture(scope="module")
def dns_env() -> Any:
    d = helpers.make_shared_tmpdir("pmcp-dns-")
    try:
        write_files(d)
        with resolver(d):
            yield d
    finally:
        helpers.remove_tree(d)


async def attached_uprobes(broker_pid: int) -> int:
    import json

    from exec_util import BPFTOOL

    res = await trio.run_process([BPFTOOL, "-j", "perf", "list"], capture_stdout=True, capture_stderr=True,
                                 check=False)
    mine = set(helpers.descendants(broker_pid))
    return sum(1 for e in json.loads(res.stdout or b"[]") if e.get("pid") in mine and "filename" in e)


async def wait_uprobes(broker_pid: int, n: int, timeout: float = 60.0) -> float:
    t0 = trio.current_time()
    with trio.fail_after(timeout):
        while await attached_uprobes(broker_pid) < n:
            await trio.sleep(0.1)
    return trio.current_time() - t0


def names_for(marker: str) -> list[str]:
    return [f"{k}.{marker}.test" for k, n in COUNTS.items() for _ in range(n)]


async def traced(client: Any, broker: helpers.RunningBroker, args: dict[str, Any], w: Any, uprobes: int) -> Any:
    out: dict[str, Any] = {}

    async def call() -> None:
        out["r"] = await client.call_tool(TOOL, args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        attach_s = await wait_uprobes(broker.pid, uprobes)
        w.start()
        assert await trio.to_thread.run_sync(w.wait) == 0
    return out["r"], attach_s


def check(data: dict[str, Any], w: Any, marker: str) -> list[float]:
    mine = [x for x in data["slowest"] if marker in x["name"]]
    assert sorted(x["name"] for x in mine) == sorted(w.names), [x["name"] for x in mine]
    lat = [x["latency_ms"] for x in mine]
    for x in mine:
        assert x["pid"] == w.pid and x["comm"] == "python3", x
        assert LAT_LOW_MS <= x["latency_ms"] <= LAT_HIGH_MS, x
    assert sorted(lat) [len(lat) // 2] <= MEDIAN_HIGH_MS
    all_lat = [x["latency_ms"] for x in data["slowest"]]
    assert all_lat == sorted(all_lat, reverse=True), "slowest first"
    by_name = {s["name"]: s for s in data["by_name"] if marker in s["name"]}
    for k, n in COUNTS.items():
        s = by_name[f"{k}.{marker}.test"]
        assert s["count"] == n and s["processes"] == [f"python3[{w.pid}]"], s
        assert LAT_LOW_MS <= s["mean_ms"] <= s["max_ms"] <= LAT_HIGH_MS
    slow = next(f for f in data["findings"] if f["id"] == "network.dns.slow_lookups")
    assert slow["severity"] == "warning" and slow["evidence"][0]["threshold"] == 100.0
    assert "perf_dns_latency" in slow["suggestion"] and "resolv.conf" in slow["suggestion"]
    return lat


async def test_gethostlatency_rung_known_lookups(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, dns_env: Path
) -> None:
    broker = module_broker_factory()
    marker = new_marker()
    with lookups(dns_env, test_users.granted, names_for(marker)) as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            tool = next(t for t in (await client.list_tools()).tools if t.name == TOOL)
            result, attach_s = await traced(client, broker, {"duration_s": DURATION, "max_listed": 1000}, w, 6)
    env = envelope(result)
    jsonschema.validate(env, tool.output_schema)
    data = ok_data(result)
    assert data["method"].startswith("gethostlatency") and data["backend"] == "libbpf" and data["skipped"] == []
    lat = check(data, w, marker)
    assert data["failed"] is None and any("failed is null" in x for x in env["warnings"])
    assert result.content[0].text.startswith(f"dns latency {DURATION} s:")
    print(f"\ngethostlatency: {len(lat)}/{len(w.names)} lookups (attached after {attach_s:.1f} s), "
          f"{min(lat)}-{max(lat)} ms for a 250 ms resolver")


async def test_gethostlatency_pid_filter(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, dns_env: Path
) -> None:
    broker = module_broker_factory()
    marker, other = new_marker(), new_marker()
    with lookups(dns_env, test_users.granted, names_for(marker)) as w, \
            lookups(dns_env, test_users.granted, [f"x.{other}.test"]) as o:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            out: dict[str, Any] = {}

            async def call() -> None:
                out["r"] = await client.call_tool(TOOL, {"duration_s": DURATION, "pid": w.pid})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await wait_uprobes(broker.pid, 6)
                w.start()
                o.start()
                assert await trio.to_thread.run_sync(w.wait) == 0
                assert await trio.to_thread.run_sync(o.wait) == 0
    data = ok_data(out["r"])
    check(data, w, marker)
    assert data["lookups"] == len(w.names) and data["filters"] == {"pid": w.pid}
    assert not [x for x in data["slowest"] if other in x["name"]]
    print(f"\ngethostlatency -p: {data['lookups']}/{len(w.names)} lookups of pid {w.pid}, 0 of the other client")


async def test_bpftrace_rung_known_lookups(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, dns_env: Path
) -> None:
    broker = module_broker_factory("--disable", "gethostlatency")
    marker = new_marker()
    with lookups(dns_env, test_users.granted, names_for(marker)) as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, attach_s = await traced(client, broker, {"duration_s": DURATION, "pid": w.pid}, w, 6)
    env = envelope(result)
    data = ok_data(result)
    assert data["backend"] == "bpftrace" and data["method"].startswith("bpftrace dnslat.bt")
    assert [s["method"] for s in data["skipped"]] == ["gethostlatency (libbpf-tools; uprobes on libc)"]
    assert "gethostlatency is disabled by the administrator" in data["skipped"][0]["reason"]
    assert any(x.startswith("gethostlatency (libbpf-tools; uprobes on libc) skipped") for x in env["warnings"])
    lat = check(data, w, marker)
    assert data["failed"] == 0 and data["lookups"] == len(w.names)
    assert all(x["func"] == "getaddrinfo" and x["ok"] is True for x in data["slowest"])
    assert all(s["failed"] == 0 for s in data["by_name"])
    print(f"\nbpftrace: {len(lat)}/{len(w.names)} lookups (attached after {attach_s:.1f} s), "
          f"{min(lat)}-{max(lat)} ms, all ok")


async def test_typed_errors_denied_and_busy(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers
) -> None:
    broker = module_broker_factory()
    gone = helpers.spawn_as(test_users.granted, ["/bin/true"])
    gone.wait()
    hostile: list[tuple[dict[str, Any], str]] = [
        ({"duration_s": 0}, "INVALID_PARAMS"),
        ({"duration_s": 31}, "INVALID_PARAMS"),
        ({"duration_s": "$(id)"}, "INVALID_PARAMS"),
        ({"pid": -1}, "INVALID_PARAMS"),
        ({"pid": 2**31}, "INVALID_PARAMS"),
        ({"max_listed": 1001}, "INVALID_PARAMS"),
        ({"libc": "/tmp/evil.so"}, "INVALID_PARAMS"),
        ({"pid": gone.pid}, "PID_NOT_FOUND"),
    ]
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client, \
            helpers.mcp_client(test_users.granted, broker.socket_path) as second:
        for args, code in hostile:
            env = envelope(await client.call_tool(TOOL, args))
            assert env["success"] is False and env["error"]["code"] == code, (args, env)
            assert env["error"]["suggestion"]
        out: dict[str, Any] = {}

        async def call() -> None:
            out["r"] = await client.call_tool(TOOL, {"duration_s": 2})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await wait_uprobes(broker.pid, 6)
            busy = envelope(await second.call_tool(TOOL, {"duration_s": 1}))
    assert busy["success"] is False and busy["error"]["code"] == "PROFILER_BUSY", busy
    assert ok_data(out["r"])["backend"] == "libbpf"
    async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
        denied = envelope(await client.call_tool(TOOL, {"duration_s": 1}))
    assert denied["error"]["code"] == "PERMISSION_DENIED", denied
    print(f"\nhostile parameter sets: {len(hostile)} typed errors; concurrent call: {busy['error']['code']}; "
          f"denied user: {denied['error']['code']}")
