"""Fuzz targets for movie files: TIFF (headers, IFDs, metadata) and HDF5 (structure).

``tiff``
    A small valid TIFF written with tifffile — plain multi-page, tifffile-shaped,
    ImageJ hyperstack, OME-TIFF, hand-written ImageJ or OME metadata text, ImageJ
    overlays; 1-5 axes; uint8 ... float64, bool, complex; RGB; tiled; zlib or LZMA
    compressed; BigTIFF; big-endian — then IFD-aware mutations: tag values set to
    boundary numbers (image size, bits per sample, sample format, compression,
    samples per pixel, strip/tile offsets and byte counts, rows per strip, planar
    configuration, ...), entries' type/count/offset fields, the number of entries,
    next-IFD pointers (0, loops, past the end), overwritten bytes and truncation.
    Read with ``Sequence.create('TIFF', path, num_planes, num_channels)``, then its
    first two frames and the last frame are read (lazy readers fail late); every
    fourth input also goes through the napari reader (``get_reader`` and the layer
    data it returns); overlay files also through ``read_imagej_rois``.

``hdf5``
    An h5py file with 1-3 datasets of odd shapes (0-D to 6-D, empty dimensions,
    10^12 declared elements with no data written), odd dtypes (bool, float16,
    big-endian, complex, fixed and variable strings, compound, enum, references,
    array and opaque types), chunked, compressed or not, dimension labels and
    ``channel_names`` attributes of odd values, groups, soft, external and hard
    links, external raw storage; opened with fuzzed ``dim_order``/``group``/``key``
    by ``Sequence.create('HDF5', ...)`` and read, and through the napari reader.
    HDF5 files are generated, not byte-mutated: libhdf5 itself crashes (double free)
    or loops forever on some corrupted files, which no Python code can catch.

Run them with ``python -m fuzz.run --targets tiff,hdf5``.  With :mod:`atheris`
installed, ``python -m fuzz.targets_movies [atheris options]`` runs a
coverage-guided session on the TIFF reader (not used by the tests).
"""

from __future__ import annotations

import contextlib
import functools
import io
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from fuzz.harness import Target
from fuzz.targets_imagej import INTERESTING_INTS, roi_seeds, timed

# ---------------------------------------------------------------------------------------
# TIFF: valid seeds
# ---------------------------------------------------------------------------------------
_TIFF_KINDS = ("plain", "shaped", "imagej", "ome", "imagej-text", "ome-text", "overlay")
_TIFF_DTYPES = ("u1", "u2", "i2", "f4", "f8", "i1", "u4", "f2", "?", "c8")
_IMAGEJ_DTYPES = ("u1", "u2", "f4")
_META_VALUES = ("0", "1", "2", "3", "4", "-1", "1000000", "2147483648", "abc", "", "1e3", "nan")


@st.composite
def _imagej_text(draw: st.DrawFn) -> str:
    """ImageJ metadata text with fuzzed numbers (tifffile trusts it to shape series)."""
    val = st.sampled_from(_META_VALUES)
    lines = ["ImageJ=1.54f"]
    for key in ("images", "channels", "slices", "frames"):
        if draw(st.integers(0, 3)):
            lines.append(f"{key}={draw(val)}")
    lines.append(f"hyperstack={draw(st.sampled_from(['true', 'false', '1']))}")
    if draw(st.booleans()):
        lines.append(f"spacing={draw(val)}")
    if draw(st.integers(0, 4)) == 0:
        lines.append(draw(st.text(max_size=20)))
    return "\n".join(lines) + "\n"


@st.composite
def _ome_text(draw: st.DrawFn) -> str:
    """OME-XML with fuzzed sizes, order, type and TiffData."""
    val = st.sampled_from(("0", "1", "2", "3", "4", "8", "1000000", "-1", "x"))
    order = draw(st.sampled_from(["XYZCT", "XYCZT", "XYTZC", "XYZTC", "XY", "ZZZZZ"]))
    ptype = draw(st.sampled_from(["uint16", "uint8", "float", "double", "int8", "bit", "nope"]))
    tiffdata = draw(
        st.sampled_from(
            [
                "",
                "<TiffData/>",
                f'<TiffData IFD="{draw(val)}" PlaneCount="{draw(val)}"/>',
                f'<TiffData FirstT="{draw(val)}" FirstZ="{draw(val)}" FirstC="{draw(val)}"/>',
            ]
        )
    )
    sizes = " ".join(f'Size{a}="{draw(val)}"' for a in "XYZCT")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        f'<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="{order}" Type="{ptype}" '
        f'{sizes}><Channel ID="Channel:0:0"/>{tiffdata}</Pixels></Image></OME>'
    )


