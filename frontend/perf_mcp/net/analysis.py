"""Network health from two samples: rates, the worst sockets, findings (pure).

Rates are deltas of the kernel's counters between two samples divided by the
time between them (taken when /proc/net/snmp was read). A counter that went
backwards gives no rate and a warning, never a negative number.

- Retransmit % = Tcp RetransSegs delta / Tcp OutSegs delta x 100, as nstat and
  `sar -n ETCP` compute it. Below MIN_OUT_SEGS segments sent in the window the
  ratio is too noisy to judge: a retransmit there is an info finding only.
- Interface drops/s = rx_dropped + tx_dropped + rx_missed_errors per second
  (missed = the NIC's ring overflowed, which `ip -s link` shows as "missed").
- Thresholds come from the one table (perf_mcp.use.thresholds): network
  drops/s (> 0 warning, > 100 critical; also used for errors, softnet drops,
  listen-queue and UDP buffer drops, which are drops by another name) and
  retransmits (> 1% warning, > 5% critical).
- Findings name the drill-down (Finding.next): retransmits, interface drops and
  listen-queue drops perf_tcp_trace (which connections suffer, which ports leave
  connections pending); UDP buffer drops perf_syscall_count per process (who
  receives); softnet drops perf_cpu_profile (what keeps the CPUs in softirq).
  Interface errors (the physical layer) and the since-boot ratio have none.
"""

from __future__ import annotations

import ipaddress

import msgspec

from ..contract import Evidence, Finding, NextCall, next_call, sort_findings
from ..procfs import NetSnmp, SoftnetStat, softnet_rates
from ..procfs.derive import Deltas
from ..use.thresholds import Threshold, Thresholds
from .collect import NetSample, SocketOwner
from .parse import LinkStats, TcpSocket, format_endpoint

TOOL = "perf_net_health"
MIN_OUT_SEGS = 100
TOP_SOCKETS = 5

# (protocol, name) of the counters reported with their deltas
TRACKED_COUNTERS: tuple[tuple[str, str], ...] = (
    ("Tcp", "ActiveOpens"),
    ("Tcp", "PassiveOpens"),
    ("Tcp", "AttemptFails"),
    ("Tcp", "EstabResets"),
    ("Tcp", "InSegs"),
    ("Tcp", "OutSegs"),
    ("Tcp", "RetransSegs"),
    ("Tcp", "InErrs"),
    ("Tcp", "OutRsts"),
    ("Tcp", "InCsumErrors"),
    ("TcpExt", "ListenOverflows"),
    ("TcpExt", "ListenDrops"),
    ("TcpExt", "TCPTimeouts"),
    ("TcpExt", "TCPLostRetransmit"),
    ("TcpExt", "TCPSynRetrans"),
    ("TcpExt", "TCPFastRetrans"),
    ("TcpExt", "TCPSlowStartRetrans"),
    ("TcpExt", "TCPRetransFail"),
    ("TcpExt", "TCPBacklogDrop"),
    ("TcpExt", "TCPRcvQDrop"),
    ("TcpExt", "TCPZeroWindowDrop"),
    ("TcpExt", "TCPOFODrop"),
    ("TcpExt", "TCPAbortOnTimeout"),
    ("TcpExt", "TCPMemoryPressures"),
    ("Udp", "InDatagrams"),
    ("Udp", "OutDatagrams"),
    ("Udp", "NoPorts"),
    ("Udp", "InErrors"),
    ("Udp", "RcvbufErrors"),
    ("Udp", "SndbufErrors"),
    ("Ip", "InDiscards"),
    ("Ip", "OutDiscards"),
)
_NETSTAT_PROTOCOLS = {"TcpExt", "IpExt", "MPTcpExt"}


class CounterDelta(msgspec.Struct, kw_only=True):
    name: str  # "Tcp.RetransSegs" (protocol.name as nstat prints it, without the prefix merge)
    source: str  # /proc/net/snmp or /proc/net/netstat
    start: int
    end: int
    delta: int | None
    per_s: float | None


