"""Tests for the synthetic calcium-imaging movie generator."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.signal import lfilter

from napari_sima.core import synthetic
from napari_sima.core.synthetic import SyntheticCell, SyntheticMovie, make_calcium_movie

SMALL = dict(num_frames=60, frame_shape=(1, 64, 64, 2), num_sequences=2, num_cells=5)


def _mask_traces(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean over each mask of frames (t, y, x) -> (n, t)."""
    flat = frames.reshape(frames.shape[0], -1).astype(np.float64)
    weights = masks.reshape(masks.shape[0], -1).astype(np.float64)
    return (weights @ flat.T) / weights.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def default_movie() -> SyntheticMovie:
    return make_calcium_movie()


# -- shapes, dtypes, bookkeeping ---------------------------------------------------


def test_default_shapes_and_dtype(default_movie):
    movie = default_movie
    assert isinstance(movie, SyntheticMovie)
    assert movie.num_sequences == 2
    assert movie.frame_shape == (1, 128, 128, 2)
    assert movie.num_frames == 200
    for seq in movie.sequences:
        assert seq.shape == (200, 1, 128, 128, 2)
        assert seq.dtype == np.uint16
    assert movie.num_cells == len(movie.cells) == 12
    assert all(isinstance(cell, SyntheticCell) for cell in movie.cells)
    assert movie.gamma == 0.95
    assert movie.frame_rate == 10.0
    assert movie.noise_sigma == 20.0
    assert movie.baseline == 200.0
    assert movie.seed == 0
    assert movie.true_masks().shape == (12, 1, 128, 128)
    assert movie.true_masks().dtype == bool
    assert movie.true_masks(plane=0).shape == (12, 128, 128)
    assert movie.true_footprints(plane=0).shape == (12, 128, 128)
    for s in range(2):
        assert movie.true_spikes(s).shape == (12, 200)
        assert movie.true_calcium(s).shape == (12, 200)
    assert movie.background.shape == (1, 128, 128, 2)
    assert movie.background_modulation[0].shape == (200, 1, 2)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_dtypes(dtype):
    movie = make_calcium_movie(**SMALL, dtype=dtype)
    assert all(seq.dtype == np.dtype(dtype) for seq in movie.sequences)


def test_float_output_is_not_rounded_and_integer_output_is_clipped():
    movie = make_calcium_movie(**SMALL, dtype="float32")
    assert not np.all(movie.sequences[0] == np.round(movie.sequences[0]))
    bright = make_calcium_movie(**SMALL, brightness=1e6, spike_rate=2.0, dtype="uint16")
    assert bright.sequences[0].max() == np.iinfo(np.uint16).max
    small = make_calcium_movie(**SMALL, dtype="uint8")
    assert small.sequences[0].max() == 255 and small.sequences[0].min() >= 0


@pytest.mark.parametrize(
    "frame_shape", [(1, 40, 50, 1), (3, 48, 64, 2), (2, 32, 32, 3), (1, 16, 16, 1)]
)
def test_frame_shapes(frame_shape):
    movie = make_calcium_movie(
        num_frames=7, frame_shape=frame_shape, num_sequences=1, num_cells=4, cell_radius=3.0
    )
    assert movie.sequences[0].shape == (7, *frame_shape)
    assert movie.frame_shape == frame_shape
    assert movie.true_masks().shape == (4, *frame_shape[:3])


def test_single_frame_and_zero_cells():
    movie = make_calcium_movie(num_frames=1, num_cells=0, num_sequences=1)
    assert movie.sequences[0].shape == (1, 1, 128, 128, 2)
    assert movie.cells == []
    assert movie.true_masks().shape == (0, 1, 128, 128)
    assert movie.true_masks(0).shape == (0, 128, 128)
    assert movie.true_spikes(0).shape == (0, 1)


