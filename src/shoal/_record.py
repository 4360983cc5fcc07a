"""The record format, Python half: what the first byte of a record says it is.

A ring record (a queue item, a pool task or result) and a SharedDict key or value start
with one byte that says how the rest is encoded.  The C half owns the one list of those
bytes (``_core_codec.h``, ``record_tag``); every value here is taken from ``_core`` and
none is retyped, so a new tag is added in one place::

    N t f I F S Y U   scalars and tuples of them, encoded by _core without pickle
    0x80              a pickle (PROTO: protocol 2 and later)
    T                 a transit record: the name of a segment holding a pickle too
                      big to go inline (shoal._serialize)
    K                 a kept record: a keeper id, then an inline or transit record
                      whose shoal references the keeper holds (shoal._serialize)
    H                 a SharedDict value holding references: the dict's keeper id,
                      then its pickle (shoal._codec, "stored references")

The limits that both halves must agree on are here too, derived from where they are
defined (the fast codec's tuple size from ``_core``; a segment name's length from
``shoal._memory``), not copied.
"""

from __future__ import annotations

from . import _core
from ._memory import KEEPER_ID_SIZE, NAME_PREFIX

__all__ = [
    "FAST_TAGS",
    "FAST_TUPLE_MAX",
    "KEPT_PREFIX_SIZE",
    "STORED_PREFIX_SIZE",
    "TAG_KEPT",
    "TAG_PICKLE",
    "TAG_STORED",
    "TAG_TRANSIT",
    "TRANSIT_RECORD_SIZE",
]

TAG_PICKLE: int = _core.TAG_PICKLE
TAG_TRANSIT: int = _core.TAG_TRANSIT
TAG_KEPT: int = _core.TAG_KEPT
TAG_STORED: int = _core.TAG_STORED
# the fast codec's own (a record starting with one of these never reaches pickle)
FAST_TAGS: frozenset[int] = frozenset(
    (
        _core.TAG_NONE,
        _core.TAG_TRUE,
        _core.TAG_FALSE,
        _core.TAG_INT,
        _core.TAG_FLOAT,
        _core.TAG_STR,
        _core.TAG_BYTES,
        _core.TAG_TUPLE,
    )
)

# the longest tuple of scalars the fast codec encodes itself (longer ones are pickled)
FAST_TUPLE_MAX: int = _core.FAST_TUPLE_MAX
# the tag, then a segment's name as shoal._memory makes them ("/shoal-" + 20 hex digits)
TRANSIT_RECORD_SIZE = 1 + len("/" + NAME_PREFIX) + KEEPER_ID_SIZE
# the tag and the keeper id in front of a kept record, and of a stored value
KEPT_PREFIX_SIZE = 1 + KEEPER_ID_SIZE
STORED_PREFIX_SIZE = 1 + KEEPER_ID_SIZE
