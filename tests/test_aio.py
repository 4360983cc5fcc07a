"""asyncio: the awaitable twins of the blocking calls (issue #14, points 1 and 3).

* each awaitable against its blocking twin's semantics (values, FIFO order, timeouts
  raising the same exceptions, ShutDown, ``async for``, ``async with``);
* timeouts through ``asyncio.wait_for`` and ``asyncio.timeout``, and cancellation:
  the object is left exactly as it was (no item taken, no permit used, the lock free,
  no waiter counted, read through ``statistics()``), and a wake-up a cancelled task
  had received is passed on;
* 10,000 coroutines awaiting one queue in one process: one hub thread, one
  registration, every item delivered once, in FIFO order;
* producers, releasers and setters in other processes (each start method) wake
  awaiting coroutines with no polling delay (the wake latency is measured);
* a process killed while awaiting leaves no waiter counted; a lock whose holder died is
  inherited by an awaiting coroutine; a forked child has its own hub;
* the non-futex_waitv fallback; more distinct words than one hub thread takes;
  uvloop, when it is installed.

Every test is bounded: each coroutine wait has a timeout, children are joined with one.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import pickle
import queue
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import join_all, wait_until

import shoal
from shoal import _aio

try:  # optional.  uvloop keeps a pipe of its own from its first loop on, for the life of
    # the process: made here, once, so that it does not count as the test's leak
    import uvloop

    uvloop.new_event_loop().close()
except ImportError:
    uvloop = None

T = 10.0  # a bound no passing test comes near


@pytest.fixture(autouse=True)
def fresh_hub() -> Iterator[None]:
    """Each test starts without a hub and stops the one it made (no thread left)."""
    _aio._stop_hub()
    yield
    _aio._stop_hub()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T))


async def settle(predicate: Any, timeout: float = 5.0) -> bool:
    """Yield to the loop until ``predicate()`` is true (or ``timeout`` runs out)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


# ---- queues: the blocking twin's semantics -------------------------------------------


def test_get_async_put_async_fifo_and_fast_path() -> None:
    q: shoal.Queue[Any] = shoal.Queue()

    async def main() -> list[Any]:
        for i in range(5):
            await q.put_async(i)
        await q.put_async({"big": b"x" * 100_000})  # travels in a transit segment
        got = [await q.get_async() for _ in range(5)]
        got.append(await q.get_async())
        return got

    got = run(main())
    assert got == [0, 1, 2, 3, 4, {"big": b"x" * 100_000}]
    assert _aio.hub_threads() == 0  # nothing ever had to wait: no thread started
    q.close()


def test_get_async_waits_then_gets_what_a_thread_puts() -> None:
    q: shoal.Queue[int] = shoal.Queue()

    async def main() -> int:
        task = asyncio.create_task(q.get_async())
        assert await settle(lambda: q.statistics().consumers_waiting == 1)
        threading.Timer(0.05, q.put, (7,)).start()
        value = await task
        assert q.statistics().consumers_waiting == 0
        return value

    assert run(main()) == 7
    q.close()


def test_timeouts_raise_like_the_blocking_twins() -> None:
    q: shoal.Queue[int] = shoal.Queue(maxsize=1)

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=0.1)
        assert 0.08 < time.monotonic() - t0 < 2
        with pytest.raises(queue.Empty):
            await q.get_many_async(timeout=0.05)
        await q.put_async(1)
        with pytest.raises(queue.Full):
            await q.put_async(2, timeout=0.05)
        assert q.qsize() == 1
        st = q.statistics()
        assert st.consumers_waiting == 0 and st.producers_waiting == 0

    run(main())
    q.close()


def test_put_async_waits_for_room() -> None:
    q: shoal.Queue[int] = shoal.Queue(maxsize=2)

    async def main() -> list[int]:
        await q.put_async(0)
        await q.put_async(1)
        task = asyncio.create_task(q.put_async(2))
        assert await settle(lambda: q.statistics().producers_waiting == 1)
        assert q.get(timeout=T) == 0  # room: the awaiting put goes in
        await asyncio.wait_for(task, T)
        return [q.get(timeout=T), q.get(timeout=T)]

    assert run(main()) == [1, 2]
    assert q.statistics().producers_waiting == 0
    q.close()


