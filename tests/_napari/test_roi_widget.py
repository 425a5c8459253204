"""The ROIs dock widget (ROI manager), driven through its methods under Xvfb."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sima._layers import dataset_layer_data
from napari_sima._sample_data import sample_true_rois
from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence

SAMPLE_SHAPE = (1, 128, 128)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def recovery_dir(tmp_path, monkeypatch):
    """Recovery files go to tmp_path, never to the user's data folder."""
    folder = tmp_path / "recovery"
    monkeypatch.setenv("NAPARI_SIMA_RECOVERY_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def movie():
    from napari_sima._sample_data import sample_movie

    return sample_movie()


@pytest.fixture
def sample_ds(movie, tmp_path):
    """The sample dataset saved in tmp_path with the true cells as set 'truth'."""
    from napari_sima._sample_data import sample_dataset

    ds = sample_dataset(movie)
    ds.save(tmp_path / "sample.sima")
    ds.add_ROIs(sample_true_rois(movie, start=0), "truth")
    return ds


def square(x0, y0, x1, y1):
    return [[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]]


@pytest.fixture
def small_ds(tmp_path):
    """A 6 x 40 x 40 movie in tmp_path with polygon ROIs a, b (touching) and c."""
    rng = np.random.default_rng(0)
    seq = Sequence.create("ndarray", rng.integers(0, 100, (6, 40, 40), dtype=np.uint16), "tyx")
    ds = ImagingDataset([seq], tmp_path / "small.sima")
    shape = (1, 40, 40)
    ds.add_ROIs(
        ROIList(
            [
                ROI(polygons=square(5, 5, 10, 10), label="a", id="A", im_shape=shape),
                ROI(polygons=square(10, 6, 14, 9), label="b", id="B", tags={"pv"}, im_shape=shape),
                ROI(polygons=square(25, 25, 30, 31), label="c", im_shape=shape),
            ]
        ),
        "cells",
    )
    return ds


def _show(viewer, ds, name):
    for data, kwargs, layer_type in dataset_layer_data(ds, name):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)


@pytest.fixture
def make_widget(viewer, qtbot):
    from napari_sima._widgets.roi_widget import ROIManagerWidget

    def make(ds, name="sample"):
        _show(viewer, ds, name)
        widget = ROIManagerWidget(viewer)
        qtbot.addWidget(widget)
        return widget

    return make


def rows_of(layer, roi_index):
    return [i for i, v in enumerate(layer.features["roi"].tolist()) if v == roi_index]


def select_rois(widget, *roi_indices):
    layer = widget.layer
    widget.layer.selected_data = {i for r in roi_indices for i in rows_of(layer, r)}


def reload(ds):
    return ImagingDataset.load(ds.savedir)


# --------------------------------------------------------------------------- showing
def test_show_set_makes_shapes_layer_over_mean_image(viewer, make_widget, sample_ds, movie):
    widget = make_widget(sample_ds)
    layer = widget.layer
    assert widget.current_set == "truth"
    assert layer.name == "ROIs: truth"
    assert layer.ndim == 3 and layer.nshapes == len(movie.cells)
    assert {"roi", "id", "label", "tags", "accepted", "rejected", "plane", "kind"} <= set(
        layer.features.columns
    )
    assert layer.features["label"].tolist() == [f"cell-{i}" for i in range(len(movie.cells))]
    names = [lay.name for lay in viewer.layers]
    mean = [n for n in names if " mean " in n]
    assert mean, names
    assert all(names.index(m) < names.index("ROIs: truth") for m in mean)
    assert viewer.layers.selection.active is layer
    assert widget.set_combo.currentData() == "truth"
    assert widget.dataset_combo.count() == 1
    assert not widget.is_dirty


def test_widget_is_docked_from_manifest(viewer, small_ds):
    _show(viewer, small_ds, "small")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-sima", "ROIs")
    assert type(widget).__name__ == "ROIManagerWidget"
    assert widget.dataset is small_ds and widget.current_set == "cells"
    # plugin widgets get a proxied viewer; the layer kept must be the real one, as
    # napari's events and key bindings carry it
    assert not hasattr(widget.layer, "__wrapped__")
    layer = widget.layer
    handler = viewer.window._qt_viewer._key_map_handler
    layer.selected_data = {0}
    assert handler.press_key("y")
    assert bool(layer.features["accepted"][0]) and widget.is_dirty
    viewer.layers.remove(layer)
    assert widget.layer is None
    assert [k for k in reload(small_ds).ROIs if k.startswith("cells~recovery-")]


