"""Ordinary multiprocessing programs run on shoal with only the import changed (#5, item 1).

Each program below is written for the standard library.  It is run twice, as a script
in a fresh interpreter (spawn and forkserver children re-import it, so it must be a
file): once under ``import multiprocessing``, once under ``import shoal as
multiprocessing``; the two outputs must be equal, and equal to what the program is
known to print (so a program that prints nothing cannot pass by accident).  Each runs
under every start method, set the usual way, with ``set_start_method`` in the
``__main__`` block.

The Pool and Manager programs turn on once ``shoal.Pool`` / ``shoal.Manager`` exist.
Programs print nothing before they start processes: a forked child would inherit
unflushed output (with either library).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import START_METHODS

TIMEOUT = 60.0
HEADERS = {
    "multiprocessing": "import multiprocessing\n",
    "shoal": "import shoal as multiprocessing\n",
}


def run(tmp_path: Path, program: str, library: str, method: str) -> list[str]:
    path = tmp_path / library / "program.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(HEADERS[library] + textwrap.dedent(program))
    result = subprocess.run(
        [sys.executable, str(path), method],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=path.parent,
        check=False,
    )
    assert result.returncode == 0, f"{library} ({method}):\n{result.stdout}\n{result.stderr}"
    return result.stdout.splitlines()


def same_output(tmp_path: Path, program: str, method: str) -> list[str]:
    """Run ``program`` with both libraries; return shoal's output after comparing."""
    theirs = run(tmp_path, program, "multiprocessing", method)
    ours = run(tmp_path, program, "shoal", method)
    assert ours == theirs, f"shoal printed {ours}, multiprocessing {theirs}"
    return ours


