"""ROI <-> napari Shapes / Labels converters (napari_sima._roi_convert)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from napari_sima._roi_convert import (
    FEATURE_COLUMNS,
    ellipse_to_polygon,
    labels_to_rois,
    napari_to_roi_vertices,
    roi_to_napari_vertices,
    rois_to_labels,
    rois_to_shapes,
    shapes_to_rois,
)
from napari_sima.core import ROI, ROIList


def _shapes_layer(**kwargs):
    import napari

    return napari.layers.Shapes(**kwargs)


def _layer_from(rois, **kw):
    kwargs = rois_to_shapes(rois, **kw)
    return _shapes_layer(**kwargs)


def _irregular(n=30, cx=40.3, cy=25.7, r=6.0, z=0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.8, 1.2, n)
    return np.column_stack([cx + rad * np.cos(t), cy + rad * np.sin(t), np.full(n, z)])


def _assert_same_polygons(a: ROI, b: ROI, atol=1e-9):
    pa, pb = a.polygon_arrays, b.polygon_arrays
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def _dense(roi: ROI) -> np.ndarray:
    return np.stack([m.toarray() for m in roi.mask])


# ---------------------------------------------------------------------------------------
# coordinates
# ---------------------------------------------------------------------------------------
def test_vertex_mapping_swaps_axes_and_shifts_half_pixel():
    verts = np.array([[2.0, 1.0, 3.0], [6.0, 1.0, 3.0], [6.0, 4.0, 3.0]])
    nap = roi_to_napari_vertices(verts)
    np.testing.assert_array_equal(nap[0], [3.0, 0.5, 1.5])
    np.testing.assert_array_equal(roi_to_napari_vertices(verts, ndim=2)[0], [0.5, 1.5])
    np.testing.assert_array_equal(napari_to_roi_vertices(nap), verts)
    # extra leading axes (t of a 4-D layer) are ignored
    four = np.column_stack([np.full(3, 7.0), nap])
    np.testing.assert_array_equal(napari_to_roi_vertices(four), verts)


def test_features_table_and_kwargs():
    rois = ROIList(
        [
            ROI(polygons=_irregular(), label="a", id="17", tags={"z", "b", "accepted"}),
            ROI(polygons=_irregular(cx=10, cy=10, seed=1), tags={"rejected"}),
        ],
        timestamp="2026-01-01-00h00m00s",
    )
    kw = rois_to_shapes(rois)
    f = kw["features"]
    assert list(f.columns) == list(FEATURE_COLUMNS)
    assert f["roi"].tolist() == [0, 1]
    assert f["id"].tolist() == ["17", None]
    assert f["label"].tolist() == ["a", None]
    assert f["tags"].tolist() == ["b,z", ""]
    assert f["accepted"].tolist() == [True, False]
    assert f["rejected"].tolist() == [False, True]
    assert f["plane"].tolist() == [0, 0]
    assert f["kind"].tolist() == ["polygons", "polygons"]
    assert kw["shape_type"] == ["polygon", "polygon"]
    assert kw["edge_color"].shape == (2, 4) and np.all(kw["face_color"][:, 3] == 0)
    assert kw["metadata"]["napari_sima"]["rois"] is rois
    assert kw["data"][0].shape == (30, 3)
    assert pd.isna(kw["feature_defaults"]["roi"])
    layer = _shapes_layer(**kw)  # napari accepts the dict as is
    assert layer.ndim == 3 and len(layer.data) == 2
    back = shapes_to_rois(layer)
    assert back.timestamp == rois.timestamp


def test_colors_single_and_per_roi():
    rois = [ROI(polygons=_irregular(seed=k)) for k in range(3)]
    kw = rois_to_shapes(rois, colors="red")
    np.testing.assert_allclose(kw["edge_color"], [[1, 0, 0, 1]] * 3)
    kw = rois_to_shapes(rois, colors=["red", "green", "blue"])
    np.testing.assert_allclose(kw["edge_color"][2], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="one per ROI"):
        rois_to_shapes(rois, colors=["red", "green"])


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------
def test_polygon_round_trip_through_kwargs_and_layer():
    rois = [
        ROI(polygons=_irregular(seed=k, cx=10 + 20 * k), label=f"c{k}", im_shape=(64, 128))
        for k in range(4)
    ]
    back = shapes_to_rois(rois_to_shapes(rois))
    for a, b in zip(rois, back, strict=True):
        _assert_same_polygons(a, b)
        assert b.label == a.label
    layer = _layer_from(rois)
    assert layer.data[0].dtype == np.float32  # napari's storage precision
    back = shapes_to_rois(layer, im_shape=(64, 128))
    for a, b in zip(rois, back, strict=True):
        _assert_same_polygons(a, b)  # unchanged shapes: original vertices
        assert b.im_shape == (1, 64, 128)
        assert (_dense(a) == _dense(b)).all()


def test_edited_polygon_uses_the_new_vertices():
    rois = [ROI(polygons=_irregular(seed=k, cx=10 + 20 * k)) for k in range(2)]
    layer = _layer_from(rois)
    data = list(layer.data)
    data[1] = data[1] + np.array([0.0, 2.0, 3.0], dtype=np.float32)
    layer.data = data
    back = shapes_to_rois(layer)
    _assert_same_polygons(rois[0], back[0])
    moved = rois[1].polygon_arrays[0] + [3.0, 2.0, 0.0]
    np.testing.assert_allclose(back[1].polygon_arrays[0], moved, atol=1e-4)  # float32
    # through the kwargs (no layer, no metadata): float64 exact
    kw = rois_to_shapes(rois)
    kw["data"][1] = kw["data"][1] + [0.0, 2.0, 3.0]
    kw.pop("metadata")
    back = shapes_to_rois(kw)
    np.testing.assert_allclose(back[1].polygon_arrays[0], moved, rtol=0, atol=1e-9)
    _assert_same_polygons(rois[0], back[0])


def test_rectangle_pixel_convention():
    r0, r1, c0, c1 = 3, 7, 5, 11
    layer = _shapes_layer(ndim=2)
    layer.add_rectangles(np.array([[r0 - 0.5, c0 - 0.5], [r1 - 0.5, c1 - 0.5]]))
    (roi,) = shapes_to_rois(layer, im_shape=(16, 20))
    assert len(roi.polygon_arrays[0]) == 4
    expected = np.zeros((16, 20), dtype=bool)
    expected[r0:r1, c0:c1] = True
    np.testing.assert_array_equal(_dense(roi)[0], expected)
    # and the way there: the ROI's napari outline runs along those pixel edges
    kw = rois_to_shapes([roi], ndim=2)
    ys, xs = kw["data"][0][:, 0], kw["data"][0][:, 1]
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (r0 - 0.5, r1 - 0.5, c0 - 0.5, c1 - 0.5)


def _ellipse_pixels(center, u, w, shape):
    """Pixels (r, c) whose centre is strictly inside c + cos t u + sin t w (napari coords)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    pts = np.stack([rr.ravel() - center[0], cc.ravel() - center[1]])
    ab = np.linalg.solve(np.column_stack([u, w]), pts)
    return ((ab**2).sum(axis=0) < 1).reshape(shape)


