/* shoal_cond across processes, used the way shoal.Condition.wait uses it:
 *
 *   lock; enter; unlock; wait(timeout) [again on INTR];
 *   if it timed out: lock; leave (a notify may have arrived meanwhile); unlock
 */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

struct shared {
    shoal_mutex lock;
    shoal_cond cond;
    uint32_t entered;  /* waiters registered (under the lock) */
    uint32_t notified; /* waiters whose wait ended notified */
    uint32_t timed_out;
    uint32_t go;
    int64_t timeout_ns; /* how long helpers wait */
};

static uint32_t cond_waiting(const shoal_cond *c) {
    /* shoal._core's Cond._waiting computes it from the word itself: both must agree */
    uint64_t s = shoal_load64(&c->state);
    uint32_t n = shoal_cond_waiting(c);
    CHECK_EQ((uint32_t)(s >> 32) - (uint32_t)s, n);
    return n;
}

static void lock(struct shared *s) {
    shoal_status st = shoal_mutex_lock(&s->lock, shoal_self_token(), 5 * SEC);
    CHECK(st == SHOAL_OK);
}

static void unlock(struct shared *s) { CHECK_ST(shoal_mutex_unlock(&s->lock), SHOAL_OK); }

/* One Condition.wait(timeout); returns 1 if notified. */
static int cond_wait_once(struct shared *s, int64_t timeout_ns) {
    lock(s);
    shoal_cond_enter(&s->cond);
    __atomic_fetch_add(&s->entered, 1, __ATOMIC_SEQ_CST);
    unlock(s);
    shoal_status st;
    do
        st = shoal_cond_wait(&s->cond, timeout_ns);
    while (st == SHOAL_INTR);
    if (st == SHOAL_TIMEOUT) {
        lock(s);
        st = shoal_cond_leave(&s->cond);
        unlock(s);
    }
    __atomic_fetch_add(st == SHOAL_OK ? &s->notified : &s->timed_out, 1, __ATOMIC_SEQ_CST);
    return st == SHOAL_OK;
}

static void waiter(void *arg) {
    struct shared *s = arg;
    cond_wait_once(s, s->timeout_ns);
}

static pid_t start_waiters(struct shared *s, pid_t *pids, int n, int64_t timeout_ns) {
    s->timeout_ns = timeout_ns;
    uint32_t before = shoal_load32(&s->entered);
    for (int i = 0; i < n; i++)
        pids[i] = spawn(waiter, s);
    await_at_least(&s->entered, before + (uint32_t)n, 5000);
    sleep_ms(30); /* let them reach the futex */
    return 0;
}

TEST(cond_notify_one_of_three_grants_exactly_one) {
    struct shared *s = shared_map(4096);
    pid_t pids[3];
    start_waiters(s, pids, 3, 400 * MS);
    CHECK_EQ(cond_waiting(&s->cond), 3);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 1);
    unlock(s);
    await_at_least(&s->notified, 1, 2000);
    for (int i = 0; i < 3; i++)
        join(pids[i], 5000);
    CHECK_EQ(s->notified, 1);
    CHECK_EQ(s->timed_out, 2);
    CHECK_EQ(cond_waiting(&s->cond), 0);
}

TEST(cond_notify_n_and_all) {
    struct shared *s = shared_map(4096);
    pid_t pids[3];
    start_waiters(s, pids, 3, 3 * SEC);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 0), 0);
    CHECK_EQ(shoal_cond_notify(&s->cond, 2), 2);
    CHECK_EQ(shoal_cond_notify(&s->cond, 2), 1); /* only one was left un-notified */
    CHECK_EQ(shoal_cond_notify(&s->cond, -1), 0);
    unlock(s);
    double t0 = now_ms();
    await_at_least(&s->notified, 3, 2000);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 500);
    for (int i = 0; i < 3; i++)
        join(pids[i], 5000);
    CHECK_EQ(s->timed_out, 0);

    start_waiters(s, pids, 3, 3 * SEC);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, -1), 3);
    unlock(s);
    t0 = now_ms();
    await_at_least(&s->notified, 6, 2000);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 500);
    for (int i = 0; i < 3; i++)
        join(pids[i], 5000);
    CHECK_EQ(s->timed_out, 0);
    CHECK_EQ(cond_waiting(&s->cond), 0);
}

