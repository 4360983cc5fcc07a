/*
 * shoal._core, part two: the glue for the record ring (native/include/shoal_ring.h).
 * Included at the end of _core.c (one translation unit, one glue), so it shares that
 * file's helpers: ViewObject, check_bound, parse_timeout, parse_block_timeout, run_blocking.
 *
 * Ring.put/get move bytes only; pickling, out-of-band buffers and the Queue API are
 * Python (shoal._queues).  Locks are held only while copying a record, never while
 * sleeping: see the waiting protocol in shoal_ring.h.
 */
#include "shoal_ring.h"

static PyObject *QueueFull, *QueueEmpty, *ShutDownError;

/* How long a blocked side busy-waits (GIL released) before it sleeps on the futex:
 * a futex round trip costs microseconds, more than the other side usually needs. */
#define RING_SPINS 2000

typedef struct {
    ViewObject v;
    Py_ssize_t size;
} RingObject;

#define RING(self) ((shoal_ring *)((ViewObject *)(self))->addr)

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
    Py_RETURN_NONE;
}

static PyObject *ring_init(RingObject *self, PyObject *args) {
    unsigned long long capacity, max_items;
    if (!PyArg_ParseTuple(args, "KK", &capacity, &max_items))
        return NULL;
    BOUND_OR_NULL(self);
    if ((uint64_t)self->size < SHOAL_RING_HEADER_SIZE + capacity ||
        shoal_ring_init(RING(self), capacity, max_items) != SHOAL_OK) {
        PyErr_Format(PyExc_ValueError, "cannot make a ring of %llu bytes, %llu items in %zd bytes",
                     capacity, max_items, self->size);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *ring_check(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    return PyBool_FromLong(shoal_ring_check(RING(self), (uint64_t)self->size) == SHOAL_OK);
}

static int64_t ns_left(int64_t deadline) {
    if (deadline < 0)
        return -1;
    int64_t left = deadline - shoal_monotonic_ns();
    return left > 0 ? left : 0;
}

static shoal_status call_plain_lock(void *target, void *arg, int64_t timeout_ns) {
    return shoal_mutex_lock(target, *(uint64_t *)arg, timeout_ns);
}

/* Take one side's lock before `deadline` (-1: no limit; 0 with nonblocking: try only).
 * 1 locked, 0 timed out, -1 Python error.  A dead holder's lock is taken silently: the
 * ring's state is consistent at every instant (see shoal_ring.h). */
static int lock_side(RingObject *self, shoal_mutex *m, int64_t deadline, int nonblocking) {
    uint64_t token = shoal_self_token();
    if (shoal_mutex_trylock(m, token) == SHOAL_OK)
        return 1;
    shoal_status st;
    if (nonblocking)
        st = shoal_mutex_lock(m, token, 0);
    else if (run_blocking(call_plain_lock, m, &token, self->v.view.obj, ns_left(deadline), &st) < 0)
        return -1;
    /* OWNER_DIED needs no repair: release() will clear the flag */
    if (st == SHOAL_OK || st == SHOAL_OWNER_DIED)
        return 1;
    return 0;
}

typedef struct {
    shoal_ring *ring;
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

static PyObject *raise_full(Py_ssize_t items_put) {
    PyObject *exc = PyObject_CallFunction(QueueFull, "s", "the queue is full");
    if (!exc)
        return NULL;
    PyObject *count = PyLong_FromSsize_t(items_put);
    if (!count || PyObject_SetAttrString(exc, "items_put", count) < 0) {
        Py_XDECREF(count);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(count);
    PyErr_SetObject(QueueFull, exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *raise_shutdown(void) {
    PyErr_SetString(ShutDownError, "the queue was shut down");
    return NULL;
}

static PyObject *raise_corrupt(void) {
    PyErr_SetString(PyExc_RuntimeError,
                    "the queue's shared memory holds a record no producer could write: it is "
                    "corrupt (was it written to outside shoal?)");
    return NULL;
}

/* Put records[0..n) in order.  Returns how many were put, or -1 with an exception set
 * (Full carries .items_put). */
static Py_ssize_t ring_put_records(RingObject *self, Py_buffer *records, Py_ssize_t n,
                                   int64_t timeout_ns) {
    shoal_ring *r = RING(self);
    uint64_t max_payload = shoal_ring_max_payload(r);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((uint64_t)records[i].len > max_payload) {
            PyErr_Format(PyExc_ValueError,
                         "a record of %zd bytes does not fit this ring (at most %llu)",
                         records[i].len, (unsigned long long)max_payload);
            return -1;
        }
    }
    int nonblocking = timeout_ns == 0;
    int64_t deadline = timeout_ns < 0 ? -1 : shoal_monotonic_ns() + timeout_ns;
    Py_ssize_t done = 0;
    while (done < n) {
        int locked = lock_side(self, &r->put_lock, deadline, nonblocking);
        if (locked < 0)
            return -1;
        if (locked == 0) {
            raise_full(done);
            return -1;
        }
        Py_ssize_t first = done;
        int st = SHOAL_OK, registered = 0;
        uint32_t seq = 0;
        while (done < n) {
            void *dst;
            st = shoal_ring_reserve(r, (uint32_t)records[done].len, &dst);
            if (st == SHOAL_RING_FULL && !registered && !nonblocking) {
                /* register before the last look, so a consumer freeing room now wakes us */
                seq = shoal_ring_register_producer(r);
                registered = 1;
                st = shoal_ring_reserve(r, (uint32_t)records[done].len, &dst);
            }
            if (st != SHOAL_OK)
                break;
            memcpy(dst, records[done].buf, (size_t)records[done].len);
            shoal_ring_publish(r, (uint32_t)records[done].len, 0);
            done++;
        }
        shoal_mutex_unlock(&r->put_lock);
        if (done > first)
            shoal_ring_wake_consumers(r, (int)(done - first));
        if (st == SHOAL_OK && done == n) {
            if (registered)
                shoal_ring_unregister_producer(r);
            break;
        }
        if (st == SHOAL_RING_SHUTDOWN) {
            if (registered)
                shoal_ring_unregister_producer(r);
            raise_shutdown();
            return -1;
        }
        /* full */
        int64_t left = ns_left(deadline);
        if (nonblocking || left == 0) {
            if (registered)
                shoal_ring_unregister_producer(r);
            raise_full(done);
            return -1;
        }
        ring_wait_arg a = {r, seq, (uint32_t)records[done].len, 0};
        shoal_status wst;
        int failed = run_blocking(call_ring_wait, NULL, &a, self->v.view.obj, left, &wst);
        shoal_ring_unregister_producer(r);
        if (failed < 0)
            return -1;
    }
    return done;
}

static PyObject *ring_put(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "put_bytes() needs the data to put");
        return NULL;
    }
    int64_t timeout_ns;
    if (parse_block_timeout(args + 1, nargs - 1, kwnames, &timeout_ns) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    Py_buffer record;
    if (PyObject_GetBuffer(args[0], &record, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t done = ring_put_records(self, &record, 1, timeout_ns);
    PyBuffer_Release(&record);
    if (done < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *ring_put_many(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "put_many_bytes() needs a sequence of records");
        return NULL;
    }
    int64_t timeout_ns;
    if (parse_block_timeout(args + 1, nargs - 1, kwnames, &timeout_ns) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    PyObject *seq = PySequence_Fast(args[0], "put_many_bytes() needs a sequence of records");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), got = 0, done = -1;
    Py_buffer *records = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    if (!records) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (; got < n; got++)
        if (PyObject_GetBuffer(items[got], &records[got], PyBUF_SIMPLE) < 0)
            goto done;
    done = ring_put_records(self, records, n, timeout_ns);
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&records[i]);
    PyMem_Free(records);
    Py_DECREF(seq);
    return done < 0 ? NULL : PyLong_FromSsize_t(done);
}

/* Take up to max_items records (waiting for the first one only). */
static PyObject *ring_get_records(RingObject *self, Py_ssize_t max_items, int64_t timeout_ns,
                                  int as_list) {
    shoal_ring *r = RING(self);
    int nonblocking = timeout_ns == 0;
    int64_t deadline = timeout_ns < 0 ? -1 : shoal_monotonic_ns() + timeout_ns;
    PyObject *list = NULL;
    if (as_list && !(list = PyList_New(0)))
        return NULL;
    for (;;) {
        int locked = lock_side(self, &r->get_lock, deadline, nonblocking);
        if (locked <= 0) {
            Py_XDECREF(list);
            if (locked == 0)
                PyErr_SetString(QueueEmpty, "the queue is empty");
            return NULL;
        }
        const void *src;
        uint32_t len, kind;
        int st = shoal_ring_peek(r, &src, &len, &kind);
        int registered = 0;
        uint32_t seq = 0;
        if (st == SHOAL_RING_EMPTY && !nonblocking) {
            seq = shoal_ring_register_consumer(r);
            registered = 1;
            st = shoal_ring_peek(r, &src, &len, &kind);
        }
        if (st == SHOAL_OK) {
            if (registered)
                shoal_ring_unregister_consumer(r);
            Py_ssize_t taken = 0;
            PyObject *single = NULL;
            while (st == SHOAL_OK && taken < max_items) {
                PyObject *record = PyBytes_FromStringAndSize(src, (Py_ssize_t)len);
                if (!record || (list && PyList_Append(list, record) < 0)) {
                    Py_XDECREF(record);
                    break; /* not consumed: it stays for the next get */
                }
                shoal_ring_consume(r);
                taken++;
                if (!list) {
                    single = record;
                    break;
                }
                Py_DECREF(record);
                if (taken < max_items)
                    st = shoal_ring_peek(r, &src, &len, &kind);
            }
            shoal_mutex_unlock(&r->get_lock);
            if (taken)
                shoal_ring_wake_producers(r, (int)taken);
            if (PyErr_Occurred()) {
                Py_XDECREF(list);
                Py_XDECREF(single);
                return NULL;
            }
            return list ? list : single;
        }
        if (registered && st != SHOAL_RING_EMPTY)
            shoal_ring_unregister_consumer(r), registered = 0;
        shoal_mutex_unlock(&r->get_lock);
        if (st == SHOAL_RING_SHUTDOWN) {
            Py_XDECREF(list);
            return raise_shutdown();
        }
        if (st == SHOAL_BAD_LAYOUT) {
            Py_XDECREF(list);
            return raise_corrupt();
        }
        int64_t left = ns_left(deadline);
        if (nonblocking || left == 0) {
            if (registered)
                shoal_ring_unregister_consumer(r);
            Py_XDECREF(list);
            PyErr_SetString(QueueEmpty, "the queue is empty");
            return NULL;
        }
        ring_wait_arg a = {r, seq, 0, 1};
        shoal_status wst;
        int failed = run_blocking(call_ring_wait, NULL, &a, self->v.view.obj, left, &wst);
        shoal_ring_unregister_consumer(r);
        if (failed < 0) {
            Py_XDECREF(list);
            return NULL;
        }
    }
}

static PyObject *ring_get(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    int64_t timeout_ns;
    if (parse_block_timeout(args, nargs, kwnames, &timeout_ns) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    return ring_get_records(self, 1, timeout_ns, 0);
}

static PyObject *ring_get_many(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "get_many_bytes() needs max_items");
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
    if (parse_block_timeout(args + 1, nargs - 1, kwnames, &timeout_ns) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    return ring_get_records(self, max_items, timeout_ns, 1);
}

static PyObject *ring_qsize(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_ring_items(RING(self)));
}

static PyObject *ring_shutdown(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    shoal_ring_shutdown(RING(self));
    Py_RETURN_NONE;
}

static PyObject *ring_add_unfinished(RingObject *self, PyObject *arg) {
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    BOUND_OR_NULL(self);
    shoal_ring_add_unfinished(RING(self), n);
    Py_RETURN_NONE;
}

static PyObject *ring_task_done(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    if (shoal_ring_task_done(RING(self)) != SHOAL_OK) {
        PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
        return NULL;
    }
    Py_RETURN_NONE;
}

static shoal_status call_join(void *target, void *arg, int64_t timeout_ns) {
    (void)arg;
    return shoal_ring_join(target, timeout_ns);
}

static PyObject *ring_join(RingObject *self, PyObject *arg) {
    int64_t timeout_ns;
    if (parse_timeout(arg, &timeout_ns) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    shoal_status st;
    if (run_blocking(call_join, RING(self), NULL, self->v.view.obj, timeout_ns, &st) < 0)
        return NULL;
    return PyBool_FromLong(st == SHOAL_OK);
}

#define RING_GETTER(NAME, EXPR)                                 \
    static PyObject *NAME(RingObject *self, void *c) {          \
        (void)c;                                                \
        BOUND_OR_NULL(self);                                    \
        shoal_ring *r = RING(self);                             \
        return PyLong_FromUnsignedLongLong((unsigned long long)(EXPR)); \
    }

RING_GETTER(ring_get_capacity, r->capacity)
RING_GETTER(ring_get_max_items, r->max_items)
RING_GETTER(ring_get_max_payload, shoal_ring_max_payload(r))
RING_GETTER(ring_get_bytes_used, shoal_ring_bytes_used(r))
RING_GETTER(ring_get_unfinished, shoal_load64(&r->unfinished))
RING_GETTER(ring_get_is_shutdown, shoal_load32(&r->shutdown))
RING_GETTER(ring_get_consumers_waiting, shoal_load32(&r->consumers_waiting))
RING_GETTER(ring_get_producers_waiting, shoal_load32(&r->producers_waiting))

static PyMethodDef ring_methods[] = {
    {"_bind", (PyCFunction)ring_bind, METH_VARARGS, "_bind(buffer, offset, size)"},
    {"_unbind", (PyCFunction)view_unbind, METH_NOARGS, NULL},
    {"_init", (PyCFunction)ring_init, METH_VARARGS, "_init(capacity, max_items)"},
    {"_check", (PyCFunction)ring_check, METH_NOARGS, "True if the memory holds a valid ring."},
    {"_put_bytes", (PyCFunction)(void (*)(void))ring_put, METH_FASTCALL | METH_KEYWORDS,
     "put_bytes(data, block=True, timeout=None): append one record (queue.Full, ShutDown)."},
    {"_put_many_bytes", (PyCFunction)(void (*)(void))ring_put_many, METH_FASTCALL | METH_KEYWORDS,
     "put_many_bytes(records, block=True, timeout=None) -> count; Full has .items_put."},
    {"_get_bytes", (PyCFunction)(void (*)(void))ring_get, METH_FASTCALL | METH_KEYWORDS,
     "get_bytes(block=True, timeout=None) -> bytes (queue.Empty, ShutDown)."},
    {"_get_many_bytes", (PyCFunction)(void (*)(void))ring_get_many, METH_FASTCALL | METH_KEYWORDS,
     "get_many_bytes(max_items, block=True, timeout=None) -> list: waits for the first only."},
    {"_qsize", (PyCFunction)ring_qsize, METH_NOARGS, "Number of records in the ring."},
    {"_shutdown", (PyCFunction)ring_shutdown, METH_NOARGS, NULL},
    {"_add_unfinished", (PyCFunction)ring_add_unfinished, METH_O, NULL},
    {"_task_done", (PyCFunction)ring_task_done, METH_NOARGS, NULL},
    {"_join", (PyCFunction)ring_join, METH_O, "_join(timeout) -> bool"},
    {NULL},
};

static PyGetSetDef ring_getset[] = {
    {"_bound", (getter)view_is_bound, NULL, NULL, NULL},
    {"_capacity", (getter)ring_get_capacity, NULL, "bytes in the data area", NULL},
    {"_max_items", (getter)ring_get_max_items, NULL, "item limit, 0 for none", NULL},
    {"_max_payload", (getter)ring_get_max_payload, NULL, "largest record", NULL},
    {"_bytes_used", (getter)ring_get_bytes_used, NULL, NULL, NULL},
    {"_unfinished", (getter)ring_get_unfinished, NULL, NULL, NULL},
    {"_is_shutdown", (getter)ring_get_is_shutdown, NULL, NULL, NULL},
    {"_consumers_waiting", (getter)ring_get_consumers_waiting, NULL, NULL, NULL},
    {"_producers_waiting", (getter)ring_get_producers_waiting, NULL, NULL, NULL},
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
static int ring_module_init(PyObject *module, PyObject *errors) {
    PyObject *queue = PyImport_ImportModule("queue");
    if (!queue)
        return -1;
    QueueFull = PyObject_GetAttrString(queue, "Full");
    QueueEmpty = PyObject_GetAttrString(queue, "Empty");
    Py_DECREF(queue);
    ShutDownError = PyObject_GetAttrString(errors, "ShutDown");
    if (!QueueFull || !QueueEmpty || !ShutDownError)
        return -1;
    if (add_type(module, &RingType, "Ring") < 0 ||
        PyModule_AddIntConstant(module, "RING_HEADER_SIZE", SHOAL_RING_HEADER_SIZE) < 0)
        return -1;
    return 0;
}