class InterfaceHealth(msgspec.Struct, kw_only=True):
    name: str
    index: int
    operstate: str
    kind: str | None
    mtu: int | None
    rx_bytes_s: float | None
    tx_bytes_s: float | None
    rx_packets_s: float | None
    tx_packets_s: float | None
    rx_dropped_s: float | None
    tx_dropped_s: float | None
    rx_missed_s: float | None
    drops_s: float | None  # rx_dropped + tx_dropped + rx_missed_errors
    errors_s: float | None  # rx_errors + tx_errors
    totals: dict[str, int]  # error and drop counters since the interface was created
    stats64: bool


class TcpHealth(msgspec.Struct, kw_only=True):
    """Namespace-wide TCP over the window (deltas), and since boot."""

    out_segs: int | None
    retrans_segs: int | None
    retransmit_pct: float | None
    in_segs: int | None
    in_errs: int | None
    out_rsts: int | None
    timeouts: int | None  # TcpExt TCPTimeouts: RTO fired
    lost_retransmit: int | None
    syn_retrans: int | None
    listen_overflows: int | None
    listen_drops: int | None
    curr_estab: int | None
    since_boot_out_segs: int | None
    since_boot_retrans_segs: int | None
    since_boot_retransmit_pct: float | None


class SoftnetHealth(msgspec.Struct, kw_only=True):
    processed_s: float | None
    dropped_s: float | None  # backlog full: packets lost before the stack saw them
    time_squeeze_s: float | None  # net_rx_action ran out of budget with work left
    dropped_total: int
    time_squeeze_total: int
    dropped_s_by_cpu: dict[int, float]  # CPUs with drops in the window


class SocketReport(msgspec.Struct, kw_only=True):
    local: str
    remote: str
    state: str
    uid: int
    pid: int | None  # when this user may read the owner's fd table
    comm: str | None
    retrans_in_window: int | None  # tcp_info total_retrans delta (None: socket new in the window)
    total_retrans: int | None
    retransmits_outstanding: int | None  # consecutive RTO retransmits (tcpi_retransmits)
    lost: int | None
    unacked: int | None
    rtt_ms: float | None
    rttvar_ms: float | None
    min_rtt_ms: float | None
    cwnd: int | None
    segs_out: int | None
    retrans_pct_of_life: float | None  # total_retrans / segs_out x 100


class SocketsHealth(msgspec.Struct, kw_only=True):
    total: int
    by_state: dict[str, int]
    with_retrans_in_window: int
    retrans_in_window: int  # sum of total_retrans deltas of sockets seen in both samples
    worst_by_retransmits: list[SocketReport]
    worst_by_rtt: list[SocketReport]
    owners_complete: bool  # False: the search for owning processes stopped at its budget
    dump_complete: bool  # False: more sockets than collect.MAX_SOCKETS; the lists cover the first ones
    filtered_by_addresses: list[str] | None  # the interface's addresses, when `interface` was given


class NetHealth(msgspec.Struct, kw_only=True):
    interval_s: float
    interfaces: list[InterfaceHealth]
    tcp: TcpHealth | None
    softnet: SoftnetHealth | None
    counters: list[CounterDelta]
    sockets: SocketsHealth | None
    findings: list[Finding]
    warnings: list[str]


# ---------------------------------------------------------------- interfaces


def _sum(*values: float | None) -> float | None:
    if any(v is None for v in values):
        return None
    return float(sum(v for v in values if v is not None))


_TOTAL_KEYS = ("rx_dropped", "tx_dropped", "rx_missed_errors", "rx_errors", "tx_errors",
               "rx_crc_errors", "rx_fifo_errors", "rx_over_errors", "tx_carrier_errors", "tx_fifo_errors")


