"""Synchronization primitives in shared memory: Lock, RLock, Semaphore,
BoundedSemaphore, Event, Condition, Barrier.

Each has the signatures, defaults and errors of its ``multiprocessing`` namesake and,
unlike it, pickles as a small handle at any time: into a ``Pool`` task, inside
another object, to a process started later, under fork, spawn and forkserver.

The hot calls (``acquire``, ``release``, ``wait``, ``set``) are the C methods of
``shoal._core``'s types, which these classes extend; an uncontended acquire is one
compare-and-swap with no system call.

Dead owners: a ``Lock`` or ``RLock`` whose holder died (SIGKILL included) is
inherited by the next ``acquire``, which returns True, issues
:class:`~shoal.OwnerDiedWarning` and sets ``owner_died`` until release.  A waiter
notices within about 50 ms of the death.  A ``Barrier`` whose waiting party died
breaks (:class:`~shoal.BarrierPartyDiedError`) instead of hanging.
"""

from __future__ import annotations

import multiprocessing.context
import pickle
import time
from collections.abc import Callable
from threading import BrokenBarrierError
from typing import Any, ClassVar, NoReturn, TypeVar

from . import _aio, _core
from ._errors import BarrierPartyDiedError, ClosedError, NotHeldError, ShoalError
from ._handle import SharedObject
from ._snapshot import snapshot

__all__ = [
    "Barrier",
    "BarrierStatistics",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "EventStatistics",
    "Lock",
    "LockStatistics",
    "RLock",
    "Semaphore",
    "SemaphoreStatistics",
]
# what the shoal.synchronize shim exports: multiprocessing.synchronize's primitives
SYNCHRONIZE_ALL = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
]

T = TypeVar("T")
_SEM_VALUE_MAX = 2**32 - 1


def _pid_of(token: int) -> int | None:
    # bit 63 marks an owner word mid-handover (native/include/shoal_core.h)
    return _core.token_pid(token & ~(1 << 63)) if token else None


def _closed_error(obj: object) -> ClosedError:
    # the same words as the C types' check_bound()
    return ClosedError(f"this {type(obj).__name__} is closed and cannot be used any more")


@snapshot
class LockStatistics:
    """A snapshot of a :class:`Lock` or :class:`RLock` (from ``statistics()``).

    Attributes:
        locked: whether some process holds it.
        owner_pid: pid of the holder, or None.
        recursion_depth: how many times the holder acquired it (RLock; 1 for Lock).
        waiters: processes or threads blocked in ``acquire``.
        owner_died: the holder got it from an owner that died holding it.
        last_dead_owner_pid: pid of the last owner found dead, or None.
    """

    locked: bool
    owner_pid: int | None
    recursion_depth: int
    waiters: int
    owner_died: bool
    last_dead_owner_pid: int | None


class _AwaitableAcquire:
    """``acquire_async`` and ``async with`` for the lock and semaphore types, whose
    ``acquire(False)`` takes it or says no; ``_AIO_WAIT`` is how the hub waits for
    them (shoal._aio.wait's options)."""

    _AIO_WAIT: ClassVar[dict[str, Any]] = {}

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """Awaitable :meth:`acquire`: take the lock (or one unit of a semaphore)
        without blocking the event loop.

        Returns True once taken, False if ``timeout`` seconds ran out.  Cancelling the
        awaiting task leaves it as it was (not taken, no waiter counted).  An RLock
        belongs to a thread, so tasks of one event loop share its ownership (as they
        share a ``threading.RLock``): use a Lock between tasks.
        """
        acquire = self.acquire  # type: ignore[attr-defined]
        if acquire(False):
            return True

        def attempt() -> Any:
            return True if acquire(False) else _aio.BLOCKED

        try:
            return await _aio.wait(self, 0, attempt, timeout, **self._AIO_WAIT)
        except TimeoutError:
            return False

    async def __aenter__(self) -> bool:
        """``async with``: :meth:`acquire_async`."""
        return await self.acquire_async()

    async def __aexit__(self, *exc_info: object) -> None:
        """Release (one unit) on leaving ``async with``."""
        self.release()  # type: ignore[attr-defined]

    def _unbind_payload(self) -> None:
        _aio.forget(self)  # awaiting coroutines: unregistered while the memory is there
        self._unbind()  # type: ignore[attr-defined]


