"""perf_net_health: drops, errors, retransmits, listen overflows, softnet drops, worst sockets.

Two samples SAMPLE_INTERVAL_S apart of: rtnetlink links (IFLA_STATS64),
/proc/net/snmp, /proc/net/netstat, /proc/net/softnet_stat and (unless
include_tcp_details is false) inet_diag TCP sockets with tcp_info. Everything
is read in this process's network namespace. Collection is net.collect (in
worker threads: pyroute2 blocks), analysis net.analysis.

The interface name is only ever compared with the names rtnetlink returns; it
never reaches a path or an argv.
"""

from __future__ import annotations

import os
from typing import Annotated

import msgspec
import trio
from msgspec import Meta

from ..contract import Finding
from ..errors import ErrorCode, ToolError
from ..net import analysis
from ..net.collect import NetSample, SocketOwner, read_addresses, socket_owners, take_sample
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..use.config import load_thresholds

NAME = "perf_net_health"
SAMPLE_INTERVAL_S = 1.0
IFNAMSIZ = 16  # names are at most 15 bytes


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interface: Annotated[str, Meta(min_length=1, max_length=IFNAMSIZ - 1, description=(
        "Only this interface (as in `ip link`); TCP counters stay namespace-wide, sockets are "
        "those bound to its addresses. Omit for all interfaces."))] | None = None
    include_tcp_details: Annotated[bool, Meta(description=(
        "Dump TCP sockets with tcp_info (inet_diag) for the worst sockets by retransmits and RTT."))] = True


class NetHealthData(msgspec.Struct, kw_only=True):
    method: str
    namespace: str  # the network namespace read, as /proc/self/ns/net names it
    interval_s: float
    interface: str | None
    interfaces: list[analysis.InterfaceHealth]
    tcp: analysis.TcpHealth | None
    softnet: analysis.SoftnetHealth | None
    counters: list[analysis.CounterDelta]
    sockets: analysis.SocketsHealth | None
    findings: list[Finding]


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return "unknown"


def _check_interface(sample: NetSample, name: str) -> int:
    for link in sample.links:
        if link.name == name:
            return link.index
    known = ", ".join(link.name for link in sample.links) or "none"
    raise ToolError(ErrorCode.DEVICE_NOT_FOUND, f"no network interface named {name!r} in this namespace",
                    suggestion=f"Pass one of: {known} (or omit interface for all of them).")


async def _sample(include_sockets: bool) -> NetSample:
    try:
        return await trio.to_thread.run_sync(take_sample, include_sockets)
    except OSError as exc:
        raise ToolError(ErrorCode.EXECUTION_FAILED, f"reading the network counters failed: {exc}") from None


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    thresholds, warnings = load_thresholds()
    first = await _sample(p.include_tcp_details)
    addresses: list[str] | None = None
    if p.interface is not None:
        index = _check_interface(first, p.interface)
        addresses = await trio.to_thread.run_sync(read_addresses, index)
    await ctx.report_progress(0.0, SAMPLE_INTERVAL_S, "first sample taken")
    await trio.sleep(SAMPLE_INTERVAL_S)
    second = await _sample(p.include_tcp_details)
    owners: dict[int, SocketOwner] = {}
    complete = True
    if first.sockets is not None and second.sockets is not None:
        inodes = analysis.sockets_to_attribute(first.sockets, second.sockets)
        owners, complete = await trio.to_thread.run_sync(socket_owners, inodes)
    health = analysis.analyse(first, second, thresholds, interface=p.interface, addresses=addresses,
                              owners=owners, owners_complete=complete)
    await ctx.report_progress(SAMPLE_INTERVAL_S, SAMPLE_INTERVAL_S, "done")
    warnings += sorted(set(first.warnings + second.warnings)) + health.warnings
    if p.interface is not None:
        warnings.append("TCP, UDP and softnet counters are namespace-wide; only the interface rates and the "
                        "sockets are limited to " + p.interface)
    method = ("rtnetlink IFLA_STATS64 (pyroute2) + /proc/net/snmp, netstat, softnet_stat"
              + (" + inet_diag tcp_info" if p.include_tcp_details else "")
              + f"; two samples {health.interval_s:.2f} s apart")
    data = NetHealthData(
        method=method, namespace=_namespace(), interval_s=health.interval_s, interface=p.interface,
        interfaces=health.interfaces, tcp=health.tcp, softnet=health.softnet, counters=health.counters,
        sockets=health.sockets, findings=health.findings,
    )
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def summarise(d: NetHealthData) -> str:
    worst = [f for f in d.findings if f.severity != "info"]
    head = f"Network health ({d.namespace}, {d.interval_s:.1f} s): "
    head += f"{len(worst)} problem(s)" if worst else "no drops, errors or retransmits above thresholds"
    lines = [head]
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    if d.tcp is not None:
        lines.append(f"TCP: {d.tcp.retrans_segs} of {d.tcp.out_segs} segments retransmitted "
                     f"({_pct(d.tcp.retransmit_pct)}); since boot {_pct(d.tcp.since_boot_retransmit_pct)}; "
                     f"{d.tcp.curr_estab} established")
    for i in d.interfaces:
        lines.append(f"{i.name} ({i.operstate}): rx {(i.rx_bytes_s or 0) / 1e6:.2f} MB/s, "
                     f"tx {(i.tx_bytes_s or 0) / 1e6:.2f} MB/s, drops {i.drops_s or 0:.1f}/s, "
                     f"errors {i.errors_s or 0:.1f}/s")
    if d.sockets is not None and d.sockets.worst_by_retransmits:
        lines.append("Worst sockets by retransmits:")
        lines += [f"  {s.local} -> {s.remote} {s.state}: {s.retrans_in_window} in window, "
                  f"{s.total_retrans} total, rtt {s.rtt_ms} ms" + (f", pid {s.pid} {s.comm}" if s.pid else "")
                  for s in d.sockets.worst_by_retransmits]
    lines.append(f"Method: {d.method}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="Network health (drops, errors, retransmits)",
    description=(
        "Sample the network counters twice, one second apart, in this server's network namespace: per "
        "interface rates, drops and errors (rtnetlink IFLA_STATS64); TCP retransmit % (RetransSegs / OutSegs), "
        "listen-queue overflows, RTO timeouts (/proc/net/snmp and netstat); softnet backlog drops and time "
        "squeezes; and the worst TCP sockets by retransmits and by RTT from tcp_info (inet_diag), with the "
        "owning process when this user may see it. Findings use the USE thresholds (drops/s > 0 warning, "
        "> 100 critical; retransmits > 1% warning, > 5% critical). No privileges needed."
    ),
    params=Params,
    data=NetHealthData,
    handler=run,
)
