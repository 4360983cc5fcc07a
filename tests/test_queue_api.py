"""Queue, SimpleQueue and JoinableQueue in one process (issue #3, "What must hold").

* the standard library's behaviour, side by side with ``multiprocessing``'s queues:
  put/get and their ``_nowait`` twins, ``queue.Full``/``queue.Empty``, ``maxsize``
  counting items, ``qsize``/``empty``/``full``, ``JoinableQueue.task_done``/``join``;
* blocking calls wake up on time, on a put/get from another thread, on shutdown, and
  on a signal;
* ``put_many``/``get_many``: order, ``max_items``, waiting for the first item only,
  ``queue.Full.items_put`` on a partial put;
* ``shutdown()`` as end of stream;
* bad input raises in the caller and leaves the queue usable;
* every kind of value comes back equal and of the same type, including messages
  larger than the ring and numpy arrays that travel out of band (and whose shared
  memory is gone as soon as the receiver has them / drops them);
* handles, ``statistics()`` and ``repr``.

The tests taking ``context`` (conftest.py) run on the local context and on the Ray
one (#13).  The others stay local: they time waits, send signals, look at the ring,
the shared memory or ``statistics()``, or rely on a put being in the queue when it
returns (a Ray queue's put from another node goes through a feeder:
docs/ray.md).

Every blocking call has a timeout; threads are daemons joined with a timeout.
"""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import os
import pickle
import queue
import signal
import struct
import threading
import time
from collections import OrderedDict, namedtuple
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from conftest import in_thread, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shoal
from shoal import ClosedError, JoinableQueue, Queue, SerializationError, ShutDown, SimpleQueue

TIMEOUT = 10.0  # for waits that should end long before
SLACK = 1.0  # how late a timed-out call may return on this loaded two-core machine


# ---- helpers -------------------------------------------------------------------------


def finish(t: threading.Thread) -> None:
    t.join(TIMEOUT)
    assert not t.is_alive(), "thread still blocked"


def same(a: Any, b: Any) -> bool:
    """Deep equality that also requires equal types (1 is not True) and nan == nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def segments_made_by(pids: set[int]) -> set[str]:
    """shoal segments in /dev/shm whose header names one of ``pids`` as creator.

    Judged by creator, so segments of other test runs on this machine do not count.
    """
    found = set()
    for name in os.listdir("/dev/shm"):
        if not name.startswith("shoal-"):
            continue
        try:
            with open(f"/dev/shm/{name}", "rb") as f:
                header = f.read(40)
        except OSError:
            continue
        # the creator's process token, (pid << 32 | start time), at offset 32
        if len(header) == 40 and struct.unpack_from("<Q", header, 32)[0] >> 32 in pids:
            found.add(name)
    return found


def my_segments() -> set[str]:
    """shoal segments in /dev/shm that this process created."""
    return segments_made_by({os.getpid()})


@pytest.fixture
def q() -> Any:
    queue_ = Queue()
    yield queue_
    queue_.close()


@pytest.fixture
def cq(context: Any) -> Any:
    """An unbounded queue of the ``context`` fixture's context (local or Ray)."""
    queue_ = context.Queue()
    yield queue_
    queue_.close()


# ---- the standard library's behaviour, side by side ----------------------------------


def basic_scenario(q: Any) -> list[Any]:
    """What a maxsize-3 queue does, as a list of observations (no racy calls)."""
    seen: list[Any] = []

    def attempt(fn: Callable[[], Any]) -> None:
        try:
            seen.append(fn())
        except queue.Full:
            seen.append("Full")
        except queue.Empty:
            seen.append("Empty")

    q.put(1)
    q.put("two", True, TIMEOUT)
    q.put_nowait([3, (4,)])
    seen.append(q.qsize())
    seen.append(q.full())
    attempt(lambda: q.put_nowait(4))
    attempt(lambda: q.put(4, timeout=0.01))
    attempt(lambda: q.put(4, False, 5.0))  # a timeout is ignored when not blocking
    attempt(lambda: q.get(timeout=TIMEOUT))
    seen.append(q.full())
    attempt(lambda: q.get(True, TIMEOUT))
    attempt(lambda: q.get(timeout=TIMEOUT))
    seen.append(q.qsize())
    attempt(lambda: q.get(timeout=0.01))
    attempt(q.get_nowait)
    attempt(lambda: q.get(False))
    attempt(lambda: q.get(timeout=-1))  # multiprocessing: at once, like nonblocking
    q.put(None)
    attempt(lambda: q.get(timeout=TIMEOUT))
    return seen


@pytest.mark.parametrize("make", [mp.get_context("fork").Queue, Queue], ids=["mp", "shoal"])
def test_queue_behaves_like_multiprocessing(make: Any) -> None:
    q = make(3)
    try:
        assert basic_scenario(q) == [
            3, True, "Full", "Full", "Full", 1, False, "two", [3, (4,)], 0,
            "Empty", "Empty", "Empty", "Empty", None,
        ]  # fmt: skip
    finally:
        q.close()
        q.join_thread()


