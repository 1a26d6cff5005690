#!/usr/bin/python3
"""Install perf-mcp's root broker as a system service, remove it, or build its Debian package.

    sudo make install      = sudo python3 packaging/install.py install   [--prefix /usr/local]
    sudo make uninstall    = sudo python3 packaging/install.py uninstall [--prefix /usr/local]
    make deb               = python3 packaging/install.py deb [--out dist]
         python3 packaging/install.py stage DESTDIR [--prefix /usr]  (the tree alone)

What goes where (PREFIX /usr/local for `install`, /usr for the Debian package):
    PREFIX/lib/perf-mcp/site/          the broker, the protocol package and their pinned
                                       dependencies (packaging/broker-requirements.txt,
                                       installed with pip --require-hashes), byte-compiled
    PREFIX/sbin/perf-mcp-broker        `#!/usr/bin/python3 -IS` launcher (a copy of
                                       perf_mcp_broker/boot.py): no PYTHON* variables,
                                       no site processing, only the dir above; checks
                                       before it imports anything
    UNITDIR/perf-mcp-broker.{socket,service}   /usr/lib/systemd/system (package) or
                                       /etc/systemd/system (local install)
    SYSUSERSDIR/perf-mcp-broker.conf   the group perf-mcp
    /usr/share/polkit-1/actions/org.perfmcp.policy
    /etc/polkit-1/rules.d/50-perf-mcp.rules     (configuration: kept when changed)
    PREFIX/share/doc/perf-mcp-broker/README-install.md

Everything is root-owned and writable by root alone: the broker checks that at
start-up (broker/perf_mcp_broker/boot.py, integrity.py) and refuses to run otherwise.
Only the standard library is used here. Nothing from PyPI runs as root: the
dependencies are fetched and built as the user who ran sudo (or nobody) in a venv of
the broker's own interpreter, with pinned, hashed build dependencies
(broker-build-requirements.txt, --no-build-isolation); root then installs only the
resulting wheels, by path and sha256, with no index (--only-binary=:all:
--require-hashes); pure-Python wheels must match their pinned hashes.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
REQUIREMENTS = PACKAGING / "broker-requirements.txt"
BUILD_REQUIREMENTS = PACKAGING / "broker-build-requirements.txt"
OWN_PACKAGES = (REPO / "broker" / "perf_mcp_broker", REPO / "protocol" / "perf_mcp_protocol")
UNITS = ("perf-mcp-broker.socket", "perf-mcp-broker.service")
SOCKET_UNIT, SERVICE_UNIT = UNITS
GROUP = "perf-mcp"
PARSER_USER = "perf-mcp-parse"  # perf_mcp_broker.jobs.PARSER_USER: perf script runs as it
PACKAGE = "perf-mcp-broker"
PYTHON = "/usr/bin/python3"
POLICY = "/usr/share/polkit-1/actions/org.perfmcp.policy"
RULES = "/etc/polkit-1/rules.d/50-perf-mcp.rules"
# The paths the shipped unit file names; staged units get the prefix's versions.
UNIT_BROKER_PATH = "/usr/sbin/perf-mcp-broker"
UNIT_DOC_PATH = "/usr/share/doc/perf-mcp-broker"

BOOT = REPO / "broker" / "perf_mcp_broker" / "boot.py"
IMPORT_PATH_LINE = "IMPORT_PATH: tuple = ()\n"
BROKER_ENTRY = "perf_mcp_broker.__main__"
FRONTEND_ENTRY = "perf_mcp.cli"  # the venv's perf-mcp: `sudo perf-mcp` starts isolated and checked too
ENTRY_LINE = f"ENTRY = {BROKER_ENTRY!r}\n".replace("'", '"')


def launcher_text(python: str, import_path: list[str], entry: str = BROKER_ENTRY) -> str:
    """A launcher: boot.py with its interpreter (`#!PYTHON -IS`: isolated, no site
    processing), its import path and the module it runs (the broker, or the frontend)
    filled in. Its first code checks the interpreter, what it has loaded and the import
    path, and guards every import that follows (perf_mcp_broker/boot.py), before the
    broker, the frontend or a dependency is imported."""
    text = BOOT.read_text()
    first, rest = text.split("\n", 1)
    if not first.startswith("#!") or rest.count(IMPORT_PATH_LINE) != 1 or rest.count(ENTRY_LINE) != 1:
        raise InstallError(f"{BOOT}: no shebang line, or not one {IMPORT_PATH_LINE.strip()!r} and {ENTRY_LINE.strip()!r}")
    name = "perf-mcp-broker" if entry == BROKER_ENTRY else "perf-mcp"
    header = f"# {name} launcher, written by packaging/install.py from perf_mcp_broker/boot.py. Do not edit.\n"
    rest = rest.replace(IMPORT_PATH_LINE, f"IMPORT_PATH: tuple = {tuple(import_path)!r}\n")
    return f"#!{python} -IS\n{header}" + rest.replace(ENTRY_LINE, f"ENTRY = {entry!r}\n".replace("'", '"'))


def write_file_atomically(path: Path, data: bytes, mode: int) -> bool:
    """Replace path with data (mode, root-owned when run as root); False if it was the same already."""
    try:
        if path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == mode:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.perf-mcp-new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def venv_launcher(venv: Path, source: Path = REPO) -> Path:
    """VENV/bin/perf-mcp-broker for a development virtualenv with perf-mcp installed
    editable: the venv's interpreter, isolated, with the source tree's broker and
    protocol packages and the venv's site-packages as its import path. pip's console
    script wrapper would process the venv's .pth files before any check; this one
    never does."""
    import sysconfig

    python = venv / "bin" / "python"
    # The venv's layout for this Python (the venv's base): its interpreter is not run.
    purelib = sysconfig.get_path("purelib", "venv", vars={"base": os.fspath(venv), "platbase": os.fspath(venv)})
    if not os.path.isdir(purelib):
        raise InstallError(f"{venv} has no {purelib}: not a virtualenv of {sys.executable}?")
    import_path = [os.fspath(source / "broker"), os.fspath(source / "protocol"), purelib]
    dest = venv / "bin" / "perf-mcp-broker"
    if write_file_atomically(dest, launcher_text(os.fspath(python), import_path).encode(), 0o755):
        log(f"wrote {dest} (isolated launcher)")
    # In place of pip's console-script wrapper, whose normal interpreter would run the
    # venv's .pth files as root under `sudo perf-mcp` before any check.
    frontend = venv / "bin" / "perf-mcp"
    text = launcher_text(os.fspath(python), [os.fspath(source / "frontend"), *import_path], FRONTEND_ENTRY)
    if write_file_atomically(frontend, text.encode(), 0o755):
        log(f"wrote {frontend} (isolated launcher)")
    return dest


def log(msg: str) -> None:
    print(f"perf-mcp install: {msg}", file=sys.stderr)


class InstallError(Exception):
    pass


@dataclass(frozen=True)
class Layout:
    """Where each installed file lives for one prefix."""

    prefix: str

    @property
    def system(self) -> bool:  # a distribution package, not a local install
        return self.prefix == "/usr"

    @property
    def lib_dir(self) -> str:
        return f"{self.prefix}/lib/perf-mcp"

    @property
    def site_dir(self) -> str:
        return f"{self.lib_dir}/site"

    @property
    def broker_bin(self) -> str:
        return f"{self.prefix}/sbin/perf-mcp-broker"

    @property
    def doc_dir(self) -> str:
        return f"{self.prefix}/share/doc/perf-mcp-broker"

    @property
    def unit_dir(self) -> str:
        return "/usr/lib/systemd/system" if self.system else "/etc/systemd/system"

    @property
    def sysusers(self) -> str:
        base = "/usr/lib/sysusers.d" if self.system else "/etc/sysusers.d"
        return f"{base}/perf-mcp-broker.conf"

    @property
    def manifest(self) -> str:  # local installs only: what uninstall removes
        return f"{self.lib_dir}/installed-files.json"


def read_version() -> str:
    text = (REPO / "broker" / "perf_mcp_broker" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise InstallError("no __version__ in broker/perf_mcp_broker/__init__.py")
    return match.group(1)


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(argv, **kwargs)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- staging


def _dest(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _write(root: Path, path: str, data: bytes, mode: int) -> None:
    target = _dest(root, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(mode)


def unit_text(name: str, layout: Layout) -> str:
    text = (PACKAGING / "systemd" / name).read_text()
    return text.replace(UNIT_BROKER_PATH, layout.broker_bin).replace(UNIT_DOC_PATH, layout.doc_dir)


# The pins that are source distributions: built into wheels by the unprivileged
# builder. Every other pin is a wheel and must arrive byte for byte as pinned.
BUILT_FROM_SOURCE = ("msgspec", "python-prctl")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s+--hash=sha256:([0-9a-f]{64})\s*$")


def read_pins(path: Path) -> dict[str, tuple[str, str]]:
    """{normalised name: (version, sha256)} of a hashed requirements file (one pin a line)."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if not match:
            raise InstallError(f"{path}: not 'name==version --hash=sha256:HEX': {raw!r}")
        pins[_normalise(match.group(1))] = (match.group(2), match.group(3))
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name_version(wheel: Path) -> tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return _normalise(name), version


