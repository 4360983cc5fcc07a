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
    /* the data area follows (capacity bytes) */
} shoal_ring;

#define SHOAL_RING_HEADER_SIZE 384u
_Static_assert(sizeof(shoal_ring) == SHOAL_RING_HEADER_SIZE, "shoal_ring is part of the shared layout");
_Static_assert(__builtin_offsetof(shoal_ring, tail) % 64 == 0, "tail on its own cache line");
_Static_assert(__builtin_offsetof(shoal_ring, head) % 64 == 0, "head on its own cache line");
_Static_assert(__builtin_offsetof(shoal_ring, head) - __builtin_offsetof(shoal_ring, tail) >= 64,
               "head and tail on different cache lines");

/* Size of ring struct plus data area for `capacity` (rounded up to a power of two). */
uint64_t shoal_ring_round_capacity(uint64_t capacity);
/* Initialise zeroed memory.  capacity must be a power of two in [64, 2**31]. */
shoal_status shoal_ring_init(shoal_ring *r, uint64_t capacity, uint64_t max_items);
/* SHOAL_OK if r looks like a ring this version wrote and fits in `mapped` bytes. */
shoal_status shoal_ring_check(const shoal_ring *r, uint64_t mapped);
/* The largest payload a record may have in this ring. */
uint64_t shoal_ring_max_payload(const shoal_ring *r);

/* ---- producer side: the caller holds put_lock -------------------------------------- */
/* Find room for a payload of len bytes: *dst points at it.  OK, FULL, TOO_BIG, SHUTDOWN. */
int shoal_ring_reserve(shoal_ring *r, uint32_t len, void **dst);
/* Publish the reserved record (and a PAD before it, if reserve needed one). */
void shoal_ring_publish(shoal_ring *r, uint32_t len, uint32_t kind);
/* Wake up to n consumers if any wait (n < 0: all); separate so a batch wakes once. */
void shoal_ring_wake_consumers(shoal_ring *r, int n);

/* ---- consumer side: the caller holds get_lock -------------------------------------- */
/* The next record: OK, EMPTY, or SHUTDOWN (shut down and drained). */
int shoal_ring_peek(shoal_ring *r, const void **src, uint32_t *len, uint32_t *kind);
/* Remove the record peek returned. */
void shoal_ring_consume(shoal_ring *r);
/* The ordinal of the record peek returned: how many records were ever taken before it
 * (mod 2**32).  A consumer that stores it somewhere shared *before* consume() lets a
 * watcher tell, after the consumer died, which record it took: the record is taken iff
 * shoal_ring_taken() has moved past the ordinal (a pool's task claim, #5). */
uint32_t shoal_ring_taken(const shoal_ring *r);
void shoal_ring_wake_producers(shoal_ring *r, int n);

/* ---- waiting, with no lock held ---------------------------------------------------------
 * register (under the lock) -> re-check -> unlock -> wait -> unregister.  Registering
 * before the re-check is what makes a concurrent publish/consume wake the waiter. */
uint32_t shoal_ring_register_consumer(shoal_ring *r); /* returns data_seq to wait on */
void shoal_ring_unregister_consumer(shoal_ring *r);
shoal_status shoal_ring_wait_data(shoal_ring *r, uint32_t seq, int64_t timeout_ns);
uint32_t shoal_ring_register_producer(shoal_ring *r); /* returns space_seq to wait on */
void shoal_ring_unregister_producer(shoal_ring *r);
shoal_status shoal_ring_wait_space(shoal_ring *r, uint32_t seq, int64_t timeout_ns);
/* Busy-wait up to `spins` pauses for a record (space for `need` payload bytes): cheaper
 * than a futex round trip when the other side is running on another core. */
int shoal_ring_spin_for_data(shoal_ring *r, int spins);
int shoal_ring_spin_for_space(shoal_ring *r, uint32_t len, int spins);

/* ---- state -------------------------------------------------------------------------- */
uint32_t shoal_ring_items(const shoal_ring *r);
uint64_t shoal_ring_bytes_used(const shoal_ring *r);
void shoal_ring_shutdown(shoal_ring *r);
/* Bump every futex word and wake every waiter of every kind; each re-checks and goes
 * back to sleep unless it has reason not to (a handle closing under its own blocked
 * calls uses this to get them out before its memory is released). */
void shoal_ring_wake_all(shoal_ring *r);

/* ---- JoinableQueue ------------------------------------------------------------------- */
void shoal_ring_add_unfinished(shoal_ring *r, uint64_t n);
/* SHOAL_OVERFLOW if there is no unfinished task to mark done. */
shoal_status shoal_ring_task_done(shoal_ring *r);
/* Wait until no task is unfinished: OK, TIMEOUT, INTR, or AGAIN once *stop (may be NULL)
 * is found set after a wake-up (see shoal_ring_wake_all). */
shoal_status shoal_ring_join(shoal_ring *r, int64_t timeout_ns, const int *stop);

#endif
