"""Which tests call into ``shoal._core``: the measurement behind ``make test-sanitize``'s
subset (``--sanitize-subset``, tests/conftest.py).

``make test-sanitize`` runs the Python tests against an ASan+UBSan build of the C core.
ASan only watches C code that runs, so only tests that make the core run are worth
their time there.  This finds them: with the plugin loaded (core_calls_plugin.py), a
profile hook (``sys.setprofile`` and ``threading.setprofile``, so the pool's threads
too) notes each test that calls a builtin of ``shoal._core`` (a function of the module
or a method of one of its types) while the test runs, its fixtures' set-up included,
the suite's own leak check (``no_leaks``, an autouse fixture of tests/conftest.py)
excluded.  Child processes count too: the plugin puts a ``.pth`` file in the venv's
site-packages for the run, which installs the same hook in every Python process of
that venv (spawn and forkserver children, scripts a test runs, whatever their
``PYTHONPATH``), and a forked child inherits its parent's.

    SHOAL_CORE_CALLS=$PWD/calls.txt .venv/bin/python -m pytest \\
        -p core_calls_plugin -p no:cacheprovider   # with tools/sanitize on PYTHONPATH
    .venv/bin/python -m pytest --co -q | grep :: > collected.txt
    python tools/sanitize/core_calls.py calls.txt collected.txt   # the report
    python tools/sanitize/core_calls.py calls.txt collected.txt --not-core \\
        > tools/sanitize/not-core.txt

Each process appends ``<test id>`` lines to the file named by ``SHOAL_CORE_CALLS``
(the test running is passed down in ``SHOAL_CORE_CALLS_TEST``).  (A forkserver
started by an earlier test keeps that test's id for the children it forks: their
calls may be booked under that test; the fork variant of a test parametrized by
start method is measured in the test's own process.)  A test that a run did not
reach stays out of not-core.txt: nothing is left out of the sanitized run unmeasured.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

ENV_LOG = "SHOAL_CORE_CALLS"
ENV_TEST = "SHOAL_CORE_CALLS_TEST"
_hit: dict[str, bool] = {}  # test ids this process has already written


def _is_core(function: Any) -> bool:
    if getattr(function, "__module__", None) == "shoal._core":
        return True
    owner = getattr(function, "__self__", None)
    return owner is not None and getattr(type(owner), "__module__", None) == "shoal._core"


def _record() -> None:
    test = os.environ.get(ENV_TEST)
    path = os.environ.get(ENV_LOG)
    if not test or not path or _hit.get(test):
        return
    _hit[test] = True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError:
        return  # a process of another user (tests run one as nobody)
    try:
        os.write(fd, (test + "\n").encode())
    finally:
        os.close(fd)


def _leak_check(frame: Any) -> bool:
    # the suite's own per-test checks call the core for every test: not the test's
    while frame is not None:
        code = frame.f_code
        if code.co_name == "no_leaks" and code.co_filename.endswith("conftest.py"):
            return True
        frame = frame.f_back
    return False


def _profile(frame: Any, event: str, arg: Any) -> None:
    if event != "c_call" or not _is_core(arg):
        return
    if _hit.get(os.environ.get(ENV_TEST, "")) or _leak_check(frame):
        return
    _record()


def install() -> None:
    """Profile every call of this process (its threads started from now on too)."""
    sys.setprofile(_profile)
    threading.setprofile(_profile)


def install_if_asked() -> None:
    """What the ``.pth`` file runs in every process of the venv."""
    if os.environ.get(ENV_LOG):
        install()


# ---- the report ------------------------------------------------------------------------


def _params(test: str) -> list[str]:
    return test.partition("[")[2].rstrip("]").split("-")


def report(path: str, collected: str, not_core: bool) -> None:
    with open(path) as f:
        calling = {line.strip() for line in f if line.strip()}
    with open(collected) as f:
        every = [line.strip() for line in f if "::" in line]
    if not_core:
        print("# tests that call nothing of shoal._core (tools/sanitize/core_calls.py),")
        print("# left out of `make test-sanitize`'s run against the ASan build (--sanitize-subset)")
        for test in every:
            # (a forkserver variant's children may be booked under another test:
            # never listed, the fork-variant rule of --sanitize-subset decides)
            if test not in calling and "forkserver" not in _params(test):
                print(test)
        return
    by_file: dict[str, list[int]] = {}
    for test in every:
        counts = by_file.setdefault(test.split("::", 1)[0], [0, 0])
        counts[0] += test in calling
        counts[1] += 1
    for name, (hits, total) in sorted(by_file.items()):
        print(f"{name}: {hits} of {total} tests call _core")


if __name__ == "__main__":
    report(sys.argv[1], sys.argv[2], "--not-core" in sys.argv[3:])
