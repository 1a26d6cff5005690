#!/usr/bin/python3 -IS
"""perf-mcp's launcher: the integrity rule, checked before anything is imported.

Every launcher of the root broker is a copy of this file with its first line and
IMPORT_PATH filled in (packaging/install.py writes /usr/sbin/perf-mcp-broker and the
development set-up's .venv/bin/perf-mcp-broker), so the check below is the first code
that runs:

    #!/usr/bin/python3 -IS          the interpreter, isolated
    IMPORT_PATH = ("/usr/lib/perf-mcp/site",)

The development set-up's .venv/bin/perf-mcp is one too, with ENTRY the frontend's
perf_mcp.cli: `sudo perf-mcp` is checked the same way before its root parent imports
anything, and no .pth file of the venv runs, as root or not.

Invariants:
- The interpreter runs isolated: -I (no PYTHON* variables, no user site, no script
  directory on sys.path) and -S (no site processing: no site-packages, no .pth files,
  so nothing of a virtualenv runs before this file). Started otherwise, the launcher
  executes itself again isolated before it imports anything.
- Before the first import from outside the interpreter binary this file checks, as
  root, the interpreter and every file it has mapped, pyvenv.cfg, the launcher itself,
  every module already loaded and every import path entry (each with every parent up
  to /): all must be root-owned and not writable by group or others. Then it puts an
  import guard in front of the import system: every later module, stdlib or not, is
  checked the same way before its code runs (source, bytecode, extension, package
  directories). Only then does it add IMPORT_PATH to sys.path (after the standard
  library) and import the broker, which checks its programs and polkit's files too
  (integrity.py) before it listens.
- This file imports only modules compiled into the interpreter (os, sys, stat are
  frozen; pwd and grp built in), never a file from disk, until the guard is in place.
- Run as a user, nothing is checked (there is nothing to protect); the broker then
  refuses to serve anyway.

The rule (used by integrity.py as well):
- Every path is checked together with every parent directory up to /, both as given
  (symlinks taken literally, for the directories holding them) and fully resolved.
- A path passes when it is owned by uid 0 and not writable by its group or others.
  polkit's own configuration may also belong to the polkitd system user.
- One exception: a parent directory that is root-owned and sticky (/tmp, /var/tmp) may
  be world-writable. In a sticky directory only the owner of an entry can rename or
  remove it, so a root-owned entry inside stays put. A directory whose contents matter
  (on the import path, a package, a polkit rules directory) gets no exception.
- There is no switch to skip the check.
"""

import os
import stat
import sys

# The launcher's import path (the broker, its protocol package and dependencies).
# Filled in by packaging/install.py; empty in the package's own copy, which then
# takes --import-path DIR:DIR... as its first argument.
IMPORT_PATH: tuple = ()
# The module whose main(args) the launcher runs.
ENTRY = "perf_mcp_broker.__main__"

ROOT = frozenset({0})
# The broker's own top-level modules and those of its dependencies (and theirs:
# packaging/broker-requirements.txt): where they live makes the import path when the
# broker is started some other way and starts itself again isolated.
BROKER_MODULES = (
    "perf_mcp_broker", "perf_mcp_protocol", "trio", "msgspec", "prctl", "_prctl", "jeepney",
    "attr", "attrs", "outcome", "sniffio", "sortedcontainers", "idna",
)
# Mapped "files" that are not files on disk.
_NOT_FILES = ("/dev/", "/proc/", "/sys/", "/memfd:", "/SYSV")


class _Value:
    """Equal, hashed and shown by its fields (its __slots__)."""

    __slots__ = ()

    def _key(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._key()!r}"


class Target(_Value):
    """One thing the broker trusts, and why ("executes", "imports", "reads as configuration")."""

    __slots__ = ("path", "why", "contents_matter", "owners")

    def __init__(self, path: str, why: str, contents_matter: bool = False, owners: frozenset = ROOT) -> None:
        self.path = path
        self.why = why
        self.contents_matter = contents_matter  # a directory nobody else may add files to
        self.owners = owners


