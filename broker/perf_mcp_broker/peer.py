"""Who is on the other end of a connection: from the socket only, never a message.

Invariants:
- pid, uid and gid come from SO_PEERCRED at accept time.
- A pidfd pins the peer process: SO_PEERPIDFD where the kernel has it (6.5+),
  pidfd_open(pid) otherwise. `alive()` tells whether that same process still
  exists and has not exited (a zombie has), so a pid reused by another
  process is never mistaken for the peer.
- The start time (for polkit's unix-process subject) is read while the pidfd
  is alive before and after the read, so it belongs to the pinned process.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from dataclasses import dataclass

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_UCRED = struct.Struct("3i")


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


def _peer_pidfd(sock: socket.socket, pid: int) -> int:
    try:
        fd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        if fd >= 0:
            return fd
    except OSError:
        pass
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


def identify(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if pid <= 0:
        raise PeerGone("peer has no pid in this namespace")
    pidfd = _peer_pidfd(sock, pid)
    peer = Peer(pid=pid, uid=uid, gid=gid, pidfd=pidfd, start_time=0)
    try:
        if not peer.alive():
            raise PeerGone(f"peer pid {pid} has exited")
        peer.start_time = start_time_of(pid)
        if not peer.alive():
            raise PeerGone(f"peer pid {pid} has exited")
    except (OSError, ValueError, IndexError):
        peer.close()
        raise PeerGone(f"peer pid {pid} has exited") from None
    except PeerGone:
        peer.close()
        raise
    return peer
