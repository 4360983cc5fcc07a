"""The workers' claim protocol, with a death at each of its points (#10).

A worker stores the ordinal of the task it takes in its slot before the record leaves
the task ring, and clears the slot after the result is sent (src/shoal/_pool/_protocol.py,
"Knowing which task a dead worker had").  Whatever the moment a worker dies, every
task has exactly one outcome: its result, or ``WorkerDiedError`` when its worker died
before the result got out; none is lost, none runs twice, none fails that did not
die with its worker.

The private hook ``SHOAL_TEST_POOL_HOOK`` ("POINT:TOKEN", read as a worker starts)
makes the worker that removes the file TOKEN SIGKILL itself at exactly one point.  It
travels in the environment, which forkserver workers take from their server (started
once in a test run, without it), so the hook tests run under fork and spawn; the
protocol is the same under every start method.  The randomized test kills workers at
whatever moment, from outside.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
from pathlib import Path
from typing import Any

import pool_tasks as t
import pytest
from conftest import wait_until

import shoal
from shoal import Executor, Pool, WorkerDiedError
from shoal.testing import kill_worker, worker_pids

HOOK = "SHOAL_TEST_POOL_HOOK"
TIMEOUT = 20.0
N = 40
METHODS = ["fork", "spawn"]
APIS = ["pool", "executor"]


def start(api: str, method: str, runs: Any, processes: int) -> Any:
    """A Pool or Executor whose workers count each task's runs in ``runs``."""
    context = mp.get_context(method)
    setup = {"initializer": t.set_state, "initargs": ("runs", runs)}
    if api == "pool":
        return Pool(processes, context=context, **setup)
    return Executor(processes, mp_context=context, **setup)


def outcomes(api: str, pool: Any, n: int) -> list[Any]:
    """Run count_run(i) for i < n; each task's value or exception ("lost": none)."""
    if api == "pool":
        results = [pool.apply_async(t.count_run, (i,)) for i in range(n)]
    else:
        futures = [pool.submit(t.count_run, i) for i in range(n)]
    deadline = time.monotonic() + TIMEOUT
    got: list[Any] = []
    for i in range(n):
        left = max(0.0, deadline - time.monotonic())
        try:
            got.append(results[i].get(left) if api == "pool" else futures[i].result(left))
        except (mp.TimeoutError, TimeoutError):
            got.append("lost")
        except BaseException as exc:
            got.append(exc)
    return got


