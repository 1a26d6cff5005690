"""Helpers for the packaging tests: the unit files, systemd-analyze, socket activation,
a raw client run as a test user, and a lock that keeps two test runs from installing
packages at the same time.

Everything is real: the shipped unit files, systemd's own tools, the real broker as
root, clients as the test users. systemd is not PID 1 on these machines, so the
service manager itself is emulated where it must be: systemd-socket-activate (or the
LISTEN_FDS protocol by hand) hands over the socket, setpriv applies the unit's
capability bounding set and no_new_privs, and prctl(PR_SET_MDWE) stands in for
MemoryDenyWriteExecute=.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers

REPO = helpers.REPO
SYSTEMD_DIR = REPO / "packaging" / "systemd"
SOCKET_UNIT = SYSTEMD_DIR / "perf-mcp-broker.socket"
SERVICE_UNIT = SYSTEMD_DIR / "perf-mcp-broker.service"
UNIT_BROKER_PATH = "/usr/sbin/perf-mcp-broker"
CLIENT = Path(__file__).resolve().parent / "pkg_client.py"
POLICY = Path("/usr/share/polkit-1/actions/org.perfmcp.policy")
RULES = Path("/etc/polkit-1/rules.d/50-perf-mcp.rules")
PACKAGING_LOCK = "/run/lock/perf-mcp-packaging-tests.lock"

# Python's stand-in for MemoryDenyWriteExecute=: PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN)
# (Linux 6.3+), inherited by every child, then exec the rest of the command line.
MDWE_LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
os.execvp(sys.argv[1], sys.argv[1:])
"""


# Figures the tests measured, printed at the end of the run (conftest.py).
FIGURES: list[str] = []


def report(title: str, **figures: object) -> None:
    line = f"{title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    FIGURES.append(line)


# --------------------------------------------------------------------------- unit files


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (comments and blanks skipped)."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def service_directives(service: Path = SERVICE_UNIT) -> dict[str, list[str]]:
    return parse_unit(service.read_text())["Service"]


def exec_start_args() -> list[str]:
    """The arguments ExecStart= gives the broker (after its path)."""
    argv = service_directives()["ExecStart"][-1].split()
    assert argv[0] == UNIT_BROKER_PATH, argv
    return argv[1:]


def exec_start(service: Path) -> list[str]:
    return service_directives(service)["ExecStart"][-1].split()


def bounding_set(service: Path = SERVICE_UNIT) -> list[str]:
    """CapabilityBoundingSet= of the service, as setpriv names (perfmon, bpf, ...)."""
    caps = " ".join(service_directives(service)["CapabilityBoundingSet"]).split()
    return [c.lower().removeprefix("cap_") for c in caps]


def listen_path() -> str:
    return parse_unit(SOCKET_UNIT.read_text())["Socket"]["ListenStream"][-1]


