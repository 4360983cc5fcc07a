"""The record ring (``_core.Ring``) against a ``collections.deque`` model (issue #3).

A hypothesis state machine drives one ring bound to a small anonymous mapping
(256 data bytes, with and without an item limit) through non-blocking puts and gets,
single and batched, with payload sizes that make records wrap and need PAD records,
and through shutdown.  The model knows the ring's placement rule, so it predicts
exactly when a put is refused for room, and what ``_bytes_used`` says:

* a record is an 8-byte header plus its payload rounded up to 8;
* a record that would cross the end of the data area is preceded by a PAD record
  filling the rest, so every payload is contiguous;
* a put fails (queue.Full) when ``used + pad + need > capacity`` or the item limit is
  reached; a payload above half the ring minus a header can never go in (ValueError);
* a PAD is skipped when the record after it is taken, so it counts as used until then.

Positions and item counts are 32-bit and wrap; one starting state puts both just
below 2**32 so the wrap is exercised without four billion operations.
"""

from __future__ import annotations

import mmap
import queue
import struct
import subprocess
import sys
import textwrap
from collections import deque

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shoal import ShutDown, _core

HEADER = _core.RING_HEADER_SIZE
CAPACITY = 256
MAX_PAYLOAD = CAPACITY // 2 - 8
TAIL_OFFSET = 128  # shoal_ring.tail (native/include/shoal_ring.h)
HEAD_OFFSET = 192  # shoal_ring.head


def record_bytes(payload_len: int) -> int:
    return 8 + (payload_len + 7) // 8 * 8


def payloads(max_len: int = MAX_PAYLOAD) -> st.SearchStrategy[bytes]:
    # sizes around multiples of 8 and near the largest payload matter most
    sizes = st.one_of(
        st.integers(0, max_len),
        st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, 55, 56, 57, max_len - 1, max_len]),
    )
    return sizes.flatmap(
        lambda n: st.binary(min_size=n, max_size=n) if n < 24 else st.just(bytes([n % 251]) * n)
    )


