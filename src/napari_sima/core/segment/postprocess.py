"""Post-processing steps for segmentation results (SIMA's filters, smoothing and merging).

A segmentation strategy applies its steps in the order they were appended
(``strategy.append(step)``, as in SIMA).  Every step is a dataclass whose fields are
its parameters with SIMA's defaults, so a GUI can build its panel from
:func:`dataclasses.fields`; :meth:`~PostProcessingStep.apply` returns a new
:class:`~napari_sima.core.ROIList` of new ROI objects and leaves its input unchanged.

Steps
-----
:class:`ROIFilter`
    Keep the ROIs for which a function returns true.
:class:`SizeFilter`
    Keep the ROIs whose pixel count lies in a range (an editable ``ROIFilter``).
:class:`CircularityFilter`
    Keep compact ROIs (``4 pi area / perimeter**2`` above a threshold).
:class:`SparseROIsFromMasks`
    Turn weighted masks (e.g. ICA components) into boolean ROIs, one per blob.
:class:`SmoothROIBoundaries`
    Simplify outlines with the Douglas-Peucker algorithm.
:class:`MergeOverlapping`
    Merge ROIs that overlap by more than a fraction of the smaller one.

All steps work on multi-plane ROIs (masks ``(z, y, x)``, vertices ``(x, y, z)``).
Where SIMA 1.3.2 had bugs (see each class), the intended behaviour is implemented and
the difference is documented.  Written from a behaviour description; no SIMA code.

Examples
--------
>>> import numpy as np
>>> from napari_sima.core import ROI, ROIList
>>> a = np.zeros((20, 20), bool); a[2:8, 2:8] = True
>>> b = np.zeros((20, 20), bool); b[3:9, 3:9] = True
>>> c = np.zeros((20, 20), bool); c[15:17, 5:15] = True
>>> rois = ROIList([ROI(a, label="a"), ROI(b, label="b"), ROI(c, label="c")])
>>> merged = MergeOverlapping(threshold=0.5).apply(rois)
>>> [(r.label, r.size) for r in merged]
[('a', 47), ('c', 20)]
>>> [r.label for r in CircularityFilter(0.5).apply(merged)]
['a']
"""

from __future__ import annotations

import abc
import dataclasses
import heapq
import math
import numbers
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage, sparse

from ..roi import ROI, NonBooleanMask, ROIList, mask2poly
from .base import PostProcessingStep

if TYPE_CHECKING:
    from ..dataset import ImagingDataset

__all__ = [
    "CircularityFilter",
    "MergeOverlapping",
    "ROIFilter",
    "SizeFilter",
    "SmoothROIBoundaries",
    "SparseROIsFromMasks",
    "circularity",
]


# ---------------------------------------------------------------------------------------
# Parameter and input checks
# ---------------------------------------------------------------------------------------
def _as_int(owner: str, name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int ``>= minimum`` or raise a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral) and not (
        math.isfinite(float(value)) and float(value).is_integer()
    ):
        raise ValueError(f"{owner}: {name} must be a whole number, got {value!r}")
    ivalue = int(value)
    if ivalue < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value!r}")
    return ivalue


