"""Faults with a known root cause, for scoring perf_triage (bench/triage/run.py and
tests/tools_triage).

Each fault is a context manager: it starts the fault (as root where it must:
cgroups, loop devices, namespaces, a resolver on port 53; the workload itself
as another user, `nobody`, unless it cannot), yields an `Active` that knows
the TRUE root cause(s) (kind from the triage contract's ROOT_CAUSE_KINDS plus
the culprit: pid, cgroup, device, peer), and on exit, even on error, stops
every process it started by PID (by its own process group, which it created),
removes the cgroup, detaches the loop device, deletes the namespaces and the
files. Every process also ends on its own after `life_s` (alarm, --runtime,
--timeout, -t, or a deadline in the script), so a harness killed mid-way
leaves nothing running for long.

Recipes: ../shared/TESTING.md ("Fault recipes that were seen to work here").
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

import helpers  # noqa: E402

PYTHON = "/usr/bin/python3"
WORKLOAD_USER = "nobody"  # another user than both triage callers
CGROUP_ROOT = Path("/sys/fs/cgroup")
VAR_TMP = Path("/var/tmp")
IP = "/usr/sbin/ip"

# ----------------------------------------------------------------------------- truth


@dataclass
class Truth:
    """One true root cause: acceptable kinds and the culprit that must be named.

    A root cause of the triage answer matches when its kind is one of `kinds`
    and its culprit names this culprit: culprit.pid (or .tid) in `pids`, or
    the cgroup path ends with `cgroup`, or culprit.device is `device`, or
    culprit.peer is `peer`, or culprit.interface is `interface`, or (when
    `system_ok`) culprit.kind is "system". Only the fields set here count.
    """

    label: str
    kinds: tuple[str, ...]
    pids: frozenset[int] = frozenset()
    pid_source: Callable[[], set[int]] | None = None  # more pids known at score time (workers)
    cgroup: str | None = None  # the cgroup's path below the hierarchy root, e.g. /pmcp-bench-xxxx
    device: str | None = None  # loop3
    peer: str | None = None  # addr:port
    interface: str | None = None
    system_ok: bool = False

    def all_pids(self) -> set[int]:
        found = set(self.pids)
        if self.pid_source is not None:
            found |= self.pid_source()
        return found

    def culprit_matches(self, culprit: dict[str, Any], pids: set[int] | None = None) -> bool:
        pids = self.all_pids() if pids is None else pids
        if pids and (culprit.get("pid") in pids or culprit.get("tid") in pids):
            return True
        cg = culprit.get("cgroup")
        if self.cgroup and isinstance(cg, str) and cg.rstrip("/").endswith(self.cgroup):
            return True
        dev = culprit.get("device")
        if self.device and isinstance(dev, str) and dev.removeprefix("/dev/") == self.device:
            return True
        if self.peer and culprit.get("peer") == self.peer:
            return True
        if self.interface and culprit.get("interface") == self.interface:
            return True
        return self.system_ok and culprit.get("kind") == "system"

    def matches(self, rc: dict[str, Any], pids: set[int] | None = None) -> bool:
        return rc.get("kind") in self.kinds and self.culprit_matches(rc.get("culprit") or {}, pids)

    def named_in(self, text: str) -> bool:
        """The culprit written in free text (the one-line summary)."""
        marks = [str(p) for p in self.pids]
        marks += [m for m in (self.cgroup and self.cgroup.strip("/"), self.device, self.peer, self.interface) if m]
        return any(m in text for m in marks)

    def describe(self) -> str:
        who = []
        if self.pids:
            who.append("pid " + "/".join(str(p) for p in sorted(self.pids)))
        if self.pid_source is not None:
            who.append("its workers")
        for name in ("cgroup", "device", "peer", "interface"):
            if getattr(self, name):
                who.append(f"{name} {getattr(self, name)}")
        if self.system_ok:
            who.append("or system")
        return f"{'|'.join(self.kinds)} ({', '.join(who)})"


@dataclass
class Active:
    """A running fault: what it is, its truths, and what to pass to triage."""

    name: str
    truths: list[Truth]
    pid: int | None = None  # the process a person would ask about ("why is process N slow")
    netns: str | None = None  # run the frontend inside this network namespace
    detail: str = ""
    ground: Callable[[], str] | None = None  # the fault's own figure, read from the kernel (not the tools)
    probes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # existing tools that must see it
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


# ----------------------------------------------------------------------------- environment


class Env:
    """What the faults share: a 0755 work dir (compiled programs, scripts),
    the user the workloads run as, and the big file of the memory fault
    (made once, removed with the Env)."""

    def __init__(self, user: str = WORKLOAD_USER) -> None:
        self.user = helpers.lookup_user(user)
        if self.user is None:
            raise RuntimeError(f"no user {user}")
        self.dir = helpers.make_shared_tmpdir("pmcp-triage-")
        self.scratch = self.dir / "scratch"
        self.scratch.mkdir()
        self.scratch.chmod(0o1777)
        self._exes: dict[str, Path] = {}
        self._bigfile: Path | None = None

    def close(self) -> None:
        if self._bigfile is not None:
            self._bigfile.unlink(missing_ok=True)
        helpers.remove_tree(self.dir)

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def script(self, name: str, text: str) -> Path:
        path = self.dir / name
        if not path.exists():
            path.write_text(text)
            path.chmod(0o644)
        return path

    def exe(self, name: str, source: str, *libs: str) -> Path:
        if name not in self._exes:
            src = self.dir / f"{name}.c"
            src.write_text(source)
            out = self.dir / name
            cc = shutil.which("cc") or "gcc"
            subprocess.run([cc, "-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-o", str(out), str(src),
                            *libs], check=True, capture_output=True, stdin=subprocess.DEVNULL)
            out.chmod(0o755)
            self._exes[name] = out
        return self._exes[name]

    def bigfile(self, size_mib: int) -> Path:
        """A file of real data in /var/tmp (never sparse: its pages come from the disk)."""
        if self._bigfile is None:
            path = VAR_TMP / f"pmcp-triage-{os.getpid()}-{secrets.token_hex(3)}.dat"
            chunk = os.urandom(1 << 20)
            with open(path, "wb") as f:
                for _ in range(size_mib):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            path.chmod(0o644)
            self._bigfile = path
        return self._bigfile


# ----------------------------------------------------------------------------- processes


def _popen(argv: Sequence[str | os.PathLike[str]], *, user: helpers.UnixUser | None, cwd: str | Path = "/",
           preexec: Callable[[], None] | None = None, stdout: Any = subprocess.DEVNULL,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start argv in its own session (as `user` through setpriv, which execs in
    place: the Popen pid is the workload's pid)."""
    full = helpers.as_user_argv(user, argv) if user is not None else [os.fspath(a) for a in argv]
    return subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.DEVNULL,
                            cwd=str(cwd), start_new_session=True, preexec_fn=preexec,
                            env=env if env is not None else helpers.user_env(user or "root"))


