"""Signal sets in napari: the ROI × time raster layer and helpers shared with the Traces dock.

This module turns a stored signal set (see
:meth:`~napari_sima.core.ImagingDataset.signals`) into what the GUI shows:

* :func:`signals_to_raster` — a ``(data, kwargs, 'image')`` layer tuple: one row per
  ROI (in the set's ROI order), one column per frame;
* :func:`show_raster` — add (or update) that layer in a viewer, placed under the movie,
  with mouse callbacks: a click on a row selects that ROI's shapes in the ROIs Shapes
  layer, a double click also moves the time slider to the clicked frame;
* :func:`roi_index_at` / :func:`frame_at` — which row / frame of a raster is under a
  world position (testable without a mouse);
* :func:`match_rois` — map the shapes of a ROIs Shapes layer to rows of a signal set
  (by ROI index, else by id / label);
* :func:`signal_arrays` / :func:`store_dff` — raw or ΔF/F traces (or the inferred
  spikes, :func:`has_spikes`) per sequence, ΔF/F computed once with
  :func:`napari_sima.core.dff` and stored with the set.

Nothing here builds a Qt widget; the functions touch a viewer only where their name
says so.

Notes
-----
**Where the raster goes.**  A raster is 2-D ``(roi, frame)`` while our movies are
``(t, z, y, x)``.  napari aligns layers on their *trailing* axes, so a raster added
as is would sit on top of the movie's ``(y, x)`` plane, in pixel units.  We keep one
viewer and add the raster as a normal, visible Image layer whose ``scale`` /
``translate`` place it as a band **under the movie**: as wide as the movie, about half
as tall, separated by a small gap (:func:`raster_placement`).  The raster therefore
never covers the movie, never adds a dimension or a slider (2 < 4 axes), and stays
visible while the time slider moves.  Its ``axis_labels`` are ``('roi', 'frame')``,
so a viewer holding only a raster labels its axes correctly.  Hide it, or move it with
napari's transform mode, like any layer.

**Sequences.**  ``sequence=None`` shows every sequence, concatenated along time (the
boundaries are in ``metadata['napari_sima']['sequence_starts']``); an index shows one.

**Metadata** of the raster layer, ``metadata['napari_sima']``: ``kind`` (``'raster'``,
the layer kind, as in :mod:`napari_sima._layers`), ``dataset``, ``label`` (the signal
set), ``channel``, ``signal_kind`` (``'raw'``, ``'dff'`` or ``'spikes'``), ``sequence`` (index or
None), ``sequence_starts``, ``roi_labels`` (display names), ``roi_raw_labels`` and
``roi_ids`` (for matching a click to shapes without reloading the set).  It has no
``base_name`` (so the Dataset dock does not rename it like a movie layer).

**Clicks.**  napari calls a layer's mouse callbacks while the layer is the *active*
one: select the raster in the layer list, then click rows.  The selection goes to the
ROIs layer the Traces dock follows (else the best ROIs layer of the dataset), which
stays unchanged when the ROI is not in it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._layers import METADATA_KEY, LayerDataTuple, sima_metadata, unwrap
from .core.dff import DFF_DEFAULTS

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Layer, Shapes

    from .core import ImagingDataset

#: Signal kinds: the extracted signals, or their ΔF/F.
SIGNAL_KINDS = ("raw", "dff")

#: Kinds a raster can show: the signal kinds, and the inferred spikes (when stored).
RASTER_KINDS = (*SIGNAL_KINDS, "spikes")

#: How the kinds are written in layer names and titles.
KIND_TITLES = {"raw": "raw", "dff": "dF/F", "spikes": "spikes"}

#: ΔF/F parameters used when a set has no stored ΔF/F (see :func:`napari_sima.core.dff`).
DFF_PARAMETERS: dict[str, Any] = DFF_DEFAULTS

#: Axis labels of a raster layer.
RASTER_AXIS_LABELS = ("roi", "frame")

#: Colormap of a raster layer.
RASTER_COLORMAP = "viridis"

#: Colormap of a spikes raster (sparse events: bright ticks on black).
SPIKES_COLORMAP = "gray"

#: Contrast limits of a spikes raster.  The spikes are normalised to each trace's
#: largest, so a spike half as large as its trace's largest, or more, is white, and
#: the tiny amounts a noisy fit leaves between events stay dark.
SPIKES_CONTRAST = (0.0, 0.5)

#: Percentiles of the finite values used as contrast limits.
RASTER_PERCENTILES = (1.0, 99.0)

#: Height of the raster band relative to the movie's height.
RASTER_HEIGHT_FRACTION = 0.5

#: Gap between the movie and the raster, relative to the movie's height.
RASTER_GAP_FRACTION = 0.04


# ---------------------------------------------------------------------------------------
# Signal sets
# ---------------------------------------------------------------------------------------
def raster_name(label: str, kind: str = "raw") -> str:
    """Return the name of a raster layer, e.g. ``'raster: cells [raw]'``."""
    return f"raster: {label} [{KIND_TITLES.get(kind, kind)}]"


def _check_kind(kind: str) -> str:
    if kind not in RASTER_KINDS:
        raise ValueError(f"unknown signal kind {kind!r}; expected one of {RASTER_KINDS}")
    return kind


def signal_set_labels(dataset: ImagingDataset, channel: int | str = 0) -> list[str]:
    """Return the labels of a channel's stored signal sets, oldest first.

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.
    channel : int or str
        Channel index or name.

    Returns
    -------
    list of str
        Sorted by timestamp (then label); empty when there are none.
    """
    return dataset.signal_labels(channel)


def load_signals(
    dataset: ImagingDataset, label: str | None = None, channel: int | str = 0
) -> dict[str, Any]:
    """Return one stored signal set (default: the most recent).

    Raises
    ------
    KeyError
        If the channel has no such set (or none at all).
    """
    from .core import signal_store

    ch = dataset.resolve_channel(channel)
    if dataset.savedir is None:
        sets = signal_store.memory_store(dataset, ch)
        if label is None and sets:
            label = signal_set_labels(dataset, ch)[-1]
        if label not in sets:
            raise KeyError(f"no signal set {label!r} for channel {ch}; stored sets: {sorted(sets)}")
        return sets[label]
    return signal_store.dataset_signal_set(dataset.savedir, ch, label)


def num_sequences(signals: Mapping[str, Any]) -> int:
    """Return the number of sequences of a signal set."""
    return len(signals.get("raw") or [])


def num_rois(signals: Mapping[str, Any]) -> int:
    """Return the number of ROIs (rows) of a signal set."""
    raw = signals.get("raw") or []
    return int(np.asarray(raw[0]).shape[0]) if len(raw) else 0


def has_dff(signals: Mapping[str, Any]) -> bool:
    """Whether a signal set holds a ΔF/F of the right layout."""
    dff = signals.get("dff")
    raw = signals.get("raw") or []
    if not isinstance(dff, (list, tuple)) or len(dff) != len(raw):
        return False
    return all(np.shape(d) == np.shape(r) for d, r in zip(dff, raw, strict=True))


def has_spikes(signals: Mapping[str, Any]) -> bool:
    """Whether a signal set holds inferred spikes and fits of the right layout.

    See :meth:`napari_sima.core.ImagingDataset.infer_spikes` (entries ``spikes`` and
    ``spikes_fits``, one ``(n_rois, n_frames)`` array per sequence).
    """
    raw = signals.get("raw") or []
    for key in ("spikes", "spikes_fits"):
        value = signals.get(key)
        if not isinstance(value, (list, tuple)) or len(value) != len(raw) or not raw:
            return False
        if not all(np.shape(v) == np.shape(r) for v, r in zip(value, raw, strict=True)):
            return False
    return True


def compute_dff_rows(signals: Mapping[str, Any], sequence: int, rows: Sequence[int]) -> np.ndarray:
    """ΔF/F of some rows of one sequence with :data:`DFF_PARAMETERS` (not cached).

    ΔF/F is computed row by row, so this equals the same rows of the whole set's ΔF/F.
    """
    from .core.dff import dff

    raw = np.asarray(signals["raw"][sequence])
    rows = list(rows)
    if not rows:
        return np.zeros((0, raw.shape[1]), dtype=np.float32)
    return dff(raw[rows], **DFF_PARAMETERS)


def compute_dff(signals: Mapping[str, Any]) -> list[np.ndarray]:
    """ΔF/F of every sequence of a set with :data:`DFF_PARAMETERS` (not cached)."""
    from .core.dff import dff

    return [dff(np.asarray(r), **DFF_PARAMETERS) for r in signals["raw"]]


def signal_arrays(signals: dict[str, Any], kind: str = "raw") -> list[np.ndarray]:
    """Return the ``(n_rois, n_frames)`` traces of each sequence.

    Parameters
    ----------
    signals : dict
        A signal set.  For ``kind='dff'`` without a stored ``dff``, ΔF/F is computed
        with :data:`DFF_PARAMETERS` and cached in the dict (``signals['dff']``,
        ``signals['dff_parameters']``); :func:`store_dff` saves it with the dataset.
    kind : {'raw', 'dff', 'spikes'}
        Which traces; ``'spikes'`` needs inferred spikes in the set.

    Returns
    -------
    list of numpy.ndarray

    Raises
    ------
    ValueError
        For an unknown kind, or ``'spikes'`` when the set has none.
    """
    _check_kind(kind)
    if kind == "raw":
        return [np.asarray(r) for r in signals.get("raw") or []]
    if kind == "spikes":
        if not has_spikes(signals):
            raise ValueError(
                "the signal set has no inferred spikes (run the Infer spikes dock, or "
                "ImagingDataset.infer_spikes, first)"
            )
        return [np.asarray(s) for s in signals["spikes"]]
    if not has_dff(signals):
        signals["dff"] = compute_dff(signals)
        signals["dff_parameters"] = dict(DFF_PARAMETERS)
    return [np.asarray(d) for d in signals["dff"]]


def store_dff(
    dataset: ImagingDataset, label: str, signals: dict[str, Any], channel: int | str = 0
) -> bool:
    """Store the ΔF/F of ``signals`` (computed if needed) with the set ``label``.

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset holding the set.
    label : str
        The set's label.
    signals : dict
        The set (its ``dff`` is computed first when missing).
    channel : int or str
        The set's channel.

    Returns
    -------
    bool
        True when stored; False for a read-only dataset or a legacy SIMA pickle (the
        ΔF/F then stays cached in ``signals`` only).
    """
    from .core import signal_store

    arrays = signal_arrays(signals, "dff")
    params = dict(signals.get("dff_parameters") or DFF_PARAMETERS)
    ch = dataset.resolve_channel(channel)
    if getattr(dataset, "read_only", False):
        return False
    if dataset.savedir is None:
        stored = signal_store.memory_store(dataset, ch).get(label)
        if stored is None:
            return False
        stored["dff"] = arrays
        stored["dff_parameters"] = params
        return True
    folder = signal_store.store_dir(dataset.savedir, ch)
    try:
        if label not in signal_store.signal_set_timestamps(folder):
            return False  # a legacy pickle: not ours to rewrite
        from .core.records import dff_record

        signal_store.update_signal_set(
            folder,
            label,
            provenance=dff_record(dataset, ch, label, params),
            dff=arrays,
            dff_parameters=params,
        )
    except (OSError, KeyError, ValueError):
        return False
    return True


def roi_text(roi: Any, index: int) -> str:
    """Name of a signal-set ROI for titles and legends: its label, id, or ``'ROI k'``."""
    get = roi.get if isinstance(roi, Mapping) else (lambda k: getattr(roi, k, None))
    for key in ("label", "id"):
        value = get(key)
        if value is not None and str(value) != "":
            return str(value)
    return f"ROI {index}"


# ---------------------------------------------------------------------------------------
# Shapes <-> signal rows
# ---------------------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, int, np.integer)):  # the common cases, without pandas
        return False
    if isinstance(value, (float, np.floating)):
        return bool(value != value)
    try:
        import pandas as pd

        res = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return bool(res) if np.ndim(res) == 0 else False


def _roi_key(value: Any, shape_index: int) -> Any:
    """Group key of a shape from its ``roi`` feature (as :mod:`._roi_convert` groups)."""
    if _missing(value):
        return ("shape", shape_index)
    if isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    ):
        return int(value)
    return ("value", str(value))


def _text(value: Any) -> str | None:
    return None if _missing(value) or str(value) == "" else str(value)


@dataclass
class RoiMatch:
    """How the shapes of a ROIs layer map to the rows of a signal set.

    Attributes
    ----------
    keys : list
        ROI key of each shape (its ``roi`` feature as int, or a unique key).
    row_of_key : dict
        Signal row of each matched ROI key.
    how : {'index', 'label', 'none'}
        ``'index'``: the ``roi`` feature is the row (labels and ids agree);
        ``'label'``: matched by ROI id, else label; ``'none'``: nothing matched.
    """

    keys: list[Any] = field(default_factory=list)
    row_of_key: dict[Any, int] = field(default_factory=dict)
    how: str = "none"

    def rows_of_shapes(self, shape_indices: Iterable[int]) -> tuple[list[int], list[Any]]:
        """Rows of the ROIs of some shapes, in order of first appearance.

        Returns
        -------
        (rows, unmatched)
            Distinct rows, and the distinct ROI keys without a row.
        """
        rows: list[int] = []
        row_set: set[int] = set()
        unmatched: list[Any] = []
        seen: set[Any] = set()
        for i in sorted(int(i) for i in shape_indices):
            if not 0 <= i < len(self.keys):
                continue
            key = self.keys[i]
            if key in seen:
                continue
            seen.add(key)
            row = self.row_of_key.get(key)
            if row is None:
                unmatched.append(key)
            elif row not in row_set:
                row_set.add(row)
                rows.append(row)
        return rows, unmatched

    def shapes_of_row(self, row: int) -> list[int]:
        """Return the indices of the shapes whose ROI is signal row ``row``."""
        keys = {k for k, r in self.row_of_key.items() if r == row}
        return [i for i, k in enumerate(self.keys) if k in keys]

    def first_shape_of_row(self) -> dict[int, int]:
        """``{row: index of its first shape}`` for the matched rows."""
        out: dict[int, int] = {}
        for i, k in enumerate(self.keys):
            row = self.row_of_key.get(k)
            if row is not None and row not in out:
                out[row] = i
        return out


def match_rois(features: Any, signal_rois: Sequence[Any]) -> RoiMatch:
    """Map the shapes of a ROIs Shapes layer to the rows of a signal set.

    Parameters
    ----------
    features : pandas.DataFrame or mapping of columns
        The layer's features (``roi``, ``label``, ``id`` columns are used; missing
        columns are treated as unset).
    signal_rois : sequence of dict or ROI
        The set's ``rois``, in row order.

    Returns
    -------
    RoiMatch

    Notes
    -----
    ROIs are matched **by index** — the shape's ``roi`` feature is the row — when at
    least one index is a row and no ROI with an index in range has a label or id that
    contradicts the set's ROI at that row (ROIs shown from the set the signals were
    extracted from).  Otherwise (the set was edited, renumbered or comes from
    elsewhere) they are matched **by id**, else **by label**, where those are unique
    in the set.  Shapes without a ``roi`` value (drawn after the extraction) never
    match by index.
    """
    import pandas as pd

    df = features if isinstance(features, pd.DataFrame) else pd.DataFrame(dict(features or {}))
    n = len(df)

    def column(name: str) -> list[Any]:
        return df[name].tolist() if name in df.columns else [None] * n

    keys = [_roi_key(v, i) for i, v in enumerate(column("roi"))]
    labels, ids = column("label"), column("id")
    first: dict[Any, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)

    sig_labels: list[str | None] = []
    sig_ids: list[str | None] = []
    for roi in signal_rois:
        get = roi.get if isinstance(roi, Mapping) else (lambda k, _r=roi: getattr(_r, k, None))
        sig_labels.append(_text(get("label")))
        sig_ids.append(_text(get("id")))
    n_sig = len(sig_labels)

    def agrees(key: int, i: int) -> bool:
        lab, rid = _text(labels[i]), _text(ids[i])
        if lab is not None and sig_labels[key] is not None and lab != sig_labels[key]:
            return False
        return not (rid is not None and sig_ids[key] is not None and rid != sig_ids[key])

    in_range = {k: i for k, i in first.items() if isinstance(k, int) and 0 <= k < n_sig}
    if in_range and all(agrees(k, i) for k, i in in_range.items()):
        return RoiMatch(keys, {k: k for k in in_range}, "index")

    def unique_map(values: list[str | None]) -> dict[str, int]:
        count: dict[str, int] = {}
        for v in values:
            if v is not None:
                count[v] = count.get(v, 0) + 1
        return {v: r for r, v in enumerate(values) if v is not None and count[v] == 1}

    by_id, by_label = unique_map(sig_ids), unique_map(sig_labels)
    row_of_key: dict[Any, int] = {}
    for k, i in first.items():
        rid, lab = _text(ids[i]), _text(labels[i])
        if rid is not None and rid in by_id:
            row_of_key[k] = by_id[rid]
        elif lab is not None and lab in by_label:
            row_of_key[k] = by_label[lab]
    return RoiMatch(keys, row_of_key, "label" if row_of_key else "none")


def is_rois_layer(layer: Any) -> bool:
    """Whether a layer is a Shapes layer of ROIs (ours, or one with a ``roi`` feature)."""
    from napari.layers import Shapes

    if not isinstance(layer, Shapes):
        return False
    meta = sima_metadata(layer)
    if meta is not None and meta.get("kind") == "rois":
        return True
    features = getattr(layer, "features", None)
    return features is not None and "roi" in getattr(features, "columns", ())


def find_rois_layer(viewer: napari.Viewer, dataset: ImagingDataset | None = None) -> Shapes | None:
    """Return the ROIs Shapes layer to use: the active one, else the best candidate.

    Candidates are ROIs layers (see :func:`is_rois_layer`); ones of ``dataset`` and
    visible ones are preferred, then the topmost.
    """
    viewer = unwrap(viewer)
    active = viewer.layers.selection.active
    if active is not None and is_rois_layer(active):
        return active
    candidates = [layer for layer in viewer.layers if is_rois_layer(layer)]
    if not candidates:
        return None

    def score(layer: Any) -> tuple[bool, bool]:
        meta = sima_metadata(layer) or {}
        return (dataset is not None and meta.get("dataset") is dataset, bool(layer.visible))

    best = max(score(layer) for layer in candidates)
    return [layer for layer in candidates if score(layer) == best][-1]


# ---------------------------------------------------------------------------------------
# Raster layer
# ---------------------------------------------------------------------------------------
def _finite_limits(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def signals_to_raster(
    signals: dict[str, Any],
    kind: str = "raw",
    sequence: int | None = None,
    *,
    dataset: ImagingDataset | None = None,
    label: str | None = None,
    channel: int | None = None,
) -> LayerDataTuple:
    """Return an ROI × time image layer tuple of a signal set.

    Parameters
    ----------
    signals : dict
        A signal set (``raw`` per sequence; ``dff`` computed and cached when missing
        and ``kind='dff'``).
    kind : {'raw', 'dff', 'spikes'}
        Which traces (``'spikes'``: the inferred spikes stored with the set).
    sequence : int, optional
        One sequence; default: all sequences concatenated along time.
    dataset, label, channel : optional
        Recorded in the metadata (the label also names the layer).

    Returns
    -------
    (data, kwargs, 'image')
        ``data`` is float32 ``(n_rois, n_frames)``, rows in the set's ROI order;
        ``kwargs`` has ``name``, ``colormap``, ``contrast_limits`` (1st-99th
        percentile of the finite values; for spikes :data:`SPIKES_CONTRAST`, with
        :data:`SPIKES_COLORMAP`),
        ``axis_labels`` ``('roi', 'frame')``,
        ``interpolation2d='nearest'`` and ``metadata`` (see the module notes).

    Raises
    ------
    ValueError
        For an unknown kind, a set without signals (or spikes, for ``'spikes'``), or
        a bad sequence index.
    """
    _check_kind(kind)
    arrays = signal_arrays(signals, kind)
    if not arrays:
        raise ValueError("the signal set has no signals")
    if sequence is None:
        parts = arrays
    else:
        if not 0 <= int(sequence) < len(arrays):
            raise ValueError(f"sequence {sequence} out of range for {len(arrays)} sequence(s)")
        parts = [arrays[int(sequence)]]
    data = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1)
    lengths = [int(np.shape(p)[1]) for p in parts]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    rois = list(signals.get("rois") or [])
    name_label = label if label is not None else str(signals.get("timestamp") or "signals")
    meta = {
        "kind": "raster",
        "dataset": dataset,
        "label": label,
        "channel": channel,
        "signal_kind": kind,
        "sequence": None if sequence is None else int(sequence),
        "sequence_starts": starts,
        "roi_labels": [roi_text(r, i) for i, r in enumerate(rois)],
        "roi_raw_labels": [
            (r.get("label") if isinstance(r, Mapping) else getattr(r, "label", None)) for r in rois
        ],
        "roi_ids": [
            (r.get("id") if isinstance(r, Mapping) else getattr(r, "id", None)) for r in rois
        ],
    }
    if kind == "spikes":
        colormap, limits = SPIKES_COLORMAP, SPIKES_CONTRAST
    else:
        colormap, limits = RASTER_COLORMAP, _finite_limits(data, RASTER_PERCENTILES)
    kwargs = {
        "name": raster_name(name_label, kind),
        "colormap": colormap,
        "contrast_limits": limits,
        "axis_labels": RASTER_AXIS_LABELS,
        "interpolation2d": "nearest",
        "metadata": {METADATA_KEY: meta},
    }
    return data, kwargs, "image"


def reference_movie_layer(
    viewer: napari.Viewer, dataset: ImagingDataset | None = None, sequence: int | None = None
) -> Layer | None:
    """Return the movie layer a raster or the trace cursor refers to (None if none).

    Movie layers of ``dataset`` (then of any dataset) are preferred, then the one of
    ``sequence``, then visible ones, then the lowest in the layer list.
    """
    viewer = unwrap(viewer)
    movies = []
    for layer in viewer.layers:
        meta = sima_metadata(layer)
        if meta is not None and meta.get("kind") == "movie":
            movies.append((layer, meta))
    if not movies:
        return None

    def score(item: tuple[Any, dict]) -> tuple[bool, bool, bool]:
        layer, meta = item
        return (
            dataset is not None and meta.get("dataset") is dataset,
            sequence is not None and meta.get("sequence_index") == sequence,
            bool(layer.visible),
        )

    best = max(score(m) for m in movies)
    return next(layer for layer, meta in movies if score((layer, meta)) == best)


def raster_placement(
    shape: tuple[int, int], reference: Layer | None = None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, translate)`` that put a raster of ``shape`` as a band under a movie.

    Parameters
    ----------
    shape : (n_rows, n_columns)
        The raster's shape.
    reference : napari layer, optional
        The movie (or image) whose last two axes (y, x) the raster goes under.  None
        gives unit pixels at the origin.

    Returns
    -------
    scale, translate : (float, float)
        The band spans the movie's width; its height is
        :data:`RASTER_HEIGHT_FRACTION` of the movie's; it starts
        :data:`RASTER_GAP_FRACTION` of the movie's height below the movie's bottom edge.
    """
    n_rows, n_cols = max(1, int(shape[0])), max(1, int(shape[1]))
    if reference is None or reference.ndim < 2:
        return (1.0, 1.0), (0.0, 0.0)
    h, w = (int(v) for v in np.shape(reference.data)[-2:])
    sy, sx = (float(v) for v in reference.scale[-2:])
    ty, tx = (float(v) for v in reference.translate[-2:])
    height, width = h * sy, w * sx
    row_h = height * RASTER_HEIGHT_FRACTION / n_rows
    col_w = width / n_cols
    bottom = ty + (h - 0.5) * sy
    left = tx - 0.5 * sx
    top = bottom + RASTER_GAP_FRACTION * height
    return (row_h, col_w), (top + 0.5 * row_h, left + 0.5 * col_w)