def joinable_scenario(q: Any) -> list[Any]:
    seen: list[Any] = []
    q.put("a")
    q.put("b")
    seen.append(q.get(timeout=TIMEOUT))
    q.task_done()
    seen.append(q.get(timeout=TIMEOUT))
    q.task_done()
    q.join()  # nothing unfinished: returns at once
    try:
        q.task_done()
    except ValueError:
        seen.append("ValueError")
    return seen


@pytest.mark.parametrize(
    "make", [mp.get_context("fork").JoinableQueue, JoinableQueue], ids=["mp", "shoal"]
)
def test_joinable_queue_behaves_like_multiprocessing(make: Any) -> None:
    q = make()
    try:
        assert joinable_scenario(q) == ["a", "b", "ValueError"]
    finally:
        q.close()
        q.join_thread()


def test_joinable_queue_on_each_context(context: Any) -> None:
    q = context.JoinableQueue()
    try:
        assert joinable_scenario(q) == ["a", "b", "ValueError"]
    finally:
        q.close()
        q.join_thread()


@pytest.mark.parametrize(
    "make", [mp.get_context("fork").SimpleQueue, SimpleQueue], ids=["mp", "shoal"]
)
def test_simple_queue_behaves_like_multiprocessing(make: Any) -> None:
    q = make()
    try:
        assert q.empty()
        q.put({"k": [1, 2]})
        q.put(b"bytes")
        assert wait_until(lambda: not q.empty(), TIMEOUT)
        assert q.get() == {"k": [1, 2]}
        assert q.get() == b"bytes"
        assert q.empty()
    finally:
        q.close()


def test_simple_queue_has_no_maxsize() -> None:
    with pytest.raises(TypeError):
        SimpleQueue(3)  # type: ignore[call-arg]
    q = SimpleQueue(capacity=4096)
    try:
        assert q.maxsize == 0
        assert isinstance(q, Queue)
    finally:
        q.close()


def test_public_names() -> None:
    import shoal.queues

    assert shoal.Queue is shoal.queues.Queue is Queue
    assert shoal.JoinableQueue is shoal.queues.JoinableQueue
    assert shoal.SimpleQueue is shoal.queues.SimpleQueue
    assert issubclass(SerializationError, pickle.PicklingError)
    assert issubclass(ClosedError, ValueError)


# ---- maxsize, qsize, empty, full ------------------------------------------------------


def test_maxsize_counts_items_not_bytes() -> None:
    q = Queue(maxsize=2, capacity=4096)
    try:
        q.put(b"x" * 1000)  # big records...
        q.put(b"y" * 1000)
        assert q.full() and q.qsize() == 2 and not q.empty()
        with pytest.raises(queue.Full):
            q.put_nowait(None)  # ...and a tiny one is refused because of the count
        q.get(timeout=TIMEOUT)
        assert not q.full()
        q.put_nowait(None)
        assert q.maxsize == 2
    finally:
        q.close()


def test_unbounded_queue_is_limited_by_bytes_only() -> None:
    q = Queue(capacity=4096)
    try:
        n = 0
        with pytest.raises(queue.Full):
            while n < 10_000:
                q.put_nowait(n)
                n += 1
        assert 100 < n < 4096 // 8  # 24-byte records in 4 KiB
        assert q.qsize() == n and not q.full()  # full() is about maxsize, as in the stdlib
        assert q.get_many(n + 5, timeout=TIMEOUT) == list(range(n))
        assert q.empty()
    finally:
        q.close()


def test_zero_and_negative_maxsize_mean_unbounded() -> None:
    for maxsize in (0, -5):
        q = Queue(maxsize)
        try:
            assert q.maxsize == 0
            assert q.put_many(range(1000)) == 1000
            assert not q.full()
        finally:
            q.close()


# ---- blocking, timeouts, wake-ups -----------------------------------------------------


def test_get_timeout_is_roughly_on_time(q: Any) -> None:
    for timeout in (0.05, 0.3):
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=timeout)
        assert timeout - 0.005 <= time.monotonic() - t0 < timeout + SLACK


def test_put_timeout_is_roughly_on_time() -> None:
    q = Queue(maxsize=1)
    try:
        q.put(0)
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(1, timeout=0.3)
        assert 0.295 <= time.monotonic() - t0 < 0.3 + SLACK
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put_many([1, 2], timeout=0.2)
        assert 0.195 <= time.monotonic() - t0 < 0.2 + SLACK
    finally:
        q.close()


def test_blocked_get_wakes_on_put_from_another_thread(q: Any) -> None:
    t, out = in_thread(lambda: q.get(timeout=TIMEOUT))
    assert wait_until(lambda: q.statistics().consumers_waiting == 1, TIMEOUT)
    t0 = time.monotonic()
    q.put("hello")
    finish(t)
    assert out == ["hello"]
    assert time.monotonic() - t0 < SLACK
    assert q.statistics().consumers_waiting == 0


