"""Start-up check: nobody but root can change what the root broker runs.

The broker runs as root. If another user could write a file it executes or imports
(a module in a user's virtualenv, a program of the job table, a shared library it has
mapped), a directory on its import path, a polkit file that decides who may run jobs,
or any directory above one of these (rename it away, put another in its place), that
user would own root. So at start-up, before it listens, the broker checks all of them
and refuses to run, naming each path and what is wrong with it.

Invariants:
- Every path is checked together with every parent directory up to /, both as given
  (symlinks taken literally, for the directories holding them) and fully resolved.
- A path passes when it is owned by uid 0 and not writable by its group or others.
  polkit's own configuration may also belong to the polkitd system user (Debian and
  Fedora make polkitd own rules.d): polkitd is the authority that decides anyway.
- One exception: a parent directory that is root-owned and sticky (/tmp, /var/tmp) may
  be world-writable. In a sticky directory only the owner of an entry can rename or
  remove it, so a root-owned entry inside stays put. A directory whose contents matter
  (on the import path, a package, a polkit rules directory) gets no exception: anyone
  could add a file to it.
- There is no switch to skip the check.
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

ROOT = frozenset({0})
# What polkitd reads to decide on our actions (see polkit/ in the source tree).
POLKIT_ACTION_FILES = ("/usr/share/polkit-1/actions/org.perfmcp.policy",)
POLKIT_RULES_DIRS = ("/etc/polkit-1/rules.d", "/usr/share/polkit-1/rules.d")
# The broker's own packages: every file in them is checked, data files included.
OWN_PACKAGES = ("perf_mcp_broker", "perf_mcp_protocol")
# Mapped "files" that are not files on disk.
_NOT_FILES = ("/dev/", "/proc/", "/sys/", "/memfd:", "/SYSV")


@dataclass(frozen=True)
class Target:
    """One thing the broker trusts, and why."""

    path: str
    why: str  # "executes", "imports", "reads as configuration"
    contents_matter: bool = False  # a directory nobody else may add files to
    owners: frozenset[int] = ROOT


@dataclass(frozen=True)
class Problem:
    path: str  # the path that fails (the target itself or one of its parents)
    target: str  # what the broker trusts through it
    why: str
    reason: str

    def __str__(self) -> str:
        via = "" if self.path == self.target else f" (a parent of {self.target})"
        return f"{self.path}{via}: {self.reason}; the broker {self.why} it"


def mode_problem(st: os.stat_result, owners: frozenset[int], sticky_ok: bool) -> str | None:
    """Why a file with this stat may be changed by someone other than root, or None."""
    if st.st_uid not in owners:
        return f"owned by {_user_name(st.st_uid)}, not root"
    mode = stat.S_IMODE(st.st_mode)
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    if sticky_ok and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and st.st_uid == 0:
        return None
    who = "others" if mode & stat.S_IWOTH else f"group {_group_name(st.st_gid)}"
    return f"writable by {who} (mode {mode:04o})"


def _user_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    import grp

    try:
        return f"{gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return str(gid)


def _prefixes(path: str) -> list[str]:
    """'/a/b/c' -> ['/', '/a', '/a/b', '/a/b/c']."""
    parts = [p for p in path.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass
class Checker:
    """Checks targets; remembers each (path, rule) it has decided."""

    _seen: dict[tuple[str, bool, frozenset[int]], str | None] = field(default_factory=dict)

    def _component(self, path: str, owners: frozenset[int], sticky_ok: bool) -> str | None:
        key = (path, sticky_ok, owners)
        if key not in self._seen:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._seen[key] = None  # callers only pass existing paths' prefixes
            else:
                self._seen[key] = None if stat.S_ISLNK(st.st_mode) else mode_problem(st, owners, sticky_ok)
        return self._seen[key]

    def _chain(self, path: str, target: Target) -> Iterator[Problem]:
        prefixes = _prefixes(path)
        for i, prefix in enumerate(prefixes):
            # Sticky parents are fine; a directory whose contents matter never is.
            sticky_ok = i < len(prefixes) - 1 or not target.contents_matter
            reason = self._component(prefix, target.owners | ROOT, sticky_ok)
            if reason:
                yield Problem(prefix, target.path, target.why, reason)

    def check(self, target: Target) -> list[Problem]:
        path = os.path.abspath(target.path)
        if not os.path.lexists(path):
            # A missing import path entry could be created by whoever may write the
            # nearest existing directory above it.
            path = _nearest_existing(path)
            target = Target(target.path, target.why, True, target.owners)
        problems = list(self._chain(path, target))
        real = os.path.realpath(path)
        if real != path:
            problems += self._chain(real, target)
        return _unique(problems)


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.reason) not in seen:
            seen.add((p.path, p.reason))
            out.append(p)
    return out


def check(targets: Iterable[Target]) -> list[Problem]:
    """All problems of all targets, each failing path reported once."""
    checker = Checker()
    problems: list[Problem] = []
    for target in targets:
        problems += checker.check(target)
    return _unique(problems)


# ---------------------------------------------------------------- what this process trusts


def parse_mapped_files(maps_text: str) -> list[str]:
    """File paths mapped into a process, from /proc/PID/maps text."""
    out: dict[str, None] = {}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5]
        if not path.startswith("/") or path.endswith(" (deleted)") or path.startswith(_NOT_FILES):
            continue
        out[path] = None
    return list(out)


def executed_targets(programs: Iterable[str]) -> list[Target]:
    """The interpreter, every file mapped into this process, and the job programs."""
    with open("/proc/self/maps") as f:
        mapped = parse_mapped_files(f.read())
    paths = [sys.executable, os.readlink("/proc/self/exe"), *mapped, *programs]
    return [Target(p, "executes") for p in dict.fromkeys(paths) if p]


def module_files(modules: Iterable[object]) -> list[str]:
    """Source, bytecode and extension files of loaded modules."""
    out: dict[str, None] = {}
    for module in modules:
        for attr in ("__file__", "__cached__"):
            path = getattr(module, attr, None)
            if isinstance(path, str) and os.path.isabs(path) and os.path.exists(path):
                out[path] = None
    return list(out)


def import_targets(modules: Iterable[object], search_path: Iterable[str]) -> list[Target]:
    """Loaded module files, the directories holding them and every import path entry."""
    files = module_files(modules)
    dirs = dict.fromkeys(os.path.dirname(f) for f in files)
    for entry in search_path:
        dirs[os.path.abspath(entry or os.getcwd())] = None
    return [Target(f, "imports") for f in files] + [Target(d, "imports", contents_matter=True) for d in dirs]


def package_tree_targets(package_dirs: Iterable[str]) -> list[Target]:
    """Every file and directory of the broker's own packages (bpftrace scripts included)."""
    out: list[Target] = []
    for top in package_dirs:
        for dirpath, dirnames, filenames in os.walk(top):
            out.append(Target(dirpath, "imports", contents_matter=True))
            out += [Target(os.path.join(dirpath, n), "imports") for n in filenames]
    return out