def find_raster_layer(
    viewer: napari.Viewer,
    dataset: ImagingDataset | None,
    label: str,
    channel: int | None = None,
    kind: str = "raw",
) -> Image | None:
    """Return the raster layer of a signal set and kind, if the viewer has one."""
    viewer = unwrap(viewer)
    for layer in viewer.layers:
        meta = sima_metadata(layer)
        if (
            meta is not None
            and meta.get("kind") == "raster"
            and meta.get("dataset") is dataset
            and meta.get("label") == label
            and meta.get("channel") == channel
            and meta.get("signal_kind") == kind
        ):
            return layer
    return None


def show_raster(
    viewer: napari.Viewer,
    dataset: ImagingDataset,
    label: str,
    channel: int | str = 0,
    kind: str = "raw",
    *,
    sequence: int | None = None,
    signals: dict[str, Any] | None = None,
    reset_view: bool = True,
) -> Image:
    """Add (or update) the raster layer of a signal set in a viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    dataset : ImagingDataset
        The dataset holding the set.
    label : str
        The signal set.
    channel : int or str
        Its channel.
    kind : {'raw', 'dff', 'spikes'}
        Raw signals, ΔF/F (computed and stored with the set when missing) or the
        inferred spikes (a ValueError when the set has none).
    sequence : int, optional
        One sequence (default: all, concatenated along time).
    signals : dict, optional
        The set, when the caller has already loaded it.
    reset_view : bool
        Fit the view to all layers when the raster is new (so it can be seen).

    Returns
    -------
    napari.layers.Image
        The layer named ``'raster: <label> [raw]'`` (or ``[dF/F]``, ``[spikes]``), placed under the
        movie (see the module notes), with the click callbacks installed.  The
        previously active layer stays active.

    Raises
    ------
    KeyError
        If there is no such signal set.
    ValueError
        For a bad kind or sequence.
    """
    viewer = unwrap(viewer)
    _check_kind(kind)
    ch = dataset.resolve_channel(channel)
    if signals is None:
        signals = load_signals(dataset, label, ch)
    if kind == "dff" and not has_dff(signals):
        signal_arrays(signals, "dff")
        with contextlib.suppress(Exception):
            store_dff(dataset, label, signals, ch)
    data, kwargs, _ = signals_to_raster(
        signals, kind, sequence, dataset=dataset, label=label, channel=ch
    )
    reference = reference_movie_layer(viewer, dataset, sequence)
    scale, translate = raster_placement(data.shape, reference)
    layer = find_raster_layer(viewer, dataset, label, ch, kind)
    if layer is not None:
        layer.data = data
        layer.scale = scale
        layer.translate = translate
        layer.contrast_limits = kwargs["contrast_limits"]
        layer.metadata = {**layer.metadata, **kwargs["metadata"]}
        layer.name = kwargs["name"]
    else:
        active = viewer.layers.selection.active
        layer = viewer.add_image(data, scale=scale, translate=translate, **kwargs)
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active
        if reset_view:
            viewer.reset_view()
    install_raster_callbacks(viewer, layer)
    return layer


