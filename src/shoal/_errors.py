"""Every exception and warning shoal raises, in one place.

Each class is also the standard-library class that code written for
``multiprocessing`` already catches, so porting never loses an ``except``::

    ShoalError(Exception)                          base of everything shoal raises itself
    ├── SharedMemoryError(ShoalError, OSError)     creating/attaching a segment failed
    │   ├── SegmentNotFoundError(…, FileNotFoundError)
    │   │                                          the handle names a segment that is gone
    │   └── LayoutError(SharedMemoryError)         the segment's header is not one this
    │                                              shoal writes (other version, corrupt)
    ├── ClosedError(ShoalError, ValueError)        used after *you* closed it
    ├── ShutDown(ShoalError[, queue.ShutDown])     put on a shut-down queue, or get on a
    │                                              shut-down queue that is drained
    ├── NotHeldError(ShoalError, ValueError, RuntimeError)
    │                                              release of a lock/semaphore you do not hold
    ├── SerializationError(ShoalError, pickle.PicklingError)
    │   │                                          an object could not be pickled in put()
    │   └── SerializationTypeError(…, TypeError)   …because its type refuses pickling, as
    │                                              the standard library's TypeError says
    ├── BrokenError(ShoalError)                    a peer or owner died
    │   ├── BarrierPartyDiedError(BrokenError, threading.BrokenBarrierError)
    │   ├── WorkerDiedError(BrokenError, concurrent.futures.process.BrokenProcessPool,
    │   │                   multiprocessing.ProcessError)
    │   │                                          the pool worker running a task died
    │   └── BrokenPoolError(BrokenError, concurrent.futures.process.BrokenProcessPool)
    │                                              a pool's initializer raised: no worker
    │                                              can start, the pool is broken
    ├── TaskTimeoutError(ShoalError, TimeoutError) a pool task ran past its timeout
    │                                              (its worker was killed and replaced)
    └── TaskCancelledError(ShoalError, concurrent.futures.CancelledError)
                                                   a pool result was cancelled (a running
                                                   task's worker was killed and replaced)

    ShoalWarning(RuntimeWarning)
    ├── OwnerDiedWarning                           a lock was inherited from a dead owner
    └── UncollectedTaskErrorWarning                a pool task failed and nobody asked

"Closed" and "broken" are different on purpose: closed means this process said it is
done with the object; broken means someone else died and the object tells you so.

Exceptions cross processes, so every class unpickles with its attributes intact:
attributes are keyword-only and live in ``__dict__``, which pickle carries.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import signal
import threading
from typing import TYPE_CHECKING, Any

__all__ = [
    "BarrierPartyDiedError",
    "BrokenError",
    "BrokenPoolError",
    "ClosedError",
    "LayoutError",
    "NotHeldError",
    "OwnerDiedWarning",
    "SegmentNotFoundError",
    "SerializationError",
    "SerializationTypeError",
    "SharedMemoryError",
    "ShoalError",
    "ShoalWarning",
    "ShutDown",
    "TaskCancelledError",
    "TaskTimeoutError",
    "UncollectedTaskErrorWarning",
    "WorkerDiedError",
]


class ShoalError(Exception):
    """Base class of every exception shoal raises itself."""


class SharedMemoryError(ShoalError, OSError):
    """A shared-memory segment could not be created, sized or attached.

    Also an :class:`OSError`; ``errno`` is set where the operating system gave one.
    """


class SegmentNotFoundError(SharedMemoryError, FileNotFoundError):
    """A handle names a segment that no longer exists (every holder closed it or died)."""


class LayoutError(SharedMemoryError):
    """A segment's header does not match the layout this version of shoal writes.

    Raised on attach when the magic number, layout version or sizes differ: the
    segment was made by an incompatible shoal, or it is not a shoal segment at all;
    by a queue call that finds positions or records in the queue's memory that no
    producer writes, and by a ``SharedDict`` call that finds entries or a table no
    writer makes (the memory was written to outside shoal).
    """


class ClosedError(ShoalError, ValueError):
    """The object was closed by this process and cannot be used any more.

    A :class:`ValueError` too, which is what the standard library raises for a
    closed queue or connection.
    """


# Python 3.13 added queue.ShutDown for the same idea: be it too where it exists.
_SHUTDOWN_BASES: tuple[type, ...] = (
    (ShoalError, queue.ShutDown) if hasattr(queue, "ShutDown") else (ShoalError,)
)


class ShutDown(*_SHUTDOWN_BASES):  # type: ignore[misc]
    """The queue was shut down: no more puts, and gets end once it is drained.

    On Python 3.13 and later this is also :class:`queue.ShutDown`.
    """


class NotHeldError(ShoalError, ValueError, RuntimeError):
    """A lock or semaphore was released by a caller that does not hold it.

    Both a :class:`ValueError` (what ``multiprocessing.Lock`` raises) and a
    :class:`RuntimeError` (what ``threading.Lock`` raises).
    """


class SerializationError(ShoalError, pickle.PicklingError):
    """An object could not be pickled to go to another process.

    Raised in the caller (``put()``, ``put_many()``…) before anything is sent.

    Attributes:
        type_name: the qualified name of the object's type.
    """

    def __init__(self, message: str, *, type_name: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name


class SerializationTypeError(SerializationError, TypeError):
    """A :class:`SerializationError` that is also the standard library's ``TypeError``
    (``cannot pickle '_io.TextIOWrapper' object``): the object is of a type that
    refuses to be pickled (files, sockets, ``threading`` locks, generators…)."""


# SerializationError classes that are also a builtin exception class, one per class
_ALSO: dict[type, type[SerializationError]] = {}


def _rebuild_serialization_error(
    also: type[BaseException], message: str, type_name: str | None
) -> SerializationError:
    return serialization_error_class(also())(message, type_name=type_name)


def _reduce_serialization_error(self: SerializationError) -> tuple[Any, ...]:
    # the class is made at run time: it travels as the builtin class it also is
    also = next(c for c in type(self).__mro__ if c.__module__ == "builtins" and c in _ALSO)
    return (_rebuild_serialization_error, (also, str(self), self.type_name))


def serialization_error_class(error: BaseException) -> type[SerializationError]:
    """The :class:`SerializationError` class to raise for what pickling raised.

    Also the class of ``error`` where the standard library would have let ``error``
    itself through: a ``__reduce__`` raising ``RuntimeError`` makes
    ``multiprocessing.Pool.map`` raise that ``RuntimeError``, so shoal's error is a
    ``RuntimeError`` too (``except RuntimeError`` keeps working).  ``TypeError`` is
    :class:`SerializationTypeError`; errors of other than builtin classes, pickle's
    own and those no class can also be stay plain :class:`SerializationError`.
    """
    if isinstance(error, TypeError):
        return SerializationTypeError
    also = type(error)
    if (
        isinstance(error, pickle.PickleError)
        or not isinstance(error, Exception)
        or also.__module__ != "builtins"
    ):
        return SerializationError
    cls = _ALSO.get(also)
    if cls is None:
        try:
            cls = type(
                "SerializationError",
                (SerializationError, also),
                {"__module__": __name__, "__reduce__": _reduce_serialization_error},
            )
            cls("probe")  # (a class whose constructor takes other arguments)
        except TypeError:
            cls = SerializationError
        _ALSO[also] = cls
    return cls


class BrokenError(ShoalError):
    """A peer or owner of a shared object died, leaving the object broken."""


class BarrierPartyDiedError(BrokenError, threading.BrokenBarrierError):
    """A process died while waiting at a :class:`~shoal.Barrier`, which is now broken.

    Attributes:
        pid: the process id of the party that died, when known.
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class TaskTimeoutError(ShoalError, TimeoutError):
    """A pool task ran longer than its ``timeout``: its worker was killed and replaced.

    The builtin :class:`TimeoutError`, and on purpose *not*
    ``multiprocessing.TimeoutError``: that one means "not ready yet, ask again" to
    code around ``AsyncResult.get(timeout)``, which would then wait forever for a
    task that is over.

    Attributes:
        timeout: the limit, in seconds.
        pid: the worker that was killed.
        task: a short description of the task, or None.
    """

    def __init__(
        self,
        *args: object,
        timeout: float | None = None,
        pid: int | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(*args)  # (message) or, as for any OSError, (errno, message)
        self.timeout = timeout
        self.pid = pid
        self.task = task


class ShoalWarning(RuntimeWarning):
    """Base class of the warnings shoal issues."""


class OwnerDiedWarning(ShoalWarning):
    """A lock was acquired from a process that died holding it.

    The lock is held by the caller when this is issued, and ``lock.owner_died`` is
    True until it is released: the data the lock guards may be half-updated.  Filter
    it (``warnings.simplefilter("ignore", OwnerDiedWarning)``) once you check
    ``owner_died`` yourself.  If a filter turns it into an error, the lock is
    released again and the next acquirer is told instead.
    """


class UncollectedTaskErrorWarning(ShoalWarning):
    """A pool task failed and its result was never collected.

    Issued by ``Pool.join()``/``terminate()`` (and at exit) for every
    ``apply_async``/``map_async`` result that failed while nobody called ``get()``,
    ``successful()`` or gave an ``error_callback``: the tutorial's style of
    fire-and-forget tasks would otherwise lose the error.  Pool's
    ``uncollected_errors`` argument chooses "warn" (default), "raise" or "ignore".
    """


# WorkerDiedError and BrokenPoolError are also concurrent.futures' BrokenProcessPool,
# whose module imports multiprocessing.connection, its queues, tempfile and subprocess
# (about 10 ms): they are made when first asked for (by the pool, or by a program's
# ``except shoal.WorkerDiedError``), so that ``shoal.Lock`` does not pay for them (#11).
# So is TaskCancelledError, a concurrent.futures.CancelledError (#14).
# A type checker reads them from the stub below; the classes it describes are these.
_MADE_ON_FIRST_USE = ("WorkerDiedError", "BrokenPoolError", "TaskCancelledError")


_MAKING = threading.Lock()  # (two threads asking at once must get the same classes)


def _make_pool_errors() -> None:
    from concurrent.futures import CancelledError
    from concurrent.futures.process import BrokenProcessPool

    class WorkerDiedError(BrokenError, BrokenProcessPool, multiprocessing.ProcessError):
        """The pool worker running a task died (killed, crashed, ``os._exit``) before it
        returned a result.  Only that task fails: the pool replaces the worker.

        Also :class:`concurrent.futures.process.BrokenProcessPool` and
        :class:`multiprocessing.ProcessError`, what pool code already catches.

        Attributes:
            pid: the worker's process id.
            exitcode: its exit status as ``multiprocessing.Process.exitcode`` gives it:
                negative for a signal.
            signal: the :class:`signal.Signals` that killed it, or None.
            task: a short description of the task (function and arguments), or None.
        """

        def __init__(
            self,
            message: str,
            *,
            pid: int | None = None,
            exitcode: int | None = None,
            task: str | None = None,
        ) -> None:
            super().__init__(message)
            self.pid = pid
            self.exitcode = exitcode
            self.task = task

        @property
        def signal(self) -> signal.Signals | None:
            """The signal that killed the worker (from a negative ``exitcode``), or None."""
            if self.exitcode is None or self.exitcode >= 0:
                return None
            try:
                return signal.Signals(-self.exitcode)
            except ValueError:
                return None

    class BrokenPoolError(BrokenError, BrokenProcessPool):
        """A pool (or Executor) cannot run tasks any more: its ``initializer`` raised in a
        worker, so every replacement would fail the same way.

        Also :class:`concurrent.futures.process.BrokenProcessPool`, what
        ``ProcessPoolExecutor`` raises in this case.  The initializer's exception, with its
        remote traceback, is the ``__cause__``.
        """

    class TaskCancelledError(ShoalError, CancelledError):
        """A pool result was cancelled (``AsyncResult.cancel()``, or the asyncio task
        awaiting it was cancelled): what ``get()`` raises.  A task a worker was running
        was stopped by killing that worker, which the pool replaced.

        Also :class:`concurrent.futures.CancelledError`, what a cancelled
        ``Future.result()`` raises; not :class:`asyncio.CancelledError`, which would
        read as the awaiting task itself being cancelled.

        Attributes:
            task: a short description of the task, or None.
        """

        def __init__(self, *args: object, task: str | None = None) -> None:
            super().__init__(*args)
            self.task = task

    for cls in (WorkerDiedError, BrokenPoolError, TaskCancelledError):
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls


def __getattr__(name: str) -> Any:
    if name in _MADE_ON_FIRST_USE:
        with _MAKING:
            if name not in globals():
                _make_pool_errors()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from concurrent.futures import CancelledError
    from concurrent.futures.process import BrokenProcessPool

    class WorkerDiedError(BrokenError, BrokenProcessPool, multiprocessing.ProcessError):
        pid: int | None
        exitcode: int | None
        task: str | None

        def __init__(
            self,
            message: str,
            *,
            pid: int | None = None,
            exitcode: int | None = None,
            task: str | None = None,
        ) -> None: ...
        @property
        def signal(self) -> signal.Signals | None: ...

    class BrokenPoolError(BrokenError, BrokenProcessPool): ...

    class TaskCancelledError(ShoalError, CancelledError):
        task: str | None

        def __init__(self, *args: object, task: str | None = None) -> None: ...
