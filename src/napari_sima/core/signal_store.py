"""Labelled signal sets on disk (JSON index + one NPZ per set), and signal export.

A dataset folder keeps the signals of each channel in ``NAME.sima/signals/channel_<k>/``:

``index.json``
    ``{"format", "format_version", "channel", "sets": {label: {"timestamp", "file",
    "n_rois", "num_sequences", "num_frames", "entries", "parameters", "saved"}}}``
``set_<hex>.npz``
    one file per set, loaded with ``allow_pickle=False``:

    * ``meta``: a JSON string (timestamp, channels, number of sequences, the names and
      kinds of the extra entries, JSON-valued extras);
    * ``raw_<i>`` (and ``demixed_raw_<i>``): float32 ``(n_rois, n_frames)`` of sequence
      ``i``; ``mean_frame``; ``overlap`` as a ``(2, n)`` int64 array;
    * ``roi_*``: the ROIs in row order, encoded as in the ROI store (properties as
      JSON, polygon vertices and mask pixels as COO arrays);
    * ``x_<key>`` / ``x_<key>_<i>``: extra arrays added later (dF/F, spikes, fits, ...),
      per set or per sequence.

A set is saved by writing a new ``set_<hex>.npz`` and then replacing ``index.json``
atomically, so a crash leaves either the old or the new state, never a broken set.
Extra entries (:func:`update_signal_set`) rewrite the set into a new file the same way,
holding the dataset's write lock (:mod:`napari_sima.core.locking`) from the read to the
write so that concurrent updates are never lost.
Nothing is pickled.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import storage
from ._setstore import INDEX_FILE, SetStore
from .provenance import edit_provenance

__all__ = [
    "dataset_signal_set",
    "dataset_signal_sets",
    "delete_signal_set",
    "export_signals",
    "load_legacy_signal_sets",
    "load_signal_set",
    "load_signal_sets",
    "memory_store",
    "save_signal_set",
    "signal_set_provenance",
    "signal_set_info",
    "signal_set_timestamps",
    "store_dir",
    "update_signal_set",
]

STORE_FORMAT = "napari-sima signal sets"
STORE_VERSION = 1
SIGNALS_FOLDER = "signals"

#: Keys of a signals dict with a fixed meaning (everything else is an "extra" entry).
CORE_KEYS = (
    "raw",
    "demixed_raw",
    "mean_frame",
    "overlap",
    "signal_channel",
    "demix_channel",
    "rois",
    "timestamp",
)
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def store_dir(savedir: str | os.PathLike, channel: int) -> Path:
    """Return the signal store folder of a dataset folder for channel index ``channel``."""
    return Path(os.path.abspath(os.fspath(savedir))) / SIGNALS_FOLDER / f"channel_{int(channel)}"


def memory_store(dataset: Any, channel: int) -> dict[str, dict[str, Any]]:
    """Return the in-memory ``{label: signals}`` of a dataset without a folder."""
    stores = dataset.__dict__.setdefault("_memory_signals", {})
    return stores.setdefault(int(channel), {})


def _now() -> str:
    return time.strftime("%Y-%m-%d-%Hh%Mm%Ss")


def _store(folder: str | os.PathLike) -> SetStore:
    return SetStore(folder, STORE_FORMAT, STORE_VERSION, "signal set")


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------
def _jsonable(value: Any, what: str) -> Any:
    """Convert numpy scalars/arrays, tuples and sets to JSON types (or raise TypeError)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v, what) for v in value)
    raise TypeError(f"{what}: cannot store a {type(value).__name__} (not JSON or array)")


def _is_array_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, np.ndarray) and v.dtype != object for v in value
    )


def _encode_rois(roi_dicts: list[Any]) -> dict[str, np.ndarray]:
    from .roi import ROI, ROIList
    from .roi_store import _encode

    rois = ROIList([ROI(**d) if isinstance(d, dict) else d for d in roi_dicts])
    arrays = _encode(rois, "")
    return {f"roi_{k}": v for k, v in arrays.items()}


def _decode_rois(arrays: dict[str, np.ndarray], source: str) -> list[dict[str, Any]]:
    from .roi_store import _decode

    sub = {k[4:]: v for k, v in arrays.items() if k.startswith("roi_")}
    return [roi.todict() for roi in _decode(sub, source)]