def test_blocked_put_wakes_on_get_from_another_thread() -> None:
    q = Queue(maxsize=1)
    try:
        q.put("first")
        t, out = in_thread(lambda: q.put("second", timeout=TIMEOUT))
        assert wait_until(lambda: q.statistics().producers_waiting == 1, TIMEOUT)
        assert q.get(timeout=TIMEOUT) == "first"
        finish(t)
        assert out == [None]
        assert q.get(timeout=TIMEOUT) == "second"
        assert q.statistics().producers_waiting == 0
    finally:
        q.close()


def test_blocked_put_wakes_when_bytes_free_up() -> None:
    q = Queue(capacity=1024)
    try:
        q.put(b"a" * 400)
        q.put(b"b" * 400)
        t, out = in_thread(lambda: q.put(b"c" * 400, timeout=TIMEOUT))
        assert wait_until(lambda: q.statistics().producers_waiting == 1, TIMEOUT)
        assert q.get(timeout=TIMEOUT) == b"a" * 400
        finish(t)
        assert out == [None]
        assert q.get_many(5, timeout=TIMEOUT) == [b"b" * 400, b"c" * 400]
    finally:
        q.close()


class Alarm(Exception):
    pass


def _raise_alarm(signum: int, frame: Any) -> None:
    raise Alarm


def test_signal_interrupts_blocked_get(q: Any) -> None:
    # what Ctrl-C does: the handler's exception comes out of the blocked call
    old = signal.signal(signal.SIGALRM, _raise_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t0 = time.monotonic()
        with pytest.raises(Alarm):
            q.get(timeout=TIMEOUT)
        assert time.monotonic() - t0 < TIMEOUT / 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert q.statistics().consumers_waiting == 0
    q.put(1)
    assert q.get(timeout=TIMEOUT) == 1


def test_signal_interrupts_blocked_put() -> None:
    q = Queue(maxsize=1)
    old = signal.signal(signal.SIGALRM, _raise_alarm)
    try:
        q.put(0)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Alarm):
            q.put(1, timeout=TIMEOUT)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Alarm):
            q.put_many([1, 2], timeout=TIMEOUT)
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert q.statistics().producers_waiting == 0
        assert q.get_many(5, timeout=TIMEOUT) == [0]  # the interrupted puts put nothing
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        q.close()


def test_many_threads_share_a_queue() -> None:
    q = Queue(maxsize=8, capacity=4096)
    try:
        per_producer = 300

        def produce(pid: int) -> None:
            for i in range(per_producer):
                q.put((pid, i), timeout=TIMEOUT)

        def consume() -> list[Any]:
            got = []
            while True:
                item = q.get(timeout=TIMEOUT)
                if item is None:
                    return got
                got.append(item)

        producers = [in_thread(lambda p=p: produce(p)) for p in range(3)]
        consumers = [in_thread(consume) for _ in range(2)]
        for t, _ in producers:
            finish(t)
        for _ in consumers:
            q.put(None, timeout=TIMEOUT)
        results = []
        for t, out in consumers:
            finish(t)
            results.append(out[0])
        check_exactly_once_in_order(results, dict.fromkeys(range(3), per_producer))
    finally:
        q.close()


def check_exactly_once_in_order(per_consumer: list[list[Any]], counts: dict[int, int]) -> None:
    """Every (producer, seq) arrived once, and each consumer saw each producer in order."""
    everything = [item for got in per_consumer for item in got]
    expected = {(p, i) for p, n in counts.items() for i in range(n)}
    assert len(everything) == len(expected)
    assert set(everything) == expected
    for got in per_consumer:
        for p in counts:
            seqs = [i for pp, i in got if pp == p]
            assert seqs == sorted(seqs)


# ---- JoinableQueue ---------------------------------------------------------------------


def test_join_returns_once_all_tasks_are_done() -> None:
    q = JoinableQueue()
    try:
        q.put_many(range(5))
        q.put(5)
        assert q.statistics().unfinished_tasks == 6
        assert q.join(timeout=0.05) is False

        def work() -> None:
            for _ in range(6):
                q.get(timeout=TIMEOUT)
                time.sleep(0.01)
                q.task_done()

        t, _ = in_thread(work)
        assert q.join(timeout=TIMEOUT) is True
        finish(t)
        assert q.statistics().unfinished_tasks == 0
        with pytest.raises(ValueError, match="too many"):
            q.task_done()
        assert q.join(timeout=0) is True
    finally:
        q.close()


