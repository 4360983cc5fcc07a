"""The primitives across processes (issue #2, "What must hold").

* every primitive passed into ``Pool`` tasks, ``ProcessPoolExecutor`` tasks, a
  ``Process`` started later, and over a ``Pipe`` to a process that was already
  running when it was created — under each start method (the ``ctx`` fixture), since
  that is where inheriting and unpickling a handle differ;
* mutual exclusion under contention: several processes, one counter, exact total;
* a SIGKILLed holder: the next ``acquire(timeout=5)`` gets the lock and says so;
* Ctrl-C (SIGINT) wakes a process blocked in ``acquire``/``wait``;
* Barrier, Event and Condition between processes, and a Barrier whose party died.

Child functions live at module level so spawn and forkserver children can import
them.  Children report through pipes or exit codes; every wait has a timeout.  The
machine has two shared cores: few processes, small counts.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing as mp
import os
import pickle
import re
import signal
import statistics
import threading
import time
import warnings
from multiprocessing.connection import Connection
from typing import Any

import pytest
from conftest import in_thread, join_all, wait_until

import shoal
from shoal import BarrierPartyDiedError, OwnerDiedWarning

TIMEOUT = 30.0  # a child's wait that should end long before, but must not hang forever
FORK = mp.get_context("fork")
KINDS = ["lock", "rlock", "sem", "bsem", "event", "cond", "barrier"]


# ---- helpers -------------------------------------------------------------------------


def reap_threads(*threads: threading.Thread) -> None:
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()


# ---- every primitive in every kind of process ---------------------------------------------


def exercise(kind: str, obj: Any) -> Any:
    """Run in a child: do something to ``obj`` whose effect the parent can check."""
    if kind in ("lock", "rlock"):
        # the parent holds it: the child must see the very same, held, lock
        return obj.acquire(block=False), obj.statistics().owner_pid
    if kind == "sem":
        return obj.acquire(timeout=TIMEOUT)
    if kind == "bsem":
        obj.release()
        try:
            obj.release()
        except ValueError:
            return "refused"
        return "accepted"
    if kind == "event":
        obj.set()
        return obj.is_set()
    if kind == "cond":
        with obj:  # a parent thread is waiting on it
            obj.notify()
        return True
    if kind == "barrier":
        return obj.wait(TIMEOUT)
    raise AssertionError(kind)


def exercise_all(objects: dict[str, Any]) -> dict[str, Any]:
    return {kind: exercise(kind, obj) for kind, obj in objects.items()}


def exercise_all_and_send(objects: dict[str, Any], conn: Connection) -> None:
    conn.send(exercise_all(objects))


def serve(conn: Connection) -> None:
    """An already-running process: exercise whatever arrives, until None."""
    while True:
        objects = conn.recv()
        if objects is None:
            return
        conn.send(exercise_all(objects))
        del objects  # close the handles before the next round


class World:
    """One of each primitive, set up so that a child's ``exercise`` shows.

    The parent holds the Lock and the RLock, has taken one unit of the
    BoundedSemaphore, and has a thread waiting on the Condition and one at the
    Barrier, for the child to notify and to meet.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.objects: dict[str, Any] = {
            "lock": shoal.Lock(),
            "rlock": shoal.RLock(),
            "sem": shoal.Semaphore(3),
            "bsem": shoal.BoundedSemaphore(2),
            "event": shoal.Event(),
            "cond": shoal.Condition(),
            "barrier": shoal.Barrier(2),
        }
        o = self.objects
        assert o["lock"].acquire(timeout=5)
        assert o["rlock"].acquire(timeout=5)
        assert o["bsem"].acquire(timeout=5)
        cond = o["cond"]

        def cond_wait() -> bool:
            with cond:
                return cond.wait(TIMEOUT)

        self.cond_waiter = in_thread(cond_wait)
        assert wait_until(lambda: cond._waiting == 1)
        self.barrier_waiter = in_thread(lambda: o["barrier"].wait(TIMEOUT))
        assert wait_until(lambda: o["barrier"].n_waiting == 1)

    def check(self, results: dict[str, Any]) -> None:
        o = self.objects
        assert results["lock"] == (False, self.pid)
        assert results["rlock"] == (False, self.pid)
        assert results["sem"] is True and o["sem"].get_value() == 2
        assert results["bsem"] == "refused" and o["bsem"].get_value() == 2
        assert results["event"] is True and o["event"].is_set()
        assert results["cond"] is True
        reap_threads(self.cond_waiter[0], self.barrier_waiter[0])
        assert self.cond_waiter[1] == [True], "the child's notify did not reach the parent"
        assert {results["barrier"], self.barrier_waiter[1][0]} == {0, 1}
        o["lock"].release()
        o["rlock"].release()


