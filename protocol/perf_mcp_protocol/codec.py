"""Frame codec: a 4-byte big-endian unsigned length, then a msgpack body.

Invariants:
- The length is checked against the reader's limit before a single byte of the
  body is read or buffered, so a peer cannot make us allocate more than the limit.
- A frame over its limit, a body that does not decode (nested too deep included),
  or a message of a type the reader does not expect raises ProtocolError; the
  caller closes that connection.
- The reader never buffers more than one frame plus one receive chunk.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol, TypeVar

import msgspec

from . import limits
from .messages import BrokerMessage, ClientMessage

_HEADER = struct.Struct(">I")
_RECV_CHUNK = 64 * 1024

T = TypeVar("T")


class ProtocolError(Exception):
    """The peer broke the wire contract; close the connection."""


class FrameTooLarge(ProtocolError):
    pass


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (cleanly between frames or mid-frame)."""


class ReceiveStream(Protocol):
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


_encoder = msgspec.msgpack.Encoder()
_client_decoder = msgspec.msgpack.Decoder(ClientMessage)
_broker_decoder = msgspec.msgpack.Decoder(BrokerMessage)


def encode_frame(message: Any) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def frame_length(header: bytes, limit: int) -> int:
    """Length from a 4-byte header, refused when over limit."""
    if len(header) != limits.FRAME_HEADER_BYTES:
        raise ProtocolError("short frame header")
    (length,) = _HEADER.unpack(header)
    if length > limit:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {limit}")
    return length


def decode_client_message(body: bytes) -> Any:
    try:
        return _client_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ProtocolError(f"bad request: {exc}") from None
    except UnicodeDecodeError:  # a msgpack str that is not UTF-8 (msgspec raises it as is)
        raise ProtocolError("bad request: a string is not UTF-8") from None
    except RecursionError:  # msgspec skipping a deeply nested unknown value
        raise ProtocolError("bad request: nested too deep") from None


def decode_broker_message(body: bytes) -> Any:
    try:
        return _broker_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad reply: {exc}") from None
    except UnicodeDecodeError:
        raise ProtocolError("bad reply: a string is not UTF-8") from None
    except RecursionError:
        raise ProtocolError("bad reply: nested too deep") from None


class FrameReader:
    """Reads whole frames from a trio-style stream (anything with receive_some)."""

    def __init__(self, stream: ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = await self._stream.receive_some(max(_RECV_CHUNK, 0))
            if not chunk:
                if self._buf:
                    raise ConnectionClosed("connection closed in the middle of a frame")
                raise ConnectionClosed("connection closed")
            self._buf += chunk

    async def read_frame(self, limit: int) -> bytes:
        await self._fill(limits.FRAME_HEADER_BYTES)
        length = frame_length(bytes(self._buf[: limits.FRAME_HEADER_BYTES]), limit)
        del self._buf[: limits.FRAME_HEADER_BYTES]
        await self._fill(length)
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return body
