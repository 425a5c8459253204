"""The Infer spikes dock widget: spike inference on a stored signal set, in a worker.

A thin shell over :meth:`napari_sima.core.ImagingDataset.infer_spikes`: pick a dataset
(any dataset behind the viewer's layers), its channel and one of the channel's stored
signal sets, the parameter-estimation mode, the decay ``gamma`` (estimated, or a
value), whether ROIs share one gamma, and the solver.  The inference runs in a napari
``thread_worker`` with a progress bar (one step per trace) and a Cancel button; the
core stores ``spikes``, ``spikes_fits`` and ``spikes_params`` with the set, and the
widget then shows the fits and spikes in the Traces dock (when docked) and the spikes
as a raster layer.

Every action is a public method (``set_dataset``, ``set_channel``,
``set_signal_set``, ``set_options``, ``run``, ``cancel``, ``show_spikes``) so
scripts and tests can drive the widget without clicking.  Errors reach the user as
napari notifications, never tracebacks.

Notes
-----
**Cancelling.**  The core calls ``progress(done, total)`` after each trace; the
worker's callback raises when Cancel was pressed, which ends the core's loop before it
stores anything, so a cancelled run leaves the stored set as it was.  The parameter
estimation before the first trace (short, except for ``'psd'`` without shared gamma)
and the final write cannot be interrupted: a Cancel during the write is reported as
"finished before it could be cancelled".

**Progress** reaches the GUI thread through a Qt signal (queued across threads),
sent at most about :data:`PROGRESS_STEPS` times per run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from .._layers import unwrap
from ._common import (
    USER_ERRORS,
    blocked,
    make_status_label,
)
from ._common import RefreshingComboBox as _RefreshingComboBox
from ._common import user_message as _message
from ._dataset_dock import DatasetDock
from .extract_widget import signal_set_labels

if TYPE_CHECKING:
    from ..core import ImagingDataset

logger = logging.getLogger(__name__)

#: Parameter-estimation modes: (mode, tooltip).
MODE_ITEMS = (
    (
        "correct",
        "SIMA's default: gamma from the autocovariance at lags 2 and 3, noise corrected "
        "for the decay (may estimate no noise on clean traces)",
    ),
    ("robust", "Noise from the lag-0 and lag-1 autocovariance, without the decay correction"),
    ("psd", "Noise from the power spectrum's high frequencies; AR(2) decay (cvxpy solver)"),
)

#: Solvers: (solver, tooltip).
SOLVER_ITEMS = (
    ("oasis", "Exact active-set solver (fast; AR(2) in 'psd' mode falls back to cvxpy)"),
    ("cvxpy", "Reference cone program (CLARABEL); about 50-100 times slower"),
)

#: Initial value of the gamma box.
DEFAULT_GAMMA = 0.95

#: About this many progress reports per run reach the GUI thread.
PROGRESS_STEPS = 200


class InferenceCancelled(Exception):
    """Raised in the worker's progress callback to stop a cancelled inference."""


class _ProgressRelay(QObject):
    """Carries ``(done, total)`` from the worker thread to the GUI thread."""

    progressed = Signal(int, int)


@dataclass
class SpikesOutcome:
    """What a finished inference stored: set, channel, sizes, shared gamma, duration."""

    label: str
    channel: int
    n_rois: int
    num_frames: int
    num_sequences: int
    gamma: float | None
    seconds: float


@dataclass
class SpikesJob:
    """State shared between the widget and one inference worker.

    Attributes
    ----------
    dataset : ImagingDataset
        The dataset.
    channel : int
        Channel index of the signal set.
    label : str
        The signal set.
    options : dict
        ``mode``, ``gamma``, ``share_gamma``, ``solver`` (keyword arguments of
        :meth:`~napari_sima.core.ImagingDataset.infer_spikes`).
    replaced : bool
        Whether the set already held spikes (they are replaced).
    cancel_requested : threading.Event
        Set by :meth:`SpikesWidget.cancel`; checked at every trace.
    cancelled : bool
        Written by the worker when it stopped on a cancel.
    outcome : SpikesOutcome or None
        Written by the worker when the spikes are stored.
    error : BaseException or None
        Written by the worker when the inference failed.
    """

    dataset: Any
    channel: int
    label: str
    options: dict[str, Any]
    replaced: bool = False
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    outcome: SpikesOutcome | None = None
    error: BaseException | None = None


