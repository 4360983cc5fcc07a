/*
 * shoal._core, the synchronisation types (Mutex, Semaphore, Event, Cond) and Atomic,
 * bound to a block of a shared buffer with _bind(); the Python classes in shoal._sync
 * subclass them, so the hot calls (acquire/release) are C calls with no Python frame in
 * between.  And the module functions: atomics and wait/wake at (buffer, offset), this
 * process's identity and liveness file, shm_open/unlink.
 */
#include "_core_glue.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define BIND_METHOD(NAME, CTYPE)                                                  \
    static PyObject *NAME(ViewObject *self, PyObject *args) {                     \
        if (view_bind(self, args, (Py_ssize_t)sizeof(CTYPE)) < 0)                 \
            return NULL;                                                           \
        Py_RETURN_NONE;                                                            \
    }

/* ---- Mutex (Lock and RLock) ------------------------------------------------------------ */

typedef struct {
    ViewObject v;
    int recursive;
    int report; /* warn the new holder about a dead owner (internal locks do not) */
    shoal_waitlist *list; /* its waiters' tokens, right after the mutex; NULL: none (a
                             mutex embedded in another structure) */
} MutexObject;

#define MUTEX(self) ((shoal_mutex *)((MutexObject *)(self))->v.addr)

static PyObject *mutex_bind(MutexObject *self, PyObject *args) {
    PyObject *buffer;
    Py_ssize_t offset;
    int recursive = 0, report = 1, listed = 0;
    if (!PyArg_ParseTuple(args, "On|ppp", &buffer, &offset, &recursive, &report, &listed))
        return NULL;
    PyObject *pair = Py_BuildValue("(On)", buffer, offset);
    if (!pair)
        return NULL;
    Py_ssize_t size = (Py_ssize_t)(sizeof(shoal_mutex) + (listed ? sizeof(shoal_waitlist) : 0));
    int r = view_bind(&self->v, pair, size);
    Py_DECREF(pair);
    if (r < 0)
        return NULL;
    self->list = listed ? (shoal_waitlist *)(self->v.addr + sizeof(shoal_mutex)) : NULL;
    self->recursive = recursive;
    self->report = report;
    Py_RETURN_NONE;
}

/* ---- waiters that sleep elsewhere (shoal._aio, #14) -----------------------------------
 * _aio_register(side) counts this process in the primitive's waiters exactly as a
 * blocking waiter counts itself (the count, then a waitlist slot with this process's
 * token), and returns (address of the futex word, its value now, slot); the caller then
 * re-checks its condition and sleeps on that word with shoal_wait_many.
 * _aio_unregister((side, slot)) gives both back.  _aio_word(side) reads the word.
 * side is 0 for every primitive but a ring (0 consumers, 1 producers, 2 joiners). */
static PyObject *aio_registered(uint32_t *word, uint32_t value, int slot) {
    return Py_BuildValue("(KIi)", (unsigned long long)(uintptr_t)word, (unsigned)value, slot);
}

static int aio_parse_unregister(PyObject *args, int *side, int *slot) {
    return PyArg_ParseTuple(args, "ii", side, slot) ? 0 : -1;
}

static uint64_t thread_ident(void) { return (uint64_t)PyThread_get_thread_ident(); }

typedef struct {
    int recursive;
    uint64_t token, thread;
    shoal_waitlist *list;
} lock_arg;

static shoal_status call_lock(void *target, void *arg, int64_t timeout_ns) {
    lock_arg *a = arg;
    return a->recursive ? shoal_rmutex_lock_listed(target, a->list, a->token, a->thread, timeout_ns)
                        : shoal_mutex_lock_listed(target, a->list, a->token, timeout_ns);
}

/* After a release: waiters still counted may be dead ones (each would cost every
 * release a wake-up, and show in statistics, for ever).  Rate-limited in native code. */
static void prune_lock_waiters(MutexObject *self) {
    shoal_mutex *m = MUTEX(self);
    if (self->list && shoal_load32(&m->waiters))
        shoal_waitlist_prune_due(self->list, &m->waiters);
}

/* After a successful acquire: tell the new holder if the lock's last owner died.  If a
 * warnings filter makes that an error, hand the lock (and the news) to the next holder. */
static int report_dead_owner(MutexObject *self) {
    shoal_mutex *m = MUTEX(self);
    if (!self->report || !shoal_load32(&m->owner_died))
        return 0;
    uint64_t dead = shoal_load64(&m->dead_owner);
    if (PyErr_WarnFormat(core.OwnerDiedWarning, 1,
                         "%.100s acquired after its owner, process %d, died holding it; the "
                         "data it guards may be inconsistent (owner_died is True until "
                         "release)",
                         Py_TYPE(self)->tp_name, (int)shoal_token_pid(dead & ~SHOAL_MUTEX_HANDOVER)) < 0) {
        shoal_mutex_unlock_keep_died(m);
        return -1;
    }
    return 0;
}

/* acquire with an already parsed timeout; returns 1 acquired, 0 not, -1 error. */
static int mutex_acquire_ns(MutexObject *self, int64_t timeout_ns) {
    if (check_bound(&self->v) < 0)
        return -1;
    shoal_mutex *m = MUTEX(self);
    lock_arg a = {self->recursive, shoal_self_token(), self->recursive ? thread_ident() : 0,
                  self->list};
    shoal_status st = a.recursive ? shoal_rmutex_trylock(m, a.token, a.thread)
                                  : shoal_mutex_trylock(m, a.token);
    if (st == SHOAL_AGAIN) {
        if (timeout_ns == 0)
            st = call_lock(m, &a, 0); /* no wait, but do take it from a dead holder */
        else if (run_sync_wait(call_lock, m, &a, self->v.view.obj, timeout_ns, &st) < 0)
            return -1;
    }
    switch (st) {
    case SHOAL_OK:
    case SHOAL_OWNER_DIED:
        return report_dead_owner(self) < 0 ? -1 : 1;
    case SHOAL_OVERFLOW:
        PyErr_SetString(PyExc_OverflowError, "RLock acquired too many times recursively");
        return -1;
    default:
        return 0;
    }
}

static PyObject *mutex_acquire(MutexObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    int64_t timeout_ns;
    if (parse_block_timeout("acquire", args, nargs, kwnames, &timeout_ns) < 0)
        return NULL;
    int r = mutex_acquire_ns(self, timeout_ns);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *mutex_enter(MutexObject *self, PyObject *Py_UNUSED(ignored)) {
    int r = mutex_acquire_ns(self, -1);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *mutex_release(MutexObject *self, PyObject *Py_UNUSED(ignored)) {
    if (check_bound(&self->v) < 0)
        return NULL;
    shoal_mutex *m = MUTEX(self);
    shoal_status st = self->recursive
                          ? shoal_rmutex_unlock(m, shoal_self_token(), thread_ident())
                          : shoal_mutex_unlock(m);
    if (st == SHOAL_NOT_OWNER) {
        PyErr_SetString(core.NotHeldError, self->recursive
                                          ? "cannot release an RLock this thread does not hold"
                                          : "release of an unlocked Lock");
        return NULL;
    }
    prune_lock_waiters(self);
    Py_RETURN_NONE;
}

static PyObject *mutex_exit(MutexObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)args;
    (void)nargs;
    return mutex_release(self, NULL);
}

static int mutex_held_here(MutexObject *self) {
    shoal_mutex *m = MUTEX(self);
    if (shoal_load64(&m->owner) != shoal_self_token())
        return 0;
    return !self->recursive || shoal_load64(&m->owner_thread) == thread_ident();
}

static PyObject *mutex_is_owned(MutexObject *self, PyObject *Py_UNUSED(ignored)) {
    if (check_bound(&self->v) < 0)
        return NULL;
    return PyBool_FromLong(mutex_held_here(self));
}

/* Condition support: release completely, returning the recursion depth to restore. */
static PyObject *mutex_release_save(MutexObject *self, PyObject *Py_UNUSED(ignored)) {
    if (check_bound(&self->v) < 0)
        return NULL;
    shoal_mutex *m = MUTEX(self);
    uint32_t depth = 1;
    shoal_status st = self->recursive
                          ? shoal_rmutex_release_all(m, shoal_self_token(), thread_ident(), &depth)
                          : (mutex_held_here(self) ? shoal_mutex_unlock(m) : SHOAL_NOT_OWNER);
    if (st == SHOAL_NOT_OWNER) {
        PyErr_SetString(core.NotHeldError, "cannot wait on an un-acquired lock");
        return NULL;
    }
    prune_lock_waiters(self);
    return PyLong_FromUnsignedLong(depth);
}

static PyObject *mutex_acquire_restore(MutexObject *self, PyObject *arg) {
    unsigned long depth = PyLong_AsUnsignedLong(arg);
    if (depth == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    int r = mutex_acquire_ns(self, -1);
    if (r < 0)
        return NULL;
    if (self->recursive && depth > 0)
        MUTEX(self)->depth = (uint32_t)depth;
    Py_RETURN_NONE;
}

/* Ray backend: release a Lock this process holds for a holder that died on another
 * node, so that the next acquirer gets owner_died (`dead`: a token naming it). */
static PyObject *mutex_release_dead(MutexObject *self, PyObject *arg) {
    uint64_t dead = PyLong_AsUnsignedLongLong(arg);
    if (dead == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    if (check_bound(&self->v) < 0)
        return NULL;
    if (self->recursive || !mutex_held_here(self) ||
        shoal_mutex_unlock_dead(MUTEX(self), dead) != SHOAL_OK) {
        PyErr_SetString(core.NotHeldError, "release of a Lock this process does not hold");
        return NULL;
    }
    prune_lock_waiters(self);
    Py_RETURN_NONE;
}

static PyObject *mutex_get_owner(MutexObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLongLong(shoal_load64(&MUTEX(self)->owner));
}
static PyObject *mutex_get_dead_owner(MutexObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLongLong(shoal_load64(&MUTEX(self)->dead_owner));
}
static PyObject *mutex_get_waiters(MutexObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    uint32_t n = shoal_load32(&MUTEX(self)->waiters);
    return PyLong_FromUnsignedLong(self->list ? shoal_waitlist_live(self->list, n) : n);
}
static PyObject *mutex_get_depth(MutexObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_load64(&MUTEX(self)->owner) ? MUTEX(self)->depth : 0);
}
static PyObject *mutex_get_owner_died(MutexObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    return PyBool_FromLong(shoal_load32(&MUTEX(self)->owner_died) && mutex_held_here(self));
}

static PyObject *mutex_aio_register(MutexObject *self, PyObject *side) {
    (void)side;
    BOUND_OR_NULL(self);
    shoal_mutex *m = MUTEX(self);
    int slot = shoal_waiter_join(&m->waiters, self->list);
    return aio_registered(&m->seq, shoal_load32(&m->seq), slot);
}

static PyObject *mutex_aio_unregister(MutexObject *self, PyObject *args) {
    int side, slot;
    if (aio_parse_unregister(args, &side, &slot) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    shoal_waiter_leave(&MUTEX(self)->waiters, self->list, slot);
    Py_RETURN_NONE;
}

static PyObject *mutex_aio_word(MutexObject *self, PyObject *side) {
    (void)side;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_load32(&MUTEX(self)->seq));
}

static PyMethodDef mutex_methods[] = {
    {"_bind", (PyCFunction)mutex_bind, METH_VARARGS,
     "_bind(buffer, offset, recursive=False, report=True, listed=False): attach to a "
     "shoal_mutex (listed: a shoal_waitlist follows it, as in a Lock's payload)."},
    {"_unbind", (PyCFunction)view_unbind, METH_NOARGS, "Detach from shared memory."},
    {"acquire", (PyCFunction)(void (*)(void))mutex_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None) -> bool"},
    {"release", (PyCFunction)mutex_release, METH_NOARGS, "release()"},
    {"__enter__", (PyCFunction)mutex_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))mutex_exit, METH_FASTCALL, NULL},
    {"_is_owned", (PyCFunction)mutex_is_owned, METH_NOARGS,
     "True if held by this process (and, for an RLock, this thread)."},
    {"_release_save", (PyCFunction)mutex_release_save, METH_NOARGS, NULL},
    {"_aio_register", (PyCFunction)mutex_aio_register, METH_O, "_aio_register(side) -> (address, value, slot)"},
    {"_aio_unregister", (PyCFunction)mutex_aio_unregister, METH_VARARGS, "_aio_unregister(side, slot)"},
    {"_aio_word", (PyCFunction)mutex_aio_word, METH_O, "_aio_word(side) -> the futex word's value"},
    {"_acquire_restore", (PyCFunction)mutex_acquire_restore, METH_O, NULL},
    {"_release_dead", (PyCFunction)mutex_release_dead, METH_O, NULL},
    {NULL},
};

static PyGetSetDef mutex_getset[] = {
    {"_bound", (getter)view_is_bound, NULL, NULL, NULL},
    {"_owner_token", (getter)mutex_get_owner, NULL, "token of the holder, 0 if free", NULL},
    {"_dead_owner_token", (getter)mutex_get_dead_owner, NULL, NULL, NULL},
    {"_waiters", (getter)mutex_get_waiters, NULL, NULL, NULL},
    {"_depth", (getter)mutex_get_depth, NULL, NULL, NULL},
    {"owner_died", (getter)mutex_get_owner_died, NULL,
     "True while the caller holds this lock and got it from an owner that died "
     "holding it. Cleared by release().",
     NULL},
    {NULL},
};

static PyTypeObject MutexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._core.Mutex",
    .tp_basicsize = sizeof(MutexObject),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A process-shared mutex with dead-owner recovery, bound with _bind().",
    .tp_methods = mutex_methods,
    .tp_getset = mutex_getset,
    .tp_new = PyType_GenericNew,
};

