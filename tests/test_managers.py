"""``shoal.Manager()`` (issue #5, item 6): the standard library's manager calls,
returning shoal's shared-memory objects, with no server process.

* every factory returns the shoal object docs/managers.md promises, with the standard
  library's signature (and its errors for bad arguments);
* the objects work in a child ``Process`` and in tasks of the standard library's
  ``multiprocessing.Pool`` (the tutorial's case) under each start method (the ``ctx``
  fixture): one child and one pool worker per method, each exercising every object;
* ``Namespace`` across processes; ``with Manager() as m:``, ``start``/``shutdown``/
  ``join`` and what shutdown does (the objects live on, the pools end);
* with nothing registered and no address, ``connect`` and ``get_server`` refuse
  clearly (servers for registered types: test_managers_custom.py);
* the tutorial's manager program (a Queue and a Lock passed to ``apply_async``).

The tests taking ``context`` or ``cm`` (conftest.py) run on the local context and on
the Ray one (#13).  The others stay local: they check which shoal class each factory
returns, the shared memory, child processes under each start method, or the server
for registered types, none of which a Ray manager has.

Child functions live at module level so spawn and forkserver children can import them.
"""

from __future__ import annotations

import ctypes
import gc
import inspect
import multiprocessing as mp
import multiprocessing.managers
import os
import pickle
import queue
import threading
import weakref
from typing import Any

import pytest
from conftest import join_all

import shoal
from shoal import ClosedError, SegmentNotFoundError, SerializationError
from shoal.managers import Namespace, SyncManager
from shoal.sharedctypes import Synchronized, SynchronizedArray, SynchronizedString

TIMEOUT = 30.0
PROCESS_CLASS = {"fork": "ForkProcess", "spawn": "SpawnProcess", "forkserver": "ForkServerProcess"}


@pytest.fixture
def m():
    manager = shoal.Manager()
    yield manager
    manager.shutdown()


@pytest.fixture
def cm(context: Any) -> Any:
    """A started manager of the ``context`` fixture's context: the local one, or the
    Ray context's (whose objects are cluster objects, #13)."""
    manager = context.Manager()
    yield manager
    manager.shutdown()


# ---- what each factory returns ----------------------------------------------------------------


def test_manager_returns_a_started_sync_manager():
    manager = shoal.Manager()
    assert type(manager) is SyncManager
    assert "started" in repr(manager)
    with pytest.raises(mp.ProcessError, match="Already started"):
        manager.start()
    manager.shutdown()


def test_every_factory_of_the_standard_library_exists():
    stdlib = mp.managers.SyncManager
    names = [typeid for typeid in stdlib._registry if hasattr(stdlib, typeid)]
    assert len(names) >= 15
    for name in names:
        assert callable(getattr(SyncManager, name, None)), f"SyncManager.{name} is missing"


def stdlib_creators() -> list[tuple[str, Any]]:
    """(factory, the callable the standard library's server runs) for inspectable ones."""
    registry = mp.managers.SyncManager._registry
    out = []
    for name, (creator, *_) in sorted(registry.items()):
        if creator is None or not hasattr(mp.managers.SyncManager, name):
            continue
        try:
            inspect.signature(creator)
        except (TypeError, ValueError):
            continue  # a C type without a signature (threading.Lock)
        out.append((name, creator))
    return out


