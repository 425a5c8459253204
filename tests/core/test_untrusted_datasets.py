"""Untrusted dataset folders: paths inside files are only read, nothing is written outside.

A ``dataset.json`` (or a legacy pickle) names its movies by absolute path and by path
relative to the folder.  A hostile or damaged file may name ``/etc/passwd``,
``../../`` traversals, devices (``/dev/zero``), FIFOs, folders or symbolic links; the
set indexes may name files outside their store; channel names and labels may look
like paths.  These tests check that such names only ever lead to *reading* the named
file, with the normal checks (a device or FIFO is refused at once, never read until
memory or time runs out), and that nothing napari-sima writes -- the dataset
description, ``seq_*.npy`` arrays, displacements, the projections and offset-PCA
caches, ROI and signal sets, the extraction summary -- ever lands outside the dataset
folder because of a name read from a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from _fake_sima import fake_sima_modules

from napari_sima.core import ROI, ImagingDataset, Sequence, signal_store
from napari_sima.core.errors import READ_ERRORS, FileFormatError, ResourceLimitError
from napari_sima.core.legacy import load_legacy_dataset
from napari_sima.core.roi_store import load_roi_sets


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def no_hang(seconds: float = 20.0) -> Iterator[None]:
    """Fail (instead of blocking forever) if the block takes longer than ``seconds``."""

    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and link under ``root`` (not followed) with its size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def outside(snap: dict[str, tuple[int, int]], dataset: str) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in snap.items() if not (k == dataset or k.startswith(dataset + os.sep))}


MOVIE = np.arange(6 * 8 * 10 * 2, dtype=np.uint16).reshape(6, 1, 8, 10, 2) % 251


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """``tmp_path/movies/movie.h5``, ``tmp_path/lab/ds.sima`` (by napari-sima), a victim file."""
    monkeypatch.chdir(tmp_path)
    movies = tmp_path / "movies"
    movies.mkdir()
    with h5py.File(movies / "movie.h5", "w") as f:
        f["imaging"] = MOVIE
    lab = tmp_path / "lab"
    lab.mkdir()
    seq = Sequence.create("HDF5", str(movies / "movie.h5"), "tzyxc", key="imaging")
    ds = ImagingDataset([seq], str(lab / "ds"), channel_names=["green", "red"])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    return types.SimpleNamespace(root=tmp_path, movies=movies, folder=Path(ds.savedir),
                                 victim=victim, meta=json.loads(
                                     (Path(ds.savedir) / "dataset.json").read_text()))


def write_meta(folder: Path, meta: dict) -> None:
    (folder / "dataset.json").write_text(json.dumps(meta))


def with_movie_path(meta: dict, *, abspath: Any = None, relpath: Any = None) -> dict:
    meta = json.loads(json.dumps(meta))
    seq = meta["sequences"][0]
    seq.pop("abspath", None)
    seq.pop("relpath", None)
    if abspath is not None:
        seq["abspath"] = abspath
    if relpath is not None:
        seq["relpath"] = relpath
    return meta


def open_all(folder: Path) -> ImagingDataset:
    ds = ImagingDataset.load(folder)
    ds.sequences  # noqa: B018 - opens the movies
    return ds


# ---------------------------------------------------------------------------------------
# Movie paths: resolved relative to the dataset, only ever read
# ---------------------------------------------------------------------------------------
def test_relative_movie_path_is_resolved_against_the_dataset_not_the_cwd(world) -> None:
    # a moved tree: the stored absolute path is stale, the relative one still works
    meta = with_movie_path(world.meta, abspath="/nonexistent/movie.h5",
                           relpath="../../movies/movie.h5")
    write_meta(world.folder, meta)
    os.chdir(world.movies)  # "../../movies/movie.h5" from here would be wrong
    ds = open_all(world.folder)
    assert ds.sequences[0].files == [str(world.movies / "movie.h5")]
    # the relative path wins over an absolute one naming another (valid) movie
    other = world.root / "other.h5"
    with h5py.File(other, "w") as f:
        f["imaging"] = MOVIE + 1
    write_meta(world.folder, with_movie_path(world.meta, abspath=str(other),
                                             relpath="../../movies/movie.h5"))
    assert open_all(world.folder).sequences[0].files == [str(world.movies / "movie.h5")]


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../../../../../etc/passwd"])
def test_movie_path_to_a_system_file_is_only_read(world, name) -> None:
    key = "abspath" if name.startswith("/") else "relpath"
    write_meta(world.folder, with_movie_path(world.meta, **{key: name}))
    before = snapshot(world.root)
    with pytest.raises(READ_ERRORS) as info:
        open_all(world.folder)
    assert "passwd" in str(info.value)
    assert snapshot(world.root) == before


def _special_files(root: Path) -> dict[str, str]:
    fifo = root / "fifo.h5"
    os.mkfifo(fifo)
    link = root / "zero.h5"
    link.symlink_to("/dev/zero")
    (root / "folder.h5").mkdir()
    return {"dev-zero": "/dev/zero", "dev-urandom": "/dev/urandom", "fifo": str(fifo),
            "symlink-to-dev-zero": str(link), "folder": str(root / "folder.h5")}


@pytest.mark.parametrize("special", ["dev-zero", "dev-urandom", "fifo", "symlink-to-dev-zero",
                                     "folder"])
@pytest.mark.parametrize("kind", ["HDF5", "TIFF", "ndarray", "legacy"])
def test_devices_fifos_and_folders_are_refused_at_once(world, special, kind) -> None:
    path = _special_files(world.root)[special]
    seq = dict(world.meta["sequences"][0])
    if kind == "TIFF":
        seq = {"kind": "TIFF", "num_planes": 1, "num_channels": 2, "num_frames": 6}
    elif kind == "ndarray":
        seq = {"kind": "ndarray", "dim_order": "tzyxc"}
    seq.pop("relpath", None)
    seq["abspath"] = path
    meta = dict(world.meta, sequences=[seq])
    folder = world.folder
    if kind == "legacy":
        folder = world.root / "legacy.sima"
        folder.mkdir()
        (folder / "dataset.pkl").write_bytes(pickle.dumps({"channel_names": ["a", "b"]}, 2))
        (folder / "sequences.pkl").write_bytes(_legacy_hdf5_sequences(path))
    else:
        write_meta(folder, meta)
    with no_hang(), pytest.raises(READ_ERRORS) as info:
        open_all(folder)
    assert path in str(info.value) or os.path.realpath(path) in str(info.value)


def _legacy_hdf5_sequences(path: str) -> bytes:
    with fake_sima_modules({"sima.sequence": ["_Sequence_HDF5"]}) as fake:
        return pickle.dumps([{"__class__": fake["_Sequence_HDF5"], "_abspath": path,
                              "_relpath": path, "dim_order": "tzyxc", "key": "imaging"}], 2)


def test_symlink_to_a_real_movie_is_read(world) -> None:
    link = world.root / "link.h5"
    link.symlink_to(world.movies / "movie.h5")
    write_meta(world.folder, with_movie_path(world.meta, abspath=str(link)))
    ds = open_all(world.folder)
    assert np.array_equal(ds.sequences[0].read(range(6)), MOVIE)


@pytest.mark.parametrize("value", [123, ["a"], {"x": 1}, "a\x00b", True])
def test_movie_paths_of_the_wrong_type_are_refused(world, value) -> None:
    write_meta(world.folder, with_movie_path(world.meta, abspath=value))
    with pytest.raises(FileFormatError, match="abspath"):
        open_all(world.folder)


@pytest.mark.parametrize("name", [
    "dataset.json", "projections.npz", "rois/index.json", "signals/channel_0/index.json",
])
def test_our_own_files_as_fifos_or_devices_do_not_block(world, name) -> None:
    ds = ImagingDataset.load(world.folder)
    ds.add_ROIs([ROI(polygons=[[1, 1], [1, 5], [5, 5]], im_shape=(8, 10))], "cells")
    signal_store.save_signal_set(signal_store.store_dir(world.folder, 0),
                                 {"raw": [np.zeros((0, 6), np.float32)], "rois": []}, "s")
    target = world.folder / name
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    with no_hang():
        try:
            ds = ImagingDataset.load(world.folder)
            ds.ROIs, ds.signals(0), ds.provenance()
            ds.compute_projections()  # a broken cache is recomputed
        except READ_ERRORS as err:
            assert name.split("/")[-1] in str(err) and "regular file" in str(err)
    target.unlink()
    target.symlink_to("/dev/zero")
    with no_hang():
        try:
            ds = ImagingDataset.load(world.folder)
            ds.ROIs, ds.signals(0), ds.provenance()
            ds.compute_projections()
        except READ_ERRORS as err:
            assert "regular file" in str(err)


# ---------------------------------------------------------------------------------------
# Stored structures that would allocate without bound
# ---------------------------------------------------------------------------------------
def _derived(world, make: Any) -> Path:
    arr = Sequence.create("ndarray", MOVIE.astype(np.float32))
    n = len(list(world.root.glob("derived*.sima")))
    ds = ImagingDataset([make(arr)], str(world.root / f"derived{n}"))
    return Path(ds.savedir)


def test_displacements_file_names_only_a_file_of_the_dataset(world) -> None:
    folder = _derived(world, lambda s: s.apply_displacements(np.zeros((6, 1, 2), int)))
    meta = json.loads((folder / "dataset.json").read_text())
    name = meta["sequences"][0]["displacements_file"]
    # a traversal is reduced to its file name inside the dataset folder
    np.save(world.root / name, np.full((6, 1, 2), 3))
    meta["sequences"][0]["displacements_file"] = f"../../../../{name}"
    write_meta(folder, meta)
    seq = open_all(folder).sequences[0]
    assert int(seq.displacements.max()) == 0  # the dataset's own file, not the outside one
    (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=str(folder)):
        open_all(folder)
    os.mkfifo(folder / name)
    with no_hang(), pytest.raises(FileNotFoundError):
        open_all(folder)
    (folder / name).unlink()
    # a header claiming 10**12 values is refused before anything is allocated
    (folder / name).write_bytes(_npy("<i4", (10**12,), b"\0" * 48))
    with pytest.raises(ValueError, match="npy"):
        open_all(folder)
    (folder / name).write_bytes(_npy("<f8", (6, 1, 2), b"\0" * 96))
    with pytest.raises(ValueError, match="integer displacements"):
        open_all(folder)


def _npy(descr: str, shape: tuple, body: bytes) -> bytes:
    """A ``.npy`` file whose header says anything."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + body


