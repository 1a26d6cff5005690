"""The Debian package under a real systemd: systemd-nspawn boots systemd as PID 1 in
a container whose /usr is this machine's with the package laid over it. systemd
itself then listens on /run/perf-mcp/broker.sock, starts the hardened service on the
first connection, polkit answers on the container's own D-Bus with the shipped
policy and rules, and perf runs inside the unit's sandbox. Under the same sandbox
(systemd-run with the unit's properties) every tool of the broker's table attaches
and prints, and things the sandbox forbids fail.

Skipped without systemd-nspawn (Debian: apt install systemd-container).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers
import pkg_util

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("systemd-nspawn") is None,
                       reason="systemd-nspawn missing (apt install systemd-container)"),
]

ALL_CLASSES = ["profile", "trace", "inspect"]
# Directories systemd-nspawn leaves in /run when /run is not a tmpfs.
NSPAWN_RUN_DIRS = (Path("/run/systemd/nspawn/propagate"), Path("/run/systemd/nspawn"), Path("/run/systemd/nspawn-root"))
IDLE_DROPIN = "[Service]\nExecStart=\nExecStart=/usr/sbin/perf-mcp-broker --idle-exit 2\n"


@pytest.fixture(scope="module")
def package_tree(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pkgroot")
    subprocess.run(["dpkg-deb", "-x", os.fspath(deb), os.fspath(root)], check=True, stdin=subprocess.DEVNULL)
    return root


@pytest.fixture(scope="module")
def container(package_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pkg_util.Container]:
    if helpers.broker_missing_reason() or not helpers.system_bus_answers():
        pytest.skip("needs the development set-up (sudo make setup)")
    existed = {d: d.exists() for d in NSPAWN_RUN_DIRS}
    unit_dir = tmp_path_factory.mktemp("etc-systemd")
    (unit_dir / "pmtest.target").write_text(pkg_util.PMTEST_TARGET)
    c = pkg_util.boot_container(package_tree / "usr", unit_dir, tmp_path_factory.mktemp("nspawn") / "boot.log")
    try:
        c.mount_tracefs()
        yield c
    finally:
        c.stop()
        for d in NSPAWN_RUN_DIRS:  # deepest first; only what this test created, only if empty
            if not existed[d]:
                try:
                    d.rmdir()
                except OSError:
                    pass


def client(c: pkg_util.Container, user: helpers.UnixUser, kind: str) -> dict:
    res = c.run([helpers.VENV_PYTHON, pkg_util.CLIENT, "/run/perf-mcp/broker.sock", kind], user=user)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def journal(c: pkg_util.Container, unit: str) -> str:
    return c.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout


def test_systemd_socket_activation_polkit_and_a_profile(container: pkg_util.Container,
                                                         test_users: helpers.TestUsers) -> None:
    c = container
    sock = c.path("/run/perf-mcp/broker.sock")
    assert sock.stat().st_mode & 0o777 == 0o666
    assert c.systemctl_show("perf-mcp-broker.socket", "ActiveState")["ActiveState"] == "active"
    assert c.systemctl_show("perf-mcp-broker.service", "ActiveState")["ActiveState"] == "inactive"

    granted = client(c, test_users.granted, "access")  # starts the service
    assert granted["granted"] == ALL_CLASSES, granted
    show = c.systemctl_show("perf-mcp-broker.service", "ActiveState", "MainPID", "ExecStart")
    assert show["ActiveState"] == "active" and "/usr/sbin/perf-mcp-broker" in show["ExecStart"]
    status = pkg_util.proc_status(int(show["MainPID"]), c.path("/proc"))  # a PID of the container
    from perf_mcp_broker.hardening import JOBS, KEEP

    # The broker keeps KEEP; its bounding set, what any job can hold, is JOBS only.
    own = int(pkg_util.proc_status(os.getpid())["CapBnd"], 16)
    assert int(status["CapEff"], 16) == pkg_util.cap_mask(list(KEEP)) & own
    assert int(status["CapBnd"], 16) == pkg_util.cap_mask(list(JOBS)) & own
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"  # seccomp filter from the unit

    denied = client(c, test_users.denied, "access")
    assert denied["granted"] == [] and denied["denied"] == ALL_CLASSES, denied
    profile = client(c, test_users.granted, "profile")
    assert profile["type"] == "result" and len(profile["steps"]) == 2, (profile, journal(c, "perf-mcp-broker.service")[-3000:])
    record, script = profile["steps"]
    assert not record["timed_out"] and script["exit_status"] == 0, profile
    assert record["argv"][-1].startswith("/run/perf-mcp-broker/jobs/job")  # RuntimeDirectory=
    # Kernel frames, with names: /proc/kallsyms must stay readable in the sandbox
    # (ProtectKernelTunables=yes hides it and perf then records no kernel frames).
    assert script["kernel_frames"] > 0 and script["kernel_frames_named"] == script["kernel_frames"], script
    refused = client(c, test_users.denied, "profile")
    assert refused["type"] == "error" and refused["code"] == "PERMISSION_DENIED"

    log = journal(c, "perf-mcp-broker.service")
    assert "serving on systemd socket" in log and "Traceback" not in log and "refusing" not in log, log
    pkg_util.report("systemd in a container", systemd=c.run(["systemctl", "--version"]).stdout.split("\n")[0],
                    kernel_frames=script["kernel_frames"], script_stdout_bytes=script["stdout"],
                    capbnd=status["CapBnd"])


def test_idle_exit_and_activation_by_systemd(container: pkg_util.Container, test_users: helpers.TestUsers) -> None:
    c = container
    dropin = c.unit_dir / "perf-mcp-broker.service.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "idle.conf").write_text(IDLE_DROPIN)
    try:
        assert c.run(["systemctl", "stop", "perf-mcp-broker.service"]).returncode == 0
        assert c.run(["systemctl", "daemon-reload"]).returncode == 0
        assert client(c, test_users.granted, "access")["granted"] == ALL_CLASSES
        first = c.systemctl_show("perf-mcp-broker.service", "MainPID")["MainPID"]

        def stopped() -> bool:
            return c.systemctl_show("perf-mcp-broker.service", "ActiveState")["ActiveState"] == "inactive"

        assert helpers.wait_until(stopped, 30, 0.5), "the service did not exit when idle"
        show = c.systemctl_show("perf-mcp-broker.service", "Result", "ExecMainStatus")
        assert show == {"Result": "success", "ExecMainStatus": "0"}, show
        assert c.systemctl_show("perf-mcp-broker.socket", "ActiveState")["ActiveState"] == "active"
        assert client(c, test_users.denied, "access")["denied"] == ALL_CLASSES  # systemd starts it again
        second = c.systemctl_show("perf-mcp-broker.service", "MainPID", "ActiveState")
        assert second["MainPID"] != first
        assert "exiting (idle)" in journal(c, "perf-mcp-broker.service")
    finally:
        shutil.rmtree(dropin)
        c.run(["systemctl", "stop", "perf-mcp-broker.service"])
        c.run(["systemctl", "daemon-reload"])


def test_polkitd_stopped_means_denied(container: pkg_util.Container, test_users: helpers.TestUsers) -> None:
    """The container's own polkitd, stopped and masked (so D-Bus cannot start it again):
    the user the rules grant is denied everything; unmasked, granted again."""
    c = container
    assert client(c, test_users.granted, "access")["granted"] == ALL_CLASSES  # polkitd runs
    try:
        for cmd in (["systemctl", "mask", "--runtime", "polkit.service"], ["systemctl", "stop", "polkit.service"]):
            res = c.run(cmd)
            assert res.returncode == 0, res.stderr
        assert c.systemctl_show("polkit.service", "ActiveState")["ActiveState"] in ("inactive", "failed")
        reply = client(c, test_users.granted, "access")
        assert reply["granted"] == [] and reply["denied"] == ALL_CLASSES, reply
        assert "polkit error" in reply["detail"], reply
        refused = client(c, test_users.granted, "profile")
        assert refused["type"] == "error" and refused["code"] == "PERMISSION_DENIED", refused
        pkg_util.report("polkitd stopped (systemd in a container)", detail=reply["detail"][:100])
    finally:
        c.run(["systemctl", "unmask", "--runtime", "polkit.service"])
    assert client(c, test_users.granted, "access")["granted"] == ALL_CLASSES  # activated again


# What each program of the broker's table must do under the unit's sandbox. Tools that
# run until interrupted are stopped by `timeout -s INT` after 3 s: status 124 means the
# tool was still running then (it attached); a tool that fails to attach exits at once.
TOOL_RUNS = {
    "bpftrace-info": (["bpftrace", "--info"], 0, "tracepoint: yes"),
    "bpftrace-tracepoint": (["timeout", "-s", "INT", "3", "bpftrace", "-e",
                             "tracepoint:sched:sched_switch { @[comm] = count(); }"], 124, "@["),
    "bpftrace-kstack": (["timeout", "-s", "INT", "3", "bpftrace", "-e",
                         "tracepoint:sched:sched_switch { @[kstack(2)] = count(); }"], 124, "__schedule+"),
    "runqlat": (["timeout", "-s", "INT", "3", "runqlat"], 124, "usecs"),
    "biolatency": (["timeout", "-s", "INT", "3", "biolatency"], 124, "Tracing block device I/O"),
    "offcputime": (["timeout", "-s", "INT", "3", "offcputime"], 124, "schedule"),
    "syscount": (["timeout", "-s", "INT", "3", "syscount"], 124, "SYSCALL"),
    "execsnoop": (["timeout", "-s", "INT", "3", "execsnoop"], 124, "PCOMM"),
    "opensnoop": (["timeout", "-s", "INT", "3", "opensnoop"], 124, "PATH"),
    "tcplife": (["timeout", "-s", "INT", "3", "tcplife"], 124, "LADDR"),
    "gethostlatency": (["timeout", "-s", "INT", "3", "gethostlatency"], 124, "LATms"),
    "perf-record": (["sh", "-c", "perf record -e cpu-clock -F 99 -g -a -o $RUNTIME_DIRECTORY/p.data -- sleep 1"
                     " >/dev/null 2>&1 && perf script -i $RUNTIME_DIRECTORY/p.data -F ip,sym,dso 2>/dev/null"
                     " | grep -m1 -F '[kernel.kallsyms]'"], 0, "kernel.kallsyms"),
}
# And what the sandbox must stop; each of these works in the container without it.
PTRACE_PY = """
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
child = subprocess.Popen(["sleep", "30"])
ok = libc.ptrace(16, child.pid, None, None) == 0  # PTRACE_ATTACH
err = ctypes.get_errno()
child.kill()
sys.exit(0 if ok else f"ptrace: {os.strerror(err)}")
"""
VM_WRITEV_PY = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
src, dst = ctypes.create_string_buffer(b"x"), ctypes.create_string_buffer(1)
local, remote = iovec(ctypes.addressof(src), 1), iovec(ctypes.addressof(dst), 1)
n = libc.process_vm_writev(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
sys.exit(0 if n == 1 else f"process_vm_writev: {os.strerror(ctypes.get_errno())}")
"""
FORBIDDEN_RUNS = {
    "write /run": (["touch", "/run/perf-mcp-written"], "Read-only file system"),
    "new namespace": (["unshare", "--net", "true"], "Operation not permitted"),
    "mount": (["sh", "-c", "mount -t tmpfs tmpfs $RUNTIME_DIRECTORY && umount $RUNTIME_DIRECTORY"], "ermission denied"),
    "network": (["python3", "-c", "import socket; socket.socket(socket.AF_INET)"], "Address family not supported"),
    # No attaching to, or writing into, another process (SystemCallFilter=, ReadOnlyPaths=/proc).
    "ptrace": (["python3", "-c", PTRACE_PY], "ptrace: Operation not permitted"),
    "process_vm_writev": (["python3", "-c", VM_WRITEV_PY], "process_vm_writev: Operation not permitted"),
    "write /proc": (["sh", "-c", "echo pmcp > /proc/self/comm"], "Read-only file system"),
}


