"""The tutorial's fifth program: the ``Manager().Queue()`` workaround, with a ``Pool``.

Section 4 of the tutorial, its fix, ported to Python 3 with only the import lines
changed (``import shoal as multiprocessing``, as the tutorial calls
``multiprocessing.Manager()``).  In the standard library a manager queue is a proxy to
a queue in a separate server process, and every ``put``/``get``/``empty`` is a round
trip over a socket.  shoal's ``Manager().Queue()`` is a plain ``shoal.Queue`` in shared
memory: the program is unchanged and needs no server process (program 4 shows that
shoal does not need the workaround at all).

The writer gets a 0.5 s head start, as in the tutorial, so the reader usually finds
A, B and C; the reader's loop still stops the first time it finds the queue empty.

Run: ``python examples/tutorial/5_manager_queue.py``.
"""

import random
import time

import shoal as multiprocessing
from shoal import Pool

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
    manager = multiprocessing.Manager()
    # the parent creates the Queue and passes it to each pool task:
    q = manager.Queue()
    p = Pool()
    pw = p.apply_async(write, args=(q,))
    time.sleep(0.5)
    pr = p.apply_async(read, args=(q,))
    p.close()
    p.join()

    print()
    print('All data written and read.')
