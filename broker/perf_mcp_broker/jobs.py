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

from perf_mcp_protocol import (
    Backend,
    BioLatency,
    DnsLatency,
    FileTrace,
    IoLayers,
    TcpMode,
    TcpTrace,
    VfsLatency,
    CpuProfile,
    ExecTrace,
    FdTable,
    OffcpuProfile,
    ProcessIo,
    RunqLatency,
    StepResult,
    SyscallCount,
    ToolFeatures,
    limits,
)

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
    "exitsnoop": ("/usr/sbin/exitsnoop",),
    # Programs whose rungs need kprobes or fentry: listed so that --disable and perf_info
    # name them; the frontend's ladders skip them where the kernel lacks what they need.
    "biosnoop": ("/usr/sbin/biosnoop",),
    "fsslower": ("/usr/sbin/fsslower",),
    "filelife": ("/usr/sbin/filelife",),
    "vfsstat": ("/usr/sbin/vfsstat",),
    "tcpconnect": ("/usr/sbin/tcpconnect",),
    "cachestat": ("/usr/sbin/cachestat",),
}

# The broker's own bpftrace scripts: shipped files next to this module, root-owned
# and covered by the start-up integrity check. A builder picks one by name from
# this fixed set; the client only ever chooses a Backend.
SCRIPT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpftrace")
SCRIPTS = frozenset({"profile", "offcpu", "runqlat", "syscount", "syscount_latency", "execsnoop", "vfslat",
                     "iolayers", "biolatency", "opens", "fileslow", "filelife", "tcplife", "tcpconn", "dnslat"})
# bpftrace needs time to compile and attach before its interval timer starts.
BPFTRACE_START_S = 15.0


@dataclass(frozen=True)
class Step:
    """One program run of a job. Steps run one after another (a later one only if the
    earlier ones ended normally) unless with_previous puts a step beside the one before it.

    stop_after_s: when set, the step is stopped normally with SIGINT after that
    many seconds (perf record has no duration of its own without `-- sleep`).
    deadline_s: wall-clock limit; past it the group gets SIGTERM then SIGKILL and
    the step is marked timed_out.
    """

    name: str
    argv: tuple[str, ...]
    deadline_s: float
    stop_after_s: float | None = None
    with_previous: bool = False  # runs side by side with the step before it (execsnoop + exitsnoop)
    # Run as the unprivileged PARSER_USER, no capabilities, in this job directory (its cwd;
    # the argv names files relative to it): the runner hands the directory over for the step.
    unprivileged_in: str | None = None


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


def _script(programs: dict[str, str], name: str, *params: int) -> tuple[str, ...]:
    """bpftrace on one shipped script with integer positional parameters, JSON output."""
    assert name in SCRIPTS
    return (_program(programs, "bpftrace"), "-f", "json", os.path.join(SCRIPT_DIR, f"{name}.bt"),
            *(str(int(p)) for p in params))


def _opt_pid(pid: int | None) -> list[str]:
    return ["-p", str(int(pid))] if pid is not None else []


def _traced(name: str, argv, duration: float, *, stop: bool = False, with_previous: bool = False) -> Step:
    """A tracing step ends on its own at its duration; stop=True for programs that
    run until SIGINT (execsnoop). The deadline covers BPF compile and attach."""
    return Step(name, tuple(argv), deadline_s=duration + BPFTRACE_START_S + limits.JOB_GRACE_S,
                stop_after_s=duration if stop else None, with_previous=with_previous)


# perf_cpu_profile bounds. Samples a profile may take, all CPUs together: the
# frequency is lowered so that frequency x duration x CPUs stays under it (the
# frontend reads the rate used back from the record argv). At ~100 bytes of
# perf.data and ~180 bytes of perf script text per sample, this keeps perf.data
# near 40 MB and the text within the default output cap.
CPU_PROFILE_MAX_SAMPLES = 360_000
# A hard bound on perf.data whatever the sample size (deep stacks): perf record
# stops writing there.
PERF_DATA_MAX_SIZE = "256M"
# perf script parses and demangles every sampled binary, other users' included: it runs as
# this unprivileged user (runner.py), with the kernel's symbols handed over as a file.
PARSER_USER = "perf-mcp-parse"
KALLSYMS_COPY = "kallsyms"
# Programs tried here without CAP_SYS_ADMIN (CAP_PERFMON and CAP_BPF do): their jobs run
# without it. bpftrace 0.17 needs it for BTF types, gethostlatency for its uprobes; the
# kprobe tools could not be tried here (no kprobes) and keep it.
WITHOUT_SYS_ADMIN = frozenset({"perf", "runqlat", "offcputime", "syscount", "execsnoop", "exitsnoop",
                               "opensnoop", "tcplife", "biolatency"})


