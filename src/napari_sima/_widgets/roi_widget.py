"""The ROIs dock widget: ROI Buddy's ROI manager in napari.

The widget shows one ROI set of one dataset as a napari Shapes layer (named
``'ROIs: <set>'``) over the dataset's mean image, and edits it with napari's own
drawing tools plus ROI Buddy's operations: labels, tags, accept / reject, merge,
unmerge, tag filters, ImageJ import / export.  The Shapes layer's ``features`` table
is the curation store (see :mod:`napari_sima._roi_convert`); :meth:`save_set` turns
the layer back into ROIs and stores them in the dataset.

Every action is a public method (``set_dataset``, ``show_set``, ``new_set``,
``rename_set``, ``delete_set``, ``save_set``, ``import_imagej``, ``export_imagej``,
``set_draw_mode``, ``delete_selected``, ``set_label``, ``add_tags``, ``remove_tags``,
``clear_tags``, ``mark_selected``, ``merge_selected``, ``unmerge_selected``,
``set_tag_filter``, ``autosave``, ``restore_recovery``) so scripts and tests can
drive it without dialogs.  Errors from the core reach the user as notifications.

Unsaved changes are never dropped silently: when the set is switched, the dataset
changed, the layer removed, the panel or the viewer closed while there are unsaved
edits, they are written to a *recovery set* ``'<set>~recovery-<timestamp>'`` in the
dataset (or, for a read-only or in-memory dataset, to a store folder under
:func:`recovery_dir`) and a notification names it; :meth:`restore_recovery` brings it
back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._layers import METADATA_KEY, projection_layer_data, sima_metadata, source_name, unwrap
from .._roi_convert import (
    FEATURE_COLUMNS,
    FLAG_TAGS,
    ROI_PALETTE,
    feature_defaults,
    rois_to_shapes,
    shapes_to_rois,
)
from ..core.roi import ROIList
from ..core.roi_ops import (
    ACCEPTED,
    REJECTED,
    merge_rois,
    parse_tag_filter,
    parse_tags,
    tags_match,
    unmerge_roi,
)
from ._common import (
    blocked,
    datasets_in_layers,
    fill_dataset_combo,
    make_button,
    release_worker,
)

if TYPE_CHECKING:
    from napari.layers import Layer, Shapes

    from ..core import ImagingDataset
    from ..core.projections import Moments

#: Errors from the core that are the user's to fix (shown as notifications).
USER_ERRORS = (ValueError, OSError, KeyError, TypeError)

#: Key bound on the ROIs layer: mark the selected ROIs accepted.
KEY_ACCEPT = "y"
#: Key bound on the ROIs layer: mark the selected ROIs rejected.
KEY_REJECT = "n"
#: Key bound on the ROIs layer: clear the accepted / rejected status.
KEY_CLEAR = "u"

#: Help text for the keys (napari's own Shapes keys plus ours).
KEY_HELP = (
    "Keys on the ROIs layer: y = accept, n = reject, u = clear status of the selected "
    "ROIs.  napari's Shapes keys also work: p polygon, Shift+P lasso, e ellipse, "
    "r rectangle, s select, d edit vertices, z pan/zoom, a select all, "
    "Delete / Backspace delete, Enter / Esc finish drawing."
)

#: Marker in the label of a recovery set: ``'<set>~recovery-<timestamp>'``.
RECOVERY_MARK = "~recovery-"

#: Datasets with more frames get their mean image computed in a worker thread.
MAIN_THREAD_MAX_FRAMES = 2000

#: Drawing / editing tools: button key -> napari Shapes mode.
DRAW_MODES = {
    "polygon": "add_polygon",
    "lasso": "add_polygon_lasso",
    "ellipse": "add_ellipse",
    "rectangle": "add_rectangle",
    "select": "select",
    "direct": "direct",
    "pan_zoom": "pan_zoom",
}

#: Edge colours (RGBA) by curation status.
STATUS_COLORS = {
    ACCEPTED: (0.20, 0.90, 0.25, 1.0),
    REJECTED: (1.00, 0.25, 0.25, 1.0),
    None: (1.00, 0.85, 0.10, 1.0),
}

#: Ways to colour the ROIs: by curation status, or one palette colour per ROI.
COLOR_MODES = ("status", "roi")

#: Edge width of the ROI outlines, in pixels of the image.
EDGE_WIDTH = 0.6

#: Rows shown at most in the table of selected ROIs.
TABLE_MAX_ROWS = 500

_ROI_FILTER = "ImageJ ROI sets (*.zip *.roi);;All files (*)"


# ---------------------------------------------------------------------------------------
# Recovery sets
# ---------------------------------------------------------------------------------------
def recovery_dir() -> Path:
    """Folder for recovery sets of datasets that cannot store them themselves.

    Returns
    -------
    Path
        ``$NAPARI_SIMA_RECOVERY_DIR`` when set, else ``<user data dir>/recovery``
        (:func:`platformdirs.user_data_path`, e.g.
        ``~/.local/share/napari-sima/recovery`` on Linux).
    """
    env = os.environ.get("NAPARI_SIMA_RECOVERY_DIR")
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_data_path("napari-sima", appauthor=False) / "recovery"


def is_recovery_label(label: str) -> bool:
    """Whether an ROI set label names a recovery set."""
    return RECOVERY_MARK in str(label)


def recovered_set_name(label: str) -> str:
    """Return the set a recovery set was saved from (``'a~recovery-...'`` -> ``'a'``)."""
    return str(label).split(RECOVERY_MARK, 1)[0]


def _timestamp() -> str:
    from ..core.roi_store import now_timestamp

    return now_timestamp()


@thread_worker
def _projection_steps(dataset: ImagingDataset) -> Generator[tuple[int, int], None, Moments]:
    """Compute the dataset's projections in a worker thread (progress yielded)."""
    moments = yield from dataset.iter_projections()
    return moments


