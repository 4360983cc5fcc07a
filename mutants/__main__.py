"""Run the mutation check: ``python -m mutants [--only a,b] [--list]``.

For each mutant: copy the working tree (tracked and untracked files git does not
ignore) into a temporary directory, apply the mutant, install that copy of shoal
into a folder of its own (``pip install --no-deps --target``, which builds
``shoal._core`` from the mutated sources), put it first on ``PYTHONPATH`` (it shadows
the installed shoal, in every child process too), and run the mutant's tests.  A mutant is
*killed* when they fail.  Exit status: 0 when every mutant was killed, 1 when one
survived (or could not be applied), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .catalogue import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parent.parent


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _apply(tree: Path, mutant: Mutant) -> None:
    path = tree / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != mutant.occurrences:
        raise RuntimeError(
            f"{mutant.name}: the snippet occurs {text.count(mutant.old)} times in "
            f"{mutant.path}, not {mutant.occurrences} (the code moved: update "
            "mutants/catalogue.py)"
        )
    path.write_text(text.replace(mutant.old, mutant.new))


def _install(tree: Path) -> Path:
    target = tree / "_installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
         str(target), str(tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


def run_one(mutant: Mutant) -> tuple[bool, float, str]:
    """(killed, seconds, the tail of the test output)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"shoal-mutant-{mutant.name}-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        _apply(tree, mutant)
        installed = _install(tree)
        env = {**os.environ, "PYTHONPATH": f"{installed}{os.pathsep}{tree / 'tests'}"}
        # the mutated shoal must be the one that runs, or the check proves nothing
        probe = subprocess.run(
            [sys.executable, "-c", "import shoal; print(shoal.__file__)"],
            cwd=tree, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if not probe.stdout.startswith(str(installed)):
            raise RuntimeError(f"{mutant.name}: the mutated shoal was not imported: {probe}")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             *mutant.tests],
            cwd=tree, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    return done.returncode != 0, time.monotonic() - started, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutants", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="mutant names, comma-separated")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:<32} {m.path}: {m.why}")
        return 0
    wanted = [n for n in args.only.split(",") if n] or list(by_name)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        print(f"unknown mutants: {unknown}", file=sys.stderr)
        return 2
    survived = []
    for name in wanted:
        mutant = by_name[name]
        try:
            killed, seconds, tail = run_one(mutant)
        except Exception as exc:  # not applied: as bad as surviving
            killed, seconds, tail = False, 0.0, str(exc)
        verdict = "killed" if killed else "SURVIVED"
        last = tail.splitlines()[-1] if tail else ""
        print(f"{name:<32} {verdict:<9} {seconds:5.0f} s  {last}", flush=True)
        if not killed:
            survived.append(name)
    if survived:
        print(f"mutants: {len(survived)} of {len(wanted)} survived: {survived}")
        return 1
    print(f"mutants: all {len(wanted)} killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
