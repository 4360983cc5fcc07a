/*
 * shoal._core, the glue for SharedDict's table (native/include/shoal_dict.h), over the
 * common layer (_core_glue.h).  Keys and values are encoded by the record format's
 * fast codec (_core_codec.h: exact None/bool/int64/float/str/bytes and tuples of them,
 * no pickle); anything else is pickled and unpickled by shoal._codec's upcalls.
 *
 * A Dict object is bound to two pieces of shared memory:
 *   - the root (_bind): the writers' robust mutex and which table is current (its
 *     segment name, double-buffered by the generation's parity; see shoal_dict_root);
 *   - the current table (_bind_table), whose geometry is checked then, once, into the
 *     object's shoal_dict_view (never re-read from shared memory), a segment of its own
 *     that is replaced, never resized: shoal.SharedDict._rebuild makes a bigger (or, after a crash, a clean)
 *     one, copies the live entries with _copy_to and publishes it in the root.
 * Every operation first compares the root's generation with the bound table's and
 * calls self._refresh() when they differ.  Reads take no lock (the table's seqlock);
 * writes take the root's mutex, and a table whose version is odd when the mutex is
 * taken was left mid-change by a writer that died: it is rebuilt before anything else.
 *
 * Stored references.  A value whose pickle holds shoal handles is stored behind the byte
 * DICT_STORED_MARK: the dict holds one reference to each object in it (shoal._dict).
 * Reads decode it with a hook that takes references of their own; the writer that
 * removes it (overwrite, delete, pop, clear) hands its bytes to the release hook once
 * the lock is let go -- exactly one writer removes a given entry, so the references
 * go back exactly once.  The root's `stored` word says whether any such value was
 * stored since the last clear, so that writes to other dicts skip the extra lookup.
 */
#include "_core_codec.h"
#include "shoal_dict.h"

#include <sched.h>

/* how long a writer waits for the lock before it calls the dict stuck */
#define DICT_LOCK_TIMEOUT_NS (30LL * 1000000000LL)
/* optimistic snapshot attempts before iteration takes the writers' lock */
#define DICT_SNAPSHOT_TRIES 8

static int is_stored(const char *p, uint32_t n) { return n > 0 && p[0] == TAG_STORED; }

/* Give back the references a removed (or never stored) value holds: exactly once per
 * value.  Errors are reported, never raised: the write they follow has happened. */
static void release_stored(PyObject *raw) {
    if (!raw)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *release = core_upcall(&core.release);
    PyObject *r = release ? PyObject_CallOneArg(release, raw) : NULL;
    if (r)
        Py_DECREF(r);
    else
        PyErr_WriteUnraisable(release);
    PyErr_Restore(type, value, tb);
}

typedef struct {
    ViewObject v; /* the root */
    Py_buffer table_view;
    shoal_dict *table; /* NULL until the first operation binds the current table */
    shoal_dict_view tv; /* its geometry, checked when it was bound (shoal_dict.h) */
    uint64_t generation; /* of the bound table */
} DictObject;

#define ROOT(self) ((shoal_dict_root *)((ViewObject *)(self))->addr)

static void dict_release_table(DictObject *self) {
    if (self->table) {
        self->table = NULL;
        PyBuffer_Release(&self->table_view);
    }
}

static PyObject *dict_unbind(DictObject *self, PyObject *Py_UNUSED(ignored)) {
    dict_release_table(self);
    return view_unbind(&self->v, NULL);
}

static void dict_dealloc(DictObject *self) {
    dict_release_table(self);
    view_dealloc(&self->v);
}

static PyObject *dict_bind(DictObject *self, PyObject *args) {
    if (view_bind(&self->v, args, sizeof(shoal_dict_root)) < 0)
        return NULL;
    self->generation = 0;
    Py_RETURN_NONE;
}

