"""Segmentation post-processing steps: filters, SparseROIsFromMasks, smoothing, merging."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import shapely
from matplotlib.path import Path

from napari_sima.core import ROI, NonBooleanMask, ROIList
from napari_sima.core.segment.base import (
    PostProcessingStep,
    SegmentationStrategy,
    SegmentProgress,
)
from napari_sima.core.segment.postprocess import (
    CircularityFilter,
    MergeOverlapping,
    ROIFilter,
    SizeFilter,
    SmoothROIBoundaries,
    SparseROIsFromMasks,
    circularity,
)

ALL_STEPS = (
    ROIFilter(lambda roi: True),
    SizeFilter(),
    CircularityFilter(),
    SparseROIsFromMasks(),
    SmoothROIBoundaries(),
    MergeOverlapping(),
)


def _gaussian_2d(xy, xy0, sig):
    """SIMA's test helper: a 2-D Gaussian on ``meshgrid(xy[0], xy[1])``."""
    x, y = np.meshgrid(xy[0], xy[1])
    return np.exp(-0.5 * (((x - xy0[0]) / sig[0]) ** 2 + ((y - xy0[1]) / sig[1]) ** 2))


def blob(shape, centre, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))


def rect(shape, rows, cols, **props):
    m = np.zeros(shape, bool)
    m[..., rows[0] : rows[1], cols[0] : cols[1]] = True
    return ROI(m, **props)


def dense(roi):
    return np.asarray(roi)


def disc(shape=(40, 40), centre=(20, 20), radius=8):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# --------------------------------------------------------------------------- SIMA's test
def test_postprocess_sima():
    """SIMA's TestPostprocess.test_postprocess (sima/segment/tests/test_segment.py)."""
    centres = [(10, 10), (40, 40), (70, 70), (100, 100)]
    roi_xy = [np.arange(128), np.arange(256)]
    rois = ROIList([ROI(_gaussian_2d(roi_xy, c, (10, 10))) for c in centres])
    assert rois[0].im_shape == (1, 256, 128)

    sparse_rois = SparseROIsFromMasks(n_processes=2).apply(rois)
    smoothed = SmoothROIBoundaries(n_processes=2).apply(sparse_rois)

    assert len(smoothed) == 4
    found = set()
    for centre in centres:
        hits = [
            k for k, roi in enumerate(smoothed) if Path(roi.coords[0][:, :2]).contains_point(centre)
        ]
        assert len(hits) == 1
        found.add(hits[0])
    assert len(found) == 4
    # the worker threads change nothing
    serial = SparseROIsFromMasks(n_processes=1).apply(rois)
    assert [dense(a).tolist() for a in serial] == [dense(b).tolist() for b in sparse_rois]


# --------------------------------------------------------------------------- framework
def test_steps_are_dataclasses_with_simas_defaults():
    defaults = {
        type(step).__name__: {f.name: f.default for f in dataclasses.fields(step)}
        for step in ALL_STEPS
    }
    assert defaults["SparseROIsFromMasks"] == {
        "min_size": 50,
        "static_threshold": 0.5,
        "smooth_size": 4,
        "sign_split": True,
        "n_processes": 1,
    }
    assert defaults["SmoothROIBoundaries"] == {"tolerance": 0.5, "min_verts": 8, "n_processes": 1}
    assert defaults["CircularityFilter"] == {"circularity_threshold": 0.5}
    assert defaults["SizeFilter"] == {"min_size": 20, "max_size": None}
    assert defaults["MergeOverlapping"] == {"threshold": 0.5}
    assert list(defaults["ROIFilter"]) == ["func"]
    for step in ALL_STEPS:
        assert isinstance(step, PostProcessingStep)
        params = json.loads(json.dumps(step.parameters()))
        assert params["step"] == type(step).__name__


@dataclasses.dataclass
class GivenROIs(SegmentationStrategy):
    """A strategy that 'finds' fixed ROIs (to run the steps through the framework)."""

    masks: list = dataclasses.field(default_factory=list)

    def _iter_segment(self, dataset):
        yield SegmentProgress(0.5, "finding")
        return ROIList([ROI(m) for m in self.masks])


