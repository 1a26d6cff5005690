"""cgroup v1 and v2: find a cgroup's directories, read its files, judge it.

- locate.py: mountinfo + /proc/PID/cgroup (or a client's path) -> directories (pure).
- parse.py: interface file contents -> one typed reading (pure).
- collect.py: the reads, with the realpath check that a directory stays under its mount (I/O).
- analysis.py: window figures between two readings and findings (pure).
"""

from __future__ import annotations

from .analysis import CgroupState, analyse
from .collect import Located, ProcessGone, locate, read_mounts, read_proc_cgroup, take_reading
from .locate import BadCgroupPath, Hierarchy, hierarchies_for_path, hierarchies_for_process, normalise_cgroup_path
from .parse import CgroupReading, parse_cpu_max, parse_reading

__all__ = [
    "BadCgroupPath",
    "CgroupReading",
    "CgroupState",
    "Hierarchy",
    "Located",
    "ProcessGone",
    "analyse",
    "hierarchies_for_path",
    "hierarchies_for_process",
    "locate",
    "normalise_cgroup_path",
    "parse_cpu_max",
    "parse_reading",
    "read_mounts",
    "read_proc_cgroup",
    "take_reading",
]
