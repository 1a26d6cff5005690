"""The frame codec and the message types, with Hypothesis (no broker needed).

- Every message type round-trips through encode_frame / frame_length / decode,
  also when the frame arrives in arbitrary pieces through FrameReader.
- Garbage (random bytes, msgpack of random shapes, hostile values) given to the
  decoders only ever raises ProtocolError, or decodes to a valid message.
- frame_length refuses an over-limit header before a byte of the body is read.
"""

from __future__ import annotations

import typing

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_mcp_protocol import (
    Accepted,
    AccessQuery,
    AccessReply,
    BrokerHello,
    BrokerMessage,
    ClientMessage,
    Backend,
    BioLatency,
    CpuProfile,
    DnsLatency,
    FileMode,
    FileTrace,
    IoLayers,
    TcpMode,
    TcpTrace,
    VfsLatency,
    ErrorCode,
    ExecTrace,
    OffcpuProfile,
    RunqLatency,
    SyscallCount,
    ErrorReply,
    FrameReader,
    FrameTooLarge,
    Hello,
    JobClass,
    JobResult,
    KernelFeatures,
    Progress,
    ProtocolError,
    StepResult,
    FdTable,
    ProcessIo,
    ToolFeatures,
    decode_broker_message,
    decode_client_message,
    encode_frame,
    frame_length,
    limits,
)

# ------------------------------------------------------------------ strategies

small_text = st.text(max_size=40)
u32 = st.integers(min_value=0, max_value=2**31 - 1)
finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
pids = st.integers(min_value=limits.PID_MIN, max_value=limits.PID_MAX)

hello = st.builds(Hello, protocol_version=st.integers(1, 65535))
cpu_profile = st.builds(
    CpuProfile,
    duration_s=st.floats(*limits.CPU_PROFILE_DURATION_S, allow_nan=False),
    frequency_hz=st.integers(*limits.CPU_PROFILE_FREQUENCY_HZ),
    pid=st.none() | pids,
    include_kernel=st.booleans(),
    backend=st.sampled_from([Backend.PERF, Backend.BPFTRACE]),
)
backends = st.sampled_from(list(Backend))
opt_pid = st.none() | pids
offcpu_profile = st.builds(OffcpuProfile, backend=backends, duration_s=st.integers(*limits.OFFCPU_DURATION_S),
                           min_block_us=st.integers(*limits.MIN_BLOCK_US), pid=opt_pid)
runq_latency = st.builds(RunqLatency, backend=backends, duration_s=st.integers(*limits.TRACE_SHORT_DURATION_S),
                         pid=opt_pid, per_pid=st.booleans(), per_cpu=st.booleans())
syscall_count = st.builds(SyscallCount, backend=backends, duration_s=st.integers(*limits.TRACE_LONG_DURATION_S),
                          pid=opt_pid, top_n=st.integers(*limits.SYSCALL_TOP_N), latency=st.booleans(),
                          per_process=st.booleans(), errors=st.booleans())
exec_trace = st.builds(ExecTrace, backend=backends, duration_s=st.integers(*limits.TRACE_SHORT_DURATION_S),
                       include_failed=st.booleans(), max_args=st.integers(*limits.EXEC_MAX_ARGS),
                       uid=st.none() | st.integers(0, limits.UID_MAX))
short = st.integers(*limits.TRACE_SHORT_DURATION_S)
ports = st.none() | st.integers(1, 65535)
latency_ms = st.integers(*limits.MIN_LATENCY_MS)
bio_latency = st.builds(BioLatency, backend=backends, duration_s=short, per_device=st.booleans(),
                        queued=st.booleans(), milliseconds=st.booleans(),
                        linear_bucket_ms=st.none() | st.integers(*limits.LINEAR_BUCKET_MS))
io_layers = st.builds(IoLayers, backend=backends, duration_s=short, per_process=st.booleans())
file_trace = st.builds(FileTrace, backend=backends, mode=st.sampled_from(list(FileMode)), duration_s=short,
                       pid=opt_pid, min_latency_ms=latency_ms)