def interface_health(prev: LinkStats, cur: LinkStats, interval_s: float, warnings: list[str]) -> InterfaceHealth:
    ds = Deltas(interval_s, warnings)

    def rate(name: str) -> float | None:
        return ds.rate(prev.counters.get(name), cur.counters.get(name), f"{cur.name} {name}")

    rx_dropped, tx_dropped, missed = rate("rx_dropped"), rate("tx_dropped"), rate("rx_missed_errors")
    return InterfaceHealth(
        name=cur.name,
        index=cur.index,
        operstate=cur.operstate,
        kind=cur.kind,
        mtu=cur.mtu,
        rx_bytes_s=rate("rx_bytes"),
        tx_bytes_s=rate("tx_bytes"),
        rx_packets_s=rate("rx_packets"),
        tx_packets_s=rate("tx_packets"),
        rx_dropped_s=rx_dropped,
        tx_dropped_s=tx_dropped,
        rx_missed_s=missed,
        drops_s=_sum(rx_dropped, tx_dropped, missed if missed is not None else 0.0),
        errors_s=_sum(rate("rx_errors"), rate("tx_errors")),
        totals={k: cur.counters[k] for k in _TOTAL_KEYS if k in cur.counters},
        stats64=cur.stats64,
    )


def interfaces_health(prev: list[LinkStats], cur: list[LinkStats], interval_s: float,
                      warnings: list[str]) -> list[InterfaceHealth]:
    """Matched by index and name (an interface replaced in the window is skipped)."""
    before = {(link.index, link.name): link for link in prev}
    out: list[InterfaceHealth] = []
    for link in cur:
        p = before.get((link.index, link.name))
        if p is not None:
            out.append(interface_health(p, link, interval_s, warnings))
    return out


# ---------------------------------------------------------------- counters


def counter_deltas(prev: NetSample, cur: NetSample, interval_s: float, warnings: list[str]) -> list[CounterDelta]:
    ds = Deltas(interval_s, warnings)
    out: list[CounterDelta] = []
    for proto, name in TRACKED_COUNTERS:
        source = "/proc/net/netstat" if proto in _NETSTAT_PROTOCOLS else "/proc/net/snmp"
        a_file, b_file = (prev.netstat, cur.netstat) if proto in _NETSTAT_PROTOCOLS else (prev.snmp, cur.snmp)
        a = a_file.get(proto, name) if a_file else None
        b = b_file.get(proto, name) if b_file else None
        if a is None or b is None:
            continue
        delta = ds.delta(a, b, f"{proto} {name}")
        out.append(CounterDelta(name=f"{proto}.{name}", source=source, start=a, end=b, delta=delta,
                                per_s=None if delta is None else delta / interval_s))
    return out


def retransmit_pct(retrans: int | None, out: int | None) -> float | None:
    """RetransSegs / OutSegs x 100; 0 when nothing was sent or retransmitted."""
    if retrans is None or out is None:
        return None
    if out == 0:
        return 0.0 if retrans == 0 else None
    return retrans / out * 100.0


def tcp_health(counters: list[CounterDelta], snmp: NetSnmp | None) -> TcpHealth | None:
    by_name = {c.name: c for c in counters}
    if "Tcp.OutSegs" not in by_name:
        return None

    def d(name: str) -> int | None:
        c = by_name.get(name)
        return None if c is None else c.delta

    out_total = snmp.get("Tcp", "OutSegs") if snmp else None
    retrans_total = snmp.get("Tcp", "RetransSegs") if snmp else None
    return TcpHealth(
        out_segs=d("Tcp.OutSegs"),
        retrans_segs=d("Tcp.RetransSegs"),
        retransmit_pct=retransmit_pct(d("Tcp.RetransSegs"), d("Tcp.OutSegs")),
        in_segs=d("Tcp.InSegs"),
        in_errs=d("Tcp.InErrs"),
        out_rsts=d("Tcp.OutRsts"),
        timeouts=d("TcpExt.TCPTimeouts"),
        lost_retransmit=d("TcpExt.TCPLostRetransmit"),
        syn_retrans=d("TcpExt.TCPSynRetrans"),
        listen_overflows=d("TcpExt.ListenOverflows"),
        listen_drops=d("TcpExt.ListenDrops"),
        curr_estab=snmp.get("Tcp", "CurrEstab") if snmp else None,
        since_boot_out_segs=out_total,
        since_boot_retrans_segs=retrans_total,
        since_boot_retransmit_pct=retransmit_pct(retrans_total, out_total),
    )


