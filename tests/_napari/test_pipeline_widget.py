"""The Pipeline dock, driven through its public methods under Xvfb (real files, real core)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sima.core import ROI, ImagingDataset, Sequence
from napari_sima.core.synthetic import make_calcium_movie

WAIT_MS = 60_000

pytestmark = pytest.mark.filterwarnings("ignore:sigma estimate:RuntimeWarning")

EXTRACT_SPIKES = """
name: signals-and-spikes
steps:
  - extract: {rois: truth, label: signals}
  - infer-spikes: {mode: robust}
"""


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def movie():
    return make_calcium_movie(
        num_frames=100, frame_shape=(1, 48, 48, 1), num_sequences=1, num_cells=4
    )


def write_movie(movie, path: Path) -> Path:
    tifffile.imwrite(path, np.asarray(movie.sequences[0])[:, 0, :, :, 0])
    return path


@pytest.fixture
def dataset_path(movie, tmp_path) -> Path:
    """``d.sima`` made from a TIFF of the movie, with its true cells as ROI set 'truth'."""
    tif = write_movie(movie, tmp_path / "d.tif")
    ds = ImagingDataset([Sequence.create("TIFF", str(tif))], tmp_path / "d.sima")
    ds.add_ROIs([ROI(mask=m) for m in movie.true_masks()], "truth")
    ds.close()
    return tmp_path / "d.sima"


@pytest.fixture
def opened(viewer, dataset_path):
    """The dataset opened in the viewer through our reader; returns its dataset object."""
    from napari_sima._layers import sima_metadata

    layers = viewer.open(str(dataset_path), plugin="napari-sima")
    return sima_metadata(layers[0])["dataset"]


@pytest.fixture
def widget(make_dock):
    from napari_sima._widgets.pipeline_widget import PipelineWidget

    return make_dock(PipelineWidget)


def write_pipeline(folder: Path, text: str, name: str = "p.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def run_and_wait(widget, qtbot):
    worker = widget.run()
    assert worker is not None
    assert widget.is_running and not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    return worker


def signal_sets(path: Path) -> dict:
    return ImagingDataset.load(path).signals(0)


# --------------------------------------------------------------------------- tests
def test_load_lists_the_steps_and_refuses_a_bad_file(widget, opened, tmp_path, notifications):
    from napari_sima.core.pipeline import load_pipeline

    assert widget.dataset is opened
    assert "Load" in widget.status_label.text()
    assert not widget.run_button.isEnabled()
    assert widget.run() is None  # nothing loaded: an error notification
    good = write_pipeline(
        tmp_path,
        "steps:\n  - extract: {label: signals}\n  - dff: {window: 50, percentile: 10}\n",
    )
    assert widget.load_pipeline(good)
    table = widget.steps_table
    assert table.rowCount() == 2
    assert [table.item(r, 0).text() for r in range(2)] == ["extract", "dff"]
    assert table.item(1, 0).toolTip() == "2:dff"
    assert table.item(0, 1).text() == "(defaults)"  # label 'signals' is the default
    assert table.item(1, 1).text() == "window: 50\npercentile: 10"
    assert "\nsigma: 10.0" in table.item(1, 1).toolTip()  # all parameters in the tooltip
    assert widget.pipeline.steps == load_pipeline(good).steps
    assert widget.pipeline_label.text() == "'p': 2 steps; runs on a dataset"
    assert widget.target_stack.currentIndex() == 0  # the dataset box
    assert widget.run_button.isEnabled()
    assert widget.status_label.text() == ""

    bad = write_pipeline(tmp_path, "steps:\n  - extract: {lable: x}\n", "bad.yaml")
    assert not widget.load_pipeline(bad)
    text = widget.status_label.text()
    assert "bad.yaml" in text and "step 1 (extract)" in text and "'lable'" in text
    assert "color" in widget.status_label.styleSheet()  # shown in red
    assert widget.pipeline is None and table.rowCount() == 0
    assert not widget.run_button.isEnabled()
    assert not widget.load_pipeline(tmp_path / "missing.yaml")
    assert "no pipeline file" in widget.status_label.text()
    # typed in the box and loaded with Enter / Load
    widget.path_edit.setText(str(good))
    widget.load_button.click()
    assert widget.pipeline is not None and widget.run_button.isEnabled()
    assert notifications.messages("error") == [
        "No pipeline: choose a pipeline file and press Load first."
    ]


def test_run_then_rerun_skips(widget, opened, dataset_path, tmp_path, qtbot, notifications):
    assert widget.load_pipeline(write_pipeline(tmp_path, EXTRACT_SPIKES))
    run_and_wait(widget, qtbot)
    assert widget.step_statuses() == ["done", "done"]
    assert widget.step_results() == ["signals (4 ROIs)", "signals: spikes"]
    report = widget.last_report
    assert report.ok and report.dataset == str(dataset_path)
    stored = signal_sets(dataset_path)["signals"]
    assert stored["raw"][0].shape == (4, 100) and stored["spikes"][0].shape == (4, 100)
    assert "signals" in opened.signal_labels(0)  # the viewer's dataset sees them
    assert widget.progress_bar.value() == widget.progress_bar.maximum()
    (info,) = notifications.messages("info")
    assert "2 done, 0 skipped" in info and "stored with the dataset" in info
    assert widget.status_label.text() == info
    assert not widget.open_button.isVisible()

    run_and_wait(widget, qtbot)
    assert widget.step_statuses() == ["skipped", "skipped"]
    assert "0 done, 2 skipped" in notifications.messages("info")[-1]
    assert not notifications.messages("error")
    # the file is re-read by Run: a changed parameter redoes that step only
    write_pipeline(tmp_path, EXTRACT_SPIKES.replace("robust", "correct"))
    run_and_wait(widget, qtbot)
    assert widget.step_statuses() == ["skipped", "done"]
    assert widget.steps_table.item(1, 1).text() == "(defaults)"  # mode 'correct' is the default


def test_other_docks_see_the_results(viewer, widget, opened, tmp_path, qtbot, make_dock):
    from napari_sima._widgets.spikes_widget import SpikesWidget

    spikes = make_dock(SpikesWidget)
    assert spikes.dataset is opened and spikes.signal_set is None
    viewer.window.add_dock_widget(spikes, name="Infer spikes")
    assert widget.load_pipeline(write_pipeline(tmp_path, EXTRACT_SPIKES))
    run_and_wait(widget, qtbot)
    assert spikes.signal_set == "signals"
    assert spikes.signals_combo.currentText() == "signals   ✓ spikes"


def test_create_pipeline_runs_on_a_movie(viewer, widget, movie, tmp_path, qtbot, notifications):
    from napari_sima.core.imagej import write_imagej_rois

    tif = write_movie(movie, tmp_path / "session.tif")
    write_imagej_rois(tmp_path / "cells.zip", [ROI(mask=m) for m in movie.true_masks()])
    path = write_pipeline(
        tmp_path,
        "steps:\n  - create: {channel_names: [GCaMP]}\n"
        "  - import-rois: {file: cells.zip, label: cells}\n  - extract: {}\n"
        '  - export: {signals: "{name}_signals.csv"}\n',
    )
    assert widget.load_pipeline(path)
    assert widget.creates and widget.target_stack.currentIndex() == 1
    assert "creates a dataset from a movie" in widget.pipeline_label.text()
    assert not widget.run_button.isEnabled()
    assert "movie" in widget.status_label.text()
    assert widget.set_movie(tif)
    assert widget.run_button.isEnabled()
    run_and_wait(widget, qtbot)
    assert widget.step_statuses() == ["done"] * 4
    # files next to the movie by their name (the full path in the tooltip)
    assert widget.step_results() == [
        "session.sima",
        "cells (4 ROIs)",
        "signals (4 ROIs)",
        "session_signals.csv",
    ]
    assert str(tmp_path) in widget.steps_table.item(3, 2).toolTip()
    assert widget.steps_table.item(3, 2).text() == "done\nsession_signals.csv"
    assert (tmp_path / "session_signals.csv").is_file()
    created = tmp_path / "session.sima"
    assert widget.created_dataset == str(created)
    ds = ImagingDataset.load(created)
    assert ds.channel_names == ["GCaMP"] and list(ds.ROIs) == ["cells"]
    assert ds.signals(0)["signals"]["raw"][0].shape == (4, 100)
    assert str(created) in notifications.messages("info")[-1]
    # the created dataset can be opened from the dock (then the button goes)
    assert widget.open_button.isVisibleTo(widget)
    assert widget.open_result()
    assert widget.dataset is not None and widget.dataset.savedir == str(created)
    assert not widget.open_button.isVisibleTo(widget)
    run_and_wait(widget, qtbot)
    assert widget.step_statuses() == ["skipped"] * 4


def test_a_failing_step_is_an_error_notification(
    widget, opened, dataset_path, tmp_path, qtbot, notifications
):
    path = write_pipeline(
        tmp_path,
        "steps:\n  - extract: {rois: truth}\n  - import-rois: {file: nope.zip}\n"
        "  - dff: {window: 20}\n",
    )
    assert widget.load_pipeline(path)
    run_and_wait(widget, qtbot)
    assert widget.step_statuses() == ["done", "failed", "not-run"]
    assert "no ROI file" in widget.step_results()[1]
    assert widget.steps_table.item(1, 2).text().startswith("failed\nno ROI file at")
    (error,) = notifications.messages("error")
    assert error.startswith("Pipeline 'p' failed on d.sima: step 2:import-rois: no ROI file")
    assert widget.status_label.text().startswith("Failed: step 2:import-rois")
    assert not widget.last_report.ok
    assert "signals" in signal_sets(dataset_path)  # the step before the failure is stored
    assert widget.run_button.isEnabled()


def test_an_in_memory_dataset_cannot_run(viewer, widget, tmp_path):
    from napari_sima._layers import dataset_layer_data
    from napari_sima._sample_data import sample_dataset

    ds = sample_dataset()
    for data, kwargs, _ in dataset_layer_data(ds, "memory"):
        viewer.add_image(data, **kwargs)
    assert widget.dataset is ds
    assert widget.load_pipeline(write_pipeline(tmp_path, EXTRACT_SPIKES))
    assert not widget.run_button.isEnabled()
    assert "save it as a .sima folder" in widget.status_label.text()


@pytest.fixture
def gated_extract(monkeypatch):
    """Hold every progress report of the real ``iter_extract`` until the gate opens."""
    gate = threading.Event()
    reached = threading.Event()
    real = ImagingDataset.iter_extract

    def iter_extract(self, *args, **kwargs):
        steps = real(self, *args, **kwargs)
        try:
            while True:
                item = next(steps)
                reached.set()
                gate.wait(WAIT_MS / 1000)
                yield item
        except StopIteration as stop:
            return stop.value
        finally:
            steps.close()

    monkeypatch.setattr(ImagingDataset, "iter_extract", iter_extract)
    return gate, reached


def test_cancel_stores_nothing(
    widget, opened, dataset_path, tmp_path, qtbot, notifications, gated_extract
):
    gate, reached = gated_extract
    assert widget.load_pipeline(write_pipeline(tmp_path, EXTRACT_SPIKES))
    worker = widget.run()
    assert worker is not None and widget.cancel_button.isEnabled()
    for name in ("run_button", "load_button", "browse_button", "dataset_combo", "path_edit"):
        assert not getattr(widget, name).isEnabled(), name
    qtbot.waitUntil(
        lambda: reached.is_set() and widget.step_statuses()[0] == "running…", timeout=WAIT_MS
    )
    widget.cancel_button.click()
    assert not widget.cancel_button.isEnabled()
    gate.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert widget.step_statuses() == ["cancelled", "not-run"]
    assert widget.last_report is None
    assert signal_sets(dataset_path) == {}
    assert widget.status_label.text() == "Cancelled during step 1:extract: it wrote nothing."
    assert any("cancelled" in m for m in notifications.messages("info"))
    assert not notifications.messages("error")
    assert widget.run_button.isEnabled()

    # closing the dock cancels a running pipeline the same way
    gate.clear()
    reached.clear()
    widget.run()
    qtbot.waitUntil(reached.is_set, timeout=WAIT_MS)
    widget.close()
    gate.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert signal_sets(dataset_path) == {}


def test_docked_from_the_manifest_and_in_the_demo(make_napari_viewer):
    from napari_sima._demo import DEMO_WIDGET_COMMANDS, widget_display_names
    from napari_sima._widgets.pipeline_widget import PipelineWidget

    assert "napari-sima.pipeline_widget" in DEMO_WIDGET_COMMANDS
    assert "Pipeline" in widget_display_names()
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sima", "Pipeline")
    assert isinstance(widget, PipelineWidget)
    assert widget.dataset is None and not widget.run_button.isEnabled()


def test_closing_the_viewer_cancels(
    make_napari_viewer, dataset_path, tmp_path, qtbot, gated_extract
):
    from napari_sima._widgets.pipeline_widget import PipelineWidget

    gate, reached = gated_extract
    viewer = make_napari_viewer()
    viewer.open(str(dataset_path), plugin="napari-sima")
    widget = PipelineWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Pipeline")
    assert widget.load_pipeline(write_pipeline(tmp_path, EXTRACT_SPIKES))
    worker = widget.run()
    job = widget._job
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(reached.is_set, timeout=WAIT_MS)
    viewer.close()
    gate.set()
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    qtbot.wait(50)  # the widget's own finished handler (queued like ours)
    assert job.cancelled and job.report is None
    assert job.steps.gi_frame is None  # the pipeline's generator is closed
    assert signal_sets(dataset_path) == {}
