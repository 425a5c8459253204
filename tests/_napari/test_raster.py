"""The ROI × time raster layer: data, placement, row clicks, ΔF/F, ROI matching."""

from __future__ import annotations

import types

import numpy as np
import pytest

from napari_sima import _raster as rs
from napari_sima._layers import sima_metadata
from napari_sima._roi_convert import rois_to_shapes
from napari_sima.core import ROI, ROIList

SAMPLE_SHAPE = (1, 128, 128)


@pytest.fixture(scope="module")
def movie():
    from napari_sima._sample_data import sample_movie

    return sample_movie()


def truth_rois(movie, indices=None) -> ROIList:
    indices = range(len(movie.cells)) if indices is None else indices
    return ROIList(
        [ROI(mask=movie.cells[i].mask, label=f"cell-{i}", im_shape=SAMPLE_SHAPE) for i in indices]
    )


def shapes_of(layer, roi_indices) -> set[int]:
    wanted = {int(r) for r in roi_indices}
    return {i for i, r in enumerate(layer.features["roi"].tolist()) if int(r) in wanted}


@pytest.fixture
def scene(viewer, movie):
    viewer.open_sample("napari-sima", "calcium")
    ds = next(m["dataset"] for m in map(sima_metadata, viewer.layers) if m)
    rois = truth_rois(movie)
    signals = ds.extract(rois, label="truth", save_summary=False)
    layer = viewer.add_shapes(**rois_to_shapes(rois), name="ROIs: truth")
    return types.SimpleNamespace(ds=ds, rois=rois, raw=signals["raw"], layer=layer)


class FakeMouse:
    """A napari mouse event as our callbacks read it (position, type, modifiers)."""

    def __init__(self, position, type="mouse_press", modifiers=(), zoom=1.0):
        self.position = tuple(position)
        self.type = type
        self.modifiers = modifiers
        self.camera_zoom = zoom
        self.dims_displayed = [2, 3]


def world_of(layer, row, col, ndim=4):
    """World position (viewer ndim) of the centre of raster cell (row, col)."""
    y, x = layer.data_to_world((row, col))
    return (0.0,) * (ndim - 2) + (float(y), float(x))


def click(handler, layer, position, modifiers=(), move_to=None):
    """Run the drag callback as napari does: press, (move), release."""
    ev = FakeMouse(position, "mouse_press", modifiers)
    gen = handler.on_drag(layer, ev)
    next(gen)
    if move_to is not None:
        ev.type, ev.position = "mouse_move", tuple(move_to)
        next(gen)
    ev.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)


# --------------------------------------------------------------------------- converters
def test_signals_to_raster(scene):
    signals = scene.ds.signals(0)["truth"]
    data, kwargs, kind = rs.signals_to_raster(signals, dataset=scene.ds, label="truth", channel=0)
    assert kind == "image"
    np.testing.assert_array_equal(data, np.concatenate(scene.raw, axis=1))
    assert data.dtype == np.float32 and data.shape == (12, 400)
    assert kwargs["name"] == "raster: truth [raw]"
    assert kwargs["axis_labels"] == ("roi", "frame")
    assert kwargs["colormap"] == rs.RASTER_COLORMAP
    lo, hi = kwargs["contrast_limits"]
    assert lo == pytest.approx(np.percentile(data, 1))
    assert hi == pytest.approx(np.percentile(data, 99))
    meta = kwargs["metadata"]["napari_sima"]
    assert meta["kind"] == "raster" and meta["signal_kind"] == "raw"
    assert meta["dataset"] is scene.ds and meta["label"] == "truth" and meta["channel"] == 0
    assert meta["sequence_starts"] == [0, 200]
    assert meta["roi_labels"][3] == "cell-3"
    one, kw1, _ = rs.signals_to_raster(signals, "raw", sequence=1, label="truth")
    np.testing.assert_array_equal(one, scene.raw[1])
    assert kw1["metadata"]["napari_sima"]["sequence"] == 1
    with pytest.raises(ValueError, match="sequence"):
        rs.signals_to_raster(signals, sequence=2)
    with pytest.raises(ValueError, match="kind"):
        rs.signals_to_raster(signals, kind="bogus")
    with pytest.raises(ValueError, match="no inferred spikes"):
        rs.signals_to_raster(signals, kind="spikes")  # none inferred yet


def test_dff_raster_is_computed_and_cached(scene):
    from napari_sima.core import dff

    signals = {"raw": [r.copy() for r in scene.raw], "rois": []}
    data, kwargs, _ = rs.signals_to_raster(signals, "dff", label="x")
    expected = np.concatenate([dff(r, **rs.DFF_PARAMETERS) for r in scene.raw], axis=1)
    np.testing.assert_allclose(data, expected, rtol=1e-6)
    assert kwargs["name"] == "raster: x [dF/F]"
    assert rs.has_dff(signals) and signals["dff_parameters"] == rs.DFF_PARAMETERS


