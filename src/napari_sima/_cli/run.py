"""``napari-sima run PIPELINE.yaml DATASET...``: a pipeline over many datasets."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .common import (
    EXIT_FAILURE,
    Reporter,
    UsageError,
    add_command,
    plural,
    positive_int,
)


class _BatchProgress:
    """Turns the batch runner's events into one progress bar (and notes of failures)."""

    def __init__(self, reporter: Reporter, total: int) -> None:
        self.reporter = reporter
        self.total = total
        self.finished = 0
        self.bar = reporter.progress("run", total=total, unit="dataset")

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "step":
            fraction = float(event.get("fraction") or 0.0)
            name = Path(str(event.get("target", ""))).name
            message = event.get("message") or event.get("step") or ""
            self.bar.update(
                round(self.finished + min(1.0, fraction), 2), message=f"{name}: {message}"
            )
        elif kind == "dataset":
            self.finished += 1
            self.bar.update(self.finished)
            if not event.get("ok", True):
                report = event.get("report")
                error = getattr(report, "error", None) or "failed"
                self.reporter.note(f"FAILED {event.get('target')}: {error}")

    def close(self) -> None:
        self.bar.close()


def cmd_run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run a pipeline file on every dataset (or movie, for a pipeline that creates)."""
    from ..core.pipeline import PipelineError, load_pipeline, run_batch

    targets = [os.path.abspath(t) for t in args.datasets]
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise UsageError(f"datasets given more than once: {dupes}")
    try:
        pipeline = load_pipeline(args.pipeline)
    except PipelineError as err:
        raise UsageError(str(err)) from err
    reporter.summary["pipeline"] = os.path.abspath(args.pipeline)
    if reporter.quiet and args.local_cluster:
        # worker processes print their warnings themselves; -q silences them too
        os.environ["PYTHONWARNINGS"] = "ignore"
    progress = _BatchProgress(reporter, len(targets))
    try:
        with reporter.timed("run"):
            report = run_batch(
                pipeline,
                targets,
                scheduler=args.scheduler,
                n_workers=args.local_cluster,
                progress=progress,
            )
    finally:
        progress.close()
    failed = [d for d in report.datasets if not d.ok]
    for d in report.datasets:
        reporter.output(d.target, d.dataset)
    reporter.count("datasets", len(report.datasets))
    reporter.count("ok", len(report.datasets) - len(failed))
    reporter.count("failed", len(failed))
    reporter.summary["report"] = report.to_dict()
    reporter.result(report.summary())
    if reporter.debug:
        for d in failed:
            if getattr(d, "traceback", None):
                reporter.stderr.write(f"--- {d.target}\n{d.traceback}")
    if failed:
        reporter.error(
            f"{len(failed)} of {plural(len(report.datasets), 'dataset')} failed: "
            + "; ".join(f"{d.target}: {d.error}" for d in failed)
        )
        return EXIT_FAILURE
    return 0


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``run`` subcommand."""
    p = add_command(
        sub,
        "run",
        cmd_run,
        parents,
        help="run a pipeline file (YAML) on many datasets, serially or on Dask",
        description=(
            "Run the steps of a pipeline file on each DATASET (a .sima folder, or a movie "
            "when the pipeline starts with 'create').  Steps whose stored result is up "
            "to date are skipped.  A dataset that fails is reported and the others go "
            "on; the exit code is then 1.  An invalid pipeline file is bad usage (2)."
        ),
        epilog=(
            "examples:\n"
            "  napari-sima run analysis.yaml mouse1.sima mouse2.sima\n"
            "  napari-sima run analysis.yaml sessions/*.tif --local-cluster 4 --json"
        ),
    )
    p.add_argument("pipeline", metavar="PIPELINE.yaml", help="pipeline file")
    p.add_argument("datasets", nargs="+", metavar="DATASET", help="dataset folder or movie")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler")
    where.add_argument(
        "--local-cluster",
        type=positive_int,
        metavar="N",
        help="start a local Dask cluster of N worker processes for this run",
    )
