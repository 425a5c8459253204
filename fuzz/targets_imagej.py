"""Fuzz targets for ImageJ ROIs: single ``.roi`` files and RoiSet ``.zip`` archives.

Both targets start from *valid* files and mutate them, so that the fuzzing reaches
the deep code (roifile's decoder, our geometry conversion, zipfile's member
handling) rather than stopping at the magic-number check:

``imagej-roi``
    A ``.roi`` of every ImageJ type (polygon, freehand, traced, rectangle, sub-pixel
    rectangle, oval, composite with and without holes, line, polyline, point,
    rounded rectangle, spline-fitted polygon; with names, properties and hyperstack
    positions), then header fields set to boundary values (type, bounds, counts,
    header-2 offset, name/properties offsets and lengths, positions...), bytes
    overwritten, the file truncated or extended.  Read with
    :func:`napari_sima.core.imagej.read_imagej_rois` with and without ``im_shape``.

``imagej-roiset``
    A zip of such members with odd names (``../x.roi``, absolute paths, duplicates,
    folders, macOS ``._`` files, non-ROI members, nested zips), stored or deflated,
    zip64 or not; then local-header, central-directory and end-of-central-directory
    fields set to boundary values (sizes, offsets, counts, methods, flags, name
    lengths), bytes overwritten, the archive truncated (e.g. inside the central
    directory).

Run them with ``python -m fuzz.run --targets imagej-roi,imagej-roiset``.  When
:mod:`atheris` is installed, ``python -m fuzz.targets_imagej roi|roiset [atheris
options]`` runs a coverage-guided session on the same readers (not used by the tests).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from fuzz import harness
from fuzz.harness import Target


class TooSlow(Exception):
    """An input took longer than the harness's time limit.

    The harness's own alarm exception can be caught (and reported as a documented
    error) by readers that wrap library exceptions with ``except Exception``; this
    check in the target itself cannot.
    """


def _keep(data: Any, name: str) -> None:
    """Save a slow input (repr) under ``$NAPARI_SIMA_FUZZ_KEEP`` to reproduce it."""
    folder = os.environ.get("NAPARI_SIMA_FUZZ_KEEP")
    if folder:
        out = Path(folder) / f"{name}-{time.time_ns()}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(repr(data))


def timed(run: Callable[[Any, Path], Any]) -> Callable[[Any, Path], Any]:
    """Make a target fail with :class:`TooSlow` when an input exceeds the time limit."""

    @functools.wraps(run)
    def wrapper(data: Any, workdir: Path) -> Any:
        t0 = time.perf_counter()
        try:
            return run(data, workdir)
        finally:
            elapsed = time.perf_counter() - t0
            if elapsed > harness.TIME_LIMIT:
                _keep(data, run.__name__)
                raise TooSlow(f"input took {elapsed:.1f} s (limit {harness.TIME_LIMIT} s)")

    return wrapper

#: ``im_shape`` values the reader is called with.
_IM_SHAPES: tuple[Any, ...] = (None, (64, 64), (3, 40, 50), (1, 1))

#: Integers that tend to break decoders (signed/unsigned limits, small counts).
INTERESTING_INTS = (
    0, 1, 2, 3, 4, 7, 8, 15, 16, 63, 64, 65, 127, 128, 255, 256, 1000, 0x7FFF, 0x8000,
    0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, -1, -2, -64, -0x8000, -0x80000000,
)  # fmt: skip

#: Header fields of a ``.roi`` file: (offset, struct code), big-endian.
ROI_HEADER_FIELDS: tuple[tuple[int, str], ...] = (
    (4, "h"),  # version
    (6, "B"),  # type
    (8, "h"), (10, "h"), (12, "h"), (14, "h"),  # top, left, bottom, right
    (16, "H"),  # n_coordinates
    (18, "f"), (22, "f"), (26, "f"), (30, "f"),  # x1 y1 x2 y2 / xd yd widthd heightd
    (18, "i"),  # n_coordinates (> 65535)
    (34, "h"),  # stroke width
    (36, "i"),  # shape_roi_size (composite)
    (48, "h"),  # subtype
    (50, "h"),  # options
    (52, "B"), (53, "B"), (54, "h"),  # arrow style / aspect, head size, arc size
    (56, "i"),  # position
    (60, "i"),  # header-2 offset
)  # fmt: skip

#: Fields of header 2, relative to its offset.
ROI_HEADER2_FIELDS: tuple[tuple[int, str], ...] = (
    (4, "i"), (8, "i"), (12, "i"),  # c, z, t positions
    (16, "i"), (20, "i"),  # name offset, name length
    (28, "h"), (30, "B"), (31, "B"),  # font size, group, image opacity
    (32, "i"), (36, "f"),  # image size, float stroke width
    (40, "i"), (44, "i"), (48, "i"),  # props offset, props length, counters offset
)  # fmt: skip

_FLOATS = (0.0, -0.0, 0.5, -1.0, 1e-30, 1e6, 3.0e38, -3.0e38, float("inf"), float("-inf"),
           float("nan"), 65535.5, 2.0**31)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Valid seeds
# ---------------------------------------------------------------------------------------
def _roi(roitype: str, points: Any = None, **attrs: Any) -> bytes:
    import roifile

    roi = roifile.ImagejRoi.frompoints(points) if points is not None else roifile.ImagejRoi()
    roi.roitype = roifile.ROI_TYPE[roitype]
    for key, value in attrs.items():
        setattr(roi, key, value)
    return roi.tobytes()


@functools.cache
def roi_seeds() -> tuple[bytes, ...]:
    """Return valid ``.roi`` files of every ImageJ ROI type (built once)."""
    import roifile

    from napari_sima.core.imagej import write_imagej_rois
    from napari_sima.core.roi import ROI

    opt = roifile.ROI_OPTIONS
    square = [[2, 2], [2, 12], [12, 12], [12, 2]]
    subpix = np.array([[3.25, 4.5], [20.75, 5.0], [18.5, 22.25], [4.0, 19.5]])
    seeds = [
        _roi("POLYGON", square, name="cell", position=2),
        _roi("FREEHAND", subpix, name="free", z_position=2, c_position=1, t_position=3),
        _roi("TRACED", square),
        _roi("POLYGON", subpix, options=opt.SPLINE_FIT | opt.SUB_PIXEL_RESOLUTION),
        _roi("POLYLINE", square),
        _roi("FREELINE", subpix),
        _roi("ANGLE", square[:3]),
        _roi("POINT", subpix, name="points"),
        _roi("RECT", None, top=5, left=6, bottom=20, right=30, name="rect"),
        _roi("RECT", None, top=5, left=6, bottom=20, right=30, rounded_rect_arc_size=4),
        _roi(
            "RECT", None, options=opt.SUB_PIXEL_RESOLUTION, xd=2.5, yd=3.5, widthd=10.25,
            heightd=7.75, top=3, left=2, bottom=11, right=13,
        ),
        _roi("OVAL", None, top=4, left=4, bottom=30, right=44, name="oval"),
        _roi(
            "OVAL", None, options=opt.SUB_PIXEL_RESOLUTION, xd=1.5, yd=2.5, widthd=15.0,
            heightd=9.0, top=2, left=1, bottom=12, right=17,
        ),
        _roi("LINE", None, x1=1.0, y1=2.0, x2=30.0, y2=40.0),
        _roi("NOROI"),
    ]
    props = {"napari_sima_id": '"c1"', "napari_sima_tags": '["a", "b"]'}
    roi = roifile.ImagejRoi.frompoints(square, name="props", z=2)
    roi.properties = props
    seeds.append(roi.tobytes())
    # composite ROIs (a mask with a hole, two blobs) and multi-part ROIs, by our writer
    ring = np.zeros((16, 16), dtype=bool)
    ring[2:14, 2:14] = True
    ring[6:10, 6:10] = False
    blobs = np.zeros((16, 16), dtype=bool)
    blobs[1:4, 1:4] = blobs[8:12, 9:15] = True
    polys = [
        np.array([[1, 1, 0], [1, 5, 0], [5, 5, 0]]),
        np.array([[8, 8, 1], [8, 12, 1], [12, 9, 1]]),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rois = [
            ROI(mask=[ring], label="hole", id="x"),
            ROI(mask=[blobs]),
            ROI(polygons=polys, label="two"),
        ]
        for k, r in enumerate(rois):
            seeds.extend(_zip_members(_written_roiset(write_imagej_rois, r, k)))
    return tuple(seeds)


def _written_roiset(write: Any, roi: Any, k: int) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"seed{k}.zip"
        write(path, [roi])
        return path.read_bytes()


def _zip_members(data: bytes) -> list[bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [zf.read(name) for name in zf.namelist()]


# ---------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------
def _put(data: bytearray, offset: int, code: str, value: Any) -> None:
    """Write ``value`` as big-endian ``code`` at ``offset`` (wrapping integers)."""
    size = struct.calcsize(">" + code)
    if offset < 0 or offset + size > len(data):
        return
    if code in "fd":
        packed = struct.pack(">" + code, float(value))
    else:
        bits = 8 * size
        v = int(value) % (1 << bits)
        if code.islower() and v >= 1 << (bits - 1):
            v -= 1 << bits
        packed = struct.pack(">" + code, v)
    data[offset : offset + size] = packed


# strategies are built once: hypothesis is much slower when they are made per draw
_FLOAT_VALUES = st.one_of(st.sampled_from(_FLOATS), st.floats(width=32))
_INT_VALUES = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-(2**31), 2**32 - 1))
_POSITIONS = st.integers(0, 2**16)
_PATCH = st.binary(min_size=1, max_size=8)


def _field_mutation(kind: str, fields: tuple[tuple[int, str], ...]) -> st.SearchStrategy[tuple]:
    return st.one_of(
        *(
            st.tuples(st.just(kind), st.just(off), st.just(code),
                      _FLOAT_VALUES if code in "fd" else _INT_VALUES)
            for off, code in fields
        )
    )  # fmt: skip


_ROI_MUTATION = st.one_of(
    _field_mutation("header", ROI_HEADER_FIELDS),
    _field_mutation("header2", ROI_HEADER2_FIELDS),
    st.tuples(st.just("bytes"), _POSITIONS, _PATCH),
    st.tuples(st.just("truncate"), _POSITIONS),
    st.tuples(st.just("extend"), st.binary(max_size=64), st.integers(0, 4096)),
)
_ROI_MUTATIONS = st.lists(_ROI_MUTATION, max_size=4)


def mutate_roi(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply ``mutations`` (from :func:`_roi_mutation`) to the bytes of a ``.roi`` file."""
    out = bytearray(data)
    for m in mutations:
        if m[0] == "header":
            _put(out, m[1], m[2], m[3])
        elif m[0] == "header2":
            h2 = int.from_bytes(out[60:64], "big", signed=True) if len(out) >= 64 else 0
            if h2 <= 0 or h2 >= len(out):
                h2 = 64
            _put(out, h2 + m[1], m[2], m[3])
        elif m[0] == "bytes":
            if out:
                pos = m[1] % len(out)
                out[pos : pos + len(m[2])] = m[2]
        elif m[0] == "truncate":
            out = out[: m[1] % (len(out) + 1)]
        elif m[0] == "extend":
            out += m[1] + b"\x00" * m[2]
    return bytes(out)


