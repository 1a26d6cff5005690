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
from pathlib import Path

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
