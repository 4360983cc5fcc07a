"""shoal.Executor: a concurrent.futures.Executor on shoal's pool (issue #5).

The same behaviour as ``ProcessPoolExecutor`` where the two should agree (submit,
map, shutdown, cancel_futures, as_completed, wait, max_tasks_per_child,
initializer); worker death is tests/test_pool_survival.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from typing import Any

import pool_tasks as t
import pytest
from conftest import wait_until

import shoal
from shoal import Executor

TIMEOUT = 30.0
FORK = mp.get_context("fork")


def fork_executor(max_workers: int = 2, **kwargs: Any) -> Executor:
    return Executor(max_workers, mp_context=FORK, **kwargs)


@contextlib.contextmanager
def busy_executor(n: int) -> Iterator[tuple[Executor, Any, Callable[[], None]]]:
    """A one-worker Executor whose worker counts the runs of ``count_run(i)`` in
    ``runs[i]`` (``n`` of them), busy with a call that waits for a gate: what is
    submitted meanwhile waits in the ring (or behind it, in the parent).  Yields
    ``(executor, runs, release)``: ``release()`` opens the gate and checks that the
    busy call finished.  ``runs`` is closed on leaving: read it after
    ``executor.shutdown()``, inside the block."""
    runs = shoal.RawArray("q", n)
    gate = shoal.Event()
    try:
        with fork_executor(1, initializer=t.set_state, initargs=("runs", runs)) as executor:
            blocker = executor.submit(t.wait_for, gate, "done")

            def release() -> None:
                gate.set()
                assert blocker.result(TIMEOUT) == "done"

            yield executor, runs, release
    finally:
        runs.close()
        gate.close()


def test_it_is_a_concurrent_futures_executor(ctx: Any) -> None:
    offset = 10
    with Executor(2, mp_context=ctx) as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        future = executor.submit(t.add, 1, 2)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(TIMEOUT) == 3
        assert future.done() and not future.cancelled() and future.exception() is None
        assert executor.submit(t.add, 1, b=5).result(TIMEOUT) == 6
        assert executor.submit(lambda x: x * 7, 6).result(TIMEOUT) == 42  # by value
        assert list(executor.map(lambda x: x + offset, range(3))) == [10, 11, 12]
        assert os.getpid() not in set(executor.map(t.pid, range(4)))
    # the context manager shut it down, waiting for the work
    assert future.done()
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(t.square, 1)
    assert not mp.active_children()


def test_the_same_answers_as_process_pool_executor() -> None:
    def run(executor: Any) -> list[Any]:
        seen: list[Any] = []
        seen.append(executor.submit(t.square, 5).result(TIMEOUT))
        seen.append(list(executor.map(t.square, range(10))))
        seen.append(list(executor.map(t.square, range(10), chunksize=3)))
        seen.append(list(executor.map(t.add, range(5), range(10, 15), chunksize=2)))
        seen.append(list(executor.map(t.square, [])))
        error = executor.submit(t.fail, "kaput").exception(TIMEOUT)
        seen.append((type(error).__name__, str(error)))
        results = executor.map(t.fail_on, range(6), chunksize=2)
        got = []
        with pytest.raises(ValueError, match="bad item 3"):
            for value in results:
                got.append(value)
        seen.append(got)
        executor.shutdown()
        with pytest.raises(RuntimeError):
            executor.submit(t.square, 1)
        with pytest.raises(RuntimeError):
            executor.map(t.square, [1])
        return seen

    expected = run(concurrent.futures.ProcessPoolExecutor(2, mp_context=FORK))
    assert run(fork_executor()) == expected


def test_exceptions_carry_the_remote_traceback() -> None:
    with fork_executor(1) as executor:
        future = executor.submit(t.fail, "kaput")
        error = future.exception(TIMEOUT)
        assert isinstance(error, ValueError) and str(error) == "kaput"
        assert isinstance(error.__cause__, _RemoteTraceback)  # as ProcessPoolExecutor's
        assert "in fail" in str(error.__cause__) and "pool_tasks.py" in str(error.__cause__)
        with pytest.raises(ValueError, match="kaput"):
            future.result()
        # exceptions and results that do not travel fail their future, no other
        with pytest.raises(shoal.ShoalError, match="HoldsALock"):
            executor.submit(t.raise_exception_holding_a_lock).result(TIMEOUT)
        with pytest.raises(shoal.SerializationError):
            executor.submit(t.return_a_lock).result(TIMEOUT)
        # an argument that does not pickle fails its future (as ProcessPoolExecutor's)
        with pytest.raises(shoal.SerializationError):
            executor.submit(t.identity, threading.Lock()).result(TIMEOUT)
        assert executor.submit(t.square, 4).result(TIMEOUT) == 16


def test_map_timeout_and_chunks() -> None:
    with fork_executor() as executor:
        squares = [x * x for x in range(20)]
        assert list(executor.map(t.square, range(20), chunksize=1)) == squares
        assert list(executor.map(t.square, range(20), chunksize=7)) == squares
        assert list(executor.map(t.square, iter(range(20)), timeout=TIMEOUT)) == squares
        for chunksize in (1, 2):
            go = shoal.Event()
            results = executor.map(t.wait_for, [go, go], timeout=0.2, chunksize=chunksize)
            started = time.monotonic()
            with pytest.raises(concurrent.futures.TimeoutError):
                list(results)
            assert time.monotonic() - started < 5
            go.set()
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(t.square, [1], chunksize=0)


def test_as_completed_and_wait() -> None:
    with fork_executor() as executor:
        slow = executor.submit(t.sleep_then, 0.5, "slow")
        fast = [executor.submit(t.square, i) for i in range(5)]
        order = list(as_completed([slow, *fast], timeout=TIMEOUT))
        assert set(order) == {slow, *fast}
        assert order[-1] is slow
        go = shoal.Event()
        slow = executor.submit(t.wait_for, go, "slow")
        quick = executor.submit(t.square, 3)
        done, not_done = wait([slow, quick], timeout=TIMEOUT, return_when=FIRST_COMPLETED)
        assert quick in done and slow in not_done
        failing = executor.submit(t.fail)
        done, not_done = wait([failing, slow], timeout=TIMEOUT, return_when=FIRST_EXCEPTION)
        assert failing in done and slow in not_done
        with pytest.raises(concurrent.futures.TimeoutError):
            list(as_completed([slow], timeout=0.05))
        go.set()
        done, not_done = wait([failing, slow], timeout=TIMEOUT)
        assert not not_done and slow.result() == "slow"


def test_shutdown_waits_or_not() -> None:
    executor = fork_executor()
    futures = [executor.submit(t.sleep_then, 0.2, i) for i in range(4)]
    executor.shutdown(wait=True)
    assert [f.result(0) for f in futures] == [0, 1, 2, 3]
    assert not mp.active_children()
    executor.shutdown()  # again: nothing to do

    go = shoal.Event()
    executor = fork_executor()
    futures = [executor.submit(t.wait_for, go, i) for i in range(4)]
    executor.shutdown(wait=False)  # returns while the tasks wait
    assert not any(f.done() for f in futures)
    with pytest.raises(RuntimeError):
        executor.submit(t.square, 1)
    # what was submitted still runs
    go.set()
    assert [f.result(TIMEOUT) for f in futures] == [0, 1, 2, 3]
    assert wait_until(lambda: not mp.active_children(), timeout=10)


@pytest.mark.parametrize("wait_for_it", [True, False])
def test_shutdown_cancel_futures_cancels_what_has_not_started(wait_for_it: bool) -> None:
    started = shoal.Queue()
    executor = fork_executor(1)
    running = executor.submit(t.announce_then_sleep, started, 0.3, "ran")
    queued = [executor.submit(t.square, i) for i in range(10)]
    started.get(timeout=TIMEOUT)  # the worker has the first one
    executor.shutdown(wait=wait_for_it, cancel_futures=True)
    assert running.result(TIMEOUT) == "ran"
    assert all(f.cancelled() for f in queued)
    with pytest.raises(concurrent.futures.CancelledError):
        queued[0].result(0)
    assert wait_until(lambda: not mp.active_children(), timeout=10)
    started.close()


def test_a_cancel_racing_shutdown_cancel_futures_leaves_no_future_running() -> None:
    # shutdown(cancel_futures=True) takes the queued records back, then cancels their
    # futures; a cancel() in between found the record taken and made its future
    # running, and nothing would ever finish it
    started = shoal.Queue()
    executor = fork_executor(1)
    running = executor.submit(t.announce_then_sleep, started, 0.3, "ran")
    queued = executor.submit(t.square, 2)
    started.get(timeout=TIMEOUT)
    engine = executor._engine
    take_back = engine.cancel_queued
    racing: list[bool] = []

    def cancel_queued_then_a_racing_cancel() -> list[Any]:
        jobs = take_back()
        racing.append(queued.cancel())  # (another thread, at the worst moment)
        return jobs

    engine.cancel_queued = cancel_queued_then_a_racing_cancel
    executor.shutdown(wait=True, cancel_futures=True)
    assert racing == [False]  # it found the record taken
    assert running.result(TIMEOUT) == "ran"
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(TIMEOUT)
    started.close()


def test_cancel_a_queued_future() -> None:
    started = shoal.Queue()
    with fork_executor(1) as executor:
        running = executor.submit(t.announce_then_sleep, started, 0.2, "ran")
        queued = executor.submit(t.square, 2)
        started.get(timeout=TIMEOUT)
        assert queued.cancel() and queued.cancelled() and queued.done()
        assert queued.cancel()  # again: still cancelled
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result(0)
        assert running.result(TIMEOUT) == "ran"
        assert executor.submit(t.square, 3).result(TIMEOUT) == 9
    assert queued.cancelled()
    started.close()


def test_a_cancelled_future_never_runs() -> None:
    started = shoal.Queue()
    side_effects = shoal.Queue()
    try:
        with fork_executor(1) as executor:
            executor.submit(t.announce_then_sleep, started, 0.2)
            queued = executor.submit(t.put_on, side_effects, "ran anyway")
            started.get(timeout=TIMEOUT)
            assert queued.cancel()
        assert side_effects.empty()
    finally:
        started.close()
        side_effects.close()


def test_any_number_of_queued_cancelled_calls_never_run() -> None:
    # more cancelled calls waiting in the ring at once than the table of marks had
    # slots (1024): marks overwrote each other, and older cancelled calls ran
    n = 2000
    with busy_executor(n + 1) as (executor, runs, release):
        queued = [executor.submit(t.count_run, i) for i in range(n)]
        assert not executor._engine._overflow  # all of them in shared memory
        assert all(f.cancel() for f in queued)
        release()
        assert executor.submit(t.count_run, n).result(TIMEOUT) == n  # behind them all
        assert all(f.cancelled() for f in queued)
        executor.shutdown()
        assert list(runs) == [0] * n + [1]


def test_every_call_of_a_full_ring_of_small_calls_can_be_cancelled() -> None:
    # the marks are words of a table beside the slots (#11), one for every record the
    # ring can hold: a ring full of the smallest calls, all cancelled, none runs
    n = 40_000
    with busy_executor(n + 1) as (executor, runs, release):
        engine = executor._engine
        queued = []
        while not engine._overflow and len(queued) < n:
            queued.append(executor.submit(t.count_run, len(queued)))
        assert engine._overflow  # the ring is full: the last one waits in the parent
        in_ring = len(queued) - 1
        assert in_ring > 2000
        assert all(f.cancel() for f in queued)
        release()
        assert executor.submit(t.count_run, n).result(TIMEOUT) == n  # behind them all
        assert all(f.cancelled() for f in queued)
        executor.shutdown()
        assert sum(runs[:n]) == 0 and runs[n] == 1


def _plant_earlier_mark(engine: Any, ordinal: int) -> tuple[Any, int, int]:
    """Hold the table word of ``ordinal`` with the mark of an earlier record (one that
    a worker took and has not popped yet), counted as a real mark is."""
    from shoal import _core
    from shoal._pool._protocol import _CLAIMED, _MARK_WORDS, _ORDINAL_MASK

    buf, at = engine._slots._buf, engine._mark_at(ordinal)
    earlier = _CLAIMED | ((ordinal - _MARK_WORDS) & _ORDINAL_MASK)
    _core.fetch_add64(buf, engine._marked_at, 1)
    assert _core.cas64(buf, at, 0, earlier)[0]
    return buf, at, earlier


def _pop_earlier_mark(engine: Any, buf: Any, at: int, earlier: int) -> None:
    from shoal import _core

    if _core.cas64(buf, at, earlier, 0)[0]:
        _core.fetch_add64(buf, engine._marked_at, -1)


def test_cancel_waits_for_a_word_an_earlier_mark_still_holds() -> None:
    with busy_executor(2) as (executor, runs, release):
        engine = executor._engine
        queued = executor.submit(t.count_run, 0)
        held = _plant_earlier_mark(engine, queued._job._ordinal)
        timer = threading.Timer(0.2, _pop_earlier_mark, (engine, *held))
        timer.start()
        start = time.monotonic()
        assert queued.cancel()  # once the word was free
        assert time.monotonic() - start >= 0.15
        timer.join()
        release()
        assert executor.submit(t.count_run, 1).result(TIMEOUT) == 1
        assert queued.cancelled()
        executor.shutdown()
        assert list(runs) == [0, 1]


def test_a_cancel_that_cannot_have_its_word_leaves_the_call_to_run(monkeypatch: Any) -> None:
    # the word stays held (it never is for long): cancel() gives up, says so, and the
    # call runs, its result delivered as any other's
    monkeypatch.setattr("shoal._pool._engine._MARK_WAIT_S", 0.2)
    with busy_executor(1) as (executor, runs, release):
        engine = executor._engine
        queued = executor.submit(t.count_run, 0)
        held = _plant_earlier_mark(engine, queued._job._ordinal)
        try:
            assert not queued.cancel()
            assert not queued.cancelled() and not queued.running()  # still queued
        finally:
            _pop_earlier_mark(engine, *held)
        release()
        assert queued.result(TIMEOUT) == 0
        executor.shutdown()
        assert list(runs) == [1]


def test_cancelled_calls_waiting_in_the_parent_never_run() -> None:
    # calls of 100 KB: the ring takes two, the rest wait in the parent for room, and
    # those were pushed (and ran) once room came, cancelled or not
    ballast = b"x" * 100_000
    with busy_executor(7) as (executor, runs, release):
        queued = [executor.submit(t.count_run, i, ballast) for i in range(6)]
        assert executor._engine._overflow  # some are waiting in the parent
        assert all(f.cancel() for f in queued)
        release()
        assert executor.submit(t.count_run, 6).result(TIMEOUT) == 6
        executor.shutdown()
        assert list(runs) == [0] * 6 + [1]


def test_cancel_racing_the_workers_is_exact() -> None:
    # each cancel() races the worker taking that call: not cancelled means it ran once
    # and its result arrived; cancelled means it never ran, or (caught running, #14:
    # its worker stopped) ran once at most -- never twice, never a result lost
    n, behind = 4000, 3
    runs = shoal.RawArray("q", n)
    futures: list[Any] = []
    cancelled: set[int] = set()
    try:
        with fork_executor(2, initializer=t.set_state, initargs=("runs", runs)) as executor:
            for i in range(n):
                futures.append(executor.submit(t.count_run, i))
                if i >= behind and i % 2 and futures[i - behind].cancel():
                    cancelled.add(i - behind)
            for i, future in enumerate(futures):
                if i in cancelled:
                    assert future.cancelled()
                else:
                    assert future.result(TIMEOUT) == i
        ran = list(runs)
        assert [i for i in range(n) if i not in cancelled and ran[i] != 1] == []
        assert [i for i in cancelled if ran[i] > 1] == []
    finally:
        runs.close()


def test_a_running_future_is_cancelled_by_stopping_its_worker() -> None:
    # ProcessPoolExecutor's cancel() says no once a call runs; shoal's stops it (#14;
    # tests/test_aio_pool.py has the rest)
    started = shoal.Queue()
    with fork_executor(1) as executor:
        future = executor.submit(t.announce_then_sleep, started, 30, "ran")
        started.get(timeout=TIMEOUT)
        try:
            assert future.running()
            assert future.cancel() and future.cancelled()
            with pytest.raises(concurrent.futures.CancelledError):
                future.result(TIMEOUT)
            assert executor.submit(t.square, 3).result(TIMEOUT) == 9
        finally:
            started.close()


def test_a_running_future_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    started = shoal.Queue()
    try:
        with fork_executor(1) as executor:
            future = executor.submit(t.announce_then_sleep, started, 0.2, "ran")
            started.get(timeout=TIMEOUT)
            assert future.running() and future.running()  # asked twice
            assert future.result(TIMEOUT) == "ran"
            assert not future.cancel()  # (finished)
            running = executor.submit(t.announce_then_sleep, started, 30, "ran")
            started.get(timeout=TIMEOUT)
            assert running.running() and running.cancel()
    finally:
        started.close()
    assert not [r for r in caplog.records if r.name.startswith("concurrent.futures")]


def test_max_tasks_per_child() -> None:
    with Executor(1, max_tasks_per_child=2) as executor:
        calls = [executor.submit(t.count_calls).result(TIMEOUT) for _ in range(5)]
        assert [c for _, c in calls] == [1, 2, 1, 2, 1]
        pids = [p for p, _ in calls]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_initializer(ctx: Any) -> None:
    with Executor(2, mp_context=ctx, initializer=t.set_state, initargs=("k", 5)) as ex:
        for (value, set_by), worker in ex.map(t.state_and_pid, ["k"] * 6):
            assert value == 5 and set_by == worker != os.getpid()


def test_an_initializer_that_raises_breaks_the_executor() -> None:
    executor = fork_executor(initializer=t.failing_initializer)
    # like ProcessPoolExecutor's: what code catching BrokenProcessPool expects
    with pytest.raises(BrokenProcessPool, match="initializer"):
        executor.submit(t.square, 2).result(TIMEOUT)
    with pytest.raises(shoal.BrokenPoolError):
        executor.submit(t.square, 2).result(TIMEOUT)
    assert wait_until(lambda: not mp.active_children(), timeout=5)
    executor.shutdown()


def test_task_timeout() -> None:
    with fork_executor(1, task_timeout=0.3) as executor:
        slow = executor.submit(t.sleep_then, 10.0)
        fine = executor.submit(t.square, 3)
        with pytest.raises(shoal.TaskTimeoutError):
            slow.result(TIMEOUT)
        assert fine.result(TIMEOUT) == 9
        assert executor.submit(t.sleep_then, 0.05, "quick").result(TIMEOUT) == "quick"


def test_default_size_is_the_cpus_this_process_may_use() -> None:
    with Executor(mp_context=FORK):
        assert len(mp.active_children()) == shoal.process_cpu_count()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, "greater than 0"),
        ({"max_workers": -1}, ValueError, "greater than 0"),
        ({"max_workers": "2"}, ValueError, "greater than 0"),
        ({"initializer": 3}, TypeError, "callable"),
        ({"max_tasks_per_child": 0}, ValueError, "max"),
        ({"task_timeout": -1.0}, ValueError, "positive"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Executor(**{"max_workers": 1, "mp_context": FORK, **kwargs})
    assert not mp.active_children()
