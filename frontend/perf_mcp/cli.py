"""The `perf-mcp` command.

    perf-mcp [--broker-socket PATH] [--user NAME] [--log-level LEVEL]   serve MCP on stdio
    perf-mcp call TOOL [key=value ...] [--json]                          call one tool, print the result
    perf-mcp --version

Serving never writes to stdout except MCP messages; logs go to stderr. Started
as root, the server separates privileges (perf_mcp.privsep) before serving:
a root broker child keeps the privileges and this process drops to --user.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .broker_client import SOCKET_ENV, BrokerClient, resolve_socket_path

log = logging.getLogger("perf_mcp")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="perf-mcp %(levelname)s %(name)s: %(message)s",
    )


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perf-mcp",
        description="MCP server for Linux performance diagnosis (stdio). "
        "Use `perf-mcp call TOOL key=value ...` to call one tool from a shell.",
    )
    p.add_argument("--broker-socket", metavar="PATH",
                   help=f"the root broker's socket (default: ${SOCKET_ENV} or /run/perf-mcp/broker.sock)")
    p.add_argument("--user", default="nobody",
                   help="when started as root: the user to serve as after separating privileges (default nobody)")
    p.add_argument("--log-level", default=os.environ.get("PERF_MCP_LOG_LEVEL", "warning"),
                   choices=["debug", "info", "warning", "error"], help="stderr log level (default warning)")
    p.add_argument("--version", action="version", version=f"perf-mcp {__version__}")
    return p


def serve(args: argparse.Namespace) -> int:
    socket_path = resolve_socket_path(args.broker_socket)
    if os.geteuid() == 0:
        try:
            from .privsep import separate
        except ImportError as exc:
            print(f"perf-mcp: refusing to serve as root: privilege separation is unavailable ({exc}).\n"
                  "Run perf-mcp as an ordinary user and start the broker as root: "
                  "sudo perf-mcp-broker --socket /run/perf-mcp/broker.sock", file=sys.stderr)
            return 2
        # Returns only in the unprivileged child; the root parent becomes its broker.
        connector = separate(user=args.user)
        if os.geteuid() == 0 or os.getuid() == 0:
            print("perf-mcp: privilege separation left this process as root; refusing to serve", file=sys.stderr)
            return 2
        broker = BrokerClient(connector=connector)
    else:
        broker = BrokerClient(socket_path)

    import anyio  # heavy imports after the root check

    from .server import make_app, serve_stdio

    app = make_app(broker)
    log.info("perf-mcp %s serving %d tools; broker %s", __version__, len(app.registry.tools), broker.socket_path)
    try:
        anyio.run(serve_stdio, app, backend="trio")
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "call":
        from .callclient import call_main

        return call_main(argv[1:])
    args = _serve_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
