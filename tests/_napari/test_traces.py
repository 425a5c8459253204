"""The Traces dock: selected ROIs → curves, cursor ↔ time slider, raw / ΔF/F, sequences."""

from __future__ import annotations

import types

import numpy as np
import pytest

from napari_sima._layers import sima_metadata
from napari_sima._roi_convert import rois_to_shapes
from napari_sima.core import ROI, ROIList

SAMPLE_SHAPE = (1, 128, 128)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def movie():
    from napari_sima._sample_data import sample_movie

    return sample_movie()


def truth_rois(movie, indices=None) -> ROIList:
    indices = range(len(movie.cells)) if indices is None else indices
    return ROIList(
        [ROI(mask=movie.cells[i].mask, label=f"cell-{i}", im_shape=SAMPLE_SHAPE) for i in indices]
    )


def open_sample(viewer):
    viewer.open_sample("napari-sima", "calcium")
    datasets = {id(m["dataset"]): m["dataset"] for m in map(sima_metadata, viewer.layers) if m}
    assert len(datasets) == 1
    return next(iter(datasets.values()))


def add_rois_layer(viewer, rois, name="ROIs: truth"):
    return viewer.add_shapes(**rois_to_shapes(rois), name=name)


def shapes_of(layer, roi_indices) -> set[int]:
    wanted = {int(r) for r in roi_indices}
    return {i for i, r in enumerate(layer.features["roi"].tolist()) if int(r) in wanted}


@pytest.fixture
def scene(viewer, movie):
    """Sample dataset in the viewer, true cells extracted as set 'truth', ROIs layer."""
    ds = open_sample(viewer)
    rois = truth_rois(movie)
    ds.add_ROIs(rois, "truth")
    signals = ds.extract(rois, label="truth", save_summary=False)
    layer = add_rois_layer(viewer, rois)
    return types.SimpleNamespace(ds=ds, rois=rois, raw=signals["raw"], layer=layer)


@pytest.fixture
def make_traces(viewer, qtbot):
    from napari_sima._widgets.traces_widget import TracesWidget

    def make(v=None, show=True):
        widget = TracesWidget(v if v is not None else viewer)
        qtbot.addWidget(widget)
        if show:
            widget.resize(900, 300)
            widget.show()
            qtbot.waitExposed(widget)
        return widget

    return make


@pytest.fixture
def traces(scene, make_traces):
    return make_traces()


def curve_y(widget) -> list[np.ndarray]:
    return [np.asarray(item.yData) for item in widget.curves]


class FakeDrag:
    """The parts of a pyqtgraph mouse event our ViewBox reads."""

    def __init__(self, scene_pos, button=None, modifiers=None):
        from qtpy.QtCore import Qt

        self._pos = scene_pos
        self._button = Qt.MouseButton.LeftButton if button is None else button
        self._mods = Qt.KeyboardModifier.NoModifier if modifiers is None else modifiers
        self.accepted = False

    def button(self):
        return self._button

    def modifiers(self):
        return self._mods

    def scenePos(self):  # noqa: N802 - pyqtgraph's name
        return self._pos

    def accept(self):
        self.accepted = True


# --------------------------------------------------------------------------- tests
def test_picks_the_stored_set_and_the_rois_layer(traces, scene):
    assert traces.dataset is scene.ds
    assert traces.label == "truth"
    assert traces.shapes_layer is scene.layer
    assert traces.curves == []
    assert "select ROIs" in traces.title
    assert [lab for _, lab, _ in traces.available_sets] == ["truth"]


def test_selection_updates_curves(traces, scene):
    layer = scene.layer
    layer.selected_data = shapes_of(layer, [0, 3, 5])
    assert traces.rows == [0, 3, 5]
    ys = curve_y(traces)
    assert len(ys) == 3
    for row, y in zip([0, 3, 5], ys, strict=True):
        np.testing.assert_array_equal(y, scene.raw[0][row])
    np.testing.assert_array_equal(traces.curves[0].xData, np.arange(scene.raw[0].shape[1]))
    # colours are the ROI outline colours
    first = min(shapes_of(layer, [3]))
    pen = traces.curves[1].opts["pen"]
    expected = np.round(np.asarray(layer.edge_color[first][:3]) * 255)
    assert tuple(pen.color().getRgb()[:3]) == tuple(int(v) for v in expected)
    assert "cell-3" in traces.names_label.text()
    # a new selection replaces the curves
    layer.selected_data = shapes_of(layer, [7])
    assert traces.rows == [7]
    ys = curve_y(traces)
    assert len(ys) == 1
    np.testing.assert_array_equal(ys[0], scene.raw[0][7])
    layer.selected_data = set()
    assert traces.curves == []