@pytest.mark.parametrize(
    ("name", "creator"), stdlib_creators(), ids=[name for name, _ in stdlib_creators()]
)
def test_factory_takes_the_standard_library_parameters(name: str, creator: Any):
    """The same parameter names in the same order (positional and keyword calls port)."""
    theirs = [
        p.name
        for p in inspect.signature(creator).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    ours = [p.name for p in inspect.signature(getattr(SyncManager, name)).parameters.values()]
    assert ours[1 : len(theirs) + 1] == theirs, f"SyncManager.{name}{ours[1:]} vs {theirs}"


def test_factories_return_shoal_objects(m: SyncManager):
    expected = {
        "Queue": (m.Queue, shoal.JoinableQueue),
        "JoinableQueue": (m.JoinableQueue, shoal.JoinableQueue),
        "Lock": (m.Lock, shoal.Lock),
        "RLock": (m.RLock, shoal.RLock),
        "Semaphore": (m.Semaphore, shoal.Semaphore),
        "BoundedSemaphore": (m.BoundedSemaphore, shoal.BoundedSemaphore),
        "Condition": (m.Condition, shoal.Condition),
        "Event": (m.Event, shoal.Event),
        "Barrier": (lambda: m.Barrier(2), shoal.Barrier),
        "Value": (lambda: m.Value("i", 1), Synchronized),
        "Array": (lambda: m.Array("i", [1]), SynchronizedArray),
        "dict": (m.dict, shoal.SharedDict),
        "list": (m.list, shoal.SharedList),
        "Namespace": (m.Namespace, Namespace),
    }
    for name, (make, cls) in expected.items():
        obj = make()
        assert isinstance(obj, cls), f"m.{name}() is a {type(obj)}"
        # the manager's point: each object travels as a handle
        copy = pickle.loads(pickle.dumps(obj))
        assert type(copy) is type(obj)
    assert type(m.Lock()) is shoal.Lock  # not an RLock


def test_queue_is_joinable_and_bounded_as_asked(m: SyncManager):
    q = m.Queue(maxsize=1)  # a queue.Queue in the standard library: task_done and join
    q.put("a")
    with pytest.raises(queue.Full):
        q.put_nowait("b")
    assert q.get(timeout=TIMEOUT) == "a"
    assert q.join(timeout=0) is False
    q.task_done()
    assert q.join(timeout=TIMEOUT) is True
    assert m.Queue().statistics().maxsize == 0
    assert m.JoinableQueue(3).statistics().maxsize == 3


def test_primitives_take_the_standard_library_arguments(cm: Any):
    m = cm
    sem = m.Semaphore(2)
    assert sem.get_value() == 2
    bsem = m.BoundedSemaphore(1)
    with pytest.raises(ValueError):
        bsem.release()
    lock = m.Lock()
    cond = m.Condition(lock)
    with cond:
        assert cond.wait(0.01) is False
    assert m.Condition().acquire(timeout=1)
    barrier = m.Barrier(1, None, 5.0)
    assert barrier.parties == 1 and barrier.wait() == 0
    event = m.Event()
    event.set()
    assert event.wait(0)


def test_dict_and_list_take_what_the_builtins_take(m: SyncManager):
    assert m.dict() == {}
    assert m.dict({"a": 1}, b=2) == {"a": 1, "b": 2}
    assert m.dict([("a", 1), ("b", 2)]) == {"a": 1, "b": 2}
    assert m.dict(a=1) == {"a": 1}
    # built like dict(): equal keys made one before they reach shared memory
    assert len(m.dict([(1, "int"), (1.0, "float")])) == 1
    assert m.list() == []
    assert m.list(range(3)) == [0, 1, 2]
    assert m.list("ab") == ["a", "b"]
    d = m.dict(k=[1])
    d["k"].append(2)  # a copy, as with the standard library's proxy
    assert d["k"] == [1]


def test_value_holds_numbers_in_shared_memory(m: SyncManager):
    v = m.Value("i", 5)
    assert v.value == 5 and v.get() == 5
    v.set(7)
    assert v.value == 7
    v.value = 8
    assert v.get() == 8
    assert v.add(2) == 10  # shoal's lock-free extra
    with v.get_lock():
        v.value += 1
    assert v.get() == 11
    assert m.Value("d", 0.5).value == 0.5
    assert m.Value(ctypes.c_bool, True).value is True
    assert m.Value("c", b"x").get() == b"x"
    assert m.Value("u", "é").get() == "é"
    assert m.Value("i", 1, lock=False).get_lock()  # lock= is ignored, as the stdlib does
    assert "c_int(5)" in repr(m.Value("i", 5))


@pytest.mark.parametrize("kind", [ctypes.c_char_p, ctypes.c_wchar_p, ctypes.py_object])
def test_value_of_a_pointer_type_holds_any_object(m: SyncManager, kind: type):
    # Value(c_char_p, "text") is the usual way to share a string through a manager
    v = m.Value(kind, "hello")
    assert v.value == "hello" and v.get() == "hello"
    v.set({"any": ["picklable", 1]})
    assert v.value == {"any": ["picklable", 1]}
    v.value = "bye"
    assert repr(v) == f"Value({kind.__name__}, 'bye')"
    copy = pickle.loads(pickle.dumps(v))
    copy.value = "from the copy"
    assert v.value == "from the copy"
    v.close()
    assert v.closed and "closed" in repr(v)


def test_value_of_a_structure_holds_a_copy(m: SyncManager):
    class Point(ctypes.Structure):
        _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int)]

    v = m.Value(Point, (1, 2))  # as the standard library: any object, kept as given
    assert v.value == (1, 2)


