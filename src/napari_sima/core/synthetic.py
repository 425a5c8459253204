"""Deterministic synthetic two-photon calcium-imaging movies with exact ground truth.

The generator in this module produces multi-sequence, multi-plane, multi-channel
movies shaped like SIMA datasets (``(t, z, y, x, c)`` per sequence) together with
the complete generative model: every cell's footprint, boolean "true ROI" mask,
spike train and calcium trace, the background image and its slow modulation.
From these the noiseless movie can be re-rendered exactly
(:meth:`SyntheticMovie.expected_movie`), so the output can be used to score
segmentation (masks) and spike inference (spikes / calcium).

Generative model
----------------
For a cell ``k`` living in plane ``z_k`` with footprint ``a_k(y, x)`` (peak 1),
brightness ``b_k`` and channel weights ``w_k``::

    s_k[t] ~ Poisson(spike_rate / frame_rate)          (spikes per frame)
    c_k[t] = gamma * c_k[t - 1] + s_k[t],  c_k[-1] = 0  (AR(1) calcium)

    E[t, z, y, x, 0] = B[z, y, x, 0] * (1 + m[t, z, 0])
                       + sum_{k in z} a_k * b_k * w_k[0] * c_k[t]
    E[t, z, y, x, j] = B[z, y, x, j] * (1 + m[t, z, j])
                       + sum_{k in z} a_k * b_k * w_k[j]          (j >= 1)

    F = E + N(0, noise_sigma**2) + shot noise of variance E

Channel 0 is the functional (GCaMP-like) channel, channels ``>= 1`` are static
structural (tdTomato-like) channels. ``B`` is a spatially varying neuropil-like
background with mean ``baseline`` and ``m`` a slow, zero-mean relative
modulation (independent per sequence, plane and channel).

This module is part of the headless core: it depends only on numpy and scipy.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import DTypeLike, NDArray
from scipy import ndimage, signal, special

__all__ = ["SyntheticCell", "SyntheticMovie", "make_calcium_movie"]

# Footprint shape: f(d) = 2 ** -(d ** (2 * _EDGE_POWER)), d = elliptical radius in
# units of the cell radii, so f = 0.5 exactly on the ellipse; values below
# _FOOTPRINT_FLOOR are set to 0 so that footprints have compact support.
_EDGE_POWER = 3
_FOOTPRINT_FLOOR = 1e-3
# Neuropil texture: relative amplitudes and Gaussian scales (pixels).
_TEXTURE_COARSE = (0.20, 12.0)
_TEXTURE_FINE = (0.10, 2.0)
_TEXTURE_MIN = 0.2
# Time constant (seconds) of the slow background modulation.
_MODULATION_TAU_S = 2.0
# Structural channel weights are drawn uniformly from this range.
_STRUCTURAL_WEIGHT = (0.4, 1.0)
# Placement: random attempts per cell, drawn in batches.
_PLACEMENT_ATTEMPTS = 4096
_PLACEMENT_BATCH = 256
# Rendering: float32 elements per chunk, and the total size above which chunks
# are rendered by a thread pool (results do not depend on the number of threads).
_CHUNK_ELEMENTS = 1 << 22
_PARALLEL_MIN_ELEMENTS = 1 << 24
_MAX_WORKERS: int | None = None
_LOOKUP_BLOCK = 1 << 15
# Independent random streams, derived from the seed with SeedSequence spawn keys.
_STREAM_CELLS = 0
_STREAM_PLACEMENT = 1
_STREAM_BACKGROUND = 2
_STREAM_MODULATION = 3
_STREAM_SPIKES = 4
_STREAM_NOISE = 5


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class SyntheticCell:
    """Ground truth of one synthetic cell.

    Parameters
    ----------
    center : tuple of float
        ``(z, y, x)`` centre in pixels; ``z`` equals :attr:`plane`.
    radii : tuple of float
        ``(ry, rx)`` semi-axes of the (axis-aligned) elliptical cell body, in pixels.
    footprint : numpy.ndarray
        Float32 array ``(y, x)`` over the whole plane, values in ``[0, 1]``, peak 1.
        A soft-edged ellipse equal to 0.5 on the ellipse boundary and exactly 0
        far from it.
    mask : numpy.ndarray
        Boolean ``(y, x)`` array, ``footprint > 0.5``: the "true ROI".
    plane : int
        Index of the plane the cell lives in.
    spikes : list of numpy.ndarray
        One float64 array ``(t,)`` per sequence with the number of spikes in each frame.
    calcium : list of numpy.ndarray
        One float64 array ``(t,)`` per sequence with the AR(1) calcium trace
        ``c[t] = gamma * c[t-1] + s[t]``.
    brightness : float
        Peak ΔF in counts per unit calcium at the footprint centre (channel 0).
    channel_weights : numpy.ndarray
        One weight per channel. ``channel_weights[0]`` (= 1) scales the calcium
        signal of the functional channel; for ``j >= 1`` the cell adds the
        constant image ``footprint * brightness * channel_weights[j]``.

    Notes
    -----
    All arrays are read-only; copy them before modifying.
    """

    center: tuple[float, float, float]
    radii: tuple[float, float]
    footprint: NDArray[np.float32]
    mask: NDArray[np.bool_]
    plane: int
    spikes: list[NDArray[np.float64]]
    calcium: list[NDArray[np.float64]]
    brightness: float
    channel_weights: NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class SyntheticMovie:
    """A synthetic calcium-imaging movie and its complete ground truth.

    Parameters
    ----------
    sequences : list of numpy.ndarray
        One array ``(t, z, y, x, c)`` per sequence (imaging session).
    cells : list of SyntheticCell
        Ground truth of every cell, in generation order (cell ``i`` is row ``i``
        of :meth:`true_spikes`).
    gamma : float
        AR(1) decay factor of the calcium traces.
    frame_rate : float
        Frames per second.
    noise_sigma : float
        Standard deviation of the Gaussian read noise, in counts.
    baseline : float
        Mean background level, in counts.
    seed : int
        Seed the movie was generated from.
    shot_noise : bool
        Whether shot noise (variance equal to the expected counts) was added.
    background : numpy.ndarray
        Float32 ``(z, y, x, c)`` background image ``B`` (mean ``baseline``).
    background_modulation : list of numpy.ndarray
        One float64 array ``(t, z, c)`` per sequence: the relative modulation
        ``m`` of the background, ``B * (1 + m[t])``.

    Notes
    -----
    ``expected_movie(i)`` re-renders the noiseless movie from the ground truth;
    ``sequences[i] - expected_movie(i)`` is pure noise (plus rounding/clipping).
    """

    sequences: list[np.ndarray]
    cells: list[SyntheticCell]
    gamma: float
    frame_rate: float
    noise_sigma: float
    baseline: float
    seed: int
    shot_noise: bool = True
    background: NDArray[np.float32] | None = None
    background_modulation: list[NDArray[np.float64]] | None = None

    @property
    def num_sequences(self) -> int:
        """Number of sequences."""
        return len(self.sequences)

    @property
    def num_frames(self) -> int:
        """Number of frames of each sequence (all sequences have the same length)."""
        return int(self.sequences[0].shape[0])

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """Shape ``(z, y, x, c)`` of one frame."""
        return tuple(int(n) for n in self.sequences[0].shape[1:])  # type: ignore[return-value]

    @property
    def num_cells(self) -> int:
        """Total number of cells (all planes)."""
        return len(self.cells)

    @property
    def cell_planes(self) -> NDArray[np.intp]:
        """Plane index of every cell, shape ``(n_cells,)``."""
        return np.array([cell.plane for cell in self.cells], dtype=np.intp)

    def cells_in_plane(self, plane: int) -> NDArray[np.intp]:
        """Return the indices of the cells that live in ``plane``.

        Parameters
        ----------
        plane : int
            Plane index, ``0 <= plane < z``.

        Returns
        -------
        numpy.ndarray
            Increasing cell indices (rows of :meth:`true_spikes`).
        """
        self._check_plane(plane)
        return np.flatnonzero(self.cell_planes == plane).astype(np.intp)

    def true_masks(self, plane: int | None = None) -> NDArray[np.bool_]:
        """Return the boolean "true ROI" masks.

        Parameters
        ----------
        plane : int or None
            If given, only the cells living in this plane are returned, as an
            array ``(n, y, x)`` ordered like :meth:`cells_in_plane`. If None,
            all cells are returned as ``(n_cells, z, y, x)``, each mask placed
            in its own plane (other planes are False).

        Returns
        -------
        numpy.ndarray
            Boolean mask stack.
        """
        return self._stack_planes("mask", plane, np.bool_)

    def true_footprints(self, plane: int | None = None) -> NDArray[np.float32]:
        """Return the soft footprints, laid out like :meth:`true_masks`.

        Parameters
        ----------
        plane : int or None
            Restrict to the cells of this plane (``(n, y, x)``), or all cells
            (``(n_cells, z, y, x)``).

        Returns
        -------
        numpy.ndarray
            Float32 footprints with values in ``[0, 1]``.
        """
        return self._stack_planes("footprint", plane, np.float32)

    def true_spikes(self, sequence: int = 0, plane: int | None = None) -> NDArray[np.float64]:
        """Return the spike counts per frame of every cell.

        Parameters
        ----------
        sequence : int
            Sequence index.
        plane : int or None
            If given, only the rows of the cells in this plane.

        Returns
        -------
        numpy.ndarray
            Float64 array ``(n_cells, t)``.
        """
        return self._stack_traces("spikes", sequence, plane)

    def true_calcium(self, sequence: int = 0, plane: int | None = None) -> NDArray[np.float64]:
        """Return the calcium trace of every cell.

        Parameters
        ----------
        sequence : int
            Sequence index.
        plane : int or None
            If given, only the rows of the cells in this plane.

        Returns
        -------
        numpy.ndarray
            Float64 array ``(n_cells, t)``.
        """
        return self._stack_traces("calcium", sequence, plane)

    def expected_movie(self, sequence: int = 0) -> NDArray[np.float32]:
        """Re-render the noiseless movie of one sequence from the ground truth.

        Parameters
        ----------
        sequence : int
            Sequence index.

        Returns
        -------
        numpy.ndarray
            Float32 array ``(t, z, y, x, c)``: the expected counts ``E`` before
            noise, rounding and clipping.
        """
        index = self._check_sequence(sequence)
        if self.background is None or self.background_modulation is None:
            raise ValueError("this SyntheticMovie has no background ground truth")
        calcium = self.true_calcium(index).astype(np.float32)
        modulation = self.background_modulation[index]
        t = modulation.shape[0]
        out = np.empty((t, *self.frame_shape), dtype=np.float32)
        for z, model in enumerate(_plane_models(self.cells, self.background)):
            out[:, z] = _render(model, modulation[:, z], calcium, 0, t)
        return out

    # -- helpers -------------------------------------------------------------------

    def _check_plane(self, plane: int) -> int:
        n_planes = self.frame_shape[0]
        if isinstance(plane, bool) or not isinstance(plane, (int, np.integer)):
            raise TypeError(f"plane must be an int, got {plane!r}")
        if not 0 <= plane < n_planes:
            raise IndexError(f"plane {plane} out of range for a movie with {n_planes} plane(s)")
        return int(plane)

    def _check_sequence(self, sequence: int) -> int:
        if isinstance(sequence, bool) or not isinstance(sequence, (int, np.integer)):
            raise TypeError(f"sequence must be an int, got {sequence!r}")
        try:
            return range(self.num_sequences)[sequence]
        except IndexError:
            raise IndexError(
                f"sequence {sequence} out of range for a movie with "
                f"{self.num_sequences} sequence(s)"
            ) from None

    def _stack_planes(self, attr: str, plane: int | None, dtype: DTypeLike) -> np.ndarray:
        z, y, x, _ = self.frame_shape
        if plane is not None:
            idx = self.cells_in_plane(plane)
            out = np.zeros((len(idx), y, x), dtype=dtype)
            for row, i in enumerate(idx):
                out[row] = getattr(self.cells[i], attr)
            return out
        out = np.zeros((self.num_cells, z, y, x), dtype=dtype)
        for i, cell in enumerate(self.cells):
            out[i, cell.plane] = getattr(cell, attr)
        return out

    def _stack_traces(self, attr: str, sequence: int, plane: int | None) -> np.ndarray:
        index = self._check_sequence(sequence)
        cells = self.cells
        if plane is not None:
            cells = [self.cells[i] for i in self.cells_in_plane(plane)]
        out = np.zeros((len(cells), self.sequences[index].shape[0]), dtype=np.float64)
        for row, cell in enumerate(cells):
            out[row] = getattr(cell, attr)[index]
        return out


# ----------------------------------------------------------------------------------
# validation


def _as_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _as_float(
    name: str, value: object, minimum: float | None = None, *, strict: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (out <= minimum if strict else out < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")
    return out


def _as_range(
    name: str, value: object, minimum: float, strict: bool = False
) -> tuple[float, float]:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        lo = hi = _as_float(name, value, minimum, strict=strict)
        return lo, hi
    if not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        raise ValueError(f"{name} must be a number or a (min, max) pair, got {value!r}")
    lo = _as_float(f"{name}[0]", value[0], minimum, strict=strict)
    hi = _as_float(f"{name}[1]", value[1], minimum, strict=strict)
    if hi < lo:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {tuple(value)!r}")
    return lo, hi


def _as_frame_shape(value: object) -> tuple[int, int, int, int]:
    message = (
        f"frame_shape must be 4 positive integers (planes, rows, columns, channels), got {value!r}"
    )
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, str) or len(value) != 4:
        raise ValueError(message)
    out = []
    for n in value:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(message)
        out.append(int(n))
    return tuple(out)  # type: ignore[return-value]


def _as_dtype(value: DTypeLike) -> np.dtype:
    try:
        dtype = np.dtype(value)
    except TypeError as exc:
        raise ValueError(f"dtype {value!r} is not a numpy dtype") from exc
    if dtype.kind not in "uif":
        raise ValueError(f"dtype must be an integer or floating-point dtype, got {dtype}")
    return dtype


# ----------------------------------------------------------------------------------
# random streams


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


@lru_cache(maxsize=1)
def _normal_table() -> NDArray[np.float32]:
    # Quantiles of N(0, 1) at the centres of 65536 equiprobable bins, rescaled to
    # unit variance: indexing it with uniform 16-bit integers gives normal deviates
    # (truncated at about +-4.3 sigma) several times faster than the ziggurat.
    table = special.ndtri((np.arange(65536, dtype=np.float64) + 0.5) / 65536.0)
    table /= np.sqrt(np.mean(table**2))
    return _readonly(table.astype(np.float32))


def _fast_normal(seed: int, key: tuple[int, ...], out: NDArray[np.float32]) -> None:
    """Fill the contiguous float32 array ``out`` with standard normal deviates."""
    bits = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key))
    table = _normal_table()
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    flat = out.reshape(-1)
    # Cache-sized blocks (the stream is consumed sequentially, so the result does not
    # depend on the block size); mode="clip" skips the bounds checks (indices < 65536).
    for start in range(0, flat.size, _LOOKUP_BLOCK):
        block = flat[start : start + _LOOKUP_BLOCK]
        raw = bits.random_raw(-(-block.size // 4)).astype("<u8", copy=False)
        np.take(table, raw.view("<u2")[: block.size], out=block, mode="clip")


# ----------------------------------------------------------------------------------
# model construction


def _draw_cells(
    seed: int,
    frame_shape: tuple[int, int, int, int],
    num_cells: int,
    radius_range: tuple[float, float],
    brightness_range: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    planes, _, _, channels = frame_shape
    rng = _rng(seed, _STREAM_CELLS)
    radii = rng.uniform(radius_range[0], radius_range[1], size=(num_cells, 2))
    brightness = rng.uniform(brightness_range[0], brightness_range[1], size=num_cells)
    weights = np.ones((num_cells, channels))
    weights[:, 1:] = rng.uniform(*_STRUCTURAL_WEIGHT, size=(num_cells, channels - 1))
    plane_of = np.arange(num_cells) % planes
    return radii, brightness, weights, plane_of


def _place_cells(
    seed: int,
    frame_shape: tuple[int, int, int, int],
    radii: np.ndarray,
    plane_of: np.ndarray,
    separation: float,
    allow_overlap: bool,
) -> np.ndarray:
    _, rows, cols, _ = frame_shape
    rng = _rng(seed, _STREAM_PLACEMENT)
    n = len(radii)
    centers = np.zeros((n, 2))
    extent = radii.max(axis=1)
    for i in range(n):
        ry, rx = radii[i]
        low = np.array([ry + 0.5, rx + 0.5])
        high = np.array([rows - 1.5 - ry, cols - 1.5 - rx])
        others = np.flatnonzero(plane_of[:i] == plane_of[i])
        need = np.full(len(others), separation)
        if not allow_overlap:
            need = np.maximum(need, extent[i] + extent[others] + 1.0)
        for _ in range(0, _PLACEMENT_ATTEMPTS, _PLACEMENT_BATCH):
            candidates = low + (high - low) * rng.random((_PLACEMENT_BATCH, 2))
            if len(others) == 0:
                centers[i] = candidates[0]
                break
            dist = np.hypot(
                candidates[:, None, 0] - centers[None, others, 0],
                candidates[:, None, 1] - centers[None, others, 1],
            )
            ok = np.flatnonzero(np.all(dist >= need, axis=1))
            if len(ok):
                centers[i] = candidates[ok[0]]
                break
        else:
            rule = (
                "without overlapping masks"
                if not allow_overlap
                else f"with centres at least {separation:.3g} px apart"
            )
            raise ValueError(
                f"could not place cell {i + 1} of {n} in plane {plane_of[i]} of a "
                f"{rows}x{cols} frame {rule} after {_PLACEMENT_ATTEMPTS} random attempts; "
                "reduce num_cells or cell_radius, lower min_separation, allow overlap, "
                "or use a larger frame_shape"
            )
    return centers


def _footprint(
    shape: tuple[int, int], center: np.ndarray, radii: np.ndarray
) -> NDArray[np.float32]:
    # evaluated in a box around the cell: outside d > 1.5 the value is < 2**-11 and
    # therefore below _FOOTPRINT_FLOOR
    boxes = []
    for n, c, r in zip(shape, center, radii, strict=True):
        half = math.ceil(1.5 * r) + 1
        lo, hi = max(0, math.floor(c) - half), min(n, math.ceil(c) + half + 1)
        boxes.append((lo, hi, (np.arange(lo, hi) - c) / r))
    (y0, y1, y), (x0, x1, x) = boxes
    d2 = y[:, None] ** 2 + x[None, :] ** 2
    values = np.exp2(-(d2**_EDGE_POWER))
    values /= values.max()
    values[values < _FOOTPRINT_FLOOR] = 0.0
    footprint = np.zeros(shape, dtype=np.float32)
    footprint[y0:y1, x0:x1] = values
    return footprint


def _unit_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field


def _make_background(
    seed: int, frame_shape: tuple[int, int, int, int], baseline: float
) -> NDArray[np.float32]:
    planes, rows, cols, channels = frame_shape
    rng = _rng(seed, _STREAM_BACKGROUND)
    background = np.empty(frame_shape, dtype=np.float32)
    for z in range(planes):
        for c in range(channels):
            texture = (
                1.0
                + _TEXTURE_COARSE[0] * _unit_field(rng, (rows, cols), _TEXTURE_COARSE[1])
                + _TEXTURE_FINE[0] * _unit_field(rng, (rows, cols), _TEXTURE_FINE[1])
            )
            np.maximum(texture, _TEXTURE_MIN, out=texture)
            background[z, :, :, c] = baseline * texture / texture.mean()
    return background


def _make_modulation(
    seed: int,
    sequence: int,
    num_frames: int,
    frame_shape: tuple[int, int, int, int],
    frame_rate: float,
    amplitude: float,
) -> NDArray[np.float64]:
    planes, _, _, channels = frame_shape
    white = _rng(seed, _STREAM_MODULATION, sequence).standard_normal((num_frames, planes, channels))
    if amplitude == 0:
        return np.zeros_like(white)
    sigma = max(1.0, _MODULATION_TAU_S * frame_rate)
    radius = int(4.0 * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    smooth = ndimage.gaussian_filter1d(white, sigma, axis=0, mode="reflect")
    # scale to the requested standard deviation (that of the stationary process)
    modulation = smooth * (amplitude / np.sqrt(np.sum(kernel**2)))
    return np.maximum(modulation, -0.9)


@dataclass(frozen=True, eq=False)
class _PlaneModel:
    """Everything needed to render one plane: background, static image, cells."""

    background: NDArray[np.float32]  # (y, x, c)
    static: NDArray[np.float32] | None  # (y, x, c) structural image of the cells
    # (cell index, (row slice, col slice), footprint * brightness * weight[0] cropped)
    dynamic: list[tuple[int, tuple[slice, slice], NDArray[np.float32]]]


def _plane_models(
    cells: Sequence[SyntheticCell], background: NDArray[np.float32]
) -> list[_PlaneModel]:
    planes, rows, cols, channels = background.shape
    models = []
    for z in range(planes):
        static = None
        dynamic = []
        for index, cell in enumerate(cells):
            if cell.plane != z:
                continue
            ys, xs = np.nonzero(cell.footprint)
            box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            crop = cell.footprint[box] * np.float32(cell.brightness)
            dynamic.append((index, box, (crop * np.float32(cell.channel_weights[0]))))
            if channels > 1:
                if static is None:
                    static = np.zeros((rows, cols, channels), dtype=np.float32)
                weights = np.asarray(cell.channel_weights[1:], dtype=np.float32)
                static[box[0], box[1], 1:] += crop[:, :, None] * weights
        models.append(_PlaneModel(background[z], static, dynamic))
    return models


def _render(
    model: _PlaneModel,
    modulation: np.ndarray,
    calcium: NDArray[np.float32],
    start: int,
    stop: int,
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Render frames ``start:stop`` of one plane as float32 ``(t, y, x, c)``."""
    gain = (1.0 + modulation[start:stop]).astype(np.float32)
    out = np.multiply(model.background[None], gain[:, None, None, :], out=out)
    if model.static is not None:
        out += model.static
    for index, (ys, xs), crop in model.dynamic:
        out[:, ys, xs, 0] += calcium[index, start:stop, None, None] * crop
    return out