TEST(cond_notify_without_waiters_is_lost) {
    struct shared *s = shared_map(4096);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 0);
    CHECK_EQ(shoal_cond_notify(&s->cond, -1), 0);
    unlock(s);
    CHECK(!cond_wait_once(s, 20 * MS)); /* a notify is not remembered for later waiters */
}

TEST(cond_wait_times_out_and_leaves) {
    struct shared *s = shared_map(4096);
    double t0 = now_ms();
    CHECK(!cond_wait_once(s, 60 * MS));
    CHECK_BETWEEN_MS(now_ms() - t0, 60, 400);
    CHECK_EQ(cond_waiting(&s->cond), 0);
}

TEST(cond_leave_after_timeout_takes_a_late_notify) {
    /* the wait timed out, but a notify came before the waiter got the lock back: the
     * wait counts as notified, and the notify is not lost */
    struct shared *s = shared_map(4096);
    lock(s);
    shoal_cond_enter(&s->cond);
    unlock(s);
    CHECK_ST(shoal_cond_wait(&s->cond, 10 * MS), SHOAL_TIMEOUT);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 1);
    CHECK_ST(shoal_cond_leave(&s->cond), SHOAL_OK);
    CHECK_EQ(cond_waiting(&s->cond), 0);
    /* and without a notify, leave says timeout */
    shoal_cond_enter(&s->cond);
    unlock(s);
    CHECK_ST(shoal_cond_wait(&s->cond, 10 * MS), SHOAL_TIMEOUT);
    lock(s);
    CHECK_ST(shoal_cond_leave(&s->cond), SHOAL_TIMEOUT);
    CHECK_EQ(cond_waiting(&s->cond), 0);
    unlock(s);
}

TEST(cond_late_waiter_does_not_steal_an_earlier_notify) {
    /* Condition semantics: notify wakes threads waiting *at the time*.  A waiter that
     * enters after notify_all must not consume the wake-up meant for one that was
     * already waiting (the barrier pattern: a fast party loops around and waits for
     * the next phase while a slow one has not yet woken from the last). */
    struct shared *s = shared_map(4096);
    pid_t slow;
    start_waiters(s, &slow, 1, 2 * SEC);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, -1), 1);
    unlock(s);
    /* we arrive after the notify: our wait must time out ... */
    CHECK(!cond_wait_once(s, 100 * MS));
    /* ... and the earlier waiter must have been woken by it */
    await_at_least(&s->notified, 1, 1000); /* (it would sleep its 2 s) */
    join(slow, 5000);
    CHECK_EQ(cond_waiting(&s->cond), 0);
}

TEST(cond_late_waiter_does_not_steal_a_partial_notify) {
    struct shared *s = shared_map(4096);
    pid_t pids[2];
    start_waiters(s, pids, 2, 2 * SEC);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 1);
    unlock(s);
    CHECK(!cond_wait_once(s, 100 * MS));
    await_at_least(&s->notified, 1, 1000);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 1);
    unlock(s);
    await_at_least(&s->notified, 2, 1000);
    for (int i = 0; i < 2; i++)
        join(pids[i], 5000);
}

/* A barrier on a condition, as shoal.Barrier builds it: parties loop phase after
 * phase; each phase's last arrival does notify_all.  With stolen wake-ups a slow party
 * sleeps through its phase and the others wait for it: every phase must end quickly. */
struct barrier {
    struct shared s;
    uint32_t phase;
    uint32_t arrived;
    uint32_t slow_phases; /* phases some party needed > 500 ms for */
};

