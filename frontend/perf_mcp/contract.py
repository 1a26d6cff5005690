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
#
# Schemas are sent in tools/list and, for outputSchema, checked by some clients on
# every call, so they are kept small: no titles, no struct docstrings, no defaults
# in output schemas, `type: [T, "null"]` instead of anyOf for optional scalars, a
# definition used once inlined where it is used, `required` only at the top of data.
# Field descriptions (Meta(description=...)) are kept: they are what helps an agent.
#
# The dialect: the output schema declares JSON Schema draft-07 ("$schema"). The
# Python SDK 1.x client calls jsonschema.validate() on every call, which first checks
# the schema against its dialect's meta-schema: ~100 ms for 2020-12 (the default
# without "$schema") against a few ms for draft-07. The SDK 2.x client
# (jsonschema's validator_for) and the TypeScript SDK (Ajv, in the MCP Inspector)
# accept draft-07. The data schema lives under "$defs" (a JSON pointer target,
# which draft-07's meta-schema does not descend into), so that per-call meta-schema
# check covers the small envelope only; validating the answer still follows the $ref.

DIALECT = "http://json-schema.org/draft-07/schema#"
_REF_TEMPLATE = "#/$defs/{name}"
_DROP_KEYS = ("title", "default")


def struct_schema(tp: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema, $defs) of a msgspec type, refs pointing at #/$defs/..."""
    (schema,), defs = msgspec.json.schema_components([tp], ref_template=_REF_TEMPLATE)
    return schema, defs


def _ref_name(node: Any) -> str | None:
    if isinstance(node, dict) and set(node) == {"$ref"}:
        ref = node["$ref"]
        prefix = _REF_TEMPLATE.format(name="")
        if isinstance(ref, str) and ref.startswith(prefix):
            return ref[len(prefix):]
    return None


def _count_refs(node: Any, counts: dict[str, int]) -> None:
    if isinstance(node, dict):
        if (name := _ref_name(node)) is not None:
            counts[name] = counts.get(name, 0) + 1
        for v in node.values():
            _count_refs(v, counts)
    elif isinstance(node, list):
        for v in node:
            _count_refs(v, counts)


def _compact(node: Any, defs: dict[str, Any], inline: set[str], *, is_def: bool = False,
             keep_required: bool = True, drop: tuple[str, ...] = _DROP_KEYS) -> Any:
    """One schema node made compact (see the comment above); `inline` names the
    definitions to paste in place of their $ref; keep_required=False drops the
    `required` lists (of nested output objects: what the server sends, not what a
    client must send)."""
    if isinstance(node, list):
        return [_compact(v, defs, inline, keep_required=keep_required, drop=drop) for v in node]
    if not isinstance(node, dict):
        return node
    if (name := _ref_name(node)) is not None and name in inline:
        return _compact(defs[name], defs, inline, is_def=True, keep_required=keep_required, drop=drop)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in drop or (key == "required" and not keep_required):
            continue
        if key == "description" and is_def:
            continue  # a struct's docstring: the field descriptions say what matters
        if key == "properties" and isinstance(value, dict):
            out[key] = {k: _compact(v, defs, inline, keep_required=keep_required, drop=drop) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "not"):
            out[key] = _compact(value, defs, inline, keep_required=keep_required, drop=drop)
        else:
            out[key] = value
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of:
        other = any_of[0] if any_of[1] == {"type": "null"} else any_of[1]
        if isinstance(other.get("type"), str) and "$ref" not in other and "enum" not in other:
            del out["anyOf"]
            out = {**other, **out, "type": [other["type"], "null"]}
        elif "enum" in other and set(other) == {"enum"}:
            del out["anyOf"]
            out = {**out, "enum": [*other["enum"], None]}
    return out


def compact_schema(schema: dict[str, Any], defs: dict[str, Any], *, nested_required: bool = True,
                   drop: tuple[str, ...] = _DROP_KEYS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema, definitions) with definitions used once inlined and the rest compacted;
    nested_required=False keeps only the root's `required` list."""
    counts: dict[str, int] = {}
    _count_refs(schema, counts)
    for d in defs.values():
        _count_refs(d, counts)
    inline = {name for name in defs if counts.get(name, 0) <= 1 and not _self_referencing(name, defs)}
    kr = nested_required
    kept = {name: _compact(d, defs, inline, is_def=True, keep_required=kr, drop=drop) for name, d in defs.items()
            if name not in inline}
    if (name := _ref_name(schema)) is not None and name in inline:
        schema = defs[name]
    root = _compact(schema, defs, inline, keep_required=kr, drop=drop)
    if "required" in schema:
        root["required"] = schema["required"]
    return root, kept


def _self_referencing(name: str, defs: dict[str, Any]) -> bool:
    """Whether a definition reaches itself through $refs (it cannot be inlined)."""
    seen: set[str] = set()
    stack = [defs[name]]
    while stack:
        counts: dict[str, int] = {}
        _count_refs(stack.pop(), counts)
        for ref in counts:
            if ref == name:
                return True
            if ref not in seen and ref in defs:
                seen.add(ref)
                stack.append(defs[ref])
    return False


def input_schema(params: type[msgspec.Struct]) -> dict[str, Any]:
    """A tool's inputSchema: the params Struct inlined as the root object (MCP wants type object there)."""
    schema, defs = struct_schema(params)
    name = params.__name__
    if schema.get("$ref") == _REF_TEMPLATE.format(name=name):
        schema = defs.pop(name)
    root, kept = compact_schema(schema, defs, drop=("title",))  # defaults say what an omitted argument is
    root.pop("description", None)  # the Params docstring: the tool's description says it
    root["type"] = "object"
    root.setdefault("properties", {})
    root.setdefault("additionalProperties", False)
    if kept:
        root["$defs"] = kept
    return root


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "message", "recoverable", "suggestion"],
        "properties": {
            "code": {"enum": [c.value for c in ErrorCode]},
            "message": {"type": "string"},
            "recoverable": {"type": "boolean", "description": "true: worth calling again (changed as the message says, or later)"},
            "suggestion": {"type": "string"},
        },
    }


SUMMARY_SCHEMA: dict[str, Any] = {"type": "string", "description": "One line: the answer in short"}


def data_schema(data: type[msgspec.Struct]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema of data, definitions): the Data struct, with `summary` first and required."""
    schema, defs = struct_schema(data)
    name = data.__name__
    if schema.get("$ref") == _REF_TEMPLATE.format(name=name):
        schema = defs.pop(name)
    root, kept = compact_schema(schema, defs, nested_required=False)
    root.pop("description", None)
    props = root.get("properties", {})
    props.pop("summary", None)
    root["properties"] = {"summary": SUMMARY_SCHEMA, **props}
    root["required"] = ["summary", *[r for r in root.get("required", []) if r != "summary"]]
    return root, kept


def output_schema(data: type[msgspec.Struct]) -> dict[str, Any]:
    """The envelope schema with `data` typed by the tool's data Struct (draft-07, see above)."""
    data_root, defs = data_schema(data)
    common = ["success", "tool", "tool_version", "timestamp", "duration_ms", "host", "warnings"]
    schema: dict[str, Any] = {
        "$schema": DIALECT,
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
            "data": {"$ref": _REF_TEMPLATE.format(name="data")},
            "error": _error_schema(),
        },
        "oneOf": [
            {"properties": {"success": {"const": True}}, "required": ["data"]},
            {"properties": {"success": {"const": False}}, "required": ["error"]},
        ],
    }
    schema["$defs"] = {"data": data_root, **defs}
    return schema
