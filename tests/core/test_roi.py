"""ROI model, rasterisation rule, outlines, ROI sets on disk (ports SIMA's test_ROI)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import shapely
from scipy import sparse

from napari_sima.core import ImagingDataset, Sequence
from napari_sima.core.roi import ROI, NonBooleanMask, ROIList, mask2poly, poly2mask
from napari_sima.core.roi_store import (
    load_legacy_roi_sets,
    load_roi_set,
    load_roi_sets,
    save_roi_set,
)


# --------------------------------------------------------------------------- SIMA's tests
def test_poly2mask():
    poly1 = [[0, 0], [0, 1], [1, 1], [1, 0]]
    poly2 = [[0, 1], [0, 2], [2, 2], [2, 1]]
    masks = poly2mask([poly1, poly2], (3, 3))
    np.testing.assert_array_equal(
        masks[0].toarray(), [[True, False, False], [True, True, False], [False, False, False]]
    )
    assert masks[0].dtype == bool


def test_mask2poly():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 3:7] = True
    multi_poly = mask2poly(mask)
    np.testing.assert_array_equal(
        np.asarray(multi_poly.geoms[0].exterior.coords),
        [[7, 3.5, 0], [7, 2.5, 0], [6.5, 2, 0], [3.5, 2, 0], [3, 2.5, 0], [3, 3.5, 0],
         [3.5, 4, 0], [6.5, 4, 0], [7, 3.5, 0]],
    )


def test_roi_coords_and_mask():
    roi = ROI(polygons=[[0, 0], [0, 1], [1, 1], [1, 0]], im_shape=(2, 2))
    np.testing.assert_array_equal(
        roi.coords[0], np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], float)
    )
    np.testing.assert_array_equal(roi.mask[0].toarray(), [[True, False], [False, False]])
    np.testing.assert_array_equal(np.array(roi), [[[True, False], [False, False]]])


def test_roilist_identity_transform():
    roi = ROI(polygons=[[0, 0], [0, 2], [2, 2], [2, 0]], im_shape=(3, 3))
    out = ROIList([roi]).transform([np.array([[1, 0, 0], [0, 1, 0]])])
    for a, b in zip(out[0].coords, roi.coords):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- rasterisation
def test_rectangles_pixel_corner_convention():
    m = poly2mask([[2, 1], [6, 1], [6, 4], [2, 4]], (8, 8))[0].toarray()
    assert m.sum() == 12 and m[1:4, 2:6].all()
    m = poly2mask([[2, 1], [5, 1], [5, 3], [2, 3]], (8, 8))[0].toarray()
    assert m.sum() == 6 and m[1:3, 2:5].all()


def test_centre_on_edge_is_outside():
    # the diagonal edge passes exactly through the centres (0.5, 0.5), (1.5, 1.5)
    m = poly2mask([[0, 0], [3, 0], [3, 3]], (3, 3))[0].toarray()
    assert not m[0, 0] and not m[1, 1] and not m[2, 2]
    assert m[0, 1] and m[0, 2] and m[1, 2]


def test_plane_from_z_and_out_of_range():
    masks = poly2mask([[[0, 0, 1], [0, 2, 1], [2, 2, 1], [2, 0, 1]]], (2, 3, 3))
    assert masks[0].nnz == 0 and masks[1].nnz == 4
    with pytest.raises(ValueError, match="outside the image's 2 plane"):
        poly2mask([[[0, 0, 2], [0, 2, 2], [2, 2, 2]]], (2, 3, 3))  # z == n_planes
    with pytest.raises(ValueError, match="outside"):
        poly2mask([[[0, 0, -1], [0, 2, -1], [2, 2, -1]]], (2, 3, 3))


def test_polygon_partly_outside_is_clipped():
    m = poly2mask([[-5, -5], [2, -5], [2, 2], [-5, 2]], (4, 4))[0].toarray()
    assert m.sum() == 4 and m[:2, :2].all()


def test_self_intersecting_outline():
    bowtie = [[0, 0], [4, 4], [4, 0], [0, 4]]
    m = poly2mask(bowtie, (4, 4))[0].toarray()
    assert m.any() and m.sum() < 16


# --------------------------------------------------------------------------- ROI semantics
def test_roi_needs_exactly_one_of_mask_or_polygons():
    with pytest.raises(TypeError):
        ROI()
    with pytest.raises(TypeError):
        ROI(mask=np.ones((2, 2)), polygons=[[0, 0], [0, 1], [1, 1]])


def test_polygon_inputs():
    square = [[0, 0], [0, 2], [2, 2], [2, 0]]
    for polys in (
        square,
        np.array(square),
        [square, [[3, 3], [3, 4], [4, 4]]],
        shapely.Polygon(square),
        [shapely.Polygon(square)],
        shapely.MultiPolygon([shapely.Polygon(square)]),
    ):
        roi = ROI(polygons=polys, im_shape=(5, 5))
        assert roi.kind == "polygons"
        assert roi.mask[0].toarray()[:2, :2].all()
    closed = ROI(polygons=square + [square[0]])
    assert len(closed.polygon_arrays[0]) == 4


def test_collinear_and_repeated_vertices_removed_z_kept():
    roi = ROI(polygons=[[0, 0, 1], [0, 1, 1], [0, 1, 1], [0, 2, 1], [2, 2, 1], [2, 0, 1]])
    verts = roi.polygon_arrays[0]
    assert len(verts) <= 5
    assert np.all(verts[:, 2] == 1)


def test_bad_polygons():
    with pytest.raises(ValueError, match="fewer than 3 distinct vertices") as err:
        ROI(polygons=[[0, 0], [1, 1]], label="cell7")
    assert "cell7" in str(err.value)
    with pytest.raises(ValueError, match=r"\(N, 2\) or \(N, 3\)"):
        ROI(polygons=[[0, 0, 0, 0], [1, 1, 1, 1], [2, 0, 0, 0]])
    with pytest.raises(ValueError, match="non-finite"):
        ROI(polygons=[[0, 0], [np.nan, 1], [1, 1]])
    with pytest.raises(ValueError, match="outside the image"):
        ROI(polygons=[[0, 0, 3], [0, 1, 3], [1, 1, 3]], im_shape=(2, 4, 4))


def test_mask_inputs_dtype_kept():
    dense = np.zeros((2, 4, 5))
    dense[1, 1:3, 2:4] = 0.5
    for mask in (dense, list(dense), [sparse.lil_matrix(p) for p in dense]):
        roi = ROI(mask=mask)
        assert roi.im_shape == (2, 4, 5)
        assert roi.mask[1].dtype == np.float64
        np.testing.assert_array_equal(np.array(roi), dense)
    single = ROI(mask=sparse.csr_matrix(dense[1] > 0))
    assert single.im_shape == (1, 4, 5) and single.mask[0].dtype == bool
    assert single.size == 4


def test_mask_fitted_to_im_shape():
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    roi = ROI(mask=mask, im_shape=(2, 5, 6))
    assert [m.shape for m in roi.mask] == [(5, 6), (5, 6)]
    assert roi.mask[1].nnz == 0
    with pytest.raises(ValueError, match="outside"):
        ROI(mask=np.ones((3, 3), bool), im_shape=(2, 2))
    roi = ROI(mask=np.zeros((3, 3), bool))
    roi.im_shape = (1, 2, 2)  # empty rows outside are simply cropped
    assert roi.mask[0].shape == (2, 2)


def test_polygon_roi_needs_im_shape_for_mask():
    roi = ROI(polygons=[[0, 0], [0, 1], [1, 1]], label="x")
    with pytest.raises(ValueError, match="set im_shape"):
        roi.mask


def test_weighted_mask_has_no_polygons():
    roi = ROI(mask=np.array([[0, 0.5], [1, 0]]), label="w")
    with pytest.raises(NonBooleanMask, match="'w'"):
        roi.polygons
    boolean = ROI(mask=np.array([[0, 1], [1, 1]]))
    assert len(boolean.polygons.geoms) == 1


def test_properties_and_todict_round_trip():
    roi = ROI(polygons=[[0, 0], [0, 2], [2, 2]], label=3, id=7, tags=["a", "b"], im_shape=(4, 4))
    assert roi.label == "3" and roi.id == "7" and roi.tags == {"a", "b"}
    again = ROI(**roi.todict())
    assert again.label == "3" and again.id == "7" and again.tags == {"a", "b"}
    for a, b in zip(again.coords, roi.coords):
        np.testing.assert_array_equal(a, b)
    as_mask = roi.copy()
    d = as_mask.todict(type="mask")
    assert d["polygons"] is None and as_mask.kind == "mask"
    np.testing.assert_array_equal(np.array(as_mask), np.array(roi))
    assert "label='3'" in repr(roi) and str(roi) == "<ROI: label='3'>"


def test_roilist_subset_and_str():
    rois = ROIList(
        [
            ROI(polygons=[[0, 0], [0, 1], [1, 1]], tags={"a", "b"}),
            ROI(polygons=[[0, 0], [0, 1], [1, 1]], tags={"a"}),
            {"polygons": [[0, 0], [0, 1], [1, 1]], "tags": {"c"}},
        ],
        timestamp="2020-01-01-00h00m00s",
    )
    assert len(rois.subset(tags=["a"])) == 2
    assert len(rois.subset(tags="a", neg_tags=["b"])) == 1
    assert len(rois.subset(neg_tags="a")) == 1
    assert str(rois) == "<ROI set: nROIs=3, timestamp=2020-01-01-00h00m00s>"
    with pytest.raises(TypeError, match="item 0"):
        ROIList([42])


def test_transform_affine_and_callable():
    from skimage.transform import AffineTransform

    roi = ROI(polygons=[[1, 1, 0], [1, 3, 0], [3, 3, 0], [3, 1, 0]], label="c", tags={"t"})
    shift = np.array([[1, 0, 2], [0, 1, 5]])
    moved = ROIList([roi]).transform([shift], im_shape=(10, 10))
    np.testing.assert_allclose(moved[0].polygon_arrays[0][:, :2], roi.polygon_arrays[0][:, :2] + [2, 5])
    assert moved[0].label == "c" and moved[0].tags == {"t"} and moved[0].im_shape == (1, 10, 10)
    tf = AffineTransform(translation=(2, 5))
    by_callable = ROIList([roi]).transform([tf], copy_properties=False)
    np.testing.assert_allclose(by_callable[0].polygon_arrays[0], moved[0].polygon_arrays[0])
    assert by_callable[0].label is None
    with pytest.raises(ValueError, match="plane 0 but transforms were given for 0"):
        ROIList([roi]).transform([])


# --------------------------------------------------------------------------- ROI store
def _sample_rois() -> ROIList:
    weights = np.zeros((2, 6, 7), dtype=np.float32)
    weights[1, 2:4, 3:6] = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    return ROIList(
        [
            ROI(polygons=[[0.5, 0.25, 0], [0, 2, 0], [2.75, 2, 0]], label="p", id="1",
                tags={"x", "y"}, im_shape=(2, 6, 7)),
            ROI(polygons=[[[0, 0, 0], [0, 2, 0], [2, 2, 0]], [[3, 3, 1], [3, 5, 1], [5, 5, 1]]],
                label="multi"),
            ROI(mask=weights, label="weighted"),
            ROI(mask=weights > 0.3, label="boolean", im_shape=(2, 6, 7)),
            ROI(mask=np.zeros((6, 7), bool), label="empty"),
        ]
    )


def _assert_same(a: ROIList, b: ROIList) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.label, x.id, x.tags, x.kind, x.im_shape) == (y.label, y.id, y.tags, y.kind, y.im_shape)
        if x.kind == "polygons":
            for p, q in zip(x.polygon_arrays, y.polygon_arrays):
                np.testing.assert_array_equal(p, q)
        else:
            for p, q in zip(x.mask, y.mask):
                assert p.dtype == q.dtype
                np.testing.assert_array_equal(p.toarray(), q.toarray())


def test_store_round_trip(tmp_path):
    rois = _sample_rois()
    label = save_roi_set(tmp_path / "store", rois, "curated")
    assert label == "curated"
    _assert_same(load_roi_set(tmp_path / "store", "curated"), rois)
    files = sorted(os.listdir(tmp_path / "store"))
    assert files[0] == "index.json" and files[1].startswith("set_") and len(files) == 2
    # replacing a set leaves one file per set
    save_roi_set(tmp_path / "store", rois[:2], "curated")
    assert len(os.listdir(tmp_path / "store")) == 2
    assert len(load_roi_set(tmp_path / "store")) == 2
    with pytest.raises(KeyError, match="stored sets: \\['curated'\\]"):
        load_roi_set(tmp_path / "store", "nope")


def test_store_broken_files(tmp_path):
    save_roi_set(tmp_path, _sample_rois(), "a")
    (tmp_path / "index.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_roi_sets(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="not a napari-sima ROI set index"):
        load_roi_sets(tmp_path)


def test_roilist_save_load_our_format(tmp_path):
    rois = _sample_rois()
    rois.save(tmp_path / "exp.sima", label="one")
    rois[:1].save(tmp_path / "exp.sima", label="two")
    assert len(ROIList.load(tmp_path / "exp.sima", fmt="sima")) == 1  # most recent
    _assert_same(ROIList.load(tmp_path / "exp.sima", fmt="sima", label="one"), rois)
    relabelled = ROIList.load(tmp_path / "exp.sima", fmt="sima", label="one", reassign_label=True)
    assert [r.label for r in relabelled] == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match="unknown ROI file format"):
        ROIList.load(tmp_path, fmt="inscopix")


def test_dataset_roi_sets(tmp_path, movie):
    """SIMA's test_add_and_delete_rois, with our own ROIs."""
    seq = Sequence.create("ndarray", movie)
    ds = ImagingDataset([seq, seq], tmp_path / "test_imaging_dataset.sima")
    assert len(ds.ROIs) == 0
    rois = _sample_rois()[:2]
    ds.add_ROIs(rois, "rois")
    assert len(ds.ROIs) == 1
    ds.add_ROIs(rois, "rois2")
    assert len(ds.ROIs) == 2
    assert sorted(ds.ROIs.keys()) == ["rois", "rois2"]
    assert len(ds.ROIs["rois"]) == 2
    ds.delete_ROIs("foo")
    ds.delete_ROIs("rois")
    assert len(ds.ROIs) == 1
    ds.delete_ROIs("rois2")
    assert len(ds.ROIs) == 0
    ds.delete_ROIs("foo")
    label = ds.add_ROIs(rois)
    assert len(label) == len("2015-03-04-13h05m22s")
    assert list(ImagingDataset.load(ds.savedir).ROIs) == [label]


