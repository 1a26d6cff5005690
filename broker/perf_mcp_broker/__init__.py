"""perf-mcp's root broker: runs allowlisted perf/BPF argv for authorised local users.

Imports nothing beyond the standard library, trio, msgspec, python-prctl, jeepney
and perf_mcp_protocol (a test keeps it so).
"""

__version__ = "0.1.0"
