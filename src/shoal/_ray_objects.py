"""shoal's primitives on Ray (#13): each object is one Ray actor, and the object a
thin handle on it that pickles (the Ray actor handle inside), so it works in any
task, actor or driver of the cluster.

Lifetime: the actors are *owned*, not detached: one lives while a handle on it is
reachable anywhere in the cluster (Ray counts them, handles inside task arguments
and results included) and its creator's process lives; then Ray removes it.  They
take no CPU (``num_cpus=0``) and are asynchronous actors, so a blocked ``acquire`` or
``get`` waits inside the actor without keeping anyone else's call from running.

Owners.  A lock's holder is a (process token, thread) pair; the actor keeps a
*probe* of each process that acquires: a call of that process it keeps pending,
whose result Ray fails when the process dies (see :class:`_Probes`).  While someone
waits the actor looks at the holders' probes every :data:`_PROBE_EVERY` seconds; a
failed probe means a dead owner, and the lock is handed to the next acquirer with
``owner_died`` set, as the local lock does.

Queues batch on the client: ``put`` appends to a buffer that a thread of the
putting process flushes (the standard library's ``multiprocessing.Queue`` has such a
feeder thread too), and ``get`` takes up to ``prefetch`` waiting items in one call.
"""

from __future__ import annotations

import array
import asyncio
import collections
import concurrent.futures
import functools
import os
import pickle
import queue as stdlib_queue
import secrets
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Iterable, Iterator, MutableMapping, MutableSequence
from typing import Any, TypeVar

from . import _core, _memory, _queues, _sync
from ._errors import (
    BarrierPartyDiedError,
    ClosedError,
    NotHeldError,
    OwnerDiedWarning,
    ShoalError,
)
from ._set import _UPDATES, _hashable, _SetBase

__all__ = [
    "RayArray",
    "RayBarrier",
    "RayBoundedSemaphore",
    "RayCondition",
    "RayEvent",
    "RayLock",
    "RayQueue",
    "RayRLock",
    "RaySemaphore",
    "RaySharedArray",
    "RaySharedDict",
    "RaySharedList",
    "RaySharedSet",
    "RayValue",
]

_T = TypeVar("_T")

_PROBE_EVERY = 0.5  # seconds between two looks at a waited-for holder's probe


def _ray() -> types.ModuleType:
    global _watching_forks
    if not _watching_forks:  # (on first use, not at import: importing has no effects)
        _watching_forks = True
        os.register_at_fork(after_in_child=_after_fork)
    return sys.modules.get("ray") or __import__("ray")


_watching_forks = False
# Set in a child forked from a process connected to Ray: Ray's connection does not
# survive fork(), and a call through it would wait for ever (a Process of the local
# context, forked, given a cluster queue: tutorial program 3 under SHOAL_CONTEXT=ray)
_forked_from_ray = False


def _after_fork() -> None:
    global _forked_from_ray
    ray = sys.modules.get("ray")
    _forked_from_ray = _forked_from_ray or bool(ray is not None and ray.is_initialized())


def _check_process() -> None:
    if _forked_from_ray:
        raise RuntimeError(
            "a Ray object was used in a process forked from a process connected to Ray, "
            "whose connection does not survive fork(): pass the object to a task of the "
            "Ray context's Pool (get_context('ray').Pool()) instead of a local Process"
        )


# ---- the actors (plain classes: made Ray actors on first use, see _actor) ---------------


class _Probes:
    """An actor that learns when the processes calling it die (see :meth:`register`)."""

    def __init__(self) -> None:
        # Ray worker -> (its probe's ticket, the probe's future) (register)
        self.probes: dict[int, tuple[int, Any]] = {}
        self.holds: dict[int, asyncio.Event] = {}  # ticket -> set to end that hold()

    async def hold(self, ticket: int) -> None:
        """Returns only at :meth:`unhold`: the pending call is its caller's probe (see
        register).  (A pending call keeps its actor alive, handles gone or not: each
        process ends its own once it has no handle on the actor left.)"""
        # (unhold may have come first: calls to an async actor run in no fixed order)
        ended = self.holds.setdefault(ticket, asyncio.Event())
        try:
            await ended.wait()
        finally:
            self.holds.pop(ticket, None)

    async def unhold(self, worker: int, ticket: int) -> None:
        """``worker``'s process has no handle on this actor left: end its probe
        ``ticket``, unless it holds something here (then it stays watched)."""
        if self._holds_anything(worker):
            return
        entry = self.probes.get(worker)
        if entry is not None and entry[0] == ticket:
            del self.probes[worker]
        self.holds.setdefault(ticket, asyncio.Event()).set()

    async def pending_probes(self) -> int:
        """How many probes are pending (for tests: one per process that called)."""
        return len(self.holds)

    async def register(self, worker: int, ticket: int, probe: list[Any]) -> None:
        """Keep ``worker``'s probe, its pending ``hold(ticket)`` call: Ray fails the
        object when its owner (the calling process) dies, and never before."""
        watched = asyncio.wrap_future(probe[0].future())
        watched.add_done_callback(lambda done: self._probe_ended(worker, done))
        self.probes[worker] = (ticket, watched)

    def _probe_ended(self, worker: int, done: Any) -> None:
        # (a failure is the news; reading it here also keeps asyncio from logging it
        # as an exception nobody retrieved.  A hold ended by unhold is no news)
        if not done.cancelled() and done.exception() is not None:
            self._worker_died(worker)

    def _worker_died(self, worker: int) -> None:
        """``worker``'s process died (its probe failed): for the actors that must act
        at once; the others look at :meth:`_owner_alive` when they need to know."""

    def _holds_anything(self, worker: int) -> bool:
        """Whether ``worker`` holds (or waits for) anything here."""
        return False

    async def _owner_alive(self, owner: tuple[int, int], patience: float = 0.0) -> bool:
        """Whether the owner's process lives: False once its probe failed (waiting up to
        ``patience`` seconds for Ray to say so)."""
        entry = self.probes.get(owner[0])
        if entry is None:
            return True
        probe = entry[1]
        if not probe.done() and patience:
            await asyncio.wait({probe}, timeout=patience)
        return not probe.done()


class _SyncActor(_Probes):
    """A lock, an RLock or a (bounded) semaphore, with owners and timeouts."""

    def __init__(self, kind: str, value: int = 1) -> None:
        super().__init__()
        self.kind = kind
        self.value = value
        self.initial = value
        self.holders: dict[tuple[int, int], int] = {}  # owner -> count held
        self.cond = asyncio.Condition()
        self.died = False  # the current holder got it from a dead owner
        self.waiters: list[asyncio.Event] = []  # a Condition's (cond_wait)

    def _holds_anything(self, worker: int) -> bool:
        return any(owner[0] == worker for owner in self.holders)

    async def _reap(self) -> bool:
        """Free what dead owners hold; return whether any was."""
        freed = False
        for owner in list(self.holders):
            if not await self._owner_alive(owner):
                count = self.holders.pop(owner)
                self.value += count if self.kind not in ("rlock",) else 1
                freed = True
        return freed

    async def acquire(self, owner: tuple[int, int], timeout: float | None) -> Any:
        """(acquired, owner_died)"""
        if self.kind == "rlock" and owner in self.holders:
            self.holders[owner] += 1
            return True, False
        deadline = None if timeout is None else time.monotonic() + timeout
        died = False
        async with self.cond:
            while self.value <= 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False, False
                wait = _PROBE_EVERY if left is None else min(left, _PROBE_EVERY)
                try:
                    await asyncio.wait_for(self.cond.wait(), wait)
                except asyncio.TimeoutError:
                    if await self._reap():
                        died = True
            self.value -= 1
            self.holders[owner] = self.holders.get(owner, 0) + 1
            self.died = died
            return True, died

    async def release(self, owner: tuple[int, int]) -> None:
        async with self.cond:
            if self.kind in ("lock", "rlock"):
                if owner not in self.holders:
                    what = "lock" if self.kind == "lock" else "RLock"
                    raise NotHeldError(f"release of a {what} this thread does not hold")
                self.holders[owner] -= 1
                if self.holders[owner]:
                    return
                del self.holders[owner]
            else:
                if self.kind == "bounded" and self.value >= self.initial:
                    raise ValueError("Semaphore released too many times")
                count = self.holders.get(owner, 0)
                if count > 1:
                    self.holders[owner] = count - 1
                elif count:
                    del self.holders[owner]
                elif self.holders:  # released by another caller: free someone's unit
                    other = next(iter(self.holders))
                    self.holders[other] -= 1
                    if not self.holders[other]:
                        del self.holders[other]
            self.value += 1
            self.died = False
            self.cond.notify()

    async def state(self) -> tuple[int, int, bool]:
        return self.value, sum(self.holders.values()), self.died

    # a Condition on this lock: wait releases it wholly, waits, and takes it back
    async def cond_wait(self, owner: tuple[int, int], timeout: float | None) -> bool:
        if owner not in self.holders:
            raise NotHeldError("cannot wait on un-acquired lock")
        woken = asyncio.Event()
        self.waiters.append(woken)
        async with self.cond:
            saved = self.holders.pop(owner)
            self.value += 1
            self.cond.notify()
        try:
            await asyncio.wait_for(woken.wait(), timeout)
            notified = True
        except asyncio.TimeoutError:
            notified = False
        finally:
            if woken in self.waiters:
                self.waiters.remove(woken)
        await self.acquire(owner, None)
        self.holders[owner] = saved
        return notified

    async def cond_notify(self, owner: tuple[int, int], n: int) -> None:
        if owner not in self.holders:
            raise NotHeldError("cannot notify on un-acquired lock")
        for woken in self.waiters[:n]:
            woken.set()
        del self.waiters[:n]


