"""shoal's chaos suite: ``python -m chaos`` (``make chaos``), ``--quick`` in CI.

Each scenario breaks shoal on purpose — SIGKILLs every ~100 ms, a parent killed
holding everything, waiters killed while blocked, pool workers that segfault or run
out of address space, objects kept past every expiry, ``/dev/shm`` full, processes in
a second PID namespace (``pid_namespace``), a hostile second user planting files
(``hostile_user``), shared memory scribbled on under live use (``corrupt_memory``) —
and accounts for what a user would lose.  A scenario is a module
``chaos/scenario_<name>.py`` defining ``run(seconds: float) -> dict`` (its figures)
and ``HOLDS``: the figures that must be 0 for it to pass.  Every scenario runs in a
private mount namespace with a tmpfs of its own on ``/dev/shm`` (``unshare -m``, as
root), so that it can reap, plant and count segments without ever touching another
process's, and it kills only processes it started, by pid.  Figures are printed one
line a scenario; ``--json FILE`` writes them all.
"""
