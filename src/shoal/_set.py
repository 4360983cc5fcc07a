"""SharedSet: a set in shared memory, what ``Manager().set()`` returns (issue #11).

Python 3.14 added ``SyncManager.set()``, a ``SetProxy`` to a set in the manager's
server.  shoal's is a :class:`~shoal.SharedDict` whose keys are the elements (each
stored with the value None, which skips pickle), so it works on every Python shoal
supports, with no server: each ``add``, ``discard``, ``remove``, ``pop`` and
membership test is one atomic operation on the table; ``clear()`` is one step too.
Updates with many elements (``update``, ``|=``, ``&=``, ``-=``, ``^=``...) are a
series of those atomic steps, as ``dict.update`` on a ``SharedDict`` is.

Operations that make a new set (``|``, ``&``, ``-``, ``^``, ``union()``,
``copy()``...) return a plain ``set`` built from a snapshot, as a ``SetProxy``'s
server returns one.  Iteration goes over a snapshot taken when it starts.

As in a ``SharedDict``, elements compare by their stored bytes: ``1``, ``1.0`` and
``True`` are three different elements (a ``set`` holds one of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSet
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

from ._dict import SharedDict, _recursive_repr
from ._errors import ClosedError

__all__ = ["SharedSet"]

_T = TypeVar("_T")


def _rebuild_set(items: SharedDict) -> SharedSet:
    obj = SharedSet.__new__(SharedSet)
    obj._items = items
    return obj


def _hashable(element: Any) -> Any:
    """``element``, after checking it could be in a ``set``: if not, the ``TypeError`` a
    set raises, in this Python's words (3.14 names the set: "cannot use 'list' as a set
    element (unhashable type: 'list')")."""
    element in _NO_ELEMENTS  # noqa: B015 (the set's own hashing, for its error)
    return element


_NO_ELEMENTS: frozenset[Any] = frozenset()


