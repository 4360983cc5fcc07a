"""The ring's claim (issue #5): a consumer records which record it took, before it
leaves the ring, so a watcher can tell after the consumer died."""

from __future__ import annotations

import queue

import pytest

from shoal import Queue

CLAIMED = 1 << 63


def claim_word(buf: bytearray, offset: int = 8) -> int:
    return int.from_bytes(buf[offset : offset + 8], "little")


def test_claim_records_each_records_ordinal_in_ring_order() -> None:
    q = Queue()
    try:
        q.put_many(["a", ("b", 1), {"c": 3}, b"d" * 1000])
        buf = bytearray(16)
        assert q._taken == 0
        for ordinal, expected in enumerate(["a", ("b", 1), {"c": 3}, b"d" * 1000]):
            assert q._get_claim(buf, 8) == expected
            assert claim_word(buf) == CLAIMED | ordinal
            assert q._taken == ordinal + 1  # taken: the watcher's test
    finally:
        q.close()


def test_claim_on_an_empty_ring_writes_nothing() -> None:
    q = Queue()
    try:
        buf = bytearray(16)
        with pytest.raises(queue.Empty):
            q._get_claim(buf, 8, False)
        with pytest.raises(queue.Empty):
            q._get_claim(buf, 8, timeout=0.01)
        assert claim_word(buf) == 0
    finally:
        q.close()


def test_claim_word_must_be_an_aligned_writable_word() -> None:
    q = Queue()
    try:
        q.put(1)
        with pytest.raises(ValueError, match="aligned"):
            q._get_claim(bytearray(16), 3)
        with pytest.raises(ValueError, match="outside"):
            q._get_claim(bytearray(16), 16)
        with pytest.raises(BufferError):
            q._get_claim(b"read-only bytes", 0)
        assert q.get(timeout=1) == 1  # nothing was taken by the bad calls
    finally:
        q.close()
