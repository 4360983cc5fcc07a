"""The Pool and Executor API, once, for every engine (#13).

``_PoolBase`` holds the public methods of ``multiprocessing.pool.Pool`` as shoal has
them (``apply``, ``apply_async``, ``map``, ``starmap``, their ``_async`` twins,
``imap``, ``imap_unordered``, ``istarmap``, ``close``, ``terminate``, ``join``,
``with``): their argument checking, chunk sizes, progress bars and names.
``_ExecutorBase`` does the same for ``concurrent.futures.Executor``'s ``submit`` and
``map``.  What differs between engines is behind a small declared interface::

    Pool subclass                      what it does
    -------------                      ------------
    _engine                            an _EngineLike: processes, check_running(),
                                       close(), terminate(), join()
    _chunks_per_worker                 how many chunks per worker a map is cut into
    _timeout(timeout)                  a per-call timeout in the engine's form
    _function(func)                    func as the engine sends it (a pickle, func…);
                                       TypeError when it is not callable
    _apply(function, func, args, kwds, callback, error_callback, limit)
                                       one call -> its AsyncResult
    _map(function, func, items, size, kind, callback, error_callback, limit, bar, name)
                                       a list cut into chunks -> its MapResult
    _imap(function, func, items, total, size, kind, ordered, limit, bar, name)
                                       an iterator fed lazily -> its IMapIterator

    Executor subclass
    -----------------
    _submit(fn, kind, payload, description)   one call (or chunk) -> its Future

The local pool (``_api.Pool``, on ``_engine._Engine``) and the Ray pool
(``shoal._ray.RayPool``) are the two engines today; nothing here knows of either.
Both report the failures nobody collected the same way (``uncollected_errors=``):
each checks the mode with :func:`_check_uncollected_mode` and hands what it found at
``join()``/``terminate()`` to :func:`_report_uncollected`.
The annotations name the local pool's result classes, whose API every engine's
results have (``get``/``wait``/``ready``/``successful``, ``next(timeout)``).
"""

from __future__ import annotations

import builtins
import concurrent.futures
import itertools
import os
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import RemoteTraceback
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._errors import UncollectedTaskErrorWarning
from ._protocol import _CALL, _CALL_KW, _MAP, _STARMAP

if TYPE_CHECKING:  # (annotations only)
    from typing_extensions import ParamSpec, Self

    from ._jobs import AsyncResult, IMapIterator, MapResult

    _P = ParamSpec("_P")

__all__ = ["_ExecutorBase", "_PoolBase"]

_S = TypeVar("_S")
_T = TypeVar("_T")


class _EngineLike(Protocol):
    """What the base classes ask of an engine directly."""

    @property
    def processes(self) -> int: ...

    def check_running(self) -> None: ...

    def close(self) -> None: ...

    def terminate(self) -> None: ...

    def join(self) -> Any: ...


_bar_class: Any = None


def _make_bar(progress: Any, total: int | None, description: str) -> Any:
    """A tqdm bar for ``progress=`` (True, a description, or a dict of tqdm options);
    None for a false ``progress``."""
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


def _chunksize(chunksize: int | None, n: int, processes: int, per_worker: int = 16) -> int:
    """The chunk size of a map of ``n`` items: ``chunksize`` checked, or about
    ``per_worker`` chunks a worker when it is None."""
    if chunksize is None:
        size, extra = divmod(n, processes * per_worker)
        return max(1, size + bool(extra))
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize}")
    return chunksize


