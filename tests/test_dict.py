"""SharedDict (issue #4): API, processes, concurrency, churn, crashes, bad input.

The model-based test against a plain dict is in test_dict_model.py.  The tests taking
``cd`` run on the local context and on the Ray one (#13); the others stay local: they
look at the tables in shared memory, processes, crashes mid-write or memory use, or
at keys compared by their bytes (``1``, ``1.0`` and ``True`` three keys, unhashable
keys allowed), where a cluster dict compares keys as a ``dict`` does (docs/ray.md).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import random
import signal
import threading
import time
from typing import Any

import pytest

import shoal
from shoal import ClosedError, SerializationError, SharedDict, lowlevel


@pytest.fixture
def d():
    shared = SharedDict()
    yield shared
    shared.close()


@pytest.fixture
def cd(context: Any) -> Any:
    """A dict of the ``context`` fixture's context: a SharedDict, or a cluster dict."""
    shared = context.SharedDict()
    yield shared
    if hasattr(shared, "close"):
        shared.close()


def table_segments(shared: SharedDict) -> list[str]:
    """Names of the table segments a dict's root names that exist in /dev/shm."""
    from shoal._dict import _root_name

    names = [_root_name(shared._segment.buffer, shared._payload_offset, s) for s in (0, 1)]
    return [n for n in names if n and os.path.exists("/dev/shm" + n)]


# ---- the mapping API ----------------------------------------------------------------------


def test_basic_api(cd: Any) -> None:
    d = cd
    d["a"] = 1
    d[b"b"] = 2.5
    d[3] = "three"
    d[None] = (1, "x", b"y", None, True)
    d[("t", 1)] = [1, 2, {"nested": 3}]
    d[frozenset({1, 2})] = {"pickled": True}
    assert len(d) == 6
    assert d["a"] == 1 and d[b"b"] == 2.5 and d[3] == "three"
    assert d[None] == (1, "x", b"y", None, True)
    assert d[("t", 1)] == [1, 2, {"nested": 3}]
    assert d[frozenset({1, 2})] == {"pickled": True}
    assert "a" in d and "zz" not in d and ("t", 1) in d
    assert d.get("zz") is None and d.get("zz", 7) == 7 and d.get("a", 7) == 1
    with pytest.raises(KeyError):
        d["missing"]
    with pytest.raises(KeyError):
        del d["missing"]
    del d["a"]
    assert "a" not in d and len(d) == 5
    assert sorted(map(repr, d.keys())) == sorted(
        map(repr, [b"b", 3, None, ("t", 1), frozenset({1, 2})])
    )
    assert dict(d.items()) == d.copy()
    assert isinstance(d.copy(), dict)
    assert set(map(repr, d)) == set(map(repr, d.keys()))
    assert len(d.values()) == 5
    d.clear()
    assert len(d) == 0 and d.copy() == {}


def test_constructor_update_pop(d: SharedDict) -> None:
    e = SharedDict({"x": 1}, y=2)
    try:
        assert e.copy() == {"x": 1, "y": 2}
        assert e == {"x": 1, "y": 2}
        e.update([("z", 3)], w=4)
        e.update({"x": 10})
        assert e.copy() == {"x": 10, "y": 2, "z": 3, "w": 4}
        assert e.pop("x") == 10 and e.pop("x", "gone") == "gone"
        with pytest.raises(KeyError):
            e.pop("x")
        items = []
        while e:
            items.append(e.popitem())
        assert sorted(items) == [("w", 4), ("y", 2), ("z", 3)]
        with pytest.raises(KeyError):
            e.popitem()
        assert repr(e) == "{}"
    finally:
        e.close()
    f = SharedDict.fromkeys(["a", "b"], 0)
    try:
        assert f.copy() == {"a": 0, "b": 0}
    finally:
        f.close()


def test_keys_are_compared_by_encoding(d: SharedDict) -> None:
    d[1] = "int"
    d[1.0] = "float"
    d[True] = "bool"
    assert len(d) == 3
    assert (d[1], d[1.0], d[True]) == ("int", "float", "bool")

    # exact types only take the fast path: a subclass keeps its type through pickle
    class Name(str):
        pass

    d[Name("k")] = 1
    d["k"] = 2
    assert len(d) == 5
    big = 2**80
    d[big] = big
    assert d[big] == big


def test_incr_and_get_or_set(cd: Any) -> None:
    d = cd
    assert d.incr("n") == 1
    assert d.incr("n", 5) == 6
    assert d.incr("m", 2, 10) == 12
    assert d.incr("f", 0.5) == 0.5 and d.incr("f", 0.25) == 0.75
    d["big"] = 2**63 - 1
    assert d.incr("big") == 2**63  # past int64: stored pickled, still exact
    assert d.incr("big", -1) == 2**63 - 1
    assert d.get_or_set("g", [1]) == [1]
    assert d.get_or_set("g", [2]) == [1]
    assert d.setdefault("h") is None and "h" in d
    d["s"] = "text"
    with pytest.raises(TypeError):
        d.incr("s")
    assert d["s"] == "text"


