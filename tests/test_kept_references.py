"""References kept by containers (#10): a shoal object that only a queue's record or a
dict's value still names lives as long as that container does, with no time limit,
and goes with the container when the container dies.

Before #10 such references were references in flight, presumed lost once their latest
pickle was ``IN_FLIGHT_TIMEOUT_S`` (10 minutes) old: the consumer of a slow pipeline,
or the reader of a dict of locks kept for an hour, met ``SegmentNotFoundError`` and the
item was lost.  The tests shorten the expiry to nothing, in the producer as in the
consumer, so that only a reference that does not expire can keep the object.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import pytest
from conftest import join_all
from isolation import check_isolated

import shoal
from shoal import _memory

TIMEOUT = 20.0


def _no_patience() -> None:
    _memory.IN_FLIGHT_TIMEOUT_S = 0.0


def _make(kind: str) -> Any:
    if kind == "lock":
        return shoal.Lock()
    if kind == "dict":
        inner = shoal.SharedDict()
        inner["answer"] = 42
        return inner
    if kind == "queue":
        inner = shoal.Queue()
        inner.put("inside")
        return inner
    raise AssertionError(kind)


def _check(kind: str, obj: Any) -> None:
    if kind == "lock":
        assert obj.acquire(timeout=1)
        obj.release()
    elif kind == "dict":
        assert obj["answer"] == 42
    else:
        assert obj.get(timeout=1) == "inside"


def _produce_into_queue(q: Any, kind: str, names: Any) -> None:
    _no_patience()
    obj = _make(kind)
    names.put(obj._segment.name)
    q.put(obj)
    obj.close()


def _produce_into_dict(d: Any, kind: str, names: Any) -> None:
    _no_patience()
    obj = _make(kind)
    names.put(obj._segment.name)
    d["kept"] = obj
    obj.close()


@pytest.mark.parametrize("kind", ["lock", "dict", "queue"])
@pytest.mark.parametrize("container", ["queue", "dict"])
def test_an_object_only_a_container_names_outlives_any_expiry(
    ctx: mp.context.BaseContext, container: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_memory, "IN_FLIGHT_TIMEOUT_S", 0.0)
    names = shoal.Queue()
    holder = shoal.Queue() if container == "queue" else shoal.SharedDict()
    target = _produce_into_queue if container == "queue" else _produce_into_dict
    p = ctx.Process(target=target, args=(holder, kind, names))
    p.start()
    join_all(p, timeout=TIMEOUT)
    assert p.exitcode == 0
    name = names.get(timeout=1)
    # the producer is gone and holds nothing; a sweep must still leave the segment
    assert not _memory._reap_one(name), "reaped although a container still names it"
    obj = holder.get(timeout=1) if container == "queue" else holder["kept"]
    _check(kind, obj)
    obj.close()
    if container == "dict":
        del holder["kept"]
    holder.close()
    names.close()


def test_what_a_container_keeps_is_given_back_on_every_path() -> None:
    lock = shoal.Lock()
    segment = lock._segment
    q, d = shoal.Queue(), shoal.SharedDict()
    q.put(lock)
    q.put_many([lock, [lock]])
    d["a"] = lock
    d["b"] = (lock, lock)
    assert segment.kept == 5 and segment.in_flight == 0
    q.get(timeout=1).close()
    assert segment.kept == 4
    d["a"] = "overwritten"
    assert segment.kept == 3
    del d["b"]
    assert segment.kept == 2
    q.close()  # the last handle drains the queue
    assert segment.kept == 0
    d["c"] = lock
    d.close()  # the last handle gives back what its values keep
    assert segment.kept == 0 and segment.in_flight == 0
    lock.close()


def test_a_dead_container_keeps_nothing() -> None:
    """What a container that died still kept is reclaimed with it (everything here is
    reaped: a private /dev/shm)."""
    out = check_isolated(
        """
        import multiprocessing as mp, os, signal, shoal
        from shoal import _memory

        def producer(names):
            lock, q, d = shoal.Lock(), shoal.Queue(), shoal.SharedDict()
            q.put(lock)
            d["lock"] = lock
            d["queue"] = q  # a queue kept by a dict, keeping a lock
            names.send([lock._segment.name, q._segment.name, d._segment.name])
            os.kill(os.getpid(), signal.SIGKILL)  # dies holding all three

        if True:  # (a -c script: spawn could not find producer; fork it is)
            ctx = mp.get_context("fork")
            here, there = ctx.Pipe()
            p = ctx.Process(target=producer, args=(there,))
            p.start()
            names = here.recv()
            p.join()
            assert p.exitcode == -signal.SIGKILL, p.exitcode
            left = lambda: sorted(n for n in names if os.path.exists("/dev/shm" + n))
            assert left() == sorted(names), left()
            reaped = _memory.reap()
            assert not left(), (left(), reaped)
            print("reaped", len(reaped))
        """
    )
    assert "reaped" in out
