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

/* futex_waitv (Linux 5.16): not every libc names it yet */
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif

struct shoal_futex_waitv { /* the kernel's struct futex_waitv */
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

int shoal_wait_many(uint32_t *const *addrs, const uint32_t *expected, int n, int64_t timeout_ns,
                    shoal_status *status) {
    struct shoal_futex_waitv w[SHOAL_WAIT_MANY_MAX];
    if (n < 1 || n > SHOAL_WAIT_MANY_MAX) {
        *status = SHOAL_OK;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        w[i].val = expected[i];
        w[i].uaddr = (uint64_t)(uintptr_t)addrs[i];
        w[i].flags = FUTEX2_SIZE_U32; /* shared: no FUTEX2_PRIVATE */
        w[i].reserved = 0;
    }
    struct timespec ts, *pts = NULL;
    if (timeout_ns >= 0) { /* futex_waitv's timeout is absolute */
        int64_t at = shoal_monotonic_ns() + timeout_ns;
        ts.tv_sec = (time_t)(at / 1000000000LL);
        ts.tv_nsec = (long)(at % 1000000000LL);
        pts = &ts;
    }
    long r = syscall(SYS_futex_waitv, w, (unsigned)n, 0u, pts, CLOCK_MONOTONIC);
    if (r >= 0) {
        *status = SHOAL_OK;
        return (int)r;
    }
    switch (errno) {
    case ETIMEDOUT: *status = SHOAL_TIMEOUT; break;
    case EINTR: *status = SHOAL_INTR; break;
    case ENOSYS: *status = SHOAL_AGAIN; break;
    default: *status = SHOAL_OK; /* EAGAIN: a word differed; EFAULT: re-check */
    }
    return -1;
}
#endif
