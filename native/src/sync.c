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
 * told SHOAL_OWNER_DIED.  The same poll covers a wake-up that went to a waiter killed
 * before it could use it.  A waiter killed while counted in `waiters` stays counted
 * unless the caller keeps a waitlist beside the mutex (the _listed calls, shoal.Lock):
 * then the first release after the death takes it off (see shoal_waitlist); without
 * one (mutexes embedded in rings, dicts, segment headers) it costs later unlocks a
 * spare futex_wake.
 *
 * Every wait below sleeps in slices (OWNER_CHECK_NS for the mutex, RECHECK_NS for the
 * others) and re-checks its condition after each, for the same reason: a process can
 * be SIGKILLed between being woken and acting on it, and then nobody else is woken.
 * A slice that runs out is not reported as SHOAL_INTR even when a signal handler ran
 * meanwhile (FUTEX_WAIT returns ETIMEDOUT), so a caller that must act on signals soon
 * passes short timeouts and calls again (shoal._core does: every 50 ms).
 */
#include "shoal_core.h"
#include "atomic_internal.h"
#include <stddef.h>

#define SPIN_TRIES 100
#define OWNER_CHECK_NS (50LL * 1000 * 1000)
#define RECHECK_NS (200LL * 1000 * 1000)

/* An absolute deadline on the monotonic clock, -1 for none.  Saturates rather than
 * overflow (signed overflow is undefined; it used to turn a huge timeout into "forever"
 * only by accident). */
static int64_t deadline_after(int64_t timeout_ns) {
    if (timeout_ns < 0)
        return -1;
    int64_t now = shoal_monotonic_ns();
    return timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
}

/* Remaining time before deadline (deadline < 0: forever -> -1). */
static int64_t remaining(int64_t deadline) {
    if (deadline < 0)
        return -1;
    int64_t left = deadline - shoal_monotonic_ns();
    return left > 0 ? left : 0;
}

static int64_t min_slice(int64_t left, int64_t slice) {
    return (left < 0 || left > slice) ? slice : left;
}

/* ---- waiter lists (protocol in shoal_core.h) ------------------------------------------ */

#define WAITLIST_MARKS (SHOAL_WAITLIST_FILLING | SHOAL_WAITLIST_LEAVING)

int shoal_waitlist_join(shoal_waitlist *l, uint64_t token, uint16_t *tags, uint16_t tag) {
    if (!l)
        return -1;
    for (int i = 0; i < SHOAL_WAITLIST_SLOTS; i++) {
        uint64_t expected = 0;
        if (ld64(&l->token[i]) == 0 && cas64(&l->token[i], &expected, token | SHOAL_WAITLIST_FILLING)) {
            if (tags)
                __atomic_store_n(&tags[i], tag, __ATOMIC_SEQ_CST);
            st64(&l->token[i], token); /* the slot is ours: nobody else writes a FILLING one */
            return i;
        }
    }
    return -1;
}

static int slot_ok(int slot) { return slot >= 0 && slot < SHOAL_WAITLIST_SLOTS; }

void shoal_waitlist_leave(shoal_waitlist *l, int slot, uint64_t token) {
    if (!l || !slot_ok(slot))
        return;
    /* fails only if a prune took it, which it does to the dead only */
    uint64_t expected = token;
    if (!cas64(&l->token[slot], &expected, 0) && expected == (token | SHOAL_WAITLIST_LEAVING))
        cas64(&l->token[slot], &expected, 0);
}

void shoal_waitlist_mark_leaving(shoal_waitlist *l, int slot, uint64_t token, int leaving) {
    if (!l || !slot_ok(slot))
        return;
    uint64_t marked = token | SHOAL_WAITLIST_LEAVING;
    uint64_t expected = leaving ? token : marked;
    cas64(&l->token[slot], &expected, leaving ? marked : token);
}

/* Take one off *count unless it is 0 already. */
static void count_down(uint32_t *count) {
    uint32_t v = ld32(count);
    while (v > 0 && !cas32(count, &v, v - 1))
        ;
}

/* The word in slot i (a LEAVING mark kept) if it belongs to a dead waiter; 0 otherwise. */
static uint64_t dead_token(const shoal_waitlist *l, int i) {
    uint64_t t = ld64(&l->token[i]);
    if (t == 0 || (t & SHOAL_WAITLIST_FILLING) || shoal_token_alive(t & ~WAITLIST_MARKS))
        return 0;
    return t;
}

