"""What does a process pool cost with shoal, next to the standard library, loky and mpire?

Every pool has 2 workers (``WORKERS``: the development machine's CPU count, fixed so
that figures from other machines compare) and, where the peer allows it, the run's
start method (``fork`` by default).  loky's reusable executor refuses ``fork`` and
always uses loky's own start method; its workers are started before any timing, so
only the start-up rows would feel it, and it has none.  The questions (issue #5):

* map: 100,000 calls of a trivial function with ``map``, each pool with its own
  default chunking: ``multiprocessing.Pool.map`` (about four chunks per worker:
  12,500 calls a chunk), mpire's ``WorkerPool.map`` (64 chunks per worker) and
  ``shoal.Pool.map``.  Floors: shoal at least 1x the standard library and 1x mpire.
  The executors' ``map`` has one call per task by default, far too slow for 100,000
  calls, so ``ProcessPoolExecutor``, loky and ``shoal.Executor`` are given the
  standard library Pool's chunk size (for information).
* apply_async: 20,000 ``apply_async`` calls, one per item (the tutorial's style),
  then ``get()`` on each result.  Floor: shoal at least 3x
  ``multiprocessing.Pool.apply_async``.  mpire's ``apply_async`` for information.
* submit: 5,000 ``Executor.submit`` calls, then ``result()`` on each:
  ``ProcessPoolExecutor``, loky and ``shoal.Executor`` (for information).
* startup, startup-close: start a pool, run one task, shut it down (5 a repeat):
  ``with Pool(2) as p: p.apply(f, (1,))`` (``__exit__`` terminates) and the same
  ended with ``close()`` + ``join()``.  Floor: shoal no slower than the standard
  library, both ways.  ``startup-executor``: the same with ``with Executor(2)``
  (``shutdown(wait=True)``), for information.
* worker-death: a task reports its worker's pid through a ``shoal.Queue``, then
  sleeps; the parent SIGKILLs that worker and times from ``os.kill`` to the result
  raising.  ``ProcessPoolExecutor`` raises ``BrokenProcessPool`` and is broken for
  good (a fresh one is started, untimed, for every kill); shoal fails only that
  task with ``WorkerDiedError`` and replaces the worker.  ``multiprocessing.Pool``
  never raises: the task is lost and ``get()`` waits forever, so its row says so
  instead of a figure.  (mpire raises ``RuntimeError`` and stops its whole pool,
  whose ``terminate()`` then takes about a second: too slow a set-up to repeat
  here.)  Floor: shoal under 1 s (its median).

How it is timed: unlike the other benchmarks, the operations here are the parent's
calls (``map``, ``apply_async`` + ``get``, a pool's whole life), so the parent reads
the clock around them.  Pools are started in ``setup`` and warmed up (the harness's
untimed first run), except in the start-up groups, where the start is the point.
Blocking calls pass the run's ``--timeout`` (``map_async(...).get(timeout)``, the
standard library's own ``map``), so a hang fails the run instead of stalling it.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import signal
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

import shoal

from ._harness import (
    Benchmark,
    BenchmarkError,
    Case,
    Config,
    Floor,
    Group,
    Sample,
    close_pool,
    teardown,
)

WORKERS = 2
MAP_CALLS = 100_000  # issue #5: "100,000 calls of a trivial function"
MAP_REPEAT_CALLS = 300_000  # three maps of 100,000 a repeat: ~0.1 s for the fast pools
MPIRE_MAP_CALLS = 100_000  # one map a repeat: mpire does ~60-100 k calls/s
APPLY_TASKS = 20_000
MPIRE_APPLY_TASKS = 5_000  # ~5 k tasks/s
SUBMIT_TASKS = 5_000  # ProcessPoolExecutor and loky: ~3-5 k futures/s
POOL_LIVES = 5  # start + one task + shut-down, a repeat
SLEEP_S = 60.0  # the killed task's sleep: far longer than any wait for its error


# ---- task bodies (module level: spawn, forkserver and loky import them by name) --------


def _inc(x: int) -> int:
    """The trivial function every peer maps and applies."""
    return x + 1


def _report_pid_and_sleep(pids: Any, seconds: float) -> int:
    """Tell the parent which worker runs this task, then sleep until it is killed."""
    pids.put(os.getpid())
    time.sleep(seconds)
    return 0


# ---- peers --------------------------------------------------------------------------------


def _stdlib_chunksize(calls: int, workers: int = WORKERS) -> int:
    """``multiprocessing.Pool.map``'s default chunk size: about four chunks per worker."""
    return max(1, math.ceil(calls / (workers * 4)))


