"""Producers and consumers SIGKILLed mid-stream (issue #3, "What must hold").

The ring publishes a record with one 64-bit store of ``tail`` and removes it with one
store of ``head``, and its two locks are robust mutexes; so a process killed at any
instant — inside ``put``, inside ``get``, blocked in either, or holding a lock — must
leave the queue working for everyone else, with nothing lost or duplicated among the
puts that completed.

How the checks stay sound when a process can die between any two instructions:

* producers: before each put a victim records "attempted up to n", after it
  "completed up to n", in shared memory that outlives it (an anonymous shared mapping
  inherited over fork; one atomic store each).  What arrives from that producer must
  be exactly ``range(r)`` with ``completed <= r <= attempted``: everything completed,
  in order, and nothing twice.
* consumers: a consumer writes each item it got to its own shared log (item first,
  then the count), so a killed consumer's log says what it certainly took.  An item
  taken but not yet logged when the kill came is lost with it: at most one per kill
  (one batch with ``get_many``), and never duplicated.

The kills land at random times in hot loops (several per test); two tests also put a
dead process on each lock deterministically.  Fork only: the queue's behaviour under
SIGKILL does not depend on how the process was started, and fork keeps this fast.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import queue
import random
import signal
import time
from typing import Any

import pytest
from conftest import join_all, wait_until
from test_queue_api import segments_made_by

from shoal import JoinableQueue, Queue, ShutDown, _core, lowlevel

FORK = mp.get_context("fork")
TIMEOUT = 30.0
# offsets in the ring header (native/include/shoal_ring.h)
PUT_LOCK = 32
GET_LOCK = 256


# ---- helpers -----------------------------------------------------------------------------


class SharedLog:
    """u64 slots in an anonymous shared mapping: written by forked children, read here."""

    def __init__(self, slots: int) -> None:
        self.map = mmap.mmap(-1, 8 * slots)

    def __getitem__(self, i: int) -> int:
        return lowlevel.load64(self.map, 8 * i)

    def __setitem__(self, i: int, value: int) -> None:
        lowlevel.store64(self.map, 8 * i, value)

    def close(self) -> None:
        self.map.close()


def kill(p: Any) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGKILL


def lock_owner_pid(q: Any, offset: int) -> int:
    return _core.token_pid(lowlevel.load64(q._mapping, q._payload_offset + offset))


# ---- producers killed ----------------------------------------------------------------------


def logged_producer(q: Any, log: SharedLog, slot: int, n: int, batch: int) -> None:
    """Put (slot, seq) for seq in range(n); log attempted/completed in slots 2*slot, +1."""
    attempted, completed = 2 * slot, 2 * slot + 1
    seq = 0
    while seq < n:
        end = min(n, seq + (batch or 1))
        log[attempted] = end
        if batch:
            q.put_many([(slot, i) for i in range(seq, end)], timeout=TIMEOUT)
        else:
            q.put((slot, seq), timeout=TIMEOUT)
        log[completed] = end
        seq = end


def collect(q: Any, conn: Any) -> None:
    got = []
    for item in q:
        got.append(item)
    conn.send(got)


@pytest.mark.parametrize("batch", [0, 25], ids=["put", "put_many"])
def test_sigkilled_producers_lose_nothing_that_was_put(batch: int) -> None:
    kills, steady_n = 6, 4000
    q = Queue(maxsize=16, capacity=4096)  # small: victims often die blocked in put
    log = SharedLog(2 * (kills + 1))
    r, w = FORK.Pipe(duplex=False)
    rng = random.Random(batch)
    held_when_killed = 0
    try:
        consumer = FORK.Process(target=collect, args=(q, w))
        consumer.start()
        steady = FORK.Process(target=logged_producer, args=(q, log, 0, steady_n, batch))
        steady.start()
        for slot in range(1, kills + 1):
            victim = FORK.Process(target=logged_producer, args=(q, log, slot, 10**9, batch))
            victim.start()
            assert wait_until(lambda s=slot: log[2 * s + 1] > 0, TIMEOUT)
            time.sleep(rng.uniform(0, 0.03))
            kill(victim)
            held_when_killed += lock_owner_pid(q, PUT_LOCK) == victim.pid
        join_all(steady)
        assert steady.exitcode == 0
        q.shutdown()
        assert r.poll(TIMEOUT)
        got = r.recv()
        join_all(consumer)
        assert consumer.exitcode == 0
        by_producer: dict[int, list[int]] = {}
        for slot, seq in got:
            by_producer.setdefault(slot, []).append(seq)
        assert by_producer[0] == list(range(steady_n))
        for slot in range(1, kills + 1):
            seqs = by_producer.get(slot, [])
            attempted, completed = log[2 * slot], log[2 * slot + 1]
            assert seqs == list(range(len(seqs))), f"victim {slot}: lost, reordered or twice"
            assert completed <= len(seqs) <= attempted, (slot, completed, len(seqs), attempted)
        assert q.qsize() == 0
        # (how often a victim died holding the put lock, for whoever reads -s output)
        print(f"{held_when_killed} of {kills} victims died holding the put lock")
    finally:
        q.close()
        log.close()
        r.close()
        w.close()


# ---- consumers killed ----------------------------------------------------------------------


def logged_consumer(q: Any, log: SharedLog, base: int, batch: int) -> None:
    """Take ints until shutdown; log each at base+1+k before counting it at base."""
    count = 0
    while True:
        try:
            items = q.get_many(batch, timeout=TIMEOUT) if batch else [q.get(timeout=TIMEOUT)]
        except ShutDown:
            return
        for item in items:
            log[base + 1 + count] = item
            count += 1
            log[base] = count


def paced_producer(q: Any, n: int) -> None:
    # slow enough that consumers often wait in get(), so some die blocked there
    for start in range(0, n, 20):
        q.put_many(range(start, min(n, start + 20)), timeout=TIMEOUT)
        time.sleep(0.0005)


@pytest.mark.parametrize("batch", [0, 8], ids=["get", "get_many"])
def test_sigkilled_consumers_leave_the_rest_working(batch: int) -> None:
    kills, n = 8, 12_000
    per_log = n + 1
    q = Queue(maxsize=64, capacity=4096)
    log = SharedLog(per_log * (kills + 1))
    rng = random.Random(100 + batch)
    try:
        survivor = FORK.Process(target=logged_consumer, args=(q, log, 0, batch))
        producer = FORK.Process(target=paced_producer, args=(q, n))
        survivor.start()
        producer.start()
        for k in range(1, kills + 1):
            victim = FORK.Process(target=logged_consumer, args=(q, log, k * per_log, batch))
            victim.start()
            time.sleep(rng.uniform(0.005, 0.04))
            kill(victim)
        join_all(producer)
        assert producer.exitcode == 0
        q.shutdown()
        join_all(survivor)
        assert survivor.exitcode == 0
        received: list[int] = []
        for k in range(kills + 1):
            base = k * per_log
            mine = [log[base + 1 + i] for i in range(log[base])]
            assert mine == sorted(mine), f"consumer {k} saw items out of order"
            received += mine
        assert len(received) == len(set(received)), "an item was delivered twice"
        assert set(received) <= set(range(n))
        lost = n - len(received)
        # only what a victim had taken and not yet logged: one item (batch) per kill
        assert lost <= kills * max(batch, 1), f"{lost} items lost to {kills} kills"
        assert log[0] > 0  # the survivor worked throughout
        assert q.qsize() == 0
    finally:
        q.close()
        log.close()


# ---- killed inside the locked copy ---------------------------------------------------------
# Records of 16 KB into a big, fresh ring: a put_many of 64 of them copies a megabyte
# (faulting in new pages) with the put lock held, and a get_many copies as much out with
# the get lock held, so a kill at a random moment usually lands inside the lock.

BIG = 16_000
BIG_BATCH = 64
BIG_CONSUMER_BATCH = 64
MAX_KILLS = 40  # kill until the lock case happened twice, but no more often than this


def big_record(seq: int) -> bytes:
    return seq.to_bytes(8, "little") * (BIG // 8)


def big_seq(record: bytes) -> int:
    assert record == record[:8] * (BIG // 8), "a record arrived torn"
    return int.from_bytes(record[:8], "little")


def hot_big_producer(q: Any, log: SharedLog) -> None:
    seq = 0
    while True:
        log[0] = seq + BIG_BATCH  # attempted
        q.put_many([big_record(i) for i in range(seq, seq + BIG_BATCH)], timeout=TIMEOUT)
        seq += BIG_BATCH
        log[1] = seq  # completed


def test_producers_killed_holding_the_put_lock() -> None:
    q = Queue(capacity=1 << 26)
    rng = random.Random(7)
    held = kills = 0
    try:
        while held < 2 and kills < MAX_KILLS:
            log = SharedLog(2)
            victim = FORK.Process(target=hot_big_producer, args=(q, log))
            victim.start()
            # once it completed a put, it holds no stale wait for a dead holder's lock
            assert wait_until(lambda log=log: log[1] > 0, TIMEOUT, interval=0.0002)
            time.sleep(rng.uniform(0, 0.01))
            kill(victim)
            kills += 1
            held += lock_owner_pid(q, PUT_LOCK) == victim.pid
            try:
                got = [big_seq(r) for r in q.get_many(10**6, block=False)]
            except queue.Empty:  # killed before its first put_many published anything
                got = []
            assert got == list(range(len(got))), "lost, reordered or twice"
            assert log[1] <= len(got) <= log[0]
            log.close()
        assert held == 2, f"no victim of {kills} died holding the put lock"
        q.put("after", timeout=TIMEOUT)  # the last dead holder is replaced too
        assert q.get(timeout=TIMEOUT) == "after"
    finally:
        q.close()


def hot_big_consumer(q: Any, log: SharedLog) -> None:
    count = 0
    while True:
        # little work outside get_many, so that most of the time is spent inside it
        for record in q.get_many(BIG_CONSUMER_BATCH, timeout=TIMEOUT):
            log[1 + count] = int.from_bytes(record[:8], "little")
            count += 1
            log[0] = count


def test_consumers_killed_holding_the_get_lock() -> None:
    q = Queue(capacity=1 << 26)
    rng = random.Random(8)
    held = kills = sent = 0
    logs = []
    try:
        while held < 2 and kills < MAX_KILLS:
            if q.qsize() < 2000:  # keep victims busy: they never wait for items
                q.put_many([big_record(i) for i in range(sent, sent + 1500)])
                sent += 1500
            log = SharedLog(sent + 1)
            logs.append(log)
            victim = FORK.Process(target=hot_big_consumer, args=(q, log))
            victim.start()
            assert wait_until(lambda log=log: log[0] > 0, TIMEOUT, interval=0.0002)
            time.sleep(rng.uniform(0, 0.003))
            kill(victim)
            kills += 1
            held += lock_owner_pid(q, GET_LOCK) == victim.pid
        try:
            rest = [big_seq(r) for r in q.get_many(10**6, block=False)]
        except queue.Empty:
            rest = []
        received = [log[1 + i] for log in logs for i in range(log[0])] + rest
        assert len(received) == len(set(received)), "an item was delivered twice"
        assert set(received) <= set(range(sent))
        assert rest == sorted(rest)
        for log in logs:
            mine = [log[1 + i] for i in range(log[0])]
            assert mine == sorted(mine)
        # at most the batch each victim had in hand is lost with it
        assert sent - len(received) <= kills * BIG_CONSUMER_BATCH
        assert held == 2, f"no victim of {kills} died holding the get lock"
    finally:
        q.close()
        for log in logs:
            log.close()


# ---- a dead process on each lock ---------------------------------------------------------


def hold_ring_lock(q: Any, offset: int, conn: Any) -> None:
    """Take one of the ring's own locks the way put/get do, and never let go."""
    lock = _core.Mutex()
    lock._bind(q._mapping, q._payload_offset + offset, False, False)
    assert lock.acquire(True, TIMEOUT)
    conn.send("held")
    time.sleep(TIMEOUT)


