/*
 * shoal ring: a multi-producer multi-consumer queue of variable-size records in
 * shared memory, crash-safe by construction.
 *
 * Producers serialise on put_lock and consumers on get_lock (shoal_mutex: a holder
 * that dies is replaced by the next one).  A record becomes visible only when the
 * producer stores `tail`, and leaves only when the consumer stores `head`; each is a
 * single 64-bit store that packs (items << 32 | byte position), so the item count and
 * the byte position never disagree, whatever instant a process is killed at:
 *
 *   - a producer killed before its store published nothing: the next one overwrites;
 *   - a consumer killed before its store took nothing: the next one reads the record.
 *
 * Records are 8-byte aligned: a u32 length, a u32 kind, the payload, padding.  A
 * record that would cross the end of the data area is preceded by a PAD record that
 * fills the rest, so every payload is contiguous.  The data area's size is a power
 * of two (at most 2 GiB), so positions can wrap at 2**32.
 *
 * Nobody sleeps holding a lock: a waiter registers (`*_waiting`), reads the futex
 * word, re-checks, unlocks, then sleeps; the other side bumps the word after its
 * store if anyone is registered (the same no-lost-wake-up argument as the mutex).
 * A registered waiter also puts its token in the side's shoal_waitlist (lines 6-9), so
 * that one SIGKILLed while blocked is no longer counted: statistics leave it out, and
 * the first wake-up after the death (at most one every SHOAL_WAITLIST_PRUNE_NS) takes
 * it off the count, so later puts, gets and task_done()s make no system call for it
 * (#10; see shoal_waitlist in shoal_core.h).
 *
 * Geometry is fixed at attach (#10).  A process reaches a ring through a
 * shoal_ring_view that shoal_ring_init or shoal_ring_attach filled: capacity, mask and
 * item limit are read from shared memory there, once, validated, and never read again.
 * Every call then checks what it reads from shared memory against that geometry
 * before it indexes anything -- head and tail (8-aligned, tail - head within the
 * capacity, an item count that fits the bytes and the limit, no bytes without items),
 * and each record header (kind 0 or PAD, a length within the bytes published, the
 * largest payload and the data area, a PAD only up to the end) -- and returns
 * SHOAL_BAD_LAYOUT rather than trusting a stray write.  Consume and publish use what
 * peek and reserve validated, never a second read.  So memory scribbled on costs an
 * error in the callers, never an access outside the data area.
 */
#ifndef SHOAL_RING_H
#define SHOAL_RING_H

#include "shoal_core.h"

#define SHOAL_RING_MAGIC 0x474e49524c414f48ULL /* "HOALRING" */
#define SHOAL_RING_RECORD_HEADER 8u
#define SHOAL_RING_KIND_PAD 1u

/* statuses beyond shoal_status, for ring calls */
enum {
    SHOAL_RING_FULL = 16,      /* no room (bytes, or maxsize items) */
    SHOAL_RING_EMPTY = 17,     /* nothing to take */
    SHOAL_RING_TOO_BIG = 18,   /* the record can never fit this ring */
    SHOAL_RING_SHUTDOWN = 19,  /* put after shutdown; get on a shut down, drained ring */
};

typedef struct {
    /* line 0-1: configuration and the producers' lock */
    uint64_t magic;
    uint64_t capacity;
    uint64_t max_items;
    uint32_t shutdown;
    uint32_t layout_version;
    shoal_mutex put_lock;
    uint8_t pad0[128 - 32 - 40];
    /* line 2: producer side (written by producers, read by consumers) */
    uint64_t tail;          /* items put << 32 | byte position */
    uint32_t data_seq;      /* futex: bumped after a publish that has consumers waiting */
    uint32_t consumers_waiting;
    uint8_t pad1[64 - 16];
    /* line 3: consumer side */
    uint64_t head;          /* items taken << 32 | byte position */
    uint32_t space_seq;     /* futex: bumped after a take that has producers waiting */
    uint32_t producers_waiting;
    uint8_t pad2[64 - 16];
    /* line 4: the consumers' lock */
    shoal_mutex get_lock;
    uint8_t pad3[64 - 40];
    /* line 5: JoinableQueue's unfinished-task count */
    uint64_t unfinished;
    uint32_t unfinished_seq; /* futex: bumped when unfinished drops to 0 */
    uint32_t joiners;
    uint8_t pad4[64 - 16];
    /* lines 6-9: the tokens of the waiters counted in consumers_waiting,
     * producers_waiting and joiners */
    shoal_waitlist consumer_list;
    shoal_waitlist producer_list;
    shoal_waitlist joiner_list;
    uint8_t pad5[256 - 3 * 72];
    /* the data area follows (capacity bytes) */
} shoal_ring;