class _BarrierActor(_SyncActor):
    """A barrier: parties, generations, broken when a waiting party's process dies."""

    def __init__(self, parties: int) -> None:
        super().__init__("lock")
        self.parties = parties
        self.count = 0
        self.generation = 0
        self.broken = False
        self.waiting: list[int] = []  # the Ray workers of the waiting parties
        self.party_died = False  # broken because a waiting party's process died
        self.releasing = False  # the last party runs the action (Barrier(action=))

    async def arrive(self, worker: int, timeout: float | None, action: bool = False) -> int:
        """This party's index; -1: it is the last and runs the action, then calls
        :meth:`release`, while the others still wait."""
        while self.releasing and not self.broken:  # the last cycle's action runs still
            async with self.cond:
                await self.cond.wait()
        if self.broken:
            raise self._broken_error()
        generation = self.generation
        index = self.count
        if index + 1 == self.parties:
            # the last to come: every waiting party must still be alive
            for other in list(self.waiting):
                if not await self._owner_alive((other, 0)):
                    async with self.cond:
                        self._break(died=True)
                    raise BarrierPartyDiedError("a party died waiting at the barrier")
        self.count += 1
        if self.count == self.parties:
            if action:
                # the others wait on until release(); this party is watched as they are
                self.releasing = True
                self.waiting.append(worker)
                return -1
            async with self.cond:
                self._next_generation()
            return self.parties - 1 - index
        self.waiting.append(worker)
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self.cond:
            while self.generation == generation and not self.broken:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._break()
                    raise threading.BrokenBarrierError
                wait = _PROBE_EVERY if left is None else min(left, _PROBE_EVERY)
                try:
                    await asyncio.wait_for(self.cond.wait(), wait)
                except asyncio.TimeoutError:
                    for other in list(self.waiting):  # (its own too: its caller may be gone)
                        if not await self._owner_alive((other, 0)):
                            self._break(died=True)
                            raise BarrierPartyDiedError(
                                "a party died waiting at the barrier"
                            ) from None
        if self.generation == generation:  # broken
            raise self._broken_error()
        return self.parties - 1 - index

    def _holds_anything(self, worker: int) -> bool:
        return worker in self.waiting or super()._holds_anything(worker)

    def _next_generation(self) -> None:
        self.count = 0
        self.generation += 1
        self.waiting.clear()
        self.releasing = False
        self.cond.notify_all()

    async def release(self, ok: bool) -> None:
        """The last party ran the action: release the others (or, when it raised,
        break the barrier)."""
        async with self.cond:
            if not self.releasing:
                return  # broken (abort, reset, a dead party) while the action ran
            if ok:
                self._next_generation()
            else:
                self._break()

    def _broken_error(self) -> BaseException:
        if self.party_died:
            return BarrierPartyDiedError("a party died waiting at the barrier")
        return threading.BrokenBarrierError()

    def _break(self, died: bool = False) -> None:
        self.broken = True
        self.releasing = False
        self.party_died = self.party_died or died
        self.count = 0
        self.waiting.clear()
        self.cond.notify_all()

    async def abort(self) -> None:
        async with self.cond:
            self._break()

    async def reset(self) -> None:
        async with self.cond:
            if self.count:
                self._break()  # the waiting ones get BrokenBarrierError
            self.broken = False
            self.party_died = False
            self.count = 0

    async def info(self) -> tuple[int, int, bool]:
        return self.parties, self.count, self.broken