def write_units(directory: Path, broker_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The shipped units, with ExecStart= pointing at broker_path (the one change:
    systemd-analyze verify insists that the program exists)."""
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / SOCKET_UNIT.name
    service = directory / SERVICE_UNIT.name
    shutil.copy(SOCKET_UNIT, sock)
    service.write_text(SERVICE_UNIT.read_text().replace(UNIT_BROKER_PATH, os.fspath(broker_path)))
    return sock, service


# --------------------------------------------------------------------------- systemd-analyze


@dataclass(frozen=True)
class SecurityReport:
    score: float
    label: str
    rows: list[dict[str, Any]]
    text: str

    def exposures(self) -> dict[str, float]:
        """json_field -> exposure of every check the unit does not pass."""
        return {r["json_field"]: float(r["exposure"]) for r in self.rows if r["exposure"]}


_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)")


def parse_overall(text: str) -> tuple[float, str]:
    match = _OVERALL.search(text)
    if match is None:
        raise ValueError(f"no overall exposure level in:\n{text}")
    return float(match.group(1)), match.group(2)


def security_report(service: Path) -> SecurityReport:
    def analyze(*extra: str) -> str:
        res = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--no-pager", *extra, service.name],
            cwd=service.parent, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    text = analyze()
    score, label = parse_overall(text)
    return SecurityReport(score, label, json.loads(analyze("--json=short")), text)


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *[u.name for u in units]],
        cwd=units[0].parent, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )


# --------------------------------------------------------------------------- clients


def run_client(user: str | helpers.UnixUser, socket_path: str | os.PathLike[str], kind: str,
               timeout: float = 120.0) -> dict[str, Any]:
    """pkg_client.py as `user`: the broker's final message as a dict."""
    argv = helpers.as_user_argv(user, [helpers.VENV_PYTHON, CLIENT, os.fspath(socket_path), kind])
    res = subprocess.run(argv, env=helpers.user_env(user), cwd="/", capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=timeout)
    assert res.returncode == 0, f"client exit {res.returncode}: {res.stderr}"
    return json.loads(res.stdout)


# --------------------------------------------------------------------------- brokers


def mdwe_supported() -> bool:
    res = subprocess.run([sys.executable, "-c", MDWE_LAUNCHER, "true"], capture_output=True, stdin=subprocess.DEVNULL)
    return res.returncode == 0


def sandbox_prefix(caps: Sequence[str], mdwe: bool) -> list[str]:
    """The part of the unit we can apply without systemd: MemoryDenyWriteExecute
    (PR_SET_MDWE), CapabilityBoundingSet and NoNewPrivileges (setpriv)."""
    prefix = [sys.executable, "-c", MDWE_LAUNCHER] if mdwe else []
    return prefix + [helpers.SETPRIV, f"--bounding-set=-all,{','.join('+' + c for c in caps)}",
                     "--no-new-privs", "--"]


@dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        return helpers.stop_process(self.proc, 10.0)


def spawn_logged(argv: Sequence[str | os.PathLike[str]], log_path: Path, *, env: Mapping[str, str],
                 umask: int = -1, pass_fds: Sequence[int] = ()) -> Spawned:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([os.fspath(a) for a in argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd="/", env=dict(env), umask=umask, pass_fds=tuple(pass_fds),
                                start_new_session=True)
    return Spawned(proc, log_path)


def base_env(runtime_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What systemd gives a system service (plus RUNTIME_DIRECTORY=)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "RUNTIME_DIRECTORY": os.fspath(runtime_dir)}
    env.update(extra or {})
    return env


def start_socket_activated(broker_argv: Sequence[str | os.PathLike[str]], socket_path: Path, runtime_dir: Path,
                           log_path: Path, *, mdwe: bool, env_extra: Mapping[str, str] | None = None,
                           service: Path = SERVICE_UNIT) -> Spawned:
    """systemd-socket-activate listening on socket_path (with the unit's SocketMode=)
    that execs the broker, in place, on the first connection, inside the unit's sandbox
    as far as it can be applied here. The returned PID becomes the broker's."""
    env = base_env(runtime_dir, env_extra)
    activate = ["systemd-socket-activate", "-l", os.fspath(socket_path)]
    activate += [f"--setenv={k}={v}" for k, v in env.items() if k != "PATH"]
    spawned = spawn_logged(sandbox_prefix(bounding_set(service), mdwe) + activate + list(broker_argv), log_path,
                           env=env)
    if not helpers.wait_until(lambda: socket_path.exists() or spawned.proc.poll() is not None, 10.0):
        spawned.stop()
        raise RuntimeError(f"systemd-socket-activate did not create {socket_path}:\n{spawned.log_text()}")
    # systemd-socket-activate creates the socket 0644 whatever the umask; systemd
    # applies SocketMode= from the unit.
    socket_path.chmod(int(parse_unit(SOCKET_UNIT.read_text())["Socket"]["SocketMode"][-1], 8))
    return spawned


def serve_installed(service: Path, site_dir: str, workdir: Path, users: helpers.TestUsers) -> dict[str, Any]:
    """Start an installed broker as its installed unit says (socket activation, the
    unit's ExecStart, bounding set, no_new_privs, MDWE) and talk to it as the test
    users. Returns figures; raises AssertionError on a wrong answer."""
    sock = workdir / "installed.sock"
    runtime = workdir / "installed-runtime"
    runtime.mkdir(mode=0o700)
    activated = start_socket_activated(exec_start(service), sock, runtime, workdir / "installed.log",
                                       mdwe=mdwe_supported(), service=service)
    try:
        granted = run_client(users.granted, sock, "access")
        assert granted["granted"] == ["profile", "trace", "inspect"], granted
        denied = run_client(users.denied, sock, "access")
        assert denied["granted"] == [], denied
        profile = run_client(users.granted, sock, "profile")
        assert profile["type"] == "result", profile
        assert all(not s["timed_out"] for s in profile["steps"]) and profile["steps"][-1]["stdout"] > 0, profile
        # The broker that answered runs the installed code, not the development tree.
        mapped = mapped_files(activated.pid)
        assert any(p.startswith(site_dir + "/") for p in mapped), sorted(mapped)
        assert not any(p.startswith(os.fspath(REPO) + "/") for p in mapped), sorted(mapped)
        cmdline = Path(f"/proc/{activated.pid}/cmdline").read_text().split("\0")
        assert activated.proc.poll() is None
    finally:
        activated.stop()
    log = activated.log_text()
    assert "Traceback" not in log and "refusing" not in log, log
    return {"cmdline": " ".join(cmdline).strip(), "profile_stdout_bytes": profile["steps"][-1]["stdout"]}


def tree_problems(paths: Sequence[str]) -> list[str]:
    """Installed paths that are not root-owned or are writable by group or others."""
    out = []
    for path in paths:
        st = os.lstat(path)
        if os.path.islink(path):
            continue
        if st.st_uid != 0 or st.st_mode & 0o022:
            out.append(f"{path}: uid {st.st_uid} mode {st.st_mode & 0o7777:04o}")
    return out


# The LISTEN_FDS protocol by hand: dup the inherited socket to fd 3, set LISTEN_PID
# to our own pid (kept across exec) and exec the broker.
LISTEN_FDS_LAUNCHER = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="perf-mcp-broker.socket")
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass
class SocketHolder:
    """Plays systemd's part for a socket unit: holds the listening socket for as long
    as the test runs and starts a broker with it whenever a client is waiting and no
    broker runs (as systemd does after an idle exit)."""

    path: Path
    runtime_dir: Path
    log_path: Path
    broker_argv: list[str]
    env_extra: dict[str, str] = field(default_factory=dict)
    sock: socket.socket | None = None
    current: Spawned | None = None
    started: list[Spawned] = field(default_factory=list)

    def listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o111)
        try:
            sock.bind(os.fspath(self.path))
        finally:
            os.umask(old)
        sock.listen(64)
        self.sock = sock

    def client_waiting(self) -> bool:
        assert self.sock is not None
        return bool(select.select([self.sock], [], [], 0)[0])

    def running(self) -> bool:
        return self.current is not None and self.current.proc.poll() is None

    def activate(self) -> Spawned:
        assert self.sock is not None
        fd = self.sock.fileno()
        argv = [sys.executable, "-c", LISTEN_FDS_LAUNCHER, str(fd), *self.broker_argv]
        self.current = spawn_logged(argv, self.log_path, env=base_env(self.runtime_dir, self.env_extra),
                                    pass_fds=[fd])
        self.started.append(self.current)
        return self.current

    def serve_once(self, timeout: float = 10.0) -> Spawned | None:
        """Start a broker if a client waits and none runs (what systemd does)."""
        if not self.running() and helpers.wait_until(self.client_waiting, timeout):
            return self.activate()
        return None

    def close(self) -> None:
        for spawned in self.started:
            spawned.stop()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# --------------------------------------------------------------------------- machine state