@st.composite
def roi_bytes(draw: st.DrawFn) -> bytes:
    """Draw a valid ``.roi`` file with 0-4 mutations."""
    seed = roi_seeds()[draw(_SEED_INDEX)]
    return mutate_roi(seed, draw(_ROI_MUTATIONS))


_SEED_INDEX = st.integers(0, 63).map(lambda k: k % len(roi_seeds()))
_ROI_BYTES = roi_bytes()
_ONE_IN_TEN = st.integers(0, 9)
_SHAPES = st.sampled_from(_IM_SHAPES)


@st.composite
def roi_input(draw: st.DrawFn) -> tuple[bytes, Any]:
    """``(bytes of a .roi, im_shape)``; sometimes raw random bytes after the magic."""
    raw = draw(_ONE_IN_TEN) == 0
    data = b"Iout" + draw(st.binary(max_size=256)) if raw else draw(_ROI_BYTES)
    return data, draw(_SHAPES)


@timed
def read_roi(data: tuple[bytes, Any], workdir: Path) -> Any:
    """Fuzz target: write a ``.roi`` file and read it with ``read_imagej_rois``."""
    from napari_sima.core.imagej import read_imagej_rois

    raw, im_shape = data
    path = workdir / "cell.roi"
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rois = read_imagej_rois(path, im_shape=im_shape)
        if im_shape is not None:
            for roi in rois:  # rasterise: the geometry must be usable
                roi.mask  # noqa: B018
    return rois