def lock_held_by_child(q: Any, offset: int) -> Any:
    r, w = FORK.Pipe(duplex=False)
    p = FORK.Process(target=hold_ring_lock, args=(q, offset, w))
    p.start()
    assert r.poll(TIMEOUT) and r.recv() == "held"
    r.close()
    w.close()
    assert lock_owner_pid(q, offset) == p.pid
    return p


@pytest.mark.parametrize("side", ["put", "get"])
def test_dead_holder_of_a_ring_lock_is_replaced(side: str) -> None:
    q = Queue(maxsize=8)
    try:
        q.put_many(["a", "b"])
        p = lock_held_by_child(q, PUT_LOCK if side == "put" else GET_LOCK)
        kill(p)
        t0 = time.monotonic()
        if side == "put":
            q.put_nowait("c")  # nonblocking too: a dead holder is no reason to refuse
            q.put("d", timeout=TIMEOUT)
        else:
            assert q.get_nowait() == "a"
            assert q.get(timeout=TIMEOUT) == "b"
        assert time.monotonic() - t0 < 3.0, "replacing the dead holder took too long"
        assert lock_owner_pid(q, PUT_LOCK) == 0 and lock_owner_pid(q, GET_LOCK) == 0
        q.put("e", timeout=TIMEOUT)
        assert q.get_many(10, timeout=TIMEOUT)[-1] == "e"
    finally:
        q.close()