def test_steps_run_in_order_in_a_strategy():
    weights = (
        blob((64, 64), (20, 20), 4) + blob((64, 64), (26, 24), 4) - blob((64, 64), (45, 45), 2)
    )
    strategy = GivenROIs([weights])
    strategy.append(SparseROIsFromMasks(min_size=20))
    strategy.append(SmoothROIBoundaries())
    strategy.append(SizeFilter(min_size=100))
    messages = []
    rois = strategy.segment(None, progress=lambda f, m: messages.append(m))
    assert "post-processing: SparseROIsFromMasks" in messages
    # the positive double blob passes the size filter, the small negative blob does not
    assert len(rois) == 1 and rois[0].kind == "polygons"
    assert Path(rois[0].coords[0][:, :2]).contains_point((22, 23))
    assert [s["step"] for s in strategy.parameters()["post_processing"]] == [
        "SparseROIsFromMasks",
        "SmoothROIBoundaries",
        "SizeFilter",
    ]


@pytest.mark.parametrize("step", ALL_STEPS, ids=lambda s: type(s).__name__)
def test_empty_input_gives_empty_list(step):
    out = step.apply(ROIList([]))
    assert isinstance(out, ROIList) and len(out) == 0
    assert len(step.apply([])) == 0


@pytest.mark.parametrize("step", ALL_STEPS, ids=lambda s: type(s).__name__)
def test_non_roi_input_is_refused(step):
    with pytest.raises(TypeError, match="ROIList"):
        step.apply(ROI(np.ones((3, 3), bool)))
    with pytest.raises(TypeError, match="ROIList"):
        step.apply(np.ones((3, 3)))
    with pytest.raises(TypeError, match="item 1 is a ndarray"):
        step.apply([ROI(np.ones((3, 3), bool)), np.ones((3, 3))])


@pytest.mark.parametrize(
    "step",
    [
        SizeFilter(min_size=1),
        CircularityFilter(0.1),
        SmoothROIBoundaries(),
        MergeOverlapping(0.5),
        ROIFilter(lambda r: True),
    ],
    ids=lambda s: type(s).__name__,
)
def test_steps_return_new_rois_and_leave_input_alone(step):
    a = rect((20, 20), (2, 9), (2, 9), label="a", id="1", tags={"t"})
    b = rect((20, 20), (3, 10), (3, 10), label="b")
    before = [dense(a).copy(), dense(b).copy()]
    rois = ROIList([a, b])
    out = step.apply(rois)
    assert out is not rois and len(rois) == 2
    assert all(r is not a and r is not b for r in out)
    out[0].label = "changed"
    out[0].tags.add("new")
    assert (a.label, a.id, a.tags) == ("a", "1", {"t"})
    np.testing.assert_array_equal(dense(a), before[0])
    np.testing.assert_array_equal(dense(b), before[1])


# --------------------------------------------------------------------------- ROIFilter
def test_roi_filter_keeps_rois_where_func_is_true_in_order():
    rois = ROIList([rect((10, 10), (0, k + 1), (0, 2), label=str(k)) for k in range(6)])
    out = ROIFilter(lambda roi: roi.size % 4 == 0).apply(rois)
    assert [r.label for r in out] == ["1", "3", "5"]
    # numpy booleans and other truthy values are accepted
    assert len(ROIFilter(lambda roi: np.bool_(roi.size > 6)).apply(rois)) == 3


def test_roi_filter_errors():
    with pytest.raises(TypeError, match="callable"):
        ROIFilter(5)

    def broken(roi):
        raise KeyError("boom")

    with pytest.raises(KeyError) as info:
        ROIFilter(broken).apply([rect((5, 5), (0, 2), (0, 2), label="x")])
    assert "ROI 0 ('x')" in "".join(info.value.__notes__)


