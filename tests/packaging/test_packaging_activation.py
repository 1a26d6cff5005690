"""Socket activation of the real broker as the units describe it, and authorisation
with the shipped polkit policy and rules.

- systemd-socket-activate hands the socket to the broker, which runs with the unit's
  ExecStart arguments, its capability bounding set, no_new_privs and
  MemoryDenyWriteExecute (PR_SET_MDWE); non-root users, through a raw client and
  through the real frontend under an MCP client, get answers.
- The LISTEN_FDS protocol by hand, with the test holding the listening socket the way
  systemd does: the broker exits when idle (never during a job) and the next client
  starts a new one without losing its connection.
- polkit out of reach (no bus, or a bus without polkitd) means denied, even for a
  user the rules grant.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

import helpers
import pkg_util

pytestmark = [pytest.mark.root, pytest.mark.slow]

ALL_CLASSES = ["profile", "trace", "inspect"]


def ok_steps(result: dict) -> bool:
    return all(s["exit_status"] == 0 or s["signal"] == 2 for s in result["steps"]) and not any(
        s["timed_out"] for s in result["steps"]
    )


@pytest.fixture
def broker_ready(root_required: None, test_users: helpers.TestUsers, system_bus: None) -> None:
    reason = helpers.broker_missing_reason()
    if reason:
        pytest.skip(reason)


async def test_systemd_socket_activate_serves_non_root_users(
    broker_ready: None, workdir: Path, test_users: helpers.TestUsers
) -> None:
    sock = workdir / "broker.sock"
    runtime = workdir / "runtime"
    runtime.mkdir(mode=0o700)
    mdwe = pkg_util.mdwe_supported()
    broker_argv = [os.fspath(helpers.BROKER_BIN), *pkg_util.exec_start_args()]
    activated = pkg_util.start_socket_activated(broker_argv, sock, runtime, workdir / "broker.log", mdwe=mdwe)
    try:
        assert sock.stat().st_mode & 0o777 == 0o666  # SocketMode=0666
        # The first client connects before any broker runs; it waits in the backlog.
        granted = pkg_util.run_client(test_users.granted, sock, "access")
        assert granted["granted"] == ALL_CLASSES and granted["uid"] == test_users.granted.uid, granted
        denied = pkg_util.run_client(test_users.denied, sock, "access")
        assert denied["denied"] == ALL_CLASSES and denied["granted"] == [], denied

        # It is the broker that answered, in place of the activator (same PID), sandboxed.
        status = pkg_util.proc_status(activated.pid)
        assert os.fspath(helpers.BROKER_BIN) in Path(f"/proc/{activated.pid}/cmdline").read_text().split("\0")
        from perf_mcp_broker.hardening import JOBS, KEEP

        # hardening.py's sets, within what this machine has at all (these VMs lack
        # CAP_SYS_RESOURCE even in PID 1's bounding set): the broker keeps KEEP, and
        # its bounding set, what any job can hold, is JOBS only.
        own = int(pkg_util.proc_status(os.getpid())["CapBnd"], 16)
        assert int(status["CapEff"], 16) == pkg_util.cap_mask(list(KEEP)) & own, status["CapEff"]
        assert int(status["CapBnd"], 16) == pkg_util.cap_mask(list(JOBS)) & own, status["CapBnd"]
        assert status["NoNewPrivs"] == "1"

        profile = pkg_util.run_client(test_users.granted, sock, "profile")
        assert profile["type"] == "result", profile
        record, script = profile["steps"]
        assert ok_steps(profile) and script["stdout"] > 0, profile
        assert script["kernel_frames_named"] > 0, script  # kernel symbols (/proc/kallsyms, CAP_SYSLOG)
        # perf wrote into RUNTIME_DIRECTORY/jobs, as it will under systemd
        assert record["argv"][-1].startswith(f"{runtime}/jobs/job"), record["argv"]
        refused = pkg_util.run_client(test_users.denied, sock, "profile")
        assert refused["type"] == "error" and refused["code"] == "PERMISSION_DENIED", refused

        # The real frontend as a non-root user, under a real MCP client.
        async with helpers.mcp_client(test_users.granted, sock) as client:
            info = (await client.call_tool("perf_info", {})).structured_content
        broker = info["data"]["broker"]
        assert broker["available"] is True and "profile" in broker["granted"], broker
        assert broker["uid_seen"] == test_users.granted.uid
        pkg_util.report("socket activation (systemd-socket-activate)", mdwe=mdwe,
                        bounding_set=status["CapBnd"], profile_script_stdout_bytes=script["stdout"],
                        record_wall_s=record["wall_s"])
        assert activated.proc.poll() is None, activated.log_text()
    finally:
        activated.stop()
    log = activated.log_text()
    assert "Traceback" not in log and "refusing" not in log, log


def holder(workdir: Path, *extra: str, env: dict[str, str] | None = None) -> pkg_util.SocketHolder:
    runtime = workdir / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    h = pkg_util.SocketHolder(workdir / "broker.sock", runtime, workdir / "broker.log",
                              [os.fspath(helpers.BROKER_BIN), *extra], env_extra=env or {})
    h.listen()
    return h


def client_in_background(user: helpers.UnixUser, sock: Path, kind: str) -> subprocess.Popen[str]:
    argv = helpers.as_user_argv(user, [helpers.VENV_PYTHON, pkg_util.CLIENT, os.fspath(sock), kind])
    return subprocess.Popen(argv, env=helpers.user_env(user), cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def finished(proc: subprocess.Popen[str]) -> dict:
    import json

    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_idle_exit_and_activation_again(broker_ready: None, workdir: Path, test_users: helpers.TestUsers) -> None:
    h = holder(workdir, "--idle-exit", "2")
    try:
        first_client = client_in_background(test_users.granted, h.path, "access")
        first = h.serve_once()
        assert first is not None
        assert finished(first_client)["granted"] == ALL_CLASSES
        # No connection for 2 s: the broker exits by itself, with status 0.
        assert helpers.wait_until(lambda: first.proc.poll() is not None, 20), "the broker did not exit when idle"
        assert first.proc.returncode == 0
        assert "exiting (idle)" in h.log_path.read_text()
        # The socket is still held ("systemd"): the next client waits and gets a new broker.
        second_client = client_in_background(test_users.denied, h.path, "access")
        second = h.serve_once()
        assert second is not None and second.pid != first.pid
        assert finished(second_client)["denied"] == ALL_CLASSES
        pkg_util.report("idle exit", idle_exit_s=2, first_exit_status=first.proc.returncode, activations=len(h.started))
    finally:
        h.close()


def test_idle_exit_never_cuts_a_running_job(broker_ready: None, workdir: Path, test_users: helpers.TestUsers) -> None:
    """--idle-exit 1 and a profiling job of more than 1 s: the job's result arrives."""
    h = holder(workdir, "--idle-exit", "1")
    try:
        client = client_in_background(test_users.granted, h.path, "profile")  # 1 s of perf record + perf script
        spawned = h.serve_once()
        assert spawned is not None
        result = finished(client)
        assert result["type"] == "result" and ok_steps(result), result
        assert result["wall_s"] > 1.0  # longer than the idle time
        assert helpers.wait_until(lambda: spawned.proc.poll() is not None, 20)
        assert spawned.proc.returncode == 0
    finally:
        h.close()