def test_statistics_and_repr(d: SharedDict) -> None:
    for i in range(1000):
        d[i] = i
    st = d.statistics()
    assert st.items == 1000 and st.slots >= 1000 and st.tables_made >= 2
    assert repr(d) == repr({i: i for i in range(1000)})
    assert shoal.SharedDict is SharedDict


def test_big_values_grow_the_heap(d: SharedDict) -> None:
    blob = os.urandom(3 << 20)
    d["blob"] = blob
    d["small"] = 1
    assert d["blob"] == blob and d["small"] == 1


# ---- bad input and closing ------------------------------------------------------------------


def test_unpicklable_key_or_value(d: SharedDict) -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError):
        d["k"] = lock
    with pytest.raises(SerializationError):
        d[lock] = 1
    with pytest.raises(SerializationError):
        d.get(lock)
    assert len(d) == 0


def test_use_after_close() -> None:
    e = SharedDict(a=1)
    e.close()
    e.close()
    for call in (
        lambda: e["a"],
        lambda: e.__setitem__("a", 2),
        lambda: e.__delitem__("a"),
        lambda: "a" in e,
        lambda: len(e),
        lambda: e.keys(),
        lambda: e.incr("a"),
        lambda: e.get("a"),
        lambda: pickle.dumps(e),
    ):
        with pytest.raises(ClosedError):
            call()
    assert repr(e) == "<shoal.SharedDict closed>"


def test_tables_removed_with_last_handle() -> None:
    e = SharedDict()
    for i in range(5000):
        e[i] = str(i)
    tables = table_segments(e)
    assert len(tables) == 1
    e.close()
    assert not any(os.path.exists("/dev/shm" + n) for n in tables)


# ---- other processes ------------------------------------------------------------------------


def _fill(shared: SharedDict, start: int, n: int) -> int:
    for i in range(start, start + n):
        shared[i] = (i, str(i))
    shared[f"done{start}"] = True
    return len(shared)


def _read(shared: SharedDict, keys: list[Any]) -> list[Any]:
    return [shared.get(k) for k in keys]


def test_pool_reads_and_writes(ctx: mp.context.BaseContext) -> None:
    shared = SharedDict({"parent": [1, 2, 3], ("t", 1): b"x"})
    try:
        with ctx.Pool(2) as pool:
            assert pool.apply_async(_read, (shared, ["parent", ("t", 1), "no"])).get(
                timeout=30
            ) == [[1, 2, 3], b"x", None]
            # workers grow the table (many rebuilds) while the parent is idle
            results = [pool.apply_async(_fill, (shared, s, 3000)) for s in (0, 3000)]
            for r in results:
                r.get(timeout=30)
        assert len(shared) == 6002 + 2
        assert all(shared[i] == (i, str(i)) for i in range(6000))
    finally:
        shared.close()


def _incr_many(shared: SharedDict, n: int) -> None:
    for _ in range(n):
        shared.incr("count")
        shared.incr(("per", os.getpid()))


