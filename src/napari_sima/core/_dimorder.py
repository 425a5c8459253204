"""Mapping between a stored array's axis order (``dim_order``) and ``(t, z, y, x, c)``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._indexing import AXES, Region, TimeIndex, positive, range_to_slice


def check_dim_order(dim_order: object, ndim: int, source: str) -> str:
    """Validate a ``dim_order`` string against the number of dimensions of the data.

    Parameters
    ----------
    dim_order : str
        Letters from ``'tzyxc'``, one per stored axis, no repeats; must contain
        ``'t'``, ``'y'`` and ``'x'``.
    ndim : int
        Number of dimensions of the stored data.
    source : str
        Description of the data (file and key), used in error messages.

    Returns
    -------
    str
        The validated, lower-case dim order.

    Raises
    ------
    ValueError
        If the dim order is not a string, has unknown or repeated letters, lacks
        ``t``, ``y`` or ``x``, or its length differs from ``ndim``.
    """
    if not isinstance(dim_order, str):
        raise ValueError(
            f"dim_order for {source} must be a string such as 'tzyxc' or 'yxt', "
            f"got {dim_order!r}"
        )
    order = dim_order.lower()
    bad = sorted(set(order) - set(AXES))
    if bad:
        raise ValueError(
            f"dim_order {dim_order!r} for {source} has unknown axis letters {bad}; "
            f"use letters from 'tzyxc'"
        )
    if len(set(order)) != len(order):
        raise ValueError(f"dim_order {dim_order!r} for {source} repeats an axis letter")
    missing = [a for a in "tyx" if a not in order]
    if missing:
        raise ValueError(
            f"dim_order {dim_order!r} for {source} lacks the axes {missing}; a movie needs "
            f"at least 't', 'y' and 'x'"
        )
    if len(order) != ndim:
        raise ValueError(
            f"dim_order {dim_order!r} has {len(order)} axes but the data in {source} has "
            f"{ndim} dimensions (shape known to the file); give one letter per dimension"
        )
    return order


def shape_5d(source_shape: tuple[int, ...], dim_order: str) -> tuple[int, int, int, int, int]:
    """Return the ``(t, z, y, x, c)`` shape of data stored with ``dim_order``."""
    sizes = dict(zip(dim_order, source_shape))
    return tuple(int(sizes.get(a, 1)) for a in AXES)  # type: ignore[return-value]


def read_mapped(
    getter: Callable[[tuple], np.ndarray],
    dim_order: str,
    times: TimeIndex,
    region: Region,
    allow_fancy: bool = True,
) -> np.ndarray:
    """Read a ``(t, z, y, x, c)`` block from data stored in another axis order.

    Parameters
    ----------
    getter : callable
        ``getter(selection)`` returns the stored data for a tuple of per-axis
        selections in the stored axis order (slices with positive steps, or a sorted
        integer array for the time axis), e.g. ``h5py.Dataset.__getitem__``.
    dim_order : str
        Validated stored axis order.
    times : range or ndarray
        Frames to read.
    region : tuple of 4 ranges
        ``(z, y, x, c)`` selection.
    allow_fancy : bool
        Whether ``getter`` accepts an integer array on the time axis.

    Returns
    -------
    numpy.ndarray
        Array ``(len(times), len(z), len(y), len(x), len(c))`` of the stored dtype.
    """
    wanted = dict(zip("zyxc", region))
    selection: list = []
    flips: dict[str, bool] = {}
    reorder: np.ndarray | None = None
    for axis in dim_order:
        if axis == "t":
            if isinstance(times, range):
                pos, flip = positive(times)
                selection.append(range_to_slice(pos) if len(pos) else slice(0, 0))
                flips["t"] = flip
            else:
                arr = np.asarray(times, dtype=np.int64)
                uniq, inverse = np.unique(arr, return_inverse=True)
                if allow_fancy and uniq.size:
                    selection.append(uniq)
                else:
                    selection.append(slice(0, 0))
                reorder = inverse
        else:
            pos, flip = positive(wanted[axis])
            selection.append(range_to_slice(pos) if len(pos) else slice(0, 0))
            flips[axis] = flip
    data = np.asarray(getter(tuple(selection)))
    present = [a for a in AXES if a in dim_order]
    data = np.transpose(data, [dim_order.index(a) for a in present])
    for i, axis in enumerate(AXES):
        if axis not in dim_order:
            data = np.expand_dims(data, i)
            r = wanted[axis]
            data = data[(slice(None),) * i + (range_to_slice(r),)]
    if reorder is not None:
        data = data[reorder]
    flip_index = tuple(
        slice(None, None, -1) if flips.get(axis, False) else slice(None) for axis in AXES
    )
    return data[flip_index]
