"""``Manager()`` with no server: its factories return shoal's shared-memory objects.

The standard library's ``Manager()`` starts a server process that owns every object;
the caller gets proxies, and each call on one is a round trip over a socket (about
10k calls a second).  shoal's objects already live in shared memory and pickle as
handles, so the manager here only makes them::

    multiprocessing.Manager()                    shoal.Manager()
    caller -- proxy call --> server process      caller -- SharedDict in shared memory
           <-- pickled reply --  (owns dict)     child  -- the same memory, no server

    m.dict()        -> SharedDict        m.Queue(), m.JoinableQueue() -> JoinableQueue
    m.list()        -> SharedList        m.Lock(), m.RLock(), ...      -> shoal's primitives
    m.Value('i', 0) -> Synchronized      m.Namespace()                 -> Namespace (here)
    m.Array('d', x) -> SynchronizedArray m.Pool()                      -> shoal.Pool
    m.set()         -> SharedSet

A server only for what needs one: ``SyncManager`` is the standard library's
``BaseManager`` underneath, so types a subclass registers (``MyManager.register("Maths",
Maths)``), or an ``address``, make ``start()`` run the standard library's server process
for them, with their proxies, ``connect()``, ``get_server()`` and the authkey as ever;
the built-in factories above still return shared-memory objects.  ``BaseManager``, the
proxies and ``Token`` are re-exported as they are (shoal.managers), and ``SetProxy``
(Python 3.14's) is defined here for the versions before it.

Lifetime: the objects belong to their holders, not to the manager.  Each one lives
while any process holds a handle to it (shoal._handle's reference counts), so it
outlives ``shutdown()``; the manager keeps no reference to them and so never keeps
one alive.  ``shutdown()`` stops the manager from making more objects and
terminates the pools it made (in the standard library those run in the server,
which shutdown ends).  docs/managers.md lists every difference from the proxies.
"""

from __future__ import annotations

import builtins
import collections.abc
import ctypes
import multiprocessing.context
import multiprocessing.managers
import types
import weakref
from collections.abc import Callable, Iterable, Sized
from multiprocessing import ProcessError

# the standard library's manager machinery, as programs import it from
# multiprocessing.managers: servers, proxies, tokens (shoal.managers re-exports them)
from multiprocessing.managers import (
    AcquirerProxy,
    ArrayProxy,
    AutoProxy,
    BarrierProxy,
    BaseListProxy,
    BaseManager,
    BasePoolProxy,
    BaseProxy,
    ConditionProxy,
    DictProxy,
    EventProxy,
    IteratorProxy,
    ListProxy,
    MakeProxyType,
    NamespaceProxy,
    PoolProxy,
    RebuildProxy,
    RemoteError,
    Server,
    SharedMemoryManager,
    SharedMemoryServer,
    State,
    Token,
    ValueProxy,
    all_methods,
    convert_to_error,
    dispatch,
    listener_client,
    public_methods,
)
from typing import Any, TypeVar

from . import _dict, _list, _pool, _queues, _set, _sharedctypes, _sync
from ._errors import ClosedError

_T = TypeVar("_T")

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "AutoProxy",
    "BarrierProxy",
    "BaseListProxy",
    "BaseManager",
    "BasePoolProxy",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "MakeProxyType",
    "Manager",
    "Namespace",
    "NamespaceProxy",
    "PoolProxy",
    "RebuildProxy",
    "RemoteError",
    "Server",
    "SetProxy",
    "SharedMemoryManager",
    "SharedMemoryServer",
    "State",
    "SyncManager",
    "Token",
    "ValueProxy",
    "all_methods",
    "convert_to_error",
    "dispatch",
    "public_methods",
]

_INITIAL, _STARTED, _SHUTDOWN = "initial", "started", "shut down"

# ctypes types whose standard-library idiom is "hold any object" (the manager's Value
# never looked at its typecode): Value(c_char_p, "text") is the usual way to share a
# string, so these get a value that holds any picklable object
_SimpleCData: type = ctypes.c_int.__mro__[1]
_CData: type = ctypes.c_int.__mro__[2]
_ADDRESS_CODES = frozenset("zZPO")  # c_char_p, c_wchar_p, c_void_p, py_object


# ---- SetProxy: the standard library's from 3.14, the same here before it -------------------

