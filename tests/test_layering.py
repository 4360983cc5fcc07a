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
    "_pool": 71,  # the package: its modules' own order is POOL_ORDER below
    "_managers": 80,
    "_ray_objects": 89,  # the Ray backend's primitives: one actor each
    "_ray": 90,  # scale-out: the Ray backend (imports ray itself on first use only)
    "_ray_cluster": 91,  # a local two-node Ray cluster: the cluster demo's and the tests'
    "_context": 95,  # get_context(): factories of every layer below, Pool and Manager included
    "_demo": 100,  # what `python -m shoal demo` runs
    "_doctor": 100,
    "_ray_demo": 100,  # what `python -m shoal demo --cluster` runs
    "_testing": 105,  # shoal.testing: start methods, the leak check, faults
    # public facades: __init__ and the stdlib-shaped shims (any module without "_")
    "__init__": 110,
    "__main__": 120,
}
FACADE = 110

# The pool package's modules (shoal._pool.*), in the order they may import each other:
# each only from those before it (an import under ``if TYPE_CHECKING:``, for
# annotations, excepted).  A new module of the package must be placed here.
PACKAGES = {"_pool"}
POOL_ORDER = ["_protocol", "_base", "_startup", "_worker", "_jobs", "_engine", "_api", "__init__"]


def rank(module: str) -> int:
    module = module.split(".")[0]  # a package's module: the package's rank
    if module in RANKS:
        return RANKS[module]
    if not module.startswith("_"):
        return FACADE
    raise AssertionError(
        f"shoal.{module} has no rank: add it to RANKS in {Path(__file__).name}, "
        "in the layer ARCHITECTURE.md gives it"
    )


def python_modules() -> list[str]:
    """shoal's modules: ``_x`` at the top, ``_pool._x`` (and ``_pool.__init__``) in a
    package."""
    top = [p.stem for p in SRC.glob("*.py")]
    inner = [f"{package}.{p.stem}" for package in PACKAGES for p in (SRC / package).glob("*.py")]
    return sorted(top + inner)


def module_path(module: str) -> Path:
    return SRC / f"{module.replace('.', '/')}.py"


def c_modules() -> list[Path]:
    return sorted(SRC.glob("*.c"))


def shoal_imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported shoal module, node, whether it is at module level) for each import.

    An import of a package's own module names it ``package.module``; an import of a
    package from outside it names the package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = {p.stem for p in SRC.glob("*.py")} | {"_core"} | PACKAGES
    package = path.parent.name if path.parent != SRC else None
    siblings = {p.stem for p in path.parent.glob("*.py")} if package else set()
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
                elif child.level == 1 and package:  # a module of the same package
                    if child.module:
                        target = f"{package}.{child.module.split('.')[0]}"
                    else:
                        for alias in child.names:
                            name = alias.name if alias.name in siblings else "__init__"
                            found.append((f"{package}.{name}", child, top))
                        target = None
                        continue
                elif child.level == 1 or (child.level == 2 and package):
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
    for target, node, _ in shoal_imports(module_path(module)):
        assert target != module, f"{module}.py:{node.lineno} imports itself"
        if "." in target and target.split(".")[0] == module.split(".")[0]:
            continue  # within a package: its own order (test_pool_modules_import_in_order)
        assert "." not in target, (
            f"{module}.py:{node.lineno} imports shoal.{target}: outside its package, "
            f"import what shoal.{target.split('.')[0]}/__init__.py re-exports"
        )
        assert rank(target) < own or (own == FACADE == rank(target) and target != "__init__"), (
            f"{module}.py:{node.lineno} imports shoal.{target}, which is not below it "
            f"(rank {rank(target)} >= {own}); move the shared piece down instead"
        )


@pytest.mark.parametrize("module", python_modules())
def test_shoal_imports_at_module_top(module: str) -> None:
    for target, node, top in shoal_imports(module_path(module)):
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
    text = module_path(module).read_text()
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


def test_every_pool_module_has_a_place_in_its_order() -> None:
    found = sorted(p.stem for p in (SRC / "_pool").glob("*.py"))
    assert found == sorted(POOL_ORDER), (
        f"shoal._pool's modules {found} != POOL_ORDER {POOL_ORDER}: place each one in it"
    )


def type_checking_imports(tree: ast.Module) -> set[int]:
    """The lines of the imports under ``if TYPE_CHECKING:`` (annotations only: never
    run)."""
    return {
        node.lineno
        for block in ast.walk(tree)
        if isinstance(block, ast.If)
        and isinstance(block.test, ast.Name)
        and block.test.id == "TYPE_CHECKING"
        for node in ast.walk(block)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    }


@pytest.mark.parametrize("module", POOL_ORDER)
def test_pool_modules_import_in_order(module: str) -> None:
    """shoal._pool's modules import each other in one direction only (POOL_ORDER)."""
    path = SRC / "_pool" / f"{module}.py"
    annotations_only = type_checking_imports(ast.parse(path.read_text()))
    own = POOL_ORDER.index(module)
    for target, node, _ in shoal_imports(path):
        if not target.startswith("_pool.") or node.lineno in annotations_only:
            continue
        inner = target.split(".", 1)[1]
        assert POOL_ORDER.index(inner) < own, (
            f"_pool/{module}.py:{node.lineno} imports _pool.{inner}, which is not before "
            f"it in POOL_ORDER; move the shared piece down instead"
        )


def test_the_checker_sees_imports() -> None:
    """Guard against a checker that passes because it finds nothing."""
    sync = {target for target, _, _ in shoal_imports(SRC / "_sync.py")}
    assert {"_core", "_errors", "_handle"} <= sync
    init = {target for target, _, _ in shoal_imports(SRC / "__init__.py")}
    assert {"_errors", "_sync"} <= init
    engine = {target for target, _, _ in shoal_imports(SRC / "_pool" / "_engine.py")}
    assert {"_core", "_queues", "_pool._protocol", "_pool._worker", "_pool._jobs"} <= engine
    context = {target for target, _, _ in shoal_imports(SRC / "_context.py")}
    assert "_pool" in context
    jobs = SRC / "_pool" / "_jobs.py"
    late = type_checking_imports(ast.parse(jobs.read_text()))
    assert any(t == "_pool._engine" and n.lineno in late for t, n, _ in shoal_imports(jobs))


# The pool's rings (shoal Queues) and slots (a RawArray), by the names the pool gives
# them: it may use their public methods and the transport _queues and _sharedctypes
# declare for it ("the pool's transport"), never their private members.
POOL_RINGS_AND_SLOTS = {"tasks", "results", "slots", "_tasks", "_results", "_slots"}


def private_reaches(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
            continue
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if name in POOL_RINGS_AND_SLOTS and not node.attr.startswith("__"):
            found.append(f"{path.name}:{node.lineno}: {name}.{node.attr}")
    return found


@pytest.mark.parametrize("module", POOL_ORDER)
def test_the_pool_reaches_no_private_member_of_its_rings_or_slots(module: str) -> None:
    assert not private_reaches(SRC / "_pool" / f"{module}.py")


def test_the_private_reach_check_sees_them(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("tasks._get_claim(b, 0)\nself._slots._buf\nresults.put(1)\n")
    assert sorted(private_reaches(probe)) == [
        "probe.py:1: tasks._get_claim",
        "probe.py:2: _slots._buf",
    ]
