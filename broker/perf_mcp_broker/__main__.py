"""perf-mcp-broker: the root half of perf-mcp.

Usage:
  perf-mcp-broker --socket PATH [--output-cap BYTES]   (development, tests)
  perf-mcp-broker                                     (systemd socket activation, LISTEN_FDS)
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import signal
import socket
import stat
import sys

if __name__ == "__main__" and os.geteuid() == 0:
    # `python -m perf_mcp_broker` has been through site processing: start again
    # isolated, through the launcher's check, before any third-party import (boot.py).
    from perf_mcp_broker.boot import reexec_isolated

    reexec_isolated(sys.argv[1:])

import trio

from perf_mcp_protocol import limits

from . import __version__, integrity, runner
from .authz import Authorizer
from .hardening import harden
from .jobs import PARSER_USER, PROGRAM_PATHS, cache_bpftrace_info, resolve_programs
from .server import Broker

log = logging.getLogger("perf_mcp_broker")
SD_LISTEN_FDS_START = 3


def _systemd_socket() -> socket.socket | None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0"))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def _bind_socket(path: str) -> socket.socket:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket of an earlier broker
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # Anyone may connect: authorisation is per job (polkit), not by file mode. The
    # umask gives the socket mode 0666 as bind creates it; no chmod by path after
    # it, which would follow a symlink put in the socket's place.
    old = os.umask(0o111)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    return sock


def _workroot(stale_after_s: float = 600.0) -> str:
    """The jobs directory (RUNTIME_DIRECTORY/jobs), with stale job directories purged.

    A broker killed mid-job (SIGKILL, a crash, a power cut without tmpfs) leaves
    its job directories behind, perf.data of up to 256 MB each. Brokers started by
    hand share /run/perf-mcp-broker/jobs, so a directory is purged only when it is
    certainly no live job's: nothing in it or under it changed for stale_after_s
    (longer than any job lasts) and no process has a file in it open.
    """
    import shutil
    import time

    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or "/run/perf-mcp-broker"
    path = os.path.join(base, "jobs")
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    try:
        entries = [e for e in os.scandir(path) if e.name.startswith("job") and e.is_dir(follow_symlinks=False)]
    except OSError:
        return path
    now = time.time()

    def newest(entry: os.DirEntry) -> float:
        latest = entry.stat(follow_symlinks=False).st_mtime
        for root, dirs, files in os.walk(entry.path):
            for name in dirs + files:
                try:
                    latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
        return latest

    old = [e.path for e in entries if now - newest(e) > stale_after_s]
    if old:
        in_use: set[str] = set()
        for fd_dir in (f"/proc/{p}/fd" for p in os.listdir("/proc") if p.isdecimal()):
            try:
                fds = os.listdir(fd_dir)
            except OSError:  # gone, or a kernel thread
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"{fd_dir}/{fd}")
                except OSError:  # closed meanwhile
                    continue
                if target.startswith(path + "/"):
                    in_use.add(target)
        for job_dir in old:
            if not any(t.startswith(job_dir + "/") for t in in_use):
                log.info("removing the stale job directory %s", job_dir)
                shutil.rmtree(job_dir, ignore_errors=True)
    return path


def make_broker(output_cap: int, trusted_uids: frozenset[int] = frozenset(), disabled: list[str] | None = None) -> Broker:
    programs, missing = resolve_programs()
    try:
        parser: pwd.struct_passwd | None = pwd.getpwnam(PARSER_USER)
    except KeyError:
        parser = None
    runner.PARSER_IDS = (parser.pw_uid, parser.pw_gid) if parser and parser.pw_uid and parser.pw_gid else None
    if runner.PARSER_IDS is None:  # perf script never runs as root: without its user, no perf job
        log.error("no unprivileged user %s (the installer creates it): perf's jobs are off", PARSER_USER)
        if programs.pop("perf", None):
            missing.append("perf")
    if removed := runner.sweep_parser_leftovers():
        log.info("removed %d stale vdso copies of killed perf script steps from /tmp", removed)
    cache_bpftrace_info({k: v for k, v in programs.items() if k not in (disabled or ())})
    return Broker(
        programs=programs,
        missing=missing,
        workroot=_workroot(),
        output_cap=output_cap,
        authorizer=Authorizer(trusted_uids),
        disabled=disabled,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perf-mcp-broker", description="perf-mcp's root broker")
    p.add_argument("--socket", help="listen on this Unix socket path (default: socket from systemd)")
    p.add_argument(
        "--output-cap",
        type=int,
        default=limits.DEFAULT_OUTPUT_CAP,
        help=f"bytes of job output returned per job ({limits.MIN_OUTPUT_CAP}..{limits.MAX_OUTPUT_CAP})",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="exit after this many seconds without a connection (systemd starts the broker again on the next one)",
    )
    p.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="PROGRAM",
        choices=sorted(PROGRAM_PATHS),
        help="never run this program (repeatable); tools then take the next rung of their ladder",
    )
    p.add_argument("--version", action="version", version=f"perf-mcp-broker {__version__}")
    args = p.parse_args(argv)
    if not limits.MIN_OUTPUT_CAP <= args.output_cap <= limits.MAX_OUTPUT_CAP:
        p.error(f"--output-cap must lie in {limits.MIN_OUTPUT_CAP}..{limits.MAX_OUTPUT_CAP}")
    if args.idle_exit is not None and not 1 <= args.idle_exit <= 86_400:
        p.error("--idle-exit must lie in 1..86400 seconds")
    return args


async def _exit_when_idle(broker: Broker, seconds: float, scope: trio.CancelScope) -> None:
    """Cancel scope after `seconds` without a connection. A client connecting meanwhile
    waits in the listen backlog of systemd's socket, which starts the broker again."""
    tick = min(1.0, seconds / 4)
    idle_since = trio.current_time()
    while True:
        await trio.sleep(tick)
        if not broker.idle:
            idle_since = trio.current_time()
        elif trio.current_time() - idle_since >= seconds:
            log.info("no connection for %.0f s: exiting (idle)", seconds)
            scope.cancel()
            return


async def _serve(broker: Broker, sock: socket.socket, path: str | None, idle_exit: float | None = None) -> None:
    sock.listen(64)
    listener = trio.socket.from_stdlib_socket(sock)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broker.serve_listener, listener)
            if idle_exit:
                nursery.start_soon(_exit_when_idle, broker, idle_exit, nursery.cancel_scope)
            log.info("perf-mcp-broker %s serving on %s", __version__, path or "systemd socket")
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                nursery.cancel_scope.cancel()
                break
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if os.geteuid() != 0:
        log.error("perf-mcp-broker must run as root (it runs perf and BPF tools for authorised users)")
        return 1
    if not integrity.guarded():  # not started by a launcher (boot.py): start again through one
        from .boot import reexec_isolated

        reexec_isolated(sys.argv[1:] if argv is None else list(argv))
    problems = integrity.startup_problems(resolve_programs()[0].values())
    if problems:
        log.error("%s", integrity.refusal_message(problems))
        return 1
    sock = _systemd_socket()
    if sock is None:
        if not args.socket:
            log.error("no --socket given and no socket passed by systemd")
            return 2
        sock = _bind_socket(args.socket)
    broker = make_broker(args.output_cap, disabled=args.disable)
    if broker.disabled:
        log.info("disabled by the administrator: %s", ", ".join(broker.disabled))
    if broker.missing:
        log.warning("programs not found: %s", ", ".join(broker.missing))
    harden()
    trio.run(_serve, broker, sock, args.socket, args.idle_exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