@pytest.mark.parametrize(
    ("center", "radii", "angle"),
    [
        ((20.0, 30.0), (5.0, 5.0), 0.0),  # circle centred on a pixel (ties on the axes)
        ((20.5, 30.5), (4.0, 9.0), 0.0),  # centred on a corner
        ((20.3, 31.7), (2.2, 3.1), 0.0),  # small
        ((30.0, 40.0), (25.0, 12.5), 0.0),  # large
        ((25.2, 35.9), (11.0, 4.5), 0.6),  # rotated
        ((25.0, 35.0), (8.0, 8.0), np.pi / 4),  # rotated circle
        ((2.0, 3.0), (6.0, 7.5), 0.3),  # partly outside the image
    ],
)
def test_ellipse_becomes_exact_polygon(center, radii, angle):
    shape = (60, 80)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    u = rot @ np.array([radii[0], 0.0])
    w = rot @ np.array([0.0, radii[1]])
    c = np.asarray(center)
    corners = np.array([c - u - w, c + u - w, c + u + w, c - u + w])  # napari (r, c)
    layer = _shapes_layer(ndim=2)
    layer.add(corners, shape_type="ellipse")
    (roi,) = shapes_to_rois(layer, im_shape=shape)
    # napari keeps float32 corners (which can move centres that lie exactly on the
    # ellipse across it): compare against the ellipse napari stored
    stored = np.asarray(layer.data[0], dtype=float)
    c32 = stored.mean(axis=0)
    u32, w32 = (stored[1] - stored[0]) / 2, (stored[2] - stored[1]) / 2
    np.testing.assert_array_equal(_dense(roi)[0], _ellipse_pixels(c32, u32, w32, shape))
    # through the kwargs (float64 corners) it is the ideal ellipse
    (roi64,) = shapes_to_rois({"data": [corners], "shape_type": ["ellipse"]}, im_shape=shape)
    np.testing.assert_array_equal(_dense(roi64)[0], _ellipse_pixels(c, u, w, shape))
    # the polygon never leaves the ellipse
    verts = roi.polygon_arrays[0][:, :2] - 0.5  # to napari (x, y) = (c, r)
    ab = np.linalg.solve(
        np.column_stack([(stored[1] - stored[0])[::-1], (stored[2] - stored[1])[::-1]]) / 2,
        (verts - c32[::-1]).T,
    )
    assert np.all((ab**2).sum(axis=0) <= 1 + 1e-9)


