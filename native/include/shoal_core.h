/*
 * shoal native core: synchronisation on memory the caller provides.
 *
 * Pure C11, no Python.h.  Every function works on a struct that lives inside a
 * shared mapping (any process may map it at any address), never allocates, never
 * calls back, and reports through one status enum.  Timeouts are relative
 * nanoseconds on a monotonic clock; a negative timeout waits forever.
 *
 * Owner identity ("token"): a 64-bit value naming one process::
 *
 *     bits 62-63  0 (shoal_mutex marks an owner word in transition with bit 63, a
 *                 shoal_waitlist its slots with bits 62 and 63, and a segment's holder
 *                 table, in shoal._memory, a reservation for forked children with 63)
 *     bits 54-61  PID namespace tag, high 8 bits
 *     bits 32-53  pid, as the process's own PID namespace numbers it (pid_max <= 2^22)
 *     bits 24-31  PID namespace tag, low 8 bits
 *     bit  23     SHOAL_TOKEN_LIVENESS: the process published a liveness file (below)
 *     bits  0-22  start-time tag: the low 23 bits of the process start time (Linux
 *                 /proc/<pid>/stat field 22), so a recycled pid does not pass for the
 *                 dead process that once had it
 *
 * The namespace tag is 0 in the machine's initial PID namespace and a 16-bit digest of
 * the namespace's inode elsewhere (a container), so that a process in another PID
 * namespace -- one that shares /dev/shm (docker --ipc=host) but whose pids mean other
 * processes here -- is never judged by a pid it does not have.  A token is never 0,
 * which therefore means "nobody".
 *
 * Liveness files (#10).  What the kernel does tell across PID namespaces is whether a
 * lock on a file is still held: it is released when its holder dies.  So before its
 * token is first computed, a process makes /dev/shm/shoal-live-<the token, 16 hex
 * digits> (mode 0600, empty) and holds an open file description lock (F_OFD_SETLK,
 * write, whole file) on it for life; the file is locked under a temporary name
 * (<name>.tmp, O_EXCL) and then renamed into place, so its final name is never seen
 * unlocked while its process lives.  Only then is SHOAL_TOKEN_LIVENESS set in the
 * token.  shoal_token_alive() judges a token of another namespace by that file:
 * without the bit, alive (it cannot tell); with it, alive while the lock is held, dead
 * once it is free or the file is gone (the file is removed only by its process on
 * its way out, shoal_liveness_remove(), or by a reaper once its lock is free); any
 * other answer (not this user's regular file, an error) is alive.  Tokens of its own
 * namespace are judged by pid and start time as before.  Where the file cannot be
 * made (no /dev/shm, ENOSPC, EACCES, not Linux) the bit is clear and such a process
 * is judged from other namespaces as before #10: alive.
 * An open file description lock, not a POSIX record lock: a POSIX lock is dropped
 * when its process closes *any* descriptor of the file, so anything in the process
 * that opened and closed its own liveness file would make it look dead; this lock
 * goes only with the description.  A forked child closes its inherited descriptor
 * (pthread_atfork) and makes its own file, so it neither keeps its parent looking
 * alive nor releases the parent's lock.
 *
 * Layout of each struct below is part of shoal's shared-memory format: changing a
 * field means bumping SHOAL_LAYOUT_VERSION.
 */
#ifndef SHOAL_CORE_H
#define SHOAL_CORE_H

#include <stddef.h>
#include <stdint.h>

