"""``SharedSet`` and ``Manager().set()`` (issue #11; ``SyncManager.set`` is new in Python
3.14): a set in shared memory with the whole ``set`` API, on every Python version.

* every operation gives what the same operation gives on a ``set``: results, the
  contents afterwards, and the exception class and message (a table of operations
  run on both);
* operators with plain sets on either side, comparisons, in-place operators that
  keep the object (and refuse non-sets, as a set's do);
* ``repr`` like a set's; unhashable elements refused; pickles as a handle;
* it works across processes under each start method (the ``ctx`` fixture) and in
  ``Pool`` tasks; concurrent ``add`` from several processes loses nothing;
* ``Manager().set(...)`` returns one, taking what ``set(...)`` takes.

The tests taking ``context`` (conftest.py) run on the local context and on the Ray
one (#13), whose ``Manager().set()`` is a set in an actor with the same API: the
operation table, the operators, the errors, ``repr``, pickling and tasks of the
context's pool.  They differ where docs/ray.md says so (elements compare as a
``set``'s there; a Ray set has no ``close()``), which the tests say.  The Ray cases
share a few sets, emptied and refilled for each test: each Ray set is an actor, a
process of its own (docs/ray.md).  The others stay local: they use child processes
of each start method, which a cluster object does not reach (docs/ray.md).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, MutableSet
from typing import Any

import pytest
from conftest import join_all, on_ray

import shoal
import shoal.managers
from shoal import SharedSet

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def ray_sets(context: Any) -> Iterator[list[Any]]:
    """The Ray cases' sets, made as they are first needed and kept for the module."""
    made: list[Any] = []
    yield made
    made.clear()


@pytest.fixture
def new_set(context: Any, ray_sets: list[Any]) -> Iterator[Callable[..., Any]]:
    """``new_set(iterable=())``: a ``SharedSet`` locally, a set on the cluster (from
    ``Manager().set()``) on Ray, holding ``iterable``'s elements."""
    made: list[Any] = []

    def make(iterable: Iterable[Any] = ()) -> Any:
        if on_ray(context):
            if len(ray_sets) == len(made):
                with context.Manager() as m:
                    ray_sets.append(m.set())
            shared = ray_sets[len(made)]
            shared.clear()
            shared.update(iterable)
        else:
            shared = SharedSet(iterable)
        made.append(shared)
        return shared

    yield make
    for shared in made:
        if not on_ray(context):
            shared.close()


def outcome(fn: Callable[[Any], Any], s: Any) -> tuple[Any, ...]:
    """What ``fn(s)`` gave (value, or exception class and message) and ``s`` after."""
    try:
        result = fn(s)
    except Exception as exc:  # the comparison is the point
        message = re.sub(r"'\w*SharedSet'", "'set'", str(exc))  # the only difference
        return ("raised", type(exc), message, sorted(s, key=repr))
    if result is s:
        result = "self"
    elif isinstance(result, (set, frozenset, SharedSet)):
        result = ("set", type(result) is frozenset, sorted(result, key=repr))
    return ("returned", result, sorted(s, key=repr))


OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "add new": lambda s: s.add(9),
    "add existing": lambda s: s.add(1),
    "add unhashable": lambda s: s.add([1]),
    "discard present": lambda s: s.discard(2),
    "discard missing": lambda s: s.discard(99),
    "remove present": lambda s: s.remove(2),
    "remove missing": lambda s: s.remove(99),
    "pop": lambda s: sorted([s.pop(), s.pop(), s.pop()]),
    "clear": lambda s: s.clear(),
    "update": lambda s: s.update([4, 5], (6,)),
    "update no args": lambda s: s.update(),
    "intersection_update": lambda s: s.intersection_update([1, 2, 7], {2, 1}),
    "difference_update": lambda s: s.difference_update([1], {3}),
    "symmetric_difference_update": lambda s: s.symmetric_difference_update([3, 4]),
    "union": lambda s: s.union([7], {8}),
    "intersection": lambda s: s.intersection([1, 3, 5]),
    "difference": lambda s: s.difference({1}),
    "symmetric_difference": lambda s: s.symmetric_difference([3, 4]),
    "issubset": lambda s: (s.issubset([1, 2, 3, 4]), s.issubset([1])),
    "issuperset": lambda s: (s.issuperset([1, 2]), s.issuperset([5])),
    "isdisjoint": lambda s: (s.isdisjoint([7, 8]), s.isdisjoint([3])),
    "copy": lambda s: s.copy(),
    "len": len,
    "in": lambda s: (1 in s, 5 in s, "1" in s),
    "in unhashable": lambda s: [1] in s,
    "iter": lambda s: sorted(s),
    "or": lambda s: s | {4},
    "ror": lambda s: {4} | s,
    "and": lambda s: s & {1, 4},
    "rand": lambda s: {1, 4} & s,
    "sub": lambda s: s - {1},
    "rsub": lambda s: {1, 2, 7} - s,
    "xor": lambda s: s ^ {3, 4},
    "rxor": lambda s: {3, 4} ^ s,
    "or a list": lambda s: s | [4],
    "sub a list": lambda s: s - [4],
    "rsub a list": lambda s: [4] - s,
    "xor a tuple": lambda s: s ^ (4,),
    "and a list": lambda s: [1] & s,
    "eq": lambda s: (s == {1, 2, 3}, {1, 2, 3} == s, s == {1}, s == [1, 2, 3], s != {1}),
    "eq frozenset": lambda s: s == frozenset({1, 2, 3}),
    "lt le gt ge": lambda s: (s < {1, 2, 3, 4}, s <= {1, 2, 3}, s > {1}, s >= {1, 2, 3, 4}),
    "reflected compare": lambda s: ({1} < s, {1, 2, 3} >= s, {5} <= s),
    "compare a list": lambda s: s < [1],
}


def _ior(s: Any) -> Any:
    s |= {4, 5}
    return s


def _iand(s: Any) -> Any:
    s &= {1, 2, 9}
    return s


def _isub(s: Any) -> Any:
    s -= {1}
    return s


def _ixor(s: Any) -> Any:
    s ^= {1, 7}
    return s


def _isub_self(s: Any) -> Any:
    s -= s
    return s


def _ixor_self(s: Any) -> Any:
    s ^= s
    return s


def _ior_list(s: Any) -> Any:
    s |= [4]
    return s


def _iand_list(s: Any) -> Any:
    s &= [1]
    return s


OPERATIONS.update(
    {
        "|=": _ior,
        "&=": _iand,
        "-=": _isub,
        "^=": _ixor,
        "-= itself": _isub_self,
        "^= itself": _ixor_self,
        "|= a list": _ior_list,
        "&= a list": _iand_list,
    }
)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_operation_matches_set(new_set: Callable[..., Any], name: str):
    fn = OPERATIONS[name]
    expected = outcome(fn, {1, 2, 3})
    got = outcome(fn, new_set([1, 2, 3]))
    assert got == expected


def test_in_place_operators_keep_the_shared_set(new_set: Callable[..., Any]):
    s = new_set([1, 2])
    same, kind = s, type(s)
    s |= {3}
    s -= {1}
    s ^= {4}
    s &= {2, 3, 4}
    assert s is same and type(s) is kind and s == {2, 3, 4}
    assert type(s | {9}) is set and type(s.copy()) is set


def test_pop_from_empty_and_remove_missing_raise_key_error(new_set: Callable[..., Any]):
    s = new_set()
    with pytest.raises(KeyError, match="pop from an empty set"):
        s.pop()
    with pytest.raises(KeyError) as info:
        s.remove("x")
    assert info.value.args == ("x",)


def test_has_every_method_of_the_standard_library_s_set_proxy(new_set: Callable[..., Any]):
    """What Python 3.14's SetProxy offers (and its test_set_contain_all_method asks)."""
    proxy_methods = set(shoal.managers.SetProxy._exposed_) | {"__class_getitem__"}
    missing = proxy_methods - set(dir(new_set()))
    assert not missing, f"the set lacks {sorted(missing)}"


def test_repr_is_a_set_s(new_set: Callable[..., Any]):
    s = new_set()
    assert repr(s) == "set()" == str(s)
    s.add("a")
    assert repr(s) == "{'a'}"
    s ^= {"a", 1, 2}
    assert eval(repr(s)) == {1, 2}


