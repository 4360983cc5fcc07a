"""The Ray backend (#13): ``get_context("ray")``, ``shoal.use()``/``SHOAL_CONTEXT``, and
shoal's Pool and Executor on Ray tasks.

The pool's API tests run over the local context (fork: the cheapest start method; the
start-method matrix is tests/test_pool_api.py's) and the Ray context, where the
behaviour is meant to be the same; a test that runs on one only says why.  The Ray
ones share the session's one local cluster (conftest.py ``ray_cluster``: loopback
only, stopped by ``ray.shutdown()``) and skip where Ray cannot be installed.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.pool import RemoteTraceback
from typing import Any

import pool_tasks as t
import pytest

import shoal
from shoal import _context

TIMEOUT = 30.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ray_ctx(ray_cluster: str) -> Any:
    return shoal.get_context("ray")


def run_script(code: str, env: dict[str, str] | None = None, timeout: float = 90) -> str:
    """Run ``code`` as ``__main__`` of a fresh interpreter; return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ---- the switch ---------------------------------------------------------------------


def test_import_shoal_and_get_context_ray_do_not_import_ray() -> None:
    out = run_script(
        """
        import sys, shoal
        shoal.Pool, shoal.Queue, shoal.Lock
        ctx = shoal.get_context("ray", address="127.0.0.1:1")
        print("ray" in sys.modules, type(ctx).__name__, ctx.address)
        """
    )
    assert out.split() == ["False", "RayContext", "127.0.0.1:1"]


def test_without_ray_the_context_says_how_to_install_it() -> None:
    out = run_script(
        """
        import sys
        sys.modules["ray"] = None  # as if not installed
        import shoal
        ctx = shoal.get_context("ray")
        try:
            ctx.Pool(1)
        except ImportError as error:
            print(error)
        """
    )
    assert "pip install 'shoal[ray]'" in out


def test_a_bad_address_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match="address must be a string"):
        shoal.get_context("ray", address=6379)


def test_ray_is_a_registered_backend() -> None:
    ctx = shoal.get_context("ray")
    assert isinstance(ctx, _context.BackendContext)
    assert ctx.get_start_method() is None
    with pytest.raises(ValueError, match="exists already"):
        _context.register_backend("ray", lambda **kw: ctx)


def test_use_makes_the_module_factories_the_contexts(ray_cluster: str) -> None:
    local_pool = shoal.Pool  # bound before: keeps its value
    try:
        ctx = shoal.use("ray")
        assert type(ctx).__name__ == "RayContext"
        with shoal.Pool(1) as pool:
            assert type(pool).__name__ == "RayPool"
            assert pool.apply(t.square, (7,)) == 49
        with shoal.Manager() as manager:
            assert type(manager).__name__ == "RayManager"
            assert manager.dict(a=1)["a"] == 1
        assert shoal.SharedDict is not None  # not a factory: the local one still
    finally:
        assert shoal.use(None) is None
    assert shoal.Pool is local_pool
    assert shoal.Queue is shoal._queues.Queue  # type: ignore[attr-defined]


def test_use_a_start_method_and_back() -> None:
    try:
        shoal.use("spawn")
        q = shoal.Queue()
        assert isinstance(q, shoal._queues.Queue)  # type: ignore[attr-defined]
        q.close()
    finally:
        shoal.use(None)
    with pytest.raises(ValueError, match="cannot find context"):
        shoal.use("no-such-engine")
    assert shoal.use(None) is None


def test_shoal_context_environment_variable_picks_the_cluster(ray_cluster: str) -> None:
    # a second driver, joining the cluster this test session started (by its address)
    out = run_script(
        """
        import os, sys, shoal

        def square(x):
            return x * x

        with shoal.Pool(2) as pool:
            print(type(pool).__name__, pool.map(square, range(5)))
        import ray
        print(ray.get_runtime_context().gcs_address == os.environ["SHOAL_RAY_ADDRESS"])
        """,
        env={"SHOAL_CONTEXT": "ray", "SHOAL_RAY_ADDRESS": ray_cluster},
    )
    # (less what the cluster's raylet prints to every driver: its warnings)
    lines = [line for line in out.splitlines() if "(raylet)" not in line]
    assert lines == ["RayPool [0, 1, 4, 9, 16]", "True"]


# ---- the pool: the same API on both contexts ------------------------------------------


