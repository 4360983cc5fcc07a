"""asyncio figures (#14): throughput, wake latency and threads of the awaitable calls.

Run: ``python -m benchmarks.aio_figures [--items 100000] [--wakes 300] [--cancels 30]``.

* throughput: a producer process puts ``--items`` ints; the consumer takes them with
  ``await q.get_async()`` in a coroutine, with the blocking ``q.get()`` (no event loop),
  -- the standard library's way for a coroutine -- ``multiprocessing.Queue.get``
  through ``loop.run_in_executor``, and aioprocessing's ``AioQueue.coro_get`` (a thread
  per call, if aioprocessing is installed).  Items a second, the median of 3 runs.
* wake latency: the producer puts its ``time.monotonic_ns()`` every 2 ms, so the
  consumer is asleep each time; the latency is the consumer's clock minus it when the
  item is in hand: ``get_async`` in a coroutine against the blocking ``get`` in a
  thread.  Median and p99 in microseconds.
* threads: 10,000 coroutines awaiting one queue; the threads the process runs before
  and while they wait.
* cancelling a running pool task (``--cancels``): a one-worker ``Pool`` (fork) runs a
  task that says it started and sleeps; from ``r.cancel()`` to the result of the next
  task, which its replacement worker runs (the kill, the monitor seeing the death,
  the start of the replacement, its first task), median and p90 in ms; the same with
  ``await`` (an asyncio task awaiting the result, cancelled) and for an ``Executor``
  future.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import threading
import time
from typing import Any

import shoal
from shoal import _aio

CTX = mp.get_context("fork")


def _produce(q: Any, n: int, start: Any) -> None:
    start.wait()
    for i in range(n):
        q.put(i)


def _throughput(kind: str, n: int) -> float:
    if kind == "mp-executor":
        q: Any = CTX.Queue()
    elif kind == "aioprocessing":
        import aioprocessing

        q = aioprocessing.AioQueue()
    else:
        q = shoal.Queue()
    start = CTX.Event()
    p = CTX.Process(target=_produce, args=(q, n, start))
    p.start()
    t0 = time.perf_counter()
    start.set()
    if kind == "shoal-get_async":

        async def consume() -> None:
            for _ in range(n):
                await q.get_async()

        asyncio.run(consume())
    elif kind == "shoal-get":
        for _ in range(n):
            q.get()
    elif kind == "aioprocessing":

        async def consume_aioprocessing() -> None:
            for _ in range(n):
                await q.coro_get()

        asyncio.run(consume_aioprocessing())
    else:

        async def consume_executor() -> None:
            loop = asyncio.get_running_loop()
            for _ in range(n):
                await loop.run_in_executor(None, q.get)

        asyncio.run(consume_executor())
    elapsed = time.perf_counter() - t0
    p.join()
    q.close()
    return n / elapsed


def _timed_producer(q: Any, n: int, start: Any) -> None:
    start.wait()
    for _ in range(n):
        time.sleep(0.002)
        q.put(time.monotonic_ns())


def _latency(kind: str, n: int) -> list[float]:
    q: shoal.Queue[int] = shoal.Queue()
    start = CTX.Event()
    p = CTX.Process(target=_timed_producer, args=(q, n, start))
    p.start()
    out: list[float] = []
    if kind == "get_async":

        async def consume() -> None:
            start.set()
            for _ in range(n):
                sent = await q.get_async()
                out.append((time.monotonic_ns() - sent) / 1e3)

        asyncio.run(consume())
    else:

        def consume_thread() -> None:
            start.set()
            for _ in range(n):
                sent = q.get()
                out.append((time.monotonic_ns() - sent) / 1e3)

        t = threading.Thread(target=consume_thread)
        t.start()
        t.join()
    p.join()
    q.close()
    return out


def _threads_for_awaiters(n: int) -> tuple[int, int]:
    q: shoal.Queue[int] = shoal.Queue()
    _aio._stop_hub()  # the runs above started one: count from none
    before = threading.active_count()

    async def main() -> int:
        tasks = [asyncio.create_task(q.get_async()) for _ in range(n)]
        await asyncio.sleep(0.2)
        during = threading.active_count()
        q.put_many(range(n))
        await asyncio.gather(*tasks)
        return during

    during = asyncio.run(main())
    q.close()
    return before, during


def _announce_then_sleep(q: Any) -> None:
    q.put(os.getpid())
    time.sleep(60)


def _cancel_running(kind: str, n: int) -> list[float]:
    """ms from cancelling a running task to the next task's result, ``n`` times."""
    started: shoal.Queue[int] = shoal.Queue()
    pool: Any = (
        shoal.Executor(1, mp_context=CTX) if kind == "Executor" else shoal.Pool(1, context=CTX)
    )
    out: list[float] = []
    try:
        for _ in range(n):
            if kind == "Executor":
                future = pool.submit(_announce_then_sleep, started)
                victim = started.get(timeout=30)
                t0 = time.perf_counter()
                assert future.cancel()
                pid = pool.submit(os.getpid).result(30)
            elif kind == "Pool, await":
                r = pool.apply_async(_announce_then_sleep, (started,))
                victim = started.get(timeout=30)

                async def cancel_awaiting(r: Any) -> tuple[float, int]:
                    task = asyncio.ensure_future(r)
                    await asyncio.sleep(0)  # (it awaits the result)
                    start = time.perf_counter()
                    task.cancel()
                    try:
                        await task
                    except asyncio.CancelledError:
                        pass
                    return start, await pool.apply_async(os.getpid)

                t0, pid = asyncio.run(cancel_awaiting(r))
            else:
                r = pool.apply_async(_announce_then_sleep, (started,))
                victim = started.get(timeout=30)
                t0 = time.perf_counter()
                assert r.cancel()
                pid = pool.apply_async(os.getpid).get(30)
            out.append((time.perf_counter() - t0) * 1e3)  # (after asyncio.run's end: ~0.1 ms)
            assert pid != victim  # the replacement ran it
    finally:
        if kind == "Executor":
            pool.shutdown()
        else:
            pool.terminate()
        started.close()
    return out


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--wakes", type=int, default=300)
    ap.add_argument("--cancels", type=int, default=30)
    args = ap.parse_args()
    print(f"throughput, {args.items} ints from a producer process (items/s, median of 3)")
    rates = {}
    kinds = ["mp-executor", "shoal-get", "shoal-get_async"]
    try:
        import aioprocessing  # noqa: F401  (optional peer)

        kinds.insert(1, "aioprocessing")
    except ImportError:
        print("  (aioprocessing is not installed: its row is skipped)")
    for kind in kinds:
        rates[kind] = statistics.median(_throughput(kind, args.items) for _ in range(3))
    base = rates["mp-executor"]
    for kind, rate in rates.items():
        print(f"  {kind:18s} {rate:12,.0f}   {rate / base:6.1f}x")
    print(f"wake latency, {args.wakes} wakes, put in another process to the item in hand (us)")
    for kind in ("get-in-thread", "get_async"):
        lat = sorted(_latency(kind, args.wakes))
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"  {kind:18s} median {statistics.median(lat):8.1f}   p99 {p99:8.1f}")
    before, during = _threads_for_awaiters(10_000)
    print(f"threads: {before} before, {during} while 10,000 coroutines await one queue")
    print(f"hub threads now: {_aio.hub_threads()}")
    print(f"cancel a running task -> its replacement's first result, {args.cancels} times (ms)")
    for kind in ("Pool", "Pool, await", "Executor"):
        ms = sorted(_cancel_running(kind, args.cancels))
        p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
        print(f"  {kind:18s} median {statistics.median(ms):8.2f}   p90 {p90:8.2f}")


if __name__ == "__main__":
    main()