def test_mean_image_in_worker_for_long_datasets(viewer, make_widget, small_ds, qtbot, monkeypatch):
    from napari_sima._widgets import roi_widget

    monkeypatch.setattr(roi_widget, "MAIN_THREAD_MAX_FRAMES", 2)
    widget = make_widget(small_ds, "small")
    qtbot.waitUntil(lambda: any(" mean" in lay.name for lay in viewer.layers), timeout=30_000)
    names = [lay.name for lay in viewer.layers]
    assert names.index("small mean") < names.index("ROIs: cells")
    assert widget._mean_worker is None or qtbot.waitUntil(lambda: widget._mean_worker is None)


# --------------------------------------------------------------------------- editing
def test_add_shape_and_save(make_widget, sample_ds, movie):
    widget = make_widget(sample_ds)
    layer = widget.layer
    # napari rectangle around pixels rows 3..5, columns 100..103 (pixel centres at integers)
    layer.add(
        np.array([[0, 2.5, 99.5], [0, 2.5, 103.5], [0, 5.5, 103.5], [0, 5.5, 99.5]]),
        shape_type="rectangle",
    )
    assert widget.is_dirty
    assert widget.save_set() == "truth"
    assert not widget.is_dirty
    rois = reload(sample_ds).ROIs["truth"]
    assert len(rois) == len(movie.cells) + 1
    expected = np.zeros(SAMPLE_SHAPE, dtype=bool)
    expected[0, 3:6, 100:104] = True
    np.testing.assert_array_equal(np.asarray(rois[-1]), expected)
    # unchanged ROIs keep their exact masks
    for roi, cell in zip(rois[:-1], movie.cells, strict=True):
        np.testing.assert_array_equal(np.asarray(roi)[0], cell.mask)


def test_label_tags_and_status_persist(viewer, make_widget, sample_ds):
    widget = make_widget(sample_ds)
    select_rois(widget, 0)
    assert widget.set_label("pyramidal-1") == 1
    select_rois(widget, 1, 2)
    assert widget.add_tags("PV, interneuron") == 2
    assert widget.remove_tags("interneuron") == 2
    select_rois(widget, 3)
    widget.add_tags("noisy, x")
    assert widget.clear_tags() == 1
    select_rois(widget, 1)
    assert widget.mark_selected("accepted") == 1
    select_rois(widget, 2)
    assert widget.mark_selected("rejected") == 1
    select_rois(widget, 4)
    widget.mark_selected("accepted")
    assert widget.mark_selected(None) == 1
    # the table lists the selected ROIs
    select_rois(widget, 1, 2)
    assert widget.table.rowCount() == 2
    assert widget.table.item(0, 3).text() == "accepted"
    assert widget.save_set() == "truth"

    rois = reload(sample_ds).ROIs["truth"]
    assert rois[0].label == "pyramidal-1"
    assert rois[1].tags == {"PV", "accepted"}
    assert rois[2].tags == {"PV", "rejected"}
    assert rois[3].tags == set()
    assert rois[4].tags == set()
    assert rois[5].label == "cell-5" and rois[5].tags == set()


def test_status_key_bindings(viewer, make_widget, sample_ds):
    from app_model.types import KeyBinding

    from napari_sima._widgets.roi_widget import KEY_ACCEPT, KEY_CLEAR, KEY_REJECT

    widget = make_widget(sample_ds)
    layer = widget.layer
    # the keys are free in napari's Shapes key map
    class_keys = {str(k).lower() for k in type(layer).class_keymap}
    assert not {KEY_ACCEPT, KEY_REJECT, KEY_CLEAR} & class_keys
    # through napari's key handling (the active layer's key map)
    handler = viewer.window._qt_viewer._key_map_handler
    select_rois(widget, 0)
    assert handler.press_key(KEY_ACCEPT)
    handler.release_key(KEY_ACCEPT)
    select_rois(widget, 1)
    assert handler.press_key(KEY_REJECT)
    handler.release_key(KEY_REJECT)
    # and through the layer's own key map
    select_rois(widget, 2)
    layer.keymap[KeyBinding.from_str(KEY_ACCEPT.upper())](layer)
    layer.keymap[KeyBinding.from_str(KEY_CLEAR.upper())](layer)
    f = layer.features
    assert bool(f["accepted"][rows_of(layer, 0)[0]])
    assert bool(f["rejected"][rows_of(layer, 1)[0]])
    assert not f["accepted"][rows_of(layer, 2)[0]] and not f["rejected"][rows_of(layer, 2)[0]]
    widget.save_set()
    rois = reload(sample_ds).ROIs["truth"]
    assert rois[0].tags == {"accepted"} and rois[1].tags == {"rejected"}
    assert rois[2].tags == set()
    assert KEY_ACCEPT in widget.toolTip()


