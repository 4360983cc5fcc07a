"""asyncio support: awaiting shoal objects with no thread per wait (#14).

Design
======

Every blocking primitive of the native core sleeps on a futex word: a ring's
``data_seq``/``space_seq``/``unfinished_seq``, a mutex's ``seq``, a semaphore's value, an
event's flag.  Before it sleeps a waiter *registers*: it adds itself to the primitive's
waiting count (which tells a releasing side to ``FUTEX_WAKE``) and puts its process token
in the primitive's waitlist (so that a waiter killed while counted is pruned by the next
release, ``shoal_waitlist`` in ``native/include/shoal_core.h``).  The awaitable methods
(``get_async``, ``acquire_async``, ``wait_async``...) use exactly that protocol; only the
sleeping is done elsewhere:

1. **Fast path.**  The coroutine first tries the non-blocking operation (``get(False)``,
   ``acquire(False)``...).  If it succeeds, nothing else happens: no thread, no system
   call, no registration.
2. **Registration: one entry per (object, side) per process.**  If it would block, the
   coroutine joins this process's *entry* for that word (``_Entry``), creating it if it
   is the first.  Creating it registers the process once with the native primitive
   (``_aio_register``: the waiting count + 1 and one waitlist slot holding this
   process's token, and the word's value then).  Ten thousand coroutines awaiting one
   queue are one count, one slot and one futex word in the kernel.  The coroutine then
   retries the operation once (the re-check after registering that makes a concurrent
   put or release unable to slip past unseen) and, if it still would block, awaits an
   ``asyncio.Future``.
3. **The hub: one daemon thread per 127 distinct words.**  A hub thread (``_Shard``)
   sleeps in Linux ``futex_waitv`` (syscall 449, ``shoal_wait_many``) on the words of all
   its armed entries at once plus one word of its own, which the loop side bumps to
   tell it that its set changed.  ``futex_waitv`` takes at most 128 words, so a shard
   holds at most 127 entries; the next distinct word starts a second shard, and so on.
   Shards are started on first use and then kept (they sleep on their own word when
   idle), so a process uses ``ceil(distinct words awaited at the peak / 127)`` threads:
   **one** in any program awaiting fewer than 128 different queues/locks at a time.
   Shared (not private) futexes, so a ``put`` or ``release`` in any process wakes it.
4. **Wake: FIFO, with a baton.**  When a word changes, the shard disarms the entry
   (stops waiting on it), records the word's new value (read *before* anyone retries,
   so a change after it makes the next ``futex_waitv`` return at once) and wakes only
   the first coroutine of the entry, through ``loop.call_soon_threadsafe``.  That
   coroutine retries: on success it hands the baton to the next one (which retries in
   turn: several items put at once are taken by as many coroutines, in FIFO order,
   without waking all ten thousand); on failure (someone else was faster) it re-arms the
   entry and sleeps again.  An ``Event`` or ``JoinableQueue.join`` wakes every waiter of
   the entry (a broadcast), as its blocking twin does.
5. **Leaving.**  A coroutine that is cancelled (``task.cancel()``, ``asyncio.timeout``,
   ``asyncio.wait_for``) or whose call ends leaves its entry; if it held the baton
   (was woken and had not yet used it) it passes it on, so no wake-up is swallowed.
   The last coroutine to leave an entry unregisters the process (count - 1, slot
   freed): a cancelled awaiter takes nothing from the queue, holds no permit and leaves
   no count behind.  A process that dies while registered is pruned from the count by
   the waitlist as any blocked waiter is (``shoal_waitlist_prune_due``).
6. **Slices.**  With no wake-up for 200 ms (50 ms while a lock is awaited) a shard
   fires each armed entry anyway: the head coroutine retries, which is how a lock whose
   holder died is taken over (``acquire(False)`` inherits from a dead owner) and how a
   wake-up consumed by a waiter killed in another process is made up for -- the same
   slices the blocking waits sleep in.
7. **Fork.**  The hub belongs to a process: a forked child starts with none (an
   ``os.register_at_fork`` hook) and makes its own on first use; the parent's entries
   stay the parent's.

Fallback seam: ``_Shard`` waits through ``_wait_words``; where ``futex_waitv`` is
missing (not Linux, a kernel before 5.16: ``_core.wait_many`` answers -3) shards hold
one entry each and sleep with ``_core.wait_address`` (``shoal_wait32``: a futex on
Linux, bounded polling elsewhere) in 50 ms slices: one thread per distinct word.

Names: the awaitable twin of a blocking method ``m`` is ``m_async`` (``get_async``,
``put_async``, ``get_many_async``, ``put_many_async``, ``join_async``,
``acquire_async``, ``wait_async``), plus ``async with`` on locks and semaphores and
``async for`` on queues.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _core

if TYPE_CHECKING:
    import asyncio

__all__ = ["BLOCKED", "hub_threads", "resolve_soon", "wait"]

# the sides of an object (a ring has three words; the others one)
CONSUMERS, PRODUCERS, JOINERS = 0, 1, 2
WORDS_PER_SHARD = 127  # futex_waitv's 128, less the shard's own word
_SLICE_S = 0.2
_LOCK_SLICE_S = 0.05
_FALLBACK_SLICE_S = 0.05


class _Blocked:
    __slots__ = ()

    def __repr__(self) -> str:
        return "BLOCKED"


#: what an attempt returns when the operation would block
BLOCKED: Any = _Blocked()


class _Waiter:
    __slots__ = ("future", "loop", "woken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] | None = None
        self.woken = False  # holds a wake-up it has not used yet (the baton)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def resolve_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Resolve ``future`` (with None) on its ``loop``, from any thread; nothing if it is
    done by then or the loop is closed (nobody awaits it any more)."""
    try:
        loop.call_soon_threadsafe(_resolve, future)
    except RuntimeError:  # its loop is closed
        pass


