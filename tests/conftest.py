"""Shared fixtures: start methods, hang guards and the leak check every test gets.

Three hang guards bound every test: explicit ``timeout=`` on blocking calls in the
tests themselves, pytest-timeout per test (pyproject.toml), and faulthandler dumping
every thread's stack shortly before that.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import time

import pytest

from shoal import lowlevel

START_METHODS = [m for m in ("fork", "spawn", "forkserver") if m in mp.get_all_start_methods()]


@pytest.fixture(params=START_METHODS)
def ctx(request: pytest.FixtureRequest) -> mp.context.BaseContext:
    """A multiprocessing context for each start method; the test runs once per method."""
    return mp.get_context(request.param)


def shoal_segments() -> set[str]:
    try:
        return {"/" + n for n in os.listdir("/dev/shm") if n.startswith("shoal-")}
    except FileNotFoundError:
        return set()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` runs out; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)


@pytest.fixture(autouse=True)
def no_leaks():
    """After each test: no child process left, no new shoal segment that this process
    does not still hold (children that exit must have released theirs)."""
    before = shoal_segments()
    yield
    children = mp.active_children()
    for child in children:
        child.kill()
        child.join(5)
    assert not children, f"test left child processes running: {children}"
    gc.collect()

    def leaked() -> set[str]:
        return shoal_segments() - before - lowlevel.attached_names()

    wait_until(lambda: not leaked(), timeout=5.0)
    assert not leaked(), f"test leaked shared-memory segments: {sorted(leaked())}"