_SET_METHODS = (
    "__and__", "__contains__", "__ge__", "__gt__", "__iand__", "__ior__", "__isub__",
    "__iter__", "__ixor__", "__le__", "__len__", "__lt__", "__or__", "__rand__",
    "__ror__", "__rsub__", "__rxor__", "__sub__", "__xor__", "add", "clear", "copy",
    "difference", "difference_update", "discard", "intersection",
    "intersection_update", "isdisjoint", "issubset", "issuperset", "pop", "remove",
    "symmetric_difference", "symmetric_difference_update", "union", "update",
)  # fmt: skip

if hasattr(multiprocessing.managers, "SetProxy"):
    SetProxy = multiprocessing.managers.SetProxy
else:

    class SetProxy(MakeProxyType("_BaseSetProxy", _SET_METHODS)):  # type: ignore[misc]
        """A proxy of a ``set`` in a manager's server, as Python 3.14's
        ``multiprocessing.managers.SetProxy`` (for ``MyManager.register("set", set,
        SetProxy)``; shoal's ``SyncManager.set()`` needs no server and returns a
        :class:`~shoal.SharedSet`).  The in-place operators return the proxy."""

        def __ior__(self, value: Any) -> SetProxy:
            self._callmethod("__ior__", (value,))
            return self

        def __iand__(self, value: Any) -> SetProxy:
            self._callmethod("__iand__", (value,))
            return self

        def __ixor__(self, value: Any) -> SetProxy:
            self._callmethod("__ixor__", (value,))
            return self

        def __isub__(self, value: Any) -> SetProxy:
            self._callmethod("__isub__", (value,))
            return self

        __class_getitem__ = classmethod(types.GenericAlias)

    collections.abc.MutableSet.register(SetProxy)


# ---- Value: get() and set() as on the standard library's ValueProxy -------------------------


class _ManagedValue(_sharedctypes.Synchronized):
    """What ``Manager().Value(typecode, value)`` returns for a number or a character.

    A :class:`shoal.sharedctypes.Synchronized` (``.value`` under its lock,
    ``get_lock()``, lock-free ``add``/``fetch_add``/``exchange``/
    ``compare_exchange``), with ``get()`` and ``set(value)`` as the standard
    library's ``ValueProxy`` has.  Pickles as a handle.
    """

    def get(self) -> Any:
        """The value (``.value``), as ``ValueProxy.get()``."""
        return self.value

    def set(self, value: Any) -> None:
        """Store ``value`` (``.value = value``), as ``ValueProxy.set()``."""
        self.value = value


def _rebuild_object_value(type_name: str, data: _dict.SharedDict) -> _ObjectValue:
    obj = object.__new__(_ObjectValue)
    obj._type_name, obj._data = type_name, data
    return obj


class _ObjectValue:
    """What ``Manager().Value(typecode, value)`` returns for ``c_char_p``,
    ``c_wchar_p``, ``py_object`` and other ctypes types that are not plain numbers:
    a value holding any picklable object, as the standard library's does (which never
    checks the typecode: ``Value(c_char_p, "text")`` holds the str ``"text"``).

    ``.value``, ``get()`` and ``set(value)`` read and store it; each read returns a
    copy, each store is atomic.  It lives in shared memory (a one-entry
    :class:`~shoal.SharedDict`) and pickles as a handle.
    """

    _type_name: str
    _data: _dict.SharedDict

    def __init__(self, type_name: str, value: Any) -> None:
        self._type_name = type_name
        self._data = _dict.SharedDict()
        try:
            self._data[0] = value
        except BaseException:
            self._data.close()
            raise

    def get(self) -> Any:
        """A copy of the value."""
        return self._data[0]

    def set(self, value: Any) -> None:
        """Store ``value`` (a copy: later changes to ``value`` are not seen)."""
        self._data[0] = value

    value = property(get, set, doc="The value: reads return a copy, stores are atomic.")

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called in this process."""
        return self._data.closed

    def close(self) -> None:
        """Release this process's handle (the value lives on while others hold it)."""
        self._data.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_object_value, (self._type_name, self._data))

    def __repr__(self) -> str:
        if self.closed:
            return "<shoal managed Value closed>"
        return f"Value({self._type_name}, {self.get()!r})"


