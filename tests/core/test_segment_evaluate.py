"""Scoring detected ROIs against true cells: IoU, Hungarian matching, precision/recall/F1."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import sparse

from napari_sima.core import ROI, ROIList
from napari_sima.core.segment.evaluate import MatchResult, iou_matrix, match_rois


def strip(start, stop, width=30):
    """A 1 x width mask with pixels [start, stop) set."""
    m = np.zeros((1, width), bool)
    m[0, start:stop] = True
    return m


def box(r0, c0, r1, c1, shape=(10, 10)):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def dense_iou(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = (a | b).sum()
    return (a & b).sum() / union if union else 0.0


# --------------------------------------------------------------------------- IoU values
def test_known_ious_of_overlapping_boxes():
    a = ROI(mask=box(0, 0, 2, 4))  # 8 px
    b = ROI(mask=box(0, 2, 2, 6))  # 8 px, 4 shared -> 4 / 12
    c = ROI(mask=box(5, 5, 7, 7))  # disjoint
    iou = iou_matrix([a, b], [b, c, a])
    np.testing.assert_allclose(iou, [[1 / 3, 0, 1], [1, 0, 1 / 3]])


@pytest.mark.parametrize("seed", range(5))
def test_iou_matrix_equals_dense_computation(seed):
    rng = np.random.default_rng(seed)
    det = rng.random((6, 2, 9, 11)) < 0.3
    true = rng.random((4, 2, 9, 11)) < 0.3
    expected = np.array([[dense_iou(d, t) for t in true] for d in det])
    np.testing.assert_allclose(iou_matrix(det, true), expected)
    # the same through ROI objects (multi-plane masks)
    np.testing.assert_allclose(
        iou_matrix(ROIList([ROI(mask=d) for d in det]), [ROI(mask=t) for t in true]), expected
    )


def test_polygon_rois_are_rasterised_with_their_im_shape():
    square = [[2, 2, 0], [6, 2, 0], [6, 6, 0], [2, 6, 0]]
    poly = ROI(polygons=square, im_shape=(1, 10, 10))
    result = match_rois([poly], [box(2, 2, 6, 6)])
    assert result.n_matched == 1 and result.ious[0] == 1.0


def test_float_masks_are_binarised_at_zero():
    weights = np.zeros((10, 10))
    weights[0:2, 0:4] = 0.2  # counts
    weights[5:7, 5:7] = -3.0  # negative weights: outside
    weights[9, 9] = 1e-12  # any positive weight counts
    expected = box(0, 0, 2, 4)
    expected[9, 9] = True
    assert iou_matrix([ROI(mask=weights)], [expected])[0, 0] == 1.0
    assert iou_matrix([weights], [box(5, 5, 7, 7)])[0, 0] == 0.0


# --------------------------------------------------------------------------- matching
def test_threshold_is_inclusive():
    a, b = strip(0, 3), strip(1, 4)  # IoU = 2 / 4 exactly
    assert match_rois([a], [b], iou_threshold=0.5).n_matched == 1
    assert match_rois([a], [b], iou_threshold=0.51).n_matched == 0


def test_hungarian_finds_the_matching_greedy_misses():
    # overlapping true cells: d0 is best with t0 (0.9) but also fits t1 (8/11);
    # d1 fits only t0 (0.6). Greedy "best IoU first" pairs d0-t0 and loses d1.
    t0, t1 = strip(0, 10), strip(2, 12)
    d0, d1 = strip(1, 10), strip(0, 6)
    np.testing.assert_allclose(iou_matrix([d0, d1], [t0, t1]), [[0.9, 8 / 11], [0.6, 4 / 12]])
    result = match_rois([d0, d1], [t0, t1])
    assert result.pairs.tolist() == [[0, 1], [1, 0]]
    np.testing.assert_allclose(result.ious, [8 / 11, 0.6])
    assert (result.precision, result.recall, result.f1) == (1.0, 1.0, 1.0)
    assert result.median_iou == pytest.approx((8 / 11 + 0.6) / 2)


def test_more_matches_win_over_a_larger_iou_sum_below_one_half():
    # at a low threshold: one excellent match (0.95) or two modest ones (8/19 + 0.5)
    t0, t1 = strip(0, 20), strip(0, 8)
    d0, d1 = strip(0, 19), strip(10, 20)
    np.testing.assert_allclose(iou_matrix([d0, d1], [t0, t1]), [[0.95, 8 / 19], [0.5, 0.0]])
    result = match_rois([d0, d1], [t0, t1], iou_threshold=0.3)
    assert result.pairs.tolist() == [[0, 1], [1, 0]]
    assert result.f1 == 1.0


@pytest.mark.parametrize("seed", range(8))
def test_number_of_matches_is_maximal(seed):
    """Brute force over all one-to-one pairings on small random instances."""
    rng = np.random.default_rng(seed)
    base = rng.random((5, 6, 6)) < 0.5
    # detections: noisy copies of some true cells plus random blobs
    det = np.concatenate([base[:3] ^ (rng.random((3, 6, 6)) < 0.15), rng.random((2, 6, 6)) < 0.5])
    threshold = 0.4
    result = match_rois(det, base, iou_threshold=threshold)
    iou = result.iou
    best = 0
    for perm in itertools.permutations(range(5), 5):
        best = max(best, sum(iou[d, t] >= threshold for d, t in enumerate(perm)))
    assert result.n_matched == best
    assert np.all(result.ious >= threshold)
    assert len(set(result.pairs[:, 0])) == len(set(result.pairs[:, 1])) == result.n_matched


def test_ties_two_identical_true_cells_get_one_match():
    cell = box(2, 2, 6, 6)
    result = match_rois([cell], [cell, cell.copy()])
    assert result.n_matched == 1 and result.ious.tolist() == [1.0]
    assert (result.precision, result.recall) == (1.0, 0.5)
    assert result.f1 == pytest.approx(2 / 3)
    assert len(result.unmatched_truth) == 1 and result.unmatched_detected.size == 0


def test_ties_duplicate_detections_count_as_false_positives():
    cell = box(2, 2, 6, 6)
    result = match_rois([cell, cell, box(0, 0, 1, 1)], [cell])
    assert result.n_matched == 1
    assert (result.false_positives, result.false_negatives) == (2, 0)
    assert result.precision == pytest.approx(1 / 3) and result.recall == 1.0
    assert 2 in result.unmatched_detected.tolist()


# --------------------------------------------------------------------------- empty inputs
def test_no_detections():
    result = match_rois([], [box(2, 2, 6, 6)])
    assert (result.n_detected, result.n_truth, result.n_matched) == (0, 1, 0)
    assert math.isnan(result.precision) and result.recall == 0.0 and result.f1 == 0.0
    assert math.isnan(result.median_iou)
    assert result.iou.shape == (0, 1)


def test_no_true_cells():
    result = match_rois(ROIList([ROI(mask=box(2, 2, 6, 6))]), ROIList())
    assert result.precision == 0.0 and math.isnan(result.recall) and result.f1 == 0.0


def test_both_empty_gives_nan_scores_and_json_nulls():
    result = match_rois([], [])
    assert math.isnan(result.f1)
    d = result.todict()
    assert d["f1"] is None and d["precision"] is None and d["median_iou"] is None
    json.dumps(d, allow_nan=False)


def test_empty_masks_match_nothing():
    empty = np.zeros((10, 10), bool)
    result = match_rois([empty, box(1, 1, 3, 3)], [empty, box(1, 1, 3, 3)])
    assert result.iou[0, 0] == 0.0
    assert result.pairs.tolist() == [[1, 1]]


def test_todict_is_json_and_consistent():
    result = match_rois([box(0, 0, 4, 4), box(6, 6, 9, 9)], [box(0, 0, 4, 3)])
    d = json.loads(json.dumps(result.todict(), allow_nan=False))
    assert d["pairs"] == [[0, 0]] and d["ious"] == [0.75]
    assert (d["n_detected"], d["n_truth"], d["n_matched"]) == (2, 1, 1)
    assert (d["precision"], d["recall"]) == (0.5, 1.0)
    assert d["f1"] == pytest.approx(2 / 3) and d["median_iou"] == 0.75
    assert isinstance(result, MatchResult) and "precision=0.500" in repr(result)


# --------------------------------------------------------------------------- multi-plane
def test_multi_plane_rois():
    a = np.zeros((3, 8, 8), bool)
    a[0, 1:3, 1:3] = True
    a[1, 1:3, 1:3] = True  # 8 px over two planes
    same_xy_other_plane = np.zeros((3, 8, 8), bool)
    same_xy_other_plane[2, 1:3, 1:3] = True
    iou = iou_matrix([a], [box(1, 1, 3, 3, (8, 8)), same_xy_other_plane])
    # a single-plane (y, x) mask lives in plane 0: 4 shared of 8
    np.testing.assert_allclose(iou, [[0.5, 0.0]])


def test_rois_with_fewer_planes_are_empty_on_the_missing_planes():
    volume = ROI(mask=np.zeros((3, 8, 8)), im_shape=(3, 8, 8))
    plane2 = np.zeros((3, 8, 8), bool)
    plane2[2, 4:6, 4:6] = True
    volume.mask = plane2
    flat = ROI(mask=box(4, 4, 6, 6, (8, 8)))  # one plane
    assert volume.im_shape == (3, 8, 8) and flat.im_shape == (1, 8, 8)
    np.testing.assert_allclose(iou_matrix([volume, flat], [flat, volume]), [[0, 1], [1, 0]])


def test_sparse_planes_are_accepted():
    m = sparse.csr_matrix(box(2, 2, 6, 6))
    assert match_rois([m], [box(2, 2, 6, 6)]).f1 == 1.0


# --------------------------------------------------------------------------- errors
def test_image_shape_mismatch_between_lists():
    with pytest.raises(ValueError, match=r"10x10.*12x10|same field of view"):
        match_rois([box(0, 0, 2, 2)], [box(0, 0, 2, 2, (12, 10))])


def test_image_shape_mismatch_within_a_list_names_the_rois():
    with pytest.raises(ValueError, match=r"detected\[1\].*detected\[0\]"):
        iou_matrix([box(0, 0, 2, 2), box(0, 0, 2, 2, (10, 11))], [])


def test_polygon_roi_without_im_shape_is_a_clear_error():
    square = [[2, 2, 0], [6, 2, 0], [6, 6, 0], [2, 6, 0]]
    with pytest.raises(ValueError, match=r"truth\[0\].*im_shape"):
        match_rois([box(2, 2, 6, 6)], [ROI(polygons=square)])


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "half", None])
def test_bad_threshold(bad):
    with pytest.raises(ValueError, match="iou_threshold"):
        match_rois([], [], iou_threshold=bad)


def test_bad_inputs():
    with pytest.raises(TypeError, match="single ROI"):
        match_rois(ROI(mask=box(0, 0, 2, 2)), [])
    with pytest.raises(TypeError, match=r"detected\[0\].*str"):
        match_rois(["cell"], [])
    with pytest.raises(ValueError, match=r"\(n, y, x\) or \(n, z, y, x\)"):
        match_rois(box(0, 0, 2, 2), [])
    with pytest.raises(ValueError, match=r"truth\[0\].*2-D \(y, x\) or 3-D"):
        match_rois([], [np.zeros(5)])
    with pytest.raises(TypeError, match="expected a list"):
        match_rois(3, [])
    nan_mask = np.zeros((4, 4))
    nan_mask[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"truth\[0\].*NaN"):
        match_rois([], [nan_mask])
