"""The tutorial's second program: five ``apply_async`` tasks, then ``close`` and ``join``.

Section 2 of the tutorial, ported to Python 3 with only the import line changed.  As in
the standard library, as many tasks run at once as the pool has workers (one per CPU
this process may use) and the others wait for a free worker.  The one difference you
could see: had a task raised, the standard library would lose the error (the program
never calls ``get()``); shoal's ``join()`` warns with ``UncollectedTaskErrorWarning``.

The tutorial sleeps 3 s a task; ``TASK_SECONDS`` is 0.3 here so that it runs as a test.

Run: ``python examples/tutorial/2_pool.py``.
"""

import os
import time

from shoal import Pool

TASK_SECONDS = 0.3  # the tutorial's time.sleep(3)


def long_time_task(name):
    print('Run task %s (%s)...' % (name, os.getpid()))
    start = time.time()
    time.sleep(TASK_SECONDS)
    end = time.time()
    print('Task %s runs %0.2f seconds.' % (name, (end - start)))


if __name__ == '__main__':
    print('Parent process %s.' % os.getpid())
    p = Pool()
    for i in range(5):
        p.apply_async(long_time_task, args=(i,))
    print('Waiting for all subprocesses done...')
    p.close()
    p.join()
    print('All subprocesses done.')
