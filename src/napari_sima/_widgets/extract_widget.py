"""The Extract dock widget: ROI signals (and ΔF/F) from a dataset, in a worker thread.

The widget is a thin shell over :meth:`napari_sima.core.ImagingDataset.iter_extract`
and :func:`napari_sima.core.dff`: pick a dataset (any dataset behind the viewer's
layers), an ROI source (a stored ROI set, or a Shapes layer holding ROIs, e.g. the
ROIs dock's ``'ROIs: <set>'`` layer with its unsaved edits), the channel and the
extraction options; the extraction runs in a napari ``thread_worker`` with a
progress bar and a Cancel button.  The core stores the result with the dataset (in
its folder, or in memory for a dataset without one); the widget then adds ΔF/F to
the stored set and shows the signals in the Traces dock (when docked) and as a raster
layer.

Every action is a public method (``set_dataset``, ``set_roi_source``, ``run``,
``cancel``, ``export_signals``, ``show_signals``) so scripts and tests can drive it
without dialogs.  Errors reach the user as napari notifications, never tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QProgressBar,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._layers import sima_metadata, unwrap
from ._common import (
    USER_ERRORS,
    blocked,
    make_status_label,
)
from ._common import RefreshingComboBox as _RefreshingComboBox
from ._common import user_message as _message
from ._dataset_dock import DatasetDock

if TYPE_CHECKING:
    from napari.layers import Shapes

    from ..core import ImagingDataset
    from ..core.roi import ROIList

logger = logging.getLogger(__name__)


#: Baseline methods offered for ΔF/F (see :func:`napari_sima.core.dff`).
DFF_BASELINES = ("percentile", "maximin")

#: Default ΔF/F options (those of :func:`napari_sima.core.dff`).
DFF_DEFAULTS: dict[str, Any] = {
    "baseline": "percentile",
    "window": 500,
    "percentile": 8.0,
    "sigma": 10.0,
}

#: Export formats: format -> (file suffix, file-dialog filter).
EXPORT_FORMATS = {
    "csv": (".csv", "Comma-separated values (*.csv)"),
    "tsv": (".tsv", "SIMA's tab-separated layout (*.tsv)"),
    "npz": (".npz", "NumPy arrays and ROI properties (*.npz)"),
}

#: Text of the "no demixing" entry of the demix box.
NO_DEMIX = "none"

#: Prefix of the ROI-source entries that are Shapes layers.
LAYER_PREFIX = "layer: "


def signal_set_labels(dataset: ImagingDataset, channel: int) -> list[str]:
    """Labels of the stored signal sets of a channel, newest first.

    A dataset folder's index is read without loading the sets.

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.
    channel : int
        Channel index.

    Returns
    -------
    list of str
    """
    return dataset.signal_labels(channel)[::-1]


def store_signal_entries(dataset: ImagingDataset, channel: int, label: str, **entries: Any) -> None:
    """Add extra entries (``dff``, ...) to a stored signal set of a dataset.

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.
    channel : int
        Channel index of the set.
    label : str
        The set.
    **entries
        Arrays, lists of arrays (one per sequence) or JSON-compatible values.

    Raises
    ------
    KeyError
        If there is no such set.
    PermissionError
        If the dataset is read-only.
    """
    from ..core import signal_store

    if dataset.savedir is None:
        sets = signal_store.memory_store(dataset, channel)
        if label not in sets:
            raise KeyError(f"no signal set {label!r} for channel {channel}")
        sets[label].update(entries)
        return
    if dataset.read_only:
        raise PermissionError(f"the dataset {dataset.savedir!r} is read-only")
    signal_store.update_signal_set(
        signal_store.store_dir(dataset.savedir, channel), label, **entries
    )


@dataclass
class ExtractionJob:
    """State shared between the widget and one extraction worker.

    Attributes
    ----------
    dataset : ImagingDataset
        The dataset extracted.
    steps : generator
        ``dataset.iter_extract(...)``; closed when the worker ends (which cancels it).
    label : str or None
        Requested set label (None: the extraction timestamp).
    dff_options : dict or None
        Options of :func:`napari_sima.core.dff`, or None for no ΔF/F.
    n_rois : int
        Number of ROIs.
    replaced : bool
        Whether a set of the same label existed.
    cancel_requested : threading.Event
        Set by :meth:`ExtractWidget.cancel`.
    outcome : ExtractionOutcome or None
        Written by the worker when the set is stored.
    error : BaseException or None
        Written by the worker when it failed.
    """

    dataset: Any
    steps: Generator[tuple[int, int], None, dict[str, Any]]
    label: str | None
    dff_options: dict[str, Any] | None
    n_rois: int = 0
    replaced: bool = False
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    outcome: ExtractionOutcome | None = None
    error: BaseException | None = None


@dataclass
class ExtractionOutcome:
    """What an extraction stored: set label, channel index, sizes, ΔF/F status."""

    label: str
    channel: int
    n_rois: int
    num_frames: int
    num_sequences: int
    dff: bool
    dff_error: str | None = None


@thread_worker
def _extraction_steps(job: ExtractionJob) -> Generator[tuple[int, int], None, None]:
    """Run an extraction (and ΔF/F) in a worker thread; results go to ``job``.

    Yields
    ------
    (frames_done, total)
        Progress of ``dataset.iter_extract``.
    """
    from ..core import dff

    try:
        result = yield from job.steps
    except Exception as err:  # reported by the widget as a notification
        job.error = err
        return
    label = str(result["timestamp"]) if job.label is None else job.label
    channel = int(result["signal_channel"])
    raw = [np.asarray(r) for r in result["raw"]]
    outcome = ExtractionOutcome(
        label=label,
        channel=channel,
        n_rois=int(raw[0].shape[0]) if raw else 0,
        num_frames=int(sum(r.shape[1] for r in raw)),
        num_sequences=len(raw),
        dff=False,
    )
    job.outcome = outcome  # the set is stored from here on
    if job.dff_options is not None:
        try:
            opts = dict(job.dff_options)
            values = [dff(r, **opts) for r in raw]
            store_signal_entries(job.dataset, channel, label, dff=values, dff_parameters=opts)
            outcome.dff = True
        except Exception as err:
            outcome.dff_error = _message(err)


class ExtractWidget(DatasetDock):
    """Extract ROI signals of a dataset, store them with ΔF/F, show and export them.

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
        The dataset to extract.
    last_label : str or None
        Label of the last signal set this widget stored.
    last_outcome : ExtractionOutcome or None
        What the last extraction stored.

    Notes
    -----
    ROI sources are the dataset's stored ROI sets and the Shapes layers holding ROIs
    (``metadata['napari_sima']['kind'] == 'rois'``) of this dataset or of no dataset;
    a layer is converted with :func:`napari_sima._roi_convert.shapes_to_rois`, so its
    unsaved edits are extracted.  Cancelling stops the worker between two blocks of
    frames and nothing is stored; when the extraction had already been stored, the
    widget says so and shows it.
    """

    capability = "iter_extract"
    job_name = "extraction"
    busy_message = "An extraction is running"

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.last_label: str | None = None
        self.last_outcome: ExtractionOutcome | None = None
        self._roi_sources: list[tuple[str, Any, str]] = []  # (kind, set label | layer, text)
        self._job: ExtractionJob | None = None

        self.setObjectName("napari_sima_extract_widget")
        layout = QVBoxLayout(self)
        layout.addWidget(self._create_source_group())
        layout.addWidget(self._create_options_group())
        layout.addWidget(self._create_dff_group())
        layout.addWidget(self._create_run_group())
        layout.addWidget(self._create_signals_group())
        layout.addStretch(1)
        self._start_following_layers()

    def _on_layers_refreshed(self) -> None:
        self.refresh_roi_sources()

    # -- construction ---------------------------------------------------------------------
    def _create_source_group(self) -> QGroupBox:
        box = QGroupBox("Source", self)
        box.setObjectName("source_group")
        form = QFormLayout(box)
        self._make_dataset_combo(box)
        self.roi_combo = _RefreshingComboBox(self.refresh_roi_sources, box)
        self.roi_combo.setObjectName("roi_combo")
        self.roi_combo.setToolTip(
            "A stored ROI set of the dataset, or a Shapes layer holding ROIs "
            "(its current shapes, unsaved edits included)"
        )
        self.channel_combo = QComboBox(box)
        self.channel_combo.setObjectName("channel_combo")
        self.channel_combo.setToolTip("Channel whose signals are extracted")
        self.channel_combo.currentIndexChanged.connect(self._on_channel_changed)
        form.addRow("Dataset", self.dataset_combo)
        form.addRow("ROIs", self.roi_combo)
        form.addRow("Channel", self.channel_combo)
        return box

    def _create_options_group(self) -> QGroupBox:
        box = QGroupBox("Extraction", self)
        box.setObjectName("options_group")
        form = QFormLayout(box)
        self.remove_overlap_check = QCheckBox("Remove overlapping pixels", box)
        self.remove_overlap_check.setObjectName("remove_overlap_check")
        self.remove_overlap_check.setChecked(True)
        self.remove_overlap_check.setToolTip(
            "Drop pixels shared by several ROIs (SIMA's default); unchecked, shared "
            "pixels are split between the ROIs by least squares"
        )
        self.demix_combo = QComboBox(box)
        self.demix_combo.setObjectName("demix_combo")
        self.demix_combo.setToolTip(
            "Experimental two-channel demixing against this channel (adds demixed signals)"
        )
        self.processes_spin = QSpinBox(box)
        self.processes_spin.setObjectName("processes_spin")
        self.processes_spin.setRange(1, max(1, os.cpu_count() or 1))
        self.processes_spin.setValue(1)
        self.processes_spin.setToolTip("Processes reading and computing the frames")
        self.label_edit = QLineEdit(box)
        self.label_edit.setObjectName("label_edit")
        self.label_edit.setPlaceholderText("blank: the extraction timestamp")
        self.label_edit.setToolTip(
            "Name of the stored signal set (a set of the same name is replaced)"
        )
        form.addRow(self.remove_overlap_check)
        form.addRow("Demix channel", self.demix_combo)
        form.addRow("Processes", self.processes_spin)
        form.addRow("Signals label", self.label_edit)
        return box

    def _create_dff_group(self) -> QGroupBox:
        box = QGroupBox("Compute ΔF/F", self)
        box.setObjectName("dff_group")
        box.setCheckable(True)
        box.setChecked(True)
        box.setToolTip(
            "Store ΔF/F = (F − F0) / F0 with the signals, F0 a sliding baseline "
            "(napari_sima.core.dff)"
        )
        form = QFormLayout(box)
        self.baseline_combo = QComboBox(box)
        self.baseline_combo.setObjectName("baseline_combo")
        self.baseline_combo.addItems(list(DFF_BASELINES))
        self.baseline_combo.setToolTip(
            "percentile: a low percentile in a sliding window; maximin: Gaussian "
            "smoothing, then a running minimum and maximum (suite2p's baseline)"
        )
        self.baseline_combo.currentIndexChanged.connect(self._on_baseline_changed)
        self.window_spin = QSpinBox(box)
        self.window_spin.setObjectName("window_spin")
        self.window_spin.setRange(1, 10_000_000)
        self.window_spin.setValue(int(DFF_DEFAULTS["window"]))
        self.window_spin.setSuffix(" frames")
        self.window_spin.setToolTip("Baseline window (clipped to the trace length)")
        self.percentile_spin = QDoubleSpinBox(box)
        self.percentile_spin.setObjectName("percentile_spin")
        self.percentile_spin.setRange(0.0, 100.0)
        self.percentile_spin.setDecimals(1)
        self.percentile_spin.setValue(float(DFF_DEFAULTS["percentile"]))
        self.percentile_spin.setToolTip("Percentile of F in the window taken as F0")
        self.sigma_spin = QDoubleSpinBox(box)
        self.sigma_spin.setObjectName("sigma_spin")
        self.sigma_spin.setRange(0.0, 100_000.0)
        self.sigma_spin.setDecimals(1)
        self.sigma_spin.setValue(float(DFF_DEFAULTS["sigma"]))
        self.sigma_spin.setSuffix(" frames")
        self.sigma_spin.setToolTip("Gaussian smoothing before the running min / max")
        form.addRow("Baseline", self.baseline_combo)
        form.addRow("Window", self.window_spin)
        form.addRow("Percentile", self.percentile_spin)
        form.addRow("Smoothing σ", self.sigma_spin)
        self.dff_group = box
        self._on_baseline_changed()
        return box

    def _create_run_group(self) -> QGroupBox:
        box = QGroupBox("Run", self)
        box.setObjectName("run_group")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.run_button = self._button("Extract", "run_button", self._on_run_clicked, box)
        self.run_button.setToolTip("Extract the signals in the background and store them")
        self.cancel_button = self._button("Cancel", "cancel_button", self._on_cancel_clicked, box)
        self.cancel_button.setToolTip("Stop the extraction; nothing is stored")
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress_bar = QProgressBar(box)
        self.progress_bar.setObjectName("progress_bar")
        self.progress_bar.setFormat("%p%")
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status_label = make_status_label(box)
        layout.addWidget(self.status_label)
        return box

    def _create_signals_group(self) -> QGroupBox:
        box = QGroupBox("Stored signals", self)
        box.setObjectName("signals_group")
        layout = QVBoxLayout(box)
        self.signals_combo = _RefreshingComboBox(self.refresh_signal_sets, box)
        self.signals_combo.setObjectName("signals_combo")
        self.signals_combo.setToolTip("Signal sets of the channel stored with the dataset")
        layout.addWidget(self.signals_combo)
        row = QHBoxLayout()
        self.show_button = self._button("Show", "show_button", self._on_show_clicked, box)
        self.show_button.setToolTip("Show the set in the Traces dock and as a raster layer")
        self.export_button = self._button("Export…", "export_button", self._on_export_clicked, box)
        self.export_button.setToolTip("Write the set to a .csv, .tsv (SIMA's layout) or .npz file")
        row.addWidget(self.show_button)
        row.addWidget(self.export_button)
        layout.addLayout(row)
        return box

    # -- state ----------------------------------------------------------------------------
    @property
    def channel(self) -> int | None:
        """Index of the chosen channel (None without a dataset)."""
        if self.dataset is None or self.channel_combo.currentIndex() < 0:
            return None
        return int(self.channel_combo.currentIndex())

    @property
    def roi_source(self) -> tuple[str, Any] | None:
        """The chosen ROI source: ``('set', label)``, ``('layer', layer)`` or None."""
        k = self.roi_combo.currentIndex()
        if not 0 <= k < len(self._roi_sources):
            return None
        kind, key, _ = self._roi_sources[k]
        return kind, key

    def dff_options(self) -> dict[str, Any] | None:
        """Return the ΔF/F options entered (keyword arguments of :func:`~napari_sima.core.dff`).

        Returns
        -------
        dict or None
            None when "Compute ΔF/F" is unchecked.
        """
        if not self.dff_group.isChecked():
            return None
        method = self.baseline_combo.currentText()
        opts: dict[str, Any] = {"baseline": method, "window": int(self.window_spin.value())}
        if method == "percentile":
            opts["percentile"] = float(self.percentile_spin.value())
        else:
            opts["sigma"] = float(self.sigma_spin.value())
        return opts

    # -- datasets and sources -------------------------------------------------------------
    def _on_dataset_set(self, changed: bool) -> None:
        if changed:
            self._fill_channels()
        self.refresh_roi_sources()
        self.refresh_signal_sets()

    def refresh_roi_sources(self) -> None:
        """Rebuild the ROI-source box: stored ROI sets (newest first), then ROI layers."""
        previous = self.roi_source
        sources: list[tuple[str, Any, str]] = []
        ds = self.dataset
        if ds is not None:
            try:
                sets = ds.ROIs
            except USER_ERRORS as err:
                show_error(f"Cannot read the dataset's ROI sets: {_message(err)}")
                sets = {}
            for label in sorted(sets, key=lambda k: (sets[k].timestamp or "", k), reverse=True):
                sources.append(("set", label, label))
            for layer in self.roi_layers():
                sources.append(("layer", layer, f"{LAYER_PREFIX}{layer.name}"))
        self._roi_sources = sources
        with blocked(self.roi_combo):
            self.roi_combo.clear()
            for kind, _, text in sources:
                self.roi_combo.addItem(text)
                self.roi_combo.setItemData(
                    self.roi_combo.count() - 1,
                    "stored ROI set" if kind == "set" else "Shapes layer (current shapes)",
                    Qt.ItemDataRole.ToolTipRole,
                )
            index = -1
            if previous is not None:
                index = next(
                    (
                        k
                        for k, (kind, key, _) in enumerate(sources)
                        if kind == previous[0] and (key is previous[1] or key == previous[1])
                    ),
                    -1,
                )
            if index < 0:
                index = self._default_roi_source(sources)
            self.roi_combo.setCurrentIndex(index)
        self._update_controls()

    def roi_layers(self) -> list[Shapes]:
        """Shapes layers holding ROIs of the dataset (or of no dataset), in layer order."""
        out = []
        for layer in self._layers():
            meta = sima_metadata(layer)
            if meta is None or meta.get("kind") != "rois":
                continue
            if not isinstance(layer, napari.layers.Shapes):
                continue
            owner = unwrap(meta.get("dataset"))
            if owner is None or owner is self.dataset:
                out.append(layer)
        return out

    def set_roi_source(self, name: str | Any) -> bool:
        """Choose the ROIs to extract.

        Parameters
        ----------
        name : str or napari.layers.Shapes
            A stored ROI set label, a Shapes layer (or its name, with or without the
            ``'layer: '`` prefix shown in the box).  A stored set wins over a layer of
            the same name.

        Returns
        -------
        bool
            True if found.
        """
        self.refresh_roi_sources()
        target = unwrap(name)
        for matcher in (
            lambda kind, key, text: kind == "layer" and key is target,
            lambda kind, key, text: kind == "set" and key == target,
            lambda kind, key, text: text == target,
            lambda kind, key, text: kind == "layer" and key.name == target,
        ):
            for k, (kind, key, text) in enumerate(self._roi_sources):
                if matcher(kind, key, text):
                    self.roi_combo.setCurrentIndex(k)
                    return True
        shown = [text for _, _, text in self._roi_sources]
        show_error(f"No ROI source {str(getattr(name, 'name', name))!r}; the sources are {shown}.")
        return False

    def set_channel(self, channel: int | str) -> bool:
        """Choose the channel to extract, by index or name.

        Returns
        -------
        bool
            True if the dataset has the channel.
        """
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

    def refresh_signal_sets(self) -> None:
        """Rebuild the stored-signals box for the dataset and channel (newest first)."""
        current = self.signals_combo.currentText()
        labels: list[str] = []
        if self.dataset is not None and self.channel is not None:
            try:
                labels = signal_set_labels(self.dataset, self.channel)
            except USER_ERRORS as err:
                show_error(f"Cannot read the dataset's signal sets: {_message(err)}")
        with blocked(self.signals_combo):
            self.signals_combo.clear()
            self.signals_combo.addItems(labels)
            for wanted in (current, self.last_label):
                if wanted in labels:
                    self.signals_combo.setCurrentIndex(labels.index(wanted))
                    break
        self._update_controls()

    # -- actions --------------------------------------------------------------------------
    def run(self) -> Any:
        """Extract the signals in a worker thread, then store ΔF/F and show them.

        Returns
        -------
        GeneratorWorker or None
            The running worker (its ``finished`` signal fires when done, failed or
            cancelled), or None if nothing was started (the reason is notified).
        """
        if self.is_running:
            show_warning("An extraction is already running.")
            return None
        ds = self.dataset
        if ds is None:
            show_error("No dataset: open a movie or a .sima folder first.")
            return None
        if ds.savedir is not None and ds.read_only:
            show_error(
                f"The dataset {ds.savedir} is read-only (a legacy SIMA folder or a folder "
                "without write permission): save it to a new .sima folder with the Dataset "
                "panel first."
            )
            return None
        try:
            kwargs, n_rois = self._extract_arguments(ds)
            steps = ds.iter_extract(**kwargs)
        except USER_ERRORS as err:
            show_error(_message(err))
            return None
        label = kwargs["label"]
        replaced = False
        if label is not None:
            with contextlib.suppress(*USER_ERRORS):
                replaced = label in signal_set_labels(ds, self.channel or 0)
        job = ExtractionJob(
            dataset=ds,
            steps=steps,
            label=label,
            dff_options=self.dff_options(),
            n_rois=n_rois,
            replaced=replaced,
        )
        self.progress_bar.setRange(0, 0)  # busy until the first progress report
        self.progress_bar.setValue(0)
        self._set_status(f"Extracting {n_rois} ROIs…")
        return self._start_worker(job, _extraction_steps, [ds])

    def cancel(self) -> None:
        """Stop a running extraction; nothing is stored."""
        if self._worker is None or self._job is None:
            return
        self._job.cancel_requested.set()
        self._worker.quit()
        self._set_status("Cancelling…")
        self.cancel_button.setEnabled(False)

    def export_signals(
        self, path: str | os.PathLike, fmt: str | None = "csv", label: str | None = None
    ) -> bool:
        """Write a stored signal set of the channel to a file.

        Parameters
        ----------
        path : path-like
            Output file.
        fmt : {'csv', 'tsv', 'npz'} or None
            Format (None: from the file's suffix).
        label : str, optional
            The set (default: the one chosen in the stored-signals box, else the most
            recent).

        Returns
        -------
        bool
            True on success.
        """
        if self.dataset is None or self.channel is None:
            show_error("No dataset: open a movie or a .sima folder first.")
            return False
        path = os.fspath(path)
        if fmt is None:
            fmt = os.path.splitext(path)[1].lstrip(".").lower()
        fmt = str(fmt).lower()
        if fmt not in EXPORT_FORMATS:
            show_error(f"Unknown export format {fmt!r}; choose one of {list(EXPORT_FORMATS)}.")
            return False
        if label is None:
            label = self.signals_combo.currentText() or None
        try:
            self.dataset.export_signals(path, fmt=fmt, channel=self.channel, signals_label=label)
        except USER_ERRORS as err:
            show_error(_message(err))
            return False
        show_info(f"Exported signals {label or '(most recent)'!r} to {path}")
        return True

    def show_signals(self, label: str | None = None) -> bool:
        """Show a stored signal set in the Traces dock (when docked) and as a raster.

        Parameters
        ----------
        label : str, optional
            The set (default: the one chosen in the stored-signals box).

        Returns
        -------
        bool
            True if something was shown.
        """
        if self.dataset is None or self.channel is None:
            show_error("No dataset: open a movie or a .sima folder first.")
            return False
        label = label or self.signals_combo.currentText() or None
        if not label:
            show_error("The dataset has no stored signals for this channel: extract first.")
            return False
        return self._show(self.dataset, label, self.channel)

    # -- handlers -------------------------------------------------------------------------
    def _on_show_clicked(self) -> None:
        self.show_signals()

    def _on_export_clicked(self) -> None:
        label = self.signals_combo.currentText()
        if self.dataset is None or not label:
            show_error("No stored signals to export: extract first.")
            return
        filters = ";;".join(f for _, f in EXPORT_FORMATS.values())
        default = os.path.join(self._start_dir(), f"signals_{label}.csv")
        path, chosen = QFileDialog.getSaveFileName(self, "Export signals", default, filters)
        if not path:
            return
        fmt = next((k for k, (_, f) in EXPORT_FORMATS.items() if f == chosen), None)
        suffix = os.path.splitext(path)[1].lower()
        if fmt is None:
            fmt = next((k for k, (s, _) in EXPORT_FORMATS.items() if s == suffix), "csv")
        if suffix != EXPORT_FORMATS[fmt][0]:
            path += EXPORT_FORMATS[fmt][0]
        self.export_signals(path, fmt, label=label)

    def _on_channel_changed(self, index: int) -> None:
        self.refresh_signal_sets()

    def _on_baseline_changed(self, index: int | None = None) -> None:
        percentile = self.baseline_combo.currentText() == "percentile"
        self.percentile_spin.setEnabled(percentile)
        self.sigma_spin.setEnabled(not percentile)

    def _on_worker_yielded(self, progress: tuple[int, int]) -> None:
        done, total = (int(v) for v in progress)
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(min(done, max(1, total)))
        job = self._job
        if job is not None and not job.cancel_requested.is_set():
            text = f"Extracting {job.n_rois} ROIs: {done} / {total}"
            if done >= total:
                text = "Storing the signals" + (" and ΔF/F…" if job.dff_options else "…")
            self._set_status(text)

    def _on_worker_finished(self, job: ExtractionJob) -> None:
        # the worker stopped: close the extraction generator (this cancels it when the
        # worker was quit; a finished generator ignores it)
        with contextlib.suppress(Exception):
            job.steps.close()
        if self._job is job:
            self._job_guard.release()
            self._worker = None
            self._job = None
        try:
            self._finish(job)
        except RuntimeError:  # the Qt side of the widget is gone (closed with the viewer)
            logger.debug("extraction finished after the widget was deleted", exc_info=True)
        job.dataset = None  # napari keeps ended workers (and a quit one's job): see JobGuard

    def _finish(self, job: ExtractionJob) -> None:
        self.progress_bar.setRange(0, 1)
        outcome = job.outcome
        if job.error is not None:
            self.progress_bar.setValue(0)
            self._set_status(f"Failed: {_message(job.error)}")
            show_error(_message(job.error))
            if not isinstance(job.error, USER_ERRORS + (PermissionError,)):
                logger.error("extraction failed", exc_info=job.error)
        elif outcome is None:
            self.progress_bar.setValue(0)
            self._set_status("Cancelled; nothing was stored.")
            show_info("Extraction cancelled; nothing was stored.")
        else:
            self.progress_bar.setValue(1)
            self._on_extraction_stored(job, outcome)
        self._update_controls()

    def _on_extraction_stored(self, job: ExtractionJob, outcome: ExtractionOutcome) -> None:
        self.last_label = outcome.label
        self.last_outcome = outcome
        ds = job.dataset
        if ds is self.dataset and self.channel != outcome.channel:
            with blocked(self.channel_combo):
                self.channel_combo.setCurrentIndex(outcome.channel)
        if ds is self.dataset:
            self.refresh_signal_sets()
        message = (
            f"Extracted {outcome.n_rois} ROIs × {outcome.num_frames} frames → signals "
            f"{outcome.label!r}"
        )
        if outcome.num_sequences > 1:
            message += f" ({outcome.num_sequences} sequences)"
        if outcome.dff:
            message += ", with ΔF/F"
        if job.replaced:
            message += " (replacing the set of that name)"
        if job.cancel_requested.is_set():
            message = "The extraction had finished before it could be cancelled. " + message
        self._set_status(message)
        show_info(message)
        if outcome.dff_error is not None:
            show_warning(
                f"The signals were stored, but ΔF/F could not be computed: {outcome.dff_error}"
            )
        self._show(ds, outcome.label, outcome.channel)

    # -- helpers --------------------------------------------------------------------------
    def _start_dir(self) -> str:
        if self.dataset is not None and self.dataset.savedir:
            return os.path.dirname(str(self.dataset.savedir))
        return os.getcwd()

    def _fill_channels(self) -> None:
        names = list(self.dataset.channel_names) if self.dataset is not None else []
        with blocked(self.channel_combo):
            self.channel_combo.clear()
            self.channel_combo.addItems(names)
            self.channel_combo.setCurrentIndex(0 if names else -1)
        with blocked(self.demix_combo):
            self.demix_combo.clear()
            self.demix_combo.addItem(NO_DEMIX)
            self.demix_combo.addItems(names)
            self.demix_combo.setCurrentIndex(0)

    def _default_roi_source(self, sources: list[tuple[str, Any, str]]) -> int:
        """Index of the active ROI layer if offered, else of the newest stored set."""
        active = unwrap(self.viewer.layers.selection.active)
        for k, (kind, key, _) in enumerate(sources):
            if kind == "layer" and key is active:
                return k
        return 0 if sources else -1

    def _extract_arguments(self, ds: ImagingDataset) -> tuple[dict[str, Any], int]:
        """Keyword arguments of ``iter_extract`` from the controls (raises on bad input)."""
        source = self.roi_source
        if source is None:
            raise ValueError(
                "No ROIs to extract: the dataset has no ROI set and no ROI layer is open "
                "(draw or import ROIs in the ROIs panel first)."
            )
        kind, key = source
        if kind == "set":
            try:
                rois: Any = ds.ROIs[key]
            except KeyError:
                self.refresh_roi_sources()
                raise KeyError(f"The dataset has no ROI set {key!r} any more.") from None
            rois_arg: Any = key
            where = f"ROI set {key!r}"
        else:
            if key not in self._layers():
                self.refresh_roi_sources()
                raise ValueError(f"The layer {key.name!r} is no longer in the viewer.")
            rois = self._layer_rois(key, ds)
            rois_arg = rois
            where = f"layer {key.name!r}"
        if len(rois) == 0:
            raise ValueError(f"No ROIs to extract: the {where} is empty.")
        channel = self.channel
        if channel is None:
            raise ValueError("The dataset has no channel to extract.")
        demix = self.demix_combo.currentIndex() - 1
        if demix == channel:
            raise ValueError(
                "The demixing channel must differ from the signal channel "
                f"({ds.channel_names[channel]!r})."
            )
        label = self.label_edit.text().strip() or None
        kwargs = {
            "rois": rois_arg,
            "signal_channel": channel,
            "label": label,
            "remove_overlap": self.remove_overlap_check.isChecked(),
            "n_processes": int(self.processes_spin.value()),
            "demix_channel": demix if demix >= 0 else None,
            "save_summary": True,
        }
        return kwargs, len(rois)

    def _layer_rois(self, layer: Shapes, ds: ImagingDataset) -> ROIList:
        from .._roi_convert import shapes_to_rois

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rois = shapes_to_rois(layer, im_shape=tuple(ds.frame_shape[:3]))
        for w in caught:
            if issubclass(w.category, UserWarning):
                show_warning(str(w.message))
        return rois

    def _show(self, dataset: ImagingDataset, label: str, channel: int) -> bool:
        """Hand a stored set to the Traces dock (if docked) and the raster layer."""
        viewer = unwrap(self.viewer)
        shown = False
        try:
            from .traces_widget import find_traces_widget
        except ImportError:  # the Traces dock is optional
            find_traces_widget = None
        if find_traces_widget is not None:
            try:
                traces = find_traces_widget(viewer)
                if traces is None and viewer is not self.viewer:
                    traces = find_traces_widget(self.viewer)  # made with the proxied viewer
                if traces is not None:
                    traces.set_signals(dataset, label, channel=channel)
                    shown = True
            except Exception as err:  # a display problem must not lose the extraction
                show_warning(f"Could not show the traces: {_message(err)}")
                logger.warning("Traces dock update failed", exc_info=True)
        try:
            from .._raster import show_raster
        except ImportError:
            return shown
        try:
            show_raster(viewer, dataset, label, channel=channel, kind="raw")
            shown = True
        except Exception as err:
            show_warning(f"Could not show the raster: {_message(err)}")
            logger.warning("raster update failed", exc_info=True)
        return shown

    def _update_controls(self) -> None:
        has = self.dataset is not None
        running = self.is_running
        for w in (
            self.dataset_combo,
            self.roi_combo,
            self.channel_combo,
            self.remove_overlap_check,
            self.demix_combo,
            self.processes_spin,
            self.label_edit,
            self.dff_group,
        ):
            w.setEnabled(not running and (has or w is self.dataset_combo))
        self.run_button.setEnabled(has and not running and bool(self._roi_sources))
        self.cancel_button.setEnabled(
            running and self._job is not None and not self._job.cancel_requested.is_set()
        )
        has_signals = has and self.signals_combo.count() > 0
        self.show_button.setEnabled(has_signals)
        self.export_button.setEnabled(has_signals)
        if running:
            return
        hint = ""
        if not has:
            hint = "No dataset: open a movie or a .sima folder."
        elif not self._roi_sources:
            hint = "No ROIs: draw or import ROIs in the ROIs panel."
        if hint:
            self._set_status(hint, hint=True)
        elif self._status_is_hint:
            self._set_status("")

__all__ = ["ExtractWidget", "signal_set_labels", "store_signal_entries"]
