"""The Ray backend (#13): ``shoal.get_context("ray")``, shoal's Pool and Executor on Ray
tasks, and the first of the primitives as named Ray actors.

Ray is optional (``pip install 'shoal[ray]'``) and imported on first use only: this
module imports nothing of Ray at module level, so ``import shoal`` never loads it.
Everything here reaches the engine through :func:`_ray`, and the context registers
itself with the seam in :mod:`shoal._context` (``register_backend``) without the local
primitives knowing it exists.

Connecting.  ``RayContext(address=None, **ray_init_options)`` connects on first use:
to ``address`` if given (``"auto"``, ``"ray://host:port"``, ``"127.0.0.1:6379"``), to
the cluster this process already joined (``ray.init()`` called before), or else to a
fresh local cluster (``ray.init(address="local")``: never silently joining another
one, the hazard recorded in distributed.md) whose every listener is bound to loopback.

The pool.  Tasks are Ray tasks (``max_retries=0``: a task whose worker died fails with
:class:`~shoal.WorkerDiedError`, no silent rerun unless ``retries=`` asks for one).  A
result thread in the caller keeps at most ``processes`` Ray tasks in flight and
coalesces waiting ``apply_async`` calls into one Ray task (a batch), which is how many
small calls go faster than one Ray task each; a map is cut into chunks as the local
pool's is.  Results are delivered per task (a map's callback gets the list in input
order), exceptions are the task's own with the worker's traceback as ``__cause__``,
and the initializer runs once in each Ray worker process that runs one of the pool's
tasks, sharing its globals with the task functions of ``__main__`` (cloudpickle ships
those by value, each with a private copy of its globals: see :func:`_shared_main`).
"""

from __future__ import annotations

import builtins
import collections
import concurrent.futures
import itertools
import multiprocessing
import os
import pickle
import sys
import threading
import time
import traceback
import types
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import RemoteTraceback
from typing import Any

from . import _managers, _ray_objects
from ._errors import (
    BrokenPoolError,
    ClosedError,
    ShoalError,
    TaskTimeoutError,
    WorkerDiedError,
)
from ._pool import (
    _CALL,
    _CALL_KW,
    _MAP,
    _STARMAP,
    _check_uncollected_mode,
    _describe_call,
    _ExecutorBase,
    _PoolBase,
    _report_uncollected,
    _settled,
)

__all__ = ["RayContext", "RayExecutor", "RayManager", "RayPool"]

# Ray reads these when it is imported: shoal sets them (unless the user did) before it
# imports Ray, so that a local cluster shoal starts listens on 127.0.0.1 only and asks
# nothing about usage statistics (distributed.md, "CI suitability").
_ENV_BEFORE_IMPORT = {"RAY_USAGE_STATS_ENABLED": "0"}
_ENV_LOCAL_CLUSTER = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _ray(local: bool = False) -> types.ModuleType:
    """Import Ray (setting its import-time environment first), or say how to get it."""
    module = sys.modules.get("ray")
    if module is not None:
        return module
    for key, value in {**_ENV_BEFORE_IMPORT, **(_ENV_LOCAL_CLUSTER if local else {})}.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            f"shoal's 'ray' context needs Ray, which cannot be imported here ({error}): "
            "pip install 'shoal[ray]'"
        ) from error
    return ray


