"""Which tests call into ``shoal._core``: the measurement behind ``SAN_CORE_TESTS``.

``make test-sanitize`` runs the Python suite against an ASan+UBSan build of the C
core.  ASan only watches C code that runs, so only tests that make the core run are
worth their time there.  This plugin finds them: with it loaded, a profile hook
(``sys.setprofile`` and ``threading.setprofile``, so the pool's threads too) notes
each test that calls a builtin of ``shoal._core`` (a function of the module or a
method of one of its types) while the test runs, its fixtures' set-up included, the
suite's own leak check (an autouse fixture of tests/conftest.py) excluded.  Child
processes count too: ``sitecustomize.py`` beside this file installs the same hook in
every Python process started with this directory on ``PYTHONPATH`` (spawn and
forkserver children, scripts a test runs), and a forked child inherits the parent's.

    PYTHONPATH=$PWD/tools/sanitize SHOAL_CORE_CALLS=$PWD/calls.txt \\
        .venv/bin/python -m pytest -p core_calls_plugin -p no:cacheprovider
    .venv/bin/python tools/sanitize/core_calls.py calls.txt   # the report

Each process appends ``<test id>`` lines to the file named by ``SHOAL_CORE_CALLS``
(the test running is passed down in ``SHOAL_CORE_CALLS_TEST``); the report lists
each test file with how many of its tests called the core.  (A forkserver started by
an earlier test keeps that test's id for the children it forks: those calls may be
booked under the wrong test, of the same run; the fork variant of a parametrized
test is measured in the parent itself.)
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
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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


# ---- the report ------------------------------------------------------------------------


def report(path: str, collected: str | None = None) -> None:
    calling = {line.strip() for line in open(path) if line.strip()}
    by_file: dict[str, set[str]] = {}
    for test in calling:
        by_file.setdefault(test.split("::", 1)[0], set()).add(test)
    every: dict[str, set[str]] = {}
    if collected:
        for line in open(collected):
            line = line.strip()
            if "::" in line:
                every.setdefault(line.split("::", 1)[0], set()).add(line)
    for name in sorted(set(by_file) | set(every)):
        total = len(every.get(name, ())) or "?"
        print(f"{name}: {len(by_file.get(name, ()))} of {total} tests call _core")


if __name__ == "__main__":
    report(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
