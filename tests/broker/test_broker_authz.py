"""Authorisation for real: polkit on the system D-Bus decides for non-root peers, and
identity comes from the socket, never from a message."""

from __future__ import annotations

import pytest
import trio

import helpers
from broker_wire import audit_records
from user_clients import broker_perf_processes, report, run_client

pytestmark = [pytest.mark.root]

ALL_CLASSES = ["profile", "trace", "inspect"]


def profile_spec(duration: float = 1.0, frequency: int = 99, pid: int | None = None) -> dict:
    return {"type": "cpu_profile", "duration_s": duration, "frequency_hz": frequency, "pid": pid, "include_kernel": True}


async def test_granted_user_may_profile_its_process(
    broker_alive: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers, busy_process_factory
) -> None:
    broker = broker_alive
    user = test_users.granted
    busy = busy_process_factory(user=user)
    run = await run_client(user.name, broker.socket_path, {"requests": [profile_spec(2.0, 99, busy.pid)]})
    conn = run.conns[0]
    final = conn.final
    assert final is not None and final["type"] == "result", conn.messages
    assert conn.types[:2] == ["broker_hello", "accepted"]
    assert conn.messages[1]["job_class"] == "profile"
    record, script = final["steps"]
    assert record["argv"][-4:-2] == ["-p", str(busy.pid)], record["argv"]
    import base64

    text = base64.b64decode(script["stdout"]).decode(errors="replace")
    assert busy.leaf_symbol in text, text[:500]
    audit = [r for r in audit_records(broker.log_text()) if r["kind"] == "cpu_profile"]
    assert [(r["uid"], r["pid"], r["outcome"]) for r in audit] == [(user.uid, run.pid, "ok")]
    report("granted profile", uid=user.uid, samples_text_bytes=len(text), audit_outcome=audit[0]["outcome"])


async def test_granted_access_query(broker_alive: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers) -> None:
    run = await run_client(test_users.granted.name, broker_alive.socket_path, {"requests": [{"type": "access_query"}]})
    final = run.conns[0].final
    assert final is not None and final["type"] == "access", run.conns
    assert sorted(final["granted"]) == sorted(ALL_CLASSES) and final["denied"] == []
    assert final["uid"] == test_users.granted.uid


async def test_denied_user_gets_permission_denied(
    broker_alive: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers
) -> None:
    broker = broker_alive
    user = test_users.denied
    requests = [profile_spec(), profile_spec(pid=1), {"type": "access_query"}, {"type": "tool_features"}]
    seen: list[str] = []

    async def watch_perf(done: trio.Event) -> None:
        while not done.is_set():
            seen.extend(str(p.pid) for p in broker_perf_processes(broker.pid))
            await trio.sleep(0.02)

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_perf, done)
        run = await run_client(user.name, broker.socket_path, {"requests": requests})
        done.set()
    profile, profile_pid1, access, features = (run.conns[i] for i in range(4))
    for conn in (profile, profile_pid1):
        assert conn.types == ["broker_hello", "error"], conn.messages
        assert conn.final["code"] == "PERMISSION_DENIED"
        assert "org.perfmcp.profile" in conn.final["message"] and "perf-mcp" in conn.final["message"]
    a = access.final
    assert a is not None and a["type"] == "access", access.messages
    assert a["granted"] == [] and sorted(a["denied"]) == sorted(ALL_CLASSES)
    assert a["uid"] == user.uid, "the broker must see the uid of the socket's peer"
    # A request that needs no grant still works for this user.
    assert features.final is not None and features.final["type"] == "result"
    audit = [r for r in audit_records(broker.log_text()) if r["kind"] == "cpu_profile"]
    assert [(r["uid"], r["outcome"], r["argv"]) for r in audit] == [(user.uid, "denied", [])] * 2
    assert not seen, f"perf ran for a denied user: {seen}"
    report("denied user", profile=profile.final["code"], access_denied=a["denied"], perf_processes_seen=len(seen))


