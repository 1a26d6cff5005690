"""The one error type the procfs parsers raise, and the policy for bad input.

Every parser in this package is a pure function from the bytes (or text) of one
file to a msgspec Struct. Given garbled or truncated input it does one of two
things, never anything else (no IndexError, ValueError, KeyError...):

- Single-record files, where a missing field makes the whole record meaningless,
  raise ``ParseError``: /proc/loadavg, /proc/PID/stat, the aggregate "cpu" line
  of /proc/stat, a PSI file without its "some" line, single-value cgroup files
  (memory.current, cpuacct.usage, pids.max, ...).
- Line-oriented and key/value files return what they could parse and name each
  line they skipped in the result's ``warnings`` tuple: /proc/meminfo, vmstat,
  diskstats, net/dev, net/snmp and net/netstat (per protocol), softnet_stat,
  cpuinfo, PID status/limits/io/cgroup, mountinfo, flat-keyed and nested-keyed
  cgroup files. Typed fields that were not found are ``None``.

The tools turn ParseError into the PARSE_ERROR error code; a warning travels
to the tool result's ``warnings``.
"""

from __future__ import annotations


class ParseError(ValueError):
    """The input does not have the format of the file it claims to be."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason
