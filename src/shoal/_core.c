/*
 * shoal._core: the CPython glue over native/ (the files named in _core_glue.h are the
 * only ones that include Python.h).  This part: module init, the module state, the
 * status -> exception table, and the helpers every part shares.
 *
 * The glue's jobs, and nothing else:
 *   - turn (buffer, offset) into a checked, aligned pointer (ValueError otherwise);
 *   - keep the exporting object (an mmap) alive while a pointer into it is in use;
 *   - take the fast path with the GIL held, release the GIL only to block;
 *   - on EINTR run PyErr_CheckSignals() (Ctrl-C raises KeyboardInterrupt) and retry
 *     with the time left on a monotonic deadline;
 *   - map native statuses to Python results and exceptions.
 */
#include "_core_glue.h"

#include <math.h>

#include "shoal_dict.h"
#include "shoal_ring.h"

core_state core;

/* ---- helpers ------------------------------------------------------------------------ */

int parse_timeout(PyObject *timeout, int64_t *ns) {
    if (timeout == NULL || timeout == Py_None) {
        *ns = -1;
        return 0;
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(t)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a number of seconds, not NaN");
        return -1;
    }
    if (t <= 0)
        *ns = 0;
    else if (t >= 9.0e9) /* centuries: the same as forever, and no overflow below */
        *ns = -1;
    else
        *ns = (int64_t)(t * 1e9);
    return 0;
}

/* How long a synchronisation wait may sleep in native code before it comes back here to
 * run PyErr_CheckSignals.  EINTR alone is not enough: the native waits sleep in slices
 * and loop, and a signal that lands as a slice runs out (FUTEX_WAIT then reports
 * ETIMEDOUT, not EINTR, though the handler ran) or just after a wake-up meant for
 * somebody else is only flagged, so the loop slept on until the caller's timeout (#10:
 * Ctrl-C in Condition.wait, sent a whole number of 200 ms slices after a notify, came
 * when wait(20) ran out).  Coming back every slice bounds that to SIGNAL_CHECK_NS. */
#define SIGNAL_CHECK_NS (50LL * 1000 * 1000)

/* slice_ns < 0: one call for the whole timeout (back here only on SHOAL_INTR).  Else
 * the call gets at most slice_ns at a time and is called again, signals checked, while
 * time is left: it must then continue the same wait (every sync wait does: a waiter's
 * registration outlives a TIMEOUT, and acquiring again is the same acquire). */
static int run_blocking_sliced(blocking_call call, void *target, void *arg, PyObject *keepalive,
                               int64_t timeout_ns, int64_t slice_ns, shoal_status *out) {
    int64_t deadline = timeout_ns < 0 ? -1 : shoal_monotonic_ns() + timeout_ns;
    /* another thread may unbind the object while we sleep with the GIL released: the
     * mapping must outlive the wait, so hold its exporter */
    Py_XINCREF(keepalive);
    for (;;) {
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - shoal_monotonic_ns();
            if (left < 0)
                left = 0;
        }
        int sliced = slice_ns >= 0 && (left < 0 || left > slice_ns);
        shoal_status st;
        Py_BEGIN_ALLOW_THREADS
        st = call(target, arg, sliced ? slice_ns : left);
        Py_END_ALLOW_THREADS
        if (st != SHOAL_INTR && !(sliced && st == SHOAL_TIMEOUT)) {
            *out = st;
            Py_XDECREF(keepalive);
            return 0;
        }
        if (PyErr_CheckSignals() < 0) {
            Py_XDECREF(keepalive);
            return -1;
        }
    }
}

int run_blocking(blocking_call call, void *target, void *arg, PyObject *keepalive,
                        int64_t timeout_ns, shoal_status *out) {
    return run_blocking_sliced(call, target, arg, keepalive, timeout_ns, -1, out);
}

/* The synchronisation primitives' waits: signals checked at least every SIGNAL_CHECK_NS. */
int run_sync_wait(blocking_call call, void *target, void *arg, PyObject *keepalive,
                         int64_t timeout_ns, shoal_status *out) {
    return run_blocking_sliced(call, target, arg, keepalive, timeout_ns, SIGNAL_CHECK_NS, out);
}

