"""Fixtures of the packaging tests (tests/conftest.py has the shared ones)."""

from __future__ import annotations

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
    path = helpers.make_shared_tmpdir("perf-mcp-pkg-")
    try:
        yield path
    finally:
        helpers.remove_tree(path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if pkg_util.FIGURES:
        terminalreporter.section("packaging figures")
        for line in pkg_util.FIGURES:
            terminalreporter.write_line(line)
