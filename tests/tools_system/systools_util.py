"""Helpers for the system-tool tests: loads started and stopped by PID, a loop
device, a v1 memory cgroup, and reading results.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

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


V1_ROOT = Path("/sys/fs/cgroup")


@contextmanager
def v1_cgroup(controller: str, settings: dict[str, str]) -> Iterator[Path]:
    """A v1 cgroup of one controller with its settings written, removed
    afterwards (waiting up to 10 s for its tasks to be gone)."""
    base = V1_ROOT / controller
    if not (base / "cgroup.procs").exists():
        pytest.skip(f"no v1 {controller} controller at {base} (TESTING.md: this machine has v1)")
    path = base / f"pmcp-test-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    try:
        for name, value in settings.items():
            (path / name).write_text(value)
        yield path
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.2)


def memory_cgroup(limit_bytes: int):  # type: ignore[no-untyped-def]
    """A v1 memory cgroup with a limit."""
    return v1_cgroup("memory", {"memory.limit_in_bytes": str(limit_bytes)})


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
