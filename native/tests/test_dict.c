/* shoal_dict: the shared hash table SharedDict is built on. */
#define _GNU_SOURCE
#include "harness.h"
#include "shoal_dict.h"

#include <stdio.h>
#include <string.h>

static shoal_dict *new_table(uint64_t nslots, uint64_t heap, uint64_t *size) {
    *size = shoal_dict_size_for(nslots, heap);
    shoal_dict *d = shared_map(*size);
    CHECK_ST(shoal_dict_init(d, *size, nslots), SHOAL_OK);
    CHECK_ST(shoal_dict_check(d, *size), SHOAL_OK);
    return d;
}

static int put(shoal_dict *d, const char *key, const char *value) {
    shoal_dict_write_begin(d);
    int st = shoal_dict_set(d, shoal_dict_hash(key, strlen(key)), key, (uint32_t)strlen(key),
                            value, (uint32_t)strlen(value));
    shoal_dict_write_end(d);
    return st;
}

static int del(shoal_dict *d, const char *key) {
    shoal_dict_write_begin(d);
    int r = shoal_dict_delete(d, shoal_dict_hash(key, strlen(key)), key, (uint32_t)strlen(key));
    shoal_dict_write_end(d);
    return r;
}

/* 1 and the value in buf if found */
static int get(const shoal_dict *d, uint64_t size, const char *key, char *buf, size_t cap) {
    const char *v;
    uint32_t vl;
    int r = shoal_dict_lookup(d, size, shoal_dict_hash(key, strlen(key)), key,
                              (uint32_t)strlen(key), &v, &vl);
    if (r == 1) {
        CHECK(vl < cap);
        memcpy(buf, v, vl);
        buf[vl] = 0;
    }
    return r;
}

TEST(dict_set_get_overwrite_delete) {
    uint64_t size;
    shoal_dict *d = new_table(64, 8192, &size);
    char buf[256];
    CHECK_EQ(shoal_dict_hash("abc", 3), shoal_dict_hash("abc", 3));
    CHECK(shoal_dict_hash("abc", 3) != shoal_dict_hash("abd", 3));
    CHECK_EQ(get(d, size, "a", buf, sizeof buf), 0);
    CHECK_EQ(put(d, "a", "one"), SHOAL_OK);
    CHECK_EQ(put(d, "b", "two"), SHOAL_OK);
    CHECK_EQ(get(d, size, "a", buf, sizeof buf), 1);
    CHECK(strcmp(buf, "one") == 0);
    CHECK_EQ(put(d, "a", "uno, longer than before"), SHOAL_OK);
    CHECK_EQ(get(d, size, "a", buf, sizeof buf), 1);
    CHECK(strcmp(buf, "uno, longer than before") == 0);
    CHECK_EQ(d->count, 2);
    CHECK_EQ(del(d, "a"), 1);
    CHECK_EQ(del(d, "a"), 0);
    CHECK_EQ(get(d, size, "a", buf, sizeof buf), 0);
    CHECK_EQ(d->count, 1);
    CHECK_EQ(d->tombstones, 1);
    CHECK_EQ(put(d, "a", "back"), SHOAL_OK); /* reuses the tombstone */
    CHECK_EQ(d->tombstones, 0);
    CHECK_EQ(d->version % 2, 0);
}

TEST(dict_full_then_copy_into_bigger) {
    uint64_t size, big_size;
    shoal_dict *d = new_table(64, 4096, &size);
    char key[32], value[32], buf[64];
    int n = 0;
    for (;; n++) {
        snprintf(key, sizeof key, "key%d", n);
        snprintf(value, sizeof value, "value%d", n);
        if (put(d, key, value) != SHOAL_OK)
            break;
    }
    CHECK(n > 10 && n <= 44); /* slots (11/16 of 64) or heap ran out */
    CHECK_EQ(d->count, (uint64_t)n);
    shoal_dict *big = new_table(256, 65536, &big_size);
    CHECK_EQ(shoal_dict_copy(d, size, big), SHOAL_OK);
    CHECK_EQ(big->count, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key%d", i);
        snprintf(value, sizeof value, "value%d", i);
        CHECK_EQ(get(big, big_size, key, buf, sizeof buf), 1);
        CHECK(strcmp(buf, value) == 0);
    }
}

