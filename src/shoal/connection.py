"""Stdlib-shaped shim: ``from shoal.connection import Pipe, wait``, as from
``multiprocessing.connection`` (the standard library's own objects: shoal's queues and
locks do not need connections, but programs that use them port unchanged)."""

from ._process import CONNECTION_ALL as __all__  # noqa: F401 (the list is _process's own)
from ._process import Client as Client
from ._process import Connection as Connection
from ._process import Listener as Listener
from ._process import Pipe as Pipe
from ._process import families as families
from ._process import wait as wait
