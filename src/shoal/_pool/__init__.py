"""Pool and Executor: process pools that survive their workers (the internal face).

What the rest of shoal may import from the pool is re-exported here; the modules
below are the pool's own, in the order they may import each other (each only from
those before it; ``tests/test_layering.py`` checks it)::

    _protocol  the parent<->worker contract: record kinds, slot words, masks, cancel
               marks (its byte and word layout in its docstring)
    _base      the Pool and Executor API once, over a declared engine interface: the
               local engine (``_api``) and the Ray one (``shoal._ray``) implement it
    _startup   a main module without a ``__main__`` guard under spawn/forkserver
    _worker    what runs in the child: claim, run, send, exit with the parent
    _jobs      what the caller holds: AsyncResult, MapResult, IMapIterator, futures
    _engine    the workers, the two rings, the monitor and result threads: starting,
               replacing and reporting dead workers, timeouts, submitting, shutting
    _api       Pool and Executor, each over one (local) engine

"What does the worker run?" is ``_worker``; "what happens when a worker dies?" is
``_engine`` (``_Engine._worker_ended`` and ``_worker_died``).
"""

from __future__ import annotations

from ._api import Executor as Executor
from ._api import Pool as Pool
from ._base import _check_uncollected_mode as _check_uncollected_mode
from ._base import _ExecutorBase as _ExecutorBase
from ._base import _PoolBase as _PoolBase
from ._base import _report_uncollected as _report_uncollected
from ._engine import _Engine as _Engine
from ._jobs import ApplyResult as ApplyResult
from ._jobs import AsyncResult as AsyncResult
from ._jobs import IMapIterator as IMapIterator
from ._jobs import MapResult as MapResult
from ._jobs import _describe_call as _describe_call
from ._jobs import _settled as _settled
from ._protocol import _CALL as _CALL
from ._protocol import _CALL_KW as _CALL_KW
from ._protocol import _MAP as _MAP
from ._protocol import _STARMAP as _STARMAP
from ._worker import uninterruptible as uninterruptible
from ._worker import worker_state as worker_state

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "Executor",
    "IMapIterator",
    "MapResult",
    "Pool",
    "uninterruptible",
    "worker_state",
]
# what the shoal.pool shim exports: multiprocessing.pool's names, and worker_state
POOL_ALL = ["ApplyResult", "AsyncResult", "IMapIterator", "MapResult", "Pool", "worker_state"]

# Their home is shoal._pool, as before the split: how they show in a repr, and where
# shoal/__init__.py finds them (it makes them "shoal" once it hands them out)
for _name in __all__:  # (POOL_ALL is a part of it)
    _value = globals()[_name]
    if _value.__module__.startswith(__name__ + "."):
        _value.__module__ = __name__
del _name, _value
