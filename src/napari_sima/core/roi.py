"""Regions of interest: :class:`ROI`, :class:`ROIList`, rasterisation and outlines.

Conventions (as SIMA)
---------------------
* Polygon vertices are ``(x, y, z)`` = (column, row, plane).
* Pixel ``(row r, column c)`` is the unit square ``[c, c+1) x [r, r+1)``: integer
  vertices lie on pixel **corners** and the pixel centre is ``(c + 0.5, r + 0.5)``.
* A pixel belongs to a polygon when its centre lies **strictly inside** it (a centre
  exactly on an edge is outside); several polygons of one ROI are OR-ed.
* Masks are per-plane 2-D sparse matrices ``(y, x)``; their dtype is kept (boolean for
  drawn ROIs, float weights for segmentation output).

Examples
--------
>>> from napari_sima.core import ROI
>>> roi = ROI(polygons=[[0, 0], [0, 1], [1, 1], [1, 0]], im_shape=(2, 2))
>>> np.array(roi)
array([[[ True, False],
        [False, False]]])
>>> roi.coords[0].tolist()
[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import copy as _copy
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import sparse

#: ``(planes, rows, columns)``
ImShape = tuple[int, int, int]


class NonBooleanMask(ValueError):
    """Raised when polygons are asked of a mask with weights other than 0 and 1."""


# ---------------------------------------------------------------------------------------
# Input normalisation
# ---------------------------------------------------------------------------------------
def _normalize_im_shape(im_shape: Any) -> ImShape | None:
    if im_shape is None:
        return None
    try:
        shape = tuple(int(v) for v in im_shape)
    except (TypeError, ValueError):
        raise ValueError(f"im_shape must be (rows, columns) or (planes, rows, columns), got {im_shape!r}") from None
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"im_shape must be (rows, columns) or (planes, rows, columns) of positive sizes, "
            f"got {im_shape!r}"
        )
    return shape  # type: ignore[return-value]


def _is_shapely(obj: Any) -> bool:
    return type(obj).__module__.startswith("shapely")


def _polygon_arrays(polygons: Any, what: str = "ROI", simplify: bool = True) -> list[np.ndarray]:
    """Turn the accepted polygon inputs into a list of ``(N, 3)`` float arrays (open rings).

    ``simplify=False`` keeps the vertices as given (after the same checks): for sets we
    stored ourselves, which were simplified when their ROIs were made.
    """
    if _is_shapely(polygons):
        geoms = getattr(polygons, "geoms", None)
        items: list[Any] = list(geoms) if geoms is not None else [polygons]
    elif isinstance(polygons, np.ndarray) and polygons.dtype != object and polygons.ndim == 2:
        items = [polygons]
    elif isinstance(polygons, np.ndarray) and polygons.dtype != object and polygons.ndim == 3:
        items = list(polygons)
    elif isinstance(polygons, (list, tuple, np.ndarray)):
        items = list(polygons)
        if not items:
            raise ValueError(f"{what}: empty list of polygons")
        first = items[0]
        # one polygon given as a list of vertices: its first item is a vertex (scalars)
        if not _is_shapely(first) and np.ndim(first) == 1:
            items = [polygons]
    else:
        raise ValueError(
            f"{what}: polygons must be an (N, 2) or (N, 3) array of vertices, a list of "
            f"them, or shapely polygons; got {type(polygons).__name__}"
        )
    out = []
    for k, item in enumerate(items):
        if _is_shapely(item):
            if item.geom_type != "Polygon":
                raise ValueError(f"{what}: polygon {k} is a {item.geom_type}, not a Polygon")
            verts = np.asarray(item.exterior.coords, dtype=float)
        else:
            try:
                verts = np.asarray(item, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"{what}: polygon {k} is not an array of numbers") from None
        if verts.ndim != 2 or verts.shape[1] not in (2, 3):
            raise ValueError(
                f"{what}: polygon {k} must be an (N, 2) or (N, 3) array of (x, y[, z]) "
                f"vertices, got shape {verts.shape}"
            )
        if not np.all(np.isfinite(verts)):
            raise ValueError(f"{what}: polygon {k} has non-finite vertices")
        if verts.shape[1] == 2:
            verts = np.column_stack([verts, np.zeros(len(verts))])
        if len(verts) > 1 and np.array_equal(verts[0], verts[-1]):
            verts = verts[:-1]  # closing vertex
        out.append(_simplify(verts, what, k, simplify))
    return out


def _simplify(verts: np.ndarray, what: str, k: int, simplify: bool = True) -> np.ndarray:
    """Drop repeated and collinear vertices (zero tolerance), keeping z.

    Polygons enclosing no area are refused either way; ``simplify=False`` only checks.
    """
    import shapely

    xy = verts[:, :2] - verts[0, :2]
    moved = np.flatnonzero(np.any(xy != 0, axis=1))
    # fewer than 3 distinct points, or all on one line: the cross product of every
    # vertex with the first edge vanishes (a figure-eight spans an area although its
    # signed area is zero, so the area is not used here)
    if moved.size == 0 or not np.any(xy[moved[0], 0] * xy[:, 1] - xy[moved[0], 1] * xy[:, 0]):
        raise ValueError(
            f"{what}: polygon {k} encloses no area: it has fewer than 3 distinct vertices "
            f"or they are all on one line ({len(verts)} given)"
        )
    if not simplify:
        return verts
    poly = shapely.Polygon(verts)
    simple = shapely.simplify(poly, 0.0)
    if simple.is_empty or simple.geom_type != "Polygon":
        return verts
    coords = np.asarray(simple.exterior.coords, dtype=float)[:-1]
    if coords.shape[1] == 2 or len(coords) < 3:
        return verts
    return coords


def _mask_planes(mask: Any, what: str = "ROI") -> list[sparse.csr_matrix]:
    """Turn the accepted mask inputs into a list of 2-D CSR planes (dtype kept)."""
    if sparse.issparse(mask):
        planes = [mask]
    elif isinstance(mask, (list, tuple)):
        planes = list(mask)
    else:
        arr = np.asarray(mask)
        if arr.ndim == 2:
            planes = [arr]
        elif arr.ndim == 3:
            planes = list(arr)
        else:
            raise ValueError(
                f"{what}: a mask must be 2-D (y, x), 3-D (z, y, x), a sparse matrix or a "
                f"list of planes; got an array of shape {arr.shape}"
            )
    out = []
    for k, plane in enumerate(planes):
        if sparse.issparse(plane):
            csr = sparse.csr_matrix(plane)
        else:
            arr = np.asarray(plane)
            if arr.ndim != 2:
                raise ValueError(f"{what}: mask plane {k} is not 2-D (shape {arr.shape})")
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"{what}: mask plane {k} has dtype {arr.dtype}, expected numbers")
            csr = sparse.csr_matrix(arr)
        if csr.dtype.kind == "f" and csr.nnz and not np.all(np.isfinite(csr.data)):
            raise ValueError(f"{what}: mask plane {k} has non-finite weights")
        csr.eliminate_zeros()
        out.append(csr)
    if not out:
        raise ValueError(f"{what}: empty list of mask planes")
    return out


# ---------------------------------------------------------------------------------------
# Rasterisation and outlines
# ---------------------------------------------------------------------------------------
def _plane_of(verts: np.ndarray, n_planes: int, what: str) -> int:
    z = verts[0, 2]
    if z != int(z):
        raise ValueError(f"{what}: plane index z={z} is not an integer")
    z = int(z)
    if not 0 <= z < n_planes:
        raise ValueError(
            f"{what}: polygon on plane z={z} is outside the image's {n_planes} plane(s) "
            f"(valid: 0..{n_planes - 1})"
        )
    return z


def polygon_pixels(verts: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rows, cols)`` of pixels whose centres are strictly inside a polygon.

    Parameters
    ----------
    verts : (N, 2) or (N, 3) array
        ``(x, y[, z])`` vertices (pixel-corner convention).
    shape : (rows, columns)
        Image size; pixels outside it are ignored.

    Returns
    -------
    rows, cols : ndarray of int
        Pixel indices, row-major order.

    Notes
    -----
    Candidate pixels come from the polygon's bounding box and are tested with
    :func:`shapely.contains_xy` (centres on an edge are outside).  A self-intersecting
    outline is first repaired with :func:`shapely.make_valid`, which for a figure-eight
    keeps both lobes (even-odd like).
    """
    import shapely

    rows, cols = shape
    xy = np.asarray(verts, dtype=float)[:, :2]
    x0, y0 = np.floor(xy.min(axis=0)).astype(int)
    x1, y1 = np.ceil(xy.max(axis=0)).astype(int)
    c0, c1 = max(x0, 0), min(x1, cols)
    r0, r1 = max(y0, 0), min(y1, rows)
    if c1 <= c0 or r1 <= r0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    poly = shapely.Polygon(xy)
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
    shapely.prepare(poly)
    cc, rr = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    inside = shapely.contains_xy(poly, cc.ravel() + 0.5, rr.ravel() + 0.5)
    return rr.ravel()[inside], cc.ravel()[inside]