/* 2: shoal_cond counts waiters per generation (see below); was one pool of tickets.
 * 3: segment headers count handles in flight (pickled, not yet unpickled) and object
 *    reference counts carry them in their high 32 bits (shoal._memory, shoal._handle):
 *    an older shoal would unlink or free what a pickle still names.
 * 4: tokens carry a PID namespace tag (above); segment headers keep a table of the
 *    containers (queues, dicts) that keep references to their objects, and the holder
 *    table is shorter for it; dict values holding references carry the dict's name
 *    (shoal._memory, shoal._dict).  And shoal_cond, shoal_semaphore and shoal_event end
 *    with a shoal_waitlist, and a Lock's payload has one after its shoal_mutex: the
 *    tokens of blocked waiters, so a waiter killed while blocked is found and no longer
 *    counted (an older shoal would neither fill nor read them, and would size the
 *    objects differently); so does a ring for its consumers, producers and joiners
 *    (shoal_ring.h: its header is 640 bytes).
 * 5: tokens carry SHOAL_TOKEN_LIVENESS in bit 23, which was the top bit of the start
 *    time (above): an older shoal would compare it as start time and judge such a
 *    token of its own namespace dead (and another namespace's by pid alone).  And each
 *    process records the object references it holds in segments of a new kind, its
 *    ledger (shoal._handle), which a sweep reads once the process died: an older shoal
 *    would reap one as an ordinary segment and never give those references back. */
#define SHOAL_LAYOUT_VERSION 5

typedef enum {
    SHOAL_OK = 0,          /* done: acquired, released, woken, set */
    SHOAL_AGAIN = 1,       /* would block and the caller asked not to (timeout 0) */
    SHOAL_TIMEOUT = 2,     /* the timeout ran out before the operation could complete */
    SHOAL_INTR = 3,        /* a signal interrupted the wait: caller checks signals, retries */
    SHOAL_OWNER_DIED = 4,  /* acquired, but from an owner that died holding it */
    SHOAL_NOT_OWNER = 5,   /* release by a caller that does not hold it (or it is not held) */
    SHOAL_OVERFLOW = 6,    /* a bounded counter would pass its maximum */
    SHOAL_BAD_LAYOUT = 7,  /* a struct's fields hold values no shoal version writes */
} shoal_status;

/* A spin-wait hint to the CPU (a busy loop's body). */
static inline void shoal_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- atomics on (aligned) shared words: sequentially consistent ---------------- */
uint64_t shoal_load64(const uint64_t *addr);
void shoal_store64(uint64_t *addr, uint64_t value);
uint64_t shoal_fetch_add64(uint64_t *addr, uint64_t delta); /* returns the old value */
/* If *addr == *expected, store desired and return 1; else copy *addr to *expected, return 0. */
int shoal_cas64(uint64_t *addr, uint64_t *expected, uint64_t desired);
uint32_t shoal_load32(const uint32_t *addr);

/* ---- wait / wake on a shared 32-bit word ---------------------------------------- */
/* Sleep while *addr == expected.  SHOAL_OK when woken or the word differs (the caller
 * re-checks its condition), SHOAL_TIMEOUT, or SHOAL_INTR on a signal. */
shoal_status shoal_wait32(uint32_t *addr, uint32_t expected, int64_t timeout_ns);
/* Wake up to n sleepers on addr (n < 0: all).  Returns how many were woken, if known. */
int shoal_wake32(uint32_t *addr, int n);

/* ---- waiting on many words at once (shoal._aio's hub, #14) ---------------------------- */
/* Sleep until one of n words is woken (FUTEX_WAKE on it) or differs from its expected
 * value, up to timeout_ns.  Shared futexes, as shoal_wait32's, so a wake from any
 * process reaches it.  At most SHOAL_WAIT_MANY_MAX words (futex_waitv's limit).
 * Returns the index of a word that was woken, or -1 with *status: SHOAL_OK (a word
 * already differed, or an address could not be read: the caller re-checks them all),
 * SHOAL_TIMEOUT, SHOAL_INTR, or SHOAL_AGAIN where there is no such call (not Linux, or
 * a kernel before 5.16: the caller falls back to one shoal_wait32 per word). */
#define SHOAL_WAIT_MANY_MAX 128
int shoal_wait_many(uint32_t *const *addrs, const uint32_t *expected, int n, int64_t timeout_ns,
                    shoal_status *status);

/* ---- process identity ------------------------------------------------------------- */
uint64_t shoal_self_token(void);          /* this process's token (cached, reset by fork) */
int shoal_token_alive(uint64_t token);    /* 1 alive (or unknown), 0 certainly dead */
uint32_t shoal_token_pid(uint64_t token); /* the pid in a token (in its own namespace) */
uint32_t shoal_token_pid_namespace(uint64_t token); /* its namespace tag (0: initial) */
int64_t shoal_monotonic_ns(void);

