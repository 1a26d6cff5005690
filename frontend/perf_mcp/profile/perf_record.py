"""What `perf record` says on stderr (pure)."""

from __future__ import annotations

import re

import msgspec

_CAPTURED = re.compile(r"\[ perf record: Captured and wrote [\d.]+ \w+ .*?(?:\((\d+) samples\))? \]")
_LOST = re.compile(r"Processed (\d+) events and lost (\d+) chunks")
_NO_PROCESS = ("No such process", "The PID doesn't exist", "Couldn't create thread/CPU maps")


class RecordReport(msgspec.Struct, kw_only=True):
    samples: int | None = None  # as perf record counted them, when it says
    lost_chunks: int = 0
    process_missing: bool = False
    messages: list[str] = []  # WARNING/Error lines worth passing on


def parse_record_stderr(text: str) -> RecordReport:
    samples: int | None = None
    lost = 0
    messages: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if m := _CAPTURED.search(line):
            if m.group(1):
                samples = int(m.group(1))
        elif m := _LOST.search(line):
            lost += int(m.group(2))
        elif line.startswith(("WARNING", "Warning", "Error", "error", "failed", "Couldn't")):
            messages.append(line[:300])
    missing = any(s in text for s in _NO_PROCESS)
    return RecordReport(samples=samples, lost_chunks=lost, process_missing=missing, messages=messages[:10])