def _num_workers() -> int:
    if _MAX_WORKERS is not None:
        return max(1, int(_MAX_WORKERS))
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available))


# ----------------------------------------------------------------------------------
# public API


def make_calcium_movie(
    num_frames: int = 200,
    frame_shape: tuple[int, int, int, int] = (1, 128, 128, 2),
    num_sequences: int = 2,
    num_cells: int = 12,
    cell_radius: float | tuple[float, float] = (5.0, 7.0),
    spike_rate: float = 0.5,
    frame_rate: float = 10.0,
    gamma: float = 0.95,
    noise_sigma: float = 20.0,
    baseline: float = 200.0,
    brightness: float | tuple[float, float] = (600.0, 1200.0),
    min_separation: float | None = None,
    dtype: DTypeLike = "uint16",
    seed: int = 0,
    *,
    shot_noise: bool = True,
    allow_overlap: bool = True,
    background_modulation: float = 0.05,
) -> SyntheticMovie:
    """Generate a synthetic two-photon calcium-imaging movie with known ground truth.

    Parameters
    ----------
    num_frames : int
        Frames per sequence, >= 1.
    frame_shape : tuple of int
        ``(planes, rows, columns, channels)``, all >= 1.
    num_sequences : int
        Number of sequences (sessions). Cells and background are shared; spikes,
        background modulation and noise are drawn independently per sequence.
    num_cells : int
        Total number of cells, >= 0, distributed round-robin over the planes
        (cell ``i`` lives in plane ``i % planes``).
    cell_radius : float or (float, float)
        Range from which each cell's two semi-axes ``(ry, rx)`` are drawn
        uniformly, in pixels (>= 1).
    spike_rate : float
        Mean firing rate in Hz (Poisson), >= 0.
    frame_rate : float
        Frame rate in Hz, > 0.
    gamma : float
        AR(1) calcium decay per frame, in the open interval (0, 1).
    noise_sigma : float
        Standard deviation of the Gaussian read noise in counts, >= 0.
    baseline : float
        Mean background (neuropil) level in counts, >= 0.
    brightness : float or (float, float)
        Range of the cells' peak ΔF (counts per unit calcium at the footprint
        centre), >= 0.
    min_separation : float or None
        Minimum distance in pixels between the centres of two cells in the same
        plane. None means ``1.2 * mean(cell_radius)``.
    dtype : numpy dtype
        Output dtype (integer or floating point). Integer output is rounded and
        clipped to the dtype's range.
    seed : int
        Non-negative seed; the same arguments and seed give identical output.
    shot_noise : bool
        Add shot noise with variance equal to the expected counts.
    allow_overlap : bool
        If False, cells in the same plane are placed so that their masks are
        disjoint (centres at least ``max(radii_i) + max(radii_j) + 1`` apart, and
        at least ``min_separation``).
    background_modulation : float
        Standard deviation of the slow relative modulation of the background
        (time constant about 2 s), >= 0.

    Returns
    -------
    SyntheticMovie
        The movie (``sequences``, each ``(num_frames, *frame_shape)`` of ``dtype``)
        with the complete ground truth.

    Raises
    ------
    ValueError
        If an argument is invalid, a cell does not fit into the frame, or the
        cells cannot be placed with the requested separation.

    Notes
    -----
    Model (see the module docstring): spikes ``s ~ Poisson(spike_rate /
    frame_rate)`` per frame, calcium ``c[t] = gamma * c[t-1] + s[t]``, channel 0
    ``F = B * (1 + m[t]) + sum_k footprint_k * brightness_k * c_k[t] + noise``;
    channels ``>= 1`` show the cells with constant brightness
    ``brightness_k * channel_weights_k[j]`` and no calcium dynamics.

    Footprints are super-Gaussian ellipses ``2 ** -(d ** 6)`` (``d`` the elliptical
    radius in units of the semi-axes), so the mask ``footprint > 0.5`` is the
    filled ellipse; every mask lies strictly inside the frame.

    Shot noise is approximated by a Gaussian of variance ``E`` (exact enough for
    the counts of two-photon data, tens to thousands) and, like the read noise,
    drawn from a 65536-entry table of normal quantiles (truncated at about
    ±4.3 σ). Each random component (cells, placement, background, modulation,
    spikes, noise) has its own stream derived from ``seed`` with
    :class:`numpy.random.SeedSequence` spawn keys, so, e.g., sequence 0 is the
    same whatever ``num_sequences`` is, and the output does not depend on the
    number of threads used for rendering.

    Examples
    --------
    >>> movie = make_calcium_movie(num_frames=50, frame_shape=(1, 64, 64, 2), num_cells=5)
    >>> movie.sequences[0].shape, movie.sequences[0].dtype
    ((50, 1, 64, 64, 2), dtype('uint16'))
    >>> movie.true_masks(plane=0).shape
    (5, 64, 64)
    >>> movie.true_spikes(1).shape
    (5, 50)
    """
    num_frames = _as_int("num_frames", num_frames, 1)
    frame_shape = _as_frame_shape(frame_shape)
    num_sequences = _as_int("num_sequences", num_sequences, 1)
    num_cells = _as_int("num_cells", num_cells, 0)
    radius_range = _as_range("cell_radius", cell_radius, 1.0)
    spike_rate = _as_float("spike_rate", spike_rate, 0.0)
    frame_rate = _as_float("frame_rate", frame_rate, 0.0, strict=True)
    gamma = _as_float("gamma", gamma)
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in the open interval (0, 1), got {gamma!r}")
    noise_sigma = _as_float("noise_sigma", noise_sigma, 0.0)
    baseline = _as_float("baseline", baseline, 0.0)
    brightness_range = _as_range("brightness", brightness, 0.0)
    if min_separation is None:
        separation = 1.2 * 0.5 * (radius_range[0] + radius_range[1])
    else:
        separation = _as_float("min_separation", min_separation, 0.0)
    out_dtype = _as_dtype(dtype)
    seed = _as_int("seed", seed, 0)
    for name, flag in (("shot_noise", shot_noise), ("allow_overlap", allow_overlap)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    modulation_amplitude = _as_float("background_modulation", background_modulation, 0.0)

    planes, rows, cols, channels = frame_shape
    if num_cells and min(rows, cols) < 2.0 * radius_range[1] + 2.0:
        raise ValueError(
            f"cells of radius up to {radius_range[1]:g} px do not fit in a {rows}x{cols} "
            f"frame (need at least {math.ceil(2 * radius_range[1] + 2)} rows and columns)"
        )

    # -- ground truth ------------------------------------------------------------
    radii, cell_brightness, weights, plane_of = _draw_cells(
        seed, frame_shape, num_cells, radius_range, brightness_range
    )
    centers = _place_cells(seed, frame_shape, radii, plane_of, separation, bool(allow_overlap))
    spikes, calcium = [], []
    rate_per_frame = spike_rate / frame_rate
    for s in range(num_sequences):
        # drawn frame-major so that the first frames do not depend on num_frames
        counts = _rng(seed, _STREAM_SPIKES, s).poisson(rate_per_frame, (num_frames, num_cells))
        spikes.append(np.ascontiguousarray(counts.T, dtype=np.float64))
        calcium.append(signal.lfilter([1.0], [1.0, -gamma], spikes[-1], axis=1))

    cells = []
    for i in range(num_cells):
        footprint = _footprint((rows, cols), centers[i], radii[i])
        cells.append(
            SyntheticCell(
                center=(float(plane_of[i]), float(centers[i, 0]), float(centers[i, 1])),
                radii=(float(radii[i, 0]), float(radii[i, 1])),
                footprint=_readonly(footprint),
                mask=_readonly(footprint > 0.5),
                plane=int(plane_of[i]),
                spikes=[_readonly(spikes[s][i].copy()) for s in range(num_sequences)],
                calcium=[_readonly(calcium[s][i].copy()) for s in range(num_sequences)],
                brightness=float(cell_brightness[i]),
                channel_weights=_readonly(weights[i].copy()),
            )
        )
    background = _readonly(_make_background(seed, frame_shape, baseline))
    modulations = [
        _readonly(
            _make_modulation(seed, s, num_frames, frame_shape, frame_rate, modulation_amplitude)
        )
        for s in range(num_sequences)
    ]

    # -- rendering -----------------------------------------------------------------
    models = _plane_models(cells, background)
    frames_per_chunk = max(1, _CHUNK_ELEMENTS // (rows * cols * channels))
    starts = range(0, num_frames, frames_per_chunk)
    variance = np.float32(noise_sigma**2)
    integer = out_dtype.kind in "ui"
    limits = np.iinfo(out_dtype) if integer else np.finfo(out_dtype)
    clip = integer or out_dtype.itemsize < 4

    scratch = threading.local()
    sequences = []
    for s in range(num_sequences):
        out = np.empty((num_frames, *frame_shape), dtype=out_dtype)
        calcium32 = calcium[s].astype(np.float32)

        def task(job: tuple[int, int], s: int = s, out: np.ndarray = out, ca=calcium32) -> None:
            z, k = job
            start = starts[k]
            stop = min(start + frames_per_chunk, num_frames)
            # per-thread scratch buffers, reused across chunks (fresh allocations of
            # this size are page-faulted in on every use)
            buffers = getattr(scratch, "buffers", None)
            if buffers is None:
                buffers = scratch.buffers = np.empty(
                    (3, frames_per_chunk, *frame_shape[1:]), np.float32
                )
            chunk, noise, std = buffers[:, : stop - start]
            _render(models[z], modulations[s][:, z], ca, start, stop, out=chunk)
            if shot_noise or noise_sigma > 0:
                _fast_normal(seed, (_STREAM_NOISE, s, z, k), noise)
                if shot_noise:
                    np.add(chunk, variance, out=std)
                    np.sqrt(std, out=std)
                    noise *= std
                else:
                    noise *= np.float32(noise_sigma)
                chunk += noise
            if integer:
                np.rint(chunk, out=chunk)
            if clip:
                np.clip(chunk, limits.min, limits.max, out=chunk)
            out[start:stop, z] = chunk

        jobs = [(z, k) for z in range(planes) for k in range(len(starts))]
        workers = _num_workers()
        if workers > 1 and len(jobs) > 1 and out.size >= _PARALLEL_MIN_ELEMENTS:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(task, jobs):
                    pass
        else:
            for job in jobs:
                task(job)
        sequences.append(out)

    return SyntheticMovie(
        sequences=sequences,
        cells=cells,
        gamma=gamma,
        frame_rate=frame_rate,
        noise_sigma=noise_sigma,
        baseline=baseline,
        seed=seed,
        shot_noise=bool(shot_noise),
        background=background,
        background_modulation=modulations,
    )