def test_in_memory_dataset_roi_sets_move_to_folder(tmp_path, movie):
    ds = ImagingDataset([Sequence.create("ndarray", movie)], None)
    ds.add_ROIs(_sample_rois(), "drawn")
    assert list(ds.ROIs) == ["drawn"]
    ds.save(tmp_path / "later")
    _assert_same(ImagingDataset.load(tmp_path / "later.sima").ROIs["drawn"], _sample_rois())


def test_read_only_dataset_refuses_roi_changes(tmp_path, movie):
    ds = ImagingDataset([Sequence.create("ndarray", movie)], tmp_path / "ro.sima")
    ds._read_only = True
    with pytest.raises(PermissionError, match="read-only"):
        ds.add_ROIs(_sample_rois())
    with pytest.raises(PermissionError):
        ds.delete_ROIs("x")


def test_legacy_rois_pkl(tmp_path):
    lil = sparse.lil_matrix((4, 5), dtype=bool)
    lil[1, 2] = lil[2, 3] = True
    data = {
        "set1": {
            "rois": [
                {"mask": [lil], "polygons": None, "id": "7", "label": "a", "tags": {"x"},
                 "im_shape": (1, 4, 5)},
                {"mask": None, "polygons": [np.array([[0, 0, 0], [0, 2, 0], [2, 2, 0], [0, 0, 0]], float)],
                 "id": None, "label": "b", "tags": set(), "im_shape": (1, 4, 5)},
            ],
            "timestamp": "2015-01-01-00h00m00s",
        }
    }
    (tmp_path / "rois.pkl").write_bytes(pickle.dumps(data, protocol=2))
    sets = load_legacy_roi_sets(tmp_path / "rois.pkl")
    a, b = sets["set1"]
    assert (a.label, a.id, a.tags, a.kind) == ("a", "7", {"x"}, "mask")
    assert np.array(a).sum() == 2 and np.array(b).sum() == 1
    rois = ROIList.load(tmp_path / "rois.pkl", fmt="pkl")
    assert rois.timestamp == "2015-01-01-00h00m00s"


def test_legacy_rois_refuse_hostile_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'CANARY'}",))

    (tmp_path / "rois.pkl").write_bytes(pickle.dumps({"s": Evil()}, protocol=2))
    from napari_sima.core.legacy import UnsafePickleError

    with pytest.raises(UnsafePickleError):
        load_legacy_roi_sets(tmp_path)
    assert not (tmp_path / "CANARY").exists()


def test_rasterise_many_rois_is_fast_enough():
    """Not a timing test: a smoke check that 500 cell-sized ROIs rasterise correctly."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    rois = [
        ROI(polygons=np.c_[x + 5 * np.cos(t), y + 5 * np.sin(t)], im_shape=(128, 128))
        for x, y in rng.uniform(10, 118, (500, 2))
    ]
    sizes = [r.size for r in rois]
    assert 60 < min(sizes) and max(sizes) < 90  # ~ pi * 5^2
