"""How fast do items move between two processes through a shoal queue, next to the standard library?

One producer process puts, one consumer process gets (issue #3).  The questions:

* ints, tuples: 200,000 small items (ints; then small tuples ``(i, str(i))``, which
  take pickle's path), in one table per kind.  Single calls, one ``put`` and one
  ``get`` per item: ``multiprocessing.Queue`` (the baseline and the denominator),
  ``Manager().Queue()`` (fewer items: a socket round trip per call), faster-fifo's
  ``Queue`` and ``shoal.Queue``.  Batches of 1,000: faster-fifo's and shoal's
  ``put_many``/``get_many``; the standard library has no batch call, so its single
  calls stay the denominator, and a ``multiprocessing.Queue`` carrying each batch as
  one list shows what batching by hand gets.  Floors: shoal's single calls at least
  3x the baseline; its batches at least 10x the baseline and 1.5x faster-fifo's.
* pool: a writer task and a reader task of a 2-worker ``Pool`` sharing a queue they
  got as a task argument: ``Manager().Queue()`` (the standard library's only way)
  against ``shoal.Queue``.  Floor: 30x.  (``multiprocessing.Queue`` raises
  ``RuntimeError`` when pickled into a Pool task.)
* numpy: 1 MiB float64 arrays, in bytes a second.  The consumer reads the first and
  last element of each array it gets.  Floor: shoal at least 3x the baseline.

How it is timed: both sides start, receive the queue and move a few untimed items
(attaching segments, opening sockets), then meet at a start barrier; each reads the
clock after it.  The figure is the items the consumer got over the span from the
first side's start to the last side's end (the consumer's last ``get``).  Neither
process start-up nor pickling the queue into a task is inside it.  The queues keep
their default sizes, except faster-fifo's, raised to 8 MiB for the arrays (its
default 1 MB buffer cannot hold a 1 MiB message).
"""

from __future__ import annotations

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
    run_processes,
    run_tasks_in_pool,
    teardown,
    with_manager,
)

SMALL_ITEMS = 200_000  # issue #3: "200,000 small items"
MANAGER_ITEMS = 20_000  # ~40 k items/s through the Manager's socket: ~0.5 s
ARRAYS = 200  # 1 MiB each: ~0.1-0.3 s at 1-2 GB/s
BATCH = 1_000
ARRAY_FLOATS = 131_072  # float64: 1 MiB
ARRAY_BYTES = ARRAY_FLOATS * 8
FASTER_FIFO_ARRAY_BYTES = 8 << 20  # room for a few 1 MiB messages

# how each peer is called: the loops below bind the methods to locals
SHOAL, MP, MANAGER, FASTER_FIFO = "shoal", "mp", "manager", "faster_fifo"
SINGLE, BATCHED, LISTS = "single", "batched", "lists"  # put/get, put_many/get_many, lists
INTS, TUPLES, ARRAYS_KIND = "int", "tuple", "array"


