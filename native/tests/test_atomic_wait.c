/* 64-bit atomics, wait32/wake32 and process identity. */
#define _GNU_SOURCE
#include "harness.h"

#include <limits.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* ---- atomics -------------------------------------------------------------------------- */

TEST(atomic64_single_process) {
    uint64_t w = 0;
    shoal_store64(&w, 0xfedcba9876543210ull);
    CHECK_EQ(shoal_load64(&w), 0xfedcba9876543210ull);
    /* fetch_add returns the old value and wraps modulo 2^64 */
    shoal_store64(&w, UINT64_MAX - 1);
    CHECK_EQ(shoal_fetch_add64(&w, 3), UINT64_MAX - 1);
    CHECK_EQ(shoal_load64(&w), 1);
    CHECK_EQ(shoal_fetch_add64(&w, (uint64_t)-1), 1); /* "subtract" by adding -1 */
    CHECK_EQ(shoal_load64(&w), 0);
    /* cas: success stores; failure copies the current value into *expected */
    uint64_t expected = 0;
    CHECK(shoal_cas64(&w, &expected, 42));
    CHECK_EQ(shoal_load64(&w), 42);
    expected = 7;
    CHECK(!shoal_cas64(&w, &expected, 99));
    CHECK_EQ(expected, 42);
    CHECK_EQ(shoal_load64(&w), 42);
    /* load32 reads the low word of a little-endian pair, as the glue expects */
    uint32_t pair[2] = {5, 6};
    CHECK_EQ(shoal_load32(&pair[1]), 6);
}

#define ADDERS 3
#define ADDS 50000

static void add_many(void *arg) {
    uint64_t *w = arg;
    for (int i = 0; i < ADDS; i++)
        shoal_fetch_add64(&w[0], 1);
    /* the same total through a CAS loop, which must not lose updates either */
    for (int i = 0; i < ADDS; i++) {
        uint64_t seen = shoal_load64(&w[1]);
        while (!shoal_cas64(&w[1], &seen, seen + 1)) {
        }
    }
}

TEST(atomic64_across_processes_is_exact) {
    uint64_t *w = shared_map(4096);
    pid_t pids[ADDERS];
    for (int i = 0; i < ADDERS; i++)
        pids[i] = spawn(add_many, w);
    for (int i = 0; i < ADDERS; i++)
        join(pids[i], 20000);
    CHECK_EQ(shoal_load64(&w[0]), (uint64_t)ADDERS * ADDS);
    CHECK_EQ(shoal_load64(&w[1]), (uint64_t)ADDERS * ADDS);
}

/* ---- wait32 / wake32 ---------------------------------------------------------------- */

TEST(wait32_times_out_on_time) {
    uint32_t w = 0;
    double t0 = now_ms();
    CHECK_ST(shoal_wait32(&w, 0, 100 * MS), SHOAL_TIMEOUT);
    CHECK_BETWEEN_MS(now_ms() - t0, 99, 400);
    t0 = now_ms();
    CHECK_ST(shoal_wait32(&w, 0, 0), SHOAL_TIMEOUT); /* timeout 0: never sleeps */
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 200);
}

TEST(wait32_returns_at_once_if_the_word_differs) {
    uint32_t w = 7;
    double t0 = now_ms();
    CHECK_ST(shoal_wait32(&w, 6, 5 * SEC), SHOAL_OK);
    CHECK_ST(shoal_wait32(&w, 6, -1), SHOAL_OK); /* even when told to wait forever */
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 200);
}

TEST(wake32_without_sleepers) {
    uint32_t w = 0;
    CHECK_EQ(shoal_wake32(&w, 1), 0);
    CHECK_EQ(shoal_wake32(&w, -1), 0);
    CHECK_EQ(shoal_wake32(&w, 0), 0);
}

struct sleeper {
    uint32_t word;
    uint32_t ready;
    uint32_t woke;
    shoal_status st;
    double slept_ms;
};

static void sleep_on_word(void *arg) {
    struct sleeper *s = arg;
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    double t0 = now_ms();
    shoal_status st;
    do /* the word is still 0 only after a spurious wake-up */
        st = shoal_wait32(&s->word, 0, 5 * SEC);
    while (st == SHOAL_OK && shoal_load32(&s->word) == 0);
    s->st = st;
    s->slept_ms = now_ms() - t0;
    __atomic_fetch_add(&s->woke, 1, __ATOMIC_SEQ_CST);
}

TEST(wake32_wakes_a_sleeper_in_another_process) {
    struct sleeper *s = shared_map(4096);
    pid_t pid = spawn(sleep_on_word, s);
    await_at_least(&s->ready, 1, 5000);
    sleep_ms(50); /* let it reach the futex */
    CHECK_EQ(shoal_load32(&s->woke), 0);
    __atomic_store_n(&s->word, 1, __ATOMIC_SEQ_CST);
    double t0 = now_ms();
    shoal_wake32(&s->word, 1);
    await_at_least(&s->woke, 1, 2000);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 1000); /* it sleeps 5 s unless woken */
    join(pid, 5000);
    CHECK_ST(s->st, SHOAL_OK);
    CHECK(s->slept_ms < 1000);
}