/* ---- liveness files (see "Liveness files" above) ------------------------------------ */
#define SHOAL_TOKEN_LIVENESS ((uint64_t)1 << 23)
#define SHOAL_LIVENESS_DIR "/dev/shm"
#define SHOAL_LIVENESS_PREFIX "shoal-live-"  /* then 16 lowercase hex digits */
#define SHOAL_LIVENESS_TEMP_SUFFIX ".tmp"    /* while it is being made */
#define SHOAL_LIVENESS_PATH_MAX 256
/* What shoal_liveness_probe() finds */
#define SHOAL_LIVENESS_HELD 1      /* locked: its process lives */
#define SHOAL_LIVENESS_FREE 0      /* nobody holds it: its process died */
#define SHOAL_LIVENESS_ABSENT (-1) /* no such file */
#define SHOAL_LIVENESS_UNKNOWN (-2) /* cannot tell: not this user's regular file, an error */
/* The file name (no directory) of token's liveness file; its length, or -1. */
int shoal_liveness_name(uint64_t token, char *buf, size_t size);
/* Probe the liveness file `name` (a name in SHOAL_LIVENESS_DIR, no '/').  It is opened
 * read-only and closed again, which releases nothing of anyone's. */
int shoal_liveness_probe(const char *name);
/* Remove this process's own liveness file (at exit: from then on, other namespaces
 * judge it dead).  Its token keeps the bit; nothing is made again. */
void shoal_liveness_remove(void);
/* Native tests only, before any token is made: put liveness files in `dir` (kept). */
void shoal_liveness_set_dir(const char *dir);

/* ---- waiter lists: who is blocked, so that a waiter killed meanwhile is found ---- */
/* Each blocking primitive counts its waiters in a word that decides whether a release
 * must wake anyone.  A waiter SIGKILLed while blocked can never take itself off that
 * count.  So a waiter also puts its token in a free slot of the primitive's waitlist for
 * as long as it is counted, and a prune (shoal_waitlist_prune) frees the slots of dead
 * tokens and takes each off the count, exactly once (a CAS on the slot).
 *
 *   join:  count += 1; CAS a free slot 0 -> token|SHOAL_WAITLIST_FILLING; tags[slot] =
 *          ...; slot = token               (no free slot: counted but untracked)
 *   leave: CAS slot token -> 0; count -= 1
 *
 * A waiter is in the count whenever its slot holds its token, so a prune never takes
 * off a count that was not there.  (Killed in the few instructions between the count
 * and the slot, it stays counted, as every waiter used to.)  A slot marked FILLING is
 * left alone; one marked LEAVING (its waiter is taking itself off the count, see
 * shoal_cond) is freed if dead but counted off by nobody.  Tags, where a primitive keeps
 * them, are its business (shoal_cond: the generation joined).  Tokens never use bits
 * 62 and 63 (see above), which is where the two marks go.
 * Prunes cost a liveness check per occupied slot, so they run off the hot paths: after
 * a release that finds waiters counted, at most every SHOAL_WAITLIST_PRUNE_NS (so a dead
 * waiter costs at most one spare wake-up), and where shoal_cond needs them; statistics
 * read the live count without changing anything (shoal_waitlist_live). */
#define SHOAL_WAITLIST_SLOTS 8 /* a Lock (mutex and list) then fits two 64-byte blocks */
#define SHOAL_WAITLIST_FILLING ((uint64_t)1 << 63)
#define SHOAL_WAITLIST_LEAVING ((uint64_t)1 << 62)
#define SHOAL_WAITLIST_PRUNE_NS (100LL * 1000 * 1000)
typedef struct {
    uint64_t token[SHOAL_WAITLIST_SLOTS]; /* a counted waiter's token (and marks); 0 free */
    uint64_t last_prune_ns;               /* monotonic time of the last rate-limited prune */
} shoal_waitlist;
_Static_assert(sizeof(shoal_waitlist) == 72, "shoal_waitlist is part of the shared layout");

