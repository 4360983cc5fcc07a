"""shoal's Ray backend against Ray's own tools, on a local Ray node (#13).

    python -m benchmarks.ray_backend [--repeat 3]

Not one of ``python -m benchmarks``' (it starts a Ray cluster, ~3 s, ~400 MiB): run it
by hand.  Each case runs ``--repeat`` times; the median is printed with its range,
the ratio to Ray's tool, and the local context's figure for the same case.  Cases
(the floors of issue #13 in brackets):

* ``Pool.map`` of 100,000 trivial calls vs ``ray.util.multiprocessing.Pool.map`` [1x]
* one ``apply_async`` per item (2,000) vs Ray's Pool [2x]
* items from a producer task to a consumer task through a queue, one per put/get,
  vs ``ray.util.queue.Queue`` [10x]
* lock acquire/release pairs from a task vs an async-actor lock [1x]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

MAP_N = 100_000
APPLY_N = 2_000
QUEUE_N = 2_000
LOCK_N = 300


def trivial(x: int) -> int:
    return x


def median_of(fn: Callable[[], float], repeat: int) -> tuple[float, float, float]:
    runs = [fn() for _ in range(repeat)]
    return statistics.median(runs), min(runs), max(runs)


# ---- the cases, as functions of a pool / a queue / a lock --------------------------------


def rate_map(pool: Any) -> float:
    start = time.perf_counter()
    assert len(pool.map(trivial, range(MAP_N))) == MAP_N
    return MAP_N / (time.perf_counter() - start)


def rate_apply(pool: Any) -> float:
    start = time.perf_counter()
    results = [pool.apply_async(trivial, (i,)) for i in range(APPLY_N)]
    for r in results:
        r.get(60)
    return APPLY_N / (time.perf_counter() - start)


def produce(q: Any, n: int) -> int:
    for i in range(n):
        q.put(i)
    flush = getattr(q, "flush", None)
    if flush is not None:
        flush()
    return n


def consume(q: Any, n: int) -> int:
    total = 0
    for _ in range(n):
        total += q.get(timeout=120)
    return total


def rate_queue(pool: Any, q: Any) -> float:
    # (the queue's actor started and reached by both workers first: an actor is a
    # process of its own, ~1 s to start, which is not what this measures)
    pool.apply_async(produce, (q, 2)).get(60)
    assert pool.apply_async(consume, (q, 2)).get(60) == 1
    start = time.perf_counter()
    c = pool.apply_async(consume, (q, QUEUE_N))
    p = pool.apply_async(produce, (q, QUEUE_N))
    p.get(300)
    assert c.get(300) == sum(range(QUEUE_N))
    return QUEUE_N / (time.perf_counter() - start)


def lock_pairs(lock: Any, n: int) -> float:
    lock.acquire()  # (warm: the actor started and reached)
    lock.release()
    start = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return n / (time.perf_counter() - start)


class AsyncLock:
    """The async-actor lock Ray's maintainers advise (ray#8017): asyncio.Lock in an actor."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    async def acquire(self) -> bool:
        await self.lock.acquire()
        return True

    async def release(self) -> None:
        self.lock.release()


class ActorLockClient:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def acquire(self) -> bool:
        import ray

        return bool(ray.get(self.actor.acquire.remote()))

    def release(self) -> None:
        import ray

        ray.get(self.actor.release.remote())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args(argv).repeat

    import ray
    from ray.util.multiprocessing import Pool as RayToolPool
    from ray.util.queue import Queue as RayToolQueue

    import shoal

    temp = tempfile.mkdtemp(prefix="shoal-bench-ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=512 << 20,
        _temp_dir=temp,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}},
    )
    rows: list[tuple[str, tuple[float, float, float], tuple[float, float, float], float, Any]] = []
    try:
        ctx = shoal.get_context("ray")
        local = shoal.get_context("fork")
        ours, theirs = ctx.Pool(2), RayToolPool(2)
        mine = local.Pool(2)
        for pool in (ours, theirs):  # warm: workers started, functions exported
            pool.map(trivial, range(100))
        cases = [
            ("Pool.map, 100k trivial calls (items/s)", rate_map, 1.0),
            ("apply_async per item, 2k (calls/s)", rate_apply, 2.0),
        ]
        for name, fn, floor in cases:
            a = median_of(lambda fn=fn: fn(ours), repeat)
            b = median_of(lambda fn=fn: fn(theirs), repeat)
            c = median_of(lambda fn=fn: fn(mine), repeat)
            rows.append((name, a, b, floor, c))

        a = median_of(lambda: rate_queue(ours, ctx.Queue()), repeat)
        b = median_of(lambda: rate_queue(ours, RayToolQueue()), repeat)
        c = median_of(lambda: rate_queue(mine, local.Queue()), repeat)
        rows.append(("queue, producer task -> consumer task (items/s)", a, b, 10.0, c))

        actor_lock = ray.remote(num_cpus=0)(AsyncLock)
        a = median_of(lambda: ours.apply(lock_pairs, (ctx.Lock(), LOCK_N)), repeat)
        b = median_of(
            lambda: ours.apply(lock_pairs, (ActorLockClient(actor_lock.remote()), LOCK_N)),
            repeat,
        )
        c = median_of(lambda: mine.apply(lock_pairs, (local.Lock(), LOCK_N * 100)), repeat)
        rows.append(("lock acquire+release pairs from a task (pairs/s)", a, b, 1.0, c))
        for pool in (ours, theirs, mine):
            pool.terminate()
    finally:
        ray.shutdown()

    print(f"ray {ray.__version__}, {os.cpu_count()} CPUs, median [min-max] of {repeat}")
    for name, a, b, floor, c in rows:
        ratio = a[0] / b[0]
        mark = "ok" if ratio >= floor else "BELOW FLOOR"
        print(
            f"{name}\n  shoal ray {a[0]:>12,.0f} [{a[1]:,.0f}-{a[2]:,.0f}]"
            f"  ray's {b[0]:>12,.0f} [{b[1]:,.0f}-{b[2]:,.0f}]"
            f"  ratio {ratio:6.1f}x (floor {floor:g}x: {mark})"
            f"  shoal local {c[0]:,.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