def test_at_most_ten_traces(traces, scene):
    from napari_sima._widgets.traces_widget import MAX_TRACES

    scene.layer.selected_data = set(range(scene.layer.nshapes))
    assert len(traces.curves) == MAX_TRACES
    assert f"first {MAX_TRACES} of 12" in traces.title


def test_cursor_follows_the_time_slider(traces, scene, viewer):
    scene.layer.selected_data = shapes_of(scene.layer, [1])
    viewer.dims.set_current_step(0, 57)
    assert traces.cursor.value() == 57
    viewer.dims.set_current_step(0, 123)
    assert traces.cursor.value() == 123
    assert traces.current_frame() == 123


def test_click_and_drag_on_the_plot_move_the_slider(traces, scene, viewer, qtbot, monkeypatch):
    import pyqtgraph as pg
    from qtpy.QtCore import QPointF, Qt

    scene.layer.selected_data = shapes_of(scene.layer, [1, 2])
    vb = traces.view_box
    # a real mouse click at x = 80
    y_mid = float(np.mean(vb.viewRange()[1]))
    view_pos = traces.plot_widget.mapFromScene(vb.mapViewToScene(QPointF(80.0, y_mid)))
    qtbot.mouseClick(traces.plot_widget.viewport(), Qt.MouseButton.LeftButton, pos=view_pos)
    assert abs(viewer.dims.current_step[0] - 80) <= 1
    assert abs(traces.cursor.value() - viewer.dims.current_step[0]) < 1e-9
    # a left drag scrubs
    ev = FakeDrag(vb.mapViewToScene(QPointF(150.2, y_mid)))
    vb.mouseDragEvent(ev)
    assert ev.accepted
    assert viewer.dims.current_step[0] == 150
    # Shift-drag (and other buttons) go to pyqtgraph: pan / zoom; the slider stays
    panned = []
    monkeypatch.setattr(pg.ViewBox, "mouseDragEvent", lambda self, ev, axis=None: panned.append(ev))
    for ev in (
        FakeDrag(
            vb.mapViewToScene(QPointF(20.0, y_mid)), modifiers=Qt.KeyboardModifier.ShiftModifier
        ),
        FakeDrag(vb.mapViewToScene(QPointF(20.0, y_mid)), button=Qt.MouseButton.MiddleButton),
    ):
        vb.mouseDragEvent(ev)
        assert not ev.accepted
    assert len(panned) == 2
    assert viewer.dims.current_step[0] == 150
    # dragging the cursor line moves the slider too
    traces.cursor.setValue(33.4)
    assert viewer.dims.current_step[0] == 33
    # clicks beyond the sequence are clipped to its last frame
    traces._on_plot_frame(10_000)
    assert viewer.dims.current_step[0] == scene.raw[0].shape[1] - 1


def test_dff_toggle_changes_the_curves_and_stores_dff(traces, scene):
    from napari_sima._raster import DFF_PARAMETERS
    from napari_sima.core import dff

    rows = [2, 4]
    scene.layer.selected_data = shapes_of(scene.layer, rows)
    raw_ys = curve_y(traces)
    traces.kind_combo.setCurrentIndex(1)  # through the UI
    assert traces.kind == "dff"
    ys = curve_y(traces)
    expected = dff(scene.raw[0][rows], **DFF_PARAMETERS)
    assert len(ys) == 2
    for y, e, r in zip(ys, expected, raw_ys, strict=True):
        np.testing.assert_allclose(y, e, rtol=1e-6)
        assert not np.allclose(y, r)
    assert "dF/F" in traces.title
    stored = scene.ds.signals(0)["truth"]
    assert len(stored["dff"]) == 2
    np.testing.assert_allclose(stored["dff"][1], dff(scene.raw[1], **DFF_PARAMETERS), rtol=1e-6)
    assert traces.set_kind("raw")
    np.testing.assert_array_equal(curve_y(traces)[0], scene.raw[0][2])
    assert not traces.set_kind("spikes")