def _perf_script(programs: dict[str, str], *args: str) -> list[str]:
    """perf script on perf.data in its cwd (an unprivileged step in the job directory)."""
    return [_program(programs, "perf"), "script", "-i", "perf.data", "--kallsyms", KALLSYMS_COPY, *args]


# perf script's fields: the fewest the fold needs (measured in bench/bench_cpu_profile.py:
# tid and period cost output and parsing, and name nothing the profile uses; time bounds the
# window perf sampled, without perf record's start-up, for the expected sample count).
CPU_PROFILE_SCRIPT_FIELDS = "comm,pid,time,ip,sym,dso"
# perf script processes over time slices of perf.data, side by side (1: one process).
CPU_PROFILE_SCRIPT_SLICES = 1


def cpu_profile_frequency(req: CpuProfile, cpus: int | None = None) -> int:
    """The requested frequency, lowered so frequency x duration x CPUs <= CPU_PROFILE_MAX_SAMPLES."""
    cpus = max(1, cpus or os.cpu_count() or 1)
    ceiling = int(CPU_PROFILE_MAX_SAMPLES / (float(req.duration_s) * cpus))
    return max(1, min(int(req.frequency_hz), ceiling))


def _time_slices(n: int) -> list[str]:
    """perf script --time percentage slices that partition the recording (perf makes each
    slice's end exclusive, the last one's inclusive)."""
    bounds = [round(100 * i / n) for i in range(n + 1)]
    return [f"{a}%-{b}%" for a, b in zip(bounds, bounds[1:])]


def build_cpu_profile(req: CpuProfile, programs: dict[str, str], workdir: str) -> list[Step]:
    """BPFTRACE: stacks counted in the kernel by profile.bt, no perf.data. PERF: perf
    record then perf script (in CPU_PROFILE_SCRIPT_SLICES time slices side by side).

    perf writes only into workdir: -N (no build-id cache: with HOME unset and cwd /,
    perf record would copy every sampled binary into /.debug), -B (no build-id pass
    over the samples at exit), --max-size, and a frequency bounded by
    cpu_profile_frequency. The record argv ends with `-o PATH`."""
    frequency = cpu_profile_frequency(req)
    duration = float(req.duration_s)
    if req.backend is Backend.BPFTRACE:
        argv = _script(programs, "profile", frequency, max(1, round(duration)), req.pid or 0,
                       int(req.include_kernel))
        return [_traced("profile", argv, float(max(1, round(duration))))]
    if req.backend is not Backend.PERF:
        raise Unsupported(req.backend)
    perf = _program(programs, "perf")
    data = os.path.join(workdir, "perf.data")
    event = "cpu-clock" if req.include_kernel else "cpu-clock:u"
    # --no-bpf-event: perf script 6.1 fails (exit 242, "failed to process type: 17") on the
    # KSYMBOL records of BPF programs loaded meanwhile (other tools' bpftrace jobs).
    record = [perf, "record", "-e", event, "-F", str(frequency), "-g", "-N", "-B",
              "--max-size", PERF_DATA_MAX_SIZE, "--no-bpf-event"]
    record += ["-p", str(int(req.pid))] if req.pid is not None else ["-a"]
    record += ["-o", data]
    script = _perf_script(programs, "-F", CPU_PROFILE_SCRIPT_FIELDS)
    steps = [Step("record", tuple(record), deadline_s=duration + limits.JOB_GRACE_S, stop_after_s=duration)]
    slices = _time_slices(CPU_PROFILE_SCRIPT_SLICES) if CPU_PROFILE_SCRIPT_SLICES > 1 else [None]
    for i, span in enumerate(slices):
        name = "script" if span is None else f"script{i + 1}"
        argv = script if span is None else [*script, "--time", span]
        steps.append(Step(name, tuple(argv), deadline_s=60.0 + 4 * duration, with_previous=i > 0,
                          unprivileged_in=workdir))
    return steps


class Unsupported(Exception):
    """The request's backend is not a rung of this job kind."""