# ---------------------------------------------------------------------------------------
# RoiSet zips
# ---------------------------------------------------------------------------------------
_MEMBER_NAMES = (
    "0001-0010-0020.roi", "cell.roi", "cell.roi", "../x.roi", "../../etc/passwd.roi",
    "/abs/y.roi", "C:\\win\\z.roi", "dir/", "dir/b.roi", "__MACOSX/._a.roi", "._a.roi",
    "README.txt", "nested.zip", "no_suffix", "ünï.roi", "a\x00b.roi", ".roi", "",
    "x" * 300 + ".roi",
)  # fmt: skip


_NAMES = st.one_of(st.sampled_from(_MEMBER_NAMES), st.text(max_size=12))
_METHODS = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
_SMALL_BINARY = st.binary(max_size=64)
_ZEROS = st.sampled_from([0, 1, 4096, 65536])


@st.composite
def _member(draw: st.DrawFn) -> tuple[str, bytes, int]:
    name = draw(_NAMES)
    which = draw(_ONE_IN_TEN)
    if which <= 5:
        data = draw(_ROI_BYTES)
    elif which == 6:
        data = draw(_SMALL_BINARY)
    elif which == 7:
        data = b"Iout" + draw(_SMALL_BINARY)
    elif which == 8:  # a nested RoiSet
        data = build_zip([("inner.roi", roi_seeds()[0], zipfile.ZIP_DEFLATED)])
    else:
        data = b"\x00" * draw(_ZEROS)
    return name, data, draw(_METHODS)