/* Whether slot i holds a dead waiter that is still counted (not marked LEAVING). */
static int counted_dead(const shoal_waitlist *l, int i) {
    uint64_t t = dead_token(l, i);
    return t != 0 && !(t & SHOAL_WAITLIST_LEAVING);
}

/* Free slot i if it still holds the dead token t: 1 if this call freed it. */
static int free_dead(shoal_waitlist *l, int i, uint64_t t) {
    uint64_t expected = t;
    return cas64(&l->token[i], &expected, 0);
}

uint32_t shoal_waitlist_prune(shoal_waitlist *l, uint32_t *count) {
    uint32_t freed = 0;
    st64(&l->last_prune_ns, (uint64_t)shoal_monotonic_ns());
    for (int i = 0; i < SHOAL_WAITLIST_SLOTS; i++) {
        uint64_t t = dead_token(l, i);
        if (t && free_dead(l, i, t)) {
            freed++;
            if (count && !(t & SHOAL_WAITLIST_LEAVING))
                count_down(count);
        }
    }
    return freed;
}

uint32_t shoal_waitlist_prune_due(shoal_waitlist *l, uint32_t *count) {
    if (!l || (count && ld32(count) == 0))
        return 0;
    uint64_t last = ld64(&l->last_prune_ns);
    uint64_t now = (uint64_t)shoal_monotonic_ns();
    if (last != 0 && now - last < (uint64_t)SHOAL_WAITLIST_PRUNE_NS)
        return 0;
    /* one pruner at a time: the others would only repeat its liveness checks */
    if (!cas64(&l->last_prune_ns, &last, now))
        return 0;
    return shoal_waitlist_prune(l, count);
}

uint32_t shoal_waitlist_live(const shoal_waitlist *l, uint32_t count) {
    uint32_t dead = 0;
    for (int i = 0; i < SHOAL_WAITLIST_SLOTS; i++)
        if (counted_dead(l, i))
            dead++;
    return dead < count ? count - dead : 0;
}

int shoal_waiter_join(uint32_t *count, shoal_waitlist *l) {
    add32(count, 1);
    return shoal_waitlist_join(l, shoal_self_token(), NULL, 0);
}

void shoal_waiter_leave(uint32_t *count, shoal_waitlist *l, int slot) {
    shoal_waitlist_leave(l, slot, shoal_self_token());
    sub32(count, 1);
}

/* `depth` is only changed by the holder, but others read it (statistics, repr): relaxed
 * atomics keep those reads defined; the owner CAS orders the holder's own accesses. */
static uint32_t depth_get(const shoal_mutex *m) { return __atomic_load_n(&m->depth, __ATOMIC_RELAXED); }
static void depth_set(shoal_mutex *m, uint32_t d) { __atomic_store_n(&m->depth, d, __ATOMIC_RELAXED); }

shoal_status shoal_mutex_trylock(shoal_mutex *m, uint64_t token) {
    uint64_t expected = 0;
    return cas64(&m->owner, &expected, token) ? SHOAL_OK : SHOAL_AGAIN;
}

/* If the holder `seen` is dead, take the lock from it.  thread != 0: for an RLock,
 * which is handed over in two steps (see SHOAL_MUTEX_HANDOVER) so that the new owner's
 * token never appears next to the dead holder's owner_thread and depth. */
static shoal_status steal_from_dead(shoal_mutex *m, uint64_t token, uint64_t thread, uint64_t seen) {
    uint64_t holder = seen & ~SHOAL_MUTEX_HANDOVER; /* a handover can die half-way too */
    if (seen == 0 || shoal_token_alive(holder))
        return SHOAL_AGAIN;
    uint64_t expected = seen;
    if (!cas64(&m->owner, &expected, thread ? token | SHOAL_MUTEX_HANDOVER : token))
        return SHOAL_AGAIN; /* another waiter inherited it first */
    st64(&m->dead_owner, holder);
    st32(&m->owner_died, 1);
    if (thread) {
        st64(&m->owner_thread, thread);
        depth_set(m, 1);
        st64(&m->owner, token); /* nobody else writes a HANDOVER owner: a plain store */
    }
    return SHOAL_OWNER_DIED;
}