def build_offcpu_profile(req: OffcpuProfile, programs: dict[str, str], workdir: str) -> list[Step]:
    d = req.duration_s
    if req.backend is Backend.LIBBPF:
        argv = [_program(programs, "offcputime"), *_opt_pid(req.pid), "-m", str(int(req.min_block_us)),
                "--stack-storage-size", "8192", str(d)]
        return [_traced("offcputime", argv, d)]
    if req.backend is Backend.BPFTRACE:
        return [_traced("offcpu", _script(programs, "offcpu", d, req.pid or 0, req.min_block_us), d)]
    if req.backend is Backend.PERF:
        # The stack is taken at sched:sched_switch as a thread leaves the CPU; --switch-events adds
        # PERF_RECORD_SWITCH IN/OUT written in the thread's own context, which tells when it runs
        # again (sched_switch samples from the idle task go missing here, so the IN side is not read
        # from them). perf sched timehist is not used: it prints every user frame as [unknown] on
        # perf 6.1. -N -B: no build-id cache and no build-id pass, so perf writes nothing outside
        # the job directory; --max-size bounds perf.data (perf script's output reaches the broker's
        # output cap well before it). min_block_us is applied by the frontend.
        perf = _program(programs, "perf")
        data = os.path.join(workdir, "perf.data")
        target = _opt_pid(req.pid) or ["-a", "-m", "256"]
        record = [perf, "record", "-e", "sched:sched_switch", "-g", "--switch-events", *target, "-N", "-B",
                  "--max-size", PERF_DATA_MAX_SIZE, "-o", data]
        script = _perf_script(programs, "--ns", "--show-switch-events", "-F", "comm,pid,tid,time,trace,ip,sym,dso")
        return [
            Step("record", tuple(record), deadline_s=d + limits.JOB_GRACE_S, stop_after_s=float(d)),
            Step("script", tuple(script), deadline_s=60.0 + 4 * d, unprivileged_in=workdir),
        ]
    raise Unsupported(req.backend)


def build_runq_latency(req: RunqLatency, programs: dict[str, str], workdir: str) -> list[Step]:
    d = req.duration_s
    if req.backend is Backend.LIBBPF:
        argv = [_program(programs, "runqlat"), *_opt_pid(req.pid), *(["-P"] if req.per_pid else []), str(d), "1"]
        return [_traced("runqlat", argv, d)]
    if req.backend is Backend.BPFTRACE:
        argv = _script(programs, "runqlat", d, req.pid or 0, int(req.per_cpu), int(req.per_pid))
        return [_traced("runqlat", argv, d)]
    raise Unsupported(req.backend)


def build_syscall_count(req: SyscallCount, programs: dict[str, str], workdir: str) -> list[Step]:
    d = req.duration_s
    if req.backend is Backend.LIBBPF:
        syscount = _program(programs, "syscount")
        common = ["-d", str(d), "-T", str(int(req.top_n)), *_opt_pid(req.pid)]
        latency = ["-L"] if req.latency else []
        steps = [_traced("syscount", [syscount, *common, *latency], d)]
        if req.per_process:  # syscount -P counts by process only: the per-syscall rows come from the first step
            steps.append(_traced("syscount_processes", [syscount, *common, "-P", *latency], d, with_previous=True))
        if req.errors:  # failed calls per syscall, side by side with the counts
            steps.append(_traced("syscount_failures", [syscount, *common, "-x"], d, with_previous=True))
        return steps
    if req.backend is Backend.BPFTRACE:
        # two scripts: an attached sys_enter probe costs every syscall, so only the latency one has it
        script = "syscount_latency" if req.latency else "syscount"
        argv = _script(programs, script, d, req.pid or 0, int(req.latency), int(req.per_process),
                       int(req.errors))
        return [_traced("syscount", argv, d)]
    raise Unsupported(req.backend)


def build_exec_trace(req: ExecTrace, programs: dict[str, str], workdir: str) -> list[Step]:
    d = req.duration_s
    if req.backend is Backend.LIBBPF:
        execsnoop = [_program(programs, "execsnoop"), "-t", "-U", "-q", "--max-args", str(int(req.max_args))]
        execsnoop += ["-x"] if req.include_failed else []
        execsnoop += ["-u", str(int(req.uid))] if req.uid is not None else []
        steps = [_traced("execsnoop", execsnoop, d, stop=True)]
        if "exitsnoop" in programs:  # lifetimes and exit codes; without it execsnoop still answers
            steps.append(_traced("exitsnoop", [programs["exitsnoop"], "-t"], d, stop=True, with_previous=True))
        return steps
    if req.backend is Backend.BPFTRACE:
        # All uids: 4294967295 (INVALID_UID, as execsnoop); bpftrace 0.17 takes "-1" for an option.
        uid = 0xFFFF_FFFF if req.uid is None else req.uid
        argv = _script(programs, "execsnoop", d, int(req.include_failed), req.max_args, uid)
        return [_traced("execsnoop", argv, d)]
    raise Unsupported(req.backend)


