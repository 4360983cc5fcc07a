"""CPython's ``test._test_multiprocessing``, its processes and manager flavours bound to shoal.

The standard library's ``test_multiprocessing_fork`` (and ``_spawn``, ``_forkserver``)
call ``install_tests_in_module_dict(globals(), "fork")``, which makes one
``unittest.TestCase`` per ``_TestX`` class and flavour by mixing in ``ProcessesMixin``
or ``ManagerMixin``: the classes that bind ``self.Queue``, ``self.Lock``,
``self.Pool``, ``self.manager`` … to ``multiprocessing``.  This module does the same
with mixins that bind them to shoal (``shoal.Queue``, ``shoal.Manager()`` …).  The
threads flavour (``multiprocessing.dummy``) has nothing of shoal's, and the plain
``TestCase`` classes of the module test the standard library itself: neither is made.

The start method comes from ``SHOAL_STDLIB_METHOD`` (the runner sets it), so that a
spawned child, which imports this module to find the test class of the method it runs,
builds the same classes.
"""

from __future__ import annotations

import operator
import os
import sys
import unittest
from typing import Any

import test._test_multiprocessing as mpt  # the interpreter's own copy
from test import support

import shoal
import shoal.connection

METHOD = os.environ.get("SHOAL_STDLIB_METHOD", "fork")


class ShoalProcessesMixin(mpt.BaseMixin):
    TYPE = "processes"
    Process = shoal.Process
    connection = shoal.connection
    current_process = staticmethod(shoal.current_process)
    parent_process = staticmethod(shoal.parent_process)
    active_children = staticmethod(shoal.active_children)
    set_executable = staticmethod(shoal.set_executable)
    Pool = staticmethod(shoal.Pool)
    Pipe = staticmethod(shoal.Pipe)
    Queue = staticmethod(shoal.Queue)
    JoinableQueue = staticmethod(shoal.JoinableQueue)
    Lock = staticmethod(shoal.Lock)
    RLock = staticmethod(shoal.RLock)
    Semaphore = staticmethod(shoal.Semaphore)
    BoundedSemaphore = staticmethod(shoal.BoundedSemaphore)
    Condition = staticmethod(shoal.Condition)
    Event = staticmethod(shoal.Event)
    Barrier = staticmethod(shoal.Barrier)
    Value = staticmethod(shoal.Value)
    Array = staticmethod(shoal.Array)
    RawValue = staticmethod(shoal.RawValue)
    RawArray = staticmethod(shoal.RawArray)


class ShoalManagerMixin(mpt.BaseMixin):
    TYPE = "manager"
    Process = shoal.Process
    Queue = property(operator.attrgetter("manager.Queue"))
    JoinableQueue = property(operator.attrgetter("manager.JoinableQueue"))
    Lock = property(operator.attrgetter("manager.Lock"))
    RLock = property(operator.attrgetter("manager.RLock"))
    Semaphore = property(operator.attrgetter("manager.Semaphore"))
    BoundedSemaphore = property(operator.attrgetter("manager.BoundedSemaphore"))
    Condition = property(operator.attrgetter("manager.Condition"))
    Event = property(operator.attrgetter("manager.Event"))
    Barrier = property(operator.attrgetter("manager.Barrier"))
    Value = property(operator.attrgetter("manager.Value"))
    Array = property(operator.attrgetter("manager.Array"))
    list = property(operator.attrgetter("manager.list"))
    dict = property(operator.attrgetter("manager.dict"))
    set = property(operator.attrgetter("manager.set"))  # (3.14's test_set*)
    Namespace = property(operator.attrgetter("manager.Namespace"))
    manager: Any = None

    @classmethod
    def Pool(cls, *args: Any, **kwds: Any) -> Any:
        return cls.manager.Pool(*args, **kwds)

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.manager = shoal.Manager()

    @classmethod
    def tearDownClass(cls) -> None:
        # (the stdlib's counts the server's objects here: shoal's manager has no server)
        cls.manager.shutdown()
        cls.manager.join()
        cls.manager = None
        super().tearDownClass()


MIXINS = {"processes": ShoalProcessesMixin, "manager": ShoalManagerMixin}


def install(globs: dict[str, Any], method: str) -> None:
    """Make the processes and manager test classes in ``globs``, as
    ``install_tests_in_module_dict`` does with the standard library's mixins."""
    module = globs["__name__"]
    for name, base in vars(mpt).items():
        if not (isinstance(base, type) and issubclass(base, mpt.BaseTestCase)):
            continue
        if base is mpt.BaseTestCase:
            continue
        for type_ in base.ALLOWED_TYPES:
            mixin = MIXINS.get(type_)
            if mixin is None:
                continue
            newname = "With" + type_.capitalize() + name[1:]
            cls = type(newname, (base, mixin, unittest.TestCase), {})
            cls.__qualname__ = newname
            cls.__module__ = module
            globs[newname] = cls

    saved: list[Any] = [None]

    def setUpModule() -> None:
        # as the stdlib's preloads test_multiprocessing_forkserver: the server imports
        # the test classes (and shoal) once, not each of its hundreds of children
        shoal.set_forkserver_preload(["__main__", module])
        saved[0] = shoal.get_start_method(allow_none=True)
        shoal.set_start_method(method, force=True)
        mpt.util.get_temp_dir()
        shoal.get_logger().setLevel(mpt.LOG_LEVEL)

    def tearDownModule() -> None:
        support.gc_collect()
        shoal.set_start_method(saved[0], force=True)
        mpt.util._cleanup_tests()

    globs["setUpModule"] = setUpModule
    globs["tearDownModule"] = tearDownModule


install(globals(), METHOD)

if __name__ == "__main__":
    sys.exit(unittest.main())