def test_dff_of_a_large_set_is_computed_in_a_worker(traces, scene, qtbot, monkeypatch):
    from napari_sima._raster import DFF_PARAMETERS
    from napari_sima._widgets import traces_widget
    from napari_sima.core import dff

    monkeypatch.setattr(traces_widget, "DFF_MAIN_THREAD_MAX_VALUES", 10)
    scene.layer.selected_data = shapes_of(scene.layer, [6])
    traces.set_kind("dff")
    # the rows on screen are shown at once, the whole set follows in a worker
    np.testing.assert_allclose(
        curve_y(traces)[0], dff(scene.raw[0][[6]], **DFF_PARAMETERS)[0], rtol=1e-6
    )
    qtbot.waitUntil(lambda: not traces.is_computing, timeout=30_000)
    assert len(scene.ds.signals(0)["truth"]["dff"]) == 2


def test_sequence_selector(traces, scene):
    assert traces.sequence_combo.isVisibleTo(traces)
    assert traces.sequence_combo.count() == 2
    scene.layer.selected_data = shapes_of(scene.layer, [8])
    traces.sequence_combo.setCurrentIndex(1)
    assert traces.sequence == 1
    np.testing.assert_array_equal(curve_y(traces)[0], scene.raw[1][8])
    assert "sequence 1" in traces.title
    assert not traces.set_sequence(5)


def test_one_sequence_hides_the_selector(viewer, movie, make_traces):
    from napari_sima._layers import dataset_layer_data
    from napari_sima._sample_data import sample_dataset

    ds = sample_dataset(movie)[:1]  # first sequence only
    for data, kwargs, _ in dataset_layer_data(ds, "one"):
        viewer.add_image(data, **kwargs)
    ds.extract(truth_rois(movie), label="one", save_summary=False)
    widget = make_traces()
    assert widget.label == "one"
    assert not widget.sequence_combo.isVisibleTo(widget)


def test_no_signals_gives_a_message(viewer, movie, make_traces):
    ds = open_sample(viewer)
    layer = add_rois_layer(viewer, truth_rois(movie))
    widget = make_traces()
    assert widget.signals is None
    assert "No signals" in widget.title
    layer.selected_data = {0, 1}
    viewer.dims.set_current_step(0, 5)
    assert widget.curves == []
    assert not widget.cursor.isVisible()
    assert not widget.set_signals(ds, "nope")
    assert "nope" in widget.title
    widget.show_raster()  # says there is nothing to show, no exception


def test_rois_layer_removed(traces, scene, viewer):
    scene.layer.selected_data = shapes_of(scene.layer, [0, 1])
    assert len(traces.curves) == 2
    viewer.layers.remove(scene.layer)
    assert traces.shapes_layer is None
    assert traces.curves == []
    assert "no ROIs layer" in traces.title
    viewer.dims.set_current_step(0, 3)  # still follows the slider, no error


def test_signals_missing_after_clear(traces, scene):
    scene.layer.selected_data = shapes_of(scene.layer, [0])
    traces.clear_signals()
    assert traces.curves == []
    assert traces.title
    scene.layer.selected_data = shapes_of(scene.layer, [1])
    assert traces.curves == []


def test_rois_matched_by_label_when_indices_do_not_fit(traces, scene, viewer, movie):
    # a layer showing three of the cells, in another order: its roi indices 0..2
    # are not the set's rows, the labels say which rows they are
    other = add_rois_layer(viewer, truth_rois(movie, [5, 2, 9]), name="ROIs: subset")
    viewer.layers.selection.active = other
    assert traces.shapes_layer is other
    other.selected_data = shapes_of(other, [0, 2])  # cell-5 and cell-9
    assert traces.rows == [5, 9]
    np.testing.assert_array_equal(curve_y(traces)[1], scene.raw[0][9])
    assert "matched by id/label" in traces.title


def test_selection_not_in_the_set_is_said(traces, scene, viewer, movie):
    rois = truth_rois(movie, [0, 1])
    for k, roi in enumerate(rois):
        roi.label = f"new-{k}"
    other = add_rois_layer(viewer, rois, name="ROIs: new")
    other.features = other.features.assign(roi=[7 + int(r) for r in other.features["roi"]])
    viewer.layers.selection.active = other
    other.selected_data = set(range(other.nshapes))
    assert traces.curves == []
    assert "not in this signal set" in traces.title