int parse_block_timeout(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames,
                               int64_t *timeout_ns) {
    PyObject *block = NULL, *timeout = NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 2 arguments (%zd given)", fname, nargs);
        return -1;
    }
    if (nargs > 0) block = args[0];
    if (nargs > 1) timeout = args[1];
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i);
            PyObject *value = args[nargs + i];
            if (PyUnicode_CompareWithASCIIString(key, "block") == 0 ||
                PyUnicode_CompareWithASCIIString(key, "blocking") == 0) {
                if (block) goto twice;
                block = value;
            } else if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
                if (timeout) goto twice;
                timeout = value;
            } else {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                             key);
                return -1;
            }
        }
    }
    if (block) {
        int b = PyObject_IsTrue(block);
        if (b < 0)
            return -1;
        if (!b) {
            *timeout_ns = 0; /* like multiprocessing: a timeout is ignored when not blocking */
            return 0;
        }
    }
    return parse_timeout(timeout, timeout_ns);
twice:
    PyErr_Format(PyExc_TypeError, "%s() got multiple values for an argument", fname);
    return -1;
}

/* ---- the bound-view base ------------------------------------------------------------- */

void *get_addr(Py_buffer *view, Py_ssize_t offset, Py_ssize_t size) {
    if (offset < 0 || size < 0 || offset > view->len - size) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd + size %zd is outside the buffer of %zd bytes", offset, size,
                     view->len);
        return NULL;
    }
    char *addr = (char *)view->buf + offset;
    /* a word must be aligned to its size (atomics need it); structs to 8 bytes */
    uintptr_t align = size >= 8 ? 8 : size >= 4 ? 4 : 1;
    if (((uintptr_t)addr) % align != 0) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not %d-byte aligned in the mapping", offset,
                     (int)align);
        return NULL;
    }
    return addr;
}

int view_bind(ViewObject *self, PyObject *args, Py_ssize_t size) {
    PyObject *buffer;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "On", &buffer, &offset))
        return -1;
    if (self->addr) {
        PyErr_SetString(PyExc_RuntimeError, "already bound");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    char *addr = get_addr(&self->view, offset, size);
    if (!addr) {
        PyBuffer_Release(&self->view);
        return -1;
    }
    self->addr = addr;
    return 0;
}

PyObject *view_unbind(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->addr) {
        self->addr = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

PyObject *view_is_bound(ViewObject *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->addr != NULL);
}

void view_dealloc(ViewObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->addr) {
        self->addr = NULL;
        PyBuffer_Release(&self->view);
    }
    tp->tp_free((PyObject *)self);
}

int check_bound(ViewObject *self) {
    if (self->addr)
        return 0;
    PyErr_Format(core.ClosedError, "this %.100s is closed and cannot be used any more",
                 Py_TYPE(self)->tp_name);
    return -1;
}

shoal_status call_plain_lock(void *target, void *arg, int64_t timeout_ns) {
    return shoal_mutex_lock(target, *(uint64_t *)arg, timeout_ns);
}

/* ---- the module state's upcalls ---------------------------------------------------------- */

/* Set by _set_codec.  Without the GIL another thread may be calling the one replaced, so
 * that one is kept alive (a test may replace a hook; shoal._codec sets each once). */
static void set_upcall(PyObject **slot, PyObject *value) {
    Py_INCREF(value);
#ifdef Py_GIL_DISABLED
    __atomic_store_n(slot, value, __ATOMIC_RELEASE);
#else
    Py_XSETREF(*slot, value);
#endif
}

static PyObject *load_upcall(PyObject *const *slot) {
#ifdef Py_GIL_DISABLED
    return __atomic_load_n(slot, __ATOMIC_ACQUIRE);
#else
    return *slot;
#endif
}

PyObject *core_upcall(PyObject *const *slot) {
    PyObject *hook = load_upcall(slot);
    if (hook)
        return hook;
    PyObject *codec = PyImport_ImportModule("shoal._codec"); /* it sets them all */
    if (!codec)
        return NULL;
    Py_DECREF(codec);
    hook = load_upcall(slot);
    if (!hook)
        PyErr_SetString(PyExc_RuntimeError, "shoal._codec registered no codec upcall");
    return hook;
}

