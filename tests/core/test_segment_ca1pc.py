"""CA1 pyramidal cells: SIMA's test_PlaneCA1PC (spec 9.6), processed image, nucleus step."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence
from napari_sima.core.segment.affinity import AffinityMatrixCA1PC
from napari_sima.core.segment.ca1pc import (
    CLAHE_CLIP_LIMIT,
    CA1PCNucleus,
    PlaneCA1PC,
    ca1pc_processed_plane,
    processed_image_ca1pc,
    to8bit,
)
from napari_sima.core.segment.normcut import PlaneNormalizedCuts
from napari_sima.core.segment.planewise import PlaneWiseSegmentation
from napari_sima.core.segment.postprocess import CircularityFilter, SizeFilter, circularity


def _dataset(array):
    return ImagingDataset([Sequence.create("ndarray", np.asarray(array))], None)


def _ring_cells(shape=(40, 40), centres=((12, 12), (12, 28), (28, 20)), radius=6.0, hole=3.0):
    """Bright rings (cytoplasm) around dark discs (nuclei) on a mid-grey background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 60.0)
    nuclei = []
    for cy, cx in centres:
        r = np.hypot(yy - cy, xx - cx)
        image[r < radius] = 200.0
        image[r < hole] = 20.0
        nuclei.append(r < hole)
    return image, nuclei


