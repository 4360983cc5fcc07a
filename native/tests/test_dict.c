/* shoal_dict: the shared hash table SharedDict is built on. */
#define _GNU_SOURCE
#include "harness.h"
#include "shoal_dict.h"

#include <stdio.h>
#include <string.h>

/* a table in a shared mapping, and the view of it that shoal_dict_check fills */
static shoal_dict *new_table(uint64_t nslots, uint64_t heap, shoal_dict_view *view) {
    uint64_t size = shoal_dict_size_for(nslots, heap);
    shoal_dict *d = shared_map(size);
    CHECK_ST(shoal_dict_init(NULL, d, size, nslots), SHOAL_OK);
    CHECK_ST(shoal_dict_check(view, d, size), SHOAL_OK);
    CHECK(view->d == d && view->size == size && view->nslots == nslots);
    return d;
}

static int put(const shoal_dict_view *t, const char *key, const char *value) {
    shoal_dict_write_begin(t->d);
    int st = shoal_dict_set(t, shoal_dict_hash(key, strlen(key)), key, (uint32_t)strlen(key),
                            value, (uint32_t)strlen(value));
    shoal_dict_write_end(t->d);
    return st;
}

static int del(const shoal_dict_view *t, const char *key) {
    shoal_dict_write_begin(t->d);
    int r = shoal_dict_delete(t, shoal_dict_hash(key, strlen(key)), key, (uint32_t)strlen(key));
    shoal_dict_write_end(t->d);
    return r;
}

/* 1 and the value in buf if found */
static int get(const shoal_dict_view *t, const char *key, char *buf, size_t cap) {
    const char *v;
    uint32_t vl;
    int r = shoal_dict_lookup(t, shoal_dict_hash(key, strlen(key)), key, (uint32_t)strlen(key), &v,
                              &vl);
    if (r == 1) {
        CHECK(vl < cap);
        memcpy(buf, v, vl);
        buf[vl] = 0;
    }
    return r;
}

TEST(dict_set_get_overwrite_delete) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 8192, &t);
    char buf[256];
    CHECK_EQ(shoal_dict_hash("abc", 3), shoal_dict_hash("abc", 3));
    CHECK(shoal_dict_hash("abc", 3) != shoal_dict_hash("abd", 3));
    CHECK_EQ(get(&t, "a", buf, sizeof buf), 0);
    CHECK_EQ(put(&t, "a", "one"), SHOAL_OK);
    CHECK_EQ(put(&t, "b", "two"), SHOAL_OK);
    CHECK_EQ(get(&t, "a", buf, sizeof buf), 1);
    CHECK(strcmp(buf, "one") == 0);
    CHECK_EQ(put(&t, "a", "uno, longer than before"), SHOAL_OK);
    CHECK_EQ(get(&t, "a", buf, sizeof buf), 1);
    CHECK(strcmp(buf, "uno, longer than before") == 0);
    CHECK_EQ(d->count, 2);
    CHECK_EQ(del(&t, "a"), 1);
    CHECK_EQ(del(&t, "a"), 0);
    CHECK_EQ(get(&t, "a", buf, sizeof buf), 0);
    CHECK_EQ(d->count, 1);
    CHECK_EQ(d->tombstones, 1);
    CHECK_EQ(put(&t, "a", "back"), SHOAL_OK); /* reuses the tombstone */
    CHECK_EQ(d->tombstones, 0);
    CHECK_EQ(d->version % 2, 0);
}

