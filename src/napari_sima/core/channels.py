"""Channel selection by index or by name."""

from __future__ import annotations

from collections.abc import Sequence as _Seq

import numpy as np


def resolve_channel(channel: object, channel_names: _Seq[str]) -> int:
    """Return the index of a channel given by index or by name.

    Parameters
    ----------
    channel : int, numpy integer or str
        Channel index (negative counts from the end) or name.
    channel_names : sequence of str
        The dataset's channel names.

    Returns
    -------
    int
        Non-negative channel index.

    Raises
    ------
    ValueError
        For an unknown name or an out-of-range index; the message lists the valid
        channels.

    Examples
    --------
    >>> resolve_channel('green', ['red', 'green'])
    1
    >>> resolve_channel(-1, ['red', 'green'])
    1
    """
    names = [str(n) for n in channel_names]
    valid = ", ".join(f"{i} ({n!r})" for i, n in enumerate(names))
    if isinstance(channel, (bool, np.bool_)):
        raise ValueError(f"channel must be an index or a name, got {channel!r}; valid: {valid}")
    if isinstance(channel, (int, np.integer)):
        i = int(channel)
        if not -len(names) <= i < len(names):
            raise ValueError(f"channel index {i} is out of range; valid channels: {valid}")
        return i % len(names)
    if isinstance(channel, (str, np.str_)):
        if str(channel) in names:
            return names.index(str(channel))
        raise ValueError(f"no channel named {str(channel)!r}; valid channels: {valid}")
    raise ValueError(
        f"channel must be an index or a name, got {type(channel).__name__} {channel!r}; "
        f"valid channels: {valid}"
    )