class _EventActor:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def set(self) -> None:
        self.event.set()

    async def clear(self) -> None:
        self.event.clear()

    async def is_set(self) -> bool:
        return self.event.is_set()

    async def wait(self, timeout: float | None) -> bool:
        if self.event.is_set():  # (wait_for with timeout 0 gives up before looking)
            return True
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class _DataActor(_SyncActor):
    """Data with atomic operations (its ``op_*`` methods, one call or a batch of them),
    and a lock (an RLock: ``get_lock()``) in the same actor."""

    def __init__(self) -> None:
        super().__init__("rlock")

    async def call(self, name: str, *args: Any) -> Any:
        return getattr(self, "op_" + name)(*args)

    async def batch(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        return [getattr(self, "op_" + name)(*args) for name, args in calls]


class _SeqActor(_DataActor):
    """A list (SharedList) or an ``array.array`` (Array, RawArray): the sequence's own
    methods, named in :data:`_SEQ_METHODS`, each run atomically."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self.data = data

    def op_seq(self, name: str, *args: Any) -> Any:
        if name not in _SEQ_METHODS:
            raise AttributeError(f"no sequence operation {name!r}")
        value = getattr(self.data, name)(*args)
        return value.tolist() if isinstance(value, array.array) else value

    def op_sort(self, key: Any, reverse: bool) -> None:
        self.data.sort(key=key, reverse=reverse)

    def op_add(self, index: int, delta: Any) -> Any:
        self.data[index] += delta
        return self.data[index]


_SEQ_METHODS = frozenset(
    {
        "__contains__",
        "__delitem__",
        "__getitem__",
        "__len__",
        "__setitem__",
        "append",
        "clear",
        "count",
        "extend",
        "index",
        "insert",
        "pop",
        "remove",
        "reverse",
    }
)


_COUNT_SLOTS = 1024  # write counters per array host (arrays share them modulo this)


class _WriteCounts:
    """An array host's write counters, in a shoal segment on its node (the node of
    the process that shared the arrays: the host is placed there): word 0 says the
    host counts (it is on that node and attached the segment), word 1 + n counts the
    writes to the arrays numbered n modulo :data:`_COUNT_SLOTS`.

    A reader on that node that finds an array's count unchanged since its last read
    knows no write came since and keeps its view, without a call to the host; a
    count that changed (a write to this array or to one sharing its slot) sends it
    to the host.  Everywhere else (another node, no segment) every read asks."""

    def __init__(self, node: str, name: str | None) -> None:
        self.node, self.name = node, name
        self._buffer: Any = None  # (not pickled: attached where it is used)
        self._attached = False

    def __getstate__(self) -> Any:
        return self.node, self.name

    def __setstate__(self, state: Any) -> None:
        self.__init__(*state)  # type: ignore[misc]

    @classmethod
    def make(cls) -> tuple[_WriteCounts, Any]:
        """New counters on this node, and the segment holding them (None if this
        process cannot make one: every read then asks the host)."""
        node = _node_id()
        try:
            segment = _memory.Segment.create((1 + _COUNT_SLOTS) * 8)
        except OSError:
            return cls(node, None), None
        counts = cls(node, segment.name)
        counts._buffer, counts._attached = segment.buffer, True
        return counts, segment

    def _words(self) -> Any:
        if not self._attached:
            self._attached = True
            if self.name is not None and self.node == _node_id():
                try:
                    self._buffer = _attached_counts(self.name)
                except OSError:  # (gone, or not this machine's /dev/shm after all)
                    self._buffer = None
        return self._buffer

    def serve(self) -> None:
        """In the host: say that it counts, if it can reach the counters."""
        words = self._words()
        if words is not None:
            _core.store64(words, _memory.HEADER_SIZE, 1)

    def count(self, array_id: int) -> None:
        """In the host: one more write to array ``array_id``."""
        words = self._words()
        if words is not None:
            _core.fetch_add64(words, _slot(array_id), 1)

    def read(self, array_id: int) -> int | None:
        """The writes counted for array ``array_id``'s slot, or None where this
        process cannot know (another node, or a host that does not count)."""
        words = self._words()
        if words is None or not _core.load64(words, _memory.HEADER_SIZE):
            return None
        return int(_core.load64(words, _slot(array_id)))


def _slot(array_id: int) -> int:
    return _memory.HEADER_SIZE + 8 * (1 + array_id % _COUNT_SLOTS)


_counts_attached: dict[str, Any] = {}  # segment name -> its buffer, attached once


def _attached_counts(name: str) -> Any:
    with _arrays_lock:
        buffer = _counts_attached.get(name)
        if buffer is None:
            buffer = _counts_attached[name] = _memory.Segment.attach(name).buffer
        return buffer


def _node_id() -> str:
    # (not kept: a process may disconnect and join another cluster)
    return str(_ray().get_runtime_context().get_node_id())


class _Written:
    """A written array, in its host: the writable copy and its published version."""

    __slots__ = ("data", "dirty", "snapshot", "version")

    def __init__(self, data: Any) -> None:
        self.data = data
        self.snapshot: Any = None
        self.version = 0  # the handle's own reference is version 0
        self.dirty = True


class _Host(_Probes):
    """The host of one process's shared arrays and locks, on that process's node: one
    actor serves them all, so that a ``share()`` or a ``Lock()`` costs no process.

    Arrays (RaySharedArray).  It keeps nothing for an array never written: readers
    map the reference their handle carries.  The first write makes the host's
    writable copy of it, which every write then goes to; a read after writes
    publishes it as a new version (a ``ray.put``).  Readers on the host's node learn
    whether an array was written since they last asked without asking: the host
    counts each array's writes in a shoal segment there (:class:`_WriteCounts`),
    which they read.

    Locks (RayLock).  A lock is a shoal lock in this node's shared memory, which
    every user on the node takes directly; the host takes it for the users on other
    nodes (:meth:`lock_acquire`), and gives it back with ``owner_died`` when such a
    holder's process dies.

    The creating process tells the host when an object's last handle is gone (see
    :func:`_forget_gone`)."""

    def __init__(self, counts: _WriteCounts) -> None:
        super().__init__()
        self.written: dict[int, _Written] = {}
        self.loading: dict[int, Any] = {}  # array -> the future of its first copy
        self.locks: dict[int, Any] = {}  # array -> its lock's actor (get_lock)
        self.counts = counts
        counts.serve()
        self.node_objects: dict[int, Any] = {}  # number -> the shoal Lock or Queue on this node
        # lock -> (its holder on another node, the holder's pid)
        self.lock_holders: dict[int, tuple[tuple[int, int], int]] = {}
        self.tickets = 0  # the last condition waiter's ticket (cond_enter)
        # (queue, ticket) -> [an item that carries Ray references] (see _for_ring)
        self.stashed: dict[tuple[int, int], list[Any]] = {}
        # condition -> its waiters' tickets and events, longest waiting first
        self.conditions: dict[int, dict[int, asyncio.Event]] = {}
        # (a host is an actor's process of its own: a lock it takes from a dead
        # owner is reported to the remote caller, not here)
        warnings.filterwarnings("ignore", category=OwnerDiedWarning)
        self.threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=_CONCURRENCY, thread_name_prefix="shoal-lock"
        )

    async def _data(self, array_id: int, box: list[Any]) -> _Written:
        written = self.written.get(array_id)
        if written is None:
            # two first writes at once make one copy (the second awaits the first's)
            loading = self.loading.get(array_id)
            if loading is None:
                loading = self.loading[array_id] = asyncio.ensure_future(box[0])
            data = await loading
            written = self.written.get(array_id)
            if written is None:
                written = self.written[array_id] = _Written(data.copy())
                self.loading.pop(array_id, None)
        return written

    async def snapshot(self, array_id: int) -> tuple[int, list[Any] | None]:
        """The array's current version and, if it was written, its published copy
        (published now if a write came since); (0, None) if never written."""
        written = self.written.get(array_id)
        if written is None:
            return 0, None
        if written.dirty:
            written.snapshot = _ray().put(written.data)  # one copy, into this node's store
            written.version += 1
            written.dirty = False
        return written.version, [written.snapshot]

    def _wrote(self, array_id: int, written: _Written) -> None:
        """After a write: publish a new version at the next read, and count it for
        the readers on this node (before the write returns)."""
        written.dirty = True
        self.counts.count(array_id)

    async def setitem(self, array_id: int, box: list[Any], key: Any, value: Any) -> None:
        written = await self._data(array_id, box)
        written.data[key] = value
        self._wrote(array_id, written)

    async def add(self, array_id: int, box: list[Any], key: Any, delta: Any) -> Any:
        written = await self._data(array_id, box)
        written.data[key] += delta
        self._wrote(array_id, written)
        value = written.data[key]
        return value.copy() if hasattr(value, "copy") else value

    async def lock(self, array_id: int) -> Any:
        """The array's lock (an RLock actor, made at the first ``get_lock()``)."""
        lock = self.locks.get(array_id)
        if lock is None:
            lock = self.locks[array_id] = _actor(_SyncActor, "rlock", 1)
        return lock

    # ---- shoal objects of this node (a Lock, a Queue): the users on other nodes ----------

    async def keep(self, number: int, blob: bytes) -> None:
        """Hold the new object ``number`` (a pickled shoal object of this node) for as
        long as a handle on it lives."""
        if number not in self.node_objects:  # (a caller's copy may have come first)
            self.node_objects[number] = pickle.loads(blob)

    def _node_object(self, number: int, blob: bytes) -> Any:
        """Object ``number``; ``blob``, the caller's copy (pickled), serves if its
        maker's :meth:`keep` has not run yet: calls to an async actor run in no fixed
        order, so a handle's first call may overtake it."""
        held = self.node_objects.get(number)
        if held is None:
            try:
                held = self.node_objects[number] = pickle.loads(blob)
            except (OSError, ShoalError) as error:
                raise RuntimeError(
                    "this Ray object's host does not have it: it was not made on the "
                    "host's node, or every handle on it was dropped"
                ) from error
        return held

    async def _in_thread(self, call: Any, *args: Any) -> Any:
        """``call(*args)`` in one of the host's threads (it may block)."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, call, *args)

    async def lock_acquire(
        self,
        number: int,
        blob: bytes,
        owner: tuple[int, int],
        timeout: float | None,
        pid: int,
    ) -> tuple[bool, bool]:
        """Take lock ``number`` (pickled: ``blob``) for ``owner`` (pid ``pid``) of
        another node: (acquired, from an owner that died).  A waiter whose process
        dies stops waiting."""
        lock = self._node_object(number, blob)
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while not lock.acquire(False):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False, False
            if not await self._owner_alive(owner):
                return False, False
            wait = _PROBE_EVERY if left is None else min(left, _PROBE_EVERY)
            taking = loop.run_in_executor(self.threads, lock.acquire, True, wait)
            try:
                if await asyncio.shield(taking):
                    break
            except asyncio.CancelledError:  # (its caller is gone: give back what it took)
                taking.add_done_callback(lambda done: done.result() and lock.release())
                raise
        self.lock_holders[number] = (owner, pid)
        return True, bool(lock.owner_died)

    def _holds_anything(self, worker: int) -> bool:
        return any(owner[0] == worker for owner, _ in self.lock_holders.values())

    def _worker_died(self, worker: int) -> None:
        """The process of holders on another node died: give their locks back with
        ``owner_died`` for the next holder, wherever it is."""
        for number, (owner, pid) in list(self.lock_holders.items()):
            lock = self.node_objects.get(number)
            if owner[0] == worker and lock is not None:
                del self.lock_holders[number]
                # (named by its pid: a token's bits 32-53, see native/include/shoal_core.h)
                lock._release_dead(pid << 32)

    async def lock_release(self, number: int, blob: bytes, owner: tuple[int, int]) -> None:
        """Release lock ``number`` (any process may, as the local Lock allows:
        NotHeldError if it is not held)."""
        lock = self._node_object(number, blob)
        self.lock_holders.pop(number, None)
        lock.release()

    async def lock_state(
        self, number: int, blob: bytes, owner: tuple[int, int]
    ) -> tuple[bool, bool]:
        """(whether ``owner`` holds lock ``number``, whether it got it from an owner that
        died)."""
        lock = self._node_object(number, blob)
        holder = self.lock_holders.get(number)
        held = holder is not None and holder[0] == owner
        return held, held and bool(lock.owner_died)

    # ---- queues of this node: the users on other nodes ------------------------------

    async def queue_put(
        self, number: int, blob: bytes, items: list[Any], timeout: float | None
    ) -> int:
        """Put ``items`` on queue ``number`` (pickled: ``blob``), waiting up to
        ``timeout`` for room; how many were put."""
        queue = self._node_object(number, blob)
        items = [_for_ring(item, functools.partial(self._stash_here, number)) for item in items]
        try:
            return int(await self._in_thread(queue.put_many, items, True, timeout))
        except stdlib_queue.Full as full:
            return int(getattr(full, "items_put", 0))

    async def queue_get(
        self, number: int, blob: bytes, most: int, timeout: float | None, owner: tuple[int, int]
    ) -> list[Any]:
        """Up to ``most`` items of queue ``number`` for ``owner``, waiting up to
        ``timeout`` for the first ([]: none came).  A waiter whose process died stops
        waiting (it would take items nobody receives)."""
        queue = self._node_object(number, blob)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait = _PROBE_EVERY if left is None else min(left, _PROBE_EVERY)
            try:
                items = await self._in_thread(queue.get_many, most, wait > 0, wait)
                return [
                    _from_ring(item, functools.partial(self._unstash, number)) for item in items
                ]
            except stdlib_queue.Empty:
                if left is not None and left <= wait:
                    return []
                if not await self._owner_alive(owner):
                    return []

    def _stash_here(self, number: int, ticket: int, box: list[Any]) -> None:
        self.stashed[number, ticket] = box

    def _unstash(self, number: int, ticket: int) -> list[Any]:
        return self.stashed.pop((number, ticket))

    async def stash(self, number: int, ticket: int, box: list[Any]) -> None:
        """Keep ``box[0]``, an item of queue ``number`` that carries Ray references,
        until :meth:`unstash` (the queue carries ``ticket`` in its place)."""
        self._stash_here(number, ticket, box)

    async def unstash(self, number: int, ticket: int) -> list[Any]:
        """The item stashed under ``ticket``, in a box (a list: Ray would resolve a
        reference returned bare), no longer kept."""
        return self._unstash(number, ticket)

    async def queue_call(self, number: int, blob: bytes, name: str, *args: Any) -> Any:
        """``qsize()``, ``task_done()`` or ``join(timeout)`` of queue ``number``."""
        if name not in ("qsize", "task_done", "join"):
            raise ValueError(f"no queue call {name!r}")
        queue = self._node_object(number, blob)
        return await self._in_thread(getattr(queue, name), *args)

    # ---- conditions on a RayLock -----------------------------------------------------

    async def cond_enter(self, number: int) -> int:
        """A new waiter of condition ``number``: its ticket (taken before it releases
        the lock, so that no notify between that and its wait is lost)."""
        self.tickets += 1
        self.conditions.setdefault(number, {})[self.tickets] = asyncio.Event()
        return self.tickets

    async def cond_wait(self, number: int, ticket: int, timeout: float | None) -> bool:
        """Wait for a notify of the waiter ``ticket``; whether it came in time."""
        waiters = self.conditions.get(number, {})
        woken = waiters.get(ticket)
        if woken is None:
            return True  # notified already: taken off the waiters
        try:
            await asyncio.wait_for(woken.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            waiters.pop(ticket, None)

    async def cond_notify(self, number: int, n: int) -> None:
        """Wake the ``n`` longest waiting waiters of condition ``number``."""
        waiters = self.conditions.get(number, {})
        for ticket in list(waiters)[:n]:
            waiters.pop(ticket).set()

    async def forget(self, numbers: list[int]) -> None:
        """Drop what the host holds for objects whose every handle is gone."""
        for number in numbers:
            self.written.pop(number, None)
            self.loading.pop(number, None)
            self.locks.pop(number, None)
            self.node_objects.pop(number, None)
            self.lock_holders.pop(number, None)
            self.conditions.pop(number, None)
        gone = set(numbers)
        for key in [key for key in self.stashed if key[0] in gone]:
            del self.stashed[key]

    async def held(self) -> list[int]:
        """The objects the host holds anything for (for tests and doctor)."""
        return sorted(self.written.keys() | self.locks.keys() | self.node_objects.keys())


class _DictActor(_DataActor):
    """A dict (a Value is the dict's one key) with atomic operations, and a lock."""

    def __init__(self, items: dict[Any, Any]) -> None:
        super().__init__()
        self.data = dict(items)

    def op_get(self, key: Any, default: Any) -> Any:
        return self.data.get(key, default)

    def op_getitem(self, key: Any) -> Any:
        return self.data[key]

    def op_setitem(self, key: Any, value: Any) -> None:
        self.data[key] = value

    def op_delitem(self, key: Any) -> None:
        del self.data[key]

    def op_contains(self, key: Any) -> bool:
        return key in self.data

    def op_len(self) -> int:
        return len(self.data)

    def op_items(self) -> list[tuple[Any, Any]]:
        return list(self.data.items())

    def op_update(self, items: list[tuple[Any, Any]]) -> None:
        self.data.update(items)

    def op_clear(self) -> None:
        self.data.clear()

    def op_pop(self, key: Any, default: Any) -> Any:
        if default is _MISSING:
            return self.data.pop(key)
        return self.data.pop(key, default)

    def op_incr(self, key: Any, delta: Any, default: Any) -> Any:
        value = self.data.get(key, default) + delta
        self.data[key] = value
        return value

    def op_get_or_set(self, key: Any, default: Any) -> Any:
        return self.data.setdefault(key, default)

    def op_compare_exchange(self, key: Any, expected: Any, desired: Any) -> bool:
        if self.data.get(key, _MISSING) == expected:
            self.data[key] = desired
            return True
        return False


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"

    def __reduce__(self) -> str:
        return "_MISSING"


_MISSING: Any = _Missing()

_actors: dict[type, Any] = {}
# calls an actor runs at once: each process that acquires a lock (or waits at a
# barrier) keeps one pending (its probe), each blocked acquire or get one more
_CONCURRENCY = 10_000


def _actor(cls: type, *args: Any, on_this_node: bool = False) -> Any:
    """A new actor of ``cls`` (made a Ray actor class once), on no CPU; placed on
    this process's node if it can be, with ``on_this_node``."""
    _check_process()
    remote = _actors.get(cls)
    if remote is None:
        remote = _ray().remote(num_cpus=0, max_concurrency=_CONCURRENCY)(cls)
        remote = _actors.setdefault(cls, remote)
    if on_this_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(_node_id(), soft=True)
        remote = remote.options(scheduling_strategy=here)
    return remote.remote(*args)


def _get(ref: Any, timeout: float | None = None) -> Any:
    """``ray.get``, raising what the actor raised (not Ray's wrapper)."""
    _check_process()
    ray = _ray()
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, BaseException):
            raise cause.with_traceback(None) from None
        raise


