"""Reading cgroup files (I/O only; parsing is parse.py, the rules are analysis.py).

Everything read here is world-readable on a standard system: /proc/self/mountinfo,
/proc/PID/cgroup (of any process) and the cgroup interface files. Only file
names from parse.V1_FILES / V2_FILES are opened, inside directories that
resolve_dir checked to be under a cgroup mount after resolving symlinks.

``proc_root`` and ``mountinfo`` let a test point the collector at a fake tree
(a v2 hierarchy cannot exist on a hybrid machine); the tool never passes them.
"""

from __future__ import annotations

import errno
import os
import time

import msgspec

from ..procfs import CgroupMounts, ProcCgroup, cgroup_mounts, parse_mountinfo, parse_proc_cgroup
from ..procfs.sampler import read_file
from .locate import Hierarchy, controller_directory, unified
from .parse import V1_FILES, V2_FILES, CgroupReading, parse_reading

MAX_CGROUP_FILE = 1 << 20


class ProcessGone(Exception):
    """No such process (it never existed or it exited)."""


class Located(msgspec.Struct, frozen=True, kw_only=True):
    """The hierarchies a cgroup was found in, each with a checked directory."""

    hierarchies: list[Hierarchy]
    missing: list[Hierarchy]  # where the cgroup does not exist (another hierarchy has it)
    warnings: list[str]


class TimedReading(msgspec.Struct, frozen=True):
    t_mono: float
    reading: CgroupReading


def read_mounts(mountinfo: str = "/proc/self/mountinfo") -> tuple[CgroupMounts, list[str]]:
    info = parse_mountinfo(read_file(mountinfo))
    return cgroup_mounts(info), list(info.warnings)


def read_proc_cgroup(pid: int, proc_root: str = "/proc") -> ProcCgroup:
    try:
        return parse_proc_cgroup(read_file(f"{proc_root}/{int(pid)}/cgroup"))
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise ProcessGone(pid) from None
        raise


def process_comm(pid: int, proc_root: str = "/proc") -> str | None:
    try:
        return read_file(f"{proc_root}/{int(pid)}/comm").decode("utf-8", "replace").strip()
    except OSError:
        return None


def resolve_dir(h: Hierarchy) -> str | None:
    """The cgroup's directory with symlinks resolved, if it exists and is still
    under the hierarchy's mount point; None otherwise."""
    mount = os.path.realpath(h.mount_point)
    real = os.path.realpath(h.directory)
    if real != mount and not real.startswith(mount.rstrip("/") + "/"):
        return None
    return real if os.path.isdir(real) else None


def locate(hierarchies: list[Hierarchy]) -> Located:
    found: list[Hierarchy] = []
    missing: list[Hierarchy] = []
    warnings: list[str] = []
    for h in hierarchies:
        real = resolve_dir(h)
        if real is None:
            missing.append(h)
            continue
        found.append(msgspec.structs.replace(h, directory=real))
    return Located(hierarchies=found, missing=missing, warnings=warnings)


def read_files(directory: str, names: tuple[str, ...], warnings: list[str]) -> dict[str, bytes]:
    """The files of one cgroup directory that exist (names are fixed, never a client's)."""
    out: dict[str, bytes] = {}
    for name in names:
        try:
            out[name] = read_file(os.path.join(directory, name), MAX_CGROUP_FILE)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENODEV:  # removed while reading
                continue
            warnings.append(f"{directory}/{name}: {exc.strerror or exc}")
    return out


def take_reading(located: Located) -> TimedReading:
    t_mono = time.monotonic()
    warnings: list[str] = []
    v1: dict[str, dict[str, bytes]] = {}
    where: dict[str, str] = {}
    for controller, names in V1_FILES.items():
        h = controller_directory(located.hierarchies, controller)
        if h is not None:
            v1[controller] = read_files(h.directory, names, warnings)
            where[controller] = h.directory
    v2h = unified(located.hierarchies)
    v2 = read_files(v2h.directory, V2_FILES, warnings) if v2h else None
    if v2h:
        where["v2"] = v2h.directory
    reading = parse_reading(v1, v2, where)
    if warnings:
        reading = msgspec.structs.replace(reading, warnings=reading.warnings + tuple(warnings))
    return TimedReading(t_mono, reading)


