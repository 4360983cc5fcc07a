"""Run a Python script where it cannot touch the machine's shared memory.

Tests that reap, plant or corrupt segments, fill ``/dev/shm``, or run shoal in another
PID namespace must never see (let alone remove) a segment of another process on the
machine.  :func:`run_isolated` runs their script in a private mount namespace
(``unshare -m --propagation private``) with a tmpfs of its own mounted on ``/dev/shm``:
every segment the script and its children make lives there and vanishes with it.

Inside, the script may go further:

- ``unshare --pid --fork --mount-proc <python> ...`` starts a process in a second PID
  namespace that shares the same private ``/dev/shm`` (a container with ``--ipc=host``);
- ``setpriv --reuid=nobody --regid=nogroup --clear-groups <python> ...`` runs a hostile
  second user (``HOSTILE_USER`` below) against the same ``/dev/shm``.

``PYTHON`` is the interpreter running the tests, for those inner commands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

PYTHON = sys.executable
HOSTILE_USER = ("nobody", "nogroup")


def _unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "private mount namespaces are Linux-only"
    if os.geteuid() != 0:
        return "a private /dev/shm needs root (unshare -m, mount -t tmpfs)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


def require_isolation() -> None:
    """Skip the calling test where a private ``/dev/shm`` cannot be made."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)


def run_isolated(
    script: str,
    *,
    shm_size: str = "256m",
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python source, dedented) with a private tmpfs on ``/dev/shm``.

    Returns the completed process (stdout and stderr captured as text); a script that
    runs past ``timeout`` fails the test.  ``shm_size`` is the tmpfs's ``size=``
    (small values make ``/dev/shm`` full on purpose).
    """
    require_isolation()
    source = textwrap.dedent(script)
    inner = (
        f"mount -t tmpfs -o size={shm_size},mode=1777 shoal-test /dev/shm && "
        f'exec "{PYTHON}" -c "$SHOAL_ISOLATED_SCRIPT"'
    )
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["SHOAL_ISOLATED_SCRIPT"] = source
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(__file__), child_env.get("PYTHONPATH", "")) if p
    )
    try:
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"isolated script ran past {timeout} s\n--- stdout\n{exc.stdout}\n--- stderr\n"
            f"{exc.stderr}"
        )


def check_isolated(script: str, **kwargs: object) -> str:
    """:func:`run_isolated`, failing the test unless the script exits 0; its stdout."""
    done = run_isolated(script, **kwargs)  # type: ignore[arg-type]
    if done.returncode != 0:
        pytest.fail(
            f"isolated script exited with {done.returncode}\n--- stdout\n{done.stdout}\n"
            f"--- stderr\n{done.stderr}"
        )
    return done.stdout
