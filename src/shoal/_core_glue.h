/*
 * shoal._core's common layer: what every part of the glue over native/ shares.
 *
 * The extension is five translation units, each compiled (and warned on) by itself:
 *   _core.c        module init, the module state (`core`), the status -> exception
 *                  table, and the helpers below (timeouts, blocking calls, bound views,
 *                  per-object critical sections on free-threaded builds)
 *   _core_sync.c   Mutex, Semaphore, Event, Cond, Atomic; the atomics, wait/wake,
 *                  identity and shm functions
 *   _core_codec.c  the record format's C half (_core_codec.h): the fast scalar codec
 *   _core_ring.c   Ring, the record ring (shoal.Queue's C half)
 *   _core_dict.c   Dict, the hash table (shoal.SharedDict's C half)
 * Only these files include Python.h; native/ knows nothing of Python.
 */
#ifndef SHOAL_CORE_GLUE_H
#define SHOAL_CORE_GLUE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include "shoal_core.h"

/* ---- the module state: every Python object the C side holds --------------------------
 *
 * Exception classes are looked up once, when the module is initialised (shoal._errors is
 * pure Python, the lowest layer, and queue is the standard library's).  The upcalls are
 * the Python functions the C side calls for what it does not encode itself; they are
 * registered by shoal._codec and by no other module (_set_codec), which the C side
 * imports the first time it needs one (core_upcall): so a Ring or Dict used before any
 * other shoal module is imported still decodes.  tests/test_layering.py checks both. */
typedef struct {
    /* exceptions */
    PyObject *ClosedError, *NotHeldError, *OwnerDiedWarning, *LayoutError, *ShutDownError;
    PyObject *QueueFull, *QueueEmpty, *SegmentNotFoundError;
    /* upcalls (shoal._codec) */
    PyObject *loads;        /* a record that is not fast-coded -> the object */
    PyObject *encode;       /* (value, dict) -> a SharedDict value's encoding */
    PyObject *encode_key;   /* key -> a SharedDict key's encoding */
    PyObject *loads_stored; /* a value holding references (TAG_STORED) -> the object */
    PyObject *release;      /* a removed TAG_STORED value: give its references back */
} core_state;

extern core_state core;

/* An upcall, registering the codec first if it is not yet (a borrowed reference; NULL
 * with an exception set when shoal._codec cannot be imported or set none). */
PyObject *core_upcall(PyObject *const *slot);

/* ---- the status -> exception table -----------------------------------------------------
 * Raise the exception that a native status (shoal_status, or a ring's or dict's own)
 * stands for, with `message`; NULL.  A status that is a result, not an error (SHOAL_OK,
 * SHOAL_OWNER_DIED...), raises SystemError: a caller that passes one has a bug. */
PyObject *core_raise(int status, const char *message);

/* ---- timeouts and blocking calls -------------------------------------------------------- */

/* timeout (seconds, None = forever) -> relative ns, -1 forever, 0 don't block. */
int parse_timeout(PyObject *timeout, int64_t *ns);
/* (block=True, timeout=None) from a vectorcall. */
int parse_block_timeout(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames, int64_t *timeout_ns);

/* A native call that may block, retried after signals until it gives an answer. */
typedef shoal_status (*blocking_call)(void *target, void *arg, int64_t timeout_ns);
/* Run it with the GIL released, keeping `keepalive` (the mapping's exporter) alive;
 * signals are checked when it returns SHOAL_INTR.  0 with *out set, -1 on error. */
int run_blocking(blocking_call call, void *target, void *arg, PyObject *keepalive,
                 int64_t timeout_ns, shoal_status *out);
/* The same, signals checked at least every 50 ms (the synchronisation primitives). */
int run_sync_wait(blocking_call call, void *target, void *arg, PyObject *keepalive,
                  int64_t timeout_ns, shoal_status *out);
/* shoal_mutex_lock as a blocking_call (arg: the caller's token). */
shoal_status call_plain_lock(void *target, void *arg, int64_t timeout_ns);

/* ---- the bound-view base: a Python object bound to a block of a shared buffer ---------- */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *addr; /* NULL when unbound (closed) */
} ViewObject;

/* (buffer, offset, size) -> a checked, aligned pointer, or NULL with ValueError. */
void *get_addr(Py_buffer *view, Py_ssize_t offset, Py_ssize_t size);
/* _bind((buffer, offset)) for a block of `size` bytes. */
int view_bind(ViewObject *self, PyObject *args, Py_ssize_t size);
PyObject *view_unbind(ViewObject *self, PyObject *ignored);
PyObject *view_is_bound(ViewObject *self, void *closure);
void view_dealloc(ViewObject *self);
/* 0 when bound, else -1 with ClosedError. */
int check_bound(ViewObject *self);

#define BOUND_OR_NULL(self) \
    if (check_bound((ViewObject *)(self)) < 0) return NULL

