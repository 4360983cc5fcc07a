"""Liveness files: each shoal process holds ``/dev/shm/shoal-live-<token>`` locked for
life, so that a process in another PID namespace can tell that it died (#10).

What is judged across namespaces is in tests/test_namespaces.py; here: that every
process has one (forked, spawned and forkserver children their own), that the lock
survives what it must (a child closing its inherited descriptor, this process opening
and closing its own file), that a clean exit removes it, and that the reaper removes
the dead's and never a live one's, its own or another user's (in a private
``/dev/shm``, tests/isolation.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import join_all
from isolation import HOSTILE_USER, PYTHON, check_isolated

from shoal import _core, _memory


def _name(token: int) -> str:
    return _core.liveness_name(token)


def _fds_on(path: str) -> bool:
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                return True
        except OSError:
            pass
    return False


def _report(parent_token: int, conn, dies: bool) -> None:
    token = _core.self_token()
    conn.send(
        (
            token,
            _core.liveness_probe(_name(token)),
            _core.liveness_probe(_name(parent_token)),
            _fds_on("/dev/shm/" + _name(parent_token)),
        )
    )
    conn.close()
    if dies:
        os.kill(os.getpid(), signal.SIGKILL)


def test_this_process_has_a_locked_liveness_file() -> None:
    token = _core.self_token()
    assert token & _core.TOKEN_LIVENESS
    path = "/dev/shm/" + _name(token)
    st = os.lstat(path)
    assert st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o600 and st.st_size == 0
    assert _core.liveness_probe(_name(token)) == _core.LIVENESS_HELD
    assert _memory.liveness_files()[_name(token)] == "own"
    # opening and closing it here drops nothing (an open file description lock; a POSIX
    # record lock would be gone, and this process would look dead to other namespaces)
    with open(path, "rb"):
        pass
    assert _core.liveness_probe(_name(token)) == _core.LIVENESS_HELD
    probe = f"from shoal import _core; print(_core.liveness_probe({_name(token)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == str(_core.LIVENESS_HELD), done


def test_a_clean_exit_removes_the_liveness_file() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            # (the exit hook that removes it is _memory's, which every public name
            # that reaches shared memory loads)
            "from shoal import _core, _memory; t = _core.self_token(); "
            "print(_core.liveness_name(t), _core.liveness_probe(_core.liveness_name(t)))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    name, state = done.stdout.split()
    assert int(state) == _core.LIVENESS_HELD, done
    assert not os.path.lexists("/dev/shm/" + name), "a clean exit left its liveness file"


@pytest.mark.parametrize("dies", [False, True], ids=["exits", "killed"])
def test_a_child_has_its_own_liveness_file_and_leaves_the_parents_held(ctx, dies: bool) -> None:
    parent = _core.self_token()
    reader, writer = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_report, args=(parent, writer, dies))
    p.start()
    writer.close()
    assert reader.poll(30)
    child, child_state, parent_state, inherited = reader.recv()
    reader.close()
    join_all(p)
    assert child != parent and child & _core.TOKEN_LIVENESS
    assert child_state == _core.LIVENESS_HELD and parent_state == _core.LIVENESS_HELD
    assert not inherited, "the child kept a descriptor of the parent's liveness file"
    # the child's descriptor went (closed at the fork, or at exit): the parent's lock stays
    assert _core.liveness_probe(_name(parent)) == _core.LIVENESS_HELD
    if dies:
        assert p.exitcode == -signal.SIGKILL
        assert _core.liveness_probe(_name(child)) == _core.LIVENESS_FREE
        assert not _core.token_alive(child)
        # the next sweep removes it (the leak check would, too)
        assert _name(child) in _memory.reap_liveness()
    else:
        assert p.exitcode == 0
        assert _core.liveness_probe(_name(child)) == _core.LIVENESS_ABSENT, "left at exit"


_HOSTILE = f"""
import os, signal, subprocess, sys, textwrap, time
from shoal import _core, _memory
HOSTILE = ["setpriv", "--reuid={HOSTILE_USER[0]}", "--regid={HOSTILE_USER[1]}",
           "--clear-groups"]
MAKE = '''
import os, signal, sys
from shoal import _core
print(_core.liveness_name(_core.self_token()), flush=True)
if sys.argv[1] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.readline()
'''

def start(how, user=()):
    proc = subprocess.Popen([*user, {PYTHON!r}, "-c", MAKE, how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    assert name.startswith("shoal-live-"), name
    if how == "die":
        proc.wait(20)
    return proc, name

def files():
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("shoal-live-"))
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_the_reaper_removes_only_dead_processes_liveness_files() -> None:
    # (before: no process had one, and nothing reaped them)
    out = check_isolated(
        _HOSTILE
        + """
own = _core.liveness_name(_core.self_token())
live, live_name = start("live")
_, dead_name = start("die")
theirs, their_live = start("live", HOSTILE)
_, their_dead = start("die", HOSTILE)
try:
    # a temporary name left by a maker killed half way (its token is dead), and one of
    # a live process (as while it makes its file: not yet locked)
    dead_tmp, live_tmp = dead_name + ".tmp", live_name + ".tmp"
    for tmp in (dead_tmp, live_tmp):
        open("/dev/shm/" + tmp, "w").close()
    # opening and closing its own file must not cost this process its lock
    with open("/dev/shm/" + own, "rb"):
        pass
    states = _memory.liveness_files()
    assert states[own] == "own" and states[live_name] == "live", states
    assert states[dead_name] == "dead" and states[their_dead] == "unknown", states
    before = files()
    reaped = _memory.reap()
    assert reaped == [], reaped  # no segment here
    after = files()
    gone = sorted(set(before) - set(after))
    assert gone == sorted([dead_name, dead_tmp]), (gone, before)
    for kept in (own, live_name, live_tmp, their_live, their_dead):
        assert kept in after, (kept, after)
    assert _core.liveness_probe(own) == _core.LIVENESS_HELD
    assert _core.liveness_probe(live_name) == _core.LIVENESS_HELD
    assert _memory.reap_liveness() == []
finally:
    for proc in (live, theirs):
        proc.kill()
        proc.wait(20)
# once they died, theirs is still not this user's to remove; the live one's is (and
# its temporary name, now that its maker is dead)
gone_later = _memory.reap_liveness()
assert sorted(gone_later) == sorted([live_name, live_tmp]), (gone_later, files())
assert files() == sorted([own, their_live, their_dead]), files()
print("reaped", gone)
"""
    )
    assert "reaped" in out


def test_a_killed_process_liveness_file_is_reaped_by_the_next_shoal_process() -> None:
    out = check_isolated(
        _HOSTILE
        + """
_, dead_name = start("die")
assert dead_name in files()
import shoal
lock = shoal.Lock()  # the first segment a process makes sweeps
assert dead_name not in files(), files()
assert files() == [_core.liveness_name(_core.self_token())]
print("swept")
"""
    )
    assert "swept" in out
