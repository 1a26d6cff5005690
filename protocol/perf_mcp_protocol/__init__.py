"""perf-mcp's wire vocabulary: message types, the frame codec and the limits.

No I/O policy and no business logic live here; the frontend and the broker both
import this package and nothing else of each other.
"""

from . import limits
from .codec import (
    ConnectionClosed,
    FrameReader,
    FrameTooLarge,
    ProtocolError,
    decode_broker_message,
    decode_client_message,
    encode_frame,
    frame_length,
)
from .messages import (
    REQUEST_CLASS,
    Accepted,
    AccessQuery,
    AccessReply,
    BrokerHello,
    BrokerMessage,
    ClientMessage,
    CpuProfile,
    ErrorCode,
    ErrorReply,
    FdTable,
    Hello,
    JobClass,
    JobResult,
    KernelFeatures,
    Progress,
    Request,
    StepResult,
    ToolFeatures,
)

__all__ = [
    "limits",
    "ConnectionClosed",
    "FrameReader",
    "FrameTooLarge",
    "ProtocolError",
    "decode_broker_message",
    "decode_client_message",
    "encode_frame",
    "frame_length",
    "REQUEST_CLASS",
    "Accepted",
    "AccessQuery",
    "AccessReply",
    "BrokerHello",
    "BrokerMessage",
    "ClientMessage",
    "CpuProfile",
    "ErrorCode",
    "ErrorReply",
    "FdTable",
    "Hello",
    "JobClass",
    "JobResult",
    "KernelFeatures",
    "Progress",
    "Request",
    "StepResult",
    "ToolFeatures",
]
