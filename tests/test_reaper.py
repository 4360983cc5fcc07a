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
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("shoal-"))
"""


def test_files_planted_by_another_user_are_never_opened_waited_on_or_removed() -> None:
    # before: the reaper (run as root here) mapped every shoal-* file, waited 1 s on
    # each locked holder table and unlinked another user's segments it judged dead
    out = check_isolated(
        _HOSTILE
        + """
planter = hostile('''
    import sys
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
    print("ready", flush=True)
    sys.stdin.readline()
''')
def body():
    planted = shoal_files()
    assert len(planted) == 15, planted
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

run_against(planter, body)
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