class Problem(_Value):
    """A path (the target itself or one of its parents) that others could change."""

    __slots__ = ("path", "target", "why", "reason")

    def __init__(self, path: str, target: str, why: str, reason: str) -> None:
        self.path = path
        self.target = target
        self.why = why
        self.reason = reason

    def __str__(self) -> str:
        via = "" if self.path == self.target else f" (a parent of {self.target})"
        return f"{self.path}{via}: {self.reason}; the broker {self.why} it"


def mode_problem(st: os.stat_result, owners: frozenset, sticky_ok: bool) -> "str | None":
    """Why a file with this stat may be changed by someone other than root, or None."""
    if st.st_uid not in owners:
        return f"owned by {_user_name(st.st_uid)}, not root"
    mode = stat.S_IMODE(st.st_mode)
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    if sticky_ok and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and st.st_uid == 0:
        return None
    who = "others" if mode & stat.S_IWOTH else f"group {_group_name(st.st_gid)}"
    return f"writable by {who} (mode {mode:04o})"


def _user_name(uid: int) -> str:
    import pwd  # built into the interpreter

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    import grp  # built into the interpreter

    try:
        return f"{gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return str(gid)


def _prefixes(path: str) -> list:
    """'/a/b/c' -> ['/', '/a', '/a/b', '/a/b/c']."""
    parts = [p for p in path.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _unique(problems) -> list:
    seen = set()
    out = []
    for p in problems:
        if (p.path, p.reason) not in seen:
            seen.add((p.path, p.reason))
            out.append(p)
    return out


class Checker:
    """Checks targets; remembers each (path, rule) it has decided."""

    def __init__(self) -> None:
        self._seen: dict = {}

    def _component(self, path: str, owners: frozenset, sticky_ok: bool) -> "str | None":
        key = (path, sticky_ok, owners)
        if key not in self._seen:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._seen[key] = None  # callers only pass existing paths' prefixes
            else:
                self._seen[key] = None if stat.S_ISLNK(st.st_mode) else mode_problem(st, owners, sticky_ok)
        return self._seen[key]

    def _chain(self, path: str, target: Target) -> list:
        prefixes = _prefixes(path)
        out = []
        for i, prefix in enumerate(prefixes):
            # Sticky parents are fine; a directory whose contents matter never is.
            sticky_ok = i < len(prefixes) - 1 or not target.contents_matter
            reason = self._component(prefix, target.owners | ROOT, sticky_ok)
            if reason:
                out.append(Problem(prefix, target.path, target.why, reason))
        return out

    def check(self, target: Target) -> list:
        path = os.path.abspath(target.path)
        if not os.path.lexists(path):
            # A missing path (an import path entry, a bytecode file) could be created
            # by whoever may write the nearest existing directory above it.
            path = _nearest_existing(path)
            target = Target(target.path, target.why, True, target.owners)
        problems = self._chain(path, target)
        real = os.path.realpath(path)
        if real != path:
            problems += self._chain(real, target)
        return _unique(problems)

    def check_all(self, targets) -> list:
        problems = []
        for target in targets:
            problems += self.check(target)
        return _unique(problems)


def check(targets) -> list:
    """All problems of all targets, each failing path reported once."""
    return Checker().check_all(targets)


# ---------------------------------------------------------------- what this process trusts


def parse_mapped_files(maps_text: str) -> list:
    """File paths mapped into a process, from /proc/PID/maps text."""
    out: dict = {}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5]
        if not path.startswith("/") or path.endswith(" (deleted)") or path.startswith(_NOT_FILES):
            continue
        out[path] = None
    return list(out)


def interpreter_config() -> list:
    """pyvenv.cfg files the interpreter reads at start-up to find its standard library
    (next to the executable or one directory up), where they exist."""
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    candidates = (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(os.path.dirname(exe_dir), "pyvenv.cfg"))
    return [p for p in candidates if os.path.exists(p)]