async def test_client_gone_before_the_job_starts_gets_nothing_run(
    broker_alive: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers
) -> None:
    """The client exits the moment its request is sent: polkit answers for a process
    that is gone, the pidfd check sees it, and no perf runs."""
    broker = broker_alive
    user = test_users.granted
    tries = 5
    perf_seen: list[int] = []
    pids: list[int] = []

    async def watch_perf(done: trio.Event) -> None:
        while not done.is_set():
            perf_seen.extend(p.pid for p in broker_perf_processes(broker.pid))
            await trio.sleep(0.01)

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_perf, done)
        for _ in range(tries):
            run = await run_client(user.name, broker.socket_path, {"requests": [profile_spec(5.0)], "exit_after_send": True})
            assert run.returncode == 0, run.stderr
            assert run.conns[0].types == ["broker_hello"]
            pids.append(run.pid)
        # Give a job that wrongly started the time to show up.
        await trio.sleep(2.0)
        done.set()
    log = broker.log_text()
    mine = [r for r in audit_records(log) if r["pid"] in pids]
    report(
        "client gone before its job",
        tries=tries,
        audit=[f"{r['outcome']}: {r['detail']}" for r in mine],
        perf_processes_seen=len(set(perf_seen)),
    )
    # Where the exit lands decides the path: polkit cannot read the gone process
    # (denied), or the pidfd shows it exited once polkit said yes (denied): then no step
    # starts. A client still alive at that check was rightly authorised; its exit just
    # after it either fails the Accepted send (audit "error", no step) or ends a job that
    # has started, like any client killed mid-job ("cancelled": its group killed, nothing
    # left). A job of a client gone before the check never runs a step.
    outcomes = [r["outcome"] for r in mine]
    assert len(mine) == tries, mine
    assert all(o in ("denied", "error", "cancelled") for o in outcomes), mine
    assert all(not r["argv"] for r in mine if r["outcome"] != "cancelled"), mine
    assert "denied" in outcomes, outcomes
    if "cancelled" not in outcomes:
        assert not perf_seen, f"perf started for a client that had exited: {perf_seen}"
    assert not broker_perf_processes(broker.pid), "a perf of a gone client is still running"
    assert not broker_perf_processes(broker.pid)


async def test_client_exited_but_not_reaped_is_denied(
    broker_alive: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers
) -> None:
    """The client is a zombie (exited, its parent has not reaped it) when polkit
    answers: polkit still reads its /proc entry and says yes for the granted user,
    so only the broker's liveness check on the pidfd can refuse the job."""
    broker = broker_alive
    spec = {"requests": [profile_spec(5.0)], "exit_after_send": True, "unreaped_child": True}
    runs = [await run_client(test_users.granted.name, broker.socket_path, spec) for _ in range(3)]
    children = [pid for r in runs for pid in r.child_pids]
    assert len(children) == 3, [r.stderr for r in runs]
    mine = [r for r in audit_records(broker.log_text()) if r["pid"] in children]
    report("zombie client", audit=[f"{r['outcome']}: {r['detail']}" for r in mine])
    assert [(r["outcome"], r["argv"]) for r in mine] == [("denied", [])] * 3, mine
    assert all("exited before authorisation" in r["detail"] for r in mine), mine


async def test_a_message_cannot_carry_a_uid(
    broker_alive: helpers.RunningBroker, system_bus: None, test_users: helpers.TestUsers
) -> None:
    broker = broker_alive
    user = test_users.denied
    with_uid = await run_client(user.name, broker.socket_path, {"requests": [{**profile_spec(), "uid": 0}, {"type": "access_query", "uid": 0}]})
    for conn in with_uid.conns.values():
        assert conn.types == ["broker_hello"] and conn.closed, conn.messages
    hello_uid = await run_client(
        user.name, broker.socket_path, {"requests": [{"type": "access_query"}], "hello": {"type": "hello", "protocol_version": 1, "uid": 0}}
    )
    assert hello_uid.conns[0].types == [] and hello_uid.conns[0].closed, hello_uid.conns
    assert not [r for r in audit_records(broker.log_text()) if r["uid"] != user.uid]
    assert not [r for r in audit_records(broker.log_text()) if r["kind"] == "cpu_profile"]
