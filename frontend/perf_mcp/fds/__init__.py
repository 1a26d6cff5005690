"""File descriptors of one process: counts by type, growth, the leak verdict.

- parse.py: readlink targets -> fd types; the broker's fd_table text (pure).
- collect.py: /proc/PID/fd locally, or the broker's FdTable job for another user's process (I/O).
- analysis.py: linear fit, verdict, time to the limit, findings (pure).
"""

from __future__ import annotations

from .analysis import FdSample, Growth, LeakVerdict, growth, judge, linear_fit, time_to_limit
from .collect import NotPermitted, ProcessGone, read_local, read_via_broker
from .parse import FdTable, classify_target, count_by_type, parse_fd_table

__all__ = [
    "FdSample",
    "FdTable",
    "Growth",
    "LeakVerdict",
    "NotPermitted",
    "ProcessGone",
    "classify_target",
    "count_by_type",
    "growth",
    "judge",
    "linear_fit",
    "parse_fd_table",
    "read_local",
    "read_via_broker",
    "time_to_limit",
]