def poly2mask(polygons: Any, im_size: tuple[int, ...]) -> list[sparse.csr_matrix]:
    """Rasterise polygons into per-plane boolean masks.

    Parameters
    ----------
    polygons : array-like or list of array-like or shapely polygons
        ``(x, y[, z])`` vertices; the plane of each polygon is the ``z`` of its first
        vertex (0 when absent).
    im_size : (rows, columns) or (planes, rows, columns)
        Size of the image.

    Returns
    -------
    list of scipy.sparse.csr_matrix
        One boolean ``(rows, columns)`` matrix per plane.

    Raises
    ------
    ValueError
        If a polygon's plane is outside ``[0, planes)`` or has fewer than 3 vertices.

    Examples
    --------
    >>> masks = poly2mask([[[0, 0], [0, 1], [1, 1], [1, 0]],
    ...                    [[0, 1], [0, 2], [2, 2], [2, 1]]], (3, 3))
    >>> masks[0].toarray().astype(int)
    array([[1, 0, 0],
           [1, 1, 0],
           [0, 0, 0]])
    """
    shape = _normalize_im_shape(im_size)
    assert shape is not None
    return _rasterize(_polygon_arrays(polygons, "poly2mask"), shape, "poly2mask")


def _rasterize(polys: list[np.ndarray], shape: ImShape, what: str) -> list[sparse.csr_matrix]:
    """Rasterise already-normalised ``(N, 3)`` polygons (see :func:`poly2mask`)."""
    n_planes, rows, cols = shape
    per_plane: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_planes)]
    for k, verts in enumerate(polys):
        z = _plane_of(verts, n_planes, f"{what} polygon {k}")
        per_plane[z].append(polygon_pixels(verts, (rows, cols)))
    out = []
    for hits in per_plane:
        if hits:
            rr = np.concatenate([h[0] for h in hits])
            cc = np.concatenate([h[1] for h in hits])
        else:
            rr = cc = np.empty(0, dtype=np.intp)
        m = sparse.csr_matrix(
            (np.ones(rr.size, dtype=bool), (rr, cc)), shape=(rows, cols), dtype=bool
        )
        m.sum_duplicates()
        m.data[:] = True
        out.append(m)
    return out