@st.composite
def tiff_seed(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(kind, bytes)`` of a small valid TIFF written with tifffile."""
    import tifffile

    kind = draw(st.sampled_from(_TIFF_KINDS))
    small = st.sampled_from([1, 2, 3, 5, 8, 16])
    y, x = draw(small), draw(small)
    kwargs: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        kwargs["compression"] = draw(st.sampled_from(["zlib", "lzma"]))
    if draw(st.integers(0, 5)) == 0:
        kwargs["tile"] = (16, 16)
    if kind in ("imagej", "overlay"):
        dtype = draw(st.sampled_from(_IMAGEJ_DTYPES))
        t, z, c = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
        data = np.arange(t * z * c * y * x).reshape(t, z, c, y, x).astype(dtype)
        kwargs = {"imagej": True, "metadata": {"axes": "TZCYX"}}
        if kind == "overlay":
            seeds = roi_seeds()
            picks = draw(st.lists(st.integers(0, len(seeds) - 1), min_size=1, max_size=3))
            kwargs["metadata"]["Overlays"] = [seeds[k] for k in picks]
    else:
        dtype = draw(st.sampled_from(_TIFF_DTYPES))
        pages = draw(st.integers(1, 5))
        shape: tuple[int, ...] = (pages, y, x)
        if kind == "plain" and draw(st.integers(0, 4)) == 0:
            shape, dtype = (pages, y, x, 3), "u1"
            kwargs["photometric"] = "rgb"
            kwargs["planarconfig"] = draw(st.sampled_from(["contig", "separate"]))
        else:
            kwargs["photometric"] = "minisblack"
        data = np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
        if kind == "plain":
            kwargs["metadata"] = None
        elif kind == "ome":
            kwargs["ome"] = True
            if pages > 1 and draw(st.booleans()):
                data = data.reshape(pages, 1, *shape[1:])
                kwargs["metadata"] = {"axes": "TCYX"}
        elif kind in ("imagej-text", "ome-text"):
            kwargs["metadata"] = None
            text = draw(_imagej_text() if kind == "imagej-text" else _ome_text())
            kwargs["description"] = text
        if draw(st.integers(0, 5)) == 0:
            kwargs["bigtiff"] = True
        if draw(st.integers(0, 5)) == 0:
            kwargs["byteorder"] = ">"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tifffile.imwrite(buf, data, **kwargs)
        except Exception:  # noqa: BLE001 - a combination tifffile cannot write (OME float16)
            buf = io.BytesIO()
            tifffile.imwrite(buf, data.astype("u2"), photometric="minisblack")
    return kind, buf.getvalue()


# ---------------------------------------------------------------------------------------
# TIFF: IFD-aware mutations
# ---------------------------------------------------------------------------------------
#: Tags whose values decide how pages are decoded and how much memory they need.
_TAGS = (
    256, 257, 258, 259, 262, 270, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338,
    339, 32997, 50838, 50839,
)  # fmt: skip
_CODES = {1: "B", 2: "B", 3: "H", 4: "I", 16: "Q", 8: "h", 9: "i", 17: "q"}
_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
          16: 8, 17: 8, 18: 8}  # fmt: skip


class _Tiff:
    """Positions of the IFDs and entries of a TIFF file (for mutating them)."""

    def __init__(self, data: bytes) -> None:
        self.ok = False
        self.ifds: list[tuple[int, list[int], int]] = []  # (count pos, entry pos, next pos)
        if len(data) < 8 or data[:2] not in (b"II", b"MM"):
            return
        self.bo = "<" if data[:2] == b"II" else ">"
        magic = struct.unpack(self.bo + "H", data[2:4])[0]
        self.big = magic == 43
        if self.big:
            if len(data) < 16:
                return
            first = struct.unpack(self.bo + "Q", data[8:16])[0]
            self.cnt, self.esz, self.off = "Q", 20, "Q"
        else:
            first = struct.unpack(self.bo + "I", data[4:8])[0]
            self.cnt, self.esz, self.off = "H", 12, "I"
        cnt_size = struct.calcsize(self.cnt)
        off_size = struct.calcsize(self.off)
        pos, seen = first, set()
        while 0 < pos < len(data) - cnt_size and pos not in seen and len(self.ifds) < 16:
            seen.add(pos)
            (n,) = struct.unpack(self.bo + self.cnt, data[pos : pos + cnt_size])
            n = min(n, 512)
            entries = [pos + cnt_size + k * self.esz for k in range(n)]
            entries = [e for e in entries if e + self.esz <= len(data)]
            nxt = pos + cnt_size + n * self.esz
            self.ifds.append((pos, entries, nxt))
            if nxt + off_size > len(data):
                break
            (pos,) = struct.unpack(self.bo + self.off, data[nxt : nxt + off_size])
        self.ok = bool(self.ifds)

    def entry(self, data: bytes, epos: int) -> tuple[int, int, int, int]:
        """``(tag, type, count, value field position)`` of the entry at ``epos``."""
        tag, typ = struct.unpack(self.bo + "HH", data[epos : epos + 4])
        width = struct.calcsize(self.off)
        (count,) = struct.unpack(self.bo + self.off, data[epos + 4 : epos + 4 + width])
        return tag, typ, count, epos + 4 + width


def _put(out: bytearray, pos: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if pos >= 0 and pos + size <= len(out):
        out[pos : pos + size] = struct.pack(fmt, value % (1 << 8 * size))


def mutate_tiff(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply IFD-aware mutations (see :data:`_TIFF_MUTATION`) to TIFF bytes."""
    out = bytearray(data)
    for m in mutations:
        op = m[0]
        if op == "bytes":
            if out:
                pos = m[1] % len(out)
                out[pos : pos + len(m[2])] = m[2]
            continue
        if op == "truncate":
            out = out[: m[1] % (len(out) + 1)]
            continue
        tiff = _Tiff(bytes(out))
        if not tiff.ok:
            continue
        ifd_pos, entries, next_pos = tiff.ifds[m[1] % len(tiff.ifds)]
        bo, offc = tiff.bo, tiff.off
        if op == "tag" and entries:
            _, _, tag, elem, value = m
            found = [e for e in entries if tiff.entry(bytes(out), e)[0] == tag]
            epos = found[0] if found else entries[tag % len(entries)]
            _, typ, count, vpos = tiff.entry(bytes(out), epos)
            size = _SIZES.get(typ, 4)
            fmt = bo + _CODES.get(typ, "I")
            inline = count * size <= struct.calcsize(offc)
            if inline:
                where = vpos + (elem % max(count, 1)) * size
            else:
                (ptr,) = struct.unpack(bo + offc, out[vpos : vpos + struct.calcsize(offc)])
                where = ptr + (elem % max(count, 1)) * size
            _put(out, where, fmt, value)
        elif op == "entry" and entries:
            _, _, index, fieldname, value = m
            epos = entries[index % len(entries)]
            if fieldname == "code":
                _put(out, epos, bo + "H", value)
            elif fieldname == "type":
                _put(out, epos + 2, bo + "H", value)
            elif fieldname == "count":
                _put(out, epos + 4, bo + offc, value)
            else:
                _put(out, epos + 4 + struct.calcsize(offc), bo + offc, value)
        elif op == "nentries":
            _put(out, ifd_pos, bo + tiff.cnt, m[2])
        elif op == "next":
            target = {"zero": 0, "self": ifd_pos, "first": tiff.ifds[0][0], "eof": len(out) + 8}
            _put(out, next_pos, bo + offc, target.get(m[2], m[3]))
    return bytes(out)


_VALUES = st.one_of(
    st.sampled_from(INTERESTING_INTS + (10**6, 10**9, 10**12, 5, 6, 7, 32773, 34925, 50000)),
    st.integers(0, 2**32 - 1),
)
_IFD = st.integers(0, 15)
_TAG_MUTATION = st.tuples(st.just("tag"), _IFD, st.sampled_from(_TAGS), st.integers(0, 7), _VALUES)
_TIFF_MUTATION = st.one_of(
    _TAG_MUTATION,
    _TAG_MUTATION,
    st.tuples(st.just("entry"), st.integers(0, 15), st.integers(0, 63),
              st.sampled_from(["code", "type", "count", "value"]), _VALUES),
    st.tuples(st.just("nentries"), st.integers(0, 15), _VALUES),
    st.tuples(st.just("next"), _IFD, st.sampled_from(["zero", "self", "first", "eof", "value"]),
              _VALUES),
    st.tuples(st.just("bytes"), st.integers(0, 2**20), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 2**20)),
)  # fmt: skip
_TIFF_MUTATIONS = st.lists(_TIFF_MUTATION, max_size=4)
_PLANES = st.sampled_from([1, 1, 1, 2, 3])


