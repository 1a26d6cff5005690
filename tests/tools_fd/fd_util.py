"""Processes for the perf_fd_trace tests, each started as a test user by this
module and stopped by its PID; each also ends on its own after MAX_LIFE_S.

- leaker: opens a file every 1/rate s and never closes it (the fd leak recipe
  of TESTING.md), in a directory the test made;
- steady: holds a fixed set of fds (one file name is not UTF-8) and churns
  one open/close pair per tick, the quiet control.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import helpers

MAX_LIFE_S = 120
PYTHON = "/usr/bin/python3"

LEAKER = """
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

STEADY = r"""
import os, sys, time
directory, life = sys.argv[1], float(sys.argv[2])
held = [open(os.path.join(directory, f"held-{i}"), "w") for i in range(9)]
held.append(open(os.path.join(os.fsencode(directory), b"held-\xff\xfe"), "w"))  # a name that is not UTF-8
print("ready", flush=True)
end = time.monotonic() + life
while time.monotonic() < end:
    with open(os.path.join(directory, "churn"), "w") as f:
        f.write("x")
    time.sleep(0.05)
"""


def workdir(shared_tmp: Path) -> Path:
    d = shared_tmp / "fds"
    d.mkdir(exist_ok=True)
    d.chmod(0o1777)
    return d


def _script(shared_tmp: Path, name: str, text: str) -> Path:
    path = shared_tmp / name
    path.write_text(text)
    path.chmod(0o644)
    return path


@contextmanager
def _started(user: str | helpers.UnixUser, argv: list[Any]) -> Iterator[subprocess.Popen[bytes]]:
    proc = helpers.spawn_as(user, argv, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield proc
    finally:
        helpers.stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def leaker(shared_tmp: Path, user: helpers.UnixUser, rate_per_s: float = 10.0
           ) -> Iterator[subprocess.Popen[bytes]]:
    d = workdir(shared_tmp) / f"leak-{user.name}"
    d.mkdir(exist_ok=True)
    d.chmod(0o1777)
    script = _script(shared_tmp, "leaker.py", LEAKER)
    with _started(user, [PYTHON, script, d, str(rate_per_s), str(MAX_LIFE_S)]) as proc:
        yield proc


@contextmanager
def steady(shared_tmp: Path, user: helpers.UnixUser) -> Iterator[subprocess.Popen[bytes]]:
    d = workdir(shared_tmp) / f"steady-{user.name}"
    d.mkdir(exist_ok=True)
    d.chmod(0o1777)
    script = _script(shared_tmp, "steady.py", STEADY)
    with _started(user, [PYTHON, script, d, str(MAX_LIFE_S)]) as proc:
        yield proc