def test_a_closed_set_says_so():
    """(Local only: a Ray object is not closed, it goes with its last handle.)"""
    s = SharedSet([1, 2])
    s.close()
    assert s.closed and "closed" in repr(s)


def test_is_a_mutable_set_and_generic(new_set: Callable[..., Any]):
    s = new_set([1])
    assert isinstance(s, MutableSet)
    assert type(s)[int] is not None
    assert 1 in s
    typed: SharedSet[int] = SharedSet[int]([1])
    assert 1 in typed
    typed.close()


def test_elements_compare_as_documented(context: Any, new_set: Callable[..., Any]):
    """Locally as SharedDict keys, by their stored bytes: 1 and 1.0 are two elements
    (docs/compatibility.md); on Ray as a set's, as the cluster dict's keys (docs/ray.md)."""
    s = new_set([1])
    s.add(1.0)
    s.add(True)
    assert len(s) == (1 if on_ray(context) else 3)
    assert len({1, 1.0, True}) == 1  # noqa: B033 (the point: a set holds one of them)


def test_pickles_as_a_handle_to_the_same_set(new_set: Callable[..., Any]):
    s = new_set([1])
    copy = pickle.loads(pickle.dumps(s))
    copy.add(2)
    assert s == {1, 2} and copy == {1, 2}


def test_a_closed_set_does_not_pickle():
    """(Local only: a Ray object is not closed.)"""
    s = SharedSet([1])
    copy = pickle.loads(pickle.dumps(s))
    copy.close()
    assert s == {1}
    s.close()
    with pytest.raises(shoal.ClosedError):
        pickle.dumps(s)
    with pytest.raises(shoal.ClosedError):
        s.add(3)


def test_manager_set_takes_what_set_takes(context: Any):
    with context.Manager() as m:
        empty = m.set()
        assert type(empty).__name__ == ("RaySharedSet" if on_ray(context) else "SharedSet")
        assert empty == set()
        assert m.set([1, 1, 2]) == {1, 2}
        assert m.set("ab") == {"a", "b"}
        with pytest.raises(TypeError):
            m.set(1)
        with pytest.raises(TypeError):
            m.set([[1]])
        with pytest.raises(TypeError):
            m.set([1], [2])


# ---- across processes ----------------------------------------------------------------------------


def add_range(s: SharedSet[int], start: int, stop: int) -> None:
    for i in range(start, stop):
        s.add(i)
    s.discard(-1)


def test_works_in_a_child_process(ctx: mp.context.BaseContext):
    s = SharedSet([-1])
    children = [ctx.Process(target=add_range, args=(s, i * 100, i * 100 + 100)) for i in range(3)]
    for child in children:
        child.start()
    join_all(*children, timeout=TIMEOUT)
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert s == set(range(300)), "every add from every process is there, -1 discarded"


def update_range(s: SharedSet[int], start: int, stop: int) -> None:
    s |= set(range(start, stop))


def pop_all(s: SharedSet[int]) -> list[int]:
    out = []
    while True:
        try:
            out.append(s.pop())
        except KeyError:
            return out


def test_context_pool_tasks_pop_each_element_once(context: Any, new_set: Callable[..., Any]):
    """The context's pool: on Ray, a set handle in Ray tasks; each ``pop`` atomic, and
    updates from several tasks at once lose nothing."""
    s = new_set(range(200))
    with context.Pool(2) as pool:
        results = pool.map(pop_all, [s, s, s], chunksize=1)
        popped = [x for r in results for x in r]
        assert sorted(popped) == list(range(200)), "each element popped exactly once"
        assert len(s) == 0
        pool.starmap(update_range, [(s, i * 100, i * 100 + 100) for i in range(4)], chunksize=1)
        assert s == set(range(400))


def test_pool_tasks_pop_each_element_once(ctx: mp.context.BaseContext):
    s = SharedSet(range(200))
    with shoal.Pool(2, context=ctx) as pool:
        results = pool.map(pop_all, [s, s, s], chunksize=1)
    popped = [x for r in results for x in r]
    assert sorted(popped) == list(range(200)), "each element popped exactly once"
    assert len(s) == 0