class RayContext:
    """The factories of shoal's objects on a Ray cluster: what
    ``shoal.get_context("ray", address=None, **ray_init_options)`` returns.

    Args:
        address: the cluster to join (``ray.init(address=...)``); None joins the one
            this process is connected to already, or starts a local one (loopback
            only, never joining another cluster on the machine).
        ray_init_options: passed to ``ray.init`` when this context connects
            (``num_cpus=``, ``object_store_memory=``, ``runtime_env=`` …).

    Connecting waits for the first object made, not for this call.  See
    ``docs/ray.md`` for what each object costs and how long it lives.
    """

    __module__ = "shoal.context"

    def __init__(self, address: str | None = None, **ray_init_options: Any) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string or None, not {type(address).__name__}")
        self.address = address
        self._options = ray_init_options
        self._started = False

    def __repr__(self) -> str:
        return f"<shoal.context.RayContext address={self.address!r}>"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # in a task of the cluster: the cluster it runs on (ray is initialized there)
        return RayContext, ()

    def get_start_method(self, allow_none: bool = False) -> str | None:
        """None: Ray starts the workers, not a multiprocessing start method."""
        return None

    def connect(self) -> types.ModuleType:
        """Connect to the cluster now (what the first object made does); return ``ray``."""
        ray = _ray(local=self.address is None)
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False} if self.address is None else {}
            options.update(self._options)
            ray.init(address=self.address or "local", **options)
            self._started = True
        return ray

    def shutdown(self) -> None:
        """Disconnect (``ray.shutdown()``), stopping the local cluster this context
        started; objects made through it stop working."""
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        self._started = False

    # ---- pools -------------------------------------------------------------------------

    def Pool(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        **kwargs: Any,
    ) -> RayPool:
        """A :class:`RayPool`: shoal's Pool API on Ray tasks."""
        return RayPool(processes, initializer, initargs, maxtasksperchild, context=self, **kwargs)

    def Executor(self, max_workers: int | None = None, **kwargs: Any) -> RayExecutor:
        """A :class:`RayExecutor`: a ``concurrent.futures.Executor`` on Ray tasks."""
        return RayExecutor(max_workers, mp_context=self, **kwargs)

    # ---- the primitives: one Ray actor each (shoal._ray_objects) -----------------------

    def Queue(self, maxsize: int = 0, **kwargs: Any) -> _ray_objects.RayQueue:
        """A :class:`~shoal._ray_objects.RayQueue` (``prefetch=``, ``batch=`` too)."""
        self.connect()
        return _ray_objects.RayQueue(maxsize, **kwargs)

    def JoinableQueue(self, maxsize: int = 0, **kwargs: Any) -> _ray_objects.RayQueue:
        """A queue with ``task_done``/``join`` (every Ray queue has them)."""
        return self.Queue(maxsize, **kwargs)

    def SimpleQueue(self, **kwargs: Any) -> _ray_objects.RayQueue:
        """An unbounded queue."""
        return self.Queue(0, **kwargs)

    def Lock(self) -> _ray_objects.RayLock:
        """A lock with an owner, timeouts and ``owner_died``."""
        self.connect()
        return _ray_objects.RayLock()

    def RLock(self) -> _ray_objects.RayRLock:
        """A recursive lock."""
        self.connect()
        return _ray_objects.RayRLock()

    def Semaphore(self, value: int = 1) -> _ray_objects.RaySemaphore:
        """A semaphore."""
        self.connect()
        return _ray_objects.RaySemaphore(value)

    def BoundedSemaphore(self, value: int = 1) -> _ray_objects.RayBoundedSemaphore:
        """A bounded semaphore."""
        self.connect()
        return _ray_objects.RayBoundedSemaphore(value)

    def Event(self) -> _ray_objects.RayEvent:
        """An event."""
        self.connect()
        return _ray_objects.RayEvent()

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> _ray_objects.RayValue:
        """A value with atomic ``add``/``compare_exchange`` and a lock (``get_lock()``)."""
        self.connect()
        return _ray_objects.RayValue(typecode_or_type, *args, lock=lock)

    def SharedDict(self, items: Any = (), /, **kwargs: Any) -> _ray_objects.RaySharedDict:
        """A dict with atomic ``incr``, ``get_or_set``, ``compare_exchange``, ``batch``."""
        self.connect()
        return _ray_objects.RaySharedDict(items, **kwargs)

    def Condition(self, lock: Any = None) -> _ray_objects.RayCondition:
        """A condition variable (on a new RLock, or on a Ray ``lock``)."""
        self.connect()
        return _ray_objects.RayCondition(lock)

    def Barrier(
        self, parties: int, action: Any = None, timeout: float | None = None
    ) -> _ray_objects.RayBarrier:
        """A barrier that breaks when a waiting party's process dies; ``action`` runs in
        the last party to arrive, once a cycle."""
        self.connect()
        return _ray_objects.RayBarrier(parties, action, timeout)

    def Array(
        self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True
    ) -> _ray_objects.RayArray:
        """A fixed-length typed array (one actor; ``get_lock()``, atomic ``add``)."""
        self.connect()
        return _ray_objects.RayArray(typecode_or_type, size_or_initializer)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any) -> _ray_objects.RayArray:
        """:meth:`Array`: on Ray every operation is one atomic actor call, lock or not."""
        return self.Array(typecode_or_type, size_or_initializer, lock=False)

    def RawValue(self, typecode_or_type: Any, *args: Any) -> _ray_objects.RayValue:
        """:meth:`Value`: on Ray every operation is one atomic actor call, lock or not."""
        return self.Value(typecode_or_type, *args, lock=False)

    def SharedList(self, iterable: Iterable[Any] = (), /) -> _ray_objects.RaySharedList:
        """A list (one actor; each call atomic, ``get_lock()`` for compound ones)."""
        self.connect()
        return _ray_objects.RaySharedList(iterable)

    def share(self, array: Any) -> _ray_objects.RaySharedArray:
        """``array`` (anything ``numpy.asarray`` takes) shared across the cluster: one
        owner applies the writes, every node maps each version once, zero-copy (the
        consistency model: :class:`~shoal._ray_objects.RaySharedArray`)."""
        self.connect()
        return _ray_objects.RaySharedArray(array)

    def SharedArray(
        self, shape: Any, dtype: Any = float, order: str = "C"
    ) -> _ray_objects.RaySharedArray:
        """A zeroed array of ``shape`` and ``dtype`` shared across the cluster (as
        :meth:`share` of ``numpy.zeros(shape, dtype, order)``)."""
        import numpy as np  # (numpy is needed here only: shoal[numpy])

        return self.share(np.zeros(shape, dtype, order))

    def Manager(self) -> RayManager:
        """A started :class:`RayManager`: ``Manager()``'s calls, returning cluster
        objects."""
        self.connect()
        manager = RayManager(ctx=self)
        manager.start()
        return manager