def encode_signals(
    signals: dict[str, Any], parameters: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Turn a signals dict into plain arrays for an ``.npz`` file (no pickles).

    Parameters
    ----------
    signals : dict
        An extraction result, possibly with extra entries: arrays, lists of arrays
        (one per sequence) or JSON-compatible values.  Keys starting with ``_`` are
        dropped (SIMA's internal ``_masks``).
    parameters : dict, optional
        JSON-compatible provenance stored with the set.

    Returns
    -------
    dict of str to numpy.ndarray

    Raises
    ------
    ValueError
        If ``raw`` is missing or an extra key is not a plain identifier.
    TypeError
        If a value cannot be stored.
    """
    if "raw" not in signals:
        raise ValueError("a signal set needs its 'raw' signals")
    raw = [np.asarray(r) for r in signals["raw"]]
    arrays: dict[str, np.ndarray] = {}
    for i, r in enumerate(raw):
        if r.ndim != 2:
            raise ValueError(f"raw[{i}] must be (n_rois, n_frames), got shape {r.shape}")
        arrays[f"raw_{i}"] = r
    n_rois = raw[0].shape[0] if raw else 0
    if signals.get("demixed_raw") is not None:
        for i, r in enumerate(signals["demixed_raw"]):
            arrays[f"demixed_raw_{i}"] = np.asarray(r)
    if signals.get("mean_frame") is not None:
        arrays["mean_frame"] = np.asarray(signals["mean_frame"])
    if signals.get("overlap") is not None:
        ov = signals["overlap"]
        arrays["overlap"] = np.vstack([np.asarray(ov[0]), np.asarray(ov[1])]).astype(np.int64)
    arrays.update(_encode_rois(list(signals.get("rois") or [])))
    extras: dict[str, Any] = {}
    for key, value in signals.items():
        if key in CORE_KEYS or key.startswith("_") or key == "parameters":
            continue
        if not _KEY_RE.match(key):
            raise ValueError(f"signal entry name {key!r} must be a plain identifier")
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[f"x_{key}"] = value
            extras[key] = {"kind": "array"}
        elif _is_array_list(value):
            for i, v in enumerate(value):
                arrays[f"x_{key}_{i}"] = v
            extras[key] = {"kind": "sequences", "n": len(value)}
        else:
            extras[key] = {"kind": "json", "value": _jsonable(value, f"signal entry {key!r}")}
    meta = {
        "timestamp": signals.get("timestamp"),
        "signal_channel": _jsonable(signals.get("signal_channel"), "signal_channel"),
        "demix_channel": _jsonable(signals.get("demix_channel"), "demix_channel"),
        "num_sequences": len(raw),
        "n_rois": int(n_rois),
        "has_demixed": signals.get("demixed_raw") is not None,
        "has_overlap": signals.get("overlap") is not None,
        "extra": extras,
        "parameters": _jsonable(parameters or {}, "parameters"),
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    return arrays


def decode_signals(arrays: dict[str, np.ndarray], source: str = "signal set") -> dict[str, Any]:
    """Rebuild a signals dict from :func:`encode_signals` arrays.

    Every field is checked before it is used: the arrays a set file holds and its
    JSON ``meta`` come from a file and may be anything.

    Raises
    ------
    ValueError
        If arrays are missing or inconsistent
        (:class:`~napari_sima.core.errors.FileFormatError`; the message names
        ``source``).
    """
    from .errors import FileFormatError
    from .errors import brief as _brief

    def broken(why: str) -> FileFormatError:
        return FileFormatError(f"the signal set {source!r} is incomplete or broken: {why}")

    def array(name: str, kinds: str = "biuf", ndim: int | None = None) -> np.ndarray:
        if name not in arrays:
            raise broken(f"it lacks the array {name!r}")
        a = arrays[name]
        if a.dtype.kind not in kinds or (ndim is not None and a.ndim != ndim):
            raise broken(f"the array {name!r} has dtype {a.dtype} and shape {a.shape}")
        return a

    def count(value: Any, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not (
            0 <= value <= len(arrays)
        ):
            raise broken(f"{what} is {_brief(value)}")
        return value

    meta_text = array("meta", "U", 0)
    try:
        meta = json.loads(str(meta_text))
    except RecursionError:
        raise broken("its meta data are nested too deeply") from None
    except ValueError as err:
        raise broken(f"its meta data are not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise broken(f"its meta data are {_brief(meta)}, not a mapping")
    n_seq = count(meta.get("num_sequences"), "num_sequences")
    out: dict[str, Any] = {"raw": [array(f"raw_{i}", "biuf", 2) for i in range(n_seq)]}
    n_rows = out["raw"][0].shape[0] if out["raw"] else 0
    if any(r.shape[0] != n_rows for r in out["raw"]):
        raise broken("its sequences have different numbers of ROIs")
    if meta.get("has_demixed"):
        out["demixed_raw"] = [array(f"demixed_raw_{i}", "biuf", 2) for i in range(n_seq)]
    if "mean_frame" in arrays:
        out["mean_frame"] = array("mean_frame")
    if meta.get("has_overlap"):
        ov = array("overlap", "iu", 2)
        if ov.shape[0] != 2:
            raise broken(f"the overlap array has shape {ov.shape}, expected (2, n)")
        out["overlap"] = (ov[0].copy(), ov[1].copy())
    for key in ("signal_channel", "demix_channel"):
        value = meta.get(key)
        if value is not None and not isinstance(value, (int, str)):
            raise broken(f"{key} is {_brief(value)}, expected a channel index or name")
    out["signal_channel"] = meta.get("signal_channel")
    if meta.get("demix_channel") is not None:
        out["demix_channel"] = meta["demix_channel"]
    out["rois"] = _decode_rois(arrays, source)
    stamp = meta.get("timestamp")
    if stamp is not None and not isinstance(stamp, str):
        raise broken(f"the timestamp {_brief(stamp)} is not text")
    out["timestamp"] = stamp
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict):
        raise broken(f"its extra entries are {_brief(extra)}, not a mapping")
    for key, spec in extra.items():
        if not _KEY_RE.match(key) or key in CORE_KEYS or key == "parameters":
            raise broken(f"an extra entry is named {_brief(key)}")
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind == "array":
            out[key] = array(f"x_{key}")
        elif kind == "sequences":
            n = count(spec.get("n"), f"the number of sequences of {key!r}")
            out[key] = [array(f"x_{key}_{i}") for i in range(n)]
        elif kind == "json":
            out[key] = spec.get("value")
        else:
            raise broken(f"the extra entry {key!r} is described by {_brief(spec)}")
    if len(out["rois"]) != n_rows:
        raise broken(f"it has {len(out['rois'])} ROIs for {n_rows} signal rows")
    return out


# ---------------------------------------------------------------------------------------
# Store API
# ---------------------------------------------------------------------------------------
def signal_set_timestamps(folder: str | os.PathLike) -> dict[str, str]:
    """Return ``{label: timestamp}`` of the sets in a store (empty when none)."""
    return _store(folder).timestamps()


def signal_set_info(folder: str | os.PathLike, label: str | None = None) -> dict[str, Any]:
    """Return the index entry of a set (timestamp, file, sizes, entries, parameters).

    Raises
    ------
    KeyError
        If there is no such set.
    """
    return _store(folder).info(label)[1]


def signal_set_provenance(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Return ``{label: {'provenance': record, 'derived': {entry: record}}}`` of a store.

    Records are ``None`` for sets saved before napari-sima recorded provenance.
    """
    store = _store(folder)
    if not store.exists():
        return {}
    return {
        k: {"provenance": v.get("provenance"), "derived": dict(v.get("derived") or {})}
        for k, v in store.read_index()["sets"].items()
    }


def load_signal_set(folder: str | os.PathLike, label: str | None = None) -> dict[str, Any]:
    """Read one signal set (default: the most recent).

    Returns
    -------
    dict
        ``raw``, ``demixed_raw`` (if any), ``mean_frame``, ``overlap`` (if any),
        ``signal_channel``, ``demix_channel`` (if any), ``rois`` (ROI dicts in row
        order), ``timestamp`` and any extra entries.

    Raises
    ------
    KeyError
        If there is no such set (the message lists the stored labels).
    ValueError
        If the files are broken.
    """
    store = _store(folder)
    _, entry, arrays = store.load_arrays(label)
    return decode_signals(arrays, str(store.set_path(entry)))


def load_signal_sets(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read every set of a store, ``{label: signals}`` (empty when none)."""
    store = _store(folder)
    if not store.exists():
        return {}
    return store.load_all(lambda label: load_signal_set(folder, label))


def save_signal_set(
    folder: str | os.PathLike,
    signals: dict[str, Any],
    label: str | None = None,
    parameters: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> str:
    """Add (or replace) a signal set in a store, atomically.

    Parameters
    ----------
    folder : path-like
        The store folder (created when missing), e.g. :func:`store_dir`.
    signals : dict
        An extraction result (extra entries allowed, see :func:`encode_signals`).
    label : str, optional
        Name of the set (default: the signals' timestamp).
    parameters : dict, optional
        JSON-compatible extraction options.
    provenance : dict, optional
        What made the set (:func:`napari_sima.core.provenance.make_provenance`), kept
        in the index next to it; default: a record of a set saved by hand.

    Returns
    -------
    str
        The label used.
    """
    stamp = signals.get("timestamp") or _now()
    label = str(stamp) if label is None else str(label)
    arrays = encode_signals(signals, parameters)
    meta = json.loads(str(arrays["meta"]))
    info = {
        "timestamp": stamp,
        "n_rois": meta["n_rois"],
        "num_sequences": meta["num_sequences"],
        "num_frames": [int(np.asarray(r).shape[1]) for r in signals["raw"]],
        "entries": sorted(meta["extra"]),
        "parameters": meta["parameters"],
        "saved": _now(),
        "provenance": dict(provenance) if provenance else edit_provenance(
            "save_signal_set", meta["parameters"]
        ),
    }
    _store(folder).write(arrays, label, info, compress=False)
    return label


def update_signal_set(
    folder: str | os.PathLike,
    label: str,
    *,
    provenance: dict[str, Any] | None = None,
    **entries: Any,
) -> None:
    """Add or replace extra entries of a stored set (e.g. ``dff=[...]``), atomically.

    Parameters
    ----------
    folder : path-like
        The store folder.
    label : str
        The set.
    provenance : dict, optional
        What made the entries (e.g. an ``'infer-spikes'`` record); kept in the index
        under ``derived[<entry>]`` (default: a record of entries saved by hand).
    **entries
        Arrays, lists of arrays (one per sequence) or JSON-compatible values; a value
        of ``None`` removes the entry.  Core keys (``raw``, ``rois``, ...) cannot be
        changed.

    Raises
    ------
    KeyError
        If there is no such set.
    ValueError
        If an entry name is a core key or not a plain identifier.
    napari_sima.core.errors.DatasetInUseError
        If another process keeps writing to the dataset.
    PermissionError, OSError
        If the folder is read-only or the disk is full (nothing was changed).
    """
    for key in entries:
        if key in CORE_KEYS or key == "parameters":
            raise ValueError(f"{key!r} is a core entry of a signal set and cannot be replaced")
    store = _store(folder)
    store.info(label)  # no such set: a KeyError before anything is locked or created
    # The lock spans the read, the change and the write: two updates of one set (two
    # processes adding different entries) both end up in it, none is lost.
    with store.lock(f"updating the signal set {label!r} ({', '.join(entries) or 'no entries'})"):
        _update_locked(store, label, provenance, entries)


def _update_locked(
    store: SetStore, label: str, provenance: dict[str, Any] | None, entries: dict[str, Any]
) -> None:
    label, info, arrays = store.load_arrays(label)
    source = str(store.set_path(info))
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError) as err:
        raise ValueError(f"the signal set {source!r} is incomplete or broken: {err}") from None
    extras: dict[str, Any] = dict(meta.get("extra") or {})
    # Only the extra entries change: the raw signals and ROIs are copied as stored
    # (no decoding and re-encoding of thousands of ROIs for a spikes update).
    new_arrays = dict(arrays)
    for key, value in entries.items():
        if not _KEY_RE.match(key):
            raise ValueError(f"signal entry name {key!r} must be a plain identifier")
        for name in [n for n in new_arrays if n == f"x_{key}" or _is_entry_part(n, key)]:
            del new_arrays[name]
        extras.pop(key, None)
        if value is None:
            continue
        if isinstance(value, np.ndarray) and value.dtype != object:
            new_arrays[f"x_{key}"] = value
            extras[key] = {"kind": "array"}
        elif _is_array_list(value):
            for i, v in enumerate(value):
                new_arrays[f"x_{key}_{i}"] = v
            extras[key] = {"kind": "sequences", "n": len(value)}
        else:
            extras[key] = {"kind": "json", "value": _jsonable(value, f"signal entry {key!r}")}
    meta["extra"] = extras
    new_arrays["meta"] = np.asarray(json.dumps(meta))
    record = dict(provenance) if provenance else edit_provenance("update_signal_set")
    derived = {k: v for k, v in dict(info.get("derived") or {}).items() if k in extras}
    for key, value in entries.items():
        if value is not None:
            derived[key] = record
    store.write(
        new_arrays,
        label,
        {**info, "entries": sorted(extras), "derived": derived},
        compress=False,
    )


def _is_entry_part(name: str, key: str) -> bool:
    """Whether an array name is one sequence of the list entry ``key`` (``x_<key>_<i>``)."""
    prefix = f"x_{key}_"
    return name.startswith(prefix) and name[len(prefix):].isdigit()


def delete_signal_set(folder: str | os.PathLike, label: str) -> bool:
    """Remove a set; returns False (silently) when there is no such set."""
    return _store(folder).delete(label)


# ---------------------------------------------------------------------------------------
# Datasets: our store, else a legacy SIMA signals_<k>.pkl
# ---------------------------------------------------------------------------------------
def legacy_file(savedir: str | os.PathLike, channel: int) -> Path:
    """Path of SIMA's ``signals_<channel>.pkl`` in a dataset folder."""
    return Path(os.fspath(savedir)) / f"signals_{int(channel)}.pkl"


def _legacy_roi_dict(d: Any, where: str) -> dict[str, Any]:
    from .roi import ROI
    from .roi_store import _legacy_text

    if not isinstance(d, dict):
        raise ValueError(f"{where}: an ROI entry is a {type(d).__name__}, not a dict")
    mask = d.get("mask")
    if mask is not None:
        mask = [m.tocsr() if hasattr(m, "tocsr") else np.asarray(m) for m in mask]
    polys = d.get("polygons")
    roi = ROI(
        mask=mask if polys is None else None,
        polygons=polys,
        label=_legacy_text(d.get("label")),
        id=_legacy_text(d.get("id")),
        tags={_legacy_text(t) for t in (d.get("tags") or ())},
        im_shape=d.get("im_shape"),
    )
    return roi.todict()


def load_legacy_signal_sets(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read SIMA's ``signals_<k>.pkl`` safely (restricted unpickler), ``{label: signals}``.

    ROIs become ROI dicts as :meth:`ROI.todict` gives them; SIMA's internal ``_masks``
    is dropped; other entries (``spikes``, ...) are kept.

    Raises
    ------
    napari_sima.core.legacy.UnsafePickleError
        If the pickle names anything outside the allow-list.
    ValueError
        If the content is not SIMA's signals layout.
    """
    from .errors import FileFormatError
    from .legacy import read_legacy_pickle
    from .roi_store import _legacy_text

    p = Path(os.fspath(path))
    if not p.exists():
        return {}
    data = read_legacy_pickle(p)
    if not isinstance(data, dict):
        raise ValueError(f"{str(p)!r} does not hold SIMA's {{label: signals}} mapping")
    out: dict[str, dict[str, Any]] = {}
    for raw_label, entry in data.items():
        label = _legacy_text(raw_label) or ""
        where = f"signal set {label!r} in {str(p)!r}"
        if not isinstance(entry, dict) or "raw" not in entry:
            raise ValueError(f"{where} has no 'raw' signals")
        sig: dict[str, Any] = {}
        for key, value in entry.items():
            key = _legacy_text(key) or ""
            if key.startswith("_"):
                continue
            try:
                if key in ("raw", "demixed_raw"):
                    value = [np.asarray(v) for v in value]
                    if any(v.dtype.kind not in "biuf" or v.ndim != 2 for v in value):
                        raise ValueError(f"{key!r} should be (n_rois, n_frames) arrays of "
                                         f"numbers")
                elif key == "rois":
                    value = [_legacy_roi_dict(d, where) for d in value]
                elif key == "timestamp":
                    value = _legacy_text(value)
                elif key == "overlap" and value is not None:
                    value = (np.asarray(value[0], np.int64), np.asarray(value[1], np.int64))
            except (TypeError, ValueError, IndexError, KeyError, AttributeError,
                    OverflowError) as err:
                raise FileFormatError(f"{where}: {key!r} cannot be read: {err}") from None
            sig[key] = value
        out[label] = sig
    return out


def dataset_signal_sets(savedir: str | os.PathLike, channel: int) -> dict[str, dict[str, Any]]:
    """Signal sets of a dataset folder for a channel: our store, else a legacy pickle."""
    folder = store_dir(savedir, channel)
    if (folder / INDEX_FILE).exists() or not legacy_file(savedir, channel).exists():
        return load_signal_sets(folder)
    return load_legacy_signal_sets(legacy_file(savedir, channel))


def dataset_signal_set(
    savedir: str | os.PathLike, channel: int, label: str | None = None
) -> dict[str, Any]:
    """One signal set of a dataset folder (default: the most recent).

    Raises
    ------
    KeyError
        If there is no such set.
    """
    from .roi_store import most_recent_label

    folder = store_dir(savedir, channel)
    if (folder / INDEX_FILE).exists() or not legacy_file(savedir, channel).exists():
        if not (folder / INDEX_FILE).exists():
            raise KeyError(f"no signals stored for channel {int(channel)} in {str(savedir)!r}")
        return load_signal_set(folder, label)
    sets = load_legacy_signal_sets(legacy_file(savedir, channel))
    if label is None:
        label = most_recent_label({k: v.get("timestamp") or "" for k, v in sets.items()})
    if label not in sets:
        raise KeyError(
            f"no signal set {label!r} for channel {int(channel)} in {str(savedir)!r}; "
            f"stored sets: {sorted(sets)}"
        )
    return sets[label]


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------
def _roi_fields(signals: dict[str, Any]) -> tuple[list[Any], list[Any], list[str]]:
    ids, labels, tags = [], [], []
    for d in signals.get("rois") or []:
        get = d.get if isinstance(d, dict) else (lambda k, _r=d: getattr(_r, k))
        ids.append(get("id"))
        labels.append(get("label"))
        tags.append(",".join(sorted(str(t) for t in (get("tags") or ()))))
    return ids, labels, tags


def export_signals(
    signals: dict[str, Any], path: str | os.PathLike, fmt: str = "csv"
) -> None:
    """Write a signal set's ``raw`` signals to a text or ``.npz`` file, atomically.

    Parameters
    ----------
    signals : dict
        A signal set.
    path : path-like
        Output file (written as given).
    fmt : {'csv', 'tsv', 'npz'}
        ``'csv'``: comma-separated; ``'tsv'``: SIMA's exact tab-separated layout.  Both
        have three header rows -- ``sequence, frame, <ROI ids>``; ``'', label, <ROI
        labels>``; ``'', tags, <sorted tags joined by ','>`` -- then one row per frame of
        every sequence: sequence index, frame index in the sequence, and each ROI's
        value as Python ``str(float)`` of the stored float32 value (``nan`` for NaN).
        ``'npz'``: ``raw_<i>`` (and ``demixed_raw_<i>``) per sequence, ``mean_frame``,
        ``roi_ids``, ``roi_labels``, ``roi_tags`` (strings), ``signal_channel``,
        ``timestamp`` and the ROIs' masks and polygons (``roi_*`` arrays as in the
        store).

    Raises
    ------
    ValueError
        For an unknown ``fmt``.
    """
    key = str(fmt).lower()
    path = Path(os.fspath(path))
    ids, labels, tags = _roi_fields(signals)
    raw = [np.asarray(r) for r in signals["raw"]]
    if key in ("csv", "tsv"):
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, delimiter="," if key == "csv" else "\t")
        writer.writerow(["sequence", "frame", *ids])
        writer.writerow(["", "label", *labels])
        writer.writerow(["", "tags", *tags])
        for s, block in enumerate(raw):
            for f, row in enumerate(block.T.tolist()):
                writer.writerow([s, f, *(str(float(v)) for v in row)])
        storage.atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    elif key == "npz":
        arrays: dict[str, np.ndarray] = {f"raw_{i}": r for i, r in enumerate(raw)}
        if signals.get("demixed_raw") is not None:
            for i, r in enumerate(signals["demixed_raw"]):
                arrays[f"demixed_raw_{i}"] = np.asarray(r)
        if signals.get("mean_frame") is not None:
            arrays["mean_frame"] = np.asarray(signals["mean_frame"])
        arrays["roi_ids"] = np.asarray(["" if v is None else str(v) for v in ids], dtype=str)
        arrays["roi_labels"] = np.asarray(
            ["" if v is None else str(v) for v in labels], dtype=str
        )
        arrays["roi_tags"] = np.asarray(tags, dtype=str)
        arrays["num_sequences"] = np.asarray(len(raw))
        if signals.get("signal_channel") is not None:
            arrays["signal_channel"] = np.asarray(int(signals["signal_channel"]))
        arrays["timestamp"] = np.asarray(str(signals.get("timestamp") or ""))
        for k, v in _encode_rois(list(signals.get("rois") or [])).items():
            arrays[k.replace("roi_", "roi_geometry_", 1)] = v
        storage.atomic_save_npz(path, compress=True, **arrays)
    else:
        raise ValueError(f"unknown signal export format {fmt!r}; expected 'csv', 'tsv' or 'npz'")