def test_join_waits_for_task_done_not_for_get() -> None:
    q = JoinableQueue()
    try:
        q.put("job")
        assert q.get(timeout=TIMEOUT) == "job"
        assert q.empty()
        t0 = time.monotonic()
        assert q.join(timeout=0.2) is False  # taken but not done
        assert 0.195 <= time.monotonic() - t0 < 0.2 + SLACK
        joiner, out = in_thread(lambda: q.join(timeout=TIMEOUT))
        time.sleep(0.05)
        q.task_done()
        finish(joiner)
        assert out == [True]
    finally:
        q.close()


def test_joinable_failed_puts_are_not_counted() -> None:
    q = JoinableQueue(maxsize=2)
    try:
        with pytest.raises(SerializationError):
            q.put(threading.Lock())
        with pytest.raises(SerializationError):
            q.put_many([1, threading.Lock()])
        q.put(1)
        with pytest.raises(queue.Full) as info:
            q.put_many([2, 3, 4], timeout=0.01)
        assert info.value.items_put == 1
        with pytest.raises(queue.Full):
            q.put_nowait(5)
        assert q.statistics().unfinished_tasks == 2
        assert q.get_many(5, timeout=TIMEOUT) == [1, 2]
        q.task_done()
        q.task_done()
        assert q.join(timeout=TIMEOUT)
    finally:
        q.close()


# ---- put_many / get_many ---------------------------------------------------------------


def test_put_many_and_get_many_keep_order(cq: Any) -> None:
    q = cq
    items = [None, True, 7, 2**80, 1.5, "s", b"b", (1, 2), {"a": 1}, [[]]]
    assert q.put_many(items) == len(items)
    assert q.put_many(iter(range(3))) == 3  # any iterable
    assert q.put_many([]) == 0
    assert q.get_many(4, timeout=TIMEOUT) == items[:4]
    assert q.get_many(timeout=TIMEOUT) == [*items[4:], 0, 1, 2]
    with pytest.raises(queue.Empty):
        q.get_many(block=False)


def test_get_many_waits_for_the_first_item_only(q: Any) -> None:
    t, out = in_thread(lambda: q.get_many(100, timeout=TIMEOUT))
    time.sleep(0.1)
    t0 = time.monotonic()
    q.put("only")
    finish(t)
    assert out == [["only"]]
    assert time.monotonic() - t0 < SLACK
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get_many(10, timeout=0.1)
    assert time.monotonic() - t0 < 0.1 + SLACK


def test_put_many_blocks_for_room_and_finishes() -> None:
    q = Queue(maxsize=3)
    try:
        t, out = in_thread(lambda: q.put_many(range(20), timeout=TIMEOUT))
        got: list[Any] = []
        while len(got) < 20:
            got += q.get_many(5, timeout=TIMEOUT)
        finish(t)
        assert out == [20]
        assert got == list(range(20))
    finally:
        q.close()


def test_put_many_partial_put_reports_items_put() -> None:
    q = Queue(maxsize=3)
    try:
        with pytest.raises(queue.Full) as info:
            q.put_many(["a", "b", "c", "d", "e"], timeout=0.05)
        assert info.value.items_put == 3
        with pytest.raises(queue.Full) as info:
            q.put_many(["x"], block=False)
        assert info.value.items_put == 0
        assert q.get_many(10, timeout=TIMEOUT) == ["a", "b", "c"]
    finally:
        q.close()


def test_put_many_of_big_items_partial_put_leaves_nothing_behind() -> None:
    # items that travel in transit segments: the ones not put must not leak
    q = Queue(maxsize=1, capacity=4096)
    try:
        blobs = [bytes([i]) * 10_000 for i in range(3)]
        with pytest.raises(queue.Full) as info:
            q.put_many(blobs, timeout=0.01)
        assert info.value.items_put == 1
        assert q.get(timeout=TIMEOUT) == blobs[0]
    finally:
        q.close()


# ---- shutdown: the end of the stream --------------------------------------------------


def test_shutdown_refuses_puts_and_drains_gets() -> None:
    q = Queue()
    try:
        q.put_many([1, 2, 3])
        q.shutdown()
        for put in (lambda: q.put(4), lambda: q.put_nowait(4), lambda: q.put_many([4])):
            with pytest.raises(ShutDown):
                put()
        assert q.get(timeout=TIMEOUT) == 1
        assert q.get_many(10, timeout=TIMEOUT) == [2, 3]
        for get in (q.get_nowait, lambda: q.get(timeout=TIMEOUT), lambda: q.get_many(5)):
            with pytest.raises(ShutDown):
                get()
        assert q.statistics().shut_down
        assert "shut down" in repr(q)
        q.shutdown()  # twice is harmless
    finally:
        q.close()


def test_iteration_ends_at_shutdown(q: Any) -> None:
    q.put_many(["a", "b"])
    q.shutdown()
    assert list(q) == ["a", "b"]
    assert list(q) == []