# ---- who is calling: the owner of what it acquires -------------------------------------

_workers: dict[int, int] = {}  # pid -> this process's token (random: pids repeat on a cluster)


def _worker() -> int:
    pid = os.getpid()
    worker = _workers.get(pid)
    if worker is None:
        worker = _workers.setdefault(pid, secrets.randbits(62))
    return worker


def _owner() -> tuple[int, int]:
    return _worker(), threading.get_ident()


# (pid, actor id) -> [this process's probe ticket on that actor, how many of its
# handles on the actor use it]: one pending hold() per process and actor, however
# many handles on it the process unpickled (each would take one of the actor's
# _CONCURRENCY calls for ever), ended with the last of them (see _Probes.hold)
_probes: dict[tuple[int, str], list[int]] = {}
_probes_lock = threading.Lock()
# (probe key, actor) of handles garbage-collected: a weakref callback may run
# anywhere, inside Ray or under _probes_lock, so it only puts (SimpleQueue.put is
# reentrant) and a thread of the process tells the actor
_dropped: stdlib_queue.SimpleQueue[tuple[tuple[int, str], Any]] = stdlib_queue.SimpleQueue()
_unholder: list[int] = []  # [the pid whose _unhold_dropped thread runs], if one runs


def _register(handle: Any) -> None:
    """Give the actor this process's probe, once per process and actor; count the
    handle among its users until it is garbage-collected."""
    pid = os.getpid()
    if handle.__dict__.get("_probed") == pid:
        return
    actor = handle._actor
    key = (pid, actor._actor_id.hex())
    with _probes_lock:
        if handle.__dict__.get("_probed") == pid:
            return
        entry = _probes.get(key)
        if entry is None:
            ticket = secrets.randbits(62)
            probe = actor.hold.remote(ticket)
            _get(actor.register.remote(_worker(), ticket, [probe]))
            entry = _probes[key] = [ticket, 0]
        entry[1] += 1
        handle.__dict__["_probed"] = pid
        if _unholder != [pid]:
            _unholder[:] = [pid]
            threading.Thread(target=_unhold_dropped, name="shoal-ray-probes", daemon=True).start()
    weakref.finalize(handle, _dropped.put, (key, actor)).atexit = False


def _unhold_dropped() -> None:
    """While this process probes an actor: each handle garbage-collected,
    :func:`_unhold` its actor."""
    pid = os.getpid()
    while True:
        _unhold(*_dropped.get())
        with _probes_lock:  # (the lock _register starts this thread under)
            if not any(key[0] == pid for key in _probes):
                _unholder.clear()
                return


def _unhold(key: tuple[int, str], actor: Any) -> None:
    """One of this process's handles on ``actor`` is gone: if it was the last, end
    the process's probe there (a function of its own: the thread's loop must keep no
    handle while it waits, or the actor would live on)."""
    with _probes_lock:
        entry = _probes.get(key)
        if entry is None or key[0] != os.getpid():
            return
        entry[1] -= 1
        if entry[1]:
            return
        del _probes[key]
    try:
        actor.unhold.remote(_worker(), entry[0])
    except Exception:  # (disconnected: the actor went with its cluster)
        pass


def _check_timeout(block: bool, timeout: float | None) -> float | None:
    if not block:
        return 0.0
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    # a negative timeout: do not wait (as the local primitives and multiprocessing's)
    return max(0.0, float(timeout))


# ---- the handles ------------------------------------------------------------------------


class _Handle:
    """A Ray object's handle: pickles as the actor handle."""

    _actor: Any

    def __reduce__(self) -> Any:
        return _rebuild, (type(self), self.__getstate__())

    def __getstate__(self) -> Any:
        return self._actor

    def __setstate__(self, state: Any) -> None:
        self._actor = state


def _rebuild(cls: type, state: Any) -> Any:
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


def _warn_owner_died(lock: object) -> None:
    warnings.warn(
        f"{type(lock).__name__} acquired from a process that died holding it: "
        "the data it guards may be half-updated",
        OwnerDiedWarning,
        stacklevel=3,
    )


class _OnNode(_Handle):
    """A handle on a shoal object (a Lock, a Queue) in the shared memory of its
    maker's node: processes of that node use the object there, directly; processes of
    other nodes through the maker's host actor there (which keeps the object while a
    handle on it lives)."""

    _actor: Any  # the host
    _number: int  # the object's number on its host
    _ref: Any  # a Ray reference every handle carries: counted by Ray (_forget_gone)
    _node: str  # the id of the object's node
    _blob: bytes  # the object, pickled (a handle on the node's shared memory)
    _closed = False  # this handle let go (_let_go)

    def _place(self, obj: Any) -> None:
        """Make this the first handle on ``obj``, a new shoal object of this node."""
        _check_process()
        host, number, _counts = _host()
        blob = pickle.dumps(obj)  # (its one reference in flight: the host adopts it)
        ref = _ray().put(number)
        _OnNode.__setstate__(self, (host, number, ref, _node_id(), blob))
        self._local = obj
        # (kept here until the host has it: this handle may be dropped before)
        _watch(ref, host, number, adopting=(host.keep.remote(number, blob), obj))

    def __getstate__(self) -> Any:
        self._check_open()
        return self._actor, self._number, self._ref, self._node, self._blob

    def __setstate__(self, state: Any) -> None:
        self._actor, self._number, self._ref, self._node, self._blob = state
        self._local: Any = None  # the shoal object, False on another node (not yet known)

    def _through_host(self) -> Any:
        """Another handle on the object, which goes through the host as the handles
        of other nodes' processes do (for tests and benchmarks on one node)."""
        far = _rebuild(type(self), self.__getstate__())
        far._node = "another node"
        return far

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"this {type(self).__name__} handle was closed")

    def _let_go(self) -> None:
        """Drop this handle's hold on the object: from then on it raises ClosedError
        (the object lives on while other handles do)."""
        self._closed = True
        self._ref = None
        self._local = None  # (so that _here looks, and raises)

    def _here(self) -> Any:
        """The shoal object if this process is on its node, else False."""
        local = self._local
        if local is None or _forked_from_ray:  # (a forked child: as any Ray object)
            self._check_open()
            _check_process()
            local = False
            if self._node == _node_id():
                try:
                    local = pickle.loads(self._blob)
                except (OSError, ShoalError):  # (not this node's /dev/shm after all)
                    local = False
            self._local = local
        return local


