"""Fixtures of the packaging tests (tests/conftest.py has the shared ones)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
import pkg_util  # noqa: E402


@pytest.fixture
def machine_state(root_required: None) -> Iterator[pkg_util.SavedFiles]:
    """For tests that install into this machine: one such test at a time, and the
    polkit files of the development set-up put back afterwards."""
    with pkg_util.packaging_lock(), pkg_util.polkit_files_preserved() as saved:
        yield saved


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A temp dir the test users can traverse (sockets live here)."""
    path = helpers.make_shared_tmpdir("pmcp-pkg-")
    try:
        yield path
    finally:
        helpers.remove_tree(path)


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make deb` once per test session: the package the deb and systemd tests use."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("dpkg-deb") is None:
        pytest.skip("not a Debian system (dpkg-deb missing)")
    out = tmp_path_factory.mktemp("deb")
    res = subprocess.run(["make", "-C", os.fspath(helpers.REPO), "deb", f"DEB_OUT={out}"], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    debs = sorted(out.glob("perf-mcp-broker_*.deb"))
    assert len(debs) == 1, debs
    fields = subprocess.run(["dpkg-deb", "-f", os.fspath(debs[0]), "Version", "Installed-Size"], capture_output=True,
                            text=True, check=True).stdout.split()
    pkg_util.report("make deb", file=debs[0].name, size_kib=debs[0].stat().st_size // 1024,
                    installed_size_kib=fields[-1])
    return debs[0]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if pkg_util.FIGURES:
        terminalreporter.section("packaging figures")
        for line in pkg_util.FIGURES:
            terminalreporter.write_line(line)
