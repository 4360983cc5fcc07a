"""Parents SIGKILLed holding queues, dicts, arrays and locks; a live neighbour untouched.

Round after round, a process fills a ``Queue`` (small items, 256 KiB arrays in transit
segments, a lock), a ``SharedDict`` (a lock as a value), a ``RawArray``, a numpy
``share()``d array and a ``Barrier``, hands a few to a child that holds them too, and
both are SIGKILLed.  Meanwhile a live neighbour process keeps objects of its own and
checks them after every sweep.  Figures: rounds, ``leftovers`` (segments left by the
killed processes after ``python -m shoal doctor --reap``), ``neighbour_lost``
(objects of the live neighbour that stopped working or whose segments went),
``crashes``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

import shoal
from shoal import _memory

from ._common import shoal_segments, sigkill

HOLDS = ("leftovers", "neighbour_lost", "crashes")


def _child_holds(objects: Any, ready: Any) -> None:
    ready.set()
    time.sleep(60)


def _fill_and_die(ready_out: Any) -> None:
    q, d = shoal.Queue(), shoal.SharedDict()
    lock = shoal.Lock()
    q.put_many([("item", i) for i in range(100)])
    q.put(bytearray(256 * 1024))
    q.put(np.arange(64 * 1024, dtype=np.int64))
    q.put(lock)
    d["lock"] = lock
    d["queue"] = q
    d.update({i: str(i) for i in range(100)})
    raw = shoal.RawArray("d", 10_000)
    arr = shoal.share(np.zeros(100_000))
    barrier = shoal.Barrier(3)
    ready = shoal.Event()
    child = mp.get_context("fork").Process(target=_child_holds, args=((q, d, raw, arr), ready))
    child.start()
    ready.wait(10)
    ready_out.send((child.pid, barrier, lock))
    time.sleep(60)


def _neighbour(conn: Any) -> None:
    lock, q, d = shoal.Lock(), shoal.Queue(), shoal.SharedDict()
    arr = shoal.share(np.arange(1000))
    d["x"] = 1
    mine = {lock._segment.name, q._segment.name, d._segment.name}
    while True:
        conn.recv()  # after each sweep
        lost = 0
        try:
            assert lock.acquire(timeout=1)
            lock.release()
            q.put("ping")
            assert q.get(timeout=1) == "ping"
            assert d["x"] == 1 and int(arr.sum()) == 499500
        except Exception:
            lost += 1
        lost += sum(1 for n in mine if not os.path.exists("/dev/shm" + n))
        conn.send(lost)


def run(seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    near, far = ctx.Pipe()
    neighbour = ctx.Process(target=_neighbour, args=(far,), daemon=True)
    neighbour.start()
    time.sleep(0.5)
    baseline = set(shoal_segments())  # the neighbour's
    rounds = leftovers = neighbour_lost = crashes = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or rounds == 0:
        here, there = ctx.Pipe()
        parent = ctx.Process(target=_fill_and_die, args=(there,))
        parent.start()
        if not here.poll(20):
            crashes += 1
            sigkill(parent)
            continue
        child_pid, barrier, lock = here.recv()
        del barrier, lock  # the pickles' references: received, then dropped
        os.kill(child_pid, signal.SIGKILL)
        sigkill(parent)
        time.sleep(0.05)  # the orphaned child is reaped by init (this namespace's)
        done = subprocess.run(
            [sys.executable, "-m", "shoal", "doctor", "--reap"], capture_output=True, text=True
        )
        if done.returncode != 0:
            crashes += 1
        left = set(shoal_segments()) - baseline - {n[1:] for n in _memory.attached_names()}
        leftovers = max(leftovers, len(left))
        near.send("check")
        neighbour_lost += near.recv()
        rounds += 1
    sigkill(neighbour)
    return {
        "seconds": seconds,
        "rounds": rounds,
        "leftovers": leftovers,
        "neighbour_lost": neighbour_lost,
        "crashes": crashes,
    }
