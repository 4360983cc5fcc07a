"""shoal: reading and writing memory across processes, fast, safe and boring.

The multiprocessing API, with every lock and shared object living in shared memory:
each pickles as a small handle and works in any process, ``Pool`` tasks included;
locks survive a dead owner; segments are reference counted and reaped after crashes.

    import shoal
    lock = shoal.Lock()          # pass it anywhere: Pool tasks, queues, later processes
"""

import os
import sys

# Nothing is imported until it is used (#11): ``import shoal`` costs less than ``import
# multiprocessing, concurrent.futures``, and a program that only needs a Lock never
# loads the pool, the managers or numpy.  Type checkers read the imports below; at run
# time each name is looked up in _EXPORTS on first access (PEP 562) and then bound here.
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (checkers know it)
if TYPE_CHECKING:
    from ._array import SharedArray as SharedArray
    from ._array import share as share
    from ._context import get_context as get_context
    from ._context import use as use
    from ._dict import DictStatistics as DictStatistics
    from ._dict import SharedDict as SharedDict
    from ._errors import BarrierPartyDiedError as BarrierPartyDiedError
    from ._errors import BrokenError as BrokenError
    from ._errors import BrokenPoolError as BrokenPoolError
    from ._errors import ClosedError as ClosedError
    from ._errors import LayoutError as LayoutError
    from ._errors import NotHeldError as NotHeldError
    from ._errors import OwnerDiedWarning as OwnerDiedWarning
    from ._errors import SegmentNotFoundError as SegmentNotFoundError
    from ._errors import SerializationError as SerializationError
    from ._errors import SerializationTypeError as SerializationTypeError
    from ._errors import SharedMemoryError as SharedMemoryError
    from ._errors import ShoalError as ShoalError
    from ._errors import ShoalWarning as ShoalWarning
    from ._errors import ShutDown as ShutDown
    from ._errors import TaskCancelledError as TaskCancelledError
    from ._errors import TaskTimeoutError as TaskTimeoutError
    from ._errors import UncollectedTaskErrorWarning as UncollectedTaskErrorWarning
    from ._errors import WorkerDiedError as WorkerDiedError
    from ._list import SharedList as SharedList
    from ._managers import Manager as Manager
    from ._pool import Executor as Executor
    from ._pool import Pool as Pool
    from ._pool import uninterruptible as uninterruptible
    from ._pool import worker_state as worker_state
    from ._process import AuthenticationError as AuthenticationError
    from ._process import BufferTooShort as BufferTooShort
    from ._process import Pipe as Pipe
    from ._process import Process as Process
    from ._process import ProcessError as ProcessError
    from ._process import TimeoutError as TimeoutError
    from ._process import active_children as active_children
    from ._process import allow_connection_pickling as allow_connection_pickling
    from ._process import cpu_count as cpu_count
    from ._process import current_process as current_process
    from ._process import freeze_support as freeze_support
    from ._process import get_all_start_methods as get_all_start_methods
    from ._process import get_logger as get_logger
    from ._process import get_start_method as get_start_method
    from ._process import log_to_stderr as log_to_stderr
    from ._process import parent_process as parent_process
    from ._process import process_cpu_count as process_cpu_count
    from ._process import set_executable as set_executable
    from ._process import set_forkserver_preload as set_forkserver_preload
    from ._process import set_start_method as set_start_method
    from ._queues import JoinableQueue as JoinableQueue
    from ._queues import Queue as Queue
    from ._queues import QueueStatistics as QueueStatistics
    from ._queues import SimpleQueue as SimpleQueue
    from ._set import SharedSet as SharedSet
    from ._sharedctypes import Array as Array
    from ._sharedctypes import RawArray as RawArray
    from ._sharedctypes import RawValue as RawValue
    from ._sharedctypes import Value as Value
    from ._sync import Barrier as Barrier
    from ._sync import BarrierStatistics as BarrierStatistics
    from ._sync import BoundedSemaphore as BoundedSemaphore
    from ._sync import BrokenBarrierError as BrokenBarrierError
    from ._sync import Condition as Condition
    from ._sync import Event as Event
    from ._sync import EventStatistics as EventStatistics
    from ._sync import Lock as Lock
    from ._sync import LockStatistics as LockStatistics
    from ._sync import RLock as RLock
    from ._sync import Semaphore as Semaphore
    from ._sync import SemaphoreStatistics as SemaphoreStatistics

__version__ = "0.1.0.dev0"

__all__ = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BarrierPartyDiedError",
    "BarrierStatistics",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "BrokenError",
    "BrokenPoolError",
    "BufferTooShort",
    "ClosedError",
    "Condition",
    "DictStatistics",
    "Event",
    "EventStatistics",
    "Executor",
    "JoinableQueue",
    "LayoutError",
    "Lock",
    "LockStatistics",
    "Manager",
    "NotHeldError",
    "OwnerDiedWarning",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "Queue",
    "QueueStatistics",
    "RLock",
    "RawArray",
    "RawValue",
    "SegmentNotFoundError",
    "Semaphore",
    "SemaphoreStatistics",
    "SerializationError",
    "SerializationTypeError",
    "SharedArray",
    "SharedDict",
    "SharedList",
    "SharedMemoryError",
    "SharedSet",
    "ShoalError",
    "ShoalWarning",
    "ShutDown",
    "SimpleQueue",
    "TaskCancelledError",
    "TaskTimeoutError",
    "TimeoutError",
    "UncollectedTaskErrorWarning",
    "Value",
    "WorkerDiedError",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "process_cpu_count",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
    "share",
    "uninterruptible",
    "use",
    "worker_state",
]