/* ---- Semaphore ---------------------------------------------------------------------- */

#define SEM(self) ((shoal_semaphore *)((ViewObject *)(self))->addr)
BIND_METHOD(sem_bind, shoal_semaphore)

static shoal_status call_sem(void *target, void *arg, int64_t timeout_ns) {
    (void)arg;
    return shoal_sem_acquire(target, timeout_ns);
}

static PyObject *sem_init(ViewObject *self, PyObject *args) {
    unsigned int value, maxvalue;
    int bounded;
    if (!PyArg_ParseTuple(args, "IIp", &value, &maxvalue, &bounded))
        return NULL;
    BOUND_OR_NULL(self);
    SEM(self)->maxvalue = maxvalue;
    SEM(self)->bounded = (uint32_t)bounded;
    SEM(self)->value = value;
    Py_RETURN_NONE;
}

static PyObject *sem_acquire(ViewObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    int64_t timeout_ns;
    if (parse_block_timeout("acquire", args, nargs, kwnames, &timeout_ns) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    shoal_status st = shoal_sem_acquire(SEM(self), 0);
    if (st == SHOAL_AGAIN && timeout_ns != 0 &&
        run_sync_wait(call_sem, SEM(self), NULL, self->view.obj, timeout_ns, &st) < 0)
        return NULL;
    return PyBool_FromLong(st == SHOAL_OK);
}

static PyObject *sem_enter(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    return sem_acquire(self, NULL, 0, NULL);
}

static PyObject *sem_release(ViewObject *self, PyObject *args) {
    /* "n" (checked) rather than "I", which wraps: release(-1) would add 2**32 - 1 */
    Py_ssize_t n = 1;
    if (!PyArg_ParseTuple(args, "|n:release", &n))
        return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n must be one or more"); /* as threading's */
        return NULL;
    }
    BOUND_OR_NULL(self);
    if ((uint64_t)n > UINT32_MAX || shoal_sem_release(SEM(self), (uint32_t)n) == SHOAL_OVERFLOW) {
        if (SEM(self)->bounded)
            PyErr_SetString(core.NotHeldError, "semaphore or lock released too many times");
        else
            PyErr_SetString(PyExc_OverflowError, "semaphore value would pass 2**32 - 1");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *sem_exit(ViewObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)args;
    (void)nargs;
    PyObject *no_args = PyTuple_New(0);
    if (!no_args)
        return NULL;
    PyObject *r = sem_release(self, no_args);
    Py_DECREF(no_args);
    return r;
}

static PyObject *sem_max_value(ViewObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    if (!SEM(self)->bounded)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(SEM(self)->maxvalue);
}

static PyObject *sem_get_value(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_load32(&SEM(self)->value));
}

static PyObject *sem_waiters(ViewObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(
        shoal_waitlist_live(&SEM(self)->list, shoal_load32(&SEM(self)->waiters)));
}

static PyObject *sem_aio_register(ViewObject *self, PyObject *side) {
    (void)side;
    BOUND_OR_NULL(self);
    shoal_semaphore *sm = SEM(self);
    int slot = shoal_waiter_join(&sm->waiters, &sm->list);
    return aio_registered(&sm->value, 0, slot); /* sleeps while the value is 0 */
}

static PyObject *sem_aio_unregister(ViewObject *self, PyObject *args) {
    int side, slot;
    if (aio_parse_unregister(args, &side, &slot) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    shoal_waiter_leave(&SEM(self)->waiters, &SEM(self)->list, slot);
    Py_RETURN_NONE;
}

static PyObject *sem_aio_word(ViewObject *self, PyObject *side) {
    (void)side;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_load32(&SEM(self)->value) ? 1 : 0);
}

static PyMethodDef sem_methods[] = {
    {"_bind", (PyCFunction)sem_bind, METH_VARARGS, "_bind(buffer, offset)"},
    {"_unbind", (PyCFunction)view_unbind, METH_NOARGS, NULL},
    {"_init", (PyCFunction)sem_init, METH_VARARGS, "_init(value, maxvalue, bounded)"},
    {"acquire", (PyCFunction)(void (*)(void))sem_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None) -> bool"},
    {"release", (PyCFunction)sem_release, METH_VARARGS, "release(n=1)"},
    {"__enter__", (PyCFunction)sem_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))sem_exit, METH_FASTCALL, NULL},
    {"get_value", (PyCFunction)sem_get_value, METH_NOARGS, "The current count."},
    {"_aio_register", (PyCFunction)sem_aio_register, METH_O, "_aio_register(side) -> (address, value, slot)"},
    {"_aio_unregister", (PyCFunction)sem_aio_unregister, METH_VARARGS, "_aio_unregister(side, slot)"},
    {"_aio_word", (PyCFunction)sem_aio_word, METH_O, "_aio_word(side) -> 0 while nothing to take"},
    {NULL},
};

static PyGetSetDef sem_getset[] = {
    {"_bound", (getter)view_is_bound, NULL, NULL, NULL},
    {"_waiters", (getter)sem_waiters, NULL, NULL, NULL},
    {"_max_value", (getter)sem_max_value, NULL, "the bound, or None", NULL},
    {NULL},
};

static PyTypeObject SemaphoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._core.Semaphore",
    .tp_basicsize = sizeof(ViewObject),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A process-shared counting semaphore, bound with _bind().",
    .tp_methods = sem_methods,
    .tp_getset = sem_getset,
    .tp_new = PyType_GenericNew,
};

/* ---- Event --------------------------------------------------------------------------- */

#define EVENT(self) ((shoal_event *)((ViewObject *)(self))->addr)
BIND_METHOD(event_bind, shoal_event)

static shoal_status call_event(void *target, void *arg, int64_t timeout_ns) {
    (void)arg;
    return shoal_event_wait(target, timeout_ns);
}

static PyObject *event_wait(ViewObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    int64_t timeout_ns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait", kwlist, &timeout) ||
        parse_timeout(timeout, &timeout_ns) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    shoal_status st = shoal_event_wait(EVENT(self), 0);
    if (st != SHOAL_OK && timeout_ns != 0 &&
        run_sync_wait(call_event, EVENT(self), NULL, self->view.obj, timeout_ns, &st) < 0)
        return NULL;
    return PyBool_FromLong(st == SHOAL_OK);
}

static PyObject *event_set(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    shoal_event_set(EVENT(self));
    Py_RETURN_NONE;
}

static PyObject *event_clear(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    shoal_event_clear(EVENT(self));
    Py_RETURN_NONE;
}

static PyObject *event_is_set(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    return PyBool_FromLong(shoal_load32(&EVENT(self)->flag) != 0);
}

static PyObject *event_waiters(ViewObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(
        shoal_waitlist_live(&EVENT(self)->list, shoal_load32(&EVENT(self)->waiters)));
}

