"""How fast do processes read and write shared data with shoal, next to the standard library?

The standard library's answers are a Manager server (``Manager().dict()``: every
call a socket round trip), ``multiprocessing.Value`` under its lock, and pickling a
numpy array into every Pool task.  The questions (issue #4):

* dict: ``SharedDict`` set and get from a Pool worker, against ``Manager().dict()``
  in the same place (floor: 50x each) and UltraDict when installed;
* counters: atomic increments of one shared integer from 2 processes, against
  ``multiprocessing.Value`` incremented under ``get_lock()`` (floor: 5x);
* arrays: passing a big float64 array to 2 Pool workers, rounds per second, for two
  array sizes: workers that only read one element (the cost of dispatch: shoal's
  should not depend on the size, since only a handle travels, and stay under 10 ms a
  round; the standard library pickles the array per task), and workers that sum half.

Memory (no extra copy) is measured by ``benchmarks/memory_array.py``, which sums the
proportional set size (PSS) of every process while the workers hold the array.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import shoal

from ._harness import (
    Benchmark,
    Case,
    Config,
    Floor,
    Group,
    Resources,
    Sample,
    run_in_pool,
    run_processes,
    teardown,
    with_manager,
)

# ---- worker bodies (module level: spawn and forkserver import them by name) -----------


def _dict_sets(d: Any, n: int) -> Sample:
    for i in range(min(n // 10, 1000)):  # warm-up: attach, first growths
        d[i] = i
    start = perf_counter()
    for i in range(n):
        d[i] = i
    return Sample(n, start, perf_counter())


def _dict_gets(d: Any, n: int) -> Sample:
    keys = min(n, 1000)
    for i in range(keys):
        d[i] = i
    get = d.__getitem__
    for i in range(keys):
        get(i)
    start = perf_counter()
    for i in range(n):
        get(i % keys)
    return Sample(n, start, perf_counter())


def _increment_under_lock(start: Any, value: Any, n: int, timeout: float) -> Sample:
    lock = value.get_lock()
    start.wait(timeout)
    begin = perf_counter()
    for _ in range(n):
        with lock:
            value.value += 1
    return Sample(n, begin, perf_counter())


def _increment_atomic(start: Any, value: Any, n: int, timeout: float) -> Sample:
    add = value.add
    start.wait(timeout)
    begin = perf_counter()
    for _ in range(n):
        add(1)
    return Sample(n, begin, perf_counter())


def _touch(array: Any, half: int) -> float:
    return float(array[half * (len(array) - 1)])


def _sum_half(array: Any, half: int) -> float:
    n = len(array) // 2
    return float(array[half * n : (half + 1) * n].sum())


# ---- cases -------------------------------------------------------------------------------


def _manager_dict(config: Config) -> Resources:
    d, manager = with_manager(config, lambda m: m.dict())
    return Resources(config, d, pool=config.ctx.Pool(1), manager=manager)


def _shoal_dict(config: Config) -> Resources:
    return Resources(config, shoal.SharedDict(), pool=config.ctx.Pool(1))


class _UltraDictState(Resources):
    def close(self) -> None:
        super().close()
        self.obj.unlink()


def _ultradict(config: Config) -> Resources:
    from UltraDict import UltraDict

    return _UltraDictState(config, UltraDict(), pool=config.ctx.Pool(1))


def _in_pool(body: Any) -> Any:
    def run(state: Resources, n: int) -> Sample:
        sample: Sample = run_in_pool(state.config, state.pool, body, (state.obj, n))
        return sample

    return run


def _mp_value(config: Config) -> Resources:
    return Resources(config, config.ctx.Value("q", 0))


def _shoal_value(config: Config) -> Resources:
    return Resources(config, shoal.Value("q", 0))


def _two_processes(body: Any) -> Any:
    def run(state: Resources, n: int) -> Sample:
        config = state.config
        args = (state.obj, n, config.timeout)
        return Sample.combine(run_processes(config, body, [args, args]))

    return run


def _array_state(size_mib: int, shared: bool) -> Any:
    def setup(config: Config) -> Resources:
        import numpy as np

        length = (8 if config.quick else size_mib) * 2**20 // 8
        array = np.arange(length, dtype=np.float64)
        if shared:
            array = shoal.share(array)
        return Resources(config, array, pool=config.ctx.Pool(2))

    return setup


def _rounds(task: Any) -> Any:
    def run(state: Resources, n: int) -> Sample:
        pool, array = state.pool, state.obj
        pool.starmap(task, [(array, 0), (array, 1)])  # warm-up: workers attach
        start = perf_counter()
        for _ in range(n):
            pool.starmap(task, [(array, 0), (array, 1)])
        return Sample(n, start, perf_counter())

    return run


POOL_ARG = "Pool task arg"
PROCESS_ARG = "Process arg (inherited)"
DICT_OPS = 200_000  # SharedDict: ~0.1-0.5 s
MANAGER_OPS = 3_000  # ~10-20 k round trips/s: ~0.2 s
INCREMENTS = 200_000  # per process
SMALL_MIB, BIG_MIB = 64, 512
_NO_SHARE = None if hasattr(shoal, "share") else "shoal.share() is not in this build"


def _array_group(size_mib: int, task: Any, what: str) -> Group:
    return Group(
        key=f"{'sum' if task is _sum_half else 'dispatch'}{size_mib}",
        title=f"A {size_mib} MiB float64 array to 2 Pool workers that each {what}",
        unit="rounds/s",
        cases=[
            Case(
                key="mp",
                label="numpy array (pickled per task)",
                peer="multiprocessing",
                run=_rounds(task),
                n=3 if size_mib >= BIG_MIB else 10,
                quick_n=1,
                where=POOL_ARG,
                setup=_array_state(size_mib, shared=False),
                teardown=teardown,
                requires=("numpy",),
            ),
            Case(
                key="shoal",
                label="shoal.share(array)",
                peer="shoal",
                run=_rounds(task),
                n=50,
                quick_n=2,
                where=POOL_ARG,
                setup=_array_state(size_mib, shared=True),
                teardown=teardown,
                requires=("numpy",),
                unavailable=_NO_SHARE,
            ),
        ],
    )


def _dict_group(key: str, title: str, body: Any) -> Group:
    return Group(
        key=key,
        title=title,
        unit="ops/s",
        cases=[
            Case(
                key="manager",
                label="multiprocessing.Manager().dict()",
                peer="multiprocessing",
                run=_in_pool(body),
                n=MANAGER_OPS,
                quick_n=20,
                where=POOL_ARG,
                setup=_manager_dict,
                teardown=teardown,
            ),
            Case(
                key="ultradict",
                label="UltraDict()",
                peer="UltraDict",
                run=_in_pool(body),
                n=DICT_OPS // 10,
                where=POOL_ARG,
                setup=_ultradict,
                teardown=teardown,
                requires=("UltraDict",),
            ),
            Case(
                key="shoal",
                label="shoal.SharedDict()",
                peer="shoal",
                run=_in_pool(body),
                n=DICT_OPS,
                where=POOL_ARG,
                setup=_shoal_dict,
                teardown=teardown,
            ),
        ],
    )


BENCHMARK = Benchmark(
    name="shared",
    question=__doc__.strip().splitlines()[0],
    groups=[
        _dict_group("dict_set", "Dict set from a Pool worker: d[i] = i", _dict_sets),
        _dict_group("dict_get", "Dict get from a Pool worker: d[i]", _dict_gets),
        Group(
            key="counter",
            title="2 processes increment one shared integer",
            unit="increments/s",
            cases=[
                Case(
                    key="mp_locked",
                    label="multiprocessing.Value('q') under get_lock()",
                    peer="multiprocessing",
                    run=_two_processes(_increment_under_lock),
                    n=INCREMENTS // 4,
                    where=PROCESS_ARG,
                    setup=_mp_value,
                    teardown=teardown,
                ),
                Case(
                    key="shoal_locked",
                    label="shoal.Value('q') under get_lock()",
                    peer="shoal",
                    run=_two_processes(_increment_under_lock),
                    n=INCREMENTS // 2,
                    where=PROCESS_ARG,
                    setup=_shoal_value,
                    teardown=teardown,
                ),
                Case(
                    key="shoal_atomic",
                    label="shoal.Value('q').add(1)",
                    peer="shoal",
                    run=_two_processes(_increment_atomic),
                    n=INCREMENTS,
                    where=PROCESS_ARG,
                    setup=_shoal_value,
                    teardown=teardown,
                ),
            ],
        ),
        _array_group(SMALL_MIB, _touch, "read one element (dispatch only)"),
        _array_group(BIG_MIB, _touch, "read one element (dispatch only)"),
        _array_group(SMALL_MIB, _sum_half, "sum half"),
        _array_group(BIG_MIB, _sum_half, "sum half"),
    ],
    floors=[
        Floor("dict_set/shoal", "dict_set/manager", 50.0, "SharedDict set vs Manager().dict()"),
        Floor("dict_get/shoal", "dict_get/manager", 50.0, "SharedDict get vs Manager().dict()"),
        Floor(
            "counter/shoal_atomic",
            "counter/mp_locked",
            5.0,
            "atomic increments vs multiprocessing.Value under get_lock()",
        ),
    ],
)