def test_ellipse_vertices_fixed_and_adaptive():
    corners = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 6.0], [0.0, 6.0]])
    assert len(ellipse_to_polygon(corners, 12)) == 12
    small = ellipse_to_polygon(corners)
    big = ellipse_to_polygon(corners * 20)
    assert 16 <= len(small) < len(big) <= 4096
    with pytest.raises(ValueError, match="no area"):
        ellipse_to_polygon(np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 0.0], [0.0, 0.0]]))
    # fixed count stored by rois_to_shapes is used on the way back
    kw = rois_to_shapes([], ndim=2, ellipse_vertices=24)
    layer = _shapes_layer(**kw)
    layer.add(corners, shape_type="ellipse")
    (roi,) = shapes_to_rois(layer)
    assert len(roi.polygon_arrays[0]) == 24


def test_multi_polygon_roi_groups_back():
    a = _irregular(cx=10, cy=10, seed=1)
    b = _irregular(cx=40, cy=30, seed=2, z=2)
    roi = ROI(polygons=[a, b], label="two", im_shape=(3, 64, 64))
    kw = rois_to_shapes([roi, ROI(polygons=_irregular(cx=50, cy=50, seed=3))])
    assert kw["features"]["roi"].tolist() == [0, 0, 1]
    assert kw["features"]["plane"].tolist() == [0, 2, 0]
    assert kw["data"][1][0, 0] == 2
    layer = _shapes_layer(**kw)
    back = shapes_to_rois(layer)
    assert len(back) == 2 and back[0].label == "two"
    _assert_same_polygons(roi, back[0])
    # shapes that share a roi value (no metadata: e.g. user-edited) also merge
    kw.pop("metadata")
    back = shapes_to_rois(kw, im_shape=(3, 64, 64))
    assert len(back) == 2 and len(back[0].polygon_arrays) == 2
    assert (_dense(back[0]) == _dense(roi)).all()


