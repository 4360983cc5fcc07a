"""Zero copies across processes, asserted where the memory is (#10).

An array that arrives through a queue must be a view of its transit segment's
mapping, and a ``SharedArray`` passed to a ``Pool`` task a view of its segment's: the
receiving process finds the array's data pointer inside a ``/dev/shm/shoal-*`` mapping
(``/proc/self/maps``), and reading all of it grows the process's shared resident
memory, not its private (anonymous) memory (``/proc/self/status``: RssAnon).
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np
import pytest
from conftest import join_all

import shoal

SIZE = 64 << 20  # bytes: far above what noise in a process's private memory looks like
TIMEOUT = 30.0


def _mapping_of(address: int) -> str:
    """The file of the mapping holding ``address`` in this process ('' if anonymous)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) > 5 else ""
    raise AssertionError(f"{address:#x} is in no mapping")


def _rss_anon_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def inspect(array: Any) -> tuple[str, int, float]:
    """(file of the array's mapping, private memory grown by reading it all, its sum)."""
    before = _rss_anon_bytes()
    where = _mapping_of(array.__array_interface__["data"][0])
    total = float(array.sum(dtype=np.float64))
    return where, _rss_anon_bytes() - before, total


def receive_and_inspect(q: Any, conn: Any) -> None:
    array = q.get(timeout=TIMEOUT)
    conn.send(inspect(array))


def test_an_array_from_a_queue_is_a_view_of_its_transit_mapping(
    ctx: mp.context.BaseContext,
) -> None:
    q = shoal.Queue()
    here, there = ctx.Pipe()
    p = ctx.Process(target=receive_and_inspect, args=(q, there))
    p.start()
    sent = np.ones(SIZE // 8)
    q.put(sent)
    assert here.poll(TIMEOUT)
    where, grown, total = here.recv()
    join_all(p)
    assert total == sent.size
    assert "/dev/shm/shoal-" in where, f"the array lives in {where!r}, not a transit segment"
    assert grown < SIZE // 8, f"reading it grew private memory by {grown:,} bytes: a copy"
    q.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_shared_array_in_a_pool_task_is_not_copied(method: str) -> None:
    shared = shoal.share(np.ones(SIZE // 8))
    name = shared._shoal_block._segment.name
    with shoal.get_context(method).Pool(1) as pool:
        where, grown, total = pool.apply(inspect, (shared,), timeout=TIMEOUT)
    assert total == shared.size
    assert where.startswith("/dev/shm" + name), f"the task's array lives in {where!r}"
    assert grown < SIZE // 8, f"reading it grew private memory by {grown:,} bytes: a copy"