def executed_targets(programs) -> list:
    """The interpreter, its start-up configuration, every file mapped into this process,
    and `programs` (job programs, the launcher)."""
    with open("/proc/self/maps") as f:
        mapped = parse_mapped_files(f.read())
    paths = [sys.executable, os.readlink("/proc/self/exe"), *mapped, *programs]
    out = [Target(p, "executes") for p in dict.fromkeys(paths) if p]
    return out + [Target(p, "reads as configuration") for p in interpreter_config()]


def module_files(modules) -> list:
    """Source, bytecode and extension files of loaded modules."""
    out: dict = {}
    for module in modules:
        for attr in ("__file__", "__cached__"):
            path = getattr(module, attr, None)
            if isinstance(path, str) and os.path.isabs(path) and os.path.exists(path):
                out[path] = None
    return list(out)


def import_targets(modules, search_path) -> list:
    """Loaded module files, the directories holding them and every import path entry."""
    files = module_files(modules)
    dirs = dict.fromkeys(os.path.dirname(f) for f in files)
    for entry in search_path:
        dirs[os.path.abspath(entry or os.getcwd())] = None
    return [Target(f, "imports") for f in files] + [Target(d, "imports", contents_matter=True) for d in dirs]


def launcher_path() -> "str | None":
    """The script this interpreter runs (the launcher), if it is a file."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv else None)
    if isinstance(path, str) and os.path.isfile(path):
        return os.path.abspath(path)
    return None


def process_targets(import_path=()) -> list:
    """What this process runs and imports now, and the import path it is about to use."""
    launcher = launcher_path()
    return executed_targets([launcher] if launcher else []) + import_targets(
        list(sys.modules.values()), [*sys.path, *import_path]
    )


def spec_targets(spec) -> list:
    """What importing a module found as `spec` reads: its file, its bytecode file (or
    the directory where one could appear), its directory and a package's directories."""
    out = []
    origin = spec.origin if spec.has_location else None
    if isinstance(origin, str) and os.path.isabs(origin):
        out.append(Target(origin, "imports"))
        out.append(Target(os.path.dirname(origin), "imports", contents_matter=True))
    cached = getattr(spec, "cached", None)
    if isinstance(cached, str) and os.path.isabs(cached):
        out.append(Target(cached, "imports"))
        out.append(Target(os.path.dirname(cached), "imports", contents_matter=True))
    for location in spec.submodule_search_locations or ():
        out.append(Target(location, "imports", contents_matter=True))
    return out


