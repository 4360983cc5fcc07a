"""A queue whose shared memory was scribbled on (issue #10, 5b).

The ring's geometry (capacity, item limit, data area) is read from shared memory once,
when a handle checks or makes the ring, and never again; every position and record
length read afterwards is checked against it before anything is indexed.  So a stray
write into a queue's memory costs at most a clear exception (``LayoutError``) in the
processes using it: never a segfault, never a read or write outside the ring.

The fuzz writes random bytes over the ring's header words (capacity, item limit,
head, tail, shutdown, the waiting counts…) and over its records, then makes every call
of the Queue API on the damaged queue, and attaches another handle to it.  Each call
must return or raise a shoal exception (or ``queue.Empty``/``queue.Full``).  It runs in
a child process with a private ``/dev/shm`` (``tests/isolation.py``), so a crash fails
the test instead of killing the test runner.

The ring's two robust mutexes are left alone: a stray write there makes callers wait
for a holder that is not there (bounded by their timeouts; the mutex has its own
tests), it reads no offset.  Payload bytes travel as they are: records the fast codec
cannot read raise ``LayoutError``; the loads hook (pickle) is replaced by one that
returns the bytes, since what pickle makes of garbage is not the ring's business.
"""

from __future__ import annotations

import mmap
import struct

import pytest
from isolation import check_isolated

from shoal import LayoutError, _core

HEADER = _core.RING_HEADER_SIZE

FUZZ = r"""
import pickle, queue, random, struct, sys
import shoal
from shoal import _codec, _core  # _codec registers the upcalls as it loads

SEED, ROUNDS = {seed}, {rounds}
_core._set_codec(loads=bytes)  # payloads are data: see the module docstring
unraisable = []
sys.unraisablehook = lambda u: unraisable.append(u.exc_value)

# header words worth breaking: (offset, size) in shoal_ring (native/include/shoal_ring.h)
WORDS = [(0, 8), (8, 8), (8, 4), (16, 8), (24, 4), (28, 4), (128, 8), (128, 4),
         (132, 4), (136, 4), (140, 4), (192, 8), (192, 4), (196, 4), (200, 4), (204, 4),
         (320, 8), (328, 4), (332, 4)]
HEADER = _core.RING_HEADER_SIZE
ALLOWED = (queue.Empty, queue.Full, shoal.ShoalError)
rng = random.Random(SEED)
outcomes = {{}}


def item():
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randrange(-2**40, 2**40)
    if kind == 1:
        return "s" * rng.randrange(60)
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(50)))
    if kind == 3:
        return (1, "two", b"3", None, 4.5)
    return [rng.randrange(9)]  # pickled


def value(size, old):
    return raw_value(size, old) & ((1 << 8 * size) - 1)


def raw_value(size, old):
    how = rng.randrange(5)
    if how == 0:
        return rng.getrandbits(8 * size)
    if how == 1:  # a small step: an off-by-some position or length
        return (old + rng.choice([-9, -8, -1, 1, 7, 8, 9, 64, 4096])) % (1 << 8 * size)
    if how == 2:
        return old ^ (1 << rng.randrange(8 * size))
    if how == 3:
        return rng.choice([0, 1, (1 << 8 * size) - 1, 1 << (8 * size - 1), 1 << 31])
    return (old + (rng.randrange(1, 4) << 32)) % (1 << 8 * size) if size == 8 else 0


def corrupt(q):
    buf, base = q._mapping, q._payload_offset
    for _ in range(rng.randrange(1, 4)):
        if rng.random() < 0.6:
            offset, size = rng.choice(WORDS)
        else:  # a record: its header (where head points, often) or any data bytes
            size = rng.choice([1, 4, 8])
            head = struct.unpack_from("<I", buf, base + 192)[0]
            start = head % q._ring_bytes if rng.random() < 0.5 else rng.randrange(q._ring_bytes)
            offset = HEADER + min(start - start % size, q._ring_bytes - size)
        fmt = {{1: "<B", 4: "<I", 8: "<Q"}}[size]
        old = struct.unpack_from(fmt, buf, base + offset)[0]
        struct.pack_into(fmt, buf, base + offset, value(size, old))


def call(name, fn):
    try:
        returned = fn()
        result = returned if name == "attach" and returned else "ok"  # "refused"
    except ALLOWED as exc:
        result = type(exc).__name__
    outcomes[(name, result)] = outcomes.get((name, result), 0) + 1


for round in range(ROUNDS):
    q = shoal.Queue(rng.choice([0, 0, 2, 5]), capacity=rng.choice([128, 256, 1024]))
    for _ in range(rng.randrange(12)):
        try:
            q.put(item(), timeout=0)
        except queue.Full:
            break
        if rng.random() < 0.4:
            q.get(timeout=0)
    corrupt(q)
    calls = [
        ("get", lambda: q.get(timeout=0.001)),
        ("get_nowait", q.get_nowait),
        ("get_many", lambda: q.get_many(5, timeout=0.001)),
        ("_get_bytes", lambda: q._get_bytes(False)),
        ("put", lambda: q.put(item(), timeout=0.001)),
        ("put_nowait", lambda: q.put_nowait(item())),
        ("put_many", lambda: q.put_many([item() for _ in range(3)], timeout=0.001)),
        ("_put_bytes", lambda: q._put_bytes(b"x" * rng.randrange(1, 57), False)),
        ("qsize", q.qsize),
        ("empty", q.empty),
        ("full", q.full),
        ("statistics", q.statistics),
        ("repr", lambda: repr(q)),
        ("corrupt again", lambda: corrupt(q)),
    ]
    for _ in range(rng.randrange(5, 30)):
        call(*rng.choice(calls))
    def attach():
        try:
            pickle.loads(pickle.dumps(q)).close()
        except shoal.LayoutError as exc:  # a handle to memory that holds no queue (any more)
            if "does not hold a shoal queue" not in str(exc):
                raise
            return "refused"
    call("attach", attach)
    if rng.random() < 0.2:
        call("shutdown", lambda: q.shutdown(immediate=rng.random() < 0.5))
    q.close()  # the last handle empties the ring on its way out

bad = [e for e in unraisable if not isinstance(e, shoal.ShoalError)]
assert not bad, bad
for (name, result), n in sorted(outcomes.items()):
    print(name, result, n)
"""