#define SHOAL_RING_HEADER_SIZE 640u
_Static_assert(sizeof(shoal_ring) == SHOAL_RING_HEADER_SIZE, "shoal_ring is part of the shared layout");
_Static_assert(__builtin_offsetof(shoal_ring, tail) % 64 == 0, "tail on its own cache line");
_Static_assert(__builtin_offsetof(shoal_ring, head) % 64 == 0, "head on its own cache line");
_Static_assert(__builtin_offsetof(shoal_ring, head) - __builtin_offsetof(shoal_ring, tail) >= 64,
               "head and tail on different cache lines");

/* A process's view of one ring: the geometry fixed at attach (see above). */
typedef struct {
    shoal_ring *ring;
    char *data;           /* the data area: ring + SHOAL_RING_HEADER_SIZE */
    uint32_t capacity;    /* bytes in the data area, a power of two in [64, 2**31] */
    uint32_t mask;        /* capacity - 1 */
    uint32_t max_items;   /* 0: no item limit */
    uint32_t max_payload; /* capacity / 2 - SHOAL_RING_RECORD_HEADER */
} shoal_ring_view;

/* Where a reserved record goes (shoal_ring_reserve fills it, shoal_ring_publish uses it). */
typedef struct {
    void *dst;     /* the payload */
    uint64_t tail; /* tail when reserved */
    uint32_t off;  /* the record header's offset in the data area */
    uint32_t pad;  /* bytes of PAD before it */
    uint32_t len;  /* payload bytes */
} shoal_ring_slot;

/* The record peek found (shoal_ring_consume removes it). */
typedef struct {
    const void *src; /* the payload */
    uint64_t head;   /* head when peeked */
    uint32_t len;
    uint32_t kind;
} shoal_ring_record;

/* Size of ring struct plus data area for `capacity` (rounded up to a power of two). */
uint64_t shoal_ring_round_capacity(uint64_t capacity);
/* Initialise zeroed memory of `mapped` bytes and fill *v.  capacity must be a power of
 * two in [64, 2**31] that fits; SHOAL_BAD_LAYOUT otherwise. */
shoal_status shoal_ring_init(shoal_ring_view *v, shoal_ring *r, uint64_t mapped, uint64_t capacity,
                             uint64_t max_items);
/* Fill *v from a ring some process made: SHOAL_OK if r looks like a ring this version
 * wrote and fits in `mapped` bytes, else SHOAL_BAD_LAYOUT (and *v is left unusable). */
shoal_status shoal_ring_attach(shoal_ring_view *v, shoal_ring *r, uint64_t mapped);
/* The largest payload a record may have in this ring. */
static inline uint64_t shoal_ring_max_payload(const shoal_ring_view *v) { return v->max_payload; }

/* ---- producer side: the caller holds put_lock -------------------------------------- */
/* Find room for a payload of len bytes (slot->dst points at it): OK, FULL, TOO_BIG,
 * SHUTDOWN, or BAD_LAYOUT (head/tail outside the geometry). */
int shoal_ring_reserve(const shoal_ring_view *v, uint32_t len, shoal_ring_slot *slot);
/* Publish the reserved record (and a PAD before it, if reserve needed one). */
void shoal_ring_publish(const shoal_ring_view *v, const shoal_ring_slot *slot, uint32_t kind);
/* Wake up to n consumers if any wait (n < 0: all); separate so a batch wakes once. */
void shoal_ring_wake_consumers(const shoal_ring_view *v, int n);

/* ---- consumer side: the caller holds get_lock -------------------------------------- */
/* The next record: OK, EMPTY, SHUTDOWN (shut down and drained), or BAD_LAYOUT (a
 * position or record header no producer could have written). */
