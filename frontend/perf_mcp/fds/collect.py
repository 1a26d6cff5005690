"""Reading a process's fd table (I/O): locally from /proc, or through the broker.

Local: listdir /proc/PID/fd and readlink each entry (no descriptor of the
target is opened), and /proc/PID/limits (world-readable). Another user's
/proc/PID/fd answers EACCES; then the broker's FdTable job (job class
"inspect", polkit action org.perfmcp.inspect) reads the same two things as
root and returns them as text (parse.parse_fd_table).
"""

from __future__ import annotations

import errno
import os

from perf_mcp_protocol import FdTable as FdTableRequest
from perf_mcp_protocol import JobResult

from ..broker_client import BrokerClient
from ..errors import ErrorCode, ToolError
from ..procfs import ParseError, PidStatus, parse_pid_limits, parse_pid_status
from ..procfs.sampler import read_file
from .parse import FdTable, parse_fd_table, printable

BROKER_TIMEOUT_S = 30.0


class ProcessGone(Exception):
    """The process does not exist (any more)."""


class NotPermitted(Exception):
    """This user may not read the process's fd table (EACCES): ask the broker."""


def _gone(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ESRCH)


def read_local(pid: int, proc_root: str = "/proc") -> FdTable:
    base = f"{proc_root}/{int(pid)}"
    try:
        names = os.listdir(f"{base}/fd")
    except PermissionError:
        raise NotPermitted(pid) from None
    except OSError as exc:
        if _gone(exc):
            raise ProcessGone(pid) from None
        raise
    fds: dict[int, str] = {}
    for name in names:
        try:
            fds[int(name)] = printable(os.readlink(f"{base}/fd/{name}"))
        except OSError as exc:
            if _gone(exc):
                continue  # closed between listdir and readlink
            if exc.errno == errno.EACCES:
                raise NotPermitted(pid) from None
            raise
        except ValueError:
            continue
    warnings: list[str] = []
    open_files = None
    try:
        limits = parse_pid_limits(read_file(f"{base}/limits"))
        open_files = limits.max_open_files
        warnings.extend(limits.warnings)
    except OSError as exc:
        if _gone(exc):
            raise ProcessGone(pid) from None
        warnings.append(f"/proc/{pid}/limits: {exc.strerror or exc}")
    return FdTable(fds=fds, open_files=open_files, warnings=tuple(warnings))


def read_status(pid: int, proc_root: str = "/proc") -> PidStatus:
    try:
        return parse_pid_status(read_file(f"{proc_root}/{int(pid)}/status"))
    except OSError as exc:
        if _gone(exc):
            raise ProcessGone(pid) from None
        raise


async def read_via_broker(broker: BrokerClient, pid: int) -> tuple[FdTable, int, bool]:
    """(table, broker job id, stdout truncated). Broker errors arrive as
    ToolError (PERMISSION_DENIED, BROKER_UNAVAILABLE, PID_NOT_FOUND, ...)."""
    reply = await broker.run(FdTableRequest(pid=pid), timeout_s=BROKER_TIMEOUT_S)
    result = reply.final
    if not isinstance(result, JobResult):
        raise ToolError(ErrorCode.EXECUTION_FAILED, f"unexpected broker reply {type(result).__name__}")
    step = next((s for s in result.steps if s.name == "fd_table"), None)
    if step is None:
        raise ToolError(ErrorCode.EXECUTION_FAILED, "the broker's reply has no fd_table step")
    if step.exit_status != 0:
        raise ToolError(ErrorCode.EXECUTION_FAILED,
                        f"the broker could not read process {pid}'s fd table: "
                        f"{step.stderr.decode('utf-8', 'replace').strip()}",
                        suggestion="The kernel refuses access to this process even to root (a security module, "
                        "or the init of this VM or container); perf_fd_trace cannot watch it.",
                        recoverable=False)
    try:
        table = parse_fd_table(step.stdout)
    except ParseError as exc:
        raise ToolError(ErrorCode.PARSE_ERROR, f"the broker's fd table could not be read: {exc}") from None
    return table, result.job_id, step.stdout_truncated
