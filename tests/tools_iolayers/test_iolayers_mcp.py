"""perf_io_layers through the real MCP client (frontend as perfmcp-granted), the real
root broker, on a reader with a known answer, on every rung that runs here.

Known answer: READER (pid R, the test user) reads a 64 MiB file in /var/tmp (on the
root disk, never a loop device: a loop device counts its reads twice, on itself and
on the disk below) with 1 MiB read() calls, over and over.
- cold: before each pass it drops the file's pages (posix_fadvise DONTNEED), so
  every byte its reads return was read from disk: R's block read bytes >= 90% of its
  syscall read bytes (hit ratio <= 0.1); readahead may read a little ahead, so up
  to 110%.
- warm: the file stays cached: R's block read bytes <= 5% of its syscall read bytes
  (hit ratio >= 0.95).
R's row (pid and comm) is checked on the bpftrace rung (iolayers.bt: block requests
charged to the process that issued them) and on the procfs rung (/proc/R/io
read_bytes). System-wide totals include whatever else runs (other tests): only
R's rows are held to the tight bounds; the totals to being at least R's.
vfsstat (kprobes) is skipped here with the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

import helpers
from helpers import envelope, ok_data

pytestmark = [pytest.mark.root, pytest.mark.slow]

NAME = "perf_io_layers"
FILE_MIB = 64

READER_PY = r'''
import os, sys, time
path, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
fd = os.open(path, os.O_RDONLY)
passes = 0
print("ready", flush=True)
while time.monotonic() < end:
    if mode == "cold":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.lseek(fd, 0, 0)
    while os.read(fd, 1 << 20):
        pass
    passes += 1
print("passes", passes, flush=True)
'''


@pytest.fixture(scope="module")
def big_file() -> Any:
    d = helpers.make_shared_tmpdir("pmcp-iol-")
    path = Path(f"/var/tmp/pmcp-iol-{os.getpid()}.dat")
    try:
        (d / "reader.py").write_text(READER_PY)
        (d / "reader.py").chmod(0o644)
        with open(path, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(FILE_MIB):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        path.chmod(0o644)
        yield d / "reader.py", path
    finally:
        path.unlink(missing_ok=True)
        helpers.remove_tree(d)


def reader(script: Path, path: Path, mode: str) -> subprocess.Popen[bytes]:
    users = helpers.lookup_test_users()
    p = helpers.spawn_as(users.granted, ["/usr/bin/python3", str(script), str(path), mode, "60"],
                         stdout=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


async def call(sock: Path, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    users = helpers.lookup_test_users()
    async with helpers.mcp_client(users.granted, sock) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == NAME)
        result = await client.call_tool(NAME, args)
    env = envelope(result)
    jsonschema.validate(env, tool.output_schema)
    return ok_data(result), env


async def cold_and_warm(sock: Path, script: Path, path: Path) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    rows = []
    pids = []
    for mode in ("cold", "warm"):
        p = reader(script, path, mode)
        try:
            if mode == "warm":
                await trio.sleep(1.0)  # its first pass fills the cache
            data, env = await call(sock, {"duration_s": 3, "include_details": True, "top_n": 100})
        finally:
            helpers.stop_process(p)
        rows.append((data, env))
        pids.append(p.pid)
    return rows[0], rows[1], pids[0], pids[1]


def check_reader(data: dict[str, Any], pid: int, mode: str, label: str) -> dict[str, Any]:
    row = next((r for r in data["processes"] if r["pid"] == pid), None)
    assert row is not None, [(r["pid"], r["comm"]) for r in data["processes"]]
    sys_b, blk_b = row["syscalls"]["read_bytes"], row["block"]["read_bytes"]
    share = blk_b / sys_b
    print(f"\n{label} {mode}: reader pid {pid} ({row['comm']}) read {sys_b / 2**20:.1f} MiB by syscalls, "
          f"{blk_b / 2**20:.1f} MiB from disk ({share:.1%}), hit ratio {row['read_cache_hit_ratio']}; system: "
          f"syscalls {data['syscalls']['read_bytes'] / 2**20:.1f} MiB, block {data['block']['read_bytes'] / 2**20:.1f} "
          f"MiB, hit ratio {data['read_cache_hit_ratio']}; method {data['method']}")
    assert row["comm"] == "python3"
    assert sys_b >= 16 << 20  # several 64 MiB passes in 3 s, warm; at least a quarter pass cold
    if mode == "cold":
        assert 0.9 <= share <= 1.1, share
        assert row["read_cache_hit_ratio"] <= 0.1
    else:
        assert share <= 0.05, share
        assert row["read_cache_hit_ratio"] >= 0.95
    assert data["syscalls"]["read_bytes"] >= sys_b
    assert data["block"]["read_bytes"] >= (blk_b if mode == "cold" else 0) * 0.99
    assert "1 - block read bytes / syscall read bytes" in data["hit_ratio_note"]
    return row


async def test_bpftrace_rung_cold_then_warm_reads(module_broker_factory: Any, system_bus: None, big_file: Any) -> None:
    broker = module_broker_factory()
    script, path = big_file
    (cold, cenv), (warm, wenv), cpid, wpid = await cold_and_warm(broker.socket_path, script, path)
    for data, env in ((cold, cenv), (warm, wenv)):
        assert data["backend"] == "bpftrace" and data["method"].startswith("bpftrace iolayers.bt")
        (sk,) = data["skipped"]
        assert sk["backend"] == "libbpf" and "not per process (include_details=true)" in sk["reason"], sk
        assert data["trace_window_exact"] is True and data["argv"][-2:] == ["3", "1"]
    check_reader(cold, cpid, "cold", "bpftrace")
    check_reader(warm, wpid, "warm", "bpftrace")
    vda = [d for d in cold["devices"] if d["read_bytes"]]
    assert vda, cold["devices"]
    # the cold reader issues the most block I/O: the info finding names it
    top = [f for f in cold["findings"] if f["id"] == "io.top_block_process"]
    assert top and f"pid {cpid}" in top[0]["title"] and "perf_vfs_latency" in top[0]["suggestion"]


async def test_procfs_rung_without_bpftrace(module_broker_factory: Any, system_bus: None, big_file: Any) -> None:
    broker = module_broker_factory("--disable", "bpftrace")
    script, path = big_file
    (cold, cenv), (warm, wenv), cpid, wpid = await cold_and_warm(broker.socket_path, script, path)
    for data in (cold, warm):
        assert data["backend"] == "procfs" and data["method"].startswith("procfs")
        assert [s["backend"] for s in data["skipped"]] == ["libbpf", "bpftrace"]
        assert "disabled by the administrator" in data["skipped"][1]["reason"]
        assert data["processes_unreadable"] > 0  # other users' /proc/PID/io (root's, at least)
    check_reader(cold, cpid, "cold", "procfs")
    check_reader(warm, wpid, "warm", "procfs")
    low = [f for f in cold["findings"] if f["id"] == "io.low_cache_hit_ratio"]
    if cold["read_cache_hit_ratio"] is not None and cold["read_cache_hit_ratio"] < 0.5:
        assert low and low[0]["evidence"][0]["counter"] == "read_cache_hit_ratio"


async def test_typed_errors_busy_and_denied(module_broker_factory: Any, system_bus: None) -> None:
    broker = module_broker_factory()
    users = helpers.lookup_test_users()
    async with helpers.mcp_client(users.granted, broker.socket_path) as client:
        for args, code in [
            ({"duration_s": 0}, "INVALID_PARAMS"),
            ({"duration_s": 31}, "INVALID_PARAMS"),
            ({"include_details": "yes"}, "INVALID_PARAMS"),
            ({"top_n": 0}, "INVALID_PARAMS"),
            ({"device": "sda; id"}, "INVALID_PARAMS"),
        ]:
            env = envelope(await client.call_tool(NAME, args))
            assert env["success"] is False and env["error"]["code"] == code, (args, env)
            assert env["error"]["suggestion"]
        results: dict[str, Any] = {}

        async def first() -> None:
            results["first"] = await client.call_tool(NAME, {"duration_s": 4})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.sleep(1.5)
            async with helpers.mcp_client(users.granted, broker.socket_path) as other:
                busy = envelope(await other.call_tool(NAME, {"duration_s": 1}))
        assert busy["error"]["code"] == "PROFILER_BUSY", busy
        first_data = ok_data(results["first"])
        assert first_data["backend"] == "bpftrace" and first_data["processes"] is None
        (sk,) = first_data["skipped"]  # without include_details, vfsstat is skipped for the kernel
        assert sk["backend"] == "libbpf" and "kprobes" in sk["reason"], sk
    async with helpers.mcp_client(users.denied, broker.socket_path) as client:
        env = envelope(await client.call_tool(NAME, {"duration_s": 1}))
    # A user without the grant is answered from /proc; the tracing rung says it was refused.
    assert env["success"] is True and env["data"]["backend"] == "procfs", env
    refused = [sk for sk in env["data"]["skipped"] if sk["backend"] == "bpftrace"]
    assert refused and refused[0]["reason"].startswith("PERMISSION_DENIED"), env["data"]["skipped"]