def roi_index_at(layer: Layer, position: Sequence[float]) -> int | None:
    """Return the raster row (ROI index in the signal set) at a world position.

    Parameters
    ----------
    layer : napari.layers.Image
        A raster layer.
    position : sequence of float
        World coordinates (a napari mouse event's ``position``; the last two are used).

    Returns
    -------
    int or None
        None outside the raster.
    """
    cell = _cell_at(layer, position)
    return None if cell is None else cell[0]


def frame_at(layer: Layer, position: Sequence[float]) -> tuple[int, int] | None:
    """``(sequence, frame)`` of a raster column at a world position, or None outside it."""
    cell = _cell_at(layer, position)
    if cell is None:
        return None
    col = cell[1]
    meta = sima_metadata(layer) or {}
    starts = list(meta.get("sequence_starts") or [0])
    k = int(np.searchsorted(starts, col, side="right")) - 1
    seq = meta.get("sequence")
    seq_index = int(seq) if seq is not None else k
    return seq_index, int(col - starts[k])


def _cell_at(layer: Layer, position: Sequence[float]) -> tuple[int, int] | None:
    if position is None or layer.ndim != 2:
        return None
    row_f, col_f = (float(v) for v in layer.world_to_data(np.asarray(position, dtype=float))[-2:])
    n_rows, n_cols = (int(v) for v in np.shape(layer.data)[-2:])
    if not (-0.5 <= row_f < n_rows - 0.5 and -0.5 <= col_f < n_cols - 0.5):
        return None
    return int(np.floor(row_f + 0.5)), int(np.floor(col_f + 0.5))


