"""Smoke test with a client we did not write: the MCP Inspector CLI (pinned 2.12.0).

npx runs `.venv/bin/perf-mcp` itself. The suite runs as root, so the server starts as
root and separates privileges (`sudo perf-mcp` mode): a root broker child, MCP served as
nobody. packaging/dev-setup.sh installs Node.js (Debian's nodejs and npm) and puts the
Inspector in npm's cache; a missing npx or an unreachable registry fails the test: this
is the one client in the suite that the project did not write.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

import helpers

pytestmark = [pytest.mark.root, pytest.mark.slow]

INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "network request", "ENETUNREACH")


def inspector(*args: str) -> tuple[int, Any, str]:
    npx = shutil.which("npx")
    if npx is None:
        pytest.fail("npx is not installed (Node.js is needed for the MCP Inspector CLI): run packaging/dev-setup.sh",
                    pytrace=False)
    proc = subprocess.run([npx, "-y", INSPECTOR, "--cli", str(helpers.FRONTEND_BIN), *args],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, cwd=helpers.REPO)
    if proc.returncode != 0 and any(e in proc.stderr for e in NETWORK_ERRORS) and not proc.stdout.strip():
        pytest.fail(f"the MCP Inspector could not be fetched (npm registry unreachable and not in npm's cache): "
                    f"{proc.stderr.strip().splitlines()[-1]}", pytrace=False)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        out = None
    return proc.returncode, out, proc.stderr


def test_inspector_lists_tools_with_schemas() -> None:
    rc, out, err = inspector("--method", "tools/list")
    assert rc == 0 and out is not None, err
    tools = {t["name"]: t for t in out["tools"]}
    assert {"perf_info", "perf_cpu_profile"} <= set(tools)
    for t in tools.values():
        assert t["inputSchema"]["type"] == "object"
        assert t["outputSchema"]["type"] == "object" and "data" in t["outputSchema"]["properties"]
        assert t["annotations"]["readOnlyHint"] is True and t["annotations"]["openWorldHint"] is False
        assert t["title"]


def test_inspector_calls_perf_info() -> None:
    rc, out, err = inspector("--method", "tools/call", "--tool-name", "perf_info")
    assert rc == 0 and out is not None, err
    assert out["isError"] is False
    sc = out["structuredContent"]
    assert sc["success"] is True and sc["tool"] == "perf_info"
    assert sc["data"]["broker"]["available"] is True  # the privilege-separated broker child answered
    assert out["content"][0]["type"] == "text"


def test_inspector_gets_a_typed_error() -> None:
    rc, out, err = inspector("--method", "tools/call", "--tool-name", "perf_cpu_profile", "--tool-arg", "duration_s=0")
    assert out is not None, err
    assert out["isError"] is True and out["structuredContent"]["error"]["code"] == "INVALID_PARAMS"
