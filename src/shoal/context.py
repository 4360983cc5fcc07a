"""Stdlib-shaped shim: ``from shoal.context import get_context``, as from
``multiprocessing.context``; a shoal :class:`Context` makes shoal's objects."""

from ._context import Context as Context
from ._context import get_context as get_context

__all__ = ["Context", "get_context"]
