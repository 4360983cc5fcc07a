"""Pool and Executor: process pools that survive their workers.

One engine serves both ``Pool`` (the standard library's API) and ``Executor`` (a
``concurrent.futures.Executor``)::

    caller threads ---- put_many ----> task ring (shoal Queue) ---- _get_claim ----> workers
          ^                                                                            |
          |            result thread <---- result ring (shoal Queue) <---- put --------+
          |                  ^
          +-- AsyncResult    +-- monitor thread: waits on the workers' sentinels, pushes a
              Future             "worker died" record, starts a replacement, kills tasks
                                 that ran past their timeout

No feeder thread: ``apply_async`` pickles in the caller and puts the task straight
into shared memory, so an argument that cannot be pickled raises there and then.
Tasks whose arguments are plain scalars skip pickle entirely (the queue's C codec),
and a function is pickled once and cached on both sides.

Knowing which task a dead worker had
------------------------------------
Records leave the task ring in the order they were put, and the parent is the only
producer, so the n-th record ever taken is the n-th task ever put: its *ordinal*.  A
worker takes a task with ``_get_claim``, which stores the ordinal in the worker's
slot (shared memory) *before* the record leaves the ring; after the result is sent
the slot is cleared.  When a worker dies, its slot and the ring's count of records
taken say exactly whether it had a task and which: only that task fails.  The
"worker died" record travels on the result ring behind anything the worker sent
before dying, so a result that made it out is never reported as lost.

Cancelled calls
---------------
An Executor call cancelled while its record is still in the task ring is marked: the
word ``ordinal % _MARK_WORDS`` of a table after the workers' slots holds
``_CLAIMED | ordinal`` (set by compare-and-swap from 0, popped by compare-and-swap
back to 0: each mark exact, whatever else the table holds), and a word before the
table counts the marks, so that a worker looks only while there are any.  The table
has a word for every record the ring can hold at once (``_MARK_WORDS``: a record
takes at least 16 bytes), so the records in the ring, consecutive ordinals, never
share a word; a word still taken by a mark of an earlier record (taken, its mark
not yet popped: a moment) makes ``cancel()`` wait for it.  (Before #11 the marks
were keys of a SharedDict: a segment more for every Executor and every worker to
make, map and let go of, for the rare call that is cancelled.)

``cancel()`` counts and marks first, then looks whether the record was taken; a
worker takes the record first, then pops the mark.  Whoever pops the mark decides,
exactly once: the worker skips the call (it never runs, and the future is
cancelled); ``cancel()`` popping it back means a worker took the record before it
could see the mark, so the call runs and the future is running.  A call cancelled
while it waits in the parent for room in the ring is never pushed.

Starting a worker
-----------------
A worker's ``Process`` arguments are the two rings, the slots, the size of the table
of cancel marks (0 for a Pool), its slot, the parent's token, the initializer's
record (``(initializer, initargs)`` pickled by shoal, so lambdas go) and
``maxtasksperchild``.  Initargs that record
cannot carry (``multiprocessing``'s Queue, Lock, Value: they may only be inherited)
go as a ``Process`` argument of their own, with the record holding ``None`` in their
place: inherited under fork, pickled by ``start()`` under spawn and forkserver, as
in the standard library (#11).  A spawn or forkserver child imports the main module
before it gets these; one that starts a pool during that import (a script with no
``__main__`` guard) exits with ``_BOOTSTRAP_EXIT`` before its pid is in its slot,
and the pool fails instead of replacing it for ever.
"""

from __future__ import annotations

import _thread
import builtins
import collections
import concurrent.futures
import functools
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import multiprocessing.util
import os
import queue
import signal
import sys
import threading
import time
import traceback
import types
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from multiprocessing.pool import RemoteTraceback
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import (
    _core,
    _dict,  # noqa: F401  (a sweep here must know every class in shared memory)
)
from ._errors import (
    BrokenPoolError,
    ClosedError,
    SerializationError,
    ShoalError,
    ShutDown,
    TaskTimeoutError,
    UncollectedTaskErrorWarning,
    WorkerDiedError,
)
from ._handle import sent_references
from ._memory import reap, report_unraisable
from ._process import process_cpu_count
from ._queues import Queue
from ._record import FAST_TUPLE_MAX, TAG_TRANSIT
from ._serialize import discard, dumps, loads, pack
from ._sharedctypes import RawArray

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "Executor",
    "IMapIterator",
    "MapResult",
    "Pool",
    "worker_state",
]

_S = TypeVar("_S")
_T = TypeVar("_T")
if TYPE_CHECKING:  # (typing has ParamSpec from 3.10 on; only checkers need it)
    from typing_extensions import ParamSpec

    _P = ParamSpec("_P")

# task record: (function pickle, kind, timeout seconds or 0.0, *payload)
_CALL, _CALL_KW, _MAP, _STARMAP = range(4)
# result record: (ordinal, status, *values); ordinal _MARKER for the monitor's records
_OK, _OK_PICKLED, _ERROR, _SKIPPED, _BAD_TASK = range(5)  # _BAD_TASK: did not unpickle
_MARKER = -1
_DIED, _WAKE, _SETUP_FAILED, _MAIN_REIMPORTED = range(4)
# the exit status of a process that tried to start a pool while it was still importing
# the main module, as spawn and forkserver children do (see _refuse_while_bootstrapping)
_BOOTSTRAP_EXIT = 87
# workers in a row that fail before they start (and none ever did) before the pool
# gives up on them (see _Engine._failed_before_start); at least one per slot
_START_FAILURES = 3

# a worker's slot, one 64-bit word each: what it claimed (CLAIMED | ordinal), its
# task's deadline (monotonic ns, 0: none), its pid once it unpickled its arguments,
# 1 if its initializer raised.  After the last slot, one word: how many cancel marks
# are set, then (an Executor's) the table of marks (see "Cancelled calls" above).
_CLAIM, _DEADLINE, _PID, _SETUP_RAISED = range(4)
_SLOT_WORDS = 4
_CLAIMED = 1 << 63
_ORDINAL_MASK = 0xFFFFFFFF

_TASK_RING_BYTES = 256 << 10
# a word for every record the task ring can hold at once (each takes 16 bytes or more:
# an 8-byte header and a payload padded to 8), a power of two dividing 2**32 (ordinals
# wrap there)
_MARK_WORDS = _TASK_RING_BYTES // 16
# how long cancel() waits for a word of the table that a mark of an earlier record
# still holds (popped a moment after that record was taken) before it gives up
_MARK_WAIT_S = 1.0
_RESULT_RING_BYTES = 256 << 10
_RESULT_BATCH = 512
# a worker looks for its parent this often, and exits if it is gone
_PARENT_CHECK_S = 1.0
# how often the monitor looks at the deadlines, once any task has a timeout
_CHECK_TIMEOUTS_S = 0.02
_FUNC_CACHE_SIZE = 64
_CHUNKS_PER_WORKER = 16
# Test-only, read once as a worker starts: "POINT:TOKEN" makes the worker that removes
# the file TOKEN SIGKILL itself at POINT of the protocol above (see _test_hooks);
# unset, the worker's loop calls the plain functions.
_TEST_HOOK_ENV = "SHOAL_TEST_POOL_HOOK"
_FAST_VALUES = FAST_TUPLE_MAX - 2  # (the fast codec's tuples: two of the items are ours)

_worker_state: dict[str, Any] = {}


def worker_state() -> dict[str, Any]:
    """A dict that lives as long as the current worker process.

    Set it up once per worker in the pool's ``initializer`` (a database connection, a
    loaded model...) and read it in every task the worker runs.  Each worker starts
    with an empty one (also under ``fork``); outside a pool worker it is just this
    process's own dict.
    """
    return _worker_state


# ---- the worker -------------------------------------------------------------------------


def _worker_main(
    tasks: Queue,
    results: Queue,
    slots: RawArray,
    marks: int,
    slot: int,
    parent_token: int,
    setup: bytes | None,
    maxtasks: int | None,
    start_initargs: tuple | None = None,
) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what
    # happens to the pool, workers carry on until told
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_state.clear()
    # the bare thread, not threading.Thread: its start() waits until the new thread
    # has run, a round trip through the scheduler that delayed a worker's first task
    # by up to 20 ms on a busy machine (#11).  Nothing ever joins this thread: it
    # ends with the process (as a daemon thread does).
    _thread.start_new_thread(_exit_with_parent, (parent_token,))
    buf = slots._buf
    claim_at, deadline_at, pid_at, raised_at = (
        slots._off + (slot * _SLOT_WORDS + word) * 8
        for word in (_CLAIM, _DEADLINE, _PID, _SETUP_RAISED)
    )
    # the count of cancel marks, then the table of marks (``marks`` words, 0: none)
    marked_at = slots._off + (len(slots) - 1 - marks) * 8
    table_at = marked_at + 8
    if setup is not None:
        try:
            initializer, initargs = loads(setup)
            if initargs is None:  # they came with the process start (_setup_record)
                initargs = start_initargs
            _core.store64(buf, pid_at, os.getpid())  # all arguments unpickled
            initializer(*initargs)
        except BaseException as exc:
            # every replacement would fail the same way: the pool stops instead
            _core.store64(buf, raised_at, 1)
            _send_error(results, _MARKER, exc, _SETUP_FAILED)
            raise SystemExit(1) from None
    _core.store64(buf, pid_at, os.getpid())
    get_claim, send_values, send_error = tasks._get_claim, _send_values, _send_error
    hook = os.environ.get(_TEST_HOOK_ENV)
    if hook:
        get_claim, send_values, send_error = _test_hooks(hook, tasks, get_claim)
    functions: dict[bytes, Any] = {}
    done = 0
    while maxtasks is None or done < maxtasks:
        try:
            task = get_claim(buf, claim_at)
        except BaseException as exc:
            # the record was taken but could not be unpickled (SystemExit from a
            # __reduce__ included): fail that task
            claim = _core.load64(buf, claim_at)
            if not claim & _CLAIMED:
                raise
            send_error(results, claim & _ORDINAL_MASK, exc, _BAD_TASK)
            _core.store64(buf, claim_at, 0)
            done += 1
            continue
        if task is None:  # the pool is closing
            _core.store64(buf, claim_at, 0)
            return
        claim = _core.load64(buf, claim_at)
        ordinal = claim & _ORDINAL_MASK
        if (
            marks
            and _core.load64(buf, marked_at)
            and _core.cas64(buf, table_at + (ordinal % marks) * 8, _CLAIMED | ordinal, 0)[0]
        ):
            _core.fetch_add64(buf, marked_at, -1)
            results.put((ordinal, _SKIPPED))  # its future was cancelled
            task = None
            _core.store64(buf, claim_at, 0)
            continue
        try:
            function = functions.get(task[0])
            if function is None:
                function = loads(task[0])
                if _cacheable(function):
                    if len(functions) >= _FUNC_CACHE_SIZE:
                        functions.clear()
                    functions[task[0]] = function
            values = _run(function, task, buf, deadline_at)
        except BaseException as exc:
            send_error(results, ordinal, exc)
        else:
            send_values(results, ordinal, values)
            del values
        # let go of the call's arguments and result now, not when the next task comes
        # (an open file, shared memory, a big array), as ProcessPoolExecutor's worker
        task = function = None
        _core.store64(buf, claim_at, 0)
        done += 1


