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


class Backend(enum.Enum):
    """Which rung of a tool's ladder runs the job; the broker maps it to a program
    or to one of its own shipped bpftrace scripts, never to client text."""

    LIBBPF = "libbpf"  # a libbpf-tools program (runqlat, offcputime, syscount, ...)
    BPFTRACE = "bpftrace"  # a script shipped with the broker package
    PERF = "perf"  # perf record / perf sched / perf stat


def _range(bounds: tuple[int, int]) -> Meta:
    return Meta(ge=bounds[0], le=bounds[1])


class CpuProfile(_Message, tag="cpu_profile"):
    """On-CPU stacks: perf record -g then perf script (PERF), or stacks counted in
    the kernel by the broker's profile:hz script (BPFTRACE, no perf.data)."""

    duration_s: Annotated[float, Meta(ge=limits.CPU_PROFILE_DURATION_S[0], le=limits.CPU_PROFILE_DURATION_S[1])]
    frequency_hz: Annotated[int, Meta(ge=limits.CPU_PROFILE_FREQUENCY_HZ[0], le=limits.CPU_PROFILE_FREQUENCY_HZ[1])]
    pid: Pid | None = None
    include_kernel: bool = True
    backend: Backend = Backend.PERF


class OffcpuProfile(_Message, tag="offcpu_profile"):
    """Off-CPU time by stack: offcputime, perf sched record + timehist, or sched_switch in bpftrace."""

    backend: Backend
    duration_s: Annotated[int, _range(limits.OFFCPU_DURATION_S)]
    min_block_us: Annotated[int, _range(limits.MIN_BLOCK_US)] = 1000
    pid: Pid | None = None


class RunqLatency(_Message, tag="runq_latency"):
    """Run-queue latency histograms: runqlat or the broker's runqlat script."""

    backend: Backend
    duration_s: Annotated[int, _range(limits.TRACE_SHORT_DURATION_S)]
    pid: Pid | None = None
    per_pid: bool = False
    per_cpu: bool = False  # bpftrace only: runqlat has no per-CPU histograms


class SyscallCount(_Message, tag="syscall_count"):
    """Syscall counts (and errors, latency) by syscall or by process."""

    backend: Backend
    duration_s: Annotated[int, _range(limits.TRACE_LONG_DURATION_S)]
    pid: Pid | None = None
    top_n: Annotated[int, _range(limits.SYSCALL_TOP_N)] = 50
    latency: bool = False
    per_process: bool = False
    errors: bool = False


class ExecTrace(_Message, tag="exec_trace"):
    """Process executions (args, parent, failures) and exits (lifetimes)."""

    backend: Backend
    duration_s: Annotated[int, _range(limits.TRACE_SHORT_DURATION_S)]
    include_failed: bool = False
    max_args: Annotated[int, _range(limits.EXEC_MAX_ARGS)] = 20
    uid: Annotated[int, Meta(ge=0, le=limits.UID_MAX)] | None = None


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


class ProcessIo(_Message, tag="process_io"):
    """Every process's I/O counters and fd count, for a peer who may not read them.

    The broker reads /proc itself (no program runs) and returns raw text in one
    step named "process_io": per process a line "pid N fds M" (M: entries of
    /proc/N/fd, "-" when refused) then /proc/N/io verbatim. Processes that exit
    during the read are left out; the text stops at the output cap (truncated).
    """


class BioLatency(_Message, tag="bio_latency"):
    """Block I/O latency histograms: biolatency or the broker's block tracepoint script.
    A device filter is applied in the frontend on per-device histograms."""

    backend: Backend
    duration_s: Annotated[int, _range(limits.TRACE_SHORT_DURATION_S)]
    per_device: bool = False
    queued: bool = False  # include the time queued in the OS (insert to issue)
    milliseconds: bool = False
    linear_bucket_ms: Annotated[int, _range(limits.LINEAR_BUCKET_MS)] | None = None  # None: log2 buckets


class IoLayers(_Message, tag="io_layers"):
    """What the syscalls asked for (read/write bytes and ops) against what reached the block layer."""

    backend: Backend
    duration_s: Annotated[int, _range(limits.TRACE_SHORT_DURATION_S)]
    per_process: bool = False