static PyObject *event_aio_register(ViewObject *self, PyObject *side) {
    (void)side;
    BOUND_OR_NULL(self);
    shoal_event *e = EVENT(self);
    int slot = shoal_waiter_join(&e->waiters, &e->list);
    return aio_registered(&e->flag, 0, slot); /* sleeps while the flag is 0 */
}

static PyObject *event_aio_unregister(ViewObject *self, PyObject *args) {
    int side, slot;
    if (aio_parse_unregister(args, &side, &slot) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    shoal_waiter_leave(&EVENT(self)->waiters, &EVENT(self)->list, slot);
    Py_RETURN_NONE;
}

static PyObject *event_aio_word(ViewObject *self, PyObject *side) {
    (void)side;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_load32(&EVENT(self)->flag) ? 1 : 0);
}

static PyMethodDef event_methods[] = {
    {"_bind", (PyCFunction)event_bind, METH_VARARGS, "_bind(buffer, offset)"},
    {"_unbind", (PyCFunction)view_unbind, METH_NOARGS, NULL},
    {"wait", (PyCFunction)(void (*)(void))event_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None) -> bool: True once the flag is set, False on timeout."},
    {"set", (PyCFunction)event_set, METH_NOARGS, "Set the flag and wake every waiter."},
    {"clear", (PyCFunction)event_clear, METH_NOARGS, "Reset the flag."},
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS, "True if the flag is set."},
    {"_aio_register", (PyCFunction)event_aio_register, METH_O, "_aio_register(side) -> (address, value, slot)"},
    {"_aio_unregister", (PyCFunction)event_aio_unregister, METH_VARARGS, "_aio_unregister(side, slot)"},
    {"_aio_word", (PyCFunction)event_aio_word, METH_O, "_aio_word(side) -> 1 once set"},
    {NULL},
};

static PyGetSetDef event_getset[] = {
    {"_bound", (getter)view_is_bound, NULL, NULL, NULL},
    {"_waiters", (getter)event_waiters, NULL, NULL, NULL},
    {NULL},
};

static PyTypeObject EventType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._core.Event",
    .tp_basicsize = sizeof(ViewObject),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A process-shared event flag, bound with _bind().",
    .tp_methods = event_methods,
    .tp_getset = event_getset,
    .tp_new = PyType_GenericNew,
};

/* ---- Cond ---------------------------------------------------------------------------- */

#define COND(self) ((shoal_cond *)((ViewObject *)(self))->addr)
BIND_METHOD(cond_bind, shoal_cond)

static shoal_status call_cond(void *target, void *arg, int64_t timeout_ns) {
    (void)arg;
    return shoal_cond_wait(target, timeout_ns);
}

static PyObject *cond_enter(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    shoal_cond_enter(COND(self));
    Py_RETURN_NONE;
}

static PyObject *cond_wait(ViewObject *self, PyObject *arg) {
    int64_t timeout_ns;
    if (parse_timeout(arg, &timeout_ns) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    shoal_status st;
    if (run_sync_wait(call_cond, COND(self), NULL, self->view.obj, timeout_ns, &st) < 0)
        return NULL;
    return PyBool_FromLong(st == SHOAL_OK);
}

static PyObject *cond_leave(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    return PyBool_FromLong(shoal_cond_leave(COND(self)) == SHOAL_OK);
}

static PyObject *cond_notify(ViewObject *self, PyObject *arg) {
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_cond_notify(COND(self), n));
}

static PyObject *cond_waiting(ViewObject *self, void *c) {
    (void)c;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_cond_waiting_live(COND(self)));
}

/* For coroutines (shoal._aio): the generation handle travels in Python, not in a
 * per-thread slot, since many coroutines of one thread wait at once.  The futex word
 * is seq; nothing is counted per process (each waiter is counted in its generation). */
static PyObject *cond_aio_enter(ViewObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    uint32_t handle;
    shoal_status st = shoal_cond_enter_gen(COND(self), &handle);
    if (st != SHOAL_OK)
        return core_raise(st, st == SHOAL_OVERFLOW ? "too many waiters on this Condition"
                                                   : "this Condition's memory is corrupt");
    return PyLong_FromUnsignedLong(handle);
}

static PyObject *cond_aio_collect(ViewObject *self, PyObject *arg) {
    unsigned long handle = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    BOUND_OR_NULL(self);
    shoal_status st = shoal_cond_wait_gen(COND(self), (uint32_t)handle, 0);
    if (st == SHOAL_BAD_LAYOUT)
        return core_raise(st, "this Condition's memory is corrupt");
    return PyBool_FromLong(st == SHOAL_OK);
}

static PyObject *cond_aio_leave(ViewObject *self, PyObject *arg) {
    unsigned long handle = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    BOUND_OR_NULL(self);
    return PyBool_FromLong(shoal_cond_leave_gen(COND(self), (uint32_t)handle) == SHOAL_OK);
}

static PyObject *cond_aio_register(ViewObject *self, PyObject *side) {
    (void)side;
    BOUND_OR_NULL(self);
    return aio_registered(&COND(self)->seq, shoal_load32(&COND(self)->seq), -1);
}

