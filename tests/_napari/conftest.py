"""Fixtures for the napari-side tests (run under Xvfb: QT_QPA_PLATFORM=xcb)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the napari tests need a Qt binding")
pytest.importorskip("pytestqt", reason="the napari tests need pytest-qt")

SIMA_EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "sima-examples"
if not SIMA_EXAMPLES.is_dir():  # the repository may be checked out elsewhere
    SIMA_EXAMPLES = Path("/work/shared/data/sima-examples")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.gui)


@pytest.fixture
def examples() -> Path:
    """The SIMA example data folder (tests skip when it is absent)."""
    if not SIMA_EXAMPLES.is_dir():
        pytest.skip(f"SIMA example data not found at {SIMA_EXAMPLES}")
    return SIMA_EXAMPLES


class NotificationLog:
    """Collects napari notifications emitted during a test."""

    def __init__(self) -> None:
        self.items: list = []

    def __call__(self, notification) -> None:
        self.items.append(notification)

    def messages(self, severity: str | None = None) -> list[str]:
        """Return the messages, optionally only those of one severity ('error', 'info', ...)."""
        return [
            str(n.message)
            for n in self.items
            if severity is None or str(n.severity).lower().endswith(severity)
        ]


@pytest.fixture
def notifications() -> Iterator[NotificationLog]:
    """Record napari notifications (connects to ``notification_ready``)."""
    from napari.utils.notifications import notification_manager

    log = NotificationLog()
    notification_manager.notification_ready.connect(log)
    yield log
    notification_manager.notification_ready.disconnect(log)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def movie_tyx(rng) -> np.ndarray:
    """A small uint16 movie (t, y, x) with a bright square."""
    data = rng.integers(100, 200, size=(12, 24, 32), dtype=np.uint16)
    data[:, 5:10, 6:12] += 1000
    return data


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def dataset_widget(viewer, qtbot):
    from napari_sima._widgets.dataset_widget import DatasetWidget

    widget = DatasetWidget(viewer)
    qtbot.addWidget(widget)
    yield widget
    if widget.is_computing:
        widget.cancel_projections()
        qtbot.waitUntil(lambda: not widget.is_computing, timeout=30_000)


def _write_h5(
    path: os.PathLike, data: np.ndarray, labels: str | None = None, key: str = "imaging"
) -> Path:
    """Write ``data`` to an HDF5 file, with dimension labels when given."""
    import h5py

    with h5py.File(path, "w") as f:
        ds = f.create_dataset(key, data=data)
        if labels is not None:
            for dim, label in zip(ds.dims, labels, strict=True):
                dim.label = label
    return Path(path)


@pytest.fixture
def write_h5():
    """``write_h5(path, data, labels=None, key='imaging') -> Path``."""
    return _write_h5


#: How long a test waits for a dock's worker to finish or cancel (ms).
DOCK_WAIT_MS = 120_000


@pytest.fixture
def make_dock(viewer, qtbot):
    """Build docks of a class on the viewer: ``make_dock(SegmentWidget)``.

    Docks still running a worker at teardown are cancelled and waited for, so no
    worker outlives its test.
    """
    made: list = []

    def make(cls):
        widget = cls(viewer)
        qtbot.addWidget(widget)
        made.append(widget)
        return widget

    yield make
    for widget in made:
        if widget.is_running:
            widget.cancel()
            qtbot.waitUntil(lambda w=widget: not w.is_running, timeout=DOCK_WAIT_MS)