def softnet_health(prev: SoftnetStat | None, cur: SoftnetStat | None, interval_s: float,
                   warnings: list[str]) -> SoftnetHealth | None:
    if prev is None or cur is None:
        return None
    rates = softnet_rates(prev, cur, interval_s, warnings)
    return SoftnetHealth(
        processed_s=rates.processed_s,
        dropped_s=rates.dropped_s,
        time_squeeze_s=rates.time_squeeze_s,
        dropped_total=sum(c.dropped for c in cur.cpus),
        time_squeeze_total=sum(c.time_squeeze for c in cur.cpus),
        dropped_s_by_cpu={n: r.dropped_s for n, r in rates.per_cpu.items() if r.dropped_s},
    )


# ---------------------------------------------------------------- sockets


def _ms(us: int | None) -> float | None:
    return None if us is None else round(us / 1000.0, 3)


def socket_report(sock: TcpSocket, before: TcpSocket | None, owner: SocketOwner | None) -> SocketReport:
    in_window: int | None = None
    if before is not None and sock.total_retrans is not None and before.total_retrans is not None:
        in_window = max(0, sock.total_retrans - before.total_retrans)
    life_pct = None
    if sock.total_retrans is not None and sock.segs_out:
        life_pct = round(sock.total_retrans / sock.segs_out * 100.0, 3)
    return SocketReport(
        local=format_endpoint(sock.local_addr, sock.local_port),
        remote=format_endpoint(sock.remote_addr, sock.remote_port),
        state=sock.state,
        uid=sock.uid,
        pid=owner.pid if owner else None,
        comm=owner.comm if owner else None,
        retrans_in_window=in_window,
        total_retrans=sock.total_retrans,
        retransmits_outstanding=sock.retransmits,
        lost=sock.lost,
        unacked=sock.unacked,
        rtt_ms=_ms(sock.rtt_us),
        rttvar_ms=_ms(sock.rttvar_us),
        min_rtt_ms=_ms(sock.min_rtt_us),
        cwnd=sock.cwnd,
        segs_out=sock.segs_out,
        retrans_pct_of_life=life_pct,
    )


def socket_matches(sock: TcpSocket, addresses: set[str] | None, loopback: bool) -> bool:
    if addresses is None:
        return True
    if sock.local_addr in addresses:
        return True
    if loopback:
        try:
            return ipaddress.ip_address(sock.local_addr).is_loopback
        except ValueError:
            return False
    return False


def filter_sockets(sockets: list[TcpSocket], addresses: list[str] | None, loopback: bool) -> list[TcpSocket]:
    wanted = None if addresses is None else set(addresses)
    return [s for s in sockets if socket_matches(s, wanted, loopback)]


def worst_sockets(prev: list[TcpSocket], cur: list[TcpSocket], top_n: int = TOP_SOCKETS
                  ) -> tuple[list[TcpSocket], list[TcpSocket], dict[int, TcpSocket]]:
    """(by retransmits, by RTT, the first sample's sockets by cookie)."""
    before = {s.cookie: s for s in prev if s.cookie}

    def window_retrans(s: TcpSocket) -> int:
        b = before.get(s.cookie)
        if b is None or b.total_retrans is None or s.total_retrans is None:
            return 0
        return max(0, s.total_retrans - b.total_retrans)

    connected = [s for s in cur if s.state != "LISTEN"]
    by_retrans = sorted((s for s in connected if (s.total_retrans or 0) > 0),
                        key=lambda s: (window_retrans(s), s.total_retrans or 0), reverse=True)[:top_n]
    by_rtt = sorted((s for s in connected if s.rtt_us), key=lambda s: s.rtt_us or 0, reverse=True)[:top_n]
    return by_retrans, by_rtt, before


