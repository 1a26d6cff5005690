"""perf_syscall_count through the real MCP client, the real frontend as perfmcp-granted and
the real broker as root, on every rung of its ladder:

- syscount (libbpf-tools): default broker, include_errors off;
- bpftrace syscount.bt: default broker with include_errors (the ladder prefers it then: it
  names each errno), and a broker started with --disable syscount;
- syscount with -x for failures: a broker started with --disable bpftrace.

Known answers: the workload (syscall_util) makes exactly N getppid, M openat ENOENT, K
close EBADF and S clock_nanosleep of 10 ms per trigger, triggered once every tracing
program is attached and checked to have finished while they still were. Counts must match
within 0.5 % (they are exact on this machine: printed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

import helpers
from helpers import envelope, ok_data
from syscall_util import (
    Workload,
    attached_tracers,
    build_workload,
    start_workload,
    tracer_processes,
    wait_attached,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOL = "perf_syscall_count"
D = 3  # trace seconds
N, ENOENT, EBADF, SLEEPS, SLEEP_US = 150_000, 3_000, 2_000, 20, 10_000
TOL = 0.005  # 0.5 %
LIBBPF = "syscount (libbpf-tools)"
BPFTRACE = "bpftrace syscount.bt (raw_syscalls tracepoints)"


@pytest.fixture(scope="module")
def exes() -> Any:
    directory = helpers.make_shared_tmpdir("pmcp-sc-")
    try:
        built = build_workload(directory, ("pmcp-sc-work", "pmcp-sc-alpha", "pmcp-sc-beta"))
        yield {p.name: p for p in built}
    finally:
        helpers.remove_tree(directory)


@pytest.fixture
def workloads(exes: dict[str, Path], test_users: helpers.TestUsers) -> Any:
    started: list[Workload] = []

    def start(name: str = "pmcp-sc-work", **counts: int) -> Workload:
        w = start_workload(exes[name], test_users.granted, **counts)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def near(got: int | None, want: int) -> bool:
    return got is not None and abs(got - want) <= TOL * want


def rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in data["syscalls"]}


async def traced_call(client: Any, args: dict[str, Any], broker: helpers.RunningBroker, fire: list[Workload],
                      tracers: int, progress: list[Any] | None = None) -> Any:
    """Call the tool; once `tracers` programs of this broker are attached, trigger the
    workloads and check they finished while every program was still attached."""
    out: dict[str, Any] = {}

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if progress is not None:
            progress.append((value, total, message))

    async def call() -> None:
        out["result"] = await client.call_tool(TOOL, args, progress_callback=on_progress)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        attached = await trio.to_thread.run_sync(wait_attached, broker.pid, tracers)
        for w in fire:
            w.trigger()
        for w in fire:
            await trio.to_thread.run_sync(w.wait_done)
        still = await trio.to_thread.run_sync(attached_tracers, broker.pid)
        assert attached <= still, "the burst ended after a tracing program detached: the machine is overloaded"
    assert await helpers.await_until(lambda: not tracer_processes(broker.pid), 10.0), tracer_processes(broker.pid)
    return out["result"]


def check_exact(data: dict[str, Any], w: Workload, *, failures: bool) -> None:
    r = rows(data)
    assert not [n for n in r if n.isdecimal() or n.startswith(("[", "unknown"))], list(r)
    assert near(r["getppid"]["count"], N), r["getppid"]
    assert near(r["openat"]["count"], ENOENT) and near(r["close"]["count"], EBADF)
    assert r["clock_nanosleep"]["count"] == SLEEPS
    assert r["getppid"]["nr"] == 110 and r["openat"]["nr"] == 257
    if failures:
        assert near(r["openat"]["failed"], ENOENT) and near(r["close"]["failed"], EBADF)
        assert r["getppid"]["failed"] == 0 and r["openat"]["failed_pct"] == 100.0
    print(f"\n[{data['method']}] getppid {r['getppid']['count']} (made {N}), openat {r['openat']['count']} "
          f"({ENOENT}), close {r['close']['count']} ({EBADF}), clock_nanosleep {r['clock_nanosleep']['count']} "
          f"({SLEEPS}); total {data['total_calls']}")


def check_latency(data: dict[str, Any]) -> None:
    r = rows(data)
    sleep = r["clock_nanosleep"]
    assert sleep["timed_calls"] == SLEEPS
    assert SLEEP_US <= sleep["mean_us"] <= 2 * SLEEP_US, sleep  # 10 ms sleeps: never shorter, rarely much longer
    assert sleep["total_ms"] >= SLEEPS * SLEEP_US / 1000
    assert r["getppid"]["mean_us"] < 100, r["getppid"]
    assert data["latency_note"]
    print(f"clock_nanosleep mean {sleep['mean_us']:.0f} us (asked {SLEEP_US}), max {sleep['max_us']}; "
          f"getppid mean {r['getppid']['mean_us']} us")


async def test_libbpf_rung_counts_by_name_with_latency(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workloads: Any
) -> None:
    broker = module_broker_factory()
    w = workloads(n=N, enoent=ENOENT, ebadf=EBADF, sleeps=SLEEPS, sleep_us=SLEEP_US)
    progress: list[Any] = []
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == TOOL)
        props = tool.input_schema["properties"]
        assert [props[k]["default"] for k in ("duration_s", "top_n", "include_latency", "per_process",
                                               "include_errors")] == [10, 20, False, False, False]
        result = await traced_call(client, {"duration_s": D, "pid": w.pid, "include_latency": True, "top_n": 10},
                                   broker, [w], tracers=1, progress=progress)
    jsonschema.validate(envelope(result), tool.output_schema)
    data = ok_data(result)
    assert (data["method"], data["backend"], data["skipped"]) == (LIBBPF, "libbpf", [])
    assert data["target"] == f"pid {w.pid} (pmcp-sc-work)" and data["argv"][0][0].endswith("syscount")
    assert "-L" in data["argv"][0] and "-p" in data["argv"][0]
    check_exact(data, w, failures=False)
    check_latency(data)
    assert data["errors"] is None and data["processes"] is None
    dom = next(f for f in data["findings"] if f["id"] == "syscall.dominant")
    assert dom["severity"] == "warning" and dom["title"].startswith("getppid is 9")  # 150k of ~155k calls
    assert dom["evidence"][0]["counter"] == "getppid calls" and dom["evidence"][0]["window_s"] == D
    assert f"perf_cpu_profile pid={w.pid}" in dom["suggestion"]
    assert any(f["id"] == "syscall.time" and "clock_nanosleep" in f["title"] for f in data["findings"])
    assert result.content[0].text.splitlines()[0].startswith(f"pid {w.pid} (pmcp-sc-work):")
    assert progress and progress[-1][0] == progress[-1][1]


async def test_include_errors_prefers_bpftrace_and_names_each_errno(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workloads: Any
) -> None:
    broker = module_broker_factory()
    w = workloads(n=N, enoent=ENOENT, ebadf=EBADF, sleeps=SLEEPS, sleep_us=SLEEP_US)
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        data = ok_data(await traced_call(client, {"duration_s": D, "pid": w.pid, "include_errors": True},
                                         broker, [w], tracers=1))
    assert (data["method"], data["backend"], data["skipped"]) == (BPFTRACE, "bpftrace", [])
    assert "bpftrace rung runs first" in data["ladder_note"]
    check_exact(data, w, failures=True)
    r = rows(data)
    assert [(e["name"], e["errno"]) for e in r["openat"]["errnos"]] == [("ENOENT", 2)]
    assert [(e["name"], e["errno"]) for e in r["close"]["errnos"]] == [("EBADF", 9)]
    assert near(r["openat"]["errnos"][0]["count"], ENOENT) and near(r["close"]["errnos"][0]["count"], EBADF)
    assert r["getppid"]["errnos"] == []
    errors = data["errors"]
    assert errors["by_errno"] is True and near(errors["failed_calls"], ENOENT + EBADF)
    assert [(t["syscall"], t["errno_name"]) for t in errors["top"]] == [("openat", "ENOENT"), ("close", "EBADF")]
    found = {f["id"]: f for f in data["findings"]}
    assert "ENOENT 3,000" in found["syscall.errors.openat"]["detail"]
    assert found["syscall.errors.close"]["severity"] == "warning"
    assert f"perf_fd_trace pid={w.pid}" in found["syscall.errors.close"]["suggestion"]
    print(f"errno breakdown: {[(t['syscall'], t['errno_name'], t['count']) for t in errors['top']]}")


async def test_libbpf_failures_per_syscall_when_bpftrace_is_disabled(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workloads: Any
) -> None:
    broker = module_broker_factory("--disable", "bpftrace")
    w = workloads(n=N, enoent=ENOENT, ebadf=EBADF, sleeps=SLEEPS, sleep_us=SLEEP_US)
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        result = await traced_call(client, {"duration_s": D, "pid": w.pid, "include_errors": True}, broker, [w],
                                   tracers=2)
    data = ok_data(result)
    assert data["method"] == LIBBPF
    (skip,) = data["skipped"]
    assert skip["backend"] == "bpftrace" and "--disable bpftrace" in skip["reason"]
    assert any("skipped" in x and "disabled" in x for x in envelope(result)["warnings"])
    assert [a[-1] for a in data["argv"]] == [str(w.pid), "-x"]
    check_exact(data, w, failures=True)
    r = rows(data)
    assert r["openat"]["errnos"] is None  # syscount cannot say which errno
    errors = data["errors"]
    assert errors["by_errno"] is False and "cannot break them down by errno" in errors["note"]
    assert "disabled" in errors["note"]
    assert [(t["syscall"], t["errno"]) for t in errors["top"]] == [("openat", None), ("close", None)]
    found = {f["id"]: f for f in data["findings"]}
    assert "errno not known" in found["syscall.errors.openat"]["detail"]


async def test_bpftrace_rung_counts_latency_and_process_rows(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workloads: Any
) -> None:
    broker = module_broker_factory("--disable", "syscount")
    w = workloads(n=N, enoent=ENOENT, ebadf=EBADF, sleeps=SLEEPS, sleep_us=SLEEP_US)
    args = {"duration_s": D, "pid": w.pid, "include_latency": True, "per_process": True, "comm": "sc-work"}
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        data = ok_data(await traced_call(client, args, broker, [w], tracers=1))
    assert data["method"] == BPFTRACE
    (skip,) = data["skipped"]
    assert skip["backend"] == "libbpf" and "--disable syscount" in skip["reason"]
    check_exact(data, w, failures=False)
    check_latency(data)
    assert rows(data)["clock_nanosleep"]["max_us"] >= SLEEP_US
    (proc,) = data["processes"]
    assert (proc["pid"], proc["comm"]) == (w.pid, "pmcp-sc-work")
    assert proc["count"] == w.process_total, (proc, w.process_total)  # the trigger read and the write too
    assert proc["total_ms"] >= SLEEPS * SLEEP_US / 1000 and data["processes_matched"] == 1


async def test_per_process_rows_and_comm_filter_libbpf(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workloads: Any
) -> None:
    broker = module_broker_factory()
    alpha = workloads("pmcp-sc-alpha", n=30_000, enoent=100)
    beta = workloads("pmcp-sc-beta", n=20_000, ebadf=50)
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        both = ok_data(await traced_call(client, {"duration_s": D, "per_process": True, "comm": "pmcp-sc-",
                                                  "top_n": 50}, broker, [alpha, beta], tracers=2))
        only_beta = ok_data(await traced_call(client, {"duration_s": D, "comm": "pmcp-sc-b"}, broker,
                                              [alpha, beta], tracers=2))
    assert both["method"] == LIBBPF and both["target"] == "all processes" and both["comm_filter"] == "pmcp-sc-"
    got = {p["pid"]: (p["comm"], p["count"]) for p in both["processes"]}
    assert got == {alpha.pid: ("pmcp-sc-alpha", alpha.process_total), beta.pid: ("pmcp-sc-beta", beta.process_total)}
    assert both["processes_matched"] == 2 and both["matched_calls"] == alpha.process_total + beta.process_total
    assert rows(both)["getppid"]["count"] >= 50_000  # the per-syscall rows cover every process
    assert (only_beta["processes_matched"], [p["pid"] for p in only_beta["processes"]]) == (1, [beta.pid])
    assert only_beta["processes"][0]["count"] == beta.process_total
    print(f"\nper process: alpha {got[alpha.pid][1]} (made {alpha.process_total}), beta {got[beta.pid][1]} "
          f"(made {beta.process_total}); system-wide {both['total_calls']} calls")


async def test_typed_errors_and_the_server_keeps_serving(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, workloads: Any
) -> None:
    broker = module_broker_factory()
    gone = helpers.spawn_as(test_users.granted, ["/bin/true"])
    gone.wait()
    thread_of = next((int(t) for t in os.listdir(f"/proc/{os.getpid()}/task") if int(t) != os.getpid()), None)
    hostile: list[tuple[dict[str, Any], str]] = [
        ({"duration_s": 0}, "INVALID_PARAMS"),
        ({"duration_s": 61}, "INVALID_PARAMS"),
        ({"duration_s": 2.5}, "INVALID_PARAMS"),
        ({"top_n": 0}, "INVALID_PARAMS"),
        ({"top_n": 51}, "INVALID_PARAMS"),
        ({"pid": 0}, "INVALID_PARAMS"),
        ({"pid": -1}, "INVALID_PARAMS"),
        ({"pid": "$(id)"}, "INVALID_PARAMS"),
        ({"comm": ""}, "INVALID_PARAMS"),
        ({"comm": "x" * 16}, "INVALID_PARAMS"),
        ({"comm": 5}, "INVALID_PARAMS"),
        ({"include_errors": "yes"}, "INVALID_PARAMS"),
        ({"backend": "bpftrace"}, "INVALID_PARAMS"),
        ({"pid": gone.pid}, "PID_NOT_FOUND"),
    ]
    if thread_of is not None:
        hostile.append(({"pid": thread_of}, "INVALID_PARAMS"))
    w = workloads(n=1000)
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        for args, code in hostile:
            env = envelope(await client.call_tool(TOOL, {"duration_s": 1, **args}))
            assert env["success"] is False and env["error"]["code"] == code, (args, env)
            assert env["error"]["suggestion"]
        data = ok_data(await traced_call(client, {"duration_s": 1, "pid": w.pid}, broker, [w], tracers=1))
        assert rows(data)["getppid"]["count"] == 1000
    async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
        denied = envelope(await client.call_tool(TOOL, {"duration_s": 1, "pid": w.pid}))
    assert denied["error"]["code"] == "PERMISSION_DENIED", denied
    assert "usermod -aG perf-mcp" in denied["error"]["suggestion"]
    assert not tracer_processes(broker.pid)
    print(f"\n{len(hostile)} hostile parameter sets: typed errors; a denied user: PERMISSION_DENIED")


async def test_busy_and_cancel_stop_the_trace(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers
) -> None:
    """A second job of the same user is PROFILER_BUSY; cancelling a 60 s trace kills its
    programs (no syscount left, no BPF attachment) and the next call runs."""
    broker = module_broker_factory()
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client, \
            helpers.mcp_client(test_users.granted, broker.socket_path) as other:
        with trio.move_on_after(40):
            async with trio.open_nursery() as nursery:
                async def long_call() -> None:
                    await client.call_tool(TOOL, {"duration_s": 60})

                nursery.start_soon(long_call)
                await trio.to_thread.run_sync(wait_attached, broker.pid, 1)
                busy = envelope(await other.call_tool(TOOL, {"duration_s": 1}))
                assert busy["error"]["code"] == "PROFILER_BUSY", busy
                nursery.cancel_scope.cancel()
        stopped = await helpers.await_until(
            lambda: not tracer_processes(broker.pid) and not attached_tracers(broker.pid), 10.0)
        assert stopped, tracer_processes(broker.pid)
        after = ok_data(await client.call_tool(TOOL, {"duration_s": 1}))
    assert after["total_calls"] > 0 and after["method"] == LIBBPF
