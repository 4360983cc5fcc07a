"""Managers with a server (issue #11): what ``multiprocessing.managers`` exports is in
``shoal.managers``, and programs that define their own manager run unchanged.

* ``shoal.managers`` has every public name of ``multiprocessing.managers`` that programs
  import (``BaseManager``, ``BaseProxy``, ``Token``, ``SharedMemoryManager``, the
  proxies...), and ``SetProxy`` on every Python version;
* ``class MyManager(BaseManager)`` with ``register()`` starts a real server process
  under each start method (the ``ctx`` fixture), whose proxies work in this process and
  in a child, errors included;
* a ``SyncManager`` subclass that registers a type of its own gets a server for that
  type, while its built-in factories still return shared-memory objects;
* a manager served over TCP with ``get_server().serve_forever()`` in one process is
  reached with ``connect()`` from another, with the authkey checked;
* a shoal ``SyncManager`` with nothing registered still starts no process.

The types and managers live in tests/manager_types.py, importable by spawn and
forkserver children.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.managers
import os
import pickle
import socket
from typing import Any

import manager_types
import pytest
from conftest import join_all
from manager_types import MathsManager, MySyncManager, QueueManager

import shoal
import shoal.managers
from shoal.managers import BaseManager, SyncManager

TIMEOUT = 30.0


def stdlib_public_names() -> list[str]:
    """The classes and functions ``multiprocessing.managers`` defines, which programs
    import from it (its server-side helpers ``Value``/``Array``, the pickling helpers
    and ``ProcessLocalSet`` aside)."""
    internal = {"Value", "Array", "ProcessLocalSet", "rebuild_as_list", "reduce_array"}
    return sorted(
        name
        for name, value in vars(mp.managers).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == "multiprocessing.managers"
        and name not in internal
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- what shoal.managers exports ---------------------------------------------------------------


def test_shoal_managers_has_what_multiprocessing_managers_exports():
    names = stdlib_public_names()
    assert {"BaseManager", "BaseProxy", "Token", "DictProxy", "AcquirerProxy"} <= set(names)
    missing = [name for name in names if not hasattr(shoal.managers, name)]
    assert not missing, f"shoal.managers lacks {missing}"
    for name in mp.managers.__all__:
        assert name in shoal.managers.__all__, name


def test_the_machinery_is_the_standard_library_s():
    for name in ("BaseManager", "BaseProxy", "Token", "DictProxy", "ListProxy", "ValueProxy",
                 "AcquirerProxy", "SharedMemoryManager", "Server", "RemoteError"):  # fmt: skip
        assert getattr(shoal.managers, name) is getattr(mp.managers, name), name
    # shoal's own: the serverless SyncManager and the shared-memory Namespace
    assert issubclass(SyncManager, mp.managers.BaseManager)
    assert shoal.managers.Namespace is not mp.managers.Namespace


def test_set_proxy_exists_on_every_version():
    proxy = shoal.managers.SetProxy
    assert issubclass(proxy, mp.managers.BaseProxy)
    assert getattr(mp.managers, "SetProxy", proxy) is proxy
    assert {"add", "discard", "__ior__", "__contains__", "__len__"} <= set(proxy._exposed_)


# ---- a program's own manager -------------------------------------------------------------------


def child_puts(ctx: mp.context.BaseContext, target: Any, args: tuple, q: Any) -> Any:
    """What a child process running ``target(*args)`` puts on ``q`` (it must exit 0)."""
    child = ctx.Process(target=target, args=args)
    child.start()
    try:
        value = q.get(timeout=TIMEOUT)
    finally:
        join_all(child)
    assert child.exitcode == 0
    return value


def test_base_manager_subclass_serves_a_registered_type(ctx: mp.context.BaseContext):
    with MathsManager(ctx=ctx) as manager:
        maths = manager.Maths(5)
        assert maths.add(1, 2) == 8
        assert maths.pid() not in (os.getpid(), None)
        with pytest.raises(ValueError, match="maths failed"):
            maths.fail()
        assert isinstance(maths, mp.managers.BaseProxy)
        q = shoal.Queue()
        assert child_puts(ctx, manager_types.add_with, (maths, q), q) == 35
    manager.join(TIMEOUT)


def test_sync_manager_subclass_gets_a_server_for_its_own_types(ctx: mp.context.BaseContext):
    manager = MySyncManager(ctx=ctx)
    manager.start()
    try:
        assert "server at" in repr(manager)
        maths = manager.Maths(1)
        assert isinstance(maths, mp.managers.BaseProxy) and maths.add(2, 3) == 6
        # the built-in factories still make shared-memory objects
        d, lst, s = manager.dict(a=1), manager.list([1]), manager.set({1})
        assert type(d) is shoal.SharedDict and type(lst) is shoal.SharedList
        assert type(s) is shoal.SharedSet
        assert type(manager.Lock()) is shoal.Lock
        # a child connects to the server and makes its own Maths there
        q = manager.Queue()
        authkey = bytes(mp.current_process().authkey)
        assert child_puts(ctx, manager_types.use_maths, (manager.address, authkey, q), q) == 6
    finally:
        manager.shutdown()
    manager.join(TIMEOUT)
    assert not mp.active_children()
    assert d == {"a": 1}, "the shared-memory objects outlive the server"
    with pytest.raises(shoal.ClosedError):
        manager.dict()


def test_sync_manager_register_adds_to_the_subclass_only():
    assert "Maths" in MySyncManager._registry
    assert not SyncManager._registry, "SyncManager itself has no registered types"
    assert "Maths" not in BaseManager._registry
    assert callable(MySyncManager.Maths) and not hasattr(SyncManager, "Maths")


def test_plain_sync_manager_starts_no_process():
    with SyncManager() as manager:
        assert "no server process" in repr(manager)
        assert manager.address is None
        assert not mp.active_children()


def test_manager_with_a_server_refuses_to_pickle():
    manager = MySyncManager()
    with pytest.raises(TypeError, match="does not pickle"):
        pickle.dumps(manager)


# ---- served over TCP ---------------------------------------------------------------------------


def test_server_over_tcp_with_serve_forever_and_connect(ctx: mp.context.BaseContext):
    address, authkey = ("127.0.0.1", free_port()), b"abracadabra"
    ready = shoal.Queue()
    server = ctx.Process(target=manager_types.serve, args=(address, authkey, ready))
    server.start()
    try:
        assert tuple(ready.get(timeout=TIMEOUT)) == address
        client = QueueManager(address=address, authkey=authkey)
        client.connect()
        d = client.get_dict()
        d["k"] = "v"
        other = QueueManager(address=address, authkey=authkey)
        other.connect()
        assert other.get_dict()["k"] == "v", "both clients reach the server's one dict"
        with pytest.raises(mp.AuthenticationError):
            QueueManager(address=address, authkey=b"wrong").connect()
        del d
    finally:
        server.terminate()
        join_all(server)


def test_sync_manager_listens_where_asked_and_connects():
    address = ("127.0.0.1", free_port())
    manager = MySyncManager(address=address, authkey=b"secret")
    manager.start()
    try:
        assert tuple(manager.address) == address
        client = MySyncManager(address=address, authkey=b"secret")
        client.connect()
        assert client.Maths(2).add(1, 1) == 4
        with pytest.raises(mp.AuthenticationError):
            MySyncManager(address=address, authkey=b"nope").connect()
    finally:
        manager.shutdown()
    manager.join(TIMEOUT)


def test_connect_without_an_address_raises_clearly():
    with pytest.raises(ValueError, match=r"connect\(\) needs the address"):
        SyncManager().connect()
    with pytest.raises(ValueError, match="serializer"):
        SyncManager(serializer="json")


def test_get_server_serves_the_registered_types():
    server = MySyncManager(address=("127.0.0.1", 0), authkey=b"k").get_server()
    try:
        assert "Maths" in server.registry
        assert server.address[0] == "127.0.0.1" and server.address[1] > 0
    finally:
        server.listener.close()
