"""Peer identity when the kernel gives no pidfd for the peer (before 6.5, or 6.5-6.15
once the peer is reaped): peer.identify() against real processes of the test users.

The kernel here has SO_PEERPIDFD, so the tests make it unknown by pointing
peer.SO_PEERPIDFD at an option number the kernel answers with ENOPROTOOPT, as an
old kernel does. A reused pid is a real one: the test writes ns_last_pid and
forks so that a new process gets the peer's old pid.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers
from perf_mcp_broker import peer as peer_mod
from perf_mcp_broker.__main__ import _bind_socket
from user_clients import report

pytestmark = [pytest.mark.root]

UNKNOWN_SOCKOPT = 9999  # the kernel answers ENOPROTOOPT, like a kernel before 6.5 for SO_PEERPIDFD
CONNECT = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nprint('connected', flush=True)\nsys.stdin.read()\n"
CONNECT_THEN_SETUID = (
    "import os, socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
    "uid, gid = int(sys.argv[2]), int(sys.argv[3])\nos.setgroups([]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)\n"
    "print('connected', flush=True)\nsys.stdin.read()\n"
)


@pytest.fixture
def old_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_mod, "SO_PEERPIDFD", UNKNOWN_SOCKOPT)


@pytest.fixture
def listener(shared_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(shared_tmp / "identity.sock")
    sock = _bind_socket(path)
    sock.listen(8)
    try:
        yield sock, path
    finally:
        sock.close()


class EinvalPidfdSocket:
    """A socket whose SO_PEERPIDFD fails with EINVAL, as kernels 6.5-6.15 answer for a reaped peer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getsockopt(self, level: int, option: int, *args: int) -> object:
        if option == peer_mod.SO_PEERPIDFD:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return self.sock.getsockopt(level, option, *args)


