"""The pytest side of core_calls.py (``-p core_calls_plugin``): each test's id goes
into the environment before its fixtures are set up, for this process and its
children, and the profile hook is (re)installed."""

from __future__ import annotations

import os

import pytest

import core_calls


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    os.environ[core_calls.ENV_TEST] = item.nodeid
    core_calls.install()
