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

static void fill_view(shoal_ring_view *v, shoal_ring *r, uint64_t capacity, uint64_t max_items) {
    v->ring = r;
    v->data = (char *)r + SHOAL_RING_HEADER_SIZE;
    v->capacity = (uint32_t)capacity;
    v->mask = (uint32_t)capacity - 1;
    v->max_items = (uint32_t)max_items;
    v->max_payload = (uint32_t)capacity / 2 - SHOAL_RING_RECORD_HEADER;
}

static void clear_view(shoal_ring_view *v) { memset(v, 0, sizeof *v); }

shoal_status shoal_ring_init(shoal_ring_view *v, shoal_ring *r, uint64_t mapped, uint64_t capacity,
                             uint64_t max_items) {
    clear_view(v);
    if (!valid_capacity(capacity) || max_items > UINT32_MAX ||
        mapped < SHOAL_RING_HEADER_SIZE + capacity)
        return SHOAL_BAD_LAYOUT;
    r->capacity = capacity;
    r->max_items = max_items;
    r->layout_version = SHOAL_LAYOUT_VERSION;
    st64(&r->magic, SHOAL_RING_MAGIC); /* last: the ring is complete */
    fill_view(v, r, capacity, max_items);
    return SHOAL_OK;
}

shoal_status shoal_ring_attach(shoal_ring_view *v, shoal_ring *r, uint64_t mapped) {
    clear_view(v);
    /* each word read once: what is checked is what is used */
    uint64_t magic = ld64(&r->magic);
    uint32_t version = __atomic_load_n(&r->layout_version, __ATOMIC_RELAXED);
    uint64_t capacity = __atomic_load_n(&r->capacity, __ATOMIC_RELAXED);
    uint64_t max_items = __atomic_load_n(&r->max_items, __ATOMIC_RELAXED);
    if (magic != SHOAL_RING_MAGIC || version != SHOAL_LAYOUT_VERSION ||
        !valid_capacity(capacity) || max_items > UINT32_MAX ||
        mapped < SHOAL_RING_HEADER_SIZE + capacity)
        return SHOAL_BAD_LAYOUT;
    fill_view(v, r, capacity, max_items);
    return SHOAL_OK;
}

/* Whether head and tail can both be true of a ring of this geometry: positions
 * 8-aligned, at most capacity bytes between them, at least 8 bytes per item (a record
 * is a header at least), no bytes without an item (a PAD always has its record after
 * it), and no more items than the limit.  (head, tail) must be one snapshot: read by
 * the side whose word does not move (its lock held), or see shoal_ring_state. */
static int positions_ok(const shoal_ring_view *v, uint64_t head, uint64_t tail) {
    uint32_t used = POS(tail) - POS(head), items = ITEMS(tail) - ITEMS(head);
    return ((POS(head) | POS(tail)) & 7u) == 0 && used <= v->capacity && items <= used / 8 &&
           (items == 0) == (used == 0) && (!v->max_items || items <= v->max_items);
}

/* Bytes of padding needed before a record of `need` bytes at position `pos`. */
static uint32_t pad_before(const shoal_ring_view *v, uint32_t pos, uint32_t need) {
    uint32_t off = pos & v->mask;
    return (uint64_t)off + need > v->capacity ? v->capacity - off : 0;
}

int shoal_ring_reserve(const shoal_ring_view *v, uint32_t len, shoal_ring_slot *slot) {
    shoal_ring *r = v->ring;
    if (ld32(&r->shutdown))
        return SHOAL_RING_SHUTDOWN;
    if (len > v->max_payload)
        return SHOAL_RING_TOO_BIG;
    uint32_t need = SHOAL_RING_RECORD_HEADER + align8(len);
    /* tail first: it is ours (put_lock); head, read after it, can only be behind it */
    uint64_t tail = ld64(&r->tail), head = ld64(&r->head);
    if (!positions_ok(v, head, tail))
        return SHOAL_BAD_LAYOUT;
    uint32_t used = POS(tail) - POS(head);
    if (v->max_items && ITEMS(tail) - ITEMS(head) >= v->max_items)
        return SHOAL_RING_FULL;
    uint32_t pad = pad_before(v, POS(tail), need);
    if ((uint64_t)used + pad + need > v->capacity)
        return SHOAL_RING_FULL;
    /* in bounds: off is 8-aligned and off + need <= capacity (pad saw to it) */
    slot->tail = tail;
    slot->pad = pad;
    slot->len = len;
    slot->off = (POS(tail) + pad) & v->mask;
    slot->dst = v->data + slot->off + SHOAL_RING_RECORD_HEADER;
    return SHOAL_OK;
}

