"""ROI editing operations of ROI Buddy: merge, unmerge, curation status and tag filters.

These functions work on :class:`~napari_sima.core.ROI` objects only (no GUI), so a
script can curate an ROI set exactly as the ROIs dock does.

* :func:`merge_rois` — ROIs whose polygons touch or overlap (on the same plane) become
  one polygon (their union); the other polygons stay separate polygons of the same,
  single ROI (a multi-polygon ROI, ROI Buddy's "same label").
* :func:`unmerge_roi` — one ROI per polygon, ids cleared, unique labels.
* :func:`set_curation` / :func:`curation_status` — the ``'accepted'`` / ``'rejected'``
  tags, kept mutually exclusive.
* :func:`parse_tags`, :func:`parse_tag_filter`, :func:`tags_match`,
  :func:`filter_by_tags` — comma-separated tag input and tag filters.

Examples
--------
>>> from napari_sima.core import ROI
>>> from napari_sima.core.roi_ops import merge_rois, unmerge_roi
>>> a = ROI(polygons=[[0, 0], [2, 0], [2, 2], [0, 2]], label="a", im_shape=(8, 8))
>>> b = ROI(polygons=[[2, 0], [4, 0], [4, 2], [2, 2]], label="b", im_shape=(8, 8))
>>> c = ROI(polygons=[[6, 6], [7, 6], [7, 7], [6, 7]], label="c", im_shape=(8, 8))
>>> merged = merge_rois([a, b, c])
>>> len(merged), merged[0].label, len(merged[0].polygon_arrays), merged[0].size
(1, 'a', 2, 9)
>>> [r.label for r in unmerge_roi(merged[0])]
['a', 'a-2']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .roi import ROI, ROIList

#: Tag of an ROI the user accepted.
ACCEPTED = "accepted"

#: Tag of an ROI the user rejected.
REJECTED = "rejected"

#: Curation states: accepted, rejected, or not decided (None).
CURATION_STATES = (ACCEPTED, REJECTED, None)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def _name(roi: ROI, k: int) -> str:
    return f"{k} ({roi.label!r})" if roi.label is not None else str(k)


def _check_outlinable(rois: Sequence[ROI], what: str) -> None:
    """Raise a ValueError naming the weighted-mask ROIs (they have no outline)."""
    weighted = []
    for k, roi in enumerate(rois):
        if roi.kind != "mask":
            continue
        for plane in roi.mask:
            if plane.nnz and not np.all((plane.data == 0) | (plane.data == 1)):
                weighted.append(_name(roi, k))
                break
    if weighted:
        raise ValueError(
            f"cannot {what} ROIs with weighted masks (only 0/1 masks have outlines): "
            + ", ".join(weighted)
            + "; threshold them into boolean masks first"
        )


def _polygons_2d(verts: np.ndarray) -> list[Any]:
    """Return valid shapely polygons for one ``(N, 3)`` ring (self-intersections repaired)."""
    import shapely

    poly = shapely.Polygon(np.asarray(verts, dtype=float)[:, :2])
    if poly.is_valid:
        return [poly]
    fixed = shapely.make_valid(poly)
    parts = getattr(fixed, "geoms", [fixed])
    return [p for p in parts if p.geom_type == "Polygon" and not p.is_empty]


def _rings(geom: Any, z: float) -> list[np.ndarray]:
    """Exterior rings ``(N, 3)`` (open) of a polygonal shapely geometry, on plane ``z``."""
    parts = getattr(geom, "geoms", [geom])
    out = []
    for part in parts:
        if part.geom_type == "MultiPolygon" or part.geom_type == "GeometryCollection":
            out.extend(_rings(part, z))
            continue
        if part.geom_type != "Polygon" or part.is_empty or part.area == 0:
            continue
        xy = np.asarray(part.exterior.coords, dtype=float)[:-1]
        out.append(np.column_stack([xy, np.full(len(xy), float(z))]))
    return out


def _first(values: Iterable[Any]) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


# ---------------------------------------------------------------------------------------
# Merge / unmerge
# ---------------------------------------------------------------------------------------
def merge_rois(rois: Iterable[ROI]) -> ROIList:
    """Merge ROIs into one ROI, as ROI Buddy's "merge" did.

    Parameters
    ----------
    rois : iterable of ROI
        The ROIs to merge (at least one).  Boolean mask ROIs are outlined first
        (:func:`~napari_sima.core.mask2poly`).

    Returns
    -------
    ROIList
        One polygon ROI.  Polygons that touch or overlap on the same plane (shapely
        ``intersects``, transitively) are replaced by their union
        (:func:`shapely.unary_union`); polygons that touch nothing are kept as they
        are, as further polygons of the same ROI.  The ROI takes the first non-empty
        label and id, the union of the tags, and the first ``im_shape`` given.

    Raises
    ------
    ValueError
        If ``rois`` is empty, or for ROIs with weighted masks (named in the message).

    Notes
    -----
    * ROI Buddy replaced contiguous polygons by their convex hull; the union used here
      keeps the cells' shapes (no pixels between two cells are added).
    * Only exterior rings are kept (SIMA's ROIs have no holes): a union that
      encloses a hole comes back with the hole filled.
    * Two polygons meeting at a single corner intersect, but their union is still two
      polygons; both stay in the ROI.
    * If the tags end up holding both ``'accepted'`` and ``'rejected'``, the curation
      status of the first ROI that has one wins.

    Examples
    --------
    >>> from napari_sima.core import ROI
    >>> a = ROI(polygons=[[0, 0], [3, 0], [3, 3], [0, 3]], label="a", tags={"x"})
    >>> b = ROI(polygons=[[2, 2], [5, 2], [5, 5], [2, 5]], label="b", tags={"y"})
    >>> (m,) = merge_rois([a, b])
    >>> m.label, sorted(m.tags), len(m.polygon_arrays)
    ('a', ['x', 'y'], 1)
    """
    import shapely

    rois = list(rois)
    if not rois:
        raise ValueError("merge needs at least one ROI")
    for k, roi in enumerate(rois):
        if not isinstance(roi, ROI):
            raise TypeError(f"item {k} is a {type(roi).__name__}, not an ROI")
    _check_outlinable(rois, "merge")

    # every polygon of every ROI: its original vertices, plane and (valid) 2-D shapes
    originals: list[np.ndarray] = []
    planes: list[int] = []
    shapes: list[Any] = []
    owner: list[int] = []  # index into originals for each entry of shapes
    for roi in rois:
        for verts in roi.polygon_arrays:
            k = len(originals)
            originals.append(np.asarray(verts, dtype=float))
            planes.append(int(verts[0, 2]))
            for poly in _polygons_2d(verts):
                shapes.append(poly)
                owner.append(k)

    # connected groups of intersecting polygons on one plane (union-find)
    parent = list(range(len(originals)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if shapes:
        tree = shapely.STRtree(shapes)
        left, right = tree.query(shapes, predicate="intersects")
        for i, j in zip(left.tolist(), right.tolist(), strict=True):
            a, b = owner[i], owner[j]
            if a != b and planes[a] == planes[b]:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for k in range(len(originals)):
        groups.setdefault(find(k), []).append(k)

    polygons: list[np.ndarray] = []
    for members in groups.values():  # ordered by first member
        if len(members) == 1:
            polygons.append(originals[members[0]])
            continue
        keep = set(members)
        parts = [s for s, o in zip(shapes, owner, strict=True) if o in keep]
        polygons.extend(_rings(shapely.unary_union(parts), planes[members[0]]))
    if not polygons:
        raise ValueError("the merged ROIs have no polygon with an area")

    tags: set[str] = set()
    for roi in rois:
        tags |= roi.tags
    merged = ROI(
        polygons=polygons,
        label=_first(r.label for r in rois),
        id=_first(r.id for r in rois),
        tags=tags,
        im_shape=_first(r.im_shape for r in rois),
    )
    if ACCEPTED in tags and REJECTED in tags:
        set_curation(merged, _first(curation_status(r) for r in rois))
    return ROIList([merged])


def unmerge_roi(roi: ROI, existing_labels: Iterable[str | None] = ()) -> ROIList:
    """Split an ROI into one ROI per polygon, as ROI Buddy's "unmerge" did.

    Parameters
    ----------
    roi : ROI
        A polygon ROI or a boolean mask ROI (outlined first).
    existing_labels : iterable of str, optional
        Labels used by other ROIs of the set; the new labels avoid them.

    Returns
    -------
    ROIList
        One polygon ROI per polygon, in order, with the ROI's tags and ``im_shape``,
        no ``id``, and unique labels: the ROI's label (``'roi'`` when it had none) for
        the first polygon, then ``'<label>-2'``, ``'<label>-3'``, ... (skipping labels
        already taken).

    Raises
    ------
    ValueError
        For an ROI with a weighted mask.

    Examples
    --------
    >>> from napari_sima.core import ROI
    >>> roi = ROI(polygons=[[[0, 0], [1, 0], [1, 1]], [[3, 3], [4, 3], [4, 4]]],
    ...           label="cell", id="7")
    >>> [(r.label, r.id) for r in unmerge_roi(roi, existing_labels=["cell-2"])]
    [('cell', None), ('cell-3', None)]
    """
    if not isinstance(roi, ROI):
        raise TypeError(f"unmerge_roi needs an ROI, got {type(roi).__name__}")
    _check_outlinable([roi], "unmerge")
    base = roi.label if roi.label is not None else "roi"
    taken = {str(lab) for lab in existing_labels if lab is not None}
    out = []
    n = 1
    for k, verts in enumerate(roi.polygon_arrays):
        if k == 0 and base not in taken:
            label = base
        else:
            n = max(n, 1) + 1
            while f"{base}-{n}" in taken:
                n += 1
            label = f"{base}-{n}"
        taken.add(label)
        out.append(
            ROI(polygons=[verts], label=label, tags=set(roi.tags), id=None, im_shape=roi.im_shape)
        )
    return ROIList(out)


# ---------------------------------------------------------------------------------------
# Curation
# ---------------------------------------------------------------------------------------
def _check_status(status: str | None) -> str | None:
    if status is None:
        return None
    text = str(status).strip().lower()
    if text in ("", "none"):
        return None
    if text not in (ACCEPTED, REJECTED):
        raise ValueError(f"curation status must be 'accepted', 'rejected' or None, got {status!r}")
    return text


def set_curation(roi: ROI, status: str | None) -> ROI:
    """Mark an ROI accepted, rejected, or undecided (in place).

    Parameters
    ----------
    roi : ROI
        The ROI; its tags are changed.
    status : {'accepted', 'rejected', None}
        New status; the other tag is removed (the two are mutually exclusive).
        None (or ``'none'``) removes both.

    Returns
    -------
    ROI
        The same ROI.

    Raises
    ------
    ValueError
        For another status.

    Examples
    --------
    >>> from napari_sima.core import ROI
    >>> roi = ROI(polygons=[[0, 0], [1, 0], [1, 1]], tags={"rejected", "pv"})
    >>> sorted(set_curation(roi, "accepted").tags)
    ['accepted', 'pv']
    """
    status = _check_status(status)
    tags = set(roi.tags) - {ACCEPTED, REJECTED}
    if status is not None:
        tags.add(status)
    roi.tags = tags
    return roi


def curation_status(roi_or_tags: ROI | Iterable[str]) -> str | None:
    """Return ``'accepted'``, ``'rejected'`` or None for an ROI (or a set of tags).

    An ROI carrying both tags (possible in files written elsewhere) counts as
    rejected.
    """
    tags = roi_or_tags.tags if isinstance(roi_or_tags, ROI) else set(roi_or_tags)
    if REJECTED in tags:
        return REJECTED
    if ACCEPTED in tags:
        return ACCEPTED
    return None


# ---------------------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------------------
def parse_tags(text: str | Iterable[str]) -> list[str]:
    """Split comma-separated tags, strip blanks, drop empties and duplicates.

    Parameters
    ----------
    text : str or iterable of str
        ``'interneuron, PV'`` or ``['interneuron', 'PV']``.

    Returns
    -------
    list of str
        Tags in their first order.

    Examples
    --------
    >>> parse_tags(" PV, interneuron,,PV ")
    ['PV', 'interneuron']
    """
    items = (
        text.split(",") if isinstance(text, str) else [t for s in text for t in str(s).split(",")]
    )
    out: list[str] = []
    for item in items:
        tag = item.strip()
        if tag and tag not in out:
            out.append(tag)
    return out


def parse_tag_filter(text: str | Iterable[str]) -> tuple[list[str], list[str]]:
    """Parse a tag filter such as ``'PV, -rejected'``.

    Parameters
    ----------
    text : str or iterable of str
        Comma-separated tags; a tag starting with ``-`` or ``!`` is excluded.

    Returns
    -------
    (tags, neg_tags) : (list of str, list of str)
        Required and excluded tags.

    Examples
    --------
    >>> parse_tag_filter("PV, -rejected, !noisy")
    (['PV'], ['rejected', 'noisy'])
    """
    need: list[str] = []
    avoid: list[str] = []
    for tag in parse_tags(text):
        if tag[0] in "-!":
            rest = tag[1:].strip()
            if rest and rest not in avoid:
                avoid.append(rest)
        elif tag not in need:
            need.append(tag)
    return need, avoid


def tags_match(
    roi_tags: Iterable[str],
    tags: Iterable[str] | str | None = None,
    neg_tags: Iterable[str] | str | None = None,
) -> bool:
    """Whether a set of tags has all ``tags`` and none of ``neg_tags``.

    A single string counts as one tag (as in :meth:`ROIList.subset`).
    """
    have = set(roi_tags)
    need = {tags} if isinstance(tags, str) else set(tags or ())
    avoid = {neg_tags} if isinstance(neg_tags, str) else set(neg_tags or ())
    return need <= have and not (avoid & have)


def filter_by_tags(
    rois: Iterable[ROI],
    tags: Iterable[str] | str | None = None,
    neg_tags: Iterable[str] | str | None = None,
) -> ROIList:
    """Return the ROIs having all ``tags`` and none of ``neg_tags``.

    Parameters
    ----------
    rois : iterable of ROI
        The ROIs (not copied).
    tags, neg_tags : iterable of str or str, optional
        Required and excluded tags.

    Returns
    -------
    ROIList
        Keeps the list's timestamp when ``rois`` is an :class:`ROIList`.
    """
    timestamp = getattr(rois, "timestamp", None)
    return ROIList([r for r in rois if tags_match(r.tags, tags, neg_tags)], timestamp=timestamp)


__all__ = [
    "ACCEPTED",
    "CURATION_STATES",
    "REJECTED",
    "curation_status",
    "filter_by_tags",
    "merge_rois",
    "parse_tag_filter",
    "parse_tags",
    "set_curation",
    "tags_match",
    "unmerge_roi",
]
