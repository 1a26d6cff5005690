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
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import time

import trio

from perf_mcp_protocol import StepResult, limits

from .jobs import Step

CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
_READ_CHUNK = 256 * 1024
# A step's output files (perf.data) may not grow beyond this.
MAX_FILE_BYTES = 2 * 1024**3


def _child_setup() -> None:  # runs in the child between fork and exec
    import prctl

    prctl.set_pdeathsig(signal.SIGKILL)
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


async def run_step(step: Step, stdout_cap: int, stderr_cap: int = limits.STDERR_CAP) -> StepResult:
    """Run one step to completion; see the module invariants.

    On cancellation the group gets SIGINT, then SIGTERM, then SIGKILL (shielded,
    bounded by CANCEL_ESCALATION_S each) and is reaped before Cancelled propagates.
    """
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(step.argv),
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            cwd="/",
            env=CHILD_ENV,
            start_new_session=True,
            preexec_fn=_child_setup,
            close_fds=True,
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
