"""Pixel-affinity graphs for normalized cuts (SIMA's affinity matrices).

Each pixel of a plane is linked to its neighbours within ``max_dist = (dy, dx)``
rows/columns: the offsets ``(dy, 0)`` for ``dy = 1..max_dist[0]`` and ``(dy, dx)`` for
``dx = 1..max_dist[1]``, ``dy = -max_dist[0]..max_dist[0]`` (each unordered pair once,
from ``r0 = (y, x)`` to ``r1 = (y + dy, x + dx)``).  The symmetric sparse matrix over the
row-major pixel index ``x + y * columns`` holds one weight per pair and a zero
diagonal.

:class:`BasicAffinityMatrix`
    ``exp(9 * corr) * exp(-((dx / sx)**2 + (dy / sy)**2) / 2)``: ``corr`` is the cosine
    of the two pixels' offset-PCA loading vectors, each component weighted by the
    square root of its (non-negative) offset variance, and ``(sy, sx)`` is
    ``spatial_decay``.
:class:`AffinityMatrixCA1PC`
    The same, times ``exp(-3 * m / range)`` with ``m`` the largest value of the
    clipped CA1PC image (:func:`~napari_sima.core.segment.ca1pc.processed_image_ca1pc`)
    on the pixel line from ``r0`` to ``r1``: a bright boundary between two pixels lowers
    their affinity.

Everything is vectorised over pairs sharing an offset (no per-pixel Python loop).

Departures from SIMA
--------------------
* A pixel whose weighted loading vector is zero (a constant pixel, e.g. a motion
  correction margin, or every pixel of a constant movie) has no correlation with
  anything: SIMA divided by its zero norm and stopped on an assertion; here its edges
  get **zero affinity**, so normalized cuts drop it and it belongs to no ROI.
* Non-finite loadings are treated as zero for the same reason.
* The line maximum of :class:`AffinityMatrixCA1PC` follows SIMA's rasterisation
  exactly; a constant processed image (zero range) leaves the weights unchanged instead
  of dividing by zero.

This module is written from a behaviour description; it contains no SIMA code.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import warnings
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from .base import SegmentProgress, drive, scaled

if TYPE_CHECKING:
    from ..dataset import ImagingDataset

__all__ = [
    "AffinityMatrix",
    "AffinityMatrixCA1PC",
    "BasicAffinityMatrix",
    "NeighbourPairs",
    "line_maximum",
    "neighbour_offsets",
    "neighbour_pairs",
    "pair_correlations",
]

#: Sharpness of the correlation term, ``exp(CORRELATION_GAIN * corr)`` (SIMA's 9).
CORRELATION_GAIN = 9.0
#: Sharpness of the CA1PC boundary term, ``exp(-BOUNDARY_GAIN * m / range)`` (SIMA's 3).
BOUNDARY_GAIN = 3.0

#: Bytes of gathered loading vectors per chunk of pairs in :func:`pair_correlations`.
PAIR_CHUNK_BYTES = 16 * 2**20

AffinityGenerator = Generator[SegmentProgress, None, sparse.csr_matrix]


# ---------------------------------------------------------------------------------------
# neighbour pairs
# ---------------------------------------------------------------------------------------
class NeighbourPairs(NamedTuple):
    """All neighbour pairs of a plane, grouped by offset.

    Attributes
    ----------
    first, second : numpy.ndarray of intp
        Flat (row-major) indices of ``r0 = (y, x)`` and ``r1 = (y + dy, x + dx)``.
    dy, dx : numpy.ndarray of intp
        The offset of each pair (``dx >= 0``; ``dy >= 1`` when ``dx == 0``).
    shape : (rows, columns)
        The plane's shape.
    """

    first: NDArray[np.intp]
    second: NDArray[np.intp]
    dy: NDArray[np.intp]
    dx: NDArray[np.intp]
    shape: tuple[int, int]


def neighbour_offsets(max_dist: tuple[int, int]) -> list[tuple[int, int]]:
    """Return the ``(dy, dx)`` offsets linking a pixel to its neighbours (each pair once).

    Parameters
    ----------
    max_dist : (int, int)
        Largest row and column distance.

    Returns
    -------
    list of (int, int)
        ``(dy, 0)`` for ``dy = 1..max_dist[0]``, then ``(dy, dx)`` for
        ``dx = 1..max_dist[1]`` and ``dy = -max_dist[0]..max_dist[0]``.

    Examples
    --------
    >>> neighbour_offsets((1, 1))
    [(1, 0), (-1, 1), (0, 1), (1, 1)]
    """
    my, mx = _check_max_dist(max_dist)
    offsets = [(dy, 0) for dy in range(1, my + 1)]
    offsets += [(dy, dx) for dx in range(1, mx + 1) for dy in range(-my, my + 1)]
    return offsets


def neighbour_pairs(shape: tuple[int, int], max_dist: tuple[int, int] = (2, 2)) -> NeighbourPairs:
    """Return every neighbour pair of a ``(rows, columns)`` plane (vectorised).

    Parameters
    ----------
    shape : (rows, columns)
    max_dist : (int, int)
        See :func:`neighbour_offsets`.

    Returns
    -------
    NeighbourPairs
    """
    rows, cols = (int(s) for s in shape)
    if rows < 1 or cols < 1:
        raise ValueError(f"shape must be (rows, columns) of positive sizes, got {shape!r}")
    index = np.arange(rows * cols, dtype=np.intp).reshape(rows, cols)
    parts: list[tuple[np.ndarray, ...]] = []
    for dy, dx in neighbour_offsets(max_dist):
        y0, y1 = max(0, -dy), min(rows, rows - dy)
        x1 = cols - dx
        if y1 <= y0 or x1 <= 0:
            continue
        a = index[y0:y1, 0:x1].ravel()
        b = index[y0 + dy : y1 + dy, dx : x1 + dx].ravel()
        parts.append((a, b, np.full(a.size, dy, np.intp), np.full(a.size, dx, np.intp)))
    if not parts:
        empty = np.empty(0, np.intp)
        return NeighbourPairs(empty, empty, empty, empty, (rows, cols))
    first, second, dys, dxs = (np.concatenate(p) for p in zip(*parts, strict=True))
    return NeighbourPairs(first, second, dys, dxs, (rows, cols))


def _symmetric(pairs: NeighbourPairs, weights: NDArray[np.floating]) -> sparse.csr_matrix:
    n = pairs.shape[0] * pairs.shape[1]
    keep = weights > 0
    i, j, w = pairs.first[keep], pairs.second[keep], weights[keep]
    matrix = sparse.coo_matrix(
        (np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))),
        shape=(n, n),
    )
    return matrix.tocsr()


# ---------------------------------------------------------------------------------------
# correlation and boundary terms
# ---------------------------------------------------------------------------------------
def pair_correlations(
    loadings: NDArray[np.floating], pairs: NeighbourPairs
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Return the cosine similarity of the loading vectors of each pair.

    Parameters
    ----------
    loadings : array, shape (rows, columns, k)
        One vector per pixel (e.g. offset-PCA loadings times ``sqrt(variance)``).
    pairs : NeighbourPairs

    Returns
    -------
    corr : numpy.ndarray, shape (n_pairs,)
        ``u_i . u_j`` of the unit vectors; 0 for pairs with a zero-norm pixel.
    valid : numpy.ndarray of bool, shape (n_pairs,)
        False for pairs with a pixel whose vector is zero or not finite.
    """
    loadings = np.asarray(loadings, dtype=np.float64)
    if loadings.ndim != 3 or loadings.shape[:2] != tuple(pairs.shape):
        raise ValueError(
            f"loadings must be (rows, columns, k) = {tuple(pairs.shape)} + (k,), "
            f"got {loadings.shape}"
        )
    flat = loadings.reshape(pairs.shape[0] * pairs.shape[1], loadings.shape[2])
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", flat, flat))
    good = np.isfinite(norms) & (norms > 0)
    scale = np.zeros_like(norms)
    scale[good] = 1.0 / norms[good]
    with np.errstate(invalid="ignore"):
        unit = flat * scale[:, None]  # one copy of the loadings
    unit[~good] = 0.0
    corr = np.empty(pairs.first.size, dtype=np.float64)
    # in chunks: the gathered vectors of all pairs would take (pairs x k x 8) bytes each
    step = max(1, PAIR_CHUNK_BYTES // (8 * max(1, flat.shape[1])))
    for start in range(0, corr.size, step):
        stop = min(corr.size, start + step)
        corr[start:stop] = np.einsum(
            "ij,ij->i", unit[pairs.first[start:stop]], unit[pairs.second[start:stop]]
        )
    np.clip(corr, -1.0, 1.0, out=corr)
    valid = good[pairs.first] & good[pairs.second]
    corr[~valid] = 0.0
    return corr, valid


def spatial_weights(
    pairs: NeighbourPairs, spatial_decay: tuple[float, float]
) -> NDArray[np.float64]:
    """Return ``exp(-((dx / sx)**2 + (dy / sy)**2) / 2)`` per pair; ``(sy, sx) = spatial_decay``."""
    sy, sx = _check_spatial_decay(spatial_decay)
    return np.exp(-0.5 * ((pairs.dx / sx) ** 2 + (pairs.dy / sy) ** 2))


def _line_offsets(dy: int, dx: int) -> list[tuple[int, int]]:
    """Relative pixels ``(ry, rx)`` of SIMA's rasterised line from ``(0, 0)`` to ``(dy, dx)``."""
    if dx == 0:
        lo, hi = min(0, dy), max(0, dy)
        return [(ry, 0) for ry in range(lo, hi + 1)]
    out = []
    slope = dy / dx
    for xt in range(dx + 1):
        ya = 0.5 + max(0.0, xt - 0.5) * slope
        yb = 0.5 + min(xt + 0.5, dx) * slope
        lo, hi = math.floor(min(ya, yb)), math.floor(max(ya, yb))
        out.extend((ry, xt) for ry in range(lo, hi + 1))
    return out


def line_maximum(image: NDArray[np.floating], pairs: NeighbourPairs) -> NDArray[np.float64]:
    """Return, for each pair, the largest image value on the pixel line joining it.

    The line from ``r0 = (y0, x0)`` to ``r1`` (``dx >= 0``) covers, for each column step
    ``xt = 0..dx``, the rows ``floor(min(ya, yb))..floor(max(ya, yb))`` with
    ``ya = y0 + 0.5 + max(0, xt - 0.5) * dy / dx`` and
    ``yb = y0 + 0.5 + min(xt + 0.5, dx) * dy / dx`` (rows ``y0..y1`` when ``dx = 0``),
    as SIMA's CA1PC affinity.  Both end pixels are on the line.

    Parameters
    ----------
    image : array, shape (rows, columns)
    pairs : NeighbourPairs

    Returns
    -------
    numpy.ndarray, shape (n_pairs,)
    """
    image = np.asarray(image, dtype=np.float64)
    if image.shape != tuple(pairs.shape):
        raise ValueError(f"image must have the plane's shape {pairs.shape}, got {image.shape}")
    flat = image.ravel()
    cols = pairs.shape[1]
    out = np.empty(pairs.first.size, dtype=np.float64)
    if not out.size:
        return out
    # pairs come grouped by offset; handle one offset at a time
    keys = pairs.dy * (2 * cols + 1) + pairs.dx
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    for group in np.split(order, bounds):
        dy, dx = int(pairs.dy[group[0]]), int(pairs.dx[group[0]])
        start = pairs.first[group]
        best = np.full(group.size, -np.inf)
        for ry, rx in _line_offsets(dy, dx):
            np.maximum(best, flat[start + ry * cols + rx], out=best)
        out[group] = best
    return out


# ---------------------------------------------------------------------------------------
# the affinity strategies
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class AffinityMatrix(abc.ABC):
    """Base class of affinity-matrix methods for :class:`PlaneNormalizedCuts`.

    Subclasses are dataclasses (their fields are the parameters) implementing
    :meth:`_iter_weights`, which returns one weight per neighbour pair.

    Parameters
    ----------
    channel : int or str
        Channel used, by index or name.
    max_dist : (int, int), optional
        Largest row and column distance of linked pixels; ``None`` means ``(2, 2)``.
    spatial_decay : (float, float), optional
        ``(sy, sx)`` of the Gaussian fall-off with distance; ``None`` means ``(2, 2)``.
    """

    channel: int | str = 0
    max_dist: tuple[int, int] | None = None
    spatial_decay: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if isinstance(self.channel, bool) or not isinstance(self.channel, (int, np.integer, str)):
            raise ValueError(f"channel must be an index or a channel name, got {self.channel!r}")
        if self.max_dist is not None:
            self.max_dist = _check_max_dist(self.max_dist)
        if self.spatial_decay is not None:
            self.spatial_decay = _check_spatial_decay(self.spatial_decay)

    @property
    def resolved_max_dist(self) -> tuple[int, int]:
        """``max_dist`` with its default applied."""
        return (2, 2) if self.max_dist is None else _check_max_dist(self.max_dist)

    @property
    def resolved_spatial_decay(self) -> tuple[float, float]:
        """``spatial_decay`` with its default applied."""
        return (
            (2.0, 2.0) if self.spatial_decay is None else _check_spatial_decay(self.spatial_decay)
        )

    def iter_calculate(self, dataset: ImagingDataset) -> AffinityGenerator:
        """Compute the affinity matrix of a single-plane dataset, as a generator.

        Parameters
        ----------
        dataset : ImagingDataset
            With exactly one plane.

        Yields
        ------
        SegmentProgress

        Returns
        -------
        scipy.sparse.csr_matrix
            ``(rows * columns, rows * columns)`` symmetric, non-negative, zero diagonal.

        Raises
        ------
        ValueError
            For a dataset with several planes or an unknown channel.
        """
        self._validate()
        planes, rows, cols, _ = dataset.frame_shape
        if planes != 1:
            raise ValueError(
                f"{type(self).__name__} works on one plane, but the dataset has {planes} "
                f"planes; use PlaneWiseSegmentation or select a plane"
            )
        dataset.resolve_channel(self.channel)  # a clear error before any work
        pairs = neighbour_pairs((rows, cols), self.resolved_max_dist)
        weights = yield from self._iter_weights(dataset, pairs)
        weights = np.asarray(weights, dtype=np.float64)
        weights[~np.isfinite(weights)] = 0.0
        return _symmetric(pairs, weights)

    def calculate(self, dataset: ImagingDataset) -> sparse.csr_matrix:
        """Return the affinity matrix of a single-plane dataset (see :meth:`iter_calculate`)."""
        return drive(self.iter_calculate(dataset))

    @abc.abstractmethod
    def _iter_weights(
        self, dataset: ImagingDataset, pairs: NeighbourPairs
    ) -> Generator[SegmentProgress, None, NDArray[np.float64]]:
        """Return one non-negative weight per pair (as a generator's return value)."""


@dataclasses.dataclass
class BasicAffinityMatrix(AffinityMatrix):
    """Affinity from offset-PCA correlation and distance (SIMA's default for normalized cuts).

    ``A = exp(9 * corr) * exp(-((dx / sx)**2 + (dy / sy)**2) / 2)`` where ``corr`` is the
    cosine of the two pixels' loading vectors on the first ``num_pcs`` offset principal
    components, each weighted by ``sqrt(max(0, variance))``.

    Parameters
    ----------
    channel : int or str
        Channel used.
    max_dist : (int, int), optional
        Neighbourhood, default ``(2, 2)``.
    spatial_decay : (float, float), optional
        ``(sy, sx)``, default ``(2, 2)``.
    num_pcs : int
        Offset principal components used (clamped to ``frames - 1`` with a warning).
    verbose : bool
        Accepted for SIMA compatibility; progress is reported through the generator.
    seed : int
        Seed of the offset PCA's iteration (used for long movies only).

    Notes
    -----
    The offset PCA is cached as ``opca_<channel>.npz`` in a writable dataset folder
    and reused by later runs with at most as many components.
    """

    num_pcs: int = 75
    verbose: bool = False
    seed: int = 0

    def _validate(self) -> None:
        super()._validate()
        if (
            isinstance(self.num_pcs, bool)
            or not isinstance(self.num_pcs, (int, np.integer))
            or self.num_pcs < 1
        ):
            raise ValueError(f"num_pcs must be an integer >= 1, got {self.num_pcs!r}")
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, (int, np.integer))
            or self.seed < 0
        ):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def _iter_loadings(
        self, dataset: ImagingDataset
    ) -> Generator[SegmentProgress, None, NDArray[np.float64]]:
        from .opca import iter_dataset_opca

        num_pcs = int(self.num_pcs)
        frames = dataset.num_frames
        if frames >= 2 and num_pcs > frames - 1:
            warnings.warn(
                f"{type(self).__name__}: num_pcs={num_pcs} is more than the dataset's "
                f"{frames} frames allow; using {frames - 1} components",
                RuntimeWarning,
                stacklevel=4,
            )
            num_pcs = frames - 1
        result = yield from iter_dataset_opca(
            dataset, channel=self.channel, num_pcs=num_pcs, seed=int(self.seed)
        )
        variances = np.nan_to_num(np.asarray(result.variances, dtype=np.float64))
        pcs = np.asarray(result.pcs, dtype=np.float64)
        rows, cols = dataset.frame_shape[1:3]
        if pcs.shape[-1] == 0:
            return np.zeros((rows, cols, 0))
        return pcs[0] * np.sqrt(np.maximum(variances, 0.0))

    def _iter_weights(
        self, dataset: ImagingDataset, pairs: NeighbourPairs
    ) -> Generator[SegmentProgress, None, NDArray[np.float64]]:
        loadings = yield from scaled(self._iter_loadings(dataset), 0.0, 0.95)
        yield SegmentProgress(0.95, "affinity: correlations")
        corr, valid = pair_correlations(loadings, pairs)
        weights = np.exp(CORRELATION_GAIN * corr) * spatial_weights(
            pairs, self.resolved_spatial_decay
        )
        weights[~valid] = 0.0
        return weights


