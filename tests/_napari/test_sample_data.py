"""The sample-data contribution: a small synthetic two-sequence, two-channel dataset."""

from __future__ import annotations

import time

import numpy as np

from napari_sima._layers import METADATA_KEY, sima_metadata
from napari_sima._sample_data import (
    SAMPLE_CHANNELS,
    make_sample_data,
    sample_dataset,
    sample_movie,
)
from napari_sima.core import ImagingDataset
from napari_sima.core.lazy import LazyChannelArray

NAMES = [
    "calcium seq 0 [GCaMP]",
    "calcium seq 0 [tdTomato]",
    "calcium seq 1 [GCaMP]",
    "calcium seq 1 [tdTomato]",
]


def test_sample_dataset_matches_the_movie():
    movie = sample_movie()
    ds = sample_dataset(movie)
    assert isinstance(ds, ImagingDataset)
    assert ds.savedir is None
    assert ds.num_sequences == 2
    assert ds.channel_names == list(SAMPLE_CHANNELS)
    assert ds.frame_shape == (1, 128, 128, 2)
    assert len(movie.cells) >= 8
    for seq, array in zip(ds.sequences, movie.sequences, strict=True):
        np.testing.assert_array_equal(seq.read(range(10, 12)), array[10:12])
    # the functional channel has transients, the structural one is static
    spikes = movie.true_spikes(0)
    assert spikes.sum() > 0


def test_make_sample_data_is_fast_and_lazy():
    make_sample_data()  # warm up imports
    start = time.perf_counter()
    layers = make_sample_data()
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"the sample took {elapsed:.2f} s"
    assert [k["name"] for _, k, _ in layers] == NAMES
    for data, kwargs, layer_type in layers:
        assert layer_type == "image"
        assert isinstance(data, LazyChannelArray)
        assert data.shape == (200, 1, 128, 128)
        assert kwargs["axis_labels"] == ("t", "z", "y", "x")
        lo, hi = kwargs["contrast_limits"]
        assert 0 <= lo < hi
    assert [k["colormap"] for _, k, _ in layers] == ["green", "magenta"] * 2


def test_open_sample_in_viewer(viewer):
    viewer.open_sample("napari-sima", "calcium")
    assert [layer.name for layer in viewer.layers] == NAMES
    metas = [sima_metadata(layer) for layer in viewer.layers]
    assert all(m is not None for m in metas)
    datasets = {id(m["dataset"]) for m in metas}
    assert len(datasets) == 1
    ds = metas[0]["dataset"]
    assert ds.channel_names == list(SAMPLE_CHANNELS)
    assert [m["sequence"] for m in metas] == [ds.sequences[i] for i in (0, 0, 1, 1)]
    assert METADATA_KEY in viewer.layers[0].metadata
    assert [layer.visible for layer in viewer.layers] == [True, True, False, False]
