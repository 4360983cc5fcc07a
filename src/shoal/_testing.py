"""``shoal.testing``: helpers for testing programs that use shoal (start methods, a leak
check, faults: a lock owner or a pool worker killed).

What shoal's own test suite uses, for the tests of programs built on shoal::

    from shoal.testing import START_METHODS, abandon, no_leaks

    @pytest.mark.parametrize("method", START_METHODS)
    def test_workers_share_a_dict(method):
        with no_leaks():                      # every segment made inside is gone after
            run_my_pipeline(shoal.get_context(method))

    def test_a_dead_owner_is_survived():
        lock = shoal.Lock()
        abandon(lock)                         # held by a process SIGKILLed holding it
        with pytest.warns(shoal.OwnerDiedWarning):
            assert lock.acquire(timeout=5)

    def test_a_dead_worker_fails_only_its_task():
        with shoal.Pool(2) as pool:
            task = pool.apply_async(work_that_reports_its_pid, (pids,))
            kill_worker(pool, pids.get(timeout=10))   # SIGKILLed mid-task
            with pytest.raises(shoal.WorkerDiedError):
                task.get(10)

With pytest, ``pytest_plugins = ["shoal.testing"]`` in a ``conftest.py`` also gives the
fixtures ``shoal_start_method`` (a test runs once per start method) and
``shoal_no_leaks`` (the leak check around a test).

The leak check counts only segments this process or its descendants made (or whose
maker is gone): other programs' segments on the same machine are not the test's.  A
process SIGKILLed by the test leaves its ledger, which the next shoal process's sweep
gives back: that is no leak either (see ``shoal._handle``, "The ledger").
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import struct
import time
from collections.abc import Iterator
from typing import Any

from . import _core, _memory
from ._sync import Event

__all__: list[str] = [
    "START_METHODS",
    "SegmentLeakError",
    "abandon",
    "kill_worker",
    "leaked_segments",
    "no_leaks",
    "segments",
    "worker_pids",
]

#: The start methods this platform has, in the order shoal's tests run them.
START_METHODS: list[str] = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]

_SHM = "/dev/shm"


class SegmentLeakError(AssertionError):
    """Segments made inside a :func:`no_leaks` block outlived it.

    Attributes:
        names: the leaked segments' names (``/shoal-…``).
    """

    def __init__(self, names: set[str]) -> None:
        self.names = sorted(names)
        super().__init__(f"shared-memory segments leaked: {self.names}")


def segments() -> set[str]:
    """The names of the shoal segments in ``/dev/shm`` now (``/shoal-…``; liveness files,
    ``shoal-live-…``, are not segments).  Empty where there is no ``/dev/shm``."""
    try:
        names = os.listdir(_SHM)
    except OSError:
        return set()
    return {
        "/" + n
        for n in names
        if n.startswith(_memory.NAME_PREFIX) and not n.startswith(_memory.LIVENESS_PREFIX)
    }


def _header(name: str) -> tuple[Any, ...] | None:
    """The header's fixed fields of segment ``name`` (magic, version, header size,
    total, kind, flags, creator token, …), or None if it cannot be read."""
    opened = _memory._open_own(name)
    if opened is None:
        return None
    fd, _ = opened
    try:
        prefix = _memory._read_prefix(fd)
    finally:
        os.close(fd)
    return None if prefix is None else _memory._HEADER.unpack_from(prefix)


def _holders(name: str) -> list[int] | None:
    opened = _memory._open_own(name)
    if opened is None:
        return None
    fd, _ = opened
    try:
        table = _memory._pread_exact(fd, 8 * _memory._HOLDER_CAPACITY, _memory._HOLDERS_OFFSET)
    finally:
        os.close(fd)
    return None if table is None else list(struct.unpack(f"<{_memory._HOLDER_CAPACITY}Q", table))


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _made_here(name: str) -> bool:
    """Whether this process or one of its descendants made ``name``, or its maker is
    gone (a segment another program on the machine made is not this test's, nor is
    another user's file)."""
    try:
        if os.lstat(_SHM + name).st_uid != os.geteuid():
            return False
    except OSError:
        return False  # gone meanwhile
    header = _header(name)
    if header is None:
        return True  # this user's, and not even a whole header: a leak
    pid = _core.token_pid(header[6]) if header[6] else 0
    for _ in range(64):
        if not pid or pid == os.getpid():
            return True
        parent = _parent_pid(pid)
        if parent is None:
            return True  # its maker is gone
        pid = parent
    return False


def _held_by_the_dead(name: str) -> bool:
    """Whether every holder of ``name`` died, which the next sweep removes: the ledger
    of a process that died (the sweep gives back what it records), or what such a
    process held alone, a pool's rings among them (its workers record themselves in
    none, see ``shoal._handle.keep_for_children``)."""
    header = _header(name)
    kinds = (_memory.KIND_LEDGER, _memory.KIND_DATA, _memory.KIND_ARENA)
    if header is None or header[0] != _memory.MAGIC or header[4] not in kinds:
        return False
    holders = _holders(name)
    return holders is not None and not any(map(_memory._holder_alive, holders))


def leaked_segments(before: set[str]) -> set[str]:
    """The segments that exist now and not in ``before`` (a :func:`segments` taken
    earlier) that this process does not hold, that this process or a descendant made,
    and that no sweep will reclaim: what a test leaked."""
    _memory.release_spares()  # (before the listing: they would be in it, not held)
    new = segments() - before - _memory.attached_names()
    return {name for name in new if _made_here(name) and not _held_by_the_dead(name)}


@contextlib.contextmanager
def no_leaks(timeout: float = 5.0) -> Iterator[None]:
    """Check that every shoal segment made inside the block is gone after it.

    Children that are still exiting get ``timeout`` seconds to let go of theirs.

    Raises:
        SegmentLeakError: segments made inside the block outlived it (on leaving a
            block that raised nothing).
    """
    before = segments()
    yield
    deadline = time.monotonic() + timeout
    while True:
        left = leaked_segments(before)
        if not left:
            return
        if time.monotonic() > deadline:
            raise SegmentLeakError(left)
        time.sleep(0.02)


def _hold_then_wait(lock: Any, held: Any) -> None:
    if not lock.acquire(timeout=30):
        os._exit(3)
    held.set()
    while True:
        time.sleep(60)


def abandon(lock: Any, timeout: float = 30.0) -> None:
    """Leave ``lock`` held by a process that was SIGKILLed while holding it.

    ``lock``: a shoal ``Lock``, ``RLock``, ``Semaphore`` or ``BoundedSemaphore`` (one of
    its units is taken).  A child process (forked where fork is available, else
    spawned) acquires it, and is killed with SIGKILL once it holds it.  The next
    acquire recovers the lock from the dead owner, with ``OwnerDiedWarning`` for a
    lock.

    Raises:
        TimeoutError: the child could not take the lock within ``timeout``.
    """
    method = "fork" if "fork" in START_METHODS else START_METHODS[0]
    held = Event()
    child = multiprocessing.get_context(method).Process(
        target=_hold_then_wait, args=(lock, held), daemon=True
    )
    child.start()
    try:
        if not held.wait(timeout):
            raise TimeoutError(f"the child could not take {lock!r} within {timeout} s")
    finally:
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
        child.join(timeout)
        held.close()


def _engine_of(pool: Any) -> Any:
    engine = getattr(pool, "_engine", None)
    if not callable(getattr(engine, "worker_pids", None)):
        raise TypeError(f"want a shoal Pool or Executor, not {type(pool).__name__}")
    return engine


def worker_pids(pool: Any, started: bool = True) -> list[int]:
    """The pids of the workers of a shoal ``Pool`` or ``Executor``, in the order of their
    slots: those that have started (waiting for a task or running one), or with
    ``started=False`` every worker process, a replacement still starting included.  A
    worker killed a moment ago may still be listed until the pool finds it dead (at
    once, through its pidfd); none once the pool is terminated or joined.

    Raises:
        TypeError: ``pool`` is not a shoal Pool or Executor.
    """
    return list(_engine_of(pool).worker_pids(started_only=started))


def kill_worker(
    pool: Any, pid: int | None = None, *, sig: int = signal.SIGKILL, timeout: float = 30.0
) -> int:
    """Kill a worker of a shoal ``Pool`` or ``Executor`` as a crash would: signal ``sig``
    (SIGKILL) to the worker ``pid``, or, without one, to its first started worker
    (waiting up to ``timeout`` seconds for one to start).  Returns the pid killed.

    The pool notices at once: the task that worker was running fails with
    :class:`~shoal.WorkerDiedError` (every other task carries on) and a new worker
    takes its place.  A worker that was waiting for a task fails nothing.

    Raises:
        TypeError: ``pool`` is not a shoal Pool or Executor.
        ValueError: ``pid`` is not one of its workers, or it has none (terminated).
        TimeoutError: no worker started within ``timeout``.
    """
    engine = _engine_of(pool)
    everyone = engine.worker_pids()
    if not everyone:
        raise ValueError(f"{pool!r} has no worker to kill (terminated, or joined)")
    if pid is None:
        deadline = time.monotonic() + timeout
        while not (ready := engine.worker_pids(started_only=True)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no worker of {pool!r} started within {timeout} s")
            time.sleep(0.005)
        pid = ready[0]
    elif pid not in everyone:
        raise ValueError(f"{pid} is not a worker of {pool!r} (its workers: {everyone})")
    os.kill(pid, sig)
    return pid


# ---- pytest: pytest_plugins = ["shoal.testing"] -----------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the fixtures need pytest, the rest does not
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    __all__ = sorted([*__all__, "shoal_no_leaks", "shoal_start_method"])

    @pytest.fixture(params=START_METHODS)
    def shoal_start_method(request: Any) -> str:
        """The name of a start method; a test that takes it runs once per method."""
        return str(request.param)

    @pytest.fixture
    def shoal_no_leaks() -> Iterator[None]:
        """The :func:`no_leaks` check around the test."""
        with no_leaks():
            yield