def test_shutdown_from_another_thread_ends_iteration(q: Any) -> None:
    t, out = in_thread(lambda: list(q))
    q.put_many(range(5))
    time.sleep(0.05)
    q.shutdown()
    finish(t)
    assert out == [list(range(5))]


def test_shutdown_wakes_blocked_get_and_put() -> None:
    q = Queue(maxsize=1)
    try:
        getter, got = in_thread(lambda: q.get(timeout=TIMEOUT))
        assert wait_until(lambda: q.statistics().consumers_waiting == 1, TIMEOUT)
        q.shutdown()
        finish(getter)
        assert isinstance(got[0], ShutDown)
    finally:
        q.close()
    q = Queue(maxsize=1)
    try:
        q.put(0)
        putter, put = in_thread(lambda: q.put(1, timeout=TIMEOUT))
        many, put_many = in_thread(lambda: q.put_many([1, 2], timeout=TIMEOUT))
        assert wait_until(lambda: q.statistics().producers_waiting == 2, TIMEOUT)
        t0 = time.monotonic()
        q.shutdown()
        finish(putter)
        finish(many)
        assert time.monotonic() - t0 < SLACK
        assert isinstance(put[0], ShutDown)
        assert isinstance(put_many[0], ShutDown)
        assert q.get(timeout=TIMEOUT) == 0
        assert q.statistics().producers_waiting == 0
    finally:
        q.close()


def test_shutdown_immediate_discards_what_is_left() -> None:
    q = JoinableQueue(capacity=4096)
    try:
        before = my_segments()
        q.put_many([1, b"z" * 100_000, "three"])  # the blob travels in a transit segment
        assert len(my_segments() - before) == 1
        q.shutdown(immediate=True)
        assert q.qsize() == 0
        with pytest.raises(ShutDown):
            q.get(timeout=TIMEOUT)
        assert q.join(timeout=TIMEOUT)  # discarded items count as done
        assert not my_segments() - before  # and the transit segment went with them
    finally:
        q.close()


# ---- bad input ---------------------------------------------------------------------------


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("no pickling this")


@pytest.mark.parametrize(
    "bad",
    [threading.Lock(), Unpicklable(), [1, {"deep": threading.Lock()}]],
    ids=["lock", "reduce-raises", "nested"],
)
def test_unpicklable_object_raises_in_put_and_nothing_is_enqueued(bad: Any) -> None:
    q = Queue(maxsize=5)
    try:
        q.put("before")
        with pytest.raises(SerializationError) as info:
            q.put(bad)
        assert isinstance(info.value, pickle.PicklingError)
        assert "nothing was sent" in str(info.value)
        with pytest.raises(SerializationError):
            q.put_nowait(bad)
        with pytest.raises(SerializationError):
            q.put_many(["x", "y", bad, "z"])
        assert q.qsize() == 1
        q.put("after")
        assert q.get_many(10, timeout=TIMEOUT) == ["before", "after"]
    finally:
        q.close()


class FailsToUnpickle:
    def __reduce__(self) -> Any:
        return (_explode, ())


def _explode() -> None:
    raise ArithmeticError("cannot rebuild")


def test_object_that_fails_to_unpickle_raises_in_get_and_is_dropped(q: Any) -> None:
    q.put(FailsToUnpickle())
    with pytest.raises(ArithmeticError):
        q.get(timeout=TIMEOUT)
    q.put_many([1, FailsToUnpickle(), 3])
    with pytest.raises(ArithmeticError) as info:
        q.get_many(10, timeout=TIMEOUT)
    assert info.value.items == [1, 3]  # type: ignore[attr-defined]
    assert q.empty()
    q.put("still fine")
    assert q.get(timeout=TIMEOUT) == "still fine"