def stop_group(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, to the process group this module created for proc (its leader's pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout)
            # the leader is gone; its workers (same group) get the next signal
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def _running(active: Active) -> Iterator[Active]:
    try:
        yield active
    finally:
        for proc in reversed(active.procs):
            stop_group(proc)


def _await_ready(proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> str:
    """Wait for the workload's first stdout line ("ready ...")."""
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise RuntimeError(f"{what} did not say ready within {timeout} s")
    line = proc.stdout.readline().decode(errors="replace").strip()
    if not line.startswith("ready"):
        raise RuntimeError(f"{what} did not start: {line!r} (exit {proc.poll()})")
    return line


def cpu_ticks(pid: int) -> int:
    st = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(st[11]) + int(st[12])


def cpu_pct(pid: int, window: float = 1.0) -> float:
    hz = os.sysconf("SC_CLK_TCK")
    try:
        a = cpu_ticks(pid)
        time.sleep(window)
        b = cpu_ticks(pid)
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    return 100.0 * (b - a) / hz / window


def group_pids(pgid: int) -> set[int]:
    return {p.pid for p in helpers.all_processes() if p.pgrp == pgid}


# ----------------------------------------------------------------------------- cgroups v1


@dataclass
class V1Cgroup:
    name: str  # /pmcp-bench-xxxx
    dirs: dict[str, Path]

    def join_fn(self) -> Callable[[], None]:
        files = [str(d / "cgroup.procs") for d in self.dirs.values()]

        def join() -> None:  # in the child, before exec
            me = str(os.getpid())
            for f in files:
                with open(f, "w") as fh:
                    fh.write(me)

        return join

    def stat(self, controller: str, file: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in (self.dirs[controller] / file).read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
        return out

    def read_int(self, controller: str, file: str) -> int:
        return int((self.dirs[controller] / file).read_text().split()[0])


@contextmanager
def v1_cgroup(controllers: Sequence[str], settings: dict[tuple[str, str], str]) -> Iterator[V1Cgroup]:
    name = f"/pmcp-bench-{os.getpid()}-{secrets.token_hex(3)}"
    cg = V1Cgroup(name, {})
    try:
        for c in controllers:
            d = CGROUP_ROOT / c / name.lstrip("/")
            d.mkdir()
            cg.dirs[c] = d
        for (c, f), v in settings.items():
            (cg.dirs[c] / f).write_text(v)
        yield cg
    finally:
        for d in cg.dirs.values():
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # a killed task is still leaving


# ----------------------------------------------------------------------------- programs

BUSY_C = helpers.BUSY_C  # perfmcp_busy_loop; argv[1] = seconds before SIGALRM ends it

LOCK_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t perfmcp_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile unsigned long perfmcp_done;

static void nap_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Holds the lock 90 ms of every ~92 (sleeping while it holds it). */
__attribute__((noinline)) static void *perfmcp_holder(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "pmcp-holder");
    for (;;) {
        pthread_mutex_lock(&perfmcp_lock);
        nap_ms(90);
        pthread_mutex_unlock(&perfmcp_lock);
        nap_ms(2);
    }
    return NULL;
}

__attribute__((noinline)) static void perfmcp_wait_for_lock(void)
{
    pthread_mutex_lock(&perfmcp_lock);
    perfmcp_done++;
    pthread_mutex_unlock(&perfmcp_lock);
}

/* The victim: wants the lock all the time, does almost nothing with it. */
__attribute__((noinline)) static void *perfmcp_victim(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "pmcp-victim");
    printf("ready %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    for (;;)
        perfmcp_wait_for_lock();
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t h, v;
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 120);
    pthread_create(&h, NULL, perfmcp_holder, NULL);
    nap_ms(5);
    pthread_create(&v, NULL, perfmcp_victim, NULL);
    pthread_join(v, NULL);
    return 0;
}
"""

FD_LEAKER = """
import os, sys, time
directory, rate, life = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
kept = []
print("ready", flush=True)
end = time.monotonic() + life
i = 0
while time.monotonic() < end:
    kept.append(open(os.path.join(directory, f"leak-{i % 25}"), "w"))
    i += 1
    time.sleep(1.0 / rate)
"""

RESOLVER = r"""
import socket, struct, sys, threading, time
delay, ready, candidates = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
s = None
for addr in candidates:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, 53))
        break
    except OSError:
        s.close(); s = None
