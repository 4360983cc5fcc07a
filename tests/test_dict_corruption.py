"""A SharedDict whose shared memory was scribbled on (issue #10, 5b; found by the chaos
suite's ``corrupt_memory`` fuzz).

The table's geometry (its size, slot count and where its heap starts) is read from
shared memory once, when a handle binds the table, and never again; every offset read
afterwards -- a slot's entry, a free list's head and links, the heap's top, a block's
size class -- is checked against it before anything is written or read there.  So a
stray write into a dict's memory costs at most a clear exception
(:class:`shoal.LayoutError`) in the processes using it: never a segfault, never a
write outside the table.  Before, a writer followed the slot count, the free lists and
the heap top as shared memory gave them: one corrupt word made the next ``d[k] = v``
write anywhere (SIGSEGV).

Each case runs in a child process with a private ``/dev/shm`` (tests/isolation.py), so
a crash fails the test instead of killing the test runner.
"""

from __future__ import annotations

import pytest
from isolation import check_isolated

# Every call of the Mapping API, on a dict whose table (or root) was just damaged: each
# must work or raise LayoutError (KeyError where the key is absent), nothing else.
_SETUP = r"""
import mmap, os, pickle, struct, sys
import multiprocessing as mp
import shoal
from shoal import _core

unraisable = []
sys.unraisablehook = lambda u: unraisable.append(u.exc_value)

def table_of(d):
    buf, root = d._segment.buffer, d._payload_offset
    gen = _core.load64(buf, root + _core.DICT_ROOT_GENERATION)
    at = root + _core.DICT_ROOT_NAMES + 64 * (gen & 1)
    name = bytes(buf[at : at + 64]).rstrip(b"\0").decode()
    fd = os.open("/dev/shm" + name, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)

T = 4096  # the table, after its segment's header

def poke(buf, offset, value, size=8):
    struct.pack_into({1: "<B", 4: "<I", 8: "<Q"}[size], buf, offset, value)

outcomes = {}

def call(name, fn):
    try:
        fn()
        result = "ok"
    except KeyError:
        result = "KeyError"
    except shoal.LayoutError:
        result = "LayoutError"
    outcomes[result] = outcomes.get(result, 0) + 1

def every_call(d, rounds=60):
    for i in range(rounds):
        k = i % 23
        call("set", lambda: d.__setitem__(k, "v" * (i % 70)))
        call("set big", lambda: d.__setitem__(("big", k), b"x" * (i * 97 % 5000)))
        call("get", lambda: d[(k * 7) % 23])
        call("contains", lambda: k in d)
        call("del", lambda: d.__delitem__((k * 5) % 23))
        call("pop", lambda: d.pop((k * 3) % 23, None))
        call("incr", lambda: d.incr("n"))
        call("get_or_set", lambda: d.get_or_set(("g", k), k))
        call("len", lambda: len(d))
        if i % 10 == 0:
            call("items", d.items)
            call("popitem", d.popitem)
            call("statistics", d.statistics)

def attached_elsewhere(d):
    # a handle of another process binds the table afresh: it must refuse a table whose
    # geometry no longer holds together, or work
    def child(pickled, conn):
        other = pickle.loads(pickled)
        every_call(other, 20)
        conn.send(outcomes)
    here, there = mp.get_context("fork").Pipe()
    p = mp.get_context("fork").Process(target=child, args=(pickle.dumps(d), there))
    p.start()
    got = here.recv() if here.poll(60) else None
    p.join(60)
    assert p.exitcode == 0, p.exitcode
    return got

def finish(d):
    d.close()
    bad = [e for e in unraisable if not isinstance(e, shoal.ShoalError)]
    assert not bad, bad
    print(sorted(outcomes.items()))
"""