@dataclasses.dataclass
class AffinityMatrixCA1PC(BasicAffinityMatrix):
    """Basic affinity lowered across bright boundaries (SIMA's CA1 pyramidal-cell affinity).

    Each :class:`BasicAffinityMatrix` weight is multiplied by ``exp(-3 * m / range)``,
    ``m`` the largest value on the pixel line between the two pixels (see
    :func:`line_maximum`) of the CA1PC processed image clipped to ``[-2 s, 2 s]``
    (``s`` its standard deviation), and ``range`` the clipped image's max minus min.

    Parameters
    ----------
    channel, max_dist, spatial_decay, num_pcs, verbose, seed
        As :class:`BasicAffinityMatrix`.
    x_diameter, y_diameter : int
        Expected cell diameter in pixels (CLAHE tile and unsharp-mask scale of the
        processed image; SIMA's defaults 10).  Pass them by keyword: they come after
        ``verbose`` and ``seed`` here, before ``verbose`` in SIMA.
    """

    x_diameter: int = 10
    y_diameter: int = 10

    def _validate(self) -> None:
        super()._validate()
        for name in ("x_diameter", "y_diameter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1 (pixels), got {value!r}")

    def _iter_weights(
        self, dataset: ImagingDataset, pairs: NeighbourPairs
    ) -> Generator[SegmentProgress, None, NDArray[np.float64]]:
        from .ca1pc import processed_image_ca1pc

        weights = yield from scaled(super()._iter_weights(dataset, pairs), 0.0, 0.95)
        yield SegmentProgress(0.95, "affinity: boundaries")
        image = processed_image_ca1pc(dataset, self.channel, self.x_diameter, self.y_diameter)[
            0
        ].astype(np.float64)
        return weights * boundary_factors(image, pairs)