vfs_latency = st.builds(VfsLatency, backend=backends, duration_s=short, pid=opt_pid, min_latency_ms=latency_ms)
tcp_trace = st.builds(TcpTrace, backend=backends, mode=st.sampled_from(list(TcpMode)),
                      duration_s=st.integers(*limits.TRACE_LONG_DURATION_S), pid=opt_pid, local_port=ports,
                      remote_port=ports)
dns_latency = st.builds(DnsLatency, backend=backends, duration_s=short, pid=opt_pid)
access_query = st.just(AccessQuery())
tool_features = st.just(ToolFeatures())
process_io = st.just(ProcessIo())
fd_table = st.builds(FdTable, pid=st.integers(limits.PID_MIN, limits.PID_MAX))

kernel = st.builds(
    KernelFeatures,
    btf=st.booleans(),
    tracefs=st.booleans(),
    kprobe_events=st.booleans(),
    perf_event_paranoid=st.none() | st.integers(-1, 4),
    kptr_restrict=st.none() | st.integers(0, 2),
    tracepoints=st.booleans(),
    uprobes=st.booleans(),
    fentry=st.none() | st.booleans(),
)
broker_hello = st.builds(
    BrokerHello,
    protocol_version=st.integers(1, 65535),
    broker_version=small_text,
    programs=st.dictionaries(small_text, small_text, max_size=5),
    missing=st.lists(small_text, max_size=5),
    disabled=st.lists(small_text, max_size=5),
    job_kinds=st.lists(small_text, max_size=5),
    kernel=kernel,
    output_cap=st.integers(limits.MIN_OUTPUT_CAP, limits.MAX_OUTPUT_CAP),
    max_jobs_per_uid=st.integers(1, 8),
    max_jobs=st.integers(1, 64),
)
job_classes = st.sampled_from(list(JobClass))
accepted = st.builds(Accepted, job_id=u32, job_class=st.none() | job_classes)
progress = st.builds(Progress, step=small_text, elapsed_s=finite, expected_s=finite)
step_result = st.builds(
    StepResult,
    name=small_text,
    argv=st.lists(small_text, max_size=8),
    exit_status=st.none() | st.integers(0, 255),
    signal=st.none() | st.integers(1, 64),
    stdout=st.binary(max_size=2000),
    stderr=st.binary(max_size=200),
    stdout_truncated=st.booleans(),
    stderr_truncated=st.booleans(),
    timed_out=st.booleans(),
    wall_s=finite,
)
job_result = st.builds(JobResult, job_id=u32, steps=st.lists(step_result, max_size=3), wall_s=finite)
access_reply = st.builds(
    AccessReply,
    granted=st.lists(job_classes, max_size=3, unique=True),
    denied=st.lists(job_classes, max_size=3, unique=True),
    uid=st.integers(0, 2**31 - 1),
    detail=small_text,
)
error_reply = st.builds(ErrorReply, code=st.sampled_from(list(ErrorCode)), message=small_text)

CLIENT_STRATEGIES = {Hello: hello, CpuProfile: cpu_profile, AccessQuery: access_query, ToolFeatures: tool_features,
                     FdTable: fd_table, ProcessIo: process_io, OffcpuProfile: offcpu_profile, RunqLatency: runq_latency,
                     SyscallCount: syscall_count, ExecTrace: exec_trace, BioLatency: bio_latency,
                     IoLayers: io_layers, FileTrace: file_trace, VfsLatency: vfs_latency, TcpTrace: tcp_trace,
                     DnsLatency: dns_latency}
BROKER_STRATEGIES = {
    BrokerHello: broker_hello,
    Accepted: accepted,
    Progress: progress,
    JobResult: job_result,
    AccessReply: access_reply,
    ErrorReply: error_reply,
}


