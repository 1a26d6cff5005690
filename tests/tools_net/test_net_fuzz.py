"""parse_inet_diag on random, truncated and mutated messages: the only
outcomes allowed are None, a TcpSocket that encodes to JSON, or DiagError."""

from __future__ import annotations

from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.net.parse import DiagError, TcpSocket, parse_inet_diag

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "netlink"
SEEDS = [p.read_bytes() for p in sorted(FIXTURES.glob("*-tcp-*.bin"))]


def _check(raw: bytes) -> None:
    try:
        out = parse_inet_diag(raw)
    except DiagError:
        return
    assert out is None or isinstance(out, TcpSocket)
    if out is not None:
        msgspec.json.encode(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(SEEDS), st.integers(0, 600), st.lists(st.tuples(st.integers(0, 599), st.integers(0, 255)),
                                                              max_size=12))
def test_truncated_and_mutated_fixtures(seed: bytes, cut: int, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(seed[:cut])
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    _check(bytes(raw))
