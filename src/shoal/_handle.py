"""Shared objects: small structs in shared memory that pickle as handles.

Ten thousand locks must not cost ten thousand segments, so small objects live in
*arenas*: segments of ARENA_SIZE bytes cut into 64-byte blocks, handed out by a
bitmap guarded by a process-shared mutex.  Objects too big for an arena get a segment
of their own.  Layout of an arena (after the segment header)::

    +0    shoal_mutex guarding the bitmap (40 bytes)
    +48   u32 block size, u32 block count
    +56   u64 blocks in use
    +64   u64 next serial
    +128  bitmap, one bit per block, rounded up to 64 bytes
    ...   blocks, from the next 64-byte boundary

Every allocation starts with a 16-byte object header::

    +0    u64 reference count: live handles, in every process
    +8    u32 serial (unique per allocation in its segment), u32 blocks in the run
    +16   the object's own struct

A handle is ``(segment name, header offset, serial)``.  Unpickling one attaches the
segment, checks the serial (a handle to a freed block is refused, never aliased to
its new tenant) and increments the count; closing or collecting the object
decrements it, and the last one frees the blocks.  A process that dies holding
handles never decrements: its blocks stay allocated until the arena itself goes,
which happens when every process holding the arena has closed it or died.

A forked child inherits live objects without unpickling them, so after a fork the
child takes a reference on each object it inherited.
"""

from __future__ import annotations

import os
import threading
import weakref
from multiprocessing import util
from typing import Any, ClassVar

from . import _core
from ._errors import ClosedError, SegmentNotFoundError
from ._memory import HEADER_SIZE, KIND_ARENA, KIND_DATA, Segment

__all__ = ["ARENA_SIZE", "BLOCK_SIZE", "SharedObject"]

ARENA_SIZE = 256 * 1024
BLOCK_SIZE = 64
OBJECT_HEADER_SIZE = 16

_ARENA_LOCK = HEADER_SIZE
_ARENA_GEOMETRY = HEADER_SIZE + 48
_ARENA_USED = HEADER_SIZE + 56
_ARENA_SERIAL = HEADER_SIZE + 64
_ARENA_BITMAP = HEADER_SIZE + 128
_ARENA_LOCK_TIMEOUT = 30.0


