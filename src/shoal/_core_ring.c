/*
 * shoal._core, the glue for the record ring (native/include/shoal_ring.h), over the
 * common layer (_core_glue.h) and the record format (_core_codec.h).
 *
 * Ring.put/get move bytes only; pickling, out-of-band buffers and the Queue API are
 * Python (shoal._queues).  Each handle keeps the ring's geometry from _init/_check
 * (shoal_ring_view: never re-read from shared memory); a BAD_LAYOUT from the ring
 * becomes LayoutError.  Locks are held only while copying a record, never while
 * sleeping: see the waiting protocol in shoal_ring.h.
 */
#include "_core_codec.h"
#include "shoal_ring.h"

/* How long a blocked side busy-waits (GIL released) before it sleeps on the futex:
 * a futex round trip costs microseconds, more than the other side usually needs. */
#define RING_SPINS 2000
/* the bit a _get_claim word carries beside the ordinal: "a record was claimed" */
#define RING_CLAIMED (1ULL << 63)

typedef struct {
    ViewObject v;
    Py_ssize_t size;
    /* Calls of this handle that may wait with the GIL released, and whether close()
     * asked them to leave: close() must not release the memory under them (#3: a get
     * blocked on a closed handle went on to take items from the next object allocated
     * at the same place, and its unregistering corrupted that object's counts). */
    int busy;
    int closing;
    /* The geometry, fixed by _init or _check (#10: read from shared memory on every
     * call, one stray write to the capacity word made every process segfault); every
     * call needs it, and it goes with each (re)bind.  ready: it was checked. */
    shoal_ring_view geom;
    int ready;
} RingObject;

static int is_closing(RingObject *self) { return __atomic_load_n(&self->closing, __ATOMIC_SEQ_CST); }

static int raise_closed_while_waiting(void) {
    PyErr_SetString(core.ClosedError, "this queue was closed while the call was waiting");
    return -1;
}

#define RING(self) (&((RingObject *)(self))->geom)

static PyObject *raise_corrupt(void);

/* Bound, and its geometry fixed: 0, or -1 with ClosedError or LayoutError set. */
static int check_ready(RingObject *self) {
    if (check_bound(&self->v) < 0)
        return -1;
    if (self->ready)
        return 0;
    PyErr_SetString(core.LayoutError, "this memory holds no ring that _init made or _check accepted");
    return -1;
}

#define READY_OR_NULL(self) \
    if (check_ready((RingObject *)(self)) < 0) return NULL

static PyObject *ring_bind(RingObject *self, PyObject *args) {
    PyObject *buffer;
    Py_ssize_t offset, size;
    if (!PyArg_ParseTuple(args, "Onn", &buffer, &offset, &size))
        return NULL;
    if (size < (Py_ssize_t)SHOAL_RING_HEADER_SIZE + 64) {
        PyErr_Format(PyExc_ValueError, "a ring needs at least %u bytes, got %zd",
                     SHOAL_RING_HEADER_SIZE + 64, size);
        return NULL;
    }
    PyObject *pair = Py_BuildValue("(On)", buffer, offset);
    if (!pair)
        return NULL;
    int r = view_bind(&self->v, pair, size);
    Py_DECREF(pair);
    if (r < 0)
        return NULL;
    self->size = size;
    memset(&self->geom, 0, sizeof self->geom);
    self->ready = 0;
    Py_RETURN_NONE;
}

static PyObject *ring_init(RingObject *self, PyObject *args) {
    unsigned long long capacity, max_items;
    if (!PyArg_ParseTuple(args, "KK", &capacity, &max_items))
        return NULL;
    BOUND_OR_NULL(self);
    shoal_ring *mem = (shoal_ring *)self->v.addr;
    if (shoal_ring_init(&self->geom, mem, (uint64_t)self->size, capacity, max_items) != SHOAL_OK) {
        self->ready = 0;
        PyErr_Format(PyExc_ValueError, "cannot make a ring of %llu bytes, %llu items in %zd bytes",
                     capacity, max_items, self->size);
        return NULL;
    }
    self->ready = 1;
    Py_RETURN_NONE;
}

static PyObject *ring_check(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    if (self->ready)
        return PyBool_FromLong(1); /* (fixed already: never read twice) */
    self->ready = shoal_ring_attach(&self->geom, (shoal_ring *)self->v.addr,
                                    (uint64_t)self->size) == SHOAL_OK;
    return PyBool_FromLong(self->ready);
}

static int64_t ns_left(int64_t deadline) {
    if (deadline < 0)
        return -1;
    int64_t left = deadline - shoal_monotonic_ns();
    return left > 0 ? left : 0;
}