def test_hidden_dock_draws_when_shown(scene, make_traces):
    widget = make_traces(show=False)
    scene.layer.selected_data = shapes_of(scene.layer, [4])
    assert widget.rows == [4]
    assert widget.curves == []  # nothing drawn while hidden
    widget.show()
    assert len(widget.curves) == 1
    np.testing.assert_array_equal(curve_y(widget)[0], scene.raw[0][4])


def test_set_selection_and_raster_button(traces, scene, viewer):
    from napari_sima._raster import raster_name

    traces.set_selection([11, 0])
    assert traces.rows == [11, 0]
    np.testing.assert_array_equal(curve_y(traces)[0], scene.raw[0][11])
    traces.raster_button.click()
    layer = viewer.layers[raster_name("truth", "raw")]
    np.testing.assert_array_equal(layer.data, np.concatenate(scene.raw, axis=1))


def test_theme_follows_napari(traces, viewer):
    from napari.utils.theme import get_theme

    for name in ("light", "dark"):
        viewer.theme = name
        expected = get_theme(name).background.as_hex()
        assert traces.plot_widget.backgroundBrush().color().name() == expected.lower()


def test_set_signals_from_another_dock(scene, make_traces, viewer, movie):
    widget = make_traces()
    rois = truth_rois(movie, [3, 4])
    scene.ds.extract(rois, label="pair", save_summary=False)
    assert widget.set_signals(scene.ds, "pair", channel="GCaMP")
    assert widget.label == "pair" and widget.channel == 0
    assert "pair" in [lab for _, lab, _ in widget.available_sets]
    scene.layer.selected_data = shapes_of(scene.layer, [4])
    assert widget.rows == [1]  # matched by label: cell-4 is row 1 of 'pair'


def test_docked_from_the_manifest_and_found(make_napari_viewer, movie, qtbot):
    from napari_sima._widgets.traces_widget import TracesWidget, find_traces_widget

    viewer = make_napari_viewer()
    assert find_traces_widget(viewer) is None
    ds = open_sample(viewer)
    rois = truth_rois(movie)
    ds.extract(rois, label="docked", save_summary=False)
    layer = add_rois_layer(viewer, rois)
    _, widget = viewer.window.add_plugin_dock_widget("napari-sima", "Traces")
    assert isinstance(widget, TracesWidget)
    assert find_traces_widget(viewer) is widget
    assert widget.label == "docked"
    layer.selected_data = shapes_of(layer, [2])
    assert widget.rows == [2]
    widget.close()
    assert find_traces_widget(viewer) is None or find_traces_widget(viewer) is not widget


def test_demo_docks_traces_at_the_bottom(make_napari_viewer):
    from napari_sima._demo import DEMO_WIDGET_AREAS, DEMO_WIDGET_COMMANDS, dock_plugin_widget
    from napari_sima._widgets.traces_widget import TracesWidget, find_traces_widget

    assert "napari-sima.traces_widget" in DEMO_WIDGET_COMMANDS
    assert DEMO_WIDGET_AREAS["napari-sima.traces_widget"] == "bottom"
    viewer = make_napari_viewer()
    widget = dock_plugin_widget(viewer, "napari-sima.traces_widget", "bottom")
    assert isinstance(widget, TracesWidget)
    docks = viewer.window.dock_widgets
    assert docks["Traces (napari-sima)"] is widget
    assert widget.parent().area == "bottom"
    assert find_traces_widget(viewer) is widget
    # docking again returns the same widget; napari's own call finds it too
    assert dock_plugin_widget(viewer, "napari-sima.traces_widget", "bottom") is widget
    _, again = viewer.window.add_plugin_dock_widget("napari-sima", "Traces")
    assert again is widget


