"""perf_net_health's pure layers: netlink messages captured on this machine
(tests/fixtures/netlink, decoded by the same pyroute2 decoder the collector
uses) to typed records, and the analysis of two samples with the DESIGN.md
thresholds. No sockets, no clock."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from perf_mcp.contract import next_call
from perf_mcp.net import analysis
from perf_mcp.net.collect import NetSample, SocketOwner
from perf_mcp.net.parse import LINK_COUNTERS, DiagError, LinkStats, TcpSocket, decode_link, link_stats, parse_inet_diag
from perf_mcp.procfs import parse_net_netstat, parse_net_snmp, parse_softnet_stat
from perf_mcp.use.thresholds import apply_overrides, default_thresholds

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "netlink"
THRESHOLDS = default_thresholds()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# ---------------------------------------------------------------- parsing


def test_links_from_captured_messages() -> None:
    veth = link_stats(decode_link(fixture("veth_lossy-link-vs.bin")))
    assert veth is not None
    assert (veth.name, veth.kind, veth.operstate, veth.mtu, veth.stats64) == ("vs", "veth", "UP", 1500, True)
    assert veth.counters["tx_bytes"] == 481949183 and veth.counters["rx_dropped"] == 0
    assert set(veth.counters) == set(LINK_COUNTERS)
    eth = link_stats(decode_link(fixture("host-link-eth0.bin")))
    assert eth is not None and eth.kind is None and eth.name == "eth0" and eth.counters["rx_bytes"] == 324268285
    lo = link_stats(decode_link(fixture("host-link-lo.bin")))
    assert lo is not None and lo.operstate == "UNKNOWN" and lo.mtu == 65536


def test_tcp_sockets_from_captured_messages() -> None:
    lossy = parse_inet_diag(fixture("veth_lossy-tcp-1.bin"))
    assert lossy is not None
    assert (lossy.state, lossy.local_addr, lossy.remote_addr, lossy.remote_port) == (
        "ESTABLISHED", "10.213.0.1", "10.213.0.2", 5201)
    assert (lossy.total_retrans, lossy.lost, lossy.unacked, lossy.cwnd, lossy.ca_state) == (801, 45, 47, 1, 3)
    assert lossy.rtt_us == 443 and lossy.snd_mss == 1448 and lossy.inode == 140570
    assert lossy.bytes_retrans == 1157704 and lossy.segs_out == 14495
    listen = parse_inet_diag(fixture("netns_lo-tcp-0.bin"))
    assert listen is not None and listen.state == "LISTEN"
    assert (listen.rqueue, listen.wqueue) == (1, 4)  # one connection waiting in a backlog of 4
    v6 = parse_inet_diag(fixture("netns_lo-tcp-5.bin"))
    assert v6 is not None and v6.family == 10 and v6.local_addr == "::1" and v6.rqueue == 1000
    assert v6.endpoint == "[::1]:7777 -> [::1]:54198"


TCP_FIXTURES = sorted(p.name for p in FIXTURES.glob("*-tcp-*.bin"))


@pytest.mark.parametrize("name", TCP_FIXTURES)
def test_struct_decoder_agrees_with_pyroute2(name: str) -> None:
    """Our fixed-layout decoder against pyroute2's generic one, field by field."""
    from pyroute2.netlink.diag import inet_diag_msg

    raw = fixture(name)
    ref = inet_diag_msg(raw)
    ref.decode()
    info = ref.get_attr("INET_DIAG_INFO")
    ours = parse_inet_diag(raw)
    assert ours is not None
    assert (ours.family, ours.local_addr, ours.local_port, ours.remote_addr, ours.remote_port) == (
        ref["idiag_family"], ref["idiag_src"], ref["idiag_sport"], ref["idiag_dst"], ref["idiag_dport"])
    assert (ours.uid, ours.inode, ours.cookie, ours.rqueue, ours.wqueue) == (
        ref["idiag_uid"], ref["idiag_inode"], ref["idiag_cookie"], ref["idiag_rqueue"], ref["idiag_wqueue"])
    pairs = {"retransmits": "tcpi_retransmits", "total_retrans": "tcpi_total_retrans", "lost": "tcpi_lost",
             "unacked": "tcpi_unacked", "rtt_us": "tcpi_rtt", "rttvar_us": "tcpi_rttvar", "min_rtt_us": "tcpi_min_rtt",
             "rto_us": "tcpi_rto", "cwnd": "tcpi_snd_cwnd", "ssthresh": "tcpi_snd_ssthresh",
             "snd_mss": "tcpi_snd_mss", "segs_out": "tcpi_segs_out", "bytes_retrans": "tcpi_bytes_retrans",
             "backoff": "tcpi_backoff", "ca_state": "tcpi_ca_state"}
    assert {k: getattr(ours, k) for k in pairs} == {k: info[v] for k, v in pairs.items()}


