"""The Extract dock widget, driven through its public methods under Xvfb."""

from __future__ import annotations

import csv
import sys
import time
import types

import numpy as np
import pytest

from napari_sima._layers import METADATA_KEY, sima_metadata
from napari_sima._roi_convert import rois_to_shapes
from napari_sima._sample_data import sample_true_rois
from napari_sima.core import ROI, ImagingDataset, ROIList

WAIT_MS = 60_000
SAMPLE_SHAPE = (1, 128, 128)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def movie():
    from napari_sima._sample_data import sample_movie

    return sample_movie()


def truth_rois(movie) -> ROIList:
    return sample_true_rois(movie, start=0)


def open_sample_dataset(viewer) -> ImagingDataset:
    viewer.open_sample("napari-sima", "calcium")
    datasets = {id(m["dataset"]): m["dataset"] for m in map(sima_metadata, viewer.layers) if m}
    assert len(datasets) == 1
    return next(iter(datasets.values()))


@pytest.fixture
def sample_ds(viewer, movie):
    """The sample dataset (in memory) opened in the viewer, true cells as set 'truth'."""
    ds = open_sample_dataset(viewer)
    ds.add_ROIs(truth_rois(movie), "truth")
    return ds


@pytest.fixture
def make_widget(make_dock):
    from napari_sima._widgets.extract_widget import ExtractWidget

    return lambda: make_dock(ExtractWidget)


@pytest.fixture
def widget(make_widget, sample_ds):
    return make_widget()


@pytest.fixture
def shown(monkeypatch):
    """Record the calls to the Traces dock and the raster (fakes when not written yet)."""
    calls: list[tuple] = []

    class FakeTraces:
        def set_signals(self, dataset, label, channel=0):
            calls.append(("traces", dataset, label, channel))

    def find_traces_widget(viewer):
        return FakeTraces()

    def show_raster(viewer, dataset, label, channel=0, kind="raw"):
        calls.append(("raster", dataset, label, channel, kind))

    for modname, attr, fake in (
        ("napari_sima._widgets.traces_widget", "find_traces_widget", find_traces_widget),
        ("napari_sima._raster", "show_raster", show_raster),
    ):
        try:
            module = __import__(modname, fromlist=[attr])
        except ImportError:
            module = types.ModuleType(modname)
            monkeypatch.setitem(sys.modules, modname, module)
        monkeypatch.setattr(module, attr, fake, raising=False)
    return calls


def run_and_wait(widget, qtbot):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    return worker


# --------------------------------------------------------------------------- tests
def test_widget_has_named_controls(widget, sample_ds):
    for name in (
        "dataset_combo",
        "roi_combo",
        "channel_combo",
        "remove_overlap_check",
        "demix_combo",
        "processes_spin",
        "label_edit",
        "baseline_combo",
        "window_spin",
        "percentile_spin",
        "sigma_spin",
        "run_button",
        "cancel_button",
        "progress_bar",
        "status_label",
        "signals_combo",
        "show_button",
        "export_button",
    ):
        assert getattr(widget, name).objectName() == name
    # adopted the sample's dataset, its ROI set and its channels
    assert widget.dataset is sample_ds
    assert widget.dataset_combo.currentText() == "calcium"
    assert widget.roi_combo.currentText() == "truth"
    assert [widget.channel_combo.itemText(i) for i in range(2)] == ["GCaMP", "tdTomato"]
    assert [widget.demix_combo.itemText(i) for i in range(3)] == ["none", "GCaMP", "tdTomato"]
    assert widget.remove_overlap_check.isChecked()
    assert widget.processes_spin.minimum() == 1
    assert widget.dff_group.isChecked()
    assert widget.run_button.isEnabled()
    assert not widget.cancel_button.isEnabled()
    assert not widget.export_button.isEnabled()  # nothing extracted yet


def test_extract_stored_set_on_sample(widget, sample_ds, movie, qtbot, notifications, shown):
    assert widget.set_dataset(sample_ds)
    assert widget.set_roi_source("truth")
    widget.label_edit.setText("truth-signals")
    run_and_wait(widget, qtbot)

    sets = sample_ds.signals(0)
    assert "truth-signals" in sets
    sig = sets["truth-signals"]
    assert len(sig["raw"]) == 2
    for s, raw in enumerate(sig["raw"]):
        assert raw.shape == (12, 200)
        corr = [np.corrcoef(raw[i], cell.calcium[s])[0, 1] for i, cell in enumerate(movie.cells)]
        assert sum(c > 0.8 for c in corr) >= 10, corr
    # dF/F stored with the set, per sequence, with its options
    assert [d.shape for d in sig["dff"]] == [(12, 200), (12, 200)]
    assert np.isfinite(sig["dff"][0]).all()
    assert sig["dff_parameters"]["baseline"] == "percentile"
    assert sig["dff_parameters"]["window"] == widget.window_spin.value()
    # reported, shown, listed
    infos = notifications.messages("info")
    assert any("Extracted 12 ROIs × 400 frames → signals 'truth-signals'" in m for m in infos)
    assert not notifications.messages("error")
    assert ("traces", sample_ds, "truth-signals", 0) in shown
    assert ("raster", sample_ds, "truth-signals", 0, "raw") in shown
    assert widget.last_label == "truth-signals"
    assert widget.signals_combo.currentText() == "truth-signals"
    assert widget.export_button.isEnabled()
    assert widget.progress_bar.value() == widget.progress_bar.maximum()


