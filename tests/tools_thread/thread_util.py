"""The known-answer workload of the thread tests: a C program with three named threads.

  pmcp-busy   spins all the time                       -> ~100% of one CPU
  pmcp-half   spins 50 ms, sleeps 50 ms (nanosleep)    -> ~50%, ~10 voluntary switches/s
  pmcp-sleep  sleeps in nanosleep(SLEEP_MS) loops      -> ~0%, off CPU the whole window

The half-busy thread measures its 50 ms of spinning on CLOCK_THREAD_CPUTIME_ID,
so time lost to preemption on a loaded machine does not shorten its work: it
still asks for 50 ms of CPU per period, and its share stays ~50% of the time it
is not waiting on the run queue. The main thread waits in pause().

Options: argv[1] = seconds before alarm() ends the process (a forgotten test
never outlives it by much), argv[2] = extra idle threads (for the many-threads
bench), argv[3] = 1 to give the busy thread a counter that the bench reads
through stdout (ops/s, see bench/bench_trace_thread.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import helpers

SLEEP_MS = 100
HALF_PERIOD_MS = 50

THREADS_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;
static volatile unsigned long ops;
static int report;

static double thread_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

__attribute__((noinline)) static void spin_a_little(void)
{
    for (int i = 0; i < 10000; i++)
        sink += i;
}

static void *busy(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "pmcp-busy");
    for (;;) {
        spin_a_little();
        ops++;
    }
    return NULL;
}

static void *half(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "pmcp-half");
    for (;;) {
        double until = thread_cpu_ms() + HALF_MS;
        while (thread_cpu_ms() < until)
            spin_a_little();
        sleep_ms(HALF_MS);
    }
    return NULL;
}

__attribute__((noinline)) void pmcp_sleeper_wait(void)
{
    sleep_ms(SLEEP_MS);
}

static void *sleeper(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "pmcp-sleep");
    for (;;)
        pmcp_sleeper_wait();
    return NULL;
}

static void *idle(void *arg)
{
    (void)arg;
    pause();
    return NULL;
}

int main(int argc, char **argv)
{
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 120);
    int extra = argc > 2 ? atoi(argv[2]) : 0;
    report = argc > 3 ? atoi(argv[3]) : 0;
    pthread_t t;
    pthread_attr_t small;
    pthread_attr_init(&small);
    pthread_attr_setstacksize(&small, 64 * 1024);
    pthread_create(&t, NULL, busy, NULL);
    pthread_create(&t, NULL, half, NULL);
    pthread_create(&t, NULL, sleeper, NULL);
    for (int i = 0; i < extra; i++)
        if (pthread_create(&t, &small, idle, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    printf("ready\n");
    fflush(stdout);
    if (!report) {
        for (;;)
            pause();
    }
    /* Report the busy thread's loop count every 100 ms: "monotonic_ns ops". */
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        printf("%lld %lu\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, ops);
        fflush(stdout);
        sleep_ms(100);
    }
}
"""

NAMES = ("pmcp-busy", "pmcp-half", "pmcp-sleep")


