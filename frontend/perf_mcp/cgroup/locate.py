"""Which directories hold a cgroup's files (pure: mountinfo and /proc/PID/cgroup in, paths out).

A cgroup is named either by a process (/proc/PID/cgroup lists one path per
hierarchy) or by a path relative to the hierarchy root, which on a hybrid
machine (v1 controllers plus a v2 mount) is looked up in every hierarchy.

Client-given paths are checked here before any file system access: no NUL or
control characters, no ".." component, at most MAX_PATH_LEN bytes. The
collector then resolves symlinks (realpath) and checks that the result is
still under the mount point (collect.resolve_dir).
"""

from __future__ import annotations

import posixpath
from typing import Literal

import msgspec

from ..procfs import CgroupMounts, Mount, ProcCgroup, cgroup_dir

MAX_PATH_LEN = 4096
Version = Literal["v1", "v2"]


class Hierarchy(msgspec.Struct, frozen=True, kw_only=True):
    """One hierarchy a cgroup lives in: where its directory should be."""

    version: Version
    controllers: tuple[str, ...]  # v1: the controllers mounted there; v2: () (see cgroup.controllers)
    cgroup_path: str  # "/a/b", as /proc/PID/cgroup writes it
    mount_point: str
    directory: str  # mount_point + the path; not yet checked to exist


class BadCgroupPath(ValueError):
    """The client's cgroup path is not acceptable (the message says why)."""


def normalise_cgroup_path(path: str) -> str:
    """A client's cgroup path as "/a/b". Relative and absolute forms mean the
    same (both are relative to the hierarchy root). Raises BadCgroupPath."""
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_LEN:
        raise BadCgroupPath(f"longer than {MAX_PATH_LEN} bytes")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise BadCgroupPath("contains NUL or a control character")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise BadCgroupPath("contains '..'; give the path from the hierarchy root, as /proc/PID/cgroup shows it")
    return "/" + "/".join(parts)


def _join(mount: Mount, cgroup_path: str) -> str:
    relative = cgroup_path.lstrip("/")
    return posixpath.join(mount.mount_point, relative) if relative else mount.mount_point


def _v1_mounts(mounts: CgroupMounts) -> list[tuple[Mount, tuple[str, ...]]]:
    """Each v1 mount once, with every controller (or name=) mounted there."""
    by_id: dict[int, tuple[Mount, list[str]]] = {}
    for controller, mount in mounts.v1.items():
        by_id.setdefault(mount.mount_id, (mount, []))[1].append(controller)
    return [(m, tuple(sorted(c))) for m, c in sorted(by_id.values(), key=lambda mc: mc[0].mount_point)]


def hierarchies_for_path(path: str, mounts: CgroupMounts) -> list[Hierarchy]:
    """Every hierarchy where a cgroup of this (normalised) path would be."""
    out: list[Hierarchy] = []
    for mount, controllers in _v1_mounts(mounts):
        if mount.root not in ("/", ""):
            continue  # a mount of a sub-tree (containers): paths from the root do not apply
        out.append(Hierarchy(version="v1", controllers=controllers, cgroup_path=path,
                             mount_point=mount.mount_point, directory=_join(mount, path)))
    if mounts.v2 is not None and mounts.v2.root in ("/", ""):
        out.append(Hierarchy(version="v2", controllers=(), cgroup_path=path, mount_point=mounts.v2.mount_point,
                             directory=_join(mounts.v2, path)))
    return out


def hierarchies_for_process(proc: ProcCgroup, mounts: CgroupMounts) -> tuple[list[Hierarchy], list[str]]:
    """The directories of a process's cgroups, and warnings for hierarchies
    that are not mounted here (or mounted from a sub-tree that hides them)."""
    out: list[Hierarchy] = []
    warnings: list[str] = []
    for entry in proc.entries:
        if entry.hierarchy_id == 0 and not entry.controllers:
            mount = mounts.v2
            version: Version = "v2"
            controllers: tuple[str, ...] = ()
        else:
            mount = next((mounts.v1[c] for c in entry.controllers if c in mounts.v1), None)
            version = "v1"
            controllers = entry.controllers
        if mount is None:
            warnings.append(f"hierarchy {entry.hierarchy_id} ({','.join(entry.controllers) or 'v2'}) "
                            "is not mounted here")
            continue
        directory = cgroup_dir(mount, entry.path)
        if directory is None:
            warnings.append(f"{entry.path} is outside the part of hierarchy {entry.hierarchy_id} "
                            f"mounted at {mount.mount_point}")
            continue
        if version == "v1":
            controllers = tuple(sorted(c for c, m in mounts.v1.items() if m.mount_id == mount.mount_id))
        out.append(Hierarchy(version=version, controllers=controllers, cgroup_path=entry.path,
                             mount_point=mount.mount_point, directory=directory))
    return out, warnings


def controller_directory(hierarchies: list[Hierarchy], controller: str) -> Hierarchy | None:
    """The v1 hierarchy holding this controller, if any."""
    return next((h for h in hierarchies if h.version == "v1" and controller in h.controllers), None)


def unified(hierarchies: list[Hierarchy]) -> Hierarchy | None:
    return next((h for h in hierarchies if h.version == "v2"), None)