class RaySemaphore(_Handle):
    """A semaphore on the cluster: ``acquire(block, timeout)``, ``release()``, ``with``.

    A unit held by a process that died is given back when someone waits for one
    (the acquirer is told, as for a lock: :class:`~shoal.OwnerDiedWarning`).
    """

    _kind = "semaphore"

    def __init__(self, value: int = 1) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._actor = _actor(_SyncActor, self._kind, value)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take a unit (a lock); wait up to ``timeout`` seconds (None: for ever)."""
        limit = _check_timeout(block, timeout)
        _register(self)
        acquired, died = _get(self._actor.acquire.remote(_owner(), limit))
        if died:
            _warn_owner_died(self)
        return bool(acquired)

    def release(self) -> None:
        """Give the unit (the lock) back (one round trip: the actor's error, a
        :class:`~shoal.NotHeldError` or a ValueError, is raised here)."""
        _get(self._actor.release.remote(_owner()))

    @property
    def owner_died(self) -> bool:
        """Whether the current holder got it from an owner that died holding it."""
        return bool(_get(self._actor.state.remote())[2])

    def get_value(self) -> int:
        """The units free now."""
        return int(_get(self._actor.state.remote())[0])

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<shoal {type(self).__name__} on Ray>"


class RayBoundedSemaphore(RaySemaphore):
    """A semaphore whose ``release()`` above the initial value raises ValueError."""

    _kind = "bounded"


class RayLock(_OnNode):
    """A lock on the cluster, kept in shared memory on the node of the process that
    made it: every process of that node takes it there, as a local
    :class:`~shoal.Lock` (no call to anyone: a compare-and-swap), and a process of
    another node through the maker's host actor there, one call per ``acquire`` and
    per ``release``.  It has the local Lock's semantics wherever it is used: any
    process may release it (NotHeldError if it is not held), timeouts, and
    ``owner_died`` when its holder's process died holding it (on any node).

    It lives while its maker's process does or a process of its node holds it; its
    last handle gone, the host drops it."""

    def __init__(self) -> None:
        self._place(_sync.Lock())

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; wait up to ``timeout`` seconds (None: for ever)."""
        local = self._here()
        if local:
            return bool(local.acquire(block, timeout))
        limit = _check_timeout(block, timeout)
        _register(self)
        acquired, died = _get(
            self._actor.lock_acquire.remote(self._number, self._blob, _owner(), limit, os.getpid())
        )
        if died:
            _warn_owner_died(self)
        return bool(acquired)

    def release(self) -> None:
        """Give the lock back (:class:`~shoal.NotHeldError` if it is not held)."""
        local = self._here()
        if local:
            local.release()
        else:
            _get(self._actor.lock_release.remote(self._number, self._blob, _owner()))

    def _is_owned(self) -> bool:
        local = self._here()
        if local:
            return bool(local._is_owned())
        return self._remote_state()[0]

    def _remote_state(self) -> tuple[bool, bool]:
        """From the host: (whether the caller holds it, and got it from a dead owner)."""
        held, died = _get(self._actor.lock_state.remote(self._number, self._blob, _owner()))
        return bool(held), bool(died)

    @property
    def owner_died(self) -> bool:
        """Whether the caller holds the lock and got it from an owner that died
        holding it (until release)."""
        local = self._here()
        if local:
            return bool(local.owner_died)
        return self._remote_state()[1]

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return "<shoal RayLock on Ray>"


class RayRLock(RaySemaphore):
    """A recursive lock on the cluster (an actor): its owner, a thread of a process,
    may acquire it again; release by another raises :class:`~shoal.NotHeldError`."""

    _kind = "rlock"

    def __init__(self) -> None:
        super().__init__(1)


class RayEvent(_Handle):
    """An event on the cluster: ``set()``, ``clear()``, ``is_set()``, ``wait(timeout)``."""

    def __init__(self) -> None:
        self._actor = _actor(_EventActor)

    def set(self) -> None:
        """Set the flag, waking every waiter."""
        _get(self._actor.set.remote())

    def clear(self) -> None:
        """Reset the flag."""
        _get(self._actor.clear.remote())

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return bool(_get(self._actor.is_set.remote()))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set or ``timeout`` seconds passed; return the flag."""
        return bool(_get(self._actor.wait.remote(_check_timeout(True, timeout))))


class RayCondition(_Handle):
    """A condition variable on the cluster, on its own RLock or on a :class:`RayLock`
    or :class:`RayRLock` given: ``with c: c.wait(timeout)``, ``wait_for``,
    ``notify(n)``, ``notify_all()``.

    On an RLock (an actor) the actor keeps the waiters too: a ``wait`` is one call.
    On a Lock (shared memory on its node), the host of the process that made the
    condition keeps them: a ``wait`` takes a ticket, releases the lock, waits for a
    notify and takes the lock back."""

    def __init__(self, lock: RayLock | RayRLock | None = None) -> None:
        if lock is None:
            lock = RayRLock()
        elif not isinstance(lock, (RayLock, RayRLock)):
            raise TypeError(f"a Ray Condition takes a Ray lock, not {type(lock).__name__}")
        waiters: Any = None
        if isinstance(lock, RayLock):  # (its host keeps the waiters, see _Host.cond_enter)
            host, number, _counts = _host()
            ref = _ray().put(number)
            waiters = (host, number, ref)
            _watch(ref, host, number)
        self.__setstate__((lock, waiters))

    def __getstate__(self) -> Any:
        return self._lock, self._waiters

    def __setstate__(self, state: Any) -> None:
        self._lock, self._waiters = state
        self._actor = self._lock._actor

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the condition's lock."""
        return self._lock.acquire(block, timeout)

    def release(self) -> None:
        """Give the condition's lock back."""
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def _check_owned(self, what: str) -> None:
        if not self._lock._is_owned():
            raise NotHeldError(f"cannot {what} on un-acquired lock")

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notify (or ``timeout``), take the lock back;
        return whether it was notified."""
        limit = _check_timeout(True, timeout)
        if self._waiters is None:
            return bool(_get(self._actor.cond_wait.remote(_owner(), limit)))
        self._check_owned("wait")
        host, number, _ref = self._waiters
        ticket = _get(host.cond_enter.remote(number))
        self._lock.release()
        try:
            return bool(_get(host.cond_wait.remote(number, ticket, limit)))
        finally:
            self._lock.acquire()

    def wait_for(self, predicate: Any, timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true (or ``timeout``); return its last value."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (the caller must hold the lock)."""
        if self._waiters is None:
            _get(self._actor.cond_notify.remote(_owner(), n))
            return
        self._check_owned("notify")
        host, number, _ref = self._waiters
        _get(host.cond_notify.remote(number, n))

    def notify_all(self) -> None:
        """Wake every waiter."""
        self.notify(sys.maxsize)

    def __repr__(self) -> str:
        return "<shoal RayCondition on Ray>"


class RayBarrier(_Handle):
    """A barrier on the cluster: ``wait(timeout)`` returns the arrival index; a timeout,
    ``abort()`` or a waiting party whose process died breaks it
    (:class:`threading.BrokenBarrierError`; :class:`~shoal.BarrierPartyDiedError` for a
    death, noticed within 0.5 s).  ``action`` runs once a cycle, in the process of the
    last party to arrive, before any party is released (as ``threading.Barrier``'s:
    if it raises, the barrier breaks and that party's ``wait`` raises it); it travels
    with the handle (cloudpickle), so every process must be able to unpickle it."""

    def __init__(self, parties: int, action: Any = None, timeout: float | None = None) -> None:
        if not isinstance(parties, int) or parties < 1:
            raise ValueError("parties must be a positive int")
        if action is not None and not callable(action):
            raise TypeError(f"action must be callable, not {type(action).__name__}")
        self._actor = _actor(_BarrierActor, parties)
        self._action = action
        self._timeout = timeout

    def __getstate__(self) -> Any:
        return (self._actor, self._action, self._timeout)

    def __setstate__(self, state: Any) -> None:
        self._actor, self._action, self._timeout = state

    def wait(self, timeout: float | None = None) -> int:
        """Wait for every party; return this one's index (0 … parties - 1)."""
        _register(self)
        limit = self._timeout if timeout is None else timeout
        action = self._action
        index = int(
            _get(
                self._actor.arrive.remote(
                    _worker(), _check_timeout(True, limit), action is not None
                )
            )
        )
        if index >= 0:
            return index
        assert action is not None
        try:
            action()
        except BaseException:
            _get(self._actor.release.remote(False))
            raise
        _get(self._actor.release.remote(True))
        return 0

    def abort(self) -> None:
        """Break the barrier: waiters and later callers get BrokenBarrierError."""
        _get(self._actor.abort.remote())

    def reset(self) -> None:
        """Back to the start; the parties waiting now get BrokenBarrierError."""
        _get(self._actor.reset.remote())

    @property
    def parties(self) -> int:
        """The number of parties."""
        return int(_get(self._actor.info.remote())[0])

    @property
    def n_waiting(self) -> int:
        """The parties waiting now."""
        return int(_get(self._actor.info.remote())[1])

    @property
    def broken(self) -> bool:
        """Whether the barrier is broken."""
        return bool(_get(self._actor.info.remote())[2])


# ---- the queue ---------------------------------------------------------------------------


# Items of a queue in shared memory are pickled by shoal, out of Ray's sight: a Ray
# reference inside one (an ObjectRef, an actor handle, a shoal Ray object) would not
# be counted, and what it refers to could be freed while the item waits.  Such an
# item is kept by the queue's host instead (a Ray call: counted), and the queue
# carries a ticket in its place, which the getter exchanges for it.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


class _Stashed:
    """What a queue in shared memory carries for an item its host keeps."""

    __slots__ = ("ticket",)

    def __init__(self, ticket: int) -> None:
        self.ticket = ticket

    def __reduce__(self) -> Any:
        return _Stashed, (self.ticket,)


class _RefFound(Exception):
    """Raised by :class:`_RefFinder` at the first Ray reference (no need to go on)."""


class _RefFinder(pickle.Pickler):
    """Pickles into nothing, only to learn whether an object holds a Ray reference."""

    kinds: tuple[type, ...] = ()  # Ray's reference types (set on first use)

    def __init__(self) -> None:
        super().__init__(_DISCARD, protocol=5, buffer_callback=_no_copy)
        if not _RefFinder.kinds:
            ray = _ray()
            _RefFinder.kinds = (ray.ObjectRef, ray.actor.ActorHandle)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, self.kinds):
            raise _RefFound
        return NotImplemented


