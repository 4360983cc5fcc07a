"""Arenas and handles: sub-allocation, reference counts across processes, stale handles (#2).

What these tests hold ``shoal._handle`` to:

* ten thousand locks share a handful of arena segments, and blocks are reused;
* a handle (pickle) counts as a reference in every process that unpickles it, a
  forked child takes one for each object it inherits, and each process gives its
  references back when it closes, collects or exits, so the block is freed exactly
  when the last one goes; a handle to a freed block is refused rather than aliased;
* a pickle carries a reference *in flight* that its first unpickling adopts, so the
  object outlives a sender that drops it or exits before the receiver unpickles
  (#4); a duplicate unpickle takes a plain reference; lost pickles expire;
* the arena allocator (a bitmap of 64-byte blocks) agrees with a dict model under a
  hypothesis state machine.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any

import pytest
from conftest import join_all, wait_until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import shoal
from shoal import _core, _handle, _memory
from shoal._handle import (
    _BITMAP_BYTES,
    _BLOCK_COUNT,
    _FIRST_BLOCK,
    BLOCK_SIZE,
    MAX_ARENA_OBJECT,
    OBJECT_HEADER_SIZE,
    _Arena,
)
from shoal.lowlevel import HEADER_SIZE

TIMEOUT = 20.0
FORK = mp.get_context("fork")


def count_of(obj: Any) -> int:
    """The shared reference count of a shoal object (every process's handles)."""
    return _core.load64(obj._segment.buffer, obj._header_offset)


def block_in_use(segment: Any, offset: int) -> bool:
    index = (offset - _FIRST_BLOCK) // BLOCK_SIZE
    bitmap = bytes(segment.buffer[_handle._ARENA_BITMAP : _handle._ARENA_BITMAP + _BITMAP_BYTES])
    return bool(int.from_bytes(bitmap, "little") >> index & 1)


@pytest.fixture
def new_segments(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the segments this process creates for objects during the test
    (not the pages of its ledger, which records the references it holds)."""
    names: list[str] = []
    original = _memory._new_name

    def recording() -> str:
        name = original()
        if not _handle._ledger.growing:
            names.append(name)
        return name

    monkeypatch.setattr(_memory, "_new_name", recording)
    return names


# ---- child-side helpers (module level: spawn and forkserver import them) ---------------


def use_lock(lock: Any) -> int:
    assert lock.acquire(timeout=TIMEOUT)
    lock.release()
    return os.getpid()


def pickles(obj: Any) -> bool:
    """Whether ``obj`` pickles; the copy is unpickled and closed at once, since a
    pickle never unpickled would keep the object alive (#4: references in flight)."""
    pickle.loads(pickle.dumps(obj)).close()
    return True


def unpickle_stale(data: bytes, conn: Connection) -> None:
    try:
        pickle.loads(data)
    except shoal.SegmentNotFoundError as exc:
        conn.send(("SegmentNotFoundError", str(exc)))
    except Exception as exc:
        conn.send((type(exc).__name__, str(exc)))
    else:
        conn.send(("unpickled", ""))


def use_after_parent_closed(lock: Any, conn: Connection) -> None:
    assert conn.poll(TIMEOUT), "the parent never closed its handle"
    conn.recv()
    got = lock.acquire(timeout=5)
    if got:
        lock.release()
    conn.send((got, lock.closed, count_of(lock), pickles(lock)))


def report_inherited(lock: Any, conn: Connection) -> None:
    # passed as a Process argument: inherited under fork, unpickled otherwise
    conn.send((lock.closed, count_of(lock), pickles(lock), use_lock(lock)))


class SlowToPickle:
    """Holds the queue's feeder thread up, so the process is exiting when it pickles on."""

    def __reduce__(self) -> tuple[Any, ...]:
        time.sleep(0.3)
        return (SlowToPickle, ())


def put_and_exit(queue: Any, lock: Any) -> None:
    # returns at once: the feeder thread pickles [slow, lock] while the process exits
    queue.put([SlowToPickle(), lock])


def fork_child_allocates(lock: Any, conn: Connection) -> None:
    fresh = [shoal.Lock() for _ in range(50)]
    ok = use_lock(lock) == os.getpid() and all(use_lock(f) for f in fresh)
    for f in fresh:
        f.close()
    conn.send(ok)


# ---- arenas: ten thousand locks, a handful of segments -------------------------------------


def arena_usage() -> dict[str, int]:
    """Blocks in use in each of this process's arenas, by name."""
    return {a.segment.name: a.used() for a in _handle._allocator.arenas}


def test_ten_thousand_lock_cycles_reuse_an_arena(new_segments: list[str]) -> None:
    keep = shoal.Lock()  # pins an arena
    usage_before = arena_usage()
    held_before = shoal.lowlevel.attached_names()
    most_held = 0
    seen = set()
    for i in range(10_000):
        lock = shoal.Lock()
        seen.add(lock._segment.name)
        lock.close()
        if i % 250 == 0:
            most_held = max(most_held, len(shoal.lowlevel.attached_names() - held_before))
    assert len(new_segments) <= 1  # keep's arena, if the others were full
    assert len(seen) <= 2
    assert most_held == 0, f"{most_held} more segments held during the loop"
    usage_after = arena_usage()
    for name in seen:
        assert usage_after.get(name, 0) == usage_before.get(name, 0), "blocks not given back"
    keep.close()


def test_ten_thousand_live_locks_need_a_handful_of_segments(new_segments: list[str]) -> None:
    # a Lock takes two blocks: its mutex and its waiters' tokens (#10)
    lock_blocks = -(-(_core.LOCK_SIZE + _handle.OBJECT_HEADER_SIZE) // _handle.BLOCK_SIZE)
    assert lock_blocks == 2
    per_arena = _BLOCK_COUNT // lock_blocks
    locks = [shoal.Lock() for _ in range(10_000)]
    try:
        segments = {lock._segment.name for lock in locks}
        assert len(segments) <= 10_000 // per_arena + 2
        assert len(new_segments) <= 10_000 // per_arena + 1
        places = {(lock._segment.name, lock._header_offset) for lock in locks}
        assert len(places) == len(locks), "two live locks share a block"
        assert all(count_of(lock) == 1 for lock in locks[::97])
        for lock in locks[:3]:
            assert lock.acquire(timeout=1)
            lock.release()
        usage = arena_usage()
        ours = {name: sum(lock._segment.name == name for lock in locks) for name in segments}
    finally:
        for lock in locks:
            lock.close()
    usage_after = arena_usage()
    for name in segments:
        assert usage_after[name] == usage[name] - lock_blocks * ours[name], "blocks not given back"


def test_idle_arenas_are_dropped_only_when_empty(new_segments: list[str]) -> None:
    # fill whole arenas, so that this test owns at least one from its first block
    locks = [shoal.Lock() for _ in range(2 * _BLOCK_COUNT + 10)]
    try:
        ours = [name for name in new_segments if name in shoal.lowlevel.attached_names()]
        assert ours, "no arena was created"
        first = ours[0]
        in_first = [lock for lock in locks if lock._segment.name == first]
        survivor = in_first.pop()
        for lock in in_first:
            lock.close()
        # the next allocations may go anywhere, but the arena with a live lock stays
        more = [shoal.Lock() for _ in range(5)]
        assert first in shoal.lowlevel.attached_names()
        assert survivor.acquire(timeout=1)
        survivor.release()
        for lock in more:
            lock.close()
    finally:
        for lock in locks:
            lock.close()
    # every arena is empty now: an allocation drops all but the one it uses
    last = shoal.Lock()
    last.close()
    assert len(set(new_segments) & shoal.lowlevel.attached_names()) <= 1
    assert wait_until(lambda: sum(os.path.exists("/dev/shm" + n) for n in new_segments) <= 1, 5)


def test_a_dropped_arena_lets_go_of_its_mapping_at_once(new_segments: list[str]) -> None:
    # #2: an arena view and its segment pointed at each other, so a dropped arena's
    # mapping (and the file descriptor mmap keeps) waited for the cycle collector
    def fd_count() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.disable()
    try:
        fds = fd_count()
        locks = [shoal.Lock() for _ in range(2 * _BLOCK_COUNT)]  # at least one new arena
        assert new_segments
        for lock in locks:
            lock.close()
        del locks, lock
        shoal.Lock().close()  # drops every idle arena but the one it used
        assert fd_count() <= fds + 1, "dropped arenas still hold their mappings"
    finally:
        gc.enable()


def test_big_objects_get_a_segment_of_their_own(new_segments: list[str]) -> None:
    limit = MAX_ARENA_OBJECT + OBJECT_HEADER_SIZE
    segment, offset, serial = _handle._allocator.allocate(limit)
    assert segment.kind == _memory.KIND_ARENA
    _handle._release_now(segment, offset)
    segment, offset, serial = _handle._allocator.allocate(limit + 1)
    assert segment.kind == _memory.KIND_DATA
    assert (offset, serial) == (HEADER_SIZE, 1)
    assert segment.size >= HEADER_SIZE + limit + 1
    name = segment.name
    _handle._release_now(segment, offset)
    assert segment.closed and not os.path.exists("/dev/shm" + name)


def test_a_big_barrier_lives_in_its_own_segment() -> None:
    parties = MAX_ARENA_OBJECT // 8 + 1  # 8 bytes a party: more than an arena takes
    barrier = shoal.Barrier(parties)
    assert barrier._segment.kind == _memory.KIND_DATA
    name = barrier._segment.name
    copy = pickle.loads(pickle.dumps(barrier))
    assert copy.parties == parties and copy._segment is barrier._segment
    assert count_of(barrier) == 2
    copy.close()
    assert count_of(barrier) == 1
    barrier.close()
    assert not os.path.exists("/dev/shm" + name)


# ---- handles ---------------------------------------------------------------------------


def test_a_closed_object_cannot_be_pickled() -> None:
    lock = shoal.Lock()
    assert not lock.closed
    lock.close()
    assert lock.closed
    with pytest.raises(shoal.ClosedError):
        pickle.dumps(lock)
    lock.close()  # harmless


def test_unpickling_in_the_same_process_takes_a_reference() -> None:
    lock = shoal.Lock()
    copy = pickle.loads(pickle.dumps(lock))
    assert count_of(lock) == 2
    with copy:
        assert not lock.acquire(block=False)
    del copy
    gc.collect()
    assert count_of(lock) == 1
    lock.close()


def test_a_handle_to_a_freed_block_is_refused(ctx: Any) -> None:
    keep = shoal.Lock()  # keeps the arena, so only the block is gone
    lock = shoal.Lock()
    segment, offset = lock._segment, lock._header_offset
    data = pickle.dumps(lock)
    # the pickle's reference in flight keeps the block (#4) until an unpickling adopts it
    lock.close()
    assert block_in_use(segment, offset)
    pickle.loads(data).close()
    assert not block_in_use(segment, offset)
    with pytest.raises(shoal.SegmentNotFoundError, match="no longer exists"):
        pickle.loads(data)
    # the block's next tenant is not aliased by the old handle
    tenants = [shoal.Lock() for _ in range(4)]
    tenant = next((t for t in tenants if t._header_offset == offset), None)
    with pytest.raises(shoal.SegmentNotFoundError):
        pickle.loads(data)
    if tenant is not None:
        assert count_of(tenant) == 1, "the refused handle changed the tenant's count"
    # nor from another process
    here, there = ctx.Pipe()
    p = ctx.Process(target=unpickle_stale, args=(data, there))
    p.start()
    assert here.poll(TIMEOUT)
    kind, _ = here.recv()
    join_all(p)
    assert kind == "SegmentNotFoundError"
    if tenant is not None:
        assert count_of(tenant) == 1
    for t in tenants:
        t.close()
    keep.close()


@pytest.mark.parametrize(
    "where", ["arena header", "bitmap", "misaligned", "past the end", "negative"]
)
def test_a_forged_handle_offset_is_refused(where: str) -> None:
    lock = shoal.Lock()
    arena = _Arena.of(lock._segment)
    used = arena.used()
    offset = {
        "arena header": _handle._ARENA_USED,  # would take "references" on the counter
        "bitmap": _handle._ARENA_BITMAP,
        "misaligned": lock._header_offset + 8,
        "past the end": lock._segment.size,
        "negative": -64,
    }[where]
    handle = (lock._segment.name, offset, lock._serial)
    with pytest.raises(ValueError, match="does not name an object"):
        _handle._rebuild(shoal.Lock, handle, True)
    assert arena.used() == used
    assert count_of(lock) == 1
    with pytest.raises(TypeError):
        _handle._rebuild(shoal.Lock, (lock._segment.name, str(offset), 1), True)
    lock.close()


def test_pool_workers_give_their_references_back(ctx: Any) -> None:
    lock = shoal.Lock()
    segment, offset = lock._segment, lock._header_offset
    pool = ctx.Pool(2)
    try:
        results = [pool.apply_async(use_lock, (lock,)) for _ in range(6)]
        assert all(r.get(timeout=TIMEOUT) > 0 for r in results)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    # the workers unpickled it for each task (or inherited it, under fork) and have
    # given every reference back: at task end, or at exit; each task's pickle was
    # adopted by its unpickling, so nothing is left in flight either (#4)
    assert count_of(lock) == 1
    assert segment.in_flight == 0
    assert block_in_use(segment, offset)
    lock.close()
    assert not block_in_use(segment, offset), "the arena block was not freed"


def test_an_object_passed_to_a_child_is_usable_there(ctx: Any) -> None:
    # #2: in a child forked by multiprocessing an inherited object looked closed (its
    # util.Finalize was wiped with the registry): it could not be pickled on, and
    # the reference the child took was never given back
    lock = shoal.Lock()
    here, there = ctx.Pipe()
    p = ctx.Process(target=report_inherited, args=(lock, there))
    p.start()
    assert here.poll(TIMEOUT)
    closed, count, pickles, pid = here.recv()
    join_all(p)
    assert p.exitcode == 0
    assert closed is False and pickles and pid == p.pid
    assert count == 2
    assert count_of(lock) == 1, "the child's reference was not given back at exit"
    lock.close()


def test_a_forked_child_keeps_an_inherited_lock_the_parent_closed() -> None:
    lock = shoal.Lock()
    segment, offset = lock._segment, lock._header_offset
    here, there = FORK.Pipe()
    p = FORK.Process(target=use_after_parent_closed, args=(lock, there))
    p.start()
    try:
        assert wait_until(lambda: _core.load64(segment.buffer, offset) == 2, TIMEOUT)
        lock.close()
        assert block_in_use(segment, offset), "freed while the child still held it"
        here.send("closed")
        assert here.poll(TIMEOUT)
        got, closed, count, pickles = here.recv()
        assert got and not closed and pickles
        assert count == 1
    finally:
        join_all(p)
    assert p.exitcode == 0
    # the child's was the last reference: its exit freed the block
    assert wait_until(lambda: not block_in_use(segment, offset), 5)


def test_exit_releases_handles_after_queue_feeders_flushed(ctx: Any) -> None:
    # the child puts a handle on a multiprocessing queue and exits at once; its
    # feeder thread is still pickling when the exit finalizers start.  Handles are
    # released after the feeders are joined, so the lock still pickles then
    lock = shoal.Lock()
    queue = ctx.Queue()
    p = ctx.Process(target=put_and_exit, args=(queue, lock))
    p.start()
    try:
        _, got = queue.get(timeout=TIMEOUT)
    finally:
        join_all(p)
    assert p.exitcode == 0
    assert got.acquire(timeout=1)
    got.release()
    assert count_of(lock) == 2  # ours and the copy we just unpickled
    got.close()
    lock.close()
    queue.close()
    queue.join_thread()


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_a_new_process_gives_references_back_at_interpreter_exit() -> None:
    # weakref.finalize's own atexit handler may run before multiprocessing's (it is
    # registered later: atexit runs last-in first-out) and switches every finalize
    # off; the exit hook must release the handles all the same
    lock = shoal.Lock()
    code = f"""
        import pickle, weakref
        lock = pickle.loads(bytes.fromhex({pickle.dumps(lock).hex()!r}))
        weakref.finalize(lock, print, "collected")  # registered with atexit after shoal
        assert lock.acquire(timeout=5)
        lock.release()
        print("count", lock._segment.buffer[lock._header_offset])
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "count 2" in result.stdout
    assert count_of(lock) == 1
    lock.close()


def test_os_fork_children_take_and_give_back_references() -> None:
    # a bare os.fork (no multiprocessing): the child takes a reference on each object
    # it inherits, gives it back when it closes or exits, and can allocate from the
    # arenas it inherited
    code = """
        import gc, os, sys
        import shoal
        from shoal import _core
        def count(obj):
            return _core.load64(obj._segment.buffer, obj._header_offset)
        a, b = shoal.Lock(), shoal.Lock()
        pid = os.fork()
        if pid == 0:
            assert count(a) == 2 and count(b) == 2
            a.close()
            c = shoal.Lock()
            assert c._segment is a._segment, "the child made an arena of its own"
            sys.exit(0)  # b and c are released by the exit hook
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        assert count(a) == 1 and count(b) == 1, (count(a), count(b))
        print("ok")
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def allocate_and_free(stop: threading.Event) -> None:
    while not stop.is_set():
        shoal.Lock().close()


def test_fork_while_another_thread_allocates() -> None:
    # the fork waits for the allocator (os.register_at_fork's before hook), so the
    # child inherits a consistent list of arenas and can allocate from them
    lock = shoal.Lock()
    stop = threading.Event()
    worker = threading.Thread(target=allocate_and_free, args=(stop,))
    worker.start()
    try:
        for _ in range(3):
            here, there = FORK.Pipe()
            p = FORK.Process(target=fork_child_allocates, args=(lock, there))
            p.start()
            assert here.poll(TIMEOUT), "a child forked mid-allocation is stuck"
            assert here.recv() is True
            join_all(p)
            assert p.exitcode == 0
    finally:
        stop.set()
        worker.join(TIMEOUT)
    assert count_of(lock) == 1
    lock.close()


def test_a_release_run_by_gc_inside_the_arena_lock_waits_for_it() -> None:
    # #2: garbage collection may run a finalizer while this very thread holds an
    # arena's mutex (inside allocate); the finalizer then needed the same,
    # non-recursive mutex to free its block and waited for itself (30 s, then an
    # error and a leaked block).  Now it is deferred until the mutex is let go.
    keep = shoal.Lock()
    arena = _Arena.of(keep._segment)
    lock = shoal.Lock()
    assert lock._segment is keep._segment
    offset = lock._header_offset
    lock.cycle = lock  # only the cycle collector frees it
    del lock
    gc.disable()
    try:
        with arena._locked():  # what allocate() holds
            t0 = time.monotonic()
            gc.collect()
            assert time.monotonic() - t0 < 5, "the finalizer waited for its own thread"
            assert block_in_use(keep._segment, offset), "freed inside the locked section"
    finally:
        gc.enable()
    assert not block_in_use(keep._segment, offset), "the deferred release never ran"
    keep.close()


# ---- the arena allocator against a model ------------------------------------------------


class ArenaAllocatorMachine(RuleBasedStateMachine):
    """``_Arena.allocate``/``free`` with random sizes against a dict of live runs."""

    def __init__(self) -> None:
        super().__init__()
        self.arena = _Arena.create()
        self.live: dict[int, tuple[int, int]] = {}  # offset -> (blocks, serial)
        self.taken = [False] * _BLOCK_COUNT  # the model's bitmap

    def teardown(self) -> None:
        self.arena.segment.close()

    def mark(self, offset: int, blocks: int, taken: bool) -> None:
        start = (offset - _FIRST_BLOCK) // BLOCK_SIZE
        for i in range(start, start + blocks):
            assert self.taken[i] != taken, "two live allocations overlap"
            self.taken[i] = taken

    def first_fit(self, blocks: int) -> int | None:
        run = 0
        for i, taken in enumerate(self.taken):
            run = 0 if taken else run + 1
            if run == blocks:
                return i - blocks + 1
        return None

    @rule(
        nbytes=st.one_of(
            st.integers(1, 4 * BLOCK_SIZE),  # the common case: a lock, a semaphore
            st.integers(1, MAX_ARENA_OBJECT + OBJECT_HEADER_SIZE),  # multi-block runs
            st.just(MAX_ARENA_OBJECT + OBJECT_HEADER_SIZE),
        )
    )
    def allocate(self, nbytes: int) -> None:
        blocks = -(-nbytes // BLOCK_SIZE)
        expected = self.first_fit(blocks)
        got = self.arena.allocate(nbytes)
        if expected is None:
            assert got is None, f"allocated {blocks} blocks where no run was free"
            return
        assert got is not None, f"refused {blocks} blocks with a run free at {expected}"
        offset, serial = got
        assert offset == _FIRST_BLOCK + expected * BLOCK_SIZE
        assert serial != 0
        self.mark(offset, blocks, True)
        buf = self.arena.segment.buffer
        assert _core.load64(buf, offset) == 1  # one reference: its creator's
        body = slice(offset + OBJECT_HEADER_SIZE, offset + blocks * BLOCK_SIZE)
        assert not any(buf[body]), "the run was not zeroed"
        buf[body] = b"\xa5" * (body.stop - body.start)  # scribble, as its object would
        self.live[offset] = (blocks, serial)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(sorted(self.live)))
        blocks, serial = self.live.pop(offset)
        buf = self.arena.segment.buffer
        _core.store64(buf, offset, 0)  # the last reference went (as _release_count_only)
        self.arena.free(offset)
        self.mark(offset, blocks, False)
        assert int.from_bytes(buf[offset + 8 : offset + 12], "little") != serial

    @invariant()
    def used_count_matches(self) -> None:
        assert self.arena.used() == sum(blocks for blocks, _ in self.live.values())

    @invariant()
    def bitmap_matches(self) -> None:
        start = _handle._ARENA_BITMAP
        bits = int.from_bytes(self.arena.segment.buffer[start : start + _BITMAP_BYTES], "little")
        model = int("".join("1" if t else "0" for t in reversed(self.taken)), 2)
        assert bits == model

    @invariant()
    def headers_intact(self) -> None:
        buf = self.arena.segment.buffer
        serials = set()
        for offset, (blocks, serial) in self.live.items():
            assert int.from_bytes(buf[offset + 8 : offset + 12], "little") == serial
            assert int.from_bytes(buf[offset + 12 : offset + 16], "little") == blocks
            assert _core.load64(buf, offset) == 1
            serials.add(serial)
        assert len(serials) == len(self.live), "two live allocations share a serial"


ArenaAllocatorMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_arena_allocator_against_a_model = ArenaAllocatorMachine.TestCase


# ---- references in flight (#4): a pickled handle keeps its object ---------------------------


class Blob(_handle.SharedObject):
    """A bare shared object too big for an arena: it gets a segment of its own."""

    _PAYLOAD_SIZE = MAX_ARENA_OBJECT + 1

    def __init__(self) -> None:
        self._create()

    def _bind_payload(self) -> None:
        pass

    def _unbind_payload(self) -> None:
        pass


def in_flight_of(obj: Any) -> int:
    """References in flight of ``obj`` itself (the high half of its count word)."""
    return count_of(obj) >> 32


def create_send_and_exit(conn: Connection, big: bool) -> None:
    # pickled here, unpickled by the parent only after this process is gone
    event, sem = shoal.Event(), shoal.Semaphore(3)
    event.set()
    objects: tuple[Any, ...] = (event, sem, Blob()) if big else (event, sem)
    conn.send((objects[-1]._segment.name, pickle.dumps(objects)))
    for obj in objects:
        obj.close()


def send_blob_and_exit(conn: Connection) -> None:
    blob = Blob()
    conn.send((blob._segment.name, pickle.dumps(blob)))
    blob.close()


def make_objects() -> tuple[Any, Any, int]:
    event, sem = shoal.Event(), shoal.Semaphore(2)
    event.set()
    assert sem.acquire(timeout=TIMEOUT)
    return event, sem, os.getpid()


def get_and_report(queue: Any, conn: Connection) -> None:
    event = queue.get(timeout=TIMEOUT)
    conn.send(event.is_set())
    event.close()


def unpickle_and_report(data: bytes, conn: Connection) -> None:
    obj = pickle.loads(data)
    conn.send(count_of(obj) & 0xFFFFFFFF)
    obj.close()


@pytest.mark.parametrize("big", [False, True], ids=["arena", "own segment"])
def test_a_pickle_outlives_the_process_that_made_it(ctx: Any, big: bool) -> None:
    here, there = ctx.Pipe()
    p = ctx.Process(target=create_send_and_exit, args=(there, big))
    p.start()
    assert here.poll(TIMEOUT)
    name, data = here.recv()
    join_all(p)
    assert p.exitcode == 0
    # the sender closed everything and exited; no process holds the segment, yet it
    # stays for the pickle on its way
    assert os.path.exists("/dev/shm" + name)
    objects = pickle.loads(data)
    event, sem = objects[:2]
    assert event.is_set()
    assert sem.get_value() == 3
    assert all(count_of(obj) == 1 for obj in objects), "not adopted, or a plain reference"
    assert objects[-1]._segment.in_flight == 0
    for obj in objects:
        obj.close()
    # gone, unless it is one of our own arenas (a forked child allocates from those)
    assert wait_until(
        lambda: name in shoal.lowlevel.attached_names() or not os.path.exists("/dev/shm" + name),
        5,
    )


def test_put_then_drop_keeps_the_object_for_the_getter(ctx: Any) -> None:
    queue = shoal.Queue()
    event = shoal.Event()
    event.set()
    queue.put(event)
    event.close()  # q.put(x); del x: the queued handle keeps it
    here, there = ctx.Pipe()
    p = ctx.Process(target=get_and_report, args=(queue, there))
    p.start()
    assert here.poll(TIMEOUT)
    assert here.recv() is True
    join_all(p)
    assert p.exitcode == 0
    queue.close()


def test_a_pool_worker_returns_an_object_it_created_and_exits(ctx: Any) -> None:
    pool = ctx.Pool(1, maxtasksperchild=1)
    try:
        event, sem, pid = pool.apply_async(make_objects).get(timeout=TIMEOUT)
        again = pool.apply_async(make_objects).get(timeout=TIMEOUT)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    assert again[2] != pid, "maxtasksperchild=1: each task in a new worker"
    # every worker is gone: the objects are ours alone now, and work
    for ev, se, _ in ((event, sem, pid), again):
        assert ev.is_set()
        assert se.get_value() == 1
        assert se.acquire(timeout=1) and not se.acquire(timeout=0.01)
        assert count_of(ev) == 1 and count_of(se) == 1
        ev.close()
        se.close()


def test_a_pickle_unpickled_twice_adopts_once() -> None:
    lock = shoal.Lock()
    data = pickle.dumps(lock)
    assert in_flight_of(lock) == 1 and lock._segment.in_flight >= 1
    first = pickle.loads(data)  # adopts the reference in flight
    assert count_of(lock) == 2
    second = pickle.loads(data)  # a plain reference of its own
    assert count_of(lock) == 3
    # and in another process (forked: it also inherits first and second)
    here, there = FORK.Pipe()
    p = FORK.Process(target=unpickle_and_report, args=(data, there))
    p.start()
    assert here.poll(TIMEOUT)
    assert here.recv() == 7  # ours, first, second, the three the child inherited, its own
    join_all(p)
    for obj in (first, second):
        obj.close()
    assert count_of(lock) == 1
    segment, offset = lock._segment, lock._header_offset
    lock.close()
    assert not block_in_use(segment, offset)
    with pytest.raises(shoal.SegmentNotFoundError):
        pickle.loads(data)  # the object is gone: no count went negative to let it back


def test_copy_and_deepcopy_leave_nothing_in_flight() -> None:
    import copy

    cond = shoal.Condition(shoal.Lock())
    lock = cond._lock
    twins = [copy.copy(cond), copy.deepcopy(cond), copy.deepcopy([cond, cond])[0]]
    assert count_of(cond) == 4
    assert in_flight_of(cond) == 0 and in_flight_of(lock) == 0
    with twins[1]:
        assert not cond._lock.acquire(timeout=0.01)
    assert twins[0]._lock is lock  # a shallow copy shares the lock handle itself
    for twin in twins:
        if twin._lock is not lock:
            twin._lock.close()
        twin.close()
    assert count_of(cond) == 1 and count_of(lock) == 1
    cond.close()
    lock.close()


def test_never_unpickled_pickles_are_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    here, there = FORK.Pipe()
    p = FORK.Process(target=send_blob_and_exit, args=(there,))
    p.start()
    assert here.poll(TIMEOUT)
    name, data = here.recv()
    join_all(p)
    del data  # lost: never unpickled
    assert os.path.exists("/dev/shm" + name)
    assert name not in _memory.reap(), "reaped while the pickle could still arrive"
    monkeypatch.setattr(_memory, "IN_FLIGHT_TIMEOUT_S", 0.0)
    time.sleep(0.01)
    # this segment only: a whole sweep with no patience for references in flight would
    # reap other programs' (test runs') results on their way
    assert _memory._reap_one(name)
    assert not os.path.exists("/dev/shm" + name)


def test_sent_references_gives_back_what_a_discarded_pickle_took() -> None:
    lock, event = shoal.Lock(), shoal.Event()
    segments = {lock._segment, event._segment}
    with _handle.sent_references() as sent:
        pickle.dumps([lock, event, lock])  # the memo pickles lock once
        assert len(sent) == 2 and in_flight_of(lock) == 1
        sent.cancel()
    assert count_of(lock) == 1 and count_of(event) == 1
    assert all(s.in_flight == 0 for s in segments)
    # a failed pickling gives back what it took before it failed
    with pytest.raises((pickle.PicklingError, AttributeError)), _handle.sent_references():
        pickle.dumps([lock, lambda: None])
    assert count_of(lock) == 1
    # a kept pickle stays in flight; an enclosing block may still cancel it
    with _handle.sent_references() as outer:
        with _handle.sent_references():
            data = pickle.dumps(event)
        assert in_flight_of(event) == 1 and len(outer) == 1
    assert in_flight_of(event) == 1
    pickle.loads(data).close()
    assert count_of(event) == 1
    # cancelling after the object was closed still frees its block
    segment, offset = event._segment, event._header_offset
    with _handle.sent_references() as sent:
        pickle.dumps(event)
        event.close()
        assert block_in_use(segment, offset)
        sent.cancel()
    assert not block_in_use(segment, offset)
    lock.close()


@pytest.mark.parametrize(
    ("made", "claimed"),
    [
        (shoal.Event, shoal.Lock),
        (shoal.Lock, shoal.RLock),
        (shoal.Semaphore, shoal.BoundedSemaphore),
        (shoal.Lock, shoal.Queue),
        (shoal.Queue, shoal.JoinableQueue),
        (lambda: shoal.RawValue("i", 1), shoal.Event),
    ],
)
def test_a_handle_naming_an_object_of_another_type_is_refused(made: Any, claimed: type) -> None:
    # #10: a handle carried no type, so a Lock handle pointed at an Event's block was
    # bound to the Event's struct
    obj = made()
    segment_in_flight = obj._segment.in_flight  # (the arena may hold others' objects)
    _, (_, handle, _) = obj.__reduce__()
    assert in_flight_of(obj) == 1
    state = (128, 0) if issubclass(claimed, shoal.Queue) else None  # a queue's state
    with pytest.raises(shoal.LayoutError, match="another type"):
        _handle._rebuild(claimed, handle, state)
    # the refused pickle's reference was given back, nothing else taken
    assert count_of(obj) == 1 and in_flight_of(obj) == 0
    assert obj._segment.in_flight == segment_in_flight
    pickle.loads(pickle.dumps(obj)).close()  # its own type still unpickles
    obj.close()


def test_every_shoal_class_has_its_own_type_tag() -> None:
    classes = [
        shoal.Lock, shoal.RLock, shoal.Semaphore, shoal.BoundedSemaphore, shoal.Event,
        shoal.Condition, shoal.Barrier, shoal.Queue, shoal.SimpleQueue,
        shoal.JoinableQueue, shoal.SharedDict,
    ]  # fmt: skip
    tags = [cls._TYPE_TAG for cls in classes]
    assert all(tags) and len(set(tags)) == len(tags)

    class MyLock(shoal.Lock):
        pass

    assert MyLock._TYPE_TAG == shoal.Lock._TYPE_TAG  # the struct of its base


class _ChangingWeakSet(weakref.WeakSet):  # type: ignore[type-arg]
    """Iterating raises once as a set that another thread changed (a free-threaded
    build's WeakSet does that while a thread makes an object)."""

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.failures = 1

    def __iter__(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("Set changed size during iteration")
        return super().__iter__()


def test_a_fork_while_another_thread_makes_an_object_still_gives_the_child_its_references(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # on 3.13t the before-fork hook's list(_live) met another thread's add: it raised,
    # released the allocator lock, and the after-fork hook released it again
    # ("release unlocked lock"); the child got no references of its own
    lock = shoal.Lock()
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))
    monkeypatch.setattr(_handle, "_live", _ChangingWeakSet(_handle._live))
    here, there = FORK.Pipe()
    p = FORK.Process(target=fork_child_allocates, args=(lock, there))
    p.start()
    assert here.poll(TIMEOUT) and here.recv() is True
    join_all(p)
    assert p.exitcode == 0 and not unraisable, unraisable
    assert _handle._allocator.lock.acquire(timeout=1)  # (not left held, nor broken)
    _handle._allocator.lock.release()
    here.close()
    there.close()
    assert count_of(lock) == 1
    lock.close()
