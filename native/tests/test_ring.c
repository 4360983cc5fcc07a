/* The record ring (native/include/shoal_ring.h), issue #10.
 *
 * ring_threads_*: producer and consumer *threads* of one process on one small ring, so
 * ThreadSanitizer (`make test-sanitize`) sees every access the protocol makes: records
 * written before the tail store that publishes them and read after the load that sees
 * it, PAD records at the wrap, the item limit, and the register / re-check / unlock /
 * wait protocol of both sides.  They are driven the way shoal._core's glue drives the
 * ring (src/shoal/_core_ring.c: put_records, get_records).  Each record carries its
 * producer, its sequence number and a pattern derived from both: every record must
 * arrive once, intact, and in its producer's order at each consumer.
 *
 * ring_geometry_* and ring_corrupt_*: the geometry is fixed at attach, and whatever is
 * read from shared memory later is checked against it (BAD_LAYOUT, never an access
 * outside the data area: under ASan an out-of-bounds read fails the test).
 */
#define _GNU_SOURCE
#include "harness.h"

#include "shoal_ring.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Zeroed heap memory for a ring (one process, threads only): ASan puts redzones
 * around it, so a read or write past the data area fails the test. */
static shoal_ring *ring_memory(uint64_t size) {
    void *p = aligned_alloc(64, (size + 63) / 64 * 64);
    CHECK(p != NULL);
    memset(p, 0, size);
    return p;
}

#define MAX_PRODUCERS 4
#define PER_PRODUCER 20000

struct bench {
    shoal_ring_view v;
    uint32_t producers, consumers, per_producer;
    uint32_t producers_done;
    uint8_t *seen; /* seen[p * per_producer + seq]: times (p, seq) arrived */
    uint64_t taken;
};

struct worker {
    struct bench *b;
    uint32_t id;
    uint64_t rng;
    uint32_t last[MAX_PRODUCERS]; /* consumers: the next seq expected, + 1 */
};

static void lock(shoal_mutex *m) {
    shoal_status st = shoal_mutex_lock(m, shoal_self_token(), 10 * SEC);
    CHECK(st == SHOAL_OK);
}

static void unlock(shoal_mutex *m) { CHECK_ST(shoal_mutex_unlock(m), SHOAL_OK); }

static uint8_t pattern(uint32_t p, uint32_t seq, uint32_t i) {
    return (uint8_t)(p * 131u + seq * 7u + i);
}

/* One blocking put, as the glue's put_records does it. */
static void put_record(const shoal_ring_view *v, const uint8_t *data, uint32_t len) {
    shoal_ring *r = v->ring;
    for (;;) {
        lock(&r->put_lock);
        shoal_ring_slot slot;
        int st = shoal_ring_reserve(v, len, &slot), registered = 0, wslot = -1;
        uint32_t seq = 0;
        if (st == SHOAL_RING_FULL) {
            seq = shoal_ring_register_producer(v, &wslot); /* before the last look */
            registered = 1;
            st = shoal_ring_reserve(v, len, &slot);
        }
        if (st == SHOAL_OK) {
            memcpy(slot.dst, data, len);
            shoal_ring_publish(v, &slot, 0);
        }
        unlock(&r->put_lock);
        if (st == SHOAL_OK) {
            if (registered)
                shoal_ring_unregister_producer(v, wslot);
            shoal_ring_wake_consumers(v, 1);
            return;
        }
        CHECK_EQ(st, SHOAL_RING_FULL);
        if (!shoal_ring_spin_for_space(v, len, 100)) {
            shoal_status w = shoal_ring_wait_space(v, seq, 5 * SEC);
            CHECK(w == SHOAL_OK || w == SHOAL_AGAIN || w == SHOAL_INTR);
        }
        shoal_ring_unregister_producer(v, wslot);
    }
}