static shoal_status mutex_lock(shoal_mutex *m, shoal_waitlist *l, uint64_t token, uint64_t thread,
                               int64_t timeout_ns) {
    if (shoal_mutex_trylock(m, token) == SHOAL_OK)
        return SHOAL_OK;
    if (timeout_ns == 0)
        return steal_from_dead(m, token, thread, ld64(&m->owner));
    for (int i = 0; i < SPIN_TRIES; i++) {
        cpu_relax();
        if (ld64(&m->owner) == 0 && shoal_mutex_trylock(m, token) == SHOAL_OK)
            return SHOAL_OK;
    }
    int64_t deadline = deadline_after(timeout_ns);
    shoal_status result;
    add32(&m->waiters, 1);
    int slot = shoal_waitlist_join(l, token, NULL, 0);
    for (;;) {
        uint32_t seq = ld32(&m->seq);
        uint64_t seen = 0;
        if (cas64(&m->owner, &seen, token)) {
            result = SHOAL_OK;
            break;
        }
        int64_t left = remaining(deadline);
        if (left == 0) {
            result = steal_from_dead(m, token, thread, seen);
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
            result = steal_from_dead(m, token, thread, ld64(&m->owner));
            if (result == SHOAL_OWNER_DIED)
                break;
        }
    }
    shoal_waitlist_leave(l, slot, token);
    sub32(&m->waiters, 1);
    return result;
}

shoal_status shoal_mutex_lock(shoal_mutex *m, uint64_t token, int64_t timeout_ns) {
    return mutex_lock(m, NULL, token, 0, timeout_ns);
}

shoal_status shoal_mutex_lock_listed(shoal_mutex *m, shoal_waitlist *l, uint64_t token,
                                     int64_t timeout_ns) {
    return mutex_lock(m, l, token, 0, timeout_ns);
}

