"""The public pools: ``Pool`` (multiprocessing's API) and ``Executor``
(``concurrent.futures``'), both over one engine.

The classes users hold: each makes one ``_Engine`` and turns its calls into task
records (``_protocol``) and jobs (``_jobs``).  Also the lifetime glue: a dropped Pool
is terminated, a dropped Executor's calls still run, and every Executor is joined as
the interpreter exits (``_join_executors``), as ``ProcessPoolExecutor``'s are.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import (
    SerializationError,
)
from .._memory import report_unraisable
from ._engine import _RUN, _check_timeout, _Engine
from ._jobs import AsyncResult, IMapIterator, MapResult, _describe_call, _FutureJob
from ._protocol import _CALL, _CALL_KW, _MAP, _STARMAP

__all__ = ["Executor", "Pool"]

_S = TypeVar("_S")
_T = TypeVar("_T")
if TYPE_CHECKING:  # (typing has ParamSpec from 3.10 on; only checkers need it)
    from typing_extensions import ParamSpec

    _P = ParamSpec("_P")
_CHUNKS_PER_WORKER = 16


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