def arm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, point: str) -> Path:
    token = tmp_path / "die"
    monkeypatch.setenv(HOOK, f"{point}:{token}")
    return token


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("method", METHODS)
def test_a_death_with_the_claim_written_and_the_record_still_in_the_ring_fails_nothing(
    api: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the claim is written first: a worker that died before the record left the ring
    # had no task (the record is still there for the next worker)
    token = arm(monkeypatch, tmp_path, "claimed")
    runs = shoal.RawArray("q", N)
    with start(api, method, runs, 1) as pool:  # a lone consumer: the hook is exact
        token.touch()
        got = outcomes(api, pool, N)
        assert not token.exists()  # the worker died there
        assert got == list(range(N))
        assert list(runs) == [1] * N
        assert wait_until(lambda: pool._engine._started == 2, TIMEOUT)
    runs.close()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("method", METHODS)
def test_a_death_before_the_result_is_sent_fails_that_task_alone(
    api: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the task ran, its result never left the worker: WorkerDiedError, for it only
    token = arm(monkeypatch, tmp_path, "sending")
    runs = shoal.RawArray("q", N)
    with start(api, method, runs, 2) as pool:
        token.touch()
        got = outcomes(api, pool, N)
        assert not token.exists()
        died = [i for i, value in enumerate(got) if isinstance(value, WorkerDiedError)]
        assert len(died) == 1, got
        assert [value for i, value in enumerate(got) if i not in died] == [
            i for i in range(N) if i not in died
        ]
        assert list(runs) == [1] * N
    runs.close()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("method", METHODS)
def test_a_death_after_the_result_is_sent_before_the_slot_is_cleared_loses_nothing(
    api: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the slot still names the task, but its result is on the ring ahead of the
    # "worker died" record: the result counts, the death fails nothing
    token = arm(monkeypatch, tmp_path, "sent")
    runs = shoal.RawArray("q", N)
    with start(api, method, runs, 2) as pool:
        token.touch()
        got = outcomes(api, pool, N)
        assert not token.exists()
        assert got == list(range(N))
        assert list(runs) == [1] * N
        assert wait_until(lambda: pool._engine._started == 3, TIMEOUT)
    runs.close()


@pytest.mark.parametrize("api", APIS)
def test_workers_killed_at_random_moments_leave_each_task_exactly_one_outcome(api: str) -> None:
    # rounds: hold every worker, queue a backlog of tiny tasks, let go and SIGKILL
    # workers at random moments while they drain it (without a backlog the workers
    # wait for the parent most of the time, and a kill rarely lands inside a task)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    backlog, processes, most = 5000, 3, 40 * 5000
    runs = shoal.RawArray("q", most)
    seen = [0] * most  # outcomes delivered, by task
    values: list[Any] = [None] * most
    delivered = threading.Condition()
    count = [0]

    def outcome(i: int, value: Any) -> None:
        with delivered:
            seen[i] += 1
            values[i] = value
            count[0] += 1
            delivered.notify_all()

    def submit(pool: Any, i: int) -> None:
        if api == "pool":
            pool.apply_async(
                t.count_run,
                (i,),
                callback=lambda v: outcome(i, v),
                error_callback=lambda e: outcome(i, e),
            )
        else:
            future = pool.submit(t.count_run, i)
            future.add_done_callback(lambda f: outcome(i, f.exception() or f.result()))

    def hold(pool: Any, started: Any, gate: Any) -> None:
        if api == "pool":
            pool.apply_async(t.announce_then_wait, (started, gate), error_callback=print)
        else:
            pool.submit(t.announce_then_wait, started, gate)

    kills: list[int] = []
    started, gate = shoal.Queue(), shoal.Event()
    with start(api, "fork", runs, processes) as pool:

        def kill_one() -> None:
            # a worker in its loop (started: its pid in its slot), not one still
            # starting, and not one killed already (listed until the monitor reaps it)
            pids = [pid for pid in worker_pids(pool) if pid not in kills]
            # one at least is left running: kills faster than replacements start
            # would leave no worker to finish anything
            if len(pids) >= 2:
                kills.append(kill_worker(pool, rng.choice(pids)))

        def died() -> int:
            with delivered:
                return sum(isinstance(v, WorkerDiedError) for v in values[:limit])

        # rounds until 80 kills or 3 s, and on until one kill at least has landed inside
        # a task (a slow parent, under a sanitizer or a loaded machine, leaves the
        # workers waiting for it most of the time, where a kill fails no task)
        limit, start_time = 0, time.monotonic()
        while limit < most:
            elapsed = time.monotonic() - start_time
            if (len(kills) >= 80 or elapsed > 3.0) and (died() or elapsed > 60.0):
                break
            for _ in range(processes):
                hold(pool, started, gate)
            for _ in range(processes):
                started.get(timeout=TIMEOUT)
            for i in range(limit, limit + backlog):
                submit(pool, i)
            limit += backlog
            gate.set()
            done, end = limit, time.monotonic() + TIMEOUT
            with delivered:
                while count[0] < done and time.monotonic() < end:
                    delivered.wait(rng.uniform(0.0005, 0.003))
                    kill_one()
            gate.clear()
        with delivered:
            delivered.wait_for(lambda: count[0] >= limit, TIMEOUT)
        assert len(kills) >= 10, f"seed {seed}: only {len(kills)} kills"
        lost = [i for i in range(limit) if seen[i] == 0]
        twice = [i for i in range(limit) if seen[i] > 1]
        assert not lost and not twice, f"seed {seed}: lost {lost[:10]}, twice {twice[:10]}"
        ran = list(runs)
        for i in range(limit):
            value = values[i]
            if isinstance(value, WorkerDiedError):
                assert ran[i] <= 1, f"seed {seed}: task {i} ran {ran[i]} times"
            else:
                assert value == i and ran[i] == 1, f"seed {seed}: task {i}: {value!r}, {ran[i]}"
        assert died(), f"seed {seed}: {len(kills)} kills, none while a task ran"
        print(f"seed {seed}: {limit} tasks, {len(kills)} kills, {died()} died with them")
    runs.close()
    started.close()
    gate.close()
