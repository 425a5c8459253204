"""Offset PCA: exact branches against the definition, iteration and streamed dataset
versions against the exact one, caching, cancellation, determinism and bad input."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest

from napari_sima.core import ImagingDataset, Sequence
from napari_sima.core.segment.opca import (
    choose_method,
    dataset_opca,
    em_opca,
    iter_dataset_opca,
    offset_pca,
)


def _low_rank_movie(t=160, p=300, rank=4, noise=0.3, seed=0, nan_frames=()):
    """Slow (AR) time courses on random spatial patterns, plus white noise."""
    rng = np.random.default_rng(seed)
    courses = np.zeros((t, rank))
    for i in range(1, t):
        courses[i] = 0.9 * courses[i - 1] + rng.normal(size=rank)
    courses *= np.arange(rank, 0, -1) * 2.0  # distinct variances
    data = courses @ rng.normal(size=(rank, p)) + noise * rng.normal(size=(t, p)) + 50.0
    for f in nan_frames:
        data[f] = np.nan
    return data


def _definition(data, segments=None):
    """Offset covariance built literally from its definition, and its eigenpairs."""
    x = data - np.nanmean(data, axis=0)
    x = np.nan_to_num(x)
    t, p = x.shape
    segments = [t] if segments is None else segments
    ends = np.cumsum(segments)
    c = np.zeros((p, p))
    pairs = 0
    for i in range(t - 1):
        if i + 1 in ends:
            continue
        c += 0.5 * (np.outer(x[i], x[i + 1]) + np.outer(x[i + 1], x[i]))
        pairs += 1
    w, v = np.linalg.eigh(c)
    order = np.argsort(-w)
    return w[order] / pairs, v[:, order], x


def _sine(a, b):
    """Largest sine of the principal angles between the column spaces of a and b."""
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.sqrt(max(0.0, 1.0 - s.min() ** 2)))


def _dataset(data_tp, shape, tmp_path=None, name="d.sima", lengths=None):
    """A dataset whose channel 0 holds data (T, p) reshaped to frames of `shape`."""
    t = data_tp.shape[0]
    lengths = [t] if lengths is None else lengths
    seqs = []
    start = 0
    for n in lengths:
        arr = data_tp[start : start + n].reshape((n,) + shape + (1,))
        seqs.append(Sequence.create("ndarray", arr))
        start += n
    return ImagingDataset(seqs, None if tmp_path is None else tmp_path / name)


# ------------------------------------------------------------------------ exact branches
@pytest.mark.parametrize("t,p", [(40, 12), (12, 40)], ids=["covariance", "gram"])
def test_offset_pca_matches_the_definition(t, p):
    data = _low_rank_movie(t=t, p=p, rank=3, noise=0.5, seed=3)
    w, v, x = _definition(data)
    k = min(t - 1, p)
    res = offset_pca(data)
    assert res.variances.shape[0] == k and res.pcs.shape == (p, k) and res.signals.shape == (t, k)
    # the Gram branch gives the eigenpairs on the data's row space (rank t - 1): the
    # definition's other eigenvalues are the zeros of directions the data never takes
    nonzero = w[np.abs(w) > 1e-9 * abs(w[0])] if t <= p else w[:k]
    np.testing.assert_allclose(res.variances, nonzero, rtol=1e-9, atol=1e-9 * abs(w[0]))
    for j in range(3):  # the well-separated leading vectors, up to sign
        assert abs(abs(res.pcs[:, j] @ v[:, j]) - 1) < 1e-9
    np.testing.assert_allclose(res.signals, x @ res.pcs, atol=1e-8 * np.abs(res.signals).max())
    np.testing.assert_allclose(res.pcs.T @ res.pcs, np.eye(k), atol=1e-8)
    # sign convention: the largest entry of every vector is positive
    idx = np.argmax(np.abs(res.pcs), axis=0)
    assert np.all(res.pcs[idx, np.arange(k)] > 0)


def test_offset_pca_num_pcs_and_nan():
    data = _low_rank_movie(t=30, p=20, nan_frames=[5])
    w, _, _ = _definition(data)
    res = offset_pca(data, num_pcs=4)
    assert res.pcs.shape == (20, 4)
    np.testing.assert_allclose(res.variances, w[:4], rtol=1e-9)
    assert np.all(np.isfinite(res.signals))


def test_offset_pca_segments_leave_out_pairs_across_sequences():
    data = _low_rank_movie(t=30, p=50, seed=2)
    w, _, _ = _definition(data, [12, 18])
    res = offset_pca(data, 5, segments=[12, 18])
    np.testing.assert_allclose(res.variances, w[:5], rtol=1e-9)
    assert not np.allclose(offset_pca(data, 5).variances, res.variances)


def test_offset_pca_of_a_constant_movie_has_no_components():
    res = offset_pca(np.full((10, 30), 7.0), 3)
    assert res.variances.shape == (0,) and res.pcs.shape == (30, 0) and res.signals.shape == (10, 0)


@pytest.mark.parametrize(
    "data,kwargs,err,match",
    [
        (np.ones(5), {}, ValueError, "2-D"),
        (np.ones((1, 5)), {}, ValueError, "at least 2 frames"),
        (np.ones((4, 5)), {"num_pcs": 0}, ValueError, "at least 1"),
        (np.ones((4, 5)), {"num_pcs": 2.5}, TypeError, "integer"),
        (np.array([["a", "b"], ["c", "d"]]), {}, TypeError, "numbers"),
        (np.ones((4, 5)), {"segments": [2, 3]}, ValueError, "summing"),
    ],
)
def test_offset_pca_bad_input(data, kwargs, err, match):
    with pytest.raises(err, match=match):
        offset_pca(data, **kwargs)


# ----------------------------------------------------------------------------- iteration
def test_em_opca_matches_exact_on_the_signal_subspace():
    data = _low_rank_movie(t=150, p=400, rank=4, seed=5)
    exact = offset_pca(data, 4)
    res = em_opca(data, 4, tolerance=1e-12, max_iter=300)
    np.testing.assert_allclose(res.variances, exact.variances, rtol=1e-6)
    assert _sine(res.pcs, exact.pcs) < 1e-4
    for j in range(4):
        assert abs(res.pcs[:, j] @ exact.pcs[:, j]) > 1 - 1e-6


def test_em_opca_is_deterministic_and_warns_when_not_converged():
    data = _low_rank_movie(t=60, p=80, rank=2, noise=2.0, seed=6)
    with pytest.warns(RuntimeWarning, match="did not converge in 3 passes"):
        a = em_opca(data, 6, max_iter=3, tolerance=1e-14, seed=4, oversample=0)
    with pytest.warns(RuntimeWarning, match="did not converge in 3 passes"):
        b = em_opca(data, 6, max_iter=3, tolerance=1e-14, seed=4, oversample=0)
    np.testing.assert_array_equal(a.pcs, b.pcs)
    np.testing.assert_array_equal(a.variances, b.variances)


def test_em_opca_bad_parameters():
    data = _low_rank_movie(t=20, p=10)
    with pytest.raises(ValueError, match="tolerance must be positive"):
        em_opca(data, 2, tolerance=0)
    with pytest.raises(ValueError, match="oversample"):
        em_opca(data, 2, oversample=-1)


# -------------------------------------------------------------------- streamed datasets
@pytest.mark.parametrize("method", ["gram", "covariance", "em"])
def test_dataset_methods_match_exact(method, monkeypatch):
    from napari_sima.core.segment import opca

    monkeypatch.setattr(opca, "BLOCK_BYTES", 7 * 64 * 8)  # 7-frame blocks: many blocks
    monkeypatch.setattr(opca, "PANEL_BYTES", 20 * 64 * 8)  # several Gram panels
    t = 90 if method != "covariance" else 150
    data = _low_rank_movie(t=t, p=64, rank=3, seed=7, nan_frames=[4])
    lengths = [40, t - 40]
    ds = _dataset(data, (1, 8, 8), lengths=lengths)
    exact = offset_pca(data, 3, segments=lengths)
    res = dataset_opca(ds, 0, 3, method=method, dtype=np.float64, tolerance=1e-12, max_iter=500)
    assert res.pcs.shape == (1, 8, 8, 3) and res.signals.shape == (t, 3)
    np.testing.assert_allclose(res.variances, exact.variances, rtol=1e-6)
    pcs = res.pcs.reshape(64, 3)
    assert _sine(pcs, exact.pcs) < 1e-4
    np.testing.assert_allclose(pcs, exact.pcs, atol=1e-4)  # same signs too
    np.testing.assert_allclose(res.signals, exact.signals, atol=1e-4 * np.abs(exact.signals).max())


@pytest.mark.parametrize("method", ["gram", "covariance", "em"])
def test_dataset_float32_is_close_to_exact(method):
    data = _low_rank_movie(t=150, p=120, rank=3, seed=8)
    ds = _dataset(data, (2, 6, 10))
    exact = offset_pca(data, 3)
    res = dataset_opca(ds, 0, 3, method=method, tolerance=1e-7, max_iter=500)  # float32
    np.testing.assert_allclose(res.variances, exact.variances, rtol=1e-5)
    assert _sine(res.pcs.reshape(120, 3), exact.pcs) < 1e-5


def test_choose_method():
    assert choose_method(2000, 512 * 512, 75) == "gram"
    assert choose_method(20000, 512 * 512, 75) == "em"
    assert choose_method(5000, 32 * 32, 75) == "covariance"


def test_dataset_opca_clamps_to_frames_and_reads_a_channel_by_name():
    rng = np.random.default_rng(0)
    movie = rng.normal(size=(6, 1, 5, 5, 2)) + 10
    ds = ImagingDataset([Sequence.create("ndarray", movie)], None, channel_names=["red", "green"])
    res = dataset_opca(ds, "green", 75)
    assert res.variances.shape == (5,)  # frames - 1
    exact = offset_pca(movie[..., 1].reshape(6, -1), 5)
    np.testing.assert_allclose(res.variances, exact.variances, rtol=1e-4)


def test_dataset_opca_constant_movie_and_bad_input():
    ds = ImagingDataset([Sequence.create("ndarray", np.full((10, 1, 6, 6, 1), 3.0))], None)
    for method in ("gram", "covariance", "em"):
        res = dataset_opca(ds, 0, 4, method=method)
        assert res.variances.shape == (0,) and res.pcs.shape == (1, 6, 6, 0)
    one = ImagingDataset([Sequence.create("ndarray", np.ones((1, 1, 4, 4, 1)))], None)
    with pytest.raises(ValueError, match="at least two consecutive frames"):
        dataset_opca(one, 0, 2)
    with pytest.raises(ValueError, match="method must be one of"):
        dataset_opca(ds, 0, 2, method="svd")
    with pytest.raises(ValueError, match="float32 or float64"):
        dataset_opca(ds, 0, 2, dtype=np.int16)
    with pytest.raises((ValueError, IndexError, KeyError), match="channel"):
        dataset_opca(ds, 3, 2)


# ---------------------------------------------------------------------------- caching
def test_cache_is_written_reused_and_invalidated(tmp_path):
    data = _low_rank_movie(t=60, p=100, rank=3, seed=9)
    ds = _dataset(data, (1, 10, 10), tmp_path)
    cache = tmp_path / "d.sima" / "opca_0.npz"
    first = dataset_opca(ds, 0, 6)
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    meta = json.loads(str(np.load(cache)["meta"]))
    assert meta["requested"] == 6 and meta["method"] == "gram"

    # fewer components: served from the cache (file untouched), truncated
    again = ImagingDataset.load(tmp_path / "d.sima")
    fewer = dataset_opca(again, 0, 4)
    assert cache.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(fewer.pcs, first.pcs[..., :4])
    np.testing.assert_array_equal(fewer.variances, first.variances[:4])

    # more components: recomputed and rewritten
    more = dataset_opca(again, 0, 8)
    assert more.variances.shape == (8,)
    assert json.loads(str(np.load(cache)["meta"]))["requested"] == 8
    np.testing.assert_allclose(more.variances[:6], first.variances, rtol=1e-6)

    # cache=False neither reads nor writes; a broken file is recomputed
    cache.write_bytes(b"not an npz")
    res = dataset_opca(again, 0, 4, cache=False)
    assert cache.read_bytes() == b"not an npz"
    res2 = dataset_opca(again, 0, 4)
    np.testing.assert_allclose(res2.variances, res.variances)
    assert cache.read_bytes() != b"not an npz"


def test_cache_detects_another_movie(tmp_path):
    data = _low_rank_movie(t=50, p=100, rank=3, seed=10)
    ds = _dataset(data, (1, 10, 10), tmp_path)
    dataset_opca(ds, 0, 3)
    path = tmp_path / "d.sima" / "opca_0.npz"
    other = _dataset(data[::-1].copy(), (1, 10, 10), tmp_path, name="e.sima")
    # a cache file of another movie given explicitly is not used
    res = dataset_opca(other, 0, 3, path=path)
    exact = offset_pca(data[::-1], 3)
    np.testing.assert_allclose(res.variances, exact.variances, rtol=1e-4)


def test_read_only_dataset_is_not_written(tmp_path, examples):
    # a legacy SIMA folder opens read-only; use a copy so nothing can touch the original
    shutil.copytree(examples / "example.sima", tmp_path / "example.sima")
    shutil.copy(examples / "example.tif", tmp_path / "example.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SIMA's extra displacements
        ds = ImagingDataset.load(tmp_path / "example.sima")
    assert ds.read_only
    before = sorted(os.listdir(tmp_path / "example.sima"))
    res = dataset_opca(ds, 0, 3)
    assert res.pcs.shape == (1, 125, 247, 3) and res.signals.shape == (20, 3)
    assert sorted(os.listdir(tmp_path / "example.sima")) == before


def test_cancel_stores_nothing_and_progress_is_monotonic(tmp_path):
    data = _low_rank_movie(t=60, p=100, rank=3, seed=12)
    ds = _dataset(data, (1, 10, 10), tmp_path)
    gen = iter_dataset_opca(ds, 0, 3, method="em")
    fractions = [next(gen).fraction for _ in range(3)]
    gen.close()
    assert not (tmp_path / "d.sima" / "opca_0.npz").exists()
    assert fractions == sorted(fractions)

    seen = []
    gen = iter_dataset_opca(ds, 0, 3, method="em", tolerance=1e-8)
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert result.variances.shape == (3,)
    values = [s.fraction for s in seen]
    assert values == sorted(values) and values[-1] == 1.0 and values[0] >= 0
    assert all(isinstance(s.message, str) and s.message for s in seen)


def test_dataset_opca_is_deterministic():
    data = _low_rank_movie(t=50, p=100, rank=3, seed=13)
    ds = _dataset(data, (1, 10, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a = dataset_opca(ds, 0, 8, method="em", max_iter=4, seed=1)
        b = dataset_opca(ds, 0, 8, method="em", max_iter=4, seed=1)
    np.testing.assert_array_equal(a.pcs, b.pcs)
    np.testing.assert_array_equal(a.signals, b.signals)
