"""The harness of ``make test-stdlib`` (stdlib_suites/): its exclusion list stays true.

The suites themselves take minutes and run in ``make test-stdlib``, not here; this
checks, in seconds, that every entry of ``stdlib_suites/exclusions.py`` names tests
that exist (an entry that matches nothing hides nothing, and is stale) and gives a
reason, so the list cannot rot silently as CPython's suites change.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stdlib_suites import __main__ as harness  # noqa: E402
from stdlib_suites.exclusions import EXCLUDED, PENDING, SINCE  # noqa: E402

STDLIB_TESTS = ROOT / "build" / "stdlib-tests"


def _available(suite: str) -> bool:
    if suite == "mp":
        return importlib.util.find_spec("test._test_multiprocessing") is not None
    return (
        importlib.util.find_spec("test.test_concurrent_futures") is not None
        or (STDLIB_TESTS / "test_concurrent_futures.py").exists()
    )


def test_every_exclusion_names_tests_that_exist_and_gives_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOAL_STDLIB_TESTS", str(STDLIB_TESTS))
    keys: list[str] = []
    suites = [s for s in harness.SUITES if _available(s)]
    if not suites:
        pytest.skip("this Python has neither suite (make test-stdlib installs them)")
    for suite in suites:
        # fork and spawn: the classes of every method are made the same way
        for method in ("fork", "spawn"):
            keys += [f"{suite}/{method}:{t}" for t in harness.list_tests(suite, method)]
    for table in (EXCLUDED, PENDING):
        for pattern, reason in table.items():
            if pattern.split("/")[0] not in suites:
                continue
            assert len(reason) > 20, f"{pattern}: say why it does not apply"
            assert "[" not in pattern, f"{pattern}: fnmatch reads [...] as a set"
            if pattern.split("/")[1].startswith("forkserver"):
                continue
            if sys.version_info < SINCE.get(pattern, (0, 0)):
                continue  # (a test this interpreter's suite does not have yet)
            assert fnmatch.filter(keys, pattern), f"{pattern} matches no test: stale?"
    assert not set(EXCLUDED) & set(PENDING)


def test_since_names_listed_entries() -> None:
    assert set(SINCE) <= set(EXCLUDED) | set(PENDING)