@st.composite
def tiff_input(draw: st.DrawFn) -> tuple[str, bytes, int, int, bool]:
    """``(kind, bytes, num_planes, num_channels, via_napari)``."""
    _warm_up()
    kind, data = draw(tiff_seed())
    data = mutate_tiff(data, draw(_TIFF_MUTATIONS))
    return kind, data, draw(_PLANES), draw(_PLANES), draw(st.integers(0, 3)) == 0


@functools.cache
def _warm_up() -> None:
    """Import the readers once, outside the per-input time limit (2 s on a busy box)."""
    import napari_sima._reader  # noqa: F401
    import napari_sima.core.dataset  # noqa: F401
    from napari_sima.core import _hdf5, _tiff  # noqa: F401


def _read_some(seq: Any) -> None:
    """Read the frames a user touches first: two at the start, the last one."""
    n = len(seq)
    np.asarray(seq[: min(n, 2)])
    if n > 2:
        seq.frame(n - 1)


def _via_napari(path: Path) -> None:
    """Open ``path`` as napari would: ``get_reader``, then the layers and a frame.

    ``get_reader`` gives None or a reader; the layers read a few frames (contrast
    limits), then their first frame is read.

    The reader function itself is not called: it only adds napari notifications
    (importing napari takes seconds) to :meth:`OpenedSource.layer_data`.
    """
    from napari_sima._reader import get_reader, open_source

    if get_reader(str(path)) is not None:
        for data, _, _ in open_source(str(path)).layer_data():
            np.asarray(data[0])


