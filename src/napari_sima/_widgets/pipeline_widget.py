"""The Pipeline dock widget: run a pipeline file (YAML) on one dataset, in a worker.

A pipeline file lists analysis steps with their parameters
(:mod:`napari_sima.core.pipeline`); the same file runs on one dataset here and on many
from the command line (``napari-sima run``).  The dock is a thin shell over
:func:`napari_sima.core.pipeline.load_pipeline` and
:func:`napari_sima.core.pipeline_run.iter_run_pipeline`:

* choose a ``.yaml`` / ``.yml`` / ``.json`` file and press Load: its steps are listed
  with the parameters that differ from the defaults (or the file's problem, naming
  the step and the key, is shown in red and Run stays disabled);
* choose the target: a dataset behind the viewer's layers (it must live in a
  ``.sima`` folder), or, when the pipeline starts with ``create``, a movie file;
* Run: the steps run in a napari ``thread_worker`` with a progress bar and a Cancel
  button.  Steps whose result is already stored with the same inputs and parameters
  are skipped, so a second run is cheap.  At the end the table shows each step's
  status (done, skipped, failed, not run) and what it stored or why it failed.

Every action is a public method (``load_pipeline``, ``set_dataset``, ``set_movie``,
``run``, ``cancel``, ``open_result``) so scripts and tests can drive the widget
without dialogs.  Errors reach the user as napari notifications, never tracebacks.

Notes
-----
**Cancelling.**  The worker checks for a cancel between two progress reports of the
pipeline and then closes its generator: the step running is abandoned without
writing anything (results are written atomically at the end of a step), the steps
before it keep their stored results.  A step that reports no progress while it
works (``infer-spikes``, ``dff``) is cancelled when it ends.  Closing the dock, or
the viewer, cancels a running pipeline the same way.

**The file is re-read by Run**, so a pipeline edited in a text editor after Load
runs as it now is (and the table shows it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import napari
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._layers import unwrap
from ._common import (
    USER_ERRORS,
    blocked,
    make_button,
    make_status_label,
)
from ._common import user_message as _message
from ._dataset_dock import DatasetDock

if TYPE_CHECKING:
    from ..core import ImagingDataset
    from ..core.pipeline import Pipeline, Step
    from ..core.pipeline_run import DatasetReport, PipelineProgress

logger = logging.getLogger(__name__)

#: File-dialog filter of pipeline files.
PIPELINE_FILTER = "Pipeline files (*.yaml *.yml *.json);;All files (*)"

#: File-dialog filter of movies (the target of a pipeline that starts with ``create``).
MOVIE_FILTER = "Movies (*.tif *.tiff *.h5 *.hdf5);;All files (*)"

#: Columns of the steps table.
TABLE_COLUMNS = ("Step", "Parameters", "Status")

#: Column indices.
STEP_COL, PARAMS_COL, STATUS_COL = range(len(TABLE_COLUMNS))

#: Item-data roles of a Status cell holding the status and the result.
STATUS_ROLE = Qt.ItemDataRole.UserRole
RESULT_ROLE = Qt.ItemDataRole.UserRole + 1

#: Status shown while a step runs, after it ended (before the report), and when a
#: cancel stopped it.
RUNNING, FINISHED, CANCELLED = "running…", "finished", "cancelled"

#: Text colour of a failed step and of an error in the status line.
ERROR_COLOR = "#e05d5d"

#: Seconds between two progress reports sent to the GUI thread (step changes always go).
PROGRESS_INTERVAL = 0.05

#: Resolution of the progress bar.
PROGRESS_MAX = 1000


def changed_parameters(step: Step) -> dict[str, Any]:
    """Return the parameters of a step that differ from the step's defaults.

    Parameters
    ----------
    step : Step
        A step of a loaded pipeline (defaults filled in).

    Returns
    -------
    dict
        ``{key: value}`` in the order of :data:`~napari_sima.core.pipeline.STEP_PARAMETERS`.
    """
    from ..core.pipeline import STEP_PARAMETERS

    defaults = STEP_PARAMETERS.get(step.name, {})
    return {k: v for k, v in step.params.items() if k not in defaults or v != defaults[k]}


def format_parameters(params: dict[str, Any], sep: str = ", ") -> str:
    """Return ``'key: value, ...'`` for a table cell (``'(defaults)'`` when empty).

    Parameters
    ----------
    params : dict
        Parameters, e.g. from :func:`changed_parameters`.
    sep : str
        Between two parameters.

    Returns
    -------
    str
    """
    if not params:
        return "(defaults)"

    def text(value: Any) -> str:
        if isinstance(value, str):
            return value
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            return repr(value)

    return sep.join(f"{k}: {text(v)}" for k, v in params.items())


@dataclass
class PipelineJob:
    """State shared between the widget and one pipeline worker.

    Attributes
    ----------
    pipeline : Pipeline
        The pipeline run.
    target : str
        The dataset folder, or the movie for a pipeline that starts with ``create``.
    dataset : ImagingDataset or None
        The viewer's dataset at ``target`` (None for a movie).
    steps : generator
        ``iter_run_pipeline(pipeline, target)``; closed when the worker ends (which
        cancels the step running, if any).
    cancel_requested : threading.Event
        Set by :meth:`PipelineWidget.cancel`; checked between progress reports.
    cancelled : bool
        Written by the worker when it stopped on a cancel.
    report : DatasetReport or None
        Written by the worker when the pipeline ended (ok or not).
    error : BaseException or None
        Written by the worker when running raised (the pipeline's own step failures
        are in the report instead).
    step_index : int or None
        Index of the step last reported running (GUI thread).
    """

    pipeline: Pipeline
    target: str
    dataset: Any = None
    steps: Generator[PipelineProgress, None, DatasetReport] | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    report: DatasetReport | None = None
    error: BaseException | None = None
    step_index: int | None = None


@thread_worker
def _pipeline_steps(job: PipelineJob) -> Generator[PipelineProgress, None, None]:
    """Run ``iter_run_pipeline`` in a worker thread; the report goes to ``job``.

    Yields
    ------
    PipelineProgress
        At most one every :data:`PROGRESS_INTERVAL` seconds, and at each new step.
    """
    steps = job.steps
    assert steps is not None
    try:
        last_step, last_time = None, 0.0
        while not job.cancel_requested.is_set():
            try:
                event = next(steps)
            except StopIteration as stop:
                job.report = stop.value
                return
            now = time.monotonic()
            if event.step != last_step or now - last_time >= PROGRESS_INTERVAL:
                last_step, last_time = event.step, now
                yield event
        job.cancelled = True
    except Exception as err:  # reported by the widget as a notification
        job.error = err
    finally:
        steps.close()  # cancels the step running; nothing half-written is left


class PipelineWidget(DatasetDock):
    """Run a pipeline file on one dataset (or on a movie, for a ``create`` pipeline).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer; datasets are found through its layers'
        ``metadata['napari_sima']['dataset']``.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    pipeline : Pipeline or None
        The loaded pipeline.
    pipeline_path : str or None
        The file it was loaded from.
    dataset : ImagingDataset or None
        The dataset the pipeline runs on (when it does not create one).
    movie : str
        The movie file (or glob) a ``create`` pipeline runs on.
    last_report : DatasetReport or None
        The report of the last finished run.
    created_dataset : str or None
        The dataset folder the last run of a ``create`` pipeline made (or found up to
        date).
    """

    capability = "savedir"
    job_name = "pipeline"
    busy_message = "A pipeline is running"

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.pipeline: Pipeline | None = None
        self.pipeline_path: str | None = None
        self.last_report: DatasetReport | None = None
        self.created_dataset: str | None = None
        self._job: PipelineJob | None = None
        self._load_error: str | None = None

        self.setObjectName("napari_sima_pipeline_widget")
        layout = QVBoxLayout(self)
        layout.addWidget(self._create_pipeline_group(), 1)  # the table takes the height
        layout.addWidget(self._create_target_group())
        layout.addWidget(self._create_run_group())
        self._start_following_layers()

    # -- construction ---------------------------------------------------------------------
    def _create_pipeline_group(self) -> QGroupBox:
        box = QGroupBox("Pipeline", self)
        box.setObjectName("pipeline_group")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.path_edit = QLineEdit(box)
        self.path_edit.setObjectName("path_edit")
        self.path_edit.setPlaceholderText("pipeline file (.yaml, .yml, .json)")
        self.path_edit.setToolTip(
            "A pipeline file: steps with their parameters (the same file runs on many "
            "datasets with 'napari-sima run')"
        )
        self.path_edit.returnPressed.connect(self._on_load_clicked)
        self.browse_button = make_button("…", "browse_button", self._on_browse_clicked, box)
        self.browse_button.setToolTip("Choose a pipeline file")
        self.load_button = make_button("Load", "load_button", self._on_load_clicked, box)
        self.load_button.setToolTip("Read and check the file, and list its steps")
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_button)
        row.addWidget(self.load_button)
        layout.addLayout(row)
        self.pipeline_label = QLabel("", box)
        self.pipeline_label.setObjectName("pipeline_label")
        self.pipeline_label.setWordWrap(True)
        layout.addWidget(self.pipeline_label)
        layout.addWidget(self._create_table(box))
        return box

    def _create_table(self, parent: QWidget) -> QTableWidget:
        table = QTableWidget(0, len(TABLE_COLUMNS), parent)
        table.setObjectName("steps_table")
        table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        table.setWordWrap(True)
        table.verticalHeader().setDefaultAlignment(Qt.AlignmentFlag.AlignCenter)  # step numbers
        header = table.horizontalHeader()
        header.setSectionResizeMode(STEP_COL, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(PARAMS_COL, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(STATUS_COL, QHeaderView.ResizeMode.Stretch)
        table.setMinimumHeight(150)
        # wrapped cells need taller rows when their columns get narrower
        header.sectionResized.connect(lambda *_: table.resizeRowsToContents())
        self.steps_table = table
        return table

    def _create_target_group(self) -> QGroupBox:
        box = QGroupBox("Run on", self)
        box.setObjectName("target_group")
        layout = QVBoxLayout(box)
        self.target_stack = QStackedWidget(box)
        self.target_stack.setObjectName("target_stack")
        # page 0: a dataset of the viewer
        page = QWidget(self.target_stack)
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self._make_dataset_combo(
            page,
            "Datasets of the layers in the viewer (the pipeline runs on the dataset's "
            ".sima folder and stores its results there)",
        )
        form.addRow("Dataset", self.dataset_combo)
        self.target_stack.addWidget(page)
        # page 1: a movie file, for pipelines that create the dataset
        page = QWidget(self.target_stack)
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.movie_edit = QLineEdit(page)
        self.movie_edit.setObjectName("movie_edit")
        self.movie_edit.setPlaceholderText("movie file (.tif, .h5) or a glob of TIFFs")
        self.movie_edit.setToolTip(
            "The pipeline starts with 'create': it makes a .sima dataset from this movie "
            "(next to it, named by the step's 'output')"
        )
        self.movie_edit.textChanged.connect(self._on_movie_changed)
        self.movie_browse_button = make_button(
            "…", "movie_browse_button", self._on_movie_browse_clicked, page
        )
        self.movie_browse_button.setToolTip("Choose the movie")
        row.addWidget(self.movie_edit, 1)
        row.addWidget(self.movie_browse_button)
        form.addRow("Movie", row)
        self.target_stack.addWidget(page)
        layout.addWidget(self.target_stack)
        return box

    def _create_run_group(self) -> QGroupBox:
        box = QGroupBox("Run", self)
        box.setObjectName("run_group")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.run_button = make_button("Run", "run_button", self._on_run_clicked, box)
        self.run_button.setToolTip(
            "Run the steps in the background; steps whose result is already stored "
            "(same inputs and parameters) are skipped"
        )
        self.cancel_button = make_button("Cancel", "cancel_button", self._on_cancel_clicked, box)
        self.cancel_button.setToolTip(
            "Stop the pipeline; the step running writes nothing, earlier steps stay stored"
        )
        self.open_button = make_button("Open dataset", "open_button", self._on_open_clicked, box)
        self.open_button.setToolTip("Open the dataset the pipeline created in the viewer")
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.open_button)
        layout.addLayout(row)
        self.progress_bar = QProgressBar(box)
        self.progress_bar.setObjectName("progress_bar")
        self.progress_bar.setRange(0, PROGRESS_MAX)
        self.progress_bar.setFormat("%p%")
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status_label = make_status_label(box)
        layout.addWidget(self.status_label)
        return box

    # -- state ----------------------------------------------------------------------------
    @property
    def creates(self) -> bool:
        """Whether the loaded pipeline creates its dataset (its target is a movie)."""
        return self.pipeline is not None and self.pipeline.creates

    @property
    def movie(self) -> str:
        """The movie file (or glob) a ``create`` pipeline runs on (blank when none)."""
        return self.movie_edit.text().strip()

    def step_statuses(self) -> list[str]:
        """Return each step's status shown in the table (``''`` before a run)."""
        return [self._cell_data(row, STATUS_ROLE) for row in range(self.steps_table.rowCount())]

    def step_results(self) -> list[str]:
        """Return what each step stored, or why it failed, as shown under its status."""
        return [self._cell_data(row, RESULT_ROLE) for row in range(self.steps_table.rowCount())]

    def _cell_data(self, row: int, role: Any) -> str:
        item = self.steps_table.item(row, STATUS_COL)
        value = item.data(role) if item is not None else None
        return "" if value is None else str(value)

    # -- pipeline -------------------------------------------------------------------------
    def load_pipeline(self, path: str | os.PathLike | None = None) -> bool:
        """Read and check a pipeline file, and list its steps.

        Parameters
        ----------
        path : path-like, optional
            The ``.yaml`` / ``.yml`` / ``.json`` file (default: the path typed in the
            box).

        Returns
        -------
        bool
            True if the file is a valid pipeline.  Otherwise its problem (naming the
            step and the key) is shown in the status line and Run is disabled.
        """
        from ..core.pipeline import PipelineError
        from ..core.pipeline import load_pipeline as _load

        if self.is_running:
            show_warning("A pipeline is running: cancel it before loading another one.")
            return False
        text = self.path_edit.text().strip() if path is None else os.fspath(path)
        with blocked(self.path_edit):
            self.path_edit.setText(text)
        self.last_report = None
        self.created_dataset = None
        if not text:
            self._set_pipeline(None, None, "Choose a pipeline file first.")
            return False
        path_text = os.path.abspath(os.path.expanduser(text))
        try:
            pipeline = _load(path_text)
        except (PipelineError, FileNotFoundError) as err:
            self._set_pipeline(None, path_text, _message(err))
            return False
        except USER_ERRORS as err:  # unreadable file, ...
            self._set_pipeline(None, path_text, f"Cannot read {path_text}: {_message(err)}")
            return False
        self._set_pipeline(pipeline, path_text, None)
        return True

    def _set_pipeline(self, pipeline: Pipeline | None, path: str | None, error: str | None) -> None:
        self.pipeline = pipeline
        self.pipeline_path = path
        self._load_error = error
        self._fill_table()
        if pipeline is None:
            self.pipeline_label.setText("")
            self.progress_bar.setValue(0)
            self._set_status(error or "", error=error is not None and path is not None)
        else:
            n = len(pipeline.steps)
            kind = "creates a dataset from a movie" if pipeline.creates else "runs on a dataset"
            self.pipeline_label.setText(
                f"{pipeline.name!r}: {n} step{'s' if n != 1 else ''}; {kind}"
            )
            self.pipeline_label.setToolTip(path or "")
            self.progress_bar.setValue(0)
            self._set_status("")
        self.target_stack.setCurrentIndex(1 if self.creates else 0)
        self._update_controls()

    def _fill_table(self) -> None:
        table = self.steps_table
        steps = self.pipeline.steps if self.pipeline is not None else []
        table.setRowCount(len(steps))
        for row, step in enumerate(steps):
            name_item = QTableWidgetItem(step.name)
            name_item.setToolTip(step.title)
            params_item = QTableWidgetItem(format_parameters(changed_parameters(step), "\n"))
            params_item.setToolTip(format_parameters(step.params, "\n"))
            table.setItem(row, STEP_COL, name_item)
            table.setItem(row, PARAMS_COL, params_item)
            self._set_row(row, "")
        table.resizeRowsToContents()

    def _set_row(self, row: int, status: str, result: str = "", tip: str = "") -> None:
        """Show a step's status, with its result (or error) on a second line."""
        table = self.steps_table
        if not 0 <= row < table.rowCount():
            return
        item = QTableWidgetItem(f"{status}\n{result}" if result else status)
        item.setData(STATUS_ROLE, status)
        item.setData(RESULT_ROLE, result)
        item.setToolTip(tip or result)
        if status == "failed":
            item.setForeground(QColor(ERROR_COLOR))
        table.setItem(row, STATUS_COL, item)
        table.resizeRowToContents(row)

    # -- targets --------------------------------------------------------------------------
    def set_movie(self, path: str | os.PathLike) -> bool:
        """Choose the movie file (or glob) a ``create`` pipeline runs on.

        Returns
        -------
        bool
            True on success (False while a pipeline is running).
        """
        if self.is_running:
            show_warning("A pipeline is running: cancel it before choosing another movie.")
            return False
        self.movie_edit.setText(os.fspath(path))
        return True

    # -- actions --------------------------------------------------------------------------
    def run(self) -> Any:
        """Run the loaded pipeline (re-read from its file) on the target, in a worker.

        Returns
        -------
        GeneratorWorker or None
            The running worker (its ``finished`` signal fires when done, failed or
            cancelled), or None if nothing was started (the reason is notified).
        """
        if self.is_running:
            show_warning("A pipeline is already running.")
            return None
        if self.pipeline_path is None:
            show_error("No pipeline: choose a pipeline file and press Load first.")
            return None
        if not self.load_pipeline(self.pipeline_path):  # picks up edits of the file
            show_error(f"The pipeline cannot run: {self._load_error}")
            return None
        pipeline = self.pipeline
        assert pipeline is not None
        problem = self._target_problem()
        if problem:
            show_error(problem)
            return None
        from ..core.pipeline_run import iter_run_pipeline

        if pipeline.creates:
            job = PipelineJob(
                pipeline=pipeline, target=os.path.abspath(os.path.expanduser(self.movie))
            )
        else:
            ds = self.dataset
            assert ds is not None and ds.savedir
            job = PipelineJob(pipeline=pipeline, target=str(ds.savedir), dataset=ds)
        job.steps = iter_run_pipeline(pipeline, job.target)
        for row in range(self.steps_table.rowCount()):
            self._set_row(row, "")
        self.progress_bar.setValue(0)
        self._set_status(f"Running {pipeline.name!r} on {os.path.basename(job.target)}…")
        return self._start_worker(job, _pipeline_steps, [job.dataset], quit_on_cancel=False)

    def cancel(self) -> None:
        """Stop a running pipeline: the step running writes nothing, earlier ones stay."""
        if self._worker is None or self._job is None:
            return
        self._job.cancel_requested.set()
        self._set_status("Cancelling…")
        self.cancel_button.setEnabled(False)

    def open_result(self) -> bool:
        """Open the dataset the last run created (a ``create`` pipeline) in the viewer.

        Returns
        -------
        bool
            True if it was opened.
        """
        path = self.created_dataset
        if not path or not os.path.isdir(path):
            show_error("No dataset to open: run a pipeline that creates one first.")
            return False
        try:
            self.viewer.open(path, plugin="napari-sima")
        except Exception as err:  # napari wraps reader errors
            show_error(f"Cannot open {path}: {_message(err)}")
            return False
        self._update_controls()
        return True

    # -- handlers -------------------------------------------------------------------------
    def _on_browse_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a pipeline file", self._start_dir(), PIPELINE_FILTER
        )
        if path:
            self.load_pipeline(path)

    def _on_load_clicked(self) -> None:
        self.load_pipeline()

    def _on_movie_browse_clicked(self) -> None:
        start = os.path.dirname(self.movie) if self.movie else self._start_dir()
        path, _ = QFileDialog.getOpenFileName(self, "Choose the movie", start, MOVIE_FILTER)
        if path:
            self.set_movie(path)

    def _on_movie_changed(self, text: str) -> None:
        self._update_controls()

    def _on_open_clicked(self) -> None:
        self.open_result()

    def _on_worker_yielded(self, event: PipelineProgress) -> None:
        job = self._job
        if job is None:
            return
        self.progress_bar.setValue(int(round(min(1.0, max(0.0, event.fraction)) * PROGRESS_MAX)))
        index = self._step_index(event.step)
        if index is not None and index != job.step_index:
            if job.step_index is not None:
                self._set_row(job.step_index, FINISHED)
            self._set_row(index, RUNNING)
            job.step_index = index
        if not job.cancel_requested.is_set():
            self._set_status(f"Step {event.step}: {event.message}" if event.message else "")

    def _on_worker_finished(self, job: PipelineJob) -> None:
        # napari quits the workers of a closing viewer: the worker then stops between
        # two reports without closing the pipeline, so close it here (no-op otherwise)
        with contextlib.suppress(Exception):
            job.steps.close()
        if job.report is None and job.error is None:
            job.cancelled = True
        try:
            self._finish(job)
        except RuntimeError:  # the Qt side of the widget is gone
            logger.debug("pipeline finished after the widget was deleted", exc_info=True)
        job.dataset = None  # napari keeps ended workers (and a quit one's job): see JobGuard

    def _finish(self, job: PipelineJob) -> None:
        if self._job is job:
            self._worker = None
            self._job = None
            self._job_guard.release()
        name = job.pipeline.name
        report = job.report
        if job.error is not None:
            self.progress_bar.setValue(0)
            text = _message(job.error)
            self._set_status(f"Failed: {text}", error=True)
            show_error(f"Pipeline {name!r} failed: {text}")
            if not isinstance(job.error, USER_ERRORS + (PermissionError,)):
                logger.error("pipeline failed", exc_info=job.error)
        elif report is None:  # cancelled
            self._show_cancelled(job)
        else:
            self.last_report = report
            self._show_report(job, report)
        self._update_controls()

    def _show_cancelled(self, job: PipelineJob) -> None:
        self.progress_bar.setValue(0)
        running = job.step_index
        for row in range(self.steps_table.rowCount()):
            if running is not None and row == running:
                self._set_row(row, CANCELLED, "nothing written")
            elif running is None or row > running:
                self._set_row(row, "not-run")
        if running is None:
            text = "Cancelled before the first step; nothing was stored."
        else:
            title = job.pipeline.steps[running].title
            text = f"Cancelled during step {title}: it wrote nothing"
            text += "; the steps before it are stored." if running else "."
        self._set_status(text)
        show_info(f"Pipeline {job.pipeline.name!r} cancelled. {text}")

    def _show_report(self, job: PipelineJob, report: DatasetReport) -> None:
        folder = os.path.dirname(report.target) + os.sep
        for step in report.steps:
            tip = step.message if step.status == "failed" else (step.output or "")
            if step.status in ("done", "failed"):
                tip = f"{tip}\n({step.seconds:.2f} s)" if tip else f"{step.seconds:.2f} s"
            # files written next to the dataset (or the movie) by their name only
            result = step.message if step.status == "failed" else (step.output or "")
            if step.status != "failed":
                result = result.replace(folder, "")
            self._set_row(step.index, step.status, result, tip)
        self.steps_table.resizeRowsToContents()
        counts = {s: sum(1 for r in report.steps if r.status == s) for s in ("done", "skipped")}
        where = report.dataset or report.target
        name = job.pipeline.name
        if not report.ok:
            self.progress_bar.setValue(0)
            error = report.error or "unknown error"
            self._set_status(f"Failed: {error}", error=True)
            show_error(f"Pipeline {name!r} failed on {os.path.basename(where)}: {error}")
            return
        self.progress_bar.setValue(PROGRESS_MAX)
        text = (
            f"Pipeline {name!r} finished on {os.path.basename(where)}: "
            f"{counts['done']} done, {counts['skipped']} skipped (up to date) in "
            f"{report.seconds:.1f} s."
        )
        if job.pipeline.creates:
            self.created_dataset = report.dataset
            text += f" Dataset: {report.dataset}."
        else:
            text += " Results are stored with the dataset."
        if job.cancel_requested.is_set():
            text = "The pipeline had finished before it could be cancelled. " + text
        self._set_status(text)
        show_info(text)
        if job.dataset is not None and counts["done"]:
            self._refresh_other_docks(job.dataset)

    def _refresh_other_docks(self, dataset: ImagingDataset) -> None:
        """Let the Extract, Infer spikes and Traces docks re-read ``dataset``'s stored sets."""
        from .extract_widget import ExtractWidget
        from .spikes_widget import SpikesWidget
        from .traces_widget import TracesWidget

        viewer = unwrap(self.viewer)
        try:
            docks = list(viewer.window.dock_widgets.values())
        except Exception:  # no window, or a closing viewer
            return
        for dock in docks:
            try:
                if isinstance(dock, ExtractWidget) and dock.dataset is dataset:
                    dock.refresh_roi_sources()
                    dock.refresh_signal_sets()
                elif isinstance(dock, SpikesWidget) and dock.dataset is dataset:
                    dock.refresh_signal_sets()
                elif isinstance(dock, TracesWidget):
                    if dock.dataset is dataset and dock.label is not None:
                        # reload the set shown: its new ΔF/F and spikes
                        dock.set_signals(dataset, dock.label, channel=dock.channel)
                    else:
                        dock.refresh_sets()
            except Exception:  # a display problem must not hide the stored results
                logger.warning("could not refresh the %s dock", type(dock).__name__, exc_info=True)

    # -- helpers --------------------------------------------------------------------------
    def _start_dir(self) -> str:
        if self.pipeline_path:
            return os.path.dirname(self.pipeline_path)
        if self.dataset is not None and self.dataset.savedir:
            return os.path.dirname(str(self.dataset.savedir))
        return os.getcwd()

    def _step_index(self, title: str) -> int | None:
        if self.pipeline is None:
            return None
        return next((s.index for s in self.pipeline.steps if s.title == title), None)

    def _target_problem(self) -> str:
        """Why the pipeline cannot run on the chosen target ('' when it can)."""
        if self.pipeline is None:
            return "No pipeline: choose a pipeline file and press Load."
        if self.pipeline.creates:
            if not self.movie:
                return "Choose the movie the pipeline creates its dataset from."
            return ""
        ds = self.dataset
        if ds is None:
            return "No dataset: open a .sima dataset folder (or a movie) first."
        if not ds.savedir:
            return (
                "The dataset has no folder: save it as a .sima folder (Dataset dock) "
                "first; pipelines store their results there."
            )
        if ds.read_only:
            return (
                f"The dataset {ds.savedir} is read-only (a legacy SIMA folder?): save it "
                "as a new .sima folder (Dataset dock) first."
            )
        return ""

    def _update_controls(self) -> None:
        running = self.is_running
        for w in (
            self.path_edit,
            self.browse_button,
            self.load_button,
            self.dataset_combo,
            self.movie_edit,
            self.movie_browse_button,
        ):
            w.setEnabled(not running)
        problem = self._target_problem()
        self.run_button.setEnabled(not running and not problem)
        self.cancel_button.setEnabled(
            running and self._job is not None and not self._job.cancel_requested.is_set()
        )
        created = self.created_dataset
        openable = created is not None and not any(
            os.path.normpath(str(ds.savedir or "")) == os.path.normpath(created)
            for _, ds in self._datasets
        )
        self.open_button.setVisible(openable)
        self.open_button.setEnabled(openable and not running)
        if running or self._load_error is not None:  # the status shows the file's problem
            return
        hint = "Choose a pipeline file and press Load." if self.pipeline is None else problem
        if hint:
            self._set_status(hint, hint=True)
        elif self._status_is_hint:
            self._set_status("")

    def _set_status(self, text: str, hint: bool = False, error: bool = False) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet(f"color: {ERROR_COLOR};" if error else "")
        self._status_is_hint = hint


__all__ = [
    "PipelineJob",
    "PipelineWidget",
    "changed_parameters",
    "format_parameters",
]
