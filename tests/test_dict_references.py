"""Shoal objects stored in a SharedDict live as long as they are stored (#5).

A value whose pickle holds shoal handles keeps one reference to each object (stored
references, shoal._handle); every read takes references of its own; overwriting,
deleting, popping, clearing and the dict's last handle give the stored ones back.
Counts are checked exactly where objects share an arena (the leak check cannot see a
block), by segments elsewhere (the autouse no_leaks fixture).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest

import shoal
from shoal import Lock, Queue, SerializationError, SharedDict, SharedList, _core

TIMEOUT = 30


def refs(obj: Any) -> int:
    """References to a shoal object, in every process (in flight included)."""
    return _core.load64(obj._segment.buffer, obj._header_offset) & 0xFFFFFFFF


def in_flight(obj: Any) -> int:
    return _core.load64(obj._segment.buffer, obj._header_offset) >> 32


@pytest.fixture
def d():
    shared = SharedDict()
    yield shared
    shared.close()


FACTORIES: dict[str, Callable[[], Any]] = {
    "Queue": Queue,
    "Lock": Lock,
    "SharedDict": SharedDict,
    "Value": lambda: shoal.Value("i", 7),
}


def _works(obj: Any) -> None:
    """Use a stored object through a fresh handle."""
    if isinstance(obj, Queue):
        obj.put("x")
        assert obj.get(timeout=TIMEOUT) == "x"
    elif isinstance(obj, SharedDict):
        obj["n"] = obj.get("n", 0) + 1
    elif hasattr(obj, "value"):
        obj.value += 1
    else:
        with obj:
            pass


# ---- one process ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_stored_object_outlives_its_creators_handle(d: SharedDict, kind: str) -> None:
    d["k"] = FACTORIES[kind]()  # no handle kept: the dict's is the only reference
    for _ in range(20):
        _works(d["k"])
    assert [type(v) for v in d.values()] == [type(d["k"])]
    _works(d.copy()["k"])
    _works(d.get("k"))
    _works(d.setdefault("k", None))
    _works(d.pop("k"))  # the last reference, handed out: freed when it goes
    assert "k" not in d


def test_counts_are_exact(d: SharedDict) -> None:
    lock = Lock()
    d["a"] = lock
    assert (refs(lock), in_flight(lock)) == (2, 0)  # stored: not in flight, not adoptable
    got = d["a"]
    assert refs(lock) == 3
    del got
    assert refs(lock) == 2
    d["b"] = [lock, {"again": lock}]  # one pickle, one reference
    assert refs(lock) == 3
    d["a"] = 1  # overwritten
    assert refs(lock) == 2
    d.update(c=(lock,), e=lock)
    assert refs(lock) == 4
    del d["c"]
    popped = d.pop("e")._handle  # (pytest's assert rewriting would keep the object)
    assert popped == lock._handle and refs(lock) == 2
    item = d.popitem()
    del item
    assert refs(lock) in (1, 2)  # "a" (an int) or "b"
    d.clear()
    assert refs(lock) == 1
    assert len(d) == 0


def test_incr_and_setdefault_release_what_they_replace(d: SharedDict) -> None:
    lock = Lock()
    d["k"] = lock
    got = d.get_or_set("k", 5)._handle
    assert got == lock._handle and refs(lock) == 2
    with pytest.raises(TypeError):
        d.incr("k")  # a Lock plus 1: nothing stored, nothing released
    assert refs(lock) == 2
    d["n"] = [lock]
    assert refs(lock) == 3
    d.incr("n", [1])  # [lock] + [1]: the new list is stored, the old one released
    second = d["n"][1]
    assert second == 1 and refs(lock) == 3
    d.incr("n", [], [])
    del d["n"]
    assert refs(lock) == 2


def test_the_dict_going_releases_its_values() -> None:
    lock = Lock()
    outer = SharedDict(a=lock, b=[lock, lock])
    outer["sub"] = SharedDict(x=lock)
    assert refs(lock) == 4
    other = pickle.loads(pickle.dumps(outer))  # a second handle: not the last one yet
    outer.close()
    assert refs(lock) == 4
    got = other["sub"]["x"]._handle
    assert got == lock._handle
    other.close()  # the last handle: the values and the nested dict's go
    assert refs(lock) == 1


def test_nested_dicts(d: SharedDict) -> None:
    d["sub"] = SharedDict()
    d["sub"]["subsub"] = SharedDict()
    for i in range(5):
        d["sub"]["subsub"][i] = i
    assert d["sub"]["subsub"].copy() == {i: i for i in range(5)}
    d["sub"] = "replaced"  # both nested dicts go (the leak check sees their segments)
    assert d["sub"] == "replaced"


def test_a_value_that_fails_to_pickle_takes_no_reference(d: SharedDict) -> None:
    lock = Lock()
    with pytest.raises(SerializationError):
        d["k"] = (lock, threading.Lock())
    assert refs(lock) == 1 and in_flight(lock) == 0 and "k" not in d


def test_keys_name_objects_without_keeping_them(d: SharedDict) -> None:
    lock = Lock()
    d[lock] = 1
    assert d[lock] == 1 and lock in d and d.get(lock) == 1
    assert (refs(lock), in_flight(lock)) == (1, 0)
    keys = [k._handle for k in d]
    assert keys == [lock._handle]
    del d[lock]


def test_values_without_objects_are_not_marked(d: SharedDict) -> None:
    d["k"] = [1, 2, {"a": None}]
    assert _core.load64(d._segment.buffer, d._payload_offset + 72) == 0
    d["q"] = Queue()
    assert _core.load64(d._segment.buffer, d._payload_offset + 72) == 1
    d.clear()
    assert _core.load64(d._segment.buffer, d._payload_offset + 72) == 0


def test_shared_list_keeps_its_items(d: SharedDict) -> None:
    lst = SharedList([Queue(), Lock()])
    lst.append(SharedDict(a=1))
    lst[0].put(1)
    assert lst[0].get(timeout=TIMEOUT) == 1
    assert lst[2]["a"] == 1
    lock = lst[1]
    assert refs(lock) == 2
    lst[1] = None
    assert refs(lock) == 1
    d["list"] = lst  # a list stored in a dict: its own dict and lock live on
    lst.close()
    assert d["list"][2]["a"] == 1
    del d["list"]


def test_manager_namespace_and_nested_dicts() -> None:
    with shoal.Manager() as m:
        ns = m.Namespace()
        ns.q = m.Queue()
        ns.q.put(1)
        assert ns.q.get(timeout=TIMEOUT) == 1
        ns.lock = m.Lock()
        with ns.lock:
            pass
        d = m.dict()
        d["sub"] = m.dict()
        d["sub"]["x"] = 1
        assert d["sub"]["x"] == 1
        lst = m.list([m.dict(y=2)])
        assert lst[0]["y"] == 2
        del ns, d, lst


# ---- other processes ------------------------------------------------------------------------


def _use_stored(shared: SharedDict, rounds: int) -> int:
    for i in range(rounds):
        shared["q"].put(i)
        sub = shared["sub"]
        sub["n"] = sub.get("n", 0) + 1
        with shared["lock"]:
            pass
    return shared["sub"]["n"]


def _store_own(shared: SharedDict) -> None:
    # made here and stored; this process exits holding nothing of them
    shared["made"] = [Queue(), SharedDict(child=True), Lock()]
    shared["made"][0].put("from the child")


def test_stored_objects_in_other_processes(ctx: mp.context.BaseContext, d: SharedDict) -> None:
    d["q"] = Queue()
    d["sub"] = SharedDict()
    d["lock"] = Lock()
    p = ctx.Process(target=_use_stored, args=(d, 10))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == 0
    assert d["sub"]["n"] == 10
    assert [d["q"].get(timeout=TIMEOUT) for _ in range(10)] == list(range(10))
    p = ctx.Process(target=_store_own, args=(d,))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == 0
    q, sub, lock = d["made"]
    assert q.get(timeout=TIMEOUT) == "from the child" and sub["child"] is True
    with lock:
        pass
    del q, sub, lock
    d.clear()


def _overwrite(shared: SharedDict, n: int, go: Any) -> None:
    go.wait(TIMEOUT)
    for i in range(n):
        shared["k"] = [Lock(), i] if i % 2 else SharedDict(i=i)


def test_concurrent_overwrites_and_reads(ctx: mp.context.BaseContext, d: SharedDict) -> None:
    d["k"] = Lock()
    go = ctx.Event()
    writers = [ctx.Process(target=_overwrite, args=(d, 150, go)) for _ in range(2)]
    for w in writers:
        w.start()
    go.set()
    reads = 0
    while any(w.is_alive() for w in writers) or reads < 50:
        value = d["k"]  # never an object freed under it
        if isinstance(value, SharedDict):
            assert value["i"] >= 0
        elif isinstance(value, list):
            with value[0]:
                pass
        reads += 1
        del value
    for w in writers:
        w.join(TIMEOUT)
        assert w.exitcode == 0
    del d["k"]