def test_match_rois():
    sig = [{"label": "a", "id": None}, {"label": "b", "id": None}, {"label": "c", "id": "7"}]
    # by index: labels agree (or are unset)
    m = rs.match_rois({"roi": [0, 0, 2, None], "label": ["a", "a", None, "z"]}, sig)
    assert m.how == "index"
    assert m.rows_of_shapes([0, 1, 2, 3]) == ([0, 2], [("shape", 3)])
    assert m.shapes_of_row(0) == [0, 1]
    # labels contradict the indices: by id, else label
    m = rs.match_rois({"roi": [0, 1, 2], "label": ["c", "b", "q"], "id": [None, None, "7"]}, sig)
    assert m.how == "label"
    assert m.rows_of_shapes([0, 1, 2]) == ([2, 1], [])
    # nothing to match
    m = rs.match_rois({"roi": [5], "label": ["zz"]}, sig)
    assert m.how == "none" and m.rows_of_shapes([0]) == ([], [5])


# --------------------------------------------------------------------------- viewer
def test_show_raster_adds_one_layer_under_the_movie(scene, viewer):
    active = viewer.layers.selection.active
    layer = rs.show_raster(viewer, scene.ds, "truth", channel=0, kind="raw")
    assert layer.name == "raster: truth [raw]"
    np.testing.assert_array_equal(layer.data, np.concatenate(scene.raw, axis=1))
    # one viewer, dims unchanged: the raster is a 2-D band below the 128 x 128 movie
    assert viewer.dims.ndim == 4
    assert tuple(viewer.dims.axis_labels) == ("t", "z", "y", "x")
    top = layer.data_to_world((-0.5, -0.5))
    bottom_right = layer.data_to_world((11.5, 399.5))
    assert top[0] > 127.5 and top[1] == pytest.approx(-0.5)
    assert bottom_right[1] == pytest.approx(127.5)
    assert viewer.layers.selection.active is active
    # again: the same layer is updated
    again = rs.show_raster(viewer, scene.ds, "truth", channel="GCaMP", kind="raw")
    assert again is layer
    assert [lay.name for lay in viewer.layers].count("raster: truth [raw]") == 1
    assert len(layer.mouse_drag_callbacks) == 1
    # one sequence
    rs.show_raster(viewer, scene.ds, "truth", sequence=1)
    np.testing.assert_array_equal(layer.data, scene.raw[1])
    with pytest.raises(KeyError):
        rs.show_raster(viewer, scene.ds, "missing")


def test_dff_raster_layer_is_stored_with_the_set(scene, viewer):
    from napari_sima.core import dff

    layer = rs.show_raster(viewer, scene.ds, "truth", kind="dff")
    assert layer.name == "raster: truth [dF/F]"
    np.testing.assert_allclose(
        layer.data[:, 200:], dff(scene.raw[1], **rs.DFF_PARAMETERS), rtol=1e-6
    )
    assert rs.has_dff(scene.ds.signals(0)["truth"])


def test_roi_index_and_frame_at(scene, viewer):
    layer = rs.show_raster(viewer, scene.ds, "truth")
    assert rs.roi_index_at(layer, world_of(layer, 4, 10)) == 4
    assert rs.roi_index_at(layer, world_of(layer, 4.4, 399.4)) == 4
    assert rs.frame_at(layer, world_of(layer, 0, 250)) == (1, 50)
    assert rs.frame_at(layer, world_of(layer, 11, 199)) == (0, 199)
    assert rs.roi_index_at(layer, world_of(layer, -0.6, 10)) is None
    assert rs.roi_index_at(layer, world_of(layer, 3, 400)) is None
    assert rs.roi_index_at(layer, (0, 0, 64.0, 64.0)) is None  # on the movie


def test_row_click_selects_the_rois_shapes(scene, viewer, qtbot):
    from napari_sima._widgets.traces_widget import TracesWidget

    traces = TracesWidget(viewer)
    qtbot.addWidget(traces)
    traces.show()
    layer = rs.show_raster(viewer, scene.ds, "truth")
    viewer.layers.selection.active = layer  # napari calls the active layer's callbacks
    handler = layer.mouse_drag_callbacks[0].__self__
    click(handler, layer, world_of(layer, 5, 30))
    assert set(scene.layer.selected_data) == shapes_of(scene.layer, [5])
    assert traces.rows == [5]  # the Traces dock follows
    click(handler, layer, world_of(layer, 2, 30), modifiers=("Shift",))
    assert set(scene.layer.selected_data) == shapes_of(scene.layer, [5, 2])
    # a drag (pan) selects nothing
    click(handler, layer, world_of(layer, 8, 30), move_to=world_of(layer, 8, 200))
    assert set(scene.layer.selected_data) == shapes_of(scene.layer, [5, 2])
    # off the raster: nothing changes
    click(handler, layer, (0, 0, 10.0, 10.0))
    assert set(scene.layer.selected_data) == shapes_of(scene.layer, [5, 2])