# (offset in the table, value, size): header words of shoal_dict (native/include/shoal_dict.h)
_HEADER_CASES = {
    "nslots-huge": (32, 1 << 40, 8),
    "nslots-not-a-power": (32, 63, 8),
    "nslots-zero": (32, 0, 8),
    "heap-offset-beyond": (40, 1 << 50, 8),
    "total-size-huge": (24, 1 << 62, 8),
    "total-size-small": (24, 600, 8),
    "heap-top-below-heap": (64, 8, 8),
    "heap-top-beyond": (64, 1 << 45, 8),
    "heap-top-unaligned": (64, 512 + 64 * 16 + 7, 8),
    "free-head-in-header": (128, 7, 8),
    "free-head-beyond": (128 + 8, 1 << 40, 8),
    "free-head-at-the-end": (128 + 8 * 3, "end", 8),
    "count-huge": (48, (1 << 64) - 1, 8),
    "count-big": (48, 1 << 59, 8),
    "count-zero": (48, 0, 8),
    "tombstones-huge": (56, (1 << 63) + 5, 8),
    "bytes-live-huge": (72, (1 << 64) - 16, 8),
    "bytes-live-big": (72, 1 << 40, 8),
    "version-odd": (16, 12345, 8),
}


@pytest.mark.parametrize("case", sorted(_HEADER_CASES))
def test_table_words_written_after_the_bind_are_never_followed(case: str) -> None:
    offset, value, size = _HEADER_CASES[case]
    out = check_isolated(
        _SETUP
        + f"""
d = shoal.SharedDict({{i: "x" * i for i in range(20)}})
for i in range(0, 20, 3):
    del d[i]  # free blocks of several classes: the free lists have heads
table = table_of(d)
value = {value!r}
if value == "end":  # a free block whose class would run past the table's end
    value = len(table) - T - 32
poke(table, T + {offset}, value, {size})
every_call(d)
attached_elsewhere(d)
finish(d)
""",
        timeout=120,
    )
    assert "ok" in out, out


def test_free_list_links_and_block_classes_are_checked() -> None:
    out = check_isolated(
        _SETUP
        + """
d = shoal.SharedDict({i: "x" * 40 for i in range(30)})
table = table_of(d)
nslots = struct.unpack_from("<Q", table, T + 32)[0]
# every entry's size class becomes one of 128 KiB, more than the whole table: freeing
# it put a "block" on that class's free list, which the next entry of that size filled
# (past the end of the table)
for slot in range(nslots):
    entry = struct.unpack_from("<Q", table, T + 512 + 16 * slot + 8)[0]
    if entry > 1:
        poke(table, T + entry + 8, 12, 4)
for i in range(30):
    d[i] = "y" * 40  # overwrites: each frees the old block
d["big"] = b"x" * 100_000
assert d["big"] == b"x" * 100_000
# and a free block's link pointing outside the table
table = table_of(d)
for c in range(4):
    head = struct.unpack_from("<Q", table, T + 128 + 8 * c)[0]
    if head:
        poke(table, T + head + 16, (1 << 44) + 16)
every_call(d)
finish(d)
""",
        timeout=120,
    )
    assert "ok" in out, out


def test_a_root_with_no_table_raises_layout_error() -> None:
    # before: RuntimeError; a stray write of 0 over the generation looks like a creator
    # that died before publishing the first table
    out = check_isolated(
        _SETUP
        + """
d = shoal.SharedDict({1: 2})
buf = d._segment.buffer
poke(buf, d._payload_offset + _core.DICT_ROOT_GENERATION, 0)
try:
    d[1]
except shoal.LayoutError as exc:
    assert "no table" in str(exc), exc
else:
    raise AssertionError("a root with no table was read")
poke(buf, d._payload_offset + _core.DICT_ROOT_GENERATION, 1)
finish(d)
"""
    )
    assert "[]" in out, out