# biolatency.bt with linear buckets: this many buckets of linear_bucket_ms, then the overflow bucket
# (at most 100: the script's lhist of the bucket index has constant bounds).
BIO_LINEAR_BUCKETS = 50


def build_bio_latency(req: BioLatency, programs: dict[str, str], workdir: str) -> list[Step]:
    d = req.duration_s
    if req.backend is Backend.LIBBPF:
        if req.linear_bucket_ms is not None:  # biolatency has log2 buckets only
            raise Unsupported(req.backend)
        argv = [_program(programs, "biolatency"), *(["-D"] if req.per_device else []),
                *(["-Q"] if req.queued else []), *(["-m"] if req.milliseconds else []), str(d), "1"]
        return [_traced("biolatency", argv, d)]
    if req.backend is Backend.BPFTRACE:
        linear = req.linear_bucket_ms is not None
        # the bucket width in the histogram's unit (us unless milliseconds); log2: 1 (unused)
        step = (req.linear_bucket_ms if req.milliseconds else req.linear_bucket_ms * 1000) if linear else 1
        argv = _script(programs, "biolatency", d, int(req.queued), int(req.per_device), int(req.milliseconds),
                       int(linear), step, BIO_LINEAR_BUCKETS)
        return [_traced("biolatency", argv, d)]
    raise Unsupported(req.backend)


def build_io_layers(req: IoLayers, programs: dict[str, str], workdir: str) -> list[Step]:
    """LIBBPF: vfsstat, one interval of duration_s (VFS calls counted system-wide; the
    frontend reads the block side from /proc/diskstats). BPFTRACE: iolayers.bt."""
    d = req.duration_s
    if req.backend is Backend.LIBBPF:
        return [_traced("vfsstat", [_program(programs, "vfsstat"), str(d), "1"], d)]
    if req.backend is Backend.BPFTRACE:
        return [_traced("iolayers", _script(programs, "iolayers", d, int(req.per_process)), d)]
    raise Unsupported(req.backend)


def build_file_trace(req: FileTrace, programs: dict[str, str], workdir: str) -> list[Step]:
    """Steps named "opens", "slow_ops", "file_lifecycle" (mode ALL: all three side by side).

    LIBBPF: opensnoop -T -U -e (ends itself at -d), fsslower -c (ends itself at -d), filelife
    (runs until SIGINT). BPFTRACE: opens.bt, fileslow.bt (min latency in us), filelife.bt."""
    d = req.duration_s
    mode = req.mode.value
    parts = ["opens", "slow_ops", "file_lifecycle"] if mode == "all" else [mode]
    steps: list[Step] = []
    for part in parts:
        if req.backend is Backend.LIBBPF:
            if part == "opens":
                argv = [_program(programs, "opensnoop"), "-T", "-U", "-e", *_opt_pid(req.pid), "-d", str(d)]
                step = _traced(part, argv, d, with_previous=bool(steps))
            elif part == "slow_ops":
                argv = [_program(programs, "fsslower"), "-t", "ext4", "-c", "-m", str(int(req.min_latency_ms)),
                        *_opt_pid(req.pid), "-d", str(d)]  # one file system type: the usual root's
                step = _traced(part, argv, d, with_previous=bool(steps))
            else:
                argv = [_program(programs, "filelife"), *_opt_pid(req.pid)]
                step = _traced(part, argv, d, stop=True, with_previous=bool(steps))
        elif req.backend is Backend.BPFTRACE:
            pid = req.pid or 0
            if part == "opens":
                argv = _script(programs, "opens", d, pid)
            elif part == "slow_ops":
                argv = _script(programs, "fileslow", d, pid, int(req.min_latency_ms) * 1000)
            else:
                argv = _script(programs, "filelife", d, pid)
            step = _traced(part, argv, d, with_previous=bool(steps))
        else:
            raise Unsupported(req.backend)
        steps.append(step)
    return steps