def test_cells_distributed_over_planes():
    movie = make_calcium_movie(
        num_frames=10, frame_shape=(3, 64, 64, 1), num_sequences=1, num_cells=10, cell_radius=4
    )
    counts = np.bincount(movie.cell_planes, minlength=3)
    assert counts.tolist() == [4, 3, 3]
    total = 0
    for z in range(3):
        idx = movie.cells_in_plane(z)
        total += len(idx)
        assert movie.true_masks(plane=z).shape == (len(idx), 64, 64)
        assert movie.true_spikes(0, plane=z).shape == (len(idx), 10)
        np.testing.assert_array_equal(movie.true_spikes(0, plane=z), movie.true_spikes(0)[idx])
        for row, i in enumerate(idx):
            np.testing.assert_array_equal(movie.true_masks(plane=z)[row], movie.cells[i].mask)
    assert total == 10
    with pytest.raises(IndexError, match="plane 3 out of range"):
        movie.true_masks(plane=3)
    with pytest.raises(IndexError, match="sequence 1 out of range"):
        movie.true_spikes(1)


# -- determinism -----------------------------------------------------------------


def test_same_seed_identical():
    a = make_calcium_movie(**SMALL, seed=7)
    b = make_calcium_movie(**SMALL, seed=7)
    for sa, sb in zip(a.sequences, b.sequences, strict=True):
        np.testing.assert_array_equal(sa, sb)
    for ca, cb in zip(a.cells, b.cells, strict=True):
        assert ca.center == cb.center and ca.radii == cb.radii
        assert ca.brightness == cb.brightness
        np.testing.assert_array_equal(ca.footprint, cb.footprint)
        for s in range(2):
            np.testing.assert_array_equal(ca.spikes[s], cb.spikes[s])
    np.testing.assert_array_equal(a.background, b.background)


def test_different_seed_differs():
    a = make_calcium_movie(**SMALL, seed=1)
    b = make_calcium_movie(**SMALL, seed=2)
    assert not np.array_equal(a.sequences[0], b.sequences[0])
    assert [c.center for c in a.cells] != [c.center for c in b.cells]
    assert not np.array_equal(a.true_spikes(0), b.true_spikes(0))


def test_sequences_share_cells_but_not_spikes():
    movie = make_calcium_movie(**SMALL, spike_rate=2.0)
    assert not np.array_equal(movie.true_spikes(0), movie.true_spikes(1))
    assert not np.array_equal(movie.sequences[0], movie.sequences[1])
    # sequence 0 does not depend on how many sequences are generated
    single = make_calcium_movie(**{**SMALL, "num_sequences": 1}, spike_rate=2.0)
    np.testing.assert_array_equal(single.sequences[0], movie.sequences[0])
    np.testing.assert_array_equal(single.true_spikes(0), movie.true_spikes(0))


def test_threading_does_not_change_output(monkeypatch):
    kwargs = dict(num_frames=300, frame_shape=(2, 64, 96, 2), num_sequences=1, num_cells=6)
    monkeypatch.setattr(synthetic, "_CHUNK_ELEMENTS", 64 * 96 * 2 * 16)
    monkeypatch.setattr(synthetic, "_MAX_WORKERS", 1)
    serial = make_calcium_movie(**kwargs)
    monkeypatch.setattr(synthetic, "_MAX_WORKERS", 3)
    monkeypatch.setattr(synthetic, "_PARALLEL_MIN_ELEMENTS", 0)
    threaded = make_calcium_movie(**kwargs)
    np.testing.assert_array_equal(serial.sequences[0], threaded.sequences[0])


# -- ground truth ----------------------------------------------------------------


def test_calcium_is_ar1_filter_of_spikes(default_movie):
    movie = default_movie
    for s in range(movie.num_sequences):
        spikes = movie.true_spikes(s)
        assert np.all(spikes >= 0) and np.all(spikes == np.round(spikes))
        expected = lfilter([1.0], [1.0, -movie.gamma], spikes, axis=1)
        np.testing.assert_allclose(movie.true_calcium(s), expected, rtol=1e-12, atol=1e-12)
        for i, cell in enumerate(movie.cells):
            np.testing.assert_array_equal(cell.spikes[s], spikes[i])
            np.testing.assert_array_equal(cell.calcium[s], movie.true_calcium(s)[i])


