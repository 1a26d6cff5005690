"""Parsers for /proc/net/dev, /proc/net/snmp, /proc/net/netstat and
/proc/net/softnet_stat.

All four are line-oriented: a garbled line (or, for snmp/netstat, a header and
value line pair that do not match) is skipped with a warning.
"""

from __future__ import annotations

from ._text import Raw, Record, Warnings, line_warning, lines_of


class NetDevStat(Record, frozen=True, gc=False):
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    rx_fifo: int
    rx_frame: int
    rx_compressed: int
    rx_multicast: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int
    tx_fifo: int
    tx_collisions: int
    tx_carrier: int
    tx_compressed: int


class NetDev(Record, frozen=True):
    interfaces: dict[str, NetDevStat]
    warnings: Warnings = ()


_NETDEV_NAMES = NetDevStat.__struct_fields__[1:]


def parse_net_dev(data: Raw) -> NetDev:
    """Parse /proc/net/dev. Old kernels print "eth0:123" with no space after
    the colon, so the name is split at the colon, not at whitespace."""
    interfaces: dict[str, NetDevStat] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/net/dev", warnings), 1):
        name, sep, rest = line.partition(":")
        if not sep:
            if lineno > 2 and line.strip():  # the first two lines are the header
                warnings.append(line_warning("/proc/net/dev", lineno, line, "no ':'"))
            continue
        tokens = rest.split()
        if len(tokens) != 16 or not name.strip():
            warnings.append(line_warning("/proc/net/dev", lineno, line, f"{len(tokens)} counters, need 16"))
            continue
        try:
            counters = [int(t) for t in tokens]
        except ValueError:
            warnings.append(line_warning("/proc/net/dev", lineno, line, "not an integer"))
            continue
        stat = NetDevStat(name=name.strip(), **dict(zip(_NETDEV_NAMES, counters, strict=True)))
        interfaces[stat.name] = stat
    return NetDev(interfaces=interfaces, warnings=tuple(warnings))


class NetSnmp(Record, frozen=True):
    """/proc/net/snmp or /proc/net/netstat: counters per protocol
    ("Ip", "Tcp", "Udp", "TcpExt", "IpExt", ...), names as the kernel spells them.
    Values can be negative (Tcp MaxConn is -1)."""

    protocols: dict[str, dict[str, int]]
    warnings: Warnings = ()

    def get(self, protocol: str, name: str) -> int | None:
        return self.protocols.get(protocol, {}).get(name)


def parse_net_snmp(data: Raw, what: str = "/proc/net/snmp") -> NetSnmp:
    """Parse the header-line/value-line pairs of /proc/net/snmp, /proc/net/netstat
    (and /proc/net/snmp6-less formats like them)."""
    protocols: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    header: tuple[str, list[str], int] | None = None
    for lineno, line in enumerate(lines_of(data, what, warnings), 1):
        prefix, sep, rest = line.partition(":")
        if not line.strip():
            continue
        if not sep:
            warnings.append(line_warning(what, lineno, line, "no 'Protocol:' prefix"))
            continue
        tokens = rest.split()
        if header is None or header[0] != prefix:
            if header is not None:
                warnings.append(line_warning(what, header[2], header[0], "header without values"))
            header = (prefix, tokens, lineno)
            continue
        names = header[1]
        header = None
        if len(tokens) != len(names):
            warnings.append(line_warning(what, lineno, line, f"{len(tokens)} values for {len(names)} names"))
            continue
        try:
            protocols[prefix] = dict(zip(names, map(int, tokens), strict=True))
        except ValueError:
            warnings.append(line_warning(what, lineno, line, "not an integer"))
    if header is not None:
        warnings.append(line_warning(what, header[2], header[0], "header without values"))
    return NetSnmp(protocols=protocols, warnings=tuple(warnings))


def parse_net_netstat(data: Raw) -> NetSnmp:
    return parse_net_snmp(data, "/proc/net/netstat")


class SoftnetCpu(Record, frozen=True, gc=False):
    cpu: int  # from the kernel's index column (5.10+), else the line number
    processed: int
    dropped: int  # backlog full: packets lost before the stack saw them
    time_squeeze: int  # net_rx_action ran out of budget/time with work left
    received_rps: int | None = None
    flow_limit_count: int | None = None
    backlog_len: int | None = None  # 5.10+
    input_qlen: int | None = None  # 6.x
    process_qlen: int | None = None


class SoftnetStat(Record, frozen=True):
    cpus: tuple[SoftnetCpu, ...]
    warnings: Warnings = ()


def _softnet_cpu(columns: list[int], lineno: int) -> SoftnetCpu:
    def col(i: int) -> int | None:
        return columns[i] if len(columns) > i else None

    return SoftnetCpu(
        cpu=columns[12] if len(columns) >= 13 else lineno - 1,
        processed=columns[0],
        dropped=columns[1],
        time_squeeze=columns[2],
        received_rps=col(9),
        flow_limit_count=col(10),
        backlog_len=col(11) if len(columns) >= 13 else None,
        input_qlen=col(13),
        process_qlen=col(14),
    )


def parse_softnet_stat(data: Raw) -> SoftnetStat:
    """Parse /proc/net/softnet_stat: one line of %08x columns per online CPU;
    10 columns (2.6.35+), 11 (3.11+), 13 (5.10+), 15 (6.x). Offline CPUs have
    no line, which is why the index column matters when it exists."""
    cpus: list[SoftnetCpu] = []
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, "/proc/net/softnet_stat", warnings), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 9:
            warnings.append(line_warning("/proc/net/softnet_stat", lineno, line, f"{len(tokens)} columns"))
            continue
        try:
            columns = [int(t, 16) for t in tokens]
        except ValueError:
            warnings.append(line_warning("/proc/net/softnet_stat", lineno, line, "not hexadecimal"))
            continue
        cpus.append(_softnet_cpu(columns, lineno))
    return SoftnetStat(cpus=tuple(cpus), warnings=tuple(warnings))
