"""Tests for reading legacy SIMA dataset folders (napari_sima.core.legacy)."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import tifffile

from napari_sima.core import ImagingDataset, legacy
from napari_sima.core.legacy import (
    LegacyClass,
    LegacyLilMatrix,
    UnsafePickleError,
    load_legacy_dataset,
    read_legacy_pickle,
)

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sima-examples"
needs_examples = pytest.mark.skipif(
    not (EXAMPLES / "example.sima").is_dir(),
    reason=f"SIMA example data not found at {EXAMPLES}",
)

SEQUENCE_CLASSES = legacy._SIMA_SEQUENCE_CLASSES


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _fake_module(monkeypatch: pytest.MonkeyPatch, modname: str, classes: dict) -> None:
    parts = modname.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    mod = types.ModuleType(modname)
    for name, cls in classes.items():
        cls.__module__ = modname
        cls.__qualname__ = name
        setattr(mod, name, cls)
    monkeypatch.setitem(sys.modules, modname, mod)


@pytest.fixture
def sima(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Fake ``sima.sequence`` / ``sima.iterables`` / ``future.types`` so pickles name them."""
    seq = {n: type(n, (), {}) for n in SEQUENCE_CLASSES}
    its = {n: type(n, (), {}) for n in ("MultiPageTIFF", "HDF5")}
    _fake_module(monkeypatch, "sima.sequence", seq)
    _fake_module(monkeypatch, "sima.iterables", its)
    newstr = type("newstr", (str,), {})
    _fake_module(monkeypatch, "future.types.newstr", {"newstr": newstr})
    return types.SimpleNamespace(seq=seq, it=its, newstr=newstr)


