"""Reading the files perf_info needs (I/O only; parsing is in parse.py).

Every read is tolerant: a missing or unreadable file gives None, never an
exception, because an unprivileged user cannot read everything.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import msgspec

from . import parse

ROOT = Path("/")


def read_text(path: str | Path, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


class KernelInfo(msgspec.Struct, kw_only=True):
    release: str
    version: str
    arch: str
    os: str | None
    uptime_s: float | None


class CpuSummary(msgspec.Struct, kw_only=True):
    model: str | None
    vendor: str | None
    logical_cpus: int
    online_cpus: int
    physical_cores: int | None
    sockets: int | None
    threads_per_core: int | None
    numa_nodes: int
    governor: str | None  # None when there is no cpufreq (common in VMs)
    scaling_driver: str | None
    hardware_pmu: bool  # a CPU PMU is registered with perf (else perf samples on cpu-clock)


class MemorySummary(msgspec.Struct, kw_only=True):
    total_bytes: int | None
    available_bytes: int | None
    swap_total_bytes: int | None
    swap_free_bytes: int | None
    thp_enabled: str | None
    thp_defrag: str | None
    hugepages_total: int | None
    hugepages_free: int | None
    hugepage_size_bytes: int | None


class CgroupSummary(msgspec.Struct, kw_only=True):
    version: str
    v2_mount: str | None
    v1_controllers: list[str]
    v2_controllers: list[str]
    own_cgroup: dict[str, str]  # this server's /proc/self/cgroup


class PsiSummary(msgspec.Struct, kw_only=True):
    available: bool
    some_avg10: dict[str, float]  # resource -> 'some' avg10 now
    full_avg10: dict[str, float]


class LocalFeatures(msgspec.Struct, kw_only=True):
    btf: bool
    tracefs_mounted: bool
    tracepoint_pmu: bool
    uprobe_pmu: bool
    kprobe_pmu: bool
    perf_event_paranoid: int | None
    kptr_restrict: int | None
    unprivileged_bpf_disabled: int | None


def kernel_info() -> KernelInfo:
    u = os.uname()
    osr = parse.parse_os_release(read_text("/etc/os-release") or read_text("/usr/lib/os-release") or "")
    up = read_text("/proc/uptime")
    uptime = None
    if up and up.split():
        try:
            uptime = float(up.split()[0])
        except ValueError:
            pass
    return KernelInfo(release=u.release, version=u.version, arch=u.machine, os=osr.get("PRETTY_NAME"), uptime_s=uptime)


def cpu_summary() -> CpuSummary:
    info = parse.parse_cpuinfo(read_text("/proc/cpuinfo") or "")
    online = parse.parse_cpu_list(read_text("/sys/devices/system/cpu/online") or "")
    nodes = parse.parse_cpu_list(read_text("/sys/devices/system/node/online") or "") or [0]
    freq = "/sys/devices/system/cpu/cpu0/cpufreq"
    governor = (read_text(f"{freq}/scaling_governor") or "").strip() or None
    driver = (read_text(f"{freq}/scaling_driver") or "").strip() or None
    siblings = parse.parse_cpu_list(read_text("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list") or "")
    pmus = Path("/sys/bus/event_source/devices")
    pmu = any((pmus / d).exists() for d in ("cpu", "cpu_core", "cpu_atom", "armv8_pmuv3", "armv8_pmuv3_0"))
    logical = info.logical_cpus or os.cpu_count() or len(online)
    return CpuSummary(model=info.model, vendor=info.vendor, logical_cpus=logical, online_cpus=len(online) or logical,
                      physical_cores=info.physical_cores, sockets=info.sockets,
                      threads_per_core=len(siblings) or None, numa_nodes=len(nodes),
                      governor=governor, scaling_driver=driver, hardware_pmu=pmu)


def hypervisor_flag() -> bool:
    return parse.parse_cpuinfo(read_text("/proc/cpuinfo") or "").hypervisor_flag


def memory_summary() -> MemorySummary:
    mi = parse.parse_meminfo(read_text("/proc/meminfo") or "")
    thp = "/sys/kernel/mm/transparent_hugepage"
    enabled, defrag = read_text(f"{thp}/enabled"), read_text(f"{thp}/defrag")
    return MemorySummary(
        total_bytes=mi.get("MemTotal"), available_bytes=mi.get("MemAvailable"),
        swap_total_bytes=mi.get("SwapTotal"), swap_free_bytes=mi.get("SwapFree"),
        thp_enabled=parse.parse_bracketed_choice(enabled) if enabled else None,
        thp_defrag=parse.parse_bracketed_choice(defrag) if defrag else None,
        hugepages_total=mi.get("HugePages_Total"), hugepages_free=mi.get("HugePages_Free"),
        hugepage_size_bytes=mi.get("Hugepagesize"),
    )


def mounts() -> list[parse.Mount]:
    return parse.parse_mountinfo(read_text("/proc/self/mountinfo") or "")


def cgroup_summary(mount_list: list[parse.Mount]) -> CgroupSummary:
    layout = parse.cgroup_layout(mount_list)
    v2_ctrl: list[str] = []
    if layout.v2_mount:
        v2_ctrl = (read_text(os.path.join(layout.v2_mount, "cgroup.controllers")) or "").split()
    own = parse.parse_proc_cgroup(read_text("/proc/self/cgroup") or "")
    return CgroupSummary(version=layout.version, v2_mount=layout.v2_mount, v1_controllers=layout.v1_controllers,
                         v2_controllers=v2_ctrl, own_cgroup=own)


def psi_summary() -> PsiSummary:
    some: dict[str, float] = {}
    full: dict[str, float] = {}
    for res in ("cpu", "memory", "io"):
        text = read_text(f"/proc/pressure/{res}")
        if text is None:
            continue
        lines = parse.parse_pressure(text)
        if "some" in lines:
            some[res] = lines["some"].avg10
        if "full" in lines:
            full[res] = lines["full"].avg10
    return PsiSummary(available=bool(some), some_avg10=some, full_avg10=full)


def local_features(mount_list: list[parse.Mount]) -> LocalFeatures:
    pmus = Path("/sys/bus/event_source/devices")
    return LocalFeatures(
        btf=os.path.exists("/sys/kernel/btf/vmlinux"),
        tracefs_mounted=any(m.fstype == "tracefs" for m in mount_list),
        tracepoint_pmu=(pmus / "tracepoint").exists(),
        uprobe_pmu=(pmus / "uprobe").exists(),
        kprobe_pmu=(pmus / "kprobe").exists(),
        perf_event_paranoid=parse.parse_int(read_text("/proc/sys/kernel/perf_event_paranoid")),
        kptr_restrict=parse.parse_int(read_text("/proc/sys/kernel/kptr_restrict")),
        unprivileged_bpf_disabled=parse.parse_int(read_text("/proc/sys/kernel/unprivileged_bpf_disabled")),
    )


def virtualisation(hyp_flag: bool, own_cgroup: dict[str, str]) -> parse.Virtualisation:
    dmi = {k: v for k in ("sys_vendor", "product_name", "bios_vendor", "board_vendor")
           if (v := read_text(f"/sys/class/dmi/id/{k}")) is not None}
    markers: dict[str, str] = {}
    if os.path.exists("/.dockerenv"):
        markers["/.dockerenv"] = "docker"
    if os.path.exists("/run/.containerenv"):
        markers["/run/.containerenv"] = "podman"
    if env := os.environ.get("container"):
        markers[f"$container={env}"] = env
    if kind := parse.container_from_cgroup(own_cgroup):
        markers[f"cgroup path ({kind})"] = kind
    if glob.glob("/proc/vz") and not os.path.exists("/proc/bc"):
        markers["/proc/vz"] = "openvz"
    try:
        platform = sorted(os.listdir("/sys/bus/platform/devices"))
    except OSError:
        platform = []
    return parse.detect_virtualisation(hypervisor_flag=hyp_flag, dmi=dmi,
                                       hypervisor_type=read_text("/sys/hypervisor/type"),
                                       container_markers=markers,
                                       clocksources=read_text(
                                           "/sys/devices/system/clocksource/clocksource0/available_clocksource"),
                                       cmdline=read_text("/proc/cmdline"), platform_devices=platform,
                                       dmi_present=os.path.isdir("/sys/class/dmi/id"))
