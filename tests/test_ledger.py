"""References held by a process that was SIGKILLed are given back (#10).

Each process records the object references it holds in a ledger of its own
(``shoal._handle``, "The ledger"); once it died, the sweep that reaps the ledger takes
them off the objects' counts.  Before, a killed process's references were never given
back: an arena block (a Lock, a small Queue) stayed allocated for as long as the arena
lived, and a queue held by a killed process kept its lost records' transit segments.

Every test here reaps, so each runs in a private ``/dev/shm`` (tests/isolation.py).
"""

from __future__ import annotations

import pytest
from isolation import check_isolated

PRELUDE = """
import multiprocessing as mp, os, pickle, signal, sys, time
import shoal
from shoal import _core, _handle, _memory

def count_of(obj):
    return _core.load64(obj._segment.buffer, obj._header_offset) & 0xFFFFFFFF

def serial_at(segment, offset):
    return int.from_bytes(segment.buffer[offset + 8 : offset + 12], "little")

from shoal.lowlevel import reap
from test_ledger import hold_then_wait

def holding(ctx, objs):
    # a child of ctx that holds a handle of each of objs until it is killed
    ready = ctx.Event()
    p = ctx.Process(target=hold_then_wait, args=(objs, ready), daemon=True)
    p.start()
    assert ready.wait(30)
    return p

def kill(p):
    os.kill(p.pid, signal.SIGKILL); p.join(10)

def shoal_files(kind=None):
    return {n for n in os.listdir("/dev/shm") if n.startswith("shoal-")
            and (kind is None or _memory._read_kind("/dev/shm/" + n) == kind)}
"""