def test_closed_queue_raises_closed_error() -> None:
    q = JoinableQueue()
    q.put(1)
    q.close()
    q.close()  # twice is harmless
    assert q.closed
    calls: list[Callable[[], Any]] = [
        lambda: q.put(2),
        lambda: q.put(object()),
        lambda: q.put_nowait(2),
        lambda: q.put_many([1, 2]),
        lambda: q.get(timeout=TIMEOUT),
        q.get_nowait,
        lambda: q.get_many(3),
        q.qsize,
        q.empty,
        q.full,
        q.task_done,
        lambda: q.join(timeout=1),
        q.shutdown,
        q.statistics,
        lambda: pickle.dumps(q),
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()
    with pytest.raises(ValueError):  # what multiprocessing raises for a closed queue
        q.put(3)
    assert repr(q) == "<shoal.JoinableQueue closed>"
    q.join_thread()
    q.cancel_join_thread()


@pytest.mark.parametrize("blocked_in", ["get", "get_many", "put", "put_many", "join"])
def test_close_wakes_this_handles_blocked_calls_with_closed_error(blocked_in: str) -> None:
    q = JoinableQueue(maxsize=1, capacity=4096)  # small: an arena block, reused when freed
    other = pickle.loads(pickle.dumps(q))  # a second handle keeps the queue alive
    if blocked_in.startswith("put") or blocked_in == "join":
        q.put("full")
    calls = {
        "get": lambda: q.get(timeout=TIMEOUT),
        "get_many": lambda: q.get_many(5, timeout=TIMEOUT),
        "put": lambda: q.put("x", timeout=TIMEOUT),
        "put_many": lambda: q.put_many(["x", "y"], timeout=TIMEOUT),
        "join": lambda: q.join(timeout=TIMEOUT),
    }
    t, out = in_thread(calls[blocked_in])
    time.sleep(0.1)
    assert t.is_alive()
    t0 = time.monotonic()
    q.close()
    finish(t)
    assert time.monotonic() - t0 < SLACK
    assert isinstance(out[0], ClosedError), out
    # the queue itself is fine, and no waiter is left registered on it
    st = other.statistics()
    assert st.consumers_waiting == 0 and st.producers_waiting == 0
    if blocked_in.startswith("put") or blocked_in == "join":
        assert other.get(timeout=TIMEOUT) == "full"
        other.task_done()
    other.put("via the other handle")
    assert other.get(timeout=TIMEOUT) == "via the other handle"
    other.close()


def test_a_get_blocked_on_a_closed_queue_never_reads_its_successor() -> None:
    # before #3's fix, the blocked get woke up inside the next object allocated in the
    # freed block and took its item
    q = Queue(capacity=4096)
    t, out = in_thread(lambda: q.get(timeout=3))
    time.sleep(0.1)
    q.close()
    successor = Queue(capacity=4096)
    try:
        successor.put("meant for the successor")
        finish(t)
        assert isinstance(out[0], ClosedError)
        assert successor.get(timeout=TIMEOUT) == "meant for the successor"
        assert successor.statistics().consumers_waiting == 0
    finally:
        successor.close()


def test_closing_one_handle_leaves_the_others_working(q: Any) -> None:
    other = pickle.loads(pickle.dumps(q))
    other.put("x")
    other.close()
    assert q.get(timeout=TIMEOUT) == "x"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"maxsize": "x"}, TypeError),
        ({"maxsize": 1.5}, TypeError),
        ({"maxsize": None}, TypeError),
        ({"maxsize": 2**40}, ValueError),
        ({"capacity": -1}, ValueError),
        ({"capacity": 0}, ValueError),
        ({"capacity": 2**40}, ValueError),
        ({"capacity": "1MB"}, TypeError),
        ({"capacity": 4096.0}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type) -> None:
    before = my_segments()
    with pytest.raises(error):
        Queue(**kwargs)
    assert not my_segments() - before


def test_bad_call_arguments(q: Any) -> None:
    q.put(1)
    bad: list[tuple[Callable[[], Any], type]] = [
        (lambda: q.get(timeout="x"), TypeError),
        (lambda: q.get(True, [1]), TypeError),
        (lambda: q.get(timeout=float("nan")), ValueError),
        (lambda: q.put(1, timeout="x"), TypeError),
        (lambda: q.put(object(), timeout="x"), TypeError),
        (lambda: q.put_many([1], timeout="x"), TypeError),
        (lambda: q.put_many(5), TypeError),
        (lambda: q.put_many(None), TypeError),
        (lambda: q.get_many(0), ValueError),
        (lambda: q.get_many(-3), ValueError),
        (lambda: q.get_many("a"), TypeError),
        (lambda: q.get_many(2.0), TypeError),
        (lambda: q.get_many(2, timeout="x"), TypeError),
        (lambda: q.get(True, 1, 2), TypeError),
        (lambda: q.get(bogus=1), TypeError),
    ]
    for call, error in bad:
        with pytest.raises(error):
            call()
    assert q.qsize() == 1  # nothing above took or added anything
    assert q.get(timeout=TIMEOUT) == 1


# ---- values round-trip -------------------------------------------------------------------


class MyInt(int):
    pass


class MyStr(str):
    pass


class MyFloat(float):
    pass


class MyBytes(bytes):
    pass


Point = namedtuple("Point", "x y")


def test_scalars_and_their_subclasses_keep_their_type(cq: Any) -> None:
    q = cq
    values = [
        None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**200, -(10**50),
        0.0, -0.0, 1e308, float("inf"), float("-inf"), float("nan"), 5e-324,
        "", "ascii", "ünïcödé ✓ 𝄞", "\ud800 lone surrogate", "\x00nul",
        b"", b"\x00\xff" * 10, bytearray(b"ba"), memoryview(b"mv").tobytes(),
        MyInt(5), MyStr("s"), MyFloat(2.5), MyBytes(b"b"),
        1 + 2j, Fraction(1, 3), frozenset({1, 2}), {3, 4}, range(5), OrderedDict(a=1),
        # tuples: those of exact scalars skip pickle, the others must not
        (), (1,), (True, None, 1.5, b"x", "s", -7), (2**80, "big"), (MyInt(1), "a"),
        ("\ud800",), ((1, 2), 3), tuple(range(64)), tuple(range(65)), Point(1, 2),
    ]  # fmt: skip
    for value in values:
        q.put(value)
    got = [q.get(timeout=TIMEOUT) for _ in values]
    for sent, received in zip(values, got):
        assert same(sent, received), (sent, received)
    q.put_many(values)
    got = q.get_many(len(values), timeout=TIMEOUT)
    assert all(same(a, b) for a, b in zip(values, got))


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond int64 too
    | st.floats(allow_nan=True)
    | st.text()
    | st.binary()
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=5)
    ),
    max_leaves=20,
)


