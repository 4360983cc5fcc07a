"""Layers import only downward, at module top (ARCHITECTURE.md "Layers", STYLE.md).

Each module of ``src/shoal`` has a rank; a module may import only modules of a
lower rank.  The order follows ARCHITECTURE.md's layers: errors, the native core,
memory (segments, then the objects cut out of them), serialization, synchronization,
queues, shared data, processes and pools, managers, scale-out, the command line's
helpers, the public facades, and ``__main__`` on top.

Imports of shoal's own modules sit at module level: one inside a function is how a
cycle gets dodged instead of fixed, and it hides the real dependency from this test.

A new module must be given a rank here: the test fails until it is, on purpose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "shoal"

RANKS: dict[str, int] = {
    "_errors": 0,  # pure Python, imports nothing of shoal
    "_snapshot": 0,  # the statistics() records; imports nothing of shoal
    "_core": 10,  # C; imports shoal._errors only (checked below)
    "_memory": 20,
    "_handle": 21,
    "_record": 22,  # the record format's tags and limits, from _core
    "_aio": 23,  # asyncio's hub: waits on _core's futex words (#14)
    "_serialize": 30,
    "_codec": 31,  # the upcalls _core makes (registered with _core._set_codec)
    "_sync": 40,
    "_queues": 50,
    "_array": 60,  # SharedArray, share()
    "_sharedctypes": 60,  # Value, Array, RawValue, RawArray
    "_dict": 61,  # SharedDict
    "_list": 62,  # SharedList
    "_set": 63,  # SharedSet
    "_process": 70,
    "_pool": 71,
    "_managers": 80,
    "_context": 95,  # get_context(): factories of every layer below, Pool and Manager included
    "_demo": 100,  # what `python -m shoal demo` runs
    "_doctor": 100,
    "_testing": 105,  # shoal.testing: start methods, the leak check, faults
    # public facades: __init__ and the stdlib-shaped shims (any module without "_")
    "__init__": 110,
    "__main__": 120,
}
FACADE = 110


def rank(module: str) -> int:
    if module in RANKS:
        return RANKS[module]
    if not module.startswith("_"):
        return FACADE
    raise AssertionError(
        f"shoal.{module} has no rank: add it to RANKS in {Path(__file__).name}, "
        "in the layer ARCHITECTURE.md gives it"
    )


def python_modules() -> list[str]:
    return sorted(p.stem for p in SRC.glob("*.py"))


def c_modules() -> list[Path]:
    return sorted(SRC.glob("*.c"))


def shoal_imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported shoal module, node, whether it is at module level) for each import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = {p.stem for p in SRC.glob("*.py")} | {"_core"}
    found: list[tuple[str, ast.stmt, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == "shoal":
                        found.append((parts[1] if len(parts) > 1 else "__init__", child, top))
            elif isinstance(child, ast.ImportFrom):
                if child.level == 0 and child.module and child.module.split(".")[0] == "shoal":
                    parts = child.module.split(".")
                    target = parts[1] if len(parts) > 1 else None
                elif child.level == 1:
                    target = child.module.split(".")[0] if child.module else None
                elif child.level > 1:
                    raise AssertionError(f"{path.name}:{child.lineno}: import beyond shoal")
                else:
                    continue  # a third-party or stdlib import
                if target is not None:
                    found.append((target, child, top))
                else:
                    # "from . import a, b": each name is a module, or a name of __init__
                    for alias in child.names:
                        name = alias.name if alias.name in modules else "__init__"
                        found.append((name, child, top))
            visit(child, inner)

    visit(tree, True)
    return found


@pytest.mark.parametrize("module", python_modules())
def test_imports_only_downward(module: str) -> None:
    own = rank(module)
    for target, node, _ in shoal_imports(SRC / f"{module}.py"):
        assert target != module, f"{module}.py:{node.lineno} imports itself"
        assert rank(target) < own or (own == FACADE == rank(target) and target != "__init__"), (
            f"{module}.py:{node.lineno} imports shoal.{target}, which is not below it "
            f"(rank {rank(target)} >= {own}); move the shared piece down instead"
        )


@pytest.mark.parametrize("module", python_modules())
def test_shoal_imports_at_module_top(module: str) -> None:
    for target, node, top in shoal_imports(SRC / f"{module}.py"):
        assert top, (
            f"{module}.py:{node.lineno} imports shoal.{target} inside a function or class; "
            "import it at module top (a cycle needs fixing, not hiding)"
        )


# The C glue's imports of shoal's own modules: its exception classes at init, and the
# one module whose functions it calls up into (core_upcall in _core.c).
GLUE_IMPORTS = {"shoal._errors", "shoal._codec"}


def glue_sources() -> list[Path]:
    return sorted([*SRC.glob("*.c"), *SRC.glob("*.h")])


@pytest.mark.parametrize("path", glue_sources(), ids=lambda p: p.name)
def test_native_glue_imports_only_errors_and_its_upcalls(path: Path) -> None:
    """The C glue looks up shoal's exception classes (below it) and imports the module of
    its upcalls, shoal._codec; nothing else of shoal's."""
    for name in re.findall(r'PyImport_ImportModule\("([\w.]+)"\)', path.read_text()):
        if name.split(".")[0] == "shoal":
            assert name in GLUE_IMPORTS, f"{path.name} imports {name}"


def test_the_glue_imports_what_it_names() -> None:
    found = {
        name
        for path in glue_sources()
        for name in re.findall(r'PyImport_ImportModule\("([\w.]+)"\)', path.read_text())
    }
    assert found >= GLUE_IMPORTS


@pytest.mark.parametrize("module", python_modules())
def test_only_codec_registers_upcalls(module: str) -> None:
    """The upcalls have one owner: no other module calls _core's setters (_set_*)."""
    text = (SRC / f"{module}.py").read_text()
    setters = re.findall(r"_core\._set_\w+(?=\()", text)
    if module == "_codec":
        assert setters == ["_core._set_codec"]
    else:
        assert not setters, f"{module}.py calls {setters}: only shoal._codec registers upcalls"


def test_every_c_upcall_is_registered_by_codec() -> None:
    """Each upcall slot the C side reads (core_upcall(&core.X)) is one _codec sets."""
    glue = "".join(p.read_text() for p in glue_sources())
    calls = re.findall(r"core_upcall\(([^;]*)\);", glue)
    used = {slot for call in calls for slot in re.findall(r"&core\.(\w+)", call)}
    codec = (SRC / "_codec.py").read_text()
    registered = set(re.findall(r"^    (\w+)=", codec, re.M))
    assert {"loads", "encode", "encode_key", "loads_stored", "release"} <= used
    assert used <= registered, f"upcalls _codec never sets: {used - registered}"


def test_every_module_has_a_rank() -> None:
    for module in python_modules():
        rank(module)


def test_the_checker_sees_imports() -> None:
    """Guard against a checker that passes because it finds nothing."""
    sync = {target for target, _, _ in shoal_imports(SRC / "_sync.py")}
    assert {"_core", "_errors", "_handle"} <= sync
    init = {target for target, _, _ in shoal_imports(SRC / "__init__.py")}
    assert {"_errors", "_sync"} <= init
