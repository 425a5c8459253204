"""The napari reader: TIFF, HDF5 and dataset folders become lazy image layers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sima._layers import (
    CONTRAST_PERCENTILES,
    METADATA_KEY,
    sample_frame_indices,
    sima_metadata,
)
from napari_sima._reader import MovieOptions, get_reader, open_source, read_path
from napari_sima.core import ImagingDataset, Sequence
from napari_sima.core.lazy import LazyChannelArray


def expected_limits(movie_tyx: np.ndarray) -> tuple[float, float]:
    frames = movie_tyx[sample_frame_indices(len(movie_tyx))].astype(float)
    lo, hi = np.percentile(frames, CONTRAST_PERCENTILES)
    return float(lo), float(hi)


def read(path):
    reader = get_reader(str(path))
    assert callable(reader), f"no reader for {path}"
    return reader(str(path))


# ----------------------------------------------------------------------------- TIFF
def test_plain_tiff_one_lazy_layer(tmp_path, movie_tyx):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie_tyx)
    layers = read(path)
    assert len(layers) == 1
    data, kwargs, layer_type = layers[0]
    assert layer_type == "image"
    assert kwargs["name"] == "movie"
    assert isinstance(data, LazyChannelArray) and not isinstance(data, np.ndarray)
    assert data.shape == (12, 1, 24, 32)
    assert kwargs["axis_labels"] == ("t", "z", "y", "x")
    assert kwargs["colormap"] == "gray"
    np.testing.assert_allclose(kwargs["contrast_limits"], expected_limits(movie_tyx))
    np.testing.assert_array_equal(data[3, 0], movie_tyx[3])
    meta = kwargs["metadata"][METADATA_KEY]
    assert meta["source"] == str(path)
    assert meta["channel"] == 0 and meta["sequence_index"] == 0
    assert isinstance(meta["dataset"], ImagingDataset)
    assert meta["sequence"] is meta["dataset"].sequences[0]


def test_imagej_hyperstack_channels_from_metadata(tmp_path, rng):
    movie = rng.integers(0, 4000, size=(6, 3, 2, 20, 28), dtype=np.uint16)  # TZCYX
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TZCYX"})
    layers = read(path)
    assert [k["name"] for _, k, _ in layers] == ["stack [0]", "stack [1]"]
    for c, (data, kwargs, _) in enumerate(layers):
        assert isinstance(data, LazyChannelArray)
        assert data.shape == (6, 3, 20, 28)
        assert kwargs["blending"] == "additive"
        np.testing.assert_array_equal(data[4], movie[4, :, c])
        lo, hi = kwargs["contrast_limits"]
        assert 0 <= lo < hi <= 4000
    assert [k["colormap"] for _, k, _ in layers] == ["green", "magenta"]
    datasets = {id(k["metadata"][METADATA_KEY]["dataset"]) for _, k, _ in layers}
    assert len(datasets) == 1, "the channels of one movie share one dataset"


def test_text_file_named_tif_is_refused(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not an image")
    assert get_reader(str(path)) is None
    empty = tmp_path / "empty.tiff"
    empty.write_bytes(b"")
    assert get_reader(str(empty)) is None


def test_other_suffix_and_plain_folder_are_refused(tmp_path, movie_tyx):
    other = tmp_path / "movie.npy"
    np.save(other, movie_tyx)
    assert get_reader(str(other)) is None
    folder = tmp_path / "plain.sima"
    folder.mkdir()
    (folder / "readme.txt").write_text("no dataset here")
    assert get_reader(str(folder)) is None
    assert get_reader(str(tmp_path)) is None


# ----------------------------------------------------------------------------- HDF5
def test_hdf5_with_labels(tmp_path, rng, notifications, write_h5):
    movie = rng.integers(0, 255, size=(8, 2, 16, 20, 2), dtype=np.uint8)
    path = write_h5(tmp_path / "vol.h5", movie, labels="tzyxc")
    layers = read(path)
    assert [k["name"] for _, k, _ in layers] == ["vol [0]", "vol [1]"]
    for c, (data, kwargs, _) in enumerate(layers):
        assert isinstance(data, LazyChannelArray)
        assert data.shape == (8, 2, 16, 20)
        np.testing.assert_array_equal(data[5, 1], movie[5, 1, ..., c])
        assert kwargs["metadata"][METADATA_KEY]["open_options"]["dim_order"] == "tzyxc"
    assert notifications.messages("info") == []


@pytest.mark.parametrize(
    ("shape", "expected_dim_order", "layer_shape"),
    [((5, 16, 20), "tyx", (5, 1, 16, 20)), ((5, 3, 16, 20), "tzyx", (5, 3, 16, 20))],
)
def test_hdf5_without_labels_uses_documented_rule(
    tmp_path, rng, notifications, write_h5, shape, expected_dim_order, layer_shape
):
    movie = rng.integers(0, 1000, size=shape, dtype=np.uint16)
    path = write_h5(tmp_path / "nolabels.h5", movie)
    layers = read(path)
    assert len(layers) == 1
    data, kwargs, _ = layers[0]
    assert data.shape == layer_shape
    assert kwargs["metadata"][METADATA_KEY]["open_options"]["dim_order"] == expected_dim_order
    infos = notifications.messages("info")
    assert len(infos) == 1
    assert expected_dim_order in infos[0] and "Dataset widget" in infos[0]


def test_hdf5_options_and_several_datasets(tmp_path, rng):
    import h5py

    movie = rng.integers(0, 1000, size=(16, 20, 7), dtype=np.uint16)  # y, x, t
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a_small"] = np.zeros(3)
        f["movie"] = movie
    opened = open_source(path)
    assert opened.options.key == "movie"
    assert any("'movie'" in n for n in opened.notices)
    opened = open_source(path, MovieOptions(key="movie", dim_order="yxt"))
    assert opened.dataset.sequences[0].shape == (7, 1, 16, 20, 1)
    np.testing.assert_array_equal(opened.dataset.sequences[0].lazy_channel(0)[2, 0], movie[..., 2])
    with pytest.raises(ValueError, match="dim_order"):
        open_source(path, MovieOptions(key="movie", dim_order="tyxc"))


def test_text_file_named_h5_is_refused(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_text("hello")
    assert get_reader(str(path)) is None


# ----------------------------------------------------------------------------- folders
def test_sima_folder_layers_per_sequence_and_channel(tmp_path, rng):
    arrays = [rng.integers(0, 500, size=(9, 1, 12, 14, 2), dtype=np.uint16) for _ in range(2)]
    seqs = [Sequence.create("ndarray", a, "tzyxc") for a in arrays]
    ds = ImagingDataset(seqs, tmp_path / "session", channel_names=["green", "red"])
    layers = read(ds.savedir)
    names = [k["name"] for _, k, _ in layers]
    assert names == [
        "session seq 0 [green]",
        "session seq 0 [red]",
        "session seq 1 [green]",
        "session seq 1 [red]",
    ]
    assert [k["visible"] for _, k, _ in layers] == [True, True, False, False]
    for i, (data, kwargs, _) in enumerate(layers):
        meta = kwargs["metadata"][METADATA_KEY]
        seq_index, channel = divmod(i, 2)
        assert (meta["sequence_index"], meta["channel"]) == (seq_index, channel)
        assert meta["source"] == ds.savedir
        assert data.shape == (9, 1, 12, 14)
        np.testing.assert_array_equal(data[4], arrays[seq_index][4, ..., channel])
    loaded = {id(k["metadata"][METADATA_KEY]["dataset"]) for _, k, _ in layers}
    assert len(loaded) == 1


def test_broken_dataset_folder_reports_missing_movie(tmp_path, movie_tyx):
    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, movie_tyx)
    ds = ImagingDataset([Sequence.create("TIFF", movie)], tmp_path / "broken")
    movie.unlink()
    reader = get_reader(ds.savedir)
    assert callable(reader)  # it is a dataset folder ...
    with pytest.raises(FileNotFoundError, match="m.tif"):  # ... whose movie is gone
        reader(ds.savedir)


# ----------------------------------------------------------------------------- viewer
def test_viewer_open_adds_lazy_layers(viewer, tmp_path, rng):
    movie = rng.integers(0, 4000, size=(5, 2, 2, 16, 18), dtype=np.uint16)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TZCYX"})
    layers = viewer.open(str(path), plugin="napari-sima")
    assert [layer.name for layer in viewer.layers] == ["hyper [0]", "hyper [1]"]
    for layer in layers:
        assert isinstance(layer.data, LazyChannelArray)
        assert tuple(layer.axis_labels) == ("t", "z", "y", "x")
        assert layer.blending == "additive"
        assert sima_metadata(layer)["sequence"] is not None
    assert viewer.dims.axis_labels == ("t", "z", "y", "x")
    viewer.dims.set_current_step(0, 3)
    viewer.dims.set_current_step(1, 1)
    layer = viewer.layers["hyper [1]"]
    np.testing.assert_array_equal(np.asarray(layer._slice.image.view), movie[3, 1, 1])


def test_real_example_files(examples, notifications):
    layers = read_path(examples / "example.tif")
    assert len(layers) == 1 and layers[0][0].shape == (20, 1, 128, 256)
    layers = read_path(examples / "example-volume.h5")
    assert [k["name"] for _, k, _ in layers] == ["example-volume [0]", "example-volume [1]"]
    assert layers[0][0].shape == (10, 3, 64, 64)
    # example.h5 is (y, x, t) without labels: the rule reads it as 'tyx' and says so
    layers = read_path(examples / "example.h5")
    assert layers[0][0].shape == (128, 1, 256, 20)
    assert any("'tyx'" in m for m in notifications.messages("info"))
    fixed = open_source(examples / "example.h5", MovieOptions(dim_order="yxt"))
    assert fixed.dataset.sequences[0].shape == (20, 1, 128, 256, 1)
    tif = open_source(examples / "example.tif").dataset.sequences[0]
    np.testing.assert_array_equal(
        fixed.dataset.sequences[0].read(range(3, 4)), tif.read(range(3, 4))
    )


def test_real_legacy_sima_folder(examples):
    reader = get_reader(str(examples / "example.sima"))
    assert callable(reader)
    with pytest.warns(UserWarning, match="dropped"):  # SIMA's own example: 3 seqs, 1 disp.
        layers = reader(str(examples / "example.sima"))
    assert layers and all(isinstance(d, LazyChannelArray) for d, _, _ in layers)
    assert all(k["name"].startswith("example") for _, k, _ in layers)
