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
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import anyio
import mcp_types as types
import msgspec
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from . import __version__, prompts
from .artifacts import ArtifactStore
from .broker_client import BrokerClient
from .contract import ArtifactRef, Envelope, ErrorInfo, hostname, utc_timestamp
from .errors import ErrorCode, ToolError, single_leaf, tools_without
from .registry import ProgressFn, Registry, Services, ToolContext, ToolOutput, ToolSpec, discover

log = logging.getLogger(__name__)

RESOURCE_NOT_FOUND = -32002
def _instructions() -> str:
    """What the client hands its model at initialize: where to start and the prompts."""
    listed = ", ".join(p.name + (f" ({', '.join(a.name for a in p.arguments)})" if p.arguments else "")
                       for p in prompts.PROMPTS.values())
    return (
        "Linux performance diagnosis. Start with perf_triage: mode quick (~5 s, no privileges), standard "
        "(~10 s, adds tracing) or deep (~30 s, adds profiles); pid=N for one slow process; focus cpu, memory, "
        "disk or network for one resource. It ranks root causes, each with its culprit, evidence and `next`: "
        "the tool call, with arguments, that confirms it. Make that call next, and follow the `next` of the "
        f"findings it returns. Prompts that script this: {listed}. Answers are envelopes "
        "{success, data, warnings, error}, data.summary first; large artifacts (flame graphs, folded stacks) "
        "are resources linked from answers."
    )


INSTRUCTIONS = _instructions()
_PATH_RE = re.compile(r"at `\$\.([A-Za-z0-9_]+)")
_UNKNOWN_FIELD_RE = re.compile(r"unknown field `([^`]*)`")
_MISSING_FIELD_RE = re.compile(r"missing required field `([^`]*)`")


def describe_allowed(prop: dict[str, Any]) -> str:
    """A short human description of what a JSON-schema property accepts."""
    if "anyOf" in prop:
        return " or ".join(describe_allowed(p) for p in prop["anyOf"])
    if "enum" in prop:
        return "one of " + ", ".join(repr(v) for v in prop["enum"] if v is not None)
    if isinstance(prop.get("type"), list):  # ["integer", "null"]: an optional value
        return " or ".join(describe_allowed({**prop, "type": t}) if t != "null" else "null (omit it)"
                           for t in prop["type"])
    if prop.get("type") == "string" and ("pattern" in prop or "maxLength" in prop):
        bits = [f"at most {prop['maxLength']} characters"] if "maxLength" in prop else []
        bits += [f"matching {prop['pattern']}"] if "pattern" in prop else []
        return "a string " + ", ".join(bits)
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