class ROIManagerWidget(QWidget):
    """Show, draw, curate and save the ROI sets of a dataset (ROI Buddy in napari).

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
        The dataset whose ROI sets are shown.
    current_set : str or None
        Label of the set shown in :attr:`layer`.
    layer : napari.layers.Shapes or None
        The Shapes layer showing the set.

    Notes
    -----
    Keys bound on the ROIs layer (free in napari's Shapes key map): ``y`` accept,
    ``n`` reject, ``u`` clear the status of the selected ROIs.  A ROI is the group of
    shapes sharing the ``roi`` feature; edits to a selected shape apply to its whole
    ROI.  Shapes drawn by the user become new ROIs.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.dataset: ImagingDataset | None = None
        self.dataset_name = ""
        self.current_set: str | None = None
        self.layer: Shapes | None = None
        self._dirty = False
        self._quiet_depth = 0
        self._tag_filter: tuple[list[str], list[str]] = ([], [])
        self._color_by = "status"
        self._restored_from: tuple[str, str] | None = None
        self._mean_worker: Any = None
        self._datasets: list[tuple[str, ImagingDataset]] = []
        self._set_timestamps: dict[str, str] = {}
        self._closed = False
        self._parented = False
        self._selection_guard = False

        self.setObjectName("napari_sima_roi_widget")
        self.setToolTip(KEY_HELP)
        # the controls scroll, so the dock fits next to others on small screens
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
        layout.addWidget(self._create_set_group())
        layout.addWidget(self._create_draw_group())
        layout.addWidget(self._create_curation_group())
        layout.addWidget(self._create_view_group())
        layout.addWidget(self._create_table())
        self.summary_label = QLabel("", self)
        self.summary_label.setObjectName("summary_label")
        self.summary_label.setWordWrap(True)
        layout.addWidget(self.summary_label)
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._on_layers_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.refresh_datasets()
        self._adopt_initial_dataset()
        self._update_controls()

    # -- construction ---------------------------------------------------------------------
    def _create_set_group(self) -> QGroupBox:
        box = QGroupBox("ROI set", self)
        box.setObjectName("set_group")
        grid = QGridLayout(box)
        self.dataset_combo = QComboBox(box)
        self.dataset_combo.setObjectName("dataset_combo")
        self.dataset_combo.setToolTip("Datasets of the layers in the viewer")
        self.dataset_combo.currentIndexChanged.connect(self._on_dataset_combo_changed)
        self.set_combo = QComboBox(box)
        self.set_combo.setObjectName("set_combo")
        self.set_combo.setToolTip("ROI sets stored with the dataset (newest first)")
        self.set_combo.currentIndexChanged.connect(self._on_set_combo_changed)
        self.save_button = self._button("Save", "save_button", self._on_save_clicked, box)
        self.save_button.setToolTip("Store the layer's ROIs in the dataset under this set's name")
        grid.addWidget(QLabel("Dataset", box), 0, 0)
        grid.addWidget(self.dataset_combo, 0, 1, 1, 3)
        grid.addWidget(QLabel("Set", box), 1, 0)
        grid.addWidget(self.set_combo, 1, 1, 1, 2)
        grid.addWidget(self.save_button, 1, 3)
        self.new_set_button = self._button("New…", "new_set_button", self._on_new_set_clicked, box)
        self.rename_set_button = self._button(
            "Rename…", "rename_set_button", self._on_rename_set_clicked, box
        )
        self.delete_set_button = self._button(
            "Delete…", "delete_set_button", self._on_delete_set_clicked, box
        )
        self.restore_button = self._button(
            "Restore…", "restore_button", self._on_restore_clicked, box
        )
        self.restore_button.setToolTip("Bring back unsaved changes kept in a recovery set")
        for col, b in enumerate(
            (
                self.new_set_button,
                self.rename_set_button,
                self.delete_set_button,
                self.restore_button,
            )
        ):
            grid.addWidget(b, 2, col)
        self.import_button = self._button(
            "Import ImageJ…", "import_button", self._on_import_clicked, box
        )
        self.import_button.setToolTip("Add the ROIs of an ImageJ RoiSet .zip (or .roi) to this set")
        self.export_button = self._button(
            "Export ImageJ…", "export_button", self._on_export_clicked, box
        )
        self.export_button.setToolTip("Write this set's ROIs to an ImageJ RoiSet .zip")
        grid.addWidget(self.import_button, 3, 0, 1, 2)
        grid.addWidget(self.export_button, 3, 2, 1, 2)
        return box

    def _create_draw_group(self) -> QGroupBox:
        box = QGroupBox("Draw and edit", self)
        box.setObjectName("draw_group")
        grid = QGridLayout(box)
        specs = [
            ("polygon", "Polygon", "Draw polygons: click the vertices, Enter or Esc to finish (p)"),
            ("lasso", "Lasso", "Draw freehand outlines (Shift+P)"),
            ("ellipse", "Ellipse", "Draw ellipses (e)"),
            ("rectangle", "Rectangle", "Draw rectangles (r)"),
            ("select", "Select", "Select, move and resize shapes (s)"),
            ("direct", "Vertices", "Move individual vertices (d)"),
            ("pan_zoom", "Pan/zoom", "Pan and zoom (z)"),
        ]
        self.mode_buttons: dict[str, QPushButton] = {}
        for k, (mode, text, tip) in enumerate(specs):
            b = self._button(text, f"{mode}_mode_button", self._on_mode_clicked, box)
            b.setProperty("shapes_mode", mode)
            b.setToolTip(tip)
            self.mode_buttons[mode] = b
            grid.addWidget(b, k // 4, k % 4)
        self.delete_button = self._button("Delete", "delete_button", self._on_delete_clicked, box)
        self.delete_button.setToolTip("Delete the selected shapes (Delete)")
        grid.addWidget(self.delete_button, 1, 3)
        self.merge_button = self._button("Merge", "merge_button", self._on_merge_clicked, box)
        self.merge_button.setToolTip(
            "Merge the selected ROIs into one: touching outlines become one polygon "
            "(their union), the others stay separate polygons of the same ROI"
        )
        self.unmerge_button = self._button(
            "Unmerge", "unmerge_button", self._on_unmerge_clicked, box
        )
        self.unmerge_button.setToolTip(
            "Split the selected ROIs into one ROI per polygon (ids cleared, unique labels)"
        )
        grid.addWidget(self.merge_button, 2, 0, 1, 2)
        grid.addWidget(self.unmerge_button, 2, 2, 1, 2)
        return box

    def _create_curation_group(self) -> QGroupBox:
        box = QGroupBox("Label, tags and curation (selected ROIs)", self)
        box.setObjectName("curation_group")
        grid = QGridLayout(box)
        self.label_edit = QLineEdit(box)
        self.label_edit.setObjectName("label_edit")
        self.label_edit.setPlaceholderText("label, e.g. cell-12")
        self.label_edit.returnPressed.connect(self._on_set_label_clicked)
        self.set_label_button = self._button(
            "Set label", "set_label_button", self._on_set_label_clicked, box
        )
        grid.addWidget(self.label_edit, 0, 0, 1, 3)
        grid.addWidget(self.set_label_button, 0, 3)
        self.tags_edit = QLineEdit(box)
        self.tags_edit.setObjectName("tags_edit")
        self.tags_edit.setPlaceholderText("comma-separated tags, e.g. interneuron, PV")
        self.tags_edit.returnPressed.connect(self._on_add_tags_clicked)
        grid.addWidget(self.tags_edit, 1, 0, 1, 4)
        self.add_tags_button = self._button(
            "Add tags", "add_tags_button", self._on_add_tags_clicked, box
        )
        self.remove_tags_button = self._button(
            "Remove tags", "remove_tags_button", self._on_remove_tags_clicked, box
        )
        self.clear_tags_button = self._button(
            "Clear tags", "clear_tags_button", self._on_clear_tags_clicked, box
        )
        self.clear_tags_button.setToolTip("Remove all tags except the accepted / rejected status")
        grid.addWidget(self.add_tags_button, 2, 0)
        grid.addWidget(self.remove_tags_button, 2, 1)
        grid.addWidget(self.clear_tags_button, 2, 2, 1, 2)
        self.accept_button = self._button(
            f"Accept ({KEY_ACCEPT})", "accept_button", self._on_accept_clicked, box
        )
        self.reject_button = self._button(
            f"Reject ({KEY_REJECT})", "reject_button", self._on_reject_clicked, box
        )
        self.clear_status_button = self._button(
            f"Undecided ({KEY_CLEAR})", "clear_status_button", self._on_clear_status_clicked, box
        )
        for b in (self.accept_button, self.reject_button, self.clear_status_button):
            b.setToolTip(KEY_HELP)
        grid.addWidget(self.accept_button, 3, 0)
        grid.addWidget(self.reject_button, 3, 1)
        grid.addWidget(self.clear_status_button, 3, 2, 1, 2)
        return box

    def _create_view_group(self) -> QGroupBox:
        box = QGroupBox("View", self)
        box.setObjectName("view_group")
        row = QHBoxLayout(box)
        self.filter_edit = QLineEdit(box)
        self.filter_edit.setObjectName("filter_edit")
        self.filter_edit.setPlaceholderText("show tags, e.g. PV, -rejected")
        self.filter_edit.setToolTip(
            "Show only ROIs with all these tags; '-tag' hides ROIs with that tag; "
            "'accepted' / 'rejected' count as tags.  Empty shows everything."
        )
        self.filter_edit.returnPressed.connect(self._on_filter_clicked)
        self.filter_button = self._button("Filter", "filter_button", self._on_filter_clicked, box)
        self.color_combo = QComboBox(box)
        self.color_combo.setObjectName("color_combo")
        self.color_combo.addItems(["colour: status", "colour: ROI"])
        self.color_combo.setToolTip(
            "Outline colours: by status (green accepted, red rejected, yellow undecided) "
            "or one colour per ROI"
        )
        self.color_combo.currentIndexChanged.connect(self._on_color_combo_changed)
        row.addWidget(self.filter_edit, 1)
        row.addWidget(self.filter_button)
        row.addWidget(self.color_combo)
        return box

    def _create_table(self) -> QTableWidget:
        self.table = QTableWidget(0, 5, self)
        self.table.setObjectName("selection_table")
        self.table.setHorizontalHeaderLabels(["ROI", "label", "tags", "status", "shapes"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setMaximumHeight(130)
        self.table.setToolTip("The selected ROIs")
        return self.table

    def _button(self, text: str, object_name: str, slot: Any, parent: QWidget) -> QPushButton:
        return make_button(text, object_name, slot, parent)

    # -- state ----------------------------------------------------------------------------
    @property
    def is_dirty(self) -> bool:
        """Whether the layer holds changes not saved to the dataset (nor a recovery set)."""
        return self._dirty

    @property
    def shown(self) -> np.ndarray:
        """Per-shape visibility under the tag filter (bool array, one per shape).

        napari 0.9's Shapes layer has no per-shape ``shown`` attribute (Points has);
        hidden shapes are drawn fully transparent and cannot be selected.
        """
        layer = self.layer
        if layer is None:
            return np.zeros(0, dtype=bool)
        n = layer.nshapes
        need, avoid = self._tag_filter
        if not need and not avoid:
            return np.ones(n, dtype=bool)
        df = layer.features
        out = np.ones(n, dtype=bool)
        _, missing = _roi_values(df)
        for i, tags in enumerate(_tag_sets(df)[:n]):
            if not missing[i]:  # freshly drawn shapes stay visible
                out[i] = tags_match(tags, need, avoid)
        return out

    @property
    def tag_filter(self) -> tuple[list[str], list[str]]:
        """``(tags, neg_tags)`` of the current view filter."""
        return list(self._tag_filter[0]), list(self._tag_filter[1])

    def datasets(self) -> list[tuple[str, ImagingDataset]]:
        """Return ``(name, dataset)`` of the datasets offered in the dataset box."""
        return list(self._datasets)

    def set_labels(self) -> list[str]:
        """Return the labels of the dataset's ROI sets, newest first."""
        return list(self._set_timestamps)

    def recovery_labels(self) -> list[str]:
        """Return the recovery sets of the dataset (in the dataset, then on disk)."""
        if self.dataset is None:
            return []
        out = [label for label in self._read_sets() if is_recovery_label(label)]
        try:
            from ..core.roi_store import roi_set_timestamps

            on_disk = roi_set_timestamps(self._recovery_store())
        except USER_ERRORS:
            on_disk = {}
        out.extend(sorted((k for k in on_disk if k not in out), key=on_disk.get, reverse=True))
        return out

    def selected_roi_indices(self) -> list[int]:
        """Return the ``roi`` feature values of the selected shapes (sorted)."""
        if self.layer is None or not self.layer.selected_data:
            return []
        self._ensure_roi_indices()
        values, missing = _roi_values(self.layer.features)
        rows = [i for i in self.layer.selected_data if i < len(values) and not missing[i]]
        return sorted({int(v) for v in values[rows]})

    # -- datasets and sets ----------------------------------------------------------------
    def refresh_datasets(self) -> None:
        """Rebuild the dataset box from the viewer's layers (and the current dataset)."""
        found = datasets_in_layers(self.viewer.layers, self.dataset, self.dataset_name or "dataset")
        self._datasets = found
        fill_dataset_combo(self.dataset_combo, found, self.dataset)

    def set_dataset(self, dataset: ImagingDataset | None, name: str | None = None) -> bool:
        """Work on another dataset and show its most recent ROI set.

        Parameters
        ----------
        dataset : ImagingDataset or None
            The dataset (None clears the widget).  Unsaved edits of the current set go
            to a recovery set first.
        name : str, optional
            Name shown in the dataset box (default: from its layers or its folder).

        Returns
        -------
        bool
            True on success.
        """
        if dataset is self.dataset and dataset is not None:
            return True
        self._detach_layer(reason="another dataset was chosen")
        self.dataset = dataset
        self.dataset_name = name or self._name_of(dataset)
        self.current_set = None
        self._restored_from = None
        self.refresh_datasets()
        self._refresh_sets()
        default = next((s for s in self._set_timestamps if not is_recovery_label(s)), None)
        if default is not None:
            self.show_set(default)
        self._update_controls()
        return True

    def show_set(self, label: str) -> bool:
        """Show an ROI set of the dataset in a Shapes layer over the mean image.

        Parameters
        ----------
        label : str
            The set.  Unsaved edits of the set shown before go to a recovery set.

        Returns
        -------
        bool
            True on success.
        """
        if not self._need_dataset():
            return False
        if (
            label == self.current_set
            and self.layer is not None
            and self.layer in self.viewer.layers
        ):
            return True
        try:
            rois = self._load_set(label)
        except KeyError:
            show_error(f"The dataset has no ROI set {label!r}; its sets are {self.set_labels()}.")
            self._refresh_sets()
            return False
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        self._detach_layer(reason=f"switching to set {label!r}")
        self._restored_from = None
        return self._show_rois(rois, label, dirty=False)

    def new_set(self, label: str) -> bool:
        """Create an empty ROI set in the dataset and show it.

        Parameters
        ----------
        label : str
            Name of the new set (must not exist yet).

        Returns
        -------
        bool
            True on success.
        """
        if not self._need_dataset():
            return False
        label = self._check_new_label(label)
        if label is None:
            return False
        if self.dataset.read_only:  # type: ignore[union-attr]
            show_warning(
                f"The dataset is read-only: the set {label!r} lives only in its layer.  Export "
                f"it to ImageJ, or save the dataset to a new folder (Dataset panel) and save "
                f"the set there; unsaved edits are kept in recovery files."
            )
        else:
            try:
                self.dataset.add_ROIs(ROIList([]), label)  # type: ignore[union-attr]
            except USER_ERRORS as err:
                show_error(str(err))
                return False
        self._detach_layer(reason=f"a new set {label!r} was created")
        self._restored_from = None
        self._refresh_sets()
        return self._show_rois(ROIList([]), label, dirty=False)

    def rename_set(self, old: str, new: str) -> bool:
        """Rename an ROI set of the dataset.

        Parameters
        ----------
        old, new : str
            Current and new name (``new`` must not exist yet).

        Returns
        -------
        bool
            True on success.  Unsaved edits of the set shown stay in its layer.
        """
        if not self._need_dataset():
            return False
        new = self._check_new_label(new)
        if new is None:
            return False
        try:
            sets = self._read_sets()
            if old not in sets:
                show_error(f"The dataset has no ROI set {old!r}; its sets are {sorted(sets)}.")
                return False
            self.dataset.add_ROIs(self._load_set(old), new)  # type: ignore[union-attr]
            self.dataset.delete_ROIs(old)  # type: ignore[union-attr]
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        if old == self.current_set:
            self.current_set = new
            if self.layer is not None:
                self.layer.name = self._layer_name(new)
                meta = sima_metadata(self.layer)
                if meta is not None:
                    meta["roi_set"] = new
        self._refresh_sets()
        self._update_controls()
        return True

    def delete_set(self, label: str) -> bool:
        """Delete an ROI set from the dataset.

        Parameters
        ----------
        label : str
            The set.  If it is the set shown, its layer is removed (unsaved edits go
            to a recovery set first) and the newest remaining set is shown.

        Returns
        -------
        bool
            True on success.
        """
        if not self._need_dataset():
            return False
        if label not in self._read_sets():
            show_error(f"The dataset has no ROI set {label!r}.")
            return False
        try:
            self.dataset.delete_ROIs(label)  # type: ignore[union-attr]
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        if self._restored_from == ("dataset", label):
            self._restored_from = None
        if label == self.current_set:
            self._detach_layer(reason=f"set {label!r} was deleted")
            self.current_set = None
            self._refresh_sets()
            default = next((s for s in self._set_timestamps if not is_recovery_label(s)), None)
            if default is not None:
                self.show_set(default)
        else:
            self._refresh_sets()
        self._update_controls()
        return True

    def save_set(self) -> str | None:
        """Store the layer's ROIs in the dataset under the current set's label.

        Returns
        -------
        str or None
            The label saved, or None on failure (reported as a notification).
        """
        if not self._need_layer():
            return None
        rois = self._layer_rois()
        if rois is None:
            return None
        try:
            label = self.dataset.add_ROIs(rois, self.current_set)  # type: ignore[union-attr]
        except PermissionError as err:
            show_error(
                f"{err}.  The edits stay in the layer: export them to ImageJ, or save "
                f"the dataset to a new folder (Dataset panel) and save again."
            )
            return None
        except USER_ERRORS as err:
            show_error(str(err))
            return None
        self._set_dirty(False)
        self._discard_restored_recovery()
        self._refresh_sets()
        show_info(f"Saved {len(rois)} ROI(s) to the set {label!r}.")
        return label

    # -- ImageJ ---------------------------------------------------------------------------
    def import_imagej(self, path: str | os.PathLike) -> int:
        """Add the ROIs of an ImageJ RoiSet ``.zip`` (or ``.roi``) to the set shown.

        Without a set shown, a new set named after the file is created first.

        Parameters
        ----------
        path : path-like
            The ImageJ file.

        Returns
        -------
        int
            Number of ROIs added (0 on failure).
        """
        if not self._need_dataset():
            return 0
        from ..core.imagej import read_imagej_rois

        try:
            with _collect_warnings():
                rois = read_imagej_rois(path, im_shape=self.dataset.frame_shape[:3])  # type: ignore[union-attr]
        except USER_ERRORS as err:
            show_error(f"Cannot import {os.fspath(path)!r}: {err}")
            return 0
        if not len(rois):
            show_warning(f"{os.fspath(path)!r} holds no ROIs with an area.")
            return 0
        if self.layer is None:
            stem = source_name(path) or "ImageJ"
            label = stem
            k = 2
            while label in self._read_sets():
                label = f"{stem}-{k}"
                k += 1
            if not self.new_set(label):
                return 0
        try:
            with _collect_warnings():
                rows = self._append_rois(rois)
        except USER_ERRORS as err:
            show_error(f"Cannot show the ROIs of {os.fspath(path)!r}: {err}")
            return 0
        self.layer.selected_data = set(rows)  # type: ignore[union-attr]
        show_info(f"Imported {len(rois)} ROI(s) from {os.path.basename(os.fspath(path))}.")
        return len(rois)

    def export_imagej(self, path: str | os.PathLike) -> int:
        """Write the layer's ROIs (all of them, whatever the filter) to ImageJ.

        Parameters
        ----------
        path : path-like
            A RoiSet ``.zip`` (a single ROI may go to a ``.roi`` file).

        Returns
        -------
        int
            Number of ROIs written (0 on failure).
        """
        if not self._need_layer():
            return 0
        rois = self._layer_rois()
        if rois is None:
            return 0
        from ..core.imagej import write_imagej_rois

        try:
            with _collect_warnings():
                write_imagej_rois(path, rois)
        except USER_ERRORS as err:
            show_error(f"Cannot export to {os.fspath(path)!r}: {err}")
            return 0
        show_info(f"Exported {len(rois)} ROI(s) to {os.fspath(path)}.")
        return len(rois)

    # -- drawing and editing ----------------------------------------------------------------
    def set_draw_mode(self, mode: str) -> bool:
        """Switch the ROIs layer to a napari drawing / editing mode.

        Parameters
        ----------
        mode : str
            ``'polygon'``, ``'lasso'``, ``'ellipse'``, ``'rectangle'``, ``'select'``,
            ``'direct'`` (vertices), ``'pan_zoom'``, or a napari Shapes mode name.

        Returns
        -------
        bool
            True on success.
        """
        if not self._need_layer():
            return False
        napari_mode = DRAW_MODES.get(mode, mode)
        try:
            self.viewer.layers.selection.active = self.layer
            self.layer.mode = napari_mode  # type: ignore[union-attr]
        except ValueError as err:
            show_error(str(err))
            return False
        return True

    def delete_selected(self) -> int:
        """Delete the selected shapes; returns how many."""
        if not self._need_layer():
            return 0
        sel = sorted(self.layer.selected_data)  # type: ignore[union-attr]
        if not sel:
            show_warning("Select shapes to delete first.")
            return 0
        self.layer.remove(sel)  # type: ignore[union-attr]
        return len(sel)

    def set_label(self, text: str) -> int:
        """Set the label of the selected ROIs (empty text clears it); returns how many."""
        rows = self._selected_rows()
        if not rows:
            return 0
        label = str(text).strip() or None
        df = self.layer.features.copy()  # type: ignore[union-attr]
        df["label"] = df["label"].astype(object)
        for i in rows:
            df.at[i, "label"] = label
        self._set_features(df)
        return self._count_rois(rows)

    def add_tags(self, tags: str | Iterable[str]) -> int:
        """Add tags to the selected ROIs; returns how many ROIs.

        ``'accepted'`` / ``'rejected'`` set the curation status instead.
        """
        parsed = parse_tags(tags)
        if not parsed:
            show_warning("Type one or more comma-separated tags first.")
            return 0
        flags = [t for t in parsed if t in FLAG_TAGS]
        if len(flags) > 1:
            show_error("An ROI cannot be both accepted and rejected.")
            return 0
        rows = self._selected_rows()
        if not rows:
            return 0
        df = self.layer.features.copy()  # type: ignore[union-attr]
        others = [t for t in parsed if t not in FLAG_TAGS]
        for i in rows:
            have = set(_split_tags(df.at[i, "tags"]))
            df.at[i, "tags"] = ",".join(sorted(have | set(others)))
            if flags:
                df.at[i, "accepted"] = flags[0] == ACCEPTED
                df.at[i, "rejected"] = flags[0] == REJECTED
        self._set_features(df)
        return self._count_rois(rows)

    def remove_tags(self, tags: str | Iterable[str]) -> int:
        """Remove tags from the selected ROIs; returns how many ROIs."""
        parsed = set(parse_tags(tags))
        if not parsed:
            show_warning("Type the tags to remove first.")
            return 0
        rows = self._selected_rows()
        if not rows:
            return 0
        df = self.layer.features.copy()  # type: ignore[union-attr]
        for i in rows:
            have = set(_split_tags(df.at[i, "tags"]))
            df.at[i, "tags"] = ",".join(sorted(have - parsed))
            for flag in FLAG_TAGS:
                if flag in parsed:
                    df.at[i, flag] = False
        self._set_features(df)
        return self._count_rois(rows)

    def clear_tags(self) -> int:
        """Remove all tags of the selected ROIs except their curation status."""
        rows = self._selected_rows()
        if not rows:
            return 0
        df = self.layer.features.copy()  # type: ignore[union-attr]
        for i in rows:
            df.at[i, "tags"] = ""
        self._set_features(df)
        return self._count_rois(rows)

    def mark_selected(self, status: str | None) -> int:
        """Mark the selected ROIs accepted, rejected or undecided (None).

        Parameters
        ----------
        status : {'accepted', 'rejected', None}
            The status (the two tags are mutually exclusive).

        Returns
        -------
        int
            Number of ROIs marked.
        """
        text = None if status is None else str(status).strip().lower()
        if text in ("", "none", "undecided"):
            text = None
        if text not in (ACCEPTED, REJECTED, None):
            show_error(f"Status must be 'accepted', 'rejected' or None, got {status!r}.")
            return 0
        rows = self._selected_rows()
        if not rows:
            return 0
        df = self.layer.features.copy()  # type: ignore[union-attr]
        df.loc[df.index[rows], "accepted"] = text == ACCEPTED
        df.loc[df.index[rows], "rejected"] = text == REJECTED
        self._set_features(df)
        return self._count_rois(rows)

    def merge_selected(self) -> bool:
        """Merge the selected ROIs into one (see :func:`~napari_sima.core.roi_ops.merge_rois`).

        Returns
        -------
        bool
            True on success; the merged ROI is selected.
        """
        rows = self._selected_rows()
        if not rows:
            return False
        try:
            with _collect_warnings():
                rois = shapes_to_rois(self._subset(rows), im_shape=self._im_shape())
            merged = merge_rois(rois)
            new_rows = self._replace_rows(rows, merged)
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        self.layer.selected_data = set(new_rows)  # type: ignore[union-attr]
        return True

    def unmerge_selected(self) -> bool:
        """Split the selected ROIs into one ROI per polygon (ids cleared, unique labels).

        Returns
        -------
        bool
            True on success; the new ROIs are selected.
        """
        rows = self._selected_rows()
        if not rows:
            return False
        df = self.layer.features  # type: ignore[union-attr]
        taken = {
            str(v)
            for i, v in enumerate(df["label"].tolist())
            if i not in set(rows) and not _missing(v)
        }
        parts = ROIList([])
        try:
            with _collect_warnings():
                rois = shapes_to_rois(self._subset(rows), im_shape=self._im_shape())
            for roi in rois:
                pieces = unmerge_roi(roi, existing_labels=taken)
                taken |= {p.label for p in pieces if p.label is not None}
                parts.extend(pieces)
            new_rows = self._replace_rows(rows, parts)
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        self.layer.selected_data = set(new_rows)  # type: ignore[union-attr]
        return True

    # -- view -------------------------------------------------------------------------------
    def set_tag_filter(self, tags: str | Iterable[str] | None) -> int:
        """Show only the ROIs matching a tag filter (the others are hidden, not deleted).

        Parameters
        ----------
        tags : str or iterable of str or None
            ``'PV, -rejected'``: ROIs with every plain tag and none of the ``-``/``!``
            tags; ``accepted`` / ``rejected`` count as tags.  None or empty shows all.

        Returns
        -------
        int
            Number of shapes shown.
        """
        self._tag_filter = parse_tag_filter(tags or "")
        if parse_tag_filter(self.filter_edit.text()) != self._tag_filter:
            need, avoid = self._tag_filter
            self.filter_edit.setText(", ".join(need + ["-" + t for t in avoid]))
        if self.layer is None:
            return 0
        shown = self.shown
        sel = set(self.layer.selected_data)
        hidden_selected = {i for i in sel if i < len(shown) and not shown[i]}
        if hidden_selected:
            self.layer.selected_data = sel - hidden_selected
        self._recolor(shown)  # updates the summary too
        return int(shown.sum())

    def set_color_by(self, mode: str) -> None:
        """Colour outlines by ``'status'`` or one colour per ``'roi'``."""
        if mode not in COLOR_MODES:
            show_error(f"Colour mode must be one of {COLOR_MODES}, got {mode!r}.")
            return
        self._color_by = mode
        with blocked(self.color_combo):
            self.color_combo.setCurrentIndex(COLOR_MODES.index(mode))
        self._recolor()

    def show_mean_image(self) -> list[Layer]:
        """Add the dataset's mean image below the ROIs when it is not in the viewer.

        Datasets up to :data:`MAIN_THREAD_MAX_FRAMES` frames are averaged at once;
        longer ones in a worker thread (the layer appears when it is done).

        Returns
        -------
        list of napari layers
            The mean image layers present now (empty while a worker runs).
        """
        ds = self.dataset
        if ds is None:
            return []
        existing = self._mean_layers(ds)
        if existing:
            return existing
        try:
            if ds.num_frames > MAIN_THREAD_MAX_FRAMES:
                if self._mean_worker is None:
                    slots = {
                        "returned": lambda m: self._add_mean_layers(ds, m),
                        "errored": self._on_mean_errored,
                        "finished": self._on_mean_finished,
                    }
                    self._mean_worker = _projection_steps(ds, _connect=slots)
                    self._mean_worker._napari_sima_slots = slots  # released when it ends
                    show_info("Computing the mean image in the background…")
                return []
            moments = ds.compute_projections()
        except USER_ERRORS as err:
            show_error(f"Cannot compute the mean image: {err}")
            return []
        return self._add_mean_layers(ds, moments)

    # -- recovery ---------------------------------------------------------------------------
    def autosave(self, reason: str = "") -> str | None:
        """Write unsaved edits to a recovery set and tell the user its name.

        Parameters
        ----------
        reason : str
            Why (shown in the notification).

        Returns
        -------
        str or None
            The recovery set's label, or None when there was nothing to save.

        Notes
        -----
        The recovery set is ``'<set>~recovery-<timestamp>'``, stored in the dataset;
        for a read-only dataset or one without a folder it goes to a store folder under
        :func:`recovery_dir` instead.
        """
        if self.layer is None or not self._dirty or self.dataset is None:
            return None
        rois = self._layer_rois(notify=False)
        if rois is None:
            show_error(f"Could not keep the unsaved changes to the ROI set {self.current_set!r}.")
            return None
        base = self.current_set or "ROIs"
        taken = set(self.recovery_labels())
        label = f"{base}{RECOVERY_MARK}{_timestamp()}"
        k = 2
        while label in taken:
            label = f"{base}{RECOVERY_MARK}{_timestamp()}-{k}"
            k += 1
        where = None
        ds = self.dataset
        if ds.savedir is not None and not ds.read_only:
            try:
                ds.add_ROIs(rois, label)
                where = f"in the dataset {ds.savedir}"
            except USER_ERRORS:
                where = None
        if where is None:
            from ..core.roi_store import save_roi_set

            store = self._recovery_store()
            try:
                save_roi_set(store, rois, label)
            except USER_ERRORS as err:
                show_error(f"Could not keep the unsaved changes to the ROI set {base!r}: {err}")
                return None
            where = f"in {store}"
        self._set_dirty(False)
        why = f" ({reason})" if reason else ""
        show_warning(
            f"Unsaved changes to the ROI set {base!r}{why} were kept as the recovery set "
            f"{label!r} {where}.  Use “Restore…” in the ROIs panel to get them back."
        )
        return label

    def restore_recovery(self, label: str) -> bool:
        """Show a recovery set again as unsaved changes to the set it came from.

        Parameters
        ----------
        label : str
            A label from :meth:`recovery_labels`.

        Returns
        -------
        bool
            True on success.  Saving then writes the original set and discards the
            recovery set.
        """
        if not self._need_dataset():
            return False
        rois = None
        source: tuple[str, str] | None = None
        try:
            sets = self._read_sets()
            if label in sets:
                rois = self._load_set(label)
                source = ("dataset", label)
            else:
                from ..core.roi_store import load_roi_set

                rois = load_roi_set(self._recovery_store(), label)
                source = ("file", label)
        except KeyError:
            show_error(f"No recovery set {label!r}; there are {self.recovery_labels()}.")
            return False
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        target = recovered_set_name(label) or "ROIs"
        self._detach_layer(reason=f"restoring {label!r}")
        if not self._show_rois(rois, target, dirty=True):
            return False
        self._restored_from = source
        show_info(
            f"Restored {label!r} as unsaved changes to the set {target!r}; press Save to keep them."
        )
        return True

    # -- Qt events --------------------------------------------------------------------------
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Keep unsaved edits (recovery set) and disconnect when the panel closes."""
        self._teardown("the ROIs panel was closed")
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:  # noqa: D102 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            self._on_parent_changed()
        return super().event(event)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802,D102 - Qt's name
        kind = event.type()
        if kind == QEvent.Type.ParentChange:
            self._watch_ancestors()
        elif kind == QEvent.Type.Close and isinstance(obj, QMainWindow):
            self._teardown("the viewer was closed")
        return False

    # -- handlers ---------------------------------------------------------------------------
    def _on_dataset_combo_changed(self, index: int) -> None:
        if 0 <= index < len(self._datasets):
            name, ds = self._datasets[index]
            self.set_dataset(ds, name)

    def _on_set_combo_changed(self, index: int) -> None:
        if index < 0:
            return
        label = self.set_combo.itemData(index)
        if label is not None and label != self.current_set:
            self.show_set(label)

    def _on_save_clicked(self) -> None:
        self.save_set()

    def _on_new_set_clicked(self) -> None:
        label, ok = QInputDialog.getText(self, "New ROI set", "Name of the new ROI set:")
        if ok and label:
            self.new_set(label)

    def _on_rename_set_clicked(self) -> None:
        if self.current_set is None:
            show_warning("Choose a set to rename first.")
            return
        label, ok = QInputDialog.getText(
            self, "Rename ROI set", f"New name of {self.current_set!r}:", text=self.current_set
        )
        if ok and label and label != self.current_set:
            self.rename_set(self.current_set, label)

    def _on_delete_set_clicked(self) -> None:
        if self.current_set is None:
            show_warning("Choose a set to delete first.")
            return
        answer = QMessageBox.question(
            self, "Delete ROI set", f"Delete the ROI set {self.current_set!r} from the dataset?"
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_set(self.current_set)

    def _on_restore_clicked(self) -> None:
        labels = self.recovery_labels()
        if not labels:
            show_info("There are no recovery sets for this dataset.")
            return
        label, ok = QInputDialog.getItem(
            self, "Restore unsaved changes", "Recovery set:", labels, 0, False
        )
        if ok and label:
            self.restore_recovery(label)

    def _on_import_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import ImageJ ROIs", self._start_dir(), _ROI_FILTER
        )
        if path:
            self.import_imagej(path)

    def _on_export_clicked(self) -> None:
        default = os.path.join(self._start_dir(), f"{self.current_set or 'RoiSet'}.zip")
        path, _ = QFileDialog.getSaveFileName(self, "Export to ImageJ", default, _ROI_FILTER)
        if path:
            self.export_imagej(path)

    def _on_mode_clicked(self) -> None:
        mode = self.sender().property("shapes_mode")
        if mode:
            self.set_draw_mode(str(mode))

    def _on_delete_clicked(self) -> None:
        self.delete_selected()

    def _on_merge_clicked(self) -> None:
        self.merge_selected()

    def _on_unmerge_clicked(self) -> None:
        self.unmerge_selected()

    def _on_set_label_clicked(self) -> None:
        self.set_label(self.label_edit.text())

    def _on_add_tags_clicked(self) -> None:
        self.add_tags(self.tags_edit.text())

    def _on_remove_tags_clicked(self) -> None:
        self.remove_tags(self.tags_edit.text())

    def _on_clear_tags_clicked(self) -> None:
        self.clear_tags()

    def _on_accept_clicked(self) -> None:
        self.mark_selected(ACCEPTED)

    def _on_reject_clicked(self) -> None:
        self.mark_selected(REJECTED)

    def _on_clear_status_clicked(self) -> None:
        self.mark_selected(None)

    def _on_filter_clicked(self) -> None:
        self.set_tag_filter(self.filter_edit.text())

    def _on_color_combo_changed(self, index: int) -> None:
        if 0 <= index < len(COLOR_MODES):
            self.set_color_by(COLOR_MODES[index])

    def _on_key_accept(self, layer: Shapes) -> None:
        if layer is self.layer:
            self.mark_selected(ACCEPTED)

    def _on_key_reject(self, layer: Shapes) -> None:
        if layer is self.layer:
            self.mark_selected(REJECTED)

    def _on_key_clear(self, layer: Shapes) -> None:
        if layer is self.layer:
            self.mark_selected(None)

    def _on_layers_inserted(self, event: Any) -> None:
        self.refresh_datasets()
        if self.dataset is None and self._datasets:
            name, ds = self._datasets[0]
            self.set_dataset(ds, name)

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self.layer and self.layer is not None:
            self._detach_layer(reason="its layer was removed", remove=False)
            self.current_set = None
            self._refresh_sets()
        self.refresh_datasets()
        self._update_controls()

    def _on_layer_data(self, event: Any) -> None:
        action = str(getattr(event, "action", ""))
        if action not in ("added", "removed", "changed"):
            return
        if not self._quiet_depth:
            self._set_dirty(True)
        if action in ("added", "removed"):
            self._recolor()
        self._update_table()

    def _on_layer_features(self, event: Any = None) -> None:
        if not self._quiet_depth:
            self._set_dirty(True)
        self._recolor()
        self._update_table()

    def _on_selection_changed(self, event: Any = None) -> None:
        if self._selection_guard or self.layer is None:
            return
        if self._tag_filter[0] or self._tag_filter[1]:
            shown = self.shown
            sel = set(self.layer.selected_data)
            hidden = {i for i in sel if i < len(shown) and not shown[i]}
            if hidden:
                self._selection_guard = True
                try:
                    self.layer.selected_data = sel - hidden
                finally:
                    self._selection_guard = False
        self._update_table()

    def _on_mean_errored(self, err: Exception) -> None:
        show_error(f"Computing the mean image failed: {err}")

    def _on_mean_finished(self) -> None:
        worker, self._mean_worker = self._mean_worker, None
        if worker is not None:  # napari keeps ended workers: let go of the dataset
            release_worker(worker, getattr(worker, "_napari_sima_slots", {}))

    # -- layer management -------------------------------------------------------------------
    def _show_rois(self, rois: ROIList, label: str, dirty: bool) -> bool:
        """Add the layer showing ``rois`` as the set ``label``."""
        ds = self.dataset
        assert ds is not None
        self.show_mean_image()
        try:
            with _collect_warnings():
                kwargs = rois_to_shapes(rois, ndim=3)
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        meta = kwargs["metadata"][METADATA_KEY]
        meta.update(
            dataset=ds,
            roi_set=label,
            base_name=self.dataset_name,
            source=ds.savedir,
        )
        if not kwargs["data"]:  # napari warns about empty colour arrays
            kwargs.pop("edge_color", None)
            kwargs.pop("face_color", None)
        with self._quiet():
            layer = unwrap(
                self.viewer.add_shapes(
                    **kwargs, name=self._layer_name(label), edge_width=EDGE_WIDTH
                )
            )
            layer.current_face_color = "transparent"
            layer.current_edge_color = STATUS_COLORS[None]
        self._attach_layer(layer, label)
        self._set_dirty(dirty)
        self._refresh_sets()
        return True

    def _attach_layer(self, layer: Shapes, label: str) -> None:
        self.layer = layer
        self.current_set = label
        layer.events.data.connect(self._on_layer_data)
        layer.events.features.connect(self._on_layer_features)
        layer.selected_data.events.items_changed.connect(self._on_selection_changed)
        layer.bind_key(KEY_ACCEPT, self._on_key_accept, overwrite=True)
        layer.bind_key(KEY_REJECT, self._on_key_reject, overwrite=True)
        layer.bind_key(KEY_CLEAR, self._on_key_clear, overwrite=True)
        self.viewer.layers.selection.active = layer
        self._recolor()
        self._update_table()
        self._update_controls()

    def _detach_layer(self, reason: str = "", remove: bool = True) -> None:
        """Stop managing the layer (autosaving unsaved edits first); remove it by default."""
        layer = self.layer
        if layer is None:
            return
        if self._dirty:
            self.autosave(reason)
        self._set_dirty(False)
        with contextlib.suppress(Exception):
            layer.events.data.disconnect(self._on_layer_data)
        with contextlib.suppress(Exception):
            layer.events.features.disconnect(self._on_layer_features)
        with contextlib.suppress(Exception):
            layer.selected_data.events.items_changed.disconnect(self._on_selection_changed)
        for key in (KEY_ACCEPT, KEY_REJECT, KEY_CLEAR):
            with contextlib.suppress(Exception):
                layer.bind_key(key, None)
        self.layer = None
        if remove and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        self._update_table()
        self._update_controls()

    def _teardown(self, reason: str) -> None:
        """Keep unsaved edits and disconnect from the viewer (once)."""
        if self._closed:
            return
        self._closed = True
        if self._mean_worker is not None:
            with contextlib.suppress(Exception):
                self._mean_worker.quit()
        self._detach_layer(reason=reason, remove=False)
        with contextlib.suppress(Exception):
            self.viewer.layers.events.inserted.disconnect(self._on_layers_inserted)
        with contextlib.suppress(Exception):
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)

    def _on_parent_changed(self) -> None:
        if self.parentWidget() is None:
            if self._parented:  # removed from its dock: the panel was closed
                self._teardown("the ROIs panel was closed")
            return
        self._parented = True
        self._watch_ancestors()

    def _watch_ancestors(self) -> None:
        """Filter the events of every ancestor: re-parenting, and the main window closing."""
        # Qt does not install a filter twice; no Python reference is kept to the
        # ancestors (a child holding its window would keep the whole viewer alive)
        w = self.parentWidget()
        while w is not None:
            w.installEventFilter(self)
            w = w.parentWidget()

    def _add_mean_layers(self, ds: ImagingDataset, moments: Moments) -> list[Layer]:
        if self._closed:
            return []
        existing = self._mean_layers(ds)
        if existing:
            return existing
        added = []
        name = self.dataset_name if ds is self.dataset else self._name_of(ds)
        with self._quiet():
            for data, kwargs, layer_type in projection_layer_data(
                moments, ds, name, kinds=["mean"], source=ds.savedir
            ):
                added.append(getattr(self.viewer, f"add_{layer_type}")(data, **kwargs))
            if self.layer is not None and self.layer in self.viewer.layers:
                for img in added:
                    self.viewer.layers.move(
                        self.viewer.layers.index(img), self.viewer.layers.index(self.layer)
                    )
                self.viewer.layers.selection.active = self.layer
        return added

    def _mean_layers(self, ds: ImagingDataset) -> list[Layer]:
        out = []
        for layer in self.viewer.layers:
            meta = sima_metadata(layer)
            if meta is not None and meta.get("dataset") is ds and meta.get("kind") == "mean":
                out.append(layer)
        return out

    # -- features helpers -------------------------------------------------------------------
    def _set_features(self, df: Any) -> None:
        layer = self.layer
        assert layer is not None
        layer.features = df.reset_index(drop=True)
        layer.feature_defaults = feature_defaults()

    def _next_roi_index(self) -> int:
        layer = self.layer
        assert layer is not None
        meta = sima_metadata(layer) or {}
        originals = meta.get("rois")
        start = len(originals) if originals is not None else 0
        col = layer.features.get("roi")
        if col is not None and col.notna().any():
            start = max(start, int(col.max()) + 1)
        return start

    def _ensure_roi_indices(self) -> None:
        """Give the shapes the user drew (``roi`` missing) an ROI index each."""
        layer = self.layer
        if layer is None or layer.nshapes == 0:
            return
        df = layer.features
        missing = df["roi"].isna().to_numpy()
        if not missing.any():
            return
        start = self._next_roi_index()
        df = df.copy()
        df.loc[missing, "roi"] = np.arange(start, start + int(missing.sum()))
        planes = [int(round(float(np.asarray(d)[0, -3]))) for d in layer.data]
        plane_col = df["plane"].copy()
        for i in np.flatnonzero(missing):
            plane_col.iloc[i] = planes[i]
        df["plane"] = plane_col
        self._set_features(df)

    def _selected_rows(self) -> list[int]:
        """Rows of every shape of the selected ROIs (warns when nothing is selected)."""
        if not self._need_layer():
            return []
        if not self.layer.selected_data:  # type: ignore[union-attr]
            show_warning("Select one or more ROIs first (Select tool, or press 's').")
            return []
        rois = self.selected_roi_indices()
        values, missing = _roi_values(self.layer.features)  # type: ignore[union-attr]
        return np.flatnonzero(~missing & np.isin(values, rois)).tolist()

    def _count_rois(self, rows: list[int]) -> int:
        values = self.layer.features["roi"].tolist()  # type: ignore[union-attr]
        return len({int(values[i]) for i in rows})

    def _subset(self, rows: list[int]) -> dict[str, Any]:
        layer = self.layer
        assert layer is not None
        return {
            "data": [layer.data[i] for i in rows],
            "shape_type": [layer.shape_type[i] for i in rows],
            "features": layer.features.iloc[rows].reset_index(drop=True),
            "metadata": layer.metadata,
            "ndim": layer.ndim,
        }

    def _append_rois(self, rois: ROIList, start: int | None = None) -> list[int]:
        """Add ROIs as new shapes with fresh ROI indices (from ``start``); return their rows."""
        assert self.layer is not None
        return self._add_shapes(rois_to_shapes(rois, ndim=self.layer.ndim), start)

    def _add_shapes(self, kwargs: dict[str, Any], start: int | None = None) -> list[int]:
        """Add the shapes of :func:`rois_to_shapes` output, renumbering their ROIs."""
        layer = self.layer
        assert layer is not None
        if not kwargs["data"]:
            return []
        new = kwargs["features"]
        first = self._next_roi_index() if start is None else max(start, self._next_roi_index())
        new["roi"] = (new["roi"] + first).astype("Int64")
        n0 = layer.nshapes
        layer.add(kwargs["data"], shape_type=kwargs["shape_type"], edge_width=EDGE_WIDTH)
        df = layer.features.copy()
        for col in FEATURE_COLUMNS:
            if col not in df.columns:
                continue
            column = df[col].copy()
            for k, v in enumerate(new[col].tolist()):
                column.iloc[n0 + k] = v
            df[col] = column
        self._set_features(df)
        return list(range(n0, layer.nshapes))

    def _replace_rows(self, rows: list[int], rois: ROIList) -> list[int]:
        """Replace the shapes at ``rows`` by ``rois``; return the new rows."""
        layer = self.layer
        assert layer is not None
        kwargs = rois_to_shapes(rois, ndim=layer.ndim)  # may fail: before removing anything
        # new indices stay past those used before, so they never alias an original ROI
        start = self._next_roi_index()
        layer.selected_data = set()
        layer.remove(sorted(rows))
        return self._add_shapes(kwargs, start)

    def _layer_rois(self, notify: bool = True) -> ROIList | None:
        """Return the layer's ROIs with the dataset's image shape (warnings shown)."""
        try:
            with _collect_warnings(notify):
                return shapes_to_rois(self.layer, im_shape=self._im_shape())
        except USER_ERRORS as err:
            if notify:
                show_error(str(err))
            return None

    def _im_shape(self) -> tuple[int, int, int] | None:
        if self.dataset is None:
            return None
        try:
            return tuple(int(v) for v in self.dataset.frame_shape[:3])  # type: ignore[return-value]
        except USER_ERRORS:
            return None

    # -- display ----------------------------------------------------------------------------
    def _recolor(self, shown: np.ndarray | None = None) -> None:
        layer = self.layer
        if layer is None or layer.nshapes == 0:
            return
        df = layer.features
        n = layer.nshapes
        if self._color_by == "roi":
            colors = np.ones((n, 4))
            values, missing = _roi_values(df)
            known = np.flatnonzero(~missing[:n])
            colors[known, :3] = np.asarray(ROI_PALETTE)[values[known] % len(ROI_PALETTE)]
        else:
            colors = np.tile(np.asarray(STATUS_COLORS[None]), (n, 1))
            colors[_flags(df, "accepted")[:n]] = STATUS_COLORS[ACCEPTED]
            colors[_flags(df, "rejected")[:n]] = STATUS_COLORS[REJECTED]
        if shown is None:
            shown = self.shown
        colors[~shown, 3] = 0.0
        layer.edge_color = colors
        self._update_summary(shown)

    def _update_table(self) -> None:
        layer = self.layer
        self.table.setRowCount(0)
        if layer is None or not layer.selected_data:
            self._update_summary()
            return
        # whole columns at once: a selection of thousands of shapes stays fast
        df = layer.features
        roi_values, missing = _roi_values(df)
        groups: dict[Any, list[int]] = {}
        for i in sorted(layer.selected_data):
            if i >= len(df):
                continue
            groups.setdefault(("new", i) if missing[i] else int(roi_values[i]), []).append(i)
        shapes_per_roi = dict(
            zip(*(a.tolist() for a in np.unique(roi_values[~missing], return_counts=True)),
                strict=True)
        )
        accepted, rejected = _flags(df, "accepted"), _flags(df, "rejected")
        labels, tags = df["label"].tolist(), df["tags"].tolist()
        shown = list(groups.items())[:TABLE_MAX_ROWS]
        self.table.setUpdatesEnabled(False)
        try:
            self.table.setRowCount(len(shown))
            for row, (key, members) in enumerate(shown):
                i = members[0]
                status = REJECTED if rejected[i] else (ACCEPTED if accepted[i] else "")
                values = [
                    str(key) if isinstance(key, int) else "new",
                    "" if _missing(labels[i]) else str(labels[i]),
                    ", ".join(_split_tags(tags[i])),
                    status,
                    str(shapes_per_roi.get(key, 0) if isinstance(key, int) else 1),
                ]
                for col, text in enumerate(values):
                    self.table.setItem(row, col, QTableWidgetItem(text))
        finally:
            self.table.setUpdatesEnabled(True)
        self._update_summary()

    def _update_summary(self, shown: np.ndarray | None = None) -> None:
        layer = self.layer
        if self.dataset is None:
            text = "No dataset: open a movie or a .sima folder."
        elif layer is None:
            text = "No ROI set shown: choose one or create a new set."
        else:
            df = layer.features
            values, missing = _roi_values(df)
            known = ~missing
            n_rois = np.unique(values[known]).size + int(missing.sum())
            n_acc = np.unique(values[known & _flags(df, "accepted")]).size
            n_rej = np.unique(values[known & _flags(df, "rejected")]).size
            text = (
                f"{n_rois} ROI(s) in {layer.nshapes} shape(s): {n_acc} accepted, "
                f"{n_rej} rejected."
            )
            if self._tag_filter[0] or self._tag_filter[1]:
                if shown is None:
                    shown = self.shown
                text += f"  Filter shows {int(shown.sum())} of {layer.nshapes} shapes."
            if layer.selected_data:
                text += f"  {len(layer.selected_data)} shape(s) selected."
            if self._dirty:
                text += "  Unsaved changes."
        self.summary_label.setText(text)

    def _update_controls(self) -> None:
        has_ds = self.dataset is not None
        has_layer = self.layer is not None
        for w in (self.set_combo, self.new_set_button, self.restore_button, self.import_button):
            w.setEnabled(has_ds)
        self.rename_set_button.setEnabled(has_ds and self.current_set is not None)
        self.delete_set_button.setEnabled(has_ds and self.current_set is not None)
        for w in (
            self.save_button,
            self.export_button,
            self.delete_button,
            self.merge_button,
            self.unmerge_button,
            self.set_label_button,
            self.add_tags_button,
            self.remove_tags_button,
            self.clear_tags_button,
            self.accept_button,
            self.reject_button,
            self.clear_status_button,
            *self.mode_buttons.values(),
        ):
            w.setEnabled(has_layer)
        self.save_button.setText("Save *" if self._dirty else "Save")
        self._update_summary()

    def _set_dirty(self, dirty: bool) -> None:
        if self._dirty != dirty:
            self._dirty = dirty
            self.save_button.setText("Save *" if dirty else "Save")
        self._update_summary()

    # -- misc helpers -----------------------------------------------------------------------
    def _roi_store(self) -> str | None:
        """Return the dataset's ROI store folder, or None (legacy folder, in memory)."""
        from ..core.roi_store import store_dir

        savedir = getattr(self.dataset, "savedir", None)
        if savedir is None:
            return None
        folder = store_dir(savedir)
        return str(folder) if (folder / "index.json").exists() else None

    def _load_set(self, label: str) -> ROIList:
        """Read one ROI set of the dataset (only that set: the others stay on disk).

        Raises
        ------
        KeyError
            If there is no such set.
        """
        store = self._roi_store()
        if store is None:
            return self.dataset.ROIs[label]  # type: ignore[union-attr]
        from ..core.roi_store import load_roi_set

        return load_roi_set(store, label)

    def _read_sets(self) -> dict[str, str]:
        """``{label: timestamp}`` of the dataset's sets, newest first."""
        if self.dataset is None:
            return {}
        try:
            store = self._roi_store()
            if store is not None:  # the index only: no ROI is decoded
                from ..core.roi_store import roi_set_timestamps

                stamps = {k: str(v or "") for k, v in roi_set_timestamps(store).items()}
            else:
                sets = self.dataset.ROIs
                stamps = {
                    label: str(getattr(rois, "timestamp", "") or "")
                    for label, rois in sets.items()
                }
        except USER_ERRORS as err:
            show_error(f"Cannot read the dataset's ROI sets: {err}")
            return {}
        # newest first; equal timestamps: the set saved last first (as "most recent")
        order = sorted(enumerate(stamps.items()), key=lambda t: (t[1][1], t[0]), reverse=True)
        return {label: ts for _, (label, ts) in order}

    def _refresh_sets(self) -> None:
        self._set_timestamps = self._read_sets()
        labels = list(self._set_timestamps)
        if self.current_set is not None and self.current_set not in labels:
            labels.insert(0, self.current_set)  # restored / not yet saved
        with blocked(self.set_combo):
            self.set_combo.clear()
            for label in labels:
                text = label if label in self._set_timestamps else f"{label} (unsaved)"
                self.set_combo.addItem(text, label)
            index = labels.index(self.current_set) if self.current_set in labels else -1
            self.set_combo.setCurrentIndex(index)
        self._update_controls()

    def _check_new_label(self, label: str) -> str | None:
        label = str(label).strip()
        if not label:
            show_error("An ROI set needs a name.")
            return None
        if is_recovery_label(label):
            show_error(f"Set names must not contain {RECOVERY_MARK!r} (kept for recovery sets).")
            return None
        if label in self._read_sets():
            show_error(f"The dataset already has an ROI set {label!r}.")
            return None
        return label

    def _need_dataset(self) -> bool:
        if self.dataset is None:
            show_warning("No dataset: open a movie or a .sima folder first.")
            return False
        return True

    def _need_layer(self) -> bool:
        if self.layer is None:
            show_warning("No ROI set shown: choose a set or create a new one first.")
            return False
        return True

    def _layer_name(self, label: str) -> str:
        return f"ROIs: {label}"

    def _name_of(self, ds: ImagingDataset | None) -> str:
        if ds is None:
            return ""
        for layer in self.viewer.layers:
            meta = sima_metadata(layer)
            if meta is not None and meta.get("dataset") is ds and meta.get("base_name"):
                return str(meta["base_name"])
        return source_name(ds.savedir) if ds.savedir else "dataset"

    def _recovery_store(self) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.dataset_name or "dataset").strip("_")
        key = (
            str(self.dataset.savedir) if self.dataset and self.dataset.savedir else f"memory:{name}"
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return recovery_dir() / f"{name or 'dataset'}-{digest}"

    def _discard_restored_recovery(self) -> None:
        source = self._restored_from
        self._restored_from = None
        if source is None:
            return
        where, label = source
        with contextlib.suppress(*USER_ERRORS):
            if where == "dataset":
                self.dataset.delete_ROIs(label)  # type: ignore[union-attr]
            else:
                from ..core.roi_store import delete_roi_set

                delete_roi_set(self._recovery_store(), label)

    def _start_dir(self) -> str:
        if self.dataset is not None and self.dataset.savedir:
            return os.path.dirname(str(self.dataset.savedir))
        return os.getcwd()

    def _adopt_initial_dataset(self) -> None:
        active = unwrap(self.viewer.layers.selection.active)
        meta = sima_metadata(active) if active is not None else None
        if meta is not None and meta.get("dataset") is not None:
            self.set_dataset(meta["dataset"], meta.get("base_name"))
        elif self._datasets:
            name, ds = self._datasets[0]
            self.set_dataset(ds, name)

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Layer changes inside are not user edits (no dirty flag)."""
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1


# ---------------------------------------------------------------------------------------
# Module helpers
# ---------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        res = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return bool(res) if np.ndim(res) == 0 else False


def _split_tags(text: Any) -> list[str]:
    if _missing(text):
        return []
    return [t.strip() for t in str(text).split(",") if t.strip()]


# Whole-column helpers: one pass over a column instead of a pandas lookup per row
# (thousands of ROIs: milliseconds instead of seconds).
def _roi_values(df: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return ``df['roi']`` as int64 (0 where missing) and its missing mask."""
    col = df["roi"]
    missing = col.isna().to_numpy(dtype=bool)
    values = np.zeros(len(col), dtype=np.int64)
    if not missing.all():
        values[~missing] = [int(v) for v in col.to_numpy(dtype=object)[~missing]]
    return values, missing


def _flags(df: Any, name: str) -> np.ndarray:
    """Return a boolean feature column as a bool array (missing values are False)."""
    col = df[name]
    if col.dtype == bool:
        return col.to_numpy()
    missing = col.isna().to_numpy(dtype=bool)
    return np.array(
        [False if m else bool(v) for v, m in zip(col.to_numpy(dtype=object), missing, strict=True)],
        dtype=bool,
    )


def _tag_sets(df: Any) -> list[set[str]]:
    """Return the tags of every row (``tags`` and the accepted / rejected flags)."""
    parsed: dict[Any, frozenset[str]] = {}
    out = []
    missing = df["tags"].isna().to_numpy(dtype=bool)
    for text, na, acc, rej in zip(
        df["tags"].tolist(), missing, _flags(df, "accepted"), _flags(df, "rejected"),
        strict=True,
    ):
        key = None if na else str(text)
        if key not in parsed:
            parsed[key] = frozenset(_split_tags(key))
        tags = set(parsed[key])
        if acc:
            tags.add(ACCEPTED)
        if rej:
            tags.add(REJECTED)
        out.append(tags)
    return out


@contextlib.contextmanager
def _collect_warnings(notify: bool = True) -> Iterator[None]:
    """Turn Python warnings raised inside into napari warning notifications."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if notify:
        for w in caught:
            if issubclass(w.category, UserWarning):
                show_warning(str(w.message))


__all__ = ["KEY_ACCEPT", "KEY_CLEAR", "KEY_REJECT", "ROIManagerWidget", "recovery_dir"]
