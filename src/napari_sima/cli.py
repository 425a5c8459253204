"""The ``napari-sima`` command line (headless batch work; ``demo`` opens the viewer).

Subcommands: ``demo``, ``info``, ``create``, ``import-rois``, ``export-rois``,
``segment``, ``extract``, ``infer-spikes``, ``export`` and ``run``; each has
``--help``.  Exit codes: 0 done, 1 a dataset or operation failed, 2 bad usage.
``-q`` silences progress and notes, ``--json`` prints one JSON summary on stdout,
``--debug`` shows tracebacks; these work before or after the subcommand.

Only ``demo`` imports napari and Qt (when it runs); the analysis commands import the
headless core when they run, so ``napari-sima --help`` starts fast.  Also runs as
``python -m napari_sima.cli``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ._cli import analysis, create, demo, export, info, rois, run
from ._cli.common import PROG, Parser, UsageError, execute, output_options, usage_failure

#: Modules adding the subcommands, in the order ``--help`` lists them.
_COMMAND_MODULES = (demo, info, create, rois, analysis, export, run)

_EPILOG = """\
exit codes: 0 done, 1 a dataset or operation failed, 2 bad usage.

example pipeline:
  napari-sima create trial1.tif trial2.tif -o mouse1.sima
  napari-sima segment mouse1.sima --strategy stica --param components=20 --label cells
  napari-sima extract mouse1.sima --rois cells --label signals
  napari-sima infer-spikes mouse1.sima --signals signals
  napari-sima export mouse1.sima --signals traces.csv --averages mean.tif
  napari-sima info mouse1.sima
"""


def _version() -> str:
    from . import __version__

    return __version__


class _VersionAction(argparse.Action):
    """``--version`` that imports the package version only when asked."""

    def __init__(
        self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"{PROG} {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``napari-sima`` command."""
    common = output_options()
    parser = Parser(
        prog=PROG,
        description="SIMA calcium-imaging analysis: headless batch work and the napari demo.",
        epilog=_EPILOG,
        parents=[common],
    )
    parser.add_argument("--version", "-V", action=_VersionAction, help="show the version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in _COMMAND_MODULES:
        module.add_parsers(sub, [common])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 bad usage).

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        command = next((a for a in argv if not a.startswith("-")), None)
        return usage_failure(err, command, "--json" in argv, parser)
    except SystemExit as stop:  # --help, --version
        return stop.code if isinstance(stop.code, int) else 0
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return execute(args)
    except BrokenPipeError:  # stdout's reader went away (e.g. `napari-sima info x | head`)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover - python -m napari_sima.cli
    sys.exit(main())
