"""Helpers for the system-tool tests: loads started and stopped by PID, a loop
device, a cgroup with limits (v1 or v2, as the host has the controllers), and
reading results.

Every load runs in its own session (process group) that this module created,
so stopping it kills exactly that group (stress-ng and fio fork workers) and
nothing else. Every load also has its own time limit, so a test killed
mid-way does not leave it running for long.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import helpers
from helpers import envelope, ok_data  # noqa: F401  (re-exported)


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed (TESTING.md: apt-get install sysstat fio stress-ng iperf3)")
    return path




def stop_group(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM then SIGKILL to the process group this test created for proc."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    else:  # the leader exited; its workers may not have
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def load(argv: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[Any]]:
    """Run a load generator in its own session for the duration of the block."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, start_new_session=True, cwd="/", **kwargs)
    try:
        yield proc
    finally:
        stop_group(proc)


@contextmanager
def loop_device(size_mib: int = 256) -> Iterator[str]:
    """A loop device over a sparse file in a temp dir (never the machine's
    real disk), detached and removed afterwards."""
    need("losetup")
    workdir = tempfile.mkdtemp(prefix="pmcp-systools-")
    image = os.path.join(workdir, "disk.img")
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    device = subprocess.run(["losetup", "--find", "--show", image], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class LimitedCgroup:
    """A test cgroup with limits, in whichever hierarchy this host gives each controller."""

    name: str
    dirs: dict[str, Path]  # "memory" / "cpu" / "cpuacct" (v1) or "v2" -> its directory
    version: str  # where the limits are: "v1" or "v2"

    @property
    def procs(self) -> list[Path]:
        """The cgroup.procs files a process writes its pid to, to be in all of it."""
        return [d / "cgroup.procs" for d in self.dirs.values()]

    @property
    def memory_dir(self) -> Path:
        return self.dirs.get("memory") or self.dirs["v2"]

    @property
    def use_row(self) -> str:
        """perf_use_check's row for this cgroup when the server runs in it: named by the
        v1 memory path where memory is on v1, else by the v2 path."""
        return f"cgroup memory:/{self.name}" if "memory" in self.dirs else f"cgroup /{self.name}"

    def limit_hits(self) -> int:
        """How often memory usage hit the limit: v1 memory.failcnt, v2 memory.events max."""
        if "memory" in self.dirs:
            return int((self.dirs["memory"] / "memory.failcnt").read_text())
        events = dict(line.split() for line in (self.dirs["v2"] / "memory.events").read_text().splitlines())
        return int(events["max"])


@contextmanager
def limited_cgroup(*, memory_bytes: int | None = None, cpu_quota_cores: float | None = None,
                   period_us: int = 100_000) -> Iterator[LimitedCgroup]:
    """A cgroup with a memory limit and/or a CPU quota: on v1 where the host binds the
    controller to v1 (memory.limit_in_bytes, cpu.cfs_quota_us, with a cpuacct cgroup for
    the usage), else on cgroup2 (memory.max, cpu.max, the controllers enabled in the root's
    subtree_control). The test says which controllers it needs with the cgroup_any marker,
    which skips it (with the reason) where neither hierarchy has them. Removed afterwards,
    waiting up to 10 s for its tasks to be gone."""
    host = helpers.cgroup_host()
    wanted = [c for c, v in (("memory", memory_bytes), ("cpu", cpu_quota_cores)) if v is not None]
    where = {c: host.hierarchy_of(c) for c in wanted}
    if None in where.values():
        raise RuntimeError(f"mark the test cgroup_any({', '.join(wanted)}): {host.describe()}")
    on_v1 = [c for c in wanted if where[c] == "v1"]
    on_v2 = [c for c in wanted if where[c] == "v2"]
    if "cpu" in on_v1 and "cpuacct" in host.v1 and host.v1["cpuacct"] != host.v1["cpu"]:
        on_v1.append("cpuacct")
    name = f"pmcp-test-{os.getpid()}-{time.monotonic_ns()}"
    cg = LimitedCgroup(name=name, dirs={}, version="v2" if on_v2 and not on_v1 else "v1")
    try:
        for c in on_v1:
            d = Path(host.v1[c]) / name
            d.mkdir()
            cg.dirs[c] = d
        if on_v2:
            assert host.v2_mount is not None
            root = Path(host.v2_mount)
            (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in on_v2))
            cg.dirs["v2"] = root / name
            cg.dirs["v2"].mkdir()
        if memory_bytes is not None:
            if where["memory"] == "v1":
                (cg.dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
            else:
                (cg.dirs["v2"] / "memory.max").write_text(str(memory_bytes))
        if cpu_quota_cores is not None:
            quota = int(cpu_quota_cores * period_us)
            if where["cpu"] == "v1":
                (cg.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(period_us))
                (cg.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (cg.dirs["v2"] / "cpu.max").write_text(f"{quota} {period_us}")
        yield cg
    finally:
        for d in cg.dirs.values():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.2)


def memory_cgroup(limit_bytes: int) -> AbstractContextManager[LimitedCgroup]:
    """A cgroup with a memory limit (v1 or v2, as the host has memory)."""
    return limited_cgroup(memory_bytes=limit_bytes)


def read_stat_cpu() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def cpu_busy_between(a: list[int], b: list[int]) -> float:
    d = [y - x for x, y in zip(a, b, strict=False)]
    # user nice system idle iowait irq softirq steal (guest is inside user)
    total = sum(d[:8])
    return 100.0 * (total - d[3] - d[4]) / total if total else 0.0


def psi_total(resource: str, kind: str = "some") -> int:
    for line in Path(f"/proc/pressure/{resource}").read_text().splitlines():
        if line.startswith(kind):
            return int(line.rsplit("total=", 1)[1])
    return 0


def finding(data: dict[str, Any], resource: str) -> list[dict[str, Any]]:
    return [f for f in data["findings"] if f["resource"] == resource and f["severity"] in ("warning", "critical")]


def row(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in data["table"] if r["name"] == name)


def checks(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The checks a row lists (those not ok, or every one with include_ok=true)."""
    return {c["id"]: c for kind in ("utilisation", "saturation", "errors") for c in r.get(kind, [])}
