"""CPython's ``test.test_concurrent_futures``, its process-pool classes bound to shoal.

``create_executor_tests`` makes ``ProcessPoolForkExecutorTest``,
``ProcessPoolSpawnWaitTest`` … by mixing a test class with
``ProcessPool{Fork,Spawn,Forkserver}Mixin``, whose ``executor_type`` is
``ProcessPoolExecutor`` and whose ``get_context()`` is the standard library's context
of the method.  Here each process-pool class of the start method in
``SHOAL_STDLIB_METHOD`` is subclassed (same name) with ``executor_type = shoal.Executor``
and shoal's context of that method: the executor the tests make, and the queues,
events and semaphores they make from its context, are shoal's.  The thread-pool and
``Future`` classes test nothing of shoal's and are left out.

Python 3.11 builds without the test package's ``test_concurrent_futures`` exist (this
project's own interpreter is one): ``make test-stdlib`` then installs the file of the
release (Debian's ``libpython3.X-testsuite``) into ``SHOAL_STDLIB_TESTS``, from where
it is imported as a top-level module.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import unittest
from typing import Any

import shoal

METHOD = os.environ.get("SHOAL_STDLIB_METHOD", "fork")
_MIXIN_PREFIX = {"fork": "ProcessPoolFork", "spawn": "ProcessPoolSpawn",
                 "forkserver": "ProcessPoolForkserver"}  # fmt: skip


def _load() -> Any:
    try:
        return importlib.import_module("test.test_concurrent_futures")
    except ImportError:
        pass
    where = os.environ.get("SHOAL_STDLIB_TESTS")
    if where and where not in sys.path:
        # (spawned children get the parent's sys.path: they find it the same way)
        sys.path.append(where)
    return importlib.import_module("test_concurrent_futures")


cft = _load()


def _namespaces() -> tuple[Any, list[dict[str, Any]], Any]:
    """Where the suite's mixins, test classes and module set-up are.

    Up to 3.11 the suite is one file; from 3.12 it is a package whose ``util`` holds the
    mixins and ``setup_module``, and whose ``test_*`` modules each make their classes.
    """
    if not hasattr(cft, "__path__"):
        return cft, [vars(cft)], cft.setUpModule
    util = importlib.import_module(cft.__name__ + ".util")
    modules = [
        importlib.import_module(f"{cft.__name__}.{info.name}")
        for info in pkgutil.iter_modules(cft.__path__)
        if info.name.startswith("test_")
    ]
    return util, [vars(m) for m in modules], util.setup_module


def install(globs: dict[str, Any], method: str) -> None:
    """Make this start method's process-pool test classes in ``globs``, bound to shoal."""
    prefix = _MIXIN_PREFIX[method]
    mixins, namespaces, set_up = _namespaces()
    mixin = getattr(mixins, prefix + "Mixin")
    for name, base in [item for ns in namespaces for item in ns.items()]:
        if not (isinstance(base, type) and issubclass(base, unittest.TestCase)):
            continue
        if not (issubclass(base, mixin) and name.startswith(prefix)):
            continue
        if method == "fork" and name.startswith("ProcessPoolForkserver"):
            continue

        def get_context(self: Any) -> Any:
            # the stdlib mixin's checks (skips) first, then shoal's context
            super(type(self), self).get_context()
            return shoal.get_context(self.ctx)

        cls = type(name, (base,), {"executor_type": shoal.Executor, "get_context": get_context})
        cls.__qualname__ = name
        cls.__module__ = globs["__name__"]
        globs[name] = cls
    globs["setUpModule"] = set_up


install(globals(), METHOD)
