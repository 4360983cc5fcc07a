"""Drop-in gaps of issue #11: what ordinary multiprocessing programs do, shoal must too.

* Objects the standard library refuses to pickle (open files, sockets, ``threading``
  locks, generators) fail with its ``TypeError: cannot pickle '...' object`` as task
  arguments, results and queue items; cloudpickle only ever carries functions and
  classes, never turns data into a copy.
* Standard-library objects that may only be inherited (``multiprocessing.Queue``,
  ``Lock``, ``Value``) work in a shoal ``Pool``'s or ``Executor``'s ``initargs``, as
  initargs travel with the process start in the standard library too: the usual way
  to log from workers through ``logging.handlers.QueueHandler``.
* A script without ``if __name__ == "__main__":`` fails at once under spawn and
  forkserver, with one message naming the fix, instead of a flood of tracebacks and a
  parent that hangs.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing as mp
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

import shoal

TIMEOUT = 30.0


def _file_message() -> str:
    """The standard library's message for a file that cannot be pickled (its wording
    changed in 3.14: "cannot pickle 'TextIOWrapper' instances")."""
    with open(__file__) as f:
        try:
            pickle.dumps(f)
        except TypeError as exc:
            return str(exc)
    raise AssertionError("the standard library pickled an open file")


FILE_MESSAGE = _file_message()


# ---- objects that cannot travel fail as the standard library's do ----------------------


def _unpicklables(tmp_path: Any) -> list[tuple[Any, str]]:
    """(object, the type name in the standard library's message), each to be closed."""
    (tmp_path / "f.txt").write_text("data")
    # read mode: cloudpickle turns such a file into a StringIO copy of its contents
    f = open(tmp_path / "f.txt")  # noqa: SIM115 (closed by the test)
    s = socket.socket()
    return [
        (f, "_io.TextIOWrapper"),
        (s, "socket"),
        (threading.Lock(), "_thread.lock"),
        (threading.RLock(), "_thread.RLock"),
        ((x for x in range(3)), "generator"),
    ]


def _close(objs: list[tuple[Any, str]]) -> None:
    for obj, _ in objs:
        if hasattr(obj, "close"):
            obj.close()


def _stdlib_message(obj: Any) -> str:
    with pytest.raises(TypeError) as info:
        pickle.dumps(obj)
    return str(info.value)


def identity(x: Any) -> Any:
    return x


def make_file(path: str) -> Any:
    return open(path)


def test_queue_items_that_cannot_be_pickled_raise_the_stdlib_type_error(tmp_path: Any) -> None:
    objs = _unpicklables(tmp_path)
    q = shoal.Queue()
    try:
        for obj, name in objs:
            message = _stdlib_message(obj)
            short = name.rsplit(".", 1)[-1]  # (3.14+: "'TextIOWrapper' instances")
            assert message in (
                f"cannot pickle '{name}' object",
                f"cannot pickle '{short}' instances",
            )
            for attempt in (obj, [1, obj], {"k": (obj,)}):
                with pytest.raises(TypeError, match=re.escape(message)) as info:
                    q.put(attempt)
                assert isinstance(info.value, shoal.SerializationError)
            assert q.empty()  # nothing sent, not a copy
        d = shoal.SharedDict()
        with pytest.raises(TypeError, match=re.escape(FILE_MESSAGE)):
            d["f"] = objs[0][0]
        assert len(d) == 0
        d.close()
    finally:
        q.close()
        _close(objs)


def test_functions_and_classes_still_go_by_value_but_not_the_data_they_hold(
    tmp_path: Any,
) -> None:
    q = shoal.Queue()
    (tmp_path / "g.txt").write_text("data")
    f = open(tmp_path / "g.txt")  # noqa: SIM115

    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

    try:
        q.put([lambda: 1, Local(2), Local])  # plain pickle refuses: cloudpickle does these
        fn, obj, cls = q.get(timeout=TIMEOUT)
        assert (fn(), obj.v, cls.__name__) == (1, 2, "Local")
        with pytest.raises(TypeError, match=re.escape(FILE_MESSAGE)):
            q.put([lambda: f.read()])  # a function by value, but its file is data
        assert q.empty()
    finally:
        q.close()
        f.close()


def test_pool_and_executor_refuse_files_as_arguments_and_results(ctx: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "f.txt")
    message = re.escape(FILE_MESSAGE)
    with open(path, "w") as f:
        f.write("data")
    with open(path) as f, shoal.Pool(1, context=ctx) as pool:
        with pytest.raises(TypeError, match=message):
            pool.apply_async(identity, (f,)).get(TIMEOUT)
        with pytest.raises(TypeError, match=message):
            pool.map(identity, [1, f])
        with pytest.raises(TypeError, match=message):
            pool.apply(make_file, (path,))  # the result cannot come back
        assert pool.apply(identity, (5,)) == 5  # and the pool carries on
    with open(path) as f, shoal.Executor(1, mp_context=ctx) as ex:
        with pytest.raises(TypeError, match=message):
            ex.submit(identity, f).result(TIMEOUT)
        with pytest.raises(TypeError, match=message):
            ex.submit(make_file, path).result(TIMEOUT)
        assert ex.submit(identity, 6).result(TIMEOUT) == 6


class RefusesWithRuntimeError:
    """An object whose ``__reduce__`` raises (CPython's _TestPool.test_map_unplicklable)."""

    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle this one")


def test_an_error_raised_while_pickling_keeps_its_class(ctx: Any) -> None:
    # multiprocessing.Pool.map lets the RuntimeError through; shoal's SerializationError
    # was not one, so `except RuntimeError` missed it
    obj = RefusesWithRuntimeError()
    stdlib = mp.get_context(ctx.get_start_method())
    with stdlib.Pool(1) as pool, pytest.raises(RuntimeError, match="cannot pickle this one"):
        pool.map(identity, [obj])
    with shoal.Pool(1, context=ctx) as pool:
        with pytest.raises(RuntimeError, match="cannot pickle this one") as info:
            pool.map(identity, [obj] * 3)
        assert isinstance(info.value, shoal.SerializationError)
        assert isinstance(info.value, pickle.PicklingError)
        assert pool.apply(identity, (5,)) == 5
    q = shoal.Queue()
    try:
        with pytest.raises(shoal.SerializationError) as info:
            q.put(obj)
        assert isinstance(info.value, RuntimeError) and q.empty()
        # the error itself travels (a worker's result error goes to the parent)
        again = pickle.loads(pickle.dumps(info.value))
        assert type(again) is type(info.value) and str(again) == str(info.value)
        assert again.type_name == info.value.type_name == "RefusesWithRuntimeError"
    finally:
        q.close()


# ---- standard-library objects in initargs travel with the process start ----------------


def init_worker_logging(q: Any, lock: Any, started: Any) -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(logging.INFO)
    with lock:
        started.value += 1


def log_task(x: int) -> int:
    logging.getLogger("drop-in").info("task %d", x)
    return x * x


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("kind", ["Pool", "Executor"])
def test_stdlib_queue_lock_and_value_in_initargs_log_through_a_queue_handler(
    ctx: Any, kind: str
) -> None:
    q, lock, started = ctx.Queue(), ctx.Lock(), ctx.Value("i", 0)
    collect = _Collect()
    listener = logging.handlers.QueueListener(q, collect)
    listener.start()
    try:
        initargs = (q, lock, started)
        if kind == "Pool":
            pool = shoal.Pool(2, init_worker_logging, initargs, context=ctx)
            assert pool.map(log_task, range(6), chunksize=1) == [x * x for x in range(6)]
            pool.close()
            pool.join()
        else:
            with shoal.Executor(2, ctx, init_worker_logging, initargs) as ex:
                assert list(ex.map(log_task, range(6))) == [x * x for x in range(6)]
    finally:
        listener.stop()  # after the workers exited: everything they logged is in
        q.close()
        q.join_thread()
    assert sorted(collect.messages) == [f"task {x}" for x in range(6)]
    assert started.value == 2  # each worker's initializer ran, under the shared lock


def test_initargs_that_cannot_travel_even_at_start_fail_as_the_stdlib(tmp_path: Any) -> None:
    # spawn pickles initargs in start(): a generator is refused there, as the stdlib does
    spawn = mp.get_context("spawn")
    with pytest.raises(TypeError, match=re.escape("cannot pickle 'generator' object")):
        shoal.Pool(1, init_worker_logging, ((x for x in ()), None, None), context=spawn)


# ---- a script without the __main__ guard fails at once, once --------------------------

UNGUARDED = """
import shoal

def square(x):
    return x * x

{start}
print("never printed", flush=True)
"""
STARTS = {
    "Pool": "with shoal.Pool(2, context=shoal.get_context({method!r})) as p:\n"
    "    print(p.map(square, range(4)))",
    "Executor": "with shoal.Executor(2, mp_context=shoal.get_context({method!r})) as e:\n"
    "    print(list(e.map(square, range(4))))",
}


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("kind", ["Pool", "Executor"])
def test_a_script_without_the_main_guard_fails_at_once_with_one_error(
    tmp_path: Any, method: str, kind: str
) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(start=STARTS[kind].format(method=method)))
    # the standard library (and shoal before #11) printed a traceback per worker
    # started, for ever, and never returned: the timeout is the test
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 1, done
    assert "never printed" not in done.stdout
    assert done.stderr.count("Traceback") == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("shoal.BrokenPoolError: the pool's workers cannot start"), last
    assert 'if __name__ == "__main__":' in last and str(script) in last


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_an_unguarded_script_that_fails_in_each_worker_stops_after_a_few(
    tmp_path: Any, method: str
) -> None:
    # the child's import fails before it reaches the pool (the context is set already):
    # each worker dies with status 1 before it starts, which would go on for ever.
    # (From 3.14 the forkserver imports the script first, where the context is not set
    # yet: it reaches the pool there, and leaves as a worker would.)
    script = tmp_path / "unguarded_start_method.py"
    script.write_text(
        "import multiprocessing, shoal\n"
        f"multiprocessing.set_start_method({method!r})\n"
        "def square(x):\n    return x * x\n"
        "with shoal.Pool(2) as p:\n    print(p.map(square, range(4)))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 1, done
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("shoal.BrokenPoolError: the pool's workers cannot start"), last
    assert 'if __name__ == "__main__":' in last
    assert done.stderr.count("RuntimeError: context has already been set") <= 4, done.stderr
