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

The ``set`` API itself is :class:`_SetBase`'s, over a few primitives (membership, a
snapshot, single-element steps, and the four updates): ``SharedSet`` implements them
on its ``SharedDict``, and the Ray backend's set (``shoal._ray_objects.RaySharedSet``,
#13) as calls to the actor that holds the set, so both have one API, one set of
argument checks and one set of results.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSet
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, TypeVar

from ._dict import SharedDict, _recursive_repr
from ._errors import ClosedError

if TYPE_CHECKING:  # (annotations only)
    from typing_extensions import Self

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


class _SetBase(MutableSet[_T]):
    """The ``set`` API over a few primitives, which each kind of shared set implements:

    ``_has(element)``, ``__len__()``, ``_elements()`` (a snapshot, a list), ``_add``,
    ``_discard``, ``_remove(element)`` (whether it was there), ``_pop()`` (``(True,
    element)``, or ``(False, None)`` when empty), ``clear()``, ``_apply(name, others)``
    (``name`` one of :data:`_UPDATES`, ``others`` lists of elements already checked),
    ``closed`` and ``_repr_key()`` (what names this set in a recursive repr).

    Elements are checked here, in the caller (``TypeError`` for an unhashable one, in
    a ``set``'s words); results that are new sets are plain ``set`` objects.
    """

    # ---- the primitives (each subclass) ---------------------------------------------------

    def _has(self, element: Any) -> bool:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def _elements(self) -> list[_T]:
        raise NotImplementedError

    def _add(self, element: Any) -> None:
        raise NotImplementedError

    def _discard(self, element: Any) -> None:
        raise NotImplementedError

    def _remove(self, element: Any) -> bool:
        raise NotImplementedError

    def _pop(self) -> tuple[bool, Any]:
        raise NotImplementedError

    def clear(self) -> None:
        """Remove every element (one atomic step)."""
        raise NotImplementedError

    def _apply(self, name: str, others: list[list[Any]]) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def _repr_key(self) -> Any:
        raise NotImplementedError

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        # what the Set mixins (|, &, -, ^) build their results with: a plain set
        return set(it)

    def _snapshot(self) -> set[_T]:
        return set(self._elements())

    # ---- the set API ----------------------------------------------------------------------

    def __contains__(self, element: object) -> bool:
        return self._has(_hashable(element))

    def __iter__(self) -> Iterator[_T]:
        """Iterate over a snapshot of the elements (changes made meanwhile are not seen
        and never make it fail)."""
        return iter(self._elements())

    def add(self, element: _T) -> None:
        """Add ``element`` (one atomic step; nothing happens if it is there)."""
        self._add(_hashable(element))

    def discard(self, element: _T) -> None:
        """Remove ``element`` if it is there (one atomic step)."""
        self._discard(_hashable(element))

    def remove(self, element: _T) -> None:
        """Remove ``element`` (one atomic step); ``KeyError`` if it is not there."""
        if not self._remove(_hashable(element)):
            raise KeyError(element)

    def pop(self) -> _T:
        """Remove and return an element (one atomic step); ``KeyError`` if empty."""
        found, element = self._pop()
        if not found:
            raise KeyError("pop from an empty set")
        return element  # type: ignore[no-any-return]

    def copy(self) -> set[_T]:
        """A plain ``set`` with a snapshot of the elements."""
        return self._snapshot()

    def update(self, *others: Iterable[_T]) -> None:
        """Add every element of each of ``others`` (any iterables)."""
        self._apply("update", _checked(others))

    def intersection_update(self, *others: Iterable[Any]) -> None:
        """Keep only the elements found in every one of ``others``."""
        self._apply("intersection_update", _checked(others))

    def difference_update(self, *others: Iterable[Any]) -> None:
        """Remove every element found in any of ``others``."""
        self._apply("difference_update", _checked(others))

    def symmetric_difference_update(self, other: Iterable[_T]) -> None:
        """Keep the elements found in this set or in ``other``, not in both."""
        self._apply("symmetric_difference_update", _checked((other,)))

    def union(self, *others: Iterable[Any]) -> set[Any]:
        """A plain ``set``: these elements and those of each of ``others``."""
        return self._snapshot().union(*others)

    def intersection(self, *others: Iterable[Any]) -> set[_T]:
        """A plain ``set``: the elements also found in every one of ``others``."""
        return self._snapshot().intersection(*others)

    def difference(self, *others: Iterable[Any]) -> set[_T]:
        """A plain ``set``: the elements found in none of ``others``."""
        return self._snapshot().difference(*others)

    def symmetric_difference(self, other: Iterable[Any]) -> set[Any]:
        """A plain ``set``: the elements in this set or in ``other``, not in both."""
        return self._snapshot().symmetric_difference(other)

    def issubset(self, other: Iterable[Any]) -> bool:
        """Whether every element is in ``other`` (any iterable)."""
        return self._snapshot().issubset(other)

    def issuperset(self, other: Iterable[Any]) -> bool:
        """Whether every element of ``other`` (any iterable) is in this set."""
        return self._snapshot().issuperset(other)

    def isdisjoint(self, other: Iterable[Any]) -> bool:
        """Whether no element of ``other`` (any iterable) is in this set."""
        return self._snapshot().isdisjoint(other)

    # ---- operators: as a set's, which take only sets (the Set mixins take any iterable) ---

    def __or__(self, other: AbstractSet[Any]) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self._snapshot() | set(other)

    __ror__ = __or__

    def __and__(self, other: AbstractSet[Any]) -> set[_T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self._snapshot() & set(other)

    __rand__ = __and__

    def __sub__(self, other: AbstractSet[Any]) -> set[_T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self._snapshot() - set(other)

    def __rsub__(self, other: AbstractSet[Any]) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(other) - self._snapshot()

    def __xor__(self, other: AbstractSet[Any]) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self._snapshot() ^ set(other)

    __rxor__ = __xor__

    def __ior__(self, other: AbstractSet[Any]) -> Self:  # type: ignore[override, misc]
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.update(other)
        return self

    def __iand__(self, other: AbstractSet[Any]) -> Self:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.intersection_update(other)
        return self

    def __isub__(self, other: AbstractSet[Any]) -> Self:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        if other is self:
            self.clear()
        else:
            self.difference_update(other)
        return self

    def __ixor__(self, other: AbstractSet[Any]) -> Self:  # type: ignore[override, misc]
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
        return self._snapshot() == set(other)

    # by identity, as Manager proxies are (a set's __hash__ is None; shoal keeps live
    # handles in a WeakSet)
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __repr__(self) -> str:
        """The repr of a set with these elements (``set()`` when empty)."""
        if self.closed:
            return f"<shoal.{type(self).__name__} closed>"

        def make() -> str:
            elements = self._elements()
            return "{" + ", ".join(map(repr, elements)) + "}" if elements else "set()"

        return _recursive_repr(self._repr_key(), "{...}", make)


_UPDATES = frozenset(
    {"update", "intersection_update", "difference_update", "symmetric_difference_update"}
)


def _checked(others: Iterable[Iterable[Any]]) -> list[list[Any]]:
    """Each of ``others`` as a list of its elements, each checked as a set's would be."""
    return [[_hashable(element) for element in other] for other in others]


class SharedSet(_SetBase[_T]):
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

    # ---- the primitives, on the SharedDict: the elements are its keys ------------------------

    def _has(self, element: Any) -> bool:
        return element in self._items

    def __len__(self) -> int:
        return len(self._items)

    def _elements(self) -> list[_T]:
        return list(self._items)

    def _add(self, element: Any) -> None:
        self._items[element] = None

    def _discard(self, element: Any) -> None:
        self._items.pop(element, None)

    def _remove(self, element: Any) -> bool:
        try:
            del self._items[element]
        except KeyError:
            return False
        return True

    def _pop(self) -> tuple[bool, Any]:
        try:
            return True, self._items.popitem()[0]
        except KeyError:
            return False, None

    def clear(self) -> None:
        """Remove every element (one atomic step)."""
        self._items.clear()

    def _apply(self, name: str, others: list[list[Any]]) -> None:
        # a series of atomic steps, as dict.update on a SharedDict is
        items = self._items
        if name == "update":
            for other in others:
                for element in other:
                    items[element] = None
        elif name == "difference_update":
            for other in others:
                for element in other:
                    items.pop(element, None)
        elif name == "intersection_update":
            keep = set(items).intersection(*others)
            for element in items:
                if element not in keep:
                    items.pop(element, None)
        else:
            assert name == "symmetric_difference_update", name
            for element in set(others[0]):
                if element in items:
                    items.pop(element, None)
                else:
                    items[element] = None

    def _repr_key(self) -> Any:
        return ("set", self._items._segment.name, self._items._header_offset)
