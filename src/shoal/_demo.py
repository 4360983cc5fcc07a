"""``python -m shoal demo``: a first tour of what shoal does that multiprocessing can't.

Each scene runs the standard library first, then shoal, and prints what happened.
The task functions live at module level so that every start method can import them.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import struct
import sys
import time
import warnings
from typing import Any

from . import _core
from ._dict import SharedDict
from ._errors import BarrierPartyDiedError, OwnerDiedWarning, WorkerDiedError
from ._memory import HEADER_SIZE, Segment, reap
from ._pool import Pool
from ._queues import Queue
from ._sync import Barrier, Event, Lock

COUNTER = struct.Struct("<q")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _title(text: str) -> None:
    _say()
    _say(text)
    _say("-" * len(text))


# ---- scene 1: a lock passed to Pool tasks ------------------------------------------------


def add_under_lock(lock: Any, segment_name: str, times: int) -> int:
    """Pool task: increment a shared counter ``times`` times, read-modify-write under lock."""
    segment = Segment.attach(segment_name)
    try:
        for _ in range(times):
            with lock:
                (value,) = COUNTER.unpack_from(segment.buffer, HEADER_SIZE)
                COUNTER.pack_into(segment.buffer, HEADER_SIZE, value + 1)
        return os.getpid()
    finally:
        segment.close()


def _scene_pool_lock(ctx: mp.context.BaseContext) -> None:
    _title("1. A lock passed to Pool tasks")
    tasks, times = 4, 2000
    segment = Segment.create(8)
    try:
        _say("multiprocessing.Lock() as a Pool.apply_async argument:")
        with ctx.Pool(2) as pool:
            result = pool.apply_async(add_under_lock, (ctx.Lock(), segment.name, 1))
            try:
                result.get(timeout=30)
                _say("   (unexpectedly worked)")
            except RuntimeError as exc:
                _say(f"   RuntimeError: {exc}")

        _say("shoal.Lock() as the same argument:")
        lock = Lock()
        with ctx.Pool(2) as pool:
            results = [
                pool.apply_async(add_under_lock, (lock, segment.name, times)) for _ in range(tasks)
            ]
            pids = {r.get(timeout=60) for r in results}
        (total,) = COUNTER.unpack_from(segment.buffer, HEADER_SIZE)
        verdict = "exact" if total == tasks * times else "WRONG"
        _say(
            f"   {tasks} tasks x {times} increments in {len(pids)} worker processes: "
            f"counter = {total} ({verdict})"
        )
        lock.close()
    finally:
        segment.close()


# ---- scene 2: a lock whose owner was killed -----------------------------------------------


def hold_forever(lock: Any, ready: Any) -> None:
    """Child: take the lock, say so, then sleep until killed."""
    lock.acquire()
    ready.set()
    time.sleep(3600)


def _scene_dead_owner(ctx: mp.context.BaseContext) -> None:
    _title("2. A lock whose owner was killed with SIGKILL")
    _say("multiprocessing.Lock(): the next acquire waits forever (we give up after 1 s):")
    mp_lock, mp_ready = ctx.Lock(), ctx.Event()
    child = ctx.Process(target=hold_forever, args=(mp_lock, mp_ready))
    child.start()
    mp_ready.wait(30)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    _say(f"   acquire(timeout=1) -> {mp_lock.acquire(timeout=1)}   (and forever after)")

    _say("shoal.Lock(): the next acquire inherits it and is told:")
    lock, ready = Lock(), Event()
    child = ctx.Process(target=hold_forever, args=(lock, ready))
    child.start()
    ready.wait(30)
    _say(f"   {lock!r}")
    os.kill(child.pid, signal.SIGKILL)
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OwnerDiedWarning)
        got = lock.acquire(timeout=5)
    elapsed = time.monotonic() - started
    _say(
        f"   acquire(timeout=5) -> {got} after {elapsed * 1000:.0f} ms; "
        f"lock.owner_died = {lock.owner_died}"
    )
    for warning in caught:
        _say(f"   {warning.category.__name__}: {warning.message}")
    lock.release()
    child.join()
    lock.close()
    ready.close()


# ---- scene 3: a barrier whose party died --------------------------------------------------


def wait_at(barrier: Any, die: bool) -> None:
    """Child: wait at the barrier; the doomed one SIGKILLs itself while waiting."""
    if die:
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGKILL))
        signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        barrier.wait(timeout=10)
    except BarrierPartyDiedError as exc:
        print(f"   pid {os.getpid()}: BarrierPartyDiedError: {exc}", flush=True)


def _scene_barrier(ctx: mp.context.BaseContext) -> None:
    _title("3. A Barrier whose waiting party died")
    _say("3 parties; one is SIGKILLed while waiting, the third never comes:")
    barrier = Barrier(3)
    children = [ctx.Process(target=wait_at, args=(barrier, i == 0)) for i in range(2)]
    started = time.monotonic()
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    _say(
        f"   both returned within {time.monotonic() - started:.1f} s instead of hanging; "
        f"barrier.broken = {barrier.broken}"
    )
    barrier.close()


# ---- scene 4: the tutorial's writer and reader as Pool tasks ------------------------------


def write(q: Any) -> None:
    """The tutorial's writer (ported to Python 3), ending the stream when done."""
    for value in ["A", "B", "C"]:
        print(f"   Put {value} to queue...", flush=True)
        q.put(value)
        time.sleep(0.05)
    if isinstance(q, Queue):
        q.shutdown()  # end of stream: the reader's loop ends when the queue is drained