TEST(dict_full_then_copy_into_bigger) {
    shoal_dict_view t, bt;
    shoal_dict *d = new_table(64, 4096, &t);
    char key[32], value[32], buf[64];
    int n = 0;
    for (;; n++) {
        snprintf(key, sizeof key, "key%d", n);
        snprintf(value, sizeof value, "value%d", n);
        if (put(&t, key, value) != SHOAL_OK)
            break;
    }
    CHECK(n > 10 && n <= 44); /* slots (11/16 of 64) or heap ran out */
    CHECK_EQ(d->count, (uint64_t)n);
    shoal_dict *big = new_table(256, 65536, &bt);
    CHECK_EQ(shoal_dict_copy(&t, &bt), SHOAL_OK);
    CHECK_EQ(big->count, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key%d", i);
        snprintf(value, sizeof value, "value%d", i);
        CHECK_EQ(get(&bt, key, buf, sizeof buf), 1);
        CHECK(strcmp(buf, value) == 0);
    }
}

TEST(dict_churn_reuses_blocks) {
    shoal_dict_view t;
    shoal_dict *d = new_table(1024, 65536, &t);
    char key[32];
    for (int i = 0; i < 200000; i++) {
        snprintf(key, sizeof key, "k%d", i % 100);
        CHECK_EQ(put(&t, key, (i & 1) ? "short" : "a somewhat longer value"), SHOAL_OK);
        if (i % 3 == 0)
            CHECK_EQ(del(&t, key), 1);
    }
    /* 100 keys in at most two classes: the heap top never passed a few hundred blocks */
    CHECK(d->heap_top - d->heap_offset <= 2 * 100 * 64 + 64 * 4);
}

/* the keys in iteration order, joined by ',' into buf */
static const char *order(const shoal_dict_view *t, char *buf, size_t cap) {
    uint64_t pos = 0;
    const char *k, *v;
    uint32_t kl, vl;
    size_t used = 0;
    buf[0] = 0;
    int r;
    while ((r = shoal_dict_next(t, &pos, &k, &kl, &v, &vl)) == 1) {
        CHECK(used + kl + 2 < cap);
        if (used)
            buf[used++] = ',';
        memcpy(buf + used, k, kl);
        used += kl;
        buf[used] = 0;
    }
    CHECK_EQ(r, 0);
    return buf;
}

TEST(dict_iterates_in_insertion_order) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 8192, &t);
    char buf[512];
    const char *keys[] = {"zebra", "apple", "m", "b", "kiwi"};
    for (int i = 0; i < 5; i++)
        CHECK_EQ(put(&t, keys[i], "v"), SHOAL_OK);
    CHECK(strcmp(order(&t, buf, sizeof buf), "zebra,apple,m,b,kiwi") == 0);
    CHECK_EQ(put(&t, "apple", "an overwrite keeps its place, in a bigger block"), SHOAL_OK);
    CHECK_EQ(del(&t, "m"), 1);
    CHECK_EQ(put(&t, "zebra", "z"), SHOAL_OK);
    CHECK_EQ(put(&t, "m", "back, last"), SHOAL_OK);
    CHECK(strcmp(order(&t, buf, sizeof buf), "zebra,apple,b,kiwi,m") == 0);
    /* the last one, and deleting at the end hands its position out again */
    uint64_t pos, top = d->order_top;
    const char *k, *v;
    uint32_t kl, vl;
    CHECK_EQ(shoal_dict_last(&t, &pos, &k, &kl, &v, &vl), 1);
    CHECK(kl == 1 && k[0] == 'm' && pos == top - 1);
    CHECK_EQ(del(&t, "m"), 1);
    CHECK_EQ(del(&t, "kiwi"), 1);
    CHECK_EQ(d->order_top, top - 2); /* (the hole m left before b stays) */
    CHECK_EQ(shoal_dict_last(&t, &pos, &k, &kl, &v, &vl), 1);
    CHECK(kl == 1 && k[0] == 'b');
    /* copied in order, positions compacted */
    shoal_dict_view big;
    new_table(256, 1 << 16, &big);
    CHECK_ST(shoal_dict_copy(&t, &big), SHOAL_OK);
    CHECK(strcmp(order(&big, buf, sizeof buf), "zebra,apple,b") == 0);
    CHECK_EQ(big.d->order_top, 3);
}