def connect_as(user: helpers.UnixUser | None, path: str, script: str = CONNECT, *args: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", script, path, *args]
    proc = subprocess.Popen(
        argv if user is None else helpers.as_user_argv(user, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/"
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"connected\n", "the client did not connect"
    return proc


def end(proc: subprocess.Popen[bytes]) -> None:
    """Let the client exit (stdin closes) and reap it, so its pid is free."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait(timeout=10)
    proc.stdout.close()


def spawn_with_pid(pid: int, user: helpers.UnixUser) -> subprocess.Popen[bytes] | None:
    """A new process of ``user`` that gets ``pid`` (ns_last_pid, then one fork), or None
    when another process on the machine took it first."""
    for _ in range(50):
        if os.path.exists(f"/proc/{pid}"):
            return None
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(helpers.as_user_argv(user, ["sleep", "60"]), stdin=subprocess.DEVNULL, cwd="/")
        if proc.pid == pid:
            assert helpers.wait_until(lambda: helpers.proc_uid(pid) == user.uid, 10.0), "setpriv did not switch uid"
            return proc
        proc.kill()
        proc.wait()
    return None


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def test_fallback_identifies_a_live_peer(old_kernel: None, listener, test_users: helpers.TestUsers) -> None:
    sock, path = listener
    user = test_users.granted
    client = connect_as(user, path)
    conn, _ = sock.accept()
    try:
        peer = peer_mod.identify(conn, peer_mod.boot_ticks())
        try:
            assert (peer.pid, peer.uid, peer.gid) == (client.pid, user.uid, user.gid)
            assert peer.start_time == peer_mod.start_time_of(client.pid)
            assert peer.alive()
            end(client)
            assert not peer.alive(), "the pidfd must see the peer's exit"
        finally:
            peer.close()
    finally:
        conn.close()
        stop(client)


def test_fallback_refuses_a_peer_that_is_gone(old_kernel: None, listener, test_users: helpers.TestUsers) -> None:
    sock, path = listener
    client = connect_as(test_users.granted, path)
    conn, _ = sock.accept()
    end(client)
    try:
        with pytest.raises(peer_mod.PeerGone, match="has exited"):
            peer_mod.identify(conn, peer_mod.boot_ticks())
    finally:
        conn.close()


def _reused_after_accept(sock: socket.socket, path: str, user: helpers.UnixUser):
    """A peer of ``user`` that connects, is accepted, exits and is reaped; then a new
    process of the same user takes its pid. Returns (conn, accepted, reuser)."""
    for _ in range(5):
        client = connect_as(user, path)
        conn, _ = sock.accept()
        accepted = peer_mod.boot_ticks()
        end(client)
        time.sleep(0.05)  # a few clock ticks: the reuser starts in a later tick than the accept
        reuser = spawn_with_pid(client.pid, user)
        if reuser is not None:
            return conn, accepted, reuser
        conn.close()
    pytest.fail("no process could take the peer's pid (the machine forks too much)")


def test_fallback_refuses_a_pid_reused_after_the_accept(old_kernel: None, listener, test_users: helpers.TestUsers) -> None:
    """Same uid, so only the start time tells the reuser from the peer."""
    sock, path = listener
    conn, accepted, reuser = _reused_after_accept(sock, path, test_users.granted)
    try:
        started = peer_mod.start_time_of(reuser.pid)
        report("pid reused after the accept", pid=reuser.pid, accept_ticks=accepted, reuser_start_ticks=started)
        assert started > accepted
        with pytest.raises(peer_mod.PeerGone, match="started after the accept"):
            peer_mod.identify(conn, accepted)
    finally:
        conn.close()
        stop(reuser)


def test_fallback_refuses_a_uid_other_than_the_connections(old_kernel: None, listener, test_users: helpers.TestUsers) -> None:
    """A root process connects, then becomes the denied user: SO_PEERCRED still says
    uid 0, the process at that pid (started before the accept) is someone else now."""
    sock, path = listener
    user = test_users.denied
    client = connect_as(None, path, CONNECT_THEN_SETUID, str(user.uid), str(user.gid))
    conn, _ = sock.accept()
    try:
        assert helpers.proc_uid(client.pid) == user.uid
        with pytest.raises(peer_mod.PeerGone, match=f"real uid {user.uid}, not the connection's 0"):
            peer_mod.identify(conn, peer_mod.boot_ticks())
    finally:
        conn.close()
        end(client)


def test_only_enoprotoopt_falls_back(listener, test_users: helpers.TestUsers) -> None:
    """SO_PEERPIDFD fails with EINVAL (kernels 6.5-6.15, peer reaped) and the peer's pid
    was taken before the accept by a process of the same user, so uid and start time
    both pass: only refusing to fall back on EINVAL keeps the broker from judging it."""
    sock, path = listener
    user = test_users.granted
    for _ in range(5):
        client = connect_as(user, path)
        end(client)
        reuser = spawn_with_pid(client.pid, user)
        conn, _ = sock.accept()
        if reuser is not None:
            break
        conn.close()
    else:
        pytest.fail("no process could take the peer's pid (the machine forks too much)")
    try:
        with pytest.raises(peer_mod.PeerGone, match=r"no pidfd for peer pid \d+ \(EINVAL\)"):
            peer_mod.identify(EinvalPidfdSocket(conn), peer_mod.boot_ticks())  # type: ignore[arg-type]
    finally:
        conn.close()
        stop(reuser)


def test_with_so_peerpidfd_a_reaped_peer_is_gone(listener, test_users: helpers.TestUsers) -> None:
    """The kernel's own SO_PEERPIDFD (6.18 here): a reaped peer, its pid reused after
    the accept, is refused (the pidfd pins the exited peer, not the reuser)."""
    sock, path = listener
    conn, accepted, reuser = _reused_after_accept(sock, path, test_users.granted)
    try:
        with pytest.raises(peer_mod.PeerGone):
            peer_mod.identify(conn, accepted)
    finally:
        conn.close()
        stop(reuser)