def select_roi_shapes(
    shapes: Shapes, row: int, signal_rois: Sequence[Any], add: bool = False
) -> list[int]:
    """Select the shapes of signal row ``row`` in a ROIs Shapes layer.

    Parameters
    ----------
    shapes : napari.layers.Shapes
        The ROIs layer.
    row : int
        Row of the signal set (its ROI index).
    signal_rois : sequence
        The set's ``rois`` (for :func:`match_rois`).
    add : bool
        Add to the current selection instead of replacing it.

    Returns
    -------
    list of int
        The shape indices of that ROI (empty when it is not in the layer; the
        selection is then left unchanged).
    """
    match = match_rois(shapes.features, signal_rois)
    indices = match.shapes_of_row(int(row))
    if indices:
        chosen = set(indices) | (set(shapes.selected_data) if add else set())
        shapes.selected_data = chosen
    return indices


def raster_rois(layer: Layer) -> list[Any]:
    """Return the ``rois`` of a raster's signal set as ``{'label', 'id'}`` records.

    Enough for :func:`match_rois`; kept in the layer's metadata so a click does not
    reload the set.
    """
    meta = sima_metadata(layer) or {}
    labels = list(meta.get("roi_raw_labels") or [])
    ids = list(meta.get("roi_ids") or [None] * len(labels))
    return [{"label": lab, "id": rid} for lab, rid in zip(labels, ids, strict=False)]