def test_every_primitive_in_pool_tasks(ctx: Any) -> None:
    world = World()
    with ctx.Pool(2) as pool:
        pending = {k: pool.apply_async(exercise, (k, world.objects[k])) for k in KINDS}
        results = {k: r.get(timeout=TIMEOUT) for k, r in pending.items()}
        # several at once, inside a container, through map
        assert pool.map(len, [world.objects, world.objects]) == [7, 7]
        pool.close()
        pool.join()
    world.check(results)


def test_every_primitive_in_process_pool_executor(ctx: Any) -> None:
    world = World()
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as executor:
        futures = {k: executor.submit(exercise, k, world.objects[k]) for k in KINDS}
        results = {k: f.result(timeout=TIMEOUT) for k, f in futures.items()}
    world.check(results)


def test_every_primitive_to_a_process_started_later(ctx: Any) -> None:
    world = World()  # created first; the process starts after
    receiver, sender = ctx.Pipe(duplex=False)
    p = ctx.Process(target=exercise_all_and_send, args=(world.objects, sender))
    p.start()
    sender.close()
    assert receiver.poll(TIMEOUT), "the child sent nothing"
    results = receiver.recv()
    join_all(p)
    assert p.exitcode == 0
    world.check(results)


def test_every_primitive_over_a_pipe_to_a_running_process(ctx: Any) -> None:
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=serve, args=(theirs,))
    p.start()  # running before any of the primitives exists
    theirs.close()
    try:
        for _ in range(2):  # and again, with new objects, to the same process
            world = World()
            ours.send(world.objects)
            assert ours.poll(TIMEOUT), "the running process answered nothing"
            world.check(ours.recv())
        ours.send(None)
        join_all(p)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
            p.join(5)


def test_multiprocessing_lock_cannot_do_this() -> None:
    """The standard library's refusal that shoal exists to lift."""
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(mp.Lock())
    assert pickle.loads(pickle.dumps(shoal.Lock())) is not None


# ---- mutual exclusion under contention -------------------------------------------------------

N_PROCS = 3
N_INCREMENTS = 150


def increment(lock: Any, counter: Any, n: int) -> None:
    """A deliberately racy read-modify-write: only the lock keeps it exact."""
    for _ in range(n):
        with lock:
            value = counter.value
            time.sleep(0.0001)  # widen the window another process would slip into
            counter.value = value + 1


def run_counter(ctx: Any, lock: Any) -> int:
    counter = ctx.RawValue("q", 0)
    procs = [ctx.Process(target=increment, args=(lock, counter, N_INCREMENTS)) for _ in "abc"]
    for p in procs:
        p.start()
    join_all(*procs, timeout=60)
    assert [p.exitcode for p in procs] == [0] * N_PROCS
    return counter.value


def test_counter_is_exact_under_contention(ctx: Any) -> None:
    assert run_counter(ctx, shoal.Lock()) == N_PROCS * N_INCREMENTS


@pytest.mark.parametrize(
    "factory",
    [shoal.RLock, shoal.BoundedSemaphore, shoal.Condition],
    ids=["RLock", "BoundedSemaphore", "Condition"],
)
def test_counter_is_exact_with_other_primitives(factory: Any) -> None:
    assert run_counter(FORK, factory()) == N_PROCS * N_INCREMENTS


# ---- a holder killed by SIGKILL --------------------------------------------------------------


def hold_forever(lock: Any, ready: Any) -> None:
    assert lock.acquire(timeout=TIMEOUT)
    if isinstance(lock, shoal.RLock):
        assert lock.acquire(timeout=TIMEOUT)  # recursively: depth must not leak
    ready.set()
    time.sleep(TIMEOUT * 2)


