"""The public surface: what ``shoal`` exports, that it is documented, and that its
exceptions are what they claim to be and survive crossing a process boundary.

STYLE.md: one public door (``shoal/__init__.py``) re-exporting with a sorted
``__all__``; stdlib-shaped shims that only re-export; every exception class also the
stdlib class users already catch, pickling round-trip intact.
"""

from __future__ import annotations

import ast
import builtins
import errno
import importlib
import inspect
import pickle
import re
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal import _errors, _sync

SRC = Path(shoal.__file__).resolve().parent
# every module without a leading underscore is a shim (lowlevel, synchronize, queues…)
SHIMS = sorted(f"shoal.{p.stem}" for p in SRC.glob("*.py") if not p.stem.startswith("_"))
PUBLIC_MODULES = ["shoal", *SHIMS]
# private modules whose whole __all__ is public API, and where it must be exported
EXPORTED_VIA = {"shoal._errors": "shoal", "shoal._queues": "shoal", "shoal._sync": "shoal"}


def public_module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


# ---- __all__ ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_unique_and_resolves(name: str) -> None:
    module = public_module(name)
    names = module.__all__
    assert names == sorted(names), f"{name}.__all__ is not sorted"
    assert len(names) == len(set(names)), f"{name}.__all__ has duplicates"
    for attr in names:
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which is missing"
        assert not attr.startswith("_"), f"{name}.__all__ exports private {attr!r}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_complete(name: str) -> None:
    """Every public attribute is in __all__ (submodules and dunders aside)."""
    module = public_module(name)
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_") and not isinstance(value, types.ModuleType)
    }
    missing = public - set(module.__all__)
    assert not missing, f"public in {name} but not in its __all__: {sorted(missing)}"


@pytest.mark.parametrize("private", sorted(EXPORTED_VIA))
def test_every_public_name_is_re_exported(private: str) -> None:
    module = importlib.import_module(private)
    facade = public_module(EXPORTED_VIA[private])
    missing = [n for n in module.__all__ if n not in facade.__all__]
    assert not missing, f"{private} names not exported by {facade.__name__}: {missing}"
    for n in module.__all__:
        assert getattr(facade, n) is getattr(module, n)


def test_public_classes_say_they_are_shoal_s() -> None:
    """``repr(shoal.Lock)`` names ``shoal.Lock``, not a private module (trio's habit)."""
    for attr in shoal.__all__:
        value = getattr(shoal, attr)
        module = getattr(value, "__module__", None)
        if isinstance(value, type) and module and module.startswith("shoal"):
            assert module == "shoal", f"shoal.{attr}.__module__ is {module!r}"


# ---- shims only re-export ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIMS)
def test_shim_only_re_exports(name: str) -> None:
    path = SRC / (name.split(".")[-1] + ".py")
    tree = ast.parse(path.read_text())
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1, f"{name} imports from outside shoal: line {node.lineno}"
            for alias in node.names:
                # "from ._x import Name as Name": an explicit re-export; "from ._x import
                # X_ALL as __all__": the export list, the mirrored module's own
                assert alias.asname in (None, alias.name, "__all__"), f"{name} renames {alias.name}"
            continue
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "__all__"
        ):
            continue
        pytest.fail(f"{name} does more than re-export: {ast.dump(node)[:80]} (line {node.lineno})")


# the one shim that mirrors no single module: it gathers the power-user API of several
FACADES = {"shoal.lowlevel"}


@pytest.mark.parametrize("name", sorted(set(SHIMS) - FACADES))
def test_shim_takes_its_list_from_the_module_it_mirrors(name: str) -> None:
    """A shim's ``__all__`` is its module's (``from ._x import __all__ as __all__``, or a
    list of it that module declares for the shim), never retyped in the shim."""
    tree = ast.parse((SRC / (name.split(".")[-1] + ".py")).read_text())
    sources = [
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and any(alias.asname == "__all__" or alias.name == "__all__" for alias in node.names)
    ]
    assigned = [
        node
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        and "__all__" in ast.dump(node)
    ]
    assert len(sources) == 1 and not assigned, f"{name} lists its own __all__"
    mirrored = importlib.import_module(f"shoal.{sources[0]}")
    shim = public_module(name)
    assert any(shim.__all__ is value for value in vars(mirrored).values()), name
    assert set(shim.__all__) <= set(mirrored.__all__), f"{name} exports what {sources[0]} does not"


def test_synchronize_matches_the_package() -> None:
    from shoal import synchronize

    for attr in synchronize.__all__:
        assert getattr(synchronize, attr) is getattr(shoal, attr)
    # multiprocessing.synchronize's primitives, all of them
    import multiprocessing.synchronize as stdlib

    for attr in ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition"):
        assert hasattr(stdlib, attr) and attr in synchronize.__all__
    assert "Barrier" in synchronize.__all__


# ---- docstrings ----------------------------------------------------------------------------


def exported() -> list[tuple[str, Any]]:
    out = []
    for name in PUBLIC_MODULES:
        module = public_module(name)
        out += [(f"{name}.{attr}", getattr(module, attr)) for attr in module.__all__]
    return out