def select_from_raster(
    viewer: napari.Viewer, layer: Layer, position: Sequence[float], add: bool = False
) -> list[int]:
    """Select, in the ROIs layer, the shapes of the raster row under ``position``.

    The ROIs layer is the one the Traces dock follows when there is one, else
    :func:`find_rois_layer`.  Returns the selected shape indices (empty when the
    position is off the raster or the ROI has no shape).
    """
    viewer = unwrap(viewer)
    row = roi_index_at(layer, position)
    if row is None:
        return []
    shapes = None
    with contextlib.suppress(Exception):
        from ._widgets.traces_widget import find_traces_widget

        tw = find_traces_widget(viewer)
        shapes = tw.shapes_layer if tw is not None else None
    if shapes is None or shapes not in viewer.layers:
        meta = sima_metadata(layer) or {}
        shapes = find_rois_layer(viewer, meta.get("dataset"))
    if shapes is None or shapes is layer:
        return []
    return select_roi_shapes(shapes, row, raster_rois(layer), add=add)


def jump_to_raster_frame(
    viewer: napari.Viewer, layer: Layer, position: Sequence[float]
) -> int | None:
    """Move the viewer's time slider to the raster frame under ``position``.

    Returns the frame (None off the raster or without a time axis).
    """
    viewer = unwrap(viewer)
    cell = frame_at(layer, position)
    axis = time_axis(viewer)
    if cell is None or axis is None:
        return None
    meta = sima_metadata(layer) or {}
    seq, frame = cell
    set_viewer_frame(viewer, frame, reference_movie_layer(viewer, meta.get("dataset"), seq))
    return frame


