"""Pure parsers for the files perf_info reads. Each takes text and returns typed data."""

from __future__ import annotations

import re

import msgspec

# ---------------------------------------------------------------- CPU


class CpuInfo(msgspec.Struct, kw_only=True):
    model: str | None
    vendor: str | None
    logical_cpus: int
    physical_cores: int | None
    sockets: int | None
    hypervisor_flag: bool


def parse_cpuinfo(text: str) -> CpuInfo:
    """/proc/cpuinfo (x86 and arm64 layouts): model, vendor, counts of logical CPUs, cores, sockets."""
    model = vendor = None
    logical = 0
    cores: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    hypervisor = False
    phys = core = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if phys is not None and core is not None:
                cores.add((phys, core))
            phys = core = None
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
        elif key in ("model name", "Processor", "cpu model") and model is None:
            model = value
        elif key in ("vendor_id", "CPU implementer") and vendor is None:
            vendor = value
        elif key == "physical id":
            phys = value
            sockets.add(value)
        elif key == "core id":
            core = value
        elif key in ("flags", "Features"):
            hypervisor = hypervisor or "hypervisor" in value.split()
    return CpuInfo(model=model, vendor=vendor, logical_cpus=logical, physical_cores=len(cores) or None,
                   sockets=len(sockets) or None, hypervisor_flag=hypervisor)


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,5,7-8' (sysfs cpu and node lists) -> [0, 1, 2, 3, 5, 7, 8]; garbage parts are skipped."""
    out: list[int] = []
    for part in text.strip().split(","):
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdecimal() or (sep and not hi.strip().isdecimal()):
            continue
        a = int(lo)
        b = int(hi) if sep else a
        if b - a > 65536:  # not a real CPU list
            continue
        out.extend(range(a, b + 1))
    return out


# ---------------------------------------------------------------- memory


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {field: bytes} ('kB' values are converted; HugePages_* stay counts)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdecimal():
            continue
        value = int(parts[0])
        if len(parts) > 1 and parts[1] == "kB":
            value *= 1024
        out[key.strip()] = value
    return out


