"""shoal.testing (#12): the helpers shoal's own suite uses, public for users' tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pool_tasks as t
import pytest
from isolation import check_isolated

import shoal
import shoal.testing

# the plugin's fixtures, as a conftest's pytest_plugins = ["shoal.testing"] gives them
from shoal.testing import (  # noqa: F401
    START_METHODS,
    abandon,
    kill_worker,
    no_leaks,
    shoal_no_leaks,
    shoal_start_method,
    worker_pids,
)


def test_start_methods_are_the_platforms() -> None:
    import multiprocessing

    assert START_METHODS
    assert set(START_METHODS) <= set(multiprocessing.get_all_start_methods())


def test_shoal_start_method_fixture_runs_once_per_method(shoal_start_method: str) -> None:  # noqa: F811
    # (parametrised by the plugin: the ids show each method)
    assert shoal_start_method in START_METHODS
    ctx = shoal.get_context(shoal_start_method)
    assert ctx.get_start_method() == shoal_start_method


def test_no_leaks_passes_when_everything_made_inside_is_closed(shoal_no_leaks: None) -> None:  # noqa: F811
    with no_leaks():
        q = shoal.Queue()
        q.put([1, 2])
        assert q.get(timeout=5) == [1, 2]
        q.close()
        d = shoal.SharedDict(a=1)
        d.close()


def test_no_leaks_names_a_segment_a_dead_child_left_behind() -> None:
    # a forked child makes a dict and exits without closing it: its segments have no
    # live holder and outlive the block (in a private /dev/shm: the check must not see
    # the machine's other segments, and its clean-up reaps)
    out = check_isolated(
        """
        import os
        import shoal
        from shoal import _memory
        from shoal.testing import SegmentLeakError, no_leaks, segments

        try:
            with no_leaks(timeout=0.5):
                pid = os.fork()
                if pid == 0:
                    kept = shoal.SharedDict(a=1)  # (not closed: os._exit skips it)
                    os._exit(0)
                os.waitpid(pid, 0)
        except SegmentLeakError as exc:
            assert exc.names and set(exc.names) <= segments(), exc.names
            print("leaked", len(exc.names))
        else:
            raise SystemExit("no leak reported")
        _memory.reap()
        """
    )
    assert out.startswith("leaked ")


def test_no_leaks_ignores_segments_this_process_still_holds() -> None:
    with no_leaks(timeout=0.2):
        kept = shoal.Lock()
    kept.close()


def test_abandon_leaves_a_lock_to_a_dead_owner_and_the_next_acquire_recovers_it() -> None:
    lock = shoal.Lock()
    try:
        abandon(lock)
        with pytest.warns(shoal.OwnerDiedWarning):
            assert lock.acquire(timeout=5)
        lock.release()
    finally:
        lock.close()


def test_abandon_takes_a_unit_of_a_semaphore() -> None:
    sem = shoal.BoundedSemaphore(2)
    try:
        abandon(sem)
        assert sem.acquire(timeout=5)  # the one the dead child left, or recovered
        sem.release()
    finally:
        sem.close()


def test_abandon_of_a_lock_held_here_times_out_with_a_clear_error() -> None:
    lock = shoal.Lock()
    try:
        assert lock.acquire(timeout=1)
        with pytest.raises(TimeoutError, match="could not take"):
            abandon(lock, timeout=0.5)
        lock.release()
    finally:
        lock.close()


TIMEOUT = 30.0


@pytest.mark.parametrize("kind", ["pool", "executor"])
def test_kill_worker_kills_the_worker_running_a_task_and_only_its_task_fails(
    kind: str,
    shoal_start_method: str,  # noqa: F811
) -> None:
    context = shoal.get_context(shoal_start_method)
    started = shoal.Queue()
    runner = context.Pool(2) if kind == "pool" else context.Executor(2)
    with runner:
        if kind == "pool":
            victim = runner.apply_async(t.announce_then_sleep, (started, 60))
            outcome = victim.get
        else:
            victim = runner.submit(t.announce_then_sleep, started, 60)
            outcome = victim.result
        busy = started.get(timeout=TIMEOUT)  # the pid of the worker running it
        assert busy in worker_pids(runner)
        assert kill_worker(runner, busy) == busy
        with pytest.raises(shoal.WorkerDiedError) as info:
            outcome(TIMEOUT)
        assert info.value.pid == busy and info.value.exitcode == -9
        # replaced: two workers again, the killed one not among them
        deadline = time.monotonic() + TIMEOUT
        while len(worker_pids(runner)) != 2 or busy in worker_pids(runner):
            assert time.monotonic() < deadline, worker_pids(runner)
            time.sleep(0.01)
        square = runner.apply(t.square, (3,)) if kind == "pool" else runner.submit(t.square, 3)
        assert (square if kind == "pool" else square.result(TIMEOUT)) == 9
    started.close()


def test_kill_worker_without_a_pid_kills_a_started_worker() -> None:
    with shoal.get_context(START_METHODS[0]).Pool(1) as pool:
        first = pool.apply(t.pid)  # started: in its loop
        assert worker_pids(pool) == [first]
        assert kill_worker(pool) == first
        assert pool.apply(t.pid, timeout=TIMEOUT) != first  # its replacement


def test_kill_worker_refuses_what_is_not_its_pools_worker() -> None:
    with shoal.get_context(START_METHODS[0]).Pool(1) as pool:
        pool.apply(t.pid)
        with pytest.raises(ValueError, match="not a worker"):
            kill_worker(pool, os.getpid())  # (this process: never killed)
        with pytest.raises(TypeError, match="Pool or Executor"):
            kill_worker(object())
        with pytest.raises(TypeError, match="Pool or Executor"):
            worker_pids(shoal.Event())
    with pytest.raises(ValueError, match="no worker"):
        kill_worker(pool)  # terminated: none left


def test_the_module_documents_every_name() -> None:
    for name in shoal.testing.__all__:
        assert getattr(shoal.testing, name).__doc__, name


def test_the_plugin_gives_its_fixtures_to_a_users_suite(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["shoal.testing"]\n')
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import shoal

            def test_per_method(shoal_start_method, shoal_no_leaks):
                q = shoal.get_context(shoal_start_method).Queue()
                q.put(1)
                assert q.get(timeout=5) == 1
                q.close()
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(START_METHODS)} passed" in done.stdout