# fsslower traces one file system type; the broker's is the root file system's usual one.
FSSLOWER_FS = "ext4"


def build_vfs_latency(req: VfsLatency, programs: dict[str, str], workdir: str) -> list[Step]:
    """LIBBPF: fsslower -t ext4 in CSV. BPFTRACE: vfslat.bt on the syscall tracepoints."""
    d = req.duration_s
    if req.backend is Backend.LIBBPF:
        argv = [_program(programs, "fsslower"), "-t", FSSLOWER_FS, "-c", "-m", str(int(req.min_latency_ms)),
                "-d", str(d), *_opt_pid(req.pid)]
        return [_traced("fsslower", argv, d)]
    if req.backend is Backend.BPFTRACE:
        return [_traced("vfslat", _script(programs, "vfslat", d, req.pid or 0, req.min_latency_ms), d)]
    raise Unsupported(req.backend)


def build_tcp_trace(req: TcpTrace, programs: dict[str, str], workdir: str) -> list[Step]:
    """LIBBPF: tcplife (lifecycle; runs until SIGINT) or tcpconnect (connections; kprobes).
    BPFTRACE: tcplife.bt (lifecycle) or tcpconn.bt (connects, accepts, retransmits).
    Filters reach argv as integers only; 0 means none in the scripts."""
    d = req.duration_s
    lport, rport = req.local_port, req.remote_port
    if req.backend is Backend.LIBBPF:
        if req.mode is TcpMode.LIFECYCLE:
            argv = [_program(programs, "tcplife"), "-T", "-w", *_opt_pid(req.pid)]
            argv += ["-L", str(int(lport))] if lport is not None else []
            argv += ["-D", str(int(rport))] if rport is not None else []
            return [_traced("tcplife", argv, d, stop=True)]
        if lport is not None:  # tcpconnect filters destination ports only
            raise Unsupported(req.backend)
        argv = [_program(programs, "tcpconnect"), "-t", "-U", *_opt_pid(req.pid)]
        argv += ["-P", str(int(rport))] if rport is not None else []
        return [_traced("tcpconnect", argv, d, stop=True)]
    if req.backend is Backend.BPFTRACE:
        script = "tcplife" if req.mode is TcpMode.LIFECYCLE else "tcpconn"
        argv = _script(programs, script, d, req.pid or 0, lport or 0, rport or 0)
        return [_traced(script, argv, d)]
    raise Unsupported(req.backend)


def build_dns_latency(req: DnsLatency, programs: dict[str, str], workdir: str) -> list[Step]:
    """LIBBPF: gethostlatency (uprobes on the libc it finds itself; runs until SIGINT).
    BPFTRACE: dnslat.bt (uprobe:libc:..., bpftrace resolves libc by name)."""
    d = req.duration_s
    if req.backend is Backend.LIBBPF:
        return [_traced("gethostlatency", [_program(programs, "gethostlatency"), *_opt_pid(req.pid)], d, stop=True)]
    if req.backend is Backend.BPFTRACE:
        return [_traced("dnslat", _script(programs, "dnslat", d, req.pid or 0), d)]
    raise Unsupported(req.backend)


# The dispatch table: request type -> argv builder. A request type missing here is
# not a job (AccessQuery is answered by the server itself).
BUILDERS = {
    CpuProfile: build_cpu_profile,
    OffcpuProfile: build_offcpu_profile,
    RunqLatency: build_runq_latency,
    SyscallCount: build_syscall_count,
    ExecTrace: build_exec_trace,
    BioLatency: build_bio_latency,
    IoLayers: build_io_layers,
    FileTrace: build_file_trace,
    VfsLatency: build_vfs_latency,
    TcpTrace: build_tcp_trace,
    DnsLatency: build_dns_latency,
}


_bpftrace_info: bytes | None = None


def cache_bpftrace_info(programs: dict[str, str]) -> bytes:
    """`bpftrace --info`, run once at start-up (before the broker drops privileges)
    and served from memory: ToolFeatures needs no authorisation, so it must not
    start a root process per request."""
    global _bpftrace_info
    import subprocess

    out = b""
    if "bpftrace" in programs:
        try:
            res = subprocess.run([programs["bpftrace"], "--info"], stdin=subprocess.DEVNULL, capture_output=True,
                                 timeout=30, cwd="/", env={"PATH": "/usr/sbin:/usr/bin", "LANG": "C"})
            out = (res.stdout + res.stderr)[: 64 * 1024]
        except (OSError, subprocess.TimeoutExpired):
            out = b""
    _bpftrace_info = out
    return out


