"""ProcessIo (job class INSPECT): every process's /proc/N/io and fd count, read by the broker.

- A granted user gets another user's known I/O figures: a workload run as perfmcp-denied
  writes exactly 8 MiB to a new file in /var/tmp (2,048 page-aligned write() calls, then
  fsync), and holds 20 extra descriptors. The broker's text must hold its block with
  write_bytes = 8 MiB (+ at most 64 KiB: a couple of metadata pages were seen), wchar = 8 MiB + 6,
  syscw = 2,048 (+ the one "ready" write), and fds = what root sees in /proc/PID/fd.
- The denied user gets PERMISSION_DENIED (the grant hint names org.perfmcp.inspect).
- At the broker's smallest output cap the text is cut on a process boundary and flagged.
"""

from __future__ import annotations

import base64
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

import helpers
from broker_wire import request
from perf_mcp_protocol import JobResult, ProcessIo, limits
from user_clients import report, run_client

pytestmark = [pytest.mark.root]

MIB = 1 << 20
WRITES = 2048  # of 4 KiB: 8 MiB
EXTRA_FDS = 20

WRITER = textwrap.dedent(
    """
    import os, sys, time
    path = sys.argv[1]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"x" * 4096
    for _ in range(%d):
        os.write(fd, block)
    os.fsync(fd)
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(%d)]
    os.write(1, b"ready\\n")
    time.sleep(120)
    """
) % (WRITES, EXTRA_FDS)


def parse_blocks(text: str) -> dict[int, tuple[str, dict[str, int]]]:
    """pid -> (fds field, io counters) from the broker's process_io text."""
    out: dict[int, tuple[str, dict[str, int]]] = {}
    current: dict[str, int] | None = None
    for line in text.splitlines():
        if line.startswith("pid "):
            _, pid, word, fds = line.split()
            assert word == "fds", line
            current = {}
            out[int(pid)] = (fds, current)
        else:
            key, _, value = line.partition(":")
            assert current is not None, line
            current[key] = int(value)
    return out


@pytest.fixture
def writer(test_users: helpers.TestUsers):  # type: ignore[no-untyped-def]
    target = Path("/var/tmp") / f"pmcp-pio-{os.getpid()}"
    target.touch()
    os.chown(target, test_users.denied.uid, test_users.denied.gid)
    proc = helpers.spawn_as(test_users.denied, [helpers.VENV_PYTHON, "-c", WRITER, str(target)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        helpers.stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        target.unlink(missing_ok=True)


async def test_granted_user_reads_another_users_io_and_denied_user_is_refused(
    module_broker_factory, test_users: helpers.TestUsers, writer: subprocess.Popen[bytes]
) -> None:
    broker = module_broker_factory()
    truth_fds = len(os.listdir(f"/proc/{writer.pid}/fd"))
    granted = await run_client(test_users.granted.name, broker.socket_path, {"requests": [{"type": "process_io"}]})
    denied = await run_client(test_users.denied.name, broker.socket_path, {"requests": [{"type": "process_io"}]})
    final = granted.conns[0].final
    assert final is not None and final["type"] == "result", (granted.conns, granted.stderr)
    step = final["steps"][0]
    assert step["name"] == "process_io" and step["exit_status"] == 0 and not step["stdout_truncated"]
    blocks = parse_blocks(base64.b64decode(step["stdout"]).decode())
    assert list(blocks) == sorted(blocks) and writer.pid in blocks
    fds, io = blocks[writer.pid]
    report("process_io of another user's writer", pid=writer.pid, fds=fds, truth_fds=truth_fds,
           write_bytes=io["write_bytes"], wchar=io["wchar"], syscw=io["syscw"], processes=len(blocks),
           stdout_bytes=len(base64.b64decode(step["stdout"])))
    assert int(fds) == truth_fds == 3 + EXTRA_FDS + 1  # stdio, /dev/null x 20, the file
    # the pages dirtied, plus a few of the file's metadata accounted to the writer at fsync
    assert WRITES * 4096 <= io["write_bytes"] <= WRITES * 4096 + 64 * 1024
    assert WRITES * 4096 <= io["wchar"] <= WRITES * 4096 + 64
    assert WRITES <= io["syscw"] <= WRITES + 2  # + the "ready" line
    assert set(io) == {"rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes"}
    # kernel threads are listed too (their counters are zero); our own process as well
    assert os.getpid() in blocks and blocks[2][0] == "0"
    err = denied.conns[0].final
    assert err is not None and err["type"] == "error" and err["code"] == "PERMISSION_DENIED", denied.conns
    assert "org.perfmcp.inspect" in err["message"]


async def test_process_io_is_cut_at_the_output_cap(module_broker_factory) -> None:
    cap = limits.MIN_OUTPUT_CAP
    broker = module_broker_factory(output_cap=cap)
    got = await request(broker.socket_path, ProcessIo())
    assert isinstance(got.final, JobResult), got.summary()
    step = got.final.steps[0]
    report("process_io at the cap", cap=cap, stdout_len=len(step.stdout), truncated=step.stdout_truncated)
    assert step.stdout_truncated and 0 < len(step.stdout) <= cap
    blocks = parse_blocks(step.stdout.decode())  # whole blocks only: every line parses
    assert all(len(io) in (0, 7) for _, io in blocks.values())
    assert step.stdout.endswith(b"\n")
