/* The dict table: see shoal_dict.h for the layout and the protocols. */
#include "shoal_dict.h"

#include <string.h>

#include "atomic_internal.h"

#define ACQ __ATOMIC_ACQUIRE
#define RLX __ATOMIC_RELAXED

static inline uint64_t ldr(const uint64_t *p) { return __atomic_load_n(p, RLX); }

uint64_t shoal_dict_hash(const void *data, size_t len) {
    /* FNV-1a over 8-byte words, then murmur3's finaliser: cheap for the short keys
     * dicts mostly have, and well mixed in the low bits the table indexes by */
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)len;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
        p += 8;
        len -= 8;
    }
    while (len--) {
        h = (h ^ *p++) * 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

int shoal_dict_class(uint64_t key_len, uint64_t value_len) {
    uint64_t need = SHOAL_DICT_ENTRY_HEADER + key_len + value_len;
    for (int c = 0; c < SHOAL_DICT_CLASSES; c++) {
        if (((uint64_t)SHOAL_DICT_MIN_BLOCK << c) >= need)
            return c;
    }
    return -1;
}

static uint64_t block_size(int c) { return (uint64_t)SHOAL_DICT_MIN_BLOCK << c; }

/* where the heap starts: after the header, the slots and the order */
static uint64_t heap_start(uint64_t nslots) {
    return SHOAL_DICT_HEADER_SIZE + nslots * (sizeof(shoal_dict_slot) + sizeof(uint32_t));
}

uint64_t shoal_dict_size_for(uint64_t nslots, uint64_t heap_bytes) {
    return heap_start(nslots) + heap_bytes;
}

static shoal_dict_slot *slots_of(const shoal_dict_view *v) {
    return (shoal_dict_slot *)((char *)v->d + SHOAL_DICT_HEADER_SIZE);
}

/* the order: the slot of each insertion position (a u32 each, after the slots) */
static uint32_t *order_of(const shoal_dict_view *v) {
    return (uint32_t *)((char *)v->d + SHOAL_DICT_HEADER_SIZE + v->nslots * sizeof(shoal_dict_slot));
}

/* the order words: relaxed, as the seqlock orders them for readers, and each writer's
 * step that makes them count (a slot's publish) is a seq_cst store after them */
static inline uint32_t ldo(const uint32_t *p) { return __atomic_load_n(p, RLX); }
static inline void sto(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, RLX); }

/* the position an entry (bounds-checked by entry_at: its 16-byte header is inside)
 * records */
static uint32_t entry_position(const shoal_dict_view *v, uint64_t off) {
    uint32_t p;
    memcpy(&p, (const char *)v->d + off + 12, 4);
    return p;
}

static int geometry_ok(uint64_t size, uint64_t nslots) {
    if (nslots < 8 || (nslots & (nslots - 1)) || nslots > SHOAL_DICT_MAX_SLOTS)
        return 0;
    return size >= heap_start(nslots) + SHOAL_DICT_MIN_BLOCK;
}

static void fill_view(shoal_dict_view *v, shoal_dict *d, uint64_t size, uint64_t nslots) {
    v->d = d;
    v->size = size;
    v->nslots = nslots;
    v->heap = heap_start(nslots);
}

shoal_status shoal_dict_init(shoal_dict_view *v, shoal_dict *d, uint64_t size, uint64_t nslots) {
    if (!geometry_ok(size, nslots))
        return SHOAL_BAD_LAYOUT;
    uint64_t heap = heap_start(nslots);
    /* (the order's words need no initialising: positions past order_top are unused) */
    d->layout_version = SHOAL_DICT_LAYOUT;
    d->total_size = size;
    d->nslots = nslots;
    d->heap_offset = heap;
    d->heap_top = heap;
    st64(&d->version, 0);
    st64(&d->magic, SHOAL_DICT_MAGIC); /* last: the table is complete */
    if (v)
        fill_view(v, d, size, nslots);
    return SHOAL_OK;
}

