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
  have no holes (their polygons are OR-ed), so a composite whose sub-paths share no
  pixel centre becomes a polygon ROI, while one whose sub-paths overlap or nest
  (holes) becomes a **mask** ROI rasterised with the even-odd rule on pixel centres
  (exactly ImageJ's region); a warning names these ROIs.
* **Self-crossing outlines** (a freehand ROI drawn over itself, or any outline longer
  than 8192 vertices, which is not checked) are also read as even-odd **masks**,
  ImageJ's own filling: repairing them as polygons takes GEOS minutes for outlines
  that cross themselves thousands of times.
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
  are skipped with a warning (and only their first bytes are inflated); a member or
  file that *is* an ImageJ ROI but is truncated or corrupt makes the whole import
  fail with a :class:`~.errors.FileFormatError` naming the file and member (a
  damaged RoiSet should be noticed, not half-imported).
* **Limits** (:class:`~.errors.ResourceLimitError`, raised before anything large is
  allocated or inflated): archives whose end record claims more than
  :data:`MAX_MEMBERS` members or a central directory over
  :data:`MAX_DIRECTORY_BYTES` (checked before :mod:`zipfile` parses it), members
  larger than :data:`MAX_MEMBER_BYTES` or more than :data:`MAX_TOTAL_BYTES` in total
  (zip-bomb guard; zipfile also stops inflating at the declared size); ROIs with
  more than :data:`MAX_VERTICES` vertices; masks over :data:`MAX_MASK_PIXELS`
  pixels or :data:`MAX_MASK_PLANES` planes when ``im_shape`` is not given; more
  than ``_MAX_CROSSINGS`` edge/row crossings rasterised per file.  Ovals get at
  most 4096 vertices.

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
import struct
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .errors import FileFormatError, ResourceLimitError
from .roi import ROI, NonBooleanMask

if TYPE_CHECKING:
    from roifile import ImagejRoi

__all__ = [
    "MAX_DIRECTORY_BYTES",
    "MAX_MASK_PIXELS",
    "MAX_MASK_PLANES",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_TOTAL_BYTES",
    "MAX_VERTICES",
    "read_imagej_rois",
    "write_imagej_rois",
]

#: Largest accepted size of one ``.roi`` file or zip member (uncompressed).  A
#: 65,535-vertex sub-pixel polygon takes 0.8 MB.
MAX_MEMBER_BYTES = 16 * 2**20
#: Largest accepted number of members in a RoiSet zip (or overlays in a TIFF).
MAX_MEMBERS = 100_000
#: Largest accepted total uncompressed size of a RoiSet zip.
MAX_TOTAL_BYTES = 256 * 2**20
#: Largest accepted central directory of a RoiSet zip (checked before it is parsed).
MAX_DIRECTORY_BYTES = 64 * 2**20
#: Largest accepted number of vertices of one ImageJ ROI.
MAX_VERTICES = 2**20
#: Largest composite path (3 numbers per vertex) of one ImageJ ROI; roifile decodes
#: it in Python, about 0.5 s per million numbers.
_MAX_PATH_FLOATS = 2**19
#: Largest mask (rows x columns) made for a composite ROI read without ``im_shape``.
MAX_MASK_PIXELS = 2**24
#: Largest number of planes of a mask ROI read without ``im_shape``.
MAX_MASK_PLANES = 4096
#: Outlines with more vertices are not checked for self-intersections (too slow for
#: GEOS on hostile outlines): they are read as even-odd masks, ImageJ's own filling.
_MAX_CHECKED_VERTICES = 8192
#: Pairs of sub-paths with more vertices together are assumed to overlap (the exact
#: test is quadratic); the even-odd mask then gives the same pixels.
_MAX_PAIR_VERTICES = 2048
#: Largest number of (row, edge) crossings of one even-odd rasterisation.
_MAX_CROSSINGS = 2**22
#: Largest number of vertices of an oval's outline.
_MAX_OVAL_POINTS = 4096

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
    """Decode one ImageJ ROI with roifile; any failure -> FileFormatError naming it."""
    import roifile

    log = roifile.logger()
    handler = _RoifileLog()
    log.addHandler(handler)
    try:
        roi = roifile.ImagejRoi.frombytes(data)
        count = int(roi.n_coordinates)
        if count > MAX_VERTICES or int(roi.shape_roi_size) > _MAX_PATH_FLOATS:
            raise ResourceLimitError(
                f"{path}: {where} has {count} vertices and a path of "
                f"{roi.shape_roi_size} numbers; at most {MAX_VERTICES} vertices and "
                f"{_MAX_PATH_FLOATS} path numbers are accepted for one ImageJ ROI"
            )
        if roi.composite and roi.roitype == roifile.ROI_TYPE.RECT:
            # a broken path raises here; curves are reported when converting
            with contextlib.suppress(NotImplementedError):
                roi.coordinates(multi=True)
        header2 = int.from_bytes(data[60:64], "big", signed=True)
        if header2 > 0 and len(data) < header2 + 64:  # name/positions block cut off
            raise ValueError(f"the data end at byte {len(data)}, inside header 2 at {header2}")
    except ResourceLimitError:
        raise
    except Exception as exc:  # struct.error, TypeError (short buffer), ValueError...
        raise FileFormatError(
            f"{path}: {where} is a truncated or corrupt ImageJ ROI ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        log.removeHandler(handler)
    damaged = [m for m in handler.messages if "exceeds data size" in m or "invalid" in m]
    if damaged:
        raise FileFormatError(
            f"{path}: {where} is a truncated or corrupt ImageJ ROI ({damaged[0]})"
        )
    return roi


def _zip_directory(path: Path) -> tuple[int, int] | None:
    """``(entries, directory bytes)`` claimed by a zip's end record, read before parsing.

    Lets :func:`_read_zip` refuse an archive announcing millions of members before
    :mod:`zipfile` builds an object for each.  None when no end record is found
    (zipfile then reports the broken archive).
    """
    size = path.stat().st_size
    tail_len = min(size, 22 + 65535)
    with open(path, "rb") as fh:
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or pos + 22 > len(tail):
            return None
        entries, dir_bytes = struct.unpack("<xxxxxxxxxxHI", tail[pos : pos + 16])
        locator = pos - 20
        if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":  # zip64
            (record,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
            if 0 <= record <= size - 56:
                fh.seek(record)
                raw = fh.read(56)
                if raw[:4] == b"PK\x06\x06":
                    entries64, dir64 = struct.unpack("<QQ", raw[32:48])
                    entries, dir_bytes = max(entries, entries64), max(dir_bytes, dir64)
    return entries, dir_bytes


def _too_many_members(path: Path, count: int) -> ResourceLimitError:
    return ResourceLimitError(
        f"{path}: the archive has {count} members, more than the {MAX_MEMBERS} accepted "
        f"for a RoiSet; refusing to read it"
    )


def _read_zip(path: Path) -> list[_Source]:
    claimed = _zip_directory(path)
    if claimed is not None:
        if claimed[0] > MAX_MEMBERS:
            raise _too_many_members(path, claimed[0])
        if claimed[1] > MAX_DIRECTORY_BYTES:
            raise ResourceLimitError(
                f"{path}: the archive's directory claims {claimed[1]} bytes, more than the "
                f"{MAX_DIRECTORY_BYTES} accepted for a RoiSet; refusing to read it"
            )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FileFormatError(f"{path}: not a readable RoiSet zip ({exc})") from exc
    except Exception as exc:  # struct.error, EOFError... from a damaged directory
        raise FileFormatError(
            f"{path}: not a readable RoiSet zip ({type(exc).__name__}: {exc})"
        ) from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _too_many_members(path, len(infos))
        files = [i for i in infos if not i.filename.endswith("/")]  # is_dir() fails on ''
        if not files:
            raise FileFormatError(f"{path}: the RoiSet zip is empty (no ROI files in it)")
        total = sum(i.file_size for i in files)
        if total > MAX_TOTAL_BYTES:
            raise ResourceLimitError(
                f"{path}: the archive would unpack to {total} bytes (limit "
                f"{MAX_TOTAL_BYTES}); refusing to read it"
            )
        sources: list[_Source] = []
        not_rois: list[str] = []
        for info in files:
            member = info.filename
            if info.file_size > MAX_MEMBER_BYTES:
                raise ResourceLimitError(
                    f"{path}: member {member!r} unpacks to {info.file_size} bytes, more "
                    f"than the {MAX_MEMBER_BYTES} accepted for an ImageJ ROI; refusing "
                    f"to read it"
                )
            try:
                # zipfile stops inflating at the declared size; read the magic first so
                # members that are not ROIs are never inflated further
                with zf.open(info) as fh:
                    data = fh.read(4)
                    if data == _ROI_MAGIC:
                        data += fh.read(MAX_MEMBER_BYTES + 1)
            except Exception as exc:  # BadZipFile (CRC), zlib.error, encryption, EOF
                raise FileFormatError(
                    f"{path}: cannot unpack member {member!r} ({type(exc).__name__}: {exc})"
                ) from exc
            if len(data) > MAX_MEMBER_BYTES:
                raise ResourceLimitError(
                    f"{path}: member {member!r} is larger than {MAX_MEMBER_BYTES} bytes; "
                    f"refusing to read it"
                )
            if data[:4] != _ROI_MAGIC:
                not_rois.append(member)
                continue
            where = f"member {member!r}"
            sources.append(_Source(_decode(data, where, path), where, _strip_roi_suffix(member)))
    if not sources:
        raise FileFormatError(
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
        raise FileFormatError(f"{path}: cannot read this TIFF file ({exc})") from exc
    if not isinstance(meta, dict):
        raise FileFormatError(
            f"{path}: not an ImageJ TIFF (no ImageJ metadata, so no overlay ROIs)"
        )
    blobs: list[tuple[str, bytes]] = []
    for key in ("Overlays", "ROI"):
        value = meta.get(key)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(blobs) + len(items) > MAX_MEMBERS:
            raise ResourceLimitError(
                f"{path}: {len(blobs) + len(items)} overlay ROIs, more than {MAX_MEMBERS}"
            )
        for k, item in enumerate(items):
            blobs.append((f"{'overlay' if key == 'Overlays' else 'selection'} {k}", item))
    if not blobs:
        raise FileFormatError(f"{path}: this ImageJ TIFF holds no ROIs (no overlay, no selection)")
    sources = []
    for where, blob in blobs:
        if not isinstance(blob, (bytes, bytearray)) or bytes(blob[:4]) != _ROI_MAGIC:
            raise FileFormatError(f"{path}: {where} is not an ImageJ ROI")
        if len(blob) > MAX_MEMBER_BYTES:
            raise ResourceLimitError(
                f"{path}: {where} is larger than {MAX_MEMBER_BYTES} bytes; refusing to read it"
            )
        sources.append(_Source(_decode(bytes(blob), where, path), where, None))
    return sources


def _read_sources(path: Path) -> list[_Source]:
    if not path.exists():
        raise FileNotFoundError(f"ImageJ ROI file not found: {path}")
    if path.is_dir():
        raise FileFormatError(
            f"{path} is a folder; expected a .roi file, a RoiSet .zip or a TIFF"
        )
    from .storage import open_regular

    fh, _ = open_regular(path, "ImageJ ROI file")  # a FIFO or device would never end
    with fh:
        head = fh.read(4)
    if head == _ROI_MAGIC:
        size = path.stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise ResourceLimitError(f"{path}: {size} bytes is too large for an ImageJ ROI")
        data = path.read_bytes()
        where = f"file {path.name!r}"
        return [_Source(_decode(data, where, path), where, _strip_roi_suffix(path.name))]
    if head in _ZIP_MAGIC:
        return _read_zip(path)
    if head in _TIFF_MAGIC:
        return _read_tiff(path)
    raise FileFormatError(
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
    text = roi.props if isinstance(roi.props, str) else ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _oval_points(width: float, height: float) -> int:
    """Roifile's 33 points, or about one vertex per pixel of circumference (capped)."""
    return min(_MAX_OVAL_POINTS, max(33, int(math.ceil(math.pi * max(width, height))) + 1))


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
    elif roi.roitype in (T.RECT, T.OVAL):
        if roi.subpixelrect:
            x0, y0 = float(roi.xd), float(roi.yd)
            x1, y1 = x0 + float(roi.widthd), y0 + float(roi.heightd)
        else:
            x0, y0, x1, y1 = (float(v) for v in (roi.left, roi.top, roi.right, roi.bottom))
        corners = np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], dtype=float)
        if roi.roitype == T.RECT or not np.all(np.isfinite(corners)):
            rings = [corners]  # non-finite bounds are reported by the caller
            if roi.rounded_rect_arc_size > 0:
                approx = "rounded corners ignored: read as a rectangle"
        else:
            from roifile.roifile import oval  # roifile's polygonisation (not in __all__)

            n = _oval_points(abs(x1 - x0), abs(y1 - y0))
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


def _is_simple(ring: np.ndarray) -> bool:
    """Whether a ring (>= 3 vertices) is a valid polygon outline (no self-crossing).

    Outlines longer than :data:`_MAX_CHECKED_VERTICES` are not checked (GEOS needs
    seconds on long self-crossing outlines) and count as not simple.
    """
    import shapely

    if len(ring) > _MAX_CHECKED_VERTICES:
        return False
    return bool(shapely.is_valid(shapely.Polygon(ring)))


def _has_area(ring: np.ndarray, simple: bool) -> bool:
    """Whether a ring encloses some area (self-crossing rings: not all collinear)."""
    if len(ring) < 3:
        return False
    if simple:
        import shapely

        return shapely.Polygon(ring).area > 0
    d = ring - ring[0]
    far = d[int(np.argmax(np.abs(d).sum(axis=1)))]
    return bool(np.any(far[0] * d[:, 1] - far[1] * d[:, 0] != 0))


def _bounds(rings: list[np.ndarray]) -> np.ndarray:
    """Per-ring ``(xmin, ymin, xmax, ymax)``."""
    return np.array([[*r.min(axis=0), *r.max(axis=0)] for r in rings], dtype=float)


def _outside(rings: list[np.ndarray], rows: int, cols: int) -> bool:
    """Whether simple rings share no area with the ``rows x cols`` image."""
    import shapely

    frame = shapely.box(0, 0, cols, rows)
    for ring, (x0, y0, x1, y1) in zip(rings, _bounds(rings), strict=True):
        if x1 <= 0 or y1 <= 0 or x0 >= cols or y0 >= rows:
            continue
        if shapely.intersection(shapely.Polygon(ring), frame).area > 0:
            return False
    return True


class _Budget:
    """Work allowed for the even-odd rasterisations of one file (scanline crossings)."""

    def __init__(self, path: Path, crossings: int = _MAX_CROSSINGS) -> None:
        self.path = path
        self.left = crossings

    def spend(self, n: int, what: str) -> None:
        self.left -= n
        if self.left < 0:
            raise ResourceLimitError(
                f"{self.path}: {what} is too complex to rasterise (more than "
                f"{_MAX_CROSSINGS} edge/row crossings in this file); refusing to read it"
            )


def _ring_spans(
    ring: np.ndarray, rows: int, cols: int, budget: _Budget, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return runs ``(row, start, stop)`` of pixels strictly inside ``ring``.

    Even-odd rule (ImageJ's filling, also for self-crossing outlines), pixel-corner
    convention: pixel ``(r, c)`` is inside when its centre ``(c + 0.5, r + 0.5)`` is
    inside and not on the outline.  Cost: one crossing per (edge, row) pair.
    """
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    # an edge crosses the centres of rows r with lo <= r + 0.5 < hi (half-open)
    first = np.clip(np.ceil(lo - 0.5), 0, rows).astype(np.int64)
    last = np.clip(np.ceil(hi - 0.5), 0, rows).astype(np.int64)
    counts = np.maximum(last - first, 0)
    total = int(counts.sum())
    budget.spend(total, what)
    edge = np.repeat(np.arange(len(ring)), counts)
    row = first[edge] + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
    ex0, ey0, ex1, ey1 = x0[edge], y0[edge], x1[edge], y1[edge]
    yc = row + 0.5  # exact for float32 vertices: a centre on an edge gives xc == c + 0.5
    xc = (ex0 * (ey1 - yc) + ex1 * (yc - ey0)) / (ey1 - ey0)
    order = np.lexsort((xc, row))
    row, xc = row[order], xc[order]
    a, b, rr = xc[0::2], xc[1::2], row[0::2]  # an even number of crossings per row
    start = np.clip(np.floor(a - 0.5) + 1, 0, cols).astype(np.int64)
    stop = np.clip(np.ceil(b - 0.5), 0, cols).astype(np.int64)
    keep = stop > start
    return rr[keep], start[keep], stop[keep]


def _centres_on_outline(ring: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Return flat indices of pixels whose centres lie on a horizontal edge or vertex.

    The scanline crossings of :func:`_ring_spans` miss these outline points.
    """
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r = y0 - 0.5
    hit = (y0 == y1) & (r == np.floor(r)) & (r >= 0) & (r < rows)
    lo = np.clip(np.ceil(np.minimum(x0, x1)[hit] - 0.5), 0, cols).astype(np.int64)
    hi = np.clip(np.floor(np.maximum(x0, x1)[hit] - 0.5) + 1, 0, cols).astype(np.int64)
    edges = _expand_runs(r[hit].astype(np.int64), lo, hi, cols)
    c = x0 - 0.5
    at = (r == np.floor(r)) & (c == np.floor(c)) & (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    return np.concatenate([edges, (r[at] * cols + c[at]).astype(np.int64)])


def _expand_runs(row: np.ndarray, start: np.ndarray, stop: np.ndarray, cols: int) -> np.ndarray:
    """Flat pixel indices ``row * cols + c`` for ``start <= c < stop``."""
    length = np.maximum(stop - start, 0)
    total = int(length.sum())
    base = np.repeat(row * cols + start - (np.cumsum(length) - length), length)
    return base + np.arange(total, dtype=np.int64)


def _coverage(
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], keep: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Combine runs by how many of them cover each pixel.

    Returns the runs ``(row, start, stop)`` of pixels whose cover count ``n``
    satisfies ``keep(n)``, and the largest count.
    """
    if not runs:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty, 0
    row = np.concatenate([np.concatenate([r[0], r[0]]) for r in runs])
    pos = np.concatenate([np.concatenate([r[1], r[2]]) for r in runs])
    step = np.concatenate([np.repeat([1, -1], len(r[0])) for r in runs])
    order = np.lexsort((step, pos, row))  # ends before starts at the same column
    row, pos, step = row[order], pos[order], step[order]
    count = np.cumsum(step)  # each row's runs open and close: the count is per row
    seg = (row[:-1] == row[1:]) & (pos[1:] > pos[:-1])
    deepest = int(count[:-1][seg].max()) if seg.any() else 0
    sel = seg & keep(count[:-1])
    return row[:-1][sel], pos[:-1][sel], pos[1:][sel], deepest


def _piece_runs(
    piece: _Piece, rows: int, cols: int, budget: _Budget
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the piece's pixels as runs, and flat indices of on-outline pixels."""
    what = piece.source.describe()
    runs = [_ring_spans(r, rows, cols, budget, what) for r in piece.rings]
    rule = (lambda n: n % 2 == 1) if piece.evenodd else (lambda n: n >= 1)
    row, start, stop, _ = _coverage(runs, rule)
    edges = [_centres_on_outline(r, rows, cols) for r in piece.rings]
    return row, start, stop, np.concatenate(edges) if edges else np.empty(0, dtype=np.int64)


def _overlapping(
    rings: list[np.ndarray],
    shape: tuple[int, int, int] | None,
    budget: _Budget,
    path: Path,
    src: _Source,
) -> bool:
    """Whether some pixel centre lies inside two of the (simple) rings.

    Decides whether a composite ROI can be kept as polygons (whose pixels are OR-ed)
    or needs an even-odd mask: both give the same pixels when no centre is shared.
    """
    if len(rings) < 2:
        return False
    bounds = _bounds(rings)
    order = np.argsort(bounds[:, 0], kind="stable")
    reach = np.maximum.accumulate(bounds[order, 2])
    if np.all(bounds[order[1:], 0] >= reach[:-1]):  # x-ranges do not overlap
        return False
    rows, cols = shape[1:] if shape is not None else _extent_grid(rings, path, src)
    runs = [_ring_spans(r, rows, cols, budget, src.describe()) for r in rings]
    return _coverage(runs, lambda n: n < 0)[3] >= 2


def _plane(roi: ImagejRoi) -> int:
    if roi.z_position > 0:
        return int(roi.z_position) - 1
    if roi.position > 0:
        return int(roi.position) - 1
    return 0


def _to_piece(
    src: _Source,
    shape: tuple[int, int, int] | None,
    path: Path,
    report: _Report,
    budget: _Budget,
) -> _Piece | None:
    roi = src.roi
    rings, why_not, approx = _geometry(roi)
    if why_not is not None:
        report.skipped.append(f"{src.describe()}: {why_not}")
        return None
    for ring in rings:
        if not np.all(np.isfinite(ring)):
            raise FileFormatError(f"{path}: {src.where} is corrupt (non-finite coordinates)")
    if sum(len(r) for r in rings) > MAX_VERTICES:
        raise ResourceLimitError(
            f"{path}: {src.where} has more than {MAX_VERTICES} vertices; refusing to read it"
        )
    kept = []
    for ring in rings:
        simple = len(ring) >= 3 and _is_simple(ring)
        if _has_area(ring, simple):
            kept.append((ring, simple))
    if not kept:
        report.skipped.append(f"{src.describe()}: fewer than 3 distinct vertices (no area)")
        return None
    rings = [r for r, _ in kept]
    simple = all(s for _, s in kept)
    if approx is not None:
        report.approximated.append(f"{src.describe()}: {approx}")
    z = _plane(roi)
    if shape is not None:
        planes, rows, cols = shape
        if simple and _outside(rings, rows, cols):
            report.skipped.append(f"{src.describe()}: entirely outside the {rows} x {cols} image")
            return None
        if z >= planes:
            report.plane_fixed.append(
                f"{src.describe()}: plane {z} (from ImageJ position "
                f"{roi.z_position or roi.position}) but the image has {planes} plane(s)"
            )
            z = 0
    if not simple:
        evenodd = True
        report.as_mask.append(f"{src.describe()} (its outline crosses itself)")
    elif roi.composite and len(rings) > 1:
        evenodd = _overlapping(rings, shape, budget, path, src)
        if evenodd:
            report.as_mask.append(src.describe())
    else:
        evenodd = False
    return _Piece(src, src.label, z, rings, evenodd, _props(roi))


# ---------------------------------------------------------------------------------------
# Pieces -> ROI
# ---------------------------------------------------------------------------------------
def _part_key(piece: _Piece) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*", piece.props.get(_PROP_PART, ""))
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


def _extent_grid(rings: list[np.ndarray], path: Path, src: _Source) -> tuple[int, int]:
    """``(rows, columns)`` reaching the rings' far corner (no ``im_shape`` given)."""
    xy = np.concatenate(rings)
    cols = max(1, math.ceil(min(float(xy[:, 0].max()), 2.0**62)))
    rows = max(1, math.ceil(min(float(xy[:, 1].max()), 2.0**62)))
    if rows * cols > MAX_MASK_PIXELS:
        raise ResourceLimitError(
            f"{path}: {src.describe()} spans {rows} x {cols} pixels, more than the "
            f"{MAX_MASK_PIXELS} accepted for a mask; give im_shape to read it"
        )
    return rows, cols


def _extent(group: list[_Piece], path: Path) -> tuple[int, int, int]:
    xy = np.concatenate([r for p in group for r in p.rings])
    cols = max(1, math.ceil(min(float(xy[:, 0].max()), 2.0**62)))
    rows = max(1, math.ceil(min(float(xy[:, 1].max()), 2.0**62)))
    planes = max(p.z for p in group) + 1
    if rows * cols > MAX_MASK_PIXELS or planes > MAX_MASK_PLANES:
        raise ResourceLimitError(
            f"{path}: {group[0].source.describe()} would need a mask of {planes} x {rows} "
            f"x {cols} pixels (limit {MAX_MASK_PLANES} planes of {MAX_MASK_PIXELS} "
            f"pixels); give im_shape to read it"
        )
    return planes, rows, cols


def _mask_planes(
    pieces: list[_Piece], shape: tuple[int, int, int], budget: _Budget
) -> list[sparse.csr_matrix]:
    planes, rows, cols = shape
    per_plane: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    on_edges: dict[int, list[np.ndarray]] = {}
    for piece in pieces:
        row, start, stop, edges = _piece_runs(piece, rows, cols, budget)
        per_plane.setdefault(piece.z, []).append((row, start, stop))
        on_edges.setdefault(piece.z, []).append(edges)
    out = []
    for z in range(planes):
        idx = np.empty(0, dtype=np.int64)
        if z in per_plane:
            row, start, stop, _ = _coverage(per_plane[z], lambda n: n >= 1)
            idx = _expand_runs(row, start, stop, cols)
            edges = np.concatenate(on_edges[z])
            if edges.size:
                idx = np.setdiff1d(idx, edges, assume_unique=False)
        out.append(
            sparse.csr_matrix(
                (np.ones(idx.size, dtype=bool), (idx // cols, idx % cols)),
                shape=(rows, cols),
                dtype=bool,
            )
        )
    return out


_NOT_JSON = object()


def _json(text: str) -> Any:
    """``json.loads``, or :data:`_NOT_JSON` for broken or absurdly nested text."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _properties(piece: _Piece) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if _PROP_ID in piece.props:
        value = _json(piece.props[_PROP_ID])
        if value is _NOT_JSON or isinstance(value, (list, dict)):
            value = piece.props[_PROP_ID]
        out["id"] = None if value is None else str(value)
    if _PROP_TAGS in piece.props:
        tags = _json(piece.props[_PROP_TAGS])
        if isinstance(tags, list):
            out["tags"] = {str(t) for t in tags if isinstance(t, (str, int, float, bool))}
    return out


def _build(
    group: list[_Piece],
    shape: tuple[int, int, int] | None,
    path: Path,
    report: _Report,
    budget: _Budget,
) -> ROI | None:
    first = group[0]
    kwargs: dict[str, Any] = {"label": first.label, "im_shape": shape, **_properties(first)}
    if not any(p.evenodd for p in group):
        polys = [np.column_stack([r, np.full(len(r), float(p.z))]) for p in group for r in p.rings]
        return ROI(polygons=polys, **kwargs)
    mask = _mask_planes(group, shape or _extent(group, path), budget)
    if not any(m.nnz for m in mask):
        report.skipped.append(f"{first.source.describe()}: no pixel inside its outline")
        return None
    return ROI(mask=mask, **kwargs)


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
    FileFormatError
        (a ``ValueError``) If the file is not an ImageJ ROI, RoiSet zip or ImageJ TIFF
        with ROIs, if the RoiSet is empty or holds no ROI, or if an ROI in it is
        truncated or corrupt (the message names the file and member).
    ResourceLimitError
        (a ``FileFormatError``) If the file exceeds a size limit (see the module
        docstring); nothing large was allocated.
    ValueError
        If ``im_shape`` is not a valid shape.

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
    budget = _Budget(path)
    pieces = [
        p for src in sources if (p := _to_piece(src, shape, path, report, budget)) is not None
    ]
    rois = [
        roi
        for group in _group(pieces)
        if (roi := _build(group, shape, path, report, budget)) is not None
    ]
    report.emit()
    return rois


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
