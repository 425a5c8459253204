"""Offset principal components: directions of largest lag-1 covariance in a movie.

Offset PCA (SIMA's ``oPCA``) looks for spatial patterns whose activity is correlated
from one frame to the next.  With the frames ``x_t`` (flattened, minus their time
average) it diagonalises the symmetric *offset covariance*::

    C = 1/2 * sum over consecutive pairs (t, t+1) of (x_t x_{t+1}^T + x_{t+1} x_t^T)

Noise that is independent from frame to frame averages out of ``C``, while slow
calcium transients do not, so the leading offset components are dominated by cells.
The *variance* of a component is its eigenvalue divided by the number of pairs
(``T - 1`` for one sequence).

Three ways of computing the same components are provided:

:func:`offset_pca`
    Exact, for an in-memory ``(T, p)`` array: the ``p x p`` offset covariance when
    ``T > p``, else the ``T x T`` Gram matrix of the frames (solved as a symmetric
    problem, so eigenvalues are real by construction).
:func:`em_opca`
    SIMA's "EM" iteration, i.e. block power (subspace) iteration on ``C`` applied by
    streaming the frames, with oversampling and a Rayleigh-Ritz step every pass.
:func:`dataset_opca` / :func:`iter_dataset_opca`
    The components of an :class:`~napari_sima.core.ImagingDataset` channel, streamed
    in blocks from the movie files (memory stays bounded), by the exact Gram or
    covariance method when that is cheaper than iterating, by the iteration
    otherwise; cached in the dataset folder as ``opca_<channel>.npz``.

Conventions shared by all three: components are sorted by decreasing (algebraic)
variance; each spatial vector has unit length and its entry of largest magnitude is
positive (so results are repeatable); ``signals = frames @ vectors``.

Departures from SIMA (section 7.3 of the behaviour notes)
--------------------------------------------------------
* Consecutive-frame pairs that straddle two sequences are left out of ``C`` (SIMA
  included them; two trials' last and first frames are not neighbours in time).
  Variances are divided by the number of pairs actually used.
* The Gram branch is solved as a symmetric eigenproblem (``eigh``) instead of a
  general one (``eig`` of a shifted Gram matrix, whose rounding can give complex
  pairs); the result is the same in exact arithmetic.
* The iteration compares the sorted eigenvalues of consecutive passes (SIMA compared
  an unsorted vector with a sorted one), takes ``oversample`` extra vectors so that
  the wanted ones converge faster, and orders components by algebraic value rather
  than by magnitude.  Random initial vectors come from ``seed``.
* Too few frames or pixels for the requested number of components, or data of lower
  rank, give fewer components instead of noise (SIMA: ``min(num_pcs, T - 1, p)``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Generator, Iterator
from collections.abc import Sequence as _PySequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from scipy import linalg

from .. import storage
from .base import SegmentProgress

if TYPE_CHECKING:
    from ..dataset import ImagingDataset

__all__ = [
    "OffsetPCs",
    "dataset_opca",
    "em_opca",
    "iter_dataset_opca",
    "offset_pca",
]

#: Version of the cache file layout (``opca_<channel>.npz``).
CACHE_VERSION = 1
#: Bytes of movie (in the compute dtype) per streamed block.  Thin blocks make the
#: products with ``p x k`` matrices memory-bound: 32-frame blocks of 512 x 512 made a
#: pass of the iteration ten times slower than 128-frame ones.
BLOCK_BYTES = 128 * 2**20
#: Bytes of movie held in memory as one panel of the blocked Gram computation.
PANEL_BYTES = 256 * 2**20
#: Largest Gram or covariance matrix (side) the exact dataset methods build.
EXACT_MAX_SIDE = 6000
#: Passes the iteration is assumed to need when choosing a method ('auto').
EXPECTED_PASSES = 12
#: Extra vectors iterated along with the wanted ones.
DEFAULT_OVERSAMPLE = 10

_METHODS = ("auto", "gram", "covariance", "em")


class OffsetPCs(NamedTuple):
    """Offset principal components, sorted by decreasing variance.

    Attributes
    ----------
    variances : numpy.ndarray
        ``(k,)`` offset variances (eigenvalues of the offset covariance divided by
        the number of frame pairs); may be negative for anti-correlated patterns.
    pcs : numpy.ndarray
        Unit-length spatial vectors, ``(p, k)`` for array input or ``(z, y, x, k)``
        for a dataset.
    signals : numpy.ndarray
        ``(T, k)`` time courses: the mean-subtracted frames projected on ``pcs``.
    """

    variances: np.ndarray
    pcs: np.ndarray
    signals: np.ndarray


# =======================================================================================
# Frame sources: blocks of mean-subtracted, flattened frames
# =======================================================================================
class _Source:
    """Consecutive blocks of mean-subtracted frames with NaN set to 0 (internal).

    Blocks never straddle two sequences (``lengths``); ``dtype`` is the dtype of the
    blocks (products with them are computed and accumulated in it).
    """

    num_frames: int
    num_pixels: int
    lengths: list[int]
    dtype: np.dtype

    def starts(self) -> list[int]:
        return [int(v) for v in np.cumsum([0] + list(self.lengths))[:-1]]

    def block_frames(self) -> int:
        return max(1, BLOCK_BYTES // max(1, self.num_pixels * self.dtype.itemsize))

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t0, block)`` over frames ``start:stop``, cut at sequence ends."""
        stop = self.num_frames if stop is None else stop
        step = self.block_frames()
        for seq_start, length in zip(self.starts(), self.lengths, strict=True):
            a = max(start, seq_start)
            b = min(stop, seq_start + length)
            for t0 in range(a, b, step):
                yield t0, self.read(t0, min(b, t0 + step))


