"""A shoal Lock passed to Pool tasks: the program multiprocessing refuses to run.

With ``multiprocessing.Lock()`` instead of ``shoal.Lock()`` the first task fails with
``RuntimeError: Lock objects should only be shared between processes through
inheritance``.  Run: ``python examples/lock_in_pool.py``.
"""

import multiprocessing as mp
import os

import shoal


def log_line(lock: shoal.Lock, path: str, n: int) -> int:
    """Append one line to a shared file; the lock keeps lines whole and in one piece."""
    with lock, open(path, "a") as f:
        f.write(f"task {n} from pid {os.getpid()}\n")
    return n


if __name__ == "__main__":
    import tempfile

    lock = shoal.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "log.txt")
        with mp.Pool(2) as pool:
            done = pool.starmap(log_line, [(lock, path, n) for n in range(20)])
        with open(path) as f:
            lines = f.read().splitlines()
    print(f"{len(done)} tasks, {len(lines)} lines, all whole: {len(lines) == len(done)}")