def build_zip(members: list[tuple[str, bytes, int]], zip64: bool = False) -> bytes:
    """Write ``(name, data, compress_type)`` members into zip bytes."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data, method in members:
                info = zipfile.ZipInfo(name or "unnamed", date_time=(2020, 1, 2, 3, 4, 6))
                info.compress_type = method
                with zf.open(info, "w", force_zip64=zip64) as fh:
                    fh.write(data)
    return buf.getvalue()


#: Fields of zip records: (signature, field offset, struct code), little-endian.
_LOCAL_FIELDS = (
    (4, "H"), (6, "H"), (8, "H"), (14, "I"), (18, "I"), (22, "I"), (26, "H"), (28, "H"),
)  # fmt: skip
_CENTRAL_FIELDS = (
    (6, "H"), (8, "H"), (10, "H"), (16, "I"), (20, "I"), (24, "I"), (28, "H"), (30, "H"),
    (32, "H"), (34, "H"), (38, "I"), (42, "I"),
)  # fmt: skip
_EOCD_FIELDS = ((4, "H"), (6, "H"), (8, "H"), (10, "H"), (12, "I"), (16, "I"), (20, "H"))
_RECORDS = {
    "local": (b"PK\x03\x04", _LOCAL_FIELDS),
    "central": (b"PK\x01\x02", _CENTRAL_FIELDS),
    "eocd": (b"PK\x05\x06", _EOCD_FIELDS),
}


_ZIP_VALUES = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(0, 2**32 - 1))
_ZIP_MUTATION = st.one_of(
    *(
        st.tuples(st.just("field"), st.just(record), st.integers(0, 63), st.just(off),
                  st.just(code), _ZIP_VALUES)
        for record, (_, fields) in sorted(_RECORDS.items())
        for off, code in fields
    ),
    st.tuples(st.just("bytes"), st.integers(0, 2**20), _PATCH),
    st.tuples(st.just("truncate"), st.integers(1, 2**20)),
)  # fmt: skip
_MEMBERS = st.lists(_member(), max_size=5)
_ZIP_MUTATIONS = st.lists(_ZIP_MUTATION, max_size=4)


def mutate_zip(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply zip-structure mutations (from :func:`_zip_mutation`) to zip bytes."""
    out = bytearray(data)
    for m in mutations:
        if m[0] == "field":
            _, record, index, offset, code, value = m
            sig = _RECORDS[record][0]
            starts = []
            pos = out.find(sig)
            while pos >= 0 and len(starts) < 64:
                starts.append(pos)
                pos = out.find(sig, pos + 1)
            if starts:
                start = starts[index % len(starts)] + offset
                size = struct.calcsize("<" + code)
                if start + size <= len(out):
                    out[start : start + size] = struct.pack("<" + code, value % (1 << 8 * size))
        elif m[0] == "bytes":
            if out:
                pos = m[1] % len(out)
                out[pos : pos + len(m[2])] = m[2]
        elif m[0] == "truncate":
            # often inside the central directory, which sits at the end
            out = out[: len(out) - (m[1] % (len(out) + 1))]
    return bytes(out)


