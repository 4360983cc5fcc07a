"""shoal.Executor where ProcessPoolExecutor's behaviour is what programs rely on (#11).

Work left running at interpreter exit, what a finished call keeps alive (in the parent
and in the worker), a result that does not unpickle, the remote traceback's class and
text, and the exception classes, each checked against the standard library's.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import multiprocessing.pool
import os
import pickle
import subprocess
import sys
import textwrap
import traceback
import weakref
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from pathlib import Path
from typing import Any

import pool_tasks as t
import pytest
from conftest import START_METHODS, wait_until

import shoal

TIMEOUT = 30.0

# ---- work submitted without shutdown() runs at exit -------------------------------------

AT_EXIT = """
import os
import pickle
import sys
import time

import EXECUTOR_MODULE


def write(path):
    time.sleep(0.3)  # still running (or not yet started) when the main thread ends
    with open(path, "w") as f:
        f.write("done")
    return path


if __name__ == "__main__":
    method, out, keep = sys.argv[1], sys.argv[2], sys.argv[3] == "keep"
    import multiprocessing

    executor = EXECUTOR(2, mp_context=multiprocessing.get_context(method))
    futures = [executor.submit(write, os.path.join(out, f"f{i}")) for i in range(5)]
    if not keep:
        del executor  # dropped with work pending: the work still runs
    print("submitted", flush=True)