def read(q: Any) -> None:
    """The tutorial's reader, minus its race: iteration ends at the end of the stream."""
    for value in q:
        print(f"   Get {value} from queue.", flush=True)


def _scene_tutorial_queue(ctx: mp.context.BaseContext) -> None:
    _title("4. The tutorial's program 4: writer and reader as Pool tasks, sharing a queue")
    _say("from multiprocessing import Pool, Queue  (the tutorial's code: apply_async x2,")
    _say("close(), join(), and never a get()):")
    pool = ctx.Pool(2)
    try:
        mp_queue = ctx.Queue()
        results = [pool.apply_async(f, (mp_queue,)) for f in (write, read)]
        pool.close()
        pool.join()
        _say("   nothing was put, nothing was read, no error shown; the program would print")
        _say("   'All data written and read.' -- the error waits in results nobody reads:")
        try:
            results[0].get(timeout=30)
        except RuntimeError as exc:
            _say(f"   pw.get() -> RuntimeError: {exc}")
    finally:
        pool.terminate()
    _say("from shoal import Pool, Queue  (the same code; writer.shutdown() ends the")
    _say("reader's `for`, which takes out the tutorial's race):")
    q = Queue()
    pool = Pool(2, context=ctx)
    try:
        reader = pool.apply_async(read, (q,))
        writer = pool.apply_async(write, (q,))
        pool.close()
        pool.join()
        ok = writer.successful() and reader.successful()
        _say(f"   all data written and read{'' if ok else ' -- NOT (a task failed)'}")
    finally:
        pool.terminate()
        q.close()


# ---- scene 5: a Pool worker killed in the middle of a map ---------------------------------


def square_or_die(n: int) -> int:
    """Pool task: item 5's worker is SIGKILLed, as the OOM killer would do it."""
    if n == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.02)
    return n * n


def _scene_worker_death(ctx: mp.context.BaseContext) -> None:
    _title("5. A Pool worker killed with SIGKILL in the middle of a map")
    items = range(12)
    _say("multiprocessing.Pool(2).map(square, range(12)), item 5's worker SIGKILLed:")
    with ctx.Pool(2) as mp_pool:
        pending = mp_pool.map_async(square_or_die, items, chunksize=1)
        try:
            pending.get(timeout=1)
            _say("   (unexpectedly returned)")
        except mp.TimeoutError:
            _say("   no result after 1 s; map() would wait forever (the pool replaced the")
            _say("   worker and forgot its task)")
    _say("shoal.Pool(2).imap(square, range(12)), the same kill:")
    started = time.monotonic()
    with Pool(2, context=ctx) as pool:
        results = pool.imap(square_or_die, items)
        done, errors = [], []
        for _ in items:
            try:
                done.append(next(results))
            except WorkerDiedError as exc:
                errors.append(exc)
        elapsed = time.monotonic() - started
        verdict = "correct" if done == [n * n for n in items if n != 5] else "WRONG"
        _say(f"   {len(done)} results ({verdict}) and {len(errors)} error in {elapsed:.2f} s:")
        for exc in errors:
            _say(f"   WorkerDiedError: {exc}")
        _say(f"   the pool goes on: pool.map(abs, [-1, -2]) -> {pool.map(abs, [-1, -2])}")


# ---- scene 6: workers filling one shared numpy array in place -------------------------------


def fill_rows(array: Any, first: int, last: int) -> int:
    """Pool task: write rows first..last-1 of the shared array, in place."""
    for row in range(first, last):
        array[row] = row * array.shape[1] + _arange(array.shape[1])
    return os.getpid()


def _arange(n: int) -> Any:
    import numpy as np  # optional dependency, only for this scene

    return np.arange(n, dtype=np.float64)