static PyObject *dict_bind_table(DictObject *self, PyObject *args) {
    PyObject *buffer;
    Py_ssize_t offset, size;
    unsigned long long generation;
    if (!PyArg_ParseTuple(args, "OnnK", &buffer, &offset, &size, &generation))
        return NULL;
    BOUND_OR_NULL(self);
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    shoal_dict *d = get_addr(&view, offset, size);
    if (!d) {
        PyBuffer_Release(&view);
        return NULL;
    }
    shoal_dict_view tv;
    if (shoal_dict_check(&tv, d, (uint64_t)size) != SHOAL_OK) {
        PyBuffer_Release(&view);
        PyErr_SetString(core.LayoutError,
                        "the SharedDict's table segment does not hold a table this shoal wrote: "
                        "it is corrupt (was it written to outside shoal?)");
        return NULL;
    }
    if (self->table && generation <= self->generation) {
        /* Another thread of this process bound this table, or a newer one, while this
         * one was mapping it: keep that binding.  Binding an older table would undo a
         * newer one (the writes made to it would be lost), and even the same table
         * through a second mapping would unmap the first under whoever still uses it. */
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    /* the new table is in place before the old mapping goes: releasing it may unmap it
     * with the GIL let go (mmap's dealloc), and the other threads must find a table */
    Py_buffer old = self->table_view;
    int had = self->table != NULL;
    self->table_view = view;
    self->table = d;
    self->tv = tv;
    self->generation = generation;
    if (had)
        PyBuffer_Release(&old);
    Py_RETURN_NONE;
}

/* Make sure the bound table is the current one. */
static int dict_sync(DictObject *self) {
    if (!self->v.addr) {
        check_bound(&self->v);
        return -1;
    }
    if (self->table && shoal_load64(&ROOT(self)->generation) == self->generation)
        return 0;
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_refresh", NULL);
    if (!r)
        return -1;
    Py_DECREF(r);
    if (!self->table) {
        PyErr_SetString(PyExc_RuntimeError, "SharedDict._refresh() bound no table");
        return -1;
    }
    return 0;
}

/* ---- encoding -------------------------------------------------------------------------- */

typedef struct {
    record_src rec;
    PyObject *pickled;
    const char *a, *b; /* the encoding is a then b */
    uint32_t alen, blen;
} dict_enc;

static void enc_free(dict_enc *e) {
    if (e->rec.owned)
        PyMem_Free(e->rec.owned);
    e->rec.owned = NULL;
    Py_CLEAR(e->pickled);
}

/* owner: the dict a value is stored in, passed to the value encoder (its references are
 * kept in the dict's name); NULL for keys */
static int enc_any(PyObject *obj, dict_enc *e, PyObject *owner) {
    e->rec.owned = NULL;
    e->pickled = NULL;
    int r = fast_encode(obj, &e->rec);
    if (r < 0)
        return -1;
    if (r == 1) {
        if (e->rec.len > 0x7fffffff) {
            enc_free(e);
            PyErr_SetString(PyExc_ValueError, "a SharedDict key or value is limited to 2 GiB");
            return -1;
        }
        e->a = e->rec.tag;
        e->alen = (uint32_t)e->rec.tag_len;
        e->b = e->rec.data;
        e->blen = (uint32_t)e->rec.len;
        return 0;
    }
    PyObject *encode = core_upcall(owner ? &core.encode : &core.encode_key);
    if (!encode)
        return -1;
    if (!owner)
        e->pickled = PyObject_CallOneArg(encode, obj);
    else
        e->pickled = PyObject_CallFunctionObjArgs(encode, obj, owner, NULL);
    if (!e->pickled)
        return -1;
    if (!PyBytes_Check(e->pickled) || PyBytes_GET_SIZE(e->pickled) < 1 ||
        PyBytes_GET_SIZE(e->pickled) > 0x7fffffff || is_fast_tag(PyBytes_AS_STRING(e->pickled)[0])) {
        enc_free(e);
        PyErr_SetString(PyExc_ValueError, "the dict encoder returned no pickle (or one over 2 GiB)");
        return -1;
    }
    e->a = PyBytes_AS_STRING(e->pickled);
    e->alen = (uint32_t)PyBytes_GET_SIZE(e->pickled);
    e->b = NULL;
    e->blen = 0;
    return 0;
}

static int enc_value(DictObject *self, PyObject *obj, dict_enc *e) {
    return enc_any(obj, e, (PyObject *)self);
}

/* The encoding as a bytes object when it holds references (to release), else NULL. */
static PyObject *enc_stored(dict_enc *e) {
    return e->pickled && is_stored(e->a, e->alen) ? e->pickled : NULL;
}

typedef struct {
    dict_enc e;
    const char *p;
    uint32_t n;
    uint64_t hash;
    char *heap;
    char small[120];
} dict_key;

static void key_free(dict_key *k) {
    enc_free(&k->e);
    if (k->heap)
        PyMem_Free(k->heap);
    k->heap = NULL;
}

static int enc_key(PyObject *obj, dict_key *k) {
    k->heap = NULL;
    if (enc_any(obj, &k->e, NULL) < 0)
        return -1;
    if (k->e.blen == 0) {
        k->p = k->e.a;
        k->n = k->e.alen;
    } else {
        uint64_t n = (uint64_t)k->e.alen + k->e.blen;
        char *buf = k->small;
        if (n > sizeof(k->small)) {
            buf = k->heap = PyMem_Malloc((size_t)n);
            if (!buf) {
                enc_free(&k->e);
                PyErr_NoMemory();
                return -1;
            }
        }
        memcpy(buf, k->e.a, k->e.alen);
        memcpy(buf + k->e.alen, k->e.b, k->e.blen);
        k->p = buf;
        k->n = (uint32_t)n;
    }
    k->hash = shoal_dict_hash(k->p, k->n);
    return 0;
}

static void set_key_error(PyObject *key) {
    PyObject *t = PyTuple_Pack(1, key);
    if (t) {
        PyErr_SetObject(PyExc_KeyError, t);
        Py_DECREF(t);
    }
}

#define DICT_CORRUPT                                                                        \
    "the SharedDict's shared memory holds an entry no writer could make: it is corrupt "     \
    "(was it written to outside shoal?)"

static PyObject *raise_dict_corrupt(void) { return core_raise(SHOAL_BAD_LAYOUT, DICT_CORRUPT); }

/* Decode a stored encoding: an object, or (pickled) a bytes copy with *pending = 1
 * (2: a value holding references). */
static PyObject *dec_raw(const char *p, uint32_t n, int *pending) {
    *pending = 0;
    if (n == 0)
        return raise_dict_corrupt();
    if (is_fast_tag(p[0]))
        return fast_decode(p, n, DICT_CORRUPT);
    *pending = is_stored(p, n) ? 2 : 1;
    return PyBytes_FromStringAndSize(p, n);
}

static PyObject *dec_loads(PyObject *raw) {
    int stored = is_stored(PyBytes_AS_STRING(raw), (uint32_t)PyBytes_GET_SIZE(raw));
    PyObject *hook = core_upcall(stored ? &core.loads_stored : &core.loads);
    if (!hook)
        return NULL;
    return PyObject_CallOneArg(hook, raw);
}

static PyObject *dec_finish(PyObject *obj, int pending) {
    if (!pending || !obj)
        return obj;
    PyObject *r = dec_loads(obj);
    Py_DECREF(obj);
    return r;
}

/* dec_finish for a value just removed from the table: decoded (taking references of
 * its own), then its stored references are given back. */
static PyObject *dec_removed(PyObject *obj, int pending) {
    if (pending != 2 || !obj)
        return dec_finish(obj, pending);
    PyObject *r = dec_loads(obj);
    release_stored(obj);
    Py_DECREF(obj);
    return r;
}

/* Whether a failed decode met a value removed (and released) after it was copied. */
static int dec_gone(int pending) {
    return pending == 2 && PyErr_ExceptionMatches(core.SegmentNotFoundError);
}

/* ---- the writers' lock ------------------------------------------------------------------ */

static int dict_rebuild(DictObject *self, uint64_t extra, int copy) {
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_rebuild", "Ki", (unsigned long long)extra,
                                      copy);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static void dict_unlock(DictObject *self) { shoal_mutex_unlock(&ROOT(self)->lock); }

static int dict_lock(DictObject *self) {
    if (!self->v.addr) {
        check_bound(&self->v);
        return -1;
    }
    shoal_mutex *m = &ROOT(self)->lock;
    uint64_t token = shoal_self_token();
    if (shoal_mutex_trylock(m, token) != SHOAL_OK) {
        shoal_status st;
        if (run_blocking(call_plain_lock, m, &token, self->v.view.obj, DICT_LOCK_TIMEOUT_NS, &st) <
            0)
            return -1;
        if (st != SHOAL_OK && st != SHOAL_OWNER_DIED) {
            core_raise(SHOAL_TIMEOUT, "the SharedDict's writer lock stayed held for 30 s (is a "
                                      "writer process stopped?)");
            return -1;
        }
    }
    if (dict_sync(self) < 0) {
        dict_unlock(self);
        return -1;
    }
    if (shoal_load64(&self->table->version) & 1) {
        /* a writer died in the middle of a change: rebuild from the slots */
        if (dict_rebuild(self, 0, 1) < 0) {
            dict_unlock(self);
            return -1;
        }
    }
    return 0;
}

/* A reader found the version odd: wait for the writer, and if it is dead repair. */
static int dict_wait_writer(DictObject *self, unsigned attempt) {
    if (attempt < 64) {
        shoal_cpu_relax();
        return 0;
    }
    if (attempt % 256 == 0) {
        if (PyErr_CheckSignals() < 0)
            return -1;
        uint64_t owner = shoal_load64(&ROOT(self)->lock.owner) & ~SHOAL_MUTEX_HANDOVER;
        if (owner == 0 || !shoal_token_alive(owner)) {
            if (dict_lock(self) < 0)
                return -1;
            dict_unlock(self);
            return 0;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    sched_yield();
    Py_END_ALLOW_THREADS
    return 0;
}

/* Under the lock: a copy of the value stored for k if it holds references, else NULL
 * (and NULL at once where the dict never stored such a value). */
static PyObject *locked_stored(DictObject *self, dict_key *k, int *err) {
    *err = 0;
    if (!shoal_load64(&ROOT(self)->stored))
        return NULL;
    const char *val;
    uint32_t vl;
    int r = shoal_dict_lookup(&self->tv, k->hash, k->p, k->n, &val, &vl);
    if (r != 1 || !is_stored(val, vl))
        return NULL;
    PyObject *raw = PyBytes_FromStringAndSize(val, vl);
    *err = raw == NULL;
    return raw;
}

/* Set under the lock, rebuilding into a bigger table while it does not fit.  *old (if
 * given) receives the replaced value when it holds references, to release once the
 * lock is let go. */
static int locked_set(DictObject *self, dict_key *k, const char *a, uint32_t alen, const char *b,
                      uint32_t blen, PyObject **old) {
    int err;
    PyObject *prev = locked_stored(self, k, &err);
    if (err)
        return -1;
    if (is_stored(a, alen))
        shoal_store64(&ROOT(self)->stored, 1); /* before the value can be seen */
    for (int tries = 0;; tries++) {
        shoal_dict *d = self->table;
        shoal_dict_write_begin(d);
        int st = shoal_dict_set2(&self->tv, k->hash, k->p, k->n, a, alen, b, blen);
        shoal_dict_write_end(d);
        if (st == SHOAL_OK) {
            if (old)
                *old = prev;
            else
                Py_XDECREF(prev); /* (no caller replaces such a value without asking) */
            return 0;
        }
        if (st == SHOAL_BAD_LAYOUT) {
            raise_dict_corrupt();
            Py_XDECREF(prev);
            return -1;
        }
        if (tries >= 3 || shoal_dict_class(k->n, (uint64_t)alen + blen) < 0) {
            PyErr_SetString(PyExc_MemoryError, "the SharedDict cannot hold an entry this big");
            Py_XDECREF(prev);
            return -1;
        }
        uint64_t need = SHOAL_DICT_ENTRY_HEADER + (uint64_t)k->n + alen + blen;
        if (dict_rebuild(self, need * 2, 1) < 0) {
            Py_XDECREF(prev);
            return -1;
        }
    }
}

/* ---- reads ---------------------------------------------------------------------------- */

/* Whether the table bound as d (generation gen) was written since version v. */
static int dict_changed(DictObject *self, shoal_dict *d, uint64_t gen, uint64_t v) {
    return self->table != d || self->generation != gen ||
           shoal_load64(&ROOT(self)->generation) != gen || shoal_load64(&d->version) != v;
}

/* Look key up without the lock.  Returns the value (new ref), or NULL with *found = 0
 * and no error when absent, or NULL with an error.  want_value 0: only presence
 * (returns Py_None when found). */
static PyObject *dict_read(DictObject *self, dict_key *k, int want_value, int *found) {
    *found = 0;
    for (unsigned attempt = 0;; attempt++) {
        if (dict_sync(self) < 0)
            return NULL;
        shoal_dict *d = self->table;
        uint64_t v = shoal_dict_read_begin(d);
        if (v & 1) {
            if (dict_wait_writer(self, attempt) < 0)
                return NULL;
            continue;
        }
        const char *val;
        uint32_t vl;
        uint64_t gen = self->generation;
        int r = shoal_dict_lookup(&self->tv, k->hash, k->p, k->n, &val, &vl);
        PyObject *obj = NULL;
        int pending = 0;
        if (r == 1) {
            /* decoding allocates, and a collection may run a finalizer that uses this
             * dict and rebinds it to a newer table: the mapping must outlive the copy */
            PyObject *keep = Py_NewRef(self->table_view.obj);
            if (want_value)
                obj = dec_raw(val, vl, &pending);
            else
                obj = Py_NewRef(Py_None);
            int moved = shoal_dict_read_retry(d, v);
            Py_DECREF(keep);
            if (moved) {
                Py_XDECREF(obj);
                PyErr_Clear();
                continue;
            }
        } else if (shoal_dict_read_retry(d, v)) {
            Py_XDECREF(obj);
            PyErr_Clear();
            continue;
        }
        if (r < 0)
            return raise_dict_corrupt();
        if (r == 0)
            return NULL;
        if (!obj)
            return NULL;
        PyObject *res = dec_finish(obj, pending);
        if (!res && dec_gone(pending) && dict_changed(self, d, gen, v)) {
            /* removed after the copy (its objects freed): read the key again */
            PyErr_Clear();
            continue;
        }
        *found = 1;
        return res;
    }
}

static PyObject *dict_subscript(DictObject *self, PyObject *key) {
    dict_key k;
    if (enc_key(key, &k) < 0)
        return NULL;
    int found;
    PyObject *r = dict_read(self, &k, 1, &found);
    key_free(&k);
    if (!r && !found && !PyErr_Occurred())
        set_key_error(key);
    return r;
}

static int dict_contains(DictObject *self, PyObject *key) {
    dict_key k;
    if (enc_key(key, &k) < 0)
        return -1;
    int found;
    PyObject *r = dict_read(self, &k, 0, &found);
    key_free(&k);
    if (!r)
        return PyErr_Occurred() ? -1 : 0;
    Py_DECREF(r);
    return 1;
}

static PyObject *dict_get(DictObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    dict_key k;
    if (enc_key(args[0], &k) < 0)
        return NULL;
    int found;
    PyObject *r = dict_read(self, &k, 1, &found);
    key_free(&k);
    if (r || PyErr_Occurred())
        return r;
    return Py_NewRef(nargs > 1 ? args[1] : Py_None);
}

static Py_ssize_t dict_length(DictObject *self) {
    if (dict_sync(self) < 0)
        return -1;
    uint64_t count = shoal_load64(&self->table->count);
    if (count > self->tv.nslots) { /* shared memory: no table holds more than its slots */
        raise_dict_corrupt();
        return -1;
    }
    return (Py_ssize_t)count;
}

/* ---- writes ------------------------------------------------------------------------------ */

static int dict_ass_subscript(DictObject *self, PyObject *key, PyObject *value) {
    dict_key k;
    if (enc_key(key, &k) < 0)
        return -1;
    int rc = 0;
    PyObject *old = NULL;
    if (value) {
        dict_enc e;
        if (enc_value(self, value, &e) < 0) {
            key_free(&k);
            return -1;
        }
        if (dict_lock(self) < 0) {
            rc = -1;
        } else {
            rc = locked_set(self, &k, e.a, e.alen, e.b, e.blen, &old);
            dict_unlock(self);
        }
        if (rc < 0)
            release_stored(enc_stored(&e)); /* never stored: its references go back */
        enc_free(&e);
    } else {
        if (dict_lock(self) < 0) {
            rc = -1;
        } else {
            int err;
            old = locked_stored(self, &k, &err);
            int removed = 0;
            if (!err) {
                shoal_dict *d = self->table;
                shoal_dict_write_begin(d);
                removed = shoal_dict_delete(&self->tv, k.hash, k.p, k.n);
                shoal_dict_write_end(d);
            }
            dict_unlock(self);
            if (err) {
                rc = -1;
            } else if (removed < 0) {
                raise_dict_corrupt();
                rc = -1;
            } else if (!removed) {
                set_key_error(key);
                rc = -1;
            }
        }
    }
    release_stored(old);
    Py_XDECREF(old);
    key_free(&k);
    return rc;
}

/* Under the lock: the value stored for k, decoded (pickles through the loads hook,
 * called with the lock held: the value cannot change meanwhile). */
static PyObject *locked_value(DictObject *self, dict_key *k, int *found) {
    const char *val;
    uint32_t vl;
    int r = shoal_dict_lookup(&self->tv, k->hash, k->p, k->n, &val, &vl);
    *found = r == 1;
    if (r < 0)
        return raise_dict_corrupt();
    if (r == 0)
        return NULL;
    int pending;
    PyObject *obj = dec_raw(val, vl, &pending);
    return dec_finish(obj, pending);
}

/* *old: as for locked_set (released by the caller once the lock is let go). */
static PyObject *locked_store(DictObject *self, dict_key *k, PyObject *value, PyObject **old) {
    dict_enc e;
    if (enc_value(self, value, &e) < 0)
        return NULL;
    int rc = locked_set(self, k, e.a, e.alen, e.b, e.blen, old);
    if (rc < 0)
        release_stored(enc_stored(&e));
    enc_free(&e);
    return rc < 0 ? NULL : value;
}

/* incr(key, delta=1, default=0) -> the new value, atomically. */
static PyObject *dict_incr(DictObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "incr() takes 1 to 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *delta = nargs > 1 ? args[1] : NULL, *deflt = nargs > 2 ? args[2] : NULL;
    dict_key k;
    if (enc_key(args[0], &k) < 0)
        return NULL;
    if (dict_lock(self) < 0) {
        key_free(&k);
        return NULL;
    }
    PyObject *result = NULL, *old = NULL;
    const char *val;
    uint32_t vl;
    int r = shoal_dict_lookup(&self->tv, k.hash, k.p, k.n, &val, &vl);
    if (r == 1 && vl == 9 && val[0] == TAG_INT && (!delta || PyLong_CheckExact(delta))) {
        /* the fast case: an int64 plus an int64, in place of pickle and Python */
        int64_t cur, add = 1, sum;
        int overflow = 0;
        memcpy(&cur, val + 1, 8);
        if (delta) {
            long long d = PyLong_AsLongLongAndOverflow(delta, &overflow);
            if (d == -1 && PyErr_Occurred())
                goto done;
            add = d;
        }
        if (!overflow && !__builtin_add_overflow(cur, add, &sum)) {
            char tag = TAG_INT;
            if (locked_set(self, &k, &tag, 1, (const char *)&sum, 8, NULL) == 0)
                result = PyLong_FromLongLong(sum);
            goto done;
        }
    }
    if (r < 0) {
        raise_dict_corrupt();
        goto done;
    }
    {
        int found;
        PyObject *cur = locked_value(self, &k, &found);
        if (!cur && PyErr_Occurred())
            goto done;
        if (!found) {
            cur = deflt ? Py_NewRef(deflt) : PyLong_FromLong(0);
            if (!cur)
                goto done;
        }
        PyObject *one = NULL;
        if (!delta)
            delta = one = PyLong_FromLong(1);
        PyObject *sum = delta ? PyNumber_Add(cur, delta) : NULL;
        Py_XDECREF(one);
        Py_DECREF(cur);
        if (sum) {
            if (locked_store(self, &k, sum, &old))
                result = sum;
            else
                Py_DECREF(sum);
        }
    }
done:
    dict_unlock(self);
    release_stored(old);
    Py_XDECREF(old);
    key_free(&k);
    return result;
}

/* get_or_set(key, default) -> the value stored, storing default first if absent. */
static PyObject *dict_get_or_set(DictObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get_or_set() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *deflt = nargs > 1 ? args[1] : Py_None;
    dict_key k;
    if (enc_key(args[0], &k) < 0)
        return NULL;
    int found;
    /* most calls find the key: try without the lock first */
    PyObject *r = dict_read(self, &k, 1, &found);
    if (r || PyErr_Occurred()) {
        key_free(&k);
        return r;
    }
    if (dict_lock(self) < 0) {
        key_free(&k);
        return NULL;
    }
    r = locked_value(self, &k, &found);
    if (!r && !PyErr_Occurred()) {
        if (locked_store(self, &k, deflt, NULL)) /* (only where absent: nothing replaced) */
            r = Py_NewRef(deflt);
    }
    dict_unlock(self);
    key_free(&k);
    return r;
}

/* pop(key[, default]) */
static PyObject *dict_pop(DictObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "pop() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    dict_key k;
    if (enc_key(args[0], &k) < 0)
        return NULL;
    if (dict_lock(self) < 0) {
        key_free(&k);
        return NULL;
    }
    const char *val;
    uint32_t vl;
    PyObject *obj = NULL;
    int pending = 0;
    int r = shoal_dict_lookup(&self->tv, k.hash, k.p, k.n, &val, &vl);
    if (r == 1) {
        obj = dec_raw(val, vl, &pending);
        if (obj) {
            shoal_dict *d = self->table;
            shoal_dict_write_begin(d);
            shoal_dict_delete(&self->tv, k.hash, k.p, k.n);
            shoal_dict_write_end(d);
        }
    } else if (r < 0) {
        raise_dict_corrupt();
    }
    dict_unlock(self);
    key_free(&k);
    if (r == 1)
        return dec_removed(obj, pending);
    if (r < 0)
        return NULL;
    if (nargs > 1)
        return Py_NewRef(args[1]);
    set_key_error(args[0]);
    return NULL;
}

static PyObject *dict_popitem(DictObject *self, PyObject *Py_UNUSED(ignored)) {
    if (dict_lock(self) < 0)
        return NULL;
    shoal_dict *d = self->table;
    const char *kp, *vp;
    uint32_t kl, vl;
    uint64_t pos;
    int r = shoal_dict_last(&self->tv, &pos, &kp, &kl, &vp, &vl); /* LIFO, as dict's */
    PyObject *key = NULL, *value = NULL;
    int kpend = 0, vpend = 0;
    if (r == 1) {
        key = dec_raw(kp, kl, &kpend);
        value = key ? dec_raw(vp, vl, &vpend) : NULL;
        if (value) {
            shoal_dict_write_begin(d);
            shoal_dict_delete(&self->tv, shoal_dict_hash(kp, kl), kp, kl);
            shoal_dict_write_end(d);
        }
    }
    dict_unlock(self);
    if (r < 0)
        return raise_dict_corrupt();
    if (r == 0) {
        PyErr_SetString(PyExc_KeyError, "popitem(): SharedDict is empty");
        return NULL;
    }
    if (!value) {
        Py_XDECREF(key);
        return NULL;
    }
    key = dec_finish(key, kpend);
    value = dec_removed(value, vpend);
    if (!key || !value) {
        Py_XDECREF(key);
        Py_XDECREF(value);
        return NULL;
    }
    PyObject *t = PyTuple_Pack(2, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return t;
}

/* ---- snapshots: keys, values, items ---------------------------------------------------- */

/* One pass over the table.  which: 0 keys, 1 values, 2 items.  Pickled encodings come
 * back as bytes, their places recorded in *pending (list index * 2 + 1 for an item's
 * value, * 2 for the rest). */
static PyObject *snapshot_pass(DictObject *self, int which, PyObject **pending) {
    PyObject *list = PyList_New(0), *todo = PyList_New(0);
    if (!list || !todo)
        goto fail;
    /* a copy: decoding allocates, a collection may run code that binds this handle to
     * a newer table meanwhile, and the pass must go on over the table it began on (the
     * caller keeps that one mapped) */
    shoal_dict_view tv = self->tv;
    uint64_t pos = 0;
    const char *kp, *vp;
    uint32_t kl, vl;
    int r;
    while ((r = shoal_dict_next(&tv, &pos, &kp, &kl, &vp, &vl)) == 1) {
        PyObject *parts[2] = {NULL, NULL};
        int pend[2] = {0, 0}, n = 0;
        if (which != 1)
            parts[n] = dec_raw(kp, kl, &pend[n]), n++;
        if (which != 0)
            parts[n] = dec_raw(vp, vl, &pend[n]), n++;
        if (!parts[0] || (n == 2 && !parts[1])) {
            Py_XDECREF(parts[0]);
            Py_XDECREF(parts[1]);
            goto fail;
        }
        PyObject *item = n == 2 ? PyTuple_Pack(2, parts[0], parts[1]) : Py_NewRef(parts[0]);
        Py_XDECREF(parts[0]);
        Py_XDECREF(parts[1]);
        Py_ssize_t at = PyList_GET_SIZE(list);
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
        for (int i = 0; i < n; i++) {
            if (!pend[i])
                continue;
            PyObject *mark = PyLong_FromSsize_t(at * 2 + (n == 2 ? i : 0));
            if (!mark || PyList_Append(todo, mark) < 0) {
                Py_XDECREF(mark);
                goto fail;
            }
            Py_DECREF(mark);
        }
    }
    if (r < 0) {
        raise_dict_corrupt();
        goto fail;
    }
    *pending = todo;
    return list;
fail:
    Py_XDECREF(list);
    Py_XDECREF(todo);
    return NULL;
}

static PyObject *dict_snapshot(DictObject *self, PyObject *arg) {
    int which = (int)PyLong_AsLong(arg);
    if (which == -1 && PyErr_Occurred())
        return NULL;
again:;
    PyObject *list = NULL, *todo = NULL;
    unsigned waits = 0;
    shoal_dict *seen = NULL;
    uint64_t seen_gen = 0, seen_version = 0;
    for (int tries = 0; !list; tries++) {
        if (tries >= DICT_SNAPSHOT_TRIES) {
            /* writers keep interrupting: take their lock for one pass */
            if (dict_lock(self) < 0)
                return NULL;
            list = snapshot_pass(self, which, &todo);
            seen = self->table;
            seen_gen = self->generation;
            seen_version = shoal_load64(&seen->version);
            dict_unlock(self);
            if (!list)
                return NULL;
            break;
        }
        if (dict_sync(self) < 0)
            return NULL;
        shoal_dict *d = self->table;
        uint64_t v = shoal_dict_read_begin(d);
        if (v & 1) {
            if (dict_wait_writer(self, waits++) < 0)
                return NULL;
            tries--;
            continue;
        }
        PyObject *keep = Py_NewRef(self->table_view.obj); /* as in dict_read */
        list = snapshot_pass(self, which, &todo);
        seen = d;
        seen_gen = self->generation;
        seen_version = v;
        int moved = shoal_dict_read_retry(d, v);
        Py_DECREF(keep);
        if (moved) {
            Py_CLEAR(list);
            Py_CLEAR(todo);
            PyErr_Clear();
            continue;
        }
        if (!list)
            return NULL;
    }
    /* unpickle what needs it, now that the copy is known to be consistent */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(todo); i++) {
        Py_ssize_t mark = PyLong_AsSsize_t(PyList_GET_ITEM(todo, i));
        Py_ssize_t at = mark / 2;
        PyObject *item = PyList_GET_ITEM(list, at);
        PyObject *raw = which == 2 ? PyTuple_GET_ITEM(item, mark % 2) : item;
        int stored = is_stored(PyBytes_AS_STRING(raw), (uint32_t)PyBytes_GET_SIZE(raw));
        PyObject *obj = dec_loads(raw);
        if (!obj) {
            int gone = dec_gone(stored ? 2 : 1) && dict_changed(self, seen, seen_gen, seen_version);
            Py_DECREF(list);
            Py_DECREF(todo);
            if (gone) {
                /* a value removed after the copy (its objects freed): copy again */
                PyErr_Clear();
                goto again;
            }
            return NULL;
        }
        if (which == 2) {
            /* the tuple is ours alone (made above, referenced only by the list) */
            PyObject *old = PyTuple_GET_ITEM(item, mark % 2);
            PyTuple_SET_ITEM(item, mark % 2, obj);
            Py_DECREF(old);
        } else {
            PyList_SetItem(list, at, obj);
        }
    }
    Py_DECREF(todo);
    return list;
}

/* ---- maintenance, called by shoal._dict ----------------------------------------------- */

/* Under the lock: copies of the values that hold references (a list), removed from the
 * table when `take` (the dict is going: they are released next, and nobody may find
 * them afterwards and release them twice). */
static PyObject *locked_stored_values(DictObject *self, int take) {
    PyObject *values = PyList_New(0), *keys = take ? PyList_New(0) : NULL;
    if (!values || (take && !keys))
        goto fail;
    if (!shoal_load64(&ROOT(self)->stored))
        goto done;
    shoal_dict *d = self->table;
    uint64_t pos = 0;
    const char *kp, *vp;
    uint32_t kl, vl;
    int r;
    while ((r = shoal_dict_next(&self->tv, &pos, &kp, &kl, &vp, &vl)) == 1) {
        if (!is_stored(vp, vl))
            continue;
        PyObject *v = PyBytes_FromStringAndSize(vp, vl);
        if (!v || PyList_Append(values, v) < 0) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
        if (take) {
            PyObject *kb = PyBytes_FromStringAndSize(kp, kl);
            if (!kb || PyList_Append(keys, kb) < 0) {
                Py_XDECREF(kb);
                goto fail;
            }
            Py_DECREF(kb);
        }
    }
    if (r < 0) {
        raise_dict_corrupt();
        goto fail;
    }
    if (take) {
        shoal_dict_write_begin(d);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
            PyObject *kb = PyList_GET_ITEM(keys, i);
            const char *p = PyBytes_AS_STRING(kb);
            uint32_t n = (uint32_t)PyBytes_GET_SIZE(kb);
            shoal_dict_delete(&self->tv, shoal_dict_hash(p, n), p, n);
        }
        shoal_dict_write_end(d);
        shoal_store64(&ROOT(self)->stored, 0);
    }
done:
    Py_XDECREF(keys);
    return values;
fail:
    Py_XDECREF(values);
    Py_XDECREF(keys);
    return NULL;
}

static void release_all(PyObject *values) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(values); i++)
        release_stored(PyList_GET_ITEM(values, i));
}

