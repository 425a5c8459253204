"""Score detected ROIs against true cells: IoU, one-to-one matching, precision / recall / F1.

:func:`match_rois` is the measure behind the segmentation quality table
(``benchmarks/bench_segment_quality.py``, ``docs/segmentation.md``):

1. every ROI becomes a column of a sparse boolean ``pixels x ROIs`` matrix over the
   flattened ``(z, y, x)`` volume (multi-plane ROIs are handled like any other);
2. intersections of all detected/true pairs come from one sparse matrix product,
   ``IoU = |A and B| / |A or B|``;
3. :func:`scipy.optimize.linear_sum_assignment` pairs detected ROIs with true cells
   one-to-one, maximising first the number of pairs with ``IoU >= iou_threshold`` and,
   among those pairings, the sum of their IoUs (the Hungarian matching used in
   cell-segmentation benchmarks; a greedy "best IoU first" pairing can miss matches
   when cells overlap);
4. precision = matches / detected, recall = matches / true cells,
   F1 = 2 matches / (detected + true cells).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from ..roi import ROI

__all__ = ["MatchResult", "iou_matrix", "match_rois"]


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Outcome of :func:`match_rois`.

    Parameters
    ----------
    pairs : numpy.ndarray
        ``(n_matched, 2)`` int array of ``(detected index, true index)`` pairs, sorted
        by detected index.
    ious : numpy.ndarray
        ``(n_matched,)`` IoU of each pair (all ``>= iou_threshold``).
    iou : numpy.ndarray
        ``(n_detected, n_truth)`` IoU of every detected/true pair.
    iou_threshold : float
        The threshold the matches had to reach.
    n_detected, n_truth : int
        Number of detected ROIs and of true cells.

    Notes
    -----
    Undefined ratios are NaN: ``precision`` when nothing was detected, ``recall``
    when there is no true cell, ``f1`` when both are empty, ``median_iou`` when
    nothing matched.
    """

    pairs: NDArray[np.intp]
    ious: NDArray[np.float64]
    iou: NDArray[np.float64]
    iou_threshold: float
    n_detected: int
    n_truth: int

    @property
    def n_matched(self) -> int:
        """Number of matched pairs (true positives)."""
        return int(len(self.pairs))

    @property
    def false_positives(self) -> int:
        """Detected ROIs without a matching true cell."""
        return self.n_detected - self.n_matched

    @property
    def false_negatives(self) -> int:
        """True cells without a matching detected ROI."""
        return self.n_truth - self.n_matched

    @property
    def precision(self) -> float:
        """Fraction of detected ROIs that match a true cell (NaN if none detected)."""
        return self.n_matched / self.n_detected if self.n_detected else math.nan

    @property
    def recall(self) -> float:
        """Fraction of true cells that were found (NaN if there is no true cell)."""
        return self.n_matched / self.n_truth if self.n_truth else math.nan

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall, ``2 TP / (detected + truth)``."""
        total = self.n_detected + self.n_truth
        return 2.0 * self.n_matched / total if total else math.nan

    @property
    def median_iou(self) -> float:
        """Median IoU of the matched pairs (NaN if nothing matched)."""
        return float(np.median(self.ious)) if len(self.ious) else math.nan

    @property
    def unmatched_detected(self) -> NDArray[np.intp]:
        """Indices of the detected ROIs left unmatched (false positives)."""
        return np.setdiff1d(np.arange(self.n_detected), self.pairs[:, 0]).astype(np.intp)

    @property
    def unmatched_truth(self) -> NDArray[np.intp]:
        """Indices of the true cells left unmatched (false negatives)."""
        return np.setdiff1d(np.arange(self.n_truth), self.pairs[:, 1]).astype(np.intp)

    def todict(self) -> dict[str, Any]:
        """Return the scores as JSON-able values (NaN becomes ``None``).

        Returns
        -------
        dict
            ``n_detected``, ``n_truth``, ``n_matched``, ``precision``, ``recall``,
            ``f1``, ``median_iou``, ``iou_threshold``, ``pairs`` (list of
            ``[detected, truth]``) and ``ious``.
        """
        return {
            "n_detected": self.n_detected,
            "n_truth": self.n_truth,
            "n_matched": self.n_matched,
            "precision": _finite_or_none(self.precision),
            "recall": _finite_or_none(self.recall),
            "f1": _finite_or_none(self.f1),
            "median_iou": _finite_or_none(self.median_iou),
            "iou_threshold": float(self.iou_threshold),
            "pairs": [[int(d), int(t)] for d, t in self.pairs],
            "ious": [float(v) for v in self.ious],
        }

    def __repr__(self) -> str:
        return (
            f"<MatchResult: {self.n_matched} of {self.n_detected} detected / "
            f"{self.n_truth} true at IoU >= {self.iou_threshold:g}; "
            f"precision={self.precision:.3f} recall={self.recall:.3f} f1={self.f1:.3f} "
            f"median_iou={self.median_iou:.3f}>"
        )


RoiLike = ROI | np.ndarray | sparse.spmatrix | sparse.sparray


def iou_matrix(
    detected: Iterable[RoiLike] | np.ndarray, truth: Iterable[RoiLike] | np.ndarray
) -> NDArray[np.float64]:
    """Return the intersection-over-union of every detected/true pair.

    Parameters
    ----------
    detected, truth : ROIList, iterable of ROI / arrays, or numpy.ndarray
        See :func:`match_rois`.

    Returns
    -------
    numpy.ndarray
        ``(len(detected), len(truth))`` float64; 0 where a pair does not overlap
        (and where both masks are empty).

    Raises
    ------
    ValueError
        If the ROIs do not share the same image rows and columns, or a mask is not
        2-D / 3-D.
    """
    det_planes, det_shape = _planes_of("detected", detected)
    true_planes, true_shape = _planes_of("truth", truth)
    shape = _common_shape(det_shape, true_shape)
    a = _pixel_matrix(det_planes, shape)
    b = _pixel_matrix(true_planes, shape)
    return _iou(a, b)


def match_rois(
    detected: Iterable[RoiLike] | np.ndarray,
    truth: Iterable[RoiLike] | np.ndarray,
    iou_threshold: float = 0.5,
) -> MatchResult:
    """Match detected ROIs to true cells one-to-one and score the detection.

    Parameters
    ----------
    detected : ROIList, iterable of ROI / arrays, or numpy.ndarray
        The ROIs found by a segmentation. Each item is an :class:`~napari_sima.core.ROI`
        (its ``mask``; polygon ROIs need an ``im_shape``), a 2-D ``(y, x)`` or 3-D
        ``(z, y, x)`` array, or a 2-D sparse matrix. A single array is read as a stack:
        ``(n, y, x)`` or ``(n, z, y, x)``.
    truth : same as ``detected``
        The true cells.
    iou_threshold : float
        Minimum intersection-over-union of a match, in ``(0, 1]`` (default 0.5, the
        usual criterion; above 0.5 a match is unique whenever true cells do not
        overlap).

    Returns
    -------
    MatchResult
        Pairs and their IoUs, the full IoU matrix, ``precision``, ``recall``, ``f1``,
        ``median_iou`` and counts; ``todict()`` gives JSON-able values.

    Raises
    ------
    ValueError
        If the threshold is outside ``(0, 1]``, the ROIs of the two lists (or of one
        list) have different image rows/columns, or a mask is malformed.
    TypeError
        If an item is neither an ROI nor an array.

    Notes
    -----
    * Masks are binarised: a pixel belongs to an ROI where its mask weight is
      ``> 0``. Weighted (float) masks such as STICA's raw component maps therefore
      count their positive pixels; zero and negative weights are outside.
    * ROIs may span different numbers of planes (e.g. a single-plane ROI compared
      with a volume); missing planes are empty. Rows and columns must agree.
    * An empty ROI (no pixel ``> 0``) is a detection/true cell that matches nothing.
    * The assignment maximises the number of matches at the threshold first, then
      the sum of their IoUs, so a cell is never left unmatched just because its
      neighbour's detection had a slightly higher IoU with it.
    """
    threshold = _as_threshold(iou_threshold)
    iou = iou_matrix(detected, truth)
    n_det, n_true = iou.shape
    pairs = np.empty((0, 2), dtype=np.intp)
    if n_det and n_true:
        eligible = iou >= threshold
        if eligible.any():
            # one more match is always worth more than any change in the IoU sum
            n = min(n_det, n_true)
            score = np.where(eligible, 1.0 + iou / (n + 1.0), 0.0)
            rows, cols = linear_sum_assignment(score, maximize=True)
            keep = eligible[rows, cols]
            pairs = np.column_stack([rows[keep], cols[keep]]).astype(np.intp)
    ious = iou[pairs[:, 0], pairs[:, 1]] if len(pairs) else np.empty(0)
    return MatchResult(
        pairs=pairs,
        ious=np.asarray(ious, dtype=np.float64),
        iou=iou,
        iou_threshold=threshold,
        n_detected=n_det,
        n_truth=n_true,
    )


# ---------------------------------------------------------------------------------------
# helpers


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _as_threshold(value: Any) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {value!r}")
    return threshold


def _planes_of(name: str, rois: Any) -> tuple[list[list[sparse.csr_matrix]], tuple[int, int]]:
    """Turn the inputs into per-ROI lists of boolean CSR planes; check rows/columns."""
    if isinstance(rois, ROI) or sparse.issparse(rois):
        raise TypeError(
            f"{name}: expected a list of ROIs or a stack of masks, got a single "
            f"{type(rois).__name__}; wrap it in a list"
        )
    if isinstance(rois, np.ndarray):
        if rois.ndim not in (3, 4):
            raise ValueError(
                f"{name}: a mask stack must be (n, y, x) or (n, z, y, x), got an array of "
                f"shape {rois.shape}"
            )
        items: list[Any] = list(rois)
    else:
        try:
            items = list(rois)
        except TypeError:
            raise TypeError(
                f"{name}: expected a list of ROIs or a stack of masks, got {type(rois).__name__}"
            ) from None
    out: list[list[sparse.csr_matrix]] = []
    shape: tuple[int, int] | None = None
    first = -1
    for k, item in enumerate(items):
        planes = _item_planes(name, k, item)
        if not planes:
            out.append(planes)
            continue
        rc = planes[0].shape
        if any(p.shape != rc for p in planes):
            raise ValueError(f"{name}[{k}]: mask planes have different shapes")
        if shape is None:
            shape, first = rc, k
        elif rc != shape:
            raise ValueError(
                f"{name}[{k}] covers an image of {rc[0]}x{rc[1]} pixels but {name}[{first}] "
                f"covers {shape[0]}x{shape[1]}; all ROIs must share rows and columns"
            )
        out.append(planes)
    return out, shape if shape is not None else (0, 0)


def _item_planes(name: str, k: int, item: Any) -> list[sparse.csr_matrix]:
    what = f"{name}[{k}]"
    if isinstance(item, ROI):
        try:
            planes = item.mask
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
    elif sparse.issparse(item):
        if item.ndim != 2:
            raise ValueError(f"{what}: a sparse mask must be 2-D (y, x)")
        planes = [item]
    else:
        try:
            arr = np.asarray(item)
        except Exception:  # noqa: BLE001 - report what was passed
            raise TypeError(
                f"{what}: expected an ROI or a mask array, got {type(item).__name__}"
            ) from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(
                f"{what}: expected an ROI or a numeric mask array, got "
                f"{type(item).__name__} of dtype {arr.dtype}"
            )
        if arr.ndim == 2:
            planes = [arr]
        elif arr.ndim == 3:
            planes = list(arr)
        else:
            raise ValueError(
                f"{what}: a mask must be 2-D (y, x) or 3-D (z, y, x), got shape {arr.shape}"
            )
    out = []
    for plane in planes:
        csr = sparse.csr_matrix(plane)
        if csr.dtype.kind == "f" and csr.nnz and np.isnan(csr.data).any():
            raise ValueError(f"{what}: mask has NaN weights")
        out.append(sparse.csr_matrix(csr > 0, dtype=bool))
    return out


def _common_shape(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    if a == (0, 0):
        return b
    if b == (0, 0) or a == b:
        return a
    raise ValueError(
        f"detected ROIs cover an image of {a[0]}x{a[1]} pixels but the true ROIs cover "
        f"{b[0]}x{b[1]}; compare ROIs of the same field of view"
    )


def _pixel_matrix(rois: list[list[sparse.csr_matrix]], shape: tuple[int, int]) -> sparse.csc_matrix:
    """Sparse ``(planes * rows * cols) x n`` 0/1 matrix: one column per ROI."""
    rows, cols = shape
    plane_size = rows * cols
    indices, indptr = [], [0]
    for planes in rois:
        pix = []
        for z, plane in enumerate(planes):
            coo = plane.tocoo()
            if coo.nnz:
                pix.append(z * plane_size + coo.row.astype(np.int64) * cols + coo.col)
        flat = np.unique(np.concatenate(pix)) if pix else np.empty(0, np.int64)
        indices.append(flat)
        indptr.append(indptr[-1] + len(flat))
    n_planes = max((len(p) for p in rois), default=1)
    idx = np.concatenate(indices) if indices else np.empty(0, np.int64)
    data = np.ones(len(idx), dtype=np.int64)
    return sparse.csc_matrix(
        (data, idx, np.asarray(indptr, dtype=np.int64)),
        shape=(max(n_planes, 1) * plane_size, len(rois)),
    )


def _iou(a: sparse.csc_matrix, b: sparse.csc_matrix) -> NDArray[np.float64]:
    n_a, n_b = a.shape[1], b.shape[1]
    if n_a == 0 or n_b == 0:
        return np.zeros((n_a, n_b))
    # pad the shorter pixel axis (ROIs of fewer planes) with empty rows
    n_pix = max(a.shape[0], b.shape[0])
    a = _pad_rows(a, n_pix)
    b = _pad_rows(b, n_pix)
    inter = np.asarray((a.T.tocsr() @ b).toarray(), dtype=np.float64)
    size_a = np.asarray(a.sum(axis=0), dtype=np.float64).ravel()
    size_b = np.asarray(b.sum(axis=0), dtype=np.float64).ravel()
    union = size_a[:, None] + size_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def _pad_rows(m: sparse.csc_matrix, n: int) -> sparse.csc_matrix:
    if m.shape[0] == n:
        return m
    return sparse.csc_matrix((m.data, m.indices, m.indptr), shape=(n, m.shape[1]))
