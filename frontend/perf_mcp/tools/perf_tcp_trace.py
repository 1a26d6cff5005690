"""perf_tcp_trace: TCP sessions (who talked to whom, bytes each way, how long) or
new connections (connects with their handshake time, accepts with their time in
the accept queue) and retransmitted segments per socket.

Ladders (data.method says which rung ran, data.skipped why the others did not):
  lifecycle:   1. libbpf-tools tcplife (sock:inet_sock_set_state tracepoint;
                  bytes in KiB with 2 decimals, SYN and FIN counted: ~8 bytes);
               2. the broker's bpftrace script tcplife.bt on the same tracepoint,
                  bytes exact from struct tcp_sock read through BTF, plus
                  retransmitted segments and the smoothed RTT of each session.
  connections: 1. libbpf-tools tcpconnect (kprobes: active connects only, no
                  accepts or retransmits; skipped on kernels without kprobes);
               2. the broker's bpftrace script tcpconn.bt: inet_sock_set_state
                  (SYN_SENT -> ESTABLISHED = connect, with the handshake time;
                  SYN_RECV -> ESTABLISHED = passive open) + accept()'s exit
                  (the accepting process, time in the accept queue) +
                  tcp:tcp_retransmit_skb / tcp_retransmit_synack (segments, as
                  RetransSegs counts them).
Only integers reach the broker (duration, pid, local_port, remote_port); the
same filters are applied again here to whatever came back.

Cancellation: the broker job is stopped with the call (run_job closes the socket).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from perf_mcp_protocol import Backend, TcpMode, TcpTrace, limits

from ..contract import Evidence, Finding, next_call, sort_findings
from ..errors import ErrorCode, ToolError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..trace import tcp_parse
from ..trace.ladder import Rung, RungFailed, Skipped, climb, find_step, run_job, step_failure
from ..trace.tcp_parse import Connect, Connections, Lifecycle, RetransSocket, Session
from ..use.config import load_thresholds

NAME = "perf_tcp_trace"

# Sessions shorter than this are "short": a connection opened per request.
SHORT_SESSION_MS = 100.0
# Short sessions per second (one process) that make a churn finding: each costs a
# handshake (1 RTT), slow start, a TIME_WAIT entry and an ephemeral port.
CHURN_WARNING_PER_S = 20.0
CHURN_CRITICAL_PER_S = 200.0
# A connect handshake slower than this is worth a finding (a LAN round trip is
# well under a millisecond; SYN retransmission starts at 1 s).
SLOW_CONNECT_MS = 200.0
# Time in a listener's accept queue worth a finding (the server's accept loop lags).
SLOW_ACCEPT_MS = 100.0
# Segments a socket must have sent before its retransmit share is judged.
MIN_SEGMENTS = 100
TOP_N = 10

Mode = Literal["lifecycle", "connections"]


def _no_local_port(p: "Params") -> str | None:
    return "tcpconnect filters destination ports only (no local_port)" if p.local_port is not None else None


# One ladder per mode (a rung of the other mode is not "skipped", it is not a way to answer).
LIFECYCLE_RUNGS: list[Rung["Params"]] = [
    Rung(Backend.LIBBPF, "tcplife (libbpf-tools)", programs=("tcplife",), needs=("btf", "tracepoints")),
    Rung(Backend.BPFTRACE, "bpftrace tcplife.bt (sock:inet_sock_set_state + tcp_sock counters)",
         programs=("bpftrace",), needs=("btf", "tracepoints")),
]
CONNECTIONS_RUNGS: list[Rung["Params"]] = [
    Rung(Backend.LIBBPF, "tcpconnect (libbpf-tools; kprobes; active connects only)", programs=("tcpconnect",),
         needs=("btf", "kprobe_events"), unsupported=_no_local_port),
    Rung(Backend.BPFTRACE, "bpftrace tcpconn.bt (inet_sock_set_state + accept + tcp_retransmit_skb)",
         programs=("bpftrace",), needs=("btf", "tracepoints")),
]
RUNGS = {"lifecycle": LIFECYCLE_RUNGS, "connections": CONNECTIONS_RUNGS}
LADDER = LIFECYCLE_RUNGS + CONNECTIONS_RUNGS


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    duration_s: Annotated[int, Meta(ge=limits.TRACE_LONG_DURATION_S[0], le=limits.TRACE_LONG_DURATION_S[1],
                                    description="How long to trace, in seconds.")] = 10
    mode: Annotated[Mode, Meta(description=(
        "lifecycle: each TCP session that closed during the trace (process, addresses and ports, bytes sent "
        "and received, duration). connections: new connections (connect with handshake time, accept with "
        "accept-queue time) and retransmitted segments per socket."))] = "lifecycle"
    pid: Annotated[int, Meta(ge=limits.PID_MIN, le=limits.PID_MAX, description=(
        "Only this process's sockets (the process that connected, accepted or closed them)."))] | None = None
    local_port: Annotated[int, Meta(ge=1, le=65535, description="Only sockets with this local port.")] | None = None
    remote_port: Annotated[int, Meta(ge=1, le=65535, description="Only sockets with this remote port.")] | None = None
    max_listed: Annotated[int, Meta(ge=1, le=1000, description=(
        "List at most this many sessions or connections (the largest or slowest first); counts and "
        "findings cover all."))] = 50


class SessionStats(msgspec.Struct, kw_only=True):
    sessions: int
    sessions_per_s: float
    tx_bytes: int
    rx_bytes: int
    short_sessions: int  # < short_session_ms
    duration_p50_ms: float | None
    duration_max_ms: float | None
    pid_unknown: int  # sessions whose process was not seen (their pid is null)
    retrans_segs: int | None  # bpftrace rung only


class Peer(msgspec.Struct, kw_only=True):
    pid: int | None
    comm: str | None
    raddr: str
    rport: int
    sessions: int
    tx_bytes: int
    rx_bytes: int


class ConnStats(msgspec.Struct, kw_only=True):
    connects: int
    connect_failures: int
    accepts: int
    accepts_pending: int  # passive opens still in the accept queue at the end
    connect_latency_p50_ms: float | None
    connect_latency_max_ms: float | None
    accept_wait_max_ms: float | None
    retrans_segs: int | None  # None: this rung cannot see them
    retrans_sockets: int | None


class TcpTraceData(msgspec.Struct, kw_only=True):
    method: str
    backend: str
    skipped: list[Skipped]
    mode: str
    duration_s: int
    filters: dict[str, int]
    bytes_exact: bool | None = None  # lifecycle: False for tcplife (KiB, 2 decimals)
    lifecycle: SessionStats | None = None
    sessions: list[Session] = []
    sessions_omitted: int = 0
    top_peers: list[Peer] = []
    connections: ConnStats | None = None
    connection_list: list[Connect] = []
    connections_omitted: int = 0
    retransmits: list[RetransSocket] = []
    lost_events: int = 0
    findings: list[Finding] = []


# ---------------------------------------------------------------- collection


def _request(p: Params, backend: Backend) -> TcpTrace:
    return TcpTrace(backend=backend, mode=TcpMode(p.mode), duration_s=p.duration_s, pid=p.pid,
                    local_port=p.local_port, remote_port=p.remote_port)


async def _trace(ctx: ToolContext, p: Params, rung: Rung[Params]) -> tuple[Lifecycle | Connections, bool]:
    assert rung.backend is not None
    job = await run_job(ctx, _request(p, rung.backend), expected_s=float(p.duration_s),
                        label=rung.method.split(" (")[0])
    name = rung.programs[0] if rung.backend is Backend.LIBBPF else ("tcplife" if p.mode == "lifecycle" else "tcpconn")
    step = find_step(job, name)
    reason = step_failure(step, stopped_by_us=rung.backend is Backend.LIBBPF)
    if reason is not None or step is None:
        raise RungFailed(reason or f"no {name} step")
    parsed: Lifecycle | Connections
    if rung.backend is Backend.LIBBPF:
        parsed = (tcp_parse.parse_tcplife if p.mode == "lifecycle" else tcp_parse.parse_tcpconnect)(
            step.stdout, step.stderr)
    elif p.mode == "lifecycle":
        parsed = tcp_parse.parse_bpftrace_lifecycle(step.stdout, step.stderr)
    else:
        parsed = tcp_parse.parse_bpftrace_connections(step.stdout, step.stderr)
    records = parsed.sessions if isinstance(parsed, Lifecycle) else parsed.connections
    if parsed.bad_lines and not records:
        raise ToolError(ErrorCode.PARSE_ERROR, f"none of the {parsed.bad_lines} lines of {rung.method} could be read")
    return parsed, step.stdout_truncated


# ---------------------------------------------------------------- analysis


def _keep(p: Params, pid: int | None, lport: int, rport: int) -> bool:
    if p.pid is not None and pid != p.pid:
        return False
    if p.local_port is not None and lport and lport != p.local_port:
        return False
    return p.remote_port is None or rport == p.remote_port


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def _churn_finding(d: TcpTraceData, sessions: list[Session]) -> Finding | None:
    short: dict[tuple[int | None, str], list[Session]] = defaultdict(list)
    for s in sessions:
        if s.duration_ms is not None and s.duration_ms < SHORT_SESSION_MS:
            short[(s.pid, s.comm)].append(s)
    if not short:
        return None
    (pid, comm), worst = max(short.items(), key=lambda kv: len(kv[1]))
    rate = len(worst) / d.duration_s
    if rate <= CHURN_WARNING_PER_S:
        return None
    severity = "critical" if rate > CHURN_CRITICAL_PER_S else "warning"
    peers: dict[tuple[str, int], int] = defaultdict(int)
    for s in worst:
        peers[(s.raddr, s.rport)] += 1
    (raddr, rport), n = max(peers.items(), key=lambda kv: kv[1])
    who = f"pid {pid} ({comm})" if pid is not None else comm
    target = f'"pid": {pid}, ' if pid is not None else ""
    return Finding(
        id="network.tcp.connection_churn", severity=severity, resource="network",
        title=f"Connection churn: {who} opens {rate:.0f} short TCP sessions per second",
        detail=(f"{len(worst)} sessions of {who} lasted less than {SHORT_SESSION_MS:g} ms in {d.duration_s} s, "
                f"{n} of them to {raddr}:{rport}. Each costs a handshake round trip, slow start, a TIME_WAIT "
                "entry and an ephemeral port."),
        confidence=0.85, metrics={"short_sessions_per_s": round(rate, 3), "short_sessions": float(len(worst))},
        evidence=[Evidence(tool=NAME, counter="short_tcp_sessions_per_s", value=round(rate, 3),
                           threshold=CHURN_CRITICAL_PER_S if severity == "critical" else CHURN_WARNING_PER_S,
                           window_s=float(d.duration_s),
                           sample=f"{worst[0].laddr}:{worst[0].lport} -> {worst[0].raddr}:{worst[0].rport} "
                                  f"{worst[0].duration_ms} ms")],
        suggestion=(f"Reuse connections to {raddr}:{rport} (HTTP keep-alive, a connection pool). "
                    f'perf_tcp_trace with {{{target}"mode": "connections", "remote_port": {rport}, '
                    f'"duration_s": 10}} shows the handshake time each new connection pays.'),
        next=next_call("perf_tcp_trace", pid=pid or None, mode="connections", remote_port=rport or None,
                       duration_s=10))


def _retrans_finding(d: TcpTraceData, retrans: list[RetransSocket], threshold) -> Finding | None:  # type: ignore[no-untyped-def]
    total = sum(r.segments for r in retrans)
    if not total:
        return None
    worst = max(retrans, key=lambda r: r.segments)
    share = (worst.segments / worst.segs_out * 100.0) if worst.segs_out else None
    judged = share if worst.segs_out and worst.segs_out >= MIN_SEGMENTS else None
    severity = threshold.severity(judged) or "info"
    where = f"{worst.laddr}:{worst.lport} -> {worst.raddr}:{worst.rport}"
    share_text = f" ({share:.1f}% of the {worst.segs_out} segments it sent)" if share is not None else ""
    return Finding(
        id="network.tcp.retransmits", severity=severity, resource="network",
        title=f"{total} TCP segments retransmitted on {len(retrans)} socket(s)",
        detail=(f"Most on {where}: {worst.segments} segments{share_text}. Retransmits mean lost segments "
                "(drops on the path, a full queue) or a peer slow to acknowledge."),
        confidence=0.9,
        metrics={"retrans_segs": float(total), "sockets": float(len(retrans)),
                 **({"worst_socket_retrans_pct": round(share, 3)} if share is not None else {})},
        evidence=[Evidence(tool=NAME, counter="tcp_retransmit_skb segments", value=float(total),
                           threshold=threshold.limit(severity) if severity != "info" else None,
                           window_s=float(d.duration_s), sample=f"{where} {worst.segments} segments")],
        suggestion=("perf_net_health shows drops and errors per interface and the retransmit rate of the whole "
                    f'host; perf_tcp_trace with {{"mode": "lifecycle", "remote_port": {worst.rport}, '
                    '"duration_s": 10}} shows each session\'s retransmitted segments and smoothed RTT.'),
        next=next_call("perf_tcp_trace", mode="lifecycle", remote_port=worst.rport or None, duration_s=10))


def _connect_findings(d: TcpTraceData, conns: list[Connect]) -> list[Finding]:
    out: list[Finding] = []
    failed = [c for c in conns if c.kind == "connect" and not c.ok]
    if failed:
        dest: dict[tuple[str, int], int] = defaultdict(int)
        for c in failed:
            dest[(c.raddr, c.rport)] += 1
        (raddr, rport), n = max(dest.items(), key=lambda kv: kv[1])
        c0 = next(c for c in failed if (c.raddr, c.rport) == (raddr, rport))
        out.append(Finding(
            id="network.tcp.connect_failures", severity="warning", resource="network",
            title=f"{len(failed)} TCP connect(s) failed, {n} to {raddr}:{rport}",
            detail=(f"SYN_SENT went to CLOSE (refused, reset or timed out) for {len(failed)} connect(s); "
                    f"e.g. pid {c0.pid} ({c0.comm}) after {c0.latency_ms} ms."),
            confidence=0.9, metrics={"connect_failures": float(len(failed))},
            evidence=[Evidence(tool=NAME, counter="connect SYN_SENT->CLOSE", value=float(len(failed)), threshold=0.0,
                               window_s=float(d.duration_s), sample=f"{c0.comm} -> {raddr}:{rport}")],
            suggestion=(f"Check that something listens on {raddr}:{rport} (a refusal takes microseconds, a firewall "
                        "drop times out after seconds); perf_net_health shows the host's resets and drops."),
            next=next_call("perf_net_health")))
    slow = [c for c in conns if c.kind == "connect" and c.ok and (c.latency_ms or 0) > SLOW_CONNECT_MS]
    if slow:
        w = max(slow, key=lambda c: c.latency_ms or 0)
        out.append(Finding(
            id="network.tcp.slow_connect", severity="warning", resource="network",
            title=f"{len(slow)} TCP handshake(s) slower than {SLOW_CONNECT_MS:g} ms (max {w.latency_ms} ms)",
            detail=(f"The slowest: pid {w.pid} ({w.comm}) to {w.raddr}:{w.rport}. A handshake near 1 s or 3 s is a "
                    "lost SYN resent; otherwise it is the round trip or a peer's full accept backlog."),
            confidence=0.8, metrics={"slow_connects": float(len(slow)), "max_connect_ms": float(w.latency_ms or 0)},
            evidence=[Evidence(tool=NAME, counter="connect latency (SYN_SENT -> ESTABLISHED)",
                               value=w.latency_ms, threshold=SLOW_CONNECT_MS, window_s=float(d.duration_s),
                               sample=f"{w.laddr}:{w.lport} -> {w.raddr}:{w.rport}")],
            suggestion=(f'perf_tcp_trace with {{"mode": "connections", "remote_port": {w.rport}, "duration_s": 30}} '
                        "over a longer window shows whether SYNs are being resent (SYN-ACK retransmits on the peer)"),
            next=next_call("perf_tcp_trace", mode="connections", remote_port=w.rport or None, duration_s=30)))
    waited = [c for c in conns if c.kind == "accept" and (c.accept_wait_ms or 0) > SLOW_ACCEPT_MS]
    if waited:
        w = max(waited, key=lambda c: c.accept_wait_ms or 0)
        out.append(Finding(
            id="network.tcp.accept_queue_wait", severity="warning", resource="process",
            title=f"{len(waited)} connection(s) waited over {SLOW_ACCEPT_MS:g} ms in the accept queue of port {w.lport}",
            detail=(f"pid {w.pid} ({w.comm}) took up to {w.accept_wait_ms} ms to accept() an established connection: "
                    "its accept loop is busy or blocked."),
            confidence=0.85, metrics={"max_accept_wait_ms": float(w.accept_wait_ms or 0)},
            evidence=[Evidence(tool=NAME, counter="accept queue wait", value=w.accept_wait_ms,
                               threshold=SLOW_ACCEPT_MS, window_s=float(d.duration_s),
                               sample=f"{w.raddr}:{w.rport} -> port {w.lport}")],
            suggestion=(f'perf_offcpu_profile with {{"pid": {w.pid}, "duration_s": 10}} shows what the accepting '
                        f'thread waits on; perf_cpu_profile with {{"pid": {w.pid}}} whether it is busy instead.'),
            next=next_call("perf_offcpu_profile", pid=w.pid or None, duration_s=10)))
    return out


def analyse_lifecycle(p: Params, parsed: Lifecycle, d: TcpTraceData) -> None:
    sessions = [s for s in parsed.sessions if _keep(p, s.pid, s.lport, s.rport)]
    durations = [s.duration_ms for s in sessions if s.duration_ms is not None]
    retr = [s.retrans_segs for s in sessions if s.retrans_segs is not None]
    d.bytes_exact = parsed.bytes_exact
    d.lifecycle = SessionStats(
        sessions=len(sessions), sessions_per_s=round(len(sessions) / p.duration_s, 3),
        tx_bytes=sum(s.tx_bytes for s in sessions), rx_bytes=sum(s.rx_bytes for s in sessions),
        short_sessions=sum(1 for x in durations if x < SHORT_SESSION_MS),
        duration_p50_ms=_pct(durations, 0.5), duration_max_ms=max(durations) if durations else None,
        pid_unknown=sum(1 for s in sessions if s.pid is None),
        retrans_segs=sum(retr) if parsed.bytes_exact else None)
    peers: dict[tuple[int | None, str, str, int], Peer] = {}
    for s in sessions:
        key = (s.pid, s.comm, s.raddr, s.rport)
        peer = peers.setdefault(key, Peer(pid=s.pid, comm=s.comm, raddr=s.raddr, rport=s.rport, sessions=0,
                                          tx_bytes=0, rx_bytes=0))
        peer.sessions += 1
        peer.tx_bytes += s.tx_bytes
        peer.rx_bytes += s.rx_bytes
    d.top_peers = sorted(peers.values(), key=lambda x: (-(x.tx_bytes + x.rx_bytes), -x.sessions))[:TOP_N]
    ordered = sorted(sessions, key=lambda s: (-(s.tx_bytes + s.rx_bytes), s.lport))
    d.sessions, d.sessions_omitted = ordered[:p.max_listed], max(0, len(ordered) - p.max_listed)
    d.findings = sort_findings([f for f in (_churn_finding(d, sessions),) if f])


def analyse_connections(p: Params, parsed: Connections, d: TcpTraceData, threshold) -> None:  # type: ignore[no-untyped-def]
    conns = [c for c in parsed.connections if _keep(p, c.pid, c.lport, c.rport)]
    retrans = [r for r in parsed.retransmits if _keep(p, p.pid, r.lport, r.rport)]  # pid: kept by the tracer
    connects = [c for c in conns if c.kind == "connect"]
    lat = [c.latency_ms for c in connects if c.ok and c.latency_ms is not None]
    waits = [c.accept_wait_ms for c in conns if c.accept_wait_ms is not None]
    d.connections = ConnStats(
        connects=sum(1 for c in connects if c.ok), connect_failures=sum(1 for c in connects if not c.ok),
        accepts=sum(1 for c in conns if c.kind == "accept"),
        accepts_pending=parsed.pending_accepts if p.pid is None else 0,
        connect_latency_p50_ms=_pct(lat, 0.5), connect_latency_max_ms=max(lat) if lat else None,
        accept_wait_max_ms=max(waits) if waits else None,
        retrans_segs=sum(r.segments for r in retrans) if parsed.retrans_counted else None,
        retrans_sockets=len(retrans) if parsed.retrans_counted else None)
    ordered = sorted(conns, key=lambda c: (c.ok, -(c.latency_ms or c.accept_wait_ms or 0.0)))
    d.connection_list = ordered[:p.max_listed]
    d.connections_omitted = max(0, len(ordered) - p.max_listed)
    d.retransmits = sorted(retrans, key=lambda r: -r.segments)[:TOP_N]
    d.findings = sort_findings([f for f in (_retrans_finding(d, retrans, threshold), *_connect_findings(d, conns))
                                if f])


# ---------------------------------------------------------------- the tool


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    if p.pid is not None and not os.path.exists(f"/proc/{p.pid}"):
        raise ToolError(ErrorCode.PID_NOT_FOUND, f"no process with pid {p.pid}",
                        suggestion="Pass the pid of a running process, or omit pid to trace every process.")
    state: dict[str, bool] = {}

    async def attempt(rung: Rung[Params]) -> tuple[Lifecycle | Connections, None]:
        parsed, truncated = await _trace(ctx, p, rung)
        state["truncated"] = truncated
        return parsed, None

    result = await climb(ctx, RUNGS[p.mode], p, attempt)
    parsed = result.value
    warnings = result.warnings() + parsed.warnings
    filters = {k: v for k, v in (("pid", p.pid), ("local_port", p.local_port), ("remote_port", p.remote_port))
               if v is not None}
    d = TcpTraceData(method=result.method, backend=result.backend, skipped=result.skipped, mode=p.mode,
                     duration_s=p.duration_s, filters=filters, lost_events=parsed.lost_events)
    if isinstance(parsed, Lifecycle):
        analyse_lifecycle(p, parsed, d)
        assert d.lifecycle is not None
        if not parsed.bytes_exact:
            warnings.append("tcplife prints KiB with 2 decimals and counts the SYN and FIN: byte counts are "
                            f"within {tcp_parse.BYTES_RESOLUTION_TCPLIFE} bytes")
        if d.lifecycle.pid_unknown:
            warnings.append(f"{d.lifecycle.pid_unknown} session(s) opened before the trace and closed in softirq: "
                            "their process is unknown (pid null)")
    else:
        thresholds, extra = load_thresholds()
        warnings += extra
        analyse_connections(p, parsed, d, thresholds["network.retransmit_pct"])
        if not parsed.retrans_counted:
            warnings.append(f"{result.method} sees active connects only: accepts and retransmits are not counted")
    if parsed.lost_events:
        warnings.append(f"{parsed.lost_events} events were lost (the tracer's buffer overflowed): counts are "
                        "lower bounds")
    truncated = bool(state.get("truncated"))
    if truncated:
        warnings.append("the broker's output cap cut the trace: counts are lower bounds")
    return ToolOutput(data=d, summary=summarise(d), warnings=warnings,
                      truncated=truncated or d.sessions_omitted > 0 or d.connections_omitted > 0)


def _kb(n: int) -> str:
    return f"{n} B" if n < 10_240 else f"{n / 1024:.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1048576:.1f} MiB"


def summarise(d: TcpTraceData) -> str:
    if d.lifecycle is not None:
        s = d.lifecycle
        lines = [f"tcp lifecycle {d.duration_s} s: {s.sessions} sessions closed ({s.sessions_per_s:g}/s), "
                 f"sent {_kb(s.tx_bytes)}, received {_kb(s.rx_bytes)}, {s.short_sessions} shorter than "
                 f"{SHORT_SESSION_MS:g} ms"]
        if d.top_peers:
            lines.append("Top peers: " + ", ".join(
                f"{x.comm or '?'}[{x.pid}] -> {x.raddr}:{x.rport} x{x.sessions} ({_kb(x.tx_bytes)}/{_kb(x.rx_bytes)})"
                for x in d.top_peers[:5]))
    else:
        assert d.connections is not None
        c = d.connections
        retr = f", {c.retrans_segs} segments retransmitted" if c.retrans_segs is not None else ""
        lines = [f"tcp connections {d.duration_s} s: {c.connects} connects ({c.connect_failures} failed), "
                 f"{c.accepts} accepts{retr}"]
        if c.connect_latency_p50_ms is not None:
            lines.append(f"Handshake: p50 {c.connect_latency_p50_ms} ms, max {c.connect_latency_max_ms} ms")
    lines += [f"[{f.severity}] {f.title}" for f in d.findings]
    lines.append(f"Method: {d.method}")
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="TCP session and connection trace",
    description=(
        "Trace TCP for duration_s. mode lifecycle: each session that closed during the trace with its process "
        "(pid, comm), local and remote address and port, bytes sent and received and duration (top peers by "
        "bytes, a connection-churn finding). mode connections: new connections, connect() with its handshake "
        "time and failures, accept() with the time the connection waited in the accept queue, and retransmitted "
        "segments per socket (with findings). Filters pid, local_port, remote_port. Uses tcplife / tcpconnect "
        "(libbpf-tools), else bpftrace scripts on the sock and tcp tracepoints, through the perf-mcp broker (needs "
        "the 'trace' grant)."
    ),
    params=Params,
    data=TcpTraceData,
    handler=run,
)