def invalid_params_error(spec: ToolSpec[Any], exc: msgspec.ValidationError, schema: dict[str, Any],
                         arguments: Mapping[str, Any] | None = None) -> ToolError:
    """INVALID_PARAMS naming the parameter, the value given and what is allowed
    (recoverable: the same call with that parameter fixed will work)."""
    text = str(exc)
    props: dict[str, Any] = schema.get("properties", {})
    args = dict(arguments or {})
    if m := _UNKNOWN_FIELD_RE.search(text):
        allowed = ", ".join(props) or "none"
        return ToolError(ErrorCode.INVALID_PARAMS, f"unknown parameter {m.group(1)!r} for {spec.name}; "
                         f"parameters: {allowed}",
                         suggestion=f"Drop {m.group(1)!r}, or use one of: {allowed}.", recoverable=True)
    m = _PATH_RE.search(text) or _MISSING_FIELD_RE.search(text)
    if m and m.group(1) in props:
        field = m.group(1)
        allowed = describe_allowed(props[field])
        given = f"{json.dumps(args[field])[:80]}" if field in args else "nothing (it is required)"
        return ToolError(ErrorCode.INVALID_PARAMS,
                         f"invalid value for {field}: got {given}; allowed: {allowed} "
                         f"({text.split(' - at ')[0]})",
                         suggestion=f"Call {spec.name} again with {field} set to {allowed}.", recoverable=True)
    return ToolError(ErrorCode.INVALID_PARAMS, f"invalid arguments for {spec.name}: {text}", recoverable=True)


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
        self._validators = {name: _input_validator(schema) for name, schema in self._schemas.items()}
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
            return self._failure(name, spec.version, started, invalid_params_error(spec, exc, self._schemas[name], arguments))
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
        data = summary_first(msgspec.to_builtins(out.data), out.summary)
        drop_unserved_next(spec.name, data, self.registry.tools, self._validators)
        env = self._envelope(spec.name, spec.version, started, success=True, warnings=list(out.warnings),
                             truncated=out.truncated, data=data)
        text = out.summary
        if out.warnings:
            text += "\n" + "\n".join(f"warning: {w}" for w in out.warnings)
        content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
        content += [_resource_link(ref) for ref in _artifact_refs(out.data)]
        return types.CallToolResult(content=content, structured_content=msgspec.to_builtins(env), is_error=False)

    def _failure(self, tool: str, version: str, started: float, err: ToolError) -> types.CallToolResult:
        if err.code is ErrorCode.PERMISSION_DENIED and "work without" not in err.suggestion:
            grant = err.grant or _grant_named(err.message)
            declared = {name: spec.grant for name, spec in self.registry.tools.items()}
            usable = [t for t in tools_without(grant, declared) if t != tool]
            what = f"the '{grant}' grant" if grant else "any grant"
            err = ToolError(err.code, err.message, recoverable=err.recoverable, grant=grant,
                            suggestion=f"{err.suggestion} These tools work without {what}: {', '.join(usable)}.")
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


_GRANT_RE = re.compile(r"'(profile|trace|inspect)' grant")


def _grant_named(message: str) -> str | None:
    m = _GRANT_RE.search(message)
    return m.group(1) if m else None


def summary_first(data: Any, summary: str) -> Any:
    """The data object with a one-line `summary` as its first key: the Data struct's
    own summary field if it has one, else the first line of ToolOutput.summary."""
    if not isinstance(data, dict):
        return data
    own = data.pop("summary", None)
    line = own if isinstance(own, str) and own else (summary.strip().splitlines() or [""])[0]
    return {"summary": line, **data}


def _input_validator(schema: dict[str, Any]) -> Any:
    from jsonschema import Draft7Validator
    return Draft7Validator(schema)


def drop_unserved_next(tool: str, data: Any, served: Mapping[str, Any], validators: Mapping[str, Any]) -> int:
    """Remove every `next` tool call in data (anywhere: findings, root causes) that
    names a tool this server does not serve or whose arguments do not validate
    against that tool's inputSchema; each one dropped is logged as an error (a
    bug in the tool that made it). Returns how many were dropped."""
    dropped = 0

    def walk(node: Any, path: str) -> None:
        nonlocal dropped
        if isinstance(node, dict):
            nxt = node.get("next")
            if isinstance(nxt, dict) and "tool" in nxt:
                name, args = nxt.get("tool"), nxt.get("arguments", {})
                reason = None
                if name not in served:
                    reason = "names a tool that is not served"
                else:
                    errors = sorted(validators[name].iter_errors(args), key=lambda e: list(e.path))
                    if errors:
                        reason = f"has arguments that {name}'s inputSchema refuses: {errors[0].message}"
                if reason:
                    log.error("dropped next step of %s at %s.next: %s %s %s", tool, path, name,
                              json.dumps(args, sort_keys=True), reason)
                    node["next"] = None
                    dropped += 1
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(data, "data")
    return dropped


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

    async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=prompts.list_prompts())

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        return prompts.get_prompt(params.name, params.arguments)

    return Server(
        "perf-mcp",
        version=__version__,
        title="perf-mcp",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
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