def hold_then_wait(objs: list[object], ready: object) -> None:
    """In a child: hold a handle of each object (a second one, if inherited), then wait
    to be killed."""
    import pickle
    import time

    held = [pickle.loads(pickle.dumps(o)) for o in objs]
    ready.set()  # type: ignore[attr-defined]
    time.sleep(60)
    del held


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_killed_processs_references_to_arena_objects_are_given_back(method: str) -> None:
    # before: the lock's block stayed allocated (count 3 -> 2 after the parent's close,
    # never 0) for as long as the arena lived: here, as long as `keep` does
    out = check_isolated(
        PRELUDE
        + f"""
ctx = mp.get_context({method!r})
keep = shoal.Lock()   # keeps the arena
lock, event = shoal.Lock(), shoal.Event()
assert lock._segment is keep._segment
segment, offset, serial = lock._segment, lock._header_offset, lock._serial
p = holding(ctx, [lock, event])
kill(p)
lock.close(); event.close()
assert serial_at(segment, offset) == serial  # still allocated: the child's references
reap()
assert serial_at(segment, offset) == 0, "the dead child's references were not given back"
assert not shoal_files(_memory.KIND_LEDGER) - {{p.name[1:] for p in _handle._ledger.pages}}
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_exactly_the_dead_processs_references_are_given_back() -> None:
    # two handles in the child, one kept by the parent, one in flight: the sweep takes
    # the child's two off, no more, and a live process's ledger is never reaped
    out = check_isolated(
        PRELUDE
        + """
ctx = mp.get_context("fork")
lock = shoal.Lock()
in_flight = pickle.dumps(lock)     # a pickle not yet unpickled
p = holding(ctx, [lock, lock])
# parent 1 + child: inherited 1, unpickled 2 + in flight 1
assert count_of(lock) == 5, count_of(lock)
q = holding(ctx, [lock])
assert count_of(lock) == 7, count_of(lock)
kill(p)
reap()
assert count_of(lock) == 4, count_of(lock)  # parent, q's two, the pickle's
kill(q)
reap()
assert count_of(lock) == 2, count_of(lock)
again = pickle.loads(in_flight)  # adopts the reference in flight
assert again.acquire(timeout=1)
again.release()
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_a_queue_whose_last_holder_was_killed_discards_what_it_held() -> None:
    # a small queue lives in an arena; its last handles were in a killed process: the
    # sweep frees it and discards its records, so the transit segment of a big item
    # and what a queued SharedDict kept go too (before: kept while the arena lived)
    out = check_isolated(
        PRELUDE
        + """
ctx = mp.get_context("fork")
keep = shoal.Lock()
def fill_then_wait(ready):
    q = shoal.Queue(capacity=1024)
    assert q._segment is keep._segment
    d = shoal.SharedDict(a=1)
    q.put(b"x" * 300_000)   # a transit segment
    q.put(d)                # kept by the queue
    d.close()
    ready.put(q._handle)
    time.sleep(60)
before = shoal_files()
ready = ctx.SimpleQueue()
p = ctx.Process(target=fill_then_wait, args=(ready,), daemon=True)
p.start()
_, offset, serial = ready.get()
kill(p)
made = shoal_files() - before
assert len(made) >= 3, made  # transit, dict root and table, the child's ledger
reap()
left = shoal_files() - before
assert not left, left
assert serial_at(keep._segment, offset) == 0
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_a_forked_child_keeps_its_own_ledger() -> None:
    # the child does not hold its parent's ledger (it would keep it from being reaped
    # once the parent died) and records what it holds from the fork on in its own
    out = check_isolated(
        PRELUDE
        + """
ctx = mp.get_context("fork")
lock = shoal.Lock()
parent_pages = {p.name for p in _handle._ledger.pages}
assert parent_pages
def report(conn):
    mine = {p.name for p in _handle._ledger.pages}
    conn.send((mine, parent_pages & _memory.attached_names(),
               _handle._ledger.slots[lock._segment.name, lock._header_offset][2]))
    time.sleep(60)
here, there = ctx.Pipe()
p = ctx.Process(target=report, args=(there,), daemon=True)
p.start()
assert here.poll(30)
mine, inherited, count = here.recv()
assert mine and not mine & parent_pages, (mine, parent_pages)
assert not inherited, inherited
assert count == 1, count
assert count_of(lock) == 2
kill(p)
reap()
assert count_of(lock) == 1
assert {n for n in shoal_files(_memory.KIND_LEDGER)} == {n[1:] for n in parent_pages}
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_a_ledger_that_does_not_match_its_objects_takes_nothing() -> None:
    # a ledger is the dead process's word only: an entry naming another tenant of the
    # block (serial) or more references than the object has (corrupt) is not acted on
    out = check_isolated(
        PRELUDE
        + """
import struct
ctx = mp.get_context("fork")
a, b = shoal.Lock(), shoal.Lock()
p = holding(ctx, [a, b])
assert count_of(a) == count_of(b) == 3  # parent, the child's inherited and unpickled
kill(p)
entry = struct.Struct("<QQI20s8x")
forged = 0
for name in shoal_files(_memory.KIND_LEDGER) - {n.name[1:] for n in _handle._ledger.pages}:
    with open("/dev/shm/" + name, "r+b") as f:
        data = bytearray(f.read())
        for at in range(_memory.HEADER_SIZE, len(data) - entry.size + 1, entry.size):
            count, offset, serial, kid = entry.unpack_from(data, at)
            if count and offset == a._header_offset:
                entry.pack_into(data, at, count, offset, serial + 1, kid)  # another tenant
                forged += 1
            elif count and offset == b._header_offset:
                entry.pack_into(data, at, count + 5, offset, serial, kid)  # more than it has
                forged += 1
        f.seek(0); f.write(data)
assert forged == 2, forged
reap()
assert count_of(a) == 3 and count_of(b) == 3, (count_of(a), count_of(b))
assert a.acquire(timeout=1) and b.acquire(timeout=1)
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_two_sweeps_that_opened_one_dead_ledger_give_its_references_back_once() -> None:
    # each sweep opens a file, then judges it: a second sweep holding the same ledger
    # open once the first reaped it must not give its references back again (seen in
    # the pid_namespace chaos scenario as a double free, then a lock taken twice)
    out = check_isolated(
        PRELUDE
        + """
ctx = mp.get_context("fork")
keep = shoal.Lock()
lock = shoal.Lock()
p = holding(ctx, [lock])
assert count_of(lock) == 3
kill(p)
dead = shoal_files(_memory.KIND_LEDGER) - {n.name[1:] for n in _handle._ledger.pages}
assert len(dead) == 1, dead
name = "/" + dead.pop()
first, second = _memory._open_own(name), _memory._open_own(name)
try:
    assert _memory._judge(name, *first) is True
    assert count_of(lock) == 1
    assert _memory._judge(name, *second) is False
    assert count_of(lock) == 1, count_of(lock)
finally:
    os.close(first[0]); os.close(second[0])
assert lock.acquire(timeout=1)
print("ok")
"""
    )
    assert out.strip().endswith("ok")