shoal_status shoal_dict_check(shoal_dict_view *v, shoal_dict *d, uint64_t mapped) {
    if (mapped < SHOAL_DICT_HEADER_SIZE || ld64(&d->magic) != SHOAL_DICT_MAGIC)
        return SHOAL_BAD_LAYOUT;
    /* each geometry word read once: the checks and the view see the same values */
    uint64_t size = ldr(&d->total_size), n = ldr(&d->nslots), heap = ldr(&d->heap_offset);
    if (d->layout_version != SHOAL_DICT_LAYOUT || size > mapped || !geometry_ok(size, n) ||
        heap != heap_start(n))
        return SHOAL_BAD_LAYOUT;
    fill_view(v, d, size, n);
    return SHOAL_OK;
}

uint64_t shoal_dict_read_begin(const shoal_dict *d) { return __atomic_load_n(&d->version, ACQ); }

int shoal_dict_read_retry(const shoal_dict *d, uint64_t version) {
    __atomic_thread_fence(ACQ);
    return __atomic_load_n(&d->version, RLX) != version;
}

/* An entry at `off`, bounds-checked against the view: 1 ok (lengths filled in). */
static int entry_at(const shoal_dict_view *v, uint64_t off, const char **key, uint32_t *key_len,
                    const char **value, uint32_t *value_len) {
    if (off < v->heap || off > v->size - SHOAL_DICT_ENTRY_HEADER || (off & 15))
        return 0;
    const char *e = (const char *)v->d + off;
    uint32_t kl, vl;
    memcpy(&kl, e, 4);
    memcpy(&vl, e + 4, 4);
    if ((uint64_t)kl + vl > v->size - off - SHOAL_DICT_ENTRY_HEADER)
        return 0;
    *key = e + SHOAL_DICT_ENTRY_HEADER;
    *key_len = kl;
    *value = e + SHOAL_DICT_ENTRY_HEADER + kl;
    *value_len = vl;
    return 1;
}

int shoal_dict_lookup(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len,
                      const char **value, uint32_t *value_len) {
    shoal_dict_slot *slots = slots_of(v);
    uint64_t n = v->nslots, mask = n - 1, i = hash & mask;
    for (uint64_t probes = 0; probes < n; probes++, i = (i + 1) & mask) {
        uint64_t off = __atomic_load_n(&slots[i].entry, ACQ);
        if (off == SHOAL_DICT_EMPTY)
            return 0;
        if (off == SHOAL_DICT_TOMBSTONE || ldr(&slots[i].hash) != hash)
            continue;
        const char *k;
        uint32_t kl;
        if (!entry_at(v, off, &k, &kl, value, value_len))
            return -1;
        if (kl == key_len && memcmp(k, key, key_len) == 0)
            return 1;
    }
    return 0;
}

/* The positions in use: order_top, bounded by the view (a stray write past it only
 * makes iteration look at positions that name nothing). */
static uint64_t order_top(const shoal_dict_view *v) {
    uint64_t top = ldr(&v->d->order_top);
    return top < v->nslots ? top : v->nslots;
}

/* The entry at position p, if one is there: 1 (filled in), 0 a hole or a stale
 * position, -1 the slot it names holds no entry (corrupt, or a torn read). */
static int entry_in_order(const shoal_dict_view *v, uint64_t p, uint64_t *slot, const char **key,
                          uint32_t *key_len, const char **value, uint32_t *value_len) {
    uint32_t s = ldo(&order_of(v)[p]);
    if (s >= v->nslots) /* a hole (or a stray write: nothing to follow) */
        return 0;
    uint64_t off = __atomic_load_n(&slots_of(v)[s].entry, ACQ);
    if (off == SHOAL_DICT_EMPTY || off == SHOAL_DICT_TOMBSTONE)
        return 0; /* deleted, or a writer died before it published the slot */
    if (!entry_at(v, off, key, key_len, value, value_len))
        return -1;
    if (entry_position(v, off) != p)
        return 0; /* the slot holds another entry now */
    *slot = s;
    return 1;
}

/* How far ahead a walk in order fetches the slots: positions are read in sequence, but
 * the slots they name are all over the table (its hash order). */
#define ORDER_PREFETCH 16

