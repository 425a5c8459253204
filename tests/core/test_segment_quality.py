"""Acceptance: the default segmentation finds the sample dataset's cells (F1 >= 0.8).

The sample dataset (2 sequences x 200 frames, 128 x 128, 12 cells) is segmented with
:func:`default_strategy` and scored against the true cell masks (footprint > 0.5) with
Hungarian matching at IoU >= 0.5.  ``benchmarks/bench_segment_quality.py`` measures the
other strategies and conditions.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sima._sample_data import sample_dataset, sample_movie, sample_true_rois
from napari_sima.core import ROIList
from napari_sima.core.segment.base import SegmentationStrategy
from napari_sima.core.segment.defaults import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    default_strategy,
    make_strategy,
)
from napari_sima.core.segment.evaluate import match_rois


@pytest.fixture(scope="module")
def sample():
    movie = sample_movie()
    return movie, sample_dataset(movie)


@pytest.fixture(scope="module")
def default_result(sample):
    movie, dataset = sample
    strategy = default_strategy(channel="GCaMP")
    reports = []
    rois = strategy.segment(dataset, progress=lambda f, m: reports.append((f, m)))
    return rois, reports


def test_default_strategy_reaches_f1_08_on_the_sample(sample, default_result):
    movie, _ = sample
    rois, _ = default_result
    result = match_rois(rois, sample_true_rois(movie), iou_threshold=0.5)
    assert result.f1 >= 0.8, result
    assert result.median_iou >= 0.6, result


def test_default_rois_are_boolean_cell_sized_and_in_the_frame(default_result):
    rois, reports = default_result
    assert isinstance(rois, ROIList) and len(rois) > 0
    for roi in rois:
        assert roi.im_shape == (1, 128, 128)
        planes = roi.mask
        assert all(np.all(p.data == 1) for p in planes if p.nnz)
        assert 20 <= roi.size <= 1000
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_default_is_repeatable(sample, default_result):
    _, dataset = sample
    rois, _ = default_result
    again = default_strategy(channel=0).segment(dataset)
    assert len(again) == len(rois)
    for a, b in zip(rois, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_registry_builds_every_preset_without_running_it():
    assert DEFAULT_STRATEGY in STRATEGIES
    for name, factory in STRATEGIES.items():
        strategy = factory(channel=1, seed=3)
        assert isinstance(strategy, SegmentationStrategy), name
        params = strategy.parameters()
        assert params["strategy"] in {"STICA", "PlaneNormalizedCuts", "PlaneCA1PC"}
        # every call builds a new, independent strategy
        assert factory() is not factory()
    assert default_strategy().parameters() == STRATEGIES[DEFAULT_STRATEGY]().parameters()


def test_make_strategy_wraps_multi_plane_and_rejects_bad_input():
    wrapped = make_strategy("normcuts", num_planes=3)
    assert wrapped.parameters()["strategy"] == "PlaneWiseSegmentation"
    assert default_strategy(num_planes=2).parameters()["strategy"] == "PlaneWiseSegmentation"
    with pytest.raises(KeyError, match="unknown segmentation preset 'nope'.*stica"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="num_planes"):
        default_strategy(num_planes=0)
    with pytest.raises(ValueError, match="seed"):
        default_strategy(seed=-1)
    with pytest.raises(TypeError, match="channel"):
        default_strategy(channel=1.5)
