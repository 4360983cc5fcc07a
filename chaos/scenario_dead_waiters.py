"""Waiters SIGKILLed while blocked, on every primitive that has waiters.

Round after round, for each kind below, two child processes block on one object: one
is doomed, the other lives (which of them blocked first is random).  The doomed one is
SIGKILLed while blocked, then this process delivers one wake-up (``release()``,
``set()``, ``put``, ``get``, ``task_done()``, ``notify(1)``).  It must reach the live
waiter: it returns what a woken waiter returns, promptly (within 1 s).  And the dead
waiter must stop being counted wherever the object reports its waiters
(``statistics()``, ``repr``, ``Condition``'s count, ``Barrier.n_waiting``) as soon as
it is reaped, and the count be 0 once the live one has left.

Kinds: ``semaphore`` and ``bounded`` (``acquire``), ``event`` (``wait``), ``get`` and
``get_many`` (an empty ``Queue``), ``put`` (a full ``Queue(1)``), ``join``
(``JoinableQueue.join`` with one task left), ``condition`` (``wait``), and ``barrier``
(a ``Barrier(3)``: the death breaks it, so the live party's wake-up is
``BarrierPartyDiedError``; then ``reset()`` and three live parties must pass).

Figures per kind: rounds, ``failed`` (the live waiter not woken, woken late or wrongly,
or a dead waiter still counted), ``hangs`` (a call that did not return within its 10 s
timeout) and the median latency in ms from the wake-up to the live waiter's answer;
``still_counted`` (rounds in which a dead waiter was counted: part of failed).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import re
import statistics
import threading
import time
from typing import Any

import shoal

from ._common import sigkill

HOLDS = ("failed", "hangs")
_FORK = mp.get_context("fork")
_TIMEOUT = 10.0
_PROMPT_S = 1.0
_BLOCKED_S = 0.02  # past the count: inside the futex wait, not about to enter it


def _make(kind: str) -> Any:
    if kind == "semaphore":
        return shoal.Semaphore(0)
    if kind == "bounded":
        sem = shoal.BoundedSemaphore(1)
        sem.acquire()  # at 0, and a release back to 1 is within its bound
        return sem
    if kind == "event":
        return shoal.Event()
    if kind in ("get", "get_many"):
        return shoal.Queue()
    if kind == "put":
        q = shoal.Queue(1)
        q.put("full")
        return q
    if kind == "join":
        q = shoal.JoinableQueue()
        q.put("task")
        q.get()  # taken, not yet done: join() blocks
        return q
    if kind == "condition":
        return shoal.Condition()
    return shoal.Barrier(3)


def _block(kind: str, obj: Any) -> Any:
    """What a waiter does: the blocking call, and what it returned."""
    if kind in ("semaphore", "bounded"):
        return obj.acquire(timeout=_TIMEOUT)
    if kind == "event":
        return obj.wait(_TIMEOUT)
    if kind == "get":
        return obj.get(timeout=_TIMEOUT)
    if kind == "get_many":
        return obj.get_many(10, timeout=_TIMEOUT)
    if kind == "put":
        obj.put("second", timeout=_TIMEOUT)
        return True
    if kind == "join":
        return obj.join(_TIMEOUT)
    if kind == "condition":
        with obj:
            return obj.wait(_TIMEOUT)
    try:
        obj.wait(_TIMEOUT)
        return "passed"
    except shoal.BarrierPartyDiedError:
        return "party died"


_WOKEN = {"get": "item", "get_many": ["item"], "barrier": "party died"}


def _wake(kind: str, obj: Any) -> None:
    """One wake-up, meant for the one live waiter."""
    if kind in ("semaphore", "bounded"):
        obj.release()
    elif kind == "event":
        obj.set()
    elif kind in ("get", "get_many"):
        obj.put("item")
    elif kind == "put":
        obj.get(timeout=_TIMEOUT)
    elif kind == "join":
        obj.task_done()
    elif kind == "condition":
        with obj:
            obj.notify(1)
    # barrier: the death itself is the wake-up


def _waiting(kind: str, obj: Any) -> int:
    """How many waiters the object reports (the largest of what it says anywhere)."""
    if kind in ("semaphore", "bounded", "event"):
        counted = obj.statistics().waiters
    elif kind in ("get", "get_many"):
        counted = obj.statistics().consumers_waiting
    elif kind == "put":
        counted = obj.statistics().producers_waiting
    elif kind == "join":
        counted = obj._joiners
    elif kind == "condition":
        counted = obj._waiting
    else:
        counted = obj.n_waiting
    shown = re.search(r"(\d+) waiting|waiters=(\d+)", repr(obj))
    return max(counted, int(next(g for g in shown.groups() if g)) if shown else 0)


def _waiter(kind: str, obj: Any, conn: Any) -> None:
    try:
        result = _block(kind, obj)
    except BaseException as exc:
        result = f"{type(exc).__name__}: {exc}"
    conn.send((result, time.monotonic()))


def _wait_for_count(kind: str, obj: Any, n: int) -> bool:
    deadline = time.monotonic() + _TIMEOUT
    while _waiting(kind, obj) != n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    time.sleep(_BLOCKED_S)
    return True


def _barrier_passes(barrier: Any) -> bool:
    """After a death: reset, and three live parties (threads) must pass."""
    barrier.reset()
    indices: list[int] = []

    def party() -> None:
        try:
            indices.append(barrier.wait(_TIMEOUT))
        except Exception:
            pass

    threads = [threading.Thread(target=party) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(_TIMEOUT + 5)
    return sorted(indices) == [0, 1, 2]


def _round(kind: str, rng: random.Random) -> tuple[str, float | None]:
    """One round: "ok", "failed", "counted" (a dead waiter still counted) or "hang",
    and the wake-up latency (s)."""
    obj = _make(kind)
    receiver, sender = _FORK.Pipe(duplex=False)
    doomed_first = rng.random() < 0.5
    procs: dict[str, Any] = {}
    try:
        for i, role in enumerate(("doomed", "live") if doomed_first else ("live", "doomed")):
            procs[role] = _FORK.Process(target=_waiter, args=(kind, obj, sender))
            procs[role].start()
            if not _wait_for_count(kind, obj, i + 1):
                return "hang", None
        sigkill(procs["doomed"])
        # (a barrier breaks once it sees the death: its count is checked at the end)
        counted = kind != "barrier" and _waiting(kind, obj) != 1
        woken_at = time.monotonic()
        _wake(kind, obj)
        if not receiver.poll(_TIMEOUT + 5):
            return "hang", None
        result, answered_at = receiver.recv()
        latency = answered_at - woken_at
        procs["live"].join(_TIMEOUT)
        if result != _WOKEN.get(kind, True) or latency > _PROMPT_S:
            return "failed", latency
        left = time.monotonic() + 1.0  # the live waiter is gone: nobody is left counted
        while _waiting(kind, obj) and time.monotonic() < left:
            time.sleep(0.001)
        if _waiting(kind, obj):
            counted = True
        if kind == "barrier" and not _barrier_passes(obj):
            return "failed", latency
        return ("counted" if counted else "ok"), latency
    finally:
        for p in procs.values():
            sigkill(p)
        receiver.close()
        sender.close()
        obj.close()


KINDS = ("semaphore", "bounded", "event", "get", "get_many", "put", "join", "condition",
         "barrier")  # fmt: skip


def run(seconds: float) -> dict[str, Any]:
    rng = random.Random()
    figures: dict[str, Any] = {"seconds": seconds}
    failed = hangs = still_counted = 0
    share = seconds / len(KINDS)
    for kind in KINDS:
        latencies: list[float] = []
        rounds = bad = 0
        deadline = time.monotonic() + share
        while time.monotonic() < deadline or rounds < 2:
            outcome, latency = _round(kind, rng)
            rounds += 1
            hangs += outcome == "hang"
            still_counted += outcome == "counted"
            bad += outcome != "ok"
            if latency is not None:
                latencies.append(latency * 1000)
        failed += bad
        median = f"{statistics.median(latencies):.1f}ms" if latencies else "-"
        figures[kind] = f"{rounds} rounds/{bad} failed/median {median}"
    figures["failed"] = failed
    figures["still_counted"] = still_counted
    figures["hangs"] = hangs
    return figures
