"""shoal's Ray backend against Ray's own tools, on a local Ray node (#13).

    python -m benchmarks.ray_backend [--repeat 3]

Not one of ``python -m benchmarks``' (it starts a Ray cluster, ~3 s, ~400 MiB): run it
by hand.  Each case runs ``--repeat`` times; the median is printed with its range,
the ratio to Ray's tool, and the local context's figure for the same case.  Cases
(the floors of issue #13 in brackets):

* ``Pool.map`` of 100,000 trivial calls vs ``ray.util.multiprocessing.Pool.map`` [1x]
* one ``apply_async`` per item (2,000) vs Ray's Pool [2x]
* items from a producer task to a consumer task through a queue, one per put/get,
  vs ``ray.util.queue.Queue`` [10x]; and the same queue used as from another node
  (its handles told so: through the maker's host)
* lock acquire/release pairs from a task vs an async-actor lock [1x]; and the same,
  as from another node
* a 256 MiB array reaching two tasks: ``share()`` and the handle vs ``ray.put`` and
  the reference [1x]; with the copies of it in the object store (one per node), and
  the first ``share()`` of a process (its array host, an actor, to start) timed apart

``--only map,apply,queue,lock,array`` runs some of the cases.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
ARRAY_MIB = 256


def trivial(x: int) -> int:
    return x


def fmt(rate: float) -> str:
    """A rate, with three significant digits when it is small (arrays/s)."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


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


def rate_queue(pool: Any, q: Any, n: int = QUEUE_N) -> float:
    # (the queue's actor started and reached by both workers first: an actor is a
    # process of its own, ~1 s to start, which is not what this measures)
    pool.apply_async(produce, (q, 2)).get(60)
    assert pool.apply_async(consume, (q, 2)).get(60) == 1
    start = time.perf_counter()
    c = pool.apply_async(consume, (q, n))
    p = pool.apply_async(produce, (q, n))
    p.get(300)
    assert c.get(300) == sum(range(n))
    return n / (time.perf_counter() - start)


def lock_pairs(lock: Any, n: int) -> float:
    lock.acquire()  # (warm: the actor started and reached)
    lock.release()
    start = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return n / (time.perf_counter() - start)


def total_of(arr: Any) -> float:
    """A task's read of a shared array: shoal's Ray handle, a Ray reference (in a
    list, so that the task gets the reference, not the array), or a local SharedArray."""
    if isinstance(arr, list):
        import ray

        return float(ray.get(arr[0]).sum())
    if type(arr).__name__ == "RaySharedArray":
        return float(arr.view().sum())
    return float(arr.sum())


def rate_array(pool: Any, make: Callable[[Any], Any], array: Any) -> float:
    """Arrays per second: made shared (``make``) and read by two tasks.

    After a pause (for every contender alike): the last array's memory freed, and
    the last one's copies dropped by its host (see array_case: a process's first
    ``share()``, which starts its host, is timed apart)."""
    gc.collect()
    time.sleep(2)
    start = time.perf_counter()
    shared = make(array)
    totals = pool.map(total_of, [shared, shared], chunksize=1)
    assert totals[0] == totals[1]
    return 1 / (time.perf_counter() - start)


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
    parser.add_argument("--only", default="map,apply,queue,lock,array")
    args = parser.parse_args(argv)
    repeat, only = args.repeat, set(args.only.split(","))

    import ray
    from ray.util.multiprocessing import Pool as RayToolPool
    from ray.util.queue import Queue as RayToolQueue

    import shoal

    temp = tempfile.mkdtemp(prefix="shoal-bench-ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=1 << 30,  # (room for the array cases: no spilling)
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
            ("map", "Pool.map, 100k trivial calls (items/s)", rate_map, 1.0),
            ("apply", "apply_async per item, 2k (calls/s)", rate_apply, 2.0),
        ]
        for case, name, fn, floor in cases:
            if case not in only:
                continue
            a = median_of(lambda fn=fn: fn(ours), repeat)
            b = median_of(lambda fn=fn: fn(theirs), repeat)
            c = median_of(lambda fn=fn: fn(mine), repeat)
            rows.append((name, a, b, floor, c))

        if "queue" in only:
            # (as many items as take each a second or so)
            a = median_of(lambda: rate_queue(ours, ctx.Queue(), QUEUE_N * 100), repeat)
            b = median_of(lambda: rate_queue(ours, RayToolQueue()), repeat)
            c = median_of(lambda: rate_queue(mine, local.Queue(), QUEUE_N * 100), repeat)
            rows.append(("queue, producer task -> consumer task (items/s)", a, b, 10.0, c))
            far = median_of(
                lambda: rate_queue(ours, ctx.Queue()._through_host(), QUEUE_N * 10), repeat
            )
            rows.append(("the same queue, used as from another node (items/s)", far, b, 10.0, c))
        if "lock" in only:
            lock_case(ours, mine, ctx, local, repeat, rows)
        if "array" in only:
            array_case(ours, mine, ctx, repeat, rows)
        for pool in (ours, theirs, mine):
            pool.terminate()
    finally:
        ray.shutdown()
    print_rows(rows, repeat)
    return 0


