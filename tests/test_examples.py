"""The examples and the command line run to the end and say what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_lock_in_pool_example_keeps_every_line():
    assert "20 tasks, 20 lines, all whole: True" in run("examples/lock_in_pool.py")


def test_dead_owner_example_reports_the_dead_owner():
    out = run("examples/dead_owner.py")
    assert "owner_died=True" in out
    assert "last_dead_owner_pid=" in out and "last_dead_owner_pid=None" not in out


def test_pool_survives_worker_death_example_finishes_the_rest():
    out = run("examples/pool_survives_worker_death.py")
    assert "WorkerDiedError: worker" in out and "signal=<Signals.SIGKILL: 9>" in out
    assert "19 items done, 1 failed: [13]" in out and "-> [1, 2, 3]" in out


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_demo_runs_to_the_end(method):
    out = run("-m", "shoal", "demo", "--start-method", method)
    assert "RuntimeError: Lock objects should only be shared between processes" in out
    assert "(exact)" in out
    assert "lock.owner_died = True" in out
    assert "BarrierPartyDiedError" in out and "barrier.broken = True" in out
    assert "RuntimeError: Queue objects should only be shared between processes" in out
    for value in "ABC":
        assert f"Put {value} to queue" in out and f"Get {value} from queue" in out
    assert "all data written and read" in out
    assert "map() would wait forever" in out and "11 results (correct)" in out
    assert "WorkerDiedError: worker" in out and "killed by SIGKILL" in out
    assert "distinct; totals exact" in out
    assert "the parent sees every row the workers wrote: equal" in out
    assert "pairs/s" in out
    assert "what the SIGKILLed processes left (" in out and "ledgers) was reaped" in out


def test_doctor_reports_the_machine():
    out = run("-m", "shoal", "doctor", "--reap")
    assert "start methods:" in out and "/dev/shm:" in out and "reaped:" in out


def test_asyncio_service_example_streams_cancels_and_goes_on():
    out = run("examples/asyncio_service.py")
    assert "5 partial counts streamed, then: total below 100000: 9592" in out
    assert "then: over its budget of 0.5 s: cancelled" in out
    assert "the pool goes on: total below 30000: 3245" in out