# ---------------------------------------------------------------- children of the root, busiest process

CHILD_CONTROLLERS = ("cpu", "cpuacct", "memory")


def child_paths(mounts: CgroupMounts, limit: int, parent: str = "/") -> tuple[list[str], list[str]]:
    """The paths ("/parent/name") of the direct children of ``parent`` (a
    normalised path) in the v1 cpu, cpuacct and memory hierarchies and in the
    v2 hierarchy (mounts of the whole tree only), at most ``limit`` per
    hierarchy. A parent missing from a hierarchy adds nothing from it."""
    points = {mounts.v1[c].mount_point for c in CHILD_CONTROLLERS
              if c in mounts.v1 and mounts.v1[c].root in ("/", "")}
    if mounts.v2 is not None and mounts.v2.root in ("/", ""):
        points.add(mounts.v2.mount_point)
    names: set[str] = set()
    warnings: list[str] = []
    relative = parent.strip("/")
    for point in sorted(points):
        directory = os.path.join(point, relative) if relative else point
        real = os.path.realpath(directory)
        if real != os.path.realpath(point) and not real.startswith(os.path.realpath(point).rstrip("/") + "/"):
            continue  # a symlink out of the mount (real cgroupfs has none)
        try:
            with os.scandir(real) as it:
                found = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            continue
        except OSError as exc:
            warnings.append(f"{directory}: {exc.strerror or exc}")
            continue
        if len(found) > limit:
            warnings.append(f"{directory} has {len(found)} child cgroups; the first {limit} by name are listed")
        names.update(found[:limit])
    prefix = "/" + relative + "/" if relative else "/"
    return [prefix + n for n in sorted(names)], warnings


def take_child_readings(located: dict[str, Located]) -> dict[str, CgroupReading]:
    """One reading of each child (a child removed meanwhile is left out)."""
    out: dict[str, CgroupReading] = {}
    for path, loc in located.items():
        reading = take_reading(loc).reading
        if reading.cpu is not None or reading.memory is not None:
            out[path] = reading
    return out


def _task_dir(located: Located) -> str | None:
    for controller in ("cpuacct", "cpu"):
        h = controller_directory(located.hierarchies, controller)
        if h is not None:
            return h.directory
    v2 = unified(located.hierarchies)
    return v2.directory if v2 else None


def task_ticks(located: Located, proc_root: str = "/proc", limit: int = 1000) -> tuple[int | None, dict[int, int]]:
    """The number of processes in the cgroup (its CPU hierarchy's cgroup.procs)
    and the CPU ticks (utime + stime) of each (at most ``limit``)."""
    directory = _task_dir(located)
    if directory is None:
        return None, {}
    try:
        pids = [int(t) for t in read_file(os.path.join(directory, "cgroup.procs"), MAX_CGROUP_FILE).split()[:limit]
                if t.isdigit()]
    except (OSError, ValueError):
        return None, {}
    out: dict[int, int] = {}
    for pid in pids:
        try:
            stat = read_file(f"{proc_root}/{pid}/stat")
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 12 and fields[11].isdigit() and fields[12].isdigit():
            out[pid] = int(fields[11]) + int(fields[12])
    return len(pids), out


def busiest(first: dict[int, int], second: dict[int, int]) -> int | None:
    """The process that used the most CPU between two task_ticks (None: none ran)."""
    best, most = None, 0
    for pid, ticks in second.items():
        used = ticks - first.get(pid, ticks)
        if used > most:
            best, most = pid, used
    return best
