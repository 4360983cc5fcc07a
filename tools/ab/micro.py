"""Per-operation costs (ns) of the paths the C glue serves: queue put/get (fast-coded
scalars, tuples, pickles), SharedDict get/set, Lock acquire/release, Value.add.

For an A/B of two builds of shoal (#12: the glue before and after a restructure), run
it with each build's interpreter in turn, several times, and compare the best of each
(medians swing 2x on a shared 2-core machine)::

    git worktree add /tmp/before REV
    python3 -m venv /tmp/vb && /tmp/vb/bin/pip install /tmp/before
    for i in 1 2 3 4 5 6; do
        /tmp/vb/bin/python tools/ab/micro.py; .venv/bin/python tools/ab/micro.py
    done
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import shoal


def per_op_ns(fn: Callable[[int], None], n: int) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        fn(n)
        runs.append((time.perf_counter() - start) / n * 1e9)
    return statistics.median(runs)


def main() -> None:
    q = shoal.Queue()
    d: shoal.SharedDict = shoal.SharedDict()
    lock = shoal.Lock()
    value = shoal.Value("q", 0)

    def round_trip(item: object) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                q.put(item)
                q.get()

        return run

    def dict_set(n: int) -> None:
        for i in range(n):
            d[i & 1023] = i

    def dict_get(n: int) -> None:
        for i in range(n):
            d.get(i & 1023)

    def dict_object(n: int) -> None:
        for i in range(n):
            d["k"] = [i]
            d["k"]

    def lock_round(n: int) -> None:
        for _ in range(n):
            lock.acquire()
            lock.release()

    def value_add(n: int) -> None:
        for _ in range(n):
            value.add(1)

    cases = [
        ("queue_int", round_trip(1), 20000),
        ("queue_tuple", round_trip((1, 2.0, "three", b"four")), 20000),
        ("queue_pickle", round_trip({"a": [1, 2]}), 10000),
        ("dict_set", dict_set, 20000),
        ("dict_get", dict_get, 50000),
        ("dict_obj", dict_object, 5000),
        ("lock", lock_round, 50000),
        ("value_add", value_add, 50000),
    ]
    print(" ".join(f"{name}={per_op_ns(fn, n):.0f}" for name, fn, n in cases))
    q.close()
    d.close()
    lock.close()


if __name__ == "__main__":
    main()
