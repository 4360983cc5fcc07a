"""The public pools: ``Pool`` (multiprocessing's API) and ``Executor``
(``concurrent.futures``'), both over one engine.

The classes users hold: each makes one ``_Engine`` and turns its calls into task
records (``_protocol``) and jobs (``_jobs``); the API itself (argument checking,
chunk sizes, progress bars) is ``_base``'s, shared with the Ray pool (#13), and these
classes are its local engine's side.  Also the lifetime glue: a dropped Pool
is terminated, a dropped Executor's calls still run, and every Executor is joined as
the interpreter exits (``_join_executors``), as ``ProcessPoolExecutor``'s are.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._errors import (
    SerializationError,
)
from .._memory import report_unraisable
from ._base import _ExecutorBase, _PoolBase
from ._engine import _RUN, _check_timeout, _Engine
from ._jobs import AsyncResult, IMapIterator, MapResult, _describe_call, _FutureJob
from ._protocol import _CALL, _CALL_KW, _MAP, _STARMAP

__all__ = ["Executor", "Pool"]


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


# ---- Pool -------------------------------------------------------------------------------


class Pool(_PoolBase):
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

    _engine: _Engine

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

    # ---- the engine's side of _PoolBase ---------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        return _check_timeout(timeout) if timeout is not None else self._engine.task_timeout

    def _function(self, func: Callable[..., Any]) -> bytes:
        return self._engine.function_record(func)

    def _apply(
        self,
        function: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwds: dict[str, Any] | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        limit: Any,
    ) -> AsyncResult[Any]:
        engine = self._engine
        if kwds:
            record: tuple = (function, _CALL_KW, limit, args, dict(kwds))
        else:
            record = (function, _CALL, limit, *args)
        result: AsyncResult[Any] = AsyncResult(engine, callback, error_callback)
        result._what = (func, args, kwds)
        if limit:
            engine.use_timeouts()
        engine._submit(result, [0], [record])
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
    ) -> MapResult[Any]:
        engine = self._engine
        result: MapResult[Any] = MapResult(engine, len(items), size, callback, error_callback, bar)
        result._name = name
        result._what = f"{name} over {len(items)} items"
        if items:
            if limit:
                engine.use_timeouts()
            starts = range(0, len(items), size)
            records = [(function, kind, limit, *items[i : i + size]) for i in starts]
            engine._submit(result, list(range(len(records))), records)
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
    ) -> IMapIterator[Any]:
        engine = self._engine
        if limit:
            engine.use_timeouts()
        iterator: IMapIterator[Any] = IMapIterator(
            engine, function, kind, items, size, limit, ordered, bar, name
        )
        iterator._feed()
        return iterator

    def __repr__(self) -> str:
        engine = self._engine
        return (
            f"<shoal.Pool state={engine.state} processes={engine.processes} "
            f"outstanding={engine._outstanding}>"
        )


# ---- Executor -------------------------------------------------------------------------


class Executor(_ExecutorBase):
    """A :class:`concurrent.futures.Executor` on shoal's surviving workers.

    Like ``ProcessPoolExecutor`` (same arguments), except that a dead worker fails
    only the future it was running (with :class:`~shoal.WorkerDiedError`, also a
    ``BrokenProcessPool``) and the executor keeps working.  ``task_timeout`` limits
    each call's run time (:class:`~shoal.TaskTimeoutError`).
    """

    _engine: _Engine

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

    def _submit(
        self, fn: Callable[..., Any], kind: int, payload: tuple, description: str | None
    ) -> concurrent.futures.Future:
        if description is None:  # a call (a chunk is named by map)
            description = (
                _describe_call(fn, *payload) if kind == _CALL_KW else _describe_call(fn, payload)
            )
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