def set_has_spikes(dataset: ImagingDataset, channel: int, label: str) -> bool:
    """Whether a stored signal set holds inferred spikes (read from the index when stored).

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.
    channel : int
        Channel index.
    label : str
        The signal set.

    Returns
    -------
    bool
        False too when the set cannot be read.
    """
    from ..core import signal_store

    try:
        if dataset.savedir is None:
            entry = signal_store.memory_store(dataset, channel).get(label) or {}
            return entry.get("spikes") is not None
        folder = signal_store.store_dir(dataset.savedir, channel)
        if (folder / signal_store.INDEX_FILE).exists():
            return "spikes" in signal_store.signal_set_info(folder, label).get("entries", ())
    except USER_ERRORS:
        return False
    return False  # a legacy SIMA pickle: spikes were never stored there


@thread_worker
def _inference_job(job: SpikesJob, relay: _ProgressRelay) -> None:
    """Run ``dataset.infer_spikes`` in a worker thread; the results go to ``job``."""
    last = [0]

    def progress(done: int, total: int) -> None:
        if job.cancel_requested.is_set():
            raise InferenceCancelled
        if done >= total or done - last[0] >= max(1, int(total) // PROGRESS_STEPS):
            last[0] = int(done)
            # RuntimeError: the widget was deleted; finish without reporting
            with contextlib.suppress(RuntimeError):
                relay.progressed.emit(int(done), int(total))

    t0 = time.perf_counter()
    try:
        spikes, _, params = job.dataset.infer_spikes(
            channel=job.channel, label=job.label, progress=progress, **job.options
        )
    except InferenceCancelled:
        job.cancelled = True
        return
    except Exception as err:  # reported by the widget as a notification
        job.error = err
        return
    gammas = [g for p in params for g in p.get("gamma", []) if np.ndim(g) == 0]
    finite = [float(g) for g in gammas if g is not None and np.isfinite(g)]
    job.outcome = SpikesOutcome(
        label=job.label,
        channel=job.channel,
        n_rois=int(np.shape(spikes[0])[0]) if spikes else 0,
        num_frames=int(sum(np.shape(s)[1] for s in spikes)),
        num_sequences=len(spikes),
        gamma=float(np.median(finite)) if finite else None,
        seconds=time.perf_counter() - t0,
    )


class SpikesWidget(DatasetDock):
    """Infer the spikes of a stored signal set, store them with it and show them.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer; datasets are found through its layers'
        ``metadata['napari_sima']['dataset']``.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    dataset : ImagingDataset or None
        The dataset.
    last_label : str or None
        Signal set of the last inference this widget stored.
    last_outcome : SpikesOutcome or None
        What the last inference stored.
    """

    capability = "infer_spikes"
    job_name = "spike inference"
    busy_message = "Spike inference is running"

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.last_label: str | None = None
        self.last_outcome: SpikesOutcome | None = None
        self._labels: list[str] = []
        self._job: SpikesJob | None = None
        self._relay = _ProgressRelay(self)
        self._relay.progressed.connect(self._on_progress)

        self.setObjectName("napari_sima_spikes_widget")
        layout = QVBoxLayout(self)
        layout.addWidget(self._create_source_group())
        layout.addWidget(self._create_options_group())
        layout.addWidget(self._create_run_group())
        layout.addStretch(1)
        self._start_following_layers()

    # -- construction ---------------------------------------------------------------------
    def _create_source_group(self) -> QGroupBox:
        box = QGroupBox("Signals", self)
        box.setObjectName("source_group")
        form = QFormLayout(box)
        self._make_dataset_combo(box)
        self.channel_combo = QComboBox(box)
        self.channel_combo.setObjectName("channel_combo")
        self.channel_combo.setToolTip("Channel of the signal set")
        self.channel_combo.currentIndexChanged.connect(self._on_channel_changed)
        self.signals_combo = _RefreshingComboBox(self.refresh_signal_sets, box)
        self.signals_combo.setObjectName("signals_combo")
        self.signals_combo.setToolTip(
            "Stored signal set whose traces are deconvolved (newest first; "
            "'✓ spikes' marks sets that already hold spikes, which are replaced)"
        )
        self.signals_combo.currentIndexChanged.connect(self._on_signals_combo_changed)
        form.addRow("Dataset", self.dataset_combo)
        form.addRow("Channel", self.channel_combo)
        form.addRow("Signal set", self.signals_combo)
        return box

    def _create_options_group(self) -> QGroupBox:
        box = QGroupBox("Inference", self)
        box.setObjectName("options_group")
        form = QFormLayout(box)
        self.mode_combo = QComboBox(box)
        self.mode_combo.setObjectName("mode_combo")
        for mode, tip in MODE_ITEMS:
            self.mode_combo.addItem(mode, mode)
            self.mode_combo.setItemData(
                self.mode_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole
            )
        self.mode_combo.setToolTip(
            "How the noise level and the decay are estimated from each trace "
            "(SIMA's modes; see docs/spike-inference.md)"
        )
        self.estimate_gamma_check = QCheckBox("Estimate γ from the traces", box)
        self.estimate_gamma_check.setObjectName("estimate_gamma_check")
        self.estimate_gamma_check.setChecked(True)
        self.estimate_gamma_check.setToolTip(
            "Estimate the calcium decay per frame (gamma) from each ROI's traces; "
            "unchecked, the value below is used for every ROI"
        )
        self.estimate_gamma_check.toggled.connect(self._on_estimate_gamma_toggled)
        self.gamma_spin = QDoubleSpinBox(box)
        self.gamma_spin.setObjectName("gamma_spin")
        self.gamma_spin.setRange(0.01, 0.9999)
        self.gamma_spin.setDecimals(4)
        self.gamma_spin.setSingleStep(0.01)
        self.gamma_spin.setValue(DEFAULT_GAMMA)
        self.gamma_spin.setToolTip(
            "Decay of the calcium per frame, exp(-1 / (tau × frame rate)); e.g. 0.95 "
            "for tau = 0.65 s at 30 Hz"
        )
        self.share_gamma_check = QCheckBox("Share γ across ROIs (median)", box)
        self.share_gamma_check.setObjectName("share_gamma_check")
        self.share_gamma_check.setChecked(True)
        self.share_gamma_check.setToolTip(
            "Use one decay for every ROI: the median of the per-ROI estimates "
            "('psd': estimated on all traces together)"
        )
        self.solver_combo = QComboBox(box)
        self.solver_combo.setObjectName("solver_combo")
        for solver, tip in SOLVER_ITEMS:
            self.solver_combo.addItem(solver, solver)
            self.solver_combo.setItemData(
                self.solver_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole
            )
        self.solver_combo.setToolTip(
            "Both solve the same noise-constrained deconvolution; oasis is exact and fast"
        )
        form.addRow("Mode", self.mode_combo)
        form.addRow(self.estimate_gamma_check)
        form.addRow("γ (decay)", self.gamma_spin)
        form.addRow(self.share_gamma_check)
        form.addRow("Solver", self.solver_combo)
        return box

    def _create_run_group(self) -> QGroupBox:
        box = QGroupBox("Run", self)
        box.setObjectName("run_group")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.run_button = self._button("Infer spikes", "run_button", self._on_run_clicked, box)
        self.run_button.setToolTip(
            "Deconvolve every trace of the set in the background and store the spikes "
            "and fits with it"
        )
        self.cancel_button = self._button("Cancel", "cancel_button", self._on_cancel_clicked, box)
        self.cancel_button.setToolTip("Stop the inference; the stored set is left unchanged")
        self.show_button = self._button("Show", "show_button", self._on_show_clicked, box)
        self.show_button.setToolTip(
            "Show the set's fits and spikes in the Traces dock and its spikes as a raster layer"
        )
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.show_button)
        layout.addLayout(row)
        self.progress_bar = QProgressBar(box)
        self.progress_bar.setObjectName("progress_bar")
        self.progress_bar.setFormat("%p%")
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status_label = make_status_label(box)
        layout.addWidget(self.status_label)
        return box

    # -- state ----------------------------------------------------------------------------
    @property
    def channel(self) -> int | None:
        """Index of the chosen channel (None without a dataset)."""
        if self.dataset is None or self.channel_combo.currentIndex() < 0:
            return None
        return int(self.channel_combo.currentIndex())

    @property
    def signal_set(self) -> str | None:
        """Label of the chosen signal set (None when the channel has none)."""
        k = self.signals_combo.currentIndex()
        return self._labels[k] if 0 <= k < len(self._labels) else None

    def options(self) -> dict[str, Any]:
        """Return the inference options entered (keywords of ``ImagingDataset.infer_spikes``).

        Returns
        -------
        dict
            ``mode``, ``gamma`` (None: estimated), ``share_gamma`` and ``solver``.
        """
        estimate = self.estimate_gamma_check.isChecked()
        return {
            "mode": str(self.mode_combo.currentData()),
            "gamma": None if estimate else float(self.gamma_spin.value()),
            "share_gamma": bool(self.share_gamma_check.isChecked()),
            "solver": str(self.solver_combo.currentData()),
        }

    def set_options(
        self,
        mode: str | None = None,
        gamma: float | str | None = None,
        share_gamma: bool | None = None,
        solver: str | None = None,
    ) -> bool:
        """Set inference options (None leaves an option unchanged).

        Parameters
        ----------
        mode : {'correct', 'robust', 'psd'}, optional
        gamma : float or 'estimate', optional
            A decay in (0, 1), or ``'estimate'`` to estimate it from the traces.
        share_gamma : bool, optional
        solver : {'oasis', 'cvxpy'}, optional

        Returns
        -------
        bool
            False (with an error notification, nothing changed) for a bad value.
        """
        modes = [m for m, _ in MODE_ITEMS]
        solvers = [s for s, _ in SOLVER_ITEMS]
        if mode is not None and mode not in modes:
            show_error(f"Unknown mode {mode!r}; choose one of {modes}.")
            return False
        if solver is not None and solver not in solvers:
            show_error(f"Unknown solver {solver!r}; choose one of {solvers}.")
            return False
        value: float | None = None
        if gamma is not None and gamma != "estimate":
            try:
                value = float(gamma)
            except (TypeError, ValueError):
                value = float("nan")
            low, high = self.gamma_spin.minimum(), self.gamma_spin.maximum()
            if not low <= value <= high:
                show_error(
                    f"gamma must be 'estimate' or a decay in [{low}, {high}], not {gamma!r}."
                )
                return False
        if mode is not None:
            self.mode_combo.setCurrentIndex(modes.index(mode))
        if solver is not None:
            self.solver_combo.setCurrentIndex(solvers.index(solver))
        if gamma == "estimate":
            self.estimate_gamma_check.setChecked(True)
        elif value is not None:
            self.estimate_gamma_check.setChecked(False)
            self.gamma_spin.setValue(value)
        if share_gamma is not None:
            self.share_gamma_check.setChecked(bool(share_gamma))
        return True

    # -- datasets and sets ----------------------------------------------------------------
    def _on_dataset_set(self, changed: bool) -> None:
        if changed:
            self._fill_channels()
        self.refresh_signal_sets()

    def set_channel(self, channel: int | str) -> bool:
        """Choose the channel by index or name; returns True if the dataset has it."""
        if self.dataset is None:
            show_warning("No dataset: open a movie or a .sima folder first.")
            return False
        try:
            index = self.dataset.resolve_channel(channel)
        except USER_ERRORS as err:
            show_error(_message(err))
            return False
        self.channel_combo.setCurrentIndex(index)
        return True

    def set_signal_set(self, label: str) -> bool:
        """Choose the stored signal set ``label``; returns True if the channel has it."""
        self.refresh_signal_sets()
        if label in self._labels:
            self.signals_combo.setCurrentIndex(self._labels.index(label))
            return True
        show_error(f"No signal set {label!r} for this channel; the stored sets are {self._labels}.")
        return False

    def refresh_signal_sets(self) -> None:
        """Rebuild the signal-set box for the dataset and channel (newest first)."""
        current = self.signal_set
        labels: list[str] = []
        ds, ch = self.dataset, self.channel
        if ds is not None and ch is not None:
            try:
                labels = signal_set_labels(ds, ch)
            except USER_ERRORS as err:
                show_error(f"Cannot read the dataset's signal sets: {_message(err)}")
        self._labels = labels
        with blocked(self.signals_combo):
            self.signals_combo.clear()
            for label in labels:
                spiked = ds is not None and ch is not None and set_has_spikes(ds, ch, label)
                self.signals_combo.addItem(f"{label}   ✓ spikes" if spiked else label)
            index = 0 if labels else -1
            for wanted in (current, self.last_label):
                if wanted in labels:
                    index = labels.index(wanted)
                    break
            self.signals_combo.setCurrentIndex(index)
        self._update_controls()

    # -- actions --------------------------------------------------------------------------
    def run(self) -> Any:
        """Infer the spikes of the chosen set in a worker thread, store and show them.

        Returns
        -------
        FunctionWorker or None
            The running worker (its ``finished`` signal fires when done, failed or
            cancelled), or None if nothing was started (the reason is notified).
        """
        if self.is_running:
            show_warning("Spike inference is already running.")
            return None
        ds = self.dataset
        if ds is None:
            show_error("No dataset: open a movie or a .sima folder first.")
            return None
        if ds.savedir is not None and ds.read_only:
            show_error(
                f"The dataset {ds.savedir} is read-only (a legacy SIMA folder or a folder "
                "without write permission), so the spikes could not be stored: save it to "
                "a new .sima folder with the Dataset panel first."
            )
            return None
        channel = self.channel
        self.refresh_signal_sets()
        label = self.signal_set
        if channel is None or label is None:
            where = f" for channel {ds.channel_names[channel]!r}" if channel is not None else ""
            show_error(
                f"No signal set to deconvolve{where}: extract ROI signals in the Extract "
                "dock first."
            )
            return None
        job = SpikesJob(
            dataset=ds,
            channel=channel,
            label=label,
            options=self.options(),
            replaced=set_has_spikes(ds, channel, label),
        )
        self.progress_bar.setRange(0, 0)  # busy until the first trace is done
        self.progress_bar.setValue(0)
        self._set_status(f"Estimating the parameters of {label!r}…")
        return self._start_worker(
            job,
            lambda job, _connect: _inference_job(job, self._relay, _connect=_connect),
            [ds], yields=False, quit_on_cancel=False,
        )

    def cancel(self) -> None:
        """Stop a running inference at the next trace; the stored set is left unchanged."""
        if self._worker is None or self._job is None:
            return
        self._job.cancel_requested.set()
        self._set_status("Cancelling…")
        self.cancel_button.setEnabled(False)

    def show_spikes(self, label: str | None = None) -> bool:
        """Show a set's fits and spikes in the Traces dock and its spikes as a raster.

        Parameters
        ----------
        label : str, optional
            The set (default: the chosen one).

        Returns
        -------
        bool
            True if something was shown.
        """
        ds, ch = self.dataset, self.channel
        if ds is None or ch is None:
            show_error("No dataset: open a movie or a .sima folder first.")
            return False
        label = label or self.signal_set
        if not label:
            show_error("The channel has no stored signals: extract ROI signals first.")
            return False
        if not set_has_spikes(ds, ch, label):
            show_error(f"The signal set {label!r} has no spikes yet: press Infer spikes first.")
            return False
        return self._show(ds, label, ch)

    # -- handlers -------------------------------------------------------------------------
    def _on_show_clicked(self) -> None:
        self.show_spikes()

    def _on_channel_changed(self, index: int) -> None:
        self.refresh_signal_sets()

    def _on_signals_combo_changed(self, index: int) -> None:
        self._update_controls()

    def _on_estimate_gamma_toggled(self, checked: bool) -> None:
        self._update_controls()

    def _on_progress(self, done: int, total: int) -> None:
        job = self._job
        if job is None:
            return
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(min(done, max(1, total)))
        if not job.cancel_requested.is_set():
            text = f"Inferring spikes of {job.label!r}: {done} / {total} traces"
            if done >= total:
                text = "Storing the spikes and fits…"
            self._set_status(text)

    def _on_worker_finished(self, job: SpikesJob) -> None:
        try:
            self._finish(job)
        except RuntimeError:  # the Qt side of the widget is gone
            logger.debug("inference finished after the widget was deleted", exc_info=True)
        job.dataset = None  # napari keeps ended workers (and their job): see JobGuard

    def _finish(self, job: SpikesJob) -> None:
        if self._job is job:
            self._job_guard.release()
            self._worker = None
            self._job = None
        self.progress_bar.setRange(0, 1)
        outcome = job.outcome
        if job.error is not None:
            self.progress_bar.setValue(0)
            text = _message(job.error)
            self._set_status(f"Failed: {text}")
            show_error(f"Spike inference failed: {text}")
            if not isinstance(job.error, USER_ERRORS + (PermissionError,)):
                logger.error("spike inference failed", exc_info=job.error)
        elif outcome is None:
            self.progress_bar.setValue(0)
            self._set_status("Cancelled; the signal set was left unchanged.")
            show_info("Spike inference cancelled; the signal set was left unchanged.")
        else:
            self.progress_bar.setValue(1)
            self._on_spikes_stored(job, outcome)
        if job.dataset is self.dataset:
            self.refresh_signal_sets()
        self._update_controls()

    def _on_spikes_stored(self, job: SpikesJob, outcome: SpikesOutcome) -> None:
        self.last_label = outcome.label
        self.last_outcome = outcome
        message = (
            f"Inferred spikes of {outcome.n_rois} ROIs × {outcome.num_frames} frames in "
            f"{outcome.label!r}"
        )
        if outcome.gamma is not None:
            shared = job.options.get("share_gamma") or job.options.get("gamma") is not None
            message += f" (γ = {outcome.gamma:.3f}{'' if shared else ', median'})"
        message += f" in {outcome.seconds:.1f} s" if outcome.seconds >= 0.1 else " in < 0.1 s"
        if job.replaced:
            message += "; the set's previous spikes were replaced"
        if job.cancel_requested.is_set():
            message = "The inference had finished before it could be cancelled. " + message
        self._set_status(message)
        show_info(message)
        self._show(job.dataset, outcome.label, outcome.channel)

    # -- helpers --------------------------------------------------------------------------
    def _fill_channels(self) -> None:
        names = list(self.dataset.channel_names) if self.dataset is not None else []
        with blocked(self.channel_combo):
            self.channel_combo.clear()
            self.channel_combo.addItems(names)
            self.channel_combo.setCurrentIndex(0 if names else -1)

    def _show(self, dataset: ImagingDataset, label: str, channel: int) -> bool:
        """Hand the set to the Traces dock (if docked) and show its spikes raster."""
        viewer = unwrap(self.viewer)
        shown = False
        try:
            from .traces_widget import find_traces_widget

            traces = find_traces_widget(viewer)
            if traces is not None:
                traces.set_signals(dataset, label, channel=channel)
                shown = True
        except Exception as err:  # a display problem must not hide the stored result
            show_warning(f"Could not show the spikes in the Traces dock: {_message(err)}")
            logger.warning("Traces dock update failed", exc_info=True)
        try:
            from .._raster import show_raster

            show_raster(viewer, dataset, label, channel=channel, kind="spikes")
            shown = True
        except Exception as err:
            show_warning(f"Could not show the spikes raster: {_message(err)}")
            logger.warning("spikes raster failed", exc_info=True)
        return shown

    def _update_controls(self) -> None:
        has = self.dataset is not None
        running = self.is_running
        for w in (
            self.dataset_combo,
            self.channel_combo,
            self.signals_combo,
            self.mode_combo,
            self.estimate_gamma_check,
            self.solver_combo,
        ):
            w.setEnabled(not running and (has or w is self.dataset_combo))
        estimate = self.estimate_gamma_check.isChecked()
        self.gamma_spin.setEnabled(has and not running and not estimate)
        self.share_gamma_check.setEnabled(has and not running and estimate)
        label = self.signal_set
        self.run_button.setEnabled(has and not running and label is not None)
        self.cancel_button.setEnabled(
            running and self._job is not None and not self._job.cancel_requested.is_set()
        )
        ds, ch = self.dataset, self.channel
        self.show_button.setEnabled(
            not running
            and ds is not None
            and ch is not None
            and label is not None
            and set_has_spikes(ds, ch, label)
        )
        if running:
            return
        hint = ""
        if not has:
            hint = "No dataset: open a movie or a .sima folder."
        elif label is None:
            hint = "No signal set for this channel: extract ROI signals in the Extract dock."
        if hint:
            self._set_status(hint, hint=True)
        elif self._status_is_hint:
            self._set_status("")

__all__ = ["InferenceCancelled", "SpikesJob", "SpikesOutcome", "SpikesWidget", "set_has_spikes"]
