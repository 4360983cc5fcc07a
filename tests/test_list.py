"""SharedList (issue #4): the list API against a plain list, processes, bad input."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import threading

import pytest

import shoal
from shoal import ClosedError, SerializationError, SharedList


@pytest.fixture
def shared():
    lst = SharedList()
    yield lst
    lst.close()


def test_list_api_matches_list(shared: SharedList) -> None:
    model: list = []
    ops = [
        lambda x: x.append(1),
        lambda x: x.extend(["a", b"b", (1, 2), [3], None, 2.5]),
        lambda x: x.insert(0, "first"),
        lambda x: x.insert(-2, "mid"),
        lambda x: x.insert(100, "last"),
        lambda x: x.__setitem__(1, {"d": 1}),
        lambda x: x.__setitem__(-1, "LAST"),
        lambda x: x.__delitem__(2),
        lambda x: x.__setitem__(slice(1, 3), ["s1", "s2", "s3"]),
        lambda x: x.__delitem__(slice(None, None, 3)),
        lambda x: x.remove("s2"),
        lambda x: x.reverse(),
        lambda x: x.extend(x),
    ]
    for op in ops:
        op(model)
        op(shared)
        assert shared.copy() == model
        assert len(shared) == len(model)
    assert shared.pop() == model.pop()
    assert shared.pop(0) == model.pop(0)
    assert shared[1:4] == model[1:4] and shared[::-1] == model[::-1]
    assert shared[-1] == model[-1]
    assert list(shared) == model and list(reversed(shared)) == list(reversed(model))
    assert shared.index(model[2]) == model.index(model[2])
    assert shared.count("s1") == model.count("s1")
    assert ("s3" in shared) == ("s3" in model)
    assert shared == model and shared + [9] == model + [9]  # noqa: RUF005 (__add__)
    shared += [7]
    assert shared[-1] == 7
    with pytest.raises(IndexError):
        shared[100]
    with pytest.raises(IndexError):
        shared[100] = 1
    with pytest.raises(ValueError):
        shared.remove("absent")
    with pytest.raises(ValueError):
        shared.index("absent")
    shared.clear()
    assert len(shared) == 0 and shared.copy() == []
    with pytest.raises(IndexError):
        shared.pop()
    numbers = SharedList([3, 1, 2])
    try:
        numbers.sort()
        assert numbers.copy() == [1, 2, 3]
        numbers.sort(reverse=True, key=lambda v: -v)
        assert numbers.copy() == [1, 2, 3]
        assert repr(numbers) == str(numbers) == "[1, 2, 3]"
    finally:
        numbers.close()
    assert shoal.SharedList is SharedList


def test_bad_input_and_close() -> None:
    lst = SharedList([1])
    with pytest.raises(SerializationError):
        lst.append(threading.Lock())
    with pytest.raises(SerializationError):
        lst.extend([2, threading.Lock()])
    assert lst.copy() == [1]  # nothing of a failed extend shows
    lst.close()
    assert repr(lst) == "<shoal.SharedList closed>"
    for call in (
        lambda: lst.append(1),
        lambda: lst[0],
        lambda: len(lst),
        lambda: pickle.dumps(lst),
    ):
        with pytest.raises(ClosedError):
            call()


def _append_many(lst: SharedList, tag: str, n: int) -> int:
    for i in range(n):
        lst.append((tag, i))
    return len(lst)


def test_pool_appends(ctx: mp.context.BaseContext) -> None:
    lst = SharedList(["start"])
    try:
        with ctx.Pool(2) as pool:
            results = [pool.apply_async(_append_many, (lst, t, 300)) for t in "ab"]
            for r in results:
                r.get(timeout=30)
        items = lst.copy()
        assert items[0] == "start" and len(items) == 601
        for tag in "ab":
            assert [i for t, i in items[1:] if t == tag] == list(range(300))
    finally:
        lst.close()


def test_a_process_killed_inside_clear_leaves_an_empty_list_that_works() -> None:
    # clear() empties the table in one step, then stores the length: a process killed
    # between the two left a list whose every use raised KeyError (and len() met the
    # same gap while another process cleared it)
    lst = SharedList([1, 2, 3])
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                lst._items.clear()  # clear()'s first step, then dies
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert len(lst) == 0 and list(lst) == [] and lst.copy() == []
        lst.append(4)
        assert list(lst) == [4]
    finally:
        lst.close()
