"""Stdlib-shaped shim: ``from shoal.sharedctypes import Value``, as from
``multiprocessing.sharedctypes`` (every object here pickles as a handle)."""

# (a sweep must know every class in shared memory: see shoal/__init__.py)
from . import _dict, _queues, _sharedctypes, _sync  # noqa: F401
from ._sharedctypes import Array as Array
from ._sharedctypes import RawArray as RawArray
from ._sharedctypes import RawValue as RawValue
from ._sharedctypes import Synchronized as Synchronized
from ._sharedctypes import SynchronizedArray as SynchronizedArray
from ._sharedctypes import SynchronizedBase as SynchronizedBase
from ._sharedctypes import SynchronizedString as SynchronizedString
from ._sharedctypes import Value as Value
from ._sharedctypes import copy as copy
from ._sharedctypes import synchronized as synchronized

__all__ = [
    "Array",
    "RawArray",
    "RawValue",
    "Synchronized",
    "SynchronizedArray",
    "SynchronizedBase",
    "SynchronizedString",
    "Value",
    "copy",
    "synchronized",
]