class Lock(_AwaitableAcquire, _core.Mutex, SharedObject):
    """A non-recursive lock in shared memory, like :class:`multiprocessing.Lock`.

    ``acquire(block=True, timeout=None) -> bool`` blocks until the lock is free
    (``timeout`` seconds at most; ``block=False`` never waits and ignores the
    timeout, as in multiprocessing) and returns whether it got the lock.  A blocked
    ``acquire`` releases the GIL and is woken by Ctrl-C (KeyboardInterrupt).

    If the holder died (even by SIGKILL), ``acquire`` takes the lock from it,
    returns True and issues :class:`~shoal.OwnerDiedWarning`; ``owner_died`` is True
    until ``release()``.  If a warnings filter turns that warning into an error, the
    lock is released again and the next acquirer is told instead.

    ``release()`` may be called by any process (multiprocessing allows it too);
    releasing an unlocked Lock raises :class:`~shoal.NotHeldError` (a ValueError
    and a RuntimeError).  Works as a context manager.  Pickles as a handle.
    """

    _PAYLOAD_SIZE = _core.LOCK_SIZE  # the mutex, then its waiters' tokens
    _RECURSIVE = False
    _AIO_WAIT: ClassVar[dict[str, Any]] = {"slice_s": _aio._LOCK_SLICE_S}

    def __init__(self) -> None:
        self._report = True
        self._create()

    @classmethod
    def _internal(cls: type[T]) -> T:
        """A lock for shoal's own structures: dead owners are recovered silently."""
        lock = cls.__new__(cls)
        lock._report = False  # type: ignore[attr-defined]
        lock._create()  # type: ignore[attr-defined]
        return lock

    def _bind_payload(self) -> None:
        self._bind(self._mapping, self._payload_offset, self._RECURSIVE, self._report, True)

    def _handle_state(self) -> Any:
        return self._report

    def _restore_state(self, state: Any) -> None:
        self._report = bool(state)

    def statistics(self) -> LockStatistics:
        """Return a :class:`LockStatistics` snapshot (owner pid, waiters, dead owner)."""
        owner = self._owner_token
        return LockStatistics(
            locked=bool(owner),
            owner_pid=_pid_of(owner),
            recursion_depth=self._depth if self._RECURSIVE else int(bool(owner)),
            waiters=self._waiters,
            owner_died=self.owner_died,
            last_dead_owner_pid=_pid_of(self._dead_owner_token),
        )

    def __repr__(self) -> str:
        name = f"shoal.{type(self).__name__}"
        if not self._bound:
            return f"<{name} closed>"
        st = self.statistics()
        if not st.locked:
            state = "unlocked"
        else:
            state = f"locked by pid {st.owner_pid}"
            if self._RECURSIVE:
                state += f" (depth {st.recursion_depth})"
        if st.waiters:
            state += f", {st.waiters} waiting"
        return f"<{name} {state}>"


class RLock(Lock):
    """A recursive lock in shared memory, like :class:`multiprocessing.RLock`.

    The holder (a thread of a process) may acquire it again; it is free once
    released as many times.  ``release()`` by a thread that does not hold it raises
    :class:`~shoal.NotHeldError`.  Dead owners, timeouts, Ctrl-C and pickling work
    as for :class:`Lock`.
    """

    _RECURSIVE = True


@snapshot
class SemaphoreStatistics:
    """A snapshot of a :class:`Semaphore` (from ``statistics()``).

    Attributes:
        value: the current count.
        max_value: the bound of a BoundedSemaphore, else None.
        waiters: processes or threads blocked in ``acquire``.
    """

    value: int
    max_value: int | None
    waiters: int


class Semaphore(_AwaitableAcquire, _core.Semaphore, SharedObject):
    """A counting semaphore in shared memory, like :class:`multiprocessing.Semaphore`.

    Args:
        value: the initial count (>= 0).

    ``acquire(block=True, timeout=None) -> bool`` takes one unit, waiting for one if
    needed; ``release(n=1)`` gives units back and wakes waiters; ``get_value()``
    returns the count.  Context manager; pickles as a handle.
    """

    _PAYLOAD_SIZE = _core.SEMAPHORE_SIZE
    _BOUNDED = False
    _AIO_WAIT: ClassVar[dict[str, Any]] = {"fixed": True}

    def __init__(self, value: int = 1) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"semaphore value must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        if value > _SEM_VALUE_MAX:
            raise ValueError(f"semaphore initial value must be <= {_SEM_VALUE_MAX}")
        self._create()
        self._init(value, value, self._BOUNDED)

    def _bind_payload(self) -> None:
        self._bind(self._mapping, self._payload_offset)

    def statistics(self) -> SemaphoreStatistics:
        """Return a :class:`SemaphoreStatistics` snapshot."""
        return SemaphoreStatistics(self.get_value(), self._max_value, self._waiters)

    def __repr__(self) -> str:
        name = f"shoal.{type(self).__name__}"
        if not self._bound:
            return f"<{name} closed>"
        st = self.statistics()
        bound = f"/{st.max_value}" if st.max_value is not None else ""
        waiting = f", {st.waiters} waiting" if st.waiters else ""
        return f"<{name} value={st.value}{bound}{waiting}>"


