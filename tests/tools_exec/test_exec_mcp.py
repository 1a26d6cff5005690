"""perf_exec_trace through the real MCP client, the real frontend as perfmcp-granted
and real brokers as root, every rung of the ladder:

  execsnoop + exitsnoop (default broker), bpftrace execsnoop.bt (--disable
  execsnoop), exitsnoop disabled (-> bpftrace, lifetimes kept), exitsnoop and
  bpftrace disabled (-> execsnoop alone, lifetimes unavailable).

Known answers: a driver (pid known: setpriv execs in place) spawns exactly N
`pmcp-execw MS MARKER I` (each sleeps MS ms and exits 7) and F execs of a path
that does not exist. Every one must be seen, with its arguments, the driver as
parent, its uid, lifetime MS ms (tolerance below) and exit code 7; the failed
ones with ENOENT only when include_failed. The workload starts only once the
tracer's programs are attached (exec_util.wait_attached).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

import helpers
from exec_util import (BPFTRACE_TRACEPOINTS, EXECSNOOP_TRACEPOINTS, EXECW_COMM, EXIT_CODE, LIBBPF_TRACEPOINTS,
                       build_execw, wait_attached, workload)
from helpers import envelope, ok_data

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOL = "perf_exec_trace"
MS = 50  # each execution's sleep
# Lifetime = fork to exit: the sleep plus spawn, exec and dynamic linking, which take
# 1-5 ms here and tens of ms on a loaded 2-core machine. exitsnoop prints seconds
# with 2 decimals, so its value can read up to 5 ms below the truth.
LIFE_LOW_MS = {"libbpf": MS - 5.0, "bpftrace": MS}
LIFE_HIGH_MS = MS + 150.0  # any one execution
MEDIAN_HIGH_MS = MS + 40.0
DURATION = 4


@pytest.fixture(scope="module")
def execw() -> Any:
    d = helpers.make_shared_tmpdir("pmcp-execw-")
    try:
        yield d, build_execw(d)
    finally:
        helpers.remove_tree(d)


async def traced(client: Any, broker: helpers.RunningBroker, args: dict[str, Any], wanted: frozenset[str],
                 *loads: Any) -> tuple[Any, float]:
    """Call the tool; once the tracer is attached, let the workloads go."""
    out: dict[str, Any] = {}

    async def call() -> None:
        out["result"] = await client.call_tool(TOOL, args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        attach_s = await wait_attached(broker.pid, wanted)
        for w in loads:
            w.start()
    for w in loads:
        assert w.wait() == 0, f"workload {w.marker} failed"
    return out["result"], attach_s


def marked(data: dict[str, Any], marker: str) -> list[dict[str, Any]]:
    return [e for e in data["executions"] if any(marker in a for a in e["args"])]


def check_workload(data: dict[str, Any], w: Any, exe: Path, *, lifetimes: str | None,
                   include_failed: bool) -> list[float]:
    mine = marked(data, w.marker)
    ok = [e for e in mine if not e.get("failed")]
    assert sorted(int(e["args"][3]) for e in ok) == list(range(w.n)), "every execution once"
    for e in ok:
        assert e["ppid"] == w.pid and e["uid"] == w.user.uid and e["comm"] == EXECW_COMM, e
        assert e["args"][:3] == [str(exe), str(MS), w.marker] and e.get("ret", 0) == 0, e
    lives = []
    if lifetimes is not None:
        for e in ok:
            assert e.get("exit_code") == EXIT_CODE, e
            assert LIFE_LOW_MS[lifetimes] <= e["lifetime_ms"] <= LIFE_HIGH_MS, e
            lives.append(e["lifetime_ms"])
        assert statistics.median(lives) <= MEDIAN_HIGH_MS, lives
    else:
        assert all("lifetime_ms" not in e and "exit_code" not in e for e in ok)
    failed = [e for e in mine if e.get("failed")]
    if include_failed:
        assert len(failed) == w.fails, failed
        for e in failed:
            assert e["error"] == "ENOENT" and e["ret"] == -2 and e["ppid"] == w.pid, e
            assert e["args"] == [f"/nonexistent-pmcp/{w.marker}-missing", w.marker], e
    else:
        assert failed == []
    return lives


def check_tree_and_counts(data: dict[str, Any], w: Any, include_failed: bool) -> None:
    expected = w.n + (w.fails if include_failed else 0)
    assert [r["pid"] for r in data["tree"]] == [w.pid]
    root = data["tree"][0]
    assert root["comm"] == "python3" and root["descendants"] == expected and len(root["children"]) == expected
    assert sum(c.get("failed", 0) for c in root["children"]) == (w.fails if include_failed else 0)
    assert data["execs"] == expected and data["failed"] == (w.fails if include_failed else 0)
    assert data["processes"] == w.n
    assert {c["comm"]: c["execs"] for c in data["by_comm"]}[EXECW_COMM] == w.n
    top = data["top_parents"][0]
    assert top["ppid"] == w.pid and top["comm"] == "python3" and top["execs"] == expected


async def test_libbpf_rung_known_workload_with_failures_and_parent_filter(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, execw: Any
) -> None:
    d, exe = execw
    broker = module_broker_factory()
    args = {"duration_s": DURATION, "include_failed": True, "include_timestamps": True, "max_execs_listed": 1000}
    with workload(d, exe, test_users.granted, n=60, ms=MS, fails=4, batch=12, tag="A") as w, \
            workload(d, exe, test_users.granted, n=5, ms=MS, tag="other") as other:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            tool = next(t for t in (await client.list_tools()).tools if t.name == TOOL)
            result, attach_s = await traced(client, broker, {**args, "pid": w.pid}, LIBBPF_TRACEPOINTS, w, other)
    env = envelope(result)
    jsonschema.validate(env, tool.output_schema)
    data = ok_data(result)
    assert data["method"] == "execsnoop + exitsnoop (libbpf-tools)" and data["backend"] == "libbpf"
    assert data["skipped"] == [] and data["filters"]["pid"] == w.pid
    lives = check_workload(data, w, exe, lifetimes="libbpf", include_failed=True)
    assert marked(data, other.marker) == [], "not a descendant of the parent filter"
    check_tree_and_counts(data, w, include_failed=True)
    assert data["lifetimes"]["available"] and data["lifetimes"]["resolution_ms"] == 10.0
    assert data["short_lived"] == w.n and data["short_lived_per_s"] == pytest.approx(w.n / DURATION)
    ts = [e["t_s"] for e in marked(data, w.marker)]
    assert all(0 < t <= DURATION + 1 for t in ts) and max(ts) - min(ts) < DURATION
    storm = next(f for f in data["findings"] if f["id"] == "process.exec_storm")
    assert storm["severity"] == "warning" and f"pid {w.pid} (python3) spawned {w.n} of them (100%)" in storm["detail"]
    assert f'"pid": {w.pid}' in storm["suggestion"] and "perf_exec_trace" in storm["suggestion"]
    assert storm["evidence"][0]["value"] == pytest.approx(w.n / DURATION)
    fail = next(f for f in data["findings"] if f["id"] == "process.exec_failures")
    assert fail["metrics"]["failed"] == w.fails and "ENOENT" in fail["title"]
    assert result.content[0].text.splitlines()[0].startswith(f"exec trace {DURATION} s: {w.n + w.fails} execs")
    print(f"\nlibbpf: {w.n}/{w.n} executions and {w.fails}/{w.fails} failures seen (attached after {attach_s:.1f} s); "
          f"lifetimes {min(lives)}-{max(lives)} ms, median {statistics.median(lives)} ms (sleep {MS} ms, "
          f"exitsnoop's 10 ms steps)")


async def test_libbpf_control_without_failures_and_busy(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, execw: Any
) -> None:
    """include_failed false hides the driver's failed execs; a handful of executions
    is no storm (quiet control); a second call of the same user meanwhile is BUSY."""
    d, exe = execw
    broker = module_broker_factory()
    with workload(d, exe, test_users.granted, n=5, ms=MS, fails=3, tag="ctl") as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client, \
                helpers.mcp_client(test_users.granted, broker.socket_path) as second:
            out: dict[str, Any] = {}

            async def call() -> None:
                out["r"] = await client.call_tool(TOOL, {"duration_s": DURATION, "pid": w.pid})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await wait_attached(broker.pid, LIBBPF_TRACEPOINTS)
                busy = envelope(await second.call_tool(TOOL, {"duration_s": 1}))
                w.start()
            assert w.wait() == 0
    data = ok_data(out["r"])
    check_workload(data, w, exe, lifetimes="libbpf", include_failed=False)
    check_tree_and_counts(data, w, include_failed=False)
    assert [f for f in data["findings"] if f["severity"] != "info"] == []
    assert busy["success"] is False and busy["error"]["code"] == "PROFILER_BUSY", busy
    print(f"\ncontrol: {data['execs']} execs, {data['failed']} failed shown of {w.fails} made, findings "
          f"{[f['id'] for f in data['findings']]}; concurrent call: {busy['error']['code']}")


async def test_libbpf_uid_filter_and_name_pattern(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, execw: Any
) -> None:
    """uid goes to execsnoop (-u); name_pattern (a glob) is applied in the frontend."""
    d, exe = execw
    broker = module_broker_factory()
    with workload(d, exe, test_users.granted, n=10, ms=MS, tag="A") as a, \
            workload(d, exe, test_users.denied, n=10, ms=MS, tag="B") as b, \
            workload(d, exe, test_users.granted, n=10, ms=MS, tag="C") as c:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, _ = await traced(client, broker, {"duration_s": DURATION, "uid": test_users.granted.uid,
                                                      "name_pattern": "*pmcp-exec-[AB]-*", "max_execs_listed": 1000},
                                     LIBBPF_TRACEPOINTS, a, b, c)
    data = ok_data(result)
    check_workload(data, a, exe, lifetimes="libbpf", include_failed=False)
    assert marked(data, b.marker) == [], "another uid"
    assert marked(data, c.marker) == [], "does not match name_pattern"
    assert all(e["uid"] == test_users.granted.uid for e in data["executions"])
    assert data["filters"] == {"include_failed": False, "max_args": 20, "uid": test_users.granted.uid,
                               "name_pattern": "*pmcp-exec-[AB]-*"}
    print(f"\nuid + name_pattern: {len(marked(data, a.marker))}/{a.n} of uid {test_users.granted.uid}, "
          f"0/{b.n} of uid {test_users.denied.uid}, 0/{c.n} not matching")


async def test_bpftrace_rung_known_workload(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, execw: Any
) -> None:
    d, exe = execw
    broker = module_broker_factory("--disable", "execsnoop")
    with workload(d, exe, test_users.granted, n=60, ms=MS, fails=4, batch=12, tag="A") as w, \
            workload(d, exe, test_users.granted, n=5, ms=MS, tag="other") as other:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, attach_s = await traced(client, broker, {"duration_s": DURATION, "include_failed": True,
                                                             "include_timestamps": True, "pid": w.pid,
                                                             "max_execs_listed": 1000},
                                            BPFTRACE_TRACEPOINTS, w, other)
    env = envelope(result)
    data = ok_data(result)
    assert data["backend"] == "bpftrace" and data["method"].startswith("bpftrace execsnoop.bt")
    assert [(s["method"], s["backend"]) for s in data["skipped"]] == [("execsnoop + exitsnoop (libbpf-tools)",
                                                                       "libbpf")]
    assert "execsnoop is disabled by the administrator" in data["skipped"][0]["reason"]
    assert any(w_.startswith("execsnoop + exitsnoop (libbpf-tools) skipped") for w_ in env["warnings"])
    lives = check_workload(data, w, exe, lifetimes="bpftrace", include_failed=True)
    assert marked(data, other.marker) == []
    check_tree_and_counts(data, w, include_failed=True)
    assert data["lifetimes"]["resolution_ms"] == 0.001 and data["arg_max_bytes"] == 63
    assert data["short_lived"] == w.n
    storm = next(f for f in data["findings"] if f["id"] == "process.exec_storm")
    assert f"pid {w.pid} (python3)" in storm["detail"]
    print(f"\nbpftrace: {w.n}/{w.n} executions and {w.fails}/{w.fails} failures seen (attached after "
          f"{attach_s:.1f} s); lifetimes {min(lives)}-{max(lives)} ms, median {statistics.median(lives)} ms")


async def test_bpftrace_rung_uid_filter_without_failures(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, execw: Any
) -> None:
    d, exe = execw
    broker = module_broker_factory("--disable", "execsnoop")
    with workload(d, exe, test_users.granted, n=10, ms=MS, fails=2, tag="A") as a, \
            workload(d, exe, test_users.denied, n=10, ms=MS, tag="B") as b:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, _ = await traced(client, broker, {"duration_s": DURATION, "uid": test_users.granted.uid,
                                                      "name_pattern": "pmcp-exec-", "max_execs_listed": 1000},
                                     BPFTRACE_TRACEPOINTS, a, b)
    data = ok_data(result)
    check_workload(data, a, exe, lifetimes="bpftrace", include_failed=False)
    assert marked(data, b.marker) == []
    print(f"\nbpftrace uid filter: {a.n}/{a.n} of uid {test_users.granted.uid}, 0/{b.n} of uid "
          f"{test_users.denied.uid}, failed shown 0 of {a.fails}")


async def test_exitsnoop_disabled_goes_to_bpftrace(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, execw: Any
) -> None:
    """Lifetimes are half the answer (an exec storm is short lives), so without
    exitsnoop the ladder takes bpftrace rather than execsnoop alone."""
    d, exe = execw
    broker = module_broker_factory("--disable", "exitsnoop")
    with workload(d, exe, test_users.granted, n=10, ms=MS, tag="A") as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, _ = await traced(client, broker, {"duration_s": DURATION, "pid": w.pid}, BPFTRACE_TRACEPOINTS, w)
    data = ok_data(result)
    assert data["backend"] == "bpftrace"
    assert [s["reason"] for s in data["skipped"]] == [
        "exitsnoop is disabled by the administrator (perf-mcp-broker --disable exitsnoop)"]
    check_workload(data, w, exe, lifetimes="bpftrace", include_failed=False)
    print(f"\nexitsnoop disabled: {data['method']} ran, {len(marked(data, w.marker))}/{w.n} with lifetimes")


async def test_execsnoop_alone_when_exitsnoop_and_bpftrace_are_disabled(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, execw: Any
) -> None:
    d, exe = execw
    broker = module_broker_factory("--disable", "exitsnoop", "--disable", "bpftrace")
    with workload(d, exe, test_users.granted, n=30, ms=MS, fails=2, tag="A") as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, _ = await traced(client, broker, {"duration_s": DURATION, "pid": w.pid, "include_failed": True},
                                     EXECSNOOP_TRACEPOINTS, w)
    env = envelope(result)
    data = ok_data(result)
    assert data["method"] == "execsnoop alone (libbpf-tools; no lifetimes)" and data["backend"] == "libbpf"
    assert [s["method"] for s in data["skipped"]] == ["execsnoop + exitsnoop (libbpf-tools)",
                                                      "bpftrace execsnoop.bt (execve syscall + sched tracepoints)"]
    check_workload(data, w, exe, lifetimes=None, include_failed=True)
    check_tree_and_counts(data, w, include_failed=True)
    assert data["lifetimes"] == {"available": False, "resolution_ms": None, "processes_exited": 0,
                                 "still_running": w.n, "p50_ms": None, "p90_ms": None, "max_ms": None}
    assert data["short_lived"] == 0 and all(f["id"] != "process.exec_storm" for f in data["findings"])
    assert any(x.startswith("lifetimes and exit codes are unavailable: exitsnoop did not run") for x in env["warnings"])
    assert "lifetimes unavailable" in result.content[0].text.splitlines()[0]
    print(f"\nexecsnoop alone: {data['execs']} execs ({w.n} + {w.fails} failed), lifetimes unavailable (warned)")


async def test_typed_errors_and_denied_user(
    module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, shared_tmp: Path
) -> None:
    broker = module_broker_factory()
    gone = helpers.spawn_as(test_users.granted, ["/bin/true"])
    gone.wait()
    hostile: list[tuple[dict[str, Any], str]] = [
        ({"duration_s": 0}, "INVALID_PARAMS"),
        ({"duration_s": 31}, "INVALID_PARAMS"),
        ({"duration_s": 2.5}, "INVALID_PARAMS"),
        ({"duration_s": "$(id)"}, "INVALID_PARAMS"),
        ({"pid": 0}, "INVALID_PARAMS"),
        ({"pid": -1}, "INVALID_PARAMS"),
        ({"pid": 4194305}, "INVALID_PARAMS"),
        ({"uid": -1}, "INVALID_PARAMS"),
        ({"uid": 4294967295}, "INVALID_PARAMS"),
        ({"uid": "0; rm -rf /"}, "INVALID_PARAMS"),
        ({"max_args": 0}, "INVALID_PARAMS"),
        ({"max_args": 61}, "INVALID_PARAMS"),
        ({"name_pattern": ""}, "INVALID_PARAMS"),
        ({"name_pattern": "x" * 257}, "INVALID_PARAMS"),
        ({"include_failed": "yes"}, "INVALID_PARAMS"),
        ({"max_execs_listed": 0}, "INVALID_PARAMS"),
        ({"script": "tracepoint:syscalls:sys_enter_execve { }"}, "INVALID_PARAMS"),
        ({"pid": gone.pid}, "PID_NOT_FOUND"),
    ]
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        for args, code in hostile:
            env = envelope(await client.call_tool(TOOL, args))
            assert env["success"] is False and env["error"]["code"] == code, (args, env)
            assert env["error"]["suggestion"]
        # Strings in name_pattern never reach the broker: shell and script syntax is only text to match.
        ok = ok_data(await client.call_tool(TOOL, {"duration_s": 1, "name_pattern": '"; } $(id) ../\\x00'}))
        assert ok["execs"] == 0 and ok["filters"]["name_pattern"] == '"; } $(id) ../\\x00'
    async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
        denied = envelope(await client.call_tool(TOOL, {"duration_s": 1}))
    assert denied["error"]["code"] == "PERMISSION_DENIED", denied
    assert "usermod -aG perf-mcp" in denied["error"]["suggestion"]
    audit = [line for line in broker.log_text().splitlines() if '"kind": "exec_trace"' in line and '$(id)' in line]
    assert audit == []
    print(f"\nhostile parameter sets: {len(hostile)} typed errors; a hostile name_pattern traced 1 s and matched 0; "
          f"denied user: {denied['error']['code']}")
