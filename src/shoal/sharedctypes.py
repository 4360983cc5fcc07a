"""Stdlib-shaped shim: ``from shoal.sharedctypes import Value``, as from
``multiprocessing.sharedctypes`` (every object here pickles as a handle)."""

# (a sweep must know every class in shared memory: see shoal/__init__.py)
from . import _dict, _queues, _sharedctypes, _sync  # noqa: F401
from ._sharedctypes import *  # noqa: F403 (the list is _sharedctypes' own)
from ._sharedctypes import __all__ as __all__