class RingModel(RuleBasedStateMachine):
    """One ring, one deque of the records it must hold, and the byte positions."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping = mmap.mmap(-1, HEADER + CAPACITY)
        self.ring = _core.Ring()
        self.ring._bind(self.mapping, 0, HEADER + CAPACITY)
        self.records: deque[tuple[bytes, int]] = deque()  # (payload, bytes incl. any PAD)
        self.tail = 0  # byte position after the last record put
        self.maxsize = 0
        self.is_shut_down = False

    @initialize(
        maxsize=st.sampled_from([0, 0, 1, 3, 8]),
        start=st.sampled_from([0, 0, 2**32 - 8 * CAPACITY, 2**32 - 40]),
    )
    def setup(self, maxsize: int, start: int) -> None:
        self.maxsize = maxsize
        self.ring._init(CAPACITY, maxsize)
        # an empty ring may sit at any position: start just below the 32-bit wrap
        # (positions and item counts are packed as items << 32 | position)
        word = (start << 32) | start
        struct.pack_into("<Q", self.mapping, TAIL_OFFSET, word)
        struct.pack_into("<Q", self.mapping, HEAD_OFFSET, word)
        self.tail = start

    def teardown(self) -> None:
        self.ring._unbind()
        self.mapping.close()

    # ---- the placement rule ------------------------------------------------------------

    def used(self) -> int:
        return sum(size for _, size in self.records)

    def room_for(self, payload_len: int) -> int | None:
        """Bytes a record of payload_len would take (PAD included), None if refused."""
        if self.maxsize and len(self.records) >= self.maxsize:
            event("full: item limit")
            return None
        need = record_bytes(payload_len)
        offset = self.tail % CAPACITY
        pad = CAPACITY - offset if offset + need > CAPACITY else 0
        if self.used() + pad + need > CAPACITY:
            event("full: no room")
            return None
        if pad:
            event("fits after a PAD")
        return pad + need

    def model_put(self, payload: bytes) -> bool:
        size = self.room_for(len(payload))
        if size is None:
            return False
        self.records.append((payload, size))
        self.tail = (self.tail + size) % 2**32
        return True

    # ---- rules -------------------------------------------------------------------------

    @rule(payload=payloads())
    def put_bytes(self, payload: bytes) -> None:
        if self.is_shut_down:
            with pytest.raises(ShutDown):
                self.ring._put_bytes(payload, False)
            return
        fits = self.room_for(len(payload)) is not None
        if fits:
            self.ring._put_bytes(payload, False)
            assert self.model_put(payload)
        else:
            with pytest.raises(queue.Full):
                self.ring._put_bytes(payload, False)

    @rule(payload=payloads(), timeout=st.sampled_from([0, 0.001]))
    def put_bytes_with_timeout(self, payload: bytes, timeout: float) -> None:
        # block=True with a tiny timeout takes the registering/waiting path when full
        if self.is_shut_down:
            with pytest.raises(ShutDown):
                self.ring._put_bytes(payload, True, timeout)
            return
        if self.room_for(len(payload)) is not None:
            self.ring._put_bytes(payload, True, timeout)
            assert self.model_put(payload)
        else:
            with pytest.raises(queue.Full):
                self.ring._put_bytes(payload, True, timeout)
        assert self.ring._producers_waiting == 0

    @rule(size=st.integers(MAX_PAYLOAD + 1, 4 * CAPACITY))
    def put_too_big(self, size: int) -> None:
        with pytest.raises((ValueError, ShutDown)):
            self.ring._put_bytes(b"x" * size, False)

    @rule(items=st.lists(payloads(MAX_PAYLOAD - 1), max_size=6))
    def put_many(self, items: list[bytes]) -> None:
        # exact bytes take the C fast codec: the record is b"Y" + payload
        if self.is_shut_down:
            if items:
                with pytest.raises(ShutDown):
                    self.ring._put_many(items, bytes, False)
            return
        expected = 0
        for payload in items:
            if not self.model_put(b"Y" + payload):
                break
            expected += 1
        if expected == len(items):
            assert self.ring._put_many(items, bytes, False) == expected
        else:
            with pytest.raises(queue.Full) as info:
                self.ring._put_many(items, bytes, False)
            assert info.value.items_put == expected

    @rule(items=st.lists(payloads(MAX_PAYLOAD - 1), max_size=4))
    def put_many_encoded(self, items: list[bytes]) -> None:
        # bytearrays are not exact bytes: the encoder turns each into its record
        if self.is_shut_down:
            return
        arrays = [bytearray(p) for p in items]
        expected = 0
        for payload in items:
            if not self.model_put(payload):
                break
            expected += 1
        if expected == len(items):
            assert self.ring._put_many(arrays, bytes, False) == expected
        else:
            with pytest.raises(queue.Full) as info:
                self.ring._put_many(arrays, bytes, False)
            assert info.value.items_put == expected

    @rule(value=st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1)))
    def put_fast_then_get_decoded(self, value: object) -> None:
        # the scalar codec end to end, when the ring is otherwise empty
        if self.is_shut_down or self.records:
            return
        if self.room_for(9) is None:
            return
        assert self.ring._put_fast(value, False)
        assert self.ring._qsize() == 1
        got = self.ring._get(False)
        assert got == value and type(got) is type(value)
        # a record of 1 or 9 bytes came and went: advance the model's positions
        size = self.room_for(1 if value is None or isinstance(value, bool) else 9)
        assert size is not None
        self.tail = (self.tail + size) % 2**32

    @rule(block=st.booleans())
    def get_bytes(self, block: bool) -> None:
        args = (True, 0.001) if block else (False,)
        if self.records:
            payload, _ = self.records.popleft()
            assert self.ring._get_bytes(*args) == payload
        elif self.is_shut_down:
            with pytest.raises(ShutDown):
                self.ring._get_bytes(*args)
        else:
            with pytest.raises(queue.Empty):
                self.ring._get_bytes(*args)
        assert self.ring._consumers_waiting == 0

    @rule(max_items=st.integers(1, 10))
    def get_many_bytes(self, max_items: int) -> None:
        if self.records:
            n = min(max_items, len(self.records))
            expected = [self.records.popleft()[0] for _ in range(n)]
            assert self.ring._get_many_bytes(max_items, False) == expected
        elif self.is_shut_down:
            with pytest.raises(ShutDown):
                self.ring._get_many_bytes(max_items, False)
        else:
            with pytest.raises(queue.Empty):
                self.ring._get_many_bytes(max_items, False)

    @precondition(lambda self: not self.is_shut_down)
    @rule()
    def shutdown(self) -> None:
        self.ring._shutdown()
        self.is_shut_down = True

    # ---- what must always agree --------------------------------------------------------

    @invariant()
    def sizes_agree(self) -> None:
        assert self.ring._qsize() == len(self.records)
        assert self.ring._bytes_used == self.used()
        assert bool(self.ring._is_shutdown) == self.is_shut_down
        assert self.ring._capacity == CAPACITY
        assert self.ring._max_payload == MAX_PAYLOAD


RingModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingModel = RingModel.TestCase


def test_ring_refuses_bad_geometry() -> None:
    mapping = mmap.mmap(-1, HEADER + CAPACITY)
    ring = _core.Ring()
    try:
        with pytest.raises(ValueError):
            ring._bind(mapping, 0, HEADER)  # no room for any data area
        ring._bind(mapping, 0, HEADER + CAPACITY)
        assert not ring._check()  # zeroed memory is not a ring
        for capacity in (100, 32, 2 * CAPACITY):  # not a power of two, too small, too big
            with pytest.raises(ValueError):
                ring._init(capacity, 0)
        ring._init(CAPACITY, 0)
        assert ring._check()
    finally:
        ring._unbind()
        mapping.close()


def test_unbound_ring_raises() -> None:
    ring = _core.Ring()
    with pytest.raises(ValueError):
        ring._put_bytes(b"x", False)
    with pytest.raises(ValueError):
        ring._get_bytes(False)


def test_a_ring_used_before_any_other_shoal_module_decodes_pickles() -> None:
    # the upcalls used to be registered as a side effect of importing shoal._queues
    # (and shoal._dict): a Ring used first had no decoder.  _core registers them
    # itself, on first need, by importing shoal._codec
    code = textwrap.dedent(
        """
        import mmap, pickle, sys
        from shoal import _core
        assert "shoal._queues" not in sys.modules and "shoal._codec" not in sys.modules
        mapping = mmap.mmap(-1, _core.RING_HEADER_SIZE + 4096)
        ring = _core.Ring()
        ring._bind(mapping, 0, len(mapping))
        ring._init(4096, 0)
        ring._put_bytes(pickle.dumps({"a": [1, 2]}, protocol=5), False)
        print(ring._get(False), "shoal._codec" in sys.modules)
        ring._unbind()
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["{'a':", "[1,", "2]}", "True"]
