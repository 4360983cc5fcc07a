"""``import shoal`` loads nothing until a name is used, and loses nothing by it (#11).

``shoal/__init__.py`` names each public name three times: in ``__all__``, in the
``TYPE_CHECKING`` imports type checkers read, and in ``_EXPORTS``, which the run-time
``__getattr__`` reads.  These tests hold the three to one list and check, in fresh
interpreters, that the deferral is real and invisible: ``from shoal import X``,
``dir(shoal)``, ``__module__`` and pickling by reference as before.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shoal

INIT = Path(shoal.__file__)


def fresh(code: str) -> object:
    """What ``code`` prints (JSON) in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def type_checking_imports() -> dict[str, str]:
    """``{name: module}`` of the ``if TYPE_CHECKING:`` block of ``__init__.py``."""
    tree = ast.parse(INIT.read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.level == 1, ast.dump(stmt)
                for alias in stmt.names:
                    assert alias.asname == alias.name, f"{alias.name} is not re-exported"
                    found[alias.name] = str(stmt.module)
    return found


def test_the_three_lists_agree() -> None:
    home = {name: module for module, names in shoal._EXPORTS.items() for name in names}
    assert type_checking_imports() == home
    assert sorted(home) == shoal.__all__


def test_import_shoal_imports_no_module_of_shoal_s() -> None:
    loaded = fresh(
        """
        import json, sys
        import shoal
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("shoal"))))
        """
    )
    assert loaded == ["shoal"]


def test_a_name_loads_its_module_and_no_more_than_it_needs() -> None:
    report = fresh(
        """
        import json, sys
        from shoal import Lock
        import shoal
        print(json.dumps({
            "modules": sorted(m for m in sys.modules if m.startswith("shoal")),
            "module": Lock.__module__,
            "same": Lock is shoal.Lock,
            "numpy": "numpy" in sys.modules,
        }))
        """
    )
    assert isinstance(report, dict)
    assert report["module"] == "shoal" and report["same"]
    assert "shoal._sync" in report["modules"]
    assert "shoal._pool" not in report["modules"] and "shoal._managers" not in report["modules"]
    assert not report["numpy"]


def test_every_name_resolves_in_a_fresh_interpreter_and_pickles_by_reference() -> None:
    report = fresh(
        """
        import json, pickle
        import shoal
        listed = sorted(dir(shoal))
        out = {"dir": [n for n in shoal.__all__ if n not in listed], "bad": []}
        for name in shoal.__all__:
            value = getattr(shoal, name)
            if isinstance(value, type) and value.__module__.startswith("shoal"):
                if value.__module__ != "shoal" and name not in ("BrokenBarrierError",):
                    out["bad"].append(f"{name}: {value.__module__}")
                if pickle.loads(pickle.dumps(value)) is not value:
                    out["bad"].append(f"{name} does not pickle by reference")
        print(json.dumps(out))
        """
    )
    assert report == {"dir": [], "bad": []}


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        shoal.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("shoal.no_such_name did not raise")


# every module that defines a class of objects in shared memory (SharedObject's
# subclasses, _array's aside: numpy is optional, and it was loaded on first use before)
OBJECT_MODULES = ["shoal._dict", "shoal._queues", "shoal._sharedctypes", "shoal._sync"]


@pytest.mark.parametrize(
    "code",
    [
        "import shoal; shoal.Lock",
        "import shoal; shoal.Event",
        "from shoal import Value",
        "import shoal.lowlevel",
        "import shoal; shoal.get_context",
        "from shoal.synchronize import Lock",
        "from shoal.queues import Queue",
        "from shoal.sharedctypes import Value",
        "from shoal.pool import Pool",
        "from shoal.managers import SyncManager",
    ],
)
def test_whatever_reaches_shared_memory_knows_every_class_in_it(code: str) -> None:
    """A sweep frees what dead processes held last, calling its class's hook first
    (a queue discards its records, whose transit segments would stay otherwise): it
    must know every class of shoal's, whichever of them this process used (#11)."""
    loaded = fresh(
        f"""
        import json, sys
        {code}
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("shoal."))))
        """
    )
    assert isinstance(loaded, list)
    assert "shoal._memory" in loaded
    assert set(OBJECT_MODULES) <= set(loaded), sorted(set(OBJECT_MODULES) - set(loaded))