def sockets_health(prev: list[TcpSocket], cur: list[TcpSocket], owners: dict[int, SocketOwner],
                   owners_complete: bool, addresses: list[str] | None, dump_complete: bool = True) -> SocketsHealth:
    by_retrans, by_rtt, before = worst_sockets(prev, cur)
    by_state: dict[str, int] = {}
    in_window_total = 0
    with_retrans = 0
    for s in cur:
        by_state[s.state] = by_state.get(s.state, 0) + 1
        b = before.get(s.cookie)
        if b is not None and b.total_retrans is not None and s.total_retrans is not None:
            delta = max(0, s.total_retrans - b.total_retrans)
            in_window_total += delta
            with_retrans += delta > 0

    def report(s: TcpSocket) -> SocketReport:
        return socket_report(s, before.get(s.cookie), owners.get(s.inode))

    return SocketsHealth(
        total=len(cur),
        by_state=dict(sorted(by_state.items())),
        with_retrans_in_window=with_retrans,
        retrans_in_window=in_window_total,
        worst_by_retransmits=[report(s) for s in by_retrans],
        worst_by_rtt=[report(s) for s in by_rtt],
        owners_complete=owners_complete,
        dump_complete=dump_complete,
        filtered_by_addresses=addresses,
    )


def sockets_to_attribute(prev: list[TcpSocket], cur: list[TcpSocket]) -> set[int]:
    """The inodes whose owners are worth looking up: those that will be reported."""
    by_retrans, by_rtt, _ = worst_sockets(prev, cur)
    return {s.inode for s in (*by_retrans, *by_rtt) if s.inode}


# ---------------------------------------------------------------- findings


def _counter(counters: list[CounterDelta], name: str) -> CounterDelta | None:
    return next((c for c in counters if c.name == name), None)


def _counter_evidence(c: CounterDelta, interval_s: float) -> Evidence:
    proto, _, name = c.name.partition(".")
    return Evidence(tool=TOOL, counter=f"{c.source} {proto} {name}", value=c.delta, window_s=round(interval_s, 3),
                    sample=f"{c.start} -> {c.end}")


