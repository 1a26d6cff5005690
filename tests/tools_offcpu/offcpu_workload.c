/* Known-answer off-CPU workload for perf_offcpu_profile.
 *
 * usage: offcpu_workload FEED_PERIOD_US NAP_US [SECONDS]
 *
 * Threads:
 *   pmcp_reader (the main thread, tid == pid): perfmcp_reader_loop -> perfmcp_wait_for_data,
 *     which blocks in read() on a pipe; it is off-CPU almost all the time.
 *   pmcp_feeder: writes one byte into the pipe every FEED_PERIOD_US (sleeping in
 *     perfmcp_feeder_sleep in between); FEED_PERIOD_US 0 = as fast as the reader takes them
 *     (the bench's busy ping-pong).
 *   pmcp_napper: perfmcp_short_nap, sleeps NAP_US at a time (0 = no napper): many short blocks.
 *
 * The blocking syscalls are issued from the named functions themselves (inline `syscall`), not
 * through libc wrappers, which have no frame pointer: with frame-pointer unwinding the caller
 * of a libc wrapper is skipped, and the test needs the named function in every stack. Each
 * named function also makes a call, so gcc keeps its frame pointer (-O1 drops it in leaves).
 * With SECONDS, the program exits after that long and prints "reads=N naps=M".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int fds[2];
static long feed_period_us = 100000;
static long nap_us = 0;
static volatile unsigned long reads, naps;

/* A macro, not a function: -fno-inline would make a function of it, a leaf without a frame pointer. */
#define RAW_SYSCALL3(ret, nr, a, b, c) \
    __asm__ volatile("syscall" : "=a"(ret) : "0"((long)(nr)), "D"((long)(a)), "S"((long)(b)), "d"((long)(c)) \
                     : "rcx", "r11", "memory")

__attribute__((noinline)) void perfmcp_count(volatile unsigned long *counter, long n) {
    if (n >= 0) *counter += 1;
}

__attribute__((noinline)) long perfmcp_wait_for_data(int fd, char *buf) {
    long n;
    RAW_SYSCALL3(n, SYS_read, fd, buf, 1);
    perfmcp_count(&reads, n);
    return n;
}

__attribute__((noinline)) void perfmcp_reader_loop(void) {
    char c;
    for (;;) {
        if (perfmcp_wait_for_data(fds[0], &c) <= 0) exit(1);
    }
}

__attribute__((noinline)) long perfmcp_sleep_us(long us) {
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000L };
    long ret;
    RAW_SYSCALL3(ret, SYS_nanosleep, &ts, 0, 0);
    return ret;
}

__attribute__((noinline)) void perfmcp_feeder_sleep(long us) {
    perfmcp_sleep_us(us);
}

__attribute__((noinline)) void perfmcp_short_nap(long us) {
    long r = perfmcp_sleep_us(us);
    perfmcp_count(&naps, r);
}

static void *feeder(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "pmcp_feeder");
    for (;;) {
        if (feed_period_us > 0) perfmcp_feeder_sleep(feed_period_us);
        if (write(fds[1], "x", 1) != 1) exit(1);
    }
    return NULL;
}

static void *napper(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "pmcp_napper");
    for (;;) perfmcp_short_nap(nap_us);
    return NULL;
}

static void *timer(void *arg) {
    long seconds = (long)arg;
    sleep((unsigned)seconds);
    printf("reads=%lu naps=%lu\n", reads, naps);
    fflush(stdout);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc > 1) feed_period_us = atol(argv[1]);
    if (argc > 2) nap_us = atol(argv[2]);
    long seconds = argc > 3 ? atol(argv[3]) : 0;
    if (pipe(fds)) return 1;
    pthread_t t;
    if (pthread_create(&t, NULL, feeder, NULL)) return 1;
    if (nap_us > 0 && pthread_create(&t, NULL, napper, NULL)) return 1;
    if (seconds > 0 && pthread_create(&t, NULL, timer, (void *)seconds)) return 1;
    prctl(PR_SET_NAME, "pmcp_reader");
    perfmcp_reader_loop();
    return 0;
}