def mask2poly(mask: Any, threshold: float = 0.5):
    """Outline a mask with polygons (marching squares), as SIMA did.

    Parameters
    ----------
    mask : array-like, sparse matrix or list of planes
        2-D ``(y, x)`` or 3-D ``(z, y, x)`` mask.
    threshold : float
        Level of the contour.

    Returns
    -------
    shapely.MultiPolygon
        3-D polygons ``(x, y, z)``, one per contour (holes become separate polygons).

    Notes
    -----
    Each plane is padded with one row/column of zeros and traced with
    :func:`skimage.measure.find_contours` on the transposed array; the contours pass
    through edge midpoints, so corners are cut (a single pixel becomes a diamond).
    Collinear vertices are removed with :func:`shapely.simplify` (tolerance 0).
    Converting back with :func:`poly2mask` fills holes.
    """
    import shapely
    from skimage.measure import find_contours

    polys = []
    for z, plane in enumerate(_mask_planes(mask, "mask2poly")):
        if plane.nnz == 0:
            continue
        dense = np.asarray(plane.toarray(), dtype=float)
        padded = np.pad(dense, 1)
        for contour in find_contours(padded.T, threshold):
            if len(contour) < 4:
                continue
            xyz = np.column_stack([contour - 0.5, np.full(len(contour), float(z))])
            poly = shapely.simplify(shapely.Polygon(xyz), 0.0)
            if not poly.is_empty and poly.geom_type == "Polygon":
                polys.append(poly)
    return shapely.MultiPolygon(polys)


