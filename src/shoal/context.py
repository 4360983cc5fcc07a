"""Stdlib-shaped shim: ``from shoal.context import get_context``, as from
``multiprocessing.context``; a shoal :class:`Context` makes shoal's objects."""

from ._context import *  # noqa: F403 (the list is _context's own)
from ._context import __all__ as __all__