TEST(dict_positions_are_compacted_when_they_run_out) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 1 << 16, &t);
    char buf[512], key[16], want[512];
    CHECK_EQ(put(&t, "first", "v"), SHOAL_OK);
    CHECK_EQ(put(&t, "second", "v"), SHOAL_OK);
    /* a queue's churn over 20 keys: each insert goes last (and reuses its key's
     * tombstone), each delete leaves a hole at the front: positions run out many times */
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "q%d", i % 20);
        CHECK_EQ(put(&t, key, "v"), SHOAL_OK);
        if (i >= 10) {
            snprintf(key, sizeof key, "q%d", (i - 10) % 20);
            CHECK_EQ(del(&t, key), 1);
        }
        CHECK(d->order_top <= 64);
    }
    CHECK_EQ(put(&t, "second", "overwritten"), SHOAL_OK);
    strcpy(want, "first,second");
    for (int i = 1990; i < 2000; i++)
        sprintf(want + strlen(want), ",q%d", i % 20);
    CHECK(strcmp(order(&t, buf, sizeof buf), want) == 0);
}

TEST(dict_stale_positions_are_skipped_and_copy_keeps_every_entry) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 8192, &t);
    char buf[512];
    CHECK_EQ(put(&t, "a", "1"), SHOAL_OK);
    CHECK_EQ(put(&t, "b", "2"), SHOAL_OK);
    CHECK_EQ(put(&t, "c", "3"), SHOAL_OK);
    uint32_t *ord = (uint32_t *)((char *)d + SHOAL_DICT_HEADER_SIZE + 64 * sizeof(shoal_dict_slot));
    /* a writer that died after recording a position, before publishing its slot: the
     * position names a slot that is empty, or holds another entry */
    ord[3] = 0;
    ord[4] = ord[0];
    ord[5] = 1u << 30;
    d->order_top = 6;
    CHECK(strcmp(order(&t, buf, sizeof buf), "a,b,c") == 0);
    /* a stray write into the order: "b" is named nowhere, yet a rebuild keeps it */
    ord[1] = SHOAL_DICT_HOLE;
    CHECK(strcmp(order(&t, buf, sizeof buf), "a,c") == 0);
    shoal_dict_view big;
    new_table(64, 8192, &big);
    CHECK_ST(shoal_dict_copy(&t, &big), SHOAL_OK);
    CHECK(strcmp(order(&big, buf, sizeof buf), "a,c,b") == 0);
    /* an order top past the slots is bounded by the view */
    d->order_top = (uint64_t)1 << 60;
    CHECK(strcmp(order(&t, buf, sizeof buf), "a,c") == 0);
    CHECK_EQ(put(&t, "d", "4"), SHOAL_OK); /* the positions "ran out": compacted */
    CHECK(strcmp(order(&t, buf, sizeof buf), "a,c,d") == 0);
}

/* the slot holding key (which must be there) */
static uint32_t slot_of(const shoal_dict_view *t, const char *key) {
    shoal_dict_slot *slots = (shoal_dict_slot *)((char *)t->d + SHOAL_DICT_HEADER_SIZE);
    uint64_t mask = t->nslots - 1, i = shoal_dict_hash(key, strlen(key)) & mask;
    for (;; i = (i + 1) & mask) {
        uint64_t off = slots[i].entry;
        if (off > SHOAL_DICT_TOMBSTONE && !memcmp((char *)t->d + off + 16, key, strlen(key)))
            return (uint32_t)i;
        CHECK(off != SHOAL_DICT_EMPTY);
    }
}

