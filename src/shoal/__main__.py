"""``python -m shoal``: ``demo`` (a tour), ``doctor`` (what this machine offers)."""

from __future__ import annotations

import argparse
import sys

from ._demo import demo
from ._doctor import doctor


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m shoal``."""
    parser = argparse.ArgumentParser(prog="python -m shoal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="a tour of what shoal fixes")
    demo_parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"])
    doctor_parser = commands.add_parser("doctor", help="check this machine for shoal")
    doctor_parser.add_argument(
        "--reap", action="store_true", help="remove shoal segments whose holders all died"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo([args.start_method] if args.start_method else None)
    return doctor(reap_orphans=args.reap)


if __name__ == "__main__":
    sys.exit(main())
