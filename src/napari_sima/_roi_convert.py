"""Converters between :class:`~napari_sima.core.ROIList` and napari Shapes / Labels layers.

The functions here build plain layer keyword dictionaries and ROI lists; they never
touch a viewer or Qt, so they are tested and benchmarked headless.

* :func:`rois_to_shapes` — ROIs → Shapes layer keyword arguments (``data``,
  ``shape_type``, ``features``, colours, ``metadata``).
* :func:`shapes_to_rois` — a Shapes layer (or those keyword arguments) → ROIs.
* :func:`rois_to_labels` / :func:`labels_to_rois` — ROIs ↔ a label image.
* :func:`ellipse_to_polygon` — napari ellipse (4 bounding-box corners) → polygon.

Notes
-----
**Coordinates.**  ROI vertices are ``(x, y, z)`` = (column, row, plane) in SIMA's
pixel-*corner* convention: pixel ``(row r, column c)`` is the square
``[c, c+1) x [r, r+1)`` and belongs to a polygon when its centre ``(c + 0.5, r + 0.5)``
is strictly inside.  napari puts the *centre* of pixel ``(r, c)`` at data coordinate
``(r, c)``.  The converters therefore swap the axes and shift by half a pixel:

===================  ======================================  =========================
ROI vertex           napari vertex, ``ndim=3``               napari vertex, ``ndim=2``
===================  ======================================  =========================
``(x, y, z)``        ``(z, y - 0.5, x - 0.5)``               ``(y - 0.5, x - 0.5)``
===================  ======================================  =========================

so a shape drawn in napari covers exactly the pixels whose centres the user sees inside
it: a napari rectangle from ``(r0 - 0.5, c0 - 0.5)`` to ``(r1 - 0.5, c1 - 0.5)`` (the
outer edges of pixels ``r0..r1-1`` x ``c0..c1-1``) becomes the ROI mask of exactly
those pixels.  A 3-D shapes layer ``(z, y, x)`` lines up with the trailing axes of a
``(t, z, y, x)`` movie layer and of ``(z, y, x)`` projection layers (napari aligns
layers on their trailing axes).  :func:`shapes_to_rois` also reads layers with more
dimensions (e.g. drawn on a 4-D movie): the last three axes are ``(z, y, x)`` and
leading axes (time) are ignored.  Vertices are read in *data* coordinates; a layer's
``scale``/``translate`` are not applied (give the Shapes layer the same transform as
the image it annotates).

**Polygons.**  ROI polygons are open rings (no repeated closing vertex), as napari
polygons are.  napari stores Shapes vertices as float32; :func:`shapes_to_rois` returns
ROIs whose shapes were not edited with their *original* (float64) vertices and
properties from the features, so round trips through a layer are exact; edited or new
shapes carry napari's float32 precision (about 3e-5 pixel at 512).  Through the
keyword dictionary alone (no layer) conversions are exact to floating-point rounding
of the half-pixel shift.

**Mask ROIs** are shown as their outlines (:func:`~napari_sima.core.mask2poly`;
weighted masks are outlined where the weight is > 0; holes become extra polygons;
several polygons share the ROI's ``roi`` feature).  :func:`rois_to_shapes` keeps the
original ROIs and the outlines it drew in ``metadata['napari_sima']``;
:func:`shapes_to_rois` returns the *original mask* (weights included) of every mask
ROI whose outline shapes are all still present and unchanged, and a polygon ROI built
from the edited shapes otherwise.  The same holds for polygon ROIs (original vertices
when unchanged).  Empty ROIs (no pixel, no polygon) cannot be shown; they are left out
with a warning.

**Features** (one row per shape; the curation store):

============  ===========  ===========================================================
column        dtype        meaning
============  ===========  ===========================================================
``roi``       ``Int64``    index of the ROI in the list; the polygons of one ROI share
                           it.  Shapes with the same ``roi`` become **one** ROI on the
                           way back (ROI Buddy's "merge by label"), whatever their
                           type (other values, e.g. strings, group too); new shapes
                           drawn by the user get ``<NA>`` (from ``feature_defaults``)
                           and become one new ROI each.  A shape copied and pasted in
                           napari keeps its ``roi`` and so joins the original's ROI
                           (e.g. the same cell on another plane); clear the value to
                           make it a separate ROI.
``id``        object       ``ROI.id`` (``None`` when unset)
``label``     object       ``ROI.label`` (``None`` when unset)
``tags``      object       the tags other than ``accepted``/``rejected``, sorted and
                           joined with ``','`` (tags must not contain commas)
``accepted``  bool         the ROI has the tag ``'accepted'``
``rejected``  bool         the ROI has the tag ``'rejected'``
``plane``     ``Int64``    plane ``z`` of the polygon
``kind``      object       ``'polygons'`` or ``'mask'`` (how the ROI is stored)
============  ===========  ===========================================================

On the way back the ``accepted``/``rejected`` columns decide those two tags (when the
columns exist); the other properties come from the first row of each ROI's shapes.
The plane comes from the vertex coordinates, not from the ``plane`` column.

**Shape types** on the way back: polygons (also drawn with napari's lasso / freehand
tools) and rectangles are used as drawn; ellipses — stored by napari as the 4 corners
of their (possibly rotated) bounding box — are polygonised by
:func:`ellipse_to_polygon`; lines and paths have no area and are skipped with a
warning naming them, as are degenerate shapes (fewer than 3 distinct vertices, or no
area).  Vertices outside the image are kept (rasterisation clips).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._layers import METADATA_KEY

if TYPE_CHECKING:
    import pandas as pd

    from .core import ROI, ROIList

#: Feature columns written by :func:`rois_to_shapes`, in order.
FEATURE_COLUMNS = ("roi", "id", "label", "tags", "accepted", "rejected", "plane", "kind")

#: Tags represented by boolean feature columns rather than the ``tags`` string.
FLAG_TAGS = ("accepted", "rejected")

#: Shape types with an area (converted to ROIs); others are skipped.
AREA_SHAPE_TYPES = ("polygon", "rectangle", "ellipse")

#: Largest distance (pixels) between an ellipse and the chords of its adaptive polygon.
ELLIPSE_CHORD_TOLERANCE = 0.05

#: Bounds on the number of vertices of an adaptive ellipse polygon (before refinement).
ELLIPSE_MIN_VERTICES = 16
ELLIPSE_MAX_VERTICES = 2048

#: Qualitative colours cycled over ROIs (RGB, 0-1).
ROI_PALETTE = np.array(
    [
        (0.122, 0.467, 0.706),
        (1.000, 0.498, 0.055),
        (0.173, 0.627, 0.173),
        (0.839, 0.153, 0.157),
        (0.580, 0.404, 0.741),
        (0.549, 0.337, 0.294),
        (0.890, 0.467, 0.761),
        (0.737, 0.741, 0.133),
        (0.090, 0.745, 0.812),
        (1.000, 1.000, 0.200),
    ]
)

#: Warnings list at most this many shapes by name.
_MAX_NAMED = 20


def feature_defaults() -> dict[str, Any]:
    """Return the feature values napari gives to shapes the user draws.

    Returns
    -------
    dict
        ``roi`` and ``plane`` missing (``pd.NA``), no id/label/tags, not accepted or
        rejected, kind ``'polygons'``.
    """
    import pandas as pd

    return {
        "roi": pd.NA,
        "id": None,
        "label": None,
        "tags": "",
        "accepted": False,
        "rejected": False,
        "plane": pd.NA,
        "kind": "polygons",
    }


# ---------------------------------------------------------------------------------------
# Coordinates
# ---------------------------------------------------------------------------------------
def roi_to_napari_vertices(verts: np.ndarray, ndim: int = 3) -> np.ndarray:
    """Convert ROI vertices ``(x, y[, z])`` to napari data coordinates.

    Parameters
    ----------
    verts : (N, 2) or (N, 3) array
        ROI vertices (pixel-corner convention).
    ndim : {2, 3}
        Dimensionality of the napari layer.

    Returns
    -------
    (N, ndim) ndarray
        ``(z, y - 0.5, x - 0.5)`` or ``(y - 0.5, x - 0.5)``.
    """
    verts = np.asarray(verts, dtype=float)
    out = np.empty((len(verts), ndim))
    out[:, -2] = verts[:, 1] - 0.5
    out[:, -1] = verts[:, 0] - 0.5
    if ndim == 3:
        out[:, 0] = verts[:, 2] if verts.shape[1] > 2 else 0.0
    return out


def napari_to_roi_vertices(data: np.ndarray) -> np.ndarray:
    """Convert napari vertices ``(..., [z,] y, x)`` to ROI vertices ``(x, y, z)``.

    Parameters
    ----------
    data : (N, D) array
        napari data coordinates; ``D >= 2``.  The last two axes are ``(y, x)``, the
        third-last (if any) the plane; earlier axes are ignored.

    Returns
    -------
    (N, 3) ndarray
        ``(x + 0.5, y + 0.5, z)`` with ``z`` the rounded plane of the first vertex.
    """
    data = np.asarray(data, dtype=float)
    out = np.empty((len(data), 3))
    out[:, 0] = data[:, -1] + 0.5
    out[:, 1] = data[:, -2] + 0.5
    out[:, 2] = float(round(data[0, -3])) if data.shape[1] >= 3 and len(data) else 0.0
    return out


# ---------------------------------------------------------------------------------------
# ROIs -> Shapes
# ---------------------------------------------------------------------------------------
def _outline_arrays(roi: ROI) -> list[np.ndarray]:
    """Return the ``(N, 3)`` polygons shown for an ROI (outline of a mask ROI)."""
    if roi.kind == "polygons":
        return roi.polygon_arrays
    from scipy import sparse

    from .core import mask2poly

    out: list[np.ndarray] = []
    planes = roi.todict()["mask"] or []
    for z, plane in enumerate(planes):
        coo = sparse.coo_matrix(plane)
        keep = coo.data > 0
        if not keep.any():
            continue
        rows, cols = coo.row[keep], coo.col[keep]
        r0, c0 = int(rows.min()), int(cols.min())
        crop = np.zeros((int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1), dtype=bool)
        crop[rows - r0, cols - c0] = True
        for poly in mask2poly(crop).geoms:
            xyz = np.asarray(poly.exterior.coords, dtype=float)[:-1]
            xyz[:, 0] += c0
            xyz[:, 1] += r0
            xyz[:, 2] = z
            out.append(xyz)
    return out


def _roi_colors(colors: Any, n_rois: int) -> np.ndarray:
    """Return ``(n_rois, 4)`` RGBA colours."""
    if colors is None:
        rgb = ROI_PALETTE[np.arange(n_rois) % len(ROI_PALETTE)]
        return np.column_stack([rgb, np.ones(n_rois)])
    from napari.utils.colormaps.standardize_color import transform_color

    single = isinstance(colors, str) or (
        np.ndim(colors) == 1
        and len(colors) in (3, 4)
        and all(isinstance(v, (int, float, np.number)) for v in colors)
    )
    if single:
        return np.repeat(transform_color(colors)[:1], n_rois, axis=0).astype(float)
    rgba = transform_color(list(colors)).astype(float)
    if len(rgba) != n_rois:
        raise ValueError(
            f"colors must be one colour or one per ROI ({n_rois}), got {len(rgba)} colours"
        )
    return rgba


def _tags_string(tags: Iterable[str]) -> str:
    return ",".join(sorted(t for t in tags if t not in FLAG_TAGS))


def rois_to_shapes(
    rois: Sequence[ROI],
    *,
    ndim: int = 3,
    colors: Any = None,
    ellipse_vertices: int | None = None,
) -> dict[str, Any]:
    """Return napari Shapes layer keyword arguments showing ROIs.

    Parameters
    ----------
    rois : sequence of ROI
        The ROIs (an :class:`~napari_sima.core.ROIList` or a list).  They are not
        modified; the list is kept in the returned ``metadata``.
    ndim : {3, 2}
        3 gives ``(z, y, x)`` vertices (aligns with movies and projections); 2 gives
        ``(y, x)`` vertices and needs every polygon on plane 0.
    colors : colour or sequence of colours, optional
        Edge colour of all ROIs, or one per ROI; default: a qualitative palette
        cycled over the ROIs.
    ellipse_vertices : int, optional
        Stored in the metadata for :func:`shapes_to_rois`: number of vertices of the
        polygons that ellipses drawn later in the layer become (default: adaptive,
        see :func:`ellipse_to_polygon`).

    Returns
    -------
    dict
        ``data`` (list of ``(N, ndim)`` arrays), ``shape_type`` (list of
        ``'polygon'``), ``features`` (:class:`pandas.DataFrame`, see the module
        notes), ``feature_defaults``, ``edge_color`` and ``face_color`` (``(n, 4)``
        RGBA; faces transparent), ``ndim`` and ``metadata`` (``{'napari_sima':
        {'kind': 'rois', 'rois': ROIList, 'outlines': [...], 'ndim': ndim,
        'ellipse_vertices': ...}}``).  ``napari.layers.Shapes(**kwargs)`` or
        ``viewer.add_shapes(**kwargs)`` accept it as is.

    Raises
    ------
    ValueError
        For ``ndim`` other than 2 or 3, a polygon off plane 0 with ``ndim=2``, or
        a wrong number of colours.

    Warns
    -----
    UserWarning
        For empty ROIs, which are left out.

    See Also
    --------
    shapes_to_rois : the inverse.

    Notes
    -----
    Vertex ``(x, y, z)`` becomes ``(z, y - 0.5, x - 0.5)``: axes swapped to napari's
    row-major order and shifted by half a pixel from SIMA's pixel-corner convention to
    napari's pixel-centre convention (see the module notes).  Mask ROIs are shown as
    their outlines (weighted masks outlined at > 0).
    """
    import pandas as pd

    from .core import ROIList

    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    if ellipse_vertices is not None and int(ellipse_vertices) < 3:
        raise ValueError(f"ellipse_vertices must be at least 3, got {ellipse_vertices!r}")
    roi_list = rois if isinstance(rois, ROIList) else ROIList(list(rois))
    rgba = _roi_colors(colors, len(roi_list))

    data: list[np.ndarray] = []
    outlines: list[list[np.ndarray]] = []
    cols: dict[str, list[Any]] = {c: [] for c in FEATURE_COLUMNS}
    color_index: list[int] = []
    empty: list[str] = []
    for k, roi in enumerate(roi_list):
        polys = _outline_arrays(roi)
        shown = []
        tags = roi.tags
        tag_text = _tags_string(tags)
        accepted, rejected = "accepted" in tags, "rejected" in tags
        for verts in polys:
            z = int(verts[0, 2])
            if ndim == 2 and z != 0:
                raise ValueError(
                    f"ROI {k} ({roi.label!r}) has a polygon on plane {z}; use ndim=3 for "
                    f"ROIs on several planes"
                )
            arr = roi_to_napari_vertices(verts, ndim)
            shown.append(arr)
            data.append(arr)
            cols["roi"].append(k)
            cols["id"].append(roi.id)
            cols["label"].append(roi.label)
            cols["tags"].append(tag_text)
            cols["accepted"].append(accepted)
            cols["rejected"].append(rejected)
            cols["plane"].append(z)
            cols["kind"].append(roi.kind)
            color_index.append(k)
        if not shown:
            empty.append(f"{k} ({roi.label!r})" if roi.label is not None else str(k))
        outlines.append(shown)
    if empty:
        warnings.warn(
            f"{len(empty)} empty ROI(s) cannot be shown and were left out: {_name_list(empty)}",
            UserWarning,
            stacklevel=2,
        )

    features = pd.DataFrame(
        {
            "roi": pd.array(cols["roi"], dtype="Int64"),
            "id": pd.Series(cols["id"], dtype=object),
            "label": pd.Series(cols["label"], dtype=object),
            "tags": pd.Series(cols["tags"], dtype=object),
            "accepted": np.asarray(cols["accepted"], dtype=bool),
            "rejected": np.asarray(cols["rejected"], dtype=bool),
            "plane": pd.array(cols["plane"], dtype="Int64"),
            "kind": pd.Series(cols["kind"], dtype=object),
        }
    )
    if color_index:
        edge = rgba[np.asarray(color_index, dtype=int)]
        face = edge.copy()
        face[:, 3] = 0.0
    else:  # an empty layer: napari wants one colour (used for shapes drawn later)
        edge = np.append(ROI_PALETTE[0], 1.0) if colors is None else _roi_colors(colors, 1)[0]
        face = np.append(edge[:3], 0.0)
    return {
        "data": data,
        "shape_type": ["polygon"] * len(data),
        "features": features,
        "feature_defaults": feature_defaults(),
        "edge_color": edge,
        "face_color": face,
        "ndim": ndim,
        "metadata": {
            METADATA_KEY: {
                "kind": "rois",
                "rois": roi_list,
                "outlines": outlines,
                "ndim": ndim,
                "ellipse_vertices": None if ellipse_vertices is None else int(ellipse_vertices),
            }
        },
    }


def _name_list(names: list[str]) -> str:
    if len(names) <= _MAX_NAMED:
        return ", ".join(names)
    return ", ".join(names[:_MAX_NAMED]) + f", ... ({len(names) - _MAX_NAMED} more)"


# ---------------------------------------------------------------------------------------
# Ellipses
# ---------------------------------------------------------------------------------------
def ellipse_to_polygon(corners: np.ndarray, n_vertices: int | None = None) -> np.ndarray:
    """Polygonise an ellipse given by the 4 corners of its bounding box.

    Parameters
    ----------
    corners : (4, 2) array
        Corners of the (possibly rotated) bounding box, in order around it, as
        ``(x, y)`` ROI coordinates (napari stores an ellipse this way).
    n_vertices : int, optional
        Number of vertices, evenly spaced in the ellipse's parameter.  Default:
        adaptive (see Notes).

    Returns
    -------
    (M, 2) ndarray
        ``(x, y)`` vertices on the ellipse (an open ring).

    Raises
    ------
    ValueError
        If the box has zero width or height.

    Notes
    -----
    With centre ``c`` and half-axis vectors ``u = (v1 - v0) / 2``, ``w = (v2 - v1) / 2``
    the ellipse is ``c + cos(t) u + sin(t) w``.  The adaptive polygon has
    ``n = ceil(2 pi / sqrt(8 tol / max(|u|, |w|)))`` vertices (clamped to
    [16, 2048]) so that its chords stay within ``tol = 0.05`` pixel of the ellipse;
    then, for every pixel whose centre is strictly inside the ellipse but not inside
    the polygon, the ellipse point at that centre's angle is added as a vertex.  As the
    polygon is convex and contains ``c``, that puts the centre inside, so the polygon
    rasterises (SIMA's rule) to exactly the pixels with centres strictly inside the
    ellipse; the polygon never reaches outside the ellipse.  With an explicit
    ``n_vertices`` no vertices are added (boundary pixels may be missed).
    """
    v = np.asarray(corners, dtype=float)[:, :2]
    if v.shape != (4, 2):
        raise ValueError(f"an ellipse needs 4 bounding-box corners, got shape {v.shape}")
    centre = v.mean(axis=0)
    u = (v[1] - v[0]) / 2.0
    w = (v[2] - v[1]) / 2.0
    a, b = float(np.hypot(*u)), float(np.hypot(*w))
    basis = np.column_stack([u, w])
    if a == 0 or b == 0 or abs(np.linalg.det(basis)) < 1e-12:
        raise ValueError("the ellipse has no area (zero width or height)")
    if n_vertices is not None:
        n = int(n_vertices)
        if n < 3:
            raise ValueError(f"an ellipse polygon needs at least 3 vertices, got {n}")
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        return centre + np.outer(np.cos(t), u) + np.outer(np.sin(t), w)
    step = math.sqrt(8 * ELLIPSE_CHORD_TOLERANCE / max(a, b))
    n = min(max(math.ceil(2 * math.pi / step), ELLIPSE_MIN_VERTICES), ELLIPSE_MAX_VERTICES)
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)

    # pixel centres strictly inside the ellipse
    import shapely

    lo = np.floor(v.min(axis=0) - 0.5).astype(int)
    hi = np.ceil(v.max(axis=0) + 0.5).astype(int)
    cc, rr = np.meshgrid(np.arange(lo[0], hi[0]) + 0.5, np.arange(lo[1], hi[1]) + 0.5)
    pts = np.column_stack([cc.ravel(), rr.ravel()])
    ab = np.linalg.solve(basis, (pts - centre).T).T  # ellipse parameters (alpha, beta)
    inside = (ab**2).sum(axis=1) < 1.0
    for _ in range(3):
        poly_xy = centre + np.outer(np.cos(t), u) + np.outer(np.sin(t), w)
        hit = shapely.contains_xy(shapely.Polygon(poly_xy), pts[inside, 0], pts[inside, 1])
        if hit.all():
            return poly_xy
        extra = np.arctan2(ab[inside][~hit, 1], ab[inside][~hit, 0]) % (2 * np.pi)
        t = np.unique(np.concatenate([t, extra]))
    return centre + np.outer(np.cos(t), u) + np.outer(np.sin(t), w)


# ---------------------------------------------------------------------------------------
# Shapes -> ROIs
# ---------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        res = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return bool(res) if np.ndim(res) == 0 else False


def _text(value: Any) -> str | None:
    return None if _is_missing(value) else str(value)


def _flag(value: Any) -> bool:
    if _is_missing(value):
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y")
    return bool(value)


def _group_key(value: Any, k: int) -> Any:
    """Group key of shape ``k`` from its ``roi`` feature value."""
    if _is_missing(value):
        return ("new", k)
    if isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    ):
        return int(value)
    return ("value", str(value))


def _layer_parts(layer_or_kwargs: Any) -> tuple[list, list[str], Any, Mapping, int | None]:
    """Return ``(data, shape_types, features, metadata, ndim)`` of a layer or dict."""
    if isinstance(layer_or_kwargs, Mapping):
        kw = layer_or_kwargs
        data = kw.get("data")
        data = [] if data is None else data
        if isinstance(data, np.ndarray) and data.ndim == 2:
            data = [data]
        data = list(data)
        st = kw.get("shape_type", "polygon")
        shape_types = [st] * len(data) if isinstance(st, str) else list(st)
        features = kw.get("features")
        if features is None and kw.get("properties") is not None:
            features = kw.get("properties")
        metadata = kw.get("metadata") or {}
        ndim = kw.get("ndim")
    else:
        layer = layer_or_kwargs
        data = list(layer.data)
        shape_types = list(layer.shape_type)
        features = layer.features
        metadata = layer.metadata or {}
        ndim = layer.ndim
    if len(shape_types) != len(data):
        raise ValueError(f"{len(data)} shapes but {len(shape_types)} shape types")
    return data, shape_types, features, metadata, ndim


def _feature_table(features: Any, n: int) -> pd.DataFrame:
    import pandas as pd

    if features is None:
        return pd.DataFrame(index=range(n))
    df = features if isinstance(features, pd.DataFrame) else pd.DataFrame(dict(features))
    if len(df) != n:
        raise ValueError(f"{n} shapes but {len(df)} rows of features")
    return df.reset_index(drop=True)


def _same_outline(group: list[np.ndarray], outline: list[np.ndarray]) -> bool:
    """Whether shapes still have the vertices :func:`rois_to_shapes` gave them.

    napari stores Shapes vertices as float32, so vertices are compared after rounding
    both sides to float32.
    """
    if len(group) != len(outline):
        return False
    for a, b in zip(group, outline, strict=True):
        if a.shape != b.shape or not np.array_equal(
            a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
        ):
            return False
    return True


def shapes_to_rois(
    layer_or_kwargs: Any,
    im_shape: tuple[int, ...] | None = None,
    *,
    ellipse_vertices: int | None = None,
) -> ROIList:
    """Build ROIs from a napari Shapes layer (or Shapes keyword arguments).

    Parameters
    ----------
    layer_or_kwargs : napari.layers.Shapes or mapping
        A Shapes layer, or a mapping with ``data`` and optionally ``shape_type``
        (default ``'polygon'``), ``features`` (DataFrame or dict of columns),
        ``metadata`` — e.g. the output of :func:`rois_to_shapes`, or the
        ``(data, attributes)`` a napari writer receives.
    im_shape : (rows, columns) or (planes, rows, columns), optional
        Image shape given to the ROIs (needed to rasterise polygon ROIs).  Default:
        the original ROI's shape for unchanged ROIs, None for the others.
    ellipse_vertices : int, optional
        Vertices per ellipse; default: the value stored by :func:`rois_to_shapes`,
        else adaptive and exact (see :func:`ellipse_to_polygon`).

    Returns
    -------
    ROIList
        One ROI per distinct ``roi`` feature value (in order of first appearance),
        plus one per shape without a ``roi`` value.  The timestamp is the original
        list's when the layer came from :func:`rois_to_shapes`.

    Warns
    -----
    UserWarning
        Naming the shapes skipped: lines and paths (no area), shapes with fewer
        than 3 distinct vertices or no area, shapes outside ``im_shape``'s planes.

    See Also
    --------
    rois_to_shapes : the inverse.

    Notes
    -----
    Vertex ``(..., z, y, x)`` becomes ``(x + 0.5, y + 0.5, round(z))`` (see the
    module notes).  Rectangles become 4-vertex polygons, ellipses polygons; label,
    id and tags come from the features, ``accepted``/``rejected`` columns set or
    clear those tags.  Mask ROIs whose outline shapes are unchanged keep their
    original (possibly weighted) mask; unchanged polygon ROIs keep their vertices.
    """
    from .core import ROI, ROIList

    shape = _im_shape3(im_shape)
    data, shape_types, features, metadata, _ = _layer_parts(layer_or_kwargs)
    n = len(data)
    df = _feature_table(features, n)
    meta = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
    meta = meta if isinstance(meta, Mapping) and meta.get("kind") == "rois" else {}
    originals = meta.get("rois")
    outlines = meta.get("outlines")
    if originals is not None and (outlines is None or len(outlines) != len(originals)):
        originals = outlines = None
    if ellipse_vertices is None:
        ellipse_vertices = meta.get("ellipse_vertices")

    roi_col = df["roi"].tolist() if "roi" in df.columns else [None] * n
    columns = {c: (df[c].tolist() if c in df.columns else None) for c in FEATURE_COLUMNS}
    labels = columns["label"] or [None] * n

    def name(k: int) -> str:
        lab = _text(labels[k])
        return f"{k} ({shape_types[k]}{', ' + repr(lab) if lab is not None else ''})"

    no_area: list[str] = []
    degenerate: list[str] = []
    off_plane: list[str] = []

    groups: dict[Any, list[int]] = {}
    for k in range(n):
        value = roi_col[k]
        groups.setdefault(_group_key(value, k), []).append(k)

    out: list[ROI] = []
    for key, members in groups.items():
        first = members[0]
        label = _text(labels[first])
        roi_id = _text(columns["id"][first]) if columns["id"] is not None else None
        tags: set[str] = set()
        if columns["tags"] is not None:
            text = _text(columns["tags"][first]) or ""
            tags = {t.strip() for t in text.split(",") if t.strip()}
        for flag in FLAG_TAGS:
            col = columns[flag]
            if col is not None:
                tags.discard(flag)
                if _flag(col[first]):
                    tags.add(flag)

        # unchanged ROI -> original geometry
        original = None
        if originals is not None and isinstance(key, int) and 0 <= key < len(originals):
            arrays = [np.asarray(data[k], dtype=float) for k in members]
            if all(shape_types[k] == "polygon" for k in members) and _same_outline(
                arrays, outlines[key]
            ):
                original = originals[key]
        if original is not None and shape is not None and original.kind == "polygons":
            planes = {int(p[0, 2]) for p in original.polygon_arrays}
            if not all(0 <= z < shape[0] for z in planes):
                original = None  # rebuilt below, skipping the polygons off the image
        if original is not None:
            if original.kind == "mask":
                mask = original.todict()["mask"]
                roi = ROI(mask=mask, label=label, tags=tags, id=roi_id)
            else:
                roi = ROI(polygons=original.polygon_arrays, label=label, tags=tags, id=roi_id)
            roi.im_shape = shape if shape is not None else original.im_shape
            out.append(roi)
            continue

        polys = []
        for k in members:
            st = shape_types[k]
            verts = np.asarray(data[k], dtype=float)
            if st not in AREA_SHAPE_TYPES:
                no_area.append(name(k))
                continue
            if verts.ndim != 2 or verts.shape[1] < 2 or len(verts) == 0:
                degenerate.append(name(k))
                continue
            xyz = napari_to_roi_vertices(verts)
            if st == "ellipse":
                try:
                    xy = ellipse_to_polygon(xyz[:, :2], ellipse_vertices)
                except ValueError:
                    degenerate.append(name(k))
                    continue
                xyz = np.column_stack([xy, np.full(len(xy), xyz[0, 2])])
            if len(xyz) < 3 or _area(xyz) == 0.0:  # no area: < 3 distinct vertices, a line
                degenerate.append(name(k))
                continue
            z = xyz[0, 2]
            if shape is not None and not 0 <= z < shape[0]:
                off_plane.append(f"{name(k)} on plane {int(z)}")
                continue
            polys.append(xyz)
        if not polys:
            continue
        out.append(ROI(polygons=polys, label=label, tags=tags, id=roi_id, im_shape=shape))

    if no_area:
        warnings.warn(
            f"skipped {len(no_area)} shape(s) without area (lines and paths cannot be "
            f"ROIs): {_name_list(no_area)}",
            UserWarning,
            stacklevel=2,
        )
    if degenerate:
        warnings.warn(
            f"skipped {len(degenerate)} degenerate shape(s) (fewer than 3 distinct "
            f"vertices or no area): {_name_list(degenerate)}",
            UserWarning,
            stacklevel=2,
        )
    if off_plane:
        warnings.warn(
            f"skipped {len(off_plane)} shape(s) outside the image's {shape[0]} plane(s): "  # type: ignore[index]
            f"{_name_list(off_plane)}",
            UserWarning,
            stacklevel=2,
        )
    timestamp = getattr(originals, "timestamp", None)
    return ROIList(out, timestamp=timestamp)


def _im_shape3(im_shape: Any) -> tuple[int, int, int] | None:
    """Return ``(planes, rows, columns)`` from a 2- or 3-tuple (None stays None)."""
    if im_shape is None:
        return None
    shape = tuple(int(v) for v in im_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"im_shape must be (rows, columns) or (planes, rows, columns), got {im_shape!r}"
        )
    return shape  # type: ignore[return-value]


def _area(xyz: np.ndarray) -> float:
    """Absolute shoelace area of a polygon's ``(x, y)`` ring."""
    x, y = xyz[:, 0] - xyz[0, 0], xyz[:, 1] - xyz[0, 1]  # centred for accuracy
    return abs(float(np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:]))) / 2.0