class _Discard:
    def write(self, data: Any) -> int:
        return len(data)


_DISCARD = _Discard()


def _no_copy(buffer: Any) -> bool:
    return False  # (out of band: numpy's data is not copied to be looked at)


def _carries_ray_references(item: Any) -> bool:
    if type(item) in _PLAIN:
        return False
    try:
        _RefFinder().dump(item)
    except _RefFound:
        return True
    except Exception:  # (what plain pickle cannot take: the queue's own codec says)
        return False
    return False


def _for_ring(item: Any, stash: Any) -> Any:
    """``item``, or a ticket for it once ``stash(ticket, [item])`` keeps it, if it
    carries Ray references."""
    if not _carries_ray_references(item):
        return item
    ticket = secrets.randbits(62)
    stash(ticket, [item])
    return _Stashed(ticket)


def _from_ring(item: Any, unstash: Any) -> Any:
    """What the queue carried: the item, or the one ``unstash(ticket)`` hands back."""
    if type(item) is _Stashed:
        return unstash(item.ticket)[0]
    return item


class _Feeder:
    """The putting process's buffer of one queue on another node, and the thread that
    flushes it (``send``: one call that puts a list of items)."""

    def __init__(self, send: Any, batch: int) -> None:
        self.send = send
        self.batch = batch
        self.items: list[Any] = []
        self.cond = threading.Condition()
        self.inflight = 0
        self.error: BaseException | None = None
        self.done = False
        self.thread = threading.Thread(target=self.run, name="shoal-ray-queue", daemon=True)
        self.thread.start()

    def put(self, item: Any) -> bool:
        """Buffer ``item``; False if the thread has ended (make another feeder)."""
        with self.cond:
            if self.error is not None:
                raise self.error
            if self.done:
                return False
            self.items.append(item)
            if len(self.items) == 1 or len(self.items) >= self.batch:
                self.cond.notify()
            return True

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.items:
                    self.inflight = 0
                    self.cond.notify_all()
                    if not self.cond.wait(1.0) and not self.items:
                        self.done = True  # idle for a second: the next put starts another
                        return
                items, self.items = self.items, []
                self.inflight = len(items)
            try:
                self.send(items)
            except BaseException as error:  # the host is gone: the next put says so
                with self.cond:
                    self.error = error
                    self.inflight = 0
                    self.done = True
                    self.cond.notify_all()
                return

    def flush(self, timeout: float | None = None) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not self.items and not self.inflight, timeout)


def _put_through(
    host: Any, number: int, blob: bytes, items: list[Any], timeout: float | None = None
) -> int:
    """Put ``items`` on queue ``number`` through its ``host``; how many were put."""
    return int(_get(host.queue_put.remote(number, blob, items, timeout)))


