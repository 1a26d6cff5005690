"""Shared test utilities for perf-mcp.

Import from a test module with ``import helpers`` (tests/ is on sys.path through
tests/conftest.py). The fixtures in conftest.py are thin wrappers around these.

Everything here is real: real users (created by packaging/dev-setup.sh), the real
broker as root, the real frontend as a non-root user through setpriv, a real MCP
client, real procfs. Processes started here are stopped by their PID.
"""

from __future__ import annotations

import os
import pwd
import grp
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
VENV_PYTHON = VENV_BIN / "python"
FRONTEND_BIN = VENV_BIN / "perf-mcp"
BROKER_BIN = VENV_BIN / "perf-mcp-broker"
BROKER_MAIN = REPO / "broker" / "perf_mcp_broker" / "__main__.py"

SETPRIV = "/usr/bin/setpriv"
GRANTED_USER = "perfmcp-granted"
DENIED_USER = "perfmcp-denied"
GRANT_GROUP = "perf-mcp"
SETUP_HINT = "run `sudo make setup` (packaging/dev-setup.sh) first"

# The polkit actions, one per broker job class (polkit/org.perfmcp.policy).
POLKIT_ACTIONS = ("org.perfmcp.profile", "org.perfmcp.trace", "org.perfmcp.inspect")

# pkcheck exit status as seen with polkit 122 here.
PKCHECK_AUTHORIZED = 0
PKCHECK_NOT_AUTHORIZED = 1
PKCHECK_CHALLENGE = 2
PKCHECK_DISMISSED = 3
PKCHECK_ERROR = 127


def is_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------- users


@dataclass(frozen=True)
class UnixUser:
    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[str, ...]  # every group name, the primary one included

    def in_group(self, group: str) -> bool:
        return group in self.groups


@dataclass(frozen=True)
class TestUsers:
    """perfmcp-granted (in group perf-mcp) and perfmcp-denied (not in it)."""

    __test__ = False  # not a pytest test class

    granted: UnixUser
    denied: UnixUser
    group: str
    group_gid: int


def lookup_user(name: str) -> UnixUser | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    names = {grp.getgrgid(pw.pw_gid).gr_name}
    names.update(g.gr_name for g in grp.getgrall() if name in g.gr_mem)
    return UnixUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, tuple(sorted(names)))


def lookup_test_users() -> TestUsers:
    """The two test users, or RuntimeError saying how to create them."""
    granted = lookup_user(GRANTED_USER)
    denied = lookup_user(DENIED_USER)
    try:
        group_gid = grp.getgrnam(GRANT_GROUP).gr_gid
    except KeyError:
        group_gid = -1
    missing = [n for n, u in ((GRANTED_USER, granted), (DENIED_USER, denied)) if u is None]
    if group_gid < 0:
        missing.append(f"group {GRANT_GROUP}")
    if missing or granted is None or denied is None:
        raise RuntimeError(f"missing {', '.join(missing)}: {SETUP_HINT}")
    if not granted.in_group(GRANT_GROUP) or denied.in_group(GRANT_GROUP):
        raise RuntimeError(
            f"{GRANTED_USER} must be in {GRANT_GROUP} and {DENIED_USER} must not: {SETUP_HINT}"
        )
    return TestUsers(granted, denied, GRANT_GROUP, group_gid)


def _as_user(user: str | UnixUser) -> UnixUser:
    if isinstance(user, UnixUser):
        return user
    found = lookup_user(user)
    if found is None:
        raise RuntimeError(f"no user {user!r}: {SETUP_HINT}")
    return found