def test_spike_rate_matches():
    movie = make_calcium_movie(
        num_frames=2000, frame_shape=(1, 64, 64, 1), num_sequences=2, num_cells=8,
        cell_radius=4.0, spike_rate=1.5, frame_rate=15.0,
    )  # fmt: skip
    spikes = np.concatenate([movie.true_spikes(s) for s in range(2)], axis=1)
    expected = 1.5 / 15.0
    assert abs(spikes.mean() - expected) < 0.1 * expected
    # independent across cells
    corr = np.corrcoef(spikes)
    assert np.abs(corr[np.triu_indices(8, 1)]).max() < 0.1


def test_zero_spike_rate_gives_zero_calcium():
    movie = make_calcium_movie(**SMALL, spike_rate=0.0)
    assert not movie.true_spikes(0).any() and not movie.true_calcium(1).any()


def test_footprints_and_masks(default_movie):
    movie = default_movie
    _, rows, cols, _ = movie.frame_shape
    for cell in movie.cells:
        fp, mask = cell.footprint, cell.mask
        assert fp.shape == mask.shape == (rows, cols)
        assert mask.dtype == bool
        assert fp.min() >= 0.0 and fp.max() == pytest.approx(1.0)
        np.testing.assert_array_equal(mask, fp > 0.5)
        z, cy, cx = cell.center
        assert z == cell.plane == 0
        ry, rx = cell.radii
        assert 5.0 <= ry <= 7.0 and 5.0 <= rx <= 7.0
        assert mask[int(round(cy)), int(round(cx))]
        # the mask is the filled ellipse, strictly inside the frame
        assert mask.sum() == pytest.approx(np.pi * ry * rx, rel=0.15)
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        # compact support: zero far from the cell
        ys, xs = np.nonzero(fp)
        assert np.abs(ys - cy).max() <= 2 * ry and np.abs(xs - cx).max() <= 2 * rx
        # soft edge
        assert np.any((fp > 0.05) & (fp < 0.95))
        assert len(cell.channel_weights) == 2 and cell.channel_weights[0] == 1.0
        assert 600.0 <= cell.brightness <= 1200.0


def test_ground_truth_is_read_only(default_movie):
    cell = default_movie.cells[0]
    with pytest.raises(ValueError):
        cell.mask[0, 0] = True
    with pytest.raises(ValueError):
        cell.spikes[0][0] = 5
    # stacked copies are writable
    masks = default_movie.true_masks(0)
    masks[0, 0, 0] = True


def test_minimum_separation(default_movie):
    centers = np.array([c.center[1:] for c in default_movie.cells])
    dist = np.hypot(*(centers[:, None] - centers[None]).transpose(2, 0, 1))
    dist[np.diag_indices(len(centers))] = np.inf
    assert dist.min() >= 1.2 * 6.0
    movie = make_calcium_movie(**SMALL, min_separation=20.0)
    centers = np.array([c.center[1:] for c in movie.cells])
    dist = np.hypot(*(centers[:, None] - centers[None]).transpose(2, 0, 1))
    dist[np.diag_indices(len(centers))] = np.inf
    assert dist.min() >= 20.0


def test_no_overlap():
    movie = make_calcium_movie(
        num_frames=5, frame_shape=(1, 96, 96, 1), num_sequences=1, num_cells=25,
        allow_overlap=False,
    )  # fmt: skip
    assert movie.true_masks(0).sum(axis=0).max() == 1