/* One blocking get into buf: its length, or -1 once the ring is shut down and drained. */
static int get_record(const shoal_ring_view *v, uint8_t *buf, uint32_t size) {
    shoal_ring *r = v->ring;
    for (;;) {
        lock(&r->get_lock);
        shoal_ring_record rec;
        int st = shoal_ring_peek(v, &rec), registered = 0, wslot = -1;
        uint32_t seq = 0;
        if (st == SHOAL_RING_EMPTY) {
            seq = shoal_ring_register_consumer(v, &wslot);
            registered = 1;
            st = shoal_ring_peek(v, &rec);
        }
        if (st == SHOAL_OK) {
            CHECK(rec.len <= size);
            memcpy(buf, rec.src, rec.len);
            shoal_ring_consume(v, &rec);
        }
        unlock(&r->get_lock);
        if (st == SHOAL_OK) {
            if (registered)
                shoal_ring_unregister_consumer(v, wslot);
            shoal_ring_wake_producers(v, 1);
            return (int)rec.len;
        }
        if (st == SHOAL_RING_SHUTDOWN) {
            if (registered)
                shoal_ring_unregister_consumer(v, wslot);
            return -1;
        }
        CHECK_EQ(st, SHOAL_RING_EMPTY);
        if (!shoal_ring_spin_for_data(v, 100)) {
            shoal_status w = shoal_ring_wait_data(v, seq, 5 * SEC);
            CHECK(w == SHOAL_OK || w == SHOAL_AGAIN || w == SHOAL_INTR);
        }
        shoal_ring_unregister_consumer(v, wslot);
    }
}

