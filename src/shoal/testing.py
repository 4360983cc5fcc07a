"""``shoal.testing``: helpers for testing programs that use shoal: the start methods, a
check that no shared-memory segment leaked, and faults (a lock owner SIGKILLed holding
its lock, a pool worker killed mid-task).  With pytest,
``pytest_plugins = ["shoal.testing"]`` in a ``conftest.py`` also gives the fixtures
``shoal_start_method`` and ``shoal_no_leaks``."""

from ._testing import *  # noqa: F403 (the list is _testing's own)
from ._testing import __all__ as __all__