class _ArraySource(_Source):
    def __init__(self, data: np.ndarray, lengths: list[int]) -> None:
        self.data = data
        self.num_frames, self.num_pixels = data.shape
        self.lengths = lengths
        self.dtype = data.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.data[start:stop]


class _DatasetSource(_Source):
    def __init__(
        self, dataset: ImagingDataset, channel: int, mean: np.ndarray, dtype: np.dtype
    ) -> None:
        self.sequences = list(dataset.sequences)
        self.lengths = [len(s) for s in self.sequences]
        self.num_frames = int(sum(self.lengths))
        self.num_pixels = int(mean.size)
        self.dtype = np.dtype(dtype)
        self.channel = channel
        # a pixel never observed has a NaN mean: its values become 0 like NaN frames
        self.mean = np.nan_to_num(mean.reshape(-1), nan=0.0).astype(self.dtype)
        z, y, x, _ = self.sequences[0].frame_shape
        self.region = (range(z), range(y), range(x), range(channel, channel + 1))
        self._seq_starts = self.starts()

    def read(self, start: int, stop: int) -> np.ndarray:
        k = int(np.searchsorted(self._seq_starts, start, side="right")) - 1
        s0 = self._seq_starts[k]
        if stop > s0 + self.lengths[k]:
            raise AssertionError("a block may not straddle two sequences")
        raw = self.sequences[k]._read(range(start - s0, stop - s0), self.region)
        block = np.asarray(raw).reshape(stop - start, self.num_pixels).astype(self.dtype)
        block -= self.mean
        if not np.isfinite(block.sum(dtype=np.float64)):  # cheap test, no mask array
            _zero_non_finite(block)
        return block


def _zero_non_finite(block: np.ndarray) -> None:
    bad = ~np.isfinite(block)
    if bad.any():
        block[bad] = 0


