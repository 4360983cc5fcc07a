"""Stdlib-shaped shim: ``from shoal.queues import Queue``, as from multiprocessing.queues."""

from ._queues import JoinableQueue as JoinableQueue
from ._queues import Queue as Queue
from ._queues import SimpleQueue as SimpleQueue

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]
