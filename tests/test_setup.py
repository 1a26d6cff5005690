"""The machine set-up (packaging/dev-setup.sh) that every other root test relies on:
tracefs, the test users and group, a system D-Bus, polkit with the shipped policy and
example rules, a virtualenv the test users can run. Also the shared helpers themselves.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import helpers

POLICY = helpers.REPO / "polkit" / "org.perfmcp.policy"
RULES = helpers.REPO / "polkit" / "50-perf-mcp.rules"
DTD = Path("/usr/share/polkit-1/policyconfig-1.dtd")


@pytest.mark.root
def test_tracefs_events_present() -> None:
    events = Path("/sys/kernel/tracing/events")
    assert events.is_dir(), "tracefs is not mounted at /sys/kernel/tracing"
    # The tracepoints the tracing tools lean on.
    assert (events / "sched" / "sched_switch").is_dir()
    assert (events / "syscalls").is_dir() or (events / "raw_syscalls").is_dir()


def test_users_and_group(test_users: helpers.TestUsers) -> None:
    granted, denied = test_users.granted, test_users.denied
    assert granted.uid != 0 and denied.uid != 0
    assert granted.uid != denied.uid
    assert granted.in_group("perf-mcp")
    assert not denied.in_group("perf-mcp")
    members = grp.getgrnam("perf-mcp").gr_mem
    assert "perfmcp-granted" in members and "perfmcp-denied" not in members


@pytest.mark.root
def test_setpriv_gives_the_users_their_groups(test_users: helpers.TestUsers) -> None:
    gid = test_users.group_gid
    for user, expect_member in ((test_users.granted, True), (test_users.denied, False)):
        def run_id(flag: str) -> str:
            return subprocess.run(
                helpers.as_user_argv(user, ["/usr/bin/id", flag]),
                capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL,
            ).stdout

        assert int(run_id("-u")) == user.uid
        assert (gid in {int(g) for g in run_id("-G").split()}) is expect_member


def test_system_bus_answers(system_bus: None) -> None:
    assert helpers.system_bus_answers()


@pytest.mark.root
def test_polkit_files_installed() -> None:
    assert Path("/usr/share/polkit-1/actions/org.perfmcp.policy").read_bytes() == POLICY.read_bytes()
    assert Path("/etc/polkit-1/rules.d/50-perf-mcp.rules").read_bytes() == RULES.read_bytes()


def test_policy_is_valid_against_the_polkit_dtd() -> None:
    xmllint = shutil.which("xmllint")
    if xmllint is None:
        pytest.fail(f"xmllint missing (libxml2-utils): {helpers.SETUP_HINT}", pytrace=False)
    res = subprocess.run(
        [xmllint, "--noout", "--dtdvalid", str(DTD), str(POLICY)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr


def test_policy_defaults_ask_an_admin_every_time() -> None:
    import xml.etree.ElementTree as ET

    root = ET.parse(POLICY).getroot()
    actions = {a.get("id"): a for a in root.findall("action")}
    assert set(actions) == set(helpers.POLKIT_ACTIONS)
    for action in actions.values():
        defaults = action.find("defaults")
        assert defaults is not None
        assert defaults.findtext("allow_any") == "no"
        assert defaults.findtext("allow_inactive") == "no"
        assert defaults.findtext("allow_active") == "auth_admin"
        assert (action.findtext("message") or "").strip()


@pytest.mark.parametrize("action", helpers.POLKIT_ACTIONS)
def test_polkit_grants_the_group_and_refuses_others(
    system_bus: None, test_users: helpers.TestUsers, action: str
) -> None:
    answers = {}
    for user in (test_users.granted, test_users.denied):
        proc = helpers.spawn_as(user, ["/bin/sleep", "30"])
        try:
            assert helpers.proc_uid(proc.pid) == user.uid
            answers[user.name] = helpers.pkcheck(action, proc.pid)
        finally:
            proc.kill()
            proc.wait()
    assert answers == {
        "perfmcp-granted": helpers.PKCHECK_AUTHORIZED,
        "perfmcp-denied": helpers.PKCHECK_NOT_AUTHORIZED,
    }


def test_polkit_error_for_an_unknown_action_is_not_a_yes(
    system_bus: None, test_users: helpers.TestUsers
) -> None:
    proc = helpers.spawn_as(test_users.granted, ["/bin/sleep", "30"])
    try:
        rc = helpers.pkcheck("org.perfmcp.no-such-action", proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert rc not in (helpers.PKCHECK_AUTHORIZED, helpers.PKCHECK_NOT_AUTHORIZED)


@pytest.mark.root
def test_venv_python_runs_as_the_denied_user(test_users: helpers.TestUsers) -> None:
    assert helpers.VENV_PYTHON.exists()
    res = subprocess.run(
        helpers.as_user_argv(
            test_users.denied,
            [helpers.VENV_PYTHON, "-c", "import os, perf_mcp_protocol, mcp, trio; print(os.getuid())"],
        ),
        capture_output=True, text=True, stdin=subprocess.DEVNULL, env=helpers.user_env(test_users.denied),
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) == test_users.denied.uid


def test_entry_points_installed() -> None:
    for exe in (helpers.FRONTEND_BIN, helpers.BROKER_BIN):
        assert exe.exists() and os.access(exe, os.X_OK), f"{exe}: {helpers.SETUP_HINT}"


@pytest.mark.root
def test_dev_setup_is_idempotent(test_users: helpers.TestUsers) -> None:
    """On a machine that has everything, the set-up changes nothing and still checks polkit."""
    res = subprocess.run(
        ["bash", str(helpers.REPO / "packaging" / "dev-setup.sh")],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    change = re.compile(r"\b(creating|installing|adding|removing|starting|mounting|missing)\b")
    changes = [line for line in res.stderr.splitlines() if line.startswith("dev-setup:") and change.search(line)]
    assert changes == []
    assert "yes for perfmcp-granted, no for perfmcp-denied" in res.stderr
    assert "***" not in res.stderr  # no loud warning (tree unreadable, foreign venv)


# ------------------------------------------------------------------ the helpers


def test_parse_proc_stat_with_a_hostile_comm() -> None:
    text = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0\n"
    st = helpers.parse_proc_stat(text)
    assert (st.pid, st.comm, st.state, st.ppid, st.pgrp, st.starttime) == (4242, "a) b (c)", "S", 1, 4242, 777)


def test_parse_listening_unix_paths() -> None:
    text = (
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01  9517 /run/dbus/system_bus_socket\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03  9564 /tmp/connected.sock\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03  9523\n"
    )
    assert helpers.parse_listening_unix_paths(text) == {"/run/dbus/system_bus_socket"}


def test_zombie_and_fd_helpers_see_a_real_zombie() -> None:
    before = helpers.open_fd_count(os.getpid())
    r, w = os.pipe()
    assert helpers.open_fd_count(os.getpid()) == before + 2
    os.close(r)
    os.close(w)
    proc = subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL)
    try:
        # Not reaped yet: a zombie child of ours.
        assert helpers.wait_until(lambda: proc.pid in helpers.zombie_children(os.getpid()), 5.0)
    finally:
        proc.wait()
    assert proc.pid not in helpers.zombie_children(os.getpid())


@pytest.mark.root
def test_busy_process_burns_cpu_as_the_user(
    busy_process_factory, test_users: helpers.TestUsers  # type: ignore[no-untyped-def]
) -> None:
    busy = busy_process_factory(test_users.granted)
    assert helpers.proc_uid(busy.pid) == test_users.granted.uid
    # setpriv changes the uid before it execs the program: wait for the exec (liveness guard)
    assert helpers.wait_until(lambda: (st := helpers.read_proc_stat(busy.pid)) is not None
                              and st.comm == helpers.BUSY_COMM, 30.0), helpers.read_proc_stat(busy.pid)
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_ticks() -> int:
        fields = Path(f"/proc/{busy.pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    start = cpu_ticks()
    # It must be running, not sleeping: CPU time grows.
    assert helpers.wait_until(lambda: cpu_ticks() - start >= ticks // 5, 30.0)
    symbols = subprocess.run(["nm", str(busy.exe)], capture_output=True, text=True, check=True).stdout
    assert busy.leaf_symbol in symbols and busy.loop_symbol in symbols


CONNECT = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.close()"


def test_broker_fixture_listens_for_the_test_users(
    broker: helpers.RunningBroker, test_users: helpers.TestUsers
) -> None:
    assert broker.alive()
    assert helpers.unix_socket_listening(broker.socket_path)
    assert helpers.proc_uid(broker.pid) == 0
    # Reachable by a non-root user: the directory is traversable and the socket
    # accepts connections (authorisation is per job, not by file mode).
    res = subprocess.run(
        helpers.as_user_argv(test_users.denied, [helpers.VENV_PYTHON, "-c", CONNECT, str(broker.socket_path)]),
        capture_output=True, text=True, stdin=subprocess.DEVNULL, env=helpers.user_env(test_users.denied), cwd="/",
    )
    assert res.returncode == 0, res.stderr


def test_broker_factory_passes_arguments_and_stops_by_pid(broker_factory) -> None:  # type: ignore[no-untyped-def]
    first = broker_factory(output_cap=65536)
    second = broker_factory()
    assert first.argv[-2:] == ["--output-cap", "65536"]
    assert first.socket_path != second.socket_path and first.pid != second.pid
    assert first.alive() and second.alive()
    assert helpers.stop_broker(first) == []
    assert first.proc.returncode is not None and second.alive()


@pytest.mark.root
async def test_mcp_client_helper_runs_the_frontend_as_the_user(
    broker: helpers.RunningBroker, test_users: helpers.TestUsers
) -> None:
    before = set(helpers.processes_named("perf-mcp"))
    async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
        tools = await client.list_tools()
        assert "perf_info" in {t.name for t in tools.tools}
        # The frontend the helper spawned runs as the test user, never as root.
        frontends = set(helpers.processes_named("perf-mcp")) - before
        assert frontends, "no perf-mcp process found"
        assert {helpers.proc_uid(pid) for pid in frontends} == {test_users.denied.uid}