def killed_holder(ctx: Any, lock: Any) -> Any:
    """Start a child that takes ``lock``, SIGKILL it while it holds it, return it."""
    ready = shoal.Event()
    p = ctx.Process(target=hold_forever, args=(lock, ready))
    p.start()
    assert ready.wait(TIMEOUT), "the child never took the lock"
    assert lock.statistics().owner_pid == p.pid
    os.kill(p.pid, signal.SIGKILL)
    return p


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (Z: zombie, dead but not yet reaped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def assert_inherited_from(lock: Any, dead_pid: int) -> None:
    """Held here after an acquire from a dead owner: the lock says so until release."""
    assert lock.owner_died is True
    st = lock.statistics()
    assert st.locked and st.owner_pid == os.getpid()
    assert st.owner_died is True
    assert st.last_dead_owner_pid == dead_pid
    assert st.recursion_depth == 1
    lock.release()
    assert lock.owner_died is False
    assert lock.statistics().last_dead_owner_pid == dead_pid  # history stays
    # the next acquire is an ordinary one: no warning (warnings are errors here)
    assert lock.acquire(timeout=5)
    assert lock.owner_died is False
    lock.release()


@pytest.mark.parametrize("when", ["zombie", "reaped"])
@pytest.mark.parametrize("factory", [shoal.Lock, shoal.RLock], ids=["Lock", "RLock"])
def test_sigkilled_holder(factory: Any, when: str) -> None:
    lock = factory()
    p = killed_holder(FORK, lock)
    if when == "reaped":
        join_all(p)
    else:
        # not joined: the dead child is a zombie, its pid still taken
        assert wait_until(lambda: process_state(p.pid) == "Z")
    t0 = time.monotonic()
    with pytest.warns(OwnerDiedWarning, match=rf"process {p.pid}\b"):
        assert lock.acquire(timeout=5) is True
    assert time.monotonic() - t0 < 3.0, "noticing the dead owner took too long"
    assert_inherited_from(lock, p.pid)
    join_all(p)
    assert p.exitcode == -signal.SIGKILL


def test_sigkilled_holder_under_each_start_method(ctx: Any) -> None:
    lock = shoal.Lock()
    p = killed_holder(ctx, lock)
    with pytest.warns(OwnerDiedWarning):
        assert lock.acquire(timeout=5) is True
    assert_inherited_from(lock, p.pid)
    join_all(p)


def acquire_and_report(lock: Any, conn: Connection) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        got = lock.acquire(timeout=TIMEOUT)
        took = time.monotonic() - t0
        st = lock.statistics()
        conn.send(
            {
                "got": got,
                "took": took,
                "owner_died": lock.owner_died,
                "last_dead_owner_pid": st.last_dead_owner_pid,
                "warnings": [w.category.__name__ for w in caught],
            }
        )
    if got:
        lock.release()


@pytest.mark.parametrize("factory", [shoal.Lock, shoal.RLock], ids=["Lock", "RLock"])
def test_waiter_in_another_process_inherits_from_killed_holder(factory: Any) -> None:
    lock = factory()
    ready = shoal.Event()
    holder = FORK.Process(target=hold_forever, args=(lock, ready))
    holder.start()
    assert ready.wait(TIMEOUT)
    receiver, sender = FORK.Pipe(duplex=False)
    waiter = FORK.Process(target=acquire_and_report, args=(lock, sender))
    waiter.start()
    assert wait_until(lambda: lock.statistics().waiters == 1, timeout=TIMEOUT)
    time.sleep(0.1)
    assert not receiver.poll(0), "the waiter got a lock that is still held"
    os.kill(holder.pid, signal.SIGKILL)
    assert receiver.poll(5), "the blocked waiter did not inherit the dead holder's lock"
    report = receiver.recv()
    join_all(holder, waiter)
    assert report["got"] is True
    assert report["owner_died"] is True
    assert report["warnings"] == ["OwnerDiedWarning"]
    assert report["last_dead_owner_pid"] == holder.pid
    assert waiter.exitcode == 0
    # the waiter released it: repaired, no news for the next holder
    assert lock.acquire(timeout=5)
    assert lock.owner_died is False
    lock.release()


@pytest.mark.parametrize("factory", [shoal.Lock, shoal.RLock], ids=["Lock", "RLock"])
def test_owner_died_warning_as_error_hands_the_news_on(factory: Any) -> None:
    lock = factory()
    p = killed_holder(FORK, lock)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OwnerDiedWarning)
        with pytest.raises(OwnerDiedWarning):
            lock.acquire(timeout=5)
    st = lock.statistics()
    assert not st.locked, "acquire raised but left the lock held"
    assert lock.owner_died is False  # not held by us
    # nobody repaired the data yet: the next acquirer is told
    with pytest.warns(OwnerDiedWarning):
        assert lock.acquire(timeout=5)
    assert_inherited_from(lock, p.pid)
    join_all(p)


def test_internal_locks_do_not_warn() -> None:
    """Locks shoal uses for its own structures recover silently (no warning to users)."""
    barrier = shoal.Barrier(2)
    lock = barrier._cond._lock
    p = killed_holder(FORK, lock)
    assert lock.acquire(timeout=5)  # warnings are errors here: none was issued
    lock.release()
    join_all(p)


# ---- Ctrl-C ---------------------------------------------------------------------------------