TEST(wake32_counts_and_limits_the_sleepers_it_wakes) {
    struct sleeper *s = shared_map(4096);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = spawn(sleep_on_word, s);
    await_at_least(&s->ready, 3, 5000);
    sleep_ms(100);
    /* the word stays 0, so a woken sleeper only leaves through the loop's re-check if
     * the word changed: set it, then wake exactly one */
    __atomic_store_n(&s->word, 1, __ATOMIC_SEQ_CST);
    int woken = shoal_wake32(&s->word, 1);
    CHECK_EQ(woken, 1);
    woken = shoal_wake32(&s->word, -1);
    CHECK_EQ(woken, 2);
    for (int i = 0; i < 3; i++)
        join(pids[i], 5000);
}

TEST(wake32_of_zero_wakes_nobody) {
    struct sleeper *s = shared_map(4096);
    pid_t pid = spawn(sleep_on_word, s);
    await_at_least(&s->ready, 1, 5000);
    sleep_ms(50);
    __atomic_store_n(&s->word, 1, __ATOMIC_SEQ_CST);
    CHECK_EQ(shoal_wake32(&s->word, 0), 0); /* the kernel's FUTEX_WAKE would wake one */
    sleep_ms(50);
    CHECK_EQ(shoal_load32(&s->woke), 0);
    CHECK_EQ(shoal_wake32(&s->word, 1), 1);
    join(pid, 5000);
}

static void on_usr1(int sig) { (void)sig; }

static void wait_until_interrupted(void *arg) {
    struct sleeper *s = arg;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART: the futex call must come back with EINTR */
    sigaction(SIGUSR1, &sa, NULL);
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    s->st = shoal_wait32(&s->word, 0, 5 * SEC);
    __atomic_fetch_add(&s->woke, 1, __ATOMIC_SEQ_CST);
}

TEST(wait32_reports_a_signal_as_intr) {
    struct sleeper *s = shared_map(4096);
    pid_t pid = spawn(wait_until_interrupted, s);
    await_at_least(&s->ready, 1, 5000);
    sleep_ms(50);
    kill(pid, SIGUSR1);
    await_at_least(&s->woke, 1, 1000);
    join(pid, 5000);
    CHECK_ST(s->st, SHOAL_INTR);
}

/* ---- process identity ----------------------------------------------------------------- */

TEST(token_of_self_is_alive_and_stable) {
    uint64_t t = shoal_self_token();
    CHECK(t != 0);
    CHECK_EQ(t >> 32, (uint64_t)getpid());
    CHECK((uint32_t)t != 0); /* procfs is there on Linux: the start-time tag is set */
    CHECK_EQ(shoal_self_token(), t);
    CHECK(shoal_token_alive(t));
    CHECK(!shoal_token_alive(0));
}

static void report_token(void *arg) {
    uint64_t *slot = arg;
    shoal_store64(slot, shoal_self_token());
    pause(); /* until killed */
}

TEST(token_changes_in_a_forked_child) {
    uint64_t *slot = shared_map(4096);
    uint64_t parent = shoal_self_token(); /* cached before the fork */
    pid_t pid = spawn(report_token, slot);
    double deadline = now_ms() + 5000;
    while (shoal_load64(slot) == 0 && now_ms() < deadline)
        sleep_ms(1);
    uint64_t child = shoal_load64(slot);
    CHECK(child != 0);
    CHECK(child != parent);
    CHECK_EQ(child >> 32, (uint64_t)pid);
    CHECK(shoal_token_alive(child));
    kill_and_reap(pid);
}

TEST(token_of_zombie_is_dead) {
    uint64_t *slot = shared_map(4096);
    pid_t pid = spawn(report_token, slot);
    while (shoal_load64(slot) == 0)
        sleep_ms(1);
    uint64_t child = shoal_load64(slot);
    kill_leave_zombie(pid); /* killed, not reaped: /proc/<pid> still exists, state Z */
    CHECK(!shoal_token_alive(child));
    join_status(pid, 5000);
    CHECK(!shoal_token_alive(child)); /* reaped: no such process at all */
}

TEST(token_with_reused_pid_is_dead) {
    /* our own pid is certainly alive; with another start time it is someone else */
    CHECK(!shoal_token_alive(forged_token(getpid())));
    /* a pid no process has in practice (pid_max is at most 2^22), in this namespace */
    CHECK(!shoal_token_alive(forged_token(0x3FFFFF)));
    /* pid 0 would mean "every process" to kill(): never alive */
    CHECK(!shoal_token_alive(forged_token(0)));
    CHECK(!shoal_token_alive(0));
}

