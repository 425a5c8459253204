"""ImagingDataset.segment / iter_segment, plane-wise segmentation and ROI placement."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest
from scipy import ndimage

from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence
from napari_sima.core.segment.base import (
    PostProcessingStep,
    SegmentationStrategy,
    SegmentProgress,
)
from napari_sima.core.segment.planewise import (
    PlaneWiseSegmentation,
    normalize_planes,
    place_in_plane,
    plane_dataset,
)
from napari_sima.core.segment.stica import STICA
from napari_sima.core.synthetic import make_calcium_movie

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}h\d{2}m\d{2}s$")


@dataclasses.dataclass
class BrightBlobs(SegmentationStrategy):
    """A small real strategy: connected pixels of the time average above a threshold."""

    threshold: float = 0.5

    def _iter_segment(self, dataset):
        mean = dataset.time_averages[..., 0]
        yield SegmentProgress(0.5, "thresholding")
        labels, n = ndimage.label(mean > self.threshold * np.nanmax(mean))
        return ROIList([ROI(mask=labels == i, label=f"blob{i}") for i in range(1, n + 1)])


@dataclasses.dataclass
class OnePlaneBlobs(BrightBlobs):
    single_plane = True


@dataclasses.dataclass
class KeepFirst(PostProcessingStep):
    """Keep the first ``n`` ROIs."""

    n: int = 1

    def apply(self, rois, dataset=None):
        return ROIList([r.copy() for r in list(rois)[: self.n]])


def _blob_movie(frames=12):
    """Two planes of 30 x 32: one bright blob in plane 0, two in plane 1."""
    rng = np.random.default_rng(0)
    movie = rng.normal(10, 1, size=(frames, 2, 30, 32, 1))
    movie[:, 0, 4:9, 5:11] += 100
    movie[:, 1, 18:24, 20:25] += 100
    movie[:, 1, 2:6, 26:30] += 100
    return movie


def _blob_dataset(savedir=None, frames=12):
    return ImagingDataset([Sequence.create("ndarray", _blob_movie(frames))], savedir)


def _pixels(roi):
    out = set()
    for z, m in enumerate(roi.mask):
        rows, cols = m.nonzero()
        out.update((z, int(y), int(x)) for y, x in zip(rows, cols, strict=True))
    return out


# ------------------------------------------------------------------ storing and labels
def test_segment_stores_the_rois_with_a_timestamp_label(tmp_path):
    ds = _blob_dataset(tmp_path / "d.sima")
    rois = ds.segment(BrightBlobs())
    assert len(rois) == 3
    stored = ImagingDataset.load(tmp_path / "d.sima").ROIs
    (label,) = stored
    assert TIMESTAMP.match(label)
    assert [_pixels(r) for r in stored[label]] == [_pixels(r) for r in rois]

    again = ds.segment(BrightBlobs(threshold=0.9), label="strict")
    assert set(ds.ROIs) == {label, "strict"}
    assert len(ds.ROIs["strict"]) == len(again)


def test_segment_in_memory_dataset_and_progress():
    ds = _blob_dataset()
    seen = []
    rois = ds.segment(BrightBlobs(), label="blobs", progress=lambda f, m: seen.append((f, m)))
    assert list(ds.ROIs) == ["blobs"] and len(rois) == 3
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in seen)


def test_read_only_dataset_fails_before_any_work(tmp_path, examples):
    import shutil

    shutil.copytree(examples / "example.sima", tmp_path / "example.sima")
    shutil.copy(examples / "example.tif", tmp_path / "example.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = ImagingDataset.load(tmp_path / "example.sima")
    gen = ds.iter_segment(STICA(components=3))
    with pytest.raises(PermissionError, match="read-only"):
        next(gen)
    assert not (tmp_path / "example.sima" / "opca_0.npz").exists()


def test_cancel_stores_nothing(tmp_path):
    movie = make_calcium_movie(
        num_frames=80, frame_shape=(1, 32, 32, 1), num_sequences=1, num_cells=3, seed=4
    )
    ds = ImagingDataset([Sequence.create("ndarray", movie.sequences[0])], tmp_path / "c.sima")
    gen = ds.iter_segment(STICA(components=3), label="never")
    first = next(gen)
    assert isinstance(first, SegmentProgress) and 0 <= first.fraction < 1
    next(gen)
    gen.close()
    assert ds.ROIs == {}
    assert not (tmp_path / "c.sima" / "opca_0.npz").exists()
    # the same generator run to the end stores the set
    gen = ds.iter_segment(STICA(components=3), label="done")
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            rois = stop.value
            break
    assert list(ds.ROIs) == ["done"] and len(ds.ROIs["done"]) == len(rois) == 3


def test_bad_strategy_and_label():
    ds = _blob_dataset()
    with pytest.raises(TypeError, match="SegmentationStrategy"):
        ds.segment("stica")
    with pytest.raises(TypeError, match="label"):
        ds.segment(BrightBlobs(), label=3)


# ------------------------------------------------------------------------------- planes
def test_planes_argument_segments_only_those_planes():
    ds = _blob_dataset()
    rois = ds.segment(BrightBlobs(), planes=[1])
    assert len(rois) == 2
    for roi in rois:
        assert roi.im_shape == (2, 30, 32)
        assert roi.mask[0].nnz == 0 and roi.mask[1].nnz > 0
    pixels = set().union(*(_pixels(r) for r in rois))
    expected = {(1, y, x) for y in range(18, 24) for x in range(20, 25)}
    expected |= {(1, y, x) for y in range(2, 6) for x in range(26, 30)}
    assert pixels == expected
    assert {r.label for r in rois} == {"blob1", "blob2"}  # properties kept

    only0 = ds.segment(BrightBlobs(), planes=0)
    assert [sorted(_pixels(r))[0][0] for r in only0] == [0]
    both = ds.segment(BrightBlobs(), planes=[-1, 0])
    assert len(both) == 3


@pytest.mark.parametrize(
    "planes,err,match",
    [
        ([2], IndexError, r"plane 2 does not exist: the dataset has 2 plane\(s\)"),
        (-3, IndexError, r"plane -3 does not exist.*2 plane\(s\)"),
        ([], ValueError, "empty"),
        ([0, 0], ValueError, "twice"),
        (["a"], TypeError, "integers"),
        (1.0, TypeError, "int"),
    ],
)
def test_bad_planes(planes, err, match):
    ds = _blob_dataset()
    with pytest.raises(err, match=match):
        ds.segment(BrightBlobs(), planes=planes)
    assert ds.ROIs == {}


def test_normalize_planes():
    assert normalize_planes(np.int64(1), 3) == [1]
    assert normalize_planes(range(3), 3) == [0, 1, 2]
    assert normalize_planes([-1], 3) == [2]


def test_single_plane_strategy_needs_one_plane():
    ds = _blob_dataset()
    with pytest.raises(ValueError, match="segments one plane, but the dataset has 2 planes"):
        ds.segment(OnePlaneBlobs())
    assert len(ds.segment(OnePlaneBlobs(), planes=[1])) == 2
    assert len(ds.segment(PlaneWiseSegmentation(OnePlaneBlobs()))) == 3


def test_planewise_with_one_strategy_per_plane():
    ds = _blob_dataset()
    per_plane = PlaneWiseSegmentation([BrightBlobs(threshold=2.0), BrightBlobs()])
    rois = ds.segment(per_plane)  # nothing in plane 0 (threshold above the maximum)
    assert len(rois) == 2 and all(r.mask[1].nnz for r in rois)
    assert len(ds.segment(per_plane, planes=[0])) == 0
    with pytest.raises(ValueError, match="3 plane strategies for a volume of 2 planes"):
        ds.segment(PlaneWiseSegmentation([BrightBlobs()] * 3))
    with pytest.raises(TypeError, match="plane_strategy"):
        PlaneWiseSegmentation("STICA")
    with pytest.raises(TypeError, match=r"plane_strategy\[1\]"):
        PlaneWiseSegmentation([BrightBlobs(), 3])


def test_planewise_steps_run_on_all_planes_together():
    ds = _blob_dataset()
    strategy = PlaneWiseSegmentation(BrightBlobs())
    strategy.append(KeepFirst(1))
    rois = ds.segment(strategy)
    assert len(rois) == 1 and rois[0].mask[0].nnz  # plane 0's blob comes first
    assert len(ds.segment(strategy, planes=[1])) == 1
    params = strategy.parameters()
    assert params["plane_strategy"]["strategy"] == "BrightBlobs"
    assert params["post_processing"] == [{"step": "KeepFirst", "n": 1}]


def test_planewise_stica_on_a_volume():
    movie = make_calcium_movie(
        num_frames=150, frame_shape=(2, 40, 40, 1), num_sequences=1, num_cells=4, seed=2
    )
    ds = ImagingDataset([Sequence.create("ndarray", movie.sequences[0])], None)
    rois = ds.segment(PlaneWiseSegmentation(STICA(mu=0.5, components=2)))
    assert len(rois) == 4
    for plane in (0, 1):
        here = [r for r in rois if r.mask[plane].nnz]
        assert len(here) == 2
        for truth in movie.true_footprints(plane):
            maps = [r.mask[plane].toarray().ravel() for r in here]
            corr = [abs(np.corrcoef(m, truth.ravel())[0, 1]) for m in maps]
            assert max(corr) > 0.9


# --------------------------------------------------------------------- helpers
def test_place_in_plane_masks_and_polygons():
    mask = np.zeros((1, 6, 7))
    mask[0, 1:3, 2:4] = 0.5
    roi = ROI(mask=mask, label="a", id="7", tags={"t"})
    moved = place_in_plane(roi, 2, (3, 6, 7))
    assert moved.im_shape == (3, 6, 7) and (moved.label, moved.id, moved.tags) == ("a", "7", {"t"})
    assert [m.nnz for m in moved.mask] == [0, 0, 4]
    assert moved.mask[2].dtype == np.float64 and moved.mask[2].toarray()[1, 2] == 0.5

    poly = ROI(polygons=[[1, 1, 0], [5, 1, 0], [5, 4, 0], [1, 4, 0]], im_shape=(1, 6, 7))
    moved = place_in_plane(poly, 1, (3, 6, 7))
    assert moved.kind == "polygons" and moved.im_shape == (3, 6, 7)
    assert np.all(moved.polygon_arrays[0][:, 2] == 1)
    assert [m.nnz for m in moved.mask] == [0, 12, 0]

    two = ROI(mask=np.ones((2, 3, 3), bool))
    with pytest.raises(ValueError, match="pixels on plane 1"):
        place_in_plane(two, 0, (3, 3, 3))


def test_plane_dataset_reuses_the_parents_projections(tmp_path):
    ds = _blob_dataset(tmp_path / "p.sima")
    full = ds.time_averages
    again = ImagingDataset.load(tmp_path / "p.sima")  # projections from the cache file
    sub = plane_dataset(again, 1)
    assert sub.frame_shape == (1, 30, 32, 1) and sub.savedir is None
    assert sub._moments is not None  # handed over: no pass over the movie needed
    np.testing.assert_allclose(sub.time_averages, full[1:2])
