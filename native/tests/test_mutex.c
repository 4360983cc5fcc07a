/* shoal_mutex (Lock) and its recursive use (RLock) across processes and threads. */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

struct shared {
    shoal_mutex m;
    uint64_t counter; /* plain, guarded by m */
    uint64_t holder;  /* token written by a helper once it holds m */
    uint32_t ready;
    uint32_t done;
    shoal_status st;
    double ms;
};

/* ---- mutual exclusion ----------------------------------------------------------------- */

#define WORKERS 3
#define ROUNDS 20000

static void increment_under_lock(void *arg) {
    struct shared *s = arg;
    uint64_t me = shoal_self_token();
    for (int i = 0; i < ROUNDS; i++) {
        /* mix the blocking path with the try path */
        if (i % 3 == 0) {
            while (shoal_mutex_trylock(&s->m, me) != SHOAL_OK)
                sched_yield();
        } else {
            CHECK_ST(shoal_mutex_lock(&s->m, me, 10 * SEC), SHOAL_OK);
        }
        CHECK_EQ(shoal_load64(&s->m.owner), me);
        uint64_t v = s->counter; /* a torn read-modify-write if exclusion fails */
        if (i % 64 == 0)
            sched_yield(); /* widen the window: let the others pile up as waiters */
        s->counter = v + 1;
        CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
    }
}

TEST(mutex_counter_across_processes_is_exact) {
    struct shared *s = shared_map(4096);
    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        pids[i] = spawn(increment_under_lock, s);
    for (int i = 0; i < WORKERS; i++)
        join(pids[i], 30000);
    CHECK_EQ(s->counter, (uint64_t)WORKERS * ROUNDS);
    CHECK_EQ(s->m.owner, 0);
    CHECK_EQ(s->m.owner_died, 0);
    CHECK_EQ(s->m.waiters, 0); /* everyone who waited said goodbye */
}

TEST(mutex_basic_statuses) {
    shoal_mutex m;
    memset(&m, 0, sizeof m);
    uint64_t me = shoal_self_token();
    CHECK_ST(shoal_mutex_unlock(&m), SHOAL_NOT_OWNER); /* never locked */
    CHECK_ST(shoal_mutex_trylock(&m, me), SHOAL_OK);
    CHECK_EQ(m.owner, me);
    CHECK_ST(shoal_mutex_trylock(&m, me), SHOAL_AGAIN); /* not recursive */
    CHECK_ST(shoal_mutex_lock(&m, me, 0), SHOAL_AGAIN); /* held by a live owner: me */
    CHECK_ST(shoal_mutex_unlock(&m), SHOAL_OK);
    CHECK_EQ(m.owner, 0);
    CHECK_ST(shoal_mutex_unlock(&m), SHOAL_NOT_OWNER); /* released twice */
    CHECK_ST(shoal_mutex_lock(&m, me, -1), SHOAL_OK);
    CHECK_ST(shoal_mutex_unlock(&m), SHOAL_OK);
}

/* ---- timeouts ------------------------------------------------------------------------- */

static void hold_until_done(void *arg) {
    struct shared *s = arg;
    CHECK_ST(shoal_mutex_lock(&s->m, shoal_self_token(), 5 * SEC), SHOAL_OK);
    shoal_store64(&s->holder, shoal_self_token());
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    while (!shoal_load32(&s->done))
        sleep_ms(1);
    CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
}

TEST(mutex_lock_times_out_on_time_while_a_live_holder_has_it) {
    struct shared *s = shared_map(4096);
    pid_t pid = spawn(hold_until_done, s);
    await_at_least(&s->ready, 1, 5000);
    uint64_t me = shoal_self_token();
    static const int64_t timeouts_ms[] = {1, 30, 120, 250};
    for (size_t i = 0; i < sizeof timeouts_ms / sizeof *timeouts_ms; i++) {
        double t0 = now_ms();
        CHECK_ST(shoal_mutex_lock(&s->m, me, timeouts_ms[i] * MS), SHOAL_TIMEOUT);
        CHECK_BETWEEN_MS(now_ms() - t0, timeouts_ms[i], timeouts_ms[i] + 250);
    }
    double t0 = now_ms();
    CHECK_ST(shoal_mutex_lock(&s->m, me, 0), SHOAL_AGAIN); /* no wait at all */
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 200);
    CHECK_EQ(s->m.waiters, 0);
    __atomic_store_n(&s->done, 1, __ATOMIC_SEQ_CST);
    join(pid, 5000);
    CHECK_ST(shoal_mutex_lock(&s->m, me, 0), SHOAL_OK);
}

