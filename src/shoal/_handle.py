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

    +0    u64 reference count: low 32 bits, references (live handles in every
          process, plus those in flight); high 32 bits, the references in flight
    +8    u32 serial (unique per allocation in its segment)
    +12   u16 blocks in the run (0 in a segment of its own)
    +14   u16 type tag: the class that made it (``SharedObject._TYPE_TAG``), so that a
          handle naming a block of another type (a ``Lock`` handle pointed at an
          ``Event``) is refused, never bound to a struct it does not describe (#10)
    +16   the object's own struct

A handle is ``(segment name, header offset, serial)``.  Unpickling one attaches the
segment, checks that it holds objects (its kind; an arena's size and block geometry:
else ``LayoutError``, #10) and the serial (a handle to a freed block is refused, never
aliased to its new tenant) and takes a reference; closing or collecting the object
drops it, and the last one frees the blocks.

The ledger (#10).  A process that dies holding handles (SIGKILL, ``os._exit``) never
drops them, and before the ledger its blocks stayed allocated until the arena itself
went -- for as long as any process held the arena, and a queue such a process held
kept its records (and their transit segments) as long.  So each process records
the references it holds, per object, in segments of its own (``KIND_LEDGER``, made
with its first object: pages of 128, 256, ... entries)::

    entry (48 bytes)  u64 count, u64 object header offset, u32 serial,
                      20 bytes: the object's segment id, 8 bytes zero

Taking a reference counts it in the object first and in the ledger after; giving
one back, the ledger first: a process killed in between leaks that one reference,
and never has one given back twice.  A forked child does not hold its parent's
ledger (``_memory`` drops it in the child); it starts its own with one reference
per object it inherited open.  Once the process died, the sweep that reaps its
ledger (``_memory.set_ledger_reclaimer``) takes each count off its object, checked
against the serial and never below what is left; an object left with no
reference at all is let go of by its class (``SharedObject._unreferenced``: a queue
discards its records) and its blocks are freed.  What a process killed mid-way
through its own sweep of a ledger had not given back yet stays, as before.

References in flight (#4).  A pickled handle must keep its object alive until it is
unpickled, even if the sender drops the object (``q.put(lock); del lock``) or exits
(a ``Pool`` worker returning an object it created)::

    pickle (__reduce__)            segment in_flight += 1, then count += 1<<32 | 1
    unpickle, count>>32 > 0        adopt: count -= 1<<32, then segment in_flight -= 1
    unpickle, count>>32 == 0       a plain reference: count += 1 (needs count > 0)

So pickling takes a reference for the handle's future holder, and the first
unpickling adopts it instead of taking its own.  References in flight are counted
per object, not per pickle: a pickle unpickled twice adopts once and then takes a
plain reference (or adopts one of another pickle of the same object, which will in
turn take a plain one) -- the count stays exact either way and never goes negative.
``copy.copy``/``deepcopy`` pickle and unpickle at once and stay balanced too.  The
segment's own count keeps it from being unlinked while nobody holds it
(``shoal._memory``).  A pickle that is never unpickled leaks its reference: the
object lives until its segment goes, and a segment nobody holds is unlinked once its
latest pickle is ``_memory.IN_FLIGHT_TIMEOUT_S`` old (unless a container keeps it:
"Kept references" below).  A serializer that pickles
and then throws the pickle away (a failed attempt, a retry) gives the references
back with :func:`sent_references`.

Kept references (#10).  A queue's record that carries handles is not a pickle that may
be lost: the queue hands it to exactly one receiver, however long it waits.
:meth:`SentReferences.keep_for` leaves the objects' references adoptable and moves
their segments' count from in flight to the queue's entry in the segment's keeper
table (``shoal._memory``, "References kept by containers"), where it never expires;
the receiver unpickles the record inside :func:`receiving_kept`, and each adoption
then takes its reference off the queue's entry instead of the count in flight.

Stored references.  A container in shared memory (``SharedDict``, and what is built on
it) that keeps a pickle of shoal objects must keep them alive while it does, however
often the pickle is read.  :meth:`SentReferences.store` turns the references that
pickling took into plain ones (``count -= 1<<32``: no unpickling can adopt them)
held by the container; each read then takes references of its own.  Their segments
count them in the container's keeper entry, as a queue's are, so that a segment nobody
holds is kept for the stored objects with no time limit, and let go once the
container is gone.  The container gives them back by unpickling the stored bytes once
more inside :func:`releasing_stored`, where each object rebuilt adopts a stored
reference instead of taking one, and is then closed.

A forked child inherits live objects without unpickling them, so before each fork
the parent takes a reference on every open object for the child (not the child
after the fork: until it ran, a parent closing its handle was the last holder and
freed the object, or discarded a queue's items, under the child; #10).  A fork that
fails leaves those references taken: the objects then live until their segments go.
The child keeps the parent's arenas to allocate from (it holds them already: their
segments came with the fork).

Finalizers.  Each handle's release is a ``weakref.finalize`` (not a
``multiprocessing.util.Finalize``: multiprocessing empties that registry in every
child it forks, which left inherited objects looking closed there and their
references never released).  At exit one hook releases every handle still open, at
priority -50: after multiprocessing's queue feeders (-5), which may still be
pickling handles, and before the segments themselves go (-100).  A release that
garbage collection triggers while this thread holds an arena's mutex is deferred
until it lets go (``shared_section``), since that mutex is not recursive.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Optional

from . import _core
from ._errors import ClosedError, LayoutError, SegmentNotFoundError
from ._memory import (
    _SECTION,
    HEADER_SIZE,
    KIND_ARENA,
    KIND_DATA,
    KIND_LEDGER,
    NAME_PREFIX,
    ExitHook,
    Segment,
    attached_names,
    call_outside_sections,
    keeper_id,
    report_unraisable,
    set_ledger_reclaimer,
    shared_section,
)

__all__ = [
    "ARENA_SIZE",
    "BLOCK_SIZE",
    "SentReferences",
    "SharedObject",
    "give_back_reference",
    "object_size",
    "receiving_kept",
    "releasing_stored",
    "sent_references",
]

ARENA_SIZE = 256 * 1024
BLOCK_SIZE = 64
OBJECT_HEADER_SIZE = 16

_ARENA_LOCK = HEADER_SIZE
_ARENA_GEOMETRY = HEADER_SIZE + 48
_ARENA_USED = HEADER_SIZE + 56
_ARENA_SERIAL = HEADER_SIZE + 64
_ARENA_BITMAP = HEADER_SIZE + 128
_ARENA_LOCK_TIMEOUT = 30.0
# handles are released at exit after multiprocessing's queue feeders (-5) flushed what
# they were pickling, and before the segments go (_memory.SEGMENT_EXIT_PRIORITY)
OBJECT_EXIT_PRIORITY = -50
# the object reference count word: references in the low half, in flight in the high
_FLIGHT = 1 << 32
_REFS = _FLIGHT - 1


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
        arena = segment._arena = cls(segment)  # type: ignore[attr-defined]
        return arena

    @classmethod
    def of(cls, segment: Segment) -> _Arena:
        arena = getattr(segment, "_arena", None)
        if arena is None:
            arena = segment._arena = cls(segment)  # type: ignore[attr-defined]
        return arena

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # a shared section: a finalizer that garbage collection runs meanwhile may
        # need this very (non-recursive) mutex to free its block, so it waits
        with shared_section():
            if not self.lock.acquire(True, _ARENA_LOCK_TIMEOUT):
                raise RuntimeError(
                    f"allocation lock of {self.segment.name} stayed held for "
                    f"{_ARENA_LOCK_TIMEOUT:.0f} s; the arena looks corrupt"
                )
            try:
                yield
            finally:
                self.lock.release()

    def used(self) -> int:
        """Blocks in use, by every process."""
        return _core.load64(self.segment.buffer, _ARENA_USED)

    def allocate(self, nbytes: int, tag: int = 0) -> tuple[int, int] | None:
        """Reserve a zeroed run for nbytes (header included) of an object of type
        ``tag``: (offset, serial) or None."""
        nblocks = -(-nbytes // BLOCK_SIZE)
        if not 0 < nblocks <= _BLOCK_COUNT:
            raise ValueError(f"cannot allocate {nbytes} bytes in an arena")
        buf = self.segment.buffer
        with self._locked():
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
            # never 0: a zero serial marks a free block, which no handle may match
            serial = (_core.fetch_add64(buf, _ARENA_SERIAL, 1) + 1) & 0xFFFFFFFF or 1
            offset = _FIRST_BLOCK + index * BLOCK_SIZE
            buf[offset : offset + nblocks * BLOCK_SIZE] = bytes(nblocks * BLOCK_SIZE)
            buf[offset + 8 : offset + 16] = _object_words(serial, nblocks, tag)
            _core.store64(buf, offset, 1)
            return offset, serial

    def free(self, offset: int) -> None:
        """Give back the run whose object header is at ``offset``."""
        buf = self.segment.buffer
        index, misaligned = divmod(offset - _FIRST_BLOCK, BLOCK_SIZE)
        with self._locked():
            nblocks = int.from_bytes(buf[offset + 12 : offset + 14], "little")
            if misaligned or index < 0 or not 0 < nblocks <= _BLOCK_COUNT - index:
                raise LayoutError(
                    22,
                    f"freeing offset {offset} of arena {self.segment.name}, which holds "
                    f"no allocation there ({nblocks} blocks): the arena is corrupt",
                )
            bitmap = buf[_ARENA_BITMAP : _ARENA_BITMAP + _BITMAP_BYTES]
            bits = int.from_bytes(bitmap, "little")
            bits &= ~(((1 << nblocks) - 1) << index)
            bitmap[:] = bits.to_bytes(_BITMAP_BYTES, "little")
            buf[offset + 8 : offset + 16] = bytes(8)  # old handles no longer match
            _core.fetch_add64(buf, _ARENA_USED, -nblocks)


def _close_segment(segment: Segment) -> None:
    """Drop one local reference; once the segment is closed, drop its cached arena too.

    The arena view and the segment point at each other; without this the pair (and
    the mmap, and its file descriptor) would wait for the cycle collector.
    """
    segment.close()
    if segment.closed:
        arena = segment.__dict__.pop("_arena", None)
        if arena is not None:
            arena.lock._unbind()


class _Allocator:
    """This process's arenas; a forked child keeps its parent's (it holds them too)."""

    def __init__(self, arenas: Iterable[_Arena] = ()) -> None:
        # never taken by a finalizer (garbage collection may run one while it is held)
        self.lock = threading.Lock()
        self.arenas: list[_Arena] = list(arenas)

    def allocate(self, nbytes: int, tag: int = 0) -> tuple[Segment, int, int]:
        """(segment, header offset, serial) of a fresh zeroed object of type ``tag``,
        with one reference."""
        if nbytes > MAX_ARENA_OBJECT + OBJECT_HEADER_SIZE:
            segment = Segment.create(nbytes, KIND_DATA)
            # serial 1, no block run
            segment.buffer[HEADER_SIZE + 8 : HEADER_SIZE + 16] = _object_words(1, 0, tag)
            _core.store64(segment.buffer, HEADER_SIZE, 1)
            return segment, HEADER_SIZE, 1
        with self.lock:
            # (closed only by the exit hook, which detaches whatever is left)
            self.arenas = [a for a in self.arenas if not a.segment.closed]
            for arena in self.arenas:
                found = arena.allocate(nbytes, tag)
                if found:
                    break
            else:
                arena = _Arena.create()
                self.arenas.append(arena)
                found = arena.allocate(nbytes, tag)
                assert found is not None
            arena.segment._retain()  # the new object's reference
            # drop arenas nobody uses any more, keeping the one just used
            for idle in [a for a in self.arenas if a is not arena and a.used() == 0]:
                self.arenas.remove(idle)
                _close_segment(idle.segment)
            return arena.segment, found[0], found[1]


_allocator = _Allocator()
_live: weakref.WeakSet[SharedObject] = weakref.WeakSet()


def _release(segment: Segment, offset: int) -> None:
    """Finalizer of a handle: drop its reference, then its hold on the segment.

    Deferred while this thread holds a shared mutex (garbage collection can run it
    in the middle of an allocation, whose arena mutex the release may need).
    """
    call_outside_sections(_release_now, segment, offset)


def _release_now(segment: Segment, offset: int) -> None:
    if not segment.closed:
        give_back_reference(segment, offset)
    _close_segment(segment)


def give_back_reference(segment: Segment, offset: int) -> int:
    """Drop one reference this process holds (the ledger first: a process killed in
    between leaks the reference, never has it given back twice); what remains of the
    count word.  The arena block is freed when nothing does."""
    _ledger.note(segment, offset, 0, -1)
    return _release_count_only(segment, offset)


def _finalize_now(finalizer: weakref.finalize) -> None:
    """Run a live object's finalizer now, even during interpreter shutdown.

    ``finalizer()`` does nothing once ``weakref.finalize``'s own atexit handler has
    run, which may be before multiprocessing's (atexit order is registration
    order); ``detach()`` has no such switch.
    """
    info = finalizer.detach()
    if info is not None:
        _, func, args, _ = info
        func(*args)


def _release_all() -> None:
    """At exit: release every handle this process still holds."""
    for obj in _live_objects():
        finalizer = obj._finalizer
        if finalizer is not None:
            try:
                _finalize_now(finalizer)
            except Exception as exc:  # the others must still be released
                report_unraisable(exc)


_exit_hook = ExitHook(_release_all, OBJECT_EXIT_PRIORITY)


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
    # what a block holds, checked when a handle is unpickled: each of shoal's own
    # classes has its own (__init_subclass__); a user's subclass shares its base's,
    # whose struct it is, as do the subclasses of a class that sets _TYPE_FAMILY (one
    # struct, several views of it)
    _TYPE_TAG: ClassVar[int] = 0
    _TYPE_FAMILY: ClassVar[bool] = False
    _segment: Segment
    _header_offset: int
    _serial: int
    _finalizer: weakref.finalize | None = None
    # its holder keeps it for the children it forks (keep_for_children)
    _kept_for_children: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        family = any(base.__dict__.get("_TYPE_FAMILY") for base in cls.__mro__[1:])
        if cls.__module__.split(".")[0] == "shoal" and not family:
            cls._TYPE_TAG = _type_tag(cls)
            _tag_classes[cls._TYPE_TAG] = cls

    @classmethod
    def _unreferenced(cls, segment: Segment, offset: int) -> None:
        """The references of a process that died were the object's last (its count
        is 0 now, so no handle can be taken any more): let go of what it holds before
        its memory is freed.  Called by the sweep that reclaimed them (the ledger)."""

    def _create(self) -> None:
        self._adopt(*_allocator.allocate(OBJECT_HEADER_SIZE + self._PAYLOAD_SIZE, self._TYPE_TAG))

    def _attach(self, handle: tuple[str, int, int], state: Any) -> None:
        name, offset, serial = handle
        if not (isinstance(name, str) and type(offset) is int and type(serial) is int):
            raise TypeError(f"not a shoal handle: {handle!r}")
        self._restore_state(state)  # may set the payload size the check below needs
        segment = Segment.attach(name)
        try:
            if segment.kind not in (KIND_ARENA, KIND_DATA):
                # (a transit segment, or a header whose kind was written over)
                raise LayoutError(
                    22,
                    f"segment {name} holds no shoal objects (kind {segment.kind}): a "
                    "handle to a shared object cannot name it",
                )
            if segment.kind == KIND_ARENA and not _is_arena(segment):
                raise LayoutError(
                    22,
                    f"segment {name} is not an arena, whatever its header's kind says: "
                    "its size or block geometry are not an arena's (it is corrupt)",
                )
            if not _valid_offset(segment, offset, OBJECT_HEADER_SIZE + self._PAYLOAD_SIZE):
                raise ValueError(
                    f"handle offset {offset} does not name an object in segment {name}"
                )
            taken, adopted = self._take_reference(segment, offset, serial)
            if adopted:
                _settle_adoption(segment)
            if not taken:
                raise SegmentNotFoundError(
                    2,
                    f"the shared {type(self).__name__} this handle named no longer "
                    "exists: every process holding it closed it or died",
                )
            tag = _tag_at(segment.buffer, offset)
            if tag != self._TYPE_TAG:
                _release_count_only(segment, offset)
                raise LayoutError(
                    22,
                    f"a handle to a shared {type(self).__name__} names an object of "
                    f"another type (tag {tag}, expected {self._TYPE_TAG}) in {name}",
                )
        except BaseException:
            segment.close()
            raise
        self._adopt(segment, offset, serial)
        releasing: Optional[list[SharedObject]] = getattr(_tracking, "releasing", None)
        if releasing is not None:
            releasing.append(self)

    def _adopt(self, segment: Segment, offset: int, serial: int) -> None:
        """Make this object the holder of one reference to the block, then bind it."""
        _ledger.note(segment, offset, serial, 1)
        self._segment, self._header_offset, self._serial = segment, offset, serial
        self._track()
        try:
            self._bind_payload()
        except BaseException:
            self._drop_handle()
            raise

    @staticmethod
    def _take_reference(segment: Segment, offset: int, serial: int) -> tuple[bool, bool]:
        """Adopt a reference in flight, or take a new one: (taken, adopted).

        ``adopted`` says one of the object's references in flight was used up (the
        caller then takes it off the segment's count too), even where the serial
        turned out not to match and the reference was given back.  Inside
        :func:`releasing_stored` it adopts a stored reference: the count stays, and
        the segment's count of references in flight goes down by the one kept for it.
        """
        buf = segment.buffer
        if _serial_at(buf, offset) != serial:
            # freed, or another tenant's: leave its counts alone (checked again below,
            # once a reference pins the block, in case it changed hands meanwhile)
            return False, False
        count = _core.load64(buf, offset)
        if getattr(_tracking, "releasing", None) is not None:
            # the stored reference pins the block: no other tenant can be there
            return (True, True) if count & _REFS else (False, False)
        while count & _REFS:
            adopt = count >= _FLIGHT
            new = count - _FLIGHT if adopt else count + 1
            swapped, count = _core.cas64(buf, offset, count, new)
            if swapped:
                if _serial_at(buf, offset) == serial:
                    return True, adopt
                # a new tenant of the block: give its count back, never alias it
                _release_count_only(segment, offset)
                return False, adopt
        return False, False

    def _send_reference(self) -> None:
        """Take the reference that the handle being pickled carries (see the module
        docstring): the segment's count first, so the segment is kept from the start."""
        segment, offset = self._segment, self._header_offset
        segment._begin_flight()
        _core.fetch_add64(segment.buffer, offset, _FLIGHT + 1)
        tracker: Optional[SentReferences] = getattr(_tracking, "current", None)
        if tracker is not None:
            tracker._record(segment, offset)

    def _track(self) -> None:
        # weakref.finalize, not util.Finalize: the latter is wiped in every child
        # multiprocessing forks (#2), this one is inherited.  Not run by atexit
        # (which multiprocessing children skip): _release_all does it at exit.
        finalizer = weakref.finalize(self, _release, self._segment, self._header_offset)
        finalizer.atexit = False
        self._finalizer = finalizer
        _live.add(self)
        _exit_hook.arm()

    def _replace_release(
        self, release: Callable[..., Any], *args: Any, then_own: bool = False
    ) -> bool:
        """Have ``release(*args)`` run instead of the handle's own release, at close(),
        garbage collection and the exit hook alike; with ``then_own``, the own release
        (function, args) is passed after ``args``, for the replacement to call.  False
        if the handle was released already."""
        finalizer = self._finalizer
        info = finalizer.detach() if finalizer is not None else None
        if info is None:
            return False
        _, own, own_args, _ = info
        if then_own:
            args = (*args, own, own_args)
        replacement = weakref.finalize(self, release, *args)
        replacement.atexit = False  # released by SharedObject's exit hook, as before
        self._finalizer = replacement
        return True

    def _drop_handle(self) -> None:
        finalizer = self._finalizer
        if finalizer is not None:
            _finalize_now(finalizer)
        _live.discard(self)

    def _open_here(self) -> bool:
        return self._finalizer is not None and self._finalizer.alive and not self._segment.closed

    def _borrow_in_child(self) -> None:
        """In a forked child, of an object its parent keeps for it: usable through the
        inherited mapping, with no reference of this process's to give back (closing
        it or collecting it here releases nothing)."""
        finalizer = self._finalizer
        if finalizer is not None and finalizer.detach() is not None:
            self._finalizer = weakref.finalize(self, _borrowed)
        _live.discard(self)

    def _take_fork_reference(self) -> bool:
        """Before a fork: take the reference the child will hold on this object.

        The finalizer and the segment's local count come with the fork; only the
        shared count needs one more.  The parent takes it, not the child once it runs:
        until then the parent would be the object's only holder, and closing its handle
        would free the object, or empty the queue, under the child (#10).
        """
        if not self._open_here():
            return False
        _core.fetch_add64(self._segment.buffer, self._header_offset, 1)
        return True

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
        if self.closed:
            raise ClosedError(f"cannot pickle a closed {type(self).__name__}")
        state = self._handle_state()  # first: it may refuse, and then nothing was sent
        self._send_reference()
        return (_rebuild, (type(self), self._handle, state))

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called in this process."""
        return self._finalizer is None or not self._finalizer.alive

    def close(self) -> None:
        """Release this process's handle now instead of at garbage collection.

        The shared object lives on while other handles (in this or other processes)
        exist.  Using this handle afterwards raises :class:`~shoal.ClosedError`.
        Calling it twice is harmless.
        """
        finalizer = self._finalizer
        if finalizer is not None and finalizer.alive:
            self._unbind_payload()
            _finalize_now(finalizer)
        _live.discard(self)


def _borrowed() -> None:
    """What closing a borrowed handle releases (see ``SharedObject._borrow_in_child``)."""


def keep_for_children(obj: SharedObject) -> None:
    """Keep ``obj`` for the children this process forks: they use it through the
    mapping they inherit, taking no reference and no holder entry of their own, and
    leave nothing to give back when they exit (see ``shoal._memory``, "kept for its
    children").

    Only for an object its creator closes once every child that uses it is gone, and
    that no child hands on: a pool's rings and slots, which its workers reach only
    through the fork.
    """
    obj._kept_for_children = True
    segment = obj._segment
    if segment.kind == KIND_DATA and obj._header_offset == HEADER_SIZE:
        segment.kept_for_children = True  # its own segment: no other object in it


def _is_arena(segment: Segment) -> bool:
    """Whether an arena segment has an arena's size and block geometry (what
    :meth:`_Arena.create` writes): the offsets of its objects depend on them."""
    geometry = bytes(segment.buffer[_ARENA_GEOMETRY : _ARENA_GEOMETRY + 8])
    return segment.size == ARENA_SIZE and geometry == BLOCK_SIZE.to_bytes(
        4, "little"
    ) + _BLOCK_COUNT.to_bytes(4, "little")


def _valid_offset(segment: Segment, offset: int, size: int) -> bool:
    """Whether an object of ``size`` bytes (header included) may start at ``offset``.

    In an arena that is the start of a block, never the arena's own header (a
    forged handle must not take "references" on its allocation counters).
    """
    if offset % 8 or not HEADER_SIZE <= offset <= segment.size - size:
        return False
    if segment.kind == KIND_ARENA:
        return offset >= _FIRST_BLOCK and (offset - _FIRST_BLOCK) % BLOCK_SIZE == 0
    return True


def _serial_at(buf: Any, offset: int) -> int:
    return int.from_bytes(buf[offset + 8 : offset + 12], "little")


_type_tags: dict[int, str] = {}
# the class of each tag, for what a reclaim must do with an object nobody holds
_tag_classes: dict[int, type[SharedObject]] = {}


def _type_tag(cls: type) -> int:
    """The type tag of one of shoal's classes: a 16-bit digest of its qualified name
    (the same in every process and build of this layout), never 0 (untyped)."""
    qualname = f"{cls.__module__}.{cls.__qualname__}"
    tag = zlib.crc32(qualname.encode()) & 0xFFFF or 1
    other = _type_tags.setdefault(tag, qualname)
    if other != qualname:  # caught by the test suite's first import, never by users
        raise AssertionError(f"{qualname} and {other} have the same type tag {tag}")
    return tag


def object_size(segment: Segment, offset: int) -> int:
    """The bytes after the header of the object at ``offset``: its blocks' in an arena,
    the rest of the segment in one of its own."""
    nblocks = int.from_bytes(segment.buffer[offset + 12 : offset + 14], "little")
    if segment.kind == KIND_ARENA:
        return nblocks * BLOCK_SIZE - OBJECT_HEADER_SIZE
    return segment.size - offset - OBJECT_HEADER_SIZE


def _tag_at(buf: Any, offset: int) -> int:
    return int.from_bytes(buf[offset + 14 : offset + 16], "little")


def _object_words(serial: int, nblocks: int, tag: int) -> bytes:
    """Bytes 8..16 of an object header (see the module docstring)."""
    return serial.to_bytes(4, "little") + nblocks.to_bytes(2, "little") + tag.to_bytes(2, "little")


def _release_count_only(segment: Segment, offset: int) -> int:
    remaining = _core.fetch_add64(segment.buffer, offset, -1) - 1
    if remaining == 0 and segment.kind == KIND_ARENA:
        _Arena.of(segment).free(offset)
    return remaining


def _cancel_flight(segment: Segment, offset: int) -> None:
    """Give back one reference in flight whose pickle will never be unpickled.

    If the object has none left in flight, an unpickling already adopted it (a
    duplicate unpickle of another pickle took this one's place): nothing to give back.
    """
    buf = segment.buffer
    count = _core.load64(buf, offset)
    while count >= _FLIGHT:
        new = count - _FLIGHT - 1
        swapped, count = _core.cas64(buf, offset, count, new)
        if swapped:
            segment._end_flight()
            if new & _REFS == 0 and segment.kind == KIND_ARENA:
                _Arena.of(segment).free(offset)
            return


# ---- giving back references in flight whose pickle was thrown away ------------------------

_tracking = threading.local()


class SentReferences:
    """The references in flight that pickling took inside one :func:`sent_references`
    block, in this thread."""

    def __init__(self) -> None:
        self._taken: list[tuple[Segment, int]] = []

    def __len__(self) -> int:
        return len(self._taken)

    def _record(self, segment: Segment, offset: int) -> None:
        segment._retain()  # the object may be closed before cancel(): keep its memory
        self._taken.append((segment, offset))

    def cancel(self) -> None:
        """Give the references back: the pickles that took them will not be unpickled."""
        taken, self._taken = self._taken, []
        with shared_section():  # an arena's free() below must not meet a finalizer
            for segment, offset in taken:
                try:
                    _cancel_flight(segment, offset)
                finally:
                    _close_segment(segment)

    def keep(self) -> SentReferences:
        """Take the references out of the block, to settle later: ``cancel()`` if the
        pickles turn out never to be unpickled, ``release()`` once they were.

        (A pool starting a worker: the worker may be killed before it unpickles its
        arguments, and only the pool can tell afterwards.)
        """
        kept = SentReferences()
        kept._taken, self._taken = self._taken, []
        return kept

    def release(self) -> None:
        """The pickles were unpickled: stop keeping their segments for ``cancel()``."""
        taken, self._taken = self._taken, []
        for segment, _ in taken:
            _close_segment(segment)

    def store(self, keeper: bytes) -> None:
        """Make the references stored ones, held by the container ``keeper`` (see the
        module docstring): no unpickling adopts them and they never expire.  Give them
        back by unpickling the stored pickle inside :func:`releasing_stored`."""
        self._move_to_keeper(keeper, adoptable=False)

    def keep_for(self, keeper: bytes) -> None:
        """Have the container ``keeper`` keep the references until the pickle is
        unpickled inside :func:`receiving_kept` (a queue's record): they stay
        adoptable, and stop expiring."""
        self._move_to_keeper(keeper, adoptable=True)

    def _move_to_keeper(self, keeper: bytes, adoptable: bool) -> None:
        taken, self._taken = self._taken, []
        for segment, offset in taken:
            try:
                buf = segment.buffer
                segment._keep(keeper)  # first: the segment is never left unreferenced
                count = _core.load64(buf, offset)
                while True:
                    if count < _FLIGHT:
                        # an unpickling elsewhere adopted this one (a pickle of the same
                        # object unpickled twice), and took it off the segment's count:
                        # a reference of the container's own in its place (the object
                        # is alive: it was just pickled)
                        _core.fetch_add64(buf, offset, _FLIGHT + 1 if adoptable else 1)
                        break
                    if adoptable:
                        segment._end_flight()
                        break
                    swapped, count = _core.cas64(buf, offset, count, count - _FLIGHT)
                    if swapped:
                        segment._end_flight()
                        break
            finally:
                _close_segment(segment)

    def _hand_over(self, outer: SentReferences | None) -> None:
        if outer is not None:
            taken, self._taken = self._taken, []
            outer._taken.extend(taken)  # the outer block may still throw them away
            return
        self.release()


class _SentBlock:
    """The context manager :func:`sent_references` returns (a class: it is entered for
    every pickle a shared container or a queue makes, and a generator costs more)."""

    __slots__ = ("_outer", "_sent")

    def __enter__(self) -> SentReferences:
        self._outer: Optional[SentReferences] = getattr(_tracking, "current", None)
        self._sent = sent = SentReferences()
        _tracking.current = sent
        return sent

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _tracking.current = self._outer
        if exc_type is not None:
            self._sent.cancel()  # (the exception propagates)
            return
        self._sent._hand_over(self._outer)


def sent_references() -> _SentBlock:
    """Track the references in flight that shoal handles pickled inside take.

    A serializer whose pickle is thrown away calls ``cancel()`` on what this yields
    (a first attempt that failed, a pickle made twice).  An exception leaving the
    block cancels them too: whatever was being pickled was not sent.  Otherwise they
    stay in flight (handed to an enclosing block, if any, which may still cancel).
    """
    return _SentBlock()


@contextlib.contextmanager
def releasing_stored(keeper: bytes) -> Iterator[None]:
    """Unpickle a pickle stored by the container ``keeper`` (see
    :meth:`SentReferences.store`) to give its references back: every shoal object
    rebuilt inside adopts a stored reference, and is closed on the way out (also when
    unpickling fails part way: those rebuilt so far)."""
    outer = getattr(_tracking, "releasing", None)
    rebuilt: list[SharedObject] = []
    _tracking.releasing = rebuilt
    try:
        with receiving_kept(keeper):
            yield
    finally:
        _tracking.releasing = outer
        for obj in rebuilt:
            try:
                obj.close()
            except Exception as exc:  # the others must still be released
                report_unraisable(exc)


@contextlib.contextmanager
def receiving_kept(keeper: bytes) -> Iterator[None]:
    """Unpickle a pickle kept by the container ``keeper`` (see
    :meth:`SentReferences.keep_for`): the references that objects rebuilt inside adopt
    are taken off the container's keeper entry instead of the count in flight."""
    outer = getattr(_tracking, "keeper", None)
    _tracking.keeper = keeper
    try:
        yield
    finally:
        _tracking.keeper = outer


def _settle_adoption(segment: Segment) -> None:
    """An unpickling adopted a reference: take it off the count that kept it for that
    pickle, its container's (inside :func:`receiving_kept`) or the one in flight."""
    keeper = getattr(_tracking, "keeper", None)
    if keeper is None or not segment._unkeep(keeper):
        segment._end_flight()


# ---- the ledger: the references this process holds, for after it died (#10) ---------

# An entry: u64 count (written last, zeroed first), u64 object header offset, u32
# serial, the object's segment id (its keeper id), 8 bytes zero.
_LEDGER_ENTRY = struct.Struct("<QQI20s8x")
_LEDGER_FIRST_ENTRIES = 128


class _Ledger:
    """This process's references, per object, mirrored in segments of its own.

    The counts live here (``slots``) and in shared memory; the lock orders the
    threads, and ``shared_section`` keeps a finalizer run by garbage collection from
    entering half-way (it is deferred to the end).  A ledger that cannot be made
    (``/dev/shm`` full) records nothing: those references are then reclaimed as before
    the ledger existed, with their arena.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pages: list[Segment] = []
        self.slots: dict[tuple[str, int], tuple[Segment, int, int]] = {}
        self.free: list[tuple[Segment, int]] = []
        self.growing = False  # making a page (so leak checks can tell them apart)

    def note(self, segment: Segment, offset: int, serial: int, delta: int) -> None:
        """This process took (``delta`` 1) or gives back (-1) a reference."""
        key = (segment.name, offset)
        with _SECTION, self.lock:
            slot = self.slots.get(key)
            if slot is None:
                if delta < 0:
                    return  # taken while no ledger could be made: never recorded
                entry = self._free_entry()
                if entry is None:
                    return
                page, at = entry
                if page._mmap is None:
                    return  # at exit, after the segments went: nothing is recorded
                _LEDGER_ENTRY.pack_into(page.buffer, at, 0, offset, serial, keeper_id(key[0]))
                count = delta
            else:
                page, at, count = slot
                count += delta
                if page._mmap is None:
                    return
            _core.store64(page.buffer, at, count)
            if count:
                self.slots[key] = (page, at, count)
            else:
                del self.slots[key]
                self.free.append((page, at))

    def _free_entry(self) -> tuple[Segment, int] | None:
        if not self.free:
            # each page twice the last: a process with one object pays for 128
            # entries, one with a million for a dozen pages
            entries = _LEDGER_FIRST_ENTRIES << min(len(self.pages), 16)
            self.growing = True
            try:
                page = Segment.create(entries * _LEDGER_ENTRY.size, KIND_LEDGER)
            except OSError:  # SharedMemoryError included: no room, try again next time
                return None
            finally:
                self.growing = False
            self.pages.append(page)
            size = _LEDGER_ENTRY.size
            # (the lowest offset popped first; built without a Python-level loop: a
            # forked pool worker makes its first page at start, #11)
            last = HEADER_SIZE + (entries - 1) * size
            self.free.extend(zip(itertools.repeat(page), range(last, HEADER_SIZE - 1, -size)))
        return self.free.pop()


_ledger = _Ledger()


def _reclaim_ledger(name: str, contents: bytes) -> None:
    """Give back the references a dead process's ledger records (the sweep calls this
    once per ledger, see ``_memory.set_ledger_reclaimer``)."""
    by_segment: dict[bytes, list[tuple[int, int, int]]] = {}
    size = _LEDGER_ENTRY.size
    for at in range(HEADER_SIZE, len(contents) - size + 1, size):
        count, offset, serial, kid = _LEDGER_ENTRY.unpack_from(contents, at)
        if count and count <= _REFS and not kid.strip(b"0123456789abcdef"):
            by_segment.setdefault(kid, []).append((offset, serial, count))
    for kid, entries in by_segment.items():
        try:
            segment = Segment.attach("/" + NAME_PREFIX + kid.decode("ascii"))
        except (OSError, LayoutError):  # gone already (with its objects), or not ours
            continue
        try:
            with shared_section():  # an arena's free() below must not meet a finalizer
                for offset, serial, count in entries:
                    _give_back_dead(segment, offset, serial, count)
        finally:
            _close_segment(segment)


def _give_back_dead(segment: Segment, offset: int, serial: int, count: int) -> None:
    """Take ``count`` references of a dead process off the object at ``offset``."""
    if segment.kind not in (KIND_ARENA, KIND_DATA) or not _valid_offset(
        segment, offset, OBJECT_HEADER_SIZE
    ):
        return
    buf = segment.buffer
    word = _core.load64(buf, offset)
    while True:
        if _serial_at(buf, offset) != serial or word & _REFS < count:
            return  # freed and reused, or corrupt: never take what is not the dead's
        swapped, word = _core.cas64(buf, offset, word, word - count)
        if swapped:
            break
    if word - count:
        return
    cls = _tag_classes.get(_tag_at(buf, offset))
    if cls is not None:
        try:
            cls._unreferenced(segment, offset)
        except Exception as exc:  # the memory must be freed all the same
            report_unraisable(exc)
    if segment.kind == KIND_ARENA:
        _Arena.of(segment).free(offset)


set_ledger_reclaimer(_reclaim_ledger)


# the objects whose child references _before_fork took, held until the fork is over
# (one dropped meanwhile by another thread must not release its reference before the
# fork: the child would inherit it gone, with the reference it took for the child)
_forking: list[SharedObject] = []


def _live_objects() -> list[SharedObject]:
    """The open objects, listed while other threads may be making some: iterating the
    WeakSet raises RuntimeError when another thread adds to it meanwhile (on a
    free-threaded build, often), so the listing is tried again."""
    while True:
        try:
            return list(_live)
        except RuntimeError:
            continue


def _before_fork() -> None:
    # the child copies the arena list: take it in a consistent state.  (Registered
    # after _memory's hooks, so this runs before _memory takes its lock: the same
    # order as allocate(), which creates segments with this lock held.)  Held until
    # the after-fork hooks, which run even when this one raises: they let it go.
    _allocator.lock.acquire()
    _forking[:] = [
        obj for obj in _live_objects() if not obj._kept_for_children and obj._take_fork_reference()
    ]


def _after_fork_in_parent() -> None:
    _allocator.lock.release()
    _forking.clear()  # (after the release: this may run finalizers)


def _after_fork_in_child() -> None:
    global _allocator, _ledger
    # the parent's arenas stay usable: the child holds their segments (each arena's
    # local reference came with the fork, and _memory re-registered the child in
    # them, which has run already); before #2 the child dropped the list and with it
    # the means to ever close those references
    held = attached_names()
    _allocator = _Allocator(a for a in _allocator.arenas if a.segment.name in held)
    forked = {id(obj) for obj in _forking}
    for obj in list(_live):
        if obj._kept_for_children:
            obj._borrow_in_child()
    for obj in _forking:
        if not obj._open_here() and not obj._segment.closed:
            # closed by another thread of the parent after its child reference was
            # taken: this child never holds it
            _release_count_only(obj._segment, obj._header_offset)
    for obj in list(_live):
        if id(obj) not in forked and obj._open_here():
            # opened by another thread of the parent after _before_fork took the child
            # references (a later at-fork hook let it run: _memory's waits for a lock):
            # the child takes its own, or its exit would give back one it never had
            _core.fetch_add64(obj._segment.buffer, obj._header_offset, 1)
    # the child's own ledger (the parent's stays the parent's, see _memory): what it
    # holds from the fork on is one reference per open object
    _ledger = _Ledger()
    for obj in list(_live):
        if obj._open_here():
            _ledger.note(obj._segment, obj._header_offset, obj._serial, 1)
    # dropping the last strong reference to an object the parent let go of during the
    # fork runs its finalizer here, which releases the child's reference
    _forking.clear()
    _exit_hook.rearm_in_child(bool(_live))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
