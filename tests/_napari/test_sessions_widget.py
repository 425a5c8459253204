"""The Sessions dock widget, driven through its public methods under Xvfb.

Sessions are small synthetic datasets saved in ``tmp_path``: a textured field with
bright cells, and the same field seen through a known similarity transform.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import transform as sk

from napari_sima._layers import dataset_layer_data, sima_metadata
from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence

WAIT_MS = 60_000
SIZE = 96
N_CELLS = 12
#: The second session sees the field rotated by 3°, shifted by (4, -3) pixels.
TRUE_TF = sk.SimilarityTransform(rotation=np.deg2rad(3.0), translation=(4.0, -3.0))


# --------------------------------------------------------------------------- data
def field(seed: int = 3) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """A textured image with bright round cells; the cells as ``(x, y, r)`` in ROI coordinates."""
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 1.5) * 40 + 100
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cells = []
    while len(cells) < N_CELLS:
        cy, cx = rng.uniform(14, SIZE - 14, 2)
        r = rng.uniform(3.0, 5.0)
        if any(np.hypot(cx - x, cy - y) < r + rr + 3 for x, y, rr in cells):
            continue
        img += 60 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        cells.append((cx + 0.5, cy + 0.5, r))  # pixel centres sit at (c + 0.5, r + 0.5)
    return img, cells


def circle(x: float, y: float, r: float, n: int = 16) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([x + r * np.cos(t), y + r * np.sin(t), np.zeros(n)])


def roi_tf(xy: np.ndarray) -> np.ndarray:
    """TRUE_TF in ROI coordinates (pixel corners): shift by half a pixel around it."""
    return TRUE_TF(np.asarray(xy)[:, :2] - 0.5) + 0.5


def movie(image: np.ndarray, seed: int, frames: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = image[None] + rng.normal(0, 2.0, size=(frames, *image.shape))
    return np.clip(noisy, 0, None).astype(np.uint16)[:, None, :, :, None]  # t z y x c


def make_dataset(path, image: np.ndarray, seed: int) -> ImagingDataset:
    seq = Sequence.create("ndarray", movie(image, seed), "tzyxc")
    return ImagingDataset([seq], path, channel_names=["GCaMP"])


def cell_rois(cells, transform=None, prefix: str = "cell") -> ROIList:
    out = []
    for k, (x, y, r) in enumerate(cells):
        verts = circle(x, y, r)
        if transform is not None:
            verts[:, :2] = transform(verts)
        out.append(
            ROI(polygons=[verts], label=f"{prefix}-{k}", id=str(k), im_shape=(1, SIZE, SIZE))
        )
    return ROIList(out)


@pytest.fixture(scope="module")
def scene():
    img, cells = field()
    moved = sk.warp(img, TRUE_TF.inverse, order=1, preserve_range=True, cval=100.0)
    return img, moved, cells


@pytest.fixture
def pair(tmp_path, scene):
    """Day 1 (reference) and day 2 (the field moved by TRUE_TF), each with its 'cells'."""
    img, moved, cells = scene
    day1 = make_dataset(tmp_path / "day1.sima", img, 1)
    day1.add_ROIs(cell_rois(cells), "cells")
    day2 = make_dataset(tmp_path / "day2.sima", moved, 2)
    day2.add_ROIs(cell_rois(cells, roi_tf), "cells")
    return day1, day2


@pytest.fixture
def make_widget(make_dock):
    from napari_sima._widgets.sessions_widget import SessionsWidget

    return lambda: make_dock(SessionsWidget)


@pytest.fixture
def widget(make_widget):
    return make_widget()


def wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)


def add_pair(widget, pair):
    day1, day2 = pair
    assert widget.add_session(day1, name="day1") == 0
    assert widget.add_session(day2, name="day2") == 1
    return day1, day2


def vertex_error(rois_a, rois_b) -> float:
    """Largest vertex distance between two ROI lists of single polygons (same order)."""
    return max(
        float(np.max(np.hypot(*(a.polygon_arrays[0][:, :2] - b.polygon_arrays[0][:, :2]).T)))
        for a, b in zip(rois_a, rois_b, strict=True)
    )


# --------------------------------------------------------------------------- sessions
def test_sessions_from_viewer_layers_and_open(viewer, make_widget, pair, tmp_path):
    day1, _day2 = pair
    for data, kwargs, layer_type in dataset_layer_data(day1, "day1", source=day1.savedir):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    widget = make_widget()
    assert [s.name for s in widget.sessions] == ["day1"]
    assert widget.sessions[0].roi_set == "cells"
    assert widget.reference is widget.sessions[0]
    assert widget.source is None
    assert not widget.estimate_button.isEnabled()

    assert widget.open_dataset(tmp_path / "day2.sima") == 1
    day2_session = widget.sessions[1]
    assert day2_session.name == "day2" and day2_session.roi_set == "cells"
    assert widget.source is day2_session
    assert widget.estimate_button.isEnabled()
    assert widget.table.rowCount() == 2
    assert widget.table.item(0, 0).text().startswith("day1")
    assert widget.table.item(1, 2).text() == str(N_CELLS)
    assert widget.table.item(1, 3).text() == "as is (not estimated)"

    # a dataset shown later in the viewer becomes a session by itself, once
    third = make_dataset(tmp_path / "day3.sima", np.ones((SIZE, SIZE)), 3)
    for data, kwargs, layer_type in dataset_layer_data(third, "day3"):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    assert [s.name for s in widget.sessions] == ["day1", "day2", "day3"]
    assert widget.add_viewer_datasets(notify=False) == 0

    # the buttons act on the selected row
    widget.table.selectRow(0)
    widget.add_set_button.click()
    assert [s.name for s in widget.sessions] == ["day1", "day2", "day3", "day1"]
    assert widget.sessions[3].dataset is widget.sessions[0].dataset
    assert widget.table.item(3, 3).text() == "reference dataset"
    widget.table.selectRow(3)
    widget.remove_button.click()
    assert len(widget.sessions) == 3

    assert widget.set_reference(1)
    assert widget.reference.name == "day2" and widget.source.name != "day2"
    assert widget.remove_session(1)
    assert widget.reference.name == "day1"
    assert not widget.open_dataset(tmp_path / "missing.sima") >= 0


# --------------------------------------------------------------------------- transform
def test_estimate_preview_and_import(widget, pair, qtbot, notifications, monkeypatch):
    day1, day2 = add_pair(widget, pair)
    assert widget.set_method("similarity")
    worker = widget.estimate()
    assert worker is not None and widget.is_running
    wait(qtbot, widget)

    preview = widget.preview
    assert preview is not None
    assert preview.source.dataset is day2 and preview.target.dataset is day1
    # the previewed ROIs sit on day 1's cells
    assert len(preview.result.rois) == N_CELLS
    assert vertex_error(preview.result.rois, day1.ROIs["cells"]) < 0.5
    layer = widget.preview_layer
    assert layer is not None and layer in widget.viewer.layers
    assert layer.nshapes == N_CELLS
    assert sima_metadata(layer)["dataset"] is day1
    assert "correlation" in widget.quality_label.text()
    assert widget.table.item(1, 3).text().startswith("similarity (NCC")
    # the reference's mean image is shown under the preview
    means = [
        lay for lay in widget.viewer.layers if (sima_metadata(lay) or {}).get("kind") == "mean"
    ]
    assert [sima_metadata(m)["dataset"] for m in means] == [day1]
    assert widget.viewer.layers.index(means[0]) < widget.viewer.layers.index(layer)
    assert set(day1.ROIs) == {"cells"}  # nothing stored by the preview

    label = widget.import_preview("cells from day2")
    assert label == "cells from day2"
    stored = ImagingDataset.load(day1.savedir).ROIs[label]
    assert [r.label for r in stored] == [r.label for r in day2.ROIs["cells"]]
    assert [r.id for r in stored] == [str(k) for k in range(N_CELLS)]
    assert vertex_error(stored, day1.ROIs["cells"]) < 0.5
    assert all(r.im_shape == (1, SIZE, SIZE) for r in stored)

    # importing under an existing name needs a confirmation
    stamp = day1.ROIs[label].timestamp
    assert widget.import_preview(label) is None
    assert any("already has an ROI set" in m for m in notifications.messages("warning"))
    assert day1.ROIs[label].timestamp == stamp
    assert widget.import_preview(label, overwrite=True) == label
    # the Import button asks before replacing
    from qtpy.QtWidgets import QMessageBox

    answers = []

    def answer(*args, **kwargs):
        answers.append(args[2])
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", answer)
    widget.label_edit.setText(label)
    widget.import_button.click()
    assert len(answers) == 1 and label in answers[0]
    assert "replacing" in widget.status_label.text()
    widget.label_edit.setText("")
    # blank label: the core's default (the source set's name, timestamped when taken)
    default = widget.import_preview("")
    assert default.startswith("cells_") and default in day1.ROIs


def test_anchor_estimate(widget, pair, qtbot, scene):
    day1, day2 = add_pair(widget, pair)
    _img, _moved, cells = scene
    landmarks = np.array([[20.0, 18.0, 0], [75.0, 22.0, 0], [70.0, 80.0, 0], [15.0, 70.0, 0]])
    day1.add_ROIs([ROI(polygons=[landmarks], im_shape=(1, SIZE, SIZE))], "anchor")
    moved = landmarks.copy()
    moved[:, :2] = roi_tf(landmarks)
    day2.add_ROIs([ROI(polygons=[moved[::-1]], im_shape=(1, SIZE, SIZE))], "anchor")
    assert widget.set_roi_set(1, "cells")
    assert not widget.set_roi_set(1, "nothing")
    # the row's ROI-set box lists the new set and chooses it
    combo = widget.table.cellWidget(1, 1)
    assert [combo.itemText(i) for i in range(combo.count())] == ["anchor", "cells"]
    combo.setCurrentText("anchor")
    assert widget.sessions[1].roi_set == "anchor"
    assert widget.source_combo.currentText() == "day2 — anchor"
    combo.setCurrentText("cells")
    assert widget.sessions[1].roi_set == "cells"
    assert widget.set_anchor_set("anchor")
    assert not widget.set_anchor_set("cells-missing")
    assert widget.set_method("affine")
    widget.estimate()
    wait(qtbot, widget)
    assert widget.preview is not None
    assert vertex_error(widget.preview.result.rois, day1.ROIs["cells"]) < 0.05
    assert "from anchors" in widget.quality_label.text()


def test_cancel_stores_nothing(widget, pair, qtbot, notifications):
    day1, _day2 = add_pair(widget, pair)
    widget.set_method("affine")
    assert widget.estimate() is not None
    widget.cancel()
    assert not widget.cancel_button.isEnabled()
    wait(qtbot, widget)
    assert widget.preview is None and widget.preview_layer is None
    assert not any(m.startswith("Preview") for m in map(lambda x: x.name, widget.viewer.layers))
    assert "Cancelled" in widget.status_label.text()
    assert widget.import_preview("x") is None
    assert set(day1.ROIs) == {"cells"}


def test_failed_estimate_shows_error_and_imports_nothing(
    widget, pair, qtbot, tmp_path, notifications
):
    day1, _day2 = pair
    noise = np.random.default_rng(7).normal(100, 20, size=(SIZE, SIZE)).clip(0)
    other = make_dataset(tmp_path / "noise.sima", noise, 5)
    other.add_ROIs(cell_rois(field()[1]), "cells")
    widget.add_session(day1, name="day1")
    widget.add_session(other, name="noise")
    widget.estimate()
    wait(qtbot, widget)
    errors = notifications.messages("error")
    assert any("could not register the images" in m for m in errors), errors
    assert widget.preview is None and widget.preview_layer is None
    assert "Failed" in widget.quality_label.text()
    assert not widget.import_button.isEnabled()
    assert widget.import_preview("cells") is None
    assert set(day1.ROIs) == {"cells"}
    # the widget refuses to map a session onto its own dataset
    widget.add_session(day1, name="day1 again")
    assert not widget.set_source(2)
    assert "the source must be another dataset" in notifications.messages("error")[-1]
    assert widget.source.name == "noise"


# --------------------------------------------------------------------------- align view
@pytest.fixture
def three(tmp_path):
    """Three sessions of one field (common space), ROI sets from synthetic sessions."""
    from napari_sima.core.synthetic_sessions import make_synthetic_sessions

    truth = make_synthetic_sessions(
        n_sessions=3, n_cells=25, im_shape=(80, 80), radius=(3.0, 5.0), seed=4
    )
    datasets = []
    for s, rois in enumerate(truth.roi_lists):
        ds = make_dataset(tmp_path / f"s{s}.sima", np.full((80, 80), 100.0), 10 + s)
        ds.add_ROIs(rois, "cells")
        datasets.append(ds)
    return datasets, truth


def rows_of(layer, refs):
    feats = layer.features
    return {
        i
        for i, (s, k) in enumerate(zip(feats["session"], feats["index"], strict=True))
        if (int(s), int(k)) in refs
    }


def test_align_register_and_curate(widget, three, qtbot, notifications):
    from napari_sima.core.registration import id_groups, score_registration

    datasets, truth = three
    for s, ds in enumerate(datasets):
        widget.add_session(ds, name=f"s{s}")
    assert widget.show_aligned()
    layer = widget.align_layer
    n_rois = sum(len(r) for r in truth.roi_lists)
    assert layer.nshapes == n_rois
    # one colour per session
    colours = {
        int(s): tuple(np.round(c[:3], 3))
        for s, c in zip(layer.features["session"], layer.edge_color, strict=True)
    }
    assert len(set(colours.values())) == 3

    # a cancelled registration changes nothing
    assert widget.register_ids() is not None
    widget.cancel()
    wait(qtbot, widget)
    assert widget.last_summary is None and not widget.align.dirty
    assert all(r.id is None for rois in widget.align.originals for r in rois)

    widget.min_iou_spin.setValue(0.25)
    assert widget.register_ids() is not None
    wait(qtbot, widget)
    summary = widget.last_summary
    assert summary is not None and len(summary.n_rois) == 3
    score = score_registration(widget.align.originals, truth.cells)
    assert score["roi_accuracy"] >= 0.95 and score["consistent"]
    assert widget.color_by == "id" and widget.ids_check.isChecked()
    assert list(layer.features["id_text"]) == [
        widget.align.display[int(s)][int(k)].id
        for s, k in zip(layer.features["session"], layer.features["index"], strict=True)
    ]
    assert widget.align.dirty

    # a cell seen in sessions 0 and 1: unmerge one ROI, then merge it back
    cluster = next(
        members for members in summary.clusters.values() if {s for s, _ in members} >= {0, 1}
    )
    ref0 = next(m for m in cluster if m[0] == 0)
    ref1 = next(m for m in cluster if m[0] == 1)
    layer.selected_data = rows_of(layer, {ref1})
    assert widget.selected_refs() == [ref1]
    ids = widget.unmerge_selected()
    originals = widget.align.originals
    assert ids == [originals[1][ref1[1]].id]
    assert originals[1][ref1[1]].id != originals[0][ref0[1]].id
    layer.selected_data = rows_of(layer, {ref0, ref1})
    shared = widget.merge_selected()
    assert originals[0][ref0[1]].id == originals[1][ref1[1]].id == shared
    # two ROIs of one session cannot share an id
    other0 = next(k for k in range(len(originals[0])) if k != ref0[1])
    layer.selected_data = rows_of(layer, {ref0, (0, other0)})
    assert widget.merge_selected() is None
    assert "same session" in notifications.messages("error")[-1]

    # tag the session-0 ROI, propagate the chosen tag to its cluster
    originals[0][ref0[1]].tags = {"PV", "accepted"}
    widget._refresh_tags()
    assert [widget.tags_list.item(i).text() for i in range(widget.tags_list.count())] == [
        "PV",
        "accepted",
    ]
    widget.set_checked_tags(["PV"])
    assert widget.propagate_tags() >= 1
    members = id_groups(widget.align.originals)[shared]
    assert ref0 in members and ref1 in members
    for s, k in members:
        assert "PV" in widget.align.originals[s][k].tags
        assert ("accepted" in widget.align.originals[s][k].tags) == ((s, k) == ref0)
    assert "PV" in layer.features["tags"].iloc[min(rows_of(layer, {ref1}))]

    # delete an ROI with napari's own tools: its ROI leaves the session
    lone = (2, 0)
    layer.selected_data = rows_of(layer, {lone})
    layer.remove_selected()
    assert len(widget.align.originals[2]) == len(truth.roi_lists[2]) - 1
    assert widget.align_layer is layer and layer.nshapes == n_rois - 1
    # ... and with the panel's button; the rows stay in step with the model
    layer.selected_data = rows_of(layer, {(2, 3)})
    assert widget.delete_selected() == 1
    assert len(widget.align.originals[2]) == len(truth.roi_lists[2]) - 2
    assert layer.nshapes == n_rois - 2
    for i, (s, k) in enumerate(
        zip(layer.features["session"], layer.features["index"], strict=True)
    ):
        assert layer.features["label"].iloc[i] == widget.align.originals[int(s)][int(k)].label

    # unsaved changes are not dropped silently
    assert not widget.show_aligned()
    saved = widget.save_all()
    assert saved == ["s0: cells", "s1: cells", "s2: cells"]
    assert not widget.align.dirty
    reloaded = [ImagingDataset.load(ds.savedir).ROIs["cells"] for ds in datasets]
    assert [len(r) for r in reloaded] == [len(r) for r in widget.align.originals]
    assert reloaded[0][ref0[1]].id == reloaded[1][ref1[1]].id == shared
    assert "PV" in reloaded[1][ref1[1]].tags
    assert [r.id for r in reloaded[2]] == [r.id for r in widget.align.originals[2]]
    assert widget.show_aligned()


def test_align_through_estimated_transform(widget, pair, qtbot, notifications):
    day1, day2 = add_pair(widget, pair)
    # the ROIs of day 2 have no ids yet; day 1's keep theirs
    rois2 = day2.ROIs["cells"]
    for r in rois2:
        r.id = None
    day2.add_ROIs(rois2, "cells")
    widget.set_method("similarity")
    widget.estimate()
    wait(qtbot, widget)
    assert widget.show_aligned()
    shown = widget.align.display[1]
    assert vertex_error(shown, day1.ROIs["cells"]) < 0.5  # day 2 drawn in day 1's space
    widget.register_ids()
    wait(qtbot, widget)
    assert widget.last_summary.cluster_sizes == {2: N_CELLS}
    # saved in day 2's own space: same outlines, day 1's ids
    assert widget.save_all("registered") == ["day1: registered", "day2: registered"]
    saved2 = ImagingDataset.load(day2.savedir).ROIs["registered"]
    assert [r.id for r in saved2] == [str(k) for k in range(N_CELLS)]
    assert vertex_error(saved2, day2.ROIs["cells"]) < 1e-9
    # a session of another frame size without a transform cannot be shown
    widget.remove_session(1)
    small = make_dataset(None, np.ones((40, 40)), 9)
    small.add_ROIs([ROI(polygons=[circle(10, 10, 3)], im_shape=(1, 40, 40))], "cells")
    widget.add_session(small, name="small")
    assert not widget.show_aligned(discard=True)
    assert "estimate its transform" in notifications.messages("error")[-1]


def test_map_rois_keeps_one_roi_per_roi():
    from napari_sima._widgets._sessions_view import Alignment, map_rois
    from napari_sima.core.transform import TransformEstimate

    shift = sk.EuclideanTransform(translation=(10.0, 0.0))
    est = TransformEstimate(transform=shift, method="euclidean", mode="anchor", plane=0)
    weights = np.zeros((1, 20, 20))
    weights[0, 5:9, 5:9] = 0.5
    rois = ROIList(
        [
            ROI(polygons=[circle(5, 5, 2)], label="inside", im_shape=(1, 20, 20)),
            ROI(polygons=[circle(15, 5, 2)], label="pushed out", im_shape=(1, 20, 20)),
            ROI(mask=weights, label="weighted", id="7", im_shape=(1, 20, 20)),
        ]
    )
    out = map_rois(rois, Alignment(None, None, [est], "euclidean"), (1, 20, 20), (1, 20, 20))
    assert [r.label for r in out] == ["inside", "pushed out", "weighted"]
    assert out[2].id == "7"
    np.testing.assert_allclose(out[0].polygon_arrays[0][:, 0], circle(15, 5, 2)[:, 0])
    assert out[1].polygon_arrays[0][:, 0].min() > 20  # outside, unclipped: no pixel
    assert all(r.im_shape == (1, 20, 20) for r in out)
    same = map_rois(rois, None, (1, 20, 20), (1, 20, 20))
    assert [r.label for r in same] == [r.label for r in rois] and same[0] is not rois[0]
    with pytest.raises(ValueError, match="estimate its transform"):
        map_rois(rois, None, (1, 20, 20), (1, 30, 20))
    with pytest.raises(ValueError, match="no transform"):
        map_rois(rois, Alignment(None, None, [None], "euclidean"), (1, 20, 20), (1, 20, 20))