#define PARTIES 3
#define PHASES 150

static void barrier_party(void *arg) {
    struct barrier *b = arg;
    struct shared *s = &b->s;
    for (int i = 0; i < PHASES; i++) {
        lock(s);
        uint32_t phase = b->phase;
        if (++b->arrived == PARTIES) {
            b->arrived = 0;
            b->phase = phase + 1;
            shoal_cond_notify(&s->cond, -1);
            unlock(s);
            continue;
        }
        double t0 = now_ms();
        while (b->phase == phase) {
            shoal_cond_enter(&s->cond);
            unlock(s);
            shoal_status st;
            do
                st = shoal_cond_wait(&s->cond, 2 * SEC);
            while (st == SHOAL_INTR);
            lock(s);
            if (st == SHOAL_TIMEOUT)
                shoal_cond_leave(&s->cond);
        }
        if (now_ms() - t0 > 500)
            __atomic_fetch_add(&b->slow_phases, 1, __ATOMIC_SEQ_CST);
        unlock(s);
    }
}

TEST(cond_barrier_phases_never_stall) {
    struct barrier *b = shared_map(4096);
    pid_t pids[PARTIES];
    for (int i = 0; i < PARTIES; i++)
        pids[i] = spawn(barrier_party, b);
    for (int i = 0; i < PARTIES; i++)
        join(pids[i], 20000);
    CHECK_EQ(b->phase, PHASES);
    CHECK_EQ(b->slow_phases, 0);
}

TEST(cond_waiter_recovers_a_lost_wakeup) {
    /* notify's futex wake can go to a waiter that is SIGKILLed before it takes its
     * ticket.  Simulate it: a registered waiter that never waits (a dead one) and a
     * live sleeper; a ticket appears without any wake: the sleeper must find it within
     * its re-check period */
    struct shared *s = shared_map(4096);
    uint32_t ghost;
    lock(s);
    CHECK_ST(shoal_cond_enter_gen(&s->cond, &ghost), SHOAL_OK);
    unlock(s);
    pid_t pid;
    start_waiters(s, &pid, 1, 3 * SEC);
    CHECK_EQ(shoal_cond_waiting(&s->cond), 2);
    double t0 = now_ms();
    lock(s);
    uint64_t st = shoal_load64(&s->cond.state);
    shoal_store64(&s->cond.state, st + 1); /* one ticket, as notify(1) grants it */
    unlock(s);
    await_at_least(&s->notified, 1, 2000);
    CHECK(now_ms() - t0 < 1000);
    join(pid, 5000);
    lock(s);
    CHECK_ST(shoal_cond_leave_gen(&s->cond, ghost), SHOAL_TIMEOUT);
    unlock(s);
    CHECK_EQ(shoal_cond_waiting(&s->cond), 0);
}

TEST(cond_dead_waiter_does_not_block_others) {
    /* a waiter SIGKILLed while registered stays counted; notifies must still reach the
     * live ones, and the count must come back to 0 once it is notified away */
    struct shared *s = shared_map(4096);
    pid_t dead, live[2];
    start_waiters(s, &dead, 1, 60 * SEC);
    kill_and_reap(dead);
    start_waiters(s, live, 2, 3 * SEC);
    CHECK_EQ(cond_waiting(&s->cond), 3);
    lock(s);
    CHECK(shoal_cond_notify(&s->cond, 2) == 2);
    unlock(s);
    await_at_least(&s->notified, 2, 2000);
    for (int i = 0; i < 2; i++)
        join(live[i], 5000);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, -1), 1); /* the dead one */
    unlock(s);
    CHECK_EQ(cond_waiting(&s->cond), 0);
    CHECK(!cond_wait_once(s, 30 * MS)); /* and nothing is left over for a newcomer */
}

static void on_usr1(int sig) { (void)sig; }

