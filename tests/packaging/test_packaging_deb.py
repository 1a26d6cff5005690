"""`make deb` builds the Debian package; the test installs it into this machine with
dpkg -i, checks the files, the group and the enabled socket, talks to the installed
broker as the test users, removes it with dpkg -r (only configuration stays: the
rules conffile the "user" changed, and systemd's enablement state), purges it with
dpkg -P (nothing stays), and leaves the machine as it found it."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import helpers
import pkg_util

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system (dpkg-deb missing)"),
]

PACKAGE = "perf-mcp-broker"
SITE = "/usr/lib/perf-mcp/site"
BROKER = "/usr/sbin/perf-mcp-broker"
UNIT_DIR = Path("/usr/lib/systemd/system")
CONFFILE = Path("/etc/polkit-1/rules.d/50-perf-mcp.rules")
ENABLED_LINK = Path("/etc/systemd/system/sockets.target.wants/perf-mcp-broker.socket")
STATE_DIR = Path("/var/lib/perf-mcp-broker")
DEB_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def dpkg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["dpkg", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         env=DEB_ENV, timeout=300)
    if check:
        assert res.returncode == 0, f"dpkg {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def status() -> str | None:
    res = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None


def systemd_state_mentions() -> list[str]:
    """Anything systemd or deb-systemd-helper keeps about our units."""
    out = []
    for base in (Path("/etc/systemd/system"), Path("/var/lib/systemd")):
        for dirpath, dirnames, filenames in os.walk(base):
            out += [os.path.join(dirpath, f) for f in filenames + dirnames if "perf-mcp" in f]
    return sorted(out)


def test_package_contents(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", os.fspath(deb)], capture_output=True, text=True, check=True).stdout
    entries = [line.split(None, 5) for line in listing.splitlines()]
    paths = {e[5].lstrip(".") for e in entries}
    for path in (BROKER, f"{UNIT_DIR}/perf-mcp-broker.socket", f"{UNIT_DIR}/perf-mcp-broker.service",
                 "/usr/share/polkit-1/actions/org.perfmcp.policy", os.fspath(CONFFILE),
                 "/usr/lib/sysusers.d/perf-mcp-broker.conf", f"{SITE}/perf_mcp_broker/__main__.py",
                 f"{SITE}/perf_mcp_broker/integrity.py", f"{SITE}/perf_mcp_protocol/messages.py",
                 "/usr/share/doc/perf-mcp-broker/copyright"):
        assert path in paths, path
    # Root's and writable by root alone; only what the broker needs (no frontend, no mcp).
    assert {e[1] for e in entries} == {"root/root"}
    assert not [e for e in entries if e[0][5] == "w" or e[0][8] == "w"]
    assert not any(p.startswith(f"{SITE}/{name}") for p in paths for name in ("perf_mcp/", "mcp/", "pydantic"))
    for dep in ("trio/", "msgspec/", "jeepney/", "prctl.py", "outcome/", "sniffio/"):
        assert any(p.startswith(f"{SITE}/{dep}") for p in paths), dep
    assert any(p.startswith(f"{SITE}/perf_mcp_broker/__pycache__/") for p in paths)  # no pyc written by root later
    control = subprocess.run(["dpkg-deb", "-I", os.fspath(deb)], capture_output=True, text=True, check=True).stdout
    assert "Depends: python3 (>= 3.11~), python3 (<< 3.12)" in control
    conffiles = subprocess.run(["dpkg-deb", "--info", os.fspath(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout
    assert conffiles.split() == [os.fspath(CONFFILE)]


def test_install_use_remove_purge(deb: Path, machine_state: pkg_util.SavedFiles, workdir: Path,
                                  test_users: helpers.TestUsers, system_bus: None) -> None:
    if status() is not None:
        dpkg("--purge", PACKAGE)  # a run that died half-way: start clean
    group_before = grp.getgrnam("perf-mcp").gr_gid
    try:
        # ---------------------------------------------------------------- install
        res = dpkg("--install", os.fspath(deb))
        assert status() == "ii", status()
        files = dpkg("--listfiles", PACKAGE).stdout.split("\n")
        regular = [f for f in files if f and os.path.lexists(f) and not os.path.isdir(f)]
        assert BROKER in regular and os.fspath(CONFFILE) in regular
        assert pkg_util.tree_problems(regular) == []
        assert grp.getgrnam("perf-mcp").gr_gid == group_before  # existing group kept as it was
        assert ENABLED_LINK.is_symlink() and os.path.realpath(ENABLED_LINK) == f"{UNIT_DIR}/perf-mcp-broker.socket"
        assert "systemd is not running" in res.stderr or os.path.isdir("/run/systemd/system")
        # The installed units are the shipped ones, byte for byte, and pass verify as installed.
        for name in ("perf-mcp-broker.socket", "perf-mcp-broker.service"):
            assert (UNIT_DIR / name).read_bytes() == (pkg_util.SYSTEMD_DIR / name).read_bytes()
        verified = pkg_util.verify(UNIT_DIR / "perf-mcp-broker.socket", UNIT_DIR / "perf-mcp-broker.service")
        assert verified.returncode == 0 and verified.stderr == "", verified.stderr
        score = pkg_util.security_report(UNIT_DIR / "perf-mcp-broker.service").score
        # A local install refuses to go over the package's files.
        refused = subprocess.run(["/usr/bin/python3", os.fspath(helpers.REPO / "packaging" / "install.py"), "install"],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert refused.returncode == 1 and f"Debian package {PACKAGE}" in refused.stderr, refused.stderr

        # ---------------------------------------------------------------- use
        figures = pkg_util.serve_installed(UNIT_DIR / "perf-mcp-broker.service", SITE, workdir, test_users)

        # ---------------------------------------------------------------- remove
        CONFFILE.write_text(CONFFILE.read_text() + "// a local change\n")
        dpkg("--remove", PACKAGE)
        assert status() == "rc", status()
        left = [f for f in regular if os.path.lexists(f)]
        assert left == [os.fspath(CONFFILE)], left  # configuration only
        assert CONFFILE.read_text().endswith("// a local change\n")
        assert not os.path.exists("/usr/lib/perf-mcp")
        # The action file went with the package: put the development one back at once
        # (other test runs on this machine use it); dpkg no longer tracks that path.
        machine_state.restore(pkg_util.POLICY)
        kept_state = systemd_state_mentions()

        # ---------------------------------------------------------------- purge
        dpkg("--purge", PACKAGE)
        assert status() is None
        assert not CONFFILE.exists()
        assert [f for f in regular if os.path.lexists(f) and f != os.fspath(pkg_util.POLICY)] == []
        assert systemd_state_mentions() == []
        assert not STATE_DIR.exists()
        assert grp.getgrnam("perf-mcp").gr_gid == group_before  # not ours to remove
        pkg_util.report("dpkg -i/-r/-P", files=len(regular), exposure_installed=score,
                        kept_after_remove=[os.fspath(CONFFILE)] + kept_state, broker=figures["cmdline"])
    finally:
        if status() is not None:
            dpkg("--purge", PACKAGE, check=False)
