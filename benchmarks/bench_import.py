"""What does ``import shoal`` cost, next to ``import multiprocessing, concurrent.futures``?

Issue #11: a drop-in for ``multiprocessing`` must not make a program start slower
than the standard library's pair does.  Each repeat starts ``IMPORTS`` fresh
interpreters per row (``python -I``: no user site, no ``PYTHONPATH``, so nothing
but the installed packages), each timing only its import statement with
``time.perf_counter()`` (the interpreter's own start-up is outside the figure), and
the row's sample is the median of those interpreters.  The rows are interleaved as
every benchmark's are, so a busy machine weighs on each alike.

* ``import``: ``import multiprocessing, concurrent.futures`` (the baseline) vs
  ``import shoal``.  Floor: shoal no slower (1x).  ``import shoal`` binds nothing
  until a name is used (PEP 562), so what follows shows what a first use adds:
  ``shoal.Lock`` (the core, the memory layer and the primitives) and ``shoal.Pool``
  (the pool layer too), for information.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Callable

from ._harness import Benchmark, Case, Config, Floor, Group, Sample

IMPORTS = 20  # fresh interpreters per row and repeat (the "median of 20")
TIMER = "import time; t = time.perf_counter(); {}; print(time.perf_counter() - t)"


def _import_seconds(statement: str, timeout: float) -> float:
    """Seconds ``statement`` takes in a fresh interpreter, as that interpreter measures."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", TIMER.format(statement)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{statement!r} failed in a fresh interpreter:\n{done.stderr}")
    return float(done.stdout)


def _importing(statement: str) -> Callable[[Config, int], Sample]:
    def run(config: Config, n: int) -> Sample:
        median = statistics.median(_import_seconds(statement, config.timeout) for _ in range(n))
        return Sample(1, 0.0, median)

    return run


def _case(key: str, statement: str, peer: str) -> Case:
    return Case(key, statement, peer, _importing(statement), IMPORTS, quick_n=2)


BENCHMARK = Benchmark(
    name="import",
    question=__doc__.strip().splitlines()[0],
    groups=[
        Group(
            key="import",
            title=f"Import in a fresh interpreter (median of {IMPORTS} interpreters a repeat)",
            unit="import time",
            time_per_op=True,
            cases=[
                _case("stdlib", "import multiprocessing, concurrent.futures", "multiprocessing"),
                _case("shoal", "import shoal", "shoal"),
                _case("shoal-lock", "import shoal; shoal.Lock", "shoal"),
                _case("shoal-pool", "import shoal; shoal.Pool", "shoal"),
            ],
        ),
    ],
    floors=[
        Floor(
            "import/shoal",
            "import/stdlib",
            1,
            "import shoal vs import multiprocessing, concurrent.futures",
        ),
    ],
)