"""

EXECUTORS = {
    "stdlib": ("concurrent.futures", "concurrent.futures.ProcessPoolExecutor"),
    "shoal": ("shoal", "shoal.Executor"),
}


@pytest.mark.parametrize("keep", ["keep", "drop"])
@pytest.mark.parametrize("method", START_METHODS)
def test_work_submitted_without_shutdown_runs_at_exit(
    tmp_path: Path, method: str, keep: str
) -> None:
    # ProcessPoolExecutor joins its executors from threading._register_atexit: every
    # call submitted runs before the interpreter exits, whether the executor is still
    # referenced or was dropped.  shoal's finalizer terminated the workers instead.
    made = {}
    for library, (module, name) in EXECUTORS.items():
        out = tmp_path / library
        out.mkdir()
        script = out / "program.py"
        script.write_text(
            textwrap.dedent(AT_EXIT).replace("EXECUTOR_MODULE", module).replace("EXECUTOR", name)
        )
        result = subprocess.run(
            [sys.executable, str(script), method, str(out), keep],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=out,
            check=False,
        )
        assert result.returncode == 0, f"{library}:\n{result.stdout}\n{result.stderr}"
        assert result.stdout.strip() == "submitted"
        assert "Traceback" not in result.stderr, f"{library}:\n{result.stderr}"
        made[library] = sorted(p.name for p in out.glob("f*"))
    assert made["stdlib"] == [f"f{i}" for i in range(5)]  # (the test itself is right)
    assert made["shoal"] == made["stdlib"]


# ---- what a finished call keeps alive ---------------------------------------------------


def test_a_done_future_keeps_neither_callable_nor_arguments_alive(ctx: Any, tmp_path: Path) -> None:
    with shoal.Executor(1, mp_context=ctx) as executor:
        for make_call in (
            lambda o: executor.submit(o.pid),  # the callable's object
            lambda o: executor.submit(t.pid_of_call, o),  # an argument
            lambda o: executor.submit(t.pid_of_call, x=o),  # a keyword argument
        ):
            obj = t.Announces(str(tmp_path / "parent"))
            ref = weakref.ref(obj)
            future = make_call(obj)
            assert isinstance(future.result(TIMEOUT), int)
            del obj
            # ProcessPoolExecutor lets go as the call finishes: no collection needed
            assert ref() is None, gc.get_referrers(ref())


def test_a_worker_lets_go_of_a_task_once_it_returned(ctx: Any, tmp_path: Path) -> None:
    # the worker, idle after the call, must not hold the call's argument or callable
    # (an open file, shared memory, a big array) until its next task or its exit
    with shoal.Executor(1, mp_context=ctx) as executor:
        for n, make_call in enumerate(
            (
                lambda o: executor.submit(t.pid_of_call, o),
                lambda o: executor.submit(o.pid),
            )
        ):
            path = tmp_path / f"gone{n}"
            obj = t.Announces(str(path))
            pid = make_call(obj).result(TIMEOUT)
            assert pid != os.getpid()
            assert wait_until(functools.partial(_announced, path, pid), 5), (
                f"worker {pid} still holds the task's object"
            )


def _announced(path: Path, pid: int) -> bool:
    return path.exists() and str(pid) in path.read_text().split()


# ---- a result that does not unpickle in the parent --------------------------------------


def test_a_result_that_does_not_unpickle_fails_its_future_as_a_broken_pool(ctx: Any) -> None:
    # ProcessPoolExecutor reports it as BrokenProcessPool (and breaks the whole pool:
    # shoal fails only that call, see docs/compatibility.md); it was a bare error
    with shoal.Executor(1, mp_context=ctx) as executor:
        running = executor.submit(t.sleep_then, 0.3, "after")
        future = executor.submit(t.return_unreadable)
        error = future.exception(TIMEOUT)
        assert isinstance(error, BrokenProcessPool), repr(error)
        assert isinstance(error, concurrent.futures.BrokenExecutor)
        assert "could not be unpickled" in str(error) and "return_unreadable" in str(error)
        assert isinstance(error.__cause__, RuntimeError)
        assert "does not unpickle" in str(error.__cause__)
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        assert "does not unpickle" in text
        with pytest.raises(BrokenProcessPool):
            future.result()
        # only that call failed: the others and later ones complete
        assert running.result(TIMEOUT) == "after"
        assert executor.submit(t.square, 3).result(TIMEOUT) == 9
        exiting = executor.submit(t.return_exiting).exception(TIMEOUT)
        assert isinstance(exiting, BrokenProcessPool) and isinstance(exiting.__cause__, SystemExit)


def test_what_fails_to_travel_in_the_worker_is_reported_as_the_stdlib_does(ctx: Any) -> None:
    # CPython's ExecutorDeadlockTest: SystemExit while the worker pickles a result is
    # that call's exception (it killed the worker: WorkerDiedError); an argument that
    # does not unpickle in the worker is a BrokenProcessPool (was the bare error)
    with shoal.Executor(1, mp_context=ctx) as executor:
        pid = executor.submit(t.pid).result(TIMEOUT)
        error = executor.submit(t.return_exiting_at_pickle).exception(TIMEOUT)
        assert type(error) is SystemExit and str(error) == "pickled", repr(error)
        for argument, cause in [
            (t.ExitsWhenUnpickledInTheWorker(), SystemExit),
            (t.DoesNotUnpickle(), RuntimeError),
        ]:
            error = executor.submit(t.identity, argument).exception(TIMEOUT)
            assert isinstance(error, BrokenProcessPool), repr(error)
            assert "could not be unpickled in the worker" in str(error)
            assert isinstance(error.__cause__, cause), repr(error.__cause__)
        assert executor.submit(t.pid).result(TIMEOUT) == pid  # the same worker
    # a Pool task gets the error itself
    with shoal.Pool(1, context=ctx) as pool, pytest.raises(RuntimeError, match="unpickle"):
        pool.apply(t.identity, (t.DoesNotUnpickle(),))


# ---- the remote traceback ---------------------------------------------------------------


def _shape(error: BaseException) -> list[str]:
    """What format_exception shows, with the frames' lines left out."""
    lines = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return [
        line
        for line in lines.splitlines()
        if line and not line.startswith(" ") and not line.startswith("Traceback")
    ]


def test_the_remote_traceback_is_process_pool_executors(ctx: Any) -> None:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        theirs = executor.submit(t.fail, "kaput").exception(TIMEOUT)
    del executor
    gc.collect()  # (its pipes close when it is collected)
    with shoal.Executor(1, mp_context=ctx) as executor:
        ours = executor.submit(t.fail, "kaput").exception(TIMEOUT)
    assert type(ours) is type(theirs) is ValueError and str(ours) == "kaput"
    assert type(ours.__cause__) is type(theirs.__cause__) is _RemoteTraceback
    text = str(ours.__cause__)
    assert text.startswith('\n"""\nTraceback (most recent call last):\n'), text
    assert text.endswith('ValueError: kaput\n"""'), text
    assert "pool_tasks.py" in text and "in fail" in text
    assert ours.__cause__.tb == text  # the attribute the standard library's has
    assert _shape(ours) == _shape(theirs)


