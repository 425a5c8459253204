"""ImageJ ROI import and export (``.roi`` files, RoiSet ``.zip``, TIFF overlays).

The binary ImageJ ROI format is decoded and encoded by :mod:`roifile`
(``ImagejRoi.frombytes`` / ``ImagejRoi.tobytes``); this module only opens the
containers (with :mod:`zipfile` and :mod:`tifffile`, so it can guard against zip
bombs and knows each zip member's name) and maps ImageJ ROIs onto :class:`~.roi.ROI`.

Conventions
-----------
ImageJ and SIMA share the pixel-corner convention: integer vertices lie on pixel
corners, pixel ``(r, c)`` is the square ``[c, c+1) x [r, r+1)`` and belongs to a
region when its centre ``(c + 0.5, r + 0.5)`` is strictly inside.  Vertices are
taken as they are, ``(x, y)`` -> ``(x, y, z)``.

Reading (:func:`read_imagej_rois`)
----------------------------------
* **Types.** polygon, freehand (including ImageJ's ellipse and rotated-rectangle
  subtypes, which are stored as their outline), traced -> one polygon; rectangle ->
  its 4 corners (sub-pixel rectangles use their float bounds); oval -> polygon from
  :func:`roifile.oval` on its (float) bounds, with roifile's 33 points or about one
  vertex per pixel of circumference for ovals wider than 10 pixels; composite ->
  every closed sub-path of ``coordinates(multi=True)`` is a polygon of the same ROI.
* **Holes.** ImageJ fills composite ROIs with the even-odd rule.  Our polygon ROIs
  have no holes (their polygons are OR-ed), so a composite whose sub-paths are
  disjoint becomes a polygon ROI, while one whose sub-paths overlap or nest (holes)
  becomes a **mask** ROI rasterised with the even-odd rule on pixel centres (exactly
  ImageJ's region); a warning names these ROIs.
* **Skipped** (one ``UserWarning`` naming every skipped ROI and why): point, line
  (and arrow), polyline, freeline, angle, no-ROI, text and image ROIs (no area);
  ROIs with fewer than 3 distinct vertices or zero area; ROIs entirely outside the
  image when ``im_shape`` is given.
* **Approximated** (warning): spline-fitted ROIs are read as their control polygon,
  rounded rectangles as plain rectangles.
* **Label** = the ROI's own name, else the zip member's (or ``.roi`` file's) base name
  with only a final ``.roi`` removed (``cell_ratio.roi`` -> ``cell_ratio``, unlike
  SIMA's ``rstrip``), else ``None`` (unnamed TIFF overlays).
* **Plane** ``z`` = hyperstack ``z_position - 1`` when set, else ``position - 1``
  (a plain stack slice, as SIMA did), else 0.  With ``im_shape`` an index outside its
  planes (e.g. a ROI drawn on frame 57 of a single-plane movie) becomes 0, with a
  warning.
* **Pieces written by** :func:`write_imagej_rois` (ImageJ ROIs carrying the
  ``napari_sima_part`` property and the same name) are merged back into one ROI;
  other ImageJ ROIs are never merged, even when names repeat.
* **Bad input.** Missing file -> ``FileNotFoundError``; a file that is neither a
  ``.roi``, a zip nor an ImageJ TIFF -> ``ValueError``; an empty RoiSet, a zip with no
  ROI among its members, or a TIFF without overlays -> ``ValueError``; zip members
  that are not ImageJ ROIs (no ``Iout`` magic, e.g. a README or macOS ``._`` files)
  are skipped with a warning; a member or file that *is* an ImageJ ROI but is
  truncated or corrupt makes the whole import fail with a ``ValueError`` naming the
  file and member (a damaged RoiSet should be noticed, not half-imported).  Archives
  with more than :data:`MAX_MEMBERS` members, members larger than
  :data:`MAX_MEMBER_BYTES` or more than :data:`MAX_TOTAL_BYTES` in total are refused
  (zip-bomb guard).

Writing (:func:`write_imagej_rois`)
-----------------------------------
* A RoiSet ``.zip``, or a single ``.roi`` when the path ends in ``.roi`` and exactly
  one ImageJ ROI results.  Written atomically (temporary file + rename).
* Every polygon of a polygon ROI -> one ImageJ *polygon* ROI with sub-pixel (float32)
  coordinates.  A ROI with several polygons -> one ImageJ ROI per polygon, all with the
  ROI's name and a ``napari_sima_part: k/N`` property, read back as one ROI (ImageJ
  shows them as separate entries; polygons may overlap or lie on different planes,
  which one composite could not express).
* Mask ROIs are outlined with :func:`~.roi.mask2poly`; per plane a single outline is a
  polygon ROI and several outlines (several blobs or holes) one *composite* ROI, whose
  even-odd filling reproduces the mask's pixels exactly (holes included).  Weighted
  masks raise ``ValueError`` naming the ROI (threshold them first); empty ROIs are
  skipped with a warning.
* Names: the labels, made unique (``cell``, ``cell-2``, ... with a warning);
  unnamed ROIs become ``roi-0001``, ``roi-0002``, ... (by position in the list).
  ``id`` and ``tags`` are kept in the ``napari_sima_id`` / ``napari_sima_tags``
  properties.
* Planes: ``position = z_position = z + 1`` (1-based), so ImageJ, SIMA and this reader
  agree.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import posixpath
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .roi import ROI, NonBooleanMask, polygon_pixels

if TYPE_CHECKING:
    from roifile import ImagejRoi

__all__ = [
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_TOTAL_BYTES",
    "read_imagej_rois",
    "write_imagej_rois",
]

#: Largest accepted size of one ``.roi`` file or zip member (uncompressed).
MAX_MEMBER_BYTES = 64 * 2**20
#: Largest accepted number of members in a RoiSet zip (or overlays in a TIFF).
MAX_MEMBERS = 100_000
#: Largest accepted total uncompressed size of a RoiSet zip.
MAX_TOTAL_BYTES = 2**30

_ROI_MAGIC = b"Iout"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

_PROP_PART = "napari_sima_part"
_PROP_ID = "napari_sima_id"
_PROP_TAGS = "napari_sima_tags"


# ---------------------------------------------------------------------------------------
# Containers -> ImagejRoi records
# ---------------------------------------------------------------------------------------
@dataclass
class _Source:
    """One decoded ImageJ ROI and where it came from."""

    roi: ImagejRoi
    where: str  # "member 'a.roi'", "overlay 3", "file 'a.roi'"
    fallback_name: str | None  # member / file name without the final ".roi"

    @property
    def label(self) -> str | None:
        return self.roi.name or self.fallback_name or None

    def describe(self) -> str:
        label = self.label
        return f"{label!r} ({self.where})" if label is not None else self.where


def _strip_roi_suffix(name: str) -> str:
    base = posixpath.basename(name.replace("\\", "/"))
    return base[:-4] if base.lower().endswith(".roi") else base


class _RoifileLog(logging.Handler):
    """Collect roifile's warnings while decoding (truncated names, properties...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _decode(data: bytes, where: str, path: Path) -> ImagejRoi:
    """Decode one ImageJ ROI with roifile; any failure -> ValueError naming it."""
    import roifile

    log = roifile.logger()
    handler = _RoifileLog()
    log.addHandler(handler)
    try:
        roi = roifile.ImagejRoi.frombytes(data)
        if roi.composite and roi.roitype == roifile.ROI_TYPE.RECT:
            # a broken path raises here; curves are reported when converting
            with contextlib.suppress(NotImplementedError):
                roi.coordinates(multi=True)
        header2 = int.from_bytes(data[60:64], "big", signed=True)
        if header2 > 0 and len(data) < header2 + 64:  # name/positions block cut off
            raise ValueError(f"the data end at byte {len(data)}, inside header 2 at {header2}")
    except Exception as exc:  # struct.error, TypeError (short buffer), ValueError...
        raise ValueError(
            f"{path}: {where} is a truncated or corrupt ImageJ ROI ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        log.removeHandler(handler)
    damaged = [m for m in handler.messages if "exceeds data size" in m or "invalid" in m]
    if damaged:
        raise ValueError(f"{path}: {where} is a truncated or corrupt ImageJ ROI ({damaged[0]})")
    return roi


def _read_zip(path: Path) -> list[_Source]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable RoiSet zip ({exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ValueError(
                f"{path}: the archive has {len(infos)} members, more than the "
                f"{MAX_MEMBERS} accepted for a RoiSet; refusing to read it"
            )
        files = [i for i in infos if not i.is_dir()]
        if not files:
            raise ValueError(f"{path}: the RoiSet zip is empty (no ROI files in it)")
        total = sum(i.file_size for i in files)
        if total > MAX_TOTAL_BYTES:
            raise ValueError(
                f"{path}: the archive would unpack to {total} bytes (limit "
                f"{MAX_TOTAL_BYTES}); refusing to read it"
            )
        sources: list[_Source] = []
        not_rois: list[str] = []
        for info in files:
            member = info.filename
            if info.file_size > MAX_MEMBER_BYTES:
                raise ValueError(
                    f"{path}: member {member!r} unpacks to {info.file_size} bytes, more "
                    f"than the {MAX_MEMBER_BYTES} accepted for an ImageJ ROI; refusing "
                    f"to read it"
                )
            try:
                with zf.open(info) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)
            except Exception as exc:  # BadZipFile (CRC), zlib.error, encryption, EOF
                raise ValueError(
                    f"{path}: cannot unpack member {member!r} ({type(exc).__name__}: {exc})"
                ) from exc
            if len(data) > MAX_MEMBER_BYTES:
                raise ValueError(
                    f"{path}: member {member!r} is larger than {MAX_MEMBER_BYTES} bytes; "
                    f"refusing to read it"
                )
            if data[:4] != _ROI_MAGIC:
                not_rois.append(member)
                continue
            where = f"member {member!r}"
            sources.append(_Source(_decode(data, where, path), where, _strip_roi_suffix(member)))
    if not sources:
        raise ValueError(
            f"{path}: no ImageJ ROIs in this zip (members {not_rois} are not ImageJ ROIs)"
        )
    if not_rois:
        warnings.warn(
            f"{path}: skipped {len(not_rois)} zip member(s) that are not ImageJ ROIs: "
            + ", ".join(repr(m) for m in not_rois),
            UserWarning,
            stacklevel=4,
        )
    return sources


def _read_tiff(path: Path) -> list[_Source]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.imagej_metadata
    except Exception as exc:
        raise ValueError(f"{path}: cannot read this TIFF file ({exc})") from exc
    if meta is None:
        raise ValueError(f"{path}: not an ImageJ TIFF (no ImageJ metadata, so no overlay ROIs)")
    blobs: list[tuple[str, bytes]] = []
    for key in ("Overlays", "ROI"):
        value = meta.get(key)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for k, item in enumerate(items):
            blobs.append((f"{'overlay' if key == 'Overlays' else 'selection'} {k}", item))
    if not blobs:
        raise ValueError(f"{path}: this ImageJ TIFF holds no ROIs (no overlay, no selection)")
    if len(blobs) > MAX_MEMBERS:
        raise ValueError(f"{path}: {len(blobs)} overlay ROIs, more than {MAX_MEMBERS}")
    sources = []
    for where, blob in blobs:
        if not isinstance(blob, (bytes, bytearray)) or bytes(blob[:4]) != _ROI_MAGIC:
            raise ValueError(f"{path}: {where} is not an ImageJ ROI")
        sources.append(_Source(_decode(bytes(blob), where, path), where, None))
    return sources


def _read_sources(path: Path) -> list[_Source]:
    if not path.exists():
        raise FileNotFoundError(f"ImageJ ROI file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a .roi file, a RoiSet .zip or a TIFF")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == _ROI_MAGIC:
        size = path.stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise ValueError(f"{path}: {size} bytes is too large for an ImageJ ROI")
        data = path.read_bytes()
        where = f"file {path.name!r}"
        return [_Source(_decode(data, where, path), where, _strip_roi_suffix(path.name))]
    if head in _ZIP_MAGIC:
        return _read_zip(path)
    if head in _TIFF_MAGIC:
        return _read_tiff(path)
    raise ValueError(
        f"{path}: not an ImageJ ROI file (expected a .roi file starting with 'Iout', a "
        f"RoiSet .zip or an ImageJ TIFF with overlays; the file starts with {head!r})"
    )


# ---------------------------------------------------------------------------------------
# ImagejRoi -> geometry
# ---------------------------------------------------------------------------------------
@dataclass
class _Piece:
    """Geometry of one ImageJ ROI on one plane."""

    source: _Source
    label: str | None
    z: int
    rings: list[np.ndarray]  # (N, 2) float64 (x, y)
    evenodd: bool = False  # composite with nested/overlapping sub-paths -> mask
    props: dict[str, str] = field(default_factory=dict)


@dataclass
class _Report:
    """Problems found while converting, reported as one warning per kind."""

    path: Path
    skipped: list[str] = field(default_factory=list)
    approximated: list[str] = field(default_factory=list)
    plane_fixed: list[str] = field(default_factory=list)
    as_mask: list[str] = field(default_factory=list)

    def emit(self) -> None:
        texts = [
            (self.skipped, "skipped {n} ImageJ ROI(s) that are not regions"),
            (self.approximated, "approximated {n} ImageJ ROI(s)"),
            (self.plane_fixed, "{n} ImageJ ROI(s) lie on a plane outside im_shape; put on plane 0"),
            (
                self.as_mask,
                "{n} composite ImageJ ROI(s) have holes or overlapping parts; read as pixel "
                "masks (even-odd filling) because polygon ROIs cannot have holes",
            ),
        ]
        for items, text in texts:
            if items:
                warnings.warn(
                    f"{self.path}: " + text.format(n=len(items)) + ": " + "; ".join(items),
                    UserWarning,
                    stacklevel=3,
                )


def _props(roi: ImagejRoi) -> dict[str, str]:
    out = {}
    for line in (roi.props or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _oval_points(width: float, height: float) -> int:
    """Roifile's 33 points, or about one vertex per pixel of circumference."""
    return max(33, int(math.ceil(math.pi * max(width, height))) + 1)


def _geometry(roi: ImagejRoi) -> tuple[list[np.ndarray], str | None, str | None]:
    """Return ``(rings, why_not, approximation)`` for an ImageJ ROI."""
    import roifile

    T = roifile.ROI_TYPE
    S = roifile.ROI_SUBTYPE
    kind = roi.roitype.name.lower()
    if roi.subtype == S.TEXT:
        return [], "text", None
    if roi.subtype == S.IMAGE:
        return [], "image", None
    if roi.subtype == S.ARROW:
        return [], "arrow", None
    approx = None
    if roi.composite and roi.roitype == T.RECT:
        try:
            rings = list(roi.coordinates(multi=True))
        except NotImplementedError:
            return [], "composite with curved segments (not supported)", None
    elif roi.roitype in (T.POLYGON, T.FREEHAND, T.TRACED):
        rings = [roi.coordinates()]
        if roi.options & roifile.ROI_OPTIONS.SPLINE_FIT:
            approx = "spline fit ignored: read as its control polygon"
    elif roi.roitype == T.RECT:
        if roi.subpixelrect:
            x0, y0 = float(roi.xd), float(roi.yd)
            x1, y1 = x0 + float(roi.widthd), y0 + float(roi.heightd)
        else:
            x0, y0, x1, y1 = roi.left, roi.top, roi.right, roi.bottom
        rings = [np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], dtype=float)]
        if roi.rounded_rect_arc_size > 0:
            approx = "rounded corners ignored: read as a rectangle"
    elif roi.roitype == T.OVAL:
        if roi.subpixelrect:
            x0, y0 = float(roi.xd), float(roi.yd)
            x1, y1 = x0 + float(roi.widthd), y0 + float(roi.heightd)
        else:
            x0, y0, x1, y1 = roi.left, roi.top, roi.right, roi.bottom
        n = _oval_points(x1 - x0, y1 - y0)
        from roifile.roifile import oval  # roifile's polygonisation (not in __all__)

        rings = [oval([[x0, y0], [x1, y1]], points=n)[:-1]]  # last = first (2 pi)
    else:
        return [], kind if roi.roitype != T.UNKNOWN else "unknown type", None
    out = []
    for ring in rings:
        arr = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
        if len(arr) > 1 and np.array_equal(arr[0], arr[-1]):
            arr = arr[:-1]
        out.append(arr)
    return out, None, approx


def _valid_polygon(ring: np.ndarray):
    import shapely

    poly = shapely.Polygon(ring)
    return poly if poly.is_valid else shapely.make_valid(poly)


def _has_area(ring: np.ndarray) -> bool:
    return len(np.unique(ring, axis=0)) >= 3 and _valid_polygon(ring).area > 0


def _overlapping(rings: list[np.ndarray]) -> bool:
    """Tell whether two rings share area (nested holes or overlapping parts)."""
    import shapely

    if len(rings) < 2:
        return False
    polys = [_valid_polygon(r) for r in rings]
    tree = shapely.STRtree(polys)
    left, right = tree.query(polys, predicate="intersects")
    return any(
        i < j and shapely.intersection(polys[i], polys[j]).area > 0
        for i, j in zip(left.tolist(), right.tolist(), strict=True)
    )


def _outside(rings: list[np.ndarray], rows: int, cols: int) -> bool:
    import shapely

    frame = shapely.box(0, 0, cols, rows)
    return all(shapely.intersection(_valid_polygon(r), frame).area == 0 for r in rings)


def _plane(roi: ImagejRoi) -> int:
    if roi.z_position > 0:
        return int(roi.z_position) - 1
    if roi.position > 0:
        return int(roi.position) - 1
    return 0


def _to_piece(
    src: _Source, shape: tuple[int, int, int] | None, path: Path, report: _Report
) -> _Piece | None:
    roi = src.roi
    rings, why_not, approx = _geometry(roi)
    if why_not is not None:
        report.skipped.append(f"{src.describe()}: {why_not}")
        return None
    for ring in rings:
        if not np.all(np.isfinite(ring)):
            raise ValueError(f"{path}: {src.where} is corrupt (non-finite coordinates)")
    rings = [r for r in rings if _has_area(r)]
    if not rings:
        report.skipped.append(f"{src.describe()}: fewer than 3 distinct vertices (no area)")
        return None
    if approx is not None:
        report.approximated.append(f"{src.describe()}: {approx}")
    z = _plane(roi)
    if shape is not None:
        planes, rows, cols = shape
        if _outside(rings, rows, cols):
            report.skipped.append(f"{src.describe()}: entirely outside the {rows} x {cols} image")
            return None
        if z >= planes:
            report.plane_fixed.append(
                f"{src.describe()}: plane {z} (from ImageJ position "
                f"{roi.z_position or roi.position}) but the image has {planes} plane(s)"
            )
            z = 0
    evenodd = bool(roi.composite) and _overlapping(rings)
    if evenodd:
        report.as_mask.append(src.describe())
    return _Piece(src, src.label, z, rings, evenodd, _props(roi))


# ---------------------------------------------------------------------------------------
# Pieces -> ROI
# ---------------------------------------------------------------------------------------
def _part_key(piece: _Piece) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", piece.props.get(_PROP_PART, ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _group(pieces: list[_Piece]) -> list[list[_Piece]]:
    """Merge pieces written by :func:`write_imagej_rois` (same name + part property)."""
    groups: list[list[_Piece]] = []
    by_name: dict[str, list[_Piece]] = {}
    for piece in pieces:
        if piece.label is not None and _part_key(piece) is not None:
            if piece.label in by_name:
                by_name[piece.label].append(piece)
                continue
            by_name[piece.label] = [piece]
            groups.append(by_name[piece.label])
        else:
            groups.append([piece])
    for group in groups:
        group.sort(key=lambda p: (_part_key(p) or (0, 0))[0])
    return groups


def _extent(pieces: list[_Piece]) -> tuple[int, int, int]:
    xy = np.concatenate([r for p in pieces for r in p.rings])
    cols = max(1, int(math.ceil(float(xy[:, 0].max()))))
    rows = max(1, int(math.ceil(float(xy[:, 1].max()))))
    return max(p.z for p in pieces) + 1, rows, cols


def _mask_planes(pieces: list[_Piece], shape: tuple[int, int, int]) -> list[sparse.csr_matrix]:
    planes, rows, cols = shape
    per_plane: list[list[np.ndarray]] = [[] for _ in range(planes)]
    for piece in pieces:
        flat = [rr * cols + cc for rr, cc in (polygon_pixels(r, (rows, cols)) for r in piece.rings)]
        if piece.evenodd:  # pixels inside an odd number of sub-paths
            values, counts = np.unique(np.concatenate(flat), return_counts=True)
            per_plane[piece.z].append(values[counts % 2 == 1])
        else:  # pixels inside any polygon
            per_plane[piece.z].append(np.unique(np.concatenate(flat)))
    out = []
    for hits in per_plane:
        idx = np.unique(np.concatenate(hits)) if hits else np.empty(0, dtype=np.intp)
        out.append(
            sparse.csr_matrix(
                (np.ones(idx.size, dtype=bool), (idx // cols, idx % cols)),
                shape=(rows, cols),
                dtype=bool,
            )
        )
    return out


def _properties(piece: _Piece) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if _PROP_ID in piece.props:
        try:
            value = json.loads(piece.props[_PROP_ID])
        except ValueError:
            value = piece.props[_PROP_ID]
        out["id"] = None if value is None else str(value)
    if _PROP_TAGS in piece.props:
        try:
            tags = json.loads(piece.props[_PROP_TAGS])
        except ValueError:
            tags = None
        if isinstance(tags, list):
            out["tags"] = {str(t) for t in tags}
    return out


def _build(group: list[_Piece], shape: tuple[int, int, int] | None) -> ROI:
    first = group[0]
    kwargs: dict[str, Any] = {"label": first.label, "im_shape": shape, **_properties(first)}
    if not any(p.evenodd for p in group):
        polys = [np.column_stack([r, np.full(len(r), float(p.z))]) for p in group for r in p.rings]
        return ROI(polygons=polys, **kwargs)
    return ROI(mask=_mask_planes(group, shape or _extent(group)), **kwargs)


def _normalize_shape(im_shape: Any) -> tuple[int, int, int] | None:
    if im_shape is None:
        return None
    try:
        shape = tuple(int(v) for v in im_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"im_shape must be (rows, columns) or (planes, rows, columns), got {im_shape!r}"
        ) from None
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"im_shape must be (rows, columns) or (planes, rows, columns) of positive "
            f"sizes, got {im_shape!r}"
        )
    return shape  # type: ignore[return-value]


def read_imagej_rois(
    path: str | os.PathLike[str], im_shape: Sequence[int] | None = None
) -> list[ROI]:
    """Read ImageJ ROIs from a ``.roi`` file, a RoiSet ``.zip`` or a TIFF's overlay.

    Parameters
    ----------
    path : path-like
        A single ``.roi`` file, a RoiSet ``.zip`` (ImageJ's ROI Manager) or an ImageJ
        TIFF with an overlay; the kind is recognised from the file's content.
    im_shape : (rows, columns) or (planes, rows, columns), optional
        Image size.  Given to every ROI (so polygon ROIs can be rasterised), used to
        skip ROIs entirely outside the image and to put ROIs whose ImageJ position
        is not one of the image's planes on plane 0.

    Returns
    -------
    list of ROI
        In file order; polygon ROIs with ``(x, y, z)`` vertices, or mask ROIs for
        composite ROIs with holes.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not an ImageJ ROI, RoiSet zip or ImageJ TIFF with ROIs, if the
        RoiSet is empty or holds no ROI, if an ROI in it is truncated or corrupt (the
        message names the file and member), or if the archive exceeds the size limits.

    Warns
    -----
    UserWarning
        Naming ROIs skipped (points, lines, no area, outside the image), approximated
        (spline fit, rounded corners), moved to plane 0, read as masks, and zip
        members that are not ROIs.

    Notes
    -----
    See the module docstring for the mapping of every ImageJ ROI type.

    Examples
    --------
    >>> rois = read_imagej_rois("RoiSet.zip", im_shape=(128, 256))  # doctest: +SKIP
    >>> [r.label for r in rois]  # doctest: +SKIP
    ['0001-0087-0085', '0001-0049-0041']
    """
    path = Path(path)
    shape = _normalize_shape(im_shape)
    sources = _read_sources(path)
    report = _Report(path)
    pieces = [p for src in sources if (p := _to_piece(src, shape, path, report)) is not None]
    report.emit()
    return [_build(group, shape) for group in _group(pieces)]


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
def _unique_names(rois: Sequence[ROI]) -> list[str]:
    labels = [r.label if r.label else None for r in rois]
    reserved = {label for label in labels if label is not None}
    used: set[str] = set()
    names: list[str] = []
    renamed: list[str] = []
    for i, label in enumerate(labels):
        if label is not None and label not in used:
            name = label
        else:
            base = label if label is not None else f"roi-{i + 1:04d}"
            first = [base] if label is None else []
            candidates = itertools.chain(first, (f"{base}-{k}" for k in itertools.count(2)))
            name = next(c for c in candidates if c not in used and c not in reserved)
            if label is not None:
                renamed.append(f"{label!r} -> {name!r}")
        used.add(name)
        names.append(name)
    if renamed:
        warnings.warn(
            "duplicate ROI labels renamed for ImageJ (its ROI names must be unique): "
            + ", ".join(renamed),
            UserWarning,
            stacklevel=3,
        )
    return names


def _plane_of(verts: np.ndarray, what: str) -> int:
    z = float(verts[0, 2])
    if z != int(z) or z < 0:
        raise ValueError(f"{what}: plane z={z} is not a non-negative integer")
    return int(z)


def _polygon_roi(verts: np.ndarray, z: int) -> ImagejRoi:
    import roifile

    ij = roifile.ImagejRoi.frompoints(
        np.asarray(verts[:, :2], dtype=np.float64), name="", position=z, z=z
    )
    ij.roitype = roifile.ROI_TYPE.POLYGON
    ij.options = roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION
    return ij


def _composite_roi(rings: list[np.ndarray], z: int) -> ImagejRoi:
    import roifile

    path: list[float] = []
    for ring in rings:
        path += [0.0, float(ring[0, 0]), float(ring[0, 1])]
        for x, y in ring[1:, :2]:
            path += [1.0, float(x), float(y)]
        path.append(4.0)
    xy = np.concatenate([r[:, :2] for r in rings])
    ij = roifile.ImagejRoi()
    ij.roitype = roifile.ROI_TYPE.RECT
    ij.multi_coordinates = np.asarray(path, dtype=np.float32)
    ij.shape_roi_size = len(path)
    ij.left, ij.top = (int(v) for v in np.floor(xy.min(axis=0)))
    ij.right, ij.bottom = (int(v) for v in np.ceil(xy.max(axis=0)))
    ij.position = ij.z_position = z + 1
    return ij


def _pieces_for_write(roi: ROI, what: str) -> list[ImagejRoi]:
    if roi.kind == "polygons":
        return [_polygon_roi(v, _plane_of(v, what)) for v in roi.polygon_arrays]
    try:
        outlines = roi.polygon_arrays
    except NonBooleanMask:
        raise ValueError(
            f"{what} has a weighted mask, which ImageJ ROIs cannot store; threshold it "
            f"first, e.g. ROI(mask=[m > 0 for m in roi.mask], label=roi.label)"
        ) from None
    by_plane: dict[int, list[np.ndarray]] = {}
    for verts in outlines:
        by_plane.setdefault(_plane_of(verts, what), []).append(verts)
    out = []
    for z in sorted(by_plane):
        rings = by_plane[z]
        out.append(_polygon_roi(rings[0], z) if len(rings) == 1 else _composite_roi(rings, z))
    return out


_UNSAFE = re.compile(r'[\x00-\x1f/\\:*?"<>|]')


def _member_name(name: str, used: set[str]) -> str:
    base = _UNSAFE.sub("_", name).strip() or "roi"
    candidate, k = f"{base}.roi", 2
    while candidate.lower() in used:
        candidate = f"{base}-part{k}.roi"
        k += 1
    used.add(candidate.lower())
    return candidate


def write_imagej_rois(path: str | os.PathLike[str], rois: Iterable[ROI]) -> None:
    """Write ROIs as ImageJ ROIs: a RoiSet ``.zip``, or one ``.roi`` file.

    Parameters
    ----------
    path : path-like
        Ends in ``.zip`` (RoiSet for ImageJ's ROI Manager) or ``.roi`` (only when the
        ROIs give exactly one ImageJ ROI).  Replaced atomically if it exists.
    rois : iterable of ROI
        Polygon ROIs (every polygon -> a sub-pixel ImageJ polygon) or boolean mask
        ROIs (outlined with :func:`~.roi.mask2poly`).

    Raises
    ------
    ValueError
        For an unsupported file extension, no ROIs, several ImageJ ROIs for a ``.roi``
        path, a weighted mask ROI, or a non-integer plane.

    Warns
    -----
    UserWarning
        When duplicate labels are renamed or empty ROIs are skipped.

    Notes
    -----
    See the module docstring: names, multi-polygon ROIs (one ImageJ ROI per polygon
    with a ``napari_sima_part`` property), composite ROIs for masks with several
    outlines, ``position = z_position = z + 1``.  :func:`read_imagej_rois` reads the
    result back with the same vertices (float32 precision), labels, planes, grouping,
    ids and tags.
    """
    from .storage import atomic_open

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".zip", ".roi"):
        raise ValueError(
            f"{path}: ImageJ ROIs are written to a RoiSet '.zip' or a single '.roi' file"
        )
    rois = list(rois)
    for k, roi in enumerate(rois):
        if not isinstance(roi, ROI):
            raise TypeError(f"item {k} is a {type(roi).__name__}, not an ROI")
    if not rois:
        raise ValueError(f"{path}: no ROIs to write")
    names = _unique_names(rois)
    items: list[tuple[str, bytes]] = []
    used: set[str] = set()
    empty: list[str] = []
    for roi, name in zip(rois, names, strict=True):
        what = f"ROI {name!r}"
        pieces = _pieces_for_write(roi, what)
        if not pieces:
            empty.append(name)
            continue
        props: dict[str, str] = {}
        if roi.id is not None:
            props[_PROP_ID] = json.dumps(roi.id)
        if roi.tags:
            props[_PROP_TAGS] = json.dumps(sorted(roi.tags))
        for k, ij in enumerate(pieces, start=1):
            ij.name = name
            piece_props = dict(props)
            if len(pieces) > 1:
                piece_props[_PROP_PART] = f"{k}/{len(pieces)}"
            if piece_props:
                ij.properties = piece_props
            items.append((_member_name(name, used), ij.tobytes()))
    if empty:
        warnings.warn(
            f"{path}: skipped {len(empty)} empty ROI(s) (no pixels, nothing to outline): "
            + ", ".join(repr(n) for n in empty),
            UserWarning,
            stacklevel=2,
        )
    if not items:
        raise ValueError(f"{path}: none of the ROIs has an outline to write")
    if suffix == ".roi":
        if len(items) != 1:
            raise ValueError(
                f"{path}: these ROIs give {len(items)} ImageJ ROIs but a '.roi' file holds "
                f"one; write a RoiSet '.zip' instead"
            )
        with atomic_open(path, "wb") as fh:
            fh.write(items[0][1])
        return
    with atomic_open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in items:
            zf.writestr(member, data)
