"""The instructions the server gives a client at initialize (what the client shows its model
before any tool call): start with perf_triage and follow its next calls, the prompts that
script it, and only tools that are served.

Through the real MCP client and the real frontend as a non-root user (no broker: initialize,
tools/list and prompts/list need none). Every `perf_*` word in the instructions must be a tool
in tools/list, and every prompt in prompts/list must be named.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import helpers

pytestmark = pytest.mark.root


async def test_instructions_start_with_perf_triage_and_name_only_served_tools_and_the_prompts(
        test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
        text = client.instructions
        served = {t.name for t in (await client.list_tools()).tools}
        prompt_names = {p.name for p in (await client.list_prompts()).prompts}
    print(f"\n{len(text or '')} characters:\n{text}")
    assert text, "the server gives no instructions at initialize"
    named = set(re.findall(r"\bperf_[a-z_]+", text))
    assert named and named <= served, f"not served: {named - served}"
    assert "perf_triage" in named and text.index("perf_triage") < 100  # the place to start, said first
    for word in ("quick", "standard", "deep", "pid", "focus", "next"):
        assert word in text, word
    assert prompt_names and all(name in text for name in prompt_names), prompt_names
    assert len(text) < 1000  # short: a client shows it before every conversation