# ---- the worker's side: what a Ray task of a pool runs ----------------------------------


# per Ray worker process: pool token -> the globals shared by its initializer and the
# task functions of __main__ (None until the initializer ran; see _shared_main)
_worker_pools: dict[str, dict[str, Any]] = {}


def _shared_main(func: Any, shared: dict[str, Any]) -> Any:
    """``func`` with ``shared`` as its globals, if it is a function of ``__main__``.

    cloudpickle ships a function of ``__main__`` by value, with a fresh dict of the
    globals it names, one dict per pickle: what an initializer sets (``global x``)
    would never be seen by a task function pickled in another message.  Rebinding
    each such function to one dict per pool and worker makes them share, as they do
    in the local pool's workers.  Names the dict lacks are filled from the function's
    own (the driver's values at pickling time); names it has win, so an initializer's
    assignments are kept.
    """
    if not isinstance(func, types.FunctionType) or func.__module__ != "__main__":
        return func
    if func.__globals__ is shared:
        return func
    for key, value in func.__globals__.items():
        shared.setdefault(key, value)
    rebound = types.FunctionType(
        func.__code__, shared, func.__name__, func.__defaults__, func.__closure__
    )
    rebound.__kwdefaults__ = func.__kwdefaults__
    rebound.__dict__.update(func.__dict__)
    rebound.__qualname__ = func.__qualname__
    return rebound


def _pack_error(error: BaseException) -> tuple[bytes, str]:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        record = pickle.dumps(error)
        pickle.loads(record)
    except Exception as why:
        record = pickle.dumps(
            ShoalError(f"a task failed with {type(error).__name__}: {error} (unpicklable: {why})")
        )
    return record, text


def _run_batch(token: str, setup: list[Any], items: list[tuple[Any, ...]]) -> Any:
    """Run a batch of a pool's calls in a Ray worker: ``[(ok, value or error)]``, or
    ``("initializer", error)`` when the pool's initializer failed here."""
    shared = _worker_pools.get(token)
    if shared is None:
        shared = {"__name__": "__main__", "__builtins__": __builtins__}
        initializer, initargs = _ray().get(setup[0]) if setup else (None, ())
        if initializer is not None:
            try:
                _shared_main(initializer, shared)(*initargs)
            except BaseException as error:
                return ("initializer", _pack_error(error))
        _worker_pools[token] = shared
    out: list[tuple[bool, Any]] = []
    for func, kind, payload in items:
        func = _shared_main(func, shared)
        try:
            if kind == _CALL:
                value: Any = func(*payload)
            elif kind == _CALL_KW:
                value = func(*payload[0], **payload[1])
            elif kind == _MAP:
                value = [func(x) for x in payload]
            else:
                value = [func(*x) for x in payload]
            out.append((True, value))
        except BaseException as error:
            out.append((False, _pack_error(error)))
    return out


# maxtasksperchild (None or a number) -> _run_batch as a Ray remote function (Ray takes
# max_calls only there, not in .options())
_remote_batch: dict[int | None, Any] = {}


def _batch_function(max_calls: int | None) -> Any:
    remote = _remote_batch.get(max_calls)
    if remote is None:
        ray = _ray()
        remote = ray.remote(max_calls=max_calls)(_run_batch) if max_calls else None
        remote = remote or ray.remote(_run_batch)
        remote = _remote_batch.setdefault(max_calls, remote)
    return remote


def _remote_error(packed: tuple[bytes, str]) -> BaseException:
    record, text = packed
    try:
        error = pickle.loads(record)
    except BaseException as why:
        error = ShoalError(f"a task failed and its exception could not be unpickled: {why}")
    error.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
    return error


# ---- the caller's side ------------------------------------------------------------------


class _Entry:
    """One task of a job: (job, index, function, kind, payload, timeout)."""

    __slots__ = ("expired", "func", "index", "job", "kind", "payload", "timeout")

    def __init__(self, job: Any, index: int, func: Any, kind: int, payload: Any, timeout: Any):
        self.job, self.index, self.func = job, index, func
        self.kind, self.payload, self.timeout = kind, payload, timeout
        self.expired = False


