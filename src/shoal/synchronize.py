"""Stdlib-shaped shim: ``from shoal.synchronize import Lock``, as from multiprocessing."""

# (a sweep must know every class in shared memory: see shoal/__init__.py)
from . import _dict, _queues, _sharedctypes, _sync  # noqa: F401
from ._sync import SYNCHRONIZE_ALL as __all__  # noqa: F401 (the list is _sync's own)
from ._sync import Barrier as Barrier
from ._sync import BoundedSemaphore as BoundedSemaphore
from ._sync import Condition as Condition
from ._sync import Event as Event
from ._sync import Lock as Lock
from ._sync import RLock as RLock
from ._sync import Semaphore as Semaphore