static PyObject *cond_aio_unregister(ViewObject *self, PyObject *args) {
    (void)self;
    int side, slot;
    if (aio_parse_unregister(args, &side, &slot) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *cond_aio_word(ViewObject *self, PyObject *side) {
    (void)side;
    BOUND_OR_NULL(self);
    return PyLong_FromUnsignedLong(shoal_load32(&COND(self)->seq));
}

static PyMethodDef cond_methods[] = {
    {"_bind", (PyCFunction)cond_bind, METH_VARARGS, "_bind(buffer, offset)"},
    {"_unbind", (PyCFunction)view_unbind, METH_NOARGS, NULL},
    {"_enter", (PyCFunction)cond_enter, METH_NOARGS, "Register as a waiter (lock held)."},
    {"_wait", (PyCFunction)cond_wait, METH_O, "_wait(timeout) -> bool: True if notified."},
    {"_leave", (PyCFunction)cond_leave, METH_NOARGS,
     "After a timed-out _wait, lock held: True if a notify arrived meanwhile."},
    {"_notify", (PyCFunction)cond_notify, METH_O, "_notify(n) -> int; n < 0 wakes all."},
    {"_aio_enter", (PyCFunction)cond_aio_enter, METH_NOARGS, "_aio_enter() -> handle (lock held)"},
    {"_aio_collect", (PyCFunction)cond_aio_collect, METH_O, "_aio_collect(handle) -> notified"},
    {"_aio_leave", (PyCFunction)cond_aio_leave, METH_O,
     "_aio_leave(handle) -> notified after all (lock held)"},
    {"_aio_register", (PyCFunction)cond_aio_register, METH_O, "_aio_register(side) -> (address, value, -1)"},
    {"_aio_unregister", (PyCFunction)cond_aio_unregister, METH_VARARGS, "nothing to give back"},
    {"_aio_word", (PyCFunction)cond_aio_word, METH_O, "_aio_word(side) -> seq"},
    {NULL},
};

static PyGetSetDef cond_getset[] = {
    {"_bound", (getter)view_is_bound, NULL, NULL, NULL},
    {"_waiting", (getter)cond_waiting, NULL, "waiters not yet notified", NULL},
    {NULL},
};

static PyTypeObject CondType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._core.Cond",
    .tp_basicsize = sizeof(ViewObject),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A process-shared condition variable (the lock is separate), bound with _bind().",
    .tp_methods = cond_methods,
    .tp_getset = cond_getset,
    .tp_new = PyType_GenericNew,
};

/* ---- Atomic: one 4- or 8-byte integer, bound once (Value.add and friends) ---------------
 * Value/Array's atomics as C methods on a bound pointer: no buffer lookup and no
 * Python frame per call, which is most of the cost of an uncontended atomic add. */

typedef struct {
    ViewObject v;
    int width;     /* 4 or 8 bytes */
    int is_signed; /* the typecode's signedness: how results convert back to int */
} AtomicObject;

static PyObject *atomic_bind(AtomicObject *self, PyObject *args) {
    PyObject *buffer;
    Py_ssize_t offset;
    int width, is_signed;
    if (!PyArg_ParseTuple(args, "Onip", &buffer, &offset, &width, &is_signed))
        return NULL;
    if (width != 4 && width != 8) {
        PyErr_Format(PyExc_ValueError, "atomics need a 4- or 8-byte integer, not %d bytes", width);
        return NULL;
    }
    PyObject *pair = Py_BuildValue("(On)", buffer, offset);
    if (!pair)
        return NULL;
    int r = view_bind(&self->v, pair, width);
    Py_DECREF(pair);
    if (r < 0)
        return NULL;
    if (((uintptr_t)self->v.addr) % (uintptr_t)width) {
        view_unbind(&self->v, NULL);
        PyErr_SetString(PyExc_ValueError, "an atomic integer must be aligned to its size");
        return NULL;
    }
    self->width = width;
    self->is_signed = is_signed;
    Py_RETURN_NONE;
}

/* Any Python int, wrapped to the integer's width (as C arithmetic and ctypes do). */
static int atomic_arg(PyObject *obj, uint64_t *out) {
    PyObject *index = PyNumber_Index(obj); /* int, numpy integers, anything with __index__ */
    if (!index)
        return -1;
    *out = PyLong_AsUnsignedLongLongMask(index);
    Py_DECREF(index);
    return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *atomic_result(AtomicObject *self, uint64_t raw) {
    if (self->width == 4)
        return self->is_signed ? PyLong_FromLong((int32_t)(uint32_t)raw)
                               : PyLong_FromUnsignedLong((uint32_t)raw);
    return self->is_signed ? PyLong_FromLongLong((int64_t)raw) : PyLong_FromUnsignedLongLong(raw);
}

/* fetch_add on the bound integer; returns the old value (raw bits). */
static uint64_t atomic_fetch_add_raw(AtomicObject *self, uint64_t delta) {
    if (self->width == 4)
        return __atomic_fetch_add((uint32_t *)self->v.addr, (uint32_t)delta, __ATOMIC_SEQ_CST);
    return __atomic_fetch_add((uint64_t *)self->v.addr, delta, __ATOMIC_SEQ_CST);
}

static PyObject *atomic_add_common(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
                                   int return_new) {
    uint64_t delta = 1;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (nargs == 1 && atomic_arg(args[0], &delta) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    uint64_t old = atomic_fetch_add_raw(self, delta);
    return atomic_result(self, return_new ? old + delta : old);
}

static PyObject *atomic_add(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return atomic_add_common(self, args, nargs, 1);
}

static PyObject *atomic_fetch_add(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return atomic_add_common(self, args, nargs, 0);
}

static PyObject *atomic_compare_exchange(AtomicObject *self, PyObject *const *args,
                                         Py_ssize_t nargs) {
    uint64_t expected, desired;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "compare_exchange() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (atomic_arg(args[0], &expected) < 0 || atomic_arg(args[1], &desired) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    int swapped;
    if (self->width == 4) {
        uint32_t e = (uint32_t)expected;
        swapped = __atomic_compare_exchange_n((uint32_t *)self->v.addr, &e, (uint32_t)desired, 0,
                                              __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    } else {
        swapped = __atomic_compare_exchange_n((uint64_t *)self->v.addr, &expected, desired, 0,
                                              __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    return PyBool_FromLong(swapped);
}

static PyObject *atomic_load(AtomicObject *self, PyObject *Py_UNUSED(ignored)) {
    BOUND_OR_NULL(self);
    uint64_t raw = self->width == 4
                       ? __atomic_load_n((uint32_t *)self->v.addr, __ATOMIC_SEQ_CST)
                       : __atomic_load_n((uint64_t *)self->v.addr, __ATOMIC_SEQ_CST);
    return atomic_result(self, raw);
}

static PyObject *atomic_store(AtomicObject *self, PyObject *arg) {
    uint64_t value;
    if (atomic_arg(arg, &value) < 0)
        return NULL;
    BOUND_OR_NULL(self);
    if (self->width == 4)
        __atomic_store_n((uint32_t *)self->v.addr, (uint32_t)value, __ATOMIC_SEQ_CST);
    else
        __atomic_store_n((uint64_t *)self->v.addr, value, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyMethodDef atomic_methods[] = {
    {"_bind", (PyCFunction)atomic_bind, METH_VARARGS,
     "_bind(buffer, offset, width, signed): attach to a 4- or 8-byte integer."},
    {"_unbind", (PyCFunction)view_unbind, METH_NOARGS, NULL},
    {"add", (PyCFunction)(void (*)(void))atomic_add, METH_FASTCALL,
     "add(delta=1) -> the new value, atomically (wraps at the integer's width)."},
    {"fetch_add", (PyCFunction)(void (*)(void))atomic_fetch_add, METH_FASTCALL,
     "fetch_add(delta=1) -> the old value, atomically."},
    {"compare_exchange", (PyCFunction)(void (*)(void))atomic_compare_exchange, METH_FASTCALL,
     "compare_exchange(expected, desired) -> bool: store desired if the value is expected."},
    {"load", (PyCFunction)atomic_load, METH_NOARGS, "The value, read atomically."},
    {"store", (PyCFunction)atomic_store, METH_O, "store(value): write atomically."},
    {NULL},
};

static PyGetSetDef atomic_getset[] = {
    {"_bound", (getter)view_is_bound, NULL, NULL, NULL},
    {NULL},
};

static PyTypeObject AtomicType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._core.Atomic",
    .tp_basicsize = sizeof(AtomicObject),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "One shared 4- or 8-byte integer with atomic operations, bound with _bind().",
    .tp_methods = atomic_methods,
    .tp_getset = atomic_getset,
    .tp_new = PyType_GenericNew,
};

/* ---- module functions: atomics and wait/wake at (buffer, offset) ------------------------ */

/* Borrow a pointer for the duration of one call. */
static void *borrow(PyObject *buffer, Py_ssize_t offset, Py_ssize_t size, Py_buffer *view) {
    if (PyObject_GetBuffer(buffer, view, PyBUF_WRITABLE) < 0)
        return NULL;
    void *addr = get_addr(view, offset, size);
    if (!addr)
        PyBuffer_Release(view);
    return addr;
}

static PyObject *core_load64(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "On:load64", &buffer, &off))
        return NULL;
    uint64_t *p = borrow(buffer, off, 8, &view);
    if (!p)
        return NULL;
    uint64_t v = shoal_load64(p);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *core_store64(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    unsigned long long value;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnK:store64", &buffer, &off, &value))
        return NULL;
    uint64_t *p = borrow(buffer, off, 8, &view);
    if (!p)
        return NULL;
    shoal_store64(p, value);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *core_fetch_add64(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    long long delta;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnL:fetch_add64", &buffer, &off, &delta))
        return NULL;
    uint64_t *p = borrow(buffer, off, 8, &view);
    if (!p)
        return NULL;
    uint64_t old = shoal_fetch_add64(p, (uint64_t)delta);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *core_cas64(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    unsigned long long expected, desired;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnKK:cas64", &buffer, &off, &expected, &desired))
        return NULL;
    uint64_t *p = borrow(buffer, off, 8, &view);
    if (!p)
        return NULL;
    uint64_t seen = expected;
    int ok = shoal_cas64(p, &seen, desired);
    PyBuffer_Release(&view);
    return Py_BuildValue("(OK)", ok ? Py_True : Py_False, (unsigned long long)seen);
}

static PyObject *core_load32(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "On:load32", &buffer, &off))
        return NULL;
    uint32_t *p = borrow(buffer, off, 4, &view);
    if (!p)
        return NULL;
    uint32_t v = shoal_load32(p);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(v);
}

/* 32-bit atomics for Value/Array elements (#4).  An int32 or float32 array's elements
 * are 4-byte aligned only, so these check 4-byte alignment where borrow() checks 8.  The
 * native API has no 32-bit add or store yet, hence the __atomic builtins here (the same
 * sequentially consistent builtins native/src/atomic_internal.h wraps; lock-free on
 * every platform shoal builds for, so safe on memory shared between processes). */
static uint32_t *borrow32(PyObject *buffer, Py_ssize_t offset, Py_buffer *view) {
    if (PyObject_GetBuffer(buffer, view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (offset < 0 || view->len < 4 || offset > view->len - 4) {
        PyErr_Format(PyExc_ValueError, "offset %zd + size 4 is outside the buffer of %zd bytes",
                     offset, view->len);
        PyBuffer_Release(view);
        return NULL;
    }
    char *addr = (char *)view->buf + offset;
    if (((uintptr_t)addr) % 4 != 0) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not 4-byte aligned in the mapping", offset);
        PyBuffer_Release(view);
        return NULL;
    }
    return (uint32_t *)addr;
}

static PyObject *core_store32(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    unsigned int value; /* "I": masked to 32 bits, like store64's "K" */
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnI:store32", &buffer, &off, &value))
        return NULL;
    uint32_t *p = borrow32(buffer, off, &view);
    if (!p)
        return NULL;
    __atomic_store_n(p, (uint32_t)value, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *core_fetch_add32(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    int delta; /* checked signed, like fetch_add64's "L"; wraps modulo 2**32 */
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "Oni:fetch_add32", &buffer, &off, &delta))
        return NULL;
    uint32_t *p = borrow32(buffer, off, &view);
    if (!p)
        return NULL;
    uint32_t old = __atomic_fetch_add(p, (uint32_t)delta, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(old);
}

static PyObject *core_cas32(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    unsigned int expected, desired; /* masked to 32 bits, like cas64's "K" */
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnII:cas32", &buffer, &off, &expected, &desired))
        return NULL;
    uint32_t *p = borrow32(buffer, off, &view);
    if (!p)
        return NULL;
    uint32_t seen = expected;
    int ok = __atomic_compare_exchange_n(p, &seen, (uint32_t)desired, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST);
    PyBuffer_Release(&view);
    return Py_BuildValue("(Ok)", ok ? Py_True : Py_False, (unsigned long)seen);
}

static shoal_status call_wait32(void *target, void *arg, int64_t timeout_ns) {
    return shoal_wait32(target, *(uint32_t *)arg, timeout_ns);
}

static PyObject *core_wait32(PyObject *m, PyObject *args, PyObject *kwargs) {
    (void)m;
    static char *kwlist[] = {"buffer", "offset", "expected", "timeout", NULL};
    PyObject *buffer, *timeout = Py_None;
    Py_ssize_t off;
    unsigned int expected;
    int64_t timeout_ns;
    Py_buffer view;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnI|O:wait32", kwlist, &buffer, &off,
                                     &expected, &timeout) ||
        parse_timeout(timeout, &timeout_ns) < 0)
        return NULL;
    uint32_t *p = borrow(buffer, off, 4, &view);
    if (!p)
        return NULL;
    shoal_status st;
    int r = run_blocking(call_wait32, p, &expected, NULL, timeout_ns, &st);
    PyBuffer_Release(&view);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(st == SHOAL_OK);
}

static PyObject *core_wake32(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    int n = -1;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "On|i:wake32", &buffer, &off, &n))
        return NULL;
    uint32_t *p = borrow(buffer, off, 4, &view);
    if (!p)
        return NULL;
    int woken = shoal_wake32(p, n);
    PyBuffer_Release(&view);
    return PyLong_FromLong(woken);
}

/* wait_many(addresses, expected, timeout) -> index woken, -1 (re-check: a word differed
 * or a signal came), -2 timeout, -3 unsupported here.  Addresses are futex words that
 * _aio_register returned (or address_of): the caller keeps their memory mapped. */
static PyObject *core_wait_many(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *addr_list, *exp_list, *timeout = Py_None;
    int64_t timeout_ns;
    if (!PyArg_ParseTuple(args, "OO|O:wait_many", &addr_list, &exp_list, &timeout) ||
        parse_timeout(timeout, &timeout_ns) < 0)
        return NULL;
    PyObject *a = PySequence_Fast(addr_list, "addresses must be a sequence");
    if (!a)
        return NULL;
    PyObject *e = PySequence_Fast(exp_list, "expected values must be a sequence");
    if (!e) {
        Py_DECREF(a);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(a);
    uint32_t *addrs[SHOAL_WAIT_MANY_MAX];
    uint32_t expected[SHOAL_WAIT_MANY_MAX];
    if (n < 1 || n > SHOAL_WAIT_MANY_MAX || PySequence_Fast_GET_SIZE(e) != n) {
        PyErr_Format(PyExc_ValueError, "wait_many needs 1 to %d words and as many values",
                     SHOAL_WAIT_MANY_MAX);
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long ad = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(a, i));
        unsigned long ex = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(e, i));
        if (PyErr_Occurred())
            goto fail;
        if (ad == 0 || (ad & 3u) || ex > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "a futex word is a non-null aligned address and a u32");
            goto fail;
        }
        addrs[i] = (uint32_t *)(uintptr_t)ad;
        expected[i] = (uint32_t)ex;
    }
    Py_DECREF(a);
    Py_DECREF(e);
    shoal_status st = SHOAL_OK;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = shoal_wait_many(addrs, expected, (int)n, timeout_ns, &st);
    Py_END_ALLOW_THREADS
    if (r >= 0)
        return PyLong_FromLong(r);
    return PyLong_FromLong(st == SHOAL_TIMEOUT ? -2 : st == SHOAL_AGAIN ? -3 : -1);
fail:
    Py_DECREF(a);
    Py_DECREF(e);
    return NULL;
}

/* wait_address(address, expected, timeout) -> False on timeout: shoal_wait32 on a word
 * _aio_register returned, GIL released (the hub's fallback: one thread per word). */
static PyObject *core_wait_address(PyObject *m, PyObject *args) {
    (void)m;
    unsigned long long ad;
    unsigned int expected;
    PyObject *timeout = Py_None;
    int64_t timeout_ns;
    if (!PyArg_ParseTuple(args, "KI|O:wait_address", &ad, &expected, &timeout) ||
        parse_timeout(timeout, &timeout_ns) < 0)
        return NULL;
    if (ad == 0 || (ad & 3u)) {
        PyErr_SetString(PyExc_ValueError, "a futex word is a non-null aligned address");
        return NULL;
    }
    shoal_status st;
    Py_BEGIN_ALLOW_THREADS
    st = shoal_wait32((uint32_t *)(uintptr_t)ad, expected, timeout_ns);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(st != SHOAL_TIMEOUT);
}

/* address_of(buffer, offset) -> the address of the aligned u32 at offset (for words the
 * caller keeps mapped, such as the hub's own). */
static PyObject *core_address_of(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *buffer;
    Py_ssize_t off;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "On:address_of", &buffer, &off))
        return NULL;
    uint32_t *p = borrow(buffer, off, 4, &view);
    if (!p)
        return NULL;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)p);
}