def test_put_many_async_and_get_many_async() -> None:
    q: shoal.Queue[int] = shoal.Queue(maxsize=3)

    async def main() -> list[int]:
        put = asyncio.create_task(q.put_many_async(range(10)))
        got: list[int] = []
        while len(got) < 10:
            got += await q.get_many_async(4, timeout=T)
        assert await asyncio.wait_for(put, T) == 10
        return got

    assert run(main()) == list(range(10))
    q.close()


def test_put_many_async_timeout_says_how_many_went_in() -> None:
    q: shoal.Queue[int] = shoal.Queue(maxsize=3)

    async def main() -> None:
        with pytest.raises(queue.Full) as info:
            await q.put_many_async(range(5), timeout=0.05)
        assert info.value.items_put == 3  # type: ignore[attr-defined]

    run(main())
    assert [q.get_nowait() for _ in range(3)] == [0, 1, 2]
    q.close()


def test_async_for_ends_at_shutdown_and_awaiters_get_shutdown() -> None:
    q: shoal.Queue[int] = shoal.Queue()

    async def main() -> tuple[list[int], int]:
        async def drain() -> list[int]:
            return [x async for x in q]

        consumers = [asyncio.create_task(drain()) for _ in range(3)]
        assert await settle(lambda: q.statistics().consumers_waiting == 1)  # one registration
        q.put_many(range(6))
        await asyncio.sleep(0.05)
        q.shutdown()
        results = await asyncio.wait_for(asyncio.gather(*consumers), T)
        with pytest.raises(shoal.ShutDown):
            await q.get_async()
        with pytest.raises(shoal.ShutDown):
            await q.put_async(1)
        return sorted(x for r in results for x in r), q.statistics().consumers_waiting

    items, waiting = run(main())
    assert items == list(range(6)) and waiting == 0
    q.close()


def test_put_async_unpicklable_raises_in_the_caller() -> None:
    q: shoal.Queue[Any] = shoal.Queue(maxsize=1)
    q.put(0)

    async def main() -> None:
        with pytest.raises(shoal.SerializationError):
            await q.put_async(threading.Lock(), timeout=1)  # full, and unpicklable: raises at once

    t0 = time.monotonic()
    run(main())
    assert time.monotonic() - t0 < 0.5 and q.qsize() == 1
    q.close()


def test_joinable_queue_join_async() -> None:
    q: shoal.JoinableQueue[int] = shoal.JoinableQueue()

    async def main() -> None:
        assert await q.join_async(timeout=0.01) is True  # nothing unfinished
        await q.put_async(1)
        await q.put_async(2)
        assert await q.join_async(timeout=0.05) is False
        joiners = [asyncio.create_task(q.join_async()) for _ in range(3)]
        assert await settle(lambda: q.statistics().unfinished_tasks == 2)
        for _ in range(2):
            await q.get_async()
            q.task_done()
        assert await asyncio.wait_for(asyncio.gather(*joiners), T) == [True] * 3

    run(main())
    assert q._joiners_raw == 0
    q.close()


# ---- locks, semaphores, events -----------------------------------------------------------


@pytest.mark.parametrize("kind", [shoal.Lock, shoal.RLock])
def test_lock_acquire_async_and_async_with(kind: type) -> None:
    lock = kind()

    async def main() -> list[str]:
        order: list[str] = []

        async def worker(name: str) -> None:
            async with lock:
                order.append(name + "+")
                await asyncio.sleep(0.01)
                order.append(name + "-")

        if kind is shoal.Lock:
            await asyncio.wait_for(asyncio.gather(*(worker(str(i)) for i in range(4))), T)
        else:
            await worker("0")
        return order

    order = run(main())
    if kind is shoal.Lock:  # mutual exclusion between tasks: never two inside at once
        assert all(order[i][:-1] == order[i + 1][:-1] for i in range(0, len(order), 2))
        assert len(order) == 8
    st = lock.statistics()
    assert not st.locked and st.waiters == 0
    lock.close()


def test_lock_acquire_async_timeout_and_release_from_a_thread() -> None:
    lock = shoal.Lock()
    lock.acquire()

    async def main() -> None:
        assert await lock.acquire_async(timeout=0.05) is False
        assert lock.statistics().waiters == 0
        task = asyncio.create_task(lock.acquire_async())
        assert await settle(lambda: lock.statistics().waiters == 1)
        threading.Timer(0.02, lock.release).start()
        assert await asyncio.wait_for(task, T) is True

    run(main())
    st = lock.statistics()
    assert st.locked and st.owner_pid == os.getpid() and st.waiters == 0
    lock.release()
    lock.close()