class _Entry:
    """This process registered once as a waiter of one word of one object."""

    __slots__ = (
        "addr",
        "armed",
        "broadcast",
        "expected",
        "fixed",
        "key",
        "obj",
        "registered",
        "shard",
        "side",
        "slice",
        "slot",
        "waiters",
    )

    def __init__(self, obj: Any, side: int, broadcast: bool, fixed: bool, slice_s: float) -> None:
        self.obj = obj
        self.side = side
        self.key = (id(obj), side)
        self.broadcast = broadcast
        self.fixed = fixed  # the word is a value that is 0 while blocked (sem, event)
        self.slice = slice_s
        self.addr, self.expected, self.slot = obj._aio_register(side)
        self.armed = True
        self.waiters: deque[_Waiter] = deque()
        self.shard: _Shard | None = None
        self.registered = True

    def unregister(self) -> None:
        if not self.registered:
            return
        self.registered = False
        try:
            self.obj._aio_unregister(self.side, self.slot)
        except Exception:  # closed meanwhile (forget() runs first on close)
            pass


class _Shard:
    """One hub thread: waits on up to WORDS_PER_SHARD entries' words at once."""

    def __init__(self, hub: _Hub, capacity: int) -> None:
        self.hub = hub
        self.capacity = capacity
        self.entries: list[_Entry] = []
        self._own = mmap.mmap(-1, mmap.PAGESIZE)
        self._own_addr = _core.address_of(self._own, 0)
        self.thread = threading.Thread(target=self._run, name="shoal-aio-hub", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        """Tell the thread its set of armed entries changed."""
        _core.fetch_add32(self._own, 0, 1)
        _core.wake32(self._own, 0, 1)

    def _wait_words(self, addrs: list[int], expected: list[int], timeout: float | None) -> int:
        """The seam: wait on all words; index woken, -1 re-check, -2 timeout."""
        if self.capacity > 1:
            return _core.wait_many(addrs, expected, timeout)
        if len(addrs) == 1:  # the fallback: idle, nothing to wait on but our own word
            return 0 if _core.wait_address(addrs[0], expected[0], _FALLBACK_SLICE_S) else -2
        slice_s = min(timeout or _FALLBACK_SLICE_S, _FALLBACK_SLICE_S)
        woke = _core.wait_address(addrs[1], expected[1], slice_s)
        return 1 if woke else -2

    def _run(self) -> None:
        hub = self.hub
        while True:
            with hub.lock:
                if _HUB is not hub:  # a forked child's copy, or the hub was reset
                    return
                own = _core.load32(self._own, 0)
                armed = [e for e in self.entries if e.armed]
                addrs = [self._own_addr] + [e.addr for e in armed]
                expected = [own] + [0 if e.fixed else e.expected for e in armed]
                timeout = min((e.slice for e in armed), default=None)
            r = self._wait_words(addrs, expected, timeout)
            if r == 0 and not armed:
                continue
            woken = armed[r - 1] if 0 < r <= len(armed) else None
            with hub.lock:
                for e in armed:
                    if not e.armed or e.shard is not self:
                        continue
                    try:
                        value = e.obj._aio_word(e.side)
                    except Exception:  # closed: the waiters' retry raises ClosedError
                        value = None
                    changed = value is None or (value != 0 if e.fixed else value != e.expected)
                    if changed or r == -2 or e is woken:  # (woken: a set-and-clear pulse)
                        if value is not None and not e.fixed:
                            e.expected = value
                        hub.fire(e)


class _Hub:
    """This process's waits: entries by (object, side), in shards."""

    def __init__(self) -> None:
        # re-entrant: a handle closed by the garbage collector (any allocation under
        # the lock can run it) calls forget(), which takes the lock again
        self.lock = threading.RLock()
        self.entries: dict[tuple[int, int], _Entry] = {}
        self.shards: list[_Shard] = []
        self.capacity = WORDS_PER_SHARD if _futex_waitv_works() else 1

    # ---- called with the lock held ---------------------------------------------------
    def wake(self, w: _Waiter) -> None:
        w.woken = True
        fut = w.future
        if fut is not None and not fut.done():
            resolve_soon(w.loop, fut)

    def fire(self, e: _Entry) -> None:
        e.armed = False
        if not e.waiters:
            return
        if e.broadcast:
            for w in e.waiters:
                self.wake(w)
        else:
            self.wake(e.waiters[0])

    def join(
        self, obj: Any, side: int, w: _Waiter, broadcast: bool, fixed: bool, slice_s: float
    ) -> _Entry:
        key = (id(obj), side)
        e = self.entries.get(key)
        if e is None or e.obj is not obj:
            e = _Entry(obj, side, broadcast, fixed, slice_s)
            self.entries[key] = e
            shard = next((s for s in self.shards if len(s.entries) < s.capacity), None)
            if shard is None:
                shard = _Shard(self, self.capacity)
                self.shards.append(shard)
            e.shard = shard
            shard.entries.append(e)
            shard.poke()
        e.waiters.append(w)
        return e

    def arm(self, e: _Entry) -> None:
        if not e.armed:
            e.armed = True
            if e.shard is not None:
                e.shard.poke()

    def leave(self, e: _Entry, w: _Waiter, succeeded: bool) -> None:
        try:
            e.waiters.remove(w)
        except ValueError:
            pass
        if not e.waiters:
            if self.entries.get(e.key) is e:
                del self.entries[e.key]
            if e.shard is not None:
                e.shard.entries.remove(e)
                e.shard.poke()
                e.shard = None
            e.unregister()
            return
        if e.broadcast:
            return
        # hand the baton on: after a success (there may be more), or when the leaver held
        # an unused wake-up, or whenever nobody listens for this word any more
        if (succeeded or w.woken or not e.armed) and not e.waiters[0].woken:
            self.wake(e.waiters[0])


_HUB: _Hub | None = None
_HUB_LOCK = threading.Lock()
_WAITV: bool | None = None


def _futex_waitv_works() -> bool:
    global _WAITV
    if _WAITV is None:
        probe = mmap.mmap(-1, mmap.PAGESIZE)
        try:
            # a word that differs: futex_waitv answers at once (-1), or -3 without it
            _WAITV = _core.wait_many([_core.address_of(probe, 0)], [1], 0) != -3
        finally:
            probe.close()
    return _WAITV


def _hub() -> _Hub:
    global _HUB
    hub = _HUB
    if hub is None:
        with _HUB_LOCK:
            if _HUB is None:
                _HUB = _Hub()
            hub = _HUB
    return hub


def _after_fork_in_child() -> None:
    global _HUB, _HUB_LOCK
    _HUB = None  # the parent's threads did not come along; its entries stay its own
    _HUB_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _stop_hub(timeout: float = 5.0) -> None:
    """Stop this process's hub threads (tests: a test must not leave threads behind).

    Only with nothing awaited: entries still registered are unregistered, and their
    coroutines would never be woken.
    """
    global _HUB
    with _HUB_LOCK:
        hub, _HUB = _HUB, None
    if hub is None:
        return
    with hub.lock:
        for e in list(hub.entries.values()):
            e.unregister()
        hub.entries.clear()
        shards = list(hub.shards)
    for shard in shards:
        shard.poke()
    for shard in shards:
        shard.thread.join(timeout)


def forget(obj: Any) -> None:
    """``obj``'s handle is closing: unregister this process from it while its memory is
    still mapped, and wake its awaiting coroutines (their retry raises ClosedError)."""
    hub = _HUB
    if hub is None:
        return
    with hub.lock:
        for side in (CONSUMERS, PRODUCERS, JOINERS):
            e = hub.entries.get((id(obj), side))
            if e is None or e.obj is not obj:
                continue
            del hub.entries[e.key]
            if e.shard is not None:
                e.shard.entries.remove(e)
                e.shard.poke()
                e.shard = None
            e.unregister()
            e.armed = False
            for w in e.waiters:
                hub.wake(w)


def hub_threads() -> int:
    """How many hub threads this process runs now."""
    hub = _HUB
    return 0 if hub is None else sum(1 for s in hub.shards if s.thread.is_alive())


async def wait(
    obj: Any,
    side: int,
    attempt: Callable[[], Any],
    timeout: float | None = None,
    *,
    broadcast: bool = False,
    fixed: bool = False,
    slice_s: float = _SLICE_S,
) -> Any:
    """Await ``attempt()`` until it returns something other than :data:`BLOCKED`.

    ``attempt`` is the non-blocking operation (called on the loop's thread); it has
    already been tried once by the caller.  Raises :class:`TimeoutError` when
    ``timeout`` (seconds) runs out; whatever ``attempt`` raises propagates.
    """
    import asyncio  # here: importing shoal must not load asyncio (shoal.Lock() stays cheap)

    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + max(timeout, 0.0)
    hub = _hub()
    w = _Waiter(loop)
    with hub.lock:
        e = hub.join(obj, side, w, broadcast, fixed, slice_s)
    succeeded = False
    try:
        while True:
            with hub.lock:
                w.woken = False
                w.future = None
            result = attempt()
            if result is not BLOCKED:
                succeeded = True
                return result
            fut: asyncio.Future[None] = loop.create_future()
            with hub.lock:
                if w.woken:  # woken while it tried: try again at once
                    continue
                w.future = fut
                hub.arm(e)
            if deadline is None:
                await fut
            else:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                try:
                    await asyncio.wait_for(fut, left)
                except (asyncio.TimeoutError, TimeoutError):
                    raise TimeoutError from None
    finally:
        with hub.lock:
            w.future = None
            hub.leave(e, w, succeeded)
