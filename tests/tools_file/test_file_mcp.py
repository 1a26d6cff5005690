"""perf_file_trace through the real MCP client, the real frontend as perfmcp-granted
and real brokers as root, every rung that can run here:

  opens: opensnoop (default broker), bpftrace opens.bt (--disable opensnoop);
  slow_ops: fsslower skipped (no kprobes) -> bpftrace fileslow.bt;
  file_lifecycle: filelife skipped (no kprobes) -> bpftrace filelife.bt;
  all: the libbpf trio skipped (no kprobes) -> the three bpftrace scripts side by side.

Known answers (file_util.DRIVER, pid known: setpriv execs in place): exactly N opens of
a marker path and F failed opens (ENOENT) of a missing one; R fast preads (never
listed); K reads of each of two FIFOs whose writer waits GAP_MS between lines (one
FIFO opened before the trace: its path comes from /proc/PID/fd after it); L files
created (the first with O_EXCL) and deleted AGE_MS later. The workload starts only
once the tracer is attached.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from typing import Any

import jsonschema
import pytest
import trio

import helpers
from file_util import LIFE_BT_TP, OPENS_BT_TP, OPENSNOOP_TP, SLOW_BT_TP, make_dir, wait_attached, workload
from helpers import envelope, ok_data

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOL = "perf_file_trace"
DURATION = 3
N, F, R = 500, 200, 300
K, GAP_MS = 3, 200
L, AGE_MS = 5, 300
MIN_MS = 100
# A FIFO read waits for the writer's next line: GAP_MS after the previous one (the
# writer sleeps GAP_MS per line), give or take scheduling. The writer starts its first
# gap when signalled, just before the first read; on a loaded 2-core machine a sleep
# overshoots by tens of ms, a reader may be late to start its read.
READ_LOW_MS, READ_HIGH_MS = GAP_MS - 40, GAP_MS + 200
# A file lives from its open(O_CREAT) to its unlink: AGE_MS of sleep plus the other
# creates/unlinks (microseconds each) and scheduling.
AGE_LOW_MS, AGE_HIGH_MS = AGE_MS, AGE_MS + 200
KPROBES = "this kernel lacks kprobes (CONFIG_KPROBES; /sys/kernel/tracing/kprobe_events)"


@pytest.fixture(scope="module")
def fdir() -> Any:
    d = make_dir()
    try:
        yield d
    finally:
        helpers.remove_tree(d)


async def traced(client: Any, broker: helpers.RunningBroker, args: dict[str, Any], wanted: frozenset[str], w: Any,
                 tracers: int = 1) -> tuple[Any, float]:
    out: dict[str, Any] = {}

    async def call() -> None:
        out["result"] = await client.call_tool(TOOL, args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        attach_s = await wait_attached(broker.pid, wanted, sys_exit_openat=tracers)
        w.start()
    w.wait_done()
    return out["result"], attach_s


def check_opens(o: dict[str, Any], w: Any, bpftrace: bool) -> None:
    present, missing = w.path("present"), w.path("missing")
    paths = {c["path"]: c for c in o["by_path"]}
    assert paths[present]["opens"] == w.n + 1 and paths[present]["failed"] == 0, paths[present]  # + the pread fd
    assert paths[missing]["opens"] == w.fails and paths[missing]["failed"] == w.fails
    assert paths[present]["top_pid"] == w.pid and paths[missing]["top_pid"] == w.pid
    enoent = next(f for f in o["failures"] if f["error"] == "ENOENT")
    assert enoent["top_path"] == missing and enoent["top_path_count"] == w.fails and enoent["example_pid"] == w.pid
    mine = [e for e in o["events"] if e["path"] in (present, missing)]
    assert all(e["pid"] == w.pid and e["comm"] == "python3" for e in mine)
    failed = [e for e in mine if e["path"] == missing]
    assert failed and all(e["error"] == "ENOENT" and "fd" not in e for e in failed)
    ok = [e for e in mine if e["path"] == present]
    assert ok and all(e["flags"] == "O_RDONLY|O_CLOEXEC" and e["fd"] >= 3 for e in ok), ok[:3]
    assert all(("t_s" in e) == bpftrace and ("time" in e) != bpftrace for e in mine)


def check_slow(s: dict[str, Any], w: Any) -> list[float]:
    fa, fb = w.path("fifoA"), w.path("fifoB")
    reads = [e for e in s["events"] if e["path"] in (fa, fb)]
    assert len([e for e in reads if e["path"] == fa]) == w.k, reads
    assert len([e for e in reads if e["path"] == fb]) == w.k, reads
    for e in reads:
        assert e["op"] == "read" and e["pid"] == w.pid and e["file_kind"] == "fifo", e
        assert READ_LOW_MS <= e["latency_ms"] <= READ_HIGH_MS, e
        assert e["path_source"] == ("proc_after" if e["path"] == fa else "trace"), e
    # the fast preads of the present file are timed but never listed
    assert not [e for e in s["events"] if e["path"] == w.path("present")]
    assert s["min_latency_ms"] == MIN_MS and all(e["latency_ms"] >= MIN_MS for e in s["events"])
    lat = [e["latency_ms"] for e in reads]
    assert GAP_MS - 20 <= statistics.median(lat) <= GAP_MS + 60, lat
    ops = {o["op"]: o for o in s["by_op"]}
    assert ops["read"]["slow"] >= 2 * w.k
    return lat


def check_life(lc: dict[str, Any], w: Any) -> list[float]:
    mine = [e for e in lc["events"] if e["path"].startswith(w.path("tmp"))]
    assert sorted(e["path"] for e in mine) == sorted(w.path(f"tmp{i}") for i in range(w.lives))
    for e in mine:
        assert e["pid"] == w.pid and e["created_by_pid"] == w.pid and e["comm"] == "python3", e
        assert AGE_LOW_MS <= e["age_ms"] <= AGE_HIGH_MS, e
        assert (e.get("new_file") is True) == (e["path"] == w.path("tmp0")), e  # only tmp0 had O_EXCL
    return [e["age_ms"] for e in mine]


async def test_opens_opensnoop_exact_counts_findings_and_busy(module_broker_factory: Any, system_bus: None,
                                                              test_users: helpers.TestUsers, fdir: Any) -> None:
    broker = module_broker_factory()
    with workload(fdir, test_users.granted, n=N, fails=F, reads=R) as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client, \
                helpers.mcp_client(test_users.granted, broker.socket_path) as second:
            tool = next(t for t in (await client.list_tools()).tools if t.name == TOOL)
            out: dict[str, Any] = {}

            async def call() -> None:
                out["r"] = await client.call_tool(TOOL, {"duration_s": DURATION, "pid": w.pid,
                                                         "max_events_listed": 1000})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                attach_s = await wait_attached(broker.pid, OPENSNOOP_TP)
                busy = envelope(await second.call_tool(TOOL, {"duration_s": 1}))
                began = time.time()
                w.start()
            answered = time.time()
            w.wait_done()
    env = envelope(out["r"])
    jsonschema.validate(env, tool.output_schema)
    data = ok_data(out["r"])
    assert data["method"] == "opensnoop (libbpf-tools)" and data["backend"] == "libbpf" and data["skipped"] == []
    assert data["mode"] == "opens" and data["slow_ops"] is None and data["file_lifecycle"] is None
    o = data["opens"]
    check_opens(o, w, bpftrace=False)
    # opensnoop's HH:MM:SS becomes ISO 8601 UTC: the workload's opens happened between its start and
    # the answer (to the second: opensnoop prints whole seconds)
    stamps = [dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
              for e in o["events"] if e["pid"] == w.pid]
    assert stamps and all(e["time"].endswith("Z") for e in o["events"])
    assert int(began) <= min(stamps) <= max(stamps) <= answered, (began, stamps[:3], answered)
    assert o["path_max_bytes"] == 254
    assert busy["success"] is False and busy["error"]["code"] == "PROFILER_BUSY", busy
    ids = {f["id"]: f for f in data["findings"]}
    fo = ids["file.failed_opens"]
    assert fo["severity"] == "warning" and fo["metrics"]["path_failed"] == F and w.path("missing") in fo["title"]
    assert f'"pid": {w.pid}' in fo["suggestion"] and "perf_file_trace" in fo["suggestion"]
    assert fo["evidence"][0]["value"] == F
    ro = ids["file.repeated_opens"]
    assert w.path("present") in ro["title"] and ro["metrics"]["opens"] == N + 1 and f'"pid": {w.pid}' in ro["suggestion"]
    first = out["r"].content[0].text.splitlines()[0]
    assert first.startswith(f"file trace {DURATION} s (opens): ") and f"{F} failed" in first
    print(f"\nopensnoop: {o['by_path'][0]['opens']} opens of the marker (made {N} + 1), {F}/{F} ENOENT, pid {w.pid}; "
          f"attached after {attach_s:.1f} s; concurrent call {busy['error']['code']}")


async def test_opens_bpftrace_rung_and_name_pattern(module_broker_factory: Any, system_bus: None,
                                                    test_users: helpers.TestUsers, fdir: Any) -> None:
    broker = module_broker_factory("--disable", "opensnoop")
    with workload(fdir, test_users.granted, n=N, fails=F, reads=R) as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            # system-wide, the marker as a frontend filter (a glob)
            result, attach_s = await traced(client, broker, {"duration_s": DURATION, "name_pattern": f"*{w.marker}*",
                                                             "max_events_listed": 1000}, OPENS_BT_TP, w)
    env = envelope(result)
    data = ok_data(result)
    assert data["backend"] == "bpftrace" and data["method"].startswith("bpftrace opens.bt")
    assert data["skipped"] == [{"method": "opensnoop (libbpf-tools)", "backend": "libbpf",
                                "reason": "opensnoop is disabled by the administrator "
                                          "(perf-mcp-broker --disable opensnoop)"}]
    assert any(x.startswith("opensnoop (libbpf-tools) skipped") for x in env["warnings"])
    o = data["opens"]
    check_opens(o, w, bpftrace=True)
    assert all(w.marker in e["path"] for e in o["events"]) and data["filters"] == {"name_pattern": f"*{w.marker}*"}
    assert o["path_max_bytes"] == 63
    ts = [e["t_s"] for e in o["events"]]
    assert ts == sorted(ts) and 0 < ts[0] <= DURATION
    print(f"\nopens.bt: {o['by_path'][0]['opens']} opens of the marker, {o['failed']} ENOENT (system-wide, "
          f"name_pattern), attached after {attach_s:.1f} s")


async def test_slow_ops_fifo_reads_with_paths(module_broker_factory: Any, system_bus: None,
                                              test_users: helpers.TestUsers, fdir: Any) -> None:
    broker = module_broker_factory()
    with workload(fdir, test_users.granted, reads=R, k=K, gap_ms=GAP_MS) as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, attach_s = await traced(client, broker, {"duration_s": DURATION, "mode": "slow_ops",
                                                             "pid": w.pid, "min_latency_ms": MIN_MS}, SLOW_BT_TP, w)
    data = ok_data(result)
    assert data["backend"] == "bpftrace" and data["method"].startswith("bpftrace fileslow.bt")
    assert data["skipped"] == [{"method": "fsslower -t ext4 (libbpf-tools; kprobes)", "backend": "libbpf",
                                "reason": KPROBES}]
    s = data["slow_ops"]
    lat = check_slow(s, w)
    f = next(x for x in data["findings"] if x["id"] == "file.slow_io")
    assert f["severity"] == "info" and "FIFO" in f["detail"] and f["evidence"][0]["threshold"] == MIN_MS
    print(f"\nfileslow.bt: {len(lat)} FIFO reads (made {2 * K}) of {min(lat)}-{max(lat)} ms, median "
          f"{statistics.median(lat)} ms (writer gap {GAP_MS} ms); {R} fast preads not listed; "
          f"attached after {attach_s:.1f} s")


async def test_file_lifecycle_ages(module_broker_factory: Any, system_bus: None, test_users: helpers.TestUsers,
                                   fdir: Any) -> None:
    broker = module_broker_factory()
    with workload(fdir, test_users.granted, lives=L, age_ms=AGE_MS) as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, attach_s = await traced(client, broker, {"duration_s": DURATION, "mode": "file_lifecycle",
                                                             "pid": w.pid}, LIFE_BT_TP, w)
    env = envelope(result)
    data = ok_data(result)
    assert data["backend"] == "bpftrace" and data["method"].startswith("bpftrace filelife.bt")
    assert data["skipped"] == [{"method": "filelife (libbpf-tools; kprobes)",
                                "backend": "libbpf", "reason": KPROBES}]
    lc = data["file_lifecycle"]
    ages = check_life(lc, w)
    assert lc["created_and_deleted"] == L and lc["short_lived"] == L and lc["deleted"] == L
    assert lc["created"] == L  # the driver's other file is written before the trace starts
    assert any("O_CREAT" in x for x in env["warnings"])
    print(f"\nfilelife.bt: {len(ages)}/{L} files, ages {min(ages)}-{max(ages)} ms (kept {AGE_MS} ms); "
          f"attached after {attach_s:.1f} s")


async def test_mode_all_three_side_by_side(module_broker_factory: Any, system_bus: None,
                                           test_users: helpers.TestUsers, fdir: Any) -> None:
    broker = module_broker_factory()
    with workload(fdir, test_users.granted, n=N, fails=F, reads=R, k=K, gap_ms=GAP_MS, lives=L, age_ms=AGE_MS) as w:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            result, attach_s = await traced(client, broker, {"duration_s": DURATION + 1, "mode": "all", "pid": w.pid,
                                                             "min_latency_ms": MIN_MS, "max_events_listed": 1000},
                                            OPENS_BT_TP | SLOW_BT_TP | LIFE_BT_TP, w, tracers=3)
    data = ok_data(result)
    assert data["backend"] == "bpftrace" and data["mode"] == "all"
    assert data["method"] == "bpftrace opens.bt + fileslow.bt + filelife.bt (syscall tracepoints)"
    assert data["skipped"] == [{"method": "opensnoop + fsslower + filelife (libbpf-tools; kprobes)",
                                "backend": "libbpf", "reason": KPROBES}]
    check_opens(data["opens"], w, bpftrace=True)
    lat = check_slow(data["slow_ops"], w)
    ages = check_life(data["file_lifecycle"], w)
    ids = {f["id"] for f in data["findings"]}
    assert {"file.failed_opens", "file.repeated_opens", "file.slow_io"} <= ids
    head = result.content[0].text.splitlines()[0]
    assert f"{F} failed" in head and "calls over 100 ms" in head and f"{L} files created and deleted" in head
    print(f"\nmode all: opens {data['opens']['total']}, {len(lat)} FIFO reads median {statistics.median(lat)} ms, "
          f"{len(ages)} files aged {min(ages)}-{max(ages)} ms; attached after {attach_s:.1f} s")


async def test_typed_errors_and_denied_user(module_broker_factory: Any, system_bus: None,
                                            test_users: helpers.TestUsers) -> None:
    broker = module_broker_factory()
    gone = helpers.spawn_as(test_users.granted, ["/bin/true"])
    gone.wait()
    hostile: list[tuple[dict[str, Any], str]] = [
        ({"duration_s": 0}, "INVALID_PARAMS"),
        ({"duration_s": 31}, "INVALID_PARAMS"),
        ({"duration_s": 1.5}, "INVALID_PARAMS"),
        ({"mode": "everything"}, "INVALID_PARAMS"),
        ({"mode": "opens; id"}, "INVALID_PARAMS"),
        ({"pid": 0}, "INVALID_PARAMS"),
        ({"pid": 4194305}, "INVALID_PARAMS"),
        ({"min_latency_ms": -1}, "INVALID_PARAMS"),
        ({"min_latency_ms": 10001}, "INVALID_PARAMS"),
        ({"name_pattern": ""}, "INVALID_PARAMS"),
        ({"name_pattern": "x" * 257}, "INVALID_PARAMS"),
        ({"max_events_listed": 0}, "INVALID_PARAMS"),
        ({"max_events_listed": 1001}, "INVALID_PARAMS"),
        ({"script": "tracepoint:syscalls:sys_enter_openat { }"}, "INVALID_PARAMS"),
        ({"pid": gone.pid}, "PID_NOT_FOUND"),
    ]
    async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
        for args, code in hostile:
            env = envelope(await client.call_tool(TOOL, args))
            assert env["success"] is False and env["error"]["code"] == code, (args, env)
            assert env["error"]["suggestion"]
        # a hostile pattern is only text to match, in the frontend
        ok = ok_data(await client.call_tool(TOOL, {"duration_s": 1, "name_pattern": '"; } $(id) ../\\x00'}))
        assert ok["opens"]["total"] == 0 and ok["filters"]["name_pattern"] == '"; } $(id) ../\\x00'
    async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
        denied = envelope(await client.call_tool(TOOL, {"duration_s": 1, "mode": "all"}))
    assert denied["error"]["code"] == "PERMISSION_DENIED", denied
    assert [line for line in broker.log_text().splitlines() if '"kind": "file_trace"' in line and "$(id)" in line] == []
    print(f"\nhostile parameter sets: {len(hostile)} typed errors; denied user: {denied['error']['code']}")
