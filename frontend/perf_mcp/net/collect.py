"""Reading the network counters (I/O only; blocking: call through trio.to_thread).

One sample = the links with IFLA_STATS64 (rtnetlink), /proc/net/snmp,
/proc/net/netstat, /proc/net/softnet_stat and, when asked, every TCP socket
with its tcp_info (inet_diag). All of it is per network namespace: the
namespace of this process, which is the one the caller wants to diagnose
(a frontend started with `ip netns exec NS` sees NS).

Nothing here needs privileges: rtnetlink dumps and inet_diag dumps are open
to every user, and so are the /proc/net files.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from ..procfs import NetSnmp, ParseError, SoftnetStat, parse_net_netstat, parse_net_snmp, parse_softnet_stat
from ..procfs.sampler import read_file
from .parse import SOCK_DIAG_BY_FAMILY, LinkStats, TcpSocket, link_stats, parse_inet_diag

INET_DIAG_INFO_EXT = 1 << (2 - 1)  # request INET_DIAG_INFO (tcp_info): bit (INET_DIAG_INFO - 1)
# Every state but TIME_WAIT and SYN_RECV request sockets: those carry no
# tcp_info and are the bulk of the sockets on a busy server.
_TIME_WAIT, _SYN_RECV, _NEW_SYN_RECV = 6, 3, 12
DIAG_STATES = ((1 << 13) - 1) & ~((1 << _TIME_WAIT) | (1 << _SYN_RECV) | (1 << _NEW_SYN_RECV))
MAX_OWNER_LINKS = 50_000  # readlinks spent at most looking for the owners of sockets
# pyroute2 still spends ~0.15 ms per message receiving a dump: bound a call's cost
# (two dumps) on a server with very many connections
MAX_SOCKETS = 20_000
NLMSG_ERROR = 2
RAW_KEY = "perf_mcp_raw"


class NetSample(msgspec.Struct, frozen=True, kw_only=True):
    t_mono: float  # when the /proc/net counters were read
    links: list[LinkStats]
    snmp: NetSnmp | None
    netstat: NetSnmp | None
    softnet: SoftnetStat | None
    sockets: list[TcpSocket] | None  # None: not asked for, or inet_diag failed (see warnings)
    warnings: list[str]
    sockets_complete: bool = True  # False: the dump stopped at MAX_SOCKETS


def read_links() -> list[LinkStats]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        messages = ipr.get_links()
    links = [link_stats(m) for m in messages]
    return sorted((link for link in links if link is not None), key=lambda link: link.index)


def read_addresses(index: int) -> list[str]:
    """The IPv4 and IPv6 addresses configured on one interface."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        messages = ipr.get_addr(index=index)
    out: list[str] = []
    for m in messages:
        addr = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
        if isinstance(addr, str) and addr not in out:
            out.append(addr)
    return out


def _raw_diag_marshal() -> Any:
    """A pyroute2 Marshal for DiagSocket that keeps each reply's bytes and
    decodes only the netlink header (pyroute2 needs its type to see the end
    of the dump, and errors); parse_inet_diag decodes the rest. Marshal
    subclasses are pyroute2's own extension point (MarshalDiag is one)."""
    from pyroute2.netlink import nlmsg
    from pyroute2.netlink.diag import MarshalDiag

    class RawDiagMarshal(MarshalDiag):  # type: ignore[misc]
        def parse_one_message(self, key: int, flags: int, sequence_number: int, data: bytes, offset: int,
                              length: int) -> Any:
            msg = nlmsg()
            mlen, mtype, mflags, seq, pid = struct.unpack_from("=IHHII", data, offset)
            error: OSError | None = None
            if mtype == NLMSG_ERROR and length >= 20:
                code = -struct.unpack_from("=i", data, offset + 16)[0]
                if code:
                    error = OSError(code, os.strerror(code))
            msg["header"] = {"length": mlen, "type": mtype, "flags": mflags, "sequence_number": seq,
                             "pid": pid, "error": error}
            dict.__setitem__(msg, RAW_KEY, bytes(data[offset : offset + length]))
            return msg

    return RawDiagMarshal()