if s is None:
    sys.exit(5)
with open(ready, "w") as f:
    f.write(addr)
def answer(q, peer):
    time.sleep(delay)
    tid = struct.unpack(">H", q[:2])[0]
    i = 12
    while q[i]:
        i += q[i] + 1
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    if qtype == 1:
        body = struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question
        body += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("10.9.9.9")
    else:
        body = struct.pack(">HHHHHH", tid, 0x8180, 1, 0, 0, 0) + question
    s.sendto(body, peer)
while True:
    q, peer = s.recvfrom(512)
    threading.Thread(target=answer, args=(q, peer), daemon=True).start()
"""

DNS_CLIENT = r"""
import socket, sys, time
life = float(sys.argv[1])
print("ready", flush=True)
end = time.monotonic() + life
n = 0
while time.monotonic() < end:
    socket.getaddrinfo(f"pmcp-slow-{n}.example", 80, socket.AF_INET, socket.SOCK_STREAM)
    n += 1
"""

MEM_HOG = r"""
import mmap, os, sys, time
path, hold_mib, life = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + life
hold = bytearray(hold_mib << 20)
for i in range(0, len(hold), 4096):
    hold[i] = 1
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
print("ready", flush=True)
s = 0
while time.monotonic() < end:
    for off in range(0, size, 4096):
        s += m[off]
