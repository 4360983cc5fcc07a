"""Value, Array, RawValue, RawArray (issue #4, item 2).

* side by side with ``multiprocessing.sharedctypes``: the same calls give the same
  values, and the same bad calls the same exception classes (the one deliberate
  difference: a lock that is not a shoal lock is a TypeError, not AttributeError);
* every typecode, ctypes types, structures, char arrays, ``lock=`` forms, reprs;
* lock-free atomics (``add``/``fetch_add``/``exchange``/``compare_exchange``) with
  the C types' wrap-around, and the 32-bit native functions under them;
* across processes, under each start method: Pool task arguments (inside a dict), a
  process started later; several processes adding at once end exact, with atomics
  and with ``value += 1`` under ``get_lock()``;
* use after close raises ClosedError.

Child functions live at module level so spawn and forkserver children can import them.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import multiprocessing as mp
import multiprocessing.sharedctypes as mpsc
import pickle
import threading
import weakref
from typing import Any

import pytest

import shoal
from shoal import ClosedError, _core, sharedctypes
from shoal._handle import MAX_ARENA_OBJECT

TIMEOUT = 30.0
FORK = mp.get_context("fork")
TYPECODES = "cubBhHiIlLqQfd"
SAMPLES: dict[str, Any] = {
    "c": b"x",
    "u": "\u00e9",
    "b": -5,
    "B": 250,
    "h": -300,
    "H": 65000,
    "i": -(2**31),
    "I": 2**32 - 1,
    "l": -(2**63),
    "L": 2**64 - 1,
    "q": 2**63 - 1,
    "Q": 2**63,
    "f": 1.5,
    "d": -2.25,
}


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


class Segment2(ctypes.Structure):
    _fields_ = [("a", Point), ("b", Point), ("tag", ctypes.c_char * 8)]


def contents(obj: Any) -> Any:
    """What a test compares: .value of values, the list of items of arrays."""
    if hasattr(obj, "__len__"):  # an array: ctypes', multiprocessing's or ours
        return obj[:]
    return obj.value


# ---- side by side with the standard library ----------------------------------------------

GOOD_CALLS = [
    ("Value", ("i",), {}),
    ("Value", ("i", 7), {}),
    ("Value", ("d", 0.1), {}),
    ("Value", ("c", b"a"), {}),
    ("Value", ("u", "z"), {"lock": False}),
    ("Value", (ctypes.c_bool, True), {}),
    ("Value", (ctypes.c_int64, -1), {"lock": None}),
    ("Value", ("i", 2**40), {}),  # ctypes wraps silently, and so do both
    ("Value", ("b", 300), {}),
    ("Value", ("i",), {"lock": 1}),  # multiprocessing tests `lock in (True, None)`
    ("Array", ("i", 4), {}),
    ("Array", ("i", [1, 2, 3]), {}),
    ("Array", ("d", (0.5, 1.5)), {"lock": False}),
    ("Array", ("c", b"hello"), {}),
    ("Array", ("u", "hello"), {}),
    ("Array", ("B", bytearray(b"\x00\xff")), {}),
    ("Array", ("i", 0), {}),
    ("Array", ("i", range(5)), {}),
    ("Array", (ctypes.c_short, [-1, 2]), {}),
    ("RawValue", ("q", 2**62), {}),
    ("RawValue", ("f",), {}),
    ("RawArray", ("H", [1, 65535]), {}),
    ("RawArray", ("c", 3), {}),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), GOOD_CALLS, ids=lambda x: repr(x)[:20])
def test_same_values_as_the_standard_library(fn: str, args: tuple, kwargs: dict) -> None:
    theirs = getattr(mpsc, fn)(*args, **kwargs)
    ours = getattr(shoal, fn)(*args, **kwargs)
    assert contents(ours) == contents(theirs)
    if hasattr(theirs, "__len__"):
        assert len(ours) == len(theirs)
        assert list(ours) == list(theirs)
    for name in ("get_lock", "get_obj", "acquire", "release", "raw"):
        assert hasattr(ours, name) == hasattr(theirs, name) or name == "get_obj", name
    if kwargs.get("lock") is False:  # the bare ctypes object (#11): nothing to close
        assert isinstance(ours, type(theirs))
    else:
        ours.close()


BAD_CALLS = [
    ("Value", ("x",), {}),
    ("Value", ("",), {}),
    ("Value", (5,), {}),
    ("Value", ("i", "a"), {}),
    ("Value", ("i", 1, 2), {}),
    ("Value", ("i", 1.5), {}),
    ("Value", ("c", "a"), {}),
    ("Value", ("u", "ab"), {}),
    ("Array", ("x", 3), {}),
    ("Array", ("i", -1), {}),
    ("Array", ("i", 2.5), {}),
    ("Array", ("i", [1, "a"]), {}),
    ("Array", ("c", "abc"), {}),
    ("Array", ("i", (x for x in range(3))), {}),
    ("Array", ("i", 2**62), {}),
    ("RawValue", ("x",), {}),
    ("RawArray", ("i", -1), {}),
    ("RawArray", ("d", ["a"]), {}),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), BAD_CALLS, ids=lambda x: repr(x)[:20])
def test_same_errors_as_the_standard_library(fn: str, args: tuple, kwargs: dict) -> None:
    with pytest.raises(Exception) as theirs:
        getattr(mpsc, fn)(*args, **kwargs)
    with pytest.raises(type(theirs.value)):
        getattr(shoal, fn)(*args, **kwargs)


def test_unknown_typecode_says_what_is_accepted() -> None:
    with pytest.raises(TypeError, match=r"unknown typecode 'x'.*'i'.*ctypes type"):
        shoal.Value("x")
    with pytest.raises(TypeError, match="ctypes type"):
        shoal.RawArray([], 3)


def test_a_failed_initializer_leaks_nothing() -> None:
    # the block is allocated before ctypes sees the initializer: it must be given back
    for _ in range(3):
        with pytest.raises(TypeError):
            shoal.Array("i", [1, 2, "x"])
        with pytest.raises(TypeError):
            shoal.RawArray("d", [0.0] * (MAX_ARENA_OBJECT // 8 + 1) + ["x"])


@pytest.mark.parametrize("lock", ["x", 0, threading.Lock(), FORK.Lock()], ids=repr)
def test_lock_must_be_a_shoal_lock(lock: Any) -> None:
    if not hasattr(lock, "acquire"):
        with pytest.raises(AttributeError):  # the one place we raise another class
            mpsc.Value("i", lock=lock)
    with pytest.raises(TypeError, match="shoal Lock or RLock"):
        shoal.Value("i", lock=lock)
    with pytest.raises(TypeError, match="shoal Lock or RLock"):
        shoal.Array("i", 3, lock=lock)


def test_pointer_types_are_refused() -> None:
    class Node(ctypes.Structure):
        pass

    Node._fields_ = [("next", ctypes.POINTER(Node)), ("n", ctypes.c_int)]
    for t in (ctypes.c_char_p, ctypes.c_void_p, ctypes.c_wchar_p, ctypes.py_object, Node):
        with pytest.raises(TypeError, match="address"):
            shoal.Value(t)
        with pytest.raises(TypeError, match="address"):
            shoal.RawArray(t, 2)


def test_the_shim_has_the_standard_library_names() -> None:
    for name in mpsc.__all__:
        assert name in sharedctypes.__all__, name
    for name in ("Synchronized", "SynchronizedArray", "SynchronizedString", "SynchronizedBase"):
        assert hasattr(mpsc, name) and name in sharedctypes.__all__
    for name in ("Value", "Array", "RawValue", "RawArray"):
        assert getattr(sharedctypes, name) is getattr(shoal, name)


# ---- kinds, typecodes, locks ------------------------------------------------------------


@pytest.mark.parametrize("code", TYPECODES)
def test_every_typecode(code: str) -> None:
    sample = SAMPLES[code]
    v = shoal.Value(code, sample)
    assert v.value == mpsc.Value(code, sample).value
    v.value = sample
    assert v.value == mpsc.RawValue(code, sample).value
    a = shoal.Array(code, 3)
    a[1] = sample
    assert a[1] == v.value
    assert a[0] == mpsc.RawArray(code, 1)[0]
    again = pickle.loads(pickle.dumps(a))
    assert again[:] == a[:]
    for obj in (v, a, again):
        obj.close()


def test_kinds_and_locks() -> None:
    v = shoal.Value("i", 1)
    assert isinstance(v, sharedctypes.Synchronized)
    assert isinstance(v.get_lock(), shoal.RLock)  # as multiprocessing: an RLock
    assert isinstance(shoal.Value("i", lock=None).get_lock(), shoal.RLock)
    raw = shoal.Value("i", 1, lock=False)
    assert isinstance(raw, ctypes.c_int)  # the bare ctypes object (#11)
    assert not hasattr(raw, "get_lock") and not hasattr(raw, "acquire")
    assert isinstance(shoal.Array("c", 3), sharedctypes.SynchronizedString)
    assert isinstance(shoal.Array("i", 3), sharedctypes.SynchronizedArray)
    assert isinstance(shoal.Array("i", 3, lock=False), ctypes.c_int * 3)
    # one lock guarding several objects
    lock = shoal.Lock()
    a, b = shoal.Value("i", lock=lock), shoal.Array("d", 2, lock=lock)
    assert a.get_lock() is lock and b.get_lock() is lock
    with a:
        assert lock.statistics().locked
        assert not b.acquire(False)  # a Lock, not recursive
    assert a.acquire(timeout=1)
    a.release()
    # the lock travels with the handle
    c = pickle.loads(pickle.dumps(b))
    with c.get_lock():
        assert not lock.acquire(False)
    rl = shoal.Value("i").get_lock()
    assert rl.acquire() and rl.acquire()  # an RLock
    rl.release()
    rl.release()


def test_value_and_array_of_array_types() -> None:
    three = ctypes.c_int * 3
    r = shoal.RawValue(three, 1, 2)
    assert isinstance(r, shoal.RawArray) and r[:] == [1, 2, 0]
    s = shoal.Value(ctypes.c_char * 4, b"a")
    assert isinstance(s, sharedctypes.SynchronizedString) and s.raw == b"a\x00\x00\x00"


def test_char_arrays() -> None:
    for s in (shoal.Array("c", 8), shoal.RawArray("c", 8)):
        s.value = b"hi"
        assert (s.value, s.raw, s[:2], s[0]) == (b"hi", b"hi" + bytes(6), b"hi", b"h")
        s.raw = b"abcdefgh"
        assert s.value == b"abcdefgh"
        with pytest.raises(ValueError):
            s.value = b"123456789"  # too long, as ctypes says
    w = shoal.RawArray("u", "abc")
    assert w.value == "abc" and w[1:] == "bc"
    assert not hasattr(shoal.RawArray("i", 2), "value")


def test_indexing_and_slicing_like_ctypes() -> None:
    theirs = (ctypes.c_int * 6)(*range(6))
    for ours in (shoal.Array("i", range(6)), shoal.RawArray("i", range(6))):
        for key in (0, -1, slice(1, 4), slice(None, None, 2), slice(-2, None), slice(5, 1, -1)):
            assert ours[key] == theirs[key]
        ours[1:3] = [10, 20]
        assert ours[:] == [0, 10, 20, 3, 4, 5]
        with pytest.raises(ValueError):
            ours[1:3] = [1, 2, 3]  # ctypes: same size only
        with pytest.raises(IndexError):
            ours[6]
        with pytest.raises(TypeError):
            ours["a"]
        assert 20 in ours and next(reversed(ours)) == 5


def test_structures() -> None:
    p = shoal.Value(Point, 1, 2.5)
    assert (p.x, p.y) == (1, 2.5)
    p.x = 5
    assert p.get_obj().x == 5
    assert "x" in dir(p)
    with pytest.raises(AttributeError):
        p.z  # noqa: B018
    assert not hasattr(p, "add")  # as multiprocessing's synchronized structures
    with pytest.raises(TypeError, match="not a number"):
        shoal.RawValue(Point).add(1)
    raw = shoal.RawValue(Segment2)
    raw.a.x = 3  # a nested structure is a view of the shared memory, as in ctypes
    raw.tag = b"ab"
    assert (raw.a.x, raw.tag) == (3, b"ab")
    q = pickle.loads(pickle.dumps(raw))
    assert (q.a.x, q.tag) == (3, b"ab")
    arr = shoal.Array(Point, [(1, 1.0), (2, 2.0)])
    arr[1].x = 7
    assert [pt.x for pt in arr] == [1, 7] and arr[0:2][1].y == 2.0
    grid = shoal.RawArray(ctypes.c_int * 3, 2)  # two rows of three
    grid[1][2] = 9
    assert [row[:] for row in grid] == [[0, 0, 0], [0, 0, 9]]
    assert pickle.loads(pickle.dumps(grid))[1][2] == 9


def test_views_keep_their_object_alive() -> None:
    arr = shoal.RawArray(Point, 2)
    alive = weakref.ref(arr)
    element, obj = arr[1], arr.get_obj()
    del arr
    gc.collect()
    assert alive() is not None  # the views hold it: its block is not handed out again
    element.x = 4
    assert obj[1].x == 4
    del element, obj
    gc.collect()
    assert alive() is None


def test_get_obj_is_the_ctypes_object() -> None:
    import numpy as np

    a = shoal.Array("d", 1000)
    obj = a.get_obj()
    assert type(obj) is ctypes.c_double * 1000 and ctypes.sizeof(obj) == 8000
    view = np.frombuffer(obj)  # the standard library's idiom, through get_obj()
    view[:] = 1.5
    assert a[999] == 1.5 and memoryview(a.get_obj()).nbytes == 8000
    v = shoal.RawValue("i", 3)
    assert v.get_obj().value == 3 and isinstance(v.get_obj(), ctypes.c_int)
    assert not shoal.RawValue("i") and shoal.RawValue("i", 1)  # truth as ctypes


def test_big_arrays_get_their_own_segment() -> None:
    small, big = shoal.RawArray("b", 100), shoal.RawArray("d", 100_000)
    assert small._segment.kind != big._segment.kind
    big[-1] = 2.0
    again = pickle.loads(pickle.dumps(big))
    assert again[-1] == 2.0 and again.add(-1, 1) == 3.0


def test_reprs() -> None:
    assert repr(shoal.Value("i", 5)) == "<shoal.Synchronized wrapper for c_int(5)>"
    assert repr(shoal.RawValue("d", 0.5)) == "<shoal.RawValue c_double(0.5)>"
    assert repr(shoal.RawValue(Point, 1)) == "<shoal.RawValue Point(x=1, y=0.0)>"
    assert repr(shoal.Array("i", 3)) == "<shoal.SynchronizedArray wrapper for c_int * 3: [0, 0, 0]>"
    assert repr(shoal.RawArray("i", 20)).endswith("0, 0, ...]>")
    assert repr(shoal.Array("c", b"ab")) == (
        "<shoal.SynchronizedString wrapper for c_char * 2: b'ab'>"
    )
    v = shoal.Value("i")
    with v:  # a repr never waits for the lock
        assert "c_int(0)" in repr(v)
    v.close()
    assert repr(v) == "<shoal.Synchronized closed>"


def test_synchronized_and_copy() -> None:
    raw = shoal.RawArray("i", [1, 2])
    sync = sharedctypes.synchronized(raw)
    assert isinstance(sync, sharedctypes.SynchronizedArray)
    sync[0] = 5
    assert raw[0] == 5  # the same memory
    lock = shoal.RLock()
    assert sharedctypes.synchronized(shoal.RawValue("i"), lock).get_lock() is lock
    with pytest.raises(TypeError, match="already synchronized"):
        sharedctypes.synchronized(sync)
    with pytest.raises(TypeError, match="RawValue or RawArray"):
        sharedctypes.synchronized(ctypes.c_int(1))
    dup = sharedctypes.copy(sync)
    dup[0] = 9
    assert isinstance(dup, shoal.RawArray) and raw[0] == 5 and dup[:] == [9, 2]
    shared = sharedctypes.copy(Point(3, 4.0))
    assert (shared.x, shared.y) == (3, 4.0)
    assert pickle.loads(pickle.dumps(shared)).y == 4.0


# ---- atomics -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", "iIlLqQ")
def test_integer_atomics_wrap_like_the_c_type(code: str) -> None:
    ctype = mpsc.typecode_to_type[code]
    bits = ctypes.sizeof(ctype) * 8
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if code.islower() else (0, 2**bits - 1)
    for v in (shoal.Value(code, hi), shoal.RawValue(code, hi)):
        assert v.add() == lo  # wraps, as C does (and ctypes assignment)
        assert v.fetch_add(-1) == lo and v.value == hi
        assert v.add(2**bits + 5) == ctype(hi + 5).value
        assert v.exchange(7) == ctype(hi + 5).value
        assert v.compare_exchange(7, -1) and v.value == ctype(-1).value
        assert not v.compare_exchange(7, 8) and v.value == ctype(-1).value
        assert v.add(True) == ctype(0).value
        with pytest.raises(TypeError):
            v.add(1.5)
    a = shoal.Array(code, [lo, 0, hi])
    assert a.add(0, -1) == hi and a.fetch_add(-1, 1) == hi and a[2] == lo
    assert a.compare_exchange(1, 0, 3) and a.exchange(1, 4) == 3 and a[:] == [hi, 4, lo]
    with pytest.raises(IndexError):
        a.add(3)
    with pytest.raises(TypeError):
        a.add("0")
    import numpy as np  # a test dependency: missing, the test fails

    assert a.add(np.int8(-3), np.int64(1)) == lo  # anything with __index__


def test_value_atomics_take_numpy_integers() -> None:
    import numpy as np  # a test dependency: missing, the test fails

    v = shoal.Value("q", 1)
    assert v.add(np.int64(2)) == 3 and v.fetch_add(np.uint8(1)) == 3
    assert v.compare_exchange(np.int32(4), np.int64(-1)) and v.value == -1
    with pytest.raises(TypeError):
        v.add(1.0)


@pytest.mark.parametrize("code", "fd")
def test_float_atomics(code: str) -> None:
    v = shoal.Value(code, 0.5)
    assert v.add(0.25) == 0.75 and v.fetch_add(1) == 0.75 and v.value == 1.75
    assert v.exchange(-0.0) == 1.75
    assert not v.compare_exchange(0.0, 1.0)  # bit for bit: -0.0 is not 0.0
    assert v.compare_exchange(-0.0, 0.1)
    assert v.value == (ctypes.c_float(0.1).value if code == "f" else 0.1)
    a = shoal.RawArray(code, 3)
    assert a.add(1, 1e300 if code == "d" else 1e38) > 0
    if code == "f":
        assert a.add(1, 1e38 * 4) == float("inf")  # rounds as C would, no OverflowError
    with pytest.raises(TypeError):
        v.add("1")


@pytest.mark.parametrize("code", "cubBhH")
def test_no_atomics_on_small_or_text_types(code: str) -> None:
    v, a = shoal.Value(code), shoal.Array(code, 2)
    for call in (v.add, v.fetch_add, lambda: v.compare_exchange(0, 1), lambda: a.add(0)):
        with pytest.raises(TypeError, match=r"4 or 8 bytes.*get_lock"):
            call()


def test_native_32_bit_atomics() -> None:
    buf = mmap.mmap(-1, 64)
    assert _core.fetch_add32(buf, 4, -1) == 0  # 4-byte aligned is enough
    assert _core.fetch_add32(buf, 4, 2) == 2**32 - 1
    assert _core.cas32(buf, 4, 1, 9) == (True, 1)
    assert _core.cas32(buf, 4, 1, 2) == (False, 9)
    _core.store32(buf, 60, -1)
    assert buf[60:64] == b"\xff" * 4 and buf[56:60] == bytes(4)
    with pytest.raises(ValueError, match="4-byte aligned"):
        _core.fetch_add32(buf, 2, 1)
    with pytest.raises(ValueError, match="outside"):
        _core.cas32(buf, 62, 0, 0)
    with pytest.raises(ValueError, match="outside"):
        _core.store32(buf, -4, 0)
    with pytest.raises(OverflowError):
        _core.fetch_add32(buf, 0, 2**31)
    with pytest.raises(BufferError):
        _core.fetch_add32(b"read-only", 0, 1)


# ---- use after close -------------------------------------------------------------------------


def test_use_after_close_raises_closed_error() -> None:
    uses = [
        lambda o: o.value,
        lambda o: setattr(o, "value", 1),
        lambda o: o.add(),
        lambda o: o.compare_exchange(0, 1),
        lambda o: o.get_obj(),
        lambda o: pickle.dumps(o),
    ]
    for v in (shoal.Value("i"), shoal.RawValue("q")):
        v.close()
        v.close()  # twice is harmless
        for use in uses:
            with pytest.raises(ClosedError):
                use(v)
    r = shoal.RawValue("i")
    r.close()
    with pytest.raises(ClosedError):
        bool(r)  # (a Synchronized is always true, as in multiprocessing)
    s = shoal.Value("i")
    s.close()
    for use in (lambda o: o.get_lock(), lambda o: o.acquire(), lambda o: o.__enter__()):
        with pytest.raises(ClosedError):
            use(s)
    array_uses = [len, list, lambda o: o[0], lambda o: o[:1], lambda o: o.__setitem__(0, 1)]
    for a in (shoal.Array("i", 2), shoal.RawArray(Point, 2), shoal.Array("c", 2)):
        a.close()
        for use in array_uses:
            with pytest.raises(ClosedError):
                use(a)
    p = shoal.Value(Point)
    p.close()
    with pytest.raises(ClosedError):
        p.x  # noqa: B018
    # closing inside ``with`` still releases the lock on the way out
    v = shoal.Value("i")
    lock = v.get_lock()
    with v:
        v.close()
    assert lock.acquire(False)
    lock.release()


# ---- across processes ------------------------------------------------------------------------


def pool_task(objs: dict[str, Any], i: int) -> tuple[int, bytes, float]:
    """In a Pool worker: write slot i of each object, report what the parent wrote."""
    objs["count"].add(1)
    objs["array"][i] = 100 + i
    objs["raw"][i] = i + 0.5
    objs["points"][i].x = i + 1
    with objs["value"].get_lock():
        objs["value"].value += 10
    return objs["count"].value >= 1, objs["text"].value, objs["struct"].y


def later_process(objs: dict[str, Any]) -> None:
    """In a process started after the pool ran: check its writes and add one more."""
    assert objs["array"][:] == [100, 101, 0]
    assert objs["raw"][:2] == [0.5, 1.5]
    assert [p.x for p in objs["points"]] == [1, 2]
    objs["text"].value = b"later"
    objs["count"].add(5)


def test_values_cross_processes(ctx: Any) -> None:
    objs = {
        "count": shoal.RawValue("q"),
        "value": shoal.Value("i", 1),
        "array": shoal.Array("i", 3),
        "raw": shoal.RawArray("d", 100_000),  # own segment
        "points": shoal.Array(Point, 2),
        "text": shoal.Array("c", b"parent"),
        "struct": shoal.RawValue(Point, 0, 3.5),
    }
    with ctx.Pool(2) as pool:
        results = pool.starmap_async(pool_task, [(objs, 0), (objs, 1)]).get(TIMEOUT)
    assert results == [(True, b"parent", 3.5)] * 2
    assert objs["count"].value == 2 and objs["value"].value == 21
    proc = ctx.Process(target=later_process, args=(objs,))
    proc.start()
    proc.join(TIMEOUT)
    assert proc.exitcode == 0
    assert objs["text"].value == b"later" and objs["count"].value == 7


def make_in_worker(n: int) -> tuple[Any, Any]:
    """In a Pool worker: create objects and return them (they outlive this task)."""
    a = shoal.Array("i", range(n))
    a.add(0, 5)
    return a, shoal.RawValue(Point, n, 0.5)


def test_a_worker_returns_new_objects(ctx: Any) -> None:
    # relies on the reference a pickled handle carries (shoal._handle, #4): the
    # worker's own handles are gone before the parent unpickles the result (without
    # it the unpickling fails in the Pool's result thread, and get() times out)
    with ctx.Pool(1) as pool:
        a, p = pool.apply_async(make_in_worker, (3,)).get(TIMEOUT)
        gc.collect()
    assert a[:] == [5, 1, 2] and (p.x, p.y) == (3, 0.5)
    assert a.add(1) == 2


def add_many(counter: Any, array: Any, total: Any, n: int) -> None:
    for _ in range(n):
        counter.add(1)
        array.add(1, -1)
        total.add(0.5)


def locked_increments(v: Any, n: int) -> None:
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def run_children(target: Any, args: tuple, count: int = 3, ctx: Any = FORK) -> None:
    procs = [ctx.Process(target=target, args=args) for _ in range(count)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    assert [p.exitcode for p in procs] == [0] * count


def test_atomic_increments_from_three_processes_end_exact() -> None:
    n = 20_000
    counter, array, total = shoal.Value("Q"), shoal.RawArray("i", 3), shoal.RawValue("d")
    run_children(add_many, (counter, array, total, n))
    assert counter.value == 3 * n
    assert array[:] == [0, -3 * n, 0]
    assert total.value == 1.5 * n


def test_increments_under_the_lock_from_three_processes_end_exact() -> None:
    v = shoal.Value("i")
    run_children(locked_increments, (v, 2000))
    assert v.value == 6000


def test_atomics_across_spawned_processes() -> None:
    counter, array, total = shoal.Value("l"), shoal.Array("I", 2), shoal.Value("f")
    run_children(add_many, (counter, array, total, 500), count=2, ctx=mp.get_context("spawn"))
    assert (counter.value, array[1], total.value) == (1000, 2**32 - 1000, 500.0)


# ---- lock=False: the bare ctypes object, as the standard library returns (#11) -----------


def _bare_makers() -> list[tuple[str, Any]]:
    spawn = shoal.get_context("spawn")
    return [("shoal", shoal), ("context", spawn), ("sharedctypes", sharedctypes)]


@pytest.mark.parametrize("where", ["shoal", "context", "sharedctypes"])
def test_lock_false_returns_the_bare_ctypes_object(where: str) -> None:
    make = dict(_bare_makers())[where]
    v, theirs_v = make.Value("i", 5, lock=False), mp.Value("i", 5, lock=False)
    a, theirs_a = make.Array("d", [1.0, 2.0, 3.0], lock=False), mp.Array("d", 3, lock=False)
    s = make.Array("c", b"hey", lock=False)
    for ours, theirs in ((v, theirs_v), (a, theirs_a)):
        assert isinstance(ours, type(theirs)), (type(ours), type(theirs))
        assert type(ours).__name__ == type(theirs).__name__
        for name in ("get_lock", "get_obj", "acquire", "close"):
            assert not hasattr(ours, name), name
    assert repr(v) == repr(theirs_v) == "c_int(5)"
    assert v.value == 5 and a[:] == [1.0, 2.0, 3.0] and len(a) == 3
    assert (s.value, s.raw) == (b"hey", b"hey")
    assert ctypes.sizeof(a) == 24 and memoryview(a).nbytes == 24  # a real ctypes object
    # still in shared memory: a copy by pickle sees the writes, and writes back
    again = pickle.loads(pickle.dumps(v))
    again.value = 7
    assert v.value == 7
    structure = make.Value(Point, 1, 2, lock=False)
    assert isinstance(structure, Point) and (structure.x, structure.y) == (1, 2)


def bump_bare(v: Any, a: Any) -> int:
    v.value += 1
    a[0] += 10
    return v.value


def test_lock_false_objects_go_to_processes_and_pool_tasks(ctx: Any) -> None:
    v, a = shoal.Value("i", 0, lock=False), shoal.Array("i", 2, lock=False)
    p = ctx.Process(target=bump_bare, args=(v, a))  # as the standard library allows
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == 0
    assert (v.value, a[:]) == (1, [10, 0])
    # and anywhere else, as shoal's objects go (the standard library raises there)
    with shoal.Pool(2, context=ctx) as pool:
        assert pool.apply(bump_bare, (v, a)) == 2
        q = shoal.Queue()
        q.put(v)
        got = q.get(timeout=TIMEOUT)
        assert pool.apply(bump_bare, (got, a)) == 3
    assert (v.value, a[0]) == (3, 30)
    q.close()
