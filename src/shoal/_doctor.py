"""python -m shoal doctor: what this machine offers shoal, and what is left over."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

from . import _core
from ._memory import (
    SEGMENT_LEFTOVER,
    SEGMENT_LIVE,
    SEGMENT_UNKNOWN,
    SegmentReport,
    liveness_files,
    reap,
    reap_liveness,
    segment_report,
)
from ._process import process_cpu_count

# how many segments of each state are named one by one (the rest are counted)
_LISTED = 20
_WHAT = {
    SEGMENT_LIVE: "live (a holder is alive)",
    SEGMENT_LEFTOVER: "leftover (every holder died: --reap removes them)",
    SEGMENT_UNKNOWN: "cannot tell (other users', or not shoal's layout: never touched)",
}


def _shm_report() -> str:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return "no /dev/shm (segments still work through shm_open; crash reaping needs a listing)"
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    note = "  <- small: containers often need --shm-size" if total < 256 * 2**20 else ""
    return f"{free / 2**20:,.0f} MiB free of {total / 2**20:,.0f} MiB{note}"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"


def _describe(report: SegmentReport) -> str:
    parts = [_size(report.size)]
    if report.kind:
        parts.append(report.kind)
    if report.creator_pid:
        alive = os.path.isdir(f"/proc/{report.creator_pid}")
        parts.append(f"made by pid {report.creator_pid}" + (" (running)" if alive else ""))
    parts.append(report.reason)
    return f"{report.name}  {', '.join(parts)}"


def _print_segments(reports: list[SegmentReport]) -> None:
    by_state = {state: [r for r in reports if r.state == state] for state in _WHAT}
    counts = ", ".join(f"{len(by_state[s])} {s}" for s in (SEGMENT_LIVE, SEGMENT_LEFTOVER,
                                                          SEGMENT_UNKNOWN))  # fmt: skip
    print(f"shoal segments:  {len(reports)} in /dev/shm: {counts}")
    for state, what in _WHAT.items():
        found = by_state[state]
        if not found:
            continue
        print(f"  {len(found)} {what}:")
        for report in found[:_LISTED]:
            print(f"    {_describe(report)}")
        if len(found) > _LISTED:
            print(f"    ... and {len(found) - _LISTED} more")


def doctor(reap_orphans: bool = False) -> int:
    """Print what shoal finds on this machine: the platform, ``/dev/shm``, and each
    shoal segment there, live, leftover or of unknown state; with ``reap_orphans``,
    remove the leftovers (and dead processes' liveness files) and say what went."""
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
    _print_segments(segment_report())
    states = list(liveness_files().values())
    print(
        f"liveness files:  {states.count('own') + states.count('live')} of live processes, "
        f"{states.count('dead')} of dead ones (removed by --reap)"
        + (f", {states.count('unknown')} of other users" if states.count("unknown") else "")
    )
    if reap_orphans:
        dead = reap_liveness()
        gone = reap()
        print(f"reaped:          {len(gone)} leftover segment(s) {' '.join(gone)}")
        print(f"                 {len(dead)} liveness file(s) of dead processes")
    return 0
