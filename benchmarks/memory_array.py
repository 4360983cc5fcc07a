"""Does passing a big array to Pool workers copy it?  Peak memory of all processes.

Run: ``python -m benchmarks.memory_array [--mib 512]``.

A float64 array is passed to 2 Pool workers that each sum half.  While a worker
still holds the array it received, it reads its proportional set size (PSS: shared
pages divided among the processes mapping them, so summing PSS over processes
counts shared memory once) from ``/proc/self/smaps_rollup``.  The total of the
parent and both workers, minus what the same processes use before the array
exists, is compared with the array's size: about 1x means no copy (shoal), about
3x means one copy per worker (the standard library pickles the array per task).
Linux only (smaps_rollup).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

import shoal


def _pss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss line in smaps_rollup")


def _sum_half_and_measure(array: Any, half: int, barrier: Any) -> tuple[float, int]:
    n = len(array) // 2
    total = float(array[half * n : (half + 1) * n].sum())
    barrier.wait(60)  # both workers hold their array now
    pss = _pss_bytes()
    barrier.wait(60)  # the parent measures itself meanwhile
    return total, pss


def _baseline(_: int) -> int:
    return _pss_bytes()


def measure(array: Any, ctx: Any) -> tuple[float, float]:
    """(seconds per round, total PSS growth in bytes) for one dispatch of ``array``."""
    manager_barrier = ctx.Manager()
    try:
        barrier = manager_barrier.Barrier(2)
        with ctx.Pool(2) as pool:
            base = sum(pool.map(_baseline, [0, 1], chunksize=1)) + _pss_bytes()
            start = time.perf_counter()
            results = pool.starmap(
                _sum_half_and_measure, [(array, 0, barrier), (array, 1, barrier)], chunksize=1
            )
            elapsed = time.perf_counter() - start
            parent = _pss_bytes()
        total = parent + sum(pss for _, pss in results)
        return elapsed, total - base + array.nbytes  # the parent's array predates base
    finally:
        manager_barrier.shutdown()


def main() -> None:
    """Print the peak memory of a dispatch, standard library and shoal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="array size in MiB")
    args = parser.parse_args()
    ctx = mp.get_context("fork")
    nbytes = args.mib * 2**20
    plain = np.arange(nbytes // 8, dtype=np.float64)
    print(f"array: {args.mib} MiB float64, 2 Pool workers each sum half (pid {os.getpid()})")
    seconds, total = measure(plain, ctx)
    print(
        f"  numpy array (pickled per task): {seconds * 1000:8.1f} ms, "
        f"memory of all processes {total / nbytes:.2f}x the array"
    )
    shared = shoal.share(plain)
    del plain
    seconds, total = measure(shared, ctx)
    print(
        f"  shoal.share(array):             {seconds * 1000:8.1f} ms, "
        f"memory of all processes {total / nbytes:.2f}x the array"
    )


if __name__ == "__main__":
    main()
