"""The pytest side of core_calls.py (``-p core_calls_plugin``, with tools/sanitize on
``PYTHONPATH`` and ``SHOAL_CORE_CALLS`` naming the output file): a ``.pth`` file in
the venv's site-packages for the run (every process of the venv installs the hook),
and each test's id in the environment before its fixtures are set up, for this
process and the children it starts."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import core_calls
import pytest

_PTH = Path(sysconfig.get_paths()["purelib"]) / "shoal_core_calls.pth"


def pytest_configure(config: pytest.Config) -> None:
    here = Path(core_calls.__file__).resolve().parent
    _PTH.write_text(f"{here}\nimport core_calls; core_calls.install_if_asked()\n")


def pytest_unconfigure(config: pytest.Config) -> None:
    _PTH.unlink(missing_ok=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    os.environ[core_calls.ENV_TEST] = item.nodeid
    core_calls.install()
