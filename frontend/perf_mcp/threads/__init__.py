"""Threads of one process: per-thread CPU, switches, run-queue wait over a window.

- parse.py: /proc/PID/task/TID/{stat,status,schedstat} bytes -> TaskSample (pure).
- collect.py: one pass over /proc/PID/task (I/O).
- analysis.py: rates between passes, totals, off-CPU stacks per thread, findings (pure).
"""

from __future__ import annotations

from .analysis import Analysis, ThreadBrief, ThreadRow, Totals, Window, analyse, attach_offcpu, findings
from .collect import NotPermitted, ProcessGone, read_process, thread_of
from .parse import ProcessSample, Schedstat, TaskSample, parse_ctx_switches, parse_schedstat, parse_task

__all__ = [
    "Analysis",
    "NotPermitted",
    "ProcessGone",
    "ProcessSample",
    "Schedstat",
    "TaskSample",
    "ThreadBrief",
    "ThreadRow",
    "Totals",
    "Window",
    "analyse",
    "attach_offcpu",
    "findings",
    "parse_ctx_switches",
    "parse_schedstat",
    "parse_task",
    "read_process",
    "thread_of",
]