def _as_float(
    owner: str, name: str, value: Any, minimum: float, maximum: float = math.inf
) -> float:
    """Return ``value`` as a float in ``[minimum, maximum]`` or raise a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    fvalue = float(value)
    if math.isnan(fvalue) or not minimum <= fvalue <= maximum:
        bounds = f">= {minimum}" if maximum == math.inf else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{owner}: {name} must be {bounds}, got {value!r}")
    return fvalue


def _as_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def _check_rois(rois: Any, owner: str) -> list[ROI]:
    """Return the ROIs of ``rois`` as a list, or raise a TypeError naming the bad item."""
    if isinstance(rois, ROI):
        raise TypeError(f"{owner}.apply expects an ROIList (or a list of ROIs), got one ROI")
    if isinstance(rois, (str, bytes, dict, np.ndarray)) or not isinstance(rois, Iterable):
        raise TypeError(
            f"{owner}.apply expects an ROIList (or a list of ROIs), got {type(rois).__name__}"
        )
    items = list(rois)
    for k, roi in enumerate(items):
        if not isinstance(roi, ROI):
            raise TypeError(f"{owner}.apply: item {k} is a {type(roi).__name__}, not an ROI")
    return items


def _name(roi: ROI, k: int | None) -> str:
    where = "ROI" if k is None else f"ROI {k}"
    return f"{where} ({roi.label!r})" if roi.label is not None else where


def _roi_planes(roi: ROI, k: int | None, owner: str) -> list[sparse.csr_matrix]:
    """Per-plane masks of an ROI; a polygon ROI without ``im_shape`` gets one that fits."""
    if roi.kind == "polygons" and roi.im_shape is None:
        polys = roi.polygon_arrays
        n_planes = max(int(p[0, 2]) for p in polys) + 1
        rows = max(1, max(math.ceil(p[:, 1].max()) for p in polys))
        cols = max(1, max(math.ceil(p[:, 0].max()) for p in polys))
        try:
            return ROI(polygons=polys, im_shape=(n_planes, rows, cols)).mask
        except ValueError as err:
            raise ValueError(f"{owner}: {_name(roi, k)} cannot be rasterised: {err}") from None
    return roi.mask


def _plane_outlines(plane: sparse.spmatrix, z: int) -> list[np.ndarray]:
    """Return the closed rings ``(N + 1, 3)`` of one 0/1 mask plane, as :func:`mask2poly`.

    The plane is cropped to its pixels' bounding box first (``mask2poly`` on the whole
    image costs far more); the contours are the same, shifted back.
    """
    coo = sparse.coo_matrix(plane)
    nonzero = coo.data != 0
    rows, cols, data = coo.row[nonzero], coo.col[nonzero], coo.data[nonzero]
    if rows.size == 0:
        return []
    r0, c0 = int(rows.min()), int(cols.min())
    crop = np.zeros((int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1))
    crop[rows - r0, cols - c0] = data
    rings = []
    for poly in mask2poly(crop).geoms:
        ring = np.asarray(poly.exterior.coords, dtype=float)
        ring[:, 0] += c0
        ring[:, 1] += r0
        ring[:, 2] = z
        rings.append(ring)
    return rings


def _outlines(roi: ROI, k: int, owner: str) -> list[np.ndarray]:
    """``roi.coords`` (closed rings), computed plane by plane on cropped masks.

    Raises
    ------
    NonBooleanMask
        For a mask with weights other than 0 and 1 (it has no outline).
    """
    if roi.kind == "polygons":
        return roi.coords
    planes = roi.mask
    for plane in planes:
        if plane.nnz and not np.all((plane.data == 0) | (plane.data == 1)):
            raise NonBooleanMask(
                f"{owner}: {_name(roi, k)} has a weighted mask, which has no outline; "
                f"make boolean ROIs first (e.g. with SparseROIsFromMasks)"
            )
    return [ring for z, plane in enumerate(planes) for ring in _plane_outlines(plane, z)]


# ---------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------
class _PredicateFilter(PostProcessingStep):
    """A step keeping the ROIs for which :meth:`keep` is true (in their order)."""

    def _validate(self) -> None:
        """Check (and normalise) the parameters."""

    @abc.abstractmethod
    def keep(self, roi: ROI) -> bool:
        """Return whether ``roi`` passes the filter."""

    def apply(self, rois: ROIList, dataset: ImagingDataset | None = None) -> ROIList:
        """Return copies of the ROIs that pass the filter, in their original order.

        Parameters
        ----------
        rois : ROIList
            ROIs to filter.
        dataset : ImagingDataset, optional
            Not used.

        Returns
        -------
        ROIList
        """
        self._validate()
        items = _check_rois(rois, type(self).__name__)
        out = []
        for k, roi in enumerate(items):
            try:
                passed = self.keep(roi)
            except Exception as err:
                err.add_note(f"{type(self).__name__}: while testing {_name(roi, k)}")
                raise
            if passed:
                out.append(roi.copy())
        return ROIList(out)


@dataclasses.dataclass
class ROIFilter(_PredicateFilter):
    """Keep the ROIs for which ``func(roi)`` is true (SIMA's ``ROIFilter``).

    A function cannot be edited in a GUI panel; for the common cases use the ready-made
    filters :class:`SizeFilter` and :class:`CircularityFilter`.

    Parameters
    ----------
    func : callable
        ``func(roi) -> bool``; its result is interpreted with :func:`bool`.

    Raises
    ------
    TypeError
        If ``func`` is not callable.

    Examples
    --------
    >>> big = ROIFilter(lambda roi: roi.size >= 20)
    """

    func: Callable[[ROI], Any]

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if not callable(self.func):
            raise TypeError(f"ROIFilter: func must be a callable taking an ROI, got {self.func!r}")

    def keep(self, roi: ROI) -> bool:
        """Return ``bool(func(roi))``."""
        return bool(self.func(roi))


@dataclasses.dataclass
class SizeFilter(_PredicateFilter):
    """Keep the ROIs whose pixel count (over all planes) lies in a range.

    The same as ``ROIFilter(lambda roi: min_size <= roi.size <= max_size)``, with
    parameters a GUI can edit.  ``SizeFilter(min_size=n)`` is SIMA's
    ``ROIFilter(lambda roi: roi.size >= n)`` used by ``PlaneCA1PC``.

    Parameters
    ----------
    min_size : int
        Smallest number of pixels kept (inclusive).
    max_size : int or None
        Largest number of pixels kept (inclusive); ``None`` for no upper bound.

    Raises
    ------
    ValueError
        For a negative ``min_size`` or ``max_size < min_size``.
    """

    min_size: int = 20
    max_size: int | None = None

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        self.min_size = _as_int("SizeFilter", "min_size", self.min_size, 0)
        if self.max_size is not None:
            self.max_size = _as_int("SizeFilter", "max_size", self.max_size, 0)
            if self.max_size < self.min_size:
                raise ValueError(
                    f"SizeFilter: max_size ({self.max_size}) must be >= min_size "
                    f"({self.min_size}) or None"
                )

    def keep(self, roi: ROI) -> bool:
        """Return whether ``min_size <= size <= max_size``."""
        size = sum(int(p.count_nonzero()) for p in _roi_planes(roi, None, "SizeFilter"))
        return size >= self.min_size and (self.max_size is None or size <= self.max_size)


def circularity(roi: ROI) -> float:
    """Return an ROI's circularity ``4 pi A / P**2`` as SIMA's ``CircularityFilter``.

    ``A`` is the number of pixels of the plane with the most pixels (plane 0 for a
    single-plane ROI, as in SIMA) and ``P`` the total length of the outlines
    :func:`~napari_sima.core.mask2poly` finds for that plane's pixels.  Outlines pass
    through edge midpoints (cut corners), so a disc scores about 0.9 to 1, a single
    pixel ``pi / 2`` and a 2-pixel-wide line much less than 0.5.  SIMA used only the
    first outline, so an ROI in several pieces (e.g. a ``MergeOverlapping`` union)
    scored far above 1 and always passed; counting every outline makes a fragmented
    ROI score low, as a compactness measure should (one piece: same as SIMA).

    Parameters
    ----------
    roi : ROI
        Any ROI; a weighted mask counts its nonzero pixels.

    Returns
    -------
    float
        ``nan`` for an ROI without pixels.

    Examples
    --------
    >>> from napari_sima.core import ROI
    >>> round(circularity(ROI(np.ones((1, 1), bool))), 4)  # a diamond outline
    1.5708
    """
    if not isinstance(roi, ROI):
        raise TypeError(f"circularity expects an ROI, got {type(roi).__name__}")
    planes = _roi_planes(roi, None, "circularity")
    counts = [int(p.count_nonzero()) for p in planes]
    if not counts or max(counts) == 0:
        return math.nan
    z = int(np.argmax(counts))  # the first plane with the most pixels
    support = (planes[z] != 0).astype(float)
    rings = _plane_outlines(support, z)
    if not rings:
        return math.nan
    perimeter = sum(float(np.hypot(*np.diff(r[:, :2], axis=0).T).sum()) for r in rings)
    return 4.0 * math.pi * counts[z] / perimeter**2


@dataclasses.dataclass(init=False)
class CircularityFilter(_PredicateFilter):
    """Keep ROIs whose :func:`circularity` is above a threshold (strictly).

    Parameters
    ----------
    circularity_threshold : float
        ROIs with ``circularity(roi) > circularity_threshold`` are kept.
    circularity_threhold : float, optional
        SIMA's misspelt keyword, accepted as an alias (keyword only).

    Raises
    ------
    ValueError
        For a negative or NaN threshold, or when both spellings are given.

    Notes
    -----
    SIMA measured plane 0 only; for multi-plane ROIs the plane with the most pixels
    is measured (the same plane 0 for single-plane ROIs).  ROIs without pixels are
    removed (SIMA failed on them).
    """

    circularity_threshold: float = 0.5

    def __init__(
        self,
        circularity_threshold: float | None = None,
        *,
        circularity_threhold: float | None = None,
    ) -> None:
        if circularity_threshold is not None and circularity_threhold is not None:
            raise ValueError(
                "CircularityFilter: give circularity_threshold or SIMA's spelling "
                "circularity_threhold, not both"
            )
        if circularity_threshold is None:
            circularity_threshold = circularity_threhold
        if circularity_threshold is None:
            circularity_threshold = 0.5
        self.circularity_threshold = circularity_threshold
        self._validate()

    def _validate(self) -> None:
        self.circularity_threshold = _as_float(
            "CircularityFilter", "circularity_threshold", self.circularity_threshold, 0.0
        )

    def keep(self, roi: ROI) -> bool:
        """Return whether the ROI's circularity exceeds the threshold."""
        value = circularity(roi)
        return not math.isnan(value) and value > self.circularity_threshold


# ---------------------------------------------------------------------------------------
# SparseROIsFromMasks
# ---------------------------------------------------------------------------------------
def _neighbour_test(f: np.ndarray) -> np.ndarray:
    """Zero the pixels of each plane of ``f >= 0`` without a nonzero 4-neighbour.

    Border pixels (first/last row and column of each plane) are always zeroed.
    """
    out = np.zeros_like(f)
    neighbours = f[:, :-2, 1:-1] + f[:, 2:, 1:-1] + f[:, 1:-1, :-2] + f[:, 1:-1, 2:]
    centre = f[:, 1:-1, 1:-1]
    out[:, 1:-1, 1:-1] = np.where(neighbours > 0, centre, 0.0)
    return out


def _zero_below_two_std(f: np.ndarray) -> None:
    """In place, per plane: zero the values below twice the plane's standard deviation."""
    f[f < 2.0 * f.std(axis=(1, 2), keepdims=True)] = 0.0


def _static(g: np.ndarray) -> np.ndarray:
    """Return each plane's roughness (SIMA's "static").

    ``2 / (Y X)`` times the summed absolute differences of each interior pixel with its
    8 neighbours.
    """
    _, rows, cols = g.shape
    total = np.zeros(g.shape[0])
    if rows < 3 or cols < 3:
        return total
    centre = g[:, 1:-1, 1:-1]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                shifted = g[:, 1 + dy : rows - 1 + dy, 1 + dx : cols - 1 + dx]
                total += np.abs(centre - shifted).sum(axis=(1, 2))
    return 2.0 * total / (rows * cols)


def _sparse_filter(array: np.ndarray, smooth_size: int) -> tuple[np.ndarray, float]:
    """Clean one non-negative ``(z, y, x)`` array; return it and its mean static.

    The returned array is ``array`` thresholded at twice each plane's standard
    deviation, then (when ``smooth_size > 0``) stripped of pixels without a nonzero
    4-neighbour.  The static is measured after ``smooth_size`` rounds of
    neighbour test, Gaussian smoothing, normalisation and re-thresholding, and
    averaged over the planes that still have pixels (``nan`` when none has).
    """
    f = np.array(array, dtype=float)
    _zero_below_two_std(f)
    kept = f
    g = f
    for step in range(smooth_size):
        g = _neighbour_test(g)
        if step == 0:
            kept = g
        g = g + ndimage.gaussian_filter(g, sigma=(0, 1, 1))
        peak = g.max(axis=(1, 2), keepdims=True)
        g = np.divide(g, peak, out=np.zeros_like(g), where=peak > 0)
        _zero_below_two_std(g)
    alive = g.max(axis=(1, 2)) > 0
    if not alive.any():
        return kept, math.nan
    return kept, float(_static(g)[alive].mean())


def _bool_planes(flat: np.ndarray, shape: tuple[int, int, int]) -> list[sparse.csr_matrix]:
    """Boolean per-plane CSR masks from sorted flat ``(z, y, x)`` pixel indices."""
    n_planes, rows, cols = shape
    per_plane = rows * cols
    z, rest = np.divmod(flat, per_plane)
    bounds = np.searchsorted(z, np.arange(n_planes + 1))
    out = []
    for p in range(n_planes):
        idx = rest[bounds[p] : bounds[p + 1]]
        r, c = np.divmod(idx, cols)
        out.append(
            sparse.csr_matrix(
                (np.ones(idx.size, dtype=bool), (r, c)), shape=(rows, cols), dtype=bool
            )
        )
    return out


def _blob_pixels(
    array: np.ndarray, smooth_size: int, static_threshold: float, min_size: int
) -> list[np.ndarray]:
    """Blobs of one non-negative array that passes the static test.

    Returns
    -------
    list of ndarray
        Sorted flat ``(z, y, x)`` pixel indices of each connected blob of at least
        ``max(min_size, 1)`` pixels, in :func:`scipy.ndimage.label` order; empty when
        the array is rejected.
    """
    kept, static = _sparse_filter(array, smooth_size)
    if math.isnan(static) or not static < static_threshold:
        return []
    labels, n_labels = ndimage.label(kept > 0)
    if n_labels == 0:
        return []
    flat_labels = labels.ravel()
    pixels = np.flatnonzero(flat_labels)
    ids = flat_labels[pixels]
    order = np.argsort(ids, kind="stable")  # pixels of each blob, in raster order
    pixels, ids = pixels[order], ids[order]
    starts = np.searchsorted(ids, np.arange(1, n_labels + 2))
    blobs = [pixels[starts[k] : starts[k + 1]] for k in range(n_labels)]
    return [b for b in blobs if b.size >= max(min_size, 1)]


def _blob_job(
    job: tuple[int, np.ndarray], smooth_size: int, static_threshold: float, min_size: int
) -> tuple[int, tuple[int, ...], list[np.ndarray]]:
    """``(source index, shape, blobs)`` of one ``(source index, array)`` job."""
    k, array = job
    return k, array.shape, _blob_pixels(array, smooth_size, static_threshold, min_size)


def _thread_map(
    func: Callable[..., Any], jobs: Iterable[Any], n_workers: int, **kwargs: Any
) -> Iterator[Any]:
    """``func(job, **kwargs)`` for each job in worker threads, results in job order.

    At most ``2 * n_workers`` jobs are in flight, so memory stays bounded.
    """
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="sima-postprocess")
    pending: deque[Any] = deque()
    try:
        for job in jobs:
            pending.append(executor.submit(func, job, **kwargs))
            if len(pending) >= 2 * n_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass
class SparseROIsFromMasks(PostProcessingStep):
    """Turn weighted masks (e.g. ICA components) into boolean ROIs, one per blob.

    For each input ROI, its dense ``(z, y, x)`` mask is split by sign
    (``max(a, 0)`` and ``max(-a, 0)``) or, with ``sign_split=False``, replaced by
    ``|a|``.  Each of these arrays is cleaned plane by plane: values below twice the
    plane's standard deviation are zeroed, then pixels without a nonzero 4-neighbour
    (and border pixels) are removed.  Its "static" (a roughness measure: the summed
    absolute differences of each interior pixel with its 8 neighbours, times
    ``2 / (rows * columns)``) is measured after ``smooth_size`` rounds of neighbour
    test, Gaussian smoothing (``g + gaussian(g, sigma=1)``), normalisation to a
    maximum of 1 and re-thresholding at twice the standard deviation.  Arrays whose
    static, averaged over planes, is below ``static_threshold`` are kept; their
    connected blobs (face connectivity, across planes too) of at least ``min_size``
    pixels become boolean-mask ROIs.

    Parameters
    ----------
    min_size : int
        Smallest blob (pixels) that becomes an ROI.
    static_threshold : float
        Arrays whose mean static is not below this are rejected as noise.
    smooth_size : int
        Number of smoothing rounds before the static is measured; with 0, the
        neighbour test is skipped too (as in SIMA).
    sign_split : bool
        Treat positive and negative weights as separate arrays (else use ``|a|``).
    n_processes : int
        Number of masks cleaned at the same time, in worker *threads* (SIMA used
        processes).  The result does not depend on it.  The NumPy parts run in
        parallel, SciPy's Gaussian filter does not, so 2 workers were measured about
        1.2 to 1.3 times faster; a process pool would need the ``if __name__ == "__main__"``
        idiom in every user script and a second to start, for a job that takes about
        35 ms per 512 x 512 mask.

    Raises
    ------
    ValueError
        For negative sizes, a negative/NaN threshold or ``n_processes < 1``.

    Notes
    -----
    Differences from SIMA 1.3.2 (its bugs, fixed here):

    * The neighbour test uses the real lower neighbour; SIMA summed row 2 of the plane
      instead of the row below each pixel.
    * A multi-plane array is accepted when the static averaged over its planes (those
      with pixels left after smoothing) is below the threshold; SIMA used only the
      last plane's static.  An array with no pixel left is rejected (SIMA: NaN).
    * Vectorised (numpy/scipy, all planes at once) instead of per-pixel Python loops;
      the neighbour test reads each pass's input, not pixels already cleared in it.

    Output ROIs carry the tags of the ROI they came from (no label or id: one source
    may give several cells); their ``im_shape`` is the source's shape.  They come in
    source order, the positive part's blobs before the negative part's, each in
    :func:`scipy.ndimage.label` (raster) order.
    """

    min_size: int = 50
    static_threshold: float = 0.5
    smooth_size: int = 4
    sign_split: bool = True
    n_processes: int = 1

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        owner = "SparseROIsFromMasks"
        self.min_size = _as_int(owner, "min_size", self.min_size, 0)
        self.static_threshold = _as_float(owner, "static_threshold", self.static_threshold, 0.0)
        self.smooth_size = _as_int(owner, "smooth_size", self.smooth_size, 0)
        self.sign_split = _as_bool(owner, "sign_split", self.sign_split)
        self.n_processes = _as_int(owner, "n_processes", self.n_processes, 1)

    def apply(self, rois: ROIList, dataset: ImagingDataset | None = None) -> ROIList:
        """Return the boolean ROIs found in the masks of ``rois``.

        Parameters
        ----------
        rois : ROIList
            ROIs with (weighted) masks.
        dataset : ImagingDataset, optional
            Not used.

        Returns
        -------
        ROIList
        """
        self._validate()
        items = _check_rois(rois, "SparseROIsFromMasks")
        for k, roi in enumerate(items):  # fail early, before any work
            _roi_planes(roi, k, "SparseROIsFromMasks")
        settings = {
            "smooth_size": self.smooth_size,
            "static_threshold": self.static_threshold,
            "min_size": self.min_size,
        }
        n_jobs = len(items) * (2 if self.sign_split else 1)
        workers = min(self.n_processes, n_jobs)
        if workers > 1:
            results = _thread_map(_blob_job, self._jobs(items), workers, **settings)
        else:
            results = (_blob_job(job, **settings) for job in self._jobs(items))
        out: list[ROI] = []
        for k, shape, blobs in results:
            tags = items[k].tags
            for blob in blobs:
                out.append(ROI(mask=_bool_planes(blob, shape), im_shape=shape, tags=set(tags)))
        return ROIList(out)

    def _jobs(self, items: list[ROI]) -> Iterator[tuple[int, np.ndarray]]:
        """``(source index, non-negative array)`` for each non-empty signed part."""
        for k, roi in enumerate(items):
            planes = _roi_planes(roi, k, "SparseROIsFromMasks")
            dense = np.stack([p.toarray() for p in planes]).astype(float, copy=False)
            if self.sign_split:
                parts = [np.maximum(dense, 0.0), np.maximum(-dense, 0.0)]
            else:
                parts = [np.abs(dense)]
            for part in parts:
                if part.any():
                    yield k, part


