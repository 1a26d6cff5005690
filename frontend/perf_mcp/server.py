"""The MCP server: tool dispatch with the envelope contract, and artifact resources.

Invariants:
- Nothing here writes to stdout except the MCP transport; logs go to stderr.
- A bad call (unknown tool, invalid arguments, a handler that raises) is answered
  with a typed error envelope and the server keeps serving.
- Cancellation (trio.Cancelled) is never caught here: it propagates so that the
  handler's broker connection is closed and the broker stops the job.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from typing import Any

import anyio
import mcp_types as types
import msgspec
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from . import __version__
from .artifacts import ArtifactStore
from .broker_client import BrokerClient
from .contract import ArtifactRef, Envelope, ErrorInfo, hostname, utc_timestamp
from .errors import ErrorCode, ToolError, single_leaf
from .registry import ProgressFn, Registry, Services, ToolContext, ToolOutput, ToolSpec, discover

log = logging.getLogger(__name__)

RESOURCE_NOT_FOUND = -32002
_PATH_RE = re.compile(r"at `\$\.([A-Za-z0-9_]+)")
_UNKNOWN_FIELD_RE = re.compile(r"unknown field `([^`]*)`")
_MISSING_FIELD_RE = re.compile(r"missing required field `([^`]*)`")


def describe_allowed(prop: dict[str, Any]) -> str:
    """A short human description of what a JSON-schema property accepts."""
    if "anyOf" in prop:
        return " or ".join(describe_allowed(p) for p in prop["anyOf"])
    if "enum" in prop:
        return "one of " + ", ".join(repr(v) for v in prop["enum"])
    kind = {"integer": "an integer", "number": "a number", "boolean": "true or false",
            "string": "a string", "null": "null (omit it)"}.get(prop.get("type", ""), prop.get("type", "a value"))
    lo, hi = prop.get("minimum"), prop.get("maximum")
    if lo is not None and hi is not None:
        return f"{kind} from {lo} to {hi}"
    if lo is not None:
        return f"{kind} >= {lo}"
    if hi is not None:
        return f"{kind} <= {hi}"
    return kind


def invalid_params_error(spec: ToolSpec[Any], exc: msgspec.ValidationError, schema: dict[str, Any]) -> ToolError:
    text = str(exc)
    props: dict[str, Any] = schema.get("properties", {})
    if m := _UNKNOWN_FIELD_RE.search(text):
        allowed = ", ".join(props) or "none"
        return ToolError(ErrorCode.INVALID_PARAMS, f"unknown parameter {m.group(1)!r} for {spec.name}; "
                         f"parameters: {allowed}")
    m = _PATH_RE.search(text) or _MISSING_FIELD_RE.search(text)
    if m and m.group(1) in props:
        field = m.group(1)
        return ToolError(ErrorCode.INVALID_PARAMS,
                         f"invalid value for {field}: {text.split(' - at ')[0]}; allowed: {describe_allowed(props[field])}")
    return ToolError(ErrorCode.INVALID_PARAMS, f"invalid arguments for {spec.name}: {text}")


class App:
    """Tools, artifacts and the broker client behind the MCP handlers."""

    def __init__(self, registry: Registry, broker: BrokerClient, artifacts: ArtifactStore | None = None) -> None:
        self.registry = registry
        self.broker = broker
        self.artifacts = artifacts or ArtifactStore()
        self.services = Services()
        self.services.put(broker)  # for background services that read through the broker
        self.host = hostname()
        self._schemas = {name: spec.input_schema() for name, spec in registry.tools.items()}
        self._tools = [self._describe(spec) for spec in registry.tools.values()]

    def _describe(self, spec: ToolSpec[Any]) -> types.Tool:
        return types.Tool(
            name=spec.name,
            title=spec.title,
            description=spec.description,
            input_schema=self._schemas[spec.name],
            output_schema=spec.output_schema(),
            annotations=types.ToolAnnotations(title=spec.title, read_only_hint=True, open_world_hint=False,
                                              destructive_hint=False, idempotent_hint=True),
        )

    def tools(self) -> list[types.Tool]:
        return list(self._tools)

    async def call(self, name: str, arguments: dict[str, Any] | None, progress: ProgressFn) -> types.CallToolResult:
        started = time.perf_counter()
        spec = self.registry.tools.get(name)
        if spec is None:
            err = ToolError(ErrorCode.TOOL_NOT_FOUND, f"no tool named {name!r}; tools: {', '.join(self.registry.tools)}")
            return self._failure(name, "", started, err)
        try:
            params = msgspec.convert(arguments or {}, spec.params, strict=False)
        except msgspec.ValidationError as exc:
            return self._failure(name, spec.version, started, invalid_params_error(spec, exc, self._schemas[name]))
        ctx = ToolContext(tool=name, broker=self.broker, artifacts=self.artifacts, services=self.services,
                          progress=progress)
        try:
            out = await spec.handler(ctx, params)
        except Exception as exc:  # trio.Cancelled is a BaseException and passes through
            leaf = single_leaf(exc)
            if isinstance(leaf, ToolError):
                log.info("%s failed: %s %s", name, leaf.code.value, leaf.message)
                return self._failure(name, spec.version, started, leaf)
            log.exception("%s raised an unexpected error", name)
            err = ToolError(ErrorCode.EXECUTION_FAILED, f"{name} failed unexpectedly: {type(leaf).__name__}: {leaf}")
            return self._failure(name, spec.version, started, err)
        return self._success(spec, started, out)

    def _envelope(self, tool: str, version: str, started: float, **kw: Any) -> Envelope:
        return Envelope(tool=tool, tool_version=version, timestamp=utc_timestamp(),
                        duration_ms=round((time.perf_counter() - started) * 1000, 1), host=self.host, **kw)

    def _success(self, spec: ToolSpec[Any], started: float, out: ToolOutput) -> types.CallToolResult:
        env = self._envelope(spec.name, spec.version, started, success=True, warnings=list(out.warnings),
                             truncated=out.truncated, data=out.data)
        text = out.summary
        if out.warnings:
            text += "\n" + "\n".join(f"warning: {w}" for w in out.warnings)
        content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
        content += [_resource_link(ref) for ref in _artifact_refs(out.data)]
        return types.CallToolResult(content=content, structured_content=msgspec.to_builtins(env), is_error=False)

    def _failure(self, tool: str, version: str, started: float, err: ToolError) -> types.CallToolResult:
        env = self._envelope(tool, version, started, success=False, warnings=[], truncated=False,
                             error=ErrorInfo.from_error(err))
        text = f"{tool} failed: {err.code.value}: {err.message}\nSuggestion: {err.suggestion}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                    structured_content=msgspec.to_builtins(env), is_error=True)

    def resources(self) -> list[types.Resource]:
        return [types.Resource(uri=a.uri, name=a.name, title=a.name, description=a.description or None,
                               mime_type=a.mime_type, size=a.size) for a in self.artifacts.list()]

    def read(self, uri: str) -> types.ReadResourceResult:
        art = self.artifacts.get(uri)
        if art is None:
            raise MCPError(RESOURCE_NOT_FOUND, f"resource not found or expired: {uri}")
        if art.is_text():
            contents: Any = types.TextResourceContents(uri=uri, mime_type=art.mime_type,
                                                       text=art.content.decode("utf-8", "replace"))
        else:
            contents = types.BlobResourceContents(uri=uri, mime_type=art.mime_type,
                                                  blob=base64.b64encode(art.content).decode())
        return types.ReadResourceResult(contents=[contents])


def _artifact_refs(data: msgspec.Struct) -> list[ArtifactRef]:
    """ArtifactRefs found in the top level of data (a field or a list of them)."""
    refs: list[ArtifactRef] = []
    for name in data.__struct_fields__:
        value = getattr(data, name)
        if isinstance(value, ArtifactRef):
            refs.append(value)
        elif isinstance(value, list):
            refs.extend(v for v in value if isinstance(v, ArtifactRef))
    return refs


def _resource_link(ref: ArtifactRef) -> types.ResourceLink:
    return types.ResourceLink(type="resource_link", uri=ref.uri, name=ref.name, mime_type=ref.mime_type,
                              size=ref.size, description=ref.description or None)


def build_server(app: App) -> Server[Any]:
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=app.tools())

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await app.call(params.name, params.arguments, ctx.session.report_progress)

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=app.resources())

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        return app.read(str(params.uri))

    return Server(
        "perf-mcp",
        version=__version__,
        title="perf-mcp",
        instructions=(
            "Linux performance diagnosis. Start with perf_info (what this machine and user can do), "
            "then the cheap tools, then profiling. Results are envelopes {success, data, warnings, error}; "
            "large artifacts (flame graphs, folded stacks) are resources linked from results."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


async def serve_stdio(app: App) -> None:
    """Run background services, then serve MCP on stdin/stdout until the client goes away."""
    server = build_server(app)
    async with anyio.create_task_group() as tg:
        for svc in app.registry.services:
            await tg.start(svc.run, app.services)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        tg.cancel_scope.cancel()


def make_app(broker: BrokerClient) -> App:
    return App(discover(), broker)
