"""Every next step any tool gives names a served tool with arguments that tool accepts.

Through a real MCP client, the real frontend as the granted user and a real broker, with a
brief known load running so that findings (and their next calls) appear: a CPU burner (the
compiled busy loop), an fd leaker (20 opens/s, never closed), a disk writer (256 KiB writes
each fsync'ed), a spawner (/bin/true 50 times a second), a TCP client connecting to a
closed loopback port 20 times a second and a listener that never accepts, connected to 10
times a second (listen-queue drops). Every tool in tools/list is called (a tool this
module has no arguments for is called with {}, so a new tool is covered the day it is
served), perf_thread_profile a second time with its off-CPU side and perf_file_trace with its
opens alone (opensnoop's per-event wall clock); every `next` anywhere in
every answer (findings, root causes) must name a tool in tools/list, and its arguments must
validate against that tool's inputSchema (jsonschema). The threshold findings the load makes
fire must carry theirs: perf_thread_profile's on the busy loop (perf_cpu_profile or
perf_runq_latency with its pid) and on the writer blocked off CPU (perf_offcpu_profile with
its pid), perf_net_health's listen-queue drops (perf_tcp_trace).
The server drops a bad next call and logs it ("dropped next step"): a dropped one fails this
test too, through the frontend's log. The same answers are checked for timestamps: every
field named like a point in time is an ISO 8601 string, and no number in them looks like
an epoch time (a float under such a name is taken for a clock reading; an int is allowed, as
a counter's value at the window's start or end, unless it looks like an epoch time).

The unit part checks the server's filter itself (a next call to an unserved tool, and one
with an argument out of range, are dropped and logged; a good one is kept).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import helpers

PYTHON = "/usr/bin/python3"
LIFE_S = 240

WORKLOAD = r"""
import os, socket, subprocess, sys, time
mode, arg, life = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + life
print("ready", flush=True)
if mode == "leak":
    kept = []
    i = 0
    while time.monotonic() < end:
        kept.append(open(os.path.join(arg, f"leak-{i % 25}"), "w"))
        i += 1
        time.sleep(0.05)
elif mode == "write":
    block = os.urandom(256 * 1024)
    with open(os.path.join(arg, "written"), "wb") as f:
        while time.monotonic() < end:
            f.seek(0)
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
            time.sleep(0.01)
elif mode == "spawn":
    while time.monotonic() < end:
        subprocess.run(["/bin/true"])
        time.sleep(0.02)
elif mode == "connect":
    port = int(arg)
    while time.monotonic() < end:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.05)
elif mode == "overflow":
    # a listener that never accepts (backlog 0: one connection fills it), and 10 connects a
    # second to it: each SYN after the first is a listen-queue drop. Each socket is closed
    # after 0.5 s, before its SYN would be retransmitted (1 s): drops, no retransmits.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    pending = []
    while time.monotonic() < end:
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        pending.append((time.monotonic(), c))
        while pending and pending[0][0] < time.monotonic() - 0.5:
            pending.pop(0)[1].close()
        time.sleep(0.1)
