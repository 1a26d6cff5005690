"""Runs one job step as a child process under the broker's rules.

Invariants:
- The child gets a new session and process group, stdin /dev/null, cwd /, a fixed
  environment, PR_SET_PDEATHSIG=SIGKILL, no core dumps and bounded rlimits.
- Every way out (normal exit, SIGINT stop, deadline, output cap, cancellation of
  the caller) ends with the whole process group killed and the child reaped: the
  leader is reaped only after its group has been killed, so the group id cannot
  be reused in between. No zombie and no pipe fd outlives run_step. The exit is
  awaited on the pidfd, so a child stuck in uninterruptible sleep stalls its own
  job only, never the event loop.
- stdout and stderr are read with caps; at a cap the group is killed and the
  stream is marked truncated, so memory stays bounded whatever the child prints.
- Children are forked from the main thread (subprocess.Popen called directly,
  not through a worker thread), because PR_SET_PDEATHSIG fires when the forking
  *thread* exits.
- A job gets the broker's bounding set and no more (never CAP_KILL, CAP_SETUID,
  CAP_SETGID, CAP_SETPCAP, which the broker keeps for itself); a program that works
  without CAP_SYS_ADMIN (jobs.WITHOUT_SYS_ADMIN) loses it too where the kernel has
  CAP_PERFMON and CAP_BPF. An unprivileged step (perf script) runs as PARSER_USER
  with no capability at all, in its job directory, which is readable by that user's
  group only while such a step runs (with a copy of /proc/kallsyms read here).
  What a killed perf script leaves in /tmp (its vdso copy) is removed once stale.
"""

from __future__ import annotations

import collections
import errno
import functools
import os
import resource
import signal
import stat
import subprocess
import time

import trio

from perf_mcp_protocol import StepResult, limits

from .jobs import KALLSYMS_COPY, PROGRAM_PATHS, WITHOUT_SYS_ADMIN, Step

CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
_READ_CHUNK = 256 * 1024
# A step's output files (perf.data) may not grow beyond this.
MAX_FILE_BYTES = 2 * 1024**3


# (uid, gid) of jobs.PARSER_USER, set at start-up (make_broker); None: no such user,
# and the broker runs no unprivileged step.
PARSER_IDS: tuple[int, int] | None = None
# perf unpacks a sampled vdso to /tmp/perf-vdso.so-XXXXXX (a fixed path in perf) and removes
# it at exit, but not when it is killed (a cancelled or timed-out perf script).
VDSO_PREFIX = "perf-vdso.so-"
STALE_S = 600.0  # longer than any step lasts
_PROGRAM_OF = {path: name for name, paths in PROGRAM_PATHS.items() for path in paths}
_CAP_BPF = 39  # the last of CAP_PERFMON (38) and CAP_BPF (39)


def _perfmon_and_bpf() -> bool:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read()) >= _CAP_BPF
    except (OSError, ValueError):
        return False


_SYS_ADMIN_OPTIONAL = _perfmon_and_bpf()


def _child_setup(drop_sys_admin: bool) -> None:  # runs in the child between fork and exec
    import prctl

    if drop_sys_admin:
        prctl.capbset.drop(prctl.CAP_SYS_ADMIN)
    prctl.set_pdeathsig(signal.SIGKILL)  # after any uid change (Popen's user=), which clears it
    for which, value in _CHILD_RLIMITS:
        _lower_rlimit(which, value)
    os.umask(0o077)


# Limits only ever go down from what the broker has.
_CHILD_RLIMITS = (
    (resource.RLIMIT_CORE, 0),
    (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),
    (resource.RLIMIT_NOFILE, 65536),
    (resource.RLIMIT_NPROC, 4096),
)