def test_merge_touching_rois_is_one_polygon(make_widget, small_ds):
    widget = make_widget(small_ds, "small")
    before = {r.label: np.asarray(r) for r in small_ds.ROIs["cells"]}
    select_rois(widget, 0, 1)
    assert widget.merge_selected()
    layer = widget.layer
    assert layer.nshapes == 2
    sel = sorted(layer.selected_data)
    assert len(sel) == 1 and layer.features["label"][sel[0]] == "a"
    widget.save_set()
    rois = reload(small_ds).ROIs["cells"]
    assert len(rois) == 2
    merged = next(r for r in rois if r.label == "a")
    assert len(merged.polygon_arrays) == 1
    assert merged.id == "A" and merged.tags == {"pv"}
    np.testing.assert_array_equal(np.asarray(merged), before["a"] | before["b"])


def test_merge_disjoint_then_unmerge(make_widget, small_ds):
    widget = make_widget(small_ds, "small")
    before = {r.label: np.asarray(r) for r in small_ds.ROIs["cells"]}
    select_rois(widget, 0, 2)  # a and c do not touch
    assert widget.merge_selected()
    layer = widget.layer
    sel = sorted(layer.selected_data)
    assert len(sel) == 2
    assert len(set(layer.features["roi"][sel])) == 1
    assert set(layer.features["label"][sel]) == {"a"}
    widget.save_set()
    rois = reload(small_ds).ROIs["cells"]
    assert len(rois) == 2
    merged = next(r for r in rois if r.label == "a")
    assert len(merged.polygon_arrays) == 2
    np.testing.assert_array_equal(np.asarray(merged), before["a"] | before["c"])

    # unmerge: one ROI per polygon, ids cleared, unique labels
    assert widget.unmerge_selected()
    sel = sorted(layer.selected_data)
    assert len(set(layer.features["roi"][sel])) == 2
    widget.save_set()
    rois = reload(small_ds).ROIs["cells"]
    assert sorted(r.label for r in rois) == ["a", "a-2", "b"]
    parts = [r for r in rois if r.label in ("a", "a-2")]
    assert all(r.id is None for r in parts)
    masks = sorted((np.asarray(r) for r in parts), key=lambda m: m.sum())
    np.testing.assert_array_equal(masks[0], before["a"])
    np.testing.assert_array_equal(masks[1], before["c"])


def test_merge_weighted_mask_is_a_notification(make_widget, small_ds, notifications):
    weights = np.zeros((40, 40))
    weights[20:24, 2:6] = 0.4
    rois = small_ds.ROIs["cells"]
    rois.append(ROI(mask=weights, label="soma-w", im_shape=(1, 40, 40)))
    small_ds.add_ROIs(rois, "cells")
    widget = make_widget(small_ds, "small")
    select_rois(widget, 0, 3)
    assert not widget.merge_selected()
    assert any("soma-w" in m for m in notifications.messages("error"))
    assert widget.layer.nshapes == 4


def test_delete_selected_and_draw_modes(qtbot, make_widget, small_ds):
    widget = make_widget(small_ds, "small")
    layer = widget.layer
    for mode, expected in [
        ("polygon", "add_polygon"),
        ("lasso", "add_polygon_lasso"),
        ("ellipse", "add_ellipse"),
        ("rectangle", "add_rectangle"),
        ("direct", "direct"),
        ("select", "select"),
    ]:
        assert widget.set_draw_mode(mode)
        assert str(layer.mode) == expected
    widget.mode_buttons["lasso"].click()
    assert str(layer.mode) == "add_polygon_lasso"
    widget.mode_buttons["select"].click()
    layer.selected_data = {0}
    assert widget.delete_selected() == 1
    assert layer.nshapes == 2 and widget.is_dirty
    widget.save_set()
    assert [r.label for r in reload(small_ds).ROIs["cells"]] == ["b", "c"]


