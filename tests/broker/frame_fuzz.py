"""Generated frames for fuzzing the broker's frame decoder and its dispatch.

Pure functions of a random.Random: the same seed gives the same frames, so a
failure is reproduced by its seed and index. Used by test_broker_fuzz.py,
fuzz_client.py (run as a test user) and bench/bench_broker_fuzz.py.

A "connection" is a list of frames (raw bytes) sent on one connection, plus
whether to half-close after them. Kinds:
- valid      hello + a valid request of any type (trace requests included): sent
             as a user without the grant, they get PERMISSION_DENIED, never a job
- mutated    a valid frame with bytes flipped, inserted or deleted
- truncated  a valid frame cut short, then EOF
- oversized  a length header over the limit (with or without a body)
- nested     deeply nested msgpack (as a field value, an unknown field, the body)
- wrong_type a valid request with one field replaced by a value of another type
- garbage    random bytes, framed or not
- sequence   wrong message order (request first, two hellos, broker messages)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import msgspec

from perf_mcp_protocol import (
    REQUEST_CLASS,
    ClientMessage,
    JobClass,
    decode_client_message,
    limits,
)

HELLO_OBJ = {"type": "hello", "protocol_version": limits.PROTOCOL_VERSION}
BACKENDS = ["libbpf", "bpftrace", "perf"]
KINDS = ("valid", "mutated", "truncated", "oversized", "nested", "wrong_type", "garbage", "sequence")
# How often each kind is drawn (valid requests cost a polkit call on the broker side).
WEIGHTS = (10, 25, 10, 5, 5, 25, 12, 8)


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _enc(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


HELLO = _frame(_enc(HELLO_OBJ))


def _opt_pid(rng: random.Random) -> int | None:
    return None if rng.random() < 0.5 else rng.randint(limits.PID_MIN, limits.PID_MAX)


def valid_request(rng: random.Random, tag: str | None = None) -> dict[str, Any]:
    """A request that decodes, of the given or a random type."""
    tags = ["cpu_profile", "offcpu_profile", "runq_latency", "syscall_count", "exec_trace", "bio_latency",
            "io_layers", "file_trace", "vfs_latency", "tcp_trace", "dns_latency", "access_query",
            "tool_features", "fd_table", "process_io"]
    tag = tag or rng.choice(tags)
    b = rng.choice(BACKENDS)
    short = rng.randint(*limits.TRACE_SHORT_DURATION_S)
    long = rng.randint(*limits.TRACE_LONG_DURATION_S)
    if tag == "cpu_profile":
        return {"type": tag, "duration_s": rng.uniform(*limits.CPU_PROFILE_DURATION_S),
                "frequency_hz": rng.randint(*limits.CPU_PROFILE_FREQUENCY_HZ), "pid": _opt_pid(rng),
                "include_kernel": rng.random() < 0.5, "backend": rng.choice(["perf", "bpftrace"])}
    if tag == "offcpu_profile":
        return {"type": tag, "backend": b, "duration_s": rng.randint(*limits.OFFCPU_DURATION_S),
                "min_block_us": rng.randint(*limits.MIN_BLOCK_US), "pid": _opt_pid(rng)}
    if tag == "runq_latency":
        return {"type": tag, "backend": b, "duration_s": short, "pid": _opt_pid(rng),
                "per_pid": rng.random() < 0.5, "per_cpu": rng.random() < 0.5}
    if tag == "syscall_count":
        return {"type": tag, "backend": b, "duration_s": long, "pid": _opt_pid(rng),
                "top_n": rng.randint(*limits.SYSCALL_TOP_N), "latency": rng.random() < 0.5,
                "per_process": rng.random() < 0.5, "errors": rng.random() < 0.5}
    if tag == "exec_trace":
        return {"type": tag, "backend": b, "duration_s": short, "include_failed": rng.random() < 0.5,
                "max_args": rng.randint(*limits.EXEC_MAX_ARGS),
                "uid": None if rng.random() < 0.5 else rng.randint(0, limits.UID_MAX)}
    if tag == "bio_latency":
        return {"type": tag, "backend": b, "duration_s": short, "per_device": rng.random() < 0.5,
                "queued": rng.random() < 0.5, "milliseconds": rng.random() < 0.5,
                "linear_bucket_ms": None if rng.random() < 0.5 else rng.randint(*limits.LINEAR_BUCKET_MS)}
    if tag == "io_layers":
        return {"type": tag, "backend": b, "duration_s": short, "per_process": rng.random() < 0.5}
    if tag == "file_trace":
        return {"type": tag, "backend": b, "mode": rng.choice(["opens", "slow_ops", "file_lifecycle", "all"]),
                "duration_s": short, "pid": _opt_pid(rng), "min_latency_ms": rng.randint(*limits.MIN_LATENCY_MS)}
    if tag == "vfs_latency":
        return {"type": tag, "backend": b, "duration_s": short, "pid": _opt_pid(rng),
                "min_latency_ms": rng.randint(*limits.MIN_LATENCY_MS)}
    if tag == "tcp_trace":
        port = lambda: None if rng.random() < 0.5 else rng.randint(1, 65535)  # noqa: E731
        return {"type": tag, "backend": b, "mode": rng.choice(["lifecycle", "connections"]), "duration_s": long,
                "pid": _opt_pid(rng), "local_port": port(), "remote_port": port()}
    if tag == "dns_latency":
        return {"type": tag, "backend": b, "duration_s": short, "pid": _opt_pid(rng)}
    if tag == "fd_table":
        return {"type": tag, "pid": rng.randint(limits.PID_MIN, limits.PID_MAX)}
    return {"type": tag}  # access_query, tool_features


WRONG_VALUES: list[Any] = [
    0, -1, 2**31, 2**32, 4_194_305, 2**64 - 1, -(2**63), 1.5, float("nan"), float("inf"), -float("inf"),
    "1", "1; reboot", "$(id)", "../../etc/passwd", "a\x00b", "}", b"\x00\xff", [], [1], {}, {"a": 1}, None, True,
    False, "perf", "LIBBPF", "x" * 300,
]


def wrong_type(rng: random.Random) -> dict[str, Any]:
    req = valid_request(rng)
    keys = [k for k in req if k != "type"]
    choice = rng.random()
    if keys and choice < 0.7:
        req[rng.choice(keys)] = rng.choice(WRONG_VALUES)
    elif choice < 0.85:  # an extra field (identity fields among them)
        req[rng.choice(["uid", "argv", "path", "comm", "script", "pidfd", "gid"])] = rng.choice(WRONG_VALUES)
    elif keys:  # a required or optional field missing
        del req[rng.choice(keys)]
    else:
        req["type"] = rng.choice(["shell", "run", "cpu_profile; id", "", "FD_TABLE", "broker_hello", "result"])
    return req


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if not buf:
            buf.append(rng.randrange(256))
        elif op < 0.5:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op < 0.75:
            buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
        else:
            del buf[rng.randrange(len(buf))]
    return bytes(buf)


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice([100, 1000, 10_000, 60_000])
    opener = rng.choice([b"\x91", b"\x81\xa1a"])  # fixarray of 1, or fixmap {"a": ...}
    inner = opener * depth + b"\xc0"
    where = rng.random()
    if where < 0.33:  # as the value of a known field
        return b"\x82" + _enc("type") + _enc("fd_table") + _enc("pid") + inner
    if where < 0.66:  # as the value of an unknown field
        return b"\x82" + _enc("type") + _enc("access_query") + _enc("zz") + inner
    return inner  # the whole body


def _is_heavy_job(body: bytes) -> bool:
    """Whether the body decodes to a request that would start a program (profile or trace)."""
    try:
        msg = decode_client_message(body)
    except Exception:  # ProtocolError (or any decoder bug: the broker run reports those)
        return False
    return REQUEST_CLASS.get(type(msg)) in (JobClass.PROFILE, JobClass.TRACE)


@dataclass
class Conn:
    kind: str
    frames: list[bytes]
    eof: bool = False  # half-close after sending (incomplete frames)

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def make_conn(rng: random.Random, no_jobs: bool = False) -> Conn:
    """One connection's frames. no_jobs: never a frame that decodes to a profile or trace
    request (for a fuzzer running as a user who holds the grants)."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    if kind == "valid":
        req = valid_request(rng)
        if no_jobs and REQUEST_CLASS.get(_type_of(req)) in (JobClass.PROFILE, JobClass.TRACE):
            req = valid_request(rng, rng.choice(["fd_table", "tool_features", "access_query"]))
        return Conn(kind, [HELLO, _frame(_enc(req))])
    if kind == "mutated":
        body = _enc(valid_request(rng) if rng.random() < 0.8 else HELLO_OBJ)
        frame = _frame(body)
        if rng.random() < 0.7:  # mutate the body only: the header stays right
            body = _mutate(rng, body)
            frame = _frame(body)
        else:
            frame = _mutate(rng, frame)
            body = frame[4:]
        if no_jobs and _is_heavy_job(body):
            body = _enc({"type": "tool_features"})
            frame = _frame(body)
        return Conn(kind, [HELLO, frame] if rng.random() < 0.8 else [frame], eof=True)
    if kind == "truncated":
        frame = _frame(_enc(valid_request(rng)))
        cut = frame[: rng.randrange(0, len(frame))]
        return Conn(kind, [HELLO, cut] if rng.random() < 0.7 else [HELLO[: rng.randrange(len(HELLO))]], eof=True)
    if kind == "oversized":
        length = rng.choice([limits.MAX_REQUEST_FRAME + 1, limits.MAX_REQUEST_FRAME + rng.randint(2, 10**6),
                             2**31, 2**32 - 1])
        tail = rng.randbytes(rng.choice([0, 100, 4096]))
        head = length.to_bytes(4, "big") + tail
        return Conn(kind, [HELLO, head] if rng.random() < 0.5 else [head], eof=True)
    if kind == "nested":
        return Conn(kind, [HELLO, _frame(_nested(rng))] if rng.random() < 0.7 else [_frame(_nested(rng))], eof=True)
    if kind == "wrong_type":
        body = _enc(wrong_type(rng))
        if no_jobs and _is_heavy_job(body):
            body = _enc({"type": "tool_features"})
        return Conn(kind, [HELLO, _frame(body)], eof=True)
    if kind == "garbage":
        raw = rng.randbytes(rng.randint(0, 400))
        if rng.random() < 0.5:
            return Conn(kind, [raw], eof=True)
        frames = [_frame(raw)]
        if no_jobs and _is_heavy_job(raw):
            frames = [_frame(b"\xc1")]
        return Conn(kind, ([HELLO] if rng.random() < 0.5 else []) + frames, eof=True)
    # sequence: wrong order of messages
    req = _frame(_enc(valid_request(rng, rng.choice(["fd_table", "tool_features", "access_query"]))))
    options = [
        [req],  # a request before hello
        [HELLO, HELLO],
        [_frame(_enc({"type": "broker_hello", "protocol_version": 2}))],
        [HELLO, _frame(_enc({"type": "result", "job_id": 1, "steps": [], "wall_s": 0.0}))],
        [HELLO, _frame(_enc({"type": "error", "code": "BUSY", "message": "x"}))],
        [_frame(_enc({"type": "hello", "protocol_version": rng.choice([0, 1, 3, 65535, 65536, -1])}))],
        [HELLO, _frame(b"")],
    ]
    return Conn(kind, rng.choice(options), eof=True)


def _type_of(req: dict[str, Any]) -> type | None:
    for t in REQUEST_CLASS:
        if t.__struct_config__.tag == req.get("type"):
            return t
    return None


def all_request_tags() -> set[str]:
    """Every request tag of the protocol (the fuzzer must cover them all)."""
    import typing

    return {t.__struct_config__.tag for t in typing.get_args(ClientMessage)} - {"hello"}


def decode_escapes(frames: list[bytes]) -> str | None:
    """The name of a non-ProtocolError exception that decoding one of these frames' bodies
    raises (a decoder bug), or None."""
    from perf_mcp_protocol import ProtocolError

    for frame in frames:
        try:
            decode_client_message(frame[4:])
        except ProtocolError:
            continue
        except Exception as exc:
            return type(exc).__name__
    return None


def traceback_kinds(log_text: str) -> "list[str]":
    """The exception named at the end of each traceback in the broker's log."""
    kinds, inside = [], False
    for line in log_text.splitlines():
        if line.startswith("Traceback"):
            inside = True
            continue
        if inside and line and not line.startswith((" ", "\t")):
            kinds.append(line.split(":", 1)[0])
            inside = False
    return kinds
