"""Cross-checks against sysstat under real load: our derive.disk_rates
against ``iostat -x`` and our derive.cpu_split against ``mpstat``, over the
same interval.

Alignment: sysstat prints each report (unbuffered) right after it reads the
counters, so we read /proc when a report line arrives; both windows then
start and end within a millisecond or so of each other.

Tolerances (stated, and why):
- iostat divides by /proc/uptime (10 ms resolution), we by the monotonic
  clock, and the windows are offset by up to a few ms under a fio load that is
  rate-limited but not perfectly steady: rates within 10% (+2/s), %util
  within 8 points, aqu-sz within 0.1 + 20%, awaits (tens of microseconds on a
  RAM-backed loop device, printed by iostat with 2 decimals) within
  0.03 ms + 25%, request sizes within 0.5 kB.
- mpstat works in 10 ms clock ticks over 2 CPUs (200 ticks per second): a few
  ticks of offset move a figure by about a point; each CPU figure within 3
  points.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from perf_mcp.procfs.cpu import parse_stat
from perf_mcp.procfs.derive import cpu_split, disk_rates
from perf_mcp.procfs.disk import parse_diskstats
from perf_mcp.procfs.sampler import read_file


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed (TESTING.md: apt-get install sysstat fio stress-ng)")
    return path


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Terminate a process we started, by its PID, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def loop_device() -> Iterator[str]:
    """A loop device over a 256 MiB file in a temp dir (RAM-backed /tmp here):
    never the machine's real disk. Detached and removed afterwards."""
    need("losetup")
    workdir = tempfile.mkdtemp(prefix="perfmcp-xcheck-")
    image = os.path.join(workdir, "disk.img")
    with open(image, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    device = subprocess.run(
        ["losetup", "--find", "--show", image], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def close(ours: float | None, theirs: float, rel: float, absolute: float) -> bool:
    return ours is not None and abs(ours - theirs) <= absolute + rel * abs(theirs)


@pytest.mark.root
@pytest.mark.slow
def test_disk_rates_agree_with_iostat(loop_device: str) -> None:
    iostat, fio = need("iostat"), need("fio")
    name = os.path.basename(loop_device)
    load = subprocess.Popen(
        [fio, "--name=xcheck", f"--filename={loop_device}", "--ioengine=psync", "--direct=1",
         "--rw=randrw", "--bs=4k", "--rate_iops=2500", "--time_based", "--runtime=8", "--output=/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    reporter: subprocess.Popen[str] | None = None
    try:
        time.sleep(1.5)  # let fio reach its rate
        reporter = subprocess.Popen(
            [iostat, "-x", "-d", "-o", "JSON", "1", "2", name], stdout=subprocess.PIPE, text=True
        )
        assert reporter.stdout is not None
        ours: list[tuple[float, bytes]] = []
        theirs: list[dict[str, float]] = []
        for line in reporter.stdout:
            if '"disk_device"' in line:
                ours.append((time.monotonic(), read_file("/proc/diskstats")))
                theirs.append(json.loads(line.strip().rstrip(",")))
        assert reporter.wait(timeout=10) == 0
    finally:
        if reporter is not None:
            stop(reporter)
        stop(load)
    assert len(ours) == 2 and len(theirs) == 2, "iostat printed no report for the loop device"
    (t0, before), (t1, after) = ours
    warnings: list[str] = []
    rates = disk_rates(
        parse_diskstats(before).devices[name], parse_diskstats(after).devices[name], t1 - t0, warnings
    )
    ref = theirs[1]
    print(f"\niostat {name}: {ref}\nours: {rates}")
    assert warnings == []
    assert ref["r/s"] > 500 and ref["w/s"] > 500, "the fio load did not run"
    mismatches = []
    for ours_value, key, rel, absolute in (
        (rates.r_s, "r/s", 0.10, 2.0),
        (rates.w_s, "w/s", 0.10, 2.0),
        (rates.rkb_s, "rkB/s", 0.10, 8.0),
        (rates.wkb_s, "wkB/s", 0.10, 8.0),
        (rates.util_pct, "util", 0.0, 8.0),
        (rates.aqu_sz, "aqu-sz", 0.20, 0.1),
        (rates.r_await_ms, "r_await", 0.25, 0.03),
        (rates.w_await_ms, "w_await", 0.25, 0.03),
        (rates.rareq_sz_kb, "rareq-sz", 0.0, 0.5),
        (rates.wareq_sz_kb, "wareq-sz", 0.0, 0.5),
    ):
        if not close(ours_value, ref[key], rel, absolute):
            mismatches.append(f"{key}: ours {ours_value} iostat {ref[key]}")
    assert not mismatches, mismatches


@pytest.mark.slow
def test_cpu_split_agrees_with_mpstat() -> None:
    mpstat, stress = need("mpstat"), need("stress-ng")
    load = subprocess.Popen(
        [stress, "--cpu", "1", "--timeout", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    reporter: subprocess.Popen[str] | None = None
    try:
        time.sleep(1.0)  # let stress-ng start its worker
        reporter = subprocess.Popen([mpstat, "-o", "JSON", "1", "1"], stdout=subprocess.PIPE, text=True)
        assert reporter.stdout is not None
        stats: list[bytes] = []
        ref: dict[str, object] = {}
        for line in reporter.stdout:
            if '"statistics"' in line:  # the last header line: mpstat reads next
                stats.append(read_file("/proc/stat"))
            elif '"cpu": "all"' in line:
                stats.append(read_file("/proc/stat"))
                ref = json.loads(line.strip().rstrip(","))
        assert reporter.wait(timeout=10) == 0
    finally:
        if reporter is not None:
            stop(reporter)
        stop(load)
    assert len(stats) == 2 and ref, "mpstat printed no report"
    warnings: list[str] = []
    split = cpu_split(parse_stat(stats[0]).cpu, parse_stat(stats[1]).cpu, warnings)
    assert split is not None
    print(f"\nmpstat: {ref}\nours: {split}")
    assert float(ref["usr"]) >= 40.0, "stress-ng --cpu 1 did not load a CPU"  # type: ignore[arg-type]
    pairs = {
        "usr": split.user, "nice": split.nice, "sys": split.system, "iowait": split.iowait, "irq": split.irq,
        "soft": split.softirq, "steal": split.steal, "guest": split.guest, "gnice": split.guest_nice,
        "idle": split.idle,
    }  # fmt: skip
    mismatches = [
        f"{key}: ours {ours:.2f} mpstat {ref[key]}"
        for key, ours in pairs.items()
        if abs(ours - float(ref[key])) > 3.0  # type: ignore[arg-type]
    ]
    assert not mismatches, mismatches
