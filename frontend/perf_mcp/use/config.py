"""Where the threshold override file is, and reading it: the only I/O of the
use package (the table and its TOML handling are pure, in thresholds.py).

Path: $PERF_MCP_THRESHOLDS if set, else $XDG_CONFIG_HOME/perf-mcp/thresholds.toml
(XDG_CONFIG_HOME defaults to ~/.config). No file there is normal (defaults);
an unreadable or bad file is a warning and the defaults stay. The file is read
on every call (a few hundred bytes), so an edit applies without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

from .thresholds import Thresholds, apply_overrides, default_thresholds

ENV_VAR = "PERF_MCP_THRESHOLDS"
MAX_BYTES = 64 * 1024


def thresholds_path() -> tuple[Path | None, bool]:
    """(path, explicit): explicit when the environment variable named it."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit), True
    base = os.environ.get("XDG_CONFIG_HOME") or (os.path.join(os.path.expanduser("~"), ".config"))
    if not os.path.isabs(base):
        return None, False
    return Path(base) / "perf-mcp" / "thresholds.toml", False


def load_thresholds() -> tuple[Thresholds, list[str]]:
    """The table in force and warnings about the override file."""
    path, explicit = thresholds_path()
    if path is None:
        return default_thresholds(), []
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        if explicit:
            return default_thresholds(), [f"{ENV_VAR}={path}: no such file; the default thresholds are used"]
        return default_thresholds(), []
    except OSError as exc:
        if not explicit and not os.path.exists(path):
            return default_thresholds(), []  # a home directory we cannot look into: no file of ours there
        return default_thresholds(), [f"{path}: cannot be read ({exc.strerror}); the default thresholds are used"]
    if len(raw) > MAX_BYTES:
        return default_thresholds(), [f"{path}: larger than {MAX_BYTES} bytes; the default thresholds are used"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return default_thresholds(), [f"{path}: not UTF-8 text; the default thresholds are used"]
    return apply_overrides(text, str(path))