def polkit_targets() -> list[Target]:
    """polkit's files that decide who may run broker jobs (those that exist)."""
    owners = ROOT | _polkitd_uid()
    out = [Target(p, "reads as configuration", owners=owners) for p in POLKIT_ACTION_FILES if os.path.exists(p)]
    for directory in POLKIT_RULES_DIRS:
        if not os.path.isdir(directory):
            continue
        out.append(Target(directory, "reads as configuration", contents_matter=True, owners=owners))
        for name in sorted(os.listdir(directory)):
            if name.endswith(".rules"):
                out.append(Target(os.path.join(directory, name), "reads as configuration", owners=owners))
    return out


def _polkitd_uid() -> frozenset[int]:
    try:
        return frozenset({pwd.getpwnam("polkitd").pw_uid})
    except KeyError:
        return frozenset()


def own_package_dirs() -> list[str]:
    dirs = []
    for name in OWN_PACKAGES:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            dirs.append(os.path.dirname(os.path.abspath(path)))
    return dirs


def startup_targets(programs: Iterable[str]) -> list[Target]:
    return (
        executed_targets(programs)
        + import_targets(list(sys.modules.values()), sys.path)
        + package_tree_targets(own_package_dirs())
        + polkit_targets()
    )


def startup_problems(programs: Iterable[str]) -> list[Problem]:
    """What the running broker trusts that others could change (empty: all is well)."""
    import perf_mcp_protocol  # noqa: F401  (loaded already; makes sure its tree is checked)

    return check(startup_targets(programs))


def refusal_message(problems: list[Problem], limit: int = 20) -> str:
    lines = [
        f"refusing to run as root: {len(problems)} path(s) that the broker executes, imports or "
        "reads as configuration can be changed by users other than root:"
    ]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    lines.append(
        "Install the broker into a root-owned place (`sudo perf-mcp-broker install`, `sudo make "
        "install` or the Debian package), or make these paths owned by root and not writable by "
        "group or others (chown root:root, chmod go-w)."
    )
    return "\n".join(lines)
