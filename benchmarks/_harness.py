"""The benchmark harness: cases, interleaved repeats, medians, ratios, tables, JSON.

Vocabulary (every ``bench_*.py`` module builds one :class:`Benchmark`)::

    Benchmark  one question, one script (bench_lock.py: "what does a lock cost?")
      Group    one table: the same measurement for several peers; the first case is
               the standard library's and the denominator of the ratio column
        Case   one row: setup(config) -> state, run(state, n) -> Sample, teardown(state)
      Floor    a ratio between two cases that must hold, or a time one case must stay
               within (printed; enforced only with --check-floors, never in --quick)

How a group is measured::

    setup every case            pools, managers, objects: never timed
    warm-up: run each case once with a tenth of its operations (not recorded)
    repeat R times, interleaved across the cases, alternating direction
        A B C D, D C B A, A B C D, ...   so a slow drift of the machine (another
                                         job starting, the CPU clocking down) falls
                                         on every case alike
    teardown every case
    report the median rate and the interquartile range (IQR) of the R samples

A :class:`Sample` is counted *inside* the process doing the operations: the worker
reads ``time.perf_counter()`` after its own start-up and set-up (and, with several
workers, after they all passed a start barrier), then runs the loop and reads it
again.  Process start-up is never inside a per-operation figure.  On Linux
``perf_counter`` is CLOCK_MONOTONIC, one clock for every process, so the samples of
several workers combine into one span (:meth:`Sample.combine`).

Hang guard: every wait for a worker has a deadline (``Config.timeout``); a worker
past it is killed and the benchmark counts as crashed.  The timed loops themselves
make plain blocking calls, so they measure what users write.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from importlib import util as importlib_util
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any, TextIO

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "Case",
    "Config",
    "Floor",
    "Group",
    "Reporter",
    "Resources",
    "Result",
    "Sample",
    "close_pool",
    "environment",
    "peer_version",
    "run_benchmark",
    "run_in_pool",
    "run_processes",
    "run_tasks_in_pool",
    "teardown",
    "with_manager",
]


class BenchmarkError(RuntimeError):
    """A benchmark could not produce a figure: a worker crashed, hung or failed."""


@dataclass(frozen=True)
class Sample:
    """``ops`` operations done between ``start`` and ``end`` (perf_counter seconds).

    Workers build it around their timed loop and send it back; only the loop is
    inside ``end - start``.
    """

    ops: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        """Length of the timed span."""
        return self.end - self.start

    @property
    def rate(self) -> float:
        """Operations per second over the span."""
        return self.ops / self.seconds if self.seconds > 0 else math.inf

    @classmethod
    def combine(cls, samples: Iterable[Sample]) -> Sample:
        """One span covering several workers: all their operations, first start to last
        end (so a worker that finishes early does not inflate the total rate)."""
        samples = list(samples)
        return cls(
            sum(s.ops for s in samples),
            min(s.start for s in samples),
            max(s.end for s in samples),
        )


@dataclass(frozen=True)
class Config:
    """How this run measures: shared by every case.

    Attributes:
        start_method: multiprocessing start method for every worker (``fork`` by
            default: per-operation cost does not depend on it, and fork starts fast).
        repeats: timed repeats per case.
        quick: smoke-test sizes (``Case.quick_n``); figures mean nothing then.
        warmup: run each case once, untimed, before the repeats.
        timeout: seconds any single wait for a worker may take.
    """

    start_method: str = "fork"
    repeats: int = 7
    quick: bool = False
    warmup: bool = True
    timeout: float = 120.0

    @property
    def ctx(self) -> Any:
        """The multiprocessing context for ``start_method``."""
        return multiprocessing.get_context(self.start_method)


@dataclass(frozen=True)
class Case:
    """One row of a table: one peer doing the group's measurement one way.

    Attributes:
        key: short id, unique in its group, used by floors and in JSON.
        label: what is measured, as a user would write it (``shoal.Lock``).
        peer: the library measured: ``multiprocessing`` for the standard library.
        run: ``run(state, n) -> Sample``: do ``n`` operations, timed inside the worker.
        n: operations per repeat in a full run: aim for 0.1 to 0.5 s.
        quick_n: operations per repeat under ``--quick`` (default n / 1000, >= 10).
        where: how the object reached the worker (``Pool task arg``, ``Process arg``).
        setup: ``setup(config) -> state`` (default: the state is the config).
        teardown: ``teardown(state)``, also after a failure.
        requires: importable modules this peer needs; missing -> row skipped with a note.
        unavailable: why this peer cannot be measured here at all (printed in place of
            a figure: ``multiprocessing.Queue`` cannot be a Pool task argument).  Such a
            row is never the first of its group: the first is the denominator.
    """

    key: str
    label: str
    peer: str
    run: Callable[[Any, int], Sample]
    n: int
    quick_n: int | None = None
    where: str = ""
    setup: Callable[[Config], Any] | None = None
    teardown: Callable[[Any], None] | None = None
    requires: tuple[str, ...] = ()
    unavailable: str | None = None

    def ops(self, config: Config) -> int:
        """Operations per repeat for this run."""
        if config.quick:
            return self.quick_n if self.quick_n is not None else max(10, self.n // 1000)
        return self.n

    def missing(self) -> list[str]:
        """Required modules that cannot be imported here."""
        return [m for m in self.requires if importlib_util.find_spec(m) is None]


@dataclass(frozen=True)
class Group:
    """One table: ``cases[0]`` is the standard library's row and the denominator.

    ``time_per_op``: print each row's median as a time per operation (``1 / rate``:
    ``41.2 ms``) rather than a rate, for groups where an operation is slow and its
    duration is the figure users ask about (a pool's start-up, a latency).  The
    ratio column stays a ratio of rates: above 1 is faster than the baseline.
    """

    key: str
    title: str
    unit: str
    cases: Sequence[Case]
    time_per_op: bool = False


@dataclass(frozen=True)
class Floor:
    """``case`` must reach at least ``at_least`` times ``versus`` (``group/key`` ids).

    With ``versus`` empty the floor is absolute: the case's median rate must reach
    ``at_least`` operations a second.  :meth:`within` states such a floor as a time.
    """

    case: str
    versus: str
    at_least: float
    text: str

    @classmethod
    def within(cls, case: str, seconds: float, text: str) -> Floor:
        """``case``'s median time per operation must be at most ``seconds``."""
        return cls(case, "", 1.0 / seconds, text)


@dataclass(frozen=True)
class Benchmark:
    """One question (one ``bench_*.py``): its groups and floors."""

    name: str
    question: str
    groups: Sequence[Group]
    floors: Sequence[Floor] = ()


@dataclass
class Result:
    """The figures of one case."""

    benchmark: str
    group: Group
    case: Case
    samples: list[float] = field(default_factory=list)
    skipped: str | None = None
    ratio: float | None = None

    @property
    def id(self) -> str:
        """``group/key``, as floors name it."""
        return f"{self.group.key}/{self.case.key}"

    @property
    def median(self) -> float:
        """Median rate of the repeats."""
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        """(first, third) quartile of the repeats; both the sample if there is one."""
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3


# ---- running workers ------------------------------------------------------------------


def _process_main(
    target: Callable[..., Any], start: Any, args: tuple[Any, ...], conn: Connection
) -> None:
    """Body of a worker process: run ``target(start, *args)``, send back the outcome."""
    try:
        outcome: tuple[str, Any] = ("ok", target(start, *args))
    except BaseException:
        outcome = ("error", traceback.format_exc())
    try:
        conn.send(outcome)
    finally:
        conn.close()


def run_processes(
    config: Config, target: Callable[..., Any], args_list: Sequence[tuple[Any, ...]]
) -> list[Any]:
    """Start one process per ``args`` tuple running ``target(start, *args)``; return the
    results in order.

    ``start`` is a ``Barrier`` of all the workers: a worker does its set-up and
    warm-up, calls ``start.wait(timeout)`` and only then reads the clock, so the
    timed loops begin together and no process start-up is inside them.  Objects in
    ``args`` reach the worker as ``Process`` arguments (inherited under fork,
    pickled for spawning otherwise), the only way a ``multiprocessing.Lock`` can.

    Raises:
        BenchmarkError: a worker raised, died or missed ``config.timeout``.
    """
    ctx = config.ctx
    start = ctx.Barrier(len(args_list))
    procs: list[Any] = []
    readers: list[Connection] = []
    try:
        for args in args_list:
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_process_main, args=(target, start, args, writer), daemon=True
            )
            proc.start()
            writer.close()  # the child's copy is the only writer: EOF if it dies
            procs.append(proc)
            readers.append(reader)
        deadline = time.monotonic() + config.timeout
        outcomes: dict[int, tuple[str, Any]] = {}
        pending = list(range(len(readers)))
        while pending:
            left = deadline - time.monotonic()
            ready = wait_connections([readers[i] for i in pending], timeout=max(left, 0))
            if not ready:
                raise BenchmarkError(
                    f"{len(pending)} worker(s) of {target.__qualname__} still running after "
                    f"{config.timeout:.0f} s (--timeout); killed them"
                )
            for i in [i for i in pending if readers[i] in ready]:
                try:
                    outcomes[i] = readers[i].recv()
                except EOFError:
                    procs[i].join(5)
                    raise BenchmarkError(
                        f"worker {procs[i].pid} of {target.__qualname__} died "
                        f"(exit code {procs[i].exitcode}) before sending its result"
                    ) from None
                pending.remove(i)
        for proc in procs:
            proc.join(config.timeout)
        results = []
        for i in range(len(procs)):
            status, value = outcomes[i]
            if status != "ok":
                raise BenchmarkError(f"worker of {target.__qualname__} failed:\n{value}")
            results.append(value)
        return results
    finally:
        for proc in procs:  # only ever our own children, by their Process object
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for reader in readers:
            reader.close()


