"""Pool and Executor workers killed, segfaulting, ``os._exit``ing and hitting
``RLIMIT_AS`` while many tiny tasks run.

Tasks are ``apply_async`` calls (and ``Executor.submit``) of a function that returns
its argument squared, some sleeping a millisecond.  Every ~100 ms something kills a
worker, at random: a SIGKILL from here, picked among this process's children, or a
task that does it itself, mixed in with the tiny ones — a segfault (a read of address
0), ``os._exit`` with a random code, or a task that caps its worker's address space
(``RLIMIT_AS``) and then allocates 4 GiB.  Each task must end exactly once:

- a tiny task with its result (checked), or with ``WorkerDiedError`` when its worker
  was SIGKILLed from here (so no more of them die than were killed);
- a segfaulting task with ``WorkerDiedError`` naming SIGSEGV, an ``os._exit`` task with
  one naming its exit code (either: SIGKILL, if the kill from here came first);
- an ``RLIMIT_AS`` task with ``MemoryError``, or ``WorkerDiedError`` had the worker died
  of it (the contract of tests/test_pool_survival.py); its worker goes on capped.

Figures: tasks, ``ok``, ``died`` (tiny tasks failed with WorkerDiedError), kills
(SIGKILLs sent), ``segfaults``, ``exits`` and ``rlimits`` (self-killing tasks sent, each
with its right outcome or counted ``wrong``), ``memory_errors`` (RLIMIT_AS tasks that
got MemoryError), ``wrong`` (a wrong result or another error), ``misblamed`` (tiny or
self-killing tasks failed with a SIGKILL beyond the kills sent: a death charged to the
wrong task), ``hangs`` (tasks with no outcome 60 s after the last was submitted).
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing as mp
import os
import random
import signal
import time
from typing import Any

import shoal

HOLDS = ("wrong", "misblamed", "hangs")
_DEATHS = ("kill", "segfault", "exit", "rlimit")


def square(x: int) -> int:
    if x % 7 == 0:
        time.sleep(0.001)
    return x * x


def segfault(x: int) -> int:
    faulthandler.disable()  # (its report would be noise)
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x


def exit_hard(code: int) -> int:
    os._exit(code)


def allocate_over_rlimit_as(nbytes: int, margin: int = 256 << 20) -> int:
    """Cap this worker's address space a little above what it uses now, then
    allocate ``nbytes`` (tests/pool_tasks.py has the same)."""
    import resource

    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + margin, hard))
    return len(bytearray(nbytes))


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


def _settle(outcome: Any, task: tuple[str, int], counts: dict[str, int]) -> None:
    kind, x = task
    try:
        value = outcome()
    except shoal.WorkerDiedError as exc:
        own_death = (kind == "segfault" and exc.signal == signal.SIGSEGV) or (
            kind == "exit" and exc.exitcode == x and exc.signal is None
        )
        if exc.signal == signal.SIGKILL:
            counts["sigkilled"] += 1  # by the killer here (its own or the task's worker)
            if kind == "tiny":
                counts["died"] += 1
        elif not own_death and kind != "rlimit":
            counts["wrong"] += 1
    except MemoryError:
        if kind == "rlimit":
            counts["memory_errors"] += 1
        else:
            counts["wrong"] += 1
    except (TimeoutError, mp.TimeoutError):
        counts["hangs"] += 1
    except Exception:
        counts["wrong"] += 1
    else:
        counts["ok" if kind == "tiny" and value == x * x else "wrong"] += 1


def _storm(
    submit: Any, outcome: Any, seconds: float, rng: random.Random, counts: dict[str, int]
) -> None:
    """Submit batches of 50 tasks for ``seconds`` while a worker dies every ~100 ms
    (killed from here, or by a task of its own), then settle every task
    (``outcome(handle)`` returns its result or raises)."""
    pending: list[tuple[tuple[str, int], Any]] = []
    deadline = time.monotonic() + seconds
    next_death = time.monotonic() + 0.1
    while time.monotonic() < deadline:
        first = counts["tasks"]
        pending += [(("tiny", x), submit(square, x)) for x in range(first, first + 50)]
        counts["tasks"] += 50
        if time.monotonic() >= next_death:
            death = rng.choice(_DEATHS)
            if death == "kill":
                counts["kills"] += _kill_one_worker(rng)
            else:
                counts["tasks"] += 1
                counts[f"{death}s"] += 1
                if death == "segfault":
                    pending.append((("segfault", 0), submit(segfault, 0)))
                elif death == "exit":
                    code = rng.choice((0, 1, 3, 77))
                    pending.append((("exit", code), submit(exit_hard, code)))
                else:
                    pending.append((("rlimit", 0), submit(allocate_over_rlimit_as, 4 << 30)))
            next_death = time.monotonic() + rng.uniform(0.05, 0.15)
        time.sleep(0.005)
    for task, handle in pending:
        _settle(lambda h=handle: outcome(h), task, counts)


def run(seconds: float) -> dict[str, Any]:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    counts = dict.fromkeys(
        ("tasks", "ok", "died", "kills", "segfaults", "exits", "rlimits", "memory_errors",
         "wrong", "sigkilled", "hangs"), 0)  # fmt: skip
    with shoal.Pool(2) as pool:
        _storm(
            lambda f, x: pool.apply_async(f, (x,)), lambda r: r.get(60), seconds / 2, rng, counts
        )
    with shoal.Executor(2) as executor:
        _storm(lambda f, x: executor.submit(f, x), lambda f: f.result(60), seconds / 2, rng, counts)
    sigkilled = counts.pop("sigkilled")
    hangs = counts.pop("hangs")
    return {"seconds": seconds, **counts, "misblamed": max(0, sigkilled - counts["kills"]),
            "hangs": hangs}  # fmt: skip