def test_live_holder_that_never_lets_go_bounds_nonblocking_calls() -> None:
    # a holder frozen in the middle of a copy (here: one that just keeps the lock) makes
    # a nonblocking call give up after a bounded wait, never hang
    q = Queue()
    try:
        q.put("x")
        p = lock_held_by_child(q, GET_LOCK)
        try:
            t0 = time.monotonic()
            with pytest.raises(queue.Empty):
                q.get_nowait()
            assert time.monotonic() - t0 < 5.0
            q.put("puts still work", timeout=TIMEOUT)
        finally:
            kill(p)
        assert q.get_many(5, timeout=TIMEOUT) == ["x", "puts still work"]
    finally:
        q.close()


# ---- killed while blocked ------------------------------------------------------------------


def blocked_get(q: Any) -> None:
    q.get(timeout=TIMEOUT)


def blocked_put(q: Any) -> None:
    q.put("second", timeout=TIMEOUT)


def test_killed_while_blocked_in_get_and_in_put() -> None:
    q = Queue(maxsize=1)
    try:
        getter = FORK.Process(target=blocked_get, args=(q,))
        getter.start()
        assert wait_until(lambda: q.statistics().consumers_waiting == 1, TIMEOUT)
        kill(getter)
        q.put("first", timeout=TIMEOUT)
        putter = FORK.Process(target=blocked_put, args=(q,))
        putter.start()
        assert wait_until(lambda: q.statistics().producers_waiting == 1, TIMEOUT)
        kill(putter)
        assert q.get(timeout=TIMEOUT) == "first"
        with pytest.raises(queue.Empty):
            q.get(timeout=0.05)  # the killed putter put nothing
        q.put("third", timeout=TIMEOUT)
        assert q.get(timeout=TIMEOUT) == "third"
    finally:
        q.close()


