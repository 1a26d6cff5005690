"""Known-answer workloads for perf_syscall_count, and a way to fire them inside the trace.

The workload (tests/fixtures/syscount/workload.c, the program the fixtures were captured
with) blocks in read(0) until the test writes a byte, then makes EXACT numbers of calls:
N getppid, M openat of a missing path (ENOENT), K close(-1) (EBADF), S clock_nanosleep of
a given length, one write ("done"), and blocks in read again. Its process total in the
window is N+M+K+S+2 (the trigger read and the write; the last read never returns).

The test writes the trigger only once every tracing program of the job is attached to
raw_syscalls:sys_exit (bpftool perf lists the attachment, with the owning pid, which must
descend from the test's broker), and checks after "done" that they are all still attached:
so every call of the burst fell inside every program's window.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import helpers

SOURCE = Path(__file__).resolve().parent.parent / "fixtures" / "syscount" / "workload.c"
BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"


def build_workload(directory: Path, names: tuple[str, ...] = ("pmcp-sc-work",)) -> list[Path]:
    """Compile the workload once and copy it under each name (the names are the comms)."""
    exe = directory / names[0]
    subprocess.run(["cc", "-O1", "-g", "-o", os.fspath(exe), os.fspath(SOURCE)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    exe.chmod(0o755)
    out = [exe]
    for name in names[1:]:
        shutil.copy(exe, directory / name)
        (directory / name).chmod(0o755)
        out.append(directory / name)
    return out


@dataclass
class Workload:
    proc: subprocess.Popen[bytes]
    n: int
    enoent: int
    ebadf: int
    sleeps: int
    sleep_us: int
    comm: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def process_total(self) -> int:
        return self.n + self.enoent + self.ebadf + self.sleeps + 2

    def trigger(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"x")
        self.proc.stdin.flush()

    def wait_done(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == b"done\n", f"workload {self.pid} said {line!r} (exit {self.proc.poll()})"

    def stop(self) -> None:
        helpers.stop_process(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def start_workload(exe: Path, user: helpers.UnixUser, n: int, enoent: int = 0, ebadf: int = 0, sleeps: int = 0,
                   sleep_us: int = 10_000) -> Workload:
    argv = [exe, str(n), str(enoent), str(ebadf), str(sleeps), str(sleep_us)]
    proc = helpers.spawn_as(user, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    return Workload(proc, n, enoent, ebadf, sleeps, sleep_us, exe.name[:15])


def attached_tracers(broker_pid: int) -> set[int]:
    """Pids, descending from the broker, with a BPF program on raw_syscalls:sys_exit."""
    res = subprocess.run([BPFTOOL, "perf", "-j"], capture_output=True, text=True, timeout=10)
    if res.returncode != 0 or not res.stdout.strip():
        return set()
    mine = set(helpers.descendants(broker_pid))
    return {e["pid"] for e in json.loads(res.stdout)
            if e.get("tracepoint") == "sys_exit" and e.get("pid") in mine}


def wait_attached(broker_pid: int, count: int, timeout: float = 40.0) -> set[int]:
    found: set[int] = set()

    def enough() -> bool:
        nonlocal found
        found = attached_tracers(broker_pid)
        return len(found) >= count

    if not helpers.wait_until(enough, timeout, interval=0.05):
        raise AssertionError(f"{count} tracing programs did not attach within {timeout} s (saw {found})")
    return found


def tracer_processes(broker_pid: int) -> list[str]:
    """syscount / bpftrace processes still running under the broker."""
    out = []
    for pid in helpers.descendants(broker_pid):
        st = helpers.read_proc_stat(pid)
        if st is not None and st.comm in ("syscount", "bpftrace"):
            out.append(f"{pid} {st.comm}")
    return out
