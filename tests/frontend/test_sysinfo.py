"""perf_info's pure parsers, on text captured from this project's machines and documented formats."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from perf_mcp.sysinfo import analysis, parse

# /proc/cpuinfo of the project's VM (2 vCPUs, AMD EPYC), flags shortened.
CPUINFO_X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
physical id\t: 0
siblings\t: 2
core id\t\t: 0
cpu cores\t: 2
flags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
physical id\t: 0
siblings\t: 2
core id\t\t: 1
cpu cores\t: 2
flags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm

"""

# arm64 layout (kernel documentation / a Raspberry Pi 4): no model name, no physical id.
CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

processor\t: 1
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
"""

MOUNTINFO_HYBRID = """23 1 0:21 / / rw,relatime - overlay overlay rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
"""

MOUNTINFO_V2 = """25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""

BPFTRACE_INFO = """System
  OS: Linux 6.18.44-fc-v782 #1 SMP PREEMPT_DYNAMIC @0
  Arch: x86_64

Build
  version: v0.17.0
  LLVM: 14.0.6

Kernel features
  Instruction limit: 1000000
  btf: yes

Probe types
  kprobe: yes
  tracepoint: yes
  perf_event: yes
  kfunc: no
  iter:task: no
  raw_tp_special: yes
"""

MEMINFO = """MemTotal:       24631600 kB
MemFree:        20000000 kB
MemAvailable:   24000000 kB
SwapTotal:             0 kB
HugePages_Total:       4
HugePages_Free:        3
Hugepagesize:       2048 kB
"""


def test_cpuinfo_x86_and_arm() -> None:
    x86 = parse.parse_cpuinfo(CPUINFO_X86)
    assert (x86.model, x86.vendor, x86.logical_cpus, x86.physical_cores, x86.sockets) == (
        "AMD EPYC", "AuthenticAMD", 2, 2, 1)
    assert x86.hypervisor_flag
    arm = parse.parse_cpuinfo(CPUINFO_ARM)
    assert arm.logical_cpus == 2 and arm.physical_cores is None and not arm.hypervisor_flag
    assert arm.vendor == "0x41"


def test_cpu_list() -> None:
    assert parse.parse_cpu_list("0-3,5,7-8\n") == [0, 1, 2, 3, 5, 7, 8]
    assert parse.parse_cpu_list("") == []
    assert parse.parse_cpu_list("x,2,3-y,0-99999999") == [2]


def test_meminfo_units() -> None:
    mi = parse.parse_meminfo(MEMINFO)
    assert mi["MemTotal"] == 24631600 * 1024
    assert mi["HugePages_Total"] == 4  # a count, not kB
    assert mi["Hugepagesize"] == 2 * 1024 * 1024


def test_bracketed_choice() -> None:
    assert parse.parse_bracketed_choice("always [madvise] never\n") == "madvise"
    assert parse.parse_bracketed_choice("always defer defer+madvise [madvise] never") == "madvise"


def test_cgroup_layouts() -> None:
    hybrid = parse.cgroup_layout(parse.parse_mountinfo(MOUNTINFO_HYBRID))
    assert hybrid.version == "hybrid" and hybrid.v1_controllers == ["cpu", "memory"]
    assert hybrid.v2_mount == "/sys/fs/cgroup/unified"
    v2 = parse.cgroup_layout(parse.parse_mountinfo(MOUNTINFO_V2))
    assert v2.version == "v2" and v2.v2_mount == "/sys/fs/cgroup" and v2.v1_controllers == []
    assert parse.cgroup_layout([]).version == "none"


def test_pressure() -> None:
    psi = parse.parse_pressure("some avg10=1.69 avg60=0.58 avg300=1.92 total=20919464\n"
                               "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert psi["some"].avg10 == 1.69 and psi["some"].total_us == 20919464
    assert psi["full"].avg300 == 0.0
    assert parse.parse_pressure("garbage\nsome avg10=x") == {}


def test_bpftrace_info_and_probe_features() -> None:
    info = parse.parse_bpftrace_info(BPFTRACE_INFO)
    assert info["Probe types"]["kfunc"] == "no"
    assert info["Build"]["version"] == "v0.17.0"
    # bpftrace says kprobe yes, the broker's root view of tracefs says no: the broker wins.
    feats = analysis.probe_features(
        local_btf=True, local_tracefs=True, tracepoint_pmu=True, uprobe_pmu=True, kprobe_pmu=False,
        paranoid=2, kptr_restrict=0, bpftrace_info=info,
        broker_kernel={"btf": True, "tracefs": True, "kprobe_events": False, "perf_event_paranoid": 2,
                       "kptr_restrict": 0},
    )
    assert feats.kprobes is False and feats.fentry is False and feats.tracepoints is True
    assert feats.bpftrace_probe_types["kprobe"] is True
    assert feats.sources["kprobes"].startswith("broker")
    # without a broker: the kprobe PMU decides, fentry is unknown
    local = analysis.probe_features(
        local_btf=True, local_tracefs=False, tracepoint_pmu=True, uprobe_pmu=True, kprobe_pmu=True,
        paranoid=None, kptr_restrict=None, bpftrace_info=None, broker_kernel=None,
    )
    assert local.kprobes is True and local.fentry is None and local.tracefs is False
    assert local.tracepoints is False  # no tracefs: tracepoint tools cannot attach


def test_virtualisation_and_containers() -> None:
    v = parse.detect_virtualisation(hypervisor_flag=True, dmi={"sys_vendor": "QEMU\n"}, hypervisor_type=None,
                                    container_markers={})
    assert v.virtualised and v.hypervisor == "qemu" and v.container is None
    v = parse.detect_virtualisation(hypervisor_flag=False, dmi={}, hypervisor_type="xen\n",
                                    container_markers={"/.dockerenv": "docker"})
    assert v.hypervisor == "xen" and v.container == "docker"
    v = parse.detect_virtualisation(hypervisor_flag=False, dmi={"sys_vendor": "Dell Inc."}, hypervisor_type=None,
                                    container_markers={})
    assert not v.virtualised and v.hypervisor is None
    assert parse.container_from_cgroup({"": "/kubepods/burstable/pod1/abc"}) == "kubernetes"
    assert parse.container_from_cgroup(parse.parse_proc_cgroup("0::/user.slice\n1:cpu:/\n")) is None


def test_os_release() -> None:
    osr = parse.parse_os_release('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n# c\n')
    assert osr == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID": "debian"}


@given(st.text(max_size=500))
@example("²")  # str.isdigit() is true for it, int() refuses it
@example("cpu² 1 2 3\n")
def test_parsers_never_raise(text: str) -> None:
    parse.parse_cpuinfo(text)
    parse.parse_cpu_list(text)
    parse.parse_meminfo(text)
    parse.parse_mountinfo(text)
    parse.parse_pressure(text)
    parse.parse_bpftrace_info(text)
    parse.parse_os_release(text)
    parse.parse_proc_cgroup(text)
