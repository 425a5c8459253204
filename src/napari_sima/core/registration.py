"""ROI registration across sessions: shared ids for the same cell, manual id curation.

This is ROI Buddy's "Register ROIs" and its cluster editing, without a GUI.  The ROI
lists of several sessions of one field of view, already brought into a common space
(same ``im_shape``, e.g. with ``import_transformed_ROIs``), are compared and ROIs that
are the same cell receive the same ``id``.

Algorithm (:func:`register_rois`)
---------------------------------
1. **Masks as sparse matrices.**  Every session becomes a CSR ``ROIs x pixels`` matrix
   over the flattened ``(z, y, x)`` volume (a pixel belongs to an ROI where its mask
   weight is ``> 0``; polygon ROIs are rasterised with SIMA's pixel-centre rule).
   Multi-plane ROIs are handled like any other: ROIs on different planes never overlap.
2. **Pairwise IoU.**  For every pair of sessions the intersections of all ROI pairs are
   one sparse product ``A @ B.T``; IoU (Jaccard) is ``|a & b| / (|a| + |b| - |a & b|)``.
   Only overlapping pairs are ever stored.
3. **Optimal one-to-one matching.**  Pairs with ``IoU >= min_iou`` form a bipartite
   graph; each connected component of it is solved with
   :func:`scipy.optimize.linear_sum_assignment` (maximising the summed IoU), so an ROI
   is matched to at most one ROI of each other session.  Solving components separately
   gives the same matching as one assignment on the whole (pairs below ``min_iou`` are
   forbidden anyway) and keeps memory linear in the number of overlaps.
4. **Residual shift correction** (``correct_shift=True``).  The median centroid offset of
   the matched pairs estimates what is left of the misregistration between the two
   sessions; when it rounds to at least one pixel, the second session's masks are
   shifted by it (integer pixels, for the comparison only — the ROIs are not moved)
   and the pair is matched again; the matching with the larger summed IoU is kept.
   On synthetic sessions with a 2.5 pixel residual offset this lifts the fraction of
   correct ids from 82% to 99.8% (``benchmarks/bench_registration.py``).
5. **Consistent clusters across sessions.**  All matches of all session pairs are
   edges of one graph.  Edges are taken by decreasing IoU and join two clusters only
   when the clusters have no session in common (union-find, Kruskal style).  This is
   the connected-components clustering with every component that would hold two ROIs
   of one session split at its weakest links, so a cluster never has two ROIs of the
   same session, and a cell missed in one session still links the others (sessions
   1 and 3 are matched directly).  Matching every session against a growing cluster
   template instead was tried and is less accurate (it depends on the session order
   and an early mistake propagates): 56-100% instead of 79-100% correct ids on the
   same synthetic sessions (``min_iou=0.3``, no shift correction), never better.
6. **Ids.**  Each cluster takes an id (``keep_ids``): the reference session's id of its
   member first, then an id carried by most of its members (e.g. from a previous
   registration); an id is used by one cluster only; other clusters get new ids,
   decimal counters above every integer id in the input (deterministic).

Manual curation for a GUI identifies ROIs as ``(session index, ROI index)`` pairs, or
whole clusters by id string: :func:`merge_ids`, :func:`unmerge_ids`,
:func:`propagate_tags`, plus :func:`id_groups` and :func:`id_conflicts`.  Every function
returns new ROI lists (copies) and leaves its inputs unchanged.

Examples
--------
>>> from napari_sima.core import ROI, ROIList
>>> sq = lambda x, y, n: [[x, y], [x + n, y], [x + n, y + n], [x, y + n]]
>>> s0 = ROIList([ROI(polygons=sq(2, 2, 6), id="a", im_shape=(32, 32)),
...               ROI(polygons=sq(20, 20, 6), id="b", im_shape=(32, 32))])
>>> s1 = ROIList([ROI(polygons=sq(21, 20, 6), im_shape=(32, 32)),
...               ROI(polygons=sq(3, 2, 6), im_shape=(32, 32))])
>>> rois, summary = register_rois([s0, s1])
>>> [r.id for r in rois[1]], summary.n_clusters
(['b', 'a'], 2)
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Generator, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from .roi import ROI, ROIList, _normalize_im_shape

__all__ = [
    "DEFAULT_MIN_IOU",
    "KEEP_IDS",
    "RegistrationSummary",
    "RoiRef",
    "id_conflicts",
    "id_groups",
    "iter_register_rois",
    "merge_ids",
    "pairwise_iou",
    "propagate_tags",
    "register_rois",
    "score_registration",
    "unmerge_ids",
]

#: Default minimum IoU of a match.  Two equal discs have IoU 0.25 when their centres are
#: about one radius apart: the same cell shifted by less than its radius still matches,
#: and two distinct somata would have to overlap by more than that.  On synthetic
#: sessions (``benchmarks/bench_registration.py``) 0.25 keeps >= 98% correct ids in
#: every condition tried (1-2.5 px offsets, 1.5 px jitter, small or crowded cells) with
#: >= 99.85% pair precision; 0.3 drops to ~96% for small cells or 1.5 px jitter, and
#: 0.2 or lower starts merging neighbours in crowded fields with high turnover.
DEFAULT_MIN_IOU = 0.25

#: A GUI-friendly ROI reference: ``(session index, ROI index)``.
RoiRef = tuple[int, int]

#: Keep-id policies of :func:`register_rois`.
KEEP_IDS = ("all", "reference", "none")

#: Minimum number of matched pairs to estimate a residual shift between two sessions.
_MIN_SHIFT_MATCHES = 3
#: Rounds of shift correction per session pair.
_SHIFT_ROUNDS = 3

_INT_ID = re.compile(r"[0-9]+")


# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RegistrationSummary:
    """What :func:`register_rois` found.

    Parameters
    ----------
    clusters : dict of str to tuple of RoiRef
        Every id and the ``(session, ROI index)`` of the ROIs holding it, in cluster
        order (clusters of the reference session's ROIs first, in their order, then the
        other sessions' in session order).  Singletons included.
    cluster_iou : dict of str to float
        The weakest IoU that joined each cluster (NaN for a singleton): a low value
        flags a cluster worth checking by eye.
    n_rois : tuple of int
        ROIs per session.
    n_matched : tuple of int
        ROIs per session that share their id with an ROI of another session.
    shifts : dict of (int, int) to (int, int)
        For every session pair ``(a, b)`` with ``a < b``: the integer shift ``(dy, dx)``
        by which session ``b``'s masks were moved to match session ``a``'s (``(0, 0)``
        when none was needed or estimated).
    pair_matches : dict of (int, int) to int
        Number of matched ROI pairs for every session pair ``(a, b)``.
    n_kept_ids, n_new_ids : int
        Clusters that kept an id from the input / received a new one.
    min_iou : float
        The threshold used.
    reference : int
        The reference session.
    empty : tuple of RoiRef
        ROIs without any pixel in the image (they match nothing).
    """

    clusters: dict[str, tuple[RoiRef, ...]]
    cluster_iou: dict[str, float]
    n_rois: tuple[int, ...]
    n_matched: tuple[int, ...]
    shifts: dict[tuple[int, int], tuple[int, int]]
    pair_matches: dict[tuple[int, int], int]
    n_kept_ids: int
    n_new_ids: int
    min_iou: float
    reference: int
    empty: tuple[RoiRef, ...] = field(default=())

    @property
    def n_clusters(self) -> int:
        """Number of distinct cells (clusters, singletons included)."""
        return len(self.clusters)

    @property
    def cluster_sizes(self) -> dict[int, int]:
        """``{k: number of clusters spanning k sessions}``, ``k`` ascending."""
        counts = Counter(len(m) for m in self.clusters.values())
        return dict(sorted(counts.items()))

    def todict(self) -> dict[str, Any]:
        """Return the summary as JSON-able values (NaN becomes ``None``).

        Returns
        -------
        dict
            ``n_clusters``, ``cluster_sizes``, ``n_rois``, ``n_matched``, ``n_kept_ids``,
            ``n_new_ids``, ``min_iou``, ``reference``, ``pairs`` (one item per session
            pair with its ``shift`` and ``matches``), ``clusters`` (id to list of
            ``[session, index]``), ``cluster_iou`` and ``empty``.
        """
        return {
            "n_clusters": self.n_clusters,
            "cluster_sizes": {str(k): v for k, v in self.cluster_sizes.items()},
            "n_rois": list(self.n_rois),
            "n_matched": list(self.n_matched),
            "n_kept_ids": self.n_kept_ids,
            "n_new_ids": self.n_new_ids,
            "min_iou": self.min_iou,
            "reference": self.reference,
            "pairs": [
                {
                    "sessions": [a, b],
                    "shift": list(self.shifts[(a, b)]),
                    "matches": self.pair_matches[(a, b)],
                }
                for a, b in sorted(self.pair_matches)
            ],
            "clusters": {k: [list(r) for r in v] for k, v in self.clusters.items()},
            "cluster_iou": {
                k: (float(v) if math.isfinite(v) else None) for k, v in self.cluster_iou.items()
            },
            "empty": [list(r) for r in self.empty],
        }

    def __repr__(self) -> str:
        return (
            f"<RegistrationSummary: {sum(self.n_rois)} ROIs in {len(self.n_rois)} sessions -> "
            f"{self.n_clusters} cells, sizes {self.cluster_sizes}, min_iou={self.min_iou:g}>"
        )


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------
def _check_lists(roi_lists: Any) -> list[ROIList]:
    """Validate the sessions; return them as ROI lists (same ROI objects, timestamps kept)."""
    if isinstance(roi_lists, (ROI, str)) or not isinstance(roi_lists, Iterable):
        raise TypeError(
            "roi_lists must be a sequence of ROI lists (one per session), got "
            f"{type(roi_lists).__name__}"
        )
    out = []
    for s, rois in enumerate(roi_lists):
        if isinstance(rois, (ROI, str)) or not isinstance(rois, Iterable):
            raise TypeError(f"session {s}: expected a list of ROIs, got {type(rois).__name__}")
        items = list(rois)
        for k, roi in enumerate(items):
            if not isinstance(roi, ROI):
                raise TypeError(f"session {s}, item {k}: expected an ROI, got {type(roi).__name__}")
        out.append(ROIList(items, timestamp=getattr(rois, "timestamp", None)))
    return out


def _check_min_iou(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"min_iou must be a number in (0, 1], got {value!r}") from None
    if not (0.0 < v <= 1.0):
        raise ValueError(f"min_iou must be in (0, 1], got {value!r}")
    return v


def _name(rois: Sequence[ROI], ref: RoiRef) -> str:
    s, k = ref
    label = rois[k].label
    return f"session {s} ROI {k}" + (f" ({label!r})" if label is not None else "")


def _common_shape(
    lists: list[ROIList], im_shape: Any
) -> tuple[tuple[int, int, int], list[ROIList]]:
    """Return the shared ``(planes, rows, columns)`` and the lists with shapes filled in."""
    given = _normalize_im_shape(im_shape)
    per_session: list[tuple[int, int, int] | None] = []
    out_lists = []
    for s, rois in enumerate(lists):
        shape = given
        out = []
        for k, roi in enumerate(rois):
            own = roi.im_shape
            if own is None:
                if given is None:
                    raise ValueError(
                        f"{_name(rois, (s, k))} has no mask: it is drawn as polygons "
                        f"without im_shape; set its im_shape or pass im_shape=(rows, "
                        f"columns) to register_rois"
                    )
                roi = roi.copy()
                roi.im_shape = given
                own = given
            if shape is None:
                shape = own
            elif own != shape:
                what = f"im_shape={given}" if given is not None else f"ROI 0's {shape}"
                raise ValueError(
                    f"{_name(rois, (s, k))} has im_shape {own}, unlike {what} of session "
                    f"{s}: all ROIs must be in one common space (transform them onto the "
                    f"reference first, e.g. with import_transformed_ROIs)"
                )
            out.append(roi)
        per_session.append(shape)
        out_lists.append(ROIList(out, timestamp=rois.timestamp))
    shapes = {sh for sh in per_session if sh is not None}
    if len(shapes) > 1:
        listing = ", ".join(f"session {s}: {sh}" for s, sh in enumerate(per_session) if sh)
        raise ValueError(
            f"the ROI lists have different image shapes ({listing}); bring them into one "
            f"common space first (e.g. import_transformed_ROIs onto the reference)"
        )
    shape = shapes.pop() if shapes else (given or (1, 1, 1))
    return shape, out_lists  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Sparse masks and IoU
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Pixels:
    """One session's ROIs as pixel lists: ROI index, plane, row and column per pixel."""

    roi: NDArray[np.int64]
    z: NDArray[np.int64]
    y: NDArray[np.int64]
    x: NDArray[np.int64]
    n_rois: int
    shape: tuple[int, int, int]

    def matrix(self, dy: int = 0, dx: int = 0) -> sparse.csr_matrix:
        """CSR ``ROIs x pixels`` (float32 ones), masks shifted by ``(dy, dx)`` pixels."""
        n, rows, cols = self.shape
        y, x, roi, z = self.y + dy, self.x + dx, self.roi, self.z
        if dy or dx:
            keep = (y >= 0) & (y < rows) & (x >= 0) & (x < cols)
            y, x, roi, z = y[keep], x[keep], roi[keep], z[keep]
        flat = (z * rows + y) * cols + x
        return sparse.csr_matrix(
            (np.ones(flat.size, dtype=np.float32), (roi, flat)),
            shape=(self.n_rois, n * rows * cols),
        )

    @property
    def sizes(self) -> NDArray[np.float64]:
        return np.bincount(self.roi, minlength=self.n_rois).astype(np.float64)

    @property
    def centroids(self) -> NDArray[np.float64]:
        """``(n_rois, 2)`` mean ``(y, x)`` of each ROI (NaN for empty ROIs)."""
        size = self.sizes
        with np.errstate(invalid="ignore", divide="ignore"):
            cy = np.bincount(self.roi, weights=self.y, minlength=self.n_rois) / size
            cx = np.bincount(self.roi, weights=self.x, minlength=self.n_rois) / size
        return np.column_stack([cy, cx])


def _pixels(rois: Sequence[ROI], shape: tuple[int, int, int], session: int) -> _Pixels:
    from .extract import _rasterize_polygon_rois

    n_planes, rows, cols = shape
    # polygon ROIs: every polygon of the session in one vectorised containment test
    flat_of = _rasterize_polygon_rois(list(rois), shape)
    parts_r, parts_z, parts_y, parts_x = [], [], [], []
    for k, roi in enumerate(rois):
        if k in flat_of:
            z, rem = np.divmod(flat_of[k].astype(np.int64), rows * cols)
            y, x = np.divmod(rem, cols)
            parts_z.append(z)
            parts_y.append(y)
            parts_x.append(x)
            parts_r.append(np.full(z.size, k, dtype=np.int64))
            continue
        try:
            planes = roi.mask
        except ValueError as err:
            raise ValueError(f"{_name(rois, (session, k))}: cannot rasterise it: {err}") from err
        for z, plane in enumerate(planes):
            coo = plane.tocoo()
            keep = coo.data > 0
            if not keep.any():
                continue
            y = coo.row[keep].astype(np.int64)
            parts_y.append(y)
            parts_x.append(coo.col[keep].astype(np.int64))
            parts_z.append(np.full(y.size, z, dtype=np.int64))
            parts_r.append(np.full(y.size, k, dtype=np.int64))

    def cat(parts: list[np.ndarray]) -> NDArray[np.int64]:
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    return _Pixels(
        roi=cat(parts_r),
        z=cat(parts_z),
        y=cat(parts_y),
        x=cat(parts_x),
        n_rois=len(rois),
        shape=shape,
    )


def _iou_coo(
    a: sparse.csr_matrix, b: sparse.csr_matrix, size_a: np.ndarray, size_b: np.ndarray
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Rows, columns and IoU of every overlapping pair (sparse product)."""
    inter = (a @ b.T).tocoo()
    rows, cols = inter.row.astype(np.intp), inter.col.astype(np.intp)
    both = inter.data.astype(np.float64)
    iou = both / (size_a[rows] + size_b[cols] - both)
    order = np.lexsort((cols, rows))
    return rows[order], cols[order], iou[order]


def pairwise_iou(
    rois_a: Sequence[ROI], rois_b: Sequence[ROI], im_shape: Any = None
) -> sparse.csr_matrix:
    """Return the IoU (Jaccard index) of every pair of ROIs of two lists, sparsely.

    Parameters
    ----------
    rois_a, rois_b : sequence of ROI
        ROIs in one common space (same ``im_shape``).
    im_shape : tuple, optional
        Shape given to polygon ROIs without one.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(len(rois_a), len(rois_b))`` float64; only overlapping pairs are stored.

    Raises
    ------
    ValueError
        If the ROIs have different ``im_shape`` or cannot be rasterised.

    Notes
    -----
    A pixel belongs to an ROI where its mask weight is ``> 0``.
    """
    shape, (la, lb) = _common_shape(_check_lists([rois_a, rois_b]), im_shape)
    pa, pb = _pixels(la, shape, 0), _pixels(lb, shape, 1)
    rows, cols, iou = _iou_coo(pa.matrix(), pb.matrix(), pa.sizes, pb.sizes)
    return sparse.csr_matrix((iou, (rows, cols)), shape=(len(la), len(lb)))


# ---------------------------------------------------------------------------------------
# Matching one pair of sessions
# ---------------------------------------------------------------------------------------
def _match(
    rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, n_a: int, n_b: int, min_iou: float
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """One-to-one matching maximising the summed IoU over pairs with IoU >= min_iou."""
    keep = iou >= min_iou
    rows, cols, iou = rows[keep], cols[keep], iou[keep]
    if rows.size == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, np.empty(0)
    graph = sparse.coo_matrix(
        (np.ones(rows.size), (rows, n_a + cols)), shape=(n_a + n_b, n_a + n_b)
    )
    _, label = connected_components(graph, directed=False)
    comp = label[rows]
    order = np.argsort(comp, kind="stable")
    cuts = np.flatnonzero(np.diff(comp[order])) + 1
    out_r, out_c, out_v = [], [], []
    for edges in np.split(order, cuts):
        if edges.size == 1:
            out_r.append(rows[edges])
            out_c.append(cols[edges])
            out_v.append(iou[edges])
            continue
        ur, ir = np.unique(rows[edges], return_inverse=True)
        uc, ic = np.unique(cols[edges], return_inverse=True)
        weight = np.zeros((ur.size, uc.size))
        allowed = np.zeros((ur.size, uc.size), dtype=bool)
        weight[ir, ic] = iou[edges]
        allowed[ir, ic] = True
        ri, ci = linear_sum_assignment(weight, maximize=True)
        ok = allowed[ri, ci]
        out_r.append(ur[ri[ok]])
        out_c.append(uc[ci[ok]])
        out_v.append(weight[ri[ok], ci[ok]])
    r, c, v = np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)
    order = np.argsort(r, kind="stable")
    return r[order].astype(np.intp), c[order].astype(np.intp), v[order]


def _match_pair(
    pa: _Pixels,
    pb: _Pixels,
    ma: sparse.csr_matrix,
    min_iou: float,
    correct_shift: bool,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64], tuple[int, int]]:
    size_a, size_b = pa.sizes, pb.sizes
    best = _match(*_iou_coo(ma, pb.matrix(), size_a, size_b), pa.n_rois, pb.n_rois, min_iou)
    shift = (0, 0)
    if not correct_shift:
        return (*best, shift)
    ca, cb = pa.centroids, pb.centroids
    current, dy, dx = best, 0, 0
    for _ in range(_SHIFT_ROUNDS):
        ra, rb, _v = current
        if ra.size < _MIN_SHIFT_MATCHES:
            break
        # the shifted centroids of b: add the shift already applied
        offset = np.median(ca[ra] - (cb[rb] + (dy, dx)), axis=0)
        step_y, step_x = (int(v) for v in np.rint(offset))
        if step_y == 0 and step_x == 0:
            break
        dy, dx = dy + step_y, dx + step_x
        current = _match(
            *_iou_coo(ma, pb.matrix(dy, dx), size_a, size_b), pa.n_rois, pb.n_rois, min_iou
        )
        if current[2].sum() > best[2].sum():
            best, shift = current, (dy, dx)
    return (*best, shift)


# ---------------------------------------------------------------------------------------
# Clustering and ids
# ---------------------------------------------------------------------------------------
def _cluster(
    n_rois: list[int], edges: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]]
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Union matched pairs by decreasing IoU, never joining clusters sharing a session.

    Returns the root node of every ROI (global numbering) and the weakest joining IoU
    of every root (NaN for singletons).
    """
    offsets = np.concatenate([[0], np.cumsum(n_rois)]).astype(np.intp)
    n = int(offsets[-1])
    session = np.repeat(np.arange(len(n_rois)), n_rois)
    if edges:
        ii = np.concatenate([offsets[a] + ra for ra, _rb, _v, a, _b in edges])
        jj = np.concatenate([offsets[b] + rb for _ra, rb, _v, _a, b in edges])
        ww = np.concatenate([v for _ra, _rb, v, _a, _b in edges])
    else:
        ii = jj = np.empty(0, dtype=np.intp)
        ww = np.empty(0)
    order = np.lexsort((jj, ii, -ww))  # by decreasing IoU, ties by node numbers
    parent = np.arange(n)
    sessions: dict[int, set[int]] = {}
    weakest = np.full(n, np.nan)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for e in order.tolist():
        ri, rj = find(int(ii[e])), find(int(jj[e]))
        if ri == rj:
            continue
        si = sessions.get(ri) or {int(session[ri])}
        sj = sessions.get(rj) or {int(session[rj])}
        if si & sj:
            continue
        root, other = min(ri, rj), max(ri, rj)
        parent[other] = root
        sessions[root] = si | sj
        sessions.pop(other, None)
        weakest[root] = ww[e]  # edges come by decreasing IoU: the latest is the weakest
    roots = np.array([find(i) for i in range(n)], dtype=np.intp)
    return roots, weakest


class _IdFactory:
    """New ids: decimal counters above every integer id seen, skipping taken ids."""

    def __init__(self, taken: Iterable[str | None]) -> None:
        self.taken = {t for t in taken if t is not None}
        ints = [int(t) for t in self.taken if _INT_ID.fullmatch(t)]
        self.next = max(ints) + 1 if ints else 0

    def __call__(self) -> str:
        while str(self.next) in self.taken:
            self.next += 1
        new = str(self.next)
        self.taken.add(new)
        self.next += 1
        return new


def _assign_ids(
    lists: list[list[ROI]],
    clusters: list[list[RoiRef]],
    reference: int,
    keep_ids: str,
) -> tuple[list[str], int]:
    """Pick one id per cluster; returns the ids and how many were kept from the input."""
    ids: list[str | None] = [None] * len(clusters)
    claimed: set[str] = set()
    rank = {
        s: i for i, s in enumerate([reference] + [s for s in range(len(lists)) if s != reference])
    }
    if keep_ids != "none":
        # pass 1: the reference session's ids win
        for c, members in enumerate(clusters):
            for s, k in members:
                old = lists[s][k].id
                if s == reference and old is not None and old not in claimed:
                    ids[c] = old
                    claimed.add(old)
    if keep_ids == "all":
        # pass 2: the id most members carry (ties: earliest session, then ROI)
        for c, members in enumerate(clusters):
            if ids[c] is not None:
                continue
            votes: Counter[str] = Counter()
            first: dict[str, tuple[int, int]] = {}
            for s, k in sorted(members, key=lambda m: (rank[m[0]], m[1])):
                old = lists[s][k].id
                if old is not None:
                    votes[old] += 1
                    first.setdefault(old, (rank[s], k))
            for old in sorted(votes, key=lambda t: (-votes[t], first[t])):
                if old not in claimed:
                    ids[c] = old
                    claimed.add(old)
                    break
    kept = sum(i is not None for i in ids)
    existing = [] if keep_ids == "none" else [r.id for rois in lists for r in rois]
    fresh = _IdFactory(existing)
    return [i if i is not None else fresh() for i in ids], kept


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------
def iter_register_rois(
    roi_lists: Sequence[Sequence[ROI]],
    min_iou: float = DEFAULT_MIN_IOU,
    reference: int = 0,
    keep_ids: str = "all",
    correct_shift: bool = True,
    im_shape: tuple[int, ...] | None = None,
) -> Generator[tuple[int, int], None, tuple[list[ROIList], RegistrationSummary]]:
    """Register ROIs across sessions, as a generator yielding ``(steps_done, total)``.

    Same parameters and result (the generator's return value) as :func:`register_rois`;
    closing the generator cancels the work (nothing is changed).  The steps are one
    per session (rasterising its ROIs) and one per pair of sessions (matching).
    """
    lists = _check_lists(roi_lists)
    if not lists:
        raise ValueError("register_rois needs at least one ROI list")
    min_iou = _check_min_iou(min_iou)
    if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)):
        raise TypeError(f"reference must be a session index (int), got {reference!r}")
    reference = int(reference)
    if not 0 <= reference < len(lists):
        raise ValueError(f"reference={reference} is not a session index (0..{len(lists) - 1})")
    if keep_ids not in KEEP_IDS:
        raise ValueError(f"keep_ids must be one of {KEEP_IDS}, got {keep_ids!r}")
    shape, lists = _common_shape(lists, im_shape)

    n_sessions = len(lists)
    pairs = [(a, b) for a in range(n_sessions) for b in range(a + 1, n_sessions)]
    total = n_sessions + len(pairs)
    done = 0
    yield done, total
    pixels = []
    for s, rois in enumerate(lists):
        pixels.append(_pixels(rois, shape, s))
        done += 1
        yield done, total
    empty = tuple((s, int(k)) for s, p in enumerate(pixels) for k in np.flatnonzero(p.sizes == 0))
    if empty:
        names = ", ".join(_name(lists[s], (s, k)) for s, k in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        warnings.warn(
            f"{len(empty)} ROI(s) have no pixel in the image and match nothing: {names}{more}",
            stacklevel=2,
        )

    edges = []
    shifts: dict[tuple[int, int], tuple[int, int]] = {}
    counts: dict[tuple[int, int], int] = {}
    matrices = [p.matrix() for p in pixels]
    for a, b in pairs:
        ra, rb, v, shift = _match_pair(pixels[a], pixels[b], matrices[a], min_iou, correct_shift)
        edges.append((ra, rb, v, a, b))
        shifts[(a, b)] = shift
        counts[(a, b)] = int(ra.size)
        done += 1
        yield done, total

    n_rois = [len(rois) for rois in lists]
    roots, weakest = _cluster(n_rois, edges)
    offsets = np.concatenate([[0], np.cumsum(n_rois)]).astype(np.intp)
    # cluster order: by first member, reference session first
    session_order = [reference] + [s for s in range(n_sessions) if s != reference]
    cluster_of_root: dict[int, int] = {}
    clusters: list[list[RoiRef]] = []
    for s in session_order:
        for k in range(n_rois[s]):
            root = int(roots[offsets[s] + k])
            c = cluster_of_root.setdefault(root, len(clusters))
            if c == len(clusters):
                clusters.append([])
            clusters[c].append((s, k))
    for members in clusters:
        members.sort()
    ids, kept = _assign_ids(lists, clusters, reference, keep_ids)

    out = _copy_lists(lists)
    root_of_cluster = {c: r for r, c in cluster_of_root.items()}
    for c, members in enumerate(clusters):
        for s, k in members:
            out[s][k].id = ids[c]
    summary = RegistrationSummary(
        clusters={ids[c]: tuple(m) for c, m in enumerate(clusters)},
        cluster_iou={ids[c]: float(weakest[root_of_cluster[c]]) for c in range(len(clusters))},
        n_rois=tuple(n_rois),
        n_matched=tuple(
            sum(1 for c in clusters if len(c) > 1 for s2, _k in c if s2 == s)
            for s in range(n_sessions)
        ),
        shifts=shifts,
        pair_matches=counts,
        n_kept_ids=kept,
        n_new_ids=len(clusters) - kept,
        min_iou=min_iou,
        reference=reference,
        empty=empty,
    )
    return out, summary


def register_rois(
    roi_lists: Sequence[Sequence[ROI]],
    min_iou: float = DEFAULT_MIN_IOU,
    reference: int = 0,
    keep_ids: str = "all",
    correct_shift: bool = True,
    im_shape: tuple[int, ...] | None = None,
) -> tuple[list[ROIList], RegistrationSummary]:
    """Give ROIs that are the same cell in different sessions one shared ``id``.

    Parameters
    ----------
    roi_lists : sequence of ROIList (or of sequences of ROI)
        One ROI list per session, already in one common space (same ``im_shape``).
        Boolean or weighted masks, or polygons; single- or multi-plane.
    min_iou : float
        Minimum IoU (Jaccard index) of two ROIs to be the same cell, in ``(0, 1]``.
        The default 0.25 (about one radius between the centres of two equal discs)
        tolerates outline differences and shifts of up to about a cell radius while
        keeping distinct neighbouring cells apart (see :data:`DEFAULT_MIN_IOU`); lower
        it for small cells with large residual motion, raise it for crowded fields
        with heavily overlapping ROIs.
    reference : int
        Session whose ids are kept first (ROI Buddy kept the reference's ids); the
        clusters are listed starting with its ROIs.
    keep_ids : {'all', 'reference', 'none'}
        Which existing ids to keep: ``'all'`` (default) — a cluster keeps its
        reference ROI's id, else the id most of its members carry (so registering
        again after adding a session keeps the ids); ``'reference'`` — only the
        reference session's ids; ``'none'`` — number every cluster anew
        (``'0'``, ``'1'``, ... in cluster order).  An id is never given to two
        clusters; the others get new ids (decimal counters above every integer id of
        the input).
    correct_shift : bool
        Estimate and remove (for the comparison only) a residual integer-pixel shift
        between each pair of sessions from the median centroid offset of their first
        matches (see the module notes).
    im_shape : tuple, optional
        Shape given to polygon ROIs that have none; ROIs with another shape are an
        error.

    Returns
    -------
    roi_lists : list of ROIList
        Copies of the input lists with the ``id`` of every ROI set (same order,
        timestamps kept).  The inputs are not changed.
    summary : RegistrationSummary
        Clusters, per-session counts, residual shifts and id bookkeeping.

    Raises
    ------
    ValueError
        If there is no list, ``min_iou`` is outside ``(0, 1]``, ``reference`` is not a
        session index, ``keep_ids`` is unknown, the lists have different image shapes,
        or an ROI cannot be rasterised (polygons without ``im_shape``).
    TypeError
        If an item is not an ROI.

    Warns
    -----
    UserWarning
        For ROIs without any pixel in the image (they stay alone).

    See Also
    --------
    iter_register_rois : the same as a generator with progress.
    merge_ids, unmerge_ids, propagate_tags : manual curation afterwards.

    Notes
    -----
    A cluster never holds two ROIs of one session.  The same input always gives the
    same ids; the order of the ROIs within a list only matters for exact IoU ties.
    """
    gen = iter_register_rois(
        roi_lists,
        min_iou=min_iou,
        reference=reference,
        keep_ids=keep_ids,
        correct_shift=correct_shift,
        im_shape=im_shape,
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# ---------------------------------------------------------------------------------------
# Manual curation
# ---------------------------------------------------------------------------------------
def id_groups(roi_lists: Sequence[Sequence[ROI]]) -> dict[str, list[RoiRef]]:
    """Return every id and the ``(session, ROI index)`` of the ROIs holding it.

    Parameters
    ----------
    roi_lists : sequence of ROIList
        One list per session.

    Returns
    -------
    dict of str to list of RoiRef
        In order of first appearance (session by session); ROIs without id are left out.
    """
    groups: dict[str, list[RoiRef]] = {}
    for s, rois in enumerate(_check_lists(roi_lists)):
        for k, roi in enumerate(rois):
            if roi.id is not None:
                groups.setdefault(roi.id, []).append((s, k))
    return groups


def id_conflicts(roi_lists: Sequence[Sequence[ROI]]) -> dict[str, list[RoiRef]]:
    """Return the ids held by two or more ROIs of the same session (inconsistent ids).

    Parameters
    ----------
    roi_lists : sequence of ROIList
        One list per session.

    Returns
    -------
    dict of str to list of RoiRef
        Each offending id with all the ROIs holding it; empty when ids are consistent.
    """
    out = {}
    for ident, members in id_groups(roi_lists).items():
        sessions = [s for s, _k in members]
        if len(set(sessions)) < len(sessions):
            out[ident] = members
    return out


def _copy_lists(lists: list[ROIList]) -> list[ROIList]:
    return [ROIList([r.copy() for r in rois], timestamp=rois.timestamp) for rois in lists]


def _resolve(
    lists: list[list[ROI]], items: Any, groups: dict[str, list[RoiRef]], what: str
) -> tuple[list[RoiRef], list[list[RoiRef]]]:
    """Turn ``(session, index)`` pairs and id strings into ROI refs.

    Returns the chosen refs (in order, no duplicates) and, per item, its refs.
    """
    if isinstance(items, (str, tuple)) and (
        isinstance(items, str) or (len(items) == 2 and not isinstance(items[0], (tuple, list)))
    ):
        items = [items]
    if not isinstance(items, Iterable):
        raise TypeError(
            f"{what}: ROIs must be given as (session, index) pairs or id strings, got "
            f"{type(items).__name__}"
        )
    chosen: list[RoiRef] = []
    per_item: list[list[RoiRef]] = []
    for item in items:
        if isinstance(item, str):
            if item not in groups:
                raise ValueError(f"{what}: no ROI has id {item!r}")
            refs = list(groups[item])
        else:
            try:
                s, k = item
                if isinstance(s, bool) or isinstance(k, bool):
                    raise TypeError
                s, k = int(s), int(k)
                if s != item[0] or k != item[1]:
                    raise TypeError
            except (TypeError, ValueError):
                raise TypeError(
                    f"{what}: each ROI must be a (session, index) pair of integers or an id "
                    f"string, got {item!r}"
                ) from None
            if not 0 <= s < len(lists):
                raise ValueError(
                    f"{what}: session {s} does not exist (there are {len(lists)} sessions)"
                )
            if not 0 <= k < len(lists[s]):
                raise ValueError(
                    f"{what}: session {s} has no ROI {k} (it has {len(lists[s])} ROIs)"
                )
            refs = [(s, k)]
        per_item.append(refs)
        for ref in refs:
            if ref not in chosen:
                chosen.append(ref)
    if not chosen:
        raise ValueError(f"{what}: no ROI given")
    return chosen, per_item


def merge_ids(
    roi_lists: Sequence[Sequence[ROI]],
    rois: Iterable[RoiRef | str] | RoiRef | str,
    id: str | None = None,  # noqa: A002 - the ROI attribute's name
) -> tuple[list[ROIList], str]:
    """Give chosen ROIs, and every ROI sharing their ids, one shared id (one cell).

    Parameters
    ----------
    roi_lists : sequence of ROIList
        One list per session.
    rois : (session, index) pair, id string, or an iterable of them
        The ROIs to merge.  An id string stands for all ROIs holding it; an ROI's whole
        cluster (all ROIs sharing its id) is merged with it.
    id : str, optional
        The id to give.  Default: the id of the largest merged cluster (ties: the first
        given), or a new id when none of the ROIs has one.  An id held by ROIs outside
        the merge is refused.

    Returns
    -------
    roi_lists : list of ROIList
        Copies with the ids changed; the inputs are not changed.
    id : str
        The shared id.

    Raises
    ------
    ValueError
        If the merge would give one id to two ROIs of the same session (named in the
        message), an ROI reference or id does not exist, or ``id`` is taken.
    TypeError
        For malformed ROI references.

    Examples
    --------
    >>> from napari_sima.core import ROI, ROIList
    >>> sq = [[0, 0], [4, 0], [4, 4], [0, 4]]
    >>> lists = [ROIList([ROI(polygons=sq, id="3", im_shape=(8, 8))]),
    ...          ROIList([ROI(polygons=sq, id="9", im_shape=(8, 8))])]
    >>> new, ident = merge_ids(lists, [(0, 0), (1, 0)])
    >>> ident, [r[0].id for r in new]
    ('3', ['3', '3'])
    """
    lists = _check_lists(roi_lists)
    groups = id_groups(lists)
    chosen, _per_item = _resolve(lists, rois, groups, "merge_ids")
    # expand to whole clusters, remembering each cluster's size and first mention
    members: list[RoiRef] = []
    candidates: list[tuple[int, int, str]] = []  # (-size, order, id)
    for order, (s, k) in enumerate(chosen):
        old = lists[s][k].id
        refs = groups[old] if old is not None else [(s, k)]
        if old is not None and all(c[2] != old for c in candidates):
            candidates.append((-len(refs), order, old))
        for ref in refs:
            if ref not in members:
                members.append(ref)
    by_session: dict[int, list[RoiRef]] = {}
    for s, k in members:
        by_session.setdefault(s, []).append((s, k))
    clashes = {s: refs for s, refs in by_session.items() if len(refs) > 1}
    if clashes:
        text = "; ".join(
            ", ".join(_name(lists[s], ref) for ref in refs) for s, refs in clashes.items()
        )
        raise ValueError(
            f"merge_ids: cannot give one id to two ROIs of the same session ({text}); "
            f"unmerge one of them first"
        )
    if id is not None:
        new_id = str(id)
        outside = [ref for ref in groups.get(new_id, []) if ref not in members]
        if outside:
            raise ValueError(
                f"merge_ids: id {new_id!r} is already used by "
                + ", ".join(_name(lists[s], (s, k)) for s, k in outside)
            )
    elif candidates:
        new_id = min(candidates)[2]
    else:
        new_id = _IdFactory(groups)()
    out = _copy_lists(lists)
    for s, k in members:
        out[s][k].id = new_id
    return out, new_id


def unmerge_ids(
    roi_lists: Sequence[Sequence[ROI]],
    rois: Iterable[RoiRef | str] | RoiRef | str,
) -> tuple[list[ROIList], list[str]]:
    """Take chosen ROIs out of their clusters: each ends with an id no other ROI has.

    Parameters
    ----------
    roi_lists : sequence of ROIList
        One list per session.
    rois : (session, index) pair, id string, or an iterable of them
        The ROIs to unmerge; an id string stands for all ROIs holding it (the cluster
        is dissolved).

    Returns
    -------
    roi_lists : list of ROIList
        Copies with the ids changed; the inputs are not changed.
    ids : list of str
        The id of each chosen ROI afterwards, in the order given.

    Notes
    -----
    The chosen ROIs get new ids (decimal counters above every integer id in use),
    except that when all ROIs of a cluster are chosen, the first of them (session
    order) keeps the old id, and an ROI already alone with its id keeps it.  ROIs
    without an id get a new one.

    Raises
    ------
    ValueError
        If an ROI reference or id does not exist.
    TypeError
        For malformed ROI references.
    """
    lists = _check_lists(roi_lists)
    groups = id_groups(lists)
    chosen, _per_item = _resolve(lists, rois, groups, "unmerge_ids")
    fresh = _IdFactory(groups)
    new: dict[RoiRef, str] = {}
    chosen_set = set(chosen)
    for s, k in chosen:
        old = lists[s][k].id
        if old is None:
            new[(s, k)] = fresh()
            continue
        holders = groups[old]
        if all(ref in chosen_set for ref in holders) and (s, k) == min(holders):
            continue  # the whole cluster is dissolved: its first ROI keeps the id
        if len(holders) == 1:
            continue
        new[(s, k)] = fresh()
    out = _copy_lists(lists)
    for (s, k), ident in new.items():
        out[s][k].id = ident
    return out, [out[s][k].id for s, k in chosen]  # type: ignore[misc]


def propagate_tags(
    roi_lists: Sequence[Sequence[ROI]],
    tags: Iterable[str] | str | None = None,
    rois: Iterable[RoiRef | str] | RoiRef | str | None = None,
) -> list[ROIList]:
    """Copy tags to every ROI sharing an id (ROI Buddy's "propagate tags").

    Parameters
    ----------
    roi_lists : sequence of ROIList
        One list per session.
    tags : iterable of str or str, optional
        The tags to propagate (a single string is one tag); None propagates all tags.
    rois : (session, index) pair, id string, or an iterable of them, optional
        Limit the propagation to the clusters of these ROIs (default: every id).

    Returns
    -------
    list of ROIList
        Copies where every ROI of a cluster has the union of the chosen tags found in
        its cluster (tags are only added, never removed); ROIs without id are unchanged.

    Raises
    ------
    ValueError, TypeError
        For unknown or malformed ROI references, or tags that are not strings.

    Notes
    -----
    With ``tags=None`` curation tags propagate too; a cluster with one ROI
    ``'accepted'`` and another ``'rejected'`` ends with both tags, which
    :func:`~napari_sima.core.roi_ops.curation_status` reads as rejected.
    """
    lists = _check_lists(roi_lists)
    if tags is not None:
        tags = [tags] if isinstance(tags, str) else list(tags)
        for t in tags:
            if not isinstance(t, str):
                raise TypeError(f"propagate_tags: tags must be strings, got {t!r}")
        wanted: set[str] | None = set(tags)
    else:
        wanted = None
    groups = id_groups(lists)
    if rois is not None:
        chosen, _ = _resolve(lists, rois, groups, "propagate_tags")
        selected = {lists[s][k].id for s, k in chosen} - {None}
        groups = {i: m for i, m in groups.items() if i in selected}
    out = _copy_lists(lists)
    for members in groups.values():
        union: set[str] = set()
        for s, k in members:
            have = lists[s][k].tags
            union |= have if wanted is None else have & wanted
        if union:
            for s, k in members:
                out[s][k].tags = out[s][k].tags | union
    return out


# ---------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------
def score_registration(
    predicted: Sequence[Sequence[ROI | str | None]],
    truth: Sequence[Sequence[Hashable]],
) -> dict[str, float | int | bool]:
    """Score predicted ids against the true cell of every ROI.

    Parameters
    ----------
    predicted : sequence per session of ROIs or ids
        The registered ROI lists (their ``id`` is read) or the ids themselves; a None
        id is an ROI alone in its cluster.
    truth : sequence per session of hashables
        The true cell of each ROI (e.g. ``SyntheticSessions.cells``).

    Returns
    -------
    dict
        ``roi_accuracy``
            Fraction of correct ids: the fraction of ROIs whose predicted cluster (the
            ROIs sharing its id) is exactly its true cluster (the ROIs of the same
            cell) — an ROI counts as wrong if a match is missing or extra.
        ``pair_precision``, ``pair_recall``, ``pair_f1``
            Over all pairs of ROIs: same id predicted and same cell truly
            (NaN when undefined).
        ``n_rois``, ``n_true_pairs``, ``n_predicted_pairs``, ``n_correct_pairs``
            Counts.
        ``consistent``
            No id is held by two ROIs of one session.

    Raises
    ------
    ValueError
        If ``predicted`` and ``truth`` do not have the same lengths.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"predicted has {len(predicted)} sessions but truth has {len(truth)}")
    pred: list[Hashable] = []
    true: list[Hashable] = []
    sessions: list[int] = []
    for s, (p_list, t_list) in enumerate(zip(predicted, truth, strict=True)):
        p_list, t_list = list(p_list), list(t_list)
        if len(p_list) != len(t_list):
            raise ValueError(
                f"session {s}: {len(p_list)} predicted ROIs but {len(t_list)} true labels"
            )
        for k, (p, t) in enumerate(zip(p_list, t_list, strict=True)):
            ident = p.id if isinstance(p, ROI) else p
            pred.append(("id", ident) if ident is not None else ("none", s, k))
            true.append(t)
            sessions.append(s)
    pred_groups: dict[Hashable, set[int]] = {}
    true_groups: dict[Hashable, set[int]] = {}
    for i, (p, t) in enumerate(zip(pred, true, strict=True)):
        pred_groups.setdefault(p, set()).add(i)
        true_groups.setdefault(t, set()).add(i)
    correct = sum(pred_groups[p] == true_groups[t] for p, t in zip(pred, true, strict=True))

    def pairs(n: int) -> int:
        return n * (n - 1) // 2

    n_correct = sum(pairs(v) for v in Counter(zip(pred, true, strict=True)).values())
    n_pred = sum(pairs(len(v)) for v in pred_groups.values())
    n_true = sum(pairs(len(v)) for v in true_groups.values())
    precision = n_correct / n_pred if n_pred else math.nan
    recall = n_correct / n_true if n_true else math.nan
    f1 = 2 * n_correct / (n_pred + n_true) if (n_pred + n_true) else math.nan
    consistent = all(
        len({sessions[i] for i in members}) == len(members) for members in pred_groups.values()
    )
    n = len(pred)
    return {
        "roi_accuracy": correct / n if n else math.nan,
        "pair_precision": precision,
        "pair_recall": recall,
        "pair_f1": f1,
        "n_rois": n,
        "n_true_pairs": n_true,
        "n_predicted_pairs": n_pred,
        "n_correct_pairs": n_correct,
        "consistent": consistent,
    }
