"""Stdlib-shaped shim: ``from shoal.managers import SyncManager``, as from
``multiprocessing.managers`` (a manager with no server: its objects live in shared memory)."""

from ._managers import Namespace as Namespace
from ._managers import SyncManager as SyncManager

__all__ = ["Namespace", "SyncManager"]
