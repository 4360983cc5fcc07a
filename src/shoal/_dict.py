"""SharedDict: a dict in shared memory that many processes read and write, no server.

Design (details in docs/design.md, "SharedDict")::

    root (a SharedObject in a segment of its own)        table segment (one at a time)
    +--------------------------------------------+       +-----------------------------+
    | writers' robust mutex                      |       | header: version (seqlock),  |
    | generation g                               | ----> |   counts, free lists        |
    | names[g & 1], sizes[g & 1]: current table  |       | slots: {hash, entry offset} |
    +--------------------------------------------+       | heap: entries, size classes |
                                                         +-----------------------------+

* Order: entries keep the order of insertion, as a dict's (#11): the table ranks them
  by position (native/include/shoal_dict.h, "Insertion order"); an overwrite keeps its
  place, a key deleted and set again goes last, ``popitem()`` takes the last.
* Keys and values are stored as bytes: exact None/bool/int (64-bit)/float/str/bytes, and
  tuples of them, by a small C codec; everything else is pickled (protocol 5).  Keys
  compare by those bytes, so ``1``, ``1.0`` and ``True`` are three different keys here
  (a dict makes them one), and a pickled key matches only an equal pickle.
* Reads take no lock: the table's version word is a seqlock; a reader copies what it
  found and retries if a writer changed the table meanwhile (each offset it follows is
  bounds-checked, so a torn read cannot crash it).  Each handle reads the table's
  geometry once, when it binds the table (``_core.Dict._bind_table``), and checks every
  offset readers and writers find against it: memory written to outside shoal makes
  calls fail, never read or write outside the table (#10).
* Writers serialise on the root's robust mutex.  Every change leaves the table's slots
  consistent at each step; a writer SIGKILLed mid-change leaves the version odd, and
  the next one to take the mutex rebuilds the table from its slots.
* Growth: when the slots or the heap run out, the writer builds a bigger table in a new
  segment, copies the live entries, and publishes it by bumping the generation; every
  process notices at its next operation and maps the new table.  The old table's name
  is removed at once (processes still reading it keep their mapping until they move
  on).  Memory of deleted and overwritten entries is reused through per-class free
  lists, and a rebuild compacts, so set/delete churn does not grow without bound.
* Lifetime: table segments have no holders of their own; they live as long as the
  root's segment (the reaper removes them once it is gone), and the last handle to
  close removes the current one.  A forked child that has not recorded itself in the
  root's holder table yet counts as a live user (``Segment._held_elsewhere``, #10).
* Shoal objects in values (a Queue, a Lock, another SharedDict, ...) live as long as
  they are stored, as the referents of a manager's nested proxies do: such a value is
  stored behind a marker byte with one reference to each object (``shoal._handle``,
  "Stored references"); every read takes references of its own, and the writer that
  removes the value (overwrite, ``del``, ``pop``, ``clear``...) gives the stored ones
  back, as does the dict's last handle for what it still holds.  Values without shoal
  objects cost nothing extra.  A writer killed between storing and giving back leaks
  (the objects live until their segments go), never frees early.  Keys name objects
  but do not keep them alive.  A cycle (a dict stored in itself) keeps its dicts until
  their segments expire, as pickles in flight do.

Consistency: each single operation (get, set, delete, ``in``, ``pop``, ``popitem``,
``incr``, ``get_or_set``/``setdefault``) is atomic.  ``keys()``, ``values()``,
``items()``, iteration and ``copy()`` return a consistent snapshot (a list, as
``Manager().dict()`` does), taken without the lock unless writers keep interrupting
it.  ``update()`` is a series of atomic sets, not one atomic step.  Iteration goes over
the snapshot taken when it starts, so it never raises ``RuntimeError`` for a change
made meanwhile (a dict does; here any process may write at any time).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar, Union, overload

from . import _core
from ._errors import LayoutError, SegmentNotFoundError
from ._handle import (
    MAX_ARENA_OBJECT,
    OBJECT_HEADER_SIZE,
    SharedObject,
    _close_segment,
    give_back_reference,
)
from ._memory import (
    _NAME_PATTERN,
    _OVERFLOW_OFFSET,
    HEADER_SIZE,
    KIND_TRANSIT,
    _check_header,
    _open_mapping,
    _open_own,
    _read_transit_parent,
    _references_pending,
    _transit_problem,
    _unlink_quietly,
    call_outside_sections,
    report_unraisable,
    write_transit,
)
from ._snapshot import snapshot

__all__ = ["DictStatistics", "SharedDict"]

_K = TypeVar("_K")
_V = TypeVar("_V")
_D = TypeVar("_D")

# The root gets a segment of its own (bigger than any arena object): its holders are
# then exactly the processes using this dict, which is what tells the last one to go
# that it must remove the table, and what keeps the tables alive (their parent).
_ROOT_PAYLOAD = max(_core.DICT_ROOT_SIZE, MAX_ARENA_OBJECT + 64)
_GEN = _core.DICT_ROOT_GENERATION
_SIZES = _core.DICT_ROOT_SIZES
_REBUILDS = _core.DICT_ROOT_REBUILDS
# nonzero while values holding shoal objects may be stored (shoal_dict.h: shoal_dict_root)
_STORED_FLAG = _core.DICT_ROOT_STORED
_NAMES = _core.DICT_ROOT_NAMES
_NAME_BYTES = _core.DICT_ROOT_NAME_BYTES
_MIN_SLOTS = 64
_MIN_HEAP = 64 * 1024
# tables tried, each four times bigger, when the live entries do not fit the first
# (sized by counts that were wrong)
_REBUILD_TRIES = 4
_ZEROS = bytes(1 << 20)


@snapshot
class DictStatistics:
    """A snapshot of a SharedDict's table (from ``statistics()``).

    Attributes:
        items: entries in the dict.
        tombstones: slots of deleted entries not yet reused.
        slots: slots in the table.
        table_bytes: bytes of the current table segment (slots and heap).
        heap_bytes: bytes of the heap for entries.
        heap_used: heap bytes ever handed out (freed blocks are reused from lists).
        bytes_live: heap bytes in live entries' blocks.
        writes: changes made to the current table.
        tables_made: tables built so far (the first, growth, clear, repairs).
    """

    items: int
    tombstones: int
    slots: int
    table_bytes: int
    heap_bytes: int
    heap_used: int
    bytes_live: int
    writes: int
    tables_made: int


# the shared objects whose repr this thread is making: one stored in itself is read back
# as a new handle, so the identity check that a dict's repr makes cannot see the loop
_reprs = threading.local()


def _recursive_repr(key: Any, fill: str, make: Callable[[], str]) -> str:
    """``make()``, or ``fill`` when the repr of the object named ``key`` is already
    being made in this thread (``{...}``/``[...]``, as a dict or list prints itself)."""
    running = _reprs.__dict__.setdefault("keys", set())
    if key in running:
        return fill
    running.add(key)
    try:
        return make()
    finally:
        running.discard(key)


def _zero_chunks(size: int) -> list[bytes]:
    full, rest = divmod(size, len(_ZEROS))
    return [_ZEROS] * full + ([bytes(rest)] if rest else [])


# open handles in this process, per dict (segment name, header offset): two handles of
# one dict in one process (a handle unpickled where the dict already is) look like two
# processes to the shared count, and like one to the segment's holder table
_local_handles: dict[tuple[str, int], int] = {}


def _last_user(segment: Any, header_offset: int, local_handles: int) -> bool:
    """Drop the reference of the handle being released; whether it was the dict's last
    live one (best effort).

    The decision and the drop are one atomic step: of two processes closing at once,
    exactly one sees 0 (a question asked with the count given back afterwards let two
    closes that did not overlap each see the other's handle, and the tables stayed).
    Handles of processes that died are never given back, so when the count stays
    above 0 the root segment's holder table decides: no other live process holds it.
    """
    buf = segment.buffer
    remaining = give_back_reference(segment, header_offset)
    if remaining >> 32:
        # handles pickled and not yet unpickled (the high half of the count, in
        # shoal._handle's "references in flight"): their receivers need the table
        return False
    if remaining & 0xFFFFFFFF == 0:
        return True
    if _references_pending(buf, segment.name):
        # stored in a container (a reference of no process, see shoal._handle), or
        # handles of it pickled that the object's count no longer shows in flight
        return False
    if local_handles > 1:
        return False
    if int.from_bytes(buf[_OVERFLOW_OFFSET : _OVERFLOW_OFFSET + 4], "little"):
        return False
    # (a child forked since, that has not recorded itself in the table yet, counts: #10)
    return not segment._held_elsewhere()


def _root_name(buf: Any, root: int, slot: int) -> str:
    at = root + _NAMES + _NAME_BYTES * slot
    return bytes(buf[at : at + _NAME_BYTES]).rstrip(b"\0").decode("ascii", "replace")


def _remove_table(root_segment: str, name: str) -> None:
    """Remove ``name`` if it is a table of the dict whose root is in ``root_segment``.

    The root's table names are shared memory: one that a stray write changed must not
    remove whatever segment or file it happens to name (#10).  A table is a transit
    segment of this user's whose parent is the root's segment.
    """
    if not _NAME_PATTERN.fullmatch(name):
        return
    opened = _open_own(name)  # (None: gone already, or not this user's regular file)
    if opened is None:
        return
    fd, _ = opened
    try:
        problem, _ = _transit_problem(fd)
        parent = None if problem else _read_transit_parent(fd)
    finally:
        os.close(fd)
    if parent is not None and parent[0] == root_segment:
        _unlink_quietly(name)


def _release_dict(segment: Any, header_offset: int) -> None:
    """Finalizer: the last handle gives back what the values hold and removes the table
    segments, then the usual release.

    Deferred while this thread holds a shared mutex, as every release is: giving back
    the values' references unpickles them and may take an arena's mutex.
    """
    key = (segment.name, header_offset)
    local = _local_handles.pop(key, 1)
    if local > 1:
        _local_handles[key] = local - 1
    call_outside_sections(_release_dict_now, segment, header_offset, local)


def _release_dict_now(segment: Any, header_offset: int, local: int) -> None:
    # (the root has a segment of its own: a count of 0 frees no arena block)
    try:
        if not segment.closed and _last_user(segment, header_offset, local):
            try:
                _release_values(segment, header_offset)
            finally:
                root = header_offset + OBJECT_HEADER_SIZE
                for slot in (0, 1):
                    _remove_table(segment.name, _root_name(segment.buffer, root, slot))
    except Exception as exc:  # the segment must still be let go
        report_unraisable(exc)
    _close_segment(segment)


def _release_values(segment: Any, header_offset: int) -> None:
    """Give back the references that the dict's values hold (its last handle is going)."""
    if not _core.load64(segment.buffer, header_offset + OBJECT_HEADER_SIZE + _STORED_FLAG):
        return  # (the common case: no value ever held a shoal object)
    view = SharedDict.__new__(SharedDict)  # a view of the root, with no handle of its own
    view._segment, view._header_offset, view._serial = segment, header_offset, 0
    view._bind_payload()
    try:
        view._release_stored()
    finally:
        view._unbind()


class SharedDict(_core.Dict, SharedObject, MutableMapping[_K, _V]):  # type: ignore[misc]
    """A ``dict`` in shared memory, used by many processes at once with no server.

    ``SharedDict(initial=None, /, **kwargs)`` takes what ``dict()`` takes.  Any
    picklable key and value; None, bool, int, float, str and bytes (and tuples of them)
    are stored without pickle.  Keys compare by their stored bytes: ``1``, ``1.0`` and
    ``True`` are distinct keys.

    It pickles as a small handle: pass it to ``Pool`` tasks, queues, later processes.
    Single operations are atomic; ``keys()``/``values()``/``items()`` and iteration
    return consistent snapshots (lists).  It grows by itself and reuses the memory of
    deleted entries.  Atomic helpers: :meth:`incr` and :meth:`get_or_set`.
    It keeps insertion order, as a dict does (in every process), and prints as a dict:
    ``repr()`` and ``str()`` are those of a dict with its items.
    """

    _PAYLOAD_SIZE = _ROOT_PAYLOAD

    if TYPE_CHECKING:  # what _core.Dict's C methods take and give, for type checkers

        def __getitem__(self, key: _K, /) -> _V: ...
        def __setitem__(self, key: _K, value: _V, /) -> None: ...
        def __delitem__(self, key: _K, /) -> None: ...
        @overload
        def get(self, key: _K, /) -> _V | None: ...
        @overload
        def get(self, key: _K, default: _V | _D, /) -> _V | _D: ...
        def get(self, key: _K, default: Any = None, /) -> Any: ...
        def incr(self, key: _K, delta: Any = 1, default: Any = 0, /) -> _V: ...
        def get_or_set(self, key: _K, default: _V, /) -> _V: ...
        @overload
        def pop(self, key: _K, /) -> _V: ...
        @overload
        def pop(self, key: _K, default: _V | _D, /) -> _V | _D: ...
        def pop(self, key: _K, default: Any = ..., /) -> Any: ...
        def popitem(self) -> tuple[_K, _V]: ...

    def __init__(
        self,
        initial: Union[Mapping[_K, _V], Iterable[tuple[_K, _V]], None] = None,
        /,
        **kwargs: _V,
    ) -> None:
        self._create()
        self._rebuild(0, False)  # nobody else can see it yet: no lock needed
        if initial is not None:
            self.update(initial)
        if kwargs:
            self.update(kwargs)

    # ---- SharedObject plumbing -----------------------------------------------------------

    def _bind_payload(self) -> None:
        self._bind(self._mapping, self._payload_offset)

    def _track(self) -> None:
        super()._track()
        # (SharedObject's release is replaced: _release_dict drops the count itself)
        if not self._replace_release(_release_dict, self._segment, self._header_offset):
            return
        key = (self._segment.name, self._header_offset)
        _local_handles[key] = _local_handles.get(key, 0) + 1

    # ---- tables (called by the C half) ---------------------------------------------------

    def _refresh(self) -> None:
        """Map the current table (another process published a new one)."""
        buf = self._segment.buffer
        root = self._payload_offset
        for _ in range(1000):
            gen = _core.load64(buf, root + _GEN)
            if gen == 0:
                raise LayoutError(
                    errno.EINVAL,
                    "this SharedDict has no table: its creator died making it, or its memory "
                    "was written to outside shoal",
                )
            slot = gen & 1
            name = _root_name(buf, root, slot)
            size = _core.load64(buf, root + _SIZES + 8 * slot)
            if _core.load64(buf, root + _GEN) != gen:
                continue  # republished while we read: the name may be torn
            try:
                mapping = _open_mapping(name)
            except SegmentNotFoundError:
                if _core.load64(buf, root + _GEN) != gen:
                    continue  # replaced (and removed) meanwhile
                raise
            if _check_header(name, mapping) != KIND_TRANSIT or len(mapping) < HEADER_SIZE + size:
                raise LayoutError(errno.EINVAL, f"{name!r} is not a SharedDict table")
            self._bind_table(mapping, HEADER_SIZE, size, gen)
            return
        raise RuntimeError("the SharedDict's table kept changing while being mapped")

    def _rebuild(self, extra: int, copy: bool) -> None:
        """Make a new table (with the live entries when ``copy``) and publish it.

        Called with the writers' lock held (or before anyone else can see the dict).
        ``extra``: heap bytes the caller is about to need.
        """
        count = live = 0
        if copy:
            # the counts are shared memory: past what the bound table's geometry can
            # hold they are garbage (#10), and a table too small for what the slots
            # really hold is retried bigger below
            stats = self._table_stats()
            count = min(stats["count"], stats["nslots"])
            live = min(stats["bytes_live"], stats["heap_bytes"])
        nslots = _MIN_SLOTS
        # leave the table at most about a third full: growth stays amortised O(1)
        while nslots * _core.DICT_LOAD16 < (count + 1) * 16 * 2:
            nslots *= 2
        heap = max(_MIN_HEAP, 2 * (live + extra))
        buf = self._segment.buffer
        root = self._payload_offset
        gen = _core.load64(buf, root + _GEN)
        slot = (gen + 1) & 1
        # the slot names the table before the current one (removed when it was
        # replaced) or one a writer died making: remove it, then claim the slot
        _remove_table(self._segment.name, _root_name(buf, root, slot))
        for _ in range(_REBUILD_TRIES):
            heap = -(-heap // 4096) * 4096
            size = _core.dict_table_size(nslots, heap)
            name = write_transit(self._segment.name, _zero_chunks(size), size)
            try:
                encoded = name.encode("ascii").ljust(_NAME_BYTES, b"\0")
                at = root + _NAMES + _NAME_BYTES * slot
                buf[at : at + _NAME_BYTES] = encoded
                _core.store64(buf, root + _SIZES + 8 * slot, size)
                mapping = _open_mapping(name)
                fits = self._copy_to(mapping, HEADER_SIZE, size, nslots, copy)
            except BaseException:
                _unlink_quietly(name)
                raise
            if fits:
                break
            _unlink_quietly(name)
            nslots, heap = nslots * 4, heap * 4
        else:
            raise LayoutError(
                errno.EINVAL,
                f"the SharedDict's table kept growing past {size} bytes while its entries "
                "were copied: its counts are corrupt (was it written to outside shoal?)",
            )
        _core.fetch_add64(buf, root + _REBUILDS, 1)
        _core.store64(buf, root + _GEN, gen + 1)  # the publish
        self._bind_table(mapping, HEADER_SIZE, size, gen + 1)
        if gen:
            _remove_table(self._segment.name, _root_name(buf, root, gen & 1))

    # ---- the mapping API (the hot paths are C: _core.Dict) ------------------------------

    def __iter__(self) -> Iterator[_K]:
        """Iterate over a snapshot of the keys, in insertion order.

        The snapshot is taken now: changes made meanwhile (by any process) are not seen
        and never make the iteration fail, unlike a dict's ``RuntimeError``.
        """
        return iter(self._snapshot(0))

    def __reversed__(self) -> Iterator[_K]:
        """Iterate over a snapshot of the keys, the last inserted first."""
        return reversed(self._snapshot(0))

    def keys(self) -> list[_K]:  # type: ignore[override]
        """A consistent snapshot of the keys (a list, as ``Manager().dict()`` returns)."""
        return self._snapshot(0)

    def values(self) -> list[_V]:  # type: ignore[override]
        """A consistent snapshot of the values (a list)."""
        return self._snapshot(1)

    def items(self) -> list[tuple[_K, _V]]:  # type: ignore[override]
        """A consistent snapshot of the (key, value) pairs (a list)."""
        return self._snapshot(2)

    def copy(self) -> dict[_K, _V]:
        """A plain ``dict`` with a consistent snapshot of the contents."""
        return dict(self._snapshot(2))

    def clear(self) -> None:
        """Remove every item (one atomic step: the table is replaced by an empty one)."""
        self._clear()

    def setdefault(self, key: _K, default: _V = None) -> _V:  # type: ignore[assignment,override]
        """``get_or_set(key, default)``: atomic, unlike ``MutableMapping.setdefault``."""
        return self.get_or_set(key, default)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set every item of ``other`` (a mapping or pairs) and ``kwargs``, one by one."""
        if isinstance(other, SharedDict):
            other = other.items()
        elif hasattr(other, "keys"):
            other = [(k, other[k]) for k in other.keys()]  # noqa: SIM118 (the dict protocol)
        for key, value in other:
            self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedDict):
            return self is other or self.copy() == other.copy()
        if isinstance(other, dict):
            return self.copy() == other
        return NotImplemented

    def __ior__(self, other: Any) -> SharedDict[_K, _V]:
        self.update(other)
        return self

    def __or__(self, other: Any) -> dict[_K, _V]:
        if not isinstance(other, (dict, SharedDict)):
            return NotImplemented
        merged = self.copy()
        merged.update(other.copy() if isinstance(other, SharedDict) else other)
        return merged

    # by identity, as Manager proxies are (shoal tracks live handles in a WeakSet)
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        """The repr of a dict with these items (as ``str(Manager().dict())`` prints)."""
        if self.closed:
            return "<shoal.SharedDict closed>"

        def make() -> str:
            return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in self._snapshot(2)) + "}"

        return _recursive_repr(("dict", self._segment.name, self._header_offset), "{...}", make)

    def statistics(self) -> DictStatistics:
        """A snapshot of the table's occupancy (items, slots, heap bytes, tables made)."""
        stats = self._table_stats()
        return DictStatistics(
            items=stats["count"],
            tombstones=stats["tombstones"],
            slots=stats["nslots"],
            table_bytes=stats["table_bytes"],
            heap_bytes=stats["heap_bytes"],
            heap_used=stats["heap_used"],
            bytes_live=stats["bytes_live"],
            writes=stats["writes"],
            tables_made=_core.load64(self._segment.buffer, self._payload_offset + _REBUILDS),
        )

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> SharedDict:
        """A new SharedDict with every key of ``iterable`` set to ``value``."""
        new = cls()
        for key in iterable:
            new[key] = value
        return new