def retransmit_finding(tcp: TcpHealth, counters: list[CounterDelta], sockets: SocketsHealth | None,
                       row: Threshold, interval_s: float) -> Finding | None:
    pct, out, retrans = tcp.retransmit_pct, tcp.out_segs, tcp.retrans_segs
    if pct is None or out is None or not retrans:
        return None
    severity = row.severity(pct) if out >= MIN_OUT_SEGS else None
    evidence = [_counter_evidence(c, interval_s) for name in ("Tcp.RetransSegs", "Tcp.OutSegs")
                if (c := _counter(counters, name)) is not None]
    evidence.append(Evidence(tool=TOOL, counter="retransmit % (RetransSegs / OutSegs)", value=round(pct, 3),
                             threshold=row.limit(severity) if severity else row.warning,
                             window_s=round(interval_s, 3)))
    for name in ("TcpExt.TCPTimeouts", "TcpExt.TCPLostRetransmit", "TcpExt.TCPFastRetrans"):
        c = _counter(counters, name)
        if c is not None and c.delta:
            evidence.append(_counter_evidence(c, interval_s))
    corroborated = False
    if sockets is not None and sockets.worst_by_retransmits:
        worst = sockets.worst_by_retransmits[0]
        corroborated = bool(worst.retrans_in_window)
        evidence.append(Evidence(
            tool=TOOL, counter="tcp_info total_retrans (inet_diag), worst socket",
            value=worst.retrans_in_window if worst.retrans_in_window is not None else worst.total_retrans,
            window_s=round(interval_s, 3),
            sample=(f"{worst.local} -> {worst.remote} {worst.state}: total_retrans {worst.total_retrans}, "
                    f"lost {worst.lost}, unacked {worst.unacked}, rtt {worst.rtt_ms} ms, cwnd {worst.cwnd}"
                    + (f", pid {worst.pid} ({worst.comm})" if worst.pid else f", uid {worst.uid}")),
        ))
    metrics = {"retransmit_pct": round(pct, 3), "retrans_segs": float(retrans), "out_segs": float(out),
               "window_s": round(interval_s, 3)}
    if sockets is not None:
        metrics["tcp_info_retrans_in_window"] = float(sockets.retrans_in_window)
    if severity is None:
        why = (f"only {out} segments were sent, too few to judge (< {MIN_OUT_SEGS})"
               if out < MIN_OUT_SEGS else f"under the {row.warning:g}% warning threshold")
        return Finding(id="network.tcp_retransmits", severity="info", resource="network",
                       title=f"TCP retransmitted {retrans} of {out} segments ({pct:.2f}%)",
                       detail=f"{retrans} retransmissions in {interval_s:.1f} s; {why}.",
                       confidence=0.5, metrics=metrics, evidence=evidence, suggestion="")
    confidence = 0.75 if out >= 1000 else 0.6
    if corroborated:
        confidence += 0.15
    return Finding(
        id="network.tcp_retransmits", severity=severity, resource="network",
        title=f"TCP retransmits {pct:.1f}% of segments sent",
        detail=(f"{retrans} of {out} TCP segments sent in {interval_s:.1f} s were retransmissions "
                f"({pct:.2f}%, {severity} above {row.limit(severity):g}%). Retransmits mean segments or "
                "their ACKs were lost (or delayed past the RTO) between this host and its peers."),
        confidence=round(min(confidence, 0.95), 2), metrics=metrics, evidence=evidence,
        suggestion=("Find where packets are lost: interface drops and errors here and on the peer, "
                    "firewall/nftables drops, a congested or lossy link. perf_tcp_trace shows which "
                    "connections retransmit; compare the worst sockets' RTT with their minimum RTT for queueing."),
        next=next_call("perf_tcp_trace", mode="lifecycle", duration_s=10),
    )


def _rate_finding(fid: str, title: str, rate: float | None, row: Threshold, interval_s: float,
                  evidence: list[Evidence], detail: str, suggestion: str,
                  nxt: NextCall | None = None) -> Finding | None:
    severity = row.severity(rate)
    if severity is None or rate is None:
        return None
    return Finding(id=fid, severity=severity, resource="network",
                   title=title.format(rate=rate), detail=detail.format(rate=rate, interval=interval_s),
                   confidence=0.8 if rate * interval_s >= 10 else 0.65,
                   metrics={"per_s": round(rate, 3), "window_s": round(interval_s, 3)},
                   evidence=evidence, suggestion=suggestion, next=nxt)