TEST(mutex_lock_with_huge_timeout_waits_like_forever) {
    /* deadline = now + timeout must not overflow (signed overflow is undefined: UBSan
     * catches it; without it the deadline went negative, i.e. "forever" by accident) */
    struct shared *s = shared_map(4096);
    pid_t pid = spawn(hold_until_done, s);
    await_at_least(&s->ready, 1, 5000);
    uint64_t me = shoal_self_token();
    __atomic_store_n(&s->done, 1, __ATOMIC_SEQ_CST);
    CHECK_ST(shoal_mutex_lock(&s->m, me, INT64_MAX), SHOAL_OK);
    CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
    join(pid, 5000);
    CHECK_ST(shoal_mutex_lock(&s->m, me, INT64_MAX - 1), SHOAL_OK);
    CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
}

static void lock_and_report(void *arg) {
    struct shared *s = arg;
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    double t0 = now_ms();
    s->st = shoal_mutex_lock(&s->m, shoal_self_token(), 5 * SEC);
    s->ms = now_ms() - t0;
    if (s->st == SHOAL_OK || s->st == SHOAL_OWNER_DIED)
        shoal_mutex_unlock(&s->m);
    __atomic_fetch_add(&s->done, 1, __ATOMIC_SEQ_CST);
}

TEST(mutex_unlock_wakes_a_sleeping_waiter_at_once) {
    /* woken by the unlock, not by its 50 ms liveness poll: best of three tries, as
     * one can be slowed down by a busy machine */
    double best = 1e9;
    for (int attempt = 0; attempt < 3 && best > 25; attempt++) {
        struct shared *s = shared_map(4096);
        uint64_t me = shoal_self_token();
        CHECK_ST(shoal_mutex_lock(&s->m, me, 0), SHOAL_OK);
        pid_t pid = spawn(lock_and_report, s);
        await_at_least(&s->ready, 1, 5000);
        sleep_ms(120 + 17 * attempt); /* past its spinning, asleep on seq */
        CHECK_EQ(shoal_load32(&s->m.waiters), 1);
        double t0 = now_ms();
        CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
        await_at_least(&s->done, 1, 2000);
        double took = now_ms() - t0;
        best = took < best ? took : best;
        join(pid, 5000);
        CHECK_ST(s->st, SHOAL_OK);
    }
    CHECK_BETWEEN_MS(best, 0, 25);
}

static void on_usr1(int sig) { (void)sig; }

static void lock_until_interrupted(void *arg) {
    struct shared *s = arg;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    s->st = shoal_mutex_lock(&s->m, shoal_self_token(), 5 * SEC);
    __atomic_fetch_add(&s->done, 1, __ATOMIC_SEQ_CST);
}

TEST(mutex_lock_reports_a_signal_as_intr_and_stops_waiting) {
    struct shared *s = shared_map(4096);
    CHECK_ST(shoal_mutex_lock(&s->m, shoal_self_token(), 0), SHOAL_OK);
    pid_t pid = spawn(lock_until_interrupted, s);
    await_at_least(&s->ready, 1, 5000);
    sleep_ms(30);
    kill(pid, SIGUSR1);
    await_at_least(&s->done, 1, 1000);
    join(pid, 5000);
    CHECK_ST(s->st, SHOAL_INTR);
    CHECK_EQ(s->m.waiters, 0); /* the caller retries from scratch: it must not stay counted */
    CHECK_EQ(s->m.owner, shoal_self_token());
}

/* ---- dead owners ---------------------------------------------------------------------- */

static void hold_forever(void *arg) {
    struct shared *s = arg;
    CHECK_ST(shoal_mutex_lock(&s->m, shoal_self_token(), 5 * SEC), SHOAL_OK);
    shoal_store64(&s->holder, shoal_self_token());
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    pause();
}

static void check_inherits_from_dead_owner(struct shared *s, uint64_t dead) {
    uint64_t me = shoal_self_token();
    double t0 = now_ms();
    CHECK_ST(shoal_mutex_lock(&s->m, me, 5 * SEC), SHOAL_OWNER_DIED);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 300); /* one liveness poll (50 ms) and change */
    CHECK_EQ(s->m.owner, me);
    CHECK_EQ(s->m.owner_died, 1);
    CHECK_EQ(s->m.dead_owner, dead);
    CHECK_EQ(s->m.waiters, 0);
    CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
    CHECK_EQ(s->m.owner_died, 0); /* unlock: the new owner repaired whatever it guards */
    CHECK_EQ(s->m.dead_owner, dead); /* kept for reports */
    CHECK_ST(shoal_mutex_lock(&s->m, me, 0), SHOAL_OK); /* an ordinary lock again */
    CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
}