# --------------------------------------------------------------------------- SizeFilter
def test_size_filter_bounds_are_inclusive_and_count_all_planes():
    m3 = np.zeros((3, 10, 10), bool)
    m3[0, :2, :5] = True
    m3[2, :2, :5] = True  # 20 pixels on two planes
    rois = ROIList(
        [
            rect((10, 10), (0, 1), (0, 10), label="10"),
            ROI(m3, label="20"),
            rect((10, 10), (0, 3), (0, 10), label="30"),
            ROI(polygons=[[0, 0, 1], [5, 0, 1], [5, 8, 1], [0, 8, 1]], label="poly40"),
        ]
    )
    assert [r.label for r in SizeFilter(min_size=20).apply(rois)] == ["20", "30", "poly40"]
    assert [r.label for r in SizeFilter(10, 30).apply(rois)] == ["10", "20", "30"]
    assert [r.label for r in SizeFilter(min_size=21, max_size=30).apply(rois)] == ["30"]
    assert [r.label for r in SizeFilter(0, 0).apply(rois)] == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_size": -1}, ValueError, "min_size must be >= 0"),
        ({"min_size": 2.5}, ValueError, "whole number"),
        ({"min_size": True}, TypeError, "integer"),
        ({"min_size": "5"}, TypeError, "integer"),
        ({"min_size": 10, "max_size": 5}, ValueError, "max_size"),
    ],
)
def test_size_filter_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        SizeFilter(**kwargs)


def test_unrasterisable_polygon_roi_is_named():
    bad = ROI(polygons=[[0, 0, -1], [3, 0, -1], [3, 3, -1]], label="neg")  # plane -1
    with pytest.raises(ValueError, match="cannot be rasterised") as info:
        SizeFilter(1).apply([rect((5, 5), (0, 2), (0, 2)), bad])
    assert "ROI 1 ('neg')" in "".join(info.value.__notes__)
    with pytest.raises(ValueError, match=r"ROI 0 \('neg'\) cannot be rasterised"):
        MergeOverlapping().apply([bad])


def test_parameters_are_checked_again_when_applied():
    step = SizeFilter(5)
    step.min_size = -3  # e.g. edited in a GUI
    with pytest.raises(ValueError, match="min_size"):
        step.apply([rect((5, 5), (0, 2), (0, 2))])
    assert SizeFilter(min_size=5.0).min_size == 5


# --------------------------------------------------------------------------- circularity
def test_circularity_known_answers():
    # one pixel: a diamond through the edge midpoints, A = 1, P = 4 sqrt(1/2)
    assert circularity(ROI(np.ones((1, 1), bool))) == pytest.approx(math.pi / 2)
    # 2 x 2 pixels: an octagon, P = 4 + 4 sqrt(1/2)
    assert circularity(ROI(np.ones((2, 2), bool))) == pytest.approx(
        16 * math.pi / (4 + 4 * math.sqrt(0.5)) ** 2
    )
    assert 0.8 < circularity(ROI(disc())) < 1.0
    line = np.zeros((40, 40), bool)
    line[5, 2:32] = True
    # 30 pixels, perimeter 2 * 29 + 4 sqrt(1/2)
    assert circularity(ROI(line)) == pytest.approx(
        4 * math.pi * 30 / (58 + 4 * math.sqrt(0.5)) ** 2
    )
    assert math.isnan(circularity(ROI(np.zeros((4, 4), bool))))


def test_circularity_of_an_roi_in_pieces_counts_every_outline():
    # four separate pixels: A = 4, P = 4 diamonds; SIMA (first outline only) gave 2 pi
    pieces = np.zeros((20, 20), bool)
    pieces[[2, 2, 10, 10], [2, 10, 2, 10]] = True
    expected = 4 * math.pi * 4 / (4 * 4 * math.sqrt(0.5)) ** 2
    assert circularity(ROI(pieces)) == pytest.approx(expected)
    assert circularity(ROI(pieces)) < 0.5 < circularity(ROI(np.ones((1, 1), bool)))


def test_circularity_of_weighted_and_multiplane_rois():
    weights = disc().astype(float) * 0.3  # a weighted mask: its nonzero pixels count
    assert circularity(ROI(weights)) == pytest.approx(circularity(ROI(disc())))
    volume = np.zeros((3, 40, 40), bool)
    volume[2] = disc()  # only on plane 2 (SIMA looked at plane 0 only)
    volume[1, 5, 5:9] = True
    assert circularity(ROI(volume)) == pytest.approx(circularity(ROI(disc())))
    poly = ROI(polygons=[[2, 2, 1], [6, 2, 1], [6, 4, 1], [2, 4, 1]])  # no im_shape
    assert circularity(poly) == pytest.approx(circularity(ROI(np.ones((2, 4), bool))))
    with pytest.raises(TypeError, match="expects an ROI"):
        circularity(disc())