def _as_data(data: Any, what: str = "data") -> np.ndarray:
    """Validate a ``(T, p)`` array; return it de-meaned (nan-mean), NaN set to 0."""
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be a (frames, pixels) array: {err}") from None
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (frames, pixels) array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must hold numbers, got dtype {arr.dtype}")
    if arr.shape[0] < 2:
        raise ValueError(
            f"{what} needs at least 2 frames for an offset covariance, got {arr.shape[0]}"
        )
    if arr.shape[1] < 1:
        raise ValueError(f"{what} has no pixels (shape {arr.shape})")
    out = arr.astype(np.float64, copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = np.nanmean(out, axis=0)
    out -= mean
    _zero_non_finite(out)
    return out


def _check_segments(segments: Any, num_frames: int) -> list[int]:
    if segments is None:
        return [num_frames]
    try:
        lengths = [int(v) for v in segments]
    except (TypeError, ValueError):
        raise TypeError(f"segments must be a list of sequence lengths, got {segments!r}") from None
    if any(v < 1 for v in lengths) or sum(lengths) != num_frames:
        raise ValueError(
            f"segments {lengths} must be positive lengths summing to the {num_frames} frames"
        )
    return lengths


def _check_num_pcs(num_pcs: Any, name: str = "num_pcs") -> int:
    if isinstance(num_pcs, bool) or not isinstance(num_pcs, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {num_pcs!r}")
    if num_pcs < 1:
        raise ValueError(f"{name} must be at least 1, got {num_pcs}")
    return int(num_pcs)


# =======================================================================================
# Small linear-algebra helpers
# =======================================================================================
#: Dense eigenproblems up to this size run on one BLAS thread: LAPACK gains nothing
#: from threads there, and on a busy machine their spinning made a 300 x 300 ``eigh``
#: 25 times slower (2.8 s instead of 0.1 s).
SINGLE_THREAD_EIGH_MAX = 1000


def _eigh(a: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.linalg.eigh``, on one BLAS thread for small matrices."""
    if a.shape[0] > SINGLE_THREAD_EIGH_MAX:
        return linalg.eigh(a, **kwargs)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return linalg.eigh(a, **kwargs)


def _offset_apply(y: np.ndarray, lengths: list[int]) -> np.ndarray:
    """Return ``M @ y`` for the pair-averaging matrix ``M`` of consecutive frames."""
    out = np.zeros_like(y)
    out[1:] += y[:-1]
    out[:-1] += y[1:]
    for b in np.cumsum(lengths)[:-1]:  # no pairs across sequences
        out[b] -= y[b - 1]
        out[b - 1] -= y[b]
    out *= 0.5
    return out


def _num_pairs(lengths: list[int]) -> int:
    return int(sum(lengths) - len(lengths))


def _fix_signs(pcs: np.ndarray, signals: np.ndarray) -> None:
    """Make each vector's largest-magnitude entry positive (in place)."""
    for j in range(pcs.shape[1]):  # column by column: no temporary of the pcs' size
        column = pcs[:, j]
        if column[np.argmax(np.abs(column))] < 0:
            column *= -1
            signals[:, j] *= -1


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Return the indices of the ``k`` largest values, largest first (stable for ties)."""
    order = np.argsort(-values, kind="stable")
    return order[:k]


def _gram_solution(
    gram: np.ndarray, k: int, lengths: list[int], rel_tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve the offset eigenproblem from the frames' Gram matrix ``K = X X^T``.

    With ``X = Q S R^T`` (``K = Q S^2 Q^T``) the offset covariance is
    ``C = R (S Q^T M Q S) R^T``; the eigenvectors of the small symmetric matrix give
    the components.

    Returns
    -------
    theta : (k,) eigenvalues of ``C``, decreasing.
    coef : (T, k) time weights; the spatial vectors are ``X^T @ coef`` (unit length).
    signals : (T, k) ``X @ vectors``.
    """
    lam, q = _eigh(gram)
    top = float(lam.max()) if lam.size else 0.0
    keep = lam > max(top * rel_tol, np.finfo(np.float64).tiny)
    if top <= 0 or not keep.any():
        empty = np.zeros((gram.shape[0], 0))
        return np.zeros(0), empty, empty.copy()
    q = q[:, keep]
    s = np.sqrt(lam[keep])
    small = (q.T @ _offset_apply(q, lengths)) * s[:, None] * s[None, :]
    r = small.shape[0]
    k = min(k, r)
    theta, w = _eigh(0.5 * (small + small.T), subset_by_index=[r - k, r - 1])
    pick = _top(theta, k)
    theta, w = theta[pick], w[:, pick]
    coef = q @ (w / s[:, None])
    signals = q @ (w * s[:, None])
    return theta, coef, signals


# =======================================================================================
# Exact offset PCA of an array
# =======================================================================================
def offset_pca(
    data: Any, num_pcs: int | None = None, segments: _PySequence[int] | None = None
) -> OffsetPCs:
    """Exact offset principal components of a ``(frames, pixels)`` array.

    Parameters
    ----------
    data : array-like, shape (T, p)
        One frame per row.  Each pixel's (nan-)mean over time is subtracted, then
        NaN values are set to 0.
    num_pcs : int, optional
        Number of components (default: all there are).
    segments : list of int, optional
        Lengths of independent sequences concatenated in ``data`` (default: one);
        pairs of frames across two sequences are not used.

    Returns
    -------
    OffsetPCs
        ``variances (k,)``, ``pcs (p, k)``, ``signals (T, k)``, sorted by decreasing
        variance; ``k = min(num_pcs, p)`` when ``T > p``, else at most the rank of
        the mean-subtracted data (at most ``T - 1``).

    Raises
    ------
    ValueError
        If ``data`` is not 2-D, has fewer than 2 frames, or ``num_pcs < 1``.
    TypeError
        If ``data`` does not hold numbers or ``num_pcs`` is not an integer.

    Notes
    -----
    ``T > p``: eigendecomposition of the ``p x p`` offset covariance.  ``T <= p``:
    the ``T x T`` Gram matrix ``K = X X^T = Q S^2 Q^T`` gives ``C = R B R^T`` with the
    symmetric ``B = S Q^T M Q S`` (``M`` averages neighbouring frames), whose
    eigenvectors ``W`` give the spatial vectors ``X^T Q S^-1 W`` and the signals
    ``Q S W``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> slow = np.cumsum(rng.normal(size=(200, 1)), axis=0)
    >>> data = slow @ rng.normal(size=(1, 30)) + rng.normal(size=(200, 30))
    >>> variances, pcs, signals = offset_pca(data, num_pcs=3)
    >>> pcs.shape, signals.shape, bool(variances[0] > 10 * abs(variances[1]))
    ((30, 3), (200, 3), True)
    """
    x = _as_data(data)
    t, p = x.shape
    lengths = _check_segments(segments, t)
    k = p if num_pcs is None else min(_check_num_pcs(num_pcs), p)
    pairs = _num_pairs(lengths)
    if pairs < 1:
        raise ValueError(f"data needs at least one pair of consecutive frames, segments {lengths}")
    if t > p:
        cross = x[:-1].T @ x[1:]
        for b in np.cumsum(lengths)[:-1]:
            cross -= np.outer(x[b - 1], x[b])
        cov = 0.5 * (cross + cross.T)
        theta, vectors = _eigh(cov, subset_by_index=[p - k, p - 1])
        order = np.argsort(-theta, kind="stable")
        theta, vectors = theta[order], vectors[:, order]
        signals = x @ vectors
    else:
        theta, coef, signals = _gram_solution(x @ x.T, k, lengths, 1e-12)
        vectors = x.T @ coef
        norms = np.linalg.norm(vectors, axis=0)
        norms[norms == 0] = 1.0
        vectors /= norms
        signals = signals / norms
    _fix_signs(vectors, signals)
    return OffsetPCs(theta / pairs, vectors, signals)


# =======================================================================================
# Iterative ("EM") offset PCA
# =======================================================================================
def _initial_vectors(source: _Source, width: int, seed: int) -> np.ndarray:
    """Return a starting subspace: offset PCs of the first frames, plus random vectors.

    The first ``2 * width`` frames (at most ``PANEL_BYTES`` of them) are solved exactly
    through their Gram matrix, in the source's dtype.
    """
    frame_bytes = source.num_pixels * source.dtype.itemsize
    m = min(source.num_frames, max(2 * width, 2), max(2, PANEL_BYTES // max(1, frame_bytes)))
    first = np.empty((m, source.num_pixels), dtype=source.dtype)
    for t0, block in source.blocks(0, m):
        first[t0 : t0 + block.shape[0]] = block
    first -= first.mean(axis=0)
    seg = _first_lengths(source.lengths, m)
    parts = []
    if _num_pairs(seg) >= 1:
        gram = (first @ first.T).astype(np.float64)
        _, coef, _ = _gram_solution(gram, width, seg, 1e-12)
        if coef.shape[1]:
            parts.append(first.T @ coef.astype(source.dtype))
    del first
    have = sum(v.shape[1] for v in parts)
    if have < width:
        rng = np.random.default_rng(seed)
        parts.append(rng.standard_normal((source.num_pixels, width - have)))
    start = np.empty((source.num_pixels, width), order="F")  # QR in place, no copies
    col = 0
    for part in parts:
        start[:, col : col + part.shape[1]] = part
        col += part.shape[1]
    del parts
    return _orthonormal(start)


def _orthonormal(a: np.ndarray) -> np.ndarray:
    """Return an orthonormal basis of the columns of ``a`` (overwritten if F-ordered)."""
    return linalg.qr(a, mode="economic", overwrite_a=True, check_finite=False)[0]


def _first_lengths(lengths: list[int], m: int) -> list[int]:
    out = []
    for n in lengths:
        if m <= 0:
            break
        out.append(min(n, m))
        m -= n
    return out


def _offset_pass(
    source: _Source, basis: np.ndarray
) -> Generator[float, None, tuple[np.ndarray, np.ndarray, bool]]:
    """One pass over the frames: ``Y = X U`` and ``Z = C U`` (times the pair count).

    Yields the fraction of frames done; returns ``(Z (p, w), Y (T, w), nonzero)``.
    ``Z`` is accumulated in place by BLAS in the source's dtype (no ``p x w``
    temporaries per block), the pair between two blocks of one sequence by two rank-1
    updates.
    """
    from scipy.linalg import blas

    p, w = basis.shape
    u = basis.astype(source.dtype)
    z = np.zeros((p, w), dtype=source.dtype, order="F")
    gemm, ger = blas.get_blas_funcs(("gemm", "ger"), (z,))
    y = np.zeros((source.num_frames, w))
    nonzero = False
    seq_ends = set(np.cumsum(source.lengths).tolist())
    carry: tuple[int, np.ndarray, np.ndarray] | None = None
    for t0, block in source.blocks():
        n = block.shape[0]
        yb = block @ u
        y[t0 : t0 + n] = yb
        nonzero = nonzero or bool(block.any())
        end = t0 + n
        wb = np.zeros_like(yb)
        wb[1:] += yb[:-1]
        wb[:-1] += yb[1:]
        wb *= 0.5
        z = gemm(1.0, block.T, wb, beta=1.0, c=z, overwrite_c=1)
        if carry is not None and carry[0] == t0:  # the pair (t0 - 1, t0)
            z = ger(0.5, carry[1], yb[0], a=z, overwrite_a=1)
            z = ger(0.5, block[0], carry[2], a=z, overwrite_a=1)
        carry = None if end in seq_ends else (end, block[-1].copy(), yb[-1].copy())
        del block, yb, wb
        yield end / source.num_frames
    return z.astype(np.float64), y, nonzero


def _iter_em(
    source: _Source,
    num_pcs: int,
    tolerance: float,
    max_iter: int,
    oversample: int,
    seed: int,
) -> Generator[SegmentProgress, None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Subspace iteration on the offset covariance; returns ``(theta, vectors, signals)``."""
    t, p = source.num_frames, source.num_pixels
    k = min(num_pcs, p, t - 1)
    width = min(p, t, k + max(0, oversample))
    yield SegmentProgress(0.0, "offset PCA: initial vectors")
    basis = _initial_vectors(source, width, seed)
    previous: np.ndarray | None = None
    expected = min(max_iter, EXPECTED_PASSES)
    errors: list[float] = []
    fraction = 0.0
    for iteration in range(1, max_iter + 1):
        gen = _offset_pass(source, basis)
        try:
            while True:
                done = next(gen)
                estimate = (iteration - 1 + done) / max(expected, iteration)
                fraction = max(fraction, min(0.99, estimate))
                yield SegmentProgress(fraction, f"offset PCA: pass {iteration}")
        except StopIteration as stop:
            z, y, nonzero = stop.value
        finally:
            gen.close()
        if not nonzero:  # every frame equals the time average: nothing to find
            return np.zeros(0), np.zeros((p, 0)), np.zeros((t, 0))
        h = basis.T @ z
        theta, v = _eigh(0.5 * (h + h.T))
        order = np.argsort(-theta, kind="stable")
        theta, v = theta[order], v[:, order]
        current = theta[:k]
        converged = False
        if previous is not None:
            scale = float(np.abs(current).sum())
            error = float(np.abs(current - previous).sum()) / scale if scale > 0 else 0.0
            errors.append(error)
            converged = error < tolerance
            expected = _expected_passes(errors, tolerance, iteration, max_iter)
        if converged or iteration == max_iter:
            if not converged:
                warnings.warn(
                    f"offset PCA did not converge in {max_iter} passes (relative eigenvalue "
                    f"change {errors[-1] if errors else float('nan'):.3g} > tolerance "
                    f"{tolerance:g}); the result is approximate",
                    RuntimeWarning,
                    stacklevel=3,
                )
            vectors = basis @ v[:, :k]
            signals = y @ v[:, :k]
            return theta[:k], vectors, signals
        previous = current
        # F-ordered product, orthonormalised in place; rebinding frees the old basis
        basis = linalg.blas.get_blas_funcs("gemm", (z,))(1.0, z, v)
        del z, y
        basis = _orthonormal(basis)
    raise AssertionError("unreachable")


def _expected_passes(errors: list[float], tolerance: float, done: int, max_iter: int) -> int:
    if len(errors) >= 2 and 0 < errors[-1] < errors[-2]:
        rate = errors[-1] / errors[-2]
        more = math.log(tolerance / errors[-1]) / math.log(rate)
        return int(min(max_iter, max(done + 1, done + math.ceil(more))))
    return int(min(max_iter, max(done + 1, EXPECTED_PASSES)))


def _finish(
    theta: np.ndarray, vectors: np.ndarray, signals: np.ndarray, pairs: int
) -> OffsetPCs:
    vectors = np.ascontiguousarray(vectors, dtype=np.float64)
    signals = np.ascontiguousarray(signals, dtype=np.float64)
    _fix_signs(vectors, signals)
    return OffsetPCs(np.asarray(theta, dtype=np.float64) / pairs, vectors, signals)


def em_opca(
    data: Any,
    num_pcs: int,
    tolerance: float = 1e-6,
    max_iter: int = 200,
    oversample: int = DEFAULT_OVERSAMPLE,
    seed: int = 0,
    segments: _PySequence[int] | None = None,
) -> OffsetPCs:
    """Offset principal components of an array by subspace ("EM") iteration.

    The iteration SIMA calls EM: ``U <- orth(C U)`` with a Rayleigh-Ritz step each
    pass; it needs only products of the frames with ``num_pcs + oversample``
    vectors, so it is the method for movies too long for the exact Gram matrix.

    Parameters
    ----------
    data : array-like, shape (T, p)
        One frame per row (de-meaned over time, NaN set to 0, as in
        :func:`offset_pca`).
    num_pcs : int
        Components wanted (at most ``min(T - 1, p)`` are returned).
    tolerance : float
        Stop when the top ``num_pcs`` eigenvalues change by less than this, relative
        to the sum of their magnitudes, from one pass to the next.
    max_iter : int
        Maximum number of passes (a ``RuntimeWarning`` says when it is reached).
    oversample : int
        Extra vectors iterated along (faster, more reliable convergence).
    seed : int
        Seed of the random part of the starting subspace.
    segments : list of int, optional
        Lengths of the sequences concatenated in ``data`` (pairs across them are
        not used).

    Returns
    -------
    OffsetPCs
        ``variances (k,)``, ``pcs (p, k)``, ``signals (T, k)``.

    Raises
    ------
    ValueError
        For a bad array or parameters.
    """
    x = _as_data(data)
    lengths = _check_segments(segments, x.shape[0])
    num_pcs = _check_num_pcs(num_pcs)
    tolerance, max_iter, oversample = _check_iteration(tolerance, max_iter, oversample)
    if _num_pairs(lengths) < 1:
        raise ValueError(f"data needs at least one pair of consecutive frames, segments {lengths}")
    source = _ArraySource(x, lengths)
    gen = _iter_em(source, num_pcs, tolerance, max_iter, oversample, int(seed))
    theta, vectors, signals = _drain(gen)
    return _finish(theta, vectors, signals, _num_pairs(lengths))


def _check_iteration(tolerance: Any, max_iter: Any, oversample: Any) -> tuple[float, int, int]:
    try:
        tolerance = float(tolerance)
    except (TypeError, ValueError):
        raise TypeError(f"tolerance must be a number, got {tolerance!r}") from None
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    max_iter = _check_num_pcs(max_iter, "max_iter")
    if (
        isinstance(oversample, bool)
        or not isinstance(oversample, (int, np.integer))
        or oversample < 0
    ):
        raise ValueError(f"oversample must be a non-negative integer, got {oversample!r}")
    return tolerance, max_iter, int(oversample)


def _drain(gen: Generator[Any, None, Any]) -> Any:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# =======================================================================================
# Exact blocked methods for a streamed movie
# =======================================================================================
def _iter_gram(
    source: _Source, num_pcs: int
) -> Generator[SegmentProgress, None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Exact components from the blocked Gram matrix of the frames (``T <= p``).

    Frames are held ``PANEL_BYTES`` at a time; the frames after a panel stream past
    it, so the movie is read about ``T * frame_bytes / (2 * PANEL_BYTES)`` times.
    """
    t, p = source.num_frames, source.num_pixels
    gram = np.zeros((t, t))
    frame_bytes = p * source.dtype.itemsize
    panel = int(max(source.block_frames(), min(t, PANEL_BYTES // max(1, frame_bytes))))
    total_work = sum((min(t, a + panel) - a) * (t - a) for a in range(0, t, panel))
    done_work = 0
    buf = np.empty((min(panel, t), p), dtype=source.dtype)
    for a in range(0, t, panel):
        b = min(t, a + panel)
        for t0, block in source.blocks(a, b):
            buf[t0 - a : t0 - a + block.shape[0]] = block
        held = buf[: b - a]
        gram[a:b, a:b] = held @ held.T
        done_work += (b - a) * (b - a)
        yield SegmentProgress(0.9 * done_work / total_work, "offset PCA: Gram matrix")
        for t0, block in source.blocks(b, t):
            n = block.shape[0]
            cross = held @ block.T
            gram[a:b, t0 : t0 + n] = cross
            gram[t0 : t0 + n, a:b] = cross.T
            done_work += (b - a) * n
            yield SegmentProgress(0.9 * done_work / total_work, "offset PCA: Gram matrix")
    del buf, held
    if not np.trace(gram) > 0:  # every frame equals the time average
        return np.zeros(0), np.zeros((p, 0)), np.zeros((t, 0))
    # keep even the weakest directions of the data: leaving some out moves the wanted
    # components (1e-3 on a test movie); near-null ones only get near-zero eigenvalues
    theta, coef, signals = _gram_solution(gram, min(num_pcs, t - 1), source.lengths, 1e-12)
    del gram
    from scipy.linalg import blas

    k = theta.size
    acc = np.zeros((p, k), dtype=source.dtype, order="F")
    gemm = blas.get_blas_funcs("gemm", (acc,))
    coef_d = coef.astype(source.dtype)
    for t0, block in source.blocks():
        acc = gemm(1.0, block.T, coef_d[t0 : t0 + block.shape[0]], beta=1.0, c=acc, overwrite_c=1)
        yield SegmentProgress(0.9 + 0.1 * (t0 + block.shape[0]) / t, "offset PCA: vectors")
    vectors = acc.astype(np.float64)
    del acc
    norms = np.linalg.norm(vectors, axis=0)
    norms[norms == 0] = 1.0
    vectors /= norms
    return theta, vectors, signals / norms


def _iter_covariance(
    source: _Source, num_pcs: int
) -> Generator[SegmentProgress, None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Exact components from the ``p x p`` offset covariance (few pixels, ``p < T``)."""
    t, p = source.num_frames, source.num_pixels
    cross = np.zeros((p, p))
    seq_ends = set(np.cumsum(source.lengths).tolist())
    carry: tuple[int, np.ndarray] | None = None
    for t0, block in source.blocks():
        n = block.shape[0]
        cross += block[:-1].T @ block[1:]
        if carry is not None and carry[0] == t0:
            cross += np.outer(carry[1], block[0])
        end = t0 + n
        carry = None if end in seq_ends else (end, block[-1].astype(np.float64))
        yield SegmentProgress(0.8 * end / t, "offset PCA: covariance")
    cov = 0.5 * (cross + cross.T)
    del cross
    if not np.any(cov):
        return np.zeros(0), np.zeros((p, 0)), np.zeros((t, 0))
    k = min(num_pcs, p)
    theta, vectors = _eigh(cov, subset_by_index=[p - k, p - 1])
    order = np.argsort(-theta, kind="stable")
    theta, vectors = theta[order], vectors[:, order]
    signals = np.zeros((t, k))
    v_d = vectors.astype(source.dtype)
    for t0, block in source.blocks():
        signals[t0 : t0 + block.shape[0]] = block @ v_d
        yield SegmentProgress(0.8 + 0.2 * (t0 + block.shape[0]) / t, "offset PCA: signals")
    return theta, vectors, signals


def choose_method(
    num_frames: int, num_pixels: int, num_pcs: int, oversample: int = DEFAULT_OVERSAMPLE
) -> str:
    """Return the dataset method ``'auto'`` picks: the cheapest that fits in memory.

    The exact methods cost about ``T * p * min(T, p)`` multiply-adds and need a
    ``min(T, p)``-square matrix; the iteration about ``2 * T * p * (k + oversample)``
    per pass, for ``EXPECTED_PASSES`` passes.  With 75 components the switch is at
    about 2,000 frames; on a 512 x 512 x 2,000 movie both took about the same time
    (the iteration needed 7 passes), so the exact method is preferred up to there.

    Parameters
    ----------
    num_frames, num_pixels, num_pcs : int
        Movie length, pixels per frame (all planes), components wanted.
    oversample : int
        Extra vectors of the iteration.

    Returns
    -------
    str
        ``'gram'``, ``'covariance'`` or ``'em'``.
    """
    side = min(num_frames, num_pixels)
    exact_cost = float(side)
    em_cost = 2.0 * EXPECTED_PASSES * (num_pcs + oversample)
    if side <= EXACT_MAX_SIDE and exact_cost <= em_cost:
        return "gram" if num_frames <= num_pixels else "covariance"
    return "em"


# =======================================================================================
# Dataset offset PCA (streamed, cached)
# =======================================================================================
def _cache_path(dataset: ImagingDataset, channel: int, path: Any, cache: bool) -> Path | None:
    if path is not None:
        return Path(os.fspath(path))
    if not cache or dataset.savedir is None or dataset.read_only:
        return None
    return Path(dataset.savedir) / f"opca_{channel}.npz"


def _fingerprint(dataset: ImagingDataset, channel: int, mean: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(dataset._fingerprint().encode())
    lengths = [len(s) for s in dataset.sequences]
    h.update(json.dumps([channel, list(dataset.frame_shape), lengths]).encode())
    h.update(np.ascontiguousarray(mean, dtype=np.float64).tobytes())
    return h.hexdigest()


def _load_cache(
    path: Path | None, fingerprint: str, request: dict[str, Any], shape: tuple[int, ...]
) -> OffsetPCs | None:
    if path is None or not path.exists():
        return None
    try:
        arrays = storage.load_npz(path, "offset PCA cache")
        meta = json.loads(str(arrays["meta"]))
        if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
            return None
        if int(meta["requested"]) < request["requested"]:
            return None
        if request["method"] not in ("auto", meta["method"]):
            return None
        if meta["method"] == "em" and float(meta["tolerance"]) > request["tolerance"]:
            return None
        if np.dtype(meta["dtype"]).itemsize < np.dtype(request["dtype"]).itemsize:
            return None
        variances, pcs, signals = arrays["variances"], arrays["pcs"], arrays["signals"]
        if pcs.shape[:-1] != shape:
            return None
    except (ValueError, KeyError, TypeError, OSError):
        return None  # a stale or broken cache is recomputed
    k = min(request["requested"], variances.shape[0])
    return OffsetPCs(variances[:k], pcs[..., :k], signals[:, :k])


def _save_cache(path: Path, result: OffsetPCs, meta: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with storage.atomic_open(path, "wb") as fh:  # streamed: no in-memory copy
            np.savez(
                fh,
                variances=result.variances,
                pcs=result.pcs,
                signals=result.signals,
                meta=np.asarray(json.dumps(meta)),
            )
    except OSError as err:
        warnings.warn(f"could not cache the offset PCA in {str(path)!r}: {err}", stacklevel=3)


def iter_dataset_opca(
    dataset: ImagingDataset,
    channel: int | str = 0,
    num_pcs: int = 75,
    path: str | os.PathLike | None = None,
    *,
    method: str = "auto",
    tolerance: float = 1e-4,
    max_iter: int = 100,
    oversample: int = DEFAULT_OVERSAMPLE,
    seed: int = 0,
    dtype: Any = np.float32,
    cache: bool = True,
) -> Generator[SegmentProgress, None, OffsetPCs]:
    """Offset PCA of a dataset channel, as a generator (progress, then the result).

    Same parameters and result as :func:`dataset_opca`.

    Yields
    ------
    SegmentProgress
        ``(fraction, message)``; closing the generator cancels (nothing is cached).

    Returns
    -------
    OffsetPCs
        As the generator's return value.
    """
    ch = dataset.resolve_channel(channel)
    num_pcs = _check_num_pcs(num_pcs)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    tolerance, max_iter, oversample = _check_iteration(tolerance, max_iter, oversample)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    z, y, x, _ = dataset.frame_shape
    shape = (z, y, x)
    t = dataset.num_frames
    p = z * y * x
    lengths = [len(s) for s in dataset.sequences]
    if t < 2 or _num_pairs(lengths) < 1:
        raise ValueError(
            f"offset PCA needs at least two consecutive frames in one sequence; the dataset "
            f"has {t} frame(s) in sequences of lengths {lengths}"
        )
    requested = min(num_pcs, t - 1, p)

    # time average (one streamed pass unless cached)
    projections = dataset.iter_projections()
    try:
        while True:
            done, total = next(projections)
            yield SegmentProgress(0.1 * done / max(total, 1), "time average")
    except StopIteration as stop:
        mean = stop.value.mean[..., ch]
    finally:
        projections.close()

    chosen = choose_method(t, p, requested, oversample) if method == "auto" else method
    if chosen == "covariance" and p > EXACT_MAX_SIDE:
        raise ValueError(
            f"method='covariance' needs a {p} x {p} matrix; use 'gram' or 'em' for "
            f"{p}-pixel frames"
        )
    if chosen == "gram" and t > EXACT_MAX_SIDE:
        warnings.warn(
            f"method='gram' builds a {t} x {t} matrix ({t * t * 8 / 2**30:.1f} GiB) and reads "
            f"the movie many times; 'em' is cheaper for long movies",
            RuntimeWarning,
            stacklevel=2,
        )
    cache_path = _cache_path(dataset, ch, path, cache)
    fingerprint = _fingerprint(dataset, ch, mean) if cache_path is not None else ""
    request = {
        "requested": requested,
        "method": method,
        "tolerance": tolerance,
        "dtype": dtype.name,
    }
    cached = _load_cache(cache_path, fingerprint, request, shape)
    if cached is not None:
        yield SegmentProgress(1.0, "offset PCA: from cache")
        return cached

    source = _DatasetSource(dataset, ch, mean, dtype)
    if chosen == "gram":
        work = _iter_gram(source, requested)
    elif chosen == "covariance":
        work = _iter_covariance(source, requested)
    else:
        work = _iter_em(source, requested, tolerance, max_iter, oversample, int(seed))
    try:
        while True:
            item = next(work)
            yield SegmentProgress(0.1 + 0.9 * item.fraction, item.message)
    except StopIteration as stop:
        theta, vectors, signals = stop.value
    finally:
        work.close()
    flat = _finish(theta, vectors, signals, _num_pairs(lengths))
    result = OffsetPCs(flat.variances, flat.pcs.reshape(shape + (-1,)), flat.signals)
    if cache_path is not None:
        meta = {
            "version": CACHE_VERSION,
            "fingerprint": fingerprint,
            "channel": ch,
            "requested": requested,
            "method": chosen,
            "tolerance": tolerance,
            "dtype": dtype.name,
            "seed": int(seed),
        }
        _save_cache(cache_path, result, meta)
    yield SegmentProgress(1.0, f"offset PCA: {result.variances.size} components")
    return result


def dataset_opca(
    dataset: ImagingDataset,
    channel: int | str = 0,
    num_pcs: int = 75,
    path: str | os.PathLike | None = None,
    *,
    method: str = "auto",
    tolerance: float = 1e-4,
    max_iter: int = 100,
    oversample: int = DEFAULT_OVERSAMPLE,
    seed: int = 0,
    dtype: Any = np.float32,
    cache: bool = True,
) -> OffsetPCs:
    """Offset principal components of one channel of a dataset, streamed from disk.

    The frames of all sequences (in order), flattened over ``(z, y, x)``, minus the
    channel's time average (``dataset.time_averages``), with unobserved (NaN)
    pixels set to 0, are read in blocks of about 32 MB, never as a whole movie.

    Parameters
    ----------
    dataset : ImagingDataset
    channel : int or str
        Channel, by index or name.
    num_pcs : int
        Components wanted; at most ``min(num_pcs, frames - 1, pixels)`` (fewer for
        data of lower rank; none for a constant movie).
    path : path-like, optional
        Cache file.  Default: ``opca_<channel>.npz`` in the dataset folder when the
        dataset has a writable one, else no cache.
    method : {'auto', 'gram', 'covariance', 'em'}
        ``'gram'``: exact, from the blocked ``T x T`` Gram matrix of the frames (reads
        the movie a few times); ``'covariance'``: exact, from the ``p x p`` offset
        covariance (one pass; small frames only); ``'em'``: subspace iteration, one
        pass per iteration (for long movies).  ``'auto'`` picks the cheapest
        (:func:`choose_method`).
    tolerance : float
        ``'em'``: relative change of the eigenvalues at which to stop.
    max_iter : int
        ``'em'``: maximum passes.
    oversample : int
        ``'em'``: extra vectors iterated.
    seed : int
        ``'em'``: seed of the random part of the starting vectors.
    dtype : {float32, float64}
        Precision of the products with the frames (float32: two to three times as fast
        and half the memory; on test movies eigenvalues agree with float64 to about
        1e-6 relative, vectors to about 1e-5).  Small eigenproblems are float64.
    cache : bool
        Read and write the default cache file.

    Returns
    -------
    OffsetPCs
        ``variances (k,)``, ``pcs (z, y, x, k)`` and ``signals (T, k)``, float64.
        A cache holding at least as many components (same movie, channel and at
        least the same accuracy) is reused, truncated to ``num_pcs``.

    Raises
    ------
    ValueError
        If the dataset has fewer than two consecutive frames, a parameter is invalid,
        or the channel is unknown.

    See Also
    --------
    iter_dataset_opca : the same as a generator with progress and cancellation.
    offset_pca, em_opca : the array versions.
    """
    return _drain(
        iter_dataset_opca(
            dataset,
            channel,
            num_pcs,
            path,
            method=method,
            tolerance=tolerance,
            max_iter=max_iter,
            oversample=oversample,
            seed=seed,
            dtype=dtype,
            cache=cache,
        )
    )