def read_tcp_sockets(max_sockets: int = MAX_SOCKETS) -> tuple[list[TcpSocket], bool]:
    """Every TCP socket but TIME_WAIT / SYN_RECV with its tcp_info, IPv4 then
    IPv6, at most max_sockets in all; (sockets, complete)."""
    from pyroute2 import DiagSocket
    from pyroute2.netlink import NLM_F_MATCH, NLM_F_REQUEST, NLM_F_ROOT
    from pyroute2.netlink.diag import inet_diag_req

    sockets: list[TcpSocket] = []
    with DiagSocket() as ds:
        ds.set_marshal(_raw_diag_marshal())
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            req = inet_diag_req()
            req["sdiag_family"] = family
            req["sdiag_protocol"] = socket.IPPROTO_TCP
            req["idiag_states"] = DIAG_STATES
            req["idiag_ext"] = INET_DIAG_INFO_EXT
            replies = ds.nlm_request(req, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_ROOT | NLM_F_MATCH)
            for msg in replies:
                raw = dict.get(msg, RAW_KEY)
                parsed = parse_inet_diag(raw) if isinstance(raw, bytes) else None
                if parsed is None:
                    continue
                if len(sockets) >= max_sockets:
                    return sockets, False
                sockets.append(parsed)
    return sockets, True


def _proc_net(path: str, parse: object, warnings: list[str]) -> NetSnmp | SoftnetStat | None:
    try:
        data = read_file(path)
    except OSError as exc:
        warnings.append(f"{path}: {exc.strerror or exc}")
        return None
    try:
        parsed = parse(data)  # type: ignore[operator]
    except ParseError as exc:
        warnings.append(str(exc))
        return None
    warnings.extend(parsed.warnings)
    return parsed  # type: ignore[no-any-return]


def take_sample(include_sockets: bool) -> NetSample:
    """One reading of everything, the /proc/net files back to back (their
    deltas are what the rates come from) and the netlink dumps around them."""
    warnings: list[str] = []
    links = read_links()
    t_mono = time.monotonic()
    snmp = _proc_net("/proc/net/snmp", parse_net_snmp, warnings)
    netstat = _proc_net("/proc/net/netstat", parse_net_netstat, warnings)
    softnet = _proc_net("/proc/net/softnet_stat", parse_softnet_stat, warnings)
    sockets: list[TcpSocket] | None = None
    complete = True
    if include_sockets:
        try:
            sockets, complete = read_tcp_sockets()
            if not complete:
                warnings.append(f"more than {MAX_SOCKETS} TCP sockets: the socket lists cover the first {MAX_SOCKETS}")
        except Exception as exc:  # pyroute2 decodes the replies: any error there costs only the details
            warnings.append(f"inet_diag (TCP sockets with tcp_info) failed: {type(exc).__name__}: {exc}; "
                            "no per-socket details")
    return NetSample(
        t_mono=t_mono,
        links=links,
        snmp=snmp if isinstance(snmp, NetSnmp) else None,
        netstat=netstat if isinstance(netstat, NetSnmp) else None,
        softnet=softnet if isinstance(softnet, SoftnetStat) else None,
        sockets=sockets,
        warnings=warnings,
        sockets_complete=complete,
    )


class SocketOwner(msgspec.Struct, frozen=True):
    pid: int
    comm: str


def _comm(pid: str) -> str:
    try:
        return read_file(f"/proc/{pid}/comm").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def socket_owners(inodes: Iterable[int], max_links: int = MAX_OWNER_LINKS) -> tuple[dict[int, SocketOwner], bool]:
    """Which process holds each socket inode, among the processes whose fd
    table this user may read (its own; others give EACCES and are skipped).
    Returns (owners, complete) where complete is False when the readlink
    budget ran out first."""
    wanted = {f"socket:[{i}]": i for i in inodes if i}
    owners: dict[int, SocketOwner] = {}
    budget = max_links
    if not wanted:
        return owners, True
    for pid in os.listdir("/proc"):
        if not pid.isdecimal():
            continue
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            budget -= 1
            if budget < 0:
                return owners, False
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EACCES, errno.ESRCH):
                    continue
                raise
            inode = wanted.get(target)
            if inode is not None and inode not in owners:
                owners[inode] = SocketOwner(pid=int(pid), comm=_comm(pid))
                if len(owners) == len(wanted):
                    return owners, True
    return owners, True


__all__ = [
    "NetSample",
    "SocketOwner",
    "read_addresses",
    "read_links",
    "read_tcp_sockets",
    "socket_owners",
    "take_sample",
]
