"""STICA: SIMA's test_STICA (spec 9.6) and our own checks on synthetic movies."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from napari_sima.core import ImagingDataset, ROIList, Sequence
from napari_sima.core.segment.stica import STICA, stica_components
from napari_sima.core.synthetic import make_calcium_movie


@pytest.fixture(scope="module")
def calcium():
    """64 x 64, 300 frames, 6 well-separated cells (one plane, one channel)."""
    return make_calcium_movie(
        num_frames=300, frame_shape=(1, 64, 64, 1), num_sequences=1, num_cells=6, seed=1,
        allow_overlap=False,
    )


def _dataset(array, savedir=None):
    return ImagingDataset([Sequence.create("ndarray", array)], savedir)


def _best_correlations(footprints, rois):
    """For every true footprint, the best |correlation| with an ROI's weight map."""
    maps = np.stack([np.asarray(r).ravel() for r in rois])
    fp = footprints.reshape(len(footprints), -1)
    c = np.corrcoef(np.vstack([fp, maps]))[: len(fp), len(fp) :]
    return np.abs(c).max(axis=1)


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


# ----------------------------------------------------------------------- SIMA's test
def test_sima_stica(tmp_path, examples):
    """SIMA's test_STICA: STICA(components=5) and its usual post-processing on example.sima."""
    from napari_sima.core.segment.postprocess import (
        MergeOverlapping,
        SmoothROIBoundaries,
        SparseROIsFromMasks,
    )

    # the legacy folder opens read-only: convert a copy to our format in tmp_path
    shutil.copytree(examples / "example.sima", tmp_path / "legacy" / "example.sima")
    shutil.copy(examples / "example.tif", tmp_path / "legacy" / "example.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SIMA's extra displacement arrays
        ds = ImagingDataset.load(tmp_path / "legacy" / "example.sima")
    ds.save(tmp_path / "example.sima")
    assert not ds.read_only

    method = STICA(components=5)
    method.append(SparseROIsFromMasks(min_size=50))
    method.append(SmoothROIBoundaries(tolerance=1, min_verts=8))
    method.append(MergeOverlapping(0.5))
    rois = ds.segment(method)

    assert isinstance(rois, ROIList)
    assert (tmp_path / "example.sima" / "opca_0.npz").is_file()  # as SIMA's opca_0.npz
    stored = ImagingDataset.load(tmp_path / "example.sima").ROIs
    assert len(stored) == 1
    (saved,) = stored.values()
    assert len(saved) == len(rois)
    for roi in rois:
        assert roi.im_shape == (1, 125, 247)
        assert roi.size >= 1


# ------------------------------------------------------------------------- our checks
def test_stica_finds_the_cells_of_a_synthetic_movie(calcium):
    ds = _dataset(calcium.sequences[0])
    rois = STICA(mu=0.5, components=8).segment(ds)
    assert len(rois) == 8
    for roi in rois:
        assert roi.im_shape == (1, 64, 64)
        assert roi.mask[0].dtype == np.float64  # real-valued maps, not boolean
    best = _best_correlations(calcium.true_footprints(0), rois)
    assert np.all(best > 0.95), best
    # cells are positive blobs: each cell's best map peaks inside the cell
    for mask in calcium.true_masks(0):
        maps = np.stack([np.asarray(r)[0] for r in rois])
        k = np.argmax([np.corrcoef(m.ravel(), mask.ravel())[0, 1] for m in maps])
        peak = np.unravel_index(np.argmax(maps[k]), mask.shape)
        assert mask[peak]


def test_stica_with_post_processing_outlines_the_cells(calcium):
    from napari_sima.core.segment.postprocess import MergeOverlapping, SparseROIsFromMasks

    ds = _dataset(calcium.sequences[0])
    strategy = STICA(mu=0.5, components=8)
    strategy.append(SparseROIsFromMasks(min_size=20))
    strategy.append(MergeOverlapping(0.5))
    rois = strategy.segment(ds)
    found = [np.asarray(r)[0] > 0 for r in rois]
    for truth in calcium.true_masks(0):
        assert max(_iou(truth, f) for f in found) >= 0.5


def test_stica_is_deterministic(calcium):
    ds = _dataset(calcium.sequences[0][:150])
    a = STICA(mu=0.5, components=5, seed=3).segment(ds)
    b = STICA(mu=0.5, components=5, seed=3).segment(ds)
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(ra), np.asarray(rb))