static PyObject *core_set_codec(PyObject *module, PyObject *args, PyObject *kwargs) {
    (void)module;
    static char *names[] = {"loads", "encode", "encode_key", "loads_stored", "release", NULL};
    PyObject *given[5] = {NULL, NULL, NULL, NULL, NULL};
    PyObject **slots[5] = {&core.loads, &core.encode, &core.encode_key, &core.loads_stored,
                           &core.release};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOOO", names, &given[0], &given[1],
                                     &given[2], &given[3], &given[4]))
        return NULL;
    for (int i = 0; i < 5; i++) {
        if (given[i] && !PyCallable_Check(given[i])) {
            PyErr_Format(PyExc_TypeError, "the %s upcall must be callable", names[i]);
            return NULL;
        }
    }
    for (int i = 0; i < 5; i++)
        if (given[i])
            set_upcall(slots[i], given[i]);
    Py_RETURN_NONE;
}

/* ---- the status -> exception table --------------------------------------------------------- */

PyObject *core_raise(int status, const char *message) {
    static const struct {
        int status;
        size_t state_offset; /* of the class in core_state, or (size_t)-1: a builtin below */
        PyObject **builtin;
    } table[] = {
        {SHOAL_TIMEOUT, (size_t)-1, &PyExc_TimeoutError},
        {SHOAL_NOT_OWNER, offsetof(core_state, NotHeldError), NULL},
        {SHOAL_OVERFLOW, (size_t)-1, &PyExc_OverflowError},
        {SHOAL_BAD_LAYOUT, offsetof(core_state, LayoutError), NULL},
        {SHOAL_RING_FULL, offsetof(core_state, QueueFull), NULL},
        {SHOAL_RING_EMPTY, offsetof(core_state, QueueEmpty), NULL},
        {SHOAL_RING_SHUTDOWN, offsetof(core_state, ShutDownError), NULL},
        {SHOAL_DICT_FULL, (size_t)-1, &PyExc_MemoryError},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (table[i].status != status)
            continue;
        PyObject *type = table[i].builtin
                             ? *table[i].builtin
                             : *(PyObject **)((char *)&core + table[i].state_offset);
        PyErr_SetString(type, message);
        return NULL;
    }
    PyErr_Format(PyExc_SystemError, "shoal._core: status %d is not an error (%s)", (int)status,
                 message);
    return NULL;
}

/* ---- types and module parts ------------------------------------------------------------------ */

#ifdef Py_GIL_DISABLED
/* Set once a type could not be locked whole (a call missing from its part's table). */
static int types_incomplete;

/* ---- free-threaded builds (3.13t and later): one call at a time per object ------------
 *
 * With the GIL, a call of a method of these types runs alone until it releases the GIL
 * (to wait); the code relies on that for the object's own fields: the bound view
 * (`addr`, which _unbind clears and releases), a ring's geometry, a dict's bound table
 * (which _refresh and _bind_table replace, releasing the old one).  Shared memory needs
 * nothing more: its words are atomics and its locks are process-shared, made for
 * other processes (hence threads) at any instant.  Without the GIL the same guarantee
 * is had per object from a critical section on it around every method, getter and
 * slot: like the GIL it is let go while the call waits (Py_BEGIN_ALLOW_THREADS) or
 * runs Python code that blocks, so close() from another thread still reaches a call
 * blocked in get() (the ring's busy/closing protocol), and no lock order can deadlock.
 * (On builds with the GIL none of this is compiled.)  Every method of every type must
 * be in its part's SHOAL_LOCKED_TABLE: one that is not leaves the GIL on (PyInit__core
 * checks), so a method added later without it is seen (tests/test_threads.py, on a
 * free-threaded build). */

/* The locked version of fn; NULL if it has none. */
static core_fn locked_version(core_fn fn, const core_locked_call *table, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (table[i].plain == fn || table[i].locked == fn)
            return table[i].locked;
    return NULL;
}

/* Point every method, getter and slot of type at its locked version (before
 * PyType_Ready copies them); 0 if one has none. */
