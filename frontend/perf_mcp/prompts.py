"""MCP prompts: short scripts of tool calls around perf_triage that a person or an
agent can pick (prompts/list, prompts/get).

Each prompt is one user message: the question, then the calls to make in order
and how to read them. Arguments are checked here (a pid is a positive integer
in range); a bad or missing argument is an INVALID_PARAMS error with the range,
an unknown prompt name one that lists the prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mcp_types as types
from mcp.shared.exceptions import MCPError

from perf_mcp_protocol import limits

INVALID_PARAMS = -32602


@dataclass(frozen=True)
class PromptSpec:
    name: str
    title: str
    description: str
    arguments: tuple[types.PromptArgument, ...]
    render: Callable[[dict[str, str]], str]


def _machine_slow(_: dict[str, str]) -> str:
    return (
        "Why is this machine slow? Find the root cause with the perf-mcp tools:\n"
        "1. Call perf_triage with mode=\"quick\" (about 5 s, no privileges). Read data.root_causes in order: each "
        "has a kind, the culprit (process, thread, cgroup, device, interface, peer or name), its evidence and "
        "`next`, the tool call that confirms it.\n"
        "2. If no root cause is warning or critical, or the top one is not confident (confidence < 0.7), call "
        "perf_triage with mode=\"standard\" (about 10 s, adds tracing); still unclear: mode=\"deep\" (about 30 s).\n"
        "3. Make the `next` call of the top root cause with its arguments as given, and check that its answer "
        "confirms the culprit.\n"
        "4. Report: the root cause, the culprit, the evidence with its numbers, since when, and what to change. "
        "Say what perf_triage listed in could_not_run and blind_spots: those are what the answer could not see."
    )


def _process_slow(args: dict[str, str]) -> str:
    pid = args["pid"]
    return (
        f"Why is process {pid} slow? Find out with the perf-mcp tools:\n"
        f"1. Call perf_triage with mode=\"standard\" and pid={pid}: its threads (one thread bound to a CPU?), "
        "its off-CPU stacks (blocked on a lock, pipe, futex or I/O?), its cgroup (CPU quota throttling, memory "
        "limit), run-queue latency and system calls for this process, next to the machine's USE table.\n"
        "2. Read data.root_causes: a root cause whose culprit is this pid (or its cgroup) answers the question; "
        "one on another process or device means the machine, not the process, is the problem.\n"
        f"3. Make the `next` call of the top root cause. If it says the process is on CPU, call perf_cpu_profile "
        f"with pid={pid}; if blocked, perf_offcpu_profile with pid={pid}; if throttled, perf_cgroup_summary with "
        f"pid={pid}.\n"
        "4. Report the cause, the evidence with its numbers, and what could not be seen (could_not_run, "
        "blind_spots)."
    )


def _disk_bottleneck(_: dict[str, str]) -> str:
    return (
        "Is the disk the bottleneck? Answer with the perf-mcp tools:\n"
        "1. Call perf_triage with mode=\"standard\" and focus=\"disk\". A disk.saturation root cause names the "
        "device and, when one process issues most of the bytes, that process; disk.capacity names a filesystem "
        "nearly full. None of them (and no io PSI in the evidence): the disk is not the bottleneck, say so and "
        "call perf_triage with mode=\"quick\" to see what is.\n"
        "2. To confirm, call perf_io_latency with the device of the root cause (await and queue per device), "
        "then perf_bio_latency with that device for the latency distribution, and perf_io_layers with "
        "include_details=true to see which processes issue the I/O and how much the page cache absorbs.\n"
        "3. Report: the device, its utilisation, queue and latency, the process responsible, and whether the "
        "device serves requests in parallel (virtio, NVMe: %util near 100 is not saturation there)."
    )


PID_ARGUMENT = types.PromptArgument(
    name="pid", title="Process id", required=True,
    description=f"The slow process's pid (an integer from {limits.PID_MIN} to {limits.PID_MAX}).")

PROMPTS: dict[str, PromptSpec] = {p.name: p for p in (
    PromptSpec("why_is_this_machine_slow", "Why is this machine slow?",
               "Triage the whole machine: perf_triage quick, then standard if needed, then the suggested next call.",
               (), _machine_slow),
    PromptSpec("why_is_process_slow", "Why is process N slow?",
               "Triage one process: perf_triage standard with its pid (threads, off-CPU, cgroup), then the "
               "profile that fits.", (PID_ARGUMENT,), _process_slow),
    PromptSpec("is_the_disk_the_bottleneck", "Is the disk the bottleneck?",
               "perf_triage with focus=disk, then perf_io_latency, perf_bio_latency and perf_io_layers to confirm.",
               (), _disk_bottleneck),
)}


def list_prompts() -> list[types.Prompt]:
    return [types.Prompt(name=p.name, title=p.title, description=p.description, arguments=list(p.arguments) or None)
            for p in PROMPTS.values()]


def _check(spec: PromptSpec, arguments: dict[str, str] | None) -> dict[str, str]:
    args = dict(arguments or {})
    for a in spec.arguments:
        if a.required and a.name not in args:
            raise MCPError(INVALID_PARAMS, f"prompt {spec.name} needs the argument {a.name!r}: {a.description}")
    unknown = set(args) - {a.name for a in spec.arguments}
    if unknown:
        raise MCPError(INVALID_PARAMS, f"prompt {spec.name} has no argument(s) {', '.join(sorted(unknown))}")
    if "pid" in args:
        text = str(args["pid"]).strip()
        if not text.isdigit() or not limits.PID_MIN <= int(text) <= limits.PID_MAX:
            raise MCPError(INVALID_PARAMS, f"invalid pid {args['pid']!r}: an integer from {limits.PID_MIN} to "
                           f"{limits.PID_MAX}")
        args["pid"] = str(int(text))
    return args


def get_prompt(name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
    spec = PROMPTS.get(name)
    if spec is None:
        raise MCPError(INVALID_PARAMS, f"no prompt named {name!r}; prompts: {', '.join(PROMPTS)}")
    text = spec.render(_check(spec, arguments))
    return types.GetPromptResult(description=spec.description, messages=[
        types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))])
