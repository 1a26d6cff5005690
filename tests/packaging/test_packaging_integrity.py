"""The broker's start-up check (perf_mcp_broker/integrity.py): it passes for the
root-owned development tree and refuses, with exit status 1 and a message naming the
path, whenever something it executes, imports or reads could be changed by another
user. The refusal is shown with explicit trees and with the real entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
import pkg_util
from perf_mcp_broker import integrity
from perf_mcp_broker.integrity import Target

pytestmark = pytest.mark.root

# What the broker imports, copied into the "user's virtualenv" of the refusal tests.
BROKER_DEPS = ("trio", "outcome", "sniffio", "sortedcontainers", "idna", "attr", "attrs", "msgspec", "jeepney", "prctl.py")


def tree(base: Path, *, owner: int = 0, mode: int = 0o755) -> Path:
    """base/a/b/mod.py, every part owned by `owner` with directory mode `mode`."""
    leaf = base / "a" / "b"
    leaf.mkdir(parents=True)
    (leaf / "mod.py").write_text("x = 1\n")
    for path in (base, base / "a", leaf):
        os.chown(path, owner, owner)
        path.chmod(mode)
    os.chown(leaf / "mod.py", owner, owner)
    (leaf / "mod.py").chmod(0o644)
    return leaf / "mod.py"


def root_dir() -> Path:
    """A root-owned 0755 temp dir (under /tmp: root-owned and sticky, which is allowed)."""
    return helpers.make_shared_tmpdir("pmcp-integrity-")


@pytest.fixture
def base() -> Path:
    path = root_dir()
    yield path
    helpers.remove_tree(path)


def reasons(problems: list[integrity.Problem]) -> dict[str, str]:
    return {p.path: p.reason for p in problems}


def test_root_owned_tree_passes(base: Path) -> None:
    mod = tree(base)
    assert integrity.check([Target(str(mod), "imports"), Target(str(mod.parent), "imports", contents_matter=True)]) == []


def test_parent_owned_by_a_user_is_refused(base: Path, test_users: helpers.TestUsers) -> None:
    mod = tree(base)
    os.chown(base / "a", test_users.denied.uid, test_users.denied.gid)
    found = reasons(integrity.check([Target(str(mod), "imports")]))
    assert found == {str(base / "a"): f"owned by uid {test_users.denied.uid} ({test_users.denied.name}), not root"}


def test_world_writable_parent_is_refused_unless_sticky_and_root_owned(base: Path, test_users: helpers.TestUsers) -> None:
    mod = tree(base)
    (base / "a").chmod(0o777)
    assert reasons(integrity.check([Target(str(mod), "executes")])) == {str(base / "a"): "writable by others (mode 0777)"}
    (base / "a").chmod(0o1777)  # like /tmp: others cannot rename root's entries
    assert integrity.check([Target(str(mod), "executes")]) == []
    os.chown(base / "a", test_users.denied.uid, 0)  # sticky but not root's: its owner may
    assert str(base / "a") in reasons(integrity.check([Target(str(mod), "executes")]))


def test_sticky_directory_whose_contents_matter_is_refused(base: Path) -> None:
    mod = tree(base)
    mod.parent.chmod(0o1777)  # anyone could add a module next to mod.py
    found = reasons(integrity.check([Target(str(mod.parent), "imports", contents_matter=True)]))
    assert found == {str(mod.parent): "writable by others (mode 1777)"}


def test_group_writable_file_is_refused(base: Path) -> None:
    mod = tree(base)
    mod.chmod(0o664)
    assert reasons(integrity.check([Target(str(mod), "imports")])) == {str(mod): "writable by group 0 (root) (mode 0664)"}


def test_symlink_into_a_user_tree_is_followed(base: Path, test_users: helpers.TestUsers) -> None:
    mod = tree(base / "user", owner=test_users.denied.uid)
    link = base / "link.py"
    link.symlink_to(mod)
    found = reasons(integrity.check([Target(str(link), "executes")]))
    assert str(base / "user") in found and str(mod) in found


def test_missing_import_path_entry_in_a_user_dir(base: Path, test_users: helpers.TestUsers) -> None:
    user_dir = base / "home"
    user_dir.mkdir()
    os.chown(user_dir, test_users.denied.uid, test_users.denied.gid)
    found = reasons(integrity.check([Target(str(user_dir / "not-yet" / "site"), "imports", contents_matter=True)]))
    assert str(user_dir) in found  # its owner could create the entry and fill it


def test_polkit_files_may_belong_to_polkitd(base: Path) -> None:
    import pwd

    try:
        polkitd = pwd.getpwnam("polkitd").pw_uid
    except KeyError:
        pytest.skip("no polkitd user")
    rules = base / "rules.d"
    rules.mkdir(mode=0o700)
    os.chown(rules, polkitd, 0)
    owners = integrity.ROOT | {polkitd}
    assert integrity.check([Target(str(rules), "reads as configuration", True, frozenset(owners))]) == []
    assert integrity.check([Target(str(rules), "imports", True)]) != []  # code may not


def test_parse_mapped_files() -> None:
    text = (
        "55d0-55d1 r--p 00000000 fd:01 1 /usr/bin/python3.11\n"
        "7f00-7f01 r-xp 00000000 fd:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f01-7f02 rw-p 00000000 00:00 0 \n"
        "7f02-7f03 rw-s 00000000 00:01 3 /dev/zero (deleted)\n"
        "7f03-7f04 r--p 00000000 00:05 4 /memfd:x (deleted)\n"
        "7f04-7f05 r--p 00000000 00:05 5 /dev/shm/x\n"
        "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n"
        "7f00-7f01 r--p 00001000 fd:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f06-7f07 r--p 00000000 fd:01 6 /opt/a dir/lib.so\n"
    )
    assert integrity.parse_mapped_files(text) == [
        "/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/opt/a dir/lib.so",
    ]


def test_refusal_message_names_paths_and_the_fix() -> None:
    problems = [integrity.Problem("/home/u", "/home/u/v/trio/__init__.py", "imports", "owned by uid 1000 (u), not root")]
    text = integrity.refusal_message(problems)
    assert "refusing to run as root" in text and "/home/u (a parent of /home/u/v/trio/__init__.py)" in text
    assert "perf-mcp-broker install" in text or "make install" in text


def test_the_development_broker_passes() -> None:
    """In this root-owned tree the broker's own view of itself is clean."""
    code = (
        "import perf_mcp_broker.__main__ as m\n"
        "from perf_mcp_broker import integrity, jobs\n"
        "programs, _ = jobs.resolve_programs()\n"
        "targets = integrity.startup_targets(programs.values())\n"
        "problems = integrity.check(targets)\n"
        "print(len(targets), len(problems))\n"
        "for p in problems: print(p)\n"
    )
    res = subprocess.run([os.fspath(helpers.VENV_PYTHON), "-c", code], capture_output=True, text=True, cwd="/",
                         stdin=subprocess.DEVNULL, timeout=60)
    assert res.returncode == 0, res.stderr
    checked, failed = (int(x) for x in res.stdout.split("\n")[0].split())
    pkg_util.report("integrity check of the development broker", targets=checked, problems=failed)
    assert failed == 0, res.stdout
    assert checked > 100  # modules, mapped libraries, programs, polkit files