# ----------------------------------------------------------------------- SIMA's test
def test_sima_plane_ca1pc(examples):
    """SIMA's test_PlaneCA1PC: PlaneCA1PC(num_pcs=5) on the 50 x 50 crop of example.sima."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SIMA's extra displacement arrays
        ds = ImagingDataset.load(examples / "example.sima")[:, :, :, :50, :50]
    rois = ds.segment(PlaneCA1PC(num_pcs=5), label="ca1pc")
    assert isinstance(rois, ROIList) and len(rois) > 0
    for roi in rois:
        assert roi.mask[0].dtype == bool and roi.im_shape == (1, 50, 50)
        assert roi.size >= 20  # min_roi_size
        assert circularity(roi) > 0.5
    # the same through PlaneWiseSegmentation, as a volume strategy
    again = PlaneWiseSegmentation(PlaneCA1PC(num_pcs=5)).segment(ds)
    assert [r.size for r in again] == [r.size for r in rois]


# ---------------------------------------------------------------- processed image
def test_to8bit():
    assert to8bit(np.array([0.0, 1.0, 2.0])).tolist() == [0, 127, 255]
    assert to8bit(np.array([np.nan, -5.0, 10.0])).tolist() == [0, 0, 255]
    assert to8bit(np.zeros(3)).tolist() == [0, 0, 0]
    assert to8bit(np.array([1, 2], np.uint16)).dtype == np.uint8


def test_processed_image_keeps_nuclei_dark_and_rings_bright():
    image, nuclei = _ring_cells()
    out = ca1pc_processed_plane(image, 10, 10)
    assert out.dtype == np.uint8 and out.shape == image.shape
    ring = image == 200.0
    for nucleus in nuclei:
        assert out[nucleus].mean() < out[ring].mean() - 50
    assert pytest.approx(20 / 256) == CLAHE_CLIP_LIMIT


def test_clahe_evens_out_uneven_illumination():
    image, _ = _ring_cells()
    ring = image == 200.0
    ramp = image * np.linspace(0.3, 1.0, 40)[None, :]  # dim on the left
    left, right = ring.copy(), ring.copy()
    left[:, 20:], right[:, :20] = False, False
    before = to8bit(ramp)
    after = ca1pc_processed_plane(ramp, 10, 10)
    contrast_before = before[right].mean() / before[left].mean()
    contrast_after = after[right].mean() / after[left].mean()
    assert contrast_before > 1.4 and contrast_after < 1.1


def test_unsharp_mask_arithmetic():
    # a constant image is left as it is: 1.5 a - 0.5 a
    assert np.all(ca1pc_processed_plane(np.full((7, 9), 3.0)) == 255)
    # a step, equalised to 0 / 255: the overshoot and undershoot saturate (no uint8
    # wrap-around, which would turn 1.5 * 255 - 0.5 * blur into a dark value)
    step = np.full((30, 30), 0.5)
    step[:, 15:] = 1.0
    out = ca1pc_processed_plane(step, 10, 10)
    assert np.all(out[:, :15] == 0) and np.all(out[:, 15:] == 255)


def test_processed_image_edge_cases():
    assert ca1pc_processed_plane(np.zeros((5, 5))).max() == 0
    small = ca1pc_processed_plane(np.random.default_rng(0).random((6, 4)), 10, 10)
    assert small.shape == (6, 4)
    with pytest.raises(ValueError, match="2-D"):
        ca1pc_processed_plane(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="x_diameter"):
        ca1pc_processed_plane(np.zeros((5, 5)), x_diameter=0)


def test_processed_image_of_a_dataset():
    image, _ = _ring_cells()
    frames = np.stack([image, image * 0.5]).reshape(2, 1, 40, 40, 1)
    frames = np.concatenate([frames, np.zeros_like(frames)], axis=-1)  # 2 channels
    ds = _dataset(frames)
    out = processed_image_ca1pc(ds, channel=0)
    assert out.shape == (1, 40, 40) and out.dtype == np.uint8
    assert np.array_equal(out[0], ca1pc_processed_plane(image * 0.75))
    assert processed_image_ca1pc(ds, channel=1).max() == 0
    with pytest.raises(ValueError, match="channel"):
        processed_image_ca1pc(ds, channel=2)


# ------------------------------------------------------------------ nucleus step
def test_nucleus_step_finds_the_dark_cores():
    image, nuclei = _ring_cells()
    ds = _dataset(np.stack([image] * 3).reshape(3, 1, 40, 40, 1))
    yy, xx = np.mgrid[:40, :40]
    cuts = ROIList(
        [ROI(np.hypot(yy - cy, xx - cx) < 7.5) for cy, cx in ((12, 12), (12, 28), (28, 20))]
    )
    out = CA1PCNucleus(x_diameter=10).apply(cuts, ds)
    assert len(out) == 3
    for roi, nucleus in zip(out, nuclei, strict=True):
        mask = np.asarray(roi)[0]
        assert mask.dtype == bool
        iou = (mask & nucleus).sum() / (mask | nucleus).sum()
        assert iou > 0.5
    # a cut of one grey value has no nucleus; the input is not changed
    flat = ROIList([ROI(np.pad(np.ones((3, 3), bool), ((1, 36), (1, 36))))])
    assert len(CA1PCNucleus().apply(flat, _dataset(np.ones((2, 1, 40, 40, 1))))) == 0
    assert len(cuts) == 3 and cuts[0].size == np.count_nonzero(np.hypot(yy - 12, xx - 12) < 7.5)


def test_nucleus_step_bad_input():
    with pytest.raises(ValueError, match="needs the dataset"):
        CA1PCNucleus().apply(ROIList([]))
    with pytest.raises(ValueError, match="x_diameter"):
        CA1PCNucleus(x_diameter=0)
    ds = _dataset(np.ones((2, 1, 10, 10, 1)))
    with pytest.raises(ValueError, match="larger than"):
        CA1PCNucleus().apply(ROIList([ROI(np.ones((12, 12), bool))]), ds)


# ------------------------------------------------------------------ the strategy
def test_pipeline_and_parameters():
    strategy = PlaneCA1PC(num_pcs=20, x_diameter=8, y_diameter=9, min_cut_size=25)
    normcut = strategy.normalized_cuts()
    assert isinstance(normcut, PlaneNormalizedCuts)
    assert isinstance(normcut.affinity_method, AffinityMatrixCA1PC)
    assert normcut.affinity_method.num_pcs == 20 and normcut.affinity_method.y_diameter == 9
    steps = strategy.pipeline()
    assert [type(s) for s in steps] == [SizeFilter, CA1PCNucleus, SizeFilter, CircularityFilter]
    assert steps[0].min_size == 25 and steps[2].min_size == 20
    assert steps[1].x_diameter == 8 and steps[1].y_diameter == 9
    params = json.loads(json.dumps(strategy.parameters()))
    assert params["strategy"] == "PlaneCA1PC" and params["circularity_threshold"] == 0.5
    assert PlaneCA1PC.single_plane


def test_sima_misspelt_keyword_is_accepted():
    assert PlaneCA1PC(circularity_threhold=0.7).circularity_threshold == 0.7
    with pytest.raises(ValueError, match="not both"):
        PlaneCA1PC(circularity_threshold=0.6, circularity_threhold=0.7)
    with pytest.raises(ValueError, match="circularity_threshold"):
        PlaneCA1PC(circularity_threshold=-1)
    with pytest.raises(ValueError, match="y_diameter"):
        PlaneCA1PC(y_diameter=0)
    with pytest.raises(ValueError, match="cut_max_pen"):
        PlaneCA1PC(cut_max_pen=math.nan)


def test_ca1pc_segments_ring_cells_of_a_movie():
    """Active cells with a dark nucleus: PlaneCA1PC cuts each cell and returns its nucleus.

    (A nucleus without any of its cell's signal would be cut apart from the cell by the
    correlation affinity, as any unrelated pixels.)
    """
    rng = np.random.default_rng(5)
    centres = [(10, 10), (10, 30), (30, 10), (30, 30), (20, 20)]
    image, nuclei = _ring_cells((40, 40), centres, radius=6.0, hole=3.2)
    yy, xx = np.mgrid[:40, :40]
    frames = 200
    movie = np.repeat(image[None], frames, axis=0)
    for cy, cx in centres:  # each cell has its own calcium transients, dimmer in the nucleus
        trace = np.convolve(rng.random(frames) < 0.05, 0.9 ** np.arange(30))[:frames]
        r = np.hypot(yy - cy, xx - cx)
        movie[:, (r < 6.0) & (r >= 3.2)] += 150 * trace[:, None]
        movie[:, r < 3.2] += 50 * trace[:, None]
    movie += rng.normal(0, 5, movie.shape)
    ds = _dataset(movie.reshape(frames, 1, 40, 40, 1))
    rois = PlaneCA1PC(
        num_pcs=10, x_diameter=10, y_diameter=10, min_roi_size=10, min_cut_size=20
    ).segment(ds)
    found = 0
    for nucleus in nuclei:
        best = max(
            ((np.asarray(r)[0] & nucleus).sum() / (np.asarray(r)[0] | nucleus).sum() for r in rois),
            default=0,
        )
        found += best > 0.5
    assert found >= 4


def test_ca1pc_bad_datasets():
    with pytest.raises(ValueError, match="PlaneWiseSegmentation"):
        PlaneCA1PC().segment(_dataset(np.zeros((5, 2, 16, 16, 1))))
    with pytest.warns(RuntimeWarning, match="no edges"):
        assert len(PlaneCA1PC(num_pcs=3).segment(_dataset(np.ones((10, 1, 16, 16, 1))))) == 0
