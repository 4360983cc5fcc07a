"""What ``import shoal`` gives a type checker: every public name, none as ``object``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import shoal
import shoal.context
from shoal import SharedArray, share


def arrays() -> None:
    a = shoal.SharedArray((3, 4), dtype=np.float64)
    assert_type(a, shoal.SharedArray)
    b = share(np.zeros(3))
    assert_type(b, SharedArray)
    view: npt.NDArray[np.float64] = a
    del view
    maker: Callable[..., SharedArray] = shoal.share
    del maker


def primitives() -> None:
    lock = shoal.Lock()
    assert_type(lock.acquire(timeout=1.0), bool)
    lock.release()
    with shoal.RLock(), shoal.Semaphore(2):
        pass
    event = shoal.Event()
    assert_type(event.wait(0.1), bool)
    assert_type(shoal.cpu_count(), int)
    assert_type(shoal.get_context("spawn"), shoal.context.Context)
    p = shoal.Process(target=print, args=("hi",))
    p.start()
    p.join(5)
    try:
        raise shoal.WorkerDiedError("gone")
    except shoal.BrokenPoolError as exc:
        assert_type(exc, shoal.BrokenPoolError)
