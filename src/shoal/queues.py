"""Stdlib-shaped shim: ``from shoal.queues import Queue``, as from multiprocessing.queues."""

# (a sweep must know every class in shared memory: see shoal/__init__.py)
from . import _dict, _queues, _sharedctypes, _sync  # noqa: F401
from ._queues import QUEUES_ALL as __all__  # noqa: F401 (the list is _queues's own)
from ._queues import JoinableQueue as JoinableQueue
from ._queues import Queue as Queue
from ._queues import SimpleQueue as SimpleQueue
