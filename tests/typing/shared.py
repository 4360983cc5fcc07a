"""Queues, shared containers, Value and Array, typed as the standard library's are."""

from __future__ import annotations

import ctypes
from typing import Any, Optional

from typing_extensions import assert_type

import shoal
from shoal.sharedctypes import Synchronized, SynchronizedArray, SynchronizedString


def queues() -> None:
    q: shoal.Queue[int] = shoal.Queue()
    q.put(1)
    q.put_many([2, 3])
    assert_type(q.get(timeout=1), int)
    assert_type(q.get_nowait(), int)
    assert_type(q.get_many(10), list[int])
    for item in q:
        assert_type(item, int)
    jq: shoal.JoinableQueue[str] = shoal.JoinableQueue()
    jq.put("a")
    assert_type(jq.get(), str)
    sq: shoal.SimpleQueue[bytes] = shoal.SimpleQueue()
    assert_type(sq.get(), bytes)
    untyped: shoal.Queue[object] = shoal.Queue()  # as multiprocessing.Queue() wants
    untyped.put(object())


def containers() -> None:
    d = shoal.SharedDict({"a": 1})
    assert_type(d, shoal.SharedDict[str, int])
    d["b"] = 2
    assert_type(d["a"], int)
    assert_type(d.get("a"), Optional[int])
    assert_type(d.get("a", 0), int)
    assert_type(d.keys(), list[str])
    assert_type(d.values(), list[int])
    assert_type(d.items(), list[tuple[str, int]])
    assert_type(d.copy(), dict[str, int])
    assert_type(d.pop("a"), int)
    assert_type(d.setdefault("c", 3), int)
    for key in d:
        assert_type(key, str)
    counts: shoal.SharedDict[str, int] = shoal.SharedDict()
    assert_type(counts.incr("x"), int)

    items = shoal.SharedList([1.5, 2.5])
    assert_type(items, shoal.SharedList[float])
    items.append(3.5)
    assert_type(items[0], float)
    assert_type(items[1:], list[float])
    assert_type(items.pop(), float)
    assert_type(items.copy(), list[float])
    assert_type(sorted(items), list[float])

    tags = shoal.SharedSet(["a", "b"])
    assert_type(tags, shoal.SharedSet[str])
    tags.add("c")
    assert_type(tags.pop(), str)
    assert_type(tags.copy(), set[str])
    assert_type(tags & {"a"}, set[str])
    assert_type("a" in tags, bool)
    for tag in tags:
        assert_type(tag, str)


def managers() -> None:
    from shoal.managers import BaseManager, DictProxy

    class MyManager(BaseManager):
        pass

    MyManager.register("get_dict", dict, DictProxy)
    with shoal.Manager() as m:
        assert_type(m.set([1]), shoal.SharedSet[int])


def sharedctypes() -> None:
    assert_type(shoal.Value("i", 0), Synchronized[int])
    assert_type(shoal.Value("d", 0.5).value, float)
    assert_type(shoal.Value(ctypes.c_long, 7), Synchronized[int])
    assert_type(shoal.Value(ctypes.c_double, 1.0, lock=False), ctypes.c_double)
    assert_type(shoal.Array("i", 4), SynchronizedArray[int])
    assert_type(shoal.Array("d", [1.0, 2.0])[0], float)
    assert_type(shoal.Array(ctypes.c_int, 3)[0:2], list[int])
    assert_type(shoal.Array("c", b"hi"), SynchronizedString)
    assert_type(shoal.Array("c", 8).value, bytes)
    counter = shoal.Value("i", 0, lock=shoal.RLock())
    with counter.get_lock():
        counter.value += 1
    raw: Any = shoal.RawArray("i", 3)
    del raw
