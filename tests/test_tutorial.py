"""The tutorial's programs (``examples/tutorial/``) run on shoal (#5, item 7).

The tutorial in ``shared/seed/`` is where shoal started: a child ``Process``, a
``Pool`` with ``apply_async``/``close``/``join``, a writer and a reader sharing a
``Queue`` -- as two Processes, as two Pool tasks (which does not work in the standard
library), and through a ``Manager``.  Each program is run as a script in a fresh
interpreter, under every start method, and its output checked line by line.

Each program is also run with its import lines pointed back at ``multiprocessing``:
the same output, except for program 4, where the standard library moves nothing.

And on the session's Ray cluster with only ``SHOAL_CONTEXT=ray`` added (#13): the
programs whose objects go to Pool tasks (1 shares nothing; 3 hands a queue to a local,
forked ``Process``, which a cluster object cannot go through).

Output: the children print to a pipe, block-buffered (PYTHONUNBUFFERED is removed), so
each process writes its lines whole as it exits and lines of different processes never
interleave mid-line; the order *between* processes is checked only where the program
fixes it (a ``join()`` in between).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import START_METHODS

import shoal

TUTORIAL = Path(__file__).resolve().parent.parent / "examples" / "tutorial"
PROGRAMS = sorted(p.name for p in TUTORIAL.glob("[0-9]_*.py"))
TIMEOUT = 60.0
END = ["", "All data written and read."]

# sets the start method the usual way, then runs the program as __main__ (spawn and
# forkserver children re-import it from its path, as they would a script)
DRIVER = (
    "import multiprocessing, runpy, sys\n"
    "if sys.argv[1] != 'default':\n"
    "    multiprocessing.set_start_method(sys.argv[1])\n"
    "runpy.run_path(sys.argv[2], run_name='__main__')\n"
)


def to_stdlib(source: str) -> str:
    """The program with its import lines pointed at the standard library."""
    source = re.sub(
        r"^import shoal as multiprocessing$", "import multiprocessing", source, flags=re.M
    )
    return re.sub(r"^from shoal import ", "from multiprocessing import ", source, flags=re.M)


def run_program(path: Path, args: list[str], **environment: str) -> subprocess.CompletedProcess:
    """Run Python with ``args`` in the directory of the program at ``path``, in this
    environment (buffered, as a program's output is in a pipe) plus ``environment``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(environment)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=path.parent,
        env=env,
        check=False,
    )


def run(path: Path, method: str = "default") -> list[str]:
    """Run the program at ``path``; return its output lines, after checking that it
    exited 0 and wrote nothing to stderr (no traceback, no warning)."""
    result = run_program(path, ["-c", DRIVER, method, str(path)])
    report = f"{path.name} ({method}):\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert result.stderr == "", report
    return result.stdout.splitlines()


def stdlib_copy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"stdlib_{name}"
    path.write_text(to_stdlib((TUTORIAL / name).read_text()))
    return path


# ---- the programs' text ---------------------------------------------------------------


@pytest.mark.parametrize("name", PROGRAMS)
def test_only_the_import_lines_name_shoal(name):
    """The port is the standard library's program with other import lines, nothing else."""
    tree = ast.parse((TUTORIAL / name).read_text())
    imports = [
        node
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and node.module == "shoal")
        or (isinstance(node, ast.Import) and any(a.name == "shoal" for a in node.names))
    ]
    assert imports, f"{name} does not import shoal"
    for node in imports:
        if isinstance(node, ast.Import):  # only ever as the standard library's name
            assert [(a.name, a.asname) for a in node.names] == [("shoal", "multiprocessing")]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "shoal" not in names, f"{name} uses shoal beyond its import lines"
    assert "if __name__ == '__main__':" in (TUTORIAL / name).read_text()
    assert ast.get_docstring(tree), f"{name} has no docstring"


def test_the_tutorial_is_complete():
    assert PROGRAMS == [
        "1_process.py",
        "2_pool.py",
        "3_queue.py",
        "4_queue_in_pool.py",
        "5_manager_queue.py",
        "6_manager_lock.py",
    ]
    readme = (TUTORIAL / "README.md").read_text()
    for name in PROGRAMS:
        assert name in readme