def _loky_executor(config: Config) -> Any:
    import loky  # optional peer: the cases require it

    # loky's reusable executor refuses fork, so it keeps its own start method; a long
    # idle timeout keeps its workers alive between the interleaved repeats
    return loky.get_reusable_executor(max_workers=WORKERS, timeout=3600)


def _mpire_pool(config: Config) -> Any:
    import mpire  # optional peer: the cases require it

    # keep_alive: the workers serve every map, as the other pools' do (its default
    # starts and stops them around each call); every other setting is mpire's default
    return mpire.WorkerPool(WORKERS, start_method=config.start_method, keep_alive=True)


class _Pool:
    """A started pool or executor of one peer (``kind``), and how to end it."""

    def __init__(self, config: Config, kind: str, pool: Any) -> None:
        self.config = config
        self.kind = kind
        self.pool = pool

    def close(self) -> None:
        if self.kind == "pool":
            close_pool(self.pool)
        elif self.kind == "mpire":
            self.pool.stop_and_join()
        else:
            self.pool.shutdown(wait=True)


def _setup(kind: str, make: Callable[[Config], Any]) -> Callable[[Config], _Pool]:
    def setup(config: Config) -> _Pool:
        return _Pool(config, kind, make(config))

    return setup


def _mp_pool(config: Config) -> Any:
    return config.ctx.Pool(WORKERS)


def _shoal_pool(config: Config) -> Any:
    return shoal.Pool(WORKERS, context=config.ctx)


def _process_pool_executor(config: Config) -> Any:
    return concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=config.ctx)


def _shoal_executor(config: Config) -> Any:
    return shoal.Executor(WORKERS, mp_context=config.ctx)


# ---- map ----------------------------------------------------------------------------------


def _check_map(results: list[int], calls: int) -> None:
    if len(results) != calls or results[-1] != calls:
        raise BenchmarkError(f"map returned {len(results)} results, the last {results[-1:]}")