def boundary_factors(image: NDArray[np.floating], pairs: NeighbourPairs) -> NDArray[np.float64]:
    """Return SIMA's CA1PC factor ``exp(-3 * m / range)`` for each pair.

    Parameters
    ----------
    image : array, shape (rows, columns)
        The processed image of the plane.
    pairs : NeighbourPairs

    Returns
    -------
    numpy.ndarray, shape (n_pairs,)
        In ``(0, 1]``; all 1 for a constant image.
    """
    image = np.asarray(image, dtype=np.float64)
    s = float(np.std(image))
    clipped = np.clip(image, -2.0 * s, 2.0 * s)
    spread = float(clipped.max() - clipped.min()) if clipped.size else 0.0
    if not spread > 0:
        return np.ones(pairs.first.size)
    return np.exp(-BOUNDARY_GAIN * line_maximum(clipped, pairs) / spread)


# ---------------------------------------------------------------------------------------
# parameter checks
# ---------------------------------------------------------------------------------------
def _check_max_dist(value: Any) -> tuple[int, int]:
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) != 2 or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in items
    ):
        raise ValueError(f"max_dist must be two integers (rows, columns) >= 0, got {value!r}")
    result = (int(items[0]), int(items[1]))
    if result == (0, 0):
        raise ValueError("max_dist=(0, 0) links no pixels; use at least (1, 1)")
    return result


def _check_spatial_decay(value: Any) -> tuple[float, float]:
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        items = ()
    if len(items) != 2 or not all(math.isfinite(v) and v > 0 for v in items):
        raise ValueError(
            f"spatial_decay must be two positive numbers (rows, columns), got {value!r}"
        )
    return items  # type: ignore[return-value]
