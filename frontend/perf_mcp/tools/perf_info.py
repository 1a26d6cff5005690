"""perf_info: what this machine is and what this user may run on it.

Local facts come from /proc and /sys (sysinfo.collect); the broker adds its
hello (programs found, kernel features root can see), an access query (job
classes this user is granted) and `bpftrace --info`. Without a broker the tool
still answers, with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgspec
import trio

from perf_mcp_protocol import AccessQuery, AccessReply, BrokerHello, JobResult, ToolFeatures

from ..contract import Finding
from ..errors import ErrorCode, ToolError
from ..registry import ToolContext, ToolOutput, ToolSpec
from ..sysinfo import analysis, collect, parse
from ..trace.ladder import ToolLadder, host_ladders

log = logging.getLogger(__name__)

NAME = "perf_info"
BROKER_QUERY_TIMEOUT_S = 20.0


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BrokerStatus(msgspec.Struct, kw_only=True):
    available: bool
    socket: str
    error: str | None = None
    broker_version: str | None = None
    protocol_version: int | None = None
    programs: dict[str, str] = {}
    missing_programs: list[str] = []
    job_kinds: list[str] = []
    output_cap_bytes: int | None = None
    max_jobs_per_uid: int | None = None
    max_jobs: int | None = None
    granted: list[str] = []
    denied: list[str] = []
    uid_seen: int | None = None
    access_detail: str | None = None


class PerfInfoData(msgspec.Struct, kw_only=True):
    kernel: collect.KernelInfo
    cpu: collect.CpuSummary
    memory: collect.MemorySummary
    virtualisation: parse.Virtualisation
    cgroup: collect.CgroupSummary
    psi: collect.PsiSummary
    features: analysis.ProbeFeatures
    broker: BrokerStatus
    capabilities: dict[str, bool]
    ladders: list[ToolLadder]  # per tracing tool: the rung it takes first here, and why others are skipped
    findings: list[Finding]


@dataclass
class _BrokerView:
    hello: BrokerHello | None = None
    access: AccessReply | None = None
    bpftrace_info: str | None = None
    errors: list[ToolError] = field(default_factory=list)


async def _ask_broker(ctx: ToolContext) -> _BrokerView:
    view = _BrokerView()

    async def access() -> None:
        try:
            reply = await ctx.broker.run(AccessQuery(), timeout_s=BROKER_QUERY_TIMEOUT_S)
        except ToolError as err:
            view.errors.append(err)
            return
        view.hello = reply.hello
        if isinstance(reply.final, AccessReply):
            view.access = reply.final

    async def features() -> None:
        try:
            reply = await ctx.broker.run(ToolFeatures(), timeout_s=BROKER_QUERY_TIMEOUT_S)
        except ToolError as err:
            view.errors.append(err)
            return
        view.hello = view.hello or reply.hello
        if isinstance(reply.final, JobResult) and reply.final.steps:
            step = reply.final.steps[0]
            if step.exit_status == 0:
                # bpftrace 0.17 writes --info to stderr; later versions to stdout.
                view.bpftrace_info = (step.stdout.strip() or step.stderr).decode("utf-8", "replace")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(access)
        nursery.start_soon(features)
    return view


def _broker_status(socket: str, view: _BrokerView) -> BrokerStatus:
    h = view.hello
    if h is None:
        err = view.errors[0] if view.errors else None
        return BrokerStatus(available=False, socket=socket, error=err.message if err else "no answer")
    a = view.access
    return BrokerStatus(
        available=True, socket=socket, broker_version=h.broker_version, protocol_version=h.protocol_version,
        programs=dict(h.programs), missing_programs=list(h.missing), job_kinds=list(h.job_kinds),
        output_cap_bytes=h.output_cap, max_jobs_per_uid=h.max_jobs_per_uid, max_jobs=h.max_jobs,
        granted=[c.value for c in a.granted] if a else [], denied=[c.value for c in a.denied] if a else [],
        uid_seen=a.uid if a else None, access_detail=a.detail if a else None,
        error="; ".join(e.message for e in view.errors) or None,
    )


def capabilities(b: BrokerStatus, f: analysis.ProbeFeatures) -> dict[str, bool]:
    tracers = {"bpftrace"} | {p for p in b.programs if p not in ("perf", "bpftrace")}
    return {
        "procfs_tools": True,
        "cpu_profile": b.available and "profile" in b.granted and "perf" in b.programs and "cpu_profile" in b.job_kinds,
        "ebpf_tracing": b.available and "trace" in b.granted and bool(tracers & set(b.programs)) and bool(f.btf or f.tracefs),
        "inspect_other_users": b.available and "inspect" in b.granted,
        "kprobes": bool(f.kprobes),
        "fentry": bool(f.fentry),
    }


def collect_local() -> tuple[collect.KernelInfo, collect.CpuSummary, collect.MemorySummary, collect.CgroupSummary,
                             collect.PsiSummary, collect.LocalFeatures, parse.Virtualisation]:
    mounts = collect.mounts()
    cg = collect.cgroup_summary(mounts)
    return (collect.kernel_info(), collect.cpu_summary(), collect.memory_summary(), cg, collect.psi_summary(),
            collect.local_features(mounts), collect.virtualisation(collect.hypervisor_flag(), cg.own_cgroup))


async def run(ctx: ToolContext, p: Params) -> ToolOutput:
    (kernel, cpu, mem, cg, psi, local, virt), view = await _gather(ctx)
    warnings: list[str] = []
    broker = _broker_status(ctx.broker.socket_path, view)
    if not broker.available:
        warnings.append(f"broker unavailable ({broker.error}): broker-side facts are missing and profiling/tracing "
                        "tools will fail. " + (view.errors[0].suggestion if view.errors else ""))
    else:
        for err in view.errors:
            if err.code is ErrorCode.CAPABILITY_MISSING:
                warnings.append(f"bpftrace --info unavailable ({err.message}); fentry support unknown")
            else:
                warnings.append(f"broker query failed: {err.code.value}: {err.message}")
    kernel_facts = msgspec.to_builtins(view.hello.kernel) if view.hello else None
    info = parse.parse_bpftrace_info(view.bpftrace_info) if view.bpftrace_info else None
    features = analysis.probe_features(
        local_btf=local.btf, local_tracefs=local.tracefs_mounted, tracepoint_pmu=local.tracepoint_pmu,
        uprobe_pmu=local.uprobe_pmu, kprobe_pmu=local.kprobe_pmu, paranoid=local.perf_event_paranoid,
        kptr_restrict=local.kptr_restrict, broker_kernel=kernel_facts, bpftrace_info=info,
    )
    data = PerfInfoData(kernel=kernel, cpu=cpu, memory=mem, virtualisation=virt, cgroup=cg, psi=psi,
                        features=features, broker=broker, capabilities=capabilities(broker, features),
                        ladders=host_ladders(view.hello),
                        findings=analysis.findings(cpu, mem, psi, virt, features))
    return ToolOutput(data=data, summary=summarise(data), warnings=warnings)


async def _gather(ctx: ToolContext) -> tuple[tuple, _BrokerView]:  # type: ignore[type-arg]
    result: dict[str, object] = {}

    async def local() -> None:
        result["local"] = await trio.to_thread.run_sync(collect_local)

    async def broker() -> None:
        result["broker"] = await _ask_broker(ctx)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(local)
        nursery.start_soon(broker)
    return result["local"], result["broker"]  # type: ignore[return-value]


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.1f} GiB" if n is not None else "?"


def _yn(v: bool | None) -> str:
    return "unknown" if v is None else ("yes" if v else "no")


def summarise(d: PerfInfoData) -> str:
    c, m, f, b = d.cpu, d.memory, d.features, d.broker
    v = d.virtualisation
    where = ("VM" + (f" ({v.hypervisor}{f', {v.vmm}' if v.vmm else ''})" if v.hypervisor else "")
             if d.virtualisation.virtualised else "bare metal")
    if d.virtualisation.container:
        where += f", container {d.virtualisation.container}"
    lines = [
        f"{d.kernel.os or 'Linux'}, kernel {d.kernel.release} {d.kernel.arch}, {c.online_cpus} CPUs "
        f"({c.model or 'unknown model'}), {_gib(m.total_bytes)} RAM, {where}",
        f"CPU: {c.physical_cores or '?'} cores, {c.sockets or '?'} socket(s), {c.numa_nodes} NUMA node(s), "
        f"governor {c.governor or 'n/a'}, hardware PMU {_yn(c.hardware_pmu)}",
        f"Memory: available {_gib(m.available_bytes)}, swap {_gib(m.swap_total_bytes)}, THP {m.thp_enabled or 'n/a'}, "
        f"hugepages {m.hugepages_total or 0}",
        f"cgroup {d.cgroup.version}, PSI {_yn(d.psi.available)}, BTF {_yn(f.btf)}, tracefs {_yn(f.tracefs)}, "
        f"kprobes {_yn(f.kprobes)}, fentry {_yn(f.fentry)}, tracepoints {_yn(f.tracepoints)}, uprobes {_yn(f.uprobes)}, "
        f"perf_event_paranoid {f.perf_event_paranoid}",
    ]
    if b.available:
        lines.append(f"Broker {b.broker_version} at {b.socket}: granted {', '.join(b.granted) or 'nothing'}"
                     + (f", denied {', '.join(b.denied)}" if b.denied else "")
                     + f"; programs {', '.join(sorted(b.programs)) or 'none'}"
                     + (f"; missing {', '.join(b.missing_programs)}" if b.missing_programs else ""))
    else:
        lines.append(f"Broker: not available at {b.socket}")
    lines.append("Can run: " + ", ".join(k for k, v in d.capabilities.items() if v))
    if d.ladders:
        lines.append("Tracing backends here: " + "; ".join(f"{x.tool}: {x.first_ready or 'none'}" for x in d.ladders))
    lines += [f"[{x.severity}] {x.title}" for x in d.findings]
    return "\n".join(lines)


TOOL = ToolSpec(
    name=NAME,
    title="System and capability information",
    description=(
        "Describe this Linux machine and what perf-mcp can do on it: kernel and distribution, CPU model, "
        "cores, NUMA, frequency governor, hardware PMU, memory, THP and huge pages, virtualisation and "
        "container detection, cgroup version, PSI, BTF, tracefs, kprobes/fentry/tracepoint/uprobe support, "
        "perf_event_paranoid, which programs the broker found and which job classes (profile, trace, inspect) "
        "this user is granted. Call it first. Works without the broker (with a warning)."
    ),
    params=Params,
    data=PerfInfoData,
    handler=run,
)