# ---------------------------------------------------------------------------------------
# ROI
# ---------------------------------------------------------------------------------------
class ROI:
    """A region of interest: polygons or a (possibly weighted) mask, with properties.

    Parameters
    ----------
    mask : array-like, sparse matrix or list of planes, optional
        2-D ``(y, x)``, 3-D ``(z, y, x)``, a sparse matrix, or a list of 2-D planes;
        boolean or float weights (the dtype is kept).
    polygons : array-like, list of array-like, or shapely polygon(s), optional
        ``(x, y[, z])`` vertices (pixel-corner convention; ``z`` defaults to 0).
    label : str, optional
        Name shared by the pieces of one cell (ImageJ ROI name, merge group).
    tags : iterable of str, optional
        Free tags (e.g. ``{'interneuron', 'accepted'}``).
    id : str, optional
        Identity across sessions.
    im_shape : (rows, columns) or (planes, rows, columns), optional
        Image size; needed to rasterise polygons.

    Raises
    ------
    TypeError
        Unless exactly one of ``mask`` and ``polygons`` is given.
    ValueError
        For malformed polygons or masks (the message names the ROI's label).
    """

    def __init__(
        self,
        mask: Any = None,
        polygons: Any = None,
        label: str | None = None,
        tags: Iterable[str] | None = None,
        id: str | None = None,  # noqa: A002 - SIMA's name
        im_shape: tuple[int, ...] | None = None,
    ) -> None:
        if (mask is None) == (polygons is None):
            raise TypeError("an ROI needs exactly one of 'mask' or 'polygons'")
        self._set_fields(label, tags, id, im_shape)
        if polygons is not None:
            self.polygons = polygons
        else:
            self.mask = mask

    @classmethod
    def _from_stored_polygons(
        cls,
        polygons: list[np.ndarray],
        label: str | None = None,
        tags: Iterable[str] | None = None,
        id: str | None = None,  # noqa: A002 - SIMA's name
        im_shape: tuple[int, ...] | None = None,
    ) -> ROI:
        """Make an ROI from polygons read from one of our own set files.

        The vertices get every check the constructor makes, but are not simplified
        again (they were when the ROI was first made): loading 5,000 ROIs is then
        about 4 times faster.
        """
        roi = cls.__new__(cls)
        roi._set_fields(label, tags, id, im_shape)
        roi._set_polygons(polygons, simplify=False)
        return roi

    def _set_fields(
        self, label: Any, tags: Iterable[str] | None, id: Any, im_shape: Any  # noqa: A002
    ) -> None:
        """Set everything but the shape (mask or polygons: none yet)."""
        self.label = label
        self.id = id
        self.tags = tags  # type: ignore[assignment]
        self._im_shape = _normalize_im_shape(im_shape)
        self._mask: list[sparse.csr_matrix] | None = None
        self._polys: list[np.ndarray] | None = None

    # -- simple properties ---------------------------------------------------------------
    @property
    def label(self) -> str | None:
        """Name of the ROI (``None`` when unnamed)."""
        return self._label

    @label.setter
    def label(self, value: Any) -> None:
        self._label = None if value is None else str(value)

    @property
    def id(self) -> str | None:  # noqa: A003
        """Identity of the cell across sessions (``None`` when unset)."""
        return self._id

    @id.setter
    def id(self, value: Any) -> None:  # noqa: A003
        self._id = None if value is None else str(value)

    @property
    def tags(self) -> set[str]:
        """Set of tags."""
        return self._tags

    @tags.setter
    def tags(self, value: Iterable[str] | None) -> None:
        if value is None:
            self._tags: set[str] = set()
        elif isinstance(value, str):
            self._tags = {value}
        else:
            self._tags = {str(t) for t in value}

    @property
    def im_shape(self) -> ImShape | None:
        """``(planes, rows, columns)``: the given shape, else the mask's extent, else None."""
        if self._im_shape is not None:
            return self._im_shape
        if self._mask is not None:
            return (
                len(self._mask),
                max(m.shape[0] for m in self._mask),
                max(m.shape[1] for m in self._mask),
            )
        return None

    @im_shape.setter
    def im_shape(self, value: Any) -> None:
        self._im_shape = _normalize_im_shape(value)

    @property
    def kind(self) -> str:
        """``'polygons'`` or ``'mask'``: what the ROI is stored as."""
        return "polygons" if self._polys is not None else "mask"

    def _what(self) -> str:
        return f"ROI {self.label!r}" if self.label is not None else "ROI"

    # -- geometry ---------------------------------------------------------------------
    @property
    def mask(self) -> list[sparse.csr_matrix]:
        """Per-plane sparse masks, fitted to ``im_shape`` (cropped or zero-padded)."""
        if self._polys is not None:
            shape = self._im_shape
            if shape is None:
                raise ValueError(
                    f"{self._what()} is drawn as polygons; set im_shape=(rows, columns) or "
                    f"(planes, rows, columns) to rasterise it"
                )
            return _rasterize(self._polys, shape, self._what())
        assert self._mask is not None
        shape = self.im_shape
        assert shape is not None
        n, rows, cols = shape
        out = []
        for z in range(n):
            if z < len(self._mask):
                plane = self._mask[z]
                if plane.shape != (rows, cols):
                    coo = plane.tocoo()
                    keep = (coo.row < rows) & (coo.col < cols)
                    plane = sparse.csr_matrix(
                        (coo.data[keep], (coo.row[keep], coo.col[keep])),
                        shape=(rows, cols),
                        dtype=plane.dtype,
                    )
                out.append(plane)
            else:
                out.append(sparse.csr_matrix((rows, cols), dtype=self._mask[0].dtype))
        return out

    @mask.setter
    def mask(self, value: Any) -> None:
        planes = _mask_planes(value, self._what())
        if self._im_shape is not None:
            n, rows, cols = self._im_shape
            if len(planes) > n or any(p.shape[0] > rows or p.shape[1] > cols for p in planes):
                # only nonzero pixels outside the image are an error
                for z, p in enumerate(planes):
                    coo = p.tocoo()
                    if z >= n and coo.nnz:
                        raise ValueError(
                            f"{self._what()}: mask has pixels on plane {z}, outside "
                            f"im_shape {self._im_shape}"
                        )
                    if coo.nnz and (coo.row.max() >= rows or coo.col.max() >= cols):
                        raise ValueError(
                            f"{self._what()}: mask of shape {p.shape} has pixels outside "
                            f"im_shape {self._im_shape}"
                        )
        self._mask = planes
        self._polys = None

    @property
    def polygons(self):
        """The outline as a shapely ``MultiPolygon`` of 3-D polygons.

        Raises
        ------
        NonBooleanMask
            For a mask ROI with weights other than 0 and 1.
        """
        import shapely

        if self._polys is not None:
            return shapely.MultiPolygon([shapely.Polygon(p) for p in self._polys])
        assert self._mask is not None
        for plane in self._mask:
            if plane.nnz and not np.all((plane.data == 0) | (plane.data == 1)):
                raise NonBooleanMask(
                    f"{self._what()} has a weighted mask; only 0/1 masks have polygons"
                )
        return mask2poly(self._mask)

    @polygons.setter
    def polygons(self, value: Any) -> None:
        self._set_polygons(value, simplify=True)

    def _set_polygons(self, value: Any, simplify: bool) -> None:
        polys = _polygon_arrays(value, self._what(), simplify)
        if self._im_shape is not None:
            for k, p in enumerate(polys):
                _plane_of(p, self._im_shape[0], f"{self._what()} polygon {k}")
        self._polys = polys
        self._mask = None

    @property
    def polygon_arrays(self) -> list[np.ndarray]:
        """Vertices ``(N, 3)`` of each polygon, without the closing vertex."""
        if self._polys is not None:
            return [p.copy() for p in self._polys]
        return [np.asarray(p.exterior.coords)[:-1] for p in self.polygons.geoms]

    @property
    def coords(self) -> list[np.ndarray]:
        """Closed exterior rings ``(N + 1, 3)`` (last vertex repeats the first)."""
        return [np.vstack([p, p[:1]]) for p in self.polygon_arrays]

    @property
    def size(self) -> int:
        """Number of nonzero mask pixels over all planes."""
        return int(sum(m.count_nonzero() for m in self.mask))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        dense = np.stack([m.toarray() for m in self.mask])
        return dense if dtype is None else dense.astype(dtype)

    def todict(self, type: str | None = None) -> dict[str, Any]:  # noqa: A002 - SIMA's name
        """Return ``{'mask', 'polygons', 'id', 'label', 'tags', 'im_shape'}``.

        Parameters
        ----------
        type : {None, 'mask', 'polygons'}
            Convert the ROI in place to this kind first.

        Returns
        -------
        dict
            ``ROI(**roi.todict())`` rebuilds the ROI; ``polygons`` holds closed rings.
        """
        if type == "mask":
            self.mask = self.mask
        elif type == "polygons":
            self.polygons = self.polygons
        elif type is not None:
            raise ValueError(f"type must be None, 'mask' or 'polygons', got {type!r}")
        return {
            "mask": None if self._mask is None else [m.copy() for m in self._mask],
            "polygons": None if self._polys is None else self.coords,
            "id": self.id,
            "label": self.label,
            "tags": set(self.tags),
            "im_shape": self._im_shape if self._polys is not None else self.im_shape,
        }

    def copy(self) -> ROI:
        """Return an independent copy."""
        return _copy.deepcopy(self)

    def __repr__(self) -> str:
        return (
            f"<ROI: label={self.label!r}, id={self.id!r}, "
            f"type={'poly' if self._polys is not None else 'mask'}, im_shape={self.im_shape}>"
        )

    def __str__(self) -> str:
        return f"<ROI: label={self.label!r}>"