TEST(dict_compaction_killed_midway_leaves_every_entry_once) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 8192, &t);
    char buf[512];
    CHECK_EQ(put(&t, "a", "1"), SHOAL_OK);
    CHECK_EQ(put(&t, "b", "2"), SHOAL_OK);
    CHECK_EQ(put(&t, "c", "3"), SHOAL_OK);
    CHECK_EQ(put(&t, "d", "4"), SHOAL_OK);
    CHECK_EQ(del(&t, "b"), 1); /* a hole at position 1 */
    uint32_t *ord = (uint32_t *)((char *)d + SHOAL_DICT_HEADER_SIZE + 64 * sizeof(shoal_dict_slot));
    shoal_dict_slot *slots = (shoal_dict_slot *)((char *)d + SHOAL_DICT_HEADER_SIZE);
    uint32_t c = slot_of(&t, "c");
    uint32_t *c_pos = (uint32_t *)((char *)d + slots[c].entry + 12);
    CHECK_EQ(*c_pos, 2);
    /* the compaction's first step for "c": its slot at the new position */
    ord[1] = c;
    CHECK(strcmp(order(&t, buf, sizeof buf), "a,c,d") == 0);
    /* its second: the entry names the new position (the old one is stale now) */
    *c_pos = 1;
    CHECK(strcmp(order(&t, buf, sizeof buf), "a,c,d") == 0);
    /* a rebuild from there, and the next writer's compaction, keep the order */
    shoal_dict_view fresh;
    new_table(64, 8192, &fresh);
    CHECK_ST(shoal_dict_copy(&t, &fresh), SHOAL_OK);
    CHECK(strcmp(order(&fresh, buf, sizeof buf), "a,c,d") == 0);
    d->order_top = 64; /* out of positions: the next insert compacts */
    CHECK_EQ(put(&t, "e", "5"), SHOAL_OK);
    CHECK(strcmp(order(&t, buf, sizeof buf), "a,c,d,e") == 0);
    CHECK_EQ(d->order_top, 4);
}

TEST(dict_lookup_survives_garbage) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 4096, &t);
    CHECK_EQ(put(&t, "a", "x"), SHOAL_OK);
    shoal_dict_slot *slots = (shoal_dict_slot *)((char *)d + SHOAL_DICT_HEADER_SIZE);
    uint64_t h = shoal_dict_hash("a", 1);
    slots[h & 63].entry = t.size + 4096; /* what a torn read might see */
    const char *v;
    uint32_t vl;
    CHECK_EQ(shoal_dict_lookup(&t, h, "a", 1, &v, &vl), -1);
    slots[h & 63].entry = d->heap_offset + 16 * 3; /* inside the heap, lengths garbage */
    memset((char *)d + d->heap_offset + 48, 0xff, 16);
    CHECK_EQ(shoal_dict_lookup(&t, h, "a", 1, &v, &vl), -1);
    uint64_t pos = 0;
    const char *k;
    uint32_t kl;
    CHECK_EQ(shoal_dict_next(&t, &pos, &k, &kl, &v, &vl), -1);
}

/* ---- memory written to outside shoal (#10): the view's geometry, checked offsets --- */

TEST(dict_geometry_written_after_the_check_is_never_used) {
    shoal_dict_view t, again;
    shoal_dict *d = new_table(64, 8192, &t);
    char buf[64];
    CHECK_EQ(put(&t, "a", "one"), SHOAL_OK);
    /* stray writes make the table "huge": this view keeps the geometry it checked */
    d->nslots = (uint64_t)1 << 40;
    d->total_size = (uint64_t)1 << 62;
    d->heap_offset = 12345;
    CHECK_EQ(put(&t, "b", "two"), SHOAL_OK);
    CHECK_EQ(get(&t, "a", buf, sizeof buf), 1);
    CHECK_EQ(get(&t, "b", buf, sizeof buf), 1);
    CHECK(strcmp(buf, "two") == 0);
    CHECK_EQ(del(&t, "a"), 1);
    /* and a process checking it now refuses it */
    CHECK_ST(shoal_dict_check(&again, d, t.size), SHOAL_BAD_LAYOUT);
    d->nslots = 64;
    d->heap_offset = t.heap;
    CHECK_ST(shoal_dict_check(&again, d, t.size), SHOAL_BAD_LAYOUT); /* the size still */
    d->total_size = t.size;
    CHECK_ST(shoal_dict_check(&again, d, t.size), SHOAL_OK);
    d->nslots = 63; /* not a power of two */
    d->heap_offset = SHOAL_DICT_HEADER_SIZE + 63 * sizeof(shoal_dict_slot);
    CHECK_ST(shoal_dict_check(&again, d, t.size), SHOAL_BAD_LAYOUT);
}