static void *producer(void *arg) {
    struct worker *w = arg;
    struct bench *b = w->b;
    uint8_t buf[256];
    for (uint32_t seq = 0; seq < b->per_producer; seq++) {
        /* sizes from 8 (producer and seq only) up to near the largest payload, so
         * records wrap at every offset and need PADs */
        uint32_t max = (uint32_t)shoal_ring_max_payload(&b->v);
        uint32_t len = 8 + rnd(&w->rng) % (max - 8 + 1);
        if (len > sizeof buf)
            len = sizeof buf;
        memcpy(buf, &w->id, 4);
        memcpy(buf + 4, &seq, 4);
        for (uint32_t i = 8; i < len; i++)
            buf[i] = pattern(w->id, seq, i);
        put_record(&b->v, buf, len);
    }
    __atomic_fetch_add(&b->producers_done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void *consumer(void *arg) {
    struct worker *w = arg;
    struct bench *b = w->b;
    uint8_t buf[256];
    int len;
    while ((len = get_record(&b->v, buf, sizeof buf)) >= 0) {
        CHECK(len >= 8);
        uint32_t p, seq;
        memcpy(&p, buf, 4);
        memcpy(&seq, buf + 4, 4);
        CHECK(p < b->producers && seq < b->per_producer);
        for (int i = 8; i < len; i++)
            if (buf[i] != pattern(p, seq, (uint32_t)i))
                harness_fail(__FILE__, __LINE__, "record (%u, %u) damaged at byte %d", p, seq, i);
        /* each consumer sees each producer's records in the order they were put */
        CHECK(seq + 1 > w->last[p]);
        w->last[p] = seq + 1;
        CHECK_EQ(__atomic_fetch_add(&b->seen[p * b->per_producer + seq], 1, __ATOMIC_SEQ_CST), 0);
        __atomic_fetch_add(&b->taken, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static void run_threads(uint32_t producers, uint32_t consumers, uint64_t capacity,
                        uint64_t max_items, uint32_t per_producer) {
    uint64_t mapped = SHOAL_RING_HEADER_SIZE + capacity;
    shoal_ring *r = ring_memory(mapped);
    struct bench b = {.producers = producers, .consumers = consumers,
                      .per_producer = per_producer};
    CHECK_ST(shoal_ring_init(&b.v, r, mapped, capacity, max_items), SHOAL_OK);
    b.seen = calloc((size_t)producers * per_producer, 1);
    CHECK(b.seen != NULL);
    pthread_t pt[MAX_PRODUCERS], ct[MAX_PRODUCERS];
    struct worker pw[MAX_PRODUCERS], cw[MAX_PRODUCERS];
    memset(pw, 0, sizeof pw);
    memset(cw, 0, sizeof cw);
    for (uint32_t i = 0; i < consumers; i++) {
        cw[i] = (struct worker){.b = &b, .id = i};
        CHECK(pthread_create(&ct[i], NULL, consumer, &cw[i]) == 0);
    }
    for (uint32_t i = 0; i < producers; i++) {
        pw[i] = (struct worker){.b = &b, .id = i, .rng = 0x9e3779b97f4a7c15ULL * (i + 1)};
        CHECK(pthread_create(&pt[i], NULL, producer, &pw[i]) == 0);
    }
    for (uint32_t i = 0; i < producers; i++)
        pthread_join(pt[i], NULL);
    CHECK_EQ(__atomic_load_n(&b.producers_done, __ATOMIC_SEQ_CST), producers);
    shoal_ring_shutdown(&b.v); /* the consumers drain what is left, then stop */
    for (uint32_t i = 0; i < consumers; i++)
        pthread_join(ct[i], NULL);
    CHECK_EQ(b.taken, (uint64_t)producers * per_producer);
    for (uint64_t i = 0; i < (uint64_t)producers * per_producer; i++)
        CHECK_EQ(b.seen[i], 1);
    CHECK_EQ(shoal_ring_items(&b.v), 0);
    CHECK_EQ(shoal_ring_bytes_used(&b.v), 0);
    CHECK_EQ(b.v.ring->producers_waiting, 0);
    CHECK_EQ(b.v.ring->consumers_waiting, 0);
    free(b.seen);
    free(r);
}

TEST(ring_threads_mpmc) { run_threads(3, 3, 1024, 0, PER_PRODUCER); }

/* one record at a time can be in flight: every put waits for a get and vice versa */
TEST(ring_threads_item_limit) { run_threads(2, 2, 4096, 1, PER_PRODUCER / 2); }

/* the smallest ring: almost every record needs a PAD or waits for room */
TEST(ring_threads_small_ring) { run_threads(2, 1, 64, 0, PER_PRODUCER / 2); }

/* ---- geometry fixed at attach ------------------------------------------------------- */

#define CAP 256u
#define TAIL_AT 128
#define HEAD_AT 192

static shoal_ring *fresh(shoal_ring_view *v, uint64_t max_items) {
    shoal_ring *r = ring_memory(SHOAL_RING_HEADER_SIZE + CAP);
    CHECK_ST(shoal_ring_init(v, r, SHOAL_RING_HEADER_SIZE + CAP, CAP, max_items), SHOAL_OK);
    return r;
}

static void put_bytes(const shoal_ring_view *v, uint32_t len) {
    shoal_ring_slot slot;
    CHECK_EQ(shoal_ring_reserve(v, len, &slot), SHOAL_OK);
    memset(slot.dst, 'x', len);
    shoal_ring_publish(v, &slot, 0);
}

static void store_word(shoal_ring *r, int offset, uint64_t value) {
    memcpy((char *)r + offset, &value, 8);
}

TEST(ring_geometry_attach_refuses_what_no_ring_holds) {
    shoal_ring_view v, other;
    shoal_ring *r = fresh(&v, 0);
    uint64_t mapped = SHOAL_RING_HEADER_SIZE + CAP;
    CHECK_ST(shoal_ring_attach(&other, r, mapped), SHOAL_OK);
    CHECK_EQ(other.capacity, CAP);
    CHECK_ST(shoal_ring_attach(&other, r, mapped - 1), SHOAL_BAD_LAYOUT); /* does not fit */
    r->capacity = 100; /* not a power of two */
    CHECK_ST(shoal_ring_attach(&other, r, mapped), SHOAL_BAD_LAYOUT);
    r->capacity = 2 * CAP; /* beyond the mapping */
    CHECK_ST(shoal_ring_attach(&other, r, mapped), SHOAL_BAD_LAYOUT);
    r->capacity = CAP;
    r->max_items = 1ULL << 40;
    CHECK_ST(shoal_ring_attach(&other, r, mapped), SHOAL_BAD_LAYOUT);
    CHECK_EQ(other.capacity, 0); /* a refused view is left unusable */
    free(r);
}

TEST(ring_geometry_is_never_read_again) {
    shoal_ring_view v;
    shoal_ring *r = fresh(&v, 0);
    put_bytes(&v, 100);
    r->capacity = 1u << 31; /* a stray write: this view keeps what it checked */
    r->max_items = 1;
    put_bytes(&v, 100);
    shoal_ring_slot slot;
    CHECK_EQ(shoal_ring_reserve(&v, 100, &slot), SHOAL_RING_FULL);
    CHECK_EQ(shoal_ring_max_payload(&v), CAP / 2 - 8);
    free(r);
}

TEST(ring_corrupt_positions_are_refused) {
    static const uint64_t tails[] = {
        (1ULL << 32) | 4,         /* unaligned */
        (1ULL << 32) | (1 << 20), /* beyond the data area */
        (5ULL << 32) | 8,         /* five items in eight bytes */
        64,                       /* bytes without an item */
        1ULL << 32,               /* an item without bytes */
    };
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        shoal_ring_view v;
        shoal_ring *r = fresh(&v, 0);
        store_word(r, TAIL_AT, tails[i]);
        shoal_ring_record rec;
        shoal_ring_slot slot;
        uint32_t items, used;
        CHECK_EQ(shoal_ring_peek(&v, &rec), SHOAL_BAD_LAYOUT);
        CHECK_EQ(shoal_ring_reserve(&v, 8, &slot), SHOAL_BAD_LAYOUT);
        CHECK_ST(shoal_ring_state(&v, &items, &used), SHOAL_BAD_LAYOUT);
        free(r);
    }
    shoal_ring_view v;
    shoal_ring *r = fresh(&v, 2);
    store_word(r, TAIL_AT, (3ULL << 32) | 64); /* more items than the limit */
    shoal_ring_record rec;
    CHECK_EQ(shoal_ring_peek(&v, &rec), SHOAL_BAD_LAYOUT);
    store_word(r, TAIL_AT, 0);
    store_word(r, HEAD_AT, 8); /* head ahead of tail */
    CHECK_EQ(shoal_ring_peek(&v, &rec), SHOAL_BAD_LAYOUT);
    free(r);
}

TEST(ring_corrupt_record_headers_are_refused) {
    static const uint32_t headers[][2] = {
        {1u << 30, 0},                 /* far too long */
        {200, 0},                      /* longer than what was published */
        {8, 7},                        /* an unknown kind */
        {8, SHOAL_RING_KIND_PAD},      /* a PAD that does not run to the end */
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        shoal_ring_view v;
        shoal_ring *r = fresh(&v, 0);
        put_bytes(&v, 16);
        memcpy((char *)r + SHOAL_RING_HEADER_SIZE, headers[i], 8);
        shoal_ring_record rec;
        CHECK_EQ(shoal_ring_peek(&v, &rec), SHOAL_BAD_LAYOUT);
        free(r);
    }
}

/* Random words over the header and the records, then every call: each returns a
 * status, and (under ASan) never reads or writes outside the mapping. */
TEST(ring_corrupt_fuzz) {
    uint64_t rng = 12345;
    static const int words[] = {0, 8, 16, 24, 128, 132, 136, 140, 192, 196, 200, 204};
    for (int round = 0; round < 20000; round++) {
        shoal_ring_view v;
        shoal_ring *r = fresh(&v, rnd(&rng) % 2 ? 0 : 1 + rnd(&rng) % 6);
        for (uint32_t n = rnd(&rng) % 10; n > 0; n--) {
            shoal_ring_slot slot;
            uint32_t len = rnd(&rng) % (uint32_t)(shoal_ring_max_payload(&v) + 1);
            if (shoal_ring_reserve(&v, len, &slot) == SHOAL_OK) {
                memset(slot.dst, 'r', len);
                shoal_ring_publish(&v, &slot, 0);
            }
            shoal_ring_record rec;
            if (rnd(&rng) % 3 == 0 && shoal_ring_peek(&v, &rec) == SHOAL_OK)
                shoal_ring_consume(&v, &rec);
        }
        for (uint32_t n = 1 + rnd(&rng) % 3; n > 0; n--) {
            uint32_t value = rnd(&rng) % 4 == 0 ? rnd(&rng) % 16 : rnd(&rng);
            int at = rnd(&rng) % 2 ? words[rnd(&rng) % (sizeof words / sizeof words[0])]
                                   : (int)(SHOAL_RING_HEADER_SIZE + (rnd(&rng) % (CAP / 4)) * 4);
            memcpy((char *)r + at, &value, 4);
        }
        for (int calls = 0; calls < 8; calls++) {
            shoal_ring_record rec;
            shoal_ring_slot slot;
            uint32_t items, used;
            int st;
            switch (rnd(&rng) % 3) {
            case 0:
                st = shoal_ring_peek(&v, &rec);
                CHECK(st == SHOAL_OK || st == SHOAL_RING_EMPTY || st == SHOAL_RING_SHUTDOWN ||
                      st == SHOAL_BAD_LAYOUT);
                if (st == SHOAL_OK) {
                    volatile char sink = 0;
                    for (uint32_t i = 0; i < rec.len; i++) /* ASan: all inside the data area */
                        sink ^= ((const char *)rec.src)[i];
                    (void)sink;
                    shoal_ring_consume(&v, &rec);
                }
                break;
            case 1:
                st = shoal_ring_reserve(&v, rnd(&rng) % (uint32_t)(shoal_ring_max_payload(&v) + 1),
                                        &slot);
                CHECK(st == SHOAL_OK || st == SHOAL_RING_FULL || st == SHOAL_RING_SHUTDOWN ||
                      st == SHOAL_BAD_LAYOUT);
                if (st == SHOAL_OK) {
                    memset(slot.dst, 'w', slot.len);
                    shoal_ring_publish(&v, &slot, 0);
                }
                break;
            default:
                st = shoal_ring_state(&v, &items, &used);
                CHECK(st == SHOAL_OK || st == SHOAL_BAD_LAYOUT);
                if (st == SHOAL_OK)
                    CHECK(used <= CAP);
            }
        }
        free(r);
    }
}
