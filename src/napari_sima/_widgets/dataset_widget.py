"""The Dataset dock widget: open, name, save and project an imaging dataset.

The widget is a thin shell over :mod:`napari_sima.core`: it opens movies and dataset
folders through :func:`napari_sima._reader.open_source`, turns datasets into layers
with :mod:`napari_sima._layers`, and runs
:meth:`~napari_sima.core.ImagingDataset.iter_projections` in a napari thread worker.
Every action is a public method (``open_path``, ``use_selected_layer``,
``set_channel_names``, ``create_dataset``, ``save_dataset``,
``compute_projections``, ``cancel_projections``) so scripts and tests can drive it
without dialogs.  Errors from the core reach the user as napari notifications.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._layers import (
    METADATA_KEY,
    PROJECTION_KINDS,
    LayerDataTuple,
    projection_layer_data,
    rebuilt_layer_name,
    sima_metadata,
    source_name,
)
from .._reader import HDF5_SUFFIXES, TIFF_SUFFIXES, MovieOptions, open_source
from ._common import JobGuard

if TYPE_CHECKING:
    from napari.layers import Layer

    from ..core import ImagingDataset
    from ..core.projections import Moments

#: Errors from the core that are the user's to fix (shown as notifications).
USER_ERRORS = (ValueError, OSError)

#: Dim orders offered in the HDF5 dim-order box ("" = dimension labels or default).
DIM_ORDER_CHOICES = ("", "tyx", "yxt", "tzyx", "tzyxc", "tyxc", "yxct", "txy", "xyt")

#: Axis orders assumed for an in-memory image layer adopted with "Use selected layer".
_LAYER_DIM_ORDERS = {3: "tyx", 4: "tzyx"}

_MOVIE_FILTER = (
    "Movies (" + " ".join(f"*{s}" for s in TIFF_SUFFIXES + HDF5_SUFFIXES) + ");;All files (*)"
)


@thread_worker
def _projection_steps(
    steps: Generator[tuple[int, int], None, Moments],
) -> Generator[tuple[int, int], None, Moments]:
    """Run ``dataset.iter_projections()`` (given as ``steps``) in a worker thread.

    Yields
    ------
    (frames_done, total_frames)
        Progress; the worker can be quit between two yields (the widget then closes
        ``steps``).

    Returns
    -------
    Moments
        The projections.
    """
    moments = yield from steps
    return moments


class DatasetWidget(QWidget):
    """Open a movie or dataset folder, name its channels, save it, add projections.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to add layers to.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    dataset : ImagingDataset or None
        The dataset shown in the widget.
    source : str or None
        File or folder it came from (None for in-memory data).
    name : str
        Name stem of its layers.

    Notes
    -----
    On creation the widget adopts the dataset behind the selected layer (or the first
    layer napari-sima made), so docking it after opening a file just works.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.dataset: ImagingDataset | None = None
        self.source: str | None = None
        self.name: str = ""
        self._options = MovieOptions()
        self._worker: Any = None
        self._projection_cancelled = False
        self._projection_kinds: list[str] = list(PROJECTION_KINDS)
        # cancels the projections when the dataset's layers are removed or the dock deleted
        self._job_guard = JobGuard(self, viewer, self.cancel_projections)

        self.setObjectName("napari_sima_dataset_widget")
        layout = QVBoxLayout(self)
        layout.addWidget(self._create_source_group())
        layout.addWidget(self._create_format_group())
        layout.addWidget(self._create_dataset_group())
        layout.addWidget(self._create_projection_group())
        layout.addStretch(1)

        self._adopt_initial_dataset()
        self._update_controls()

    # -- construction ---------------------------------------------------------------------
    def _create_source_group(self) -> QGroupBox:
        box = QGroupBox("Source", self)
        box.setObjectName("source_group")
        layout = QVBoxLayout(box)
        self.source_edit = QLineEdit(box)
        self.source_edit.setObjectName("source_edit")
        self.source_edit.setReadOnly(True)
        self.source_edit.setPlaceholderText("no dataset: open a movie or a .sima folder")
        layout.addWidget(self.source_edit)
        row = QHBoxLayout()
        self.open_file_button = self._button(
            "Open movie…", "open_file_button", self._on_open_file_clicked
        )
        self.open_file_button.setToolTip(
            "Open a TIFF or HDF5 movie (with the format options below)"
        )
        self.open_folder_button = self._button(
            "Open .sima…", "open_folder_button", self._on_open_folder_clicked
        )
        self.open_folder_button.setToolTip("Open a dataset folder")
        self.use_layer_button = self._button(
            "Use selected layer", "use_layer_button", self._on_use_layer_clicked
        )
        self.use_layer_button.setToolTip("Show the dataset behind the selected image layer")
        for b in (self.open_file_button, self.open_folder_button, self.use_layer_button):
            row.addWidget(b)
        layout.addLayout(row)
        return box

    def _create_format_group(self) -> QGroupBox:
        box = QGroupBox("Movie format (applied when opening)", self)
        box.setObjectName("format_group")
        form = QFormLayout(box)
        self.tiff_planes_spin = QSpinBox(box)
        self.tiff_planes_spin.setObjectName("tiff_planes_spin")
        self.tiff_planes_spin.setRange(1, 4096)
        self.tiff_planes_spin.setToolTip(
            "Planes interleaved in a plain multi-page TIFF (ImageJ/OME files say it themselves)"
        )
        self.tiff_channels_spin = QSpinBox(box)
        self.tiff_channels_spin.setObjectName("tiff_channels_spin")
        self.tiff_channels_spin.setRange(1, 64)
        self.tiff_channels_spin.setToolTip(
            "Channels interleaved in a plain multi-page TIFF "
            "(channel fastest, then plane, then time)"
        )
        self.hdf5_key_edit = QLineEdit(box)
        self.hdf5_key_edit.setObjectName("hdf5_key_edit")
        self.hdf5_key_edit.setPlaceholderText("auto (the only / first movie dataset)")
        self.hdf5_dim_order_combo = QComboBox(box)
        self.hdf5_dim_order_combo.setObjectName("hdf5_dim_order_combo")
        self.hdf5_dim_order_combo.setEditable(True)
        self.hdf5_dim_order_combo.addItems(list(DIM_ORDER_CHOICES))
        self.hdf5_dim_order_combo.lineEdit().setPlaceholderText("auto (dimension labels)")
        self.hdf5_dim_order_combo.setToolTip(
            "Axis order of the HDF5 dataset, e.g. 'yxt'; letters from t, z, y, x, c"
        )
        self.reopen_button = self._button(
            "Reopen with these options", "reopen_button", self._on_reopen_clicked
        )
        self.format_status_label = QLabel("", box)
        self.format_status_label.setObjectName("format_status_label")
        self.format_status_label.setWordWrap(True)
        form.addRow("TIFF planes", self.tiff_planes_spin)
        form.addRow("TIFF channels", self.tiff_channels_spin)
        form.addRow("HDF5 key", self.hdf5_key_edit)
        form.addRow("HDF5 dim order", self.hdf5_dim_order_combo)
        form.addRow(self.reopen_button)
        form.addRow(self.format_status_label)
        return box

    def _create_dataset_group(self) -> QGroupBox:
        box = QGroupBox("Dataset", self)
        box.setObjectName("dataset_group")
        layout = QVBoxLayout(box)
        self.info_label = QLabel("", box)
        self.info_label.setObjectName("info_label")
        self.info_label.setWordWrap(True)
        layout.addWidget(self.info_label)
        names_row = QHBoxLayout()
        names_row.addWidget(QLabel("Channels", box))
        self.channel_names_edit = QLineEdit(box)
        self.channel_names_edit.setObjectName("channel_names_edit")
        self.channel_names_edit.setPlaceholderText("comma-separated, e.g. GCaMP, tdTomato")
        self.channel_names_edit.returnPressed.connect(self._on_apply_names_clicked)
        names_row.addWidget(self.channel_names_edit)
        self.apply_names_button = self._button(
            "Apply", "apply_names_button", self._on_apply_names_clicked
        )
        names_row.addWidget(self.apply_names_button)
        layout.addLayout(names_row)
        self.sequence_list = QListWidget(box)
        self.sequence_list.setObjectName("sequence_list")
        self.sequence_list.setMaximumHeight(110)
        layout.addWidget(self.sequence_list)
        self.savedir_label = QLabel("", box)
        self.savedir_label.setObjectName("savedir_label")
        self.savedir_label.setWordWrap(True)
        self.savedir_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.savedir_label)
        row = QHBoxLayout()
        self.create_button = self._button(
            "Create dataset…", "create_button", self._on_create_clicked
        )
        self.create_button.setToolTip("Save the dataset to a new .sima folder")
        self.save_button = self._button("Save", "save_button", self._on_save_clicked)
        self.save_button.setToolTip("Save the dataset to its .sima folder")
        row.addWidget(self.create_button)
        row.addWidget(self.save_button)
        layout.addLayout(row)
        return box

    def _create_projection_group(self) -> QGroupBox:
        box = QGroupBox("Projections over time", self)
        box.setObjectName("projection_group")
        layout = QVBoxLayout(box)
        checks = QHBoxLayout()
        self.projection_checks: dict[str, QCheckBox] = {}
        for kind in PROJECTION_KINDS:
            check = QCheckBox(kind, box)
            check.setObjectName(f"projection_{kind}_check")
            check.setChecked(True)
            checks.addWidget(check)
            self.projection_checks[kind] = check
        layout.addLayout(checks)
        row = QHBoxLayout()
        self.projections_button = self._button(
            "Add projections", "projections_button", self._on_projections_clicked
        )
        self.projections_button.setToolTip(
            "Compute mean / std / kurtosis over all frames (cached in the .sima folder) "
            "and add them as image layers"
        )
        self.cancel_button = self._button("Cancel", "cancel_button", self._on_cancel_clicked)
        row.addWidget(self.projections_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.projection_progress = QProgressBar(box)
        self.projection_progress.setObjectName("projection_progress")
        self.projection_progress.setFormat("%v / %m frames")
        self.projection_progress.setValue(0)
        layout.addWidget(self.projection_progress)
        return box

    def _button(self, text: str, object_name: str, slot: Any) -> QPushButton:
        button = QPushButton(text, self)
        button.setObjectName(object_name)
        button.clicked.connect(slot)
        return button

    # -- state ----------------------------------------------------------------------------
    @property
    def is_computing(self) -> bool:
        """Whether a projection worker is running."""
        return self._worker is not None

    def movie_options(self) -> MovieOptions:
        """Return the format options currently entered in the widget.

        Returns
        -------
        MovieOptions
            Empty HDF5 fields mean "automatic".
        """
        key = self.hdf5_key_edit.text().strip() or None
        dim_order = self.hdf5_dim_order_combo.currentText().strip().lower() or None
        return MovieOptions(
            num_planes=self.tiff_planes_spin.value(),
            num_channels=self.tiff_channels_spin.value(),
            dim_order=dim_order,
            key=key,
        )

    def set_movie_options(self, options: MovieOptions) -> None:
        """Show ``options`` in the format controls.

        Parameters
        ----------
        options : MovieOptions
            Options to show (None HDF5 fields become "automatic").
        """
        self.tiff_planes_spin.setValue(int(options.num_planes))
        self.tiff_channels_spin.setValue(int(options.num_channels))
        self.hdf5_key_edit.setText(options.key or "")
        self.hdf5_dim_order_combo.setCurrentText(options.dim_order or "")

    def dataset_layers(self, kinds: Iterable[str] | None = None) -> list[Layer]:
        """Return the viewer's layers that show the current dataset.

        Parameters
        ----------
        kinds : iterable of str, optional
            Only layers of these kinds (``'movie'``, ``'mean'``, ``'std'``,
            ``'kurtosis'``); default all.

        Returns
        -------
        list of napari layers
        """
        if self.dataset is None:
            return []
        wanted = None if kinds is None else set(kinds)
        out = []
        for layer in self.viewer.layers:
            meta = sima_metadata(layer)
            if meta is None or meta.get("dataset") is not self.dataset:
                continue
            if wanted is None or meta.get("kind") in wanted:
                out.append(layer)
        return out

    def set_dataset(
        self,
        dataset: ImagingDataset | None,
        name: str = "",
        source: str | None = None,
        options: MovieOptions | dict[str, Any] | None = None,
    ) -> None:
        """Show ``dataset`` in the widget (without adding layers).

        Parameters
        ----------
        dataset : ImagingDataset or None
            The dataset (None clears the widget).
        name : str
            Name stem of its layers.
        source : str, optional
            File or folder it came from.
        options : MovieOptions or dict, optional
            Options its movie was opened with (shown in the status line).
        """
        if self.is_computing:
            self.cancel_projections()
        self.dataset = dataset
        self.name = name
        self.source = source
        if isinstance(options, dict):
            options = MovieOptions(
                **{k: v for k, v in options.items() if k in MovieOptions.__dataclass_fields__}
            )
        self._options = options or MovieOptions()
        self._update_controls()

    # -- actions --------------------------------------------------------------------------
    def open_path(self, path: str | os.PathLike) -> bool:
        """Open a movie file or a dataset folder and add its layers.

        Movie files are read with the format options of the widget.  Opening the file
        already shown replaces its layers (this is how "Reopen" works).

        Parameters
        ----------
        path : path-like
            ``.tif``, ``.tiff``, ``.h5``, ``.hdf5`` movie or ``.sima`` folder.

        Returns
        -------
        bool
            True on success; on failure the user gets an error notification.
        """
        try:
            opened = open_source(path, self.movie_options())
            layers = opened.layer_data()
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        if (
            self.dataset is not None
            and self.source is not None
            and (os.path.abspath(self.source) == opened.path)
        ):
            for layer in self.dataset_layers():
                self.viewer.layers.remove(layer)
        self._add_layers(layers)
        self.set_dataset(opened.dataset, opened.name, opened.path, opened.options)
        for notice in opened.notices:
            show_info(notice)
        return True

    def reopen(self) -> bool:
        """Reopen the current movie file with the format options of the widget.

        Returns
        -------
        bool
            True on success.
        """
        if self.source is None:
            show_warning("Nothing to reopen: this dataset was not opened from a file.")
            return False
        return self.open_path(self.source)

    def use_selected_layer(self) -> bool:
        """Show the dataset behind the selected image layer.

        A layer made by napari-sima brings its dataset; a plain in-memory image layer
        of 3 (``t, y, x``) or 4 (``t, z, y, x``) dimensions is wrapped into a new
        in-memory dataset and linked to it.

        Returns
        -------
        bool
            True when a dataset was found.
        """
        layer = self.viewer.layers.selection.active
        if layer is None:
            show_warning("Select an image layer first.")
            return False
        meta = sima_metadata(layer)
        if meta is not None and meta.get("dataset") is not None:
            self.set_dataset(
                meta["dataset"],
                str(meta.get("base_name", layer.name)),
                meta.get("source"),
                meta.get("open_options"),
            )
            return True
        return self._adopt_plain_layer(layer)

    def set_channel_names(self, names: str | Iterable[str]) -> bool:
        """Rename the channels of the dataset and of its layers.

        Parameters
        ----------
        names : str or iterable of str
            Comma-separated names, or a list; one per channel, unique.  A dataset
            with a folder is saved at once.

        Returns
        -------
        bool
            True on success.
        """
        if self.dataset is None:
            show_warning("No dataset: open a movie or a .sima folder first.")
            return False
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        names = [str(n).strip() for n in names]
        if any(not n for n in names):
            show_error(f"Channel names must not be empty, got {names}.")
            return False
        try:
            self.dataset.channel_names = names
        except USER_ERRORS as err:
            show_error(str(err))
            self._update_controls()
            return False
        self._rename_layers()
        self._update_controls()
        return True

    def create_dataset(self, savedir: str | os.PathLike) -> bool:
        """Save the dataset to a new ``.sima`` folder.

        Parameters
        ----------
        savedir : path-like
            The new folder (``.sima`` is appended when missing).  In-memory movies are
            written into it as ``.npy`` files; movie files are referenced.

        Returns
        -------
        bool
            True on success.
        """
        if self.dataset is None:
            show_warning("No dataset: open a movie or a .sima folder first.")
            return False
        try:
            self.dataset.save(savedir)
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        self._moved_to(self.dataset.savedir)
        show_info(f"Saved the dataset to {self.dataset.savedir}")
        return True

    def save_dataset(self, savedir: str | os.PathLike | None = None) -> bool:
        """Save the dataset to its folder (or to ``savedir``).

        Parameters
        ----------
        savedir : path-like, optional
            Save to this new folder instead, as :meth:`create_dataset`.

        Returns
        -------
        bool
            True on success.
        """
        if self.dataset is None:
            show_warning("No dataset: open a movie or a .sima folder first.")
            return False
        if savedir is not None:
            return self.create_dataset(savedir)
        if self.dataset.savedir is None:
            show_warning("This dataset has no folder yet: use “Create dataset…”.")
            return False
        try:
            self.dataset.save()
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        show_info(f"Saved the dataset to {self.dataset.savedir}")
        self._update_controls()
        return True

    def compute_projections(self, kinds: Iterable[str] | None = None) -> Any:
        """Compute the time projections in a worker thread and add them as layers.

        Parameters
        ----------
        kinds : iterable of str, optional
            Which of ``'mean'``, ``'std'``, ``'kurtosis'`` to add (default: the
            checked boxes).  All three are computed in one pass either way.

        Returns
        -------
        GeneratorWorker or None
            The running worker (its ``finished`` signal fires when done or
            cancelled), or None if nothing was started.
        """
        if self.dataset is None:
            show_warning("No dataset: open a movie or a .sima folder first.")
            return None
        if self.is_computing:
            show_warning("Projections are already being computed.")
            return None
        if kinds is None:
            kinds = [k for k, check in self.projection_checks.items() if check.isChecked()]
        kinds = list(kinds)
        unknown = sorted(set(kinds) - set(PROJECTION_KINDS))
        if unknown:
            show_error(f"Unknown projections {unknown}; choose from {list(PROJECTION_KINDS)}.")
            return None
        if not kinds:
            show_warning("Check at least one projection (mean, std or kurtosis).")
            return None
        self._projection_kinds = kinds
        self._projection_cancelled = False
        dataset = self.dataset
        self.projection_progress.setRange(0, max(1, dataset.num_frames))
        self.projection_progress.setValue(0)
        steps = dataset.iter_projections()
        slots = {
            "yielded": self._on_projection_yielded,
            "returned": lambda moments: self._on_projection_returned(dataset, moments),
            "errored": self._on_projection_errored,
            "finished": lambda: self._on_projection_finished(steps),
        }
        self._worker = _projection_steps(steps, _connect=slots)
        self._job_guard.watch([dataset], self._worker.quit, worker=self._worker, slots=slots)
        self._update_controls()
        return self._worker

    def cancel_projections(self) -> None:
        """Stop a running projection computation; no layers are added."""
        if self._worker is None:
            return
        self._projection_cancelled = True
        self._worker.quit()
        self.projection_progress.setValue(0)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Stop a running projection worker when the widget is closed."""
        self.cancel_projections()
        super().closeEvent(event)

    # -- handlers -------------------------------------------------------------------------
    def _on_open_file_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a movie", self._start_dir(), _MOVIE_FILTER
        )
        if path:
            self.open_path(path)

    def _on_open_folder_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Open a .sima dataset folder", self._start_dir()
        )
        if path:
            self.open_path(path)

    def _on_use_layer_clicked(self) -> None:
        self.use_selected_layer()

    def _on_reopen_clicked(self) -> None:
        self.reopen()

    def _on_apply_names_clicked(self) -> None:
        self.set_channel_names(self.channel_names_edit.text())

    def _on_create_clicked(self) -> None:
        if self.dataset is None:
            show_warning("No dataset: open a movie or a .sima folder first.")
            return
        default = os.path.join(self._start_dir(), f"{self.name or 'dataset'}.sima")
        path, _ = QFileDialog.getSaveFileName(
            self, "Create a dataset folder", default, "Dataset folders (*.sima)"
        )
        if path:
            self.create_dataset(path)

    def _on_save_clicked(self) -> None:
        if self.dataset is not None and self.dataset.savedir is None:
            self._on_create_clicked()
        else:
            self.save_dataset()

    def _on_projections_clicked(self) -> None:
        self.compute_projections()

    def _on_cancel_clicked(self) -> None:
        self.cancel_projections()

    def _on_projection_yielded(self, progress: tuple[int, int]) -> None:
        done, total = progress
        self.projection_progress.setRange(0, max(1, int(total)))
        self.projection_progress.setValue(int(done))

    def _on_projection_returned(self, dataset: ImagingDataset, moments: Moments) -> None:
        if self._projection_cancelled:
            return
        layers = projection_layer_data(
            moments,
            dataset,
            self.name or "dataset",
            kinds=self._projection_kinds,
            source=self.source,
        )
        self._add_or_update_projection_layers(dataset, layers)

    def _on_projection_errored(self, err: Exception) -> None:
        show_error(f"Computing the projections failed: {err}")

    def _on_projection_finished(self, steps: Generator[Any, None, Any]) -> None:
        # a quit worker leaves the computation suspended: close it (no-op when done)
        steps.close()
        self._job_guard.release()
        self._worker = None
        try:
            if self._projection_cancelled:
                self.projection_progress.setValue(0)
            self._update_controls()
        except RuntimeError:  # the Qt side of the widget is gone (closed with the viewer)
            pass

    # -- helpers --------------------------------------------------------------------------
    def _start_dir(self) -> str:
        if self.source:
            return os.path.dirname(os.path.abspath(self.source))
        return os.getcwd()

    def _add_layers(self, layers: list[LayerDataTuple]) -> list[Layer]:
        added = []
        for data, kwargs, layer_type in layers:
            added.append(getattr(self.viewer, f"add_{layer_type}")(data, **kwargs))
        return added

    def _add_or_update_projection_layers(
        self, dataset: ImagingDataset, layers: list[LayerDataTuple]
    ) -> None:
        existing = {}
        for layer in self.viewer.layers:
            meta = sima_metadata(layer)
            if meta is not None and meta.get("dataset") is dataset:
                existing[(meta.get("kind"), meta.get("channel"))] = layer
        for data, kwargs, layer_type in layers:
            meta = kwargs["metadata"][METADATA_KEY]
            layer = existing.get((meta["kind"], meta["channel"]))
            if layer is None:
                self._add_layers([(data, kwargs, layer_type)])
            else:
                layer.data = data
                layer.contrast_limits = kwargs["contrast_limits"]

    def _rename_layers(self) -> None:
        if self.dataset is None:
            return
        names = self.dataset.channel_names
        for layer in self.dataset_layers():
            meta = sima_metadata(layer)
            if meta is not None and "base_name" in meta and "channel" in meta:
                layer.name = rebuilt_layer_name(meta, names)

    def _moved_to(self, savedir: str | None) -> None:
        """Record that the dataset now lives in ``savedir``."""
        if savedir is None:
            return
        for layer in self.dataset_layers():
            meta = sima_metadata(layer)
            if meta is not None:
                meta["source"] = savedir
        self.source = savedir
        self._update_controls()

    def _adopt_initial_dataset(self) -> None:
        active = self.viewer.layers.selection.active
        candidates = ([active] if active is not None else []) + list(self.viewer.layers)
        for layer in candidates:
            meta = sima_metadata(layer)
            if meta is not None and meta.get("dataset") is not None:
                self.set_dataset(
                    meta["dataset"],
                    str(meta.get("base_name", layer.name)),
                    meta.get("source"),
                    meta.get("open_options"),
                )
                return

    def _adopt_plain_layer(self, layer: Layer) -> bool:
        from ..core import ImagingDataset, Sequence

        data = getattr(layer, "data", None)
        if not isinstance(layer, napari.layers.Image) or not isinstance(data, np.ndarray):
            show_warning(
                f"Layer {layer.name!r} is not an in-memory image layer; open its file with "
                f"“Open movie…” instead."
            )
            return False
        if getattr(layer, "rgb", False) or data.ndim not in _LAYER_DIM_ORDERS:
            show_warning(
                f"Layer {layer.name!r} has {data.ndim} dimensions; a movie layer needs "
                f"(t, y, x) or (t, z, y, x)."
            )
            return False
        try:
            seq = Sequence.create("ndarray", data, _LAYER_DIM_ORDERS[data.ndim])
            dataset = ImagingDataset([seq], None)
        except USER_ERRORS as err:
            show_error(str(err))
            return False
        layer.metadata = {
            **dict(layer.metadata),
            METADATA_KEY: {
                "kind": "movie",
                "source": None,
                "dataset": dataset,
                "sequence": seq,
                "sequence_index": 0,
                "channel": 0,
                "base_name": layer.name,
                "show_sequence_index": False,
                "open_options": {},
            },
        }
        self.set_dataset(dataset, layer.name, None, None)
        return True

    def _update_controls(self) -> None:
        ds = self.dataset
        has = ds is not None
        computing = self.is_computing
        self.source_edit.setText(self.source or ("(in memory) " + self.name if has else ""))
        for w in (self.apply_names_button, self.channel_names_edit, self.create_button):
            w.setEnabled(has and not computing)
        self.save_button.setEnabled(has and not computing)
        self.projections_button.setEnabled(has and not computing)
        self.cancel_button.setEnabled(computing)
        self.reopen_button.setEnabled(
            self.source is not None and os.path.isfile(self.source) and not computing
        )
        self.sequence_list.clear()
        if ds is None:
            self.info_label.setText("No dataset.")
            self.savedir_label.setText("")
            self.channel_names_edit.setText("")
            self.format_status_label.setText("")
            return
        try:
            sequences = ds.sequences
        except USER_ERRORS as err:  # e.g. a loaded folder whose movies have moved
            self.info_label.setText(f"Cannot open the movies: {err}")
            return
        z, y, x, c = ds.frame_shape
        self.info_label.setText(
            f"{ds.num_sequences} sequence(s), {ds.num_frames} frames in all; frame "
            f"{z} plane(s) × {y} × {x} px × {c} channel(s)"
            + (" — read-only" if ds.read_only else "")
        )
        self.channel_names_edit.setText(", ".join(ds.channel_names))
        for i, seq in enumerate(sequences):
            t, sz, sy, sx, sc = seq.shape
            files = seq.files
            where = f" — {os.path.basename(files[0])}" if files else ""
            self.sequence_list.addItem(
                f"seq {i}: {t} frames × {sz} × {sy} × {sx} × {sc} ({seq.dtype}){where}"
            )
        self.savedir_label.setText(
            f"Folder: {ds.savedir}"
            if ds.savedir
            else "Folder: none (in memory; use Create dataset…)"
        )
        self.format_status_label.setText(self._describe_options())

    def _describe_options(self) -> str:
        if self.source is None or not os.path.isfile(self.source):
            return ""
        o = self._options
        suffix = os.path.splitext(self.source)[1].lower()
        if suffix in HDF5_SUFFIXES:
            return (
                f"Read {source_name(self.source)} as HDF5 dataset {o.key!r}, "
                f"dim order {o.dim_order!r}."
            )
        return (
            f"Read {source_name(self.source)} as TIFF with {o.num_planes} plane(s) × "
            f"{o.num_channels} channel(s) interleaved (unless the file's metadata says otherwise)."
        )


__all__ = ["DatasetWidget"]