@st.composite
def roiset_bytes(draw: st.DrawFn) -> bytes:
    """Draw a RoiSet zip (odd members, zip64 or not) with 0-4 structure mutations."""
    members = draw(_MEMBERS)
    if draw(_ONE_IN_TEN) == 0 and draw(_ONE_IN_TEN) < 3:  # many small members
        seed = roi_seeds()[0]
        members += [(f"{k:05d}.roi", seed, zipfile.ZIP_STORED) for k in range(120)]
    data = build_zip(members, zip64=draw(st.booleans()))
    return mutate_zip(data, draw(_ZIP_MUTATIONS))


@timed
def read_roiset(data: bytes, workdir: Path) -> Any:
    """Fuzz target: write a RoiSet zip and read it with ``read_imagej_rois``."""
    from napari_sima._roi_io import get_roi_reader
    from napari_sima.core.imagej import read_imagej_rois

    path = workdir / "RoiSet.zip"
    path.write_bytes(data)
    get_roi_reader(str(path))  # napari's check: None or a reader, never an exception
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_imagej_rois(path, im_shape=(64, 64))


TARGETS = {
    "imagej-roi": Target(
        strategy=roi_input(),
        run=read_roi,
        description="ImageJ .roi bytes (every ROI type, mutated header fields and bytes)",
    ),
    "imagej-roiset": Target(
        strategy=roiset_bytes(),
        run=read_roiset,
        description="RoiSet zips (odd member names, nested zips, mutated zip records)",
    ),
}


# ---------------------------------------------------------------------------------------
# Optional coverage-guided entry point (atheris)
# ---------------------------------------------------------------------------------------
def _atheris_main(argv: list[str]) -> None:  # pragma: no cover - manual tool
    import tempfile

    import atheris

    from napari_sima.core.errors import READ_ERRORS

    which = argv[1] if len(argv) > 1 else "roi"
    workdir = Path(tempfile.mkdtemp(prefix="napari_sima_atheris_"))
    seeds = roi_seeds()

    def one(raw: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(raw)
        try:
            if which == "roiset":
                base = build_zip([("a.roi", seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)], 8)])
                cut = fdp.ConsumeIntInRange(0, len(base))
                read_roiset(base[:cut] + fdp.ConsumeBytes(fdp.remaining_bytes()), workdir)
            else:
                seed = seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)]
                cut = fdp.ConsumeIntInRange(0, len(seed))
                read_roi((seed[:cut] + fdp.ConsumeBytes(fdp.remaining_bytes()), (64, 64)), workdir)
        except READ_ERRORS:
            pass

    import napari_sima.core.imagej  # noqa: F401  (loaded before instrumenting)
    from napari_sima.core import Sequence  # noqa: F401

    atheris.instrument_all()  # coverage feedback for every loaded Python module
    atheris.Setup([argv[0], *argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    _atheris_main(sys.argv)
