"""Sequence kinds, slicing semantics and bad input (ports SIMA's test_sequence where relevant)."""

from __future__ import annotations

import pickle
import warnings

import h5py
import numpy as np
import pytest
import tifffile

from napari_sima.core import Sequence


def interleave(movie: np.ndarray) -> np.ndarray:
    """(t, z, y, x, c) -> pages ordered channel fastest, then plane, then time."""
    t, z, y, x, c = movie.shape
    return np.ascontiguousarray(movie.transpose(0, 1, 4, 2, 3)).reshape(t * z * c, y, x)


# --------------------------------------------------------------------------- TIFF
def test_tiff_interleaved_contiguous(tmp_path, movie):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, interleave(movie))
    seq = Sequence.create("TIFF", path, num_planes=2, num_channels=3)
    assert seq.shape == movie.shape
    assert len(seq) == 12
    assert seq.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(seq), movie)
    np.testing.assert_array_equal(seq.read(range(3, 7)), movie[3:7])


def test_tiff_pages_with_ifds_between(tmp_path, movie):
    """Pages written one by one (IFD between pages): per-page raw reads."""
    path = tmp_path / "m.tif"
    with tifffile.TiffWriter(path) as tw:
        for page in interleave(movie):
            tw.write(page, contiguous=False)
    seq = Sequence.create("TIFF", path, 2, 3)
    np.testing.assert_array_equal(np.asarray(seq, dtype=np.uint16), movie)


def test_tiff_compressed(tmp_path, movie):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, interleave(movie), compression="zlib")
    seq = Sequence.create("TIFF", path, 2, 3)
    np.testing.assert_array_equal(seq.read(), movie)


def test_tiff_big_endian(tmp_path, movie):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, interleave(movie), byteorder=">")
    seq = Sequence.create("TIFF", path, 2, 3)
    assert seq.dtype == np.dtype("uint16")
    np.testing.assert_array_equal(seq.read(), movie)


def test_tiff_imagej_hyperstack_axes_from_metadata(tmp_path, movie):
    path = tmp_path / "hyper.tif"
    # ImageJ stores TZCYX; our movie is (t, z, y, x, c)
    tifffile.imwrite(path, movie.transpose(0, 1, 4, 2, 3), imagej=True, metadata={"axes": "TZCYX"})
    seq = Sequence.create("TIFF", path)  # no interleaving options needed
    assert seq.shape == movie.shape
    np.testing.assert_array_equal(seq.read(), movie)
    # consistent explicit options are accepted, conflicting ones refused
    assert Sequence.create("TIFF", path, 2, 3).shape == movie.shape
    with pytest.raises(ValueError, match="3 channels"):
        Sequence.create("TIFF", path, 2, 2)


def test_tiff_ome_axes_from_metadata(tmp_path, movie):
    path = tmp_path / "m.ome.tif"
    tifffile.imwrite(path, movie.transpose(0, 4, 1, 2, 3), ome=True, metadata={"axes": "TCZYX"})
    seq = Sequence.create("TIFF", path)
    assert seq.shape == movie.shape
    np.testing.assert_array_equal(seq.read(), movie)


def test_tiff_rgb_samples_become_channels(tmp_path):
    data = np.arange(4 * 5 * 6 * 3, dtype=np.uint8).reshape(4, 5, 6, 3)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    seq = Sequence.create("TIFF", path)
    assert seq.shape == (4, 1, 5, 6, 3)
    np.testing.assert_array_equal(seq.read()[:, 0], data)


def test_tiff_incomplete_last_frame_dropped_with_warning(tmp_path, movie):
    pages = interleave(movie)[:-1]
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, pages)
    with pytest.warns(UserWarning, match="ignored"):
        seq = Sequence.create("TIFF", path, 2, 3)
    assert len(seq) == 11


def test_sima_example_tiff(examples):
    """SIMA's TestSequence setup: example.tif with (2, 2) -> (5, 2, 128, 256, 2)."""
    seq = Sequence.create("TIFF", examples / "example.tif", 2, 2)
    assert seq.shape == (5, 2, 128, 256, 2)
    frames = iter(seq)
    np.testing.assert_array_equal(next(frames), seq._get_frame(0))
    np.testing.assert_array_equal(next(frames), seq._get_frame(1))
    assert next(iter(seq)).dtype == np.float64
    raw = tifffile.imread(examples / "example.tif")
    np.testing.assert_array_equal(seq.read()[4, 1, :, :, 0], raw[4 * 4 + 1 * 2 + 0])


