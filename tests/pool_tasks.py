"""Task functions for the pool tests (issue #5).

They live at module level of an importable module so that spawn and forkserver
workers can unpickle them by reference (``pool_tasks.square``); closures and lambdas
are tested separately, since those travel by value (cloudpickle).  Shared between
test files: add functions, never remove or change one another test relies on.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
import threading
import time
from typing import Any

import shoal
from shoal import worker_state

# ---- plain values -----------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def pid(_: Any = None) -> int:
    return os.getpid()


def pid_after(seconds: float) -> int:
    """The worker's pid, after a pause that keeps the other workers from taking over."""
    time.sleep(seconds)
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value if value is not None else seconds


def square_slowly_first(x: int) -> int:
    # the first item is slow: imap_unordered yields the others before it
    if x == 0:
        time.sleep(0.5)
    return x * x


# ---- errors -----------------------------------------------------------------------------


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * x


class NeedsTwoArguments(Exception):
    """Pickles, but does not unpickle: ``__init__`` wants two arguments, args has one."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(a)
        self.b = b


def raise_unpicklable_exception() -> None:
    raise NeedsTwoArguments("first", "second")


class HoldsALock(Exception):
    """Does not pickle at all: it carries a thread lock."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_exception_holding_a_lock() -> None:
    raise HoldsALock()


def return_a_lock() -> Any:
    return threading.Lock()


def _refuse() -> None:
    raise RuntimeError("this object does not unpickle")


class DoesNotUnpickle:
    """Pickles in the worker, raises when the parent unpickles it."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def return_unreadable() -> DoesNotUnpickle:
    return DoesNotUnpickle()


# ---- per-worker state -------------------------------------------------------------------


def set_state(key: str, value: Any) -> None:
    """An initializer: the value lives in the worker's worker_state()."""
    worker_state()[key] = (value, os.getpid())


def read_state(key: str) -> Any:
    return worker_state().get(key)


def count_calls(_: Any = None) -> tuple[int, int]:
    """How many tasks this worker has run, by its own count (state kept between tasks)."""
    state = worker_state()
    state["calls"] = state.get("calls", 0) + 1
    return os.getpid(), state["calls"]


def failing_initializer() -> None:
    raise RuntimeError("the initializer failed")


# ---- shoal objects as arguments and results ---------------------------------------------


def put_on(q: Any, value: Any) -> int:
    q.put(value)
    return os.getpid()


def bump(counter: Any, lock: Any, times: int) -> int:
    for _ in range(times):
        with lock:
            counter.value += 1
    return counter.value


def store(d: Any, key: str, value: Any) -> int:
    d[key] = value
    return len(d)


def make_queue_with(value: Any) -> Any:
    q = shoal.Queue()
    q.put(value)
    return q


def make_value(n: int) -> Any:
    return shoal.Value("q", n)


# ---- numpy ------------------------------------------------------------------------------


def double(a: Any) -> Any:
    return a * 2


def arange(n: int) -> Any:
    import numpy as np

    return np.arange(n, dtype=np.int64)


def announce_then_sleep(q: Any, seconds: float, value: Any = None) -> Any:
    """Say "started" on a queue (with the worker's pid), then take ``seconds``."""
    q.put(os.getpid())
    time.sleep(seconds)
    return value


def lock_at(x: int, at: int = 1) -> Any:
    """``x``, except a result that does not pickle at ``at``."""
    return threading.Lock() if x == at else x


def state_and_pid(key: str) -> tuple[Any, int]:
    return worker_state().get(key), os.getpid()


def fail_when_told(event: Any) -> None:
    """An initializer that fails once ``event`` is set."""
    event.wait(30)
    raise RuntimeError("told to fail")


class BreaksThePoolWhilePickled:
    """A callable whose pickling sets ``event`` and then takes a while: the pool's
    initializer fails in between the caller's checks and its putting the task."""

    def __init__(self, event: Any) -> None:
        self.event = event

    def __call__(self, x: Any) -> Any:
        return x

    def __reduce__(self) -> Any:
        self.event.set()
        time.sleep(0.5)
        return (functools.partial, (identity,))


def wait_for(event: Any, value: Any = None) -> Any:
    """Return ``value`` once ``event`` is set: a task that ends when the test says."""
    if not event.wait(30):
        raise TimeoutError("the test never set the event")
    return value


