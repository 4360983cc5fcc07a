"""Serialization: pickle protocol 5 in the caller, big buffers out of band.

``dumps(obj)`` runs in the caller (``put()``), so an object that cannot be pickled
raises :class:`~shoal.SerializationError` right there and nothing is sent.

cloudpickle is for functions and classes only (#11).  Plain pickle goes first; if it
fails, the object is pickled again by plain pickle with one hook: a function or class
that cannot be found by its module and name (a lambda, a closure, a local class, one of
a notebook's ``__main__``) is pickled by value, by cloudpickle, inside the plain
pickle.  Everything else is plain pickle's, so data the standard library refuses (an
open file, a socket, a ``threading`` lock, a generator) raises the standard library's
``TypeError: cannot pickle '...' object`` (as a SerializationError that is also a
TypeError) instead of travelling as a copy: cloudpickle's own reducers for files,
memoryviews and dict views are left out, in the functions it pickles too.

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

import collections
import contextlib
import copyreg
import errno
import io
import mmap
import pickle
import struct
import sys
import types
from typing import Any

from ._errors import LayoutError, serialization_error_class
from ._handle import SentReferences, receiving_kept, sent_references
from ._memory import (
    HEADER_SIZE,
    discard_transit,
    open_transit,
    write_transit,
)
from ._record import KEPT_PREFIX_SIZE, TRANSIT_RECORD_SIZE
from ._record import TAG_KEPT as KEPT_MARK
from ._record import TAG_TRANSIT as TRANSIT_MARK

__all__ = [
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
# (a kept record: its keeper holds the references of the record that follows, inline or
# transit; shoal._memory, "References kept by containers")
_ALIGN = 64
_META = struct.Struct("<QQ")  # where the meta pickle is, right after the shoal header
_DATA_START = HEADER_SIZE + _ALIGN

_dumps = pickle.dumps
_loads = pickle.loads


_function_pickler: Any = None  # the cloudpickle Pickler subclass, made on first need


def _cloudpickle_dumps(obj: Any, buffer_callback: Any) -> bytes:
    """``obj`` (a function or class) by value, by cloudpickle without its data reducers."""
    global _function_pickler
    if _function_pickler is None:
        _function_pickler = _make_function_pickler()
    out = io.BytesIO()
    _function_pickler(out, protocol=5, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


def _make_function_pickler() -> Any:
    # imported on first need: only functions and classes plain pickle refuses get here
    import cloudpickle

    table = dict(cloudpickle.Pickler._dispatch_table)
    # what cloudpickle would copy that the standard library refuses: data, not code
    for data_type in (
        memoryview,
        type({}.keys()),
        type({}.values()),
        type({}.items()),
        type(collections.OrderedDict().keys()),
        type(collections.OrderedDict().values()),
        type(collections.OrderedDict().items()),
    ):
        table.pop(data_type, None)
    table[io.TextIOWrapper] = _standard_stream_reduce

    class FunctionPickler(cloudpickle.Pickler):
        dispatch_table = collections.ChainMap(table, copyreg.dispatch_table)

    return FunctionPickler


def _standard_stream_reduce(obj: Any) -> Any:
    # a function may name sys.stdout & co: those go by name, as cloudpickle sends them;
    # any other open file raises the standard library's TypeError
    for name in ("stdout", "stderr", "stdin"):
        if obj is getattr(sys, name, None):
            return getattr, (sys, name)
    return obj.__reduce_ex__(5)


def _plain_dumps(obj: Any, buffer_callback: Any) -> bytes:
    return _dumps(obj, 5, buffer_callback=buffer_callback)


class _ByValueWherePicklerMust(pickle.Pickler):
    """Plain pickle, but functions and classes it cannot pickle by name go by value."""

    def reducer_override(self, obj: Any) -> Any:
        # (not called for the exact builtin containers and scalars: plain pickle's speed)
        if isinstance(obj, (types.FunctionType, type)) and not _found_by_name(obj):
            return pickle.loads, (_cloudpickle_dumps(obj, None),)
        return NotImplemented


def _found_by_name(obj: Any) -> bool:
    """Whether plain pickle can pickle ``obj`` by reference: its module (already
    imported: nothing is imported to find out) holds it under its qualified name."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str):
        return False
    found = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    return found is obj


def _fallback_dumps(obj: Any, buffer_callback: Any) -> bytes:
    out = io.BytesIO()
    _ByValueWherePicklerMust(out, 5, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


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
            dump = _fallback_dumps
            data = dump(obj, buffers.append)
        except Exception as second:
            # the second attempt's error names what really failed (the file inside the
            # lambda's closure, say) once the first was about a function
            error = second if isinstance(second, TypeError) else first
            cls = serialization_error_class(error)
            raise cls(
                f"cannot send {type(obj).__module__}.{type(obj).__qualname__} object "
                f"to another process: {error}; nothing was sent",
                type_name=type(obj).__qualname__,
            ) from error
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
    if not record:  # no producer writes one
        raise LayoutError(errno.EINVAL, "corrupt shoal message record: it is empty")
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
