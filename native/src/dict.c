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

uint64_t shoal_dict_size_for(uint64_t nslots, uint64_t heap_bytes) {
    return SHOAL_DICT_HEADER_SIZE + nslots * sizeof(shoal_dict_slot) + heap_bytes;
}

static shoal_dict_slot *slots_of(const shoal_dict_view *v) {
    return (shoal_dict_slot *)((char *)v->d + SHOAL_DICT_HEADER_SIZE);
}

static int geometry_ok(uint64_t size, uint64_t nslots) {
    if (nslots < 8 || (nslots & (nslots - 1)) || nslots > ((uint64_t)1 << 40))
        return 0;
    return size >= SHOAL_DICT_HEADER_SIZE + nslots * sizeof(shoal_dict_slot) + SHOAL_DICT_MIN_BLOCK;
}

static void fill_view(shoal_dict_view *v, shoal_dict *d, uint64_t size, uint64_t nslots) {
    v->d = d;
    v->size = size;
    v->nslots = nslots;
    v->heap = SHOAL_DICT_HEADER_SIZE + nslots * sizeof(shoal_dict_slot);
}

shoal_status shoal_dict_init(shoal_dict_view *v, shoal_dict *d, uint64_t size, uint64_t nslots) {
    if (!geometry_ok(size, nslots))
        return SHOAL_BAD_LAYOUT;
    uint64_t heap = SHOAL_DICT_HEADER_SIZE + nslots * sizeof(shoal_dict_slot);
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
        heap != SHOAL_DICT_HEADER_SIZE + n * sizeof(shoal_dict_slot))
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

int shoal_dict_next(const shoal_dict_view *v, uint64_t *pos, const char **key, uint32_t *key_len,
                    const char **value, uint32_t *value_len) {
    shoal_dict_slot *slots = slots_of(v);
    for (uint64_t i = *pos; i < v->nslots; i++) {
        uint64_t off = __atomic_load_n(&slots[i].entry, ACQ);
        if (off == SHOAL_DICT_EMPTY || off == SHOAL_DICT_TOMBSTONE)
            continue;
        if (!entry_at(v, off, key, key_len, value, value_len))
            return -1;
        *pos = i + 1;
        return 1;
    }
    *pos = v->nslots;
    return 0;
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
    uint64_t n = v->nslots;
    if (!found) {
        if (slot >= n)
            return SHOAL_DICT_FULL;
        int reuse = ld64(&slots[slot].entry) == SHOAL_DICT_TOMBSTONE;
        if (!reuse && (d->count + d->tombstones + 1) * 16 > n * SHOAL_DICT_MAX_LOAD16)
            return SHOAL_DICT_FULL;
    }
    uint64_t off = block_alloc(v, c);
    if (!off)
        return SHOAL_DICT_FULL;
    char *e = (char *)d + off;
    uint32_t kl = key_len, vl = (uint32_t)value_len, cls = (uint32_t)c, zero = 0;
    memcpy(e, &kl, 4);
    memcpy(e + 4, &vl, 4);
    memcpy(e + 8, &cls, 4);
    memcpy(e + 12, &zero, 4);
    memcpy(e + SHOAL_DICT_ENTRY_HEADER, key, key_len);
    if (len1)
        memcpy(e + SHOAL_DICT_ENTRY_HEADER + key_len, v1, len1);
    if (len2)
        memcpy(e + SHOAL_DICT_ENTRY_HEADER + key_len + len1, v2, len2);
    st64(&d->bytes_live, ld64(&d->bytes_live) + block_size(c));
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
    uint64_t old = ld64(&slots[slot].entry);
    st64(&slots[slot].entry, SHOAL_DICT_TOMBSTONE); /* the change */
    st64(&d->tombstones, ld64(&d->tombstones) + 1);
    st64(&d->count, ld64(&d->count) - 1);
    block_free(v, old);
    return 1;
}

int shoal_dict_copy(const shoal_dict_view *src, const shoal_dict_view *dst) {
    uint64_t pos = 0;
    const char *k, *val;
    uint32_t kl, vl;
    int r;
    while ((r = shoal_dict_next(src, &pos, &k, &kl, &val, &vl)) == 1) {
        /* a dead writer may have left two slots naming one key (never: a key is
         * published in one slot only), so a plain set is right */
        int st = shoal_dict_set(dst, shoal_dict_hash(k, kl), k, kl, val, vl);
        if (st != SHOAL_OK)
            return st;
    }
    return r == 0 ? SHOAL_OK : SHOAL_BAD_LAYOUT;
}