def _value_kind(typecode: Any) -> str:
    """ "ctypes" (a number or character in shared memory) or "object" (any object)."""
    if isinstance(typecode, str):
        if typecode not in _sharedctypes.typecode_to_type:
            raise TypeError(
                f"unknown typecode {typecode!r}: use one of "
                f"{', '.join(repr(c) for c in _sharedctypes.typecode_to_type)}, a ctypes "
                "number type (ctypes.c_int, ctypes.c_bool...), or ctypes.c_char_p, "
                "c_wchar_p or py_object for a value that holds any object (a str...)"
            )
        return "ctypes"
    if isinstance(typecode, type) and issubclass(typecode, _CData):
        plain = issubclass(typecode, _SimpleCData) and _SimpleCData in typecode.__bases__
        if plain and typecode._type_ not in _ADDRESS_CODES:
            return "ctypes"
        return "object"
    raise TypeError(
        "Manager().Value needs a typecode such as 'i' or 'd', or a ctypes type such as "
        f"ctypes.c_int (ctypes.c_char_p or py_object for any object), not {typecode!r}"
    )


# ---- Namespace ------------------------------------------------------------------------------


def _rebuild_namespace(data: _dict.SharedDict) -> Namespace:
    ns = object.__new__(Namespace)
    object.__setattr__(ns, "_data", data)
    return ns


class Namespace:
    """Attributes shared by every process that holds it, like ``Manager().Namespace()``.

    ``Namespace(**attributes)``.  Setting, reading and deleting an attribute whose
    name does not start with ``_`` acts on shared memory (a :class:`~shoal.SharedDict`
    underneath), so every process holding the namespace sees it; each read returns a
    copy (``ns.items.append(x)`` changes a copy, as with the standard library's
    proxy: write ``ns.items = ns.items + [x]``).  Each single get, set or delete is
    atomic; ``ns.x += 1`` is a read and then a write, not one step.

    Names starting with ``_`` stay in this object, unshared, as on the standard
    library's ``NamespaceProxy``.  ``repr`` shows the shared attributes, sorted:
    ``Namespace(a=1, b='x')``.  It pickles as a handle (Pool tasks, queues,
    processes started later).
    """

    _data: _dict.SharedDict

    def __init__(self, /, **kwds: Any) -> None:
        object.__setattr__(self, "_data", _dict.SharedDict())
        for name, value in kwds.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # only reached for names that normal lookup did not find
        if not name.startswith("_"):
            try:
                return self._data[name]
            except KeyError:
                pass
        raise AttributeError(f"'Namespace' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._data[name] = value

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        try:
            del self._data[name]
        except KeyError:
            raise AttributeError(f"'Namespace' object has no attribute {name!r}") from None

    def __dir__(self) -> list[str]:
        return sorted({*object.__dir__(self), *self._shared_names()})

    def _shared_names(self) -> list[str]:
        return [k for k in self._data.keys() if isinstance(k, str)]  # noqa: SIM118

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_namespace, (self._data,))

    def __repr__(self) -> str:
        if self._data.closed:
            return "<shoal.managers.Namespace closed>"
        items = sorted((k, v) for k, v in self._data.items() if isinstance(k, str))
        return "Namespace({})".format(", ".join(f"{k}={v!r}" for k, v in items))


# the method SyncManager.Namespace hides the class inside SyncManager's body
_Namespace = Namespace


# ---- the manager ----------------------------------------------------------------------------

_STATE_NAMES = {State.INITIAL: _INITIAL, State.STARTED: _STARTED, State.SHUTDOWN: _SHUTDOWN}
_STATE_VALUES = {name: value for value, name in _STATE_NAMES.items()}
# (the standard library's BaseManager takes shutdown_timeout from 3.11)
_HAS_SHUTDOWN_TIMEOUT = BaseManager.__init__.__code__.co_kwonlyargcount > 0