/* How long any call, a nonblocking one included, may wait for a side's lock.  The lock
 * is held only while records are copied, so "nonblocking" means not waiting for room
 * or items, never failing because another process is in the middle of a copy: before
 * #3's tests, put_nowait raised queue.Full on an empty queue whenever another process
 * was putting (and a put with a 1 ms timeout likewise).  A holder killed meanwhile is
 * replaced within the mutex's liveness check (~50 ms); only a holder frozen mid-copy
 * (SIGSTOP) makes a call give up here, with Full or Empty. */
#define LOCK_GRACE_NS 1000000000LL

/* Take one side's lock before `deadline` (-1: no limit), or within LOCK_GRACE_NS if
 * that is later.  1 locked, 0 timed out, -1 Python error.  A dead holder's lock is
 * taken silently: the ring's state is consistent at every instant (see shoal_ring.h). */
static int lock_side(RingObject *self, shoal_mutex *m, int64_t deadline) {
    uint64_t token = shoal_self_token();
    if (shoal_mutex_trylock(m, token) == SHOAL_OK)
        return 1;
    if (deadline >= 0) {
        int64_t grace = shoal_monotonic_ns() + LOCK_GRACE_NS;
        deadline = deadline > grace ? deadline : grace;
    }
    shoal_status st;
    if (run_blocking(call_plain_lock, m, &token, self->v.view.obj, ns_left(deadline), &st) < 0)
        return -1;
    if (is_closing(self)) {
        if (st == SHOAL_OK || st == SHOAL_OWNER_DIED)
            shoal_mutex_unlock(m);
        return raise_closed_while_waiting();
    }
    /* OWNER_DIED needs no repair: release() will clear the flag */
    if (st == SHOAL_OK || st == SHOAL_OWNER_DIED)
        return 1;
    return 0;
}

typedef struct {
    const shoal_ring_view *ring;
    uint32_t seq, len;
    int for_data;
} ring_wait_arg;

static shoal_status call_ring_wait(void *target, void *arg, int64_t timeout_ns) {
    (void)target;
    ring_wait_arg *a = arg;
    if (a->for_data) {
        if (shoal_ring_spin_for_data(a->ring, RING_SPINS))
            return SHOAL_OK;
        return shoal_ring_wait_data(a->ring, a->seq, timeout_ns);
    }
    if (shoal_ring_spin_for_space(a->ring, a->len, RING_SPINS))
        return SHOAL_OK;
    return shoal_ring_wait_space(a->ring, a->seq, timeout_ns);
}

