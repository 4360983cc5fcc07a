"""Contexts: ``shoal.get_context("spawn")``, like ``multiprocessing.get_context`` (#5).

A multiprocessing context is a start method plus the factories of everything that
works with it.  shoal's wraps the standard library's context of the same method:

* its processes are the standard library's: ``ctx.Process`` *is*
  ``multiprocessing.get_context(method).Process``, and ``ctx.get_start_method()``,
  ``ctx.current_process()``, ``ctx.Pipe()`` … are the standard library's too;
* its objects are shoal's: ``ctx.Queue()``, ``ctx.Lock()``, ``ctx.Value()`` … return
  the shared-memory objects (which work under every start method, so the context only
  matters for the processes), and ``ctx.Pool()``, ``ctx.Executor()`` return shoal's
  pool and executor starting their workers with this context's method.

So code written as ``ctx = multiprocessing.get_context("spawn"); q = ctx.Queue();
ctx.Process(target=f, args=(q,)).start()`` ports by changing the import.

``shoal.Pool(context=...)`` and ``shoal.Executor(mp_context=...)`` accept a shoal
context or a standard-library one: they need only ``.Process`` and
``.get_start_method()``, which both have.  The other way round does not hold: a shoal
context is not a :class:`multiprocessing.context.BaseContext`, since the standard
library's ``Pool`` and ``ProcessPoolExecutor`` reach into the internals of the queues
their context makes; give them ``multiprocessing.get_context(ctx.get_start_method())``.

Backends.  The context is where a backend is chosen: a start method names a context of
this machine's shared memory (the one implementation today); any other name is looked
up among the backends registered with :func:`register_backend`, whose factory makes a
context with the same factories (``Queue``, ``Lock``, ``Pool`` … ``Manager``: the
:class:`BackendContext` protocol) on another engine, from the options given to
``get_context(name, **options)``.  A backend is added there, without touching the local
primitives.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from typing import Any, Literal, Protocol, overload, runtime_checkable

from . import _dict, _list, _managers, _pool, _queues, _ray, _sharedctypes, _sync
from ._process import (
    AuthenticationError,
    BufferTooShort,
    Connection,
    ProcessError,
    TimeoutError,
    process_cpu_count,
)

__all__ = ["Context", "get_context", "use"]

# One shoal context per start method, as the standard library keeps one context per
# method: get_context("spawn") is get_context("spawn").
_contexts: dict[str, Context] = {}


@runtime_checkable
class BackendContext(Protocol):
    """What a backend's context offers: the factories of a :class:`Context`.

    (The local :class:`Context` is one; a cluster engine's is another.)
    """

    def Queue(self, maxsize: int = 0, **kwargs: Any) -> Any: ...
    def Lock(self) -> Any: ...
    def Pool(self, processes: int | None = None, *args: Any, **kwargs: Any) -> Any: ...
    def Manager(self) -> Any: ...
    def get_start_method(self, allow_none: bool = False) -> str | None: ...


# name -> factory(**options) -> a context (register_backend)
_backends: dict[str, Callable[..., BackendContext]] = {}


def register_backend(name: str, factory: Callable[..., BackendContext]) -> None:
    """Make ``get_context(name, **options)`` return ``factory(**options)``.

    For the modules that put shoal on another engine; the names of the start methods
    are the local backend's and cannot be taken.

    Raises:
        ValueError: ``name`` is a start method's, or another backend's.
    """
    if name in ("fork", "spawn", "forkserver") or name in _backends:
        raise ValueError(f"a context named {name!r} exists already")
    _backends[name] = factory


# the backends shoal ships: each imports its engine on first use only
_backends["ray"] = _ray.RayContext

# ---- the context in use: shoal.use(), SHOAL_CONTEXT ------------------------------------
# The names of the shoal module that the context in use answers (shoal.Pool() …); the
# others (the exceptions, Process, SharedArray …) are always the local ones.
FACTORIES = (
    "Array",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Executor",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pool",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "Value",
)
_UNSET: Any = object()
_used: Any = _UNSET  # what use() chose: a context, None (local), or _UNSET (see the environment)


def use(name: str | None = None, **options: Any) -> Any:
    """Make the module-level factories (``shoal.Pool()``, ``shoal.Queue()``,
    ``shoal.Lock()`` … :data:`FACTORIES`) those of a context, for code that must not
    change: ``shoal.use("ray", address="auto")``.

    Args:
        name: a backend (``"ray"``) or a start method, as for :func:`get_context`;
            None goes back to shoal's own shared-memory objects.
        options: the context's options (``address=`` …).

    Returns:
        The context now in use (None for the local default).

    What was imported before the call (``from shoal import Pool``) keeps its value.
    Without a call, the environment decides, once: ``SHOAL_CONTEXT=ray`` (or a start
    method), with ``SHOAL_RAY_ADDRESS`` (``SHOAL_<NAME>_ADDRESS``) as ``address``.

    Raises:
        ValueError: an unknown name.
    """
    global _used
    ctx = None if name is None else get_context(name, **options)
    _used = ctx
    shoal = sys.modules.get("shoal")
    if shoal is not None:  # forget what was bound: the next lookup asks again
        for factory in FACTORIES:
            vars(shoal).pop(factory, None)
    return ctx


def in_use() -> Any:
    """The context that ``shoal.use()`` or ``SHOAL_CONTEXT`` chose, or None (local)."""
    global _used
    if _used is _UNSET:
        name = os.environ.get("SHOAL_CONTEXT") or None
        options: dict[str, Any] = {}
        if name is not None and name in _backends:
            address = os.environ.get(f"SHOAL_{name.upper()}_ADDRESS")
            if address:
                options["address"] = address
        _used = None if name is None else get_context(name, **options)
    return _used


@overload
def get_context(method: Literal["fork", "spawn", "forkserver"] | None = None) -> Context: ...
@overload
def get_context(method: str, **options: Any) -> Any: ...
def get_context(method: str | None = None, **options: Any) -> Any:
    """Return the shoal context of a start method, like :func:`multiprocessing.get_context`.

    Args:
        method: ``"fork"``, ``"spawn"``, ``"forkserver"`` (those this platform has:
            :func:`~shoal.get_all_start_methods`), or None for the default one.
            As in the standard library, asking for the default fixes it: a later
            ``set_start_method()`` without ``force=True`` raises ``RuntimeError``.
            Or the name of a registered backend (see the module docstring).
        options: the backend's options (none for a start method).

    Returns:
        A :class:`Context` whose processes use that method and whose factories make
        shoal's objects (the same object for the same method); or the backend's
        context.

    Raises:
        ValueError: an unknown start method or backend (the standard library's message).
        TypeError: options given with a start method.
    """
    if method in _backends:
        return _backends[method](**options)
    stdlib = multiprocessing.get_context(method)  # (ValueError: no such method)
    if options:
        raise TypeError(
            f"get_context({method!r}) takes no options: {', '.join(sorted(options))} "
            "(a start method's context has none)"
        )
    name = stdlib.get_start_method()
    ctx = _contexts.get(name)
    if ctx is None:
        # setdefault is atomic under the GIL: racing threads all get the one stored
        # (no lock, which a fork could catch held)
        ctx = _contexts.setdefault(name, Context(stdlib))
    return ctx


class Context:
    """A start method and the factories of shoal's objects: what :func:`get_context`
    returns.

    ``Process`` and the process functions are the standard library context's; the
    object factories (``Queue``, ``Lock``, ``Value``, ``Pool``, ``Manager`` …) are
    shoal's.  Make one with :func:`get_context`, not directly.

    Attributes:
        Process: the standard library context's process class
            (``multiprocessing.get_context(method).Process``): subclass it, or start
            it, as usual.
    """

    __module__ = "shoal.context"

    ProcessError = ProcessError
    BufferTooShort = BufferTooShort
    TimeoutError = TimeoutError
    AuthenticationError = AuthenticationError

    def __init__(self, stdlib: multiprocessing.context.BaseContext) -> None:
        # the wrapped standard-library context: shoal's Pool may read it
        self._stdlib = stdlib
        self.Process = stdlib.Process

    def __repr__(self) -> str:
        return f"<shoal.context.Context {self._stdlib.get_start_method()!r}>"

    def __reduce__(self) -> tuple[Callable[..., Context], tuple[str]]:
        # travels as its method's name, and is the same object on arrival
        return get_context, (self._stdlib.get_start_method(),)

    # ---- the start method --------------------------------------------------------------

    def get_start_method(self, allow_none: bool = False) -> str:
        """Return this context's start method (``"fork"``, ``"spawn"``, ``"forkserver"``)."""
        return self._stdlib.get_start_method(allow_none)

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """As the standard library's context: a context's method cannot change.

        Raises:
            ValueError: always ("cannot set start method of concrete context"); use
                :func:`shoal.set_start_method` for the default, or
                :func:`get_context` for another method.
        """
        self._stdlib.set_start_method(method, force)

    def get_context(self, method: str | None = None) -> Context:
        """Return this context (``method`` None) or the one of ``method``."""
        if method is None:
            return self
        return get_context(method)

    # ---- processes: the standard library's ---------------------------------------------

    def current_process(self) -> multiprocessing.process.BaseProcess:
        """The process object of the caller (:func:`multiprocessing.current_process`)."""
        return self._stdlib.current_process()

    def parent_process(self) -> multiprocessing.process.BaseProcess | None:
        """The parent's process object, None in the main process
        (:func:`multiprocessing.parent_process`)."""
        return self._stdlib.parent_process()

    def active_children(self) -> list[multiprocessing.process.BaseProcess]:
        """The caller's live children, reaping those that ended
        (:func:`multiprocessing.active_children`)."""
        return self._stdlib.active_children()

    def cpu_count(self) -> int:
        """The machine's CPUs, as :func:`multiprocessing.cpu_count` (see
        :meth:`process_cpu_count` for those this process may use)."""
        return self._stdlib.cpu_count()

    def process_cpu_count(self) -> int:
        """The CPUs this process may use: affinity and cgroup quota
        (:func:`shoal.process_cpu_count`)."""
        return process_cpu_count()

    def Pipe(self, duplex: bool = True) -> tuple[Connection, Connection]:
        """A pair of connected :class:`multiprocessing.connection.Connection` objects
        (:func:`multiprocessing.Pipe`)."""
        return self._stdlib.Pipe(duplex)

    def freeze_support(self) -> None:
        """:func:`multiprocessing.freeze_support`: for frozen Windows executables."""
        self._stdlib.freeze_support()

    def get_logger(self) -> Any:
        """multiprocessing's logger (:func:`multiprocessing.get_logger`)."""
        return self._stdlib.get_logger()

    def log_to_stderr(self, level: int | None = None) -> Any:
        """Turn on multiprocessing's logging to stderr (:func:`multiprocessing.log_to_stderr`)."""
        return self._stdlib.log_to_stderr(level)

    def allow_connection_pickling(self) -> None:
        """:func:`multiprocessing.allow_connection_pickling`: connections can be pickled."""
        self._stdlib.allow_connection_pickling()

    def set_executable(self, executable: str) -> None:
        """The interpreter spawn starts (:func:`multiprocessing.set_executable`)."""
        self._stdlib.set_executable(executable)

    def set_forkserver_preload(self, module_names: list[str]) -> None:
        """Modules the fork server imports first
        (:func:`multiprocessing.set_forkserver_preload`)."""
        self._stdlib.set_forkserver_preload(module_names)

    # ---- shoal's objects ----------------------------------------------------------------
    # The objects live in shared memory and pickle as handles, so they are the same
    # whatever the start method; the arguments are the standard library's.

    def Queue(self, maxsize: int = 0, **kwargs: Any) -> _queues.Queue:
        """A :class:`shoal.Queue` (``capacity=`` too)."""
        return _queues.Queue(maxsize, **kwargs)

    def JoinableQueue(self, maxsize: int = 0, **kwargs: Any) -> _queues.JoinableQueue:
        """A :class:`shoal.JoinableQueue` (``capacity=`` too)."""
        return _queues.JoinableQueue(maxsize, **kwargs)

    def SimpleQueue(self, **kwargs: Any) -> _queues.SimpleQueue:
        """A :class:`shoal.SimpleQueue` (``capacity=`` too)."""
        return _queues.SimpleQueue(**kwargs)

    def Lock(self) -> _sync.Lock:
        """A :class:`shoal.Lock`."""
        return _sync.Lock()

    def RLock(self) -> _sync.RLock:
        """A :class:`shoal.RLock`."""
        return _sync.RLock()

    def Condition(self, lock: _sync.Lock | None = None) -> _sync.Condition:
        """A :class:`shoal.Condition` (on a new RLock, or on ``lock``)."""
        return _sync.Condition(lock)

    def Semaphore(self, value: int = 1) -> _sync.Semaphore:
        """A :class:`shoal.Semaphore`."""
        return _sync.Semaphore(value)

    def BoundedSemaphore(self, value: int = 1) -> _sync.BoundedSemaphore:
        """A :class:`shoal.BoundedSemaphore`."""
        return _sync.BoundedSemaphore(value)

    def Event(self) -> _sync.Event:
        """A :class:`shoal.Event`."""
        return _sync.Event()

    def Barrier(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> _sync.Barrier:
        """A :class:`shoal.Barrier`."""
        return _sync.Barrier(parties, action, timeout)

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:
        """A synchronized ctypes value in shared memory (:func:`shoal.Value`)."""
        return _sharedctypes.Value(typecode_or_type, *args, lock=lock)

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:
        """A synchronized ctypes array in shared memory (:func:`shoal.Array`)."""
        return _sharedctypes.Array(typecode_or_type, size_or_initializer, lock=lock)

    def RawValue(self, typecode_or_type: Any, *args: Any) -> _sharedctypes.RawValue:
        """A ctypes value in shared memory, no lock (:class:`shoal.RawValue`)."""
        return _sharedctypes.RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any) -> _sharedctypes.RawArray:
        """A ctypes array in shared memory, no lock (:class:`shoal.RawArray`)."""
        return _sharedctypes.RawArray(typecode_or_type, size_or_initializer)

    def SharedDict(self, items: Any = (), /, **kwargs: Any) -> _dict.SharedDict:
        """A :class:`shoal.SharedDict` (the same call makes a cluster dict on the
        ``'ray'`` context, #13)."""
        return _dict.SharedDict(items, **kwargs)

    def SharedList(self, iterable: Any = (), /) -> _list.SharedList:
        """A :class:`shoal.SharedList` (the same call makes a cluster list on the
        ``'ray'`` context, #13)."""
        return _list.SharedList(iterable)

    # ---- pools and managers: shoal's, on this start method -------------------------------

    def Pool(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """A :class:`shoal.Pool` whose workers start with this context's method.

        Keyword arguments beyond the standard library's (``task_timeout``,
        ``uncollected_errors``) are passed on.
        """
        return _pool.Pool(
            processes, initializer, initargs, maxtasksperchild, context=self, **kwargs
        )

    def Executor(self, max_workers: int | None = None, **kwargs: Any) -> Any:
        """A :class:`shoal.Executor` (a ``concurrent.futures.Executor``) whose workers
        start with this context's method; keyword arguments are passed on."""
        return _pool.Executor(max_workers, mp_context=self, **kwargs)

    def Manager(self) -> _managers.SyncManager:
        """A started :class:`shoal.managers.SyncManager`, as ``multiprocessing``'s
        ``ctx.Manager()``: its objects are shoal's shared-memory ones (no server
        process), and the pools it makes start workers with this context's method."""
        manager = _managers.SyncManager(ctx=self)
        manager.start()
        return manager