def block_until_interrupted(kind: str, obj: Any, conn: Connection) -> None:
    """Block on ``obj``; report when (monotonic clock) KeyboardInterrupt arrived."""
    # what an interactive program has, even where the test runner was started with
    # SIGINT ignored (a shell's background job), which its children inherit
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def cond_wait() -> bool:
        with obj:
            return obj.wait(TIMEOUT)

    def cond_wait_for() -> bool:
        with obj:
            return obj.wait_for(lambda: False, TIMEOUT)

    calls = {
        "lock": lambda: obj.acquire(timeout=TIMEOUT),
        "rlock": lambda: obj.acquire(timeout=TIMEOUT),
        "sem": lambda: obj.acquire(timeout=TIMEOUT),
        "bsem": lambda: obj.acquire(timeout=TIMEOUT),
        "event": lambda: obj.wait(TIMEOUT),
        "cond": cond_wait,
        "wait_for": cond_wait_for,
        "barrier": lambda: obj.wait(TIMEOUT),
    }
    try:
        result = calls[kind]()
    except KeyboardInterrupt:
        conn.send(("interrupted", time.monotonic()))
        return
    conn.send(("returned", result))


def blocking_setup(kind: str) -> tuple[Any, Any]:
    """(object a child will block on, how many wait on it)."""
    if kind in ("lock", "rlock"):
        lock = shoal.Lock() if kind == "lock" else shoal.RLock()
        assert lock.acquire()
        return lock, lambda: lock.statistics().waiters
    if kind == "sem":
        sem = shoal.Semaphore(0)
        return sem, lambda: sem.statistics().waiters
    if kind == "bsem":
        bsem = shoal.BoundedSemaphore(1)
        assert bsem.acquire()
        return bsem, lambda: bsem.statistics().waiters
    if kind == "event":
        event = shoal.Event()
        return event, lambda: event.statistics().waiters
    if kind == "barrier":
        barrier = shoal.Barrier(2)
        return barrier, lambda: barrier.n_waiting
    cond = shoal.Condition()
    return cond, lambda: cond._waiting


def interrupt_child(ctx: Any, kind: str) -> None:
    obj, waiters = blocking_setup(kind)
    receiver, sender = ctx.Pipe(duplex=False)
    p = ctx.Process(target=block_until_interrupted, args=(kind, obj, sender))
    p.start()
    assert wait_until(lambda: waiters() == 1, timeout=TIMEOUT), "the child never blocked"
    sent = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    assert receiver.poll(5), "SIGINT did not interrupt the blocked call"
    what, when = receiver.recv()
    join_all(p)
    assert what == "interrupted"
    assert when - sent < 0.5, f"KeyboardInterrupt came {when - sent:.2f} s after SIGINT"
    assert p.exitcode == 0
    assert wait_until(lambda: waiters() == 0), "the interrupted waiter is still counted"


@pytest.mark.parametrize(
    "kind", ["lock", "rlock", "sem", "bsem", "event", "cond", "wait_for", "barrier"]
)
def test_sigint_interrupts_every_blocking_call(ctx: Any, kind: str) -> None:
    """A real SIGINT to a process blocked in each primitive's wait, under each start
    method: KeyboardInterrupt at once, and the waiter is no longer counted."""
    interrupt_child(ctx, kind)


SIGINT_TRIALS = 4
SIGINT_DELAY = 0.4  # a whole number of the native waits' sleep slices (50 and 200 ms)


def wait_notified_then_until_interrupted(cond: Any, conn: Connection) -> None:
    """Child: each trial, wait for a notify, then wait again until SIGINT arrives."""
    for _ in range(SIGINT_TRIALS):
        phase = "first wait"
        try:
            with cond:
                if not cond.wait(TIMEOUT):
                    conn.send(("not notified", None))
                    return
                phase = "second wait"
                cond.wait(SIGINT_DELAY + 2.0)
        except KeyboardInterrupt:
            conn.send(("interrupted" if phase == "second wait" else "early", time.monotonic()))
            continue
        conn.send(("returned", time.monotonic()))
        return