void shoal_ring_publish(const shoal_ring_view *v, const shoal_ring_slot *slot, uint32_t kind) {
    /* what reserve validated, not a second read of tail */
    shoal_ring *r = v->ring;
    uint64_t tail = slot->tail;
    uint32_t pad = slot->pad, need = SHOAL_RING_RECORD_HEADER + align8(slot->len);
    if (pad) {
        record_header filler = {pad - SHOAL_RING_RECORD_HEADER, SHOAL_RING_KIND_PAD};
        memcpy(v->data + (POS(tail) & v->mask), &filler, sizeof filler);
    }
    record_header h = {slot->len, kind};
    memcpy(v->data + slot->off, &h, sizeof h);
    /* the one store that makes the record (and its padding) visible */
    st64(&r->tail, PACK(ITEMS(tail) + 1, POS(tail) + pad + need));
}

void shoal_ring_wake_consumers(const shoal_ring_view *v, int n) {
    shoal_ring *r = v->ring;
    if (ld32(&r->consumers_waiting) > 0) {
        add32(&r->data_seq, 1);
        shoal_wake32(&r->data_seq, n);
        shoal_waitlist_prune_due(&r->consumer_list, &r->consumers_waiting);
    }
}

int shoal_ring_peek(const shoal_ring_view *v, shoal_ring_record *rec) {
    shoal_ring *r = v->ring;
    for (;;) {
        /* head first: it is ours (get_lock); tail, read after it, is never behind it */
        uint64_t head = ld64(&r->head), tail = ld64(&r->tail);
        if (!positions_ok(v, head, tail))
            return SHOAL_BAD_LAYOUT;
        uint32_t avail = POS(tail) - POS(head);
        if (avail == 0)
            return ld32(&r->shutdown) ? SHOAL_RING_SHUTDOWN : SHOAL_RING_EMPTY;
        uint32_t off = POS(head) & v->mask; /* 8-aligned, so the header fits before the end */
        record_header h;
        memcpy(&h, v->data + off, sizeof h);
        uint64_t size = (uint64_t)SHOAL_RING_RECORD_HEADER + align8(h.len);
        /* a record no producer could have written: too long for what was published, for
         * the data area or for this ring's records; an unknown kind; a PAD that does not
         * run to the end of the data area */
        if (size > avail || off + size > v->capacity)
            return SHOAL_BAD_LAYOUT;
        if (h.kind == SHOAL_RING_KIND_PAD) {
            if (off + size != v->capacity)
                return SHOAL_BAD_LAYOUT;
            st64(&r->head, PACK(ITEMS(head), POS(head) + (uint32_t)size));
            continue;
        }
        if (h.kind != 0 || h.len > v->max_payload)
            return SHOAL_BAD_LAYOUT;
        rec->src = v->data + off + SHOAL_RING_RECORD_HEADER;
        rec->head = head;
        rec->len = h.len;
        rec->kind = h.kind;
        return SHOAL_OK;
    }
}

void shoal_ring_consume(const shoal_ring_view *v, const shoal_ring_record *rec) {
    /* the one store that removes the record (the length peek checked, not a re-read) */
    st64(&v->ring->head, PACK(ITEMS(rec->head) + 1,
                              POS(rec->head) + SHOAL_RING_RECORD_HEADER + align8(rec->len)));
}

