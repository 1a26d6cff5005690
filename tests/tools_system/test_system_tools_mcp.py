"""perf_snapshot, perf_use_check and perf_io_latency through the real MCP
client, with the real frontend running as perfmcp-denied (not in the perf-mcp
group) and no broker: what a client sees, typed errors for bad parameters,
progress, cancellation, and the threshold override file."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import helpers
from systools_util import envelope, ok_data

pytestmark = pytest.mark.root

TOOLS = ("perf_snapshot", "perf_use_check", "perf_io_latency")

# DESIGN.md, "Thresholds (USE)", row for row: (key, warning, critical).
DESIGN_TABLE = {
    "cpu.utilisation_pct": (70.0, 90.0),
    "cpu.run_queue_per_cpu": (1.0, 2.0),
    "memory.available_pct": (20.0, 10.0),
    "memory.swap_used_pct": (0.0, 50.0),
    "disk.utilisation_pct": (60.0, 80.0),
    "disk.queue": (2.0, 8.0),
    "network.drops_per_s": (0.0, 100.0),
    "network.retransmit_pct": (1.0, 5.0),
    "psi.some_avg10_pct": (10.0, 25.0),
    "psi.full_avg10_pct": (5.0, 15.0),
}


def meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


async def test_tools_listed_with_schemas(test_users: helpers.TestUsers, no_broker_socket: Path) -> None:
    async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(TOOLS) <= set(tools)
    snap = tools["perf_snapshot"].input_schema["properties"]
    assert set(snap) == {"include_per_cpu", "include_per_device", "include_psi", "interval_s", "count",
                         "include_processes", "top_n"}
    assert (snap["top_n"]["minimum"], snap["top_n"]["maximum"]) == (1, 50)
    # defaults are stated in the schema or left out of it (compact schemas): when stated, they are these
    assert (snap["interval_s"]["minimum"], snap["interval_s"]["maximum"], snap["interval_s"].get("default", 1.0)) == (0.1, 60, 1.0)
    assert (snap["count"]["minimum"], snap["count"]["maximum"], snap["count"].get("default", 1)) == (1, 60, 1)
    assert [snap[k].get("default", d) for k, d in (("include_per_cpu", False), ("include_per_device", True),
                                                   ("include_psi", True))] == [False, True, True]
    use = tools["perf_use_check"].input_schema["properties"]
    assert set(use) == {"window_s", "top_n", "include_ok", "include_thresholds"}
    assert (use["window_s"]["minimum"], use["window_s"]["maximum"], use["window_s"].get("default", 10.0)) == (1, 600, 10.0)
    assert (use["top_n"]["minimum"], use["top_n"]["maximum"], use["top_n"].get("default", 3)) == (1, 20, 3)
    assert use["include_ok"].get("default", False) is False and use["include_thresholds"].get("default", False) is False
    io = tools["perf_io_latency"].input_schema["properties"]
    assert set(io) == {"device", "duration_s", "mode"}
    assert (io["duration_s"]["minimum"], io["duration_s"]["maximum"], io["duration_s"].get("default", 5.0)) == (1, 30, 5.0)
    assert io["mode"]["enum"] == ["snapshot", "trace"] and io["mode"].get("default", "snapshot") == "snapshot"
    for name in TOOLS:
        t = tools[name]
        assert t.annotations.read_only_hint is True and t.annotations.open_world_hint is False
        assert t.output_schema["properties"]["data"]


# Known page faults: fresh anonymous memory touched page by page, 2,048 first touches per round,
# about 20 rounds a second (a quiet machine may fault less than once a second on its own).
FAULTER = """
import mmap, time
while True:
    m = mmap.mmap(-1, 8 << 20)
    for i in range(0, 8 << 20, 4096):
        m[i] = 1
    m.close()
    time.sleep(0.05)