def test_array_takes_any_iterable_or_a_length(m: SyncManager):
    a = m.Array("d", (i / 2 for i in range(4)))
    assert a[:] == [0.0, 0.5, 1.0, 1.5] and len(a) == 4
    a[0] = 9.0
    assert a[0] == 9.0 and list(a) == [9.0, 0.5, 1.0, 1.5]
    assert m.Array("i", range(3))[:] == [0, 1, 2]
    assert m.Array("i", 3)[:] == [0, 0, 0]
    assert m.Array(ctypes.c_long, [4]).add(0) == 5
    s = m.Array("c", b"abc")
    assert isinstance(s, SynchronizedString) and s.value == b"abc"
    assert m.Array("i", [1], lock=False).get_lock()


# ---- bad input -------------------------------------------------------------------------------


def test_bad_value_arguments(m: SyncManager):
    with pytest.raises(TypeError, match=r"unknown typecode 'x'.*c_char_p"):
        m.Value("x", 1)
    with pytest.raises(TypeError, match="typecode such as 'i'"):
        m.Value(int, 1)
    with pytest.raises(TypeError, match="typecode such as 'i'"):
        m.Value(None, 1)
    with pytest.raises(TypeError):
        m.Value("i", "text")
    with pytest.raises(TypeError):
        m.Value("i")  # type: ignore[call-arg]
    with pytest.raises(SerializationError):
        m.Value(ctypes.py_object, threading.Lock())


def test_bad_array_arguments(m: SyncManager):
    with pytest.raises(TypeError, match="unknown typecode"):
        m.Array("x", [1])
    with pytest.raises(TypeError, match="sequence of initial items"):
        m.Array("i", None)
    with pytest.raises(TypeError, match="sequence of initial items"):
        m.Array("i", 1.5)
    with pytest.raises(TypeError):
        m.Array("i", ["a"])
    with pytest.raises(ValueError):
        m.Array("i", -1)
    with pytest.raises(TypeError, match="holds an address"):
        m.Array(ctypes.c_char_p, ["x"])


