"""Base class of the docks that run one long job on a dataset of the viewer's layers.

The Extract, Infer spikes, Segment and Pipeline docks share their scaffolding: a
dataset box filled from the layers napari-sima added (refreshed when layers come and
go), the dataset of the active layer adopted when the dock opens, one worker at a
time guarded by :class:`~napari_sima._widgets._common.JobGuard` (cancelled when the
dataset's layers are removed or the viewer closes), Run / Cancel buttons and a status
line.  :class:`DatasetDock` holds that scaffolding; a dock says which datasets it can
work on (:attr:`DatasetDock.capability`) and implements ``run``, ``cancel``,
``_update_controls`` and ``_on_dataset_set`` (filling its boxes for a new dataset).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QComboBox, QPushButton, QWidget

from .._layers import sima_metadata, source_name, unwrap
from ._common import JobGuard, datasets_in_layers, fill_dataset_combo, make_button

if TYPE_CHECKING:
    import napari

    from ..core import ImagingDataset

logger = logging.getLogger(__name__)


class DatasetDock(QWidget):
    """A dock working on one dataset of the viewer, with one worker at a time.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers offer the datasets.
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    dataset : ImagingDataset or None
        The dataset the dock works on.

    Notes
    -----
    Subclasses build their widgets (including ``dataset_combo`` and ``status_label``)
    in ``__init__`` after calling ``super().__init__``, then call
    :meth:`_start_following_layers`.  They implement ``cancel()``,
    ``_update_controls()`` and ``_on_dataset_set(changed)`` (fill their boxes for a
    newly chosen dataset); ``run()`` is what the Run button calls.
    """

    #: Attribute a dataset must have for the dock to offer it.
    capability: ClassVar[str] = "savedir"
    #: What the dock runs, for log messages (e.g. ``'extraction'``).
    job_name: ClassVar[str] = "job"
    #: Said when another dataset is chosen while a job runs.
    busy_message: ClassVar[str] = "A job is running"

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.dataset: ImagingDataset | None = None
        self._datasets: list[tuple[str, ImagingDataset]] = []
        self._worker: Any = None
        self._job: Any = None
        self._status_is_hint = False
        # cancels the job when the dataset's layers are removed or the dock deleted
        self._job_guard = JobGuard(self, viewer, self.cancel)

    def _start_following_layers(self) -> None:
        """Follow the viewer's layers, fill the dataset box and adopt a dataset."""
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.refresh_datasets()
        self._adopt_initial_dataset()
        self._update_controls()

    # -- what subclasses implement --------------------------------------------------------
    def _on_dataset_set(self, changed: bool) -> None:
        """Fill the dock's boxes for :attr:`dataset` (``changed``: a different one)."""

    def cancel(self) -> None:  # pragma: no cover
        """Stop the running job."""
        raise NotImplementedError

    def run(self) -> Any:  # pragma: no cover
        """Start the job."""
        raise NotImplementedError

    def _update_controls(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _on_layers_refreshed(self) -> None:
        """React to a layer change that kept the current dataset (default: update)."""
        self._update_controls()

    def _on_no_initial_dataset(self) -> None:
        """React to the dock opening on a viewer without datasets (default: nothing)."""

    # -- state ----------------------------------------------------------------------------
    def set_dataset(self, dataset: ImagingDataset | None) -> bool:
        """Work on ``dataset`` (None clears the dock).

        Parameters
        ----------
        dataset : ImagingDataset or None
            The dataset; it need not be shown in the viewer.

        Returns
        -------
        bool
            True on success; False while a job runs on another dataset (a warning
            says so).
        """
        dataset = unwrap(dataset)
        if self.is_running and dataset is not self.dataset:
            show_warning(f"{self.busy_message}: cancel it before choosing another dataset.")
            self.refresh_datasets()
            return False
        changed = dataset is not self.dataset
        self.dataset = dataset
        self.refresh_datasets()
        self._on_dataset_set(changed)
        self._update_controls()
        return True

    @property
    def is_running(self) -> bool:
        """Whether a worker is running."""
        return self._worker is not None

    def refresh_datasets(self) -> None:
        """Rebuild the dataset box from the viewer's layers (and the current dataset)."""
        name = self._name_of(self.dataset) if self.dataset is not None else "dataset"
        found = datasets_in_layers(self._layers(), self.dataset, name)
        self._datasets = [(n, ds) for n, ds in found if hasattr(ds, self.capability)]
        fill_dataset_combo(self.dataset_combo, self._datasets, self.dataset)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Stop a running job when the widget is closed."""
        self.cancel()
        super().closeEvent(event)

    # -- handlers -------------------------------------------------------------------------
    def _on_run_clicked(self) -> None:
        self.run()

    def _on_cancel_clicked(self) -> None:
        self.cancel()

    def _on_dataset_combo_changed(self, index: int) -> None:
        if 0 <= index < len(self._datasets):
            self.set_dataset(self._datasets[index][1])

    def _on_layers_changed(self, event: Any = None) -> None:
        try:
            self.refresh_datasets()
            if self.dataset is None and self._datasets:
                self.set_dataset(self._datasets[0][1])
            else:
                self._on_layers_refreshed()
        except RuntimeError:  # the Qt side of the widget is gone
            logger.debug("layer event after the %s dock was deleted", self.job_name,
                         exc_info=True)

    # -- helpers --------------------------------------------------------------------------
    def _start_worker(
        self,
        job: Any,
        make_worker: Callable[..., Any],
        datasets: list[Any],
        *,
        yields: bool = True,
        quit_on_cancel: bool = True,
    ) -> Any:
        """Start the worker of ``job`` and guard it; return the worker.

        ``make_worker(job, _connect=slots)`` is the dock's ``thread_worker``; its
        ``finished`` signal goes to ``_on_worker_finished(job)`` and (``yields``) its
        ``yielded`` one to ``_on_worker_yielded``.  The job (with a
        ``cancel_requested`` event) is stopped through that event, and also by quitting
        the worker when ``quit_on_cancel``, if the ``datasets`` leave the viewer.
        """
        slots: dict[str, Callable[..., Any]] = {
            "finished": lambda: self._on_worker_finished(job)
        }
        if yields:
            slots["yielded"] = self._on_worker_yielded
        self._job = job
        self._worker = make_worker(job, _connect=slots)
        stops = [job.cancel_requested.set]
        if quit_on_cancel:
            stops.append(self._worker.quit)
        self._job_guard.watch(datasets, *stops, worker=self._worker, slots=slots)
        self._update_controls()
        return self._worker

    def _make_dataset_combo(
        self, parent: QWidget, tooltip: str = "Datasets of the layers in the viewer"
    ) -> QComboBox:
        """Create :attr:`dataset_combo`, the box choosing the dataset."""
        self.dataset_combo = QComboBox(parent)
        self.dataset_combo.setObjectName("dataset_combo")
        self.dataset_combo.setToolTip(tooltip)
        self.dataset_combo.currentIndexChanged.connect(self._on_dataset_combo_changed)
        return self.dataset_combo

    def _button(self, text: str, object_name: str, slot: Any, parent: QWidget) -> QPushButton:
        return make_button(text, object_name, slot, parent)

    def _layers(self) -> list[Any]:
        return [unwrap(layer) for layer in self.viewer.layers]

    def _name_of(self, dataset: ImagingDataset | None) -> str:
        if dataset is None:
            return ""
        for name, ds in self._datasets:
            if ds is dataset:
                return name
        return source_name(dataset.savedir) if dataset.savedir else "dataset"

    def _adopt_initial_dataset(self) -> None:
        active = unwrap(self.viewer.layers.selection.active)
        meta = sima_metadata(active) if active is not None else None
        ds = unwrap(meta.get("dataset")) if meta is not None else None
        if ds is not None and hasattr(ds, self.capability):
            self.set_dataset(ds)
        elif self._datasets:
            self.set_dataset(self._datasets[0][1])
        else:
            self._on_no_initial_dataset()

    def _set_status(self, text: str, hint: bool = False) -> None:
        self.status_label.setText(text)
        self._status_is_hint = hint


__all__ = ["DatasetDock"]