class SharedSet(MutableSet[_T]):
    """A ``set`` in shared memory, used by many processes at once with no server.

    ``SharedSet(iterable=(), /)``.  Elements are any hashable, picklable objects.
    Everything a ``set`` has, with its results and errors: ``add``, ``discard``,
    ``remove``, ``pop``, ``clear``, ``update``, ``intersection_update``,
    ``difference_update``, ``symmetric_difference_update``, ``union``,
    ``intersection``, ``difference``, ``symmetric_difference``, ``issubset``,
    ``issuperset``, ``isdisjoint``, ``copy`` (a plain set), ``len``, ``in``,
    iteration (over a snapshot), ``|``, ``&``, ``-``, ``^`` (plain sets), ``|=``,
    ``&=``, ``-=``, ``^=`` (in place), and comparisons with sets (``==``, ``<``,
    ``<=``...).  It prints as a set.  Each single-element operation is atomic.  It
    pickles as a handle (``Pool`` tasks, queues, later processes); :meth:`close`
    releases this process's handle.
    """

    _items: SharedDict

    def __init__(self, iterable: Iterable[_T] = (), /) -> None:
        self._items = SharedDict()
        try:
            self.update(iterable)
        except BaseException:
            self._items.close()
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        if self.closed:
            raise ClosedError("cannot pickle a closed SharedSet")
        return (_rebuild_set, (self._items,))

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called in this process."""
        return self._items.closed

    def close(self) -> None:
        """Release this process's handle (the set lives on while others hold it)."""
        self._items.close()

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        # what the Set mixins (|, &, -, ^) build their results with: a plain set
        return set(it)

    # ---- the set API ----------------------------------------------------------------------

    def __contains__(self, element: object) -> bool:
        return _hashable(element) in self._items

    def __iter__(self) -> Iterator[_T]:
        """Iterate over a snapshot of the elements (changes made meanwhile are not seen
        and never make it fail)."""
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, element: _T) -> None:
        """Add ``element`` (one atomic step; nothing happens if it is there)."""
        self._items[_hashable(element)] = None

    def discard(self, element: _T) -> None:
        """Remove ``element`` if it is there (one atomic step)."""
        self._items.pop(_hashable(element), None)

    def remove(self, element: _T) -> None:
        """Remove ``element`` (one atomic step); ``KeyError`` if it is not there."""
        try:
            del self._items[_hashable(element)]
        except KeyError:
            raise KeyError(element) from None

    def pop(self) -> _T:
        """Remove and return an element (one atomic step); ``KeyError`` if empty."""
        try:
            return self._items.popitem()[0]
        except KeyError:
            raise KeyError("pop from an empty set") from None

    def clear(self) -> None:
        """Remove every element (one atomic step)."""
        self._items.clear()

    def copy(self) -> set[_T]:
        """A plain ``set`` with a snapshot of the elements."""
        return set(self._items)

    def update(self, *others: Iterable[_T]) -> None:
        """Add every element of each of ``others`` (any iterables), one by one."""
        for other in others:
            for element in list(other):
                self.add(element)

    def intersection_update(self, *others: Iterable[Any]) -> None:
        """Keep only the elements found in every one of ``others``."""
        keep = set(self._items).intersection(*others)
        for element in self._items:
            if element not in keep:
                self.discard(element)

    def difference_update(self, *others: Iterable[Any]) -> None:
        """Remove every element found in any of ``others``."""
        for other in others:
            for element in list(other):
                self.discard(element)

    def symmetric_difference_update(self, other: Iterable[_T]) -> None:
        """Keep the elements found in this set or in ``other``, not in both."""
        for element in set(other):
            if element in self:
                self.discard(element)
            else:
                self.add(element)

    def union(self, *others: Iterable[Any]) -> set[Any]:
        """A plain ``set``: these elements and those of each of ``others``."""
        return set(self._items).union(*others)

    def intersection(self, *others: Iterable[Any]) -> set[_T]:
        """A plain ``set``: the elements also found in every one of ``others``."""
        return set(self._items).intersection(*others)

    def difference(self, *others: Iterable[Any]) -> set[_T]:
        """A plain ``set``: the elements found in none of ``others``."""
        return set(self._items).difference(*others)

    def symmetric_difference(self, other: Iterable[Any]) -> set[Any]:
        """A plain ``set``: the elements in this set or in ``other``, not in both."""
        return set(self._items).symmetric_difference(other)

    def issubset(self, other: Iterable[Any]) -> bool:
        """Whether every element is in ``other`` (any iterable)."""
        return set(self._items).issubset(other)

    def issuperset(self, other: Iterable[Any]) -> bool:
        """Whether every element of ``other`` (any iterable) is in this set."""
        return set(self._items).issuperset(other)

    def isdisjoint(self, other: Iterable[Any]) -> bool:
        """Whether no element of ``other`` (any iterable) is in this set."""
        return set(self._items).isdisjoint(other)

    # ---- operators: as a set's, which take only sets (the Set mixins take any iterable) ---

    def __or__(self, other: AbstractSet[Any]) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(self._items) | set(other)

    __ror__ = __or__

    def __and__(self, other: AbstractSet[Any]) -> set[_T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(self._items) & set(other)

    __rand__ = __and__

    def __sub__(self, other: AbstractSet[Any]) -> set[_T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(self._items) - set(other)

    def __rsub__(self, other: AbstractSet[Any]) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(other) - set(self._items)

    def __xor__(self, other: AbstractSet[Any]) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(self._items) ^ set(other)

    __rxor__ = __xor__

    def __ior__(self, other: AbstractSet[Any]) -> SharedSet[_T]:  # type: ignore[override]
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.update(other)
        return self

    def __iand__(self, other: AbstractSet[Any]) -> SharedSet[_T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.intersection_update(other)
        return self

    def __isub__(self, other: AbstractSet[Any]) -> SharedSet[_T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        if other is self:
            self.clear()
        else:
            self.difference_update(other)
        return self

    def __ixor__(self, other: AbstractSet[Any]) -> SharedSet[_T]:  # type: ignore[override]
        if not isinstance(other, AbstractSet):
            return NotImplemented
        if other is self:
            self.clear()
        else:
            self.symmetric_difference_update(other)
        return self

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(self._items) == set(other)

    # by identity, as Manager proxies are (a set's __hash__ is None; shoal keeps live
    # handles in a WeakSet)
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __repr__(self) -> str:
        """The repr of a set with these elements (``set()`` when empty)."""
        if self.closed:
            return "<shoal.SharedSet closed>"
        items = self._items

        def make() -> str:
            elements = list(items)
            return "{" + ", ".join(map(repr, elements)) + "}" if elements else "set()"

        return _recursive_repr(("set", items._segment.name, items._header_offset), "{...}", make)