@timed
def read_tiff(data: tuple[str, bytes, int, int, bool], workdir: Path) -> Any:
    """Fuzz target: write a TIFF, open it as a Sequence and read frames."""
    from napari_sima.core import Sequence

    kind, raw, planes, channels, napari = data
    path = workdir / "movie.tif"
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "overlay":
            from napari_sima.core.imagej import read_imagej_rois

            with contextlib.suppress(ValueError):  # the movie is checked next
                read_imagej_rois(path, im_shape=(16, 16))
        if napari:
            _via_napari(path)
        seq = Sequence.create("TIFF", path, num_planes=planes, num_channels=channels)
        try:
            _read_some(seq)
        finally:
            seq.close()
    return seq.shape


# ---------------------------------------------------------------------------------------
# HDF5: generated structure
# ---------------------------------------------------------------------------------------
#: Axis sizes: small ones, and declared sizes far beyond any real movie (a frame with
#: one of them on a non-time axis must be refused before anything is allocated).
_DIMS = (0, 1, 1, 2, 3, 4, 5, 8, 2**31, 10**10, 2**40, 10**12)
_H5_DTYPES = (
    "u1", "u2", "i2", ">u2", "i4", "f2", "f4", ">f8", "?", "c8", "S4", "vlen-str", "compound",
    "enum", "ref", "array", "opaque", "vlen-int",
)  # fmt: skip
_LABELS = ("t", "z", "y", "x", "c", "T", "tt", "", "q", "ü", "x ")
_LABEL = st.sampled_from(_LABELS)
_DS_NAMES = ("mov", "data", "imaging", "ü-movie", "a b", "g/inner", "x" * 100)
_CHANNEL_NAMES = ("none", "strs", "bytes", "ints", "nested", "empty", "scalar", "many")


def _h5_dtype(name: str) -> Any:
    import h5py

    special = {
        "vlen-str": h5py.string_dtype(),
        "compound": np.dtype([("a", "u1"), ("b", "f4")]),
        "enum": h5py.enum_dtype({"A": 0, "B": 1}, basetype="u1"),
        "ref": h5py.ref_dtype,
        "array": np.dtype(("u2", (2,))),
        "opaque": np.dtype("V4"),
        "vlen-int": h5py.vlen_dtype(np.dtype("i4")),
    }
    return special.get(name, np.dtype(name) if name not in special else None)


@st.composite
def _dataset_spec(draw: st.DrawFn) -> dict[str, Any]:
    ndim = draw(st.sampled_from([0, 1, 2, 3, 3, 3, 4, 5, 6]))
    small = st.sampled_from(_DIMS[:8])
    shape = tuple(draw(st.sampled_from(_DIMS) if draw(st.integers(0, 5)) == 0 else small)
                  for _ in range(ndim))  # fmt: skip
    spec = {
        "name": draw(st.sampled_from(_DS_NAMES)),
        "shape": shape,
        "dtype": draw(st.sampled_from(_H5_DTYPES[:6] * 3 + _H5_DTYPES)),
        "chunked": draw(st.booleans()),
        "gzip": draw(st.integers(0, 3)) == 0,
        "labels": draw(st.none() | st.lists(_LABEL, min_size=ndim, max_size=ndim)),
        "channel_names": draw(st.sampled_from(_CHANNEL_NAMES)),
        "external": draw(st.sampled_from([None, None, None, None, "missing", "small"])),
        "scalar_empty": draw(st.integers(0, 15)) == 0,
    }
    return spec


