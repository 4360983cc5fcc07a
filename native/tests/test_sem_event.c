/* shoal_semaphore and shoal_event across processes. */
#define _GNU_SOURCE
#include "harness.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

struct shared {
    shoal_semaphore sem;
    shoal_event ev;
    uint32_t ready;
    uint32_t done;
    uint32_t ok; /* helpers that got what they waited for */
    uint32_t timed_out;
    uint32_t other;
    double ms[8];
};

/* ---- semaphore ------------------------------------------------------------------------ */

TEST(semaphore_counts) {
    shoal_semaphore s = {2, 0, 0, 0, {{0}, 0}};
    CHECK_ST(shoal_sem_acquire(&s, 0), SHOAL_OK);
    CHECK_ST(shoal_sem_acquire(&s, -1), SHOAL_OK);
    CHECK_EQ(s.value, 0);
    CHECK_ST(shoal_sem_acquire(&s, 0), SHOAL_AGAIN);
    double t0 = now_ms();
    CHECK_ST(shoal_sem_acquire(&s, 50 * MS), SHOAL_TIMEOUT);
    CHECK_BETWEEN_MS(now_ms() - t0, 50, 350);
    CHECK_EQ(s.waiters, 0);
    CHECK_ST(shoal_sem_release(&s, 3), SHOAL_OK);
    CHECK_EQ(s.value, 3);
    CHECK_ST(shoal_sem_release(&s, 0), SHOAL_OK); /* releasing nothing is allowed */
    CHECK_EQ(s.value, 3);
}

TEST(semaphore_bounded_overflow_leaves_the_value) {
    shoal_semaphore s = {1, 0, 2, 1, {{0}, 0}}; /* BoundedSemaphore(2) with one taken */
    CHECK_ST(shoal_sem_release(&s, 2), SHOAL_OVERFLOW);
    CHECK_EQ(s.value, 1);
    CHECK_ST(shoal_sem_release(&s, 1), SHOAL_OK);
    CHECK_EQ(s.value, 2);
    CHECK_ST(shoal_sem_release(&s, 1), SHOAL_OVERFLOW);
    CHECK_EQ(s.value, 2);
    CHECK_ST(shoal_sem_release(&s, UINT32_MAX), SHOAL_OVERFLOW); /* n alone passes the bound */
    CHECK_EQ(s.value, 2);
    /* unbounded: the 32-bit count itself is the bound */
    shoal_semaphore u = {UINT32_MAX - 1, 0, 0, 0, {{0}, 0}};
    CHECK_ST(shoal_sem_release(&u, 1), SHOAL_OK);
    CHECK_ST(shoal_sem_release(&u, 1), SHOAL_OVERFLOW);
    CHECK_EQ(u.value, UINT32_MAX);
    shoal_semaphore v = {5, 0, 0, 0, {{0}, 0}};
    CHECK_ST(shoal_sem_release(&v, UINT32_MAX), SHOAL_OVERFLOW);
    CHECK_EQ(v.value, 5);
}

static void acquire_one(void *arg) {
    struct shared *s = arg;
    int me = (int)__atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    double t0 = now_ms();
    shoal_status st = shoal_sem_acquire(&s->sem, 3 * SEC);
    s->ms[me] = now_ms() - t0;
    __atomic_fetch_add(st == SHOAL_OK ? &s->ok : &s->timed_out, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&s->done, 1, __ATOMIC_SEQ_CST);
}

TEST(semaphore_release_wakes_sleepers_in_other_processes) {
    struct shared *s = shared_map(4096);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = spawn(acquire_one, s);
    await_at_least(&s->ready, 3, 5000);
    sleep_ms(50);
    CHECK_EQ(shoal_load32(&s->sem.waiters), 3);
    double t0 = now_ms();
    CHECK_ST(shoal_sem_release(&s->sem, 2), SHOAL_OK);
    await_at_least(&s->ok, 2, 2000);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 500);
    sleep_ms(30);
    CHECK_EQ(shoal_load32(&s->ok), 2); /* two units: two waiters, not three */
    CHECK_EQ(shoal_load32(&s->sem.value), 0);
    CHECK_ST(shoal_sem_release(&s->sem, 1), SHOAL_OK);
    for (int i = 0; i < 3; i++)
        join(pids[i], 5000);
    CHECK_EQ(s->ok, 3);
    CHECK_EQ(s->sem.waiters, 0);
}