int shoal_dict_next(const shoal_dict_view *v, uint64_t *pos, const char **key, uint32_t *key_len,
                    const char **value, uint32_t *value_len) {
    uint64_t top = order_top(v), slot;
    const uint32_t *order = order_of(v);
    const shoal_dict_slot *slots = slots_of(v);
    for (uint64_t p = *pos; p < top; p++) {
        if (p + ORDER_PREFETCH < top) {
            uint32_t ahead = ldo(&order[p + ORDER_PREFETCH]);
            if (ahead < v->nslots)
                __builtin_prefetch(&slots[ahead]);
        }
        int r = entry_in_order(v, p, &slot, key, key_len, value, value_len);
        if (r == 0)
            continue;
        if (r < 0)
            return -1;
        *pos = p + 1;
        return 1;
    }
    *pos = top > *pos ? top : *pos;
    return 0;
}

int shoal_dict_last(const shoal_dict_view *v, uint64_t *pos, const char **key, uint32_t *key_len,
                    const char **value, uint32_t *value_len) {
    uint64_t slot;
    for (uint64_t p = order_top(v); p-- > 0;) {
        int r = entry_in_order(v, p, &slot, key, key_len, value, value_len);
        if (r == 0)
            continue;
        if (r < 0)
            return -1;
        *pos = p;
        return 1;
    }
    return 0;
}

/* Writer side, inside the write bracket: move the live entries' positions down over
 * the holes, keeping their order; the positions in use afterwards.  Each move records
 * the slot at the new position before the entry names it, so a writer killed midway
 * leaves every entry at exactly one position that names it back (the new or the old),
 * and what lies past the new top is stale. */
static uint64_t order_compact(const shoal_dict_view *v) {
    uint32_t *order = order_of(v);
    uint64_t top = order_top(v), to = 0, slot;
    for (uint64_t p = 0; p < top; p++) {
        const char *k, *val;
        uint32_t kl, vl;
        if (entry_in_order(v, p, &slot, &k, &kl, &val, &vl) != 1)
            continue;
        if (to != p) {
            sto(&order[to], (uint32_t)slot);
            uint64_t off = ld64(&slots_of(v)[slot].entry);
            __atomic_store_n((uint32_t *)((char *)v->d + off + 12), (uint32_t)to, __ATOMIC_RELEASE);
        }
        to++;
    }
    st64(&v->d->order_top, to);
    return to;
}

void shoal_dict_write_begin(shoal_dict *d) {
    st64(&d->version, ld64(&d->version) | 1);
}

void shoal_dict_write_end(shoal_dict *d) {
    uint64_t v = ld64(&d->version);
    st64(&d->version, (v | 1) + 1);
    st64(&d->writes, ld64(&d->writes) + 1);
}

/* Whether a whole block of class c may start at `off`: inside the heap, on the 16-byte
 * grid every block is on. */
static int block_fits(const shoal_dict_view *v, uint64_t off, int c) {
    return off >= v->heap && (off & 15) == 0 && off <= v->size &&
           v->size - off >= block_size(c);
}

/* Take a block of class c: its offset, 0 if there is none. */
static uint64_t block_alloc(const shoal_dict_view *v, int c) {
    shoal_dict *d = v->d;
    uint64_t head = ld64(&d->free_head[c]);
    if (head) {
        if (block_fits(v, head, c)) {
            uint64_t next; /* checked in its turn, when it is the head */
            memcpy(&next, (char *)d + head + 16, 8);
            st64(&d->free_head[c], next);
            return head;
        }
        st64(&d->free_head[c], 0); /* a corrupt list: dropped, a rebuild reclaims it */
    }
    uint64_t top = ld64(&d->heap_top), bs = block_size(c);
    if (top < v->heap || (top & 15) || top > v->size || v->size - top < bs)
        return 0;
    st64(&d->heap_top, top + bs);
    return top;
}

