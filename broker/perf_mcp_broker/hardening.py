"""What the broker gives up at start-up (python-prctl).

- no_new_privs: nothing the broker or its jobs execute can gain privileges
  (setuid binaries, file capabilities).
- The capability bounding set is cut to what perf and BPF need (JOBS): no job can
  hold more. The broker's own permitted and effective sets keep JOBS and BROKER
  only, the four it needs to start and stop the unprivileged parsing step and to
  take CAP_SYS_ADMIN from jobs that work without it (runner.py); everything else
  (chown, mknod, module loading, raw network, ...) is gone for all.
- No core dumps of the broker (they could hold other users' profiles).
"""

from __future__ import annotations

import logging
import resource

import prctl

log = logging.getLogger("perf_mcp_broker")

# What jobs may hold (the bounding set), and why:
JOBS = {
    "perfmon": prctl.CAP_PERFMON,  # perf_event_open system-wide
    "bpf": prctl.CAP_BPF,  # loading BPF programs and maps
    "sys_admin": prctl.CAP_SYS_ADMIN,  # bpftrace 0.17 (BTF), uprobes; perf/BPF on older kernels
    "sys_ptrace": prctl.CAP_SYS_PTRACE,  # profiling and inspecting other users' processes
    "sys_resource": prctl.CAP_SYS_RESOURCE,  # BPF memlock, perf mmap buffers
    "ipc_lock": prctl.CAP_IPC_LOCK,  # perf ring buffers beyond the mlock limit
    "syslog": prctl.CAP_SYSLOG,  # kernel symbol addresses (/proc/kallsyms)
    "dac_read_search": prctl.CAP_DAC_READ_SEARCH,  # read /proc/PID/* and binaries for symbols
    "dac_override": prctl.CAP_DAC_OVERRIDE,  # tracefs and debugfs files
}
# What the broker keeps for itself, never passed to a job:
BROKER = {
    "kill": prctl.CAP_KILL,  # stop the parsing step's group (another uid)
    "setuid": prctl.CAP_SETUID,  # start the parsing step as PARSER_USER
    "setgid": prctl.CAP_SETGID,  # ... with its group only
    "setpcap": prctl.CAP_SETPCAP,  # cut the bounding set; CAP_SYS_ADMIN from jobs without need
}
KEEP = {**JOBS, **BROKER}  # the unit's CapabilityBoundingSet


def harden() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    prctl.set_dumpable(False)
    prctl.capbset.limit(*JOBS.values())  # what any later exec can get
    prctl.cap_effective.limit(*KEEP.values())  # effective must stay within permitted
    prctl.cap_permitted.limit(*KEEP.values())
    prctl.cap_inheritable.limit()
    prctl.set_no_new_privs(True)
    log.info("hardened: no_new_privs, capabilities limited to %s, jobs' to %s", ",".join(sorted(KEEP)),
             ",".join(sorted(JOBS)))