void shoal_ring_wake_producers(const shoal_ring_view *v, int n) {
    shoal_ring *r = v->ring;
    if (ld32(&r->producers_waiting) > 0) {
        add32(&r->space_seq, 1);
        shoal_wake32(&r->space_seq, n);
        shoal_waitlist_prune_due(&r->producer_list, &r->producers_waiting);
    }
}

/* count += 1, then the slot (shoal_waitlist's join order); the slot before the count
 * on the way out */
static int join_waiters(uint32_t *count, shoal_waitlist *l) {
    add32(count, 1);
    return shoal_waitlist_join(l, shoal_self_token(), NULL, 0);
}

static void leave_waiters(uint32_t *count, shoal_waitlist *l, int slot) {
    shoal_waitlist_leave(l, slot, shoal_self_token());
    sub32(count, 1);
}

uint32_t shoal_ring_register_consumer(const shoal_ring_view *v, int *slot) {
    shoal_ring *r = v->ring;
    *slot = join_waiters(&r->consumers_waiting, &r->consumer_list);
    return ld32(&r->data_seq);
}

void shoal_ring_unregister_consumer(const shoal_ring_view *v, int slot) {
    leave_waiters(&v->ring->consumers_waiting, &v->ring->consumer_list, slot);
}

shoal_status shoal_ring_wait_data(const shoal_ring_view *v, uint32_t seq, int64_t timeout_ns) {
    shoal_ring *r = v->ring;
    return shoal_wait32(&r->data_seq, seq, timeout_ns);
}

uint32_t shoal_ring_register_producer(const shoal_ring_view *v, int *slot) {
    shoal_ring *r = v->ring;
    *slot = join_waiters(&r->producers_waiting, &r->producer_list);
    return ld32(&r->space_seq);
}

void shoal_ring_unregister_producer(const shoal_ring_view *v, int slot) {
    leave_waiters(&v->ring->producers_waiting, &v->ring->producer_list, slot);
}

shoal_status shoal_ring_wait_space(const shoal_ring_view *v, uint32_t seq, int64_t timeout_ns) {
    shoal_ring *r = v->ring;
    return shoal_wait32(&r->space_seq, seq, timeout_ns);
}

uint32_t shoal_ring_register_joiner(const shoal_ring_view *v, int *slot) {
    shoal_ring *r = v->ring;
    *slot = join_waiters(&r->joiners, &r->joiner_list);
    return ld32(&r->unfinished_seq);
}

void shoal_ring_unregister_joiner(const shoal_ring_view *v, int slot) {
    leave_waiters(&v->ring->joiners, &v->ring->joiner_list, slot);
}

int shoal_ring_spin_for_data(const shoal_ring_view *v, int spins) {
    shoal_ring *r = v->ring;
    for (int i = 0; i < spins; i++) {
        if (POS(ld64(&r->tail)) != POS(ld64(&r->head)) || ld32(&r->shutdown))
            return 1;
        cpu_relax();
    }
    return 0;
}

int shoal_ring_spin_for_space(const shoal_ring_view *v, uint32_t len, int spins) {
    shoal_ring *r = v->ring;
    uint32_t need = SHOAL_RING_RECORD_HEADER + align8(len);
    for (int i = 0; i < spins; i++) {
        uint64_t tail = ld64(&r->tail), head = ld64(&r->head);
        uint32_t used = POS(tail) - POS(head);
        int items_ok = !v->max_items || (uint32_t)(ITEMS(tail) - ITEMS(head)) < v->max_items;
        if ((items_ok && (uint64_t)used + 2 * need <= v->capacity) || ld32(&r->shutdown))
            return 1;
        cpu_relax();
    }
    return 0;
}

uint32_t shoal_ring_taken(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    return ITEMS(ld64(&r->head));
}

