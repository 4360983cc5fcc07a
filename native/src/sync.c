/* Mutex, recursive mutex, semaphore, event and condition variable on shared memory.
 *
 * Mutex protocol (owner word + separate futex word):
 *
 *   lock:    CAS owner 0 -> token.  On failure: spin briefly, then
 *            waiters++; loop { s = seq; CAS owner 0 -> token; futex_wait(seq, s) }
 *   unlock:  owner -> 0; if waiters: seq++, futex_wake(seq, 1)
 *
 * Because a waiter bumps `waiters` before it re-reads `owner`, and the unlocker clears
 * `owner` before it reads `waiters` (all sequentially consistent), no wake-up is lost.
 * Sleepers wake every OWNER_CHECK_NS to test whether the holder still lives; a dead
 * holder's token is replaced by CAS, so exactly one waiter inherits the lock and is
 * told SHOAL_OWNER_DIED.  A waiter killed while counted in `waiters` only costs later
 * unlocks a spare futex_wake.
 */
#include "shoal_core.h"
#include "atomic_internal.h"

#define SPIN_TRIES 100
#define OWNER_CHECK_NS (50LL * 1000 * 1000)

/* Remaining time before deadline (deadline < 0: forever -> -1). */
static int64_t remaining(int64_t deadline) {
    if (deadline < 0)
        return -1;
    int64_t left = deadline - shoal_monotonic_ns();
    return left > 0 ? left : 0;
}

static int64_t deadline_after(int64_t timeout_ns) {
    return timeout_ns < 0 ? -1 : shoal_monotonic_ns() + timeout_ns;
}

static int64_t min_slice(int64_t left, int64_t slice) {
    return (left < 0 || left > slice) ? slice : left;
}

shoal_status shoal_mutex_trylock(shoal_mutex *m, uint64_t token) {
    uint64_t expected = 0;
    return cas64(&m->owner, &expected, token) ? SHOAL_OK : SHOAL_AGAIN;
}

/* If the holder `seen` is dead, take the lock from it. */
static shoal_status steal_from_dead(shoal_mutex *m, uint64_t token, uint64_t seen) {
    if (seen == 0 || shoal_token_alive(seen))
        return SHOAL_AGAIN;
    uint64_t expected = seen;
    if (!cas64(&m->owner, &expected, token))
        return SHOAL_AGAIN; /* another waiter inherited it first */
    st64(&m->dead_owner, seen);
    st32(&m->owner_died, 1);
    return SHOAL_OWNER_DIED;
}

shoal_status shoal_mutex_lock(shoal_mutex *m, uint64_t token, int64_t timeout_ns) {
    if (shoal_mutex_trylock(m, token) == SHOAL_OK)
        return SHOAL_OK;
    if (timeout_ns == 0)
        return steal_from_dead(m, token, ld64(&m->owner));
    for (int i = 0; i < SPIN_TRIES; i++) {
        cpu_relax();
        if (ld64(&m->owner) == 0 && shoal_mutex_trylock(m, token) == SHOAL_OK)
            return SHOAL_OK;
    }
    int64_t deadline = deadline_after(timeout_ns);
    shoal_status result;
    add32(&m->waiters, 1);
    for (;;) {
        uint32_t seq = ld32(&m->seq);
        uint64_t seen = 0;
        if (cas64(&m->owner, &seen, token)) {
            result = SHOAL_OK;
            break;
        }
        int64_t left = remaining(deadline);
        if (left == 0) {
            result = steal_from_dead(m, token, seen);
            if (result == SHOAL_AGAIN)
                result = SHOAL_TIMEOUT;
            break;
        }
        shoal_status st = shoal_wait32(&m->seq, seq, min_slice(left, OWNER_CHECK_NS));
        if (st == SHOAL_INTR) {
            result = SHOAL_INTR;
            break;
        }
        if (st == SHOAL_TIMEOUT) {
            /* nobody released for a whole slice: is the holder still alive? */
            result = steal_from_dead(m, token, ld64(&m->owner));
            if (result == SHOAL_OWNER_DIED)
                break;
        }
    }
    sub32(&m->waiters, 1);
    return result;
}

