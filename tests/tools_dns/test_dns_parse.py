"""perf_dns_latency parsers on real captured outputs (tests/fixtures/dns/), truncated
and garbled copies, and the analysis (per-name summary, findings) on the fixtures."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.tools import perf_dns_latency as tool
from perf_mcp.trace import dns_parse

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "dns"


def read(name: str) -> bytes:
    return (FIX / name).read_bytes()


def test_gethostlatency_text() -> None:
    out = dns_parse.parse_gethostlatency(read("libbpf_gethostlatency.txt"))
    assert out.bad_lines == 0 and out.warnings == [] and not out.results_known
    assert [(x.pid, x.comm, x.name, x.latency_ms) for x in out.lookups[:2]] == [
        (5160, "python3", "a.fixture.test", 251.714), (5160, "python3", "a.fixture.test", 250.669)]
    assert len(out.lookups) == 5 and all(x.ok is None for x in out.lookups)


def test_bpftrace_records() -> None:
    out = dns_parse.parse_bpftrace(read("bpftrace_dnslat.json"))
    assert out.bad_lines == 0 and len(out.lookups) == 5
    a = out.lookups[0]
    assert (a.pid, a.tid, a.func, a.ok, a.name, a.latency_ms) == (5275, 5275, "getaddrinfo", True, "a.fixture.test",
                                                                   252.175)
    assert a.t_s == round((3469342681289 - 3468654335637) / 1e9, 6)
    nx = out.lookups[-1]
    assert nx.ok is False and nx.error == "EAI_NONAME" and nx.name == "nx.fixture.invalid"


def test_analysis_per_name_and_findings() -> None:
    parsed = dns_parse.parse_bpftrace(read("bpftrace_dnslat.json"))
    d = tool.analyse(tool.Params(duration_s=4), parsed, "m", "bpftrace", [])
    by = {s.name: s for s in d.by_name}
    assert by["a.fixture.test"].count == 2 and by["a.fixture.test"].max_ms == 253.345
    assert by["a.fixture.test"].mean_ms == round((252.175253 + 253.345404) / 2, 3) or \
        abs(by["a.fixture.test"].mean_ms - 252.76) < 0.01
    assert [s.name for s in d.by_name][0] == "b.fixture.test"  # slowest max first
    assert [x.latency_ms for x in d.slowest] == sorted((x.latency_ms for x in d.slowest), reverse=True)
    assert d.lookups == 5 and d.failed == 1 and d.slow_lookups == 4
    ids = {f.id: f for f in d.findings}
    assert ids["network.dns.slow_lookups"].severity == "warning"
    assert ids["network.dns.failed_lookups"].severity == "info" and "EAI_NONAME" in ids["network.dns.failed_lookups"].title
    quiet = tool.analyse(tool.Params(duration_s=4, pid=1), parsed, "m", "bpftrace", [])
    assert quiet.lookups == 0 and quiet.findings == []


def test_truncated_and_garbled() -> None:
    for name, parse in (("libbpf_gethostlatency.txt", dns_parse.parse_gethostlatency),
                        ("bpftrace_dnslat.json", dns_parse.parse_bpftrace)):
        raw = read(name)
        cut = parse(raw[: raw.index(b"c.fixture.test")])  # inside a line
        assert 0 < len(cut.lookups) < 5 and cut.warnings, name
    raw = read("bpftrace_dnslat.json").replace(b"g 0 3469595010588", b"q 0 3469595010588")
    out = dns_parse.parse_bpftrace(raw + b"garbage\n")
    assert len(out.lookups) == 4 and out.bad_lines == 2


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=800))
def test_fuzz_never_raises(junk: bytes, at: int) -> None:
    for name, parse in (("libbpf_gethostlatency.txt", dns_parse.parse_gethostlatency),
                        ("bpftrace_dnslat.json", dns_parse.parse_bpftrace)):
        raw = read(name)
        parse(raw[:at] + junk + raw[at:])
