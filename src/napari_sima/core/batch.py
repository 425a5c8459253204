"""Run a pipeline on many datasets: serially, or in parallel on ``dask.distributed``.

Each dataset is one Dask task (:func:`run_batch` submits them and collects the
reports as they finish), so the batch scales from a laptop (``n_workers``: a
``LocalCluster`` of worker processes) to an existing cluster (``scheduler``: its
address) with nothing of our own in between.  Steps asking for it (``split_frames``,
``split_rois``) also spread one large dataset's extraction / spike inference over the
cluster, from inside the task (:func:`distributed.worker_client`).

Fault behaviour: a dataset whose pipeline fails is reported (the others go on); a
worker that dies takes no saved result with it (every result is written atomically),
Dask reruns its task elsewhere, and the rerun skips the steps already stored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor
from typing import Any

from .pipeline import Pipeline, parse_pipeline
from .pipeline_run import DatasetReport, PipelineProgress, run_pipeline

__all__ = ["BatchReport", "run_batch"]


@dataclasses.dataclass
class BatchReport:
    """Reports of every dataset of a batch, in the order the targets were given.

    Attributes
    ----------
    datasets : list of DatasetReport
    mode : str
        ``'serial'``, ``'local-cluster (N workers)'`` or ``'scheduler ADDRESS'``.
    seconds : float
        Wall time of the whole batch.
    """

    datasets: list[DatasetReport]
    mode: str = "serial"
    seconds: float = 0.0
    pipeline: str = ""

    @property
    def ok(self) -> bool:
        """True when every dataset finished without error."""
        return all(d.ok for d in self.datasets)

    @property
    def failed(self) -> list[DatasetReport]:
        """Reports of the datasets that failed."""
        return [d for d in self.datasets if not d.ok]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (JSON-able)."""
        return {
            "ok": self.ok,
            "pipeline": self.pipeline,
            "mode": self.mode,
            "seconds": self.seconds,
            "n_datasets": len(self.datasets),
            "n_failed": len(self.failed),
            "datasets": [d.to_dict() for d in self.datasets],
        }

    def summary(self) -> str:
        """Text: one line per dataset, then the totals."""
        lines = [d.summary() for d in self.datasets]
        lines.append(
            f"{len(self.datasets) - len(self.failed)}/{len(self.datasets)} datasets ok "
            f"({self.mode}, {self.seconds:.1f} s)"
        )
        return "\n".join(lines)


@contextlib.contextmanager
def _dask_split_executor() -> Generator[Executor, None, None]:
    """Give the cluster as an executor, from inside a task (the task leaves its slot)."""
    from distributed import worker_client

    with worker_client() as client:
        yield client.get_executor()


def _run_target(pipeline_data: dict[str, Any], source: str | None, target: str) -> DatasetReport:
    """Dask task: run the pipeline on one target (never raises for a dataset's failure)."""
    pipeline = parse_pipeline(pipeline_data, source)
    report = run_pipeline(pipeline, target, split_executor=_dask_split_executor)
    try:
        from distributed import get_worker

        report.worker = get_worker().address
    except (ImportError, ValueError):
        report.worker = None
    return report


