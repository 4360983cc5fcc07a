"""Forking a process that has threads: shoal adds none the program did not ask for.

``os.fork()`` in a process with more than one thread warns since 3.12
(``DeprecationWarning: This process (pid=...) is multi-threaded, use of fork() may lead
to deadlocks in the child``), and from 3.15 a warnings filter that makes it an error
raises it in the parent, after the child was made.  shoal must not be the cause where
the program's own code is not: a pool forks its first workers before it starts its
threads, as the standard library's does, and a progress bar leaves no thread behind
(tqdm's monitor thread stayed for the life of the process: every later fork warned,
the standard library's too).  Where the standard library forks from a thread of its
own (a worker replaced while the pool runs), so does shoal, and both warn alike.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import textwrap
import threading

import pytest
from pool_tasks import square

import shoal

FORK = mp.get_context("fork")
TIMEOUT = 60.0


def run_script(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_a_progress_bar_leaves_no_thread_behind() -> None:
    with shoal.Pool(1, context=FORK) as pool:
        assert pool.map(square, range(3), progress=True) == [0, 1, 4]
    # (conftest's leak check would see a thread left over too: tqdm's monitor used
    # to be allowed there)
    assert [t.name for t in threading.enumerate() if t.name == "tqdm_monitor"] == []


def test_a_fork_after_progress_bars_and_pools_warns_nowhere() -> None:
    # a fresh interpreter: no thread of this test process's making; warnings are errors
    done = run_script(
        """
        import multiprocessing as mp, os, threading, warnings
        warnings.simplefilter("error")
        import shoal
        fork = mp.get_context("fork")
        with fork.Pool(1) as p:  # the standard library's, as the reference
            assert p.map(abs, [-1]) == [1]
        with shoal.Pool(2, context=fork) as pool:
            assert pool.map(abs, range(-3, 0), progress=True) == [3, 2, 1]
        with shoal.Executor(2, mp_context=fork) as ex:
            assert ex.submit(abs, -4).result(60) == 4
        assert threading.active_count() == 1, threading.enumerate()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        assert not seen, [str(w.message) for w in seen]
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the fork warning is new in 3.12")
@pytest.mark.filterwarnings("always::DeprecationWarning")
@pytest.mark.parametrize("kind", ["stdlib", "shoal"])
def test_replacing_a_worker_from_the_pools_thread_warns_as_the_standard_library(
    kind: str,
) -> None:
    # maxtasksperchild=1: the second task runs in a worker forked from the pool's own
    # thread, in both pools; both warn (and neither warns for its first workers)
    make = FORK.Pool if kind == "stdlib" else lambda *a, **k: shoal.Pool(*a, context=FORK, **k)
    with (
        pytest.warns(DeprecationWarning, match="is multi-threaded, use of fork()") as seen,
        make(1, maxtasksperchild=1) as pool,
    ):
        assert pool.apply(square, (2,)) == 4
        assert pool.apply(square, (3,)) == 9
    assert all("multi-threaded" in str(w.message) for w in seen)
