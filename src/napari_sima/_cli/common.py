"""What every ``napari-sima`` subcommand shares: parser, output, progress, errors, exit codes.

Exit codes
----------
``0`` (:data:`EXIT_OK`)
    Done.
``1`` (:data:`EXIT_FAILURE`)
    A dataset or an operation failed: a missing file, a broken dataset, a result that
    would be replaced without ``--force``, an error of the analysis itself.
``2`` (:data:`EXIT_USAGE`)
    Bad usage: unknown option, missing argument, contradictory options, an unknown
    strategy parameter, an invalid pipeline file.

Output
------
Progress bars (tqdm), notes and warnings go to stderr; ``-q`` silences them (errors
are still printed).  Results go to stdout; with ``--json`` stdout holds exactly one
JSON object, written at the end whatever happened::

    {"command": ..., "dataset": ..., "outputs": {...}, "counts": {...},
     "timings": {..., "total": seconds}, "warnings": [...], "ok": true,
     "exit_code": 0, "error": null}

Errors print ``napari-sima: error: <the core's message>`` without a traceback;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.dataset import ImagingDataset

PROG = "napari-sima"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Exception types whose message is meant for the user (printed without a traceback).
#: ``TransformError`` and ``PipelineError`` are recognised by name in :func:`is_expected`
#: so that their modules need not be imported here.
USER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    ImportError,
)
_USER_ERROR_NAMES = {
    ("napari_sima.core.transform", "TransformError"),
    ("napari_sima.core.pipeline", "PipelineError"),
}


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
class UsageError(Exception):
    """Bad command-line usage: exit code 2, printed with the command's usage line.

    Parameters
    ----------
    message : str
        What is wrong and what was expected.
    parser : argparse.ArgumentParser, optional
        The (sub)command's parser, whose usage line is printed.
    """

    def __init__(self, message: str, parser: argparse.ArgumentParser | None = None) -> None:
        super().__init__(message)
        self.parser = parser


class CommandError(Exception):
    """A command could not do its work (exit code 1); the message is for the user."""


def is_expected(err: BaseException) -> bool:
    """Whether ``err`` is one of the documented, user-facing error types."""
    if isinstance(err, (CommandError, *USER_ERRORS)):
        return True
    return any((cls.__module__, cls.__name__) in _USER_ERROR_NAMES for cls in type(err).__mro__)


def user_message(err: BaseException) -> str:
    """Return the user-facing text of an error (a ``KeyError`` without repr's quotes)."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    text = str(err)
    if is_expected(err):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults (except ``None`` and ``False``); keep texts with line breaks as written.

    One-paragraph descriptions are wrapped to the terminal; epilogs with examples
    (several lines) keep their layout.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`UsageError` instead of exiting.

    Parameters
    ----------
    *args, **kwargs
        As for :class:`argparse.ArgumentParser` (the formatter defaults to
        :class:`HelpFormatter`).
    epilog_factory : callable, optional
        Called when the help is shown to build the epilog (e.g. a list of presets
        that needs an import too slow for every start).
    """

    def __init__(
        self, *args: Any, epilog_factory: Callable[[], str] | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.epilog_factory = epilog_factory

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise :class:`UsageError` (printed and turned into exit code 2 by ``main``)."""
        raise UsageError(message, self)

    def format_help(self) -> str:
        """Return the help text, building the epilog first if it is built on demand."""
        if self.epilog_factory is not None:
            self.epilog = self.epilog_factory()
        return super().format_help()


def output_options() -> argparse.ArgumentParser:
    """Return a parent parser with ``-q``, ``--json`` and ``--debug``.

    The same options are given to the main parser and to every subcommand with a
    suppressed default, so they work before or after the subcommand name.
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output options")
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars, notes or warnings on stderr (errors are still printed)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON summary object on stdout at the end, and nothing else there",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error",
    )
    return parent


def add_command(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace, Reporter], int],
    parents: list[argparse.ArgumentParser],
    help: str,  # noqa: A002 - argparse's name
    description: str | None = None,
    epilog: str | None = None,
    epilog_factory: Callable[[], str] | None = None,
) -> Parser:
    """Add a subcommand running ``func(args, reporter) -> exit code`` and return its parser."""
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        epilog=epilog,
        parents=parents,
        formatter_class=HelpFormatter,
        epilog_factory=epilog_factory,
    )
    parser.set_defaults(func=func, _parser=parser)
    return parser


def positive_int(text: str) -> int:
    """``argparse`` type of counts such as ``--n-processes``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_params(items: list[str] | None, option: str = "--param") -> dict[str, str]:
    """Turn ``['key=value', ...]`` into ``{key: value}``.

    Raises
    ------
    UsageError
        For an item without ``=`` or with an empty key.
    """
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} expects KEY=VALUE, got {item!r}")
        params[key.strip()] = value
    return params


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------
class Progress:
    """A progress bar on stderr (nothing when quiet); use as a context manager.

    The bar appears at the first :meth:`update` (so work that reports nothing shows
    nothing) and honours tqdm's refresh interval (one line of output per few
    seconds when stderr is a file rather than a terminal).

    Parameters
    ----------
    reporter : Reporter
        Decides whether anything is shown.
    desc : str
        Text before the bar.
    total : float, optional
        Amount of work (may be changed by :meth:`update`).
    unit : str
        Unit of the amounts; ``'%'`` shows a percentage bar without a rate.
    """

    def __init__(self, reporter: Reporter, desc: str, total: float | None, unit: str) -> None:
        self._enabled = not reporter.quiet
        self._stream = reporter.stderr
        self._bar: Any = None
        self._desc = desc
        self._total = total
        self._unit = unit

    def _open(self) -> Any:
        from tqdm import tqdm

        tty = bool(getattr(self._stream, "isatty", lambda: False)())
        fmt = (
            "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"
            if self._unit == "%"
            else None
        )
        return tqdm(
            total=self._total,
            desc=self._desc,
            unit=self._unit,
            file=self._stream,
            dynamic_ncols=True,
            mininterval=0.2 if tty else 5.0,
            bar_format=fmt,
            leave=True,
        )

    def update(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Show ``done`` of ``total`` (and ``message`` after the description)."""
        if not self._enabled:
            return
        if self._bar is None:
            if total is not None:
                self._total = total
            self._bar = self._open()
        bar = self._bar
        if total is not None and total != bar.total:
            bar.total = total
        if message is not None:
            bar.set_description_str(f"{self._desc}: {message}", refresh=False)
        if done >= bar.n:
            bar.update(done - bar.n)
        else:  # a new phase of the work started over
            bar.n = done
            bar.refresh()

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reporter:
    """Collects a command's summary and writes its human or JSON output.

    Parameters
    ----------
    command : str
        The subcommand.
    quiet : bool
        Nothing on stderr but errors.
    json_mode : bool
        Write only the JSON summary on stdout.
    debug : bool
        Print tracebacks of errors.
    stdout, stderr : file, optional
        Where to write (default: ``sys.stdout`` / ``sys.stderr`` at call time).
    """

    def __init__(
        self,
        command: str | None,
        quiet: bool = False,
        json_mode: bool = False,
        debug: bool = False,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.quiet = bool(quiet)
        self.json_mode = bool(json_mode)
        self.debug = bool(debug)
        self._stdout = stdout
        self._stderr = stderr
        self.summary: dict[str, Any] = {
            "command": command,
            "dataset": None,
            "outputs": {},
            "counts": {},
            "timings": {},
            "warnings": [],
            "ok": True,
            "exit_code": EXIT_OK,
            "error": None,
        }

    @property
    def stdout(self) -> IO[str]:
        """The output stream of results."""
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> IO[str]:
        """The stream of progress, notes, warnings and errors."""
        return self._stderr or sys.stderr

    # -- writing ---------------------------------------------------------------------------
    def _write_err(self, text: str) -> None:
        if "tqdm" in sys.modules:  # keep a running bar intact
            from tqdm import tqdm

            tqdm.write(text, file=self.stderr)
        else:
            print(text, file=self.stderr)

    def note(self, text: str) -> None:
        """Write a remark on stderr (not when quiet)."""
        if not self.quiet:
            self._write_err(text)

    def result(self, text: str) -> None:
        """Write a line of result on stdout (not when quiet, not in JSON mode)."""
        if not self.quiet and not self.json_mode:
            print(text, file=self.stdout)

    def text(self, text: str) -> None:
        """Write the command's main output (``info``) on stdout (not in JSON mode)."""
        if not self.json_mode:
            print(text, file=self.stdout)

    def warning_hook(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: IO[str] | None = None,
        line: str | None = None,
    ) -> None:
        """Show a warning as one line (replaces :func:`warnings.showwarning`); keep it for JSON."""
        text = str(message)
        self.summary["warnings"].append(text)
        if not self.quiet:
            self._write_err(f"{PROG}: warning: {text}")

    def error(
        self,
        message: str,
        err: BaseException | None = None,
        parser: argparse.ArgumentParser | None = None,
    ) -> None:
        """Print an error on stderr (always), with the traceback under ``--debug``.

        With ``parser`` (a usage error), its usage line comes first and its name
        (``napari-sima export``) starts the message, as argparse's own errors.
        """
        if err is not None and self.debug:
            traceback.print_exception(err, file=self.stderr)
        prog = PROG
        if parser is not None:
            self.stderr.write(parser.format_usage())
            prog = parser.prog
        print(f"{prog}: error: {message}", file=self.stderr)
        self.summary["error"] = message

    # -- summary ---------------------------------------------------------------------------
    def set_dataset(self, path: str | None) -> None:
        """Record the dataset the command worked on."""
        self.summary["dataset"] = path

    def output(self, key: str, value: Any) -> None:
        """Record an output (a file written, a stored set's label)."""
        self.summary["outputs"][key] = value

    def count(self, key: str, value: Any) -> None:
        """Record a count (ROIs, frames, ...)."""
        self.summary["counts"][key] = value

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Time a block into ``timings[key]`` (seconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.summary["timings"][key] = round(time.perf_counter() - start, 3)

    def progress(self, desc: str, total: float | None = None, unit: str = "it") -> Progress:
        """Return a :class:`Progress` bar (silent when quiet)."""
        return Progress(self, desc, total, unit)

    def finish(self, code: int) -> None:
        """Close the summary with the exit code and, in JSON mode, print it."""
        self.summary["exit_code"] = int(code)
        self.summary["ok"] = code == EXIT_OK
        if self.json_mode:
            print(json.dumps(self.summary, default=_json_default), file=self.stdout)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def usage_failure(
    err: UsageError, command: str | None, json_mode: bool, fallback: argparse.ArgumentParser
) -> int:
    """Print a usage error (usage line + message), and the JSON summary if asked."""
    reporter = Reporter(command, json_mode=json_mode)
    reporter.error(str(err), parser=err.parser or fallback)
    reporter.finish(EXIT_USAGE)
    return EXIT_USAGE


def execute(args: argparse.Namespace) -> int:
    """Run the command chosen in ``args`` and return its exit code.

    The command (``args.func(args, reporter)``) returns 0 or 1; :class:`UsageError`
    gives 2, the documented core exceptions 1 with their message (no traceback unless
    ``--debug``), Ctrl-C 130.  Warnings are printed as one line each and collected in
    the JSON summary.
    """
    reporter = Reporter(
        getattr(args, "command", None),
        quiet=getattr(args, "quiet", False),
        json_mode=getattr(args, "json", False),
        debug=getattr(args, "debug", False),
    )
    start = time.perf_counter()
    code = EXIT_OK
    with warnings.catch_warnings():
        warnings.showwarning = reporter.warning_hook  # restored on leaving the block
        try:
            code = int(args.func(args, reporter) or EXIT_OK)
        except UsageError as err:
            reporter.error(str(err), err, parser=err.parser or getattr(args, "_parser", None))
            code = EXIT_USAGE
        except BrokenPipeError:
            raise  # the reader of stdout went away: main() stops quietly
        except KeyboardInterrupt as err:
            reporter.error("interrupted", err)
            code = EXIT_INTERRUPTED
        except Exception as err:  # noqa: BLE001 - every failure becomes a message + exit 1
            message = user_message(err)
            if not is_expected(err) and not reporter.debug:
                message += " (unexpected error; run with --debug for the traceback)"
            reporter.error(message, err)
            code = EXIT_FAILURE
    reporter.summary["timings"]["total"] = round(time.perf_counter() - start, 3)
    reporter.finish(code)
    return code


# ---------------------------------------------------------------------------------------
# Helpers for commands
# ---------------------------------------------------------------------------------------
def load_dataset(path: str, reporter: Reporter) -> ImagingDataset:
    """Open a dataset folder and record it in the summary.

    Raises
    ------
    FileNotFoundError
        Naming the path when there is no dataset there.
    """
    from ..core.dataset import ImagingDataset

    ds = ImagingDataset.load(path)
    reporter.set_dataset(ds.savedir)
    return ds


def channel_index(ds: ImagingDataset, text: str | int | None) -> int:
    """Resolve a ``--channel`` value: a channel name, else an index.

    Raises
    ------
    ValueError
        For an unknown channel (the message lists the valid ones).
    """
    if text is None:
        return 0
    if isinstance(text, int):
        return ds.resolve_channel(text)
    if text in ds.channel_names:
        return ds.channel_names.index(text)
    try:
        index = int(text)
    except ValueError:
        return ds.resolve_channel(text)  # "no channel named ...; valid channels: ..."
    return ds.resolve_channel(index)


def roi_set_labels(ds: ImagingDataset) -> dict[str, dict[str, Any]]:
    """Index entries ``{label: {'timestamp', 'n_rois', 'provenance', ...}}`` of the ROI sets.

    Read from the ROI store's index (no ROI is decoded); a legacy SIMA folder's
    ``rois.pkl`` is loaded instead.
    """
    from ..core import roi_store
    from ..core._setstore import SetStore

    if ds.savedir is None:
        return {k: {"timestamp": v.timestamp, "n_rois": len(v)} for k, v in ds.ROIs.items()}
    store = SetStore(
        roi_store.store_dir(ds.savedir), roi_store.STORE_FORMAT, roi_store.STORE_VERSION, "ROI set"
    )
    if store.exists() or not (Path(ds.savedir) / roi_store.LEGACY_FILE).exists():
        return {k: dict(v) for k, v in store.read_index()["sets"].items()}
    return {
        k: {"timestamp": v.timestamp, "n_rois": len(v), "provenance": None}
        for k, v in ds.ROIs.items()
    }


def check_new_label(existing: Any, label: str | None, what: str, force: bool) -> None:
    """Refuse to replace a stored set unless ``--force``.

    Raises
    ------
    CommandError
        If ``label`` is already taken and ``force`` is false.
    """
    if label is not None and label in existing and not force:
        raise CommandError(
            f"{what} {label!r} already exists; choose another --label or give --force to replace it"
        )


def drive(gen: Generator[Any, None, Any], on_item: Callable[[Any], None]) -> Any:
    """Run a progress generator to its end, calling ``on_item`` for each report.

    The generator is closed (its work cancelled) if anything goes wrong, including
    Ctrl-C.
    """
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            on_item(item)
    finally:
        gen.close()


def plural(n: int, word: str) -> str:
    """``'1 ROI'``, ``'7 ROIs'``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
