"""Broker jobs of the triage collectors wait for a slot instead of failing BUSY.

The broker allows one profiling/tracing job per uid (limits.MAX_JOBS_PER_UID,
classes PROFILE and TRACE) and MAX_LIGHT_JOBS_PER_UID of the other classes
(INSPECT); over that it answers BUSY, by design never a queue (DESIGN.md,
broker rule 5). The queue is therefore here, on the client side: a
QueuedBroker wraps the server's BrokerClient, takes a trio.Semaphore of the
job's class before it connects, and when the broker still answers BUSY (a job
of the same user from elsewhere: another tool call, another server) it waits
and tries again until its patience runs out; then the ToolError goes up and
the collector is listed in could_not_run with the reason.

One QueuedBroker per server (kept in ctx.services), so two triage calls at
once share the slots. Cancellation: the inner run() closes the socket, which
stops the broker's job; a job still waiting for a slot never connected.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import trio

from perf_mcp_protocol import Request, limits
from perf_mcp_protocol.messages import REQUEST_CLASS, JobClass

from ..broker_client import BrokerClient, BrokerReply, ProgressCallback
from ..errors import ErrorCode, ToolError
from ..registry import ToolContext

log = logging.getLogger(__name__)

BUSY_RETRY_S = 0.5
BUSY_PATIENCE_S = 30.0
_HEAVY = {JobClass.PROFILE, JobClass.TRACE}


class QueuedBroker:
    """Duck-types BrokerClient (run, socket_path) for the tools' handlers."""

    def __init__(self, inner: BrokerClient, *, patience_s: float = BUSY_PATIENCE_S) -> None:
        self.inner = inner
        self.socket_path = inner.socket_path
        self.patience_s = patience_s
        self.heavy = trio.Semaphore(limits.MAX_JOBS_PER_UID)
        self.light = trio.Semaphore(limits.MAX_LIGHT_JOBS_PER_UID)
        self.waited_s: dict[int, float] = {}  # id(task) -> seconds queued, for the collector table
        self.busy_retries = 0

    def _slot(self, request: Request) -> trio.Semaphore | None:
        cls = REQUEST_CLASS.get(type(request))
        if cls in _HEAVY:
            return self.heavy
        if cls is JobClass.INSPECT:
            return self.light
        return None  # hello/access queries: no job slot

    @contextlib.asynccontextmanager
    async def _held(self, sem: trio.Semaphore | None) -> AsyncIterator[None]:
        if sem is None:
            yield
            return
        t0 = trio.current_time()
        async with sem:
            task = id(trio.lowlevel.current_task())
            self.waited_s[task] = self.waited_s.get(task, 0.0) + trio.current_time() - t0
            yield

    async def run(self, request: Request, *, timeout_s: float,
                  on_progress: ProgressCallback | None = None) -> BrokerReply:
        deadline = trio.current_time() + self.patience_s
        while True:
            async with self._held(self._slot(request)):
                try:
                    return await self.inner.run(request, timeout_s=timeout_s, on_progress=on_progress)
                except ToolError as exc:
                    if exc.code is not ErrorCode.PROFILER_BUSY or trio.current_time() >= deadline:
                        raise
                    self.busy_retries += 1
                    log.info("broker BUSY for %s: retrying in %.1f s", type(request).__name__, BUSY_RETRY_S)
            await trio.sleep(BUSY_RETRY_S)


def queued_broker(ctx: ToolContext) -> QueuedBroker:
    """The server's QueuedBroker around ctx.broker (made on first use)."""
    found = ctx.services.get(QueuedBroker)
    if found is None or found.inner is not ctx.broker:
        found = QueuedBroker(ctx.broker)
        ctx.services.put(found)
    return found
