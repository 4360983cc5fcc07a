"""Serialization: pickle protocol 5 in the caller, big buffers out of band.

``dumps(obj)`` runs in the caller (``put()``), so an object that cannot be pickled
raises :class:`~shoal.SerializationError` right there and nothing is sent.  Functions
and lambdas that plain pickle refuses go through cloudpickle.

A message is either *inline* — the pickle itself, small enough for a queue's ring —
or a *transit segment*: a shared-memory segment of its own holding the pickle and
every out-of-band buffer (numpy arrays, bytearrays, anything exposing pickle-5
``PickleBuffer``) of at least ``ZERO_COPY_THRESHOLD`` bytes::

    transit segment:  [shoal header, 4 KiB][u64 meta offset, u64 meta length][pad]
                      [pickle][pad][buffer 0][pad][buffer 1]...[meta]
    meta:             pickle((pickle length, [(offset, nbytes) of each buffer...]))
    ring record:      b"T" + the segment's name (ASCII)

The ring record is 28 bytes whatever the message: the layout, which grows with the
number of buffers, lives in the segment (#3: with it in the record, a message of a few
hundred small arrays did not fit a 4 KiB ring and put() raised ValueError).

The sender copies each buffer once into the segment and lets go of it.  The receiver
maps it, removes its name at once, and hands out views of the mapping: the arrays it
unpickles are backed by shared memory with no further copy, and the kernel frees the
memory when the last of them is gone.

A transit segment records the queue it travels on (its *parent*: the queue's segment,
object offset and serial).  The receiver refuses a record whose name is not a shoal
name, or whose segment is not this user's, not a transit segment, or not of a queue it
holds, and removes nothing then (#10: a corrupt record removed whatever it named).
One whose parent queue no longer exists (freed, its segment gone or held by nobody
alive) is removed by the reaper: so, once their queue goes, are those whose record was
lost with a producer killed inside ``put`` or a consumer killed between taking a
record and opening it (a killed process never drops its references, so the queue it
held goes with its segment).  One whose writer was killed while writing it has no
magic number yet and a dead creator: the reaper removes it at once.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import pickle
import struct
from typing import Any

from ._errors import LayoutError, SerializationError
from ._handle import SentReferences, receiving_kept, sent_references
from ._memory import (
    HEADER_SIZE,
    KEEPER_ID_SIZE,
    discard_transit,
    open_transit,
    write_transit,
)

__all__ = [
    "KEPT_PREFIX_SIZE",
    "TRANSIT_RECORD_SIZE",
    "ZERO_COPY_THRESHOLD",
    "discard",
    "dumps",
    "dumps_kept",
    "kept_record",
    "loads",
    "pack",
    "unpack",
]

ZERO_COPY_THRESHOLD = 128 * 1024
TRANSIT_MARK = 0x54  # b"T": a pickle always starts with PROTO (0x80)
# b"K", then the keeper id of the queue that keeps the references of the record that
# follows (inline or transit; shoal._memory, "References kept by containers")
KEPT_MARK = 0x4B
KEPT_PREFIX_SIZE = 1 + KEEPER_ID_SIZE
_ALIGN = 64
_META = struct.Struct("<QQ")  # where the meta pickle is, right after the shoal header
_DATA_START = HEADER_SIZE + _ALIGN
TRANSIT_RECORD_SIZE = 1 + len("/shoal-") + 20  # mark + name (shoal._memory._new_name)

_dumps = pickle.dumps
_loads = pickle.loads


def _cloudpickle_dumps(obj: Any, buffer_callback: Any) -> bytes:
    # imported on first need: only functions and lambdas plain pickle refuses get here
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)


def _plain_dumps(obj: Any, buffer_callback: Any) -> bytes:
    return _dumps(obj, 5, buffer_callback=buffer_callback)


def dumps(obj: Any, by_value: bool = False) -> tuple[bytes, list[pickle.PickleBuffer] | None]:
    """Pickle ``obj``: (data, big out-of-band buffers or None).

    ``by_value`` pickles functions and classes of ``__main__`` by value (cloudpickle)
    rather than by name: a worker started before they were defined, or one whose
    ``__main__`` is not the caller's (a notebook, the REPL), would not find them.

    Shoal handles inside ``obj`` take a reference in flight each time they are
    pickled (``shoal._handle``); a pickle made and then thrown away here (a failed
    first attempt, a re-pickle with the buffers inline) gives its references back.

    Raises:
        SerializationError: ``obj`` cannot be pickled (also a pickle.PicklingError).
    """
    with sent_references() as sent:
        return _dumps_in(obj, by_value, sent)


def dumps_kept(obj: Any, keeper: bytes) -> tuple[bytes, list[pickle.PickleBuffer] | None, bool]:
    """:func:`dumps` for a queue's record: (data, buffers, kept).

    ``kept`` says shoal handles were pickled, and that their references are now kept
    by the queue whose keeper id is ``keeper`` (``shoal._memory``: they never expire
    while it exists); the record must then be wrapped with :func:`kept_record`.
    """
    with sent_references() as sent:
        data, buffers = _dumps_in(obj, False, sent)
        if not len(sent):
            return data, buffers, False
        sent.keep_for(keeper)
    return data, buffers, True


def _dumps_in(
    obj: Any, by_value: bool, sent: SentReferences
) -> tuple[bytes, list[pickle.PickleBuffer] | None]:
    buffers: list[pickle.PickleBuffer] = []
    dump = _cloudpickle_dumps if by_value else _plain_dumps
    try:
        data = dump(obj, buffers.append)
    except Exception as first:
        sent.cancel()
        buffers.clear()
        try:
            if by_value:
                raise
            dump = _cloudpickle_dumps
            data = dump(obj, buffers.append)
        except Exception:
            raise SerializationError(
                f"cannot send {type(obj).__module__}.{type(obj).__qualname__} object "
                f"to another process: {first}; nothing was sent",
                type_name=type(obj).__qualname__,
            ) from first
    if buffers and sum(b.raw().nbytes for b in buffers) < ZERO_COPY_THRESHOLD:
        # small buffers are cheaper inline than in a segment of their own
        sent.cancel()
        buffers = []
        data = dump(obj, None)
    return data, buffers or None


def kept_record(record: bytes, keeper: bytes) -> bytes:
    """Mark ``record`` (inline or transit) as one whose references ``keeper`` keeps."""
    return bytes((KEPT_MARK,)) + keeper + record


def pack(
    data: bytes,
    buffers: list[pickle.PickleBuffer] | None,
    parent: str | tuple[str, int, int],
) -> bytes:
    """Write ``data`` and ``buffers`` into a transit segment; return its ring record.

    ``parent`` is the handle of the queue the record travels on (or a segment name):
    the segment lives as long as that queue does, at most (``_memory.write_transit``).
    """
    views = [b.raw() for b in buffers or ()]
    prefix = bytearray(_DATA_START - HEADER_SIZE)  # the meta's place, filled in below
    chunks: list[Any] = [prefix, data]
    layout = []
    offset = _DATA_START + len(data)
    for view in views:
        start = _aligned(offset)
        if start > offset:
            chunks.append(bytes(start - offset))
        chunks.append(view)
        layout.append((start, view.nbytes))
        offset = start + view.nbytes
    meta = _dumps((len(data), layout), 5)
    _META.pack_into(prefix, 0, offset, len(meta))
    chunks.append(meta)
    try:
        name = write_transit(parent, chunks, offset + len(meta) - HEADER_SIZE)
    finally:
        for view in views:
            view.release()
    return bytes((TRANSIT_MARK,)) + name.encode("ascii")


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def loads(record: bytes) -> Any:  # also _core's hook for records it cannot decode itself
    """Rebuild the object a record carries (mapping its transit segment if it has one)."""
    mark = record[0]
    if mark == KEPT_MARK:
        with receiving_kept(bytes(record[1:KEPT_PREFIX_SIZE])):
            return loads(record[KEPT_PREFIX_SIZE:])
    if mark != TRANSIT_MARK:
        return _loads(record)
    return unpack(record)


def unpack(record: bytes) -> Any:
    """Open a transit record: map its segment (and remove its name), unpickle from it."""
    mapping: mmap.mmap = open_transit(_transit_name(record))
    whole = memoryview(mapping)
    try:
        meta_offset, meta_length = _META.unpack_from(whole, HEADER_SIZE)
        length, layout = _loads(whole[meta_offset : meta_offset + meta_length])
        data = whole[_DATA_START : _DATA_START + length]
        buffers = [whole[start : start + nbytes] for start, nbytes in layout]
        try:
            return _loads(data, buffers=buffers)
        finally:
            data.release()
    finally:
        whole.release()


def _transit_name(record: bytes) -> str:
    """The segment name in a transit record; a record that cannot hold one is refused
    here, before anything is opened (the segment's header is checked next, before
    its name is removed: ``_memory.open_transit``)."""
    raw = bytes(memoryview(record)[1:])
    if len(raw) != TRANSIT_RECORD_SIZE - 1 or not raw.isascii():
        raise LayoutError(errno.EINVAL, f"corrupt shoal message record: {record[:64]!r}")
    return raw.decode("ascii")


def discard(record: bytes) -> None:
    """Let go of a record that will never be received (not enqueued, or drained).

    Receiving it and dropping the result is what gives back everything it holds:
    the references in flight of the shoal handles pickled in it, and its transit
    segment.  If it cannot be received, its transit segment is removed all the same.
    """
    try:
        loads(record)
    except Exception:
        inner = record[KEPT_PREFIX_SIZE:] if record and record[0] == KEPT_MARK else record
        if inner and inner[0] == TRANSIT_MARK:
            with contextlib.suppress(LayoutError):
                discard_transit(_transit_name(inner))