static void wait_interrupted(void *arg) {
    struct shared *s = arg;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    lock(s);
    shoal_cond_enter(&s->cond);
    __atomic_fetch_add(&s->entered, 1, __ATOMIC_SEQ_CST);
    unlock(s);
    CHECK_ST(shoal_cond_wait(&s->cond, 5 * SEC), SHOAL_INTR);
    __atomic_fetch_add(&s->timed_out, 1, __ATOMIC_SEQ_CST);
    /* still registered: the retry is notified */
    CHECK_ST(shoal_cond_wait(&s->cond, 5 * SEC), SHOAL_OK);
    __atomic_fetch_add(&s->notified, 1, __ATOMIC_SEQ_CST);
}

TEST(cond_wait_reports_a_signal_and_stays_registered) {
    struct shared *s = shared_map(4096);
    pid_t pid = spawn(wait_interrupted, s);
    await_at_least(&s->entered, 1, 5000);
    sleep_ms(30);
    kill(pid, SIGUSR1);
    await_at_least(&s->timed_out, 1, 2000);
    CHECK_EQ(cond_waiting(&s->cond), 1);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 1);
    unlock(s);
    await_at_least(&s->notified, 1, 2000);
    join(pid, 5000);
}

/* Threads of one process: each has its own registration. */
struct thread_waiter {
    struct shared *s;
    int notified;
};

static void *thread_wait(void *p) {
    struct thread_waiter *w = p;
    w->notified = cond_wait_once(w->s, 2 * SEC);
    return NULL;
}

TEST(cond_threads_of_one_process) {
    struct shared *s = shared_map(4096);
    pthread_t t[3];
    struct thread_waiter w[3];
    for (int i = 0; i < 3; i++) {
        w[i].s = s;
        w[i].notified = -1;
        pthread_create(&t[i], NULL, thread_wait, &w[i]);
    }
    await_at_least(&s->entered, 3, 5000);
    sleep_ms(30);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 2), 2);
    unlock(s);
    await_at_least(&s->notified, 2, 2000);
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 1);
    unlock(s);
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        CHECK_EQ(w[i].notified, 1);
    }
}

/* ---- the explicit-generation calls, and the per-thread memory of the legacy ones ------ */

/* A handle's generation (the high bits name the waiter's waitlist slot). */
#define GEN_OF(h) ((h) & 0xffffu)

TEST(cond_generations_explicitly) {
    shoal_cond c;
    memset(&c, 0, sizeof c);
    uint32_t a, b, late;
    CHECK_ST(shoal_cond_enter_gen(&c, &a), SHOAL_OK);
    CHECK_ST(shoal_cond_enter_gen(&c, &b), SHOAL_OK);
    CHECK_EQ(GEN_OF(a), GEN_OF(b));
    CHECK(a != b); /* two slots */
    CHECK_EQ(shoal_cond_notify(&c, 1), 1);
    CHECK_EQ(shoal_cond_waiting(&c), 1);
    CHECK_ST(shoal_cond_enter_gen(&c, &late), SHOAL_OK);
    CHECK(GEN_OF(late) != GEN_OF(a)); /* a ticket is out: the newcomer queues in the next generation */
    CHECK_ST(shoal_cond_wait_gen(&c, a, 0), SHOAL_OK); /* takes the one ticket */
    CHECK_ST(shoal_cond_wait_gen(&c, b, 0), SHOAL_TIMEOUT);
    CHECK_EQ(shoal_cond_notify(&c, -1), 2); /* b and late: the generation retires */
    uint32_t next;
    CHECK_ST(shoal_cond_enter_gen(&c, &next), SHOAL_OK);
    CHECK(GEN_OF(next) != GEN_OF(a));
    CHECK_ST(shoal_cond_wait_gen(&c, next, 0), SHOAL_TIMEOUT); /* not for the newcomer */
    CHECK_ST(shoal_cond_wait_gen(&c, b, 0), SHOAL_OK);
    CHECK_ST(shoal_cond_leave_gen(&c, late), SHOAL_OK); /* notified before it left */
    CHECK_EQ(shoal_cond_waiting(&c), 1);
    CHECK_ST(shoal_cond_leave_gen(&c, next), SHOAL_TIMEOUT);
    CHECK_EQ(shoal_cond_waiting(&c), 0);
    CHECK_EQ(shoal_cond_notify(&c, -1), 0);
}