def as_user_argv(user: str | UnixUser, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The setpriv command line that runs ``argv`` as ``user`` (real and effective
    uid and gid, the user's supplementary groups). setpriv execs in place, so the
    PID of the spawned process is the PID of ``argv``."""
    u = _as_user(user)
    return [
        SETPRIV,
        f"--reuid={u.name}",
        f"--regid={u.gid}",
        "--init-groups",
        "--",
        *(os.fspath(a) for a in argv),
    ]


def user_env(user: str | UnixUser, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small environment for a process running as ``user`` (not root's HOME)."""
    u = _as_user(user)
    env = {
        "HOME": u.home,
        "USER": u.name,
        "LOGNAME": u.name,
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
    }
    if extra:
        env.update(extra)
    return env


def spawn_as(
    user: str | UnixUser, argv: Sequence[str | os.PathLike[str]], **popen_kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as ``user`` and wait until the process has that uid."""
    u = _as_user(user)
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    popen_kwargs.setdefault("env", user_env(u))
    popen_kwargs.setdefault("cwd", "/")
    proc = subprocess.Popen(as_user_argv(u, argv), **popen_kwargs)
    if not wait_until(lambda: proc_uid(proc.pid) == u.uid or proc.poll() is not None, 10.0):
        stop_process(proc)
        raise RuntimeError(f"pid {proc.pid} did not become {u.name}")
    return proc


# --------------------------------------------------------------------------- frontend


def frontend_argv(
    user: str | UnixUser, socket_path: str | os.PathLike[str], *extra: str
) -> list[str]:
    """The command line that runs the frontend as ``user`` against a broker socket."""
    return as_user_argv(user, [FRONTEND_BIN, "--broker-socket", os.fspath(socket_path), *extra])


@asynccontextmanager
async def mcp_client(
    user: str | UnixUser,
    socket_path: str | os.PathLike[str],
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    errlog: IO[str] | None = None,
    netns: str | None = None,
    **client_kwargs: Any,
) -> AsyncIterator[Any]:
    """An ``mcp.Client`` connected over stdio to ``perf-mcp`` running as ``user``
    (in the network namespace /run/netns/``netns`` when given: nsenter joins only that
    one; `ip netns exec` would also mount a fresh /sys, without the cgroups).

    The frontend's stderr goes to ``errlog`` if given; otherwise it is collected
    in a temp file and copied to sys.stderr when the client closes (pytest shows
    it for failing tests). ``client_kwargs`` go to ``mcp.Client`` (for example
    ``read_timeout_seconds``, ``logging_callback``, ``message_handler``).
    """
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    argv = frontend_argv(user, socket_path, *extra_args)
    if netns is not None:
        argv = ["/usr/bin/nsenter", f"--net=/run/netns/{netns}", *argv]
    params = StdioServerParameters(
        command=argv[0], args=argv[1:], env=user_env(user, env), cwd="/"
    )
    own_log = errlog is None
    log: IO[str] = errlog if errlog is not None else tempfile.TemporaryFile("w+")
    try:
        async with Client(stdio_client(params, errlog=log), **client_kwargs) as client:
            yield client
    finally:
        if own_log:
            log.seek(0)
            text = log.read()
            log.close()
            if text:
                sys.stderr.write(f"--- perf-mcp stderr ({_as_user(user).name}) ---\n{text}")


# --------------------------------------------------------------------------- procfs


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    starttime: int  # clock ticks after boot (field 22)


def parse_proc_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat. comm may hold spaces and parentheses: split on the last ')'."""
    head, _, tail = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = tail.split()
    # fields[0] is field 3 (state); field N is fields[N - 3].
    return ProcStat(
        pid=int(pid_text),
        comm=comm,
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        starttime=int(fields[19]),
    )


def read_proc_stat(pid: int) -> ProcStat | None:
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def all_processes() -> list[ProcStat]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_proc_stat(int(entry))
            if st is not None:
                out.append(st)
    return out


def proc_uid(pid: int) -> int | None:
    """The real uid of a process, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def open_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def zombie_children(pid: int) -> list[int]:
    """PIDs of zombie (state Z) children of ``pid``."""
    return sorted(p.pid for p in all_processes() if p.ppid == pid and p.state == "Z")


def children(pid: int) -> list[int]:
    return sorted(p.pid for p in all_processes() if p.ppid == pid)


def descendants(pid: int) -> list[int]:
    procs = all_processes()
    by_parent: dict[int, list[int]] = {}
    for p in procs:
        by_parent.setdefault(p.ppid, []).append(p.pid)
    out: list[int] = []
    todo = list(by_parent.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(by_parent.get(child, []))
    return sorted(out)


def processes_in_group(pgid: int) -> list[int]:
    return sorted(p.pid for p in all_processes() if p.pgrp == pgid)


def processes_named(comm: str) -> list[int]:
    """PIDs whose comm (at most 15 characters) is exactly ``comm``."""
    return sorted(p.pid for p in all_processes() if p.comm == comm)


# --------------------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (blocking)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


async def await_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """The trio version of wait_until."""
    import trio

    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(interval)
        return True
    return predicate()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int | None:
    """SIGTERM by PID, wait, SIGKILL if needed. Returns the exit status, or None
    if the process needed SIGKILL."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


# --------------------------------------------------------------------------- D-Bus, polkit


def system_bus_answers(timeout: float = 5.0) -> bool:
    """True when the system D-Bus daemon answers a ListNames call."""
    if not Path("/run/dbus/system_bus_socket").exists():
        return False
    try:
        res = subprocess.run(
            [
                "dbus-send",
                "--system",
                f"--reply-timeout={int(timeout * 1000)}",
                "--dest=org.freedesktop.DBus",
                "--print-reply",
                "/",
                "org.freedesktop.DBus.ListNames",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout + 5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def pkcheck(action_id: str, pid: int, timeout: float = 30.0) -> int:
    """Ask polkit about ``pid`` the way the broker does (pid, start-time, uid).
    Returns pkcheck's exit status (PKCHECK_*)."""
    st = read_proc_stat(pid)
    uid = proc_uid(pid)
    if st is None or uid is None:
        raise ProcessLookupError(pid)
    res = subprocess.run(
        ["pkcheck", "--action-id", action_id, "--process", f"{pid},{st.starttime},{uid}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    return res.returncode


# --------------------------------------------------------------------------- broker


def broker_missing_reason() -> str | None:
    """Why the real broker cannot be started yet, or None when it can."""
    if not BROKER_MAIN.exists():
        return f"{BROKER_MAIN.relative_to(REPO)} does not exist yet"
    if not BROKER_BIN.exists():
        return f"{BROKER_BIN} is missing: {SETUP_HINT}"
    return None


def make_shared_tmpdir(prefix: str = "pmcp-test-") -> Path:
    """A temp dir under /tmp that the test users can traverse (mode 0755), short
    enough for a Unix socket path. pytest's tmp_path is under a 0700 dir of root.
    Never "/tmp/perf-...": perf takes binaries under /tmp/perf-* for JIT maps."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def parse_listening_unix_paths(text: str) -> set[str]:
    """Paths of listening Unix sockets from /proc/net/unix (flag __SO_ACCEPTCON)."""
    out = set()
    for line in text.splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) == 8 and int(parts[3], 16) & 0x10000:
            out.add(parts[7])
    return out


def unix_socket_listening(path: str | os.PathLike[str]) -> bool:
    p = os.fspath(path)
    try:
        if not stat.S_ISSOCK(os.stat(p).st_mode):
            return False
    except FileNotFoundError:
        return False
    return p in parse_listening_unix_paths(Path("/proc/net/unix").read_text())


@dataclass
class RunningBroker:
    socket_path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path  # the broker's stderr and stdout (audit lines)
    workdir: Path
    argv: list[str]
    # Set by a test that kills the broker on purpose (stop_broker sets `stopped`).
    expected_exit: bool = field(default=False)
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_broker(
    workdir: Path,
    *extra_args: str,
    output_cap: int | None = None,
    timeout: float = 20.0,
) -> RunningBroker:
    """Start ``perf-mcp-broker --socket WORKDIR/broker.sock`` as root and wait until
    it listens. ``workdir`` must be traversable by the test users."""
    socket_path = workdir / "broker.sock"
    log_path = workdir / "broker.log"
    argv = [os.fspath(BROKER_BIN), "--socket", os.fspath(socket_path)]
    if output_cap is not None:
        argv += ["--output-cap", str(output_cap)]
    argv += list(extra_args)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True
        )
    broker = RunningBroker(socket_path, proc, log_path, workdir, argv)
    if not wait_until(lambda: unix_socket_listening(socket_path) or proc.poll() is not None, timeout):
        stop_process(proc)
        raise RuntimeError(f"broker did not listen on {socket_path} within {timeout} s:\n{broker.log_text()}")
    if proc.poll() is not None:
        raise RuntimeError(f"broker exited with {proc.returncode}:\n{broker.log_text()}")
    return broker


def stop_broker(broker: RunningBroker, timeout: float = 10.0) -> list[str]:
    """Stop the broker by its PID. Returns problems seen (empty when it was alive
    until now and exited on SIGTERM)."""
    problems: list[str] = []
    if broker.stopped:
        return problems
    broker.stopped = True
    if broker.proc.poll() is not None and not broker.expected_exit:
        problems.append(f"the broker exited on its own during the test (status {broker.proc.returncode})")
    status = stop_process(broker.proc, timeout)
    if status is None and not broker.expected_exit:
        problems.append(f"the broker did not exit within {timeout} s of SIGTERM and was killed")
    return problems


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- busy process

BUSY_C = r"""
#include <stdlib.h>
#include <unistd.h>

volatile unsigned long perfmcp_sink;

__attribute__((noinline)) void perfmcp_busy_leaf(void)
{
    for (unsigned long i = 0; i < 100000UL; i++)
        perfmcp_sink += i;
}

__attribute__((noinline)) void perfmcp_busy_loop(void)
{
    for (;;)
        perfmcp_busy_leaf();
}

int main(int argc, char **argv)
{
    /* Never outlive a forgotten test by much: SIGALRM ends the process. */
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 600);
    perfmcp_busy_loop();
    return 0;
}
"""

# The symbols a CPU profile of the busy process must show, leaf first.
BUSY_LEAF_SYMBOL = "perfmcp_busy_leaf"
BUSY_LOOP_SYMBOL = "perfmcp_busy_loop"
BUSY_COMM = "perfmcp-busy"


def build_busy_binary(directory: Path) -> Path:
    """Compile the busy loop (frame pointers, symbols) into ``directory``."""
    src = directory / "perfmcp_busy.c"
    exe = directory / BUSY_COMM
    src.write_text(BUSY_C)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError(f"no C compiler (build-essential): {SETUP_HINT}")
    subprocess.run(
        [cc, "-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-o", os.fspath(exe), os.fspath(src)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    exe.chmod(0o755)
    return exe


@dataclass
class BusyProcess:
    proc: subprocess.Popen[bytes]
    exe: Path
    leaf_symbol: str = BUSY_LEAF_SYMBOL
    loop_symbol: str = BUSY_LOOP_SYMBOL
    comm: str = BUSY_COMM

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_busy(exe: Path, user: str | UnixUser | None = None, max_seconds: int = 600) -> BusyProcess:
    """Start the CPU-bound busy loop, as root or as ``user``."""
    argv = [os.fspath(exe), str(max_seconds)]
    if user is None:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd="/", start_new_session=True)
    else:
        proc = spawn_as(user, argv, start_new_session=True)
    return BusyProcess(proc, exe)


# --------------------------------------------------------------------------- MCP results


def envelope(result: Any) -> dict[str, Any]:
    """The structuredContent envelope of a CallToolResult."""
    sc = result.structured_content
    assert isinstance(sc, dict), result
    return sc


def ok_data(result: Any) -> dict[str, Any]:
    """The data of a successful tool result (fails the test, showing the error, otherwise)."""
    env = envelope(result)
    assert result.is_error is False and env["success"] is True, env.get("error")
    return env["data"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- cgroup hierarchies of this host

_V1_NON_CONTROLLER = {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods",
                      "nosuid", "nodev", "noexec", "relatime"}


@dataclass(frozen=True)
class CgroupHost:
    """What this host mounts, read straight from /proc/self/mountinfo and the v2
    root's cgroup.controllers (independently of perf-mcp's own parser)."""

    v1: dict[str, str]  # controller (or name=X) -> mount point, whole-tree mounts only
    v2_mount: str | None
    v2_controllers: frozenset[str]  # offered by the v2 root (not bound to v1)

    @property
    def version(self) -> str:
        if self.v1:
            return "hybrid" if self.v2_mount else "v1"
        return "v2" if self.v2_mount else "none"

    def hierarchy_of(self, controller: str) -> str | None:
        """"v1" or "v2": where this controller can be used here (None: nowhere)."""
        if controller in self.v1:
            return "v1"
        return "v2" if controller in self.v2_controllers else None

    def describe(self) -> str:
        v1 = ", ".join(sorted(c for c in self.v1 if not c.startswith("name="))) or "none"
        v2 = (f"cgroup2 at {self.v2_mount} offering {', '.join(sorted(self.v2_controllers)) or 'no controllers'}"
              if self.v2_mount else "no cgroup2 mount")
        return f"this host ({self.version}): v1 controllers {v1}; {v2}"


def cgroup_host(mountinfo: str = "/proc/self/mountinfo") -> CgroupHost:
    v1: dict[str, str] = {}
    v2_mount: str | None = None
    for line in Path(mountinfo).read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = fields[3], fields[4].replace("\\040", " ")
        if tail[0] == "cgroup2" and v2_mount is None and root == "/":
            v2_mount = point
        elif tail[0] == "cgroup" and root == "/":
            for option in tail[2].split(","):
                if option.startswith("name=") or (option and "=" not in option and option not in _V1_NON_CONTROLLER):
                    v1.setdefault(option, point)
    offered: frozenset[str] = frozenset()
    if v2_mount is not None:
        try:
            offered = frozenset(Path(v2_mount, "cgroup.controllers").read_text().split())
        except OSError:
            pass
    return CgroupHost(v1=v1, v2_mount=v2_mount, v2_controllers=offered)


def cgroup_skip_reason(marker: str, controllers: Sequence[str], host: CgroupHost | None = None) -> str | None:
    """Why a test marked cgroup_v1 / cgroup_v2 / cgroup_any(controllers...) cannot run here (None: it can)."""
    host = host or cgroup_host()
    wanted = ", ".join(controllers)
    if marker == "cgroup_v1":
        missing = [c for c in controllers if c not in host.v1]
        if not host.v1 or missing:
            return f"needs cgroup v1 ({wanted or 'any controller'} mounted on v1): {host.describe()}"
    elif marker == "cgroup_v2":
        missing = [c for c in controllers if c not in host.v2_controllers]
        if host.v2_mount is None or missing:
            return f"needs cgroup v2 ({wanted or 'the core files'}{' as v2 controllers' if wanted else ''}): " \
                   f"{host.describe()}"
    elif marker == "cgroup_any":
        missing = [c for c in controllers if host.hierarchy_of(c) is None]
        if missing:
            return f"needs the {', '.join(missing)} controller(s) in v1 or v2: {host.describe()}"
    return None


# A private D-Bus daemon's configuration (dbus-daemon --config-file): anyone may own and call
# anything on it. Tests start polkitd or a silent stand-in on such a bus to reach polkit's rarer answers.
PRIVATE_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""
