"""Frontend test fixtures (the shared ones are in tests/conftest.py and tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
import pytest

import helpers


@pytest.fixture(scope="session")
def busy_exe() -> Iterator[Path]:
    """The busy binary, built where perf resolves its symbols: perf treats DSOs under
    /tmp/perf-* as JIT maps, so the shared /tmp/perf-mcp-... prefix would profile as [unknown]."""
    directory = helpers.make_shared_tmpdir("pmcp-fe-busy-")
    try:
        yield helpers.build_busy_binary(directory)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        helpers.remove_tree(directory)


@pytest.fixture
def no_broker_socket(shared_tmp: Path) -> Path:
    """A socket path where no broker listens."""
    return shared_tmp / "no-broker.sock"
