"""Nothing but root's code runs as root before the integrity check can refuse it.

The broker's launchers (a copy of perf_mcp_broker/boot.py: .venv/bin/perf-mcp-broker
from the development set-up, /usr/sbin/perf-mcp-broker from packaging/install.py)
start the interpreter isolated (`-IS`: no site processing, so no .pth file runs) and
check before the first import; every later import is checked before its code runs.
`sudo perf-mcp` checks before its root parent imports the broker.

Each test plants code that would leave a marker file if it ran as root: a .pth file in
the venv's site-packages (the reproduced attack), or a line in a dependency's module
that another user owns. The control runs show the planted code is live (a normal
interpreter runs the .pth). Known answers: the marker never appears; the broker either
serves (exit 0 after its idle exit) or refuses with exit status 1, naming the path."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers
import pkg_util

pytestmark = [pytest.mark.root, pytest.mark.slow]

INSTALL_PY = helpers.REPO / "packaging" / "install.py"
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
# What the broker imports from site-packages (trio's closure included).
BROKER_DEPS = ("trio", "outcome", "sniffio", "sortedcontainers", "idna", "attr", "attrs", "msgspec", "jeepney", "prctl.py")
MARKER_ENV = "PMCP_TEST_MARKER"
# Writes the marker (named by the environment, so only our runs write it) when the
# interpreter processes this .pth file.
PTH = f"import os; p = os.environ.get({MARKER_ENV!r}); p and open(p, 'a').write('pth ran as uid %d\\n' % os.getuid())\n"
PLANTED = f"\nimport os as _o; _p = _o.environ.get({MARKER_ENV!r}); _p and open(_p, 'a').write('module ran as uid %d\\n' % _o.getuid())\n"


def load_install():
    spec = importlib.util.spec_from_file_location("pmcp_install", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


install = load_install()


@pytest.fixture
def base() -> Iterator[Path]:
    path = helpers.make_shared_tmpdir("pmcp-iso-")
    yield path
    helpers.remove_tree(path)


def copy_deps(site: Path) -> None:
    dev_site = helpers.REPO / ".venv" / "lib" / PY / "site-packages"
    for name in BROKER_DEPS:
        src = dev_site / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, site / name)
    for so in dev_site.glob("_prctl*.so"):
        shutil.copy2(so, site / so.name)


def dev_venv(base: Path) -> Path:
    """A root-owned virtualenv laid out like the development one (the broker's
    dependencies in site-packages, perf-mcp's packages from the source tree), with a
    .pth file that leaves a marker, and the launcher the set-up writes."""
    venv = base / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", os.fspath(venv)], check=True,
                   stdin=subprocess.DEVNULL)
    site = venv / "lib" / PY / "site-packages"
    copy_deps(site)
    (site / "zz-marker.pth").write_text(PTH)
    res = subprocess.run(["/usr/bin/python3", os.fspath(INSTALL_PY), "venv-launcher", os.fspath(venv)],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert res.returncode == 0, res.stderr
    return venv


def site_tree(base: Path) -> tuple[Path, Path]:
    """The installed layout: PREFIX/lib/perf-mcp/site with the broker, its protocol
    package and dependencies, and PREFIX/sbin/perf-mcp-broker as install.py writes it."""
    site = base / "lib" / "perf-mcp" / "site"
    site.mkdir(parents=True)
    copy_deps(site)
    ignore = shutil.ignore_patterns("__pycache__")
    for package in install.OWN_PACKAGES:
        shutil.copytree(package, site / package.name, ignore=ignore)
    launcher = base / "sbin" / "perf-mcp-broker"
    launcher.parent.mkdir()
    launcher.write_text(install.launcher_text("/usr/bin/python3", [os.fspath(site)]))
    launcher.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(base):
        os.chmod(dirpath, 0o755)
    return site, launcher


def run(argv: list[str], marker: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", MARKER_ENV: os.fspath(marker)}
    return subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, cwd="/",
                          stdin=subprocess.DEVNULL, env=env, timeout=timeout)


def broker_argv(launcher: Path, base: Path) -> list[str]:
    return [launcher, "--socket", base / "b.sock", "--idle-exit", "1"]


def plant(module: Path, owner: helpers.UnixUser) -> None:
    """Code in `module` that leaves the marker, in a file that `owner` owns."""
    module.write_text(module.read_text() + PLANTED)
    os.chown(module, owner.uid, owner.gid)


def assert_served(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, res.stderr
    assert "no connection for 1 s: exiting (idle)" in res.stderr, res.stderr


def assert_refused(res: subprocess.CompletedProcess[str], path: Path, reason: str) -> None:
    assert res.returncode == 1, res.stderr
    assert "refusing to run as root" in res.stderr, res.stderr
    lines = [line.strip() for line in res.stderr.splitlines() if line.strip().startswith(f"{path}: ")]
    assert lines and reason in lines[0], res.stderr


# --------------------------------------------------------------------------- the development launcher


def test_dev_launcher_is_isolated_and_pip_makes_none() -> None:
    """.venv/bin/perf-mcp-broker (what tests/helpers.py starts) is the isolated launcher
    the set-up writes, not pip's console-script wrapper, and pip is not asked for one."""
    venv = helpers.REPO / ".venv"
    site = venv / "lib" / PY / "site-packages"
    text = helpers.BROKER_BIN.read_text()
    assert text.splitlines()[0] == f"#!{venv}/bin/python -IS"
    expected = install.launcher_text(f"{venv}/bin/python", [f"{helpers.REPO}/broker", f"{helpers.REPO}/protocol", f"{site}"])
    assert text == expected
    pyproject = (helpers.REPO / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert "perf-mcp-broker =" not in scripts


def test_pth_file_never_runs_in_the_started_broker(base: Path) -> None:
    venv = dev_venv(base)
    control = base / "control-marker"
    res = run([venv / "bin" / "python", "-c", "pass"], control)
    assert res.returncode == 0 and control.read_text().startswith("pth ran as uid 0"), res.stderr  # the .pth is live
    marker = base / "marker"
    res = run(broker_argv(venv / "bin" / "perf-mcp-broker", base), marker)
    assert_served(res)
    assert not marker.exists(), marker.read_text()
    pkg_util.report("launcher with a live .pth in its venv", served_exit=res.returncode, marker=marker.exists())
    # Started through a normal interpreter (the .pth runs there, before any of our
    # code), the launcher starts itself again isolated: the broker serves the same way.
    res = run([venv / "bin" / "python", venv / "bin" / "perf-mcp-broker", "--socket", base / "b.sock",
               "--idle-exit", "1"], marker)
    assert_served(res)


def test_dependency_another_user_owns_never_runs(base: Path, test_users: helpers.TestUsers) -> None:
    """trio imports sniffio: its module, owned by a user, is refused before it runs."""
    venv = dev_venv(base)
    module = venv / "lib" / PY / "site-packages" / "sniffio" / "__init__.py"
    plant(module, test_users.denied)
    marker = base / "marker"
    res = run(broker_argv(venv / "bin" / "perf-mcp-broker", base), marker)
    assert_refused(res, module, f"owned by uid {test_users.denied.uid} ({test_users.denied.name}), not root; the broker imports it")
    assert not marker.exists(), marker.read_text()
    assert not (base / "b.sock").exists()
    pkg_util.report("user-owned dependency", exit_status=res.returncode, marker=marker.exists())


def test_writable_venv_is_refused_with_a_clear_message(base: Path) -> None:
    venv = dev_venv(base)
    site = venv / "lib" / PY / "site-packages"
    site.chmod(0o777)
    marker = base / "marker"
    res = run(broker_argv(venv / "bin" / "perf-mcp-broker", base), marker)
    assert_refused(res, site, "writable by others (mode 0777); the broker imports it")
    assert "sudo make install" in res.stderr
    assert not marker.exists()


def test_python_m_starts_again_isolated_before_importing_dependencies(base: Path, test_users: helpers.TestUsers) -> None:
    """`python -m perf_mcp_broker` from a venv that holds the broker: the planted
    dependency never runs (the module starts the launcher, isolated, before `import trio`)."""
    venv = dev_venv(base)
    site = venv / "lib" / PY / "site-packages"
    ignore = shutil.ignore_patterns("__pycache__")
    for package in install.OWN_PACKAGES:
        shutil.copytree(package, site / package.name, ignore=ignore)
    module = site / "outcome" / "__init__.py"
    plant(module, test_users.denied)
    marker = base / "marker"
    res = run([venv / "bin" / "python", "-m", "perf_mcp_broker", "--socket", base / "b.sock", "--idle-exit", "1"], marker)
    assert_refused(res, module, "not root; the broker imports it")
    # The .pth ran in the first interpreter (site processing comes before any of our
    # code); the planted module, imported only after the check, never did.
    assert marker.read_text().splitlines() and set(marker.read_text().splitlines()) == {"pth ran as uid 0"}


# --------------------------------------------------------------------------- the installed launcher


def test_installed_launcher_checks_before_it_imports(base: Path, test_users: helpers.TestUsers) -> None:
    site, launcher = site_tree(base)
    text = launcher.read_text()
    assert text.startswith("#!/usr/bin/python3 -IS\n")
    assert f"IMPORT_PATH: tuple = ({os.fspath(site)!r},)\n" in text
    marker = base / "marker"
    assert_served(run(broker_argv(launcher, base), marker))
    module = site / "msgspec" / "__init__.py"
    plant(module, test_users.denied)
    res = run(broker_argv(launcher, base), marker)
    assert_refused(res, module, "not root; the broker imports it")
    assert not marker.exists(), marker.read_text()


def test_unit_starts_the_installed_launcher() -> None:
    """The unit's ExecStart is the launcher itself (its #! line isolates the interpreter)."""
    assert pkg_util.exec_start(pkg_util.SERVICE_UNIT)[0] == pkg_util.UNIT_BROKER_PATH
    layout = install.Layout("/usr")
    assert layout.broker_bin == pkg_util.UNIT_BROKER_PATH


# --------------------------------------------------------------------------- sudo perf-mcp


@pytest.fixture
def venv_copy(base: Path) -> Path:
    """A root-owned copy of the development venv (perf-mcp installed editable from this
    tree), with its own launchers as the set-up writes them (bin/perf-mcp-broker, bin/perf-mcp)."""
    copy = base / "venv"
    shutil.copytree(helpers.REPO / ".venv", copy, symlinks=True)
    res = subprocess.run(["/usr/bin/python3", os.fspath(INSTALL_PY), "venv-launcher", os.fspath(copy)],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert res.returncode == 0, res.stderr
    return copy


def test_sudo_mode_never_runs_a_pth_file_as_root(base: Path, venv_copy: Path, test_users: helpers.TestUsers) -> None:
    """`sudo perf-mcp` starts the venv's bin/perf-mcp, an isolated launcher (not pip's
    wrapper): a .pth file planted in the venv never runs, neither in the root parent nor
    in the MCP server that `perf-mcp call` starts. Control: the venv's normal interpreter
    runs it as root. Known answers: no marker; perf_info answers through the server."""
    marker = base / "marker"
    pth = f"import os; open({os.fspath(marker)!r}, 'a').write('pth ran as uid %d\\n' % os.getuid())\n"
    (venv_copy / "lib" / PY / "site-packages" / "zz-sudo.pth").write_text(pth)
    frontend = venv_copy / "bin" / "perf-mcp"
    assert frontend.read_text().splitlines()[0] == f"#!{venv_copy}/bin/python -IS"
    assert run([venv_copy / "bin" / "python", "-c", "pass"], base / "unused").returncode == 0
    assert set(marker.read_text().splitlines()) == {"pth ran as uid 0"}  # the control: the .pth is live
    marker.unlink()
    # The MCP side serves as the user and reads end-of-file on stdin: both halves exit 0.
    res = run([frontend, "--user", test_users.denied.name], base / "unused")
    assert res.returncode == 0, res.stderr
    assert not marker.exists(), marker.read_text()
    # `perf-mcp call` as root: the client, and the server it starts through the same launcher.
    res = run([frontend, "call", "perf_info", "--user", test_users.denied.name, "--json", "--quiet"], base / "unused",
              timeout=120)
    assert res.returncode == 0 and '"success": true' in res.stdout and '"tool": "perf_info"' in res.stdout, res.stderr[-2000:]
    pkg_util.report("sudo perf-mcp with a live .pth in its venv", serve_exit=0, call_exit=res.returncode,
                    marker=marker.exists())
    assert not marker.exists(), marker.read_text()


def test_sudo_mode_refuses_a_broker_dependency_another_user_owns(base: Path, venv_copy: Path,
                                                                 test_users: helpers.TestUsers) -> None:
    """`sudo perf-mcp`: jeepney (imported by the broker half only) is owned by a user.
    The root parent refuses before it imports the broker; the planted code never runs."""
    site = venv_copy / "lib" / PY / "site-packages"
    module = site / "jeepney" / "__init__.py"
    plant(module, test_users.denied)
    marker = base / "marker"
    frontend = [venv_copy / "bin" / "perf-mcp", "--user", test_users.denied.name]
    res = run(frontend, marker)
    assert res.returncode == 1, res.stderr
    assert "perf-mcp: refusing to run as root" in res.stderr, res.stderr
    assert f"{module}: owned by uid {test_users.denied.uid}" in res.stderr, res.stderr
    assert not marker.exists(), marker.read_text()
    # Control: with the module root's again, the same start separates and serves (the
    # MCP child reads end-of-file on stdin and both halves exit 0) - and the planted
    # code, now root's, runs in the broker half: it was the check that kept it out.
    os.chown(module, 0, 0)
    res = run(frontend, marker)
    assert res.returncode == 0, res.stderr
    assert "module ran as uid 0" in marker.read_text()