shoal_status shoal_ring_state(const shoal_ring_view *v, uint32_t *items, uint32_t *used) {
    shoal_ring *r = v->ring;
    /* with no lock, head may move between the two reads: a pair is one snapshot when
     * head read again is unchanged (either side moving on is progress, so a few tries
     * do; a ring that never holds still gets its last pair's numbers unchecked) */
    uint64_t head = ld64(&r->head), tail = ld64(&r->tail), again;
    for (int tries = 0; tries < 100 && (again = ld64(&r->head)) != head; tries++) {
        head = again;
        tail = ld64(&r->tail);
    }
    *items = ITEMS(tail) - ITEMS(head);
    *used = POS(tail) - POS(head);
    if (again == head && !positions_ok(v, head, tail))
        return SHOAL_BAD_LAYOUT;
    return SHOAL_OK;
}

uint32_t shoal_ring_items(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    uint64_t head = ld64(&r->head), tail = ld64(&r->tail);
    return ITEMS(tail) - ITEMS(head);
}

uint64_t shoal_ring_bytes_used(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    uint64_t head = ld64(&r->head), tail = ld64(&r->tail);
    return (uint32_t)(POS(tail) - POS(head));
}

uint32_t shoal_ring_consumers_waiting(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    return shoal_waitlist_live(&r->consumer_list, ld32(&r->consumers_waiting));
}

uint32_t shoal_ring_producers_waiting(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    return shoal_waitlist_live(&r->producer_list, ld32(&r->producers_waiting));
}

uint32_t shoal_ring_joiners(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    return shoal_waitlist_live(&r->joiner_list, ld32(&r->joiners));
}

void shoal_ring_shutdown(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    st32(&r->shutdown, 1);
    add32(&r->data_seq, 1);
    shoal_wake32(&r->data_seq, -1);
    add32(&r->space_seq, 1);
    shoal_wake32(&r->space_seq, -1);
}

void shoal_ring_wake_all(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    add32(&r->data_seq, 1);
    shoal_wake32(&r->data_seq, -1);
    add32(&r->space_seq, 1);
    shoal_wake32(&r->space_seq, -1);
    add32(&r->unfinished_seq, 1);
    shoal_wake32(&r->unfinished_seq, -1);
}

void shoal_ring_add_unfinished(const shoal_ring_view *v, uint64_t n) {
    __atomic_fetch_add(&v->ring->unfinished, n, SC);
}

shoal_status shoal_ring_task_done(const shoal_ring_view *v) {
    shoal_ring *r = v->ring;
    uint64_t n = ld64(&r->unfinished);
    do {
        if (n == 0)
            return SHOAL_OVERFLOW;
    } while (!cas64(&r->unfinished, &n, n - 1));
    if (n == 1 && ld32(&r->joiners) > 0) {
        add32(&r->unfinished_seq, 1);
        shoal_wake32(&r->unfinished_seq, -1);
        shoal_waitlist_prune_due(&r->joiner_list, &r->joiners);
    }
    return SHOAL_OK;
}

shoal_status shoal_ring_join(const shoal_ring_view *v, int64_t timeout_ns, const int *stop) {
    shoal_ring *r = v->ring;
    int64_t deadline = timeout_ns < 0 ? -1 : shoal_monotonic_ns() + timeout_ns;
    for (;;) {
        if (ld64(&r->unfinished) == 0)
            return SHOAL_OK;
        if (stop && __atomic_load_n(stop, __ATOMIC_SEQ_CST))
            return SHOAL_AGAIN;
        int slot = join_waiters(&r->joiners, &r->joiner_list);
        uint32_t seq = ld32(&r->unfinished_seq);
        shoal_status st = SHOAL_OK;
        if (ld64(&r->unfinished) != 0) {
            int64_t left = -1;
            if (deadline >= 0) {
                left = deadline - shoal_monotonic_ns();
                if (left <= 0) {
                    leave_waiters(&r->joiners, &r->joiner_list, slot);
                    return SHOAL_TIMEOUT;
                }
            }
            st = shoal_wait32(&r->unfinished_seq, seq, left);
        }
        leave_waiters(&r->joiners, &r->joiner_list, slot);
        if (st == SHOAL_INTR)
            return SHOAL_INTR;
        if (st == SHOAL_TIMEOUT && ld64(&r->unfinished) != 0)
            return SHOAL_TIMEOUT;
    }
}
