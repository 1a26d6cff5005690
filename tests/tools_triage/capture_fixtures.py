"""Capture real tool answers as fixtures for the correlation tests (run by hand, as root).

    cd /work/main && .venv/bin/python tests/tools_triage/capture_fixtures.py SOCKET SCENARIO [PID]

Calls the collectors of perf_triage through a real MCP client, the frontend running as
perfmcp-granted against the broker at SOCKET, and writes each tool's structuredContent to
tests/fixtures/triage/SCENARIO/<tool>.json. The workload (and its pid) is started by the caller.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "triage"


def calls(pid: int | None) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [
        ("perf_snapshot", {}),
        ("perf_use_check", {"window_s": 10}),
        ("perf_cgroup_summary", {"pid": pid} if pid else {}),
        ("perf_cgroup_summary#top", {}),
        ("perf_net_health", {}),
        ("perf_syscall_count", {"duration_s": 3, "per_process": True, "top_n": 10}),
        ("perf_runq_latency", {"duration_s": 3, "per_pid": True, "top_n": 5}),
        ("perf_dns_latency", {"duration_s": 3}),
        ("perf_cpu_profile", {"duration_s": 3}),
        ("perf_offcpu_profile", {"duration_s": 3, "pid": pid} if pid else {"duration_s": 3}),
        ("perf_io_layers", {"duration_s": 3, "include_details": True, "top_n": 5}),
        ("perf_vfs_latency", {"duration_s": 3}),
        ("perf_bio_latency", {"duration_s": 3}),
    ]
    if pid:
        out += [("perf_thread_profile", {"pid": pid, "duration_s": 3}),
                ("perf_fd_trace", {"pid": pid, "duration_s": 4, "interval_s": 2})]
    return out


async def main(socket: str, scenario: str, pid: int | None, only: list[str]) -> None:
    users = helpers.lookup_test_users()
    d = OUT / scenario
    d.mkdir(parents=True, exist_ok=True)
    async with helpers.mcp_client(users.granted, socket, read_timeout_seconds=120) as client:
        for name, args in calls(pid):
            if only and name not in only:
                continue
            tool = name.partition("#")[0]
            result = await client.call_tool(tool, args)
            (d / f"{name.replace('#', '.')}.json").write_text(json.dumps(result.structured_content, indent=1) + "\n")
            print(name, "ok" if not result.is_error else result.structured_content.get("error"))


if __name__ == "__main__":
    pid_arg = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
    trio.run(main, sys.argv[1], sys.argv[2], pid_arg, sys.argv[4:])
