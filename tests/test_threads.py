"""Many threads of one process on the same objects at once.

shoal's objects are made for many processes; the threads of one process share more: the
same handle, its C object's fields (the bound view, a dict's bound table, a ring's
geometry).  With the GIL each C call runs alone until it waits; on a free-threaded build
(3.13t) shoal._core declares that it needs no GIL, and a critical section per object
gives each call the same guarantee (shoal/_core.c, "free-threaded builds").  These tests
are the evidence: exact totals and no crash with every thread hammering one object,
also while one thread closes it.  They run on every build; with the GIL a tiny switch
interval makes the threads interleave inside Python code as often as it can.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import sysconfig
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shoal

THREADS = 8
TIMEOUT = 60.0
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.fixture(autouse=True)
def _interleave() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def hammer(work: Callable[[int], Any], threads: int = THREADS) -> list[Any]:
    """Run ``work(index)`` in ``threads`` threads started together; their results (an
    exception raised in one is raised here)."""
    start = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait(TIMEOUT)
            results[i] = work(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in pool), "threads still running"
    if errors:
        raise errors[0]
    return results


@pytest.mark.skipif(not FREE_THREADED, reason="a free-threaded build (3.13t and later)")
def test_importing_shoal_leaves_the_gil_off_on_a_free_threaded_build() -> None:
    # every method of _core's types has its critical section (else the GIL would be on)
    assert not sys._is_gil_enabled()  # type: ignore[attr-defined]


def test_one_queue_many_producers_and_consumers_lose_and_repeat_nothing() -> None:
    per = 2000
    producers = THREADS // 2
    q = shoal.Queue(maxsize=64)  # small: producers block too
    try:

        def work(i: int) -> list[int]:
            if i < producers:
                for n in range(per):
                    q.put(i * per + n, timeout=TIMEOUT)
                q.put(None, timeout=TIMEOUT)  # one end mark per producer
                return []
            got = []
            while True:
                item = q.get(timeout=TIMEOUT)
                if item is None:
                    return got
                got.append(item)

        got = [n for part in hammer(work) for n in part]
        assert sorted(got) == list(range(producers * per))
        assert q.empty()
    finally:
        q.close()


def test_one_shared_dict_counts_exactly_while_it_grows_under_readers() -> None:
    per = 300
    d = shoal.SharedDict()
    try:
        d["total"] = 0

        def work(i: int) -> int:
            seen = 0
            for n in range(per):
                d.incr("total")
                d[(i, n)] = n  # every thread's inserts grow the table: rebuilds
                seen += d.get((i, n // 2), -1) >= 0
                assert d.get_or_set(("first", n), i) in range(THREADS)
                if n % 50 == 0:
                    assert len(d.keys()) >= n  # a snapshot while others write
            return seen

        assert hammer(work) == [per] * THREADS
        assert d["total"] == THREADS * per
        assert len(d) == 1 + THREADS * per + per
        assert all(d[(i, n)] == n for i in range(THREADS) for n in range(per))
        assert d.statistics().tables_made > 1  # it grew while the threads wrote
    finally:
        d.close()


def test_one_lock_guards_one_value_exactly() -> None:
    per = 2000
    lock, value = shoal.Lock(), shoal.Value("q", 0, lock=False)
    counted = shoal.Value("q", 0)  # its own lock

    def work(i: int) -> None:
        for _ in range(per):
            with lock:
                value.value += 1
            with counted.get_lock():
                counted.value += 1

    try:
        hammer(work)
        assert value.value == counted.value == THREADS * per
        assert lock.acquire(timeout=1)
        lock.release()
    finally:
        lock.close()


def test_a_bounded_semaphore_admits_at_most_its_value_and_rlocks_nest() -> None:
    per = 500
    sem, rlock = shoal.BoundedSemaphore(3), shoal.RLock()
    inside = 0
    most = 0
    guard = threading.Lock()
    total = shoal.Value("q", 0, lock=False)

    def work(i: int) -> None:
        nonlocal inside, most
        for _ in range(per):
            with sem:
                with guard:
                    inside += 1
                    most = max(most, inside)
                with guard:
                    inside -= 1
            with rlock, rlock:
                total.value += 1

    try:
        hammer(work)
        assert 1 <= most <= 3
        assert sem.get_value() == 3
        assert total.value == THREADS * per
    finally:
        sem.close()
        rlock.close()


def test_closing_a_queue_under_busy_threads_raises_closed_error_and_never_crashes() -> None:
    q = shoal.Queue()
    for n in range(100):
        q.put(n)
    started = threading.Barrier(THREADS + 1)

    def work(i: int) -> str:
        if i == THREADS:
            started.wait(TIMEOUT)
            q.close()
            return "closed"
        started.wait(TIMEOUT)
        try:
            while True:
                q.put(i)
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass
        except shoal.ClosedError:
            return "refused"

    assert sorted(set(hammer(work, THREADS + 1))) == ["closed", "refused"]


def test_readers_of_one_shared_dict_survive_another_thread_replacing_its_table() -> None:
    # a write that outgrows the table (or a clear) binds the handle to a new table and
    # lets go of the old one while the other threads read through the same handle (in a
    # child here, so that a crash fails this test only).  It segfaulted, with the GIL
    # too: a reader that had mapped a table bound it after the writer had bound a newer
    # one (or the same one through another mapping, unmapping the writer's), and the
    # binding left the handle with no table while mmap's dealloc let the GIL go; the
    # writes made to a stale table were lost
    code = """
        import sys, threading, shoal
        sys.setswitchinterval(1e-6)  # (as the fixture does here)

        def round():
            d = shoal.SharedDict()
            d[0] = 0
            stop = threading.Event()

            def read():
                n = 0
                while not stop.is_set():
                    d.get(0)
                    d.get(n % 5000)
                    n += 1
                    if n % 97 == 0:
                        len(d)
                    if n % 1001 == 0:
                        d.items()  # a pass over the table while it is replaced

            readers = [threading.Thread(target=read) for _ in range(6)]
            for t in readers:
                t.start()
            try:
                for i in range(1, 30000):
                    d[i] = i
                    if i % 3000 == 0:
                        d.clear()
                        d[0] = 0
            finally:
                stop.set()
                for t in readers:
                    t.join(60)
            assert d.statistics().tables_made > 10
            # all that was written since the last clear (nothing went to a stale table)
            assert len(d) == 3000, len(d)
            assert all(d[i] == i for i in range(27001, 30000)) and d[0] == 0
            d.close()

        for _ in range(4):  # (one round crashed the old code about one time in four)
            round()
        print("ok")
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr)
