"""Stdlib-shaped shim: ``from shoal.managers import SyncManager, BaseManager, DictProxy``,
as from ``multiprocessing.managers``.

``SyncManager`` and ``Namespace`` are shoal's (the manager's objects live in shared
memory; a server runs only for types a subclass registers); ``BaseManager``, the
proxies, ``Token``, ``Server`` and ``SharedMemoryManager`` are the standard library's,
and ``SetProxy`` (Python 3.14's) is there on every version.  (``Manager`` too, which
``multiprocessing.managers`` lacks: the same factory as ``shoal.Manager``.)"""

from ._managers import *  # noqa: F403 (the list is _managers' own)
from ._managers import __all__ as __all__
