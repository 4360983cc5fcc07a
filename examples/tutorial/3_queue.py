"""The tutorial's third program: a writer and a reader ``Process`` sharing a ``Queue``.

Section 3 of the tutorial, ported to Python 3 with only the import line changed.  The
queue is made by the parent and handed to both children as they are created, which
the standard library allows too ("through inheritance").  The writer has finished
before the reader starts, so the reader gets A, B and C, in order.

The tutorial sleeps up to 1 s between steps (``random.random()``); ``PAUSE`` scales
that down to 0.1 s so that the program runs as a test.

Run: ``python examples/tutorial/3_queue.py``.
"""

import random
import time

from shoal import Process, Queue

PAUSE = 0.1  # the tutorial's time.sleep(random.random()) sleeps up to 1 s


# the code the writer process runs:
def write(q):
    for value in ['A', 'B', 'C']:
        print('Put %s to queue...' % value)
        q.put(value)
        time.sleep(random.random() * PAUSE)


# the code the reader process runs:
def read(q):
    while True:
        if not q.empty():
            value = q.get(True)
            print('Get %s from queue.' % value)
            time.sleep(random.random() * PAUSE)
        else:
            break


if __name__ == '__main__':
    # the parent creates the Queue and passes it to each child:
    q = Queue()
    pw = Process(target=write, args=(q,))
    pr = Process(target=read, args=(q,))
    # start the writer pw:
    pw.start()
    # wait for pw to end:
    pw.join()
    # start the reader pr:
    pr.start()
    pr.join()
    # (the tutorial's comment: pr loops forever and has to be terminated; in fact its
    # loop ends when it finds the queue empty)
    print()
    print('All data written and read.')