TEST(dict_corrupt_free_list_heads_are_dropped_not_followed) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 8192, &t);
    char buf[64];
    uint64_t bad[] = {7, 16, t.heap - 16, t.heap + 8, t.size, t.size - 16, (uint64_t)1 << 44};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* "x": a 32-byte block, class 0 */
        d->free_head[0] = bad[i];
        uint64_t top = d->heap_top;
        CHECK_EQ(put(&t, "k", "x"), SHOAL_OK);
        CHECK_EQ(d->free_head[0], 0);     /* dropped */
        CHECK_EQ(d->heap_top, top + 32); /* the block came from the heap's top */
        CHECK_EQ(get(&t, "k", buf, sizeof buf), 1);
        CHECK(strcmp(buf, "x") == 0);
        CHECK_EQ(del(&t, "k"), 1); /* and goes on the list, which is sound again */
        CHECK_EQ(d->free_head[0], top);
    }
    /* a free block's link, followed when the block is taken, is checked in its turn */
    CHECK_EQ(put(&t, "k", "x"), SHOAL_OK);
    CHECK_EQ(put(&t, "j", "x"), SHOAL_OK);
    CHECK_EQ(del(&t, "k"), 1);
    uint64_t head = d->free_head[0];
    memcpy((char *)d + head + 16, &(uint64_t){(uint64_t)1 << 44}, 8);
    CHECK_EQ(put(&t, "k", "x"), SHOAL_OK); /* takes head, the link becomes the head */
    CHECK_EQ(put(&t, "i", "x"), SHOAL_OK); /* which is dropped */
    CHECK_EQ(d->free_head[0], 0);
}

TEST(dict_block_freed_with_a_class_that_does_not_fit_is_leaked) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 8192, &t);
    CHECK_EQ(put(&t, "a", "one"), SHOAL_OK);
    shoal_dict_slot *slots = (shoal_dict_slot *)((char *)d + SHOAL_DICT_HEADER_SIZE);
    uint64_t h = shoal_dict_hash("a", 1), entry = slots[h & 63].entry;
    uint32_t cls = 12; /* 128 KiB: more than the table */
    memcpy((char *)d + entry + 8, &cls, 4);
    CHECK_EQ(del(&t, "a"), 1);
    CHECK_EQ(d->free_head[12], 0); /* a 128 KiB entry would have been written there */
    cls = SHOAL_DICT_CLASSES + 3;
    CHECK_EQ(put(&t, "a", "one"), SHOAL_OK);
    entry = slots[h & 63].entry;
    memcpy((char *)d + entry + 8, &cls, 4);
    CHECK_EQ(del(&t, "a"), 1);
}

TEST(dict_writers_refuse_a_slot_of_the_key_that_names_no_entry) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 8192, &t);
    CHECK_EQ(put(&t, "a", "one"), SHOAL_OK);
    shoal_dict_slot *slots = (shoal_dict_slot *)((char *)d + SHOAL_DICT_HEADER_SIZE);
    uint64_t h = shoal_dict_hash("a", 1);
    slots[h & 63].entry = t.size + 4096;
    /* the key may be there: no second copy, no delete of what cannot be read */
    CHECK_EQ(put(&t, "a", "two"), SHOAL_BAD_LAYOUT);
    CHECK_EQ(del(&t, "a"), -1);
    CHECK_EQ(d->count, 1);
}