TEST(cond_notify_that_completes_a_generation_promotes_the_next) {
    shoal_cond c;
    memset(&c, 0, sizeof c);
    uint32_t a, b, late;
    CHECK_ST(shoal_cond_enter_gen(&c, &a), SHOAL_OK);
    CHECK_ST(shoal_cond_enter_gen(&c, &b), SHOAL_OK);
    CHECK_EQ(shoal_cond_notify(&c, 1), 1);
    CHECK_ST(shoal_cond_enter_gen(&c, &late), SHOAL_OK); /* queues: a ticket is out */
    CHECK_EQ(shoal_cond_waiting(&c), 2);
    CHECK_EQ(shoal_cond_notify(&c, 1), 1); /* the second of a and b: they retire */
    CHECK_EQ(shoal_cond_waiting(&c), 1);   /* late is the one left */
    CHECK_ST(shoal_cond_wait_gen(&c, a, 0), SHOAL_OK);
    CHECK_ST(shoal_cond_wait_gen(&c, b, 0), SHOAL_OK);
    CHECK_ST(shoal_cond_wait_gen(&c, late, 0), SHOAL_TIMEOUT);
    uint32_t newest;
    CHECK_ST(shoal_cond_enter_gen(&c, &newest), SHOAL_OK); /* no ticket out: joins late */
    CHECK_EQ(GEN_OF(newest), GEN_OF(late));
    CHECK_EQ(shoal_cond_notify(&c, 1), 1);
    CHECK_ST(shoal_cond_leave_gen(&c, late), SHOAL_OK);
    CHECK_ST(shoal_cond_leave_gen(&c, newest), SHOAL_TIMEOUT);
    CHECK_EQ(shoal_cond_waiting(&c), 0);
    CHECK_EQ(c.next_waiting, 0);
    CHECK_EQ(shoal_cond_notify(&c, -1), 0);
}

/* Random enter / wait(0) / leave / notify sequences, checked against what must hold
 * whichever waiters the algorithm picks:
 *   - a waiter that entered after the last notify cannot be notified (no stealing);
 *   - notify(n) grants min(n, waiting); every grant is collected exactly once;
 *   - waiting == registered - granted-but-not-collected. */
TEST(cond_holds_its_invariants_under_random_operations) {
    shoal_cond c;
    memset(&c, 0, sizeof c);
    enum { MAXW = 12 };
    struct {
        int present;
        uint32_t gen;
        long entered_at;
    } w[MAXW];
    memset(w, 0, sizeof w);
    long op = 0, last_grant_at = -1, granted = 0, collected = 0;
    uint64_t rng = 0;
    for (int round = 0; round < 300000; round++) {
        op++;
        int i = (int)(rnd(&rng) % MAXW);
        uint32_t what = rnd(&rng) % 10;
        shoal_status st = SHOAL_TIMEOUT;
        if (what < 4 && !w[i].present) {
            CHECK_ST(shoal_cond_enter_gen(&c, &w[i].gen), SHOAL_OK);
            w[i].present = 1;
            w[i].entered_at = op;
        } else if (what < 4 || (what < 6 && w[i].present)) {
            if (!w[i].present)
                continue;
            st = what < 4 ? shoal_cond_wait_gen(&c, w[i].gen, 0) : shoal_cond_leave_gen(&c, w[i].gen);
            CHECK(st == SHOAL_OK || st == SHOAL_TIMEOUT);
            if (st == SHOAL_OK) {
                if (w[i].entered_at > last_grant_at)
                    harness_fail(__FILE__, __LINE__, "round %d: waiter %d (entered at %ld) "
                                 "notified by a notify at %ld", round, i, w[i].entered_at,
                                 last_grant_at);
                collected++;
            }
            if (st == SHOAL_OK || what >= 4)
                w[i].present = 0;
        } else if (what >= 6) {
            uint32_t before = shoal_cond_waiting(&c);
            int64_t n = what == 9 ? -1 : (int64_t)(rnd(&rng) % 4);
            uint32_t g = shoal_cond_notify(&c, n);
            CHECK_EQ(g, n < 0 || (uint64_t)n > before ? before : (uint32_t)n);
            if (g) {
                granted += g;
                last_grant_at = op;
            }
        }
        long present = 0;
        for (int k = 0; k < MAXW; k++)
            present += w[k].present;
        CHECK_EQ(shoal_cond_waiting(&c), present - (granted - collected));
    }
    /* drain: notify_all, and every present waiter collects */
    uint32_t left = shoal_cond_waiting(&c);
    CHECK_EQ(shoal_cond_notify(&c, -1), left);
    for (int k = 0; k < MAXW; k++)
        if (w[k].present)
            CHECK_ST(shoal_cond_wait_gen(&c, w[k].gen, 0), SHOAL_OK);
    CHECK_EQ(shoal_cond_waiting(&c), 0);
    CHECK_EQ(c.next_waiting, 0);
}

