"""SharedList: a list in shared memory for ``Manager().list()`` users (issue #4).

Built on :class:`~shoal.SharedDict`: item ``i`` is stored under the int key ``i`` and
the length under the key ``None``, and every operation runs under one recursive shoal
lock (so an ``append`` from one process and an ``insert`` from another never
interleave, and reads never see a half-shifted list).  That makes each operation and
slicing atomic, at the cost of reads taking the lock too: still a memory operation, not
a round trip to a server process.  Iteration is a list's (#11): index-based and live,
each step one atomic read of the item at the next index (so it sees later items change,
and stops once the index passes the current length), as ``Manager().list()``'s, which
iterates by ``__getitem__``.

The API is ``list``'s, results and exceptions included (``tests/test_list_compat.py``
runs every operation on both); ``+``/``*`` return plain lists, ``+=``/``*=`` change the
shared list in place.

Crashes: ``append``, ``extend``, ``x[i] = v`` and ``pop()`` from the end store the
items first and the new length last, so a process killed in the middle leaves the
list as it was before or after.  ``insert``, ``pop(i)``, ``del`` and slice
assignment shift items one by one: a process killed in the middle of the shift can
leave one item duplicated or missing (the lock itself is recovered from the dead
owner silently).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, MutableSequence
from typing import Any, SupportsIndex, TypeVar, overload

from ._dict import SharedDict, _recursive_repr
from ._errors import ClosedError
from ._sync import RLock

__all__ = ["SharedList"]

_T = TypeVar("_T")

_LEN = None  # the key of the length (items are under int keys)
_LOCK_TIMEOUT = 30.0


def _rebuild_list(items: SharedDict, lock: RLock) -> SharedList:
    obj = SharedList.__new__(SharedList)
    obj._items, obj._lock = items, lock
    return obj


class SharedList(MutableSequence[_T]):
    """A ``list`` in shared memory, used by many processes at once with no server.

    ``SharedList(iterable=(), /)``.  Items are any picklable objects (None, bool, int,
    float, str, bytes and tuples of them skip pickle).  Everything a ``list`` has, with
    its results and errors: indexing and slicing (reading, assigning, deleting, steps,
    negative indices), ``len``, ``append``, ``extend``, ``insert``, ``pop``,
    ``remove``, ``index``, ``count``, ``in``, iteration and ``reversed()`` (live, as a
    list's), ``reverse``, ``sort``, ``clear``, ``copy()`` (a plain list), ``+`` and
    ``*`` (plain lists), ``+=`` and ``*=`` (in place), comparisons with lists.  It prints
    as a list.  Each operation is atomic.  It pickles as a handle (``Pool`` tasks,
    queues, later processes); :meth:`close` releases this process's handle.
    """

    _items: SharedDict
    _lock: RLock

    def __init__(self, iterable: Iterable[_T] = (), /) -> None:
        self._items = SharedDict()
        try:
            self._lock = RLock._internal()
        except BaseException:
            self._items.close()
            raise
        self._items[_LEN] = 0
        if iterable:
            self.extend(iterable)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.closed:
            raise ClosedError("cannot pickle a closed SharedList")
        return (_rebuild_list, (self._items, self._lock))

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called in this process."""
        return self._items.closed

    def close(self) -> None:
        """Release this process's handle (the list lives on while others hold it)."""
        self._items.close()
        self._lock.close()

    # ---- locking -----------------------------------------------------------------------

    def _acquire(self) -> None:
        if self._items.closed:
            raise ClosedError("this SharedList is closed and cannot be used any more")
        if not self._lock.acquire(True, _LOCK_TIMEOUT):
            raise TimeoutError(
                f"the SharedList's lock stayed held for {_LOCK_TIMEOUT:.0f} s "
                "(is a process holding it stopped?)"
            )

    def _length(self) -> int:
        # (no length stored: the table is empty, as clear() leaves it between its two
        # steps, or a process killed there)
        return self._items.get(_LEN, 0)

    def _snapshot(self) -> list[Any]:
        items = self._items
        return [items[i] for i in range(self._length())]

    def _rewrite(self, new: list[Any], old_len: int) -> None:
        """Replace the contents with ``new`` (lock held): items first, length last."""
        items = self._items
        for i, value in enumerate(new):
            items[i] = value
        items[_LEN] = len(new)
        for i in range(len(new), old_len):
            items.pop(i, None)

    # ---- the sequence API ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._length()

    @overload
    def __getitem__(self, index: SupportsIndex) -> _T: ...
    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...
    def __getitem__(self, index: Any) -> Any:
        self._acquire()
        try:
            n = self._length()
            if isinstance(index, slice):
                return [self._items[i] for i in range(n)[index]]
            i = _position(index, n, "list index out of range")
            return self._items[i]
        finally:
            self._lock.release()

    @overload
    def __setitem__(self, index: SupportsIndex, value: _T) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[_T]) -> None: ...
    def __setitem__(self, index: Any, value: Any) -> None:
        self._acquire()
        try:
            n = self._length()
            if isinstance(index, slice):
                new = self._snapshot()
                new[index] = value  # list semantics, errors included
                self._rewrite(new, n)
                return
            self._items[_position(index, n, _ASSIGNMENT_RANGE)] = value
        finally:
            self._lock.release()

    def __delitem__(self, index: Any) -> None:
        self._acquire()
        try:
            n = self._length()
            if isinstance(index, slice):
                new = self._snapshot()
                del new[index]
                self._rewrite(new, n)
                return
            self._remove_at(_position(index, n, _ASSIGNMENT_RANGE), n)
        finally:
            self._lock.release()

    def _remove_at(self, i: int, n: int) -> None:
        items = self._items
        for j in range(i + 1, n):
            items[j - 1] = items[j]
        items[_LEN] = n - 1
        items.pop(n - 1, None)

    def insert(self, index: SupportsIndex, value: _T) -> None:
        """Insert ``value`` before position ``index`` (clamped, as ``list.insert``)."""
        self._acquire()
        try:
            items = self._items
            n = self._length()
            i = operator.index(index)
            i = min(max(i + n if i < 0 else i, 0), n)  # clamped, as list.insert
            for j in range(n, i, -1):
                items[j] = items[j - 1]
            items[i] = value
            items[_LEN] = n + 1
        finally:
            self._lock.release()

    def append(self, value: _T) -> None:
        """Append ``value`` (atomically: concurrent appends all land, in some order)."""
        self._acquire()
        try:
            n = self._length()
            self._items[n] = value
            self._items[_LEN] = n + 1
        finally:
            self._lock.release()

    def extend(self, values: Iterable[_T]) -> None:
        """Append every item of ``values``, as one atomic step."""
        if values is self:
            values = self.copy()
        values = list(values)
        self._acquire()
        try:
            n = self._length()
            for i, value in enumerate(values, n):
                self._items[i] = value
            self._items[_LEN] = n + len(values)  # last: an error above changes nothing
        finally:
            self._lock.release()

    def pop(self, index: SupportsIndex = -1) -> _T:
        """Remove and return the item at ``index`` (the last by default)."""
        index = operator.index(index)
        self._acquire()
        try:
            n = self._length()
            if n == 0:
                raise IndexError("pop from empty list")
            i = _position(index, n, "pop index out of range")
            value = self._items[i]
            self._remove_at(i, n)
            return value
        finally:
            self._lock.release()

    def clear(self) -> None:
        """Remove every item."""
        self._acquire()
        try:
            self._items.clear()
            self._items[_LEN] = 0
        finally:
            self._lock.release()

    def copy(self) -> list[_T]:
        """A plain ``list`` with a consistent snapshot of the items."""
        self._acquire()
        try:
            return self._snapshot()
        finally:
            self._lock.release()

    def __iter__(self) -> Iterator[_T]:
        """Iterate as a list does: by index, reading each item when it is reached."""
        return _Iterator(self, 0, 1)

    def __reversed__(self) -> Iterator[_T]:
        """Iterate from the last item to the first, by index (as ``reversed(list)``)."""
        return _Iterator(self, len(self) - 1, -1)

    def _item_at(self, i: int) -> tuple[bool, Any]:
        """(True, item i) if the list has an item ``i`` now, else (False, None)."""
        self._acquire()
        try:
            if 0 <= i < self._length():
                return True, self._items[i]
            return False, None
        finally:
            self._lock.release()

    def __contains__(self, value: object) -> bool:
        return value in self.copy()

    def index(self, value: Any, start: SupportsIndex = 0, stop: SupportsIndex | None = None) -> int:
        """The first position of ``value`` (ValueError if absent), as ``list.index``."""
        snapshot = self.copy()
        return snapshot.index(value, start, len(snapshot) if stop is None else stop)

    def count(self, value: Any) -> int:
        """How many items equal ``value``."""
        return self.copy().count(value)

    def remove(self, value: Any) -> None:
        """Remove the first item equal to ``value`` (ValueError if none), atomically."""
        self._acquire()
        try:
            n = self._length()
            # (as list.remove compares: identity first, and what == raises propagates)
            at = next(
                (i for i, item in enumerate(self._snapshot()) if item is value or item == value),
                None,
            )
            if at is None:
                raise ValueError("list.remove(x): x not in list")
            self._remove_at(at, n)
        finally:
            self._lock.release()

    def reverse(self) -> None:
        """Reverse the items in place."""
        self._reorder(lambda items: items.reverse())

    def sort(self, *args: Any, key: Any = None, reverse: bool = False) -> None:
        """Sort the items in place, as ``list.sort`` (stable; keyword arguments only)."""
        if args:
            raise TypeError("sort() takes no positional arguments")
        self._reorder(lambda items: items.sort(key=key, reverse=reverse))

    def _reorder(self, how: Any) -> None:
        self._acquire()
        try:
            items = self._snapshot()
            try:
                how(items)
            finally:
                # a sort that raised leaves the items as list.sort leaves them
                self._rewrite(items, len(items))
        finally:
            self._lock.release()

    def __iadd__(self, values: Iterable[_T]) -> SharedList[_T]:  # type: ignore[override,misc]
        self.extend(values)
        return self

    def __imul__(self, times: Any) -> SharedList[_T]:
        """Repeat the items in place ``times`` times (0 or less: empty), atomically."""
        count = _repeat_count(times)
        self._acquire()
        try:
            items = self._snapshot()
            n = len(items)
            if count <= 0:
                self._rewrite([], n)
            elif count > 1 and n:
                for i, value in enumerate(items * (count - 1), n):
                    self._items[i] = value
                self._items[_LEN] = n * count  # last, as extend
        finally:
            self._lock.release()
        return self

    def __mul__(self, times: Any) -> list[_T]:
        return self.copy() * _repeat_count(times)

    __rmul__ = __mul__

    def __add__(self, other: Any) -> list[Any]:
        if isinstance(other, SharedList):
            other = other.copy()
        return self.copy() + other  # (a list's error for what is not a list)

    def __radd__(self, other: Any) -> list[Any]:
        if not isinstance(other, list):
            return NotImplemented
        return other + self.copy()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedList):
            return self is other or self.copy() == other.copy()
        if isinstance(other, list):
            return self.copy() == other
        return NotImplemented

    def _compared(self, other: object) -> list[Any] | None:
        if isinstance(other, SharedList):
            return other.copy()
        return other if isinstance(other, list) else None

    def __lt__(self, other: object) -> bool:
        theirs = self._compared(other)
        return NotImplemented if theirs is None else self.copy() < theirs

    def __le__(self, other: object) -> bool:
        theirs = self._compared(other)
        return NotImplemented if theirs is None else self.copy() <= theirs

    def __gt__(self, other: object) -> bool:
        theirs = self._compared(other)
        return NotImplemented if theirs is None else self.copy() > theirs

    def __ge__(self, other: object) -> bool:
        theirs = self._compared(other)
        return NotImplemented if theirs is None else self.copy() >= theirs

    __hash__ = object.__hash__  # by identity, like Manager proxies

    def __repr__(self) -> str:
        """The repr of a list with these items (as ``str(Manager().list())`` prints)."""
        if self.closed:
            return "<shoal.SharedList closed>"
        key = ("list", self._items._segment.name, self._items._header_offset)
        return _recursive_repr(key, "[...]", lambda: repr(self.copy()))


