"""Untrusted ImageJ ROIs, RoiSet zips, TIFF and HDF5 files: refusals and fixed crashes.

Each test pins one behaviour found by the fuzzing job (``make fuzz``): a hostile or
damaged file ends in a result or one of the documented errors
(:mod:`napari_sima.core.errors`), refuses huge declared sizes before allocating
(measured with :mod:`tracemalloc`), and never runs for long.
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import warnings
import zipfile
import zlib

import h5py
import numpy as np
import pytest
import roifile
import tifffile

from napari_sima._reader import get_reader, open_source
from napari_sima._roi_io import get_roi_reader
from napari_sima.core import Sequence
from napari_sima.core.errors import FileFormatError, ResourceLimitError
from napari_sima.core.imagej import read_imagej_rois

#: A refusal "before allocating" may use this much traced memory at most.
SMALL = 8 * 2**20


def peak_memory(fn, *args, **kwargs):
    """Run ``fn``; return ``(exception or None, peak traced bytes)``."""
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        err = None
    except Exception as exc:  # noqa: BLE001 - returned for the caller to check
        err = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return err, peak


# --------------------------------------------------------------------------- helpers
def tiff_bytes(tags: dict[int, tuple[int, int]], data: bytes = b"") -> bytes:
    """A little-endian TIFF with one IFD of single-valued ``{tag: (type, value)}``.

    ``data`` follows the IFD; a value of ``-1`` for StripOffsets (273) points at it.
    """
    n = len(tags)
    data_offset = 8 + 2 + 12 * n + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", n))
    for tag in sorted(tags):
        typ, value = tags[tag]
        if tag == 273 and value == -1:
            value = data_offset
        fmt = {3: "<HH", 4: "<I"}[typ]
        packed = struct.pack(fmt, value, 0) if typ == 3 else struct.pack(fmt, value)
        out += struct.pack("<HHI", tag, typ, 1) + packed
    out += struct.pack("<I", 0) + data
    return bytes(out)


def image_tags(width, length, compression=1, nbytes=64):
    return {
        256: (4, width),
        257: (4, length),
        258: (3, 8),
        259: (3, compression),
        262: (3, 1),
        273: (4, -1),
        277: (3, 1),
        278: (4, length),
        279: (4, nbytes),
    }


def polygon_roi(points, **attrs) -> roifile.ImagejRoi:
    roi = roifile.ImagejRoi.frompoints(np.asarray(points, dtype=float), name="")
    roi.roitype = roifile.ROI_TYPE.POLYGON
    for key, value in attrs.items():
        setattr(roi, key, value)
    return roi


def evenodd_reference(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside a (self-crossing) outline by the even-odd rule (ray casting)."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols] + 0.5
    inside = np.zeros(shape, dtype=bool)
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
        if b == d:
            continue
        crosses = ((b <= yy) & (yy < d)) | ((d <= yy) & (yy < b))
        x_at = a + (yy - b) * (c - a) / (d - b)
        inside ^= crosses & (x_at > xx)
    return inside


# --------------------------------------------------------------------------- ImageJ ROIs
def test_self_crossing_polygon_is_an_evenodd_mask(tmp_path):
    # 400 random vertices: ~20,000 self-crossings; GEOS's make_valid needed minutes
    rng = np.random.default_rng(3)
    points = np.round(rng.uniform(0, 40, (400, 2)), 2).astype(np.float32).astype(float)
    polygon_roi(points, name="knot").tofile(tmp_path / "knot.roi")
    with pytest.warns(UserWarning, match="knot.*crosses itself"):
        (roi,) = read_imagej_rois(tmp_path / "knot.roi", im_shape=(48, 48))
    assert roi.kind == "mask" and roi.label == "knot"
    np.testing.assert_array_equal(roi.mask[0].toarray(), evenodd_reference(points, (48, 48)))


def test_figure_eight_keeps_both_lobes(tmp_path):
    points = np.array([[0, 0], [10, 11], [10, 0], [0, 11]], dtype=float)  # no centre on it
    polygon_roi(points).tofile(tmp_path / "eight.roi")
    with pytest.warns(UserWarning, match="crosses itself"):
        (roi,) = read_imagej_rois(tmp_path / "eight.roi", im_shape=(12, 12))
    mask = roi.mask[0].toarray()
    np.testing.assert_array_equal(mask, evenodd_reference(points, (12, 12)))
    assert mask[5, 1] and mask[5, 8] and not mask[1, 5]


def test_huge_ovals_are_capped_or_refused(tmp_path):
    wide = roifile.ImagejRoi()
    wide.roitype = roifile.ROI_TYPE.OVAL
    wide.left, wide.top, wide.right, wide.bottom = -30000, -30000, 30000, 30000
    wide.tofile(tmp_path / "wide.roi")
    (roi,) = read_imagej_rois(tmp_path / "wide.roi")  # was 190,000 vertices (seconds)
    assert len(roi.polygon_arrays[0]) <= 4096
    sub = roifile.ImagejRoi()
    sub.roitype = roifile.ROI_TYPE.OVAL
    sub.options = roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION
    sub.xd, sub.yd, sub.widthd, sub.heightd = 1.0, 1.0, float("inf"), 5.0
    sub.tofile(tmp_path / "inf.roi")
    with pytest.raises(FileFormatError, match="inf.roi.*non-finite"):  # was OverflowError
        read_imagej_rois(tmp_path / "inf.roi")


def composite(rings, **attrs) -> roifile.ImagejRoi:
    path = []
    for ring in rings:
        path += [0, *ring[0]] + [v for p in ring[1:] for v in (1, *p)] + [4]
    roi = roifile.ImagejRoi()
    roi.roitype = roifile.ROI_TYPE.RECT
    roi.multi_coordinates = np.asarray(path, dtype=np.float32)
    roi.shape_roi_size = len(path)
    for key, value in attrs.items():
        setattr(roi, key, value)
    return roi


def test_composite_mask_without_im_shape_is_bounded(tmp_path):
    outer = [[0, 0], [0, 3e6], [3e6, 3e6], [3e6, 0]]
    hole = [[1, 1], [1, 2], [2, 2], [2, 1]]
    composite([outer, hole], name="vast").tofile(tmp_path / "vast.roi")
    err, peak = peak_memory(read_imagej_rois, tmp_path / "vast.roi")  # was 9e12 pixels
    assert isinstance(err, ResourceLimitError) and "im_shape" in str(err)
    assert peak < SMALL
    # the same ROI with the image size given reads fine
    with pytest.warns(UserWarning, match="vast"):
        (roi,) = read_imagej_rois(tmp_path / "vast.roi", im_shape=(8, 8))
    assert roi.mask[0].toarray().sum() == 64 - 1
    small = [[0, 0], [0, 6], [6, 6], [6, 0]]
    composite([small, hole], z_position=2**31 - 1).tofile(tmp_path / "deep.roi")
    err, peak = peak_memory(read_imagej_rois, tmp_path / "deep.roi")  # was 2e9 planes
    assert isinstance(err, ResourceLimitError) and peak < SMALL


def test_odd_properties_are_ignored(tmp_path):
    roi = polygon_roi([[1, 1], [1, 6], [6, 6]], name="p")
    roi.properties = {
        "napari_sima_tags": "[" * 100_000 + "]" * 100_000,  # was RecursionError
        "napari_sima_id": '{"a": 1}',
        "napari_sima_part": "9" * 5000 + "/2",  # was a ValueError from int()
    }
    roi.tofile(tmp_path / "p.roi")
    (out,) = read_imagej_rois(tmp_path / "p.roi")
    assert out.tags == set() and out.id == '{"a": 1}'


def test_truncated_roi_names_the_file(tmp_path):
    data = polygon_roi([[1, 1], [1, 6], [6, 6]], name="cut").tobytes()
    (tmp_path / "cut.roi").write_bytes(data[:70])
    with pytest.raises(FileFormatError, match="cut.roi.*truncated or corrupt"):
        read_imagej_rois(tmp_path / "cut.roi")


# --------------------------------------------------------------------------- RoiSet zips
def zeros_zlib(nbytes: int) -> bytes:
    """A zlib stream of ``nbytes`` zeros (about 1/230 of that size, made fast)."""
    comp = zlib.compressobj(1)
    chunk = b"\x00" * 2**20
    out = [comp.compress(chunk) for _ in range(nbytes // len(chunk))]
    return b"".join(out) + comp.flush()


def overlapping_members(raw: bytes, copies: int) -> bytes:
    """A one-member zip whose directory lists its member ``copies`` times.

    Every entry points at the same compressed data (the "overlapping files" zip
    bomb): each inflates to the member's full size.
    """
    central = raw.rfind(b"PK\x01\x02")
    eocd = raw.rfind(b"PK\x05\x06")
    entry = raw[central:eocd]
    name_len = struct.unpack("<H", entry[28:30])[0]
    entries = b"".join(
        entry[:46] + f"{k:0{name_len - 4}d}.roi".encode() + entry[46 + name_len :]
        for k in range(copies)
    )
    end = raw[eocd:eocd + 8] + struct.pack("<HHII", copies, copies, len(entries), central)
    return raw[:central] + entries + end + raw[eocd + 20 :]


def test_zip_bomb_refused_before_inflating(tmp_path):
    # 32 members that each inflate to 15 MiB: 480 MiB from a 15 kB file
    member = b"Iout" + b"\x00" * (15 * 2**20 - 4)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0000.roi", member)
    (tmp_path / "bomb.zip").write_bytes(overlapping_members(buf.getvalue(), 32))
    assert (tmp_path / "bomb.zip").stat().st_size < 2**16
    with zipfile.ZipFile(tmp_path / "bomb.zip") as zf:  # a valid archive for zipfile
        assert sum(i.file_size for i in zf.infolist()) == 32 * len(member)
    err, peak = peak_memory(read_imagej_rois, tmp_path / "bomb.zip")
    assert isinstance(err, ResourceLimitError) and "refusing" in str(err)
    assert peak < SMALL
    # one member that lies about its size: inflating stops at the declared size
    raw = bytearray(buf.getvalue())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 100)  # declared size
    (tmp_path / "liar.zip").write_bytes(bytes(raw))
    err, peak = peak_memory(read_imagej_rois, tmp_path / "liar.zip")
    assert isinstance(err, FileFormatError) and "liar.zip" in str(err)
    assert peak < SMALL


def zip64_claiming(raw: bytes, entries: int, directory_bytes: int) -> bytes:
    """``raw`` (a small zip) with a zip64 end record claiming ``entries`` members."""
    eocd = raw.rfind(b"PK\x05\x06")
    size, offset = struct.unpack("<II", raw[eocd + 12 : eocd + 20])
    record = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, entries, entries,
                                          directory_bytes, offset)  # fmt: skip
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, eocd, 1)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, size, offset, 0)
    return raw[:eocd] + record + locator + end


def test_millions_of_members_refused_before_parsing(tmp_path):
    good = polygon_roi([[1, 1], [1, 6], [6, 6]]).tobytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.roi", good)
    raw = buf.getvalue()
    (tmp_path / "many.zip").write_bytes(zip64_claiming(raw, 10**7, len(raw)))
    err, peak = peak_memory(read_imagej_rois, tmp_path / "many.zip")
    assert isinstance(err, ResourceLimitError) and "10000000 members" in str(err), err
    assert peak < SMALL
    (tmp_path / "big.zip").write_bytes(zip64_claiming(raw, 1, 2**40))  # a 1 TB directory
    with pytest.raises(ResourceLimitError, match="big.zip.*directory"):
        read_imagej_rois(tmp_path / "big.zip")
    for name in ("many.zip", "big.zip"):
        assert get_roi_reader(str(tmp_path / name)) is None


def test_odd_member_names_are_only_labels(tmp_path):
    good = polygon_roi([[1, 1], [1, 6], [6, 6]]).tobytes()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("inner.roi", good)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(tmp_path / "odd.zip", "w") as zf:
            for name in ("../../x.roi", "/abs/y.roi", "dir/z.roi", "dup.roi", "dup.roi"):
                zf.writestr(name, good)
            zf.writestr("nested.zip", inner.getvalue())
    with pytest.warns(UserWarning, match="nested.zip"):
        rois = read_imagej_rois(tmp_path / "odd.zip")
    assert [r.label for r in rois] == ["x", "y", "z", "dup", "dup"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.zip"]  # nothing extracted


def test_damaged_central_directory(tmp_path):
    good = polygon_roi([[1, 1], [1, 6], [6, 6]]).tobytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.roi", good)
    raw = buf.getvalue()
    central = raw.rfind(b"PK\x01\x02")
    (tmp_path / "cut.zip").write_bytes(raw[: central + 20])
    with pytest.raises(FileFormatError, match="cut.zip"):
        read_imagej_rois(tmp_path / "cut.zip")


# --------------------------------------------------------------------------- TIFF
def test_tiff_claiming_1e12_pixels_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.tif"
    tags = image_tags(1_000_000, 1_000_000, nbytes=2**32 - 1)  # ImageWidth=ImageLength=1e6
    path.write_bytes(tiff_bytes(tags, b"\0" * 64))
    err, peak = peak_memory(Sequence.create, "TIFF", path)
    assert isinstance(err, ResourceLimitError), err
    assert "huge.tif" in str(err) and "1000000 x 1000000" in str(err)
    assert peak < SMALL
    assert get_reader(str(path)) is None  # napari falls back to another reader
    err, peak = peak_memory(open_source, path)
    assert isinstance(err, ResourceLimitError) and peak < SMALL


def test_uncompressed_page_larger_than_the_file(tmp_path):
    path = tmp_path / "short.tif"
    path.write_bytes(tiff_bytes(image_tags(4000, 4000), b"\0" * 64))  # 16 MB page
    with pytest.raises(FileFormatError, match="short.tif.*4000 x 4000.*corrupt"):
        Sequence.create("TIFF", path)


def test_deflate_bomb_in_a_strip_is_refused(tmp_path):
    bomb = zeros_zlib(32 * 2**20)  # 32 MiB of zeros in 150 kB, for 64 pixels
    path = tmp_path / "bomb.tif"
    path.write_bytes(tiff_bytes(image_tags(8, 8, compression=8, nbytes=len(bomb)), bomb))
    seq = Sequence.create("TIFF", path)  # an 8 x 8 page: nothing to refuse yet
    err, peak = peak_memory(seq.read, 0)
    assert isinstance(err, FileFormatError) and "bomb" in str(err), err
    assert peak < SMALL


_SIZES = 'SizeX="8" SizeY="8" SizeZ="1" SizeC="1" SizeT="3"'


@pytest.mark.parametrize(
    ("order", "sizes", "tiffdata"),
    [
        # 10^12 planes
        ("XYZCT", 'SizeX="8" SizeY="8" SizeZ="1000000" SizeC="1" SizeT="1000000"', ""),
        # planes 10^6 wide
        ("XYZCT", 'SizeX="1000000" SizeY="8" SizeZ="1" SizeC="1" SizeT="1000000"', ""),
        # TiffData plane counts (found by the fuzzer)
        ("XYZCT", _SIZES, 'PlaneCount="1000000000000"'),
        ("XYZCT", _SIZES, 'IFD="0" NumPlanes="10000000000"'),
        # an order repeating Z: its size counts for three axes, 10^12 planes (fuzzer)
        ("ZZZZZ", 'SizeX="8" SizeY="8" SizeZ="10000" SizeC="1" SizeT="3"', 'FirstZ="5"'),
        # numbers as Python's int() reads them (tifffile does): sign, underscores
        ("XYZCT", 'SizeX="8" SizeY="8" SizeZ="1" SizeC="1" SizeT=" +1_000_000_000 "', ""),
    ],
)
def test_ome_metadata_declaring_1e12_pages(tmp_path, order, sizes, tiffdata):
    ome = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
        f'<Pixels ID="Pixels:0" DimensionOrder="{order}" Type="uint16" {sizes}>'
        f'<Channel ID="Channel:0:0"/><TiffData {tiffdata}/></Pixels></Image></OME>'
    )
    path = tmp_path / "ome.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint16), description=ome, metadata=None,
                     photometric="minisblack")  # fmt: skip
    err, peak = peak_memory(Sequence.create, "TIFF", path)  # tifffile: MemoryError
    assert isinstance(err, ResourceLimitError) and "OME" in str(err), err
    assert peak < SMALL


@pytest.mark.parametrize(
    "raw",
    [
        b"II*\x00\x08\x00\x00\x00",  # IFD offset past the end (struct.error in tifffile)
        b"II*\x00\x08\x00\x00\x00\x05\x00" + b"\x00" * 20,  # IFD cut short
        b"MM\x00+\x00\x08\x00\x00" + b"\x00" * 8,  # BigTIFF without an IFD
    ],
)
def test_damaged_tiff_headers(tmp_path, raw):
    path = tmp_path / "bad.tif"
    path.write_bytes(raw)
    with pytest.raises(FileFormatError, match="bad.tif"):
        Sequence.create("TIFF", path)
    assert get_reader(str(path)) is None


def test_damaged_page_in_a_valid_file(tmp_path):
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8),
                     photometric="minisblack", metadata=None, compression="zlib")  # fmt: skip
    seq = Sequence.create("TIFF", path)
    np.testing.assert_array_equal(seq.read(2)[0, 0, :, :, 0], np.arange(128, 192).reshape(8, 8))
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[2].tags["StripByteCounts"]
        assert tag.count == 1 and tag.dtype == 4  # one LONG, stored in the entry
        where = tag.valueoffset
    raw[where : where + 4] = struct.pack("<I", 10**9)  # last page: 1 GB of zlib data
    path.write_bytes(bytes(raw))
    seq = Sequence.create("TIFF", path)  # the first page is fine
    np.testing.assert_array_equal(seq.read(0)[0, 0, :, :, 0], np.arange(64).reshape(8, 8))
    with pytest.raises(FileFormatError, match="page 2 of .*pages.tif.*1000000000 bytes"):
        seq.read(2)


# --------------------------------------------------------------------------- HDF5
def test_hdf5_huge_shape_tiny_data(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("mov", shape=(10, 10**6, 10**6), dtype="u2", chunks=(1, 64, 64))
    assert path.stat().st_size < 2**16
    err, peak = peak_memory(Sequence.create, "HDF5", path, "tyx")
    assert isinstance(err, ResourceLimitError) and "huge.h5" in str(err), err
    assert peak < SMALL
    assert get_reader(str(path)) is None
    with h5py.File(path, "w") as f:  # tiny chunks: a frame would visit 10^6 of them
        f.create_dataset("mov", shape=(10, 1000, 1000), dtype="u1", chunks=(1, 1, 1))
    with pytest.raises(ResourceLimitError, match="chunks"):
        Sequence.create("HDF5", path, "tyx")


def test_hdf5_huge_time_axis_reads_lazily(tmp_path):
    path = tmp_path / "long.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "mov", shape=(10**12, 4, 5), dtype="u2", chunks=(64, 4, 5), fillvalue=7
        )
        ds[3] = 1
    seq = Sequence.create("HDF5", path, "tyx")
    assert seq.shape == (10**12, 1, 4, 5, 1)
    frames = seq.read(np.array([10**12 - 1, 3, 0]))  # one slice per run, not h5py points
    assert frames[:, 0, :, :, 0].tolist() == [[[7] * 5] * 4, [[1] * 5] * 4, [[7] * 5] * 4]
    opened = open_source(path)  # the napari reader: contrast limits from spread frames
    assert opened.layer_data()[0][1]["contrast_limits"][0] <= 7


def write_one(path, data=None, **kwargs):
    with h5py.File(path, "w") as f:
        f.create_dataset("mov", data=data, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"data": np.ones((2, 3, 4), np.complex64)}, "complex64 data, expected numbers"),
        ({"data": np.array([b"ab", b"cd"] * 12).reshape(2, 3, 4)}, "expected numbers"),
        ({"data": np.array([["a"] * 4] * 6, dtype=object).reshape(2, 3, 4),
          "dtype": h5py.string_dtype()}, "expected numbers"),  # fmt: skip
        ({"data": np.zeros((2, 3, 4), [("a", "u1"), ("b", "f4")])}, "expected numbers"),
        ({"shape": (2, 3, 4), "dtype": h5py.ref_dtype}, "expected numbers"),
        ({"shape": (2, 3, 4), "dtype": np.dtype(("u2", (2,)))}, "expected numbers"),
        ({"data": 3.0}, "has 3 axes but the data"),
        ({"data": np.arange(5.0)}, "has 3 axes but the data"),
        ({"data": np.zeros((1,) * 6)}, "has 3 axes but the data"),
        ({"shape": (2, 0, 4), "dtype": "u2"}, "is empty"),
        ({"data": h5py.Empty("f4")}, "is empty"),
    ],
)
def test_hdf5_odd_dtypes_and_shapes(tmp_path, kwargs, error):
    path = tmp_path / "odd.h5"
    write_one(path, **kwargs)
    with pytest.raises(ValueError, match=error) as err:
        Sequence.create("HDF5", path, "tyx")
    assert "odd.h5" in str(err.value)
    assert get_reader(str(path)) is None


def test_hdf5_bool_and_float16_read(tmp_path):
    path = tmp_path / "ok.h5"
    data = np.arange(24).reshape(2, 3, 4) % 3 == 0
    write_one(path, data=data)
    np.testing.assert_array_equal(Sequence.create("HDF5", path, "tyx").read()[:, 0, :, :, 0], data)
    write_one(path, data=data.astype(np.float16))
    seq = Sequence.create("HDF5", path, "tyx")
    assert seq.dtype == np.float16 and seq.read().sum() == data.sum()


def test_hdf5_missing_keys_and_broken_links(tmp_path):
    path = tmp_path / "links.h5"
    with h5py.File(path, "w") as f:
        f["mov"] = np.zeros((2, 3, 4), np.uint8)
        f.create_group("g")
        f["g/self"] = f["g"]  # a group holding itself
        f["dangling"] = h5py.SoftLink("/nowhere")
        f["loop"] = h5py.SoftLink("/loop")
        f["elsewhere"] = h5py.ExternalLink("missing.h5", "/mov")
        f.create_dataset("raw", shape=(2, 3, 4), dtype="u1", external=[("/etc/hostname", 0, 24)])
        f["mov"].dims[0].label = "tt"
    for key, match in [
        ("nope", "no dataset 'nope'.*missing"),
        ("g", "no dataset 'g'.*not a dataset"),
        ("dangling", "no dataset 'dangling'"),
        ("loop", "no dataset 'loop'"),
        ("elsewhere", "no dataset 'elsewhere'"),
        ("raw", "external storage"),
        (None, "2 datasets \\['mov', 'raw'\\]; give key="),
    ]:
        with pytest.raises(FileFormatError, match=match) as err:
            Sequence.create("HDF5", path, "tyx", key=key)
        assert "links.h5" in str(err.value)
    with pytest.raises(FileFormatError, match="no group 'nope'"):
        Sequence.create("HDF5", path, "tyx", group="nope")
    with pytest.raises(FileFormatError, match="no dimension labels"):  # 'tt' is no label
        Sequence.create("HDF5", path, None, key="mov")
    assert Sequence.create("HDF5", path, "tyx", key="mov").shape == (2, 1, 3, 4, 1)
    assert get_reader(str(path)) is not None  # the napari reader skips the broken links


@pytest.mark.parametrize("attr", [np.zeros((2, 2)), np.arange(3), "gcamp", np.zeros(0)])
def test_hdf5_odd_channel_names_are_ignored(tmp_path, attr):
    path = tmp_path / "names.h5"
    with h5py.File(path, "w") as f:
        f["mov"] = np.zeros((2, 3, 4, 2), np.uint8)
        for k, label in enumerate("tyxc"):
            f["mov"].dims[k].label = label
        f["mov"].attrs["channel_names"] = attr
    layers = open_source(path).layer_data()  # names that do not fit: default names
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["names [0]", "names [1]"]


def test_circular_ifd_chain_ends(tmp_path):
    # tifffile's frame iterator followed a circular IFD chain forever (a hang when
    # reading compressed pages of a file whose last IFD points back to an earlier one)
    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8),
                     photometric="minisblack", metadata=None, compression="zlib",
                     description="ImageJ=1.54f\nimages=0\nframes=1000000\n")  # fmt: skip
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        second, last = tif.pages[1].offset, tif.pages[3].offset
    (count,) = struct.unpack("<H", raw[last : last + 2])
    raw[last + 2 + 12 * count : last + 6 + 12 * count] = struct.pack("<I", second)
    path.write_bytes(bytes(raw))
    seq = Sequence.create("TIFF", path)
    assert len(seq) == 4
    np.testing.assert_array_equal(seq.read()[:, 0, :, :, 0].ravel(), np.arange(256))


def test_roi_file_that_is_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "cells.roi"
    os.mkfifo(fifo)
    with pytest.raises(FileFormatError, match="not a regular file"):
        read_imagej_rois(fifo)  # used to block forever waiting for a writer


def test_imagej_tiff_with_huge_frames_is_refused_at_open(tmp_path):
    # 65 planes of 4096 x 4096 in a few MB of zlib: one frame holds more than 2^30
    # values (2 GiB), refused before one is read
    path = tmp_path / "huge.tif"
    zeros = np.zeros((4096, 4096), np.uint8)
    tifffile.imwrite(path, (zeros for _ in range(65)), shape=(65, 4096, 4096),
                     dtype=np.uint8, imagej=True, metadata={"axes": "ZYX"},
                     compression="zlib", compressionargs={"level": 1})  # fmt: skip
    assert path.stat().st_size < 2**23
    err, peak = peak_memory(Sequence.create, "TIFF", path)
    assert isinstance(err, ResourceLimitError) and "huge.tif" in str(err), err
    assert peak < SMALL
