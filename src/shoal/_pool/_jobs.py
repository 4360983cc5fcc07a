"""What the caller holds: the results and futures a pool hands out, and how each is
settled.

``AsyncResult``/``MapResult`` (a Pool's ``apply_async``/``map_async``),
``IMapIterator`` (``imap``/``imap_unordered``, feeding its input lazily) and, for an
Executor, ``_FutureJob`` with its ``_Future`` (a ``concurrent.futures.Future`` whose
``cancel()`` marks the call in shared memory, or stops it running).  Each is a
``_Job``: the engine's result thread calls ``_deliver``/``_fail`` for each of its tasks
(chunks), and ``_describe`` names a task in errors.  Nothing here touches shared memory
itself: it asks the engine (``_wait_for``, ``_submit``, ``take_back``,
``stop_running``...).

asyncio (#14): results are awaitable (``await result``, ``get_async``,
``async for`` over an ``IMapIterator``, ``await future``) with no thread per await: an
awaiting coroutine puts an asyncio future in its job's ``_awaiters`` (under the
engine's lock, after looking at the job), and the result thread, having delivered to
the job, takes the list under the same lock and resolves each through its loop's
``call_soon_threadsafe``: one wake-up of the loop per job delivered (``_until``,
``_wake_awaiters``).  A coroutine cancelled while it awaits a result cancels the pool
task (``cancel()``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._aio import resolve_soon
from .._errors import TaskCancelledError
from .._memory import report_unraisable

if TYPE_CHECKING:  # (annotations only: the engine imports this module)
    import asyncio

    from ._engine import _Engine

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "MapResult"]

_T = TypeVar("_T")


# ---- jobs: what the caller holds ------------------------------------------------------


class _Job:
    """A unit the caller waits on, made of one or more tasks (chunks)."""

    _engine: _Engine
    _bar: Any = None  # a tqdm bar, for progress=True
    _cancelled = False  # its tasks still in the parent are never sent (cancel())
    # each task's ordinal once on the ring (None before), for cancel(); None: not kept
    _ordinals: list[int | None] | None = None
    # coroutines awaiting it: (loop, future), resolved by _wake_awaiters
    _awaiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None

    def _describe(self, index: int) -> str:
        raise NotImplementedError

    def _take_awaiters(self) -> list[Any] | None:
        """The coroutines to wake (the caller holds the engine's ``_cond``)."""
        awaiters, self._awaiters = self._awaiters, None
        return awaiters

    def _wake_awaiters(self) -> None:
        """Wake the coroutines awaiting this job (it changed: the result thread)."""
        with self._engine._cond:
            awaiters = self._take_awaiters()
        _wake(awaiters)

    async def _until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Await ``predicate()`` (looked at under the engine's lock, as ``_wait_for``
        does) for up to ``timeout`` seconds; its last value."""
        import asyncio  # here: a Pool used without asyncio does not load it

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        cond = self._engine._cond
        while True:
            with cond:
                if predicate():
                    return True
                future: asyncio.Future[None] = loop.create_future()
                if self._awaiters is None:
                    self._awaiters = []
                self._awaiters.append((loop, future))
            try:
                if deadline is None:
                    await future
                else:
                    await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                with cond:
                    return predicate()
            finally:
                if not future.done() or future.cancelled():  # not woken: take it out
                    with cond:
                        if self._awaiters is not None and (loop, future) in self._awaiters:
                            self._awaiters.remove((loop, future))

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


def _settled(what: Any, ok: bool) -> Any:
    """What a finished call keeps of its ``(func, args, kwds)``: never the arguments
    (a caller may keep its results for long; what it passed, shoal objects among
    them, must be free to go once the call is done, as with multiprocessing): the
    description if it failed (an uncollected error is reported later), else only the
    function's name."""
    if not isinstance(what, tuple):
        return what
    if ok:
        return f"{getattr(what[0], '__qualname__', None) or type(what[0]).__name__}(...)"
    return _describe_call(*what)


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


def _wake(awaiters: list[Any] | None) -> None:
    for loop, future in awaiters or ():
        resolve_soon(loop, future)


class AsyncResult(_Job, Generic[_T]):
    """The result of ``Pool.apply_async`` (and the base of ``map_async``'s).

    Like :class:`multiprocessing.pool.AsyncResult`: ``get``, ``wait``, ``ready``,
    ``successful``.  A task that fails while nobody collects it (no ``get()``, no
    ``successful()``, no ``error_callback``) is reported when the pool is joined.

    Also awaitable: ``await result`` is ``get()`` for a coroutine (``get_async`` and
    ``wait_async`` take a timeout), with no thread per await; and ``cancel()`` stops the
    task, killing and replacing its worker if it runs.  A coroutine cancelled while it
    awaits the result (``task.cancel()``, ``asyncio.timeout``, ``asyncio.wait_for``)
    cancels the task too; ``asyncio.shield(result)`` does not.
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
        self._ordinals = [None]

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

    def __await__(self) -> Generator[Any, None, _T]:
        """``await result``: the result, or its exception, as ``get()`` gives them."""
        return self.get_async().__await__()

    async def get_async(self, timeout: float | None = None) -> _T:
        """The awaitable twin of :meth:`get`: the result, awaiting up to ``timeout``
        seconds for it (``multiprocessing.TimeoutError`` then; the task goes on).

        Raises what ``get()`` raises, ``TaskCancelledError`` once cancelled.  If the
        awaiting coroutine is cancelled, the task is cancelled too.
        """
        await self.wait_async(timeout)
        return self.get(0)

    async def wait_async(self, timeout: float | None = None) -> None:
        """The awaitable twin of :meth:`wait`.  If the awaiting coroutine is cancelled,
        the task is cancelled too."""
        if self._done:
            return
        import asyncio

        try:
            await self._until(self._is_done, timeout)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _is_done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        """Cancel the call (every item of a map); True if cancelled, False if it had
        finished (or its outcome was on its way).

        A task still waiting to be sent, or waiting in shared memory, never runs; a
        task a worker runs is stopped: the worker is killed (after the task's
        :func:`~shoal.uninterruptible` block, if it is inside one) and replaced, and
        the other tasks go on.  ``get()`` then raises
        :class:`~shoal.TaskCancelledError` (a ``concurrent.futures.CancelledError``);
        the ``error_callback`` gets it, in the thread that cancelled.
        """
        if self._done or not self._engine.cancel_job(self):
            return False
        self._close_bar()
        error = TaskCancelledError(f"{self._description} was cancelled", task=self._description)
        cancelled = self._set(False, error, report=False)
        self._engine._notify()
        return cancelled

    def _set(self, ok: bool, value: Any, report: bool = True) -> bool:
        """Settle the job, once (False if it was already: a chunk failed, or it was
        cancelled); ``report``: an error nobody collects is reported at join()."""
        # under the engine's lock, with the awaiters taken: so a cancel() and the result
        # thread settle it once, and a coroutine that found it pending is woken.  Threads
        # waiting in get() are notified by the result thread after each batch
        with self._engine._cond:
            if self._done:
                return False
            self._ok, self._value, self._done = ok, value, True
            self._what = _settled(self._what, ok)
            awaiters = self._take_awaiters()
        if ok:
            if self._callback is not None:
                _call_back(self._callback, value)
        elif self._error_callback is not None:
            _call_back(self._error_callback, value)
        elif report and not self._collected:
            self._engine._uncollected.append(self)
        _wake(awaiters)
        return True

    def _describe(self, index: int) -> str:
        return self._description

    def _deliver(self, index: int, values: tuple) -> None:
        self._set(True, values[0])

    def _fail(self, index: int, exc: BaseException) -> None:
        self._set(False, exc)

    def __repr__(self) -> str:
        state = "pending" if not self._done else "ok" if self._ok else "failed"
        if self._done and isinstance(self._value, TaskCancelledError):
            state = "cancelled"
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
        self._ordinals = [None] * chunks
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
    ``async for x in pool.imap(...)`` (and ``await it.next_async(timeout)``) is the
    same for a coroutine, with no thread per await; cancelling it leaves the tasks
    running, as leaving a ``for`` loop does.
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
                self._wake_awaiters()

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
        self._wake_awaiters()
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
            self._take_arrived()
        return self._buffer.popleft()

    def __aiter__(self) -> IMapIterator[_T]:
        return self

    async def next_async(self, timeout: float | None = None) -> _T:
        """The awaitable twin of :meth:`next` (``StopAsyncIteration`` at the end)."""
        while not self._buffer:
            await self._until(self._arrived, timeout)
            try:
                self._take_arrived()
            except StopIteration:
                raise StopAsyncIteration from None
        return self._buffer.popleft()

    async def __anext__(self) -> _T:
        return await self.next_async()

    def _take_arrived(self) -> None:
        """Take the chunk outcome ``_arrived`` found into the buffer: raise its error,
        StopIteration at the end, ``multiprocessing.TimeoutError`` if none came."""
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
        self._ordinals = [None]  # set when the task goes on the ring

    @property
    def _ordinal(self) -> int | None:
        """The task's ordinal once on the ring; None before."""
        return self._ordinals[0]  # type: ignore[index]

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
_CANCELLED = concurrent.futures._base.CANCELLED
_CANCELLED_STATES = (_CANCELLED, concurrent.futures._base.CANCELLED_AND_NOTIFIED)


def _start(future: concurrent.futures.Future) -> bool:
    """Mark ``future`` running if it is not yet; False if it was cancelled."""
    with future._condition:  # type: ignore[attr-defined]
        if future._state == _RUNNING:  # type: ignore[attr-defined]
            return True  # running() or cancel() found a worker had it
        return future.set_running_or_notify_cancel()


class _Future(concurrent.futures.Future):
    """A Future that knows when a worker has its task (from then on it is running),
    whose ``cancel()`` stops a running call, and that a coroutine may await."""

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
        """Cancel the call; True if cancelled, False if it had finished (or its result
        was on its way).

        A call still waiting in shared memory is marked there, so the worker that
        takes it skips it: it never runs.  A call a worker is running is stopped: the
        worker is killed (after the call's :func:`~shoal.uninterruptible` block, if it
        is inside one) and replaced.  (``ProcessPoolExecutor`` says no once a call
        runs: docs/compatibility.md.)
        """
        job = self._job
        engine = job._engine
        with self._condition:
            if self._state not in (_PENDING, _RUNNING) or engine._released:
                return super().cancel()  # done
            ordinal = job._ordinal
            if self._state == _PENDING:
                if ordinal is None:
                    with engine._push_lock:  # what _push_overflow decides under
                        if job._ordinal is None:  # still in the parent: it is never pushed
                            return super().cancel()
                    ordinal = job._ordinal
                assert ordinal is not None
                # mark first, then look: a worker that takes it from now on pops the mark
                taken_back = engine.take_back(ordinal)
                if taken_back:
                    return super().cancel()  # the worker that takes it (or took it) skips it
                if taken_back is None:
                    return False  # no word for the mark (see "Cancelled calls"): it runs
            assert ordinal is not None
            # a worker has it: stop it (False: it ended, its result is on the way)
            if not engine.stop_running(ordinal):
                if self._state == _PENDING:
                    self.set_running_or_notify_cancel()
                return False
            self._state = _CANCELLED
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        self.set_running_or_notify_cancel()  # (tells as_completed() and wait())
        return True

    def __await__(self) -> Generator[Any, None, Any]:
        """``await future``: its result, through ``asyncio.wrap_future`` (no thread);
        cancelling the awaiting coroutine cancels the call."""
        import asyncio

        return asyncio.wrap_future(self).__await__()


def _call_back(callback: Callable[[Any], object], value: Any) -> None:
    try:
        callback(value)
    except BaseException as exc:  # a callback must not take the pool's thread down
        report_unraisable(exc)
