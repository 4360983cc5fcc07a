"""``shoal.pool``: where ``multiprocessing.pool`` users look (``from shoal.pool import Pool``)."""

from ._pool import POOL_ALL as __all__  # noqa: F401 (the list is _pool's own)
from ._pool import ApplyResult as ApplyResult
from ._pool import AsyncResult as AsyncResult
from ._pool import IMapIterator as IMapIterator
from ._pool import MapResult as MapResult
from ._pool import Pool as Pool
from ._pool import worker_state as worker_state
