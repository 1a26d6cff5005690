"""Known-answer exec workloads for the perf_exec_trace tests.

- pmcp-execw (C, compiled here): sleeps MS milliseconds and exits with
  EXIT_CODE; its second argument is a marker the test looks for.
- the driver (Python, run as a test user via setpriv so its pid is the
  parent's pid): waits for a go file, then spawns `pmcp-execw MS MARKER` N times
  (BATCH at a time, side by side) and FAILS execs of a path that does not exist
  (posix_spawn, no PATH search: exactly one execve each), then exits 0. It ends
  on its own after MAX_WAIT_S if never told to go.

The trace is started first; the test waits until the broker's tracer has
attached (bpftool perf list shows its tracepoints, owned by a descendant of the
broker) and only then creates the go file, so every execution falls inside it.
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

EXIT_CODE = 7
MAX_WAIT_S = 90
PYTHON = "/usr/bin/python3"
EXECW_COMM = "pmcp-execw"
BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"

EXECW_C = r"""
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv)
{
    long ms = argc > 1 ? atol(argv[1]) : 0;
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0)
        ;
    return 7;
}
"""

DRIVER = r"""
import os, sys, time
go, exe, n, batch, ms, marker, fails, max_wait = sys.argv[1:9]
n, batch, fails = int(n), int(batch), int(fails)
end = time.monotonic() + float(max_wait)
while not os.path.exists(go):
    if time.monotonic() > end:
        sys.exit(3)
    time.sleep(0.01)
done = 0
while done < n:
    kids = [os.posix_spawn(exe, [exe, ms, marker, str(done + i)], {}) for i in range(min(batch, n - done))]
    for k in kids:
        os.waitpid(k, 0)
    done += len(kids)
missing = f"/nonexistent-pmcp/{marker}-missing"
for i in range(fails):
    try:
        os.posix_spawn(missing, [missing, marker], {})
    except FileNotFoundError:
        pass
    else:
        sys.exit(4)
print("done", flush=True)
"""


def build_execw(directory: Path) -> Path:
    src = directory / "pmcp_execw.c"
    exe = directory / EXECW_COMM
    src.write_text(EXECW_C)
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler (build-essential)"
    subprocess.run([cc, "-O1", "-o", os.fspath(exe), os.fspath(src)], check=True, capture_output=True)
    exe.chmod(0o755)
    driver = directory / "exec_driver.py"
    driver.write_text(DRIVER)
    driver.chmod(0o644)
    return exe


@dataclass
class Workload:
    proc: subprocess.Popen[bytes]
    go: Path
    marker: str
    n: int
    fails: int
    ms: int
    user: helpers.UnixUser

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self.go.touch()

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)


def new_marker(tag: str) -> str:
    return f"pmcp-exec-{tag}-{uuid.uuid4().hex[:10]}"


@contextmanager
def workload(directory: Path, exe: Path, user: helpers.UnixUser, *, n: int, ms: int, fails: int = 0,
             batch: int = 10, tag: str = "w") -> Iterator[Workload]:
    marker = new_marker(tag)
    go = directory / f"go-{marker}"
    argv = [PYTHON, os.fspath(directory / "exec_driver.py"), os.fspath(go), os.fspath(exe), str(n), str(batch),
            str(ms), marker, str(fails), str(MAX_WAIT_S)]
    proc = helpers.spawn_as(user, argv, stdout=subprocess.PIPE)
    try:
        yield Workload(proc, go, marker, n, fails, ms, user)
    finally:
        helpers.stop_process(proc)
        if proc.stdout:
            proc.stdout.close()
        go.unlink(missing_ok=True)


# Tracepoints each rung's tracer attaches; the trace is ready when all are attached.
LIBBPF_TRACEPOINTS = frozenset({"sys_enter_execve", "sys_exit_execve", "sched_process_exit"})
EXECSNOOP_TRACEPOINTS = frozenset({"sys_enter_execve", "sys_exit_execve"})
BPFTRACE_TRACEPOINTS = frozenset({"sys_enter_execve", "sys_exit_execve", "sched_process_exec",
                                  "sched_process_fork", "sched_process_exit"})


async def attached_tracepoints(broker_pid: int) -> set[str]:
    res = await trio.run_process([BPFTOOL, "-j", "perf", "list"], capture_stdout=True, capture_stderr=True,
                                 check=False)
    if res.returncode != 0:
        return set()
    mine = set(helpers.descendants(broker_pid))
    return {e.get("tracepoint", "") for e in json.loads(res.stdout or b"[]") if e.get("pid") in mine}


async def wait_attached(broker_pid: int, wanted: frozenset[str], timeout: float = 60.0) -> float:
    """Seconds until every wanted tracepoint has a program of this broker's job on it."""
    t0 = trio.current_time()
    with trio.fail_after(timeout):
        while not wanted <= await attached_tracepoints(broker_pid):
            await trio.sleep(0.1)
    return trio.current_time() - t0