def test_blank_label_is_timestamp_and_maximin_dff(widget, sample_ds, qtbot, shown):
    widget.label_edit.setText("")
    widget.baseline_combo.setCurrentText("maximin")
    widget.window_spin.setValue(50)
    widget.sigma_spin.setValue(3.0)
    assert not widget.percentile_spin.isEnabled()
    run_and_wait(widget, qtbot)
    (label,) = sample_ds.signals(0)
    sig = sample_ds.signals(0)[label]
    assert label == sig["timestamp"] == widget.last_label
    assert sig["dff_parameters"] == {"baseline": "maximin", "window": 50, "sigma": 3.0}


def test_dff_unchecked_stores_raw_only(widget, sample_ds, qtbot, shown):
    widget.dff_group.setChecked(False)
    widget.label_edit.setText("nodff")
    run_and_wait(widget, qtbot)
    assert "dff" not in sample_ds.signals(0)["nodff"]


def test_extract_second_channel_by_name(widget, sample_ds, qtbot, shown):
    assert widget.set_channel("tdTomato")
    widget.label_edit.setText("red")
    run_and_wait(widget, qtbot)
    assert "red" in sample_ds.signals("tdTomato")
    assert "red" not in sample_ds.signals("GCaMP")
    assert ("raster", sample_ds, "red", 1, "raw") in shown


def test_extract_from_shapes_layer_being_edited(viewer, widget, sample_ds, movie, qtbot, shown):
    kwargs = rois_to_shapes(truth_rois(movie), ndim=3)
    kwargs["metadata"][METADATA_KEY].update(dataset=sample_ds, roi_set="truth")
    layer = viewer.add_shapes(**kwargs, name="ROIs: truth")
    # the new layer is offered, and chosen when it is the active layer
    assert "layer: ROIs: truth" in [
        widget.roi_combo.itemText(i) for i in range(widget.roi_combo.count())
    ]
    # draw one more ROI (not saved to the dataset)
    layer.add(
        [np.array([[0, 60, 60], [0, 60, 70], [0, 70, 70], [0, 70, 60]])], shape_type="rectangle"
    )
    assert widget.set_roi_source("ROIs: truth")
    assert widget.roi_source == ("layer", layer)
    widget.label_edit.setText("edited")
    run_and_wait(widget, qtbot)

    sig = sample_ds.signals(0)["edited"]
    assert [r.shape for r in sig["raw"]] == [(13, 200), (13, 200)]
    assert len(sig["rois"]) == 13
    assert len(sample_ds.ROIs["truth"]) == 12  # the stored set is untouched
    # the stored-set extraction gives the same first 12 rows
    widget.set_roi_source("truth")
    widget.label_edit.setText("stored")
    run_and_wait(widget, qtbot)
    np.testing.assert_allclose(
        sample_ds.signals(0)["stored"]["raw"][0], sig["raw"][0][:12], rtol=1e-5
    )


def test_roi_layer_of_another_dataset_is_not_offered(viewer, widget, movie):
    other = ImagingDataset([s for s in widget.dataset.sequences], None, channel_names=["a", "b"])
    kwargs = rois_to_shapes(truth_rois(movie), ndim=3)
    kwargs["metadata"][METADATA_KEY].update(dataset=other)
    viewer.add_shapes(**kwargs, name="ROIs: other")
    texts = [widget.roi_combo.itemText(i) for i in range(widget.roi_combo.count())]
    assert "layer: ROIs: other" not in texts


def slow_extraction(ds, monkeypatch, delay=0.3):
    """Make ``ds.iter_extract`` pause at each progress step; returns a state dict."""
    real = ds.iter_extract
    state = {"closed": False, "steps": 0}

    def iter_extract(*args, **kwargs):
        gen = real(*args, **kwargs)
        try:
            while True:
                try:
                    progress = next(gen)
                except StopIteration as stop:
                    return stop.value
                state["steps"] += 1
                time.sleep(delay)
                yield progress
        finally:
            state["closed"] = True
            gen.close()

    monkeypatch.setattr(ds, "iter_extract", iter_extract)
    return state