def test_corrupt_root_names_remove_nothing_but_the_dicts_own_tables() -> None:
    # before: the last handle removed whatever the root named (a name with a NUL in it
    # raised ValueError from its finalizer; a live segment's name removed it)
    out = check_isolated(
        _SETUP
        + """
from shoal.lowlevel import Segment
live = Segment.create(64)  # this user's, live, named by the corrupt root
d = shoal.SharedDict({1: 2})
buf, root = d._segment.buffer, d._payload_offset
gen = _core.load64(buf, root + _core.DICT_ROOT_GENERATION)
current = bytes(buf[root + _core.DICT_ROOT_NAMES + 64 * (gen & 1):][:64]).rstrip(b"\\0")
stale = root + _core.DICT_ROOT_NAMES + 64 * ((gen + 1) & 1)
buf[stale : stale + 64] = live.name.encode().ljust(64, b"\\0")
d[2] = "x" * 100_000  # grows: a new table in the stale slot (the live name is kept)
assert os.path.exists("/dev/shm" + live.name)
gen = _core.load64(buf, root + _core.DICT_ROOT_GENERATION)
stale = root + _core.DICT_ROOT_NAMES + 64 * ((gen + 1) & 1)
buf[stale : stale + 64] = (b"/shoal-\\0\\0" + b"1" * 18).ljust(64, b"\\0")
d.close()
assert os.path.exists("/dev/shm" + live.name), "a corrupt root removed a live segment"
assert not os.path.exists("/dev/shm" + current.decode())
live.close()
bad = [e for e in unraisable if not isinstance(e, shoal.ShoalError)]
assert not bad, bad
print("ok")
"""
    )
    assert "ok" in out, out


def test_an_entry_no_writer_could_make_raises_layout_error() -> None:
    # before: RuntimeError
    out = check_isolated(
        _SETUP
        + """
d = shoal.SharedDict({i: i for i in range(10)})
table = table_of(d)
nslots = struct.unpack_from("<Q", table, T + 32)[0]
for slot in range(nslots):
    at = T + 512 + 16 * slot + 8
    if struct.unpack_from("<Q", table, at)[0] > 1:
        poke(table, at, len(table) + 4096)  # past the table's end
for call in (lambda: [d[i] for i in range(10)], d.items, d.keys, d.popitem,
             lambda: d.__setitem__(3, 4), lambda: d.pop(5)):
    try:
        call()
    except shoal.LayoutError as exc:
        assert "corrupt" in str(exc), exc
    else:
        raise AssertionError("a corrupt entry was read")
poke(table, T + 16, 7)  # a writer "died" mid-change: the rebuild meets the entries too
try:
    d[3] = 4
except shoal.LayoutError:
    pass
else:
    raise AssertionError("a corrupt table was rebuilt")
finish(d)
"""
    )
    assert "[]" in out, out


def test_a_rebuild_sized_by_wrong_counts_tries_bigger_tables() -> None:
    # before: RuntimeError("cannot rebuild the SharedDict's table"), on every write
    out = check_isolated(
        _SETUP
        + """
d = shoal.SharedDict({i: "x" * 30 for i in range(500)})
table = table_of(d)
poke(table, T + 48, 0)  # count
poke(table, T + 72, 0)  # bytes_live
poke(table, T + 16, 7)  # and a writer "died" mid-change: the next one rebuilds
d[1000] = "y"
assert len(d) == 501 and all(d[i] == "x" * 30 for i in range(500))
finish(d)
"""
    )
    assert "[]" in out, out


@pytest.mark.parametrize("count", [(1 << 64) - 1, (1 << 63) + 5, 1 << 41])
def test_a_count_no_table_can_hold_raises_layout_error_from_len(count: int) -> None:
    # before: SystemError ("error return without exception set") or ValueError from
    # len(), the count read from shared memory as a negative size
    out = check_isolated(
        _SETUP
        + f"""
d = shoal.SharedDict({{i: i for i in range(5)}})
table = table_of(d)
poke(table, T + 48, {count})
try:
    len(d)
except shoal.LayoutError as exc:
    assert "corrupt" in str(exc), exc
else:
    raise AssertionError("len() of a corrupt count")
poke(table, T + 48, 5)
assert len(d) == 5
finish(d)
"""
    )
    assert "[]" in out, out