def test_huge_stored_shapes_are_refused_before_allocating(world) -> None:
    folder = _derived(world, lambda s: s.mask([([0], None, [0])]))
    meta = json.loads((folder / "dataset.json").read_text())
    mask = meta["sequences"][0]["masks"][0]
    for shape in ([10**6, 10**6, 10**6], [-1, 8, 10], [1, 8], ["1", 8, 10]):
        mask["shape"] = shape
        write_meta(folder, meta)
        with pytest.raises(ValueError, match="mask"):
            open_all(folder)
    mask["shape"] = [1, 8, 10]
    mask["zyx_true"] = [10**15]
    write_meta(folder, meta)
    with pytest.raises(ValueError, match="outside"):
        open_all(folder)

    folder = _derived(world, lambda s: s[1:3])
    meta = json.loads((folder / "dataset.json").read_text())
    for times in ({"range": [0, 10**18, 1]}, {"range": [0, 10**30, 7]}, {"list": [0, 10**6]}):
        meta["sequences"][0]["times"] = times
        write_meta(folder, meta)
        with no_hang(), pytest.raises(ValueError, match="frames outside"):
            open_all(folder)
    meta["sequences"][0]["times"] = {"range": [0, 2, 1]}
    meta["sequences"][0]["region"] = [[0, 1, 1], [0, 10**18, 1], [0, 10, 1], [0, 2, 1]]
    write_meta(folder, meta)
    with no_hang(), pytest.raises(ValueError, match="outside"):
        open_all(folder)

    folder = _derived(world, lambda s: s.apply_displacements(np.zeros((6, 1, 2), int)))
    meta = json.loads((folder / "dataset.json").read_text())
    meta["sequences"][0]["extent"] = [1, 10**9, 10**9]
    write_meta(folder, meta)
    with pytest.raises(ResourceLimitError, match="frames of shape"):
        open_all(folder)
    meta["sequences"][0]["extent"] = [1, -8, 10]
    write_meta(folder, meta)
    with pytest.raises(ValueError, match="extent"):
        open_all(folder)