def test_mask_rois_keep_their_mask_when_unchanged():
    boolean = np.zeros((2, 20, 30), dtype=bool)
    boolean[0, 3:9, 4:12] = True
    boolean[0, 5:7, 7:9] = False  # a hole -> two outlines
    boolean[1, 14:17, 20:25] = True
    weighted = np.zeros((20, 30))
    weighted[10:15, 2:6] = np.linspace(0.1, 2.0, 20).reshape(5, 4)
    rois = [ROI(mask=boolean, label="holey"), ROI(mask=weighted, label="w", tags={"accepted"})]
    kw = rois_to_shapes(rois)
    f = kw["features"]
    assert f["kind"].tolist() == ["mask"] * 4
    assert f["roi"].tolist() == [0, 0, 0, 1]
    assert f["plane"].tolist() == [0, 0, 1, 0]
    layer = _shapes_layer(**kw)
    layer.features.loc[3, "label"] = "renamed"
    back = shapes_to_rois(layer)
    assert [r.kind for r in back] == ["mask", "mask"]
    np.testing.assert_array_equal(_dense(back[0]), boolean)
    assert back[1].mask[0].dtype == weighted.dtype
    np.testing.assert_array_equal(_dense(back[1])[0], weighted)
    assert back[1].label == "renamed" and back[1].tags == {"accepted"}
    # the weighted mask is outlined where > 0
    outline = ROI(polygons=kw["data"][3][:, [2, 1, 0]] + [0.5, 0.5, 0], im_shape=(20, 30))
    np.testing.assert_array_equal(_dense(outline)[0], weighted > 0)


def test_edited_mask_outline_becomes_polygon_roi():
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 4:12] = True
    layer = _layer_from([ROI(mask=mask, label="m")])
    data = list(layer.data)
    data[0] = data[0] + np.array([0, 1, 0], dtype=np.float32)
    layer.data = data
    (roi,) = shapes_to_rois(layer, im_shape=(20, 30))
    assert roi.kind == "polygons" and roi.label == "m"
    np.testing.assert_array_equal(_dense(roi)[0], np.roll(mask, 1, axis=0))
    # deleting one outline of a two-blob mask ROI keeps the other blob
    two = np.zeros((20, 30), dtype=bool)
    two[2:5, 2:5] = two[10:14, 20:25] = True
    layer = _layer_from([ROI(mask=two)])
    assert len(layer.data) == 2
    layer.selected_data = {0}
    layer.remove_selected()
    (roi,) = shapes_to_rois(layer, im_shape=(20, 30))
    assert roi.kind == "polygons" and roi.size in (9, 20)


def test_three_plane_rois_round_trip():
    im_shape = (3, 32, 40)
    rois = [
        ROI(polygons=_irregular(cx=12, cy=12, r=5, z=z, seed=z), label=f"p{z}", im_shape=im_shape)
        for z in range(3)
    ]
    layer = _layer_from(rois)
    assert sorted({int(d[0, 0]) for d in layer.data}) == [0, 1, 2]
    back = shapes_to_rois(layer, im_shape=im_shape)
    for a, b in zip(rois, back, strict=True):
        _assert_same_polygons(a, b)
        np.testing.assert_array_equal(_dense(a), _dense(b))
    # edited (metadata dropped) shapes keep their plane from the z coordinate
    back = shapes_to_rois({"data": layer.data, "features": layer.features}, im_shape=im_shape)
    for a, b in zip(rois, back, strict=True):
        np.testing.assert_array_equal(_dense(a), _dense(b))


def test_properties_round_trip_and_curation_edits():
    rois = [
        ROI(polygons=_irregular(seed=0), label="cell 1", id="a1", tags={"interneuron", "accepted"}),
        ROI(polygons=_irregular(seed=1, cx=10), label="cell 2", id="a2", tags={"rejected"}),
        ROI(polygons=_irregular(seed=2, cx=20), tags=set()),
    ]
    layer = _layer_from(rois)
    back = shapes_to_rois(layer)
    for a, b in zip(rois, back, strict=True):
        assert (b.label, b.id, b.tags) == (a.label, a.id, a.tags)
    f = layer.features
    f.loc[0, "accepted"] = False
    f.loc[0, "rejected"] = True
    f.loc[1, "rejected"] = False
    f.loc[2, "tags"] = "pyramidal, bright"
    f.loc[2, "label"] = "new name"
    layer.features = f
    back = shapes_to_rois(layer)
    assert back[0].tags == {"interneuron", "rejected"}
    assert back[1].tags == set()
    assert back[2].tags == {"pyramidal", "bright"} and back[2].label == "new name"