"""


async def test_snapshot_answers_from_the_ring(test_users: helpers.TestUsers, no_broker_socket: Path) -> None:
    faulter = subprocess.Popen([os.path.realpath(sys.executable), "-c", FAULTER], stdin=subprocess.DEVNULL)
    try:
        await _snapshot_answers_from_the_ring(test_users, no_broker_socket)
    finally:
        helpers.stop_process(faulter)


async def _snapshot_answers_from_the_ring(test_users: helpers.TestUsers, no_broker_socket: Path) -> None:
    async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
        first = ok_data(await client.call_tool("perf_snapshot", {}))  # right after start: waits for sample 2
        await trio.sleep(3.2)
        started = time.monotonic()
        result = await client.call_tool("perf_snapshot", {})
        answered_in = time.monotonic() - started
        data = ok_data(result)
        env = envelope(result)
        per_cpu = ok_data(await client.call_tool("perf_snapshot", {"include_per_cpu": True,
                                                                    "include_per_device": False,
                                                                    "include_psi": False}))
        two = ok_data(await client.call_tool("perf_snapshot", {"interval_s": 2}))
        short = ok_data(await client.call_tool("perf_snapshot", {"interval_s": 0.3}))
    assert first["mode"] == "windows" and first["windows"][0]["interval_s"] > 0
    assert [w["requested_s"] for w in data["windows"]] == [1.0]  # one detailed window at interval_s
    w = data["windows"][0]
    assert w["source"] == "ring" and 0.8 <= w["interval_s"] <= 1.3
    trends = {t["requested_s"]: t for t in data["trends"]}
    # say less: the 1 s trend is the detailed window, and 60 s (limited by the ~4 s of history) repeats 10 s
    assert list(trends) == [10.0] and data["summary"].startswith("Over ") and "\n" not in data["summary"]
    assert 3.0 <= trends[10.0]["interval_s"] <= 6.0
    assert any("10 s window covers only" in x for x in env["warnings"]), env["warnings"]
    print(f"\nperf_snapshot answered in {answered_in * 1000:.0f} ms (client round trip); "
          f"server duration_ms {env['duration_ms']}")
    c = {k: 0.0 for k in ("busy", "user", "nice", "system", "iowait", "irq", "softirq", "steal", "guest", "idle")}
    c.update(w["cpu"])  # zero shares are left out
    total = sum(c[k] for k in ("user", "nice", "system", "iowait", "irq", "softirq", "steal", "guest", "idle"))
    assert abs(total - 100.0) < 0.1, c
    assert math.isclose(c["busy"], 100 - c["idle"] - c["iowait"], abs_tol=0.02)
    for t in trends.values():
        assert t.get("run_queue_mean", 0) >= 0 and t.get("net_rxkb_s", 0) >= 0 and t.get("net_drops_s", 0) >= 0
        assert "cpu" not in t.get("psi_full_pct", {})
    g = w["gauges"]
    assert g["memory"]["total_bytes"] == meminfo_total()
    assert 0 < g["memory"]["available_pct"] <= 100
    assert g.get("run_queue", 0) == max(0, g.get("procs_running", 0) - 1)  # zeros are left out
    # idle interfaces are counted, not listed
    assert len(w.get("interfaces", [])) + w.get("interfaces_idle", 0) >= 1
    assert "per_cpu" not in w and "disks" in w and "cpu" not in w.get("psi", {}).get("cpu", {}).get("full_pct", {})
    # the faulter's 2,048 first touches a round: at least one round in the 1 s window, however loaded
    assert w["memory"].get("faults_s", 0) >= 2048, w["memory"]
    assert w["context_switches_s"] > 0 and w["interrupts_s"] > 0
    shown = {d["device"] for d in w["disks"]}  # devices with I/O only
    whole = set(os.listdir("/sys/block"))
    idle_loops = {d for d in whole if d.startswith("loop")} - shown
    assert all(d in whole or any(d.startswith(x) for x in whole) for d in shown)
    assert w["devices_omitted"] >= len(idle_loops)
    pw = per_cpu["windows"][0]
    assert [c["cpu"] for c in pw["per_cpu"]] == list(range(os.cpu_count() or 1))
    assert "disks" not in pw and pw["disk_totals"]["devices"] >= 1
    assert "psi" not in pw and "psi" not in pw["gauges"]
    assert all("psi_some_pct" not in t for t in per_cpu["trends"])
    assert [w["requested_s"] for w in two["windows"]] == [2]
    assert two["windows"][0]["source"] == "ring" and 1.8 <= two["windows"][0]["interval_s"] <= 2.3
    assert [t["requested_s"] for t in two["trends"]] in ([1, 10], [1])  # 60 s repeats 10 s (short history)
    assert [w["requested_s"] for w in short["windows"]] == [0.3]
    assert short["windows"][0]["source"] == "direct" and 0.25 <= short["windows"][0]["interval_s"] <= 1.0
    assert [t["requested_s"] for t in short["trends"]][:1] == [1]


async def test_snapshot_series_sends_progress_and_stops_on_cancel(
    test_users: helpers.TestUsers, no_broker_socket: Path
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
        data = ok_data(await client.call_tool("perf_snapshot", {"count": 3, "interval_s": 0.5},
                                              progress_callback=on_progress))
        assert data["mode"] == "series" and len(data["windows"]) == 3 and "trends" not in data
        assert [p[0] for p in progress] == [1, 2, 3] and all(p[1] == 3 for p in progress)
        for w in data["windows"]:
            assert w["source"] == "direct" and 0.45 <= w["interval_s"] <= 1.2  # 0.5 s asked; late wake-ups on a busy host
        ends = [w["end"] for w in data["windows"]]
        assert ends == sorted(ends) and len(set(ends)) == 3
        # a 60 x 1 s series, cancelled after about 2 s
        cancelled = time.monotonic()
        with trio.move_on_after(2.0):
            await client.call_tool("perf_snapshot", {"count": 60, "interval_s": 1})
        cancelled = time.monotonic() - cancelled
        after = time.monotonic()
        assert (await client.call_tool("perf_use_check", {"window_s": 1})).is_error is False
        answered = time.monotonic() - after
        # liveness guards only (a hung server fails them); the figures are printed
        assert answered < 30, "the server was still busy with the cancelled series"
    assert cancelled < 30
    print(f"\ncancelled series returned after {cancelled:.2f} s (asked to stop at 2 s); next call answered in "
          f"{answered:.2f} s")


async def test_io_latency_one_device_all_devices_and_unknown(
    test_users: helpers.TestUsers, no_broker_socket: Path
) -> None:
    names = [line.split()[2] for line in Path("/proc/diskstats").read_text().splitlines()]
    disk = next(n for n in names if n in os.listdir("/sys/block") and not n.startswith(("loop", "ram")))
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
        one = ok_data(await client.call_tool("perf_io_latency", {"device": f"/dev/{disk}", "duration_s": 2},
                                             progress_callback=on_progress))
        every = ok_data(await client.call_tool("perf_io_latency", {"duration_s": 1}))
        unknown = await client.call_tool("perf_io_latency", {"device": "nosuchdisk0"})
        newline = await client.call_tool("perf_io_latency", {"device": f"{disk}\n", "duration_s": 1})
        still = await client.call_tool("perf_io_latency", {"device": disk, "duration_s": 1})
    assert one["device"] == disk and [d["device"] for d in one["devices"]] == [disk]
    assert one["mode"] == "snapshot" and 1.9 < one["duration_s"] < 2.5
    row = one["devices"][0]
    assert row["status"] in ("ok", "warning", "critical") and row["whole_disk"] is True
    for key in ("r_await_ms", "w_await_ms", "util_pct", "aqu_sz", "r_s", "w_s", "rkb_s", "wkb_s",
                "rareq_sz_kb", "wareq_sz_kb"):
        assert row[key] is not None and row[key] >= 0, key
    assert progress == [1, 2]
    assert disk in {d["device"] for d in every["devices"]}
    err = envelope(unknown)["error"]
    assert unknown.is_error and err["code"] == "DEVICE_NOT_FOUND", err
    assert disk in err["suggestion"] and "nosuchdisk0" in err["message"]
    assert newline.is_error and envelope(newline)["error"]["code"] in ("DEVICE_NOT_FOUND", "INVALID_PARAMS")
    assert still.is_error is False


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("perf_snapshot", {"interval_s": 0}, "interval_s"),
    ("perf_snapshot", {"interval_s": 0.05}, "interval_s"),
    ("perf_snapshot", {"interval_s": 61}, "interval_s"),
    ("perf_snapshot", {"interval_s": -1}, "interval_s"),
    ("perf_snapshot", {"interval_s": "NaN"}, "interval_s"),
    ("perf_snapshot", {"interval_s": "inf"}, "interval_s"),
    ("perf_snapshot", {"interval_s": "1; reboot"}, "interval_s"),
    ("perf_snapshot", {"count": 0}, "count"),
    ("perf_snapshot", {"count": 61}, "count"),
    ("perf_snapshot", {"count": 2.5}, "count"),
    ("perf_snapshot", {"count": 2**31}, "count"),
    ("perf_snapshot", {"count": "$(id)"}, "count"),
    ("perf_snapshot", {"include_per_cpu": "yes"}, "include_per_cpu"),
    ("perf_snapshot", {"include_psi": [1]}, "include_psi"),
    ("perf_snapshot", {"include_per_device": {"a": 1}}, "include_per_device"),
    ("perf_snapshot", {"interval": 1}, "interval"),
    ("perf_use_check", {"window_s": 0}, "window_s"),
    ("perf_use_check", {"window_s": 0.5}, "window_s"),
    ("perf_use_check", {"window_s": 601}, "window_s"),
    ("perf_use_check", {"window_s": "nan"}, "window_s"),
    ("perf_use_check", {"window_s": None}, "window_s"),
    ("perf_use_check", {"window_s": True}, "window_s"),
    ("perf_use_check", {"resource": "cpu"}, "resource"),
    ("perf_use_check", {"top_n": 0}, "top_n"),
    ("perf_use_check", {"top_n": 21}, "top_n"),
    ("perf_use_check", {"include_ok": "yes"}, "include_ok"),
    ("perf_use_check", {"include_thresholds": [True]}, "include_thresholds"),
    ("perf_io_latency", {"duration_s": 0}, "duration_s"),
    ("perf_io_latency", {"duration_s": 31}, "duration_s"),
    ("perf_io_latency", {"duration_s": "NaN"}, "duration_s"),
    ("perf_io_latency", {"duration_s": "-inf"}, "duration_s"),
    ("perf_io_latency", {"mode": "Trace"}, "mode"),
    ("perf_io_latency", {"mode": "snapshot; rm -rf /"}, "mode"),
    ("perf_io_latency", {"device": ""}, "device"),
    ("perf_io_latency", {"device": "../../etc/passwd"}, "device"),
    ("perf_io_latency", {"device": "sda; reboot"}, "device"),
    ("perf_io_latency", {"device": "$(id)"}, "device"),
    ("perf_io_latency", {"device": "vda}"}, "device"),
    ("perf_io_latency", {"device": "a\x00b"}, "device"),
    ("perf_io_latency", {"device": "x" * 100}, "device"),
    ("perf_io_latency", {"device": 8}, "device"),
    ("perf_io_latency", {"device": ["vda"]}, "device"),
]


async def test_bad_params_are_typed_errors_and_the_server_keeps_serving(
    test_users: helpers.TestUsers, no_broker_socket: Path
) -> None:
    async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
        for tool, args, field in HOSTILE:
            result = await client.call_tool(tool, args)
            env = envelope(result)
            assert result.is_error is True, (tool, args)
            assert env["success"] is False and env["error"]["code"] == "INVALID_PARAMS", (tool, args, env)
            assert field in env["error"]["message"], (tool, args, env["error"])
            assert env["error"]["suggestion"] and env["error"]["recoverable"] is True  # INVALID_PARAMS: fix and retry
            assert result.content[0].text.startswith(f"{tool} failed: INVALID_PARAMS")
        # a float NaN from the client: JSON has no NaN, so it arrives as null (or NaN) and is refused
        for tool, field in (("perf_snapshot", "interval_s"), ("perf_use_check", "window_s"),
                            ("perf_io_latency", "duration_s")):
            result = await client.call_tool(tool, {field: float("nan")})
            assert result.is_error and envelope(result)["error"]["code"] == "INVALID_PARAMS", (tool, envelope(result))
        # still serving, every tool
        assert (await client.call_tool("perf_snapshot", {})).is_error is False
        assert (await client.call_tool("perf_use_check", {"window_s": 1})).is_error is False
        assert (await client.call_tool("perf_io_latency", {"duration_s": 1})).is_error is False
    print(f"\nhostile parameter sets tried: {len(HOSTILE) + 3}, all answered INVALID_PARAMS")


async def test_use_check_table_and_the_design_thresholds(
    test_users: helpers.TestUsers, no_broker_socket: Path
) -> None:
    async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
        await trio.sleep(2.5)
        result = await client.call_tool("perf_use_check", {"include_ok": True, "include_thresholds": True})
    data = ok_data(result)
    assert [r["name"] for r in data["table"]][:5] == ["cpu", "memory", "disk", "filesystem", "network"]
    table = {t["key"]: (t["warning"], t["critical"]) for t in data["thresholds"]}
    assert {k: table.get(k) for k in DESIGN_TABLE} == DESIGN_TABLE
    # Rows beyond DESIGN.md's table are perf-mcp's own, and say so.
    sources = {t["key"]: t["source"] for t in data["thresholds"]}
    assert all(sources[k].startswith("perf-mcp") for k in set(table) - set(DESIGN_TABLE)), sources
    assert sources["memory.swap_used_pct"].startswith("DESIGN.md (info only")
    assert data["thresholds_source"].startswith("defaults")
    assert data["requested_window_s"] == 10 and 1.5 <= data["window_s"] <= 4
    cpu = {c["id"]: c for r in data["table"] if r["name"] == "cpu" for kind in ("utilisation", "saturation", "errors") for c in r.get(kind, [])}
    assert cpu["cpu.utilisation"]["warning"] == 70 and cpu["cpu.utilisation"]["critical"] == 90
    ncpu = os.cpu_count() or 1
    assert cpu["cpu.run_queue"]["warning"] == ncpu and cpu["cpu.run_queue"]["critical"] == 2 * ncpu
    # Figures the test reads itself from /proc, against the tool's (statuses at the
    # thresholds' boundaries are proven with synthetic samples in test_use_rules.py).
    meminfo = {ln.split(":")[0]: int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()}
    avail_pct = 100 * meminfo["MemAvailable"] / meminfo["MemTotal"]
    mem = {c["id"]: c for r in data["table"] if r["name"] == "memory" for kind in ("utilisation", "saturation", "errors") for c in r.get(kind, [])}
    avail = next(c for c in mem.values() if (c["threshold"] or "").endswith("available_pct"))
    assert abs(avail["value"] - avail_pct) < 3, (avail, avail_pct)
    assert (avail["warning"], avail["critical"]) == (20, 10)
    if avail_pct > 25:  # well clear of the 20 % warning line on this machine
        assert avail["status"] == "ok", avail
    assert cpu["cpu.utilisation"]["value"] is not None and 0 <= cpu["cpu.utilisation"]["value"] <= 100
    for r in data["table"]:
        if r.get("since") is not None:
            assert r["since"]["status"] == r["status"] and r["since"]["duration_s"] > 0
    text = result.content[0].text
    assert text.startswith("USE check over") and "cpu" in text


async def test_threshold_override_file(test_users: helpers.TestUsers, no_broker_socket: Path,
                                       shared_tmp: Path) -> None:
    good = shared_tmp / "thresholds.toml"
    good.write_text('[cpu.utilisation_pct]\nwarning = 0.0\ncritical = 99.5\n\n[disk]\nqueue = { warning = 1.5 }\n'
                    '[network.retransmit_pct]\nwarning = 9\ncritical = 3\n[nosuch.row]\nwarning = 1\n')
    bad = shared_tmp / "bad.toml"
    bad.write_text("[cpu.utilisation_pct\nwarning = = 1\n")
    good.chmod(0o644)
    bad.chmod(0o644)
    async with helpers.mcp_client(test_users.denied, no_broker_socket,
                                  env={"PERF_MCP_THRESHOLDS": str(good)}) as client:
        await trio.sleep(2.2)
        result = await client.call_tool("perf_use_check", {"window_s": 2, "include_ok": True,
                                                            "include_thresholds": True})
    data, env = ok_data(result), envelope(result)
    rows = {t["key"]: t for t in data["thresholds"]}
    assert (rows["cpu.utilisation_pct"]["warning"], rows["cpu.utilisation_pct"]["critical"]) == (0.0, 99.5)
    assert rows["cpu.utilisation_pct"]["source"] == str(good) and data["thresholds_source"] == str(good)
    assert (rows["disk.queue"]["warning"], rows["disk.queue"]["critical"]) == (1.5, 8.0)
    assert (rows["network.retransmit_pct"]["warning"], rows["network.retransmit_pct"]["critical"]) == (1.0, 5.0)
    assert any("network.retransmit_pct" in w and "must be" in w for w in env["warnings"]), env["warnings"]
    assert any("nosuch.row" in w for w in env["warnings"]), env["warnings"]
    util = next(c for r in data["table"] if r["name"] == "cpu" for kind in ("utilisation", "saturation", "errors") for c in r.get(kind, []) if c["id"] == "cpu.utilisation")
    # the value is shown rounded: on a limit (0.0 shown for 0.004, 99.5 for 99.52) either side's status
    v = util["value"]
    want = {"ok", "warning"} if v == 0 else {"warning"} if v < 99.5 else {"warning", "critical"} if v == 99.5 \
        else {"critical"}
    assert util["warning"] == 0.0 and util["status"] in want, util
    if util["status"] != "ok":  # a cpu finding that comes from the override
        assert any(f["resource"] == "cpu" for f in data["findings"])
    async with helpers.mcp_client(test_users.denied, no_broker_socket,
                                  env={"PERF_MCP_THRESHOLDS": str(bad)}) as client:
        result = await client.call_tool("perf_use_check", {"window_s": 1, "include_thresholds": True})
    data, env = ok_data(result), envelope(result)
    table = {t["key"]: (t["warning"], t["critical"]) for t in data["thresholds"]}
    assert {k: table.get(k) for k in DESIGN_TABLE} == DESIGN_TABLE
    assert any(str(bad) in w and "not valid TOML" in w for w in env["warnings"]), env["warnings"]
