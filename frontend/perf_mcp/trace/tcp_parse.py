"""Parsers for perf_tcp_trace: pure functions from a program's bytes to typed records.

- libbpf-tools `tcplife -T -w`: one text line per closed session: HH:MM:SS,
  pid, comm ("%-16s", may hold spaces), local address and port, remote address
  and port, TX_KB and RX_KB (KiB, 2 decimals: bytes_acked and bytes_received,
  so the SYN and the FIN each add one byte), MS (2 decimals). Bytes are known
  to ~5 bytes either way (BYTES_RESOLUTION_TCPLIFE).
- the broker's bpftrace script tcplife.bt (`-f json`): L records, bytes exact
  (see the script's header).
- the broker's bpftrace script tcpconn.bt: C (connect), P (passive open, in
  the accept queue), A (accept), R/S (first retransmission of a socket) records
  and the @retrans/@synack/@segsout maps printed at exit.
- libbpf-tools `tcpconnect -t -U` (kprobes: it cannot run on kernels without
  them; its parser follows the program's printf format): TIME(s) UID PID COMM
  IP SADDR DADDR DPORT.

Lines that do not parse (cut at the broker's output cap, garbled) are counted
and reported in `warnings`; they never raise.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import msgspec

from .exec_parse import _PRINTF, _unescape_json, text  # bpftrace's JSON printf line, read byte-exactly

# tcplife prints KiB with 2 decimals: a value is known to 0.005 KiB = 5.12 bytes
# either way, plus the SYN and FIN bytes its counters hold.
BYTES_RESOLUTION_TCPLIFE = 8
_U64 = 1 << 64

PidSource = Literal["connect", "accept", "close", "unknown", "tcplife", "tcpconnect"]


class Session(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A TCP session that closed during the trace."""

    pid: int | None  # None: no process context was seen for it (see pid_source)
    comm: str
    pid_source: PidSource
    family: int  # 4 or 6
    laddr: str
    lport: int
    raddr: str
    rport: int
    tx_bytes: int
    rx_bytes: int
    duration_ms: float | None = None
    retrans_segs: int | None = None  # bpftrace rung only
    srtt_us: int | None = None  # bpftrace rung only (smoothed RTT at close)
    t_s: float | None = None  # close time, seconds since the trace started (bpftrace rung)


class Lifecycle(msgspec.Struct, kw_only=True):
    sessions: list[Session] = []
    bytes_exact: bool = True
    warnings: list[str] = []
    bad_lines: int = 0
    lost_events: int = 0


class Connect(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: Literal["connect", "accept"]
    pid: int | None
    comm: str | None
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    ok: bool  # connect: False when SYN_SENT went to CLOSE (refused, timed out)
    latency_ms: float | None = None  # connect: the handshake (SYN sent -> ESTABLISHED)
    accept_wait_ms: float | None = None  # accept: time in the accept queue
    t_s: float | None = None
    sk: int = 0  # the kernel socket address (joins records; not shown)


class RetransSocket(msgspec.Struct, kw_only=True, omit_defaults=True):
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    segments: int
    synack: bool = False  # a listener resending SYN-ACKs
    state: int | None = None  # TCP state at the first retransmission
    segs_out: int | None = None  # the socket's segments sent so far, at its last retransmission
    sk: int = 0


class Connections(msgspec.Struct, kw_only=True):
    connections: list[Connect] = []
    retransmits: list[RetransSocket] = []
    pending_accepts: int = 0  # passive opens not yet accept()ed when the trace ended
    warnings: list[str] = []
    bad_lines: int = 0
    lost_events: int = 0
    retrans_counted: bool = True  # False: tcpconnect rung (no retransmits)
    accepts_counted: bool = True


def _lost(stderr: bytes) -> int:
    return sum(int(m) for m in re.findall(rb"[Ll]ost (\d+) events", stderr))


def _bad(warnings: list[str], bad: int, what: str) -> None:
    if bad:
        warnings.append(f"{bad} {what} line(s) could not be read (cut or garbled) and were skipped")


def _lines(stdout: bytes, what: str, warnings: list[str]) -> list[bytes]:
    lines = stdout.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:  # no newline at the end: the output was cut inside this line
        lines.pop()
        warnings.append(f"{what}'s output ends inside a line (cut at the broker's cap?); that line is skipped")
    return lines


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw.decode("ascii")))


def _port(raw: bytes) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(raw)
    return value


def _uint(raw: bytes) -> int:
    if not raw.isdigit():
        raise ValueError(raw)
    return int(raw)


def _family(addr: str) -> int:
    return 6 if ":" in addr else 4


# ---------------------------------------------------------------- libbpf-tools tcplife

_CLOCK = re.compile(rb"\d\d:\d\d:\d\d ")