def _with_info_length(raw: bytes, info_len: int) -> bytes:
    """The message with its tcp_info attribute cut to info_len bytes (as an older kernel sends it)."""
    out = bytearray(raw[:88])
    offset = 88
    while offset + 4 <= len(raw):
        nla_len, nla_type = struct.unpack_from("=HH", raw, offset)
        chunk = raw[offset : offset + nla_len]
        if nla_type == 2:
            chunk = struct.pack("=HH", 4 + info_len, 2) + chunk[4 : 4 + info_len]
        out += chunk + b"\0" * (-len(chunk) % 4)
        offset += (nla_len + 3) & ~3
    struct.pack_into("=I", out, 0, len(out))
    return bytes(out)


def test_older_shorter_tcp_info_and_damaged_messages() -> None:
    raw = fixture("veth_lossy-tcp-1.bin")
    old = parse_inet_diag(_with_info_length(raw, 104))  # tcp_info up to total_retrans (kernel 3.x)
    assert old is not None and old.total_retrans == 801 and old.rtt_us == 443
    assert old.segs_out is None and old.min_rtt_us is None and old.bytes_retrans is None
    bare = bytearray(raw[:88])
    struct.pack_into("=I", bare, 0, 88)
    no_info = parse_inet_diag(bytes(bare))  # no attributes at all (no tcp_info asked for, TIME_WAIT)
    assert no_info is not None and no_info.total_retrans is None and no_info.state == "ESTABLISHED"
    with pytest.raises(DiagError):
        parse_inet_diag(raw[:60])
    with pytest.raises(DiagError):
        parse_inet_diag(raw[:200])  # header says 408 bytes
    bad_nla = bytearray(raw)
    struct.pack_into("=H", bad_nla, 88, 2000)  # an attribute longer than the message
    assert parse_inet_diag(bytes(bad_nla)) is not None
    done = bytearray(raw)
    struct.pack_into("=H", done, 4, 3)  # NLMSG_DONE
    assert parse_inet_diag(bytes(done)) is None
    unix = bytearray(raw)
    unix[16] = 1  # AF_UNIX
    assert parse_inet_diag(bytes(unix)) is None
    mapped = bytearray(fixture("netns_lo-tcp-5.bin"))
    mapped[16 + 8 : 16 + 24] = bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])
    m = parse_inet_diag(bytes(mapped))
    assert m is not None and m.local_addr == "10.1.2.3"
    odd = bytearray(raw)
    odd[17] = 99
    o = parse_inet_diag(bytes(odd))
    assert o is not None and o.state == "STATE_99"


class FakeMessage:
    """What a decoded RTM_NEWLINK offers, for shapes the kernel sends but we did not capture."""

    def __init__(self, fields: dict[str, Any], attrs: dict[str, Any]) -> None:
        self.fields = fields
        self.attrs = attrs

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def get_attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


def test_links_without_a_name_or_with_32_bit_stats() -> None:
    assert link_stats(FakeMessage({"index": 3}, {})) is None  # no name
    old = link_stats(FakeMessage({"index": 3}, {"IFLA_IFNAME": "eth9", "IFLA_STATS": {"rx_bytes": 5}}))
    assert old is not None and old.stats64 is False and old.counters == {"rx_bytes": 5}


# ---------------------------------------------------------------- analysis

SNMP_HEADER = ("Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets "
               "CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n")
UDP_HEADER = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti\n"


def snmp(out: int, retrans: int, rcvbuf: int = 0) -> bytes:
    return (SNMP_HEADER + f"Tcp: 1 200 120000 -1 10 5 0 0 2 {out} {out} {retrans} 0 0 0\n"
            + UDP_HEADER + f"Udp: 100 0 0 100 {rcvbuf} 0 0 0\n").encode()


def netstat(overflows: int = 0, timeouts: int = 0) -> bytes:
    return (f"TcpExt: ListenOverflows ListenDrops TCPTimeouts TCPLostRetransmit\n"
            f"TcpExt: {overflows} {overflows} {timeouts} 0\n").encode()


def softnet(dropped: int = 0, squeeze: int = 0) -> bytes:
    return f"00000100 {dropped:08x} {squeeze:08x} 0 0 0 0 0 0 0 0 0 00000000\n".encode()