def test_circularity_filter_keeps_round_rois():
    line = np.zeros((40, 40), bool)
    line[30:32, 2:32] = True
    rois = ROIList([ROI(line, label="line"), ROI(disc(), label="disc"), ROI(np.zeros((5, 5)))])
    assert [r.label for r in CircularityFilter().apply(rois)] == ["disc"]
    assert [r.label for r in CircularityFilter(0.1).apply(rois)] == ["line", "disc"]
    # strictly greater than the threshold
    exact = circularity(rois[1])
    assert [r.label for r in CircularityFilter(exact).apply(rois)] == []
    assert [r.label for r in CircularityFilter(exact - 1e-9).apply(rois)] == ["disc"]


def test_circularity_filter_accepts_simas_misspelt_keyword():
    step = CircularityFilter(circularity_threhold=0.7)
    assert step.circularity_threshold == 0.7
    assert step == CircularityFilter(0.7) == CircularityFilter(circularity_threshold=0.7)
    assert [f.name for f in dataclasses.fields(step)] == ["circularity_threshold"]
    assert dataclasses.replace(step, circularity_threshold=0.2).circularity_threshold == 0.2
    assert CircularityFilter().circularity_threshold == 0.5
    with pytest.raises(ValueError, match="not both"):
        CircularityFilter(0.5, circularity_threhold=0.5)
    with pytest.raises(ValueError, match="circularity_threshold"):
        CircularityFilter(-0.1)
    with pytest.raises(ValueError, match="circularity_threshold"):
        CircularityFilter(float("nan"))
    with pytest.raises(TypeError, match="number"):
        CircularityFilter("0.5")


# --------------------------------------------------------------------------- SparseROIsFromMasks
def test_sparse_rois_neighbour_test_uses_the_real_lower_neighbour():
    """A one-pixel-wide vertical bar keeps its top pixel (its only neighbour is below).

    SIMA 1.3.2 summed row 2 of the plane instead of the row below, which removed the
    top pixel (29 pixels left, below ``min_size=30``).
    """
    weights = np.zeros((50, 50))
    weights[10:40, 20] = 1.0
    out = SparseROIsFromMasks(min_size=30).apply([ROI(weights)])
    assert len(out) == 1
    np.testing.assert_array_equal(dense(out[0])[0], weights > 0)


def test_sparse_rois_removes_isolated_and_border_pixels():
    weights = np.zeros((40, 40))
    weights[5:15, 5:15] = 1.0
    weights[30, 30] = 1.0  # isolated
    weights[0:10, 39] = 1.0  # on the border
    out = SparseROIsFromMasks(min_size=1).apply([ROI(weights)])
    assert len(out) == 1
    expected = np.zeros((40, 40), bool)
    expected[5:15, 5:15] = True
    np.testing.assert_array_equal(dense(out[0])[0], expected)
    # without smoothing rounds there is no neighbour test (as SIMA)
    out = SparseROIsFromMasks(min_size=1, smooth_size=0).apply([ROI(weights)])
    assert sorted(r.size for r in out) == [1, 10, 100]


def test_sparse_rois_static_is_averaged_over_planes():
    """The decision does not depend on plane order (SIMA looked at the last plane only)."""
    smooth = blob((40, 40), (20, 20), 4)
    rough = np.random.default_rng(0).uniform(0, 1, (40, 40))
    # statics: smooth plane ~0.19, rough plane ~1.54; mean ~0.87
    for planes in ([rough, smooth], [smooth, rough]):
        weights = np.stack(planes)
        assert SparseROIsFromMasks(min_size=20).apply([ROI(weights)]) == []
        kept = SparseROIsFromMasks(min_size=20, static_threshold=1.0).apply([ROI(weights)])
        assert len(kept) >= 1
    assert len(SparseROIsFromMasks(min_size=20).apply([ROI(np.stack([smooth, smooth]))])) == 1
    assert SparseROIsFromMasks(min_size=1).apply([ROI(rough)]) == []


