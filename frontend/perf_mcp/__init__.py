"""perf-mcp: the unprivileged MCP server for Linux performance diagnosis."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("perf-mcp")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
