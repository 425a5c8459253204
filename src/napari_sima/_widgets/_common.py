"""Small helpers shared by our dock widgets (dataset pickers, signal blocking)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QLabel, QPushButton, QWidget

from .._layers import sima_metadata, unwrap


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
