"""`sudo perf-mcp`: started as root, perf-mcp splits into a root broker parent and an
unprivileged MCP child, with no installed broker and no socket path. Real processes,
real perf, real MCP client over stdio."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

import helpers
from fe_util import envelope

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _status_ids(pid: int) -> tuple[int, int, int]:
    """(real uid, effective uid, CapEff as int) of pid."""
    uid = euid = cap = -1
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                fields = line.split()
                uid, euid = int(fields[1]), int(fields[2])
            elif line.startswith("CapEff:"):
                cap = int(line.split()[1], 16)
    return uid, euid, cap


def _cap_bounding(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))


def _perf_mcp_processes() -> list[int]:
    out = []
    for st in helpers.all_processes():
        try:
            with open(f"/proc/{st.pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"perf-mcp\x00--user\x00" in cmd:
            out.append(st.pid)
    return out


async def test_sudo_mode_drops_privileges_and_profiles(test_users: helpers.TestUsers, busy_process_factory) -> None:
    busy = busy_process_factory(test_users.granted)
    params = StdioServerParameters(
        command=str(helpers.FRONTEND_BIN),
        args=["--user", test_users.denied.name],  # polkit would refuse this user: only the split grants it
        env={"PATH": "/usr/bin:/bin", "PERF_MCP_BROKER_SOCKET": "/nonexistent/broker.sock"},
        cwd="/",
    )
    before = set(_perf_mcp_processes())
    with tempfile.TemporaryFile("w+") as log:
        async with Client(stdio_client(params, errlog=log)) as client:
            procs = sorted(set(_perf_mcp_processes()) - before)
            assert len(procs) == 2, procs
            parent = next(p for p in procs if helpers.read_proc_stat(p).ppid not in procs)
            child = next(p for p in procs if p != parent)
            assert helpers.read_proc_stat(child).ppid == parent
            # The MCP child runs as the unprivileged user with no capabilities at all.
            uid, euid, cap = _status_ids(child)
            assert (uid, euid, cap) == (test_users.denied.uid, test_users.denied.uid, 0)
            # The broker parent stays root, with a reduced capability set.
            puid, peuid, pcap = _status_ids(parent)
            assert (puid, peuid) == (0, 0)
            # Its own set is exactly hardening.KEEP (what jobs need plus the four that start and
            # stop the unprivileged parsing step); the bounding set, which every job inherits,
            # lacks those four. Numbers from linux/capability.h, not from the broker's code.
            jobs = {38, 39, 21, 19, 24, 14, 34, 2, 1}  # perfmon bpf sys_admin sys_ptrace sys_resource ipc_lock syslog dac_read_search dac_override
            broker_only = {5, 7, 6, 8}  # kill setuid setgid setpcap
            # (within what root has here: a container's root may lack some, CAP_SYS_RESOURCE here)
            have = _cap_bounding(os.getpid())
            assert pcap == sum(1 << c for c in jobs | broker_only) & have, hex(pcap)
            assert _cap_bounding(parent) == sum(1 << c for c in jobs) & have, hex(_cap_bounding(parent))

            info = envelope(await client.call_tool("perf_info", {}))
            assert info["success"] is True, info
            result = await client.call_tool(
                "perf_cpu_profile", {"duration_s": 2, "sample_rate_hz": 199, "pid": busy.pid}
            )
            env = envelope(result)
            assert env["success"] is True, env
            assert env["data"]["top_functions"][0]["function"] == busy.leaf_symbol, env["data"]
        log.seek(0)
        sys.stderr.write(log.read())
    # The client closing stdin ends the child; the broker parent follows.
    assert await helpers.await_until(lambda: not any(os.path.exists(f"/proc/{p}") and helpers.read_proc_stat(p) and helpers.read_proc_stat(p).state != "Z" for p in procs), timeout=10)


async def test_sudo_mode_refuses_root_as_user() -> None:
    proc = await trio.run_process(
        [str(helpers.FRONTEND_BIN), "--user", "root"], stdin=b"", capture_stdout=True, capture_stderr=True, check=False
    )
    assert proc.returncode != 0
    assert b"unprivileged" in proc.stderr
    assert proc.stdout == b""