static shoal_status unlock_impl(shoal_mutex *m, int keep_died) {
    uint64_t owner = ld64(&m->owner);
    do {
        /* free, or an RLock half-way to a new owner, who will not expect to lose it */
        if (owner == 0 || (owner & SHOAL_MUTEX_HANDOVER))
            return SHOAL_NOT_OWNER;
        if (!keep_died)
            st32(&m->owner_died, 0);
        depth_set(m, 0);
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

shoal_status shoal_mutex_unlock_dead(shoal_mutex *m, uint64_t dead) {
    uint64_t owner = ld64(&m->owner);
    if (owner == 0 || (owner & SHOAL_MUTEX_HANDOVER))
        return SHOAL_NOT_OWNER;
    st64(&m->dead_owner, dead);
    st32(&m->owner_died, 1);
    return unlock_impl(m, 1);
}

/* Only the holder's own thread can see its own (token, thread) here: every path that
 * makes `owner` equal a token either clears owner_thread first (unlock) or writes it
 * before publishing the token (inheritance). */
static int rmutex_held_by(shoal_mutex *m, uint64_t token, uint64_t thread) {
    return ld64(&m->owner) == token && ld64(&m->owner_thread) == thread;
}

static shoal_status rmutex_acquire(shoal_mutex *m, shoal_waitlist *l, uint64_t token, uint64_t thread,
                                   int try_only, int64_t timeout_ns) {
    if (rmutex_held_by(m, token, thread)) {
        uint32_t depth = depth_get(m);
        if (depth == UINT32_MAX)
            return SHOAL_OVERFLOW;
        depth_set(m, depth + 1);
        return SHOAL_OK;
    }
    shoal_status st = try_only ? shoal_mutex_trylock(m, token) : mutex_lock(m, l, token, thread, timeout_ns);
    if (st == SHOAL_OK) { /* (an inheritance wrote these before it published the owner) */
        st64(&m->owner_thread, thread);
        depth_set(m, 1);
    }
    return st;
}

shoal_status shoal_rmutex_trylock(shoal_mutex *m, uint64_t token, uint64_t thread) {
    return rmutex_acquire(m, NULL, token, thread, 1, 0);
}

shoal_status shoal_rmutex_lock(shoal_mutex *m, uint64_t token, uint64_t thread, int64_t timeout_ns) {
    return rmutex_acquire(m, NULL, token, thread, 0, timeout_ns);
}

shoal_status shoal_rmutex_lock_listed(shoal_mutex *m, shoal_waitlist *l, uint64_t token,
                                      uint64_t thread, int64_t timeout_ns) {
    return rmutex_acquire(m, l, token, thread, 0, timeout_ns);
}

shoal_status shoal_rmutex_unlock(shoal_mutex *m, uint64_t token, uint64_t thread) {
    if (!rmutex_held_by(m, token, thread))
        return SHOAL_NOT_OWNER;
    uint32_t depth = depth_get(m);
    if (depth > 1) {
        depth_set(m, depth - 1);
        return SHOAL_OK;
    }
    return unlock_impl(m, 0);
}

shoal_status shoal_rmutex_release_all(shoal_mutex *m, uint64_t token, uint64_t thread, uint32_t *depth) {
    if (!rmutex_held_by(m, token, thread))
        return SHOAL_NOT_OWNER;
    *depth = depth_get(m);
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
    uint64_t token = shoal_self_token();
    add32(&s->waiters, 1);
    int slot = shoal_waitlist_join(&s->list, token, NULL, 0);
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
        /* in slices: release wakes n sleepers, and one of them may be killed before it
         * takes its unit; the others must find the unit anyway */
        if (shoal_wait32(&s->value, 0, min_slice(left, RECHECK_NS)) == SHOAL_INTR) {
            result = SHOAL_INTR;
            break;
        }
    }
    shoal_waitlist_leave(&s->list, slot, token);
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
    if (n > 0 && ld32(&s->waiters) > 0) {
        shoal_wake32(&s->value, (int)(n > 0x7fffffff ? 0x7fffffff : n));
        shoal_waitlist_prune_due(&s->list, &s->waiters);
    }
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
    uint64_t token = shoal_self_token();
    add32(&e->waiters, 1);
    int slot = shoal_waitlist_join(&e->list, token, NULL, 0);
    while (!ld32(&e->flag)) {
        int64_t left = remaining(deadline);
        if (left == 0) {
            result = SHOAL_TIMEOUT;
            break;
        }
        /* set wakes every sleeper, so no wake-up can be lost here: no slices needed */
        if (shoal_wait32(&e->flag, 0, left) == SHOAL_INTR) {
            result = SHOAL_INTR;
            break;
        }
    }
    shoal_waitlist_leave(&e->list, slot, token);
    sub32(&e->waiters, 1);
    return result;
}

void shoal_event_set(shoal_event *e) {
    st32(&e->flag, 1);
    if (ld32(&e->waiters) > 0) {
        shoal_wake32(&e->flag, -1);
        shoal_waitlist_prune_due(&e->list, &e->waiters);
    }
}

void shoal_event_clear(shoal_event *e) { st32(&e->flag, 0); }

/* ---- condition variable ------------------------------------------------------------------ */

/* The fields (see shoal_core.h): state = B << 48 | w << 32 | B << 16 | t, where B is
 * the closed generation's number, w its waiters and t their uncollected tickets; the
 * open generation is B + 1 and has next_waiting waiters. */
#define GEN(s) ((uint32_t)((s) >> 48))
#define GEN_COPY(s) ((uint32_t)((s) >> 16) & 0xffffu)
#define WAITING(s) ((uint32_t)((s) >> 32) & 0xffffu)
#define TICKETS(s) ((uint32_t)(s) & 0xffffu)
#define ONE_WAITER ((uint64_t)1 << 32)
#define ONE_TICKET ((uint64_t)1)
#define GEN_MASK 0xffffu

static uint64_t cond_pack(uint32_t gen, uint32_t waiting, uint32_t tickets) {
    uint64_t g = gen & GEN_MASK;
    return g << 48 | (uint64_t)waiting << 32 | g << 16 | tickets;
}

/* Values no shoal writes: the copies of B differ, more tickets than waiters, or an
 * open generation too big to ever close. */
static int cond_state_ok(uint64_t s, uint32_t next_waiting) {
    return GEN(s) == GEN_COPY(s) && TICKETS(s) <= WAITING(s) &&
           next_waiting <= SHOAL_COND_MAX_WAITERS;
}

/* A waiter's handle (what enter_gen gives out): its generation in the low 16 bits, its
 * waitlist slot + 1 above them (0: untracked, the list was full). */
#define HANDLE(gen, slot) (((gen) & GEN_MASK) | (uint32_t)((slot) + 1) << 16)
#define H_GEN(h) ((h) & GEN_MASK)
#define H_SLOT(h) ((int)((h) >> 16) - 1)
/* Mark the slot LEAVING while its waiter takes itself off its generation's count. */
static void slot_leaving(shoal_cond *c, uint32_t h, int leaving) {
    shoal_waitlist_mark_leaving(&c->list, H_SLOT(h), shoal_self_token(), leaving);
}

static void slot_free(shoal_cond *c, uint32_t h) {
    shoal_waitlist_leave(&c->list, H_SLOT(h), shoal_self_token());
}

/* Under the lock: a dead waiter of generation gen no longer waits there. */
static void cond_forget(shoal_cond *c, uint32_t gen) {
    uint64_t s = ld64(&c->state);
    for (;;) {
        if (gen == GEN(s)) {
            uint32_t w = WAITING(s), t = TICKETS(s);
            if (w == 0)
                return;
            w--;
            if (t > w)
                t = w; /* it may have been one of the notified: its wake-up passes on */
            if (cas64(&c->state, &s, cond_pack(GEN(s), w, t)))
                return;
        } else {
            uint32_t next = ld32(&c->next_waiting);
            if (gen == ((GEN(s) + 1) & GEN_MASK) && next > 0)
                st32(&c->next_waiting, next - 1);
            return; /* (any other generation was retired: it counts nowhere) */
        }
    }
}

/* Under the lock: take dead waiters off their generations and free their slots. */
static uint32_t cond_prune(shoal_cond *c) {
    uint32_t freed = 0;
    st64(&c->list.last_prune_ns, (uint64_t)shoal_monotonic_ns());
    for (int i = 0; i < SHOAL_WAITLIST_SLOTS; i++) {
        uint64_t t = dead_token(&c->list, i);
        if (!t)
            continue;
        uint32_t gen = __atomic_load_n(&c->gen_of[i], __ATOMIC_SEQ_CST); /* before reuse */
        if (!free_dead(&c->list, i, t))
            continue;
        freed++;
        if (!(t & SHOAL_WAITLIST_LEAVING))
            cond_forget(c, gen);
    }
    return freed;
}

/* The old enter: count the caller in a generation. */
static shoal_status cond_register(shoal_cond *c, uint32_t *gen) {
    uint32_t next = ld32(&c->next_waiting); /* only changed under the lock, which we hold */
    uint64_t s = ld64(&c->state);
    for (;;) {
        if (!cond_state_ok(s, next))
            return SHOAL_BAD_LAYOUT;
        if (next > 0 || TICKETS(s) > 0) {
            /* tickets are out that we must not take (or others already queue behind
             * them): join the open generation */
            if (next == SHOAL_COND_MAX_WAITERS)
                return SHOAL_OVERFLOW;
            st32(&c->next_waiting, next + 1);
            *gen = (GEN(s) + 1) & GEN_MASK;
            return SHOAL_OK;
        }
        /* no ticket is out: the closed generation may take us, and we cannot take
         * anything granted before us.  A CAS: waiters collect without the lock. */
        if (WAITING(s) == SHOAL_COND_MAX_WAITERS)
            return SHOAL_OVERFLOW;
        if (cas64(&c->state, &s, s + ONE_WAITER)) {
            *gen = GEN(s);
            return SHOAL_OK;
        }
    }
}

shoal_status shoal_cond_enter_gen(shoal_cond *c, uint32_t *handle) {
    uint32_t gen;
    shoal_status st = cond_register(c, &gen);
    if (st != SHOAL_OK)
        return st;
    uint64_t token = shoal_self_token();
    int slot = shoal_waitlist_join(&c->list, token, c->gen_of, (uint16_t)gen);
    if (slot < 0 && cond_prune(c) > 0) /* full: perhaps of the dead */
        slot = shoal_waitlist_join(&c->list, token, c->gen_of, (uint16_t)gen);
    *handle = HANDLE(gen, slot);
    return SHOAL_OK;
}

/* 1 if the waiter with handle h is notified: its generation was retired, or it took
 * one of its tickets.  0 if it must wait on, -1 if `state` is corrupt. */
static int cond_collect(shoal_cond *c, uint32_t h) {
    uint32_t gen = H_GEN(h);
    uint64_t s = ld64(&c->state);
    for (;;) {
        if (GEN(s) != GEN_COPY(s) || TICKETS(s) > WAITING(s))
            return -1;
        if (gen == GEN(s)) {
            if (TICKETS(s) == 0)
                return 0;
            slot_leaving(c, h, 1); /* a prune must not count us out as well */
            if (cas64(&c->state, &s, s - ONE_WAITER - ONE_TICKET))
                return 1;
            slot_leaving(c, h, 0);
        } else {
            /* the open generation waits; any other has been retired */
            return gen == ((GEN(s) + 1) & GEN_MASK) ? 0 : 1;
        }
    }
}

shoal_status shoal_cond_wait_gen(shoal_cond *c, uint32_t h, int64_t timeout_ns) {
    int64_t deadline = deadline_after(timeout_ns);
    for (;;) {
        /* read seq before looking for a ticket: a notify in between changes seq, so
         * the wait below returns at once instead of missing it */
        uint32_t seq = ld32(&c->seq);
        int r = cond_collect(c, h);
        if (r != 0) {
            slot_free(c, h); /* done: counted nowhere any more */
            return r > 0 ? SHOAL_OK : SHOAL_BAD_LAYOUT;
        }
        int64_t left = remaining(deadline);
        if (left == 0)
            return SHOAL_TIMEOUT;
        /* in slices: notify may wake fewer sleepers than it grants tickets to when one
         * of them is SIGKILLed before collecting */
        if (shoal_wait32(&c->seq, seq, min_slice(left, RECHECK_NS)) == SHOAL_INTR)
            return SHOAL_INTR;
    }
}

static shoal_status cond_unregister(shoal_cond *c, uint32_t gen) {
    uint32_t next = ld32(&c->next_waiting);
    uint64_t s = ld64(&c->state);
    for (;;) {
        if (!cond_state_ok(s, next))
            return SHOAL_BAD_LAYOUT;
        if (gen == GEN(s)) {
            if (TICKETS(s) > 0) {
                if (cas64(&c->state, &s, s - ONE_WAITER - ONE_TICKET))
                    return SHOAL_OK; /* notified after all */
            } else if (WAITING(s) == 0) {
                return SHOAL_BAD_LAYOUT; /* we are registered: w >= 1 */
            } else if (cas64(&c->state, &s, s - ONE_WAITER)) {
                return SHOAL_TIMEOUT;
            }
        } else if (gen == ((GEN(s) + 1) & GEN_MASK)) {
            if (next == 0)
                return SHOAL_BAD_LAYOUT;
            st32(&c->next_waiting, next - 1);
            return SHOAL_TIMEOUT;
        } else {
            return SHOAL_OK; /* retired meanwhile: notified */
        }
    }
}

shoal_status shoal_cond_leave_gen(shoal_cond *c, uint32_t h) {
    slot_leaving(c, h, 1);
    shoal_status st = cond_unregister(c, H_GEN(h));
    slot_free(c, h);
    return st;
}

uint32_t shoal_cond_notify(shoal_cond *c, int64_t n) {
    if (n == 0)
        return 0;
    uint32_t want = n < 0 || n > SHOAL_COND_MAX_WAITERS * 2 ? UINT32_MAX : (uint32_t)n;
    /* Only a partial notify with waiters queued in the open generation can hand a dead
     * closed waiter the wake-up a live one needed (see shoal_core.h): prune first. */
    if (want < shoal_cond_waiting(c) && ld32(&c->next_waiting) > 0)
        cond_prune(c);
    uint32_t next = ld32(&c->next_waiting);
    uint64_t s = ld64(&c->state);
    uint32_t grant, next_after;
    int retired;
    for (;;) {
        if (!cond_state_ok(s, next))
            return 0;
        uint32_t gen = GEN(s), waiting = WAITING(s), tickets = TICKETS(s);
        uint32_t give = waiting - tickets < want ? waiting - tickets : want;
        tickets += give;
        grant = give;
        next_after = next;
        retired = 0;
        if (tickets == waiting && (waiting > 0 || next > 0)) {
            /* every closed waiter holds a ticket: retire that generation (its waiters
             * count as notified, whatever they have collected) and close the open one,
             * which gets the rest */
            gen++;
            waiting = next;
            next_after = 0;
            give = waiting < want - grant ? waiting : want - grant;
            tickets = give;
            grant += give;
            retired = 1;
            if (tickets == waiting && waiting > 0) {
                gen++; /* ... all of it, so it retires at once as well */
                waiting = tickets = 0;
            }
        }
        if (grant == 0)
            return 0;
        if (cas64(&c->state, &s, cond_pack(gen, waiting, tickets)))
            break;
    }
    st32(&c->next_waiting, next_after);
    add32(&c->seq, 1);
    /* When only closed waiters sleep, `grant` wake-ups reach exactly the ones that can
     * collect.  Otherwise some could go to open waiters that may not, and a retired
     * generation's sleepers must all go: wake everyone, they re-check. */
    shoal_wake32(&c->seq, retired || next > 0 ? -1 : (int)grant);
    return grant;
}

uint32_t shoal_cond_waiting(const shoal_cond *c) {
    uint64_t s = ld64(&c->state);
    return WAITING(s) - TICKETS(s) + ld32(&c->next_waiting);
}

uint32_t shoal_cond_waiting_live(const shoal_cond *c) {
    uint64_t s = ld64(&c->state);
    uint32_t next = ld32(&c->next_waiting);
    uint32_t gen = GEN(s), w = WAITING(s), t = TICKETS(s), dead_closed = 0, dead_open = 0;
    for (int i = 0; i < SHOAL_WAITLIST_SLOTS; i++) {
        if (!counted_dead(&c->list, i))
            continue;
        uint32_t tag = __atomic_load_n(&c->gen_of[i], __ATOMIC_SEQ_CST);
        if (tag == gen)
            dead_closed++;
        else if (tag == ((gen + 1) & GEN_MASK))
            dead_open++;
    }
    /* as a prune would leave it (cond_forget) */
    w = dead_closed < w ? w - dead_closed : 0;
    if (t > w)
        t = w;
    return w - t + (dead_open < next ? next - dead_open : 0);
}

/* ---- the generation remembered per thread, for callers that cannot carry it --------- */

#define COND_SLOTS 8
#define UNREGISTERED UINT32_MAX /* enter could not register: wait for any notify */

static _Thread_local struct cond_slot {
    const shoal_cond *c;
    uint32_t gen; /* the handle from enter_gen, or UNREGISTERED */
    uint32_t seq; /* c->seq at enter: an unregistered wait ends at any notify after it */
} slots[COND_SLOTS];
static _Thread_local int n_slots;

/* The innermost registration of this thread on c, or -1. */
static int slot_find(const shoal_cond *c) {
    for (int i = n_slots - 1; i >= 0; i--)
        if (slots[i].c == c)
            return i;
    return -1;
}

static void slot_drop(int i) {
    for (; i + 1 < n_slots; i++)
        slots[i] = slots[i + 1];
    n_slots--;
}

void shoal_cond_enter(shoal_cond *c) {
    uint32_t gen;
    if (shoal_cond_enter_gen(c, &gen) != SHOAL_OK)
        gen = UNREGISTERED;
    if (n_slots == COND_SLOTS)
        slot_drop(0); /* the oldest: most likely a wait abandoned without leave */
    slots[n_slots].c = c;
    slots[n_slots].gen = gen;
    slots[n_slots].seq = ld32(&c->seq);
    n_slots++;
}

shoal_status shoal_cond_wait(shoal_cond *c, int64_t timeout_ns) {
    int i = slot_find(c);
    if (i < 0 || slots[i].gen == UNREGISTERED) {
        /* unregistered: any notify since enter may be for us (one between enter and
         * now, or between two calls of a sliced wait, must not be slept through) */
        uint32_t seq = i < 0 ? ld32(&c->seq) : slots[i].seq;
        shoal_status st = shoal_wait32(&c->seq, seq, timeout_ns);
        if (st == SHOAL_OK && i >= 0)
            slot_drop(i);
        return st;
    }
    shoal_status st = shoal_cond_wait_gen(c, slots[i].gen, timeout_ns);
    if (st == SHOAL_OK || st == SHOAL_BAD_LAYOUT)
        slot_drop(i); /* done: no leave follows */
    return st;
}

shoal_status shoal_cond_leave(shoal_cond *c) {
    int i = slot_find(c);
    if (i < 0)
        return SHOAL_TIMEOUT;
    uint32_t gen = slots[i].gen;
    slot_drop(i);
    return gen == UNREGISTERED ? SHOAL_TIMEOUT : shoal_cond_leave_gen(c, gen);
}