class _Job:
    _bar: Any = None  # a tqdm bar, for progress=True (made by shoal._pool._base)
    # a failure is reported at join()/terminate() unless collected (an AsyncResult's
    # get(), successful() or error_callback); the other jobs never report
    _collected = True

    def __init__(self, tasks: int) -> None:
        self._event = threading.Event()
        self._left = tasks
        self._success = True
        self._value: Any = None
        self._error: BaseException | None = None

    def ready(self) -> bool:
        """Whether the call finished."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the call finished, or ``timeout`` seconds."""
        self._event.wait(timeout)

    def successful(self) -> bool:
        """Whether the call returned; ValueError if it has not finished."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        self._collected = True
        return self._success

    def _start(self) -> bool:
        return True

    def _close_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        raise NotImplementedError


class AsyncResult(_Job):
    """The result of an ``apply_async``: ``get()``, ``wait()``, ``ready()``,
    ``successful()``, as :class:`multiprocessing.pool.AsyncResult`.  A failure nobody
    collects (no ``get()``, ``successful()`` or ``error_callback``) goes on
    ``uncollected``, the engine's list reported at ``join()``/``terminate()``."""

    def __init__(
        self,
        callback: Any = None,
        error_callback: Any = None,
        tasks: int = 1,
        uncollected: list[AsyncResult] | None = None,
    ) -> None:
        super().__init__(tasks)
        self._callback, self._error_callback = callback, error_callback
        self._collected = error_callback is not None
        self._uncollected = uncollected
        self._what: Any = ""  # a description, or (func, args, kwds) to make one from

    @property
    def _description(self) -> str:
        if isinstance(self._what, tuple):  # made when needed: most calls never need it
            self._what = _describe_call(*self._what)
        return self._what  # type: ignore[no-any-return]

    def get(self, timeout: float | None = None) -> Any:
        """The call's value, or its exception raised here; ``multiprocessing.TimeoutError``
        if it has not finished within ``timeout`` seconds."""
        if not self._event.wait(timeout):
            raise multiprocessing.TimeoutError
        self._collected = True
        if self._success:
            return self._value
        assert self._error is not None
        raise self._error

    def _finish(self) -> None:
        self._close_bar()
        self._what = _settled(self._what, self._success)
        if not self._success and not self._collected and self._uncollected is not None:
            self._uncollected.append(self)
        try:
            if self._success and self._callback is not None:
                self._callback(self._value)
            elif not self._success and self._error_callback is not None:
                self._error_callback(self._error)
        finally:
            self._event.set()

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        self._success, self._left = ok, 0
        if ok:
            self._value = value
        else:
            self._error = value
        self._finish()


class MapResult(AsyncResult):
    """The result of a ``map_async``/``starmap_async``: the list in input order."""

    def __init__(
        self,
        length: int,
        chunks: int,
        callback: Any,
        error_callback: Any,
        bar: Any = None,
        uncollected: list[AsyncResult] | None = None,
    ) -> None:
        super().__init__(callback, error_callback, chunks, uncollected)
        self._bar = bar
        self._parts: list[Any] = [None] * chunks
        if chunks == 0:
            self._value = []
            self._finish()

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        if self._event.is_set() or self._left == 0:
            return
        if not ok:
            self._success, self._error, self._left = False, value, 0
            self._finish()
            return
        self._parts[index] = value
        self._left -= 1
        if self._bar is not None:
            self._bar.update(len(value))
        if self._left == 0:
            self._value = list(itertools.chain.from_iterable(self._parts))
            self._parts = []
            self._finish()


class IMapIterator(_Job):
    """The iterator ``imap``/``imap_unordered`` return; ``next(timeout)`` as the
    standard library's."""

    def __init__(self, ordered: bool, bar: Any = None) -> None:
        super().__init__(0)
        self._bar = bar
        self._delivered = 0
        self._ordered = ordered
        self._cond = threading.Condition(threading.Lock())
        self._done: dict[int, tuple[bool, Any]] = {}
        self._ready: collections.deque[tuple[bool, Any]] = collections.deque()
        self._next = 0  # the next chunk to yield (ordered)
        self._chunks: int | None = None  # known once the input is consumed
        self._yielded = 0
        self._pending: collections.deque[Any] = collections.deque()

    def __iter__(self) -> IMapIterator:
        return self

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        with self._cond:
            if self._ordered:
                self._done[index] = (ok, value)
                while self._next in self._done:
                    self._ready.append(self._done.pop(self._next))
                    self._next += 1
            else:
                self._ready.append((ok, value))
            self._delivered += 1
            if self._bar is not None and ok:
                self._bar.update(len(value))
            self._end_bar()
            self._cond.notify_all()

    def _set_length(self, chunks: int) -> None:
        with self._cond:
            self._chunks = chunks
            self._end_bar()
            self._cond.notify_all()

    def _end_bar(self) -> None:
        if self._chunks is not None and self._delivered >= self._chunks:
            self._close_bar()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``multiprocessing.TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._pending:
                    return self._pending.popleft()
                if self._ready:
                    ok, value = self._ready.popleft()
                    self._yielded += 1
                    if not ok:
                        raise value
                    self._pending.extend(value)
                    continue
                if self._chunks is not None and self._yielded >= self._chunks:
                    self._event.set()
                    raise StopIteration
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise multiprocessing.TimeoutError
                self._cond.wait(left)

    __next__ = next


class _FutureJob(_Job):
    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        super().__init__(1)
        self.future = future

    def _start(self) -> bool:
        return self.future.set_running_or_notify_cancel()

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        if self.future.done():
            return
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)


_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"

