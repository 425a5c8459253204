"""The Sessions dock widget: carry ROIs across imaging sessions of one field of view.

ROI Buddy's multi-session tools in napari, over the headless core
(:mod:`napari_sima.core.import_rois`, :mod:`napari_sima.core.registration`):

* **Sessions** — a table of datasets (from the viewer's layers, or opened with
  "Open dataset…"), each with the ROI set chosen for it, and the *reference*
  session whose space the others are brought into.
* **Transform** — pick a source session, a method ('euclidean', 'similarity',
  'affine', 'projective', 'polynomial' with its order, 'piecewise-affine') or an
  anchor ROI set; "Estimate" finds the transform onto the reference in a worker
  thread (progress bar, Cancel) and shows a *preview*: the source ROIs mapped onto
  the reference's mean image, with the estimate's quality.  "Import" stores them in
  the reference dataset (asking before replacing a set).  A failed estimate
  (:class:`~napari_sima.core.transform.TransformError`) is reported as a
  notification and nothing is shown or stored.
* **Align** — every session's ROI set in the reference space in one Shapes layer
  (sessions mapped with the transforms estimated here, or shown as they are),
  coloured by session or by id; "Register ids" matches them
  (:func:`~napari_sima.core.registration.iter_register_rois`, in a worker); merge /
  unmerge the ids of the ROIs selected in the layer, delete false positives,
  propagate chosen tags to every ROI sharing an id; "Save all" writes each
  session's ROI set back to its own dataset (in its own space: only ids, tags and
  deletions change).

Every action is a public method (``add_session``, ``add_viewer_datasets``,
``open_dataset``, ``remove_session``, ``set_roi_set``, ``set_reference``,
``set_source``, ``set_method``, ``set_anchor_set``, ``estimate``, ``cancel``,
``import_preview``, ``show_aligned``, ``register_ids``, ``merge_selected``,
``unmerge_selected``, ``delete_selected``, ``propagate_tags``, ``save_all``,
``set_color_by``) so scripts and tests drive it without dialogs.  User errors reach
the user as napari notifications, never tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._layers import METADATA_KEY, projection_layer_data, sima_metadata, source_name, unwrap
from ._common import (
    USER_ERRORS,
    JobGuard,
    blocked,
    datasets_in_layers,
    make_button,
    make_status_label,
    release_worker,
)
from ._sessions_view import (
    ALIGN_LAYER_NAME,
    COLOR_MODES,
    PREVIEW_COLOR,
    PREVIEW_PREFIX,
    Alignment,
    AlignState,
    Session,
    align_colors,
    align_shapes,
    all_tags,
    estimate_report,
    frame_shape3,
    map_rois,
    refs_of_rows,
    roi_set_labels,
    session_color,
)

if TYPE_CHECKING:
    from napari.layers import Layer, Shapes

    from ..core import ImagingDataset, ROIList
    from ..core.import_rois import TransformedROIs
    from ..core.registration import RegistrationSummary

logger = logging.getLogger(__name__)

#: Transform methods offered (as in :data:`napari_sima.core.transform.METHODS`).
METHODS = ("euclidean", "similarity", "affine", "projective", "polynomial", "piecewise-affine")

#: Text of the anchor box entry meaning "register the images".
NO_ANCHOR = "none: register the images"

#: Datasets with more frames get their mean image computed in a worker thread.
MAIN_THREAD_MAX_FRAMES = 2000

#: Outline width of the preview and align layers (data pixels).
EDGE_WIDTH = 0.6

#: Columns of the Sessions table.
TABLE_COLUMNS = ("Session", "ROI set", "ROIs", "Alignment")


def _message(err: BaseException) -> str:
    """User-facing text of an error (a KeyError's message unquoted)."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    text = str(err)
    if isinstance(err, USER_ERRORS):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass
class SessionJob:
    """State shared between the widget and one worker (estimate or registration).

    Attributes
    ----------
    kind : {'estimate', 'register'}
        What runs.
    steps : generator
        The core generator (yields ``(done, total)``); closed when the worker ends,
        which cancels it.
    context : dict
        What the widget needs to apply the result.
    cancel_requested : threading.Event
        Set by :meth:`SessionsWidget.cancel`; a result that arrives after it is
        discarded.
    result : object
        The generator's return value, written by the worker.
    error : BaseException or None
        Written by the worker when the work failed.
    """

    kind: str
    steps: Generator[tuple[int, int], None, Any]
    context: dict[str, Any] = field(default_factory=dict)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class Preview:
    """A transform estimate waiting to be imported.

    Attributes
    ----------
    result : TransformedROIs
        The transformed ROIs and the per-plane estimates.
    source, target : Session
        The source session and the reference it was mapped onto.
    """

    result: TransformedROIs
    source: Session
    target: Session


@thread_worker
def _job_steps(job: SessionJob) -> Generator[tuple[int, int], None, None]:
    """Drive a core generator in a worker thread; its result or error goes to ``job``."""
    try:
        job.result = yield from job.steps
    except Exception as err:  # reported by the widget as a notification
        job.error = err


@thread_worker
def _projection_steps(dataset: ImagingDataset) -> Generator[tuple[int, int], None, Any]:
    """Compute a dataset's projections in a worker thread (progress yielded)."""
    moments = yield from dataset.iter_projections()
    return moments


class SessionsWidget(QWidget):
    """Carry ROIs across sessions: transform import, shared ids, tags (ROI Buddy's align mode).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer; datasets behind its layers (``metadata['napari_sima']['dataset']``)
        become sessions as they appear.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    preview : Preview or None
        The last successful estimate, until imported or replaced.
    preview_layer : napari.layers.Shapes or None
        The layer showing it.
    align : AlignState or None
        The align view's state.
    align_layer : napari.layers.Shapes or None
        The layer showing every session's ROIs.
    last_summary : RegistrationSummary or None
        What the last "Register ids" found.

    Notes
    -----
    A session's ROI set lives in its own dataset's space.  The align view maps it into
    the reference's space with the transform estimated here from that dataset onto the
    reference ("Estimate" with it as the source); a session without one is shown as
    it is (its frame must then have the reference's shape, e.g. a set already
    imported into the reference, or motion-corrected to the same template).
    Outline edits in the align layer are not kept (edit outlines in the ROIs panel);
    deleting shapes deletes their ROIs.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._sessions: list[Session] = []
        self._reference: Session | None = None
        self._source: Session | None = None
        self._alignments: list[Alignment] = []
        self.preview: Preview | None = None
        self.preview_layer: Shapes | None = None
        self.align: AlignState | None = None
        self.align_layer: Shapes | None = None
        self.last_summary: RegistrationSummary | None = None
        self._color_by = "session"
        self._worker: Any = None
        self._job: SessionJob | None = None
        self._mean_workers: dict[int, Any] = {}
        # cancels the running job when a dataset it uses leaves the viewer, and stops
        # every worker when the dock is deleted (the slot holds the dict, not the dock)
        self._job_guard = JobGuard(self, viewer, self.cancel)
        mean_workers = self._mean_workers
        self._job_guard.add_stop(lambda: [w.quit() for w in list(mean_workers.values())])
        self._quiet_depth = 0
        self._warned_edit = False
        self._closed = False
        # rows added because their dataset appeared in the viewer: removed with its layers
        self._viewer_sessions: list[Session] = []
        self._shape_counts: dict[tuple[int, int], int] = {}

        self.setObjectName("napari_sima_sessions_widget")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll_area = QScrollArea(self)
        self.scroll_area.setObjectName("scroll_area")
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        content = QWidget(self.scroll_area)
        content.setObjectName("content")
        self.scroll_area.setWidget(content)
        outer.addWidget(self.scroll_area)
        layout = QVBoxLayout(content)
        layout.addWidget(self._create_sessions_group())
        layout.addWidget(self._create_transform_group())
        layout.addWidget(self._create_align_group())
        layout.addWidget(self._create_progress_group())
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._on_layers_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.add_viewer_datasets(notify=False)
        self._update_controls()

    # -- construction ---------------------------------------------------------------------
    def _create_sessions_group(self) -> QGroupBox:
        box = QGroupBox("Sessions", self)
        box.setObjectName("sessions_group")
        layout = QVBoxLayout(box)
        self.table = QTableWidget(0, len(TABLE_COLUMNS), box)
        self.table.setObjectName("sessions_table")
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.table.setToolTip(
            "One row per session: its dataset and the ROI set used for it. The colour is "
            "the session's colour in the align view."
        )
        layout.addWidget(self.table)
        self.add_viewer_button = self._button(
            "Add from viewer", "add_viewer_button", self._on_add_viewer_clicked, box
        )
        self.add_viewer_button.setToolTip("Add every dataset shown in the viewer's layers")
        self.open_button = self._button("Open dataset…", "open_button", self._on_open_clicked, box)
        self.open_button.setToolTip("Add a .sima dataset folder as a session")
        self.add_set_button = self._button(
            "Add set row", "add_set_button", self._on_add_set_clicked, box
        )
        self.add_set_button.setToolTip(
            "Add another row for the selected row's dataset (e.g. to compare two of its ROI sets)"
        )
        self.remove_button = self._button("Remove", "remove_button", self._on_remove_clicked, box)
        self.remove_button.setToolTip("Remove the selected row (the dataset is not changed)")
        grid = QGridLayout()
        grid.addWidget(self.add_viewer_button, 0, 0)
        grid.addWidget(self.open_button, 0, 1)
        grid.addWidget(self.add_set_button, 1, 0)
        grid.addWidget(self.remove_button, 1, 1)
        layout.addLayout(grid)
        form = QFormLayout()
        self.reference_combo = QComboBox(box)
        self.reference_combo.setObjectName("reference_combo")
        self.reference_combo.setToolTip(
            "The session whose space the others are brought into (the import target and "
            "the registration reference)"
        )
        self.reference_combo.currentIndexChanged.connect(self._on_reference_changed)
        form.addRow("Reference", self.reference_combo)
        layout.addLayout(form)
        return box

    def _create_transform_group(self) -> QGroupBox:
        box = QGroupBox("Transform ROIs onto the reference", self)
        box.setObjectName("transform_group")
        form = QFormLayout(box)
        self.source_combo = QComboBox(box)
        self.source_combo.setObjectName("source_combo")
        self.source_combo.setToolTip("The session whose ROI set is carried to the reference")
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        method_row = QHBoxLayout()
        self.method_combo = QComboBox(box)
        self.method_combo.setObjectName("method_combo")
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setCurrentText("affine")
        self.method_combo.setToolTip(
            "euclidean: shift + rotation; similarity: + scale; affine: + shear; "
            "projective: perspective; polynomial: smooth warp of the given order; "
            "piecewise-affine: a mesh of affine pieces"
        )
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.order_spin = QSpinBox(box)
        self.order_spin.setObjectName("order_spin")
        self.order_spin.setRange(1, 5)
        self.order_spin.setValue(2)
        self.order_spin.setPrefix("order ")
        self.order_spin.setToolTip("Order of the polynomial transform")
        method_row.addWidget(self.method_combo, 1)
        method_row.addWidget(self.order_spin)
        self.anchor_combo = _PopupCombo(self._refresh_anchor_sets, box)
        self.anchor_combo.setObjectName("anchor_combo")
        self.anchor_combo.setToolTip(
            "Register the time-averaged images, or fit the transform to anchor ROIs: a "
            "set of this name in both datasets, one polygon per plane marking the same "
            "landmarks"
        )
        self.anchor_combo.currentIndexChanged.connect(self._on_anchor_changed)
        self.source_channel_combo = QComboBox(box)
        self.source_channel_combo.setObjectName("source_channel_combo")
        self.source_channel_combo.setToolTip(
            "Channel of the source whose time average is registered"
        )
        self.target_channel_combo = QComboBox(box)
        self.target_channel_combo.setObjectName("target_channel_combo")
        self.target_channel_combo.setToolTip(
            "Channel of the reference whose time average is registered"
        )
        self.ca1pc_check = QCheckBox("Register CA1PC-processed images", box)
        self.ca1pc_check.setObjectName("ca1pc_check")
        self.ca1pc_check.setToolTip(
            "Contrast-equalised, sharpened images (SIMA's pre_processing_method='ca1pc'); "
            "can help when the two sessions' brightness differs a lot"
        )
        run_row = QHBoxLayout()
        self.estimate_button = self._button(
            "Estimate", "estimate_button", self._on_estimate_clicked, box
        )
        self.estimate_button.setToolTip(
            "Find the transform in the background and preview the source ROIs on the "
            "reference's mean image (nothing is stored)"
        )
        run_row.addWidget(self.estimate_button)
        self.quality_label = QLabel("", box)
        self.quality_label.setObjectName("quality_label")
        self.quality_label.setWordWrap(True)
        self.quality_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        import_row = QHBoxLayout()
        self.label_edit = QLineEdit(box)
        self.label_edit.setObjectName("label_edit")
        self.label_edit.setToolTip(
            "Name of the ROI set stored in the reference (blank: the source set's name, "
            "or that name with a timestamp when the reference already has it)"
        )
        self.import_button = self._button("Import", "import_button", self._on_import_clicked, box)
        self.import_button.setToolTip("Store the previewed ROIs in the reference dataset")
        import_row.addWidget(self.label_edit, 1)
        import_row.addWidget(self.import_button)
        form.addRow("Source", self.source_combo)
        form.addRow("Method", method_row)
        form.addRow("Anchors", self.anchor_combo)
        channel_row = QHBoxLayout()
        channel_row.addWidget(self.source_channel_combo, 1)
        arrow = QLabel("→", box)
        arrow.setToolTip("source channel → reference channel")
        channel_row.addWidget(arrow)
        channel_row.addWidget(self.target_channel_combo, 1)
        form.addRow("Channels", channel_row)
        form.addRow(self.ca1pc_check)
        form.addRow(run_row)
        form.addRow(self.quality_label)
        form.addRow("Import as", import_row)
        self._on_method_changed()
        return box

    def _create_align_group(self) -> QGroupBox:
        box = QGroupBox("Align and register", self)
        box.setObjectName("align_group")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.show_button = self._button("Show aligned", "show_button", self._on_show_clicked, box)
        self.show_button.setToolTip(
            "Show every session's ROI set in the reference's space, one colour per session"
        )
        self.color_combo = QComboBox(box)
        self.color_combo.setObjectName("color_combo")
        self.color_combo.addItems([f"colour by {m}" for m in COLOR_MODES])
        self.color_combo.currentIndexChanged.connect(self._on_color_changed)
        self.ids_check = QCheckBox("ids", box)
        self.ids_check.setObjectName("ids_check")
        self.ids_check.setToolTip("Write each ROI's id on it")
        self.ids_check.toggled.connect(self._on_ids_toggled)
        row.addWidget(self.show_button)
        row.addWidget(self.color_combo, 1)
        row.addWidget(self.ids_check)
        layout.addLayout(row)
        reg_row = QHBoxLayout()
        self.min_iou_spin = QDoubleSpinBox(box)
        self.min_iou_spin.setObjectName("min_iou_spin")
        self.min_iou_spin.setRange(0.01, 1.0)
        self.min_iou_spin.setSingleStep(0.05)
        self.min_iou_spin.setDecimals(2)
        from ..core.registration import DEFAULT_MIN_IOU

        self.min_iou_spin.setValue(DEFAULT_MIN_IOU)
        self.min_iou_spin.setPrefix("min IoU ")
        self.min_iou_spin.setToolTip(
            "Smallest overlap (intersection over union) for two ROIs of different "
            "sessions to be the same cell"
        )
        self.shift_check = QCheckBox("fix residual shift", box)
        self.shift_check.setObjectName("shift_check")
        self.shift_check.setChecked(True)
        self.shift_check.setToolTip(
            "Estimate what is left of the misregistration between two sessions from "
            "their matched ROIs, and match again (the ROIs are not moved)"
        )
        self.register_button = self._button(
            "Register ids", "register_button", self._on_register_clicked, box
        )
        self.register_button.setToolTip(
            "Give the ROIs of different sessions that are the same cell the same id"
        )
        reg_row.addWidget(self.min_iou_spin)
        reg_row.addWidget(self.shift_check)
        layout.addLayout(reg_row)
        layout.addWidget(self.register_button)
        edit_row = QHBoxLayout()
        self.merge_button = self._button("Merge ids", "merge_button", self._on_merge_clicked, box)
        self.merge_button.setToolTip(
            "Give the selected ROIs (and their clusters) one id: they are one cell"
        )
        self.unmerge_button = self._button(
            "Unmerge", "unmerge_button", self._on_unmerge_clicked, box
        )
        self.unmerge_button.setToolTip("Give each selected ROI an id of its own")
        self.delete_button = self._button(
            "Delete ROIs", "delete_button", self._on_delete_clicked, box
        )
        self.delete_button.setToolTip("Delete the selected ROIs from their sessions' sets")
        edit_row.addWidget(self.merge_button)
        edit_row.addWidget(self.unmerge_button)
        edit_row.addWidget(self.delete_button)
        layout.addLayout(edit_row)
        tag_grid = QGridLayout()
        self.tags_list = QListWidget(box)
        self.tags_list.setObjectName("tags_list")
        self.tags_list.setMaximumHeight(64)
        self.tags_list.setToolTip("Tags of the shown sessions; tick those to propagate")
        self.selected_only_check = QCheckBox("selected ROIs' ids only", box)
        self.selected_only_check.setObjectName("selected_only_check")
        self.propagate_button = self._button(
            "Propagate tags", "propagate_button", self._on_propagate_clicked, box
        )
        self.propagate_button.setToolTip(
            "Copy the ticked tags to every ROI sharing an id with an ROI that has them"
        )
        tag_grid.addWidget(self.tags_list, 0, 0, 2, 1)
        tag_grid.addWidget(self.selected_only_check, 0, 1)
        tag_grid.addWidget(self.propagate_button, 1, 1)
        layout.addLayout(tag_grid)
        save_row = QHBoxLayout()
        self.save_label_edit = QLineEdit(box)
        self.save_label_edit.setObjectName("save_label_edit")
        self.save_label_edit.setPlaceholderText("blank: each session's own set")
        self.save_label_edit.setToolTip(
            "Save every session's ROIs under this set name (blank: replace the set each "
            "session shows)"
        )
        self.save_button = self._button("Save all", "save_button", self._on_save_clicked, box)
        self.save_button.setToolTip("Write every session's ROI set to its dataset")
        save_row.addWidget(self.save_label_edit, 1)
        save_row.addWidget(self.save_button)
        layout.addLayout(save_row)
        self.summary_label = QLabel("", box)
        self.summary_label.setObjectName("summary_label")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.summary_label)
        return box

    def _create_progress_group(self) -> QWidget:
        box = QWidget(self)
        box.setObjectName("progress_group")
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.progress_bar = QProgressBar(box)
        self.progress_bar.setObjectName("progress_bar")
        self.progress_bar.setFormat("%p%")
        self.progress_bar.setValue(0)
        self.cancel_button = self._button("Cancel", "cancel_button", self._on_cancel_clicked, box)
        self.cancel_button.setToolTip("Stop the running estimate or registration")
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.status_label = make_status_label(box)
        layout.addWidget(self.status_label)
        return box

    def _button(self, text: str, object_name: str, slot: Any, parent: QWidget) -> QPushButton:
        return make_button(text, object_name, slot, parent)

    # -- state ----------------------------------------------------------------------------
    @property
    def sessions(self) -> list[Session]:
        """The sessions, in table order (the records themselves)."""
        return list(self._sessions)

    @property
    def reference(self) -> Session | None:
        """The reference session."""
        return self._reference

    @property
    def source(self) -> Session | None:
        """The source session of the transform."""
        return self._source

    @property
    def is_running(self) -> bool:
        """Whether an estimate or a registration is running."""
        return self._worker is not None

    @property
    def method(self) -> str:
        """The chosen transform method."""
        return self.method_combo.currentText()

    @property
    def anchor_set(self) -> str | None:
        """The chosen anchor ROI set (None: register the images)."""
        if self.anchor_combo.currentIndex() <= 0:
            return None
        return self.anchor_combo.currentText()

    @property
    def color_by(self) -> str:
        """Colour mode of the align layer (``'session'`` or ``'id'``)."""
        return self._color_by

    def alignment_of(self, session: Session) -> Alignment | None:
        """Return the transform estimated from a session's dataset onto the reference's, if any."""
        ref = self._reference
        if ref is None:
            return None
        for a in reversed(self._alignments):
            if a.source is session.dataset and a.target is ref.dataset:
                return a
        return None

    # -- sessions -------------------------------------------------------------------------
    def add_session(
        self, dataset: ImagingDataset, roi_set: str | None = None, name: str | None = None
    ) -> int:
        """Add a session row.

        Parameters
        ----------
        dataset : ImagingDataset
            The dataset (it may already have a row: a second row shows another set).
        roi_set : str, optional
            Its ROI set (default: the most recent).
        name : str, optional
            Display name (default: from the viewer's layers, else the folder name).

        Returns
        -------
        int
            The row index, or -1 on failure (notified).
        """
        dataset = unwrap(dataset)
        if not hasattr(dataset, "frame_shape") or not hasattr(dataset, "ROIs"):
            show_error(f"Not an imaging dataset: {dataset!r}")
            return -1
        try:
            labels = roi_set_labels(dataset)
        except USER_ERRORS as err:
            show_error(f"Cannot read the dataset's ROI sets: {_message(err)}")
            return -1
        if roi_set is not None and roi_set not in labels:
            show_error(f"The dataset has no ROI set {roi_set!r}; its sets: {labels}")
            return -1
        if roi_set is None and labels:
            roi_set = labels[0]
        session = Session(name or self._name_of(dataset), dataset, roi_set)
        self._sessions.append(session)
        if self._reference is None:
            self._reference = session
        if self._source is None and session is not self._reference:
            self._source = session
        self._refresh_all()
        return len(self._sessions) - 1

    def add_viewer_datasets(self, notify: bool = True) -> int:
        """Add a row for every dataset behind the viewer's layers that has none yet.

        Returns
        -------
        int
            Number of rows added.
        """
        have = {id(s.dataset) for s in self._sessions}
        added = 0
        for name, ds in datasets_in_layers(self._layers()):
            if id(ds) in have or not hasattr(ds, "ROIs"):
                continue
            if self.add_session(ds, name=name) >= 0:
                self._viewer_sessions.append(self._sessions[-1])
                have.add(id(ds))
                added += 1
        if notify and not added:
            show_info("Every dataset in the viewer is already a session.")
        return added

    def open_dataset(self, path: str | os.PathLike) -> int:
        """Open a ``.sima`` dataset folder and add it as a session.

        Returns
        -------
        int
            The row index, or -1 on failure (notified).
        """
        from ..core import ImagingDataset

        try:
            ds = ImagingDataset.load(path)
        except USER_ERRORS as err:
            show_error(f"Cannot open {os.fspath(path)!r}: {_message(err)}")
            return -1
        return self.add_session(ds, name=source_name(path))

    def remove_session(self, index: int) -> bool:
        """Remove a session row (the dataset is not changed).

        Returns
        -------
        bool
            True if removed.
        """
        if self.is_running:
            show_warning("Wait for the running job to finish (or cancel it) first.")
            return False
        if not 0 <= index < len(self._sessions):
            show_error(f"There is no session row {index}.")
            return False
        session = self._sessions.pop(index)
        self._viewer_sessions = [s for s in self._viewer_sessions if s is not session]
        if self._reference is session:
            self._reference = self._sessions[0] if self._sessions else None
        if self._source is session:
            self._source = next((s for s in self._sessions if s is not self._reference), None)
        if self.preview is not None and session in (self.preview.source, self.preview.target):
            self._clear_preview()
        if not any(s.dataset is session.dataset for s in self._sessions):
            self._alignments = [
                a
                for a in self._alignments
                if a.source is not session.dataset and a.target is not session.dataset
            ]
        self._refresh_all()
        return True

    def set_roi_set(self, index: int, label: str) -> bool:
        """Choose the ROI set of a session row.

        Returns
        -------
        bool
            True if the dataset has the set.
        """
        if not 0 <= index < len(self._sessions):
            show_error(f"There is no session row {index}.")
            return False
        session = self._sessions[index]
        try:
            labels = roi_set_labels(session.dataset)
        except USER_ERRORS as err:
            show_error(f"Cannot read the dataset's ROI sets: {_message(err)}")
            return False
        if label not in labels:
            show_error(f"{session.name} has no ROI set {label!r}; its sets: {labels}")
            return False
        session.roi_set = label
        if self.preview is not None and self.preview.source is session:
            self._clear_preview()
        self._refresh_all()
        return True

    def set_reference(self, session: int | Session) -> bool:
        """Choose the reference session (by row index or record)."""
        s = self._session_arg(session)
        if s is None:
            return False
        if self.is_running:
            show_warning("Wait for the running job to finish (or cancel it) first.")
            return False
        if s is not self._reference:
            self._reference = s
            if self._source is s:
                self._source = next((x for x in self._sessions if x is not s), None)
            self._clear_preview()
        self._refresh_all()
        return True

    def set_source(self, session: int | Session) -> bool:
        """Choose the source session of the transform (by row index or record)."""
        s = self._session_arg(session)
        if s is None:
            return False
        if self._reference is not None and s.dataset is self._reference.dataset:
            show_error(f"{s.name} is the reference's dataset; the source must be another dataset.")
            return False
        self._source = s
        self._refresh_all()
        return True

    def set_method(self, method: str, order: int | None = None) -> bool:
        """Choose the transform method (and the polynomial order)."""
        key = str(method).strip().lower().replace("_", "-")
        if key not in METHODS:
            show_error(f"Unknown transform method {method!r}; choose one of {list(METHODS)}.")
            return False
        self.method_combo.setCurrentText(key)
        if order is not None:
            self.order_spin.setValue(int(order))
        return True

    def set_anchor_set(self, label: str | None) -> bool:
        """Fit the transform to this anchor ROI set (None: register the images)."""
        self._refresh_anchor_sets()
        if label is None:
            self.anchor_combo.setCurrentIndex(0)
            return True
        k = self.anchor_combo.findText(str(label))
        if k <= 0:
            offered = [self.anchor_combo.itemText(i) for i in range(1, self.anchor_combo.count())]
            show_error(
                f"No ROI set {label!r} in both the source and the reference; sets in both: "
                f"{offered}"
            )
            return False
        self.anchor_combo.setCurrentIndex(k)
        return True

    # -- transform ------------------------------------------------------------------------
    def estimate(self) -> Any:
        """Estimate the source → reference transform in a worker and preview the ROIs.

        Returns
        -------
        GeneratorWorker or None
            The running worker, or None if nothing was started (the reason is notified).
        """
        if self.is_running:
            show_warning("A job is already running.")
            return None
        try:
            kwargs, target, source = self._estimate_arguments()
            from ..core.import_rois import iter_transformed_ROIs

            steps = iter_transformed_ROIs(target.dataset, source.dataset, **kwargs)
        except USER_ERRORS as err:
            show_error(_message(err))
            return None
        self._clear_preview()
        what = (
            f"anchors {kwargs['anchor_label']!r}"
            if kwargs["anchor_label"] is not None
            else "the images"
        )
        job = SessionJob(
            "estimate", steps, context={"source": source, "target": target, "kwargs": kwargs}
        )
        self.quality_label.setText("")
        return self._start(
            job,
            f"Estimating the {kwargs['method']} transform {source.name} → {target.name} "
            f"from {what}…",
            [source.dataset, target.dataset],
        )

    def import_preview(self, label: str | None = None, overwrite: bool = False) -> str | None:
        """Store the previewed ROIs in the reference dataset.

        Parameters
        ----------
        label : str, optional
            Set name (default: the "Import as" box, else the core's default: the source
            set's name, with a timestamp if the reference already has it).
        overwrite : bool
            Replace an existing set of that name (otherwise refuse with a warning).

        Returns
        -------
        str or None
            The label stored, or None (notified).
        """
        preview = self.preview
        if preview is None:
            show_error("Nothing to import: estimate a transform first.")
            return None
        if self.is_running:
            show_warning("Wait for the running job to finish (or cancel it) first.")
            return None
        target = preview.target.dataset
        label = (label if label is not None else self.label_edit.text()).strip() or None
        try:
            existing = set(target.ROIs)
        except USER_ERRORS as err:
            show_error(f"Cannot read the reference's ROI sets: {_message(err)}")
            return None
        if label is not None and label in existing and not overwrite:
            show_warning(
                f"{preview.target.name} already has an ROI set {label!r}; choose another name "
                f"or confirm replacing it."
            )
            return None
        from ..core.import_rois import store_transformed_ROIs

        try:
            stored = store_transformed_ROIs(target, preview.result, label)
        except (*USER_ERRORS, PermissionError) as err:
            show_error(f"Cannot import into {preview.target.name}: {_message(err)}")
            return None
        n = len(preview.result.rois)
        message = (
            f"Imported {n} ROIs from {preview.source.name} ({preview.result.source_label!r}) "
            f"into {preview.target.name} as {stored!r}"
        )
        if label is not None and label in existing:
            message += " (replacing the set of that name)"
        self._set_status(message)
        show_info(message)
        self._refresh_all()
        return stored

    # -- align view -----------------------------------------------------------------------
    def show_aligned(self, discard: bool = False) -> bool:
        """Show every session's ROI set in the reference's space in one Shapes layer.

        Parameters
        ----------
        discard : bool
            Drop unsaved changes of the current align view (otherwise refuse with a
            warning while there are some).

        Returns
        -------
        bool
            True if shown.
        """
        if self.is_running:
            show_warning("Wait for the running job to finish (or cancel it) first.")
            return False
        if self.align is not None and self.align.dirty and not discard:
            show_warning(
                "The align view has unsaved ids or tags: save them (Save all) or confirm "
                "discarding them first."
            )
            return False
        ref = self._reference
        if ref is None or len(self._sessions) < 1:
            show_error("No sessions: add datasets first.")
            return False
        try:
            state = self._build_align_state()
        except USER_ERRORS as err:
            show_error(_message(err))
            return False
        self._install_align(state)
        return True

    def register_ids(self) -> Any:
        """Register the ROIs of the align view across sessions (shared ids), in a worker.

        Builds the align view first if it is not shown.

        Returns
        -------
        GeneratorWorker or None
            The running worker, or None if nothing was started (notified).
        """
        if self.is_running:
            show_warning("A job is already running.")
            return None
        if self.align is None and not self.show_aligned():
            return None
        state = self.align
        assert state is not None
        if len(state.display) < 2:
            show_error("Registering ids needs at least two sessions.")
            return None
        from ..core.registration import iter_register_rois

        try:
            steps = iter_register_rois(
                state.display,
                min_iou=float(self.min_iou_spin.value()),
                reference=state.reference,
                correct_shift=self.shift_check.isChecked(),
            )
        except USER_ERRORS as err:
            show_error(_message(err))
            return None
        job = SessionJob("register", steps, context={"state": state})
        n = sum(len(r) for r in state.display)
        return self._start(
            job,
            f"Registering {n} ROIs across {len(state.display)} sessions…",
            [s.dataset for s in state.sessions],
        )

    def selected_refs(self) -> list[tuple[int, int]]:
        """``(session, ROI index)`` of the ROIs selected in the align layer."""
        layer = self.align_layer
        if layer is None or self.align is None:
            return []
        return refs_of_rows(layer.features, layer.selected_data)

    def merge_selected(self) -> str | None:
        """Give the selected ROIs (and every ROI sharing their ids) one id.

        Returns
        -------
        str or None
            The shared id, or None (notified).
        """
        refs = self._need_selection(2, "merge")
        if refs is None:
            return None
        from ..core.registration import merge_ids

        state = self.align
        assert state is not None
        try:
            new, ident = merge_ids(state.originals, refs)
        except USER_ERRORS as err:
            show_error(_message(err))
            return None
        self._apply_curation(new)
        self._set_status(f"Merged {len(refs)} ROIs into id {ident!r}.")
        return ident

    def unmerge_selected(self) -> list[str] | None:
        """Give each selected ROI an id of its own.

        Returns
        -------
        list of str or None
            Their ids afterwards, or None (notified).
        """
        refs = self._need_selection(1, "unmerge")
        if refs is None:
            return None
        from ..core.registration import unmerge_ids

        state = self.align
        assert state is not None
        try:
            new, ids = unmerge_ids(state.originals, refs)
        except USER_ERRORS as err:
            show_error(_message(err))
            return None
        self._apply_curation(new)
        self._set_status(f"Unmerged {len(refs)} ROI(s): ids {', '.join(ids)}.")
        return ids

    def delete_selected(self) -> int:
        """Delete the selected ROIs from their sessions' sets (saved by "Save all").

        Returns
        -------
        int
            Number of ROIs deleted.
        """
        refs = self._need_selection(1, "delete")
        if refs is None:
            return 0
        self._delete_refs(refs)
        self._set_status(f"Deleted {len(refs)} ROI(s); Save all writes the change.")
        return len(refs)

    def propagate_tags(
        self, tags: str | Iterable[str] | None = None, selected_only: bool | None = None
    ) -> int:
        """Copy tags to every ROI sharing an id with an ROI that has them.

        Parameters
        ----------
        tags : str or iterable of str, optional
            The tags (default: those ticked in the tag list).
        selected_only : bool, optional
            Only the ids of the selected ROIs (default: the check box).

        Returns
        -------
        int
            Number of ROIs that received a tag (-1 on failure, notified).
        """
        state = self.align
        if state is None:
            show_error("Show the aligned sessions first.")
            return -1
        if tags is None:
            tags = self.checked_tags()
        elif isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        tags = list(tags)
        if not tags:
            show_error("Choose the tags to propagate (tick them in the list).")
            return -1
        if selected_only is None:
            selected_only = self.selected_only_check.isChecked()
        rois_arg = None
        if selected_only:
            rois_arg = self.selected_refs()
            if not rois_arg:
                show_error("Select ROIs in the align layer first (or untick 'selected only').")
                return -1
        from ..core.registration import propagate_tags

        try:
            new = propagate_tags(state.originals, tags, rois=rois_arg)
        except USER_ERRORS as err:
            show_error(_message(err))
            return -1
        changed = sum(
            1
            for old_list, new_list in zip(state.originals, new, strict=True)
            for a, b in zip(old_list, new_list, strict=True)
            if a.tags != b.tags
        )
        self._apply_curation(new)
        self._set_status(f"Propagated {', '.join(tags)} to {changed} ROI(s).")
        return changed

    def checked_tags(self) -> list[str]:
        """Return the tags ticked in the tag list."""
        out = []
        for i in range(self.tags_list.count()):
            item = self.tags_list.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(item.text())
        return out

    def set_checked_tags(self, tags: Iterable[str]) -> None:
        """Tick exactly these tags in the tag list."""
        wanted = set(tags)
        for i in range(self.tags_list.count()):
            item = self.tags_list.item(i)
            item.setCheckState(
                Qt.CheckState.Checked if item.text() in wanted else Qt.CheckState.Unchecked
            )

    def save_all(self, label: str | None = None) -> list[str]:
        """Write every shown session's ROI set to its dataset.

        Parameters
        ----------
        label : str, optional
            Set name used for every session (default: the "Save as" box, else each
            session's own set, which is replaced).

        Returns
        -------
        list of str
            ``'<session>: <label>'`` for each set written (failures are notified).
        """
        state = self.align
        if state is None:
            show_error("Nothing to save: show the aligned sessions first.")
            return []
        if self.is_running:
            show_warning("Wait for the running job to finish (or cancel it) first.")
            return []
        label = (label if label is not None else self.save_label_edit.text()).strip() or None
        saved: list[str] = []
        failed: list[str] = []
        for session, rois in zip(state.sessions, state.originals, strict=True):
            name = label or session.roi_set
            if name is None:
                failed.append(f"{session.name}: no set name")
                continue
            try:
                session.dataset.add_ROIs(rois, name)
            except (*USER_ERRORS, PermissionError) as err:
                failed.append(f"{session.name}: {_message(err)}")
                continue
            saved.append(f"{session.name}: {name}")
        if failed:
            show_error("Could not save " + "; ".join(failed))
        if saved:
            if not failed:
                state.dirty = False
            message = "Saved " + ", ".join(saved)
            self._set_status(message)
            show_info(message)
        self._refresh_all()
        return saved

    def set_color_by(self, mode: str) -> bool:
        """Colour the align layer by ``'session'`` or by ``'id'``."""
        if mode not in COLOR_MODES:
            show_error(f"Colour mode must be one of {COLOR_MODES}, got {mode!r}.")
            return False
        self._color_by = mode
        with blocked(self.color_combo):
            self.color_combo.setCurrentIndex(COLOR_MODES.index(mode))
        self._recolor()
        return True

    def set_show_ids(self, show: bool) -> None:
        """Write (or hide) each ROI's id on the align layer."""
        self.ids_check.setChecked(bool(show))
        self._on_ids_toggled(bool(show))

    def cancel(self) -> None:
        """Stop the running estimate or registration; nothing is changed."""
        if self._worker is None or self._job is None:
            return
        self._job.cancel_requested.set()
        self._worker.quit()
        self._set_status("Cancelling…")
        self.cancel_button.setEnabled(False)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Stop running work and disconnect from the viewer when the widget is closed."""
        self._teardown()
        super().closeEvent(event)

    # -- handlers -------------------------------------------------------------------------
    def _on_add_viewer_clicked(self) -> None:
        self.add_viewer_datasets()

    def _on_open_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a .sima dataset folder", os.getcwd())
        if path:
            self.open_dataset(path)

    def _on_add_set_clicked(self) -> None:
        row = self.table.currentRow()
        if not 0 <= row < len(self._sessions):
            show_error("Select the row of the dataset first.")
            return
        s = self._sessions[row]
        self.add_session(s.dataset, name=s.name)

    def _on_remove_clicked(self) -> None:
        row = self.table.currentRow()
        if not 0 <= row < len(self._sessions):
            show_error("Select the row to remove first.")
            return
        self.remove_session(row)

    def _on_reference_changed(self, index: int) -> None:
        if 0 <= index < len(self._sessions) and not self.set_reference(index):
            self._refresh_combos()

    def _on_source_changed(self, index: int) -> None:
        sources = self._source_candidates()
        if 0 <= index < len(sources):
            self._source = sources[index]
            self._refresh_source_details()

    def _on_method_changed(self, index: int | None = None) -> None:
        self.order_spin.setEnabled(self.method == "polynomial")

    def _on_anchor_changed(self, index: int) -> None:
        anchor = self.anchor_set is not None
        self.ca1pc_check.setEnabled(not anchor)
        self.source_channel_combo.setEnabled(not anchor)
        self.target_channel_combo.setEnabled(not anchor)

    def _on_estimate_clicked(self) -> None:
        self.estimate()

    def _on_import_clicked(self) -> None:
        preview = self.preview
        if preview is None:
            show_error("Nothing to import: estimate a transform first.")
            return
        label = self.label_edit.text().strip() or None
        overwrite = False
        if label is not None:
            try:
                exists = label in preview.target.dataset.ROIs
            except USER_ERRORS:
                exists = False
            if exists:
                answer = QMessageBox.question(
                    self,
                    "Replace ROI set?",
                    f"{preview.target.name} already has an ROI set {label!r}. Replace it?",
                )
                if answer != QMessageBox.StandardButton.Yes:
                    return
                overwrite = True
        self.import_preview(label, overwrite=overwrite)

    def _on_show_clicked(self) -> None:
        discard = False
        if self.align is not None and self.align.dirty:
            answer = QMessageBox.question(
                self,
                "Discard changes?",
                "The align view has unsaved ids, tags or deletions. Discard them?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
            discard = True
        self.show_aligned(discard=discard)

    def _on_register_clicked(self) -> None:
        self.register_ids()

    def _on_merge_clicked(self) -> None:
        self.merge_selected()

    def _on_unmerge_clicked(self) -> None:
        self.unmerge_selected()

    def _on_delete_clicked(self) -> None:
        self.delete_selected()

    def _on_propagate_clicked(self) -> None:
        self.propagate_tags()

    def _on_save_clicked(self) -> None:
        self.save_all()

    def _on_cancel_clicked(self) -> None:
        self.cancel()

    def _on_color_changed(self, index: int) -> None:
        if 0 <= index < len(COLOR_MODES):
            self.set_color_by(COLOR_MODES[index])

    def _on_ids_toggled(self, checked: bool) -> None:
        layer = self.align_layer
        if layer is not None:
            layer.text.visible = bool(checked)

    def _on_layers_inserted(self, event: Any) -> None:
        if self._closed:
            return
        try:
            self.add_viewer_datasets(notify=False)
        except RuntimeError:  # the Qt side of the widget is gone
            logger.debug("layer event after the Sessions widget was deleted", exc_info=True)

    def _on_layer_removed(self, event: Any) -> None:
        layer = unwrap(getattr(event, "value", None))
        if layer is not None and layer is self.preview_layer:
            self.preview_layer = None
        if layer is not None and layer is self.align_layer:
            self._detach_align_layer()
            if self.align is not None and self.align.dirty:
                # said after the event: not when the whole viewer is closing
                from qtpy.QtCore import QTimer

                QTimer.singleShot(0, self._warn_align_removed)
        with contextlib.suppress(RuntimeError):
            self._prune_viewer_sessions()
            self._update_controls()

    def _prune_viewer_sessions(self) -> None:
        """Remove the rows of datasets that came from the viewer and have left it.

        Kept: rows used by a running job (pruned when it ends) and rows of an align view
        with unsaved ids or tags.  Without this every dataset ever opened in the viewer
        would stay a row, its movie files open.
        """
        if self._closed or self.is_running or not self._viewer_sessions:
            return
        shown = {id(ds) for _, ds in datasets_in_layers(self._layers())}
        gone = [s for s in self._viewer_sessions if id(s.dataset) not in shown]
        if not gone:
            return
        align = self.align
        for session in gone:
            if (
                align is not None
                and align.dirty
                and any(a.dataset is session.dataset for a in align.sessions)
            ):
                continue
            self._viewer_sessions = [s for s in self._viewer_sessions if s is not session]
            index = next((k for k, s in enumerate(self._sessions) if s is session), None)
            if index is not None:
                self.remove_session(index)

    def _warn_align_removed(self) -> None:
        with contextlib.suppress(RuntimeError):  # the widget is gone with the viewer
            if self._closed or not self.isVisible() or self.align_layer is not None:
                return
            if self.align is not None and self.align.dirty:
                show_warning(
                    "The align layer was removed with unsaved ids or tags; they are kept in "
                    "the panel: Save all writes them, Show aligned shows them again."
                )

    def _on_align_data(self, event: Any) -> None:
        if self._quiet_depth:
            return
        action = str(getattr(event, "action", ""))
        if action == "removed":
            self._reconcile_removed()
        elif action in ("added", "changed") and not self._warned_edit:
            self._warned_edit = True
            show_warning(
                "The align view keeps ids, tags and deleted ROIs only; draw or edit outlines "
                "in the ROIs panel."
            )

    def _on_worker_yielded(self, progress: tuple[int, int]) -> None:
        done, total = (int(v) for v in progress)
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(min(done, max(1, total)))

    def _on_worker_finished(self, job: SessionJob) -> None:
        # the worker stopped: close the core generator (cancels it if it was quit)
        with contextlib.suppress(Exception):
            job.steps.close()
        if self._job is job:
            self._job_guard.release()
            self._worker = None
            self._job = None
        try:
            if not self._closed:
                self._finish(job)
                self._prune_viewer_sessions()  # rows whose datasets left while the job ran
        except RuntimeError:  # the Qt side of the widget is gone (closed with the viewer)
            logger.debug("%s finished after the widget was deleted", job.kind, exc_info=True)
        job.context = {}  # napari keeps ended workers (and a quit one's job): see JobGuard

    def _finish(self, job: SessionJob) -> None:
        self.progress_bar.setRange(0, 1)
        if job.error is not None:
            self.progress_bar.setValue(0)
            what = "The transform estimate" if job.kind == "estimate" else "The registration"
            text = f"{what} failed: {_message(job.error)}"
            self._set_status(text)
            if job.kind == "estimate":
                self.quality_label.setText(f"Failed: {_message(job.error)}")
            show_error(text)
            if not isinstance(job.error, USER_ERRORS):
                logger.error("%s failed", job.kind, exc_info=job.error)
        elif job.cancel_requested.is_set() or job.result is None:
            self.progress_bar.setValue(0)
            self._set_status("Cancelled; nothing was changed.")
            show_info("Cancelled; nothing was changed.")
        else:
            self.progress_bar.setValue(1)
            try:
                if job.kind == "estimate":
                    self._on_estimated(job)
                else:
                    self._on_registered(job)
            except Exception as err:  # a display problem must not lose the result silently
                show_error(f"Could not show the result: {_message(err)}")
                logger.warning("applying the %s result failed", job.kind, exc_info=True)
        self._update_controls()

    def _on_estimated(self, job: SessionJob) -> None:
        result: TransformedROIs = job.result
        source: Session = job.context["source"]
        target: Session = job.context["target"]
        self.preview = Preview(result, source, target)
        self._alignments.append(
            Alignment(
                source=source.dataset,
                target=target.dataset,
                estimates=list(result.estimates),
                method=result.method,
                anchor_label=result.anchor_label,
            )
        )
        self.quality_label.setText(estimate_report(result))
        from ..core.import_rois import default_target_label

        with contextlib.suppress(*USER_ERRORS):
            self.label_edit.setPlaceholderText(
                f"blank: {default_target_label(target.dataset, result.source_label)}"
            )
        self._show_preview()
        message = (
            f"Preview: {len(result.rois)} ROIs of {source.name} on {target.name}; Import "
            f"stores them."
        )
        self._set_status(message)
        self._refresh_table()

    def _on_registered(self, job: SessionJob) -> None:
        state: AlignState = job.context["state"]
        new_lists, summary = job.result
        if state is not self.align:
            show_warning("The align view changed during the registration; its result was dropped.")
            return
        self.last_summary = summary
        state.take_properties(new_lists, tags=False)
        self._update_align_features()
        self.set_color_by("id")
        self.set_show_ids(True)
        n_sessions = len(summary.n_rois)
        in_all = summary.cluster_sizes.get(n_sessions, 0)
        message = (
            f"Registered {sum(summary.n_rois)} ROIs of {n_sessions} sessions: "
            f"{summary.n_clusters} cells, {in_all} seen in every session "
            f"({summary.n_kept_ids} ids kept, {summary.n_new_ids} new). Save all writes the ids."
        )
        if summary.empty:
            message += f" {len(summary.empty)} ROI(s) outside the reference frame stay alone."
        self._set_status(message)
        show_info(message)

    def _on_mean_returned(self, ds: ImagingDataset, moments: Any) -> None:
        self._release_mean_worker(ds)
        if not self._closed:
            self._add_mean_layers(ds, moments)

    def _on_mean_errored(self, ds: ImagingDataset, err: Exception) -> None:
        self._release_mean_worker(ds)
        show_error(f"Computing the mean image failed: {_message(err)}")

    def _release_mean_worker(self, ds: ImagingDataset) -> None:
        worker = self._mean_workers.pop(id(ds), None)
        if worker is not None:  # napari keeps ended workers: let go of ds and the widget
            release_worker(worker, getattr(worker, "_napari_sima_slots", {}))

    # -- helpers: jobs ----------------------------------------------------------------------
    def _start(self, job: SessionJob, text: str, datasets: list[ImagingDataset]) -> Any:
        self._job = job
        self.progress_bar.setRange(0, 0)  # busy until the first progress report
        self.progress_bar.setValue(0)
        self._set_status(text)
        slots = {
            "yielded": self._on_worker_yielded,
            "finished": lambda: self._on_worker_finished(job),
        }
        self._worker = _job_steps(job, _connect=slots)
        self._job_guard.watch(
            datasets, job.cancel_requested.set, self._worker.quit, worker=self._worker, slots=slots
        )
        self._update_controls()
        return self._worker

    def _estimate_arguments(self) -> tuple[dict[str, Any], Session, Session]:
        """Return ``iter_transformed_ROIs`` keywords from the controls (raises on bad input)."""
        target, source = self._reference, self._source
        if target is None:
            raise ValueError("No reference session: add datasets first.")
        if source is None:
            raise ValueError("No source session: add a second dataset.")
        if source.dataset is target.dataset:
            raise ValueError(
                f"The source ({source.name}) and the reference ({target.name}) are the same "
                f"dataset; choose another source."
            )
        if source.roi_set is None:
            raise ValueError(f"{source.name} has no ROI set to carry over.")
        anchor = self.anchor_set
        kwargs: dict[str, Any] = {
            "method": self.method,
            "source_label": source.roi_set,
            "anchor_label": anchor,
            "source_channel": max(0, self.source_channel_combo.currentIndex()),
            "target_channel": max(0, self.target_channel_combo.currentIndex()),
            "pre_processing_method": (
                "ca1pc" if self.ca1pc_check.isChecked() and anchor is None else None
            ),
        }
        if self.method == "polynomial":
            kwargs["order"] = int(self.order_spin.value())
        return kwargs, target, source

    # -- helpers: align ---------------------------------------------------------------------
    def _build_align_state(self) -> AlignState:
        ref = self._reference
        assert ref is not None
        seen: dict[tuple[int, str | None], str] = {}
        sessions = list(self._sessions)
        for s in sessions:
            key = (id(s.dataset), s.roi_set)
            if s.roi_set is None:
                raise ValueError(f"{s.name} has no ROI set; remove its row or add ROIs to it.")
            if key in seen:
                raise ValueError(
                    f"{seen[key]} and {s.name} show the same ROI set {s.roi_set!r}; choose "
                    f"another set for one of them or remove a row."
                )
            seen[key] = s.name
        target_shape = frame_shape3(ref.dataset)
        originals: list[ROIList] = []
        display: list[ROIList] = []
        for s in sessions:
            sets = s.dataset.ROIs
            if s.roi_set not in sets:
                raise KeyError(f"{s.name} has no ROI set {s.roi_set!r} any more.")
            rois = sets[s.roi_set]
            alignment = None if s.dataset is ref.dataset else self.alignment_of(s)
            try:
                shown = map_rois(rois, alignment, frame_shape3(s.dataset), target_shape)
            except ValueError as err:
                raise ValueError(f"{s.name}: {err}") from None
            originals.append(rois)
            display.append(shown)
        return AlignState(
            sessions=sessions,
            reference=sessions.index(ref),
            originals=originals,
            display=display,
        )

    def _install_align(self, state: AlignState) -> None:
        self.align = state
        self.last_summary = None
        self._rebuild_align_layer()
        self._refresh_tags()
        ref = state.sessions[state.reference]
        self._show_mean(ref.dataset, ref.name)
        as_is = [
            s.name
            for s in state.sessions
            if s.dataset is not ref.dataset and self.alignment_of(s) is None
        ]
        n = sum(len(r) for r in state.display)
        message = f"Showing {n} ROIs of {len(state.sessions)} sessions in {ref.name}'s space."
        if as_is:
            message += f" Without an estimated transform (shown as they are): {', '.join(as_is)}."
        self._set_status(message)
        self._update_controls()

    def _rebuild_align_layer(self) -> None:
        state = self.align
        assert state is not None
        kwargs, messages = align_shapes(
            state.display, [s.name for s in state.sessions], self._color_by
        )
        for m in messages:
            show_warning(m)
        ref = state.sessions[state.reference]
        kwargs["metadata"][METADATA_KEY]["reference"] = ref.dataset
        visible_text = self.ids_check.isChecked()
        kwargs["text"]["visible"] = visible_text
        with self._quiet():
            old = self.align_layer
            index = None
            was_active = False
            if old is not None and old in self.viewer.layers:
                index = self.viewer.layers.index(old)
                was_active = self.viewer.layers.selection.active is old
                self._detach_align_layer()
                self.viewer.layers.remove(old)
            else:
                self._detach_align_layer()
            layer = unwrap(
                self.viewer.add_shapes(**kwargs, name=ALIGN_LAYER_NAME, edge_width=EDGE_WIDTH)
            )
            layer.current_face_color = "transparent"
            if index is not None:
                self.viewer.layers.move(self.viewer.layers.index(layer), index)
            if was_active or index is None:
                self.viewer.layers.selection.active = layer
            self._attach_align_layer(layer)
        self._count_shapes()
        self._recolor()
        self._update_summary()

    def _attach_align_layer(self, layer: Shapes) -> None:
        self.align_layer = layer
        layer.events.data.connect(self._on_align_data)
        layer.selected_data.events.items_changed.connect(self._on_align_selection)

    def _detach_align_layer(self) -> None:
        layer = self.align_layer
        if layer is None:
            return
        with contextlib.suppress(Exception):
            layer.events.data.disconnect(self._on_align_data)
        with contextlib.suppress(Exception):
            layer.selected_data.events.items_changed.disconnect(self._on_align_selection)
        self.align_layer = None

    def _on_align_selection(self, event: Any = None) -> None:
        with contextlib.suppress(RuntimeError):
            self._update_summary()
            self._update_controls()

    def _apply_curation(self, new_lists: list[ROIList]) -> None:
        """Take ids and tags from ``new_lists`` (same shape as the originals)."""
        state = self.align
        assert state is not None
        state.take_properties(new_lists)
        self._update_align_features()
        self._refresh_tags()

    def _update_align_features(self) -> None:
        """Refresh the id / tag columns of the align layer from the model (shapes kept)."""
        layer, state = self.align_layer, self.align
        if layer is None or state is None or layer.nshapes == 0:
            self._update_summary()
            return
        from .._roi_convert import FLAG_TAGS

        df = layer.features.copy()
        ids, texts, tags, acc, rej = [], [], [], [], []
        for ref in self._row_refs():
            if ref is None:
                ids.append(None)
                texts.append("")
                tags.append("")
                acc.append(False)
                rej.append(False)
                continue
            roi = state.display[ref[0]][ref[1]]
            ids.append(roi.id)
            texts.append("" if roi.id is None else str(roi.id))
            tags.append(",".join(sorted(t for t in roi.tags if t not in FLAG_TAGS)))
            acc.append("accepted" in roi.tags)
            rej.append("rejected" in roi.tags)
        df["id"] = np.array(ids, dtype=object)
        df["id_text"] = np.array(texts, dtype=object)
        df["tags"] = np.array(tags, dtype=object)
        df["accepted"] = np.asarray(acc, dtype=bool)
        df["rejected"] = np.asarray(rej, dtype=bool)
        selected = set(layer.selected_data)
        with self._quiet():
            layer.features = df
            layer.refresh_text()
            layer.selected_data = selected
        self._recolor()
        self._update_summary()

    def _delete_refs(self, refs: list[tuple[int, int]]) -> None:
        """Delete ROIs from the model and their shapes from the layer (others renumbered)."""
        import pandas as pd

        state = self.align
        assert state is not None
        renumber = state.delete(refs)
        layer = self.align_layer
        if layer is not None:
            gone = set(refs)
            with self._quiet():
                rows = {i for i, ref in enumerate(self._row_refs()) if ref in gone}
                if rows:
                    layer.selected_data = rows
                    layer.remove_selected()
                df = layer.features.copy()
                renumbered = []
                for ref in self._row_refs():
                    if ref is None:
                        renumbered.append(pd.NA)
                        continue
                    renumbered.append(renumber(*ref))
                df["index"] = pd.array(renumbered, dtype="Int64")
                layer.features = df
            self._count_shapes()
        self._refresh_tags()
        self._update_summary()
        self._update_controls()

    def _row_refs(self) -> list[tuple[int, int] | None]:
        """``(session, ROI index)`` of every row of the align layer (None: drawn by the user)."""
        layer = self.align_layer
        if layer is None:
            return []
        df = layer.features
        out: list[tuple[int, int] | None] = []
        for s, k in zip(df["session"].tolist(), df["index"].tolist(), strict=True):
            out.append(None if _na(s) or _na(k) else (int(s), int(k)))
        return out

    def _count_shapes(self) -> None:
        self._shape_counts = {}
        for ref in self._row_refs():
            if ref is not None:
                self._shape_counts[ref] = self._shape_counts.get(ref, 0) + 1

    def _reconcile_removed(self) -> None:
        """Shapes were deleted in napari: delete their ROIs (all of each ROI's shapes)."""
        if self.align_layer is None or self.align is None:
            return
        counts: dict[tuple[int, int], int] = {}
        for ref in self._row_refs():
            if ref is not None:
                counts[ref] = counts.get(ref, 0) + 1
        gone = [ref for ref, n in self._shape_counts.items() if counts.get(ref, 0) < n]
        if gone:
            self._delete_refs(sorted(gone))
            self._set_status(f"Deleted {len(gone)} ROI(s); Save all writes the change.")

    def _need_selection(self, minimum: int, what: str) -> list[tuple[int, int]] | None:
        if self.align is None or self.align_layer is None:
            show_error("Show the aligned sessions first.")
            return None
        if self.is_running:
            show_warning("Wait for the running job to finish (or cancel it) first.")
            return None
        refs = self.selected_refs()
        if len(refs) < minimum:
            show_error(
                f"Select at least {minimum} ROI{'s' if minimum > 1 else ''} in the "
                f"'{ALIGN_LAYER_NAME}' layer to {what}."
            )
            return None
        return refs

    def _recolor(self) -> None:
        layer = self.align_layer
        if layer is None or layer.nshapes == 0:
            return
        colors = align_colors(layer.features, self._color_by)
        with self._quiet():
            layer.edge_color = colors

    def _update_summary(self) -> None:
        state = self.align
        if state is None:
            self.summary_label.setText("")
            return
        from ..core.registration import id_conflicts, id_groups

        groups = id_groups(state.originals)
        shared = sum(1 for m in groups.values() if len({s for s, _ in m}) > 1)
        parts = [
            f"{len(state.sessions)} sessions, {sum(len(r) for r in state.originals)} ROIs, "
            f"{shared} ids shared across sessions"
        ]
        conflicts = id_conflicts(state.originals)
        if conflicts:
            parts.append(f"{len(conflicts)} id(s) held twice in one session")
        refs = self.selected_refs()
        if refs:
            described = []
            for s, k in refs[:6]:
                roi = state.originals[s][k]
                described.append(
                    f"{state.sessions[s].name} #{k} (id {roi.id or '–'}"
                    + (f", tags {','.join(sorted(roi.tags))}" if roi.tags else "")
                    + ")"
                )
            more = f" and {len(refs) - 6} more" if len(refs) > 6 else ""
            parts.append("selected: " + "; ".join(described) + more)
        if state.dirty:
            parts.append("unsaved changes")
        self.summary_label.setText(". ".join(parts) + ".")

    def _refresh_tags(self) -> None:
        checked = set(self.checked_tags())
        tags = all_tags(self.align.originals) if self.align is not None else []
        with blocked(self.tags_list):
            self.tags_list.clear()
            for t in tags:
                item = QListWidgetItem(t, self.tags_list)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(
                    Qt.CheckState.Checked if t in checked else Qt.CheckState.Unchecked
                )

    # -- helpers: preview and images --------------------------------------------------------
    def _show_preview(self) -> None:
        preview = self.preview
        assert preview is not None
        from .._roi_convert import rois_to_shapes

        kwargs = rois_to_shapes(preview.result.rois, ndim=3, colors=PREVIEW_COLOR)
        meta = kwargs["metadata"][METADATA_KEY]
        meta.update(
            dataset=preview.target.dataset,
            base_name=preview.target.name,
            source=preview.target.dataset.savedir,
            preview_of=preview.source.name,
        )
        if not kwargs["data"]:
            kwargs.pop("edge_color", None)
            kwargs.pop("face_color", None)
        name = (
            f"{PREVIEW_PREFIX}{preview.result.source_label} "
            f"({preview.source.name} → {preview.target.name})"
        )
        with self._quiet():
            layer = unwrap(self.viewer.add_shapes(**kwargs, name=name, edge_width=EDGE_WIDTH))
            layer.current_face_color = "transparent"
        self.preview_layer = layer
        self._show_mean(preview.target.dataset, preview.target.name)

    def _clear_preview(self) -> None:
        self.preview = None
        layer = self.preview_layer
        self.preview_layer = None
        if layer is not None and layer in self.viewer.layers:
            with self._quiet():
                self.viewer.layers.remove(layer)
        with contextlib.suppress(RuntimeError):
            self.quality_label.setText("")

    def _show_mean(self, ds: ImagingDataset, name: str) -> list[Layer]:
        """Show a dataset's mean image under our layers (computed if needed)."""
        existing = self._mean_layers(ds)
        if existing:
            for layer in existing:
                layer.visible = True
            self._keep_on_top()
            return existing
        try:
            if ds.num_frames > MAIN_THREAD_MAX_FRAMES:
                if id(ds) not in self._mean_workers:
                    slots = {
                        "returned": lambda m, ds=ds: self._on_mean_returned(ds, m),
                        "errored": lambda e, ds=ds: self._on_mean_errored(ds, e),
                        # a quit worker (dock closed, layers removed) ends without either
                        "finished": lambda ds=ds: self._release_mean_worker(ds),
                    }
                    worker = _projection_steps(ds, _connect=slots)
                    worker._napari_sima_slots = slots  # released when it ends
                    self._mean_workers[id(ds)] = worker
                return []
            moments = ds.compute_projections()
        except USER_ERRORS as err:
            show_error(f"Cannot compute the mean image of {name}: {_message(err)}")
            return []
        return self._add_mean_layers(ds, moments, name)

    def _add_mean_layers(
        self, ds: ImagingDataset, moments: Any, name: str | None = None
    ) -> list[Layer]:
        existing = self._mean_layers(ds)
        if existing:
            return existing
        name = name or self._name_of(ds)
        added = []
        with self._quiet():
            for data, kwargs, layer_type in projection_layer_data(
                moments, ds, name, kinds=["mean"], source=ds.savedir
            ):
                added.append(getattr(self.viewer, f"add_{layer_type}")(data, **kwargs))
        self._keep_on_top()
        return added

    def _keep_on_top(self) -> None:
        """Move the preview and align layers above everything else."""
        with self._quiet():
            for layer in (self.preview_layer, self.align_layer):
                if layer is not None and layer in self.viewer.layers:
                    i = self.viewer.layers.index(layer)
                    self.viewer.layers.move(i, len(self.viewer.layers))
            active = self.align_layer or self.preview_layer
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active

    def _mean_layers(self, ds: ImagingDataset) -> list[Layer]:
        out = []
        for layer in self.viewer.layers:
            meta = sima_metadata(layer)
            if (
                meta is not None
                and unwrap(meta.get("dataset")) is ds
                and meta.get("kind") == "mean"
            ):
                out.append(layer)
        return out

    # -- helpers: widgets -------------------------------------------------------------------
    def _refresh_all(self) -> None:
        self._refresh_table()
        self._refresh_combos()
        self._update_controls()

    def _refresh_table(self) -> None:
        from qtpy.QtGui import QColor

        table = self.table
        with blocked(table):
            table.setRowCount(len(self._sessions))
            for row, s in enumerate(self._sessions):
                name_item = QTableWidgetItem(f"{s.name} ★" if s is self._reference else s.name)
                name_item.setForeground(QColor.fromRgbF(*session_color(row)))
                tip = str(s.dataset.savedir or "in memory")
                name_item.setToolTip(tip + (" (reference)" if s is self._reference else ""))
                table.setItem(row, 0, name_item)
                try:
                    labels = roi_set_labels(s.dataset)
                    sets = s.dataset.ROIs
                except USER_ERRORS:
                    labels, sets = [], {}
                if s.roi_set not in labels:
                    s.roi_set = labels[0] if labels else None
                combo = table.cellWidget(row, 1)
                if not isinstance(combo, _SetCombo) or combo.session is not s:
                    combo = _SetCombo(s, self._on_row_set_changed, self._refresh_table, table)
                    combo.setObjectName(f"roi_set_combo_{row}")
                    table.setCellWidget(row, 1, combo)
                combo.set_labels(labels, s.roi_set)
                n = len(sets[s.roi_set]) if s.roi_set in sets else 0
                table.setItem(row, 2, QTableWidgetItem(str(n)))
                table.setItem(row, 3, QTableWidgetItem(self._alignment_text(s)))
        # as tall as its rows (2 to 6 shown; more scroll)
        rows = min(max(len(self._sessions), 2), 6)
        height = table.horizontalHeader().height() + 2 * table.frameWidth()
        height += rows * table.verticalHeader().defaultSectionSize()
        table.setFixedHeight(height)

    def _on_row_set_changed(self, session: Session, text: str) -> None:
        if session in self._sessions and text:
            self.set_roi_set(self._sessions.index(session), text)

    def _alignment_text(self, s: Session) -> str:
        ref = self._reference
        if ref is None:
            return ""
        if s.dataset is ref.dataset:
            return "reference" if s is ref else "reference dataset"
        a = self.alignment_of(s)
        if a is not None:
            return a.describe()
        if frame_shape3(s.dataset) == frame_shape3(ref.dataset):
            return "as is (not estimated)"
        return "estimate first"

    def _refresh_combos(self) -> None:
        with blocked(self.reference_combo):
            self.reference_combo.clear()
            for s in self._sessions:
                self.reference_combo.addItem(s.name)
            ref = self._reference
            self.reference_combo.setCurrentIndex(
                self._sessions.index(ref) if ref in self._sessions else -1
            )
        candidates = self._source_candidates()
        if self._source not in candidates:
            self._source = candidates[0] if candidates else None
        with blocked(self.source_combo):
            self.source_combo.clear()
            for s in candidates:
                self.source_combo.addItem(f"{s.name} — {s.roi_set or 'no ROI set'}")
            self.source_combo.setCurrentIndex(
                candidates.index(self._source) if self._source in candidates else -1
            )
        self._refresh_source_details()

    def _refresh_source_details(self) -> None:
        self._refresh_anchor_sets()
        for combo, session in (
            (self.source_channel_combo, self._source),
            (self.target_channel_combo, self._reference),
        ):
            names = list(session.dataset.channel_names) if session is not None else []
            current = combo.currentText()
            with blocked(combo):
                combo.clear()
                combo.addItems(names)
                combo.setCurrentIndex(
                    names.index(current) if current in names else (0 if names else -1)
                )
        self._update_controls()

    def _refresh_anchor_sets(self) -> None:
        current = self.anchor_set
        labels: list[str] = []
        src, ref = self._source, self._reference
        if src is not None and ref is not None:
            try:
                in_ref = set(ref.dataset.ROIs)
                labels = [x for x in roi_set_labels(src.dataset) if x in in_ref]
            except USER_ERRORS:
                labels = []
        with blocked(self.anchor_combo):
            self.anchor_combo.clear()
            self.anchor_combo.addItem(NO_ANCHOR)
            self.anchor_combo.addItems(labels)
            self.anchor_combo.setCurrentIndex(labels.index(current) + 1 if current in labels else 0)
        self._on_anchor_changed(self.anchor_combo.currentIndex())

    def _source_candidates(self) -> list[Session]:
        ref = self._reference
        return [s for s in self._sessions if ref is None or s.dataset is not ref.dataset]

    def _update_controls(self) -> None:
        running = self.is_running
        has_pair = self._reference is not None and self._source is not None
        for w in (
            self.add_viewer_button,
            self.open_button,
            self.remove_button,
            self.add_set_button,
            self.reference_combo,
            self.source_combo,
            self.method_combo,
            self.anchor_combo,
            self.table,
        ):
            w.setEnabled(not running)
        self.estimate_button.setEnabled(not running and has_pair)
        self.import_button.setEnabled(not running and self.preview is not None)
        self.show_button.setEnabled(not running and bool(self._sessions))
        shown = self.align is not None and self.align_layer is not None
        self.register_button.setEnabled(not running and len(self._sessions) >= 2)
        n_sel = len(self.selected_refs()) if shown else 0
        self.merge_button.setEnabled(not running and n_sel >= 2)
        self.unmerge_button.setEnabled(not running and n_sel >= 1)
        self.delete_button.setEnabled(not running and n_sel >= 1)
        self.propagate_button.setEnabled(not running and self.align is not None)
        self.save_button.setEnabled(not running and self.align is not None)
        self.cancel_button.setEnabled(
            running and self._job is not None and not self._job.cancel_requested.is_set()
        )

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _session_arg(self, session: int | Session) -> Session | None:
        if isinstance(session, Session):
            if session in self._sessions:
                return session
            show_error(f"{session.name} is not a session of this panel.")
            return None
        try:
            return self._sessions[int(session)]
        except (IndexError, TypeError, ValueError):
            show_error(f"There is no session row {session!r}.")
            return None

    def _layers(self) -> list[Any]:
        return [unwrap(layer) for layer in self.viewer.layers]

    def _name_of(self, ds: ImagingDataset) -> str:
        for name, found in datasets_in_layers(self._layers()):
            if found is ds:
                return name
        if ds.savedir:
            return source_name(ds.savedir)
        return f"session {len(self._sessions)}"

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._worker is not None and self._job is not None:
            self._job.cancel_requested.set()
            with contextlib.suppress(Exception):
                self._worker.quit()
        for worker in list(self._mean_workers.values()):
            with contextlib.suppress(Exception):
                worker.quit()
        self._detach_align_layer()
        with contextlib.suppress(Exception):
            self.viewer.layers.events.inserted.disconnect(self._on_layers_inserted)
        with contextlib.suppress(Exception):
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)


class _PopupCombo(QComboBox):
    """A combo box that rebuilds its items just before showing its list."""

    def __init__(self, refresh: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._refresh = refresh

    def showPopup(self) -> None:  # noqa: N802 - Qt's name
        self._refresh()
        super().showPopup()


class _SetCombo(_PopupCombo):
    """The ROI-set box of one session row; calls back with the session on a change.

    Its items are rebuilt before its list opens (sets saved meanwhile by other panels
    appear).
    """

    def __init__(
        self, session: Session, callback: Any, refresh: Any, parent: QWidget | None = None
    ) -> None:
        super().__init__(refresh, parent)
        self.session = session
        self._callback = callback
        self.currentTextChanged.connect(self._on_changed)

    def set_labels(self, labels: list[str], current: str | None) -> None:
        with blocked(self):
            self.clear()
            self.addItems(labels)
            self.setCurrentIndex(labels.index(current) if current in labels else -1)

    def _on_changed(self, text: str) -> None:
        if text and text != self.session.roi_set:
            self._callback(self.session, text)


def _na(value: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


__all__ = ["AlignState", "Preview", "SessionJob", "SessionsWidget"]