def test_sigint_interrupts_condition_wait_after_a_notify(ctx: Any) -> None:
    """#10: a waiter notified before, waiting again: SIGINT sent a whole number of
    sleep slices after the notify used to be handled just as a slice ran out, and the
    native loop slept on until the timeout (about half the trials)."""
    cond = shoal.Condition()
    receiver, sender = ctx.Pipe(duplex=False)
    p = ctx.Process(target=wait_notified_then_until_interrupted, args=(cond, sender))
    p.start()
    try:
        for trial in range(SIGINT_TRIALS):
            assert wait_until(lambda: cond._waiting == 1, timeout=TIMEOUT), "never waited"
            with cond:
                cond.notify()
            notified = time.monotonic()
            # the child waits again within microseconds; the signal must come a whole
            # number of slices into that wait, which is where it used to be lost
            time.sleep(SIGINT_DELAY)
            assert cond._waiting == 1, "the child is not waiting again yet"
            sent = time.monotonic()
            os.kill(p.pid, signal.SIGINT)
            assert receiver.poll(5), "the child stopped reporting"
            what, when = receiver.recv()
            assert what == "interrupted", f"trial {trial}: {what}"
            assert when - sent < 0.5, (
                f"trial {trial}: KeyboardInterrupt came {when - sent:.2f} s after SIGINT "
                f"({sent - notified:.3f} s after the notify)"
            )
    except BaseException:
        p.kill()  # it would wait for a notify that never comes
        raise
    finally:
        join_all(p)
    assert p.exitcode == 0


# ---- Barrier, Event, Condition between processes ----------------------------------------------


def wait_at_barrier(barrier: Any, conn: Connection) -> None:
    t0 = time.monotonic()
    try:
        conn.send(("index", barrier.wait(TIMEOUT)))
    except BarrierPartyDiedError as exc:
        conn.send(("BarrierPartyDiedError", exc.pid, time.monotonic() - t0))
    except threading.BrokenBarrierError:
        conn.send(("BrokenBarrierError", None, time.monotonic() - t0))


def test_barrier_across_processes(ctx: Any) -> None:
    arrived = shoal.Semaphore(0)
    # the action travels with the barrier; it holds a handle of its own
    barrier = shoal.Barrier(3, action=functools.partial(arrived.release))
    receiver, sender = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=wait_at_barrier, args=(barrier, sender)) for _ in "ab"]
    for p in procs:
        p.start()
    mine = barrier.wait(TIMEOUT)
    theirs = [receiver.recv() for _ in procs if receiver.poll(TIMEOUT)]
    join_all(*procs)
    assert sorted([mine] + [index for _, index in theirs]) == [0, 1, 2]
    assert arrived.get_value() == 1, "the action did not run exactly once"
    assert not barrier.broken and barrier.n_waiting == 0


class CountsUnderAStdlibLock:
    """A barrier action holding what may only be inherited (CPython's _DummyList)."""

    def __init__(self, ctx: Any) -> None:
        self.lock = mp.get_context(ctx.get_start_method()).Lock()
        self.count = mp.get_context(ctx.get_start_method()).RawValue("i", 0)

    def __call__(self) -> None:
        with self.lock:
            self.count.value += 1


def test_a_barrier_action_that_may_only_be_inherited_goes_with_the_process_start(
    ctx: Any,
) -> None:
    # CPython's _TestBarrier.test_action under spawn and forkserver: the action went
    # through plain pickle, which refuses a multiprocessing.Lock outside a process start
    action = CountsUnderAStdlibLock(ctx)
    barrier = shoal.Barrier(2, action=action)
    receiver, sender = ctx.Pipe(duplex=False)
    party = ctx.Process(target=wait_at_barrier, args=(barrier, sender))
    party.start()
    mine = barrier.wait(TIMEOUT)
    assert receiver.poll(TIMEOUT), "the other party did not pass the barrier"
    what, theirs = receiver.recv()
    join_all(party)
    receiver.close()
    sender.close()
    assert what == "index" and sorted([mine, theirs]) == [0, 1]
    assert action.count.value == 1, "the action did not run exactly once"
    # elsewhere than a process start it still refuses, as the standard library's does
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(barrier)


def barrier_party_that_gets_killed(barrier: Any) -> None:
    barrier.wait(TIMEOUT * 2)


def test_barrier_party_killed_breaks_it() -> None:
    barrier = shoal.Barrier(3)
    victim = FORK.Process(target=barrier_party_that_gets_killed, args=(barrier,))
    victim.start()
    receiver, sender = FORK.Pipe(duplex=False)
    survivor = FORK.Process(target=wait_at_barrier, args=(barrier, sender))
    survivor.start()
    assert wait_until(lambda: barrier.n_waiting == 2, timeout=TIMEOUT)
    os.kill(victim.pid, signal.SIGKILL)
    assert receiver.poll(10), "the surviving party hung instead of breaking"
    what, pid, took = receiver.recv()
    assert what == "BarrierPartyDiedError" and pid == victim.pid
    assert took < TIMEOUT
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(10)
    assert time.monotonic() - t0 < 2.0
    assert barrier.broken
    join_all(victim, survivor)
    barrier.reset()
    assert not barrier.broken and barrier.n_waiting == 0


