"""The reaper and transit segments against hostile users, corrupt records, a full
``/dev/shm`` and crashed producers and consumers (#10).

Every test here plants, corrupts, fills or reaps, so each runs its scenario through
``tests/isolation.py``: a private tmpfs on ``/dev/shm`` that vanishes with it.  The
hostile second user runs its part under ``setpriv`` as ``nobody``.
"""

from __future__ import annotations

import shutil

import pytest
from isolation import HOSTILE_USER, PYTHON, check_isolated

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")

# Shared by the scripts below: run a script as the hostile user, in the background.
_HOSTILE = f"""
import os, subprocess, sys, textwrap, time
HOSTILE = ["setpriv", "--reuid={HOSTILE_USER[0]}", "--regid={HOSTILE_USER[1]}",
           "--clear-groups", {PYTHON!r}, "-c"]

def hostile(code):
    return subprocess.Popen(HOSTILE + [textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

def run_against(planter, body):
    # body() runs while the planter lives; the planter is ended (by pid) whatever happens
    try:
        assert planter.stdout.readline() == "ready\\n", "the hostile planter failed"
        body()
    finally:
        planter.kill()
        planter.wait(20)

def shoal_files():
    # segments, and files named like them (liveness files, shoal-live-*, are not)
    return sorted(n for n in os.listdir("/dev/shm")
                  if n.startswith("shoal-") and not n.startswith("shoal-live-"))
"""


