"""SharedDict against a plain dict: a hypothesis state machine (issue #4).

Every rule applies one operation to the SharedDict and to a dict model and compares
the results; an invariant compares the whole contents, in order.  In the second machine each
operation runs either here or in a forked helper process that holds the same dict
(through the fork), so writes made in one process are checked by reads in the other.

Keys avoid mixing 1, 1.0 and True (SharedDict keeps them apart, dict merges them:
documented) and NaN (never equal to itself); they include pickled ones (a named tuple).
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any, NamedTuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal import SharedDict


class Point(NamedTuple):
    x: int
    y: str


scalar_keys = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.none(),
)
keys = st.one_of(
    scalar_keys,
    st.tuples(st.text(max_size=4), st.integers(-5, 5)),
    st.builds(Point, st.integers(-3, 3), st.text(max_size=3)),
)
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        st.text(max_size=40),
        st.binary(max_size=300),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner)),
    max_leaves=6,
)
MISSING = object()


def _apply(target: Any, op: str, args: tuple[Any, ...]) -> Any:
    """One operation; exceptions come back as their type's name."""
    try:
        if op == "set":
            target[args[0]] = args[1]
            return None
        if op == "del":
            del target[args[0]]
            return None
        if op == "get":
            return target.get(args[0], "<default>")
        if op == "contains":
            return args[0] in target
        if op == "pop":
            return target.pop(args[0], "<default>")
        if op == "incr":
            return target.incr(args[0], args[1]) if isinstance(target, SharedDict) else None
        if op == "setdefault":
            return target.setdefault(args[0], args[1])
        if op == "clear":
            target.clear()
            return None
        if op == "len":
            return len(target)
        raise AssertionError(op)
    except KeyError:
        return "KeyError"


def _model_apply(model: dict[Any, Any], op: str, args: tuple[Any, ...]) -> Any:
    if op == "incr":
        model[args[0]] = model.get(args[0], 0) + args[1]
        return model[args[0]]
    return _apply(model, op, args)


class DictModel(RuleBasedStateMachine):
    """Operations in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = SharedDict()
        self.model: dict[Any, Any] = {}
        self.int_keys: set[Any] = set()

    def run(self, op: str, *args: Any) -> Any:
        return _apply(self.shared, op, args)

    def check(self, op: str, *args: Any) -> None:
        got = self.run(op, *args)
        want = _model_apply(self.model, op, args)
        assert got == want, (op, args, got, want)

    @rule(key=keys, value=values)
    def set(self, key: Any, value: Any) -> None:
        self.check("set", key, value)

    @rule(key=keys)
    def delete(self, key: Any) -> None:
        self.check("del", key)

    @rule(key=keys)
    def get(self, key: Any) -> None:
        self.check("get", key)
        self.check("contains", key)

    @rule(key=keys)
    def pop(self, key: Any) -> None:
        self.check("pop", key)

    @rule(key=st.text(max_size=3), delta=st.integers(-(2**40), 2**40))
    def incr(self, key: str, delta: int) -> None:
        key = ("n", key)
        if not isinstance(self.model.get(key, 0), int) or isinstance(self.model.get(key), bool):
            return
        self.check("incr", key, delta)

    @rule(key=keys, value=values)
    def setdefault(self, key: Any, value: Any) -> None:
        self.check("setdefault", key, value)

    @precondition(lambda self: self.model)
    @rule()
    def popitem(self) -> None:
        assert self.shared.popitem() == self.model.popitem()  # the last inserted (#11)

    @rule(items=st.lists(st.tuples(keys, values), max_size=5))
    def update(self, items: list[tuple[Any, Any]]) -> None:
        self.shared.update(items)
        self.model.update(items)

    @precondition(lambda self: len(self.model) > 3)
    @rule()
    def clear(self) -> None:
        self.check("clear")

    @rule(n=st.integers(1, 300))
    def many(self, n: int) -> None:
        """Enough keys at once to make the table grow."""
        for i in range(n):
            self.check("set", ("many", i), i)

    @invariant()
    def same_contents(self) -> None:
        assert self.run("len") == len(self.model)
        assert self.shared.items() == list(self.model.items())  # insertion order (#11)

    def teardown(self) -> None:
        self.shared.close()


def _helper(conn: Any, shared: SharedDict) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(_apply(shared, *msg))
    shared.close()


class TwoProcessDictModel(DictModel):
    """Each operation runs here or in a forked helper, alternately by a drawn flag."""

    def __init__(self) -> None:
        super().__init__()
        ctx = mp.get_context("fork")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_helper, args=(theirs, self.shared))
        self.proc.start()
        theirs.close()
        self.remote = False

    @rule(remote=st.booleans())
    def switch(self, remote: bool) -> None:
        self.remote = remote

    def run(self, op: str, *args: Any) -> Any:
        if not self.remote:
            return super().run(op, *args)
        self.conn.send((op, args))
        assert self.conn.poll(30), "the helper process did not answer"
        return self.conn.recv()

    def teardown(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)
        assert self.proc.exitcode == 0
        self.conn.close()
        super().teardown()


_settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DictModel.TestCase.settings = _settings
TwoProcessDictModel.TestCase.settings = settings(_settings, max_examples=20)

TestDictModel = DictModel.TestCase
TestTwoProcessDictModel = TwoProcessDictModel.TestCase