class BoundedSemaphore(Semaphore):
    """A semaphore that refuses to be released above its initial value.

    Like :class:`multiprocessing.BoundedSemaphore`: releasing past the initial value
    raises :class:`~shoal.NotHeldError` (a ValueError) and changes nothing.
    """

    _BOUNDED = True


@snapshot
class EventStatistics:
    """A snapshot of an :class:`Event`: whether it is set, and how many wait."""

    is_set: bool
    waiters: int


class Event(_core.Event, SharedObject):
    """An event flag in shared memory, like :class:`multiprocessing.Event`.

    ``set()`` wakes every waiter, ``clear()`` resets, ``is_set()`` reads, and
    ``wait(timeout=None) -> bool`` returns True once the flag is set, False if the
    timeout ran out.  Pickles as a handle.
    """

    _PAYLOAD_SIZE = _core.EVENT_SIZE

    def __init__(self) -> None:
        self._create()

    def _bind_payload(self) -> None:
        self._bind(self._mapping, self._payload_offset)

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Awaitable :meth:`wait`: True once the flag is set, False if ``timeout`` ran out.

        ``set()`` in any process wakes every awaiting task (and blocked thread).
        """
        if self.is_set():
            return True

        def attempt() -> Any:
            return True if self.is_set() else _aio.BLOCKED

        try:
            return await _aio.wait(self, 0, attempt, timeout, broadcast=True, fixed=True)
        except TimeoutError:
            return False

    def _unbind_payload(self) -> None:
        _aio.forget(self)  # awaiting coroutines: unregistered while the memory is there
        self._unbind()

    def statistics(self) -> EventStatistics:
        """Return an :class:`EventStatistics` snapshot."""
        return EventStatistics(self.is_set(), self._waiters)

    def __repr__(self) -> str:
        # the standard library's shape (3.11+: "<Event at 0x7f... set>"): programs print
        # their events, and their output should not change; statistics() has the rest
        status = "unset"
        if not self._bound:
            status = "closed"
        elif self.statistics().is_set:
            status = "set"
        return f"<{type(self).__qualname__} at {id(self):#x} {status}>"


class Condition(_core.Cond, SharedObject):
    """A condition variable in shared memory, like :class:`multiprocessing.Condition`.

    Args:
        lock: a shoal :class:`Lock` or :class:`RLock` to use; a new :class:`RLock`
            by default (as in multiprocessing).

    ``acquire``/``release`` and the context manager act on the lock.
    ``wait(timeout=None)`` releases it, waits for a notify and takes it back;
    ``notify(n=1)`` wakes at most ``n`` waiters and ``notify_all()`` every one;
    both need the lock held, like ``wait``, else :class:`~shoal.NotHeldError` (a
    RuntimeError).  Pickles as a handle, together with its lock.
    """

    _PAYLOAD_SIZE = _core.COND_SIZE

    def __init__(self, lock: Lock | None = None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, Lock):
            raise TypeError(
                "Condition needs a shoal Lock or RLock (a lock living in shared memory), "
                f"not {type(lock).__module__}.{type(lock).__qualname__}"
            )
        self._set_lock(lock)
        self._create()

    def _set_lock(self, lock: Lock) -> None:
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release

    def _bind_payload(self) -> None:
        self._bind(self._mapping, self._payload_offset)

    def _handle_state(self) -> Any:
        return self._lock

    def _restore_state(self, state: Any) -> None:
        self._set_lock(state)

    def __enter__(self) -> bool:
        self._check_open()
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        # no open check: ``with cond: cond.close()`` must still release the lock
        self._lock.release()

    def _check_open(self) -> None:
        if not self._bound:
            raise _closed_error(self)

    def _raise_closed(self, *args: object, **kwargs: object) -> NoReturn:
        raise _closed_error(self)

    def _check_owned(self, what: str) -> None:
        # closed first: a closed Condition is closed whoever holds its lock
        self._check_open()
        if not self._lock._is_owned():
            raise NotHeldError(f"cannot {what} on un-acquired lock")

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait until notified or ``timeout`` seconds pass, relock.

        Returns:
            True if notified, False if the timeout ran out.

        Raises:
            NotHeldError: the caller does not hold the lock.
        """
        self._check_owned("wait")
        self._enter()
        depth = self._lock._release_save()
        notified = False
        try:
            notified = self._wait(timeout)
        finally:
            self._lock._acquire_restore(depth)
            if not notified:
                notified = self._leave()
        return notified

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Awaitable :meth:`wait`: release the lock, await a notify, take the lock back.

        Returns True if notified, False if ``timeout`` ran out.  The lock is held again
        when it returns, also when the awaiting task is cancelled (as
        ``asyncio.Condition`` does); a notify such a task had already been granted is
        not lost to the others only if the caller notifies again (as with threads).

        Raises:
            NotHeldError: the caller does not hold the lock.
        """
        import asyncio

        self._check_owned("wait")
        handle = self._aio_enter()
        lock = self._lock
        depth = lock._release_save()
        notified = False

        def attempt() -> Any:
            return True if self._aio_collect(handle) else _aio.BLOCKED

        try:
            notified = await _aio.wait(self, 0, attempt, timeout, broadcast=True)
        except TimeoutError:
            pass
        finally:
            cancelled = None
            while True:  # the lock comes back whatever happened (cancellation included)
                try:
                    await lock.acquire_async()
                    break
                except asyncio.CancelledError as exc:
                    cancelled = exc
            if lock._RECURSIVE and depth > 1:
                lock._acquire_restore(depth)  # held by this thread: sets the depth back
            if not notified:
                notified = self._aio_leave(handle)
            if cancelled is not None:
                raise cancelled
        return notified

    async def wait_for_async(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Awaitable :meth:`wait_for`: await notifies until ``predicate()`` is true."""
        loop_time = time.monotonic
        deadline = None if timeout is None else loop_time() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - loop_time()
            if left is not None and left <= 0:
                break
            await self.wait_async(left)
            result = predicate()
        return result

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true (or ``timeout`` runs out); return its value."""
        self._check_open()
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake at most ``n`` waiters.  The caller must hold the lock."""
        self._check_owned("notify")
        if n < 0:
            raise ValueError("notify() needs n >= 0")
        if n:
            # more than could ever wait is "all" (and must not overflow a C long long)
            self._notify(min(n, 2**32))

    def notify_all(self) -> None:
        """Wake every waiter.  The caller must hold the lock."""
        self._check_owned("notify")
        self._notify(-1)

    notifyAll = notify_all

    def close(self) -> None:
        """Release this handle (the lock is left alone: it may have other users).

        Afterwards every method, ``acquire`` and ``release`` included, raises
        :class:`~shoal.ClosedError`, except the ``__exit__`` of a ``with`` block that
        was already entered.
        """
        SharedObject.close(self)
        # acquire/release are the lock's bound methods (no Python frame on the hot
        # path); a closed Condition must not keep handing them out
        self.acquire = self.release = self._raise_closed

    def __repr__(self) -> str:
        if not self._bound:
            return "<shoal.Condition closed>"
        return f"<shoal.Condition({self._lock!r}), {self._waiting} waiting>"


