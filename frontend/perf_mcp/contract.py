"""The output contract every tool follows (DESIGN.md, "What every tool returns").

structuredContent is an envelope:
    success: {success: true,  tool, tool_version, timestamp, duration_ms, host, data, warnings, truncated}
    failure: {success: false, tool, tool_version, timestamp, duration_ms, host, warnings, truncated,
              error: {code, message, recoverable, suggestion}}
and every tool's outputSchema is that envelope with the tool's own data schema inlined.
Findings have one shape for every tool (Finding below).
"""

from __future__ import annotations

import datetime as _dt
import socket
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .errors import ErrorCode, ToolError

Severity = Literal["info", "warning", "critical"]
Resource = Literal["cpu", "memory", "disk", "network", "process", "cgroup"]

SEVERITY_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}


class Evidence(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where a finding comes from: which tool, which counter, which threshold, which sample."""

    tool: str
    counter: str
    value: float | str | None = None
    threshold: float | None = None
    window_s: float | None = None
    sample: str | None = None


class NextCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The next tool call a finding points to: a served tool and concrete arguments
    (for example perf_io_latency with device=vda). Built with next_call(); the
    server drops a next call whose tool is not served, and a test checks every
    next call any tool emits against the registry's input schemas."""

    tool: str
    arguments: dict[str, Any] = {}


def next_call(tool: str, **arguments: Any) -> NextCall:
    """NextCall(tool, arguments), leaving out arguments that are None."""
    return NextCall(tool=tool, arguments={k: v for k, v in arguments.items() if v is not None})


class Finding(msgspec.Struct, kw_only=True):
    """One conclusion, the same shape in every tool. `suggestion` says what to do in
    words; `next` is the tool call to make next, when one fits."""

    id: str
    severity: Severity
    resource: Resource
    title: str
    detail: str
    confidence: Annotated[float, Meta(ge=0.0, le=1.0)]
    metrics: dict[str, float] = {}
    evidence: list[Evidence] = []
    suggestion: str = ""
    next: NextCall | None = None


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity], -f.confidence))


class ArtifactRef(msgspec.Struct, kw_only=True):
    """A link to an MCP resource holding a large artifact (read it with resources/read)."""

    uri: str
    name: str
    mime_type: str
    size: int
    expires_in_s: int
    description: str = ""


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: ErrorCode
    message: str
    recoverable: bool
    suggestion: str

    @classmethod
    def from_error(cls, err: ToolError) -> "ErrorInfo":
        return cls(code=err.code, message=err.message, recoverable=err.recoverable, suggestion=err.suggestion)


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    success: bool
    tool: str
    tool_version: str
    timestamp: str
    duration_ms: float
    host: str
    warnings: list[str]
    truncated: bool
    data: Any = None
    error: ErrorInfo | None = None


def utc_timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hostname() -> str:
    return socket.gethostname()


# ---------------------------------------------------------------- schemas

_REF_TEMPLATE = "#/$defs/{name}"


def struct_schema(tp: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema, $defs) of a msgspec type, refs pointing at #/$defs/..."""
    (schema,), defs = msgspec.json.schema_components([tp], ref_template=_REF_TEMPLATE)
    return schema, defs


def input_schema(params: type[msgspec.Struct]) -> dict[str, Any]:
    """A tool's inputSchema: the params Struct inlined as the root object (MCP wants type object there)."""
    schema, defs = struct_schema(params)
    name = params.__name__
    root = dict(defs.pop(name)) if schema.get("$ref") == _REF_TEMPLATE.format(name=name) else dict(schema)
    root.pop("title", None)
    root["type"] = "object"
    root.setdefault("properties", {})
    root.setdefault("additionalProperties", False)
    if defs:
        root["$defs"] = defs
    return root


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "message", "recoverable", "suggestion"],
        "properties": {
            "code": {"enum": [c.value for c in ErrorCode]},
            "message": {"type": "string"},
            "recoverable": {"type": "boolean"},
            "suggestion": {"type": "string"},
        },
    }


def output_schema(data: type[msgspec.Struct]) -> dict[str, Any]:
    """The envelope schema with `data` typed by the tool's data Struct."""
    data_ref, defs = struct_schema(data)
    common = ["success", "tool", "tool_version", "timestamp", "duration_ms", "host", "warnings"]
    return {
        "type": "object",
        "required": common,
        "properties": {
            "success": {"type": "boolean"},
            "tool": {"type": "string"},
            "tool_version": {"type": "string"},
            "timestamp": {"type": "string", "description": "UTC, ISO 8601"},
            "duration_ms": {"type": "number"},
            "host": {"type": "string"},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "truncated": {"type": "boolean", "description": "Some output was cut at a cap"},
            "data": data_ref,
            "error": _error_schema(),
        },
        "oneOf": [
            {"properties": {"success": {"const": True}}, "required": ["data"]},
            {"properties": {"success": {"const": False}}, "required": ["error"]},
        ],
        "$defs": defs,
    }