TEST(cond_generation_counter_wraps) {
    shoal_cond c;
    memset(&c, 0, sizeof c);
    for (int i = 0; i < 70000; i++) { /* more than 2^16 generations */
        uint32_t g;
        CHECK_ST(shoal_cond_enter_gen(&c, &g), SHOAL_OK);
        CHECK_EQ(shoal_cond_notify(&c, 1), 1);
        CHECK_ST(shoal_cond_wait_gen(&c, g, 0), SHOAL_OK);
        CHECK_EQ(shoal_cond_waiting(&c), 0);
    }
}

TEST(cond_too_many_waiters) {
    shoal_cond c;
    memset(&c, 0, sizeof c);
    uint32_t g;
    for (uint32_t i = 0; i < SHOAL_COND_MAX_WAITERS; i++)
        CHECK_ST(shoal_cond_enter_gen(&c, &g), SHOAL_OK);
    CHECK_ST(shoal_cond_enter_gen(&c, &g), SHOAL_OVERFLOW);
    CHECK_EQ(shoal_cond_waiting(&c), SHOAL_COND_MAX_WAITERS);
    /* the legacy call cannot say so: its wait ends at any notify (a spurious wake-up) */
    shoal_cond_enter(&c);
    CHECK_ST(shoal_cond_wait(&c, 10 * MS), SHOAL_TIMEOUT);
    CHECK_ST(shoal_cond_leave(&c), SHOAL_TIMEOUT);
    CHECK_EQ(shoal_cond_waiting(&c), SHOAL_COND_MAX_WAITERS);
    CHECK_EQ(shoal_cond_notify(&c, -1), SHOAL_COND_MAX_WAITERS);
    CHECK_EQ(shoal_cond_waiting(&c), 0);
}

TEST(cond_corrupt_state_is_refused_not_hung_on) {
    shoal_cond c;
    memset(&c, 0, sizeof c);
    uint32_t g;
    CHECK_ST(shoal_cond_enter_gen(&c, &g), SHOAL_OK);
    c.state ^= (uint64_t)1 << 48; /* the two copies of the generation disagree */
    double t0 = now_ms();
    CHECK_ST(shoal_cond_wait_gen(&c, g, 5 * SEC), SHOAL_BAD_LAYOUT);
    CHECK_ST(shoal_cond_leave_gen(&c, g), SHOAL_BAD_LAYOUT);
    CHECK_ST(shoal_cond_enter_gen(&c, &g), SHOAL_BAD_LAYOUT);
    CHECK_EQ(shoal_cond_notify(&c, -1), 0);
    memset(&c, 0, sizeof c);
    c.state = 3; /* tickets without waiters */
    CHECK_ST(shoal_cond_enter_gen(&c, &g), SHOAL_BAD_LAYOUT);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 200);
}

