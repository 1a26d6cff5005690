"""Cross-checks through the tools (the real frontend as perfmcp-denied and a
real MCP client), against sysstat under a real load:

- perf_snapshot CPU split vs `mpstat` under stress-ng (2 workers at 60%);
- perf_snapshot per-device rows and perf_io_latency vs `iostat -x` under a
  rate-limited fio on a loop device (never the machine's disk);
- perf_snapshot interface rates for lo vs `sar -n DEV` under a paced iperf3
  flow over loopback.

Alignment: each sysstat tool prints right after it reads the counters (its
header, or its first report since boot), so the tool call is made when that
line arrives; a series (count > 1) then reads on the same interval. The
windows start within the MCP round trip (a few ms) of each other.

Tolerances (stated, and why):
- CPU: mpstat works in 10 ms ticks over 2 CPUs; a few ticks of offset and the
  duty-cycled load move a figure by a point or two per 1 s interval: each
  figure within 4 points per interval, within 3 points on the 3 s mean.
- Disk: iostat divides by /proc/uptime (10 ms resolution), we by the
  monotonic clock; the windows are offset by the MCP round trip under a
  rate-limited but not perfectly steady load: rates within 10% (+2/s), %util
  within 8 points, aqu-sz within 0.1 + 20%, awaits (tens of microseconds on a
  loop device, printed with 2 decimals) within 0.03 ms + 25%, request sizes
  within 0.5 kB.
- Network: sar's kB is 1024 bytes, as ours; a paced flow: packets and kB/s
  within 8% (+5/s).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

import helpers
from systools_util import load, loop_device, need, ok_data, stop_group

pytestmark = [pytest.mark.root, pytest.mark.slow]

T = TypeVar("T")
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "S_TIME_FORMAT": "ISO", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}


async def alongside(argv: list[str], trigger: Callable[[str], bool], call: Callable[[], Awaitable[T]],
                    timeout: float = 30.0) -> tuple[T, list[str]]:
    """Run a sysstat reporter; make the tool call when `trigger` matches one of
    its lines; return the call's result and every line the reporter printed."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=C_LOCALE, start_new_session=True)
    assert proc.stdout is not None
    lines: list[str] = []
    triggered = trio.Event()

    async def read_all() -> None:
        assert proc.stdout is not None
        while line := await trio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True):
            lines.append(line)
            if not triggered.is_set() and trigger(line):
                triggered.set()

    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                await triggered.wait()
                result = await call()
        assert proc.wait(timeout=5) == 0
    finally:
        stop_group(proc)
    return result, lines


def close(ours: float | None, theirs: float, rel: float, absolute: float) -> bool:
    return ours is not None and abs(ours - theirs) <= absolute + rel * abs(theirs)


MPSTAT_KEYS = {"usr": "user", "nice": "nice", "sys": "system", "iowait": "iowait", "irq": "irq", "soft": "softirq",
               "steal": "steal", "idle": "idle"}


