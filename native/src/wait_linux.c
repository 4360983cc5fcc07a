/* wait/wake on Linux: shared (not FUTEX_PRIVATE) futexes, so any process mapping the
 * word at any address meets the same wait queue.  FUTEX_WAIT's timeout is relative and
 * measured on CLOCK_MONOTONIC, which is what the API promises. */
#if defined(__linux__)
#define _GNU_SOURCE
#include "shoal_core.h"
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

shoal_status shoal_wait32(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *pts = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        pts = &ts;
    }
    if (syscall(SYS_futex, addr, FUTEX_WAIT, expected, pts, NULL, 0) == 0)
        return SHOAL_OK;
    switch (errno) {
    case ETIMEDOUT: return SHOAL_TIMEOUT;
    case EINTR: return SHOAL_INTR;
    default: return SHOAL_OK; /* EAGAIN: the word had already changed */
    }
}

int shoal_wake32(uint32_t *addr, int n) {
    if (n == 0)
        return 0; /* FUTEX_WAKE with 0 wakes one sleeper all the same */
    long r = syscall(SYS_futex, addr, FUTEX_WAKE, n < 0 ? INT_MAX : n, NULL, NULL, 0);
    return r < 0 ? 0 : (int)r;
}
#endif