def parse_bracketed_choice(text: str) -> str | None:
    """'always [madvise] never' -> 'madvise' (THP and similar sysfs switches)."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else (text.strip() or None)


# ---------------------------------------------------------------- OS and kernel


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


# ---------------------------------------------------------------- mounts and cgroups


class Mount(msgspec.Struct, frozen=True):
    mount_point: str
    fstype: str
    super_options: str


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/PID/mountinfo: '... mount_point opts [optional fields] - fstype source super_opts'."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if not sep or len(lf) < 5 or len(rf) < 2:
            continue
        mount_point = lf[4].replace("\\040", " ")
        mounts.append(Mount(mount_point=mount_point, fstype=rf[0], super_options=rf[2] if len(rf) > 2 else ""))
    return mounts


class CgroupLayout(msgspec.Struct, kw_only=True):
    version: str  # "v2", "v1", "hybrid" (v1 controllers and a v2 mount), "none"
    v2_mount: str | None
    v1_controllers: list[str]


_V1_NAMED = "name="


def cgroup_layout(mounts: list[Mount]) -> CgroupLayout:
    v2 = next((m.mount_point for m in mounts if m.fstype == "cgroup2"), None)
    controllers: set[str] = set()
    for m in mounts:
        if m.fstype == "cgroup":
            for opt in m.super_options.split(","):
                if opt not in ("rw", "ro") and not opt.startswith(_V1_NAMED) and "=" not in opt:
                    controllers.add(opt)
    if controllers and v2:
        version = "hybrid"
    elif controllers:
        version = "v1"
    elif v2:
        version = "v2"
    else:
        version = "none"
    return CgroupLayout(version=version, v2_mount=v2, v1_controllers=sorted(controllers))


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup -> {controllers or '' for v2: path}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


# ---------------------------------------------------------------- PSI


class PsiLine(msgspec.Struct, kw_only=True):
    avg10: float
    avg60: float
    avg300: float
    total_us: int


def parse_pressure(text: str) -> dict[str, PsiLine]:
    """/proc/pressure/{cpu,memory,io} -> {'some': PsiLine, 'full': PsiLine}."""
    out: dict[str, PsiLine] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        try:
            out[kind] = PsiLine(avg10=float(fields["avg10"]), avg60=float(fields["avg60"]),
                                avg300=float(fields["avg300"]), total_us=int(fields["total"]))
        except (KeyError, ValueError):
            continue
    return out


# ---------------------------------------------------------------- virtualisation and containers

_DMI_HYPERVISORS = (
    ("kvm", "kvm"), ("qemu", "qemu"), ("vmware", "vmware"), ("virtualbox", "oracle"), ("innotek", "oracle"),
    ("microsoft corporation", "microsoft"), ("xen", "xen"), ("amazon ec2", "amazon"), ("google", "google"),
    ("bochs", "bochs"), ("parallels", "parallels"), ("openstack", "kvm"), ("firecracker", "firecracker"),
    ("cloud hypervisor", "cloud-hypervisor"),
)


class Virtualisation(msgspec.Struct, kw_only=True):
    virtualised: bool
    hypervisor: str | None  # a name when one can be told (kvm, xen, vmware, ...), else None
    container: str | None
    evidence: list[str]
    # The virtual machine monitor when it can be told apart from the hypervisor
    # (kvm guests: firecracker, qemu, cloud-hypervisor), else None.
    vmm: str | None = None


# Firecracker has no DMI/SMBIOS; its guests are told by their kernel command line
# (virtio_mmio.device= entries for its MMIO transport, "firecracker" in init's
# arguments) or by virtio-mmio platform devices; a KVM guest with no DMI at all is
# named a microVM (firecracker-like) with that evidence.
_VIRTIO_MMIO_HINTS = ("virtio-mmio", "virtio_mmio", "LNRO0005")


def detect_virtualisation(
    *,
    hypervisor_flag: bool,
    dmi: dict[str, str],
    hypervisor_type: str | None,
    container_markers: dict[str, str],
    clocksources: str | None = None,
    cmdline: str | None = None,
    platform_devices: list[str] | None = None,
    dmi_present: bool | None = None,
) -> Virtualisation:
    """Combine the hints a user can read: the CPU hypervisor flag (/proc/cpuinfo), DMI
    strings, /sys/hypervisor, the kernel's clock sources (kvm-clock: a KVM guest), the
    kernel command line and platform devices (Firecracker, which has no DMI), and
    container markers (/.dockerenv, /run/.containerenv, cgroup paths, $container)."""
    evidence: list[str] = []
    hyp: str | None = None
    vmm: str | None = None
    if hypervisor_type:
        hyp = hypervisor_type.strip().lower()
        evidence.append(f"/sys/hypervisor/type={hyp}")
    for key in ("sys_vendor", "product_name", "bios_vendor", "board_vendor"):
        value = dmi.get(key, "").strip().lower()
        for needle, name in _DMI_HYPERVISORS:
            if needle in value and hyp is None:
                hyp = name
                evidence.append(f"dmi {key}={dmi[key].strip()}")
    if hypervisor_flag:
        evidence.append("cpu flag 'hypervisor'")
    kvm_clock = clocksources is not None and "kvm-clock" in clocksources.split()
    if kvm_clock:
        evidence.append("clock source kvm-clock")
        if hyp in (None, "qemu", "firecracker", "cloud-hypervisor", "openstack"):
            vmm = hyp if hyp not in (None, "kvm") else None
            hyp = "kvm"
    if hyp in ("firecracker", "cloud-hypervisor"):
        vmm, hyp = hyp, "kvm"
    words = (cmdline or "").split()
    mmio_args = [w for w in words if w.startswith("virtio_mmio.device=")]
    mmio_devs = [d for d in (platform_devices or []) if any(h in d for h in _VIRTIO_MMIO_HINTS)]
    if any("firecracker" in w.lower() for w in words):
        vmm = "firecracker"
        evidence.append("kernel command line names firecracker")
    if mmio_args or mmio_devs:
        evidence.append(f"virtio-mmio devices ({len(mmio_args) or len(mmio_devs)}"
                        f"{' on the kernel command line' if mmio_args else ''})")
        if dmi_present is False and vmm is None:
            vmm = "firecracker"
    if dmi_present is False and (hypervisor_flag or kvm_clock):
        evidence.append("no DMI/SMBIOS tables (a microVM)")
        if vmm is None and kvm_clock:
            vmm = "firecracker"
    if vmm == "firecracker" and hyp is None:
        hyp = "kvm"
    container = None
    for marker, kind in container_markers.items():
        evidence.append(f"container marker {marker}")
        container = container or kind
    return Virtualisation(virtualised=hypervisor_flag or hyp is not None, hypervisor=hyp, container=container,
                          evidence=evidence, vmm=vmm)


_CGROUP_CONTAINER_HINTS = (("kubepods", "kubernetes"), ("docker", "docker"), ("libpod", "podman"),
                           ("containerd", "containerd"), ("lxc", "lxc"), ("machine.slice", "systemd-nspawn"))


def container_from_cgroup(cgroups: dict[str, str]) -> str | None:
    for path in cgroups.values():
        for needle, kind in _CGROUP_CONTAINER_HINTS:
            if needle in path:
                return kind
    return None


# ---------------------------------------------------------------- bpftrace --info


def parse_bpftrace_info(text: str) -> dict[str, dict[str, str]]:
    """`bpftrace --info` -> {section: {key: value}} (sections are the unindented headings)."""
    out: dict[str, dict[str, str]] = {}
    section: dict[str, str] | None = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if not raw[0].isspace():
            section = out.setdefault(raw.strip().rstrip(":"), {})
            continue
        if section is None:
            continue
        key, sep, value = raw.strip().partition(":")
        if sep:
            section[key.strip()] = value.strip()
    return out


def yes_no(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v.startswith("yes"):
        return True
    if v.startswith("no"):
        return False
    return None