# --------------------------------------------------------------------------- real entry point


def user_venv(base: Path, owner: int, group: int) -> Path:
    """A virtualenv made from /usr/bin/python3 holding the broker and its dependencies,
    owned by `owner`: the layout of someone running a broker from their own venv."""
    venv = base / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", os.fspath(venv)], check=True,
                   stdin=subprocess.DEVNULL)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    dev_site = Path(next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p))
    for name in BROKER_DEPS:
        src = dev_site / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, site / name)
    for so in dev_site.glob("_prctl*.so"):
        shutil.copy2(so, site / so.name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(helpers.REPO / "broker" / "perf_mcp_broker", site / "perf_mcp_broker", ignore=ignore)
    shutil.copytree(helpers.REPO / "protocol" / "perf_mcp_protocol", site / "perf_mcp_protocol", ignore=ignore)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in filenames + dirnames)]:
            os.lchown(name, owner, group)
    return venv


def refusal_line(stderr: str, path: Path) -> str:
    """The line of the refusal message that names path (as the failing path)."""
    for line in stderr.splitlines():
        if line.strip().startswith(f"{path}: ") or line.strip().startswith(f"{path} (a parent of "):
            return line
    raise AssertionError(f"{path} not named in:\n{stderr}")


def run_venv_broker(venv: Path, sock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(venv / "bin" / "python"), "-m", "perf_mcp_broker", "--socket", os.fspath(sock), "--idle-exit", "1"],
        capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL, timeout=60,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


def test_broker_from_a_users_venv_refuses_to_run(base: Path, workdir: Path, test_users: helpers.TestUsers) -> None:
    denied = test_users.denied
    venv = user_venv(base / "home", denied.uid, denied.gid)
    sock = workdir / "broker.sock"
    res = run_venv_broker(venv, sock)
    assert res.returncode == 1, res.stderr
    assert "refusing to run as root" in res.stderr
    line = refusal_line(res.stderr, base / "home")
    assert f"owned by uid {denied.uid} ({denied.name}), not root" in line
    assert str(venv) in line  # what it trusts through that directory: the user's venv
    assert f"{venv}/lib/" in res.stderr and "site-packages" in res.stderr
    assert not sock.exists(), "the broker must refuse before it listens"
    pkg_util.report("refusal from a user's venv", exit_status=res.returncode,
                    first_line=res.stderr.strip().splitlines()[0][:120])


def test_the_same_venv_owned_by_root_runs(base: Path, workdir: Path) -> None:
    """Control for the test above: the very same files, root-owned, start and serve."""
    venv = user_venv(base / "opt", 0, 0)
    res = run_venv_broker(venv, workdir / "broker.sock")
    assert res.returncode == 0, res.stderr
    assert "no connection for 1 s: exiting (idle)" in res.stderr


def test_world_writable_site_packages_is_refused(base: Path, workdir: Path) -> None:
    venv = user_venv(base / "opt", 0, 0)
    site = next((venv / "lib").glob("python3*/site-packages"))
    site.chmod(0o777)
    res = run_venv_broker(venv, workdir / "broker.sock")
    assert res.returncode == 1
    assert "writable by others (mode 0777)" in refusal_line(res.stderr, site)