def test_sparse_rois_label_blobs_across_planes():
    weights = np.zeros((3, 40, 40))
    weights[0] = blob((40, 40), (15, 15), 3)
    weights[1] = blob((40, 40), (15, 15), 3)
    weights[2] = blob((40, 40), (28, 28), 3)
    out = SparseROIsFromMasks(min_size=10).apply([ROI(weights, tags={"ica"})])
    assert len(out) == 2
    first, second = (dense(r) for r in out)
    assert first.shape == (3, 40, 40) and out[0].im_shape == (3, 40, 40)
    assert first[0].any() and first[1].any() and not first[2].any()
    np.testing.assert_array_equal(first[0], first[1])
    assert second[2, 28, 28] and not second[:2].any()
    assert all(r.tags == {"ica"} and r.label is None and r.id is None for r in out)
    assert all(r.mask[0].dtype == bool for r in out)


def test_sparse_rois_sign_split():
    weights = np.zeros((64, 64))
    weights[20:30, 20:30] = 1.0
    weights[20:30, 30:40] = -1.0
    split = SparseROIsFromMasks(min_size=50).apply([ROI(weights)])
    # positive part first, then negative
    assert [r.size for r in split] == [100, 100]
    assert dense(split[0])[0, 25, 25] and dense(split[1])[0, 25, 35]
    joined = SparseROIsFromMasks(min_size=50, sign_split=False).apply([ROI(weights)])
    assert len(joined) == 1
    np.testing.assert_array_equal(dense(joined[0])[0], weights != 0)


def test_sparse_rois_min_size_and_empty_masks():
    weights = blob((60, 60), (15, 15), 4) + blob((60, 60), (45, 45), 2)
    sizes = sorted(r.size for r in SparseROIsFromMasks(min_size=1).apply([ROI(weights)]))
    assert len(sizes) == 2
    middle = (sizes[0] + sizes[1]) // 2
    out = SparseROIsFromMasks(min_size=middle).apply([ROI(weights)])
    assert [r.size for r in out] == [sizes[1]]
    assert SparseROIsFromMasks().apply([ROI(np.zeros((20, 20)))]) == []
    tiny = SparseROIsFromMasks().apply([ROI(np.ones((2, 2)))])  # no interior pixels
    assert tiny == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_size": -1}, ValueError, "min_size"),
        ({"static_threshold": -0.5}, ValueError, "static_threshold"),
        ({"static_threshold": float("nan")}, ValueError, "static_threshold"),
        ({"smooth_size": -1}, ValueError, "smooth_size"),
        ({"sign_split": "yes"}, TypeError, "sign_split"),
        ({"n_processes": 0}, ValueError, "n_processes"),
    ],
)
def test_sparse_rois_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        SparseROIsFromMasks(**kwargs)


# --------------------------------------------------------------------------- SmoothROIBoundaries
def test_smooth_boundaries_keeps_properties_and_stays_close():
    roi = ROI(disc((60, 60), (30, 30), 15), label="cell", id="7", tags={"pv"})
    (out,) = SmoothROIBoundaries(tolerance=1.0).apply([roi])
    assert (out.label, out.id, out.tags) == ("cell", "7", {"pv"})  # SIMA lost them
    assert out.kind == "polygons" and out.im_shape == (1, 60, 60)
    original, smoothed = roi.coords[0], out.coords[0]
    assert 8 <= len(smoothed) < len(original)
    ring = shapely.LinearRing(original[:, :2])
    assert max(ring.distance(shapely.Point(p)) for p in smoothed[:, :2]) <= 1.0 + 1e-9
    overlap = (dense(out) & dense(roi)).sum() / (dense(out) | dense(roi)).sum()
    assert overlap > 0.95


def test_smooth_boundaries_min_verts():
    square = ROI(rect((12, 12), (2, 8), (2, 8)).mask, label="sq")
    original = square.coords[0]
    assert len(original) == 9  # an octagon (cut corners), closed
    # simplified to 5 vertices (< 8): the original outline is kept
    (kept,) = SmoothROIBoundaries().apply([square])
    np.testing.assert_array_equal(kept.coords[0], original)
    (simple,) = SmoothROIBoundaries(min_verts=4).apply([square])
    np.testing.assert_array_equal(
        simple.coords[0][:, :2], [[8, 7.5], [7.5, 2], [2, 2.5], [2.5, 8], [8, 7.5]]
    )
    # outlines with at most min_verts vertices are left alone
    (same,) = SmoothROIBoundaries(tolerance=5, min_verts=9).apply([square])
    np.testing.assert_array_equal(same.coords[0], original)