TEST(token_of_another_pid_namespace_is_alive) {
    /* its pid means another process here, or none: without a liveness file it cannot
     * be judged dead (#10; test_liveness.c has the tokens that published one) */
    uint64_t self = shoal_self_token();
    uint64_t other_namespace = (self ^ ((uint64_t)1 << 24)) & ~SHOAL_TOKEN_LIVENESS;
    CHECK(shoal_token_pid_namespace(other_namespace) != shoal_token_pid_namespace(self));
    CHECK(shoal_token_alive(other_namespace ^ (uint64_t)0x1234)); /* another start time */
    CHECK(shoal_token_alive((other_namespace & 0xFFC00000FFFFFFFFull) | ((uint64_t)0x3FFFFF << 32)));
    CHECK(shoal_token_pid(self) == (uint32_t)getpid());
}

TEST(token_of_another_users_process_is_alive) {
    /* pid 1 exists in every pid namespace; kill(1, 0) may say EPERM, which is alive */
    uint64_t init_token = (uint64_t)1 << 32; /* tag 0: unknown start time, trust kill() */
    CHECK(shoal_token_alive(init_token));
}

TEST(monotonic_clock_moves_forward) {
    int64_t a = shoal_monotonic_ns();
    sleep_ms(5);
    int64_t b = shoal_monotonic_ns();
    CHECK(b - a >= 5 * MS);
}

/* ---- shoal_wait_many (#14: the asyncio hub's wait) ------------------------------------ */

static void bump_third_later(void *arg) {
    uint32_t *w = arg;
    usleep(50000);
    __atomic_fetch_add(&w[2], 1, __ATOMIC_SEQ_CST);
    shoal_wake32(&w[2], 1);
}

TEST(wait_many_wakes_on_the_word_another_process_wakes) {
    uint32_t *w = shared_map(4096);
    uint32_t *addrs[3] = {&w[0], &w[1], &w[2]};
    uint32_t expected[3] = {0, 0, 0};
    shoal_status st = SHOAL_BAD_LAYOUT;
    pid_t pid = spawn(bump_third_later, w);
    int64_t t0 = shoal_monotonic_ns();
    int r = shoal_wait_many(addrs, expected, 3, 5000LL * 1000 * 1000, &st);
    int64_t waited = shoal_monotonic_ns() - t0;
    join(pid, 20000);
    if (st == SHOAL_AGAIN) /* no futex_waitv here: nothing more to check */
        return;
    /* woken on word 2, or (if the bump came first) told to re-check */
    CHECK(r == 2 || (r == -1 && st == SHOAL_OK));
    CHECK(waited < 4000LL * 1000 * 1000);
    CHECK_EQ(shoal_load32(&w[2]), 1);
}

TEST(wait_many_times_out_and_sees_a_changed_word) {
    uint32_t words[2] = {0, 7};
    uint32_t *addrs[2] = {&words[0], &words[1]};
    uint32_t expected[2] = {0, 7};
    shoal_status st = SHOAL_OK;
    int r = shoal_wait_many(addrs, expected, 2, 20LL * 1000 * 1000, &st);
    if (st == SHOAL_AGAIN)
        return;
    CHECK_EQ(r, -1);
    CHECK_EQ(st, SHOAL_TIMEOUT);
    expected[1] = 8; /* differs: at once, re-check */
    int64_t t0 = shoal_monotonic_ns();
    r = shoal_wait_many(addrs, expected, 2, 5000LL * 1000 * 1000, &st);
    CHECK_EQ(r, -1);
    CHECK_EQ(st, SHOAL_OK);
    CHECK(shoal_monotonic_ns() - t0 < 1000LL * 1000 * 1000);
    /* no words, or too many: nothing to wait on, re-check */
    r = shoal_wait_many(addrs, expected, 0, 0, &st);
    CHECK_EQ(r, -1);
    CHECK_EQ(st, SHOAL_OK);
}

TEST(waiter_join_and_leave_keep_count_and_list_together) {
    uint32_t count = 0;
    shoal_waitlist l;
    memset(&l, 0, sizeof l);
    int slot = shoal_waiter_join(&count, &l);
    CHECK(slot >= 0);
    CHECK_EQ(count, 1);
    CHECK_EQ(shoal_load64(&l.token[slot]), shoal_self_token());
    CHECK_EQ(shoal_waitlist_live(&l, count), 1);
    shoal_waiter_leave(&count, &l, slot);
    CHECK_EQ(count, 0);
    CHECK_EQ(shoal_load64(&l.token[slot]), 0);
    /* without a list: counted, untracked */
    CHECK_EQ(shoal_waiter_join(&count, NULL), -1);
    CHECK_EQ(count, 1);
    shoal_waiter_leave(&count, NULL, -1);
    CHECK_EQ(count, 0);
}
