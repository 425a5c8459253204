"""Small helpers shared by our dock widgets (dataset pickers, signal blocking, job guards)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QLabel, QPushButton, QWidget

from .._layers import PROJECTION_KINDS, sima_metadata, unwrap

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def blocked(widget: QWidget) -> Iterator[None]:
    """Block a widget's Qt signals inside the ``with`` block."""
    old = widget.blockSignals(True)
    try:
        yield
    finally:
        widget.blockSignals(old)


def datasets_in_layers(
    layers: Iterable[Any], current: Any = None, current_name: str = "dataset"
) -> list[tuple[str, Any]]:
    """Return ``(name, dataset)`` for each distinct dataset behind the layers.

    Parameters
    ----------
    layers : iterable of napari layers
        The viewer's layers (proxied or not).
    current : ImagingDataset, optional
        A dataset to keep in the list even when no layer shows it.
    current_name : str
        Its name in that case.

    Returns
    -------
    list of (str, ImagingDataset)
        In layer order; datasets are unwrapped from napari's proxies.
    """
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for layer in layers:
        meta = sima_metadata(layer)
        ds = unwrap(meta.get("dataset")) if meta is not None else None
        if ds is None or id(ds) in seen or not hasattr(ds, "frame_shape"):
            continue
        seen.add(id(ds))
        found.append((str(meta.get("base_name") or layer.name), ds))
    if current is not None and id(current) not in seen:
        found.append((current_name, current))
    return found


def fill_dataset_combo(combo: QComboBox, found: list[tuple[str, Any]], current: Any) -> None:
    """Show ``found`` datasets in a combo box (duplicate names numbered) and select ``current``."""
    with blocked(combo):
        combo.clear()
        counts: dict[str, int] = {}
        for name, ds in found:
            counts[name] = counts.get(name, 0) + 1
            combo.addItem(name if counts[name] == 1 else f"{name} ({counts[name]})")
            combo.setItemData(
                combo.count() - 1, str(ds.savedir or "in memory"), Qt.ItemDataRole.ToolTipRole
            )
        combo.setCurrentIndex(next((k for k, (_, ds) in enumerate(found) if ds is current), -1))


#: Errors from the core that are the user's to fix (their message is shown as is).
USER_ERRORS = (ValueError, KeyError, TypeError, OSError)


