"""Small helpers for the frontend tests (the result helpers live in tests/helpers.py)."""

from __future__ import annotations

from helpers import envelope, ok_data

__all__ = ["envelope", "ok_data"]
