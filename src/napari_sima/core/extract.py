"""Signal extraction: ROI fluorescence traces from a dataset in one streaming pass.

The math is SIMA's (behaviour spec, section 5), re-implemented from its description:

1. Every ROI's mask is fitted to the dataset's ``(planes, rows, columns)`` and flattened
   to one row ``m_r`` over the pixels of the volume (planes concatenated).
2. Pixels that are nonzero in more than one ROI are *overlap* pixels.  With
   ``remove_overlap=True`` (the default) they are removed from every ROI.
3. Boolean masks (drawn ROIs, polygons) are normalised to weights summing to 1; float
   masks (segmentation output) are used as given weights, so their signal is a weighted
   *sum* (weights summing to 3 give values about 3).
4. ROIs left without any pixel are *empty*: their rows are all NaN (one warning);
   no valid ROI at all raises :class:`ValueError`.
5. For every frame ``F`` of the signal channel, with ``mu`` the time average of that
   channel over the whole dataset, the value of ROI ``r`` is ``sum_p W_rp F_p / mu_p``:
   the "raw" signal is a weighted mean of ``F / mu`` (about 1.0), not an intensity.

   * When every pixel is observed, ``W = M`` (the mask matrix), also when overlapping
     pixels are kept.
   * Pixels whose value is NaN in a frame (motion-correction margins, masked data), or
     whose time average is 0 or NaN (never usable), are *unobserved*.  For an ROI that
     overlaps no other ROI, its weights over the observed pixels are rescaled by
     ``s_r = sum_p m_rp**2 / sum_(p observed) m_rp**2``.  For ROIs that share pixels
     (``remove_overlap=False``), the frame is solved by least squares: with
     ``A = pinv(M)`` (``= M.T (M M.T)^-1``), ``A'`` its rows of observed pixels and
     columns of ROIs with an observed pixel, ``W = pinv(A')``.  Both rules agree for a
     single ROI, so the least squares are solved per group of ROIs connected by shared
     pixels (``A`` is block diagonal over these groups).
   * An ROI without any observed pixel in a frame gets NaN for that frame.

Speed
-----
The movie is read once, sequentially, a block of frames at a time (about 16 MB, only
the signal channel), the next block being read by a helper thread while the current
one is computed.  A compiled numba kernel (lazily compiled, cached on disk, ``nogil``)
computes the weighted sums of eight frames per pass over the weights, which are
sorted by pixel so that each frame is streamed in order.  Integer movies cannot hold
NaN, so their weights are fixed; for float movies the kernel also rescales single ROIs
over their observed pixels on the fly, and only frames where an unobserved pixel
touches a group of overlapping ROIs are finished in Python (their least-squares
weights are cached by the pattern of missing pixels).  Results do not depend on how
the frames are split into blocks or processes: every ROI sums its pixels in the same
order.

``n_processes > 1`` adds ``n_processes - 1`` worker processes from a persistent pool
(start method ``'forkserver'``, never ``'fork'``: numba's threading layers can hang
after a fork).  Each worker reopens the movie from the pickled
:class:`~napari_sima.core.sequence.Sequence`, which carries no frame data, and reads
the weights from a temporary file.  The calling process works too and never waits
while work remains, and a pool that is not running yet is started only when the time
it would save exceeds its start-up cost, so more processes are not slower than one.
Sequences that hold their frames in memory (``'ndarray'`` kind) are shared with
threads instead.  As for any multiprocessing with ``'forkserver'``/``'spawn'``, a
script must keep its main code under ``if __name__ == '__main__':`` (otherwise the
workers fail and the calling process finishes alone, with a warning).

``executor=`` (any :class:`concurrent.futures.Executor`, e.g. ``client.get_executor()``
of a ``dask.distributed`` client) instead cuts every sequence into chunks of frames
(four reading blocks, or ``chunk_frames``) and submits them all to that executor, with
the extraction plan itself (no temporary file) and the pickled sequence; a movie held
in memory sends each chunk's signal-channel frames instead.  The calling process only
waits and places each chunk where one process puts it, so the numbers are the same;
progress advances as chunks finish, and closing the generator cancels the chunks not
finished.  The time-average pass that precedes a first extraction (when not cached)
still runs in the calling process.

Demixing (experimental)
-----------------------
``demix_channel`` subtracts the static bleed-through of another channel (e.g. a red
structural channel into the green signal channel).  FastICA (scikit-learn) is run on
the two channels' time averages, one row per pixel ``[mu_signal, mu_demix]``; the
unmixing matrix ``W`` has its rows ordered so that row 0 belongs to the signal channel
(swapped when ``|W00 / W01| < |W10 / W11|``) and each row scaled so its diagonal is 1, so
the signal source is ``mu_signal + a * mu_demix`` with ``a = W01`` (negative for
bleed-through).  Each frame's signal-channel pixels are corrected by this static
amount, ``F' = F + a * mu_demix``, expressed in the units of ``F / mu`` (SIMA added the
intensity ``a * mu_demix`` to ``F / mu - 1``, mixing units; it also indexed the time
averages along the wrong axis), and the same weights as for ``raw`` are applied:
``demixed_raw = W (F + a mu_demix) / mu``.  Non-finite results are NaN.

Examples
--------
>>> import numpy as np
>>> from napari_sima.core import ImagingDataset, Sequence, ROI
>>> data = np.ones((5, 1, 6, 8, 1)); data[:, 0, 1:4, 2:6, 0] = 1000
>>> ds = ImagingDataset([Sequence.create('ndarray', data)], None)
>>> roi = ROI(polygons=[[2, 1], [6, 1], [6, 4], [2, 4]], im_shape=(1, 6, 8))
>>> out = extract_rois(ds, [roi])
>>> out['raw'][0]
array([[1., 1., 1., 1., 1.]], dtype=float32)
"""

from __future__ import annotations

import atexit
import copy as _copy
import concurrent.futures as cf
import contextlib
import io
import math
import os
import pickle
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Generator, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .records import extract_record

if TYPE_CHECKING:  # pragma: no cover
    from .dataset import ImagingDataset
    from .roi import ROI
    from .sequence import Sequence

__all__ = [
    "demixing_matrix",
    "extract",
    "extract_rois",
    "iter_extract",
    "iter_extract_rois",
    "save_extraction_summary",
]

#: Bytes of movie (signal channel) read per block.  16 MB blocks keep the read buffer
#: below glibc's mmap threshold (memory is reused instead of faulted in anew) and were
#: among the fastest here.
BLOCK_BYTES = 16 * 2**20

#: Blocks per chunk of frames handed to a worker when ``n_processes > 1``.
_CHUNK_BLOCKS = 4

#: CPU seconds it costs to start worker processes (a fresh interpreter importing numpy,
#: scipy and numba).  Workers that are not running yet are started only when the time
#: they would save on the work left, estimated from the calling process's own speed
#: and the free cores, exceeds this.
POOL_START_SECONDS = 1.0

#: Cores kept busy by one extracting process (its compute thread plus the read-ahead
#: thread, whose copying from the page cache measured ~0.6 of a core here).
_CORES_PER_PROCESS = 1.6

#: Cached least-squares weights per (group, missing-pixel pattern) and call.
_LSQ_CACHE_SIZE = 4096


# ---------------------------------------------------------------------------------------
# Mask preparation
# ---------------------------------------------------------------------------------------
@dataclass
class _Masks:
    """Flattened ROI masks after overlap removal and normalisation."""

    matrix: sparse.csr_matrix  # (n_rois, n_pixels) float64, all ROIs in input order
    valid: np.ndarray  # indices of the ROIs with at least one pixel
    overlap: np.ndarray  # flat pixel indices shared by more than one ROI
    rois: list  # fitted copies of the ROIs (im_shape set)


def _fit_rois(rois: Iterable[Any], im_shape: tuple[int, int, int]) -> list:
    from .roi import ROI

    out = []
    for k, roi in enumerate(rois):
        if isinstance(roi, dict):
            roi = ROI(**roi)
        if not isinstance(roi, ROI):
            raise TypeError(f"ROI {k} is a {type(roi).__name__}, not an ROI")
        fitted = _copy.copy(roi)  # SIMA set im_shape on the caller's ROIs; we leave them alone
        fitted.im_shape = im_shape
        out.append(fitted)
    return out


