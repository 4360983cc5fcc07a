"""Types and managers that tests/test_managers_custom.py serves from a manager's server
(at module level, so that spawn and forkserver children import them by name)."""

from __future__ import annotations

import os
from typing import Any

from shoal.managers import BaseManager, DictProxy, SyncManager


class Maths:
    """A custom type, served from a manager's server process."""

    def __init__(self, base: int = 0) -> None:
        self.base = base

    def add(self, x: int, y: int) -> int:
        return self.base + x + y

    def pid(self) -> int:
        return os.getpid()

    def fail(self) -> None:
        raise ValueError("maths failed")


class MathsManager(BaseManager):
    """A program's own manager: ``class MyManager(BaseManager): pass``."""


MathsManager.register("Maths", Maths)


class MySyncManager(SyncManager):
    """A SyncManager subclass that registers a type of its own."""


MySyncManager.register("Maths", Maths)

_SHARED: dict[str, Any] = {}


def shared_dict() -> dict[str, Any]:
    """What a served ``get_dict`` returns: one dict in the server process."""
    return _SHARED


class QueueManager(BaseManager):
    """The documentation's network manager: a server with ``get_dict``, served by
    ``get_server().serve_forever()`` and reached with ``connect()``."""


QueueManager.register("get_dict", callable=shared_dict, proxytype=DictProxy)


def serve(address: tuple[str, int], authkey: bytes, ready: Any) -> None:
    """Run a QueueManager's server on ``address`` until it is told to shut down."""
    manager = QueueManager(address=address, authkey=authkey)
    server = manager.get_server()
    ready.put(server.address)
    server.serve_forever()


def use_maths(manager_address: Any, authkey: bytes, out: Any) -> None:
    """A child connecting to a MySyncManager's server: a new Maths there, one call."""
    manager = MySyncManager(address=manager_address, authkey=authkey)
    manager.connect()
    out.put(manager.Maths(1).add(2, 3))


def add_with(maths: Any, out: Any) -> None:
    """A child calling a proxy it was given."""
    out.put(maths.add(10, 20))
