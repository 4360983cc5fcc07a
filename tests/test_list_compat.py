"""SharedList behaves as the list (and ``Manager().list()``) programs expect (#11).

Every operation of ``list`` is run on a SharedList and on a plain list side by side:
the same results, the same contents afterwards, the same exceptions (type and message).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.managers
import operator
from collections.abc import Callable
from typing import Any

import pytest

import shoal
from shoal import SharedList

START = [3, 1, 4, 1, 5, 9, 2, 6]


def outcome(fn: Callable[[Any], Any], target: Any) -> tuple[str, Any]:
    try:
        result = fn(target)
    except Exception as exc:  # the comparison is the point
        # (a type's name in a message is its own: "... instances of 'SharedList' and ...")
        return ("raised", (type(exc), str(exc).replace("SharedList", "list")))
    if isinstance(result, SharedList):
        result = ("self", result.copy()) if result is target else ("other", result.copy())
    elif isinstance(result, list):
        result = ("self", list(result)) if result is target else ("other", list(result))
    elif hasattr(result, "__next__"):
        result = ("iterator", list(result))
    return ("returned", result)


# each: what to do to a list (a SharedList must do the same)
OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "len": len,
    "getitem": lambda a: a[2],
    "getitem-negative": lambda a: a[-1],
    "getitem-out-of-range": lambda a: a[8],
    "getitem-negative-out-of-range": lambda a: a[-9],
    "getitem-bad-type": lambda a: a["x"],
    "getitem-float": lambda a: a[1.0],
    "slice": lambda a: a[1:5],
    "slice-step": lambda a: a[::2],
    "slice-negative-step": lambda a: a[6:1:-2],
    "slice-zero-step": lambda a: a[::0],
    "setitem": lambda a: a.__setitem__(0, "zero"),
    "setitem-negative": lambda a: a.__setitem__(-2, "x"),
    "setitem-out-of-range": lambda a: a.__setitem__(8, 1),
    "setitem-bad-type": lambda a: a.__setitem__("x", 1),
    "setslice": lambda a: a.__setitem__(slice(1, 3), [7, 7, 7, 7]),
    "setslice-grow-at-end": lambda a: a.__setitem__(slice(100, 200), [1]),
    "setslice-step": lambda a: a.__setitem__(slice(None, None, 2), "abcd"),
    "setslice-step-wrong-size": lambda a: a.__setitem__(slice(None, None, 2), [1]),
    "setslice-not-iterable": lambda a: a.__setitem__(slice(1, 2), 5),
    "delitem": lambda a: a.__delitem__(3),
    "delitem-negative": lambda a: a.__delitem__(-1),
    "delitem-out-of-range": lambda a: a.__delitem__(8),
    "delslice": lambda a: a.__delitem__(slice(2, 5)),
    "delslice-step": lambda a: a.__delitem__(slice(None, None, -3)),
    "contains": lambda a: (5 in a, 100 in a),
    "iter": lambda a: list(iter(a)),
    "reversed": lambda a: list(reversed(a)),
    "index": lambda a: a.index(1),
    "index-start": lambda a: a.index(1, 2),
    "index-start-stop": lambda a: a.index(5, -5, -3),
    "index-missing": lambda a: a.index(100),
    "index-outside-window": lambda a: a.index(3, 1, 5),
    "count": lambda a: (a.count(1), a.count(100)),
    "append": lambda a: a.append([1]),
    "extend": lambda a: a.extend(range(3)),
    "extend-generator": lambda a: a.extend(x * 2 for x in (1, 2)),
    "extend-not-iterable": lambda a: a.extend(5),
    "insert": lambda a: a.insert(2, "in"),
    "insert-negative": lambda a: a.insert(-2, "in"),
    "insert-far": lambda a: a.insert(100, "end"),
    "insert-far-negative": lambda a: a.insert(-100, "start"),
    "insert-bad-index": lambda a: a.insert("x", 1),
    "pop": lambda a: a.pop(),
    "pop-index": lambda a: a.pop(2),
    "pop-negative": lambda a: a.pop(-3),
    "pop-out-of-range": lambda a: a.pop(8),
    "pop-bad-index": lambda a: a.pop("x"),
    "remove": lambda a: a.remove(1),
    "remove-missing": lambda a: a.remove(100),
    "clear": lambda a: a.clear(),
    "copy": lambda a: a.copy(),
    "reverse": lambda a: a.reverse(),
    "sort": lambda a: a.sort(),
    "sort-reverse": lambda a: a.sort(reverse=True),
    "sort-key": lambda a: a.sort(key=lambda x: -x),
    "sort-positional": lambda a: a.sort(None),
    "sort-unorderable": lambda a: (a.append("s"), a.sort()),
    "add": lambda a: a + [0],  # noqa: RUF005 (the operator is the test)
    "add-not-a-list": lambda a: a + (0,),  # noqa: RUF005 (the operator is the test)
    "radd": lambda a: [0] + a,  # noqa: RUF005 (the operator is the test)
    "iadd": lambda a: operator.iadd(a, (7, 8)),
    "iadd-generator": lambda a: operator.iadd(a, (x for x in "ab")),
    "iadd-not-iterable": lambda a: operator.iadd(a, 5),
    "mul": lambda a: a * 2,
    "mul-zero": lambda a: a * 0,
    "mul-negative": lambda a: a * -1,
    "mul-bad": lambda a: a * "x",
    "rmul": lambda a: 2 * a,
    "imul": lambda a: operator.imul(a, 3),
    "imul-zero": lambda a: operator.imul(a, 0),
    "imul-bad": lambda a: operator.imul(a, 1.5),
    "eq": lambda a: (a == list(START), a == [3], a != [3], a == (3,), a == "x"),
    "lt": lambda a: (a < [3, 2], a < [3, 1, 4], a <= list(START), a > [], a >= [4]),
    "lt-bad": lambda a: a < (1,),
    "bool": bool,
    "str": str,
    "repr": repr,
    "hash": lambda a: hash(a),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_list_operation_matches(name: str) -> None:
    fn = OPERATIONS[name]
    plain = list(START)
    shared = SharedList(START)
    try:
        theirs = outcome(fn, plain)
        ours = outcome(fn, shared)
        if name == "hash":  # a list is unhashable; a shared one hashes by identity
            assert theirs[0] == "raised" and ours[0] == "returned"
            return
        assert ours == theirs
        assert shared.copy() == plain
        assert len(shared) == len(plain)
    finally:
        shared.close()


def test_empty_list_errors_match() -> None:
    shared = SharedList()
    try:
        for fn in (lambda a: a.pop(), lambda a: a[0], lambda a: a.remove(0), min):
            assert outcome(fn, shared) == outcome(fn, [])
        assert not shared and repr(shared) == str(shared) == "[]"
    finally:
        shared.close()


def test_in_place_operators_keep_the_same_shared_list() -> None:
    shared = SharedList([1, 2])
    alias = shared
    try:
        shared *= 3
        assert shared is alias and shared == [1, 2] * 3
        shared += [0]
        assert shared is alias and shared.copy() == [1, 2, 1, 2, 1, 2, 0]
        shared *= 0
        assert shared is alias and shared == []
        assert isinstance(shared * 2, list) and isinstance([1] + shared, list)  # noqa: RUF005
    finally:
        shared.close()


def test_iterator_reads_live() -> None:
    """A list iterator is index-based: it sees later items change and stops at the
    current length."""
    shared = SharedList([1, 2, 3])
    try:
        it = iter(shared)
        shared[0] = 100
        assert next(it) == 100
        shared[1] = 200
        shared.append(4)
        assert list(it) == [200, 3, 4]
        shared.append(5)
        assert list(it) == []  # exhausted stays exhausted, as a list iterator
        it = iter(shared)
        next(it)
        del shared[1:]
        assert list(it) == []
        back = reversed(shared)
        shared[0] = "first"
        assert list(back) == ["first"]
        shared.extend([1, 2, 3])
        back = reversed(shared)
        assert next(back) == 3
        shared.clear()
        assert list(back) == []
    finally:
        shared.close()


def _change_first(shared: SharedList) -> None:
    shared[0] = "changed"
    shared.append("tail")


def test_iterator_sees_another_processes_writes(ctx: mp.context.BaseContext) -> None:
    shared = SharedList([1, 2, 3])
    try:
        it = iter(shared)
        p = ctx.Process(target=_change_first, args=(shared,))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert list(it) == ["changed", 2, 3, "tail"]
    finally:
        shared.close()


def test_list_api_is_complete() -> None:
    missing = [
        name
        for name in dir(list)
        if name not in ("__class_getitem__", "__init_subclass__", "__subclasshook__")
        and not hasattr(SharedList, name)
    ]
    assert missing == []
    for name in mp.managers.ListProxy._exposed_:
        assert hasattr(SharedList, name), name


def test_manager_list_prints_as_the_standard_librarys(capsys: pytest.CaptureFixture[str]) -> None:
    with shoal.Manager() as manager:
        shared = manager.list([1, "two"])
        shared.append(3)
        print(shared)
    with mp.Manager() as manager:
        theirs = manager.list([1, "two"])
        theirs.append(3)
        print(theirs)
    ours, stdlib = capsys.readouterr().out.splitlines()
    assert ours == stdlib == "[1, 'two', 3]"


def test_repr_of_a_list_that_holds_itself() -> None:
    shared = SharedList([1])
    try:
        shared.append(shared)
        assert repr(shared) == "[1, [...]]"
        shared.pop().close()
    finally:
        shared.close()
