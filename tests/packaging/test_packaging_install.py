"""`sudo make install` puts the broker into a root-owned /usr/local tree with the
units, the polkit files and the group, enables the socket (for the next boot when
systemd is not running, as here), and the installed broker serves the test users;
`sudo make uninstall` removes all of it but a rules file the administrator changed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import helpers
import pkg_util

pytestmark = [pytest.mark.root, pytest.mark.slow]

PREFIX = "/usr/local"
LIB = Path(f"{PREFIX}/lib/perf-mcp")
MANIFEST = LIB / "installed-files.json"
BROKER = Path(f"{PREFIX}/sbin/perf-mcp-broker")
UNIT_DIR = Path("/etc/systemd/system")
SERVICE = UNIT_DIR / "perf-mcp-broker.service"
ENABLED_LINK = UNIT_DIR / "sockets.target.wants" / "perf-mcp-broker.socket"


def make(target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", os.fspath(helpers.REPO), target, f"PREFIX={PREFIX}"], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=1200)


# Directories an install may have to create; uninstall must leave each as it was.
PARENTS = ("/etc/sysusers.d", f"{PREFIX}/share/doc", f"{PREFIX}/sbin", f"{PREFIX}/lib",
           "/etc/systemd/system/sockets.target.wants")


def ours() -> list[str]:
    """What an install of ours would leave on this machine (policy and rules aside:
    the development set-up has them too)."""
    paths = [LIB, BROKER, SERVICE, UNIT_DIR / "perf-mcp-broker.socket", ENABLED_LINK,
             Path("/etc/sysusers.d/perf-mcp-broker.conf"), Path(f"{PREFIX}/share/doc/perf-mcp-broker")]
    return [os.fspath(p) for p in paths if os.path.lexists(p)]


def test_make_install_serve_uninstall(machine_state: pkg_util.SavedFiles, workdir: Path,
                                      test_users: helpers.TestUsers, system_bus: None) -> None:
    if MANIFEST.exists():
        make("uninstall")  # a run that died half-way
    assert ours() == [], f"left from something else: {ours()}"
    parents_before = {p: os.path.exists(p) for p in PARENTS}
    try:
        res = make("install")
        assert res.returncode == 0, res.stdout + res.stderr
        if not os.path.isdir("/run/systemd/system"):
            assert "systemd is not running" in res.stderr and "enabled for the next boot" in res.stderr
        manifest = json.loads(MANIFEST.read_text())
        files = sorted(manifest["files"])
        assert os.fspath(BROKER) in files and os.fspath(SERVICE) in files
        assert pkg_util.tree_problems(files + [os.fspath(MANIFEST)]) == []
        assert BROKER.read_text().startswith("#!/usr/bin/python3 -IS\n")
        assert pkg_util.exec_start(SERVICE)[0] == os.fspath(BROKER)
        assert ENABLED_LINK.is_symlink() and os.path.realpath(ENABLED_LINK) == os.fspath(UNIT_DIR / "perf-mcp-broker.socket")
        verified = pkg_util.verify(UNIT_DIR / "perf-mcp-broker.socket", SERVICE)
        assert verified.returncode == 0 and verified.stderr == "", verified.stderr
        assert manifest["group_created"] is False  # the development set-up made it

        figures = pkg_util.serve_installed(SERVICE, f"{LIB}/site", workdir, test_users)

        # A second install is an upgrade in place.
        again = make("install")
        assert again.returncode == 0, again.stderr
        # The administrator changes the rules file; uninstall keeps it.
        pkg_util.RULES.write_text(pkg_util.RULES.read_text() + "// a local change\n")
        res = make("uninstall")
        assert res.returncode == 0, res.stdout + res.stderr
        assert ours() == []
        assert {p: os.path.exists(p) for p in PARENTS} == parents_before
        assert pkg_util.RULES.read_text().endswith("// a local change\n")
        assert "kept /etc/polkit-1/rules.d/50-perf-mcp.rules" in res.stderr
        assert not pkg_util.POLICY.exists()  # the action file went with it
        pkg_util.report("make install / uninstall", files=len(files), broker=figures["cmdline"])
    finally:
        if MANIFEST.exists():
            make("uninstall")