# coalescing: at most this many waiting calls go in one Ray task
_BATCH = 512


class _Engine:
    """The caller's side of a pool: the backlog, the Ray tasks in flight, the thread
    that starts them and delivers their results."""

    def __init__(
        self,
        context: RayContext,
        processes: int | None,
        initializer: Callable[..., object] | None,
        initargs: Iterable[Any],
        maxtasksperchild: int | None,
        task_timeout: float | None,
        retries: int,
        ray_options: dict[str, Any] | None,
        uncollected_errors: str = "ignore",
    ) -> None:
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError(f"task_timeout must be positive, not {task_timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {retries!r}")
        self._uncollected_mode = _check_uncollected_mode(uncollected_errors)
        # the results that failed while nobody collected them (AsyncResult._finish)
        self.uncollected: list[AsyncResult] = []
        self._ended = False  # joined, or terminated: nothing left to report
        ray = context.connect()
        self._ray = ray
        self.processes = processes or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.task_timeout = task_timeout
        self._token = uuid.uuid4().hex
        initargs = tuple(initargs)
        self._setup = [ray.put((initializer, initargs))] if initializer is not None else []
        options: dict[str, Any] = {"max_retries": retries, "num_cpus": 1}
        options.update(ray_options or {})
        self._remote = _batch_function(maxtasksperchild).options(**options)
        self.state = _RUN
        self._broken: BaseException | None = None  # the initializer's error
        self._lost: BaseException | None = None  # Ray's, when the cluster went away
        self._cond = threading.Condition(threading.Lock())
        self._backlog: collections.deque[_Entry] = collections.deque()
        # ref -> (entries, deadline or None)
        self._inflight: dict[Any, tuple[list[_Entry], float | None]] = {}
        self._thread = threading.Thread(target=self._run, name="shoal-ray-pool", daemon=True)
        self._thread.start()

    def check_running(self) -> None:
        if self._lost is not None:
            raise BrokenPoolError(f"the pool lost its Ray cluster: {self._lost}") from self._lost
        if self._broken is not None:
            raise BrokenPoolError(
                "the pool's initializer failed in a worker: the pool cannot run tasks"
            ) from self._broken
        if self.state != _RUN:
            raise ClosedError(f"Pool not running (it was {self.state.lower()}d)")

    def submit(self, entries: list[_Entry]) -> None:
        with self._cond:
            self.check_running()
            self._backlog.extend(entries)
            self._cond.notify()

    # ---- the result thread ----------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start Ray tasks from the backlog while fewer than ``processes`` run (lock held)."""
        while self._backlog and len(self._inflight) < self.processes:
            first = self._backlog.popleft()
            if not first.job._start():
                continue
            batch = [first]
            if first.kind in (_CALL, _CALL_KW) and first.timeout is None:
                # coalesce the waiting calls: the more wait, the bigger the batch
                share = -(-len(self._backlog) // self.processes)
                while self._backlog and len(batch) < min(share, _BATCH):
                    entry = self._backlog[0]
                    if entry.kind not in (_CALL, _CALL_KW) or entry.timeout is not None:
                        break
                    self._backlog.popleft()
                    if entry.job._start():
                        batch.append(entry)
            items = [(e.func, e.kind, e.payload) for e in batch]
            try:
                ref = self._remote.remote(self._token, self._setup, items)
            except BaseException as error:  # (unpicklable arguments)
                for entry in batch:
                    self._deliver(entry, False, error)
                continue
            deadline = None
            if first.timeout is not None:
                per = len(first.payload) if first.kind in (_MAP, _STARMAP) else 1
                deadline = time.monotonic() + first.timeout * per
            self._inflight[ref] = (batch, deadline)

    def _deliver(self, entry: _Entry, ok: bool, value: Any) -> None:
        try:
            entry.job._deliver(entry.index, ok, value)
        except BaseException:  # a callback raised: as the standard library, print it
            traceback.print_exc()

    def _run(self) -> None:
        ray = self._ray
        while True:
            with self._cond:
                self._dispatch()
                if not self._inflight:
                    if self.state != _RUN and not self._backlog:
                        return
                    self._cond.wait(0.1)
                    continue
                refs = list(self._inflight)
                deadlines = [d for _, d in self._inflight.values() if d is not None]
            wait = 0.05
            if deadlines:
                wait = max(0.0, min(wait, min(deadlines) - time.monotonic()))
            try:
                # the first to finish (or none within `wait`), then every other finished
                ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
                if ready and len(refs) > 1:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            except BaseException as error:  # Ray went away (shutdown): fail, not hang
                if self.state != _TERMINATE:
                    self._lost = error
                    with self._cond:
                        self.state = _CLOSE
                    self._fail_outstanding(error)
                return
            if self.state == _TERMINATE:
                return
            self._collect_ready(ready)
            # (nothing of a finished task stays referenced here while the thread waits:
            # its arguments are the caller's to let go, and Ray keeps a task's
            # arguments while its result's reference lives)
            del refs, ready
            if deadlines:
                self._expire()

    def _collect_ready(self, ready: list[Any]) -> None:
        for ref in ready:
            with self._cond:
                batch, _ = self._inflight.pop(ref)
            self._collect(ref, batch)

    def _collect(self, ref: Any, batch: list[_Entry]) -> None:
        ray = self._ray
        try:
            results = ray.get(ref)
        except BaseException as error:
            failure = self._engine_error(error, batch)
            for entry in batch:
                self._deliver(entry, False, failure)
            return
        if isinstance(results, tuple) and results and results[0] == "initializer":
            self._broken = _remote_error(results[1])
            failure = BrokenPoolError(
                "the pool's initializer failed in a worker: the pool cannot run tasks"
            )
            failure.__cause__ = self._broken
            self._fail_outstanding(failure, batch)
            return
        for entry, (ok, value) in zip(batch, results, strict=True):
            self._deliver(entry, ok, value if ok else _remote_error(value))

    def _engine_error(self, error: BaseException, batch: list[_Entry]) -> BaseException:
        exceptions = self._ray.exceptions
        what = _describe(batch[0])
        if isinstance(error, exceptions.TaskCancelledError) and batch[0].expired:
            limit = batch[0].timeout
            return TaskTimeoutError(
                f"{what} ran longer than its timeout of {limit} s: its Ray worker was killed",
                timeout=limit,
                task=what,
            )
        if isinstance(error, exceptions.RayTaskError):
            cause = error.cause if isinstance(error.cause, BaseException) else error
            cause.__cause__ = RemoteTraceback(f'\n"""\n{error}"""')
            return cause
        dead = (
            exceptions.WorkerCrashedError,
            exceptions.NodeDiedError,
            exceptions.LocalRayletDiedError,
            exceptions.ObjectLostError,
        )
        if isinstance(error, dead):
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return WorkerDiedError(
                f"the Ray worker running {what} died before it returned ({type(error).__name__}"
                f"{': ' + detail if detail else ''})",
                task=what,
            )
        return error

    def _expire(self) -> None:
        now = time.monotonic()
        with self._cond:
            late = [(r, b) for r, (b, d) in self._inflight.items() if d is not None and d <= now]
        for ref, batch in late:
            batch[0].expired = True
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass
            with self._cond:
                self._inflight[ref] = (batch, None)

    def _fail_outstanding(self, error: BaseException, entries: list[_Entry] | None = None) -> None:
        """Fail ``entries`` and every task not finished with ``error``: the pool's
        doing, not the tasks', so never reported as uncollected."""
        entries = list(entries or ())
        with self._cond:
            entries += self._backlog
            self._backlog.clear()
            for batch, _ in self._inflight.values():
                entries += batch
            self._inflight.clear()
        for entry in entries:
            entry.job._collected = True
            self._deliver(entry, False, error)

    def _report_uncollected(self) -> None:
        failed = self.uncollected[:]
        del self.uncollected[: len(failed)]  # (in place: the results append to it)
        _report_uncollected(
            [(r._description, r._error) for r in failed if not r._collected],  # type: ignore[misc]
            self._uncollected_mode,
        )

    # ---- the end --------------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            if self.state == _RUN:
                self.state = _CLOSE
            self._cond.notify()

    def terminate(self) -> None:
        with self._cond:
            self.state = _TERMINATE
            refs = list(self._inflight)
            self._cond.notify()
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass
        self._thread.join(10)
        self._ended = True
        try:
            self._report_uncollected()
        finally:
            self._fail_outstanding(ClosedError("the pool was terminated before this task finished"))

    def join(self, timeout: float | None = None) -> None:
        if self.state == _RUN:
            raise ValueError("join() needs close() or terminate() first")
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._ended = True
            self._report_uncollected()


def _describe(entry: _Entry) -> str:
    if entry.kind in (_MAP, _STARMAP):
        name = getattr(entry.func, "__qualname__", None) or repr(entry.func)
        return f"{name} over a chunk of {len(entry.payload)} items"
    if entry.kind == _CALL:
        return _describe_call(entry.func, entry.payload)
    return _describe_call(entry.func, *entry.payload)


def _finalize(engine: _Engine) -> None:
    """An Executor dropped while it runs: stop (one shut down goes on by itself)."""
    if engine.state == _RUN:
        engine.terminate()


def _finalize_pool(engine: _Engine) -> None:
    """A Pool dropped (or left at exit) before it was joined: terminated, reporting the
    failures nobody collected, as the local pool is."""
    if not engine._ended:
        engine.terminate()


class RayPool(_PoolBase):
    """shoal's Pool API on the tasks of a Ray cluster (``get_context("ray").Pool()``).

    Args:
        processes: how many Ray tasks run at once (default: the cluster's CPUs).
        initializer, initargs: ``initializer(*initargs)`` runs once in each Ray worker
            process, before the first of this pool's tasks it runs (one defined in
            ``__main__`` sets globals the task functions of ``__main__`` see).
        maxtasksperchild: a Ray worker process exits after running this many of the
            pool's tasks (chunks), and Ray starts another (``max_calls``).
        task_timeout: seconds a task (each item of a chunk) may run; past it the Ray
            worker is killed and the task fails with :class:`~shoal.TaskTimeoutError`.
        retries: how often Ray reruns a task whose worker died (default 0: it fails
            with :class:`~shoal.WorkerDiedError`).
        ray_options: more options of the Ray tasks (``num_cpus``, ``resources``,
            ``scheduling_strategy`` …).
        uncollected_errors: what ``join()``/``terminate()`` (and the collection of a
            pool nobody joined) do about failed ``apply_async``/``map_async`` results
            nobody collected: "warn" (:class:`~shoal.UncollectedTaskErrorWarning`),
            "raise" (an ``ExceptionGroup``) or "ignore", as the local pool's.

    Results come back in input order; a task's exception is raised by ``get()`` with
    the worker's traceback as ``__cause__``; a worker (or node) that dies fails only
    the tasks it was running and the pool carries on.  ``with RayPool() as p:``
    terminates on exit, as the standard library's pool does.  The API is
    ``shoal._pool._PoolBase``'s, shared with the local pool; this class is the Ray
    engine's side of it.
    """

    _engine: _Engine
    _chunks_per_worker = 4  # a Ray task costs ~0.5 ms: fewer, bigger chunks

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: RayContext | None = None,
        *,
        task_timeout: float | None = None,
        retries: int = 0,
        ray_options: dict[str, Any] | None = None,
        uncollected_errors: str = "warn",
    ) -> None:
        self._engine = _Engine(
            context or RayContext(),
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            task_timeout,
            retries,
            ray_options,
            uncollected_errors,
        )
        self._finalizer = weakref.finalize(self, _finalize_pool, self._engine)

    # ---- the Ray engine's side of _PoolBase ------------------------------------------

    def _timeout(self, timeout: float | None) -> float | None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        return timeout if timeout is not None else self._engine.task_timeout

    def _function(self, func: Callable[..., Any]) -> Any:
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        return func

    def _apply(
        self,
        function: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwds: dict[str, Any] | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        limit: Any,
    ) -> AsyncResult:
        result = AsyncResult(callback, error_callback, uncollected=self._engine.uncollected)
        result._what = (func, args, kwds)
        entry = (
            _Entry(result, 0, func, _CALL_KW, (args, dict(kwds)), limit)
            if kwds
            else _Entry(result, 0, func, _CALL, args, limit)
        )
        self._engine.submit([entry])
        return result

    def _map(
        self,
        function: Any,
        func: Callable[..., Any],
        items: list[Any],
        size: int,
        kind: int,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        limit: Any,
        bar: Any,
        name: str,
    ) -> MapResult:
        starts = range(0, len(items), size)
        engine = self._engine
        result = MapResult(
            len(items), len(starts), callback, error_callback, bar, engine.uncollected
        )
        result._what = f"{name} over {len(items)} items"
        entries = [
            _Entry(result, n, func, kind, items[i : i + size], limit) for n, i in enumerate(starts)
        ]
        if entries:
            engine.submit(entries)
        return result

    def _imap(
        self,
        function: Any,
        func: Callable[..., Any],
        items: Iterator[Any],
        total: int | None,
        size: int,
        kind: int,
        ordered: bool,
        limit: Any,
        bar: Any,
        name: str,
    ) -> IMapIterator:
        result = IMapIterator(ordered, bar)
        engine = self._engine

        def feed() -> None:
            n = 0
            try:
                while True:
                    chunk = list(itertools.islice(items, size))
                    if not chunk:
                        break
                    engine.submit([_Entry(result, n, func, kind, chunk, limit)])
                    n += 1
            except BaseException as error:  # the input raised: the next item does
                result._deliver(n, False, error)
                n += 1
            result._set_length(n)

        threading.Thread(target=feed, name="shoal-ray-imap", daemon=True).start()
        return result

    def __repr__(self) -> str:
        return f"<shoal RayPool state={self._engine.state} processes={self.processes}>"


