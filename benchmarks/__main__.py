"""Run shoal's benchmarks: ``python -m benchmarks [--quick] [--only lock] [--json FILE]``.

Every module ``benchmarks/bench_<name>.py`` that defines ``BENCHMARK`` (a
:class:`benchmarks._harness.Benchmark`) is found and run, in name order: adding a
benchmark is adding a file.  ``--only`` takes benchmark names (``lock``) or single
groups (``lock.contended``), comma-separated.

Exit status: 0 when every benchmark ran; 1 when one crashed (its traceback is
printed and the others still run); 2 for bad arguments; 3 when a floor was missed
and ``--check-floors`` was given (never under ``--quick``: CI's smoke run checks
that the benchmarks run, not how fast).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import TextIO

from ._harness import Benchmark, Config, Reporter, run_benchmark

EXIT_CRASHED = 1
EXIT_USAGE = 2
EXIT_FLOOR = 3


def discover() -> dict[str, str]:
    """``{benchmark name: module name}`` for every ``bench_*.py`` next to this file."""
    found = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("bench_"):
            found[info.name[len("bench_") :]] = f"{__package__}.{info.name}"
    return dict(sorted(found.items()))


def _parse_only(value: str | None, known: dict[str, str]) -> dict[str, set[str]]:
    """``--only`` -> ``{benchmark: groups}`` in run order (an empty set: every group)."""
    if not value:
        return {name: set() for name in known}
    wanted: dict[str, set[str] | None] = {}  # None: the whole benchmark
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, group = item.partition(".")
        if name not in known:
            raise ValueError(f"no benchmark named {name!r}; there are: {', '.join(known)}")
        if not group:
            wanted[name] = None
            continue
        groups = wanted.setdefault(name, set())
        if groups is not None:  # else the whole benchmark was asked for already
            groups.add(group)
    return {name: wanted[name] or set() for name in known if name in wanted}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure shoal next to the standard library: medians and ratios.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, 2 repeats: checks that the benchmarks run (CI), figures mean nothing",
    )
    parser.add_argument(
        "--only", metavar="NAME[,NAME]", help="benchmarks (lock) or groups (lock.contended)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write one JSON line per result")
    parser.add_argument(
        "--repeats", type=int, metavar="N", help="timed repeats per case (default 7, quick 2)"
    )
    parser.add_argument(
        "--start-method",
        default="fork",
        choices=multiprocessing.get_all_start_methods(),
        help="start method of every worker (default fork: per-operation cost is the same "
        "under any, and fork starts fastest)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds any one wait for a worker may take before it counts as hung (120)",
    )
    parser.add_argument(
        "--check-floors",
        action="store_true",
        help="exit with status 3 if a floor is missed (ignored with --quick)",
    )
    parser.add_argument("--list", action="store_true", help="list benchmarks and groups, exit")
    parser.add_argument(
        "--versions", action="store_true", help="print the environment and peer versions, exit"
    )
    return parser


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Entry point of ``python -m benchmarks``; returns the exit status."""
    args = _parser().parse_args(argv)
    known = discover()
    try:
        selected = _parse_only(args.only, known)
    except ValueError as exc:
        print(f"python -m benchmarks: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    if repeats < 1:
        print("python -m benchmarks: error: --repeats must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    config = Config(
        start_method=args.start_method, repeats=repeats, quick=args.quick, timeout=args.timeout
    )

    status = 0
    benches: list[Benchmark] = []
    for name in selected:
        try:
            bench = importlib.import_module(known[name]).BENCHMARK
        except Exception:
            print(f"benchmark {name} failed to import:\n{traceback.format_exc()}", file=sys.stderr)
            status = EXIT_CRASHED
            continue
        unknown = selected[name] - {g.key for g in bench.groups}
        if unknown:
            print(
                f"python -m benchmarks: error: benchmark {name} has no group "
                f"{', '.join(sorted(unknown))}; it has: {', '.join(g.key for g in bench.groups)}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        benches.append(bench)

    json_out = open(args.json, "w") if args.json else None  # noqa: SIM115 (closed below)
    try:
        reporter = Reporter(config, out, json_out)
        if args.list:
            for bench in benches:
                print(f"{bench.name}: {bench.question}", file=out)
                for group in bench.groups:
                    print(f"  {bench.name}.{group.key}: {group.title}", file=out)
            return status
        if args.versions:
            reporter.versions(benches)
            return status
        reporter.run_header()
        began = time.monotonic()
        floors_held = True
        for bench in benches:
            try:
                floors_held &= run_benchmark(bench, config, reporter, selected[bench.name])
            except KeyboardInterrupt:
                print("\ninterrupted", file=sys.stderr)
                return 130
            except Exception:
                print(
                    f"\nbenchmark {bench.name} crashed:\n{traceback.format_exc()}", file=sys.stderr
                )
                status = EXIT_CRASHED
        print(f"\n{len(benches)} benchmark(s) in {time.monotonic() - began:.1f} s", file=out)
        if status == 0 and args.check_floors and not config.quick and not floors_held:
            status = EXIT_FLOOR
        return status
    finally:
        if json_out is not None:
            json_out.close()


if __name__ == "__main__":
    sys.exit(main())
