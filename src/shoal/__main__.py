"""python -m shoal: demo (a tour of what shoal fixes), doctor (what this machine offers
shoal, and which shared-memory segments are live or left over)."""

from __future__ import annotations

import argparse
import sys

from ._demo import demo
from ._doctor import doctor
from ._ray_demo import cluster_demo

_DESCRIPTION = "shoal's command line: a tour of what it fixes, and a check of this machine."
_DOCTOR = (
    "Print what this machine offers shoal (Python, start methods, CPUs, /dev/shm) and "
    "every shoal segment in /dev/shm: live (a process holding it is alive), leftover "
    "(every holder died; --reap removes them, as the next shoal process's sweep would) "
    "or cannot tell (another user's, or not shoal's layout: never opened or removed)."
)
_DEMO = (
    "A tour of what shoal fixes, each scene the standard library's failure and shoal's "
    "answer: a lock passed to pool tasks, a lock owner that died, a barrier party that "
    "died, the tutorial's queue through a pool, a pool worker killed mid-task."
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m shoal``."""
    parser = argparse.ArgumentParser(prog="python -m shoal", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    demo_parser = commands.add_parser("demo", help="a tour of what shoal fixes", description=_DEMO)
    demo_parser.add_argument(
        "--start-method",
        choices=["fork", "spawn", "forkserver"],
        help="the start method of its processes (default: the platform default)",
    )
    demo_parser.add_argument(
        "--cluster",
        action="store_true",
        help="the tutorial's programs on a local two-node Ray cluster (needs shoal[ray])",
    )
    doctor_parser = commands.add_parser(
        "doctor",
        help="check this machine; list live and leftover segments",
        description=_DOCTOR,
    )
    doctor_parser.add_argument(
        "--reap", action="store_true", help="remove the leftover segments (holders all dead)"
    )
    args = parser.parse_args(argv)
    if args.command == "demo" and args.cluster:
        return cluster_demo()
    if args.command == "demo":
        return demo([args.start_method] if args.start_method else None)
    return doctor(reap_orphans=args.reap)


if __name__ == "__main__":
    sys.exit(main())
