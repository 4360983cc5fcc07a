"""``make test-sanitize``'s subset (``--sanitize-subset``, tests/conftest.py): every
test that reaches the C core runs against the ASan build, once."""

from __future__ import annotations

import os
from types import SimpleNamespace

from conftest import NOT_CORE_LIST, sanitize_subset, under_methods


def ids(*nodeids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def kept(items: list[SimpleNamespace], not_core: set[str]) -> list[str]:
    return [item.nodeid for item in sanitize_subset(items, not_core)]  # type: ignore[arg-type]


def test_tests_that_call_nothing_of_the_core_are_left_out() -> None:
    items = ids("tests/a.py::test_x", "tests/a.py::test_y[1]", "tests/a.py::test_y[2]")
    assert kept(items, {"tests/a.py::test_y[1]"}) == ["tests/a.py::test_x", "tests/a.py::test_y[2]"]


def test_spawn_and_forkserver_variants_go_where_the_fork_variant_runs() -> None:
    items = ids(
        "tests/a.py::test_x[fork]",
        "tests/a.py::test_x[spawn]",
        "tests/a.py::test_x[forkserver]",
        "tests/a.py::test_y[Pool-fork-3]",
        "tests/a.py::test_y[Pool-spawn-3]",
        "tests/a.py::test_y[Executor-spawn-3]",  # no fork variant of its own
    )
    assert kept(items, set()) == [
        "tests/a.py::test_x[fork]",
        "tests/a.py::test_y[Pool-fork-3]",
        "tests/a.py::test_y[Executor-spawn-3]",
    ]


def test_a_variant_stays_when_its_fork_variant_does_not_reach_the_core() -> None:
    items = ids(
        "tests/a.py::test_x[fork]", "tests/a.py::test_x[spawn]", "tests/a.py::test_z[spawn]"
    )
    assert kept(items, {"tests/a.py::test_x[fork]"}) == [
        "tests/a.py::test_x[spawn]",
        "tests/a.py::test_z[spawn]",
    ]


def test_the_list_names_tests_of_files_that_exist_and_no_forkserver_variant() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(NOT_CORE_LIST) as f:
        entries = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert len(entries) > 100
    for entry in entries:
        path, sep, name = entry.partition("::")
        assert sep and name.startswith("test_"), entry
        assert os.path.isfile(os.path.join(root, path)), entry
        # (a forkserver child may be booked under another test: never listed)
        assert "forkserver" not in entry.partition("[")[2].rstrip("]").split("-"), entry


def test_start_methods_keep_each_tests_variants_under_them_where_it_has_one() -> None:
    items = ids(
        "tests/a.py::test_x[fork]",
        "tests/a.py::test_x[spawn]",
        "tests/a.py::test_x[forkserver]",
        "tests/a.py::test_y[Pool-spawn-3]",  # no variant under the chosen methods
        "tests/a.py::test_z",
    )
    kept = [i.nodeid for i in under_methods(items, ["fork", "forkserver"])]  # type: ignore[arg-type]
    assert kept == [
        "tests/a.py::test_x[fork]",
        "tests/a.py::test_x[forkserver]",
        "tests/a.py::test_y[Pool-spawn-3]",
        "tests/a.py::test_z",
    ]