def test_ndim_2():
    roi = ROI(polygons=_irregular(), label="flat")
    kw = rois_to_shapes([roi], ndim=2)
    assert kw["data"][0].shape == (30, 2)
    back = shapes_to_rois(_shapes_layer(**kw))
    _assert_same_polygons(roi, back[0])
    with pytest.raises(ValueError, match="plane 1"):
        rois_to_shapes([ROI(polygons=_irregular(z=1))], ndim=2)
    with pytest.raises(ValueError, match="ndim"):
        rois_to_shapes([roi], ndim=4)


def test_new_user_shapes_become_new_rois():
    rois = [ROI(polygons=_irregular(seed=k, cx=10 + 20 * k), label=f"c{k}") for k in range(2)]
    layer = _layer_from(rois)
    square = np.array([[0, 2, 2], [0, 2, 8], [0, 8, 8], [0, 8, 2.0]])
    layer.add(square, shape_type="polygon")
    layer.add(square + [0, 10, 0], shape_type="rectangle")
    f = layer.features
    assert len(f) == 4 and f["roi"].isna().tolist() == [False, False, True, True]
    assert not f["accepted"].iloc[-1]
    back = shapes_to_rois(layer, im_shape=(32, 64))
    assert len(back) == 4
    assert [r.label for r in back] == ["c0", "c1", None, None]
    assert back[2].tags == set() and back[2].id is None
    expected = np.zeros((32, 64), dtype=bool)
    expected[3:8, 3:8] = True  # edges through the centres of pixels 2 and 8: excluded
    np.testing.assert_array_equal(_dense(back[2])[0], expected)
    np.testing.assert_array_equal(_dense(back[3])[0], np.roll(expected, 10, axis=0))


def test_new_shapes_on_an_empty_layer_and_a_4d_layer():
    layer = _shapes_layer(**rois_to_shapes([]))
    layer.add(np.array([[1, 2, 2], [1, 2, 8], [1, 8, 5.0]]), shape_type="polygon")
    (roi,) = shapes_to_rois(layer)
    assert roi.polygon_arrays[0][0, 2] == 1
    four = _shapes_layer(ndim=4)
    four.add_polygons(np.array([[3, 1, 2, 2], [3, 1, 2, 6], [3, 1, 6, 6.0]]))
    (roi,) = shapes_to_rois(four)
    np.testing.assert_array_equal(roi.polygon_arrays[0][0], [2.5, 2.5, 1.0])