/* ---- types and module parts --------------------------------------------------------------
 * Each part adds its types, functions and constants in its *_module_init.  A type is
 * added with add_type, which on a free-threaded build first points every method, getter
 * and slot at a version that holds a critical section on the object (see _core.c);
 * `locked` lists them (SHOAL_LOCKED_TABLE below), NULL on builds with the GIL. */
typedef void (*core_fn)(void);
typedef struct {
    core_fn plain, locked;
} core_locked_call;

int add_type(PyObject *module, PyTypeObject *type, const char *name,
             const core_locked_call *locked, size_t nlocked);
int add_functions(PyObject *module, PyMethodDef *functions);

int sync_module_init(PyObject *module);
int codec_module_init(PyObject *module);
int ring_module_init(PyObject *module);
int dict_module_init(PyObject *module);

/* ---- free-threaded builds: the locked versions of a part's calls ------------------------
 * SHOAL_LOCKED_TABLE(name, LIST) defines, for LIST(X) = X(KIND, fn) ..., a wrapper
 * cs_fn(self, ...) { critical section on self; fn(self, ...) } for each, and the table
 * `name` of (fn, cs_fn) pairs that add_type takes.  KIND is the call's shape. */
#ifdef Py_GIL_DISABLED
#define CS_PARAMS_ARG1 PyObject *a
#define CS_ARGS_ARG1 a
#define CS_PARAMS_FAST PyObject *const *a, Py_ssize_t n
#define CS_ARGS_FAST a, n
#define CS_PARAMS_FASTKW PyObject *const *a, Py_ssize_t n, PyObject *k
#define CS_ARGS_FASTKW a, n, k
#define CS_PARAMS_VARKW PyObject *a, PyObject *k
#define CS_ARGS_VARKW a, k
#define CS_PARAMS_GET void *a
#define CS_ARGS_GET a
#define CS_RET_ARG1 PyObject *
#define CS_RET_FAST PyObject *
#define CS_RET_FASTKW PyObject *
#define CS_RET_VARKW PyObject *
#define CS_RET_GET PyObject *
#define CS_RET_SETITEM int
#define CS_PARAMS_SETITEM PyObject *a, PyObject *v
#define CS_ARGS_SETITEM a, v
#define CS_RET_CONTAINS int
#define CS_PARAMS_CONTAINS PyObject *a
#define CS_ARGS_CONTAINS a

#define CS_DEFINE(KIND, FN)                                                              \
    static CS_RET_##KIND cs_##FN(PyObject *self, CS_PARAMS_##KIND) {                     \
        CS_RET_##KIND r;                                                                 \
        Py_BEGIN_CRITICAL_SECTION(self);                                                 \
        r = FN((void *)self, CS_ARGS_##KIND); /* (self: the method's own type) */       \
        Py_END_CRITICAL_SECTION();                                                       \
        return r;                                                                        \
    }
/* (lenfunc takes no argument past self) */
#define CS_DEFINE_LEN(FN)                                                                \
    static Py_ssize_t cs_##FN(PyObject *self) {                                          \
        Py_ssize_t r;                                                                    \
        Py_BEGIN_CRITICAL_SECTION(self);                                                 \
        r = FN((void *)self);                                                            \
        Py_END_CRITICAL_SECTION();                                                       \
        return r;                                                                        \
    }
#define CS_DEFINE_ONE(KIND, FN) CS_DEFINE_##KIND(FN)
#define CS_DEFINE_ARG1(FN) CS_DEFINE(ARG1, FN)
#define CS_DEFINE_FAST(FN) CS_DEFINE(FAST, FN)
#define CS_DEFINE_FASTKW(FN) CS_DEFINE(FASTKW, FN)
#define CS_DEFINE_VARKW(FN) CS_DEFINE(VARKW, FN)
#define CS_DEFINE_GET(FN) CS_DEFINE(GET, FN)
#define CS_DEFINE_SETITEM(FN) CS_DEFINE(SETITEM, FN)
#define CS_DEFINE_CONTAINS(FN) CS_DEFINE(CONTAINS, FN)
#define CS_ENTRY(KIND, FN) {(core_fn)FN, (core_fn)cs_##FN},

#define SHOAL_LOCKED_TABLE(NAME, LIST)                                                   \
    LIST(CS_DEFINE_ONE)                                                                  \
    static const core_locked_call NAME[] = {LIST(CS_ENTRY)};
#define SHOAL_LOCKED(NAME) NAME, sizeof NAME / sizeof NAME[0]
#else
#define SHOAL_LOCKED_TABLE(NAME, LIST)
#define SHOAL_LOCKED(NAME) NULL, 0
#endif

/* the shared view methods' locked versions, which every part's table may name */
#ifdef Py_GIL_DISABLED
#define SHOAL_VIEW_CALLS(X) X(ARG1, view_unbind) X(GET, view_is_bound)
#endif

#endif