# ---- each program's output --------------------------------------------------------------


def check_process(lines: list[str]) -> None:
    parent = re.fullmatch(r"Parent process (\d+)\.", lines[0])
    child = re.fullmatch(r"Run child process test \((\d+)\)\.\.\.", lines[2])
    assert parent and child, lines
    assert lines[1] == "Process will start." and lines[3] == "Process end.", lines
    assert len(lines) == 4 and parent[1] != child[1], lines


def check_pool(lines: list[str]) -> None:
    parent = re.fullmatch(r"Parent process (\d+)\.", lines[0])
    assert parent, lines
    assert lines[-1] == "All subprocesses done.", lines
    rest = lines[1:-1]
    assert rest.count("Waiting for all subprocesses done...") == 1, lines
    runs = [re.fullmatch(r"Run task (\d) \((\d+)\)\.\.\.", line) for line in rest]
    ends = [re.fullmatch(r"Task (\d) runs (\d+\.\d\d) seconds\.", line) for line in rest]
    assert sorted(m[1] for m in runs if m) == list("01234"), lines
    assert sorted(m[1] for m in ends if m) == list("01234"), lines
    assert len(rest) == 11, lines  # nothing else
    workers = {m[2] for m in runs if m}
    assert parent[1] not in workers
    assert len(workers) <= max(1, shoal.process_cpu_count()), lines
    assert all(float(m[2]) >= 0.29 for m in ends if m), lines


def check_reader(lines: list[str], everything: bool) -> None:
    """Put A, B, C in order; the reader's Gets a first part of them, in order (all of
    them when the writer had finished first)."""
    assert lines[-2:] == END, lines
    body = lines[:-2]
    puts = [line for line in body if line.startswith("Put ")]
    gets = [line for line in body if line.startswith("Get ")]
    assert puts == [f"Put {v} to queue..." for v in "ABC"], lines
    expected = [f"Get {v} from queue." for v in "ABC"]
    assert gets == (expected if everything else expected[: len(gets)]), lines
    assert len(body) == len(puts) + len(gets), lines


def check_sequential_queue(lines: list[str]) -> None:
    # the writer was joined before the reader started: everything, in this order
    check_reader(lines, everything=True)
    assert lines[:3] == [f"Put {v} to queue..." for v in "ABC"], lines


CHECKS = {
    "1_process.py": check_process,
    "2_pool.py": check_pool,
    "3_queue.py": check_sequential_queue,
    "4_queue_in_pool.py": lambda lines: check_reader(lines, everything=False),
    "5_manager_queue.py": lambda lines: check_reader(lines, everything=False),
    "6_manager_lock.py": lambda lines: check_reader(lines, everything=False),
}


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("name", PROGRAMS)
def test_program_runs_on_shoal(name, method):
    CHECKS[name](run(TUTORIAL / name, method))


@pytest.mark.parametrize("name", [n for n in PROGRAMS if n != "4_queue_in_pool.py"])
def test_program_prints_the_same_with_the_standard_library(name, tmp_path):
    """The control: pointed back at multiprocessing, the program behaves the same (so the
    checks above check the tutorial, not something shoal made up)."""
    CHECKS[name](run(stdlib_copy(tmp_path, name)))


# ---- program 4: the one the standard library cannot run -------------------------------


def test_queue_in_pool_moves_nothing_with_the_standard_library(tmp_path):
    """With multiprocessing the program exits 0 and prints only its last line: each
    apply_async result holds the RuntimeError, which the program never asks for."""
    assert run(stdlib_copy(tmp_path, "4_queue_in_pool.py")) == END