# --------------------------------------------------------------------------- TIFFs
def test_tiffs_multipage_files_transposed_not_reshaped(tmp_path, movie):
    """paths[plane][channel] each one multi-page file: every (t, p, c) lands right."""
    t, z, y, x, c = movie.shape
    paths = []
    for p in range(z):
        row = []
        for ch in range(c):
            f = tmp_path / f"p{p}_c{ch}.tif"
            tifffile.imwrite(f, movie[:, p, :, :, ch])
            row.append(str(f))
        paths.append(row)
    seq = Sequence.create("TIFFs", paths)
    assert seq.shape == movie.shape
    np.testing.assert_array_equal(seq.read(), movie)


def test_tiffs_glob_one_file_per_frame(tmp_path, movie):
    t, z, y, x, c = movie.shape
    for p in range(z):
        for ch in range(c):
            for k in range(t):
                tifffile.imwrite(tmp_path / f"p{p}c{ch}_{k:03d}.tif", movie[k, p, :, :, ch])
    paths = [[str(tmp_path / f"p{p}c{ch}_*.tif") for ch in range(c)] for p in range(z)]
    seq = Sequence.create("TIFFs", paths)
    assert seq.shape == movie.shape
    np.testing.assert_array_equal(seq.read(), movie)
    np.testing.assert_array_equal(seq[5:7, 1, :, :, 2].read(), movie[5:7, 1:2, :, :, 2:3])


def test_sima_example_tiffs(examples):
    g = str(examples / "example-tiffs" / "*.tif")
    seq = Sequence.create("TIFFs", [[g, g], [g, g], [g, g], [g, g]])
    assert seq.shape == (3, 4, 173, 173, 2)
    files = sorted((examples / "example-tiffs").glob("*.tif"))
    np.testing.assert_array_equal(seq.read()[2, 3, :, :, 1], tifffile.imread(files[2]))