class _Iterator(Iterator[Any]):
    """A list iterator over a SharedList: the item at the next index, read when asked."""

    __slots__ = ("_list", "_next", "_step")

    def __init__(self, shared: SharedList, start: int, step: int) -> None:
        self._list: SharedList | None = shared
        self._next = start
        self._step = step

    def __iter__(self) -> _Iterator:
        return self

    def __next__(self) -> Any:
        if self._list is not None:
            there, value = self._list._item_at(self._next)
            if there:
                self._next += self._step
                return value
            self._list = None  # exhausted stays exhausted, as a list iterator
        raise StopIteration

    def __length_hint__(self) -> int:
        if self._list is None:
            return 0
        if self._step < 0:
            return max(self._next + 1, 0)
        return max(len(self._list) - self._next, 0)


_ASSIGNMENT_RANGE = "list assignment index out of range"


def _position(index: Any, n: int, out_of_range: str) -> int:
    """A list index (int-like, negative from the end) as a position, or list's error."""
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError(
            f"list indices must be integers or slices, not {type(index).__name__}"
        ) from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(out_of_range)
    return i


def _repeat_count(times: Any) -> int:
    try:
        return operator.index(times)
    except TypeError:
        raise TypeError(
            f"can't multiply sequence by non-int of type '{type(times).__name__}'"
        ) from None
