"""Who is on the other end of a connection: from the socket only, never a message.

Invariants:
- pid, uid and gid come from SO_PEERCRED (fixed at connect time).
- A pidfd pins the peer process: SO_PEERPIDFD. Only a kernel that does not know
  that option (ENOPROTOOPT: before 6.5) gets pidfd_open(pid) instead; any other
  error (6.5 to ~6.15 fail it once the peer is reaped) means the peer is gone,
  since the pid may already name another process.
- The process found at pid must be the peer: its real uid is the SO_PEERCRED uid
  and it started no later than the accept. With SO_PEERPIDFD that holds for any
  live peer; with pidfd_open it refuses a pid reused since the accept or by
  another uid. (Left open on kernels before 6.5: a pid reused between connect
  and accept by a process of the same uid.)
- `alive()` tells whether the pinned process still exists and has not exited (a
  zombie has). Start time and uid are read while it is alive before and after
  the read, so they belong to the pinned process.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_UCRED = struct.Struct("3i")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class PeerGone(Exception):
    pass


@dataclass
class Peer:
    pid: int
    uid: int
    gid: int
    pidfd: int
    start_time: int

    def alive(self) -> bool:
        """False once the pinned process has exited, reaped or not.

        A pidfd polls readable when its process exits. Signal 0 is no test: it
        still succeeds on a zombie, and a client that exited but was not yet
        reaped by its parent would pass for alive.
        """
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def boot_ticks() -> int:
    """Now in clock ticks since boot: the unit of a start time in /proc/PID/stat."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) * _CLK_TCK // 1_000_000_000


def peer_uid(sock: socket.socket) -> int | None:
    try:
        return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]
    except OSError:
        return None


def _peer_pidfd(sock: socket.socket, pid: int) -> int:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            raise PeerGone(f"no pidfd for peer pid {pid} ({errno.errorcode.get(exc.errno, exc.errno)})") from None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise PeerGone(f"peer pid {pid} has exited") from None


def start_time_of(pid: int) -> int:
    """Field 22 of /proc/PID/stat (clock ticks since boot); comm may hold ') '."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[19])  # fields after comm start at field 3


def real_uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                return int(line.split()[1])
    raise ValueError(f"no Uid line for pid {pid}")


def identify(sock: socket.socket, accepted: int) -> Peer:
    """The peer of sock; accepted is boot_ticks() at the accept."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if pid <= 0:
        raise PeerGone("peer has no pid in this namespace")
    peer = Peer(pid=pid, uid=uid, gid=gid, pidfd=_peer_pidfd(sock, pid), start_time=0)
    why = "has exited"
    try:
        if peer.alive():
            start, real_uid = start_time_of(pid), real_uid_of(pid)
            if not peer.alive():
                pass
            elif real_uid != uid:
                why = f"has real uid {real_uid}, not the connection's {uid}"
            elif start > accepted:
                why = "started after the accept (pid reused)"
            else:
                peer.start_time = start
                return peer
    except (OSError, ValueError, IndexError):
        pass
    peer.close()
    raise PeerGone(f"peer pid {pid} {why}")
