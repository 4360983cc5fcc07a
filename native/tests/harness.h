/* A tiny test runner for the native core (no vendored framework).
 *
 * Tests register themselves with TEST(name) { ... }.  The runner forks once per test
 * and puts the child in its own process group, so a test may fork helpers, SIGKILL
 * them, or hang: a crash or a hang fails that test only (after TEST_TIMEOUT_S the
 * whole group is killed), and nothing a test started outlives it.
 *
 * Usage: shoal-tests [-v] [substring...]   (no substring: run everything)
 */
#ifndef SHOAL_TEST_HARNESS_H
#define SHOAL_TEST_HARNESS_H

#include "shoal_core.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef void (*test_fn)(void);
void harness_register(const char *name, test_fn fn);

#define TEST(name)                                                                        \
    static void test_##name(void);                                                        \
    __attribute__((constructor)) static void register_##name(void) {                      \
        harness_register(#name, test_##name);                                             \
    }                                                                                     \
    static void test_##name(void)

/* Report a failure and end the current process (the test, or a helper it forked: the
 * test sees the helper's non-zero exit through join()). */
__attribute__((noreturn, format(printf, 3, 4))) void harness_fail(const char *file, int line,
                                                                  const char *fmt, ...);

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond))                                                                      \
            harness_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                         \
    } while (0)

#define CHECK_EQ(a, b)                                                                    \
    do {                                                                                  \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);    \
        if (a_ != b_)                                                                     \
            harness_fail(__FILE__, __LINE__, "%s == %s: %llu != %llu (0x%llx != 0x%llx)", \
                         #a, #b, a_, b_, a_, b_);                                         \
    } while (0)

/* Checks a status; prints both by name on failure. */
#define CHECK_ST(expr, want)                                                              \
    do {                                                                                  \
        shoal_status got_ = (expr), want_ = (want);                                       \
        if (got_ != want_)                                                                \
            harness_fail(__FILE__, __LINE__, "%s: got %s, want %s", #expr,                \
                         status_name(got_), status_name(want_));                          \
    } while (0)

/* Elapsed time of a call must lie in [lo_ms, hi_ms]. */
#define CHECK_BETWEEN_MS(ms, lo_ms, hi_ms)                                                \
    do {                                                                                  \
        double ms_ = (ms);                                                                \
        if (ms_ < (lo_ms) || ms_ > (hi_ms))                                               \
            harness_fail(__FILE__, __LINE__, "%s = %.1f ms, want %d..%d ms", #ms, ms_,    \
                         (int)(lo_ms), (int)(hi_ms));                                     \
    } while (0)

const char *status_name(shoal_status st);

/* ---- helpers for multi-process tests --------------------------------------------- */

#define MS (1000LL * 1000)  /* nanoseconds in a millisecond */
#define SEC (1000LL * MS)

/* A zeroed MAP_SHARED|MAP_ANONYMOUS mapping: shared with every child forked later. */
void *shared_map(size_t size);
double now_ms(void);
void sleep_ms(double ms);

/* fork(); the child runs fn(arg) and exits 0 (or 1 through harness_fail). */
pid_t spawn(void (*fn)(void *), void *arg);
/* Wait for a child to exit (at most timeout_ms); fail the test unless it exited 0. */
void join(pid_t pid, double timeout_ms);
/* Wait for a child to exit; return its raw wait status (fails the test on timeout). */
int join_status(pid_t pid, double timeout_ms);
/* SIGKILL a child and wait until the kernel made it a zombie, without reaping it. */
void kill_leave_zombie(pid_t pid);
/* SIGKILL a child and reap it. */
void kill_and_reap(pid_t pid);
/* Poll until *word >= value (at most timeout_ms); fail the test otherwise. */
void await_at_least(const uint32_t *word, uint32_t value, double timeout_ms);
/* A token for pid whose start-time tag is wrong: what a reused pid looks like. */
uint64_t forged_token(pid_t pid);
/* Where this run's liveness files go (shoal_liveness_set_dir): a private directory. */
const char *harness_liveness_dir(void);
/* Cheap per-process pseudo-random numbers (xorshift), seeded per process. */
uint32_t rnd(uint64_t *state);

#endif