def test_lines_paths_and_degenerate_shapes_are_skipped_with_warnings():
    layer = _shapes_layer(ndim=2)
    layer.add_polygons(np.array([[1, 1], [1, 5], [5, 5.0]]))
    layer.add_lines(np.array([[1, 2], [5, 7.0]]))
    layer.add_paths(np.array([[1, 2], [5, 7], [6, 6.0]]))
    kw = {
        "data": list(layer.data)
        + [np.array([[0, 0], [0, 4], [0, 4.0]]), np.array([[0, 0], [1, 1], [2, 2.0]])],
        "shape_type": list(layer.shape_type) + ["polygon", "polygon"],
        "features": {"label": [None, "axon", None, "flat", None]},
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rois = shapes_to_rois(kw)
    assert len(rois) == 1
    text = " | ".join(str(w.message) for w in caught)
    assert "1 (line, 'axon')" in text and "2 (path)" in text
    assert "3 (polygon, 'flat')" in text and "4 (polygon)" in text
    assert "degenerate" in text and "without area" in text


def test_vertices_outside_the_image_are_clipped():
    layer = _shapes_layer(ndim=2)
    layer.add_rectangles(np.array([[-5.5, -3.5], [2.5, 4.5]]))
    (roi,) = shapes_to_rois(layer, im_shape=(10, 10))
    expected = np.zeros((10, 10), dtype=bool)
    expected[:3, :5] = True
    np.testing.assert_array_equal(_dense(roi)[0], expected)


def test_shapes_on_missing_planes_are_skipped():
    kw = {"data": [np.array([[5, 1, 1], [5, 1, 5], [5, 5, 5.0]])], "shape_type": "polygon"}
    with pytest.warns(UserWarning, match="plane 5"):
        assert shapes_to_rois(kw, im_shape=(2, 10, 10)) == []


def test_empty_roi_is_left_out_with_a_warning():
    empty = ROI(mask=np.zeros((5, 5), dtype=bool), label="nothing")
    with pytest.warns(UserWarning, match="'nothing'"):
        kw = rois_to_shapes([empty, ROI(polygons=_irregular())])
    assert kw["features"]["roi"].tolist() == [1]
    assert len(shapes_to_rois(kw)) == 1


# ---------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------
def test_rois_to_labels_later_wins_and_labels_back():
    im_shape = (2, 10, 12)
    a = ROI(polygons=[[1, 1, 0], [6, 1, 0], [6, 5, 0], [1, 5, 0]])
    b = ROI(polygons=[[4, 3, 0], [9, 3, 0], [9, 8, 0], [4, 8, 0]])
    w = np.zeros((2, 10, 12))
    w[1, 0:2, 0:3] = 0.25
    c = ROI(mask=w)
    labels = rois_to_labels([a, b, c], im_shape)
    assert labels.dtype == np.int32 and labels.shape == im_shape
    assert labels[0, 1, 1] == 1 and labels[0, 4, 5] == 2 and labels[0, 3, 4] == 2
    assert labels[1, 0:2, 0:3].tolist() == [[3] * 3] * 2
    assert (labels[1] > 0).sum() == 6
    back = labels_to_rois(labels)
    assert [r.label for r in back] == ["1", "2", "3"]
    for k, roi in enumerate(back):
        np.testing.assert_array_equal(_dense(roi), labels == k + 1)
    assert rois_to_labels([], (4, 4)).shape == (1, 4, 4)
    sparse_roi = ROI(mask=sparse.csr_matrix(np.eye(4, dtype=bool)))
    assert rois_to_labels([sparse_roi], (3, 3)).sum() == 3  # cropped


# ---------------------------------------------------------------------------------------
# in a viewer
# ---------------------------------------------------------------------------------------
def test_layer_in_viewer_aligns_with_movie_and_round_trips(make_napari_viewer):
    viewer = make_napari_viewer()
    movie = np.zeros((4, 3, 32, 40), dtype=np.uint16)
    viewer.add_image(movie, name="movie")
    rois = [
        ROI(polygons=_irregular(cx=12, cy=12, r=5, z=z, seed=z), label=f"p{z}", tags={"accepted"})
        for z in range(3)
    ]
    layer = viewer.add_shapes(**rois_to_shapes(rois), name="rois")
    assert viewer.dims.ndim == 4
    viewer.dims.set_point(1, 2)  # plane 2: only that ROI is shown
    assert layer._data_view.ndisplay == 2
    shown = np.flatnonzero(layer._data_view._displayed)
    assert shown.tolist() == [2]
    back = shapes_to_rois(layer, im_shape=(3, 32, 40))
    for a, b in zip(rois, back, strict=True):
        _assert_same_polygons(a, b)
        assert b.tags == {"accepted"}


def test_roi_feature_values_of_other_types_group_and_flags_parse():
    sq = np.array([[1, 1], [1, 5], [5, 5], [5, 1.0]])
    kw = {
        "data": [sq, sq + 10, sq + 20, sq + 30],
        "shape_type": "polygon",
        "features": {
            "roi": [2.0, "cell-a", "cell-a", np.nan],
            "accepted": ["True", "false", "false", None],
        },
    }
    rois = shapes_to_rois(kw)
    assert [len(r.polygon_arrays) for r in rois] == [1, 2, 1]
    assert [r.tags for r in rois] == [{"accepted"}, set(), set()]