def _scene_shared_array(ctx: mp.context.BaseContext) -> None:
    _title("6. Workers filling one shared numpy array in place")
    try:
        # numpy is optional and importing it starts threads, so `python -m shoal`
        # loads it (and shoal._array, which needs it) only for this scene
        import numpy as np

        SharedArray = importlib.import_module("shoal._array").SharedArray
    except ImportError:
        _say("   (skipped: needs numpy: pip install 'shoal[numpy]')")
        return
    rows, cols = 64, 250_000  # 128 MB of float64
    array = SharedArray((rows, cols))
    started = time.monotonic()
    with ctx.Pool(2) as pool:
        bounds = [(i, min(i + 16, rows)) for i in range(0, rows, 16)]
        pids = set(pool.starmap(fill_rows, [(array, a, b) for a, b in bounds]))
    elapsed = time.monotonic() - started
    expected = np.arange(rows * cols, dtype=np.float64).reshape(rows, cols)
    verdict = "equal" if np.array_equal(array, expected) else "WRONG"
    _say(
        f"   {array.nbytes / 1e6:.0f} MB array passed to {len(bounds)} Pool tasks in "
        f"{len(pids)} workers as a handle; written in place in {elapsed:.2f} s"
    )
    _say(f"   the parent sees every row the workers wrote: {verdict}")
    array.close()


# ---- scene 7: a word count in a SharedDict --------------------------------------------------

TEXT = """
shoal keeps the multiprocessing api every python programmer knows and fixes what
hurts every queue lock and shared object lives in shared memory and can be passed
anywhere locks survive a dead owner pools survive a killed worker big buffers move
with zero copies shared dicts and arrays are fast
"""


def count_words(counts: Any, words: list[str]) -> int:
    """Pool task: count words straight into the shared dict (atomic increments)."""
    for word in words:
        counts.incr(word)
    return len(words)


def _scene_word_count(ctx: mp.context.BaseContext) -> None:
    _title("7. A word count in a SharedDict, written by several processes at once")
    words = TEXT.split() * 200
    chunks = [words[i::4] for i in range(4)]
    counts = SharedDict()
    with ctx.Pool(2) as pool:
        done = sum(pool.starmap(count_words, [(counts, chunk) for chunk in chunks]))
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    exact = sum(counts.values()) == len(words) == done
    _say(
        f"   {done} words counted by 4 Pool tasks, {len(counts)} distinct; totals "
        f"{'exact' if exact else 'WRONG'}"
    )
    _say("   most common: " + ", ".join(f"{w!r}: {n}" for w, n in top))
    _say("   (no server process: every increment is an atomic update in shared memory)")
    counts.close()


# ---- scene 8: what it costs ---------------------------------------------------------------


def pairs_per_second(lock: Any, seconds: float) -> float:
    """Pool task: uncontended acquire+release pairs per second."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            lock.acquire()
            lock.release()
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def _scene_speed(ctx: mp.context.BaseContext) -> None:
    _title("8. What it costs: acquire+release pairs per second inside a Pool task")
    with ctx.Manager() as manager, ctx.Pool(1) as pool:
        manager_rate = pool.apply(pairs_per_second, (manager.Lock(), 0.5))
        lock = Lock()
        shoal_rate = pool.apply(pairs_per_second, (lock, 0.5))
        lock.close()
    _say(f"   Manager().Lock(): {manager_rate:>12,.0f} pairs/s   (a socket round trip each)")
    _say(
        f"   shoal.Lock():     {shoal_rate:>12,.0f} pairs/s   "
        f"({shoal_rate / manager_rate:,.0f}x; one atomic compare-and-swap each)"
    )
    _say("   (`make bench` measures this properly, with medians and more peers)")


def demo(argv: list[str] | None = None) -> int:
    """Run the tour; returns an exit status."""
    method = (argv or [None])[0] if argv else None
    ctx = mp.get_context(method)
    _say(
        f"shoal demo (Python {sys.version.split()[0]}, start method {ctx.get_start_method()!r},"
        f" pid {os.getpid()}, token {_core.self_token():#x})"
    )
    _scene_pool_lock(ctx)
    _scene_dead_owner(ctx)
    _scene_barrier(ctx)
    _scene_tutorial_queue(ctx)
    _scene_worker_death(ctx)
    _scene_shared_array(ctx)
    _scene_word_count(ctx)
    _scene_speed(ctx)
    _say()
    # the processes the scenes SIGKILLed left their ledgers (what each held, kept for
    # the reaper); the first segment of the next shoal program would sweep them: now
    left = reap()
    _say(
        "Everything shoal created is gone from /dev/shm when its last holder exits; "
        f"what the SIGKILLed processes left ({len(left)} ledgers) was reaped."
    )
    return 0