def _read(name: str, argv: list[str], started: float, stdout: bytes = b"", *, truncated: bool = False,
          exit_status: int | None = 0, stderr: bytes = b"") -> StepResult:
    """The result of a job the broker answers by reading, as if a program had run."""
    return StepResult(name=name, argv=argv, exit_status=exit_status, signal=None, stdout=stdout, stderr=stderr,
                      stdout_truncated=truncated, stderr_truncated=False, timed_out=False,
                      wall_s=round(time.monotonic() - started, 3))


def read_tool_features(req: ToolFeatures, cap: int) -> StepResult:
    info = _bpftrace_info or b""
    return _read("bpftrace_info", ["bpftrace", "--info"], time.monotonic(), info[:cap], truncated=len(info) > cap,
                 exit_status=0 if info else None)


def _reader_refused(name: str, paths: list[str], started: float, exc: OSError) -> StepResult:
    """A read the kernel refused: exit status 1 and the reason on stderr (a typed answer, not INTERNAL)."""
    return _read(name, ["read", *paths], started, exit_status=1,
                 stderr=f"{exc.strerror or exc}: the kernel refused the read".encode())


def read_fd_table(req: FdTable, cap: int) -> StepResult:
    """Read (never open) another process's fd links and its limits file.

    Only readlink() and a read of /proc/PID/limits: no descriptor of the target
    is opened, no path comes from the client (the pid is a ranged integer).
    """
    started = time.monotonic()
    base = f"/proc/{int(req.pid)}"
    out = bytearray(b"limits\n")
    try:
        with open(f"{base}/limits", "rb") as f:
            out += f.read(64 * 1024)
        names = os.listdir(f"{base}/fd")
    except PermissionError as exc:  # the kernel's ptrace access check refused even root
        return _reader_refused("fd_table", [f"{base}/fd", f"{base}/limits"], started, exc)
    out += b"fds\n"
    truncated = False
    for name in sorted(names, key=lambda n: int(n) if n.isdecimal() else -1):
        try:
            target = os.readlink(f"{base}/fd/{name}")
        except FileNotFoundError:
            continue  # closed between listdir and readlink
        except PermissionError as exc:  # the list was readable, the links are not (ptrace access check)
            return _reader_refused("fd_table", [f"{base}/fd/{name}"], started, exc)
        line = f"{name}\t{target}\n".encode("utf-8", "surrogateescape")
        if len(out) + len(line) > cap:
            truncated = True
            break
        out += line
    return _read("fd_table", ["readlink", f"{base}/fd/*", f"{base}/limits"], started, bytes(out), truncated=truncated)


def read_process_io(req: ProcessIo, cap: int) -> StepResult:
    """Every process's /proc/N/io and its number of fd entries (listdir, no fd opened).

    Per process: "pid N fds M" (M is "-" when the kernel refuses the fd list),
    then the io file verbatim (nothing when refused). A process that exits
    while being read is left out. Nothing comes from the client.
    """
    started = time.monotonic()
    out = bytearray()
    truncated = False
    for name in sorted((n for n in os.listdir("/proc") if n.isdecimal()), key=int):
        try:
            try:
                # Linux 6.2+ gives the number of open fds as the size of /proc/N/fd (no listing)
                fds = str(os.stat(f"/proc/{name}/fd").st_size or len(os.listdir(f"/proc/{name}/fd")))
            except PermissionError:
                fds = "-"
            try:
                fd = os.open(f"/proc/{name}/io", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    io = os.read(fd, 4096)
                finally:
                    os.close(fd)
            except PermissionError:
                io = b""
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        block = f"pid {name} fds {fds}\n".encode() + io
        if len(out) + len(block) > cap:
            truncated = True
            break
        out += block
    return StepResult(name="process_io", argv=["read", "/proc/*/io", "/proc/*/fd"], exit_status=0, signal=None,
                      stdout=bytes(out), stderr=b"", stdout_truncated=truncated, stderr_truncated=False,
                      timed_out=False, wall_s=round(time.monotonic() - started, 3))


# Jobs the broker answers by reading procfs itself instead of running a program.
READERS = {
    FdTable: read_fd_table,
    ProcessIo: read_process_io,
    ToolFeatures: read_tool_features,
}