class FileMode(enum.Enum):
    OPENS = "opens"
    SLOW_OPS = "slow_ops"
    FILE_LIFECYCLE = "file_lifecycle"
    ALL = "all"


class FileTrace(_Message, tag="file_trace"):
    """File opens (path, process, errors), slow reads/writes/fsyncs with the path, files created and deleted."""

    backend: Backend
    mode: FileMode
    duration_s: Annotated[int, _range(limits.TRACE_SHORT_DURATION_S)]
    pid: Pid | None = None
    min_latency_ms: Annotated[int, _range(limits.MIN_LATENCY_MS)] = 10


class VfsLatency(_Message, tag="vfs_latency"):
    """Slow VFS operations by type and file, latency distribution per operation."""

    backend: Backend
    duration_s: Annotated[int, _range(limits.TRACE_SHORT_DURATION_S)]
    pid: Pid | None = None
    min_latency_ms: Annotated[int, _range(limits.MIN_LATENCY_MS)] = 10


class TcpMode(enum.Enum):
    LIFECYCLE = "lifecycle"
    CONNECTIONS = "connections"


Port = Annotated[int, Meta(ge=1, le=65535)]


class TcpTrace(_Message, tag="tcp_trace"):
    """TCP sessions (lifecycle: bytes each way, duration) or new connections, accepts and retransmits."""

    backend: Backend
    mode: TcpMode
    duration_s: Annotated[int, _range(limits.TRACE_LONG_DURATION_S)]
    pid: Pid | None = None
    local_port: Port | None = None
    remote_port: Port | None = None


class DnsLatency(_Message, tag="dns_latency"):
    """Name lookups (getaddrinfo, gethostbyname) with their process and latency, through uprobes on libc."""

    backend: Backend
    duration_s: Annotated[int, _range(limits.TRACE_SHORT_DURATION_S)]
    pid: Pid | None = None


TraceRequest = Union[OffcpuProfile, RunqLatency, SyscallCount, ExecTrace, BioLatency, IoLayers, FileTrace, VfsLatency,
                     TcpTrace, DnsLatency]
TRACE_REQUESTS: tuple[type, ...] = (OffcpuProfile, RunqLatency, SyscallCount, ExecTrace, BioLatency, IoLayers,
                                    FileTrace, VfsLatency, TcpTrace, DnsLatency)
Request = Union[CpuProfile, TraceRequest, AccessQuery, ToolFeatures, FdTable, ProcessIo]
ClientMessage = Union[Hello, CpuProfile, OffcpuProfile, RunqLatency, SyscallCount, ExecTrace, BioLatency, IoLayers,
                      FileTrace, VfsLatency, TcpTrace, DnsLatency, AccessQuery, ToolFeatures, FdTable, ProcessIo]

# Which class of authorisation each request needs; None means any local user.
REQUEST_CLASS: dict[type, JobClass | None] = {
    CpuProfile: JobClass.PROFILE,
    OffcpuProfile: JobClass.TRACE,
    RunqLatency: JobClass.TRACE,
    SyscallCount: JobClass.TRACE,
    ExecTrace: JobClass.TRACE,
    BioLatency: JobClass.TRACE,
    IoLayers: JobClass.TRACE,
    FileTrace: JobClass.TRACE,
    VfsLatency: JobClass.TRACE,
    TcpTrace: JobClass.TRACE,
    DnsLatency: JobClass.TRACE,
    AccessQuery: None,
    ToolFeatures: None,
    FdTable: JobClass.INSPECT,
    ProcessIo: JobClass.INSPECT,
}

# ---------------------------------------------------------------- broker -> client


class KernelFeatures(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the broker can see as root that an unprivileged user may not.

    Found at start-up by looking (files) and, for fentry, by asking bpftrace,
    whose --info is the only probe that loads a program; the frontend's ladders
    still fall back when a rung that looked possible fails to attach.
    """

    btf: bool
    tracefs: bool
    kprobe_events: bool
    perf_event_paranoid: int | None
    kptr_restrict: int | None
    tracepoints: bool = False  # sched and raw_syscalls tracepoints present
    uprobes: bool = False
    fentry: bool | None = None  # None: not known (bpftrace missing)


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
    disabled: list[str] = []  # programs the administrator turned off (--disable)


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