static shoal_status unlock_impl(shoal_mutex *m, int keep_died) {
    uint64_t owner = ld64(&m->owner);
    do {
        if (owner == 0)
            return SHOAL_NOT_OWNER;
        if (!keep_died)
            st32(&m->owner_died, 0);
        m->depth = 0;
        st64(&m->owner_thread, 0);
    } while (!cas64(&m->owner, &owner, 0));
    if (ld32(&m->waiters) > 0) {
        add32(&m->seq, 1);
        shoal_wake32(&m->seq, 1);
    }
    return SHOAL_OK;
}

shoal_status shoal_mutex_unlock(shoal_mutex *m) { return unlock_impl(m, 0); }
shoal_status shoal_mutex_unlock_keep_died(shoal_mutex *m) { return unlock_impl(m, 1); }

static int rmutex_held_by(shoal_mutex *m, uint64_t token, uint64_t thread) {
    return ld64(&m->owner) == token && ld64(&m->owner_thread) == thread;
}

static shoal_status rmutex_acquire(shoal_mutex *m, uint64_t token, uint64_t thread, int try_only,
                                   int64_t timeout_ns) {
    if (rmutex_held_by(m, token, thread)) {
        if (m->depth == UINT32_MAX)
            return SHOAL_OVERFLOW;
        m->depth++;
        return SHOAL_OK;
    }
    shoal_status st = try_only ? shoal_mutex_trylock(m, token) : shoal_mutex_lock(m, token, timeout_ns);
    if (st == SHOAL_OK || st == SHOAL_OWNER_DIED) {
        st64(&m->owner_thread, thread);
        m->depth = 1;
    }
    return st;
}

shoal_status shoal_rmutex_trylock(shoal_mutex *m, uint64_t token, uint64_t thread) {
    return rmutex_acquire(m, token, thread, 1, 0);
}

shoal_status shoal_rmutex_lock(shoal_mutex *m, uint64_t token, uint64_t thread, int64_t timeout_ns) {
    return rmutex_acquire(m, token, thread, 0, timeout_ns);
}

shoal_status shoal_rmutex_unlock(shoal_mutex *m, uint64_t token, uint64_t thread) {
    if (!rmutex_held_by(m, token, thread))
        return SHOAL_NOT_OWNER;
    if (--m->depth > 0)
        return SHOAL_OK;
    return unlock_impl(m, 0);
}

shoal_status shoal_rmutex_release_all(shoal_mutex *m, uint64_t token, uint64_t thread, uint32_t *depth) {
    if (!rmutex_held_by(m, token, thread))
        return SHOAL_NOT_OWNER;
    *depth = m->depth;
    return unlock_impl(m, 0);
}

/* ---- semaphore ---------------------------------------------------------------------- */

static int sem_trydown(shoal_semaphore *s) {
    uint32_t v = ld32(&s->value);
    while (v > 0)
        if (cas32(&s->value, &v, v - 1))
            return 1;
    return 0;
}

shoal_status shoal_sem_acquire(shoal_semaphore *s, int64_t timeout_ns) {
    if (sem_trydown(s))
        return SHOAL_OK;
    if (timeout_ns == 0)
        return SHOAL_AGAIN;
    int64_t deadline = deadline_after(timeout_ns);
    shoal_status result = SHOAL_TIMEOUT;
    add32(&s->waiters, 1);
    for (;;) {
        if (sem_trydown(s)) {
            result = SHOAL_OK;
            break;
        }
        int64_t left = remaining(deadline);
        if (left == 0) {
            result = SHOAL_TIMEOUT;
            break;
        }
        if (shoal_wait32(&s->value, 0, left) == SHOAL_INTR) {
            result = SHOAL_INTR;
            break;
        }
    }
    sub32(&s->waiters, 1);
    return result;
}

