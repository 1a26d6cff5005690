"""Hostile input the broker must not echo, crash on or answer before authorisation,
and its socket's mode."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import msgspec
import pytest

import helpers
from broker_wire import audit_records, crash_lines, exchange, msgpack_frame, raw_frame
from perf_mcp_broker.__main__ import _bind_socket
from perf_mcp_protocol import Hello, encode_frame, limits
from user_clients import report, run_client

pytestmark = [pytest.mark.root]

HELLO = encode_frame(Hello(protocol_version=limits.PROTOCOL_VERSION))
FORGED = '\n2099-01-01 00:00:00,000 perf_mcp_broker.audit INFO {"event": "job", "uid": 0, "kind": "forged", "outcome": "ok"}'


async def test_client_text_cannot_write_a_line_of_the_log(broker_alive: helpers.RunningBroker) -> None:
    path = str(broker_alive.socket_path)
    got = [
        await exchange(path, HELLO, msgpack_frame({"type": "access_query", "x" + FORGED: 1})),  # unknown field
        await exchange(path, HELLO, msgpack_frame({"type": "cpu_profile" + FORGED})),  # unknown tag
        await exchange(path, msgpack_frame({"type": "hello", "protocol_version": 2, "x" + FORGED: 1})),
    ]
    assert all(g.closed and not g.after_hello for g in got), [g.summary() for g in got]
    await helpers.await_until(lambda: broker_alive.log_text().count("closing connection from") >= len(got), 5.0)
    log = broker_alive.log_text()
    forged = [r for r in audit_records(log) if r.get("kind") == "forged"]
    lines = [line for line in log.splitlines() if line.startswith("2099-01-01")]
    quoted = [line for line in log.splitlines() if "closing connection from" in line and "\\n2099-01-01" in line]
    report("log injection", attempts=len(got), forged_audit_records=len(forged), forged_lines=len(lines), quoted_lines=len(quoted))
    assert not forged and not lines, log[-3000:]
    assert len(quoted) == len(got), log[-3000:]


async def test_deeply_nested_msgpack_is_a_protocol_error(broker_alive: helpers.RunningBroker) -> None:
    """msgspec skips an unknown field's value recursively: 2000 nested arrays (6 kB)
    exceed Python's recursion limit."""
    path = str(broker_alive.socket_path)
    for nest in (b"\x91", b"\x81\xc0"):  # arrays, maps
        body = b"\x82" + msgspec.msgpack.encode("x") + nest * 2000 + b"\xc0" + msgspec.msgpack.encode("type") + msgspec.msgpack.encode("access_query")
        got = await exchange(path, HELLO, raw_frame(body))
        assert got.closed and not got.after_hello, got.summary()
    await helpers.await_until(lambda: broker_alive.log_text().count("nested too deep") >= 2, 5.0)
    log = broker_alive.log_text()
    report("deep nesting", protocol_errors=log.count("nested too deep"), crashes=len(crash_lines(log)))
    assert log.count("nested too deep") == 2, log[-3000:]
    assert not crash_lines(log), log[-3000:]


async def test_whether_a_pid_exists_is_told_only_after_authorisation(
    broker_alive: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers
) -> None:
    gone = limits.PID_MAX  # in range, and no process has it
    assert not os.path.exists(f"/proc/{gone}")
    requests = [
        {"type": "cpu_profile", "duration_s": 1.0, "frequency_hz": 49, "pid": gone, "include_kernel": True},
        {"type": "fd_table", "pid": gone},
    ]
    answers = {}
    for user in (test_users.denied, test_users.granted):
        run = await run_client(user.name, broker_alive.socket_path, {"requests": requests})
        answers[user.name] = [c.final["code"] if c.final and c.final["type"] == "error" else c.types for c in run.conns.values()]
    report("request for a pid that does not exist", **answers)
    assert answers[test_users.denied.name] == ["PERMISSION_DENIED"] * 2
    assert answers[test_users.granted.name] == ["PID_NOT_FOUND"] * 2


def test_socket_is_0666_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        sock = _bind_socket(str(tmp_path / "b.sock"))
    finally:
        os.umask(old)
    sock.close()
    assert stat.S_IMODE(os.lstat(tmp_path / "b.sock").st_mode) == 0o666


def test_socket_mode_is_not_set_through_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone who can write the socket's directory swaps the new socket for a symlink
    right after bind(): nothing the broker does afterwards may follow it."""
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    moved = tmp_path / "moved.sock"
    real_bind = socket.socket.bind

    def bind_then_swap(self: socket.socket, address: str) -> None:
        real_bind(self, address)
        os.rename(address, moved)
        os.symlink(victim, address)

    monkeypatch.setattr(socket.socket, "bind", bind_then_swap)
    sock = _bind_socket(str(tmp_path / "b.sock"))
    sock.close()
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(moved).st_mode) == 0o666
