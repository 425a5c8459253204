"""Tests of napari_sima.core.export (SIMA's export tests, sections 9.2/9.3, and more)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from numpy.testing import assert_array_equal

from napari_sima.core import ImagingDataset, Sequence
from napari_sima.core import export as ex

DATA = Path("/work/shared/data/sima-examples")
EXAMPLE_TIF = DATA / "example.tif"
EXAMPLE_H5 = DATA / "example.h5"

needs_data = pytest.mark.skipif(
    not (EXAMPLE_TIF.exists() and EXAMPLE_H5.exists()), reason="SIMA example data missing"
)


def read_pages(path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        return [p.asarray() for p in tf.pages]


def reference_fill(data: np.ndarray) -> np.ndarray:
    """Naive in-memory gap filling (the spec's definition), for comparison."""
    out = np.array(data, dtype=float)
    first = np.full(out.shape[1:], np.nan)
    for frame in out:
        m = np.isnan(first)
        first[m] = frame[m]
    recent = np.full(out.shape[1:], np.nan)
    for i, frame in enumerate(out):
        fin = ~np.isnan(frame)
        recent[fin] = frame[fin]
        out[i] = np.where(np.isnan(recent), first, recent)
    return out


@pytest.fixture
def tiff_seq():
    seq = Sequence.create("TIFF", str(EXAMPLE_TIF), 2, 2)
    yield seq
    seq.close()


@pytest.fixture
def h5_seq():
    seq = Sequence.create("HDF5", str(EXAMPLE_H5), "yxt")
    yield seq
    seq.close()


@pytest.fixture
def gappy():
    """A small float sequence with gaps, and its masked (NaN) version.

    Pixel (y=0, x=0) is unobserved in frames 0 and 1 (first seen in frame 2);
    pixel (0, 1) is unobserved in frame 3; pixel (1, 2) is never observed;
    frame 4 is entirely unobserved in channel 1.
    """
    data = np.arange(6 * 1 * 2 * 3 * 2, dtype=float).reshape(6, 1, 2, 3, 2) + 1.0
    base = Sequence.create("ndarray", data)
    m00 = np.zeros((2, 3), bool)
    m00[0, 0] = True
    m01 = np.zeros((2, 3), bool)
    m01[0, 1] = True
    m12 = np.zeros((2, 3), bool)
    m12[1, 2] = True
    seq = base.mask(
        [
            ([0, 1], None, m00, None),
            (3, None, m01, None),
            (None, None, m12, None),
            (4, None, None, 1),
        ]
    )
    masked = data.copy()
    masked[[0, 1], 0, 0, 0, :] = np.nan
    masked[3, 0, 0, 1, :] = np.nan
    masked[:, 0, 1, 2, :] = np.nan
    masked[4, ..., 1] = np.nan
    return seq, masked


def _forbid_asarray(monkeypatch):
    def boom(self, *args, **kwargs):
        raise AssertionError("the whole sequence was loaded with numpy.asarray")

    monkeypatch.setattr(Sequence, "__array__", boom)


# ---------------------------------------------------------------------------------------
# SIMA's tests (spec 9.2)
# ---------------------------------------------------------------------------------------
@needs_data
def test_export_hdf5(tiff_seq, tmp_path):
    path = tmp_path / "test_export.h5"
    tiff_seq.export(
        str(path), fmt="HDF5", fill_gaps=False, channel_names=["Ch1", "Ch2"], compression=None
    )
    with h5py.File(path, "r") as f:
        ds = f["imaging"]
        assert [d.label for d in ds.dims] == ["t", "z", "y", "x", "c"]
        assert [n.decode() for n in ds.attrs["channel_names"]] == ["Ch1", "Ch2"]
        assert ds.dtype == np.float32
        assert ds.chunks == (1, 1, 128, 256, 1)
        assert_array_equal(ds[...], np.array(tiff_seq))


@needs_data
def test_export_compressed_hdf5(tiff_seq, tmp_path):
    path = tmp_path / "test_export_compressed.h5"
    tiff_seq.export(str(path), fmt="HDF5", channel_names=["Ch1", "Ch2"], compression="gzip")
    with h5py.File(path, "r") as f:
        ds = f["imaging"]
        assert ds.compression == "gzip"
        assert [d.label for d in ds.dims] == ["t", "z", "y", "x", "c"]
        assert [n.decode() for n in ds.attrs["channel_names"]] == ["Ch1", "Ch2"]
        assert_array_equal(ds[...], np.array(tiff_seq))


@needs_data
@pytest.mark.parametrize("fmt,dtype", [("TIFF8", "uint8"), ("TIFF16", "uint16")])
def test_export_tiff(tiff_seq, tmp_path, fmt, dtype):
    filenames = [
        [str(tmp_path / f"test_export_{fmt}_plane{p}_channel{c}.tif") for c in range(2)]
        for p in range(2)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TIFF8 wraps values, as in SIMA
        tiff_seq.export(filenames, fmt=fmt, fill_gaps=False)
    data = np.array(tiff_seq)
    for p in range(2):
        for c in range(2):
            pages = read_pages(filenames[p][c])
            assert len(pages) == 5
            for frame in range(5):
                assert pages[frame].dtype == np.dtype(dtype)
                assert_array_equal(pages[frame], data[frame, p, :, :, c].astype(dtype))
            # one contiguous series, readable back as a sequence
            back = Sequence.create("TIFF", filenames[p][c])
            assert back.shape == (5, 1, 128, 256, 1)
            back.close()


@needs_data
def test_export_tiff16_is_exact_roundtrip(tiff_seq, tmp_path):
    filenames = [[str(tmp_path / f"p{p}c{c}.tif") for c in range(2)] for p in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # uint16 data fit: no wrap warning
        tiff_seq.export(filenames, fmt="TIFF16")
    data = tiff_seq.read()
    for p in range(2):
        for c in range(2):
            assert_array_equal(tifffile.imread(filenames[p][c]), data[:, p, :, :, c])


# ---------------------------------------------------------------------------------------
# SIMA's tests (spec 9.3)
# ---------------------------------------------------------------------------------------
@pytest.fixture
def h5_dataset(h5_seq, tmp_path):
    return ImagingDataset([h5_seq, h5_seq], tmp_path / "test_imaging_dataset.sima")


@needs_data
@pytest.mark.parametrize("fmt,dtype", [("TIFF8", "uint8"), ("TIFF16", "uint16")])
def test_export_averages_tiff(h5_dataset, fmt, dtype):
    path = Path(h5_dataset.savedir) / "time_avg_Ch2.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        h5_dataset.export_averages([str(path)], fmt=fmt, scale_values=False)
    pages = read_pages(path)
    assert len(pages) == 1  # one page per plane
    image = pages[0]
    assert image.dtype == np.dtype(dtype)
    assert_array_equal(h5_dataset.time_averages[0, ..., 0].astype(dtype), image)


@needs_data
def test_export_averages_hdf5(h5_dataset):
    path = Path(h5_dataset.savedir) / "time_avg.h5"
    h5_dataset.export_averages(str(path), fmt="HDF5", scale_values=False)
    with h5py.File(path, "r") as f:
        ds = f["time_average"]
        assert ds.dtype == np.uint16
        assert_array_equal(ds[...], h5_dataset.time_averages.astype("uint16"))
        assert_array_equal(
            ds.attrs["channel_names"], np.array([np.bytes_(n) for n in h5_dataset.channel_names])
        )
        assert list(ds.attrs["channel_names"]) == [b"0"]
        assert [d.label for d in ds.dims] == ["z", "y", "x", "c"]


# ---------------------------------------------------------------------------------------
# Gap filling
# ---------------------------------------------------------------------------------------
def test_fill_gaps_semantics(gappy, monkeypatch):
    seq, masked = gappy
    _forbid_asarray(monkeypatch)
    filled = np.stack(list(ex.fill_gaps(seq)))
    assert filled.dtype == np.float64
    data = np.arange(filled.size, dtype=float).reshape(filled.shape) + 1.0
    # observed only from frame 2 on: frames 0, 1 take the frame-2 value
    assert_array_equal(filled[0, 0, 0, 0], data[2, 0, 0, 0])
    assert_array_equal(filled[1, 0, 0, 0], data[2, 0, 0, 0])
    assert_array_equal(filled[2:, 0, 0, 0, 0], data[2:, 0, 0, 0, 0])
    # unobserved in frame 3: forward fill from frame 2
    assert_array_equal(filled[3, 0, 0, 1], data[2, 0, 0, 1])
    # never observed: stays NaN
    assert np.isnan(filled[:, 0, 1, 2]).all()
    # frame 4 channel 1 unobserved: takes frame 3's values (except the holes above)
    assert_array_equal(filled[4, 0, 1, :2, 1], data[3, 0, 1, :2, 1])
    # everything else untouched, and identical to the reference definition
    assert_array_equal(filled, reference_fill(masked))
    assert np.isnan(filled).sum() == 6 * 2


def test_fill_gaps_iterables(gappy):
    _, masked = gappy
    expected = reference_fill(masked)
    frames = list(masked)
    assert_array_equal(np.stack(list(ex.fill_gaps(frames))), expected)
    assert_array_equal(np.stack(list(ex.fill_gaps(iter(frames)))), expected)
    assert_array_equal(np.stack(list(ex.fill_gaps(f for f in frames))), expected)
    assert not np.isnan(frames[0][0, 0, 1, 0]) and np.isnan(frames[0][0, 0, 0, 0])  # not mutated
    assert list(ex.fill_gaps([])) == []


def test_fill_gaps_is_streaming(gappy, monkeypatch):
    """Reads go through the Sequence API, one small block at a time."""
    seq, masked = gappy
    _forbid_asarray(monkeypatch)
    monkeypatch.setattr(ex, "BLOCK_BYTES", 1)  # one frame per block
    reads: list[int] = []
    original = type(seq)._read

    def spy(self, times, region):
        reads.append(len(times))
        return original(self, times, region)

    monkeypatch.setattr(type(seq), "_read", spy)
    gen = ex.fill_gaps(seq)
    first = next(gen)
    # pixel (1, 2) is never observed, so pass 1 scans every frame (6 reads) before the
    # first filled frame comes out of pass 2
    assert reads == [1] * 7
    rest = list(gen)
    assert max(reads) == 1
    assert_array_equal(np.stack([first, *rest]), reference_fill(masked))


def test_fill_gaps_first_pass_stops_early(monkeypatch):
    data = np.ones((10, 1, 2, 2, 1))
    seq = Sequence.create("ndarray", data).mask([(0, None, None, None)])  # frame 0 unobserved
    monkeypatch.setattr(ex, "BLOCK_BYTES", 1)
    reads: list[int] = []
    original = type(seq)._read

    def spy(self, times, region):
        reads.append(times.start)
        return original(self, times, region)

    monkeypatch.setattr(type(seq), "_read", spy)
    out = np.stack(list(ex.fill_gaps(seq)))
    assert_array_equal(out, np.ones_like(data))
    assert reads == [0, 1] + list(range(10))  # pass 1 stopped after frame 1


def test_export_fill_gaps_tiff_and_hdf5(gappy, tmp_path):
    seq, masked = gappy
    filled = reference_fill(masked)
    seq.export(str(tmp_path / "f.h5"), fmt="HDF5", fill_gaps=True)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert_array_equal(f["imaging"][...], filled.astype(np.float32))
    seq.export(str(tmp_path / "nf.h5"), fmt="HDF5")  # default: no filling, NaN kept
    with h5py.File(tmp_path / "nf.h5", "r") as f:
        assert_array_equal(f["imaging"][...], masked.astype(np.float32))
    names = [[str(tmp_path / f"c{c}.tif") for c in range(2)]]
    seq.export(names, fmt="TIFF16", fill_gaps=True)
    for c in range(2):
        expected = np.nan_to_num(filled[:, 0, :, :, c], nan=0.0).astype("uint16")
        assert_array_equal(tifffile.imread(names[0][c]), expected)
    seq.export(names, fmt="TIFF16", fill_gaps=False)  # NaN written as 0
    for c in range(2):
        expected = np.nan_to_num(masked[:, 0, :, :, c], nan=0.0).astype("uint16")
        assert_array_equal(tifffile.imread(names[0][c]), expected)


# ---------------------------------------------------------------------------------------
# Values: scaling and casting
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,bits", [("TIFF8", 8), ("TIFF16", 16)])
def test_scale_values_tiff(fmt, bits, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 5000, (4, 2, 3, 5, 2))
    data[1, 0, 0, 0, 0] = np.nan
    seq = Sequence.create("ndarray", data)
    names = [[str(tmp_path / f"p{p}c{c}.tif") for c in range(2)] for p in range(2)]
    seq.export(names, fmt=fmt, scale_values=True)
    for c in range(2):
        factor = (2**bits - 1) / np.nanmax(data[..., c])
        for p in range(2):
            expected = np.nan_to_num(data[:, p, :, :, c] * factor, nan=0.0).astype(f"uint{bits}")
            got = tifffile.imread(names[p][c])
            assert_array_equal(got, expected)
            assert got.dtype == np.dtype(f"uint{bits}")
        # the maximum maps to 2**bits - 1 up to rounding, then the cast truncates
        assert max(tifffile.imread(names[p][c]).max() for p in range(2)) >= 2**bits - 2


def test_scale_values_hdf5(tmp_path):
    data = np.arange(2 * 1 * 3 * 4 * 2, dtype=float).reshape(2, 1, 3, 4, 2)
    data[0, 0, 0, 0, 1] = np.nan
    seq = Sequence.create("ndarray", data)
    seq.export(str(tmp_path / "s.h5"), fmt="HDF5", scale_values=True)
    factor = (2.0**32 - 1) / np.nanmax(data, axis=(0, 1, 2, 3))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert_array_equal(f["imaging"][...], (data * factor).astype(np.float32))


def test_scale_values_zero_channel_warns(tmp_path):
    data = np.zeros((2, 1, 2, 2, 1))
    seq = Sequence.create("ndarray", data)
    with pytest.warns(UserWarning, match="cannot be scaled"):
        seq.export([[str(tmp_path / "z.tif")]], fmt="TIFF8", scale_values=True)
    assert_array_equal(tifffile.imread(tmp_path / "z.tif"), np.zeros((2, 2, 2), np.uint8))


def test_plain_cast_wraps_like_numpy_and_warns(tmp_path):
    values = np.array([0.0, 1.9, 255.0, 300.0, 70000.0, 12.5]).reshape(1, 1, 1, 6, 1)
    seq = Sequence.create("ndarray", values)
    with pytest.warns(UserWarning, match=r"2 value\(s\).*wrapped") as record:
        seq.export([[str(tmp_path / "w.tif")]], fmt="TIFF8")
    assert record[0].filename == __file__  # attributed to the caller
    expected = values[0, 0, :, :, 0].astype("uint8")  # SIMA's reference: plain cast
    got = tifffile.imread(tmp_path / "w.tif")
    assert_array_equal(got, expected)
    assert got.tolist() == [[0, 1, 255, 44, 112, 12]]


# ---------------------------------------------------------------------------------------
# Layout: interlacing, parents, BigTIFF, streaming
# ---------------------------------------------------------------------------------------
def test_interlaced_page_order(tmp_path):
    T, Z, C = 3, 2, 2
    data = np.zeros((T, Z, 2, 2, C))
    for t in range(T):
        for z in range(Z):
            for c in range(C):
                data[t, z, :, :, c] = 100 * c + 10 * t + z
    seq = Sequence.create("ndarray", data)
    names = [str(tmp_path / f"ch{c}.tif") for c in range(C)]
    seq.export(names, fmt="TIFF16", interlace=True)
    for c in range(C):
        pages = read_pages(names[c])
        assert len(pages) == T * Z
        order = [int(p[0, 0]) for p in pages]
        assert order == [100 * c + 10 * t + z for t in range(T) for z in range(Z)]


def test_parent_directories_created(tmp_path):
    seq = Sequence.create("ndarray", np.ones((2, 1, 2, 2, 1)))
    target = tmp_path / "a" / "b" / "movie.tif"
    seq.export([[str(target)]])
    assert target.exists()
    h5 = tmp_path / "c" / "d" / "movie.h5"
    seq.export(h5, fmt="HDF5")  # path objects accepted
    assert h5.exists()


def test_no_temporary_files_left_and_normal_permissions(tmp_path):
    seq = Sequence.create("ndarray", np.ones((2, 1, 2, 2, 1)))
    seq.export([[str(tmp_path / "m.tif")]])
    seq.export(str(tmp_path / "m.h5"), fmt="HDF5")
    assert sorted(os.listdir(tmp_path)) == ["m.h5", "m.tif"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "m.tif").st_mode & 0o777 == 0o666 & ~umask


def test_bigtiff_when_large(tmp_path, monkeypatch):
    seq = Sequence.create("ndarray", np.ones((3, 1, 4, 4, 1)))
    seq.export([[str(tmp_path / "small.tif")]])
    with tifffile.TiffFile(tmp_path / "small.tif") as tf:
        assert not tf.is_bigtiff
    monkeypatch.setattr(ex, "_BIGTIFF_LIMIT", 10)
    seq.export([[str(tmp_path / "big.tif")]])
    with tifffile.TiffFile(tmp_path / "big.tif") as tf:
        assert tf.is_bigtiff
        assert len(tf.pages) == 3
        assert len(tf.series) == 1


@pytest.mark.parametrize("fmt", ["TIFF16", "HDF5"])
def test_export_streams_blocks(fmt, tmp_path, monkeypatch):
    data = np.random.default_rng(1).uniform(0, 100, (7, 2, 3, 4, 2))
    seq = Sequence.create("ndarray", data)
    _forbid_asarray(monkeypatch)
    monkeypatch.setattr(ex, "BLOCK_BYTES", 2 * data[0].nbytes)  # two frames per block
    reads: list[int] = []
    original = type(seq)._read

    def spy(self, times, region):
        reads.append(len(times))
        return original(self, times, region)

    monkeypatch.setattr(type(seq), "_read", spy)
    if fmt == "HDF5":
        seq.export(str(tmp_path / "s.h5"), fmt=fmt, fill_gaps=True, scale_values=True)
    else:
        names = [[str(tmp_path / f"p{p}c{c}.tif") for c in range(2)] for p in range(2)]
        seq.export(names, fmt=fmt, fill_gaps=True, scale_values=True)
    assert reads and max(reads) <= 2


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
@pytest.fixture
def small_seq():
    return Sequence.create("ndarray", np.ones((2, 2, 3, 3, 2)))


def test_bad_format(small_seq, tmp_path):
    with pytest.raises(ValueError, match="'PNG'.*'TIFF8', 'TIFF16', 'HDF5'"):
        small_seq.export(str(tmp_path / "x.png"), fmt="PNG")
    ds = ImagingDataset([small_seq], None)
    with pytest.raises(ValueError, match="'tiff16'"):
        ds.export_frames([[[str(tmp_path / "a")]]], fmt="tiff16")
    with pytest.raises(ValueError, match="'JPEG'"):
        ds.export_averages([str(tmp_path / "a")], fmt="JPEG")


def test_bad_compression(small_seq, tmp_path):
    with pytest.raises(ValueError, match="'zip'.*'gzip', 'lzf', 'szip'"):
        small_seq.export(str(tmp_path / "x.h5"), fmt="HDF5", compression="zip")
    with pytest.raises(ValueError, match="'bz2'"):
        ImagingDataset([small_seq], None).export_frames(
            [str(tmp_path / "x.h5")], fmt="HDF5", compression="bz2"
        )
    assert not (tmp_path / "x.h5").exists()


def test_lzf_compression(small_seq, tmp_path):
    small_seq.export(str(tmp_path / "x.h5"), fmt="HDF5", compression="lzf")
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert f["imaging"].compression == "lzf"


def test_tiff_compression_ignored_with_warning(small_seq, tmp_path):
    names = [[str(tmp_path / f"p{p}c{c}.tif") for c in range(2)] for p in range(2)]
    with pytest.warns(UserWarning, match="HDF5 only"):
        small_seq.export(names, compression="gzip")
    assert (tmp_path / "p1c1.tif").exists()


def test_wrong_nesting_is_type_error(small_seq, tmp_path):
    flat = [str(tmp_path / f"{i}.tif") for i in range(4)]
    with pytest.raises(TypeError, match=r"filenames\[plane\]\[channel\].*depth 1"):
        small_seq.export(flat)
    with pytest.raises(TypeError, match="depth 0"):
        small_seq.export(str(tmp_path / "one.tif"))
    with pytest.raises(TypeError, match="ragged"):
        small_seq.export([[flat[0], flat[1]], [flat[2]]])
    with pytest.raises(TypeError, match="filenames\\[channel\\].*depth 2"):
        small_seq.export([flat[:2], flat[2:]], interlace=True)
    with pytest.raises(TypeError, match="single file name"):
        small_seq.export([str(tmp_path / "x.h5")], fmt="HDF5")
    with pytest.raises(TypeError, match=r"filenames\[0\]\[1\]"):
        small_seq.export([[flat[0], 3], [flat[2], flat[3]]])
    assert os.listdir(tmp_path) == []


def test_wrong_counts_are_value_errors(small_seq, tmp_path):
    n = str(tmp_path / "n")
    with pytest.raises(ValueError, match="2 plane.*2 channel.*got 1 list"):
        small_seq.export([[n + "a", n + "b"]])
    with pytest.raises(ValueError, match="got 2 list.*of 1 name"):
        small_seq.export([[n + "a"], [n + "b"]])
    with pytest.raises(ValueError, match="2 channel.*3 name"):
        small_seq.export([n + "a", n + "b", n + "c"], interlace=True)
    with pytest.raises(ValueError, match="more than once"):
        small_seq.export([[n + "a", n + "b"], [n + "a", n + "c"]])
    with pytest.raises(ValueError, match="3 channel names"):
        small_seq.export(n + ".h5", fmt="HDF5", channel_names=["a", "b", "c"])
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite_source(tmp_path):
    src = tmp_path / "src.tif"
    tifffile.imwrite(src, np.ones((3, 5, 6), np.uint16), photometric="minisblack")
    seq = Sequence.create("TIFF", str(src))
    with pytest.raises(ValueError, match="read from"):
        seq.export([[str(src)]])
    seq.close()


def test_export_frames_errors(small_seq, tmp_path):
    ds = ImagingDataset([small_seq, small_seq], None)
    one = str(tmp_path / "x")
    with pytest.raises(TypeError, match=r"\[sequence\]\[plane\]\[channel\].*depth 2"):
        ds.export_frames([[one, one], [one, one]])
    with pytest.raises(TypeError, match=r"\[sequence\]\[channel\].*depth 3"):
        ds.export_frames([[[one]]], interlace=True)
    with pytest.raises(TypeError, match="one HDF5 file name per sequence.*depth 0"):
        ds.export_frames(one + ".h5", fmt="HDF5")
    with pytest.raises(ValueError, match="2 sequence.*for 1"):
        ds.export_frames([one + ".h5"], fmt="HDF5")
    with pytest.raises(ValueError, match="more than once"):
        ds.export_frames([one + ".h5", one + ".h5"], fmt="HDF5")
    assert os.listdir(tmp_path) == []


def test_export_averages_errors(small_seq, tmp_path):
    ds = ImagingDataset([small_seq], None)
    with pytest.raises(ValueError, match="'median'.*'average', 'std', 'kurtosis'"):
        ds.export_averages([str(tmp_path / "a.tif")] * 2, projection_type="median")
    with pytest.raises(ValueError, match="one file name"):
        ds.export_averages([str(tmp_path / "a.h5")], fmt="HDF5")
    with pytest.raises(ValueError, match="2 channel.*1 name"):
        ds.export_averages([str(tmp_path / "a.tif")])
    with pytest.raises(ValueError, match="single name"):
        ds.export_averages(str(tmp_path / "a.tif"))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Atomicity
# ---------------------------------------------------------------------------------------
@pytest.fixture
def truncated_seq(tmp_path):
    """A 20-frame TIFF sequence whose file is truncated after it was opened."""
    src = tmp_path / "src" / "movie.tif"
    src.parent.mkdir()
    tifffile.imwrite(src, np.arange(20 * 16 * 16, dtype=np.uint16).reshape(20, 16, 16))
    seq = Sequence.create("TIFF", str(src))
    assert seq.shape == (20, 1, 16, 16, 1)
    seq.read(range(0, 3))  # frames can be read before the damage
    with open(src, "r+b") as fh:
        fh.truncate(os.path.getsize(src) - 12 * 16 * 16 * 2)  # keep ~8 frames
    yield seq
    seq.close()


@pytest.mark.parametrize("fmt", ["TIFF16", "TIFF8", "HDF5"])
def test_failed_export_leaves_no_file(truncated_seq, tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(ex, "BLOCK_BYTES", 1)  # one frame at a time: fail midway
    out = tmp_path / "out"
    if fmt == "HDF5":
        target, names = out / "movie.h5", str(out / "movie.h5")
    else:
        target = out / "movie.tif"
        names = [[str(target)]]
    with pytest.raises(OSError, match="truncated|movie.tif"):
        truncated_seq.export(names, fmt=fmt)
    assert os.listdir(out) == []  # neither the final file nor a temporary one


def test_failed_export_keeps_existing_file(truncated_seq, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "BLOCK_BYTES", 1)
    target = tmp_path / "out.tif"
    target.write_bytes(b"previous content")
    with pytest.raises(OSError):
        truncated_seq.export([[str(target)]])
    assert target.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["out.tif", "src"]


def test_failed_multi_file_export_commits_nothing(tmp_path, monkeypatch):
    """With several (plane, channel) files, none appears when reading fails."""
    data = np.ones((6, 2, 4, 4, 1))
    base = Sequence.create("ndarray", data)
    monkeypatch.setattr(ex, "BLOCK_BYTES", 1)
    original = type(base)._read

    def failing(self, times, region):
        if times.start >= 3:
            raise OSError("simulated read failure at frame 3")
        return original(self, times, region)

    monkeypatch.setattr(type(base), "_read", failing)
    names = [[str(tmp_path / f"p{p}.tif")] for p in range(2)]
    with pytest.raises(OSError, match="frame 3"):
        base.export(names)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Dataset exports
# ---------------------------------------------------------------------------------------
def test_export_frames_two_sequences(gappy, tmp_path):
    seq, masked = gappy
    ds = ImagingDataset([seq, seq], None, channel_names=["red", "green"])
    names = [
        [[str(tmp_path / f"s{s}" / f"p0c{c}.tif") for c in range(2)]] for s in range(2)
    ]
    ds.export_frames(names)  # fill_gaps=True by default
    expected = np.nan_to_num(reference_fill(masked), nan=0.0)
    for s in range(2):
        for c in range(2):
            assert_array_equal(
                tifffile.imread(names[s][0][c]), expected[:, 0, :, :, c].astype("uint16")
            )
    h5names = [str(tmp_path / f"s{s}.h5") for s in range(2)]
    ds.export_frames(h5names, fmt="HDF5", fill_gaps=False, compression="gzip")
    for s in range(2):
        with h5py.File(h5names[s], "r") as f:
            assert [n.decode() for n in f["imaging"].attrs["channel_names"]] == ["red", "green"]
            assert_array_equal(f["imaging"][...], masked.astype(np.float32))
    inames = [[str(tmp_path / f"i{s}c{c}.tif") for c in range(2)] for s in range(2)]
    ds.export_frames(inames, interlace=True)
    for s in range(2):
        assert len(read_pages(inames[s][1])) == 6


def test_export_averages_scaled_and_projections(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.uniform(1, 50, (8, 2, 3, 4, 2))
    seq = Sequence.create("ndarray", data).mask([(None, None, np.eye(3, 4, dtype=bool), 1)])
    ds = ImagingDataset([seq], None, channel_names=["a", "b"])
    names = [str(tmp_path / f"avg{c}.tif") for c in range(2)]
    ds.export_averages(names)  # TIFF16, scaled by default
    avg = ds.time_averages
    assert np.isnan(avg[0, 0, 0, 1])
    for c in range(2):
        a = avg[..., c]
        expected = np.nan_to_num(65535 * a / np.nanmax(a), nan=0.0).astype("uint16")
        image = tifffile.imread(names[c])
        assert image.shape == (2, 3, 4)  # one page per plane
        assert_array_equal(image, expected)
    ds.export_averages(names, fmt="TIFF8")
    for c in range(2):
        a = avg[..., c]
        expected = np.nan_to_num(255 * a / np.nanmax(a), nan=0.0).astype("uint8")
        assert_array_equal(tifffile.imread(names[c]), expected)
    for kind, attr in [("average", "time_averages"), ("std", "time_std"),
                       ("kurtosis", "time_kurtosis")]:
        path = tmp_path / f"{kind}.h5"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # negative kurtosis wraps
            ds.export_averages(str(path), fmt="HDF5", projection_type=kind)
        a = getattr(ds, attr)
        expected = np.nan_to_num(65535 * a / np.nanmax(a), nan=0.0).astype("uint16")
        with h5py.File(path, "r") as f:
            assert list(f) == [f"time_{kind}"]
            ds_h5 = f[f"time_{kind}"]
            assert_array_equal(ds_h5[...], expected)
            assert list(ds_h5.attrs["channel_names"]) == [b"a", b"b"]
            assert [d.label for d in ds_h5.dims] == ["z", "y", "x", "c"]