static PyObject *dict_clear(DictObject *self, PyObject *Py_UNUSED(ignored)) {
    if (dict_lock(self) < 0)
        return NULL;
    PyObject *stored = locked_stored_values(self, 0);
    int rc = stored ? dict_rebuild(self, 0, 0) : -1;
    if (rc == 0)
        shoal_store64(&ROOT(self)->stored, 0);
    dict_unlock(self);
    if (rc < 0) {
        Py_XDECREF(stored);
        return NULL;
    }
    release_all(stored); /* once the lock is let go: the release may use this dict */
    Py_DECREF(stored);
    Py_RETURN_NONE;
}

/* _release_stored(): take every value that holds references out of the table and give
 * those references back (the dict's last handle is going). */
static PyObject *dict_release_stored(DictObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    if (!shoal_load64(&ROOT(self)->stored))
        Py_RETURN_NONE;
    if (dict_lock(self) < 0)
        return NULL;
    PyObject *stored = locked_stored_values(self, 1);
    dict_unlock(self);
    if (!stored)
        return NULL;
    release_all(stored);
    Py_DECREF(stored);
    Py_RETURN_NONE;
}

/* _copy_to(buffer, offset, size, nslots, copy): make a table there (and copy this one's
 * live entries into it when copy is true): True, or False when they do not fit (the
 * counts it was sized by were wrong: _rebuild tries a bigger one).  Called by _rebuild,
 * with the lock held. */
