"""An arena whose block headers were scribbled on (issue #10, 5b; found by the chaos
suite's ``corrupt_memory`` fuzz).

Freeing a block reads its run length from the block's header; a header that names no
allocation there (a stray write) is refused with :class:`shoal.LayoutError`, the error
every other check of memory written to outside shoal raises, and nothing is freed.
Each case runs in a child process with a private ``/dev/shm`` (tests/isolation.py):
the arenas it damages are not the test runner's.
"""

from __future__ import annotations

import pytest
from isolation import check_isolated


@pytest.mark.parametrize("blocks", [0, 0xFFFF, 5000])
def test_freeing_a_block_whose_header_names_no_allocation_raises_layout_error(
    blocks: int,
) -> None:
    # before: RuntimeError
    out = check_isolated(
        f"""
import struct
import shoal
lock, other = shoal.Lock(), shoal.Lock()
struct.pack_into("<H", lock._segment.buffer, lock._header_offset + 12, {blocks})
try:
    lock.close()
except shoal.LayoutError as exc:
    assert "the arena is corrupt" in str(exc), exc
else:
    raise AssertionError("a block with a corrupt header was freed")
assert other.acquire(timeout=1)  # its neighbour is untouched
other.release()
print("ok")
"""
    )
    assert out.strip().endswith("ok")
