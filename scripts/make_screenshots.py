"""Regenerate the PNGs in ``screenshots/`` from a real napari window.

Run with the project's virtual environment (``make screenshots``)::

    .venv/bin/python scripts/make_screenshots.py [--outdir screenshots]

Without a ``DISPLAY`` the script starts a virtual X server (Xvfb) itself, through
``pyvirtualdisplay`` (installed with pytest-xvfb) or, failing that, by re-running
itself under ``xvfb-run``.  Mesa's llvmpipe renders the OpenGL canvas under Xvfb.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREEN_SIZE = (1600, 1000)
_REEXEC_FLAG = "NAPARI_SIMA_SCREENSHOTS_UNDER_XVFB"


def _ensure_display() -> object | None:
    """Start Xvfb when there is no display; return the display object to stop later."""
    if os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
        return None
    try:
        from pyvirtualdisplay import Display
    except ImportError:
        Display = None  # noqa: N806
    if Display is not None:
        display = Display(visible=False, size=SCREEN_SIZE, color_depth=24)
        display.start()
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        return display
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None or os.environ.get(_REEXEC_FLAG):
        sys.exit("No DISPLAY, and neither pyvirtualdisplay nor xvfb-run is available.")
    env = {**os.environ, _REEXEC_FLAG: "1", "QT_QPA_PLATFORM": "xcb"}
    screen = f"-screen 0 {SCREEN_SIZE[0]}x{SCREEN_SIZE[1]}x24"
    os.execvpe(xvfb_run, [xvfb_run, "-a", "-s", screen, sys.executable, *sys.argv], env)
    return None  # pragma: no cover - exec does not return


def _process_events(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _wait_until(condition, timeout: float = 120.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("timed out waiting for the viewer")
        QApplication.processEvents()
        time.sleep(0.02)


def _show_only_dock(viewer, *titles: str):
    """Hide every napari-sima dock but ``titles`` (e.g. ``'ROIs (napari-sima)'``).

    Returns the ``QDockWidget`` of each shown title, by title.
    """
    from qtpy.QtWidgets import QDockWidget

    shown = {}
    for dock in viewer.window._qt_window.findChildren(QDockWidget):
        name = getattr(dock, "name", dock.windowTitle())
        if name.endswith("(napari-sima)"):
            dock.setVisible(name in titles)
            if name in titles:
                shown[name] = dock
    return shown


@contextlib.contextmanager
def _demo_viewer():
    """The demo viewer (sample data, all docks) at the screenshot size; closed on exit."""
    from napari_sima._demo import DEMO_WINDOW_SIZE, run_demo

    viewer = run_demo(block=False)
    try:
        viewer.window.resize(*DEMO_WINDOW_SIZE)
        yield viewer
    finally:
        viewer.close()


def _fit_window(viewer) -> None:
    """Shrink the window back to the screenshot size (runs grow it while docks show)."""
    from napari_sima._demo import DEMO_WINDOW_SIZE

    _process_events(0.3)
    viewer.window.resize(*DEMO_WINDOW_SIZE)


def _save(viewer, outdir: Path, name: str) -> Path:
    """Let the viewer settle, then save the whole window as ``outdir / name``."""
    _close_notifications(viewer)
    _process_events(1.5)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    return path


def _show_true_cells(viewer, extract: bool = True):
    """Store the sample's true cells as ROI set 'true cells', show it, extract it.

    Returns the ROIs dock and the dataset.
    """
    from napari_sima._sample_data import sample_true_rois

    rois_widget = viewer.window.dock_widgets["ROIs (napari-sima)"]
    dataset = rois_widget.dataset
    rois = sample_true_rois()
    dataset.add_ROIs(rois, "true cells")
    rois_widget.show_set("true cells")
    rois_widget.set_color_by("roi")
    if extract:
        dataset.extract(rois, label="true cells", save_summary=False)
    return rois_widget, dataset


def _select_cells(viewer, rois_widget, visible: tuple, cells=(1, 4, 8)) -> None:
    """Show only ``visible`` layers (and the first movie), select three cells at frame 57."""
    layer = viewer.layers["ROIs: true cells"]
    for lay in viewer.layers:
        lay.visible = lay is layer or lay in visible or lay.name == "calcium seq 0 [GCaMP]"
    roi_col = layer.features["roi"].tolist()
    layer.selected_data = {i for i, r in enumerate(roi_col) if int(r) in cells}
    rois_widget.set_draw_mode("select")
    viewer.layers.selection.active = layer
    viewer.dims.set_current_step(0, 57)
    viewer.reset_view()


def _close_notifications(viewer) -> None:
    """Close the notification toasts on the canvas (the docks' status lines say it)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def dataset_widget_screenshot(outdir: Path) -> Path:
    """Open the demo, compute the projections and save ``dataset-widget.png``.

    Parameters
    ----------
    outdir : Path
        Folder for the PNG.

    Returns
    -------
    Path
        The written file.
    """
    with _demo_viewer() as viewer:
        _show_only_dock(viewer, "Dataset (napari-sima)")
        widget = viewer.window.dock_widgets["Dataset (napari-sima)"]
        widget.compute_projections()
        _wait_until(lambda: not widget.is_computing)
        # show the movie at a frame with transients; keep the projections in the list
        for layer in viewer.layers:
            if " mean " in layer.name or " std " in layer.name or " kurtosis " in layer.name:
                layer.visible = False
        viewer.layers.selection.active = viewer.layers["calcium mean [GCaMP]"]
        viewer.dims.set_current_step(0, 57)
        viewer.reset_view()
        return _save(viewer, outdir, "dataset-widget.png")


def roi_manager_screenshot(outdir: Path) -> Path:
    """Open the demo, show the sample's true cells as an ROI set, save ``roi-manager.png``.

    Some cells are tagged, accepted or rejected so the outline colours and the table of
    selected ROIs show; the ROIs dock is raised.

    Parameters
    ----------
    outdir : Path
        Folder for the PNG.

    Returns
    -------
    Path
        The written file.
    """
    import numpy as np

    from napari_sima._sample_data import sample_true_rois

    with _demo_viewer() as viewer:
        widget = viewer.window.dock_widgets["ROIs (napari-sima)"]
        dataset = widget.dataset
        rois = sample_true_rois()
        for k in (0, 2, 3, 5, 7, 8):
            rois[k].tags = {"accepted"}
        for k in (4, 10):
            rois[k].tags = {"rejected"}
        rois[2].tags |= {"PV"}
        rois[7].tags |= {"PV"}
        dataset.add_ROIs(rois, "true cells")
        widget.show_set("true cells")
        _show_only_dock(viewer, "ROIs (napari-sima)")
        layer = viewer.layers["ROIs: true cells"]
        # the mean GCaMP image under the outlines; movies and structural channel hidden
        for lay in viewer.layers:
            lay.visible = lay.name == layer.name or "mean [GCaMP]" in lay.name
            if "mean [GCaMP]" in lay.name:
                lay.colormap = "gray"  # green outlines (accepted) read better on gray
        # select a rejected cell and its nearest neighbour: the table lists both
        centres = [np.asarray(d)[:, 1:].mean(axis=0) for d in layer.data]
        dist = [np.hypot(*(c - centres[10])) if k != 10 else np.inf for k, c in enumerate(centres)]
        layer.selected_data = {10, int(np.argmin(dist))}
        widget.set_draw_mode("select")
        viewer.dims.current_step = (0,) * viewer.dims.ndim
        viewer.reset_view()
        return _save(viewer, outdir, "roi-manager.png")


def traces_screenshot(outdir: Path) -> Path:
    """Open the demo, extract the true cells, save ``traces.png``.

    The movie with the ROI outlines, the ROI × time raster under it, and the Traces
    dock (bottom) plotting three selected cells with the frame cursor.

    Parameters
    ----------
    outdir : Path
        Folder for the PNG.

    Returns
    -------
    Path
        The written file.
    """
    from napari_sima._raster import show_raster

    with _demo_viewer() as viewer:
        rois_widget, dataset = _show_true_cells(viewer)
        traces = viewer.window.dock_widgets["Traces (napari-sima)"]
        traces.set_signals(dataset, "true cells", channel=0)
        raster = show_raster(viewer, dataset, "true cells", channel=0, kind="raw")
        _show_only_dock(viewer, "ROIs (napari-sima)", "Traces (napari-sima)")
        _select_cells(viewer, rois_widget, (raster,))
        return _save(viewer, outdir, "traces.png")


def segment_screenshot(outdir: Path) -> Path:
    """Open the demo, segment the sample with the default strategy, save ``segment.png``.

    The Segment dock (right) after a run, with its parameter panel and steps, and the
    ROIs it found (shown by the ROIs dock's layer) over the mean GCaMP image.

    Parameters
    ----------
    outdir : Path
        Folder for the PNG.

    Returns
    -------
    Path
        The written file.
    """
    with _demo_viewer() as viewer:
        segment = viewer.window.dock_widgets["Segment (napari-sima)"]
        segment.run(replace=True)
        _wait_until(lambda: not segment.is_running, timeout=600.0)
        _show_only_dock(viewer, "Segment (napari-sima)")
        _fit_window(viewer)
        layer = viewer.layers[f"ROIs: {segment.last_label}"]
        for lay in viewer.layers:
            lay.visible = lay is layer or "mean [GCaMP]" in lay.name
            if "mean [GCaMP]" in lay.name:
                lay.colormap = "gray"
        viewer.layers.selection.active = layer
        viewer.dims.current_step = (0,) * viewer.dims.ndim
        viewer.reset_view()
        return _save(viewer, outdir, "segment.png")


def spikes_screenshot(outdir: Path) -> Path:
    """Open the demo, extract the true cells, infer their spikes, save ``spikes.png``.

    The Infer spikes dock (right) after a run, the spikes raster under the movie, and
    the Traces dock (bottom) with three selected cells: raw traces, their fits
    (dashed) and the spikes row.

    Parameters
    ----------
    outdir : Path
        Folder for the PNG.

    Returns
    -------
    Path
        The written file.
    """
    from qtpy.QtCore import Qt

    with _demo_viewer() as viewer:
        rois_widget, _ = _show_true_cells(viewer)
        spikes = viewer.window.dock_widgets["Infer spikes (napari-sima)"]
        spikes.refresh_signal_sets()
        spikes.set_signal_set("true cells")
        spikes.run()
        _wait_until(lambda: not spikes.is_running)
        docks = _show_only_dock(viewer, "Infer spikes (napari-sima)", "Traces (napari-sima)")
        # the run processed events with every dock shown, which grew the window: let
        # the layout see the hidden docks, then shrink it back
        _fit_window(viewer)
        _process_events(0.3)
        traces_dock = docks.get("Traces (napari-sima)")
        if traces_dock is not None:  # room for the traces and the spikes row
            viewer.window._qt_window.resizeDocks([traces_dock], [360], Qt.Orientation.Vertical)
            _process_events(0.3)
        _select_cells(viewer, rois_widget, (viewer.layers["raster: true cells [spikes]"],))
        return _save(viewer, outdir, "spikes.png")


def sessions_screenshot(outdir: Path) -> Path:
    """Open the demo with two more sessions of its field, align and register them.

    Days 2 and 3 see the sample's field rotated and shifted (a few cells lost, one
    new); the Sessions dock estimates both transforms onto the sample ("day 1"),
    shows the three ROI sets in day 1's space coloured by session with their
    registered ids, and ``sessions.png`` is saved.

    Parameters
    ----------
    outdir : Path
        Folder for the PNG.

    Returns
    -------
    Path
        The written file.
    """
    import numpy as np
    from qtpy.QtCore import Qt
    from skimage import transform as sk

    from napari_sima._sample_data import SAMPLE_CHANNELS, sample_true_rois
    from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence

    with _demo_viewer() as viewer:
        widget = viewer.window.dock_widgets["Sessions (napari-sima)"]
        day1 = widget.sessions[0].dataset
        cells = sample_true_rois()
        for k in (3, 6):
            cells[k].tags = {"PV"}
        day1.add_ROIs(cells, "cells")
        widget.set_roi_set(0, "cells")
        mean = day1.time_averages[0]  # (y, x, c)
        shape = mean.shape[:2]
        rng = np.random.default_rng(5)
        for day, (angle, shift, lost) in enumerate(
            [(4.0, (5.0, -4.0), {2, 9}), (-3.0, (-6.0, 3.0), {5})], start=2
        ):
            tf = sk.SimilarityTransform(rotation=np.deg2rad(angle), translation=shift)
            frames = []
            for c in range(mean.shape[2]):
                warped = sk.warp(
                    mean[..., c], tf.inverse, order=1, preserve_range=True, mode="edge"
                )
                frames.append(warped)
            image = np.stack(frames, axis=-1)
            movie = image[None, None] + rng.normal(0, 8, size=(6, 1, *image.shape))
            seq = Sequence.create("ndarray", movie.clip(0).astype(np.uint16), "tzyxc")
            ds = ImagingDataset([seq], None, channel_names=list(SAMPLE_CHANNELS))

            def roi_tf(xy, tf=tf):
                return tf(np.asarray(xy)[:, :2] - 0.5) + 0.5 + rng.normal(0, 0.3, 2)

            kept = ROIList([r for k, r in enumerate(cells) if k not in lost])
            moved = list(kept.transform([roi_tf], im_shape=(1, *shape)))
            extra = np.array(
                [
                    [20.0, 100.0 + 4 * day, 0],
                    [27, 98 + 4 * day, 0],
                    [29, 105 + 4 * day, 0],
                    [22, 108 + 4 * day, 0],
                ]
            )
            moved.append(ROI(polygons=[extra], im_shape=(1, *shape)))
            for k, roi in enumerate(moved):
                roi.label = f"d{day}-{k}"
            ds.add_ROIs(ROIList(moved), "cells")
            widget.add_session(ds, name=f"day {day}")
        for source in (1, 2):
            widget.set_source(widget.sessions[source])
            widget.set_method("similarity")
            widget.estimate()
            _wait_until(lambda: not widget.is_running)
        widget.show_aligned()
        widget.register_ids()
        _wait_until(lambda: not widget.is_running)
        widget.set_color_by("session")
        widget.set_show_ids(True)
        widget.set_checked_tags(["PV"])
        docks = _show_only_dock(viewer, "Sessions (napari-sima)")
        # the runs processed events with every dock shown, which grew the window: let
        # the layout see the hidden docks, then shrink it back and widen the dock
        _fit_window(viewer)
        _process_events(0.3)
        for dock in docks.values():
            viewer.window._qt_window.resizeDocks([dock], [480], Qt.Orientation.Horizontal)
        _process_events(0.3)
        for lay in viewer.layers:
            lay.visible = lay is widget.align_layer or lay.name == "calcium mean [GCaMP]"
            if lay.name == "calcium mean [GCaMP]":
                lay.colormap = "gray"
                lay.contrast_limits = (float(np.min(lay.data)), 1.3 * float(np.max(lay.data)))
        layer = widget.align_layer
        viewer.layers.selection.active = layer
        # select the ROIs of one cell: the dock lists them
        first = layer.features["id"].iloc[0]
        layer.selected_data = {i for i, v in enumerate(layer.features["id"]) if v == first}
        layer.mode = "select"
        viewer.dims.current_step = (0,) * viewer.dims.ndim
        viewer.reset_view()
        return _save(viewer, outdir, "sessions.png")


#: The pipeline run for ``pipeline.png`` (on the demo's sample, saved to a temporary folder).
SCREENSHOT_PIPELINE = """\
name: signals-and-spikes
steps:
  - extract: {rois: true cells, label: signals}
  - dff: {window: 100, percentile: 10}
  - infer-spikes: {mode: correct}
  - export: {signals: "{name}_signals.csv"}
"""


def pipeline_screenshot(outdir: Path) -> Path:
    """Open the demo, save the sample to a folder, run a pipeline on it, save ``pipeline.png``.

    The Pipeline dock (right) after the run, with each step's status, and the Traces
    dock (bottom) showing the signal set the pipeline stored for three cells.

    Parameters
    ----------
    outdir : Path
        Folder for the PNG.

    Returns
    -------
    Path
        The written file.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="napari-sima-") as tmp, _demo_viewer() as viewer:
        rois_widget, dataset = _show_true_cells(viewer, extract=False)
        dataset.save(Path(tmp) / "calcium.sima")  # pipelines run on dataset folders
        path = Path(tmp) / "analysis.yaml"
        path.write_text(SCREENSHOT_PIPELINE)
        widget = viewer.window.dock_widgets["Pipeline (napari-sima)"]
        widget.set_dataset(dataset)
        widget.load_pipeline(path)
        widget.run()
        _wait_until(lambda: not widget.is_running)
        traces = viewer.window.dock_widgets["Traces (napari-sima)"]
        traces.set_signals(dataset, "signals", channel=0)
        _show_only_dock(viewer, "Pipeline (napari-sima)", "Traces (napari-sima)")
        _fit_window(viewer)
        _select_cells(viewer, rois_widget, ())
        return _save(viewer, outdir, "pipeline.png")


def main(argv: list[str] | None = None) -> int:
    """Write all screenshots; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=ROOT / "screenshots")
    args = parser.parse_args(argv)
    display = _ensure_display()
    try:
        path = dataset_widget_screenshot(args.outdir)
        print(f"wrote {path}")
        path = roi_manager_screenshot(args.outdir)
        print(f"wrote {path}")
        path = segment_screenshot(args.outdir)
        print(f"wrote {path}")
        path = traces_screenshot(args.outdir)
        print(f"wrote {path}")
        path = spikes_screenshot(args.outdir)
        print(f"wrote {path}")
        path = sessions_screenshot(args.outdir)
        print(f"wrote {path}")
        path = pipeline_screenshot(args.outdir)
        print(f"wrote {path}")
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