def make_bytes(n: int) -> bytes:
    """``n`` bytes made in the worker: a result as big as the test wants."""
    return bytes(n)


class ExitsWhenUnpickled:
    """Pickles in the worker; unpickling it raises SystemExit (not an Exception)."""

    def __reduce__(self) -> Any:
        return (sys.exit, ("unpickled",))


def return_exiting() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


def count_run(i: int, *ballast: Any) -> int:
    """Count one run of task ``i`` in the shared array an initializer stored as "runs"
    (set_state): how many times each task really ran.  ``ballast`` makes a record as
    big as the test wants."""
    runs, _ = worker_state()["runs"]
    runs.add(i, 1)
    return i


def announce_then_wait(q: Any, event: Any) -> int:
    """Say "started" on a queue (with the worker's pid), then wait for ``event``: a
    task that holds its worker until the test lets it go."""
    q.put(os.getpid())
    if not event.wait(30):
        raise TimeoutError("the test never set the event")
    return os.getpid()


def allocate_over_rlimit_as(nbytes: int, margin: int = 256 << 20) -> int:
    """Cap this worker's address space (RLIMIT_AS) a little above what it uses now,
    then allocate ``nbytes``: MemoryError, or worse, as a machine short of memory
    gives.  The cap stays for whatever the worker runs next."""
    import resource

    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + margin, hard))
    return len(bytearray(nbytes))


def fail_with_message_of(n: int) -> None:
    """Raise an exception whose message is ``n`` characters long."""
    raise ValueError("x" * n)


class Announces:
    """Appends this process's pid to ``path`` when it is collected (in whichever process
    holds a copy): shows when a worker let go of a task's argument or callable."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")

    def pid(self, _: Any = None) -> int:
        return os.getpid()


def pid_of_call(x: Any) -> int:
    return os.getpid()


class ExitsWhenPickled:
    """Raises SystemExit while the worker pickles it (a result)."""

    def __reduce__(self) -> Any:
        raise SystemExit("pickled")


def return_exiting_at_pickle() -> ExitsWhenPickled:
    return ExitsWhenPickled()


class ExitsWhenUnpickledInTheWorker:
    """An argument that pickles in the parent and raises SystemExit in the worker."""

    def __reduce__(self) -> Any:
        return (sys.exit, ("argument unpickled",))


class DoesNotPickle:
    """An argument whose pickling fails with PicklingError (CPython's ErrorAtPickle)."""

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("this object does not pickle")


# ---- cancelling a running task (#14) ----------------------------------------------------


def count_then_sleep(i: int, seconds: float = 60.0) -> int:
    """Count a run of ``i`` (as count_run), then take ``seconds``: a task to cancel."""
    runs, _ = worker_state()["runs"]
    runs.add(i, 1)
    time.sleep(seconds)
    return i


def guarded_then_sleep(q: Any, flags: Any, in_guard: float, after: float) -> str:
    """Say "started" (the pid), then take ``in_guard`` seconds inside
    ``shoal.uninterruptible()`` and set ``flags[0]`` as its last step; set ``flags[1]``
    after the block, then take ``after`` seconds."""
    with shoal.uninterruptible():
        q.put(os.getpid())
        time.sleep(in_guard)
        flags[0] = 1
    flags[1] = 1
    time.sleep(after)
    return "done"


def hold_lock_then_sleep(lock: Any, q: Any, seconds: float = 60.0) -> None:
    """Take ``lock``, say so (the pid), and keep it ``seconds``."""
    lock.acquire()
    q.put(os.getpid())
    time.sleep(seconds)


def add_under_lock(arr: Any, index: int, times: int) -> int:
    """``arr[index] += 1``, ``times`` times, each under the array's lock."""
    for _ in range(times):
        with arr.get_lock():
            arr[index] += 1
    return os.getpid()


def append_to(items: Any, value: Any) -> int:
    items.append(value)
    return os.getpid()


def read_shared(arr: Any) -> tuple[float, bool, int]:
    """(sum, writeable, pid) of a shared array's current view, in the worker."""
    view = arr.view()
    return float(view.sum()), bool(view.flags.writeable), os.getpid()


def write_shared(arr: Any, index: int, value: float) -> int:
    arr[index] = value
    return os.getpid()


def add_shared(arr: Any, index: int, times: int) -> int:
    for _ in range(times):
        arr.add(index, 1)
    return os.getpid()


class Parcel:
    """An argument a test can watch (a weak reference) for being let go."""
