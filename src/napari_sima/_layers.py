"""Converters between napari-sima core objects and napari layer data tuples.

Every layer we create carries ``metadata['napari_sima']`` (a :class:`dict`, see
:func:`sima_metadata`) so that widgets can find the dataset, sequence and channel
behind a layer.  This module builds plain ``(data, kwargs, layer_type)`` tuples and
never touches a viewer or Qt.

Notes
-----
Keys of ``metadata['napari_sima']``:

``kind``
    ``'movie'`` for a movie channel, or ``'mean'``, ``'std'``, ``'kurtosis'`` for a
    projection.
``source``
    The file or folder the data came from (``None`` for in-memory data).
``dataset``
    The :class:`~napari_sima.core.ImagingDataset` (shared by all layers of it).
``sequence``
    The :class:`~napari_sima.core.Sequence` shown (``None`` for projections).
``sequence_index``, ``channel``
    Indices into ``dataset.sequences`` and the channel axis.
``base_name``
    Name stem from which the layer name is rebuilt when channels are renamed.
``open_options``
    Options the movie was opened with (``num_planes``, ``num_channels``,
    ``dim_order``, ``key``, ``group``), so a widget can show and change them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .core import ImagingDataset, Sequence
    from .core.projections import Moments

#: The ``metadata`` key holding our information about a layer.
METADATA_KEY = "napari_sima"

#: Axis labels of a movie layer (one channel of a sequence).
MOVIE_AXIS_LABELS = ("t", "z", "y", "x")

#: Axis labels of a projection layer.
PROJECTION_AXIS_LABELS = ("z", "y", "x")

#: Projection kinds, in the order of :class:`~napari_sima.core.projections.Moments`.
PROJECTION_KINDS = ("mean", "std", "kurtosis")

#: Colormaps for multi-channel data (functional channel first), blended additively.
CHANNEL_COLORMAPS = ("green", "magenta", "cyan", "yellow", "red", "blue")

#: Frames sampled, evenly spread over a movie, to estimate contrast limits.
CONTRAST_FRAMES = 5

#: Percentiles of the sampled pixels used as contrast limits.
CONTRAST_PERCENTILES = (1.0, 99.8)

LayerDataTuple = tuple[Any, dict[str, Any], str]


def unwrap(obj: Any) -> Any:
    """Return the object behind napari's ``PublicOnlyProxy`` (or ``obj`` itself).

    napari hands plugin widgets a proxied viewer, and the proxy also wraps our own
    objects reached through it (datasets, layers); widgets compare them by identity with
    the real objects napari's events carry, so they unwrap them.  Nothing private is
    accessed through the unwrapped object.
    """
    return getattr(obj, "__wrapped__", obj)


def sima_metadata(layer_or_metadata: Any) -> dict[str, Any] | None:
    """Return our metadata of a layer, or None for a layer we did not create.

    Parameters
    ----------
    layer_or_metadata : napari layer or mapping
        A layer (anything with a ``metadata`` mapping) or its metadata.

    Returns
    -------
    dict or None
        The ``metadata['napari_sima']`` dictionary.
    """
    meta = getattr(layer_or_metadata, "metadata", layer_or_metadata)
    if not isinstance(meta, Mapping):
        return None
    value = meta.get(METADATA_KEY)
    return value if isinstance(value, dict) else None


def source_name(path: str | os.PathLike) -> str:
    """Return the layer-name stem of a file or folder: its name without suffix.

    Parameters
    ----------
    path : path-like
        File or ``.sima`` folder.

    Returns
    -------
    str
        E.g. ``'example'`` for ``'/data/example.tif'`` or ``'/data/example.sima/'``.
    """
    name = os.path.basename(os.path.normpath(os.fspath(path)))
    stem, _ = os.path.splitext(name)
    return stem or name


def layer_name(
    base_name: str,
    channel_name: str | None,
    *,
    sequence_index: int | None = None,
    kind: str = "movie",
) -> str:
    """Build a layer name such as ``'example seq 0 mean [red]'``.

    Parameters
    ----------
    base_name : str
        Name of the movie or dataset.
    channel_name : str or None
        Channel name; None leaves out the ``[channel]`` suffix (single channel).
    sequence_index : int, optional
        Sequence index, shown when the dataset holds several sequences.
    kind : str
        ``'movie'`` (nothing added) or a projection kind.

    Returns
    -------
    str
    """
    parts = [base_name]
    if sequence_index is not None:
        parts.append(f"seq {sequence_index}")
    if kind != "movie":
        parts.append(kind)
    if channel_name is not None:
        parts.append(f"[{channel_name}]")
    return " ".join(parts)


def channel_display(channel: int, num_channels: int) -> dict[str, Any]:
    """Return colormap and blending keyword arguments for one channel.

    Parameters
    ----------
    channel : int
        Channel index.
    num_channels : int
        Number of channels.

    Returns
    -------
    dict
        ``{'colormap': 'gray'}`` for a single channel; a colour from
        :data:`CHANNEL_COLORMAPS` with additive blending otherwise.
    """
    if num_channels <= 1:
        return {"colormap": "gray", "blending": "translucent_no_depth"}
    return {
        "colormap": CHANNEL_COLORMAPS[channel % len(CHANNEL_COLORMAPS)],
        "blending": "additive",
    }


def _finite_limits(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Return percentile limits of the finite values, widened when degenerate."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def sample_frame_indices(num_frames: int, count: int = CONTRAST_FRAMES) -> np.ndarray:
    """Return up to ``count`` frame indices spread evenly over a movie.

    Parameters
    ----------
    num_frames : int
        Frames in the movie.
    count : int
        Maximum number of indices.

    Returns
    -------
    numpy.ndarray
        Sorted unique integer indices.
    """
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(
        np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(np.int64)
    )


def contrast_limits(
    sequence: Sequence,
    channel: int,
    *,
    num_frames: int = CONTRAST_FRAMES,
    percentiles: tuple[float, float] = CONTRAST_PERCENTILES,
) -> tuple[float, float]:
    """Estimate display contrast limits of one channel from a few frames.

    Parameters
    ----------
    sequence : Sequence
        The movie.
    channel : int
        Channel index.
    num_frames : int
        Number of frames read, spread evenly over the movie.
    percentiles : (float, float)
        Lower and upper percentiles of the sampled pixel values.

    Returns
    -------
    (float, float)
        Limits with ``high > low`` (NaN pixels are ignored).
    """
    frames = sequence.lazy_channel(channel)[sample_frame_indices(len(sequence), num_frames)]
    return _finite_limits(np.asarray(frames, dtype=np.float64), percentiles)


def sequence_layer_data(
    sequence: Sequence,
    base_name: str,
    *,
    channel_names: list[str] | None = None,
    dataset: ImagingDataset | None = None,
    sequence_index: int | None = None,
    source: str | None = None,
    open_options: dict[str, Any] | None = None,
    visible: bool = True,
) -> list[LayerDataTuple]:
    """Return one lazy image layer per channel of a sequence.

    Parameters
    ----------
    sequence : Sequence
        The movie.
    base_name : str
        Name stem of the layers.
    channel_names : list of str, optional
        Names shown in the layer names (default ``'0'``, ``'1'``, ...; a single
        channel named ``'0'`` gets no ``[channel]`` suffix).
    dataset : ImagingDataset, optional
        The dataset the sequence belongs to (stored in the metadata).
    sequence_index : int, optional
        Index of the sequence in the dataset; shown in the name when not None.
    source : str, optional
        File or folder the data came from.
    open_options : dict, optional
        Options the movie was opened with.
    visible : bool
        Initial visibility of the layers.

    Returns
    -------
    list of (data, kwargs, 'image')
        ``data`` is ``sequence.lazy_channel(c)``: nothing but a few frames (for the
        contrast limits) is read.
    """
    num_channels = sequence.shape[4]
    names = [str(c) for c in range(num_channels)] if channel_names is None else list(channel_names)
    if len(names) != num_channels:
        raise ValueError(f"{len(names)} channel names {names} for {num_channels} channel(s)")
    single_unnamed = num_channels == 1 and _default_names(names)
    layers: list[LayerDataTuple] = []
    for c in range(num_channels):
        shown = None if single_unnamed else names[c]
        meta = {
            "kind": "movie",
            "source": source,
            "dataset": dataset,
            "sequence": sequence,
            "sequence_index": 0 if sequence_index is None else int(sequence_index),
            "channel": c,
            "base_name": base_name,
            "show_sequence_index": sequence_index is not None,
            "open_options": dict(open_options or {}),
        }
        kwargs = {
            "name": layer_name(base_name, shown, sequence_index=sequence_index),
            "axis_labels": MOVIE_AXIS_LABELS,
            "contrast_limits": contrast_limits(sequence, c),
            "multiscale": False,
            "visible": visible,
            "metadata": {METADATA_KEY: meta},
            **channel_display(c, num_channels),
        }
        layers.append((sequence.lazy_channel(c), kwargs, "image"))
    return layers


def dataset_layer_data(
    dataset: ImagingDataset,
    base_name: str,
    *,
    source: str | None = None,
    open_options: dict[str, Any] | None = None,
) -> list[LayerDataTuple]:
    """Return lazy image layers for every sequence and channel of a dataset.

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.
    base_name : str
        Name stem of the layers (e.g. the folder name without ``.sima``).
    source : str, optional
        File or folder the dataset came from.
    open_options : dict, optional
        Options its movie was opened with (single-movie datasets).

    Returns
    -------
    list of (data, kwargs, 'image')
        Sequence-major order.  With several sequences the names read
        ``'<base> seq <i> [<channel>]'`` and only the first sequence is visible
        (the others would be drawn on top of it).
    """
    many = dataset.num_sequences > 1
    layers: list[LayerDataTuple] = []
    for i, seq in enumerate(dataset.sequences):
        layers.extend(
            sequence_layer_data(
                seq,
                base_name,
                channel_names=dataset.channel_names,
                dataset=dataset,
                sequence_index=i if many else None,
                source=source,
                open_options=open_options,
                visible=i == 0,
            )
        )
    return layers


def _default_names(names: Iterable[str]) -> bool:
    """Return True for the default channel names ``['0', '1', ...]``."""
    names = [str(n) for n in names]
    return names == [str(i) for i in range(len(names))]


def projection_layer_data(
    moments: Moments,
    dataset: ImagingDataset,
    base_name: str,
    *,
    kinds: Iterable[str] = PROJECTION_KINDS,
    source: str | None = None,
) -> list[LayerDataTuple]:
    """Return ``(z, y, x)`` image layers of the time projections of a dataset.

    Parameters
    ----------
    moments : Moments
        ``(mean, std, kurtosis, count)`` as returned by
        :meth:`~napari_sima.core.ImagingDataset.iter_projections`.
    dataset : ImagingDataset
        The dataset they were computed from.
    base_name : str
        Name stem (the layers are named ``'<base> <kind> [<channel>]'``).
    kinds : iterable of str
        Which of ``'mean'``, ``'std'``, ``'kurtosis'`` to return.
    source : str, optional
        File or folder of the dataset.

    Returns
    -------
    list of (data, kwargs, 'image')
        Kind-major order; only the mean projections are initially visible.
    """
    kinds = list(kinds)
    unknown = sorted(set(kinds) - set(PROJECTION_KINDS))
    if unknown:
        raise ValueError(f"unknown projection kinds {unknown}; choose from {PROJECTION_KINDS}")
    names = dataset.channel_names
    num_channels = len(names)
    single_unnamed = num_channels == 1 and _default_names(names)
    layers: list[LayerDataTuple] = []
    for kind in kinds:
        stack = np.asarray(getattr(moments, kind))
        for c in range(num_channels):
            data = stack[..., c]
            meta = {
                "kind": kind,
                "source": source,
                "dataset": dataset,
                "sequence": None,
                "sequence_index": None,
                "channel": c,
                "base_name": base_name,
                "show_sequence_index": False,
                "open_options": {},
            }
            kwargs = {
                "name": layer_name(base_name, None if single_unnamed else names[c], kind=kind),
                "axis_labels": PROJECTION_AXIS_LABELS,
                "contrast_limits": _finite_limits(data, CONTRAST_PERCENTILES),
                "visible": kind == "mean",
                "metadata": {METADATA_KEY: meta},
                **channel_display(c, num_channels),
            }
            layers.append((data, kwargs, "image"))
    return layers


def rebuilt_layer_name(meta: Mapping[str, Any], channel_names: list[str]) -> str:
    """Return the name a layer of ours should have for the given channel names.

    Parameters
    ----------
    meta : mapping
        The layer's ``metadata['napari_sima']``.
    channel_names : list of str
        The dataset's current channel names.

    Returns
    -------
    str
    """
    c = int(meta["channel"])
    single_unnamed = len(channel_names) == 1 and _default_names(channel_names)
    kind = str(meta.get("kind", "movie"))
    seq = meta.get("sequence_index") if meta.get("show_sequence_index") else None
    return layer_name(
        str(meta["base_name"]),
        None if single_unnamed else channel_names[c],
        sequence_index=seq,
        kind=kind,
    )