@pytest.mark.parametrize("bus", ["no-bus", "bus-without-polkit"])
def test_polkit_out_of_reach_means_denied(broker_ready: None, workdir: Path, test_users: helpers.TestUsers,
                                          bus: str) -> None:
    """The granted user is granted by the shipped rules (see the activation test); when
    the broker cannot reach polkitd, the same user is denied everything."""
    daemon = None
    if bus == "no-bus":
        address = f"unix:path={workdir}/no-such-bus"
    else:
        # A D-Bus daemon of our own on a private socket, where nothing provides polkit.
        bus_sock = workdir / "bus"
        daemon = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile",
                                   f"--address=unix:path={bus_sock}"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert helpers.wait_until(bus_sock.exists, 10)
        address = f"unix:path={bus_sock}"
    h = holder(workdir, "--idle-exit", "30", env={"DBUS_SYSTEM_BUS_ADDRESS": address})
    try:
        client = client_in_background(test_users.granted, h.path, "access")
        assert h.serve_once() is not None
        reply = finished(client)
        assert reply["granted"] == [] and reply["denied"] == ALL_CLASSES, reply
        expected = "polkit unavailable" if bus == "no-bus" else "polkit error"
        assert expected in reply["detail"], reply
        client = client_in_background(test_users.granted, h.path, "profile")
        refused = finished(client)
        assert refused["type"] == "error" and refused["code"] == "PERMISSION_DENIED", refused
        pkg_util.report("polkit out of reach", bus=bus, detail=reply["detail"][:90])
    finally:
        h.close()
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(10)