def build_threads_binary(directory: Path) -> Path:
    """Compile the workload (frame pointers, symbols) into ``directory`` (0755, any user can run it)."""
    src = directory / "pmcp_threads.c"
    exe = directory / "pmcp-threads"
    src.write_text(THREADS_C)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (build-essential)")
    subprocess.run([cc, "-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", f"-DHALF_MS={HALF_PERIOD_MS}",
                    f"-DSLEEP_MS={SLEEP_MS}", "-pthread", "-o", os.fspath(exe), os.fspath(src)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    exe.chmod(0o755)
    return exe


@pytest.fixture(scope="module")
def threads_exe() -> Iterator[Path]:
    directory = helpers.make_shared_tmpdir("pmcp-threads-")
    try:
        yield build_threads_binary(directory)
    finally:
        helpers.remove_tree(directory)


def thread_names(pid: int) -> list[str]:
    try:
        return sorted(Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


@contextmanager
def workload(exe: Path, user: helpers.UnixUser, life_s: int = 60) -> Iterator[subprocess.Popen[bytes]]:
    """The workload as `user` (setpriv execs: the pid is the workload's own), ready when its threads are named."""
    proc = helpers.spawn_as(user, [exe, str(life_s)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        assert helpers.wait_until(lambda: set(NAMES) <= set(thread_names(proc.pid)) or proc.poll() is not None, 10)
        assert proc.poll() is None and Path(f"/proc/{proc.pid}/comm").read_text().strip() == "pmcp-threads"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in data["threads"]}


def check_always_runnable(row: dict[str, Any]) -> tuple[float, float]:
    """A thread that never blocks is on a CPU or on a run queue all the window: (sum %, slack %).

    schedstat adds a wait when it ends, so a wait that straddles either end of
    the window moves up to a timeslice's wait into (or out of) it at each end.
    """
    runnable = row["cpu_pct"] + row["runq_wait_pct"]
    slack = 100 * 2 * (row["runq_wait_per_timeslice_ms"] or 0) / (row["window_s"] * 1000)
    assert 94 - slack <= runnable <= 101 + slack, row
    return runnable, slack


def check_known_answers(data: dict[str, Any], pid: int, duration: float) -> dict[str, dict[str, Any]]:
    """The workload's known answers (see test_thread_mcp's docstring); prints the figures."""
    assert data["pid"] == pid and data["comm"] == "pmcp-threads"
    assert data["threads_total"] == 4 and data["totals"]["threads_appeared"] == 0 == data["totals"]["threads_exited"]
    t = by_name(data)
    assert set(t) == {*NAMES, "pmcp-threads"}
    assert data["window_s"] == pytest.approx(duration, abs=0.3)
    assert data["cpu_source"].startswith("schedstat on-CPU ns")
    busy, half, sleep = (t[n] for n in NAMES)
    for r in (busy, half, sleep):
        assert r["cpu_source"] == "schedstat" and r["lifetime"] == "whole_window"
    # busy: always runnable -> on CPU + waiting ~ 100% of the window, never blocked
    runnable, slack = check_always_runnable(busy)
    assert busy["cpu_pct"] >= 80 or busy["runq_wait_pct"] >= 100 - busy["cpu_pct"] - 6 - slack, busy
    assert busy["cpu_pct"] >= 15 and busy["blocked_ms"] <= 0.05 * busy["window_s"] * 1000, busy
    assert busy["user_pct"] >= 0.85 * busy["cpu_pct"] and busy["voluntary_switches_per_s"] <= 1, busy
    # half: on CPU as long as blocked; one voluntary switch (the nanosleep) per 50 ms of CPU
    share = half["oncpu_ms"] / (half["oncpu_ms"] + half["blocked_ms"])
    assert 0.40 <= share <= 0.60, half
    if half["runq_wait_pct"] < 10:
        assert 35 <= half["cpu_pct"] <= 65, half
    else:  # a loaded machine: half of the time it did not spend waiting for a CPU
        assert half["cpu_pct"] == pytest.approx((100 - half["runq_wait_pct"]) / 2, abs=8), half
    periods = half["oncpu_ms"] / HALF_PERIOD_MS
    switches = half["voluntary_switches_per_s"] * half["window_s"]
    assert abs(switches - periods) <= 0.2 * periods + 1.5, (switches, periods)
    # ~10/s: a period is 50 ms on CPU + 50 ms asleep, plus what it waited for a CPU in that period
    per_s = 1000 / (2 * HALF_PERIOD_MS + half["runq_wait_ms"] / max(periods, 1))
    assert 0.8 * per_s <= half["voluntary_switches_per_s"] <= 1.15 * per_s <= 11.5, (per_s, half)
    if half["runq_wait_pct"] < 5:
        assert 8 <= half["voluntary_switches_per_s"], half
    # sleep: ~0% CPU, ten wake-ups a second, blocked all the window
    # (on a loaded machine it may be caught runnable just after a wake-up)
    assert sleep["cpu_pct"] < 3 and sleep["state"] in ("S (sleeping)", "R (running)"), sleep
    assert 0.8 * 1000 / SLEEP_MS <= sleep["voluntary_switches_per_s"] <= 1.05 * 1000 / SLEEP_MS, sleep
    assert sleep["blocked_ms"] + sleep["runq_wait_ms"] >= 0.97 * sleep["window_s"] * 1000, sleep
    assert sleep["blocked_ms"] >= 0.7 * sleep["window_s"] * 1000, sleep
    # totals: the process's own stat (ticks) against the sum of the threads (schedstat)
    tot = data["totals"]
    assert tot["cpu_pct"] == pytest.approx(tot["threads_cpu_pct"], abs=0.1 * tot["threads_cpu_pct"] + 2)
    assert data["threads"][0]["name"] == "pmcp-busy"
    print(f"\n  busy {busy['cpu_pct']:.1f}% (+ run-queue wait {busy['runq_wait_pct']:.1f}%), "
          f"half {half['cpu_pct']:.1f}% (on CPU {share:.0%} of its non-waiting time, "
          f"{half['voluntary_switches_per_s']:.1f} vol/s, expected {per_s:.1f}), sleep {sleep['cpu_pct']:.2f}% "
          f"({sleep['voluntary_switches_per_s']:.1f} vol/s); process {tot['cpu_pct']:.1f}% "
          f"vs threads {tot['threads_cpu_pct']:.1f}%")
    return t
