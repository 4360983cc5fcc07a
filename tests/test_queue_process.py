"""Queues across processes (issue #3, "What must hold").

* a queue passed to ``Pool`` tasks (the tutorial's writer/reader pair, which fails with
  ``multiprocessing.Queue``), to ``ProcessPoolExecutor`` tasks, put on another queue
  to a process that is already running, and given to a ``Process`` started later —
  under each start method (the ``ctx`` fixture), since that is where inheriting and
  unpickling a handle differ;
* many producers and many consumers at once: every ``(producer, seq)`` item arrives
  exactly once and in per-producer order, with ``put``/``get`` and with
  ``put_many``/``get_many``, and ``shutdown()`` ends every consumer's ``for x in q``;
* ``JoinableQueue.join`` across processes;
* numpy arrays both ways (spawn included) arrive equal, and no transit segment is left.

Child functions live at module level so spawn and forkserver children can import
them.  Every wait has a timeout; children that overstay are killed.  The machine has
two shared cores: few processes, small counts.

Leftover shared memory is judged by the creator recorded in each segment's header
(``segments_made_by``), so segments of other test runs on the same machine do not
count.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import os
from multiprocessing.connection import Connection
from typing import Any

import pytest
from conftest import join_all, wait_until
from test_queue_api import segments_made_by

import shoal
from shoal import JoinableQueue, Queue, ShutDown, lowlevel

TIMEOUT = 30.0  # a wait that should end long before, but must not hang forever
FORK = mp.get_context("fork")


# ---- helpers -------------------------------------------------------------------------


def recv(conn: Connection, timeout: float = TIMEOUT) -> Any:
    assert conn.poll(timeout), "no answer from the child in time"
    return conn.recv()


def held_names() -> set[str]:
    """Names (as in /dev/shm) of the segments this process holds."""
    return {name.lstrip("/") for name in lowlevel.attached_names()}


def check_exactly_once_in_order(per_consumer: list[list[Any]], counts: dict[int, int]) -> None:
    """Every (producer, seq) arrived once, and each consumer saw each producer in order."""
    everything = [tuple(item) for got in per_consumer for item in got]
    expected = {(p, i) for p, n in counts.items() for i in range(n)}
    missing = expected - set(everything)
    assert not missing, f"{len(missing)} items lost, e.g. {sorted(missing)[:5]}"
    assert len(everything) == len(expected), "some items arrived twice"
    for got in per_consumer:
        for p in counts:
            seqs = [i for pp, i in got if pp == p]
            assert seqs == sorted(seqs), f"producer {p}'s items out of order"


# ---- the tutorial's writer and reader, as Pool tasks ----------------------------------


def write(q: Any, values: list[Any]) -> int:
    for value in values:
        q.put(value, timeout=TIMEOUT)
    return os.getpid()


def read(q: Any, n: int) -> list[Any]:
    return [q.get(timeout=TIMEOUT) for _ in range(n)]


def test_writer_and_reader_as_pool_tasks(ctx: Any) -> None:
    q = Queue()
    try:
        with ctx.Pool(2) as pool:
            pw = pool.apply_async(write, (q, ["A", "B", "C"]))
            pr = pool.apply_async(read, (q, 3))
            assert pr.get(timeout=TIMEOUT) == ["A", "B", "C"]
            pw.get(timeout=TIMEOUT)
            # the same queue, many times over, through map
            assert pool.starmap(write, [(q, [i]) for i in range(6)], chunksize=1)
            assert sorted(read(q, 6)) == list(range(6))
            pool.close()
            pool.join()
        assert q.empty()
    finally:
        q.close()


def test_multiprocessing_queue_cannot_do_this() -> None:
    # the failure the tutorial ran into, which shoal's queue fixes
    q = FORK.Queue()
    try:
        with FORK.Pool(1) as pool, pytest.raises(RuntimeError, match="inheritance"):
            pool.apply_async(write, (q, ["A"])).get(timeout=TIMEOUT)
    finally:
        q.close()
        q.join_thread()


def test_queue_in_process_pool_executor_tasks(ctx: Any) -> None:
    q = JoinableQueue()
    try:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as executor:
            reader = executor.submit(read, q, 4)
            writer = executor.submit(write, q, [1, "two", (3,), {"four": 4}])
            assert reader.result(timeout=TIMEOUT) == [1, "two", (3,), {"four": 4}]
            assert writer.result(timeout=TIMEOUT) != os.getpid()
        assert q.statistics().unfinished_tasks == 4  # counted across processes
    finally:
        q.close()


# ---- handed to a process started later, and over another queue -------------------------


def serve(carrier: Any, conn: Connection) -> None:
    """Take queues from ``carrier`` and echo one item through each, until shut down."""
    for request in carrier:
        inbox, outbox = request
        outbox.put(("echo", inbox.get(timeout=TIMEOUT)), timeout=TIMEOUT)
        inbox.close()
        outbox.close()
    conn.send("done")


def test_queue_over_another_queue_and_to_a_process_started_later(ctx: Any) -> None:
    carrier = Queue()
    parent, child = ctx.Pipe()
    try:
        server = ctx.Process(target=serve, args=(carrier, child))
        server.start()
        # made after the server started: they can only get there inside another queue
        for i in range(2):
            inbox, outbox = Queue(), make_outbox(i)
            carrier.put((inbox, outbox), timeout=TIMEOUT)
            inbox.put(i)
            assert outbox.get(timeout=TIMEOUT) == ("echo", i)
            inbox.close()
            outbox.close()
        # and a queue given to a process started after it was made
        late = Queue()
        p = ctx.Process(target=write, args=(late, ["late"]))
        p.start()
        assert late.get(timeout=TIMEOUT) == "late"
        join_all(p)
        assert p.exitcode == 0
        late.close()
        carrier.shutdown()
        assert recv(parent) == "done"
        join_all(server)
        assert server.exitcode == 0
    finally:
        carrier.close()
        parent.close()
        child.close()


def make_outbox(i: int) -> Any:
    """Each kind of queue goes over the carrier."""
    return shoal.SimpleQueue() if i % 2 else JoinableQueue(maxsize=1)


# ---- many producers, many consumers -----------------------------------------------------


def produce(q: Any, producer: int, n: int, batch: int) -> None:
    if batch:
        for start in range(0, n, batch):
            items = [(producer, i) for i in range(start, min(n, start + batch))]
            q.put_many(items, timeout=TIMEOUT)
    else:
        for i in range(n):
            q.put((producer, i), timeout=TIMEOUT)


def consume(q: Any, conn: Connection, batch: int) -> None:
    got: list[Any] = []
    if batch:
        while True:
            try:
                got += q.get_many(batch, timeout=TIMEOUT)
            except ShutDown:
                break
    else:
        for item in q:  # ends when the queue is shut down and drained
            got.append(item)
    conn.send(got)


@pytest.mark.parametrize("batch", [0, 37], ids=["put-get", "put_many-get_many"])
def test_many_producers_many_consumers(batch: int) -> None:
    n_producers, n_consumers, per_producer = 3, 2, 3000
    q = Queue(maxsize=64, capacity=2048)  # small: producers and consumers both wait
    pipes = [FORK.Pipe(duplex=False) for _ in range(n_consumers)]
    try:
        consumers = [FORK.Process(target=consume, args=(q, w, batch)) for _, w in pipes]
        producers = [
            FORK.Process(target=produce, args=(q, p, per_producer, batch))
            for p in range(n_producers)
        ]
        for p in consumers + producers:
            p.start()
        join_all(*producers)
        assert all(p.exitcode == 0 for p in producers)
        q.shutdown()  # the end of the stream: every consumer's loop ends
        results = [recv(r) for r, _ in pipes]
        join_all(*consumers)
        assert all(p.exitcode == 0 for p in consumers)
        check_exactly_once_in_order(results, dict.fromkeys(range(n_producers), per_producer))
        assert q.qsize() == 0
        stats = q.statistics()
        assert stats.producers_waiting == 0 and stats.consumers_waiting == 0
    finally:
        q.close()
        for r, w in pipes:
            r.close()
            w.close()


def test_shutdown_ends_iteration_in_other_processes(ctx: Any) -> None:
    # consumers blocked in get() in spawned/forkserver children wake on shutdown
    q = Queue()
    r, w = ctx.Pipe(duplex=False)
    try:
        consumer = ctx.Process(target=consume, args=(q, w, 0))
        consumer.start()
        q.put_many([(0, i) for i in range(5)])
        assert wait_until(lambda: q.statistics().consumers_waiting == 1, TIMEOUT)
        q.shutdown()
        assert recv(r) == [(0, i) for i in range(5)]
        join_all(consumer)
        assert consumer.exitcode == 0
    finally:
        q.close()
        r.close()
        w.close()


# ---- JoinableQueue ----------------------------------------------------------------------------


def work(jobs: Any, results: Any) -> None:
    for job in jobs:
        results.put(job * job, timeout=TIMEOUT)
        jobs.task_done()


def wait_for_join(jobs: Any, conn: Connection) -> None:
    conn.send(jobs.join(timeout=TIMEOUT))


def test_joinable_queue_join_across_processes() -> None:
    jobs, results = JoinableQueue(), Queue()
    r, w = FORK.Pipe(duplex=False)
    try:
        jobs.put_many(range(40))
        joiner = FORK.Process(target=wait_for_join, args=(jobs, w))
        joiner.start()
        assert jobs.join(timeout=0.05) is False  # nobody works yet
        workers = [FORK.Process(target=work, args=(jobs, results)) for _ in range(2)]
        for p in workers:
            p.start()
        assert jobs.join(timeout=TIMEOUT) is True
        assert recv(r) is True  # the join in another process returned too
        assert sorted(results.get_many(100, timeout=TIMEOUT)) == [i * i for i in range(40)]
        jobs.shutdown()
        join_all(joiner, *workers)
        assert all(p.exitcode == 0 for p in workers)
        assert jobs.statistics().unfinished_tasks == 0
    finally:
        jobs.close()
        results.close()
        r.close()
        w.close()


def join_in_child(jobs: Any) -> None:
    assert jobs.join(timeout=TIMEOUT)


def test_task_done_in_parent_releases_join_in_child(ctx: Any) -> None:
    jobs = JoinableQueue()
    try:
        jobs.put("job")
        child = ctx.Process(target=join_in_child, args=(jobs,))
        child.start()
        assert jobs.get(timeout=TIMEOUT) == "job"
        assert wait_until(lambda: child.pid is not None, TIMEOUT)
        jobs.task_done()
        join_all(child)
        assert child.exitcode == 0
    finally:
        jobs.close()


# ---- numpy arrays, both ways -------------------------------------------------------------


def double_arrays(inbox: Any, outbox: Any, conn: Connection) -> None:
    """Receive arrays, check they are writable, send back each one doubled."""
    import numpy as np  # only in this child, which needs it

    count = 0
    for array in inbox:
        assert isinstance(array, np.ndarray) and array.flags.writeable
        array *= 2  # in place: the received copy is the child's own
        outbox.put(array, timeout=TIMEOUT)
        count += 1
    outbox.put_many([np.full(200_000, 7, dtype=np.int16), count], timeout=TIMEOUT)
    conn.send(os.getpid())


def test_numpy_arrays_across_processes(ctx: Any) -> None:
    import numpy as np  # a test dependency: missing, the test fails

    inbox, outbox = Queue(capacity=1 << 16), Queue(capacity=1 << 16)
    r, w = ctx.Pipe(duplex=False)
    try:
        arrays = [
            np.arange(1 << 18, dtype=np.float64),  # 2 MiB, through a transit segment
            np.random.default_rng(1).random((512, 300)).T,  # Fortran order, 1.2 MB
            np.arange(100, dtype=np.int64),  # small: inline in the ring
        ]
        child = ctx.Process(target=double_arrays, args=(inbox, outbox, w))
        child.start()
        for a in arrays:
            inbox.put(a, timeout=TIMEOUT)
        inbox.shutdown()
        for a in arrays:
            back = outbox.get(timeout=TIMEOUT)
            assert back.dtype == a.dtype and back.shape == a.shape
            assert (back == a * 2).all()
        big, count = outbox.get_many(2, timeout=TIMEOUT)
        assert count == 3 and big.shape == (200_000,) and (big == 7).all()
        child_pid = recv(r)
        join_all(child)
        assert child.exitcode == 0
        del back, big
        # nothing either side made is left in /dev/shm but what this process still
        # holds (the queues' own memory): no transit segment, none of the child's
        assert not segments_made_by({os.getpid(), child_pid}) - held_names()
    finally:
        inbox.close()
        outbox.close()
        r.close()
        w.close()


def leave_big_items(q: Any) -> None:
    q.put(bytearray(300_000), timeout=TIMEOUT)
    q.put(b"x" * 100_000, timeout=TIMEOUT)


def test_items_never_received_leave_nothing_behind(ctx: Any) -> None:
    # a child sends big items nobody takes; when the last handle goes, so do they
    q = Queue(capacity=4096)
    child = ctx.Process(target=leave_big_items, args=(q,))
    child.start()
    join_all(child)
    assert child.exitcode == 0 and q.qsize() == 2
    made = segments_made_by({child.pid})
    assert len(made) == 2  # one transit segment each
    q.close()
    assert not segments_made_by({child.pid})


def test_mapping_of_a_received_array_outlives_the_queue() -> None:
    import numpy as np  # a test dependency: missing, the test fails

    q = Queue()
    p = FORK.Process(target=write, args=(q, [np.ones(1 << 16)]))
    p.start()
    array = q.get(timeout=TIMEOUT)
    join_all(p)
    q.close()  # the queue is gone; the array's memory is its own mapping
    assert array.sum() == 1 << 16
    with open("/proc/self/maps") as maps:
        assert any("/dev/shm/shoal-" in line and "(deleted)" in line for line in maps)
    del array


# ---- nonblocking calls under contention ----------------------------------------------------


def put_nowait_many(q: Any, n: int, conn: Connection) -> None:
    refused = 0
    for i in range(n):
        try:
            q.put_nowait(i)
        except Exception:
            refused += 1
    conn.send(refused)


def get_nowait_many(q: Any, n: int, conn: Connection) -> None:
    refused = 0
    for _ in range(n):
        try:
            q.get_nowait()
        except Exception:
            refused += 1
    conn.send(refused)


def test_nonblocking_calls_do_not_fail_because_another_process_holds_the_lock() -> None:
    # room and items are there all along: the only obstacle is the other process, in the
    # middle of its own put or get (before the fix, hundreds of spurious Full/Empty)
    n = 20_000
    q = Queue(capacity=1 << 22)
    pipes = [FORK.Pipe(duplex=False) for _ in range(2)]
    try:
        for target in (put_nowait_many, get_nowait_many):
            procs = [FORK.Process(target=target, args=(q, n, w)) for _, w in pipes]
            for p in procs:
                p.start()
            refused = [recv(r) for r, _ in pipes]
            join_all(*procs)
            assert refused == [0, 0], target.__name__
            assert q.qsize() == (2 * n if target is put_nowait_many else 0)
    finally:
        q.close()
        for r, w in pipes:
            r.close()
            w.close()


# ---- closing right after starting a child (#10) --------------------------------------------


def get_one_and_report(q: Any, conn: Connection) -> None:
    import queue as stdlib_queue

    try:
        conn.send(("got", q.get(timeout=5)))
    except stdlib_queue.Empty:
        conn.send(("empty", None))


def test_item_put_then_closed_reaches_a_child_started_just_before(ctx: Any) -> None:
    # the stdlib idiom: start the consumer, put, close, join_thread, join.  Under fork
    # the child took its reference on the inherited queue only once it ran its at-fork
    # hooks, so a parent closing before then was "the last handle" and discarded what
    # it had just put (#10: 3 of 3 runs lost the item)
    q = Queue()
    parent, child = ctx.Pipe(duplex=False)
    try:
        p = ctx.Process(target=get_one_and_report, args=(q, child))
        p.start()
        q.put({"item": 1})
        q.close()
        q.join_thread()
        assert recv(parent) == ("got", {"item": 1})
        join_all(p)
        assert p.exitcode == 0
    finally:
        parent.close()
        child.close()


# A fresh interpreter whose first at-fork hook (registered before shoal's, so it runs
# first in the child) holds the child until the parent has closed its handles: the
# race above made certain.
HELD_CHILD = """
import os, sys
r, w = os.pipe()
held = []
os.register_at_fork(after_in_child=lambda: held and os.read(r, 1))
import shoal