def _rasterize_polygon_rois(
    rois: list, im_shape: tuple[int, int, int]
) -> dict[int, np.ndarray]:
    """Flat pixel indices of polygon ROIs, all polygons tested in one vectorised call.

    Same rule as :func:`napari_sima.core.roi.polygon_pixels` (pixel centres strictly
    inside, candidates from each polygon's bounding box, invalid outlines repaired with
    ``make_valid``).  ROIs whose polygons lie on planes outside the image are left out
    (the caller rasterises them the usual way, which raises the usual error).
    """
    import shapely

    n_planes, n_rows, n_cols = im_shape
    plane_size = n_rows * n_cols
    owners: list[int] = []
    planes: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    rings: list[np.ndarray] = []
    skip: set[int] = set()
    for k, roi in enumerate(rois):
        if roi.kind != "polygons":
            continue
        polys = roi.polygon_arrays
        entries = []
        for verts in polys:
            z = verts[0, 2]
            if z != int(z) or not 0 <= int(z) < n_planes:
                skip.add(k)
                break
            xy = verts[:, :2]
            x0, y0 = np.floor(xy.min(axis=0)).astype(int)
            x1, y1 = np.ceil(xy.max(axis=0)).astype(int)
            box = (max(x0, 0), min(x1, n_cols), max(y0, 0), min(y1, n_rows))
            entries.append((int(z), box, xy))
        if k in skip:
            continue
        for z, box, xy in entries:
            owners.append(k)
            planes.append(z)
            boxes.append(box)
            rings.append(xy)
    out: dict[int, list[np.ndarray]] = {
        k: [] for k, r in enumerate(rois) if r.kind == "polygons" and k not in skip
    }
    if rings:
        lengths = np.array([len(r) for r in rings])
        geoms = shapely.polygons(
            shapely.linearrings(
                np.concatenate(rings), indices=np.repeat(np.arange(len(rings)), lengths)
            )
        )
        invalid = np.flatnonzero(~shapely.is_valid(geoms))
        for i in invalid:
            geoms[i] = shapely.make_valid(geoms[i])
        shapely.prepare(geoms)
        b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        widths = np.maximum(b[:, 1] - b[:, 0], 0)
        heights = np.maximum(b[:, 3] - b[:, 2], 0)
        counts = widths * heights
        which = np.repeat(np.arange(len(rings)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        local = np.arange(which.size) - first
        w = np.maximum(widths[which], 1)
        rr = b[which, 2] + local // w
        cc = b[which, 0] + local % w
        inside = shapely.contains_xy(geoms[which], cc + 0.5, rr + 0.5)
        which, rr, cc = which[inside], rr[inside], cc[inside]
        flat = np.asarray(planes, dtype=np.int64)[which] * plane_size + rr * n_cols + cc
        owner = np.asarray(owners, dtype=np.int64)[which]
        order = np.argsort(owner, kind="stable")
        owner, flat = owner[order], flat[order]
        bounds = np.searchsorted(owner, np.arange(len(rois) + 1))
        for k in out:
            out[k] = [flat[bounds[k] : bounds[k + 1]]]
    return {
        k: (np.unique(np.concatenate(v)) if v else np.zeros(0, np.int64)) for k, v in out.items()
    }


def prepare_masks(
    rois: Iterable[Any], im_shape: tuple[int, int, int], remove_overlap: bool = True
) -> _Masks:
    """Flatten, de-overlap and normalise ROI masks (spec 5.2).

    Parameters
    ----------
    rois : iterable of ROI (or ROI dicts)
        The ROIs; copies are fitted to ``im_shape`` (the inputs are not changed).
    im_shape : (planes, rows, columns)
        The dataset's volume shape.
    remove_overlap : bool
        Remove pixels shared by several ROIs from all of them.

    Returns
    -------
    _Masks
        ``matrix`` (n_rois x n_pixels, float64 CSR), ``valid`` ROI indices, ``overlap``
        pixel indices and the fitted ROI copies.
    """
    n_planes, n_rows, n_cols = im_shape
    plane_size = n_rows * n_cols
    fitted = _fit_rois(rois, im_shape)
    polygon_pixels = _rasterize_polygon_rois(fitted, im_shape)
    rows_i: list[np.ndarray] = []
    cols_i: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    boolean = np.zeros(len(fitted), dtype=bool)
    for k, roi in enumerate(fitted):
        if k in polygon_pixels:
            flat = polygon_pixels[k]
            boolean[k] = True
            rows_i.append(np.full(flat.size, k, dtype=np.int64))
            cols_i.append(flat)
            vals.append(np.ones(flat.size))
            continue
        planes = roi.mask
        boolean[k] = planes[0].dtype == np.bool_
        for z, plane in enumerate(planes[:n_planes]):
            coo = plane.tocoo()
            keep = coo.data != 0
            flat = z * plane_size + coo.row[keep].astype(np.int64) * n_cols + coo.col[keep]
            rows_i.append(np.full(flat.size, k, dtype=np.int64))
            cols_i.append(flat.astype(np.int64))
            vals.append(coo.data[keep].astype(np.float64))
    n_pix = n_planes * plane_size
    if rows_i:
        r = np.concatenate(rows_i)
        c = np.concatenate(cols_i)
        v = np.concatenate(vals)
    else:
        r = c = np.zeros(0, dtype=np.int64)
        v = np.zeros(0)
    matrix = sparse.csr_matrix((v, (r, c)), shape=(len(fitted), n_pix), dtype=np.float64)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    counts = np.bincount(matrix.indices, minlength=n_pix)
    overlap = np.flatnonzero(counts > 1).astype(np.int64)
    if remove_overlap and overlap.size:
        shared = counts[matrix.indices] > 1
        matrix.data[shared] = 0.0
        matrix.eliminate_zeros()
    nnz = np.diff(matrix.indptr)
    # only boolean masks are normalised (to weights summing to 1)
    for k in np.flatnonzero(boolean & (nnz > 0)):
        lo, hi = matrix.indptr[k], matrix.indptr[k + 1]
        matrix.data[lo:hi] = 1.0 / (hi - lo)
    valid = np.flatnonzero(nnz > 0).astype(np.int64)
    return _Masks(matrix=matrix, valid=valid, overlap=overlap, rois=fitted)


# ---------------------------------------------------------------------------------------
# Demixing
# ---------------------------------------------------------------------------------------
def demixing_matrix(
    signal_average: np.ndarray, demix_average: np.ndarray, random_state: int = 0
) -> np.ndarray:
    """Estimate the 2 x 2 unmixing matrix of two channels by FastICA (experimental).

    Parameters
    ----------
    signal_average, demix_average : numpy.ndarray
        Time averages of the signal and demixing channels (same shape).
    random_state : int
        Seed of FastICA (the result is deterministic).

    Returns
    -------
    numpy.ndarray
        ``W`` (2 x 2) with rows ordered so that row 0 belongs to the signal channel
        (rows swapped when ``|W00/W01| < |W10/W11|``) and each row scaled so that its
        diagonal entry is 1.  The signal source is ``x_signal + W[0, 1] * x_demix``.

    Raises
    ------
    ValueError
        If fewer than 3 pixels have finite averages in both channels.
    ImportError
        If scikit-learn is not installed.
    """
    from sklearn.decomposition import FastICA

    x = np.column_stack(
        [np.asarray(signal_average, float).ravel(), np.asarray(demix_average, float).ravel()]
    )
    x = x[np.all(np.isfinite(x), axis=1)]
    if len(x) < 3:
        raise ValueError(
            f"demixing needs pixels with finite time averages in both channels; found {len(x)}"
        )
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the result is checked below
        ica = FastICA(
            n_components=2, whiten="unit-variance", random_state=random_state, max_iter=1000
        )
        ica.fit(x / scale)
    w = np.asarray(ica.components_, dtype=float) / scale  # unmixing for unscaled columns
    with np.errstate(divide="ignore", invalid="ignore"):
        if abs(w[0, 0] / w[0, 1]) < abs(w[1, 0] / w[1, 1]):
            w = w[::-1].copy()
        w = w / np.diag(w)[:, None]
    if not np.all(np.isfinite(w)):
        raise ValueError(
            "FastICA gave a degenerate unmixing matrix; the channels cannot be demixed"
        )
    return w


# ---------------------------------------------------------------------------------------
# Extraction plan (weights for the kernel, groups of overlapping ROIs)
# ---------------------------------------------------------------------------------------
@dataclass
class _Group:
    """ROIs connected by shared pixels, solved by least squares when pixels are missing."""

    rows: np.ndarray  # row indices (into the plan's rows)
    pixels: np.ndarray  # flat pixel indices covered by the group (ascending)
    mu: np.ndarray  # time average at those pixels
    static_ok: np.ndarray  # pixels with a usable time average
    m: sparse.csr_matrix  # mask weights (n_rows, n_pixels)
    offset: np.ndarray | None  # demixing offset per pixel (units of F / mu), or None
    _pinv: np.ndarray | None = None  # pinv(M), computed when first needed, not pickled

    def pinv_m(self) -> np.ndarray:
        """``A = pinv(M) = M.T (M M.T)^-1`` (dense, ``(n_pixels, n_rows)``)."""
        if self._pinv is None:
            self._pinv = np.linalg.pinv(self.m.toarray())
        return self._pinv

    def imaged_rows(self, observed: np.ndarray) -> np.ndarray:
        """Rows with at least one observed pixel."""
        counts = (self.m != 0).astype(np.float64) @ observed.astype(np.float64)
        return np.asarray(counts).ravel() > 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pinv"] = None
        return state


@dataclass
class _Plan:
    """Everything a worker needs to extract frames (pickled once per task; no movie data)."""

    channel: int
    n_pixels: int
    pix: np.ndarray  # pixel of each weight entry (entries sorted by pixel)
    rows: np.ndarray  # row (ROI) of each entry
    wmu: np.ndarray  # weight / mu per entry
    w2: np.ndarray  # weight**2 (rescaling of single ROIs)
    cw: np.ndarray  # weight * demixing offset (empty without demixing)
    total_w2: np.ndarray  # per row: sum of weight**2 over all its pixels
    scale: np.ndarray  # per row: static rescaling (pixels with unusable averages)
    cconst: np.ndarray  # per row: demixing term for a fully observed frame
    row_ok: np.ndarray  # per row: has at least one usable pixel
    group_row: np.ndarray  # per row: belongs to a group of >1 overlapping ROIs
    row_group: np.ndarray  # per row: index into groups, or -1
    groups: list[_Group] = field(default_factory=list)
    demix: bool = False
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


def _lsq_weights(group: _Group, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares weights of a group for the observed pixels (spec 5.3).

    Returns ``(rows_imaged, W)`` with ``W`` of shape ``(rows_imaged.sum(), observed.sum())``.
    """
    imaged_rows = group.imaged_rows(observed)
    if not imaged_rows.any():
        return imaged_rows, np.zeros((0, int(observed.sum())))
    if observed.all():
        return imaged_rows, group.m  # every pixel observed: W = M exactly
    a = group.pinv_m()[np.ix_(observed, imaged_rows)]
    return imaged_rows, np.linalg.pinv(a)


def _build_plan(
    masks: _Masks, mu: np.ndarray, channel: int, offset: np.ndarray | None
) -> _Plan:
    m = masks.matrix[masks.valid]
    m.sort_indices()
    n_rows, n_pix = m.shape
    mu = np.asarray(mu, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):
        static_ok_all = np.isfinite(mu) & (mu != 0)

    # groups of ROIs connected by shared pixels (only when overlaps were kept)
    row_group = np.full(n_rows, -1, dtype=np.int64)
    groups: list[_Group] = []
    pattern = m.copy()
    pattern.data[:] = 1.0
    shared = (pattern @ pattern.T).tocsr()
    if shared.nnz > n_rows:  # some off-diagonal entry: overlapping ROIs
        from scipy.sparse.csgraph import connected_components

        n_comp, labels = connected_components(shared, directed=False)
        sizes = np.bincount(labels, minlength=n_comp)
        for comp in np.flatnonzero(sizes > 1):
            rows = np.flatnonzero(labels == comp)
            sub = m[rows]
            pixels = np.unique(sub.indices).astype(np.int64)
            local = sub[:, pixels].tocsr()
            local.sort_indices()
            row_group[rows] = len(groups)
            groups.append(
                _Group(
                    rows=rows,
                    pixels=pixels,
                    mu=mu[pixels],
                    static_ok=static_ok_all[pixels],
                    m=local,
                    offset=None if offset is None else offset[pixels],
                )
            )
    group_row = row_group >= 0

    indptr = [0]
    indices: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    total_w2 = np.zeros(n_rows)
    scale = np.ones(n_rows)
    row_ok = np.ones(n_rows, dtype=bool)
    # single ROIs: their own weights, rescaled for pixels that are never usable
    group_weights: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for gi, g in enumerate(groups):
        ok = g.static_ok
        if ok.all():
            continue  # W = M
        imaged_rows, w = _lsq_weights(g, ok)
        group_weights[gi] = (imaged_rows, w)
    for r in range(n_rows):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        idx = m.indices[lo:hi].astype(np.int64)
        w = m.data[lo:hi]
        gi = row_group[r]
        if gi < 0 or gi not in group_weights:
            total_w2[r] = float(np.sum(w * w))
            ok = static_ok_all[idx]
            if not ok.all():
                if ok.any():
                    scale[r] = total_w2[r] / float(np.sum(w[ok] * w[ok]))
                else:
                    row_ok[r] = False
                idx, w = idx[ok], w[ok]
        else:
            g = groups[gi]
            imaged_rows, wg = group_weights[gi]
            pos = int(np.flatnonzero(g.rows == r)[0])
            if not imaged_rows[pos]:
                row_ok[r] = False
                idx, w = idx[:0], w[:0]
            else:
                k = int(np.sum(imaged_rows[:pos]))
                idx = g.pixels[g.static_ok]
                w = wg[k]
                nz = w != 0
                idx, w = idx[nz], w[nz]
            total_w2[r] = float(np.sum(w * w))
        indices.append(idx)
        weights.append(w)
        indptr.append(indptr[-1] + idx.size)
    idx_all = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    w_all = np.concatenate(weights) if weights else np.zeros(0)
    wmu = w_all / mu[idx_all] if idx_all.size else w_all
    row_of = np.repeat(np.arange(n_rows), np.diff(np.asarray(indptr)))
    if offset is not None:
        cw = w_all * offset[idx_all]
        cconst = scale * np.bincount(row_of, weights=cw, minlength=n_rows)
    else:
        cw = np.zeros(0)
        cconst = np.zeros(n_rows)
    # entries sorted by pixel (stable: each row keeps its ascending pixel order)
    order = np.argsort(idx_all, kind="stable")
    itype = np.int32 if n_pix < 2**31 else np.int64
    w2_all = w_all * w_all
    return _Plan(
        channel=channel,
        n_pixels=n_pix,
        pix=np.ascontiguousarray(idx_all[order], dtype=itype),
        rows=np.ascontiguousarray(row_of[order], dtype=np.int32),
        wmu=np.ascontiguousarray(wmu[order], dtype=np.float64),
        w2=np.ascontiguousarray(w2_all[order], dtype=np.float64),
        cw=np.ascontiguousarray(cw[order] if cw.size else cw, dtype=np.float64),
        total_w2=total_w2,
        scale=scale,
        cconst=cconst,
        row_ok=row_ok,
        group_row=group_row,
        row_group=row_group,
        groups=groups,
        demix=offset is not None,
    )


# ---------------------------------------------------------------------------------------
# numba kernel (compiled lazily; pure Python when called uncompiled)
# ---------------------------------------------------------------------------------------
def _frames_kernel(
    frames: np.ndarray,
    pix: np.ndarray,
    rows: np.ndarray,
    wmu: np.ndarray,
    w2: np.ndarray,
    cw: np.ndarray,
    total_w2: np.ndarray,
    scale: np.ndarray,
    cconst: np.ndarray,
    row_ok: np.ndarray,
    group_row: np.ndarray,
    checked: bool,
    out: np.ndarray,
    out_c: np.ndarray,
) -> None:  # pragma: no cover - executed compiled by numba
    """Per frame and ROI: ``sum_k wmu[k] * frame[pix[k]]`` with the rescaling rules.

    ``frames`` is ``(n, n_pixels)`` in the stored dtype.  The weights are given as
    entries ``(pix[k], rows[k], wmu[k])`` sorted by pixel, so every frame is read
    sequentially and the sums are scattered into a small per-ROI accumulator; each
    ROI still adds its pixels in ascending order, so the result does not depend on
    how the movie is split into blocks.  ``_GROUP`` frames share one pass over the
    entries (more would map to the same cache sets: frames are a power of 2 apart).

    ``out`` (and ``out_c`` when demixing, else shape ``(0, 0)``) are ``(n, n_rows)``
    float64.  With ``checked`` the values are tested for finiteness: single ROIs are
    rescaled over their observed pixels, ROIs of overlapping groups get NaN (finished
    by the caller).
    """
    n = frames.shape[0]
    nnz = pix.shape[0]
    n_rows = scale.shape[0]
    demix = out_c.shape[0] > 0
    nan = np.nan
    acc = np.zeros((n_rows, _GROUP), np.float64)
    s2 = np.zeros((n_rows, _GROUP), np.float64)
    cacc = np.zeros((n_rows, _GROUP), np.float64)
    bad = np.zeros((n_rows, _GROUP), np.bool_)
    for t0 in range(0, n, _GROUP):
        g = min(_GROUP, n - t0)
        acc[:] = 0.0
        if not checked:
            if g == _GROUP:
                for k in range(nnz):
                    p = pix[k]
                    r = rows[k]
                    w = wmu[k]
                    for j in range(_GROUP):
                        acc[r, j] += w * frames[t0 + j, p]
            else:
                for k in range(nnz):
                    p = pix[k]
                    r = rows[k]
                    w = wmu[k]
                    for j in range(g):
                        acc[r, j] += w * frames[t0 + j, p]
            for r in range(n_rows):
                ok = row_ok[r]
                sc = scale[r]
                for j in range(g):
                    v = acc[r, j] * sc if ok else nan
                    out[t0 + j, r] = v
                    if demix:
                        out_c[t0 + j, r] = v + cconst[r]
            continue
        s2[:] = 0.0
        cacc[:] = 0.0
        bad[:] = False
        for k in range(nnz):
            p = pix[k]
            r = rows[k]
            w = wmu[k]
            for j in range(g):
                x = np.float64(frames[t0 + j, p])
                if math.isfinite(x):
                    acc[r, j] += w * x
                    s2[r, j] += w2[k]
                    if demix:
                        cacc[r, j] += cw[k]
                else:
                    bad[r, j] = True
        for r in range(n_rows):
            for j in range(g):
                if not row_ok[r]:
                    v = nan
                    vc = nan
                elif not bad[r, j]:
                    v = acc[r, j] * scale[r]
                    vc = v + cconst[r]
                elif group_row[r] or s2[r, j] == 0.0:
                    v = nan
                    vc = nan
                else:
                    sc = total_w2[r] / s2[r, j]
                    v = acc[r, j] * sc
                    vc = (acc[r, j] + cacc[r, j]) * sc
                out[t0 + j, r] = v
                if demix:
                    out_c[t0 + j, r] = vc


#: Frames sharing one pass over the weights in the kernel.
_GROUP = 8

_kernel_lock = threading.Lock()
_compiled_kernel: Callable[..., None] | None = None


def _get_kernel() -> Callable[..., None]:
    """Return the compiled kernel (compiled, or loaded from numba's cache, on first use)."""
    global _compiled_kernel
    with _kernel_lock:
        if _compiled_kernel is None:
            import numba

            _compiled_kernel = numba.njit(cache=True, nogil=True, fastmath=False)(
                _frames_kernel
            )
        return _compiled_kernel


# ---------------------------------------------------------------------------------------
# Frame processing (shared by the calling process, threads and worker processes)
# ---------------------------------------------------------------------------------------
def _as_kernel_frames(block: np.ndarray, n_pixels: int) -> tuple[np.ndarray, bool]:
    frames = np.ascontiguousarray(block).reshape(block.shape[0], n_pixels)
    kind = frames.dtype.kind
    if kind == "b":
        frames = frames.view(np.uint8)
    elif kind == "f" and frames.dtype.itemsize < 4:
        frames = frames.astype(np.float32)
    elif kind == "c":
        raise ValueError(f"cannot extract signals from complex data ({frames.dtype})")
    return frames, kind == "f"


def _finish_groups(
    plan: _Plan,
    frames: np.ndarray,
    out: np.ndarray,
    out_c: np.ndarray | None,
    cache: dict,
) -> None:
    """Recompute the rows of overlapping groups in frames with unobserved pixels."""
    todo = np.isnan(out) & plan.group_row[None, :] & plan.row_ok[None, :]
    for t in np.flatnonzero(todo.any(axis=1)):
        for gi in np.unique(plan.row_group[todo[t]]):
            g = plan.groups[gi]
            vals = frames[t, g.pixels].astype(np.float64)
            observed = g.static_ok & np.isfinite(vals)
            key = (int(gi), np.packbits(observed).tobytes())
            hit = cache.get(key)
            if hit is None:
                hit = _lsq_weights(g, observed)
                if len(cache) >= _LSQ_CACHE_SIZE:
                    cache.clear()
                cache[key] = hit
            imaged_rows, w = hit
            res = np.full(g.rows.size, np.nan)
            res_c = np.full(g.rows.size, np.nan)
            if imaged_rows.any():
                ratio = vals[observed] / g.mu[observed]
                res[imaged_rows] = np.asarray(w @ ratio).ravel()
                if g.offset is not None:
                    res_c[imaged_rows] = np.asarray(w @ (ratio + g.offset[observed])).ravel()
            out[t, g.rows] = res
            if out_c is not None:
                out_c[t, g.rows] = res_c


def _process_block(
    plan: _Plan, block: np.ndarray, cache: dict
) -> tuple[np.ndarray, np.ndarray | None]:
    """Extract the frames of one block; returns ``(raw, demixed)`` as ``(n_rows, n)`` float32."""
    frames, checked = _as_kernel_frames(block, plan.n_pixels)
    n = frames.shape[0]
    n_rows = plan.scale.size
    out = np.empty((n, n_rows), dtype=np.float64)
    out_c = np.empty((n, n_rows) if plan.demix else (0, 0), dtype=np.float64)
    _get_kernel()(
        frames,
        plan.pix,
        plan.rows,
        plan.wmu,
        plan.w2,
        plan.cw,
        plan.total_w2,
        plan.scale,
        plan.cconst,
        plan.row_ok,
        plan.group_row,
        checked,
        out,
        out_c,
    )
    if checked and plan.groups:
        _finish_groups(plan, frames, out, out_c if plan.demix else None, cache)
    raw = out.T.astype(np.float32)
    if not plan.demix:
        return raw, None
    with np.errstate(invalid="ignore"):
        out_c[~np.isfinite(out_c)] = np.nan
    return raw, out_c.T.astype(np.float32)


def _read_region(seq: Sequence, channel: int) -> tuple:
    z, y, x, _ = seq.frame_shape
    return (range(z), range(y), range(x), range(channel, channel + 1))


def _iter_range(
    seq: Sequence,
    start: int,
    stop: int,
    plan: _Plan,
    block_frames: int,
    prefetch: bool = True,
) -> Generator[tuple[int, np.ndarray, np.ndarray | None], None, None]:
    """Yield ``(t0, raw, demixed)`` for consecutive blocks of frames ``start:stop``.

    With ``prefetch`` the next block is read by a helper thread while the current one
    is computed (reading releases the GIL, and so does the kernel).
    """
    region = _read_region(seq, plan.channel)
    cache: dict = {}
    starts = list(range(start, stop, block_frames))
    if not starts:
        return

    def read(t0: int) -> np.ndarray:
        return seq._read(range(t0, min(stop, t0 + block_frames)), region)

    if len(starts) == 1 or not prefetch:
        for t0 in starts:
            raw, dem = _process_block(plan, read(t0), cache)
            yield t0, raw, dem
        return
    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-read") as reader:
        ahead = reader.submit(read, starts[0])
        try:
            for i, t0 in enumerate(starts):
                block = ahead.result()
                if i + 1 < len(starts):
                    ahead = reader.submit(read, starts[i + 1])
                raw, dem = _process_block(plan, block, cache)
                del block
                yield t0, raw, dem
        finally:
            ahead.cancel()


def _run_chunk(
    seq: Sequence, start: int, stop: int, plan: Any, block_frames: int
) -> tuple[int, int, np.ndarray, np.ndarray | None]:
    """Worker task: extract frames ``start:stop`` of ``seq`` (plan given pickled)."""
    plan = _worker_plan(plan)
    n_rows = plan.scale.size
    raw = np.empty((n_rows, stop - start), dtype=np.float32)
    dem = np.empty((n_rows, stop - start), dtype=np.float32) if plan.demix else None
    for t0, r, d in _iter_range(seq, start, stop, plan, block_frames, prefetch=False):
        raw[:, t0 - start : t0 - start + r.shape[1]] = r
        if dem is not None and d is not None:
            dem[:, t0 - start : t0 - start + d.shape[1]] = d
    return start, stop, raw, dem


def _run_frames(
    block: np.ndarray, plan: _Plan, block_frames: int
) -> tuple[int, int, np.ndarray, np.ndarray | None]:
    """Executor task: extract frames already read (signal channel of an in-memory movie).

    ``block`` is ``(n, z, y, x, 1)``; it is computed in blocks of ``block_frames``
    frames, as the serial path does (the numbers do not depend on the blocks anyway).
    Returns ``(0, n, raw, demixed)`` like :func:`_run_chunk`.
    """
    n_rows = plan.scale.size
    n = block.shape[0]
    raw = np.empty((n_rows, n), dtype=np.float32)
    dem = np.empty((n_rows, n), dtype=np.float32) if plan.demix else None
    cache: dict = {}
    for t0 in range(0, n, block_frames):
        r, d = _process_block(plan, block[t0 : t0 + block_frames], cache)
        raw[:, t0 : t0 + r.shape[1]] = r
        if dem is not None and d is not None:
            dem[:, t0 : t0 + d.shape[1]] = d
    return 0, n, raw, dem


_worker_plan_cache: dict[str, _Plan] = {}


def _worker_plan(plan: Any) -> _Plan:
    """The plan itself (threads), or ``(token, path)`` of its pickle, read once per worker."""
    if isinstance(plan, _Plan):
        return plan
    token, path = plan
    cached = _worker_plan_cache.get(token)
    if cached is None:
        with open(path, "rb") as fh:
            cached = pickle.load(fh)  # our own file, written by the calling process
        _worker_plan_cache.clear()
        _worker_plan_cache[token] = cached
    return cached


def _worker_init() -> None:  # pragma: no cover - runs in worker processes
    _get_kernel()


# ---------------------------------------------------------------------------------------
# Process pool (persistent, forkserver)
# ---------------------------------------------------------------------------------------
_pool_lock = threading.Lock()
_pool: cf.ProcessPoolExecutor | None = None
_pool_size = 0


def _start_method() -> str:
    import multiprocessing as mp

    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _get_pool(n_workers: int) -> cf.ProcessPoolExecutor:
    """Return the shared worker pool with ``n_workers`` processes (created on demand)."""
    global _pool, _pool_size
    import multiprocessing as mp

    with _pool_lock:
        broken = _pool is not None and getattr(_pool, "_broken", False)
        if _pool is None or _pool_size != n_workers or broken:
            if _pool is not None:
                _pool.shutdown(wait=False)
            method = _start_method()
            ctx = mp.get_context(method)
            if method == "forkserver":
                # preload our module, not the user's script (the default '__main__'
                # would run an unguarded script in the server); only effective before
                # the server's first start
                ctx.set_forkserver_preload([__name__])
            _pool = cf.ProcessPoolExecutor(
                max_workers=n_workers, mp_context=ctx, initializer=_worker_init
            )
            _pool_size = n_workers
        return _pool


def shutdown_pool(wait: bool = True) -> None:
    """Stop the worker processes kept for ``n_processes > 1`` (they restart on demand)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is not None:
            # no cancel_futures: CPython 3.11 breaks on cancelled futures of a broken pool
            _pool.shutdown(wait=wait)
        _pool = None
        _pool_size = 0


atexit.register(shutdown_pool, False)


def _holds_memory_data(seq: Any, depth: int = 0) -> bool:
    """True if a sequence (or one it is built on) holds its frames in memory."""
    if depth > 50:
        return True
    if isinstance(getattr(seq, "_array", None), np.ndarray):
        return True
    base = getattr(seq, "_base", None)
    if base is not None and _holds_memory_data(base, depth + 1):
        return True
    return any(_holds_memory_data(s, depth + 1) for s in getattr(seq, "_sequences", ()) or ())


# ---------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------
def _default_block_frames(seq: Sequence) -> int:
    z, y, x, _ = seq.frame_shape
    frame_bytes = max(1, z * y * x * seq.dtype.itemsize)
    return int(max(1, min(1024, BLOCK_BYTES // frame_bytes)))


def _frame_chunks(
    sequences: list, block_frames: int | None, chunk_frames: int | None = None
) -> list[tuple[int, int, int, int]]:
    """Cut every sequence into chunks of frames ``(sequence, start, stop, block_frames)``.

    A chunk is :data:`_CHUNK_BLOCKS` reading blocks (``block_frames``, by default about
    16 MB of the stored movie), or ``chunk_frames`` frames when given (then read in
    blocks of at most that many frames).  Chunks never span two sequences.
    """
    chunks: list[tuple[int, int, int, int]] = []
    for si, seq in enumerate(sequences):
        bf = block_frames or _default_block_frames(seq)
        if chunk_frames is None:
            size = max(bf, (_CHUNK_BLOCKS * bf))
        else:
            size = chunk_frames
            bf = min(bf, chunk_frames)
        for start in range(0, len(seq), size):
            chunks.append((si, start, min(len(seq), start + size), bf))
    return chunks


def _check_n_processes(n_processes: Any) -> int:
    if isinstance(n_processes, bool) or not isinstance(n_processes, (int, np.integer)):
        raise ValueError(f"n_processes must be a positive integer, got {n_processes!r}")
    if int(n_processes) < 1:
        raise ValueError(f"n_processes must be at least 1, got {int(n_processes)}")
    return int(n_processes)


def _iter_projection_progress(dataset: ImagingDataset) -> Generator[tuple[int, int], None, bool]:
    """Run the dataset's projection pass (if not cached), yielding its progress.

    Returns True if a pass over the movie was needed.
    """
    gen = dataset.iter_projections()
    total = dataset.num_frames
    try:
        first = next(gen)
    except StopIteration:
        return False
    if tuple(first) == (total, total):
        for _ in gen:
            pass
        return False
    yield first[0], 2 * total
    for done, _ in gen:
        yield done, 2 * total
    return True


def iter_extract_rois(
    dataset: ImagingDataset,
    rois: Iterable[ROI],
    signal_channel: int | str = 0,
    remove_overlap: bool = True,
    n_processes: int = 1,
    demix_channel: int | str | None = None,
    block_frames: int | None = None,
    *,
    executor: cf.Executor | None = None,
    chunk_frames: int | None = None,
) -> Generator[tuple[int, int], None, dict[str, Any]]:
    """Extract ROI signals, as a generator yielding progress (see :func:`extract_rois`).

    Yields
    ------
    (frames_done, total)
        Progress; when the time averages must first be computed, that pass counts
        as the first half.  With an executor, it advances as chunks of frames
        finish.  Closing the generator cancels the work (with an executor, the
        chunks not finished are cancelled).

    Returns
    -------
    dict
        The signals (see :func:`extract_rois`), as the generator's return value.
    """
    from ._executor import check_chunk_size, check_executor
    from .dataset import timestamp as _timestamp

    n_proc = _check_n_processes(n_processes)
    executor = check_executor(executor, n_proc)
    chunk_frames = check_chunk_size(chunk_frames, "chunk_frames")
    channel = dataset.resolve_channel(signal_channel)
    demix = None if demix_channel is None else dataset.resolve_channel(demix_channel)
    if demix is not None and demix == channel:
        raise ValueError(
            f"demix_channel ({demix_channel!r}) must differ from signal_channel "
            f"({signal_channel!r})"
        )
    rois = list(rois)
    if not rois:
        raise ValueError("Cannot extract dataset with no ROIs: the ROI list is empty")
    z, y, x, _ = dataset.frame_shape
    masks = prepare_masks(rois, (z, y, x), remove_overlap=bool(remove_overlap))
    n_empty = len(rois) - masks.valid.size
    if masks.valid.size == 0:
        raise ValueError(f"No valid ROIs found: all {len(rois)} ROIs are empty (no pixel left)")
    if n_empty:
        warnings.warn(
            f"Empty ROIs will return all NaN values: {n_empty} empty ROIs found",
            RuntimeWarning,
            stacklevel=3,
        )

    needed_pass = yield from _iter_projection_progress(dataset)
    averages = dataset.time_averages
    mean_frame = np.asarray(averages[..., channel], dtype=np.float64)
    offset = None
    if demix is not None:
        w = demixing_matrix(averages[..., channel], averages[..., demix])
        mu_s = mean_frame.ravel()
        mu_d = np.asarray(averages[..., demix], dtype=np.float64).ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            offset = w[0, 1] * mu_d / mu_s
        offset[~np.isfinite(offset)] = 0.0
    plan = _build_plan(masks, mean_frame, channel, offset)

    sequences = dataset.sequences
    n_total = len(rois)
    lengths = [len(s) for s in sequences]
    total = int(sum(lengths))
    base = total if needed_pass else 0
    grand = base + total
    raw = [np.full((n_total, n), np.nan, dtype=np.float32) for n in lengths]
    dem = (
        [np.full((n_total, n), np.nan, dtype=np.float32) for n in lengths]
        if plan.demix
        else None
    )
    valid = masks.valid

    def place(si: int, t0: int, r: np.ndarray, d: np.ndarray | None) -> int:
        raw[si][valid, t0 : t0 + r.shape[1]] = r
        if dem is not None and d is not None:
            dem[si][valid, t0 : t0 + d.shape[1]] = d
        return r.shape[1]

    done = 0
    yield base, grand
    if executor is not None and total:
        for d_done in _run_executor(
            sequences, plan, executor, block_frames, chunk_frames, place
        ):
            done += d_done
            yield base + done, grand
    elif n_proc == 1 or total == 0:
        for si, seq in enumerate(sequences):
            bf = block_frames or _default_block_frames(seq)
            for t0, r, d in _iter_range(seq, 0, len(seq), plan, bf):
                done += place(si, t0, r, d)
                yield base + done, grand
    else:
        for d_done in _run_parallel(sequences, plan, n_proc, block_frames, place):
            done += d_done
            yield base + done, grand

    out: dict[str, Any] = {"raw": raw}
    if dem is not None:
        out["demixed_raw"] = dem
    out["mean_frame"] = mean_frame
    if remove_overlap:
        out["overlap"] = (np.zeros(masks.overlap.size, dtype=np.int64), masks.overlap.copy())
    out["signal_channel"] = channel
    if demix is not None:
        out["demix_channel"] = demix
    out["rois"] = [r.todict() for r in masks.rois]
    out["timestamp"] = _timestamp()
    return out


#: How the last ``n_processes > 1`` run was shared: chunks in all, computed by workers,
#: computed by the calling process (for benchmarks and tests).
LAST_RUN: dict[str, int] = {}


def _pool_is_warm(n_workers: int) -> bool:
    with _pool_lock:
        pool = _pool
        return (
            pool is not None
            and _pool_size == n_workers
            and not getattr(pool, "_broken", False)
            and bool(getattr(pool, "_processes", None))
        )


def _run_parallel(
    sequences: list,
    plan: _Plan,
    n_proc: int,
    block_frames: int | None,
    place: Callable[[int, int, np.ndarray, np.ndarray | None], int],
) -> Generator[int, None, None]:
    """Split frames over ``n_proc - 1`` workers plus the calling process.

    The calling process streams through the chunks of frames from the front, block by
    block, reading ahead in a helper thread (exactly as a single process does), while
    workers take chunks from the back (at most two per worker waiting at a time).
    When no chunk is left unassigned, the calling process also computes the chunks
    still in flight, newest first, and keeps whichever copy finishes first: so it
    never waits while work remains.  Worker processes that are not running yet are
    only started when the time they would save on the work left (estimated from the
    calling process's own speed and the free cores) exceeds their start-up cost
    (:data:`POOL_START_SECONDS`).  So more processes are not slower than one.  Yields
    the number of frames placed.
    """
    import time
    from collections import deque

    in_memory = any(_holds_memory_data(s) for s in sequences)
    chunks = _frame_chunks(sequences, block_frames)  # (sequence, start, stop, block_frames)
    regions = [_read_region(seq, plan.channel) for seq in sequences]
    n_workers = n_proc - 1
    plan_file: str | None = None
    executor: cf.Executor | None = None
    plan_arg: Any = plan
    done_chunks: set[int] = set()
    in_flight: dict[cf.Future, int] = {}
    front, back = 0, len(chunks) - 1
    broken = False
    t_start = time.perf_counter()
    frames_here = 0
    cache: dict = {}
    LAST_RUN.clear()
    LAST_RUN.update(chunks=len(chunks), worker_chunks=0, own_chunks=0)

    def start_workers() -> None:
        nonlocal executor, plan_file, plan_arg
        if in_memory:
            executor = cf.ThreadPoolExecutor(max_workers=n_workers)
            return
        fd, plan_file = tempfile.mkstemp(prefix="napari_sima_extract_", suffix=".pkl")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(plan, fh, protocol=pickle.HIGHEST_PROTOCOL)
        plan_arg = (plan.token, plan_file)
        executor = _get_pool(n_workers)

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    speedup = max(1.0, min(n_proc, cores) / _CORES_PER_PROCESS)
    saving = 1.0 - 1.0 / speedup  # fraction of the time left that workers would save

    def refill() -> None:
        nonlocal back
        if executor is None and not broken and front <= back and frames_here:
            left = sum(chunks[i][2] - chunks[i][1] for i in range(front, back + 1))
            elapsed = time.perf_counter() - t_start
            if left * elapsed / frames_here * saving > POOL_START_SECONDS:
                start_workers()
        while (
            executor is not None
            and not broken
            and len(in_flight) < 2 * n_workers
            and front < back  # the calling process keeps the chunk it is reading
        ):
            si, start, stop, bf = chunks[back]
            fut = executor.submit(_run_chunk, sequences[si], start, stop, plan_arg, bf)
            in_flight[fut] = back
            back -= 1

    def collect() -> Generator[int, None, None]:
        nonlocal broken
        for fut in [f for f in in_flight if f.done()]:
            i = in_flight.pop(fut)
            if fut.cancelled() or i in done_chunks:
                continue
            try:
                _, _, r, d = fut.result()
            except BrokenProcessPool as err:
                if not broken:
                    broken = True
                    shutdown_pool(wait=False)
                    warnings.warn(
                        f"the extraction worker processes failed ({err}); continuing in "
                        f"this process.  Scripts must guard their main code with "
                        f"`if __name__ == '__main__':` to use n_processes > 1.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                continue  # the calling process computes the chunk
            done_chunks.add(i)
            LAST_RUN["worker_chunks"] += 1
            si, start, _, _ = chunks[i]
            yield place(si, start, r, d)

    # blocks of the chunks claimed by the calling process, read one ahead
    own: deque[tuple[int, int, int]] = deque()  # (chunk, t0, t1)
    blocks_left: dict[int, int] = {}

    def next_own_block() -> tuple[int, int, int] | None:
        nonlocal front
        if not own and front <= back:
            i = front
            front += 1
            si, start, stop, bf = chunks[i]
            starts = range(start, stop, bf)
            blocks_left[i] = len(starts)
            own.extend((i, t0, min(stop, t0 + bf)) for t0 in starts)
        return own.popleft() if own else None

    def read(item: tuple[int, int, int]) -> np.ndarray:
        i, t0, t1 = item
        si = chunks[i][0]
        return sequences[si]._read(range(t0, t1), regions[si])

    def duplicate(i: int) -> Generator[int, None, None]:
        """Compute in-flight chunk ``i`` here too; drop it if its worker copy wins."""
        si, start, stop, bf = chunks[i]
        parts = []
        for t0, r, d in _iter_range(sequences[si], start, stop, plan, bf, prefetch=False):
            parts.append((t0, r, d))
            yield from collect()
            if i in done_chunks:
                return
        for t0, r, d in parts:
            yield place(si, t0, r, d)
        done_chunks.add(i)
        LAST_RUN["own_chunks"] += 1

    reader = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-read")
    ahead: tuple[tuple[int, int, int], cf.Future] | None = None
    try:
        if len(chunks) and (in_memory or _pool_is_warm(n_workers)):
            start_workers()
        while len(done_chunks) < len(chunks):
            yield from collect()
            refill()
            if ahead is None:
                item = next_own_block()
                if item is not None:
                    ahead = (item, reader.submit(read, item))
            if ahead is not None:
                item, fut = ahead
                block = fut.result()
                following = next_own_block()
                ahead = (following, reader.submit(read, following)) if following else None
                raw, dem = _process_block(plan, block, cache)
                del block
                i, t0, _ = item
                frames_here += raw.shape[1]
                blocks_left[i] -= 1
                if not blocks_left[i]:
                    done_chunks.add(i)
                    LAST_RUN["own_chunks"] += 1
                yield place(chunks[i][0], t0, raw, dem)
                continue
            waiting = [i for f, i in in_flight.items() if i not in done_chunks]
            if waiting:
                yield from duplicate(waiting[-1])
                continue
            lost = [i for i in range(len(chunks)) if i not in done_chunks and i > back]
            if lost:  # the pool broke: compute its chunks here
                yield from duplicate(lost[0])
                continue
            if in_flight:
                cf.wait(list(in_flight), timeout=0.5, return_when=cf.FIRST_COMPLETED)
    finally:
        if ahead is not None:
            ahead[1].cancel()
        reader.shutdown(wait=True)
        if in_memory and executor is not None:
            for fut in in_flight:
                fut.cancel()
            executor.shutdown(wait=True)
        # process-pool futures are left to finish (see shutdown_pool); at most two per
        # worker are queued, and their results are dropped
        if plan_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(plan_file)


def _run_executor(
    sequences: list,
    plan: _Plan,
    executor: cf.Executor,
    block_frames: int | None,
    chunk_frames: int | None,
    place: Callable[[int, int, np.ndarray, np.ndarray | None], int],
) -> Generator[int, None, None]:
    """Extract chunks of frames on a caller's executor; yield the frames placed.

    Every chunk (:func:`_frame_chunks`) is submitted at once, with the plan itself
    (pickled by the executor: no temporary file, so workers may run on other
    machines) and the :class:`~napari_sima.core.sequence.Sequence`, which reopens its
    files in the worker; for a movie held in memory the chunk's frames of the signal
    channel are read here and sent instead of the whole array.  This process then only
    waits and places each chunk's rows where the serial path puts them.  Closing the
    generator (or a failing chunk) cancels the chunks not finished.
    """
    from ._executor import cancel, completed

    chunks = _frame_chunks(sequences, block_frames, chunk_frames)
    in_memory = [_holds_memory_data(s) for s in sequences]
    n_rows = plan.scale.size
    futures: dict[cf.Future, int] = {}
    try:
        for i, (si, start, stop, bf) in enumerate(chunks):
            seq = sequences[si]
            if in_memory[si]:
                block = seq._read(range(start, stop), _read_region(seq, plan.channel))
                fut = executor.submit(_run_frames, block, plan, bf)
                del block
            else:
                fut = executor.submit(_run_chunk, seq, start, stop, plan, bf)
            futures[fut] = i
    except BaseException:
        cancel(futures)
        raise

    def describe(i: int) -> str:
        si, start, stop, _ = chunks[i]
        return f"the signals of frames {start}:{stop} of sequence {si}"

    results = completed(futures, describe)
    try:
        for i, (_, _, r, d) in results:
            si, start, stop, _ = chunks[i]
            if r.shape != (n_rows, stop - start):
                raise RuntimeError(
                    f"the executor returned signals of shape {r.shape} for frames "
                    f"{start}:{stop} of sequence {si}, expected {(n_rows, stop - start)} "
                    f"(do its workers run the same napari-sima version?)"
                )
            yield place(si, start, r, d)
    finally:
        results.close()


def extract_rois(
    dataset: ImagingDataset,
    rois: Iterable[ROI],
    signal_channel: int | str = 0,
    remove_overlap: bool = True,
    n_processes: int = 1,
    demix_channel: int | str | None = None,
    block_frames: int | None = None,
    *,
    executor: cf.Executor | None = None,
    chunk_frames: int | None = None,
) -> dict[str, Any]:
    """Extract the signal of every ROI in every frame of a dataset (spec section 5).

    Parameters
    ----------
    dataset : ImagingDataset
        The movie.
    rois : iterable of ROI
        The ROIs (copies are fitted to the dataset; the inputs are not changed).
    signal_channel : int or str
        Channel to extract, by index or name.
    remove_overlap : bool
        Drop pixels shared by several ROIs (default); otherwise solve the shared
        pixels by least squares.
    n_processes : int
        Processes reading and computing (the calling one included).
    demix_channel : int, str or None
        Experimental: remove the static bleed-through of this channel (see the module
        notes); adds ``'demixed_raw'``.
    block_frames : int, optional
        Frames read at a time (default: about 16 MB).
    executor : concurrent.futures.Executor, optional
        Split the frames over this executor's workers, e.g. ``client.get_executor()``
        of a ``dask.distributed`` client (also from ``distributed.worker_client()``
        inside a task), a ``ProcessPoolExecutor`` or a ``ThreadPoolExecutor``.  Each
        chunk of frames is one task; the results are placed exactly as one process
        places them (identical numbers).  Workers reopen the movie files by their
        paths, so remote workers need the same paths.  Cannot be combined with
        ``n_processes > 1``.
    chunk_frames : int, optional
        Frames per executor task (default: four reading blocks of ``block_frames``,
        i.e. about 64 MB of movie and at most 4,096 frames).  Used only with
        ``executor``.

    Returns
    -------
    dict
        ``raw``: list (one per sequence) of ``(n_rois, n_frames)`` float32 arrays, the
        weighted mean of ``F / time_average`` per ROI (NaN rows for empty ROIs);
        ``demixed_raw`` (with demixing); ``mean_frame``: time average of the signal
        channel ``(z, y, x)``; ``overlap``: ``(zeros, flat_indices)`` of the shared
        pixels (only with ``remove_overlap``); ``signal_channel``; ``demix_channel``
        (with demixing); ``rois``: ``todict()`` of each ROI in row order;
        ``timestamp``: ``'%Y-%m-%d-%Hh%Mm%Ss'``.

    Raises
    ------
    ValueError
        If no ROI has a pixel, the ROI list is empty, a channel is unknown,
        ``n_processes`` or ``chunk_frames`` is not a positive integer, or
        ``executor`` is given with ``n_processes > 1``.
    TypeError
        If ``executor`` is not a :class:`concurrent.futures.Executor`.

    Warns
    -----
    RuntimeWarning
        ``"Empty ROIs will return all NaN values: N empty ROIs found"``.
    """
    gen = iter_extract_rois(
        dataset,
        rois,
        signal_channel=signal_channel,
        remove_overlap=remove_overlap,
        n_processes=n_processes,
        demix_channel=demix_channel,
        block_frames=block_frames,
        executor=executor,
        chunk_frames=chunk_frames,
    )
    return _drain(gen)


def _drain(gen: Generator[Any, None, Any]) -> Any:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# ---------------------------------------------------------------------------------------
# Dataset workflow: default ROIs, storage, summary
# ---------------------------------------------------------------------------------------
def _resolve_rois(dataset: ImagingDataset, rois: Any) -> Any:
    from .roi_store import most_recent_label

    if rois is None or isinstance(rois, str):
        sets = dataset.ROIs
        if not sets:
            raise ValueError(
                "Cannot extract dataset with no ROIs: the dataset has no ROI sets "
                "(add one with add_ROIs, or pass rois=...)"
            )
        if rois is None:
            label = most_recent_label({k: v.timestamp or "" for k, v in sets.items()})
            return sets[label]
        if rois not in sets:
            raise KeyError(f"no ROI set {rois!r} in the dataset; its sets: {sorted(sets)}")
        return sets[rois]
    return rois


def _rois_label(dataset: ImagingDataset, rois: Any) -> str | None:
    """Label of the stored set that ``rois`` names (None for ROIs passed directly)."""
    if isinstance(rois, str):
        return rois
    if rois is None and dataset.savedir is not None:
        from .roi_store import most_recent_label, roi_set_timestamps

        try:  # the index only: the sets themselves are read once, by _resolve_rois
            return most_recent_label(roi_set_timestamps(dataset.savedir))
        except (OSError, ValueError):
            return None
    return None


def iter_extract(
    dataset: ImagingDataset,
    rois: Any = None,
    signal_channel: int | str = 0,
    label: str | None = None,
    remove_overlap: bool = True,
    n_processes: int = 1,
    demix_channel: int | str | None = None,
    save_summary: bool = True,
    block_frames: int | None = None,
    *,
    executor: cf.Executor | None = None,
    chunk_frames: int | None = None,
) -> Generator[tuple[int, int], None, dict[str, Any]]:
    """Extract signals and store them with the dataset, as a generator.

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.
    rois : ROIList, list of ROI, str or None
        The ROIs, or the label of a stored ROI set; default: the most recent set.
    signal_channel : int or str
        Channel to extract.
    label : str, optional
        Name of the stored signal set (default: the extraction timestamp).
    remove_overlap, n_processes, demix_channel, block_frames, executor, chunk_frames
        See :func:`extract_rois`.
    save_summary : bool
        With a dataset folder, write ``extractSummary_<timestamp>.png`` and ``.pdf``
        there (mean image, masks, outlines, overlap pixels in red).

    Yields
    ------
    (frames_done, total)
        Progress.  Closing the generator cancels the work (and any executor tasks
        not finished); nothing is stored.

    Returns
    -------
    dict
        The signals (see :func:`extract_rois`), also stored under ``label`` for the
        signal channel (in the dataset folder, atomically; in memory without one).

    Raises
    ------
    ValueError
        If there are no ROIs.
    PermissionError
        If the dataset is read-only.
    """
    from . import signal_store

    rois_label = _rois_label(dataset, rois)
    rois = _resolve_rois(dataset, rois)
    if dataset.savedir is not None:
        dataset._check_writable()
    result = yield from iter_extract_rois(
        dataset,
        rois,
        signal_channel=signal_channel,
        remove_overlap=remove_overlap,
        n_processes=n_processes,
        demix_channel=demix_channel,
        block_frames=block_frames,
        executor=executor,
        chunk_frames=chunk_frames,
    )
    label = result["timestamp"] if label is None else str(label)
    parameters: dict[str, Any] = {
        "remove_overlap": bool(remove_overlap),
        "n_processes": int(n_processes),
        "signal_channel_name": dataset.channel_names[result["signal_channel"]],
    }
    if "demix_channel" in result:
        parameters["demix_channel_name"] = dataset.channel_names[result["demix_channel"]]
    if dataset.savedir is not None:
        if save_summary:
            try:
                paths = save_extraction_summary(result, dataset.savedir)
                parameters["summary"] = [os.path.basename(p) for p in paths]
            except ImportError as err:
                warnings.warn(
                    f"no extraction summary written (matplotlib missing: {err})",
                    RuntimeWarning,
                    stacklevel=2,
                )
        record = extract_record(
            dataset,
            rois_label,
            len(result["rois"]),
            result["signal_channel"],
            remove_overlap,
            result.get("demix_channel"),
        )
        signal_store.save_signal_set(
            signal_store.store_dir(dataset.savedir, result["signal_channel"]),
            result,
            label,
            parameters=parameters,
            provenance=record,
        )
    else:
        signal_store.memory_store(dataset, result["signal_channel"])[label] = result
    return result


def extract(
    dataset: ImagingDataset,
    rois: Any = None,
    signal_channel: int | str = 0,
    label: str | None = None,
    remove_overlap: bool = True,
    n_processes: int = 1,
    demix_channel: int | str | None = None,
    save_summary: bool = True,
    block_frames: int | None = None,
    *,
    executor: cf.Executor | None = None,
    chunk_frames: int | None = None,
) -> dict[str, Any]:
    """Extract signals and store them with the dataset (see :func:`iter_extract`)."""
    return _drain(
        iter_extract(
            dataset,
            rois,
            signal_channel=signal_channel,
            label=label,
            remove_overlap=remove_overlap,
            n_processes=n_processes,
            demix_channel=demix_channel,
            save_summary=save_summary,
            block_frames=block_frames,
            executor=executor,
            chunk_frames=chunk_frames,
        )
    )


# ---------------------------------------------------------------------------------------
# Summary figure
# ---------------------------------------------------------------------------------------
def save_extraction_summary(
    signals: dict[str, Any], folder: str | os.PathLike, title: str | None = None
) -> list[str]:
    """Write the extraction summary figure as PNG and PDF.

    One panel (PNG) / page (PDF) per plane: the mean image in grey, each ROI's
    included pixels as cyan dots, its outline in blue, the overlapping pixels
    (removed from the ROIs) as red dots.

    Parameters
    ----------
    signals : dict
        An extraction result (``mean_frame``, ``rois``, ``overlap``, ``timestamp``).
    folder : path-like
        Where to write ``extractSummary_<timestamp>.png`` and ``.pdf``.
    title : str, optional
        Second title line (default: the folder).

    Returns
    -------
    list of str
        The two paths written.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    from . import storage
    from .roi import ROI

    from matplotlib.collections import LineCollection

    folder = Path(os.fspath(folder))
    mean = np.asarray(signals["mean_frame"], dtype=float)
    if mean.ndim == 2:
        mean = mean[None]
    n_planes, n_rows, n_cols = mean.shape
    plane_size = n_rows * n_cols
    stamp = str(signals.get("timestamp", ""))
    removed = "overlap" in signals and signals["overlap"] is not None
    rois = [ROI(**d) if isinstance(d, dict) else d.copy() for d in signals.get("rois", [])]
    pixel_sets = []
    outlines: list[list[np.ndarray]] = [[] for _ in range(n_planes)]
    for roi in rois:
        roi.im_shape = (n_planes, n_rows, n_cols)
        flat = []
        for z, plane in enumerate(roi.mask[:n_planes]):
            coo = plane.tocoo()
            keep = coo.data != 0
            flat.append(z * plane_size + coo.row[keep].astype(np.int64) * n_cols + coo.col[keep])
        pixel_sets.append(np.unique(np.concatenate(flat)) if flat else np.zeros(0, np.int64))
        try:
            polys = roi.polygon_arrays
        except ValueError:  # a weighted mask has no outline
            polys = []
        for verts in polys:
            z = int(verts[0, 2])
            if 0 <= z < n_planes:
                closed = np.vstack([verts, verts[:1]])[:, :2] - 0.5  # corners -> centres
                outlines[z].append(closed)
    all_pix = np.concatenate(pixel_sets) if pixel_sets else np.zeros(0, np.int64)
    counts = np.bincount(all_pix, minlength=n_planes * plane_size)
    shared = np.flatnonzero(counts > 1)
    included = np.flatnonzero(counts == 1) if removed else np.flatnonzero(counts >= 1)

    def dots(ax: Any, flat: np.ndarray, z: int, color: str, size: float) -> None:
        here = flat[(flat // plane_size) == z]
        rr, cc = np.divmod(here % plane_size, n_cols)
        ax.plot(cc, rr, ".", color=color, markersize=size, linestyle="none")

    def draw(ax: Any, z: int) -> None:
        finite = mean[z][np.isfinite(mean[z])]
        vmin, vmax = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
        ax.imshow(mean[z], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        dots(ax, included, z, "c", 1.0)
        if outlines[z]:
            ax.add_collection(LineCollection(outlines[z], colors="b", linewidths=0.8))
        dots(ax, shared, z, "r", 1.5)
        ax.set_xlim(-0.5, n_cols - 0.5)
        ax.set_ylim(n_rows - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(
            f"Extraction summary: {stamp}\n{title or str(folder)}\nPlane {z}", fontsize=8
        )

    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"extractSummary_{stamp}"
    # PNG: all planes side by side
    fig = Figure(figsize=(5.5 * n_planes, 5.5 * n_rows / max(n_cols, 1) + 1.2))
    FigureCanvasAgg(fig)
    for z in range(n_planes):
        draw(fig.add_subplot(1, n_planes, z + 1), z)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    storage.atomic_write_bytes(str(base) + ".png", buf.getvalue())
    # PDF: one 11 x 8 in page per plane
    buf = io.BytesIO()
    with PdfPages(buf) as pdf:
        for z in range(n_planes):
            page = Figure(figsize=(11, 8))
            FigureCanvasAgg(page)
            draw(page.add_subplot(1, 1, 1), z)
            pdf.savefig(page)
    storage.atomic_write_bytes(str(base) + ".pdf", buf.getvalue())
    return [str(base) + ".png", str(base) + ".pdf"]
