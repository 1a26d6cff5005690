"""perf_cpu_profile's broker builder bounds (perf.data size, rate x duration x CPUs, nothing written
outside the job directory) and the purge of stale job directories at broker start."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from perf_mcp_broker import jobs
from perf_mcp_broker.__main__ import _workroot
from perf_mcp_protocol import Backend, CpuProfile

PROGRAMS = {"perf": "/usr/bin/perf", "bpftrace": "/usr/bin/bpftrace"}


def test_perf_record_stays_in_its_job_directory_and_is_bounded() -> None:
    steps = jobs.build_cpu_profile(CpuProfile(duration_s=3.0, frequency_hz=99), PROGRAMS, "/w/job1-x")
    record, script = steps
    assert record.argv[:7] == ("/usr/bin/perf", "record", "-e", "cpu-clock", "-F", "99", "-g")
    assert {"-N", "-B", "--no-bpf-event"} <= set(record.argv) and record.argv[record.argv.index("--max-size") + 1] == "256M"
    assert record.argv[-2:] == ("-o", "/w/job1-x/perf.data") and "-a" in record.argv
    assert script.argv[-2:] == ("-F", "comm,pid,time,ip,sym,dso") and not script.with_previous


def test_rate_x_duration_x_cpus_is_capped() -> None:
    req = CpuProfile(duration_s=60.0, frequency_hz=999)
    assert jobs.cpu_profile_frequency(req, cpus=2) == 999  # 120k samples: under the cap
    assert jobs.cpu_profile_frequency(req, cpus=64) == jobs.CPU_PROFILE_MAX_SAMPLES // (60 * 64) == 93
    assert jobs.cpu_profile_frequency(CpuProfile(duration_s=60.0, frequency_hz=999), cpus=100_000) == 1
    bt = jobs.build_cpu_profile(CpuProfile(duration_s=2.0, frequency_hz=999, pid=7, backend=Backend.BPFTRACE),
                                PROGRAMS, "/w")
    assert bt[0].argv[-4:] == ("999", "2", "7", "1") and bt[0].argv[-5].endswith("bpftrace/profile.bt")


def test_time_slices_partition_the_recording() -> None:
    assert jobs._time_slices(2) == ["0%-50%", "50%-100%"]
    assert jobs._time_slices(3) == ["0%-33%", "33%-67%", "67%-100%"]


def test_stale_job_directories_are_purged_live_ones_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    root = tmp_path / "jobs"
    root.mkdir()
    held = []
    for name, age, hold in (("job1-old", 3600, False), ("job2-recent", 30, False), ("job3-old-open", 3600, True),
                            ("not-a-job", 3600, False)):
        d = root / name
        d.mkdir()
        f = d / "perf.data"
        f.write_bytes(b"x")
        if hold:
            held.append(open(f, "rb"))  # a live job's perf record has its perf.data open
        t = time.time() - age
        os.utime(f, (t, t))
        os.utime(d, (t, t))
    try:
        assert _workroot() == str(root)
        assert sorted(p.name for p in root.iterdir()) == ["job2-recent", "job3-old-open", "not-a-job"]
    finally:
        for fh in held:
            fh.close()