static void block_free(const shoal_dict_view *v, uint64_t off) {
    shoal_dict *d = v->d;
    char *e = (char *)d + off;
    uint32_t c;
    memcpy(&c, e + 8, 4);
    if (c >= SHOAL_DICT_CLASSES || !block_fits(v, off, (int)c))
        return; /* leaked rather than trusted: a rebuild reclaims it */
    /* the lengths and class stay (a reader may still look at the block: it re-checks
     * the version anyway); the free-list link goes at +16, inside every block */
    uint64_t next = ld64(&d->free_head[c]);
    memcpy(e + 16, &next, 8);
    st64(&d->free_head[c], off);
    st64(&d->bytes_live, ld64(&d->bytes_live) - block_size((int)c));
}

/* Find key's slot (writer side): 1 found, 0 not, -1 a slot of its hash names no entry
 * (corrupt: the key may be there, and a second copy must not be made).  *slot: its
 * index if found, else the slot to insert into (the first tombstone on the way, or the
 * empty slot that ended the search), or n when neither exists. */
static int find_slot(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len,
                     uint64_t *slot) {
    shoal_dict_slot *slots = slots_of(v);
    uint64_t n = v->nslots, mask = n - 1, i = hash & mask, insert = n;
    for (uint64_t probes = 0; probes < n; probes++, i = (i + 1) & mask) {
        uint64_t off = ld64(&slots[i].entry);
        if (off == SHOAL_DICT_EMPTY) {
            *slot = insert < n ? insert : i;
            return 0;
        }
        if (off == SHOAL_DICT_TOMBSTONE) {
            if (insert == n)
                insert = i;
            continue;
        }
        if (slots[i].hash != hash)
            continue;
        const char *k, *val;
        uint32_t kl, vl;
        if (!entry_at(v, off, &k, &kl, &val, &vl))
            return -1;
        if (kl == key_len && memcmp(k, key, key_len) == 0) {
            *slot = i;
            return 1;
        }
    }
    *slot = insert;
    return 0;
}

int shoal_dict_set2(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len,
                    const void *v1, uint32_t len1, const void *v2, uint32_t len2) {
    shoal_dict *d = v->d;
    uint64_t value_len = (uint64_t)len1 + len2;
    int c = shoal_dict_class(key_len, value_len);
    if (c < 0 || value_len > 0xffffffffu)
        return SHOAL_DICT_FULL;
    uint64_t slot;
    int found = find_slot(v, hash, key, key_len, &slot);
    if (found < 0)
        return SHOAL_BAD_LAYOUT;
    shoal_dict_slot *slots = slots_of(v);
    uint32_t *order = order_of(v);
    uint64_t n = v->nslots, pos = n;
    if (found) {
        /* an overwrite keeps its position (one past the slots is a stray write's: the
         * entry takes a new one; the order is not read here, to keep sets to the lines
         * they touched before) */
        uint64_t p = entry_position(v, ld64(&slots[slot].entry));
        if (p < n)
            pos = p;
    } else {
        if (slot >= n)
            return SHOAL_DICT_FULL;
        int reuse = ld64(&slots[slot].entry) == SHOAL_DICT_TOMBSTONE;
        if (!reuse && (d->count + d->tombstones + 1) * 16 > n * SHOAL_DICT_MAX_LOAD16)
            return SHOAL_DICT_FULL;
    }
    int fresh = pos == n;
    if (fresh) {
        pos = ldr(&d->order_top);
        if (pos >= n)
            pos = order_compact(v); /* the positions ran out: close the holes */
        if (pos >= n)
            return SHOAL_DICT_FULL;
    }
    uint64_t off = block_alloc(v, c);
    if (!off)
        return SHOAL_DICT_FULL;
    char *e = (char *)d + off;
    uint32_t kl = key_len, vl = (uint32_t)value_len, cls = (uint32_t)c, p32 = (uint32_t)pos;
    memcpy(e, &kl, 4);
    memcpy(e + 4, &vl, 4);
    memcpy(e + 8, &cls, 4);
    memcpy(e + 12, &p32, 4);
    memcpy(e + SHOAL_DICT_ENTRY_HEADER, key, key_len);
    if (len1)
        memcpy(e + SHOAL_DICT_ENTRY_HEADER + key_len, v1, len1);
    if (len2)
        memcpy(e + SHOAL_DICT_ENTRY_HEADER + key_len + len1, v2, len2);
    st64(&d->bytes_live, ld64(&d->bytes_live) + block_size(c));
    if (fresh) {
        /* the position first: until the slot is published it names nothing live */
        sto(&order[pos], (uint32_t)slot);
        __atomic_store_n(&d->order_top, pos + 1, RLX);
    }
    if (found) {
        uint64_t old = ld64(&slots[slot].entry);
        st64(&slots[slot].entry, off); /* the publish */
        block_free(v, old);
    } else {
        int reuse = ld64(&slots[slot].entry) == SHOAL_DICT_TOMBSTONE;
        st64(&slots[slot].hash, hash);
        st64(&slots[slot].entry, off); /* the publish */
        if (reuse)
            st64(&d->tombstones, ld64(&d->tombstones) - 1);
        st64(&d->count, ld64(&d->count) + 1);
    }
    return SHOAL_OK;
}

