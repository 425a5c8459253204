"""ROI Buddy's editing operations: merge, unmerge, curation, tag filters."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sima.core import ROI, ROIList
from napari_sima.core.roi_ops import (
    curation_status,
    filter_by_tags,
    merge_rois,
    parse_tag_filter,
    parse_tags,
    set_curation,
    tags_match,
    unmerge_roi,
)

SHAPE = (1, 20, 20)


def square(x0, y0, x1, y1, z=0):
    return [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]


def dense(roi):
    return np.asarray(roi)


# --------------------------------------------------------------------------- merge
def test_merge_touching_is_one_polygon_with_union_mask():
    a = ROI(polygons=square(2, 2, 6, 6), label="a", id="1", tags={"pv"}, im_shape=SHAPE)
    b = ROI(polygons=square(6, 3, 9, 5), label="b", id="2", tags={"x"}, im_shape=SHAPE)
    merged = merge_rois([a, b])
    assert isinstance(merged, ROIList) and len(merged) == 1
    (m,) = merged
    assert len(m.polygon_arrays) == 1
    assert (m.label, m.id, m.tags) == ("a", "1", {"pv", "x"})
    np.testing.assert_array_equal(dense(m), dense(a) | dense(b))
    assert m.im_shape == SHAPE


def test_merge_overlapping_is_union():
    a = ROI(polygons=square(2, 2, 8, 8), label="a", im_shape=SHAPE)
    b = ROI(polygons=square(5, 5, 12, 10), label="b", im_shape=SHAPE)
    (m,) = merge_rois([a, b])
    assert len(m.polygon_arrays) == 1
    np.testing.assert_array_equal(dense(m), dense(a) | dense(b))


def test_merge_disjoint_keeps_polygons_in_one_roi():
    a = ROI(polygons=square(1, 1, 3, 3), label="a", im_shape=SHAPE)
    b = ROI(polygons=square(10, 10, 13, 12), label="b", tags={"t"}, im_shape=SHAPE)
    (m,) = merge_rois([a, b])
    polys = m.polygon_arrays
    assert len(polys) == 2
    # disjoint polygons are kept exactly
    np.testing.assert_allclose(polys[0], a.polygon_arrays[0])
    np.testing.assert_allclose(polys[1], b.polygon_arrays[0])
    assert m.label == "a" and m.tags == {"t"}
    np.testing.assert_array_equal(dense(m), dense(a) | dense(b))


def test_merge_transitive_chain_and_separate_island():
    rois = [
        ROI(polygons=square(0, 0, 3, 3), label="a", im_shape=SHAPE),
        ROI(polygons=square(3, 0, 6, 3), label="b", im_shape=SHAPE),
        ROI(polygons=square(6, 0, 9, 3), label="c", im_shape=SHAPE),
        ROI(polygons=square(15, 15, 18, 18), label="d", im_shape=SHAPE),
    ]
    (m,) = merge_rois(rois)
    assert len(m.polygon_arrays) == 2
    assert m.size == 3 * 9 + 9


def test_merge_different_planes_not_unioned():
    shape = (2, 10, 10)
    a = ROI(polygons=square(1, 1, 5, 5, z=0), label="a", im_shape=shape)
    b = ROI(polygons=square(1, 1, 5, 5, z=1), label="b", im_shape=shape)
    (m,) = merge_rois([a, b])
    assert sorted(int(p[0, 2]) for p in m.polygon_arrays) == [0, 1]


def test_merge_multi_polygon_rois_and_first_label_id():
    a = ROI(polygons=[square(0, 0, 2, 2), square(10, 10, 12, 12)], im_shape=SHAPE)
    b = ROI(polygons=square(2, 0, 4, 2), label="b", id="9", im_shape=SHAPE)
    (m,) = merge_rois([a, b])
    assert (m.label, m.id) == ("b", "9")  # first non-empty
    assert len(m.polygon_arrays) == 2
    np.testing.assert_array_equal(dense(m), dense(a) | dense(b))


def test_merge_boolean_mask_roi_is_outlined():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:6, 2:6] = True
    a = ROI(mask=mask, label="m", im_shape=SHAPE)
    b = ROI(polygons=square(6, 2, 9, 6), label="p", im_shape=SHAPE)
    (m,) = merge_rois([a, b])
    assert m.kind == "polygons"
    assert len(m.polygon_arrays) == 1
    # the outline cuts the mask's corners; the union holds b and the mask's inside
    out = dense(m)[0]
    assert out[2:6, 6:9].all() and out[3:5, 2:6].all()


def test_merge_weighted_mask_is_an_error_naming_it():
    weights = np.zeros((20, 20))
    weights[2:5, 2:5] = 0.3
    a = ROI(mask=weights, label="soma-7")
    b = ROI(polygons=square(1, 1, 3, 3), label="b")
    with pytest.raises(ValueError, match="soma-7"):
        merge_rois([a, b])


def test_merge_curation_conflict_first_wins():
    a = ROI(polygons=square(0, 0, 2, 2), tags={"rejected"}, im_shape=SHAPE)
    b = ROI(polygons=square(2, 0, 4, 2), tags={"accepted", "pv"}, im_shape=SHAPE)
    (m,) = merge_rois([a, b])
    assert m.tags == {"rejected", "pv"}


def test_merge_empty_is_error():
    with pytest.raises(ValueError):
        merge_rois([])


def test_merge_corner_touch_keeps_two_polygons():
    a = ROI(polygons=square(0, 0, 2, 2), im_shape=SHAPE)
    b = ROI(polygons=square(2, 2, 4, 4), im_shape=SHAPE)
    (m,) = merge_rois([a, b])
    assert len(m.polygon_arrays) == 2
    assert m.size == 8


def test_merge_self_intersecting_polygon():
    bowtie = [[0, 0, 0], [6, 6, 0], [6, 0, 0], [0, 6, 0]]
    a = ROI(polygons=bowtie, im_shape=SHAPE)
    b = ROI(polygons=square(6, 0, 8, 6), im_shape=SHAPE)
    (m,) = merge_rois([a, b])
    assert m.size > b.size


# --------------------------------------------------------------------------- unmerge
def test_unmerge_one_roi_per_polygon_unique_labels_no_id():
    roi = ROI(
        polygons=[square(0, 0, 2, 2), square(5, 5, 7, 7), square(10, 10, 12, 12)],
        label="cell",
        id="42",
        tags={"pv", "accepted"},
        im_shape=SHAPE,
    )
    parts = unmerge_roi(roi)
    assert [p.label for p in parts] == ["cell", "cell-2", "cell-3"]
    assert all(p.id is None for p in parts)
    assert all(p.tags == {"pv", "accepted"} for p in parts)
    assert all(p.im_shape == SHAPE for p in parts)
    total = sum(dense(p).astype(int) for p in parts)
    np.testing.assert_array_equal(total.astype(bool), dense(roi))


def test_unmerge_avoids_existing_labels_and_unlabelled():
    roi = ROI(polygons=[square(0, 0, 2, 2), square(5, 5, 7, 7)], label="c")
    assert [p.label for p in unmerge_roi(roi, ["c", "c-2"])] == ["c-3", "c-4"]
    unnamed = ROI(polygons=[square(0, 0, 2, 2), square(5, 5, 7, 7)])
    assert [p.label for p in unmerge_roi(unnamed)] == ["roi", "roi-2"]


def test_merge_then_unmerge_round_trip():
    a = ROI(polygons=square(1, 1, 3, 3), label="a", im_shape=SHAPE)
    b = ROI(polygons=square(10, 10, 13, 12), label="b", im_shape=SHAPE)
    (m,) = merge_rois([a, b])
    parts = unmerge_roi(m)
    np.testing.assert_array_equal(dense(parts[0]), dense(a))
    np.testing.assert_array_equal(dense(parts[1]), dense(b))


def test_unmerge_weighted_mask_is_error():
    with pytest.raises(ValueError, match="w1"):
        unmerge_roi(ROI(mask=np.full((3, 3), 0.5), label="w1"))


def test_unmerge_boolean_mask():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True
    mask[6:9, 6:9] = True
    parts = unmerge_roi(ROI(mask=mask, label="m"))
    assert len(parts) == 2 and parts[0].kind == "polygons"


# --------------------------------------------------------------------------- curation
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("accepted", {"accepted", "pv"}),
        ("rejected", {"rejected", "pv"}),
        (None, {"pv"}),
        ("none", {"pv"}),
    ],
)
def test_set_curation_exclusive(status, expected):
    roi = ROI(polygons=square(0, 0, 2, 2), tags={"pv", "accepted"})
    assert set_curation(roi, status) is roi
    assert roi.tags == expected
    assert curation_status(roi) == (None if status in (None, "none") else status)


def test_set_curation_rejects_unknown():
    with pytest.raises(ValueError, match="accepted"):
        set_curation(ROI(polygons=square(0, 0, 2, 2)), "maybe")


def test_curation_status_of_tags():
    assert curation_status({"accepted"}) == "accepted"
    assert curation_status({"accepted", "rejected"}) == "rejected"
    assert curation_status(set()) is None


# --------------------------------------------------------------------------- tags
def test_parse_tags_and_filter():
    assert parse_tags("a, b,,a , c") == ["a", "b", "c"]
    assert parse_tags(["a,b", "c"]) == ["a", "b", "c"]
    assert parse_tag_filter("pv, -rejected, !noisy,") == (["pv"], ["rejected", "noisy"])
    assert parse_tag_filter("") == ([], [])


def test_tags_match_and_filter_by_tags():
    rois = ROIList(
        [
            ROI(polygons=square(0, 0, 2, 2), label="1", tags={"pv", "accepted"}),
            ROI(polygons=square(0, 0, 2, 2), label="2", tags={"pv", "rejected"}),
            ROI(polygons=square(0, 0, 2, 2), label="3", tags=set()),
        ],
        timestamp="t0",
    )
    assert tags_match({"a", "b"}, "a") and not tags_match({"a"}, None, ["a"])
    kept = filter_by_tags(rois, ["pv"], ["rejected"])
    assert [r.label for r in kept] == ["1"] and kept.timestamp == "t0"
    assert [r.label for r in filter_by_tags(rois)] == ["1", "2", "3"]
