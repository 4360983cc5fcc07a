"""What does it cost to synchronise processes with shoal, next to the standard library?

The standard library cannot pass a ``multiprocessing.Lock`` to a ``Pool`` task: its
only way is ``Manager().Lock()``, a server process where every call is a socket
round trip.  shoal's Lock pickles as a handle to shared memory, so the questions
are (issue #2):

* uncontended: how many acquire+release pairs a second does a worker get from a
  lock it received as a Pool task argument, against ``Manager().Lock()`` in the same
  place (floor: 100x) and against a plain ``multiprocessing.Lock`` inherited by a
  ``Process`` (floor: 0.5x), the fastest thing the standard library has;
* contended: two processes hammering one lock, total pairs a second;
* round trips: two processes bouncing control with a pair of Events
  (set / wait / clear) or a pair of Semaphores (release / acquire).

Every figure is counted inside the worker, after its start-up, its set-up and (for
two workers) a start barrier; loops bind ``acquire``/``release`` to locals, so the
figure is the primitive's cost and not an attribute lookup.
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


def _warmup_ops(n: int) -> int:
    # Untimed operations inside the worker before its clock starts: the first calls
    # on a freshly unpickled object attach a segment or open the Manager's socket.
    return max(1, min(n // 10, 10_000))


# ---- worker bodies (module level: spawn and forkserver import them by name) -----------


def _pairs(lock: Any, n: int) -> Sample:
    acquire, release = lock.acquire, lock.release
    for _ in range(_warmup_ops(n)):
        acquire()
        release()
    start = perf_counter()
    for _ in range(n):
        acquire()
        release()
    return Sample(n, start, perf_counter())


def _pairs_task(lock: Any, n: int) -> Sample:
    """Pool task: uncontended pairs on a lock received as a task argument."""
    return _pairs(lock, n)


def _pairs_process(start: Any, lock: Any, n: int, timeout: float) -> Sample:
    """Process body: uncontended pairs on a lock received as a Process argument."""
    start.wait(timeout)
    return _pairs(lock, n)


def _contended_process(start: Any, lock: Any, n: int, timeout: float) -> Sample:
    """One of two processes taking the same lock ``n`` times, clocks started together."""
    acquire, release = lock.acquire, lock.release
    for _ in range(_warmup_ops(n)):
        acquire()
        release()
    start.wait(timeout)
    begin = perf_counter()
    for _ in range(n):
        acquire()
        release()
    return Sample(n, begin, perf_counter())


def _event_pingpong(
    start: Any, initiator: bool, ping: Any, pong: Any, n: int, timeout: float
) -> Sample | None:
    """Event ping-pong; the initiator times ``n`` round trips.

    Initiator: set ping, wait pong, clear pong.  Responder: wait ping, clear ping,
    set pong.  Each side clears the flag it waited on before the other can set it
    again, so no round trip is lost or doubled.
    """

    def rounds(count: int) -> None:
        if initiator:
            for _ in range(count):
                ping.set()
                pong.wait()
                pong.clear()
        else:
            for _ in range(count):
                ping.wait()
                ping.clear()
                pong.set()

    rounds(_warmup_ops(n))
    start.wait(timeout)
    begin = perf_counter()
    rounds(n)
    return Sample(n, begin, perf_counter()) if initiator else None


def _semaphore_pingpong(
    start: Any, initiator: bool, ping: Any, pong: Any, n: int, timeout: float
) -> Sample | None:
    """Semaphore ping-pong (both start at 0); the initiator times ``n`` round trips.

    Initiator: release ping, acquire pong.  Responder: acquire ping, release pong.
    """
    if initiator:
        give, take = ping.release, pong.acquire
    else:
        give, take = pong.release, ping.acquire

    def rounds(count: int) -> None:
        if initiator:
            for _ in range(count):
                give()
                take()
        else:
            for _ in range(count):
                take()
                give()

    rounds(_warmup_ops(n))
    start.wait(timeout)
    begin = perf_counter()
    rounds(n)
    return Sample(n, begin, perf_counter()) if initiator else None


# ---- cases -------------------------------------------------------------------------------


def _mp_lock(config: Config) -> Resources:
    return Resources(config, config.ctx.Lock())


def _shoal_lock(config: Config) -> Resources:
    return Resources(config, shoal.Lock())


def _manager_lock_in_pool(config: Config) -> Resources:
    lock, manager = with_manager(config, lambda m: m.Lock())
    return Resources(config, lock, pool=config.ctx.Pool(1), manager=manager)


def _shoal_lock_in_pool(config: Config) -> Resources:
    return Resources(config, shoal.Lock(), pool=config.ctx.Pool(1))


def _run_pairs_in_pool(state: Resources, n: int) -> Sample:
    sample: Sample = run_in_pool(state.config, state.pool, _pairs_task, (state.objects[0], n))
    return sample


def _run_pairs_in_process(state: Resources, n: int) -> Sample:
    config = state.config
    sample: Sample = run_processes(config, _pairs_process, [(state.objects[0], n, config.timeout)])[
        0
    ]
    return sample


def _run_contended(state: Resources, n: int) -> Sample:
    config = state.config
    args = (state.objects[0], n, config.timeout)
    return Sample.combine(run_processes(config, _contended_process, [args, args]))


def _mp_events(config: Config) -> Resources:
    return Resources(config, config.ctx.Event(), config.ctx.Event())


def _shoal_events(config: Config) -> Resources:
    return Resources(config, shoal.Event(), shoal.Event())


def _mp_semaphores(config: Config) -> Resources:
    return Resources(config, config.ctx.Semaphore(0), config.ctx.Semaphore(0))


def _shoal_semaphores(config: Config) -> Resources:
    return Resources(config, shoal.Semaphore(0), shoal.Semaphore(0))


def _pingpong_runner(body: Any) -> Any:
    def run(state: Resources, n: int) -> Sample:
        config = state.config
        ping, pong = state.objects
        initiator, _ = run_processes(
            config,
            body,
            [(True, ping, pong, n, config.timeout), (False, ping, pong, n, config.timeout)],
        )
        return initiator

    return run


_run_event_pingpong = _pingpong_runner(_event_pingpong)
_run_semaphore_pingpong = _pingpong_runner(_semaphore_pingpong)

POOL_ARG = "Pool task arg"
PROCESS_ARG = "Process arg (inherited)"
# Sizes: each repeat should last 0.1 to 0.5 s, long against scheduler noise on a
# shared 2-core machine, short enough that the whole run takes well under a minute.
PAIRS = 2_000_000  # ~0.2 s at the ~10 M pairs/s of an uncontended lock
MANAGER_PAIRS = 5_000  # a socket round trip per call, ~10-20 k pairs/s: ~0.3 s
CONTENDED_PAIRS = 1_000_000  # per process
ROUND_TRIPS = 20_000  # ~0.1 s at 150 k round trips/s, ~1 s at the slowest peer

BENCHMARK = Benchmark(
    name="lock",
    question=__doc__.strip().splitlines()[0],
    groups=[
        Group(
            key="uncontended",
            title="Uncontended acquire+release pairs, one worker",
            unit="pairs/s",
            cases=[
                Case(
                    "mp-process",
                    "multiprocessing.Lock",
                    "multiprocessing",
                    _run_pairs_in_process,
                    PAIRS,
                    where=PROCESS_ARG,
                    setup=_mp_lock,
                    teardown=teardown,
                ),
                Case(
                    "manager-pool",
                    "multiprocessing.Manager().Lock()",
                    "multiprocessing",
                    _run_pairs_in_pool,
                    MANAGER_PAIRS,
                    quick_n=10,
                    where=POOL_ARG,
                    setup=_manager_lock_in_pool,
                    teardown=teardown,
                ),
                Case(
                    "shoal-pool",
                    "shoal.Lock",
                    "shoal",
                    _run_pairs_in_pool,
                    PAIRS,
                    where=POOL_ARG,
                    setup=_shoal_lock_in_pool,
                    teardown=teardown,
                ),
                Case(
                    "shoal-process",
                    "shoal.Lock",
                    "shoal",
                    _run_pairs_in_process,
                    PAIRS,
                    where=PROCESS_ARG,
                    setup=_shoal_lock,
                    teardown=teardown,
                ),
            ],
        ),
        Group(
            key="contended",
            title="Contended: 2 processes acquire+release one lock, total pairs",
            unit="pairs/s",
            cases=[
                Case(
                    "mp",
                    "multiprocessing.Lock",
                    "multiprocessing",
                    _run_contended,
                    CONTENDED_PAIRS,
                    where=PROCESS_ARG,
                    setup=_mp_lock,
                    teardown=teardown,
                ),
                Case(
                    "shoal",
                    "shoal.Lock",
                    "shoal",
                    _run_contended,
                    CONTENDED_PAIRS,
                    where=PROCESS_ARG,
                    setup=_shoal_lock,
                    teardown=teardown,
                ),
            ],
        ),
        Group(
            key="event",
            title="Event ping-pong between 2 processes (set / wait / clear)",
            unit="round trips/s",
            cases=[
                Case(
                    "mp",
                    "multiprocessing.Event",
                    "multiprocessing",
                    _run_event_pingpong,
                    ROUND_TRIPS,
                    where=PROCESS_ARG,
                    setup=_mp_events,
                    teardown=teardown,
                ),
                Case(
                    "shoal",
                    "shoal.Event",
                    "shoal",
                    _run_event_pingpong,
                    ROUND_TRIPS,
                    where=PROCESS_ARG,
                    setup=_shoal_events,
                    teardown=teardown,
                ),
            ],
        ),
        Group(
            key="semaphore",
            title="Semaphore ping-pong between 2 processes (release / acquire)",
            unit="round trips/s",
            cases=[
                Case(
                    "mp",
                    "multiprocessing.Semaphore",
                    "multiprocessing",
                    _run_semaphore_pingpong,
                    ROUND_TRIPS,
                    where=PROCESS_ARG,
                    setup=_mp_semaphores,
                    teardown=teardown,
                ),
                Case(
                    "shoal",
                    "shoal.Semaphore",
                    "shoal",
                    _run_semaphore_pingpong,
                    ROUND_TRIPS,
                    where=PROCESS_ARG,
                    setup=_shoal_semaphores,
                    teardown=teardown,
                ),
            ],
        ),
    ],
    floors=[
        Floor(
            "uncontended/shoal-pool",
            "uncontended/manager-pool",
            100,
            "shoal.Lock in a Pool task vs Manager().Lock() in a Pool task",
        ),
        Floor(
            "uncontended/shoal-pool",
            "uncontended/mp-process",
            0.5,
            "shoal.Lock in a Pool task vs multiprocessing.Lock inherited by a Process",
        ),
    ],
)
