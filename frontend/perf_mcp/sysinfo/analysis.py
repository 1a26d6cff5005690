"""Findings and capability verdicts from perf_info's facts (pure)."""

from __future__ import annotations

import msgspec

from ..contract import Evidence, Finding, next_call, sort_findings
from .collect import CpuSummary, MemorySummary, PsiSummary
from .parse import Virtualisation

TOOL = "perf_info"


class ProbeFeatures(msgspec.Struct, kw_only=True):
    """What kernel tracing can do here; None = could not tell (no broker, not readable)."""

    btf: bool | None
    tracefs: bool | None
    kprobes: bool | None
    fentry: bool | None
    tracepoints: bool | None
    uprobes: bool | None
    perf_event_paranoid: int | None
    kptr_restrict: int | None
    bpftrace_probe_types: dict[str, bool]
    sources: dict[str, str]  # feature -> where the answer came from


def probe_features(
    *,
    local_btf: bool,
    local_tracefs: bool,
    tracepoint_pmu: bool,
    uprobe_pmu: bool,
    kprobe_pmu: bool,
    paranoid: int | None,
    kptr_restrict: int | None,
    broker_kernel: dict[str, object] | None,
    bpftrace_info: dict[str, dict[str, str]] | None,
) -> ProbeFeatures:
    """Merge local sysfs hints, the broker's root-side view and `bpftrace --info`.

    kprobes: the broker's kprobe_events (root can see tracefs) wins over bpftrace, which reports
    'kprobe: yes' from its build even on kernels without CONFIG_KPROBES; without a broker the
    kprobe PMU in /sys/bus/event_source/devices tells. fentry: bpftrace's 'kfunc' line.
    """
    sources: dict[str, str] = {}
    probe_types: dict[str, bool] = {}
    if bpftrace_info:
        for key, value in bpftrace_info.get("Probe types", {}).items():
            v = value.strip().lower()
            if v in ("yes", "no"):
                probe_types[key] = v == "yes"
    bk = broker_kernel or {}

    kprobes: bool | None
    if "kprobe_events" in bk:
        kprobes = bool(bk["kprobe_events"])
        sources["kprobes"] = "broker: tracefs kprobe_events"
    else:
        kprobes = kprobe_pmu
        sources["kprobes"] = "local: kprobe PMU in /sys/bus/event_source/devices"
    fentry: bool | None = probe_types.get("kfunc")
    sources["fentry"] = "bpftrace --info: kfunc" if fentry is not None else "unknown (no bpftrace --info)"
    tracefs: bool | None
    if "tracefs" in bk:
        tracefs = bool(bk["tracefs"])
        sources["tracefs"] = "broker"
    else:
        tracefs = local_tracefs
        sources["tracefs"] = "local: /proc/self/mountinfo"
    btf = bool(bk["btf"]) if "btf" in bk else local_btf
    sources["btf"] = "broker" if "btf" in bk else "local: /sys/kernel/btf/vmlinux"
    tracepoints = probe_types.get("tracepoint", tracepoint_pmu) and bool(tracefs)
    sources["tracepoints"] = "bpftrace --info and tracefs" if "tracepoint" in probe_types else "local: tracepoint PMU"
    uprobes = uprobe_pmu
    sources["uprobes"] = "local: uprobe PMU in /sys/bus/event_source/devices"
    bk_paranoid = bk.get("perf_event_paranoid")
    bk_kptr = bk.get("kptr_restrict")
    return ProbeFeatures(
        btf=btf, tracefs=tracefs, kprobes=kprobes, fentry=fentry, tracepoints=tracepoints, uprobes=uprobes,
        perf_event_paranoid=paranoid if paranoid is not None else (bk_paranoid if isinstance(bk_paranoid, int) else None),
        kptr_restrict=kptr_restrict if kptr_restrict is not None else (bk_kptr if isinstance(bk_kptr, int) else None),
        bpftrace_probe_types=probe_types, sources=sources,
    )


def findings(cpu: CpuSummary, mem: MemorySummary, psi: PsiSummary, virt: Virtualisation,
             features: ProbeFeatures) -> list[Finding]:
    out: list[Finding] = []
    if not cpu.hardware_pmu:
        out.append(Finding(
            id="perf_info.no_hardware_pmu", severity="info", resource="cpu",
            title="No hardware PMU: perf samples on the cpu-clock timer",
            detail="No CPU PMU is registered with perf (usual in VMs); cycles, instructions and cache-miss "
                   "counters are not available, but timer-based CPU profiles work.",
            confidence=0.95, evidence=[Evidence(tool=TOOL, counter="/sys/bus/event_source/devices/cpu", value="absent")],
            suggestion="Use perf_cpu_profile as usual; its method field says cpu-clock.",
            next=next_call("perf_cpu_profile", duration_s=10),
        ))
    if cpu.governor == "powersave":
        out.append(Finding(
            id="perf_info.powersave_governor", severity="warning", resource="cpu",
            title="CPU frequency governor is powersave",
            detail="With the powersave governor CPUs may run at low clock rates and add latency under load.",
            confidence=0.8, evidence=[Evidence(tool=TOOL, counter="cpufreq/scaling_governor", value=cpu.governor)],
            suggestion="For latency-sensitive work consider the performance or schedutil governor.",
        ))
    if virt.virtualised:
        out.append(Finding(
            id="perf_info.virtual_machine", severity="info", resource="cpu",
            title=("Running in a virtual machine"
                   + (f" ({virt.hypervisor}{f', {virt.vmm}' if virt.vmm else ''})" if virt.hypervisor else "")),
            detail="CPU time can be taken by the host (steal time); hardware counters are often missing.",
            confidence=0.9, evidence=[Evidence(tool=TOOL, counter="; ".join(virt.evidence) or "cpu flags")],
            suggestion="Watch steal time with perf_snapshot when CPU looks slow.",
            next=next_call("perf_snapshot"),
        ))
    if mem.thp_enabled == "always":
        out.append(Finding(
            id="perf_info.thp_always", severity="info", resource="memory",
            title="Transparent huge pages are enabled for every mapping",
            detail="THP 'always' can cause latency spikes from compaction and memory bloat in some workloads.",
            confidence=0.6, evidence=[Evidence(tool=TOOL, counter="transparent_hugepage/enabled", value="always")],
            suggestion="If you see compaction stalls, try 'madvise'.",
        ))
    if not psi.available:
        out.append(Finding(
            id="perf_info.no_psi", severity="info", resource="cpu",
            title="Pressure stall information (PSI) is not available",
            detail="/proc/pressure is missing: the kernel lacks CONFIG_PSI or was booted with psi=0.",
            confidence=0.9, evidence=[Evidence(tool=TOOL, counter="/proc/pressure", value="absent")],
            suggestion="Boot with psi=1 to get stall percentages; perf_use_check then uses them.",
        ))
    return sort_findings(out)