def builder_account() -> tuple[int, int] | None:
    """Who builds the wheels: None for this process when it is not root; as root, the
    user who ran sudo (SUDO_UID), else nobody. Never root."""
    if os.geteuid() != 0:
        return None
    import pwd

    sudo_uid = os.environ.get("SUDO_UID", "")
    if sudo_uid.isdecimal() and int(sudo_uid) != 0:
        try:
            pw = pwd.getpwuid(int(sudo_uid))
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            pass
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def _as_builder(account: tuple[int, int] | None, home: Path) -> dict:
    """run() arguments for a command of the unprivileged build."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "HTTP_", "HTTPS_", "NO_PROXY")) or
           k in ("PATH", "LANG", "http_proxy", "https_proxy", "no_proxy", "SSL_CERT_FILE", "SOURCE_DATE_EPOCH")}
    env.update(HOME=str(home), TMPDIR=str(home), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PIP_CACHE_DIR=str(home / "cache"), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("PATH", "/usr/bin:/bin")
    kwargs: dict = {"env": env, "cwd": str(home)}
    if account is not None:
        kwargs.update(user=account[0], group=account[1], extra_groups=[], process_group=0)
    return kwargs


def build_wheels(python: str, out: Path) -> list[Path]:
    """Wheels of every pin, made without root: as builder_account(), in its own temp
    dir, a venv of `python` gets the pinned, hashed build dependencies
    (broker-build-requirements.txt, wheels only) and `pip wheel --require-hashes
    --no-build-isolation` fetches the pinned wheels and builds the pinned source
    distributions with them. Then the wheels are copied into `out` (root's, 0700) so
    that the builder cannot change them after they are checked."""
    account = builder_account()
    with tempfile.TemporaryDirectory(prefix="perf-mcp-build-") as tmp:
        os.chmod(tmp, 0o711)  # the builder may pass through to its own directory, no more
        home = Path(tmp) / "build"
        home.mkdir(mode=0o700)
        for req in (REQUIREMENTS, BUILD_REQUIREMENTS):
            shutil.copy(req, home / req.name)
        if account is not None:
            for path in (home, *home.iterdir()):
                os.chown(path, *account)
        builder = _as_builder(account, home)
        venv = home / "venv"
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        run([python, "-m", "venv", str(venv)], **builder)
        run([*pip, "install", "-qq", "--require-hashes", "--no-deps", "--only-binary=:all:",
             "-r", str(home / BUILD_REQUIREMENTS.name)], **builder)
        run([*pip, "wheel", "-qq", "--require-hashes", "--no-deps", "--no-build-isolation", "--use-pep517",
             "--wheel-dir", str(home / "wheels"), "-r", str(home / REQUIREMENTS.name)], **builder)
        out.mkdir(mode=0o700)
        wheels = []
        for wheel in sorted((home / "wheels").glob("*.whl")):
            if wheel.is_symlink() or not wheel.is_file():
                raise InstallError(f"the build left {wheel.name}, not a regular file")
            wheels.append(Path(shutil.copyfile(wheel, out / wheel.name)))
    return wheels


def checked_wheel_requirements(wheels: list[Path], pins: dict[str, tuple[str, str]]) -> str:
    """A requirements file naming each wheel by path with its sha256: exactly one wheel
    per pin, at the pinned version; a pin that is a wheel arrives with the pinned hash."""
    found: dict[str, Path] = {}
    for wheel in wheels:
        name, version = _wheel_name_version(wheel)
        if name not in pins or name in found:
            raise InstallError(f"the build made {wheel.name}, which is not pinned (or twice)")
        if version != pins[name][0]:
            raise InstallError(f"the build made {wheel.name}, not version {pins[name][0]}")
        if name not in BUILT_FROM_SOURCE and sha256(wheel) != pins[name][1]:
            raise InstallError(f"{wheel.name} does not have the pinned sha256")
        found[name] = wheel
    if set(found) != set(pins):
        raise InstallError(f"no wheel for {', '.join(sorted(set(pins) - set(found)))}")
    return "".join(f"{found[n]} --hash=sha256:{sha256(found[n])}\n" for n in sorted(found))


def install_dependencies(site: Path, python: str) -> None:
    """The pinned dependencies into site, built for `python`. Nothing from PyPI runs as
    root: the wheels are built unprivileged (build_wheels), and root installs only those
    wheels, by path and hash (--no-index --only-binary=:all: --require-hashes; pip
    installing a wheel runs none of its code)."""
    pins = read_pins(REQUIREMENTS)
    read_pins(BUILD_REQUIREMENTS)  # well-formed: every build dependency pinned and hashed
    with tempfile.TemporaryDirectory(prefix="perf-mcp-wheels-") as tmp:
        wheels = build_wheels(python, Path(tmp) / "wheels")
        requirements = Path(tmp) / "wheels.txt"
        requirements.write_text(checked_wheel_requirements(wheels, pins))
        venv = Path(tmp) / "venv"
        run([python, "-m", "venv", str(venv)])
        run(
            [
                str(venv / "bin" / "python"), "-m", "pip", "install", "-qq", "--isolated", "--no-index",
                "--only-binary=:all:", "--require-hashes", "--no-deps", "--no-compile", "--no-warn-script-location",
                "--disable-pip-version-check", "--target", str(site), "-r", str(requirements),
            ],
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"},
        )
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts of dependencies: unused


def copy_own_packages(site: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*~", ".*")
    for package in OWN_PACKAGES:
        shutil.copytree(package, site / package.name, ignore=ignore)


def normalise_modes(root: Path) -> None:
    """Directories 0755, files 0644 or 0755: nothing writable by group or others."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, 0o755 if executable else 0o644)


def stage(root: Path, layout: Layout, python: str = PYTHON) -> None:
    """Build the installed tree under root (as if root were /)."""
    site = _dest(root, layout.site_dir)
    site.mkdir(parents=True)
    log(f"building the pinned dependencies unprivileged, installing their wheels into {layout.site_dir} by hash")
    install_dependencies(site, python)
    copy_own_packages(site)
    # checked-hash: the bytecode is valid for its source whatever the file times.
    run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "checked-hash", str(site)],
        stdout=subprocess.DEVNULL)
    _write(root, layout.broker_bin, launcher_text(python, [layout.site_dir]).encode(), 0o755)
    for name in UNITS:
        _write(root, f"{layout.unit_dir}/{name}", unit_text(name, layout).encode(), 0o644)
    _write(root, layout.sysusers, (PACKAGING / "systemd" / "perf-mcp-broker.sysusers").read_bytes(), 0o644)
    _write(root, POLICY, (REPO / "polkit" / "org.perfmcp.policy").read_bytes(), 0o644)
    _write(root, RULES, (REPO / "polkit" / "50-perf-mcp.rules").read_bytes(), 0o644)
    _write(root, f"{layout.doc_dir}/README-install.md", (PACKAGING / "README-install.md").read_bytes(), 0o644)
    normalise_modes(root)