"""

EXEC_STORM = r"""
import os, sys, time
life, rate = float(sys.argv[1]), float(sys.argv[2])
print("ready", flush=True)
end = time.monotonic() + life
n = 0
while time.monotonic() < end:
    pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
    os.waitpid(pid, 0)
    n += 1
    time.sleep(1.0 / rate)
"""

# ----------------------------------------------------------------------------- the faults

LEAK_RATE = 10.0  # fds per second
HOG_NICE = -10
DNS_DELAY_S = 0.4
LOCK_HOLD_MS = 90
QUOTA_US, PERIOD_US = 20000, 100000


@contextmanager
def quiet(env: Env, life_s: float) -> Iterator[Active]:
    """No fault: the control. Any warning or critical root cause is a false alarm."""
    yield Active("quiet", [], detail="no fault started")


@contextmanager
def cpu_hog(env: Env, life_s: float) -> Iterator[Active]:
    """One busy thread (C loop) as another user: a single-thread bottleneck on a 2-CPU machine."""
    exe = env.exe("perfmcp-busy", BUSY_C)
    proc = _popen([exe, str(int(life_s))], user=env.user)
    pid = proc.pid
    # nice -10: it gets its whole CPU even on a machine other loads share (a known answer: ~100% of one CPU)
    os.setpriority(os.PRIO_PROCESS, pid, HOG_NICE)
    act = Active("cpu_hog", [Truth("single busy thread", ("cpu.single_thread",), frozenset({pid}))], pid=pid,
                 procs=[proc], detail=f"perfmcp-busy pid {pid} as {env.user.name}",
                 ground=lambda: f"pid {pid} {cpu_pct(pid):.0f}% CPU",
                 probes=[("perf_snapshot", {"count": 2, "interval_s": 1})])
    with _running(act):
        yield act


@contextmanager
def throttled_cgroup(env: Env, life_s: float) -> Iterator[Active]:
    """A busy loop in a v1 cpu cgroup limited to 20 ms per 100 ms: throttled on an idle machine."""
    exe = env.exe("perfmcp-busy", BUSY_C)
    with v1_cgroup(["cpu", "cpuacct"], {("cpu", "cpu.cfs_period_us"): str(PERIOD_US),
                                        ("cpu", "cpu.cfs_quota_us"): str(QUOTA_US)}) as cg:
        proc = _popen([exe, str(int(life_s))], user=env.user, preexec=cg.join_fn())
        pid = proc.pid

        def ground() -> str:
            a = cg.stat("cpu", "cpu.stat")
            time.sleep(1.0)
            b = cg.stat("cpu", "cpu.stat")
            return (f"{cg.name}: nr_throttled +{b['nr_throttled'] - a['nr_throttled']}/s of "
                    f"+{b['nr_periods'] - a['nr_periods']} periods, throttled "
                    f"{(b['throttled_time'] - a['throttled_time']) / 1e6:.0f} ms/s; pid {pid} {cpu_pct(pid):.0f}% CPU")

        act = Active("throttled_cgroup", [Truth("cpu quota throttling", ("cgroup.cpu_throttled",), frozenset(),
                                                cgroup=cg.name)],
                     pid=pid, procs=[proc], detail=f"pid {pid} in cpu:{cg.name} quota {QUOTA_US}/{PERIOD_US}",
                     ground=ground, probes=[("perf_cgroup_summary", {"pid": pid})])
        with _running(act):
            yield act


@contextmanager
def lock_blocked(env: Env, life_s: float) -> Iterator[Active]:
    """A victim thread waiting on a mutex its sibling holds 90 ms of every 92."""
    exe = env.exe("perfmcp-lock", LOCK_C, "-lpthread")
    proc = _popen([exe, str(int(life_s))], user=env.user, stdout=subprocess.PIPE)
    act = Active("lock_blocked", [], pid=proc.pid, procs=[proc])
    with _running(act):
        tid = int(_await_ready(proc, "the lock workload").split()[1])
        pid = proc.pid
        act.truths = [Truth("victim blocked on a lock", ("process.blocked",), frozenset({pid, tid}))]
        act.detail = f"pid {pid} (victim tid {tid} 'pmcp-victim', holder 'pmcp-holder')"

        def ground() -> str:
            st = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()[0]
            wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text()
            return f"victim tid {tid} state {st} wchan {wchan or '?'}, {cpu_pct(pid):.1f}% CPU for the process"

        act.ground = ground
        act.probes = [("perf_offcpu_profile", {"pid": pid, "duration_s": 3})]
        yield act


@contextmanager
def fd_leak(env: Env, life_s: float) -> Iterator[Active]:
    """A process opening LEAK_RATE files a second and never closing them."""
    script = env.script("fd_leaker.py", FD_LEAKER)
    d = env.scratch / f"fds-{secrets.token_hex(3)}"
    d.mkdir()
    d.chmod(0o1777)
    proc = _popen([PYTHON, script, d, str(LEAK_RATE), str(life_s)], user=env.user, stdout=subprocess.PIPE)
    pid = proc.pid
    act = Active("fd_leak", [Truth("fd leak", ("fd.leak",), frozenset({pid}))], pid=pid, procs=[proc],
                 detail=f"python pid {pid} leaks {LEAK_RATE:g} fds/s in {d}")

    def ground() -> str:
        a = helpers.open_fd_count(pid)
        time.sleep(2.0)
        return f"pid {pid} fds {a} -> {helpers.open_fd_count(pid)} in 2 s"

    act.ground = ground
    act.probes = [("perf_fd_trace", {"pid": pid, "duration_s": 4, "interval_s": 2})]
    try:
        with _running(act):
            _await_ready(proc, "the fd leaker")
            yield act
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def slow_dns(env: Env, life_s: float) -> Iterator[Active]:
    """A resolver on 127.0.0.77 answering after 0.4 s, and one process (in a
    private mount namespace whose resolv.conf names only it) looking names up
    one after the other."""
    resolver = env.script("resolver.py", RESOLVER)
    client = env.script("dns_client.py", DNS_CLIENT)
    ready = env.scratch / f"resolver-{secrets.token_hex(4)}"
    res = _popen([PYTHON, resolver, str(DNS_DELAY_S), ready, "127.0.0.77", "127.0.0.78", "127.0.0.79"], user=None)
    act = Active("slow_dns", [], procs=[res])
    try:
        with _running(act):
            if not helpers.wait_until(lambda: ready.exists() and ready.stat().st_size > 0 or res.poll() is not None,
                                      20):
                raise RuntimeError("the resolver did not start")
            if res.poll() is not None:
                raise RuntimeError(f"the resolver exited with {res.returncode} (port 53 taken on all candidates?)")
            addr = ready.read_text().strip()
            conf = env.scratch / f"resolv-{secrets.token_hex(3)}.conf"
            conf.write_text(f"nameserver {addr}\noptions timeout:3 attempts:1\n")
            conf.chmod(0o644)
            sh = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
            argv = ["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", sh, "sh", str(conf),
                    *helpers.as_user_argv(env.user, [PYTHON, str(client), str(life_s)])]
            proc = _popen(argv, user=None, stdout=subprocess.PIPE, env=helpers.user_env(env.user))
            act.procs.append(proc)
            _await_ready(proc, "the DNS client")
            pid = proc.pid
            act.pid = pid
            act.truths = [Truth("slow DNS lookups", ("dns.slow",), frozenset({pid}))]
            act.detail = f"python pid {pid} resolves via {addr} (+{DNS_DELAY_S:g} s per answer)"
            act.ground = lambda: f"resolver {addr} delay {DNS_DELAY_S} s; client pid {pid} {cpu_pct(pid):.1f}% CPU"
            act.probes = [("perf_dns_latency", {"pid": pid, "duration_s": 3})]
            yield act
    finally:
        ready.unlink(missing_ok=True)


def diskstats(name: str) -> tuple[int, int]:
    for line in Path("/proc/diskstats").read_text().splitlines():
        p = line.split()
        if len(p) > 13 and p[2] == name:
            return int(p[12]), int(p[5])  # io_ticks ms, sectors read
    raise KeyError(name)


@contextmanager
def loop_device(env: Env, size_mib: int = 128) -> Iterator[str]:
    """A loop device over a file of data in /var/tmp (never the raw root disk)."""
    backing = VAR_TMP / f"pmcp-triage-loop-{os.getpid()}-{secrets.token_hex(3)}.img"
    dev = None
    try:
        chunk = os.urandom(1 << 20)
        with open(backing, "wb") as f:
            for _ in range(size_mib):
                f.write(chunk)
        dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                             check=True).stdout.strip()
        yield dev
    finally:
        if dev:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        backing.unlink(missing_ok=True)


@contextmanager
def disk_saturation(env: Env, life_s: float) -> Iterator[Active]:
    """fio (one process, 8 psync threads: --thread) reading a loop device with direct I/O."""
    with loop_device(env) as dev:
        name = os.path.basename(dev)
        argv = ["/usr/bin/fio", "--name=pmcp-sat", f"--filename={dev}", "--direct=1", "--rw=randread", "--bs=4k",
                "--ioengine=psync", "--numjobs=8", "--thread", "--time_based", f"--runtime={int(life_s)}",
                "--randrepeat=0", "--norandommap", "--group_reporting"]
        proc = _popen(argv, user=None, cwd=env.scratch)
        pid = proc.pid
        act = Active("disk_saturation", [Truth("one process saturating a device", ("disk.saturation",),
                                               frozenset({pid}), device=name)],
                     pid=pid, procs=[proc], detail=f"fio pid {pid} (8 threads, psync, direct) on {dev}")

        def ground() -> str:
            t0, s0 = diskstats(name)
            time.sleep(1.0)
            t1, s1 = diskstats(name)
            return f"{name}: util {(t1 - t0) / 10:.0f}%, {(s1 - s0) * 512 / 1e6:.1f} MB/s read; fio pid {pid}"

        act.ground = ground
        act.probes = [("perf_use_check", {"window_s": 3})]
        with _running(act):
            yield act


@contextmanager
def memory_pressure(env: Env, life_s: float) -> Iterator[Active]:
    """A v1 memory cgroup of 200M, a process in it holding 150M and re-reading a
    600M file through mmap (the file dropped from the page cache first)."""
    big = env.bigfile(600)
    fd = os.open(big, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    script = env.script("mem_hog.py", MEM_HOG)
    with v1_cgroup(["memory"], {("memory", "memory.limit_in_bytes"): str(200 << 20)}) as cg:
        proc = _popen([PYTHON, script, big, "150", str(life_s)], user=env.user, preexec=cg.join_fn(),
                      stdout=subprocess.PIPE)
        pid = proc.pid
        act = Active("memory_pressure", [Truth("memory limit of a cgroup", ("cgroup.memory_limit", "memory.pressure"),
                                               frozenset({pid}), cgroup=cg.name)],
                     pid=pid, procs=[proc], detail=f"python pid {pid} in memory:{cg.name} limit 200M")

        def ground() -> str:
            f0 = cg.read_int("memory", "memory.failcnt")
            time.sleep(1.0)
            f1 = cg.read_int("memory", "memory.failcnt")
            psi = Path("/proc/pressure/memory").read_text().split()[1]
            return (f"{cg.name}: usage {cg.read_int('memory', 'memory.usage_in_bytes') >> 20} MiB, "
                    f"failcnt +{f1 - f0}/s; memory PSI some {psi}")

        act.ground = ground
        act.probes = [("perf_cgroup_summary", {"pid": pid}), ("perf_use_check", {"window_s": 3})]
        with _running(act):
            _await_ready(proc, "the memory hog", 60)
            yield act


NET_SENDER_IP, NET_RECEIVER_IP, NET_PORT = "10.213.7.1", "10.213.7.2", 5201
NET_SENDER_DEV, NET_RECEIVER_DEV = "pmcp-ts", "pmcp-tr"


def _ip(*argv: str, input: str | None = None) -> None:
    subprocess.run([IP, *argv], check=True, capture_output=True, text=True, timeout=30, input=input,
                   stdin=None if input is not None else subprocess.DEVNULL)


@contextmanager
def packet_loss(env: Env, life_s: float, percent: int = 5) -> Iterator[Active]:
    """Two network namespaces joined by a veth pair, the receiver dropping 5% of
    one flow's segments at prerouting (priority -300), iperf3 across: the sender
    retransmits. The frontend runs in the sender's namespace (its /proc/net)."""
    tag = f"{os.getpid() % 100000}-{secrets.token_hex(2)}"
    snd, rcv = f"pmcp-tsnd-{tag}", f"pmcp-trcv-{tag}"
    made: list[str] = []
    act = Active("packet_loss", [], netns=snd)
    try:
        for ns in (snd, rcv):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", snd, "link", "add", NET_SENDER_DEV, "type", "veth", "peer", "name", NET_RECEIVER_DEV, "netns", rcv)
        _ip("-n", snd, "addr", "add", f"{NET_SENDER_IP}/30", "dev", NET_SENDER_DEV)
        _ip("-n", rcv, "addr", "add", f"{NET_RECEIVER_IP}/30", "dev", NET_RECEIVER_DEV)
        for ns, dev in ((snd, NET_SENDER_DEV), (rcv, NET_RECEIVER_DEV)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        rules = ("table inet pmcp_triage_loss {\n chain prerouting {\n"
                 "  type filter hook prerouting priority -300; policy accept;\n"
                 f"  ip saddr {NET_SENDER_IP} tcp dport {NET_PORT} numgen random mod 100 < {percent} drop\n }}\n}}\n")
        _ip("netns", "exec", rcv, "/usr/sbin/nft", "-f", "-", input=rules)
        server = _popen([IP, "netns", "exec", rcv, "/usr/bin/iperf3", "-s", "-B", NET_RECEIVER_IP, "-p",
                         str(NET_PORT)], user=None)
        act.procs.append(server)
        with _running(act):
            def listening() -> bool:
                out = subprocess.run([IP, "netns", "exec", rcv, "ss", "-Htln", f"sport = :{NET_PORT}"],
                                     capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10).stdout
                return bool(out.strip())

            if not helpers.wait_until(listening, 10):
                raise RuntimeError("iperf3 server did not listen")
            client = _popen([IP, "netns", "exec", snd, "/usr/bin/iperf3", "-c", NET_RECEIVER_IP, "-p", str(NET_PORT),
                             "-t", str(int(life_s)), "-b", "1G"], user=None)
            act.procs.append(client)
            peer = f"{NET_RECEIVER_IP}:{NET_PORT}"
            act.pid = client.pid
            act.truths = [Truth("retransmits on one flow", ("network.retransmits",), frozenset(), peer=peer,
                                interface=NET_SENDER_DEV)]
            act.detail = f"iperf3 pid {client.pid} -> {peer} in netns {snd}, {percent}% dropped at the receiver"

            def ground() -> str:
                def retrans() -> int:
                    out = subprocess.run([IP, "netns", "exec", snd, "cat", "/proc/net/snmp"], capture_output=True,
                                         text=True, timeout=10).stdout.splitlines()
                    tcp = [line.split() for line in out if line.startswith("Tcp:")]
                    return int(tcp[1][tcp[0].index("RetransSegs")])

                a = retrans()
                time.sleep(1.0)
                return f"netns {snd}: RetransSegs +{retrans() - a}/s"

            act.ground = ground
            act.probes = [("perf_net_health", {"include_tcp_details": True})]
            yield act
    finally:
        for ns in made:
            subprocess.run([IP, "netns", "del", ns], capture_output=True, stdin=subprocess.DEVNULL, timeout=30)


@contextmanager
def cpu_saturation(env: Env, life_s: float) -> Iterator[Active]:
    """stress-ng --cpu 4 on 2 CPUs (as another user): the machine's CPUs saturated."""
    proc = _popen(["/usr/bin/stress-ng", "--cpu", "4", "--timeout", f"{int(life_s)}s", "--quiet"], user=env.user,
                  cwd=env.scratch)
    pgid = proc.pid
    act = Active("cpu_saturation", [Truth("CPU saturation", ("cpu.saturation",), frozenset({pgid}),
                                          pid_source=lambda: group_pids(pgid), system_ok=True)],
                 pid=None, procs=[proc], detail=f"stress-ng --cpu 4 (group {pgid}) as {env.user.name}",
                 ground=lambda: f"PSI cpu {Path('/proc/pressure/cpu').read_text().split()[1]}, loadavg "
                                f"{Path('/proc/loadavg').read_text().split()[0]}",
                 probes=[("perf_use_check", {"window_s": 3})])
    with _running(act):
        yield act


EXEC_RATE = 150.0


@contextmanager
def exec_storm(env: Env, life_s: float) -> Iterator[Active]:
    """A loop spawning /bin/true EXEC_RATE times a second (each waited for)."""
    script = env.script("exec_storm.py", EXEC_STORM)
    proc = _popen([PYTHON, script, str(life_s), str(EXEC_RATE)], user=env.user, stdout=subprocess.PIPE)
    pid = proc.pid
    act = Active("exec_storm", [Truth("exec storm", ("exec.storm",), frozenset({pid}))], pid=pid, procs=[proc],
                 detail=f"python pid {pid} spawns /bin/true up to {EXEC_RATE:g}/s")

    def ground() -> str:
        a = int(Path("/proc/stat").read_text().split("processes ")[1].split()[0])
        time.sleep(1.0)
        b = int(Path("/proc/stat").read_text().split("processes ")[1].split()[0])
        return f"forks +{b - a}/s machine-wide; driver pid {pid}"

    act.ground = ground
    act.probes = [("perf_exec_trace", {"duration_s": 2})]
    with _running(act):
        _await_ready(proc, "the exec storm")
        yield act


FaultFn = Callable[[Env, float], Any]


def combo(*parts: FaultFn) -> FaultFn:
    """Two faults at once: the truths of both."""

    @contextmanager
    def both(env: Env, life_s: float) -> Iterator[Active]:
        with ExitStack() as stack:
            acts = [stack.enter_context(p(env, life_s)) for p in parts]
            grounds = [a.ground for a in acts if a.ground is not None]
            yield Active("+".join(a.name for a in acts), [t for a in acts for t in a.truths],
                         pid=None, netns=next((a.netns for a in acts if a.netns), None),
                         detail="; ".join(a.detail for a in acts),
                         ground=lambda: " | ".join(g() for g in grounds),
                         probes=[p for a in acts for p in a.probes],
                         procs=[p for a in acts for p in a.procs])

    return both


def free_port53(addr: str) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((addr, 53))
        return True
    except OSError:
        return False
    finally:
        s.close()
