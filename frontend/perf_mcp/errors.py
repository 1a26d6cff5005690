"""Typed tool errors: one code from DESIGN.md, a message, and an actionable suggestion.

A handler raises ToolError; the server turns it into the failure envelope
({success: false, error: {code, message, recoverable, suggestion}}, isError true).
Anything else a handler raises becomes EXECUTION_FAILED and is logged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


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

# Worth calling again: as is (later, or after the operator acts), or with the named parameter fixed.
# INVALID_PARAMS is recoverable: the message names the parameter, the value and what is
# allowed, so the same call with that one parameter fixed works.
RECOVERABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.INVALID_PARAMS,
        ErrorCode.BROKER_UNAVAILABLE,
        ErrorCode.TIMEOUT,
        ErrorCode.PROFILER_BUSY,
        ErrorCode.OUTPUT_TRUNCATED,
        ErrorCode.EXECUTION_FAILED,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.CAPABILITY_MISSING,
    }
)


POLKIT_POLICY_FILE = "/usr/share/polkit-1/actions/org.perfmcp.policy"

SETUP_POLICY_HINT = (
    f"The perf-mcp polkit actions are not installed. As root, copy polkit/org.perfmcp.policy from the "
    f"perf-mcp source to {POLKIT_POLICY_FILE} (packaging/install.py does it, and the Debian package ships it), "
    "then call again; polkit reads it without a restart. Until then only root may run broker jobs."
)

# The broker grant (polkit action org.perfmcp.<grant>) each tool needs for its main
# answer. A tool not listed needs none (it reads /proc and /sys as the user, and may
# use a grant for more detail: perf_snapshot other users' I/O, perf_fd_trace other
# users' processes, perf_thread_profile's off-CPU part, perf_io_latency mode=trace).
TOOL_GRANT: dict[str, str] = {
    "perf_cpu_profile": "profile",
    "perf_offcpu_profile": "trace",
    "perf_runq_latency": "trace",
    "perf_syscall_count": "trace",
    "perf_exec_trace": "trace",
    "perf_bio_latency": "trace",
    "perf_io_layers": "trace",
    "perf_file_trace": "trace",
    "perf_vfs_latency": "trace",
    "perf_tcp_trace": "trace",
    "perf_dns_latency": "trace",
}


def tools_without(grant: str | None, served: Mapping[str, str | None]) -> list[str]:
    """The served tools that still answer without `grant` (None: without any grant);
    `served` maps each tool to the grant it declares (ToolSpec.grant), None to look it
    up in TOOL_GRANT."""
    needs = {t: g or TOOL_GRANT.get(t) for t, g in served.items()}
    return sorted(t for t, g in needs.items() if g is None or (grant is not None and g != grant))


class ToolError(Exception):
    """A failure a tool reports to the client as a typed error."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        suggestion: str | None = None,
        recoverable: bool | None = None,
        grant: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.grant = grant  # PERMISSION_DENIED: the broker grant that was refused, when known
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
