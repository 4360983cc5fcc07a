"""Processes: the standard library's, plus how many CPUs this process may use (#5).

shoal does not start processes its own way.  ``Process``, ``current_process``,
``parent_process``, ``active_children``, ``Pipe``, the start-method functions and the
rest are the very objects :mod:`multiprocessing` exports, so that::

    import shoal as multiprocessing

runs an ordinary multiprocessing program unchanged, ``isinstance(p,
multiprocessing.Process)`` holds for a ``shoal.Process``, ``shoal.current_process()``
*is* ``multiprocessing.current_process()``, and ``shoal.set_start_method("spawn")``
sets the one default the standard library and shoal's ``Pool`` both follow.  What
shoal changes is what travels between the processes (queues, locks and shared data
that pickle as handles), not how the processes are made.

The one function of shoal's own is :func:`process_cpu_count`: the CPUs this process
may actually use, counting both its CPU affinity and the CPU quota of its control
group (a container's ``--cpus``).  ``cpu_count()`` keeps the standard library's
meaning (every CPU of the machine), since programs compare it with the machine's
figure; ``Pool`` and ``Executor`` size themselves with :func:`process_cpu_count`.

The connection names (``Connection``, ``Listener``, ``Client``, ``wait``) live here
too, for the ``shoal.connection`` shim: a pipe is process machinery, and they are the
standard library's as well.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (imported where used: pathlib costs every worker's start, #11)
    from pathlib import Path

__all__ = [
    "AuthenticationError",
    "BaseProcess",
    "BufferTooShort",
    "Client",
    "Connection",
    "Listener",
    "Pipe",
    "Process",
    "ProcessError",
    "TimeoutError",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "families",
    "freeze_support",
    "get_all_start_methods",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "process_cpu_count",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
    "wait",
]
# what the shims export: shoal.process (multiprocessing.process's names, and shoal's
# process_cpu_count) and shoal.connection (multiprocessing.connection's)
PROCESS_ALL = [
    "BaseProcess",
    "Process",
    "active_children",
    "current_process",
    "parent_process",
    "process_cpu_count",
]
CONNECTION_ALL = ["Client", "Connection", "Listener", "Pipe", "families", "wait"]

# ---- the standard library's own objects ---------------------------------------------------
# Re-bound, not wrapped: identity is the point (isinstance checks, `p in
# multiprocessing.active_children()`, one default start method for everyone).

Process = multiprocessing.Process
BaseProcess = multiprocessing.process.BaseProcess
current_process = multiprocessing.current_process
parent_process = multiprocessing.parent_process
active_children = multiprocessing.active_children
cpu_count = multiprocessing.cpu_count

set_start_method = multiprocessing.set_start_method
get_start_method = multiprocessing.get_start_method
get_all_start_methods = multiprocessing.get_all_start_methods
freeze_support = multiprocessing.freeze_support
set_executable = multiprocessing.set_executable
set_forkserver_preload = multiprocessing.set_forkserver_preload
allow_connection_pickling = multiprocessing.allow_connection_pickling
log_to_stderr = multiprocessing.log_to_stderr
get_logger = multiprocessing.get_logger

ProcessError = multiprocessing.ProcessError
BufferTooShort = multiprocessing.BufferTooShort
# what AsyncResult.get(timeout) raises; shadows the builtin here as it does in multiprocessing
TimeoutError = multiprocessing.TimeoutError
AuthenticationError = multiprocessing.AuthenticationError

Pipe = multiprocessing.connection.Pipe
Connection = multiprocessing.connection.Connection
Listener = multiprocessing.connection.Listener
Client = multiprocessing.connection.Client
wait = multiprocessing.connection.wait
# the address families this platform's Listener and Client take ("AF_UNIX", "AF_INET")
families = multiprocessing.connection.families


# ---- process_cpu_count ----------------------------------------------------------------------


def process_cpu_count() -> int:
    """Return how many CPUs this process may use: at least 1.

    The smaller of two limits:

    * its CPU affinity (``os.sched_getaffinity``; ``taskset``, ``numactl``, a batch
      scheduler's CPU set; ``os.process_cpu_count()`` where Python has it, which also
      honours ``PYTHON_CPU_COUNT``);
    * the CPU quota of its control group and every group above it, rounded up
      (cgroup v2 ``cpu.max``, cgroup v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``):
      what ``docker run --cpus=1.5`` or a Kubernetes CPU limit sets (2 here).

    This is the default size of ``shoal.Pool`` and ``shoal.Executor``.  Unlike
    :func:`cpu_count`, which keeps the standard library's meaning (every CPU of the
    machine), it does not start 64 workers in a container allowed 2 CPUs.  It is
    read afresh on each call (affinity can change); unreadable or missing cgroup files
    count as no quota.
    """
    count = _affinity_count()
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def _affinity_count() -> int:
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        n = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # macOS, Windows: no affinity API in os
        n = os.cpu_count()
    return n or 1


def _cgroup_cpu_quota(proc: str | os.PathLike[str] = "/proc/self") -> int | None:
    """The CPU quota of the control groups holding this process, in whole CPUs
    (rounded up), or None where there is none or it cannot be read.

    Reads ``<proc>/cgroup`` (which group, per hierarchy) and ``<proc>/mountinfo``
    (where each hierarchy is mounted), then the quota files of the group and of each
    group above it up to the mount's root: a limit set on a parent bounds its
    children.  Both cgroup v2 and v1 are read (hybrid systems mount both); the
    smallest quota found wins.  ``proc`` is a parameter for the tests.
    """
    from pathlib import Path

    proc = Path(proc)
    try:
        groups = _read_cgroups(proc / "cgroup")
        mounts = _read_mounts(proc / "mountinfo")
    except (OSError, ValueError):
        return None
    quotas: list[tuple[int, int]] = []
    for hierarchy_id, controllers, path in groups:
        if hierarchy_id == "0" and controllers == [""]:  # the v2 unified hierarchy
            for root, mount_point, fstype, _ in mounts:
                if fstype == "cgroup2":
                    quotas += _v2_quotas(_group_dirs(root, mount_point, path))
                    break
        elif "cpu" in controllers:
            for root, mount_point, fstype, options in mounts:
                if fstype == "cgroup" and "cpu" in options:
                    quotas += _v1_quotas(_group_dirs(root, mount_point, path))
                    break
    if not quotas:
        return None
    # ceiling: 1.5 CPUs of quota keep 2 workers busy; never below 1
    return max(1, min(-(-quota // period) for quota, period in quotas))


def _read_cgroups(path: Path) -> list[tuple[str, list[str], str]]:
    """(hierarchy id, controllers, group path) per line of /proc/<pid>/cgroup."""
    groups = []
    for line in path.read_text().splitlines():
        hierarchy_id, controllers, group = line.split(":", 2)
        groups.append((hierarchy_id, controllers.split(","), group))
    return groups


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _read_mounts(path: Path) -> list[tuple[str, str, str, list[str]]]:
    """(root, mount point, file-system type, super options) of each cgroup mount."""
    mounts = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or len(fields) < 5:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        mounts.append((root, mount_point, fstype, fields[sep + 3].split(",")))
    return mounts


def _group_dirs(root: str, mount_point: str, group: str) -> list[Path]:
    """The group's directory under the mount, then each parent up to the mount point.

    ``group`` is relative to the cgroup namespace's root, and so is the mount's
    ``root``: inside a container without a cgroup namespace the mount root is the
    container's group (``/docker/<id>``) and so is the path; with one, both are ``/``.
    A group outside the mounted subtree leaves only the mount point itself to read.
    """
    root_parts = [p for p in root.split("/") if p]
    parts = [p for p in group.split("/") if p]
    parts = parts[len(root_parts) :] if parts[: len(root_parts)] == root_parts else []
    from pathlib import Path

    base = Path(mount_point)
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quotas(dirs: list[Path]) -> list[tuple[int, int]]:
    quotas = []
    for d in dirs:
        try:
            quota, period = (d / "cpu.max").read_text().split()[:2]
            if quota != "max" and int(quota) > 0 and int(period) > 0:
                quotas.append((int(quota), int(period)))
        except (OSError, ValueError):
            continue  # no cpu controller at this level, or no limit
    return quotas


def _v1_quotas(dirs: list[Path]) -> list[tuple[int, int]]:
    quotas = []
    for d in dirs:
        try:
            quota = int((d / "cpu.cfs_quota_us").read_text())
            period = int((d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:  # -1: no limit
            quotas.append((quota, period))
    return quotas
