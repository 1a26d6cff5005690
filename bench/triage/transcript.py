"""An agent-style session, recorded for the README: pick an MCP prompt, run perf_triage the way
the prompt says, then make the `next` call of the top root cause, all through a real MCP client
with the real frontend as perfmcp-granted and a real root broker, while a fault of the benchmark
runs. Prints Markdown (the prompt, each call's arguments, the answers' JSON) to stdout.

    sudo .venv/bin/python bench/triage/transcript.py                                  # throttled cgroup
    sudo .venv/bin/python bench/triage/transcript.py --scenario fd_leak --prompt why_is_this_machine_slow

Answers are shown as the agent gets them (structuredContent's data), with long lists cut to
their first entries (said where it happens). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

import helpers  # noqa: E402
from triage import faults  # noqa: E402
from triage.scenarios import SCENARIOS  # noqa: E402

KEEP_LIST = 3  # entries kept of each long list in the printed answers


def _trim(obj: Any) -> Any:
    """The answer with every list cut to KEEP_LIST entries (and a marker saying how many there were)."""
    if isinstance(obj, dict):
        return {k: _trim(v) for k, v in obj.items()}
    if isinstance(obj, list):
        out = [_trim(v) for v in obj[:KEEP_LIST]]
        if len(obj) > KEEP_LIST:
            out.append(f"... {len(obj) - KEEP_LIST} more")
        return out
    return obj


def _block(obj: Any) -> str:
    return "```json\n" + json.dumps(_trim(obj), indent=1, ensure_ascii=False) + "\n```"


async def session(scenario: str, prompt: str, mode: str) -> str:
    sc = SCENARIOS[scenario]
    out: list[str] = []
    workdir = helpers.make_shared_tmpdir("pmcp-transcript-")
    broker = helpers.start_broker(workdir)
    try:
        with faults.Env() as env, sc.fault(env, 90.0) as act:
            await trio.sleep(sc.settle_s)
            async with helpers.mcp_client(helpers.GRANTED_USER, broker.socket_path,
                                          read_timeout_seconds=180.0) as client:
                pargs = {"pid": str(act.pid)} if prompt == "why_is_process_slow" and act.pid else {}
                got = await client.get_prompt(prompt, pargs or None)
                text = got.messages[0].content.text
                out += [f"The fault running: {act.detail}.", "",
                        f"**1. The prompt** `{prompt}` {json.dumps(pargs) if pargs else ''} (prompts/get):", "",
                        "> " + text.replace("\n", "\n> "), ""]
                args: dict[str, Any] = {"mode": mode}
                if "pid" in pargs:
                    args["pid"] = act.pid
                triage = helpers.envelope(await client.call_tool("perf_triage", args))
                data = triage.get("data") or {}
                out += [f"**2. The agent calls** `perf_triage {json.dumps(args)}`; the answer's data:", "",
                        _block(data), ""]
                causes = data.get("root_causes") or []
                nxt = causes[0].get("next") if causes else None
                if not nxt:
                    out += ["(the top root cause suggests no next call)"]
                    return "\n".join(out)
                answer = helpers.envelope(await client.call_tool(nxt["tool"], nxt.get("arguments") or {}))
                out += [f"**3. The agent makes the top root cause's next call** "
                        f"`{nxt['tool']} {json.dumps(nxt.get('arguments') or {})}`; the answer's data:", "",
                        _block(answer.get("data") if answer.get("success") else answer.get("error")), ""]
    finally:
        problems = helpers.stop_broker(broker)
        helpers.remove_tree(workdir)
        if problems:
            print(f"broker: {problems}", file=sys.stderr)
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="throttled_cgroup", choices=sorted(SCENARIOS))
    p.add_argument("--prompt", default="why_is_process_slow",
                   choices=["why_is_this_machine_slow", "why_is_process_slow", "is_the_disk_the_bottleneck"])
    p.add_argument("--mode", default="standard", choices=["quick", "standard", "deep"])
    a = p.parse_args()
    print(trio.run(session, a.scenario, a.prompt, a.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