TEST(mutex_owner_killed_still_a_zombie) {
    struct shared *s = shared_map(4096);
    pid_t pid = spawn(hold_forever, s);
    await_at_least(&s->ready, 1, 5000);
    kill_leave_zombie(pid);
    check_inherits_from_dead_owner(s, s->holder);
    join_status(pid, 5000);
}

TEST(mutex_owner_killed_and_reaped) {
    struct shared *s = shared_map(4096);
    pid_t pid = spawn(hold_forever, s);
    await_at_least(&s->ready, 1, 5000);
    kill_and_reap(pid);
    check_inherits_from_dead_owner(s, s->holder);
}

TEST(mutex_owner_killed_while_a_waiter_sleeps) {
    struct shared *s = shared_map(4096);
    pid_t holder = spawn(hold_forever, s);
    await_at_least(&s->ready, 1, 5000);
    pid_t waiter = spawn(lock_and_report, s);
    await_at_least(&s->ready, 2, 5000);
    sleep_ms(80); /* asleep, polling the holder's liveness */
    double t0 = now_ms();
    kill_leave_zombie(holder);
    await_at_least(&s->done, 1, 2000);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 300);
    join(waiter, 5000);
    CHECK_ST(s->st, SHOAL_OWNER_DIED);
    join_status(holder, 5000);
}

TEST(mutex_trylock_timeout_zero_takes_from_a_dead_owner) {
    struct shared *s = shared_map(4096);
    pid_t pid = spawn(hold_forever, s);
    await_at_least(&s->ready, 1, 5000);
    uint64_t me = shoal_self_token();
    CHECK_ST(shoal_mutex_trylock(&s->m, me), SHOAL_AGAIN);
    CHECK_ST(shoal_mutex_lock(&s->m, me, 0), SHOAL_AGAIN); /* alive: no */
    kill_and_reap(pid);
    CHECK_ST(shoal_mutex_trylock(&s->m, me), SHOAL_AGAIN); /* trylock never inspects */
    CHECK_ST(shoal_mutex_lock(&s->m, me, 0), SHOAL_OWNER_DIED);
    CHECK_EQ(s->m.dead_owner, s->holder);
    /* unlock_keep_died hands the repair duty on */
    CHECK_ST(shoal_mutex_unlock_keep_died(&s->m), SHOAL_OK);
    CHECK_EQ(s->m.owner, 0);
    CHECK_EQ(s->m.owner_died, 1);
    CHECK_ST(shoal_mutex_lock(&s->m, me, 0), SHOAL_OK);
    CHECK_EQ(s->m.owner_died, 1); /* the new holder sees it */
    CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
    CHECK_EQ(s->m.owner_died, 0);
}

TEST(mutex_owner_with_reused_pid_is_dead) {
    /* the holder's pid now belongs to a live process (ours), but its start time differs */
    struct shared *s = shared_map(4096);
    uint64_t ghost = forged_token(getpid());
    s->m.owner = ghost;
    CHECK_ST(shoal_mutex_lock(&s->m, shoal_self_token(), 2 * SEC), SHOAL_OWNER_DIED);
    CHECK_EQ(s->m.dead_owner, ghost);
}

/* Several waiters race for one dead owner's lock: exactly one inherits it. */
static void race_for_dead_lock(void *arg) {
    struct shared *s = arg;
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    shoal_status st = shoal_mutex_lock(&s->m, shoal_self_token(), 5 * SEC);
    CHECK(st == SHOAL_OK || st == SHOAL_OWNER_DIED);
    if (st == SHOAL_OWNER_DIED)
        __atomic_fetch_add(&s->counter, 1, __ATOMIC_SEQ_CST);
    sleep_ms(5);
    CHECK_ST(shoal_mutex_unlock(&s->m), SHOAL_OK);
}

TEST(mutex_dead_owner_is_inherited_exactly_once) {
    struct shared *s = shared_map(4096);
    pid_t holder = spawn(hold_forever, s);
    await_at_least(&s->ready, 1, 5000);
    pid_t racers[3];
    for (int i = 0; i < 3; i++)
        racers[i] = spawn(race_for_dead_lock, s);
    await_at_least(&s->ready, 4, 5000);
    sleep_ms(20);
    kill_and_reap(holder);
    for (int i = 0; i < 3; i++)
        join(racers[i], 5000);
    CHECK_EQ(s->counter, 1);
    CHECK_EQ(s->m.owner, 0);
}