def test_tag_filter_hides_and_shows(make_widget, sample_ds):
    widget = make_widget(sample_ds)
    layer = widget.layer
    select_rois(widget, 0, 1, 2)
    widget.mark_selected("accepted")
    select_rois(widget, 1)
    widget.add_tags("PV")
    layer.selected_data = set()
    n = layer.nshapes

    assert widget.set_tag_filter("accepted") == 3
    shown = widget.shown
    assert shown.tolist() == [i in (0, 1, 2) for i in range(n)]
    assert np.all(layer.edge_color[~shown, 3] == 0) and np.all(layer.edge_color[shown, 3] > 0)
    assert layer.nshapes == n  # hidden, not deleted
    # hidden shapes cannot be selected
    layer.selected_data = {0, 5}
    assert set(layer.selected_data) == {0}

    assert widget.set_tag_filter("accepted, -PV") == 2
    assert widget.set_tag_filter(["-accepted"]) == n - 3
    assert widget.filter_edit.text() == "-accepted"
    assert widget.set_tag_filter("") == n
    assert widget.shown.all() and np.all(layer.edge_color[:, 3] > 0)
    assert not widget.is_dirty or widget.save_set()


def test_color_modes(make_widget, small_ds):
    from napari_sima._widgets.roi_widget import STATUS_COLORS

    widget = make_widget(small_ds, "small")
    layer = widget.layer
    select_rois(widget, 0)
    widget.mark_selected("rejected")
    np.testing.assert_allclose(layer.edge_color[0], STATUS_COLORS["rejected"], atol=1e-6)
    np.testing.assert_allclose(layer.edge_color[1], STATUS_COLORS[None], atol=1e-6)
    widget.set_color_by("roi")
    assert not np.allclose(layer.edge_color[0], layer.edge_color[1])


# --------------------------------------------------------------------------- sets
def test_new_rename_delete_sets(viewer, make_widget, small_ds):
    widget = make_widget(small_ds, "small")
    assert widget.new_set("drawn")
    assert widget.current_set == "drawn" and widget.layer.nshapes == 0
    assert "drawn" in small_ds.ROIs and len(small_ds.ROIs["drawn"]) == 0
    assert [lay.name for lay in viewer.layers].count("ROIs: drawn") == 1
    assert "ROIs: cells" not in [lay.name for lay in viewer.layers]
    widget.layer.add(np.array([[0, 1.5, 1.5], [0, 1.5, 4.5], [0, 4.5, 4.5]]), shape_type="polygon")
    widget.save_set()
    assert len(reload(small_ds).ROIs["drawn"]) == 1

    assert widget.rename_set("drawn", "mine")
    assert widget.current_set == "mine" and widget.layer.name == "ROIs: mine"
    sets = reload(small_ds).ROIs
    assert "drawn" not in sets and len(sets["mine"]) == 1
    assert not widget.rename_set("mine", "cells")  # exists
    assert not widget.new_set("")

    assert widget.show_set("cells") and widget.layer.nshapes == 3
    assert widget.delete_set("mine")
    assert "mine" not in reload(small_ds).ROIs
    assert widget.current_set == "cells"
    assert widget.delete_set("cells")
    assert widget.current_set is None and widget.layer is None
    assert reload(small_ds).ROIs == {}
    assert not any(lay.name.startswith("ROIs:") for lay in viewer.layers)


def test_set_combo_switches_sets(make_widget, small_ds):
    small_ds.add_ROIs(ROIList([ROI(polygons=square(1, 1, 4, 4), im_shape=(1, 40, 40))]), "other")
    widget = make_widget(small_ds, "small")
    assert widget.current_set == "other"  # the newest set
    index = widget.set_combo.findData("cells")
    widget.set_combo.setCurrentIndex(index)
    assert widget.current_set == "cells" and widget.layer.nshapes == 3


# --------------------------------------------------------------------------- recovery
def _edit(widget):
    widget.layer.add(
        np.array([[0, 30.5, 30.5], [0, 30.5, 35.5], [0, 35.5, 35.5], [0, 35.5, 30.5]]),
        shape_type="rectangle",
    )
    assert widget.is_dirty


def test_switching_sets_while_dirty_autosaves(make_widget, small_ds, notifications):
    small_ds.add_ROIs(ROIList([ROI(polygons=square(1, 1, 4, 4), im_shape=(1, 40, 40))]), "other")
    widget = make_widget(small_ds, "small")
    widget.show_set("cells")
    _edit(widget)
    assert widget.show_set("other")
    sets = reload(small_ds).ROIs
    recovery = [k for k in sets if k.startswith("cells~recovery-")]
    assert len(recovery) == 1
    assert len(sets[recovery[0]]) == 4 and len(sets["cells"]) == 3
    assert any(recovery[0] in m for m in notifications.messages("warning"))
    assert widget.recovery_labels() == recovery
    assert not widget.is_dirty

    # restore: the edits come back as unsaved changes of 'cells'; saving drops the recovery
    assert widget.restore_recovery(recovery[0])
    assert widget.current_set == "cells" and widget.is_dirty and widget.layer.nshapes == 4
    assert widget.save_set() == "cells"
    sets = reload(small_ds).ROIs
    assert len(sets["cells"]) == 4 and recovery[0] not in sets