def test_too_many_components_are_clamped_with_a_warning():
    rng = np.random.default_rng(0)
    ds = _dataset(rng.normal(100, 5, size=(6, 1, 10, 10, 1)))
    with pytest.warns(UserWarning, match="10 components asked for.*at most 5; using 5"):
        rois = STICA(components=10).segment(ds)
    assert len(rois) == 5


def test_constant_movie_gives_no_rois_with_a_warning():
    ds = _dataset(np.full((20, 1, 12, 12, 1), 42, dtype=np.uint16))
    with pytest.warns(UserWarning, match="does not vary over time"):
        rois = STICA(components=4).segment(ds)
    assert rois == []


def test_single_frame_is_a_clear_error():
    ds = _dataset(np.ones((1, 1, 8, 8, 1)))
    with pytest.raises(ValueError, match="at least 2 frames"):
        STICA(components=2).segment(ds)


def test_nan_frames_and_pixels(calcium):
    movie = calcium.sequences[0][:200].astype(np.float64)
    movie[10] = np.nan  # a lost frame
    movie[:, :, :3, :, :] = np.nan  # rows never observed (motion-correction margin)
    ds = _dataset(movie)
    rois = STICA(mu=0.5, components=8).segment(ds)
    assert len(rois) == 8
    for roi in rois:
        assert np.all(np.isfinite(roi.mask[0].data))
    assert np.all(_best_correlations(calcium.true_footprints(0), rois) > 0.9)


def test_multi_plane_masks_are_3d():
    movie = make_calcium_movie(
        num_frames=150, frame_shape=(2, 40, 40, 2), num_sequences=1, num_cells=4, seed=2
    )
    ds = ImagingDataset([Sequence.create("ndarray", movie.sequences[0])], None, ["g", "r"])
    rois = STICA(channel="g", mu=0.5, components=4).segment(ds)
    assert len(rois) == 4
    for roi in rois:
        assert roi.im_shape == (2, 40, 40)
    best = _best_correlations(movie.true_footprints().reshape(4, -1), rois)
    assert np.all(best > 0.9), best


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"components": 0}, ValueError, "at least 1"),
        ({"components": 2.5}, TypeError, "integer"),
        ({"components": [0, 1]}, TypeError, "integer"),
        ({"mu": 1.5}, ValueError, r"\[0, 1\]"),
        ({"mu": "a"}, TypeError, "number"),
        ({"seed": -1}, ValueError, "seed"),
        ({"channel": 1.0}, TypeError, "channel"),
    ],
)
def test_bad_parameters(kwargs, err, match):
    with pytest.raises(err, match=match):
        STICA(**kwargs)


def test_unknown_channel_is_a_clear_error():
    ds = _dataset(np.ones((5, 1, 8, 8, 1)))
    with pytest.raises((ValueError, IndexError, KeyError), match="channel"):
        STICA(channel="green").segment(ds)


def test_parameters_are_json():
    params = STICA(components=12, mu=0.2).parameters()
    assert json.loads(json.dumps(params)) == {
        "strategy": "STICA",
        "channel": 0,
        "mu": 0.2,
        "components": 12,
        "seed": 0,
        "post_processing": [],
    }


def test_stica_components_checks_shapes():
    with pytest.raises(ValueError, match="must share k"):
        stica_components(np.ones((4, 4, 3)), np.ones((10, 2)))
    assert stica_components(np.zeros((4, 4, 2)), np.zeros((10, 2))).shape == (4, 4, 0)