/* ---- recursive use (RLock) ----------------------------------------------------------- */

TEST(rmutex_recursion_and_not_owner) {
    shoal_mutex m;
    memset(&m, 0, sizeof m);
    uint64_t me = shoal_self_token();
    CHECK_ST(shoal_rmutex_unlock(&m, me, 1), SHOAL_NOT_OWNER);
    CHECK_ST(shoal_rmutex_lock(&m, me, 1, -1), SHOAL_OK);
    CHECK_ST(shoal_rmutex_lock(&m, me, 1, 0), SHOAL_OK);
    CHECK_ST(shoal_rmutex_trylock(&m, me, 1), SHOAL_OK);
    CHECK_EQ(m.depth, 3);
    CHECK_EQ(m.owner_thread, 1);
    /* another thread of this process, or another process with the same thread id */
    CHECK_ST(shoal_rmutex_trylock(&m, me, 2), SHOAL_AGAIN);
    CHECK_ST(shoal_rmutex_lock(&m, me, 2, 20 * MS), SHOAL_TIMEOUT);
    CHECK_ST(shoal_rmutex_unlock(&m, me, 2), SHOAL_NOT_OWNER);
    uint64_t other = forged_token(getpid() + 1);
    CHECK_ST(shoal_rmutex_unlock(&m, other, 1), SHOAL_NOT_OWNER);
    CHECK_EQ(m.depth, 3);
    CHECK_ST(shoal_rmutex_unlock(&m, me, 1), SHOAL_OK);
    CHECK_ST(shoal_rmutex_unlock(&m, me, 1), SHOAL_OK);
    CHECK_EQ(m.owner, me);
    CHECK_ST(shoal_rmutex_unlock(&m, me, 1), SHOAL_OK);
    CHECK_EQ(m.owner, 0);
    CHECK_EQ(m.owner_thread, 0);
    CHECK_ST(shoal_rmutex_unlock(&m, me, 1), SHOAL_NOT_OWNER);
    /* release_all (Condition.wait) gives back the depth to restore */
    uint32_t depth = 0;
    CHECK_ST(shoal_rmutex_lock(&m, me, 1, -1), SHOAL_OK);
    CHECK_ST(shoal_rmutex_lock(&m, me, 1, -1), SHOAL_OK);
    CHECK_ST(shoal_rmutex_release_all(&m, me, 2, &depth), SHOAL_NOT_OWNER);
    CHECK_ST(shoal_rmutex_release_all(&m, me, 1, &depth), SHOAL_OK);
    CHECK_EQ(depth, 2);
    CHECK_EQ(m.owner, 0);
    CHECK_ST(shoal_rmutex_release_all(&m, me, 1, &depth), SHOAL_NOT_OWNER);
}

TEST(rmutex_depth_overflow) {
    shoal_mutex m;
    memset(&m, 0, sizeof m);
    uint64_t me = shoal_self_token();
    CHECK_ST(shoal_rmutex_lock(&m, me, 1, -1), SHOAL_OK);
    m.depth = UINT32_MAX - 1;
    CHECK_ST(shoal_rmutex_lock(&m, me, 1, -1), SHOAL_OK);
    CHECK_ST(shoal_rmutex_lock(&m, me, 1, -1), SHOAL_OVERFLOW);
    CHECK_ST(shoal_rmutex_trylock(&m, me, 1), SHOAL_OVERFLOW);
    CHECK_EQ(m.depth, UINT32_MAX);
}

struct thread_arg {
    shoal_mutex *m;
    uint64_t token, thread;
    shoal_status st;
};

static void *rlock_in_thread(void *p) {
    struct thread_arg *a = p;
    a->st = shoal_rmutex_lock(a->m, a->token, a->thread, 30 * MS);
    return NULL;
}

static void *runlock_in_thread(void *p) {
    struct thread_arg *a = p;
    a->st = shoal_rmutex_unlock(a->m, a->token, a->thread);
    return NULL;
}

