"""Small helpers shared by the parsers (private)."""

from __future__ import annotations

import math

import msgspec

from .errors import ParseError

Raw = bytes | str
Warnings = tuple[str, ...]


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every parsed record: immutable, keyword-built."""


def as_text(data: Raw) -> str:
    """Decode procfs bytes. Names (comm, interface) may hold any byte, so
    undecodable bytes become U+FFFD instead of raising."""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")


def lines_of(data: Raw, what: str, warnings: list[str]) -> list[str]:
    """The complete lines of a line-oriented file. The kernel ends every line
    with a newline, so a last line without one is a truncated read: it is
    dropped with a warning rather than parsed into a wrong number."""
    lines = as_text(data).split("\n")
    last = lines.pop()
    if last:
        warnings.append(f"{what}: last line has no newline (truncated?), skipped: {last[:60]!r}")
    return lines


def record_text(data: Raw, what: str) -> str:
    """The text of a single-record file, which must be complete (end with a
    newline): ParseError otherwise."""
    text = as_text(data)
    if not text.endswith("\n"):
        raise ParseError(what, "empty or truncated (no final newline)")
    return text


def to_int(token: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ParseError(what, f"not an integer: {token[:40]!r}") from None


def to_float(token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise ParseError(what, f"not a number: {token[:40]!r}") from None
    if not math.isfinite(value):
        raise ParseError(what, f"not a finite number: {token[:40]!r}")
    return value


def line_warning(what: str, lineno: int, line: str, reason: str) -> str:
    return f"{what} line {lineno}: {reason}: {line[:60]!r}"


def single_value_text(data: Raw, what: str) -> str:
    text = record_text(data, what).strip()
    if not text or any(c.isspace() for c in text):
        raise ParseError(what, f"expected a single value, got {text[:40]!r}")
    return text


def parse_flat_keyed(data: Raw, what: str) -> tuple[dict[str, int], Warnings]:
    """Lines of "key value" (or "key: value [kB]" is handled elsewhere)."""
    values: dict[str, int] = {}
    warnings: list[str] = []
    for lineno, line in enumerate(lines_of(data, what, warnings), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            warnings.append(line_warning(what, lineno, line, "expected 'key value'"))
            continue
        try:
            values[parts[0]] = int(parts[1])
        except ValueError:
            warnings.append(line_warning(what, lineno, line, "value is not an integer"))
    return values, tuple(warnings)
