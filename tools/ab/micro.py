"""Per-operation costs (ns) of the paths the C glue serves: queue put/get (fast codec
scalars, tuples, pickles), SharedDict get/set, Lock acquire/release, Value.add.

For an A/B of two builds of shoal (#12: the glue before and after a restructure), run
it with each build's interpreter in turn, several times, and compare the best of each
(medians swing 2x on a shared 2-core machine)::

    git worktree add /tmp/before <rev> && python3 -m venv /tmp/vb && /tmp/vb/bin/pip install /tmp/before
    for i in 1 2 3 4 5 6; do /tmp/vb/bin/python tools/ab/micro.py; .venv/bin/python tools/ab/micro.py; done
"""

import statistics
import time

import shoal


def t(fn, n):
    best = []
    for _ in range(5):
        s = time.perf_counter()
        fn(n)
        best.append((time.perf_counter() - s) / n * 1e9)
    return statistics.median(best)


q = shoal.Queue()


def q_int(n):
    for i in range(n):
        q.put(i)
        q.get()


def q_tuple(n):
    x = (1, 2.0, "three", b"four")
    for i in range(n):
        q.put(x)
        q.get()


def q_pickle(n):
    x = {"a": [1, 2]}
    for i in range(n):
        q.put(x)
        q.get()


d = shoal.SharedDict()


def d_set(n):
    for i in range(n):
        d[i & 1023] = i


def d_get(n):
    for i in range(n):
        d.get(i & 1023)


def d_obj(n):
    for i in range(n):
        d["k"] = [i]
        d["k"]


lock = shoal.Lock()


def l_ar(n):
    for i in range(n):
        lock.acquire()
        lock.release()


v = shoal.Value("q", 0)


def v_add(n):
    for i in range(n):
        v.add(1)


out = {}
for name, fn, n in [
    ("queue_int", q_int, 20000),
    ("queue_tuple", q_tuple, 20000),
    ("queue_pickle", q_pickle, 10000),
    ("dict_set", d_set, 20000),
    ("dict_get", d_get, 50000),
    ("dict_obj", d_obj, 5000),
    ("lock", l_ar, 50000),
    ("value_add", v_add, 50000),
]:
    out[name] = t(fn, n)
print(" ".join(f"{k}={v:.0f}" for k, v in out.items()))
q.close()
d.close()
lock.close()
