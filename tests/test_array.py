"""SharedArray and share(): numpy arrays in shared memory that pickle as handles (#4).

What these tests hold ``shoal.SharedArray`` to:

* it is an ndarray, zero-filled, 64-byte aligned; small ones share arenas, big ones
  get a segment of their own; results numpy makes in new memory are plain ndarrays;
* it (and any view of it: slices with any strides, transposes, fields) pickles as a
  handle plus a geometry, and every process sees and writes the same memory:
  ``Process`` arguments, ``Pool`` arguments and return values, queues, under fork,
  spawn and forkserver (where unpickling in a fresh interpreter differs);
* structured dtypes, C and Fortran order, 0-d and empty arrays;
* read-only views stay read-only in every process they are sent to;
* bad input raises in the caller: object dtypes, negative or non-integer shapes,
  a bad order, use after close (``ClosedError``);
* the memory goes when the last array goes (never while a view is alive), and
  nothing is left in ``/dev/shm`` (the autouse leak check).
"""

from __future__ import annotations

import copy
import gc
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import textwrap
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest
from conftest import join_all

import shoal
from shoal import _core, _handle, _memory

TIMEOUT = 20.0
FORK = mp.get_context("fork")
BIG = (_handle.MAX_ARENA_OBJECT // 8) + 1  # float64 elements: more than an arena takes

POINT = np.dtype([("x", "<i4"), ("y", "<f8"), ("name", "S5"), ("flags", "u1", (3,))])


def address(a: Any) -> int:
    return a.__array_interface__["data"][0]


def refs_of(a: Any) -> int:
    """The shared reference count of an array's block (every process's handles)."""
    block = a._shoal_block
    return _core.load64(block._segment.buffer, block._header_offset) & 0xFFFFFFFF


def run_child(ctx: Any, target: Any, *args: Any) -> Any:
    """Run ``target(*args, conn)`` in a child; return what it sent."""
    here, there = ctx.Pipe()
    p = ctx.Process(target=target, args=(*args, there))
    p.start()
    try:
        assert here.poll(TIMEOUT), "the child sent nothing"
        return here.recv()
    finally:
        join_all(p)
        assert p.exitcode == 0


# ---- child-side helpers (module level: spawn and forkserver import them) ---------------


def read_and_write(a: Any, conn: Connection) -> None:
    seen = a.copy()
    a[...] = -a  # written in place: the parent sees it
    conn.send((type(a).__name__, seen, a.flags.writeable, a.flags.f_contiguous))


def try_to_write(a: Any, conn: Connection) -> None:
    try:
        a[0] = 1
    except ValueError as exc:
        outcome = f"refused: {exc}"
    else:
        outcome = "written"
    try:
        a.flags.writeable = True
    except ValueError:
        switched = False
    else:
        switched = True
    conn.send((outcome, switched, float(a.sum())))


def fill_rows(a: Any, start: int, stop: int) -> int:
    a[start:stop] = np.arange(start, stop)[:, None]
    return os.getpid()


def make_array(n: int) -> Any:
    a = shoal.SharedArray((n, 3), dtype=np.int32)
    a[:, 0] = np.arange(n)
    a[:, 2] = os.getpid()
    return a


def half_of(a: Any) -> Any:
    return a[: len(a) // 2]  # a view of the argument: the same memory, no copy


def set_field(a: Any, conn: Connection) -> None:
    a["y"] += 0.5
    a[1]["name"] = b"child"
    conn.send(a[0]["flags"].tolist())


# ---- an ndarray, in shared memory -----------------------------------------------------------


def test_it_is_a_zero_filled_aligned_ndarray() -> None:
    a = shoal.SharedArray((3, 4))
    assert isinstance(a, np.ndarray) and type(a) is shoal.SharedArray
    assert a.shape == (3, 4) and a.dtype == np.float64 and a.flags.c_contiguous
    assert a.flags.writeable and not a.any()
    assert address(a) % 64 == 0
    assert a._shoal_block._segment.kind == _memory.KIND_ARENA
    for shape in [5, (2, 3, 4), (0,), (), [2, 2], np.int64(3)]:
        b = shoal.SharedArray(shape, dtype=np.int16)
        assert b.shape == np.zeros(shape).shape and not b.any()
        assert address(b) % 64 == 0 or b.size == 0
    a[1] = np.arange(4)
    assert a.sum() == 6 and np.array_equal(a[1], [0, 1, 2, 3])
    assert "SharedArray" in repr(a) and shoal.SharedArray.__module__ == "shoal"


def test_big_arrays_get_a_segment_of_their_own() -> None:
    a = shoal.SharedArray(BIG)
    segment = a._shoal_block._segment
    assert segment.kind == _memory.KIND_DATA
    assert address(a) % 64 == 0
    name = segment.name
    a[-1] = 7.0
    copy_ = pickle.loads(pickle.dumps(a))
    assert copy_[-1] == 7.0 and address(copy_) == address(a)
    del a, copy_
    gc.collect()
    assert not os.path.exists("/dev/shm" + name), "the last array went, the segment stayed"


def test_new_memory_is_a_plain_ndarray_views_are_shared() -> None:
    a = shoal.share(np.arange(12.0).reshape(3, 4))
    for result in [
        a + 1,
        a * a,
        np.sqrt(a),
        a.sum(axis=0),
        a.copy(),
        copy.copy(a),
        copy.deepcopy(a),
        a.astype(np.float32),
        np.concatenate([a, a]),
        a > 3,
    ]:
        assert type(result) is np.ndarray, type(result)
    assert type(a.sum()) is np.float64
    for view in [a[1:], a[:, ::2], a.T, a.reshape(12), a[1], a.ravel(), a.view(np.int64)]:
        assert type(view) is shoal.SharedArray and view._shoal_block is a._shoal_block
    a += 1  # in place: still shared, and the same memory
    assert type(a) is shoal.SharedArray and a._shoal_block is not None and a[0, 0] == 1
    np.multiply(a, 2, out=a)
    assert a[0, 0] == 2
    # fancy indexing keeps the subclass in new memory: detached, pickles by value
    picked = a[[0, 2]]
    assert type(picked) is shoal.SharedArray and picked._shoal_block is None
    back = pickle.loads(pickle.dumps(picked))
    assert type(back) is np.ndarray and np.array_equal(back, picked)
    picked.close()  # nothing to close: harmless


def test_share_copies_once_and_keeps_shape_dtype_and_order() -> None:
    source = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    a = shoal.share(source)
    assert a.dtype == source.dtype and np.array_equal(a, source) and a.flags.c_contiguous
    source[0, 0, 0] = 99
    assert a[0, 0, 0] == 0, "share() copies: the source is not shared"
    f = shoal.share(np.asfortranarray(source))
    assert f.flags.f_contiguous and not f.flags.c_contiguous and np.array_equal(f, source)
    listed = shoal.share([[1, 2], [3, 4]])
    assert listed.shape == (2, 2) and listed.dtype.kind == "i"
    strided = shoal.share(source[:, ::2, ::-1])  # any layout in: C order out
    assert strided.flags.c_contiguous and np.array_equal(strided, source[:, ::2, ::-1])


# ---- across processes ------------------------------------------------------------------------


def test_values_written_in_one_process_are_read_in_another(ctx: Any) -> None:
    a = shoal.share(np.arange(6.0).reshape(2, 3))
    name, seen, writeable, _ = run_child(ctx, read_and_write, a)
    assert name == "SharedArray" and writeable
    assert np.array_equal(seen, np.arange(6.0).reshape(2, 3))
    assert np.array_equal(a, -np.arange(6.0).reshape(2, 3)), "the child's writes are not here"
    assert refs_of(a) == 1, "the child's reference was not given back"


def test_pool_arguments_and_return_values(ctx: Any) -> None:
    a = shoal.SharedArray((8, 4), dtype=np.int64)
    with ctx.Pool(2) as pool:
        # arguments: the workers fill the array in place
        pids = pool.starmap_async(fill_rows, [(a, 0, 4), (a, 4, 8)]).get(timeout=TIMEOUT)
        # return values: a view of an argument comes back as the same memory
        half = pool.apply_async(half_of, (a,)).get(timeout=TIMEOUT)
        # and an array a worker made
        made = pool.apply_async(make_array, (5,)).get(timeout=TIMEOUT)
        pool.close()
        pool.join()
    assert all(pid != os.getpid() for pid in pids)
    assert np.array_equal(a, np.repeat(np.arange(8)[:, None], 4, axis=1))
    assert type(half) is shoal.SharedArray and address(half) == address(a)
    half[0, 0] = 42
    assert a[0, 0] == 42
    assert type(made) is shoal.SharedArray and made.dtype == np.int32
    assert np.array_equal(made[:, 0], np.arange(5)) and made[0, 2] != os.getpid()
    made[0, 1] = 1  # writable here too
    assert refs_of(a) == 2 and refs_of(made) == 1  # a and half; the worker's went


def test_a_worker_returns_an_array_and_exits_before_it_is_used(ctx: Any) -> None:
    # maxtasksperchild=1: the worker that made the array is gone when we read it (the
    # pickled handle kept it alive in between)
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        small = pool.apply_async(make_array, (4,)).get(timeout=TIMEOUT)
        big = pool.apply_async(make_array, (BIG,)).get(timeout=TIMEOUT)
        pool.close()
        pool.join()
    assert big._shoal_block._segment.kind == _memory.KIND_DATA
    for a in (small, big):
        assert np.array_equal(a[:, 0], np.arange(len(a)))
        a[:, 1] = 5
        assert refs_of(a) == 1


def test_through_a_queue(ctx: Any) -> None:
    a = shoal.share(np.arange(10))
    q = shoal.Queue()
    q.put(a[::3])
    view = q.get(timeout=TIMEOUT)
    assert view.strides == a[::3].strides and address(view) == address(a)
    view[1] = 100
    assert a[3] == 100
    q.close()


# ---- dtypes, orders, geometry -----------------------------------------------------------------


def test_structured_dtypes() -> None:
    a = shoal.SharedArray(3, dtype=POINT)
    assert a.dtype == POINT and not a["x"].any()
    a[0] = (1, 2.5, b"alpha", [1, 2, 3])
    a[1]["x"] = 7
    flags = run_child(FORK, set_field, a)
    assert flags == [1, 2, 3]
    assert a["y"].tolist() == [3.0, 0.5, 0.5]
    assert a[1]["name"] == b"child" and a[1]["x"] == 7
    # a field is a strided view: it pickles as one
    ys = pickle.loads(pickle.dumps(a["y"]))
    assert ys.strides == (POINT.itemsize,) and address(ys) == address(a["y"])
    ys[2] = -1
    assert a[2]["y"] == -1
    nested = shoal.share(np.zeros((2, 2), dtype=[("p", POINT), ("w", "<f4", (2, 2))]))
    back = pickle.loads(pickle.dumps(nested["p"]["flags"]))
    back[1, 1] = [9, 9, 9]
    assert nested[1, 1]["p"]["flags"].tolist() == [9, 9, 9]


@pytest.mark.parametrize("order", ["C", "F"])
def test_orders_and_strided_views_pickle_as_views(order: str) -> None:
    a = shoal.SharedArray((4, 6), dtype=np.int32, order=order)
    assert a.flags.c_contiguous if order == "C" else a.flags.f_contiguous
    a[...] = np.arange(24).reshape(4, 6)
    views = [a, a.T, a[1:3], a[::2, ::-3], a[:, 4], a[2, 1:], a[::-1], a[3:, 5:], a[0:0]]
    for view in views:
        got = pickle.loads(pickle.dumps(view))
        assert type(got) is shoal.SharedArray
        assert got.shape == view.shape and got.strides == view.strides
        assert np.array_equal(got, view)
        if view.size:
            assert address(got) == address(view), "not the same memory"
    twin = pickle.loads(pickle.dumps(a[::-1, 1::2]))
    twin[0, 0] = -5  # a[3, 1]
    assert a[3, 1] == -5


def test_zero_d_and_empty_arrays() -> None:
    scalar = shoal.SharedArray((), dtype=np.complex128)
    scalar[()] = 1 + 2j
    assert pickle.loads(pickle.dumps(scalar))[()] == 1 + 2j
    empty = shoal.SharedArray((0, 5))
    got = pickle.loads(pickle.dumps(empty))
    assert got.shape == (0, 5) and type(got) is shoal.SharedArray


# ---- read-only views -------------------------------------------------------------------------


def test_read_only_views_refuse_writes_in_the_receiver(ctx: Any) -> None:
    a = shoal.share(np.ones(4))
    r = a.readonly()
    assert type(r) is shoal.SharedArray and not r.flags.writeable and address(r) == address(a)
    with pytest.raises(ValueError, match="read-only"):
        r[0] = 2
    with pytest.raises(ValueError):
        r.flags.writeable = True
    outcome, switched, total = run_child(ctx, try_to_write, r[1:])
    assert outcome.startswith("refused") and not switched and total == 3.0
    # the writable original is still writable, here and there
    outcome, _, _ = run_child(FORK, try_to_write, a)
    assert outcome == "written" and a[0] == 1
    a[2] = 5
    assert r[2] == 5, "a read-only view sees writes made through the memory"


# ---- bad input, closing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((3,), {"dtype": object}, TypeError, "Python objects"),
        ((3,), {"dtype": [("a", "i4"), ("b", "O")]}, TypeError, "Python objects"),
        ((3,), {"dtype": "no such dtype"}, TypeError, "dtype"),
        ((-1,), {}, ValueError, "negative"),
        (((2, -3),), {}, ValueError, "negative"),
        ((1.5,), {}, TypeError, "shape"),
        (("3",), {}, TypeError, "shape"),
        ((None,), {}, TypeError, "shape"),
        ((True,), {}, TypeError, "shape"),
        (((2, 2.0),), {}, TypeError, "shape"),
        ((3,), {"order": "K"}, ValueError, "order"),
        (((2**40, 2**40),), {}, ValueError, "too big"),
    ],
)
def test_bad_arguments(args: Any, kwargs: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        shoal.SharedArray(*args, **kwargs)


def test_share_refuses_objects() -> None:
    with pytest.raises(TypeError, match="Python objects"):
        shoal.share(np.array([object(), None]))
    with pytest.raises(TypeError, match="Python objects"):
        shoal.share([{}, "x", 1])


@pytest.mark.parametrize("size", [16, BIG], ids=["arena", "own segment"])
def test_use_after_close(size: int) -> None:
    a = shoal.SharedArray(size)
    view = a[1:]
    assert not a.closed
    a.close()
    assert a.closed and view.closed
    with pytest.raises(shoal.ClosedError):
        pickle.dumps(a)
    with pytest.raises(shoal.ClosedError):
        pickle.dumps(view)
    with pytest.raises(shoal.ClosedError):
        a.readonly()
    a.close()  # harmless
    # the memory of an array that is still alive here is never handed to another object
    view[0] = 3.0
    assert a[1] == 3.0


def test_an_arena_block_is_freed_when_its_last_view_goes() -> None:
    keep = shoal.Lock()  # keeps the arena
    a = shoal.SharedArray(8)
    block = a._shoal_block
    segment, offset = block._segment, block._header_offset
    view = a[2:].T
    plain = np.asarray(a)  # a plain ndarray view still holds the memory
    a.close()
    del a, block
    gc.collect()
    assert _core.load64(segment.buffer, offset) == 1, "freed while views were alive"
    del view
    gc.collect()
    assert _core.load64(segment.buffer, offset) == 1, "freed while a plain view was alive"
    del plain
    gc.collect()
    assert _core.load64(segment.buffer, offset) == 0
    keep.close()


# ---- numpy is optional ----------------------------------------------------------------------


def test_import_shoal_does_not_import_numpy() -> None:
    code = textwrap.dedent(
        """
        import sys
        import shoal
        assert "numpy" not in sys.modules, "import shoal imported numpy"
        assert "SharedArray" in dir(shoal) and "share" in shoal.__all__
        shoal.SharedArray
        assert "numpy" in sys.modules
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr


def test_without_numpy_the_error_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numpy"] = None  # what a missing numpy looks like to import
        import shoal
        lock = shoal.Lock()
        try:
            shoal.SharedArray(3)
        except ImportError as exc:
            print(exc)
        lock.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert "pip install shoal[numpy]" in result.stdout


def test_data_is_aligned_for_every_dtype() -> None:
    for dtype in [
        np.int8,
        np.float16,
        np.complex256 if hasattr(np, "complex256") else np.complex128,
        POINT,
        "S3",
        "U2",
        "datetime64[ns]",
        "?",
    ]:
        a = shoal.SharedArray((3, 3), dtype=dtype)
        assert address(a) % 64 == 0