class RayExecutor(_ExecutorBase):
    """A :class:`concurrent.futures.Executor` on Ray tasks
    (``get_context("ray").Executor()``).

    The arguments are ``ProcessPoolExecutor``'s (``mp_context`` is the Ray context);
    ``task_timeout``, ``retries`` and ``ray_options`` are :class:`RayPool`'s.  A worker
    that dies fails only its future, with :class:`~shoal.WorkerDiedError`.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: RayContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        ray_options: dict[str, Any] | None = None,
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        self._engine = _Engine(
            mp_context or RayContext(),
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            task_timeout,
            retries,
            ray_options,
        )
        self._finalizer = weakref.finalize(self, _finalize, self._engine)

    def _submit(
        self, fn: Callable[..., Any], kind: int, payload: tuple, description: str | None
    ) -> concurrent.futures.Future[Any]:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        entry = _Entry(_FutureJob(future), 0, fn, kind, payload, self._engine.task_timeout)
        try:
            self._engine.submit([entry])
        except ValueError:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; with ``cancel_futures`` cancel those not started; with
        ``wait`` wait for the rest."""
        engine = self._engine
        if cancel_futures:
            with engine._cond:
                waiting = list(engine._backlog)
                engine._backlog.clear()
            for entry in waiting:
                if isinstance(entry.job, _FutureJob):
                    entry.job.future.cancel()
        engine.close()
        if wait:
            engine.join()
        self._finalizer.detach()