def staged_files(root: Path) -> list[str]:
    """Absolute install paths of every file and symlink in a staged tree, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            out.append("/" + os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


# ---------------------------------------------------------------- install / uninstall


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def pid1_name() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip()
    except OSError:
        return "?"


def owned_by_dpkg(path: str) -> str | None:
    """The Debian package that owns path, if any."""
    if not shutil.which("dpkg-query"):
        return None
    res = run(["dpkg-query", "-S", path], check=False, capture_output=True, text=True)
    if res.returncode != 0:
        return None
    return res.stdout.split(":", 1)[0]


def ensure_group(layout: Layout) -> bool:
    """Create the group perf-mcp if missing; True when this call created it."""
    try:
        grp.getgrnam(GROUP)
        return False
    except KeyError:
        pass
    if shutil.which("systemd-sysusers"):
        run(["systemd-sysusers", layout.sysusers])
    else:
        run(["groupadd", "--system", GROUP])
    grp.getgrnam(GROUP)  # raises if it did not work
    log(f"created the group {GROUP}")
    return True


def ensure_parser_user(layout: Layout) -> None:
    """Create the unprivileged user perf script runs as, if missing (kept on uninstall,
    like any system user: files it may have left keep an owner)."""
    import pwd

    try:
        pwd.getpwnam(PARSER_USER)
        return
    except KeyError:
        pass
    if shutil.which("systemd-sysusers"):
        run(["systemd-sysusers", layout.sysusers])
    else:
        run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", PARSER_USER])
    pwd.getpwnam(PARSER_USER)  # raises if it did not work
    log(f"created the user {PARSER_USER}")


def group_is_empty(name: str) -> bool:
    import pwd

    group = grp.getgrnam(name)
    return not group.gr_mem and all(p.pw_gid != group.gr_gid for p in pwd.getpwall())


def enable_socket() -> None:
    if systemd_running():
        run(["systemctl", "daemon-reload"])
        run(["systemctl", "enable", "--now", SOCKET_UNIT])
        log(f"{SOCKET_UNIT} enabled and started: the broker starts on the first connection")
    else:
        # systemctl enable works on unit files alone; nothing can be started now.
        run(["systemctl", "enable", SOCKET_UNIT], stderr=subprocess.DEVNULL)
        log(
            f"systemd is not running (PID 1 is {pid1_name()}): {SOCKET_UNIT} is enabled for the next "
            "boot, nothing was started. Run the broker by hand with: "
            "perf-mcp-broker --socket /run/perf-mcp/broker.sock"
        )


def disable_socket() -> None:
    if not shutil.which("systemctl"):
        return
    if systemd_running():
        run(["systemctl", "disable", "--now", SOCKET_UNIT], check=False)
        run(["systemctl", "stop", SERVICE_UNIT], check=False)
    else:
        run(["systemctl", "disable", SOCKET_UNIT], check=False, stderr=subprocess.DEVNULL)


def _copy_into_system(staged: Path, path: str, created_dirs: list[str]) -> None:
    src = _dest(staged, path)
    dst = Path(path)
    for parent in reversed(dst.parents):
        if not parent.exists():
            parent.mkdir(mode=0o755)
            created_dirs.append(str(parent))
    tmp = dst.with_name(f".{dst.name}.perf-mcp-new")
    shutil.copy2(src, tmp)
    os.chown(tmp, 0, 0)
    os.replace(tmp, dst)


def install(layout: Layout, python: str = PYTHON) -> None:
    if os.geteuid() != 0:
        raise InstallError("run as root: sudo make install")
    owner = owned_by_dpkg(UNIT_BROKER_PATH) or owned_by_dpkg(layout.broker_bin)
    if owner:
        raise InstallError(f"the broker is installed by the Debian package {owner}; remove it first (apt remove {owner})")
    os.umask(0o022)
    old = read_manifest(layout)
    created_dirs: list[str] = list(old.get("created_dirs", [])) if old else []
    with tempfile.TemporaryDirectory(prefix="perf-mcp-stage-") as tmp:
        staged = Path(tmp) / "root"
        stage(staged, layout, python)
        files = staged_files(staged)
        kept: list[str] = []
        # A fresh site directory each time: files of an older version must not linger.
        shutil.rmtree(layout.site_dir, ignore_errors=True)
        for path in files:
            if path == RULES and os.path.exists(RULES) and sha256(RULES) != sha256(_dest(staged, path)):
                if not old or old.get("files", {}).get(RULES) != sha256(RULES):
                    kept.append(path)  # the administrator's own rules file
                    continue
            _copy_into_system(staged, path, created_dirs)
    ensure_parser_user(layout)
    manifest = {
        "version": read_version(),
        "prefix": layout.prefix,
        "files": {p: sha256(p) for p in files if p not in kept},
        # Removed again by uninstall when empty (the site dir's own are removed with it).
        "created_dirs": sorted(d for d in set(created_dirs) if not d.startswith(layout.site_dir + "/")),
        "group_created": ensure_group(layout) or bool(old and old.get("group_created")),
    }
    write_manifest(layout, manifest)
    for path in kept:
        log(f"kept your {path}; the shipped one is in {layout.doc_dir} (README-install.md) and polkit/ of the source")
    enable_socket()
    log(f"installed perf-mcp-broker {manifest['version']} in {layout.lib_dir}")
    log(f"grant a user with: usermod -aG {GROUP} USER (polkit sees it at once, no new login needed)")


def read_manifest(layout: Layout) -> dict | None:
    try:
        return json.loads(Path(layout.manifest).read_text())
    except FileNotFoundError:
        return None


def write_manifest(layout: Layout, manifest: dict) -> None:
    path = Path(layout.manifest)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    path.chmod(0o644)


def uninstall(layout: Layout) -> None:
    if os.geteuid() != 0:
        raise InstallError("run as root: sudo make uninstall")
    manifest = read_manifest(layout)
    if manifest is None:
        raise InstallError(f"no {layout.manifest}: nothing installed with this prefix")
    disable_socket()
    for path, digest in sorted(manifest["files"].items()):
        if not os.path.lexists(path):
            continue
        if path == RULES and sha256(path) != digest:
            log(f"kept {path}: it was changed after installation")
            continue
        os.unlink(path)
    shutil.rmtree(layout.site_dir, ignore_errors=True)
    os.unlink(layout.manifest)
    # Directories the install made, deepest first, if nothing else lives in them now.
    for directory in sorted(manifest.get("created_dirs", []), key=lambda d: d.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    if manifest.get("group_created"):
        if group_is_empty(GROUP):
            run(["groupdel", GROUP])
            log(f"removed the group {GROUP}")
        else:
            log(f"kept the group {GROUP}: it has members")
    if systemd_running():
        run(["systemctl", "daemon-reload"], check=False)
    log("uninstalled perf-mcp-broker")


# ---------------------------------------------------------------- Debian package


def installed_size_kib(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 1  # a block for each directory, as dpkg-gencontrol counts
        for name in filenames:
            total += (os.lstat(os.path.join(dirpath, name)).st_size + 1023) // 1024
    return total


def python_depends(python: str) -> str:
    out = run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True).stdout
    major, minor = (int(x) for x in out.split())
    return f"python3 (>= {major}.{minor}~), python3 (<< {major}.{minor + 1})"


def build_deb(out_dir: Path, python: str = PYTHON) -> Path:
    version = f"{read_version()}-1"
    arch = run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    layout = Layout("/usr")
    with tempfile.TemporaryDirectory(prefix="perf-mcp-deb-") as tmp:
        root = Path(tmp) / "root"
        stage(root, layout, python)
        doc = _dest(root, layout.doc_dir)
        shutil.copy(PACKAGING / "debian" / "copyright", doc / "copyright")
        (doc / "copyright").chmod(0o644)
        debian = root / "DEBIAN"
        debian.mkdir(mode=0o755)
        control = (PACKAGING / "debian" / "control.in").read_text()
        for key, value in {
            "@VERSION@": version,
            "@ARCH@": arch,
            "@INSTALLED_SIZE@": str(installed_size_kib(root)),
            "@PYTHON_DEPENDS@": python_depends(python),
        }.items():
            control = control.replace(key, value)
        (debian / "control").write_text(control)
        for name in ("conffiles",):
            shutil.copy(PACKAGING / "debian" / name, debian / name)
        for name in ("postinst", "prerm", "postrm"):
            shutil.copy(PACKAGING / "debian" / name, debian / name)
            (debian / name).chmod(0o755)
        md5 = [f"{hashlib.md5(_dest(root, p).read_bytes()).hexdigest()}  {p.lstrip('/')}" for p in staged_files(root) if not p.startswith("/DEBIAN/")]
        (debian / "md5sums").write_text("\n".join(md5) + "\n")
        for name in ("control", "conffiles", "md5sums"):
            (debian / name).chmod(0o644)
        out_dir.mkdir(parents=True, exist_ok=True)
        deb = out_dir / f"{PACKAGE}_{version}_{arch}.deb"
        run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)], stdout=subprocess.DEVNULL)
    log(f"built {deb} ({deb.stat().st_size // 1024} KiB)")
    return deb


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="packaging/install.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, default in (("install", "/usr/local"), ("uninstall", "/usr/local")):
        s = sub.add_parser(name)
        s.add_argument("--prefix", default=default)
    s = sub.add_parser("deb")
    s.add_argument("--out", default=str(REPO / "dist"))
    s = sub.add_parser("stage")
    s.add_argument("destdir")
    s.add_argument("--prefix", default="/usr")
    s = sub.add_parser("venv-launcher", help="write VENV/bin/perf-mcp-broker (development set-up)")
    s.add_argument("venv")
    args = p.parse_args(argv)
    if getattr(args, "prefix", "/usr") not in ("/usr", "/usr/local") and not args.prefix.startswith("/opt/"):
        p.error("--prefix must be /usr, /usr/local or under /opt")
    try:
        if args.command == "install":
            install(Layout(args.prefix))
        elif args.command == "uninstall":
            uninstall(Layout(args.prefix))
        elif args.command == "deb":
            print(build_deb(Path(args.out)))
        elif args.command == "venv-launcher":
            venv_launcher(Path(args.venv).resolve())
        else:
            stage(Path(args.destdir), Layout(args.prefix))
    except (InstallError, subprocess.CalledProcessError) as exc:
        log(f"ERROR: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
