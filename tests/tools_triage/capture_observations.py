"""Capture what perf_triage's collectors saw (Observations: every tool's answer, attribution,
thread demand, fd growth) under a real fault, as a fixture for the correlation tests.

Run by hand as the test user, against a running broker, while the fault runs:

    setpriv --reuid=perfmcp-granted --regid=perfmcp-granted --init-groups -- \
        .venv/bin/python tests/tools_triage/capture_observations.py SOCKET MODE NAME [PID] \
        > tests/fixtures/triage/observations/NAME.json
"""

from __future__ import annotations

import sys

import msgspec
import trio

from perf_mcp.artifacts import ArtifactStore
from perf_mcp.broker_client import BrokerClient
from perf_mcp.registry import Services, ToolContext, discover
from perf_mcp.triage.collectors import Collection, Runner, collect

async def _quiet(*_: object) -> None:
    return None


async def main(socket: str, mode: str, name: str, pid: int | None) -> None:
    registry = discover()
    services = Services()
    broker = BrokerClient(socket)
    services.put(broker)
    async with trio.open_nursery() as nursery:
        for svc in registry.services:
            await nursery.start(svc.run, services)
        await trio.sleep(6)  # some history in the sampler and the process table
        ctx = ToolContext(tool="perf_triage", broker=broker, artifacts=ArtifactStore(), services=services,
                          progress=_quiet)

        async def progress(col: Collection, runner: Runner) -> None:
            return None

        col = await collect(ctx, mode, "all", pid, progress)
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(col.obs), indent=1) + b"\n")
        print(name, sorted(col.obs.answers), [c.collector for c in col.could_not_run], file=sys.stderr)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
