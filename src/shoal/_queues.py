"""Queues in shared memory: Queue, SimpleQueue and JoinableQueue.

Data flow of one ``put``/``get``::

    producer process                        shared memory                   consumer process
    put(obj) -- pickle (protocol 5) -----> ring record ------------------> get() -- unpickle
             \\_ big buffers ------------> transit segment --- mapped ---/   (zero copy)

* ``put`` pickles in the caller, so an unpicklable object raises
  :class:`~shoal.SerializationError` right there and nothing is enqueued.  There is
  no feeder thread: when ``put`` returns, the item is in shared memory.
* The ring (``_core.Ring``) is a multi-producer multi-consumer queue of byte records
  whose publish and consume are single stores, so a producer or consumer SIGKILLed at
  any point loses or duplicates nothing that was fully put.  Its geometry is read
  once per handle (``_init``/``_check``) and every position is checked against it, so
  memory written to outside shoal raises :class:`~shoal.LayoutError` (#10).
* Records bigger than half the ring, and out-of-band buffers (numpy arrays…) of at
  least ``ZERO_COPY_THRESHOLD`` bytes, travel in a transit segment of their own
  (see ``shoal._serialize``).
* End of stream: ``shutdown()`` (Python 3.13's ``queue.Queue.shutdown``): further puts
  raise :class:`~shoal.ShutDown`, gets drain what is left and then raise it, and
  iterating over a queue stops there.
"""

from __future__ import annotations

import errno
import operator
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from . import _aio, _core
from ._errors import LayoutError, ShutDown
from ._handle import OBJECT_HEADER_SIZE, SharedObject, object_size
from ._memory import Segment, keeper_id, report_unraisable
from ._record import KEPT_PREFIX_SIZE, TRANSIT_RECORD_SIZE
from ._serialize import (
    discard,
    dumps,
    dumps_kept,
    kept_record,
    pack,
)
from ._snapshot import snapshot

__all__ = ["JoinableQueue", "Queue", "QueueStatistics", "SimpleQueue"]
# what the shoal.queues shim exports: multiprocessing.queues' names
QUEUES_ALL = ["JoinableQueue", "Queue", "SimpleQueue"]

_T = TypeVar("_T")

DEFAULT_CAPACITY = 1 << 20
# the smallest ring whose largest inline record (half the ring, less a record header)
# still holds a transit record, so that any message can travel
MIN_RING_BYTES = 128
assert MIN_RING_BYTES // 2 - 8 >= KEPT_PREFIX_SIZE + TRANSIT_RECORD_SIZE
# how long close() waits for this handle's calls in other threads to leave; they wake at
# once, so only one stuck on a lock whose holder is frozen can take longer
_CLOSE_WAIT_S = 5.0
_MAX_ITEMS = 2**32 - 1


@snapshot
class QueueStatistics:
    """A snapshot of a queue (from ``statistics()``).

    Attributes:
        items: items in the queue.
        bytes_used: bytes of the ring they occupy.
        capacity: bytes the ring holds.
        maxsize: the item limit, 0 for none.
        producers_waiting: puts blocked for room.
        consumers_waiting: gets blocked for items.
        shut_down: whether ``shutdown()`` was called.
        unfinished_tasks: items put and not yet marked done (JoinableQueue; else
            the count of items ever put and not marked done is meaningless and 0).
    """

    items: int
    bytes_used: int
    capacity: int
    maxsize: int
    producers_waiting: int
    consumers_waiting: int
    shut_down: bool
    unfinished_tasks: int


