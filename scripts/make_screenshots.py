"""Regenerate the PNGs in ``screenshots/`` from a real napari window.

Run with the project's virtual environment (``make screenshots``)::

    .venv/bin/python scripts/make_screenshots.py [--outdir screenshots]

Without a ``DISPLAY`` the script starts a virtual X server (Xvfb) itself, through
``pyvirtualdisplay`` (installed with pytest-xvfb) or, failing that, by re-running
itself under ``xvfb-run``.  Mesa's llvmpipe renders the OpenGL canvas under Xvfb.
"""

from __future__ import annotations

import argparse
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


def _show_only_dock(viewer, title: str) -> None:
    """Hide every napari-sima dock but ``title`` (e.g. ``'ROIs (napari-sima)'``)."""
    from qtpy.QtWidgets import QDockWidget

    for dock in viewer.window._qt_window.findChildren(QDockWidget):
        name = getattr(dock, "name", dock.windowTitle())
        if name.endswith("(napari-sima)"):
            dock.setVisible(name == title)


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
    from napari_sima._demo import DEMO_WINDOW_SIZE, run_demo

    viewer = run_demo(block=False)
    try:
        viewer.window.resize(*DEMO_WINDOW_SIZE)
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
        _process_events(1.5)
        outdir.mkdir(parents=True, exist_ok=True)
        path = outdir / "dataset-widget.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        return path
    finally:
        viewer.close()


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

    from napari_sima._demo import DEMO_WINDOW_SIZE, run_demo
    from napari_sima._sample_data import sample_true_rois

    viewer = run_demo(block=False)
    try:
        viewer.window.resize(*DEMO_WINDOW_SIZE)
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
        _process_events(1.5)
        outdir.mkdir(parents=True, exist_ok=True)
        path = outdir / "roi-manager.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        return path
    finally:
        viewer.close()


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
    from qtpy.QtWidgets import QDockWidget

    from napari_sima._demo import DEMO_WINDOW_SIZE, run_demo
    from napari_sima._raster import show_raster
    from napari_sima._sample_data import sample_true_rois

    viewer = run_demo(block=False)
    try:
        viewer.window.resize(*DEMO_WINDOW_SIZE)
        rois_widget = viewer.window.dock_widgets["ROIs (napari-sima)"]
        traces = viewer.window.dock_widgets["Traces (napari-sima)"]
        dataset = rois_widget.dataset
        rois = sample_true_rois()
        dataset.add_ROIs(rois, "true cells")
        rois_widget.show_set("true cells")
        rois_widget.set_color_by("roi")
        dataset.extract(rois, label="true cells", save_summary=False)
        traces.set_signals(dataset, "true cells", channel=0)
        raster = show_raster(viewer, dataset, "true cells", channel=0, kind="raw")
        for dock in viewer.window._qt_window.findChildren(QDockWidget):
            name = getattr(dock, "name", dock.windowTitle())
            if name.endswith("(napari-sima)"):
                dock.setVisible(name in ("ROIs (napari-sima)", "Traces (napari-sima)"))
        layer = viewer.layers["ROIs: true cells"]
        for lay in viewer.layers:
            lay.visible = lay is layer or lay is raster or lay.name == "calcium seq 0 [GCaMP]"
        roi_col = layer.features["roi"].tolist()
        layer.selected_data = {i for i, r in enumerate(roi_col) if int(r) in (1, 4, 8)}
        rois_widget.set_draw_mode("select")
        viewer.layers.selection.active = layer
        viewer.dims.set_current_step(0, 57)
        viewer.reset_view()
        _process_events(1.5)
        outdir.mkdir(parents=True, exist_ok=True)
        path = outdir / "traces.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        return path
    finally:
        viewer.close()


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
        path = traces_screenshot(args.outdir)
        print(f"wrote {path}")
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
