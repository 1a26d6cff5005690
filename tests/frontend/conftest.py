"""Frontend test fixtures (the shared ones are in tests/conftest.py and tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
import pytest

import helpers



@pytest.fixture
def no_broker_socket(shared_tmp: Path) -> Path:
    """A socket path where no broker listens."""
    return shared_tmp / "no-broker.sock"
