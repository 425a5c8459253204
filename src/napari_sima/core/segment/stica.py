"""Spatio-temporal independent component analysis (SIMA's ``STICA``).

The movie is reduced to its leading offset principal components
(:mod:`~napari_sima.core.segment.opca`); each component has a spatial map and a time
course.  The maps (weighted by ``mu``) and the time courses (weighted by ``1 - mu``)
are stacked as samples of one ICA problem, so that independent components are
sought jointly in space and time (Mukamel, Nimmerjahn & Schnitzer 2009).  Each
independent component's spatial part becomes one ROI with a real-valued (weighted,
non-boolean) mask; the usual follow-up steps turn them into cell outlines::

    strategy = STICA(components=50)
    strategy.append(SparseROIsFromMasks(min_size=50))
    strategy.append(SmoothROIBoundaries(tolerance=1))
    strategy.append(MergeOverlapping(0.5))
    rois = dataset.segment(strategy)

Differences from SIMA (section 7.2 of the behaviour notes)
----------------------------------------------------------
* Deterministic: FastICA (scikit-learn) gets ``random_state=seed``; the offset PCA is
  deterministic too.  FastICA whitens with ``whiten='unit-variance'`` (current
  scikit-learn; SIMA ran the old ``whiten=True``, which only scales components
  differently; masks are used up to scale).
* Each map's sign is chosen so that its bulk (third moment) is positive: cells
  come out as bright blobs whatever sign the ICA returned.
* More components than the movie allows (``frames - 1`` or pixels) are clamped with
  a ``UserWarning`` (SIMA clamped silently).  A movie without any variation gives an
  empty ROI list with a ``UserWarning``; NaN pixels (unobserved) count as the time
  average.
* The PC scale factors divide by the largest *magnitude* (SIMA: largest value,
  which is the same thing for our sign convention and never zero or negative).
* Only integer ``components`` is accepted (SIMA also took a list, of which it used
  only the largest index + 1).
* The ICA result is not cached (the offset PCA, the expensive part, is).
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..roi import ROI, ROIList
from .base import SegmentationStrategy, SegmentGenerator, SegmentProgress, scaled
from .opca import iter_dataset_opca

if TYPE_CHECKING:
    from ..dataset import ImagingDataset

__all__ = ["STICA", "stica_components"]

#: Maximum FastICA iterations (SIMA's value).
ICA_MAX_ITER = 1500


@dataclasses.dataclass
class STICA(SegmentationStrategy):
    """Segmentation by spatio-temporal ICA of the offset principal components.

    Parameters
    ----------
    channel : int or str
        Channel to segment, by index or name.
    mu : float
        Weight of space against time in the ICA, in ``[0, 1]`` (0: temporal ICA only,
        1: spatial ICA only).
    components : int
        Number of offset principal components, and of independent components (one ROI
        each); clamped with a warning to ``frames - 1`` and to the pixel count.
    seed : int
        Seed of the ICA's random start (and of the offset PCA's, when iterative).

    Raises
    ------
    ValueError, TypeError
        For parameters out of range or of the wrong type.

    Notes
    -----
    Returns one ROI per component whose mask is the real-valued spatial map
    ``(planes, rows, columns)`` (float64).  Follow it with ``SparseROIsFromMasks``
    (and usually ``SmoothROIBoundaries`` and ``MergeOverlapping``) to get cells.
    """

    channel: int | str = 0
    mu: float = 0.01
    components: int = 75
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.components, bool) or not isinstance(self.components, numbers.Integral):
            raise TypeError(f"STICA: components must be an integer, got {self.components!r}")
        if self.components < 1:
            raise ValueError(f"STICA: components must be at least 1, got {self.components}")
        self.components = int(self.components)
        if isinstance(self.mu, bool) or not isinstance(self.mu, numbers.Real):
            raise TypeError(f"STICA: mu must be a number in [0, 1], got {self.mu!r}")
        if not 0.0 <= float(self.mu) <= 1.0:
            raise ValueError(f"STICA: mu must lie in [0, 1], got {self.mu}")
        self.mu = float(self.mu)
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"STICA: seed must be a non-negative integer, got {self.seed!r}")
        self.seed = int(self.seed)
        if isinstance(self.channel, bool) or not isinstance(self.channel, (numbers.Integral, str)):
            raise TypeError(f"STICA: channel must be an index or a name, got {self.channel!r}")

    def _iter_segment(self, dataset: ImagingDataset) -> SegmentGenerator:
        channel = dataset.resolve_channel(self.channel)
        frames = dataset.num_frames
        z, y, x, _ = dataset.frame_shape
        if frames < 2:
            raise ValueError(
                f"STICA needs at least 2 frames (for the offset covariance); the dataset "
                f"has {frames}"
            )
        limit = min(frames - 1, z * y * x)
        wanted = self.components
        if wanted > limit:
            warnings.warn(
                f"STICA: {wanted} components asked for, but a movie of {frames} frames and "
                f"{z * y * x} pixels has at most {limit}; using {limit}",
                UserWarning,
                stacklevel=2,
            )
            wanted = limit
        opca = yield from scaled(
            iter_dataset_opca(dataset, channel, wanted, seed=self.seed), 0.0, 0.85
        )
        yield SegmentProgress(0.85, f"independent components ({opca.variances.size})")
        stack, shape = _scaled_stack(opca.pcs, opca.signals, self.mu)
        del opca  # the stack holds what the ICA needs: free the PCs first
        maps = _ica_maps(stack, shape, self.seed)
        if maps.shape[-1] == 0:
            warnings.warn(
                f"STICA: channel {channel} of the movie does not vary over time (no offset "
                f"principal component); no ROIs",
                UserWarning,
                stacklevel=2,
            )
            return ROIList([])
        yield SegmentProgress(0.98, "building ROIs")
        return ROIList([ROI(mask=maps[..., i]) for i in range(maps.shape[-1])])


def stica_components(
    space_pcs: Any, time_pcs: Any, mu: float = 0.01, seed: int = 0
) -> np.ndarray:
    """Spatial maps of the independent components of offset PCs (SIMA's ``_stica``).

    Parameters
    ----------
    space_pcs : array-like, shape (..., k)
        Spatial vectors (any spatial shape, components last).
    time_pcs : array-like, shape (T, k)
        Time courses.
    mu : float
        Weight of space against time, in ``[0, 1]``.
    seed : int
        ``random_state`` of FastICA.

    Returns
    -------
    numpy.ndarray
        ``(..., m)`` float64 spatial maps, ``m <= k`` (components that are constant
        in space and time are left out; ``m = 0`` when all are).

    Raises
    ------
    ValueError
        If the shapes disagree or ``mu`` is outside ``[0, 1]``.
    """
    stack, spatial_shape = _scaled_stack(space_pcs, time_pcs, mu)
    return _ica_maps(stack, spatial_shape, seed)


def _scaled_stack(space_pcs: Any, time_pcs: Any, mu: float) -> tuple[np.ndarray, tuple]:
    """Return the de-meaned, weighted maps stacked on the time courses, and the map shape."""
    space_in = np.asarray(space_pcs)
    time_in = np.asarray(time_pcs)
    if time_in.ndim != 2 or space_in.ndim < 2 or space_in.shape[-1] != time_in.shape[-1]:
        raise ValueError(
            f"space_pcs (..., k) and time_pcs (T, k) must share k; got shapes "
            f"{space_in.shape} and {time_in.shape}"
        )
    if not 0.0 <= float(mu) <= 1.0:
        raise ValueError(f"mu must lie in [0, 1], got {mu}")
    spatial_shape = space_in.shape[:-1]
    n_pix = int(np.prod(spatial_shape))
    k = space_in.shape[-1]
    # one (pixels + frames, k) array, filled in place: no other copy of the maps
    stack = np.empty((n_pix + time_in.shape[0], k))
    stack[:n_pix] = space_in.reshape(n_pix, k)
    stack[n_pix:] = time_in
    space, time = stack[:n_pix], stack[n_pix:]
    for part, weight in ((space, float(mu)), (time, 1.0 - float(mu))):
        part[~np.isfinite(part)] = 0.0
        part -= part.mean(axis=0)
        scale = float(np.abs(part).max()) if part.size else 0.0
        if scale > 0:
            part *= weight / scale
    del space, time
    return stack, spatial_shape


def _ica_maps(stack: np.ndarray, spatial_shape: tuple, seed: int) -> np.ndarray:
    """Return the spatial parts of the independent components of ``stack``."""
    from sklearn.decomposition import FastICA

    n_pix = int(np.prod(spatial_shape))
    # leave out components without variance (they would break the whitening)
    norms = np.linalg.norm(stack, axis=0)
    keep = norms > 1e-9 * norms.max() if norms.size and norms.max() > 0 else np.zeros(0, bool)
    if not keep.any():
        return np.zeros(spatial_shape + (0,))
    if not keep.all():
        stack = stack[:, keep]
    k = stack.shape[1]
    ica = FastICA(
        n_components=k,
        max_iter=ICA_MAX_ITER,
        random_state=int(seed),
        whiten="unit-variance",
        whiten_solver="eigh",
    )
    with warnings.catch_warnings():
        # the eigh whitening warns about tiny singular values that we removed above
        warnings.filterwarnings("ignore", message="There are some small singular values")
        sources = ica.fit_transform(stack)
    del stack
    maps = sources[:n_pix]  # a view: rows are contiguous
    if not np.all(np.isfinite(maps)):
        raise FloatingPointError(
            "STICA: the independent component analysis produced non-finite values "
            "(degenerate principal components?)"
        )
    # sign: cells are positive blobs (positive third moment of each map)
    for j in range(k):
        column = maps[:, j]
        centred = column - column.mean()
        if np.dot(centred * centred, centred) < 0:
            column *= -1
    return maps.reshape(spatial_shape + (k,))