def _tcplife_line(line: bytes) -> Session | None:
    if not _CLOCK.match(line):
        return None
    head, *tail = line[9:].rsplit(None, 7)
    if len(tail) != 7:
        return None
    pid_s, _, comm = head.strip().partition(b" ")
    laddr, lport, raddr, rport, tx_kb, rx_kb, ms = tail
    tx, rx, dur = float(tx_kb), float(rx_kb), float(ms)
    if min(tx, rx, dur) < 0:
        return None
    la, ra = _addr(laddr), _addr(raddr)
    return Session(pid=_uint(pid_s), comm=text(comm.strip()), pid_source="tcplife", family=_family(la),
                   laddr=la, lport=_port(lport), raddr=ra, rport=_port(rport),
                   tx_bytes=round(tx * 1024), rx_bytes=round(rx * 1024), duration_ms=dur)


def parse_tcplife(stdout: bytes, stderr: bytes = b"") -> Lifecycle:
    out = Lifecycle(bytes_exact=False)
    for line in _lines(stdout, "tcplife", out.warnings):
        if not line.strip() or line.startswith(b"TIME") or line.startswith(b"PID "):
            continue
        try:
            s = _tcplife_line(line)
        except (ValueError, UnicodeDecodeError):
            s = None
        if s is None:
            out.bad_lines += 1
        else:
            out.sessions.append(s)
    _bad(out.warnings, out.bad_lines, "tcplife")
    out.lost_events = _lost(stderr)
    return out


# ---------------------------------------------------------------- bpftrace printf records

_LOST = re.compile(rb'^\{"type": ?"lost_events", ?"data": ?\{"events": ?(\d+)\}\}')
_MAP = re.compile(rb'^\{"type": ?"map", ?"data": ?\{"(@\w+)": ?\{(.*)\}\}\}\s*$')
_MAP_ENTRY = re.compile(rb'"(-?\d+)": ?(-?\d+)')
_HOW: dict[bytes, PidSource] = {b"c": "connect", b"a": "accept", b"x": "close", b"?": "unknown"}


class _Records(msgspec.Struct):
    printed: list[bytes] = []
    maps: dict[str, dict[int, int]] = {}
    bad_lines: int = 0
    lost_events: int = 0


def _records(stdout: bytes) -> _Records:
    """The printf payloads (without their newline) and the integer maps of a bpftrace -f json output."""
    out = _Records(printed=[], maps={})
    for raw in stdout.split(b"\n"):
        raw = raw.strip()
        if not raw:
            continue
        m = _PRINTF.match(raw)
        if m is not None:
            payload = _unescape_json(m.group(1))
            if payload is None or not payload.endswith(b"\n"):
                out.bad_lines += 1
            else:
                out.printed.append(payload[:-1])
            continue
        if mm := _MAP.match(raw):
            # bpftrace prints a u64 key (a kernel address) as a signed number
            out.maps[mm.group(1).decode()] = {int(k) % _U64: int(v) for k, v in _MAP_ENTRY.findall(mm.group(2))}
        elif lost := _LOST.match(raw):
            out.lost_events += int(lost.group(1))
        elif not raw.startswith(b'{"type": "attached_probes"') and not raw.startswith(b'{"type": "map"'):
            out.bad_lines += 1
    return out


def parse_bpftrace_lifecycle(stdout: bytes, stderr: bytes = b"") -> Lifecycle:
    out = Lifecycle(bytes_exact=True)
    rec = _records(stdout)
    t0: int | None = None
    bad = rec.bad_lines
    for line in rec.printed:
        try:
            if line.startswith(b"B "):
                t0 = _uint(line[2:])
                continue
            if not line.startswith(b"L "):
                raise ValueError(line[:4])
            (_, _sk, pid, how, fam, lport, rport, tx, rx, birth, close, retr, srtt, laddr, raddr,
             comm) = line.split(b" ", 15)
            source = _HOW[how]
            b, c = _uint(birth), _uint(close)
            out.sessions.append(Session(
                pid=_uint(pid) if source != "unknown" else None, comm=text(comm), pid_source=source,
                family=6 if fam == b"10" else 4, laddr=_addr(laddr), lport=_port(lport), raddr=_addr(raddr),
                rport=_port(rport), tx_bytes=_uint(tx), rx_bytes=_uint(rx),
                duration_ms=round((c - b) / 1e6, 3) if b and c >= b else None, retrans_segs=_uint(retr),
                srtt_us=_uint(srtt), t_s=round((c - t0) / 1e9, 6) if t0 is not None and c >= t0 else None))
        except (ValueError, KeyError, UnicodeDecodeError):
            bad += 1
    out.bad_lines = bad
    _bad(out.warnings, bad, "bpftrace")
    out.lost_events = rec.lost_events + _lost(stderr)
    return out