def test_smooth_boundaries_multiplane_and_polygon_input():
    volume = np.zeros((3, 40, 40), bool)
    volume[0] = disc(radius=10)
    volume[2] = disc(centre=(15, 22), radius=6)
    roi = ROI(volume)
    out = SmoothROIBoundaries().apply([roi])[0]
    assert sorted({int(c[0, 2]) for c in out.coords}) == [0, 2]
    assert all(np.all(c[:, 2] == c[0, 2]) for c in out.coords)
    smoothed = dense(out)
    assert not smoothed[1].any()
    for z in (0, 2):
        iou = (smoothed[z] & volume[z]).sum() / (smoothed[z] | volume[z]).sum()
        assert iou > 0.9
    # polygon ROIs (without im_shape) are smoothed too
    poly = ROI(polygons=out.coords, label="p")
    again = SmoothROIBoundaries().apply([poly])[0]
    assert again.label == "p" and again.im_shape is None and len(again.coords) == 2


def test_smooth_boundaries_with_zero_tolerance_keeps_the_outlines():
    rng = np.random.default_rng(3)
    volume = np.zeros((2, 30, 40), bool)
    volume[0, 3:20, 4:25] = True
    volume[0, 8:12, 10:15] = False  # a hole: its outline is a separate polygon (as SIMA)
    volume[1] = rng.random((30, 40)) > 0.7  # many ragged pieces
    roi = ROI(volume)
    (out,) = SmoothROIBoundaries(tolerance=0).apply([roi])
    expected = roi.coords
    assert len(out.coords) == len(expected) > 10
    for got, want in zip(out.coords, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_smooth_boundaries_weighted_and_empty_rois():
    weighted = ROI(disc() * 0.5, label="w")
    with pytest.raises(NonBooleanMask, match=r"ROI 1 \('w'\) has a weighted mask"):
        SmoothROIBoundaries().apply([ROI(disc()), weighted])
    empty = ROI(np.zeros((5, 5), bool), label="e")
    (out,) = SmoothROIBoundaries().apply([empty])
    assert out is not empty and out.label == "e" and out.size == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tolerance": -1}, ValueError, "tolerance"),
        ({"tolerance": None}, TypeError, "tolerance"),
        ({"min_verts": -1}, ValueError, "min_verts"),
        ({"n_processes": 0}, ValueError, "n_processes"),
    ],
)
def test_smooth_boundaries_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        SmoothROIBoundaries(**kwargs)


# --------------------------------------------------------------------------- MergeOverlapping
def reference_merge(rois, threshold):
    """SIMA's quadratic definition, written out literally (dense masks)."""
    masks = [dense(r) != 0 for r in rois]
    present = [True] * len(rois)
    names = [r.label for r in rois]
    for i in range(len(masks)):
        for j in range(len(masks)):
            if i == j or not present[i] or not present[j]:
                continue
            shared = np.logical_and(masks[i], masks[j]).sum()
            if shared > threshold * min(masks[i].sum(), masks[j].sum()):
                masks[i] = masks[i] | masks[j]
                present[j] = False
    return [(names[k], masks[k]) for k in range(len(masks)) if present[k]]


def test_merge_overlapping_squares():
    a = rect((20, 30), (2, 8), (2, 8), label="a", id="1", tags={"x"})
    b = rect((20, 30), (4, 10), (4, 10), label="b", id="2", tags={"y"})  # 16 of 36 shared
    c = ROI(np.pad(np.full((3, 3), 0.25), ((12, 5), (20, 7))), label="c")  # weighted, apart
    out = MergeOverlapping(0.4).apply([a, b, c])
    assert [r.label for r in out] == ["a", "c"]
    merged = out[0]
    assert (merged.id, merged.tags) == ("1", {"x", "y"})
    np.testing.assert_array_equal(dense(merged), dense(a) | dense(b))
    assert merged.mask[0].dtype == bool
    assert out[1].mask[0].dtype == float  # not merged: unchanged
    np.testing.assert_array_equal(dense(out[1]), dense(c))
    # 16 > 0.45 * 36 is false: nothing merges
    assert [r.label for r in MergeOverlapping(0.45).apply([a, b, c])] == ["a", "b", "c"]