def test_bad_dict_list_and_queue_arguments(m: SyncManager):
    with pytest.raises(TypeError, match="at most 1 argument"):
        m.dict({}, {})
    with pytest.raises(TypeError):
        m.dict(5)
    with pytest.raises(TypeError):
        m.dict([1])
    with pytest.raises(TypeError):
        m.list(1)
    with pytest.raises(TypeError, match="at most 1 argument"):
        m.list([1], [2])
    with pytest.raises(TypeError):
        m.list(x=1)  # type: ignore[call-arg]
    with pytest.raises(SerializationError):
        m.dict(lock=threading.Lock())
    with pytest.raises(TypeError, match="maxsize"):
        m.Queue("a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="maxsize"):
        m.JoinableQueue(1.5)  # type: ignore[arg-type]


def test_bad_primitive_arguments(m: SyncManager):
    with pytest.raises(ValueError):
        m.Semaphore(-1)
    with pytest.raises(TypeError):
        m.BoundedSemaphore("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.Barrier(0)
    with pytest.raises(TypeError, match="action must be callable"):
        m.Barrier(2, action=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shoal Lock or RLock"):
        m.Condition(threading.Lock())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.Lock(True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="at least 1"):
        m.Pool(0)


# ---- Namespace -------------------------------------------------------------------------------


def test_namespace_attributes(m: SyncManager):
    ns = m.Namespace(a=1, b="x")
    assert (ns.a, ns.b) == (1, "x")
    ns.c = [1, 2]
    assert ns.c == [1, 2]
    ns.c.append(3)  # a copy, as with the standard library's proxy
    assert ns.c == [1, 2]
    del ns.a
    with pytest.raises(AttributeError, match="'a'"):
        _ = ns.a
    with pytest.raises(AttributeError, match="'a'"):
        del ns.a
    assert getattr(ns, "missing", "default") == "default"
    assert not hasattr(ns, "missing")
    assert repr(ns) == str(ns) == "Namespace(b='x', c=[1, 2])"
    assert repr(m.Namespace()) == "Namespace()"
    assert {"b", "c"} <= set(dir(ns))
    with pytest.raises(SerializationError):
        ns.lock = threading.Lock()
    assert not hasattr(ns, "lock")


def test_namespace_underscore_names_stay_local(cm: Any):
    m = cm
    # as the standard library's NamespaceProxy: names starting with _ are the proxy's
    ns = m.Namespace()
    ns._local = 1
    assert ns._local == 1
    copy = pickle.loads(pickle.dumps(ns))
    assert not hasattr(copy, "_local")
    assert repr(ns) == "Namespace()"
    del ns._local
    with pytest.raises(AttributeError):
        _ = ns._local
    with pytest.raises(AttributeError):
        _ = ns._missing


def test_namespace_handles_share_one_namespace():
    ns = Namespace(x=1)  # made directly, without a manager
    copy = pickle.loads(pickle.dumps(ns))
    copy.x = 2
    copy.y = "new"
    assert (ns.x, ns.y) == (2, "new")
    del ns.y
    assert not hasattr(copy, "y")
    assert repr(copy) == "Namespace(x=2)"


def _namespace_child(ns: Namespace) -> None:
    ns.seen = ns.parent + 1
    del ns.doomed
    ns.pid = os.getpid()


def test_namespace_across_processes(m: SyncManager):
    # (every start method: test_objects_work_in_a_child_process; here, a spawned child)
    ns = m.Namespace(parent=41, doomed=True)
    p = mp.get_context("spawn").Process(target=_namespace_child, args=(ns,))
    p.start()
    join_all(p)
    assert p.exitcode == 0
    assert ns.seen == 42 and ns.pid == p.pid
    assert not hasattr(ns, "doomed")


# ---- every object in a child process and in a stdlib Pool task ---------------------------


def make_everything(m: SyncManager) -> dict[str, Any]:
    lock = m.Lock()
    lock.acquire()  # the child must see it held: the very same lock
    bsem = m.BoundedSemaphore(2)
    bsem.acquire()
    return {
        "queue": m.Queue(),
        "joinable": m.JoinableQueue(),
        "lock": lock,
        "rlock": m.RLock(),
        "sem": m.Semaphore(1),
        "bsem": bsem,
        "cond": m.Condition(),
        "event": m.Event(),
        "barrier": m.Barrier(2),
        "value": m.Value("i", 10),
        "text": m.Value(ctypes.c_wchar_p, "parent"),
        "array": m.Array("d", [0.0, 0.0]),
        "dict": m.dict(parent=1),
        "list": m.list(["parent"]),
        "ns": m.Namespace(parent=True),
    }


def use_everything(o: dict[str, Any]) -> dict[str, Any]:
    """Run in a child or a Pool worker: touch each object; the parent checks the effects."""
    out: dict[str, Any] = {}
    o["queue"].put(("from", os.getpid()))
    out["joinable"] = o["joinable"].get(timeout=TIMEOUT)
    o["joinable"].task_done()
    out["lock held elsewhere"] = not o["lock"].acquire(block=False)
    with o["rlock"], o["rlock"]:
        out["rlock"] = True
    out["sem"] = o["sem"].acquire(timeout=TIMEOUT)
    o["bsem"].release()
    with o["cond"]:
        o["cond"].notify_all()
    o["event"].set()
    o["barrier"].abort()  # the parent sees it broken
    o["value"].set(o["value"].get() + 1)
    o["value"].add(100)
    out["text"] = o["text"].value
    o["text"].value = "child"
    o["array"][1] = 2.5
    o["dict"]["child"] = o["dict"]["parent"] + 1
    o["list"].append("child")
    o["ns"].child = o["ns"].parent
    del o["ns"].parent
    return out


def check_everything(o: dict[str, Any], out: dict[str, Any], pid: int | None = None) -> None:
    tag, sender = o["queue"].get(timeout=TIMEOUT)
    assert tag == "from" and (pid is None or sender == pid)
    assert out == {
        "joinable": "job",
        "lock held elsewhere": True,
        "rlock": True,
        "sem": True,
        "text": "parent",
    }
    assert o["joinable"].join(timeout=TIMEOUT)
    o["lock"].release()
    assert o["sem"].get_value() == 0
    assert o["bsem"].get_value() == 2
    assert o["event"].is_set()
    assert o["barrier"].broken
    assert o["value"].value == 111
    assert o["text"].value == "child"
    assert o["array"][:] == [0.0, 2.5]
    assert o["dict"] == {"parent": 1, "child": 2}
    assert o["list"] == ["parent", "child"]
    assert repr(o["ns"]) == "Namespace(child=True)"


def _child_uses_everything(o: dict[str, Any], results: Any) -> None:
    results.put(use_everything(o))


def test_objects_work_in_a_child_process(ctx: mp.context.BaseContext, m: SyncManager):
    o = make_everything(m)
    o["joinable"].put("job")
    results = m.Queue()
    p = ctx.Process(target=_child_uses_everything, args=(o, results))
    p.start()
    out = results.get(timeout=TIMEOUT)
    join_all(p)
    assert p.exitcode == 0
    check_everything(o, out, p.pid)


def test_objects_work_in_stdlib_pool_tasks(ctx: mp.context.BaseContext, m: SyncManager):
    """The tutorial's case: manager objects as arguments of ``multiprocessing.Pool`` tasks
    (shoal's own objects, no server; the stdlib pool pickles them as handles)."""
    o = make_everything(m)
    o["joinable"].put("job")
    with ctx.Pool(1) as pool:
        out = pool.apply_async(use_everything, (o,)).get(timeout=TIMEOUT)
    check_everything(o, out)


# ---- the tutorial's manager program ----------------------------------------------------------


def tutorial_write(q: Any, lock: Any) -> None:
    lock.acquire()
    for value in ["A", "B", "C"]:
        q.put(value)
    lock.release()


def tutorial_read(q: Any) -> list[str]:
    got = []
    while True:
        if not q.empty():
            got.append(q.get(False))
        else:
            break
    return got


def test_tutorial_manager_queue_and_lock_in_a_pool(ctx: mp.context.BaseContext):
    manager = shoal.Manager()
    q = manager.Queue()
    lock = manager.Lock()
    p = ctx.Pool(2)
    try:
        pw = p.apply_async(tutorial_write, args=(q, lock))
        pw.get(timeout=TIMEOUT)  # (the tutorial sleeps instead: a reader may find it empty)
        pr = p.apply_async(tutorial_read, args=(q,))
        p.close()
        p.join()
    finally:
        p.terminate()
    assert pw.successful() and pr.get(timeout=TIMEOUT) == ["A", "B", "C"]
    assert lock.acquire(block=False)  # released by the writer, in another process
    manager.shutdown()


# ---- life cycle --------------------------------------------------------------------------------


def test_with_block_starts_and_shuts_down(context: Any):
    with context.Manager() as manager:
        assert manager.address is None
        d = manager.dict(a=1)
    assert "shut down" in repr(manager)
    with pytest.raises(ClosedError, match="shut down"):
        manager.dict()
    with pytest.raises(ClosedError):
        manager.Queue()
    with pytest.raises(mp.ProcessError, match="has shut down"), manager:
        pass
    with pytest.raises(mp.ProcessError, match="has shut down"):
        manager.start()
    manager.shutdown()  # again: nothing happens
    assert manager.join() is None
    d["b"] = 2  # what it made lives on
    assert d == {"a": 1, "b": 2}

    direct = SyncManager()
    assert "initial" in repr(direct)
    with direct as entered:
        assert entered is direct and "started" in repr(direct)
    assert "shut down" in repr(direct)


def test_not_started_manager_makes_objects_and_starts_once():
    manager = SyncManager()  # the standard library asserts "server not yet started" here
    assert manager.list([1]) == [1]
    with pytest.raises(TypeError, match="callable"):
        manager.start(initializer=5)  # type: ignore[arg-type]
    manager.start(initializer=print, initargs=("never called: there is no server",))
    with pytest.raises(mp.ProcessError, match="Already started"):
        manager.start()
    with manager:  # entering a started manager is fine, as in the standard library
        pass
    with pytest.raises(ClosedError):
        manager.list()


def _write_after_shutdown(d: Any, ns: Any, q: Any) -> None:
    d["child"] = True
    ns.child = True
    q.put("child")


def test_objects_outlive_shutdown_in_other_processes(ctx: mp.context.BaseContext):
    """shutdown() ends the manager, not what it made: the standard library's proxies
    break with the server; shoal's objects live while anyone holds them."""
    manager = shoal.Manager()
    d, ns, q = manager.dict(), manager.Namespace(), manager.Queue()
    manager.shutdown()
    p = ctx.Process(target=_write_after_shutdown, args=(d, ns, q))
    p.start()
    assert q.get(timeout=TIMEOUT) == "child"
    join_all(p)
    assert p.exitcode == 0 and d == {"child": True} and ns.child is True


def test_shutdown_keeps_no_object_alive():
    manager = shoal.Manager()
    made = [manager.dict(a=1), manager.Queue(), manager.Namespace(), manager.Lock()]
    refs = [weakref.ref(obj) for obj in made]
    del made
    gc.collect()
    # the manager keeps no reference: each object went with its last holder
    assert [ref() for ref in refs] == [None] * 4
    manager.shutdown()


def _worker_class(d: Any) -> str:
    d[os.getpid()] = type(mp.current_process()).__name__
    return type(mp.current_process()).__name__


def test_pool_is_shoal_s_and_ends_with_the_manager(ctx: mp.context.BaseContext):
    manager = SyncManager(ctx=ctx)
    manager.start()
    pool = manager.Pool(1)
    assert isinstance(pool, shoal.Pool)
    d = manager.dict()
    name = pool.apply(_worker_class, (d,))  # the manager's ctx is the pool's default
    assert name == PROCESS_CLASS[ctx.get_start_method()]
    assert list(d.values()) == [name]
    manager.shutdown()  # terminates it, as the server's end does in the standard library
    with pytest.raises(ValueError, match="not running"):
        pool.apply(_worker_class, (d,))


# ---- no server -----------------------------------------------------------------------------------


def test_server_calls_without_a_server(m: SyncManager):
    """Nothing registered, no address: nothing to connect to or to serve again (the
    server-backed cases are in test_managers_custom.py)."""
    with pytest.raises(ValueError, match=r"connect\(\) needs the address"):
        m.connect()
    with pytest.raises(mp.ProcessError, match="Already started"):
        m.get_server()
    with pytest.raises(ValueError, match="serializer"):
        SyncManager(serializer="json")
    assert m.address is None
    SyncManager(authkey=b"unused", serializer="xmlrpclib", shutdown_timeout=5).shutdown()


def test_manager_pickles_with_its_state(m: SyncManager):
    copy = pickle.loads(pickle.dumps(m))
    assert "started" in repr(copy)
    m.shutdown()
    assert "shut down" in repr(pickle.loads(pickle.dumps(m)))
    spawn = pickle.loads(pickle.dumps(SyncManager(ctx=mp.get_context("spawn"))))
    assert spawn._ctx.get_start_method() == "spawn"


# ---- objects stored in containers live while stored ------------------------------------------


def test_nested_object_lives_while_stored(m: SyncManager):
    ns = m.Namespace()
    ns.q = m.Queue()  # nobody keeps a handle of its own
    try:
        ns.q.put(1)
        works = ns.q.get(timeout=TIMEOUT) == 1
    except SegmentNotFoundError:
        works = False
    del ns  # (not kept alive by the failure's traceback: the leak check runs after)
    assert works, "the queue went with the temporary handle that put() used"


def test_nested_object_with_a_handle_kept(m: SyncManager):
    q = m.Queue()
    ns = m.Namespace(q=q)
    ns.q.put(1)
    assert ns.q.get(timeout=TIMEOUT) == 1
    d = m.dict()
    sub = m.dict()
    d["sub"] = sub
    d["sub"]["x"] = 1  # as nested proxies: the stored handle names the same dict
    assert d["sub"]["x"] == 1 and sub == {"x": 1}