static PyObject *dict_copy_to(DictObject *self, PyObject *args) {
    PyObject *buffer;
    Py_ssize_t offset, size;
    unsigned long long nslots;
    int copy;
    if (!PyArg_ParseTuple(args, "OnnKp", &buffer, &offset, &size, &nslots, &copy))
        return NULL;
    BOUND_OR_NULL(self);
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    shoal_dict *dst = get_addr(&view, offset, size);
    int st = SHOAL_OK;
    if (dst) {
        shoal_dict_view dv;
        st = shoal_dict_init(&dv, dst, (uint64_t)size, nslots);
        if (st == SHOAL_OK && copy && self->table)
            st = shoal_dict_copy(&self->tv, &dv);
    }
    PyBuffer_Release(&view);
    if (!dst)
        return NULL;
    if (st == SHOAL_DICT_FULL)
        Py_RETURN_FALSE;
    if (st == SHOAL_BAD_LAYOUT)
        return raise_dict_corrupt();
    if (st != SHOAL_OK) {
        PyErr_Format(PyExc_RuntimeError, "cannot rebuild the SharedDict's table (status %d)", st);
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *dict_table_stats(DictObject *self, PyObject *Py_UNUSED(ignored)) {
    if (dict_sync(self) < 0)
        return NULL;
    shoal_dict *d = self->table;
    const shoal_dict_view *v = &self->tv;
    /* the geometry as checked; the counts as found (a stray write shows here) */
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsK}", "count", (unsigned long long)shoal_load64(&d->count), "tombstones",
        (unsigned long long)shoal_load64(&d->tombstones), "nslots", (unsigned long long)v->nslots,
        "table_bytes", (unsigned long long)v->size, "heap_bytes",
        (unsigned long long)(v->size - v->heap), "heap_used",
        (unsigned long long)(shoal_load64(&d->heap_top) - v->heap), "bytes_live",
        (unsigned long long)shoal_load64(&d->bytes_live), "writes",
        (unsigned long long)shoal_load64(&d->writes));
}