def interface_findings(interfaces: list[InterfaceHealth], row: Threshold, interval_s: float) -> list[Finding]:
    out: list[Finding] = []
    for i in interfaces:
        ev = [Evidence(tool=TOOL, counter=f"IFLA_STATS64 {i.name} {k}", value=v, threshold=row.warning,
                       window_s=round(interval_s, 3))
              for k, v in (("rx_dropped/s", i.rx_dropped_s), ("tx_dropped/s", i.tx_dropped_s),
                           ("rx_missed_errors/s", i.rx_missed_s)) if v]
        f = _rate_finding(
            f"network.interface_drops.{i.name}", f"{i.name} drops {{rate:.1f}} packets/s", i.drops_s, row,
            interval_s, ev,
            f"Interface {i.name} dropped {{rate:.1f}} packets/s over {{interval:.1f}} s (rx_dropped + tx_dropped "
            "+ rx_missed_errors from IFLA_STATS64).",
            "rx drops: the receive ring or backlog overflowed (ethtool -S, ring sizes, softnet drops) or "
            "packets nobody wanted (unknown protocol, VLAN); tx drops: a full qdisc or driver queue. "
            "perf_tcp_trace shows which connections retransmit what was dropped.",
            next_call("perf_tcp_trace", mode="lifecycle", duration_s=10))
        if f:
            out.append(f)
        f = _rate_finding(
            f"network.interface_errors.{i.name}", f"{i.name} errors {{rate:.1f}}/s", i.errors_s, row, interval_s,
            [Evidence(tool=TOOL, counter=f"IFLA_STATS64 {i.name} rx_errors+tx_errors /s", value=i.errors_s,
                      threshold=row.warning, window_s=round(interval_s, 3))],
            f"Interface {i.name} counted {{rate:.1f}} errors/s (rx_errors + tx_errors) over {{interval:.1f}} s.",
            "Check the cable/link, duplex and the driver's counters (ethtool -S); CRC and frame errors "
            "point at the physical layer.")
        if f:
            out.append(f)
    return out


def counter_findings(counters: list[CounterDelta], softnet: SoftnetHealth | None, row: Threshold,
                     interval_s: float) -> list[Finding]:
    out: list[Finding] = []
    listen = [c for c in (_counter(counters, "TcpExt.ListenOverflows"), _counter(counters, "TcpExt.ListenDrops"))
              if c is not None]
    # ListenDrops includes ListenOverflows; report the larger
    listen_rate = max((c.per_s or 0.0 for c in listen), default=None)
    f = _rate_finding(
        "network.listen_queue_drops", "Listen queues dropped {rate:.1f} connection attempts/s", listen_rate,
        row, interval_s, [_counter_evidence(c, interval_s) for c in listen if c.delta],
        "A listening socket's accept queue was full (or a SYN could not be handled): {rate:.1f} drops/s "
        "over {interval:.1f} s (TcpExt ListenOverflows / ListenDrops).",
        "The application does not accept() fast enough, or its backlog is small: raise listen(backlog) and "
        "net.core.somaxconn, or find why the accepting thread is slow (perf_cpu_profile, perf_offcpu_profile). "
        "perf_tcp_trace shows the connections each listening port accepts and leaves pending.",
        next_call("perf_tcp_trace", mode="lifecycle", duration_s=10))
    if f:
        out.append(f)
    udp = [c for c in (_counter(counters, "Udp.RcvbufErrors"), _counter(counters, "Udp.SndbufErrors"))
           if c is not None]
    udp_rate = sum((c.per_s or 0.0) for c in udp) if udp else None
    f = _rate_finding(
        "network.udp_buffer_drops", "UDP socket buffers dropped {rate:.1f} datagrams/s", udp_rate, row,
        interval_s, [_counter_evidence(c, interval_s) for c in udp if c.delta],
        "UDP datagrams were dropped because a socket buffer was full: {rate:.1f}/s over {interval:.1f} s.",
        "The receiver reads too slowly or its SO_RCVBUF is small (net.core.rmem_max). perf_syscall_count "
        "per process shows who receives (recvmsg, recvfrom) and how often.",
        next_call("perf_syscall_count", per_process=True, duration_s=10))
    if f:
        out.append(f)
    if softnet is not None:
        f = _rate_finding(
            "network.softnet_drops", "Softnet backlog dropped {rate:.1f} packets/s", softnet.dropped_s, row,
            interval_s,
            [Evidence(tool=TOOL, counter="/proc/net/softnet_stat dropped (all CPUs) /s", value=softnet.dropped_s,
                      threshold=row.warning, window_s=round(interval_s, 3))],
            "The per-CPU input backlog was full: {rate:.1f} packets/s dropped before the stack saw them.",
            "Raise net.core.netdev_max_backlog, spread receive work (RSS/RPS), or find what keeps the "
            "CPUs handling softirqs busy (perf_cpu_profile, kernel stacks included).",
            next_call("perf_cpu_profile", duration_s=10))
        if f:
            out.append(f)
        if softnet.time_squeeze_s:
            out.append(Finding(
                id="network.softnet_time_squeeze", severity="info", resource="network",
                title=f"Softnet ran out of budget {softnet.time_squeeze_s:.1f} times/s",
                detail="net_rx_action stopped with packets left (time_squeeze): receive processing is "
                       "CPU-bound at moments; harmless unless softnet drops follow.",
                confidence=0.6, metrics={"per_s": round(softnet.time_squeeze_s, 3)},
                evidence=[Evidence(tool=TOOL, counter="/proc/net/softnet_stat time_squeeze /s",
                                   value=softnet.time_squeeze_s, window_s=round(interval_s, 3))],
                suggestion="If it persists, raise net.core.netdev_budget / netdev_budget_usecs."))
    return out


