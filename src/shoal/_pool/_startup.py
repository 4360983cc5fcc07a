"""Starting workers from a main module: the checks for a script without a
``__main__`` guard, under spawn and forkserver.

A spawn or forkserver worker imports the main module before it runs anything; a
script with no ``if __name__ == "__main__":`` guard starts a pool again there.  The
child leaves at once with ``_BOOTSTRAP_EXIT`` (``_refuse_while_bootstrapping``, called
as an engine is made), and the parent's engine, seeing that status (or 3.14's
forkserver gone with it: ``_forkserver_status``), fails the pool with one error
naming the fix (``_main_guard_message``) instead of replacing workers for ever.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import multiprocessing.util
import os
import sys
import time

from ._protocol import _BOOTSTRAP_EXIT


def _refuse_while_bootstrapping() -> None:
    """Exit at once, silently, from a process that starts a pool while it is still
    importing the main module: a spawn or forkserver child running a script that has
    no ``if __name__ == "__main__":`` guard.  The standard library raises here (from
    ``Process.start``), the pool that started this child replaces it, the replacement
    does the same: a hundred tracebacks and a parent that hangs.  This exit status
    tells the parent's pool instead, which fails with one error naming the fix.
    (The forkserver importing the main module to preload it, from 3.14 on, leaves
    with it too: see _forkserver_status.)"""
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        # The forkserver itself imports the main module too, from 3.14 on, before it
        # serves (its preload; 3.13's never passed it the main path).  There the
        # standard library's error (a pool's first start) would end the server with
        # its traceback and leave the parent a ConnectionResetError: it leaves the
        # same way, quietly, and the parent's pool finds this status (_start_worker).
        # Not SystemExit: a forkserver child turns any exception into exit status 1.
        # shoal's exit hooks first: let go of what this import made
        try:
            multiprocessing.util._run_finalizers()
        finally:
            os._exit(_BOOTSTRAP_EXIT)


def _main_guard_message(method: str) -> str:
    """Why a pool whose workers import an unguarded main script cannot start."""
    main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
    return (
        f"the pool's workers cannot start: under the {method!r} start method each "
        f"worker imports {main}, and that import started a pool (or executor) "
        "itself, as it runs the program's code outside an "
        "'if __name__ == \"__main__\":' block.  Put the code that starts the pool "
        "(everything but imports and definitions) under "
        "'if __name__ == \"__main__\":', or use the 'fork' start method.  See "
        "'Safe importing of main module' in the multiprocessing documentation."
    )


def _forkserver_status(wait_s: float = 2.0) -> int | None:
    """The exit status of this process's forkserver if it has exited (waiting up to
    ``wait_s`` for a server whose connection just closed to finish exiting), else
    None.  The server stays a zombie for the standard library to reap (WNOWAIT): its
    next start sees it gone and starts another."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if not isinstance(pid, int) or not hasattr(os, "waitid"):
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None  # reaped already, or not this process's child
        if info is not None and info.si_pid == pid:
            return info.si_status if info.si_code == os.CLD_EXITED else None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