def _cacheable(function: Any) -> bool:
    """Whether a worker may keep ``function`` for the next calls: a function or a
    class, not an object holding a call's data (a bound method's object, a
    ``functools.partial``'s arguments), which goes when its call ended."""
    if isinstance(function, type):
        return True
    if not isinstance(function, (types.FunctionType, types.BuiltinFunctionType)):
        return False
    owner = getattr(function, "__self__", None)
    return owner is None or isinstance(owner, types.ModuleType)


def _test_hooks(spec: str, tasks: Queue, get_claim: Callable[..., Any]) -> tuple:
    """The worker's get_claim, send_values and send_error with a death at one point:

    * "claimed": its claim written, the record still in the ring.  (Stored here as
      ``_get_claim`` stores it, once a record is there; exact where this worker is the
      only consumer: a pool of one.)
    * "sending": a result (or error) computed, about to go on the result ring.
    * "sent": the result on the ring, the slot not yet cleared.

    Only the worker that removes the file named after the colon dies, once.
    """
    point, _, token = spec.partition(":")
    if point not in ("claimed", "sending", "sent") or not token:
        raise ValueError(f"{_TEST_HOOK_ENV}={spec!r}: want claimed|sending|sent:FILE")

    def won() -> bool:
        try:
            os.unlink(token)
        except FileNotFoundError:
            return False
        return True

    def fire() -> None:
        if won():
            os.kill(os.getpid(), signal.SIGKILL)

    def claim_then_die(buf: Any, at: int, *args: Any) -> Any:
        if won():
            deadline = time.monotonic() + 10
            while not tasks._qsize() and time.monotonic() < deadline:
                time.sleep(0.001)
            _core.store64(buf, at, _CLAIMED | tasks._taken)
            os.kill(os.getpid(), signal.SIGKILL)
        return get_claim(buf, at, *args)

    def around(send: Callable[..., None]) -> Callable[..., None]:
        def hooked(*args: Any) -> None:
            if point == "sending":
                fire()
            send(*args)
            if point == "sent":
                fire()

        return hooked

    if point == "claimed":
        return claim_then_die, _send_values, _send_error
    return get_claim, around(_send_values), around(_send_error)


