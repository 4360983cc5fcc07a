/* Fuzz-ish stress: random lock/trylock/timed-lock/unlock from several processes while
 * the test SIGKILLs them at random moments, with and without reaping them at once.
 *
 * Invariant: at most one process believes it holds the lock.  Each holder increments a
 * shared `inside` counter after acquiring and decrements it before releasing; an
 * acquirer told SHOAL_OK must find it 0.  One told SHOAL_OWNER_DIED inherits from a
 * killed holder, which may have died inside, and repairs it first: that repair is the
 * job owner_died exists for.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKERS 3
#define RUN_MS 1200

struct arena {
    shoal_mutex m;
    uint32_t inside;
    uint32_t stop;
    uint32_t violations;
    uint32_t recursive; /* 1: use the RLock entry points, nesting up to 3 deep */
    uint64_t holder;    /* token of whoever believes it holds the lock */
    uint64_t acquired;  /* successful acquisitions, all workers */
    uint64_t inherited; /* ... of which from a dead owner */
    uint64_t timeouts;
    char violation[256];
};

static void violation(struct arena *a, const char *what) {
    if (__atomic_fetch_add(&a->violations, 1, __ATOMIC_SEQ_CST) == 0)
        snprintf(a->violation, sizeof a->violation, "pid %d: %s", (int)getpid(), what);
}

/* Every forked worker uses thread id 1, as every forked child's main thread has the
 * same pthread_self(): the RLock must tell processes apart by token alone. */
#define THREAD 1

static shoal_status take(struct arena *a, uint64_t me, uint64_t *rng) {
    uint32_t how = rnd(rng) % 8;
    int64_t timeout = how < 2 ? 0 : how < 5 ? (int64_t)(rnd(rng) % 20) * MS : 2 * SEC;
    if (a->recursive) {
        if (how == 7)
            return shoal_rmutex_trylock(&a->m, me, THREAD);
        return shoal_rmutex_lock(&a->m, me, THREAD, timeout);
    }
    if (how == 7)
        return shoal_mutex_trylock(&a->m, me);
    return shoal_mutex_lock(&a->m, me, timeout);
}

static void worker(void *arg) {
    struct arena *a = arg;
    uint64_t me = shoal_self_token(), rng = 0;
    while (!__atomic_load_n(&a->stop, __ATOMIC_SEQ_CST)) {
        shoal_status st = take(a, me, &rng);
        if (st == SHOAL_AGAIN || st == SHOAL_TIMEOUT) {
            __atomic_fetch_add(&a->timeouts, 1, __ATOMIC_SEQ_CST);
            continue;
        }
        if (st != SHOAL_OK && st != SHOAL_OWNER_DIED) {
            violation(a, status_name(st));
            continue;
        }
        if (st == SHOAL_OWNER_DIED) {
            /* the repair: whoever died may have died inside */
            __atomic_fetch_add(&a->inherited, 1, __ATOMIC_SEQ_CST);
            __atomic_store_n(&a->inside, 0, __ATOMIC_SEQ_CST);
        }
        if (__atomic_fetch_add(&a->inside, 1, __ATOMIC_SEQ_CST) != 0)
            violation(a, "acquired while another holder was inside");
        shoal_store64(&a->holder, me);
        __atomic_fetch_add(&a->acquired, 1, __ATOMIC_SEQ_CST);
        int nest = a->recursive ? (int)(rnd(&rng) % 3) : 0;
        for (int i = 0; i < nest; i++) {
            shoal_status again = rnd(&rng) % 2 ? shoal_rmutex_trylock(&a->m, me, THREAD)
                                               : shoal_rmutex_lock(&a->m, me, THREAD, 0);
            if (again != SHOAL_OK)
                violation(a, "re-entering a held RLock failed");
        }
        uint32_t work = rnd(&rng) % 4;
        if (work == 0)
            sched_yield();
        else if (work == 1)
            sleep_ms(0.05);
        if (shoal_load64(&a->holder) != me || __atomic_load_n(&a->inside, __ATOMIC_SEQ_CST) != 1)
            violation(a, "another process got in while we held the lock");
        for (int i = 0; i < nest; i++)
            if (shoal_rmutex_unlock(&a->m, me, THREAD) != SHOAL_OK)
                violation(a, "nested RLock release failed");
        __atomic_fetch_sub(&a->inside, 1, __ATOMIC_SEQ_CST);
        st = a->recursive ? shoal_rmutex_unlock(&a->m, me, THREAD) : shoal_mutex_unlock(&a->m);
        if (st != SHOAL_OK)
            violation(a, "release failed");
    }
}

static void stress(int recursive) {
    struct arena *a = shared_map(4096);
    a->recursive = (uint32_t)recursive;
    uint64_t rng = 0;
    pid_t pids[WORKERS];
    int zombie[WORKERS] = {0};
    for (int i = 0; i < WORKERS; i++)
        pids[i] = spawn(worker, a);
    int kills = 0;
    /* RUN_MS, and on a busy machine longer, until enough kills (at most 5 s more) */
    double end = now_ms() + RUN_MS, hard_end = end + 5000;
    while ((now_ms() < end || kills < 30) && now_ms() < hard_end) {
        sleep_ms(5 + rnd(&rng) % 40);
        int i = (int)(rnd(&rng) % WORKERS);
        if (zombie[i]) { /* reap a zombie left earlier, and replace it */
            join_status(pids[i], 5000);
            zombie[i] = 0;
            pids[i] = spawn(worker, a);
            continue;
        }
        if (rnd(&rng) % 2) {
            kill_leave_zombie(pids[i]);
            zombie[i] = 1; /* its lock must be recoverable before it is reaped */
        } else {
            kill_and_reap(pids[i]);
            pids[i] = spawn(worker, a);
        }
        kills++;
    }
    __atomic_store_n(&a->stop, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < WORKERS; i++) {
        if (zombie[i])
            join_status(pids[i], 5000);
        else
            join(pids[i], 10000);
    }
    if (a->violations)
        harness_fail(__FILE__, __LINE__, "%u violations, first: %s", a->violations, a->violation);
    /* it ran: plenty of acquisitions, and killed holders were inherited */
    CHECK(a->acquired > 500);
    CHECK(kills > 10);
    CHECK(a->inherited > 0); /* some kill hit a holder (all missing: ~1e-8) */
    /* whoever holds it now, if anyone, is dead: the lock is still usable */
    shoal_status st = shoal_mutex_lock(&a->m, shoal_self_token(), 2 * SEC);
    CHECK(st == SHOAL_OK || st == SHOAL_OWNER_DIED);
    if (getenv("SHOAL_TEST_VERBOSE"))
        fprintf(stderr, "    %d kills, %llu acquired, %llu inherited, %llu timeouts\n", kills,
                (unsigned long long)a->acquired, (unsigned long long)a->inherited,
                (unsigned long long)a->timeouts);
}

TEST(stress_lock_with_random_sigkills) { stress(0); }

TEST(stress_rlock_with_random_sigkills) { stress(1); }