def _maps(call_map: Callable[[_Pool, list[int]], list[int]]) -> Callable[[_Pool, int], Sample]:
    """``run``: maps of up to ``MAP_CALLS`` items until ``n`` calls are done."""

    def run(state: _Pool, n: int) -> Sample:
        size = min(n, MAP_CALLS)
        items = list(range(size))
        maps = max(1, n // size)
        start = perf_counter()
        for _ in range(maps):
            results = call_map(state, items)
        end = perf_counter()
        _check_map(results, size)
        return Sample(maps * size, start, end)

    return run


def _pool_map(state: _Pool, items: list[int]) -> list[int]:
    # map_async + get(timeout) is what both Pools' map() does, plus a deadline
    results: list[int] = state.pool.map_async(_inc, items).get(state.config.timeout)
    return results


def _executor_map(state: _Pool, items: list[int]) -> list[int]:
    chunksize = _stdlib_chunksize(len(items))
    return list(state.pool.map(_inc, items, chunksize=chunksize, timeout=state.config.timeout))


def _mpire_map(state: _Pool, items: list[int]) -> list[int]:
    results: list[int] = state.pool.map(_inc, items)
    return results


# ---- one task per item --------------------------------------------------------------------


def _deadline_left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _apply_all(state: _Pool, n: int) -> Sample:
    """``apply_async`` once per item, then ``get()`` each result (Pools and mpire)."""
    apply_async = state.pool.apply_async
    start = perf_counter()
    pending = [apply_async(_inc, (i,)) for i in range(n)]
    deadline = time.monotonic() + state.config.timeout
    last = None
    for result in pending:
        last = result.get(_deadline_left(deadline))
    end = perf_counter()
    if last != n:
        raise BenchmarkError(f"the last task returned {last!r}, not {n}")
    return Sample(n, start, end)


def _submit_all(state: _Pool, n: int) -> Sample:
    """``submit`` once per item, then ``result()`` on each future (executors)."""
    submit = state.pool.submit
    start = perf_counter()
    pending = [submit(_inc, i) for i in range(n)]
    deadline = time.monotonic() + state.config.timeout
    last = None
    for future in pending:
        last = future.result(_deadline_left(deadline))
    end = perf_counter()
    if last != n:
        raise BenchmarkError(f"the last future returned {last!r}, not {n}")
    return Sample(n, start, end)


# ---- a pool's whole life --------------------------------------------------------------------


def _lives(one_life: Callable[[Config], Any]) -> Callable[[Config, int], Sample]:
    """``run``: ``n`` pools started, given one task and ended, one after another."""

    def run(config: Config, n: int) -> Sample:
        start = perf_counter()
        for _ in range(n):
            if one_life(config) != 2:
                raise BenchmarkError("the pool's one task returned a wrong result")
        return Sample(n, start, perf_counter())

    return run


def _life_mp_with(config: Config) -> Any:
    with config.ctx.Pool(WORKERS) as pool:
        return pool.apply_async(_inc, (1,)).get(config.timeout)


def _life_shoal_with(config: Config) -> Any:
    with shoal.Pool(WORKERS, context=config.ctx) as pool:
        return pool.apply_async(_inc, (1,)).get(config.timeout)


def _life_mp_close(config: Config) -> Any:
    pool = config.ctx.Pool(WORKERS)
    try:
        result = pool.apply_async(_inc, (1,)).get(config.timeout)
    finally:
        pool.close()
        pool.join()
    return result


def _life_shoal_close(config: Config) -> Any:
    pool = shoal.Pool(WORKERS, context=config.ctx)
    try:
        result = pool.apply_async(_inc, (1,)).get(config.timeout)
    finally:
        pool.close()
        pool.join()
    return result


def _life_ppe(config: Config) -> Any:
    with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=config.ctx) as executor:
        return executor.submit(_inc, 1).result(config.timeout)


def _life_shoal_executor(config: Config) -> Any:
    with shoal.Executor(WORKERS, mp_context=config.ctx) as executor:
        return executor.submit(_inc, 1).result(config.timeout)


# ---- a worker's death ------------------------------------------------------------------------


class _Deaths:
    """What the worker-death cases share: the queue tasks report their pid on and,
    for shoal's rows, the one pool that lives through every kill."""

    def __init__(self, config: Config, kind: str, make: Callable[[Config], Any] | None) -> None:
        self.config = config
        self.kind = kind
        self.pids = shoal.Queue()
        self.pool: Any = None
        if make is not None:
            try:
                self.pool = make(config)
            except BaseException:
                self.pids.close()
                raise

    def close(self) -> None:
        try:
            if self.kind == "pool":
                # nothing is left to run, and the killed tasks' errors were collected
                self.pool.terminate()
                self.pool.join()
            elif self.pool is not None:
                _Pool(self.config, self.kind, self.pool).close()
        finally:
            self.pids.close()


def _deaths_setup(kind: str, make: Callable[[Config], Any] | None) -> Callable[[Config], _Deaths]:
    def setup(config: Config) -> _Deaths:
        return _Deaths(config, kind, make)

    return setup


def _kill_and_time(state: _Deaths, outcome: Callable[[float], Any], expected: type) -> float:
    """Wait for the sleeping task's pid, SIGKILL it and time until ``outcome``
    (``AsyncResult.get`` or ``Future.result``) raises ``expected``."""
    timeout = state.config.timeout
    pid = state.pids.get(timeout=timeout)
    start = perf_counter()
    os.kill(pid, signal.SIGKILL)
    try:
        outcome(timeout)
    except expected:
        return perf_counter() - start
    except BaseException as exc:
        raise BenchmarkError(
            f"killing worker {pid} raised {type(exc).__name__}, not {expected.__name__}: {exc}"
        ) from exc
    raise BenchmarkError(f"the task of worker {pid} returned after its worker was killed")