def _dump(obj: object, path: Path, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _write_v1(
    folder: Path,
    sequences: list[dict],
    channel_names: list,
    frame_shape: tuple | None = None,
    protocol: int = 2,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "savedir": str(folder),
        "channel_names": channel_names,
        "num_frames": 0,
        "num_sequences": len(sequences),
        "__version__": "1.3.2",
    }
    if frame_shape is not None:
        meta["frame_shape"] = tuple(np.int64(v) for v in frame_shape)
    _dump(meta, folder / "dataset.pkl", protocol)
    _dump(sequences, folder / "sequences.pkl", protocol)
    return folder


def _h5_entry(sima, path: Path, folder: Path, dim_order="tzyxc", key="imaging") -> dict:
    return {
        "__class__": sima.seq["_Sequence_HDF5"],
        "dim_order": dim_order,
        "group": "/",
        "key": key,
        "_abspath": str(path),
        "_relpath": os.path.relpath(path, folder),
    }


def _tiff_entry(sima, path: Path, folder: Path, planes=1, channels=1, len_=None) -> dict:
    return {
        "__class__": sima.seq["_Sequence_TIFF_Interleaved"],
        "num_planes": planes,
        "num_channels": channels,
        "len_": len_,
        "_abspath": str(path),
        "_relpath": os.path.relpath(path, folder),
    }


@pytest.fixture
def movies(tmp_path: Path) -> types.SimpleNamespace:
    """An HDF5 movie (t, z, y, x, c) = (6, 2, 8, 10, 1) and a 2-channel interleaved TIFF."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    h5 = rng.integers(0, 1000, size=(6, 2, 8, 10, 1)).astype(np.uint16)
    with h5py.File(data / "movie.h5", "w") as f:
        f["imaging"] = h5
    tif = rng.integers(0, 1000, size=(6, 2, 8, 10, 2)).astype(np.uint16)
    # pages interleaved channel fastest, then plane, then time
    pages = np.moveaxis(tif, 4, 2).reshape(-1, 8, 10)
    tifffile.imwrite(data / "movie.tif", pages)
    return types.SimpleNamespace(dir=data, h5=h5, tif=tif)


def _frames(ds: ImagingDataset, k: int = 0) -> np.ndarray:
    return np.asarray(ds.sequences[k])


# ---------------------------------------------------------------------------------------
# SIMA's own example.sima (version 0)
# ---------------------------------------------------------------------------------------
@needs_examples
def test_example_sima_loads_read_only() -> None:
    with pytest.warns(UserWarning, match="dropped"):
        ds = ImagingDataset.load(EXAMPLES / "example.sima")
    assert ds.num_sequences == 1
    assert ds.num_frames == 20
    assert ds.frame_shape == (1, 125, 247, 2)
    assert ds.channel_names == ["red", "green"]
    assert all(isinstance(n, str) for n in ds.channel_names)
    assert ds.read_only is True
    assert ds.savedir == str(EXAMPLES / "example.sima")
    with pytest.raises(PermissionError):
        ds.save()


@needs_examples
def test_example_sima_frames_match_manual_placement() -> None:
    with pytest.warns(UserWarning):
        ds = load_legacy_dataset(EXAMPLES / "example.sima")
    raw = tifffile.imread(EXAMPLES / "example.tif").astype(float)  # (20, 128, 256)
    disp = read_legacy_pickle(EXAMPLES / "example.sima" / "displacements.pkl")
    assert len(disp) == 1 and disp[0].shape == (2560, 2)
    disp = disp[0].reshape(20, 128, 2)
    max_dy, max_dx = disp[..., 0].max(), disp[..., 1].max()
    assert (max_dy, max_dx) == (3, 9)
    seq = ds.sequences[0]
    special = False
    for t in (0, 1, 2, 14, 19):  # 2 leaves a row unobserved, 14 writes a row twice
        total = np.zeros((128 + max_dy, 256 + max_dx))
        count = np.zeros_like(total)
        for i in range(128):
            dy, dx = disp[t, i]
            total[i + dy, dx : dx + 256] += raw[t, i]
            count[i + dy, dx : dx + 256] += 1
        with np.errstate(invalid="ignore"):
            expected = (total / count)[3:128, 9:256]
        special |= bool((count[3:128, 9:256] != 1).any())
        frame = seq.frame(t)
        assert frame.shape == (1, 125, 247, 2)
        for c in range(2):  # both channels read the same file
            np.testing.assert_array_equal(frame[0, :, :, c], expected)
    # some pixels were written twice or never: the averaging / NaN rule was exercised
    assert special


@needs_examples
def test_example_sima_saved_copy_is_new_format(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        ds = ImagingDataset.load(EXAMPLES / "example.sima")
    before = np.asarray(ds.sequences[0])
    ds.save(tmp_path / "converted.sima")
    assert not ds.read_only
    out = tmp_path / "converted.sima"
    assert (out / "dataset.json").is_file()
    assert not list(out.glob("*.pkl"))
    assert list(out.glob("displacements_*.npy"))
    again = ImagingDataset.load(out)
    assert again.num_sequences == 1
    assert again.frame_shape == (1, 125, 247, 2)
    assert again.channel_names == ["red", "green"]
    assert not again.read_only
    np.testing.assert_array_equal(np.asarray(again.sequences[0]), before)
    # the legacy folder itself was not touched
    assert sorted(p.name for p in (EXAMPLES / "example.sima").iterdir()) == [
        "dataset.pkl",
        "displacements.pkl",
    ]


@needs_examples
def test_example_sima_copy_without_movie_names_paths(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "example.sima", tmp_path / "example.sima")
    with pytest.raises(FileNotFoundError) as info:
        load_legacy_dataset(tmp_path / "example.sima")
    msg = str(info.value)
    assert str(tmp_path / "example.tif") in msg
    assert str(tmp_path / "example.sima") in msg
    # with the movie next to it again, the copy loads
    shutil.copy(EXAMPLES / "example.tif", tmp_path / "example.tif")
    with pytest.warns(UserWarning):
        ds = load_legacy_dataset(tmp_path / "example.sima")
    assert ds.frame_shape == (1, 125, 247, 2)
    assert ds.savedir == str(tmp_path / "example.sima")


# ---------------------------------------------------------------------------------------
# version 0, hand-made
# ---------------------------------------------------------------------------------------
def _v0_meta(sima, channels_per_seq: list[list[dict]], **extra) -> dict:
    meta = {
        "iterables": channels_per_seq,
        "channel_names": ["a", "b"][: len(channels_per_seq[0])],
        "num_frames": 0,
        "trim_criterion": None,
    }
    meta.update(extra)
    return meta


def test_v0_hdf5_channel_clip_and_displacements(sima, movies) -> None:
    folder = movies.dir / "v0.sima"
    folder.mkdir()
    h5path = movies.dir / "movie5.h5"
    vol = np.random.default_rng(1).integers(0, 50, size=(4, 1, 9, 7, 3)).astype(np.uint8)
    with h5py.File(h5path, "w") as f:
        f["imaging"] = vol
    chan = {
        "__class__": sima.it["HDF5"],
        "_abspath": "/nowhere/movie5.h5",
        "_relpath": "..\\movie5.h5",  # written on Windows
        "dim_order": "tzyxc",
        "group": "/",
        "key": "imaging",
        "channel": 2,
        "clip": ((1, 0), (0, -2)),  # rows 1:, columns :-2
    }
    disp = np.zeros((4 * 1 * 8, 2), dtype=np.int64)
    disp[8:16] = [1, 2]  # frame 1 shifted by (1, 2)
    meta = _v0_meta(sima, [[chan], [chan]], _lazy__trim_coords=[[0, 0], [8, 5]])
    _dump(meta, folder / "dataset.pkl")
    _dump([disp], folder / "displacements.pkl")
    with pytest.warns(UserWarning, match="1 displacement array"):
        ds = load_legacy_dataset(folder)
    assert ds.num_sequences == 1
    assert ds.frame_shape == (1, 8, 5, 1)
    frames = _frames(ds)
    clipped = vol[:, :, 1:, :-2, 2:3].astype(float)  # (4, 1, 8, 5, 1)
    np.testing.assert_array_equal(frames[0], clipped[0][:, :8, :5])
    expected1 = np.full((1, 9, 7, 1), np.nan)
    expected1[:, 1:9, 2:7] = clipped[1]
    np.testing.assert_array_equal(frames[1], expected1[:, :8, :5])


def test_v0_tiff_without_displacements(sima, movies) -> None:
    folder = movies.dir / "v0b.sima"
    folder.mkdir()
    one = movies.dir / "one.tif"
    data = movies.tif[:, 0, :, :, 0]
    tifffile.imwrite(one, data)
    chan = {"__class__": sima.it["MultiPageTIFF"], "_abspath": str(one),
            "_relpath": "../one.tif", "clip": None}
    _dump(_v0_meta(sima, [[chan, chan]]), folder / "dataset.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_legacy_dataset(folder)
    assert ds.frame_shape == (1, 8, 10, 2)
    frames = _frames(ds)
    np.testing.assert_array_equal(frames[..., 0], data[:, None])
    np.testing.assert_array_equal(frames[..., 1], data[:, None])


def test_v0_trim_criterion_without_coords(sima, movies) -> None:
    folder = movies.dir / "v0c.sima"
    folder.mkdir()
    tifffile.imwrite(movies.dir / "one.tif", movies.tif[:, 0, :, :, 0])
    chan = {"__class__": sima.it["MultiPageTIFF"], "_relpath": "../one.tif", "clip": None}
    _dump(_v0_meta(sima, [[chan]], trim_criterion=0.95), folder / "dataset.pkl")
    with pytest.raises(ValueError, match="trim"):
        load_legacy_dataset(folder)


# ---------------------------------------------------------------------------------------
# version 1, hand-made
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_v1_hdf5_and_tiff_interleaved(sima, movies, protocol) -> None:
    folder = movies.dir / "v1.sima"
    entries = [
        _h5_entry(sima, movies.dir / "movie.h5", folder),
        _tiff_entry(sima, movies.dir / "movie.tif", folder, planes=2, channels=2),
    ]
    # both need the same frame shape in one dataset: two datasets
    _write_v1(folder, [entries[0]], [sima.newstr("GCaMP")], (2, 8, 10, 1), protocol)
    ds = ImagingDataset.load(folder)
    assert ds.read_only and ds.savedir == str(folder)
    assert ds.channel_names == ["GCaMP"] and type(ds.channel_names[0]) is str
    np.testing.assert_array_equal(_frames(ds), movies.h5)

    folder2 = movies.dir / "v1b.sima"
    entries[1]["_relpath"] = os.path.relpath(movies.dir / "movie.tif", folder2)
    _write_v1(folder2, [entries[1]], [b"red", "green"], (2, 8, 10, 2), protocol)
    ds2 = load_legacy_dataset(folder2)
    assert ds2.channel_names == ["red", "green"]
    np.testing.assert_array_equal(_frames(ds2), movies.tif)


def test_v1_nested_joined_motion_corrected_indexed(sima, movies, tmp_path) -> None:
    folder = movies.dir / "nested.sima"
    h5 = _h5_entry(sima, movies.dir / "movie.h5", folder)
    tif = _tiff_entry(sima, movies.dir / "movie.tif", folder, planes=2, channels=2)
    joined = {"__class__": sima.seq["_Joined_Sequence"], "sequences": [h5, tif]}
    disp = np.zeros((6, 2, 2), dtype=np.int16)  # per plane (dy, dx)
    disp[2, 0] = [1, 3]
    disp[4, 1] = [2, 0]
    mc = {
        "__class__": sima.seq["_MotionCorrectedSequence"],
        "base": joined,
        "displacements": disp,
        "extent": (np.int64(2), np.int64(10), np.int64(13)),
    }
    indexed = {
        "__class__": sima.seq["_IndexedSequence"],
        "base": mc,
        "indices": (slice(1, 6, 1), slice(None), slice(1, 9), slice(0, 12), slice(None)),
    }
    _write_v1(folder, [indexed], ["g", "r1", "r2"], (2, 8, 12, 3))
    ds = load_legacy_dataset(folder)
    assert ds.frame_shape == (2, 8, 12, 3) and ds.num_frames == 5
    raw = np.concatenate([movies.h5, movies.tif], axis=4).astype(float)
    expected = np.full((6, 2, 10, 13, 3), np.nan)
    for t in range(6):
        for p in range(2):
            dy, dx = disp[t, p]
            expected[t, p, dy : dy + 8, dx : dx + 10] = raw[t, p]
    expected = expected[1:6, :, 1:9, 0:12]
    np.testing.assert_array_equal(_frames(ds), expected)

    # saving elsewhere writes the new format, which loads back identically
    ds.save(tmp_path / "nested_copy.sima")
    again = ImagingDataset.load(tmp_path / "nested_copy.sima")
    assert again.frame_shape == ds.frame_shape and again.num_frames == 5
    np.testing.assert_array_equal(_frames(again), expected)


def test_v1_row_displacements_and_masks(sima, movies) -> None:
    folder = movies.dir / "masked.sima"
    h5 = _h5_entry(sima, movies.dir / "movie.h5", folder)
    disp = np.zeros((6, 2, 8, 2), dtype=np.int16)
    disp[3, 0, 2] = [1, 1]  # row 2 of plane 0 lands on row 3, which row 3 also fills
    mc = {"__class__": sima.seq["_MotionCorrectedSequence"], "base": h5,
          "displacements": disp, "extent": (2, 9, 11)}
    yx = np.zeros((9, 11), dtype=bool)
    yx[0, :4] = True
    masked = {
        "__class__": sima.seq["_MaskedSequence"],
        "base": mc,
        "outers": [(range(0, 2), None, None), (None, 0, yx, [0]), (5, [1], None, None)],
    }
    _write_v1(folder, [masked], ["0"], (2, 9, 11, 1))
    ds = load_legacy_dataset(folder)
    raw = movies.h5.astype(float)
    expected = np.full((6, 2, 9, 11, 1), np.nan)
    for t in range(6):
        total = np.zeros((2, 9, 11, 1))
        count = np.zeros((2, 9, 11, 1))
        for p in range(2):
            for i in range(8):
                dy, dx = disp[t, p, i]
                total[p, i + dy, dx : dx + 10] += raw[t, p, i]
                count[p, i + dy, dx : dx + 10] += 1
        with np.errstate(invalid="ignore"):
            expected[t] = total / count
    expected[0:2] = np.nan
    expected[:, 0][:, yx, 0] = np.nan
    expected[5, 1] = np.nan
    got = _frames(ds)
    np.testing.assert_array_equal(got, expected)
    assert got[3, 0, 3, 1, 0] == pytest.approx((raw[3, 0, 2, 0] + raw[3, 0, 3, 1]) / 2)


def test_v1_tiffs_and_ndarray(sima, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(2)
    frames, planes, channels = 3, 2, 2
    stack = rng.integers(0, 500, size=(frames, planes, 6, 5, channels)).astype(np.uint16)
    paths = np.empty((frames, planes, channels), dtype="U300")
    for t in range(frames):
        for p in range(planes):
            for c in range(channels):
                f = data / f"p{p}c{c}_{t:02d}.tif"
                tifffile.imwrite(f, stack[t, p, :, :, c])
                paths[t, p, c] = str(f)
    folder = data / "tiffs.sima"
    tiffs = {"__class__": sima.seq["_Sequence_TIFFs"], "paths": paths}
    _write_v1(folder, [tiffs], ["x", "y"], (planes, 6, 5, channels))
    ds = load_legacy_dataset(folder)
    np.testing.assert_array_equal(_frames(ds), stack)

    arr = rng.random((4, 1, 3, 3, 1))
    np.save(data / "seq_0123.npy", arr)
    folder2 = data / "nd.sima"
    nd = {"__class__": sima.seq["_Sequence_ndarray"], "array": None,
          "_abspath": "/old/place/seq_0123.npy", "_relpath": "../seq_0123.npy"}
    _write_v1(folder2, [nd, nd], None, (1, 3, 3, 1))
    ds2 = load_legacy_dataset(folder2)
    assert ds2.num_sequences == 2 and ds2.channel_names == ["0"]
    np.testing.assert_array_equal(_frames(ds2, 1), arr)


def test_v1_moved_together_resolves_relative_paths(sima, movies, tmp_path) -> None:
    folder = movies.dir / "ds.sima"
    _write_v1(folder, [_h5_entry(sima, movies.dir / "movie.h5", folder)], ["0"], (2, 8, 10, 1))
    moved = tmp_path / "elsewhere"
    shutil.move(movies.dir, moved)
    assert not (movies.dir / "movie.h5").exists()  # the stored absolute path is stale
    ds = load_legacy_dataset(moved / "ds.sima")
    assert ds.sequences[0].files == [str(moved / "movie.h5")]
    np.testing.assert_array_equal(_frames(ds), movies.h5)


def test_v1_moved_movie_raises_naming_paths(sima, movies, tmp_path) -> None:
    folder = movies.dir / "ds.sima"
    _write_v1(folder, [_h5_entry(sima, movies.dir / "movie.h5", folder)], ["0"], (2, 8, 10, 1))
    shutil.move(movies.dir / "movie.h5", tmp_path / "gone.h5")
    with pytest.raises(FileNotFoundError) as info:
        ImagingDataset.load(folder)
    msg = str(info.value)
    assert str(movies.dir / "movie.h5") in msg  # both candidates are the same file here
    assert str(folder) in msg


def test_v1_both_candidates_named(sima, movies, tmp_path) -> None:
    folder = movies.dir / "ds.sima"
    entry = _h5_entry(sima, movies.dir / "movie.h5", folder)
    entry["_abspath"] = str(tmp_path / "original" / "movie.h5")
    entry["_relpath"] = "../missing/movie.h5"
    _write_v1(folder, [entry], ["0"], (2, 8, 10, 1))
    with pytest.raises(FileNotFoundError) as info:
        load_legacy_dataset(folder)
    msg = str(info.value)
    assert str(movies.dir / "missing" / "movie.h5") in msg
    assert str(tmp_path / "original" / "movie.h5") in msg
    assert str(folder) in msg


@pytest.mark.parametrize(
    "name", ["_Sequence_constant", "_Sequence_memmap", "_AddWrapperSequence"]
)
def test_v1_unsupported_kinds(sima, movies, name) -> None:
    folder = movies.dir / "bad.sima"
    entry = {"__class__": sima.seq[name], "value": 1.0, "shape": (2, 1, 2, 2, 1),
             "base": _h5_entry(sima, movies.dir / "movie.h5", movies.dir / "bad.sima")}
    _write_v1(folder, [entry], ["0"])
    with pytest.raises(ValueError, match=f"{name}.*not supported"):
        load_legacy_dataset(folder)


def test_v1_old_dev_dataset(tmp_path) -> None:
    folder = tmp_path / "old.sima"
    folder.mkdir()
    _dump({"sequences": [], "channel_names": ["0"]}, folder / "dataset.pkl")
    with pytest.raises(ValueError, match="Old 1.0.0-dev dataset"):
        ImagingDataset.load(folder)


def test_v1_frame_shape_mismatch(sima, movies) -> None:
    folder = movies.dir / "mismatch.sima"
    _write_v1(folder, [_h5_entry(sima, movies.dir / "movie.h5", folder)], ["0"], (2, 8, 11, 1))
    with pytest.raises(ValueError, match="frame shape"):
        load_legacy_dataset(folder)


def test_v1_missing_sequences_pkl(tmp_path) -> None:
    folder = tmp_path / "x.sima"
    folder.mkdir()
    _dump({"channel_names": ["0"]}, folder / "dataset.pkl")
    with pytest.raises(FileNotFoundError, match="sequences.pkl"):
        load_legacy_dataset(folder)


# ---------------------------------------------------------------------------------------
# restricted unpickler: what legacy files contain
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_read_legacy_pickle_allowed_contents(sima, tmp_path, protocol) -> None:
    mask = sp.lil_matrix((4, 5), dtype=bool)
    mask[1, 2] = True
    mask[3, 0] = True
    weights = sp.lil_matrix((2, 3))
    weights[0, 1] = 0.25
    obj = {
        "mask": [mask, weights],
        "tags": {"soma", "bright"},
        "frozen": frozenset({1}),
        "indices": (slice(1, None, 2), range(2, 5)),
        "array": np.arange(12, dtype=np.int16).reshape(3, 4),
        "fortran": np.asfortranarray(np.ones((2, 3))),
        "text": np.array(["a", "bb"]),
        "objs": np.array([[1, 2], [3]], dtype=object),
        "scalar": np.float32(2.5),
        "bytes": b"\x00\xff",
        "cls": sima.seq["_Sequence_HDF5"],
        "label": sima.newstr("cell"),
    }
    path = tmp_path / "x.pkl"
    _dump(obj, path, protocol)
    out = read_legacy_pickle(path)
    assert isinstance(out["mask"][0], LegacyLilMatrix)
    np.testing.assert_array_equal(out["mask"][0].toarray(), mask.toarray())
    assert out["mask"][0].dtype == bool
    np.testing.assert_array_equal(out["mask"][1].tocsr().toarray(), weights.toarray())
    assert out["tags"] == {"soma", "bright"} and out["frozen"] == frozenset({1})
    assert out["indices"] == (slice(1, None, 2), range(2, 5))
    np.testing.assert_array_equal(out["array"], obj["array"])
    assert type(out["array"]) is np.ndarray and type(out["objs"]) is np.ndarray
    assert type(out["mask"][0].state["dtype"]) is not legacy._PendingDtype
    assert out["array"].dtype == np.int16
    np.testing.assert_array_equal(out["fortran"], obj["fortran"])
    np.testing.assert_array_equal(out["text"], obj["text"])
    assert out["objs"][0] == [1, 2] and out["objs"][1] == [3]
    assert out["scalar"] == np.float32(2.5) and out["scalar"].dtype == np.float32
    assert out["bytes"] == b"\x00\xff"
    assert out["cls"] == LegacyClass("sima.sequence", "_Sequence_HDF5")
    assert out["label"] == "cell" and type(out["label"]) is str


def test_read_legacy_pickle_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        read_legacy_pickle(tmp_path / "none.pkl")
    big = tmp_path / "big.pkl"
    _dump(list(range(1000)), big)
    with pytest.raises(ValueError, match="bytes"):
        read_legacy_pickle(big, max_bytes=100)
    assert read_legacy_pickle(big)[-1] == 999
    truncated = tmp_path / "trunc.pkl"
    truncated.write_bytes(big.read_bytes()[:50])
    with pytest.raises(ValueError, match=re.escape(str(truncated))) as info:
        read_legacy_pickle(truncated)
    assert not isinstance(info.value, UnsafePickleError)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_legacy_pickle(empty)


def test_size_limit_applies_to_datasets(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "big.sima"
    folder.mkdir()
    _dump({"iterables": [], "pad": "x" * 5000}, folder / "dataset.pkl")
    monkeypatch.setattr(legacy, "MAX_PICKLE_BYTES", 1000)
    with pytest.raises(ValueError, match="1000 bytes"):
        ImagingDataset.load(folder)


def test_markers_and_stubs_are_inert() -> None:
    marker = LegacyClass("sima.sequence", "_Sequence_HDF5")
    with pytest.raises(legacy._Refused):
        marker()
    with pytest.raises(legacy._Refused):
        marker.name = "x"
    with pytest.raises(legacy._Refused):
        LegacyLilMatrix.toarray = None
    with pytest.raises(legacy._Refused):
        LegacyLilMatrix(1)


# ---------------------------------------------------------------------------------------
# restricted unpickler: hostile files
# ---------------------------------------------------------------------------------------
def _p0_global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _p5_str(s: str) -> bytes:
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _p5_global(module: str, name: str) -> bytes:
    return _p5_str(module) + _p5_str(name) + b"\x93"  # STACK_GLOBAL


def _hostile_payloads(canary: Path) -> dict[str, bytes]:
    cmd = f"touch {canary}"
    code = f"__import__('os').system({cmd!r})"

    class Evil:
        def __init__(self, func, args):
            self.func, self.args = func, args

        def __reduce__(self):
            return self.func, self.args

    out: dict[str, bytes] = {}
    for proto in (0, 2, 5):
        out[f"os.system-p{proto}"] = pickle.dumps(Evil(os.system, (cmd,)), proto)
        out[f"eval-p{proto}"] = pickle.dumps(Evil(builtins.eval, (code,)), proto)
        out[f"exec-p{proto}"] = pickle.dumps(Evil(builtins.exec, (code,)), proto)
        out[f"Popen-p{proto}"] = pickle.dumps(
            Evil(subprocess.Popen, (["touch", str(canary)],)), proto
        )
        # hidden inside legitimate-looking dataset content
        out[f"nested-p{proto}"] = pickle.dumps(
            {"channel_names": ["a"], "iterables": [[Evil(os.system, (cmd,))]]}, proto
        )
    # getattr(__import__('os'), 'system')('touch ...'), protocol 0 and 5 by hand
    out["getattr-chain-p0"] = (
        _p0_global("builtins", "getattr")
        + b"(" + _p0_global("builtins", "__import__") + b"(Vos\ntR" + b"Vsystem\ntR"
        + f"(V{cmd}\ntR.".encode()
    )
    out["getattr-chain-p5"] = (
        b"\x80\x05" + _p5_global("builtins", "getattr")
        + _p5_global("builtins", "__import__") + _p5_str("os") + b"\x85R"
        + _p5_str("system") + b"\x86R" + _p5_str(cmd) + b"\x85R."
    )
    out["py2-posix-system-p0"] = _p0_global("posix", "system") + f"(S'{cmd}'\ntR.".encode()
    out["numpy.testing-p2"] = (
        b"\x80\x02" + _p0_global("numpy.testing", "assert_equal") + b"K\x01K\x01\x86R."
    )
    out["numpy.load-p0"] = _p0_global("numpy", "load") + f"(V{canary}\ntR.".encode()
    out["scipy-os-p0"] = _p0_global("scipy.sparse._lil", "os") + b"."
    out["inst-p0"] = f"(V{cmd}\nios\nsystem\n.".encode()
    return out


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path / "CANARY"


@pytest.mark.parametrize("kind", sorted(_hostile_payloads(Path("/x/CANARY"))))
def test_hostile_dataset_pickles_are_refused(kind, tmp_path, canary) -> None:
    payload = _hostile_payloads(canary)[kind]
    folder = tmp_path / "evil.sima"
    folder.mkdir()
    (folder / "dataset.pkl").write_bytes(payload)
    with pytest.raises(UnsafePickleError) as info:
        ImagingDataset.load(folder)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(folder / "dataset.pkl") in str(err)
    assert err.path == str(folder / "dataset.pkl")
    assert err.module and err.name and f"{err.module}" in str(err) and err.name in str(err)
    assert not canary.exists()
    # the same through the public reader
    with pytest.raises(UnsafePickleError):
        read_legacy_pickle(folder / "dataset.pkl")
    assert not canary.exists()


def test_hostile_sequences_pickle_is_refused(sima, tmp_path, canary) -> None:
    folder = tmp_path / "evil2.sima"
    folder.mkdir()
    _dump({"channel_names": ["0"]}, folder / "dataset.pkl")
    (folder / "sequences.pkl").write_bytes(_hostile_payloads(canary)["os.system-p2"])
    with pytest.raises(UnsafePickleError, match="sequences.pkl"):
        load_legacy_dataset(folder)
    assert not canary.exists()


def _assert_refused(path: Path, payload: bytes, match: str) -> None:
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=match) as info:
        read_legacy_pickle(path)
    assert str(path) in str(info.value)


def test_allowed_globals_cannot_be_abused(tmp_path) -> None:
    p = tmp_path / "x.pkl"
    recon = _p0_global("copy_reg", "_reconstructor")
    # _reconstructor may only build our stubs
    _assert_refused(
        p, recon + b"(" + _p0_global("__builtin__", "object") + _p0_global("__builtin__", "object")
        + b"NtR.", "_reconstructor",
    )
    # numpy _reconstruct only of ndarray, and never a huge one
    nprec = _p0_global("numpy.core.multiarray", "_reconstruct")
    _assert_refused(
        p, nprec + b"(" + _p0_global("__builtin__", "set") + b"(I0\ntVb\ntR.", "_reconstruct"
    )
    _assert_refused(
        p, nprec + b"(" + _p0_global("numpy", "ndarray") + b"(I100000000000\ntVb\ntR.",
        "too large",
    )
    # a SIMA class marker cannot be called
    _assert_refused(p, _p0_global("sima.sequence", "_Sequence_HDF5") + b"(tR.", "SIMA class")
    # BUILD on an allowed class must not replace its methods
    _assert_refused(
        p, _p0_global("scipy.sparse.lil", "lil_matrix")
        + b"(N(dVtoarray\nNstb.", "lil_matrix",
    )
    assert callable(LegacyLilMatrix.toarray)
    # huge memo index (memory bomb) and persistent ids
    _assert_refused(p, b"\x80\x02Nr\xff\xff\xff\x7f.", "memo")
    _assert_refused(p, b"Pfoo\n.", "PERSID")


def test_restricted_unpickler_alone(canary) -> None:
    """The unpickler refuses by itself, without the opcode pre-scan."""
    from napari_sima.core.legacy import RestrictedUnpickler

    for payload in _hostile_payloads(canary).values():
        with pytest.raises(UnsafePickleError, match="movie.pkl"):
            RestrictedUnpickler(io.BytesIO(payload), source="movie.pkl").load()
    with pytest.raises(UnsafePickleError, match="persistent"):
        RestrictedUnpickler(io.BytesIO(b"Pfoo\n."), source="p.pkl").load()
    assert not canary.exists()


def test_unknown_sima_class_is_refused(tmp_path) -> None:
    p = tmp_path / "x.pkl"
    _assert_refused(p, _p0_global("sima.ROI", "ROI") + b".", "sima.ROI")
    _assert_refused(p, _p0_global("sima.sequence", "Sequence") + b".", "Sequence")


_P0_OBJECT_ARRAY_SHORT_LIST = (
    # _reconstruct(ndarray, (0,), 'b') then BUILD (1, (1000000,), dtype('O'), False, [1, 2]):
    # NumPy's own __setstate__ crashes the interpreter on this
    _p0_global("numpy.core.multiarray", "_reconstruct")
    + b"(" + _p0_global("numpy", "ndarray") + b"(I0\ntVb\ntR"
    + b"(I1\n(I1000000\nt"
    + _p0_global("numpy", "dtype") + b"(VO8\nI00\nI01\ntR(I3\nV|\nNNNI-1\nI-1\nI63\ntb"
    + b"I00\n(lI1\naI2\natb."
)


def test_inconsistent_array_state_is_an_error_not_a_crash(tmp_path) -> None:
    path = tmp_path / "short.pkl"
    path.write_bytes(_P0_OBJECT_ARRAY_SHORT_LIST)
    code = (
        "import sys\n"
        "from napari_sima.core.legacy import read_legacy_pickle\n"
        "try:\n"
        f"    read_legacy_pickle({str(path)!r})\n"
        "except ValueError as err:\n"
        "    print('ValueError', err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ValueError" in proc.stdout and "1000000" in proc.stdout


def test_array_and_dtype_states_are_checked(tmp_path) -> None:
    p = tmp_path / "x.pkl"
    rec = _p0_global("numpy.core.multiarray", "_reconstruct") + b"(" + _p0_global(
        "numpy", "ndarray") + b"(I0\ntVb\ntR"

    def dtype(code: str, state: bytes) -> bytes:
        return _p0_global("numpy", "dtype") + f"(V{code}\nI00\nI01\ntR".encode() + state

    simple_i8 = dtype("i8", b"(I3\nV<\nNNNI-1\nI-1\nI0\ntb")
    # data of the wrong size
    p.write_bytes(rec + b"(I1\n(I4\nt" + simple_i8 + b"I00\nS'12345678'\ntb.")
    with pytest.raises(ValueError, match="bytes for shape"):
        read_legacy_pickle(p)
    # a correct one loads as a plain ndarray
    p.write_bytes(rec + b"(I1\n(I1\nt" + simple_i8 + b"I00\nS'\\x07\\x00\\x00\\x00\\x00\\x00"
                  b"\\x00\\x00'\ntb.")
    out = read_legacy_pickle(p)
    assert type(out) is np.ndarray and out.tolist() == [7] and out.dtype == np.int64
    # structured / sub-array / datetime dtypes are refused
    for code in ("i4,f8", "(2,)i4", "M8[s]"):
        p.write_bytes(_p0_global("numpy", "dtype") + f"(V{code}\nI00\nI01\ntR.".encode())
        with pytest.raises(UnsafePickleError, match="dtype"):
            read_legacy_pickle(p)
    # fields smuggled in through the dtype state
    p.write_bytes(dtype("V8", b"(I3\nV|\nN(Va\ntNI8\nI1\nI0\ntb."))
    with pytest.raises(UnsafePickleError, match="structured"):
        read_legacy_pickle(p)
    # a huge flexible item size
    p.write_bytes(dtype("V8", b"(I3\nV|\nNNNI999999999999\nI1\nI0\ntb."))
    with pytest.raises(UnsafePickleError, match="item size"):
        read_legacy_pickle(p)
    # a dtype's state may be set only once
    p.write_bytes(dtype("i8", b"(I3\nV<\nNNNI-1\nI-1\nI0\ntb(I3\nV>\nNNNI-1\nI-1\nI0\ntb."))
    with pytest.raises(UnsafePickleError, match="twice"):
        read_legacy_pickle(p)
    # big-endian data is honoured
    p.write_bytes(dtype("i4", b"(I3\nV>\nNNNI-1\nI-1\nI0\ntb."))
    assert read_legacy_pickle(p) == np.dtype(">i4")


def test_builtins_cannot_expand_iterators(tmp_path, sima, monkeypatch) -> None:
    p = tmp_path / "x.pkl"
    big_range = _p0_global("__builtin__", "xrange") + b"(I0\nI1000000000000\ntR"
    for name in ("set", "frozenset", "list", "dict", "str"):
        _assert_refused(p, _p0_global("__builtin__", name) + b"(" + big_range + b"tR.", name)
    _assert_refused(p, _p0_global("builtins", "str") + b"((ltR.", "str")
    # what legacy files do with them still works (Py2 set, future's newlist at protocol 0/2)
    newlist = type("newlist", (list,), {})
    _fake_module(monkeypatch, "future.types.newlist", {"newlist": newlist})
    for proto in (0, 2):
        _dump({"s": {1, 2}, "l": newlist([1, "a"])}, p, proto)
        out = read_legacy_pickle(p)
        assert out == {"s": {1, 2}, "l": [1, "a"]} and type(out["l"]) is list
