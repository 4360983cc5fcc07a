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


def _storm(
    submit: Any, outcome: Any, seconds: float, rng: random.Random, counts: dict[str, int]
) -> None:
    """Submit batches of 50 tasks for ``seconds`` while killing a worker every ~100 ms,
    then settle every task (``outcome(handle)`` returns its result or raises)."""
    pending = []
    deadline = time.monotonic() + seconds
    next_kill = time.monotonic() + 0.1
    while time.monotonic() < deadline:
        first = counts["tasks"]
        pending += [(x, submit(x)) for x in range(first, first + 50)]
        counts["tasks"] += 50
        if time.monotonic() >= next_kill:
            counts["kills"] += _kill_one_worker(rng)
            next_kill = time.monotonic() + rng.uniform(0.05, 0.15)
        time.sleep(0.005)
    for x, handle in pending:
        _settle(lambda h=handle: outcome(h), x, counts)


def run(seconds: float) -> dict[str, Any]:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    counts = {"tasks": 0, "ok": 0, "died": 0, "wrong": 0, "hangs": 0, "kills": 0}
    with shoal.Pool(2) as pool:
        _storm(
            lambda x: pool.apply_async(square, (x,)), lambda r: r.get(60), seconds / 2, rng, counts
        )
    with shoal.Executor(2) as executor:
        _storm(
            lambda x: executor.submit(square, x), lambda f: f.result(60), seconds / 2, rng, counts
        )
    return {"seconds": seconds, **counts}