# ---------------------------------------------------------------------------------------
# SmoothROIBoundaries
# ---------------------------------------------------------------------------------------
def _ring_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@dataclasses.dataclass
class SmoothROIBoundaries(PostProcessingStep):
    """Simplify ROI outlines with the Douglas-Peucker algorithm.

    Every outline (closed ring, closing vertex counted) with more than ``min_verts``
    vertices is simplified with :func:`skimage.measure.approximate_polygon`; when the
    result has fewer than ``min_verts`` vertices (or encloses no area) the original
    outline is kept.  Each outline stays on its plane.

    Parameters
    ----------
    tolerance : float
        Largest distance (pixels) between the simplified and the original outline.
    min_verts : int
        Outlines with at most this many vertices are left alone, and simplified
        outlines with fewer are rejected.
    n_processes : int
        Accepted for SIMA compatibility and checked (``>= 1``); simplification is fast
        enough to run in this process.

    Raises
    ------
    ValueError
        For a negative tolerance or ``min_verts``, ``n_processes < 1``.
    NonBooleanMask
        From :meth:`apply`, for an ROI with a weighted mask (it has no outline).

    Notes
    -----
    The result is polygon ROIs with the input's ``im_shape``; unlike SIMA 1.3.2,
    label, id and tags are kept.  An ROI without pixels is returned unchanged (a copy).
    Mask outlines come from :func:`~napari_sima.core.mask2poly`, so holes become
    separate (filled) polygons, as in SIMA.
    """

    tolerance: float = 0.5
    min_verts: int = 8
    n_processes: int = 1

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        owner = "SmoothROIBoundaries"
        self.tolerance = _as_float(owner, "tolerance", self.tolerance, 0.0, math.inf)
        self.min_verts = _as_int(owner, "min_verts", self.min_verts, 0)
        self.n_processes = _as_int(owner, "n_processes", self.n_processes, 1)

    def apply(self, rois: ROIList, dataset: ImagingDataset | None = None) -> ROIList:
        """Return polygon ROIs with simplified outlines.

        Parameters
        ----------
        rois : ROIList
            Polygon ROIs or ROIs with boolean masks.
        dataset : ImagingDataset, optional
            Not used.

        Returns
        -------
        ROIList
        """
        from skimage.measure import approximate_polygon

        self._validate()
        items = _check_rois(rois, "SmoothROIBoundaries")
        out = []
        for k, roi in enumerate(items):
            rings = _outlines(roi, k, "SmoothROIBoundaries")
            if not rings:
                out.append(roi.copy())
                continue
            polygons = []
            for ring in rings:
                new = ring
                if len(ring) > self.min_verts:
                    xy = approximate_polygon(ring[:, :2], self.tolerance)
                    if len(xy) >= max(self.min_verts, 4) and _ring_area(xy) > 0:
                        new = np.column_stack([xy, np.full(len(xy), ring[0, 2])])
                polygons.append(new)
            out.append(
                ROI(
                    polygons=polygons,
                    im_shape=roi.im_shape,
                    label=roi.label,
                    id=roi.id,
                    tags=set(roi.tags),
                )
            )
        return ROIList(out)


