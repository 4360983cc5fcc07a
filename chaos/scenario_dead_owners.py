"""Lock owners, condition waiters and barrier parties SIGKILLed, round after round.

- ``lock`` / ``rlock``: a child takes the lock and is SIGKILLed while this process is
  blocked in ``acquire``; the lock must come here with ``owner_died``.  The latency is
  from the kill to ``acquire`` returning (documented: about 50 ms).
- ``condition``: two children wait on a ``Condition``, one is SIGKILLed inside
  ``wait()``, then ``notify(1)``: the live one must wake (a dead waiter must not absorb
  the notification).
- ``barrier``: a child waiting at a ``Barrier(3)`` is SIGKILLed; this process's
  ``wait`` must break with ``BarrierPartyDiedError`` (documented: about 100 ms).

Figures per kind: rounds, ``failed`` (not recovered, or wrongly), ``hangs`` (a call that
did not return within its 10 s timeout) and the median latency in ms.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import threading
import time
import warnings
from typing import Any

import shoal

from ._common import sigkill

HOLDS = ("failed", "hangs")
_FORK = mp.get_context("fork")


def _hold(lock: Any, held: Any) -> None:
    lock.acquire()
    held.set()
    time.sleep(60)


def _wait_on(cond: Any, waiting: Any, woke: Any) -> None:
    with cond:
        waiting.release()
        if cond.wait(10):
            woke.release()


def _wait_at(barrier: Any) -> None:
    try:
        barrier.wait(30)
    except Exception:
        pass


def _lock_round(kind: str) -> tuple[bool, float | None]:
    lock = shoal.RLock() if kind == "rlock" else shoal.Lock()
    held = shoal.Event()
    p = _FORK.Process(target=_hold, args=(lock, held))
    p.start()
    if not held.wait(10):
        sigkill(p)
        return False, None
    got: list[float] = []
    died: list[bool] = []

    def acquire() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", shoal.OwnerDiedWarning)
            if lock.acquire(timeout=10):
                got.append(time.monotonic())
                died.append(lock.owner_died)
                lock.release()  # (an RLock: by the thread that holds it)

    t = threading.Thread(target=acquire)
    t.start()
    time.sleep(0.02)  # blocked in acquire, not polling for the first time
    killed_at = time.monotonic()
    os.kill(p.pid, signal.SIGKILL)
    t.join(15)
    p.join(10)
    ok = bool(got) and died == [True]
    return ok, (got[0] - killed_at) * 1000 if got else None


def _condition_round() -> tuple[bool, float | None]:
    cond, waiting, woke = shoal.Condition(), shoal.Semaphore(0), shoal.Semaphore(0)
    doomed = _FORK.Process(target=_wait_on, args=(cond, waiting, woke))
    doomed.start()
    assert waiting.acquire(timeout=10)
    live = _FORK.Process(target=_wait_on, args=(cond, waiting, woke))
    live.start()
    assert waiting.acquire(timeout=10)
    with cond:  # both are inside wait() (they let go of the lock there)
        pass
    sigkill(doomed)
    started = time.monotonic()
    with cond:
        cond.notify(1)
    ok = woke.acquire(timeout=5)
    latency = (time.monotonic() - started) * 1000 if ok else None
    live.join(10)
    if live.exitcode is None:
        sigkill(live)
    return ok, latency


def _barrier_round() -> tuple[bool, float | None]:
    barrier = shoal.Barrier(3)  # the third never comes: only the death ends the wait
    p = _FORK.Process(target=_wait_at, args=(barrier,))
    p.start()
    deadline = time.monotonic() + 10
    while barrier.n_waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    killed_at = time.monotonic()
    os.kill(p.pid, signal.SIGKILL)
    try:
        barrier.wait(10)
        ok = False
    except shoal.BarrierPartyDiedError:
        ok = True
    except Exception:
        ok = False
    p.join(10)
    return ok, (time.monotonic() - killed_at) * 1000


ROUNDS = {"lock": _lock_round, "rlock": _lock_round, "condition": _condition_round,
          "barrier": _barrier_round}  # fmt: skip


def run(seconds: float) -> dict[str, Any]:
    figures: dict[str, Any] = {"seconds": seconds}
    failed = hangs = 0
    share = seconds / len(ROUNDS)
    for kind, round_ in ROUNDS.items():
        latencies: list[float] = []
        rounds = bad = 0
        deadline = time.monotonic() + share
        while time.monotonic() < deadline or rounds < 3:
            started = time.monotonic()
            ok, latency = round_(kind) if round_ is _lock_round else round_()
            rounds += 1
            if latency is None and time.monotonic() - started >= 10:
                hangs += 1
            if not ok:
                bad += 1
            elif latency is not None:
                latencies.append(latency)
        failed += bad
        median = f"{statistics.median(latencies):.0f}ms" if latencies else "-"
        figures[kind] = f"{rounds} rounds/{bad} failed/median {median}"
    figures["failed"] = failed
    figures["hangs"] = hangs
    return figures