static PyObject *dict_get_generation(DictObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLongLong(shoal_load64(&ROOT(self)->generation));
}

static PyObject *dict_table_size_for(PyObject *module, PyObject *args) {
    (void)module;
    unsigned long long nslots, heap;
    if (!PyArg_ParseTuple(args, "KK", &nslots, &heap))
        return NULL;
    return PyLong_FromUnsignedLongLong(shoal_dict_size_for(nslots, heap));
}

static PyObject *dict_hash_bytes(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t h = shoal_dict_hash(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(h);
}

static PyMappingMethods dict_as_mapping = {
    .mp_length = (lenfunc)dict_length,
    .mp_subscript = (binaryfunc)dict_subscript,
    .mp_ass_subscript = (objobjargproc)dict_ass_subscript,
};

static PySequenceMethods dict_as_sequence = {
    .sq_contains = (objobjproc)dict_contains,
};

static PyMethodDef dict_methods[] = {
    {"_bind", (PyCFunction)dict_bind, METH_VARARGS, "_bind(buffer, offset): the root."},
    {"_unbind", (PyCFunction)dict_unbind, METH_NOARGS, NULL},
    {"_bind_table", (PyCFunction)dict_bind_table, METH_VARARGS,
     "_bind_table(buffer, offset, size, generation)"},
    {"_copy_to", (PyCFunction)dict_copy_to, METH_VARARGS,
     "_copy_to(buffer, offset, size, nslots, copy): make a table (lock held)."},
    {"_table_stats", (PyCFunction)dict_table_stats, METH_NOARGS, NULL},
    {"_snapshot", (PyCFunction)dict_snapshot, METH_O,
     "_snapshot(which) -> list: 0 keys, 1 values, 2 items, one consistent copy."},
    {"_clear", (PyCFunction)dict_clear, METH_NOARGS, NULL},
    {"_release_stored", (PyCFunction)dict_release_stored, METH_NOARGS,
     "_release_stored(): remove the values that hold references and give those back."},
    {"get", (PyCFunction)(void (*)(void))dict_get, METH_FASTCALL,
     "get(key, default=None): the value for key, or default."},
    {"incr", (PyCFunction)(void (*)(void))dict_incr, METH_FASTCALL,
     "incr(key, delta=1, default=0) -> the new value: d[key] = d.get(key, default) + delta, "
     "atomically (no other writer runs in between)."},
    {"get_or_set", (PyCFunction)(void (*)(void))dict_get_or_set, METH_FASTCALL,
     "get_or_set(key, default=None) -> the value stored for key, storing default first if "
     "there is none, atomically."},
    {"pop", (PyCFunction)(void (*)(void))dict_pop, METH_FASTCALL,
     "pop(key[, default]): remove key and return its value (atomically)."},
    {"popitem", (PyCFunction)dict_popitem, METH_NOARGS,
     "popitem() -> (key, value): remove and return the item inserted last (KeyError when "
     "empty)."},
    {NULL},
};

static PyGetSetDef dict_getset[] = {
    {"_bound", (getter)view_is_bound, NULL, NULL, NULL},
    {"_generation", (getter)dict_get_generation, NULL, "the current table's number", NULL},
    {NULL},
};

static PyTypeObject DictType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._core.Dict",
    .tp_basicsize = sizeof(DictObject),
    .tp_dealloc = (destructor)dict_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A hash table in shared memory (shoal.SharedDict's C half), bound with _bind().",
    .tp_methods = dict_methods,
    .tp_getset = dict_getset,
    .tp_as_mapping = &dict_as_mapping,
    .tp_as_sequence = &dict_as_sequence,
    .tp_new = PyType_GenericNew,
};

#ifdef Py_GIL_DISABLED
#define DICT_LOCKED_CALLS(X)                                                                \
    X(ARG1, dict_bind) X(ARG1, dict_unbind) X(GET, view_is_bound)                            \
    X(ARG1, dict_bind_table) X(ARG1, dict_copy_to) X(ARG1, dict_table_stats)                 \
    X(ARG1, dict_snapshot) X(ARG1, dict_clear) X(ARG1, dict_release_stored)                  \
    X(FAST, dict_get) X(FAST, dict_incr) X(FAST, dict_get_or_set) X(FAST, dict_pop)          \
    X(ARG1, dict_popitem) X(GET, dict_get_generation) X(LEN, dict_length)                    \
    X(ARG1, dict_subscript) X(SETITEM, dict_ass_subscript) X(CONTAINS, dict_contains)
#endif
SHOAL_LOCKED_TABLE(dict_locked, DICT_LOCKED_CALLS)

int dict_module_init(PyObject *module) {
    static PyMethodDef functions[] = {
        {"dict_table_size", (PyCFunction)dict_table_size_for, METH_VARARGS,
         "dict_table_size(nslots, heap_bytes) -> bytes of a table"},
        {"dict_hash", (PyCFunction)dict_hash_bytes, METH_O,
         "dict_hash(data) -> the table's 64-bit hash of some bytes"},
        {NULL},
    };
    if (add_functions(module, functions) < 0 ||
        add_type(module, &DictType, "Dict", SHOAL_LOCKED(dict_locked)) < 0 ||
        PyModule_AddIntConstant(module, "DICT_ROOT_SIZE", sizeof(shoal_dict_root)) < 0 ||
        PyModule_AddIntConstant(module, "DICT_ROOT_GENERATION", SHOAL_DICT_ROOT_GENERATION) < 0 ||
        PyModule_AddIntConstant(module, "DICT_ROOT_SIZES", SHOAL_DICT_ROOT_SIZES) < 0 ||
        PyModule_AddIntConstant(module, "DICT_ROOT_REBUILDS", SHOAL_DICT_ROOT_REBUILDS) < 0 ||
        PyModule_AddIntConstant(module, "DICT_ROOT_STORED", SHOAL_DICT_ROOT_STORED) < 0 ||
        PyModule_AddIntConstant(module, "DICT_ROOT_NAMES", SHOAL_DICT_ROOT_NAMES) < 0 ||
        PyModule_AddIntConstant(module, "DICT_ROOT_NAME_BYTES", SHOAL_DICT_ROOT_NAME_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "DICT_LOAD16", SHOAL_DICT_MAX_LOAD16) < 0)
        return -1;
    return 0;
}