/* queue.Full with the number of records put before it (put_many) as .items_put */
static PyObject *raise_full(Py_ssize_t items_put) {
    PyObject *exc = PyObject_CallFunction(core.QueueFull, "s", "the queue is full");
    if (!exc)
        return NULL;
    PyObject *count = PyLong_FromSsize_t(items_put);
    if (!count || PyObject_SetAttrString(exc, "items_put", count) < 0) {
        Py_XDECREF(count);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(count);
    PyErr_SetObject(core.QueueFull, exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *raise_shutdown(void) {
    return core_raise(SHOAL_RING_SHUTDOWN, "the queue was shut down");
}

#define RING_CORRUPT                                                                        \
    "the queue's shared memory holds a position or record no producer could write: it is "  \
    "corrupt (was it written to outside shoal?)"

static PyObject *raise_corrupt(void) { return core_raise(SHOAL_BAD_LAYOUT, RING_CORRUPT); }

/* Put recs[0..n) in order.  Returns how many were put, or -1 with an exception set
 * (Full carries .items_put). */
static Py_ssize_t put_records(RingObject *self, record_src *recs, Py_ssize_t n,
                              int64_t timeout_ns) {
    if (is_closing(self))
        return raise_closed_while_waiting();
    const shoal_ring_view *r = RING(self);
    uint64_t max_payload = shoal_ring_max_payload(r);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((uint64_t)record_size(&recs[i]) > max_payload) {
            PyErr_Format(PyExc_ValueError,
                         "a record of %zd bytes does not fit this ring (at most %llu)",
                         record_size(&recs[i]), (unsigned long long)max_payload);
            return -1;
        }
    }
    int nonblocking = timeout_ns == 0;
    int64_t deadline = timeout_ns < 0 ? -1 : shoal_monotonic_ns() + timeout_ns;
    Py_ssize_t done = 0;
    while (done < n) {
        int locked = lock_side(self, &r->ring->put_lock, deadline);
        if (locked < 0)
            return -1;
        if (locked == 0) {
            raise_full(done);
            return -1;
        }
        Py_ssize_t first = done;
        int st = SHOAL_OK, registered = 0, wslot = -1;
        uint32_t seq = 0;
        while (done < n) {
            shoal_ring_slot slot;
            uint32_t size = (uint32_t)record_size(&recs[done]);
            st = shoal_ring_reserve(r, size, &slot);
            if (st == SHOAL_RING_FULL && !registered && !nonblocking) {
                /* register before the last look, so a consumer freeing room now wakes us */
                seq = shoal_ring_register_producer(r, &wslot);
                registered = 1;
                st = shoal_ring_reserve(r, size, &slot);
            }
            if (st != SHOAL_OK)
                break;
            char *dst = slot.dst;
            memcpy(dst, recs[done].tag, (size_t)recs[done].tag_len);
            memcpy(dst + recs[done].tag_len, recs[done].data, (size_t)recs[done].len);
            shoal_ring_publish(r, &slot, 0);
            done++;
        }
        shoal_mutex_unlock(&r->ring->put_lock);
        if (done > first)
            shoal_ring_wake_consumers(r, (int)(done - first));
        if (st == SHOAL_OK && done == n) {
            if (registered)
                shoal_ring_unregister_producer(r, wslot);
            break;
        }
        if (st == SHOAL_RING_SHUTDOWN || st == SHOAL_BAD_LAYOUT) {
            if (registered)
                shoal_ring_unregister_producer(r, wslot);
            if (st == SHOAL_BAD_LAYOUT)
                raise_corrupt();
            else
                raise_shutdown();
            return -1;
        }
        /* full */
        int64_t left = ns_left(deadline);
        if (nonblocking || left == 0) {
            if (registered)
                shoal_ring_unregister_producer(r, wslot);
            raise_full(done);
            return -1;
        }
        ring_wait_arg a = {r, seq, (uint32_t)record_size(&recs[done]), 0};
        shoal_status wst;
        int failed = run_blocking(call_ring_wait, NULL, &a, self->v.view.obj, left, &wst);
        shoal_ring_unregister_producer(r, wslot);
        if (failed < 0)
            return -1;
        if (is_closing(self))
            return raise_closed_while_waiting();
    }
    return done;
}

static Py_ssize_t ring_put_records(RingObject *self, record_src *recs, Py_ssize_t n,
                                   int64_t timeout_ns) {
    self->busy++;
    Py_ssize_t done = put_records(self, recs, n, timeout_ns);
    self->busy--;
    return done;
}

/* Fill rec from a bytes-like object (no tag). */
static int buffer_record(PyObject *obj, record_src *rec) {
    if (PyObject_GetBuffer(obj, &rec->view, PyBUF_SIMPLE) < 0)
        return -1;
    rec->tag_len = 0;
    rec->data = rec->view.buf;
    rec->len = rec->view.len;
    return 0;
}

static void release_records(record_src *recs, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (recs[i].view.obj)
            PyBuffer_Release(&recs[i].view);
        PyMem_Free(recs[i].owned);
        recs[i].owned = NULL;
    }
}

/* (what, block=True, timeout=None) of the put calls: 0, or -1 with an exception set. */
static int parse_put_args(RingObject *self, const char *fname, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames, int64_t *timeout_ns) {
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%s() needs something to put", fname);
        return -1;
    }
    if (parse_block_timeout(fname, args + 1, nargs - 1, kwnames, timeout_ns) < 0)
        return -1;
    return check_ready(self);
}

