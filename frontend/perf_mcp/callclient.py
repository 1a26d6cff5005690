"""`perf-mcp call TOOL [key=value ...] [--json]`: a small MCP client for people and scripts.

It spawns `perf-mcp` (this same installation, `python -m perf_mcp`), calls one
tool through the MCP SDK client over stdio, and prints the text summary (or,
with --json, the structuredContent). Exit status: 0 success, 1 the tool
returned an error, 2 usage or connection failure. Its own PERF_MCP_*
environment settings are passed on to the server it spawns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anyio


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """['duration_s=5', 'pid=12', 'include_kernel=false', 'output_format=collapsed'] -> typed dict.
    A value is read as JSON when it parses (5 -> int, true -> bool), else kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def server_env(overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("PERF_MCP_")}
    env.update(overrides)
    return env


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perf-mcp call", description="Call one perf-mcp tool and print the result.")
    p.add_argument("tool")
    p.add_argument("assignments", nargs="*", metavar="key=value")
    p.add_argument("--json", action="store_true", help="print the structuredContent as JSON")
    p.add_argument("--broker-socket", metavar="PATH", help="passed to the server (PERF_MCP_BROKER_SOCKET)")
    p.add_argument("--user", help="passed to the server when it runs as root")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result (default 300)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


async def _call(ns: argparse.Namespace, arguments: dict[str, Any]) -> int:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    # The server through the launcher that started this command (isolated and checked
    # before any import when root: packaging/install.py venv-launcher), else `python -m`.
    launcher = sys.argv[0] if os.path.basename(sys.argv[0]) == "perf-mcp" and sys.flags.isolated else None
    command, server_args = (launcher, []) if launcher else (sys.executable, ["-m", "perf_mcp"])
    if ns.user:
        server_args += ["--user", ns.user]
    overrides = {"PERF_MCP_BROKER_SOCKET": ns.broker_socket} if ns.broker_socket else {}
    params = StdioServerParameters(command=command, args=server_args, env=server_env(overrides))

    async def progress(value: float, total: float | None, message: str | None) -> None:
        if not ns.quiet:
            of = f"/{total:g}" if total else ""
            print(f"  ... {value:g}{of} {message or ''}", file=sys.stderr, flush=True)

    async with Client(params, read_timeout_seconds=ns.timeout) as client:
        result = await client.call_tool(ns.tool, arguments, progress_callback=progress)
    if ns.json:
        print(json.dumps(result.structured_content, indent=2, sort_keys=False))
    else:
        texts = [b.text for b in result.content if b.type == "text"]
        for text in texts:
            print(text)
        for block in result.content:
            if block.type == "resource_link" and not any(block.uri in t for t in texts):
                print(f"resource: {block.uri} ({block.mime_type}, {block.size} bytes)")
    return 1 if result.is_error else 0


def call_main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    try:
        arguments = parse_assignments(ns.assignments)
    except ValueError as exc:
        print(f"perf-mcp call: {exc}", file=sys.stderr)
        return 2
    try:
        return anyio.run(_call, ns, arguments, backend="trio")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # connection failures, server crash at start-up
        print(f"perf-mcp call: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
