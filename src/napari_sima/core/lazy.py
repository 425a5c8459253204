"""A lazy ``(t, z, y, x)`` array-like over one channel of a sequence, for viewers.

napari accepts any object with ``shape``, ``dtype``, ``ndim`` and ``__getitem__``; it
asks only for the slice it displays, so scrolling through a 10,000-frame movie reads
one frame per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _indexing as ix

if TYPE_CHECKING:
    from .sequence import Sequence


class LazyChannelArray:
    """Read-on-demand view of one channel of a :class:`~napari_sima.core.Sequence`.

    Parameters
    ----------
    sequence : Sequence
        The movie.
    channel : int
        Channel index.

    Notes
    -----
    Indexing follows NumPy: integers drop their axis, slices keep it, and
    ``numpy.asarray(view)`` loads everything (avoid it for long movies).
    """

    def __init__(self, sequence: Sequence, channel: int) -> None:
        nc = sequence.shape[4]
        if not isinstance(channel, (int, np.integer)) or not -nc <= int(channel) < nc:
            raise ValueError(f"channel {channel!r} out of range for {nc} channel(s)")
        self.sequence = sequence
        self.channel = int(channel) % nc

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(t, z, y, x)``."""
        return tuple(self.sequence.shape[:4])  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """Stored dtype."""
        return self.sequence.dtype

    @property
    def ndim(self) -> int:
        """Always 4."""
        return 4

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<LazyChannelArray channel={self.channel} shape={self.shape} dtype={self.dtype}>"

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (4 - (len(key) - 1))
            key = key[:i] + fill + key[i + 1 :]
        if len(key) > 4:
            raise IndexError(f"too many indices ({len(key)}) for a 4-D (t, z, y, x) array")
        key = key + (slice(None),) * (4 - len(key))
        shape = self.shape
        drop = [
            isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in key
        ]
        # time may be any 1-D integer selection; spatial axes integers or slices
        t_key = key[0]
        if isinstance(t_key, (slice, int, np.integer)):
            times = ix.normalize_axis_index(t_key, shape[0], "t", "movie")
        else:
            times = ix.normalize_time_index(t_key, shape[0], "movie")
        region = tuple(
            ix.normalize_axis_index(k, n, a, "movie") for k, n, a in zip(key[1:], shape[1:], "zyx")
        ) + (range(self.channel, self.channel + 1),)
        data = self.sequence._read(times, region)[..., 0]  # type: ignore[arg-type]
        index = tuple(0 if d else slice(None) for d in drop)
        return data[index]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype, copy=False)
