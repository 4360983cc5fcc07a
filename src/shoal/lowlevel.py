"""Power-user pieces of shoal: segments, atomics and wait/wake on shared buffers.

Everything here is public and stable, but lower level than the multiprocessing-style
API: you manage offsets and lifetimes yourself.

* :class:`Segment` — a named shared-memory segment with a checked header; offsets
  below :data:`HEADER_SIZE` belong to shoal.
* :func:`reap` — remove segments whose holders all died.
* ``load64``, ``store64``, ``fetch_add64``, ``cas64`` — sequentially consistent
  atomics on an 8-byte-aligned word of any writable buffer; ``load32``, ``store32``,
  ``fetch_add32``, ``cas32`` on a 4-byte-aligned one.
* ``wait32(buffer, offset, expected, timeout=None)`` / ``wake32(buffer, offset, n=-1)``
  — sleep while a 32-bit word holds a value / wake sleepers (futex on Linux).
* ``self_token()`` / ``token_alive(token)`` — the process identity used for owners.
"""

# (not re-exported: a sweep, reap() included, must know every class in shared memory;
# see shoal/__init__.py)
from . import _dict, _queues, _sharedctypes, _sync  # noqa: F401
from ._core import cas32 as cas32
from ._core import cas64 as cas64
from ._core import fetch_add32 as fetch_add32
from ._core import fetch_add64 as fetch_add64
from ._core import load32 as load32
from ._core import load64 as load64
from ._core import self_token as self_token
from ._core import store32 as store32
from ._core import store64 as store64
from ._core import token_alive as token_alive
from ._core import wait32 as wait32
from ._core import wake32 as wake32
from ._memory import HEADER_SIZE as HEADER_SIZE
from ._memory import Segment as Segment
from ._memory import attached_names as attached_names
from ._memory import reap as reap

__all__ = [
    "HEADER_SIZE",
    "Segment",
    "attached_names",
    "cas32",
    "cas64",
    "fetch_add32",
    "fetch_add64",
    "load32",
    "load64",
    "reap",
    "self_token",
    "store32",
    "store64",
    "token_alive",
    "wait32",
    "wake32",
]