class SyncManager(BaseManager):
    """``multiprocessing.managers.SyncManager``'s API; its objects live in shared memory.

    Its factories (``Queue``, ``JoinableQueue``, ``Lock``, ``RLock``, ``Semaphore``,
    ``BoundedSemaphore``, ``Condition``, ``Event``, ``Barrier``, ``Value``,
    ``Array``, ``dict``, ``list``, ``set``, ``Namespace``, ``Pool``) take the
    standard library's arguments and return shoal's shared-memory objects, which
    pickle as handles: pass them to ``Pool`` tasks, ``Process`` arguments and queues,
    under every start method.  Calls on them are memory operations, not round trips
    to a server.

    A server process is started only for what needs one: types registered with
    :meth:`register` (``class MyManager(SyncManager): ...``;
    ``MyManager.register("Maths", Maths)``), or an ``address`` to listen on.  Then
    ``start()`` runs the standard library's manager server (``BaseManager``'s
    machinery: authkey, ``connect()``, ``get_server().serve_forever()``) for those
    types, whose proxies work as in the standard library; the built-in factories
    still return shared-memory objects.  With nothing registered and no address,
    ``start()``, ``join()`` and ``shutdown()`` have no process to act on.

    ``shutdown()`` makes the manager refuse new objects (:class:`~shoal.ClosedError`),
    terminates the pools it made and stops its server if it has one; every
    shared-memory object it made keeps working for whoever holds it.

    Args:
        address: where the server listens (or, for ``connect()``, the server to
            connect to); None: no server unless types are registered, which then
            listen on a fresh local address.
        authkey: the server's authentication key (default: the current process's).
        serializer: ``'pickle'`` or ``'xmlrpclib'``, for the server's connections.
        ctx: a multiprocessing (or shoal) context: the start method of the server
            process, and the default context of the pools ``Pool()`` makes.
        shutdown_timeout: how long ``shutdown()`` waits for the server to exit.
    """

    _registry: builtins.dict[str, Any] = {}  # its own: BaseManager.register() stays apart

    def __init__(
        self,
        address: Any = None,
        authkey: bytes | None = None,
        serializer: str = "pickle",
        ctx: Any = None,
        *,
        shutdown_timeout: float = 1.0,
    ) -> None:
        if serializer not in listener_client:
            raise ValueError(
                f"unknown serializer {serializer!r}: the standard library takes "
                f"{' or '.join(map(repr, listener_client))}"
            )
        # (the default context object, not get_context(): that would fix the default
        # start method, which a manager with no server has no business doing)
        server_ctx = ctx if ctx is not None else multiprocessing.context._default_context
        if _HAS_SHUTDOWN_TIMEOUT:
            super().__init__(address, authkey, serializer, server_ctx,
                             shutdown_timeout=shutdown_timeout)  # fmt: skip
        else:  # pragma: no cover (3.10)
            super().__init__(address, authkey, serializer, server_ctx)
        self._pool_ctx = ctx
        self._pools: weakref.WeakSet[_pool.Pool] = weakref.WeakSet()
        self._process: Any = None
        self._stop_server: Callable[[], object] | None = None

    def _serves(self) -> bool:
        """Whether this manager needs a server: registered types, or an address."""
        return bool(type(self)._registry) or self._address is not None

    @property
    def _status(self) -> str:
        return _STATE_NAMES.get(self._state.value, "unknown")

    # ---- the standard library's life cycle ---------------------------------------------

    def start(
        self, initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = ()
    ) -> None:
        """Start the server for the registered types, if there are any (or an address).

        Without registered types or an address there is nothing to start: the
        manager is marked started and ``initializer`` (which the standard library
        runs in the server process) is checked for being callable, never called.

        Args:
            initializer: run in the server process first (when there is one).
            initargs: its arguments.

        Raises:
            multiprocessing.ProcessError: already started, or shut down (as the
                standard library does).
            TypeError: ``initializer`` is not callable.
        """
        if self._serves():
            super().start(initializer, initargs)
            # BaseManager.start() puts the server's finalizer on the instance as
            # `shutdown`; shutdown() below calls it, after what it does itself
            self._stop_server = self.__dict__.pop("shutdown")
            return
        if self._state.value == State.STARTED:
            raise ProcessError("Already started server")
        if self._state.value == State.SHUTDOWN:
            raise ProcessError("Manager has shut down")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._state.value = State.STARTED

    def connect(self) -> None:
        """Connect to the server at ``address`` (a manager's ``get_server()`` or
        ``start()``): the registered types' factories then make their objects
        there.  The built-in factories still return shared-memory objects.

        Raises:
            ValueError: there is no ``address`` to connect to.
        """
        if self._address is None:
            raise ValueError(
                "connect() needs the address of a running manager's server: "
                "SyncManager(address=(host, port), authkey=...)"
            )
        super().connect()

    def get_server(self) -> Server:
        """The server for the registered types, to run with ``serve_forever()`` in
        this process (the standard library's ``Server``), listening on ``address``."""
        return super().get_server()

    def shutdown(self) -> None:
        """Stop making objects; terminate the pools :meth:`Pool` made; stop the server.

        Shared-memory objects the manager made stay usable by whoever holds them:
        each lives while any process has a handle to it.  (Proxies of registered
        types stop working with their server, as in the standard library.)  Calling
        it again does nothing.
        """
        pools, self._pools = list(self._pools), weakref.WeakSet()
        for pool in pools:
            pool.terminate()
        stop, self._stop_server = self._stop_server, None
        if stop is not None:
            stop()  # the standard library's finalizer: asks the server to exit, joins
        self._state.value = State.SHUTDOWN

    def join(self, timeout: float | None = None) -> None:
        """Wait for the server process to exit (at once if there is none)."""
        process = self._process
        if process is not None:
            process.join(timeout)
            if not process.is_alive():
                self._process = None

    def __enter__(self) -> SyncManager:
        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value == State.SHUTDOWN:
            raise ProcessError("Manager has shut down")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        if self._serves() and self._state.value == State.STARTED:
            where = f"server at {self._address!r}"
        else:
            where = "no server process"
        return f"<shoal.managers.{type(self).__qualname__} {self._status}, {where}>"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._serves():
            raise TypeError(
                f"a {type(self).__name__} with a server does not pickle (its authkey "
                "must not travel): pass its proxies, which pickle, or its address to "
                "connect() to"
            )
        # a copy for another process: same state and context; pools stay with this one
        return (_rebuild_manager, (type(self), self._status, self._pool_ctx))

    def _check_open(self) -> None:
        if self._state.value == State.SHUTDOWN:
            raise ClosedError(
                "this manager was shut down and makes no new objects (the ones it made "
                "still work); use a new Manager()"
            )

    # ---- queues ----------------------------------------------------------------------------

    def Queue(self, maxsize: int = 0) -> _queues.JoinableQueue:
        """A shoal queue (``maxsize`` items at most, 0: no limit).

        A :class:`~shoal.JoinableQueue`, a :class:`~shoal.Queue` with ``task_done()``
        and ``join()``: the standard library's manager queue is a ``queue.Queue``,
        which has them.
        """
        self._check_open()
        return _queues.JoinableQueue(maxsize)

    def JoinableQueue(self, maxsize: int = 0) -> _queues.JoinableQueue:
        """A :class:`~shoal.JoinableQueue` (``maxsize`` items at most, 0: no limit)."""
        self._check_open()
        return _queues.JoinableQueue(maxsize)

    # ---- synchronization -------------------------------------------------------------------

    def Lock(self) -> _sync.Lock:
        """A :class:`~shoal.Lock` (it survives a dead owner)."""
        self._check_open()
        return _sync.Lock()

    def RLock(self) -> _sync.RLock:
        """A :class:`~shoal.RLock`."""
        self._check_open()
        return _sync.RLock()

    def Semaphore(self, value: int = 1) -> _sync.Semaphore:
        """A :class:`~shoal.Semaphore` starting at ``value``."""
        self._check_open()
        return _sync.Semaphore(value)

    def BoundedSemaphore(self, value: int = 1) -> _sync.BoundedSemaphore:
        """A :class:`~shoal.BoundedSemaphore` starting (and capped) at ``value``."""
        self._check_open()
        return _sync.BoundedSemaphore(value)

    def Condition(self, lock: _sync.Lock | None = None) -> _sync.Condition:
        """A :class:`~shoal.Condition` on ``lock`` (a shoal Lock or RLock; a new RLock
        by default)."""
        self._check_open()
        return _sync.Condition(lock)

    def Event(self) -> _sync.Event:
        """A :class:`~shoal.Event`."""
        self._check_open()
        return _sync.Event()

    def Barrier(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> _sync.Barrier:
        """A :class:`~shoal.Barrier` for ``parties`` processes or threads."""
        self._check_open()
        return _sync.Barrier(parties, action, timeout)

    # ---- shared data -----------------------------------------------------------------------

    def Value(self, typecode: Any, value: Any, lock: Any = True) -> Any:
        """A shared value, as ``Manager().Value(typecode, value)``.

        Args:
            typecode: a typecode (``'i'``, ``'d'``, ``'c'``...) or a ctypes number type
                (``ctypes.c_int``, ``ctypes.c_bool``...): the value lives in shared
                memory as that C type.  ``ctypes.c_char_p``, ``c_wchar_p``,
                ``py_object`` and other ctypes types: the value holds any picklable
                object, as the standard library's (``Value(c_char_p, "text")``).
            value: the initial value.
            lock: accepted and ignored, as by the standard library's manager: a
                number always has its lock (``get_lock()``).

        Returns:
            for a number or character, a :class:`shoal.sharedctypes.Synchronized`
            with ``.value``, ``get()``, ``set()``, ``get_lock()`` and lock-free
            ``add``/``fetch_add``/``exchange``/``compare_exchange``; otherwise a
            value with ``.value``, ``get()`` and ``set()``.  Either pickles as a
            handle.

        Raises:
            TypeError: an unknown typecode, something that is not a typecode, or a
                value the C type cannot hold (``Value('i', 'text')``).
        """
        self._check_open()
        if _value_kind(typecode) == "object":
            return _ObjectValue(typecode.__name__, value)
        elem = _sharedctypes._resolve(typecode)
        return _ManagedValue._make(elem, None, (value,), _sync.RLock())

    def Array(self, typecode: Any, sequence: Any, lock: Any = True) -> Any:
        """A shared array, as ``Manager().Array(typecode, sequence)``.

        Args:
            typecode: a typecode (``'i'``, ``'d'``, ``'c'``...) or a ctypes type.
            sequence: the items (any iterable); shoal also takes a length (the
                array starts zeroed).
            lock: accepted and ignored: the array always has its lock.

        Returns:
            a :class:`shoal.sharedctypes.SynchronizedArray` (indexing, slicing, ``len``,
            iteration, ``get_lock()``, lock-free ``add(i)``...), of fixed length.

        Raises:
            TypeError: an unknown typecode, a ``sequence`` that is neither iterable nor
                an int, or items the C type cannot hold.
        """
        self._check_open()
        if not isinstance(sequence, (int, Sized)):
            try:
                sequence = builtins.list(sequence)
            except TypeError:
                raise TypeError(
                    "Manager().Array needs a sequence of initial items (or a length), "
                    f"not {type(sequence).__name__}"
                ) from None
        return _sharedctypes.Array(typecode, sequence)

    def dict(self, *args: Any, **kwargs: Any) -> _dict.SharedDict:
        """A :class:`~shoal.SharedDict` holding what ``dict(*args, **kwargs)`` holds."""
        self._check_open()
        return _dict.SharedDict(builtins.dict(*args, **kwargs))

    def list(self, *args: Any) -> _list.SharedList:
        """A :class:`~shoal.SharedList` holding what ``list(*args)`` holds."""
        self._check_open()
        return _list.SharedList(builtins.list(*args))

    def set(self, iterable: Iterable[_T] = (), /) -> _set.SharedSet[_T]:
        """A :class:`~shoal.SharedSet` holding what ``set(iterable)`` holds (the standard
        library's ``SyncManager.set()``, new in Python 3.14, here on every version)."""
        self._check_open()
        return _set.SharedSet(builtins.set(iterable))

    def Namespace(self, **kwds: Any) -> _Namespace:
        """A :class:`Namespace` whose attributes every holding process shares."""
        self._check_open()
        return Namespace(**kwds)

    # ---- pools -----------------------------------------------------------------------------

    def Pool(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        **kwargs: Any,
    ) -> _pool.Pool:
        """A :class:`~shoal.Pool` in this process (the standard library's runs in the
        server).

        The arguments are ``Pool``'s (``task_timeout=`` and ``uncollected_errors=``
        included); ``context`` defaults to the manager's ``ctx``.  :meth:`shutdown`
        terminates it, as the end of the standard library's server does.  It cannot
        be passed to other processes.
        """
        self._check_open()
        if context is None:
            context = self._pool_ctx
        pool = _pool.Pool(processes, initializer, initargs, maxtasksperchild, context, **kwargs)
        self._pools.add(pool)
        return pool


def _rebuild_manager(cls: type[SyncManager], state: str, ctx: Any) -> SyncManager:
    manager = cls(ctx=ctx)
    manager._state.value = _STATE_VALUES[state]
    return manager


def Manager() -> SyncManager:
    """A started :class:`SyncManager`, as ``multiprocessing.Manager()`` returns.

    Its ``Queue()``, ``Lock()``, ``dict()``, ``list()``, ``Value()``,
    ``Namespace()``... return shoal's shared-memory objects: the same calls, no server
    process, memory speed.  ``with Manager() as m:`` shuts it down at the end (the
    objects live on while anyone holds them).  See docs/managers.md for what differs
    from the standard library's proxies.
    """
    manager = SyncManager()
    manager.start()
    return manager
