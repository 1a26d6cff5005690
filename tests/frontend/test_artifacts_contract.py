"""Artifact store (TTL, size cap) and the output contract (schemas, envelope, errors)."""

from __future__ import annotations

import jsonschema
import msgspec
import pytest

from perf_mcp.artifacts import ArtifactStore
from perf_mcp.contract import Envelope, ErrorInfo, input_schema, output_schema
from perf_mcp.errors import DEFAULT_SUGGESTION, ErrorCode, ToolError
from perf_mcp.registry import discover
from perf_mcp.server import describe_allowed, invalid_params_error
from perf_mcp.tools import perf_cpu_profile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_artifacts_expire_after_ttl() -> None:
    clock = Clock()
    store = ArtifactStore(ttl_s=60, max_total_bytes=1000, clock=clock)
    ref = store.put(store.new_group("t"), "a.txt", "text/plain", "hello")
    assert ref is not None and ref.uri.startswith("perf-mcp://artifacts/t-")
    assert store.get(ref.uri).content == b"hello"  # type: ignore[union-attr]
    clock.now += 59
    assert store.get(ref.uri) is not None
    clock.now += 2
    assert store.get(ref.uri) is None
    assert store.total_bytes == 0


def test_artifacts_evict_oldest_beyond_the_cap() -> None:
    store = ArtifactStore(ttl_s=600, max_total_bytes=100, clock=Clock())
    refs = [store.put("g", f"{i}", "text/plain", "x" * 40) for i in range(3)]
    assert store.get(refs[0].uri) is None  # type: ignore[union-attr]
    assert store.get(refs[1].uri) is not None and store.get(refs[2].uri) is not None  # type: ignore[union-attr]
    assert store.total_bytes == 80
    assert store.put("g", "big", "text/plain", "y" * 101) is None
    assert store.total_bytes == 80


def test_every_error_code_has_a_suggestion() -> None:
    for code in ErrorCode:
        assert DEFAULT_SUGGESTION[code]
        assert ToolError(code, "m").suggestion


def test_input_schema_is_a_root_object_with_ranges() -> None:
    schema = input_schema(perf_cpu_profile.Params)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["duration_s"]["minimum"] == 1 and props["duration_s"]["maximum"] == 60
    assert props["duration_s"]["default"] == 5.0
    assert props["sample_rate_hz"]["maximum"] == 999
    assert props["output_format"]["enum"] == ["collapsed", "summary"]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"duration_s": 3, "pid": 1}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"duration_s": 61}, schema)


def test_output_schema_accepts_success_and_failure_envelopes() -> None:
    schema = output_schema(perf_cpu_profile.CpuProfileData)
    jsonschema.Draft202012Validator.check_schema(schema)
    err = ToolError(ErrorCode.PID_NOT_FOUND, "no process 7")
    failure = msgspec.to_builtins(Envelope(success=False, tool="perf_cpu_profile", tool_version="1", timestamp="t",
                                           duration_ms=1.0, host="h", warnings=[], truncated=False,
                                           error=ErrorInfo.from_error(err)))
    jsonschema.validate(failure, schema)
    assert "data" not in failure
    bad = dict(failure, success=True)  # success without data must not validate
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_registry_discovers_both_tools_with_valid_schemas() -> None:
    reg = discover()
    assert {"perf_info", "perf_cpu_profile"} <= set(reg.tools)
    for spec in reg.tools.values():
        jsonschema.Draft202012Validator.check_schema(spec.input_schema())
        jsonschema.Draft202012Validator.check_schema(spec.output_schema())


@pytest.mark.parametrize(
    ("args", "field", "allowed"),
    [
        ({"duration_s": 0}, "duration_s", "a number from 1.0 to 60.0"),
        ({"duration_s": 61}, "duration_s", "from 1.0 to 60.0"),
        ({"sample_rate_hz": 1000}, "sample_rate_hz", "an integer from 1 to 999"),
        ({"pid": 0}, "pid", "an integer from 1 to 4194304"),
        ({"pid": 2**31}, "pid", "4194304"),
        ({"pid": "1; rm -rf /"}, "pid", "an integer"),
        ({"output_format": "../x"}, "output_format", "one of 'collapsed', 'summary'"),
        ({"include_kernel": "maybe"}, "include_kernel", "true or false"),
    ],
)
def test_invalid_params_name_the_field_and_the_range(args: dict, field: str, allowed: str) -> None:
    spec = discover().tools["perf_cpu_profile"]
    schema = spec.input_schema()
    with pytest.raises(msgspec.ValidationError) as exc:
        msgspec.convert(args, spec.params, strict=False)
    err = invalid_params_error(spec, exc.value, schema)
    assert err.code is ErrorCode.INVALID_PARAMS
    assert field in err.message and allowed in err.message, err.message


def test_unknown_parameter_lists_the_real_ones() -> None:
    spec = discover().tools["perf_cpu_profile"]
    with pytest.raises(msgspec.ValidationError) as exc:
        msgspec.convert({"durashun": 5}, spec.params, strict=False)
    err = invalid_params_error(spec, exc.value, spec.input_schema())
    assert "durashun" in err.message and "duration_s" in err.message


def test_describe_allowed() -> None:
    assert describe_allowed({"type": "integer", "minimum": 1}) == "an integer >= 1"
    assert describe_allowed({"anyOf": [{"type": "integer"}, {"type": "null"}]}) == "an integer or null (omit it)"


class _Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class _Data(msgspec.Struct, kw_only=True):
    n: int


async def test_handler_failures_become_typed_errors_and_the_app_keeps_serving() -> None:
    import trio

    from perf_mcp.broker_client import BrokerClient
    from perf_mcp.registry import Registry, ToolOutput, ToolSpec
    from perf_mcp.server import App

    async def boom(ctx: object, p: _Params) -> ToolOutput:
        raise ZeroDivisionError("oops")

    async def grouped(ctx: object, p: _Params) -> ToolOutput:
        async with trio.open_nursery() as n:  # a ToolError from inside a nursery arrives wrapped in a group
            async def fail() -> None:
                raise ToolError(ErrorCode.DEVICE_NOT_FOUND, "no sdz")
            n.start_soon(fail)
        raise AssertionError("unreachable")

    async def ok(ctx: object, p: _Params) -> ToolOutput:
        return ToolOutput(data=_Data(n=1), summary="fine", warnings=["w"])

    reg = Registry()
    for name, fn in (("t_boom", boom), ("t_group", grouped), ("t_ok", ok)):
        reg.add(ToolSpec(name=name, title=name, description=name, params=_Params, data=_Data, handler=fn))
    app = App(reg, BrokerClient("/nonexistent"))

    async def progress(*a: object) -> None:
        pass

    r = await app.call("t_boom", {}, progress)
    assert r.is_error and r.structured_content["error"]["code"] == "EXECUTION_FAILED"
    assert "ZeroDivisionError" in r.structured_content["error"]["message"]
    r = await app.call("t_group", None, progress)
    assert r.is_error and r.structured_content["error"]["code"] == "DEVICE_NOT_FOUND"
    r = await app.call("t_ok", {}, progress)
    assert not r.is_error and r.structured_content["data"] == {"summary": "fine", "n": 1}  # summary first
    assert r.structured_content["warnings"] == ["w"] and r.content[0].text == "fine\nwarning: w"
    jsonschema.validate(r.structured_content, reg.tools["t_ok"].output_schema())
