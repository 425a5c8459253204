"""``napari-sima demo``: napari with the sample dataset and every widget docked."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Reporter, add_command


def cmd_demo(args: argparse.Namespace, reporter: Reporter) -> int:
    """Open the demo viewer (napari and Qt are imported only here)."""
    from .._demo import run_demo

    run_demo(block=not args.no_block)
    return 0


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    demo = add_command(
        sub,
        "demo",
        cmd_demo,
        parents,
        help="open napari with the sample dataset and all napari-sima widgets docked",
    )
    demo.add_argument(
        "--no-block", action="store_true", help="return after opening (for scripts and tests)"
    )
