/* The record ring: see shoal_ring.h for the protocol and why it survives SIGKILL. */
#include "shoal_ring.h"
#include "atomic_internal.h"

#include <string.h>

#define POS(x) ((uint32_t)(x))
#define ITEMS(x) ((uint32_t)((x) >> 32))
#define PACK(items, pos) (((uint64_t)(uint32_t)(items) << 32) | (uint32_t)(pos))
#define MIN_CAPACITY 64u
#define MAX_CAPACITY (1u << 31)

static inline uint32_t align8(uint32_t n) { return (n + 7u) & ~7u; }
static inline char *ring_data(shoal_ring *r) { return (char *)r + SHOAL_RING_HEADER_SIZE; }

typedef struct {
    uint32_t len;
    uint32_t kind;
} record_header;

uint64_t shoal_ring_round_capacity(uint64_t capacity) {
    uint64_t p = MIN_CAPACITY;
    while (p < capacity && p < MAX_CAPACITY)
        p <<= 1;
    return p;
}

static int valid_capacity(uint64_t c) {
    return c >= MIN_CAPACITY && c <= MAX_CAPACITY && (c & (c - 1)) == 0;
}

shoal_status shoal_ring_init(shoal_ring *r, uint64_t capacity, uint64_t max_items) {
    if (!valid_capacity(capacity) || max_items > UINT32_MAX)
        return SHOAL_BAD_LAYOUT;
    r->capacity = capacity;
    r->max_items = max_items;
    r->layout_version = SHOAL_LAYOUT_VERSION;
    st64(&r->magic, SHOAL_RING_MAGIC); /* last: the ring is complete */
    return SHOAL_OK;
}

shoal_status shoal_ring_check(const shoal_ring *r, uint64_t mapped) {
    if (ld64(&r->magic) != SHOAL_RING_MAGIC || r->layout_version != SHOAL_LAYOUT_VERSION ||
        !valid_capacity(r->capacity) || mapped < SHOAL_RING_HEADER_SIZE + r->capacity)
        return SHOAL_BAD_LAYOUT;
    return SHOAL_OK;
}

/* Half the data area: a record that size fits an empty ring wherever its position is,
 * so a producer waiting for room always gets it once consumers drain the ring. */
uint64_t shoal_ring_max_payload(const shoal_ring *r) {
    return r->capacity / 2 - SHOAL_RING_RECORD_HEADER;
}

/* Bytes of padding needed before a record of `need` bytes at position `pos`. */
static uint32_t pad_before(const shoal_ring *r, uint32_t pos, uint32_t need) {
    uint32_t off = pos & (uint32_t)(r->capacity - 1);
    return off + need > r->capacity ? (uint32_t)r->capacity - off : 0;
}

int shoal_ring_reserve(shoal_ring *r, uint32_t len, void **dst) {
    if (ld32(&r->shutdown))
        return SHOAL_RING_SHUTDOWN;
    if ((uint64_t)len > shoal_ring_max_payload(r))
        return SHOAL_RING_TOO_BIG;
    uint32_t need = SHOAL_RING_RECORD_HEADER + align8(len);
    uint64_t tail = ld64(&r->tail), head = ld64(&r->head);
    uint32_t used = POS(tail) - POS(head);
    if (r->max_items && (uint32_t)(ITEMS(tail) - ITEMS(head)) >= r->max_items)
        return SHOAL_RING_FULL;
    uint32_t pad = pad_before(r, POS(tail), need);
    if ((uint64_t)used + pad + need > r->capacity)
        return SHOAL_RING_FULL;
    uint32_t off = (POS(tail) + pad) & (uint32_t)(r->capacity - 1);
    *dst = ring_data(r) + off + SHOAL_RING_RECORD_HEADER;
    return SHOAL_OK;
}

