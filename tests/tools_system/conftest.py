"""Fixtures for the system-tool tests (perf_snapshot, perf_use_check,
perf_io_latency): the frontend runs as perfmcp-denied with no broker, since
these tools need none."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def no_broker_socket(shared_tmp: Path) -> Path:
    """A socket path where no broker listens."""
    return shared_tmp / "no-broker.sock"
