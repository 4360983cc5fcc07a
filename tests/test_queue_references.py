"""A shoal handle sent through a queue takes a reference in flight: every path that
pickles it must give that reference back when the pickle is not the one delivered
(a discarded first attempt, an item never enqueued, an item drained unread)."""

from __future__ import annotations

import queue

import numpy as np
import pytest

import shoal


def in_flight(obj: shoal.Lock) -> int:
    """References held for receivers: in flight, or kept by a queue's records (#10)."""
    return obj._segment.in_flight + obj._segment.kept


def test_a_small_buffer_repickled_inline_keeps_one_reference():
    lock, q = shoal.Lock(), shoal.Queue()
    q.put({"lock": lock, "array": np.zeros(10)})  # pickled twice: buffers go inline
    got = q.get(timeout=5)
    assert in_flight(lock) == 0
    got["lock"].close()
    q.close()
    lock.close()


def test_the_cloudpickle_fallback_keeps_one_reference():
    lock, q = shoal.Lock(), shoal.Queue()
    q.put([lock, lambda: 1])  # plain pickle fails on the lambda, cloudpickle succeeds
    got = q.get(timeout=5)
    assert got[1]() == 1
    assert in_flight(lock) == 0
    got[0].close()
    q.close()
    lock.close()


def test_an_item_never_enqueued_gives_its_reference_back():
    lock, q = shoal.Lock(), shoal.Queue(maxsize=1)
    q.put(0)
    with pytest.raises(queue.Full):
        q.put_nowait((lock, object()))
    with pytest.raises(queue.Full):
        q.put_many([(lock, object()), (lock, object())], timeout=0.05)
    assert in_flight(lock) == 0
    q.close()
    lock.close()


def test_items_drained_unread_give_their_references_back():
    lock, q = shoal.Lock(), shoal.Queue()
    q.put_many([(lock, object()) for _ in range(3)])
    assert in_flight(lock) == 3
    q.shutdown(immediate=True)
    assert in_flight(lock) == 0
    q.close()
    lock.close()
