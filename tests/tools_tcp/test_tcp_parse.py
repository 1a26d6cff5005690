"""perf_tcp_trace parsers on real captured outputs (tests/fixtures/tcplife/), truncated
and garbled copies (partial data with a warning, never an exception), and the
analysis rules (findings) on the parsed fixtures."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.tools import perf_tcp_trace as tool
from perf_mcp.trace import tcp_parse
from perf_mcp.use.thresholds import default_thresholds

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "tcplife"


def read(name: str) -> bytes:
    return (FIX / name).read_bytes()


def test_tcplife_text() -> None:
    out = tcp_parse.parse_tcplife(read("libbpf_tcplife.txt"))
    assert out.bad_lines == 0 and out.warnings == [] and not out.bytes_exact
    assert len(out.sessions) == 6
    client = [s for s in out.sessions if s.rport == 38055]
    server = [s for s in out.sessions if s.lport == 38055]
    assert {s.pid for s in client} == {4330} and {s.pid for s in server} == {4289}
    for s in client:  # 9.77 KiB = 10004 B for 10000 + SYN + FIN
        assert abs(s.tx_bytes - 10000) <= tcp_parse.BYTES_RESOLUTION_TCPLIFE
        assert abs(s.rx_bytes - 5000) <= tcp_parse.BYTES_RESOLUTION_TCPLIFE
        assert s.laddr == "127.0.0.1" and s.family == 4 and s.comm == "python3" and s.pid_source == "tcplife"
    assert client[0].duration_ms == 4.48


def test_bpftrace_lifecycle_exact() -> None:
    out = tcp_parse.parse_bpftrace_lifecycle(read("bpftrace_tcplife.json"))
    assert out.bad_lines == 0 and out.bytes_exact and len(out.sessions) == 6
    for s in out.sessions:
        if s.pid_source == "connect":
            assert (s.pid, s.rport, s.tx_bytes, s.rx_bytes) == (4558, 60515, 10000, 5000)
        else:
            assert (s.pid_source, s.pid, s.lport, s.tx_bytes, s.rx_bytes) == ("accept", 4514, 60515, 5000, 10000)
        assert s.retrans_segs == 0 and s.srtt_us is not None and s.t_s is not None and s.duration_ms > 0
    assert out.sessions[0].duration_ms == round((3435281294721 - 3435280966454) / 1e6, 3)


def test_bpftrace_connections() -> None:
    out = tcp_parse.parse_bpftrace_connections(read("bpftrace_tcpconn.json"))
    assert out.bad_lines == 0 and out.warnings == [] and out.pending_accepts == 0
    connects = [c for c in out.connections if c.kind == "connect"]
    accepts = [c for c in out.connections if c.kind == "accept"]
    assert len(connects) == 5 and len(accepts) == 4
    refused = [c for c in connects if not c.ok]
    assert len(refused) == 1 and refused[0].rport == 1
    assert {c.pid for c in accepts if c.lport == 36211} == {4785}
    assert [r.segments for r in out.retransmits] == [5538] and out.retransmits[0].segs_out == 119176
    assert out.retransmits[0].rport == 5301 and out.retransmits[0].raddr == "10.214.0.2"


def test_tcpconnect_documented_format() -> None:
    out = tcp_parse.parse_tcpconnect(read("libbpf_tcpconnect_format.txt"))
    assert out.bad_lines == 0 and not out.retrans_counted
    assert [(c.pid, c.comm, c.raddr, c.rport, c.family) for c in out.connections] == [
        (4826, "python3", "127.0.0.1", 36211, 4), (912, "curl", "::1", 8080, 6)]


def test_findings_from_fixtures() -> None:
    p = tool.Params(duration_s=5, mode="connections")
    d = tool.TcpTraceData(method="m", backend="bpftrace", skipped=[], mode="connections", duration_s=5, filters={})
    tool.analyse_connections(p, tcp_parse.parse_bpftrace_connections(read("bpftrace_tcpconn.json")), d,
                             default_thresholds()["network.retransmit_pct"])
    ids = {f.id: f for f in d.findings}
    retr = ids["network.tcp.retransmits"]
    assert retr.severity == "warning" and retr.metrics["worst_socket_retrans_pct"] == round(5538 / 119176 * 100, 3)
    assert retr.evidence[0].threshold == 1.0 and "perf_net_health" in retr.suggestion
    assert "network.tcp.connect_failures" in ids and "127.0.0.1:1" in ids["network.tcp.connect_failures"].title
    assert d.connections is not None and d.connections.connects == 4 and d.connections.connect_failures == 1


def test_churn_finding_rule() -> None:
    s = tcp_parse.Session(pid=7, comm="curl", pid_source="connect", family=4, laddr="10.0.0.1", lport=40000,
                          raddr="10.0.0.2", rport=80, tx_bytes=100, rx_bytes=1000, duration_ms=2.0)
    p = tool.Params(duration_s=2)
    d = tool.TcpTraceData(method="m", backend="bpftrace", skipped=[], mode="lifecycle", duration_s=2, filters={})
    tool.analyse_lifecycle(p, tcp_parse.Lifecycle(sessions=[s] * 100), d)
    f = d.findings[0]
    assert f.id == "network.tcp.connection_churn" and f.severity == "warning" and '"pid": 7' in f.suggestion
    d2 = tool.TcpTraceData(method="m", backend="bpftrace", skipped=[], mode="lifecycle", duration_s=2, filters={})
    tool.analyse_lifecycle(p, tcp_parse.Lifecycle(sessions=[s] * 10), d2)
    assert d2.findings == []  # 5/s: a quiet control


def test_truncated_copies_give_partial_data() -> None:
    for name, parse, count in (("libbpf_tcplife.txt", tcp_parse.parse_tcplife, lambda o: len(o.sessions)),
                               ("bpftrace_tcplife.json", tcp_parse.parse_bpftrace_lifecycle,
                                lambda o: len(o.sessions)),
                               ("bpftrace_tcpconn.json", tcp_parse.parse_bpftrace_connections,
                                lambda o: len(o.connections))):
        raw = read(name)
        full = count(parse(raw))
        cut = parse(raw[: len(raw) // 2])
        assert 0 < count(cut) < full and cut.warnings, name


def test_garbled_lines_are_counted() -> None:
    raw = read("bpftrace_tcplife.json").replace(b"127.0.0.1 127.0.0.1 python3", b"127.0.0.x 127.0.0.1 python3", 1)
    out = tcp_parse.parse_bpftrace_lifecycle(raw + b'{"type": "printf", "data": "L 1 2\\n"}\nnot json\n')
    assert len(out.sessions) == 5 and out.bad_lines == 3 and "could not be read" in out.warnings[0]
    text = read("libbpf_tcplife.txt").replace(b"9.77 ", b"9.x7 ", 1)
    assert len(tcp_parse.parse_tcplife(text).sessions) == 5


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=2000))
def test_fuzz_never_raises(junk: bytes, at: int) -> None:
    for name, parse in (("libbpf_tcplife.txt", tcp_parse.parse_tcplife),
                        ("bpftrace_tcplife.json", tcp_parse.parse_bpftrace_lifecycle),
                        ("bpftrace_tcpconn.json", tcp_parse.parse_bpftrace_connections),
                        ("libbpf_tcpconnect_format.txt", tcp_parse.parse_tcpconnect)):
        raw = read(name)
        parse(raw[:at] + junk + raw[at:])
