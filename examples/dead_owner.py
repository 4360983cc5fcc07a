"""A process dies holding a shoal Lock; the next acquire recovers it and is told.

Run: ``python examples/dead_owner.py``.
"""

import multiprocessing as mp
import os
import signal
import time
import warnings

import shoal


def hold(lock: shoal.Lock, ready: shoal.Event) -> None:
    lock.acquire()
    ready.set()
    time.sleep(3600)


if __name__ == "__main__":
    lock, ready = shoal.Lock(), shoal.Event()
    child = mp.Process(target=hold, args=(lock, ready))
    child.start()
    ready.wait(timeout=30)
    os.kill(child.pid, signal.SIGKILL)  # dies holding the lock

    warnings.simplefilter("ignore", shoal.OwnerDiedWarning)  # we check owner_died instead
    assert lock.acquire(timeout=5)
    print(f"acquired; owner_died={lock.owner_died}; {lock.statistics()}")
    lock.release()
    child.join()