class RayQueue(_OnNode):
    """A FIFO queue on the cluster (``put``/``get`` with ``block``/``timeout``,
    ``put_many``/``get_many``, ``qsize``, ``empty``, and ``task_done``/``join``).

    It is a shoal queue in shared memory on the node of the process that made it:
    every process of that node puts and gets there directly, as on a local
    :class:`~shoal.JoinableQueue` (no call to anyone).  A process of another node goes
    through the maker's host actor there: its ``put`` hands the item to the process's
    feeder thread, which sends what accumulates in one call (so a put is fast, and
    visible shortly after; a ``maxsize`` queue blocks the feeder, not ``put``), and
    its ``get`` takes up to ``prefetch`` waiting items at once and serves the next
    gets from them (items it took ahead are lost with its process).

    It lives while its maker's process does or a process of its node holds it; its
    last handle gone, the host drops it.
    """

    def __init__(self, maxsize: int = 0, *, prefetch: int = 64, batch: int = 256) -> None:
        if not isinstance(maxsize, int):
            raise TypeError("maxsize must be an int")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be a positive int, not {prefetch!r}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, not {batch!r}")
        self._prefetch = prefetch
        self._batch = batch
        self._init_remote()
        self._place(_queues.JoinableQueue(maxsize))

    def _init_remote(self) -> None:
        self._taken: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._feeder: _Feeder | None = None

    def __getstate__(self) -> Any:
        return (super().__getstate__(), self._prefetch, self._batch)

    def __setstate__(self, state: Any) -> None:
        on_node, self._prefetch, self._batch = state
        super().__setstate__(on_node)
        self._init_remote()

    def _call(self, name: str, *args: Any) -> Any:
        return _get(self._actor.queue_call.remote(self._number, self._blob, name, *args))

    def _stash(self, ticket: int, box: list[Any]) -> None:
        _get(self._actor.stash.remote(self._number, ticket, box))

    def _unstash(self, ticket: int) -> list[Any]:
        return list(_get(self._actor.unstash.remote(self._number, ticket)))

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item`` on the queue (on another node: through this process's feeder)."""
        local = self._here()
        if local:
            local.put(_for_ring(item, self._stash), block, timeout)
            return
        with self._lock:
            while self._feeder is None or not self._feeder.put(item):
                # (the feeder keeps no reference to this handle: its thread would
                # keep it alive, and with it the queue, for a second after the last put)
                send = functools.partial(_put_through, self._actor, self._number, self._blob)
                self._feeder = _Feeder(send, self._batch)

    def put_nowait(self, item: Any) -> None:
        """``put(item, False)``."""
        self.put(item, False)

    def put_many(
        self, items: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> int:
        """Put every item in one operation, now (no feeder); return how many were put.
        ``queue.Full`` if ``timeout`` ran out first, with ``items_put``: how many are
        in the queue (as the local queue's)."""
        limit = _check_timeout(block, timeout)
        local = self._here()
        if local:
            return int(local.put_many([_for_ring(x, self._stash) for x in items], block, timeout))
        self.flush()
        items = list(items)
        done = _put_through(self._actor, self._number, self._blob, items, limit)
        if done < len(items):
            full = stdlib_queue.Full()
            full.items_put = done  # type: ignore[attr-defined]
            raise full
        return done

    def flush(self, timeout: float | None = None) -> None:
        """Wait until what this process put has reached the queue."""
        feeder = self._feeder
        if feeder is not None:
            feeder.flush(timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the next item; ``queue.Empty`` if none came within ``timeout``."""
        local = self._here()
        if local:
            return _from_ring(local.get(block, timeout), self._unstash)
        with self._lock:
            if self._taken:
                return self._taken.popleft()
        items = self._get_remote(self._prefetch, _check_timeout(block, timeout))
        if not items:
            raise stdlib_queue.Empty
        with self._lock:
            self._taken.extend(items[1:])
        return items[0]

    def _get_remote(self, most: int, timeout: float | None) -> list[Any]:
        _register(self)  # (a waiter whose process died stops waiting: see queue_get)
        return list(
            _get(self._actor.queue_get.remote(self._number, self._blob, most, timeout, _owner()))
        )

    def get_nowait(self) -> Any:
        """``get(False)``."""
        return self.get(False)

    def get_many(
        self, max_items: int = 1024, block: bool = True, timeout: float | None = None
    ) -> list[Any]:
        """Up to ``max_items`` items in one operation, waiting up to ``timeout`` for the
        first; ``queue.Empty`` if none came (as the local queue's)."""
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"max_items must be a positive int, not {max_items!r}")
        limit = _check_timeout(block, timeout)
        local = self._here()
        if local:
            return [_from_ring(x, self._unstash) for x in local.get_many(max_items, block, timeout)]
        with self._lock:
            out = [self._taken.popleft() for _ in range(min(max_items, len(self._taken)))]
        if len(out) < max_items:
            out += self._get_remote(max_items - len(out), 0.0 if out else limit)
        if not out:
            raise stdlib_queue.Empty
        return out

    def qsize(self) -> int:
        """Items in the queue (not those a process of another node took ahead, nor
        those still in its feeder)."""
        local = self._here()
        return int(local.qsize() if local else self._call("qsize"))

    def empty(self) -> bool:
        """Whether ``qsize()`` is 0 and this process holds none taken ahead."""
        return not self._taken and self.qsize() == 0

    def task_done(self) -> None:
        """One item taken is processed (for :meth:`join`)."""
        local = self._here()
        if local:
            local.task_done()
        else:
            self._call("task_done")

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every item put was marked done; return whether it was."""
        local = self._here()
        if local:
            return bool(local.join(timeout))
        self.flush()
        return bool(self._call("join", timeout))

    def close(self) -> None:
        """Flush what this process put, then release this handle: afterwards it
        raises :class:`~shoal.ClosedError`, as a local queue's closed handle does (the
        queue lives on for the other handles)."""
        if not self._closed:
            self.flush()
            self._let_go()

    def join_thread(self) -> None:
        """Wait for the feeder (as ``multiprocessing.Queue.join_thread``)."""
        self.flush()

    def __repr__(self) -> str:
        return "<shoal RayQueue on Ray>"


# ---- shared data -------------------------------------------------------------------------


class RaySharedDict(_Handle, MutableMapping[Any, Any]):
    """A dict on the cluster, one actor: the mapping API (each call one round trip),
    atomic ``incr``, ``get_or_set``, ``compare_exchange``, and ``batch()``."""

    def __init__(self, items: Any = (), /, **kwargs: Any) -> None:
        self._actor = _actor(_DictActor, dict(items, **kwargs))

    def _call(self, name: str, *args: Any) -> Any:
        return _get(self._actor.call.remote(name, *args))

    def __getitem__(self, key: Any) -> Any:
        return self._call("getitem", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._call("setitem", key, value)

    def __delitem__(self, key: Any) -> None:
        self._call("delitem", key)

    def __contains__(self, key: object) -> bool:
        return bool(self._call("contains", key))

    def __len__(self) -> int:
        return int(self._call("len"))

    def __iter__(self) -> Iterator[Any]:
        return iter([k for k, _ in self._call("items")])

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        return self._call("get", key, default)

    def items(self) -> Any:
        """A snapshot of the items (a list)."""
        return self._call("items")

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many keys in one call."""
        self._call("update", list(dict(other, **kwargs).items()))

    def clear(self) -> None:
        """Remove every key."""
        self._call("clear")

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default``; KeyError without one)."""
        return self._call("pop", key, default)

    def incr(self, key: Any, delta: Any = 1, default: Any = 0, /) -> Any:
        """``d[key] = d.get(key, default) + delta`` atomically; return the new value."""
        return self._call("incr", key, delta, default)

    def get_or_set(self, key: Any, default: Any, /) -> Any:
        """``d.setdefault(key, default)`` atomically."""
        return self._call("get_or_set", key, default)

    def compare_exchange(self, key: Any, expected: Any, desired: Any, /) -> bool:
        """Set ``d[key] = desired`` if it is ``expected`` now; return whether it did."""
        return bool(self._call("compare_exchange", key, expected, desired))

    def batch(self, calls: Iterable[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Run many operations in one round trip, atomically:
        ``d.batch([("incr", ("a", 1, 0)), ("get", ("b", None))])``."""
        return list(_get(self._actor.batch.remote(list(calls))))

    def copy(self) -> dict[Any, Any]:
        """The items now, as a dict (one round trip)."""
        return dict(self._call("items"))

    def __or__(self, other: Any) -> dict[Any, Any]:
        return self.copy() | dict(other)

    def __ror__(self, other: Any) -> dict[Any, Any]:
        return dict(other) | self.copy()

    def __ior__(self, other: Any) -> RaySharedDict:
        self.update(other)
        return self

    @property
    def closed(self) -> bool:
        """False: a Ray object is not closed, it goes with its last handle."""
        return False

    def __repr__(self) -> str:
        return "<shoal RaySharedDict on Ray>"


class _WithLock(_Handle):
    """A data object whose actor is also its lock (``_DataActor``: an RLock)."""

    def get_lock(self) -> RayRLock:
        """The object's lock (an RLock in the same actor), for compound updates
        (``with v.get_lock(): v.value += 1``)."""
        lock = RayRLock.__new__(RayRLock)
        lock._actor = self._actor
        return lock


class RayValue(_WithLock):
    """A value on the cluster (``.value``, atomic ``add`` and ``compare_exchange``, and
    ``get_lock()`` for ``with v.get_lock(): v.value += 1``)."""

    def __init__(self, typecode_or_type: Any, value: Any = 0, *, lock: Any = True) -> None:
        self._actor = _actor(_DictActor, {"value": value})

    @property
    def value(self) -> Any:
        """The value (one round trip)."""
        return _get(self._actor.call.remote("getitem", "value"))

    @value.setter
    def value(self, value: Any) -> None:
        _get(self._actor.call.remote("setitem", "value", value))

    def add(self, delta: Any = 1) -> Any:
        """Add ``delta`` atomically; return the new value."""
        return _get(self._actor.call.remote("incr", "value", delta, 0))

    def compare_exchange(self, expected: Any, desired: Any) -> bool:
        """Store ``desired`` if the value is ``expected``; return whether it did."""
        return bool(_get(self._actor.call.remote("compare_exchange", "value", expected, desired)))

    def __repr__(self) -> str:
        return "<shoal RayValue on Ray>"


# ---- a set: Manager().set() -------------------------------------------------------------


class _SetActor(_DataActor):
    """A set (``Manager().set()`` on Ray): each operation of the handle's primitives
    (``shoal._set._SetBase``) one atomic call."""

    def __init__(self, elements: list[Any]) -> None:
        super().__init__()
        self.data = set(elements)

    def op_has(self, element: Any) -> bool:
        return element in self.data

    def op_len(self) -> int:
        return len(self.data)

    def op_elements(self) -> list[Any]:
        return list(self.data)

    def op_add(self, element: Any) -> None:
        self.data.add(element)

    def op_discard(self, element: Any) -> None:
        self.data.discard(element)

    def op_remove(self, element: Any) -> bool:
        if element not in self.data:
            return False
        self.data.remove(element)
        return True

    def op_pop(self) -> tuple[bool, Any]:
        return (True, self.data.pop()) if self.data else (False, None)

    def op_clear(self) -> None:
        self.data.clear()

    def op_apply(self, name: str, others: list[list[Any]]) -> None:
        if name not in _UPDATES:
            raise AttributeError(f"no set update {name!r}")
        getattr(self.data, name)(*others)


class RaySharedSet(_Handle, _SetBase[_T]):
    """A set on the cluster, one actor (what ``Manager().set()`` returns on Ray): the
    whole ``set`` API of :class:`~shoal.SharedSet`, with its results and errors.  Each
    single-element operation, ``clear()`` and each update (``update``,
    ``intersection_update`` …, ``|=``, ``&=``, ``-=``, ``^=``) is one atomic actor call;
    what makes a new set (``|``, ``union()``, ``copy()`` …) and iteration work on a
    snapshot (one call).  Elements compare as a ``set``'s (``1``, ``1.0`` and ``True``
    are one element), as the cluster dict's keys do."""

    def __init__(self, iterable: Iterable[_T] = (), /) -> None:
        self._actor = _actor(_SetActor, [_hashable(element) for element in iterable])

    def _call(self, name: str, *args: Any) -> Any:
        return _get(self._actor.call.remote(name, *args))

    def _has(self, element: Any) -> bool:
        return bool(self._call("has", element))

    def __len__(self) -> int:
        return int(self._call("len"))

    def _elements(self) -> list[_T]:
        return list(self._call("elements"))

    def _add(self, element: Any) -> None:
        self._call("add", element)

    def _discard(self, element: Any) -> None:
        self._call("discard", element)

    def _remove(self, element: Any) -> bool:
        return bool(self._call("remove", element))

    def _pop(self) -> tuple[bool, Any]:
        found, element = self._call("pop")
        return bool(found), element

    def clear(self) -> None:
        """Remove every element (one atomic call)."""
        self._call("clear")

    def _apply(self, name: str, others: list[list[Any]]) -> None:
        self._call("apply", name, others)

    @property
    def closed(self) -> bool:
        """False: a Ray object is not closed, it goes with its last handle."""
        return False

    def _repr_key(self) -> Any:
        return ("ray set", getattr(self._actor, "_actor_id", id(self._actor)))


# ---- sequences: SharedList, Array, RawArray ----------------------------------------------


class _SeqHandle(_WithLock):
    """What a list and an array on the cluster share: reads, each one round trip."""

    def _call(self, name: str, *args: Any) -> Any:
        return _get(self._actor.call.remote("seq", name, *args))

    def __len__(self) -> int:
        return int(self._call("__len__"))

    def __getitem__(self, index: Any) -> Any:
        return self._call("__getitem__", index)

    def copy(self) -> list[Any]:
        """The items now, as a list (one round trip)."""
        return list(self._call("__getitem__", slice(None)))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.copy())  # over a snapshot, as a SharedDict's iteration

    def __contains__(self, value: object) -> bool:
        return bool(self._call("__contains__", value))

    def index(self, value: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        """The first index of ``value`` (ValueError if absent)."""
        return int(self._call("index", value, start, stop))

    def count(self, value: Any) -> int:
        """How many items equal ``value``."""
        return int(self._call("count", value))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _SeqHandle):
            other = other.copy()
        return isinstance(other, list) and self.copy() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<shoal {type(self).__name__} on Ray>"


class RaySharedList(_SeqHandle, MutableSequence[Any]):
    """A list on the cluster, one actor: the list API, each call one round trip and
    atomic (``append``, ``extend``, ``pop``, ``insert``, ``remove``, ``sort`` …);
    iteration is over a snapshot; ``get_lock()`` for compound updates."""

    def __init__(self, iterable: Iterable[Any] = (), /) -> None:
        self._actor = _actor(_SeqActor, list(iterable))

    def __setitem__(self, index: Any, value: Any) -> None:
        self._call("__setitem__", index, list(value) if isinstance(index, slice) else value)

    def __delitem__(self, index: Any) -> None:
        self._call("__delitem__", index)

    def insert(self, index: int, value: Any) -> None:
        """Insert ``value`` before ``index``."""
        self._call("insert", index, value)

    def append(self, value: Any) -> None:
        """Add ``value`` at the end."""
        self._call("append", value)

    def extend(self, values: Iterable[Any]) -> None:
        """Add every item of ``values`` at the end, in one call."""
        self._call("extend", list(values))

    def pop(self, index: int = -1) -> Any:
        """Remove and return the item at ``index`` (the last by default)."""
        return self._call("pop", index)

    def remove(self, value: Any) -> None:
        """Remove the first item equal to ``value`` (ValueError if absent)."""
        self._call("remove", value)

    def clear(self) -> None:
        """Remove every item."""
        self._call("clear")

    def reverse(self) -> None:
        """Reverse the list in place."""
        self._call("reverse")

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        """Sort in place, in the actor (``key`` travels there: cloudpickle)."""
        _get(self._actor.call.remote("sort", key, reverse))

    def __iadd__(self, values: Iterable[Any]) -> RaySharedList:  # type: ignore[override, misc]
        self.extend(values)
        return self


def _typecode(typecode_or_type: Any) -> str:
    """The ``array`` typecode of a typecode or a ctypes simple type."""
    code = getattr(typecode_or_type, "_type_", typecode_or_type)
    if not isinstance(code, str) or code not in array.typecodes:
        raise TypeError(
            f"a Ray Array holds the types of the array module ({array.typecodes!r}, or "
            f"their ctypes types), not {typecode_or_type!r}"
        )
    return code