def test_expected_movie_reconstructs_mean_and_noise_is_as_specified():
    movie = make_calcium_movie(num_frames=100, num_sequences=1, dtype="float32")
    residual = movie.sequences[0] - movie.expected_movie(0)
    expected = movie.expected_movie(0)
    z = residual / np.sqrt(movie.noise_sigma**2 + expected)
    assert abs(z.mean()) < 0.01
    assert z.std() == pytest.approx(1.0, abs=0.01)
    # without shot noise the residual std is the read noise
    flat = make_calcium_movie(num_frames=100, num_sequences=1, dtype="float32", shot_noise=False)
    res = flat.sequences[0] - flat.expected_movie(0)
    assert res.std() == pytest.approx(20.0, rel=0.01)
    # and without any noise the movie is the expected movie
    clean = make_calcium_movie(
        num_frames=30, num_sequences=1, dtype="float32", shot_noise=False, noise_sigma=0.0
    )
    np.testing.assert_array_equal(clean.sequences[0], clean.expected_movie(0))


def test_expected_movie_follows_model():
    movie = make_calcium_movie(
        num_frames=40, frame_shape=(2, 48, 48, 2), num_sequences=1, num_cells=4,
        cell_radius=4.0, background_modulation=0.0, spike_rate=3.0,
    )  # fmt: skip
    expected = movie.expected_movie(0).astype(np.float64)
    calcium = movie.true_calcium(0)
    model = np.broadcast_to(movie.background, expected.shape).copy()
    for i, cell in enumerate(movie.cells):
        model[:, cell.plane, :, :, 0] += (
            cell.brightness * calcium[i][:, None, None] * cell.footprint
        )
        model[:, cell.plane, :, :, 1] += cell.brightness * cell.channel_weights[1] * cell.footprint
    np.testing.assert_allclose(expected, model, rtol=1e-4, atol=1e-2)
    # the structural channel is static
    np.testing.assert_array_equal(
        expected[:, ..., 1], np.broadcast_to(expected[:1, ..., 1], expected[..., 1].shape)
    )


def test_background_is_textured_with_requested_mean():
    movie = make_calcium_movie(num_frames=300, num_sequences=1, num_cells=0, baseline=150.0)
    bg = movie.background
    assert bg.mean() == pytest.approx(150.0, rel=1e-4)
    assert bg.std() > 0.1 * 150.0  # spatially varying
    assert bg.min() > 0
    modulation = movie.background_modulation[0]
    assert 0.01 < modulation.std() < 0.15
    # slow: neighbouring frames are strongly correlated
    m = modulation[:, 0, 0]
    assert np.corrcoef(m[1:], m[:-1])[0, 1] > 0.9
    frame_means = movie.sequences[0][..., 0].mean(axis=(1, 2, 3))
    assert np.corrcoef(frame_means, 150.0 * (1 + m))[0, 1] > 0.95


def test_functional_channel_tracks_calcium_structural_does_not():
    movie = make_calcium_movie(
        num_frames=1000, frame_shape=(1, 96, 96, 2), num_sequences=1, num_cells=8,
        noise_sigma=2.0, background_modulation=0.0, allow_overlap=False, spike_rate=1.0,
    )  # fmt: skip
    masks = movie.true_masks(plane=0)
    calcium = movie.true_calcium(0)
    frames = movie.sequences[0][:, 0]
    functional = _mask_traces(frames[..., 0], masks)
    structural = _mask_traces(frames[..., 1], masks)
    for i in range(movie.num_cells):
        assert np.corrcoef(functional[i], calcium[i])[0, 1] > 0.9
        assert abs(np.corrcoef(structural[i], calcium[i])[0, 1]) < 0.15
        # the structural channel shows the cell as a bright static object
        weight = movie.cells[i].channel_weights[1]
        inside = structural[i].mean() - movie.background[0][masks[i], 1].mean()
        assert inside > 0.5 * weight * movie.cells[i].brightness