def test_arbitrary_nested_builtins_round_trip() -> None:
    q = Queue(capacity=1 << 16)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(values=st.lists(json_like, max_size=4))
    def check(values: list[Any]) -> None:
        for value in values:
            q.put(value, timeout=TIMEOUT)
        assert all(same(v, q.get(timeout=TIMEOUT)) for v in values)
        q.put_many(values, timeout=TIMEOUT)
        got = q.get_many(len(values) or 1, block=False) if values else []
        assert len(got) == len(values)
        assert all(same(a, b) for a, b in zip(values, got))

    try:
        check()
    finally:
        q.close()


def test_functions_and_lambdas_travel_by_value(cq: Any) -> None:
    q = cq
    offset = 10
    q.put(lambda x: x + offset)
    q.put_many([lambda: "in a batch", len])

    def nested(n: int) -> int:
        return n * offset

    q.put(nested)
    assert q.get(timeout=TIMEOUT)(1) == 11
    first, second = q.get_many(2, timeout=TIMEOUT)
    assert first() == "in a batch" and second is len
    assert q.get(timeout=TIMEOUT)(3) == 30


def test_message_larger_than_the_ring(q: Any) -> None:
    small = Queue(capacity=4096)
    try:
        before = my_segments()
        blob = os.urandom(1 << 20)
        big_list = list(range(100_000))
        small.put(blob)
        small.put(big_list)
        small.put_many([bytearray(blob), "between", blob[:3000]])
        assert small.qsize() == 5
        assert small.get(timeout=TIMEOUT) == blob
        assert small.get(timeout=TIMEOUT) == big_list
        got = small.get_many(10, timeout=TIMEOUT)
        assert got == [bytearray(blob), "between", blob[:3000]]
        assert type(got[0]) is bytearray
        assert not my_segments() - before  # each transit segment went when received
    finally:
        small.close()


