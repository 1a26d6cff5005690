"""Parsers for perf_dns_latency: pure functions from a program's bytes to lookups.

- libbpf-tools `gethostlatency`: "%-8s %-7d %-16s %-10.3f %-s": wall clock
  HH:MM:SS, pid, comm (may hold spaces), latency in ms (3 decimals), the name
  (what the process asked for, cut by the tool at 80 bytes). No result code.
- the broker's bpftrace script dnslat.bt (`-f json`): Q records with the
  function, its result (getaddrinfo's EAI code, or whether gethostbyname*
  returned a hostent), the start time and the latency in ns, then
  "comm|name" (a comm is at most 15 bytes: the first '|' splits them).

Lines that do not parse (cut at the broker's output cap, garbled) are counted
and reported in `warnings`; they never raise.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from .exec_parse import _PRINTF, _unescape_json, text  # bpftrace's JSON printf line, read byte-exactly

Func = Literal["getaddrinfo", "gethostbyname", "gethostbyname2", "unknown"]
_FUNCS: dict[bytes, Func] = {b"g": "getaddrinfo", b"h": "gethostbyname", b"2": "gethostbyname2"}
# glibc's EAI_* codes (netdb.h), getaddrinfo's non-zero results.
EAI_NAMES = {-1: "EAI_BADFLAGS", -2: "EAI_NONAME", -3: "EAI_AGAIN", -4: "EAI_FAIL", -6: "EAI_FAMILY",
             -7: "EAI_SOCKTYPE", -8: "EAI_SERVICE", -10: "EAI_MEMORY", -11: "EAI_SYSTEM", -12: "EAI_OVERFLOW",
             -5: "EAI_NODATA", -9: "EAI_ADDRFAMILY"}


class Lookup(msgspec.Struct, kw_only=True, omit_defaults=True):
    pid: int
    comm: str
    name: str
    latency_ms: float
    func: Func = "unknown"
    tid: int | None = None
    ok: bool | None = None  # None: the program does not say (gethostlatency)
    error: str | None = None  # getaddrinfo's EAI_* name, or "no hostent" for gethostbyname*
    t_s: float | None = None  # start, seconds since the trace started (bpftrace rung)


class Lookups(msgspec.Struct, kw_only=True):
    lookups: list[Lookup] = []
    results_known: bool = True
    name_max_bytes: int = 63
    warnings: list[str] = []
    bad_lines: int = 0
    lost_events: int = 0


def _lost(stderr: bytes) -> int:
    return sum(int(m) for m in re.findall(rb"[Ll]ost (\d+) events", stderr))


def _bad(out: Lookups, what: str) -> None:
    if out.bad_lines:
        out.warnings.append(f"{out.bad_lines} {what} line(s) could not be read (cut or garbled) and were skipped")


# ---------------------------------------------------------------- libbpf-tools gethostlatency

_GHL = re.compile(rb"^\d\d:\d\d:\d\d (\d+) +(.{1,16}?) +(\d+\.\d{3}) +(\S.*?)\s*$", re.S)


def parse_gethostlatency(stdout: bytes, stderr: bytes = b"") -> Lookups:
    out = Lookups(results_known=False, name_max_bytes=79)
    lines = stdout.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()
        out.warnings.append("gethostlatency's output ends inside a line (cut at the broker's cap?); "
                            "that line is skipped")
    for line in lines:
        if not line.strip() or line.startswith(b"TIME"):
            continue
        m = _GHL.match(line)
        if m is None:
            out.bad_lines += 1
            continue
        pid, comm, ms, name = m.groups()
        out.lookups.append(Lookup(pid=int(pid), comm=text(comm), name=text(name), latency_ms=float(ms)))
    _bad(out, "gethostlatency")
    out.lost_events = _lost(stderr)
    return out


# ---------------------------------------------------------------- bpftrace dnslat.bt

_LOST = re.compile(rb'^\{"type": ?"lost_events", ?"data": ?\{"events": ?(\d+)\}\}')


def _uint(raw: bytes) -> int:
    if not raw.isdigit():
        raise ValueError(raw)
    return int(raw)


def parse_bpftrace(stdout: bytes, stderr: bytes = b"") -> Lookups:
    out = Lookups(results_known=True, name_max_bytes=63)
    t0: int | None = None
    for raw in stdout.split(b"\n"):
        raw = raw.strip()
        if not raw:
            continue
        m = _PRINTF.match(raw)
        if m is None:
            if lost := _LOST.match(raw):
                out.lost_events += int(lost.group(1))
            elif not raw.startswith(b'{"type": "attached_probes"') and not raw.startswith(b'{"type": "map"'):
                out.bad_lines += 1
            continue
        payload = _unescape_json(m.group(1))
        if payload is None or not payload.endswith(b"\n"):
            out.bad_lines += 1
            continue
        rec = payload[:-1]
        try:
            if rec.startswith(b"B "):
                t0 = _uint(rec[2:])
                continue
            _, pid, tid, func, ret, start, lat, rest = rec.split(b" ", 7)
            comm, sep, name = rest.partition(b"|")
            if not sep or func not in _FUNCS:
                raise ValueError(rec[:16])
            code = int(ret)
            fn = _FUNCS[func]
            if fn == "getaddrinfo":
                ok, error = code == 0, None if code == 0 else EAI_NAMES.get(code, f"EAI {code}")
            else:
                ok, error = code == 1, None if code == 1 else "no hostent"
            st = _uint(start)
            out.lookups.append(Lookup(pid=_uint(pid), tid=_uint(tid), comm=text(comm), name=text(name),
                                      latency_ms=round(_uint(lat) / 1e6, 3), func=fn, ok=ok, error=error,
                                      t_s=round((st - t0) / 1e9, 6) if t0 is not None and st >= t0 else None))
        except ValueError:
            out.bad_lines += 1
    _bad(out, "bpftrace")
    out.lost_events += _lost(stderr)
    return out
