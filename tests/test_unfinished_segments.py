"""Segments whose creator was killed before they were complete (issue #10, 7; found by
the chaos suite's ``hostile_user`` scenario, whose victims are SIGKILLed at random).

On Linux a new segment (a transit segment too) is built in an unnamed file of
``/dev/shm`` (``O_TMPFILE``) and linked under its name only once complete: a creator
killed at any point before leaves nothing any process could see.  Elsewhere the file
is made under its name and its header page, with the creator's token, is written at
once, before the pages are reserved or the data written: a creator killed after that
leaves a file whose dead creator tells the next sweep, at once, that it is garbage.
Before, a creator killed between creating the file and writing its header --
``posix_fallocate`` of a big segment takes a while, and tmpfs gives an interrupted one
no size -- left an empty file that named nobody, kept for ``_UNFINISHED_GRACE_S`` (a
minute) in case its creator was still at work.

Runs in a private ``/dev/shm`` (tests/isolation.py): it reaps.
"""

from __future__ import annotations

import sys

import pytest
from isolation import check_isolated

_KILLED_AT = r"""
import multiprocessing as mp, os, signal, sys, time
from shoal import Queue, _memory
from shoal.lowlevel import Segment, reap

UNNAMED = {unnamed!r}
_memory._unnamed_files = UNNAMED

def shoal_files():  # segments (not liveness files)
    return sorted(n for n in os.listdir("/dev/shm") if _memory._NAME_PATTERN.fullmatch("/" + n))

def unfinished(names):  # no magic number yet (or not even a header)
    out = []
    for n in names:
        with open("/dev/shm/" + n, "rb") as f:
            if f.read(8) != _memory.MAGIC.to_bytes(8, "little"):
                out.append(n)
    return out

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def killed(where, make):
    # where: the _memory function (or os.pwrite) to die in, on its first call
    def child():
        _memory._state.swept_at = time.monotonic()  # (no sweep of its own first)
        if where == "pwrite":
            os.pwrite = lambda *args: die()
        else:
            setattr(_memory, where, lambda *args: die())
        make()
    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL, (where, p.exitcode)

q = Queue(capacity=65536)  # (an item over half of it travels in a transit segment)
base = shoal_files()
cases = [("_reserve", lambda: Segment.create(1 << 20)),  # posix_fallocate
         ("_write_all", lambda: q.put(bytearray(300_000)))]  # a message's data
if UNNAMED:  # (a named file is empty until its header is written: that stays a window)
    cases += [("pwrite", lambda: Segment.create(1 << 20)),  # its header
              ("pwrite", lambda: q.put(bytearray(300_000)))]  # a message's header
for where, make in cases:
    killed(where, make)
    # (the child's ledger is there too, complete: its references, reaped with it)
    half_made = unfinished(sorted(set(shoal_files()) - set(base)))
    if UNNAMED:
        assert not half_made, (where, half_made)  # nothing half made was ever visible
    else:
        assert len(half_made) == 1, (where, half_made)
    reap()
    assert shoal_files() == base, (where, shoal_files())  # a dead creator's: at once
q.close()
print("ok")
"""


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
def test_a_creator_killed_before_its_segment_is_complete_leaves_nothing(unnamed: bool) -> None:
    if unnamed and not sys.platform.startswith("linux"):
        pytest.skip("unnamed files (O_TMPFILE) are Linux's")
    out = check_isolated(_KILLED_AT.format(unnamed=unnamed))
    assert out.strip().endswith("ok")


def test_a_live_creator_still_reserving_keeps_its_file() -> None:
    out = check_isolated(
        """
import multiprocessing as mp, os, time
from shoal import _memory
from shoal.lowlevel import reap

_memory._unnamed_files = False  # (a named file, visible while it is made)

def slow_reserve(conn):
    original = _memory._reserve
    def reserve_slowly(fd, size):
        conn.send("reserving")
        conn.recv()  # until the parent swept
        original(fd, size)
    _memory._reserve = reserve_slowly
    _memory._state.swept_at = time.monotonic()
    seg = _memory.Segment.create(4096)
    conn.send(seg.name)
    seg.close()

here, there = mp.get_context("fork").Pipe()
p = mp.get_context("fork").Process(target=slow_reserve, args=(there,))
p.start()
assert here.recv() == "reserving"
assert [n for n in os.listdir("/dev/shm") if _memory._NAME_PATTERN.fullmatch("/" + n)], "none"
assert reap() == []  # its creator is alive: not garbage
here.send("go")
name = here.recv()
p.join(30)
assert p.exitcode == 0
assert not os.path.exists("/dev/shm" + name)
print("ok")
"""
    )
    assert out.strip().endswith("ok")