static PyObject *ring_put(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    int64_t timeout_ns;
    if (parse_put_args(self, "put", args, nargs, kwnames, &timeout_ns) < 0)
        return NULL;
    record_src rec;
    memset(&rec, 0, sizeof rec);
    if (buffer_record(args[0], &rec) < 0)
        return NULL;
    Py_ssize_t done = ring_put_records(self, &rec, 1, timeout_ns);
    release_records(&rec, 1);
    if (done < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _put_fast(obj, block, timeout) -> bool: put obj if the fast codec takes it and it
 * fits the ring; False means the caller must pickle it (nothing was put). */
static PyObject *ring_put_fast(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    int64_t timeout_ns;
    if (parse_put_args(self, "put", args, nargs, kwnames, &timeout_ns) < 0)
        return NULL;
    record_src rec;
    int r = fast_encode(args[0], &rec);
    if (r < 0)
        return NULL;
    if (r == 0 || (uint64_t)record_size(&rec) > shoal_ring_max_payload(RING(self))) {
        release_records(&rec, r);
        Py_RETURN_FALSE;
    }
    Py_ssize_t done = ring_put_records(self, &rec, 1, timeout_ns);
    release_records(&rec, 1);
    if (done < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* After a failed _put_many: hang the encoded records that were not put on the error
 * as ._unsent_records, so the caller can remove their transit segments. */
static void attach_unsent(record_src *recs, Py_ssize_t ready, PyObject *encoded) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_ssize_t put = 0;
    PyObject *count = value ? PyObject_GetAttrString(value, "items_put") : NULL;
    if (count) {
        put = PyLong_AsSsize_t(count);
        Py_DECREF(count);
    }
    PyErr_Clear();
    PyObject *unsent = PyList_New(0);
    Py_ssize_t k = 0; /* index into encoded: the records of non-fast items, in order */
    for (Py_ssize_t i = 0; unsent && i < ready; i++) {
        if (!recs[i].view.obj)
            continue;
        if (i >= put && PyList_Append(unsent, PyList_GET_ITEM(encoded, k)) < 0)
            PyErr_Clear();
        k++;
    }
    if (unsent && value && PyObject_SetAttrString(value, "_unsent_records", unsent) < 0)
        PyErr_Clear();
    Py_XDECREF(unsent);
    PyErr_Restore(type, value, tb);
}

/* _put_many(items, encode, block, timeout) -> count.  Items the fast codec takes go in
 * as they are; every other item is first turned into a record by encode(item) (which
 * pickles it), before anything is put. */
static PyObject *ring_put_many(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "_put_many() needs items and an encoder");
        return NULL;
    }
    int64_t timeout_ns;
    if (parse_block_timeout("put_many", args + 2, nargs - 2, kwnames, &timeout_ns) < 0)
        return NULL;
    READY_OR_NULL(self);
    PyObject *encode = args[1];
    PyObject *seq = PySequence_Fast(args[0], "put_many() needs an iterable of items");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), ready = 0, done = -1;
    record_src *recs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(record_src));
    PyObject *encoded = PyList_New(0); /* keeps encode()'s results alive */
    if (!recs || !encoded) {
        PyErr_NoMemory();
        goto out;
    }
    uint64_t max_payload = shoal_ring_max_payload(RING(self));
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (; ready < n; ready++) {
        int r = fast_encode(items[ready], &recs[ready]);
        if (r < 0)
            goto out;
        if (r == 1 && (uint64_t)record_size(&recs[ready]) <= max_payload)
            continue;
        release_records(&recs[ready], 1);
        PyObject *record = PyObject_CallOneArg(encode, items[ready]);
        if (!record)
            goto out;
        int failed = PyList_Append(encoded, record) < 0 || buffer_record(record, &recs[ready]) < 0;
        Py_DECREF(record);
        if (failed)
            goto out;
    }
    done = ring_put_records(self, recs, n, timeout_ns);
out:
    if (done < 0 && encoded && PyList_GET_SIZE(encoded) > 0)
        attach_unsent(recs, ready, encoded);
    if (recs) {
        release_records(recs, ready);
        PyMem_Free(recs);
    }
    Py_XDECREF(encoded);
    Py_DECREF(seq);
    return done < 0 ? NULL : PyLong_FromSsize_t(done);
}

/* Take up to max_items records (waiting for the first one only).  With `decode`, fast
 * records become objects right away and the others are unpickled by the loads upcall after
 * the lock is released (unpickling may run arbitrary code); without it, bytes. */
