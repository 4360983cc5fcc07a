"""shoal.lowlevel's atomics: each word aligned to its own size, checked in the caller."""

from __future__ import annotations

import mmap

import pytest

from shoal import lowlevel


def test_32_bit_words_work_at_any_4_byte_aligned_offset():
    buf = mmap.mmap(-1, 16)
    lowlevel.store32(buf, 4, 5)
    assert lowlevel.fetch_add32(buf, 4, 2) == 5
    assert lowlevel.load32(buf, 4) == 7
    assert lowlevel.cas32(buf, 4, 7, 1) == (True, 7)
    assert lowlevel.cas32(buf, 4, 7, 2) == (False, 1)
    assert lowlevel.wait32(buf, 4, 99, 0.01) is True  # the word differs: no wait
    assert lowlevel.wait32(buf, 4, 1, 0.01) is False  # it matches: times out
    assert lowlevel.wake32(buf, 4) == 0


def test_64_bit_words_need_8_byte_alignment():
    buf = mmap.mmap(-1, 16)
    lowlevel.store64(buf, 8, 2**40)
    assert lowlevel.fetch_add64(buf, 8, -1) == 2**40
    assert lowlevel.load64(buf, 8) == 2**40 - 1
    with pytest.raises(ValueError, match="8-byte aligned"):
        lowlevel.load64(buf, 4)


@pytest.mark.parametrize("offset", [2, 13])
def test_misaligned_or_outside_words_are_refused(offset):
    buf = mmap.mmap(-1, 16)
    with pytest.raises(ValueError, match=r"aligned|outside"):
        lowlevel.load32(buf, offset)
    with pytest.raises(ValueError, match="outside"):
        lowlevel.load32(buf, 16)