/* A free slot for token (its index), or -1 if all are taken.  tags (may be NULL): the
 * primitive's per-slot array, tags[slot] = tag is written before the token shows. */
int shoal_waitlist_join(shoal_waitlist *l, uint64_t token, uint16_t *tags, uint16_t tag);
/* Give back slot (from join; -1 is fine) if it still holds token (marked or not). */
void shoal_waitlist_leave(shoal_waitlist *l, int slot, uint64_t token);
/* Mark (leaving = 1) or unmark the slot's token LEAVING: only its own waiter does. */
void shoal_waitlist_mark_leaving(shoal_waitlist *l, int slot, uint64_t token, int leaving);
/* Free the slots of dead waiters and take each off *count (saturating at 0; count may be
 * NULL).  Returns how many were freed. */
uint32_t shoal_waitlist_prune(shoal_waitlist *l, uint32_t *count);
/* The same, unless a prune of this list ran less than SHOAL_WAITLIST_PRUNE_NS ago or
 * *count is 0 (nothing to take off): for release paths. */
uint32_t shoal_waitlist_prune_due(shoal_waitlist *l, uint32_t *count);
/* Live waiters among `count`: count minus the dead, unmarked tokens in the list (read
 * only). */
uint32_t shoal_waitlist_live(const shoal_waitlist *l, uint32_t count);

/* Count the caller in a primitive's waiters as a blocking waiter does (count += 1, then
 * a slot of the waitlist l, which may be NULL), without sleeping: for waiters that
 * sleep elsewhere (shoal._aio).  Returns the slot (-1: untracked), which
 * shoal_waiter_leave gives back with the count. */
int shoal_waiter_join(uint32_t *count, shoal_waitlist *l);
void shoal_waiter_leave(uint32_t *count, shoal_waitlist *l, int slot);

/* ---- mutex (Lock, and RLock when depth is used) ---------------------------------- */
typedef struct {
    uint64_t owner;        /* token of the holder, 0 when free; SHOAL_MUTEX_HANDOVER set
                              while an RLock passes from a dead holder to a new one */
    uint64_t owner_thread; /* RLock only: thread ident of the holder within its process */
    uint64_t dead_owner;   /* token of the last holder found dead (0: none yet); for reports */
    uint32_t seq;          /* futex word: bumped by every release that has waiters */
    uint32_t waiters;      /* processes/threads sleeping or about to sleep on seq */
    uint32_t owner_died;   /* 1 while the holder got it from a dead owner (cleared on release) */
    uint32_t depth;        /* RLock recursion depth; touched only by the holder */
} shoal_mutex;
_Static_assert(sizeof(shoal_mutex) == 40, "shoal_mutex is part of the shared layout");

shoal_status shoal_mutex_trylock(shoal_mutex *m, uint64_t token);
/* Block up to timeout_ns.  SHOAL_OWNER_DIED means acquired from a dead holder. */
shoal_status shoal_mutex_lock(shoal_mutex *m, uint64_t token, int64_t timeout_ns);
/* Lock semantics (any process may release a held lock, as multiprocessing.Lock allows):
 * SHOAL_NOT_OWNER when it is not held. */
shoal_status shoal_mutex_unlock(shoal_mutex *m);
/* Release without clearing owner_died, handing the repair duty to the next holder. */
shoal_status shoal_mutex_unlock_keep_died(shoal_mutex *m);
/* Release on behalf of a holder found dead elsewhere (a process this one held the lock
 * for, on another machine): record `dead` as the dead owner and leave owner_died set,
 * so that the next holder is told, as it is when a holder dies here. */
shoal_status shoal_mutex_unlock_dead(shoal_mutex *m, uint64_t dead);

/* Bit 63 of `owner`: the RLock is being inherited from a dead holder by the token in
 * the low bits, which has not yet written owner_thread and depth.  Nobody holds it
 * meanwhile (so a sibling thread whose ident equals the dead holder's cannot mistake
 * the dead holder's leftovers for its own); if the inheritor dies in that window, the
 * next waiter inherits from it in turn. */
#define SHOAL_MUTEX_HANDOVER ((uint64_t)1 << 63)

