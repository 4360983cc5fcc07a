"""``shoal.pool``: where ``multiprocessing.pool`` users look (``from shoal.pool import Pool``)."""

from ._pool import ApplyResult as ApplyResult
from ._pool import AsyncResult as AsyncResult
from ._pool import IMapIterator as IMapIterator
from ._pool import MapResult as MapResult
from ._pool import Pool as Pool
from ._pool import worker_state as worker_state

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "MapResult", "Pool", "worker_state"]
