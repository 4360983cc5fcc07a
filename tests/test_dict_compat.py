"""SharedDict behaves as the dict that programs expect (#11): insertion order, repr, iteration.

A plain ``dict`` (and ``Manager().dict()``) keeps insertion order, prints as ``{...}``
and has popitem() take the last item; the same programs must see the same here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from typing import Any

import pytest

import shoal
from shoal import SharedDict, _core, lowlevel


@pytest.fixture
def d():
    shared = SharedDict()
    yield shared
    shared.close()


def same_order(shared: SharedDict, ref: dict[Any, Any]) -> None:
    assert list(shared) == list(ref)
    assert shared.keys() == list(ref.keys())
    assert shared.values() == list(ref.values())
    assert shared.items() == list(ref.items())
    assert list(shared.copy().items()) == list(ref.items())
    assert repr(shared) == repr(ref)


# ---- insertion order ----------------------------------------------------------------------


def test_iteration_follows_insertion_order(d: SharedDict) -> None:
    ref: dict[Any, Any] = {}
    for key in ["zebra", 3, "apple", (1, "t"), -7, b"raw", 2.5, None, "mango"]:
        d[key] = ref[key] = str(key)
    same_order(d, ref)
    d[3] = ref[3] = "overwritten keeps its place"
    same_order(d, ref)
    del d["apple"], ref["apple"]
    d["apple"] = ref["apple"] = "re-inserted goes last"
    same_order(d, ref)
    d.pop("zebra"), ref.pop("zebra")
    d.setdefault("new", 1), ref.setdefault("new", 1)
    d[-7] = 5
    d.incr(-7, 2), d.incr("counted")
    ref[-7], ref["counted"] = 7, 1
    same_order(d, ref)


def test_order_survives_growth_deletes_and_churn(d: SharedDict) -> None:
    """Many keys (the table is rebuilt several times), deletes, re-inserts, big values."""
    rng = random.Random(11)
    ref: dict[Any, Any] = {}
    tables = d.statistics().tables_made
    for step in range(4000):
        key = rng.randrange(600) if step % 3 else f"s{rng.randrange(300)}"
        r = rng.random()
        if r < 0.3 and key in ref:
            del d[key], ref[key]
        elif r < 0.35:
            d.clear(), ref.clear()
        else:
            value = "v" * rng.randrange(0, 300) if r < 0.5 else step
            d[key] = ref[key] = value
        if step % 500 == 0:
            same_order(d, ref)
    same_order(d, ref)
    assert d.statistics().tables_made > tables + 3  # growth and clears rebuilt it


def test_popitem_takes_the_last_inserted(d: SharedDict) -> None:
    ref: dict[Any, Any] = {}
    for i in range(300):
        d[f"k{i}"] = ref[f"k{i}"] = i
    for i in range(0, 300, 7):
        del d[f"k{i}"], ref[f"k{i}"]
    d["k5"] = ref["k5"] = "moved"  # an overwrite keeps its place
    popped = [d.popitem() for _ in range(len(ref))]
    assert popped == [ref.popitem() for _ in range(len(popped))]
    with pytest.raises(KeyError):
        d.popitem()
    d["again"] = 1
    assert d.popitem() == ("again", 1)


def test_keys_equality_and_merge_keep_order(d: SharedDict) -> None:
    d.update([("b", 1), ("a", 2)])
    other = SharedDict({"a": 2, "b": 1})
    try:
        assert d == other  # equality ignores order, as a dict's does
        assert d == {"a": 2, "b": 1}
        assert list(d | {"c": 3}) == ["b", "a", "c"]
        assert list(SharedDict.fromkeys("xyz")) == ["x", "y", "z"]
    finally:
        other.close()


def _insert_in_order(shared: SharedDict, keys: list[Any]) -> None:
    for key in keys:
        shared[key] = len(key) if isinstance(key, str) else key
    del shared[keys[0]]
    shared[keys[0]] = "last now"


def test_order_is_shared_across_processes(ctx: mp.context.BaseContext) -> None:
    keys = [f"key-{i}" for i in random.Random(2).sample(range(10_000), 200)]
    shared = SharedDict()
    try:
        shared["parent first"] = 0
        p = ctx.Process(target=_insert_in_order, args=(shared, keys))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert list(shared) == ["parent first", *keys[1:], keys[0]]
        assert shared.popitem() == (keys[0], "last now")
    finally:
        shared.close()


def test_order_survives_a_writer_dying_mid_change() -> None:
    """The table a dead writer left (version odd) is rebuilt in insertion order."""
    shared = SharedDict()
    try:
        from shoal._dict import _GEN, _open_mapping, _root_name

        keys = [f"k{i}" for i in random.Random(5).sample(range(1000), 50)]
        for key in keys:
            shared[key] = key
        del shared[keys[3]]
        shared[keys[3]] = "back"
        root = shared._payload_offset
        gen = _core.load64(shared._mapping, root + _GEN)
        table = _open_mapping(_root_name(shared._segment.buffer, root, gen & 1))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                lock = _core.Mutex()
                lock._bind(shared._mapping, root, False, False)
                lock.acquire(True, 5.0)
                _core.store64(table, lowlevel.Segment.HEADER_SIZE + 16, 7)  # the version
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        table.close()
        shared["after"] = 1  # takes the lock: repairs first
        assert _core.load64(shared._mapping, root + _GEN) > gen  # it was rebuilt
        expected = [k for k in keys if k != keys[3]] + [keys[3], "after"]
        assert list(shared) == expected
    finally:
        shared.close()


def _ordered_writer(shared: SharedDict) -> None:
    i = 0
    while True:
        shared[i] = "x" * (i % 50)
        if i % 3 == 0:
            shared.pop(i - 2, None)
        i += 1


def test_sigkilled_writer_leaves_insertion_order() -> None:
    fork = mp.get_context("fork")
    shared = SharedDict()
    rng = random.Random(8)
    try:
        for _ in range(4):
            shared.clear()
            p = fork.Process(target=_ordered_writer, args=(shared,))
            p.start()
            time.sleep(rng.uniform(0.05, 0.3))
            os.kill(p.pid, signal.SIGKILL)
            p.join(timeout=10)
            keys = list(shared)
            assert len(keys) > 10
            assert keys == sorted(keys)  # inserted in increasing order, never reordered
            assert len(keys) == len(shared)
            assert all(shared[k] == "x" * (k % 50) for k in keys)
    finally:
        shared.close()
        lowlevel.reap()


# ---- printing -----------------------------------------------------------------------------


def test_repr_and_str_are_the_dicts(d: SharedDict) -> None:
    assert repr(d) == str(d) == "{}"
    ref = {"a": 1, 2: [3, 4], ("t",): None}
    d.update(ref)
    assert repr(d) == str(d) == repr(ref)
    many = {i: i for i in range(100)}
    d.clear()
    d.update(many)
    assert str(d) == str(many)  # all of it, as a dict prints


def test_repr_of_a_dict_that_holds_itself(d: SharedDict) -> None:
    d["a"] = 1
    d["self"] = d
    assert repr(d) == "{'a': 1, 'self': {...}}"
    d.pop("self").close()


def test_manager_dict_prints_as_the_standard_librarys(capsys: pytest.CaptureFixture[str]) -> None:
    with shoal.Manager() as manager:
        shared = manager.dict()
        shared["a"] = 1
        shared["b"] = [1, 2]
        print(shared)
    with mp.Manager() as manager:
        theirs = manager.dict()
        theirs["a"] = 1
        theirs["b"] = [1, 2]
        print(theirs)
    ours, stdlib = capsys.readouterr().out.splitlines()
    assert ours == stdlib == "{'a': 1, 'b': [1, 2]}"


# ---- iteration while the dict changes (docs/compatibility.md) -----------------------------


def test_iteration_is_a_snapshot_that_never_fails(d: SharedDict) -> None:
    """A dict raises RuntimeError when it changes size during iteration; a shared dict
    cannot (another process may write at any time): it iterates over the keys that
    were there when the iteration started, in order."""
    d.update({"a": 1, "b": 2, "c": 3})
    seen = []
    for key in d:
        seen.append(key)
        if "c" in d:
            del d["c"]
        d["z"] = 26
    assert seen == ["a", "b", "c"]
    assert list(d) == ["a", "b", "z"]
