"""Docks under stress: removing a dataset's layers or closing the viewer while a job runs.

Every dock that runs long work in a thread worker (Dataset projections, Extract, Infer
spikes, Segment, Sessions estimate, Pipeline) is docked in a real viewer and started
on a real dataset whose job takes a second or more (a 1,600-frame 256 x 256 TIFF movie,
cvxpy spike inference, normalized cuts on a synthetic calcium movie).  Then the
dataset's image layers are removed — the job is cancelled and the dock can run again —
and, on a second run, the viewer is closed.  Each time: no exception reaches Qt or
napari (no error notification either), the worker's thread ends within a few seconds
(Qt pool and Python thread counts back to their baseline) and nothing half-written is
stored: the dataset's description and set indexes are byte for byte what they were,
or — for a job quit while it was storing its result — hold the complete result.

The last test repeats cheap actions in one viewer and checks that layers, threads,
open files and live datasets do not grow (``benchmarks/bench_gui_leaks.py`` measures
50 repetitions of every dock action).
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import QEvent, QThreadPool
from qtpy.QtWidgets import QApplication

from napari_sima._layers import sima_metadata
from napari_sima.core import ROI, ImagingDataset, Sequence

pytestmark = pytest.mark.filterwarnings("ignore:sigma estimate:RuntimeWarning")

#: The big movie: 1,600 frames of 256 x 256 uint16 (210 MB): extraction and the
#: sessions' mean images take over a second on it (projections 0.1 s once cached).
FRAMES, SIZE = 1600, 256
#: Cells drawn in the big movie, ``(y, x, radius)``: their disks are the ROI set 'cells'.
CELLS = [(20 + 30 * (k % 8), 20 + 30 * (k // 8), 6) for k in range(64)]
#: How long a cancelled worker may take to end (ms).
CANCEL_MS = 10_000
#: How long a job runs before it is interrupted (ms).
RUN_MS = 150
#: Repetitions of the leak test (each adds and removes a few layers; napari collects
#: garbage at each removal, a third of a second here).
REPEATS = 6


# --------------------------------------------------------------------------- data
def _disk(cy: int, cx: int, r: int, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture(scope="module")
def big_tif(tmp_path_factory) -> Path:
    """The big movie: a textured field, cells that blink, noise."""
    path = tmp_path_factory.mktemp("movie") / "big.tif"
    rng = np.random.default_rng(0)
    base = rng.integers(200, 400, size=(SIZE, SIZE)).astype(np.uint16)
    cells = np.zeros((SIZE, SIZE), np.uint16)
    for cy, cx, r in CELLS:
        cells[_disk(cy, cx, r)] = 300
    noise = rng.integers(0, 100, size=(32, SIZE, SIZE)).astype(np.uint16)
    pages = (base + noise[t % 32] + cells * ((t // 7) % 3 == 0) for t in range(FRAMES))
    tifffile.imwrite(path, pages, shape=(FRAMES, SIZE, SIZE), dtype=np.uint16)
    return path


def big_dataset(big_tif: Path, folder: Path, rois: bool = True) -> Path:
    """A dataset folder reading the big movie (with the ROI set 'cells')."""
    ds = ImagingDataset([Sequence.create("TIFF", str(big_tif))], folder)
    if rois:
        ds.add_ROIs([ROI(mask=_disk(cy, cx, r)[None]) for cy, cx, r in CELLS], "cells")
    ds.close()
    return folder


@pytest.fixture(scope="module")
def cells_template(tmp_path_factory) -> Path:
    """A synthetic calcium movie (300 frames of 96 x 96, 12 cells) saved as a folder."""
    from napari_sima.core.synthetic import make_calcium_movie

    movie = make_calcium_movie(
        num_frames=300, frame_shape=(1, 96, 96, 1), num_sequences=1, num_cells=12
    )
    path = tmp_path_factory.mktemp("cells") / "cells.sima"
    ImagingDataset([Sequence.create("ndarray", movie.sequences[0], "tzyxc")], path).close()
    return path


@pytest.fixture
def cells_folder(cells_template, tmp_path) -> Path:
    """A copy of the calcium movie's folder (normalized cuts take seconds on it)."""
    return Path(shutil.copytree(cells_template, tmp_path / "cells.sima"))


