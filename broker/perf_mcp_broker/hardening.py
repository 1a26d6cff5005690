"""What the broker gives up at start-up (python-prctl).

- no_new_privs: nothing the broker or its jobs execute can gain privileges
  (setuid binaries, file capabilities).
- The capability bounding set, and the broker's own permitted and effective sets,
  are cut to what perf and BPF need; everything else (setuid, chown, mknod,
  module loading, raw network, ...) is gone for the broker and all its jobs.
- No core dumps of the broker (they could hold other users' profiles).
"""

from __future__ import annotations

import logging
import resource

import prctl

log = logging.getLogger("perf_mcp_broker")

# Why each capability stays:
KEEP = {
    "perfmon": prctl.CAP_PERFMON,  # perf_event_open system-wide
    "bpf": prctl.CAP_BPF,  # loading BPF programs and maps
    "sys_admin": prctl.CAP_SYS_ADMIN,  # older kernels gate perf/BPF on it; tracefs
    "sys_ptrace": prctl.CAP_SYS_PTRACE,  # profiling and inspecting other users' processes
    "sys_resource": prctl.CAP_SYS_RESOURCE,  # BPF memlock, perf mmap buffers
    "ipc_lock": prctl.CAP_IPC_LOCK,  # perf ring buffers beyond the mlock limit
    "syslog": prctl.CAP_SYSLOG,  # kernel symbol addresses (/proc/kallsyms)
    "dac_read_search": prctl.CAP_DAC_READ_SEARCH,  # read /proc/PID/* and binaries for symbols
    "dac_override": prctl.CAP_DAC_OVERRIDE,  # tracefs and debugfs files
    "kill": prctl.CAP_KILL,  # stop jobs' process groups
}


def _bounding_set_extras(keep: list[int]) -> list[str]:
    """Names of capabilities still in the bounding set that we do not keep."""
    kept_names = {name for name in prctl.ALL_CAP_NAMES if getattr(prctl, "CAP_" + name.upper()) in keep}
    return [name for name in prctl.ALL_CAP_NAMES if name not in kept_names and getattr(prctl.capbset, name, False)]


def harden() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    prctl.set_dumpable(False)
    keep = list(KEEP.values())
    # Dropping from the bounding set needs CAP_SETPCAP; under a unit whose
    # CapabilityBoundingSet is already this small there is nothing left to drop,
    # so CAP_SETPCAP need not be granted at all.
    if _bounding_set_extras(keep):
        prctl.capbset.limit(*keep)
    prctl.cap_effective.limit(*keep)  # effective must stay within permitted
    prctl.cap_permitted.limit(*keep)
    prctl.cap_inheritable.limit()
    prctl.set_no_new_privs(True)
    log.info("hardened: no_new_privs, capabilities limited to %s", ",".join(sorted(KEEP)))
