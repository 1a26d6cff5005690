"""The broker's fd_table text on random and mutated input: an FdTable
(with warnings for what was skipped) or a ParseError, nothing else."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.fds.parse import FD_TYPES, FdTable, classify_target, count_by_type, parse_fd_table
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
    kind = classify_target(target)
    assert kind in FD_TYPES  # one of the declared types, whatever the text
    if not target.startswith(("/", "anon_inode:")) and ":[" not in target:
        assert kind == "other"


def test_classify_known_targets() -> None:
    known = {"socket:[123]": "socket", "pipe:[9]": "pipe", "anon_inode:[eventpoll]": "epoll",
             "anon_inode:[eventfd]": "eventfd", "anon_inode:bpf-prog": "bpf", "anon_inode:[unknown-kind]": "anon_inode", "net:[4026531840]": "namespace",
             "/memfd:x (deleted)": "memfd", "/tmp/x (deleted)": "deleted_file", "/dev/pts/3": "tty",
             "/dev/null": "device", "/etc/passwd": "file", "weird": "other", "socket:123": "other"}
    assert {t: classify_target(t) for t in known} == known
