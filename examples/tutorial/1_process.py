"""The tutorial's first program: one child ``Process``, started and joined.

Section 1 of the tutorial (``shared/seed/multiprocessing-tutorial.txt``), ported to
Python 3 with only the import line changed.  The standard library prints the same
four lines: ``shoal.Process`` *is* the standard library's process machinery.

Run: ``python examples/tutorial/1_process.py``.
"""

import os

from shoal import Process


# the code the child process runs
def run_proc(name):
    print('Run child process %s (%s)...' % (name, os.getpid()))


if __name__ == '__main__':
    print('Parent process %s.' % os.getpid())
    p = Process(target=run_proc, args=('test',))
    print('Process will start.')
    p.start()
    p.join()
    print('Process end.')
