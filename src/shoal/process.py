"""Stdlib-shaped shim: ``from shoal.process import current_process``, as from
``multiprocessing.process`` (the standard library's own objects)."""

from ._process import PROCESS_ALL as __all__  # noqa: F401 (the list is _process's own)
from ._process import BaseProcess as BaseProcess
from ._process import Process as Process
from ._process import active_children as active_children
from ._process import current_process as current_process
from ._process import parent_process as parent_process
from ._process import process_cpu_count as process_cpu_count
