"""cgroup helpers for the perf_cgroup_summary tests (root), and a fake cgroup v2
tree for the v2 controller files this host cannot give.

Real cgroups: `cgroup(*controllers)` makes a cgroup named pmcp-test-<pid>-<random>
at the root of whichever hierarchy holds each controller on this host
(helpers.cgroup_host(): v1 where the controller is mounted on v1, else the
cgroup2 mount with the controller enabled in the root's subtree_control), and
`cgroup(v2=True)` also (or only) makes it in the cgroup2 hierarchy for the
v2 core files (cgroup.procs, cpu.stat usage, PSI), which every cgroup2 mount
has. Processes are started straight into every directory of the cgroup (the
child joins before it execs); teardown kills the processes it started by PID,
then removes the directories (rmdir succeeds once no task is left).

v2 controller files (FAKE): on this project's hybrid machines cpu, memory, io
and pids are bound to v1, so the v2 files of those controllers cannot exist;
FakeV2 writes a directory tree in the files' documented formats
(Documentation/admin-guide/cgroup-v2.rst, the procfs fixtures' cgv2_* files),
plus a mountinfo and a /proc/PID/cgroup pointing at it; the collector is
pointed at that tree by its test-only arguments. On a v2-only host the same
tests' real variants run through `cgroup(...)`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROCFS_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "procfs"


@dataclass
class V1Cgroup:
    """A test cgroup: dirs maps each v1 controller it has, and "v2" for its cgroup2 directory."""

    name: str  # the path from the hierarchy root, without the leading /
    dirs: dict[str, Path]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return "/" + self.name

    def write(self, controller: str, file: str, value: str) -> None:
        (self.dirs[controller] / file).write_text(value)

    def read(self, controller: str, file: str) -> str:
        return (self.dirs[controller] / file).read_text()

    def stat(self, controller: str, file: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.read(controller, file).splitlines():
            key, _, value = line.partition(" ")
            out[key] = int(value)
        return out

    def start(self, user: str | helpers.UnixUser, argv: Sequence[str | os.PathLike[str]],
              **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start argv as user, inside every controller of this cgroup from its first instruction."""
        procs_files = [str(d / "cgroup.procs") for d in self.dirs.values()]

        def join() -> None:
            me = str(os.getpid())
            for f in procs_files:
                with open(f, "w") as fh:
                    fh.write(me)

        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(helpers.as_user_argv(user, argv), preexec_fn=join, start_new_session=True,
                                env=helpers.user_env(user), cwd="/", **kwargs)
        self.procs.append(proc)
        return proc

    # hierarchy-neutral settings and counters (v1 files where the controller is on v1, else v2)

    def set_cpu_quota(self, quota_us: int, period_us: int = 100000) -> None:
        if "cpu" in self.dirs:
            self.write("cpu", "cpu.cfs_period_us", str(period_us))
            self.write("cpu", "cpu.cfs_quota_us", str(quota_us))
        else:
            self.write("v2", "cpu.max", f"{quota_us} {period_us}")

    def set_memory_limit(self, limit_bytes: int) -> None:
        if "memory" in self.dirs:
            self.write("memory", "memory.limit_in_bytes", str(limit_bytes))
        else:
            self.write("v2", "memory.max", str(limit_bytes))

    def throttling(self) -> tuple[int, float]:
        """(nr_throttled, seconds throttled) since the cgroup was made."""
        if "cpu" in self.dirs:
            stat = self.stat("cpu", "cpu.stat")
            return stat["nr_throttled"], stat["throttled_time"] / 1e9
        stat = self.stat("v2", "cpu.stat")
        return stat["nr_throttled"], stat["throttled_usec"] / 1e6

    def memory_usage(self) -> int:
        if "memory" in self.dirs:
            return int(self.read("memory", "memory.usage_in_bytes"))
        return int(self.read("v2", "memory.current"))

    def limit_hits(self) -> int:
        """Times the memory limit was hit: v1 memory.failcnt, v2 memory.events max."""
        if "memory" in self.dirs:
            return int(self.read("memory", "memory.failcnt"))
        return self.stat("v2", "memory.events")["max"]

    def oom_kills(self) -> int:
        if "memory" in self.dirs:
            return self.stat("memory", "memory.oom_control")["oom_kill"]
        return self.stat("v2", "memory.events")["oom_kill"]

    def no_swap(self) -> None:
        """No swap for this cgroup, so a hog meets the OOM killer even while another test
        has swap on: v1 memory.swappiness 0 (the cgroup's own reclaim scans page cache
        only; a memsw limit would be hit first and count in memsw.failcnt instead);
        v2 memory.swap.max 0."""
        if "memory" in self.dirs:
            self.write("memory", "memory.swappiness", "0")
        elif (self.dirs["v2"] / "memory.swap.max").exists():
            self.write("v2", "memory.swap.max", "0")

    def directories(self) -> set[str]:
        return {str(d) for d in self.dirs.values()}

    def hierarchy(self, controller: str) -> str:
        return "v1" if controller in self.dirs else "v2"

    def tasks(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs.values():
            try:
                found |= {int(t) for t in (d / "cgroup.procs").read_text().split()}
            except FileNotFoundError:
                pass
        return sorted(found)


def _enable_v2(mount: Path, controllers: list[str]) -> None:
    """Enable these controllers for the v2 root's children (they are offered there)."""
    enabled = set((mount / "cgroup.subtree_control").read_text().split())
    for c in controllers:
        if c not in enabled:
            (mount / "cgroup.subtree_control").write_text(f"+{c}")


@contextmanager
def v1_cgroup(*controllers: str) -> Iterator[V1Cgroup]:
    """A cgroup in these v1 controllers' hierarchies (a test marked cgroup_v1(*controllers))."""
    with cgroup(*controllers, prefer="v1") as cg:
        yield cg


@contextmanager
def cgroup(*controllers: str, v2: bool = False, prefer: str = "host") -> Iterator[V1Cgroup]:
    """A cgroup with these controllers, each in the hierarchy this host has it in
    (v1 cpu brings v1 cpuacct along, for the usage). v2=True: also in the cgroup2
    hierarchy (its core files) even when every controller is on v1."""
    host = helpers.cgroup_host()
    name = f"pmcp-test-{os.getpid()}-{secrets.token_hex(3)}"
    cg = V1Cgroup(name=name, dirs={})
    where = {c: ("v1" if prefer == "v1" else host.hierarchy_of(c)) for c in controllers}
    missing = [c for c, h in where.items() if h is None]
    if missing:
        raise RuntimeError(f"no {', '.join(missing)} controller here: {host.describe()}")
    v1 = [c for c, h in where.items() if h == "v1"]
    if "cpu" in v1 and "cpuacct" not in v1 and "cpuacct" in host.v1:
        v1.append("cpuacct")
    on_v2 = [c for c, h in where.items() if h == "v2"]
    try:
        for c in v1:
            d = Path(host.v1[c]) / name
            d.mkdir()
            cg.dirs[c] = d
        if on_v2 or v2:
            assert host.v2_mount is not None, host.describe()
            _enable_v2(Path(host.v2_mount), on_v2)
            d = Path(host.v2_mount) / name
            d.mkdir()
            cg.dirs["v2"] = d
        yield cg
    finally:
        _remove(cg)


@contextmanager
def sub(parent: V1Cgroup, name: str) -> Iterator[V1Cgroup]:
    """A child cgroup of a test cgroup, in each of its hierarchies (v2: the parent's
    controllers are enabled for its children, so the parent must hold no process)."""
    cg = V1Cgroup(name=f"{parent.name}/{name}", dirs={})
    try:
        for key, d in parent.dirs.items():
            if key == "v2":
                _enable_v2(d, (d / "cgroup.controllers").read_text().split())
            (d / name).mkdir()
            cg.dirs[key] = d / name
        yield cg
    finally:
        _remove(cg)


def _remove(cg: V1Cgroup) -> None:
    for proc in cg.procs:
        helpers.stop_process(proc)
    for d in cg.dirs.values():
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)  # a killed task is still leaving the cgroup
        else:
            raise RuntimeError(f"could not remove {d}: tasks {cg.tasks()}")


