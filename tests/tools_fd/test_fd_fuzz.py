"""The broker's fd_table text on random and mutated input: an FdTable
(with warnings for what was skipped) or a ParseError, nothing else."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.fds.parse import FdTable, classify_target, count_by_type, parse_fd_table
from perf_mcp.procfs import ParseError

SEED = (b"limits\nLimit                     Soft Limit           Hard Limit           Units     \n"
        b"Max open files            1024                 524288               files     \n"
        b"fds\n0\t/dev/null\n1\tpipe:[5]\n3\tsocket:[77]\n4\tanon_inode:[eventfd]\n")


def _check(raw: bytes) -> None:
    try:
        table = parse_fd_table(raw)
    except ParseError:
        return
    assert isinstance(table, FdTable)
    msgspec.json.encode(table)
    assert sum(count_by_type(table.fds).values()) == len(table.fds)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    _check(b"limits\n" + raw)
    _check(raw)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(SEED)), st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=8))
def test_truncated_and_mutated(cut: int, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(SEED[:cut])
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    _check(bytes(raw))


@given(st.text(max_size=80))
def test_classify_any_target(target: str) -> None:
    assert isinstance(classify_target(target), str)
