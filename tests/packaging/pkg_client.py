"""A raw broker client for the packaging tests, run as a test user through setpriv.

    python pkg_client.py SOCKET access|profile|features

Sends Hello and one request, prints the final message as one JSON line (job stdout
replaced by its length and a count of its kernel frames, stderr by its first 300 bytes) and exits 0; exits 3 when
the broker closed the connection without a final message.
"""

from __future__ import annotations

import json
import sys

import msgspec
import trio

from perf_mcp_protocol import (
    AccessQuery,
    CpuProfile,
    FrameReader,
    Hello,
    ToolFeatures,
    decode_broker_message,
    encode_frame,
    limits,
)

REQUESTS = {
    "access": AccessQuery(),
    "profile": CpuProfile(duration_s=1.0, frequency_hz=99),
    "features": ToolFeatures(),
}
FINAL = ("result", "access", "error")


def summary(message: object) -> dict:
    data = msgspec.to_builtins(message)
    for step, raw in zip(data.get("steps", []), getattr(message, "steps", [])):
        step["stdout"] = len(raw.stdout)
        step["stderr"] = raw.stderr[:300].decode(errors="replace")
        kernel = [line for line in raw.stdout.splitlines() if b"[kernel.kallsyms]" in line]
        step["kernel_frames"] = len(kernel)
        step["kernel_frames_named"] = sum(b"[unknown]" not in line for line in kernel)
    return data


async def main(path: str, kind: str) -> int:
    stream = await trio.open_unix_socket(path)
    reader = FrameReader(stream)
    async with stream:
        await stream.send_all(encode_frame(Hello(protocol_version=limits.PROTOCOL_VERSION)))
        hello = decode_broker_message(await reader.read_frame(limits.MAX_SMALL_REPLY_FRAME))
        await stream.send_all(encode_frame(REQUESTS[kind]))
        limit = limits.reply_frame_limit(hello.output_cap)
        with trio.fail_after(120):
            while True:
                message = decode_broker_message(await reader.read_frame(limit))
                if type(message).__struct_config__.tag in FINAL:
                    print(json.dumps(summary(message)), flush=True)
                    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main, sys.argv[1], sys.argv[2]))
