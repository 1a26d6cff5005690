"""Privilege separation for `sudo perf-mcp`, the way OpenSSH's monitor does it.

Invariants:
- Started as root, perf-mcp forks before any MCP byte is read. The parent stays
  root and becomes the broker (perf_mcp_broker, the same code as the installed
  broker); the child drops to an unprivileged user (setgroups, setgid, setuid,
  no_new_privs, verified) and serves MCP. Nothing is ever parsed as root.
- The two talk over a control socketpair with the broker's own protocol: for
  each job the child makes a fresh socketpair and hands one end to the broker
  with SCM_RIGHTS, so each job is its own connection and the broker still takes
  the peer's identity from SO_PEERCRED.
- The broker trusts the dropped uid because its own root parent decided so at
  fork time, never because a message says so.
- The broker owns no stdio: stdin and stdout belong to the MCP child. When the
  child exits (or the control socket closes) the broker exits; when the broker
  dies the child gets SIGTERM (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import array
import logging
import os
import pwd
import signal
import socket
import sys

import trio

log = logging.getLogger("perf_mcp.privsep")


class PassedConnector:
    """Opens broker connections by passing socketpair ends over the control socket."""

    def __init__(self, control: socket.socket) -> None:
        self._control = control
        self.description = "broker child (sudo mode)"

    async def connect(self) -> trio.SocketStream:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            fds = array.array("i", [theirs.fileno()])
            self._control.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return trio.SocketStream(trio.socket.from_stdlib_socket(ours))


def _drop_to(user: str) -> None:
    pw = pwd.getpwnam(user)
    if pw.pw_uid == 0:
        raise SystemExit("perf-mcp: --user must name an unprivileged user, not root")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - would mean the drop failed
        raise SystemExit("perf-mcp: could not drop root privileges")
    import prctl

    prctl.set_no_new_privs(True)
    os.environ["HOME"] = pw.pw_dir or "/"
    os.environ["USER"] = os.environ["LOGNAME"] = pw.pw_name


def _run_broker(control: socket.socket, child: int, trusted_uid: int) -> int:
    """The root parent: serve jobs handed over on the control socket until the child goes."""
    from perf_mcp_broker.__main__ import make_broker
    from perf_mcp_broker.hardening import harden

    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # stdout is the MCP channel: only the child writes it
    os.close(devnull)
    broker = make_broker(output_cap=int(os.environ.get("PERF_MCP_OUTPUT_CAP", 64 * 1024 * 1024)), trusted_uids=frozenset({trusted_uid}))
    harden()

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for signum in signals:
                        os.kill(child, signum)
                        nursery.cancel_scope.cancel()
                        return

                async def serve_then_stop() -> None:
                    await broker.serve_fd_channel(trio.socket.from_stdlib_socket(control))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_signal)
                nursery.start_soon(serve_then_stop)

    trio.run(serve)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def _check_root_code() -> None:
    """The broker's integrity check, before this root process imports the broker: what
    it runs and has imported so far, its import path, the job programs and polkit's
    files must be root's alone; every later import is checked before its code runs
    (perf_mcp_broker.boot). Raises SystemExit with the refusal otherwise."""
    from perf_mcp_broker import boot  # standard library only

    problems = boot.guard_process()
    if not problems:
        try:
            import perf_mcp_broker.__main__  # noqa: F401  (what the parent serves with, each module checked)
        except boot.ImportRefused as exc:
            problems = exc.problems
    if not problems:
        from perf_mcp_broker import integrity
        from perf_mcp_broker.jobs import resolve_programs

        problems = integrity.startup_problems(resolve_programs()[0].values())
    if problems:
        raise SystemExit("perf-mcp: " + boot.refusal_message(problems))


def separate(user: str) -> PassedConnector:
    """Fork; return in the unprivileged child, never return in the root parent."""
    if os.geteuid() != 0:
        raise RuntimeError("separate() is for a process started as root")
    pw = pwd.getpwnam(user)  # fail before forking when the user does not exist
    _check_root_code()
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    root_pid = os.getpid()
    child = os.fork()
    if child == 0:
        parent_end.close()
        _drop_to(user)
        import prctl

        # Armed after the drop: a change of uid clears the parent-death signal.
        prctl.set_pdeathsig(signal.SIGTERM)
        if os.getppid() != root_pid:  # the parent died before pdeathsig was armed
            os._exit(1)
        return PassedConnector(child_end)
    child_end.close()
    try:
        code = _run_broker(parent_end, child, pw.pw_uid)
    except BaseException:
        log.exception("broker side of perf-mcp failed")
        os.kill(child, signal.SIGTERM)
        code = 1
    os._exit(code if code >= 0 else 128 - code)