int shoal_ring_peek(const shoal_ring_view *v, shoal_ring_record *rec);
/* Remove the record peek returned. */
void shoal_ring_consume(const shoal_ring_view *v, const shoal_ring_record *rec);
/* The ordinal of the record peek returned: how many records were ever taken before it
 * (mod 2**32).  A consumer that stores it somewhere shared *before* consume() lets a
 * watcher tell, after the consumer died, which record it took: the record is taken iff
 * shoal_ring_taken() has moved past the ordinal (a pool's task claim, #5). */
uint32_t shoal_ring_taken(const shoal_ring_view *v);
void shoal_ring_wake_producers(const shoal_ring_view *v, int n);

/* ---- waiting, with no lock held ---------------------------------------------------------
 * register (under the lock) -> re-check -> unlock -> wait -> unregister.  Registering
 * before the re-check is what makes a concurrent publish/consume wake the waiter.
 * register stores the waitlist slot it took in *slot (-1: none free, counted but
 * untracked), which unregister gives back. */
uint32_t shoal_ring_register_consumer(const shoal_ring_view *v, int *slot); /* returns data_seq */
void shoal_ring_unregister_consumer(const shoal_ring_view *v, int slot);
shoal_status shoal_ring_wait_data(const shoal_ring_view *v, uint32_t seq, int64_t timeout_ns);
uint32_t shoal_ring_register_producer(const shoal_ring_view *v, int *slot); /* returns space_seq */
void shoal_ring_unregister_producer(const shoal_ring_view *v, int slot);
shoal_status shoal_ring_wait_space(const shoal_ring_view *v, uint32_t seq, int64_t timeout_ns);
/* JoinableQueue's joiners, for waiters that sleep elsewhere (shoal._aio): returns
 * unfinished_seq, the word shoal_ring_task_done bumps when the count drops to 0. */
uint32_t shoal_ring_register_joiner(const shoal_ring_view *v, int *slot);
void shoal_ring_unregister_joiner(const shoal_ring_view *v, int slot);
/* Busy-wait up to `spins` pauses for a record (space for `need` payload bytes): cheaper
 * than a futex round trip when the other side is running on another core. */
int shoal_ring_spin_for_data(const shoal_ring_view *v, int spins);
int shoal_ring_spin_for_space(const shoal_ring_view *v, uint32_t len, int spins);

/* ---- state -------------------------------------------------------------------------- */
/* Items and bytes in the ring, as one snapshot (no lock needed): OK, or BAD_LAYOUT. */
shoal_status shoal_ring_state(const shoal_ring_view *v, uint32_t *items, uint32_t *used);
/* The same without the check, for statistics: whatever the words say. */
uint32_t shoal_ring_items(const shoal_ring_view *v);
uint64_t shoal_ring_bytes_used(const shoal_ring_view *v);
/* Waiters blocked now, without those found dead (read only, for statistics). */
uint32_t shoal_ring_consumers_waiting(const shoal_ring_view *v);
uint32_t shoal_ring_producers_waiting(const shoal_ring_view *v);
uint32_t shoal_ring_joiners(const shoal_ring_view *v);
void shoal_ring_shutdown(const shoal_ring_view *v);
/* Bump every futex word and wake every waiter of every kind; each re-checks and goes
 * back to sleep unless it has reason not to (a handle closing under its own blocked
 * calls uses this to get them out before its memory is released). */
void shoal_ring_wake_all(const shoal_ring_view *v);

/* ---- JoinableQueue ------------------------------------------------------------------- */
void shoal_ring_add_unfinished(const shoal_ring_view *v, uint64_t n);
/* SHOAL_OVERFLOW if there is no unfinished task to mark done. */
shoal_status shoal_ring_task_done(const shoal_ring_view *v);
/* Wait until no task is unfinished: OK, TIMEOUT, INTR, or AGAIN once *stop (may be NULL)
 * is found set after a wake-up (see shoal_ring_wake_all). */
shoal_status shoal_ring_join(const shoal_ring_view *v, int64_t timeout_ns, const int *stop);

#endif
