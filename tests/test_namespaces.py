"""shoal across PID namespaces that share ``/dev/shm`` (#10).

Containers started with ``docker run --ipc=host`` (or ``--ipc=container:``), and
Kubernetes pods with a memory-backed volume on ``/dev/shm``, share shoal's segments but
not their pids: a pid in a token written in one namespace names another process, or
none, in the other.  Before #10 a process there saw every owner and holder as dead: a
waiter took a lock its live owner held, and its reaper removed a live process's
segments.  Now a token carries its PID namespace, and a process never judges a token
of another namespace by a pid it cannot see: it counts as alive.

Each test runs in a private ``/dev/shm`` (tests/isolation.py), with the second
namespace made by ``unshare --pid --fork --mount-proc``.
"""

from __future__ import annotations

import shutil

import pytest
from isolation import check_isolated

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")

_SETUP = """
import os, pickle, signal, subprocess, sys, textwrap
import multiprocessing as mp
import shoal
from shoal import _core, _memory

def in_other_namespace(code, *args):
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
         textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout

def segments():
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("shoal-"))
"""


def test_a_live_owner_in_another_pid_namespace_keeps_its_lock() -> None:
    out = check_isolated(
        _SETUP
        + """
lock = shoal.Lock()
assert lock.acquire()
with open("/tmp/shoal-ns-lock.pickle", "wb") as f:
    f.write(pickle.dumps(lock))
before = segments()
seen = in_other_namespace('''
    import os, pickle, shoal
    from shoal import _core, _memory
    assert os.getpid() == 1  # the other namespace's first process
    with open("/tmp/shoal-ns-lock.pickle", "rb") as f:
        lock = pickle.load(f)
    owner = lock.statistics().owner_pid
    token = _core.load64(lock._mapping, lock._payload_offset)
    assert not _core.token_alive(0)
    # the owner's pid means nothing here: it is never presumed dead
    assert _core.token_alive(token), hex(token)
    assert not lock.acquire(timeout=0.3), "took a lock its live owner holds"
    assert _memory.reap() == [], "reaped a live process's segments"
    print("owner", owner)
''')
assert lock.statistics().owner_pid == os.getpid()
assert segments() == before, (segments(), before)
lock.release()
print(seen.strip())
os.unlink("/tmp/shoal-ns-lock.pickle")
"""
    )
    assert "owner" in out


def test_a_dead_owner_in_the_same_namespace_is_still_found_there() -> None:
    """Inside a container, the namespace's own dead owners are recovered as before."""
    out = check_isolated(
        _SETUP
        + """
seen = in_other_namespace('''
    import os, signal, warnings, multiprocessing as mp, shoal
    from shoal import _core
    assert _core.token_pid(_core.self_token()) == os.getpid() == 1
    lock = shoal.Lock()
    def hold_and_die(lock):
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    p = mp.get_context("fork").Process(target=hold_and_die, args=(lock,))
    p.start(); p.join()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lock.acquire(timeout=5), "the dead owner's lock was not recovered"
    assert lock.owner_died and caught
    lock.release()
    print("recovered")
    from shoal import _memory
    _memory.reap()  # (the killed child's ledger: reclaimed by the next sweep)
''')
print(seen.strip())
assert segments() == [], segments()
"""
    )
    assert "recovered" in out


def test_tokens_of_the_initial_namespace_keep_their_pid() -> None:
    import os

    from shoal import _core

    token = _core.self_token()
    assert _core.token_pid(token) == os.getpid()
    assert token >> 32 == os.getpid()  # no namespace bits here: the machine's own