def user_message(err: BaseException) -> str:
    """Return the user-facing text of an error (a KeyError's message unquoted)."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    text = str(err)
    if isinstance(err, USER_ERRORS + (PermissionError,)):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class RefreshingComboBox(QComboBox):
    """A combo box that rebuilds its items just before showing its list."""

    def __init__(self, refresh: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._refresh = refresh

    def showPopup(self) -> None:  # noqa: N802 - Qt's name
        self._refresh()
        super().showPopup()


def make_button(text: str, object_name: str, slot: Any, parent: QWidget) -> QPushButton:
    """Return a push button with an object name (for tests) connected to ``slot``."""
    button = QPushButton(text, parent)
    button.setObjectName(object_name)
    button.clicked.connect(slot)
    return button


def make_status_label(parent: QWidget) -> QLabel:
    """Return the wrapped, selectable status line our docks show under their progress bar."""
    label = QLabel("", parent)
    label.setObjectName("status_label")
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


#: Kinds of our layers that show a dataset's images: movie channels and projections.
DATASET_IMAGE_KINDS = frozenset(("movie", *PROJECTION_KINDS))


def shows_dataset(layers: Iterable[Any], dataset: Any) -> bool:
    """Whether a movie or projection layer of ``dataset`` is among ``layers``.

    Parameters
    ----------
    layers : iterable of napari layers
        The viewer's layers (proxied or not).
    dataset : ImagingDataset
        The dataset (compared by identity, unwrapped from napari's proxy).

    Returns
    -------
    bool
    """
    dataset = unwrap(dataset)
    for layer in layers:
        meta = sima_metadata(layer)
        if (
            meta is not None
            and meta.get("kind") in DATASET_IMAGE_KINDS
            and unwrap(meta.get("dataset")) is dataset
        ):
            return True
    return False


def release_worker(worker: Any, slots: Mapping[str, Callable[..., Any]]) -> None:
    """Disconnect a dock's slots from a worker that has ended.

    napari (0.6.5 and later) puts every thread worker started while a viewer is open
    in that window's task list and keeps it there after it has ended, until the window
    closes; the worker keeps the slots connected to its signals, and they hold the
    dock, its job and the job's dataset (open movie files, an in-memory movie,
    results).  Docks therefore disconnect their slots when their worker has ended,
    and clear their job's references to data.

    Parameters
    ----------
    worker : WorkerBase
        The ended worker.
    slots : mapping
        ``{signal name: slot}``, as given to the worker (``_connect``).
    """
    for name, slot in slots.items():
        signal = getattr(worker, name, None)
        if signal is None:
            continue
        with contextlib.suppress(TypeError, RuntimeError):
            signal.disconnect(slot)


def _call_all(stops: list[Callable[[], Any]]) -> None:
    for stop in list(stops):
        try:
            stop()
        except Exception:  # noqa: BLE001 - stopping must go on with the others
            logger.debug("stopping a worker failed", exc_info=True)


class JobGuard:
    """Stop a dock's running job when its datasets leave the viewer or the dock is deleted.

    A dock creates one guard and tells it about each job it starts
    (:meth:`watch`) and ends (:meth:`release`).  While a job runs:

    * removing the last movie or projection layer of a dataset the job works on (one
      that was shown when the job started) calls ``on_gone`` in the GUI thread: the
      dock cancels the job, so no result is stored or shown for a dataset the user
      has closed;
    * when Qt deletes the dock (with the viewer's window, e.g. ``viewer.close()``),
      the job's ``stops`` are called: thread-safe callables that do not use the dock
      (``job.cancel_requested.set``, ``worker.quit``), so the worker thread ends at
      its next check instead of running on, or storing results, for a closed viewer.

    Parameters
    ----------
    widget : QWidget
        The dock.
    viewer : napari.viewer.Viewer
        Its viewer.
    on_gone : callable
        ``on_gone()``, usually the dock's ``cancel``.
    """

    def __init__(self, widget: QWidget, viewer: Any, on_gone: Callable[[], Any]) -> None:
        self._layers = viewer.layers
        self._on_gone = on_gone
        self._datasets: list[Any] = []
        self._stops: list[Callable[[], Any]] = []
        self._lasting: list[Callable[[], Any]] = []
        self._worker: Any = None
        self._slots: Mapping[str, Callable[..., Any]] = {}
        self._layers.events.removed.connect(self._on_removed)  # napari keeps a weak ref
        # the slot holds only the stop lists: Qt keeps it, so a reference to the dock
        # (or to this guard, which holds the dock) would keep the dock alive forever
        stops, lasting = self._stops, self._lasting

        def destroyed(*_: Any) -> None:
            _call_all(stops + lasting)
            stops.clear()

        widget.destroyed.connect(destroyed)

    def watch(
        self,
        datasets: Iterable[Any],
        *stops: Callable[[], Any],
        worker: Any = None,
        slots: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        """Guard a job that has just started.

        Parameters
        ----------
        datasets : iterable of ImagingDataset
            The datasets it works on; those shown in the viewer now are watched.
        *stops : callable
            Thread-safe callables that stop it without the dock.
        worker : WorkerBase, optional
            Its worker, and ``slots`` the dock connected to it (``{signal name: slot}``):
            :meth:`release` disconnects them (see :func:`release_worker`).
        slots : mapping, optional
        """
        self._datasets = [
            unwrap(ds) for ds in datasets if ds is not None and shows_dataset(self._layers, ds)
        ]
        self._stops[:] = stops
        self._worker, self._slots = worker, dict(slots or {})

    def add_stop(self, stop: Callable[[], Any]) -> None:
        """Call ``stop`` too when the dock is deleted (for the dock's other workers)."""
        self._lasting.append(stop)

    def release(self) -> None:
        """Stop guarding the job (it has ended); disconnect the dock's slots from its worker."""
        self._datasets = []
        self._stops.clear()
        worker, slots = self._worker, self._slots
        self._worker, self._slots = None, {}
        if worker is not None:
            release_worker(worker, slots)

    def _on_removed(self, event: Any = None) -> None:
        if not self._datasets or all(shows_dataset(self._layers, ds) for ds in self._datasets):
            return
        self._datasets = []
        try:
            self._on_gone()
        except RuntimeError:  # the Qt side of the dock is gone: stop without it
            logger.debug("a dataset left the viewer after its dock was deleted", exc_info=True)
            _call_all(self._stops)
