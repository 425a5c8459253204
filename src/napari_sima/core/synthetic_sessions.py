"""Synthetic imaging sessions of one field of view, with the true identity of every ROI.

:func:`make_synthetic_sessions` draws a population of cells once, then "images" it in
several sessions, as if every session's ROIs had already been brought into a common
space (the situation :func:`~napari_sima.core.registration.register_rois` starts from):

* **turnover** — a cell is seen in a session or not; between two consecutive sessions
  a seen cell disappears with probability ``turnover`` and unseen cells appear at the
  rate that keeps the expected number of seen cells at ``presence * n_cells``;
* **residual misregistration** — each session is shifted as a whole by a random
  offset (standard deviation ``shift`` pixels per axis);
* **outline jitter** — each cell's centre moves by ``jitter`` pixels (standard
  deviation per axis), its radii change by a relative ``size_change``, and its outline
  wobbles (random low-order harmonics of relative amplitude ``outline_noise``);
* cells are ellipses of radius ``radius`` (range, pixels) placed so that neighbours
  may touch or overlap a little (centres at least ``spacing`` times the sum of the
  radii apart), on one of the planes of ``im_shape``.

The ROIs are polygon ROIs with ``im_shape`` set, listed in a random order per session
(so the order says nothing about identity), labelled ``'s<session>-<k>'``, without
``id``.  ``SyntheticSessions.cells[s][k]`` is the true cell of ROI ``k`` of session
``s``.

Examples
--------
>>> sessions = make_synthetic_sessions(n_sessions=3, n_cells=20, im_shape=(64, 64),
...                                    radius=(3.0, 5.0), seed=1)
>>> len(sessions.roi_lists), [len(r) for r in sessions.roi_lists] == [
...     len(c) for c in sessions.cells]
(3, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .roi import ROI, ROIList

__all__ = ["SyntheticSessions", "make_synthetic_sessions"]

#: Outline vertices per ROI.
_VERTICES = 24
#: Harmonics (orders 2..) of the outline wobble.
_HARMONICS = 3
#: Placement attempts per cell before giving up.
_ATTEMPTS = 2000


@dataclass(frozen=True, eq=False)
class SyntheticSessions:
    """Synthetic sessions and their ground truth (see :func:`make_synthetic_sessions`).

    Parameters
    ----------
    roi_lists : list of ROIList
        One ROI list per session, all with the same ``im_shape``.
    cells : list of numpy.ndarray
        ``cells[s][k]`` is the true cell index of ROI ``k`` of session ``s``.
    n_cells : int
        Size of the cell population (cells never seen in any session included).
    im_shape : tuple of int
        ``(planes, rows, columns)`` of every ROI.
    centres : numpy.ndarray
        ``(n_cells, 3)`` true ``(z, y, x)`` centre of every cell (before jitter).
    """

    roi_lists: list[ROIList]
    cells: list[NDArray[np.intp]]
    n_cells: int
    im_shape: tuple[int, int, int]
    centres: NDArray[np.float64]

    @property
    def n_rois(self) -> int:
        """Total number of ROIs over all sessions."""
        return int(sum(len(c) for c in self.cells))

    @property
    def seen(self) -> NDArray[np.bool_]:
        """``(n_sessions, n_cells)``: whether each cell has an ROI in each session."""
        out = np.zeros((len(self.cells), self.n_cells), dtype=bool)
        for s, cells in enumerate(self.cells):
            out[s, cells] = True
        return out


def _check_fraction(name: str, value: float, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (low <= v <= high) or not np.isfinite(v):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return v


def _place(
    rng: np.random.Generator,
    n_cells: int,
    shape: tuple[int, int, int],
    radius: tuple[float, float],
    spacing: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return ``(centres (n, 3) as z, y, x; radii (n,))`` of non-crowded cells."""
    n_planes, rows, cols = shape
    centres = np.empty((n_cells, 3))
    radii = rng.uniform(radius[0], radius[1], n_cells)
    margin = radius[1] + 2.0
    if rows <= 2 * margin or cols <= 2 * margin:
        raise ValueError(
            f"im_shape {shape} is too small for cells of radius up to {radius[1]} pixels"
        )
    for k in range(n_cells):
        for _ in range(_ATTEMPTS):
            z = float(rng.integers(n_planes))
            y = rng.uniform(margin, rows - margin)
            x = rng.uniform(margin, cols - margin)
            if k == 0:
                break
            same = centres[:k, 0] == z
            d = np.hypot(centres[:k, 1] - y, centres[:k, 2] - x)
            if not np.any(same & (d < spacing * (radii[:k] + radii[k]))):
                break
        else:
            raise ValueError(
                f"could not place {n_cells} cells of radius {radius} in {shape} with "
                f"spacing {spacing} (placed {k}); use fewer or smaller cells"
            )
        centres[k] = (z, y, x)
    return centres, radii