# --------------------------------------------------------------------------- spikes
@pytest.mark.filterwarnings("ignore:sigma estimate:RuntimeWarning")
def test_fit_and_spikes_of_the_selected_rois(scene, make_traces, viewer):
    from qtpy.QtCore import Qt

    from napari_sima._raster import raster_name
    from napari_sima._widgets.traces_widget import SPIKE_STEM_HEIGHT

    spikes, fits, _ = scene.ds.infer_spikes(label="truth")
    traces = make_traces()
    assert traces.has_spikes
    assert traces.fit_check.isEnabled() and traces.spikes_check.isEnabled()
    rows = [0, 3, 5]
    scene.layer.selected_data = shapes_of(scene.layer, rows)
    # fits: dashed, in the trace's colour, over the raw traces
    assert len(traces.curves) == len(traces.fit_curves) == 3
    for row, fit, curve in zip(rows, traces.fit_curves, traces.curves, strict=True):
        np.testing.assert_array_equal(fit.yData, fits[0][row])
        pen = fit.opts["pen"]
        assert pen.style() == Qt.PenStyle.DashLine
        assert pen.color().getRgb()[:3] == curve.opts["pen"].color().getRgb()[:3]
    assert "raw + fit" in traces.title
    # spikes: one lane per ROI, top to bottom, stems as tall as the normalised spikes
    assert traces.spikes_plot_widget.isVisible()
    assert len(traces.spike_curves) == 3
    for k, (row, stem) in enumerate(zip(rows, traces.spike_curves, strict=True)):
        lane = 2 - k
        x, y = np.asarray(stem.xData), np.asarray(stem.yData)
        np.testing.assert_array_equal(x[1::3], np.arange(200))
        np.testing.assert_array_equal(y[0::3], lane)
        np.testing.assert_array_equal(y[2::3], lane)
        np.testing.assert_allclose(y[1::3] - lane, SPIKE_STEM_HEIGHT * spikes[0][row], atol=1e-12)
        assert stem.opts["pen"].color() == traces.curves[k].opts["pen"].color()
    # one time axis: the cursors of both plots follow the slider and move it
    viewer.dims.set_current_step(0, 42)
    assert traces.cursor.value() == 42 and traces.spikes_cursor.value() == 42
    traces.spikes_cursor.setValue(77.2)
    assert viewer.dims.current_step[0] == 77 and traces.cursor.value() == 77
    traces.view_box.setXRange(10, 60, padding=0)
    assert traces.spikes_view_box.viewRange()[0] == pytest.approx([10, 60])
    # toggles
    traces.fit_check.setChecked(False)
    assert traces.fit_curves == [] and len(traces.curves) == 3
    traces.spikes_check.setChecked(False)
    assert traces.spike_curves == [] and not traces.spikes_plot_widget.isVisible()
    traces.set_spike_display(fit=True, spikes=True)
    assert traces.fit_check.isChecked() and traces.spikes_check.isChecked()
    assert len(traces.fit_curves) == len(traces.spike_curves) == 3
    # ΔF/F: the spikes stay, the fits (raw units) go, and the title says why
    traces.set_kind("dff")
    assert traces.fit_curves == [] and len(traces.spike_curves) == 3
    assert "fits are drawn over raw signals only" in traces.title
    traces.set_kind("raw")
    traces.set_sequence(1)
    np.testing.assert_array_equal(traces.fit_curves[0].yData, fits[1][0])
    # the Raster menu switches the raster to spikes
    traces.raster_actions["spikes"].trigger()
    layer = viewer.layers[raster_name("truth", "spikes")]
    np.testing.assert_allclose(layer.data, np.concatenate(spikes, axis=1), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:sigma estimate:RuntimeWarning")
def test_set_without_spikes_then_inferred(traces, scene):
    scene.layer.selected_data = shapes_of(scene.layer, [1])
    assert not traces.has_spikes
    assert not traces.fit_check.isEnabled() and not traces.spikes_check.isEnabled()
    assert "Infer spikes dock" in traces.spikes_check.toolTip()
    assert not traces.raster_actions["spikes"].isEnabled()
    assert traces.fit_curves == [] and traces.spike_curves == []
    assert not traces.spikes_plot_widget.isVisible()
    assert len(traces.curves) == 1
    scene.ds.infer_spikes(label="truth")  # from a script: ⟳ reloads the set shown
    traces.refresh_button.click()
    assert traces.label == "truth" and traces.rows == [1]
    assert len(traces.fit_curves) == len(traces.spike_curves) == 1
    assert traces.raster_actions["spikes"].isEnabled()
    assert traces.spikes_plot_widget.isVisible()