def _warmup_items(n: int) -> int:
    # untimed items before the clock starts: the first calls on a freshly received
    # queue attach its segment or open the Manager's socket
    return max(1, min(n // 10, 1_000))


def _items(kind: str, n: int) -> list[Any]:
    """The ``n`` items a producer sends, built before its clock starts."""
    if kind == INTS:
        return list(range(n))
    if kind == TUPLES:
        return [(i, str(i)) for i in range(n)]
    # numpy is optional (the cases require it): imported where used
    import numpy

    array = numpy.arange(ARRAY_FLOATS, dtype=numpy.float64)
    # one array sent n times: every put still pickles or copies it afresh, and nobody
    # writes to it, so multiprocessing's feeder thread (which pickles later, in the
    # background) sends exactly what was put
    return [array] * n


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


# ---- worker bodies (module level: spawn, forkserver and Pool tasks import them by name) --


def _put_all(peer: str, mode: str, q: Any, items: list[Any], timeout: float) -> None:
    """Put ``items`` the way ``peer`` and ``mode`` say, each call as users write it."""
    if mode == SINGLE:
        put = q.put
        if peer == FASTER_FIFO:  # its block/timeout are positional, default timeout 10 s
            for item in items:
                put(item, True, timeout)
        else:
            for item in items:
                put(item)
        return
    batches = _batches(items)
    if mode == LISTS:
        put = q.put
        for batch in batches:
            put(batch)
    elif peer == FASTER_FIFO:
        put_many = q.put_many
        for batch in batches:
            put_many(batch, True, timeout)
    else:
        put_many = q.put_many
        for batch in batches:
            put_many(batch)


def _get_all(peer: str, mode: str, q: Any, kind: str, n: int, timeout: float) -> Any:
    """Get ``n`` items; return the last (arrays: check both ends of each on the way)."""
    last: Any = None
    if kind == ARRAYS_KIND:
        get = q.get
        args = (True, timeout) if peer == FASTER_FIFO else ()
        for _ in range(n):
            last = get(*args)
            if last[0] != 0.0 or last[-1] != ARRAY_FLOATS - 1:
                raise BenchmarkError(f"array arrived wrong: [{last[0]}, ..., {last[-1]}]")
        return last
    if mode == SINGLE:
        get = q.get
        if peer == FASTER_FIFO:
            for _ in range(n):
                last = get(True, timeout)
        else:
            for _ in range(n):
                last = get()
        return last
    got = 0
    if mode == LISTS:
        get = q.get
        while got < n:
            batch = get()
            got += len(batch)
    elif peer == FASTER_FIFO:
        get_many = q.get_many
        while got < n:
            batch = get_many(True, timeout, BATCH)
            got += len(batch)
    else:
        get_many = q.get_many
        while got < n:
            batch = get_many(BATCH)
            got += len(batch)
    if got != n:
        raise BenchmarkError(f"got {got} items, {n} were put")
    return batch[-1]


def _producer(
    start: Any, peer: str, mode: str, q: Any, kind: str, n: int, timeout: float
) -> Sample:
    """Put ``n`` items of ``kind`` after the start barrier (and a few before it)."""
    _put_all(peer, mode, q, _items(kind, _warmup_items(n)), timeout)
    items = _items(kind, n)
    start.wait(timeout)
    begin = perf_counter()
    _put_all(peer, mode, q, items, timeout)
    return Sample(n, begin, perf_counter())


def _consumer(
    start: Any, peer: str, mode: str, q: Any, kind: str, n: int, timeout: float
) -> Sample:
    """Get the producer's warm-up items, then time getting its ``n`` items."""
    _get_all(peer, mode, q, kind, _warmup_items(n), timeout)
    start.wait(timeout)
    begin = perf_counter()
    last = _get_all(peer, mode, q, kind, n, timeout)
    end = perf_counter()
    if kind != ARRAYS_KIND and last != _items(kind, n)[-1]:
        raise BenchmarkError(f"the last item was {last!r}, not the last one put")
    return Sample(n, begin, end)


def _process_worker(
    start: Any, role: str, peer: str, mode: str, q: Any, kind: str, n: int, timeout: float
) -> Sample:
    """Body of a producer or consumer ``Process`` (``start``: the harness's barrier)."""
    body = _producer if role == "producer" else _consumer
    return body(start, peer, mode, q, kind, n, timeout)


# ---- cases -------------------------------------------------------------------------------


class _Queue:
    """What a case set up: the queue and how to reach it, plus a Pool and a Manager."""

    def __init__(
        self,
        config: Config,
        peer: str,
        mode: str,
        kind: str,
        q: Any,
        *,
        pool: Any = None,
        manager: Any = None,
        barrier: Any = None,
    ) -> None:
        self.config = config
        self.peer = peer
        self.mode = mode
        self.kind = kind
        self.q = q
        self.pool = pool
        self.manager = manager
        self.barrier = barrier

    def close(self) -> None:
        if self.pool is not None:
            close_pool(self.pool)
        if isinstance(self.barrier, shoal.Barrier):
            self.barrier.close()
        if self.peer == MP:
            self.q.close()
            self.q.join_thread()
        elif self.peer in (SHOAL, FASTER_FIFO):
            self.q.close()
        if self.manager is not None:
            self.manager.shutdown()


def _new_queue(config: Config, peer: str, kind: str) -> tuple[Any, Any]:
    """(queue, manager or None) for ``peer``, each at its default size."""
    if peer == MP:
        return config.ctx.Queue(), None
    if peer == SHOAL:
        return shoal.Queue(), None
    if peer == FASTER_FIFO:
        import faster_fifo  # optional peer: the cases require it

        if kind == ARRAYS_KIND:
            return faster_fifo.Queue(max_size_bytes=FASTER_FIFO_ARRAY_BYTES), None
        return faster_fifo.Queue(), None
    return with_manager(config, lambda m: m.Queue())


def _setup(peer: str, mode: str, kind: str) -> Any:
    def setup(config: Config) -> _Queue:
        q, manager = _new_queue(config, peer, kind)
        return _Queue(config, peer, mode, kind, q, manager=manager)

    return setup


def _setup_pool(peer: str) -> Any:
    """A 2-worker Pool, a queue and a start barrier both tasks receive as arguments."""

    def setup(config: Config) -> _Queue:
        q, manager = _new_queue(config, peer, INTS)
        state = _Queue(config, peer, SINGLE, INTS, q, manager=manager)
        try:
            state.barrier = manager.Barrier(2) if manager is not None else shoal.Barrier(2)
            state.pool = config.ctx.Pool(2)
        except BaseException:
            state.close()
            raise
        return state

    return setup


def _span(producer: Sample, consumer: Sample, scale: int) -> Sample:
    # the consumer's items over both sides' span; ``scale`` turns items into bytes
    return Sample(
        consumer.ops * scale,
        min(producer.start, consumer.start),
        max(producer.end, consumer.end),
    )


def _run_processes(state: _Queue, n: int) -> Sample:
    config = state.config
    common = (state.peer, state.mode, state.q, state.kind, n, config.timeout)
    producer, consumer = run_processes(
        config, _process_worker, [("producer", *common), ("consumer", *common)]
    )
    return _span(producer, consumer, ARRAY_BYTES if state.kind == ARRAYS_KIND else 1)


def _run_pool_tasks(state: _Queue, n: int) -> Sample:
    config = state.config
    args = (state.barrier, state.peer, state.mode, state.q, state.kind, n, config.timeout)
    producer, consumer = run_tasks_in_pool(
        config, state.pool, [(_producer, args), (_consumer, args)]
    )
    return _span(producer, consumer, 1)


PROCESS_ARG = "Process arg (inherited)"
POOL_ARG = "Pool task arg"
MP_QUEUE = "multiprocessing.Queue"
MANAGER_QUEUE = "multiprocessing.Manager().Queue()"


def _case(
    key: str,
    label: str,
    peer: str,
    mode: str,
    kind: str,
    n: int,
    quick_n: int | None = None,
) -> Case:
    requires: tuple[str, ...] = ("faster_fifo",) if peer == FASTER_FIFO else ()
    if kind == ARRAYS_KIND:
        requires += ("numpy",)
    return Case(
        key,
        label,
        "faster-fifo"
        if peer == FASTER_FIFO
        else "multiprocessing"
        if peer in (MP, MANAGER)
        else "shoal",
        _run_processes,
        n,
        quick_n=quick_n,
        where=PROCESS_ARG,
        setup=_setup(peer, mode, kind),
        teardown=teardown,
        requires=requires,
    )


def _small_items_group(key: str, kind: str, what: str, manager: bool) -> Group:
    """Single calls and batches side by side, interleaved, one denominator."""
    cases = [
        _case("mp", f"{MP_QUEUE} put/get", MP, SINGLE, kind, SMALL_ITEMS),
        _case("mp-lists", f"{MP_QUEUE}, a list of {BATCH} per put", MP, LISTS, kind, SMALL_ITEMS),
    ]
    if manager:  # the same socket round trip whatever the item: one table shows it
        cases.append(
            _case("manager", f"{MANAGER_QUEUE} put/get", MANAGER, SINGLE, kind, MANAGER_ITEMS, 20)
        )
    cases += [
        _case("faster-fifo", "faster_fifo.Queue put/get", FASTER_FIFO, SINGLE, kind, SMALL_ITEMS),
        _case(
            "faster-fifo-many",
            f"faster_fifo.Queue put_many/get_many({BATCH})",
            FASTER_FIFO,
            BATCHED,
            kind,
            SMALL_ITEMS,
        ),
        _case("shoal", "shoal.Queue put/get", SHOAL, SINGLE, kind, SMALL_ITEMS),
        _case(
            "shoal-many",
            f"shoal.Queue put_many/get_many({BATCH})",
            SHOAL,
            BATCHED,
            kind,
            SMALL_ITEMS,
        ),
    ]
    return Group(
        key=key,
        title=f"One producer, one consumer: {what}, single calls and batches of {BATCH}",
        unit="items/s",
        cases=cases,
    )


def _small_items_floors(group: str, items: str) -> list[Floor]:
    return [
        Floor(f"{group}/shoal", f"{group}/mp", 3, f"shoal put/get vs {MP_QUEUE} put/get ({items})"),
        Floor(
            f"{group}/shoal-many",
            f"{group}/mp",
            10,
            f"shoal put_many/get_many vs {MP_QUEUE} put/get ({items})",
        ),
        Floor(
            f"{group}/shoal-many",
            f"{group}/faster-fifo-many",
            1.5,
            f"shoal put_many/get_many vs faster-fifo put_many/get_many ({items})",
        ),
    ]


BENCHMARK = Benchmark(
    name="queue",
    question=__doc__.strip().splitlines()[0],
    groups=[
        _small_items_group("ints", INTS, "ints", manager=True),
        _small_items_group("tuples", TUPLES, "(int, str) tuples", manager=False),
        Group(
            key="pool",
            title="A writer task and a reader task of a 2-worker Pool share a queue: ints",
            unit="items/s",
            cases=[
                Case(
                    "manager",
                    f"{MANAGER_QUEUE} put/get",
                    "multiprocessing",
                    _run_pool_tasks,
                    MANAGER_ITEMS,
                    quick_n=20,
                    where=POOL_ARG,
                    setup=_setup_pool(MANAGER),
                    teardown=teardown,
                ),
                Case(
                    "mp",
                    MP_QUEUE,
                    "multiprocessing",
                    _run_pool_tasks,
                    0,
                    where=POOL_ARG,
                    unavailable="RuntimeError: Queue objects should only be shared between "
                    "processes through inheritance",
                ),
                Case(
                    "shoal",
                    "shoal.Queue put/get",
                    "shoal",
                    _run_pool_tasks,
                    SMALL_ITEMS,
                    where=POOL_ARG,
                    setup=_setup_pool(SHOAL),
                    teardown=teardown,
                ),
            ],
        ),
        Group(
            key="numpy",
            title="One producer, one consumer: 1 MiB float64 arrays, one put/get each",
            unit="bytes/s",
            cases=[
                _case("mp", f"{MP_QUEUE} put/get", MP, SINGLE, ARRAYS_KIND, ARRAYS, 4),
                _case(
                    "faster-fifo",
                    "faster_fifo.Queue put/get (8 MiB buffer)",
                    FASTER_FIFO,
                    SINGLE,
                    ARRAYS_KIND,
                    ARRAYS,
                    4,
                ),
                _case("shoal", "shoal.Queue put/get", SHOAL, SINGLE, ARRAYS_KIND, ARRAYS, 4),
            ],
        ),
    ],
    floors=[
        *_small_items_floors("ints", "ints"),
        *_small_items_floors("tuples", "tuples"),
        Floor(
            "pool/shoal",
            "pool/manager",
            30,
            f"shoal.Queue vs {MANAGER_QUEUE}, both Pool task args",
        ),
        Floor("numpy/shoal", "numpy/mp", 3, f"shoal.Queue vs {MP_QUEUE}, 1 MiB arrays (bytes/s)"),
    ],
)