static int lock_type(PyTypeObject *type, const core_locked_call *table, size_t n) {
    int complete = 1;
    for (PyMethodDef *m = type->tp_methods; m && m->ml_name; m++) {
        core_fn locked = locked_version((core_fn)m->ml_meth, table, n);
        if (locked)
            m->ml_meth = (PyCFunction)locked;
        else
            complete = 0;
    }
    for (PyGetSetDef *g = type->tp_getset; g && g->name; g++) {
        core_fn locked = g->get ? locked_version((core_fn)g->get, table, n) : NULL;
        if (locked && !g->set)
            g->get = (getter)locked;
        else
            complete = 0;
    }
    PyMappingMethods *mp = type->tp_as_mapping;
    PySequenceMethods *sq = type->tp_as_sequence;
    if (mp) {
        core_fn len = locked_version((core_fn)mp->mp_length, table, n);
        core_fn sub = locked_version((core_fn)mp->mp_subscript, table, n);
        core_fn ass = locked_version((core_fn)mp->mp_ass_subscript, table, n);
        if (len && sub && ass) {
            mp->mp_length = (lenfunc)len;
            mp->mp_subscript = (binaryfunc)sub;
            mp->mp_ass_subscript = (objobjargproc)ass;
        } else {
            complete = 0;
        }
    }
    if (sq) {
        core_fn contains = locked_version((core_fn)sq->sq_contains, table, n);
        /* only sq_contains is set: any other slot would be unlocked */
        if (contains && !sq->sq_length && !sq->sq_item && !sq->sq_ass_item &&
            !sq->sq_concat && !sq->sq_repeat)
            sq->sq_contains = (objobjproc)contains;
        else
            complete = 0;
    }
    if (type->tp_iter || type->tp_iternext || type->tp_call || type->tp_repr ||
        type->tp_str || type->tp_richcompare || type->tp_hash || type->tp_as_number ||
        type->tp_as_buffer || type->tp_init || type->tp_members)
        complete = 0; /* a slot this does not cover */
    return complete;
}
#endif

int add_type(PyObject *module, PyTypeObject *type, const char *name,
             const core_locked_call *locked, size_t nlocked) {
#ifdef Py_GIL_DISABLED
    if (!lock_type(type, locked, nlocked))
        types_incomplete = 1;
#else
    (void)locked;
    (void)nlocked;
#endif
    if (PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

int add_functions(PyObject *module, PyMethodDef *functions) {
    return PyModule_AddFunctions(module, functions);
}

/* ---- the module ------------------------------------------------------------------------------ */

static PyMethodDef core_functions[] = {
    {"_set_codec", (PyCFunction)(void (*)(void))core_set_codec, METH_VARARGS | METH_KEYWORDS,
     "_set_codec(*, loads, encode, encode_key, loads_stored, release): the upcalls for what "
     "the C codec does not encode (shoal._codec sets them; see _core_glue.h)."},
    {NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "shoal._core",
    "shoal's native core: atomics, wait/wake and robust synchronisation on shared buffers.",
    -1, core_functions,
};

static int get_class(PyObject *from, const char *name, PyObject **out) {
    *out = PyObject_GetAttrString(from, name);
    return *out ? 0 : -1;
}

PyMODINIT_FUNC PyInit__core(void) {
    PyObject *errors = PyImport_ImportModule("shoal._errors");
    if (!errors)
        return NULL;
    PyObject *queue = PyImport_ImportModule("queue");
    if (!queue) {
        Py_DECREF(errors);
        return NULL;
    }
    int failed = get_class(errors, "ClosedError", &core.ClosedError) < 0 ||
                 get_class(errors, "NotHeldError", &core.NotHeldError) < 0 ||
                 get_class(errors, "OwnerDiedWarning", &core.OwnerDiedWarning) < 0 ||
                 get_class(errors, "LayoutError", &core.LayoutError) < 0 ||
                 get_class(errors, "ShutDown", &core.ShutDownError) < 0 ||
                 get_class(errors, "SegmentNotFoundError", &core.SegmentNotFoundError) < 0 ||
                 get_class(queue, "Full", &core.QueueFull) < 0 ||
                 get_class(queue, "Empty", &core.QueueEmpty) < 0;
    Py_DECREF(errors);
    Py_DECREF(queue);
    if (failed)
        return NULL;
    PyObject *module = PyModule_Create(&core_module);
    if (!module || sync_module_init(module) < 0 || codec_module_init(module) < 0 ||
        ring_module_init(module) < 0 || dict_module_init(module) < 0) {
        Py_XDECREF(module);
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    /* (single-phase initialisation: no Py_mod_gil slot; this is its equivalent) */
    if (!types_incomplete && PyUnstable_Module_SetGIL(module, Py_MOD_GIL_NOT_USED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
#endif
    return module;
}