def run_in_pool(config: Config, pool: Any, func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``pool.apply_async(func, args).get(config.timeout)``, with a clear error."""
    try:
        return pool.apply_async(func, args).get(config.timeout)
    except multiprocessing.TimeoutError:
        raise BenchmarkError(
            f"Pool task {func.__qualname__} still running after {config.timeout:.0f} s (--timeout)"
        ) from None


def run_tasks_in_pool(
    config: Config, pool: Any, tasks: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[Any]:
    """Submit every ``(func, args)`` at once (they run side by side, one per worker, if
    the pool has a worker for each) and return their results in order, each awaited
    with the ``config.timeout`` deadline of :func:`run_in_pool`."""
    pending = [(func, pool.apply_async(func, args)) for func, args in tasks]
    deadline = time.monotonic() + config.timeout
    results = []
    for func, async_result in pending:
        try:
            results.append(async_result.get(max(deadline - time.monotonic(), 0)))
        except multiprocessing.TimeoutError:
            raise BenchmarkError(
                f"Pool task {func.__qualname__} still running after {config.timeout:.0f} s "
                "(--timeout)"
            ) from None
    return results


class Resources:
    """What a case set up: the objects measured and the Pool and Manager they use.

    ``close()`` (the cases' ``teardown``) ends the Pool, closes the objects that
    shoal made and shuts the Manager down.
    """

    def __init__(self, config: Config, *objects: Any, pool: Any = None, manager: Any = None):
        self.config = config
        self.objects = objects
        self.pool = pool
        self.manager = manager

    @property
    def obj(self) -> Any:
        """The first (often the only) object measured."""
        return self.objects[0]

    def close(self) -> None:
        if self.pool is not None:
            close_pool(self.pool)
        for obj in self.objects:
            if type(obj).__module__.startswith("shoal") and hasattr(obj, "close"):
                obj.close()
        if self.manager is not None:
            self.manager.shutdown()


def teardown(state: Any) -> None:
    """``Case.teardown`` for any state with a ``close()``."""
    state.close()


def with_manager(config: Config, make: Callable[[Any], Any]) -> tuple[Any, Any]:
    """Start a Manager and return ``(make(manager), manager)``; the Manager is shut
    down again if ``make`` fails, so a failed set-up leaves no server behind."""
    manager = config.ctx.Manager()
    try:
        return make(manager), manager
    except BaseException:
        manager.shutdown()
        raise


def close_pool(pool: Any, grace: float = 10.0) -> None:
    """Close and join a Pool, terminating it if its workers are not gone after ``grace``.

    ``Pool.join()`` takes no timeout; a stuck task (after a failure) must not hang
    the whole run, so a timer terminates the pool in that case.
    """
    pool.close()
    watchdog = threading.Timer(grace, pool.terminate)
    watchdog.daemon = True
    watchdog.start()
    try:
        pool.join()
    finally:
        watchdog.cancel()


# ---- measuring ------------------------------------------------------------------------


def _teardown(live: list[tuple[Result, Any]], quietly: bool) -> None:
    """Tear every case down, in reverse order, even when one teardown fails."""
    failed = None
    for result, state in reversed(live):
        if result.case.teardown is None:
            continue
        try:
            result.case.teardown(state)
        except Exception as exc:
            if quietly:
                traceback.print_exc()
            failed = failed or exc
    if failed is not None and not quietly:
        raise BenchmarkError("a case's teardown failed") from failed


def _measure_group(
    benchmark: str, group: Group, config: Config, reporter: Reporter
) -> list[Result]:
    results = [Result(benchmark, group, case) for case in group.cases]
    live: list[tuple[Result, Any]] = []
    for result in results:
        missing = result.case.missing()
        if result.case.unavailable is not None:
            result.skipped = result.case.unavailable
        elif missing:
            result.skipped = (
                f"not installed: {', '.join(missing)}; pip install '.[bench]' installs every peer"
            )
    try:
        for result in results:
            if result.skipped is None:
                case = result.case
                live.append((result, case.setup(config) if case.setup else config))
        if config.warmup:
            for result, state in live:
                result.case.run(state, max(1, result.case.ops(config) // 10))
        for repeat in range(config.repeats):
            order = live if repeat % 2 == 0 else live[::-1]
            for result, state in order:
                sample = result.case.run(state, result.case.ops(config))
                result.samples.append(sample.rate)
            reporter.progress()
    except BaseException:
        _teardown(live, quietly=True)  # the first error is the one to report
        raise
    _teardown(live, quietly=False)
    baseline = results[0]
    if baseline.samples:
        for result in results:
            if result.samples:
                result.ratio = result.median / baseline.median
    return results


def run_benchmark(bench: Benchmark, config: Config, reporter: Reporter, groups: set[str]) -> bool:
    """Measure ``bench`` (only the groups named, or all if empty) and report it.

    Returns:
        True if every floor held (or was not checked).
    """
    reporter.benchmark_header(bench)
    results: dict[str, Result] = {}
    for group in bench.groups:
        if groups and group.key not in groups:
            continue
        measured = _measure_group(bench.name, group, config, reporter)
        reporter.table(bench, group, measured)
        results.update((r.id, r) for r in measured)
    checks = []
    for floor in bench.floors:
        case = results.get(floor.case)
        if case is None or not case.samples:
            continue  # a group left out by --only, or a peer not installed
        if floor.versus:
            versus = results.get(floor.versus)
            if versus is None or not versus.samples:
                continue
            ratio = case.median / versus.median
        else:
            ratio = case.median  # an absolute floor compares the rate itself
        checks.append((floor, ratio, ratio >= floor.at_least))
    reporter.floors(bench, checks)
    return config.quick or all(held for _, _, held in checks)


# ---- the environment --------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(config: Config) -> dict[str, Any]:
    """What the figures depend on: recorded in every JSON line."""
    try:
        import shoal

        shoal_version: str | None = shoal.__version__
    except ImportError:
        shoal_version = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "shoal": shoal_version,
        "commit": _commit(),
        "start_method": config.start_method,
        "repeats": config.repeats,
        "quick": config.quick,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def peer_version(peer: str) -> str | None:
    """The installed version of a peer (the Python version for the standard library)."""
    if peer == "multiprocessing":
        return platform.python_version()
    try:
        return importlib_metadata.version(peer)
    except importlib_metadata.PackageNotFoundError:
        return None


# ---- reporting ----------------------------------------------------------------------


def _sig3(value: float) -> str:
    """3 significant digits, never in exponent form: ``0.00116``, ``1.00``, ``67.0``, ``512``."""
    value = float(f"{value:.3g}")  # round first: 999.6 -> 1000, not 1.00e+03
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


def format_rate(rate: float) -> str:
    """3 significant digits with a k/M/G suffix: ``9.87 M``, ``67.0 k``, ``512``."""
    rate = float(f"{rate:.3g}")
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= limit:
            return f"{_sig3(rate / limit)} {suffix}"
    return _sig3(rate)


def format_seconds(seconds: float) -> str:
    """3 significant digits in s, ms or µs: ``1.20 s``, ``41.3 ms``, ``812 µs``."""
    seconds = float(f"{seconds:.3g}")
    for limit, scale, suffix in ((1.0, 1.0, "s"), (1e-3, 1e3, "ms")):
        if seconds >= limit:
            return f"{_sig3(seconds * scale)} {suffix}"
    return f"{_sig3(seconds * 1e6)} µs"


def format_ratio(ratio: float) -> str:
    """Ratio to the baseline with 3 significant digits: ``0.00116x``, ``1.01x``, ``465x``."""
    return f"{_sig3(ratio)}x"


class Reporter:
    """Prints tables to ``out`` and, if given, writes JSON lines to ``json_out``."""

    def __init__(self, config: Config, out: TextIO, json_out: TextIO | None) -> None:
        self.config = config
        self.out = out
        self.json_out = json_out
        self.env = environment(config)
        self._dots = 0

    def _print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _json(self, record: dict[str, Any]) -> None:
        if self.json_out is not None:
            self.json_out.write(json.dumps({**record, **self.env}) + "\n")
            self.json_out.flush()

    def run_header(self) -> None:
        """One paragraph saying where and how everything below was measured."""
        env = self.env
        where = f"{env['python']} on {env['kernel']} {env['machine']}"
        where += f", {env['cpus_usable']}/{env['cpu_count']} CPUs usable"
        if env["cpu_model"]:
            where += f" ({env['cpu_model']})"
        if env["loadavg"]:
            where += f", load {env['loadavg'][0]:.2f}"
        where += f"; shoal {env['shoal']}"
        if env["commit"]:
            where += f" at {env['commit']}"
        self._print(where)
        c = self.config
        mode = "QUICK smoke run: tiny sizes, the figures mean nothing" if c.quick else "full run"
        self._print(
            f"{mode}; start method {c.start_method}; {c.repeats} repeat(s) per case, "
            "interleaved; rates are medians measured inside the workers"
        )

    def benchmark_header(self, bench: Benchmark) -> None:
        """The benchmark's name and question."""
        self._print()
        self._print(f"== {bench.name}: {bench.question}")

    def progress(self) -> None:
        """Called after each repeat (a dot on a terminal, so a long run shows life)."""
        if self.out.isatty():
            print(".", end="", file=self.out, flush=True)
            self._dots += 1

    def table(self, bench: Benchmark, group: Group, results: list[Result]) -> None:
        """Print one group's table and write its JSON lines."""
        if self._dots:
            print("\r" + " " * self._dots + "\r", end="", file=self.out)
            self._dots = 0
        self._print()
        self._print(f"{group.title}  [{group.unit}, median of {self.config.repeats}]")
        rows = [("case", "where", group.unit, "IQR", "x stdlib")]
        notes = [""]  # why a row has no figure: after the row, outside the columns
        for r in results:
            if r.skipped is not None:
                shown = "n/a" if r.case.unavailable is not None else "skipped"
                rows.append((r.case.label, r.case.where, shown, "", ""))
                notes.append(r.skipped)
                continue
            q1, q3 = r.quartiles
            rows.append(
                (
                    r.case.label,
                    r.case.where,
                    format_seconds(1 / r.median) if group.time_per_op else format_rate(r.median),
                    f"{100 * (q3 - q1) / r.median:.0f}%",
                    format_ratio(r.ratio) if r.ratio is not None else "-",
                )
            )
            notes.append("")
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row, note in zip(rows, notes):
            line = (
                f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
                f"{row[3]:>{widths[3]}}  {row[4]:>{widths[4]}}"
            )
            self._print(f"{line.rstrip()}  ({note})" if note else line.rstrip())
        for r in results:
            record: dict[str, Any] = {
                "kind": "skipped" if r.skipped else "case",
                "benchmark": bench.name,
                "group": group.key,
                "case": r.case.key,
                "label": r.case.label,
                "where": r.case.where,
                "peer": r.case.peer,
                "peer_version": peer_version(r.case.peer),
                "unit": group.unit,
                "baseline": results[0].case.key,
            }
            if r.skipped:
                record["reason"] = r.skipped
            else:
                q1, q3 = r.quartiles
                record.update(
                    ops_per_repeat=r.case.ops(self.config),
                    samples=r.samples,
                    median=r.median,
                    q1=q1,
                    q3=q3,
                    iqr=q3 - q1,
                    ratio=r.ratio,
                )
                if group.time_per_op:
                    record["median_seconds_per_op"] = 1 / r.median
            self._json(record)

    def floors(self, bench: Benchmark, checks: list[tuple[Floor, float, bool]]) -> None:
        """Print and record the floor checks: (floor, measured ratio, held); for an
        absolute floor (no ``versus``) the measured rate, printed as a time."""
        if checks:
            self._print()
            self._print("Floors (ratio of medians)")
        for floor, ratio, held in checks:
            verdict = "ok" if held else "BELOW FLOOR"
            if self.config.quick:
                verdict = "not checked (--quick)"
            record: dict[str, Any] = {
                "kind": "floor",
                "benchmark": bench.name,
                "case": floor.case,
                "versus": floor.versus,
                "at_least": floor.at_least,
                "ratio": ratio,
                "held": held,
                "checked": not self.config.quick,
            }
            if floor.versus:
                shown = f"{format_ratio(ratio)}, floor {floor.at_least:g}x"
            else:
                shown = f"{format_seconds(1 / ratio)}, limit {format_seconds(1 / floor.at_least)}"
                record.update(median_seconds=1 / ratio, limit_seconds=1 / floor.at_least)
            self._print(f"  {floor.text}: {shown}: {verdict}")
            self._json(record)

    def versions(self, benches: Iterable[Benchmark]) -> None:
        """``--versions``: the environment and the version of every peer measured."""
        for key, value in self.env.items():
            self._print(f"{key}: {value}")
        self._print(f"executable: {sys.executable}")
        peers = sorted({c.peer for b in benches for g in b.groups for c in g.cases})
        for peer in peers:
            self._print(f"peer {peer}: {peer_version(peer) or 'not installed'}")
