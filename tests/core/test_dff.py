"""dF/F with sliding percentile and maximin baselines."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_sima.core import dff
from napari_sima.core.dff import baseline


def _traces(n_rois=4, n=2000, seed=0):
    """Known baseline (slow drift) plus sparse positive transients."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    f0 = np.array([100 + 10 * np.sin(2 * np.pi * t / 8000 + k) for k in range(n_rois)])
    events = np.zeros((n_rois, n))
    for k in range(n_rois):
        for s in rng.choice(n - 50, 8, replace=False):
            events[k, s : s + 40] += 0.8 * np.exp(-np.arange(40) / 10.0)
    return f0 * (1 + events), f0, events


def test_percentile_baseline_recovers_known_baseline():
    f, f0, events = _traces()
    b = baseline(f, "percentile", window=101, percentile=10)
    np.testing.assert_allclose(b, f0, rtol=0.005)
    d = dff(f, window=101, percentile=10)
    np.testing.assert_allclose(d, events, atol=0.01)
    assert d.shape == f.shape and d.dtype == np.float64


def test_maximin_baseline_recovers_known_baseline():
    f, f0, events = _traces()
    d = dff(f, baseline="maximin", window=151, sigma=2)
    np.testing.assert_allclose(d, events, atol=0.02)


def test_formula_and_explicit_baseline():
    f = np.array([[2.0, 3.0, 4.0], [1.0, 1.0, 2.0]])
    np.testing.assert_allclose(dff(f, baseline=2.0), (f - 2) / 2)
    f0 = np.array([[1.0], [2.0]])
    np.testing.assert_allclose(dff(f, baseline=f0), (f - f0) / f0)
    assert np.isnan(dff(f, baseline=0.0)).all()  # F0 = 0 gives NaN, not inf
    with pytest.raises(ValueError, match="does not fit"):
        dff(f, baseline=np.ones(5))


def test_vectorised_equals_per_row_and_matches_scipy():
    f, _, _ = _traces(n_rois=3, n=600)
    whole = dff(f, window=101, percentile=20)
    for k in range(3):
        np.testing.assert_array_equal(dff(f[k], window=101, percentile=20), whole[k])
        ref = ndimage.percentile_filter(f[k], 20, size=101, mode="nearest")
        np.testing.assert_allclose(whole[k], (f[k] - ref) / ref)
    # maximin is Gaussian, then min, then max filter
    ref = ndimage.maximum_filter1d(
        ndimage.minimum_filter1d(
            ndimage.gaussian_filter1d(f, 4, axis=-1, mode="nearest"), 51, axis=-1, mode="nearest"
        ),
        51,
        axis=-1,
        mode="nearest",
    )
    np.testing.assert_allclose(baseline(f, "maximin", window=51, sigma=4), ref)


def test_axis_and_dtype():
    f, _, _ = _traces(n_rois=2, n=300)
    a = dff(f, window=51)
    b = dff(f.T, window=51, axis=0)
    np.testing.assert_array_equal(a, b.T)
    assert dff(f.astype(np.float32), window=51).dtype == np.float32
    assert dff(np.ones((2, 10), dtype=np.uint16) * 5, window=3).dtype == np.float64
    x3 = np.stack([f, f])
    np.testing.assert_array_equal(dff(x3, window=51)[1], a)


def test_nan_safe():
    f, _, events = _traces(n_rois=2, n=1000)
    g = f.copy()
    g[0, 100:130] = np.nan
    g[1, :5] = np.nan
    d = dff(g, window=201, percentile=10)
    assert np.isnan(d[0, 100:130]).all() and np.isnan(d[1, :5]).all()
    assert np.isfinite(d[0, :100]).all() and np.isfinite(d[0, 130:]).all()
    np.testing.assert_allclose(d[0, 200:], dff(f, window=201, percentile=10)[0, 200:], atol=0.01)
    allnan = np.full((1, 50), np.nan)
    assert np.isnan(dff(allnan, window=11)).all()
    assert np.isnan(baseline(allnan, window=11)).all()


def test_window_longer_than_trace():
    f = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(baseline(f, window=1000, percentile=0), [[1.0, 1.0, 1.0, 2.0]])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window": 0}, "at least 1"),
        ({"window": 2.5}, "whole number"),
        ({"window": True}, "whole number"),
        ({"percentile": 101}, "between 0 and 100"),
        ({"percentile": -1}, "between 0 and 100"),
        ({"percentile": np.nan}, "between 0 and 100"),
        ({"baseline": "median"}, "unknown baseline method"),
        ({"baseline": "maximin", "sigma": -1}, "non-negative"),
        ({"axis": 3}, "out of range"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dff(np.ones((2, 20)), **kwargs)


def test_bad_traces():
    with pytest.raises(ValueError, match="numbers"):
        dff(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="no frames"):
        baseline(np.ones((2, 0)))
    with pytest.raises(ValueError, match="time axis"):
        baseline(np.float64(3.0))