void shoal_ring_publish(shoal_ring *r, uint32_t len, uint32_t kind) {
    uint32_t need = SHOAL_RING_RECORD_HEADER + align8(len);
    uint64_t tail = ld64(&r->tail);
    uint32_t pad = pad_before(r, POS(tail), need);
    uint32_t mask = (uint32_t)(r->capacity - 1);
    if (pad) {
        record_header filler = {pad - SHOAL_RING_RECORD_HEADER, SHOAL_RING_KIND_PAD};
        memcpy(ring_data(r) + (POS(tail) & mask), &filler, sizeof filler);
    }
    record_header h = {len, kind};
    memcpy(ring_data(r) + ((POS(tail) + pad) & mask), &h, sizeof h);
    /* the one store that makes the record (and its padding) visible */
    st64(&r->tail, PACK(ITEMS(tail) + 1, POS(tail) + pad + need));
}

void shoal_ring_wake_consumers(shoal_ring *r, int n) {
    if (ld32(&r->consumers_waiting) > 0) {
        add32(&r->data_seq, 1);
        shoal_wake32(&r->data_seq, n);
    }
}

int shoal_ring_peek(shoal_ring *r, const void **src, uint32_t *len, uint32_t *kind) {
    uint32_t mask = (uint32_t)(r->capacity - 1);
    for (;;) {
        uint64_t head = ld64(&r->head), tail = ld64(&r->tail);
        uint32_t avail = POS(tail) - POS(head);
        if (avail == 0)
            return ld32(&r->shutdown) ? SHOAL_RING_SHUTDOWN : SHOAL_RING_EMPTY;
        record_header h;
        memcpy(&h, ring_data(r) + (POS(head) & mask), sizeof h);
        uint64_t size = (uint64_t)SHOAL_RING_RECORD_HEADER + align8(h.len);
        if (size > avail || (POS(head) & mask) + size > r->capacity)
            return SHOAL_BAD_LAYOUT; /* a record no producer could have written */
        if (h.kind == SHOAL_RING_KIND_PAD) {
            st64(&r->head, PACK(ITEMS(head), POS(head) + (uint32_t)size));
            continue;
        }
        *src = ring_data(r) + (POS(head) & mask) + SHOAL_RING_RECORD_HEADER;
        *len = h.len;
        *kind = h.kind;
        return SHOAL_OK;
    }
}

void shoal_ring_consume(shoal_ring *r) {
    uint64_t head = ld64(&r->head);
    record_header h;
    memcpy(&h, ring_data(r) + (POS(head) & (uint32_t)(r->capacity - 1)), sizeof h);
    /* the one store that removes the record */
    st64(&r->head, PACK(ITEMS(head) + 1, POS(head) + SHOAL_RING_RECORD_HEADER + align8(h.len)));
}

void shoal_ring_wake_producers(shoal_ring *r, int n) {
    if (ld32(&r->producers_waiting) > 0) {
        add32(&r->space_seq, 1);
        shoal_wake32(&r->space_seq, n);
    }
}

uint32_t shoal_ring_register_consumer(shoal_ring *r) {
    add32(&r->consumers_waiting, 1);
    return ld32(&r->data_seq);
}

void shoal_ring_unregister_consumer(shoal_ring *r) { sub32(&r->consumers_waiting, 1); }

shoal_status shoal_ring_wait_data(shoal_ring *r, uint32_t seq, int64_t timeout_ns) {
    return shoal_wait32(&r->data_seq, seq, timeout_ns);
}

uint32_t shoal_ring_register_producer(shoal_ring *r) {
    add32(&r->producers_waiting, 1);
    return ld32(&r->space_seq);
}

void shoal_ring_unregister_producer(shoal_ring *r) { sub32(&r->producers_waiting, 1); }

shoal_status shoal_ring_wait_space(shoal_ring *r, uint32_t seq, int64_t timeout_ns) {
    return shoal_wait32(&r->space_seq, seq, timeout_ns);
}