@pytest.mark.parametrize("field,value,match", [
    ("frame_shape", [1, 8, 10], "frame_shape"),
    ("frame_shape", [1, 8, 10, -2], "frame_shape"),
    ("frame_shape", [1, 8, 10, True], "frame_shape"),
    ("num_frames", 1e309, "num_frames"),
    ("num_frames", "6", "num_frames"),
    ("channel_names", ["a"], "channel_names"),
    ("channel_names", ["a", "a"], "channel_names"),
    ("channel_names", ["a", {"b": 1}], "channel_names"),
    ("sequences", [], "sequences"),
    ("sequences", ["movie.h5"], "sequences"),
    ("format_version", True, "format version"),
    ("format_version", 99, "format version"),
    ("provenance", ["x"], "provenance"),
])
def test_description_fields_are_checked_when_loading(world, field, value, match) -> None:
    meta = dict(world.meta)
    meta[field] = value
    (world.folder / "dataset.json").write_text(json.dumps(meta, allow_nan=True))
    with pytest.raises(FileFormatError, match=match) as info:
        ImagingDataset.load(world.folder)
    assert "dataset.json" in str(info.value)


def test_deeply_nested_description_is_refused(world) -> None:
    inner = json.dumps(world.meta["sequences"][0])
    deep = '{"kind": "indexed", "base": ' * 3000 + inner + "}" * 3000
    raw = json.dumps(dict(world.meta, sequences=["X"])).replace('"X"', deep)
    (world.folder / "dataset.json").write_text(raw)
    with no_hang(), pytest.raises(FileFormatError, match="nested too deeply"):
        open_all(world.folder)