def link(name: str = "eth0", **counters: int) -> LinkStats:
    base = {k: 0 for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped",
                           "rx_errors", "tx_errors", "rx_missed_errors")}
    base.update(counters)
    return LinkStats(name=name, index=2, operstate="UP", mtu=1500, kind=None, stats64=True, counters=base)


def sock(cookie: int, total_retrans: int, rtt_us: int = 1000, *, local: str = "10.0.0.1", inode: int = 0,
         state: str = "ESTABLISHED") -> TcpSocket:
    return TcpSocket(family=2, state=state, local_addr=local, local_port=40000 + cookie, remote_addr="10.0.0.9",
                     remote_port=443, uid=1000, inode=inode, cookie=cookie, rqueue=0, wqueue=0, retransmits=0,
                     total_retrans=total_retrans, lost=0, unacked=3, rtt_us=rtt_us, rttvar_us=100, min_rtt_us=200,
                     rto_us=204000, cwnd=10, ssthresh=20, snd_mss=1448, segs_out=1000, bytes_retrans=0, backoff=0,
                     ca_state=0)


def sample(t: float, *, out: int, retrans: int, links: list[LinkStats] | None = None,
           sockets: list[TcpSocket] | None = None, overflows: int = 0, rcvbuf: int = 0, dropped: int = 0,
           squeeze: int = 0) -> NetSample:
    return NetSample(t_mono=t, links=links or [link()], snmp=parse_net_snmp(snmp(out, retrans, rcvbuf)),
                     netstat=parse_net_netstat(netstat(overflows)), softnet=parse_softnet_stat(softnet(dropped, squeeze)),
                     sockets=sockets, warnings=[])


def ids(health: analysis.NetHealth) -> dict[str, str]:
    return {f.id: f.severity for f in health.findings}


@pytest.mark.parametrize(("retrans", "severity"), [(5, "info"), (20, "warning"), (60, "critical")])
def test_retransmit_thresholds(retrans: int, severity: str) -> None:
    """1000 segments in the window: 0.5% info, 2% warning (> 1%), 6% critical (> 5%)."""
    health = analysis.analyse(sample(10.0, out=5000, retrans=100), sample(11.0, out=6000, retrans=100 + retrans),
                              THRESHOLDS)
    assert health.tcp is not None and health.tcp.retransmit_pct == pytest.approx(retrans / 10)
    assert ids(health)["network.tcp_retransmits"] == severity
    f = next(f for f in health.findings if f.id == "network.tcp_retransmits")
    assert {e.counter for e in f.evidence} >= {"/proc/net/snmp Tcp RetransSegs", "/proc/net/snmp Tcp OutSegs"}
    rs = next(e for e in f.evidence if e.counter == "/proc/net/snmp Tcp RetransSegs")
    assert rs.value == retrans and rs.sample == f"100 -> {100 + retrans}" and rs.window_s == 1.0


def test_few_segments_are_not_judged_and_no_traffic_is_no_finding() -> None:
    few = analysis.analyse(sample(0, out=0, retrans=0), sample(1, out=50, retrans=10), THRESHOLDS)
    assert ids(few) == {"network.tcp_retransmits": "info"}  # 20% of 50 segments: too few to call
    idle = analysis.analyse(sample(0, out=100, retrans=0), sample(1, out=100, retrans=0), THRESHOLDS)
    assert idle.findings == [] and idle.tcp is not None and idle.tcp.retransmit_pct == 0.0


def test_override_moves_the_threshold() -> None:
    table, warnings = apply_overrides("[network.retransmit_pct]\nwarning = 3\ncritical = 10\n", "test.toml")
    assert warnings == []
    health = analysis.analyse(sample(0, out=0, retrans=0), sample(1, out=1000, retrans=20), table)
    assert ids(health)["network.tcp_retransmits"] == "info"


def test_counter_reset_gives_no_rate_and_a_warning() -> None:
    health = analysis.analyse(sample(0, out=5000, retrans=300), sample(1, out=6000, retrans=10), THRESHOLDS)
    assert health.tcp is not None and health.tcp.retrans_segs is None and health.tcp.retransmit_pct is None
    assert "network.tcp_retransmits" not in ids(health)
    assert any("RetransSegs went backwards" in w for w in health.warnings)