class RayArray(_SeqHandle):
    """A fixed-length typed array on the cluster (``ctx.Array``, ``ctx.RawArray``),
    one actor: indexing, slicing, ``len``, iteration over a snapshot, atomic
    ``add(i, delta)`` and ``get_lock()``.  Values are checked against the typecode in
    the caller (``TypeError``/``OverflowError``, as the local one)."""

    def __init__(self, typecode_or_type: Any, size_or_initializer: Any) -> None:
        code = _typecode(typecode_or_type)
        if isinstance(size_or_initializer, int) and not isinstance(size_or_initializer, bool):
            if size_or_initializer < 0:
                raise ValueError(f"an array cannot have {size_or_initializer} items")
            data = array.array(code, [0] * size_or_initializer)
        else:
            data = array.array(code, size_or_initializer)
        self._typecode = code
        self._actor = _actor(_SeqActor, data)

    def __getstate__(self) -> Any:
        return (self._actor, self._typecode)

    def __setstate__(self, state: Any) -> None:
        self._actor, self._typecode = state

    @property
    def typecode(self) -> str:
        """The ``array`` typecode of the items."""
        return self._typecode

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            checked: Any = array.array(self._typecode, value)
            if len(checked) != len(range(*index.indices(len(self)))):
                raise ValueError("Can only assign sequence of same size")
        else:
            checked = array.array(self._typecode, [value])[0]
        self._call("__setitem__", index, checked)

    def add(self, index: int, delta: Any = 1) -> Any:
        """Add ``delta`` to item ``index`` atomically; return the new value."""
        array.array(self._typecode, [delta])  # (checked here)
        return _get(self._actor.call.remote("add", index, delta))

    def get_obj(self) -> RayArray:
        """The array itself (``SynchronizedArray.get_obj()``)."""
        return self


# ---- the process's host (arrays, locks), and a numpy array shared across nodes ------------

_arrays_lock = threading.Lock()
# (pid, cluster, job) -> this process's host, the last object's number, the host's
# write counters and the segment they are in (held while the process lives)
_hosts: dict[tuple[int, str, str], list[Any]] = {}
# the objects this process made on its host: the id of the reference their handles
# carry -> (host, object number); the watcher tells the host once Ray has freed the
# reference (no handle is left)
_made: dict[bytes, tuple[Any, int]] = {}
# what this process keeps alive until its host has it: (the host's call, the object)
_adopting: list[tuple[Any, Any]] = []
_watcher: threading.Thread | None = None
_WATCH_EVERY = 1.0  # seconds between two looks at which of this process's objects are gone


def _host() -> tuple[Any, int, _WriteCounts]:
    """This process's host (made at its first ``share()`` or ``Lock()``, on this
    node, without waiting for it to start), a number for a new object, and the host's
    write counters."""
    context = _ray().get_runtime_context()
    key = (os.getpid(), str(context.gcs_address), str(context.get_job_id()))
    with _arrays_lock:
        entry = _hosts.get(key)
        if entry is None:
            counts, segment = _WriteCounts.make()
            entry = _hosts[key] = [
                _actor(_Host, counts, on_this_node=True),
                0,
                counts,
                segment,
            ]
        entry[1] += 1
        return entry[0], entry[1], entry[2]


def _reference_counts() -> Any:
    """This process's Ray reference table (ids of the references it owns or holds,
    each kept while any process of the cluster borrows it), or None if this Ray has
    no such call: then an array's host copy lives as long as the host."""
    core_worker = getattr(_ray()._private.worker.global_worker, "core_worker", None)
    counts = getattr(core_worker, "get_all_reference_counts", None)
    return None if counts is None else counts()


def _watch(ref: Any, host: Any, number: int, adopting: tuple[Any, Any] | None = None) -> None:
    """Watch a new object of this process on its host (see :func:`_forget_gone`);
    ``adopting``: (the host's call that takes the object, what to keep until it ran)."""
    global _watcher
    with _arrays_lock:
        _made[ref.hex().encode()] = (host, number)
        if adopting is not None:
            _adopting.append(adopting)
        if _watcher is None:
            _watcher = threading.Thread(target=_watch_made, name="shoal-ray-hosted", daemon=True)
            _watcher.start()


def _watch_made() -> None:
    """Until no object this process made on its host is left: every
    :data:`_WATCH_EVERY` seconds, :func:`_forget_gone`."""
    while not _forget_gone():
        time.sleep(_WATCH_EVERY)


def _forget_gone() -> bool:
    """Tell each host which of its objects' last handle is gone, so that it drops
    what it holds for them (an array's copy, a lock): those whose reference Ray has
    freed (Ray counts the references in every process of the cluster, those inside
    task arguments and handles too).  Return whether none is left to watch (the
    watcher stops)."""
    global _watcher
    ray = sys.modules.get("ray")
    gone: dict[Any, list[int]] = {}
    with _arrays_lock:
        # (read under the lock that _watch takes: an object watched meanwhile would
        # be missing from an older table, and taken for gone the moment it was made.
        # Not connected: the cluster and its objects are gone, or not ours to tell)
        counts = _reference_counts() if ray is not None and ray.is_initialized() else None
        if counts is not None:
            for key in [key for key in _made if key not in counts]:
                host, number = _made.pop(key)
                gone.setdefault(host, []).append(number)
            if _adopting:
                calls = [call for call, _ in _adopting]
                ran, _ = ray.wait(calls, num_returns=len(calls), timeout=0)
                _adopting[:] = [entry for entry in _adopting if entry[0] not in ran]
        done = counts is None or not (_made or _adopting)
        if done:
            _made.clear()
            _adopting.clear()
            _watcher = None
    for host, numbers in gone.items():
        try:
            host.forget.remote(numbers)
        except Exception:  # (disconnected meanwhile: the host went with the cluster)
            pass
    return done


class RaySharedArray(_Handle):
    """A numpy array on the cluster (``get_context("ray").share(array)``).

    Consistency model (docs/ray.md, "Shared arrays"): reads are of *versions*:
    :meth:`view` maps the current one, zero-copy and read-only, from the node's object
    store, one copy per node however many tasks there read it.  The first version is
    the ``ray.put`` that ``share()`` made, carried in the handle.  Writes
    (``arr[key] = value``, :meth:`add`) go to one owner, the host actor of the process
    that shared the array, which applies them one at a time on its own copy; a write
    is seen by every read that starts after it returned, in any process of the
    cluster (the next read publishes a new version: one ``ray.put`` of the owner's
    copy).  A view already taken does not change.  ``get_lock()`` serializes compound
    updates (read, compute, write).

    ``arr[key]`` reads from the current view; ``np.asarray(arr)`` is the current
    view; :meth:`copy` a private writable copy.  Batch writes (one slice, not a loop
    of items): each write costs a round trip, and a read after writes publishes the
    whole array once.
    """

    def __init__(self, array: Any) -> None:
        import numpy as np  # (numpy is needed here only: shoal[numpy])

        source = np.asarray(array)
        if source.dtype.hasobject:
            raise TypeError(
                "a shared array holds numbers, not Python objects (object dtype): "
                "use a SharedList or SharedDict for those"
            )
        _check_process()
        host, array_id, counts = _host()
        ref = _ray().put(source)  # version 0: a copy into this node's store
        self.__setstate__((host, array_id, ref, counts))
        _watch(ref, host, array_id)

    def __getstate__(self) -> Any:
        return self._actor, self._id, self._ref, self._counts

    def __setstate__(self, state: Any) -> None:
        self._actor, self._id, self._ref, self._counts = state
        self._version = -1
        self._seen = -1  # the write count when the view was taken (-1: not known)
        self._view: Any = None
        self._lock = threading.Lock()
        self._array_lock: RayRLock | None = None

    def view(self) -> Any:
        """The current version, as a read-only numpy array mapped from this node's
        object store (zero copies; the same one for every reader of this version)."""
        seen = self._counts.read(self._id)  # (read before asking: see _WriteCounts)
        if seen is not None:
            with self._lock:
                if seen == self._seen:
                    return self._view  # no write since this view: still current
            if seen == 0:  # never written: the reference shared
                return self._take(0, self._ref, seen)
        version, box = _get(self._actor.snapshot.remote(self._id))
        return self._take(version, box[0] if box else self._ref, seen)

    def _take(self, version: int, ref: Any, seen: int | None) -> Any:
        with self._lock:
            if version != self._version:
                self._view = _ray().get(ref)
                self._version = version
            self._seen = -1 if seen is None else seen
            return self._view

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        view = self.view()
        if copy:
            return view.astype(dtype) if dtype is not None else view.copy()
        return view if dtype is None else view.astype(dtype)

    def __getitem__(self, key: Any) -> Any:
        return self.view()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        _get(self._actor.setitem.remote(self._id, [self._ref], key, value))

    def add(self, key: Any, delta: Any) -> Any:
        """``arr[key] += delta`` in the owner, atomically; return the new value(s)."""
        return _get(self._actor.add.remote(self._id, [self._ref], key, delta))

    def get_lock(self) -> RayRLock:
        """The array's lock (an RLock on the cluster, made at the first call: an actor
        of its own), for compound updates (``with arr.get_lock(): ...``)."""
        if self._array_lock is None:
            lock = RayRLock.__new__(RayRLock)
            lock._actor = _get(self._actor.lock.remote(self._id))
            self._array_lock = lock
        return self._array_lock

    def copy(self) -> Any:
        """A private, writable copy of the current version."""
        return self.view().copy()

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return tuple(self.view().shape)

    @property
    def dtype(self) -> Any:
        """The array's dtype."""
        return self.view().dtype

    def __len__(self) -> int:
        return len(self.view())

    def __repr__(self) -> str:
        return f"<shoal RaySharedArray version {self._version} on Ray>"