TEST(semaphore_waiter_recovers_a_lost_wakeup) {
    /* A release's wake-up can be lost: it may go to a waiter that is SIGKILLed before it
     * takes the unit.  Simulate exactly that (a unit appears, nobody wakes anyone): a
     * sleeper must still notice within its re-check period instead of sleeping on. */
    struct shared *s = shared_map(4096);
    pid_t pid = spawn(acquire_one, s);
    await_at_least(&s->ready, 1, 5000);
    sleep_ms(50);
    __atomic_store_n(&s->sem.value, 1, __ATOMIC_SEQ_CST); /* no shoal_wake32 */
    await_at_least(&s->done, 1, 2000);
    join(pid, 5000);
    CHECK_EQ(s->ok, 1);
    CHECK(s->ms[0] < 1000);
}

static void on_usr1(int sig) { (void)sig; }

static void acquire_until_interrupted(void *arg) {
    struct shared *s = arg;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    shoal_status a = shoal_sem_acquire(&s->sem, 5 * SEC);
    shoal_status b = shoal_event_wait(&s->ev, 5 * SEC);
    s->other = (a == SHOAL_INTR) + 2 * (b == SHOAL_INTR);
    __atomic_fetch_add(&s->done, 1, __ATOMIC_SEQ_CST);
}

TEST(semaphore_and_event_report_signals_as_intr) {
    struct shared *s = shared_map(4096);
    pid_t pid = spawn(acquire_until_interrupted, s);
    await_at_least(&s->ready, 1, 5000);
    sleep_ms(30);
    kill(pid, SIGUSR1);
    double deadline = now_ms() + 2000;
    while (shoal_load32(&s->ev.waiters) == 0 && now_ms() < deadline)
        sleep_ms(1);
    sleep_ms(20);
    kill(pid, SIGUSR1);
    await_at_least(&s->done, 1, 2000);
    join(pid, 5000);
    CHECK_EQ(s->other, 3);
    CHECK_EQ(s->sem.waiters, 0);
    CHECK_EQ(s->ev.waiters, 0);
}

/* ---- event ---------------------------------------------------------------------------- */

TEST(event_basics) {
    shoal_event e = {0, 0, {{0}, 0}};
    CHECK_ST(shoal_event_wait(&e, 0), SHOAL_TIMEOUT);
    double t0 = now_ms();
    CHECK_ST(shoal_event_wait(&e, 40 * MS), SHOAL_TIMEOUT);
    CHECK_BETWEEN_MS(now_ms() - t0, 40, 350);
    shoal_event_set(&e);
    shoal_event_set(&e); /* idempotent */
    CHECK_EQ(e.flag, 1);
    CHECK_ST(shoal_event_wait(&e, 0), SHOAL_OK);
    CHECK_ST(shoal_event_wait(&e, -1), SHOAL_OK);
    shoal_event_clear(&e);
    CHECK_EQ(e.flag, 0);
    CHECK_ST(shoal_event_wait(&e, 0), SHOAL_TIMEOUT);
    CHECK_EQ(e.waiters, 0);
}

static void wait_for_event(void *arg) {
    struct shared *s = arg;
    int me = (int)__atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    double t0 = now_ms();
    shoal_status st = shoal_event_wait(&s->ev, 3 * SEC);
    s->ms[me] = now_ms() - t0;
    __atomic_fetch_add(st == SHOAL_OK ? &s->ok : &s->timed_out, 1, __ATOMIC_SEQ_CST);
}

TEST(event_set_wakes_every_waiter_in_every_process) {
    struct shared *s = shared_map(4096);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = spawn(wait_for_event, s);
    await_at_least(&s->ready, 3, 5000);
    sleep_ms(50);
    CHECK_EQ(shoal_load32(&s->ev.waiters), 3);
    double t0 = now_ms();
    shoal_event_set(&s->ev);
    await_at_least(&s->ok, 3, 2000);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 500);
    for (int i = 0; i < 3; i++)
        join(pids[i], 5000);
    CHECK_EQ(s->timed_out, 0);
    CHECK_EQ(s->ev.waiters, 0);
}

/* ---- waiters killed while blocked (#10) -------------------------------------------------- */

static void acquire_forever(void *arg) {
    struct shared *s = arg;
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    shoal_sem_acquire(&s->sem, 60 * SEC);
}

static void wait_event_forever(void *arg) {
    struct shared *s = arg;
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
    shoal_event_wait(&s->ev, 60 * SEC);
}

