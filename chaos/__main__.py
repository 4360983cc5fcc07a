"""Run the chaos scenarios: ``python -m chaos [--quick] [--only a,b] [--json FILE]``.

Each scenario runs in a child process inside a private mount namespace with its own
tmpfs on ``/dev/shm`` (needs root and ``unshare``), prints one figure line, and fails
the run if one of its ``HOLDS`` figures is not 0.  ``--seconds`` sets how long each
scenario breaks things (default 30; ``--quick``: 4).

Exit status: 0 when every scenario held; 1 when one did not (or crashed); 2 for bad
arguments or when a private ``/dev/shm`` cannot be made.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def discover() -> dict[str, str]:
    found = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("scenario_"):
            found[info.name[len("scenario_") :]] = f"{__package__}.{info.name}"
    return dict(sorted(found.items()))


def _inside(name: str, seconds: float) -> int:
    """In the private namespace: run one scenario, print its figures as JSON."""
    module = importlib.import_module(discover()[name])
    figures = module.run(seconds)
    figures["holds"] = list(module.HOLDS)
    print("CHAOS-FIGURES " + json.dumps(figures), flush=True)
    return 0


def _run_isolated(name: str, seconds: float, shm_size: str) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    inner = (
        f"mount -t tmpfs -o size={shm_size},mode=1777 shoal-chaos /dev/shm && "
        f'cd "{root}" && exec "{sys.executable}" -m chaos --inside {name} --seconds {seconds}'
    )
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
            capture_output=True,
            text=True,
            timeout=seconds * 4 + 180,
        )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {time.monotonic() - started:.0f} s", "log": exc.stderr}
    for line in done.stdout.splitlines():
        if line.startswith("CHAOS-FIGURES "):
            figures: dict[str, Any] = json.loads(line[len("CHAOS-FIGURES ") :])
            figures["wall_s"] = round(time.monotonic() - started, 1)
            if done.returncode != 0:
                figures["error"] = f"exit {done.returncode}"
            return figures
    return {"error": f"exit {done.returncode}, no figures", "log": done.stderr[-4000:]}


def _line(name: str, figures: dict[str, Any]) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in figures.items() if k not in ("holds", "log"))
    return f"{name:<22} {shown}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s a scenario (CI)")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--only", default="", help="scenario names, comma-separated")
    parser.add_argument("--json", default=None, help="write every scenario's figures here")
    parser.add_argument("--shm-size", default="512m")
    parser.add_argument("--inside", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (4.0 if args.quick else 30.0)
    if args.inside:
        return _inside(args.inside, seconds)
    scenarios = discover()
    wanted = [n for n in args.only.split(",") if n] or list(scenarios)
    unknown = [n for n in wanted if n not in scenarios]
    if unknown:
        print(f"unknown scenarios: {unknown}; there are {list(scenarios)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("the chaos suite needs root and unshare (a private /dev/shm)", file=sys.stderr)
        return 2
    results, failed = {}, []
    for name in wanted:
        figures = _run_isolated(name, seconds, args.shm_size)
        results[name] = figures
        broken = [k for k in figures.get("holds", ()) if figures.get(k)]
        if "error" in figures or broken:
            failed.append(name)
            figures["FAILED"] = broken or figures.get("error")
        print(_line(name, figures), flush=True)
        if "log" in figures and figures.get("error"):
            print(figures["log"], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if failed:
        print(f"chaos: {len(failed)} of {len(wanted)} scenarios failed: {failed}")
        return 1
    print(f"chaos: all {len(wanted)} scenarios held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