def since_boot_finding(tcp: TcpHealth, row: Threshold) -> Finding | None:
    pct = tcp.since_boot_retransmit_pct
    if pct is None or pct <= row.warning or (tcp.since_boot_out_segs or 0) < MIN_OUT_SEGS:
        return None
    return Finding(
        id="network.tcp_retransmits_since_boot", severity="info", resource="network",
        title=f"{pct:.2f}% of TCP segments were retransmitted since boot",
        detail=(f"{tcp.since_boot_retrans_segs} of {tcp.since_boot_out_segs} segments since the counters "
                "started (boot or namespace creation): loss happened at some time, not necessarily now."),
        confidence=0.5, metrics={"retransmit_pct": round(pct, 3)},
        evidence=[Evidence(tool=TOOL, counter="/proc/net/snmp Tcp RetransSegs / OutSegs (absolute)",
                           value=round(pct, 3), threshold=row.warning)],
        suggestion="Call perf_net_health again while the problem happens to see the current rate.")


def analyse(prev: NetSample, cur: NetSample, thresholds: Thresholds, *, interface: str | None = None,
            addresses: list[str] | None = None, owners: dict[int, SocketOwner] | None = None,
            owners_complete: bool = True) -> NetHealth:
    warnings: list[str] = []
    interval_s = cur.t_mono - prev.t_mono
    if interval_s <= 0:
        raise ValueError("the second sample must be later than the first")
    interfaces = interfaces_health(prev.links, cur.links, interval_s, warnings)
    if interface is not None:
        interfaces = [i for i in interfaces if i.name == interface]
    counters = counter_deltas(prev, cur, interval_s, warnings)
    tcp = tcp_health(counters, cur.snmp)
    softnet = softnet_health(prev.softnet, cur.softnet, interval_s, warnings)
    sockets = None
    if prev.sockets is not None and cur.sockets is not None:
        loopback = interface == "lo"
        a = filter_sockets(prev.sockets, addresses, loopback) if interface else prev.sockets
        b = filter_sockets(cur.sockets, addresses, loopback) if interface else cur.sockets
        sockets = sockets_health(a, b, owners or {}, owners_complete, addresses if interface else None,
                                 prev.sockets_complete and cur.sockets_complete)
    drops = thresholds["network.drops_per_s"]
    retrans = thresholds["network.retransmit_pct"]
    findings: list[Finding] = []
    if tcp is not None:
        f = retransmit_finding(tcp, counters, sockets, retrans, interval_s)
        if f:
            findings.append(f)
        f = since_boot_finding(tcp, retrans)
        if f:
            findings.append(f)
    findings += interface_findings(interfaces, drops, interval_s)
    findings += counter_findings(counters, softnet, drops, interval_s)
    return NetHealth(interval_s=round(interval_s, 4), interfaces=interfaces, tcp=tcp, softnet=softnet,
                     counters=counters, sockets=sockets, findings=sort_findings(findings), warnings=warnings)