def lock_case(ours: Any, mine: Any, ctx: Any, local: Any, repeat: int, rows: list[Any]) -> None:
    import ray

    actor_lock = ray.remote(num_cpus=0)(AsyncLock)
    a = median_of(lambda: ours.apply(lock_pairs, (ctx.Lock(), LOCK_N * 100)), repeat)
    b = median_of(
        lambda: ours.apply(lock_pairs, (ActorLockClient(actor_lock.remote()), LOCK_N)),
        repeat,
    )
    c = median_of(lambda: mine.apply(lock_pairs, (local.Lock(), LOCK_N * 100)), repeat)
    rows.append(("lock acquire+release pairs from a task (pairs/s)", a, b, 1.0, c))
    far = median_of(lambda: ours.apply(lock_pairs, (ctx.Lock()._through_host(), LOCK_N)), repeat)
    rows.append(("the same lock, taken as from another node (pairs/s)", far, b, 1.0, c))


def array_case(ours: Any, mine: Any, ctx: Any, repeat: int, rows: list[Any]) -> None:
    import numpy as np
    import ray

    import shoal
    from shoal import _ray_objects as ro

    array = np.ones(ARRAY_MIB << 17)  # float64: ARRAY_MIB MiB
    # start-up, apart: the first share() of a process starts its array host (an
    # actor: a process), which the first read waits for
    gc.collect()
    time.sleep(2)
    start = time.perf_counter()
    cold = ctx.share(array)
    ours.map(total_of, [cold, cold], chunksize=1)
    took = time.perf_counter() - start
    print(f"first share() of a process (its array host to start): {took:.2f} s")
    del cold
    a = median_of(lambda: rate_array(ours, ctx.share, array), repeat)
    b = median_of(lambda: rate_array(ours, lambda x: [ray.put(x)], array), repeat)
    c = median_of(lambda: rate_array(mine, shoal.share, array), repeat)
    rows.append((f"{ARRAY_MIB} MiB array to two tasks (arrays/s)", a, b, 1.0, c))
    kept = ctx.share(array)
    views = ours.map(total_of, [kept, kept], chunksize=1)
    kept.view()  # (and the driver: three readers)
    where = ray.experimental.get_object_locations([kept._ref])[kept._ref]
    print(
        f"the shared version: {len(where['node_ids'])} copy in the object store "
        f"({where['object_size'] / (1 << 20):.0f} MiB) on a 1-node cluster, "
        f"read zero-copy by {len(views)} tasks and the driver; "
        f"array hosts: {len(ro._hosts)}"
    )
    del kept


def print_rows(rows: list[Any], repeat: int) -> None:
    import ray

    print(f"ray {ray.__version__}, {os.cpu_count()} CPUs, median [min-max] of {repeat}")
    for name, a, b, floor, c in rows:
        ratio = a[0] / b[0]
        mark = "ok" if ratio >= floor else "BELOW FLOOR"
        print(
            f"{name}\n  shoal ray {fmt(a[0]):>12} [{fmt(a[1])}-{fmt(a[2])}]"
            f"  ray's {fmt(b[0]):>12} [{fmt(b[1])}-{fmt(b[2])}]"
            f"  ratio {ratio:6.1f}x (floor {floor:g}x: {mark})"
            f"  shoal local {fmt(c[0])}"
        )


if __name__ == "__main__":
    sys.exit(main())