# ---------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------
def rois_to_labels(rois: Sequence[ROI], im_shape: tuple[int, ...]) -> np.ndarray:
    """Paint ROIs into a label image.

    Parameters
    ----------
    rois : sequence of ROI
        Polygon or mask ROIs (not modified).
    im_shape : (rows, columns) or (planes, rows, columns)
        Shape of the label image.

    Returns
    -------
    (planes, rows, columns) ndarray of int32
        ``k + 1`` where ROI ``k`` has a nonzero mask pixel, 0 elsewhere.

    Notes
    -----
    Overlapping pixels take the value of the **later** ROI in the list.  Polygons are
    rasterised with SIMA's rule (pixel centres strictly inside); mask ROIs use their
    nonzero pixels, cropped to ``im_shape``; planes beyond ``im_shape`` are dropped.
    """
    from .core import poly2mask

    shape = _im_shape3(im_shape)
    if shape is None:
        raise ValueError("rois_to_labels needs im_shape=(rows, columns) or (planes, rows, columns)")
    n_planes, rows, cols = shape
    labels = np.zeros(shape, dtype=np.int32)
    for k, roi in enumerate(rois):
        if roi.kind == "polygons":
            polys = [p for p in roi.polygon_arrays if 0 <= p[0, 2] < n_planes]
            planes = poly2mask(polys, shape) if polys else []
        else:
            planes = roi.todict()["mask"] or []
        for z, plane in enumerate(planes[:n_planes]):
            coo = plane.tocoo()
            keep = (coo.data != 0) & (coo.row < rows) & (coo.col < cols)
            labels[z, coo.row[keep], coo.col[keep]] = k + 1
    return labels


def labels_to_rois(labels: np.ndarray) -> ROIList:
    """Turn a label image into boolean mask ROIs, one per nonzero value.

    Parameters
    ----------
    labels : (rows, columns) or (planes, rows, columns) array of int
        Label image (e.g. a napari Labels layer's data).

    Returns
    -------
    ROIList
        Mask ROIs in increasing label order, each labelled with its value
        (``'1'``, ``'2'``, ...), with ``im_shape`` the image's shape.
    """
    from scipy import ndimage, sparse

    from .core import ROI, ROIList

    arr = np.asarray(labels)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2-D or 3-D integer array, got {arr.ndim}-D {arr.dtype}")
    out = []
    clipped = np.where(arr > 0, arr, 0)
    for k, box in enumerate(ndimage.find_objects(clipped)):
        if box is None:
            continue
        value = k + 1
        planes = []
        for z in range(arr.shape[0]):
            plane = np.zeros(arr.shape[1:], dtype=bool)
            if box[0].start <= z < box[0].stop:
                sub = arr[z, box[1], box[2]] == value
                plane[box[1], box[2]] = sub
            planes.append(sparse.csr_matrix(plane))
        out.append(ROI(mask=planes, label=str(value), im_shape=arr.shape))
    return ROIList(out)