def test_every_message_type_has_a_strategy() -> None:
    """A message added to the protocol without a round-trip strategy fails here."""
    assert set(typing.get_args(ClientMessage)) == set(CLIENT_STRATEGIES)
    assert set(typing.get_args(BrokerMessage)) == set(BROKER_STRATEGIES)


# ------------------------------------------------------------------ round trips


class ChunkedStream:
    """A receive stream that hands out ``data`` in the given chunk sizes and
    records every receive_some call (how many bytes were asked for and given)."""

    def __init__(self, data: bytes, sizes: list[int] | None = None) -> None:
        self.data = data
        self.pos = 0
        self.sizes = list(sizes or [])
        self.calls: list[tuple[int | None, int]] = []

    @property
    def delivered(self) -> int:
        return self.pos

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        n = self.sizes.pop(0) if self.sizes else len(self.data) - self.pos
        if max_bytes is not None:
            n = min(n, max_bytes)
        chunk = self.data[self.pos : self.pos + max(n, 1)] if self.pos < len(self.data) else b""
        self.pos += len(chunk)
        self.calls.append((max_bytes, len(chunk)))
        return chunk


def _roundtrip(message: object, decode: typing.Callable[[bytes], object], limit: int) -> None:
    frame = encode_frame(message)
    length = frame_length(frame[:4], limit)
    assert length == len(frame) - 4
    assert decode(frame[4:]) == message


@given(st.one_of(*CLIENT_STRATEGIES.values()))
def test_client_messages_round_trip(message: object) -> None:
    _roundtrip(message, decode_client_message, limits.MAX_REQUEST_FRAME)


@given(st.one_of(*BROKER_STRATEGIES.values()))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_broker_messages_round_trip(message: object) -> None:
    _roundtrip(message, decode_broker_message, limits.reply_frame_limit(limits.MAX_OUTPUT_CAP))


@given(
    st.lists(st.one_of(*CLIENT_STRATEGIES.values()), min_size=1, max_size=5),
    st.lists(st.integers(1, 50), max_size=200),
)
def test_frame_reader_reassembles_any_chunking(messages: list[object], sizes: list[int]) -> None:
    data = b"".join(encode_frame(m) for m in messages)
    stream = ChunkedStream(data, sizes)

    async def read_all() -> list[object]:
        reader = FrameReader(stream)
        return [decode_client_message(await reader.read_frame(limits.MAX_REQUEST_FRAME)) for _ in messages]

    assert trio.run(read_all) == messages


# ------------------------------------------------------------------ garbage


def _decodes_or_protocol_error(body: bytes, decode: typing.Callable[[bytes], object], types: tuple) -> None:
    try:
        result = decode(body)
    except ProtocolError:
        return
    # Whatever decodes must be a valid, typed message (and re-encode to itself).
    assert isinstance(result, types)
    assert decode(encode_frame(result)[4:]) == result


@given(st.binary(max_size=512))
@settings(max_examples=500)
def test_random_bytes_only_raise_protocol_error(body: bytes) -> None:
    _decodes_or_protocol_error(body, decode_client_message, typing.get_args(ClientMessage))
    _decodes_or_protocol_error(body, decode_broker_message, typing.get_args(BrokerMessage))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
TAGS = ["hello", "cpu_profile", "access_query", "tool_features", "broker_hello", "result", "error", "x", ""]
FIELDS = ["protocol_version", "duration_s", "frequency_hz", "pid", "include_kernel", "uid", "argv", "type"]


@given(
    st.sampled_from(TAGS),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), msgpack_values, max_size=6),
)
@settings(max_examples=500)
def test_tagged_maps_of_random_values_only_raise_protocol_error(tag: str, fields: dict) -> None:
    body = msgspec.msgpack.encode({"type": tag, **fields})
    _decodes_or_protocol_error(body, decode_client_message, typing.get_args(ClientMessage))


HOSTILE_VALUES = [0, -1, 2**31, 2**32, 4_194_305, 2**64 - 1, -(2**63), 61, 1000, 0.0, float("nan"), float("inf"),
                  -float("inf"), "1", "1; rm -rf /", "}", "$(id)", "../../etc/passwd", "a\x00b", b"\x00", [], {}, None, True]