async def test_snapshot_cpu_split_agrees_with_mpstat(test_users: helpers.TestUsers, no_broker_socket: Path) -> None:
    mpstat, stress = need("mpstat"), need("stress-ng")
    async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
        with load([stress, "--cpu", "2", "--cpu-load", "60", "--timeout", "30s"]):
            await trio.sleep(2.0)
            result, lines = await alongside(
                [mpstat, "-o", "JSON", "1", "3"], lambda line: '"statistics"' in line,
                lambda: client.call_tool("perf_snapshot", {"count": 3, "interval_s": 1}))
    data = ok_data(result)
    stats = json.loads("".join(lines))["sysstat"]["hosts"][0]["statistics"]
    theirs = [next(c for c in s["cpu-load"] if c["cpu"] == "all") for s in stats]
    ours = [{**dict.fromkeys(MPSTAT_KEYS.values(), 0.0), **w["cpu"]} for w in data["windows"]]  # zeros left out
    assert len(theirs) == 3 and len(ours) == 3
    assert sum(t["usr"] for t in theirs) / 3 >= 40, f"stress-ng did not load the CPUs: {theirs}"
    worst: dict[str, float] = {}
    mismatches = []
    for i, (t, o) in enumerate(zip(theirs, ours, strict=True)):
        for key, field in MPSTAT_KEYS.items():
            delta = abs(o[field] - float(t[key]))
            worst[key] = max(worst.get(key, 0.0), delta)
            if delta > 4.0:
                mismatches.append(f"interval {i + 1} {key}: ours {o[field]} mpstat {t[key]}")
    for key, field in MPSTAT_KEYS.items():
        mean_delta = abs(sum(o[field] for o in ours) / 3 - sum(float(t[key]) for t in theirs) / 3)
        if mean_delta > 3.0:
            mismatches.append(f"3 s mean {key}: off by {mean_delta:.2f}")
    print(f"\nmpstat: {theirs}\nours:   {ours}\nworst per-interval deviation (points): "
          + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    assert not mismatches, mismatches


def _iostat_reports(lines: list[str], name: str) -> list[dict[str, Any]]:
    return [json.loads(line.strip().rstrip(",")) for line in lines
            if '"disk_device"' in line and f'"{name}"' in line]


DISK_FIELDS = (  # ours, iostat, relative, absolute
    ("r_s", "r/s", 0.10, 2.0), ("w_s", "w/s", 0.10, 2.0), ("rkb_s", "rkB/s", 0.10, 8.0),
    ("wkb_s", "wkB/s", 0.10, 8.0), ("util_pct", "util", 0.0, 8.0), ("aqu_sz", "aqu-sz", 0.20, 0.1),
    ("r_await_ms", "r_await", 0.25, 0.03), ("w_await_ms", "w_await", 0.25, 0.03),
    ("rareq_sz_kb", "rareq-sz", 0.0, 0.5), ("wareq_sz_kb", "wareq-sz", 0.0, 0.5),
)


def _compare_disk(ours: dict[str, Any], ref: dict[str, Any], label: str, worst: dict[str, float]) -> list[str]:
    out = []
    for field, key, rel, absolute in DISK_FIELDS:
        value = ours.get(field, 0.0)  # zero columns are left out of perf_snapshot's rows
        worst[key] = max(worst.get(key, 0.0), abs((value or 0) - ref[key]) / max(abs(ref[key]), 1e-9) * 100)
        if not close(value, ref[key], rel, absolute):
            out.append(f"{label} {key}: ours {value} iostat {ref[key]}")
    return out


async def test_device_rows_agree_with_iostat(test_users: helpers.TestUsers, no_broker_socket: Path) -> None:
    iostat, fio = need("iostat"), need("fio")
    with loop_device() as device:
        name = os.path.basename(device)
        async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
            with load([fio, "--name=xcheck", f"--filename={device}", "--ioengine=psync", "--direct=1",
                       "--rw=randrw", "--bs=4k", "--rate_iops=2500", "--time_based", "--runtime=30",
                       "--output=/dev/null"]):
                await trio.sleep(1.5)  # let fio reach its rate
                snap, snap_lines = await alongside(
                    [iostat, "-x", "-d", "-o", "JSON", "2", "3", name], lambda line: '"disk_device"' in line,
                    lambda: client.call_tool("perf_snapshot", {"count": 2, "interval_s": 2}))
                io, io_lines = await alongside(
                    [iostat, "-x", "-d", "-o", "JSON", "3", "2", name], lambda line: '"disk_device"' in line,
                    lambda: client.call_tool("perf_io_latency", {"device": name, "duration_s": 3}))
    snap_refs, io_refs = _iostat_reports(snap_lines, name), _iostat_reports(io_lines, name)
    assert len(snap_refs) == 3 and len(io_refs) == 2, "iostat printed no report for the loop device"
    windows = ok_data(snap)["windows"]
    rows = [next(d for d in w["disks"] if d["device"] == name) for w in windows]
    io_row = ok_data(io)["devices"][0]
    assert rows[0]["r_s"] > 500 and rows[0]["w_s"] > 500 and snap_refs[1]["r/s"] > 500, "fio did not run"
    worst: dict[str, float] = {}
    mismatches = []
    for i, (ours, ref) in enumerate(zip(rows, snap_refs[1:], strict=True)):
        mismatches += _compare_disk(ours, ref, f"perf_snapshot interval {i + 1}", worst)
    mismatches += _compare_disk(io_row, io_refs[1], "perf_io_latency", worst)
    print(f"\niostat (2 s): {snap_refs[1:]}\nperf_snapshot: {rows}\niostat (3 s): {io_refs[1]}\n"
          f"perf_io_latency: {io_row}\nworst relative deviation (%): "
          + ", ".join(f"{k} {v:.1f}" for k, v in worst.items()))
    assert not mismatches, mismatches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SAR_ROW = re.compile(r"^(\S+)\s+lo\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")


async def test_interface_rates_agree_with_sar(test_users: helpers.TestUsers, no_broker_socket: Path) -> None:
    sar, iperf3 = need("sar"), need("iperf3")
    port = _free_port()
    async with helpers.mcp_client(test_users.denied, no_broker_socket) as client:
        with load([iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)]):
            await trio.sleep(0.5)
            with load([iperf3, "-c", "127.0.0.1", "-p", str(port), "-t", "20", "-b", "200M", "-l", "16K"]):
                await trio.sleep(2.0)
                result, lines = await alongside(
                    [sar, "-n", "DEV", "2", "2"], lambda line: line.startswith("Linux"),
                    lambda: client.call_tool("perf_snapshot", {"count": 2, "interval_s": 2}))
    blocks = [m.groups() for line in lines if (m := _SAR_ROW.match(line)) and m.group(1) != "Average:"]
    assert len(blocks) == 2, lines
    windows = ok_data(result)["windows"]
    ours = [next(i for i in w["interfaces"] if i["interface"] == "lo") for w in windows]
    mismatches = []
    worst: dict[str, float] = {}
    for i, (o, theirs) in enumerate(zip(ours, blocks, strict=True)):
        ref = dict(zip(("rxpck_s", "txpck_s", "rxkb_s", "txkb_s"), map(float, theirs[1:]), strict=True))
        assert ref["rxkb_s"] > 10_000, f"iperf3 did not run: {ref}"
        for key, value in ref.items():
            worst[key] = max(worst.get(key, 0.0), abs(o[key] - value) / value * 100)
            if not close(o[key], value, 0.08, 5.0):
                mismatches.append(f"interval {i + 1} lo {key}: ours {o[key]} sar {value}")
    print(f"\nsar lo: {blocks}\nours lo: {ours}\nworst relative deviation (%): "
          + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    assert not mismatches, mismatches
