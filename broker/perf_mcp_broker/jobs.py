"""The broker's closed table of job kinds: validated request -> argv, nothing else.

Invariants:
- Each builder is a pure function of a validated protocol message, the program
  paths resolved at start-up and the job's private directory. Numbers reach argv
  as str(int); no string from the client ever does.
- No shell, no `-e`/`-c`/`-o` to client-chosen places, no `-- cmd`, no `script -s`.
  perf writes only into the broker's own private per-job directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import time

from perf_mcp_protocol import CpuProfile, FdTable, StepResult, ToolFeatures, limits

# Where each program may live; the first existing, root-owned path wins at start-up.
PROGRAM_PATHS: dict[str, tuple[str, ...]] = {
    "perf": ("/usr/bin/perf", "/usr/sbin/perf"),
    "bpftrace": ("/usr/bin/bpftrace", "/usr/sbin/bpftrace"),
    "biolatency": ("/usr/sbin/biolatency", "/usr/share/bcc/tools/biolatency"),
    "runqlat": ("/usr/sbin/runqlat",),
    "offcputime": ("/usr/sbin/offcputime",),
    "syscount": ("/usr/sbin/syscount",),
    "execsnoop": ("/usr/sbin/execsnoop",),
    "opensnoop": ("/usr/sbin/opensnoop",),
    "tcplife": ("/usr/sbin/tcplife",),
    "gethostlatency": ("/usr/sbin/gethostlatency",),
}


@dataclass(frozen=True)
class Step:
    """One program run of a job.

    stop_after_s: when set, the step is stopped normally with SIGINT after that
    many seconds (perf record has no duration of its own without `-- sleep`).
    deadline_s: wall-clock limit; past it the group gets SIGTERM then SIGKILL and
    the step is marked timed_out.
    """

    name: str
    argv: tuple[str, ...]
    deadline_s: float
    stop_after_s: float | None = None


def resolve_programs(paths: dict[str, tuple[str, ...]] = PROGRAM_PATHS) -> tuple[dict[str, str], list[str]]:
    """Absolute path of each program, once, at start-up; and the missing ones."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for name, candidates in paths.items():
        for path in candidates:
            if os.path.isfile(path) and os.access(path, os.X_OK):
                found[name] = path
                break
        else:
            missing.append(name)
    return found, missing


class ProgramMissing(Exception):
    def __init__(self, program: str) -> None:
        super().__init__(program)
        self.program = program


def _program(programs: dict[str, str], name: str) -> str:
    try:
        return programs[name]
    except KeyError:
        raise ProgramMissing(name) from None


def build_cpu_profile(req: CpuProfile, programs: dict[str, str], workdir: str) -> list[Step]:
    perf = _program(programs, "perf")
    data = os.path.join(workdir, "perf.data")
    event = "cpu-clock" if req.include_kernel else "cpu-clock:u"
    record = [perf, "record", "-e", event, "-F", str(int(req.frequency_hz)), "-g"]
    record += ["-p", str(int(req.pid))] if req.pid is not None else ["-a"]
    record += ["-o", data]
    script = [perf, "script", "-i", data, "-F", "comm,pid,tid,period,ip,sym,dso"]
    duration = float(req.duration_s)
    return [
        Step("record", tuple(record), deadline_s=duration + limits.JOB_GRACE_S, stop_after_s=duration),
        Step("script", tuple(script), deadline_s=60.0 + 4 * duration),
    ]


def build_tool_features(req: ToolFeatures, programs: dict[str, str], workdir: str) -> list[Step]:
    return [Step("bpftrace_info", (_program(programs, "bpftrace"), "--info"), deadline_s=30.0)]


# The dispatch table: request type -> argv builder. A request type missing here is
# not a job (AccessQuery is answered by the server itself).
BUILDERS = {
    CpuProfile: build_cpu_profile,
    ToolFeatures: build_tool_features,
}


def read_fd_table(req: FdTable, cap: int) -> StepResult:
    """Read (never open) another process's fd links and its limits file.

    Only readlink() and a read of /proc/PID/limits: no descriptor of the target
    is opened, no path comes from the client (the pid is a ranged integer).
    """
    started = time.monotonic()
    base = f"/proc/{int(req.pid)}"
    out = bytearray(b"limits\n")
    with open(f"{base}/limits", "rb") as f:
        out += f.read(64 * 1024)
    out += b"fds\n"
    truncated = False
    for name in sorted(os.listdir(f"{base}/fd"), key=lambda n: int(n) if n.isdecimal() else -1):
        try:
            target = os.readlink(f"{base}/fd/{name}")
        except FileNotFoundError:
            continue  # closed between listdir and readlink
        line = f"{name}\t{target}\n".encode("utf-8", "surrogateescape")
        if len(out) + len(line) > cap:
            truncated = True
            break
        out += line
    return StepResult(
        name="fd_table",
        argv=["readlink", f"{base}/fd/*", f"{base}/limits"],
        exit_status=0,
        signal=None,
        stdout=bytes(out),
        stderr=b"",
        stdout_truncated=truncated,
        stderr_truncated=False,
        timed_out=False,
        wall_s=round(time.monotonic() - started, 3),
    )


# Jobs the broker answers by reading procfs itself instead of running a program.
READERS = {
    FdTable: read_fd_table,
}