def _name_of(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


# ---- failures nobody collected (uncollected_errors=) ---------------------------------------

_UNCOLLECTED_MODES = ("warn", "raise", "ignore")


def _check_uncollected_mode(mode: str) -> str:
    """``mode`` if it is an ``uncollected_errors`` value; ValueError if not."""
    if mode not in _UNCOLLECTED_MODES:
        raise ValueError(f"uncollected_errors must be 'warn', 'raise' or 'ignore', not {mode!r}")
    return mode


def _report_uncollected(failed: list[tuple[str, BaseException]], mode: str) -> None:
    """Report the failed results nobody collected, each ``(description, error)``: one
    :class:`~shoal.UncollectedTaskErrorWarning` naming the first ("warn"), an
    ``ExceptionGroup`` of the errors ("raise"; the first error before Python 3.11), or
    nothing ("ignore", or none failed)."""
    if not failed or mode == "ignore":
        return
    errors = [error for _, error in failed]
    cause = errors[0].__cause__
    detail = str(cause) if isinstance(cause, RemoteTraceback) else ""
    message = (
        f"{len(failed)} pool task(s) failed and nobody collected the error (no get(), "
        f"successful() or error_callback); the first, {failed[0][0]}, raised "
        f"{type(errors[0]).__name__}: {errors[0]}{detail}"
    )
    if mode == "raise":
        group = getattr(builtins, "ExceptionGroup", None)  # Python 3.11+
        if group is None:
            raise errors[0]
        raise group(message, errors)
    warnings.warn(UncollectedTaskErrorWarning(message), stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside shoal (for warnings): the user's call
    of ``join()``/``terminate()``, through either engine."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


_PACKAGE_DIR = os.path.dirname(os.path.dirname(__file__)) + os.sep


# ---- Pool -------------------------------------------------------------------------------


class _PoolBase:
    """multiprocessing's Pool API over an engine (see the module's docstring)."""

    _engine: _EngineLike
    _finalizer: weakref.finalize[Any, Any]
    # about sixteen chunks per worker by default (the standard library makes four): the
    # first chunk reaches a worker sooner and the last result arrives sooner, so
    # sending, running and collecting overlap more; a chunk costs a few microseconds
    _chunks_per_worker = 16

    # ---- the engine's side (each subclass implements these) ----------------------------

    def _timeout(self, timeout: float | None) -> Any:
        raise NotImplementedError

    def _function(self, func: Callable[..., Any]) -> Any:
        raise NotImplementedError

    def _apply(
        self,
        function: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwds: dict[str, Any] | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        limit: Any,
    ) -> Any:
        raise NotImplementedError

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
    ) -> Any:
        raise NotImplementedError

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
    ) -> Any:
        raise NotImplementedError

    # ---- the API --------------------------------------------------------------------

    @property
    def processes(self) -> int:
        """The number of workers (tasks at once)."""
        return self._engine.processes

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
        self._engine.check_running()
        args = tuple(args)
        limit = self._timeout(timeout)
        function = self._function(func)
        return self._apply(function, func, args, kwds, callback, error_callback, limit)  # type: ignore[no-any-return]

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
        size = _chunksize(chunksize, len(items), engine.processes, self._chunks_per_worker)
        limit = self._timeout(timeout)
        function = self._function(func)
        name = _name_of(func)
        bar = _make_bar(progress, len(items), name)
        try:
            return self._map(  # type: ignore[no-any-return]
                function, func, items, size, kind, callback, error_callback, limit, bar, name
            )
        except BaseException:
            if bar is not None:
                bar.close()
            raise

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
        return self._imap_of(func, iterable, chunksize, _MAP, True, progress, timeout)

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
        return self._imap_of(func, iterable, chunksize, _MAP, False, progress, timeout)

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
        return self._imap_of(func, iterable, chunksize, _STARMAP, True, progress, timeout)

    def _imap_of(
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
            size = (
                _chunksize(None, total, engine.processes, self._chunks_per_worker)
                if total is not None
                else 1
            )
        else:
            size = _chunksize(chunksize, 1, 1)
        items: Iterator[Any] = iter(iterable)
        if kind == _STARMAP:
            items = map(tuple, items)
        limit = self._timeout(timeout)
        function = self._function(func)
        name = _name_of(func)
        bar = _make_bar(progress, total, name)
        return self._imap(  # type: ignore[no-any-return]
            function, func, items, total, size, kind, ordered, limit, bar, name
        )

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

        Reports failed results nobody collected (the local pool's
        ``uncollected_errors``).
        """
        self._engine.join()
        self._finalizer.detach()

    def __enter__(self) -> Self:
        self._engine.check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")


# ---- Executor ---------------------------------------------------------------------------


class _ExecutorBase(concurrent.futures.Executor):
    """``concurrent.futures.Executor``'s ``submit`` and ``map`` over an engine; the
    subclass implements ``_submit(fn, kind, payload, description)``."""

    def _submit(
        self, fn: Callable[..., Any], kind: int, payload: tuple, description: str | None
    ) -> concurrent.futures.Future:
        """Schedule one call (``_CALL``/``_CALL_KW``) or chunk (``_MAP``/``_STARMAP``);
        ``description`` None: the subclass names a call from its arguments if asked."""
        raise NotImplementedError

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> concurrent.futures.Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; return a Future."""
        if kwargs:
            return self._submit(fn, _CALL_KW, (args, kwargs), None)
        return self._submit(fn, _CALL, args, None)

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
        name = _name_of(fn)
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