@pytest.fixture(params=START_METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return request.param


# ---- processes, queues, shared values, locks, events, pipes ---------------------------------

PRODUCER_CONSUMER = """
import sys

def producer(q, start, n):
    for i in range(start, start + n):
        q.put(i * i)
    q.put(None)

def consumer(q, producers, out):
    total, ends = 0, 0
    while ends < producers:
        item = q.get()
        if item is None:
            ends += 1
        else:
            total += item
    out.put(("total", total))

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    q, out = multiprocessing.Queue(), multiprocessing.Queue()
    procs = [multiprocessing.Process(target=producer, args=(q, i * 100, 100)) for i in range(2)]
    procs.append(multiprocessing.Process(target=consumer, args=(q, 2, out)))
    for p in procs:
        p.start()
    result = out.get(timeout=30)
    for p in procs:
        p.join(30)
    print(result)
    print([p.exitcode for p in procs])
    print(q.empty(), out.empty())
"""


def test_producer_consumer(tmp_path: Path, method: str) -> None:
    total = sum(i * i for i in range(200))
    assert same_output(tmp_path, PRODUCER_CONSUMER, method) == [
        f"('total', {total})",
        "[0, 0, 0]",
        "True True",
    ]


VALUE_ARRAY = """
import sys

def work(counter, arr, text, i):
    for _ in range(200):
        with counter.get_lock():
            counter.value += 1
    with arr.get_lock():
        arr[i] = i * 10.5
    if i == 0:
        text.value = b"done"

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    counter = multiprocessing.Value("i", 0)
    arr = multiprocessing.Array("d", 3)
    text = multiprocessing.Array("c", 8)
    squares = multiprocessing.Array("i", [i * i for i in range(5)], lock=False)
    raw = multiprocessing.RawValue("d", 1.25)
    procs = [multiprocessing.Process(target=work, args=(counter, arr, text, i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    print(counter.value, arr[:], list(arr), len(arr))
    print(text.value, squares[1:4], raw.value)
    print([p.exitcode for p in procs])
"""


def test_value_and_array(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, VALUE_ARRAY, method) == [
        "600 [0.0, 10.5, 21.0] [0.0, 10.5, 21.0] 3",
        "b'done' [1, 4, 9] 1.25",
        "[0, 0, 0]",
    ]


LOCKED_PRINTS = """
import sys

def say(lock, i):
    with lock:
        print(f"process {i}: hello", flush=True)
        print(f"process {i}: goodbye", flush=True)

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    lock = multiprocessing.Lock()
    procs = [multiprocessing.Process(target=say, args=(lock, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    with lock:
        print("main: all done", flush=True)
"""


def pairs(lines: list[str]) -> list[str]:
    """Check each hello is followed at once by its goodbye; return them in order of i."""
    assert lines[-1] == "main: all done"
    said = lines[:-1]
    for hello, goodbye in zip(said[::2], said[1::2]):
        assert hello.endswith("hello") and goodbye == hello.replace("hello", "goodbye")
    return sorted(said)


def test_lock_around_prints(tmp_path: Path, method: str) -> None:
    """The children's order varies from run to run; each one's pair of lines may not."""
    theirs = pairs(run(tmp_path, LOCKED_PRINTS, "multiprocessing", method))
    ours = pairs(run(tmp_path, LOCKED_PRINTS, "shoal", method))
    assert ours == theirs
    assert len(ours) == 8


EVENT = """
import sys

def waiter(ready, go, done, i):
    ready.release()
    if go.wait(30):
        done.put(i)

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    go = multiprocessing.Event()
    ready = multiprocessing.Semaphore(0)
    done = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=waiter, args=(ready, go, done, i)) for i in range(3)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=30)
    before = done.empty()
    was_set = go.is_set()
    go.set()
    got = sorted(done.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
    print(before, was_set, go.is_set(), got)
    go.clear()
    print(go.is_set(), go.wait(0.01))
"""


def test_event(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, EVENT, method) == ["True False True [0, 1, 2]", "False False"]


PIPE = """
import sys

def echo(conn):
    me = multiprocessing.current_process()
    parent = multiprocessing.parent_process()
    conn.send((me.name, parent.name))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(msg.upper())
    conn.close()

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    here, there = multiprocessing.Pipe()
    p = multiprocessing.Process(target=echo, args=(there,), name="echoer")
    p.start()
    alive = p in multiprocessing.active_children()
    names = here.recv()
    replies = []
    for word in ["spam", "eggs"]:
        here.send(word)
        replies.append(here.recv())
    here.send(None)
    p.join(30)
    print(names, replies)
    print(alive, p.exitcode, p.is_alive(), multiprocessing.active_children())
    print(multiprocessing.current_process().name, multiprocessing.parent_process())
    r, w = multiprocessing.Pipe(duplex=False)
    w.send_bytes(b"raw")
    print(r.poll(1), r.recv_bytes())
"""


def test_pipe(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, PIPE, method) == [
        "('echoer', 'MainProcess') ['SPAM', 'EGGS']",
        "True 0 False []",
        "MainProcess None",
        "True b'raw'",
    ]


EXIT_CODES = """
import os, sys, time

def ok():
    pass

def fails():
    raise SystemExit(3)

def crashes():
    os._exit(7)

def sleeps():
    time.sleep(30)

class Worker(multiprocessing.Process):
    def run(self):
        sys.exit(self.name == "custom" and 5)

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    procs = [multiprocessing.Process(target=f) for f in (ok, fails, crashes, sleeps)]
    procs.append(Worker(name="custom"))
    for p in procs:
        p.start()
    procs[3].terminate()
    for p in procs:
        p.join(30)
    print([p.exitcode for p in procs])
    try:
        procs[0].start()
    except AssertionError as e:
        print("AssertionError", e)
    print(multiprocessing.cpu_count() >= 1)
"""


def test_exit_codes(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, EXIT_CODES, method) == [
        "[0, 3, 7, -15, 5]",
        "AssertionError cannot start a process twice",
        "True",
    ]


CONTEXT = """
import sys

def put(q, x):
    q.put(x * 2)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    q = ctx.Queue()
    lock = ctx.Lock()
    procs = [ctx.Process(target=put, args=(q, i)) for i in range(3)]
    for p in procs:
        p.start()
    with lock:
        got = sorted(q.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
    print(ctx.get_start_method() == sys.argv[1], got, [p.exitcode for p in procs])
"""


def test_get_context(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, CONTEXT, method) == ["True [0, 2, 4] [0, 0, 0]"]


# ---- pools and managers ------------------------------------------------------------------

POOL = """
import sys, time

def square(x):
    return x * x

def fail(x):
    raise ValueError(f"bad {x}")

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    with multiprocessing.Pool(2) as pool:
        print(pool.map(square, range(10)))
        print(pool.map(square, range(10), chunksize=3))
        print(list(pool.imap(square, range(5))))
        print(sorted(pool.imap_unordered(square, range(5))))
        print(pool.starmap(pow, [(2, 3), (3, 2)]))
        print(pool.apply(square, (7,)))
        r = pool.apply_async(square, (8,))
        print(r.get(timeout=30), r.ready(), r.successful())
        m = pool.map_async(square, [1, 2])
        m.wait(30)
        print(m.get(), pool.starmap_async(pow, [(2, 2)]).get(30))
        try:
            pool.apply(fail, (1,))
        except ValueError as e:
            print("ValueError", e)
        bad = pool.apply_async(fail, (2,))
        bad.wait(30)
        print(bad.ready(), bad.successful())
        try:
            bad.get(30)
        except ValueError as e:
            print("ValueError", e)
        try:
            pool.apply_async(time.sleep, (5,)).get(timeout=0.2)
        except multiprocessing.TimeoutError:
            print("timed out")
"""


def test_pool(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, POOL, method) == [
        "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",
        "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",
        "[0, 1, 4, 9, 16]",
        "[0, 1, 4, 9, 16]",
        "[8, 9]",
        "49",
        "64 True True",
        "[1, 4] [4]",
        "ValueError bad 1",
        "True False",
        "ValueError bad 2",
        "timed out",
    ]


TUTORIAL_POOL = """
import os, sys, time

def long_time_task(name):
    time.sleep(0.05)
    return f"task {name} done"

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    results = []
    p = multiprocessing.Pool(2)
    for i in range(5):
        p.apply_async(long_time_task, args=(i,), callback=results.append)
    p.close()
    p.join()
    print(sorted(results))
    try:
        p.apply_async(long_time_task, (9,))
    except ValueError as e:  # shoal's message says more; it starts the same
        print("ValueError", str(e).startswith("Pool not running"))
"""


def test_tutorial_pool(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, TUTORIAL_POOL, method) == [
        str([f"task {i} done" for i in range(5)]),
        "ValueError True",
    ]


POOL_INITIALIZER = """
import sys

state = {}

def init(base):
    state["base"] = base

def add(x):
    return state["base"] + x

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    with multiprocessing.Pool(2, initializer=init, initargs=(100,), maxtasksperchild=2) as pool:
        print(pool.map(add, range(6), chunksize=1))
    pool.join()
"""


def test_pool_initializer_and_maxtasksperchild(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, POOL_INITIALIZER, method) == ["[100, 101, 102, 103, 104, 105]"]


MANAGER = """
import sys

def work(d, l, lock, i):
    with lock:
        d[i] = i * i
        l.append(i)

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    with multiprocessing.Manager() as manager:
        d, l, lock = manager.dict(), manager.list(), manager.Lock()
        procs = [multiprocessing.Process(target=work, args=(d, l, lock, i)) for i in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        print(sorted(d.items()), sorted(l), len(d), len(l))
        ns = manager.Namespace()
        ns.x = 5
        q = manager.Queue()
        q.put("hi")
        print(ns.x, q.get(timeout=30))
"""


def test_manager(tmp_path: Path, method: str) -> None:
    assert same_output(tmp_path, MANAGER, method) == [
        "[(0, 0), (1, 1), (2, 4)] [0, 1, 2] 3 3",
        "5 hi",
    ]


MANAGER_PRINTS = """
import sys

def fill(d, l):
    for word in ["pear", "fig", "apple", "fig", "kiwi"]:
        d[word] = d.get(word, 0) + 1
        l.append(word)

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    with multiprocessing.Manager() as manager:
        d, l = manager.dict(), manager.list()
        p = multiprocessing.Process(target=fill, args=(d, l))
        p.start()
        p.join(30)
        print(d)
        print(l, list(d), d.keys(), d.items())
        del d["pear"]
        d["pear"] = 0
        l *= 2
        print(d, d.popitem(), str(d))
        print(l[::3], l * 1 == l[:], [w for w in l][-2:], l.index("fig", 2))
"""


def test_manager_dict_and_list_print_as_the_standard_librarys(tmp_path: Path, method: str) -> None:
    """Insertion order, repr, ``*=`` (#11)."""
    assert same_output(tmp_path, MANAGER_PRINTS, method) == [
        "{'pear': 1, 'fig': 2, 'apple': 1, 'kiwi': 1}",
        "['pear', 'fig', 'apple', 'fig', 'kiwi'] ['pear', 'fig', 'apple', 'kiwi']"
        " ['pear', 'fig', 'apple', 'kiwi'] [('pear', 1), ('fig', 2), ('apple', 1), ('kiwi', 1)]",
        # (print() formats its arguments after popitem() ran)
        "{'fig': 2, 'apple': 1, 'kiwi': 1} ('pear', 0) {'fig': 2, 'apple': 1, 'kiwi': 1}",
        "['pear', 'fig', 'fig', 'kiwi'] True ['fig', 'kiwi'] 3",
    ]
