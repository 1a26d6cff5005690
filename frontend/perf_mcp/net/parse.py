"""Netlink messages -> typed records (pure: no sockets, no clock).

- Links: pyroute2 decodes RTM_NEWLINK (a few per machine); link_stats turns one
  decoded message into LinkStats. ``decode_link`` rebuilds a decoded message
  from raw bytes, so tests go through the decoder the collector uses.
- TCP sockets: inet_diag dumps can hold tens of thousands of messages, and
  pyroute2's generic decoder costs ~0.3 ms per socket (3 s for 10k sockets,
  measured here), so the collector takes the raw bytes of each message from
  pyroute2's DiagSocket and parse_inet_diag decodes the fixed layout
  (inet_diag_msg, then the tcp_info attribute) with struct: ~40x less.

Nothing here raises on a missing attribute (older kernels send fewer fields,
and a shorter tcp_info): a missing field is None.

Units: tcp_info times are microseconds in the kernel; they are kept in us
here and turned into ms only for display (analysis.py).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

# tcp states as include/net/tcp_states.h numbers them (also ss's names)
TCP_STATES: dict[int, str] = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
LISTEN = 10

# The IFLA_STATS64 counters (struct rtnl_link_stats64), kernel names.
LINK_COUNTERS = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "multicast",
    "collisions",
    "rx_length_errors",
    "rx_over_errors",
    "rx_crc_errors",
    "rx_frame_errors",
    "rx_fifo_errors",
    "rx_missed_errors",
    "tx_aborted_errors",
    "tx_carrier_errors",
    "tx_fifo_errors",
    "tx_heartbeat_errors",
    "tx_window_errors",
    "rx_compressed",
    "tx_compressed",
)


class Message(Protocol):
    """What pyroute2's decoded nlmsg offers (and all this module uses)."""

    def get_attr(self, name: str, default: Any = None) -> Any: ...

    def get(self, key: str, default: Any = None) -> Any: ...


class LinkStats(msgspec.Struct, frozen=True, kw_only=True):
    """One network interface from RTM_NEWLINK."""

    name: str
    index: int
    operstate: str  # UP, DOWN, UNKNOWN (loopback, veth peers before carrier), ...
    mtu: int | None
    kind: str | None  # IFLA_INFO_KIND: veth, bridge, vlan, ... (None for physical NICs and lo)
    stats64: bool  # False: the 32-bit IFLA_STATS fallback (counters wrap at 4 GiB)
    counters: dict[str, int]  # LINK_COUNTERS that the kernel sent


def _counters(stats: Mapping[str, Any] | None) -> dict[str, int]:
    if not stats:
        return {}
    out: dict[str, int] = {}
    for name in LINK_COUNTERS:
        value = stats.get(name)
        if isinstance(value, int):
            out[name] = value
    return out


def _link_kind(msg: Message) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return None
    kind = info.get_attr("IFLA_INFO_KIND")
    return kind if isinstance(kind, str) else None


def link_stats(msg: Message) -> LinkStats | None:
    """A decoded RTM_NEWLINK message -> LinkStats (None without a name)."""
    name = msg.get_attr("IFLA_IFNAME")
    if not isinstance(name, str) or not name:
        return None
    stats64 = msg.get_attr("IFLA_STATS64")
    counters = _counters(stats64)
    if not counters:
        counters = _counters(msg.get_attr("IFLA_STATS"))
    mtu = msg.get_attr("IFLA_MTU")
    operstate = msg.get_attr("IFLA_OPERSTATE")
    return LinkStats(
        name=name,
        index=int(msg.get("index", 0) or 0),
        operstate=operstate if isinstance(operstate, str) else "UNKNOWN",
        mtu=mtu if isinstance(mtu, int) else None,
        kind=_link_kind(msg),
        stats64=bool(stats64),
        counters=counters,
    )


class TcpSocket(msgspec.Struct, frozen=True, kw_only=True):
    """One TCP socket from inet_diag with its tcp_info (INET_DIAG_INFO).

    Fields from tcp_info are None when the kernel sent no tcp_info (a socket
    in TIME_WAIT, or a request socket).
    """

    family: int  # AF_INET / AF_INET6
    state: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    uid: int
    inode: int  # 0 for sockets without a file (orphans, TIME_WAIT)
    cookie: int  # stable id of the socket while it lives
    rqueue: int  # LISTEN: accept queue length; else bytes not yet read
    wqueue: int  # LISTEN: accept backlog; else bytes not yet acked
    retransmits: int | None  # consecutive RTO retransmits now outstanding (tcpi_retransmits)
    total_retrans: int | None  # segments retransmitted over the socket's life
    lost: int | None  # segments currently considered lost
    unacked: int | None  # segments in flight
    rtt_us: int | None  # smoothed RTT
    rttvar_us: int | None
    min_rtt_us: int | None
    rto_us: int | None
    cwnd: int | None  # congestion window, segments
    ssthresh: int | None
    snd_mss: int | None
    segs_out: int | None
    bytes_retrans: int | None
    backoff: int | None
    ca_state: int | None  # 0 Open, 1 Disorder, 2 CWR, 3 Recovery, 4 Loss

    @property
    def endpoint(self) -> str:
        return f"{format_endpoint(self.local_addr, self.local_port)} -> {format_endpoint(self.remote_addr, self.remote_port)}"


