"""shoal: reading and writing memory across processes, fast, safe and boring.

The multiprocessing API, with every lock and shared object living in shared memory:
each pickles as a small handle and works in any process, ``Pool`` tasks included;
locks survive a dead owner; segments are reference counted and reaped after crashes.

    import shoal
    lock = shoal.Lock()          # pass it anywhere: Pool tasks, queues, later processes
"""

import importlib

from ._dict import DictStatistics as DictStatistics
from ._dict import SharedDict as SharedDict
from ._errors import BarrierPartyDiedError as BarrierPartyDiedError
from ._errors import BrokenError as BrokenError
from ._errors import ClosedError as ClosedError
from ._errors import LayoutError as LayoutError
from ._errors import NotHeldError as NotHeldError
from ._errors import OwnerDiedWarning as OwnerDiedWarning
from ._errors import SegmentNotFoundError as SegmentNotFoundError
from ._errors import SerializationError as SerializationError
from ._errors import SharedMemoryError as SharedMemoryError
from ._errors import ShoalError as ShoalError
from ._errors import ShoalWarning as ShoalWarning
from ._errors import ShutDown as ShutDown
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import UncollectedTaskErrorWarning as UncollectedTaskErrorWarning
from ._errors import WorkerDiedError as WorkerDiedError
from ._list import SharedList as SharedList
from ._queues import JoinableQueue as JoinableQueue
from ._queues import Queue as Queue
from ._queues import QueueStatistics as QueueStatistics
from ._queues import SimpleQueue as SimpleQueue
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
    "Barrier",
    "BarrierPartyDiedError",
    "BarrierStatistics",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "BrokenError",
    "ClosedError",
    "Condition",
    "DictStatistics",
    "Event",
    "EventStatistics",
    "JoinableQueue",
    "LayoutError",
    "Lock",
    "LockStatistics",
    "NotHeldError",
    "OwnerDiedWarning",
    "Queue",
    "QueueStatistics",
    "RLock",
    "RawArray",
    "RawValue",
    "SegmentNotFoundError",
    "Semaphore",
    "SemaphoreStatistics",
    "SerializationError",
    "SharedArray",
    "SharedDict",
    "SharedList",
    "SharedMemoryError",
    "ShoalError",
    "ShoalWarning",
    "ShutDown",
    "SimpleQueue",
    "TaskTimeoutError",
    "UncollectedTaskErrorWarning",
    "Value",
    "WorkerDiedError",
    "share",
]

# numpy is optional, and importing it starts threads: SharedArray and share() load
# shoal._array (and numpy) on first use, so `import shoal` stays free of both (#4)
_LAZY = {"SharedArray": "shoal._array", "share": "shoal._array"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    # ImportError naming `pip install shoal[numpy]` if numpy is missing
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# Public classes say they are shoal's, not a private module's (trio's habit).
for _name in __all__:
    if _name in _LAZY:
        continue  # says so itself (shoal._array)
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("shoal._"):
        _obj.__module__ = "shoal"
del _name, _obj