def blocked_join(q: Any) -> None:
    q.join(TIMEOUT)


def blocked_get_many(q: Any) -> None:
    q.get_many(10, timeout=TIMEOUT)


# kind: (the child's blocking call, what the queue says about its waiters, the raw
# count a wake-up reads to decide whether to make a system call, one wake-up)
BLOCKED = {
    "get": (blocked_get, lambda q: q.statistics().consumers_waiting,
            lambda q: q._consumers_waiting_raw, lambda q: q.put("item")),
    "get_many": (blocked_get_many, lambda q: q.statistics().consumers_waiting,
                 lambda q: q._consumers_waiting_raw, lambda q: q.put("item")),
    "put": (blocked_put, lambda q: q.statistics().producers_waiting,
            lambda q: q._producers_waiting_raw, lambda q: q.get(timeout=TIMEOUT)),
    "join": (blocked_join, lambda q: q._joiners, lambda q: q._joiners_raw,
             lambda q: q.task_done()),
}  # fmt: skip


def blocking_queue(kind: str) -> Any:
    """A queue on which ``kind`` blocks."""
    if kind == "join":
        q = JoinableQueue()
        q.put("task")
        q.get()  # taken, not done
        return q
    q = Queue(maxsize=1)
    if kind == "put":
        q.put("first")
    return q


@pytest.mark.parametrize("kind", sorted(BLOCKED))
def test_waiter_killed_while_blocked_is_not_counted(ctx: Any, kind: str) -> None:
    """#10: a consumer, producer or joiner SIGKILLed while blocked stayed counted in
    ``statistics()`` for ever, and cost every later put (get; task_done that finished
    the last task) a futex wake-up."""
    call, counted, raw, wake = BLOCKED[kind]
    q = blocking_queue(kind)
    try:
        p = ctx.Process(target=call, args=(q,))
        p.start()
        assert wait_until(lambda: counted(q) == 1, TIMEOUT), "the child never blocked"
        kill(p)
        assert counted(q) == 0, f"a dead waiter is still counted: {q.statistics()}"
        # the first wake-up after the death prunes it: later ones make no system call
        wake(q)
        assert raw(q) == 0, "every wake-up would still pay a system call"
    finally:
        q.close()


# ---- a consumer killed with a big message in hand -------------------------------------------


def take_raw_record_and_die(q: Any) -> None:
    q._get_bytes(True, TIMEOUT)  # taken off the ring, its transit segment never opened
    os.kill(os.getpid(), signal.SIGKILL)


def test_transit_segment_of_a_message_lost_with_its_consumer_is_reaped() -> None:
    before = segments_made_by({os.getpid()})
    q = Queue()  # 1 MiB: a segment of its own, which the transit segment names as parent
    q.put(b"x" * 800_000)  # more than half the ring: it travels in a transit segment
    p = FORK.Process(target=take_raw_record_and_die, args=(q,))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGKILL
    (transit,) = segments_made_by({os.getpid()}) - before - {q._segment.name.lstrip("/")}
    lowlevel.reap()
    assert transit in segments_made_by({os.getpid()})  # its queue is alive: kept
    q.close()
    lowlevel.reap()
    assert transit not in segments_made_by({os.getpid()})