def format_endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# ---------------------------------------------------------------- inet_diag (bytes)

SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO = 2
_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_msg (include/uapi/linux/inet_diag.h): family, state, timer, retrans,
# sockid {sport, dport (big-endian), src[4], dst[4] (big-endian words), if, cookie[2]},
# expires, rqueue, wqueue, uid, inode
_DIAG_HEAD = struct.Struct("=BBBB")
_PORTS = struct.Struct(">HH")
_DIAG_MSG_LEN = 72
_NLA = struct.Struct("=HH")
# struct tcp_info (include/uapi/linux/tcp.h): offset and format of the fields read; the
# kernel appends fields over time, so a shorter tcp_info (an older kernel) leaves the later ones None.
_TCP_INFO: dict[str, tuple[int, str]] = {
    "ca_state": (1, "B"),
    "retransmits": (2, "B"),
    "backoff": (4, "B"),
    "rto_us": (8, "I"),
    "snd_mss": (16, "I"),
    "unacked": (24, "I"),
    "lost": (32, "I"),
    "rtt_us": (68, "I"),
    "rttvar_us": (72, "I"),
    "ssthresh": (76, "I"),
    "cwnd": (80, "I"),
    "total_retrans": (100, "I"),
    "segs_out": (136, "I"),
    "min_rtt_us": (148, "I"),
    "bytes_retrans": (208, "Q"),
}


class DiagError(ValueError):
    """Bytes that are not an inet_diag reply."""


def _tcp_info(payload: bytes) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, (offset, fmt) in _TCP_INFO.items():
        size = struct.calcsize(fmt)
        out[name] = struct.unpack_from("=" + fmt, payload, offset)[0] if len(payload) >= offset + size else None
    return out


def _diag_address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def parse_inet_diag(raw: bytes) -> TcpSocket | None:
    """One netlink message of an inet_diag dump (nlmsghdr, inet_diag_msg, attributes)
    -> TcpSocket; None for another message type or family. DiagError when
    the bytes are shorter than their own header says."""
    if len(raw) < _NLMSGHDR.size + _DIAG_MSG_LEN:
        raise DiagError(f"{len(raw)} bytes, an inet_diag message has at least {_NLMSGHDR.size + _DIAG_MSG_LEN}")
    length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(raw, 0)
    if length > len(raw) or length < _NLMSGHDR.size + _DIAG_MSG_LEN:
        raise DiagError(f"header length {length}, {len(raw)} bytes present")
    if mtype != SOCK_DIAG_BY_FAMILY:
        return None
    base = _NLMSGHDR.size
    family, state_no, _timer, _retrans = _DIAG_HEAD.unpack_from(raw, base)
    sport, dport = _PORTS.unpack_from(raw, base + 4)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    src, dst = raw[base + 8 : base + 24], raw[base + 24 : base + 40]
    cookie, = struct.unpack_from("=Q", raw, base + 44)
    _expires, rqueue, wqueue, uid, inode = struct.unpack_from("=5I", raw, base + 52)
    info: dict[str, int | None] = {name: None for name in _TCP_INFO}
    offset = base + _DIAG_MSG_LEN
    while offset + _NLA.size <= length:
        nla_len, nla_type = _NLA.unpack_from(raw, offset)
        if nla_len < _NLA.size or offset + nla_len > length:
            break  # a damaged attribute: keep what was read
        if nla_type & 0x3FFF == INET_DIAG_INFO:
            info = _tcp_info(raw[offset + _NLA.size : offset + nla_len])
        offset += (nla_len + 3) & ~3
    return TcpSocket(
        family=family, state=TCP_STATES.get(state_no, f"STATE_{state_no}"),
        local_addr=_diag_address(family, src), local_port=sport,
        remote_addr=_diag_address(family, dst), remote_port=dport,
        uid=uid, inode=inode, cookie=cookie, rqueue=rqueue, wqueue=wqueue, **info,
    )


# ---------------------------------------------------------------- raw bytes


def decode_link(raw: bytes) -> Message:
    """The raw bytes of one RTM_NEWLINK message, decoded as the collector's
    pyroute2 decodes it."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg(raw)
    msg.decode()
    return msg  # type: ignore[no-any-return]


def raw_message(msg: Any) -> bytes:
    """The wire bytes of a message pyroute2 received (to capture fixtures)."""
    length = int(msg["header"]["length"])
    return bytes(msg.data[msg.offset : msg.offset + length])