# ---------------------------------------------------------------------------------------
# Set indexes: file names stay inside the store
# ---------------------------------------------------------------------------------------
def _set_file_victims(world) -> list[Path]:
    """Files a hostile index could name: outside the store, or the store's own files."""
    hexname = "set_" + "a" * 32 + ".npz"
    victims = [world.root / hexname, world.folder / hexname, world.victim]
    for v in victims[:2]:
        v.write_bytes(b"victim")
    return victims


@pytest.mark.parametrize("bad", [
    "../../set_" + "a" * 32 + ".npz", "../set_" + "a" * 32 + ".npz",
    "/tmp/set_" + "a" * 32 + ".npz", "index.json", "../../../victim.txt",
    "set_../../../victim.txt", "set_x.npz", None, 7, ["set_" + "a" * 32 + ".npz"],
])
@pytest.mark.parametrize("store", ["rois", "signals"])
def test_index_file_names_cannot_leave_the_store(world, bad, store) -> None:
    ds = ImagingDataset.load(world.folder)
    ds.add_ROIs([ROI(polygons=[[1, 1], [1, 5], [5, 5]], im_shape=(8, 10))], "cells")
    folder = signal_store.store_dir(world.folder, 0)
    signal_store.save_signal_set(folder, {"raw": [np.zeros((0, 6), np.float32)], "rois": []},
                                 "s")
    index_path = (world.folder / "rois" if store == "rois" else folder) / "index.json"
    index = json.loads(index_path.read_text())
    label = next(iter(index["sets"]))
    index["sets"][label]["file"] = bad
    index_path.write_text(json.dumps(index))
    victims = _set_file_victims(world)
    before = {v: v.read_bytes() for v in victims}
    with pytest.raises(FileFormatError, match="file"):
        ds.ROIs if store == "rois" else ds.signals(0)
    # writes refuse the damaged index too: nothing is deleted or replaced anywhere
    with pytest.raises(FileFormatError):
        if store == "rois":
            ds.add_ROIs([ROI(polygons=[[2, 2], [2, 6], [6, 6]], im_shape=(8, 10))], label)
        else:
            signal_store.save_signal_set(
                folder, {"raw": [np.zeros((0, 6), np.float32)], "rois": []}, label)
    with pytest.raises(FileFormatError):
        if store == "rois":
            ds.delete_ROIs(label)
        else:
            ds.delete_signals(label)
    assert {v: v.read_bytes() for v in victims} == before


