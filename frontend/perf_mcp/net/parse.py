"""Netlink messages -> typed records (pure: no sockets, no clock).

The collector (collect.py) receives messages with pyroute2, which decodes the
netlink wire format; the functions here turn one decoded message into a
frozen Struct and never raise on a missing attribute (older kernels send
fewer, and an unprivileged reader may get less): a missing field is None.

``decode_link`` and ``decode_diag`` rebuild a decoded message from the raw
bytes of one netlink message, so tests (and fixtures captured on real
machines, tests/fixtures/netlink/) go through exactly the decoder the
collector uses.

Units: tcp_info times are microseconds in the kernel; they are kept in us
here and turned into ms only for display (analysis.py).
"""

from __future__ import annotations

import ipaddress
import socket
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


_TCP_INFO_FIELDS = {
    "retransmits": "tcpi_retransmits",
    "total_retrans": "tcpi_total_retrans",
    "lost": "tcpi_lost",
    "unacked": "tcpi_unacked",
    "rtt_us": "tcpi_rtt",
    "rttvar_us": "tcpi_rttvar",
    "min_rtt_us": "tcpi_min_rtt",
    "rto_us": "tcpi_rto",
    "cwnd": "tcpi_snd_cwnd",
    "ssthresh": "tcpi_snd_ssthresh",
    "snd_mss": "tcpi_snd_mss",
    "segs_out": "tcpi_segs_out",
    "bytes_retrans": "tcpi_bytes_retrans",
    "backoff": "tcpi_backoff",
    "ca_state": "tcpi_ca_state",
}


def _address(value: Any) -> str:
    """pyroute2 gives text for AF_INET/AF_INET6; anything else becomes text too."""
    if isinstance(value, str):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return value
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(addr)
    return str(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def tcp_socket(msg: Message) -> TcpSocket | None:
    """A decoded inet_diag_msg -> TcpSocket (None for a family we do not know)."""
    family = msg.get("idiag_family")
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    state_no = _int(msg.get("idiag_state")) or 0
    info = msg.get_attr("INET_DIAG_INFO")
    tcp: dict[str, int | None] = {k: None for k in _TCP_INFO_FIELDS}
    if info is not None:
        tcp = {k: _int(info.get(field)) for k, field in _TCP_INFO_FIELDS.items()}
    return TcpSocket(
        family=int(family),
        state=TCP_STATES.get(state_no, f"STATE_{state_no}"),
        local_addr=_address(msg.get("idiag_src")),
        local_port=_int(msg.get("idiag_sport")) or 0,
        remote_addr=_address(msg.get("idiag_dst")),
        remote_port=_int(msg.get("idiag_dport")) or 0,
        uid=_int(msg.get("idiag_uid")) or 0,
        inode=_int(msg.get("idiag_inode")) or 0,
        cookie=_int(msg.get("idiag_cookie")) or 0,
        rqueue=_int(msg.get("idiag_rqueue")) or 0,
        wqueue=_int(msg.get("idiag_wqueue")) or 0,
        **tcp,
    )


# ---------------------------------------------------------------- raw bytes


def decode_link(raw: bytes) -> Message:
    """The raw bytes of one RTM_NEWLINK message, decoded as the collector's
    pyroute2 decodes it."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg(raw)
    msg.decode()
    return msg  # type: ignore[no-any-return]


def decode_diag(raw: bytes) -> Message:
    """The raw bytes of one SOCK_DIAG_BY_FAMILY reply (inet_diag_msg)."""
    from pyroute2.netlink.diag import inet_diag_msg

    msg = inet_diag_msg(raw)
    msg.decode()
    return msg  # type: ignore[no-any-return]


def raw_message(msg: Any) -> bytes:
    """The wire bytes of a message pyroute2 received (to capture fixtures)."""
    length = int(msg["header"]["length"])
    return bytes(msg.data[msg.offset : msg.offset + length])