def _deaths(one_death: Callable[[_Deaths], float]) -> Callable[[_Deaths, int], Sample]:
    """``run``: ``n`` kills; the Sample spans only the kill-to-error times."""

    def run(state: _Deaths, n: int) -> Sample:
        spent = sum(one_death(state) for _ in range(n))
        return Sample(n, 0.0, spent)

    return run


def _wait_for_replacement(state: _Deaths) -> None:
    """Return once the pool has started the dead worker's replacement (untimed).

    The pool forks the replacement from its monitor thread right after it reports
    the death.  A fork made meanwhile by another thread (the next case's
    ``ProcessPoolExecutor``, the other shoal pool's monitor) would let one child
    inherit the other's sentinel pipe, and the death of that other child would go
    unnoticed while the first lives: ``ProcessPoolExecutor.shutdown`` hung this
    way.  So no case starts while a replacement is still being forked.  (This
    reads the engine's private worker list: there is no public one.)
    """
    workers = state.pool._engine._workers
    deadline = time.monotonic() + state.config.timeout
    while not all(process is not None and process.pid for process in workers):
        if time.monotonic() > deadline:
            raise BenchmarkError("the pool did not replace its killed worker in time")
        time.sleep(0.001)


def _death_shoal_pool(state: _Deaths) -> float:
    result = state.pool.apply_async(_report_pid_and_sleep, (state.pids, SLEEP_S))
    elapsed = _kill_and_time(state, result.get, shoal.WorkerDiedError)
    _wait_for_replacement(state)
    return elapsed


def _death_shoal_executor(state: _Deaths) -> float:
    future = state.pool.submit(_report_pid_and_sleep, state.pids, SLEEP_S)
    elapsed = _kill_and_time(state, future.result, shoal.WorkerDiedError)
    _wait_for_replacement(state)
    return elapsed


def _death_ppe(state: _Deaths) -> float:
    # the kill breaks the whole executor: a fresh one each time, its workers started
    # (by a first task) before the clock
    config = state.config
    executor = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=config.ctx)
    try:
        executor.submit(_inc, 1).result(config.timeout)
        future = executor.submit(_report_pid_and_sleep, state.pids, SLEEP_S)
        elapsed = _kill_and_time(state, future.result, concurrent.futures.process.BrokenProcessPool)
    except BaseException:
        # shutdown(wait=True) of an executor that missed its worker's death waits
        # forever: end its workers first (ours, by their Process objects)
        for process in list(executor._processes.values()):
            process.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
    return elapsed


def _not_measured(state: Any, n: int) -> Sample:
    raise BenchmarkError("this row is never measured")


# ---- the benchmark ----------------------------------------------------------------------------

MAP_CHUNK = _stdlib_chunksize(MAP_CALLS)
EXECUTOR_CHUNKS = f"chunksize={MAP_CHUNK:,} (stdlib Pool's)"
STDLIB_HANGS = (
    "hangs: the killed worker's task is lost and get() never returns; the pool starts a "
    "new worker and waits on"
)


def _pool_case(
    key: str,
    label: str,
    peer: str,
    run: Callable[[Any, int], Sample],
    n: int,
    setup: Callable[[Config], Any],
    where: str = "",
    quick_n: int | None = None,
) -> Case:
    requires = (peer,) if peer in ("loky", "mpire") else ()
    return Case(
        key,
        label,
        peer,
        run,
        n,
        quick_n=quick_n,
        where=where,
        setup=setup,
        teardown=teardown,
        requires=requires,
    )


def _life_case(key: str, label: str, peer: str, one_life: Callable[[Config], Any]) -> Case:
    return Case(key, label, peer, _lives(one_life), POOL_LIVES, quick_n=1)


