"""Typed tool errors: one code from DESIGN.md, a message, and an actionable suggestion.

A handler raises ToolError; the server turns it into the failure envelope
({success: false, error: {code, message, recoverable, suggestion}}, isError true).
Anything else a handler raises becomes EXECUTION_FAILED and is logged.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_PARAMS = "INVALID_PARAMS"
    TOOL_NOT_FOUND = "TOOL_NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    CAPABILITY_MISSING = "CAPABILITY_MISSING"
    BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    EXECUTION_FAILED = "EXECUTION_FAILED"
    PARSE_ERROR = "PARSE_ERROR"
    OUTPUT_TRUNCATED = "OUTPUT_TRUNCATED"
    PROFILER_BUSY = "PROFILER_BUSY"
    PID_NOT_FOUND = "PID_NOT_FOUND"
    CGROUP_NOT_FOUND = "CGROUP_NOT_FOUND"
    DEVICE_NOT_FOUND = "DEVICE_NOT_FOUND"


BROKER_START_HINT = (
    "Start the perf-mcp broker as root: `sudo perf-mcp-broker --socket /run/perf-mcp/broker.sock` "
    "(or install its systemd socket unit, see README), or run the server as `sudo perf-mcp`, "
    "which separates privileges itself. Point the frontend at another socket with "
    "--broker-socket or PERF_MCP_BROKER_SOCKET."
)

GRANT_HINT = (
    "Ask an administrator to grant the perf-mcp actions: install polkit/50-perf-mcp.rules as "
    "/etc/polkit-1/rules.d/50-perf-mcp.rules and add your user to the group with "
    "`sudo usermod -aG perf-mcp $USER`, then start a new login session (see README, security model)."
)

# The suggestion given when a raise site has nothing more specific to say.
DEFAULT_SUGGESTION: dict[ErrorCode, str] = {
    ErrorCode.INVALID_PARAMS: "Fix the named parameter using the tool's inputSchema and call again.",
    ErrorCode.TOOL_NOT_FOUND: "Call tools/list for the names this server offers.",
    ErrorCode.PERMISSION_DENIED: GRANT_HINT,
    ErrorCode.CAPABILITY_MISSING: (
        "Install the missing program as root: `apt install linux-perf bpftrace libbpf-tools`, "
        "then restart the broker so it finds it."
    ),
    ErrorCode.BROKER_UNAVAILABLE: BROKER_START_HINT,
    ErrorCode.TIMEOUT: "Try a shorter duration, or call again when the machine is less loaded.",
    ErrorCode.EXECUTION_FAILED: "Check the perf-mcp server's stderr log for details and call again.",
    ErrorCode.PARSE_ERROR: "The program's output was not in the expected format; report it with the raw output artifact.",
    ErrorCode.OUTPUT_TRUNCATED: "Use a shorter duration or a lower sample rate so the output fits the broker's cap.",
    ErrorCode.PROFILER_BUSY: "Another profiling job of yours (or too many in total) is running; wait for it to finish and retry.",
    ErrorCode.PID_NOT_FOUND: "The process is gone or never existed; list processes (e.g. with perf_snapshot) and pass a live pid.",
    ErrorCode.CGROUP_NOT_FOUND: "Pass a pid, or a cgroup path relative to the cgroup mount, as listed in /proc/PID/cgroup.",
    ErrorCode.DEVICE_NOT_FOUND: "Pass a name listed in /proc/diskstats (disks) or /sys/class/net (interfaces).",
}

# Worth retrying as is (later, or after the operator acts) rather than changing the call.
RECOVERABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.BROKER_UNAVAILABLE,
        ErrorCode.TIMEOUT,
        ErrorCode.PROFILER_BUSY,
        ErrorCode.OUTPUT_TRUNCATED,
        ErrorCode.EXECUTION_FAILED,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.CAPABILITY_MISSING,
    }
)


class ToolError(Exception):
    """A failure a tool reports to the client as a typed error."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        suggestion: str | None = None,
        recoverable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.suggestion = suggestion or DEFAULT_SUGGESTION[code]
        self.recoverable = code in RECOVERABLE if recoverable is None else recoverable

    def __repr__(self) -> str:
        return f"ToolError({self.code.value}, {self.message!r})"


def single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups (trio nurseries wrap them), else exc."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