def test_the_largest_inline_record_and_one_byte_more() -> None:
    q = Queue(capacity=4096)
    try:
        for n in range(4096 // 2 - 16, 4096 // 2 + 4):
            q.put(b"x" * n)
            q.put("y" * n)
            assert q.get(timeout=TIMEOUT) == b"x" * n
            assert q.get(timeout=TIMEOUT) == "y" * n
    finally:
        q.close()


def test_the_smallest_ring_carries_any_message() -> None:
    import numpy as np  # a test dependency: missing, the test fails

    q = Queue(capacity=64)
    try:
        assert q.statistics().capacity == 128  # rounded up: room for a transit record
        values = [None, 2**70, "x" * 40, "y" * 1000, b"z" * 10_000, (1, "a"), np.ones(50_000)]
        for value in values:
            q.put(value, timeout=TIMEOUT)
            assert same_or_array_equal(q.get(timeout=TIMEOUT), value)
        with pytest.raises(queue.Full) as info:
            q.put_many(values, timeout=0.05)
        got = q.get_many(100, timeout=TIMEOUT)
        assert len(got) == info.value.items_put > 0
        assert all(same_or_array_equal(a, b) for a, b in zip(got, values))
    finally:
        q.close()


def test_a_message_of_many_buffers_fits_a_small_ring() -> None:
    # the layout of 300 out-of-band buffers travels in the transit segment, not the ring
    import numpy as np  # a test dependency: missing, the test fails

    q = Queue(capacity=4096)
    try:
        arrays = [np.full(128, i, dtype=np.float64) for i in range(300)]  # 300 KiB in all
        q.put(arrays)
        q.put_many([arrays, "after"])
        for got in (q.get(timeout=TIMEOUT), q.get(timeout=TIMEOUT)):
            assert len(got) == 300 and all((a == i).all() for i, a in enumerate(got))
        assert q.get(timeout=TIMEOUT) == "after"
    finally:
        q.close()


def same_or_array_equal(a: Any, b: Any) -> bool:
    if type(a).__module__ == "numpy":
        return type(a) is type(b) and a.shape == b.shape and bool((a == b).all())
    return same(a, b)


def mapped_shoal_segments() -> set[str]:
    """Names of shoal segments this process still maps (deleted or not)."""
    with open("/proc/self/maps") as maps:
        return {line.split("/dev/shm/")[1].split()[0] for line in maps if "/dev/shm/shoal-" in line}


def test_numpy_arrays_arrive_equal_writable_and_leave_no_segment() -> None:
    import numpy as np  # a test dependency: missing, the test fails

    q = Queue(capacity=1 << 16)
    try:
        before = my_segments()
        arrays = [
            np.arange(1 << 18, dtype=np.float64),  # 2 MiB: out of band
            np.arange(1 << 16, dtype=np.int32).reshape(256, 256).T,  # F order, 256 KiB
            np.zeros(10, dtype=np.uint8),  # small: inline
            np.array([{"a": 1}, None] * 40_000, dtype=object),  # pickled in band
        ]
        for a in arrays:
            q.put(a)
        in_transit = my_segments() - before
        assert len(in_transit) == 3  # the two big buffers and the big object array
        mapped_before = mapped_shoal_segments()
        got = [q.get(timeout=TIMEOUT) for _ in arrays]
        # the receiver removed each transit segment's name at once
        assert not my_segments() - before
        for sent, received in zip(arrays, got):
            assert received.dtype == sent.dtype and received.shape == sent.shape
            assert (received == sent).all()
            assert received.flags.writeable
        got[0][:] = -1  # writable for real
        assert (got[0] == -1).all()
        # the big arrays are zero-copy views of their transit mapping; once dropped, the
        # mapping (and so the memory) is gone too
        held = mapped_shoal_segments() - mapped_before
        assert len(held) == 2
        del got, received
        gc.collect()
        assert not (mapped_shoal_segments() & held)
    finally:
        q.close()


def test_numpy_array_put_many_and_views_outlive_the_queue() -> None:
    import numpy as np  # a test dependency: missing, the test fails

    q = Queue()
    a = np.random.default_rng(0).random((300, 300))
    q.put_many([a, a[::2], "end"])
    got = q.get_many(3, timeout=TIMEOUT)
    q.close()
    gc.collect()
    assert (got[0] == a).all() and (got[1] == a[::2]).all() and got[2] == "end"


def test_queue_dropped_with_big_messages_in_it_leaves_nothing(q: Any) -> None:
    before = my_segments()
    doomed = Queue(capacity=4096)
    doomed.put(b"x" * 100_000)
    doomed.put_many([bytearray(200_000), "small"])
    assert len(my_segments() - before) >= 2
    doomed.close()
    del doomed
    gc.collect()
    assert wait_until(lambda: not my_segments() - before, TIMEOUT)


# ---- handles, statistics, repr ----------------------------------------------------------


def test_pickled_queue_is_a_handle_to_the_same_queue() -> None:
    q = JoinableQueue(maxsize=4, capacity=8192)
    try:
        data = pickle.dumps(q)
        assert len(data) < 300
        twin = pickle.loads(data)
        assert type(twin) is JoinableQueue
        assert twin.maxsize == 4
        twin.put("via twin")
        assert q.get(timeout=TIMEOUT) == "via twin"
        assert twin.statistics().unfinished_tasks == 1
        twin.task_done()
        assert q.join(timeout=TIMEOUT)
        twin.close()
        q.put_many([1, 2, 3, 4])
        assert q.full()
        # a queue inside a queue
        q.get(timeout=TIMEOUT)
        carrier = Queue()
        carrier.put({"queue": q})
        inner = carrier.get(timeout=TIMEOUT)["queue"]
        assert inner.get_many(10, timeout=TIMEOUT) == [2, 3, 4]
        inner.close()
        carrier.close()
    finally:
        q.close()


def test_statistics_and_repr() -> None:
    q = JoinableQueue(maxsize=3, capacity=4096)
    try:
        st0 = q.statistics()
        assert st0 == shoal.QueueStatistics(
            items=0,
            bytes_used=0,
            capacity=4096,
            maxsize=3,
            producers_waiting=0,
            consumers_waiting=0,
            shut_down=False,
            unfinished_tasks=0,
        )
        assert repr(q) == "<shoal.JoinableQueue 0/3 items, 0/4096 bytes>"
        q.put("abc")
        q.put(12)
        st1 = q.statistics()
        assert st1.items == 2 and st1.unfinished_tasks == 2
        # 8-byte headers, payloads rounded up to 8: "abc" is 1 tag + 3 bytes, 12 is 1 + 8
        assert st1.bytes_used == (8 + 8) + (8 + 16)
        assert repr(q) == "<shoal.JoinableQueue 2/3 items, 40/4096 bytes>"
        with pytest.raises(AttributeError):
            st1.items = 5  # type: ignore[misc]
        plain = Queue(capacity=5000)
        assert plain.statistics().capacity == 8192  # rounded up to a power of two
        assert repr(plain) == "<shoal.Queue 0 items, 0/8192 bytes>"
        plain.close()
    finally:
        q.close()