# ---------------------------------------------------------------- fake v2

V2_CGROUP = "/app.slice/web.service"


class FakeV2:
    """A FAKE cgroup2 tree (documented formats) under `base`, with the cpu,
    memory, io and pids controllers enabled for V2_CGROUP."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mount = base / "sys" / "fs" / "cgroup"
        self.cgroup = self.mount / V2_CGROUP.lstrip("/")
        self.proc = base / "proc"
        self.mountinfo = base / "mountinfo"
        self.pid = 4242
        self.cgroup.mkdir(parents=True)
        (self.proc / str(self.pid)).mkdir(parents=True)
        (self.proc / str(self.pid) / "cgroup").write_text(f"0::{V2_CGROUP}\n")
        self.mountinfo.write_text(
            "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n"
            f"30 22 0:26 / {self.mount} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
            "rw,nsdelegate,memory_recursiveprot\n"
        )
        fixture = {name: (PROCFS_FIXTURES / f"cgv2_{name}.txt").read_text() for name in (
            "cpu.pressure", "memory.stat", "io.pressure", "memory.pressure")}
        for name in ("cpu.pressure", "memory.pressure", "io.pressure"):
            (self.mount / name).write_text(fixture[name])  # the root has PSI too
        self.files: dict[str, str] = {
            "cgroup.controllers": "cpu io memory pids\n",
            "cpu.max": "20000 100000\n",
            "cpu.weight": "100\n",
            "memory.max": "536870912\n",
            "memory.high": "max\n",
            "memory.swap.current": "0\n",
            "memory.swap.max": "max\n",
            "memory.stat": fixture["memory.stat"],
            "pids.max": "100\n",
            "cpu.pressure": fixture["cpu.pressure"],
            "memory.pressure": fixture["memory.pressure"],
            "io.pressure": fixture["io.pressure"],
        }
        self.set_counters(usage_usec=5_000_000, nr_periods=1200, nr_throttled=340, throttled_usec=8_123_456,
                          current=268_435_456, events_max=1543, oom=12, oom_kill=3, pids=17, pids_events_max=0,
                          rbytes=90_430_464, wbytes=299_008_000)

    def set_counters(self, *, usage_usec: int, nr_periods: int, nr_throttled: int, throttled_usec: int,
                     current: int, events_max: int, oom: int, oom_kill: int, pids: int, pids_events_max: int,
                     rbytes: int, wbytes: int) -> None:
        self.files.update({
            "cpu.stat": (f"usage_usec {usage_usec}\nuser_usec {usage_usec * 4 // 5}\nsystem_usec {usage_usec // 5}\n"
                         f"nr_periods {nr_periods}\nnr_throttled {nr_throttled}\nthrottled_usec {throttled_usec}\n"
                         "nr_bursts 0\nburst_usec 0\n"),
            "memory.current": f"{current}\n",
            "memory.events": f"low 0\nhigh 0\nmax {events_max}\noom {oom}\noom_kill {oom_kill}\noom_group_kill 0\n",
            "pids.current": f"{pids}\n",
            "pids.events": f"max {pids_events_max}\n",
            "io.stat": f"8:0 rbytes={rbytes} wbytes={wbytes} rios=8950 wios=1252 dbytes=0 dios=0\n",
        })
        self.write()

    def write(self) -> None:
        for name, text in self.files.items():
            (self.cgroup / name).write_text(text)
