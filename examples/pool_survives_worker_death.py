"""A Pool worker is SIGKILLed in the middle of a map; the pool finishes the rest.

Item 13's worker is killed with SIGKILL, as the kernel's OOM killer would kill it.
``multiprocessing.Pool`` never hears of that task again: ``map`` waits forever.  A
``shoal.Pool`` fails that one item with ``shoal.WorkerDiedError`` (naming the pid,
the signal and the task), starts a replacement worker, and every other item
completes.  Run: ``python examples/pool_survives_worker_death.py``.
"""

import os
import signal
import time

import shoal


def square(n: int) -> int:
    if n == 13:
        os.kill(os.getpid(), signal.SIGKILL)  # stands in for the OOM killer
    time.sleep(0.01)
    return n * n


if __name__ == "__main__":
    with shoal.Pool(2) as pool:
        # imap, not map: map has one result for the whole list, so one lost item
        # fails all of it; imap hands out the items one by one and goes on after one fails
        results = pool.imap(square, range(20))
        done, failed = [], []
        for n in range(20):
            try:
                done.append(next(results))
            except shoal.WorkerDiedError as exc:
                failed.append(n)
                print(f"item {n}: {type(exc).__name__}: {exc}")
                print(f"   pid={exc.pid} signal={exc.signal!r} task={exc.task!r}")
        print(f"{len(done)} items done, {len(failed)} failed: {failed}")
        assert done == [n * n for n in range(20) if n != 13]
        # the worker was replaced: the pool keeps working
        print(f"afterwards: pool.map(abs, [-1, -2, -3]) -> {pool.map(abs, [-1, -2, -3])}")