def test_removing_layer_while_dirty_autosaves(viewer, make_widget, small_ds, notifications):
    widget = make_widget(small_ds, "small")
    _edit(widget)
    viewer.layers.remove(widget.layer)
    assert widget.layer is None and widget.current_set is None
    assert [k for k in reload(small_ds).ROIs if "~recovery-" in k]
    assert notifications.messages("warning")


def test_closing_widget_while_dirty_autosaves(make_widget, small_ds):
    widget = make_widget(small_ds, "small")
    _edit(widget)
    widget.close()
    assert [k for k in reload(small_ds).ROIs if k.startswith("cells~recovery-")]


def test_closing_dock_while_dirty_autosaves(viewer, make_widget, small_ds):
    widget = make_widget(small_ds, "small")
    viewer.window.add_dock_widget(widget, name="ROIs")
    assert widget.layer is not None and not widget._closed
    _edit(widget)
    viewer.window.remove_dock_widget(widget)
    assert [k for k in reload(small_ds).ROIs if k.startswith("cells~recovery-")]


def test_closing_viewer_while_dirty_autosaves(make_napari_viewer, qtbot, small_ds, notifications):
    from napari_sima._widgets.roi_widget import ROIManagerWidget

    viewer = make_napari_viewer()
    _show(viewer, small_ds, "small")
    widget = ROIManagerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="ROIs")
    _edit(widget)
    viewer.close()
    recovery = [k for k in reload(small_ds).ROIs if k.startswith("cells~recovery-")]
    assert len(recovery) == 1
    assert any(recovery[0] in m for m in notifications.messages("warning"))


def test_in_memory_dataset_recovers_to_file(viewer, make_widget, movie, recovery_dir):
    from napari_sima._sample_data import sample_dataset

    ds = sample_dataset(movie)  # no folder
    widget = make_widget(ds)
    assert widget.layer is None
    assert widget.new_set("a")
    _edit(widget)
    assert widget.new_set("b")
    labels = widget.recovery_labels()
    assert len(labels) == 1 and labels[0].startswith("a~recovery-")
    assert list(recovery_dir.glob("*/index.json"))
    assert "a~recovery" not in "".join(ds.ROIs)
    assert widget.restore_recovery(labels[0])
    assert widget.current_set == "a" and widget.layer.nshapes == 1
    assert widget.save_set() == "a"
    assert widget.recovery_labels() == []


@pytest.mark.filterwarnings("ignore:.*displacement array")
def test_read_only_dataset(viewer, make_widget, examples, notifications, recovery_dir):
    legacy = ImagingDataset.load(examples / "example.sima")  # legacy folders open read-only
    assert legacy.read_only
    widget = make_widget(legacy, "example")
    assert widget.layer is None
    assert widget.new_set("mine")  # lives in the layer only
    assert notifications.messages("warning")
    _edit(widget)
    assert widget.save_set() is None
    assert any("read-only" in m for m in notifications.messages("error"))
    assert widget.is_dirty  # the edits stay
    widget.close()
    assert not widget.is_dirty
    assert list(recovery_dir.glob("*/index.json"))
    labels = [m for m in notifications.messages("warning") if "mine~recovery-" in m]
    assert labels and str(recovery_dir) in labels[0]


# --------------------------------------------------------------------------- datasets
def test_dataset_combo_follows_layers(viewer, make_widget, small_ds, sample_ds):
    widget = make_widget(small_ds, "small")
    _show(viewer, sample_ds, "sample")
    assert [name for name, _ in widget.datasets()] == ["small", "sample"]
    index = [ds for _, ds in widget.datasets()].index(sample_ds)
    widget.dataset_combo.setCurrentIndex(index)
    assert widget.dataset is sample_ds and widget.current_set == "truth"
    assert "ROIs: cells" not in [lay.name for lay in viewer.layers]
    assert widget.set_dataset(small_ds)
    assert widget.current_set == "cells"


def test_no_dataset_warns(viewer, qtbot, notifications):
    from napari_sima._widgets.roi_widget import ROIManagerWidget

    widget = ROIManagerWidget(viewer)
    qtbot.addWidget(widget)
    assert not widget.new_set("x")
    assert not widget.save_set()
    assert widget.merge_selected() is False
    assert notifications.messages("warning")
