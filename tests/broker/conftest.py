"""Broker socket-level tests: fixtures local to tests/broker (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# broker_wire and user_clients sit beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402


@pytest.fixture
def granted(test_users: helpers.TestUsers) -> str:
    return test_users.granted.name


@pytest.fixture
def denied(test_users: helpers.TestUsers) -> str:
    return test_users.denied.name


@pytest.fixture
def broker_alive(broker: helpers.RunningBroker) -> Iterator[helpers.RunningBroker]:
    """The default broker; at the end of the test it must still be alive."""
    yield broker
    assert broker.alive(), f"the broker died during the test:\n{broker.log_text()[-4000:]}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the broker tests measured, even when their output was captured."""
    from user_clients import FIGURES

    if FIGURES:
        terminalreporter.section("broker figures")
        for line in FIGURES:
            terminalreporter.write_line(line)