static PyObject *get_records(RingObject *self, Py_ssize_t max_items, int64_t timeout_ns,
                             int as_list, int decode, uint64_t *claim, int *busy) {
    if (is_closing(self)) {
        raise_closed_while_waiting();
        return NULL;
    }
    const shoal_ring_view *r = RING(self);
    int nonblocking = timeout_ns == 0;
    int64_t deadline = timeout_ns < 0 ? -1 : shoal_monotonic_ns() + timeout_ns;
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    /* indices in list of records the loads upcall still has to turn into objects */
    Py_ssize_t *pending = NULL, npending = 0;
    for (;;) {
        int locked = lock_side(self, &r->ring->get_lock, deadline);
        if (locked <= 0) {
            Py_DECREF(list);
            if (locked == 0)
                core_raise(SHOAL_RING_EMPTY, "the queue is empty");
            return NULL;
        }
        shoal_ring_record rec;
        int st = shoal_ring_peek(r, &rec);
        int registered = 0, wslot = -1;
        uint32_t seq = 0;
        if (st == SHOAL_RING_EMPTY && !nonblocking) {
            seq = shoal_ring_register_consumer(r, &wslot);
            registered = 1;
            st = shoal_ring_peek(r, &rec);
        }
        if (st == SHOAL_OK) {
            if (registered)
                shoal_ring_unregister_consumer(r, wslot);
            Py_ssize_t taken = 0;
            while (st == SHOAL_OK && taken < max_items) {
                PyObject *item;
                const char *src = rec.src;
                uint32_t len = rec.len;
                int fast = decode && len > 0 && is_fast_tag(src[0]);
                if (fast)
                    item = fast_decode(src, len, RING_CORRUPT);
                else
                    item = PyBytes_FromStringAndSize(src, (Py_ssize_t)len);
                if (!item || PyList_Append(list, item) < 0) {
                    Py_XDECREF(item);
                    break; /* not consumed: it stays for the next get */
                }
                Py_DECREF(item);
                if (decode && !fast) {
                    Py_ssize_t *grown = PyMem_Realloc(pending, sizeof(Py_ssize_t) * (size_t)(npending + 1));
                    if (!grown) {
                        PyErr_NoMemory();
                        PyList_SetSlice(list, taken, taken + 1, NULL);
                        break;
                    }
                    pending = grown;
                    pending[npending++] = taken;
                }
                if (claim) /* before the consume: see shoal_ring_taken() */
                    shoal_store64(claim, RING_CLAIMED | shoal_ring_taken(r));
                shoal_ring_consume(r, &rec);
                taken++;
                if (taken < max_items)
                    st = shoal_ring_peek(r, &rec);
            }
            shoal_mutex_unlock(&r->ring->get_lock);
            if (taken)
                shoal_ring_wake_producers(r, (int)taken);
            break;
        }
        if (registered && st != SHOAL_RING_EMPTY)
            shoal_ring_unregister_consumer(r, wslot), registered = 0;
        shoal_mutex_unlock(&r->ring->get_lock);
        if (st == SHOAL_RING_SHUTDOWN) {
            Py_DECREF(list);
            return raise_shutdown();
        }
        if (st == SHOAL_BAD_LAYOUT) {
            Py_DECREF(list);
            return raise_corrupt();
        }
        int64_t left = ns_left(deadline);
        if (nonblocking || left == 0) {
            if (registered)
                shoal_ring_unregister_consumer(r, wslot);
            Py_DECREF(list);
            core_raise(SHOAL_RING_EMPTY, "the queue is empty");
            return NULL;
        }
        ring_wait_arg a = {r, seq, 0, 1};
        shoal_status wst;
        int failed = run_blocking(call_ring_wait, NULL, &a, self->v.view.obj, left, &wst);
        shoal_ring_unregister_consumer(r, wslot);
        if (failed == 0 && is_closing(self))
            failed = raise_closed_while_waiting();
        if (failed < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    /* the ring is not touched from here on: close() need not wait for what follows */
    self->busy--;
    *busy = 0;
    /* outside the lock: unpickle.  A record that fails is dropped and its error
     * raised after the others are decoded; they ride on the error as .items. */
    PyObject *error_type = NULL, *error = NULL, *error_tb = NULL;
    int had_error = PyErr_Occurred() != NULL;
    if (had_error)
        PyErr_Fetch(&error_type, &error, &error_tb);
    Py_ssize_t removed = 0;
    for (Py_ssize_t i = 0; i < npending; i++) {
        Py_ssize_t at = pending[i] - removed;
        PyObject *record = PyList_GET_ITEM(list, at);
        PyObject *loads = core_upcall(&core.loads);
        PyObject *obj = loads ? PyObject_CallOneArg(loads, record) : NULL;
        if (obj) {
            PyList_SetItem(list, at, obj);
            continue;
        }
        if (!error_type)
            PyErr_Fetch(&error_type, &error, &error_tb);
        else
            PyErr_Clear();
        PyList_SetSlice(list, at, at + 1, NULL);
        removed++;
    }
    PyMem_Free(pending);
    if (error_type) {
        PyErr_NormalizeException(&error_type, &error, &error_tb);
        if (error && !had_error && PyList_GET_SIZE(list) > 0)
            PyObject_SetAttrString(error, "items", list);
        PyErr_Restore(error_type, error, error_tb);
        Py_DECREF(list);
        return NULL;
    }
    if (as_list)
        return list;
    PyObject *single = PyList_GET_ITEM(list, 0);
    Py_INCREF(single);
    Py_DECREF(list);
    return single;
}

static PyObject *ring_get_records(RingObject *self, Py_ssize_t max_items, int64_t timeout_ns,
                                  int as_list, int decode, uint64_t *claim) {
    int busy = 1;
    self->busy++;
    PyObject *result = get_records(self, max_items, timeout_ns, as_list, decode, claim, &busy);
    if (busy)
        self->busy--;
    return result;
}

static PyObject *ring_get_common(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames, int decode) {
    int64_t timeout_ns;
    if (parse_block_timeout("get", args, nargs, kwnames, &timeout_ns) < 0)
        return NULL;
    READY_OR_NULL(self);
    return ring_get_records(self, 1, timeout_ns, 0, decode, NULL);
}

static PyObject *ring_get(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    return ring_get_common(self, args, nargs, kwnames, 0);
}

static PyObject *ring_get_obj(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    return ring_get_common(self, args, nargs, kwnames, 1);
}

static PyObject *ring_get_many_common(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                                      PyObject *kwnames, int decode) {
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "get_many() needs max_items");
        return NULL;
    }
    if (!PyLong_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "max_items must be an int, not %.100s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    Py_ssize_t max_items = PyLong_AsSsize_t(args[0]);
    if (max_items == -1 && PyErr_Occurred())
        return NULL;
    if (max_items < 1) {
        PyErr_Format(PyExc_ValueError, "max_items must be >= 1, got %zd", max_items);
        return NULL;
    }
    int64_t timeout_ns;
    if (parse_block_timeout("get_many", args + 1, nargs - 1, kwnames, &timeout_ns) < 0)
        return NULL;
    READY_OR_NULL(self);
    return ring_get_records(self, max_items, timeout_ns, 1, decode, NULL);
}

static PyObject *ring_get_many(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    return ring_get_many_common(self, args, nargs, kwnames, 0);
}

static PyObject *ring_get_many_obj(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    return ring_get_many_common(self, args, nargs, kwnames, 1);
}

/* _get_claim(buffer, offset, block=True, timeout=None): get() that first stores
 * RING_CLAIMED | the record's ordinal into the aligned u64 at buffer[offset] (shared
 * memory a watcher reads): written before the record leaves the ring, so whenever the
 * caller dies, the word and the ring's taken count together say whether it took the
 * record (#5: a pool fails exactly the task its dead worker had taken). */
static PyObject *ring_get_claim(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames) {
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "_get_claim() needs buffer and offset");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    int64_t timeout_ns;
    if (parse_block_timeout("_get_claim", args + 2, nargs - 2, kwnames, &timeout_ns) < 0)
        return NULL;
    READY_OR_NULL(self);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    PyObject *result = NULL;
    uint64_t *claim = get_addr(&view, offset, 8);
    if (claim)
        result = ring_get_records(self, 1, timeout_ns, 0, 1, claim);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *ring_qsize(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    READY_OR_NULL(self);
    uint32_t items, used;
    if (shoal_ring_state(RING(self), &items, &used) != SHOAL_OK)
        return raise_corrupt();
    return PyLong_FromUnsignedLong(items);
}

static PyObject *ring_shutdown(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    READY_OR_NULL(self);
    shoal_ring_shutdown(RING(self));
    Py_RETURN_NONE;
}

static PyObject *ring_add_unfinished(RingObject *self, PyObject *arg) {
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    READY_OR_NULL(self);
    shoal_ring_add_unfinished(RING(self), n);
    Py_RETURN_NONE;
}

static PyObject *ring_task_done(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    READY_OR_NULL(self);
    if (shoal_ring_task_done(RING(self)) != SHOAL_OK) {
        PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
        return NULL;
    }
    Py_RETURN_NONE;
}

static shoal_status call_join(void *target, void *arg, int64_t timeout_ns) {
    /* (target: the ring's view) */
    return shoal_ring_join(target, timeout_ns, arg);
}

static PyObject *ring_join(RingObject *self, PyObject *arg) {
    int64_t timeout_ns;
    if (parse_timeout(arg, &timeout_ns) < 0)
        return NULL;
    READY_OR_NULL(self);
    if (is_closing(self)) {
        raise_closed_while_waiting();
        return NULL;
    }
    shoal_status st;
    self->busy++;
    int failed = run_blocking(call_join, RING(self), &self->closing, self->v.view.obj,
                              timeout_ns, &st);
    self->busy--;
    if (failed < 0)
        return NULL;
    if (st == SHOAL_AGAIN) {
        raise_closed_while_waiting();
        return NULL;
    }
    return PyBool_FromLong(st == SHOAL_OK);
}

/* _begin_close(): make this handle's calls that are waiting (in other threads) leave
 * with ClosedError, and new ones fail at once; Queue.close() then waits for _busy to
 * drop to 0 before it releases the memory. */
static PyObject *ring_begin_close(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    __atomic_store_n(&self->closing, 1, __ATOMIC_SEQ_CST);
    if (((ViewObject *)self)->addr && self->ready)
        shoal_ring_wake_all(RING(self));
    Py_RETURN_NONE;
}

static PyObject *ring_get_busy(RingObject *self, void *c) {
    (void)c;
    return PyLong_FromLong(self->busy);
}

#define RING_GETTER(NAME, EXPR)                                 \
    static PyObject *NAME(RingObject *self, void *c) {          \
        (void)c;                                                \
        READY_OR_NULL(self);                                    \
        const shoal_ring_view *r = RING(self);                  \
        return PyLong_FromUnsignedLongLong((unsigned long long)(EXPR)); \
    }

RING_GETTER(ring_get_capacity, r->capacity)
RING_GETTER(ring_get_taken, shoal_ring_taken(r))
RING_GETTER(ring_get_max_items, r->max_items)
RING_GETTER(ring_get_max_payload, shoal_ring_max_payload(r))
RING_GETTER(ring_get_bytes_used, shoal_ring_bytes_used(r))
RING_GETTER(ring_get_unfinished, shoal_load64(&r->ring->unfinished))
RING_GETTER(ring_get_is_shutdown, shoal_load32(&r->ring->shutdown))
RING_GETTER(ring_get_consumers_waiting, shoal_ring_consumers_waiting(r))
RING_GETTER(ring_get_producers_waiting, shoal_ring_producers_waiting(r))
RING_GETTER(ring_get_joiners, shoal_ring_joiners(r))
RING_GETTER(ring_get_consumers_waiting_raw, shoal_load32(&r->ring->consumers_waiting))
RING_GETTER(ring_get_producers_waiting_raw, shoal_load32(&r->ring->producers_waiting))
RING_GETTER(ring_get_joiners_raw, shoal_load32(&r->ring->joiners))

/* ---- waiters that sleep elsewhere (shoal._aio, #14; see _core_sync.c) ----------------- */
static uint32_t *ring_word(RingObject *self, long side) {
    shoal_ring *r = RING(self)->ring;
    return side == 0 ? &r->data_seq : side == 1 ? &r->space_seq : &r->unfinished_seq;
}

static int ring_side(PyObject *arg, long *side) {
    *side = PyLong_AsLong(arg);
    if (*side == -1 && PyErr_Occurred())
        return -1;
    if (*side < 0 || *side > 2) {
        PyErr_SetString(PyExc_ValueError, "side is 0 (consumers), 1 (producers) or 2 (joiners)");
        return -1;
    }
    return 0;
}

static PyObject *ring_aio_register(RingObject *self, PyObject *arg) {
    long side;
    if (ring_side(arg, &side) < 0)
        return NULL;
    READY_OR_NULL(self);
    int slot;
    uint32_t seq = side == 0 ? shoal_ring_register_consumer(RING(self), &slot)
                   : side == 1 ? shoal_ring_register_producer(RING(self), &slot)
                               : shoal_ring_register_joiner(RING(self), &slot);
    return Py_BuildValue("(KIi)", (unsigned long long)(uintptr_t)ring_word(self, side),
                         (unsigned)seq, slot);
}

static PyObject *ring_aio_unregister(RingObject *self, PyObject *args) {
    int side, slot;
    if (!PyArg_ParseTuple(args, "ii", &side, &slot))
        return NULL;
    if (side < 0 || side > 2) {
        PyErr_SetString(PyExc_ValueError, "side is 0 (consumers), 1 (producers) or 2 (joiners)");
        return NULL;
    }
    READY_OR_NULL(self);
    if (side == 0)
        shoal_ring_unregister_consumer(RING(self), slot);
    else if (side == 1)
        shoal_ring_unregister_producer(RING(self), slot);
    else
        shoal_ring_unregister_joiner(RING(self), slot);
    Py_RETURN_NONE;
}

static PyObject *ring_aio_word(RingObject *self, PyObject *arg) {
    long side;
    if (ring_side(arg, &side) < 0)
        return NULL;
    READY_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_load32(ring_word(self, side)));
}