@snapshot
class BarrierStatistics:
    """A snapshot of a :class:`Barrier`.

    Attributes:
        parties: how many must arrive.
        n_waiting: how many are waiting now.
        broken: whether the barrier is broken.
        waiting_pids: pids of the processes waiting.
    """

    parties: int
    n_waiting: int
    broken: bool
    waiting_pids: tuple[int, ...]


# Barrier state values (stored + 2 so they fit an unsigned word)
_FILLING, _DRAINING, _RESETTING, _BROKEN = 0, 1, -1, -2
_DEATH_CHECK_S = 0.1


class Barrier(SharedObject):
    """A barrier in shared memory, like :class:`multiprocessing.Barrier`.

    Args:
        parties: how many processes (or threads) must call ``wait()``.
        action: called by one of them when all have arrived, before any leaves;
            it must pickle (by reference) to pass the barrier to another process.
        timeout: default for ``wait()``.

    ``wait(timeout=None)`` returns an index in ``range(parties)``, distinct for each
    party; ``reset()``, ``abort()``, ``parties``, ``n_waiting`` and ``broken`` are
    the standard library's.  A timeout breaks the barrier and raises
    :class:`threading.BrokenBarrierError`.  If a waiting party dies, the others get
    :class:`~shoal.BarrierPartyDiedError` (a BrokenBarrierError) instead of hanging.
    """

    # the state, then one token slot per party inside wait(): the filled slots are the
    # count, so a party killed anywhere in wait() is either recorded (and its death
    # found) or not there at all -- never counted without a name
    _buf: Any = None  # the segment's buffer while bound; None once closed

    def __init__(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> None:
        if not isinstance(parties, int) or isinstance(parties, bool):
            raise TypeError(f"parties must be an int, not {type(parties).__name__}")
        if parties < 1:
            raise ValueError("parties must be >= 1")
        if action is not None and not callable(action):
            raise TypeError("action must be callable")
        self._parties = parties
        self._action = action
        self._timeout = timeout
        self._cond = Condition(Lock._internal())
        self._PAYLOAD_SIZE = 8 + 8 * parties
        self._create()
        self._set(0, _FILLING)

    def _bind_payload(self) -> None:
        self._buf = self._segment.buffer

    def _unbind_payload(self) -> None:
        # the condition and its lock are this handle's own (a fresh pair per unpickle)
        lock = self._cond._lock
        self._cond.close()
        lock.close()
        self._buf = None

    def _handle_state(self) -> Any:
        try:
            action: Any = pickle.dumps(self._action)
        except Exception:  # (inheritance-only objects raise RuntimeError)
            if multiprocessing.context.get_spawning_popen() is None:
                raise
            # a Process argument: an action that may only be inherited (holding a
            # multiprocessing.Lock, say) goes with the process start, pickled by the
            # start's own pickler, as the standard library's Barrier's does (#11).
            # (Not tried here first: that pickler's file descriptors are the start's.)
            action = (self._action,)
        return (self._parties, action, self._timeout, self._cond)

    def _restore_state(self, state: Any) -> None:
        parties, action, self._timeout, self._cond = state
        self._parties = parties
        self._PAYLOAD_SIZE = 8 + 8 * parties
        self._action = action[0] if isinstance(action, tuple) else pickle.loads(action)

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            return super().__reduce__()
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise pickle.PicklingError(
                f"cannot send this Barrier to another process: its action {self._action!r} "
                f"does not pickle ({exc})"
            ) from exc

    # shared fields, read and written with the condition's lock held.  A closed
    # handle's block may already belong to another object: never touch it.
    def _get(self, index: int) -> int:
        if self._buf is None:
            raise _closed_error(self)
        value = _core.load64(self._buf, self._payload_offset + 8 * index)
        return value - 2 if index == 0 else value

    def _set(self, index: int, value: int) -> None:
        if self._buf is None:
            raise _closed_error(self)
        _core.store64(
            self._buf, self._payload_offset + 8 * index, value + 2 if index == 0 else value
        )

    @property
    def _state(self) -> int:
        return self._get(0)

    @_state.setter
    def _state(self, value: int) -> None:
        self._set(0, value)

    @property
    def _count(self) -> int:
        return sum(1 for i in self._slots() if self._get(i))

    def _slots(self) -> range:
        return range(1, 1 + self._parties)

    def _register(self, token: int) -> None:
        for i in self._slots():
            if self._get(i) == 0:
                self._set(i, token)
                return
        raise ShoalError("Barrier has more waiters than parties; its state is corrupt")

    def _unregister(self, token: int) -> None:
        for i in self._slots():
            if self._get(i) == token:
                self._set(i, 0)
                return

    def _find_dead_party(self) -> int | None:
        """Forget waiting parties that died; return the pid of one, or None."""
        dead = None
        for i in self._slots():
            token = self._get(i)
            if token and not _core.token_alive(token):
                self._set(i, 0)  # it will never leave by itself
                dead = _core.token_pid(token)
        return dead

    def wait(self, timeout: float | None = None) -> int:
        """Wait until all parties have called ``wait``; return this party's index.

        Raises:
            threading.BrokenBarrierError: the barrier was broken, reset or aborted,
                or the timeout ran out (which breaks it for everyone).
            BarrierPartyDiedError: a waiting party died (the barrier is broken).
        """
        if timeout is None:
            timeout = self._timeout
        token = _core.self_token()
        with self._cond:
            self._enter()
            index = self._count
            self._register(token)
            try:
                if index + 1 == self._parties:
                    self._release()
                else:
                    self._wait(timeout)
                return index
            finally:
                self._unregister(token)
                self._exit()

    async def wait_async(self, timeout: float | None = None) -> int:
        """Awaitable :meth:`wait`: the same index, errors and dead-party detection.

        Raises:
            threading.BrokenBarrierError: broken, reset, aborted, or timed out.
            BarrierPartyDiedError: a waiting party died (the barrier is broken).
        """
        if timeout is None:
            timeout = self._timeout
        token = _core.self_token()
        lock = self._cond._lock
        await lock.acquire_async()
        try:
            await self._enter_async()
            index = self._count
            self._register(token)
            try:
                if index + 1 == self._parties:
                    self._release()
                else:
                    await self._wait_async(timeout)
                return index
            finally:
                self._unregister(token)
                self._exit()
        finally:
            lock.release()

    async def _enter_async(self) -> None:
        while self._state in (_RESETTING, _DRAINING):
            await self._cond.wait_async(_DEATH_CHECK_S)
            self._find_dead_party()
            if self._count == 0 and self._state in (_RESETTING, _DRAINING):
                self._state = _FILLING
        if self._state < 0:
            raise BrokenBarrierError
        if self._state != _FILLING:
            raise ShoalError(f"Barrier in unknown state {self._state}")

    async def _wait_async(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        while self._state == _FILLING:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._break()
                raise BrokenBarrierError
            await self._cond.wait_async(
                _DEATH_CHECK_S if left is None else min(left, _DEATH_CHECK_S)
            )
            if self._state == _FILLING:
                pid = self._find_dead_party()
                if pid is not None:
                    self._break()
                    raise BarrierPartyDiedError(
                        f"process {pid} died while waiting at the barrier; it is broken "
                        "(reset() makes it usable again)",
                        pid=pid,
                    )
        if self._state < 0:
            raise BrokenBarrierError

    def _enter(self) -> None:
        while self._state in (_RESETTING, _DRAINING):
            self._cond.wait(_DEATH_CHECK_S)
            self._find_dead_party()
            if self._count == 0 and self._state in (_RESETTING, _DRAINING):
                self._state = _FILLING
        if self._state < 0:
            raise BrokenBarrierError
        if self._state != _FILLING:
            raise ShoalError(f"Barrier in unknown state {self._state}")

    def _release(self) -> None:
        try:
            if self._action:
                self._action()
            self._state = _DRAINING
            self._cond.notify_all()
        except BaseException:
            self._break()
            raise

    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        while self._state == _FILLING:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._break()
                raise BrokenBarrierError
            self._cond.wait(_DEATH_CHECK_S if left is None else min(left, _DEATH_CHECK_S))
            if self._state == _FILLING:
                pid = self._find_dead_party()
                if pid is not None:
                    self._break()
                    raise BarrierPartyDiedError(
                        f"process {pid} died while waiting at the barrier; it is broken "
                        "(reset() makes it usable again)",
                        pid=pid,
                    )
        if self._state < 0:
            raise BrokenBarrierError

    def _exit(self) -> None:
        if self._count == 0 and self._state in (_RESETTING, _DRAINING):
            self._state = _FILLING
            self._cond.notify_all()

    def reset(self) -> None:
        """Return the barrier to its empty state; current waiters get BrokenBarrierError."""
        with self._cond:
            self._find_dead_party()
            if self._count > 0:
                if self._state in (_FILLING, _BROKEN):
                    self._state = _RESETTING
            else:
                self._state = _FILLING
            self._cond.notify_all()

    def abort(self) -> None:
        """Break the barrier: current and future ``wait`` calls raise BrokenBarrierError."""
        with self._cond:
            self._break()

    def _break(self) -> None:
        self._state = _BROKEN
        self._cond.notify_all()

    @property
    def parties(self) -> int:
        """The number of parties that must arrive."""
        return self._parties

    @property
    def n_waiting(self) -> int:
        """How many parties are waiting now."""
        return self._count if self._state == _FILLING else 0

    @property
    def broken(self) -> bool:
        """True if the barrier is broken."""
        return self._state == _BROKEN

    def statistics(self) -> BarrierStatistics:
        """Return a :class:`BarrierStatistics` snapshot."""
        with self._cond:
            pids = tuple(_core.token_pid(t) for t in (self._get(i) for i in self._slots()) if t)
            return BarrierStatistics(self._parties, self.n_waiting, self.broken, pids)

    def __repr__(self) -> str:
        if self.closed:
            return "<shoal.Barrier closed>"
        state = "broken" if self.broken else f"waiters={self.n_waiting}/{self._parties}"
        return f"<shoal.Barrier {state}>"