static PyObject *core_self_token(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    (void)m;
    return PyLong_FromUnsignedLongLong(shoal_self_token());
}

static PyObject *core_token_alive(PyObject *m, PyObject *arg) {
    (void)m;
    unsigned long long token = PyLong_AsUnsignedLongLong(arg);
    if (token == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    int alive;
    Py_BEGIN_ALLOW_THREADS
    alive = shoal_token_alive(token);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(alive);
}

static PyObject *core_liveness_probe(PyObject *m, PyObject *arg) {
    (void)m;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    int state;
    Py_BEGIN_ALLOW_THREADS
    state = shoal_liveness_probe(name);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(state);
}

static PyObject *core_liveness_name(PyObject *m, PyObject *arg) {
    (void)m;
    unsigned long long token = PyLong_AsUnsignedLongLong(arg);
    if (token == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    char name[SHOAL_LIVENESS_PATH_MAX];
    if (shoal_liveness_name(token, name, sizeof name) < 0)
        return PyErr_Format(PyExc_ValueError, "no liveness file name for %llx", token);
    return PyUnicode_FromString(name);
}

static PyObject *core_liveness_remove(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    (void)m;
    shoal_liveness_remove();
    Py_RETURN_NONE;
}

static PyObject *core_token_pid(PyObject *m, PyObject *arg) {
    (void)m;
    unsigned long long token = PyLong_AsUnsignedLongLong(arg);
    if (token == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLong(shoal_token_pid(token));
}

static PyObject *core_shm_open(PyObject *m, PyObject *args) {
    (void)m;
    const char *name;
    int flags, mode = 0600;
    if (!PyArg_ParseTuple(args, "si|i:shm_open", &name, &flags, &mode))
        return NULL;
    int fd;
    do {
        Py_BEGIN_ALLOW_THREADS
        fd = shm_open(name, flags | O_CLOEXEC, (mode_t)mode);
        Py_END_ALLOW_THREADS
    } while (fd < 0 && errno == EINTR && PyErr_CheckSignals() == 0);
    if (fd < 0)
        return PyErr_Occurred() ? NULL : PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    return PyLong_FromLong(fd);
}

static PyObject *core_shm_unlink(PyObject *m, PyObject *args) {
    (void)m;
    const char *name;
    if (!PyArg_ParseTuple(args, "s:shm_unlink", &name))
        return NULL;
    if (shm_unlink(name) < 0)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    Py_RETURN_NONE;
}

/* link_fd(fd, path): give the unnamed file open as fd (O_TMPFILE) the name path.
 * linkat(AT_EMPTY_PATH) where the kernel lets this caller (Linux 6.10 on, or with
 * CAP_DAC_READ_SEARCH), else through /proc/self/fd; OSError when neither works. */
static PyObject *core_link_fd(PyObject *m, PyObject *args) {
    (void)m;
    int fd;
    const char *path;
    if (!PyArg_ParseTuple(args, "is:link_fd", &fd, &path))
        return NULL;
#if defined(__linux__) && defined(AT_EMPTY_PATH)
    if (linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) == 0)
        Py_RETURN_NONE;
    if (errno == EEXIST)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0)
        Py_RETURN_NONE;
#else
    (void)fd;
    errno = ENOSYS;
#endif
    return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
}

static PyMethodDef sync_functions[] = {
    {"load64", core_load64, METH_VARARGS, "load64(buffer, offset) -> int"},
    {"store64", core_store64, METH_VARARGS, "store64(buffer, offset, value)"},
    {"fetch_add64", core_fetch_add64, METH_VARARGS,
     "fetch_add64(buffer, offset, delta) -> old value (delta may be negative)"},
    {"cas64", core_cas64, METH_VARARGS,
     "cas64(buffer, offset, expected, desired) -> (swapped, value seen)"},
    {"load32", core_load32, METH_VARARGS, "load32(buffer, offset) -> int"},
    {"store32", core_store32, METH_VARARGS,
     "store32(buffer, offset, value): 4-byte aligned; value masked to 32 bits"},
    {"fetch_add32", core_fetch_add32, METH_VARARGS,
     "fetch_add32(buffer, offset, delta) -> old value as unsigned (4-byte aligned; delta is "
     "a signed 32-bit int, the sum wraps)"},
    {"cas32", core_cas32, METH_VARARGS,
     "cas32(buffer, offset, expected, desired) -> (swapped, value seen) (4-byte aligned)"},
    {"wait32", (PyCFunction)(void (*)(void))core_wait32, METH_VARARGS | METH_KEYWORDS,
     "wait32(buffer, offset, expected, timeout=None) -> bool: sleep while the 32-bit "
     "word equals expected; False on timeout."},
    {"wake32", core_wake32, METH_VARARGS, "wake32(buffer, offset, n=-1) -> woken"},
    {"self_token", core_self_token, METH_NOARGS, "This process's owner token."},
    {"wait_many", core_wait_many, METH_VARARGS,
     "wait_many(addresses, expected, timeout=None) -> index, -1 re-check, -2 timeout, -3 unsupported"},
    {"wait_address", core_wait_address, METH_VARARGS,
     "wait_address(address, expected, timeout=None) -> False on timeout"},
    {"address_of", core_address_of, METH_VARARGS, "address_of(buffer, offset) -> int"},
    {"token_alive", core_token_alive, METH_O, "token_alive(token) -> bool"},
    {"liveness_probe", core_liveness_probe, METH_O,
     "liveness_probe(name) -> LIVENESS_HELD, _FREE, _ABSENT or _UNKNOWN: the state of the "
     "liveness file `name` in /dev/shm (opened read-only and closed: it releases nothing)"},
    {"liveness_name", core_liveness_name, METH_O,
     "liveness_name(token) -> the file name (in /dev/shm) of the token's liveness file"},
    {"liveness_remove", core_liveness_remove, METH_NOARGS,
     "liveness_remove(): remove this process's liveness file (at exit)"},
    {"token_pid", core_token_pid, METH_O,
     "token_pid(token) -> int: the pid a token names, in its own PID namespace"},
    {"shm_open", core_shm_open, METH_VARARGS, "shm_open(name, flags, mode=0o600) -> fd"},
    {"shm_unlink", core_shm_unlink, METH_VARARGS, "shm_unlink(name)"},
    {"link_fd", core_link_fd, METH_VARARGS,
     "link_fd(fd, path): name the unnamed file open as fd (Linux, O_TMPFILE)"},
    {NULL},
};

#ifdef Py_GIL_DISABLED
#define SYNC_LOCKED_CALLS(X)                                                                \
    SHOAL_VIEW_CALLS(X) X(ARG1, mutex_bind) X(FASTKW, mutex_acquire)                         \
    X(ARG1, mutex_release) X(ARG1, mutex_enter) X(FAST, mutex_exit)                          \
    X(ARG1, mutex_is_owned) X(ARG1, mutex_release_save) X(ARG1, mutex_acquire_restore)       \
    X(ARG1, mutex_release_dead)                                                              \
    X(ARG1, mutex_aio_register) X(ARG1, mutex_aio_unregister) X(ARG1, mutex_aio_word)        \
    X(ARG1, sem_aio_register) X(ARG1, sem_aio_unregister) X(ARG1, sem_aio_word)              \
    X(ARG1, event_aio_register) X(ARG1, event_aio_unregister) X(ARG1, event_aio_word)        \
    X(ARG1, cond_aio_enter) X(ARG1, cond_aio_collect) X(ARG1, cond_aio_leave)                \
    X(ARG1, cond_aio_register) X(ARG1, cond_aio_unregister) X(ARG1, cond_aio_word)           \
    X(GET, mutex_get_owner) X(GET, mutex_get_dead_owner)                                     \
    X(GET, mutex_get_waiters) X(GET, mutex_get_depth) X(GET, mutex_get_owner_died)           \
    X(ARG1, sem_bind) X(ARG1, sem_init) X(FASTKW, sem_acquire) X(ARG1, sem_release)          \
    X(ARG1, sem_enter) X(FAST, sem_exit) X(ARG1, sem_get_value) X(GET, sem_waiters)          \
    X(GET, sem_max_value) X(ARG1, event_bind) X(VARKW, event_wait) X(ARG1, event_set)        \
    X(ARG1, event_clear) X(ARG1, event_is_set) X(GET, event_waiters) X(ARG1, cond_bind)      \
    X(ARG1, cond_enter) X(ARG1, cond_wait) X(ARG1, cond_leave) X(ARG1, cond_notify)          \
    X(GET, cond_waiting) X(ARG1, atomic_bind) X(FAST, atomic_add)                            \
    X(FAST, atomic_fetch_add) X(FAST, atomic_compare_exchange) X(ARG1, atomic_load)          \
    X(ARG1, atomic_store)
#endif
SHOAL_LOCKED_TABLE(sync_locked, SYNC_LOCKED_CALLS)

int sync_module_init(PyObject *module) {
    if (add_functions(module, sync_functions) < 0 ||
        add_type(module, &MutexType, "Mutex", SHOAL_LOCKED(sync_locked)) < 0 ||
        add_type(module, &SemaphoreType, "Semaphore", SHOAL_LOCKED(sync_locked)) < 0 ||
        add_type(module, &EventType, "Event", SHOAL_LOCKED(sync_locked)) < 0 ||
        add_type(module, &CondType, "Cond", SHOAL_LOCKED(sync_locked)) < 0 ||
        add_type(module, &AtomicType, "Atomic", SHOAL_LOCKED(sync_locked)) < 0 ||
        PyModule_AddIntConstant(module, "LAYOUT_VERSION", SHOAL_LAYOUT_VERSION) < 0 ||
        PyModule_AddObject(module, "TOKEN_LIVENESS",
                           PyLong_FromUnsignedLongLong(SHOAL_TOKEN_LIVENESS)) < 0 ||
        PyModule_AddStringConstant(module, "LIVENESS_PREFIX", SHOAL_LIVENESS_PREFIX) < 0 ||
        PyModule_AddStringConstant(module, "LIVENESS_TEMP_SUFFIX", SHOAL_LIVENESS_TEMP_SUFFIX) < 0 ||
        PyModule_AddIntConstant(module, "LIVENESS_HELD", SHOAL_LIVENESS_HELD) < 0 ||
        PyModule_AddIntConstant(module, "LIVENESS_FREE", SHOAL_LIVENESS_FREE) < 0 ||
        PyModule_AddIntConstant(module, "LIVENESS_ABSENT", SHOAL_LIVENESS_ABSENT) < 0 ||
        PyModule_AddIntConstant(module, "LIVENESS_UNKNOWN", SHOAL_LIVENESS_UNKNOWN) < 0 ||
        PyModule_AddIntConstant(module, "MUTEX_SIZE", sizeof(shoal_mutex)) < 0 ||
        PyModule_AddIntConstant(module, "LOCK_SIZE", sizeof(shoal_mutex) + sizeof(shoal_waitlist)) < 0 ||
        PyModule_AddIntConstant(module, "SEMAPHORE_SIZE", sizeof(shoal_semaphore)) < 0 ||
        PyModule_AddIntConstant(module, "EVENT_SIZE", sizeof(shoal_event)) < 0 ||
        PyModule_AddIntConstant(module, "COND_SIZE", sizeof(shoal_cond)) < 0)
        return -1;
    return 0;
}