# ---------------------------------------------------------------------------------------
# MergeOverlapping
# ---------------------------------------------------------------------------------------
def _flat_pixels(planes: Sequence[sparse.csr_matrix], shape: tuple[int, int, int]) -> np.ndarray:
    """Sorted flat ``(z, y, x)`` indices (in ``shape``) of the nonzero pixels of masks."""
    _, rows, cols = shape
    chunks = []
    for z, plane in enumerate(planes):
        coo = plane.tocoo()
        nonzero = coo.data != 0
        chunks.append((z * rows + coo.row[nonzero].astype(np.int64)) * cols + coo.col[nonzero])
    flat = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    return np.unique(flat)


@dataclasses.dataclass
class MergeOverlapping(PostProcessingStep):
    """Merge ROIs that overlap by more than a fraction of the smaller one.

    SIMA's greedy rule, in index order: for each ROI ``i`` still present, for each
    other ROI ``j`` still present, in increasing ``j``: when the pixels they share
    are more than ``threshold * min(size_i, size_j)`` (sizes of the current, possibly
    already merged, masks), ``i`` becomes the union and ``j`` is removed.  ``j`` runs
    over all indices, so ``i`` may absorb an earlier ROI its growing union now
    overlaps; an ROI passed over is not tested again.

    Parameters
    ----------
    threshold : float
        Fraction in ``[0, 1]`` of the smaller ROI's pixels that must be shared.  SIMA
        has no default; 0.5 (the value of SIMA's own test) is used here so a GUI
        can show one.

    Raises
    ------
    ValueError
        If ``threshold`` is not in ``[0, 1]``.

    Notes
    -----
    The merged ROI takes the place of ``i`` and keeps ``i``'s label and id; its tags
    are the union of the merged ROIs' tags (as ROI Buddy's merge); its mask is boolean
    with an ``im_shape`` covering all the ROIs (SIMA dropped label, id and tags).
    ROIs not merged are returned as copies, unchanged.  Masks are compared by their
    nonzero pixels, on all planes.

    Only pairs that share pixels can merge, so the candidates come from the sparse
    overlap matrix ``M M^T`` of the ROI x pixel matrix ``M``: hundreds of ROIs merge
    in milliseconds, with exactly the result of the quadratic definition.
    """

    threshold: float = 0.5

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        self.threshold = _as_float("MergeOverlapping", "threshold", self.threshold, 0.0, 1.0)

    def apply(self, rois: ROIList, dataset: ImagingDataset | None = None) -> ROIList:
        """Return the ROIs with overlapping ones merged.

        Parameters
        ----------
        rois : ROIList
            ROIs to merge.
        dataset : ImagingDataset, optional
            Not used.

        Returns
        -------
        ROIList
        """
        self._validate()
        items = _check_rois(rois, "MergeOverlapping")
        n = len(items)
        if n == 0:
            return ROIList([])
        planes = [_roi_planes(roi, k, "MergeOverlapping") for k, roi in enumerate(items)]
        shape = (
            max(len(p) for p in planes),
            max(m.shape[0] for p in planes for m in p),
            max(m.shape[1] for p in planes for m in p),
        )
        pixels = [_flat_pixels(p, shape) for p in planes]
        neighbours = _overlap_graph(pixels, int(np.prod(shape, dtype=np.int64)))

        alive = np.ones(n, dtype=bool)
        owner = np.arange(n)  # original ROI -> index of the ROI now holding it
        members: list[list[int]] = [[k] for k in range(n)]
        for i in range(n):
            if not alive[i]:
                continue
            candidates = {int(owner[m]) for m in neighbours[i]} - {i}
            heap = sorted(candidates)
            while heap:
                j = heapq.heappop(heap)
                if not alive[j]:
                    continue
                shared = np.intersect1d(pixels[i], pixels[j], assume_unique=True).size
                if shared > self.threshold * min(pixels[i].size, pixels[j].size):
                    pixels[i] = np.union1d(pixels[i], pixels[j])
                    absorbed = members[j]
                    members[i].extend(absorbed)
                    members[j] = []
                    owner[absorbed] = i
                    alive[j] = False
                    # the union may now overlap ROIs after j (those before were passed)
                    for m in absorbed:
                        for r in owner[neighbours[m]]:
                            r = int(r)
                            if r > j and r != i and r not in candidates:
                                candidates.add(r)
                                heapq.heappush(heap, r)

        out = []
        for i in np.flatnonzero(alive):
            roi = items[i]
            if len(members[i]) == 1:
                out.append(roi.copy())
                continue
            tags: set[str] = set()
            for m in members[i]:
                tags |= items[m].tags
            out.append(
                ROI(
                    mask=_bool_planes(pixels[i], shape),
                    im_shape=shape,
                    label=roi.label,
                    id=roi.id,
                    tags=tags,
                )
            )
        return ROIList(out)


def _overlap_graph(pixels: list[np.ndarray], n_pixels: int) -> list[np.ndarray]:
    """For each ROI, the indices of the other ROIs sharing at least one pixel."""
    n = len(pixels)
    sizes = np.array([p.size for p in pixels])
    rows = np.repeat(np.arange(n), sizes)
    cols = np.concatenate(pixels) if n else np.empty(0, dtype=np.int64)
    m = sparse.csr_matrix(
        (np.ones(cols.size, dtype=np.int32), (rows, cols)), shape=(n, max(n_pixels, 1))
    )
    gram = (m @ m.T).tocsr()
    gram.eliminate_zeros()
    out = []
    for k in range(n):
        row = gram.indices[gram.indptr[k] : gram.indptr[k + 1]]
        out.append(row[row != k])
    return out
