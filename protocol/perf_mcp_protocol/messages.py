"""The messages between the perf-mcp frontend and the root broker.

Invariants (both sides rely on them):
- Every message is a frozen msgspec Struct with forbid_unknown_fields, tagged by
  a "type" field, so one typed decoder per direction rejects anything else.
- Every number carries its range and every name is an enum: nothing a client
  sends can become free text in an argv or a script.
- Identity (uid, pid) is never a message field: the broker takes it from the
  socket (SO_PEERCRED, pidfd).

A connection carries one job: the client sends Hello, the broker answers
BrokerHello, the client sends exactly one Request, the broker answers with
zero or more Accepted/Progress events and then exactly one final message
(JobResult, AccessReply or ErrorReply).
"""

from __future__ import annotations

import enum
from typing import Annotated, Union

import msgspec
from msgspec import Meta

from . import limits


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    pass


Pid = Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX)]
Seconds = Annotated[float, Meta(ge=0.0, le=86_400.0)]


class JobClass(enum.Enum):
    """Authorisation classes; each maps to one polkit action (polkit/)."""

    PROFILE = "profile"  # sampling profilers (perf record)
    TRACE = "trace"  # eBPF tracing tools
    INSPECT = "inspect"  # reading another user's process details


class ErrorCode(enum.Enum):
    PERMISSION_DENIED = "PERMISSION_DENIED"
    BUSY = "BUSY"
    INVALID_REQUEST = "INVALID_REQUEST"
    PROGRAM_MISSING = "PROGRAM_MISSING"
    PROTOCOL_MISMATCH = "PROTOCOL_MISMATCH"
    PEER_GONE = "PEER_GONE"
    PID_NOT_FOUND = "PID_NOT_FOUND"
    INTERNAL = "INTERNAL"


# ---------------------------------------------------------------- client -> broker


class Hello(_Message, tag="hello"):
    protocol_version: Annotated[int, Meta(ge=1, le=65535)]


class CpuProfile(_Message, tag="cpu_profile"):
    """perf record -g at a fixed frequency, then perf script of the result."""

    duration_s: Annotated[float, Meta(ge=limits.CPU_PROFILE_DURATION_S[0], le=limits.CPU_PROFILE_DURATION_S[1])]
    frequency_hz: Annotated[int, Meta(ge=limits.CPU_PROFILE_FREQUENCY_HZ[0], le=limits.CPU_PROFILE_FREQUENCY_HZ[1])]
    pid: Pid | None = None
    include_kernel: bool = True


class AccessQuery(_Message, tag="access_query"):
    """Which job classes would this peer be granted right now (no prompt)."""


class ToolFeatures(_Message, tag="tool_features"):
    """`bpftrace --info`: which probe types and helpers this kernel offers."""


class FdTable(_Message, tag="fd_table"):
    """The fd table and limits of one process, for a peer who may not read them.

    The broker reads /proc/PID/fd and /proc/PID/limits itself (no program runs)
    and returns the raw text in one step named "fd_table": a header line
    "limits", the limits file verbatim, then "fds" and one "FD\tTARGET" line per
    open descriptor (targets are readlink results, e.g. socket:[123]).
    """

    pid: Pid


Request = Union[CpuProfile, AccessQuery, ToolFeatures, FdTable]
ClientMessage = Union[Hello, CpuProfile, AccessQuery, ToolFeatures, FdTable]

# Which class of authorisation each request needs; None means any local user.
REQUEST_CLASS: dict[type, JobClass | None] = {
    CpuProfile: JobClass.PROFILE,
    AccessQuery: None,
    ToolFeatures: None,
    FdTable: JobClass.INSPECT,
}

# ---------------------------------------------------------------- broker -> client


class KernelFeatures(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the broker can see as root that an unprivileged user may not."""

    btf: bool
    tracefs: bool
    kprobe_events: bool
    perf_event_paranoid: int | None
    kptr_restrict: int | None


class BrokerHello(_Message, tag="broker_hello"):
    protocol_version: int
    broker_version: str
    programs: dict[str, str]  # program name -> absolute path resolved at start-up
    missing: list[str]  # programs of the fixed list not found
    job_kinds: list[str]  # request tags this broker serves
    kernel: KernelFeatures
    output_cap: int
    max_jobs_per_uid: int
    max_jobs: int


class Accepted(_Message, tag="accepted"):
    job_id: int
    job_class: JobClass | None


class Progress(_Message, tag="progress"):
    step: str
    elapsed_s: float
    expected_s: float


class StepResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    argv: list[str]
    exit_status: int | None  # None when killed by a signal
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    wall_s: float


class JobResult(_Message, tag="result"):
    job_id: int
    steps: list[StepResult]
    wall_s: float


class AccessReply(_Message, tag="access"):
    granted: list[JobClass]
    denied: list[JobClass]
    uid: int  # as the broker saw it on the socket
    detail: str


class ErrorReply(_Message, tag="error"):
    code: ErrorCode
    message: str


BrokerMessage = Union[BrokerHello, Accepted, Progress, JobResult, AccessReply, ErrorReply]
