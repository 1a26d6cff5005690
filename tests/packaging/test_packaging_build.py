"""Install-time code: nothing from PyPI runs as root during `sudo make install` / `make deb`.

packaging/install.py builds the broker's dependencies unprivileged (the user who ran
sudo, else nobody) with pinned, hashed build dependencies, and root installs only the
resulting wheels, by path and sha256, from no index. The real build runs here (pip
fetches the pinned files, msgspec and python-prctl compile); every command install.py
runs is recorded with the account it runs as and the requirements file it reads."""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
import pkg_util

pytestmark = [pytest.mark.root, pytest.mark.slow]

INSTALL_PY = helpers.REPO / "packaging" / "install.py"
ROOT_PIP_FLAGS = {"--isolated", "--no-index", "--only-binary=:all:", "--require-hashes", "--no-deps"}


def load_install():
    spec = importlib.util.spec_from_file_location("pmcp_install_build", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


install = load_install()


@pytest.fixture
def base():
    path = helpers.make_shared_tmpdir("pmcp-build-")
    yield path
    helpers.remove_tree(path)


def requirement_files(argv: list[str]) -> dict[str, str]:
    return {argv[i + 1]: Path(argv[i + 1]).read_text() for i, a in enumerate(argv[:-1]) if a == "-r"}


def test_root_installs_only_hashed_prebuilt_wheels(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    real_run = install.run

    def recording_run(argv, **kwargs):
        argv = [os.fspath(a) for a in argv]
        entry = {"argv": argv, "user": kwargs.get("user"), "group": kwargs.get("group"),
                 "extra_groups": kwargs.get("extra_groups"), "files": requirement_files(argv), "wheels": {}}
        # What root's pip is about to install: each wheel's real hash and its directory's owner and mode.
        for text in entry["files"].values():
            for line in text.splitlines():
                path = line.split()[0]
                if path.endswith(".whl") and os.path.exists(path):
                    st = os.stat(os.path.dirname(path))
                    entry["wheels"][path] = (install.sha256(path), st.st_uid, stat.S_IMODE(st.st_mode))
        calls.append(entry)
        return real_run(argv, **kwargs)

    monkeypatch.setattr(install, "run", recording_run)
    monkeypatch.delenv("SUDO_UID", raising=False)
    site = base / "site"
    site.mkdir()
    install.install_dependencies(site, "/usr/bin/python3")

    nobody = pwd.getpwnam("nobody")
    as_root = [c for c in calls if c["user"] is None]
    as_builder = [c for c in calls if c["user"] is not None]
    # Everything that fetches or builds ran as nobody, with no supplementary groups.
    assert as_builder and all((c["user"], c["group"], c["extra_groups"]) == (nobody.pw_uid, nobody.pw_gid, [])
                              for c in as_builder), as_builder
    builds = [c for c in as_builder if c["argv"][1:4] == ["-m", "pip", "wheel"]]
    assert len(builds) == 1 and {"--require-hashes", "--no-build-isolation", "--no-deps"} <= set(builds[0]["argv"])
    build_deps = [c for c in as_builder if c["argv"][1:4] == ["-m", "pip", "install"]]
    assert len(build_deps) == 1 and {"--require-hashes", "--only-binary=:all:"} <= set(build_deps[0]["argv"])
    assert list(build_deps[0]["files"].values()) == [install.BUILD_REQUIREMENTS.read_text()]

    # Root ran two commands: a venv of the system Python, and pip installing wheels by path and hash.
    assert [c["argv"][1:3] for c in as_root] == [["-m", "venv"], ["-m", "pip"]], [c["argv"] for c in as_root]
    pip = as_root[1]["argv"]
    assert pip[3] == "install" and ROOT_PIP_FLAGS <= set(pip), pip
    (text,) = as_root[1]["files"].values()
    pins = install.read_pins(install.REQUIREMENTS)
    installed = {}
    for line in text.splitlines():
        path, option = line.split()
        assert path.endswith(".whl") and option.startswith("--hash=sha256:"), line
        digest, owner, mode = as_root[1]["wheels"][path]
        assert option == f"--hash=sha256:{digest}"  # the hash of the very file root installs
        assert (owner, mode) == (0, 0o700)  # in root's directory: the builder cannot swap it
        name, version = install._wheel_name_version(Path(path))
        installed[name] = version
        if name not in install.BUILT_FROM_SOURCE:
            assert digest == pins[name][1], f"{name}: not the pinned wheel"
    assert installed == {name: version for name, (version, _) in pins.items()}

    # The installed tree works under the broker's isolated interpreter.
    probe = f"import sys; sys.path.append({os.fspath(site)!r}); import msgspec, prctl, trio, jeepney; print(msgspec.__version__, trio.__version__)"
    res = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", probe], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    assert res.returncode == 0 and res.stdout.split() == [pins["msgspec"][0], pins["trio"][0]], res.stderr
    pkg_util.report("unprivileged build", builder=nobody.pw_name, builder_commands=len(as_builder),
                    root_commands=len(as_root), wheels=len(installed))


def test_builder_is_the_sudo_user_else_nobody(monkeypatch: pytest.MonkeyPatch, test_users: helpers.TestUsers) -> None:
    nobody = pwd.getpwnam("nobody")
    monkeypatch.delenv("SUDO_UID", raising=False)
    assert install.builder_account() == (nobody.pw_uid, nobody.pw_gid)
    monkeypatch.setenv("SUDO_UID", str(test_users.granted.uid))
    assert install.builder_account() == (test_users.granted.uid, test_users.granted.gid)
    monkeypatch.setenv("SUDO_UID", "0")  # sudo from a root shell: still not root
    assert install.builder_account() == (nobody.pw_uid, nobody.pw_gid)


def test_wheel_list_refuses_what_was_not_pinned(base: Path) -> None:
    pins = {"trio": ("0.35.0", "a" * 64), "msgspec": ("0.22.0", "b" * 64)}

    def wheel(name: str, data: bytes = b"x") -> Path:
        path = base / name
        path.write_bytes(data)
        return path

    built = wheel("msgspec-0.22.0-cp311-cp311-linux_x86_64.whl")
    tampered = wheel("trio-0.35.0-py3-none-any.whl", b"not the pinned file")
    with pytest.raises(install.InstallError, match="pinned sha256"):
        install.checked_wheel_requirements([built, tampered], pins)
    good = {"trio": ("0.35.0", install.sha256(tampered)), "msgspec": pins["msgspec"]}
    text = install.checked_wheel_requirements([built, tampered], good)
    assert text == f"{built} --hash=sha256:{install.sha256(built)}\n{tampered} --hash=sha256:{install.sha256(tampered)}\n"
    with pytest.raises(install.InstallError, match="not version"):
        install.checked_wheel_requirements([wheel("msgspec-0.21.0-cp311-cp311-linux_x86_64.whl"), tampered], good)
    with pytest.raises(install.InstallError, match="not pinned"):
        install.checked_wheel_requirements([built, tampered, wheel("evil-1.0-py3-none-any.whl")], good)
    with pytest.raises(install.InstallError, match="no wheel for trio"):
        install.checked_wheel_requirements([built], good)


def test_every_pin_is_hashed() -> None:
    runtime = install.read_pins(install.REQUIREMENTS)
    build = install.read_pins(install.BUILD_REQUIREMENTS)
    assert set(install.BUILT_FROM_SOURCE) <= set(runtime)
    assert {"setuptools", "setuptools-scm"} <= set(build)
    bad = Path(helpers.make_shared_tmpdir("pmcp-pins-")) / "r.txt"
    try:
        bad.write_text("setuptools>=80\n")
        with pytest.raises(install.InstallError, match="not 'name==version --hash"):
            install.read_pins(bad)
    finally:
        helpers.remove_tree(bad.parent)