class RayManager(_managers.SyncManager):
    """``Manager()`` on the cluster (``get_context("ray").Manager()``): the local
    manager's life cycle (``start``, ``shutdown``, ``with``; no server process) with
    factories that return the Ray context's objects: ``Queue()``, ``Lock()``,
    ``dict()``, ``list()``, ``set()``, ``Value()``, ``Array()``, ``Namespace()``
    (attributes in a cluster dict), ``Pool()`` (a :class:`RayPool`, terminated by
    ``shutdown()``) …

    Registered types and ``connect()`` are the local manager's (a server on this
    machine).
    """

    def __init__(self, *args: Any, ctx: RayContext | None = None, **kwargs: Any) -> None:
        super().__init__(*args, ctx=None, **kwargs)
        self._ray_ctx = ctx or RayContext()

    def _make(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._check_open()
        return getattr(self._ray_ctx, name)(*args, **kwargs)

    def Queue(self, maxsize: int = 0) -> Any:
        """A cluster queue with ``task_done``/``join`` (as the local manager's)."""
        return self._make("JoinableQueue", maxsize)

    def JoinableQueue(self, maxsize: int = 0) -> Any:
        """A cluster queue with ``task_done``/``join``."""
        return self._make("JoinableQueue", maxsize)

    def Lock(self) -> Any:
        """A cluster lock."""
        return self._make("Lock")

    def RLock(self) -> Any:
        """A cluster RLock."""
        return self._make("RLock")

    def Semaphore(self, value: int = 1) -> Any:
        """A cluster semaphore."""
        return self._make("Semaphore", value)

    def BoundedSemaphore(self, value: int = 1) -> Any:
        """A cluster bounded semaphore."""
        return self._make("BoundedSemaphore", value)

    def Condition(self, lock: Any = None) -> Any:
        """A cluster condition (on a new RLock, or on a cluster ``lock``)."""
        return self._make("Condition", lock)

    def Event(self) -> Any:
        """A cluster event."""
        return self._make("Event")

    def Barrier(self, parties: int, action: Any = None, timeout: float | None = None) -> Any:
        """A cluster barrier."""
        return self._make("Barrier", parties, action, timeout)

    def Value(self, typecode: Any, value: Any, lock: Any = True) -> Any:
        """A cluster value (``.value``, atomic ``add``, ``get_lock()``)."""
        return self._make("Value", typecode, value)

    def Array(self, typecode: Any, sequence: Any, lock: Any = True) -> Any:
        """A cluster array (``sequence``: the items, or a length)."""
        return self._make("Array", typecode, sequence)

    def dict(self, *args: Any, **kwargs: Any) -> Any:
        """A cluster dict holding what ``dict(*args, **kwargs)`` holds."""
        return self._make("SharedDict", builtins.dict(*args, **kwargs))

    def list(self, *args: Any) -> Any:
        """A cluster list holding what ``list(*args)`` holds."""
        return self._make("SharedList", builtins.list(*args))

    def set(self, iterable: Iterable[Any] = (), /) -> Any:
        """A cluster set holding what ``set(iterable)`` holds (a
        :class:`~shoal._ray_objects.RaySharedSet`: the API of :class:`~shoal.SharedSet`)."""
        self._check_open()
        elements = builtins.set(iterable)  # (set()'s own errors, here)
        self._ray_ctx.connect()
        return _ray_objects.RaySharedSet(elements)

    def Namespace(self, **kwds: Any) -> Any:
        """A namespace whose attributes live in a cluster dict (the local
        :class:`~shoal.managers.Namespace` over a :class:`RaySharedDict`)."""
        namespace = _managers._rebuild_namespace(self._make("SharedDict"))
        for name, value in kwds.items():
            setattr(namespace, name, value)
        return namespace

    def Pool(
        self,
        processes: int | None = None,
        initializer: Any = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        **kwargs: Any,
    ) -> Any:
        """A :class:`RayPool`, which :meth:`shutdown` terminates."""
        self._check_open()
        pool = RayPool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context if context is not None else self._ray_ctx,
            **kwargs,
        )
        self._pools.add(pool)  # type: ignore[arg-type]
        return pool

    def __reduce__(self) -> Any:
        return (_rebuild_ray_manager, (self._status,))

    def __repr__(self) -> str:
        return f"<shoal RayManager {self._status}>"


def _rebuild_ray_manager(state: str) -> RayManager:
    manager = RayManager()
    manager._state.value = _managers._STATE_VALUES[state]
    return manager
