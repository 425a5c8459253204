"""Index arithmetic shared by the sequence kinds.

A *region* is a tuple of four :class:`range` objects selecting planes, rows, columns
and channels ``(z, y, x, c)`` of a sequence's own frame.  Ranges compose exactly
(``range(10)[2:8][::2]``), so views of views never need to touch data, and a
range with a negative step is still a plain range.
"""

from __future__ import annotations

from collections.abc import Sequence as _PySequence
from typing import Union

import numpy as np

Region = tuple[range, range, range, range]
TimeIndex = Union[range, np.ndarray]

AXES = "tzyxc"


def full_region(frame_shape: tuple[int, ...]) -> Region:
    """Return the region selecting the whole of a ``(z, y, x, c)`` frame."""
    z, y, x, c = frame_shape
    return (range(z), range(y), range(x), range(c))


def range_to_slice(r: range) -> slice:
    """Return the slice that selects ``r`` from an axis (``a[range_to_slice(r)]``).

    Notes
    -----
    A range with a negative step may stop at ``-1`` ("before index 0"), which as a
    slice stop would mean "the last element"; it is translated to ``None``.
    """
    stop: int | None = r.stop
    if r.step < 0 and r.stop < 0:
        stop = None
    return slice(r.start, stop, r.step)


def region_shape(region: Region) -> tuple[int, int, int, int]:
    """Return the ``(z, y, x, c)`` shape selected by ``region``."""
    return tuple(len(r) for r in region)  # type: ignore[return-value]


def positive(r: range) -> tuple[range, bool]:
    """Return ``(increasing_range, reversed)`` covering the same indices as ``r``."""
    if r.step > 0 or len(r) == 0:
        return (r if len(r) else range(0, 0)), False
    return r[::-1], True


def normalize_axis_index(
    index: object, length: int, axis: str, what: str = "sequence"
) -> range:
    """Turn an integer or slice on one axis into a range (integers never drop axes).

    Parameters
    ----------
    index : int, numpy integer or slice
        The index given by the user for this axis.
    length : int
        Length of the axis.
    axis : str
        Axis letter, used in error messages.
    what : str
        What is being indexed, used in error messages.

    Returns
    -------
    range
        The selected indices.

    Raises
    ------
    IndexError
        If an integer index is out of range.
    TypeError
        If the index is neither an integer nor a slice.
    """
    if isinstance(index, slice):
        return range(length)[index]
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        i = int(index)
        if not -length <= i < length:
            raise IndexError(
                f"index {i} is out of range for axis '{axis}' of length {length} of the {what}"
            )
        if i < 0:
            i += length
        return range(i, i + 1)
    raise TypeError(
        f"axis '{axis}' of a {what} takes an integer or a slice, not {type(index).__name__}"
    )


def normalize_time_index(index: object, length: int, what: str = "sequence") -> TimeIndex:
    """Turn a time index (int, slice, or 1-D integer array-like) into a range or array.

    Integers select one frame but keep the time axis (as SIMA does); integer arrays and
    lists select frames in the given order (negative values count from the end).
    """
    if isinstance(index, (slice, int, np.integer)) and not isinstance(index, bool):
        return normalize_axis_index(index, length, "t", what)
    if isinstance(index, (np.ndarray, _PySequence)) and not isinstance(index, (str, bytes)):
        arr = np.asarray(index)
        if arr.dtype == bool:
            if arr.shape != (length,):
                raise IndexError(
                    f"boolean time index has shape {arr.shape}, expected ({length},) for the {what}"
                )
            return np.flatnonzero(arr)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(
                f"a time index array must be 1-D integers, got shape {arr.shape} dtype {arr.dtype}"
            )
        arr = arr.astype(np.int64)
        bad = (arr < -length) | (arr >= length)
        if bad.any():
            raise IndexError(
                f"time indices {arr[bad][:5].tolist()} are out of range for {length} frames "
                f"of the {what}"
            )
        return np.where(arr < 0, arr + length, arr)
    raise TypeError(
        f"the time axis of a {what} takes an integer, a slice or an integer array, "
        f"not {type(index).__name__}"
    )


def compose_time(outer: TimeIndex, inner: TimeIndex) -> TimeIndex:
    """Return ``outer[inner]`` for time selections (ranges stay ranges)."""
    if isinstance(inner, range):
        if isinstance(outer, range):
            return outer[range_to_slice(inner)]
        return np.asarray(outer)[range_to_slice(inner)]
    return np.asarray(outer)[np.asarray(inner, dtype=np.int64)]


def compose_region(outer: Region, inner: Region) -> Region:
    """Return the region of the base selected by ``inner`` applied to ``outer``."""
    return tuple(o[range_to_slice(i)] for o, i in zip(outer, inner))  # type: ignore[return-value]


def time_to_json(times: TimeIndex) -> dict:
    """Serialise a time selection to JSON-compatible data."""
    if isinstance(times, range):
        return {"range": [times.start, times.stop, times.step]}
    return {"list": [int(t) for t in np.asarray(times)]}


def time_from_json(data: dict) -> TimeIndex:
    """Inverse of :func:`time_to_json`."""
    if "range" in data:
        return range(*data["range"])
    return np.asarray(data["list"], dtype=np.int64)


def region_to_json(region: Region) -> list[list[int]]:
    """Serialise a region to JSON-compatible data."""
    return [[r.start, r.stop, r.step] for r in region]


def region_from_json(data: list) -> Region:
    """Inverse of :func:`region_to_json`."""
    if len(data) != 4:
        raise ValueError(f"a region needs 4 ranges (z, y, x, c), got {len(data)}")
    return tuple(range(*map(int, r)) for r in data)  # type: ignore[return-value]


def as_time_array(times: TimeIndex) -> np.ndarray:
    """Return the time selection as an int64 array."""
    if isinstance(times, range):
        return np.arange(times.start, times.stop, times.step, dtype=np.int64)
    return np.asarray(times, dtype=np.int64)


def runs(indices: np.ndarray) -> list[tuple[int, int, int]]:
    """Split indices into runs of consecutive increasing values.

    Returns
    -------
    list of (position, first_value, length)
        ``indices[position:position + length] == range(first_value, first_value + length)``.
    """
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [indices.size]))
    return [(int(s), int(indices[s]), int(e - s)) for s, e in zip(starts, ends)]
