"""asyncio and the pool, and cancelling a running task (issue #14, points 2 and 4).

* awaitable results: ``await pool.apply_async(...)``, ``await pool.map_async(...)``,
  ``get_async``/``wait_async`` timeouts (the task goes on), ``async for`` over ``imap``
  and ``imap_unordered``, no thread per awaiting result (the thread count is asserted);
  Executor futures with ``await``, ``asyncio.wrap_future``, ``gather``,
  ``as_completed`` and ``run_in_executor``;
* cancelling: ``AsyncResult.cancel()``, ``MapResult.cancel()`` and ``Future.cancel()``
  of a task a worker runs (``TaskCancelledError``/``CancelledError``, the worker pid
  replaced, the other tasks' results right, the pool going on, nothing left in
  /dev/shm: conftest's leak check after every test), of a queued task (never runs),
  of a finished one (False); cancelling the asyncio task that awaits a result, and
  ``asyncio.wait_for``/``asyncio.timeout`` on one, cancels the pool task;
  ``uninterruptible()`` defers the kill of a cancel and of a timeout to the end of its
  block; a lock a cancelled task held goes to the next acquirer with ``owner_died``.

Every test is bounded: each wait has a timeout (``T``), coroutines run under
``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pool_tasks as t
import pytest
from conftest import in_thread, wait_until

import shoal
from shoal import _aio
from shoal.testing import worker_pids

T = 30.0  # a bound no passing test comes near


@pytest.fixture(autouse=True)
def fresh_hub() -> Iterator[None]:
    """A test that awaits a queue stops the hub it made (no thread left)."""
    yield
    _aio._stop_hub()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T))


def replaced(pool: Any, pid: int, workers: int) -> bool:
    """Whether worker ``pid`` is gone and ``workers`` workers have started."""

    def done() -> bool:
        pids = worker_pids(pool)
        return pid not in pids and len(pids) == workers

    return wait_until(done, timeout=T)


def started_pid(q: shoal.Queue[int]) -> int:
    """The pid a task announced on ``q`` as it started."""
    return q.get(timeout=T)


# ---- awaitable results ------------------------------------------------------------------


def test_await_apply_async_and_map_async_without_a_thread_per_result() -> None:
    with shoal.Pool(2) as pool:
        pool.map(t.square, range(4))  # (workers started)

        async def main() -> tuple[list[int], list[list[int]], int, int]:
            before = threading.active_count()
            gate = shoal.Event()
            try:
                waiting = [pool.apply_async(t.wait_for, (gate, i)) for i in range(200)]
                maps = [pool.map_async(t.square, range(i, i + 5)) for i in range(3)]
                tasks = [asyncio.ensure_future(r) for r in waiting]
                await asyncio.sleep(0.1)
                during = threading.active_count()  # 200 results awaited
                gate.set()
                return await asyncio.gather(*tasks), await asyncio.gather(*maps), before, during
            finally:
                gate.set()
                gate.close()

        values, lists, before, during = run(main())
        assert values == list(range(200))
        assert lists == [[x * x for x in range(i, i + 5)] for i in range(3)]
        assert during == before  # no thread per await
        with pytest.raises(ValueError, match="boom"):
            run(_await(pool.apply_async(t.fail, ("boom",))))
        assert run(_await(pool.map_async(t.square, []))) == []


async def _await(awaitable: Any) -> Any:
    return await awaitable


def test_get_async_and_wait_async_time_out_and_the_task_goes_on() -> None:
    with shoal.Pool(1) as pool:
        r = pool.apply_async(t.sleep_then, (0.5, "late"))

        async def main() -> str:
            with pytest.raises(multiprocessing.TimeoutError):
                await r.get_async(timeout=0.05)
            await r.wait_async(timeout=0.01)
            assert not r.ready()
            await r.wait_async(timeout=T)
            assert r.ready()
            return await r.get_async(timeout=0)

        assert run(main()) == "late"


@pytest.mark.parametrize("ordered", [True, False])
def test_async_for_over_imap(ordered: bool) -> None:
    with shoal.Pool(2) as pool:

        async def collect(it: Any) -> list[int]:
            return [x async for x in it]

        imap = pool.imap if ordered else pool.imap_unordered
        got = run(collect(imap(t.square_slowly_first, range(8))))
        if ordered:
            assert got == [x * x for x in range(8)]
        else:
            assert sorted(got) == [x * x for x in range(8)] and got[-1] == 0
        assert run(collect(pool.imap(t.square, iter(range(50)), chunksize=4))) == [
            x * x for x in range(50)
        ]

        async def until_error() -> tuple[list[int], str]:
            out: list[int] = []
            it = pool.imap(t.fail_on, range(6), chunksize=1)
            with pytest.raises(ValueError) as info:
                async for x in it:
                    out.append(x)
            rest = [x async for x in it]  # the iterator goes on after a failed item
            return out + rest, str(info.value)

        values, message = run(until_error())
        assert values == [0, 1, 4, 16, 25] and message == "bad item 3"

        async def times_out() -> None:
            it = pool.imap(t.sleep_then, [0.5])
            with pytest.raises(multiprocessing.TimeoutError):
                await it.next_async(timeout=0.05)
            assert await it.next_async(timeout=T) == 0.5
            with pytest.raises(StopAsyncIteration):
                await it.next_async()

        run(times_out())


def test_executor_futures_with_asyncio() -> None:
    with shoal.Executor(2) as executor:

        async def main() -> None:
            assert await executor.submit(t.square, 5) == 25
            wrapped = [asyncio.wrap_future(executor.submit(t.square, i)) for i in range(6)]
            assert await asyncio.gather(*wrapped) == [i * i for i in range(6)]
            futures = [executor.submit(t.sleep_then, s, s) for s in (0.3, 0.01)]
            order = [await f for f in asyncio.as_completed(futures)]
            assert order == [0.01, 0.3]
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(executor, t.add, 2, 3) == 5
            with pytest.raises(ValueError, match="nope"):
                await executor.submit(t.fail, "nope")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(executor.submit(t.sleep_then, 30)), 0.1)

        run(main())


# ---- cancelling a running task ----------------------------------------------------------


def test_cancel_a_running_apply_async(ctx: Any) -> None:
    started: shoal.Queue[int] = shoal.Queue()
    errors: list[BaseException] = []
    try:
        with shoal.Pool(2, context=ctx) as pool:
            before = pool.apply_async(t.square, (3,))
            running = pool.apply_async(
                t.announce_then_sleep, (started, 60, "never"), error_callback=errors.append
            )
            victim = started_pid(started)
            others = [pool.apply_async(t.square, (i,)) for i in range(10)]
            assert running.cancel()
            assert running.ready() and not running.successful()
            with pytest.raises(shoal.TaskCancelledError) as info:
                running.get(T)
            assert isinstance(info.value, concurrent.futures.CancelledError)
            assert "announce_then_sleep" in str(info.value) and info.value.task
            assert errors == [info.value]
            assert not running.cancel()  # once is enough
            assert replaced(pool, victim, 2)
            assert before.get(T) == 9 and [r.get(T) for r in others] == [i * i for i in range(10)]
            assert pool.map(t.square, range(20)) == [i * i for i in range(20)]
            pool.close()
            pool.join()  # (a cancelled result is collected: no warning)
    finally:
        started.close()


def test_cancel_a_running_future(ctx: Any) -> None:
    started: shoal.Queue[int] = shoal.Queue()
    called: list[Any] = []
    try:
        with shoal.Executor(2, mp_context=ctx) as executor:
            future = executor.submit(t.announce_then_sleep, started, 60, "never")
            future.add_done_callback(called.append)
            victim = started_pid(started)
            assert future.running()
            others = [executor.submit(t.square, i) for i in range(10)]
            assert future.cancel() and future.cancelled() and future.done()
            assert called == [future]
            with pytest.raises(concurrent.futures.CancelledError):
                future.result(T)
            done = list(concurrent.futures.as_completed([future, *others], timeout=T))
            assert future in done and len(done) == 11
            assert future.cancel()  # (cancelled stays cancelled)
            assert replaced(executor, victim, 2)
            assert [f.result(T) for f in others] == [i * i for i in range(10)]
            assert executor.submit(t.square, 12).result(T) == 144
    finally:
        started.close()


def test_cancel_a_queued_task_it_never_runs() -> None:
    runs = shoal.RawArray("q", 3)
    gate = shoal.Event()
    try:
        with shoal.Pool(1, initializer=t.set_state, initargs=("runs", runs)) as pool:
            busy = pool.apply_async(t.wait_for, (gate, "done"))
            queued = pool.apply_async(t.count_run, (0,))
            kept = pool.apply_async(t.count_run, (1,))
            pid = worker_pids(pool, started=False)[0]
            assert queued.cancel()
            with pytest.raises(shoal.TaskCancelledError):
                queued.get(T)
            gate.set()
            assert busy.get(T) == "done" and kept.get(T) == 1
            assert pool.apply_async(t.count_run, (2,)).get(T) == 2
            assert list(runs) == [0, 1, 1]
            assert worker_pids(pool, started=False) == [pid]  # nothing was killed
    finally:
        runs.close()
        gate.close()


def test_cancel_a_finished_task_returns_false() -> None:
    with shoal.Pool(1) as pool:
        r = pool.apply_async(t.square, (4,))
        m = pool.map_async(t.square, range(4))
        assert r.get(T) == 16 and m.get(T) == [0, 1, 4, 9]
        assert not r.cancel() and not m.cancel()
        assert r.get(T) == 16 and m.get(T) == [0, 1, 4, 9]
        failed = pool.apply_async(t.fail)
        failed.wait(T)
        assert not failed.cancel()
        with pytest.raises(ValueError):
            failed.get(T)
    with shoal.Executor(1) as executor:
        f = executor.submit(t.square, 4)
        assert f.result(T) == 16
        assert not f.cancel() and not f.cancelled()


def test_cancel_a_map_as_a_whole() -> None:
    runs = shoal.RawArray("q", 20)
    try:
        with shoal.Pool(2, initializer=t.set_state, initargs=("runs", runs)) as pool:
            pids = set(worker_pids(pool))
            m = pool.map_async(t.count_then_sleep, range(20), chunksize=1)
            assert wait_until(lambda: sum(runs) == 2, timeout=T)  # two run, the rest wait
            assert m.cancel()
            with pytest.raises(shoal.TaskCancelledError, match="count_then_sleep over 20"):
                m.get(T)
            # both running items' workers were replaced; the queued items never run
            assert wait_until(lambda: not pids & set(worker_pids(pool)), timeout=T)
            assert wait_until(lambda: len(worker_pids(pool)) == 2, timeout=T)
            assert pool.map(t.square, range(10)) == [i * i for i in range(10)]
            assert sum(runs) == 2
    finally:
        runs.close()


def test_cancel_a_map_bigger_than_the_ring() -> None:
    # chunks in the ring are marked, those still waiting in the parent for room are
    # never sent; all are counted out (join() returns) and nothing is reported
    n = 3000
    runs = shoal.RawArray("q", n)
    gate = shoal.Event()
    try:
        pool = shoal.Pool(1, initializer=t.set_state, initargs=("runs", runs))
        try:
            busy = pool.apply_async(t.wait_for, (gate, "done"))
            items = [(i, b"x" * 200) for i in range(n)]  # (~1 MB of records: 256 KiB fit)
            m = pool.starmap_async(t.count_run, items, chunksize=1)
            assert pool._engine._overflow  # some wait in the parent
            assert m.cancel()
            gate.set()
            assert busy.get(T) == "done"
            pool.close()
            joined, _ = in_thread(pool.join)
            joined.join(T)
            assert not joined.is_alive()
            assert sum(runs) == 0
        finally:
            pool.terminate()
    finally:
        runs.close()
        gate.close()


def test_cancelling_the_awaiting_task_cancels_the_pool_task() -> None:
    started: shoal.Queue[int] = shoal.Queue()
    try:
        with shoal.Pool(1) as pool:
            r = pool.apply_async(t.announce_then_sleep, (started, 60))

            async def main() -> int:
                pid = await started.get_async(timeout=T)
                task = asyncio.ensure_future(r)
                await asyncio.sleep(0)  # (the task's first step: it awaits the result)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                return pid

            victim = run(main())
            assert r.ready()
            with pytest.raises(shoal.TaskCancelledError):
                r.get(0)
            assert replaced(pool, victim, 1)
            assert pool.apply(t.square, (6,)) == 36
    finally:
        started.close()


def test_asyncio_timeouts_cancel_the_pool_task() -> None:
    started: shoal.Queue[int] = shoal.Queue()
    try:
        with shoal.Pool(1) as pool:

            async def main() -> None:
                r = pool.apply_async(t.announce_then_sleep, (started, 60))
                victim = await started.get_async(timeout=T)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(r, 0.1)
                assert r.ready()
                assert await asyncio.to_thread(replaced, pool, victim, 1)
                if sys.version_info >= (3, 11):
                    r = pool.apply_async(t.announce_then_sleep, (started, 60))
                    victim = await started.get_async(timeout=T)
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await r.get_async()
                    assert r.ready()
                    assert await asyncio.to_thread(replaced, pool, victim, 1)
                # shield: the task goes on
                r = pool.apply_async(t.sleep_then, (0.3, "kept"))
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(r), 0.05)
                assert await r == "kept"

            run(main())
        # (not in the Pool's with block: a worker it replaced after the Executor was made
        # would hold the Executor's rings when terminate() kills it, for the next sweep)
        with shoal.Executor(1) as executor:

            async def through_wrap_future() -> None:
                f = executor.submit(t.announce_then_sleep, started, 60)
                victim = await started.get_async(timeout=T)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.wrap_future(f), 0.1)
                assert f.cancelled()
                assert await asyncio.to_thread(replaced, executor, victim, 1)

            run(through_wrap_future())
    finally:
        started.close()


# ---- uninterruptible() --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_uninterruptible_defers_the_kill_to_the_end_of_its_block(how: str, ctx: Any) -> None:
    started: shoal.Queue[int] = shoal.Queue()
    flags = shoal.RawArray("q", 2)
    try:
        with shoal.Pool(1, context=ctx) as pool:
            timeout = 0.1 if how == "timeout" else None
            r = pool.apply_async(t.guarded_then_sleep, (started, flags, 0.6, 60), timeout=timeout)
            victim = started_pid(started)
            if how == "cancel":
                assert r.cancel()
                with pytest.raises(shoal.TaskCancelledError):
                    r.get(0)  # settled at once; the worker finishes its block first
                time.sleep(0.3)
                assert worker_pids(pool) == [victim] and list(flags) == [0, 0]
            else:
                with pytest.raises(shoal.TaskTimeoutError):
                    r.get(T)
            # killed as the block ended: its last step done, nothing after it
            assert replaced(pool, victim, 1)
            assert list(flags) == [1, 0]
            assert pool.apply(t.square, (5,)) == 25
    finally:
        started.close()
        flags.close()


def test_uninterruptible_outside_a_worker_does_nothing() -> None:
    guard = shoal.uninterruptible()
    with guard, guard, pytest.raises(ValueError, match="through"):  # nests; raises through
        raise ValueError("through")

    @shoal.uninterruptible()
    def decorated(x: int) -> int:
        return x + 1

    assert decorated(1) == 2


def test_a_lock_a_cancelled_task_held_goes_to_the_next_acquirer_with_owner_died() -> None:
    lock = shoal.Lock()
    started: shoal.Queue[int] = shoal.Queue()
    try:
        with shoal.Pool(1) as pool:
            r = pool.apply_async(t.hold_lock_then_sleep, (lock, started))
            victim = started_pid(started)
            assert r.cancel()
            assert replaced(pool, victim, 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", shoal.OwnerDiedWarning)
                assert lock.acquire(timeout=T)
            assert lock.owner_died
            lock.release()
    finally:
        lock.close()
        started.close()