# ---------------------------------------------------------------------------------------
# ROIList
# ---------------------------------------------------------------------------------------
class ROIList(list):
    """A list of :class:`ROI` with a ``timestamp`` (SIMA's labelled ROI sets).

    Parameters
    ----------
    rois : iterable of ROI or dict
        Dicts are turned into ROIs with ``ROI(**d)``.
    timestamp : str, optional
        ``'%Y-%m-%d-%Hh%Mm%Ss'``.
    """

    def __init__(self, rois: Iterable[ROI | dict] = (), timestamp: str | None = None) -> None:
        items = []
        for k, r in enumerate(rois):
            if isinstance(r, ROI):
                items.append(r)
            elif isinstance(r, dict):
                items.append(ROI(**r))
            else:
                raise TypeError(f"ROIList item {k} is a {type(r).__name__}, not an ROI or dict")
        super().__init__(items)
        self.timestamp = timestamp

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return ROIList(item, timestamp=self.timestamp) if isinstance(index, slice) else item

    def __str__(self) -> str:
        return f"<ROI set: nROIs={len(self)}, timestamp={self.timestamp}>"

    def __repr__(self) -> str:
        return self.__str__()

    def subset(
        self, tags: Iterable[str] | None = None, neg_tags: Iterable[str] | None = None
    ) -> ROIList:
        """Return the ROIs having all ``tags`` and none of ``neg_tags``.

        Parameters
        ----------
        tags, neg_tags : iterable of str, optional
            Required and excluded tags (a single string counts as one tag).

        Returns
        -------
        ROIList
        """
        need = {tags} if isinstance(tags, str) else set(tags or ())
        avoid = {neg_tags} if isinstance(neg_tags, str) else set(neg_tags or ())
        return ROIList(
            [r for r in self if need <= r.tags and not (avoid & r.tags)], timestamp=self.timestamp
        )

    def transform(
        self,
        transforms: Any,
        im_shape: tuple[int, ...] | None = None,
        copy_properties: bool = True,
    ) -> ROIList:
        """Map every ROI through per-plane transforms.

        Parameters
        ----------
        transforms : sequence indexed by plane
            Either 2 x 3 affine matrices mapping ``[x, y, 1]`` to ``(x', y')``, or
            callables taking and returning ``(N, 2)`` ``(x, y)`` arrays (scikit-image
            transforms).
        im_shape : tuple, optional
            Image shape of the transformed ROIs.
        copy_properties : bool
            Copy label, id and tags.

        Returns
        -------
        ROIList
            Polygon ROIs (mask ROIs must be boolean; they are outlined first).

        Raises
        ------
        ValueError
            If an ROI lies on a plane without a transform.
        """
        out = []
        for roi in self:
            polys = []
            for verts in roi.polygon_arrays:
                z = int(verts[0, 2])
                if not 0 <= z < len(transforms):
                    raise ValueError(
                        f"ROI {roi.label!r} lies on plane {z} but transforms were given for "
                        f"{len(transforms)} plane(s)"
                    )
                t = transforms[z]
                xy = verts[:, :2]
                if callable(t):
                    new = np.asarray(t(xy), dtype=float)
                else:
                    m = np.asarray(t, dtype=float)
                    if m.shape not in ((2, 3), (3, 3)):
                        raise ValueError(
                            f"transform for plane {z} must be a 2x3 (or 3x3) matrix or a "
                            f"callable, got shape {m.shape}"
                        )
                    new = xy @ m[:2, :2].T + m[:2, 2]
                polys.append(np.column_stack([new, verts[:, 2]]))
            kwargs: dict[str, Any] = {"polygons": polys, "im_shape": im_shape}
            if copy_properties:
                kwargs.update(label=roi.label, id=roi.id, tags=set(roi.tags))
            out.append(ROI(**kwargs))
        return ROIList(out, timestamp=self.timestamp)

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        fmt: str = "ImageJ",
        label: str | None = None,
        reassign_label: bool = False,
        im_shape: tuple[int, ...] | None = None,
    ) -> ROIList:
        """Read ROIs from a file.

        Parameters
        ----------
        path : path-like
            ImageJ: a ``.roi`` file, a RoiSet ``.zip`` or a TIFF with an ImageJ overlay.
            ``'sima'``: a dataset folder or an ROI store folder (our format).
            ``'pkl'``: a legacy SIMA ``rois.pkl`` (read through the restricted unpickler).
        fmt : {'ImageJ', 'sima', 'pkl'}
            File format.
        label : str, optional
            ROI set to read from a store (default: the most recent).
        reassign_label : bool
            Name the ROIs ``'0', '1', ...``.
        im_shape : tuple, optional
            Image shape given to the ROIs (ImageJ files do not store it).

        Returns
        -------
        ROIList

        Raises
        ------
        ValueError
            For an unknown ``fmt`` or an unreadable file.
        KeyError
            For an unknown ``label``.
        """
        key = str(fmt).lower()
        if key == "imagej":
            from .imagej import read_imagej_rois

            rois = cls(read_imagej_rois(path, im_shape=im_shape))
        elif key in ("sima", "napari-sima", "json"):
            from .roi_store import load_roi_set

            rois = load_roi_set(path, label)
        elif key == "pkl":
            from .roi_store import load_legacy_roi_set

            rois = load_legacy_roi_set(path, label)
        else:
            raise ValueError(f"unknown ROI file format {fmt!r}; expected 'ImageJ', 'sima' or 'pkl'")
        if reassign_label:
            for k, roi in enumerate(rois):
                roi.label = str(k)
        return rois

    def save(
        self,
        path: str | os.PathLike,
        label: str | None = None,
        fmt: str = "sima",
        save_type: str | None = None,
    ) -> None:
        """Write the ROIs to a file.

        Parameters
        ----------
        path : path-like
            ``'sima'``: a dataset folder or an ROI store folder (the set is added under
            ``label``, default a timestamp).  ``'ImageJ'``: a RoiSet ``.zip`` (or a
            single ``.roi`` for one ROI).
        label : str, optional
            Name of the set in a store.
        fmt : {'sima', 'ImageJ'}
            File format.
        save_type : {None, 'mask', 'polygons'}
            Store the ROIs converted to this kind (our format only).
        """
        key = str(fmt).lower()
        if key in ("sima", "napari-sima", "json"):
            from .roi_store import save_roi_set

            rois = self
            if save_type is not None:
                rois = ROIList([r.copy() for r in self], timestamp=self.timestamp)
                for r in rois:
                    r.todict(type=save_type)
            save_roi_set(path, rois, label)
        elif key == "imagej":
            from .imagej import write_imagej_rois

            write_imagej_rois(path, self)
        else:
            raise ValueError(f"unknown ROI file format {fmt!r}; expected 'sima' or 'ImageJ'")
