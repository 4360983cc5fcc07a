"""Stdlib-shaped shim: ``from shoal.managers import SyncManager, BaseManager, DictProxy``,
as from ``multiprocessing.managers``.

``SyncManager`` and ``Namespace`` are shoal's (the manager's objects live in shared
memory; a server runs only for types a subclass registers); ``BaseManager``, the
proxies, ``Token``, ``Server`` and ``SharedMemoryManager`` are the standard library's,
and ``SetProxy`` (Python 3.14's) is there on every version."""

from ._managers import AcquirerProxy as AcquirerProxy
from ._managers import ArrayProxy as ArrayProxy
from ._managers import AutoProxy as AutoProxy
from ._managers import BarrierProxy as BarrierProxy
from ._managers import BaseListProxy as BaseListProxy
from ._managers import BaseManager as BaseManager
from ._managers import BasePoolProxy as BasePoolProxy
from ._managers import BaseProxy as BaseProxy
from ._managers import ConditionProxy as ConditionProxy
from ._managers import DictProxy as DictProxy
from ._managers import EventProxy as EventProxy
from ._managers import IteratorProxy as IteratorProxy
from ._managers import ListProxy as ListProxy
from ._managers import MakeProxyType as MakeProxyType
from ._managers import Namespace as Namespace
from ._managers import NamespaceProxy as NamespaceProxy
from ._managers import PoolProxy as PoolProxy
from ._managers import RebuildProxy as RebuildProxy
from ._managers import RemoteError as RemoteError
from ._managers import Server as Server
from ._managers import SetProxy as SetProxy
from ._managers import SharedMemoryManager as SharedMemoryManager
from ._managers import SharedMemoryServer as SharedMemoryServer
from ._managers import State as State
from ._managers import SyncManager as SyncManager
from ._managers import Token as Token
from ._managers import ValueProxy as ValueProxy
from ._managers import all_methods as all_methods
from ._managers import convert_to_error as convert_to_error
from ._managers import dispatch as dispatch
from ._managers import public_methods as public_methods

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "AutoProxy",
    "BarrierProxy",
    "BaseListProxy",
    "BaseManager",
    "BasePoolProxy",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "MakeProxyType",
    "Namespace",
    "NamespaceProxy",
    "PoolProxy",
    "RebuildProxy",
    "RemoteError",
    "Server",
    "SetProxy",
    "SharedMemoryManager",
    "SharedMemoryServer",
    "State",
    "SyncManager",
    "Token",
    "ValueProxy",
    "all_methods",
    "convert_to_error",
    "dispatch",
    "public_methods",
]