def parse_bpftrace_connections(stdout: bytes, stderr: bytes = b"") -> Connections:
    """C/P/A/R/S records of tcpconn.bt, an accept joined to its passive open by socket address
    (a freed socket's address is soon reused: the latest open record wins)."""
    out = Connections()
    rec = _records(stdout)
    t0: int | None = None
    bad = rec.bad_lines
    queued: dict[int, Connect] = {}
    retrans: dict[int, RetransSocket] = {}
    for line in rec.printed:
        try:
            kind = line[:2]
            if kind == b"B ":
                t0 = _uint(line[2:])
            elif kind == b"C ":
                _, sk, pid, ok, fam, lport, rport, lat, t, laddr, raddr, comm = line.split(b" ", 11)
                out.connections.append(Connect(
                    kind="connect", pid=_uint(pid), comm=text(comm), family=6 if fam == b"10" else 4,
                    laddr=_addr(laddr), lport=_port(lport), raddr=_addr(raddr), rport=_port(rport), ok=ok == b"1",
                    latency_ms=round(_uint(lat) / 1e6, 3), t_s=_since(t0, _uint(t)), sk=_uint(sk)))
            elif kind == b"P ":
                _, sk, fam, lport, rport, t, laddr, raddr = line.split(b" ")
                c = Connect(kind="accept", ok=True, pid=None, comm=None, family=6 if fam == b"10" else 4, laddr=_addr(laddr),
                            lport=_port(lport), raddr=_addr(raddr), rport=_port(rport), t_s=_since(t0, _uint(t)),
                            sk=_uint(sk))
                queued[c.sk] = c
            elif kind == b"A ":
                _, sk, pid, wait, comm = line.split(b" ", 4)
                c = queued.pop(_uint(sk), None)
                if c is None:
                    raise ValueError("accept without its passive open")
                c.pid, c.comm, c.accept_wait_ms = _uint(pid), text(comm), round(_uint(wait) / 1e6, 3)
                out.connections.append(c)
            elif kind in (b"R ", b"S "):
                if kind == b"R ":
                    _, sk, fam, lport, rport, state, laddr, raddr = line.split(b" ")
                else:
                    _, sk, fam, lport, rport, laddr, raddr = line.split(b" ")
                    state = b""
                r = RetransSocket(family=6 if fam == b"10" else 4, laddr=_addr(laddr), lport=_port(lport),
                                  raddr=_addr(raddr), rport=_port(rport), segments=0, synack=kind == b"S ",
                                  state=_uint(state) if state else None, sk=_uint(sk))
                retrans[r.sk] = r
            else:
                raise ValueError(line[:4])
        except (ValueError, UnicodeDecodeError):
            bad += 1
    out.pending_accepts = len(queued)
    counts = {**rec.maps.get("@synack", {}), **rec.maps.get("@retrans", {})}
    segs_out = rec.maps.get("@segsout", {})
    missing = 0
    for sk, r in retrans.items():
        r.segments = counts.get(sk, 0)
        r.segs_out = segs_out.get(sk)
        if not r.segments:
            missing += 1
    out.retransmits = [r for r in retrans.values() if r.segments]
    if missing:
        out.warnings.append(f"{missing} retransmitting socket(s) have no count (the exit maps were cut or lost)")
    out.bad_lines = bad
    _bad(out.warnings, bad, "bpftrace")
    out.lost_events = rec.lost_events + _lost(stderr)
    return out


def _since(t0: int | None, t: int) -> float | None:
    return round((t - t0) / 1e9, 6) if t0 is not None and t >= t0 else None


# ---------------------------------------------------------------- libbpf-tools tcpconnect (kprobes)

_TCPCONNECT = re.compile(rb"^\s*(\d+\.\d+)\s+(\d+)\s+(\d+)\s+(.{1,16}?)\s+([46])\s+(\S+)\s+(\S+)\s+(\d+)\s*$")


def parse_tcpconnect(stdout: bytes, stderr: bytes = b"") -> Connections:
    """`tcpconnect -t -U`: "%-9.3f" time, "%-6d" uid, "%-7d" pid, "%-16s" comm, "%-2d" IP
    version, saddr, daddr, dport. Active connects only, no latency, no local port."""
    out = Connections(retrans_counted=False, accepts_counted=False)
    for line in _lines(stdout, "tcpconnect", out.warnings):
        if not line.strip() or line.startswith(b"TIME"):
            continue
        m = _TCPCONNECT.match(line)
        try:
            if m is None:
                raise ValueError(line[:20])
            t, _uid, pid, comm, _ver, saddr, daddr, dport = m.groups()
            out.connections.append(Connect(kind="connect", ok=True, pid=int(pid), comm=text(comm.strip()),
                                           family=_family(_addr(saddr)), laddr=_addr(saddr), lport=0,
                                           raddr=_addr(daddr), rport=_port(dport), t_s=float(t)))
        except (ValueError, UnicodeDecodeError):
            out.bad_lines += 1
    _bad(out.warnings, out.bad_lines, "tcpconnect")
    out.lost_events = _lost(stderr)
    return out