static PyMethodDef ring_methods[] = {
    {"_bind", (PyCFunction)ring_bind, METH_VARARGS, "_bind(buffer, offset, size)"},
    {"_unbind", (PyCFunction)view_unbind, METH_NOARGS, NULL},
    {"_init", (PyCFunction)ring_init, METH_VARARGS, "_init(capacity, max_items)"},
    {"_check", (PyCFunction)ring_check, METH_NOARGS,
     "True if the memory holds a valid ring; its geometry is then this handle's for good "
     "(every other call needs _init or _check first: LayoutError)."},
    {"_put_bytes", (PyCFunction)(void (*)(void))ring_put, METH_FASTCALL | METH_KEYWORDS,
     "put_bytes(data, block=True, timeout=None): append one record (queue.Full, ShutDown)."},
    {"_put_fast", (PyCFunction)(void (*)(void))ring_put_fast, METH_FASTCALL | METH_KEYWORDS,
     "_put_fast(obj, block=True, timeout=None) -> bool: False if obj needs pickling."},
    {"_put_many", (PyCFunction)(void (*)(void))ring_put_many, METH_FASTCALL | METH_KEYWORDS,
     "_put_many(items, encode, block=True, timeout=None) -> count; Full has .items_put."},
    {"_get_bytes", (PyCFunction)(void (*)(void))ring_get, METH_FASTCALL | METH_KEYWORDS,
     "get_bytes(block=True, timeout=None) -> bytes (queue.Empty, ShutDown)."},
    {"_get_many_bytes", (PyCFunction)(void (*)(void))ring_get_many, METH_FASTCALL | METH_KEYWORDS,
     "_get_many_bytes(max_items, block=True, timeout=None) -> list: waits for the first only."},
    {"_get", (PyCFunction)(void (*)(void))ring_get_obj, METH_FASTCALL | METH_KEYWORDS,
     "_get(block=True, timeout=None) -> the next object."},
    {"_get_many", (PyCFunction)(void (*)(void))ring_get_many_obj, METH_FASTCALL | METH_KEYWORDS,
     "_get_many(max_items, block=True, timeout=None) -> list of objects."},
    {"_get_claim", (PyCFunction)(void (*)(void))ring_get_claim, METH_FASTCALL | METH_KEYWORDS,
     "_get_claim(buffer, offset, block=True, timeout=None): get(), recording the ordinal"},
    {"_qsize", (PyCFunction)ring_qsize, METH_NOARGS, "Number of records in the ring."},
    {"_aio_register", (PyCFunction)ring_aio_register, METH_O,
     "_aio_register(side) -> (address, value, slot)"},
    {"_aio_unregister", (PyCFunction)ring_aio_unregister, METH_VARARGS, "_aio_unregister(side, slot)"},
    {"_aio_word", (PyCFunction)ring_aio_word, METH_O, "_aio_word(side) -> the futex word's value"},
    {"_shutdown", (PyCFunction)ring_shutdown, METH_NOARGS, NULL},
    {"_add_unfinished", (PyCFunction)ring_add_unfinished, METH_O, NULL},
    {"_task_done", (PyCFunction)ring_task_done, METH_NOARGS, NULL},
    {"_join", (PyCFunction)ring_join, METH_O, "_join(timeout) -> bool"},
    {"_begin_close", (PyCFunction)ring_begin_close, METH_NOARGS,
     "Make this handle's waiting calls leave with ClosedError (see _busy)."},
    {NULL},
};

