"""ImagingDataset: construction, folder format, round trips, projections, slicing, channels."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import h5py
import numpy as np
import pytest
import tifffile

from napari_sima.core import ImagingDataset, Sequence, resolve_channel
from napari_sima.core.dataset import DATASET_FILE, PROJECTIONS_FILE


def _tiff_movie(tmp_path, movie, name="m.tif"):
    t, z, y, x, c = movie.shape
    pages = np.ascontiguousarray(movie.transpose(0, 1, 4, 2, 3)).reshape(-1, y, x)
    path = tmp_path / name
    tifffile.imwrite(path, pages)
    return path


def _reference_moments(data: np.ndarray):
    """Two-pass numpy/scipy reference over axis 0, NaN ignored, float64."""
    from scipy import stats

    x = data.astype(np.float64)
    with warnings.catch_warnings():  # never-observed pixels: NaN is the expected answer
        warnings.simplefilter("ignore")
        mean = np.nanmean(x, axis=0)
        std = np.nanstd(x, axis=0)
        kurt = stats.kurtosis(x, axis=0, fisher=True, bias=True, nan_policy="omit")
    return mean, std, np.asarray(kurt)


# --------------------------------------------------------------------------- construction
def test_sima_imaging_dataset_3d(tmp_path, examples):
    seq = Sequence.create("HDF5", examples / "example.h5", "yxt")
    ds = ImagingDataset([seq, seq], tmp_path / "test_imaging_dataset_3d.sima")
    assert (ds.num_sequences, ds.num_frames) + ds.frame_shape == (2, 40, 1, 128, 256, 1)
    assert ds.channel_names == ["0"]
    assert len(ds.ROIs) == 0


def test_savedir_suffix_and_existing(tmp_path, movie):
    seq = Sequence.create("ndarray", movie)
    ds = ImagingDataset([seq], tmp_path / "plain")
    assert ds.savedir == str(tmp_path / "plain.sima")
    assert (tmp_path / "plain.sima" / DATASET_FILE).is_file()
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        ImagingDataset([seq], tmp_path / "plain.sima")
    (tmp_path / "busy.sima").mkdir()
    (tmp_path / "busy.sima" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        ImagingDataset([seq], tmp_path / "busy.sima")
    (tmp_path / "empty.sima").mkdir()
    ImagingDataset([seq], tmp_path / "empty.sima")  # an empty folder is fine


def test_bad_constructor_input(movie):
    seq = Sequence.create("ndarray", movie)
    with pytest.raises(TypeError, match="list of Sequence"):
        ImagingDataset(seq, None)
    with pytest.raises(TypeError, match=r"sequences\[1\]"):
        ImagingDataset([seq, movie], None)
    with pytest.raises(ValueError, match="share their frame shape"):
        ImagingDataset([seq, seq[:, 0]], None)
    with pytest.raises(ValueError, match="2 channel names"):
        ImagingDataset([seq], None, channel_names=["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        ImagingDataset([seq], None, channel_names=["a", "a", "b"])


# --------------------------------------------------------------------------- channels
def test_channels_by_index_or_name(movie):
    ds = ImagingDataset([Sequence.create("ndarray", movie)], None, channel_names=["r", "g", "b"])
    assert ds.resolve_channel("g") == 1
    assert ds.resolve_channel(np.int64(2)) == 2
    assert ds.resolve_channel(np.uint8(0)) == 0
    assert ds.resolve_channel(-1) == 2
    with pytest.raises(ValueError, match="no channel named 'x'") as err:
        ds.resolve_channel("x")
    assert "'r'" in str(err.value) and "'b'" in str(err.value)
    with pytest.raises(ValueError, match="out of range"):
        ds.resolve_channel(3)
    with pytest.raises(ValueError, match="index or a name"):
        resolve_channel(1.5, ["a", "b"])
    with pytest.raises(ValueError, match="index or a name"):
        resolve_channel(True, ["a", "b"])


# --------------------------------------------------------------------------- slicing
def test_dataset_slicing(movie):
    seq = Sequence.create("ndarray", movie)
    ds = ImagingDataset([seq, seq[2:]], None, channel_names=["r", "g", "b"])
    assert ds[0].num_sequences == 1
    assert ds[:, 0].num_frames == 2
    assert ds[:, 0].frame_shape == ds.frame_shape
    assert ds[0:2].num_sequences == 2
    assert ds[[1]].num_frames == 10
    sub = ds[:, 3:5, :, 2:6, :, 1:]
    assert sub.frame_shape == (2, 4, 11, 2)
    assert sub.channel_names == ["g", "b"]
    assert ds[:, :, :, :, :, -1].channel_names == ["b"]
    assert sub.savedir is None
    np.testing.assert_array_equal(sub.sequences[1].read(), movie[5:7, :, 2:6, :, 1:])
    assert [s.shape[0] for s in ds] == [12, 10]
    with pytest.raises(IndexError):
        ds[2]


def test_nested_iteration(examples):
    """SIMA doctest: dataset -> sequence -> frame -> plane -> row -> column -> channel."""
    ds = ImagingDataset([Sequence.create("HDF5", examples / "example.h5", "yxt")], None)
    n = 0
    for seq in ds:
        for frame in seq:
            for plane in frame:
                for row in plane[:1]:
                    for column in row[:2]:
                        for value in column:
                            n += 1
                            assert np.isfinite(value)
    assert n == 20 * 2


# --------------------------------------------------------------------------- save / load
def test_round_trip_every_kind(tmp_path, movie):
    tiff = _tiff_movie(tmp_path, movie)
    h5 = tmp_path / "m.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("data/imaging", data=movie.transpose(2, 3, 0, 1, 4))  # yxtzc
    tiffs_grid = []
    for p in range(2):
        row = []
        for c in range(3):
            f = tmp_path / f"p{p}c{c}.tif"
            tifffile.imwrite(f, movie[:, p, :, :, c])
            row.append(str(f))
        tiffs_grid.append(row)
    seqs = [
        Sequence.create("TIFF", tiff, 2, 3),
        Sequence.create("HDF5", h5, "yxtzc", group="data", key="imaging"),
        Sequence.create("TIFFs", tiffs_grid),
        Sequence.create("ndarray", movie),
        Sequence.create("TIFF", tiff, 2, 3)[1:9:2, :, 2:, ::-1, [0, 2][0]],
        Sequence.join(
            Sequence.create("ndarray", movie[..., :1]), Sequence.create("ndarray", movie[..., 1:])
        ),
    ]
    # the view selects a single channel; join channel dims so all share frame shape
    seqs[4] = Sequence.join(seqs[4], seqs[4], seqs[4])
    shapes = {s.frame_shape for s in seqs[:4]}
    assert shapes == {movie.shape[1:]}
    ds = ImagingDataset(seqs[:4] + [seqs[5]], tmp_path / "all.sima", channel_names=["a", "b", "c"])
    views = ImagingDataset([seqs[4]], tmp_path / "views.sima")
    assert list((tmp_path / "all.sima").glob("seq_*.npy"))
    for original, folder in ((ds, "all.sima"), (views, "views.sima")):
        loaded = ImagingDataset.load(tmp_path / folder)
        assert loaded.num_sequences == original.num_sequences
        assert loaded.frame_shape == original.frame_shape
        assert loaded.num_frames == original.num_frames
        assert loaded.channel_names == original.channel_names
        for a, b in zip(original.sequences, loaded.sequences):
            np.testing.assert_array_equal(a.read(), b.read())
    meta = json.loads((tmp_path / "all.sima" / DATASET_FILE).read_text())
    assert meta["format_version"] == 1
    assert meta["sequences"][0]["relpath"] == "../m.tif"
    assert not list((tmp_path / "all.sima").glob("*.pkl"))


def test_folder_moved_with_movies_still_loads(tmp_path, movie):
    work = tmp_path / "lab"
    work.mkdir()
    tiff = _tiff_movie(work, movie)
    ImagingDataset([Sequence.create("TIFF", tiff, 2, 3)], work / "exp.sima")
    moved = tmp_path / "elsewhere"
    shutil.move(str(work), str(moved))
    ds = ImagingDataset.load(moved / "exp.sima")
    np.testing.assert_array_equal(ds.sequences[0].read(), movie)


def test_moved_movie_gives_clear_error(tmp_path, movie):
    tiff = _tiff_movie(tmp_path, movie)
    ImagingDataset([Sequence.create("TIFF", tiff, 2, 3)], tmp_path / "exp.sima")
    os.rename(tiff, tmp_path / "renamed.tif")
    ds = ImagingDataset.load(tmp_path / "exp.sima")
    # metadata is available without the movie
    assert ds.num_frames == 12 and ds.frame_shape == (2, 9, 11, 3)
    with pytest.raises(FileNotFoundError, match="was not found") as err:
        ds.sequences
    assert str(tiff) in str(err.value)


def test_changed_movie_detected(tmp_path, movie):
    tiff = _tiff_movie(tmp_path, movie)
    ImagingDataset([Sequence.create("TIFF", tiff, 2, 3)], tmp_path / "exp.sima")
    _tiff_movie(tmp_path, movie[:6])
    with pytest.raises(ValueError, match="has changed"):
        ImagingDataset.load(tmp_path / "exp.sima").sequences


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset folder"):
        ImagingDataset.load(tmp_path / "missing.sima")
    (tmp_path / "empty.sima").mkdir()
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        ImagingDataset.load(tmp_path / "empty.sima")
    bad = tmp_path / "bad.sima"
    bad.mkdir()
    (bad / DATASET_FILE).write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON") as err:
        ImagingDataset.load(bad)
    assert "bad.sima" in str(err.value)
    (bad / DATASET_FILE).write_text(json.dumps({"format": "napari-sima dataset", "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        ImagingDataset.load(bad)
    (bad / DATASET_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a napari-sima dataset"):
        ImagingDataset.load(bad)
    f = tmp_path / "file.sima"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        ImagingDataset.load(f)


def test_save_elsewhere_and_read_only(tmp_path, movie):
    tiff = _tiff_movie(tmp_path, movie)
    ds = ImagingDataset([Sequence.create("TIFF", tiff, 2, 3)], tmp_path / "a.sima")
    ds.compute_projections()
    ds.save(tmp_path / "b")
    assert ds.savedir == str(tmp_path / "b.sima")
    assert (tmp_path / "b.sima" / PROJECTIONS_FILE).exists()
    loaded = ImagingDataset.load(tmp_path / "b.sima")
    np.testing.assert_array_equal(loaded.time_averages, ds.time_averages)
    ds._read_only = True
    with pytest.raises(PermissionError, match="read-only"):
        ds.save()
    with pytest.raises(ValueError, match="no folder"):
        ImagingDataset([Sequence.create("ndarray", movie)], None).save()


def test_channel_names_saved(tmp_path, movie):
    ds = ImagingDataset([Sequence.create("ndarray", movie)], tmp_path / "c.sima")
    ds.channel_names = ["x", "y", "z"]
    assert ImagingDataset.load(tmp_path / "c.sima").channel_names == ["x", "y", "z"]
    with pytest.raises(ValueError, match="2 channel names"):
        ds.channel_names = ["x", "y"]


def test_atomic_save_leaves_no_temp_files(tmp_path, movie):
    ds = ImagingDataset([Sequence.create("ndarray", movie)], tmp_path / "d.sima")
    for _ in range(3):
        ds.save()
    assert not [p for p in os.listdir(tmp_path / "d.sima") if p.endswith(".tmp")]


# --------------------------------------------------------------------------- projections
def test_projections_match_numpy(tmp_path):
    rng = np.random.default_rng(7)
    # uint16 with a large offset: naive power sums would lose precision here
    movie = (60000 + rng.normal(0, 5, size=(150, 2, 6, 7, 2))).astype(np.uint16)
    tiff = _tiff_movie(tmp_path, movie)
    seq = Sequence.create("TIFF", tiff, 2, 2)
    ds = ImagingDataset([seq, seq[:70]], tmp_path / "p.sima")
    everything = np.concatenate([movie, movie[:70]])
    mean, std, kurt = _reference_moments(everything)
    np.testing.assert_allclose(ds.time_averages, mean, rtol=1e-9)
    np.testing.assert_allclose(ds.time_std, std, rtol=1e-9)
    np.testing.assert_allclose(ds.time_kurtosis, kurt, rtol=1e-9)
    assert ds.time_averages.shape == ds.frame_shape
    # cached in the folder and reused after reloading
    assert (tmp_path / "p.sima" / PROJECTIONS_FILE).exists()
    again = ImagingDataset.load(tmp_path / "p.sima")
    gen = again.iter_projections()
    assert next(gen) == (220, 220)  # served from the cache at once
    np.testing.assert_array_equal(again.time_std, ds.time_std)


def test_projections_ignore_nan_and_backends_agree():
    rng = np.random.default_rng(3)
    movie = rng.normal(100, 10, size=(40, 1, 5, 6, 1))
    movie[5] = np.nan
    movie[:, 0, 1, 1, 0] = np.nan  # never observed
    movie[::3, 0, 2, 2, 0] = np.nan
    ds = ImagingDataset([Sequence.create("ndarray", movie)], None)
    numba = ds.compute_projections(backend="numba")
    numpy_ = ImagingDataset([Sequence.create("ndarray", movie)], None).compute_projections(
        backend="numpy"
    )
    mean, std, kurt = _reference_moments(movie)
    for got in (numba, numpy_):
        np.testing.assert_allclose(got.mean, mean, rtol=1e-9)
        np.testing.assert_allclose(got.std, std, rtol=1e-9)
        np.testing.assert_allclose(got.kurtosis, kurt, rtol=1e-9)
        assert np.isnan(got.mean[0, 1, 1, 0])
        assert got.count[0, 2, 2, 0] == 40 - 1 - 14 + (1 if 5 % 3 == 0 else 0)
    np.testing.assert_allclose(numba.kurtosis, numpy_.kurtosis, rtol=1e-12)


def test_projection_generator_can_be_cancelled(tmp_path, movie):
    ds = ImagingDataset([Sequence.create("ndarray", movie)], tmp_path / "x.sima")
    gen = ds.iter_projections(block_frames=2)
    assert next(gen) == (0, 12)
    assert next(gen) == (2, 12)
    gen.close()  # cancelled: nothing cached
    assert not (tmp_path / "x.sima" / PROJECTIONS_FILE).exists()
    assert ds._moments is None


def test_stale_projection_cache_is_recomputed(tmp_path, movie):
    tiff = _tiff_movie(tmp_path, movie)
    ds = ImagingDataset([Sequence.create("TIFF", tiff, 2, 3)], tmp_path / "s.sima")
    ds.compute_projections()
    (tmp_path / "s.sima" / PROJECTIONS_FILE).write_bytes(b"garbage")
    again = ImagingDataset.load(tmp_path / "s.sima")
    np.testing.assert_allclose(again.time_averages, movie.mean(axis=0), rtol=1e-12)


def test_sima_projection_tests(tmp_path, examples):
    """SIMA's test_time_averages/std/kurtosis: shape == frame_shape, twice."""
    seq = Sequence.create("HDF5", examples / "example.h5", "yxt")
    ds = ImagingDataset([seq, seq], tmp_path / "test_imaging_dataset.sima")
    for name in ("time_averages", "time_std", "time_kurtosis"):
        assert getattr(ds, name).shape == ds.frame_shape
        assert getattr(ImagingDataset.load(ds.savedir), name).shape == ds.frame_shape


def test_saving_a_motion_corrected_dataset_keeps_one_displacements_file(tmp_path):
    movie = np.arange(6 * 8 * 10, dtype=np.uint16).reshape(6, 1, 8, 10, 1)
    shifts = np.zeros((6, 1, 2), int)
    shifts[2] = [1, 2]
    seq = Sequence.create("TIFF", _tiff_movie(tmp_path, movie)).apply_displacements(shifts)
    ds = ImagingDataset([seq], tmp_path / "mc.sima")
    for _ in range(3):  # saving again reuses the file named by its content
        ds.save()
    (used,) = (tmp_path / "mc.sima").glob("displacements_*.npy")
    old = tmp_path / "mc.sima" / "displacements_0123.npy"  # left by an older version
    young = tmp_path / "mc.sima" / "displacements_4567.npy"  # someone may be reading it
    for path in (old, young):
        path.write_bytes(used.read_bytes())
    os.utime(old, (0, 0))
    ds.save()
    assert sorted(p.name for p in (tmp_path / "mc.sima").glob("displacements_*.npy")) == sorted(
        [used.name, young.name]
    )
    again = ImagingDataset.load(tmp_path / "mc.sima")
    np.testing.assert_array_equal(again.sequences[0].read(), seq.read())