def party_killed_on_its_way_in(barrier: Any, entering: Any) -> None:
    """Stop inside ``wait()`` with the barrier's lock held, before it is a party."""

    def register(token: int) -> None:
        entering.set()
        time.sleep(TIMEOUT * 2)

    barrier._register = register
    barrier.wait(TIMEOUT * 2)


def test_a_process_killed_on_its_way_into_wait_is_not_counted_as_a_party() -> None:
    # seen in the dead_owners chaos scenario: a kill between counting the newcomer
    # and recording who it is left a phantom party that no death check could find,
    # so the next live party was released alone (and the one after it hung)
    barrier = shoal.Barrier(2)
    entering = shoal.Event()
    victim = FORK.Process(target=party_killed_on_its_way_in, args=(barrier, entering))
    victim.start()
    assert entering.wait(TIMEOUT)
    os.kill(victim.pid, signal.SIGKILL)
    join_all(victim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OwnerDiedWarning)  # it held the barrier's lock
        assert barrier.n_waiting == 0
        other, theirs = in_thread(lambda: barrier.wait(10))
        mine = barrier.wait(10)
        reap_threads(other)
    assert sorted([mine, *theirs]) == [0, 1], "a live party was released alone"
    assert not barrier.broken and barrier.n_waiting == 0


def wait_for_event(event: Any, conn: Connection) -> None:
    conn.send((event.wait(TIMEOUT), time.monotonic()))


def test_event_set_wakes_waiters_in_other_processes(ctx: Any) -> None:
    event = shoal.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=wait_for_event, args=(event, sender)) for _ in "ab"]
    for p in procs:
        p.start()
    assert wait_until(lambda: event.statistics().waiters == 2, timeout=TIMEOUT)
    assert not receiver.poll(0.05)
    set_at = time.monotonic()
    event.set()
    reports = [receiver.recv() for _ in procs if receiver.poll(5)]
    join_all(*procs)
    assert [ok for ok, _ in reports] == [True, True]
    assert all(when - set_at < 1.0 for _, when in reports)


def wait_on_condition(cond: Any, conn: Connection) -> None:
    with cond:
        conn.send(cond.wait(TIMEOUT))


def test_condition_notify_across_processes(ctx: Any) -> None:
    cond = shoal.Condition()
    receiver, sender = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=wait_on_condition, args=(cond, sender)) for _ in "ab"]
    for p in procs:
        p.start()
    assert wait_until(lambda: cond._waiting == 2, timeout=TIMEOUT)
    with cond:
        cond.notify()
    assert receiver.poll(5) and receiver.recv() is True
    assert not receiver.poll(0.3), "notify() woke both processes"
    with cond:
        cond.notify_all()
    assert receiver.poll(5) and receiver.recv() is True
    join_all(*procs)
    assert [p.exitcode for p in procs] == [0, 0]


def semaphore_worker(sem: Any, inside: Any, peak: Any, n: int) -> None:
    for _ in range(n):
        with sem:
            now = inside.fetch_add(1) + 1
            peak.update(now)
            time.sleep(0.001)
            inside.fetch_add(-1)


class _Counter:
    """A shared counter on a RawValue, guarded by a shoal Lock, with a running max."""

    def __init__(self, ctx: Any) -> None:
        self.value = ctx.RawValue("q", 0)
        self.lock = shoal.Lock()

    def fetch_add(self, delta: int) -> int:
        with self.lock:
            old = self.value.value
            self.value.value = old + delta
            return old

    def update(self, candidate: int) -> None:
        with self.lock:
            self.value.value = max(self.value.value, candidate)


def test_semaphore_limits_concurrency_across_processes() -> None:
    sem = shoal.Semaphore(2)
    inside, peak = _Counter(FORK), _Counter(FORK)
    procs = [FORK.Process(target=semaphore_worker, args=(sem, inside, peak, 30)) for _ in "abc"]
    for p in procs:
        p.start()
    join_all(*procs)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert inside.value.value == 0
    assert 1 <= peak.value.value <= 2
    assert sem.get_value() == 2


def _slow_waiter(cond, out):
    with cond:
        started = time.monotonic()
        out.put((cond.wait(5.0), time.monotonic() - started))