@pytest.mark.parametrize("kind", [shoal.Semaphore, shoal.BoundedSemaphore])
def test_semaphore_acquire_async(kind: type) -> None:
    sem = kind(2)

    async def main() -> int:
        inside = peak = 0

        async def worker() -> None:
            nonlocal inside, peak
            async with sem:
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), T)
        assert await sem.acquire_async(timeout=0.01) is True
        assert await sem.acquire_async(timeout=0.01) is True
        assert await sem.acquire_async(timeout=0.05) is False
        sem.release(2)
        return peak

    assert run(main()) == 2
    assert sem.get_value() == 2 and sem.statistics().waiters == 0
    sem.close()


def test_event_wait_async_wakes_every_waiter() -> None:
    ev = shoal.Event()

    async def main() -> list[bool]:
        assert await ev.wait_async(timeout=0.02) is False
        waiters = [asyncio.create_task(ev.wait_async()) for _ in range(50)]
        assert await settle(lambda: ev.statistics().waiters == 1)  # one registration
        threading.Timer(0.02, ev.set).start()
        return await asyncio.wait_for(asyncio.gather(*waiters), T)

    assert run(main()) == [True] * 50
    assert ev.statistics().waiters == 0
    assert run(ev.wait_async()) is True  # set: at once
    ev.close()


@pytest.mark.parametrize("kind", [shoal.Lock, shoal.RLock])
def test_condition_wait_async_notify_one_and_all(kind: type) -> None:
    cond = shoal.Condition(kind())
    box: list[int] = []

    async def waiter() -> bool:
        async with cond._lock:
            return await cond.wait_async(timeout=T)

    async def main() -> None:
        async with cond._lock:
            assert await cond.wait_async(timeout=0.05) is False  # timed out, lock held
            assert cond._lock._is_owned()
        tasks = [asyncio.create_task(waiter()) for _ in range(3)]
        assert await settle(lambda: cond._waiting == 3)

        def notify(n: int) -> None:
            with cond:
                cond.notify(n) if n >= 0 else cond.notify_all()

        threading.Thread(target=notify, args=(1,)).start()
        done, pending = await asyncio.wait(tasks, timeout=T, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.1)
        assert len(done) == 1 and all(not t.done() for t in pending)  # exactly one woke
        threading.Thread(target=notify, args=(-1,)).start()
        assert await asyncio.wait_for(asyncio.gather(*tasks), T) == [True] * 3

        async def wait_for_box() -> int:
            async with cond._lock:
                return await cond.wait_for_async(lambda: len(box), timeout=T)

        task = asyncio.create_task(wait_for_box())
        assert await settle(lambda: cond._waiting == 1)
        with cond:
            box.append(1)
            cond.notify_all()
        assert await asyncio.wait_for(task, T) == 1

    run(main())
    assert cond._waiting == 0 and not cond._lock.statistics().locked
    cond.close()


def test_condition_wait_async_cancelled_holds_the_lock_again() -> None:
    cond = shoal.Condition(shoal.Lock())

    async def main() -> None:
        held_after: list[bool] = []

        async def waiter() -> None:
            async with cond._lock:
                try:
                    await cond.wait_async()
                finally:
                    held_after.append(cond._lock.statistics().locked)

        task = asyncio.create_task(waiter())
        assert await settle(lambda: cond._waiting == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert held_after == [True]

    run(main())
    assert cond._waiting == 0 and not cond._lock.statistics().locked
    cond.close()


def _barrier_party(b: shoal.Barrier, out: shoal.Queue[int]) -> None:
    out.put(b.wait(T))


def test_barrier_wait_async_with_a_process_and_tasks(ctx: Any) -> None:
    b = shoal.Barrier(3)
    out: shoal.Queue[int] = shoal.Queue()
    p = ctx.Process(target=_barrier_party, args=(b, out))
    p.start()

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(b.wait_async(), b.wait_async()), T)

    indexes = [*run(main()), out.get(timeout=T)]
    join_all(p)
    assert sorted(indexes) == [0, 1, 2]
    assert b.n_waiting == 0 and not b.broken
    b.close()
    out.close()