TEST(semaphore_and_event_forget_waiters_killed_while_blocked) {
    struct shared *s = shared_map(4096);
    pid_t a = spawn(acquire_forever, s), b = spawn(wait_event_forever, s);
    await_at_least(&s->ready, 2, 5000);
    double deadline = now_ms() + 2000;
    while ((shoal_load32(&s->sem.waiters) == 0 || shoal_load32(&s->ev.waiters) == 0) &&
           now_ms() < deadline)
        sleep_ms(1);
    CHECK_EQ(shoal_waitlist_live(&s->sem.list, shoal_load32(&s->sem.waiters)), 1);
    kill_and_reap(a);
    kill_and_reap(b);
    /* still counted (they could not leave), but not alive */
    CHECK_EQ(shoal_load32(&s->sem.waiters), 1);
    CHECK_EQ(shoal_waitlist_live(&s->sem.list, 1), 0);
    CHECK_EQ(shoal_waitlist_live(&s->ev.list, 1), 0);
    /* the next release / set takes them off: no wake-up for the dead after that */
    CHECK_ST(shoal_sem_release(&s->sem, 1), SHOAL_OK);
    shoal_event_set(&s->ev);
    CHECK_EQ(shoal_load32(&s->sem.waiters), 0);
    CHECK_EQ(shoal_load32(&s->ev.waiters), 0);
    for (int i = 0; i < SHOAL_WAITLIST_SLOTS; i++)
        CHECK_EQ(s->sem.list.token[i] | s->ev.list.token[i], 0);
    CHECK_EQ(shoal_waitlist_prune(&s->sem.list, &s->sem.waiters), 0); /* nothing twice */
}

TEST(waitlist_slots_join_leave_and_prune_only_the_dead) {
    shoal_waitlist l;
    memset(&l, 0, sizeof l);
    uint32_t count = 0;
    uint64_t me = shoal_self_token();
    int slots[SHOAL_WAITLIST_SLOTS + 1];
    for (int i = 0; i <= SHOAL_WAITLIST_SLOTS; i++) {
        count++;
        slots[i] = shoal_waitlist_join(&l, me, NULL, 0);
    }
    CHECK_EQ(slots[SHOAL_WAITLIST_SLOTS], (uint64_t)-1); /* full: counted, untracked */
    CHECK_EQ(shoal_waitlist_prune(&l, &count), 0); /* all alive */
    CHECK_EQ(count, SHOAL_WAITLIST_SLOTS + 1);
    shoal_waitlist_leave(&l, slots[2], me);
    CHECK_EQ(l.token[slots[2]], 0);
    /* a dead token in slot 2: the prune frees it and counts it off once */
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    CHECK(child > 0);
    kill_and_reap(child);
    uint64_t dead = (uint64_t)(uint32_t)child << 32 | 1;
    l.token[slots[2]] = dead;
    CHECK_EQ(shoal_waitlist_live(&l, count), count - 1);
    CHECK_EQ(shoal_waitlist_prune(&l, &count), 1);
    CHECK_EQ(count, SHOAL_WAITLIST_SLOTS);
    CHECK_EQ(l.token[slots[2]], 0);
    shoal_waitlist_leave(&l, slots[2], dead); /* a late leave of a freed slot: no-op */
    CHECK_EQ(shoal_waitlist_join(&l, me, NULL, 0), slots[2]); /* the slot is free again */
    /* rate limit: a prune just ran */
    l.token[slots[2]] = dead;
    CHECK_EQ(shoal_waitlist_prune_due(&l, &count), 0);
    l.last_prune_ns = 0;
    CHECK_EQ(shoal_waitlist_prune_due(&l, &count), 1);
    CHECK_EQ(count, SHOAL_WAITLIST_SLOTS - 1);
    /* a dead waiter marked LEAVING was taking itself off: freed, not counted off */
    l.token[slots[2]] = dead | SHOAL_WAITLIST_LEAVING;
    CHECK_EQ(shoal_waitlist_live(&l, count), count);
    CHECK_EQ(shoal_waitlist_prune(&l, &count), 1);
    CHECK_EQ(count, SHOAL_WAITLIST_SLOTS - 1);
    CHECK_EQ(l.token[slots[2]], 0);
    /* marking is the owner's, and leave takes a marked slot back too */
    int mine = shoal_waitlist_join(&l, me, NULL, 0);
    shoal_waitlist_mark_leaving(&l, mine, me, 1);
    CHECK_EQ(l.token[mine], me | SHOAL_WAITLIST_LEAVING);
    shoal_waitlist_mark_leaving(&l, mine, me, 0);
    CHECK_EQ(l.token[mine], me);
    shoal_waitlist_mark_leaving(&l, mine, me, 1);
    shoal_waitlist_leave(&l, mine, me);
    CHECK_EQ(l.token[mine], 0);
}