def test_late_waiter_cannot_steal_a_notify_meant_for_an_earlier_one():
    """notify_all() wakes the waiters present; one arriving after it gets no wake-up.

    The earlier waiter is stopped (SIGSTOP) so it collects its wake-up late, as a
    descheduled process would; before the generation fix the late waiter took it.
    """
    ctx = mp.get_context("fork")
    cond, out = shoal.Condition(), ctx.SimpleQueue()
    child = ctx.Process(target=_slow_waiter, args=(cond, out))
    child.start()
    try:
        assert wait_until(lambda: cond._waiting >= 1, timeout=10)
        time.sleep(0.05)
        os.kill(child.pid, signal.SIGSTOP)
        with cond:
            cond.notify_all()
            late = cond.wait(0.2)
        os.kill(child.pid, signal.SIGCONT)
        notified, waited = out.get()
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.join(10)
    assert late is False
    assert notified is True and waited < 4.0
    cond.close()


def _wait_and_report(cond: Any, conn: Connection) -> None:
    with cond:
        conn.send(cond.wait(TIMEOUT))


def test_waiter_killed_inside_wait_does_not_absorb_a_notify() -> None:
    """#10: notify(1) goes to a live waiter, not to one SIGKILLed inside wait().

    Two children wait (the closed generation); both are stopped so that a first
    notify's wake-up stays uncollected, which makes a third waiter (a thread here)
    queue in the next generation.  One child is then killed and the other collects.
    The second notify(1) used to go to the dead child, retiring its generation, and
    the live thread timed out.
    """
    cond = shoal.Condition()
    receiver, sender = FORK.Pipe(duplex=False)
    doomed = FORK.Process(target=_wait_and_report, args=(cond, sender))
    other = FORK.Process(target=_wait_and_report, args=(cond, sender))
    doomed.start()
    other.start()
    try:
        assert wait_until(lambda: cond._waiting == 2, timeout=TIMEOUT)
        os.kill(doomed.pid, signal.SIGSTOP)
        os.kill(other.pid, signal.SIGSTOP)
        with cond:
            cond.notify()  # a wake-up for one of the two, collected by neither yet
        live, result = in_thread(lambda: _timed_wait(cond, 5.0))
        assert wait_until(lambda: cond._waiting == 2, timeout=TIMEOUT)  # one left + live
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(TIMEOUT)
        os.kill(other.pid, signal.SIGCONT)
        assert receiver.poll(5) and receiver.recv() is True, "the stopped waiter lost its notify"
        with cond:
            cond.notify()
        reap_threads(live)
        notified, took = result[0]
        assert notified is True, "the dead waiter absorbed the notify meant for the live one"
        assert took < 2.0
    finally:
        for p in (doomed, other):
            if p.is_alive():
                os.kill(p.pid, signal.SIGCONT)
        join_all(doomed, other)
    assert cond._waiting == 0


def _timed_wait(cond: Any, timeout: float) -> tuple[bool, float]:
    with cond:
        t0 = time.monotonic()
        notified = cond.wait(timeout)
        return notified, time.monotonic() - t0


# ---- waiters killed while blocked ------------------------------------------------------------

# where each primitive's raw waiter count lives in its payload (native/include/shoal_core.h):
# the word a release reads to decide whether it must wake anyone
_RAW_WAITERS = {"lock": 28, "rlock": 28, "sem": 4, "event": 4}


def block_forever(kind: str, obj: Any) -> None:
    """Child: block on ``obj`` until killed (TIMEOUT at most)."""
    if kind in ("lock", "rlock", "sem"):
        obj.acquire(timeout=TIMEOUT)
    elif kind == "event":
        obj.wait(TIMEOUT)
    else:
        with obj:
            obj.wait(TIMEOUT)


def raw_waiters(kind: str, obj: Any) -> int:
    if kind == "cond":
        state = shoal._core.load64(obj._mapping, obj._payload_offset)
        next_waiting = shoal._core.load32(obj._mapping, obj._payload_offset + 12)
        return ((state >> 32) & 0xFFFF) - (state & 0xFFFF) + next_waiting
    return shoal._core.load32(obj._mapping, obj._payload_offset + _RAW_WAITERS[kind])


def release_once(kind: str, obj: Any) -> None:
    """What a live process does next: release, set or notify (with nobody waiting)."""
    if kind in ("lock", "rlock", "sem"):
        obj.release()
    elif kind == "event":
        obj.set()
    else:
        with obj:
            obj.notify()


