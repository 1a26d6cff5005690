"""Start-up check: nobody but root can change what the root broker runs.

The broker runs as root. If another user could write a file it executes or imports
(a module in a user's virtualenv, a program of the job table, a shared library it has
mapped), a directory on its import path, a polkit file that decides who may run jobs,
or any directory above one of these (rename it away, put another in its place), that
user would own root. So the broker checks all of them and refuses to run, naming each
path and what is wrong with it.

When:
- First, before anything is imported: the launcher (a copy of boot.py, run by an
  isolated interpreter, `python -I -S`) checks the interpreter, what it has mapped and
  loaded, and the import path, then guards the import system so that every module is
  checked before its code runs. `sudo perf-mcp` does the same before its root parent
  imports the broker (perf_mcp.privsep).
- Then, before the broker listens (this module): everything above again, plus the job
  programs, every file of the broker's own packages (bpftrace scripts included) and
  polkit's files for our actions.

The rule (boot.py): every path and every parent directory up to / (as given and
resolved) is owned by root and not writable by group or others; polkit's own
configuration may also belong to polkitd; a root-owned sticky parent (/tmp) is allowed,
a sticky directory whose contents matter is not. There is no switch to skip the check.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Iterable

# The rule itself and this process's view of what it runs and imports live in boot.py,
# which every launcher copies so that it can check before anything is imported.
from .boot import (  # noqa: F401  (re-exported: the broker's one integrity module)
    ROOT, Problem, Target, check, executed_targets, guarded, import_targets, launcher_path, parse_mapped_files,
    refusal_message,
)

# What polkitd reads to decide on our actions (see polkit/ in the source tree).
POLKIT_ACTION_FILES = ("/usr/share/polkit-1/actions/org.perfmcp.policy",)
POLKIT_RULES_DIRS = ("/etc/polkit-1/rules.d", "/usr/share/polkit-1/rules.d")
# The broker's own packages: every file in them is checked, data files included.
OWN_PACKAGES = ("perf_mcp_broker", "perf_mcp_protocol")


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
    launcher = launcher_path()
    return (
        executed_targets([*programs, *([launcher] if launcher else [])])
        + import_targets(list(sys.modules.values()), sys.path)
        + package_tree_targets(own_package_dirs())
        + polkit_targets()
    )


def startup_problems(programs: Iterable[str]) -> list[Problem]:
    """What the running broker trusts that others could change (empty: all is well)."""
    import perf_mcp_protocol  # noqa: F401  (loaded already; makes sure its tree is checked)

    return check(startup_targets(programs))