shoal_status shoal_sem_release(shoal_semaphore *s, uint32_t n) {
    uint32_t v = ld32(&s->value);
    uint32_t max = s->bounded ? s->maxvalue : UINT32_MAX;
    do {
        if (n > max || v > max - n)
            return SHOAL_OVERFLOW;
    } while (!cas32(&s->value, &v, v + n));
    if (ld32(&s->waiters) > 0)
        shoal_wake32(&s->value, (int)(n > 0x7fffffff ? 0x7fffffff : n));
    return SHOAL_OK;
}

/* ---- event ---------------------------------------------------------------------------- */

shoal_status shoal_event_wait(shoal_event *e, int64_t timeout_ns) {
    if (ld32(&e->flag))
        return SHOAL_OK;
    if (timeout_ns == 0)
        return SHOAL_TIMEOUT;
    int64_t deadline = deadline_after(timeout_ns);
    shoal_status result = SHOAL_OK;
    add32(&e->waiters, 1);
    while (!ld32(&e->flag)) {
        int64_t left = remaining(deadline);
        if (left == 0) {
            result = SHOAL_TIMEOUT;
            break;
        }
        if (shoal_wait32(&e->flag, 0, left) == SHOAL_INTR) {
            result = SHOAL_INTR;
            break;
        }
    }
    sub32(&e->waiters, 1);
    return result;
}

void shoal_event_set(shoal_event *e) {
    st32(&e->flag, 1);
    if (ld32(&e->waiters) > 0)
        shoal_wake32(&e->flag, -1);
}

void shoal_event_clear(shoal_event *e) { st32(&e->flag, 0); }

/* ---- condition variable ------------------------------------------------------------------ */

#define WAITER ((uint64_t)1 << 32)
#define TICKETS(s) ((uint32_t)(s))
#define WAITING(s) ((uint32_t)((s) >> 32))

void shoal_cond_enter(shoal_cond *c) { __atomic_fetch_add(&c->state, WAITER, SC); }

static int cond_take_ticket(shoal_cond *c) {
    uint64_t s = ld64(&c->state);
    while (TICKETS(s) > 0)
        if (cas64(&c->state, &s, s - WAITER - 1))
            return 1;
    return 0;
}

shoal_status shoal_cond_wait(shoal_cond *c, int64_t timeout_ns) {
    int64_t deadline = deadline_after(timeout_ns);
    for (;;) {
        /* read seq before looking for a ticket: a notify in between changes seq, so
         * the wait below returns at once instead of missing it */
        uint32_t seq = ld32(&c->seq);
        if (cond_take_ticket(c))
            return SHOAL_OK;
        int64_t left = remaining(deadline);
        if (left == 0)
            return SHOAL_TIMEOUT;
        if (shoal_wait32(&c->seq, seq, left) == SHOAL_INTR)
            return SHOAL_INTR;
    }
}

shoal_status shoal_cond_leave(shoal_cond *c) {
    uint64_t s = ld64(&c->state);
    for (;;) {
        if (TICKETS(s) > 0) {
            if (cas64(&c->state, &s, s - WAITER - 1))
                return SHOAL_OK;
        } else if (cas64(&c->state, &s, s - WAITER)) {
            return SHOAL_TIMEOUT;
        }
    }
}

uint32_t shoal_cond_notify(shoal_cond *c, int64_t n) {
    uint64_t s = ld64(&c->state);
    uint32_t grant;
    do {
        uint32_t idle = WAITING(s) - TICKETS(s);
        grant = (n < 0 || (uint64_t)n > idle) ? idle : (uint32_t)n;
        if (grant == 0)
            return 0;
    } while (!cas64(&c->state, &s, s + grant));
    add32(&c->seq, 1);
    shoal_wake32(&c->seq, grant > 0x7fffffff ? -1 : (int)grant);
    return grant;
}
