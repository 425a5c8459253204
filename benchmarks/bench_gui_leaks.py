"""Benchmark: do 50 repetitions of every dock action leak layers, threads or files? (issue 9)

One real ``napari.Viewer`` (Qt on X11: under Xvfb when there is no ``DISPLAY``) with
every napari-sima dock docked.  The data are made in a temporary folder: a 400-frame
128 x 128 uint16 TIFF movie with 16 blinking cells, a dataset folder ``d.sima`` reading
it with the ROI set ``'cells'`` (opened in the viewer for the actions that need a
dataset), two sessions ``day1.sima`` / ``day2.sima`` reading the same movie, and a
small synthetic calcium dataset for segmentation.  Each action leaves the viewer as it
found it (it removes the layers it opened), so any growth is a leak:

``open_dataset``
    Dataset dock: open ``d.sima`` (a new dataset object, the TIFF opened), remove its
    layers.
``projections``
    Dataset dock: open the TIFF movie itself, compute the projections (worker), remove
    the movie and projection layers.
``cancel_by_removal``
    Dataset dock: open the movie, start the projections and remove the movie layers at
    once (the job is cancelled), wait for the worker to end.
``roi_sets``
    ROIs dock: create a set, draw nothing, delete it.
``roi_imagej``
    ROIs dock: export the set ``'cells'`` to an ImageJ RoiSet zip, import it as a new
    set, delete that set.
``extract``
    Extract dock: extract ``'cells'`` into the signal set ``'leak'`` (replaced each
    time), with ΔF/F; the raster layer is replaced too.
``extract_cancel``
    Extract dock: start an extraction and cancel it.
``spikes``
    Infer spikes dock: OASIS on ``'leak'``.
``traces``
    Traces dock: show ``'leak'``, select three ROIs, switch to ΔF/F and back, clear.
``segment``
    Segment dock: a small normalized-cuts segmentation (set ``'seg'`` replaced).
``sessions_estimate``
    Sessions dock: estimate the affine transform day2 → day1 (worker).
``pipeline``
    Pipeline dock: a pipeline file with one ``extract`` step (label ``'pipe'``) on
    ``d.sima`` in a worker (the pipeline opens the folder itself); the set is deleted
    afterwards so that the next run computes again.
``viewer_close`` (fewer repetitions: a viewer takes a second to build)
    A new viewer with the Dataset and Extract docks, ``d.sima`` opened, an extraction
    started, the viewer closed while it runs.

For each action: one warm-up run (first imports, caches, the first raster layer),
then the counts before and after the repetitions, each taken after
``gc.collect()`` and processing Qt events: napari layers, Python threads
(``threading.active_count()``, and without the ``_DummyThread`` entries Python makes
for Qt pool threads that ran Python code), OS threads of the process, the Qt global
thread pool's active threads, open files (``psutil.Process().open_files()``), file
descriptors (``/proc/self/fd``), live ``ImagingDataset`` objects and the resident set
size.  A growth of open files, file descriptors, datasets, layers, Python threads or
active pool threads is a leak.  RSS is reported too, with its growth per run over the
second half of the runs: first-time caches and the allocator keeping freed memory
make it grow at first, a leak keeps it growing.

Run::

    .venv/bin/python benchmarks/bench_gui_leaks.py [--quick] [--repeats N] [--only a,b]

Prints a table and writes ``benchmarks/results/gui_leaks.json`` (also through
``benchmarks/run_all.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _support import ensure_display

HERE = Path(__file__).resolve().parent
REPEATS = 50
QUICK_REPEATS = 10
VIEWER_REPEATS = 20
QUICK_VIEWER_REPEATS = 5
FRAMES, SIZE = 400, 128
CELLS = [(20 + 28 * (k % 4), 20 + 28 * (k // 4), 6) for k in range(16)]
WAIT_S = 120.0
#: Counts whose growth is a leak.
LEAK_KEYS = ("layers", "python_threads_own", "qt_pool_active", "open_files", "fds", "datasets")


# ---------------------------------------------------------------------------------------
# Display and measuring
# ---------------------------------------------------------------------------------------


def _settle(app: Any, seconds: float = 0.05) -> None:
    """Process Qt events for a moment (queued 'finished' handlers, ``deleteLater``).

    Without a running event loop (``app.exec()``) Qt never deletes the objects given
    to ``deleteLater``; napari's event loop would, so they are deleted here.
    """
    from qtpy.QtCore import QEvent

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        app.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        time.sleep(0.005)


def counts(app: Any, viewer: Any | None) -> dict[str, float]:
    """The numbers watched for leaks, after a garbage collection."""
    import psutil
    from qtpy.QtCore import QThreadPool

    from napari_sima.core import ImagingDataset

    _settle(app)
    gc.collect()
    _settle(app)
    proc = psutil.Process()
    return {
        "layers": len(viewer.layers) if viewer is not None else 0,
        "python_threads": threading.active_count(),
        "python_threads_own": sum(
            not isinstance(t, threading._DummyThread) for t in threading.enumerate()
        ),
        "os_threads": proc.num_threads(),
        "qt_pool_active": QThreadPool.globalInstance().activeThreadCount(),
        "open_files": len(proc.open_files()),
        "fds": len(os.listdir("/proc/self/fd")),
        "datasets": sum(isinstance(o, ImagingDataset) for o in gc.get_objects()),
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
    }


def wait_until(app: Any, predicate: Callable[[], bool], what: str) -> None:
    end = time.perf_counter() + WAIT_S
    while not predicate():
        if time.perf_counter() > end:
            raise TimeoutError(f"{what} did not end within {WAIT_S} s")
        app.processEvents()
        time.sleep(0.002)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
def _disk(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_data(folder: Path) -> dict[str, Path]:
    """The movie, the dataset folders and the pipeline file (see the module notes)."""
    import tifffile

    from napari_sima.core import ROI, ImagingDataset, Sequence
    from napari_sima.core.synthetic import make_calcium_movie

    rng = np.random.default_rng(0)
    base = rng.integers(200, 400, size=(SIZE, SIZE)).astype(np.uint16)
    cells = np.zeros((SIZE, SIZE), np.uint16)
    for cy, cx, r in CELLS:
        cells[_disk(cy, cx, r)] = 300
    noise = rng.integers(0, 100, size=(16, SIZE, SIZE)).astype(np.uint16)
    movie = folder / "movie.tif"
    pages = (base + noise[t % 16] + cells * ((t // 7) % 3 == 0) for t in range(FRAMES))
    tifffile.imwrite(movie, pages, shape=(FRAMES, SIZE, SIZE), dtype=np.uint16)
    rois = [ROI(mask=_disk(cy, cx, r)[None]) for cy, cx, r in CELLS]
    paths = {"movie": movie}
    for name in ("d", "day1", "day2"):
        ds = ImagingDataset([Sequence.create("TIFF", str(movie))], folder / f"{name}.sima")
        ds.add_ROIs(rois, "cells")
        ds.close()
        paths[name] = folder / f"{name}.sima"
    small = make_calcium_movie(
        num_frames=100, frame_shape=(1, 64, 64, 1), num_sequences=1, num_cells=5, seed=2
    )
    seg = ImagingDataset(
        [Sequence.create("ndarray", np.asarray(small.sequences[0]), "tzyxc")], folder / "seg.sima"
    )
    seg.close()
    paths["seg"] = folder / "seg.sima"
    pipeline = folder / "pipe.yaml"
    pipeline.write_text("steps:\n  - extract: {rois: cells, label: pipe}\n")
    paths["pipeline"] = pipeline
    paths["zip"] = folder / "cells.zip"
    return paths


# ---------------------------------------------------------------------------------------
# The actions
# ---------------------------------------------------------------------------------------
class Bench:
    """A viewer with every dock, the data, and one method per action."""

    def __init__(self, app: Any, folder: Path) -> None:
        import napari

        from napari_sima._layers import sima_metadata
        from napari_sima._widgets.dataset_widget import DatasetWidget
        from napari_sima._widgets.extract_widget import ExtractWidget
        from napari_sima._widgets.pipeline_widget import PipelineWidget
        from napari_sima._widgets.roi_widget import ROIManagerWidget
        from napari_sima._widgets.segment_widget import SegmentWidget
        from napari_sima._widgets.sessions_widget import SessionsWidget
        from napari_sima._widgets.spikes_widget import SpikesWidget
        from napari_sima._widgets.traces_widget import TracesWidget
        from napari_sima.core import ImagingDataset

        self.app = app
        self.meta = sima_metadata
        self.paths = make_data(folder)
        self.viewer = viewer = napari.Viewer(show=False)
        # the docks that follow the viewer's datasets come after the working dataset
        self.dataset_dock = self._dock(DatasetWidget, "Dataset")
        layers = viewer.open(str(self.paths["d"]), plugin="napari-sima")
        self.ds = sima_metadata(layers[0])["dataset"]
        self.roi_dock = self._dock(ROIManagerWidget, "ROIs")
        self.extract_dock = self._dock(ExtractWidget, "Extract")
        self.spikes_dock = self._dock(SpikesWidget, "Infer spikes")
        self.traces_dock = self._dock(TracesWidget, "Traces")
        self.segment_dock = self._dock(SegmentWidget, "Segment")
        self.pipeline_dock = self._dock(PipelineWidget, "Pipeline")
        self.sessions_dock = self._dock(SessionsWidget, "Sessions")
        self.roi_dock.set_dataset(self.ds)
        self.roi_dock.show_set("cells")
        self.extract_dock.set_dataset(self.ds)
        self.extract_dock.set_roi_source("cells")
        self.extract_dock.label_edit.setText("leak")
        self.seg_ds = ImagingDataset.load(self.paths["seg"])
        self.segment_dock.set_dataset(self.seg_ds)
        self.segment_dock.set_strategy("normcuts")
        self.segment_dock.set_label("seg")
        day1 = ImagingDataset.load(self.paths["day1"])
        day2 = ImagingDataset.load(self.paths["day2"])
        assert self.sessions_dock.add_session(day1, name="day1") >= 0
        assert self.sessions_dock.add_session(day2, name="day2") >= 0
        self.sessions_dock.set_reference(self.sessions_dock.sessions[-2])
        self.sessions_dock.set_source(self.sessions_dock.sessions[-1])
        self.sessions_dock.set_method("affine")
        self.pipeline_dock.set_dataset(self.ds)
        assert self.pipeline_dock.load_pipeline(self.paths["pipeline"])

    def _dock(self, cls: type, name: str) -> Any:
        widget = cls(self.viewer)
        self.viewer.window.add_dock_widget(widget, name=name)
        return widget

    def _wait(self, widget: Any, attr: str = "is_running") -> None:
        wait_until(self.app, lambda: not getattr(widget, attr), type(widget).__name__)

    def _remove_dataset_layers(self, dataset: Any) -> None:
        for layer in [
            layer
            for layer in self.viewer.layers
            if (m := self.meta(layer)) is not None and m.get("dataset") is dataset
        ]:
            self.viewer.layers.remove(layer)

    # -- actions ------------------------------------------------------------------------
    def open_dataset(self) -> None:
        dock = self.dataset_dock
        assert dock.open_path(self.paths["d"])
        self._remove_dataset_layers(dock.dataset)

    def projections(self) -> None:
        dock = self.dataset_dock
        assert dock.open_path(self.paths["movie"])
        assert dock.compute_projections() is not None
        self._wait(dock, "is_computing")
        self._remove_dataset_layers(dock.dataset)

    def cancel_by_removal(self) -> None:
        dock = self.dataset_dock
        assert dock.open_path(self.paths["movie"])
        assert dock.compute_projections() is not None
        self._remove_dataset_layers(dock.dataset)
        self._wait(dock, "is_computing")

    def roi_sets(self) -> None:
        dock = self.roi_dock
        assert dock.new_set("tmp")
        assert dock.delete_set("tmp")
        assert dock.show_set("cells")

    def roi_imagej(self) -> None:
        dock = self.roi_dock
        assert dock.show_set("cells")
        assert dock.export_imagej(self.paths["zip"]) == len(CELLS)
        assert dock.new_set("imported")
        assert dock.import_imagej(self.paths["zip"]) == len(CELLS)
        assert dock.save_set() == "imported"
        assert dock.delete_set("imported")
        assert dock.show_set("cells")

    def extract(self) -> None:
        dock = self.extract_dock
        assert dock.run() is not None
        self._wait(dock)
        assert dock.last_outcome is not None and dock.last_outcome.label == "leak"

    def extract_cancel(self) -> None:
        dock = self.extract_dock
        assert dock.run() is not None
        dock.cancel()
        self._wait(dock)

    def spikes(self) -> None:
        dock = self.spikes_dock
        assert dock.set_dataset(self.ds)
        assert dock.set_signal_set("leak")
        assert dock.run() is not None
        self._wait(dock)
        assert dock.last_outcome is not None

    def traces(self) -> None:
        dock = self.traces_dock
        assert dock.set_signals(self.ds, "leak")
        dock.set_selection([0, 1, 2])
        assert dock.set_kind("dff")
        assert dock.set_kind("raw")
        dock.clear_signals()

    def segment(self) -> None:
        dock = self.segment_dock
        assert dock.run(replace=True) is not None
        self._wait(dock)
        assert dock.last_rois is not None

    def sessions_estimate(self) -> None:
        dock = self.sessions_dock
        assert dock.estimate() is not None
        self._wait(dock)
        assert dock.preview is not None

    def pipeline(self) -> None:
        dock = self.pipeline_dock
        assert dock.run() is not None
        self._wait(dock)
        assert dock.last_report is not None and dock.last_report.ok
        self.ds.delete_signals("pipe")

    def close(self) -> None:
        self.viewer.close()
        _settle(self.app, 0.2)


def viewer_close_once(app: Any, paths: dict[str, Path]) -> None:
    """A new viewer with two docks and a dataset, closed while an extraction runs."""
    import napari

    from napari_sima._widgets.dataset_widget import DatasetWidget
    from napari_sima._widgets.extract_widget import ExtractWidget

    viewer = napari.Viewer(show=False)
    dataset_dock = DatasetWidget(viewer)
    viewer.window.add_dock_widget(dataset_dock, name="Dataset")
    assert dataset_dock.open_path(paths["d"])
    extract_dock = ExtractWidget(viewer)
    viewer.window.add_dock_widget(extract_dock, name="Extract")
    assert extract_dock.set_roi_source("cells")
    worker = extract_dock.run()
    assert worker is not None
    finished: list[bool] = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.close()
    wait_until(app, lambda: bool(finished), "the extraction of a closed viewer")
    del viewer, dataset_dock, extract_dock, worker


ACTIONS = (
    "open_dataset",
    "projections",
    "cancel_by_removal",
    "roi_sets",
    "roi_imagej",
    "extract",
    "extract_cancel",
    "spikes",
    "traces",
    "segment",
    "sessions_estimate",
    "pipeline",
    "viewer_close",
)


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
def _growth(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 1) for k in before}


def run(
    quick: bool = False, *, repeats: int | None = None, only: list[str] | None = None
) -> dict[str, Any]:
    """Run the actions; return ``{action: {runs, seconds, before, after, growth, leak}}``."""
    display = ensure_display((1400, 900))
    import warnings

    from napari.qt import get_qapp

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # sigma estimates of noise
    app = get_qapp()
    n = repeats or (QUICK_REPEATS if quick else REPEATS)
    n_viewer = max(1, min(n, QUICK_VIEWER_REPEATS if quick else VIEWER_REPEATS))
    names = [a for a in ACTIONS if only is None or a in only]
    results: dict[str, Any] = {}
    folder = Path(tempfile.mkdtemp(prefix="napari-sima-leaks-"))
    bench = None
    try:
        baseline = counts(app, None)
        bench = Bench(app, folder)
        results["_setup"] = {
            "repeats": n,
            "viewer_repeats": n_viewer,
            "start": baseline,
            "with_docks_and_dataset": counts(app, bench.viewer),
        }
        for name in names:
            if name == "viewer_close":
                continue
            action = getattr(bench, name)
            action()  # warm-up
            results[name] = _repeat(app, action, n, bench.viewer)
            _print_row(name, results[name])
        action = None  # a bound method: it holds the bench
        bench.close()
        bench = None
        if "viewer_close" in names:
            (folder / "vc").mkdir()
            paths = make_data(folder / "vc")
            viewer_close_once(app, paths)  # warm-up
            results["viewer_close"] = _repeat(
                app, lambda: viewer_close_once(app, paths), n_viewer, None
            )
            _print_row("viewer_close", results["viewer_close"])
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(folder, ignore_errors=True)
        if display is not None:
            display.stop()
    leaks = [k for k, v in results.items() if not k.startswith("_") and v["leak"]]
    results["_summary"] = {"leaking_actions": leaks}
    return results


def _repeat(app: Any, action: Callable[[], None], n: int, viewer: Any) -> dict[str, Any]:
    """Run ``action`` ``n`` times; counts before, half-way and after."""
    before = counts(app, viewer)
    t0 = time.perf_counter()
    measuring = 0.0
    mid = before
    for i in range(n):
        action()
        if i + 1 == n // 2:
            t = time.perf_counter()
            mid = counts(app, viewer)
            measuring += time.perf_counter() - t
    seconds = time.perf_counter() - t0 - measuring
    after = counts(app, viewer)
    growth = _growth(before, after)
    late = n - n // 2
    return {
        "runs": n,
        "seconds": round(seconds, 2),
        "before": before,
        "half_way": mid,
        "after": after,
        "growth": growth,
        # the allocator and first-time caches make RSS grow at first; a leak keeps growing
        "rss_mb_per_run_second_half": round((after["rss_mb"] - mid["rss_mb"]) / late, 3),
        "leak": any(growth[k] > 0 for k in LEAK_KEYS),
    }


_COLUMNS = (
    "layers",
    "python_threads",
    "python_threads_own",
    "os_threads",
    "qt_pool_active",
    "open_files",
    "fds",
    "datasets",
    "rss_mb",
)
_HEAD = ("layers", "py thr", "py own", "OS thr", "Qt pool", "files", "fds", "datasets", "RSS MB")


def _print_row(name: str, entry: dict[str, Any]) -> None:
    cells = [f"{_fmt(entry['before'][k])}→{_fmt(entry['after'][k])}" for k in _COLUMNS]
    flag = "LEAK" if entry["leak"] else "ok"
    print(
        f"{name:<18} {entry['runs']:>4} {entry['seconds']:>7.1f} "
        + " ".join(f"{c:>13}" for c in cells)
        + f" {entry['rss_mb_per_run_second_half']:>+9.2f}  {flag}",
        flush=True,
    )


def _fmt(v: float) -> str:
    return f"{v:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} repetitions")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per action")
    parser.add_argument("--only", default=None, help="comma-separated actions")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    print(
        f"{'action':<18} {'runs':>4} {'s':>7} "
        + " ".join(f"{h:>13}" for h in _HEAD)
        + f" {'MB/run 2nd half':>9}",
        flush=True,
    )
    t0 = time.perf_counter()
    results = run(args.quick, repeats=args.repeats, only=only)
    out = {
        "benchmark": "gui_leaks",
        "quick": bool(args.quick),
        "seconds": round(time.perf_counter() - t0, 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": results,
    }
    if only is None and args.repeats is None:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "gui_leaks.json").write_text(json.dumps(out, indent=2))
    print("leaking actions:", results["_summary"]["leaking_actions"] or "none", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
