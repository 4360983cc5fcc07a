"""The tutorial's fourth program: the same writer and reader as ``Pool`` tasks.

Section 4 of the tutorial, ported to Python 3 with only the import line changed.  This
is the program that does not work with the standard library: a ``multiprocessing.Queue``
cannot be pickled into a pool task ("Queue objects should only be shared between
processes through inheritance").  The tutorial saw that ``RuntimeError``; on Python 3
it is worse, it is *silent*: the pool's task-handler thread stores the error in each
``AsyncResult``, the program never calls ``get()``, and it prints its last line having
written and read nothing.  The tutorial then reaches for ``Manager()`` (programs 5 and
6).

A ``shoal.Queue`` lives in shared memory and pickles as a small handle, so here it is an
ordinary argument: the writer puts A, B and C and the reader gets them.

The reader's loop is the tutorial's and keeps its race: both tasks start at once, and
the reader stops the first time it finds the queue empty, so it may get A, B and C, a
first part of them, or nothing.  (For a reader that gets everything, the writer calls
``q.shutdown()`` when done and the reader iterates ``for value in q``.)

Run: ``python examples/tutorial/4_queue_in_pool.py``.
"""

import random
import time

from shoal import Pool, Queue

PAUSE = 0.1  # the tutorial's time.sleep(random.random()) sleeps up to 1 s


# the code the writer runs:
def write(q):
    for value in ['A', 'B', 'C']:
        print('Put %s to queue...' % value)
        q.put(value)
        time.sleep(random.random() * PAUSE)


# the code the reader runs:
def read(q):
    while True:
        if not q.empty():
            value = q.get(True)
            print('Get %s from queue.' % value)
            time.sleep(random.random() * PAUSE)
        else:
            break


if __name__ == '__main__':
    # the parent creates the Queue and passes it to each pool task:
    q = Queue()
    p = Pool()
    pw = p.apply_async(write, args=(q,))
    pr = p.apply_async(read, args=(q,))
    p.close()
    p.join()

    print()
    print('All data written and read.')