# the module that defines each public name; numpy is optional (shoal[numpy]) and starts
# threads when imported, so SharedArray and share() load it on first use only (#4)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_array": ("SharedArray", "share"),
    "_context": ("get_context", "use"),
    "_dict": ("DictStatistics", "SharedDict"),
    "_errors": (
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
    ),
    "_list": ("SharedList",),
    "_managers": ("Manager",),
    "_pool": ("Executor", "Pool", "uninterruptible", "worker_state"),
    "_process": (
        "AuthenticationError",
        "BufferTooShort",
        "Pipe",
        "Process",
        "ProcessError",
        "TimeoutError",
        "active_children",
        "allow_connection_pickling",
        "cpu_count",
        "current_process",
        "freeze_support",
        "get_all_start_methods",
        "get_logger",
        "get_start_method",
        "log_to_stderr",
        "parent_process",
        "process_cpu_count",
        "set_executable",
        "set_forkserver_preload",
        "set_start_method",
    ),
    "_queues": ("JoinableQueue", "Queue", "QueueStatistics", "SimpleQueue"),
    "_set": ("SharedSet",),
    "_sharedctypes": ("Array", "RawArray", "RawValue", "Value"),
    "_sync": (
        "Barrier",
        "BarrierStatistics",
        "BoundedSemaphore",
        "BrokenBarrierError",
        "Condition",
        "Event",
        "EventStatistics",
        "Lock",
        "LockStatistics",
        "RLock",
        "Semaphore",
        "SemaphoreStatistics",
    ),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
# A sweep frees what dead processes held last after calling its class's hook (a queue
# discards its records, whose transit segments would stay otherwise), so a process
# that can reach shared memory must know every class in it, whichever it used: any
# name but the exceptions and the standard library's process names loads them all
# (_array's aside: numpy is optional); shoal.lowlevel and the shims import them too.
_OBJECTS = ("_sync", "_queues", "_dict", "_sharedctypes")
_NO_MEMORY = ("_errors", "_process")

# (hidden from type checkers, which would type every unknown attribute as its result)
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _HOME.get(name)
        if module is None:
            raise AttributeError(f"module 'shoal' has no attribute {name!r}")
        if name in _FACTORIES and _context_chosen():
            # shoal.use() or SHOAL_CONTEXT chose a context: its factory (not bound
            # here, so that another use() is seen)
            __import__("shoal._context")
            ctx = sys.modules["shoal._context"].in_use()
            if ctx is not None:
                factory = getattr(ctx, name, None)
                if factory is None:
                    raise AttributeError(f"shoal.{name}: the context in use, {ctx!r}, has none")
                return factory
        if module not in _NO_MEMORY:
            for objects in _OBJECTS:
                __import__(f"shoal.{objects}")
        # (an ImportError naming `pip install shoal[numpy]` if numpy is missing)
        __import__(f"shoal.{module}")
        _bind_loaded()
        if name not in globals():  # one its module makes on first use (_errors')
            _bind(name, getattr(sys.modules[f"shoal.{module}"], name))
        return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


# the names a context chosen by shoal.use() or SHOAL_CONTEXT answers (_context.FACTORIES)
_FACTORIES = frozenset({
    "Array", "Barrier", "BoundedSemaphore", "Condition", "Event", "Executor",
    "JoinableQueue", "Lock", "Manager", "Pool", "Queue", "RLock", "RawArray",
    "RawValue", "Semaphore", "SimpleQueue", "Value",
})  # fmt: skip


def _context_chosen() -> bool:
    """Whether a context other than the local default may be in use (cheap: no import)."""
    ctx = sys.modules.get("shoal._context")
    used = getattr(ctx, "_used", None) if ctx is not None else None
    if ctx is not None and used is not getattr(ctx, "_UNSET", None):
        return used is not None
    return bool(os.environ.get("SHOAL_CONTEXT"))


def _bind_loaded() -> None:
    """Bind the public names of every shoal module imported so far (one imports
    others), so that they are found directly from now on, and have its classes and
    functions say they are shoal's, not a private module's (trio's habit)."""
    modules = sys.modules
    for module, names in _EXPORTS.items():
        loaded = modules.get(f"shoal.{module}")
        if loaded is None or names[0] in globals():
            continue
        if getattr(loaded.__spec__, "_initializing", False):
            continue  # still running its own imports: bound once it is done
        chosen = _context_chosen()
        for name in names:
            if chosen and name in _FACTORIES:
                continue  # the chosen context's (__getattr__)
            value = vars(loaded).get(name)
            if value is not None:  # (else made on first use: bound when asked for)
                _bind(name, value)


def _bind(name: str, value: object) -> None:
    if getattr(value, "__module__", "").startswith("shoal._"):
        value.__module__ = "shoal"  # type: ignore[attr-defined]
    globals()[name] = value


del TYPE_CHECKING