def _lower_rlimit(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    new_hard = value if hard == resource.RLIM_INFINITY else min(hard, value)
    resource.setrlimit(which, (min(new_hard, value), new_hard))


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - the broker is root
        pass


class _Capture:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> bool:
        """Keep data up to the cap; False once the cap is reached."""
        room = self.cap - self.size
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.chunks.append(data)
        self.size += len(data)
        return not self.truncated

    def value(self) -> bytes:
        return b"".join(self.chunks)


async def _read_capped(fd_stream: trio.lowlevel.FdStream, capture: _Capture, on_cap) -> None:
    async with fd_stream:
        while True:
            data = await fd_stream.receive_some(_READ_CHUNK)
            if not data:
                return
            if not capture.add(data):
                on_cap()
                return


_handed_over: collections.Counter[str] = collections.Counter()  # job dir -> unprivileged steps in it


def _hand_over(workdir: str) -> None:
    """Open the job directory for an unprivileged step: a copy of /proc/kallsyms (read
    here, as root: the parser would see zero addresses where kptr_restrict hides them),
    the files (perf.data) and the directory readable by all. No one else gets there:
    its parents (the 0700 runtime and jobs directories) let no user through, and the
    step starts in it (its cwd, set while still root) and names files relative to it."""
    if _handed_over[workdir]:  # a step beside this one did it
        return
    with open("/proc/kallsyms", "rb") as src, open(os.path.join(workdir, KALLSYMS_COPY), "xb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    with os.scandir(workdir) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, 0o644)
    os.chmod(workdir, 0o755)


def sweep_parser_leftovers(tmp: str = "/tmp", stale_after_s: float = STALE_S) -> int:
    """Remove the vdso copies a killed perf script left in tmp: regular files of PARSER_USER
    named perf-vdso.so-*, unchanged for stale_after_s, so no live step's (brokers started by
    hand share that user). In a sticky /tmp only that user or root can rename such an entry,
    and unlink never follows a link. Returns how many were removed."""
    if PARSER_IDS is None:
        return 0
    removed, now = 0, time.time()
    try:
        with os.scandir(tmp) as entries:
            names = [e.path for e in entries if e.name.startswith(VDSO_PREFIX)]
    except OSError:
        return 0
    for path in names:
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == PARSER_IDS[0] and now - st.st_mtime > stale_after_s:
                os.unlink(path)
                removed += 1
        except OSError:  # gone meanwhile
            continue
    return removed


async def run_step(step: Step, stdout_cap: int, stderr_cap: int = limits.STDERR_CAP) -> StepResult:
    """Run one step to completion; see the module invariants.

    On cancellation the group gets SIGINT, then SIGTERM, then SIGKILL (shielded,
    bounded by CANCEL_ESCALATION_S each) and is reaped before Cancelled propagates.
    """
    workdir = step.unprivileged_in
    if workdir is not None:
        if PARSER_IDS is None:
            raise RuntimeError(f"no user for unprivileged steps (step {step.name})")
        _hand_over(workdir)
        _handed_over[workdir] += 1
        try:
            return await _run(step, stdout_cap, stderr_cap)
        finally:
            _handed_over[workdir] -= 1
            if not _handed_over[workdir]:
                del _handed_over[workdir]
                os.chmod(workdir, 0o700)
            sweep_parser_leftovers()
    return await _run(step, stdout_cap, stderr_cap)


async def _run(step: Step, stdout_cap: int, stderr_cap: int) -> StepResult:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    started = time.monotonic()
    unprivileged = step.unprivileged_in is not None
    as_user = {"user": PARSER_IDS[0], "group": PARSER_IDS[1], "extra_groups": []} if unprivileged else {}
    drop_sys_admin = not unprivileged and _SYS_ADMIN_OPTIONAL and _PROGRAM_OF.get(step.argv[0]) in WITHOUT_SYS_ADMIN
    try:
        proc = subprocess.Popen(
            list(step.argv),
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            cwd=step.unprivileged_in or "/",
            env=CHILD_ENV,
            start_new_session=True,
            preexec_fn=functools.partial(_child_setup, drop_sys_admin),
            close_fds=True,
            **as_user,
        )
    except BaseException:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    os.close(out_w)
    os.close(err_w)
    pgid = proc.pid  # start_new_session: the child leads its own group
    pidfd = os.pidfd_open(proc.pid)
    out_cap, err_cap = _Capture(stdout_cap), _Capture(stderr_cap)
    timed_out = False
    exited = trio.Event()

    def kill_group() -> None:
        _killpg(pgid, signal.SIGKILL)

    async def watch_exit() -> None:
        await trio.lowlevel.wait_readable(pidfd)
        exited.set()

    async def escalate(first: int, wait_exit, grace: float = limits.STOP_ESCALATION_S) -> None:
        """Send first, then SIGTERM, then SIGKILL, each after `grace` seconds."""
        for sig in (first, signal.SIGTERM, signal.SIGKILL):
            if exited.is_set():
                return
            _killpg(pgid, sig)
            with trio.move_on_after(grace):
                await wait_exit()
                exited.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_exit)
            nursery.start_soon(_read_capped, trio.lowlevel.FdStream(out_r), out_cap, kill_group)
            nursery.start_soon(_read_capped, trio.lowlevel.FdStream(err_r), err_cap, kill_group)
            out_r = err_r = -1  # owned by the FdStreams now
            with trio.move_on_after(step.deadline_s) as deadline:
                if step.stop_after_s is not None:
                    with trio.move_on_after(step.stop_after_s):
                        await exited.wait()
                    await escalate(signal.SIGINT, exited.wait)
                await exited.wait()
            if deadline.cancelled_caught:
                timed_out = True
                await escalate(signal.SIGTERM, exited.wait)
            # The leader is a zombie now: kill what is left of its group, then give
            # the readers a bounded time to drain (a process that left the group
            # could hold the pipe open forever).
            kill_group()
            nursery.cancel_scope.deadline = trio.current_time() + limits.STOP_ESCALATION_S
    finally:
        with trio.CancelScope(shield=True):
            if not exited.is_set():  # cancelled from outside: watch_exit is gone
                # Nobody wants the output any more: a short grace, so the job (and its
                # BPF programs, released when the process exits) is gone within seconds.
                await escalate(signal.SIGINT, lambda: trio.lowlevel.wait_readable(pidfd),
                               grace=limits.CANCEL_ESCALATION_S)
            kill_group()
            # A child in uninterruptible sleep (D) outlives SIGKILL until it wakes:
            # wait for its exit here, where only this job waits, not in proc.wait().
            await trio.lowlevel.wait_readable(pidfd)
            os.close(pidfd)
            proc.wait()
            for fd in (out_r, err_r):
                if fd >= 0:
                    os.close(fd)
    code = proc.returncode
    return StepResult(
        name=step.name,
        argv=list(step.argv),
        exit_status=code if code >= 0 else None,
        signal=-code if code < 0 else None,
        stdout=out_cap.value(),
        stderr=err_cap.value(),
        stdout_truncated=out_cap.truncated,
        stderr_truncated=err_cap.truncated,
        timed_out=timed_out,
        wall_s=round(time.monotonic() - started, 3),
    )


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:  # pragma: no cover - EPERM cannot happen as root
        return exc.errno == errno.EPERM
    return True