def test_barrier_wait_async_timeout_breaks_it() -> None:
    b = shoal.Barrier(2)

    async def main() -> None:
        with pytest.raises(threading.BrokenBarrierError):
            await b.wait_async(timeout=0.05)
        assert b.broken
        with pytest.raises(threading.BrokenBarrierError):
            await b.wait_async()
        b.reset()
        assert await asyncio.wait_for(asyncio.gather(b.wait_async(), b.wait_async()), T) in (
            [0, 1],
            [1, 0],
        )

    run(main())
    assert not b._cond._lock.statistics().locked
    b.close()


# ---- cancellation leaves the object as it was ---------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "wait_for", "timeout"])
def test_cancelled_get_takes_nothing(how: str) -> None:
    if how == "timeout" and sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout is 3.11+")
    q: shoal.Queue[int] = shoal.Queue()

    async def main() -> None:
        if how == "cancel":
            task = asyncio.create_task(q.get_async())
            assert await settle(lambda: q.statistics().consumers_waiting == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        elif how == "wait_for":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(q.get_async(), 0.05)
        else:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):  # type: ignore[attr-defined]
                    await q.get_async()
        st = q.statistics()
        assert st.consumers_waiting == 0 and q._consumers_waiting_raw == 0
        q.put(1)  # the item put afterwards is still there for the next get
        await asyncio.sleep(0.05)
        assert q.qsize() == 1
        assert await q.get_async(timeout=T) == 1

    run(main())
    q.close()


def test_cancelled_acquires_consume_nothing() -> None:
    lock, sem = shoal.Lock(), shoal.Semaphore(0)
    lock.acquire()

    async def main() -> None:
        tasks = [asyncio.create_task(lock.acquire_async()) for _ in range(3)]
        tasks += [asyncio.create_task(sem.acquire_async()) for _ in range(3)]
        assert await settle(
            lambda: lock.statistics().waiters == 1 and sem.statistics().waiters == 1
        )
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(main())
    assert lock.statistics().waiters == 0 and lock.statistics().owner_pid == os.getpid()
    assert sem.get_value() == 0 and sem.statistics().waiters == 0
    lock.release()
    sem.release()
    assert sem.get_value() == 1 and not lock.statistics().locked
    lock.close()
    sem.close()


def test_a_cancelled_waiter_passes_its_wake_up_on() -> None:
    """The first waiter is cancelled just as the item arrives: the second gets it."""
    q: shoal.Queue[int] = shoal.Queue()

    async def main() -> int:
        first = asyncio.create_task(q.get_async())
        second = asyncio.create_task(q.get_async())
        assert await settle(lambda: q.statistics().consumers_waiting == 1)
        await asyncio.sleep(0.01)
        q.put(5)
        time.sleep(0.02)  # (the hub thread wakes `first` meanwhile; the loop does not run)
        first.cancel()
        value = await asyncio.wait_for(second, 2)
        with pytest.raises(asyncio.CancelledError):
            await first
        return value

    assert run(main()) == 5
    assert q.statistics().consumers_waiting == 0 and q.qsize() == 0
    q.close()


@pytest.mark.parametrize("kind", ["queue", "lock", "event"])
def test_closing_a_handle_wakes_its_awaiters_with_closed_error(kind: str) -> None:
    obj: Any = {"queue": shoal.Queue, "lock": shoal.Lock, "event": shoal.Event}[kind]()
    other = pickle.loads(pickle.dumps(obj))  # a second handle, to read the counts by
    if kind == "lock":
        obj.acquire()
    waiting = {
        "queue": lambda: other.statistics().consumers_waiting,
        "lock": lambda: other.statistics().waiters,
        "event": lambda: other.statistics().waiters,
    }[kind]

    async def main() -> list[Any]:
        call = getattr(obj, {"queue": "get_async", "lock": "acquire_async"}.get(kind, "wait_async"))
        tasks = [asyncio.create_task(call()) for _ in range(3)]
        assert await settle(lambda: waiting() == 1)
        if kind == "lock":
            obj.release()
            obj.acquire()  # held again: the tasks still wait
        obj.close()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), T)

    results = run(main())
    assert all(isinstance(r, shoal.ClosedError) for r in results), results
    assert waiting() == 0  # nothing left counted in shared memory
    if kind == "lock":
        other.release()
    other.close()