TEST(rmutex_other_thread_is_not_the_owner) {
    shoal_mutex m;
    memset(&m, 0, sizeof m);
    uint64_t me = shoal_self_token();
    CHECK_ST(shoal_rmutex_lock(&m, me, 1, -1), SHOAL_OK);
    pthread_t t;
    struct thread_arg a = {&m, me, 2, SHOAL_OK};
    pthread_create(&t, NULL, rlock_in_thread, &a);
    pthread_join(t, NULL);
    CHECK_ST(a.st, SHOAL_TIMEOUT);
    a.st = SHOAL_OK;
    pthread_create(&t, NULL, runlock_in_thread, &a);
    pthread_join(t, NULL);
    CHECK_ST(a.st, SHOAL_NOT_OWNER);
    CHECK_ST(shoal_rmutex_unlock(&m, me, 1), SHOAL_OK);
    pthread_create(&t, NULL, rlock_in_thread, &a);
    pthread_join(t, NULL);
    CHECK_ST(a.st, SHOAL_OK);
    CHECK_EQ(m.owner_thread, 2);
    CHECK_EQ(m.depth, 1);
}

TEST(rmutex_inherits_from_a_dead_owner) {
    struct shared *s = shared_map(4096);
    /* a dead process held it three levels deep, from its thread 7 */
    s->m.owner = forged_token(getpid());
    s->m.owner_thread = 7;
    s->m.depth = 3;
    uint64_t me = shoal_self_token();
    CHECK_ST(shoal_rmutex_trylock(&s->m, me, 7), SHOAL_AGAIN); /* not ours, even thread 7 */
    CHECK_ST(shoal_rmutex_lock(&s->m, me, 7, 2 * SEC), SHOAL_OWNER_DIED);
    CHECK_EQ(s->m.owner, me);
    CHECK_EQ(s->m.owner_thread, 7);
    CHECK_EQ(s->m.depth, 1); /* our depth, not the dead owner's */
    CHECK_EQ(s->m.owner_died, 1);
    CHECK_ST(shoal_rmutex_unlock(&s->m, me, 7), SHOAL_OK);
    CHECK_EQ(s->m.owner, 0);
    CHECK_EQ(s->m.owner_died, 0);
}

/* While one thread of a process takes an RLock from a dead owner, another thread of the
 * same process whose thread id equals the dead holder's must not mistake the
 * half-inherited lock for one it already holds (thread ids repeat across processes:
 * every forked child's main thread has its parent's pthread_self()). */
struct steal_race {
    shoal_mutex *m;
    uint64_t me;
    uint32_t go;      /* bumped by the main thread to start a round */
    uint32_t seen;    /* rounds the prober has finished */
    uint32_t stop;
    uint32_t wrongly; /* rounds where the prober thought it held the lock */
};

static void *probe_as_the_dead_thread(void *p) {
    struct steal_race *r = p;
    uint32_t round = 0;
    for (;;) {
        while (__atomic_load_n(&r->go, __ATOMIC_SEQ_CST) == round) {
            if (__atomic_load_n(&r->stop, __ATOMIC_SEQ_CST))
                return NULL;
        }
        round++;
        /* until the inheritor is done, thread 7's trylock must fail every time */
        for (;;) {
            uint64_t owner = shoal_load64(&r->m->owner);
            int finished = owner == r->me && shoal_load64(&r->m->owner_thread) == 1;
            if (shoal_rmutex_trylock(r->m, r->me, 7) == SHOAL_OK) {
                __atomic_fetch_add(&r->wrongly, 1, __ATOMIC_SEQ_CST);
                break;
            }
            if (finished)
                break;
        }
        __atomic_store_n(&r->seen, round, __ATOMIC_SEQ_CST);
    }
}

TEST(rmutex_inheritance_is_never_half_visible_to_sibling_threads) {
    shoal_mutex m;
    struct steal_race r = {&m, shoal_self_token(), 0, 0, 0, 0};
    uint64_t ghost = forged_token(getpid());
    pthread_t t;
    pthread_create(&t, NULL, probe_as_the_dead_thread, &r);
    const uint32_t rounds = 3000;
    for (uint32_t i = 1; i <= rounds; i++) {
        memset(&m, 0, sizeof m);
        shoal_store64(&m.owner_thread, 7); /* what the dead holder left behind */
        m.depth = 1;
        shoal_store64(&m.owner, ghost);
        __atomic_store_n(&r.go, i, __ATOMIC_SEQ_CST);
        shoal_status st = shoal_rmutex_lock(&m, r.me, 1, 0); /* timeout 0: steal, no sleep */
        CHECK(st == SHOAL_OWNER_DIED);
        while (__atomic_load_n(&r.seen, __ATOMIC_SEQ_CST) != i) {
        }
        if (__atomic_load_n(&r.wrongly, __ATOMIC_SEQ_CST))
            break;
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(t, NULL);
    CHECK_EQ(r.wrongly, 0);
}