def test_concurrent_incr_is_exact() -> None:
    fork = mp.get_context("fork")
    shared = SharedDict()
    try:
        procs = [fork.Process(target=_incr_many, args=(shared, 3000)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert shared["count"] == 9000
        assert sorted(v for k, v in shared.items() if k != "count") == [3000] * 3
    finally:
        shared.close()


def _writer(shared: SharedDict, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        k = rng.randrange(200)
        if rng.random() < 0.1:
            shared.pop(k, None)
        else:
            j = rng.randrange(1, 50)
            shared[k] = (j, str(j) * rng.randrange(1, 40))


def _check_invariant(value: Any) -> None:
    j, text = value
    assert set(text) <= set(str(j)) and len(text) % len(str(j)) == 0, value


def test_readers_never_see_torn_values() -> None:
    fork = mp.get_context("fork")
    shared = SharedDict()
    try:
        procs = [fork.Process(target=_writer, args=(shared, 20000, s)) for s in range(2)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 20
        reads = 0
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            for k in range(0, 200, 7):
                v = shared.get(k)
                if v is not None:
                    _check_invariant(v)
                    reads += 1
            items = shared.items()
            for _, v in items:
                _check_invariant(v)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        assert reads > 0
        assert len(shared) == len(shared.keys())
    finally:
        shared.close()


# ---- memory stays bounded --------------------------------------------------------------------


def test_churn_keeps_memory_bounded(d: SharedDict) -> None:
    """1,000,000 set/delete operations: the table stays the size its contents need."""
    for i in range(100):
        d[("keep", i)] = i
    sizes = set()
    for round_ in range(10):
        for i in range(50_000):
            k = (round_ * 50_000 + i) % 5000
            d[k] = "v" * (k % 50)
            del d[k]
        st = d.statistics()
        sizes.add(st.table_bytes)
        segs = table_segments(d)
        assert len(segs) == 1
        assert os.path.getsize("/dev/shm" + segs[0]) < 2 << 20
    assert st.items == 100 and len(d) == 100
    assert max(sizes) < 2 << 20, sizes


# ---- crashes ---------------------------------------------------------------------------------


def _hot_writer(shared: SharedDict, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        k = rng.randrange(3000)
        r = rng.random()
        if r < 0.2:
            shared.pop(k, None)
        elif r < 0.25:
            shared.incr("n")
        else:
            j = rng.randrange(1, 99)
            shared[k] = (j, str(j) * rng.randrange(1, 60))


def test_sigkill_writer_leaves_dict_consistent() -> None:
    fork = mp.get_context("fork")
    shared = SharedDict()
    rng = random.Random(4)
    try:
        for round_ in range(6):
            p = fork.Process(target=_hot_writer, args=(shared, round_))
            p.start()
            time.sleep(rng.uniform(0.05, 0.3))
            os.kill(p.pid, signal.SIGKILL)
            p.join(timeout=10)
            items = shared.items()
            for k, v in items:
                if k != "n":
                    _check_invariant(v)
            assert len(items) == len(shared)
            keys = shared.keys()
            assert all(k in shared for k in keys)
            shared[("after", round_)] = (1, "1")  # writers go on
            assert shared[("after", round_)] == (1, "1")
    finally:
        shared.close()
        lowlevel.reap()  # a table a victim was building when it died


def test_reader_repairs_after_writer_died_mid_change() -> None:
    """A writer that dies with the version odd: the next reader rebuilds."""
    shared = SharedDict(a=1)
    try:
        from shoal import _core
        from shoal._dict import _GEN, _open_mapping, _root_name

        root = shared._payload_offset
        gen = _core.load64(shared._mapping, root + _GEN)
        table = _open_mapping(_root_name(shared._segment.buffer, root, gen & 1))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                # take the writers' lock, make the table look mid-change, and die
                lock = _core.Mutex()
                lock._bind(shared._mapping, root, False, False)
                lock.acquire(True, 5.0)
                # (the table's seqlock version: the third word of its header)
                _core.store64(table, lowlevel.Segment.HEADER_SIZE + 16, 7)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        made = shared.statistics().tables_made
        assert shared["a"] == 1
        assert shared.statistics().tables_made == made + 1  # the reader rebuilt it
        shared["b"] = 2
        assert shared.copy() == {"a": 1, "b": 2}
    finally:
        shared.close()


def test_two_handles_in_one_process() -> None:
    e = SharedDict(a=1)
    twin = pickle.loads(pickle.dumps(e))
    assert twin["a"] == 1
    e.close()
    twin["b"] = 2  # the table is still there for the twin ...
    for i in range(3000):
        twin[i] = i  # ... and so is growth
    third = pickle.loads(pickle.dumps(twin))
    assert third["b"] == 2 and len(third) == 3002
    tables = table_segments(twin)
    third.close()
    twin.close()
    assert not any(os.path.exists("/dev/shm" + n) for n in tables)


def _close_when_told(shared: SharedDict, go: Any) -> None:
    go.wait(10)
    shared[os.getpid()] = 1
    shared.close()


def test_last_two_handles_closing_at_once_remove_the_table() -> None:
    fork = mp.get_context("fork")
    shared = SharedDict()
    for i in range(2000):
        shared[i] = i  # a grown table
    tables = table_segments(shared)
    go = fork.Event()
    procs = [fork.Process(target=_close_when_told, args=(shared, go)) for _ in range(2)]
    for p in procs:
        p.start()
    shared.close()  # the children hold the only handles now
    go.set()
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert not any(os.path.exists("/dev/shm" + n) for n in tables)


def test_merge_operators(cd: Any) -> None:
    d = cd
    d["a"] = 1
    d |= {"b": 2}
    assert d | {"c": 3} == {"a": 1, "b": 2, "c": 3}
    assert isinstance(d | {}, dict)


def test_unhashable_keys_are_fine(d: SharedDict) -> None:
    d[[1, 2]] = "list"  # pickled: keys need not be hashable, only picklable
    d[{"a": 1}] = "dict"
    assert d[[1, 2]] == "list" and d[{"a": 1}] == "dict"
    assert [1, 2] in d and [2, 1] not in d
    assert sorted(map(repr, d.keys())) == ["[1, 2]", "{'a': 1}"]
