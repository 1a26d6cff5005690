"""Connection and job slots under hostile clients: idle connections, clients that never
read their results, and the per-uid limits of every job class."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

import helpers
from broker_wire import RawConn, audit_records, proc_status_kib, request
from perf_mcp_broker.server import Broker
from perf_mcp_protocol import Accepted, FdTable, JobClass, JobResult, ToolFeatures, limits
from user_clients import report, run_client

pytestmark = [pytest.mark.root]

FLOOD_SCRIPT = Path(__file__).resolve().parent / "flood_script.py"
FLOOD = 100  # more than the old 64 slots; MAX_CONNECTIONS_PER_UID of them are admitted


def _log_count(log: str, text: str) -> int:
    return sum(text in line for line in log.splitlines())


@pytest.mark.slow
async def test_one_users_idle_connections_do_not_starve_another(
    broker_alive: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers
) -> None:
    broker, flooder, other = broker_alive, test_users.denied, test_users.granted
    path = str(broker.socket_path)
    guard = limits.HANDSHAKE_TIMEOUT_S + 30.0
    proc = await trio.lowlevel.open_process(
        helpers.as_user_argv(flooder, [sys.executable, FLOOD_SCRIPT, path, str(FLOOD), str(guard)]),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=helpers.user_env(flooder), cwd="/",
    )
    lines: list[dict] = []
    buf = b""

    async def read_until(pred) -> None:
        nonlocal buf
        assert proc.stdout is not None
        while not any(pred(ev) for ev in lines):
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines.extend(json.loads(ln) for ln in done if ln)

    try:
        with trio.fail_after(guard + 10):
            await read_until(lambda ev: "opened" in ev)
        assert any("opened" in ev for ev in lines), "the flooder could not open its connections"
        closed_at_open = max((ev["closed"] for ev in lines if "closed" in ev), default=0)
        # The other user, while the flooder holds its connections.
        started = time.monotonic()
        access = await run_client(other.name, path, {"requests": [{"type": "access_query"}]})
        access_s = time.monotonic() - started
        started = time.monotonic()
        profile = await run_client(other.name, path, {"requests": [
            {"type": "cpu_profile", "duration_s": 1.0, "frequency_hz": 49, "pid": None, "include_kernel": True}]})
        profile_s = time.monotonic() - started
        with trio.fail_after(guard + 10):
            await read_until(lambda ev: ev.get("closed") == FLOOD)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
    log = broker.log_text()
    refused = _log_count(log, f"refusing a connection from uid {flooder.uid}:")
    timed_out = _log_count(log, f"closing connection from uid {flooder.uid}: handshake time-out")
    report(
        "idle connection flood",
        flood=FLOOD,
        cap_per_uid=limits.MAX_CONNECTIONS_PER_UID,
        closed_at_once=refused,
        closed_by_handshake_timeout=timed_out,
        closed_before_all_opened=closed_at_open,
        other_user_access_query_s=round(access_s, 2),
        other_user_1s_profile_s=round(profile_s, 2),
    )
    a = access.conns[0].final
    assert a is not None and a["type"] == "access" and sorted(a["granted"]) == ["inspect", "profile", "trace"], access.conns
    p = profile.conns[0].final
    assert p is not None and p["type"] == "result", profile.conns
    assert all(s["exit_status"] == 0 or s["signal"] == 2 for s in p["steps"]), p["steps"]
    assert max(ev.get("closed", 0) for ev in lines) == FLOOD, "the broker left flood connections open"
    # Every flood connection was either refused at once or timed out in the handshake,
    # and the refused ones are all but the admitted (a few more may be admitted when
    # the first time out before the flooder has opened the rest).
    assert refused + timed_out == FLOOD, (refused, timed_out)
    assert refused >= FLOOD - 2 * limits.MAX_CONNECTIONS_PER_UID, (refused, timed_out)


# --------------------------------------------------------------------------- clients that never read

LONG_NAME = "f" * 200  # each fd line of the reply is ~210 bytes
FDS = 5000  # ~1 MB of reply: far more than a socket buffer, so the broker's send blocks
NON_READERS = 5  # more than MAX_JOBS_GLOBAL


def _fd_holder(directory: Path) -> subprocess.Popen[bytes]:
    """A process holding FDS descriptors of one file with a long name."""
    target = directory / LONG_NAME
    target.write_bytes(b"")
    code = (
        "import os, resource, sys\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, {FDS} + 64), hard))\n"
        f"fds = [os.open(sys.argv[1], os.O_RDONLY) for _ in range({FDS})]\n"
        "print('ready', flush=True)\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/")
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def _closed_by_peer(conn: RawConn) -> bool:
    poller = select.poll()
    poller.register(conn.stream.socket.fileno(), select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP) for _fd, ev in poller.poll(0))


async def _non_readers(path: str, broker: helpers.RunningBroker, pid: int) -> list[RawConn]:
    """NON_READERS connections, one after the other, each sending FdTable and reading
    only up to Accepted; each job must end (its audit line) before the next starts."""
    conns = []
    for _ in range(NON_READERS):
        done_before = sum(r["kind"] == "fd_table" for r in audit_records(broker.log_text()))
        conn = await RawConn.open(path)
        conns.append(conn)
        await conn.hello()
        await conn.send(FdTable(pid=pid))
        first = await conn.recv()
        assert isinstance(first, Accepted), f"job {len(conns)}: {first!r}"
        ended = await helpers.await_until(
            lambda: sum(r["kind"] == "fd_table" for r in audit_records(broker.log_text())) > done_before, 8.0
        )
        assert ended, f"job {len(conns)} did not end while its client was not reading"
    return conns


@pytest.mark.slow
async def test_a_client_that_never_reads_holds_no_slot(broker_alive: helpers.RunningBroker, shared_tmp: Path) -> None:
    broker = broker_alive
    path = str(broker.socket_path)
    holder = _fd_holder(shared_tmp)
    try:
        probe = await request(path, FdTable(pid=holder.pid))
        assert isinstance(probe.final, JobResult), probe.summary()
        reply_bytes = len(probe.final.steps[0].stdout)
        assert reply_bytes > 1_000_000 * 0.9, reply_bytes
        fds_before = helpers.open_fd_count(broker.pid)
        rss = [proc_status_kib(broker.pid, "VmRSS")]
        for _round in range(2):
            conns = await _non_readers(path, broker, holder.pid)
            try:
                # All of them ended and nobody reads them: the same uid is served at once.
                after = [(await request(path, req)).final for req in (FdTable(pid=holder.pid), ToolFeatures())]
                assert all(isinstance(f, JobResult) for f in after), after
                rss.append(proc_status_kib(broker.pid, "VmRSS"))
                # The broker gives up on each send after SEND_TIMEOUT_S and closes.
                closed = await helpers.await_until(lambda: all(_closed_by_peer(c) for c in conns), limits.SEND_TIMEOUT_S + 15)
                assert closed, "the broker kept connections of clients that do not read"
            finally:
                for c in conns:
                    await c.aclose()
            await helpers.await_until(lambda: helpers.open_fd_count(broker.pid) <= fds_before, 5.0)
            rss.append(proc_status_kib(broker.pid, "VmRSS"))
        fds_after = helpers.open_fd_count(broker.pid)
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
    stalled = _log_count(broker.log_text(), f"read nothing for {limits.SEND_TIMEOUT_S:.0f} s")
    report(
        "clients that never read",
        reply_bytes=reply_bytes,
        non_readers_per_round=NON_READERS,
        rss_kib="->".join(map(str, rss)) + " (start, holding, closed, holding, closed)",
        fds=f"{fds_before}->{fds_after}",
        closed_for_not_reading=stalled,
    )
    assert stalled == 2 * NON_READERS
    assert fds_after <= fds_before
    # Replies not read are freed when their connection closes: the second round
    # reuses the first's memory instead of adding NON_READERS replies more.
    assert rss[4] - rss[2] < NON_READERS * reply_bytes / 1024 / 2, rss


def test_every_job_class_has_a_per_uid_limit(tmp_path: Path) -> None:
    broker = Broker(programs={}, missing=[], workroot=str(tmp_path), max_jobs=100)
    got = {}
    for job_class in (JobClass.PROFILE, JobClass.TRACE, JobClass.INSPECT, None):
        uid = 1000 + len(got)
        got[job_class] = sum(broker._reserve(uid, job_class) for _ in range(10))
    report("jobs one uid may run at once", **{str(k and k.value): v for k, v in got.items()})
    assert got == {
        JobClass.PROFILE: limits.MAX_JOBS_PER_UID,
        JobClass.TRACE: limits.MAX_JOBS_PER_UID,
        JobClass.INSPECT: limits.MAX_LIGHT_JOBS_PER_UID,
        None: limits.MAX_LIGHT_JOBS_PER_UID,
    }
