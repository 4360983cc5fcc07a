/*
 * shoal dict table: an open-addressing hash table of byte-string keys and values in
 * memory the caller provides (a shared mapping), read without locks.
 *
 * Layout (offsets from the table's start; all are table-relative, so every process
 * may map it anywhere):
 *
 *     shoal_dict header (512 bytes)
 *     slots: nslots x {u64 hash, u64 entry}   entry 0 = empty, 1 = tombstone,
 *                                             else the offset of an entry
 *     order: nslots x u32                     the slot of each insertion position,
 *                                             0xffffffff = a hole (deleted)
 *     heap:  entries, each 16-byte header {u32 key_len, u32 value_len, u32 class,
 *            u32 position} + key + value, in blocks of (32 << class) bytes
 *
 * Insertion order (#11): an insert takes the next position (`order_top`), records its
 * slot there and its position in the entry; an overwrite keeps the position, a delete
 * leaves a hole.  Iteration walks the positions and takes an entry only where the
 * slot it names is live and that entry names the position back, so a stale position
 * (a writer died between its steps) is skipped, never followed.  The slots stay the
 * truth of what the table holds; the order only ranks it.  When the positions run
 * out the writer gets SHOAL_DICT_FULL and the rebuild compacts them.
 *
 * Geometry (#10): a process reads a table's size, slot count and heap offset once,
 * when shoal_dict_check (or shoal_dict_init) accepts the table, into a shoal_dict_view
 * of its own, and never from shared memory again.  Every offset found in the table
 * afterwards -- a slot's entry, a free list's head and links, the heap's top, a block's
 * size class -- is checked against that view before anything is read or written there,
 * so a stray write into the table can make a call fail (readers see -1, writers
 * SHOAL_DICT_FULL, which makes the caller rebuild the table from what its slots still
 * hold), never read or write outside the table.  A free list whose head does not name
 * a whole block of its class inside the heap is dropped (its blocks leak until the
 * next rebuild), and a block freed with a class that does not fit is leaked rather
 * than listed.
 *
 * Writers serialise on a lock the caller owns (shoal.SharedDict keeps it in the
 * dict's root) and bracket every change with shoal_dict_write_begin/end, which make
 * `version` odd and then even again (a seqlock).  Readers take no lock: they read
 * the version, look up with every offset bounds-checked (a torn read can never make
 * them read outside the table), copy what they found, and retry if the version moved.
 *
 * Crash safety: each change is a sequence of steps that leaves the slots consistent
 * at every instant: an entry is written completely (with its position, recorded in
 * the order first) before one store publishes its offset in a slot, a delete is one
 * store of a tombstone (then the hole), an overwrite publishes the new entry (same
 * position) and then frees the old one.  A writer killed mid-change leaves `version`
 * odd, possibly a counter off by one and a heap block leaked; whoever takes the lock
 * next (the mutex reports the dead owner) rebuilds the table from its slots
 * (shoal_dict_copy, in insertion order) into a fresh one, which drops both.
 *
 * Memory reuse: freed blocks go on a free list per size class and are reused first,
 * so overwrites and set/delete churn stay in place.  When the slots are too full
 * (tombstones included) or the heap has no block of the needed class, the writer
 * gets SHOAL_DICT_FULL and rebuilds into a bigger table (the glue decides the size).
 */
#ifndef SHOAL_DICT_H
#define SHOAL_DICT_H

#include <stddef.h>
#include <stdint.h>

#include "shoal_core.h"

#define SHOAL_DICT_MAGIC 0x5443494444414f48ULL /* "HOADDICT" */
#define SHOAL_DICT_LAYOUT 2u /* 2: the insertion order (#11) */
#define SHOAL_DICT_HEADER_SIZE 512u
#define SHOAL_DICT_CLASSES 40
#define SHOAL_DICT_ENTRY_HEADER 16u
#define SHOAL_DICT_MIN_BLOCK 32u
#define SHOAL_DICT_EMPTY 0u
#define SHOAL_DICT_TOMBSTONE 1u
#define SHOAL_DICT_HOLE 0xffffffffu /* an order position of no entry */
/* at most this many slots: a slot index (and a position) fits an order word */
#define SHOAL_DICT_MAX_SLOTS ((uint64_t)1 << 31)
/* slots used (live + tombstones) may reach this many 1/16ths of the slots */
#define SHOAL_DICT_MAX_LOAD16 11u

enum {
    SHOAL_DICT_FULL = 32, /* no slot or no heap block: rebuild into a bigger table */
};

typedef struct {
    uint64_t hash;
    uint64_t entry;
} shoal_dict_slot;

typedef struct {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t reserved0;
    uint64_t version;     /* seqlock: odd while a writer is changing the table */
    uint64_t total_size;  /* bytes of the whole table (header, slots, heap) */
    uint64_t nslots;      /* a power of two */
    uint64_t heap_offset; /* where the heap starts */
    uint64_t count;       /* live entries */
    uint64_t tombstones;  /* deleted slots not yet reused */
    uint64_t heap_top;    /* first never-allocated heap byte (table offset) */
    uint64_t bytes_live;  /* bytes of the blocks live entries occupy */
    uint64_t writes;      /* changes made to this table (statistics) */
    uint64_t order_top;   /* insertion positions handed out: the next insert's */
    uint64_t reserved[4];
    uint64_t free_head[SHOAL_DICT_CLASSES]; /* per class: first free block, 0 none */
    uint8_t pad[SHOAL_DICT_HEADER_SIZE - 128 - 8 * SHOAL_DICT_CLASSES];
} shoal_dict;
_Static_assert(sizeof(shoal_dict) == SHOAL_DICT_HEADER_SIZE, "shoal_dict is part of the shared layout");