@pytest.mark.parametrize("seed", range(4))
def test_corrupted_ring_raises_and_never_crashes(seed: int) -> None:
    out = check_isolated(FUZZ.format(seed=seed, rounds=400), timeout=240)
    # the fuzz reached the checks: some calls failed on corruption, some still worked
    assert "LayoutError" in out and " ok " in out, out


# ---- the geometry is fixed when the ring is checked ---------------------------------------


def ring_in(mapping: mmap.mmap, capacity: int = 256) -> _core.Ring:
    ring = _core.Ring()
    ring._bind(mapping, 0, HEADER + capacity)
    return ring


def test_capacity_written_after_the_check_is_never_used() -> None:
    mapping = mmap.mmap(-1, HEADER + 256)
    ring = ring_in(mapping)
    try:
        ring._init(256, 0)
        ring._put_bytes(b"a" * 100, False)
        # a stray write makes the ring "huge": this handle keeps the geometry it checked
        struct.pack_into("<Q", mapping, 8, 1 << 31)
        assert ring._capacity == 256
        ring._put_bytes(b"b" * 100, False)
        assert ring._get_bytes(False) == b"a" * 100
        assert ring._get_bytes(False) == b"b" * 100
        # and a handle checking it now refuses it
        other = ring_in(mapping)
        assert not other._check()
        with pytest.raises(LayoutError):
            other._get_bytes(False)
        other._unbind()
    finally:
        ring._unbind()
        mapping.close()


@pytest.mark.parametrize(
    "offset, value",
    [
        (128, (1 << 32) | 4),  # tail: one item, at an unaligned position
        (128, (1 << 32) | (1 << 20)),  # tail: far beyond the data area
        (192, 8),  # head: ahead of tail
        (128, (5 << 32) | 8),  # five items in eight bytes
        (128, 64),  # bytes in the ring but no item
    ],
    ids=["unaligned", "beyond", "head-ahead", "too-many-items", "no-items"],
)
def test_positions_outside_the_geometry_raise(offset: int, value: int) -> None:
    mapping = mmap.mmap(-1, HEADER + 256)
    ring = ring_in(mapping)
    try:
        ring._init(256, 0)
        struct.pack_into("<Q", mapping, offset, value)
        with pytest.raises(LayoutError, match="corrupt"):
            ring._get_bytes(False)
        with pytest.raises(LayoutError, match="corrupt"):
            ring._put_bytes(b"x", False)
        with pytest.raises(LayoutError, match="corrupt"):
            ring._qsize()
    finally:
        ring._unbind()
        mapping.close()


@pytest.mark.parametrize(
    "length, kind",
    [(1 << 30, 0), (200, 0), (8, 7), (8, 1)],
    ids=["huge", "beyond-published", "unknown-kind", "pad-not-at-end"],
)
def test_record_headers_that_no_producer_writes_raise(length: int, kind: int) -> None:
    mapping = mmap.mmap(-1, HEADER + 256)
    ring = ring_in(mapping)
    try:
        ring._init(256, 0)
        ring._put_bytes(b"x" * 16, False)
        struct.pack_into("<II", mapping, HEADER, length, kind)
        with pytest.raises(LayoutError, match="corrupt"):
            ring._get_bytes(False)
    finally:
        ring._unbind()
        mapping.close()


def test_unchecked_ring_refuses_every_call() -> None:
    mapping = mmap.mmap(-1, HEADER + 256)
    ring = ring_in(mapping)
    try:
        with pytest.raises(LayoutError):
            ring._put_bytes(b"x", False)
        with pytest.raises(LayoutError):
            ring._get_bytes(False)
    finally:
        ring._unbind()
        mapping.close()


def test_attaching_a_corrupt_ring_raises_layout_error() -> None:
    # before: ValueError, which no caller catching shoal's errors expects
    import pickle

    import shoal

    q = shoal.Queue(capacity=256)
    try:
        struct.pack_into("<Q", q._mapping, q._payload_offset + 8, 1 << 31)  # the capacity
        with pytest.raises(LayoutError, match="does not hold a shoal queue"):
            pickle.loads(pickle.dumps(q))
    finally:
        struct.pack_into("<Q", q._mapping, q._payload_offset + 8, 256)
        q.close()


def test_an_empty_record_raises_layout_error() -> None:
    # before: IndexError from the loads hook (no producer writes an empty record)
    import shoal

    q = shoal.Queue()
    try:
        q._put_bytes(b"", False)
        with pytest.raises(LayoutError, match="corrupt"):
            q.get(timeout=1)
        q._put_bytes(b"", False)  # and the last handle discards one without a word
    finally:
        q.close()