def test_a_handle_closed_while_the_hub_lock_is_held_does_not_deadlock() -> None:
    """The garbage collector can close a handle inside any allocation, hub lock held."""
    q: shoal.Queue[int] = shoal.Queue()

    async def start_hub() -> None:
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=0.01)

    run(start_hub())
    hub = _aio._HUB
    assert hub is not None
    other: shoal.Queue[int] = shoal.Queue()

    def close_under_lock() -> None:
        with hub.lock:
            other.close()

    t = threading.Thread(target=close_under_lock)
    t.start()
    t.join(T)
    assert not t.is_alive() and other.closed
    q.close()


# ---- many awaiters, few threads -------------------------------------------------------------

N_AWAITERS = 10_000


def test_ten_thousand_awaiters_one_thread_fifo() -> None:
    q: shoal.Queue[int] = shoal.Queue(capacity=1 << 20)
    threads_before = threading.active_count()

    async def main() -> tuple[list[int], int, int]:
        tasks = [asyncio.create_task(q.get_async()) for _ in range(N_AWAITERS)]
        assert await settle(lambda: q.statistics().consumers_waiting == 1)
        await asyncio.sleep(0.05)  # every task has run to its await
        threads_during = threading.active_count()
        waiting = q.statistics().consumers_waiting
        q.put_many(range(N_AWAITERS))
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return results, threads_during, waiting

    results, threads_during, waiting = run(main())
    # one hub thread for all of them, and one registration in shared memory
    assert threads_during - threads_before == 1 and _aio.hub_threads() == 1
    assert waiting == 1
    # every item once, handed out in the order the tasks started waiting
    assert results == list(range(N_AWAITERS))
    assert q.statistics().consumers_waiting == 0 and q.qsize() == 0
    q.close()


def test_more_distinct_words_than_one_hub_thread_takes() -> None:
    if not _aio._futex_waitv_works():
        pytest.skip("futex_waitv is not available: the fallback has a thread per word")
    n = _aio.WORDS_PER_SHARD + 3
    queues: list[shoal.Queue[int]] = [shoal.Queue(capacity=128) for _ in range(n)]

    async def main() -> list[int]:
        tasks = [asyncio.create_task(q.get_async()) for q in queues]
        assert await settle(lambda: all(q.statistics().consumers_waiting == 1 for q in queues))
        assert _aio.hub_threads() == 2
        for i, q in enumerate(queues):
            q.put(i)
        return await asyncio.wait_for(asyncio.gather(*tasks), T)

    assert run(main()) == list(range(n))
    for q in queues:
        q.close()