def test_cancel_stores_nothing(widget, sample_ds, qtbot, notifications, monkeypatch, shown):
    state = slow_extraction(sample_ds, monkeypatch)
    widget.label_edit.setText("cancelled")
    worker = widget.run()
    assert worker is not None and widget.is_running
    assert widget.cancel_button.isEnabled()
    assert not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert state["closed"]
    assert sample_ds.signals(0) == {}
    assert shown == []
    assert any("cancelled" in m for m in notifications.messages("info"))
    assert widget.run_button.isEnabled()
    assert widget.status_label.text() == "Cancelled; nothing was stored."
    # the widget works again afterwards
    monkeypatch.delattr(sample_ds, "iter_extract")  # back to the real method
    widget.label_edit.setText("after")
    run_and_wait(widget, qtbot)
    assert list(sample_ds.signals(0)) == ["after"]


def test_export_csv_tsv_npz(widget, sample_ds, qtbot, tmp_path, shown):
    widget.label_edit.setText("export")
    run_and_wait(widget, qtbot)
    raw = sample_ds.signals(0)["export"]["raw"]

    path = tmp_path / "signals.csv"
    assert widget.export_signals(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["sequence", "frame"] and len(rows[0]) == 2 + 12
    assert rows[1][:2] == ["", "label"] and rows[1][2:] == [f"cell-{i}" for i in range(12)]
    assert rows[2][:2] == ["", "tags"]
    body = rows[3:]
    assert len(body) == 400
    assert body[200][:2] == ["1", "0"]
    values = np.array([[float(v) for v in r[2:]] for r in body[:200]])
    np.testing.assert_allclose(values, raw[0].T, rtol=1e-6)

    assert widget.export_signals(tmp_path / "signals.tsv", "tsv")
    with open(tmp_path / "signals.tsv", newline="") as f:
        assert len(list(csv.reader(f, delimiter="\t"))) == 403
    assert widget.export_signals(tmp_path / "signals.npz", None)  # format from the suffix
    with np.load(tmp_path / "signals.npz") as z:
        np.testing.assert_array_equal(z["raw_1"], raw[1])


def test_folder_dataset_stores_dff_on_disk(make_widget, viewer, movie, tmp_path, qtbot, shown):
    from napari_sima._sample_data import sample_dataset

    ds = sample_dataset(movie)
    ds.save(tmp_path / "sample.sima")
    ds.add_ROIs(truth_rois(movie), "truth")
    widget = make_widget()
    assert widget.set_dataset(ds)
    assert widget.dataset_combo.currentText() == "sample"
    widget.label_edit.setText("disk")
    run_and_wait(widget, qtbot)
    again = ImagingDataset.load(tmp_path / "sample.sima")
    sig = again.signals(0)["disk"]
    assert [r.shape for r in sig["raw"]] == [(12, 200), (12, 200)]
    assert [d.shape for d in sig["dff"]] == [(12, 200), (12, 200)]
    assert list((tmp_path / "sample.sima").glob("extractSummary_*.png"))


def test_error_no_dataset(make_widget, notifications):
    widget = make_widget()
    assert widget.dataset is None
    assert not widget.run_button.isEnabled()
    assert widget.run() is None
    assert widget.export_signals("nowhere.csv") is False
    assert len(notifications.messages("error")) == 2
    assert "No dataset" in notifications.messages("error")[0]


def test_error_no_rois(viewer, make_widget, notifications, qtbot):
    ds = open_sample_dataset(viewer)
    widget = make_widget()
    assert widget.dataset is ds
    assert widget.roi_source is None
    assert "No ROIs" in widget.status_label.text()
    assert widget.run() is None
    assert "No ROIs to extract" in notifications.messages("error")[-1]
    assert ds.signals(0) == {}


def test_error_empty_roi_set_and_empty_layer(viewer, widget, sample_ds, notifications):
    sample_ds.add_ROIs(ROIList([]), "empty")
    assert widget.set_roi_source("empty")
    assert widget.run() is None
    assert "empty" in notifications.messages("error")[-1]
    viewer.add_shapes(
        ndim=3, name="ROIs: new", metadata={METADATA_KEY: {"kind": "rois", "dataset": sample_ds}}
    )
    assert widget.set_roi_source("ROIs: new")
    assert widget.run() is None
    assert "No ROIs to extract" in notifications.messages("error")[-1]
    assert not widget.set_roi_source("no such set")
    assert "No ROI source" in notifications.messages("error")[-1]


def test_error_bad_options(widget, sample_ds, notifications):
    widget.demix_combo.setCurrentText("GCaMP")  # the signal channel
    assert widget.run() is None
    assert "must differ" in notifications.messages("error")[-1]
    assert not widget.set_channel("no such channel")
    assert widget.export_signals("x.xlsx", None) is False
    assert "Unknown export format" in notifications.messages("error")[-1]
    assert sample_ds.signals(0) == {}


def test_error_in_worker_is_a_notification(widget, sample_ds, qtbot, notifications, shown):
    empty = ROIList([ROI(mask=np.zeros(SAMPLE_SHAPE, bool), im_shape=SAMPLE_SHAPE)])
    sample_ds.add_ROIs(empty, "nothing")
    assert widget.set_roi_source("nothing")
    run_and_wait(widget, qtbot)  # the core raises in the worker thread
    errors = notifications.messages("error")
    assert len(errors) == 1 and "No valid ROIs" in errors[0]
    assert "Traceback" not in errors[0]
    assert sample_ds.signals(0) == {}
    assert shown == []
    assert widget.status_label.text().startswith("Failed:")
    assert widget.run_button.isEnabled()


def test_error_read_only_dataset(make_widget, movie, tmp_path, notifications, monkeypatch):
    from napari_sima._sample_data import sample_dataset

    ds = sample_dataset(movie)
    ds.save(tmp_path / "ro.sima")
    ds.add_ROIs(truth_rois(movie), "truth")
    monkeypatch.setattr(ds, "_read_only", True)  # as for a legacy SIMA folder
    widget = make_widget()
    widget.set_dataset(ds)
    assert widget.run() is None
    assert "read-only" in notifications.messages("error")[-1]


def test_dataset_combo_follows_layers(viewer, make_widget, movie):
    widget = make_widget()
    assert widget.dataset_combo.count() == 0
    ds = open_sample_dataset(viewer)
    assert widget.dataset is ds  # adopted when its layers arrived
    assert widget.dataset_combo.count() == 1
    from napari_sima._layers import dataset_layer_data
    from napari_sima._sample_data import sample_dataset

    other = sample_dataset(movie)
    for data, kwargs, layer_type in dataset_layer_data(other, "second"):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    assert [widget.dataset_combo.itemText(i) for i in range(2)] == ["calcium", "second"]
    widget.dataset_combo.setCurrentIndex(1)
    assert widget.dataset is other
    viewer.layers.clear()
    assert widget.dataset is other  # kept while in use
    assert widget.dataset_combo.count() == 1


def test_show_stored_signals(widget, sample_ds, shown, notifications):
    sample_ds.extract("truth", label="scripted")
    widget.refresh_signal_sets()
    assert widget.signals_combo.currentText() == "scripted"
    assert widget.show_signals()
    assert ("raster", sample_ds, "scripted", 0, "raw") in shown


def test_raster_shown_after_extraction(widget, sample_ds, viewer, qtbot):
    from napari_sima._raster import raster_name

    widget.label_edit.setText("cells")
    run_and_wait(widget, qtbot)
    layer = viewer.layers[raster_name("cells", "raw")]
    assert layer.data.shape == (12, 400)  # both sequences, concatenated
    assert sima_metadata(layer)["dataset"] is sample_ds
    # a new extraction under the same label updates the same layer
    widget.remove_overlap_check.setChecked(False)
    run_and_wait(widget, qtbot)
    assert [lay.name for lay in viewer.layers].count(raster_name("cells", "raw")) == 1


def test_docked_from_the_manifest(make_napari_viewer, movie, qtbot, notifications):
    """napari hands the docked widget a proxied viewer; extraction still works."""
    from napari_sima._raster import raster_name
    from napari_sima._widgets.extract_widget import ExtractWidget

    viewer = make_napari_viewer()
    ds = open_sample_dataset(viewer)
    ds.add_ROIs(truth_rois(movie), "truth")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sima", "Extract")
    assert isinstance(widget, ExtractWidget)
    assert widget.dataset is ds
    widget.label_edit.setText("docked")
    run_and_wait(widget, qtbot)
    assert not notifications.messages("error")
    assert [r.shape for r in ds.signals(0)["docked"]["raw"]] == [(12, 200), (12, 200)]
    assert raster_name("docked", "raw") in [layer.name for layer in viewer.layers]


def test_traces_dock_shows_the_extraction(widget, sample_ds, viewer, qtbot):
    traces_module = pytest.importorskip("napari_sima._widgets.traces_widget")
    traces = traces_module.TracesWidget(viewer)
    viewer.window.add_dock_widget(traces, area="bottom", name="Traces")
    assert traces_module.find_traces_widget(viewer) is traces
    widget.label_edit.setText("for-traces")
    run_and_wait(widget, qtbot)
    assert traces.dataset is sample_ds
    assert traces.label == "for-traces"
    assert traces.channel == 0
