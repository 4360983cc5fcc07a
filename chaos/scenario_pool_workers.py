"""Pool and Executor workers SIGKILLed at random while many tiny tasks run.

Tasks are ``apply_async`` calls (and ``Executor.submit``) of a function that returns
its argument squared, some sleeping a millisecond; every ~100 ms one worker, picked at
random among this process's children, is SIGKILLed.  Each task must end exactly once:
with its result (checked), or with ``WorkerDiedError`` (the task its worker was
running).  Figures: tasks, ``ok``, ``died`` (failed with WorkerDiedError), ``wrong``
(a wrong result or another error), ``hangs`` (tasks with no outcome 60 s after the
last was submitted), kills.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from typing import Any

import shoal

HOLDS = ("wrong", "hangs")


def square(x: int) -> int:
    if x % 7 == 0:
        time.sleep(0.001)
    return x * x


def _kill_one_worker(rng: random.Random) -> bool:
    children = mp.active_children()
    if not children:
        return False
    victim = rng.choice(children)
    try:
        os.kill(victim.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _settle(outcome: Any, x: int, counts: dict[str, int]) -> None:
    try:
        value = outcome()
    except shoal.WorkerDiedError:
        counts["died"] += 1
    except (TimeoutError, mp.TimeoutError):
        counts["hangs"] += 1
    except Exception:
        counts["wrong"] += 1
    else:
        counts["ok" if value == x * x else "wrong"] += 1


def run(seconds: float) -> dict[str, Any]:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    counts = {"tasks": 0, "ok": 0, "died": 0, "wrong": 0, "hangs": 0, "kills": 0}
    half = seconds / 2
    with shoal.Pool(2) as pool:
        results = []
        deadline = time.monotonic() + half
        next_kill = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            results += [
                (x, pool.apply_async(square, (x,)))
                for x in range(counts["tasks"], counts["tasks"] + 50)
            ]
            counts["tasks"] += 50
            if time.monotonic() >= next_kill:
                counts["kills"] += _kill_one_worker(rng)
                next_kill = time.monotonic() + rng.uniform(0.05, 0.15)
            time.sleep(0.005)
        for x, result in results:
            _settle(lambda r=result: r.get(60), x, counts)
    with shoal.Executor(2) as executor:
        futures = []
        deadline = time.monotonic() + half
        next_kill = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            futures += [
                (x, executor.submit(square, x))
                for x in range(counts["tasks"], counts["tasks"] + 50)
            ]
            counts["tasks"] += 50
            if time.monotonic() >= next_kill:
                counts["kills"] += _kill_one_worker(rng)
                next_kill = time.monotonic() + rng.uniform(0.05, 0.15)
            time.sleep(0.005)
        for x, future in futures:
            _settle(lambda f=future: f.result(60), x, counts)
    return {"seconds": seconds, **counts}
