"""Shared pytest fixtures for perf-mcp (see tests/helpers.py for the plain functions).

Fixtures:
  root_required         skip the test unless it runs as root (also: @pytest.mark.root)
  test_users            helpers.TestUsers: perfmcp-granted / perfmcp-denied (fails if
                        packaging/dev-setup.sh was not run)
  system_bus            fails unless the system D-Bus answers (root tests only)
  shared_tmp            a temp dir (0755) the test users can traverse; removed after
  broker_factory        start(*extra_args, output_cap=None) -> helpers.RunningBroker;
                        every broker started is stopped by PID at teardown
  broker                one broker with default arguments (.socket_path, .pid, .proc)
  module_broker_factory start(*extra_args) -> helpers.RunningBroker, shared by a test
                        module: the same arguments give the same broker (a broker per
                        --disable set); stopped by PID when the module ends
  busy_exe              the compiled busy-loop binary (session)
  busy_process_factory  start(user=None) -> helpers.BusyProcess, killed by PID after
  busy_process          one busy process as root (.pid, .leaf_symbol, .loop_symbol)

The frontend and MCP client helpers are functions: helpers.frontend_argv(user, sock)
and ``async with helpers.mcp_client(user, sock) as client: ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The run's last lines: how many tests were skipped and why (0 is the goal here)."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: dict[str, int] = {}
    for report in skipped:
        longrepr = report.longrepr
        text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[text] = reasons.get(text, 0) + 1
    terminalreporter.write_line(f"perf-mcp: {len(skipped)} skipped")
    for text, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"perf-mcp:   {count} x {text}")


CGROUP_MARKERS = ("cgroup_v1", "cgroup_v2", "cgroup_any")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cgroup_v1(*controllers): needs these controllers on a cgroup v1 mount")
    config.addinivalue_line("markers", "cgroup_v2(*controllers): needs a cgroup2 mount offering these controllers "
                            "(none: the v2 core files only)")
    config.addinivalue_line("markers", "cgroup_any(*controllers): needs these controllers in v1 or v2 (the test "
                            "uses the hierarchy the host has)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and not helpers.is_root():
        pytest.skip("needs root (the real broker, perf, polkit): run the suite as root")
    for name in CGROUP_MARKERS:
        for marker in item.iter_markers(name):
            reason = helpers.cgroup_skip_reason(name, marker.args)
            if reason is not None:
                pytest.skip(reason)


@pytest.fixture
def root_required() -> None:
    if not helpers.is_root():
        pytest.skip("needs root (the real broker, perf, polkit): run the suite as root")


@pytest.fixture(scope="session")
def test_users() -> helpers.TestUsers:
    try:
        return helpers.lookup_test_users()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def system_bus(root_required: None) -> None:
    if not helpers.system_bus_answers():
        pytest.fail(f"the system D-Bus does not answer: {helpers.SETUP_HINT}", pytrace=False)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    path = helpers.make_shared_tmpdir()
    try:
        yield path
    finally:
        helpers.remove_tree(path)


BrokerFactory = Callable[..., helpers.RunningBroker]


@pytest.fixture
def broker_factory(root_required: None, test_users: helpers.TestUsers) -> Iterator[BrokerFactory]:
    reason = helpers.broker_missing_reason()
    if reason is not None:
        pytest.fail(f"the broker cannot start: {reason}", pytrace=False)
    started: list[helpers.RunningBroker] = []

    def start(*extra_args: str, output_cap: int | None = None) -> helpers.RunningBroker:
        workdir = helpers.make_shared_tmpdir("pmcp-broker-")
        try:
            broker = helpers.start_broker(workdir, *extra_args, output_cap=output_cap)
        except BaseException:
            helpers.remove_tree(workdir)
            raise
        started.append(broker)
        return broker

    yield start

    problems: list[str] = []
    for broker in started:
        try:
            found = helpers.stop_broker(broker)
            if found:
                problems += found
                sys.stderr.write(f"--- broker log ({broker.log_path}) ---\n{broker.log_text()}")
        finally:
            helpers.remove_tree(broker.workdir)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> helpers.RunningBroker:
    return broker_factory()


@pytest.fixture(scope="module")
def module_broker_factory() -> Iterator[BrokerFactory]:
    """Brokers shared by one test module (CI time: a broker start is ~0.5 s, but
    tracing modules run dozens of jobs). start(*args) with the same args returns
    the same running broker."""
    if not helpers.is_root():
        pytest.skip("needs root (the real broker, perf, polkit): run the suite as root")
    reason = helpers.broker_missing_reason()
    if reason is not None:
        pytest.fail(f"the broker cannot start: {reason}", pytrace=False)
    try:
        helpers.lookup_test_users()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    started: dict[tuple[str, ...], helpers.RunningBroker] = {}

    def start(*extra_args: str, output_cap: int | None = None) -> helpers.RunningBroker:
        key = (*extra_args, f"cap={output_cap}")
        if key in started and started[key].alive():
            return started[key]
        workdir = helpers.make_shared_tmpdir("pmcp-broker-")
        try:
            running = helpers.start_broker(workdir, *extra_args, output_cap=output_cap)
        except BaseException:
            helpers.remove_tree(workdir)
            raise
        started[key] = running
        return running

    yield start

    problems: list[str] = []
    for running in started.values():
        try:
            found = helpers.stop_broker(running)
            if found:
                problems += found
                sys.stderr.write(f"--- broker log ({running.log_path}) ---\n{running.log_text()}")
        finally:
            helpers.remove_tree(running.workdir)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def busy_exe() -> Iterator[Path]:
    directory = helpers.make_shared_tmpdir("pmcp-busy-")
    try:
        yield helpers.build_busy_binary(directory)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        helpers.remove_tree(directory)


BusyFactory = Callable[..., helpers.BusyProcess]


@pytest.fixture
def busy_process_factory(busy_exe: Path) -> Iterator[BusyFactory]:
    started: list[helpers.BusyProcess] = []

    def start(user: str | helpers.UnixUser | None = None) -> helpers.BusyProcess:
        busy = helpers.start_busy(busy_exe, user)
        started.append(busy)
        return busy

    yield start

    for busy in started:
        if busy.proc.poll() is None:
            busy.proc.kill()
        busy.proc.wait()


@pytest.fixture
def busy_process(busy_process_factory: BusyFactory) -> helpers.BusyProcess:
    return busy_process_factory()