@pytest.fixture(scope="module")
def spikes_template(tmp_path_factory) -> Path:
    """A folder with the signal set 'signals': 30 calcium traces of 1,500 frames."""
    folder = tmp_path_factory.mktemp("spikes")
    rng = np.random.default_rng(1)
    movie = rng.normal(300, 20, size=(1500, 60, 60))
    rois = []
    for k in range(30):
        mask = _disk(6 + 10 * (k // 6), 6 + 10 * (k % 6), 3, (60, 60))
        spikes = rng.random(1500) < 0.03
        calcium = np.zeros(1500)
        for t in range(1, 1500):
            calcium[t] = 0.9 * calcium[t - 1] + spikes[t]
        movie[:, mask] += 200 * calcium[:, None]
        rois.append(ROI(mask=mask[None]))
    tif = folder / "s.tif"
    tifffile.imwrite(tif, movie.clip(0, 65535).astype(np.uint16))
    ds = ImagingDataset([Sequence.create("TIFF", str(tif))], folder / "s.sima")
    ds.add_ROIs(rois, "cells")
    ds.extract("cells", label="signals")
    ds.close()
    return folder / "s.sima"


@pytest.fixture
def spikes_folder(spikes_template, tmp_path) -> Path:
    return Path(shutil.copytree(spikes_template, tmp_path / "s.sima"))


def stored_state(folder: Path) -> dict[str, str]:
    """Hashes of a dataset folder's description and set indexes (what a store changes)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(folder).rglob("*.json"))
        if path.name in ("index.json", "dataset.json")
    }


def unchanged_or_complete(folder: Path, before: dict[str, str], complete) -> None:
    """Nothing half-written: the folder is as it was, or ``complete(dataset)`` holds.

    A job quit after its last progress report (while it stores its result) finishes
    storing it: on a fast machine an extraction of a movie in the page cache may reach
    that point before the interruption is seen.
    """
    if stored_state(folder) != before:
        assert complete(ImagingDataset.load(folder))


def whole_signal_set(ds: ImagingDataset) -> bool:
    """Whether the dataset holds one signal set of all cells and frames of the movie."""
    (entry,) = ds.signals(0).values()
    return [np.shape(r) for r in entry["raw"]] == [(len(CELLS), FRAMES)]


def whole_projections(folder: Path) -> bool:
    """Whether the projection cache is absent or complete (a whole frame)."""
    path = folder / "projections.npz"
    return not path.exists() or np.load(path)["mean"].shape == (1, SIZE, SIZE, 1)


def open_folder(viewer, folder: Path) -> ImagingDataset:
    """Open a dataset folder with our reader; return the dataset behind its layers."""
    layers = viewer.open(str(folder), plugin="napari-sima")
    return sima_metadata(layers[0])["dataset"]


def remove_images(viewer, dataset) -> Callable[[], None]:
    """Return an action removing the movie and projection layers of ``dataset``."""

    def remove() -> None:
        layers = [
            layer
            for layer in viewer.layers
            if (m := sima_metadata(layer)) is not None
            and m.get("dataset") is dataset
            and m.get("kind") in ("movie", "mean", "std", "kurtosis")
        ]
        assert layers
        for layer in layers:
            viewer.layers.remove(layer)

    return remove


def dock(viewer, cls: type, name: str):
    widget = cls(viewer)
    viewer.window.add_dock_widget(widget, name=name)
    return widget


# --------------------------------------------------------------------------- watching
def python_threads() -> int:
    """``threading.active_count()`` without the entries of foreign threads.

    Python code running in a Qt pool thread that creates a ``threading.Thread`` (a
    ``ThreadPoolExecutor``, say) registers a ``_DummyThread`` for it, which Python
    keeps after that thread has ended; pool threads are counted by
    ``QThreadPool.activeThreadCount()`` instead.
    """
    return sum(not isinstance(t, threading._DummyThread) for t in threading.enumerate())


class Watch:
    """Baseline thread counts; exceptions reaching ``sys.excepthook`` or thread hooks."""

    def __init__(self, qtbot, notifications) -> None:
        self.qtbot = qtbot
        self.notifications = notifications
        self.pool = QThreadPool.globalInstance()
        self.base_pool = self.pool.activeThreadCount()
        self.base_threads = python_threads()
        self.exceptions: list = []

    def __enter__(self) -> Watch:
        self._hooks = (sys.excepthook, threading.excepthook)
        sys.excepthook = lambda *exc: self.exceptions.append(exc)
        threading.excepthook = lambda args: self.exceptions.append(args)
        return self

    def __exit__(self, *exc) -> None:
        sys.excepthook, threading.excepthook = self._hooks

    def threads_back(self) -> bool:
        return (
            self.pool.activeThreadCount() <= self.base_pool
            and python_threads() <= self.base_threads
        )

    def interrupted(self, worker, interrupt: Callable[[], None], run_ms: int = RUN_MS) -> None:
        """Let ``worker`` run ``run_ms``, call ``interrupt``; check it ends cleanly, quickly."""
        assert worker is not None
        finished: list[float] = []
        worker.finished.connect(lambda: finished.append(time.perf_counter()))
        self.qtbot.wait(run_ms)
        assert not finished, "the job ended before the test could interrupt it"
        interrupt()
        self.qtbot.waitUntil(lambda: bool(finished), timeout=CANCEL_MS)
        self.qtbot.waitUntil(self.threads_back, timeout=CANCEL_MS)
        self.qtbot.wait(50)  # the docks' own queued 'finished' handlers
        assert self.exceptions == []
        assert self.notifications.messages("error") == []


@pytest.fixture
def watch(qtbot, notifications):
    with Watch(qtbot, notifications) as w:
        yield w


# --------------------------------------------------------------------------- docks
def test_projections(viewer, watch, big_tif, tmp_path):
    from napari_sima._widgets.dataset_widget import DatasetWidget

    folder = big_dataset(big_tif, tmp_path / "d.sima", rois=False)
    widget = dock(viewer, DatasetWidget, "Dataset")
    assert widget.open_path(folder)
    # projections of the big movie take ~0.1 s once it is in the page cache: interrupt
    # them at once
    watch.interrupted(widget.compute_projections(), remove_images(viewer, widget.dataset), 5)
    assert not widget.is_computing and len(viewer.layers) == 0  # no projection layers
    assert widget.projections_button.isEnabled() and whole_projections(folder)
    (folder / "projections.npz").unlink(missing_ok=True)
    assert widget.open_path(folder)
    watch.interrupted(widget.compute_projections(), viewer.close, 5)
    assert whole_projections(folder)


def test_extract(viewer, watch, big_tif, tmp_path):
    from napari_sima._widgets.extract_widget import ExtractWidget

    folder = big_dataset(big_tif, tmp_path / "d.sima")
    before = stored_state(folder)
    dataset = open_folder(viewer, folder)
    widget = dock(viewer, ExtractWidget, "Extract")
    assert widget.dataset is dataset and widget.set_roi_source("cells")
    watch.interrupted(widget.run(), remove_images(viewer, dataset))
    assert not widget.is_running
    if widget.last_outcome is None:
        assert "nothing was stored" in widget.status_label.text()
        assert stored_state(folder) == before
    else:  # quit while storing: the whole set was stored
        assert whole_signal_set(ImagingDataset.load(folder))
        shutil.rmtree(folder / "signals")
    assert widget.set_dataset(open_folder(viewer, folder)) and widget.set_roi_source("cells")
    watch.interrupted(widget.run(), viewer.close)
    unchanged_or_complete(folder, before, whole_signal_set)


def test_spikes(viewer, watch, spikes_folder):
    from napari_sima._widgets.spikes_widget import SpikesWidget

    before = stored_state(spikes_folder)
    dataset = open_folder(viewer, spikes_folder)
    widget = dock(viewer, SpikesWidget, "Infer spikes")
    assert widget.dataset is dataset and widget.set_signal_set("signals")
    assert widget.set_options(solver="cvxpy")  # about 0.1 s per trace
    watch.interrupted(widget.run(), remove_images(viewer, dataset))
    assert not widget.is_running and widget.last_outcome is None
    assert widget.set_dataset(open_folder(viewer, spikes_folder))
    assert widget.set_signal_set("signals")
    watch.interrupted(widget.run(), viewer.close)
    assert stored_state(spikes_folder) == before


def test_segment(viewer, watch, cells_folder):
    from napari_sima._widgets.segment_widget import SegmentWidget

    before = stored_state(cells_folder)
    dataset = open_folder(viewer, cells_folder)
    widget = dock(viewer, SegmentWidget, "Segment")
    assert widget.dataset is dataset and widget.set_strategy("normcuts")
    watch.interrupted(widget.run(), remove_images(viewer, dataset))
    assert not widget.is_running and widget.last_rois is None
    assert widget.set_dataset(open_folder(viewer, cells_folder))
    watch.interrupted(widget.run(), viewer.close)
    assert stored_state(cells_folder) == before


def test_sessions_estimate(viewer, watch, big_tif, tmp_path):
    from napari_sima._widgets.sessions_widget import SessionsWidget

    folders = [big_dataset(big_tif, tmp_path / f"day{k}.sima") for k in (1, 2)]
    before = [stored_state(f) for f in folders]
    day1, day2 = (open_folder(viewer, f) for f in folders)
    widget = dock(viewer, SessionsWidget, "Sessions")
    assert [s.dataset for s in widget.sessions] == [day1, day2]
    assert widget.set_method("affine")
    watch.interrupted(widget.estimate(), remove_images(viewer, day2))
    assert not widget.is_running and widget.preview is None
    # the row of a dataset gone from the viewer goes too; it comes back with the dataset
    assert [s.dataset for s in widget.sessions] == [day1]
    day2 = open_folder(viewer, folders[1])
    assert [s.dataset for s in widget.sessions] == [day1, day2]
    watch.interrupted(widget.estimate(), viewer.close)
    assert [stored_state(f) for f in folders] == before


def test_pipeline(viewer, watch, cells_folder, tmp_path):
    from napari_sima._widgets.pipeline_widget import PipelineWidget

    before = stored_state(cells_folder)
    dataset = open_folder(viewer, cells_folder)
    widget = dock(viewer, PipelineWidget, "Pipeline")
    assert widget.dataset is dataset
    path = tmp_path / "p.yaml"
    path.write_text(
        "steps:\n  - segment: {strategy: normcuts, label: cells}\n  - extract: {label: s}\n"
    )
    assert widget.load_pipeline(path)
    watch.interrupted(widget.run(), remove_images(viewer, dataset))
    assert not widget.is_running and widget.last_report is None
    assert widget.set_dataset(open_folder(viewer, cells_folder))
    watch.interrupted(widget.run(), viewer.close)
    assert stored_state(cells_folder) == before


# --------------------------------------------------------------------------- leaks
def resources(viewer) -> dict[str, int]:
    """What repeated actions must not grow, measured after a garbage collection."""
    import psutil

    app = QApplication.instance()
    for _ in range(3):
        app.processEvents()
        app.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        gc.collect()
    return {
        "layers": len(viewer.layers),
        "python threads": python_threads(),
        "pool threads": QThreadPool.globalInstance().activeThreadCount(),
        "open files": len(psutil.Process().open_files()),
        "fds": len(os.listdir("/proc/self/fd")),
        "datasets": sum(isinstance(o, ImagingDataset) for o in gc.get_objects()),
    }


def test_repeated_actions_leak_nothing(viewer, qtbot, tmp_path, notifications):
    from napari_sima._widgets.dataset_widget import DatasetWidget
    from napari_sima._widgets.roi_widget import ROIManagerWidget
    from napari_sima._widgets.sessions_widget import SessionsWidget

    rng = np.random.default_rng(3)
    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, rng.integers(100, 300, size=(100, 64, 64)).astype(np.uint16))
    work = ImagingDataset([Sequence.create("TIFF", str(movie))], tmp_path / "w.sima")
    work.close()
    datasets = dock(viewer, DatasetWidget, "Dataset")
    rois = dock(viewer, ROIManagerWidget, "ROIs")
    dock(viewer, SessionsWidget, "Sessions")  # every dataset shown becomes a session row
    assert rois.set_dataset(open_folder(viewer, tmp_path / "w.sima"))

    def actions() -> None:
        assert datasets.open_path(movie)  # a new dataset with its own file handle
        assert datasets.compute_projections(["mean"]) is not None  # a worker
        qtbot.waitUntil(lambda: not datasets.is_computing, timeout=CANCEL_MS)
        remove_images(viewer, datasets.dataset)()
        assert rois.new_set("scratch") and rois.delete_set("scratch")

    actions()  # first runs: imports, caches
    before = resources(viewer)
    for _ in range(REPEATS):
        actions()
    after = resources(viewer)
    assert {k: v for k, v in after.items() if v > before[k]} == {}, (before, after)
    assert notifications.messages("error") == []