def _check_targets(targets: Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(targets, (str, os.PathLike)):
        targets = [targets]
    out = [os.path.abspath(os.fspath(t)) for t in targets]
    if not out:
        raise ValueError("no datasets given to run the pipeline on")
    dupes = sorted({t for t in out if out.count(t) > 1})
    if dupes:
        raise ValueError(f"datasets given more than once: {dupes}")
    return out


def run_batch(
    pipeline: Pipeline,
    targets: Iterable[str | os.PathLike],
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    client: Any = None,
    progress: Callable[[dict[str, Any]], Any] | None = None,
) -> BatchReport:
    """Run ``pipeline`` on every target; serially by default, or on a Dask cluster.

    Parameters
    ----------
    pipeline : Pipeline
        From :func:`~napari_sima.core.pipeline.load_pipeline`.
    targets : list of path-like
        Dataset folders (or movies, when the pipeline starts with ``create``).
    scheduler : str, optional
        Address of a running Dask scheduler (``'tcp://host:8786'``).
    n_workers : int, optional
        Start a ``LocalCluster`` of this many worker processes (one thread each) on
        the loopback interface for this batch.
    client : distributed.Client, optional
        Use this client (and its cluster) instead.
    progress : callable, optional
        Called with ``{'kind': 'dataset', 'index', 'total', 'target', 'ok',
        'report'}`` as each dataset finishes and, when serial, also with
        ``{'kind': 'step', 'target', 'step', 'fraction', 'message'}``.

    Returns
    -------
    BatchReport
        Never raises for a dataset's failure: see :attr:`BatchReport.ok`.

    Raises
    ------
    ValueError
        For no targets, a target given twice, or more than one of ``scheduler``,
        ``n_workers`` and ``client``; ``n_workers < 1``.
    OSError
        If the scheduler cannot be reached.
    """
    if not isinstance(pipeline, Pipeline):
        raise TypeError(
            f"pipeline must be a Pipeline (load_pipeline), got {type(pipeline).__name__}"
        )
    chosen = [x is not None for x in (scheduler, n_workers, client)]
    if sum(chosen) > 1:
        raise ValueError("give at most one of scheduler, n_workers (local cluster) and client")
    if n_workers is not None and (
        isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1
    ):
        raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    paths = _check_targets(targets)
    t0 = time.perf_counter()

    def tell(event: dict[str, Any]) -> None:
        if progress is not None:
            progress(event)

    if not any(chosen):
        reports = []
        for i, target in enumerate(paths):

            def step_event(p: PipelineProgress, target: str = target) -> None:
                tell({"kind": "step", "target": target, "step": p.step,
                      "fraction": p.fraction, "message": p.message})

            report = run_pipeline(pipeline, target, progress=step_event)
            reports.append(report)
            tell({"kind": "dataset", "index": i, "total": len(paths), "target": target,
                  "ok": report.ok, "report": report})
        return BatchReport(reports, "serial", time.perf_counter() - t0,
                           pipeline.source or pipeline.name)

    with contextlib.ExitStack() as stack:
        if client is None:
            from distributed import Client, LocalCluster

            if n_workers is not None:
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=n_workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                    )
                )
                client = stack.enter_context(Client(cluster))
                mode = f"local-cluster ({n_workers} workers)"
            else:
                try:
                    client = stack.enter_context(Client(scheduler, timeout="20s"))
                except (OSError, TimeoutError) as err:
                    raise OSError(
                        f"cannot reach the Dask scheduler at {scheduler!r}: {err}"
                    ) from None
                mode = f"scheduler {scheduler}"
        else:
            mode = f"client {getattr(client, 'scheduler', None) and client.scheduler.address}"
        reports = _run_on_client(client, pipeline, paths, tell)
    return BatchReport(reports, mode, time.perf_counter() - t0, pipeline.source or pipeline.name)


def _run_on_client(
    client: Any, pipeline: Pipeline, paths: list[str], tell: Callable[[dict[str, Any]], None]
) -> list[DatasetReport]:
    from distributed import as_completed

    data = pipeline.to_dict()
    batch = uuid.uuid4().hex[:8]
    futures = {}
    for i, target in enumerate(paths):
        fut = client.submit(
            _run_target,
            data,
            pipeline.source,
            target,
            key=f"napari-sima-{batch}-{i}-{os.path.basename(target)}",
            pure=False,
        )
        futures[fut] = i
    reports: list[DatasetReport | None] = [None] * len(paths)
    try:
        for fut in as_completed(list(futures)):
            i = futures[fut]
            try:
                report = fut.result()
            except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: reported, go on
                report = DatasetReport(
                    target=paths[i],
                    ok=False,
                    error=f"the Dask task failed: {type(err).__name__}: {err}",
                )
            reports[i] = report
            tell({"kind": "dataset", "index": i, "total": len(paths), "target": paths[i],
                  "ok": report.ok, "report": report})
    finally:
        for fut in futures:
            fut.release()
    return [r for r in reports if r is not None]
