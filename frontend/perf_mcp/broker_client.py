"""Client side of the broker protocol: one Unix-socket connection per job.

Sequence: send Hello, read BrokerHello, send one Request, read Accepted/Progress
events until the final JobResult, AccessReply or ErrorReply.

Invariants:
- The socket is closed on every path out of run(): result, error, timeout and
  cancellation. Closing it is how a cancelled MCP call stops the broker's job
  (the broker kills the job's process group when its client goes away).
- Every broker failure becomes a ToolError with a code from DESIGN.md and a
  suggestion that says what to do about it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import trio

from perf_mcp_protocol import (
    AccessReply,
    Accepted,
    BrokerHello,
    ErrorReply,
    FrameReader,
    Hello,
    JobResult,
    ProtocolError,
    Progress,
    Request,
    decode_broker_message,
    encode_frame,
    limits,
)
from perf_mcp_protocol.messages import REQUEST_CLASS
from perf_mcp_protocol.messages import ErrorCode as BrokerErrorCode

from .errors import BROKER_START_HINT, GRANT_HINT, POLKIT_POLICY_FILE, SETUP_POLICY_HINT, ErrorCode, ToolError

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/perf-mcp/broker.sock"
SOCKET_ENV = "PERF_MCP_BROKER_SOCKET"
CONNECT_TIMEOUT_S = 5.0

ProgressCallback = Callable[[Progress], Awaitable[None]]


class Connector(Protocol):
    """Opens one connection to a broker that is not behind a socket path
    (perf_mcp.privsep.PassedConnector, when `sudo perf-mcp` separated privileges)."""

    description: str

    async def connect(self) -> trio.SocketStream: ...


def resolve_socket_path(cli_value: str | None = None, environ: dict[str, str] | None = None) -> str:
    """--broker-socket, else $PERF_MCP_BROKER_SOCKET, else the default path."""
    env = os.environ if environ is None else environ
    return cli_value or env.get(SOCKET_ENV) or DEFAULT_SOCKET


class BrokerReply(msgspec.Struct, frozen=True):
    hello: BrokerHello
    job_id: int | None
    final: JobResult | AccessReply


_BROKER_ERRORS: dict[BrokerErrorCode, tuple[ErrorCode, str | None]] = {
    BrokerErrorCode.PERMISSION_DENIED: (ErrorCode.PERMISSION_DENIED, GRANT_HINT),
    BrokerErrorCode.BUSY: (ErrorCode.PROFILER_BUSY, None),
    BrokerErrorCode.PROGRAM_MISSING: (ErrorCode.CAPABILITY_MISSING, None),
    BrokerErrorCode.PID_NOT_FOUND: (ErrorCode.PID_NOT_FOUND, None),
    BrokerErrorCode.INVALID_REQUEST: (ErrorCode.INVALID_PARAMS, None),
    BrokerErrorCode.PROTOCOL_MISMATCH: (
        ErrorCode.BROKER_UNAVAILABLE,
        "The broker speaks another protocol version: install the frontend and the broker from the same release.",
    ),
    BrokerErrorCode.PEER_GONE: (ErrorCode.EXECUTION_FAILED, None),
    BrokerErrorCode.INTERNAL: (ErrorCode.EXECUTION_FAILED, "Check the broker's log (stderr or the journal) and retry."),
}


_NOT_REGISTERED_RE = re.compile(r"[Aa]ction (org\.perfmcp\.[a-z_]+) is not registered")


def error_from_reply(reply: ErrorReply, request: Request | None = None) -> ToolError:
    """The ToolError for a broker's ErrorReply. A refusal because polkit does not know
    the action (its .policy file is not installed) is a set-up error: a message that
    starts "set-up:" and names the missing file (PERMISSION_DENIED still:
    like a refusal it ends the broker rungs of a ladder, and the tools that work without
    the grant work without the file); any other refusal is PERMISSION_DENIED carrying the
    grant that was refused (the server lists the tools that work without it)."""
    code, suggestion = _BROKER_ERRORS.get(reply.code, (ErrorCode.EXECUTION_FAILED, None))
    job_class = REQUEST_CLASS.get(type(request)) if request is not None else None
    grant = job_class.value if job_class is not None else None
    if reply.code == BrokerErrorCode.PERMISSION_DENIED and (m := _NOT_REGISTERED_RE.search(reply.message)):
        return ToolError(ErrorCode.PERMISSION_DENIED,
                         f"set-up: polkit does not know the action {m.group(1)}: {POLKIT_POLICY_FILE} is missing "
                         f"(broker: {reply.message})", suggestion=SETUP_POLICY_HINT, recoverable=True, grant=grant)
    if reply.code == BrokerErrorCode.PERMISSION_DENIED and grant is not None:
        return ToolError(code, f"broker: the '{grant}' grant (polkit action org.perfmcp.{grant}) was refused: "
                         f"{reply.message}", suggestion=suggestion, grant=grant)
    return ToolError(code, f"broker: {reply.message}", suggestion=suggestion)


class BrokerClient:
    """Talks to the root broker at socket_path (or through a Connector); one connection per run()."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        connector: Connector | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if (socket_path is None) == (connector is None):
            raise ValueError("give a socket path or a connector")
        self._connector = connector
        self.socket_path = socket_path or (connector.description if connector else "")
        self.connect_timeout_s = connect_timeout_s

    async def run(
        self,
        request: Request,
        *,
        timeout_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> BrokerReply:
        """Run one job and return the broker's hello and final reply.

        Raises ToolError (BROKER_UNAVAILABLE, TIMEOUT, PERMISSION_DENIED, ...).
        On cancellation the socket is closed before Cancelled propagates, which
        makes the broker stop the job.
        """
        stream = await self._connect()
        try:
            with trio.move_on_after(timeout_s) as scope:
                return await self._exchange(stream, request, on_progress)
            assert scope.cancelled_caught
            raise ToolError(
                ErrorCode.TIMEOUT,
                f"the broker did not finish the {type(request).__name__} job within {timeout_s:.0f} s",
            )
        finally:
            # aclose() closes the fd even when we are being cancelled.
            await stream.aclose()

    async def _connect(self) -> trio.SocketStream:
        try:
            with trio.fail_after(self.connect_timeout_s):
                if self._connector is not None:
                    return await self._connector.connect()
                return await trio.open_unix_socket(self.socket_path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise ToolError(
                ErrorCode.BROKER_UNAVAILABLE,
                f"no perf-mcp broker is listening on {self.socket_path} ({exc.strerror or exc})",
                suggestion=BROKER_START_HINT,
            ) from None
        except PermissionError:
            raise ToolError(
                ErrorCode.BROKER_UNAVAILABLE,
                f"the broker socket {self.socket_path} is not accessible to uid {os.getuid()}",
                suggestion="The broker creates its socket mode 0666 in a world-searchable directory; "
                "check the directory's permissions, or restart the broker. " + BROKER_START_HINT,
            ) from None
        except trio.TooSlowError:
            raise ToolError(
                ErrorCode.BROKER_UNAVAILABLE,
                f"connecting to the broker at {self.socket_path} timed out",
                suggestion=BROKER_START_HINT,
            ) from None
        except OSError as exc:
            raise ToolError(
                ErrorCode.BROKER_UNAVAILABLE,
                f"cannot connect to the broker at {self.socket_path}: {exc}",
                suggestion=BROKER_START_HINT,
            ) from None

    async def _exchange(
        self, stream: trio.SocketStream, request: Request, on_progress: ProgressCallback | None
    ) -> BrokerReply:
        reader = FrameReader(stream)
        try:
            await stream.send_all(encode_frame(Hello(protocol_version=limits.PROTOCOL_VERSION)))
            first = decode_broker_message(await reader.read_frame(limits.MAX_SMALL_REPLY_FRAME))
            if isinstance(first, ErrorReply):
                raise error_from_reply(first, request)
            if not isinstance(first, BrokerHello):
                raise ProtocolError(f"expected broker_hello, got {type(first).__name__}")
            hello = first
            if hello.protocol_version != limits.PROTOCOL_VERSION:
                raise ToolError(
                    ErrorCode.BROKER_UNAVAILABLE,
                    f"broker protocol {hello.protocol_version}, frontend protocol {limits.PROTOCOL_VERSION}",
                    suggestion="Install the frontend and the broker from the same release.",
                )
            await stream.send_all(encode_frame(request))
            reply_limit = limits.reply_frame_limit(hello.output_cap)
            job_id: int | None = None
            while True:
                msg = decode_broker_message(await reader.read_frame(reply_limit))
                match msg:
                    case Accepted():
                        job_id = msg.job_id
                    case Progress():
                        if on_progress is not None:
                            await on_progress(msg)
                    case JobResult() | AccessReply():
                        return BrokerReply(hello=hello, job_id=job_id, final=msg)
                    case ErrorReply():
                        raise error_from_reply(msg, request)
                    case _:
                        raise ProtocolError(f"unexpected {type(msg).__name__} during a job")
        except ProtocolError as exc:
            log.warning("broker protocol error on %s: %s", self.socket_path, exc)
            raise ToolError(
                ErrorCode.EXECUTION_FAILED,
                f"the broker connection failed: {exc}",
                suggestion="The broker may have restarted or crashed; check its log and retry.",
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionResetError, BrokenPipeError) as exc:
            raise ToolError(
                ErrorCode.BROKER_UNAVAILABLE,
                f"the broker closed the connection: {exc or type(exc).__name__}",
                suggestion="The broker may have restarted or crashed; check its log and retry. " + BROKER_START_HINT,
            ) from None