def test_fallback_without_futex_waitv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seam: with no futex_waitv, one thread per distinct word (shoal_wait32)."""
    monkeypatch.setattr(_aio, "_WAITV", False)
    q: shoal.Queue[int] = shoal.Queue()
    lock = shoal.Lock()
    lock.acquire()

    async def main() -> tuple[int, bool]:
        got = asyncio.create_task(q.get_async())
        acq = asyncio.create_task(lock.acquire_async())
        assert await settle(lambda: q.statistics().consumers_waiting == 1)
        assert await settle(lambda: lock.statistics().waiters == 1)
        assert _aio.hub_threads() == 2
        threading.Timer(0.02, q.put, (3,)).start()
        threading.Timer(0.02, lock.release).start()
        return await asyncio.wait_for(got, T), await asyncio.wait_for(acq, T)

    assert run(main()) == (3, True)
    lock.release()
    q.close()
    lock.close()


# ---- other processes ------------------------------------------------------------------------


def _timed_producer(q: shoal.Queue[int], ready: Any, n: int) -> None:
    ready.wait(T)
    for _ in range(n):
        time.sleep(0.02)  # the consumer is asleep in the hub again by then
        q.put(time.monotonic_ns())


def test_producer_in_another_process_wakes_with_no_polling_delay(ctx: Any) -> None:
    q: shoal.Queue[int] = shoal.Queue()
    ready = ctx.Event()
    n = 30
    p = ctx.Process(target=_timed_producer, args=(q, ready, n))
    p.start()

    async def main() -> list[float]:
        latencies = []
        ready.set()
        for _ in range(n):
            sent = await q.get_async(timeout=T)
            latencies.append((time.monotonic_ns() - sent) / 1e6)
        return latencies

    latencies = run(main())
    join_all(p)
    median = statistics.median(latencies)
    print(
        f"\nwake latency across processes ({ctx.get_start_method()}): median "
        f"{median:.3f} ms, max {max(latencies):.3f} ms"
    )
    assert median < 20  # a polling hub would show its slice (50-200 ms) here
    assert q.statistics().consumers_waiting == 0
    q.close()


def _release_later(lock: shoal.Lock, ev: shoal.Event, delay: float) -> None:
    lock.acquire()
    time.sleep(delay)
    lock.release()
    time.sleep(delay)
    ev.set()


def test_lock_and_event_released_in_another_process(ctx: Any) -> None:
    lock, ev = shoal.Lock(), shoal.Event()
    p = ctx.Process(target=_release_later, args=(lock, ev, 0.3))
    p.start()
    assert wait_until(lambda: lock.statistics().locked, T)

    async def main() -> tuple[bool, list[bool]]:
        got = await lock.acquire_async(timeout=T)
        lock.release()
        return got, await asyncio.wait_for(asyncio.gather(*(ev.wait_async() for _ in range(20))), T)

    got, events = run(main())
    join_all(p)
    assert got and events == [True] * 20
    assert lock.statistics().waiters == 0 and ev.statistics().waiters == 0
    lock.close()
    ev.close()


def _await_forever(q: shoal.Queue[int], ready: Any) -> None:
    async def main() -> None:
        task = asyncio.create_task(q.get_async())
        await asyncio.sleep(0.05)
        ready.set()
        await task

    asyncio.run(main())


def test_a_process_killed_while_awaiting_leaves_no_waiter(ctx: Any) -> None:
    q: shoal.Queue[int] = shoal.Queue()
    ready = ctx.Event()
    p = ctx.Process(target=_await_forever, args=(q, ready))
    p.start()
    assert ready.wait(T)
    assert wait_until(lambda: q._consumers_waiting_raw == 1, T)
    os.kill(p.pid, signal.SIGKILL)
    join_all(p)
    assert q.statistics().consumers_waiting == 0  # the dead one is not counted
    # the next wake-up prunes it from the count itself (at most one every 100 ms)
    assert wait_until(lambda: (q.put(0), q._consumers_waiting_raw == 0)[1], T, 0.15)
    q.close()


def _hold_and_die(lock: shoal.Lock, held: Any) -> None:
    lock.acquire()
    held.set()
    time.sleep(60)


def test_a_dead_holders_lock_goes_to_an_awaiting_coroutine(ctx: Any) -> None:
    lock = shoal.Lock()
    held = ctx.Event()
    p = ctx.Process(target=_hold_and_die, args=(lock, held))
    p.start()
    assert held.wait(T)

    async def main() -> bool:
        task = asyncio.create_task(lock.acquire_async())
        assert await settle(lambda: lock.statistics().waiters == 1)
        os.kill(p.pid, signal.SIGKILL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", shoal.OwnerDiedWarning)
            return await asyncio.wait_for(task, T)

    assert run(main()) is True
    join_all(p)
    assert lock.owner_died and lock.statistics().owner_pid == os.getpid()
    lock.release()
    lock.close()


def _child_awaits(q: shoal.Queue[int], out: shoal.Queue[Any]) -> None:
    async def main() -> None:
        value = await q.get_async(timeout=T)
        out.put((value, _aio.hub_threads()))

    asyncio.run(main())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_forked_child_has_its_own_hub() -> None:
    q: shoal.Queue[int] = shoal.Queue()
    out: shoal.Queue[Any] = shoal.Queue()

    async def parent_waits() -> None:  # the parent's hub runs when the child forks
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=0.05)

    run(parent_waits())
    assert _aio.hub_threads() == 1
    p = mp.get_context("fork").Process(target=_child_awaits, args=(q, out))
    p.start()
    assert wait_until(lambda: q._consumers_waiting_raw == 1, T)
    q.put(9)
    assert out.get(timeout=T) == (9, 1)
    join_all(p)
    q.close()
    out.close()


# ---- other event loops ----------------------------------------------------------------------


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
def test_uvloop() -> None:
    assert uvloop is not None
    q: shoal.Queue[int] = shoal.Queue()
    lock = shoal.Lock()

    async def main() -> list[int]:
        task = asyncio.create_task(q.get_async())
        await asyncio.sleep(0.02)
        threading.Timer(0.02, q.put, (1,)).start()
        async with lock:
            first = await asyncio.wait_for(task, T)
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=0.02)
        return [first]

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), T)) == [1]
    finally:
        loop.close()
    assert q.statistics().consumers_waiting == 0 and not lock.statistics().locked
    q.close()
    lock.close()
