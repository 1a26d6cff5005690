"""The broker's import closure holds no frontend, MCP, pydantic or netlink code (DESIGN.md)."""

from __future__ import annotations

import json
import subprocess

import helpers

# Top-level packages the broker must never load, with why.
FORBIDDEN = {
    "mcp": "the MCP SDK is the frontend's",
    "mcp_types": "the MCP SDK is the frontend's",
    "pydantic": "schema validation is msgspec's job in the broker",
    "pydantic_core": "schema validation is msgspec's job in the broker",
    "pyroute2": "netlink is read by the frontend",
    "perf_mcp": "frontend code",
    "starlette": "web stack of the SDK",
    "httpx": "web stack of the SDK",
    "httpx2": "web stack of the SDK",
    "httpcore": "web stack of the SDK",
    "httpcore2": "web stack of the SDK",
    "anyio": "the broker runs on trio alone (allowed only if trio itself pulls it in)",
}

_PROBE = r"""
import importlib, json, pkgutil, sys
modules, walk = json.loads(sys.argv[1])
for name in modules:
    importlib.import_module(name)
for package in walk:  # also every module of the package found on disk
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(modules: list[str], walk: list[str] = []) -> set[str]:
    """sys.modules of a fresh interpreter after importing ``modules`` (and every
    module of the packages in ``walk``)."""
    out = subprocess.run(
        [str(helpers.VENV_PYTHON), "-I", "-c", _PROBE, json.dumps([modules, walk])],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return set(json.loads(out.stdout))


def top_level(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_broker_import_closure_is_small() -> None:
    broker_modules = [
        "perf_mcp_broker",
        "perf_mcp_broker.__main__",
        "perf_mcp_broker.server",
        "perf_mcp_broker.runner",
        "perf_mcp_broker.jobs",
        "perf_mcp_broker.authz",
        "perf_mcp_broker.peer",
        "perf_mcp_broker.hardening",
    ]
    loaded = top_level(loaded_modules(broker_modules, walk=["perf_mcp_broker"]))
    assert {"perf_mcp_broker", "perf_mcp_protocol", "trio", "msgspec"} <= loaded
    trio_alone = top_level(loaded_modules(["trio"]))
    forbidden = {name for name in FORBIDDEN if not (name == "anyio" and "anyio" in trio_alone)}
    bad = sorted(loaded & forbidden)
    assert not bad, "the broker imports " + "; ".join(f"{b} ({FORBIDDEN[b]})" for b in bad)


def test_the_probe_sees_forbidden_modules() -> None:
    """The check above can fail: the frontend's closure does hold mcp and pydantic."""
    loaded = top_level(loaded_modules(["mcp"]))
    assert {"mcp", "pydantic"} <= loaded