int shoal_ring_spin_for_data(shoal_ring *r, int spins) {
    for (int i = 0; i < spins; i++) {
        if (POS(ld64(&r->tail)) != POS(ld64(&r->head)) || ld32(&r->shutdown))
            return 1;
        cpu_relax();
    }
    return 0;
}

int shoal_ring_spin_for_space(shoal_ring *r, uint32_t len, int spins) {
    uint32_t need = SHOAL_RING_RECORD_HEADER + align8(len);
    for (int i = 0; i < spins; i++) {
        uint64_t tail = ld64(&r->tail), head = ld64(&r->head);
        uint32_t used = POS(tail) - POS(head);
        int items_ok = !r->max_items || (uint32_t)(ITEMS(tail) - ITEMS(head)) < r->max_items;
        if ((items_ok && (uint64_t)used + 2 * need <= r->capacity) || ld32(&r->shutdown))
            return 1;
        cpu_relax();
    }
    return 0;
}

uint32_t shoal_ring_taken(const shoal_ring *r) {
    return ITEMS(ld64(&r->head));
}

uint32_t shoal_ring_items(const shoal_ring *r) {
    uint64_t head = ld64(&r->head), tail = ld64(&r->tail);
    return ITEMS(tail) - ITEMS(head);
}

uint64_t shoal_ring_bytes_used(const shoal_ring *r) {
    uint64_t head = ld64(&r->head), tail = ld64(&r->tail);
    return (uint32_t)(POS(tail) - POS(head));
}

void shoal_ring_shutdown(shoal_ring *r) {
    st32(&r->shutdown, 1);
    add32(&r->data_seq, 1);
    shoal_wake32(&r->data_seq, -1);
    add32(&r->space_seq, 1);
    shoal_wake32(&r->space_seq, -1);
}

void shoal_ring_wake_all(shoal_ring *r) {
    add32(&r->data_seq, 1);
    shoal_wake32(&r->data_seq, -1);
    add32(&r->space_seq, 1);
    shoal_wake32(&r->space_seq, -1);
    add32(&r->unfinished_seq, 1);
    shoal_wake32(&r->unfinished_seq, -1);
}

void shoal_ring_add_unfinished(shoal_ring *r, uint64_t n) { __atomic_fetch_add(&r->unfinished, n, SC); }

shoal_status shoal_ring_task_done(shoal_ring *r) {
    uint64_t n = ld64(&r->unfinished);
    do {
        if (n == 0)
            return SHOAL_OVERFLOW;
    } while (!cas64(&r->unfinished, &n, n - 1));
    if (n == 1 && ld32(&r->joiners) > 0) {
        add32(&r->unfinished_seq, 1);
        shoal_wake32(&r->unfinished_seq, -1);
    }
    return SHOAL_OK;
}

shoal_status shoal_ring_join(shoal_ring *r, int64_t timeout_ns, const int *stop) {
    int64_t deadline = timeout_ns < 0 ? -1 : shoal_monotonic_ns() + timeout_ns;
    for (;;) {
        if (ld64(&r->unfinished) == 0)
            return SHOAL_OK;
        if (stop && __atomic_load_n(stop, __ATOMIC_SEQ_CST))
            return SHOAL_AGAIN;
        add32(&r->joiners, 1);
        uint32_t seq = ld32(&r->unfinished_seq);
        shoal_status st = SHOAL_OK;
        if (ld64(&r->unfinished) != 0) {
            int64_t left = -1;
            if (deadline >= 0) {
                left = deadline - shoal_monotonic_ns();
                if (left <= 0) {
                    sub32(&r->joiners, 1);
                    return SHOAL_TIMEOUT;
                }
            }
            st = shoal_wait32(&r->unfinished_seq, seq, left);
        }
        sub32(&r->joiners, 1);
        if (st == SHOAL_INTR)
            return SHOAL_INTR;
        if (st == SHOAL_TIMEOUT && ld64(&r->unfinished) != 0)
            return SHOAL_TIMEOUT;
    }
}