class RasterMouseHandler:
    """Mouse callbacks of a raster layer (hold the viewer weakly).

    A click (press and release without moving) on a row selects that ROI's shapes in
    the ROIs layer (Shift adds to the selection); a double click also moves the time
    slider to the clicked frame.  Dragging (panning) selects nothing.  napari calls
    a layer's mouse callbacks while the layer is the active one.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer = weakref.ref(viewer)

    @property
    def viewer(self) -> napari.Viewer | None:
        """The viewer (None once it is gone)."""
        return self._viewer()

    def on_drag(self, layer: Layer, event: Any) -> Any:
        """``mouse_drag_callbacks`` entry: select on release when the mouse did not move."""
        press = np.asarray(event.position, dtype=float)
        moved = False
        yield
        while event.type == "mouse_move":
            moved = moved or _moved_far(press, event)
            yield
        viewer = self.viewer
        if viewer is None or moved:
            return
        add = "Shift" in {str(m) for m in getattr(event, "modifiers", ())}
        select_from_raster(viewer, layer, press, add=add)

    def on_double_click(self, layer: Layer, event: Any) -> None:
        """``mouse_double_click_callbacks`` entry: select the ROI and go to the frame."""
        viewer = self.viewer
        if viewer is None:
            return
        select_from_raster(viewer, layer, event.position)
        jump_to_raster_frame(viewer, layer, event.position)


def _moved_far(press: np.ndarray, event: Any, pixels: float = 4.0) -> bool:
    """Whether the mouse went more than ``pixels`` screen pixels away from ``press``."""
    pos = np.asarray(event.position, dtype=float)
    dims = list(getattr(event, "dims_displayed", None) or range(-2, 0))
    zoom = float(getattr(event, "camera_zoom", 1.0) or 1.0)
    return float(np.linalg.norm(pos[dims] - press[dims])) * zoom > pixels


def install_raster_callbacks(viewer: napari.Viewer, layer: Layer) -> RasterMouseHandler:
    """Install (once) the click / double-click callbacks of a raster layer."""
    viewer = unwrap(viewer)
    for cb in list(layer.mouse_drag_callbacks):
        handler = getattr(cb, "__self__", None)
        if isinstance(handler, RasterMouseHandler) and handler.viewer is viewer:
            return handler
    handler = RasterMouseHandler(viewer)
    layer.mouse_drag_callbacks.append(handler.on_drag)
    layer.mouse_double_click_callbacks.append(handler.on_double_click)
    return handler


# ---------------------------------------------------------------------------------------
# Time axis
# ---------------------------------------------------------------------------------------
def time_axis(viewer: napari.Viewer) -> int | None:
    """Index of the viewer's time axis: the one labelled ``'t'`` (None when absent)."""
    viewer = unwrap(viewer)
    labels = list(viewer.dims.axis_labels)
    return labels.index("t") if "t" in labels else None


