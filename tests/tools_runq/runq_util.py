"""Known-answer run-queue workloads for perf_runq_latency (tests and bench).

One small C program, `rq-load`, compiled once per module:

    rq-load spin N SECONDS        N busy threads (rq-spin-K) for at most SECONDS
    rq-load nap N SECONDS USEC    N threads sleeping USEC between tiny bits of work:
                                  many wakeups, each a short run-queue wait
    rq-load pingpong SECONDS      two threads passing a byte through two pipes; prints
                                  "tick MONOTONIC_S ROUND_TRIPS" every 0.1 s and
                                  "round_trips N seconds S" at the end (the bench's ops)

The kernel's own account to compare with: /proc/PID/task/*/schedstat, field 2 =
ns waited on a run queue (run_delay), field 3 = timeslices (pcount, one per
switch-in). Δwait / Δslices over a window is the mean run-queue wait.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RQ_LOAD_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double seconds;
static long usec;
static volatile unsigned long sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *spin(void *arg) {
    double end = now() + seconds;
    unsigned long x = 0;
    while (now() < end)
        for (int i = 0; i < 20000; i++) x++;
    sink = x;
    return NULL;
}

static void *nap(void *arg) {
    double end = now() + seconds;
    unsigned long x = 0;
    while (now() < end) {
        for (int i = 0; i < 2000; i++) x++;
        usleep(usec);
    }
    sink = x;
    return NULL;
}

static int ab[2], ba[2];
static volatile int done;
static unsigned long trips;

static void *echo(void *arg) {
    char c;
    while (read(ab[0], &c, 1) == 1) {
        if (write(ba[1], &c, 1) != 1) break;
    }
    return NULL;
}

static int pingpong(void) {
    pthread_t t;
    char c = 'x';
    if (pipe(ab) || pipe(ba)) return 1;
    pthread_create(&t, NULL, echo, NULL);
    pthread_setname_np(t, "rq-pong");
    double start = now(), end = start + seconds, tick = start;
    printf("tick %.6f 0\n", start);
    while (now() < end) {
        for (int i = 0; i < 50; i++) {
            if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1) return 1;
            trips++;
        }
        double t = now();
        if (t - tick >= 0.1) {
            printf("tick %.6f %lu\n", t, trips);
            fflush(stdout);
            tick = t;
        }
    }
    double took = now() - start;
    printf("round_trips %lu seconds %.6f\n", trips, took);
    fflush(stdout);
    close(ab[1]);
    pthread_join(t, NULL);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    seconds = atof(argv[argc > 3 ? 3 : 2]);
    if (strcmp(argv[1], "pingpong") == 0) return pingpong();
    int n = atoi(argv[2]);
    if (n < 1 || n > 64) return 2;
    int sleeping = strcmp(argv[1], "nap") == 0;
    if (sleeping) usec = argc > 4 ? atol(argv[4]) : 500;
    pthread_t t[64];
    for (int i = 0; i < n; i++) {
        char name[16];
        pthread_create(&t[i], NULL, sleeping ? nap : spin, NULL);
        snprintf(name, sizeof name, sleeping ? "rq-nap-%d" : "rq-spin-%d", i);
        pthread_setname_np(t[i], name);
    }
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    return 0;
}
"""


def build_rq_load(directory: Path) -> Path:
    src = directory / "rq_load.c"
    exe = directory / "rq-load"
    src.write_text(RQ_LOAD_C)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (build-essential)")
    subprocess.run([cc, "-O1", "-g", "-pthread", "-fno-omit-frame-pointer", "-o", os.fspath(exe), os.fspath(src)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    exe.chmod(0o755)
    return exe


@dataclass(frozen=True)
class Schedstat:
    wait_ns: int
    slices: int
    threads: int


def schedstat(pid: int) -> Schedstat:
    """Sum of /proc/PID/task/*/schedstat: (run-queue wait ns, timeslices)."""
    wait = slices = threads = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except FileNotFoundError:
            continue
        wait += int(fields[1])
        slices += int(fields[2])
        threads += 1
    return Schedstat(wait, slices, threads)


@dataclass(frozen=True)
class Window:
    """What the kernel accounted for a process between two schedstat reads."""

    wait_ns: int
    slices: int

    @property
    def mean_us(self) -> float:
        return self.wait_ns / self.slices / 1000.0 if self.slices else 0.0


def window(before: Schedstat, after: Schedstat) -> Window:
    return Window(after.wait_ns - before.wait_ns, after.slices - before.slices)


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def wait_threads(pid: int, n: int, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while thread_count(pid) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} did not start {n - 1} threads")
        time.sleep(0.02)


@contextmanager
def workload(argv: list[str], threads: int, spawn=None) -> Iterator[subprocess.Popen[bytes]]:
    """Start rq-load (via spawn(argv) when given, e.g. as a test user), wait for its
    threads, and kill it by its PID afterwards."""
    if spawn is None:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd="/",
                                start_new_session=True)
    else:
        proc = spawn(argv)
    try:
        wait_threads(proc.pid, threads)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
