"""Network namespaces for the perf_net_health tests: a veth pair between two
namespaces this module creates, nftables loss in the receiver's namespace,
iperf3 across, nstat in the sender's namespace, and the frontend run inside a
namespace through a real MCP client.

Nothing touches the host's interfaces: the veth pair is created inside the
sender namespace with its peer moved straight into the receiver namespace,
the addresses (10.213.0.1/30 and .2) exist only there, and deleting the two
namespaces removes the pair and the nft table with them. iperf3 processes are
stopped by the PID this module started.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

import helpers
from helpers import envelope, ok_data  # noqa: F401  (re-exported)

IP = "/usr/sbin/ip"
SENDER_IP = "10.213.0.1"
RECEIVER_IP = "10.213.0.2"
PREFIX = 30
SENDER_DEV = "pmcp-s"
RECEIVER_DEV = "pmcp-r"
IPERF_PORT = 5201
NFT_TABLE = "pmcp_loss"


def need(program: str) -> str:
    for d in ("/usr/bin", "/usr/sbin", "/bin", "/sbin"):
        if os.access(f"{d}/{program}", os.X_OK):
            return f"{d}/{program}"
    pytest.fail(f"{program} is not installed (TESTING.md: apt-get install iproute2 iperf3 nftables)")


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30, **kwargs)


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return [IP, "netns", "exec", ns, *argv]


@dataclass
class NsPair:
    sender: str
    receiver: str


@contextmanager
def ns_pair() -> Iterator[NsPair]:
    """Two namespaces joined by a veth pair, lo up in both; deleted afterwards."""
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    pair = NsPair(sender=f"pmcp-snd-{tag}", receiver=f"pmcp-rcv-{tag}")
    created: list[str] = []
    try:
        for ns in (pair.sender, pair.receiver):
            run([IP, "netns", "add", ns])
            created.append(ns)
        run([IP, "-n", pair.sender, "link", "add", SENDER_DEV, "type", "veth",
             "peer", "name", RECEIVER_DEV, "netns", pair.receiver])
        run([IP, "-n", pair.sender, "addr", "add", f"{SENDER_IP}/{PREFIX}", "dev", SENDER_DEV])
        run([IP, "-n", pair.receiver, "addr", "add", f"{RECEIVER_IP}/{PREFIX}", "dev", RECEIVER_DEV])
        for ns, dev in ((pair.sender, SENDER_DEV), (pair.receiver, RECEIVER_DEV)):
            run([IP, "-n", ns, "link", "set", "lo", "up"])
            run([IP, "-n", ns, "link", "set", dev, "up"])
        yield pair
    finally:
        for ns in created:
            subprocess.run([IP, "netns", "del", ns], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


def loss_ruleset(percent: int) -> str:
    """Drop percent% of the sender's segments to the iperf3 port, at prerouting
    priority -300 (before conntrack) in the receiver: the sender's TCP sees
    the loss and retransmits (dropping on the sender's output would not)."""
    return (
        f"table inet {NFT_TABLE} {{\n"
        "  chain prerouting {\n"
        "    type filter hook prerouting priority -300; policy accept;\n"
        f"    ip saddr {SENDER_IP} tcp dport {IPERF_PORT} numgen random mod 100 < {percent} drop\n"
        "  }\n"
        "}\n"
    )


def add_loss(pair: NsPair, percent: int) -> None:
    run(in_ns(pair.receiver, [need("nft"), "-f", "-"]), input=loss_ruleset(percent))
    listed = run(in_ns(pair.receiver, [need("nft"), "list", "table", "inet", NFT_TABLE])).stdout
    assert "numgen random mod 100" in listed, listed


@contextmanager
def iperf3(pair: NsPair, seconds: int, bitrate: str = "1G") -> Iterator[subprocess.Popen[bytes]]:
    """iperf3 server in the receiver, client in the sender for `seconds` at
    most `bitrate` (so that the lossless control does not fill the veth
    backlog and count drops of its own); both stopped by PID afterwards.
    Yields the client."""
    iperf = need("iperf3")
    server = subprocess.Popen(in_ns(pair.receiver, [iperf, "-s", "-1", "-B", RECEIVER_IP, "-p", str(IPERF_PORT)]),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    client: subprocess.Popen[bytes] | None = None
    try:
        listening = helpers.wait_until(lambda: _listening(pair.receiver), 10.0)
        assert listening, "iperf3 server did not listen"
        client = subprocess.Popen(
            in_ns(pair.sender, [iperf, "-c", RECEIVER_IP, "-p", str(IPERF_PORT), "-t", str(seconds), "-b", bitrate]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        yield client
    finally:
        for proc in (client, server):
            if proc is not None:
                helpers.stop_process(proc)


def _listening(ns: str) -> bool:
    out = subprocess.run(in_ns(ns, ["ss", "-Htln", f"sport = :{IPERF_PORT}"]), capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=10).stdout
    return bool(out.strip())


def nstat_absolute(ns: str, history: Path) -> dict[str, int]:
    """Every kernel counter of the namespace as nstat prints it (absolute, -a;
    the history file is not updated, -s)."""
    out = run(in_ns(ns, [need("nstat"), "-a", "-s", "-z"]), env={"NSTAT_HISTORY": str(history),
                                                               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout
    counters: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and parts[1].isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


def frontend_in_ns_argv(ns: str, user: str | helpers.UnixUser, socket_path: str | os.PathLike[str]) -> list[str]:
    return in_ns(ns, helpers.frontend_argv(user, socket_path))


@asynccontextmanager
async def mcp_client_in_ns(ns: str, user: str | helpers.UnixUser, socket_path: str | os.PathLike[str],
                           env: Mapping[str, str] | None = None) -> AsyncIterator[Any]:
    """helpers.mcp_client, with the frontend started inside network namespace
    `ns` (`ip netns exec NS setpriv ... perf-mcp`)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    argv = frontend_in_ns_argv(ns, user, socket_path)
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=helpers.user_env(user, env), cwd="/")
    log: IO[str] = tempfile.TemporaryFile("w+")
    try:
        async with Client(stdio_client(params, errlog=log)) as client:
            yield client
    finally:
        log.seek(0)
        text = log.read()
        log.close()
        if text:
            sys.stderr.write(f"--- perf-mcp stderr (netns {ns}) ---\n{text}")




def counter(data: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in data["counters"] if c["name"] == name]
    assert found, f"{name} not in {[c['name'] for c in data['counters']]}"
    return found[0]