/* Recursive variants: the holder is (token, thread), thread != 0.  trylock never
 * blocks and never inspects the holder; lock with timeout 0 also takes the lock from
 * a dead holder. */
shoal_status shoal_rmutex_trylock(shoal_mutex *m, uint64_t token, uint64_t thread);
shoal_status shoal_rmutex_lock(shoal_mutex *m, uint64_t token, uint64_t thread, int64_t timeout_ns);
shoal_status shoal_rmutex_unlock(shoal_mutex *m, uint64_t token, uint64_t thread);
/* Condition support: release every level, returning the depth in *depth. */
shoal_status shoal_rmutex_release_all(shoal_mutex *m, uint64_t token, uint64_t thread, uint32_t *depth);

/* The same locks with a waitlist for m->waiters (shoal_mutex is embedded in other
 * structures, so its list lives beside it: a Lock's payload is the mutex, then the
 * list).  l may be NULL.  Whoever releases calls shoal_waitlist_prune_due(l,
 * &m->waiters) afterwards. */
shoal_status shoal_mutex_lock_listed(shoal_mutex *m, shoal_waitlist *l, uint64_t token,
                                     int64_t timeout_ns);
shoal_status shoal_rmutex_lock_listed(shoal_mutex *m, shoal_waitlist *l, uint64_t token,
                                      uint64_t thread, int64_t timeout_ns);

/* ---- semaphore ---------------------------------------------------------------------- */
typedef struct {
    uint32_t value;    /* futex word: the count */
    uint32_t waiters;
    uint32_t maxvalue; /* the bound, when bounded */
    uint32_t bounded;  /* 1: release past maxvalue is SHOAL_OVERFLOW (BoundedSemaphore) */
    shoal_waitlist list; /* the waiters' tokens (release prunes the dead) */
} shoal_semaphore;
_Static_assert(sizeof(shoal_semaphore) == 88, "shoal_semaphore is part of the shared layout");

shoal_status shoal_sem_acquire(shoal_semaphore *s, int64_t timeout_ns);
shoal_status shoal_sem_release(shoal_semaphore *s, uint32_t n); /* SHOAL_OVERFLOW past maxvalue */

/* ---- event ---------------------------------------------------------------------------- */
typedef struct {
    uint32_t flag;    /* futex word: 0 clear, 1 set */
    uint32_t waiters;
    shoal_waitlist list; /* the waiters' tokens (set prunes the dead) */
} shoal_event;
_Static_assert(sizeof(shoal_event) == 80, "shoal_event is part of the shared layout");

shoal_status shoal_event_wait(shoal_event *e, int64_t timeout_ns); /* OK when set */
void shoal_event_set(shoal_event *e);
void shoal_event_clear(shoal_event *e);

/* ---- condition variable (the lock is the caller's business) -------------------------- */
/* Waiters belong to a "generation", and notify hands tickets to the waiters of the
 * closed generation only.  A newcomer joins the closed generation only while it has no
 * uncollected ticket; otherwise it joins the open generation (the next number), which
 * gets tickets only once every closed waiter holds one: then the closed generation is
 * retired (all its waiters count as notified) and the open one becomes the closed one.
 * So a wait can only end notified by a notify that came after it entered: notify(n)
 * wakes at most n of the waiters present, notify_all every one of them, and a later
 * arrival cannot take their tickets.  (With one pool of tickets it could: a fast thread
 * looping back into wait() took the wake-up a slow one had not collected yet, so that
 * one slept on, and a barrier built on the condition stalled.)
 *
 * `state` packs the closed generation's number B, its waiters w and their uncollected
 * tickets t, 16 bits each, with B written twice so that (state >> 32) - (uint32_t)state
 * is w - t:
 *
 *     bits 63..48 B | 47..32 w | 31..16 B | 15..0 t        invariant: t <= w
 *
 * Only taking a ticket happens without the lock (a CAS on `state`); enter, leave and
 * notify run under it, which is why next_waiting can be a separate word.
 * Sleepers re-check every so often, so a wake-up lost with a waiter SIGKILLed right
 * after it was woken only delays another waiter.
 *
 * Dead waiters.  Each registered waiter also holds a slot of `list` (shoal_waitlist)
 * with its token, its generation in `gen_of[slot]`.  A waiter SIGKILLed while registered used
 * to stay counted until its generation retired, and so could be granted a notify(1)
 * meant for a live waiter of the open generation: with two closed waiters, one of them
 * dead, and a live one queued behind an uncollected ticket, the dead one's generation
 * retired on that notify and the live one slept on.  Now, under the lock:
 *   - a notify that could leave open waiters without a ticket (n < waiting, and the
 *     open generation is not empty) first prunes: each dead, un-notified waiter is
 *     taken off its generation (w - 1, t kept <= w, or next_waiting - 1) and its slot
 *     freed, so tickets go to live waiters only (a ticket the dead one might have held
 *     passes to a live one of its generation: at worst a spurious wake-up);
 *   - enter prunes when the list is full, reclaiming dead waiters' slots.
 * A waiter about to take a ticket (without the lock), or leaving, first marks its slot
 * LEAVING, so that a prune never takes it off a count it is leaving by itself; if no
 * ticket was left it unmarks it.  (Killed between the two, it stays counted, as before.)  Waiters
 * beyond SHOAL_WAITLIST_SLOTS are counted but untracked.  shoal_cond_waiting_live
 * leaves out the dead for statistics without the lock. */