def documented_members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties that shoal itself defines on ``cls`` or its bases."""
    members = []
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("shoal"):
            continue  # object's, Exception's, OSError's: documented by Python
        for attr, value in vars(klass).items():
            if attr.startswith("_") or attr in seen:
                continue
            seen.add(attr)
            if callable(value) or isinstance(
                value, (property, types.GetSetDescriptorType, classmethod, staticmethod)
            ):
                members.append((f"{klass.__qualname__}.{attr}", value))
    return members


def has_doc(obj: Any) -> bool:
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    doc = inspect.getdoc(obj) if not isinstance(obj, types.GetSetDescriptorType) else obj.__doc__
    return bool(doc and doc.strip())


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_modules_have_docstrings(module: str) -> None:
    assert has_doc(public_module(module))


@pytest.mark.parametrize(("name", "obj"), exported(), ids=[n for n, _ in exported()])
def test_every_public_name_has_a_docstring(name: str, obj: Any) -> None:
    if not (callable(obj) or isinstance(obj, type)):
        return  # constants (HEADER_SIZE) document themselves in the module docstring
    if not getattr(obj, "__module__", "shoal").startswith("shoal"):
        return  # the stdlib's own, re-exported as is (BrokenBarrierError)
    assert has_doc(obj), f"{name} has no docstring"
    # a class's docstring must be its own, not one inherited from a base
    if isinstance(obj, type):
        assert obj.__doc__, f"{name} has no docstring of its own"
        undocumented = [m for m, v in documented_members(obj) if not has_doc(v)]
        assert not undocumented, f"undocumented public members of {name}: {undocumented}"


# ---- exceptions -----------------------------------------------------------------------------


def error_classes() -> list[type[BaseException]]:
    for name in _errors.__all__:
        getattr(_errors, name)  # (the pool's two are made on first use)
    return [
        value
        for value in vars(_errors).values()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ in ("shoal", "shoal._errors")
    ]


def test_every_error_class_is_listed_exported_and_drawn() -> None:
    classes = error_classes()
    assert len(classes) >= 10
    doc = _errors.__doc__ or ""
    for cls in classes:
        assert cls.__name__ in _errors.__all__, f"{cls.__name__} missing from _errors.__all__"
        assert re.search(rf"\b{cls.__name__}\b", doc), f"{cls.__name__} not in the drawn tree"


def sample(cls: type[BaseException]) -> BaseException:
    """An instance with every attribute set to something recognisable."""
    kwargs: dict[str, Any] = {}
    init = cls.__init__
    if getattr(init, "__module__", None) == "shoal._errors":
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                is_int = "int" in str(p.annotation)
                kwargs[p.name] = 4127 if is_int else f"sample {p.name}"
    if issubclass(cls, OSError):
        return cls(errno.ENOENT, "segment /shoal-x is gone", "/shoal-x", **kwargs)
    return cls("worker 4127 died; here is what to do", **kwargs)


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_error_round_trips_through_pickle(cls: type[BaseException]) -> None:
    original = sample(cls)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        copy = pickle.loads(pickle.dumps(original, protocol=protocol))
        assert type(copy) is cls
        assert str(copy) == str(original)
        assert copy.args == original.args
        assert vars(copy) == vars(original), "attributes lost on the way"
        if isinstance(original, OSError):
            assert isinstance(copy, OSError)
            assert (copy.errno, copy.strerror, copy.filename) == (
                original.errno,
                original.strerror,
                original.filename,
            )


def test_barrier_party_died_error_keeps_its_pid() -> None:
    err = pickle.loads(pickle.dumps(shoal.BarrierPartyDiedError("died", pid=4127)))
    assert err.pid == 4127
    assert isinstance(err, threading.BrokenBarrierError)


def drawn_tree() -> list[tuple[str, list[str], str | None]]:
    """(class, the bases its line names, its parent in the drawing) from _errors' docstring."""
    entries: list[tuple[str, list[str], str | None]] = []
    stack: list[tuple[int, str]] = []  # (column, class) of the open branches
    for line in (_errors.__doc__ or "").splitlines():
        m = re.match(r"^([\s│├└─]*)([A-Z]\w+)(\(([^)]*)\))?", line)
        if not m or m.group(2) not in vars(_errors):
            continue
        column, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parent = stack[-1][1] if stack else None
        bases = [b.strip() for b in re.split(r"[,\[\]]", m.group(4) or "") if b.strip()]
        entries.append((name, bases, parent))
        stack.append((column, name))
    return entries


def resolve(base: str) -> type | None:
    if base == "…":
        return None
    if "." in base:
        module, attr = base.rsplit(".", 1)
        return getattr(importlib.import_module(module), attr, None)
    return getattr(_errors, base, None) or getattr(builtins, base)


@pytest.mark.parametrize(
    ("name", "bases", "parent"), drawn_tree(), ids=[e[0] for e in drawn_tree()]
)
def test_error_is_the_class_it_claims(name: str, bases: list[str], parent: str | None) -> None:
    cls = getattr(_errors, name)
    if parent:
        assert issubclass(cls, getattr(_errors, parent)), f"{name} is drawn under {parent}"
    for base in bases:
        target = resolve(base)
        if target is None:
            continue  # "…" (the parent above) or an optional base this Python lacks
        assert issubclass(cls, target), f"{name} claims to be a {base} and is not"


def test_drawn_tree_covers_every_class() -> None:
    drawn = {name for name, _, _ in drawn_tree()}
    assert drawn == {c.__name__ for c in error_classes()}


def test_stdlib_classes_users_already_catch() -> None:
    """The promises STYLE.md and the primitives' docs make, spelled out."""
    assert issubclass(shoal.NotHeldError, ValueError)  # multiprocessing.Lock.release
    assert issubclass(shoal.NotHeldError, RuntimeError)  # threading.Lock.release
    assert issubclass(shoal.ClosedError, ValueError)
    assert issubclass(shoal.SegmentNotFoundError, FileNotFoundError)
    assert issubclass(shoal.SharedMemoryError, OSError)
    assert issubclass(shoal.BarrierPartyDiedError, threading.BrokenBarrierError)
    assert shoal.BrokenBarrierError is threading.BrokenBarrierError
    assert issubclass(shoal.OwnerDiedWarning, RuntimeWarning)
    for name in _sync.__all__:
        assert getattr(shoal, name) is getattr(_sync, name)
