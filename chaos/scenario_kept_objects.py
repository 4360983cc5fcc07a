"""Objects that only a queue or a dict still names, kept past every expiry.

Round after round a producer process creates a ``Lock``, a ``SharedDict``, a ``Queue``
and a shared numpy array, puts them on a ``Queue`` and stores them in a ``SharedDict``,
and exits.  The expiry of references in flight (``IN_FLIGHT_TIMEOUT_S``, 10 minutes)
is set to nothing in every process, sweeps run (in-process ``reap()``: a fresh
``doctor`` process would have the default patience), and then a consumer takes every
object from the queue and reads it from the dict.  Figures: rounds, objects kept,
``lost`` (gone or not working), and ``leftovers`` once the containers are closed.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np

import shoal
from shoal import _memory

from ._common import leftovers_after_reap, shoal_segments

HOLDS = ("lost", "leftovers")
KINDS = ("lock", "dict", "queue", "array")


def _make(kind: str) -> Any:
    if kind == "lock":
        return shoal.Lock()
    if kind == "dict":
        d = shoal.SharedDict()
        d["answer"] = 42
        return d
    if kind == "queue":
        q = shoal.Queue()
        q.put_many(["inside", "inside"])  # one for the handle from the queue, one for the dict's
        return q
    return shoal.share(np.arange(1000))


def _works(kind: str, obj: Any) -> bool:
    try:
        if kind == "lock":
            ok = obj.acquire(timeout=1)
            obj.release()
            return ok
        if kind == "dict":
            return obj["answer"] == 42
        if kind == "queue":
            return obj.get(timeout=1) == "inside"
        return int(obj.sum()) == 499500
    except Exception:
        return False


def _produce(q: Any, d: Any, round_: int) -> None:
    for kind in KINDS:
        obj = _make(kind)
        q.put((kind, obj))
        d[(round_, kind)] = obj
        if kind != "array":
            obj.close()


def run(seconds: float) -> dict[str, Any]:
    _memory.IN_FLIGHT_TIMEOUT_S = 0.0  # inherited by every forked producer
    ctx = mp.get_context("fork")
    rounds = kept = lost = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or rounds == 0:
        q, d = shoal.Queue(), shoal.SharedDict()
        p = ctx.Process(target=_produce, args=(q, d, rounds))
        p.start()
        p.join(30)
        time.sleep(0.01)
        _memory.reap()
        for _ in KINDS:
            kept += 1
            try:
                kind, obj = q.get(timeout=1)
            except Exception:
                lost += 1
                continue
            lost += not _works(kind, obj)
            try:
                lost += not _works(kind, d[(rounds, kind)])
            except Exception:
                lost += 1
            del obj  # (the last round's must not count as a leftover)
        q.close()
        d.close()
        rounds += 1
    return {
        "seconds": seconds,
        "rounds": rounds,
        "kept": kept,
        "lost": lost,
        "leftovers": leftovers_after_reap() if shoal_segments() else 0,
    }