class Queue(_core.Ring, SharedObject, Generic[_T]):
    """A process-shared FIFO queue, like :class:`multiprocessing.Queue`.

    Args:
        maxsize: the most items it holds; ``put`` blocks (or raises
            :class:`queue.Full`) beyond it.  0 or less: no item limit.
        capacity: bytes of shared memory for items in flight (rounded up to a power of
            two, at least 128; default 1 MiB).  Items bigger than half of it still
            travel, in a segment of their own.

    It pickles as a small handle: pass it to ``Pool`` tasks, put it on another queue,
    give it to processes started later.  Any number of producers and consumers.
    """

    def __init__(self, maxsize: int = 0, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if maxsize > _MAX_ITEMS:
            raise ValueError(f"maxsize must be at most {_MAX_ITEMS}")
        if not 64 <= capacity <= 2**31:
            raise ValueError(f"capacity must be between 64 bytes and 2 GiB, got {capacity}")
        # at least MIN_RING_BYTES: every ring must carry a transit record (#3)
        ring_bytes = MIN_RING_BYTES
        while ring_bytes < capacity:
            ring_bytes <<= 1
        self._maxsize = max(maxsize, 0)
        self._set_size(ring_bytes)
        self._create()
        self._init(ring_bytes, self._maxsize)

    def _set_size(self, ring_bytes: int) -> None:
        self._ring_bytes = ring_bytes
        self._PAYLOAD_SIZE = _core.RING_HEADER_SIZE + ring_bytes

    def _bind_payload(self) -> None:
        self._bind(self._mapping, self._payload_offset, self._PAYLOAD_SIZE)
        # the name its records' references are kept under (shoal._memory)
        self._keeper_id = keeper_id(self._segment.name)

    def _handle_state(self) -> Any:
        return (self._ring_bytes, self._maxsize)

    def _restore_state(self, state: Any) -> None:
        ring_bytes, self._maxsize = state
        self._set_size(ring_bytes)

    def _attach(self, handle: Any, state: Any) -> None:
        super()._attach(handle, state)
        if not self._check():
            self.close()
            raise LayoutError(
                errno.EINVAL,
                "the shared memory this handle names does not hold a shoal queue: it is "
                "corrupt (was it written to outside shoal?)",
            )

    @classmethod
    def _unreferenced(cls, segment: Segment, offset: int) -> None:
        # a process that died held its last references: what is still queued goes, as
        # when a last handle is closed (the ring's geometry is checked in its header;
        # the object's blocks bound the mapping it may claim)
        mapping = segment._mmap
        if mapping is not None:
            _discard_queued(mapping, offset + OBJECT_HEADER_SIZE, object_size(segment, offset))

    def _track(self) -> None:
        super()._track()
        # The last handle anywhere discards what is still queued on its way out: a
        # record whose data travels in a transit segment would otherwise stay in
        # /dev/shm after the queue is gone, until some later reaper sweep (#3).  The
        # release itself is wrapped, so close(), garbage collection and the exit hook
        # all pass through here.
        self._replace_release(
            _release_queue,
            self._segment,
            self._header_offset,
            self._payload_offset,
            self._PAYLOAD_SIZE,
            then_own=True,
        )

    # ---- putting -------------------------------------------------------------------------

    def _record(self, obj: Any, kept: bool = True) -> bytes:
        """The ring record of ``obj``: inline, or in a transit segment.  The references
        of shoal handles in it are kept by this queue (``shoal._memory``), unless not
        ``kept`` (a pickle that travels some other way)."""
        if not kept:
            data, buffers = dumps(obj)
        else:
            keeper = self._keeper_id
            data, buffers, kept = dumps_kept(obj, keeper)
        room = self._max_payload - (KEPT_PREFIX_SIZE if kept else 0)
        record = data if buffers is None and len(data) <= room else None
        if record is None:
            record = pack(data, buffers, self._handle)
        return kept_record(record, keeper) if kept else record

    def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` on the queue, waiting up to ``timeout`` seconds for room.

        ``obj`` is pickled here, before anything is enqueued (None, bool, int, float,
        str and bytes, and tuples of them, skip pickle: they are copied as they are).

        Raises:
            SerializationError: ``obj`` cannot be pickled (nothing was enqueued).
            queue.Full: no room within the timeout (or at once, if ``block`` is false).
            ShutDown: the queue was shut down.
            ClosedError: this process closed the queue.
        """
        if self._put_fast(obj, block, timeout):
            return
        record = self._record(obj)
        try:
            self._put_bytes(record, block, timeout)
        except BaseException:
            discard(record)
            raise

    def put_nowait(self, obj: _T) -> None:
        """``put(obj, block=False)``."""
        self.put(obj, False)

    def put_many(
        self, items: Iterable[_T], block: bool = True, timeout: float | None = None
    ) -> int:
        """Put every item of ``items``, in order, in as few operations as possible.

        All items are pickled before the first is enqueued, so an unpicklable one
        raises with nothing enqueued.

        Returns:
            the number of items put.

        Raises:
            queue.Full: the timeout ran out with only some put; the exception's
                ``items_put`` says how many (they are in the queue, in order).
            SerializationError, ShutDown, ClosedError: as for :meth:`put`.
        """
        try:
            return self._put_many(items, self._record, block, timeout)
        except BaseException as exc:
            for record in getattr(exc, "_unsent_records", ()):
                discard(record)
            raise

    # ---- getting -------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """Remove and return the next item, waiting up to ``timeout`` seconds for one.

        Raises:
            queue.Empty: nothing arrived within the timeout (or at once).
            ShutDown: the queue was shut down and is drained.
            ClosedError: this process closed the queue.
        """
        return self._get(block, timeout)

    def get_nowait(self) -> _T:
        """``get(block=False)``."""
        return self._get(False)

    def get_many(
        self, max_items: int = 1024, block: bool = True, timeout: float | None = None
    ) -> list[_T]:
        """Remove and return up to ``max_items`` items in one operation.

        Waits (up to ``timeout``) for the first item only, then takes whatever else
        is there, up to ``max_items``.

        Raises:
            queue.Empty, ShutDown, ClosedError: as for :meth:`get`.  If an item cannot
                be unpickled, its error is raised after the others were taken; they
                are on the exception as ``items``.
        """
        return self._get_many(max_items, block, timeout)

    def __iter__(self) -> Iterator[_T]:
        """Yield items until the queue is shut down and drained."""
        while True:
            try:
                yield self.get()
            except ShutDown:
                return

    # ---- awaiting (asyncio: shoal._aio, #14) ----------------------------------------------

    async def get_async(self, timeout: float | None = None) -> _T:
        """Awaitable :meth:`get`: remove and return the next item, waiting for one.

        The event loop is never blocked and no thread is started per call (see
        ``docs/asyncio.md``).  Cancelling the awaiting task takes nothing from the queue.

        Raises:
            queue.Empty: nothing arrived within ``timeout`` seconds.
            ShutDown, ClosedError: as for :meth:`get`.
        """
        try:
            return self._get(False)
        except queue.Empty:
            pass

        def attempt() -> Any:
            try:
                return self._get(False)
            except queue.Empty:
                return _aio.BLOCKED

        try:
            return await _aio.wait(self, _aio.CONSUMERS, attempt, timeout)
        except TimeoutError:
            raise queue.Empty from None

    async def put_async(self, obj: _T, timeout: float | None = None) -> None:
        """Awaitable :meth:`put`: put ``obj``, waiting for room without blocking the loop.

        Raises:
            queue.Full: no room within ``timeout`` seconds (nothing was enqueued).
            SerializationError, ShutDown, ClosedError: as for :meth:`put`.
        """
        try:
            return self.put(obj, False)
        except queue.Full:
            pass

        def attempt() -> Any:
            try:
                return self.put(obj, False)
            except queue.Full:
                return _aio.BLOCKED

        try:
            await _aio.wait(self, _aio.PRODUCERS, attempt, timeout)
        except TimeoutError:
            raise queue.Full from None

    async def get_many_async(self, max_items: int = 1024, timeout: float | None = None) -> list[_T]:
        """Awaitable :meth:`get_many`: wait for the first item, take up to ``max_items``.

        Raises:
            queue.Empty, ShutDown, ClosedError: as for :meth:`get_async`.
        """
        try:
            return self._get_many(max_items, False)
        except queue.Empty:
            pass

        def attempt() -> Any:
            try:
                return self._get_many(max_items, False)
            except queue.Empty:
                return _aio.BLOCKED

        try:
            return await _aio.wait(self, _aio.CONSUMERS, attempt, timeout)
        except TimeoutError:
            raise queue.Empty from None

    async def put_many_async(self, items: Iterable[_T], timeout: float | None = None) -> int:
        """Awaitable :meth:`put_many`: put every item, in order, waiting for room.

        Returns:
            the number of items put.

        Raises:
            queue.Full: ``timeout`` ran out with only some put; ``items_put`` on the
                exception says how many (they are in the queue, in order).
            SerializationError, ShutDown, ClosedError: as for :meth:`put_many`.
        """
        pending = list(items)
        done = 0

        def attempt() -> Any:
            nonlocal done
            try:
                done += self.put_many(pending[done:], False)
            except queue.Full as exc:
                done += getattr(exc, "items_put", 0)
                if done < len(pending):
                    return _aio.BLOCKED
            return done

        if attempt() is not _aio.BLOCKED:
            return done
        try:
            return await _aio.wait(self, _aio.PRODUCERS, attempt, timeout)
        except TimeoutError:
            full = queue.Full(f"only {done} of {len(pending)} items were put")
            full.items_put = done  # type: ignore[attr-defined]
            raise full from None

    def __aiter__(self) -> AsyncIterator[_T]:
        """``async for item in q``: items until the queue is shut down and drained."""
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[_T]:
        while True:
            try:
                item = await self.get_async()
            except ShutDown:
                return
            yield item

    # ---- state ---------------------------------------------------------------------------

    def qsize(self) -> int:
        """The number of items in the queue (works on every platform)."""
        return self._qsize()

    def empty(self) -> bool:
        """True if the queue holds no item (a snapshot: others may put at any time)."""
        return self._qsize() == 0

    def full(self) -> bool:
        """True if the queue holds ``maxsize`` items (never true without a maxsize)."""
        items = self._qsize()  # first: a closed queue raises ClosedError, bounded or not
        return bool(self._maxsize) and items >= self._maxsize

    @property
    def maxsize(self) -> int:
        """The item limit given at creation (0: none)."""
        return self._maxsize

    def shutdown(self, immediate: bool = False) -> None:
        """End the stream, for every process using the queue.

        Afterwards ``put`` raises :class:`~shoal.ShutDown`; ``get`` returns what is
        left and then raises it; iteration stops; blocked calls wake up.  With
        ``immediate=True`` what is left is discarded first.
        """
        self._shutdown()
        if immediate:
            self._drain()

    def _drain(self) -> int:
        return _discard_records(self)

    def _unbind_payload(self) -> None:
        _aio.forget(self)  # awaiting coroutines: unregistered while the memory is there
        if self._busy:
            # another thread is inside a call on this very handle: make it leave (with
            # ClosedError) before the memory goes, or it would wake up in whatever is
            # allocated there next (#3)
            self._begin_close()
            deadline = time.monotonic() + _CLOSE_WAIT_S
            while self._busy and time.monotonic() < deadline:
                time.sleep(0.001)
        self._unbind()

    def close(self) -> None:
        """Release this process's handle; the queue lives on for the others.

        Afterwards, this handle raises :class:`~shoal.ClosedError` (a ValueError,
        as multiprocessing's closed queue does), and so do calls of this handle that
        other threads are blocked in.  Unlike multiprocessing there is no
        feeder thread, so nothing is lost by closing: items put are already shared.
        """
        SharedObject.close(self)

    def join_thread(self) -> None:
        """Compatibility no-op: shoal queues have no feeder thread to wait for."""

    def cancel_join_thread(self) -> None:
        """Compatibility no-op: shoal queues have no feeder thread to wait for."""

    def statistics(self) -> QueueStatistics:
        """Return a :class:`QueueStatistics` snapshot."""
        return QueueStatistics(
            items=self._qsize(),
            bytes_used=self._bytes_used,
            capacity=self._capacity,
            maxsize=self._maxsize,
            producers_waiting=self._producers_waiting,
            consumers_waiting=self._consumers_waiting,
            shut_down=bool(self._is_shutdown),
            unfinished_tasks=self._unfinished,
        )

    def __repr__(self) -> str:
        name = f"shoal.{type(self).__name__}"
        if self.closed:
            return f"<{name} closed>"
        st = self.statistics()
        limit = f"/{st.maxsize}" if st.maxsize else ""
        state = ", shut down" if st.shut_down else ""
        return f"<{name} {st.items}{limit} items, {st.bytes_used}/{st.capacity} bytes{state}>"


def _discard_records(ring: _core.Ring) -> int:
    """Take every record left in ``ring``; free what each holds.

    One record that cannot be let go of (a transit record whose segment name is
    garbage: memory written to outside shoal) does not keep the others in the ring;
    the first such error is raised, as a LayoutError, once the ring is empty.
    """
    count, failure = 0, None
    while True:
        try:
            records = ring._get_many_bytes(1024, False)
        except (queue.Empty, ShutDown):
            break
        for record in records:
            if not record:  # an empty record holds nothing (only the raw byte API makes one)
                continue
            try:
                discard(record)
            except Exception as exc:
                failure = failure or exc
        count += len(records)
    if failure is not None:
        raise LayoutError(
            errno.EINVAL,
            f"a record drained from the queue could not be discarded (is the queue's "
            f"memory corrupt?): {failure!r}",
        ) from failure
    return count


def _release_queue(
    segment: Segment,
    header_offset: int,
    payload_offset: int,
    payload_size: int,
    release: Callable[..., None],
    args: tuple[Any, ...],
) -> None:
    """Finalizer of a queue handle: if it is the last handle, empty the ring; release it.

    "Last" is read from the shared reference count before the release drops it.  Two
    processes letting go at the same instant may each see the other's handle and skip
    the discard; the reaper then removes the transit segments once the queue's memory
    is gone, as it does for queues whose last holder was killed.
    """
    try:
        mapping = segment._mmap
        if mapping is not None and _core.load64(mapping, header_offset) == 1:
            _discard_queued(mapping, payload_offset, payload_size)
    except Exception as exc:  # the release below must happen whatever went wrong
        report_unraisable(exc)
    finally:
        release(*args)


def _discard_queued(mapping: Any, payload_offset: int, payload_size: int) -> None:
    """Empty the ring at ``payload_offset`` (a queue nobody will use any more)."""
    ring = _core.Ring()
    ring._bind(mapping, payload_offset, payload_size)
    try:
        if ring._check():
            _discard_records(ring)
    finally:
        ring._unbind()


class SimpleQueue(Queue[_T]):
    """An unbounded queue, like :class:`multiprocessing.SimpleQueue`.

    Has ``get``, ``put``, ``empty`` and ``close`` (and everything :class:`Queue` has).
    """

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__(0, capacity=capacity)


class JoinableQueue(Queue[_T]):
    """A queue whose consumers say when each item is done, like
    :class:`multiprocessing.JoinableQueue`.

    Every ``put`` counts an unfinished task; ``task_done()`` marks one finished;
    ``join()`` waits until none is left.
    """

    def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` and count one more unfinished task (see :meth:`Queue.put`)."""
        # counted before it is visible, so a fast consumer's task_done never finds
        # the count at zero
        self._add_unfinished(1)
        try:
            super().put(obj, block, timeout)
        except BaseException:
            self._task_done()
            raise

    def put_many(
        self, items: Iterable[_T], block: bool = True, timeout: float | None = None
    ) -> int:
        """Put every item and count each as an unfinished task (see :meth:`Queue.put_many`)."""
        items = list(items)
        self._add_unfinished(len(items))
        try:
            return super().put_many(items, block, timeout)
        except BaseException as exc:
            for _ in range(len(items) - getattr(exc, "items_put", 0)):
                self._task_done()
            raise

    def task_done(self) -> None:
        """Mark one item taken from the queue as processed.

        Raises:
            ValueError: called more times than items were put.
        """
        self._task_done()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every item put has been marked done.

        Args:
            timeout: seconds to wait at most (None: for ever).  The standard library
                has no timeout here; shoal adds one.

        Returns:
            True when no task is unfinished, False if the timeout ran out first.
        """
        return self._join(timeout)

    async def join_async(self, timeout: float | None = None) -> bool:
        """Awaitable :meth:`join`: wait until every item put has been marked done.

        Returns:
            True when no task is unfinished, False if ``timeout`` ran out first.
        """
        if self._unfinished == 0:
            return True

        def attempt() -> Any:
            return True if self._unfinished == 0 else _aio.BLOCKED

        try:
            return await _aio.wait(self, _aio.JOINERS, attempt, timeout, broadcast=True)
        except TimeoutError:
            return False

    def _drain(self) -> int:
        count = super()._drain()
        for _ in range(count):
            try:
                self._task_done()
            except ValueError:
                break
        return count


# ---- the pool's transport (internal: used by shoal._pool) --------------------------------
# A Queue doubles as a ring between a pool and its workers (the records and the claim
# words are in shoal._pool._protocol).  Besides a Queue's public methods, these are the
# only ways the pool touches one: declared here, so that nothing reaches into a
# queue's private members from another layer.  Each is the queue's (or the C ring's,
# _core.pyi) own method or attribute, taken once at import: a call through them is a
# call of that method, with no Python frame in between (they serve the workers' and
# the result thread's hot paths).


def claimer(queue: Queue[Any]) -> Callable[..., Any]:
    """``queue``'s claiming get, bound: ``claim(buffer, offset, block=True,
    timeout=None)`` stores ``CLAIMED | ordinal`` (the record's ordinal: the records
    taken before it, modulo 2**32) as a 64-bit word at ``buffer[offset:]``, then takes
    the record and returns it decoded (None for a ``None`` put; ``queue.Empty`` when
    not blocking and empty).  The word is written before the record leaves the ring:
    a consumer killed in between leaves it behind (``_core.Ring._get_claim``)."""
    return queue._get_claim


def batch_getter(queue: Queue[Any]) -> Callable[..., list[Any]]:
    """``queue``'s ``get_many`` without its checks, bound: ``get(max_items, block=True,
    timeout=None)`` takes up to ``max_items`` items at once (``_core.Ring._get_many``)."""
    return queue._get_many


#: ``put_fast(queue, item, block=True, timeout=None) -> bool``: put ``item`` if the C
#: codec encodes it (a tuple of up to ``FAST_TUPLE_MAX`` scalars, say), without a
#: pickle; False (nothing put) where it does not (``_core.Ring._put_fast``).
put_fast = _core.Ring._put_fast

#: ``encode(queue, obj, kept=True) -> bytes``: the ring record of ``obj`` as ``put``
#: makes it (inline, or in a transit segment), for a record that travels later or
#: inside another: ``kept=False`` for one that does not travel on this queue.
encode = Queue._record

#: ``records_taken(queue) -> int``: how many records ever left the ring, modulo 2**32
#: (the next record's ordinal: see ``claimer``).
records_taken: Callable[[Queue[Any]], int] = operator.attrgetter("_taken")


def pack_for(queue: Queue[Any], data: bytes, buffers: Any) -> bytes:
    """The record of a pickle with out-of-band ``buffers`` (``_serialize.dumps``), made
    as ``queue`` makes its own: the buffers in a transit segment."""
    return pack(data, buffers, queue._handle)