"""

# Arguments per tool: short windows, aimed at the workloads ({pid_*} filled in).
CALLS: dict[str, dict[str, Any]] = {
    "perf_info": {},
    "perf_snapshot": {},
    "perf_use_check": {},
    "perf_cgroup_summary": {},
    "perf_net_health": {},
    "perf_io_latency": {"duration_s": 2},
    "perf_fd_trace": {"pid": "{pid_leak}", "duration_s": 3, "interval_s": 1},
    "perf_cpu_profile": {"duration_s": 2},
    "perf_thread_profile": {"pid": "{pid_busy}", "duration_s": 2},
    "perf_offcpu_profile": {"duration_s": 2, "pid": "{pid_write}"},
    "perf_runq_latency": {"duration_s": 2, "per_pid": True},
    "perf_syscall_count": {"duration_s": 2, "per_process": True, "include_errors": True},
    "perf_exec_trace": {"duration_s": 2},
    "perf_bio_latency": {"duration_s": 2, "per_device": True},
    "perf_io_layers": {"duration_s": 2},
    "perf_file_trace": {"duration_s": 2, "mode": "all"},
    "perf_vfs_latency": {"duration_s": 2, "pid": "{pid_write}"},
    "perf_tcp_trace": {"duration_s": 2},
    "perf_dns_latency": {"duration_s": 2},
}
# Second calls, answers kept as "tool#label": the off-CPU side of perf_thread_profile, and
# perf_file_trace's opens alone (opensnoop where the kernel allows: a wall clock per event).
EXTRA_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "perf_thread_profile#offcpu": ("perf_thread_profile", {"pid": "{pid_write}", "duration_s": 2,
                                                           "include_offcpu": True}),
    "perf_file_trace#opens": ("perf_file_trace", {"mode": "opens", "pid": "{pid_leak}", "duration_s": 2}),
}

TIME_KEY = re.compile(r"(^|_)(timestamp|time|clock|start|end|since|until|at|when|started|ended|first_seen|last_seen)$")
EPOCH_RANGE = (1.0e9, 4.1e9)  # seconds 2001..2099; ms and ns are 1e3 / 1e9 times that


# ---------------------------------------------------------------- walking answers


def next_calls(node: Any, path: str = "data") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, next call) for every `next` object anywhere in an answer."""
    if isinstance(node, dict):
        nxt = node.get("next")
        if isinstance(nxt, dict):
            yield f"{path}.next", nxt
        for k, v in node.items():
            if k != "next":
                yield from next_calls(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from next_calls(v, f"{path}[{i}]")


def bad_next_calls(answers: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for tool, data in answers.items():
        for where, nxt in next_calls(data):
            name, args = nxt.get("tool"), nxt.get("arguments", {})
            if name not in schemas:
                problems.append(f"{tool} {where}: names {name!r}, which is not served")
                continue
            errors = list(jsonschema.Draft7Validator(schemas[name]).iter_errors(args))
            if errors:
                problems.append(f"{tool} {where}: {name} {args} is refused by its inputSchema: {errors[0].message}")
    return problems


def _is_iso(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in text or re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is not None


def bad_timestamps(node: Any, path: str = "data") -> list[str]:
    """Fields named like a point in time that are not ISO 8601 strings, and numbers
    anywhere that look like epoch seconds, milliseconds or nanoseconds."""
    problems: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}"
            if isinstance(v, str) and TIME_KEY.search(k) and not _is_iso(v):
                problems.append(f"{p} = {v!r} is not ISO 8601")
            elif isinstance(v, float) and TIME_KEY.search(k):
                # (an int under such a name is a counter's value at the window's start or end,
                # as perf_net_health's counters: judged by the epoch ranges below)
                problems.append(f"{p} = {v!r} is a number where a time stamp (ISO 8601) belongs")
            else:
                problems += bad_timestamps(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            problems += bad_timestamps(v, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        for scale in (1.0, 1e3, 1e9):
            if EPOCH_RANGE[0] * scale <= abs(node) <= EPOCH_RANGE[1] * scale and not path.endswith(
                    ("_bytes", "_kb", "bytes", "_bps", "_ns", "_us", "count", "calls", "samples", "segs", "_s")):
                problems.append(f"{path} = {node!r} looks like an epoch time")
                break
    return problems


# ---------------------------------------------------------------- unit: the server's filter


def test_the_server_drops_next_calls_to_unserved_tools_or_with_bad_arguments(
        caplog: pytest.LogCaptureFixture) -> None:
    from perf_mcp.server import _input_validator, drop_unserved_next

    schema = {"type": "object", "additionalProperties": False,
              "properties": {"device": {"type": "string"}, "duration_s": {"type": "number", "minimum": 1,
                                                                          "maximum": 30}}}
    data = {"summary": "s", "findings": [
        {"id": "a", "next": {"tool": "perf_io_latency", "arguments": {"device": "vda", "duration_s": 5}}},
        {"id": "b", "next": {"tool": "perf_not_served", "arguments": {}}},
        {"id": "c", "next": {"tool": "perf_io_latency", "arguments": {"duration_s": 99}}},
        {"id": "d", "next": {"tool": "perf_io_latency", "arguments": {"dev": "vda"}}},
    ], "root_causes": [{"kind": "x", "next": {"tool": "perf_gone"}}]}
    with caplog.at_level(logging.ERROR, logger="perf_mcp.server"):
        dropped = drop_unserved_next("perf_x", data, {"perf_io_latency": object()},
                                     {"perf_io_latency": _input_validator(schema)})
    assert dropped == 4
    assert data["findings"][0]["next"] == {"tool": "perf_io_latency", "arguments": {"device": "vda", "duration_s": 5}}
    assert [f["next"] for f in data["findings"][1:]] == [None, None, None]
    assert data["root_causes"][0]["next"] is None
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged.count("dropped next step of perf_x") == 4
    assert "perf_not_served" in logged and "not served" in logged and "99" in logged
    # and the test's own checker finds the same problems
    bad = {"perf_x": {"findings": [{"next": {"tool": "perf_not_served"}},
                                   {"next": {"tool": "perf_io_latency", "arguments": {"duration_s": 0}}}]}}
    assert len(bad_next_calls(bad, {"perf_io_latency": schema})) == 2
    assert bad_timestamps({"start": "12:01:02", "end": "2026-11-26T12:00:00.000Z", "t": 1764158400.5}) == [
        "data.start = '12:01:02' is not ISO 8601", "data.t = 1764158400.5 looks like an epoch time"]
    # a rate in bytes/s as large as an epoch time is a rate (a 1.3 GB/s reader once looked like one)
    assert bad_timestamps({"rows": [{"read_bps": 1318032128, "write_bps": 1764158400}]}) == []


# ---------------------------------------------------------------- end to end

@contextmanager
def workloads(shared_tmp: Path, user: helpers.UnixUser) -> Iterator[dict[str, int]]:
    """The known load, as `user`; every process stopped by its PID on the way out."""
    script = shared_tmp / "workload.py"
    script.write_text(WORKLOAD)
    script.chmod(0o644)
    work = shared_tmp / "work"
    work.mkdir(exist_ok=True)
    work.chmod(0o1777)
    with socket_free_port() as port, ExitStack() as stack:
        pids: dict[str, int] = {}
        for mode, arg in (("leak", work), ("write", work), ("spawn", "-"), ("connect", port), ("overflow", "-")):
            proc = helpers.spawn_as(user, [PYTHON, script, mode, str(arg), str(LIFE_S)], stdout=subprocess.PIPE,
                                    start_new_session=True)
            stack.callback(helpers.stop_process, proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            pids[f"pid_{mode}"] = proc.pid
        busy = helpers.start_busy(helpers.build_busy_binary(shared_tmp), user=user, max_seconds=LIFE_S)
        stack.callback(helpers.stop_process, busy.proc)
        pids["pid_busy"] = busy.pid
        yield pids


@contextmanager
def socket_free_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, not listening, so nobody takes it meanwhile)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def _fill(args: dict[str, Any], pids: dict[str, int]) -> dict[str, Any]:
    return {k: (pids[v[1:-1]] if isinstance(v, str) and v.startswith("{pid_") else v) for k, v in args.items()}


@pytest.mark.root
@pytest.mark.slow
async def test_every_next_step_of_every_tool_names_a_served_tool_with_valid_arguments(
        module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    broker = module_broker_factory()
    answers: dict[str, Any] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryFile("w+") as log, workloads(shared_tmp, test_users.granted) as pids:
        async with helpers.mcp_client(test_users.granted, broker.socket_path, errlog=log,
                                      read_timeout_seconds=120) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            schemas = {name: t.input_schema for name, t in tools.items()}
            for name in sorted(tools):
                args = _fill(CALLS.get(name, {}), pids)
                result = await client.call_tool(name, args)
                env = helpers.envelope(result)
                if env["success"]:
                    answers[name] = env["data"]
                    assert next(iter(env["data"])) == "summary" and "\n" not in env["data"]["summary"], name
                else:
                    failures[name] = f"{env['error']['code']}: {env['error']['message']}"
            for label, (name, args) in EXTRA_CALLS.items():
                env = helpers.envelope(await client.call_tool(name, _fill(args, pids)))
                if env["success"]:
                    answers[label] = env["data"]
                else:
                    failures[label] = f"{env['error']['code']}: {env['error']['message']}"
        log.seek(0)
        frontend_log = log.read()
    found = [(tool, where, n) for tool, data in answers.items() for where, n in next_calls(data)]
    print(f"\n{len(answers)} tools answered, {len(failures)} failed {failures}; {len(found)} next calls:")
    for tool, where, n in found:
        print(f"  {tool} {where}: {n['tool']} {n.get('arguments', {})}")
    assert not failures, failures
    assert set(answers) == set(tools) | set(EXTRA_CALLS)
    dropped = [line for line in frontend_log.splitlines() if "dropped next step" in line]
    assert not dropped, "the server dropped bad next calls:\n" + "\n".join(dropped)
    assert not bad_next_calls(answers, schemas), bad_next_calls(answers, schemas)
    # The load makes findings with next calls appear (the fd leak alone gives one): the
    # check above is not vacuous.
    assert len(found) >= 3, found
    assert any(n["tool"] == "perf_file_trace" and n["arguments"].get("pid") == pids["pid_leak"]
               for t, _, n in found if t == "perf_fd_trace"), "the fd leak's next call names the leaker"
    # The findings of the threshold rules point to the drill-down on what they name: the busy
    # loop's thread (always runnable: on a CPU over 80% of the time, or waiting for one over
    # 10%) to perf_cpu_profile or perf_runq_latency with its pid; the writer's thread, asleep or
    # in fsync, to perf_offcpu_profile with its pid; the listen-queue drops to perf_tcp_trace.
    def nexts(label: str, *ids: str) -> list[dict[str, Any]]:
        return [f["next"] for f in answers[label]["findings"] if f["id"] in ids and f.get("next")]
    busy = nexts("perf_thread_profile", "process.single_thread_bottleneck", "process.cpu_bound_thread",
                 "process.thread_cpu_contention")
    assert {"tool": "perf_cpu_profile", "arguments": {"pid": pids["pid_busy"], "duration_s": 10}} in busy or any(
        n["tool"] == "perf_runq_latency" and n["arguments"]["pid"] == pids["pid_busy"] for n in busy), \
        answers["perf_thread_profile"]["findings"]
    blocked = nexts("perf_thread_profile#offcpu", "process.thread_blocked")
    assert blocked and blocked[0]["tool"] == "perf_offcpu_profile" and \
        blocked[0]["arguments"]["pid"] == pids["pid_write"], answers["perf_thread_profile#offcpu"]["findings"]
    drops = nexts("perf_net_health", "network.listen_queue_drops")
    assert drops == [{"tool": "perf_tcp_trace", "arguments": {"mode": "lifecycle", "duration_s": 10}}], \
        answers["perf_net_health"]["findings"]
    assert answers["perf_file_trace#opens"]["opens"]["events"]  # the leak's opens, each with its time
    stamps = [p for tool, data in answers.items() for p in bad_timestamps(data, tool)]
    assert not stamps, stamps