def test_tiffs_different_shapes_refused(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    tifffile.imwrite(a, np.zeros((3, 8, 8), np.uint16), photometric="minisblack")
    tifffile.imwrite(b, np.zeros((3, 8, 9), np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match="differ in image shape") as err:
        Sequence.create("TIFFs", [[str(a), str(b)]])
    assert "b.tif" in str(err.value)
    c = tmp_path / "c.tif"
    tifffile.imwrite(c, np.zeros((4, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match="number of frames"):
        Sequence.create("TIFFs", [[str(a)], [str(c)]])


def test_tiffs_bad_nesting_and_missing(tmp_path):
    with pytest.raises(ValueError, match="nested list"):
        Sequence.create("TIFFs", str(tmp_path / "a.tif"))
    with pytest.raises(ValueError, match="nested list"):
        Sequence.create("TIFFs", [str(tmp_path / "a.tif")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        Sequence.create("TIFFs", [[str(tmp_path / "nothing_*.tif")]])


# --------------------------------------------------------------------------- HDF5
@pytest.mark.parametrize("dim_order", ["tzyxc", "yxt", "tyx", "ctzyx", "xyzct", "tyxc"])
def test_hdf5_dim_orders(tmp_path, movie, dim_order):
    present = [a for a in "tzyxc" if a in dim_order]
    data = movie
    # drop axes absent from dim_order (take index 0), then permute to the stored order
    for axis in "zc":
        if axis not in dim_order:
            data = np.take(data, [0], axis="tzyxc".index(axis))
    data = data.reshape([data.shape["tzyxc".index(a)] for a in "tzyxc"])
    stored = data.squeeze(
        axis=tuple(i for i, a in enumerate("tzyxc") if a not in dim_order)
    ).transpose([present.index(a) for a in dim_order])
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("imaging", data=stored)
    seq = Sequence.create("HDF5", path, dim_order)
    assert seq.shape == data.shape
    np.testing.assert_array_equal(seq.read(), data)


def test_hdf5_group_key_and_labels(tmp_path, movie):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("session")
        d = g.create_dataset("movie", data=movie)
        for i, a in enumerate("tzyxc"):
            d.dims[i].label = a
        g.create_dataset("other", data=np.zeros(3))
    with pytest.raises(ValueError, match="give key="):
        Sequence.create("HDF5", path, "tzyxc", group="session")
    seq = Sequence.create("HDF5", path, None, group="session", key="movie")  # labels
    np.testing.assert_array_equal(seq.read(), movie)
    with pytest.raises(ValueError, match="no dataset 'nope'") as err:
        Sequence.create("HDF5", path, "tzyxc", group="session", key="nope")
    assert "m.h5" in str(err.value) and "movie" in str(err.value)
    with pytest.raises(ValueError, match="no group"):
        Sequence.create("HDF5", path, "tzyxc", group="missing", key="movie")


def test_sima_example_h5(examples):
    seq = Sequence.create("HDF5", examples / "example.h5", "yxt")
    assert seq.shape == (20, 1, 128, 256, 1)
    assert np.shape(np.asarray(seq)) == seq.shape
    with h5py.File(examples / "example.h5") as f:
        raw = f["imaging"][...]
    np.testing.assert_array_equal(seq.read()[7, 0, :, :, 0], raw[:, :, 7])
    vol = Sequence.create("HDF5", examples / "example-volume.h5")
    assert vol.shape == (10, 3, 64, 64, 2)


def test_hdf5_dim_order_mismatch(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("imaging", data=np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match="has 4 axes but the data") as err:
        Sequence.create("HDF5", path, "tzyx")
    assert "m.h5" in str(err.value)
    with pytest.raises(ValueError, match="unknown axis letters"):
        Sequence.create("HDF5", path, "tqx")
    with pytest.raises(ValueError, match="repeats"):
        Sequence.create("HDF5", path, "tyy")
    with pytest.raises(ValueError, match="no dimension labels"):
        Sequence.create("HDF5", path)


# --------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("fmt", ["TIFF", "HDF5"])
def test_missing_file(tmp_path, fmt):
    args = ("tyx",) if fmt == "HDF5" else ()
    with pytest.raises(FileNotFoundError, match="nope"):
        Sequence.create(fmt, tmp_path / "nope.dat", *args)


@pytest.mark.parametrize("fmt", ["TIFF", "HDF5"])
def test_empty_file(tmp_path, fmt):
    path = tmp_path / "empty.dat"
    path.write_bytes(b"")
    args = ("tyx",) if fmt == "HDF5" else ()
    with pytest.raises((ValueError, OSError), match="empty") as err:
        Sequence.create(fmt, path, *args)
    assert "empty.dat" in str(err.value)


def test_not_a_tiff(tmp_path):
    path = tmp_path / "text.tif"
    path.write_text("hello, this is not an image\n" * 10)
    with pytest.raises(ValueError, match="not a readable TIFF") as err:
        Sequence.create("TIFF", path)
    assert "text.tif" in str(err.value)


def test_not_an_hdf5(tmp_path, movie):
    path = tmp_path / "movie.h5"
    tifffile.imwrite(path, movie[:, 0, :, :, 0])
    with pytest.raises(OSError, match="not a readable HDF5") as err:
        Sequence.create("HDF5", path, "tyx")
    assert "movie.h5" in str(err.value)


def test_truncated_tiff_read_error(tmp_path, movie):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, interleave(movie))
    seq = Sequence.create("TIFF", path, 2, 3)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(OSError, match="truncated"):
        seq.read(range(len(seq) - 1, len(seq)))


def test_unknown_format():
    with pytest.raises(ValueError, match="Unrecognized sequence format 'AVI'"):
        Sequence.create("AVI", "x.avi")


def test_bad_interleaving_arguments(tmp_path, movie):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, interleave(movie))
    with pytest.raises(ValueError, match="num_planes must be a positive integer"):
        Sequence.create("TIFF", path, 0, 1)
    with pytest.raises(ValueError, match="fewer than one frame"):
        Sequence.create("TIFF", path, 100, 10)


# --------------------------------------------------------------------------- ndarray
def test_ndarray_and_dim_order(movie, tmp_path):
    seq = Sequence.create("ndarray", movie)
    assert seq.shape == movie.shape
    np.testing.assert_array_equal(np.asarray(seq), movie.astype(float))
    tyx = Sequence.create("ndarray", movie[:, 0, :, :, 0], "tyx")
    assert tyx.shape == (12, 1, 9, 11, 1)
    with pytest.raises(ValueError, match="5-D"):
        Sequence.create("ndarray", movie[:, 0])
    np.save(tmp_path / "m.npy", movie)
    from_file = Sequence.create("ndarray", path=tmp_path / "m.npy")
    np.testing.assert_array_equal(from_file.read(), movie)
    with pytest.raises(ValueError, match="exactly one"):
        Sequence.create("ndarray")


def test_sima_doctest_ndarray_ones():
    data = np.ones((10, 3, 16, 16, 2))
    assert np.all(data == np.array(Sequence.create("ndarray", data)))


# --------------------------------------------------------------------------- slicing
def test_slicing_never_drops_axes(movie):
    seq = Sequence.create("ndarray", movie)
    assert seq[0].shape == (1, 2, 9, 11, 3)
    assert seq[:, 0].shape == (12, 1, 9, 11, 3)
    assert seq[3, 1, 2, 4, 0].shape == (1, 1, 1, 1, 1)
    assert seq[-1].read()[0, 0, 0, 0, 0] == movie[-1, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "index",
    [
        (slice(2, 9, 3),),
        (slice(None, None, -1), 1, slice(1, 8, 2), slice(None, None, -2), slice(0, 3, 2)),
        (slice(-5, None), slice(None), 3, slice(2, -2), -1),
        (slice(10, 2, -3), 0, slice(None), 4),
        ([5, 1, 1, 11],),
    ],
)
def test_views_compose_like_numpy(tmp_path, movie, index):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, interleave(movie))
    sources = [Sequence.create("ndarray", movie), Sequence.create("TIFF", path, 2, 3)]
    expected_index = tuple(
        slice(i, i + 1 or None) if isinstance(i, int) else i for i in index
    )
    expected = movie[expected_index[0]][(slice(None),) + expected_index[1:]]
    for seq in sources:
        view = seq[index]
        assert view.shape == expected.shape
        np.testing.assert_array_equal(view.read(), expected)
        # a view of a view is collapsed and still right
        again = view[::-1, :, ::-1]
        np.testing.assert_array_equal(again.read(), expected[::-1, :, ::-1])
        assert type(again).__name__ == "_IndexedSequence"
        assert again.base is seq


def test_bad_indices(movie):
    seq = Sequence.create("ndarray", movie)
    with pytest.raises(IndexError, match="out of range"):
        seq[12]
    with pytest.raises(IndexError, match="axis 'z'"):
        seq[:, 2]
    with pytest.raises(IndexError, match="5 axes"):
        seq[0, 0, 0, 0, 0, 0]
    with pytest.raises(TypeError):
        seq[:, "a"]


def test_iter_blocks_and_len(movie):
    seq = Sequence.create("ndarray", movie)
    blocks = list(seq.iter_blocks(5))
    assert [b.shape[0] for b in blocks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(blocks), movie)
    assert len(list(iter(seq))) == 12


def test_join(movie):
    seq = Sequence.create("ndarray", movie)
    joined = Sequence.join(seq, seq[:, :, :, :, 1])
    assert joined.shape == (12, 2, 9, 11, 4)
    np.testing.assert_array_equal(
        joined[:, :, :, :, 2:].read(), np.concatenate([movie[..., 2:], movie[..., 1:2]], -1)
    )
    with pytest.raises(ValueError, match="share their"):
        Sequence.join(seq, seq[1:])


def test_lazy_channel_reads_only_requested(tmp_path, movie):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, interleave(movie))
    lazy = Sequence.create("TIFF", path, 2, 3).lazy_channel(2)
    assert lazy.shape == (12, 2, 9, 11) and lazy.ndim == 4 and lazy.dtype == np.uint16
    np.testing.assert_array_equal(lazy[4], movie[4, ..., 2])
    np.testing.assert_array_equal(lazy[4, 1, 3:6, ::2], movie[4, 1, 3:6, ::2, 2])
    np.testing.assert_array_equal(lazy[..., 0], movie[..., 0, 2])
    np.testing.assert_array_equal(np.asarray(lazy), movie[..., 2])


def test_sequences_pickle_and_reopen(tmp_path, movie):
    """Sequences travel to worker processes without their open file handles."""
    tpath, hpath = tmp_path / "m.tif", tmp_path / "m.h5"
    tifffile.imwrite(tpath, interleave(movie))
    with h5py.File(hpath, "w") as f:
        f.create_dataset("imaging", data=movie)
    for seq in (Sequence.create("TIFF", tpath, 2, 3), Sequence.create("HDF5", hpath, "tzyxc")):
        seq.read(range(2))  # open the file
        clone = pickle.loads(pickle.dumps(seq[2:5]))
        np.testing.assert_array_equal(clone.read(), movie[2:5])


# --------------------------------------------------------------------------- masks
@pytest.fixture
def tiff_seq(examples):
    return Sequence.create("TIFF", examples / "example.tif", 2, 2)


def _check_masked(seq, masks, expected_nan):
    masked = seq.mask(masks)
    assert masked.shape == (5, 2, 128, 256, 2)
    data = np.asarray(masked)
    assert np.all(np.isnan(data[expected_nan]))
    assert np.all(np.isfinite(data[~expected_nan]))


def test_masked_sequences_like_sima(tiff_seq):
    rng = np.random.default_rng(0)
    mm = np.zeros((5, 2, 128, 256, 2), dtype=bool)
    _check_masked(tiff_seq, [], mm)
    _check_masked(tiff_seq, [(None, None, None, None)], ~mm)
    _check_masked(
        tiff_seq, [(range(5), range(2), np.ones((128, 256), bool), range(2))], ~mm
    )
    _check_masked(tiff_seq, [(range(5), np.ones((2, 128, 256), bool), range(2))], ~mm)
    m = mm.copy()
    m[:, 0] = True
    _check_masked(tiff_seq, [(None, 0, None, None)], m)
    _check_masked(tiff_seq, [(None, [0], None, None)], m)
    m = mm.copy()
    m[3] = True
    _check_masked(tiff_seq, [(3, None, None, None)], m)
    m = mm.copy()
    m[..., 1] = True
    _check_masked(tiff_seq, [(None, None, None, 1)], m)
    fm = rng.random((128, 256)) > 0.5
    m = mm.copy()
    m[:, :, fm, :] = True
    _check_masked(tiff_seq, [(None, None, fm, None)], m)
    f3 = rng.random((2, 128, 256)) > 0.5
    m = mm.copy()
    m[:, f3, :] = True
    _check_masked(tiff_seq, [(None, f3, None)], m)
    sm = rng.random((128, 256)) > 0.3
    m = mm.copy()
    m[:, :, sm, :] = True
    m[2, 1, fm, 0] = True
    _check_masked(tiff_seq, [(None, None, sm, None), (2, 1, fm, 0)], m)


def test_sima_doctest_mask_frame3(examples):
    seq = Sequence.create("HDF5", examples / "example.h5", "yxt")
    masked = seq.mask([(3, None, None)])
    assert [bool(np.all(np.isnan(f))) for f in list(masked)[:5]] == [
        False, False, False, True, False,
    ]


# --------------------------------------------------------------------------- displacements
def test_motion_corrected(tiff_seq):
    rng = np.random.default_rng(5)
    disp = rng.integers(0, 10, (5, 2, 128, 2))
    final = (2, 128 + disp[..., 0].max(), 256 + disp[..., 1].max())
    mc = tiff_seq.apply_displacements(disp, frame_shape=final)
    assert len(mc) == len(tiff_seq) == 5
    assert len(list(mc)) == 5
    assert tiff_seq.apply_displacements(disp).shape == (5,) + final + (2,)
    # row i of plane p goes to row i + dy, columns dx..dx+X-1
    frame = mc._get_frame(1)
    raw = tiff_seq._get_frame(1)
    dy, dx = disp[1, 0, 10]
    rows_hit = [i for i in range(128) if i + disp[1, 0, i, 0] == 10 + dy]
    if rows_hit == [10]:
        np.testing.assert_array_equal(frame[0, 10 + dy, dx : dx + 256], raw[0, 10])
    with pytest.raises(ValueError, match="non-negative"):
        tiff_seq.apply_displacements(rng.integers(-10, 10, (5, 2, 128, 2)))


def test_no_warnings_on_plain_reads(tmp_path, movie):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, interleave(movie))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Sequence.create("TIFF", path, 2, 3).read()


def test_tiffs_list_of_one_file_is_one_frame(tmp_path):
    """A list (or glob) means one file per frame, pages as channels; a bare path, a movie."""
    data = np.arange(2 * 4 * 5, dtype=np.uint16).reshape(2, 4, 5)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    as_list = Sequence.create("TIFFs", [[[str(path)]]])
    assert as_list.shape == (1, 1, 4, 5, 2)
    np.testing.assert_array_equal(as_list.read()[0, 0], data.transpose(1, 2, 0))
    as_movie = Sequence.create("TIFFs", [[str(path)]])
    assert as_movie.shape == (2, 1, 4, 5, 1)
    for seq in (as_list, as_movie):
        from napari_sima.core import ImagingDataset

        ds = ImagingDataset([seq], tmp_path / f"d{seq.shape[0]}.sima")
        again = ImagingDataset.load(ds.savedir).sequences[0]
        assert again.shape == seq.shape
        np.testing.assert_array_equal(again.read(), seq.read())