def load(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import the program at ``path`` as a module that every start method's children
    can import too (they get the parent's sys.path)."""
    monkeypatch.syspath_prepend(str(path.parent))
    module = importlib.import_module(path.stem)
    monkeypatch.delitem(sys.modules, path.stem)  # taken out again after the test
    monkeypatch.setitem(sys.modules, path.stem, module)
    return module


def test_queue_in_pool_standard_library_error_is_the_tutorials(ctx, tmp_path, monkeypatch):
    """What the program's results hold in the standard library: the tutorial's error."""
    module = load(stdlib_copy(tmp_path, "4_queue_in_pool.py"), monkeypatch)
    q = ctx.Queue()
    with ctx.Pool(1) as pool:
        pw = pool.apply_async(module.write, args=(q,))
        pw.wait(TIMEOUT)
        assert pw.ready() and not pw.successful()
        with pytest.raises(RuntimeError, match="Queue objects should only be shared"):
            pw.get(TIMEOUT)
    q.close()
    q.join_thread()


def test_queue_in_pool_works_on_shoal(ctx, monkeypatch):
    """The same tasks on shoal: both succeed, and a reader that starts after the writer
    (the tutorial's race taken out) empties the queue.  (What they print is checked by
    test_program_runs_on_shoal: a forkserver started by an earlier test writes to
    that test's captured stdout, not this one's.)"""
    module = load(TUTORIAL / "4_queue_in_pool.py", monkeypatch)
    q = shoal.Queue()
    pool = shoal.Pool(2, context=ctx)
    try:
        pw = pool.apply_async(module.write, args=(q,))
        assert pw.get(TIMEOUT) is None
        assert q.qsize() == 3
        pr = pool.apply_async(module.read, args=(q,))
        assert pr.get(TIMEOUT) is None
        assert pw.successful() and pr.successful()
    finally:
        pool.close()
        pool.join()
    assert q.empty()
    q.close()


def test_queue_in_pool_on_shoal_warns_of_nothing(ctx, monkeypatch):
    """Run as the tutorial runs it (no get()): nothing failed, so join() has no
    UncollectedTaskErrorWarning to give (filterwarnings=error would fail the test)."""
    module = load(TUTORIAL / "4_queue_in_pool.py", monkeypatch)
    q = shoal.Queue()
    p = shoal.Pool(context=ctx)
    pw = p.apply_async(module.write, args=(q,))
    pr = p.apply_async(module.read, args=(q,))
    p.close()
    p.join()
    assert pw.successful() and pr.successful()
    while not q.empty():  # what the racing reader left behind
        assert q.get(False) in "ABC"
    q.close()


def test_stdlib_copy_rewrites_only_import_lines():
    source = (TUTORIAL / "6_manager_lock.py").read_text()
    rewritten = to_stdlib(source)
    assert "import multiprocessing\nfrom multiprocessing import Pool\n" in rewritten
    changed = [(a, b) for a, b in zip(source.splitlines(), rewritten.splitlines()) if a != b]
    assert changed == [
        ("import shoal as multiprocessing", "import multiprocessing"),
        ("from shoal import Pool", "from multiprocessing import Pool"),
    ]


# ---- on a Ray cluster (#13): only the environment variable added ---------------------------

# The programs' own lines (the driver's): what Ray's workers print reaches the driver
# asynchronously, prefixed with the worker, and deduplicated, so it is not checked.
DRIVER_LINES = {
    "1_process.py": ["Process will start.", "Process end."],
    "2_pool.py": ["Waiting for all subprocesses done...", "All subprocesses done."],
    "4_queue_in_pool.py": END,
    "5_manager_queue.py": END,
    "6_manager_lock.py": END,
}


@pytest.mark.parametrize("name", sorted(DRIVER_LINES))
def test_program_runs_on_a_ray_cluster_with_only_the_environment_changed(name, ray_cluster):
    """``SHOAL_CONTEXT=ray``: the module-level ``Pool``, ``Queue`` and ``Manager`` are the
    cluster's (the session's cluster, ``SHOAL_RAY_ADDRESS``), the program unchanged.
    Not program 3: its ``Process`` is a local one (forked), and a cluster queue cannot
    go through fork() (it raises, tests/test_ray.py); program 1 shares nothing."""
    path = TUTORIAL / name
    result = run_program(path, [str(path)], SHOAL_CONTEXT="ray", SHOAL_RAY_ADDRESS=ray_cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    mine = [line for line in result.stdout.splitlines() if "pid=" not in line]
    mine = [line for line in mine if not line.startswith(("Parent process", "Run child"))]
    assert [line for line in mine if line in DRIVER_LINES[name]] == DRIVER_LINES[name], mine
