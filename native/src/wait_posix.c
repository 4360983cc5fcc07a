/* Portable fallback for wait/wake where there is no futex: bounded exponential back-off
 * polling (50 us up to 2 ms).  Correct everywhere, slower to wake; wake is a no-op
 * because sleepers re-check the word themselves.  Selected at build time, so Python
 * never branches on the platform. */
#if !defined(__linux__)
#include "shoal_core.h"
#include "atomic_internal.h"
#include <errno.h>
#include <time.h>

shoal_status shoal_wait32(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
    int64_t start = shoal_monotonic_ns();
    int64_t pause = 50000;
    for (;;) {
        if (ld32(addr) != expected)
            return SHOAL_OK;
        int64_t left = timeout_ns < 0 ? pause : timeout_ns - (shoal_monotonic_ns() - start);
        if (left <= 0)
            return SHOAL_TIMEOUT;
        int64_t nap = left < pause ? left : pause;
        struct timespec ts = {(time_t)(nap / 1000000000LL), (long)(nap % 1000000000LL)};
        if (nanosleep(&ts, NULL) != 0 && errno == EINTR)
            return SHOAL_INTR;
        if (pause < 2000000)
            pause *= 2;
    }
}

int shoal_wake32(uint32_t *addr, int n) {
    (void)addr;
    (void)n;
    return 0;
}

int shoal_wait_many(uint32_t *const *addrs, const uint32_t *expected, int n, int64_t timeout_ns,
                    shoal_status *status) {
    (void)addrs;
    (void)expected;
    (void)n;
    (void)timeout_ns;
    *status = SHOAL_AGAIN; /* no such call here: one shoal_wait32 per word */
    return -1;
}
#endif