def test_cells_only_appear_in_their_plane():
    movie = make_calcium_movie(
        num_frames=200, frame_shape=(2, 64, 64, 1), num_sequences=1, num_cells=6,
        cell_radius=4.0, noise_sigma=2.0, background_modulation=0.0, spike_rate=1.0,
    )  # fmt: skip
    masks = movie.true_masks()
    calcium = movie.true_calcium(0)
    seq = movie.sequences[0][..., 0]
    for i, cell in enumerate(movie.cells):
        other = 1 - cell.plane
        np.testing.assert_array_equal(masks[i, other], False)
        own = _mask_traces(seq[:, cell.plane], masks[i, cell.plane][None])[0]
        there = _mask_traces(seq[:, other], masks[i, cell.plane][None])[0]
        assert np.corrcoef(own, calcium[i])[0, 1] > 0.9
        if there.std() > 0:
            assert abs(np.corrcoef(there, calcium[i])[0, 1]) < 0.5


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frame_shape": (128, 128)}, "frame_shape must be 4 positive integers"),
        ({"frame_shape": (1, 0, 128, 1)}, "frame_shape must be 4 positive integers"),
        ({"frame_shape": (1, 64.5, 128, 1)}, "frame_shape must be 4 positive integers"),
        ({"frame_shape": "1234"}, "frame_shape must be 4 positive integers"),
        ({"num_frames": 0}, "num_frames must be >= 1"),
        ({"num_frames": 2.5}, "num_frames must be an integer"),
        ({"num_sequences": 0}, "num_sequences must be >= 1"),
        ({"num_cells": -1}, "num_cells must be >= 0"),
        ({"gamma": 1.0}, r"gamma must be in the open interval \(0, 1\)"),
        ({"gamma": 0.0}, r"gamma must be in the open interval \(0, 1\)"),
        ({"gamma": float("nan")}, "gamma must be finite"),
        ({"spike_rate": -1.0}, "spike_rate must be >= 0"),
        ({"frame_rate": 0.0}, "frame_rate must be > 0"),
        ({"noise_sigma": -1.0}, "noise_sigma must be >= 0"),
        ({"baseline": -5.0}, "baseline must be >= 0"),
        ({"brightness": (10.0, 5.0)}, "min <= max"),
        ({"brightness": (1.0, 2.0, 3.0)}, r"brightness must be a number or a \(min, max\) pair"),
        ({"cell_radius": 0.5}, "cell_radius must be >= 1"),
        ({"min_separation": -1.0}, "min_separation must be >= 0"),
        ({"dtype": "complex64"}, "integer or floating-point dtype"),
        ({"dtype": "bool"}, "integer or floating-point dtype"),
        ({"dtype": "not-a-dtype"}, "not a numpy dtype"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"seed": None}, "seed must be an integer"),
        ({"shot_noise": "yes"}, "shot_noise must be True or False"),
        ({"background_modulation": -0.1}, "background_modulation must be >= 0"),
        ({"frame_shape": (1, 12, 128, 1)}, "do not fit"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_calcium_movie(**{"num_frames": 5, **kwargs})


def test_cells_that_cannot_be_placed():
    with pytest.raises(ValueError, match="could not place cell .* after .* attempts"):
        make_calcium_movie(num_frames=5, frame_shape=(1, 32, 32, 1), num_cells=50)
    with pytest.raises(ValueError, match="without overlapping masks"):
        make_calcium_movie(
            num_frames=5, frame_shape=(1, 40, 40, 1), num_cells=12, allow_overlap=False
        )
    # the same number of cells fits when spread over planes
    movie = make_calcium_movie(
        num_frames=5, frame_shape=(4, 40, 40, 1), num_cells=12, allow_overlap=False
    )
    assert movie.num_cells == 12


# -- performance and isolation ---------------------------------------------------


def test_default_call_runtime():
    make_calcium_movie()  # warm up (imports, lookup table)
    start = time.perf_counter()
    make_calcium_movie()
    elapsed = time.perf_counter() - start
    print(f"make_calcium_movie() took {elapsed:.3f} s")
    assert elapsed < 5.0


def test_core_module_does_not_import_gui_packages():
    code = (
        "import sys, napari_sima.core.synthetic as s; s.make_calcium_movie(num_frames=3);"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'pyqtgraph')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
