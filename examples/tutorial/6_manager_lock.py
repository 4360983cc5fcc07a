"""The tutorial's sixth program: a ``Manager().Lock()`` around the writer's puts.

The end of the tutorial, ported to Python 3 with only the import lines changed.  The
writer holds the lock while it puts A, B and C; the reader takes values off the queue
with ``get(False)`` while it is not empty.  In the standard library both the queue and
the lock are proxies to a manager's server process (a socket round trip for every
``acquire``, ``put``, ``empty`` and ``get``).  shoal's ``Manager().Lock()`` is a
``shoal.Lock`` in shared memory: one atomic instruction to take when it is free, and
it survives an owner that dies holding it.

Both tasks start at once and the reader stops the first time it finds the queue
empty, so it may get A, B and C, a first part of them, or nothing: the tutorial's
race, kept.

Run: ``python examples/tutorial/6_manager_lock.py``.
"""

import random
import time

import shoal as multiprocessing
from shoal import Pool

PAUSE = 0.1  # the tutorial's time.sleep(random.random()) sleeps up to 1 s


# the code the writer runs:
def write(q, lock):
    lock.acquire()  # take the lock
    for value in ['A', 'B', 'C']:
        print('Put %s to queue...' % value)
        q.put(value)
    lock.release()  # release the lock


# the code the reader runs:
def read(q):
    while True:
        if not q.empty():
            value = q.get(False)
            print('Get %s from queue.' % value)
            time.sleep(random.random() * PAUSE)
        else:
            break


if __name__ == '__main__':
    manager = multiprocessing.Manager()
    # the parent creates the Queue and passes it to each pool task:
    q = manager.Queue()
    lock = manager.Lock()  # make a lock
    p = Pool()
    pw = p.apply_async(write, args=(q, lock))
    pr = p.apply_async(read, args=(q,))
    p.close()
    p.join()

    print()
    print('All data written and read.')