def test_double_click_also_moves_the_slider(scene, viewer):
    layer = rs.show_raster(viewer, scene.ds, "truth")
    handler = layer.mouse_drag_callbacks[0].__self__
    handler.on_double_click(layer, FakeMouse(world_of(layer, 9, 260), "mouse_double_click"))
    assert set(scene.layer.selected_data) == shapes_of(scene.layer, [9])
    assert viewer.dims.current_step[0] == 60  # frame 60 of sequence 1


def test_row_click_matches_a_renumbered_rois_layer(scene, viewer, movie):
    other = viewer.add_shapes(**rois_to_shapes(truth_rois(movie, [9, 4])), name="ROIs: two")
    layer = rs.show_raster(viewer, scene.ds, "truth")
    viewer.layers.selection.active = other
    assert rs.select_from_raster(viewer, layer, world_of(layer, 4, 0)) == sorted(
        shapes_of(other, [1])
    )
    assert rs.select_from_raster(viewer, layer, world_of(layer, 0, 0)) == []  # not in it


def test_no_rois_layer_no_error(scene, viewer):
    layer = rs.show_raster(viewer, scene.ds, "truth")
    viewer.layers.remove(scene.layer)
    handler = layer.mouse_drag_callbacks[0].__self__
    click(handler, layer, world_of(layer, 1, 1))
    handler.on_double_click(layer, FakeMouse(world_of(layer, 1, 7)))
    assert viewer.dims.current_step[0] == 7


def test_raster_without_a_movie(viewer, movie):
    from napari_sima._sample_data import sample_dataset

    ds = sample_dataset(movie)
    ds.extract(truth_rois(movie), label="alone", save_summary=False)
    layer = rs.show_raster(viewer, ds, "alone")
    assert tuple(layer.scale) == (1.0, 1.0)
    assert tuple(viewer.dims.axis_labels) == ("roi", "frame")
    assert rs.time_axis(viewer) is None
    assert rs.jump_to_raster_frame(viewer, layer, world_of(layer, 0, 3, ndim=2)) is None


def test_dff_stored_on_disk(viewer, movie, tmp_path):
    from napari_sima._sample_data import sample_dataset
    from napari_sima.core import ImagingDataset

    ds = sample_dataset(movie)
    ds.save(tmp_path / "s.sima")
    ds.extract(truth_rois(movie), label="disk", save_summary=False)
    assert "dff" not in ds.signals(0)["disk"]
    rs.show_raster(viewer, ds, "disk", kind="dff")
    again = ImagingDataset.load(tmp_path / "s.sima")
    stored = again.signals(0)["disk"]
    assert rs.has_dff(stored)
    assert stored["dff_parameters"] == rs.DFF_PARAMETERS
    assert rs.signal_set_labels(again, 0) == ["disk"]


@pytest.mark.filterwarnings("ignore:sigma estimate:RuntimeWarning")
def test_spikes_raster_layer(scene, viewer):
    assert not rs.has_spikes(scene.ds.signals(0)["truth"])
    with pytest.raises(ValueError, match="no inferred spikes"):
        rs.show_raster(viewer, scene.ds, "truth", kind="spikes")
    spikes, _, _ = scene.ds.infer_spikes(label="truth")
    assert rs.has_spikes(scene.ds.signals(0)["truth"])
    raw = rs.show_raster(viewer, scene.ds, "truth", kind="raw")
    layer = rs.show_raster(viewer, scene.ds, "truth", kind="spikes")
    assert layer is not raw  # its own layer, at the same place under the movie
    assert layer.name == "raster: truth [spikes]"
    np.testing.assert_allclose(layer.data, np.concatenate(spikes, axis=1), rtol=1e-6)
    assert tuple(layer.scale) == tuple(raw.scale)
    assert tuple(layer.translate) == tuple(raw.translate)
    assert layer.colormap.name == rs.SPIKES_COLORMAP
    assert tuple(layer.contrast_limits) == pytest.approx(rs.SPIKES_CONTRAST)
    assert sima_metadata(layer)["signal_kind"] == "spikes"
    assert rs.find_raster_layer(viewer, scene.ds, "truth", 0, "spikes") is layer
    # rows still select ROIs
    assert rs.roi_index_at(layer, world_of(layer, 7, 12)) == 7
    assert rs.select_from_raster(viewer, layer, world_of(layer, 7, 12)) == sorted(
        shapes_of(scene.layer, [7])
    )