@contextlib.contextmanager
def packaging_lock() -> Iterator[None]:
    """One packaging test run at a time on this machine (dpkg and /usr are shared)."""
    with open(PACKAGING_LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class SavedFiles:
    """Files as they were, to be put back byte for byte (mode and owner too)."""

    saved: dict[Path, tuple[bytes, os.stat_result] | None]

    @classmethod
    def take(cls, *paths: Path) -> SavedFiles:
        return cls({p: (p.read_bytes(), p.stat()) if p.exists() else None for p in paths})

    def restore(self, *only: Path) -> None:
        for path, before in self.saved.items():
            if only and path not in only:
                continue
            if before is None:
                path.unlink(missing_ok=True)
                continue
            data, st = before
            if path.exists() and path.read_bytes() == data:
                continue
            tmp = path.with_name(f".{path.name}.test-restore")
            tmp.write_bytes(data)
            os.chown(tmp, st.st_uid, st.st_gid)
            tmp.chmod(st.st_mode & 0o7777)
            os.replace(tmp, path)


@contextlib.contextmanager
def polkit_files_preserved() -> Iterator[SavedFiles]:
    """The development set-up installs the same polkit files an install or the package
    does (packaging/dev-setup.sh); put back whatever was there before. A test may
    restore earlier (other test runs on this machine rely on the action file)."""
    saved = SavedFiles.take(POLICY, RULES)
    try:
        yield saved
    finally:
        saved.restore()


def proc_status(pid: int, proc: str | os.PathLike[str] = "/proc") -> dict[str, str]:
    out = {}
    for line in (Path(proc) / str(pid) / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def cap_mask(names: Sequence[str]) -> int:
    """Capability names (perfmon, sys_admin, ...) as a CapBnd-style bit mask."""
    import prctl

    return sum(1 << getattr(prctl, f"CAP_{n.upper()}") for n in names)


def mapped_files(pid: int) -> set[str]:
    from perf_mcp_broker.integrity import parse_mapped_files

    return set(parse_mapped_files(Path(f"/proc/{pid}/maps").read_text()))


def kill_by_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- systemd in a container
#
# systemd is not PID 1 on these machines, but systemd-nspawn can boot one in a
# container: the host's own /usr (read-only, with the package's /usr laid over it),
# the host's /etc (read-only), a fresh tmpfs for the rest, a private network, and
# only the units a small target pulls in (D-Bus and perf-mcp-broker.socket). The
# units, the sandbox, socket activation, polkit on D-Bus and perf are then all real.

PMTEST_TARGET = """[Unit]
Description=perf-mcp packaging test boot
Requires=basic.target
Wants=dbus.socket perf-mcp-broker.socket
After=basic.target
"""
CONTAINER_CAPS = "CAP_PERFMON,CAP_BPF,CAP_SYSLOG,CAP_IPC_LOCK"  # on top of nspawn's default set


@dataclass
class Container:
    proc: subprocess.Popen[bytes]
    log_path: Path
    unit_dir: Path
    init_pid: int = 0

    def path(self, inside: str) -> Path:
        """A path inside the container, seen from the host."""
        return Path(f"/proc/{self.init_pid}/root{inside}")

    def argv(self, argv: Sequence[str | os.PathLike[str]], user: str | helpers.UnixUser | None = None) -> list[str]:
        inner = [os.fspath(a) for a in argv]
        if user is not None:
            inner = helpers.as_user_argv(user, inner)
        return ["nsenter", "-t", str(self.init_pid), "-a", *inner]

    def run(self, argv: Sequence[str | os.PathLike[str]], user: str | helpers.UnixUser | None = None,
            timeout: float = 120.0, stdin_text: str | None = None) -> subprocess.CompletedProcess[str]:
        env = helpers.user_env(user) if user is not None else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        return subprocess.run(self.argv(argv, user), capture_output=True, text=True, timeout=timeout, env=env,
                              input=stdin_text, stdin=None if stdin_text is not None else subprocess.DEVNULL)

    def mount_ns_is_private(self) -> bool:
        return os.readlink(f"/proc/{self.init_pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")

    def mount_tracefs(self) -> None:
        """tracefs inside the container only (nspawn's /sys has none)."""
        assert self.mount_ns_is_private(), "refusing to mount: not the container's own mount namespace"
        res = subprocess.run(["nsenter", "-t", str(self.init_pid), "-m", "--", "mount", "-t", "tracefs", "tracefs",
                              "/sys/kernel/tracing"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr

    def systemctl_show(self, unit: str, *props: str) -> dict[str, str]:
        res = self.run(["systemctl", "show", unit, *[f"--property={p}" for p in props]])
        assert res.returncode == 0, res.stderr
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def boot_container(usr_overlay: Path, unit_dir: Path, log_path: Path, timeout: float = 60.0) -> Container:
    """Boot systemd in a container; returns once perf-mcp-broker.socket listens."""
    argv = [
        "systemd-nspawn", "--quiet", "--directory=/", "--volatile=yes", "--register=no", "--keep-unit",
        "--link-journal=no", "--private-network", f"--capability={CONTAINER_CAPS}",
        "--system-call-filter=bpf perf_event_open",
        "--bind-ro=/etc", f"--bind-ro={unit_dir}:/etc/systemd/system",
        f"--overlay-ro=/usr:{usr_overlay}:/usr", f"--bind-ro={REPO}",
        "--boot", "--", "systemd.unit=pmtest.target",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    container = Container(proc, log_path, unit_dir)

    def booted() -> bool:
        if proc.poll() is not None:
            return True
        children = [p for p in helpers.children(proc.pid) if helpers.read_proc_stat(p) is not None]
        if children:
            container.init_pid = children[0]
            return container.path("/run/perf-mcp/broker.sock").exists()
        return False

    if not helpers.wait_until(booted, timeout, 0.2) or proc.poll() is not None:
        container.stop()
        raise RuntimeError(f"the container did not boot:\n{log_path.read_text(errors='replace')[-3000:]}")
    return container


def sandbox_properties(service: Path) -> list[str]:
    """The unit's sandbox as systemd-run --property= arguments (what a job inherits)."""
    skip = {"ExecStart", "Type", "User", "Restart", "RuntimeDirectory", "RuntimeDirectoryMode", "OOMPolicy",
            "KillSignal", "TimeoutStopSec"}
    out = []
    for key, values in service_directives(service).items():
        if key not in skip:
            out += [f"--property={key}={v}" for v in values]
    return out