# Forks of shoal's own engines, one at a time: a child forked while another is being
# started inherits that one's sentinel pipe and keeps it open (see _open_pidfd).
_START_LOCK = threading.Lock()


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once it ended), or None where there is none.

    A process's sentinel is a pipe whose write end the worker holds, and any process
    forked at that moment (by another thread of the parent) inherits it, so the
    sentinel stays silent while that one lives.  A pidfd says only whether that very
    process ended.  Elsewhere, and if it cannot be had (a forkserver child already
    reaped), the sentinel serves.
    """
    if hasattr(os, "pidfd_open"):
        try:
            return os.pidfd_open(pid)
        except OSError:
            pass
    return None


def _exit_with_parent(parent_token: int) -> None:
    # an orphaned worker would run on (and hold its segments) with nobody to report to,
    # busy or idle: it goes as soon as it sees the parent gone
    while _core.token_alive(parent_token):
        time.sleep(_PARENT_CHECK_S)
    try:
        # shoal's exit hooks: let go of the shared memory, so that the last worker
        # out unlinks it instead of leaving it to the next reaper
        multiprocessing.util._run_finalizers()
    finally:
        os._exit(1)


def _run(function: Callable[..., Any], task: tuple[Any, ...], buf: Any, deadline_at: int) -> tuple:
    kind, timeout = task[1], task[2]
    items: Iterator[Any] = itertools.islice(task, 3, None)
    if timeout:  # the monitor kills the worker once the deadline passes
        limit_ns = int(timeout * 1e9)
        if kind in (_MAP, _STARMAP):  # per item
            items = _deadline_each(items, buf, deadline_at, limit_ns)
        else:
            _core.store64(buf, deadline_at, time.monotonic_ns() + limit_ns)
    try:
        if kind == _CALL:
            return (function(*task[3:]),)
        if kind == _MAP:
            return tuple(map(function, items))
        if kind == _STARMAP:
            return tuple(itertools.starmap(function, items))
        return (function(*task[3], **task[4]),)
    finally:
        if timeout:
            _core.store64(buf, deadline_at, 0)


def _deadline_each(items: Iterator[Any], buf: Any, at: int, limit_ns: int) -> Iterator[Any]:
    for item in items:
        _core.store64(buf, at, time.monotonic_ns() + limit_ns)
        yield item


def _send_values(results: Queue, ordinal: int, values: tuple) -> None:
    # a few scalars go as they are (the queue's C codec); a chunk's results are pickled
    if len(values) <= _FAST_VALUES and results._put_fast((ordinal, _OK, *values)):
        return
    try:
        record = results._record(values)
    except SerializationError as error:
        _send_error(results, ordinal, _unpicklable(values, error))
        return
    except BaseException as error:
        # no room in /dev/shm for a big result, say, or a __reduce__ that raised
        # SystemExit: it is that task's error, as with ProcessPoolExecutor, and the
        # worker carries on (escaping, it killed the worker: a WorkerDiedError)
        _send_error(results, ordinal, error)
        return
    results.put((ordinal, _OK_PICKLED, record))


def _unpicklable(values: tuple, error: SerializationError) -> SerializationError:
    """The error naming the value that cannot be pickled, not the tuple carrying it."""
    for value in values:
        with sent_references() as sent:
            try:
                dumps(value)
            except SerializationError as culprit:
                return culprit
            sent.cancel()  # a trial: this pickle goes nowhere
    return error


def _argument_error(
    job: Any, records: list[tuple], error: SerializationError
) -> SerializationError:
    """The error naming the call and the argument, not the task record carrying them."""
    values: list[Any] = []
    for record in records:
        if record[1] == _CALL_KW:
            values += [*record[3], *record[4].values()]
        else:
            values += record[3:]
    culprit = _unpicklable(tuple(values), error)
    return type(culprit)(  # a SerializationTypeError stays a TypeError (#11)
        f"cannot send {job._description} to a worker: {culprit}",
        type_name=culprit.type_name,
    )


def _send_error(results: Queue, ordinal: int, exc: BaseException, status: int = _ERROR) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        record = results._record(exc)
        if record[0] != TAG_TRANSIT:  # (that would use the transit segment up)
            loads(record)  # an exception that does not unpickle would be lost on the way
    except BaseException:  # (a __reduce__ may raise SystemExit)
        record = None
    try:
        if record is None:
            record = results._record(ShoalError(f"{type(exc).__qualname__}: {exc}"))
        results.put((ordinal, status, record, text))
    except (ClosedError, ShutDown):
        raise
    except Exception as error:
        # too big to send whole with /dev/shm full, say: a short error in its place
        # (escaping, it killed the worker)
        if record is not None:
            discard(record)
        message, why = str(exc), str(error)
        short = ShoalError(
            f"{type(exc).__qualname__}: {message[:200]}{'...' * (len(message) > 200)} "
            f"(too big to send whole: {type(error).__name__}: {why[:300]})"
        )
        results.put((ordinal, status, results._record(short), text[-4000:]))


# ---- jobs: what the caller holds ------------------------------------------------------


class _Job:
    """A unit the caller waits on, made of one or more tasks (chunks)."""

    _engine: _Engine
    _bar: Any = None  # a tqdm bar, for progress=True

    def _describe(self, index: int) -> str:
        raise NotImplementedError

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _deliver(self, index: int, values: tuple) -> None:
        raise NotImplementedError

    def _fail(self, index: int, exc: BaseException) -> None:
        raise NotImplementedError


def _describe_call(function: Any, args: tuple = (), kwds: dict | None = None) -> str:
    name = getattr(function, "__qualname__", None) or repr(function)
    parts = [_short_repr(a) for a in args]
    parts += [f"{k}={_short_repr(v)}" for k, v in (kwds or {}).items()]
    text = f"{name}({', '.join(parts)})"
    return text if len(text) <= 200 else text[:197] + "..."


def _describe_items(name: str, first: int, count: int) -> str:
    if count == 1:
        return f"{name} on item {first}"
    return f"{name} on items {first} to {first + count - 1}"


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


class AsyncResult(_Job, Generic[_T]):
    """The result of ``Pool.apply_async`` (and the base of ``map_async``'s).

    Like :class:`multiprocessing.pool.AsyncResult`: ``get``, ``wait``, ``ready``,
    ``successful``.  A task that fails while nobody collects it (no ``get()``, no
    ``successful()``, no ``error_callback``) is reported when the pool is joined.
    """

    def __init__(
        self,
        engine: _Engine,
        callback: Callable[[_T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._engine = engine
        self._callback = callback
        self._error_callback = error_callback
        self._done = False
        self._ok = False
        self._value: Any = None
        self._collected = error_callback is not None
        self._what: Any = ""  # a description, or (func, args, kwds) to make one from

    @property
    def _description(self) -> str:
        if isinstance(self._what, tuple):  # made on demand: most calls never need it
            self._what = _describe_call(*self._what)
        return self._what

    def ready(self) -> bool:
        """True once the call has finished (returned or raised)."""
        return self._done

    def successful(self) -> bool:
        """True if the call returned without raising.

        Raises:
            ValueError: the result is not ready yet.
        """
        if not self._done:
            raise ValueError(f"{self!r} not ready")
        self._collected = True
        return self._ok

    def wait(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the result."""
        if not self._done:
            self._engine._wait_for(lambda: self._done, timeout)

    def get(self, timeout: float | None = None) -> _T:
        """Return the result, waiting up to ``timeout`` seconds; re-raise its exception.

        Raises:
            multiprocessing.TimeoutError: not ready within ``timeout``.
            WorkerDiedError: the worker running the task died.
            TaskTimeoutError: the task ran past the pool's ``task_timeout``.
            Exception: whatever the task raised (its remote traceback is the
                ``__cause__``).
        """
        self.wait(timeout)
        if not self._done:
            raise multiprocessing.TimeoutError
        self._collected = True
        if self._ok:
            return self._value
        raise self._value

    def _set(self, ok: bool, value: Any) -> None:
        # no lock: a waiter counts itself in _waiters before it checks _done, and the
        # result thread notifies waiters after each batch (_Engine._notify)
        self._ok, self._value, self._done = ok, value, True
        if ok:
            if self._callback is not None:
                _call_back(self._callback, value)
        elif self._error_callback is not None:
            _call_back(self._error_callback, value)
        elif not self._collected:
            self._engine._uncollected.append(self)

    def _describe(self, index: int) -> str:
        return self._description

    def _deliver(self, index: int, values: tuple) -> None:
        self._set(True, values[0])

    def _fail(self, index: int, exc: BaseException) -> None:
        self._set(False, exc)

    def __repr__(self) -> str:
        state = "pending" if not self._done else "ok" if self._ok else "failed"
        return f"<shoal.{type(self).__name__} {self._description or ''} {state}>"


ApplyResult = AsyncResult


class MapResult(AsyncResult[list[_T]]):
    """The result of ``Pool.map_async``/``starmap_async``: a list, in input order."""

    def __init__(
        self,
        engine: _Engine,
        length: int,
        chunksize: int,
        callback: Callable[[list[_T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        bar: Any,
    ) -> None:
        super().__init__(engine, callback, error_callback)
        self._length, self._chunksize = length, chunksize
        self._name = ""  # the function's, for _describe
        chunks = -(-length // chunksize)
        self._parts: list[tuple | None] = [None] * chunks
        self._left = chunks
        self._bar = bar
        if not chunks:
            self._set(True, [])

    def _deliver(self, index: int, values: tuple) -> None:
        if self._done:
            return
        self._parts[index] = values
        self._left -= 1
        if self._bar is not None:
            self._bar.update(len(values))
        if self._left == 0:
            self._close_bar()
            self._set(True, list(itertools.chain.from_iterable(self._parts)))  # type: ignore[arg-type]

    def _fail(self, index: int, exc: BaseException) -> None:
        if self._done:
            return
        self._close_bar()
        self._parts = []
        self._set(False, exc)

    def _describe(self, index: int) -> str:
        first = index * self._chunksize
        return _describe_items(self._name, first, min(self._chunksize, self._length - first))


class IMapIterator(_Job, Generic[_T]):
    """What ``Pool.imap``/``imap_unordered`` return: results as they become ready.

    The input is read lazily, a few chunks ahead of the workers, so an endless
    generator works.  ``next(timeout)`` raises ``multiprocessing.TimeoutError``.
    """

    def __init__(
        self,
        engine: _Engine,
        function_record: bytes,
        kind: int,
        items: Iterator[Any],
        chunksize: int,
        timeout: float,
        ordered: bool,
        bar: Any,
        description: str,
    ) -> None:
        self._engine = engine
        self._function_record = function_record
        self._kind = kind
        self._items = items
        self._chunksize = chunksize
        self._timeout = timeout
        self._ordered = ordered
        self._bar = bar
        self._description = description
        self._feed_lock = threading.RLock()  # a failing input re-enters via _outcome
        self._exhausted = False
        self._submitted = 0  # chunks sent
        self._sizes: dict[int, int] = {}
        self._ready: dict[int, tuple[bool, Any]] = {}  # ordered: chunk index -> outcome
        self._unordered: collections.deque[tuple[bool, Any]] = collections.deque()
        self._next_chunk = 0
        self._buffer: collections.deque[Any] = collections.deque()
        self._got: tuple[bool, Any] | None = None  # the outcome _arrived took
        # chunks sent and not yet taken by the consumer: a slow consumer (or none)
        # holds the input back instead of buffering results without end
        self._window = 4 * engine.processes

    def _feed(self) -> None:
        """Send chunks until ``_window`` are out (sent, not consumed) or the input ends."""
        with self._feed_lock:
            while not self._exhausted and self._submitted - self._next_chunk < self._window:
                try:
                    chunk = tuple(itertools.islice(self._items, self._chunksize))
                except BaseException as exc:  # the input itself raised: report it there
                    self._exhausted = True
                    index = self._submitted
                    self._submitted += 1
                    self._sizes[index] = 0
                    self._engine._deliver_local(self, index, exc)
                    break
                if not chunk:
                    self._exhausted = True
                    break
                index = self._submitted
                self._sizes[index] = len(chunk)
                record = (self._function_record, self._kind, self._timeout, *chunk)
                self._submitted += 1
                try:
                    self._engine._submit(self, [index], [record])
                except BaseException as exc:
                    self._engine._deliver_local(self, index, exc)
            if self._exhausted:
                self._engine._notify()  # a consumer may wait for the end

    def _deliver(self, index: int, values: tuple) -> None:
        self._outcome(index, True, values)

    def _fail(self, index: int, exc: BaseException) -> None:
        self._outcome(index, False, exc)

    def _outcome(self, index: int, ok: bool, value: Any) -> None:
        if self._ordered:
            self._ready[index] = (ok, value)
        else:
            self._unordered.append((ok, value))
        if self._bar is not None:
            self._bar.update(len(value) if ok else self._sizes.get(index, 0))
        self._feed()

    def _describe(self, index: int) -> str:
        first = index * self._chunksize
        return _describe_items(self._description, first, self._sizes.get(index, 0))

    def __iter__(self) -> IMapIterator[_T]:
        return self

    def _take(self) -> tuple[bool, Any] | None:
        if self._ordered:
            return self._ready.pop(self._next_chunk, None)
        return self._unordered.popleft() if self._unordered else None

    def _all_taken(self) -> bool:
        return self._exhausted and self._next_chunk >= self._submitted

    def next(self, timeout: float | None = None) -> _T:
        """The next result, waiting up to ``timeout`` seconds for it."""
        while not self._buffer:
            self._engine._wait_for(self._arrived, timeout)
            got, self._got = self._got, None
            if got is None:
                if self._all_taken():
                    self._close_bar()
                    raise StopIteration
                raise multiprocessing.TimeoutError
            self._next_chunk += 1
            self._feed()
            ok, value = got
            if not ok:
                self._close_bar()
                raise value
            self._buffer.extend(value)
        return self._buffer.popleft()

    def _arrived(self) -> bool:
        if self._got is None:
            self._got = self._take()
        return self._got is not None or self._all_taken()

    __next__ = next


class _FutureJob(_Job):
    """An Executor task: one call's future, or a chunk of ``map``'s (a list)."""

    def __init__(self, engine: _Engine, description: str, chunk: bool = False) -> None:
        self._engine = engine
        self._future = _Future(self)
        self._description = description
        self._chunk = chunk
        self._ordinal: int | None = None  # set when the task goes on the ring

    def _describe(self, index: int) -> str:
        return self._description

    def _deliver(self, index: int, values: tuple) -> None:
        if _start(self._future):
            self._future.set_result(list(values) if self._chunk else values[0])

    def _fail(self, index: int, exc: BaseException) -> None:
        if _start(self._future):
            self._future.set_exception(exc)

    def _taken(self) -> bool:
        """Whether a worker took the task off the ring (it runs, or ran)."""
        engine = self._engine
        if self._ordinal is None or engine._released:
            return False
        return engine.was_taken(self._ordinal)


# set_running_or_notify_cancel() on a running future logs CRITICAL before it raises:
# these look at the state first, under the future's own lock
_PENDING, _RUNNING = concurrent.futures._base.PENDING, concurrent.futures._base.RUNNING
_CANCELLED_STATES = (
    concurrent.futures._base.CANCELLED,
    concurrent.futures._base.CANCELLED_AND_NOTIFIED,
)


def _start(future: concurrent.futures.Future) -> bool:
    """Mark ``future`` running if it is not yet; False if it was cancelled."""
    with future._condition:  # type: ignore[attr-defined]
        if future._state == _RUNNING:  # type: ignore[attr-defined]
            return True  # running() or cancel() found a worker had it
        return future.set_running_or_notify_cancel()


class _Future(concurrent.futures.Future):
    """A Future that knows when a worker has its task: from then on it is running and
    ``cancel()`` says no, as for ``ProcessPoolExecutor``."""

    def __init__(self, job: _FutureJob) -> None:
        super().__init__()
        self._job = job

    def _mark_running_if_taken(self) -> None:
        with self._condition:
            if self._state == _PENDING and self._job._taken():
                self.set_running_or_notify_cancel()

    def running(self) -> bool:
        """True while a worker runs the call."""
        self._mark_running_if_taken()
        return super().running()

    def cancel(self) -> bool:
        """Cancel the call unless a worker has taken it; True if cancelled.

        A call still waiting in shared memory is marked there, so the worker that
        takes it skips it: a cancelled call never runs.  A call a worker took is
        running and is not cancelled.
        """
        job = self._job
        engine = job._engine
        with self._condition:
            if self._state != _PENDING or engine._released:
                return super().cancel()  # done
            if job._ordinal is None:
                with engine._push_lock:  # what _push_overflow decides under
                    if job._ordinal is None:  # still in the parent: it is never pushed
                        return super().cancel()
            # mark first, then look: a worker that takes it from now on pops the mark
            if not engine.mark_cancelled(job):
                # no word for the mark (see "Cancelled calls"): the call runs; running
                # already if a worker took it meanwhile
                if job._taken():
                    self.set_running_or_notify_cancel()
                return False
            if job._taken() and engine.unmark_cancelled(job._ordinal):
                # a worker took it before the mark was there: it runs
                self.set_running_or_notify_cancel()
                return False
            return super().cancel()  # the worker that takes it (or took it) skips it


def _call_back(callback: Callable[[Any], object], value: Any) -> None:
    try:
        callback(value)
    except BaseException as exc:  # a callback must not take the pool's thread down
        report_unraisable(exc)


# ---- the engine -------------------------------------------------------------------------


_RUN, _CLOSE, _TERMINATE = "running", "closed", "terminated"


class _Engine:
    """Workers, the two rings and the parent's two threads, shared by Pool and Executor."""

    def __init__(
        self,
        processes: int | None,
        initializer: Callable[..., object] | None,
        initargs: Iterable[Any],
        maxtasksperchild: int | None,
        context: Any,
        task_timeout: float | None,
        uncollected_errors: str,
        name: str,
        cancellable: bool = False,
    ) -> None:
        _refuse_while_bootstrapping()
        if processes is None:
            processes = process_cpu_count()
        if not isinstance(processes, int) or isinstance(processes, bool):
            raise TypeError(f"processes must be an int, not {type(processes).__name__}")
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int)
            or isinstance(maxtasksperchild, bool)
            or maxtasksperchild < 1
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self.task_timeout = _check_timeout(task_timeout)
        if uncollected_errors not in ("warn", "raise", "ignore"):
            raise ValueError(
                "uncollected_errors must be 'warn', 'raise' or 'ignore', "
                f"not {uncollected_errors!r}"
            )
        self.processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._initargs_at_start = False  # see _setup_record
        self._ever_started = False  # see _failed_before_start
        self._start_failures = 0
        self._maxtasks = maxtasksperchild
        self._context = context if context is not None else multiprocessing.get_context()
        self._uncollected_mode = uncollected_errors
        self._name = name
        self.state = _RUN

        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        # re-entered when a task failed while pushing feeds an imap's next chunk
        self._push_lock = threading.RLock()
        self._pushed = 0  # records ever put on the task ring (its ordinals)
        self._inflight: dict[int, tuple[_Job, int, float]] = {}  # ordinal -> job, index, timeout
        self._overflow: collections.deque[tuple[_Job, int, tuple]] = collections.deque()
        self._outstanding = 0  # tasks submitted, not finished
        self._finished = 0  # tasks finished, not yet counted out of _outstanding
        self._uncollected: list[AsyncResult] = []
        self._function_records: dict[int, tuple[weakref.ref, bytes]] = {}
        self._timed_out: dict[int, tuple[int, float]] = {}  # slot -> (ordinal, timeout)
        self._timeouts_used = self.task_timeout > 0
        self._broken: BaseException | None = None
        self._released = False  # the rings and slots are closed
        self._join_lock = threading.Lock()  # one join at a time (see _join_executors)
        self._pid = os.getpid()  # (a forked child inherits this object, not the pool)
        self._terminated = False  # terminate() was called (not close())

        self._tasks = Queue(capacity=_TASK_RING_BYTES)
        self._results = Queue(capacity=_RESULT_RING_BYTES)
        # Executor calls cancelled in the ring have a table of marks (a Pool has no cancel)
        self._mark_words = _MARK_WORDS if cancellable else 0
        self._slots = RawArray("q", processes * _SLOT_WORDS + 1 + self._mark_words)
        self._marked_at = self._slots._off + processes * _SLOT_WORDS * 8
        # the class of a task's exception's __cause__, as the standard library's
        self._traceback_class = _RemoteTraceback if cancellable else RemoteTraceback
        self._workers: list[Any] = [None] * processes
        self._sent: list[Any] = [None] * processes  # see _start_worker
        self._pidfds: list[int | None] = [None] * processes  # see _open_pidfd
        self._wake_r, self._wake_w = os.pipe()
        self._token = _core.self_token()
        self._started = 0
        try:
            for slot in range(processes):
                self._start_worker(slot)
        except BaseException:
            self._kill_workers()
            self._release()
            raise
        self._result_thread = threading.Thread(
            target=self._handle_results, name=f"{name}-results", daemon=True
        )
        self._monitor_thread = threading.Thread(
            target=self._monitor, name=f"{name}-monitor", daemon=True
        )
        self._result_thread.start()
        self._monitor_thread.start()

    # ---- workers ----------------------------------------------------------------------

    def _slot_word(self, slot: int, word: int) -> int:
        slots = self._slots
        return _core.load64(slots._buf, slots._off + (slot * _SLOT_WORDS + word) * 8)

    def _start_worker(self, slot: int) -> None:
        base = slot * _SLOT_WORDS
        for word in range(_SLOT_WORDS):
            self._slots[base + word] = 0
        self._started += 1
        method = self._context.get_start_method()
        # spawn and forkserver pickle the arguments in start(): the handles in them
        # take references in flight, which a worker killed before it unpickles them
        # would leave behind for ten minutes.  Kept here, they are settled when the
        # worker ends: given back if it never got as far as storing its pid.
        with sent_references() as sent:
            setup, initargs = self._setup_record()
            process = self._context.Process(
                target=_worker_main,
                args=(
                    self._tasks,
                    self._results,
                    self._slots,
                    self._mark_words,
                    slot,
                    self._token,
                    setup,
                    self._maxtasks,
                    initargs,
                ),
                name=f"{method.capitalize()}{self._name}Worker-{self._started}",
                daemon=True,
            )
            with _START_LOCK:
                try:
                    process.start()
                except (OSError, EOFError):
                    # 3.14's forkserver imports the main module itself before it
                    # serves (its preload): one that left at once, refusing a pool
                    # started by that import, fails the pool with the one error
                    if method == "forkserver" and _forkserver_status() == _BOOTSTRAP_EXIT:
                        raise BrokenPoolError(_main_guard_message(method)) from None
                    raise
            self._sent[slot] = sent.keep()
        self._pidfds[slot] = _open_pidfd(process.pid)
        self._workers[slot] = process

    def _setup_record(self) -> tuple[bytes | None, tuple | None]:
        """What a worker gets to run the initializer: (its record, initargs that go as
        the Process's own arguments, or None where they are in the record).

        The record is pickled by shoal (lambdas and closures go, as tasks do).  Initargs
        it cannot carry -- a ``multiprocessing.Queue``, ``Lock`` or ``Value``, which may
        only be inherited -- go with the process start instead, as in the standard
        library (#11): inherited under fork, pickled by ``start()`` under spawn and
        forkserver, where multiprocessing allows them.  Decided once per pool."""
        if self._initializer is None:
            return None, None
        if not self._initargs_at_start:
            try:
                return self._tasks._record((self._initializer, self._initargs), kept=False), None
            except SerializationError:
                self._initargs_at_start = True
        return self._tasks._record((self._initializer, None), kept=False), self._initargs

    def _failed_before_start(self, slot: int, exitcode: int | None) -> bool:
        """Whether workers keep failing before they start: ``_START_FAILURES`` of them
        (at least one a slot) in a row exited with status 1 before storing their pid,
        and none ever stored it.  Under spawn and forkserver that is the main script
        raising as each worker imports it (unguarded code, a ``set_start_method()``
        without ``force=True``...); replacing them would go on for ever."""
        if self._ever_started or self._context.get_start_method() == "fork":
            return False
        if self._slot_word(slot, _PID) or any(
            self._slot_word(other, _PID) for other in range(self.processes)
        ):
            self._ever_started = True
            return False
        if exitcode != 1:
            return False
        self._start_failures += 1
        return self._start_failures >= max(_START_FAILURES, self.processes)

    def _death_handles(self) -> dict[int, int]:
        """What becomes readable when each live worker ends: handle -> slot."""
        return {
            process.sentinel if self._pidfds[slot] is None else self._pidfds[slot]: slot
            for slot, process in enumerate(self._workers)
            if process is not None
        }

    def _close_pidfd(self, slot: int) -> None:
        pidfd, self._pidfds[slot] = self._pidfds[slot], None
        if pidfd is not None:
            os.close(pidfd)

    def _settle_start(self, slot: int) -> None:
        """Settle the references in flight of the ended worker's arguments."""
        sent = self._sent[slot]
        self._sent[slot] = None
        if sent is None:
            return
        if self._slot_word(slot, _PID):
            sent.release()  # it unpickled them
        else:
            sent.cancel()

    def _monitor(self) -> None:
        """Notice dead workers at once (their sentinels), replace them, enforce timeouts."""
        while True:
            with self._cond:
                state, busy = self.state, self._outstanding > 0
            if state == _TERMINATE:
                return
            live = self._death_handles()
            if not live and state != _RUN and not busy:
                return
            timeout = _CHECK_TIMEOUTS_S if self._timeouts_used else None
            ready = multiprocessing.connection.wait([*live, self._wake_r], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            for handle in ready:
                if handle != self._wake_r:
                    self._worker_ended(live[handle])
            if self._timeouts_used:
                self._enforce_timeouts()

    def _worker_ended(self, slot: int) -> None:
        process = self._workers[slot]
        process.join()
        self._close_pidfd(slot)
        claim = self._slot_word(slot, _CLAIM)
        ordinal = -1
        # it took the record, not just claimed it (the claim is written first)
        if claim & _CLAIMED and self.was_taken(claim & _ORDINAL_MASK):
            ordinal = claim & _ORDINAL_MASK
        self._workers[slot] = None
        self._settle_start(slot)
        with self._cond:
            if self.state == _TERMINATE:
                return
            replace = self.state == _RUN or self._outstanding > 0
            replace = replace and not self._slot_word(slot, _SETUP_RAISED)
            # it never got its arguments: re-importing a main module without a
            # __main__ guard, it tried to start a pool itself.  Each replacement would
            # do the same, for ever (what the standard library's pool does)
            reimported = process.exitcode == _BOOTSTRAP_EXIT and not self._slot_word(slot, _PID)
            failed_start = not reimported and self._failed_before_start(slot, process.exitcode)
            replace = replace and not reimported and not failed_start
        if reimported or failed_start:
            self._results.put((_MARKER, _MAIN_REIMPORTED, bool(failed_start)))
        # behind anything the worker sent before it died (the same ring, later)
        self._results.put((_MARKER, _DIED, slot, process.pid, process.exitcode, ordinal))
        if replace:
            try:
                self._start_worker(slot)
            except Exception as exc:  # out of processes or memory: keep the others going
                _call_back(_raise, exc)
        if process.exitcode != 0:
            # killed, or gone without its exit hooks: the references it held are given
            # back from its ledger now (shoal._handle), not at some later sweep
            try:
                reap()
            except Exception as exc:
                report_unraisable(exc)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic_ns()
        for slot, process in enumerate(self._workers):
            if process is None or slot in self._timed_out:
                continue
            deadline = self._slot_word(slot, _DEADLINE)
            if not deadline or deadline > now:
                continue
            claim = self._slot_word(slot, _CLAIM)
            # stop it, then look again: it may have finished that task meanwhile
            try:
                os.kill(process.pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            same = self._slot_word(slot, _CLAIM) == claim
            if same and self._slot_word(slot, _DEADLINE) == deadline:
                ordinal = claim & _ORDINAL_MASK
                entry = self._inflight.get(ordinal)
                self._timed_out[slot] = (ordinal, entry[2] if entry else 0.0)
                os.kill(process.pid, signal.SIGKILL)
            os.kill(process.pid, signal.SIGCONT)

    def _kill_workers(self) -> None:
        for process in self._workers:
            if process is not None and process.exitcode is None:
                process.kill()
        for process in self._workers:
            if process is not None:
                process.join()  # killed: it ends (waitpid, not the sentinel; see _death_handle)

    # ---- submitting -------------------------------------------------------------------

    def function_record(self, function: Callable[..., Any]) -> bytes:
        """The pickle of ``function``, cached: most tasks reuse one function."""
        if not callable(function):
            raise TypeError(f"{type(function).__name__!r} object is not callable")
        cached = self._function_records.get(id(function))
        if cached is not None and cached[0]() is function:
            return cached[1]
        by_value = _needs_by_value(function)
        with sent_references() as sent:
            data, buffers = dumps(function, by_value)
            reusable = len(sent) == 0 and buffers is None
        if buffers is not None:
            data = pack(data, buffers, self._tasks._handle)
        if reusable:  # a pickle holding shoal handles may be unpickled only once
            try:
                # weakly: a call done must not keep its callable (a bound method's
                # object, say) alive, as ProcessPoolExecutor's does not
                ref = weakref.ref(function)
            except TypeError:
                return data  # not cached (a weakref-less callable is rare)
            if len(self._function_records) >= _FUNC_CACHE_SIZE:
                self._function_records.clear()
            self._function_records[id(function)] = (ref, data)
        return data

    def was_taken(self, ordinal: int) -> bool:
        """Whether the task ring's record ``ordinal`` has left it (wrapping at 2**32)."""
        return 0 < (self._tasks._taken - ordinal) & _ORDINAL_MASK < (1 << 31)

    def _mark_at(self, ordinal: int) -> int:
        return self._marked_at + 8 + (ordinal % self._mark_words) * 8

    def mark_cancelled(self, job: _FutureJob) -> bool:
        """Tell the worker that takes this task to skip it (counted before it is set:
        a worker that finds the count zero took its task before the mark).  False if
        a worker took the task while its word of the table was still held by the mark
        of an earlier record (see "Cancelled calls"): nothing is marked."""
        assert self._mark_words and job._ordinal is not None
        ordinal = job._ordinal
        buf, at = self._slots._buf, self._mark_at(ordinal)
        _core.fetch_add64(buf, self._marked_at, 1)
        deadline = None
        while not _core.cas64(buf, at, 0, _CLAIMED | ordinal)[0]:
            if deadline is None:
                deadline = time.monotonic() + _MARK_WAIT_S
            if job._taken() or time.monotonic() > deadline:
                _core.fetch_add64(buf, self._marked_at, -1)
                return False
            time.sleep(0.0005)
        return True

    def unmark_cancelled(self, ordinal: int) -> bool:
        """Take the mark back; False if it is gone (the worker that took the task
        popped it: it skips the task)."""
        buf = self._slots._buf
        if not self._mark_words or not _core.load64(buf, self._marked_at):
            return False
        if not _core.cas64(buf, self._mark_at(ordinal), _CLAIMED | ordinal, 0)[0]:
            return False
        _core.fetch_add64(buf, self._marked_at, -1)
        return True

    def _forget_mark(self, job: _Job, ordinal: int) -> None:
        """Drop the mark of a cancelled call that no worker will pop (taken back, or its
        worker failed or died before it looked), so that workers stop looking.  Only
        once its future is cancelled: a cancel() still deciding pops its own."""
        if self._mark_words and type(job) is _FutureJob and job._future.cancelled():
            self.unmark_cancelled(ordinal)

    def use_timeouts(self) -> None:
        """From now on the monitor looks at the workers' deadlines."""
        if not self._timeouts_used:
            self._timeouts_used = True
            self._poke()

    def check_running(self, closed_ok: bool = False) -> None:
        """Raise unless tasks may be submitted (``closed_ok``: also after close())."""
        if self._broken is not None:
            raise self._broken
        if self.state == _TERMINATE or (self.state == _CLOSE and not closed_ok):
            how = "terminated" if self._terminated else "closed"
            raise ClosedError(f"Pool not running (it was {how})")

    def _submit(self, job: _Job, indexes: list[int], records: list[tuple]) -> None:
        """Put the tasks on the ring (pickled here: errors raise in the caller)."""
        entries = list(zip(itertools.repeat(job), indexes, records))
        with self._push_lock:
            # checked again under the lock that _fail_outstanding takes: a task put
            # after the pool broke or was terminated would wait for ever.  (Closed is
            # fine: an imap started before close() goes on reading its input.)
            self.check_running(closed_ok=True)
            with self._cond:
                self._outstanding += len(entries)
            if self._overflow:  # behind those already waiting: the ring keeps order
                self._overflow.extend(entries)
                return
            try:
                rest = self._push(entries)
            except BaseException as error:
                with self._cond:
                    self._outstanding -= len(entries)
                if isinstance(error, SerializationError):
                    raise _argument_error(job, records, error) from error
                raise
            if rest:
                self._overflow.extend(rest)
                # the result thread pushes these as results make room; the tasks that
                # filled the ring may all have finished already, and the result thread
                # gone back to waiting: wake it so that it looks at the overflow
                try:
                    self._results._put_fast((_MARKER, _WAKE), False)
                except queue.Full:
                    pass  # results to handle: it will look anyway

    def _push(self, entries: list[tuple[_Job, int, tuple]]) -> list[tuple[_Job, int, tuple]]:
        """Put what fits on the ring now; return the rest.  The caller holds _push_lock."""
        first = self._pushed  # ordinals are assigned in ring order
        for k, (job, index, record) in enumerate(entries):
            self._inflight[(first + k) & _ORDINAL_MASK] = (job, index, record[2])
            if type(job) is _FutureJob:
                job._ordinal = (first + k) & _ORDINAL_MASK
        try:
            put = self._tasks.put_many([entry[2] for entry in entries], block=False)
        except queue.Full as full:
            put = full.items_put  # type: ignore[attr-defined]
        except BaseException:  # nothing was put
            put = 0
            raise
        finally:
            for k in range(put, len(entries)):
                del self._inflight[(first + k) & _ORDINAL_MASK]
                job = entries[k][0]
                if type(job) is _FutureJob:  # not on the ring: that ordinal goes to another
                    job._ordinal = None
            self._pushed = first + put
        return entries[put:]

    def _push_overflow(self) -> None:
        failed: list[tuple[_Job, int, tuple]] = []
        cancelled: list[tuple[_Job, int, tuple]] = []
        with self._push_lock:
            batch = []
            while self._overflow and len(batch) < 1024:
                entry = self._overflow.popleft()
                job = entry[0]
                # cancelled while it waited here (decided under this lock): never
                # pushed.  (Its state read bare: cancel() holds the future's lock
                # when it takes this one, so taking that one here could deadlock.)
                if type(job) is _FutureJob and job._future._state in _CANCELLED_STATES:
                    cancelled.append(entry)
                else:
                    batch.append(entry)
            try:
                self._overflow.extendleft(reversed(self._push(batch)))
            except BaseException as exc:  # a record that pickled once fails now
                failed, error = batch, exc
        # failed outside the lock: failing feeds an imap, which takes its own lock
        for job, index, _ in failed:
            self._finish(job, index, False, error)
        for job, index, _ in cancelled:  # (counted out; the future stays cancelled)
            self._finish(job, index, False, concurrent.futures.CancelledError())

    def _deliver_local(self, job: _Job, index: int, exc: BaseException) -> None:
        """Fail a task that never reached a worker (its input raised, say)."""
        with self._cond:
            self._outstanding += 1
        self._finish(job, index, False, exc)

    # ---- results ----------------------------------------------------------------------

    def _handle_results(self) -> None:
        results = self._results
        while True:
            try:
                records = results._get_many(_RESULT_BATCH)
            except ClosedError:
                return
            except BaseException as exc:  # cannot happen (results are pickled twice),
                records = getattr(exc, "items", [])  # but the thread must never die
                _call_back(_raise, exc)
            for record in records:
                try:
                    if self._handle_result(record):
                        return
                except BaseException as exc:  # a bug must not hang every caller
                    _call_back(_raise, exc)
            self._notify_batch()
            if self._overflow:
                self._push_overflow()

    def _handle_result(self, record: tuple) -> bool:
        """Act on one record of the result ring; True when the thread should end."""
        ordinal, status = record[0], record[1]
        if ordinal == _MARKER:
            if status == _SETUP_FAILED:
                self._setup_failed(_remote_error(record[2], record[3], self._traceback_class))
            elif status == _MAIN_REIMPORTED:
                self._main_reimported(record[2])
            elif status == _WAKE:
                return self._finished_all()
            else:
                self._worker_died(*record[2:])
            return False
        entry = self._inflight.pop(ordinal, None)
        if entry is None:
            return False  # taken back by cancel_queued, or failed by terminate
        job, index, _ = entry
        if status == _OK:
            self._finish(job, index, True, record[2:], False)
        elif status == _SKIPPED:  # cancelled (a race with cancel(): it says so)
            self._finish(job, index, False, concurrent.futures.CancelledError(), False)
        elif status == _OK_PICKLED:
            try:
                values = loads(record[2])
            except BaseException as exc:
                # what unpickling raised is the task's outcome, SystemExit included:
                # escaping here, it left the task pending for ever
                self._finish(job, index, False, self._unreadable(job, index, exc), False)
            else:
                self._finish(job, index, True, values, False)
        else:
            self._forget_mark(job, ordinal)  # (its arguments failed before the look)
            error = _remote_error(record[2], record[3], self._traceback_class)
            if status == _BAD_TASK and type(job) is _FutureJob:
                # as ProcessPoolExecutor reports it (its worker dies of it); only
                # this call fails here
                broken = BrokenProcessPool(
                    f"the arguments of {job._describe(index)} could not be unpickled "
                    f"in the worker: {type(error).__name__}: {error}; only this call failed"
                )
                broken.__cause__ = error
                error = broken
            self._finish(job, index, False, error, False)
        return False

    def _unreadable(self, job: _Job, index: int, exc: BaseException) -> BaseException:
        """The outcome of a result that failed to unpickle here.

        A Pool task gets what unpickling raised.  An Executor call gets a
        ``BrokenProcessPool``, as ``ProcessPoolExecutor`` reports it, caused by what
        unpickling raised; ``ProcessPoolExecutor`` also breaks the whole pool and fails
        every pending call, where here only this call fails (docs/compatibility.md).
        """
        if type(job) is not _FutureJob:
            return exc
        error = BrokenProcessPool(
            f"the result of {job._describe(index)} could not be unpickled in the parent: "
            f"{type(exc).__name__}: {exc}; only this call failed"
        )
        error.__cause__ = exc
        return error

    def _finish(self, job: _Job, index: int, ok: bool, value: Any, notify: bool = True) -> None:
        try:
            if ok:
                job._deliver(index, value)
            else:
                job._fail(index, value)
        finally:
            if notify:
                with self._cond:
                    self._outstanding -= 1
                self._notify()
            else:  # the result thread's batch: counted out by its _notify_batch
                self._finished += 1

    def _notify_batch(self) -> None:
        with self._cond:
            self._outstanding -= self._finished
            self._finished = 0
            if self._waiters:
                self._cond.notify_all()

    def _notify(self) -> None:
        """Wake whoever waits for a result or for the pool to drain."""
        with self._cond:
            if self._waiters:
                self._cond.notify_all()

    def _worker_died(self, slot: int, pid: int, exitcode: int, ordinal: int) -> None:
        timed_out = self._timed_out.pop(slot, None)
        if ordinal < 0:
            return
        entry = self._inflight.pop(ordinal, None)
        if entry is None:
            return  # its result made it out before it died
        job, index, _ = entry
        self._forget_mark(job, ordinal)  # it may have died before it looked
        description = job._describe(index)
        if timed_out is not None and timed_out[0] == ordinal:
            limit = timed_out[1]
            exc: BaseException = TaskTimeoutError(
                f"{description} ran longer than its timeout of {limit:g} s: worker {pid} "
                "was killed and replaced",
                timeout=limit,
                pid=pid,
                task=description,
            )
        else:
            exc = WorkerDiedError(
                f"worker {pid} {_how_it_ended(exitcode)} while running {description}; "
                "the pool replaced it",
                pid=pid,
                exitcode=exitcode,
                task=description,
            )
        self._finish(job, index, False, exc)

    def _setup_failed(self, exc: BaseException) -> None:
        if self._broken is not None:
            return
        broken = BrokenPoolError(
            f"the pool's initializer raised {type(exc).__name__}: {exc}; the pool "
            "cannot start workers and is broken"
        )
        broken.__cause__ = exc
        self._broken = broken
        self._fail_outstanding(broken)

    def _main_reimported(self, failed: bool) -> None:
        if self._broken is not None:
            return
        method = self._context.get_start_method()
        main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
        if failed:
            self._broken = BrokenPoolError(
                f"the pool's workers cannot start: {self._start_failures} in a row exited "
                "with status 1 before they started, and none ever did.  Under the "
                f"{method!r} start method each worker first imports {main}; that "
                "import most likely raised (see the tracebacks above), as code outside "
                "an 'if __name__ == \"__main__\":' block does there.  Put everything but "
                "imports and definitions under 'if __name__ == \"__main__\":'."
            )
            self._fail_outstanding(self._broken)
            return
        self._broken = BrokenPoolError(_main_guard_message(method))
        self._fail_outstanding(self._broken)

    def _finished_all(self) -> bool:
        with self._cond:
            return self.state == _TERMINATE or (self.state == _CLOSE and self._outstanding == 0)

    def _wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        if predicate():
            return True
        with self._cond:
            self._waiters += 1
            try:
                return self._cond.wait_for(predicate, timeout)
            finally:
                self._waiters -= 1

    # ---- ending -----------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            if self.state == _RUN:
                self.state = _CLOSE
        self._poke()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every task, then for the workers to exit."""
        if self.state == _RUN:
            raise ValueError("join() before close() or terminate()")
        done = self._wait_for(lambda: self._outstanding == 0 or self.state == _TERMINATE, timeout)
        if not done:
            return False
        with self._join_lock:
            if self._released:
                return True
            if self.state == _CLOSE:
                self._stop_workers()
            self._shut_threads()
            try:
                self._report_uncollected()
            finally:
                self._release()
        return True

    def _stop_workers(self) -> None:
        with self._cond:
            self.state = _TERMINATE  # no replacements from here on
        # one "exit" record a slot, sent first: the workers exit while the monitor
        # stops, instead of after (#11).  No more workers than slots are ever alive (a
        # replacement the monitor may still be starting takes the record of the worker
        # it replaces), so each one takes a record; what is left goes with the ring
        try:
            self._tasks.put_many([None] * self.processes, timeout=5)
        except Exception:
            pass
        # the monitor may be starting a replacement it decided on before: let it finish
        # and stop, or the list below would miss that worker
        self._poke()
        self._monitor_thread.join(10)
        handles = list(self._death_handles())
        deadline = time.monotonic() + 5  # then they are killed
        while handles and time.monotonic() < deadline:
            ended = multiprocessing.connection.wait(handles, deadline - time.monotonic())
            handles = [h for h in handles if h not in ended]
        self._kill_workers()

    def terminate(self) -> None:
        self._terminated = True
        with self._cond:
            was = self.state
            self.state = _TERMINATE
        if was == _TERMINATE and self._released:
            return
        # the monitor first (it may be starting a replacement): killing workers while
        # a forkserver starts another one delayed the forkserver's exit reports by
        # seconds; once the monitor is gone nobody starts anything
        self._shut_threads()
        self._kill_workers()
        try:
            self._report_uncollected()
        finally:
            self._fail_outstanding(ClosedError("the pool was terminated before this task finished"))
            self._release()

    def _fail_outstanding(self, exc: BaseException) -> None:
        with self._push_lock:
            entries = [(job, index) for job, index, _ in self._inflight.values()]
            entries += [(job, index) for job, index, _ in self._overflow]
            self._inflight.clear()
            self._overflow.clear()
        for job, index in entries:
            if isinstance(job, AsyncResult):
                job._collected = True  # the pool's doing, not the task's: not reported
            self._finish(job, index, False, exc)

    def cancel_queued(self) -> list[_Job]:
        """Take back the tasks no worker has started; return their jobs."""
        jobs = []
        scratch = bytearray(8)
        marked: list[tuple[_Job, int]] = []
        with self._push_lock:
            jobs += [job for job, _, _ in self._overflow]
            taken = len(self._overflow)
            self._overflow.clear()
            while True:
                try:
                    self._tasks._get_claim(scratch, 0, False)
                except queue.Empty:
                    break
                except Exception:
                    pass
                ordinal = int.from_bytes(scratch, "little") & _ORDINAL_MASK
                entry = self._inflight.pop(ordinal, None)
                if entry is not None:
                    jobs.append(entry[0])
                    marked.append((entry[0], ordinal))
                    taken += 1
        with self._cond:
            self._outstanding -= taken
            self._cond.notify_all()
        for job, ordinal in marked:  # (outside the push lock: cancel() takes it second)
            self._forget_mark(job, ordinal)  # no worker will look for it
        return jobs

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        try:
            if not self._results.closed:
                self._results.put((_MARKER, _WAKE))
        except Exception:
            pass

    def _shut_threads(self) -> None:
        self._poke()
        for thread in (self._monitor_thread, self._result_thread):
            if thread is not threading.current_thread():
                thread.join(10)

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for slot in range(self.processes):
            self._settle_start(slot)
            self._close_pidfd(slot)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        for obj in (self._tasks, self._results, self._slots):
            obj.close()

    def _report_uncollected(self) -> None:
        failed = [r for r in self._uncollected if not r._collected]
        self._uncollected = []
        if not failed or self._uncollected_mode == "ignore":
            return
        errors = [r._value for r in failed]
        first = failed[0]
        cause = errors[0].__cause__
        detail = str(cause) if isinstance(cause, RemoteTraceback) else ""
        message = (
            f"{len(failed)} pool task(s) failed and nobody collected the error (no get(), "
            f"successful() or error_callback); the first, {first._description}, raised "
            f"{type(errors[0]).__name__}: {errors[0]}{detail}"
        )
        if self._uncollected_mode == "raise":
            group = getattr(builtins, "ExceptionGroup", None)  # Python 3.11+
            if group is None:
                raise errors[0]
            raise group(message, errors)
        warnings.warn(UncollectedTaskErrorWarning(message), stacklevel=_caller_stacklevel())


def _refuse_while_bootstrapping() -> None:
    """Exit at once, silently, from a process that starts a pool while it is still
    importing the main module: a spawn or forkserver child running a script that has
    no ``if __name__ == "__main__":`` guard.  The standard library raises here (from
    ``Process.start``), the pool that started this child replaces it, the replacement
    does the same: a hundred tracebacks and a parent that hangs.  This exit status
    tells the parent's pool instead, which fails with one error naming the fix.
    (The forkserver importing the main module to preload it, from 3.14 on, leaves
    with it too: see _forkserver_status.)"""
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        # The forkserver itself imports the main module too, from 3.14 on, before it
        # serves (its preload; 3.13's never passed it the main path).  There the
        # standard library's error (a pool's first start) would end the server with
        # its traceback and leave the parent a ConnectionResetError: it leaves the
        # same way, quietly, and the parent's pool finds this status (_start_worker).
        # Not SystemExit: a forkserver child turns any exception into exit status 1.
        # shoal's exit hooks first: let go of what this import made
        try:
            multiprocessing.util._run_finalizers()
        finally:
            os._exit(_BOOTSTRAP_EXIT)


def _main_guard_message(method: str) -> str:
    """Why a pool whose workers import an unguarded main script cannot start."""
    main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
    return (
        f"the pool's workers cannot start: under the {method!r} start method each "
        f"worker imports {main}, and that import started a pool (or executor) "
        "itself, as it runs the program's code outside an "
        "'if __name__ == \"__main__\":' block.  Put the code that starts the pool "
        "(everything but imports and definitions) under "
        "'if __name__ == \"__main__\":', or use the 'fork' start method.  See "
        "'Safe importing of main module' in the multiprocessing documentation."
    )


def _forkserver_status(wait_s: float = 2.0) -> int | None:
    """The exit status of this process's forkserver if it has exited (waiting up to
    ``wait_s`` for a server whose connection just closed to finish exiting), else
    None.  The server stays a zombie for the standard library to reap (WNOWAIT): its
    next start sees it gone and starts another."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if not isinstance(pid, int) or not hasattr(os, "waitid"):
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None  # reaped already, or not this process's child
        if info is not None and info.si_pid == pid:
            return info.si_status if info.si_code == os.CLD_EXITED else None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def _needs_by_value(function: Any) -> bool:
    """Whether ``function`` must travel by value: one of ``__main__`` that the workers'
    ``__main__`` will not have (a notebook cell, the REPL, ``exec``).  One defined in
    the main script goes by name, as with the standard library: the workers import
    the script too, and the function then shares its module's globals (what an
    ``initializer`` sets up), which a copy by value would not."""
    if getattr(function, "__module__", None) != "__main__":
        return False
    code = getattr(function, "__code__", None)
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if code is None or script is None:
        return True
    return _realpath(code.co_filename) != _realpath(script)


@functools.lru_cache(maxsize=64)
def _realpath(path: str) -> str:
    """``os.path.realpath``, once per path: it costs a few system calls, and every pool
    or executor asks it of its first function (#11).  (Scripts are not moved while
    they run.)"""
    return os.path.realpath(path)


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside this module (for warnings)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _remote_error(
    record: bytes, text: str, traceback_class: type[Exception] = RemoteTraceback
) -> BaseException:
    """The task's exception, its ``__cause__`` the worker's traceback as the standard
    library gives it: ``multiprocessing.pool.RemoteTraceback`` for a Pool,
    ``concurrent.futures.process._RemoteTraceback`` for an Executor, both holding the
    formatted traceback between triple quotes (their ``tb``, and their ``str``)."""
    try:
        exc = loads(record)
    except BaseException as error:  # (SystemExit too: the task must still fail)
        exc = ShoalError(f"a task failed and its exception could not be unpickled: {error}")
    if not isinstance(exc, BaseException):
        exc = ShoalError(f"a task failed with {exc!r}")
    exc.__cause__ = traceback_class(f'\n"""\n{text}"""')
    return exc


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _raise(exc: BaseException) -> None:
    raise exc


def _check_timeout(timeout: float | None) -> float:
    if timeout is None:
        return 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    return float(timeout)


def _finalize_engine(engine: _Engine) -> None:
    if not engine._released:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            engine.terminate()


# The engines of live Executors.  Like ProcessPoolExecutor, which joins its executors
# from threading._register_atexit, every call submitted runs before the interpreter
# exits, also when nobody called shutdown(): the hook runs as the main thread ends,
# before atexit (where shoal's shared memory goes) and before threading joins the
# other non-daemon threads.
_executor_engines: weakref.WeakSet[_Engine] = weakref.WeakSet()
_exiting = False


def _join_executors() -> None:
    global _exiting
    _exiting = True
    for engine in list(_executor_engines):
        if engine._pid != os.getpid() or engine._released:
            continue  # a forked child's copy of its parent's executor, or done
        try:
            engine.close()
            engine.join()
        except BaseException as exc:
            report_unraisable(exc)


threading._register_atexit(_join_executors)  # type: ignore[attr-defined]


def _executor_dropped(engine: _Engine) -> None:
    """An Executor was collected without shutdown(): as ProcessPoolExecutor, its calls
    still run (and their futures complete), then the workers go."""
    if engine._released or engine._pid != os.getpid():
        return
    if _exiting:  # after the exit hook (it failed?): nobody will wait any more
        _finalize_engine(engine)
        return
    engine.close()
    threading.Thread(target=engine.join, name="Executor-dropped", daemon=True).start()


_bar_class: Any = None


def _make_bar(progress: Any, total: int | None, description: str) -> Any:
    global _bar_class
    if not progress:
        return None
    if _bar_class is None:
        from tqdm.auto import tqdm  # only when asked: tqdm imports a good deal

        class _Bar(tqdm):  # type: ignore[misc, valid-type]
            # no monitor thread: it stayed for the life of the process, and every fork
            # after it (the standard library's too) warned that the process is
            # multi-threaded (3.12+; an error under -W error from 3.15)
            monitor_interval = 0

        _bar_class = _Bar
    options = {"total": total, "desc": description}
    if isinstance(progress, dict):
        options.update(progress)
    elif isinstance(progress, str):
        options["desc"] = progress
    return _bar_class(**options)


# ---- Pool -------------------------------------------------------------------------------


class Pool:
    """A process pool with :class:`multiprocessing.pool.Pool`'s API that survives its
    workers.

    Args:
        processes: number of workers (default: the CPUs this process may use,
            affinity and cgroup quota included).
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker as
            it starts (set up :func:`worker_state` there).
        maxtasksperchild: a worker exits after this many tasks (chunks) and is
            replaced.
        context: a multiprocessing (or shoal) context: which start method workers use.
        task_timeout: seconds a task (each item of a map) may run; past it the task
            fails with :class:`~shoal.TaskTimeoutError` and its worker is replaced.
        uncollected_errors: what ``join()``/``terminate()`` do about failed
            ``apply_async``/``map_async`` results nobody collected: "warn"
            (:class:`~shoal.UncollectedTaskErrorWarning`), "raise" (an
            ``ExceptionGroup``) or "ignore".

    When a worker dies (SIGKILL, segfault, ``os._exit``), only the task it was
    running fails, with :class:`~shoal.WorkerDiedError` naming the pid, the signal
    or exit code and the task; the worker is replaced and everything else carries
    on.  Functions may be lambdas or closures (cloudpickle), and shoal queues, locks
    and shared objects are ordinary arguments.  ``with Pool() as p:`` terminates
    the pool on exit, as the standard library's does.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        task_timeout: float | None = None,
        uncollected_errors: str = "warn",
    ) -> None:
        self._engine = _Engine(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context,
            task_timeout,
            uncollected_errors,
            "Pool",
        )
        self._processes = self._engine.processes
        self._finalizer = weakref.finalize(self, _finalize_engine, self._engine)

    @property
    def processes(self) -> int:
        """The number of workers."""
        return self._engine.processes

    def _timeout(self, timeout: float | None) -> float:
        return _check_timeout(timeout) if timeout is not None else self._engine.task_timeout

    # ---- one call ---------------------------------------------------------------------

    def apply(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> _T:
        """Call ``func(*args, **kwds)`` in a worker and return its result."""
        return self.apply_async(func, args, kwds, timeout=timeout).get()

    def apply_async(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[_T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> AsyncResult[_T]:
        """Call ``func(*args, **kwds)`` in a worker; return an :class:`AsyncResult`.

        The arguments are pickled here: one that cannot be raises
        :class:`~shoal.SerializationError` now.  ``callback``/``error_callback`` run
        in the pool's result thread.  ``timeout`` (seconds) overrides the pool's
        ``task_timeout`` for this call.
        """
        engine = self._engine
        engine.check_running()
        args = tuple(args)
        limit = self._timeout(timeout)
        function = engine.function_record(func)
        if kwds:
            record: tuple = (function, _CALL_KW, limit, args, dict(kwds))
        else:
            record = (function, _CALL, limit, *args)
        result: AsyncResult[_T] = AsyncResult(engine, callback, error_callback)
        result._what = (func, args, kwds)
        if limit:
            engine.use_timeouts()
        engine._submit(result, [0], [record])
        return result

    # ---- many calls -------------------------------------------------------------------

    def map(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = None,
        *,
        progress: Any = False,
        timeout: float | None = None,
    ) -> list[_T]:
        """``[func(x) for x in iterable]`` across the workers, in order.

        ``progress=True`` shows a tqdm bar (a string: its description; a dict: tqdm
        options).  ``timeout`` limits each item's run time.
        """
        return self._map_async(func, iterable, chunksize, _MAP, None, None, progress, timeout).get()

    def map_async(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = None,
        callback: Callable[[list[_T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        progress: Any = False,
        timeout: float | None = None,
    ) -> MapResult[_T]:
        """Like :meth:`map`, returning a :class:`MapResult` at once."""
        return self._map_async(
            func, iterable, chunksize, _MAP, callback, error_callback, progress, timeout
        )

    def starmap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        progress: Any = False,
        timeout: float | None = None,
    ) -> list[_T]:
        """``[func(*args) for args in iterable]`` across the workers, in order."""
        return self._map_async(
            func, iterable, chunksize, _STARMAP, None, None, progress, timeout
        ).get()

    def starmap_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[_T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        progress: Any = False,
        timeout: float | None = None,
    ) -> MapResult[_T]:
        """Like :meth:`starmap`, returning a :class:`MapResult` at once."""
        return self._map_async(
            func, iterable, chunksize, _STARMAP, callback, error_callback, progress, timeout
        )

    def _map_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Any],
        chunksize: int | None,
        kind: int,
        callback: Callable[[list[_T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        progress: Any,
        timeout: float | None,
    ) -> MapResult[_T]:
        engine = self._engine
        engine.check_running()
        items = list(iterable)
        if kind == _STARMAP:
            items = [tuple(args) for args in items]
        size = _chunksize(chunksize, len(items), engine.processes)
        limit = self._timeout(timeout)
        function = engine.function_record(func)
        starts = range(0, len(items), size)
        name = getattr(func, "__qualname__", None) or repr(func)
        bar = _make_bar(progress, len(items), name)
        result: MapResult[_T] = MapResult(engine, len(items), size, callback, error_callback, bar)
        result._name = name
        result._what = f"{name} over {len(items)} items"
        if items:
            if limit:
                engine.use_timeouts()
            records = [(function, kind, limit, *items[i : i + size]) for i in starts]
            try:
                engine._submit(result, list(range(len(records))), records)
            except BaseException:
                result._close_bar()
                raise
        return result

    def imap(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = 1,
        *,
        progress: Any = False,
        timeout: float | None = None,
    ) -> IMapIterator[_T]:
        """Yield ``func(x)`` for each ``x`` of ``iterable``, in order, as results come.

        The input is consumed lazily (an endless generator is fine).  ``chunksize``
        None picks one from the input's length, when it has one.
        """
        return self._imap(func, iterable, chunksize, _MAP, True, progress, timeout)

    def imap_unordered(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = 1,
        *,
        progress: Any = False,
        timeout: float | None = None,
    ) -> IMapIterator[_T]:
        """Like :meth:`imap`, yielding results in the order they finish."""
        return self._imap(func, iterable, chunksize, _MAP, False, progress, timeout)

    def istarmap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = 1,
        *,
        progress: Any = False,
        timeout: float | None = None,
    ) -> IMapIterator[_T]:
        """Like :meth:`imap`, calling ``func(*args)``."""
        return self._imap(func, iterable, chunksize, _STARMAP, True, progress, timeout)

    def _imap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Any],
        chunksize: int | None,
        kind: int,
        ordered: bool,
        progress: Any,
        timeout: float | None,
    ) -> IMapIterator[_T]:
        engine = self._engine
        engine.check_running()
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        if chunksize is None:
            size = _chunksize(None, total, engine.processes) if total is not None else 1
        else:
            size = _chunksize(chunksize, 1, 1)
        items: Iterator[Any] = iter(iterable)
        if kind == _STARMAP:
            items = map(tuple, items)
        limit = self._timeout(timeout)
        if limit:
            engine.use_timeouts()
        name = getattr(func, "__qualname__", repr(func))
        iterator: IMapIterator[_T] = IMapIterator(
            engine,
            engine.function_record(func),
            kind,
            items,
            size,
            limit,
            ordered,
            _make_bar(progress, total, name),
            name,
        )
        iterator._feed()
        return iterator

    # ---- ending -----------------------------------------------------------------------

    def close(self) -> None:
        """No more tasks: workers exit once the submitted ones are done."""
        self._engine.close()

    def terminate(self) -> None:
        """Stop the workers now; unfinished tasks fail with ClosedError."""
        self._finalizer.detach()
        self._engine.terminate()

    def join(self) -> None:
        """Wait for the submitted tasks and the workers (after close or terminate).

        Reports failed results nobody collected (see ``uncollected_errors``).
        """
        self._engine.join()
        self._finalizer.detach()

    def __enter__(self) -> Pool:
        self._engine.check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        engine = self._engine
        return (
            f"<shoal.Pool state={engine.state} processes={engine.processes} "
            f"outstanding={engine._outstanding}>"
        )


def _chunksize(chunksize: int | None, n: int, processes: int) -> int:
    if chunksize is None:
        # about sixteen chunks per worker (the standard library makes four): the first
        # chunk reaches a worker sooner and the last result arrives sooner, so sending,
        # running and collecting overlap more; a chunk costs a few microseconds
        size, extra = divmod(n, processes * _CHUNKS_PER_WORKER)
        return max(1, size + bool(extra))
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize}")
    return chunksize


# ---- Executor -------------------------------------------------------------------------


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` on shoal's surviving workers.

    Like ``ProcessPoolExecutor`` (same arguments), except that a dead worker fails
    only the future it was running (with :class:`~shoal.WorkerDiedError`, also a
    ``BrokenProcessPool``) and the executor keeps working.  ``task_timeout`` limits
    each call's run time (:class:`~shoal.TaskTimeoutError`).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        self._engine = _Engine(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            mp_context,
            task_timeout,
            "ignore",
            "Executor",
            cancellable=True,
        )
        self._shutdown_lock = threading.Lock()
        _executor_engines.add(self._engine)
        self._finalizer = weakref.finalize(self, _executor_dropped, self._engine)

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> concurrent.futures.Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; return a Future."""
        if kwargs:
            return self._submit(fn, _CALL_KW, (args, kwargs), _describe_call(fn, args, kwargs))
        return self._submit(fn, _CALL, args, _describe_call(fn, args))

    def _submit(
        self, fn: Callable[..., Any], kind: int, payload: tuple, description: str
    ) -> concurrent.futures.Future:
        with self._shutdown_lock:
            engine = self._engine
            if engine._broken is not None:
                raise engine._broken
            if engine.state != _RUN:
                raise RuntimeError("cannot schedule new futures after shutdown")
            job = _FutureJob(engine, description, chunk=kind in (_MAP, _STARMAP))
            try:
                record = (engine.function_record(fn), kind, engine.task_timeout, *payload)
                engine._submit(job, [0], [record])
            except SerializationError as error:
                # as ProcessPoolExecutor: the call fails in its future, not in submit(),
                # so that `[ex.submit(f, x) for x in xs]` gets every other future
                job._fail(0, error)
            return job._future

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[_T]:
        """Like ``ProcessPoolExecutor.map``: results in order, ``chunksize`` calls a task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        end = None if timeout is None else time.monotonic() + timeout
        # one iterable: its items as they are (no 1-tuples to build, pickle and unpack)
        kind, calls = (
            (_MAP, iter(iterables[0])) if len(iterables) == 1 else (_STARMAP, zip(*iterables))
        )
        name = getattr(fn, "__qualname__", repr(fn))
        futures = []
        while chunk := tuple(itertools.islice(calls, chunksize)):
            futures.append(self._submit(fn, kind, chunk, f"{name} (chunk of {len(chunk)})"))

        def results() -> Iterator[_T]:
            try:
                futures.reverse()
                while futures:
                    left = None if end is None else end - time.monotonic()
                    yield from futures.pop().result(left)
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Ctrl-C (or SystemExit) leaving the block: the standard library waits for
            # every running call first, which is what the user is trying to stop
            self._stop_taking(cancel_futures=True)
            self._finalizer.detach()
            self._engine.terminate()  # the running calls fail with ClosedError
            return False
        self.shutdown(wait=True)
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; with ``cancel_futures``, cancel what no worker started."""
        engine = self._stop_taking(cancel_futures)
        if engine._released:
            return  # shut down before
        if wait:
            engine.join()
            self._finalizer.detach()
        else:  # the tasks already submitted still run; someone must wait for them
            threading.Thread(target=engine.join, name="Executor-shutdown", daemon=True).start()

    def _stop_taking(self, cancel_futures: bool) -> _Engine:
        with self._shutdown_lock:
            engine = self._engine
            if engine.state == _RUN:
                engine.close()
            if cancel_futures:
                for job in engine.cancel_queued():
                    if isinstance(job, _FutureJob):
                        future = job._future  # taken back, never run
                        if not concurrent.futures.Future.cancel(future) and not future.done():
                            # a cancel() racing with this one found the record taken
                            # (by us) and made it running: it ends now, never run
                            future.set_exception(concurrent.futures.CancelledError())
        return engine
