"""Segments whose creator was killed before they were complete (issue #10, 7; found by
the chaos suite's ``hostile_user`` scenario, whose victims are SIGKILLed at random).

A segment is created, then sized (``posix_fallocate``: the pages are reserved, which
takes a while for a big one), then mapped and finished (the magic number last).  The
creator token is in the file before it is sized, so a creator killed while reserving
leaves a file whose dead creator tells the reaper, at once, that it is garbage.
Before, the file was still empty then (tmpfs gives an interrupted ``fallocate`` no
size): nothing in it named its creator, and the reaper kept it for
``_UNFINISHED_GRACE_S`` (a minute) in case its creator was still at work.

Runs in a private ``/dev/shm`` (tests/isolation.py): it reaps.
"""

from __future__ import annotations

from isolation import check_isolated


def test_a_creator_killed_while_reserving_pages_leaves_nothing_a_sweep_keeps() -> None:
    out = check_isolated(
        """
import multiprocessing as mp, os, signal, time
from shoal import _memory
from shoal.lowlevel import reap

def die_while_reserving():
    def reserve_then_die(fd, size):
        os.kill(os.getpid(), signal.SIGKILL)  # SIGKILL in posix_fallocate, as it were
    _memory._reserve = reserve_then_die
    _memory._state.swept_at = time.monotonic()  # (no sweep of its own first)
    _memory.Segment.create(1 << 20)

for _ in range(3):
    p = mp.get_context("fork").Process(target=die_while_reserving)
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL, p.exitcode
left = sorted(n for n in os.listdir("/dev/shm") if n.startswith("shoal-"))
assert len(left) == 3, left  # the killed creators' files
reaped = reap()
assert sorted(n[1:] for n in reaped) == left, (reaped, left)
assert not [n for n in os.listdir("/dev/shm") if n.startswith("shoal-")]
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_a_live_creator_still_reserving_keeps_its_file() -> None:
    out = check_isolated(
        """
import multiprocessing as mp, os, time
from shoal import _memory
from shoal.lowlevel import reap

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


def test_a_writer_killed_before_a_messages_data_leaves_nothing_a_sweep_keeps() -> None:
    # the same for a transit segment (a queue's big item, a dict's new table): its
    # header page is written on its own, before the data
    out = check_isolated(
        """
import multiprocessing as mp, os, signal
from shoal import Queue, _memory
from shoal.lowlevel import reap

def die_before_the_data(q):
    def write_then_die(fd, chunks, total, *rest):
        os.kill(os.getpid(), signal.SIGKILL)  # SIGKILL in pwritev, before a page
    _memory._write_all = write_then_die
    q.put(bytearray(300_000))

q = Queue(capacity=65536)  # (an item over half of it travels in a transit segment)
before = set(os.listdir("/dev/shm"))
p = mp.get_context("fork").Process(target=die_before_the_data, args=(q,))
p.start()
p.join(30)
assert p.exitcode == -signal.SIGKILL, p.exitcode
left = sorted(set(os.listdir("/dev/shm")) - before)
assert len(left) == 1, left
assert "/" + left[0] in reap(), "the dead writer's message was kept"
q.close()
print("ok")
"""
    )
    assert out.strip().endswith("ok")
