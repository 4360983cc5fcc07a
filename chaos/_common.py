"""What the chaos scenarios share: killing what they started, counting segments."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any


def shoal_segments() -> list[str]:
    """The shoal segments in this (private) ``/dev/shm``, and the liveness files of
    dead processes (a live process's, ``shoal-live-*``, is no leftover)."""
    from shoal import _memory

    live = {n for n, state in _memory.liveness_files().items() if state in ("own", "live")}
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("shoal-") and n not in live)


def sigkill(process: Any) -> None:
    """SIGKILL one process this scenario started (by its pid), and reap it."""
    if process.exitcode is None:
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.join(10)


def leftovers_after_reap() -> int:
    """Segments left once everything that used them is gone and a sweep ran."""
    from shoal import _memory

    _memory.reap()
    # (what this process itself still holds is not left over: its ledger, for one)
    return len(set(shoal_segments()) - {n[1:] for n in _memory.attached_names()})


class Killer:
    """SIGKILLs a random victim every ``interval`` seconds (jittered) and restarts it."""

    def __init__(self, seed: int, interval: float = 0.1) -> None:
        self.rng = random.Random(seed)
        self.interval = interval
        self.kills: dict[str, int] = {}

    def run(
        self,
        seconds: float,
        victims: dict[str, list[Any]],
        restart: Callable[[str, int], Any],
    ) -> None:
        """For ``seconds``: pick a role, kill one of its processes, start a new one
        in its place (``restart(role, index)``)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(self.interval * self.rng.uniform(0.5, 1.5))
            role = self.rng.choice(sorted(victims))
            index = self.rng.randrange(len(victims[role]))
            sigkill(victims[role][index])
            self.kills[role] = self.kills.get(role, 0) + 1
            victims[role][index] = restart(role, index)