def test_interface_drop_and_error_thresholds() -> None:
    prev = [link("eth0"), link("eth1")]
    cur = [link("eth0", rx_dropped=1), link("eth1", rx_dropped=150, rx_missed_errors=60, tx_errors=3)]
    health = analysis.analyse(sample(0, out=0, retrans=0, links=prev), sample(2, out=0, retrans=0, links=cur),
                              THRESHOLDS)
    got = ids(health)
    assert got["network.interface_drops.eth0"] == "warning"  # 0.5/s > 0
    assert got["network.interface_drops.eth1"] == "critical"  # (150 + 60) / 2 s = 105/s > 100
    assert got["network.interface_errors.eth1"] == "warning"
    nexts = {f.id: f.next for f in health.findings}
    assert nexts["network.interface_drops.eth1"] == next_call("perf_tcp_trace", mode="lifecycle", duration_s=10)
    assert nexts["network.interface_errors.eth1"] is None  # the physical layer: no tool drills into it
    eth1 = next(i for i in health.interfaces if i.name == "eth1")
    assert eth1.drops_s == pytest.approx(105.0) and eth1.totals["rx_missed_errors"] == 60


def test_listen_overflows_udp_buffers_softnet() -> None:
    health = analysis.analyse(
        sample(0, out=0, retrans=0, overflows=10, rcvbuf=0, dropped=0, squeeze=0),
        sample(1, out=0, retrans=0, overflows=15, rcvbuf=500, dropped=2, squeeze=7), THRESHOLDS)
    got = ids(health)
    assert got["network.listen_queue_drops"] == "warning"
    assert got["network.udp_buffer_drops"] == "critical"
    assert got["network.softnet_drops"] == "warning"
    assert got["network.softnet_time_squeeze"] == "info"
    nexts = {f.id: f.next for f in health.findings}
    assert nexts["network.listen_queue_drops"] == next_call("perf_tcp_trace", mode="lifecycle", duration_s=10)
    assert nexts["network.udp_buffer_drops"] == next_call("perf_syscall_count", per_process=True, duration_s=10)
    assert nexts["network.softnet_drops"] == next_call("perf_cpu_profile", duration_s=10)


def test_worst_sockets_by_window_retransmits_and_rtt_with_owner() -> None:
    a = [sock(1, 100), sock(2, 5, rtt_us=90_000), sock(3, 0)]
    b = [sock(1, 101, inode=11), sock(2, 45, rtt_us=80_000, inode=22), sock(3, 0, rtt_us=5_000),
         sock(4, 7, local="192.168.1.5"), sock(9, 0, state="LISTEN")]
    owners = {22: SocketOwner(pid=4242, comm="curl")}
    health = analysis.analyse(sample(0, out=0, retrans=0, sockets=a), sample(1, out=1000, retrans=41, sockets=b),
                              THRESHOLDS, owners=owners)
    s = health.sockets
    assert s is not None and s.total == 5 and s.by_state == {"ESTABLISHED": 4, "LISTEN": 1}
    assert s.retrans_in_window == 41 and s.with_retrans_in_window == 2  # socket 4 is new: no window figure
    worst = s.worst_by_retransmits
    assert [w.local for w in worst[:2]] == ["10.0.0.1:40002", "10.0.0.1:40001"]
    assert (worst[0].retrans_in_window, worst[0].pid, worst[0].comm, worst[0].rtt_ms) == (40, 4242, "curl", 80.0)
    assert worst[1].pid is None and worst[1].uid == 1000
    assert s.worst_by_rtt[0].local == "10.0.0.1:40002" and all(w.state != "LISTEN" for w in s.worst_by_rtt)
    assert analysis.sockets_to_attribute(a, b) == {11, 22}
    f = next(f for f in health.findings if f.id == "network.tcp_retransmits")
    tcp_ev = next(e for e in f.evidence if e.counter.startswith("tcp_info"))
    assert tcp_ev.value == 40 and "pid 4242 (curl)" in (tcp_ev.sample or "")
    # only one interface's addresses
    only = analysis.analyse(sample(0, out=0, retrans=0, sockets=a), sample(1, out=0, retrans=0, sockets=b),
                            THRESHOLDS, interface="eth0", addresses=["192.168.1.5"])
    assert only.sockets is not None and only.sockets.total == 1
    assert only.sockets.filtered_by_addresses == ["192.168.1.5"]


def test_loopback_interface_keeps_every_loopback_address() -> None:
    socks = [sock(1, 0, local="127.0.0.53"), sock(2, 0, local="::1"), sock(3, 0)]
    kept = analysis.filter_sockets(socks, ["127.0.0.1", "::1"], loopback=True)
    assert [s.local_addr for s in kept] == ["127.0.0.53", "::1"]


def test_samples_must_move_forward() -> None:
    with pytest.raises(ValueError):
        analysis.analyse(sample(1, out=0, retrans=0), sample(1, out=0, retrans=0), THRESHOLDS)
