"""The upcalls: the Python functions shoal's C half calls for what it does not encode.

The C side (``_core_glue.h``, ``core_state``) encodes scalars and tuples of them itself
(the fast codec, ``shoal._record``); everything else goes through these, which this
module registers with ``_core._set_codec`` as it is imported, and no other module does.
``_core`` imports this module the first time it needs one of them, so a ``Ring`` or
``Dict`` used before any other shoal module was imported still decodes; and the only
import the C side makes above itself is this one (``tests/test_layering.py``).

- ``loads``: a ring record or dict entry that is not fast-coded (a pickle, or a transit
  or kept record: ``shoal._serialize``) becomes the object;
- ``encode`` / ``encode_key``: a SharedDict value / key that is not fast-coded becomes
  its pickle; a value holding shoal objects becomes a *stored* value (``TAG_STORED``
  and the dict's keeper id in front: ``shoal._handle``, "Stored references"), whose
  references the dict keeps;
- ``loads_stored``: a stored value, read (its objects take references of their own);
- ``release``: a stored value removed from its dict (or never stored): its references
  go back.
"""

from __future__ import annotations

import pickle
from typing import Any

from . import _core
from ._handle import releasing_stored, sent_references
from ._memory import keeper_id, report_unraisable
from ._record import STORED_PREFIX_SIZE, TAG_STORED
from ._serialize import dumps, loads

__all__: list[str] = []

# the first byte of a value that holds references to shoal objects, followed by the
# keeper id of the dict that keeps them
_STORED = bytes((TAG_STORED,))


def _pickle(obj: Any, sent: Any) -> bytes:
    """Pickle with in-band buffers only, inside ``sent``'s block."""
    data, buffers = dumps(obj)
    if buffers is not None:
        sent.cancel()  # that pickle is thrown away
        data = pickle.dumps(obj, protocol=5)
    return data


def _encode(obj: Any, owner: Any = None) -> bytes:
    """Pickle a value that the C codec does not handle, for the dict ``owner``.

    One holding shoal objects gets the marker byte and the dict's keeper id, and the
    references its pickle took become the dict's (stored references: read without
    being adopted, released by the writer that removes the value, kept under the
    dict's name in their segments, so that they never expire and go with the dict).
    """
    with sent_references() as sent:
        data = _pickle(obj, sent)
        if not len(sent):
            return data
        if owner is None:  # a key (no key encoder set): it names objects, keeps none
            sent.cancel()
            return data
        keeper = keeper_id(owner._segment.name)
        data = _STORED + keeper + data
        sent.store(keeper)
    return data


def _encode_key(obj: Any) -> bytes:
    """Pickle a key: it names shoal objects, it does not keep them (every lookup pickles)."""
    with sent_references() as sent:
        data = _pickle(obj, sent)
        if len(sent):
            sent.cancel()
    return data


def _loads_stored(raw: bytes) -> Any:
    """Read a value holding references: its objects take references of their own."""
    return loads(raw[STORED_PREFIX_SIZE:])


def _release_stored(raw: bytes) -> None:
    """Give back the references of a value removed from a dict (or never stored)."""
    try:
        with releasing_stored(raw[1:STORED_PREFIX_SIZE]):
            loads(raw[STORED_PREFIX_SIZE:])
    except Exception as exc:  # the write is done; what could not be given back leaks
        report_unraisable(exc)


# (read again from the top when the dict meets a value removed after it copied it: the
# C side matches SegmentNotFoundError, which _core takes from shoal._errors)
_core._set_codec(
    loads=loads,
    encode=_encode,
    encode_key=_encode_key,
    loads_stored=_loads_stored,
    release=_release_stored,
)