def test_the_pools_remote_traceback_is_multiprocessing_pools(ctx: Any) -> None:
    with multiprocessing.pool.Pool(1, context=ctx) as pool:
        with pytest.raises(ValueError) as info:
            pool.apply(t.fail, ("kaput",))
        theirs = info.value
        pool.close()
        pool.join()
    del pool, info
    gc.collect()  # (its pipes close when it is collected)
    with shoal.Pool(1, context=ctx) as pool:
        with pytest.raises(ValueError) as info:
            pool.apply(t.fail, ("kaput",))
        ours = info.value
    assert type(ours.__cause__) is type(theirs.__cause__) is multiprocessing.pool.RemoteTraceback
    text = str(ours.__cause__)
    assert text.startswith('\n"""\nTraceback (most recent call last):\n'), text
    assert text.endswith('ValueError: kaput\n"""'), text
    assert ours.__cause__.tb == text
    assert _shape(ours) == _shape(theirs)


# ---- the exception classes --------------------------------------------------------------


def test_the_exceptions_are_concurrent_futures_classes() -> None:
    # concurrent.futures.TimeoutError is the builtin only from 3.11: what the Executor
    # raises for "not ready" must be the concurrent.futures name on 3.9 and 3.10 too
    go = shoal.Event()
    with shoal.Executor(2) as executor:
        waiting = executor.submit(t.wait_for, go, "late")
        with pytest.raises(concurrent.futures.TimeoutError):
            waiting.result(0.05)
        with pytest.raises(concurrent.futures.TimeoutError):
            waiting.exception(0.05)
        with pytest.raises(concurrent.futures.TimeoutError):
            list(concurrent.futures.as_completed([waiting], timeout=0.05))
        for chunksize in (1, 2):
            with pytest.raises(concurrent.futures.TimeoutError):
                list(executor.map(t.wait_for, [go, go], timeout=0.1, chunksize=chunksize))
        queued = executor.submit(t.wait_for, go)
        queued2 = executor.submit(t.square, 2)
        assert queued2.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            queued2.result(TIMEOUT)
        go.set()
        assert waiting.result(TIMEOUT) == "late" and queued.result(TIMEOUT) is None
    broken = shoal.Executor(1, initializer=t.failing_initializer)
    try:
        with pytest.raises(BrokenProcessPool) as info:
            broken.submit(t.square, 2).result(TIMEOUT)
        assert isinstance(info.value, concurrent.futures.BrokenExecutor)
    finally:
        broken.shutdown()


# ---- an argument that does not pickle ---------------------------------------------------


@pytest.mark.parametrize("kind", ["stdlib", "shoal"])
def test_an_argument_that_does_not_pickle_fails_its_future_not_submit(ctx: Any, kind: str) -> None:
    # CPython's ExecutorDeadlockTest.test_error_at_task_pickle: submit() returns, the
    # future fails.  shoal raised in submit(), which broke `[ex.submit(f, x) for x in
    # xs]` loops and hung the stdlib's test (it waited on an executor it never made)
    make = concurrent.futures.ProcessPoolExecutor if kind == "stdlib" else shoal.Executor
    with make(1, mp_context=multiprocessing.get_context(ctx.get_start_method())) as executor:
        futures = [executor.submit(t.identity, x) for x in (1, t.DoesNotPickle(), 3)]
        assert futures[0].result(TIMEOUT) == 1 and futures[2].result(TIMEOUT) == 3
        error = futures[1].exception(TIMEOUT)
        assert isinstance(error, pickle.PicklingError), repr(error)
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        assert "does not pickle" in text, text
        # map's calls go through submit(): the failure is the iteration's
        results = executor.map(t.identity, [1, t.DoesNotPickle()])
        assert next(results) == 1
        with pytest.raises(pickle.PicklingError):
            next(results)