int shoal_dict_set(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len,
                   const void *value, uint32_t value_len) {
    return shoal_dict_set2(v, hash, key, key_len, value, value_len, NULL, 0);
}

int shoal_dict_delete(const shoal_dict_view *v, uint64_t hash, const void *key, uint32_t key_len) {
    shoal_dict *d = v->d;
    uint64_t slot;
    int found = find_slot(v, hash, key, key_len, &slot);
    if (found <= 0)
        return found;
    shoal_dict_slot *slots = slots_of(v);
    uint32_t *order = order_of(v);
    uint64_t old = ld64(&slots[slot].entry), p = entry_position(v, old), top = order_top(v);
    st64(&slots[slot].entry, SHOAL_DICT_TOMBSTONE); /* the change */
    st64(&d->tombstones, ld64(&d->tombstones) + 1);
    st64(&d->count, ld64(&d->count) - 1);
    if (p < top && ldo(&order[p]) == slot) {
        sto(&order[p], SHOAL_DICT_HOLE);
        if (p + 1 == top) {
            /* the last position: hand it (and the holes before it) out again, so
             * that popitem() and set/delete churn at the end use no positions up */
            while (p > 0 && ldo(&order[p - 1]) == SHOAL_DICT_HOLE)
                p--;
            __atomic_store_n(&d->order_top, p, RLX);
        }
    }
    block_free(v, old);
    return 1;
}

int shoal_dict_copy(const shoal_dict_view *src, const shoal_dict_view *dst) {
    uint64_t pos = 0, copied = 0;
    const char *k, *val;
    uint32_t kl, vl;
    int r;
    while ((r = shoal_dict_next(src, &pos, &k, &kl, &val, &vl)) == 1) {
        /* a dead writer may have left two slots naming one key (never: a key is
         * published in one slot only), and the order names each live slot once at
         * most, so a plain set is right */
        int st = shoal_dict_set(dst, shoal_dict_hash(k, kl), k, kl, val, vl);
        if (st != SHOAL_OK)
            return st;
        copied++;
    }
    if (r != 0)
        return SHOAL_BAD_LAYOUT;
    /* The slots are the truth: a live entry that the order does not name (only a
     * stray write into the order leaves one) is kept, last. */
    shoal_dict_slot *slots = slots_of(src);
    uint64_t live = 0;
    for (uint64_t i = 0; i < src->nslots; i++)
        live += ld64(&slots[i].entry) > SHOAL_DICT_TOMBSTONE;
    if (live == copied)
        return SHOAL_OK;
    for (uint64_t i = 0; i < src->nslots; i++) {
        uint64_t off = ld64(&slots[i].entry);
        if (off <= SHOAL_DICT_TOMBSTONE)
            continue;
        if (!entry_at(src, off, &k, &kl, &val, &vl))
            return SHOAL_BAD_LAYOUT;
        uint64_t h = shoal_dict_hash(k, kl);
        const char *there;
        uint32_t there_len;
        if (shoal_dict_lookup(dst, h, k, kl, &there, &there_len) == 1)
            continue;
        int st = shoal_dict_set(dst, h, k, kl, val, vl);
        if (st != SHOAL_OK)
            return st;
    }
    return SHOAL_OK;
}