def test_merge_overlapping_chain_order():
    """Greedy in index order; an ROI may absorb an earlier one its union now overlaps."""
    shape = (6, 20)
    a = rect(shape, (0, 4), (0, 6), label="A")  # 24 pixels
    b = rect(shape, (0, 4), (4, 10), label="B")  # shares 8 with A and 8 with C
    c = rect(shape, (0, 4), (8, 14), label="C")  # nothing shared with A
    union = dense(a) | dense(b) | dense(c)

    (one,) = MergeOverlapping(0.25).apply([a, b, c])
    assert one.label == "A"
    np.testing.assert_array_equal(dense(one), union)

    # A takes B (C was passed over, sharing nothing with A); then C takes the union
    (one,) = MergeOverlapping(0.25).apply([a, c, b])
    assert one.label == "C"
    np.testing.assert_array_equal(dense(one), union)

    # 8 > 0.34 * 24 fails: nothing merges
    assert len(MergeOverlapping(0.34).apply([a, b, c])) == 3


def test_merge_overlapping_thresholds_zero_and_one():
    a = rect((10, 10), (0, 4), (0, 4), label="a")
    same = rect((10, 10), (0, 4), (0, 4), label="same")
    touching = rect((10, 10), (0, 4), (3, 8), label="touching")
    apart = rect((10, 10), (6, 8), (6, 8), label="apart")
    rois = [a, same, touching, apart]
    # threshold 1: sharing more than all of the smaller ROI is impossible
    assert [r.label for r in MergeOverlapping(1.0).apply(rois)] == [r.label for r in rois]
    # threshold 0: any shared pixel merges; no shared pixel never does
    assert [r.label for r in MergeOverlapping(0.0).apply(rois)] == ["a", "apart"]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.8])
def test_merge_overlapping_matches_the_quadratic_definition(seed, threshold):
    rng = np.random.default_rng(seed)
    rois = []
    for k in range(30):
        z = int(rng.integers(0, 2))
        r0, c0 = rng.integers(0, 26, size=2)
        h, w = rng.integers(2, 8, size=2)
        m = np.zeros((2, 32, 32), bool)
        m[z, r0 : r0 + h, c0 : c0 + w] = True
        rois.append(ROI(m, label=str(k)))
    got = MergeOverlapping(threshold).apply(rois)
    expected = reference_merge(rois, threshold)
    assert [r.label for r in got] == [name for name, _ in expected]
    for roi, (_, mask) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(dense(roi) != 0, mask)


def test_merge_overlapping_multiplane_and_mixed_shapes():
    m1 = np.zeros((2, 10, 10), bool)
    m1[1, 2:6, 2:6] = True
    m2 = np.zeros((2, 10, 10), bool)
    m2[1, 3:7, 3:7] = True
    other_plane = np.zeros((2, 10, 10), bool)
    other_plane[0, 2:6, 2:6] = True  # same pixels, other plane
    out = MergeOverlapping(0.5).apply([ROI(m1, label="1"), ROI(m2), ROI(other_plane, label="0")])
    assert [r.label for r in out] == ["1", "0"]
    np.testing.assert_array_equal(dense(out[0]), m1 | m2)
    # ROIs of different extents and a polygon ROI without im_shape
    small = rect((6, 6), (1, 5), (1, 5), label="small")
    poly = ROI(polygons=[[2, 1, 1], [8, 1, 1], [8, 5, 1], [2, 5, 1]], label="poly")
    flat = ROI(polygons=[[1, 1], [5, 1], [5, 5], [1, 5]], im_shape=(6, 6), label="flat")
    out = MergeOverlapping(0.5).apply([small, poly, flat])
    assert [r.label for r in out] == ["small", "poly"]
    assert out[0].im_shape == (2, 6, 8)
    assert out[0].size == 16 and out[1].kind == "polygons" and out[1].im_shape is None


@pytest.mark.parametrize(
    ("threshold", "error"),
    [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError), ("0.5", TypeError)],
)
def test_merge_overlapping_bad_threshold(threshold, error):
    with pytest.raises(error, match="threshold"):
        MergeOverlapping(threshold)
