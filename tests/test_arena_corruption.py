"""Arenas and segments whose headers were scribbled on (issue #10, 5b; found by the
chaos suite's ``corrupt_memory`` fuzz).

Freeing a block reads its run length from the block's header; a header that names no
allocation there (a stray write) is refused with :class:`shoal.LayoutError`, the error
every other check of memory written to outside shoal raises, and nothing is freed.  A
handle to an object in a segment whose header's kind holds no objects, or says arena
of a segment without an arena's size and block geometry, is refused with it too (a
forged offset stays a ``ValueError``: that is the handle's fault).
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


@pytest.mark.parametrize(
    "which, kind",
    [("queue", 0), ("queue", 3), ("queue", 77), ("queue", 2), ("lock", 0), ("lock", 1)],
    ids=["data-0", "data-transit", "data-77", "data-as-arena", "arena-0", "arena-as-data"],
)
def test_a_handle_to_a_segment_whose_kind_was_written_over_raises_layout_error(
    which: str, kind: int
) -> None:
    # before: ValueError, as for a forged handle (the handle is fine: the memory is not);
    # an arena said to be a data segment is still read as what it is (it works)
    out = check_isolated(
        f"""
import pickle, struct, subprocess, sys
import shoal
obj = shoal.Queue(capacity=1 << 16) if {which!r} == "queue" else shoal.Lock()
struct.pack_into("<I", obj._segment.buffer, 24, {kind})  # the header's kind
# a process that has not attached it yet (an attached segment's kind is known)
code = "import pickle, sys, shoal; pickle.loads(sys.stdin.buffer.read()).close()"
done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(obj),
                      capture_output=True, timeout=60)
err = done.stderr.decode()
if {which!r} == "lock" and {kind} == 1:
    assert done.returncode == 0, err
else:
    assert done.returncode == 1 and "LayoutError" in err, err
    assert "holds no shoal objects" in err or "is not an arena" in err, err
print("ok")
"""
    )
    assert out.strip().endswith("ok")
