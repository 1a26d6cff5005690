"""Small helpers for the frontend tests."""

from __future__ import annotations

from typing import Any


def envelope(result: Any) -> dict[str, Any]:
    """The structuredContent envelope of a CallToolResult."""
    sc = result.structured_content
    assert isinstance(sc, dict), result
    return sc