/* A process's view of one table: the geometry it checked, never re-read (see above). */
typedef struct {
    shoal_dict *d;
    uint64_t size;   /* bytes of the table (header, slots and heap) */
    uint64_t nslots; /* a power of two */
    uint64_t heap;   /* where the heap starts: SHOAL_DICT_HEADER_SIZE + 20 * nslots */
} shoal_dict_view;

/* A deterministic 64-bit hash (the same in every process, unlike Python's hash()). */
uint64_t shoal_dict_hash(const void *data, size_t len);
/* The block class an entry of this key and value length needs, -1 if too big. */
int shoal_dict_class(uint64_t key_len, uint64_t value_len);
/* Table bytes for nslots (a power of two) and a heap of heap_bytes. */
uint64_t shoal_dict_size_for(uint64_t nslots, uint64_t heap_bytes);
/* Initialise zeroed memory of `size` bytes: the heap gets what the slots leave.  *v is
 * filled on SHOAL_OK (v may be NULL). */
shoal_status shoal_dict_init(shoal_dict_view *v, shoal_dict *d, uint64_t size, uint64_t nslots);
/* SHOAL_OK if d looks like a table this version wrote, fitting in `mapped` bytes; *v is
 * then its geometry, for every call below. */
shoal_status shoal_dict_check(shoal_dict_view *v, shoal_dict *d, uint64_t mapped);

/* ---- readers (no lock): bracket with the version ------------------------------------- */
uint64_t shoal_dict_read_begin(const shoal_dict *d); /* the version (odd: a writer is busy) */
int shoal_dict_read_retry(const shoal_dict *d, uint64_t version); /* 1: it changed, retry */
/* Find key: 1 found (*value, *value_len point into the table), 0 absent, -1 the table
 * reads as corrupt (a torn read: retry; if the version did not move, it is corrupt).
 * The view bounds every offset. */
int shoal_dict_lookup(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len,
                      const char **value, uint32_t *value_len);
/* Iterate in insertion order: the next live entry at position >= *pos (then *pos = its
 * position + 1; start at 0).  1 found, 0 end, -1 corrupt. */
int shoal_dict_next(const shoal_dict_view *v, uint64_t *pos, const char **key, uint32_t *key_len,
                    const char **value, uint32_t *value_len);
/* The live entry inserted last (*pos: its position): 1 found, 0 empty, -1 corrupt. */
int shoal_dict_last(const shoal_dict_view *v, uint64_t *pos, const char **key, uint32_t *key_len,
                    const char **value, uint32_t *value_len);

/* ---- writers (holding the caller's lock) --------------------------------------------- */
void shoal_dict_write_begin(shoal_dict *d);
void shoal_dict_write_end(shoal_dict *d);
/* Insert or overwrite: SHOAL_OK, SHOAL_DICT_FULL, or SHOAL_BAD_LAYOUT when a slot of the
 * key's hash names no entry (corrupt); nothing changed but SHOAL_OK. */
int shoal_dict_set(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len,
                   const void *value, uint32_t value_len);
/* Same, with the value given as two pieces (a tag byte and the payload). */
int shoal_dict_set2(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len,
                    const void *v1, uint32_t len1, const void *v2, uint32_t len2);
/* Remove key: 1 removed, 0 absent, -1 a slot of its hash names no entry (corrupt). */
int shoal_dict_delete(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len);
/* Copy every live entry of src into dst (freshly initialised), in insertion order (dst's
 * positions compacted): SHOAL_OK, FULL, or SHOAL_BAD_LAYOUT when src reads as corrupt. */
int shoal_dict_copy(const shoal_dict_view *src, const shoal_dict_view *dst);

/* ---- the root: which table is current ----------------------------------------------------
 * A SharedDict's root block lives in a segment of its own and never moves; its table is
 * a segment that is replaced, never resized (shoal._dict: _rebuild publishes a new one).
 * Writers serialise on the root's robust mutex; readers compare the root's generation
 * with the table they have bound.  (The SharedDict's C half, shoal/_core_dict.c, and its
 * Python half, which reads these words by offset: _core exports the offsets.) */
#define SHOAL_DICT_ROOT_NAME_BYTES 64
typedef struct {
    shoal_mutex lock;     /* writers serialise here */
    uint64_t generation;  /* the current table's number: names[generation & 1] */
    uint64_t sizes[2];    /* its table's size in bytes (after the segment header) */
    uint64_t rebuilds;    /* tables made so far (statistics) */
    uint64_t stored;      /* nonzero: values holding references may be in the table */
    uint64_t reserved[6];
    char names[2][SHOAL_DICT_ROOT_NAME_BYTES]; /* segment names, NUL padded */
} shoal_dict_root;
_Static_assert(sizeof(shoal_dict_root) == 256, "shoal_dict_root is part of the shared layout");
#define SHOAL_DICT_ROOT_GENERATION 40
#define SHOAL_DICT_ROOT_SIZES 48
#define SHOAL_DICT_ROOT_REBUILDS 64
#define SHOAL_DICT_ROOT_STORED 72
#define SHOAL_DICT_ROOT_NAMES 128
_Static_assert(offsetof(shoal_dict_root, generation) == SHOAL_DICT_ROOT_GENERATION, "layout");
_Static_assert(offsetof(shoal_dict_root, sizes) == SHOAL_DICT_ROOT_SIZES, "layout");
_Static_assert(offsetof(shoal_dict_root, rebuilds) == SHOAL_DICT_ROOT_REBUILDS, "layout");
_Static_assert(offsetof(shoal_dict_root, stored) == SHOAL_DICT_ROOT_STORED, "layout");
_Static_assert(offsetof(shoal_dict_root, names) == SHOAL_DICT_ROOT_NAMES, "layout");

#endif
