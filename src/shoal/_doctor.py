"""``python -m shoal doctor``: what this machine offers shoal, and what is left over."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

from . import _core
from ._memory import LIVENESS_PREFIX, NAME_PREFIX, liveness_files, reap, reap_liveness
from ._process import process_cpu_count


def _shm_report() -> str:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return "no /dev/shm (segments still work through shm_open; crash reaping needs a listing)"
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    note = "  <- small: containers often need --shm-size" if total < 256 * 2**20 else ""
    return f"{free / 2**20:,.0f} MiB free of {total / 2**20:,.0f} MiB{note}"


def _count_segments() -> tuple[int, int]:
    """Files named like shoal segments in /dev/shm: (this user's, other users')."""
    try:
        names = [
            n
            for n in os.listdir("/dev/shm")
            if n.startswith(NAME_PREFIX) and not n.startswith(LIVENESS_PREFIX)
        ]
    except OSError:
        return 0, 0
    uid, ours, others = os.geteuid(), 0, 0
    for name in names:
        try:
            st = os.lstat("/dev/shm/" + name)
        except OSError:
            continue  # gone meanwhile
        if st.st_uid == uid:
            ours += 1
        else:
            others += 1
    return ours, others


def doctor(reap_orphans: bool = False) -> int:
    """Print what shoal finds on this machine; optionally reap orphaned segments."""
    print(f"python:          {sys.version.split()[0]} on {sys.platform}")
    print(
        f"start methods:   {', '.join(mp.get_all_start_methods())} "
        f"(default {mp.get_start_method()})"
    )
    print(f"cpus usable:     {process_cpu_count()} (affinity and cgroup quota)")
    print(f"wait/wake:       {'futex' if sys.platform.startswith('linux') else 'polling fallback'}")
    print(f"/dev/shm:        {_shm_report()}")
    token = _core.self_token()
    published = "liveness file published" if token & _core.TOKEN_LIVENESS else "no liveness file"
    print(f"process token:   {token:#018x} (pid << 32 | start time; {published})")
    ours, others = _count_segments()
    note = f" ({others} of other users: never opened or reaped)" if others else ""
    print(f"shoal segments:  {ours} of this user in /dev/shm{note}")
    states = list(liveness_files().values())
    print(
        f"liveness files:  {states.count('own') + states.count('live')} of live processes, "
        f"{states.count('dead')} of dead ones (removed by --reap)"
        + (f", {states.count('unknown')} of other users" if states.count("unknown") else "")
    )
    if reap_orphans:
        dead = reap_liveness()
        gone = reap()
        print(f"reaped:          {len(gone)} orphaned segment(s) {' '.join(gone)}")
        print(f"                 {len(dead)} liveness file(s) of dead processes")
    return 0
