"""Known-answer file workloads for the perf_file_trace tests.

The driver (Python, run as a test user via setpriv so its pid is the workload's
pid) prepares, then waits for a go file, then does exactly:

- opens: N opens (open + close) of DIR/M-present, F failed opens of DIR/M-missing
  (ENOENT), then R reads of 100 bytes of the present file (fast: never slow);
- slow ops: fifo A (opened by the driver BEFORE go, so the trace cannot name it and the
  tool reads /proc/PID/fd after the trace) and fifo B (opened after go): a forked writer
  writes K lines to each, GAP_MS apart; the driver reads each line with one read();
  every read waits ~GAP_MS;
- lifecycle: L files created (the first with O_EXCL), kept AGE_MS, then unlinked;

then prints "done" and stays alive (its fd on fifo A open) until the stop file
appears or MAX_WAIT_S passes. Paths stay under 63 bytes (bpftrace's string cap).

The test starts the tool first and lets the workload go only once the tracer's
programs are attached (bpftool perf list shows them, owned by the broker's job).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

import helpers

PYTHON = "/usr/bin/python3"
MAX_WAIT_S = 90
BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"

DRIVER = r"""
import os, sys, time
d, m, n, fails, reads, k, gap_ms, lives, age_ms, max_wait = sys.argv[1:11]
n, fails, reads, k, lives = int(n), int(fails), int(reads), int(k), int(lives)
gap, age = int(gap_ms) / 1000.0, int(age_ms) / 1000.0
go, stop = f"{d}/{m}-go", f"{d}/{m}-stop"
present, missing = f"{d}/{m}-present", f"{d}/{m}-missing"
fa, fb = f"{d}/{m}-fifoA", f"{d}/{m}-fifoB"
with open(present, "wb") as f:
    f.write(b"x" * 4096)
for p in (fa, fb):
    if k:
        os.mkfifo(p, 0o600)

def writer(path, sig):
    # opens (blocks until the reader opens), waits for its signal, then a line every gap
    w = os.open(path, os.O_WRONLY)
    while not os.path.exists(sig):
        time.sleep(0.002)
    for i in range(k):
        time.sleep(gap)
        os.write(w, b"line %d\n" % i)
    os.close(w)
    os._exit(0)

kids = []
if k:
    for p in (fa, fb):
        pid = os.fork()
        if pid == 0:
            writer(p, p + "-sig")
        kids.append(pid)
    ra = os.open(fa, os.O_RDONLY)  # before go: the trace does not see this open
end = time.monotonic() + float(max_wait)
while not os.path.exists(go):
    if time.monotonic() > end:
        sys.exit(3)
    time.sleep(0.01)
for i in range(n):
    os.close(os.open(present, os.O_RDONLY))
for i in range(fails):
    try:
        os.open(missing, os.O_RDONLY)
    except FileNotFoundError:
        pass
    else:
        sys.exit(4)
fd = os.open(present, os.O_RDONLY)
for i in range(reads):
    os.pread(fd, 100, 0)
os.close(fd)
if k:
    rb = os.open(fb, os.O_RDONLY)  # after go: the trace names it
    for r, p in ((ra, fa), (rb, fb)):
        open(p + "-sig", "w").close()
        for i in range(k):
            assert os.read(r, 100)
    for pid in kids:
        os.waitpid(pid, 0)
made = []
for i in range(lives):
    p = f"{d}/{m}-tmp{i}"
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if i == 0 else os.O_TRUNC)
    os.close(os.open(p, flags, 0o600))
    made.append(p)
time.sleep(age)
for p in made:
    os.unlink(p)
print("done", flush=True)
while not os.path.exists(stop) and time.monotonic() < end:
    time.sleep(0.05)
"""


@dataclass
class Workload:
    proc: subprocess.Popen[bytes]
    directory: Path
    marker: str
    n: int
    fails: int
    reads: int
    k: int
    gap_ms: int
    lives: int
    age_ms: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def path(self, suffix: str) -> str:
        return f"{self.directory}/{self.marker}-{suffix}"

    def start(self) -> None:
        Path(self.path("go")).touch()

    def wait_done(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"done", (line, self.proc.poll())

    def stop(self) -> int:
        Path(self.path("stop")).touch()
        return self.proc.wait(10)


def make_dir() -> Path:
    d = helpers.make_shared_tmpdir("pmcp-f-")
    d.chmod(0o1777)
    return d


@contextmanager
def workload(directory: Path, user: helpers.UnixUser, *, n: int = 0, fails: int = 0, reads: int = 0, k: int = 0,
             gap_ms: int = 200, lives: int = 0, age_ms: int = 300) -> Iterator[Workload]:
    marker = f"m{uuid.uuid4().hex[:10]}"
    driver = directory / "file_driver.py"
    if not driver.exists():
        driver.write_text(DRIVER)
        driver.chmod(0o644)
    argv = [PYTHON, os.fspath(driver), os.fspath(directory), marker, str(n), str(fails), str(reads), str(k),
            str(gap_ms), str(lives), str(age_ms), str(MAX_WAIT_S)]
    proc = helpers.spawn_as(user, argv, stdout=subprocess.PIPE)
    try:
        yield Workload(proc, directory, marker, n, fails, reads, k, gap_ms, lives, age_ms)
    finally:
        helpers.stop_process(proc)
        if proc.stdout:
            proc.stdout.close()


# Tracepoints each tracer attaches; the trace is ready when all are attached.
OPENSNOOP_TP = frozenset({"sys_enter_openat", "sys_exit_openat"})
OPENS_BT_TP = frozenset({"sys_enter_openat", "sys_exit_openat", "sys_enter_creat", "sys_exit_creat"})
SLOW_BT_TP = frozenset({"sys_enter_read", "sys_exit_read", "sys_enter_openat", "sys_exit_openat", "sys_enter_close"})
LIFE_BT_TP = frozenset({"sys_enter_unlink", "sys_exit_unlink", "sys_enter_unlinkat", "sys_exit_unlinkat"})


async def attached_tracepoints(broker_pid: int) -> dict[str, int]:
    """tracepoint -> how many programs of this broker's jobs sit on it."""
    res = await trio.run_process([BPFTOOL, "-j", "perf", "list"], capture_stdout=True, capture_stderr=True,
                                 check=False)
    if res.returncode != 0:
        return {}
    mine = set(helpers.descendants(broker_pid))
    out: dict[str, int] = {}
    for e in json.loads(res.stdout or b"[]"):
        if e.get("pid") in mine and e.get("tracepoint"):
            out[e["tracepoint"]] = out.get(e["tracepoint"], 0) + 1
    return out


async def wait_attached(broker_pid: int, wanted: frozenset[str], timeout: float = 90.0, *,
                        sys_exit_openat: int = 1) -> float:
    """Seconds until every wanted tracepoint has a program of this broker's job on it
    (sys_exit_openat: how many tracers must sit there, for mode all)."""
    t0 = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            got = await attached_tracepoints(broker_pid)
            if all(t in got for t in wanted) and got.get("sys_exit_openat", 0) >= sys_exit_openat:
                break
            await trio.sleep(0.1)
    return trio.current_time() - t0