def _arena_geometry() -> tuple[int, int, int]:
    """(block count, bitmap bytes, first block offset) for ARENA_SIZE."""
    count = (ARENA_SIZE - _ARENA_BITMAP) // BLOCK_SIZE
    while True:
        bitmap = -(-count // 512) * 64  # bits rounded up to whole 64-byte lines
        first = _ARENA_BITMAP + bitmap
        if first + count * BLOCK_SIZE <= ARENA_SIZE:
            return count, bitmap, first
        count -= 1


_BLOCK_COUNT, _BITMAP_BYTES, _FIRST_BLOCK = _arena_geometry()
# bigger than this and an object gets a segment of its own
MAX_ARENA_OBJECT = (_BLOCK_COUNT // 4) * BLOCK_SIZE - OBJECT_HEADER_SIZE


class _Arena:
    """The allocator's view of one arena segment (any process may free into it)."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.lock = _core.Mutex()
        self.lock._bind(segment._mmap, _ARENA_LOCK, False, False)

    @classmethod
    def create(cls) -> _Arena:
        segment = Segment.create(ARENA_SIZE - HEADER_SIZE, KIND_ARENA)
        buf = segment.buffer
        buf[_ARENA_GEOMETRY : _ARENA_GEOMETRY + 8] = BLOCK_SIZE.to_bytes(
            4, "little"
        ) + _BLOCK_COUNT.to_bytes(4, "little")
        return cls(segment)

    @classmethod
    def of(cls, segment: Segment) -> _Arena:
        arena = getattr(segment, "_arena", None)
        if arena is None:
            arena = segment._arena = cls(segment)
        return arena

    def _locked(self) -> None:
        if not self.lock.acquire(True, _ARENA_LOCK_TIMEOUT):
            raise RuntimeError(
                f"allocation lock of {self.segment.name} stayed held for "
                f"{_ARENA_LOCK_TIMEOUT:.0f} s; the arena looks corrupt"
            )

    def used(self) -> int:
        return _core.load64(self.segment.buffer, _ARENA_USED)

    def allocate(self, nbytes: int) -> tuple[int, int] | None:
        """Reserve a zeroed run for nbytes (header included): (offset, serial) or None."""
        nblocks = -(-nbytes // BLOCK_SIZE)
        buf = self.segment.buffer
        self._locked()
        try:
            if self.used() + nblocks > _BLOCK_COUNT:
                return None
            bitmap = buf[_ARENA_BITMAP : _ARENA_BITMAP + _BITMAP_BYTES]
            bits = int.from_bytes(bitmap, "little")
            free = ~bits & ((1 << _BLOCK_COUNT) - 1)
            runs = free
            for shift in range(1, nblocks):  # bit i set: blocks i .. i+nblocks-1 free
                runs &= free >> shift
            if not runs:
                return None
            index = (runs & -runs).bit_length() - 1
            bits |= ((1 << nblocks) - 1) << index
            bitmap[:] = bits.to_bytes(_BITMAP_BYTES, "little")
            _core.fetch_add64(buf, _ARENA_USED, nblocks)
            serial = (_core.fetch_add64(buf, _ARENA_SERIAL, 1) + 1) & 0xFFFFFFFF
            offset = _FIRST_BLOCK + index * BLOCK_SIZE
            buf[offset : offset + nblocks * BLOCK_SIZE] = bytes(nblocks * BLOCK_SIZE)
            buf[offset + 8 : offset + 16] = serial.to_bytes(4, "little") + nblocks.to_bytes(
                4, "little"
            )
            _core.store64(buf, offset, 1)
            return offset, serial
        finally:
            self.lock.release()

    def free(self, offset: int) -> None:
        buf = self.segment.buffer
        nblocks = int.from_bytes(buf[offset + 12 : offset + 16], "little")
        index = (offset - _FIRST_BLOCK) // BLOCK_SIZE
        self._locked()
        try:
            bitmap = buf[_ARENA_BITMAP : _ARENA_BITMAP + _BITMAP_BYTES]
            bits = int.from_bytes(bitmap, "little")
            bits &= ~(((1 << nblocks) - 1) << index)
            bitmap[:] = bits.to_bytes(_BITMAP_BYTES, "little")
            buf[offset + 8 : offset + 12] = bytes(4)  # old handles no longer match
            _core.fetch_add64(buf, _ARENA_USED, -nblocks)
        finally:
            self.lock.release()


class _Allocator:
    """This process's arenas.  A forked child starts with none of its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arenas: list[_Arena] = []

    def allocate(self, nbytes: int) -> tuple[Segment, int, int]:
        """(segment, header offset, serial) of a fresh zeroed object with one reference."""
        if nbytes > MAX_ARENA_OBJECT + OBJECT_HEADER_SIZE:
            segment = Segment.create(nbytes, KIND_DATA)
            _core.store64(segment.buffer, HEADER_SIZE + 8, 1)  # serial 1, no block run
            _core.store64(segment.buffer, HEADER_SIZE, 1)
            return segment, HEADER_SIZE, 1
        with self.lock:
            for arena in self.arenas:
                found = arena.allocate(nbytes)
                if found:
                    break
            else:
                arena = _Arena.create()
                self.arenas.append(arena)
                found = arena.allocate(nbytes)
                assert found is not None
            # drop arenas nobody uses any more, keeping the one just used
            for idle in [a for a in self.arenas if a is not arena and a.used() == 0]:
                self.arenas.remove(idle)
                idle.segment.close()
            arena.segment._local_refs += 1  # the new object's reference
            return arena.segment, found[0], found[1]


_allocator = _Allocator()
_live: weakref.WeakSet[SharedObject] = weakref.WeakSet()


def _release(segment: Segment, offset: int) -> None:
    """Finalizer of a handle: drop its reference, then its hold on the segment."""
    if not segment.closed:
        _release_count_only(segment, offset)
    segment.close()


def _rebuild(cls: type[SharedObject], handle: tuple[str, int, int], state: Any) -> SharedObject:
    obj = cls.__new__(cls)
    obj._attach(handle, state)
    return obj


class SharedObject:
    """Base of objects whose state lives in shared memory and that pickle as handles.

    Subclasses set ``_PAYLOAD_SIZE``, call ``_create()`` in ``__init__`` and
    implement ``_bind_payload()`` (bind the C part to ``self._mapping`` at
    ``self._payload_offset``).  Extra state that travels with the handle comes from
    ``_handle_state()`` and returns in ``_restore_state(state)``.
    """

    _PAYLOAD_SIZE: ClassVar[int] = 0
    _segment: Segment
    _header_offset: int
    _serial: int
    _finalizer: util.Finalize | None = None

    def _create(self) -> None:
        segment, offset, serial = _allocator.allocate(OBJECT_HEADER_SIZE + self._PAYLOAD_SIZE)
        self._segment, self._header_offset, self._serial = segment, offset, serial
        self._track()
        self._bind_payload()

    def _attach(self, handle: tuple[str, int, int], state: Any) -> None:
        name, offset, serial = handle
        self._restore_state(state)  # may set the payload size the check below needs
        segment = Segment.attach(name)
        try:
            if not HEADER_SIZE <= offset <= segment.size - OBJECT_HEADER_SIZE - self._PAYLOAD_SIZE:
                raise ValueError(f"handle offset {offset} is outside segment {name}")
            if not self._take_reference(segment, offset, serial):
                raise SegmentNotFoundError(
                    2,
                    f"the shared {type(self).__name__} this handle named no longer "
                    "exists: every process holding it closed it or died",
                )
        except BaseException:
            segment.close()
            raise
        self._segment, self._header_offset, self._serial = segment, offset, serial
        self._track()
        self._bind_payload()

    @staticmethod
    def _take_reference(segment: Segment, offset: int, serial: int) -> bool:
        buf = segment.buffer
        count = _core.load64(buf, offset)
        while count:
            swapped, count = _core.cas64(buf, offset, count, count + 1)
            if swapped:
                if int.from_bytes(buf[offset + 8 : offset + 12], "little") == serial:
                    return True
                _release_count_only(segment, offset)
                return False
        return False

    def _track(self) -> None:
        self._finalizer = util.Finalize(
            self, _release, args=(self._segment, self._header_offset), exitpriority=10
        )
        _live.add(self)

    def _after_fork_in_child(self) -> None:
        if self._finalizer is not None and self._finalizer.still_active():
            # the segment's local count was inherited with the object; only the shared
            # count needs this process's reference
            _core.fetch_add64(self._segment.buffer, self._header_offset, 1)
            self._track()

    @property
    def _mapping(self) -> Any:
        return self._segment._mmap

    @property
    def _payload_offset(self) -> int:
        return self._header_offset + OBJECT_HEADER_SIZE

    def _bind_payload(self) -> None:
        raise NotImplementedError

    def _unbind_payload(self) -> None:
        self._unbind()  # type: ignore[attr-defined]

    def _handle_state(self) -> Any:
        return None

    def _restore_state(self, state: Any) -> None:
        pass

    @property
    def _handle(self) -> tuple[str, int, int]:
        return (self._segment.name, self._header_offset, self._serial)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._finalizer is None or not self._finalizer.still_active():
            raise ClosedError(f"cannot pickle a closed {type(self).__name__}")
        return (_rebuild, (type(self), self._handle, self._handle_state()))

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called in this process."""
        return self._finalizer is None or not self._finalizer.still_active()

    def close(self) -> None:
        """Release this process's handle now instead of at garbage collection.

        The shared object lives on while other handles (in this or other processes)
        exist.  Using this handle afterwards raises :class:`~shoal.ClosedError`.
        Calling it twice is harmless.
        """
        finalizer = self._finalizer
        if finalizer is not None and finalizer.still_active():
            self._unbind_payload()
            finalizer()
        _live.discard(self)


def _release_count_only(segment: Segment, offset: int) -> None:
    remaining = _core.fetch_add64(segment.buffer, offset, -1) - 1
    if remaining == 0 and segment.kind == KIND_ARENA:
        _Arena.of(segment).free(offset)


def _after_fork_in_child() -> None:
    global _allocator
    _allocator = _Allocator()
    for obj in list(_live):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
