"""Tests of the streaming per-pixel moments (napari_sima.core.projections)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats

from napari_sima.core.projections import (
    BACKENDS,
    MomentAccumulator,
    Moments,
    compute_moments,
)

RTOL = 1e-9


# ----------------------------------------------------------------------------- helpers
def blocks_of(movie: np.ndarray, sizes):
    """Yield consecutive blocks of ``movie`` with the given sizes (cycled)."""
    start = 0
    i = 0
    while start < len(movie):
        size = sizes[i % len(sizes)]
        yield movie[start : start + size]
        start += size
        i += 1


def reference(movie: np.ndarray) -> Moments:
    """Mean, std, kurtosis and count of the loaded float64 movie with numpy/scipy."""
    x = movie.astype(np.float64)
    x[~np.isfinite(x)] = np.nan
    count = np.isfinite(x).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = np.nanmean(x, axis=0)
        std = np.nanstd(x, axis=0, ddof=0)
        kurt = scipy.stats.kurtosis(x, axis=0, fisher=True, bias=True, nan_policy="omit")
    return Moments(mean, std, np.asarray(kurt), count)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, name: str = "") -> None:
    assert actual.shape == expected.shape, name
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=name)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, equal_nan=True, err_msg=name)


def assert_moments_close(res: Moments, ref: Moments, rtol: float = RTOL) -> None:
    assert isinstance(res, Moments)
    for arr in res[:3]:
        assert arr.dtype == np.float64
    assert res.count.dtype == np.int64
    np.testing.assert_array_equal(res.count, ref.count)
    assert_close(res.mean, ref.mean, rtol, "mean")
    assert_close(res.std, ref.std, rtol, "std")
    # The excess kurtosis is ~0 for normal-like data, where a relative comparison is
    # meaningless; compare the (non-excess) kurtosis n*M4/M2**2 >= 1 instead.
    assert_close(res.kurtosis + 3.0, ref.kurtosis + 3.0, rtol, "kurtosis")


def exact_moments(values: np.ndarray) -> tuple[float, float, float]:
    """Exact (rational) mean, population std and excess kurtosis of integer values."""
    vals = [Fraction(int(v)) for v in values]
    n = len(vals)
    mean = sum(vals) / n
    m2 = sum((v - mean) ** 2 for v in vals)
    m4 = sum((v - mean) ** 4 for v in vals)
    return float(mean), float(m2 / n) ** 0.5, float(n * m4 / m2**2 - 3)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


# ------------------------------------------------------------------------- accuracy
def test_float32_with_nans_and_unobserved_pixel(backend):
    rng = np.random.default_rng(1)
    frame_shape = (2, 6, 7, 2)
    movie = (100 + 20 * rng.standard_normal((300, *frame_shape))).astype(np.float32)
    movie[rng.random(movie.shape) < 0.05] = np.nan  # random NaN pixels
    movie[[0, 50, 51, 299]] = np.nan  # whole NaN frames (also the very first one)
    movie[:, 0, 0, 0, 1] = np.nan  # a pixel that is never observed
    movie[::2, 1, 2, 3, 0] = np.nan  # a pixel observed half the time

    res = compute_moments(blocks_of(movie, [64]), frame_shape, backend=backend)
    ref = reference(movie)
    assert_moments_close(res, ref)
    assert res.count[0, 0, 0, 1] == 0
    assert np.isnan(res.mean[0, 0, 0, 1])
    assert np.isnan(res.std[0, 0, 0, 1])
    assert np.isnan(res.kurtosis[0, 0, 0, 1])
    assert res.count[1, 2, 3, 0] == np.isfinite(movie[:, 1, 2, 3, 0]).sum()


def test_infinities_are_ignored_like_nan(backend):
    rng = np.random.default_rng(2)
    movie = rng.standard_normal((120, 5, 4))
    movie[3, 1, 1] = np.inf
    movie[7, 2, 3] = -np.inf
    with_nan = movie.copy()
    with_nan[~np.isfinite(with_nan)] = np.nan

    res = compute_moments(blocks_of(movie, [50]), (5, 4), backend=backend)
    assert_moments_close(res, reference(with_nan))
    assert res.count[1, 1] == 119


def test_uint16_large_offset_long_movie(backend):
    rng = np.random.default_rng(3)
    n_frames, frame_shape = 20_000, (4, 5)
    movie = np.round(60000 + 2.5 * rng.standard_normal((n_frames, *frame_shape)))
    movie = np.clip(movie, 59990, 60010).astype(np.uint16)  # values 60000 +- 5..10

    res = compute_moments(blocks_of(movie, [128]), frame_shape, backend=backend)
    assert_moments_close(res, reference(movie))
    np.testing.assert_array_equal(res.count, n_frames)

    # Against the exact rational moments the error is at the float64 rounding level.
    for idx in [(0, 0), (1, 3), (3, 4)]:
        mean, std, kurt = exact_moments(movie[(slice(None), *idx)])
        assert res.mean[idx] == pytest.approx(mean, rel=1e-15)
        assert res.std[idx] == pytest.approx(std, rel=1e-12)
        assert res.kurtosis[idx] == pytest.approx(kurt, rel=1e-10, abs=1e-11)


def test_drifting_baseline(backend):
    # Bleaching-like drift: the block means move far from the first values.
    rng = np.random.default_rng(15)
    n_frames = 6000
    drift = np.linspace(60000, 20000, n_frames)[:, None, None]
    movie = np.round(drift + 3 * rng.standard_normal((n_frames, 3, 4))).astype(np.uint16)
    res = compute_moments(blocks_of(movie, [128]), (3, 4), backend=backend)
    assert_moments_close(res, reference(movie))


def test_int16_negative_values(backend):
    rng = np.random.default_rng(4)
    movie = rng.integers(-32000, -31000, size=(500, 3, 8, 8), dtype=np.int16)
    movie[:, 0, 0, 0] = rng.integers(-5, 5, size=500)  # mixed sign
    res = compute_moments(blocks_of(movie, [100]), (3, 8, 8), backend=backend)
    assert_moments_close(res, reference(movie))


@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.float16])
def test_other_dtypes(backend, dtype):
    rng = np.random.default_rng(5)
    movie = rng.integers(0, 255, size=(200, 6, 5)).astype(dtype)
    res = compute_moments(blocks_of(movie, [64]), (6, 5), backend=backend)
    assert_moments_close(res, reference(movie))


def test_heavy_tailed_data_kurtosis(backend):
    rng = np.random.default_rng(6)
    movie = rng.standard_t(df=5, size=(3000, 3, 3)) * 10 + 1000
    res = compute_moments(blocks_of(movie, [256]), (3, 3), backend=backend)
    ref = reference(movie)
    assert_moments_close(res, ref)
    assert np.all(res.kurtosis > 0.5)  # a clearly non-zero excess kurtosis
    assert_close(res.kurtosis, ref.kurtosis, RTOL, "excess kurtosis")


# -------------------------------------------------------------- blocking and merging
def test_uneven_blocks_equal_one_block(backend):
    rng = np.random.default_rng(7)
    movie = (30000 + 50 * rng.standard_normal((651, 4, 6))).astype(np.float32)
    movie[rng.random(movie.shape) < 0.02] = np.nan
    one = compute_moments([movie], (4, 6), backend=backend)
    uneven = compute_moments(blocks_of(movie, [1, 7, 100, 1, 3, 300]), (4, 6), backend=backend)
    np.testing.assert_array_equal(uneven.count, one.count)
    for name in ("mean", "std", "kurtosis"):
        assert_close(getattr(uneven, name), getattr(one, name), 1e-12, name)
    assert_moments_close(one, reference(movie))


def test_single_frame_blocks(backend):
    rng = np.random.default_rng(8)
    movie = rng.integers(0, 4096, size=(40, 3, 3), dtype=np.uint16)
    res = compute_moments(blocks_of(movie, [1]), (3, 3), backend=backend)
    assert_moments_close(res, reference(movie))


def test_block_longer_than_subblock(backend):
    rng = np.random.default_rng(9)
    movie = rng.integers(1000, 1100, size=(1000, 7, 3), dtype=np.uint16)
    res = compute_moments([movie], (7, 3), backend=backend)
    assert_moments_close(res, reference(movie))


def test_merge_equals_single_accumulator(backend):
    rng = np.random.default_rng(10)
    movie = (5000 + 30 * rng.standard_normal((400, 5, 5))).astype(np.float32)
    movie[rng.random(movie.shape) < 0.05] = np.nan
    movie[:150, 0, 0] = np.nan  # pixel only observed by the second accumulator
    movie[150:, 0, 1] = np.nan  # pixel only observed by the first accumulator
    movie[:, 0, 2] = np.nan  # never observed

    a = MomentAccumulator((5, 5), backend=backend)
    for block in blocks_of(movie[:150], [64]):
        a.update(block)
    b = MomentAccumulator((5, 5), backend=backend)
    for block in blocks_of(movie[150:], [100]):
        b.update(block)
    b_before = b.result()
    whole = MomentAccumulator((5, 5), backend=backend).update(movie).result()

    assert a.merge(b) is a
    merged = a.result()
    assert a.n_frames == 400
    np.testing.assert_array_equal(merged.count, whole.count)
    for name in ("mean", "std", "kurtosis"):
        assert_close(getattr(merged, name), getattr(whole, name), 1e-12, name)
    assert_moments_close(merged, reference(movie))
    # ``other`` is unchanged
    for x, y in zip(b.result(), b_before, strict=True):
        np.testing.assert_array_equal(x, y)


def test_merge_with_empty_and_copy(backend):
    rng = np.random.default_rng(11)
    movie = rng.integers(0, 100, size=(50, 4), dtype=np.uint8)
    acc = MomentAccumulator((4,), backend=backend).update(movie)
    expected = acc.result()
    acc.merge(MomentAccumulator((4,), backend="numpy"))
    empty = MomentAccumulator((4,), backend=backend).merge(acc)
    for res in (acc.result(), empty.result(), acc.copy().result()):
        for x, y in zip(res, expected, strict=True):
            np.testing.assert_array_equal(x, y)


def test_merge_with_itself_doubles_counts(backend):
    movie = np.arange(60, dtype=np.float64).reshape(20, 3)
    acc = MomentAccumulator((3,), backend=backend).update(movie)
    acc.merge(acc)
    assert_moments_close(acc.result(), reference(np.concatenate([movie, movie])))


def test_merge_errors():
    acc = MomentAccumulator((3, 4))
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        acc.merge(MomentAccumulator((3, 5)))
    with pytest.raises(TypeError):
        acc.merge(np.zeros((3, 4)))


# ------------------------------------------------------------------------ edge cases
@pytest.mark.parametrize(
    "value, dtype", [(1234, np.uint16), (0.1, np.float64), (-7.25, np.float32), (0, np.int16)]
)
def test_constant_pixel(backend, value, dtype):
    rng = np.random.default_rng(12)
    movie = rng.integers(0, 1000, size=(300, 2, 3)).astype(dtype)
    movie[:, 1, 2] = value
    res = compute_moments(blocks_of(movie, [7, 100]), (2, 3), backend=backend)
    assert res.std[1, 2] == 0.0
    assert np.isnan(res.kurtosis[1, 2])
    assert res.mean[1, 2] == pytest.approx(float(np.asarray(value, dtype)), rel=1e-15)
    assert np.all(np.isfinite(res.kurtosis[0]))


def test_single_observation(backend):
    movie = np.full((10, 2), np.nan, np.float32)
    movie[4, 0] = 3.5
    res = compute_moments([movie], (2,), backend=backend)
    np.testing.assert_array_equal(res.count, [1, 0])
    assert res.mean[0] == 3.5 and res.std[0] == 0.0 and np.isnan(res.kurtosis[0])
    assert np.all(np.isnan([res.mean[1], res.std[1], res.kurtosis[1]]))


def test_empty_accumulator_and_empty_block(backend):
    acc = MomentAccumulator((2, 2), backend=backend)
    acc.update(np.zeros((0, 2, 2), np.uint16))
    res = acc.result()
    np.testing.assert_array_equal(res.count, 0)
    assert res.mean.shape == (2, 2)
    assert np.all(np.isnan(res.mean)) and np.all(np.isnan(res.std))
    assert np.all(np.isnan(res.kurtosis))


def test_non_contiguous_and_big_endian_blocks(backend):
    rng = np.random.default_rng(13)
    base = rng.integers(0, 5000, size=(6, 90, 8), dtype=np.uint16)
    movie = base.transpose(1, 2, 0)[:, ::2, :]  # (90, 4, 6), not contiguous
    assert not movie.flags.c_contiguous
    res = compute_moments(blocks_of(movie, [32]), (4, 6), backend=backend)
    assert_moments_close(res, reference(movie))
    swapped = movie.astype(movie.dtype.newbyteorder(">"))
    res_be = compute_moments(blocks_of(swapped, [32]), (4, 6), backend=backend)
    for x, y in zip(res_be, res, strict=True):
        np.testing.assert_array_equal(x, y)


def test_scalar_frames(backend):
    values = np.array([1.0, 2.0, 4.0, np.nan, 8.0])
    res = compute_moments([values[:2], values[2:]], (), backend=backend)
    assert res.mean.shape == ()
    assert res.count == 4
    assert res.mean == pytest.approx(3.75)


# ------------------------------------------------------------------ backend agreement
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.float64])
def test_backends_agree(dtype):
    rng = np.random.default_rng(14)
    movie = (1000 + 100 * rng.standard_normal((700, 3, 17, 19, 2))).astype(dtype)
    if np.dtype(dtype).kind == "f":
        movie[rng.random(movie.shape) < 0.03] = np.nan
        movie[10] = np.nan
    results = [
        compute_moments(blocks_of(movie, [1, 64, 300]), movie.shape[1:], backend=b)
        for b in ("numba", "numpy")
    ]
    np.testing.assert_array_equal(results[0].count, results[1].count)
    for name in ("mean", "std", "kurtosis"):
        assert_close(getattr(results[0], name), getattr(results[1], name), 1e-12, name)


# ------------------------------------------------------------------------ bad input
def test_wrong_block_shape():
    acc = MomentAccumulator((3, 4))
    with pytest.raises(ValueError, match=r"\(10, 3, 5\).*\(n_frames, 3, 4\)"):
        acc.update(np.zeros((10, 3, 5)))
    with pytest.raises(ValueError, match="expected"):
        acc.update(np.zeros((3, 4)))  # a single frame without the frame axis
    blocks = [np.zeros((5, 3, 4)), np.zeros((5, 4, 3))]
    with pytest.raises(ValueError, match=r"got|has shape"):
        compute_moments(blocks, (3, 4), backend="numpy")


def test_unknown_backend():
    with pytest.raises(ValueError, match="'cuda'"):
        MomentAccumulator((3, 4), backend="cuda")
    with pytest.raises(ValueError, match="'torch'"):
        compute_moments([np.zeros((1, 3))], (3,), backend="torch")


def test_bad_dtype():
    with pytest.raises(TypeError, match="complex"):
        MomentAccumulator((2,)).update(np.zeros((3, 2), np.complex128))


# -------------------------------------------------------------------------- misc API
def test_progress_reports_frames_done(backend):
    seen: list[int] = []
    movie = np.ones((25, 2, 2), np.uint16)
    compute_moments(blocks_of(movie, [10]), (2, 2), backend=backend, progress=seen.append)
    assert seen == [10, 20, 25]


def test_accumulator_properties():
    acc = MomentAccumulator([4, 5], backend="numpy")
    assert acc.frame_shape == (4, 5)
    assert acc.backend == "numpy"
    assert acc.n_frames == 0
    assert acc.update(np.zeros((3, 4, 5))) is acc
    assert acc.n_frames == 3
    assert "numpy" in repr(acc)


def test_import_is_light():
    code = (
        "import sys, napari_sima.core.projections\n"
        "bad = {'numba', 'napari', 'qtpy', 'PyQt6', 'magicgui', 'pyqtgraph'}\n"
        "assert not bad & set(sys.modules), bad & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