def make_synthetic_sessions(
    n_sessions: int = 5,
    n_cells: int = 250,
    im_shape: Sequence[int] = (512, 512),
    presence: float = 0.8,
    turnover: float = 0.15,
    shift: float = 1.0,
    jitter: float = 1.0,
    size_change: float = 0.1,
    outline_noise: float = 0.05,
    radius: tuple[float, float] = (4.0, 9.0),
    spacing: float = 0.9,
    seed: int = 0,
) -> SyntheticSessions:
    """Draw ROI lists of one field imaged in several sessions, with the true identities.

    Parameters
    ----------
    n_sessions : int
        Number of sessions (>= 1).
    n_cells : int
        Number of cells in the field (>= 1); each session sees about
        ``presence * n_cells`` of them.
    im_shape : (rows, columns) or (planes, rows, columns)
        Image shape shared by all sessions' ROIs.
    presence : float
        Expected fraction of the cells seen in a session, in ``(0, 1]``.
    turnover : float
        Probability that a cell seen in one session is not seen in the next, in
        ``[0, 1]``; unseen cells reappear at the rate that keeps ``presence`` steady
        (requires ``presence * turnover <= 1 - presence`` when ``presence < 1``).
    shift : float
        Standard deviation (pixels, per axis) of each session's global offset.
    jitter : float
        Standard deviation (pixels, per axis) of each cell's centre per session.
    size_change : float
        Standard deviation of the relative change of a cell's radii per session.
    outline_noise : float
        Relative amplitude of the outline wobble (both fixed per cell and per session).
    radius : (float, float)
        Range of cell radii (pixels); cells are ellipses with axes up to +-20% apart.
    spacing : float
        Minimum centre distance between two cells on a plane, as a fraction of the
        sum of their radii (below 1 neighbours may overlap a little).
    seed : int
        Seed of the random generator; the same arguments give the same sessions.

    Returns
    -------
    SyntheticSessions
        ROI lists (polygon ROIs with ``im_shape``, no ids) and the true cell of each ROI.

    Raises
    ------
    ValueError
        For counts below 1, fractions or scales out of range, or a field too small
        to hold the cells.
    """
    if int(n_sessions) != n_sessions or n_sessions < 1:
        raise ValueError(f"n_sessions must be an integer >= 1, got {n_sessions!r}")
    if int(n_cells) != n_cells or n_cells < 1:
        raise ValueError(f"n_cells must be an integer >= 1, got {n_cells!r}")
    n_sessions, n_cells = int(n_sessions), int(n_cells)
    shape = tuple(int(v) for v in im_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"im_shape must be (rows, columns) or (planes, rows, columns), got {im_shape!r}"
        )
    presence = _check_fraction("presence", presence, 0.0, 1.0)
    if presence == 0:
        raise ValueError("presence must be > 0")
    turnover = _check_fraction("turnover", turnover, 0.0, 1.0)
    appear = 0.0 if presence == 1 else presence * turnover / (1.0 - presence)
    if appear > 1:
        raise ValueError(
            f"turnover={turnover} is too high for presence={presence}: the reappearance "
            f"rate would be {appear:.2f} > 1 (need presence * turnover <= 1 - presence)"
        )
    for name, value in (
        ("shift", shift),
        ("jitter", jitter),
        ("size_change", size_change),
        ("outline_noise", outline_noise),
    ):
        _check_fraction(name, value, 0.0, np.inf)
    r0, r1 = (float(v) for v in radius)
    if not 0 < r0 <= r1:
        raise ValueError(f"radius must be (min, max) with 0 < min <= max, got {radius!r}")
    spacing = _check_fraction("spacing", spacing, 0.0, np.inf)

    rng = np.random.default_rng(seed)
    centres, radii = _place(rng, n_cells, shape, (r0, r1), spacing)
    elong = rng.uniform(0.8, 1.2, n_cells)  # ratio of the two semi-axes
    angle = rng.uniform(0, np.pi, n_cells)
    cell_harm = rng.normal(0, outline_noise, (n_cells, _HARMONICS, 2))

    seen = np.empty((n_sessions, n_cells), dtype=bool)
    seen[0] = rng.random(n_cells) < presence
    for s in range(1, n_sessions):
        u = rng.random(n_cells)
        seen[s] = np.where(seen[s - 1], u >= turnover, u < appear)

    phi = np.linspace(0, 2 * np.pi, _VERTICES, endpoint=False)
    orders = np.arange(2, 2 + _HARMONICS)
    roi_lists: list[ROIList] = []
    cells_out: list[NDArray[np.intp]] = []
    for s in range(n_sessions):
        offset = rng.normal(0, shift, 2) if shift else np.zeros(2)
        present = np.flatnonzero(seen[s])
        order = rng.permutation(present)
        rois = []
        for k, c in enumerate(order):
            z, cy, cx = centres[c]
            cy, cx = np.array([cy, cx]) + offset + rng.normal(0, jitter, 2)
            scale = max(0.5, 1.0 + rng.normal(0, size_change))
            a = radii[c] * scale * np.sqrt(elong[c])
            b = radii[c] * scale / np.sqrt(elong[c])
            harm = cell_harm[c] + rng.normal(0, outline_noise, (_HARMONICS, 2))
            wobble = 1.0 + (
                harm[:, 0, None] * np.cos(orders[:, None] * phi)
                + harm[:, 1, None] * np.sin(orders[:, None] * phi)
            ).sum(axis=0)
            wobble = np.clip(wobble, 0.5, 1.5)
            u, v = a * np.cos(phi) * wobble, b * np.sin(phi) * wobble
            ca, sa = np.cos(angle[c]), np.sin(angle[c])
            xs, ys = cx + ca * u - sa * v, cy + sa * u + ca * v
            verts = np.column_stack([xs, ys, np.full(_VERTICES, z)])
            rois.append(ROI(polygons=verts, label=f"s{s}-{k}", im_shape=shape))
        roi_lists.append(ROIList(rois))
        cells_out.append(order.astype(np.intp))
    return SyntheticSessions(
        roi_lists=roi_lists,
        cells=cells_out,
        n_cells=n_cells,
        im_shape=shape,  # type: ignore[arg-type]
        centres=centres,
    )