def sandboxed(c: pkg_util.Container, package_tree: Path, argv: list[str],
              sandbox: bool = True) -> subprocess.CompletedProcess[str]:
    """argv as a transient service with the unit's sandbox (or, as a control, without)."""
    service = package_tree / "usr/lib/systemd/system/perf-mcp-broker.service"
    props = pkg_util.sandbox_properties(service) if sandbox else []
    run = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--property=RuntimeDirectory=perf-mcp-probe",
           "--setenv=PATH=/usr/sbin:/usr/bin:/sbin:/bin", *props, "--", *argv]
    res = c.run(run, timeout=120)
    res.stdout = res.stdout + res.stderr
    return res


@pytest.mark.parametrize("tool", sorted(TOOL_RUNS))
def test_tool_runs_in_the_unit_sandbox(container: pkg_util.Container, package_tree: Path, tool: str) -> None:
    argv, status, expect = TOOL_RUNS[tool]
    res = sandboxed(container, package_tree, argv)
    assert res.returncode == status and expect in res.stdout, f"exit {res.returncode}:\n{res.stdout[-2000:]}"


@pytest.mark.parametrize("what", sorted(FORBIDDEN_RUNS))
def test_sandbox_forbids(container: pkg_util.Container, package_tree: Path, what: str) -> None:
    argv, expect = FORBIDDEN_RUNS[what]
    control = sandboxed(container, package_tree, argv, sandbox=False)
    assert control.returncode == 0, f"not a test of the sandbox: fails without it too:\n{control.stdout}"
    res = sandboxed(container, package_tree, argv)
    assert res.returncode != 0 and expect in res.stdout, f"exit {res.returncode}:\n{res.stdout[-2000:]}"