def _death_case(
    key: str,
    label: str,
    peer: str,
    one_death: Callable[[_Deaths], float],
    where: str,
    kind: str = "",
    make: Callable[[Config], Any] | None = None,
) -> Case:
    return Case(
        key,
        label,
        peer,
        _deaths(one_death),
        1,
        quick_n=1,
        where=where,
        setup=_deaths_setup(kind, make),
        teardown=teardown,
    )


BENCHMARK = Benchmark(
    name="pool",
    question=__doc__.strip().splitlines()[0],
    groups=[
        Group(
            key="map",
            title=f"map of {MAP_CALLS:,} trivial calls, {WORKERS} workers",
            unit="calls/s",
            cases=[
                _pool_case(
                    "mp",
                    "multiprocessing.Pool.map",
                    "multiprocessing",
                    _maps(_pool_map),
                    MAP_REPEAT_CALLS,
                    _setup("pool", _mp_pool),
                    where=f"default chunks ({MAP_CHUNK:,})",
                    quick_n=1_000,
                ),
                _pool_case(
                    "ppe",
                    "ProcessPoolExecutor.map",
                    "multiprocessing",
                    _maps(_executor_map),
                    MAP_REPEAT_CALLS,
                    _setup("executor", _process_pool_executor),
                    where=EXECUTOR_CHUNKS,
                    quick_n=1_000,
                ),
                _pool_case(
                    "loky",
                    "loky.get_reusable_executor().map",
                    "loky",
                    _maps(_executor_map),
                    MAP_REPEAT_CALLS,
                    _setup("executor", _loky_executor),
                    where=EXECUTOR_CHUNKS,
                    quick_n=1_000,
                ),
                _pool_case(
                    "mpire",
                    "mpire.WorkerPool.map",
                    "mpire",
                    _maps(_mpire_map),
                    MPIRE_MAP_CALLS,
                    _setup("mpire", _mpire_pool),
                    where=f"default chunks ({WORKERS * 64} chunks)",
                    quick_n=1_000,
                ),
                _pool_case(
                    "shoal-executor",
                    "shoal.Executor.map",
                    "shoal",
                    _maps(_executor_map),
                    MAP_REPEAT_CALLS,
                    _setup("executor", _shoal_executor),
                    where=EXECUTOR_CHUNKS,
                    quick_n=1_000,
                ),
                _pool_case(
                    "shoal",
                    "shoal.Pool.map",
                    "shoal",
                    _maps(_pool_map),
                    MAP_REPEAT_CALLS,
                    _setup("pool", _shoal_pool),
                    where=f"default chunks ({MAP_CHUNK:,})",
                    quick_n=1_000,
                ),
            ],
        ),
        Group(
            key="apply_async",
            title=f"apply_async once per item, then get() each, {WORKERS} workers",
            unit="tasks/s",
            cases=[
                _pool_case(
                    "mp",
                    "multiprocessing.Pool.apply_async",
                    "multiprocessing",
                    _apply_all,
                    APPLY_TASKS,
                    _setup("pool", _mp_pool),
                    quick_n=200,
                ),
                _pool_case(
                    "mpire",
                    "mpire.WorkerPool.apply_async",
                    "mpire",
                    _apply_all,
                    MPIRE_APPLY_TASKS,
                    _setup("mpire", _mpire_pool),
                    quick_n=200,
                ),
                _pool_case(
                    "shoal",
                    "shoal.Pool.apply_async",
                    "shoal",
                    _apply_all,
                    APPLY_TASKS,
                    _setup("pool", _shoal_pool),
                    quick_n=200,
                ),
            ],
        ),
        Group(
            key="submit",
            title=f"Executor.submit once per item, then result() each, {WORKERS} workers",
            unit="tasks/s",
            cases=[
                _pool_case(
                    "ppe",
                    "ProcessPoolExecutor.submit",
                    "multiprocessing",
                    _submit_all,
                    SUBMIT_TASKS,
                    _setup("executor", _process_pool_executor),
                    quick_n=200,
                ),
                _pool_case(
                    "loky",
                    "loky.get_reusable_executor().submit",
                    "loky",
                    _submit_all,
                    SUBMIT_TASKS,
                    _setup("executor", _loky_executor),
                    quick_n=200,
                ),
                _pool_case(
                    "shoal",
                    "shoal.Executor.submit",
                    "shoal",
                    _submit_all,
                    SUBMIT_TASKS,
                    _setup("executor", _shoal_executor),
                    quick_n=200,
                ),
            ],
        ),
        Group(
            key="startup",
            title=f"with Pool({WORKERS}) as p: p.apply(f, (1,))  (start, one task, terminate)",
            unit="time per pool",
            time_per_op=True,
            cases=[
                _life_case("mp", "multiprocessing.Pool", "multiprocessing", _life_mp_with),
                _life_case("shoal", "shoal.Pool", "shoal", _life_shoal_with),
            ],
        ),
        Group(
            key="startup-close",
            title=f"Pool({WORKERS}), apply(f, (1,)), close(), join()",
            unit="time per pool",
            time_per_op=True,
            cases=[
                _life_case("mp", "multiprocessing.Pool", "multiprocessing", _life_mp_close),
                _life_case("shoal", "shoal.Pool", "shoal", _life_shoal_close),
            ],
        ),
        Group(
            key="startup-executor",
            title=f"with Executor({WORKERS}) as e: e.submit(f, 1).result()  (shutdown(wait=True))",
            unit="time per executor",
            time_per_op=True,
            cases=[
                _life_case("ppe", "ProcessPoolExecutor", "multiprocessing", _life_ppe),
                _life_case("shoal", "shoal.Executor", "shoal", _life_shoal_executor),
            ],
        ),
        Group(
            key="worker-death",
            title="A worker SIGKILLed mid-task: time from os.kill to the task's error",
            unit="time to error",
            time_per_op=True,
            cases=[
                _death_case(
                    "ppe",
                    "ProcessPoolExecutor.submit",
                    "multiprocessing",
                    _death_ppe,
                    "BrokenProcessPool (whole pool)",
                ),
                Case(
                    "mp",
                    "multiprocessing.Pool.apply_async",
                    "multiprocessing",
                    _not_measured,
                    1,
                    unavailable=STDLIB_HANGS,
                ),
                _death_case(
                    "shoal-executor",
                    "shoal.Executor.submit",
                    "shoal",
                    _death_shoal_executor,
                    "WorkerDiedError (that task)",
                    "executor",
                    _shoal_executor,
                ),
                _death_case(
                    "shoal",
                    "shoal.Pool.apply_async",
                    "shoal",
                    _death_shoal_pool,
                    "WorkerDiedError (that task)",
                    "pool",
                    _shoal_pool,
                ),
            ],
        ),
    ],
    floors=[
        Floor("map/shoal", "map/mp", 1, "shoal.Pool.map vs multiprocessing.Pool.map"),
        Floor("map/shoal", "map/mpire", 1, "shoal.Pool.map vs mpire.WorkerPool.map"),
        Floor(
            "apply_async/shoal",
            "apply_async/mp",
            3,
            "shoal.Pool.apply_async vs multiprocessing.Pool.apply_async, one task per item",
        ),
        Floor(
            "startup/shoal",
            "startup/mp",
            1,
            "shoal.Pool vs multiprocessing.Pool: start, one task, terminate",
        ),
        Floor(
            "startup-close/shoal",
            "startup-close/mp",
            1,
            "shoal.Pool vs multiprocessing.Pool: start, one task, close + join",
        ),
        Floor(
            "startup-executor/shoal",
            "startup-executor/ppe",
            1,
            "shoal.Executor vs ProcessPoolExecutor: with-block, one task (issue #11)",
        ),
        Floor.within("worker-death/shoal", 1.0, "shoal.Pool: worker SIGKILLed to WorkerDiedError"),
        Floor.within(
            "worker-death/shoal-executor",
            1.0,
            "shoal.Executor: worker SIGKILLed to WorkerDiedError",
        ),
    ],
)