q, lock = shoal.Queue(), shoal.Lock()
q.put("kept")
held.append(1)
pid = os.fork()
if pid == 0:
    item = q.get(timeout=5)
    ok = lock.acquire(timeout=1)
    os._exit(0 if (item, ok) == ("kept", True) else 3)
q.close()
lock.close()
replacement = shoal.Lock()  # would take the lock's block, had the close freed it
replacement.acquire()
os.write(w, b"x")
_, status = os.waitpid(pid, 0)
replacement.release()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_objects_closed_by_the_parent_before_a_forked_child_runs_stay_the_childs() -> None:
    # an inherited object is the child's from the fork on: the parent closing its
    # handle first neither discards the queue's items nor frees the lock's block
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", HELD_CHILD], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


HELD_CHILD_PASSES_IT_ON = """
import os, pickle, sys
r, w = os.pipe()
held = []
os.register_at_fork(after_in_child=lambda: held and os.read(r, 1))
import shoal

q = shoal.Queue()
held.append(1)
pid = os.fork()
if pid == 0:
    try:  # what handing it to a Pool task or a spawned process does
        pickle.loads(pickle.dumps(q)).close()
    except shoal.SegmentNotFoundError:
        os._exit(3)
    os._exit(0)
q.close()
os.write(w, b"x")
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_queue_closed_by_the_parent_before_a_forked_child_runs_can_be_passed_on() -> None:
    # #10: the child recorded itself as a holder only in its at-fork hook, so the parent
    # closing first unlinked the name: the child kept its mapping but could not hand the
    # queue on.  The parent's entry now stays, reserved, until the fork has settled.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", HELD_CHILD_PASSES_IT_ON], timeout=60, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


# An at-fork hook registered before shoal was imported runs after shoal's own "before"
# hooks: an object it opens is in the child's list of live objects, but missed the
# child references the parent took (what another thread unpickling a Pool result does
# while a Pool's worker handler forks a replacement: seen as a count one short).
OPENED_DURING_THE_FORK = """
import os, pickle, sys
late = []
os.register_at_fork(before=lambda: late and late.append(pickle.loads(late[0])))
import shoal
from shoal import _core

lock = shoal.Lock()
late.append(pickle.dumps(lock))
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: the child gives back every reference it holds
_, status = os.waitpid(pid, 0)
count = _core.load64(lock._segment.buffer, lock._header_offset) & 0xFFFFFFFF
sys.exit(0 if count == 2 else 10 + count)  # the parent's two handles, nothing else
"""


def test_an_object_opened_while_a_fork_runs_its_hooks_keeps_its_count() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", OPENED_DURING_THE_FORK], timeout=60, capture_output=True
    )
    assert done.returncode == 0, (done.returncode, done.stderr.decode()[-2000:])