@pytest.mark.parametrize("kind", ["lock", "rlock", "sem", "event", "cond"])
def test_waiter_killed_while_blocked_is_not_counted(ctx: Any, kind: str) -> None:
    """#10: a waiter SIGKILLed while blocked used to stay in ``statistics()`` and
    ``repr`` for ever, and cost every later release a futex wake-up."""
    obj, waiters = blocking_setup(kind)
    p = ctx.Process(target=block_forever, args=(kind, obj))
    p.start()
    assert wait_until(lambda: waiters() == 1, timeout=TIMEOUT), "the child never blocked"
    os.kill(p.pid, signal.SIGKILL)
    join_all(p)
    assert waiters() == 0, f"a dead waiter is still counted: {obj!r}"
    assert not re.search(r"[1-9]\d* waiting", repr(obj)), repr(obj)
    # the first release after the death prunes it: later ones wake nobody
    release_once(kind, obj)
    assert raw_waiters(kind, obj) == 0, "every release would still pay a wake-up"
    if kind in ("lock", "rlock"):
        st = obj.statistics()
        assert st.waiters == 0 and not st.locked


# ---- how soon a death is noticed: medians, not loose bounds ------------------------------------

LATENCY_TRIALS = 5


def _hold_and_sleep(lock: Any, ready: Any) -> None:
    assert lock.acquire(timeout=TIMEOUT)
    ready.set()
    time.sleep(TIMEOUT * 2)


def _kill_when(predicate: Any, pid: int, killed_at: list[float]) -> threading.Thread:
    """A thread that SIGKILLs ``pid`` once ``predicate()`` holds, noting when."""

    def run() -> None:
        if wait_until(predicate, timeout=TIMEOUT):
            killed_at.append(time.monotonic())
            os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("factory", [shoal.Lock, shoal.RLock], ids=["Lock", "RLock"])
def test_dead_owner_noticed_within_about_50_ms(factory: Any) -> None:
    """docs/locks.md: a blocked waiter recovers a lock about 50 ms after its owner's
    death (the median of a few deaths, each while the waiter is already blocked)."""
    latencies = []
    for _ in range(LATENCY_TRIALS):
        lock, ready = factory(), shoal.Event()
        p = FORK.Process(target=_hold_and_sleep, args=(lock, ready))
        p.start()
        assert ready.wait(TIMEOUT)
        killed_at: list[float] = []
        killer = _kill_when(lambda lock=lock: lock.statistics().waiters == 1, p.pid, killed_at)
        with pytest.warns(OwnerDiedWarning):
            assert lock.acquire(timeout=TIMEOUT)
        latencies.append(time.monotonic() - killed_at[0])
        lock.release()
        reap_threads(killer)
        join_all(p)
    assert statistics.median(latencies) < 0.25, [f"{t * 1000:.0f} ms" for t in latencies]


def _notify_then_hold(cond: Any, ready: Any) -> None:
    with cond:
        cond.notify()
        ready.set()
        time.sleep(TIMEOUT * 2)  # killed here, holding the condition's lock


def test_condition_waiter_recovers_the_lock_of_a_notifier_killed_holding_it() -> None:
    """A notified waiter re-acquires the condition's lock from a notifier that died
    holding it: wait() returns True, told of the death, about 50 ms later."""
    latencies = []
    for _ in range(LATENCY_TRIALS):
        cond, ready = shoal.Condition(shoal.Lock()), shoal.Event()
        p = FORK.Process(target=_notify_then_hold, args=(cond, ready))
        killed_at: list[float] = []
        with pytest.warns(OwnerDiedWarning), cond:
            p.start()
            killer = _kill_when(ready.is_set, p.pid, killed_at)
            assert cond.wait(TIMEOUT) is True
            latencies.append(time.monotonic() - killed_at[0])
            assert cond._lock.owner_died
        reap_threads(killer)
        join_all(p)
        assert cond._waiting == 0
    assert statistics.median(latencies) < 0.25, [f"{t * 1000:.0f} ms" for t in latencies]


def test_barrier_party_death_noticed_within_about_100_ms() -> None:
    """docs/locks.md: the other parties get BarrierPartyDiedError about 100 ms after a
    waiting party dies (the median of a few deaths)."""
    latencies = []
    for _ in range(LATENCY_TRIALS):
        barrier = shoal.Barrier(3)
        victim = FORK.Process(target=barrier_party_that_gets_killed, args=(barrier,))
        victim.start()
        killed_at: list[float] = []
        killer = _kill_when(lambda b=barrier: b.n_waiting == 2, victim.pid, killed_at)
        with pytest.raises(BarrierPartyDiedError):
            barrier.wait(TIMEOUT)
        latencies.append(time.monotonic() - killed_at[0])
        reap_threads(killer)
        join_all(victim)
    assert statistics.median(latencies) < 0.4, [f"{t * 1000:.0f} ms" for t in latencies]