static PyGetSetDef ring_getset[] = {
    {"_bound", (getter)view_is_bound, NULL, NULL, NULL},
    {"_busy", (getter)ring_get_busy, NULL, "calls of this handle now in progress", NULL},
    {"_capacity", (getter)ring_get_capacity, NULL, "bytes in the data area", NULL},
    {"_taken", (getter)ring_get_taken, NULL, "records ever taken, mod 2**32", NULL},
    {"_max_items", (getter)ring_get_max_items, NULL, "item limit, 0 for none", NULL},
    {"_max_payload", (getter)ring_get_max_payload, NULL, "largest record", NULL},
    {"_bytes_used", (getter)ring_get_bytes_used, NULL, NULL, NULL},
    {"_unfinished", (getter)ring_get_unfinished, NULL, NULL, NULL},
    {"_is_shutdown", (getter)ring_get_is_shutdown, NULL, NULL, NULL},
    {"_consumers_waiting", (getter)ring_get_consumers_waiting, NULL, NULL, NULL},
    {"_producers_waiting", (getter)ring_get_producers_waiting, NULL, NULL, NULL},
    {"_joiners", (getter)ring_get_joiners, NULL, "calls blocked in join()", NULL},
    {"_consumers_waiting_raw", (getter)ring_get_consumers_waiting_raw, NULL,
     "the count a put reads to decide whether to wake anyone (dead waiters included)", NULL},
    {"_producers_waiting_raw", (getter)ring_get_producers_waiting_raw, NULL, NULL, NULL},
    {"_joiners_raw", (getter)ring_get_joiners_raw, NULL, NULL, NULL},
    {NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._core.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A multi-producer multi-consumer record ring in shared memory, bound with _bind().",
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
    .tp_new = PyType_GenericNew,
};

/* Called from PyInit__core. */

#ifdef Py_GIL_DISABLED
#define RING_LOCKED_CALLS(X)                                                                \
    SHOAL_VIEW_CALLS(X) X(ARG1, ring_bind) X(ARG1, ring_init) X(ARG1, ring_check)            \
    X(FASTKW, ring_put) X(FASTKW, ring_put_fast) X(FASTKW, ring_put_many)                    \
    X(FASTKW, ring_get) X(FASTKW, ring_get_many) X(FASTKW, ring_get_obj)                     \
    X(FASTKW, ring_get_many_obj) X(FASTKW, ring_get_claim) X(ARG1, ring_qsize)               \
    X(ARG1, ring_shutdown) X(ARG1, ring_add_unfinished) X(ARG1, ring_task_done)              \
    X(ARG1, ring_join) X(ARG1, ring_begin_close) X(GET, ring_get_busy)                       \
    X(GET, ring_get_capacity) X(GET, ring_get_taken) X(GET, ring_get_max_items)              \
    X(GET, ring_get_max_payload) X(GET, ring_get_bytes_used) X(GET, ring_get_unfinished)     \
    X(GET, ring_get_is_shutdown) X(GET, ring_get_consumers_waiting)                          \
    X(GET, ring_get_producers_waiting) X(GET, ring_get_joiners)                              \
    X(GET, ring_get_consumers_waiting_raw) X(GET, ring_get_producers_waiting_raw)            \
    X(GET, ring_get_joiners_raw) X(ARG1, ring_aio_register) X(ARG1, ring_aio_unregister)    \
    X(ARG1, ring_aio_word)
#endif
SHOAL_LOCKED_TABLE(ring_locked, RING_LOCKED_CALLS)

int ring_module_init(PyObject *module) {
    if (add_type(module, &RingType, "Ring", SHOAL_LOCKED(ring_locked)) < 0 ||
        PyModule_AddIntConstant(module, "RING_HEADER_SIZE", SHOAL_RING_HEADER_SIZE) < 0)
        return -1;
    return 0;
}
