"""The Traces dock widget: the signals of the selected ROIs next to the movie.

A pyqtgraph plot (in our own ``QWidget``, themed like napari) shows the traces of the
ROIs selected in the ROIs Shapes layer — raw signals or ΔF/F, one sequence at a time,
in the ROI outline colours — with a vertical cursor at the time slider's frame.
Clicking or dragging on the plot, or dragging the cursor, moves the time slider.  The
"Raster" button shows all traces of the set as an ROI × time image layer (see
:mod:`napari_sima._raster`); its menu picks raw signals, ΔF/F or spikes.

When the set holds inferred spikes (the Infer spikes dock,
:meth:`~napari_sima.core.ImagingDataset.infer_spikes`), the fit is drawn over each raw
trace (a dashed line in the trace's colour) and the spikes as stems in a small plot
row under the traces, one lane per plotted ROI, top to bottom in legend order, each
stem as tall as the spike relative to that trace's largest.  The "Fit" and "Spikes"
check boxes toggle them.  The fit is in the units of the raw signals, so it is not
drawn over ΔF/F.

Public methods (``set_signals``, ``clear_signals``, ``refresh_sets``, ``set_kind``,
``set_spike_display``, ``set_sequence``, ``set_shapes_layer``, ``set_selection``,
``set_frame``, ``show_raster``, ``redraw``) let scripts, tests and other docks drive
it; the Extract and Infer spikes docks call :meth:`TracesWidget.set_signals` after
they store a set, finding the dock with :func:`find_traces_widget`.

Notes
-----
**Speed.**  The plot keeps at most :data:`MAX_TRACES` curve items (and as many fit
curves and spike-stem curves), each with peak downsampling and clip-to-view, and
reuses them; a frame change moves only the cursors.  Spike stems are one curve per
lane (three points per frame: lane, lane + spike, lane), so peak downsampling keeps
every stem's top at any zoom.  Nothing is drawn while the dock is hidden (a tab behind
another, a closed dock): the work is done when it is shown again.

**Matching ROIs to signals.**  Selected shapes → their ``roi`` feature → signal rows,
by index when the layer shows the ROIs the set was extracted from, else by ROI id or
label (:func:`napari_sima._raster.match_rois`).  The plot title says when selected
ROIs are not in the set.

**ΔF/F** comes from the set when stored; otherwise the rows on screen are computed at
once (:func:`napari_sima.core.dff`, :data:`napari_sima._raster.DFF_PARAMETERS`) and
the whole set is computed (in a worker thread for large sets) and stored with it.

**Time.**  The cursor (in the traces plot and the spikes row, whose frame axes are
linked) shows the frame of the time slider (the viewer axis labelled ``'t'``),
converted through the movie layer's time scale/translate; with several sequences the
plotted sequence is chosen in the dock (initially the sequence of the visible movie
layer).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
import pyqtgraph as pg
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .. import _raster as rs
from .._layers import sima_metadata, unwrap
from .._roi_convert import ROI_PALETTE
from ._common import blocked

if TYPE_CHECKING:
    from napari.layers import Image, Layer, Shapes

    from ..core import ImagingDataset

#: At most this many traces are drawn (the first selected ROIs); a note says so.
MAX_TRACES = 10

#: Samples per pixel drawn with automatic peak downsampling (pyqtgraph's default is 5).
AUTO_DOWNSAMPLE_FACTOR = 1.0

#: Sets with more values than this get their ΔF/F computed in a worker thread.
DFF_MAIN_THREAD_MAX_VALUES = 2_000_000

#: Signal kinds offered in the dock: (kind, text).
KIND_ITEMS = (("raw", "raw (F / mean F)"), ("dff", "ΔF/F"))

#: y-axis labels by kind.
Y_LABELS = {"raw": "F / mean F", "dff": "ΔF/F"}

#: Entries of the Raster button's menu: (kind, text).
RASTER_MENU_ITEMS = (("raw", "Raw signals"), ("dff", "ΔF/F"), ("spikes", "Spikes"))

#: Height of the tallest spike stem (a spike equal to its trace's largest), in lanes.
SPIKE_STEM_HEIGHT = 0.85

#: Width in pixels of the left axes (equal, so the two plots' frames line up).
LEFT_AXIS_WIDTH = 58

#: Relative heights of the traces plot and the spikes row.
PLOT_STRETCH = (2, 1)

#: Errors from the core that are the user's to fix (shown in the dock).
USER_ERRORS = (ValueError, OSError, KeyError, TypeError)

HELP_TEXT = (
    "Click or drag: go to that frame · drag the cursor · middle- or Shift-drag: pan · "
    "wheel: zoom · right-drag: zoom one axis"
)

_INSTANCES: weakref.WeakSet[TracesWidget] = weakref.WeakSet()


def find_traces_widget(viewer: napari.Viewer) -> TracesWidget | None:
    """Return the Traces dock of a viewer (a docked one first), or None.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.

    Returns
    -------
    TracesWidget or None
        The docked Traces widget; else any live Traces widget made for this viewer.
    """
    viewer = unwrap(viewer)
    with contextlib.suppress(Exception):
        for widget in viewer.window.dock_widgets.values():
            if isinstance(widget, TracesWidget) and not widget._closed:
                return widget
    for widget in list(_INSTANCES):
        if widget.viewer is viewer and not widget._closed:
            return widget
    return None


@thread_worker
def _dff_job(job: dict[str, Any]) -> tuple[list[np.ndarray], bool]:
    """Compute the ΔF/F of a whole set (and store it, for a dataset with a folder).

    ``job`` holds ``dataset``, ``label``, ``channel`` and ``raw``; it is emptied when the
    worker has finished (napari keeps ended workers, with their arguments).
    """
    dataset, label, channel = job["dataset"], job["label"], job["channel"]
    signals: dict[str, Any] = {"raw": job["raw"]}
    arrays = rs.compute_dff(signals)
    stored = False
    if dataset.savedir is not None:
        signals.update(dff=arrays, dff_parameters=dict(rs.DFF_PARAMETERS))
        stored = rs.store_dff(dataset, label, signals, channel)
    return arrays, stored


def _forget_dff_worker(worker: Any, job: dict[str, Any]) -> None:
    """Drop what an ended ΔF/F worker holds (napari keeps ended workers)."""
    job.clear()
    worker._napari_sima_signals = None
    worker._napari_sima_target = None


class _TraceViewBox(pg.ViewBox):
    """A ViewBox where a left click or drag reports the frame under the mouse."""

    def __init__(self, on_frame: Any) -> None:
        super().__init__()
        self._on_frame = on_frame

    def mouseClickEvent(self, ev: Any) -> None:  # noqa: N802, D102 - pyqtgraph's name
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self._on_frame(self.mapSceneToView(ev.scenePos()).x())
            return
        super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev: Any, axis: Any = None) -> None:  # noqa: N802, D102
        shift = bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if ev.button() == Qt.MouseButton.LeftButton and not shift:
            ev.accept()
            self._on_frame(self.mapSceneToView(ev.scenePos()).x())
            return
        super().mouseDragEvent(ev, axis)  # Shift+left / middle: pan; right: zoom


class TracesWidget(QWidget):
    """Plot the signals of the selected ROIs, with a cursor synced to the time slider.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose ROIs layer and time slider the dock follows.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    dataset : ImagingDataset or None
        Dataset of the signal set shown.
    label : str or None
        The signal set's label.
    channel : int
        Its channel.
    signals : dict or None
        The set (``raw``, ``rois``, maybe ``dff``...).
    kind : {'raw', 'dff'}
        What is plotted.
    sequence : int
        Sequence plotted.
    shapes_layer : napari.layers.Shapes or None
        The ROIs layer whose selection is plotted.
    rows : list of int
        Signal rows plotted (at most :data:`MAX_TRACES`).
    show_fit, show_spikes : bool
        Whether the fits and the spikes row are shown when the set has spikes.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # napari hands docked plugin widgets a PublicOnlyProxy; we keep the viewer behind
        # it (layers are compared by identity with those napari's events carry)
        self.viewer = unwrap(viewer)
        self.dataset: ImagingDataset | None = None
        self.label: str | None = None
        self.channel: int = 0
        self.signals: dict[str, Any] | None = None
        self.kind: str = "raw"
        self.sequence: int = 0
        self.shapes_layer: Shapes | None = None
        self.rows: list[int] = []
        self.show_fit = True
        self.show_spikes = True
        self._n_selected = 0
        self._unmatched = 0
        self._explicit: list[int] | None = None
        self._match: rs.RoiMatch | None = None
        self._reference: Layer | None = None
        self._reference_valid = False
        self._colors: list[tuple[float, ...]] = []
        self._dff_rows: dict[tuple[int, int], np.ndarray] = {}
        self._dff_worker: Any = None
        self._x_cache: dict[int, np.ndarray] = {}
        self._stem_x_cache: dict[int, np.ndarray] = {}
        self._sets: list[tuple[ImagingDataset, str, int]] = []
        self._title = ""
        self._fg = "#f0f1f2"
        self._dirty = True
        self._cursor_dirty = True
        self._syncing = False
        self._closed = False

        self.setObjectName("napari_sima_traces_widget")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(self._create_controls())
        layout.addWidget(self._create_plot(), 1)
        layout.setSpacing(2)
        self.names_label = QLabel("", self)
        self.names_label.setObjectName("names_label")
        self.names_label.setWordWrap(True)
        self.names_label.setTextFormat(Qt.TextFormat.RichText)
        self.names_label.setToolTip(HELP_TEXT)
        layout.addWidget(self.names_label)
        self.setMinimumHeight(200)

        self._apply_theme()
        self._connect_viewer()
        _INSTANCES.add(self)
        self.refresh_sets()
        if self._sets:
            self.set_signals(*self._preferred_set())
        else:
            self._update_rows()

    # -- construction -----------------------------------------------------------------------
    def _create_controls(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("Signals", self))
        self.set_combo = QComboBox(self)
        self.set_combo.setObjectName("set_combo")
        self.set_combo.setToolTip("Stored signal set (dataset, label, channel)")
        self.set_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.set_combo.currentIndexChanged.connect(self._on_set_combo_changed)
        row.addWidget(self.set_combo, 1)
        self.refresh_button = QPushButton("⟳", self)
        self.refresh_button.setObjectName("refresh_button")
        self.refresh_button.setToolTip(
            "Look again for stored signal sets, and reload the one shown (e.g. for "
            "spikes inferred from a script)"
        )
        self.refresh_button.setFixedWidth(32)
        self.refresh_button.clicked.connect(self._on_refresh_clicked)
        row.addWidget(self.refresh_button)
        self.sequence_label = QLabel("Sequence", self)
        row.addWidget(self.sequence_label)
        self.sequence_combo = QComboBox(self)
        self.sequence_combo.setObjectName("sequence_combo")
        self.sequence_combo.setToolTip("Sequence (session) plotted")
        self.sequence_combo.currentIndexChanged.connect(self._on_sequence_combo_changed)
        row.addWidget(self.sequence_combo)
        self.kind_combo = QComboBox(self)
        self.kind_combo.setObjectName("kind_combo")
        for kind, text in KIND_ITEMS:
            self.kind_combo.addItem(text, kind)
        self.kind_combo.setToolTip(
            "Raw signals (weighted mean of F / time average) or ΔF/F "
            f"(sliding {rs.DFF_PARAMETERS['percentile']:g}th-percentile baseline over "
            f"{rs.DFF_PARAMETERS['window']} frames; stored with the set)"
        )
        self.kind_combo.currentIndexChanged.connect(self._on_kind_combo_changed)
        row.addWidget(self.kind_combo)
        self.fit_check = QCheckBox("Fit", self)
        self.fit_check.setObjectName("fit_check")
        self.fit_check.setChecked(self.show_fit)
        self.fit_check.toggled.connect(self._on_fit_toggled)
        row.addWidget(self.fit_check)
        self.spikes_check = QCheckBox("Spikes", self)
        self.spikes_check.setObjectName("spikes_check")
        self.spikes_check.setChecked(self.show_spikes)
        self.spikes_check.toggled.connect(self._on_spikes_toggled)
        row.addWidget(self.spikes_check)
        self.raster_button = QToolButton(self)
        self.raster_button.setText("Raster")
        self.raster_button.setObjectName("raster_button")
        self.raster_button.setToolTip(
            "Show every ROI's trace as an ROI × time image layer under the movie "
            "(the arrow: raw signals, ΔF/F or spikes); click a row to select that ROI, "
            "double-click to also go to that frame"
        )
        self.raster_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        self.raster_button.clicked.connect(self._on_raster_clicked)
        menu = QMenu(self.raster_button)
        self.raster_actions: dict[str, Any] = {}
        for kind, text in RASTER_MENU_ITEMS:
            action = menu.addAction(text)
            action.setObjectName(f"raster_{kind}_action")
            action.triggered.connect(lambda checked=False, k=kind: self.show_raster(k))
            self.raster_actions[kind] = action
        self.raster_button.setMenu(menu)
        # room for the text and the menu arrow (napari's style sizes neither)
        text_width = self.raster_button.fontMetrics().horizontalAdvance("Raster")
        self.raster_button.setMinimumWidth(text_width + 40)
        row.addWidget(self.raster_button)
        self._update_spike_controls()
        return row

    def _create_plot(self) -> QWidget:
        container = QWidget(self)
        column = QVBoxLayout(container)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self._create_traces_plot(), PLOT_STRETCH[0])
        column.addWidget(self._create_spikes_plot(), PLOT_STRETCH[1])
        return container

    def _new_curve(self, plot_item: pg.PlotItem) -> pg.PlotDataItem:
        """Return a hidden curve (peak downsampling, clip-to-view) added to ``plot_item``."""
        item = pg.PlotDataItem(autoDownsampleFactor=AUTO_DOWNSAMPLE_FACTOR)
        item._napari_sima_color = None  # type: ignore[attr-defined]
        item.setVisible(False)
        # added once and hidden when unused: removing a clip-to-view item from a
        # PlotWidget makes pyqtgraph 0.14 raise in PlotDataItem.viewRangeChanged
        plot_item.addItem(item)
        item.setDownsampling(auto=True, method="peak")
        item.setClipToView(True)
        return item

    def _create_traces_plot(self) -> pg.PlotWidget:
        self.view_box = _TraceViewBox(self._on_plot_frame)
        self.plot_widget = pg.PlotWidget(parent=self, viewBox=self.view_box)
        self.plot_widget.setObjectName("plot_widget")
        self.plot_widget.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.plot_widget.setToolTip(HELP_TEXT)
        self.plot_item: pg.PlotItem = self.plot_widget.getPlotItem()
        self.plot_item.setMenuEnabled(True)
        self.plot_item.setLabel("bottom", "frame")
        self.plot_item.setLabel("left", Y_LABELS["raw"])
        # PlotItem.addItem() imposes the plot's downsampling / clip-to-view settings on
        # each item, so set them on the plot (peak downsampling: min and max of every
        # bin, one bin per pixel -- lossless to the eye, ~2 points per pixel)
        self.plot_item.setDownsampling(auto=True, mode="peak")
        self.plot_item.setClipToView(True)
        self.view_box.setAutoVisible(y=True)
        self.plot_item.getAxis("left").setWidth(LEFT_AXIS_WIDTH)
        self._items: list[pg.PlotDataItem] = [
            self._new_curve(self.plot_item) for _ in range(MAX_TRACES)
        ]
        self._fit_items: list[pg.PlotDataItem] = [
            self._new_curve(self.plot_item) for _ in range(MAX_TRACES)
        ]
        for item in self._fit_items:
            item.setZValue(10)  # over the raw traces
        self.cursor = pg.InfiniteLine(pos=0, angle=90, movable=True)
        self.cursor.setZValue(100)
        self.cursor.sigPositionChanged.connect(self._on_cursor_moved)
        self.plot_item.addItem(self.cursor, ignoreBounds=True)
        return self.plot_widget

    def _create_spikes_plot(self) -> pg.PlotWidget:
        self.spikes_view_box = _TraceViewBox(self._on_plot_frame)
        self.spikes_plot_widget = pg.PlotWidget(parent=self, viewBox=self.spikes_view_box)
        self.spikes_plot_widget.setObjectName("spikes_plot_widget")
        self.spikes_plot_widget.setToolTip(
            "Inferred spikes of the plotted ROIs, one lane each (top: first in the "
            "legend); a stem's height is the spike relative to that trace's largest. "
            + HELP_TEXT
        )
        self.spikes_plot_widget.setSizePolicy(
            QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding
        )
        self.spikes_plot_widget.setMinimumHeight(70)
        self.spikes_plot_item: pg.PlotItem = self.spikes_plot_widget.getPlotItem()
        self.spikes_plot_item.setMenuEnabled(False)
        self.spikes_plot_item.setLabel("bottom", "frame")
        self.spikes_plot_item.setLabel("left", "spikes")
        left = self.spikes_plot_item.getAxis("left")
        left.setWidth(LEFT_AXIS_WIDTH)
        left.setStyle(showValues=False)
        left.setTicks([[]])
        self.spikes_plot_item.setDownsampling(auto=True, mode="peak")
        self.spikes_plot_item.setClipToView(True)
        self.spikes_plot_item.setXLink(self.plot_item)
        self.spikes_view_box.setMouseEnabled(x=True, y=False)
        self.spikes_view_box.enableAutoRange(axis="y", enable=False)
        self._spike_items: list[pg.PlotDataItem] = [
            self._new_curve(self.spikes_plot_item) for _ in range(MAX_TRACES)
        ]
        self.spikes_cursor = pg.InfiniteLine(pos=0, angle=90, movable=True)
        self.spikes_cursor.setZValue(100)
        self.spikes_cursor.sigPositionChanged.connect(self._on_spikes_cursor_moved)
        self.spikes_plot_item.addItem(self.spikes_cursor, ignoreBounds=True)
        self.spikes_plot_widget.setVisible(False)
        return self.spikes_plot_widget

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """Return a wide, low size (the dock goes in the bottom area)."""
        return QSize(800, 280)

    # -- properties -------------------------------------------------------------------------
    @property
    def curves(self) -> list[pg.PlotDataItem]:
        """The curve items on the plot, one per plotted row (in :attr:`rows` order)."""
        return [item for item in self._items[: len(self.rows)] if item.isVisible()]

    @property
    def title(self) -> str:
        """The plot title (what is shown, or why nothing is)."""
        return self._title

    @property
    def num_sequences(self) -> int:
        """Number of sequences of the signal set (0 without one)."""
        return rs.num_sequences(self.signals) if self.signals is not None else 0

    @property
    def num_frames(self) -> int:
        """Frames of the plotted sequence (0 without signals)."""
        if self.signals is None or not self.num_sequences:
            return 0
        return int(np.shape(self.signals["raw"][self.sequence])[1])

    @property
    def is_computing(self) -> bool:
        """Whether ΔF/F of the whole set is being computed in a worker thread."""
        return self._dff_worker is not None

    @property
    def available_sets(self) -> list[tuple[ImagingDataset, str, int]]:
        """``(dataset, label, channel)`` of the signal sets offered in the dock."""
        return list(self._sets)

    @property
    def has_spikes(self) -> bool:
        """Whether the signal set shown holds inferred spikes and fits."""
        return self.signals is not None and rs.has_spikes(self.signals)

    @property
    def fits_shown(self) -> bool:
        """Whether fits are drawn over the traces (spikes stored, Fit on, raw signals)."""
        return self.show_fit and self.kind == "raw" and self.has_spikes

    @property
    def spikes_shown(self) -> bool:
        """Whether the spikes row is shown (spikes stored and Spikes on)."""
        return self.show_spikes and self.has_spikes

    @property
    def fit_curves(self) -> list[pg.PlotDataItem]:
        """The fit curves on the plot, one per plotted row (in :attr:`rows` order)."""
        return [item for item in self._fit_items[: len(self.rows)] if item.isVisible()]

    @property
    def spike_curves(self) -> list[pg.PlotDataItem]:
        """The spike-stem curves of the spikes row, one per plotted row."""
        return [item for item in self._spike_items[: len(self.rows)] if item.isVisible()]

    # -- public API -------------------------------------------------------------------------
    def refresh_sets(self) -> None:
        """Rebuild the list of stored signal sets from the viewer's datasets."""
        found: list[tuple[ImagingDataset, str, int]] = []
        names: list[str] = []
        datasets = self._viewer_datasets()
        if self.dataset is not None and all(ds is not self.dataset for ds, _ in datasets):
            datasets.append((self.dataset, "dataset"))
        for ds, ds_name in datasets:
            channel_names = list(getattr(ds, "channel_names", []) or ["0"])
            for ch, ch_name in enumerate(channel_names):
                try:
                    labels = rs.signal_set_labels(ds, ch)
                except USER_ERRORS:
                    continue
                for lab in reversed(labels):  # newest first
                    found.append((ds, lab, ch))
                    text = lab if len(channel_names) == 1 else f"{lab} [{ch_name}]"
                    names.append(text if len(datasets) == 1 else f"{ds_name}: {text}")
        if (
            self.dataset is not None
            and self.label is not None
            and not any(
                ds is self.dataset and lab == self.label and ch == self.channel
                for ds, lab, ch in found
            )
        ):
            found.insert(0, (self.dataset, self.label, self.channel))
            names.insert(0, self.label)
        self._sets = found
        with blocked(self.set_combo):
            self.set_combo.clear()
            self.set_combo.addItems(names)
            self.set_combo.setCurrentIndex(self._current_set_index())
        self.set_combo.setEnabled(bool(found))

    def set_signals(self, dataset: ImagingDataset, label: str, channel: int | str = 0) -> bool:
        """Show the signal set ``label`` of ``dataset``'s ``channel``.

        Parameters
        ----------
        dataset : ImagingDataset
            The dataset.
        label : str
            The stored signal set (e.g. just extracted).
        channel : int or str
            Its channel.

        Returns
        -------
        bool
            False (with a message in the dock) when the set cannot be read.
        """
        try:
            ch = dataset.resolve_channel(channel)
            signals = rs.load_signals(dataset, label, ch)
            if not signals.get("raw"):
                raise ValueError(f"the signal set {label!r} holds no signals")
        except USER_ERRORS as err:
            self._set_message(f"Cannot show signal set {label!r}: {_err_text(err)}")
            return False
        self._cancel_dff()
        self.dataset, self.label, self.channel, self.signals = dataset, label, ch, signals
        self._dff_rows.clear()
        self._x_cache.clear()
        self._match = None
        self._explicit = None
        self.sequence = min(self._visible_sequence(), self.num_sequences - 1)
        self._reference_valid = False
        self.refresh_sets()
        self._update_sequence_combo()
        if self.shapes_layer is None or self.shapes_layer not in self.viewer.layers:
            self.set_shapes_layer(rs.find_rois_layer(self.viewer, dataset), update=False)
        if self.kind == "dff":
            self._ensure_full_dff()
        self._reset_x_range()
        self._update_rows()
        self._sync_cursor()
        return True

    def clear_signals(self) -> None:
        """Show no signal set."""
        self._cancel_dff()
        self.dataset = self.label = self.signals = None
        self.channel = 0
        self._match = None
        self._explicit = None
        self._dff_rows.clear()
        self._update_sequence_combo()
        with blocked(self.set_combo):
            self.set_combo.setCurrentIndex(-1)
        self._update_rows()

    def set_kind(self, kind: str) -> bool:
        """Plot ``'raw'`` signals or ``'dff'`` (ΔF/F; computed and stored when missing)."""
        if kind not in rs.SIGNAL_KINDS:
            show_error(f"Unknown signal kind {kind!r}; choose from {rs.SIGNAL_KINDS}.")
            return False
        self.kind = kind
        with blocked(self.kind_combo):
            self.kind_combo.setCurrentIndex(rs.SIGNAL_KINDS.index(kind))
        self.plot_item.setLabel("left", Y_LABELS[kind])
        if kind == "dff":
            self._ensure_full_dff()
        self.view_box.enableAutoRange(axis="y", enable=True)
        self._refresh_plot()
        return True

    def set_spike_display(self, fit: bool | None = None, spikes: bool | None = None) -> None:
        """Show or hide the fits and the spikes row (None leaves one unchanged).

        They are drawn only when the set holds inferred spikes; the fits only over
        raw signals.
        """
        if fit is not None:
            self.show_fit = bool(fit)
            with blocked(self.fit_check):
                self.fit_check.setChecked(self.show_fit)
        if spikes is not None:
            self.show_spikes = bool(spikes)
            with blocked(self.spikes_check):
                self.spikes_check.setChecked(self.show_spikes)
        self._refresh_plot()

    def set_sequence(self, index: int) -> bool:
        """Plot sequence ``index`` of the signal set."""
        if self.signals is None or not 0 <= int(index) < self.num_sequences:
            return False
        self.sequence = int(index)
        with blocked(self.sequence_combo):
            self.sequence_combo.setCurrentIndex(self.sequence)
        self._reference_valid = False
        self._reset_x_range()
        self._refresh_plot()
        self._sync_cursor()
        return True

    def set_shapes_layer(self, layer: Shapes | None, update: bool = True) -> None:
        """Follow the selection of ``layer`` (a ROIs Shapes layer; None: no layer)."""
        if layer is self.shapes_layer:
            if update:
                self._update_rows()
            return
        self._disconnect_layer()
        self.shapes_layer = layer
        self._match = None
        self._explicit = None
        if layer is not None:
            layer.selected_data.events.items_changed.connect(self._on_layer_selection)
            layer.events.data.connect(self._on_layer_changed)
            layer.events.features.connect(self._on_layer_changed)
            layer.events.edge_color.connect(self._on_layer_colors)
        if update:
            self._update_rows()

    def set_selection(self, rows: Iterable[int]) -> None:
        """Plot signal rows ``rows`` (ROI indices of the set) directly.

        They stay shown until the selection of the ROIs layer changes.
        """
        n = rs.num_rois(self.signals) if self.signals is not None else 0
        self._explicit = [int(r) for r in rows if 0 <= int(r) < n]
        self._update_rows()

    def set_frame(self, frame: int) -> bool:
        """Move the viewer's time slider to ``frame`` (clipped to the plotted sequence)."""
        n = self.num_frames
        if n:
            frame = int(np.clip(frame, 0, n - 1))
        return rs.set_viewer_frame(self.viewer, int(frame), self._reference_layer())

    def current_frame(self) -> int | None:
        """Return the frame of the time slider (None without a time axis)."""
        return rs.viewer_frame(self.viewer, self._reference_layer())

    def show_raster(self, kind: str | None = None) -> Image | None:
        """Show the set as an ROI × time raster layer (all sequences; see :mod:`._raster`).

        ``kind`` is ``'raw'``, ``'dff'`` or ``'spikes'`` (default: the plotted kind).
        """
        if self.signals is None or self.dataset is None or self.label is None:
            show_info("No signal set to show: extract signals first.")
            return None
        try:
            return rs.show_raster(
                self.viewer,
                self.dataset,
                self.label,
                self.channel,
                kind or self.kind,
                signals=self.signals,
            )
        except USER_ERRORS as err:
            show_error(f"Cannot show the raster: {_err_text(err)}")
            return None

    def redraw(self, force: bool = False) -> None:
        """Draw the traces now (while hidden only with ``force``)."""
        if force or self._can_draw():
            self._draw()
            self._draw_cursor()

    # -- events -----------------------------------------------------------------------------
    def _connect_viewer(self) -> None:
        v = self.viewer
        v.dims.events.current_step.connect(self._on_step)
        v.layers.selection.events.active.connect(self._on_active_layer)
        v.layers.events.inserted.connect(self._on_layers_inserted)
        v.layers.events.removed.connect(self._on_layer_removed)
        v.events.theme.connect(self._on_theme)

    def _disconnect_viewer(self) -> None:
        v = self.viewer
        for emitter, slot in (
            (v.dims.events.current_step, self._on_step),
            (v.layers.selection.events.active, self._on_active_layer),
            (v.layers.events.inserted, self._on_layers_inserted),
            (v.layers.events.removed, self._on_layer_removed),
            (v.events.theme, self._on_theme),
        ):
            with contextlib.suppress(Exception):
                emitter.disconnect(slot)

    def _disconnect_layer(self) -> None:
        layer = self.shapes_layer
        if layer is None:
            return
        for emitter, slot in (
            (layer.selected_data.events.items_changed, self._on_layer_selection),
            (layer.events.data, self._on_layer_changed),
            (layer.events.features, self._on_layer_changed),
            (layer.events.edge_color, self._on_layer_colors),
        ):
            with contextlib.suppress(Exception):
                emitter.disconnect(slot)

    def _on_step(self, event: Any = None) -> None:
        if self._closed:
            return
        if self._can_draw():
            self._draw_cursor()
        else:
            self._cursor_dirty = True

    def _on_active_layer(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        if layer is not None and layer is not self.shapes_layer and rs.is_rois_layer(layer):
            self.set_shapes_layer(layer)

    def _on_layers_inserted(self, event: Any = None) -> None:
        self._reference_valid = False
        layer = getattr(event, "value", None)
        meta = sima_metadata(layer) if layer is not None else None
        ds = meta.get("dataset") if meta is not None else None
        if (
            ds is not None
            and meta.get("kind") != "raster"
            and all(d is not ds for d, _, _ in self._sets)
        ):
            self.refresh_sets()
            if self.signals is None and self._sets:
                self.set_signals(*self._preferred_set())
        if self.shapes_layer is None and layer is not None and rs.is_rois_layer(layer):
            self.set_shapes_layer(layer)

    def _on_layer_removed(self, event: Any = None) -> None:
        self._reference_valid = False
        if self._closed:
            return
        if getattr(event, "value", None) is self.shapes_layer and self.shapes_layer is not None:
            self._disconnect_layer()
            self.shapes_layer = None
            self._match = None
            self.set_shapes_layer(rs.find_rois_layer(self.viewer, self.dataset), update=False)
            self._update_rows()

    def _on_layer_selection(self, event: Any = None) -> None:
        self._explicit = None
        self._update_rows()

    def _on_layer_changed(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "changed"))
        if action in ("adding", "removing", "changing"):
            return
        self._match = None
        self._update_rows()

    def _on_layer_colors(self, event: Any = None) -> None:
        self._colors = self._row_colors(self.rows)
        self._refresh_plot()

    def _on_theme(self, event: Any = None) -> None:
        self._apply_theme()

    def _on_set_combo_changed(self, index: int) -> None:
        if 0 <= index < len(self._sets):
            self.set_signals(*self._sets[index])

    def _on_refresh_clicked(self) -> None:
        self.refresh_sets()
        shown = self.signals is not None and self.dataset is not None
        if shown and self.label is not None and not self.set_signals(
            self.dataset, self.label, self.channel
        ):
            self.clear_signals()
        if self.signals is None and self._sets:
            self.set_signals(*self._preferred_set())

    def _on_sequence_combo_changed(self, index: int) -> None:
        if index >= 0:
            self.set_sequence(index)

    def _on_kind_combo_changed(self, index: int) -> None:
        kind = self.kind_combo.itemData(index)
        if kind:
            self.set_kind(str(kind))

    def _on_raster_clicked(self) -> None:
        self.show_raster()

    def _on_fit_toggled(self, checked: bool) -> None:
        self.set_spike_display(fit=checked)

    def _on_spikes_toggled(self, checked: bool) -> None:
        self.set_spike_display(spikes=checked)

    def _on_plot_frame(self, x: float) -> None:
        if self.num_frames:
            self.set_frame(int(round(float(x))))

    def _on_cursor_moved(self, line: Any = None) -> None:
        if self._syncing:
            return
        self._on_plot_frame(self.cursor.value())

    def _on_spikes_cursor_moved(self, line: Any = None) -> None:
        if self._syncing:
            return
        self._on_plot_frame(self.spikes_cursor.value())

    def _on_dff_returned(self, result: tuple[list[np.ndarray], bool]) -> None:
        arrays, stored = result
        worker, self._dff_worker = self._dff_worker, None
        signals = getattr(worker, "_napari_sima_signals", None)
        if signals is None:
            return
        signals["dff"] = arrays
        signals["dff_parameters"] = dict(rs.DFF_PARAMETERS)
        ds, label, ch = worker._napari_sima_target  # type: ignore[attr-defined]
        if not stored and ds.savedir is None:
            rs.store_dff(ds, label, signals, ch)
        if signals is self.signals:
            self._dff_rows.clear()

    def _on_dff_errored(self, err: Exception) -> None:
        self._dff_worker = None
        show_error(f"Computing ΔF/F failed: {err}")

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Draw what changed while the dock was hidden."""
        super().showEvent(event)
        if self._dirty:
            self._draw()
        if self._cursor_dirty:
            self._draw_cursor()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Disconnect from the viewer and the layer."""
        self._teardown()
        super().closeEvent(event)

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_dff()
        self._disconnect_layer()
        self._disconnect_viewer()
        _INSTANCES.discard(self)

    # -- state ------------------------------------------------------------------------------
    def _viewer_datasets(self) -> list[tuple[ImagingDataset, str]]:
        out: list[tuple[ImagingDataset, str]] = []
        for layer in self.viewer.layers:
            meta = sima_metadata(layer)
            ds = meta.get("dataset") if meta is not None else None
            if ds is None or any(d is ds for d, _ in out):
                continue
            out.append((ds, str(meta.get("base_name") or layer.name)))
        return out

    def _preferred_set(self) -> tuple[ImagingDataset, str, int]:
        """Return the newest set of the active layer's dataset, else the first listed."""
        active = self.viewer.layers.selection.active
        meta = sima_metadata(active) if active is not None else None
        ds = meta.get("dataset") if meta is not None else None
        for entry in self._sets:
            if entry[0] is ds:
                return entry
        return self._sets[0]

    def _current_set_index(self) -> int:
        for k, (ds, lab, ch) in enumerate(self._sets):
            if ds is self.dataset and lab == self.label and ch == self.channel:
                return k
        return -1

    def _visible_sequence(self) -> int:
        ref = rs.reference_movie_layer(self.viewer, self.dataset)
        meta = sima_metadata(ref) if ref is not None else None
        if meta is not None and meta.get("dataset") is self.dataset:
            return int(meta.get("sequence_index") or 0)
        return 0

    def _reference_layer(self) -> Layer | None:
        if not self._reference_valid:
            self._reference = rs.reference_movie_layer(self.viewer, self.dataset, self.sequence)
            self._reference_valid = True
        return self._reference

    def _update_sequence_combo(self) -> None:
        n = self.num_sequences
        with blocked(self.sequence_combo):
            self.sequence_combo.clear()
            self.sequence_combo.addItems([str(i) for i in range(n)])
            self.sequence_combo.setCurrentIndex(self.sequence if n else -1)
        several = n > 1
        self.sequence_combo.setVisible(several)
        self.sequence_label.setVisible(several)
        self.raster_button.setEnabled(self.signals is not None)
        self.kind_combo.setEnabled(self.signals is not None)
        self._update_spike_controls()

    def _update_spike_controls(self) -> None:
        has = self.has_spikes
        missing = "" if has else " — this set has no spikes: infer them in the Infer spikes dock"
        self.fit_check.setEnabled(has)
        self.fit_check.setToolTip(
            "Draw the denoised fit (dashed) over each raw trace (not over ΔF/F, whose "
            "units differ)" + missing
        )
        self.spikes_check.setEnabled(has)
        self.spikes_check.setToolTip(
            "Show the inferred spikes as stems in a row under the traces" + missing
        )
        self.raster_actions["spikes"].setEnabled(has)

    def _update_rows(self) -> None:
        """Work out the rows to plot from the selection, then draw (if shown)."""
        self._unmatched = 0
        self._n_selected = 0
        if self.signals is None:
            self.rows = []
        elif self._explicit is not None:
            self._n_selected = len(self._explicit)
            self.rows = self._explicit[:MAX_TRACES]
        elif self.shapes_layer is None:
            self.rows = []
        else:
            match = self._get_match()
            rows, unmatched = match.rows_of_shapes(self.shapes_layer.selected_data)
            self._unmatched = len(unmatched)
            self._n_selected = len(rows)
            self.rows = rows[:MAX_TRACES]
        self._colors = self._row_colors(self.rows)
        self._refresh_plot()

    def _get_match(self) -> rs.RoiMatch:
        if self._match is None:
            layer, signals = self.shapes_layer, self.signals
            if layer is None or signals is None:
                self._match = rs.RoiMatch()
            else:
                self._match = rs.match_rois(layer.features, list(signals.get("rois") or []))
        return self._match

    def _row_colors(self, rows: list[int]) -> list[tuple[float, ...]]:
        colors: list[tuple[float, ...]] = []
        first: dict[int, int] = {}
        edge = None
        layer = self.shapes_layer
        if layer is not None and self._explicit is None and self.signals is not None:
            first = self._get_match().first_shape_of_row()
            edge = np.asarray(layer.edge_color)
        for r in rows:
            i = first.get(r)
            if edge is not None and i is not None and i < len(edge):
                rgba = tuple(float(v) for v in edge[i][:3]) + (1.0,)
            else:
                rgba = tuple(float(v) for v in ROI_PALETTE[r % len(ROI_PALETTE)]) + (1.0,)
            colors.append(rgba)
        return colors

    def _traces(self, rows: list[int]) -> np.ndarray:
        """``(len(rows), n_frames)`` traces of the plotted sequence and kind."""
        assert self.signals is not None
        seq = self.sequence
        if self.kind == "raw" or rs.has_dff(self.signals):
            key = "raw" if self.kind == "raw" else "dff"
            return np.asarray(self.signals[key][seq])[rows]
        missing = [r for r in rows if (seq, r) not in self._dff_rows]
        if missing:
            computed = rs.compute_dff_rows(self.signals, seq, missing)
            for r, trace in zip(missing, computed, strict=True):
                self._dff_rows[(seq, r)] = trace
        if not rows:
            return np.zeros((0, self.num_frames), dtype=np.float32)
        return np.stack([self._dff_rows[(seq, r)] for r in rows])

    def _ensure_full_dff(self) -> None:
        """Compute (and store) the set's ΔF/F: now for small sets, else in a worker."""
        signals = self.signals
        if signals is None or rs.has_dff(signals) or self._dff_worker is not None:
            return
        ds, label, ch = self.dataset, self.label, self.channel
        assert ds is not None and label is not None
        size = sum(int(np.size(r)) for r in signals["raw"])
        if size <= DFF_MAIN_THREAD_MAX_VALUES:
            try:
                rs.signal_arrays(signals, "dff")
                rs.store_dff(ds, label, signals, ch)
            except USER_ERRORS as err:
                show_error(f"Computing ΔF/F failed: {_err_text(err)}")
            return
        job = {"dataset": ds, "label": label, "channel": ch, "raw": list(signals["raw"])}
        worker = _dff_job(job)
        worker._napari_sima_signals = signals  # type: ignore[attr-defined]
        worker._napari_sima_target = (ds, label, ch)  # type: ignore[attr-defined]
        worker.returned.connect(self._on_dff_returned)
        worker.errored.connect(self._on_dff_errored)
        worker.finished.connect(lambda: _forget_dff_worker(worker, job))
        self._dff_worker = worker
        worker.start()

    def _cancel_dff(self) -> None:
        worker, self._dff_worker = self._dff_worker, None
        if worker is not None:
            # let it finish in the background, but ignore its result
            worker._napari_sima_signals = None
            with contextlib.suppress(Exception):
                worker.returned.disconnect(self._on_dff_returned)

    # -- drawing ----------------------------------------------------------------------------
    def _can_draw(self) -> bool:
        return not self._closed and self.isVisible()

    def _refresh_plot(self) -> None:
        self._title = self._compose_title()
        if self._can_draw():
            self._draw()
        else:
            self._dirty = True

    def _x(self, n: int) -> np.ndarray:
        x = self._x_cache.get(n)
        if x is None:
            x = self._x_cache[n] = np.arange(n, dtype=np.float64)
        return x

    def _draw(self) -> None:
        self._dirty = False
        rows = self.rows if self.signals is not None else []
        traces = self._traces(rows) if rows else None
        x = self._x(self.num_frames) if rows else None
        names = self._roi_names(rows)
        for k, item in enumerate(self._items):
            if k < len(rows):
                assert traces is not None
                color = self._colors[k] if k < len(self._colors) else (1.0, 1.0, 1.0, 1.0)
                if item._napari_sima_color != color:  # type: ignore[attr-defined]
                    item.setPen(pg.mkPen(color=[round(255 * c) for c in color], width=1))
                    item._napari_sima_color = color  # type: ignore[attr-defined]
                item.setData(x, traces[k])
                item.setVisible(True)
            elif item.isVisible():
                item.setVisible(False)
                item.setData([], [])
        self._draw_spikes(rows, x)
        self.plot_item.setTitle(self._title, color=self._fg, size="9pt")
        self.names_label.setText(self._names_html(names))

    def _stem_x(self, n: int) -> np.ndarray:
        x = self._stem_x_cache.get(n)
        if x is None:
            x = self._stem_x_cache[n] = np.repeat(np.arange(n, dtype=np.float64), 3)
        return x

    def _draw_spikes(self, rows: list[int], x: np.ndarray | None) -> None:
        """Draw the fits over the traces and the spike stems (or hide them)."""
        fits_on, spikes_on = self.fits_shown and bool(rows), self.spikes_shown
        seq = self.sequence
        fits = np.asarray(self.signals["spikes_fits"][seq])[rows] if fits_on else None
        spikes = None
        if spikes_on and rows:
            spikes = np.nan_to_num(np.asarray(self.signals["spikes"][seq], dtype=float)[rows])
        n = len(rows)
        for k, (fit_item, spike_item) in enumerate(
            zip(self._fit_items, self._spike_items, strict=True)
        ):
            color = self._colors[k] if k < len(self._colors) else (1.0, 1.0, 1.0, 1.0)
            rgb = [round(255 * c) for c in color]
            if fits is not None and k < n:
                if fit_item._napari_sima_color != color:  # type: ignore[attr-defined]
                    fit_item.setPen(
                        pg.mkPen(color=rgb, width=1.5, style=Qt.PenStyle.DashLine)
                    )
                    fit_item._napari_sima_color = color  # type: ignore[attr-defined]
                fit_item.setData(x, fits[k])
                fit_item.setVisible(True)
            elif fit_item.isVisible():
                fit_item.setVisible(False)
                fit_item.setData([], [])
            if spikes is not None and k < n:
                if spike_item._napari_sima_color != color:  # type: ignore[attr-defined]
                    spike_item.setPen(pg.mkPen(color=rgb, width=1))
                    spike_item._napari_sima_color = color  # type: ignore[attr-defined]
                lane = float(n - 1 - k)
                y = np.full(3 * spikes.shape[1], lane)
                y[1::3] += SPIKE_STEM_HEIGHT * np.clip(spikes[k], 0.0, 1.0)
                spike_item.setData(self._stem_x(spikes.shape[1]), y)
                spike_item.setVisible(True)
            elif spike_item.isVisible():
                spike_item.setVisible(False)
                spike_item.setData([], [])
        if spikes_on:
            self.spikes_view_box.setYRange(-0.1, max(n, 1) - 0.05, padding=0)
        if self.spikes_plot_widget.isVisibleTo(self) != spikes_on:
            self.spikes_plot_widget.setVisible(spikes_on)
            # one frame axis, under the lower plot
            self.plot_item.showAxis("bottom", not spikes_on)

    def _draw_cursor(self) -> None:
        self._cursor_dirty = False
        frame = self.current_frame()
        show = frame is not None and self.signals is not None
        self.cursor.setVisible(show)
        self.spikes_cursor.setVisible(show)
        if show:
            self._syncing = True
            try:
                for line in (self.cursor, self.spikes_cursor):
                    if float(line.value()) != float(frame):
                        line.setValue(frame)
            finally:
                self._syncing = False

    def _sync_cursor(self) -> None:
        if self._can_draw():
            self._draw_cursor()
        else:
            self._cursor_dirty = True

    def _reset_x_range(self) -> None:
        n = self.num_frames
        if n:
            self.view_box.setXRange(0, max(n - 1, 1), padding=0.01)
        self.view_box.enableAutoRange(axis="y", enable=True)

    def _roi_names(self, rows: list[int]) -> list[str]:
        rois = list(self.signals.get("rois") or []) if self.signals is not None else []
        return [rs.roi_text(rois[r], r) if r < len(rois) else f"ROI {r}" for r in rows]

    def _compose_title(self) -> str:
        if self.signals is None:
            if not self._sets:
                return "No signals: extract signals from ROIs (Extract dock) first"
            return "No signal set chosen"
        kind = rs.KIND_TITLES[self.kind] + (" + fit" if self.fits_shown else "")
        seq = f", sequence {self.sequence}" if self.num_sequences > 1 else ""
        head = f"{self.label} ({kind}{seq})"
        if self._explicit is None and self.shapes_layer is None:
            return f"{head}: no ROIs layer — open ROIs in the ROIs dock"
        if not self.rows:
            if self._unmatched:
                return (
                    f"{head}: the {self._unmatched} selected ROI(s) are not in this signal "
                    f"set — extract their signals, or pick the set they came from"
                )
            layer = self.shapes_layer.name if self.shapes_layer is not None else "the ROIs layer"
            return f"{head}: select ROIs in {layer!r} to see their traces"
        parts = [head]
        if self._n_selected > len(self.rows):
            parts.append(f"first {len(self.rows)} of {self._n_selected} selected ROIs")
        if self._unmatched:
            parts.append(f"{self._unmatched} selected ROI(s) not in this set")
        if self._explicit is None and self._match is not None and self._match.how == "label":
            parts.append("ROIs matched by id/label")
        if self.show_fit and self.has_spikes and self.kind != "raw":
            parts.append("fits are drawn over raw signals only")
        return " — ".join(parts)

    def _names_html(self, names: list[str]) -> str:
        """Return the plotted ROIs' names in their curve colours (a cheap legend)."""
        if self.signals is None:
            return "Pick a stored signal set above, or run an extraction."
        if not names:
            return f"<span style='color:gray'>{_escape(HELP_TEXT)}</span>"
        parts = []
        for name, color in zip(names, self._colors, strict=False):
            hexcolor = "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in color[:3]))
            parts.append(f"<span style='color:{hexcolor}'>&#9632;</span>&nbsp;{_escape(name)}")
        return " &nbsp; ".join(parts)

    def _set_message(self, text: str) -> None:
        self._title = text
        self.plot_item.setTitle(text, color=self._fg, size="9pt")
        self.names_label.setText(_escape(text))

    def _apply_theme(self) -> None:
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self.viewer.theme)
            bg, fg = theme.background.as_hex(), theme.text.as_hex()
            accent = theme.current.as_hex()
        except Exception:  # noqa: BLE001 - an unknown theme must not break the dock
            bg, fg, accent = "#23242b", "#f0f1f2", "#4560c4"
        self._fg = fg
        for widget, item in (
            (self.plot_widget, self.plot_item),
            (self.spikes_plot_widget, self.spikes_plot_item),
        ):
            widget.setBackground(bg)
            for name in ("left", "bottom"):
                axis = item.getAxis(name)
                axis.setPen(fg)
                axis.setTextPen(fg)
        for line in (self.cursor, self.spikes_cursor):
            line.setPen(pg.mkPen(fg, width=1.5))
            line.setHoverPen(pg.mkPen(accent, width=3))
        self.plot_item.setTitle(self._title, color=fg, size="9pt")



def _escape(text: str) -> str:
    import html

    return html.escape(str(text), quote=False)


def _err_text(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    return text