def test_files_planted_by_another_user_are_never_opened_waited_on_or_removed() -> None:
    # before: the reaper (run as root here) mapped every shoal-* file, waited 1 s on
    # each locked holder table and unlinked another user's segments it judged dead
    out = check_isolated(
        _HOSTILE
        + """
with open("/dev/shm/victim-target", "wb") as f:  # this user's, to be linked to
    f.write(bytes(8192))
planter = hostile('''
    import os, sys
    from shoal import _core, _memory
    from shoal.lowlevel import Segment
    dead = (_core.self_token() & ~0xFFFFFFFF) | 12345
    locked, unheld = [], []
    for i in range(10):
        seg = Segment.create(64)
        seg._table_lock.acquire()  # held while the victim sweeps
        locked.append(seg)
    for i in range(5):
        seg = Segment.create(64)
        view = seg._holders_view()
        view[0] = dead  # looks orphaned: every holder dead
        view.release()
        unheld.append(seg)
    # neither a FIFO (opening it would block) nor a symlink (to a victim's file) is
    # opened: their names are taken by the victim's segments too
    os.mkfifo("/dev/shm/shoal-" + "f" * 20)
    os.symlink("/dev/shm/victim-target", "/dev/shm/shoal-" + "e" * 20)
    print("ready", flush=True)
    sys.stdin.readline()
''')
def body():
    planted = shoal_files()
    assert len(planted) == 17, planted
    import shoal
    from shoal import lowlevel
    t0 = time.monotonic()
    reaped = lowlevel.reap()
    lock = shoal.Lock()  # the first creation sweeps too
    took = time.monotonic() - t0
    lock.close()
    assert reaped == [], reaped
    assert took < 1.0, f"the sweep took {took:.1f} s"
    assert set(planted) <= set(shoal_files()), "another user's segments were removed"
    assert os.path.exists("/dev/shm/victim-target")
    done = subprocess.run([sys.executable, "-m", "shoal", "doctor", "--reap"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # (the victim's own, live: its ledger and what the Lock left pending)
    import re
    assert re.search(r": [0-9]+ live, 0 leftover, 17 unknown", done.stdout), done.stdout
    assert done.stdout.count("another user's") == 17, done.stdout
    assert "reaped:          0 " in done.stdout, done.stdout
    assert set(planted) <= set(shoal_files())

run_against(planter, body)
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_a_sweep_never_waits_on_a_holder_table_locked_by_a_live_process() -> None:
    # before: each segment whose table a live process held locked cost the sweep 1 s
    out = check_isolated(
        """
import multiprocessing as mp, os, time
from shoal import _core
from shoal.lowlevel import Segment, reap

def hold_locked(conn):
    dead = (_core.self_token() & ~0xFFFFFFFF) | 12345
    segs = []
    for _ in range(5):
        seg = Segment.create(64)
        seg._table_lock.acquire()
        view = seg._holders_view()
        view[0] = dead  # every holder dead: judged under the lock, which is held
        view.release()
        segs.append(seg.name)
    conn.send(segs)
    conn.recv()  # holds them until told

here, there = mp.get_context("fork").Pipe()
p = mp.get_context("fork").Process(target=hold_locked, args=(there,))
p.start()
try:
    assert here.poll(20)
    names = here.recv()
    t0 = time.monotonic()
    reaped = reap()
    took = time.monotonic() - t0
    assert not set(names) & set(reaped), reaped
    assert all(os.path.exists("/dev/shm" + n) for n in names)
    assert took < 0.5, f"the sweep took {took:.1f} s"
finally:
    here.send("done")
    p.kill()
    p.join(20)
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_a_file_truncated_by_another_user_while_the_victim_reaps() -> None:
    # before: truncating a planted file under the reaper's mapping killed it (SIGBUS)
    out = check_isolated(
        _HOSTILE
        + """
planter = hostile('''
    import os, sys, time
    from shoal.lowlevel import Segment
    segs = [Segment.create(64) for _ in range(20)]
    for seg in segs:
        seg._table_lock.acquire()  # the victim waits on these, mapped
    paths = ["/dev/shm" + seg.name for seg in segs]
    print("ready", flush=True)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for path in paths:
            with open(path, "r+b") as f:
                f.truncate(0)
                f.truncate(8192)
''')
def body():
    from shoal import lowlevel
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        lowlevel.reap()

run_against(planter, body)
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_a_corrupt_transit_record_removes_nothing() -> None:
    # before: the receiver removed the name a transit record gave before it checked the
    # header: a corrupt record unlinked a live segment, or any file named shoal-*
    out = check_isolated(
        """
import os, secrets
import shoal
from shoal import Queue
from shoal.lowlevel import Segment
q = Queue()
live = Segment.create(64)  # a live segment of this user, named by a corrupt record
plain = "/shoal-" + secrets.token_hex(10)  # a file that only has a shoal name
with open("/dev/shm" + plain, "wb") as f:
    f.write(b"x" * 8192)
records = [b"T" + live.name.encode(), b"T" + plain.encode(),
           b"T/../../etc/passwd" + b"\\0" * 9, b"T" + b"\\xff" * 27, b"T/shoal-"]
for record in records:
    q._put_bytes(record, True, 5)
    try:
        got = q.get(timeout=5)
    except shoal.LayoutError as exc:
        assert "shoal" in str(exc), exc
    else:
        raise AssertionError(f"{record!r} gave {got!r}")
for record in records:  # the last handle discards what is left: nothing is removed
    q._put_bytes(record, True, 5)
q.close()
assert os.path.exists("/dev/shm" + live.name) and os.path.exists("/dev/shm" + plain)
live.close()
os.unlink("/dev/shm" + plain)
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_transit_segments_nobody_can_receive_are_reclaimed() -> None:
    # before: a transit segment lived as long as its queue's *segment*, and a small
    # queue lives in an arena that its creator holds for as long as it lives: one whose
    # record was taken and never opened outlived the queue's close() and
    # doctor --reap; one whose writer was killed half way was kept as long as the queue
    out = check_isolated(
        """
import multiprocessing as mp, os, signal, subprocess, sys, threading, time
from shoal import Queue, _memory
from shoal.lowlevel import attached_names
FORK = mp.get_context("fork")
BIG = b"x" * 300_000  # travels in a transit segment

def shoal_files():  # segments (not liveness files, nor the processes' ledgers)
    return {"/" + n for n in os.listdir("/dev/shm")
            if n.startswith("shoal-") and not n.startswith("shoal-live-")
            and _memory._read_kind("/dev/shm/" + n) != _memory.KIND_LEDGER}

def wait_for_new(before, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = shoal_files() - before
        if new:
            return new
        time.sleep(0.01)
    raise AssertionError("no transit segment appeared")

def take_and_leave(q):
    q._get_bytes(True, 10)  # taken off the ring, its transit segment never opened

def die_while_writing(q):
    original = _memory._write_all
    def write_then_die(*args):
        original(*args)
        os.kill(os.getpid(), signal.SIGKILL)  # the data written, the magic not yet
    _memory._write_all = write_then_die
    q.put(BIG)

def doctor_reap():
    done = subprocess.run([sys.executable, "-m", "shoal", "doctor", "--reap"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

keep = Queue(capacity=1024)  # keeps the arena (this process's) alive throughout
# (a killed child's references pin every object it inherited: it goes first)
pinned = Queue(capacity=1024)
before = shoal_files()
p = FORK.Process(target=die_while_writing, args=(pinned,))
p.start(); p.join(10)
assert p.exitcode == -signal.SIGKILL
half_written = shoal_files() - before
# (on Linux a segment is named only once complete: then there is none to see)
assert len(half_written) <= 1, half_written

q = Queue(maxsize=1, capacity=1024)  # small: it lives in that arena too
assert q._segment is keep._segment
before = shoal_files()
q.put(BIG)
p = FORK.Process(target=take_and_leave, args=(q,))
p.start(); p.join(10)
assert p.exitcode == 0
never_opened = shoal_files() - before
assert len(never_opened) == 1, never_opened


# a live producer blocked in put(big) keeps its message whatever is swept meanwhile
q.put(b"small")  # full now
done = threading.Event()
def live_put():
    q.put(BIG, timeout=60)
    done.set()
before = shoal_files()
t = threading.Thread(target=live_put)
t.start()
live = wait_for_new(before)
doctor_reap()
have = shoal_files()
assert live <= have, "a live producer's message was removed"
assert never_opened <= have, "a message of a live queue was removed"
assert not half_written & have, "a half-written transit of a dead writer was kept"
assert q.get(timeout=10) == b"small"
assert q.get(timeout=10) == BIG
t.join(10)
assert done.is_set()
q.close()
doctor_reap()
assert not never_opened & shoal_files(), "the closed queue's lost message was kept"
keep.close()
pinned.close()
left = shoal_files() - attached_names()
assert not left, f"left after close and doctor --reap: {sorted(left)}"
print("ok")
""",
        timeout=100,
    )
    assert out.strip().endswith("ok")


def test_a_full_dev_shm_is_a_clear_error_on_every_creation_path() -> None:
    # a 4 MiB /dev/shm, filled to the last page: every path that makes a segment
    # (segments, arenas, transit messages, a dict's table, shared arrays) raises
    # SharedMemoryError naming the shortage, never SIGBUS, and leaves no file behind
    out = check_isolated(
        """
import errno, os
import numpy as np
import shoal
from shoal.lowlevel import Segment

def shoal_files():
    return {n for n in os.listdir("/dev/shm")
            if n.startswith("shoal-") and not n.startswith("shoal-live-")}

q = shoal.Queue()
d = shoal.SharedDict()
fd = os.open("/dev/shm/filler", os.O_CREAT | os.O_WRONLY, 0o600)
try:  # what is left, to the last page
    while True:
        os.write(fd, b"\\0" * 4096)
except OSError as exc:
    assert exc.errno == errno.ENOSPC, exc
os.close(fd)
before = shoal_files()
attempts = {
    "Segment.create": lambda: Segment.create(64 * 1024),
    "arena (Lock)": lambda: [shoal.Lock() for _ in range(10_000)],
    "own segment (Queue)": lambda: shoal.Queue(),
    "transit (put)": lambda: q.put(np.ones(40_000)),  # out of band: a transit
    "dict table": lambda: d.update({i: "v" * 100 for i in range(20_000)}),
    "share()": lambda: shoal.share(np.ones(100_000)),
    "Array": lambda: shoal.Array("d", 100_000),
}
made = []
for what, attempt in attempts.items():
    try:
        made.append(attempt())
    except shoal.SharedMemoryError as exc:
        assert "no room in shared memory" in str(exc), (what, exc)
    else:
        raise AssertionError(f"{what}: no error with /dev/shm full")
    assert shoal_files() == before, (what, shoal_files() - before)
os.unlink("/dev/shm/filler")
q.put(np.ones(40_000))  # what was refused works once there is room
assert (q.get(timeout=10) == 1).all()
d["k"] = "v"
assert d["k"] == "v"
print("ok")
""",
        shm_size="4m",
    )
    assert out.strip().endswith("ok")


def test_a_reservation_lives_as_long_as_the_process_that_made_it() -> None:
    # a process that closes a segment before the child it forked has claimed it leaves
    # its entry reserved (shoal._memory): every reaper must count it while that process
    # lives, whatever became of the child, and never once the process is gone
    out = check_isolated(
        """
import os, signal, subprocess, sys, textwrap, time
from shoal.lowlevel import reap

FORKER = textwrap.dedent('''
    import os, sys
    r, w = os.pipe()
    held = []

    def hold():
        if held:
            os.close(w)  # released by the forker's end (end of file), if not killed
            os.read(r, 1)

    os.register_at_fork(after_in_child=hold)
    from shoal.lowlevel import Segment
    seg = Segment.create(8)
    held.append(1)
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # not reached: held, then killed
    seg.close()  # before the child claimed: reserved for it
    print(seg.name, pid, flush=True)
    sys.stdin.readline()
''')
forker = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
try:
    name, child = forker.stdout.readline().split()
    path = "/dev/shm" + name
    assert os.path.exists(path), "unlinked before the child claimed it"
    os.kill(int(child), signal.SIGKILL)  # the forker does not know yet: no settle point
    time.sleep(0.1)
    assert reap() == [] and os.path.exists(path), "a live process's reservation reaped"
    forker.kill()
    forker.wait(20)
    assert reap() == [name], "a dead process's reservation kept its segment"
finally:
    forker.kill()
    forker.wait(20)
print("ok")
"""
    )
    assert out.strip().endswith("ok")