_DIM_ORDERS = st.one_of(
    st.none(),
    st.permutations("tzyxc").flatmap(lambda p: st.integers(1, 5).map(lambda k: "".join(p[:k]))),
    st.sampled_from(["tyx", "tzyx", "tzyxc", "yxt", "TYX", "tyxx", "tq", "", "t y x"]),
    st.text(alphabet="tzyxcTq \u00fc", max_size=7),
)
_GROUPS = st.sampled_from([None, None, "/", "g", "/g", "missing", "", "mov", "soft", "ext"])
_KEYS = st.sampled_from(
    [None, None, "mov", "data", "g/inner", "inner", "missing", "g", "soft", "dangling",
     "ext", "ext-self", "/mov", "..", ".", ""]
)  # fmt: skip


_MOVIE_LINKS = st.sampled_from(["soft", "dangling", "ext", "hard"])
_NUMERIC = ("u1", "u2", "i2", ">u2", "i4", "f2", "f4", ">f8", "?", "enum")


@st.composite
def _movie_spec(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """Draw a dataset that is a readable movie (mostly) and a dim order that fits it."""
    order = draw(st.permutations("tzyxc"))
    ndim = draw(st.integers(3, 5))
    letters = [a for a in order if a in "tyx"] + [a for a in order if a not in "tyx"]
    dim_order = "".join(sorted(letters[:ndim], key=order.index))
    small = st.sampled_from([1, 2, 3, 5, 8])
    shape = [draw(small) for _ in dim_order]
    if draw(st.integers(0, 4)) == 0:  # one huge axis: declared, never written
        shape[draw(st.integers(0, ndim - 1))] = draw(st.sampled_from(_DIMS[-4:]))
    spec = {
        "name": "mov",
        "shape": tuple(shape),
        "dtype": draw(st.sampled_from(_NUMERIC)),
        "chunked": draw(st.booleans()),
        "gzip": draw(st.integers(0, 3)) == 0,
        "labels": list(dim_order) if draw(st.booleans()) else None,
        "channel_names": draw(st.sampled_from(_CHANNEL_NAMES)),
        "external": None,
        "scalar_empty": False,
    }
    return spec, dim_order


@st.composite
def hdf5_input(draw: st.DrawFn) -> dict[str, Any]:
    """Draw a description of an HDF5 file and how to open it."""
    _warm_up()
    if draw(st.integers(0, 2)):  # a movie, opened the right way (mostly)
        movie, order = draw(_movie_spec())
        others = draw(st.lists(_dataset_spec(), max_size=1))
        return {
            "datasets": [movie, *others],
            "links": draw(st.lists(_MOVIE_LINKS, max_size=2)),
            "dim_order": draw(st.sampled_from([order, order, None, order.upper()])),
            "group": draw(st.sampled_from([None, None, "/"])),
            "key": draw(st.sampled_from([None, "mov", "mov", "/mov", "soft"])),
            "napari": draw(st.integers(0, 3)) == 0,
        }
    return {
        "datasets": draw(st.lists(_dataset_spec(), min_size=1, max_size=3)),
        "links": draw(st.lists(st.sampled_from(["soft", "dangling", "ext", "ext-self", "hard"]),
                               max_size=3)),  # fmt: skip
        "dim_order": draw(_DIM_ORDERS),
        "group": draw(_GROUPS),
        "key": draw(_KEYS),
        "napari": draw(st.integers(0, 3)) == 0,
    }


def _channel_names(kind: str, n: int) -> Any:
    return {
        "strs": [f"ch{k}" for k in range(min(max(n, 1), 64))],
        "bytes": np.array([b"red", b"green"]),
        "ints": np.arange(3),
        "nested": np.zeros((2, 2)),
        "empty": np.zeros(0),
        "scalar": "gcamp",
        "many": np.array([f"c{k}" for k in range(2000)], dtype="S8"),
    }.get(kind)


def write_hdf5(spec: dict[str, Any], path: Path) -> None:
    """Write the HDF5 file an :func:`hdf5_input` describes (unwritable parts skipped)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_group("g")
        for ds in spec["datasets"]:
            if ds["name"] in f:
                continue
            dtype = _h5_dtype(ds["dtype"])
            shape = ds["shape"]
            size = int(np.prod(shape, dtype=object)) if shape else 1
            kwargs: dict[str, Any] = {}
            if ds["scalar_empty"]:
                f.create_dataset(ds["name"], data=h5py.Empty("f4"))
                continue
            if ds["chunked"] and shape and all(shape):
                kwargs["chunks"] = tuple(min(s, 4) if s < 2**16 else 2**12 for s in shape)
                if ds["gzip"]:
                    kwargs["compression"] = "gzip"
            if ds["external"] and size and size < 4096 and not kwargs:
                nbytes = size * np.dtype(dtype).itemsize if dtype.kind not in "OV" else 0
                if nbytes:
                    target = path.parent / ("raw.bin" if ds["external"] == "small" else "nope.bin")
                    if ds["external"] == "small":
                        target.write_bytes(b"\x01" * (nbytes // 2))
                    kwargs["external"] = [(target.name, 0, nbytes)]
            try:
                d = f.create_dataset(ds["name"], shape=shape, dtype=dtype, **kwargs)
            except (ValueError, TypeError, OSError):
                continue  # e.g. contiguous storage too large for the file format
            if 0 < size <= 4096 and dtype.kind in "biuf" and not kwargs.get("external"):
                d[...] = (np.arange(size) % 251).reshape(shape).astype(dtype)
            if ds["labels"] is not None:
                for k, label in enumerate(ds["labels"]):
                    d.dims[k].label = label
            names = _channel_names(ds["channel_names"], shape[-1] if shape else 1)
            if names is not None:
                d.attrs["channel_names"] = names
        for link in dict.fromkeys(spec["links"]):
            if link in f:
                continue
            if link == "soft":
                f["soft"] = h5py.SoftLink("/" + spec["datasets"][0]["name"])
            elif link == "dangling":
                f["dangling"] = h5py.SoftLink("/nowhere")
            elif link == "ext":
                f["ext"] = h5py.ExternalLink("missing.h5", "/mov")
            elif link == "ext-self":
                f["ext-self"] = h5py.ExternalLink(path.name, "/ext-self")
            elif link == "hard" and "g" in f:
                f["g/hard"] = f["g"]


@timed
def read_hdf5(spec: dict[str, Any], workdir: Path) -> Any:
    """Fuzz target: write an HDF5 file, open it as a Sequence and read frames."""
    from napari_sima.core import Sequence

    path = workdir / "movie.h5"
    write_hdf5(spec, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec["napari"]:
            _via_napari(path)
        seq = Sequence.create(
            "HDF5", path, spec["dim_order"], group=spec["group"], key=spec["key"]
        )
        try:
            _read_some(seq)
        finally:
            seq.close()
    return seq.shape


TARGETS = {
    "tiff": Target(
        strategy=tiff_input(),
        run=read_tiff,
        description="TIFF files (tifffile-written, mutated IFD tags, metadata, bytes)",
    ),
    "hdf5": Target(
        strategy=hdf5_input(),
        run=read_hdf5,
        description="HDF5 files (odd shapes, dtypes, keys, labels, links)",
    ),
}


# ---------------------------------------------------------------------------------------
# Optional coverage-guided entry point (atheris), TIFF reader
# ---------------------------------------------------------------------------------------
def _atheris_main(argv: list[str]) -> None:  # pragma: no cover - manual tool
    import tempfile

    import atheris
    import tifffile

    from napari_sima.core.errors import READ_ERRORS

    workdir = Path(tempfile.mkdtemp(prefix="napari_sima_atheris_"))
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((3, 8, 8), np.uint16), imagej=True)
    seed = buf.getvalue()

    def one(raw: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(raw)
        cut = fdp.ConsumeIntInRange(0, len(seed))
        data = seed[:cut] + fdp.ConsumeBytes(fdp.remaining_bytes())
        with contextlib.suppress(*READ_ERRORS):
            read_tiff(("plain", data, 1, 1, False), workdir)

    import napari_sima.core.imagej  # noqa: F401  (loaded before instrumenting)
    from napari_sima.core import Sequence  # noqa: F401

    atheris.instrument_all()  # coverage feedback for every loaded Python module
    atheris.Setup(argv, one)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    _atheris_main(sys.argv)