def test_labels_that_look_like_paths_are_only_labels(world) -> None:
    before = outside(snapshot(world.root), "lab/ds.sima")
    ds = ImagingDataset.load(world.folder)
    rois = [ROI(polygons=[[1, 1], [1, 5], [5, 5]], im_shape=(8, 10), label="../../x")]
    for label in ("../../../evil", "/tmp/evil", "a/b\\c", "..", "nul\x00l"):
        ds.add_ROIs(rois, label)
        signal_store.save_signal_set(signal_store.store_dir(world.folder, 0),
                                     {"raw": [np.zeros((1, 6), np.float32)],
                                      "rois": [r.todict() for r in rois],
                                      "timestamp": "../../../t"}, label)
    again = ImagingDataset.load(world.folder)
    assert "../../../evil" in again.ROIs and "/tmp/evil" in again.signals(0)
    again.delete_ROIs("../../../evil")
    again.delete_signals("/tmp/evil")
    assert outside(snapshot(world.root), "lab/ds.sima") == before


# ---------------------------------------------------------------------------------------
# Everything we write stays inside the dataset folder
# ---------------------------------------------------------------------------------------
def test_every_write_of_a_hostile_dataset_stays_inside_it(world) -> None:
    """Movie outside, channel names like paths: every write goes to the dataset folder."""
    from napari_sima.core.segment.opca import dataset_opca

    meta = dict(world.meta, channel_names=["../../../../evil", "/tmp/evil"])
    write_meta(world.folder, meta)
    (world.folder / "projections.npz").symlink_to(world.victim)  # read, then replaced
    before = outside(snapshot(world.root), "lab/ds.sima")
    ds = open_all(world.folder)
    assert ds.channel_names == ["../../../../evil", "/tmp/evil"]
    ds.compute_projections()
    assert (world.folder / "projections.npz").is_file()
    assert not (world.folder / "projections.npz").is_symlink()
    dataset_opca(ds, "/tmp/evil", num_pcs=2)
    assert (world.folder / "opca_1.npz").is_file()
    label = ds.add_ROIs([ROI(polygons=[[1, 1], [1, 5], [5, 5]], im_shape=(8, 10))],
                        "../../../cells")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.extract(label, signal_channel="../../../../evil", label="../../../sig",
                   save_summary=True)
    assert list(world.folder.glob("extractSummary_*.png"))
    ds.sequences = ds.sequences + [
        Sequence.create("ndarray", MOVIE[:2].astype(np.float32)).apply_displacements(
            np.zeros((2, 1, 2), int))
    ]
    ds.save()
    assert list(world.folder.glob("seq_*.npy")) and list(world.folder.glob("displacements_*"))
    assert world.victim.read_text() == "precious"
    assert outside(snapshot(world.root), "lab/ds.sima") == before
    # and the dataset still opens
    again = open_all(world.folder)
    assert "../../../sig" in again.signals(0) and again.num_sequences == 2


def test_store_folders_linked_outside_make_the_dataset_read_only(world) -> None:
    elsewhere = world.root / "elsewhere"
    elsewhere.mkdir()
    (world.folder / "rois").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    with pytest.warns(UserWarning, match="read-only"):
        ds = ImagingDataset.load(world.folder)
    assert ds.read_only
    with pytest.raises(PermissionError):
        ds.add_ROIs([ROI(polygons=[[1, 1], [1, 5], [5, 5]], im_shape=(8, 10))], "cells")
    assert snapshot(elsewhere) == before
    # a link inside the dataset folder is fine
    (world.folder / "rois").unlink()
    (world.folder / "real_rois").mkdir()
    (world.folder / "rois").symlink_to(world.folder / "real_rois")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ImagingDataset.load(world.folder).read_only
    # signals/channel_<k> linked outside
    (world.folder / "signals").mkdir()
    (world.folder / "signals" / "channel_0").symlink_to(elsewhere)
    with pytest.warns(UserWarning, match="channel_0"):
        assert ImagingDataset.load(world.folder).read_only