TEST(cond_legacy_calls_nest_per_thread) {
    /* a signal handler may wait on the same or another condition in the middle of a
     * wait: each registration is remembered separately */
    shoal_cond c1, c2;
    memset(&c1, 0, sizeof c1);
    memset(&c2, 0, sizeof c2);
    shoal_cond_enter(&c1);                              /* outer wait on c1 ... */
    CHECK_ST(shoal_cond_wait(&c1, 0), SHOAL_TIMEOUT);   /* ... interrupted, say */
    CHECK_EQ(shoal_cond_notify(&c1, 1), 1);             /* (granted to the outer) */
    shoal_cond_enter(&c1);                              /* inner wait on c1, a newcomer */
    CHECK_ST(shoal_cond_wait(&c1, 0), SHOAL_TIMEOUT);   /* ... must not take it */
    shoal_cond_enter(&c2);                              /* innermost, on c2 */
    CHECK_EQ(shoal_cond_notify(&c2, 1), 1);
    CHECK_ST(shoal_cond_wait(&c2, 0), SHOAL_OK);
    CHECK_ST(shoal_cond_leave(&c1), SHOAL_TIMEOUT);     /* inner gives up */
    CHECK_ST(shoal_cond_wait(&c1, 0), SHOAL_OK);        /* outer resumes: notified */
    CHECK_EQ(shoal_cond_waiting(&c1), 0);
    CHECK_EQ(shoal_cond_waiting(&c2), 0);
    /* abandoned waits (no leave) do not pile up: the oldest memory is recycled */
    for (int i = 0; i < 20; i++)
        shoal_cond_enter(&c2);
    CHECK_EQ(shoal_cond_notify(&c2, -1), 20);
    shoal_cond_enter(&c2);
    CHECK_ST(shoal_cond_wait(&c2, 0), SHOAL_TIMEOUT);
    CHECK_ST(shoal_cond_leave(&c2), SHOAL_TIMEOUT);
    CHECK_EQ(shoal_cond_waiting(&c2), 0);
}

TEST(cond_dead_waiter_cannot_absorb_a_live_waiters_notify) {
    /* #10: closed generation {dead, ghost}; a first notify(1) leaves a ticket out, so a
     * live newcomer queues in the open generation; the ghost collects.  The second
     * notify(1) used to go to the dead waiter (retiring its generation) and the live
     * one timed out; now the dead one is pruned first and the live one is notified. */
    struct shared *s = shared_map(4096);
    pid_t dead, live;
    start_waiters(s, &dead, 1, 60 * SEC);
    kill_and_reap(dead);
    uint32_t ghost;
    lock(s);
    CHECK_ST(shoal_cond_enter_gen(&s->cond, &ghost), SHOAL_OK); /* alive, never sleeps */
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 1);
    unlock(s);
    start_waiters(s, &live, 1, 3 * SEC);
    CHECK_EQ(s->cond.next_waiting, 1);
    CHECK_ST(shoal_cond_wait_gen(&s->cond, ghost, 0), SHOAL_OK);
    CHECK_EQ(shoal_cond_waiting_live(&s->cond), 1); /* the dead one is not counted */
    double t0 = now_ms();
    lock(s);
    CHECK_EQ(shoal_cond_notify(&s->cond, 1), 1);
    unlock(s);
    await_at_least(&s->notified, 1, 2000);
    CHECK(now_ms() - t0 < 1000);
    join(live, 5000);
    CHECK_EQ(s->timed_out, 0);
    CHECK_EQ(cond_waiting(&s->cond), 0);
    for (int i = 0; i < SHOAL_WAITLIST_SLOTS; i++)
        CHECK_EQ(s->cond.list.token[i], 0); /* every slot given back */
}