def refusal_message(problems: list, limit: int = 20) -> str:
    lines = [
        f"refusing to run as root: {len(problems)} path(s) that the broker executes, imports or "
        "reads as configuration can be changed by users other than root:"
    ]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    lines.append(
        "Install the broker into a root-owned place (`sudo make install` or the Debian package), "
        "or make these paths owned by root and not writable by group or others "
        "(chown root:root, chmod go-w)."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- the import guard


class ImportRefused(Exception):
    """A module that others could change was about to be imported by root. Not an
    ImportError: code that treats a missing module as optional must not carry on."""

    def __init__(self, name: str, problems: list) -> None:
        super().__init__(f"import of {name} refused\n{refusal_message(problems)}")
        self.name = name
        self.problems = problems


class ImportGuard:
    """Wraps a finder of sys.meta_path: a module it finds is checked before it loads.

    Checks only while the process is root (after `sudo perf-mcp` separates privileges
    the unprivileged child has nothing to protect)."""

    def __init__(self, inner: object, checker: Checker) -> None:
        self.inner = inner
        self.checker = checker

    def find_spec(self, name: str, path=None, target=None):
        spec = self.inner.find_spec(name, path, target)
        if spec is None or (os.geteuid() != 0 and os.getuid() != 0):
            return spec
        problems = self.checker.check_all(spec_targets(spec))
        if problems:
            raise ImportRefused(name, problems)
        return spec

    def invalidate_caches(self) -> None:
        invalidate = getattr(self.inner, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()

    def __getattr__(self, name: str):
        # Everything else is the wrapped finder's (importlib.metadata's
        # find_distributions: reading metadata runs no module code).
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"ImportGuard({self.inner!r})"


_BUILT_IN = ("BuiltinImporter", "FrozenImporter")  # modules inside the interpreter binary


def _is_guard(finder: object) -> bool:
    # By name: a launcher's copy of this file defines its own ImportGuard class.
    return type(finder).__name__ == "ImportGuard"


def _needs_guard(finder: object) -> bool:
    return not _is_guard(finder) and getattr(finder, "__name__", "") not in _BUILT_IN


def guarded() -> bool:
    """Whether every finder that reads files is wrapped by an ImportGuard."""
    return not any(_needs_guard(f) for f in sys.meta_path)


def install_guard(checker: "Checker | None" = None) -> None:
    """Wrap every finder of sys.meta_path that reads files (the path finder, and any
    other such as an editable install's) in an ImportGuard. Idempotent."""
    checker = checker or Checker()
    sys.meta_path[:] = [ImportGuard(f, checker) if _needs_guard(f) else f for f in sys.meta_path]
    sys.path_importer_cache.clear()


def guard_process(import_path=()) -> list:
    """Check what this root process runs and imports now (and the import path it is
    about to use), then guard every later import. Returns the problems (empty: all
    is well; the guard is installed only then)."""
    checker = Checker()
    problems = checker.check_all(process_targets(import_path))
    if not problems:
        install_guard(checker)
    return problems


# ---------------------------------------------------------------- the launcher


def isolated() -> bool:
    return bool(sys.flags.isolated and sys.flags.no_site)


def broker_import_path() -> list:
    """The import path entries holding the broker and its dependencies, as found by
    this (not isolated) interpreter; nothing is imported to find them."""
    from importlib.util import find_spec

    out: dict = {}
    for name in BROKER_MODULES:
        spec = find_spec(name)
        if spec is None:
            continue
        if spec.submodule_search_locations:
            locations = list(spec.submodule_search_locations)
        elif spec.origin and spec.has_location:
            locations = [spec.origin]
        else:
            continue
        for location in locations:
            out[os.path.dirname(os.path.abspath(location))] = None
    return list(out)


def reexec_isolated(args: list) -> None:
    """Start the broker again, isolated, through this file (for `python -m
    perf_mcp_broker` and other starts that went through site processing)."""
    sys.stdout.flush()
    sys.stderr.flush()
    path = os.pathsep.join(broker_import_path())
    here = os.path.abspath(__file__)
    os.execv(sys.executable, [sys.executable, "-I", "-S", here, "--import-path", path, *args])


def _say(text: str) -> None:
    print(f"{os.path.basename(sys.argv[0]) or 'perf-mcp'}: {text}", file=sys.stderr, flush=True)


def main(argv: "list | None" = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    import_path = tuple(IMPORT_PATH)
    explicit = not import_path and args[:1] == ["--import-path"] and len(args) >= 2
    if explicit:
        import_path = tuple(p for p in args[1].split(os.pathsep) if p)
        args = args[2:]
    if not import_path:
        _say("no import path: run an installed launcher, or this file with --import-path DIR[:DIR...]")
        return 2
    if not isolated():
        # Site processing may already have run code (.pth files); start clean.
        sys.stdout.flush()
        sys.stderr.flush()
        here = os.path.abspath(launcher_path() or argv[0])
        extra = ["--import-path", os.pathsep.join(import_path)] if explicit else []
        os.execv(sys.executable, [sys.executable, "-I", "-S", here, *extra, *args])
    sys.dont_write_bytecode = True
    if os.geteuid() == 0:
        problems = guard_process(import_path)
        if problems:
            _say(refusal_message(problems))
            return 1
    sys.path.extend(p for p in import_path if p not in sys.path)  # after the standard library
    try:
        return __import__(ENTRY, fromlist=["main"]).main(args)
    except ImportRefused as exc:
        _say(refusal_message(exc.problems))
        return 1


if __name__ == "__main__":
    sys.exit(main())
