"""Network health: links (rtnetlink IFLA_STATS64), TCP sockets with tcp_info
(inet_diag), /proc/net/snmp, netstat and softnet_stat.

- parse.py: decoded netlink messages -> typed records (pure).
- collect.py: the reads (blocking; the tool runs them in trio.to_thread).
- analysis.py: rates between two samples, the worst sockets, findings (pure).
"""

from __future__ import annotations

from .analysis import NetHealth, analyse
from .collect import NetSample, SocketOwner, read_addresses, read_links, socket_owners, take_sample
from .parse import LinkStats, TcpSocket, link_stats, parse_inet_diag

__all__ = [
    "LinkStats",
    "NetHealth",
    "NetSample",
    "SocketOwner",
    "TcpSocket",
    "analyse",
    "link_stats",
    "read_addresses",
    "read_links",
    "socket_owners",
    "take_sample",
    "parse_inet_diag",
]
