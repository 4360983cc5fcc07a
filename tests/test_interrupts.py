"""Ctrl-C (a real SIGINT) wakes every blocking call of the queues and the pools (#10).

Each case runs in a child process that blocks in one call and reports when its
``KeyboardInterrupt`` arrived; the parent sends SIGINT once the child says it is about
to block (and, where shoal counts waiters, once the child is counted).  The interrupt
must arrive within a second, under every start method, and leave nothing behind (the
pool's ``with`` block terminates its workers on the way out).  The primitives' waits
are covered in tests/test_sync_process.py.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

import pytest
from conftest import join_all, wait_until

import shoal

TIMEOUT = 20.0


def sleep_for(seconds: float, started: str | None = None) -> float:
    if started is not None:  # (a file the parent looks for: the task runs)
        open(started, "w").close()
    time.sleep(seconds)
    return seconds


def _queue_call(kind: str, obj: Any) -> Any:
    if kind == "get":
        return obj.get(timeout=TIMEOUT)
    if kind == "put":
        return obj.put("more", timeout=TIMEOUT)  # full: maxsize 1
    if kind == "get_many":
        return obj.get_many(10, timeout=TIMEOUT)
    if kind == "join":
        return obj.join(timeout=TIMEOUT)
    raise AssertionError(kind)


def _pool_call(kind: str, started: str) -> Any:
    sleep_for = functools.partial(globals()["sleep_for"], started=started)
    if kind.startswith("executor"):
        with shoal.Executor(1) as executor:
            if kind == "executor.result":
                return executor.submit(sleep_for, TIMEOUT).result(TIMEOUT)
            return list(executor.map(sleep_for, [TIMEOUT]))
    with shoal.Pool(1) as pool:
        if kind == "map":
            return pool.map(sleep_for, [TIMEOUT])
        if kind == "imap":
            return next(pool.imap(sleep_for, [TIMEOUT]))
        if kind == "apply":
            return pool.apply(sleep_for, (TIMEOUT,))
        if kind == "join":
            pool.apply_async(sleep_for, (TIMEOUT,))
            pool.close()
            return pool.join()
        raise AssertionError(kind)


def block_until_interrupted(kind: str, obj: Any, conn: Connection, started: str) -> None:
    # what an interactive program has, whatever the test runner's children inherit
    signal.signal(signal.SIGINT, signal.default_int_handler)
    conn.send(("blocking", os.getpid()))
    try:
        result = _pool_call(kind, started) if obj is None else _queue_call(kind, obj)
    except KeyboardInterrupt:
        conn.send(("interrupted", time.monotonic()))
        return
    except BaseException as exc:
        conn.send(("raised", repr(exc)))
        return
    conn.send(("returned", repr(result)))


def _interrupt(ctx: Any, kind: str, obj: Any, blocked: Any, started: str = "") -> None:
    receiver, sender = ctx.Pipe(duplex=False)
    p = ctx.Process(target=block_until_interrupted, args=(kind, obj, sender, started))
    p.start()
    assert receiver.poll(TIMEOUT) and receiver.recv()[0] == "blocking"
    assert wait_until(blocked, timeout=TIMEOUT), "the child never blocked"
    sent = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    assert receiver.poll(10), "SIGINT did not interrupt the blocked call"
    what, when = receiver.recv()
    join_all(p)
    assert what == "interrupted", (what, when)
    assert when - sent < 1.0, f"KeyboardInterrupt came {when - sent:.2f} s after SIGINT"
    assert p.exitcode == 0


@pytest.mark.parametrize("kind", ["get", "put", "get_many", "join"])
def test_sigint_interrupts_a_blocked_queue_call(ctx: mp.context.BaseContext, kind: str) -> None:
    q = shoal.JoinableQueue(maxsize=1)
    if kind in ("put", "join"):
        q.put("item")  # full, and one task unfinished
    stats = q.statistics

    def blocked() -> bool:
        if kind == "put":
            return stats().producers_waiting == 1
        if kind == "join":
            time.sleep(0.3)  # (join's waiters are not counted)
            return True
        return stats().consumers_waiting == 1

    _interrupt(ctx, kind, q, blocked)
    assert wait_until(lambda: stats().consumers_waiting == stats().producers_waiting == 0)
    q.close()


@pytest.mark.parametrize(
    "kind", ["map", "imap", "apply", "join", "executor.result", "executor.map"]
)
def test_sigint_interrupts_a_blocked_pool_call(
    ctx: mp.context.BaseContext, kind: str, tmp_path: Any
) -> None:
    started = str(tmp_path / "started")

    def blocked() -> bool:
        # the pool's one task is running, and the caller has had a moment to reach
        # its wait (it called before the worker took the task: map, apply, result;
        # join right after close)
        if not os.path.exists(started):
            return False
        time.sleep(0.2)
        return True

    _interrupt(ctx, kind, None, blocked, started)
