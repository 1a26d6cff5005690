"""The tool registry: how a tool plugs into the server.

Adding a tool = adding a module under perf_mcp/tools/ that defines TOOL (or
TOOLS, a list). The server discovers those modules at start-up:

    class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        duration_s: Annotated[float, Meta(ge=1, le=30, description="...")] = 5.0

    class Data(msgspec.Struct, kw_only=True):
        findings: list[Finding]
        ...

    async def run(ctx: ToolContext, params: Params) -> ToolOutput:
        ...
        return ToolOutput(data=Data(...), summary="headline\\nmore lines", warnings=[...])

    TOOL = ToolSpec(name="perf_x", title="...", description="...", params=Params, data=Data, handler=run)

The input schema comes from Params (msgspec.json.schema, ranges included) and
arguments are converted to Params with msgspec before the handler runs, so a
handler only ever sees valid values. The output schema is the envelope of
contract.py around Data. Raise errors.ToolError for a typed failure.

A module may also define SERVICES: a list of ServiceSpec, background tasks
(such as a sampler) started in the server's nursery before it serves and
reachable from handlers through ctx.services.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
import trio

from .artifacts import ArtifactStore
from .broker_client import BrokerClient
from .contract import input_schema, output_schema

log = logging.getLogger(__name__)

P = TypeVar("P", bound=msgspec.Struct)

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass
class ToolOutput:
    """What a handler returns: typed data, a readable summary (first line = headline), warnings."""

    data: msgspec.Struct
    summary: str
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False


class Services:
    """Long-lived objects shared by handlers (sampler rings, caches), keyed by type."""

    def __init__(self) -> None:
        self._by_type: dict[type, object] = {}

    def put(self, obj: object) -> None:
        self._by_type[type(obj)] = obj

    def get(self, tp: type[P]) -> P | None:  # type: ignore[type-var]
        obj = self._by_type.get(tp)
        return obj  # type: ignore[return-value]


@dataclass
class ToolContext:
    """Everything a handler may use; built per call by the server."""

    tool: str
    broker: BrokerClient
    artifacts: ArtifactStore
    services: Services
    progress: ProgressFn

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """MCP progress (a no-op when the client sent no progress token); never fails the call."""
        try:
            await self.progress(progress, total, message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("progress notification dropped: %s", exc)


Handler = Callable[[ToolContext, Any], Awaitable[ToolOutput]]


@dataclass(frozen=True)
class ToolSpec(Generic[P]):
    name: str
    title: str
    description: str
    params: type[P]
    data: type[msgspec.Struct]
    handler: Callable[[ToolContext, P], Awaitable[ToolOutput]]
    version: str = "1.0"
    # The broker grant (profile, trace, inspect) the tool needs for its main answer, None
    # when it answers without one (errors.TOOL_GRANT holds it for the tools that predate
    # this field). A PERMISSION_DENIED answer lists the tools that work without the grant.
    grant: str | None = None

    def input_schema(self) -> dict[str, Any]:
        return input_schema(self.params)

    def output_schema(self) -> dict[str, Any]:
        return output_schema(self.data)


@dataclass(frozen=True)
class ServiceSpec:
    """A background task: `await run(services, task_status)` must call task_status.started() once ready."""

    name: str
    run: Callable[..., Awaitable[None]]


@dataclass
class Registry:
    tools: dict[str, ToolSpec[Any]] = field(default_factory=dict)
    services: list[ServiceSpec] = field(default_factory=list)

    def add(self, spec: ToolSpec[Any]) -> None:
        if spec.name in self.tools:
            raise ValueError(f"tool {spec.name} registered twice")
        self.tools[spec.name] = spec


def discover(package: str = "perf_mcp.tools") -> Registry:
    """Import every module of the tools package and collect TOOL/TOOLS/SERVICES.

    A module that fails to import is logged and skipped, so one broken tool
    does not take the whole server down.
    """
    registry = Registry()
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception:
            log.exception("tool module %s failed to import; its tools are not served", info.name)
            continue
        specs = list(getattr(module, "TOOLS", []))
        if hasattr(module, "TOOL"):
            specs.append(module.TOOL)
        for spec in specs:
            registry.add(spec)
        registry.services.extend(getattr(module, "SERVICES", []))
    return registry