def _legal(field: str, value: object) -> bool:
    """The protocol's own ranges, written out independently of messages.py."""
    if field == "include_kernel":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if field == "pid":
        return value is None or isinstance(value, int) and limits.PID_MIN <= value <= limits.PID_MAX
    if field == "frequency_hz":
        return isinstance(value, int) and 1 <= value <= 999
    if field == "duration_s":
        return isinstance(value, (int, float)) and 1.0 <= value <= 60.0
    return False


@pytest.mark.parametrize("field", ["pid", "duration_s", "frequency_hz", "include_kernel"])
@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=repr)
def test_hostile_cpu_profile_values_are_refused(field: str, value: object) -> None:
    good = {"type": "cpu_profile", "duration_s": 1.0, "frequency_hz": 99, "pid": 1, "include_kernel": True}
    body = msgspec.msgpack.encode({**good, field: value})
    if not _legal(field, value):
        with pytest.raises(ProtocolError):
            decode_client_message(body)
        return
    msg = decode_client_message(body)
    assert isinstance(msg, CpuProfile) and getattr(msg, field) == value


def test_identity_fields_are_refused() -> None:
    """A message cannot carry a uid or pid of its own choosing."""
    for body in (
        {"type": "hello", "protocol_version": 1, "uid": 0},
        {"type": "access_query", "uid": 0},
        {"type": "tool_features", "pid": 1},
        {"type": "cpu_profile", "duration_s": 1.0, "frequency_hz": 99, "uid": 0},
    ):
        with pytest.raises(ProtocolError):
            decode_client_message(msgspec.msgpack.encode(body))


# ------------------------------------------------------------------ limits before the body


@pytest.mark.parametrize("length", [limits.MAX_REQUEST_FRAME + 1, 0xFFFFFFFF, 2**31])
def test_over_limit_header_is_refused_before_the_body_is_read(length: int) -> None:
    with pytest.raises(FrameTooLarge):
        frame_length(length.to_bytes(4, "big"), limits.MAX_REQUEST_FRAME)
    # Through the reader: the header arrives alone, an endless body would follow.
    stream = ChunkedStream(length.to_bytes(4, "big") + b"\xaa" * 200_000, sizes=[4, 65536, 65536, 65536])

    async def read() -> None:
        await FrameReader(stream).read_frame(limits.MAX_REQUEST_FRAME)

    with pytest.raises(FrameTooLarge):
        trio.run(read)
    assert stream.delivered == 4, f"the reader consumed {stream.delivered} bytes, calls {stream.calls}"
    assert len(stream.calls) == 1


def test_frame_at_the_limit_is_read() -> None:
    body = b"\x00" * limits.MAX_REQUEST_FRAME
    stream = ChunkedStream(len(body).to_bytes(4, "big") + body, sizes=[4] + [1000] * 100)

    async def read() -> bytes:
        return await FrameReader(stream).read_frame(limits.MAX_REQUEST_FRAME)

    assert trio.run(read) == body


@given(st.binary(max_size=3))
def test_short_header_is_a_protocol_error(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        frame_length(header, limits.MAX_REQUEST_FRAME)


@pytest.mark.parametrize(
    "body",
    [
        b"\x82\xa4type\xa5hell\xff\xb0protocol_version\x02",  # the tag
        b"\x82\xa4type\xa5hello\xa4\xff\xfe\xfd\xfc\x01",  # a key
        b"\x82\xa4type\xa8fd_table\xa3pid\xa2\xc3\x28",  # a value of the wrong type, not UTF-8 either
    ],
)
def test_strings_that_are_not_utf8_are_protocol_errors(body: bytes) -> None:
    """msgspec raises UnicodeDecodeError (not DecodeError) for them: the broker answered INTERNAL."""
    with pytest.raises(ProtocolError):
        decode_client_message(body)
    with pytest.raises(ProtocolError):
        decode_broker_message(body)