TEST(dict_heap_top_outside_the_heap_makes_the_table_full) {
    shoal_dict_view t;
    shoal_dict *d = new_table(64, 8192, &t);
    uint64_t bad[] = {0, 8, t.heap - 16, t.heap + 8, t.size - 16, t.size + 4096, UINT64_MAX - 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        d->heap_top = bad[i];
        CHECK_EQ(put(&t, "k", "x"), SHOAL_DICT_FULL); /* the caller rebuilds the table */
        CHECK_EQ(d->heap_top, bad[i]);
    }
}

/* ---- a writer and a lock-free reader in two processes ------------------------------ */

struct rw {
    shoal_mutex lock;
    uint32_t stop;
    uint32_t reads;
    uint64_t size;
};

#define RW_NSLOTS 256
#define RW_HEAP (1 << 16)

static shoal_dict *rw_table(struct rw *s) { return (shoal_dict *)((char *)s + 4096); }

/* each process checks the table, as a SharedDict handle does when it binds it */
static shoal_dict_view rw_view(struct rw *s) {
    shoal_dict_view t;
    CHECK_ST(shoal_dict_check(&t, rw_table(s), s->size), SHOAL_OK);
    return t;
}

static void rw_writer(void *arg) {
    struct rw *s = arg;
    shoal_dict_view t = rw_view(s);
    uint64_t seed = 7;
    char key[16], value[128];
    for (int i = 0; i < 100000; i++) {
        uint32_t k = rnd(&seed) % 50, n = 1 + rnd(&seed) % 60;
        snprintf(key, sizeof key, "k%u", k);
        memset(value, 'a' + (int)(n % 26), n);
        value[n] = 0;
        CHECK_ST(shoal_mutex_lock(&s->lock, shoal_self_token(), 10 * SEC), SHOAL_OK);
        if (rnd(&seed) % 8 == 0)
            del(&t, key);
        else
            CHECK_EQ(put(&t, key, value), SHOAL_OK);
        shoal_mutex_unlock(&s->lock);
    }
    __atomic_store_n(&s->stop, 1, __ATOMIC_SEQ_CST);
}

static void rw_reader(void *arg) {
    struct rw *s = arg;
    shoal_dict_view t = rw_view(s);
    shoal_dict *d = t.d;
    uint64_t seed = 11;
    char key[16], buf[256];
    while (!__atomic_load_n(&s->stop, __ATOMIC_SEQ_CST)) {
        snprintf(key, sizeof key, "k%u", rnd(&seed) % 50);
        uint64_t v = shoal_dict_read_begin(d);
        if (v & 1)
            continue;
        const char *val;
        uint32_t vl;
        int r = shoal_dict_lookup(&t, shoal_dict_hash(key, strlen(key)), key, (uint32_t)strlen(key),
                                  &val, &vl);
        if (r == 1 && vl < sizeof buf)
            memcpy(buf, val, vl);
        if (shoal_dict_read_retry(d, v))
            continue;
        CHECK(r >= 0);
        if (r == 1) {
            /* the invariant: n copies of letter 'a' + n % 26 */
            CHECK(vl >= 1 && vl <= 60);
            for (uint32_t i = 0; i < vl; i++)
                CHECK(buf[i] == 'a' + (int)(vl % 26));
            __atomic_fetch_add(&s->reads, 1, __ATOMIC_SEQ_CST);
        }
    }
}

TEST(dict_lock_free_reader_sees_no_torn_value) {
    uint64_t size = shoal_dict_size_for(RW_NSLOTS, RW_HEAP);
    struct rw *s = shared_map(4096 + size);
    s->size = size;
    CHECK_ST(shoal_dict_init(NULL, rw_table(s), size, RW_NSLOTS), SHOAL_OK);
    pid_t reader = spawn(rw_reader, s), writer = spawn(rw_writer, s);
    join(writer, 30000);
    join(reader, 30000);
    CHECK(s->reads > 0);
}
