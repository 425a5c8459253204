"""The ``napari-sima`` command line (headless batch work; ``demo`` opens the viewer)."""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    run_demo(block=not args.no_block)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``napari-sima`` command."""
    parser = argparse.ArgumentParser(
        prog="napari-sima",
        description="SIMA calcium-imaging analysis: headless batch work and the napari demo.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="open napari with the sample dataset and all napari-sima widgets docked",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--no-block", action="store_true", help="return after opening (for scripts and tests)"
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (OSError, ValueError) as err:
        print(f"napari-sima: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