def _time_transform(
    viewer: napari.Viewer, reference: Layer | None, axis: int
) -> tuple[float, float]:
    """``(scale, translate)`` of the time axis of ``reference`` (identity without one)."""
    if reference is None:
        return 1.0, 0.0
    k = axis - (viewer.dims.ndim - reference.ndim)
    if not 0 <= k < reference.ndim:
        return 1.0, 0.0
    return float(reference.scale[k]), float(reference.translate[k])


def viewer_frame(viewer: napari.Viewer, reference: Layer | None = None) -> int | None:
    """Return the frame of ``reference`` (a movie layer) shown by the time slider.

    Without a reference layer the slider's step is the frame.  None when the viewer
    has no time axis.
    """
    viewer = unwrap(viewer)
    axis = time_axis(viewer)
    if axis is None:
        return None
    scale, translate = _time_transform(viewer, reference, axis)
    if scale == 1.0 and translate == 0.0:
        return int(viewer.dims.current_step[axis])
    return int(round((float(viewer.dims.point[axis]) - translate) / scale))


def set_viewer_frame(viewer: napari.Viewer, frame: int, reference: Layer | None = None) -> bool:
    """Move the time slider to ``frame`` of ``reference`` (or to step ``frame``)."""
    viewer = unwrap(viewer)
    axis = time_axis(viewer)
    if axis is None:
        return False
    scale, translate = _time_transform(viewer, reference, axis)
    if scale == 1.0 and translate == 0.0:
        viewer.dims.set_current_step(axis, int(frame))
    else:
        viewer.dims.set_point(axis, translate + int(frame) * scale)
    return True