typedef struct {
    uint64_t state;        /* B << 48 | w << 32 | B << 16 | t, as drawn above */
    uint32_t seq;          /* futex word: bumped by every notify that grants a ticket */
    uint32_t next_waiting; /* waiters of the open generation, B + 1 */
    shoal_waitlist list;   /* registered waiters' tokens */
    uint16_t gen_of[SHOAL_WAITLIST_SLOTS]; /* the generation each slot's waiter joined */
} shoal_cond;
_Static_assert(sizeof(shoal_cond) == 104, "shoal_cond is part of the shared layout");

#define SHOAL_COND_MAX_WAITERS 0xffffu

/* Under the lock: register as a waiter.  *gen receives the generation joined (and the
 * waitlist slot taken, in its high bits: an opaque handle), which wait and leave take.  SHOAL_OVERFLOW when SHOAL_COND_MAX_WAITERS already wait,
 * SHOAL_BAD_LAYOUT if `state` breaks its invariant. */
shoal_status shoal_cond_enter_gen(shoal_cond *c, uint32_t *gen);
/* Without the lock: wait for a ticket.  OK (notified: took one, or the generation
 * retired), TIMEOUT, or INTR (the caller checks signals and calls again: it is still
 * registered). */
shoal_status shoal_cond_wait_gen(shoal_cond *c, uint32_t gen, int64_t timeout_ns);
/* Under the lock, after a TIMEOUT (or when giving up after INTR): leave.  OK if a
 * ticket arrived meanwhile (it is taken and the wait counts as notified), TIMEOUT
 * otherwise. */
shoal_status shoal_cond_leave_gen(shoal_cond *c, uint32_t gen);
/* Under the lock: notify up to n waiters (n < 0: all).  Returns how many were granted
 * (a registered waiter that was SIGKILLed counts). */
uint32_t shoal_cond_notify(shoal_cond *c, int64_t n);
/* Registered waiters not yet notified: w - t + next_waiting. */
uint32_t shoal_cond_waiting(const shoal_cond *c);
/* The same without waiters found dead in the list (read only, no lock needed). */
uint32_t shoal_cond_waiting_live(const shoal_cond *c);

/* The same protocol for callers that cannot carry the generation from enter to wait
 * and leave (shoal._core's Cond): the calling thread remembers it, per condition,
 * from enter until wait returns OK or leave returns.  The three calls of one wait must
 * come from one thread; nesting (a signal handler that waits meanwhile) is fine.  If
 * enter cannot register (overflow), wait returns OK at the next notify of anyone: a
 * spurious wake-up, which every Condition user must already tolerate. */
void shoal_cond_enter(shoal_cond *c);
shoal_status shoal_cond_wait(shoal_cond *c, int64_t timeout_ns);
shoal_status shoal_cond_leave(shoal_cond *c);

#endif