def test_map_starmap_and_chunks_are_in_order(context: Any) -> None:
    with context.Pool(2) as pool:
        assert pool.map(t.square, range(100)) == [x * x for x in range(100)]
        assert pool.map(t.square, range(10), chunksize=3) == [x * x for x in range(10)]
        assert pool.map(t.square, []) == []
        assert pool.starmap(t.add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.map(lambda x: x + 1, range(3)) == [1, 2, 3]  # cloudpickle


def test_imap_and_imap_unordered(context: Any) -> None:
    with context.Pool(2) as pool:
        assert list(pool.imap(t.square, range(20))) == [x * x for x in range(20)]
        assert list(pool.imap(t.square, iter(range(7)), chunksize=3)) == [x * x for x in range(7)]
        assert sorted(pool.imap_unordered(t.square, range(20))) == sorted(x * x for x in range(20))
        it = pool.imap(t.sleep_then, [3.0])
        with pytest.raises(mp.TimeoutError):
            it.next(timeout=0.2)


def test_apply_async_callbacks_and_results(context: Any) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    with context.Pool(2) as pool:
        assert pool.apply(t.add, (1,), {"b": 2}) == 3
        results = [pool.apply_async(t.square, (i,), callback=got.append) for i in range(50)]
        assert [r.get(TIMEOUT) for r in results] == [i * i for i in range(50)]
        assert all(r.ready() and r.successful() for r in results)
        assert sorted(got) == [i * i for i in range(50)]
        bad = pool.apply_async(t.fail, ("nope",), error_callback=errors.append)
        with pytest.raises(ValueError, match="nope"):
            bad.get(TIMEOUT)
        assert not bad.successful()
        assert len(errors) == 1 and isinstance(errors[0], ValueError)  # not a wrapper
        slow = pool.apply_async(t.sleep_then, (3.0,))
        with pytest.raises(mp.TimeoutError):
            slow.get(0.1)
        with pytest.raises(ValueError, match="not ready"):
            slow.successful()


def test_map_async_callback_gets_the_list_in_input_order(context: Any) -> None:
    got: list[Any] = []
    with context.Pool(2) as pool:
        # the first chunk is the slowest: completion order differs from input order
        r = pool.map_async(t.square_slowly_first, range(8), chunksize=1, callback=got.append)
        assert r.get(TIMEOUT) == [x * x for x in range(8)]
        assert got == [[x * x for x in range(8)]]


def test_a_task_raises_its_own_exception_with_the_remote_traceback(context: Any) -> None:
    with context.Pool(2) as pool:
        with pytest.raises(ValueError, match="boom") as info:
            pool.apply(t.fail)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "in fail" in str(info.value.__cause__)
        with pytest.raises(ValueError, match="3"):
            pool.map(t.fail_on, range(6))
        with pytest.raises(shoal.ShoalError, match="NeedsTwoArguments"):
            pool.apply(t.raise_unpicklable_exception)
        assert pool.map(t.square, range(3)) == [0, 1, 4]  # and the pool carries on


def test_a_worker_that_dies_fails_only_its_task(context: Any) -> None:
    with context.Pool(2) as pool:
        others = [pool.apply_async(t.sleep_then, (0.5, i)) for i in range(3)]
        doomed = pool.apply_async(os._exit, (3,))
        with pytest.raises(shoal.WorkerDiedError) as info:
            doomed.get(TIMEOUT)
        assert isinstance(info.value, concurrent.futures.process.BrokenProcessPool)
        assert [r.get(TIMEOUT) for r in others] == [0, 1, 2]
        assert pool.map(t.square, range(5)) == [0, 1, 4, 9, 16]


def test_a_task_past_its_timeout_fails_and_the_pool_carries_on(context: Any) -> None:
    with context.Pool(2) as pool:
        start = time.monotonic()
        r = pool.apply_async(t.sleep_then, (30.0,), timeout=0.5)
        with pytest.raises(shoal.TaskTimeoutError):
            r.get(TIMEOUT)
        assert time.monotonic() - start < 15
        assert pool.apply(t.square, (4,), timeout=10) == 16
    with context.Pool(1, task_timeout=0.5) as pool, pytest.raises(shoal.TaskTimeoutError):
        pool.map(t.sleep_then, [30.0])


def test_initializer_runs_in_each_worker(context: Any) -> None:
    with context.Pool(2, initializer=t.set_state, initargs=("k", 42)) as pool:
        states = pool.map(t.read_state, ["k"] * 8, chunksize=1)
        assert {value for value, _ in states} == {42}


def test_maxtasksperchild_replaces_the_worker(context: Any) -> None:
    with context.Pool(1, maxtasksperchild=1) as pool:
        pids = [pool.apply(t.pid) for _ in range(3)]
    assert len(set(pids)) == 3


def test_close_join_and_terminate(context: Any) -> None:
    pool = context.Pool(2)
    results = [pool.apply_async(t.sleep_then, (0.2, i)) for i in range(4)]
    pool.close()
    with pytest.raises(ValueError):
        pool.apply_async(t.square, (1,))
    pool.join()
    assert [r.get(0) for r in results] == [0, 1, 2, 3]

    pool = context.Pool(2)
    running = pool.apply_async(t.sleep_then, (30.0,))
    time.sleep(0.3)
    start = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - start < 15
    with pytest.raises(shoal.ClosedError):
        running.get(TIMEOUT)


def test_bad_arguments_are_refused_in_the_caller(context: Any) -> None:
    with pytest.raises(ValueError):
        context.Pool(0)
    with pytest.raises(TypeError):
        context.Pool(1, initializer=3)
    with context.Pool(1) as pool:
        with pytest.raises(TypeError):
            pool.apply_async(3)
        with pytest.raises(ValueError):
            pool.map(t.square, range(3), chunksize=0)


# ---- shared data: the same API on both contexts -------------------------------------


def test_array_raw_array_and_shared_list(context: Any) -> None:
    arr = context.Array("i", 4)
    assert len(arr) == 4 and list(arr) == [0, 0, 0, 0]
    arr[1] = 5
    arr[2:4] = [7, 8]
    assert arr[:] == [0, 5, 7, 8] and arr[1] == 5 and arr[-1] == 8
    assert arr.add(1, 2) == 7
    with pytest.raises(ValueError, match="same size"):
        arr[0:2] = [1]
    with pytest.raises(TypeError):
        arr[0] = "x"
    with pytest.raises(TypeError):
        context.Array("z", 3)
    raw = context.RawArray("d", [0.5, 1.5])
    assert raw[:] == [0.5, 1.5]
    items = context.SharedList([1, 2])
    items.append(3)
    items.extend([4, 5])
    assert items == [1, 2, 3, 4, 5] and len(items) == 5 and items[1:3] == [2, 3]
    assert items.pop() == 5 and items.index(3) == 2 and 4 in items
    items.sort(reverse=True)
    assert items.copy() == [4, 3, 2, 1]
    with context.Pool(2) as pool:
        # the lock keeps a read-modify-write from two workers exact
        pool.starmap(t.add_under_lock, [(arr, 0, 25)] * 4)
        assert arr[0] == 100
        pool.starmap(t.append_to, [(items, x) for x in range(10, 14)])
    assert sorted(items.copy()) == [1, 2, 3, 4, 10, 11, 12, 13]


def test_ray_share_reads_zero_copy_and_tasks_writes_reach_the_parent(ray_ctx: Any) -> None:
    np = pytest.importorskip("numpy")
    source = np.arange(1000, dtype=np.float64)
    arr = ray_ctx.share(source)
    source[0] = -1  # a copy was shared: the caller's array is its own
    assert arr.shape == (1000,) and arr.dtype == np.float64 and len(arr) == 1000
    view = arr.view()
    assert not view.flags.writeable  # the object store's memory, mapped read-only
    assert arr.view() is view  # no write since: the same version, the same mapping
    assert view.sum() == sum(range(1000)) and arr[10] == 10.0
    with ray_ctx.Pool(2) as pool:
        seen = pool.map(t.read_shared, [arr] * 4, chunksize=1)
        assert {(s, w) for s, w, _ in seen} == {(sum(range(1000)), False)}
        # writes by tasks go to the owner; every read that starts after them sees them
        pool.starmap(t.write_shared, [(arr, i, 100.0 + i) for i in range(4)])
        assert list(arr[:4]) == [100.0, 101.0, 102.0, 103.0]
        assert view[0] == 0.0  # a view taken before is that version, unchanged
        pool.starmap(t.add_shared, [(arr, 999, 25)] * 4)  # atomic in the owner
    assert arr[999] == 999 + 100
    writable = arr.copy()
    writable[0] = 7  # a private copy
    assert arr[0] == 100.0
    arr[10:20] = np.ones(10)  # one call for a slice
    assert np.asarray(arr)[10:20].tolist() == [1.0] * 10
    with pytest.raises(TypeError, match="object dtype"):
        ray_ctx.share(np.array([object()]))
    with pytest.raises(ValueError):
        arr[0:3] = np.ones(4)  # the owner's numpy error, raised here
    zeros = ray_ctx.SharedArray((2, 3), dtype=np.int32)
    assert zeros.shape == (2, 3) and zeros.dtype == np.int32 and not zeros.view().any()


def test_ray_share_starts_no_process_and_its_copies_go_with_its_last_handle(
    ray_ctx: Any,
) -> None:
    np = pytest.importorskip("numpy")
    from shoal import _ray_objects as ro

    def held(arr: Any) -> list[int]:
        return list(ro._get(arr._actor.held.remote()))

    kept, arr = ray_ctx.share(np.zeros(8)), ray_ctx.share(np.arange(8.0))
    assert arr._actor == kept._actor  # one host serves the process's arrays
    assert arr._id not in held(arr)  # never written: the host holds nothing of it
    with ray_ctx.Pool(1) as pool:
        pool.starmap(t.write_shared, [(arr, 0, 5.0)])  # the host's copy, from a task
        assert pool.apply(t.add_under_lock, (arr, 1, 3)) > 0  # and a lock of its own
    assert arr[:2].tolist() == [5.0, 4.0] and arr._id in held(arr)
    # on the host's node, reads learn of writes from its counters (four writes:
    # reads without one since take no call); from another node, each read asks
    assert arr._counts.read(arr._id) == 4
    elsewhere = ro._rebuild(
        type(arr), (arr._actor, arr._id, arr._ref, ro._WriteCounts("other", arr._counts.name))
    )
    assert elsewhere._counts.read(arr._id) is None
    assert elsewhere[:2].tolist() == [5.0, 4.0]
    elsewhere[2] = 9.0
    assert arr._counts.read(arr._id) == 5 and arr[2] == 9.0
    del elsewhere
    box = ray_ctx.SharedDict()
    box["arr"] = arr  # a handle held elsewhere (in an actor) keeps the array
    array_id, key, host = arr._id, arr._ref.hex().encode(), arr._actor
    del arr
    gc.collect()
    ro._forget_gone()
    assert array_id in ro._get(host.held.remote())
    assert box["arr"][:2].tolist() == [5.0, 4.0]
    del box["arr"]
    gc.collect()
    deadline = time.monotonic() + 30  # (Ray frees a borrowed reference shortly after)
    while key in ro._reference_counts():
        assert time.monotonic() < deadline, "the array's reference was never freed"
        time.sleep(0.05)
    ro._forget_gone()
    while array_id in ro._get(host.held.remote()):  # (forget is sent, not awaited)
        assert time.monotonic() < deadline, "the host kept the copy of a freed array"
        time.sleep(0.05)
    # the other array is still watched, and still there
    assert (kept._actor, kept._id) in ro._made.values() and kept[:].sum() == 0


def test_ray_objects_in_a_forked_child_raise_instead_of_hanging(ray_ctx: Any) -> None:
    # Ray's connection does not survive fork(): a local Process (forked) given a
    # cluster queue waited for ever (tutorial program 3 under SHOAL_CONTEXT=ray)
    q = ray_ctx.Queue()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what each call did, and leave at once
        outcome = []
        for call in (q.empty, lambda: q.put(1), ray_ctx.Lock):
            try:
                call()
                outcome.append("returned")
            except RuntimeError as error:
                outcome.append("forked" if "forked" in str(error) else str(error))
        os.write(write, ",".join(outcome).encode())
        os._exit(0)
    os.close(write)
    ended = False
    try:
        deadline = time.monotonic() + TIMEOUT
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, "the forked child hung"
            time.sleep(0.05)
        ended = True
        assert os.read(read, 1000).decode() == "forked,forked,forked"
    finally:
        os.close(read)
        if not ended:  # (the child this test forked, by its pid)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    q.put("still fine here")
    assert q.get(timeout=TIMEOUT) == "still fine here"


# ---- the Ray pool: what only it has ----------------------------------------------------


def test_ray_initializer_defined_in_main_sets_globals_tasks_see(ray_cluster: str) -> None:
    # Ray's own Pool fails this (distributed.md): cloudpickle ships __main__'s functions
    # by value, each with its own copy of the globals
    out = run_script(
        f"""
        import shoal
        STATE = None

        def init(value):
            global STATE
            STATE = value

        def read(_):
            return STATE

        ctx = shoal.get_context("ray", address={ray_cluster!r})
        with ctx.Pool(2, initializer=init, initargs=("set",)) as pool:
            print(set(pool.map(read, range(6), chunksize=1)), pool.apply(read, (0,)))
        """
    )
    assert out.split() == ["{'set'}", "set"]


def test_ray_a_broken_initializer_breaks_the_pool(ray_ctx: Any) -> None:
    with ray_ctx.Pool(1, initializer=t.failing_initializer) as pool:
        with pytest.raises(shoal.BrokenPoolError) as info:
            pool.apply(t.square, (2,))
        assert info.value.__cause__ is not None
        with pytest.raises(shoal.BrokenPoolError):
            pool.apply_async(t.square, (2,))


def test_ray_pool_pickles_not(ray_ctx: Any) -> None:
    import pickle

    with ray_ctx.Pool(1) as pool, pytest.raises(NotImplementedError):
        pickle.dumps(pool)


# ---- the executor ----------------------------------------------------------------------


def test_executor_submit_map_and_shutdown(context: Any) -> None:
    with context.Executor(2) as ex:
        assert ex.submit(t.add, 1, b=2).result(TIMEOUT) == 3
        assert list(ex.map(t.square, range(10), chunksize=3)) == [x * x for x in range(10)]
        assert list(ex.map(t.add, [1, 2], [10, 20])) == [11, 22]
        bad = ex.submit(t.fail, "nope")
        with pytest.raises(ValueError, match="nope"):
            bad.result(TIMEOUT)
        dead = ex.submit(os._exit, 3)
        with pytest.raises(shoal.WorkerDiedError):
            dead.result(TIMEOUT)
        assert ex.submit(t.square, 5).result(TIMEOUT) == 25
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(t.square, 1)


def test_executor_shutdown_cancels_futures_not_started(context: Any) -> None:
    ex = context.Executor(1)
    first = ex.submit(t.sleep_then, 1.0, "first")
    rest = [ex.submit(t.square, i) for i in range(20)]
    time.sleep(0.3)
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result(TIMEOUT) == "first"
    assert any(f.cancelled() for f in rest)
    assert all(f.done() for f in rest)


# ---- the primitives on Ray: one actor each, pickling as handles ---------------------------


def produce(q: Any, n: int) -> int:
    for i in range(n):
        q.put(i)
    q.flush()
    return n


def consume(q: Any, n: int) -> int:
    return sum(q.get(timeout=TIMEOUT) for _ in range(n))


def bump(lock: Any, d: Any, v: Any, times: int) -> int:
    for _ in range(times):
        with lock:
            d["count"] = d.get("count", 0) + 1  # a read-modify-write the lock guards
        v.add(1)
    return times


def hold_and_die(lock: Any) -> None:
    lock.acquire()
    os.kill(os.getpid(), 9)


def test_ray_queue_between_a_producer_and_a_consumer_task(ray_ctx: Any) -> None:
    q = ray_ctx.Queue()
    with ray_ctx.Pool(2) as pool:
        consumer = pool.apply_async(consume, (q, 2000))
        producer = pool.apply_async(produce, (q, 2000))
        assert producer.get(TIMEOUT) == 2000
        assert consumer.get(TIMEOUT) == sum(range(2000))
    import queue

    for i in range(5):
        q.put(i)
    assert [q.get(timeout=TIMEOUT) for _ in range(5)] == list(range(5))  # FIFO
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    assert q.put_many(["a", "b", "c"]) == 3
    assert q.qsize() == 3 and not q.empty()
    assert q.get_many(10, timeout=TIMEOUT) == ["a", "b", "c"]


def test_ray_joinable_queue_and_a_bounded_one(ray_ctx: Any) -> None:
    import queue

    q = ray_ctx.JoinableQueue()
    q.put(1)
    q.flush()
    assert not q.join(timeout=0.1)
    assert q.get(timeout=TIMEOUT) == 1
    q.task_done()
    assert q.join(timeout=TIMEOUT)
    with pytest.raises(ValueError, match="too many"):
        q.task_done()
    small = ray_ctx.Queue(2)
    with pytest.raises(queue.Full) as full:  # the rest did not fit in time
        small.put_many(range(5), timeout=0.2)
    assert full.value.items_put == 2  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        ray_ctx.Queue(prefetch=0)


def far_produce(q: Any, n: int) -> int:
    return produce(q._through_host(), n)


def far_get(q: Any, pids: Any) -> Any:
    pids.put(os.getpid())
    return q._through_host().get(timeout=TIMEOUT * 3)


def test_ray_queue_is_in_its_nodes_memory_and_other_nodes_go_through_the_host(
    ray_ctx: Any,
) -> None:
    import queue

    q = ray_ctx.JoinableQueue()
    assert type(q._here()).__name__ == "JoinableQueue"  # here: the shoal queue
    far = q._through_host()
    assert far._here() is False
    far.put("a")  # through this process's feeder, then the host
    far.flush()
    assert q.get(timeout=TIMEOUT) == "a" and q.qsize() == 0
    q.put_many([1, 2, 3])
    assert far.qsize() == 3 and not far.empty()
    assert far.get(timeout=TIMEOUT) == 1  # takes 2 and 3 ahead (prefetch)
    assert far.get_many(5, timeout=TIMEOUT) == [2, 3] and q.qsize() == 0
    with pytest.raises(queue.Empty):
        far.get(timeout=0.2)
    assert not q.join(timeout=0.1)  # four items put, none done
    for _ in range(4):
        far.task_done()
    assert q.join(timeout=TIMEOUT) and far.join(timeout=TIMEOUT)
    with pytest.raises(ValueError, match="too many"):
        far.task_done()
    with ray_ctx.Pool(2) as pool:  # a producer task as if on another node, a local consumer
        assert pool.apply(far_produce, (q, 500)) == 500
        assert [q.get(timeout=TIMEOUT) for _ in range(500)] == list(range(500))
    small = ray_ctx.Queue(2)
    far_small = small._through_host()
    with pytest.raises(queue.Full) as full:
        far_small.put_many(range(5), timeout=0.2)
    assert full.value.items_put == 2  # type: ignore[attr-defined]
    assert small.get_many(5, timeout=TIMEOUT) == [0, 1]
    # close() releases the handle (here or through the host), as a local queue's
    other = pickle.loads(pickle.dumps(q))
    for handle in (q, far):
        handle.close()
        handle.close()  # (again: nothing more)
        for call in (functools.partial(handle.put, 1), handle.get_nowait, handle.qsize):
            with pytest.raises(shoal.ClosedError):
                call()
        with pytest.raises(shoal.ClosedError):
            pickle.dumps(handle)
    other.put("still open")
    assert other.get(timeout=TIMEOUT) == "still open"


def use_what_came(q: Any) -> float:
    ref, lock, sem = q.get(timeout=TIMEOUT)
    with lock, sem:
        pass
    import ray

    return float(ray.get(ref).sum())


@pytest.mark.parametrize("where", ["here", "far"])
def test_items_carrying_ray_references_keep_them_alive_in_the_queue(
    ray_ctx: Any, where: str
) -> None:
    # (shoal pickles a queue's items out of Ray's sight: what a reference in one
    # refers to was freed while it waited, and the task's Lock was gone)
    import numpy as np
    import ray

    q = ray_ctx.Queue(prefetch=1)  # (a task's get from far would take "plain" ahead)
    putter = q if where == "here" else q._through_host()
    putter.put((ray.put(np.arange(100.0)), ray_ctx.Lock(), ray_ctx.Semaphore(1)))
    putter.put_many([(ray.put(np.ones(3)), ray_ctx.Lock(), ray_ctx.Semaphore(1)), "plain"])
    putter.flush()
    gc.collect()
    time.sleep(2.5)  # (the watcher has looked at what is left: twice)
    with ray_ctx.Pool(1) as pool:
        assert pool.apply(use_what_came, (q,)) == sum(range(100))
        assert pool.apply(use_what_came, (q._through_host(),)) == 3.0
    assert q.get(timeout=TIMEOUT) == "plain"
    from shoal import _ray_objects as ro

    assert ro._get(q._actor.__ray_call__.remote(lambda host: len(host.stashed))) == 0


def test_a_remote_getter_whose_process_died_takes_no_item(ray_ctx: Any) -> None:
    from shoal import _ray_objects as ro

    q, pids = ray_ctx.Queue(), ray_ctx.Queue()
    with ray_ctx.Pool(1) as pool:
        waiter = pool.apply_async(far_get, (q, pids))
        host, me = q._actor, ro._worker()

        def others_probes() -> list[bool]:
            return ro._get(
                host.__ray_call__.remote(
                    lambda h: [p[1].done() for w, p in h.probes.items() if w != me]
                )
            )

        deadline = time.monotonic() + TIMEOUT
        while not others_probes():  # the task is waiting in the host
            assert time.monotonic() < deadline, "the remote get never reached the host"
            time.sleep(0.05)
        # (a worker of the cluster this session started)
        os.kill(pids.get(timeout=TIMEOUT), signal.SIGKILL)
        with pytest.raises(shoal.WorkerDiedError):
            waiter.get(TIMEOUT)
        while not all(others_probes()):  # Ray failed its probe
            assert time.monotonic() < deadline, "the dead getter's probe never failed"
            time.sleep(0.05)
        time.sleep(ro._PROBE_EVERY * 2)  # (the host's wait for it ends within one look)
        q.put("kept")
        assert q.get(timeout=TIMEOUT) == "kept"


def test_ray_lock_contended_from_two_tasks_keeps_a_counter_exact(ray_ctx: Any) -> None:
    lock, d, v = ray_ctx.Lock(), ray_ctx.SharedDict(), ray_ctx.Value("i", 0)
    with ray_ctx.Pool(2) as pool:
        done = [pool.apply_async(bump, (lock, d, v, 100)) for _ in range(2)]
        assert [r.get(TIMEOUT * 2) for r in done] == [100, 100]
    assert d["count"] == 200 and v.value == 200


def test_ray_lock_owner_timeouts_and_errors(ray_ctx: Any) -> None:
    lock = ray_ctx.Lock()
    assert lock.acquire(timeout=TIMEOUT)
    start = time.monotonic()
    assert not lock.acquire(timeout=0.3)
    assert 0.25 < time.monotonic() - start < 10
    assert not lock.acquire(False)
    lock.release()
    with pytest.raises(shoal.NotHeldError, match="unlocked"):
        lock.release()
    with pytest.raises(TypeError):
        lock.acquire(timeout="1")
    rlock = ray_ctx.RLock()
    with rlock, rlock:
        pass
    with pytest.raises(shoal.NotHeldError):
        rlock.release()


def test_ray_lock_whose_owner_died_goes_to_the_next_with_owner_died(ray_ctx: Any) -> None:
    lock = ray_ctx.Lock()
    with ray_ctx.Pool(1) as pool, pytest.raises(shoal.WorkerDiedError):
        pool.apply(hold_and_die, (lock,))
    with pytest.warns(shoal.OwnerDiedWarning):
        assert lock.acquire(timeout=TIMEOUT)
    assert lock.owner_died
    lock.release()
    assert not lock.owner_died
    assert lock.acquire(timeout=TIMEOUT)  # an ordinary lock again
    lock.release()


def kind_of_lock_here(lock: Any) -> str:
    lock.acquire()
    lock.release()
    return type(lock._here()).__name__


def try_lock(lock: Any, timeout: float) -> bool:
    return bool(lock.acquire(timeout=timeout))


def notify_then_release(cond: Any) -> bool:
    with cond:
        cond.notify()
    return True


def test_ray_lock_is_in_its_nodes_memory_and_other_nodes_go_through_the_host(
    ray_ctx: Any,
) -> None:
    from shoal import _ray_objects as ro

    lock = ray_ctx.Lock()
    # here and in a task of this node: the shoal Lock in this node's shared memory
    assert type(lock._here()).__name__ == "Lock"
    with ray_ctx.Pool(1) as pool:
        assert pool.apply(kind_of_lock_here, (lock,)) == "Lock"
        # a handle that believes it is on another node: through the host
        far = lock._through_host()
        assert far._here() is False
        assert far.acquire(timeout=TIMEOUT) and far._is_owned() and not lock._is_owned()
        assert not lock.acquire(timeout=0.1)  # one lock, wherever it is taken
        assert not pool.apply(try_lock, (far, 0.3))  # (a remote waiter times out)
        far.release()
        assert pool.apply(try_lock, (far, TIMEOUT))  # taken remotely by the task ...
        assert not lock.acquire(False)
        lock.release()  # ... and released here (any process may, as the local Lock)
        with pytest.raises(shoal.NotHeldError, match="unlocked"):
            far.release()
        # a holder on another node dies: the next, here, is told
        with pytest.raises(shoal.WorkerDiedError):
            pool.apply(hold_and_die, (far,))
        with pytest.warns(shoal.OwnerDiedWarning):
            assert lock.acquire(timeout=TIMEOUT)
        assert lock.owner_died
        lock.release()
        assert not lock.owner_died
        # a Condition on it: the waiters are kept by this process's host
        cond = ray_ctx.Condition(lock)
        with cond:
            notified = pool.apply_async(notify_then_release, (cond,))
            assert cond.wait(TIMEOUT)
        assert notified.get(TIMEOUT)
        with pytest.raises(shoal.NotHeldError):
            cond.notify()
    # its last handle gone, the host drops it
    host, number, key = lock._actor, lock._number, lock._ref.hex().encode()
    assert number in ro._get(host.held.remote())
    del lock, far, cond
    gc.collect()
    deadline = time.monotonic() + 30
    while key in ro._reference_counts():
        assert time.monotonic() < deadline, "the lock's reference was never freed"
        time.sleep(0.05)
    ro._forget_gone()
    while number in ro._get(host.held.remote()):
        assert time.monotonic() < deadline, "the host kept a lock nobody can use"
        time.sleep(0.05)


def test_ray_objects_just_made_are_not_taken_for_gone(ray_ctx: Any) -> None:
    # the watcher looks at Ray's reference table while objects are being made: one
    # watched after the table was read is no less alive (it was dropped by its host)
    from shoal import _ray_objects as ro

    stop = threading.Event()

    def watch_without_pause() -> None:
        while not stop.is_set():
            ro._forget_gone()

    watcher = threading.Thread(target=watch_without_pause)
    watcher.start()
    try:
        locks = [ray_ctx.Lock() for _ in range(150)]
    finally:
        stop.set()
        watcher.join()
    watched = {key for key, _ in ro._made.items()}
    assert [lock._number for lock in locks if lock._ref.hex().encode() not in watched] == []
    # a handle's first call to the host may overtake its maker's keep (an async
    # actor runs calls in no fixed order; seen as a held() before it): it serves
    host, number, _counts = ro._host()
    blob = pickle.dumps(shoal.Lock())
    owner = ro._owner()
    assert ro._get(host.lock_acquire.remote(number, blob, owner, 1.0, os.getpid()))[0]
    assert ro._get(host.lock_state.remote(number, blob, owner)) == (True, False)
    ro._get(host.lock_release.remote(number, blob, owner))
    ro._get(host.forget.remote([number]))


def take_and_give(sem: Any) -> int:
    with sem:
        return os.getpid()


def test_a_process_probes_an_actor_once_however_many_handles_it_unpickled(
    ray_ctx: Any,
) -> None:
    # (each probe is a call the actor keeps pending: one per handle would use up its
    # calls, and it would stop answering)
    from shoal import _ray_objects as ro

    sem = ray_ctx.Semaphore(1)
    with ray_ctx.Pool(2) as pool:
        pids = {pool.apply(take_and_give, (sem,)) for _ in range(40)}
    handles = [pickle.loads(pickle.dumps(sem)) for _ in range(20)]
    for handle in handles:
        with handle:
            pass
    assert ro._get(sem._actor.pending_probes.remote()) <= len(pids) + 1


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # (signal 0: only asks whether it exists)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("kind", ["Semaphore", "RLock", "Barrier"])
def test_a_ray_object_used_then_dropped_ends_its_actor(ray_ctx: Any, kind: str) -> None:
    # (a process's probe is a pending call on the actor, and Ray keeps an actor with
    # a pending call alive whether handles are left or not: each process ends its
    # own with its last handle)
    obj = ray_ctx.Barrier(1) if kind == "Barrier" else getattr(ray_ctx, kind)()
    use = (lambda o: o.wait()) if kind == "Barrier" else take_and_give
    use(obj)
    copy = pickle.loads(pickle.dumps(obj))  # a second handle in this process
    use(copy)
    with ray_ctx.Pool(2) as pool:
        pool.map(use, [obj] * 4)
    from shoal import _ray_objects as ro

    pid = ro._get(obj._actor.__ray_call__.remote(lambda actor: os.getpid()))
    del obj, copy
    gc.collect()
    deadline = time.monotonic() + 30
    while _process_alive(pid):
        assert time.monotonic() < deadline, f"the {kind}'s actor outlived its handles"
        time.sleep(0.2)


def take_and_keep(sem: Any) -> int:
    sem.acquire()
    return os.getpid()


def test_a_unit_kept_by_a_process_that_dropped_its_handle_comes_back_when_it_dies(
    ray_ctx: Any,
) -> None:
    # (the task's handle goes with its arguments when it ends: the process stays
    # watched, as it holds a unit, and its death gives the unit back)
    sem = ray_ctx.Semaphore(1)
    with ray_ctx.Pool(1) as pool:
        pid = pool.apply(take_and_keep, (sem,))
        time.sleep(2)  # (its handle's finalizer and the actor's unhold have run)
        assert not sem.acquire(timeout=0.1)
        os.kill(pid, signal.SIGKILL)  # a worker of the cluster this session started
        with pytest.warns(shoal.OwnerDiedWarning):
            assert sem.acquire(timeout=TIMEOUT)
    sem.release()


def test_ray_semaphores(ray_ctx: Any) -> None:
    sem = ray_ctx.Semaphore(2)
    assert sem.acquire() and sem.acquire(timeout=1)
    assert not sem.acquire(timeout=0.1)
    assert sem.get_value() == 0
    sem.release()
    sem.release()
    sem.release()  # a plain semaphore may go above its start
    assert sem.get_value() == 3
    bounded = ray_ctx.BoundedSemaphore(1)
    with bounded:
        pass
    with pytest.raises(ValueError, match="too many"):
        bounded.release()
    with pytest.raises(ValueError):
        ray_ctx.Semaphore(-1)


def test_ray_event(ray_ctx: Any) -> None:
    event = ray_ctx.Event()
    assert not event.is_set() and not event.wait(0.1)
    with ray_ctx.Pool(1) as pool:
        waiter = pool.apply_async(event.wait, (TIMEOUT,))
        time.sleep(0.2)
        event.set()
        assert waiter.get(TIMEOUT) is True
    assert event.is_set()
    event.clear()
    assert not event.is_set()


def test_ray_shared_dict_and_value_atomic_operations(ray_ctx: Any) -> None:
    d = ray_ctx.SharedDict({"a": 1}, b=2)
    assert d["a"] == 1 and len(d) == 2 and "b" in d and sorted(d) == ["a", "b"]
    assert d.incr("n") == 1 and d.incr("n", 5) == 6
    assert d.get_or_set("z", 3) == 3 and d.get_or_set("z", 4) == 3
    assert d.compare_exchange("z", 3, 9) and not d.compare_exchange("z", 3, 10)
    assert d.batch([("incr", ("n", 1, 0)), ("get", ("missing", "dflt"))]) == [7, "dflt"]
    del d["a"]
    with pytest.raises(KeyError):
        d["a"]
    assert d.pop("b") == 2 and d.pop("b", None) is None
    d.update({"x": 1}, y=2)
    assert dict(d.items()) == {"n": 7, "z": 9, "x": 1, "y": 2}
    with ray_ctx.Pool(1) as pool:  # pickles as a handle: the task sees the same dict
        pool.apply(d.__setitem__, ("from task", True))
    assert d["from task"] is True
    v = ray_ctx.Value("d", 1.5)
    assert v.value == 1.5 and v.add(1) == 2.5
    assert v.compare_exchange(2.5, 0.0) and not v.compare_exchange(2.5, 1.0)
    with v.get_lock():
        v.value = v.value + 1
    assert v.value == 1.0


def wait_at(barrier: Any) -> int:
    return barrier.wait(TIMEOUT)


def wait_then_die(barrier: Any) -> None:
    import threading

    def kill_once_waiting() -> None:
        # (once this party is waiting: a fixed delay lost the race on a loaded machine,
        # the worker dying before it arrived, and the barrier then had nobody to break)
        while barrier.n_waiting < 1:
            time.sleep(0.05)
        os.kill(os.getpid(), 9)

    threading.Thread(target=kill_once_waiting, daemon=True).start()
    barrier.wait(TIMEOUT)


def notify_when_set(cond: Any, d: Any) -> bool:
    with cond:
        d["ready"] = True
        cond.notify_all()
    return True


def test_ray_condition(ray_ctx: Any) -> None:
    cond, d = ray_ctx.Condition(), ray_ctx.SharedDict()
    with cond:
        assert not cond.wait(0.1)  # nobody notifies: a timeout
    with ray_ctx.Pool(1) as pool:
        with cond:
            notifier = pool.apply_async(notify_when_set, (cond, d))
            assert cond.wait_for(lambda: d.get("ready"), timeout=TIMEOUT)
        assert notifier.get(TIMEOUT)
    with pytest.raises(shoal.NotHeldError):
        cond.notify()
    on_lock = ray_ctx.Condition(ray_ctx.Lock())
    with on_lock:
        on_lock.notify()
    with pytest.raises(TypeError):
        ray_ctx.Condition(shoal.get_context("fork").Lock())


def test_ray_barrier(ray_ctx: Any) -> None:
    import threading

    barrier = ray_ctx.Barrier(3)
    assert barrier.parties == 3 and not barrier.broken
    with ray_ctx.Pool(2) as pool:
        others = [pool.apply_async(wait_at, (barrier,)) for _ in range(2)]
        mine = barrier.wait(TIMEOUT)
        assert sorted([mine] + [r.get(TIMEOUT) for r in others]) == [0, 1, 2]
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(0.2)  # alone: times out, and breaks it
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken


def test_ray_barrier_action_runs_once_a_cycle_in_the_last_party(ray_ctx: Any) -> None:
    seen = ray_ctx.SharedDict()
    barrier = ray_ctx.Barrier(3, action=functools.partial(seen.incr, "cycles"))
    with ray_ctx.Pool(2) as pool:
        for _ in range(2):
            others = [pool.apply_async(wait_at, (barrier,)) for _ in range(2)]
            mine = barrier.wait(TIMEOUT)
            assert sorted([mine] + [r.get(TIMEOUT) for r in others]) == [0, 1, 2]
    # one action a cycle, wherever the last party was (the handle carries it)
    assert seen["cycles"] == 2
    # an action that raises breaks the barrier; its exception is the last party's
    failing = ray_ctx.Barrier(1, action=functools.partial(t.fail, "in the action"))
    with pytest.raises(ValueError, match="in the action"):
        failing.wait(TIMEOUT)
    assert failing.broken
    with pytest.raises(TypeError, match="callable"):
        ray_ctx.Barrier(2, action=3)


def test_ray_barrier_breaks_when_a_waiting_party_dies(ray_ctx: Any) -> None:
    barrier = ray_ctx.Barrier(2)
    with ray_ctx.Pool(2) as pool:
        doomed = pool.apply_async(wait_then_die, (barrier,))
        with pytest.raises(shoal.WorkerDiedError):
            doomed.get(TIMEOUT)
        # the dead party's wait notices its own death (within 0.5 s): broken
        deadline = time.monotonic() + TIMEOUT
        while not barrier.broken and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(shoal.BarrierPartyDiedError):
            barrier.wait(TIMEOUT)
    barrier.reset()
    assert not barrier.broken


# ---- two nodes -------------------------------------------------------------------------


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_ray_two_node_cluster(request: pytest.FixtureRequest) -> None:
    """A two-node local cluster (ray.cluster_utils, its own process, its own temporary
    directory): a queue from a producer on node 1 to a consumer on node 2, a lock
    contended from both (the counter ends exact), a shared array read on both (and a
    write from node 2 read on node 1), and a task pinned to node 2 whose worker is
    SIGKILLed (only it fails, WorkerDiedError)."""
    pytest.importorskip("ray", reason="Ray is not installed for this Python (shoal[ray])")
    script = os.path.join(ROOT, "tests", "ray_two_nodes.py")
    result = subprocess.run(
        [sys.executable, script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests")},
    )
    # (the raylet's own messages reach the driver's stdout too)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("ok ", "temp "))]
    assert result.returncode == 0, (lines, result.stderr[-3000:])
    assert lines[1:] == [
        "ok queue across nodes",
        "ok lock across nodes",
        "ok array on both nodes",
        "ok worker killed on node 2",
    ]
    assert_cluster_stopped(lines[0].split()[1])


def assert_cluster_stopped(temp: str) -> None:
    """Every process of a cluster ran with its temporary directory in its command line:
    none is left (a few seconds' grace for the raylets' own exit)."""
    deadline = time.monotonic() + 15
    while processes_mentioning(temp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(temp), "the two-node cluster left processes running"
    # (what the exiting Ray processes wrote after the script removed it)
    import shutil

    shutil.rmtree(temp, ignore_errors=True)


def test_ray_cluster_demo_runs_to_the_end() -> None:
    """``python -m shoal demo --cluster`` starts its two-node cluster, shows the
    tutorial's tasks on both nodes, the queue across them and the exact counter, and
    stops every process of it."""
    pytest.importorskip("ray", reason="Ray is not installed for this Python (shoal[ray])")
    result = subprocess.run(
        [sys.executable, "-m", "shoal", "demo", "--cluster"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    out = result.stdout
    assert "on node 1" in out and "on node 2" in out, out
    assert "the reader got ['A', 'B', 'C'] on node 2" in out, out
    assert "the counter is 100" in out, out
    assert out.rstrip().endswith("the cluster is stopped and its directory removed."), out
    temp = out.split("(its files in ", 1)[1].split(")", 1)[0]
    assert_cluster_stopped(temp)


def test_ray_cluster_demo_without_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without Ray the cluster demo names the extra to install and exits 2."""
    import importlib.util

    from shoal import __main__ as cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    assert cli.main(["demo", "--cluster"]) == 2
    assert "pip install 'shoal[ray]'" in capsys.readouterr().out