TEST(dict_churn_reuses_blocks) {
    uint64_t size;
    shoal_dict *d = new_table(1024, 65536, &size);
    char key[32];
    for (int i = 0; i < 200000; i++) {
        snprintf(key, sizeof key, "k%d", i % 100);
        CHECK_EQ(put(d, key, (i & 1) ? "short" : "a somewhat longer value"), SHOAL_OK);
        if (i % 3 == 0)
            CHECK_EQ(del(d, key), 1);
    }
    /* 100 keys in at most two classes: the heap top never passed a few hundred blocks */
    CHECK(d->heap_top - d->heap_offset <= 2 * 100 * 64 + 64 * 4);
}

TEST(dict_lookup_survives_garbage) {
    uint64_t size;
    shoal_dict *d = new_table(64, 4096, &size);
    CHECK_EQ(put(d, "a", "x"), SHOAL_OK);
    shoal_dict_slot *slots = (shoal_dict_slot *)((char *)d + SHOAL_DICT_HEADER_SIZE);
    uint64_t h = shoal_dict_hash("a", 1);
    slots[h & 63].entry = size + 4096; /* what a torn read might see */
    const char *v;
    uint32_t vl;
    CHECK_EQ(shoal_dict_lookup(d, size, h, "a", 1, &v, &vl), -1);
    slots[h & 63].entry = d->heap_offset + 16 * 3; /* inside the heap, lengths garbage */
    memset((char *)d + d->heap_offset + 48, 0xff, 16);
    CHECK_EQ(shoal_dict_lookup(d, size, h, "a", 1, &v, &vl), -1);
    d->nslots = 63; /* header garbage too */
    CHECK_EQ(shoal_dict_lookup(d, size, h, "a", 1, &v, &vl), -1);
    uint64_t pos = 0;
    const char *k;
    uint32_t kl;
    CHECK_EQ(shoal_dict_next(d, size, &pos, &k, &kl, &v, &vl), -1);
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

static void rw_writer(void *arg) {
    struct rw *s = arg;
    shoal_dict *d = rw_table(s);
    uint64_t seed = 7;
    char key[16], value[128];
    for (int i = 0; i < 100000; i++) {
        uint32_t k = rnd(&seed) % 50, n = 1 + rnd(&seed) % 60;
        snprintf(key, sizeof key, "k%u", k);
        memset(value, 'a' + (int)(n % 26), n);
        value[n] = 0;
        CHECK_ST(shoal_mutex_lock(&s->lock, shoal_self_token(), 10 * SEC), SHOAL_OK);
        if (rnd(&seed) % 8 == 0)
            del(d, key);
        else
            CHECK_EQ(put(d, key, value), SHOAL_OK);
        shoal_mutex_unlock(&s->lock);
    }
    __atomic_store_n(&s->stop, 1, __ATOMIC_SEQ_CST);
}

static void rw_reader(void *arg) {
    struct rw *s = arg;
    shoal_dict *d = rw_table(s);
    uint64_t seed = 11;
    char key[16], buf[256];
    while (!__atomic_load_n(&s->stop, __ATOMIC_SEQ_CST)) {
        snprintf(key, sizeof key, "k%u", rnd(&seed) % 50);
        uint64_t v = shoal_dict_read_begin(d);
        if (v & 1)
            continue;
        const char *val;
        uint32_t vl;
        int r = shoal_dict_lookup(d, s->size, shoal_dict_hash(key, strlen(key)), key,
                                  (uint32_t)strlen(key), &val, &vl);
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
    CHECK_ST(shoal_dict_init(rw_table(s), size, RW_NSLOTS), SHOAL_OK);
    pid_t reader = spawn(rw_reader, s), writer = spawn(rw_writer, s);
    join(writer, 30000);
    join(reader, 30000);
    CHECK(s->reads > 0);
}