def test_legacy_movie_paths_are_only_read(world) -> None:
    folder = world.root / "legacy.sima"
    folder.mkdir()
    (folder / "dataset.pkl").write_bytes(pickle.dumps({"channel_names": ["a", "b"]}, 2))
    for path in ("/etc/passwd", "../../../../../../etc/passwd"):
        (folder / "sequences.pkl").write_bytes(_legacy_hdf5_sequences(path))
        before = snapshot(world.root)
        with pytest.raises(READ_ERRORS, match="passwd"):
            load_legacy_dataset(folder)
        assert snapshot(world.root) == before
    (folder / "sequences.pkl").write_bytes(
        _legacy_hdf5_sequences(os.path.relpath(world.movies / "movie.h5", folder)))
    ds = load_legacy_dataset(folder)
    assert ds.read_only and ds.sequences[0].files == [str(world.movies / "movie.h5")]


def test_legacy_tiff_lists_resolve_against_the_dataset_not_the_cwd(world) -> None:
    import tifffile

    with fake_sima_modules({"sima.sequence": ["_Sequence_TIFFs"]}) as fake:
        paths = np.array([[["f0.tif"]], [["f1.tif"]]], dtype=object)
        data = pickle.dumps([{"__class__": fake["_Sequence_TIFFs"], "paths": paths}], 2)
    for t in range(2):
        tifffile.imwrite(world.movies / f"f{t}.tif", MOVIE[t, 0, :, :, 0])
    folder = world.root / "tiffs.sima"
    folder.mkdir()
    (folder / "dataset.pkl").write_bytes(pickle.dumps({"channel_names": ["a"]}, 2))
    (folder / "sequences.pkl").write_bytes(data)
    os.chdir(world.movies)  # "f0.tif" exists here, but a dataset never reads from the cwd
    with pytest.raises(FileNotFoundError, match=str(folder / "f0.tif")):
        load_legacy_dataset(folder)
    for t in range(2):
        os.replace(world.movies / f"f{t}.tif", folder / f"f{t}.tif")
    ds = load_legacy_dataset(folder)
    assert ds.sequences[0].files[0] == str(folder / "f0.tif")
    (folder / "f1.tif").unlink()
    os.mkfifo(folder / "f1.tif")
    with no_hang(), pytest.raises(FileNotFoundError, match="not a regular file"):
        load_legacy_dataset(folder)


def test_napari_reader_refuses_hostile_dataset_folders(world) -> None:
    from napari_sima._reader import get_reader

    write_meta(world.folder, with_movie_path(world.meta, abspath="/dev/zero"))
    reader = get_reader(str(world.folder))
    assert reader is not None
    with no_hang(), pytest.raises(READ_ERRORS, match="regular file"):
        reader(str(world.folder))
    assert load_roi_sets(world.folder) == {}


def test_stored_polygons_are_checked_but_not_simplified_again(world) -> None:
    from napari_sima.core import ROIList
    from napari_sima.core.storage import atomic_save_npz, load_npz

    ds = ImagingDataset.load(str(world.folder))
    square = ROI(polygons=[[1, 1], [3, 1], [5, 1], [5, 5], [1, 5]], label="a", id="7",
                 tags={"PV"})
    assert len(square.polygon_arrays[0]) == 4  # simplified when made
    ds.add_ROIs(ROIList([square]), "A")
    again = ds.ROIs["A"][0]
    np.testing.assert_array_equal(again.polygon_arrays[0], square.polygon_arrays[0])
    assert (again.label, again.id, again.tags) == ("a", "7", {"PV"})
    (npz,) = (Path(ds.savedir) / "rois").glob("set_*.npz")
    arrays = load_npz(npz)
    # a stored polygon with an extra collinear vertex is read as stored
    arrays["poly_vertices"] = np.array([[1, 1, 0], [3, 1, 0], [5, 1, 0], [5, 5, 0], [1, 5, 0]],
                                       float)
    arrays["poly_lengths"] = np.array([5])
    atomic_save_npz(npz, **arrays)
    assert len(ImagingDataset.load(ds.savedir).ROIs["A"][0].polygon_arrays[0]) == 5
    # ... but one enclosing no area, or not finite, is refused naming the file
    for bad in ([[1, 1, 0], [3, 1, 0], [5, 1, 0]], [[1, 1, 0], [3, np.nan, 0], [5, 5, 0]]):
        arrays["poly_vertices"] = np.array(bad, float)
        arrays["poly_lengths"] = np.array([3])
        atomic_save_npz(npz, **arrays)
        with pytest.raises(FileFormatError, match=r"set_.*\.npz.*polygon 0"):
            ImagingDataset.load(ds.savedir).ROIs["A"]
